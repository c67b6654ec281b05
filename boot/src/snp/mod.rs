//! The pure half of Vellum's AMD SEV-SNP guest support.
//!
//! Everything here is host-tested and free of `unsafe`: encoders and validating
//! decoders for the GHCB MSR protocol, the GHCB page and its NAE calls, Page
//! State Change batching and its resume loop, the memory-validation plan and
//! its proof object, the SNP CPUID page, the SEV_STATUS feature and VMPL0
//! checks, the #VC decision, and SNP guest messages (framing, sequence
//! numbers, BUSY resends and burning the key). The
//! instructions themselves (PVALIDATE, VMGEXIT, RDMSR/WRMSR, the #VC entry,
//! page-table edits) live in `boot/src/entry.s`, `boot/src/sev.rs` and
//! `kernel/src/sev/`, which
//! plug into the traits defined here:
//!
//! | trait | module | the unsafe side provides |
//! |---|---|---|
//! | [`ghcb::GhcbMem`] | `ghcb` | volatile copies in/out of the shared GHCB page |
//! | [`ghcb::Hypervisor`] | `ghcb` | write the GHCB GPA to MSR 0xC001_0130, fence, VMGEXIT, fence |
//! | [`validate::Validator`] | `validate` | PSC to private (through [`ghcb::Ghcb`]), PVALIDATE, touch |
//! | [`guest_msg::Aead`] | `guest_msg` | AES-256-GCM keyed with VMPCK0 (the `crypto` crate) |
//! | [`guest_msg::GuestRequestHost`] | `guest_msg` | copies to/from the shared message pages, the guest-request NAE, the clock, wiping VMPCK0 |
//!
//! Every error type is a small `Copy` enum. The rule for callers is *fail
//! closed*: any error that stems from hypervisor behaviour ends in a GHCB
//! terminate request ([`msr_protocol::terminate_request`]) with a reason from
//! [`msr_protocol::TerminateReason`] (`docs/snp-termination.md`), with one
//! exception: a failed guest request (attestation) burns VMPCK0
//! ([`guest_msg::GuestChannel`]) and the guest keeps serving without reports.
//!
//! Sources are cited per module; `docs/snp-reference.md` collects the numbers
//! with their sources (its § numbers are quoted as "reference §n").

pub mod cpuid;
pub mod ghcb;
pub mod guest_msg;
pub mod msr_protocol;
pub mod psc;
pub mod sev_status;
pub mod validate;
pub mod vc;

use crate::layout::{LARGE_PAGE_SIZE, PAGE_SIZE};

/// Page size of an RMP/PSC/PVALIDATE operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => PAGE_SIZE,
            PageSize::Size2M => LARGE_PAGE_SIZE,
        }
    }
}

/// Target state of a page state change (GHCB spec 56421 §2.3.1 "SNP Page State
/// Change" and §4.1.6 PSC NAE: operation 1 = private, 2 = shared; Linux
/// `SNP_PAGE_STATE_PRIVATE`/`SNP_PAGE_STATE_SHARED` in `sev-common.h`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum PageState {
    /// Assign the page to the guest (RMP assigned).
    Private = 1,
    /// Give the page to the hypervisor.
    Shared = 2,
}

/// A page-aligned guest-physical range `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GpaRange {
    /// First byte (4 KiB aligned).
    pub start: u64,
    /// One past the last byte (4 KiB aligned, `> start`).
    pub end: u64,
}

impl GpaRange {
    /// A range; `None` unless both ends are 4 KiB aligned and `start < end`.
    pub const fn new(start: u64, end: u64) -> Option<Self> {
        if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) || start >= end {
            return None;
        }
        Some(GpaRange { start, end })
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always false for a range built by [`GpaRange::new`].
    pub const fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// The pages covering the range: 2 MiB pages where a 2 MiB-aligned page
    /// lies fully inside, 4 KiB pages elsewhere, in ascending order.
    pub const fn pages(&self) -> PageSplit {
        PageSplit {
            next: self.start,
            end: self.end,
        }
    }
}

/// One page of a [`PageSplit`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Page {
    /// Guest-physical address (aligned to `size`).
    pub gpa: u64,
    /// Page size.
    pub size: PageSize,
}

/// Iterator splitting a [`GpaRange`] into 2 MiB pages where aligned and fully
/// inside, 4 KiB pages elsewhere (head, 2 MiB body, tail; Oak
/// `stage0_sev/src/platform/accept_memory.rs` does the same split).
#[derive(Clone, Debug)]
pub struct PageSplit {
    next: u64,
    end: u64,
}

impl Iterator for PageSplit {
    type Item = Page;

    fn next(&mut self) -> Option<Page> {
        if self.next >= self.end {
            return None;
        }
        let gpa = self.next;
        let big = gpa.is_multiple_of(LARGE_PAGE_SIZE)
            && self
                .end
                .checked_sub(gpa)
                .is_some_and(|left| left >= LARGE_PAGE_SIZE);
        let size = if big {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        };
        self.next = gpa + size.bytes();
        Some(Page { gpa, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: u64, e: u64) -> Vec<(u64, PageSize)> {
        GpaRange::new(s, e)
            .unwrap()
            .pages()
            .map(|p| (p.gpa, p.size))
            .collect()
    }

    #[test]
    fn range_rules() {
        assert!(GpaRange::new(0, 0).is_none());
        assert!(GpaRange::new(0x1000, 0x1000).is_none());
        assert!(GpaRange::new(0x1001, 0x2000).is_none());
        assert!(GpaRange::new(0x1000, 0x2001).is_none());
        assert!(GpaRange::new(0x2000, 0x1000).is_none());
        let r = GpaRange::new(0x1000, 0x3000).unwrap();
        assert_eq!(r.len(), 0x2000);
        assert!(!r.is_empty());
        assert_eq!(PageSize::Size4K.bytes(), 0x1000);
        assert_eq!(PageSize::Size2M.bytes(), 0x20_0000);
    }

    #[test]
    fn split_head_body_tail() {
        use PageSize::*;
        // Fully aligned: only 2 MiB pages.
        assert_eq!(
            split(0x20_0000, 0x60_0000),
            [(0x20_0000, Size2M), (0x40_0000, Size2M)]
        );
        // Unaligned head and tail.
        let v = split(0x1F_E000, 0x40_2000);
        assert_eq!(v[0], (0x1F_E000, Size4K));
        assert_eq!(v[1], (0x1F_F000, Size4K));
        assert_eq!(v[2], (0x20_0000, Size2M));
        assert_eq!(v[3], (0x40_0000, Size4K));
        assert_eq!(v[4], (0x40_1000, Size4K));
        assert_eq!(v.len(), 5);
        // Aligned start but shorter than 2 MiB: all 4 KiB.
        let v = split(0x20_0000, 0x3F_F000);
        assert_eq!(v.len(), 511);
        assert!(v.iter().all(|p| p.1 == Size4K));
        // Coverage is exact and contiguous.
        let mut at = 0x1F_E000;
        for (gpa, size) in split(0x1F_E000, 0x80_3000) {
            assert_eq!(gpa, at);
            assert_eq!(gpa % size.bytes(), 0);
            at += size.bytes();
        }
        assert_eq!(at, 0x80_3000);
    }

    #[test]
    fn split_near_the_top_of_the_address_space() {
        let top = u64::MAX - 0xFFF; // last 4 KiB-aligned address
        let v = split(top - 0x1000, top);
        assert_eq!(v, [(top - 0x1000, PageSize::Size4K)]);
    }
}
