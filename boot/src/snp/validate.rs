//! Memory validation: the plan, the PVALIDATE result rules, the record of
//! validated memory, and the driver that executes the plan.
//!
//! Sources: AMD APM vol. 3 (24594) "PVALIDATE" (RAX = page VA, ECX = size
//! 0 = 4 KiB / 1 = 2 MiB, EDX = 1 validate / 0 rescind; EAX = 0 success,
//! 1 FAIL_INPUT, 6 FAIL_SIZEMISMATCH; rFLAGS.CF = 1 when the RMP was not
//! changed); Linux `arch/x86/include/asm/sev.h` (`PVALIDATE_FAIL_INPUT`,
//! `PVALIDATE_FAIL_SIZEMISMATCH`, `PVALIDATE_FAIL_NOUPDATE` = 255 for CF = 1)
//! and `pvalidate_pages()` (2 MiB → 4 KiB fallback on size mismatch); Oak
//! `stage0_sev/src/platform/accept_memory.rs` (PSC to private, then PVALIDATE;
//! CF = 1 on a first validation is a double-validation attack → stop); Linux
//! commit 7b306dfa326f (touch each page after validation when CPUID
//! 0x8000_001F EBX\[31\] COHERENCY_SFW_NO is clear); reference §4 "PVALIDATE" and
//! "Make a page shared / private", §1.3/§1.4 (what LAUNCH_UPDATE already
//! validated: the whole image and every ASEV range).
//!
//! # Why a range set, not a bitmap
//!
//! [`ValidatedSet`] records validated memory as a sorted, coalesced list of at
//! most [`SET_CAPACITY`] disjoint ranges (2 KiB). A 4 KiB-granular bitmap over
//! 4 GiB would be 128 KiB: 40 % of boot's 320 KiB RAM image, and too big to
//! hand to the kernel in the 64 KiB hand-off area. Boot validates a handful of
//! contiguous runs (one per e820 RAM range, split by the launch ranges), which
//! coalesce into a few entries; the kernel's later share/unshare of its pool
//! adds a few more. The set is exact at 4 KiB granularity, has no 4 GiB limit,
//! and its operations are O(capacity), which is negligible next to a VMGEXIT.

use super::{GpaRange, Page, PageSize, psc::PscError};
use crate::{
    e820::{E820, TYPE_RAM},
    layout::{self, PAGE_SIZE},
};

/// PVALIDATE EAX: success.
pub const PVALIDATE_SUCCESS: u32 = 0;
/// PVALIDATE EAX: FAIL_INPUT.
pub const PVALIDATE_FAIL_INPUT: u32 = 1;
/// PVALIDATE EAX: FAIL_SIZEMISMATCH.
pub const PVALIDATE_FAIL_SIZEMISMATCH: u32 = 6;

/// PVALIDATE outcome decoded from `(EAX, rFLAGS.CF)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PvalidateResult {
    /// EAX = 0, CF = 0: the RMP entry changed.
    Success,
    /// EAX = 0, CF = 1: the RMP already had that state (Linux
    /// `PVALIDATE_FAIL_NOUPDATE`). On a first validation this means the page
    /// was validated behind our back: double validation.
    NoUpdate,
    /// EAX = 1: bad input (alignment, size, not assigned to the guest).
    FailInput,
    /// EAX = 6: 2 MiB requested but the RMP entry is 4 KiB.
    FailSizeMismatch,
    /// Any other EAX.
    Unknown(u32),
}

impl PvalidateResult {
    /// Decodes PVALIDATE's outputs. A non-zero EAX wins over CF.
    pub const fn decode(eax: u32, cf: bool) -> Self {
        match (eax, cf) {
            (PVALIDATE_SUCCESS, false) => PvalidateResult::Success,
            (PVALIDATE_SUCCESS, true) => PvalidateResult::NoUpdate,
            (PVALIDATE_FAIL_INPUT, _) => PvalidateResult::FailInput,
            (PVALIDATE_FAIL_SIZEMISMATCH, _) => PvalidateResult::FailSizeMismatch,
            (other, _) => PvalidateResult::Unknown(other),
        }
    }
}

/// Why the plan could not be made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PlanError {
    /// Image size zero, not a multiple of 64 KiB, or above 8 MiB.
    BadImageSize(u64),
    /// More pieces than [`PLAN_CAPACITY`].
    TooManyRanges,
}

/// Why validation stopped. Every variant means: terminate
/// ([`super::msr_protocol::TerminateReason::PVALIDATE`] or `PSC`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ValidateError {
    /// The page state change to private failed.
    Psc(PscError),
    /// PVALIDATE reported no RMP change (CF = 1) on a page we never
    /// validated: the hypervisor aliased or remapped it.
    DoubleValidation {
        /// The page.
        gpa: u64,
        /// Its size.
        size: PageSize,
    },
    /// PVALIDATE returned FAIL_INPUT.
    FailInput {
        /// The page.
        gpa: u64,
        /// Its size.
        size: PageSize,
    },
    /// FAIL_SIZEMISMATCH on a 4 KiB PVALIDATE (impossible per the APM).
    SizeMismatch4K(u64),
    /// PVALIDATE returned an undocumented code.
    Unknown {
        /// The page.
        gpa: u64,
        /// EAX.
        eax: u32,
    },
    /// The record of validated memory refused the operation.
    Set(SetError),
}

impl From<PscError> for ValidateError {
    fn from(e: PscError) -> Self {
        ValidateError::Psc(e)
    }
}

impl From<SetError> for ValidateError {
    fn from(e: SetError) -> Self {
        ValidateError::Set(e)
    }
}

// ---------------------------------------------------------------------------
// Fixed-capacity sorted range list.

