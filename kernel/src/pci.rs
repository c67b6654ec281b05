//! PCI configuration through the legacy 0xCF8/0xCFC mechanism (port I/O only,
//! so the same code works under SEV-SNP through the GHCB). There is no firmware
//! to assign BARs, so the kernel places the one I/O BAR it needs itself.

use crate::arch::port::ports;

const ADDR: u16 = 0xCF8;
const DATA: u16 = 0xCFC;

/// A PCI function on bus 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// Device (slot) number.
    pub dev: u8,
    /// Function number.
    pub func: u8,
}

impl Function {
    fn addr(&self, reg: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.dev) << 11)
            | (u32::from(self.func) << 8)
            | u32::from(reg & 0xFC)
    }

    /// Reads a configuration dword.
    pub fn read32(&self, reg: u8) -> u32 {
        let p = ports();
        p.outl(ADDR, self.addr(reg));
        p.inl(DATA)
    }

    /// Writes a configuration dword.
    pub fn write32(&self, reg: u8, value: u32) {
        let p = ports();
        p.outl(ADDR, self.addr(reg));
        p.outl(DATA, value);
    }

    /// (vendor, device) ids.
    pub fn ids(&self) -> (u16, u16) {
        let v = self.read32(0);
        (v as u16, (v >> 16) as u16)
    }

    /// Assigns I/O BAR `bar` to `base` (aligned to the BAR's size) and enables
    /// I/O decoding and bus mastering (DMA into the shared pool). Returns the
    /// BAR's size, or `None` when the BAR is not an I/O BAR.
    pub fn assign_io_bar(&self, bar: u8, base: u16) -> Option<u16> {
        let reg = 0x10 + 4 * bar;
        let old = self.read32(reg);
        if old & 1 == 0 {
            return None;
        }
        // Size probe: write all ones, read back the writable bits.
        self.write32(reg, 0xFFFF_FFFF);
        let mask = self.read32(reg) & 0xFFFF_FFFC;
        let size = (!mask).wrapping_add(1) & 0xFFFF;
        if size == 0 || u32::from(base) % size != 0 {
            self.write32(reg, old);
            return None;
        }
        self.write32(reg, u32::from(base) | 1);
        // Command register: I/O space (bit 0) and bus master (bit 2); memory
        // space stays off (no MMIO BARs are used), interrupts disabled (bit 10).
        let cmd = self.read32(0x04);
        self.write32(0x04, (cmd & 0xFFFF_0000) | 0x0001 | 0x0004 | 0x0400);
        Some(size as u16)
    }
}

/// Finds the first function on bus 0 with the given ids.
pub fn find(vendor: u16, device: u16) -> Option<Function> {
    (0..32u8)
        .flat_map(|dev| (0..8u8).map(move |func| Function { dev, func }))
        .find(|f| f.ids() == (vendor, device))
}
