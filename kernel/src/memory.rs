//! Planning the kernel's use of RAM from the `BootInfo` memory regions.
//!
//! The shared-page pool is not planned here: its place is fixed by the layout
//! (`vellum_boot::layout::POOL_BASE`), boot reserves it, makes it shared under
//! SEV-SNP and reports it in the hand-off block. The heap takes the largest
//! usable range.

use bootloader_api::info::{MemoryRegion, MemoryRegionKind};

/// Page size.
pub const PAGE: u64 = 0x1000;

/// A half-open physical range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    /// True when the two ranges share a byte.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Where the kernel's memory goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Plan {
    /// The heap.
    pub heap: Range,
    /// Usable RAM in total, before the plan.
    pub usable: u64,
}

/// Why no plan could be made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PlanError {
    /// Less than the minimum left for the heap.
    HeapTooSmall {
        /// Bytes found.
        found: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A usable region overlaps the pool (boot must have reserved it).
    PoolNotReserved,
}

/// Puts the heap on the largest page-aligned usable range, capped at
/// `max_heap`, and checks that no usable range overlaps the `pool`.
pub fn plan(
    regions: &[MemoryRegion],
    pool: Range,
    min_heap: u64,
    max_heap: u64,
) -> Result<Plan, PlanError> {
    let usable = regions
        .iter()
        .filter(|r| r.kind == MemoryRegionKind::Usable);
    let total = usable.clone().map(|r| r.end - r.start).sum();
    if usable.clone().any(|r| {
        Range {
            start: r.start,
            end: r.end,
        }
        .overlaps(&pool)
    }) {
        return Err(PlanError::PoolNotReserved);
    }
    let heap = usable
        .map(|r| Range {
            start: r.start.div_ceil(PAGE) * PAGE,
            end: r.end / PAGE * PAGE,
        })
        .filter(|r| !r.is_empty())
        .max_by_key(|r| r.len())
        .map(|r| Range {
            start: r.start,
            end: r.start + r.len().min(max_heap),
        })
        .unwrap_or(Range { start: 0, end: 0 });
    if heap.len() < min_heap.max(1) {
        return Err(PlanError::HeapTooSmall {
            found: heap.len(),
            needed: min_heap,
        });
    }
    Ok(Plan {
        heap,
        usable: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, kind: MemoryRegionKind) -> MemoryRegion {
        MemoryRegion { start, end, kind }
    }

    const U: MemoryRegionKind = MemoryRegionKind::Usable;
    const B: MemoryRegionKind = MemoryRegionKind::Bootloader;
    const POOL: Range = Range {
        start: 0x10_0000,
        end: 0x20_0000,
    };

    #[test]
    fn heap_on_the_largest_usable_range() {
        let regs = [
            r(0x1000, 0x9_0000, B),
            r(0x9_0000, 0xA_0000, U),
            r(0x10_0000, 0x20_0000, B),
            r(0x20_0000, 0x40_0000, B),
            r(0x40_0800, 0x100_0000, U),
        ];
        let p = plan(&regs, POOL, 0x10_0000, u64::MAX).unwrap();
        assert_eq!(
            p.heap,
            Range {
                start: 0x40_1000,
                end: 0x100_0000
            }
        );
        assert_eq!(p.usable, 0x1_0000 + 0xC0_0000 - 0x800);
        let p = plan(&regs, POOL, 0, 0x1000).unwrap();
        assert_eq!(p.heap.len(), 0x1000);
    }

    #[test]
    fn errors_are_clear() {
        let regs = [r(0x20_0000, 0x30_0000, U)];
        assert_eq!(
            plan(&regs, POOL, 0x20_0000, u64::MAX).unwrap_err(),
            PlanError::HeapTooSmall {
                found: 0x10_0000,
                needed: 0x20_0000
            }
        );
        assert_eq!(
            plan(&[], POOL, 0, u64::MAX).unwrap_err(),
            PlanError::HeapTooSmall {
                found: 0,
                needed: 0
            }
        );
        let bad = [r(0x18_0000, 0x30_0000, U)];
        assert_eq!(
            plan(&bad, POOL, 0, u64::MAX).unwrap_err(),
            PlanError::PoolNotReserved
        );
    }
}
