//! The seams between the network code and the machine.
//!
//! - [`SharedMem`]: the one shared-page pool, the only memory the host can read
//!   or write. The network code never holds a reference into it; it moves data by
//!   explicit copies (`read_*` copy out into private memory, `write_*` copy in;
//!   a TX frame is built privately and written once). The kernel implements it
//!   with volatile accesses
//!   (`kernel/src/pool.rs`); tests implement it over a `Vec` and can change bytes
//!   behind the driver's back.
//! - [`IoPorts`]: register access to the legacy virtio-pci I/O BAR. The kernel
//!   implements it with port I/O (plain QEMU) or GHCB IOIO exits (SEV-SNP).
//!
//! Offsets are pool offsets, computed by the driver itself (never taken from the
//! device); an implementation panics on an out-of-range offset because that is a
//! driver bug, not hostile input.

/// The host-shared pool, seen through copies only.
pub trait SharedMem {
    /// Size of the pool in bytes.
    fn size(&self) -> usize;
    /// The address the device uses for pool offset `offset` (guest physical).
    fn device_addr(&self, offset: usize) -> u64;

    /// Copies `dst.len()` bytes at `offset` out of the pool.
    fn read_bytes(&self, offset: usize, dst: &mut [u8]);
    /// Copies `src` into the pool at `offset`.
    fn write_bytes(&mut self, offset: usize, src: &[u8]);

    /// One 16-bit load (naturally aligned `offset`), done exactly once.
    fn read_u16(&self, offset: usize) -> u16;
    /// One 32-bit load (naturally aligned `offset`), done exactly once.
    fn read_u32(&self, offset: usize) -> u32;
    /// One 16-bit store (naturally aligned `offset`).
    fn write_u16(&mut self, offset: usize, value: u16);
    /// One 32-bit store (naturally aligned `offset`).
    fn write_u32(&mut self, offset: usize, value: u32);
    /// One 64-bit store (naturally aligned `offset`).
    fn write_u64(&mut self, offset: usize, value: u64);

    /// A full memory barrier between pool accesses and the device.
    fn fence(&self);

    /// **`unconstrained-io` measurement builds only**: lends `f` the `len`
    /// bytes at `offset` to read in place, so that the stack parses a
    /// received frame inside the pool (what the constraints forbid: the host
    /// can change the bytes while they are parsed).
    #[cfg(feature = "unconstrained-io")]
    fn lend<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R;

    /// **`unconstrained-io` measurement builds only**: a second handle to the
    /// same pool (the in-place RX token reads the pool while the reply's TX
    /// token writes it).
    #[cfg(feature = "unconstrained-io")]
    fn alias(&self) -> Self
    where
        Self: Sized;
}

/// Access to one I/O BAR (the legacy virtio-pci register block).
pub trait IoPorts {
    /// Reads an 8-bit register at `offset` from the BAR base.
    fn read8(&mut self, offset: u16) -> u8;
    /// Reads a 16-bit register.
    fn read16(&mut self, offset: u16) -> u16;
    /// Reads a 32-bit register.
    fn read32(&mut self, offset: u16) -> u32;
    /// Writes an 8-bit register.
    fn write8(&mut self, offset: u16, value: u8);
    /// Writes a 16-bit register.
    fn write16(&mut self, offset: u16, value: u16);
    /// Writes a 32-bit register.
    fn write32(&mut self, offset: u16, value: u32);
}
