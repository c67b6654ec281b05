//! COM1 (16550 UART) console and the `log` backend.
//!
//! Hand-written rather than `uart_16550` because every register access must go
//! through the kernel's `PortIo` seam (GHCB exits under SEV-SNP).
//! The host reads the serial port: log lines carry no secrets.

use crate::{arch::port::ports, clock};
use core::fmt::{self, Write};
use spin::Mutex;

const COM1: u16 = 0x3F8;

/// The console.
#[derive(Debug)]
pub struct Serial;

impl Serial {
    fn init() {
        let p = ports();
        p.outb(COM1 + 1, 0x00);
        p.outb(COM1 + 3, 0x80);
        p.outb(COM1, 0x01);
        p.outb(COM1 + 1, 0x00);
        p.outb(COM1 + 3, 0x03);
        p.outb(COM1 + 2, 0xC7);
        p.outb(COM1 + 4, 0x03);
    }

    fn put(b: u8) {
        let p = ports();
        // Wait for the transmit holding register (bounded: QEMU is always ready).
        for _ in 0..100_000 {
            if p.inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        p.outb(COM1, b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Serial::put(b'\r');
            }
            Serial::put(b);
        }
        Ok(())
    }
}

static LOCK: Mutex<()> = Mutex::new(());

/// Prints to the console.
pub fn print(args: fmt::Arguments<'_>) {
    let _g = LOCK.lock();
    let _ = Serial.write_fmt(args);
}

/// Prints even when the console lock is held (panic path).
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Serial.write_fmt(args);
}

/// `println!` to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let us = clock::micros();
        print(format_args!(
            "[{:4}.{:06}] {:5} {}\n",
            us / 1_000_000,
            us % 1_000_000,
            r.level(),
            r.args()
        ));
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Sets up COM1 and the logger.
pub fn init(level: log::LevelFilter) {
    Serial::init();
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
