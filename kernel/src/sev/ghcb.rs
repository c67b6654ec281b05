//! The kernel's GHCB: the first page of the shared pool, registered by boot,
//! reached only through volatile accesses, and the `PortIo` implementation
//! that turns every IN/OUT into an IOIO NAE call.
//!
//! The kernel is single-threaded and polls (no device interrupts); the only
//! ways into a GHCB call while another is in flight are a panic or an NMI,
//! both of which end in `terminate` after printing, so the interrupted call
//! never resumes. Each call builds a fresh `Ghcb` over the page (zero-sized
//! parts): the page is cleared and fully rewritten for every NAE call.

use super::{ghcb_gpa, terminate};
use crate::arch::port::PortIo;
use core::{
    arch::asm,
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, fence},
};
use vellum_boot::snp::{
    ghcb::{GHCB_SIZE, Ghcb, GhcbError, GhcbMem, Hypervisor, IoSize},
    msr_protocol::{GHCB_MSR, TerminateReason},
};

/// The GHCB page at [`ghcb_gpa`], through volatile accesses only.
#[derive(Debug)]
pub struct PageMem;

impl PageMem {
    fn ptr(offset: usize, len: usize) -> *mut u8 {
        let base = ghcb_gpa();
        assert!(base != 0 && offset <= GHCB_SIZE && len <= GHCB_SIZE - offset);
        (base as usize + offset) as *mut u8
    }
}

impl GhcbMem for PageMem {
    fn read_u64(&self, offset: usize) -> u64 {
        let p = Self::ptr(offset, 8).cast::<u64>();
        assert!(p.is_aligned());
        // SAFETY: inside the GHCB page (checked): identity-mapped, shared (no
        // C-bit) pool memory that nothing else in the kernel uses; aligned.
        unsafe { read_volatile(p) }
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        let p = Self::ptr(offset, 8).cast::<u64>();
        assert!(p.is_aligned());
        // SAFETY: as for `read_u64`.
        unsafe { write_volatile(p, value) }
    }

    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        let p = Self::ptr(offset, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `p + i` lies inside the GHCB page (range checked).
            *b = unsafe { read_volatile(p.add(i)) };
        }
    }

    fn write_bytes(&mut self, offset: usize, data: &[u8]) {
        let p = Self::ptr(offset, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `p + i` lies inside the GHCB page (range checked).
            unsafe { write_volatile(p.add(i), *b) };
        }
    }

    fn clear(&mut self) {
        for off in (0..GHCB_SIZE).step_by(8) {
            self.write_u64(off, 0);
        }
    }
}

/// VMGEXIT with the GHCB: its GPA into the GHCB MSR, full fence, `rep vmmcall`,
/// full fence (so no access to the page moves across the exit).
#[derive(Debug)]
pub struct Vmgexit;

impl Hypervisor for Vmgexit {
    fn vmgexit(&mut self) {
        let gpa = ghcb_gpa();
        fence(Ordering::SeqCst);
        // SAFETY: writing the GHCB MSR with the registered GHCB's GPA and
        // exiting to the hypervisor (F3 0F 01 D9); the hypervisor can only
        // change shared memory (the GHCB page) and the MSR. The asm is not
        // `nomem`, which also makes it a compiler barrier.
        unsafe {
            asm!(
                "wrmsr",
                ".byte 0xF3, 0x0F, 0x01, 0xD9",
                in("ecx") GHCB_MSR,
                in("eax") gpa as u32,
                in("edx") (gpa >> 32) as u32,
                options(nostack)
            )
        };
        fence(Ordering::SeqCst);
    }
}

fn ghcb() -> Ghcb<PageMem, Vmgexit> {
    Ghcb::new(PageMem, Vmgexit, ghcb_gpa())
        .unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL))
}

fn ok<T>(r: Result<T, GhcbError>) -> T {
    r.unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL))
}

/// Port I/O through GHCB IOIO exits; any GHCB error (bad status, missing valid
/// bit, injected exception) terminates the guest.
#[derive(Clone, Copy, Debug)]
pub struct GhcbPorts;

impl PortIo for GhcbPorts {
    fn inb(&self, port: u16) -> u8 {
        ok(ghcb().io_in(port, IoSize::Byte)) as u8
    }
    fn inw(&self, port: u16) -> u16 {
        ok(ghcb().io_in(port, IoSize::Word)) as u16
    }
    fn inl(&self, port: u16) -> u32 {
        ok(ghcb().io_in(port, IoSize::Dword))
    }
    fn outb(&self, port: u16, value: u8) {
        ok(ghcb().io_out(port, IoSize::Byte, value.into()))
    }
    fn outw(&self, port: u16, value: u16) {
        ok(ghcb().io_out(port, IoSize::Word, value.into()))
    }
    fn outl(&self, port: u16, value: u32) {
        ok(ghcb().io_out(port, IoSize::Dword, value))
    }
}

/// The SNP guest-request NAE (SW_EXITCODE 0x8000_0011) for request and
/// response pages at `req_gpa` / `resp_gpa` (both in the shared pool). A
/// malformed GHCB reply terminates, like every other GHCB call.
pub fn guest_request(req_gpa: u64, resp_gpa: u64) -> vellum_boot::snp::ghcb::GuestRequestStatus {
    ok(ghcb().guest_request(req_gpa, resp_gpa))
}
