//! QEMU's `etc/e820` fw_cfg file: the guest memory map.
//!
//! Each entry is 20 packed little-endian bytes: `u64 addr, u64 len, u32 type`
//! (QEMU `hw/i386/e820_memory_layout.h`). The host writes this file, so under
//! SEV-SNP it is hostile input: every entry is checked before use.

/// Bytes per entry.
pub const ENTRY_LEN: usize = 20;
/// Most entries we accept (QEMU emits a handful).
pub const MAX_ENTRIES: usize = 32;

/// e820 type: usable RAM.
pub const TYPE_RAM: u32 = 1;

/// One checked entry: `start < end`, no overflow.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Entry {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Raw e820 type.
    pub kind: u32,
}

/// Why the map was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum E820Error {
    /// Length is not a multiple of 20 bytes.
    BadLength,
    /// More than [`MAX_ENTRIES`] entries.
    TooMany,
    /// `addr + len` overflows.
    Overflow,
    /// A RAM entry overlaps the firmware image below 4 GiB.
    OverlapsFirmware,
    /// No RAM at all.
    NoRam,
}

/// A parsed, checked memory map (entries in file order, empty ones dropped).
#[derive(Clone, Copy, Debug)]
pub struct E820 {
    entries: [Entry; MAX_ENTRIES],
    len: usize,
}

impl E820 {
    /// Parses `bytes` and checks every entry. `firmware` is the image's range
    /// `[4 GiB - size, 4 GiB)`: a RAM entry that overlaps it is refused, since the
    /// firmware is not RAM the guest may hand out.
    pub fn parse(bytes: &[u8], firmware: (u64, u64)) -> Result<Self, E820Error> {
        if !bytes.len().is_multiple_of(ENTRY_LEN) {
            return Err(E820Error::BadLength);
        }
        if bytes.len() / ENTRY_LEN > MAX_ENTRIES {
            return Err(E820Error::TooMany);
        }
        let mut map = E820 {
            entries: [Entry::default(); MAX_ENTRIES],
            len: 0,
        };
        let mut any_ram = false;
        for raw in bytes.chunks_exact(ENTRY_LEN) {
            let mut a = [0u8; 8];
            a.copy_from_slice(&raw[0..8]);
            let start = u64::from_le_bytes(a);
            a.copy_from_slice(&raw[8..16]);
            let len = u64::from_le_bytes(a);
            let kind = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]);
            if len == 0 {
                continue;
            }
            let end = start.checked_add(len).ok_or(E820Error::Overflow)?;
            if kind == TYPE_RAM {
                if start < firmware.1 && firmware.0 < end {
                    return Err(E820Error::OverlapsFirmware);
                }
                any_ram = true;
            }
            map.entries[map.len] = Entry { start, end, kind };
            map.len += 1;
        }
        if !any_ram {
            return Err(E820Error::NoRam);
        }
        Ok(map)
    }

    /// The entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries[..self.len]
    }

    /// Total bytes of RAM entries.
    pub fn ram_bytes(&self) -> u64 {
        self.entries()
            .iter()
            .filter(|e| e.kind == TYPE_RAM)
            .map(|e| e.end - e.start)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FW: (u64, u64) = (0xFFE0_0000, 0x1_0000_0000);

    fn raw(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(a, l, t) in entries {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&l.to_le_bytes());
            v.extend_from_slice(&t.to_le_bytes());
        }
        v
    }

    #[test]
    fn qemu_q35_map() {
        // What QEMU 10 gives a 128 MiB q35 guest, plus a reserved entry.
        let b = raw(&[(0, 0x800_0000, 1), (0xFEFF_C000, 0x4000, 2)]);
        let m = E820::parse(&b, FW).unwrap();
        assert_eq!(m.entries().len(), 2);
        assert_eq!(m.ram_bytes(), 0x800_0000);
    }

    #[test]
    fn hostile_maps() {
        assert_eq!(
            E820::parse(&[0u8; 19], FW).unwrap_err(),
            E820Error::BadLength
        );
        assert_eq!(
            E820::parse(&raw(&[(u64::MAX - 1, 2, 1)]), FW).unwrap_err(),
            E820Error::Overflow
        );
        assert_eq!(
            E820::parse(&raw(&[(0, 0x1_0000_0000, 1)]), FW).unwrap_err(),
            E820Error::OverlapsFirmware
        );
        assert_eq!(
            E820::parse(&raw(&[(0xFFFF_0000, 0x1000, 1)]), FW).unwrap_err(),
            E820Error::OverlapsFirmware
        );
        assert_eq!(
            E820::parse(&raw(&[(0, 0x1000, 2)]), FW).unwrap_err(),
            E820Error::NoRam
        );
        let many: Vec<_> = (0..33).map(|i| (i * 0x1000, 0x1000, 1)).collect();
        assert_eq!(
            E820::parse(&raw(&many), FW).unwrap_err(),
            E820Error::TooMany
        );
        // Zero-length entries are dropped; a reserved entry over the firmware is fine.
        let m = E820::parse(
            &raw(&[(0, 0, 1), (0, 0x10_0000, 1), (0xFFFF_0000, 0x1_0000, 2)]),
            FW,
        )
        .unwrap();
        assert_eq!(m.entries().len(), 2);
    }
}