/// A sorted list of disjoint ranges with capacity `N`.
#[derive(Clone, Copy)]
struct RangeList<const N: usize> {
    list: [GpaRange; N],
    len: usize,
}

impl<const N: usize> RangeList<N> {
    const fn new() -> Self {
        RangeList {
            list: [GpaRange { start: 0, end: 0 }; N],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[GpaRange] {
        &self.list[..self.len]
    }

    fn insert_at(&mut self, i: usize, r: GpaRange) -> Result<(), ()> {
        if self.len == N {
            return Err(());
        }
        self.list.copy_within(i..self.len, i + 1);
        self.list[i] = r;
        self.len += 1;
        Ok(())
    }

    fn remove_at(&mut self, i: usize) {
        self.list.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Removes `[start, end)` from every range, splitting where needed.
    fn subtract(&mut self, start: u64, end: u64) -> Result<(), ()> {
        let mut i = 0;
        while i < self.len {
            let r = self.list[i];
            if r.end <= start || end <= r.start {
                i += 1;
                continue;
            }
            let before = GpaRange::new(r.start, start.max(r.start));
            let after = GpaRange::new(end.min(r.end), r.end);
            self.remove_at(i);
            if let Some(b) = before {
                self.insert_at(i, b)?;
                i += 1;
            }
            if let Some(a) = after {
                self.insert_at(i, a)?;
                i += 1;
            }
        }
        Ok(())
    }
}

impl<const N: usize> core::fmt::Debug for RangeList<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

// ---------------------------------------------------------------------------
// The plan.

/// Most disjoint ranges a plan holds (32 e820 entries, each split at most a
/// few times by the launch ranges and the legacy hole).
pub const PLAN_CAPACITY: usize = 64;

/// Checks the image size (non-zero, a multiple of 64 KiB, at most 8 MiB).
pub fn check_image_size(image_size: u64) -> Result<(), PlanError> {
    if image_size == 0
        || !image_size.is_multiple_of(layout::IMAGE_ALIGN)
        || image_size > layout::IMAGE_MAX_SIZE
    {
        return Err(PlanError::BadImageSize(image_size));
    }
    Ok(())
}

/// What the launch (SNP_LAUNCH_UPDATE) already validated: the firmware image
/// `[4 GiB - size, 4 GiB)` and the ASEV ranges (secrets page, CPUID page,
/// SNP_SEC_MEM). Boot must never PVALIDATE these (reference §4).
pub fn launch_validated(image_size: u64) -> Result<[GpaRange; 4], PlanError> {
    check_image_size(image_size)?;
    let r = |s, e| GpaRange::new(s, e).ok_or(PlanError::BadImageSize(image_size));
    Ok([
        r(
            layout::SNP_SECRETS_PAGE,
            layout::SNP_SECRETS_PAGE + PAGE_SIZE,
        )?,
        r(layout::SNP_CPUID_PAGE, layout::SNP_CPUID_PAGE + PAGE_SIZE)?,
        r(layout::SEC_MEM_START, layout::SEC_MEM_END)?,
        r(layout::FIRMWARE_TOP - image_size, layout::FIRMWARE_TOP)?,
    ])
}

/// The memory boot must validate: sorted, disjoint, 4 KiB-aligned ranges.
#[derive(Clone, Copy, Debug)]
pub struct ValidationPlan {
    ranges: RangeList<PLAN_CAPACITY>,
}

impl ValidationPlan {
    /// The plan for `map` and an image of `image_size` bytes: every RAM page
    /// below [`layout::IDENTITY_MAPPED_END`], excluding page 0 (never used,
    /// left unvalidated as a null guard), the legacy hole, the shared-page pool
    /// `[layout::POOL_BASE, layout::POOL_END)` (shared with the host, never
    /// validated), and everything the launch validated ([`launch_validated`]). Overlapping or unaligned RAM
    /// entries (a lying map) are merged and trimmed inward, so no page appears
    /// twice.
    pub fn new(map: &E820, image_size: u64) -> Result<Self, PlanError> {
        let launch = launch_validated(image_size)?;
        let mut raw = RangeList::<{ crate::e820::MAX_ENTRIES }>::new();
        for e in map.entries().iter().filter(|e| e.kind == TYPE_RAM) {
            let start = layout::align_up(e.start.max(PAGE_SIZE), PAGE_SIZE);
            let end = layout::align_down(e.end.min(layout::IDENTITY_MAPPED_END), PAGE_SIZE);
            if let Some(r) = start.and_then(|s| GpaRange::new(s, end)) {
                raw.list[raw.len] = r;
                raw.len += 1;
            }
        }
        let mut plan = ValidationPlan {
            ranges: RangeList::new(),
        };
        plan.merge_in(raw.as_slice())?;
        for (s, e) in [
            (layout::LEGACY_HOLE_START, layout::LEGACY_HOLE_END),
            (layout::POOL_BASE, layout::POOL_END),
        ] {
            plan.ranges
                .subtract(s, e)
                .map_err(|()| PlanError::TooManyRanges)?;
        }
        for l in launch {
            plan.ranges
                .subtract(l.start, l.end)
                .map_err(|()| PlanError::TooManyRanges)?;
        }
        Ok(plan)
    }

    /// A plan over exactly `ranges` (sorted and merged), for callers that
    /// validate memory later (the kernel's pool) and for tests.
    pub fn from_ranges(ranges: &[GpaRange]) -> Result<Self, PlanError> {
        let mut plan = ValidationPlan {
            ranges: RangeList::new(),
        };
        plan.merge_in(ranges)?;
        Ok(plan)
    }

    fn merge_in(&mut self, ranges: &[GpaRange]) -> Result<(), PlanError> {
        let mut tmp = [GpaRange::default(); PLAN_CAPACITY];
        if ranges.len() > PLAN_CAPACITY {
            return Err(PlanError::TooManyRanges);
        }
        tmp[..ranges.len()].copy_from_slice(ranges);
        let tmp = &mut tmp[..ranges.len()];
        tmp.sort_unstable_by_key(|r| r.start);
        for r in tmp.iter() {
            if r.is_empty() {
                continue;
            }
            match self.ranges.len.checked_sub(1) {
                Some(last) if self.ranges.list[last].end >= r.start => {
                    let l = &mut self.ranges.list[last];
                    l.end = l.end.max(r.end);
                }
                _ => self
                    .ranges
                    .insert_at(self.ranges.len, *r)
                    .map_err(|()| PlanError::TooManyRanges)?,
            }
        }
        Ok(())
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[GpaRange] {
        self.ranges.as_slice()
    }

    /// Every PVALIDATE step: 2 MiB where aligned and fully inside, else 4 KiB.
    pub fn steps(&self) -> impl Iterator<Item = Page> + '_ {
        self.ranges().iter().flat_map(GpaRange::pages)
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.ranges().iter().map(GpaRange::len).sum()
    }
}

// ---------------------------------------------------------------------------
// The record of validated memory.

/// Most disjoint ranges a [`ValidatedSet`] holds.
pub const SET_CAPACITY: usize = 128;

/// Why the validated set refused an operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SetError {
    /// Part of the range is already validated (the first such page).
    AlreadyValidated(u64),
    /// Part of the range is not validated (rescind of unvalidated memory).
    NotValidated(u64),
    /// Capacity exhausted.
    Full,
}

/// Proof object: every page validated so far (including what the launch
/// validated), refusing any second validation.
#[derive(Clone, Copy, Debug)]
pub struct ValidatedSet {
    ranges: RangeList<SET_CAPACITY>,
}

impl Default for ValidatedSet {
    fn default() -> Self {
        Self::new()
    }
}

impl ValidatedSet {
    /// Nothing validated.
    pub const fn new() -> Self {
        ValidatedSet {
            ranges: RangeList::new(),
        }
    }

    /// Seeded with [`launch_validated`]: those pages can never be validated again.
    pub fn with_launch_ranges(image_size: u64) -> Result<Self, PlanError> {
        let mut s = Self::new();
        for r in launch_validated(image_size)? {
            // Disjoint by construction (layout asserts) and 4 entries ≪ capacity.
            s.insert(r).map_err(|_| PlanError::TooManyRanges)?;
        }
        Ok(s)
    }

    /// The validated ranges, sorted and coalesced.
    pub fn ranges(&self) -> &[GpaRange] {
        self.ranges.as_slice()
    }

    /// Whether the page containing `gpa` is validated.
    pub fn contains(&self, gpa: u64) -> bool {
        self.ranges().iter().any(|r| r.start <= gpa && gpa < r.end)
    }

    /// Whether every byte of `r` is validated.
    pub fn covers(&self, r: GpaRange) -> bool {
        self.ranges()
            .iter()
            .any(|v| v.start <= r.start && r.end <= v.end)
    }

    /// Ok if no page of `r` is validated; else the first validated page.
    pub fn check_free(&self, r: GpaRange) -> Result<(), SetError> {
        match self
            .ranges()
            .iter()
            .find(|v| v.start < r.end && r.start < v.end)
        {
            Some(v) => Err(SetError::AlreadyValidated(v.start.max(r.start))),
            None => Ok(()),
        }
    }

    /// Records `r` as validated; refuses if any page of it already is.
    pub fn insert(&mut self, r: GpaRange) -> Result<(), SetError> {
        self.check_free(r)?;
        let i = self.ranges().partition_point(|v| v.end <= r.start);
        let merge_prev = i > 0 && self.ranges.list[i - 1].end == r.start;
        let merge_next = i < self.ranges.len && self.ranges.list[i].start == r.end;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.ranges.list[i - 1].end = self.ranges.list[i].end;
                self.ranges.remove_at(i);
            }
            (true, false) => self.ranges.list[i - 1].end = r.end,
            (false, true) => self.ranges.list[i].start = r.start,
            (false, false) => self.ranges.insert_at(i, r).map_err(|()| SetError::Full)?,
        }
        Ok(())
    }

