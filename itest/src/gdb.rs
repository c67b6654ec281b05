//! A minimal GDB remote-protocol client for QEMU's gdbstub (`-gdb tcp:...`):
//! stop the guest, write its memory and registers, let it run. The emulated
//! SEV-SNP platform's tests use it to make the guest do what an honest guest
//! never does (fetch code from a shared page, touch a page through a mapping
//! whose C-bit disagrees with the RMP, post a private page to a device), so
//! that the platform's RMP checks are shown to fire.
//!
//! Packets are `$payload#checksum` (checksum: the sum of the payload bytes
//! modulo 256, two hex digits), each acknowledged with `+`; 0x03 interrupts
//! GDB's "Remote Serial Protocol" (in GDB's manual). QEMU stops the VM when
//! a debugger connects; `c` lets it run.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// A connection to QEMU's gdbstub.
#[derive(Debug)]
pub struct Gdb {
    s: TcpStream,
}

/// Bytes per memory packet: QEMU's gdbstub takes packets of up to 4 KiB
/// (its `PacketSize`), two hex digits a byte.
const CHUNK: usize = 1024;

/// x86-64 register numbers in GDB's layout (`i386:x86-64`).
pub const RIP: u32 = 16;

impl Gdb {
    /// Connects to the gdbstub at 127.0.0.1:`port`, retrying for 30 s while
    /// QEMU starts.
    pub fn connect(port: u16) -> Gdb {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    return Gdb { s };
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot reach QEMU's gdbstub on port {port}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn read_byte(&mut self) -> u8 {
        let mut b = [0u8; 1];
        self.s
            .read_exact(&mut b)
            .expect("gdbstub closed the connection");
        b[0]
    }

    /// Reads one packet's payload (acknowledging it).
    fn recv(&mut self) -> String {
        while self.read_byte() != b'$' {}
        let mut payload = Vec::new();
        loop {
            match self.read_byte() {
                b'#' => break,
                b => payload.push(b),
            }
        }
        let _checksum = [self.read_byte(), self.read_byte()];
        self.s.write_all(b"+").unwrap();
        String::from_utf8_lossy(&payload).into_owned()
    }

    /// Sends one command and returns the reply's payload.
    pub fn command(&mut self, payload: &str) -> String {
        let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        let packet = format!("${payload}#{sum:02x}");
        self.s.write_all(packet.as_bytes()).unwrap();
        // The stub acknowledges with '+' before its reply.
        loop {
            match self.read_byte() {
                b'+' => break,
                b'-' => self.s.write_all(packet.as_bytes()).unwrap(),
                _ => {}
            }
        }
        self.recv()
    }

    /// Asks why the guest stopped: QEMU stops the VM when a debugger
    /// connects, so after [`Gdb::connect`] the guest is stopped.
    pub fn stopped(&mut self) {
        let reply = self.command("?");
        assert!(
            reply.starts_with('T') || reply.starts_with('S'),
            "no stop reply: {reply}"
        );
    }

    /// Stops the running guest (0x03) and waits for the stop reply.
    pub fn interrupt(&mut self) {
        self.s.write_all(&[0x03]).unwrap();
        let reply = self.recv();
        assert!(
            reply.starts_with('T') || reply.starts_with('S'),
            "no stop reply: {reply}"
        );
    }

    /// Reads 64-bit register `reg` (GDB numbering).
    pub fn register(&mut self, reg: u32) -> u64 {
        let reply = self.command(&format!("p{reg:x}"));
        let bytes: Vec<u8> = (0..reply.len() / 2)
            .map(|i| u8::from_str_radix(&reply[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        assert_eq!(bytes.len(), 8, "register {reg}: {reply}");
        u64::from_le_bytes(bytes.try_into().unwrap())
    }

    /// Writes `bytes` at guest virtual address `addr` (in pieces that fit
    /// QEMU's packet size, 4 KiB of hex).
    pub fn write_memory(&mut self, addr: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let at = addr + (i * CHUNK) as u64;
            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let reply = self.command(&format!("M{at:x},{:x}:{hex}", chunk.len()));
            assert_eq!(reply, "OK", "gdbstub refused to write {at:#x}");
        }
    }

    /// Reads `len` bytes at guest virtual address `addr` (in pieces).
    pub fn read_memory(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = addr + out.len() as u64;
            let n = CHUNK.min(len - out.len());
            let reply = self.command(&format!("m{at:x},{n:x}"));
            assert!(
                reply.len() == 2 * n && !reply.starts_with('E'),
                "gdbstub refused to read {at:#x}: {reply}"
            );
            out.extend((0..n).map(|i| u8::from_str_radix(&reply[2 * i..2 * i + 2], 16).unwrap()));
        }
        out
    }

    /// Sets 64-bit register `reg` (GDB numbering).
    pub fn set_register(&mut self, reg: u32, value: u64) {
        let hex: String = value
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let reply = self.command(&format!("P{reg:x}={hex}"));
        assert_eq!(reply, "OK", "gdbstub refused to set register {reg}");
    }

    /// Lets the guest run (no reply until it stops again or QEMU exits).
    pub fn resume(&mut self) {
        let payload = "c";
        let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        self.s
            .write_all(format!("${payload}#{sum:02x}").as_bytes())
            .unwrap();
    }
}
