//! Port I/O behind one trait, so that every device driver in the kernel (serial,
//! PIT, PCI configuration, legacy virtio) goes through the same seam. Under
//! plain QEMU the implementation is the IN/OUT instructions; under SEV-SNP it
//! becomes GHCB IOIO exits.

use core::arch::asm;
use spin::Once;

/// Port-mapped I/O.
pub trait PortIo {
    /// Reads a byte.
    fn inb(&self, port: u16) -> u8;
    /// Reads a word.
    fn inw(&self, port: u16) -> u16;
    /// Reads a double word.
    fn inl(&self, port: u16) -> u32;
    /// Writes a byte.
    fn outb(&self, port: u16, value: u8);
    /// Writes a word.
    fn outw(&self, port: u16, value: u16);
    /// Writes a double word.
    fn outl(&self, port: u16, value: u32);
}

/// The IN/OUT instructions (no SEV).
#[derive(Clone, Copy, Debug)]
pub struct DirectPorts;

// SAFETY (all blocks below): port I/O cannot violate Rust's memory safety by
// itself; the kernel's drivers only touch ports of devices they own (COM1, PIT,
// PCI configuration ports, the virtio BAR, isa-debug-exit), none of which is a
// DMA engine that could be pointed at memory without the shared-pool checks.
impl PortIo for DirectPorts {
    #[inline]
    fn inb(&self, port: u16) -> u8 {
        let v: u8;
        // SAFETY: see the impl comment.
        unsafe {
            asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[inline]
    fn inw(&self, port: u16) -> u16 {
        let v: u16;
        // SAFETY: see the impl comment.
        unsafe {
            asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[inline]
    fn inl(&self, port: u16) -> u32 {
        let v: u32;
        // SAFETY: see the impl comment.
        unsafe {
            asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
        };
        v
    }
    #[inline]
    fn outb(&self, port: u16, value: u8) {
        // SAFETY: see the impl comment.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }
    #[inline]
    fn outw(&self, port: u16, value: u16) {
        // SAFETY: see the impl comment.
        unsafe {
            asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
        };
    }
    #[inline]
    fn outl(&self, port: u16, value: u32) {
        // SAFETY: see the impl comment.
        unsafe {
            asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
        };
    }
}

static PORTS: Once<&'static (dyn PortIo + Sync)> = Once::new();

/// Replaces the IN/OUT instructions with `p` for the rest of the kernel's life
/// (the GHCB implementation under SEV-SNP, set by `sev::init` before any port
/// I/O). Only the first call counts.
pub fn set_ports(p: &'static (dyn PortIo + Sync)) {
    PORTS.call_once(|| p);
}

/// The kernel's port I/O: the GHCB under SEV-SNP, else the instructions.
pub fn ports() -> &'static dyn PortIo {
    match PORTS.get() {
        Some(p) => *p,
        None => &DirectPorts,
    }
}