    /// The first page of `r` that is not validated, if any.
    pub fn first_unvalidated(&self, r: GpaRange) -> Option<u64> {
        let mut at = r.start;
        // Walk the sorted ranges that overlap `r`; a gap is the answer.
        for v in self
            .ranges()
            .iter()
            .filter(|v| v.end > r.start && v.start < r.end)
        {
            if v.start > at {
                return Some(at);
            }
            at = v.end;
            if at >= r.end {
                return None;
            }
        }
        (at < r.end).then_some(at)
    }

    /// Forgets `r` (after a rescind); every page of it must be validated.
    pub fn remove(&mut self, r: GpaRange) -> Result<(), SetError> {
        if let Some(first) = self.first_unvalidated(r) {
            return Err(SetError::NotValidated(first));
        }
        self.ranges
            .subtract(r.start, r.end)
            .map_err(|()| SetError::Full)
    }
}

// ---------------------------------------------------------------------------
// The driver.

/// The instructions validation needs, implemented by boot/kernel.
///
/// # Implementation contract
///
/// `psc_private` asks the hypervisor to make `range` private (GHCB PSC via
/// [`super::ghcb::Ghcb::change_page_state`], or the MSR protocol before a
/// GHCB exists). `pvalidate` executes PVALIDATE on the page at guest-physical
/// `gpa` (through a mapping with the C-bit set) and returns `(EAX, CF)`
/// unmodified. `touch` reads the first and last byte of the 4 KiB page at
/// `gpa` (private mapping).
pub trait Validator {
    /// Page state change of `range` to private.
    fn psc_private(&mut self, range: GpaRange) -> Result<(), PscError>;
    /// PVALIDATE: returns `(EAX, rFLAGS.CF)`.
    fn pvalidate(&mut self, gpa: u64, size: PageSize, validate: bool) -> (u32, bool);
    /// Reads the first and last byte of the 4 KiB page at `gpa`.
    fn touch(&mut self, gpa: u64);
}

