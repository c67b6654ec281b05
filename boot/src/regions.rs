//! The memory-region list handed to the kernel in `BootInfo`.
//!
//! Built from the checked e820 map: RAM becomes `Usable` (page-aligned inward),
//! minus the legacy hole, minus page 0, minus everything boot placed in RAM,
//! which is reported as `Bootloader`; non-RAM entries are passed on as
//! `UnknownBios(type)`. The result is sorted and non-overlapping.

use crate::{
    e820::{E820, TYPE_RAM},
    layout,
};
use bootloader_api::info::{MemoryRegion, MemoryRegionKind};

/// Most regions we produce.
pub const MAX_REGIONS: usize = 64;

/// Why the list could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionError {
    /// More than the output can hold.
    TooMany,
    /// A range boot must reserve is not inside RAM.
    ReservedNotRam {
        /// Start of the range.
        start: u64,
        /// End of the range.
        end: u64,
    },
}

/// A fixed-capacity, sorted region list.
#[derive(Clone, Copy, Debug)]
pub struct Regions {
    list: [MemoryRegion; MAX_REGIONS],
    len: usize,
}

fn region(start: u64, end: u64, kind: MemoryRegionKind) -> MemoryRegion {
    MemoryRegion { start, end, kind }
}

impl Regions {
    /// The regions, sorted by start.
    pub fn as_slice(&self) -> &[MemoryRegion] {
        &self.list[..self.len]
    }

    fn push(&mut self, r: MemoryRegion) -> Result<(), RegionError> {
        if r.start >= r.end {
            return Ok(());
        }
        if self.len == MAX_REGIONS {
            return Err(RegionError::TooMany);
        }
        self.list[self.len] = r;
        self.len += 1;
        Ok(())
    }

