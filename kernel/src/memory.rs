//! Planning the kernel's use of RAM from the `BootInfo` memory regions.
//!
//! The shared-page pool is carved first (one contiguous, page-aligned range,
//! the only memory the host may ever access), then the heap takes the largest
//! usable range left.

use bootloader_api::info::{MemoryRegion, MemoryRegionKind};

/// Page size.
pub const PAGE: u64 = 0x1000;
/// The pool is placed and sized in whole 2 MiB pages, so that under SEV-SNP
/// its mapping differs from private memory in whole page-directory entries.
pub const POOL_ALIGN: u64 = 0x20_0000;

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
        self.end - self.start
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// Where the kernel's memory goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Plan {
    /// The shared pool (empty when none was asked for).
    pub pool: Range,
    /// The heap.
    pub heap: Range,
    /// Usable RAM in total, before the plan.
    pub usable: u64,
}

/// Why no plan could be made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PlanError {
    /// No usable range can hold the pool.
    NoRoomForPool {
        /// Bytes asked for.
        wanted: u64,
    },
    /// Less than `min_heap` left for the heap.
    HeapTooSmall {
        /// Bytes found.
        found: u64,
    },
}

/// Places a pool of `pool_bytes` (rounded up to [`POOL_ALIGN`]) at the lowest
/// 2 MiB-aligned address of a usable range that holds it, then the heap on the
/// largest usable range (or remainder) left, capped at `max_heap`.
pub fn plan(
    regions: &[MemoryRegion],
    pool_bytes: u64,
    min_heap: u64,
    max_heap: u64,
) -> Result<Plan, PlanError> {
    let usable = |r: &&MemoryRegion| r.kind == MemoryRegionKind::Usable;
    let aligned = |r: &MemoryRegion| Range {
        start: r.start.div_ceil(PAGE) * PAGE,
        end: r.end / PAGE * PAGE,
    };
    let total = regions.iter().filter(usable).map(|r| r.end - r.start).sum();
    let pool_bytes = pool_bytes.div_ceil(POOL_ALIGN) * POOL_ALIGN;
    let mut pool = Range { start: 0, end: 0 };
    if pool_bytes > 0 {
        pool = regions
            .iter()
            .filter(usable)
            .map(|r| Range {
                start: r.start.div_ceil(POOL_ALIGN) * POOL_ALIGN,
                end: r.end / PAGE * PAGE,
            })
            .find(|r| r.start < r.end && r.len() >= pool_bytes)
            .map(|r| Range {
                start: r.start,
                end: r.start + pool_bytes,
            })
            .ok_or(PlanError::NoRoomForPool { wanted: pool_bytes })?;
    }
    let heap = regions
        .iter()
        .filter(usable)
        .map(aligned)
        .map(|r| {
            if r.start < pool.end && pool.start < r.end {
                // The larger of the pieces before and after the pool.
                let before = Range {
                    start: r.start,
                    end: pool.start,
                };
                let after = Range {
                    start: pool.end,
                    end: r.end,
                };
                if before.len() > after.len() {
                    before
                } else {
                    after
                }
            } else {
                r
            }
        })
        .filter(|r| !r.is_empty())
        .max_by_key(|r| r.len())
        .map(|r| Range {
            start: r.start,
            end: r.start + r.len().min(max_heap),
        })
        .unwrap_or(Range { start: 0, end: 0 });
    if heap.is_empty() || heap.len() < min_heap {
        return Err(PlanError::HeapTooSmall {
            found: if heap.is_empty() { 0 } else { heap.len() },
        });
    }
    Ok(Plan {
        pool,
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

    #[test]
    fn pool_then_heap() {
        let regs = [
            r(0x1000, 0x9_0000, B),
            r(0x9_0000, 0xA_0000, U),
            r(0x10_0000, 0x20_0000, U),
            r(0x20_0000, 0x40_0000, B),
            r(0x40_0000, 0x100_0000, U),
        ];
        let p = plan(&regs, 0x8_0000, 0x10_0000, u64::MAX).unwrap();
        // Rounded up to 2 MiB and 2 MiB aligned: only the last range holds it.
        assert_eq!(
            p.pool,
            Range {
                start: 0x40_0000,
                end: 0x60_0000
            }
        );
        assert_eq!(
            p.heap,
            Range {
                start: 0x60_0000,
                end: 0x100_0000
            }
        );
        assert_eq!(p.usable, 0x1_0000 + 0x10_0000 + 0xC0_0000);
        // The heap may share the pool's range when that range is the largest.
        let p = plan(&regs, 0x100_000 - 0x1000, 0, u64::MAX).unwrap();
        assert!(p.heap.start >= p.pool.end || p.heap.end <= p.pool.start);
    }

    #[test]
    fn never_overlaps_and_errors_are_clear() {
        let regs = [r(0x10_0000, 0x50_0000, U)];
        let p = plan(&regs, 0x1_0001, 0, u64::MAX).unwrap();
        assert_eq!(
            p.pool,
            Range {
                start: 0x20_0000,
                end: 0x40_0000
            }
        );
        assert_eq!(
            p.heap,
            Range {
                start: 0x40_0000,
                end: 0x50_0000
            }
        );
        assert_eq!(
            plan(&regs, 0x100_0000, 0, u64::MAX).unwrap_err(),
            PlanError::NoRoomForPool { wanted: 0x100_0000 }
        );
        assert_eq!(
            plan(&regs, 0x1F_0000, 0x20_0000, u64::MAX).unwrap_err(),
            PlanError::HeapTooSmall { found: 0x10_0000 }
        );
        let p = plan(&regs, 0, 0, 0x1000).unwrap();
        assert_eq!(p.heap.len(), 0x1000);
    }
}