/// Whether to touch pages after validation: required when CPUID 0x8000_001F
/// EBX\[31\] (COHERENCY_SFW_NO) is clear.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Touch {
    /// Touch the first and last byte of every 4 KiB page.
    EveryPage,
    /// The CPU does not need it.
    Never,
}

impl Touch {
    /// From CPUID 0x8000_001F EBX (bit 31 = COHERENCY_SFW_NO).
    pub const fn from_cpuid_8000_001f_ebx(ebx: u32) -> Self {
        if ebx & (1 << 31) != 0 {
            Touch::Never
        } else {
            Touch::EveryPage
        }
    }
}

/// What a run of [`validate_plan`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// 2 MiB PVALIDATEs that succeeded.
    pub pages_2m: u64,
    /// 4 KiB PVALIDATEs that succeeded.
    pub pages_4k: u64,
    /// 2 MiB steps that fell back to 512 × 4 KiB.
    pub fallbacks: u64,
}

/// Executes `plan`: per range, refuse if any page is already in `set`, PSC
/// the range to private, then PVALIDATE each step (2 MiB falling back to
/// 512 × 4 KiB on FAIL_SIZEMISMATCH), touch, and record it in `set`.
pub fn validate_plan<V: Validator>(
    plan: &ValidationPlan,
    v: &mut V,
    set: &mut ValidatedSet,
    touch: Touch,
) -> Result<Stats, ValidateError> {
    let mut stats = Stats::default();
    for &range in plan.ranges() {
        set.check_free(range)?;
        v.psc_private(range)?;
        for page in range.pages() {
            validate_page(v, set, page, touch, &mut stats)?;
        }
    }
    Ok(stats)
}

fn validate_page<V: Validator>(
    v: &mut V,
    set: &mut ValidatedSet,
    page: Page,
    touch: Touch,
    stats: &mut Stats,
) -> Result<(), ValidateError> {
    let Page { gpa, size } = page;
    let range = GpaRange::new(gpa, gpa + size.bytes()).ok_or(SetError::NotValidated(gpa))?;
    set.check_free(range)?;
    let (eax, cf) = v.pvalidate(gpa, size, true);
    match (PvalidateResult::decode(eax, cf), size) {
        (PvalidateResult::Success, _) => {
            set.insert(range)?;
            if touch == Touch::EveryPage {
                for k in 0..size.bytes() / PAGE_SIZE {
                    v.touch(gpa + k * PAGE_SIZE);
                }
            }
            match size {
                PageSize::Size2M => stats.pages_2m += 1,
                PageSize::Size4K => stats.pages_4k += 1,
            }
            Ok(())
        }
        (PvalidateResult::FailSizeMismatch, PageSize::Size2M) => {
            stats.fallbacks += 1;
            for k in 0..size.bytes() / PAGE_SIZE {
                let small = Page {
                    gpa: gpa + k * PAGE_SIZE,
                    size: PageSize::Size4K,
                };
                validate_page(v, set, small, touch, stats)?;
            }
            Ok(())
        }
        (PvalidateResult::FailSizeMismatch, PageSize::Size4K) => {
            Err(ValidateError::SizeMismatch4K(gpa))
        }
        (PvalidateResult::NoUpdate, _) => Err(ValidateError::DoubleValidation { gpa, size }),
        (PvalidateResult::FailInput, _) => Err(ValidateError::FailInput { gpa, size }),
        (PvalidateResult::Unknown(eax), _) => Err(ValidateError::Unknown { gpa, eax }),
    }
}

/// Rescinds validation of `range` before it is shared, and forgets it in
/// `set`. Steps follow the same split as validation (2 MiB where aligned and
/// inside, falling back to 4 KiB on FAIL_SIZEMISMATCH), so a range validated
/// by [`validate_plan`] can be rescinded piecewise only along those steps; a
/// 4 KiB rescind inside a 2 MiB RMP entry fails with
/// [`ValidateError::SizeMismatch4K`]. CF = 1 (already unvalidated) is harmless
/// on rescind (reference §4). Every page must be recorded in `set`.
pub fn rescind_range<V: Validator>(
    range: GpaRange,
    v: &mut V,
    set: &mut ValidatedSet,
) -> Result<(), ValidateError> {
    if let Some(gpa) = set.first_unvalidated(range) {
        return Err(ValidateError::Set(SetError::NotValidated(gpa)));
    }
    for page in range.pages() {
        rescind_page(v, page)?;
    }
    set.remove(range)?;
    Ok(())
}