    /// Removes `[start, end)` from the usable regions and records it with `kind`.
    /// Every byte of the range must be usable RAM.
    fn carve(&mut self, start: u64, end: u64, kind: MemoryRegionKind) -> Result<(), RegionError> {
        let covered: u64 = self
            .as_slice()
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| r.end.min(end).saturating_sub(r.start.max(start)))
            .sum();
        if covered != end - start {
            return Err(RegionError::ReservedNotRam { start, end });
        }
        let mut i = 0;
        while i < self.len {
            let r = self.list[i];
            if r.kind == MemoryRegionKind::Usable && r.start < end && start < r.end {
                // Replace r by up to three pieces: before, reserved part, after.
                self.list[i] = region(r.start.max(start), r.end.min(end), kind);
                self.push(region(
                    r.start,
                    start.max(r.start),
                    MemoryRegionKind::Usable,
                ))?;
                self.push(region(end.min(r.end), r.end, MemoryRegionKind::Usable))?;
            }
            i += 1;
        }
        Ok(())
    }

    /// Builds the list: RAM from `map`, with `reserved` ranges (all inside RAM)
    /// marked as `Bootloader`. Usable RAM above `usable_limit` is dropped (boot
    /// only maps so much).
    pub fn build(
        map: &E820,
        reserved: &[(u64, u64)],
        usable_limit: u64,
    ) -> Result<Self, RegionError> {
        let mut out = Regions {
            list: [region(0, 0, MemoryRegionKind::Usable); MAX_REGIONS],
            len: 0,
        };
        for e in map.entries() {
            if e.kind != TYPE_RAM {
                out.push(region(
                    e.start,
                    e.end,
                    MemoryRegionKind::UnknownBios(e.kind),
                ))?;
                continue;
            }
            let start = layout::align_up(e.start.max(layout::PAGE_SIZE), layout::PAGE_SIZE);
            let end = layout::align_down(e.end.min(usable_limit), layout::PAGE_SIZE);
            let Some(start) = start else { continue };
            // Cut out the legacy hole, then add what remains.
            let (hs, he) = (layout::LEGACY_HOLE_START, layout::LEGACY_HOLE_END);
            out.push(region(start, end.min(hs), MemoryRegionKind::Usable))?;
            out.push(region(start.max(he), end, MemoryRegionKind::Usable))?;
        }
        // Overlapping RAM entries (a lying map) are clipped so that no byte is
        // handed out twice: sort, then trim each region against the previous.
        out.sort();
        let mut w = 0;
        for i in 0..out.len {
            let mut r = out.list[i];
            if w > 0 {
                let prev_end = out.list[w - 1].end;
                r.start = r.start.max(prev_end);
            }
            if r.start < r.end {
                out.list[w] = r;
                w += 1;
            }
        }
        out.len = w;
        for &(s, e) in reserved {
            out.carve(s, e, MemoryRegionKind::Bootloader)?;
        }
        out.sort();
        Ok(out)
    }

    fn sort(&mut self) {
        self.list[..self.len].sort_unstable_by_key(|r| (r.start, r.end));
    }

    /// Total usable bytes.
    pub fn usable_bytes(&self) -> u64 {
        self.as_slice()
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| r.end - r.start)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FW: (u64, u64) = (0xFFE0_0000, 0x1_0000_0000);

    fn map(entries: &[(u64, u64, u32)]) -> E820 {
        let mut v = Vec::new();
        for &(a, l, t) in entries {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&l.to_le_bytes());
            v.extend_from_slice(&t.to_le_bytes());
        }
        E820::parse(&v, FW).unwrap()
    }

    fn check_invariants(r: &Regions) {
        let s = r.as_slice();
        for w in s.windows(2) {
            assert!(w[0].end <= w[1].start, "overlap or unsorted: {:x?}", w);
        }
        for x in s {
            assert!(x.start < x.end);
            if x.kind == MemoryRegionKind::Usable {
                assert_eq!(x.start % layout::PAGE_SIZE, 0);
                assert_eq!(x.end % layout::PAGE_SIZE, 0);
                assert!(x.end <= layout::LEGACY_HOLE_START || x.start >= layout::LEGACY_HOLE_END);
                assert!(x.start >= layout::PAGE_SIZE);
            }
        }
    }

    #[test]
    fn q35_16mib() {
        let m = map(&[(0, 16 << 20, 1), (0xFEFF_C000, 0x4000, 2)]);
        let res = [
            (layout::SNP_SECRETS_PAGE, layout::HANDOFF_END),
            (0x20_0000, 0x40_0000),
        ];
        let r = Regions::build(&m, &res, layout::IDENTITY_MAPPED_END).unwrap();
        check_invariants(&r);
        let s = r.as_slice();
        assert_eq!(s[0], region(0x1000, 0x9_0000, MemoryRegionKind::Bootloader));
        assert_eq!(s[1], region(0x9_0000, 0xA_0000, MemoryRegionKind::Usable));
        assert_eq!(s[2], region(0x10_0000, 0x20_0000, MemoryRegionKind::Usable));
        assert_eq!(
            s[3],
            region(0x20_0000, 0x40_0000, MemoryRegionKind::Bootloader)
        );
        assert_eq!(s[4], region(0x40_0000, 16 << 20, MemoryRegionKind::Usable));
        assert_eq!(s[5].kind, MemoryRegionKind::UnknownBios(2));
        assert_eq!(
            r.usable_bytes(),
            0x1_0000 + 0x10_0000 + (16 << 20) - 0x40_0000
        );
    }

    #[test]
    fn overlapping_and_unaligned_ram_is_never_handed_out_twice() {
        let m = map(&[
            (0, 0x30_0000, 1),
            (0x20_0800, 0x30_0000, 1),       // overlaps and is unaligned
            (0x1_0000_0000, 0x1000_0000, 1), // above 4 GiB: dropped by the limit
        ]);
        let r = Regions::build(&m, &[], layout::IDENTITY_MAPPED_END).unwrap();
        check_invariants(&r);
        assert_eq!(r.usable_bytes(), 0xA_0000 - 0x1000 + 0x50_0000 - 0x10_0000);
    }

    #[test]
    fn reserved_outside_ram_is_refused() {
        let m = map(&[(0, 0x10_0000, 1)]);
        assert_eq!(
            Regions::build(&m, &[(0x20_0000, 0x30_0000)], u64::MAX).unwrap_err(),
            RegionError::ReservedNotRam {
                start: 0x20_0000,
                end: 0x30_0000
            }
        );
        // Straddling the legacy hole is refused too.
        assert!(Regions::build(&m, &[(0x9_0000, 0xB_0000)], u64::MAX).is_err());
    }
}