fn rescind_page<V: Validator>(v: &mut V, page: Page) -> Result<(), ValidateError> {
    let Page { gpa, size } = page;
    let (eax, cf) = v.pvalidate(gpa, size, false);
    match (PvalidateResult::decode(eax, cf), size) {
        (PvalidateResult::Success | PvalidateResult::NoUpdate, _) => Ok(()),
        (PvalidateResult::FailSizeMismatch, PageSize::Size2M) => {
            for k in 0..size.bytes() / PAGE_SIZE {
                rescind_page(
                    v,
                    Page {
                        gpa: gpa + k * PAGE_SIZE,
                        size: PageSize::Size4K,
                    },
                )?;
            }
            Ok(())
        }
        (PvalidateResult::FailSizeMismatch, PageSize::Size4K) => {
            Err(ValidateError::SizeMismatch4K(gpa))
        }
        (PvalidateResult::FailInput, _) => Err(ValidateError::FailInput { gpa, size }),
        (PvalidateResult::Unknown(eax), _) => Err(ValidateError::Unknown { gpa, eax }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const MIB: u64 = 1 << 20;
    const IMG: u64 = 2 * MIB;
    const FW: (u64, u64) = (0x1_0000_0000 - IMG, 0x1_0000_0000);

    fn map(entries: &[(u64, u64, u32)]) -> E820 {
        let mut v = Vec::new();
        for &(a, l, t) in entries {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&l.to_le_bytes());
            v.extend_from_slice(&t.to_le_bytes());
        }
        E820::parse(&v, FW).unwrap()
    }

    fn r(s: u64, e: u64) -> GpaRange {
        GpaRange::new(s, e).unwrap()
    }

    /// An RMP model: per 4 KiB page, (assigned private, validated); 2 MiB
    /// regions backed by 4 KiB RMP entries; and lies.
    #[derive(Default, Debug)]
    struct FakeRmp {
        private: BTreeSet<u64>,
        validated: BTreeSet<u64>,
        small_only: BTreeSet<u64>,
        lie_cf: BTreeSet<u64>,
        lie_input: BTreeSet<u64>,
        lie_eax: BTreeMap<u64, u32>,
        lie_mismatch_4k: BTreeSet<u64>,
        /// The PSC to private reports success but changes nothing.
        psc_noop: bool,
        log: Vec<String>,
        touched: Vec<u64>,
        pvalidates: usize,
    }

    impl Validator for FakeRmp {
        fn psc_private(&mut self, range: GpaRange) -> Result<(), PscError> {
            self.log
                .push(format!("psc {:#x}..{:#x}", range.start, range.end));
            if self.psc_noop {
                return Ok(());
            }
            for g in (range.start..range.end).step_by(PAGE_SIZE as usize) {
                self.private.insert(g);
            }
            Ok(())
        }

        fn pvalidate(&mut self, gpa: u64, size: PageSize, validate: bool) -> (u32, bool) {
            self.pvalidates += 1;
            self.log.push(format!("pv {gpa:#x} {size:?} {validate}"));
            if self.lie_cf.contains(&gpa) {
                return (0, true);
            }
            if self.lie_input.contains(&gpa) {
                return (PVALIDATE_FAIL_INPUT, false);
            }
            if let Some(&e) = self.lie_eax.get(&gpa) {
                return (e, false);
            }
            if size == PageSize::Size4K && self.lie_mismatch_4k.contains(&gpa) {
                return (PVALIDATE_FAIL_SIZEMISMATCH, false);
            }
            if !gpa.is_multiple_of(size.bytes()) {
                return (PVALIDATE_FAIL_INPUT, false);
            }
            if size == PageSize::Size2M && self.small_only.contains(&gpa) {
                return (PVALIDATE_FAIL_SIZEMISMATCH, false);
            }
            let pages: Vec<u64> = (0..size.bytes() / PAGE_SIZE)
                .map(|k| gpa + k * PAGE_SIZE)
                .collect();
            if pages.iter().any(|p| !self.private.contains(p)) {
                return (PVALIDATE_FAIL_INPUT, false);
            }
            let all_same = pages.iter().all(|p| self.validated.contains(p) == validate);
            if all_same {
                return (0, true);
            }
            for p in pages {
                if validate {
                    self.validated.insert(p);
                } else {
                    self.validated.remove(&p);
                }
            }
            (0, false)
        }

        fn touch(&mut self, gpa: u64) {
            assert!(
                self.validated.contains(&gpa),
                "touch of unvalidated {gpa:#x}"
            );
            self.touched.push(gpa);
        }
    }

    #[test]
    fn pvalidate_result_table() {
        use PvalidateResult::*;
        assert_eq!(PvalidateResult::decode(0, false), Success);
        assert_eq!(PvalidateResult::decode(0, true), NoUpdate);
        assert_eq!(PvalidateResult::decode(1, false), FailInput);
        assert_eq!(PvalidateResult::decode(1, true), FailInput);
        assert_eq!(PvalidateResult::decode(6, false), FailSizeMismatch);
        assert_eq!(PvalidateResult::decode(6, true), FailSizeMismatch);
        assert_eq!(PvalidateResult::decode(2, false), Unknown(2));
        assert_eq!(PvalidateResult::decode(255, true), Unknown(255));
    }

    #[test]
    fn launch_ranges_and_image_size() {
        let l = launch_validated(IMG).unwrap();
        assert_eq!(l[0], r(0x1000, 0x2000));
        assert_eq!(l[1], r(0x2000, 0x3000));
        assert_eq!(l[2], r(0x3000, 0x9_0000));
        assert_eq!(l[3], r(0xFFE0_0000, 0x1_0000_0000));
        for bad in [0, 0x1000, IMG + 0x8000, 16 * MIB] {
            assert_eq!(launch_validated(bad), Err(PlanError::BadImageSize(bad)));
        }
        assert!(launch_validated(8 * MIB).is_ok());
        assert!(launch_validated(64 * 1024).is_ok());
        assert_eq!(
            Touch::from_cpuid_8000_001f_ebx(0x8000_0000 | 51),
            Touch::Never
        );
        assert_eq!(Touch::from_cpuid_8000_001f_ebx(51), Touch::EveryPage);
    }

    #[test]
    fn q35_128mib_plan_by_hand() {
        let m = map(&[(0, 128 * MIB, 1), (0xFEFF_C000, 0x4000, 2)]);
        let p = ValidationPlan::new(&m, IMG).unwrap();
        // Page 0, secrets, CPUID, SEC_MEM, legacy hole and the pool removed.
        assert_eq!(layout::POOL_END, 0x20_0000);
        assert_eq!(p.ranges(), [r(0x9_0000, 0xA_0000), r(0x20_0000, 128 * MIB)]);
        let steps: Vec<Page> = p.steps().collect();
        let n4k = steps.iter().filter(|s| s.size == PageSize::Size4K).count();
        let n2m = steps.iter().filter(|s| s.size == PageSize::Size2M).count();
        // 16 pages below the hole, then 63 × 2 MiB from 2 MiB.
        assert_eq!(n4k, 16);
        assert_eq!(n2m, 63);
        assert_eq!(
            steps[16],
            Page {
                gpa: 0x20_0000,
                size: PageSize::Size2M
            }
        );
        assert_eq!(p.bytes(), 0x1_0000 + 126 * MIB);
    }

    #[test]
    fn ram_above_the_identity_map_and_lying_maps() {
        // 3.5 GiB below the PCI hole plus RAM above 4 GiB (dropped).
        let m = map(&[(0, 0xE000_0000, 1), (0x1_0000_0000, 0x2000_0000, 1)]);
        let p = ValidationPlan::new(&m, IMG).unwrap();
        assert_eq!(p.ranges().last().unwrap().end, 0xE000_0000);
        // Overlapping, unaligned entries are merged: no page twice.
        let m = map(&[
            (0x10_0800, 0x30_0000, 1),
            (0, 0x30_0000, 1),
            (0x20_0000, 0x10_0000, 1),
            (0x9_0000, 0x1000, 1),
        ]);
        let p = ValidationPlan::new(&m, IMG).unwrap();
        assert_eq!(p.ranges(), [r(0x9_0000, 0xA_0000), r(0x20_0000, 0x40_0000)]);
        // A map that is only reserved memory and low pages.
        let m = map(&[(0, 0x9_0000, 1)]);
        assert_eq!(ValidationPlan::new(&m, IMG).unwrap().ranges(), []);
        assert_eq!(
            ValidationPlan::new(&m, 3).unwrap_err(),
            PlanError::BadImageSize(3)
        );
    }

    /// Deterministic pseudo-random maps: the plan covers exactly the RAM pages
    /// outside the holes, never a launch page, in disjoint sorted steps.
    #[test]
    fn plan_invariants_on_generated_maps() {
        let mut seed = 0x1234_5678_9ABC_DEF0u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let count = 1 + rnd(6);
            let mut entries = Vec::new();
            for _ in 0..count {
                let start = rnd(0xF000_0000) & !0xFF;
                let len = 1 + rnd(64 * MIB);
                let kind = if rnd(4) == 0 { 2 } else { 1 };
                if kind == 1 && start < FW.1 && FW.0 < start + len {
                    continue;
                }
                entries.push((start, len, kind));
            }
            entries.push((0, 0x80_0000, 1));
            let m = map(&entries);
            let p = ValidationPlan::new(&m, IMG).unwrap();
            let holes = [
                (0, 0x1000),
                (layout::LEGACY_HOLE_START, layout::LEGACY_HOLE_END),
                (layout::POOL_BASE, layout::POOL_END),
                (0x1000, 0x9_0000),
                FW,
            ];
            let is_ram = |g: u64| {
                entries
                    .iter()
                    .any(|&(s, l, k)| k == 1 && s <= g && g + PAGE_SIZE <= s + l)
            };
            let in_hole = |g: u64| holes.iter().any(|&(s, e)| s <= g && g < e);
            let mut last_end = 0;
            let mut covered = BTreeSet::new();
            for step in p.steps() {
                assert!(step.gpa >= last_end, "unsorted/overlapping");
                assert_eq!(step.gpa % step.size.bytes(), 0);
                last_end = step.gpa + step.size.bytes();
                assert!(last_end <= layout::IDENTITY_MAPPED_END);
                for g in (step.gpa..last_end).step_by(PAGE_SIZE as usize) {
                    assert!(is_ram(g), "{g:#x} not RAM");
                    assert!(!in_hole(g), "{g:#x} in a hole");
                    covered.insert(g);
                }
            }
            // Completeness, sampled at entry edges.
            for &(s, l, k) in &entries {
                if k != 1 {
                    continue;
                }
                for g in [
                    layout::align_up(s, PAGE_SIZE).unwrap(),
                    layout::align_down(s + l, PAGE_SIZE).saturating_sub(PAGE_SIZE),
                ] {
                    if is_ram(g) && !in_hole(g) && g < layout::IDENTITY_MAPPED_END {
                        assert!(covered.contains(&g), "{g:#x} missed");
                    }
                }
            }
        }
    }

    #[test]
    fn validated_set_operations() {
        let mut s = ValidatedSet::new();
        s.insert(r(0x1000, 0x3000)).unwrap();
        s.insert(r(0x5000, 0x6000)).unwrap();
        s.insert(r(0x3000, 0x5000)).unwrap(); // bridges both: coalesced
        assert_eq!(s.ranges(), [r(0x1000, 0x6000)]);
        assert_eq!(
            s.insert(r(0x5000, 0x7000)),
            Err(SetError::AlreadyValidated(0x5000))
        );
        assert_eq!(
            s.insert(r(0, 0x2000)),
            Err(SetError::AlreadyValidated(0x1000))
        );
        assert_eq!(s.check_free(r(0x6000, 0x7000)), Ok(()));
        assert!(s.contains(0x5FFF));
        assert!(!s.contains(0x6000));
        assert!(s.covers(r(0x2000, 0x4000)));
        assert!(!s.covers(r(0x2000, 0x7000)));
        s.insert(r(0x8000, 0x9000)).unwrap();
        assert_eq!(s.first_unvalidated(r(0x1000, 0x9000)), Some(0x6000));
        assert_eq!(s.first_unvalidated(r(0x8000, 0x9000)), None);
        assert_eq!(s.first_unvalidated(r(0x8000, 0xA000)), Some(0x9000));
        assert_eq!(s.first_unvalidated(r(0xA000, 0xB000)), Some(0xA000));
        // Remove splits.
        s.remove(r(0x2000, 0x3000)).unwrap();
        assert_eq!(
            s.ranges(),
            [r(0x1000, 0x2000), r(0x3000, 0x6000), r(0x8000, 0x9000)]
        );
        assert_eq!(
            s.remove(r(0x1000, 0x3000)),
            Err(SetError::NotValidated(0x2000))
        );
        // Capacity.
        let mut s = ValidatedSet::new();
        for i in 0..SET_CAPACITY as u64 {
            s.insert(r(i * 0x2000, i * 0x2000 + 0x1000)).unwrap();
        }
        assert_eq!(s.insert(r(0x100_0000, 0x100_1000)), Err(SetError::Full));
        // Adjacent insert still fits (coalesces).
        s.insert(r(0x1000, 0x2000)).unwrap();
        // Launch seeding.
        let l = ValidatedSet::with_launch_ranges(IMG).unwrap();
        assert_eq!(
            l.ranges(),
            [r(0x1000, 0x9_0000), r(0xFFE0_0000, 0x1_0000_0000)]
        );
        assert_eq!(
            l.check_free(r(0x2000, 0x3000)),
            Err(SetError::AlreadyValidated(0x2000))
        );
    }

    #[test]
    fn honest_rmp_validates_everything_once_in_order() {
        let m = map(&[(0, 16 * MIB, 1)]);
        let p = ValidationPlan::new(&m, IMG).unwrap();
        let mut rmp = FakeRmp::default();
        let mut set = ValidatedSet::with_launch_ranges(IMG).unwrap();
        let stats = validate_plan(&p, &mut rmp, &mut set, Touch::EveryPage).unwrap();
        assert_eq!(
            stats,
            Stats {
                pages_2m: 7,
                pages_4k: 16,
                fallbacks: 0
            }
        );
        assert_eq!(rmp.validated.len() as u64, p.bytes() / PAGE_SIZE);
        assert_eq!(rmp.touched.len() as u64, p.bytes() / PAGE_SIZE);
        // Every planned page is in the set; launch pages still are.
        for s in p.steps() {
            assert!(set.covers(r(s.gpa, s.gpa + s.size.bytes())));
        }
        assert_eq!(
            set.ranges(),
            [
                r(0x1000, 0xA_0000),
                r(0x20_0000, 16 * MIB),
                r(0xFFE0_0000, 0x1_0000_0000)
            ]
        );
        // PSC of a range precedes its first PVALIDATE.
        assert_eq!(rmp.log[0], "psc 0x90000..0xa0000");
        assert!(rmp.log[1].starts_with("pv 0x90000"));
        let second_psc = rmp
            .log
            .iter()
            .position(|l| l == "psc 0x200000..0x1000000")
            .unwrap();
        assert!(rmp.log[second_psc + 1].starts_with("pv 0x200000"));
        // Nothing in the shared pool was touched.
        assert!(
            (layout::POOL_BASE..layout::POOL_END)
                .step_by(PAGE_SIZE as usize)
                .all(|g| !rmp.private.contains(&g) && !set.contains(g))
        );
        // Running the plan again is refused before any PVALIDATE.
        let before = rmp.pvalidates;
        assert_eq!(
            validate_plan(&p, &mut rmp, &mut set, Touch::Never),
            Err(ValidateError::Set(SetError::AlreadyValidated(0x9_0000)))
        );
        assert_eq!(rmp.pvalidates, before);
    }

    /// A PSC that says "done" but left the RMP alone (psc.rs
    /// `done_but_nothing_done_is_not_visible_here`) is caught by the first
    /// PVALIDATE: FAIL_INPUT for a page that is not guest-assigned, CF = 1 for
    /// one that was private and validated already (aliased). Either way
    /// validation stops before the page is used (boot terminates with
    /// `TerminateReason::PVALIDATE`).
    #[test]
    fn psc_that_changed_nothing_is_caught_by_pvalidate() {
        let p = ValidationPlan::from_ranges(&[r(0x20_0000, 0x40_0000)]).unwrap();
        let mut rmp = FakeRmp {
            psc_noop: true,
            ..FakeRmp::default()
        };
        let mut set = ValidatedSet::new();
        assert_eq!(
            validate_plan(&p, &mut rmp, &mut set, Touch::EveryPage),
            Err(ValidateError::FailInput {
                gpa: 0x20_0000,
                size: PageSize::Size2M
            })
        );
        assert!(rmp.validated.is_empty() && rmp.touched.is_empty());
        assert!(set.ranges().is_empty());
        // The page was private and validated before (the host aliased it).
        let mut rmp = FakeRmp {
            psc_noop: true,
            ..FakeRmp::default()
        };
        for g in (0x20_0000..0x40_0000).step_by(PAGE_SIZE as usize) {
            rmp.private.insert(g);
            rmp.validated.insert(g);
        }
        assert_eq!(
            validate_plan(&p, &mut rmp, &mut ValidatedSet::new(), Touch::EveryPage),
            Err(ValidateError::DoubleValidation {
                gpa: 0x20_0000,
                size: PageSize::Size2M
            })
        );
        assert!(rmp.touched.is_empty());
    }

    #[test]
    fn size_mismatch_falls_back_to_4k() {
        let p = ValidationPlan::from_ranges(&[r(0x20_0000, 0x60_0000)]).unwrap();
        let mut rmp = FakeRmp::default();
        rmp.small_only.insert(0x40_0000);
        let mut set = ValidatedSet::new();
        let stats = validate_plan(&p, &mut rmp, &mut set, Touch::Never).unwrap();
        assert_eq!(
            stats,
            Stats {
                pages_2m: 1,
                pages_4k: 512,
                fallbacks: 1
            }
        );
        assert!(rmp.touched.is_empty());
        assert_eq!(set.ranges(), [r(0x20_0000, 0x60_0000)]);
        assert_eq!(rmp.validated.len(), 1024);
    }

    #[test]
    fn lies_terminate() {
        let p = ValidationPlan::from_ranges(&[r(0x20_0000, 0x40_2000)]).unwrap();
        let run = |f: &dyn Fn(&mut FakeRmp)| {
            let mut rmp = FakeRmp::default();
            f(&mut rmp);
            let mut set = ValidatedSet::new();
            let e = validate_plan(&p, &mut rmp, &mut set, Touch::Never).unwrap_err();
            (e, set)
        };
        // CF = 1 on a page we never validated (hypervisor pre-validated/aliased it).
        let (e, _) = run(&|r| {
            r.lie_cf.insert(0x20_0000);
        });
        assert_eq!(
            e,
            ValidateError::DoubleValidation {
                gpa: 0x20_0000,
                size: PageSize::Size2M
            }
        );
        // The same on a 4 KiB tail page; the 2 MiB before it stays recorded.
        let (e, set) = run(&|r| {
            r.lie_cf.insert(0x40_1000);
        });
        assert_eq!(
            e,
            ValidateError::DoubleValidation {
                gpa: 0x40_1000,
                size: PageSize::Size4K
            }
        );
        assert_eq!(set.ranges(), [r(0x20_0000, 0x40_1000)]);
        // CF = 1 inside a 4 KiB fallback.
        let (e, _) = run(&|r| {
            r.small_only.insert(0x20_0000);
            r.lie_cf.insert(0x20_3000);
        });
        assert_eq!(
            e,
            ValidateError::DoubleValidation {
                gpa: 0x20_3000,
                size: PageSize::Size4K
            }
        );
        // FAIL_INPUT, size mismatch on 4 KiB, unknown code.
        let (e, _) = run(&|r| {
            r.lie_input.insert(0x40_0000);
        });
        assert_eq!(
            e,
            ValidateError::FailInput {
                gpa: 0x40_0000,
                size: PageSize::Size4K
            }
        );
        let (e, _) = run(&|r| {
            r.lie_mismatch_4k.insert(0x40_1000);
        });
        assert_eq!(e, ValidateError::SizeMismatch4K(0x40_1000));
        let (e, _) = run(&|r| {
            r.lie_eax.insert(0x20_0000, 3);
        });
        assert_eq!(
            e,
            ValidateError::Unknown {
                gpa: 0x20_0000,
                eax: 3
            }
        );
        // PSC refused by the hypervisor never happened -> pages not private -> FAIL_INPUT.
        struct NoPsc(FakeRmp);
        impl Validator for NoPsc {
            fn psc_private(&mut self, _: GpaRange) -> Result<(), PscError> {
                Err(PscError::HostError(1))
            }
            fn pvalidate(&mut self, g: u64, s: PageSize, v: bool) -> (u32, bool) {
                self.0.pvalidate(g, s, v)
            }
            fn touch(&mut self, g: u64) {
                self.0.touch(g)
            }
        }
        let mut v = NoPsc(FakeRmp::default());
        assert_eq!(
            validate_plan(&p, &mut v, &mut ValidatedSet::new(), Touch::Never),
            Err(ValidateError::Psc(PscError::HostError(1)))
        );
        assert_eq!(v.0.pvalidates, 0);
    }

    #[test]
    fn launch_pages_are_never_pvalidated() {
        // A plan that (wrongly) includes the CPUID page.
        let p = ValidationPlan::from_ranges(&[r(0x2000, 0x3000)]).unwrap();
        let mut rmp = FakeRmp::default();
        let mut set = ValidatedSet::with_launch_ranges(IMG).unwrap();
        assert_eq!(
            validate_plan(&p, &mut rmp, &mut set, Touch::Never),
            Err(ValidateError::Set(SetError::AlreadyValidated(0x2000)))
        );
        assert_eq!(rmp.pvalidates, 0);
    }

    #[test]
    fn rescind_then_revalidate() {
        let p = ValidationPlan::from_ranges(&[r(0x20_0000, 0x40_2000)]).unwrap();
        let mut rmp = FakeRmp::default();
        let mut set = ValidatedSet::new();
        validate_plan(&p, &mut rmp, &mut set, Touch::Never).unwrap();
        // Rescind the 4 KiB tail and the 2 MiB page separately.
        rescind_range(r(0x40_0000, 0x40_2000), &mut rmp, &mut set).unwrap();
        assert_eq!(set.ranges(), [r(0x20_0000, 0x40_0000)]);
        rescind_range(r(0x20_0000, 0x40_0000), &mut rmp, &mut set).unwrap();
        assert!(set.ranges().is_empty());
        assert!(rmp.validated.is_empty());
        // Rescinding unrecorded memory is refused before any PVALIDATE.
        let before = rmp.pvalidates;
        assert_eq!(
            rescind_range(r(0x20_0000, 0x20_1000), &mut rmp, &mut set),
            Err(ValidateError::Set(SetError::NotValidated(0x20_0000)))
        );
        assert_eq!(rmp.pvalidates, before);
        // Validate again (the kernel's unshare path).
        let p2 = ValidationPlan::from_ranges(&[r(0x20_0000, 0x20_1000)]).unwrap();
        validate_plan(&p2, &mut rmp, &mut set, Touch::Never).unwrap();
        assert!(set.contains(0x20_0000));
    }
}
