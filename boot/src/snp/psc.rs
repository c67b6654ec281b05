//! Page State Change through the GHCB shared buffer (NAE 0x8000_0010).
//!
//! Sources: AMD GHCB spec 56421 §4.1.6 "SNP Page State Change" (PSC structure);
//! Linux `struct psc_hdr`/`struct psc_entry`/`VMGEXIT_PSC_MAX_ENTRY` (253) in
//! `arch/x86/include/asm/sev-common.h` and `vmgexit_psc()` in
//! `arch/x86/coco/sev/` (it loops while `cur_entry <= end_entry`, refuses a
//! non-zero SW_EXITINFO2, a non-zero header reserved field, and a header going
//! backwards); reference §4 NAE table.
//!
//! Layout in the shared buffer: header `{u16 cur_entry, u16 end_entry
//! (inclusive), u32 reserved}`, then up to 253 entries of 8 bytes:
//! `[11:0] cur_page, [51:12] GFN, [55:52] operation (1 private, 2 shared),
//! [56] page size (1 = 2 MiB), [63:57] reserved`. 8 + 253 × 8 = 2032 bytes,
//! exactly the shared buffer.
//!
//! Stricter than Linux: every VMGEXIT must make progress (`cur_entry` strictly
//! increases) and `end_entry` must not change, so the loop ends after at most
//! one exit per entry. Linux accepts "no progress" and would spin forever on a
//! hypervisor that keeps returning without work.

use super::{
    GpaRange, Page, PageSize, PageSplit, PageState,
    ghcb::{
        Call, Field, Ghcb, GhcbError, GhcbMem, Hypervisor, SHARED_BUFFER_LEN, exit_code, offset,
    },
};

/// Most entries in one PSC request (Linux `VMGEXIT_PSC_MAX_ENTRY`).
pub const MAX_ENTRIES: usize = 253;
/// Header size.
pub const HEADER_LEN: usize = 8;
/// Entry size.
pub const ENTRY_LEN: usize = 8;
/// Highest GFN an entry can hold (40 bits).
pub const MAX_GFN: u64 = (1 << 40) - 1;
/// Bound on VMGEXITs per batch (strict progress already implies ≤ entries).
pub const MAX_EXITS_PER_BATCH: usize = MAX_ENTRIES + 1;

const _: () = assert!(HEADER_LEN + MAX_ENTRIES * ENTRY_LEN == SHARED_BUFFER_LEN);

/// Entry bit fields.
pub mod entry {
    /// `[11:0]` current page (hypervisor progress inside a 2 MiB entry).
    pub const CUR_PAGE_MASK: u64 = 0xFFF;
    /// `[51:12]` GFN.
    pub const GFN_SHIFT: u32 = 12;
    /// `[55:52]` operation.
    pub const OP_SHIFT: u32 = 52;
    /// `[56]` page size: 1 = 2 MiB.
    pub const SIZE_2M: u64 = 1 << 56;
}

/// Why a page state change failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PscError {
    /// The GHCB call itself failed.
    Ghcb(GhcbError),
    /// A page is misaligned for its size or its GFN does not fit 40 bits.
    BadPage(u64),
    /// More than [`MAX_ENTRIES`] entries pushed into a batch.
    BatchFull,
    /// SW_EXITINFO2 was non-zero after the exit.
    HostError(u64),
    /// The header's reserved field came back non-zero.
    ReservedSet(u32),
    /// The hypervisor changed `end_entry`.
    EndChanged {
        /// What the guest wrote.
        expected: u16,
        /// What came back.
        got: u16,
    },
    /// `cur_entry` did not increase.
    NoProgress {
        /// Before the exit.
        before: u16,
        /// After the exit.
        after: u16,
    },
    /// `cur_entry` went past `end_entry + 1`.
    Overrun(u16),
    /// The iteration bound was reached.
    TooManyExits,
}

impl From<GhcbError> for PscError {
    fn from(e: GhcbError) -> Self {
        PscError::Ghcb(e)
    }
}

/// Encodes one entry (`cur_page` = 0).
pub fn encode_entry(page: Page, op: PageState) -> Result<u64, PscError> {
    let gfn = page.gpa >> 12;
    if !page.gpa.is_multiple_of(page.size.bytes()) || gfn > MAX_GFN {
        return Err(PscError::BadPage(page.gpa));
    }
    let size = match page.size {
        PageSize::Size4K => 0,
        PageSize::Size2M => entry::SIZE_2M,
    };
    Ok(size | ((op as u64) << entry::OP_SHIFT) | (gfn << entry::GFN_SHIFT))
}

/// Up to [`MAX_ENTRIES`] encoded entries: one PSC request.
#[derive(Clone, Copy)]
pub struct PscBatch {
    entries: [u64; MAX_ENTRIES],
    len: usize,
}

impl core::fmt::Debug for PscBatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.entries()).finish()
    }
}

impl Default for PscBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl PscBatch {
    /// An empty batch.
    pub const fn new() -> Self {
        PscBatch {
            entries: [0; MAX_ENTRIES],
            len: 0,
        }
    }

    /// Appends `page` with operation `op`.
    pub fn push(&mut self, page: Page, op: PageState) -> Result<(), PscError> {
        if self.len == MAX_ENTRIES {
            return Err(PscError::BatchFull);
        }
        self.entries[self.len] = encode_entry(page, op)?;
        self.len += 1;
        Ok(())
    }

    /// The encoded entries.
    pub fn entries(&self) -> &[u64] {
        &self.entries[..self.len]
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `end_entry` for this batch (inclusive index of the last entry).
    fn end_entry(&self) -> u16 {
        (self.len - 1) as u16
    }

    /// Serialises header (`cur_entry` 0) and entries into `out`; returns the
    /// number of bytes written.
    pub fn encode(&self, out: &mut [u8; SHARED_BUFFER_LEN]) -> usize {
        out.fill(0);
        if self.len == 0 {
            return 0;
        }
        out[2..4].copy_from_slice(&self.end_entry().to_le_bytes());
        for (i, e) in self.entries().iter().enumerate() {
            let at = HEADER_LEN + i * ENTRY_LEN;
            out[at..at + ENTRY_LEN].copy_from_slice(&e.to_le_bytes());
        }
        HEADER_LEN + self.len * ENTRY_LEN
    }
}

/// Iterator turning a list of ranges into batches of ≤ [`MAX_ENTRIES`]
/// entries: 2 MiB entries where a 2 MiB-aligned page lies fully inside a range,
/// 4 KiB entries otherwise.
#[derive(Clone, Debug)]
pub struct PscBatches<'a> {
    ranges: &'a [GpaRange],
    current: Option<PageSplit>,
    op: PageState,
}

impl<'a> PscBatches<'a> {
    /// Batches for `ranges` (each checked: GFN must fit 40 bits).
    pub fn new(ranges: &'a [GpaRange], op: PageState) -> Result<Self, PscError> {
        for r in ranges {
            if (r.end - 1) >> 12 > MAX_GFN
                || !r.start.is_multiple_of(0x1000)
                || !r.end.is_multiple_of(0x1000)
            {
                return Err(PscError::BadPage(r.start));
            }
        }
        Ok(PscBatches {
            ranges,
            current: None,
            op,
        })
    }

    fn next_page(&mut self) -> Option<Page> {
        loop {
            if let Some(p) = self.current.as_mut().and_then(Iterator::next) {
                return Some(p);
            }
            let (first, rest) = self.ranges.split_first()?;
            self.ranges = rest;
            self.current = Some(first.pages());
        }
    }
}

impl Iterator for PscBatches<'_> {
    type Item = PscBatch;

    fn next(&mut self) -> Option<PscBatch> {
        let mut batch = PscBatch::new();
        while batch.len < MAX_ENTRIES {
            let Some(page) = self.next_page() else { break };
            // Checked in `new`: alignment from the split, GFN bound per range.
            batch.push(page, self.op).ok()?;
        }
        (!batch.is_empty()).then_some(batch)
    }
}

/// The PSC header as read back: `(cur_entry, end_entry, reserved)`.
pub const fn decode_header(raw: u64) -> (u16, u16, u32) {
    (raw as u16, (raw >> 16) as u16, (raw >> 32) as u32)
}

/// Checks one returned header against the state before the exit. `Ok(true)`
/// when every entry has been processed.
pub fn check_progress(before: u16, end_entry: u16, raw_header: u64) -> Result<bool, PscError> {
    let (cur, end, rsvd) = decode_header(raw_header);
    if rsvd != 0 {
        return Err(PscError::ReservedSet(rsvd));
    }
    if end != end_entry {
        return Err(PscError::EndChanged {
            expected: end_entry,
            got: end,
        });
    }
    if cur <= before {
        return Err(PscError::NoProgress { before, after: cur });
    }
    if u32::from(cur) > u32::from(end_entry) + 1 {
        return Err(PscError::Overrun(cur));
    }
    Ok(cur > end_entry)
}

impl<M: GhcbMem, H: Hypervisor> Ghcb<M, H> {
    /// Executes one PSC batch: writes it to the shared buffer once, then
    /// VMGEXITs until `cur_entry > end_entry`, checking the status,
    /// SW_EXITINFO2 and the header after every exit (each read once).
    pub fn page_state_change(&mut self, batch: &PscBatch) -> Result<(), PscError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = [0u8; SHARED_BUFFER_LEN];
        let n = batch.encode(&mut buf);
        self.mem_mut().clear();
        self.mem_mut().write_bytes(offset::SHARED_BUFFER, &buf[..n]);
        let end_entry = batch.end_entry();
        let mut cur = 0u16;
        for _ in 0..MAX_EXITS_PER_BATCH {
            // The shared buffer is not rewritten between exits: the hypervisor
            // keeps its progress there (header and per-entry cur_page).
            let reply = self.issue(&Call {
                exit_code: exit_code::PSC,
                scratch: Some(self.shared_buffer_gpa()),
                ..Call::default()
            })?;
            let info2 = self.take(&reply, Field::SwExitInfo2)?;
            if info2 != 0 {
                return Err(PscError::HostError(info2));
            }
            // The header is read once per exit and checked before use.
            let raw = self.mem().read_u64(offset::SHARED_BUFFER);
            if check_progress(cur, end_entry, raw)? {
                return Ok(());
            }
            cur = decode_header(raw).0;
        }
        Err(PscError::TooManyExits)
    }

    /// Changes every page of `ranges` to `op`, batch by batch.
    pub fn change_page_state(
        &mut self,
        ranges: &[GpaRange],
        op: PageState,
    ) -> Result<(), PscError> {
        for batch in PscBatches::new(ranges, op)? {
            self.page_state_change(&batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::ghcb::fake::{Lie, PscMode, ghcb_with},
        *,
    };

    fn r(s: u64, e: u64) -> GpaRange {
        GpaRange::new(s, e).unwrap()
    }

    fn p4(gpa: u64) -> Page {
        Page {
            gpa,
            size: PageSize::Size4K,
        }
    }

    #[test]
    fn entry_encoding_by_hand() {
        // GFN 0x123, private, 4K: 1<<52 | 0x123<<12.
        assert_eq!(
            encode_entry(p4(0x12_3000), PageState::Private),
            Ok(0x0010_0000_0012_3000)
        );
        // GFN 0x200 (2 MiB at 0x20_0000), shared, 2M: 1<<56 | 2<<52 | 0x200<<12.
        let big = Page {
            gpa: 0x20_0000,
            size: PageSize::Size2M,
        };
        assert_eq!(
            encode_entry(big, PageState::Shared),
            Ok(0x0120_0000_0020_0000)
        );
        // Highest GFN.
        assert_eq!(
            encode_entry(p4(MAX_GFN << 12), PageState::Private),
            Ok(0x001F_FFFF_FFFF_F000)
        );
        assert_eq!(
            encode_entry(p4((MAX_GFN + 1) << 12), PageState::Private),
            Err(PscError::BadPage(1 << 52))
        );
        // 2M page not 2M aligned, 4K page not 4K aligned.
        let bad = Page {
            gpa: 0x1000,
            size: PageSize::Size2M,
        };
        assert_eq!(
            encode_entry(bad, PageState::Private),
            Err(PscError::BadPage(0x1000))
        );
        assert_eq!(
            encode_entry(p4(0x1001), PageState::Private),
            Err(PscError::BadPage(0x1001))
        );
    }

    #[test]
    fn header_and_buffer_encoding() {
        let mut b = PscBatch::new();
        b.push(p4(0x1000), PageState::Shared).unwrap();
        b.push(p4(0x2000), PageState::Shared).unwrap();
        let mut out = [0xEEu8; SHARED_BUFFER_LEN];
        assert_eq!(b.encode(&mut out), 24);
        assert_eq!(&out[..8], &[0, 0, 1, 0, 0, 0, 0, 0]); // cur 0, end 1 (inclusive)
        assert_eq!(
            u64::from_le_bytes(out[8..16].try_into().unwrap()),
            0x0020_0000_0000_1000
        );
        assert_eq!(
            u64::from_le_bytes(out[16..24].try_into().unwrap()),
            0x0020_0000_0000_2000
        );
        assert!(out[24..].iter().all(|&x| x == 0));
        assert_eq!(PscBatch::new().encode(&mut out), 0);
        // Full batch fills the shared buffer exactly.
        let mut full = PscBatch::new();
        for i in 0..MAX_ENTRIES as u64 {
            full.push(p4(i << 12), PageState::Private).unwrap();
        }
        assert_eq!(full.encode(&mut out), SHARED_BUFFER_LEN);
        assert_eq!(&out[2..4], &252u16.to_le_bytes());
        assert_eq!(
            full.push(p4(0), PageState::Private),
            Err(PscError::BatchFull)
        );
    }

    #[test]
    fn chunking_uses_2m_where_aligned_and_splits_at_253() {
        // [0x1F_F000, 0x60_1000): 1 head 4K, 2 × 2M, 1 tail 4K.
        let ranges = [r(0x1F_F000, 0x60_1000)];
        let batches: Vec<_> = PscBatches::new(&ranges, PageState::Private)
            .unwrap()
            .collect();
        assert_eq!(batches.len(), 1);
        let e = batches[0].entries();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0], 0x0010_0000_001F_F000);
        assert_eq!(e[1], 0x0110_0000_0020_0000);
        assert_eq!(e[2], 0x0110_0000_0040_0000);
        assert_eq!(e[3], 0x0010_0000_0060_0000);
        // 600 pages across two ranges: the second ends at 4 GiB, so its last
        // 2 MiB is one 2M entry; batches hold at most 253 entries.
        let ranges = [
            r(0x1000, 0x1000 + 300 * 0x1000),
            r(0x1_0000_0000 - 300 * 0x1000, 0x1_0000_0000),
        ];
        let batches: Vec<_> = PscBatches::new(&ranges, PageState::Shared)
            .unwrap()
            .collect();
        let lens: Vec<_> = batches.iter().map(PscBatch::len).collect();
        let covered: u64 = batches
            .iter()
            .flat_map(|b| b.entries().iter().copied())
            .map(|e| {
                if e & entry::SIZE_2M != 0 {
                    0x20_0000
                } else {
                    0x1000
                }
            })
            .sum();
        assert_eq!(covered, 600 * 0x1000);
        assert!(lens.iter().all(|&l| l <= MAX_ENTRIES));
        assert_eq!(lens[0], MAX_ENTRIES);
        // Bad range.
        let bad = [GpaRange {
            start: 0,
            end: (MAX_GFN + 2) << 12,
        }];
        assert!(PscBatches::new(&bad, PageState::Private).is_err());
    }

    #[test]
    fn check_progress_rules() {
        let h = |cur: u16, end: u16, rsvd: u32| {
            u64::from(cur) | (u64::from(end) << 16) | (u64::from(rsvd) << 32)
        };
        assert_eq!(check_progress(0, 4, h(5, 4, 0)), Ok(true));
        assert_eq!(check_progress(0, 4, h(3, 4, 0)), Ok(false));
        assert_eq!(check_progress(3, 4, h(5, 4, 0)), Ok(true));
        assert_eq!(
            check_progress(3, 4, h(3, 4, 0)),
            Err(PscError::NoProgress {
                before: 3,
                after: 3
            })
        );
        assert_eq!(
            check_progress(3, 4, h(2, 4, 0)),
            Err(PscError::NoProgress {
                before: 3,
                after: 2
            })
        );
        assert_eq!(check_progress(0, 4, h(6, 4, 0)), Err(PscError::Overrun(6)));
        assert_eq!(
            check_progress(0, 4, h(5, 3, 0)),
            Err(PscError::EndChanged {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            check_progress(0, 4, h(5, 4, 1)),
            Err(PscError::ReservedSet(1))
        );
        // end_entry = 252 (full batch), cur may reach 253.
        assert_eq!(check_progress(200, 252, h(253, 252, 0)), Ok(true));
        assert_eq!(
            check_progress(200, 252, h(254, 252, 0)),
            Err(PscError::Overrun(254))
        );
    }

    #[test]
    fn round_trip_complete_and_partial() {
        let ranges = [
            r(0x1F_F000, 0x60_1000),
            r(0x100_0000, 0x100_0000 + 600 * 0x1000),
        ];
        let expected: Vec<u64> = PscBatches::new(&ranges, PageState::Private)
            .unwrap()
            .flat_map(|b| b.entries().to_vec())
            .collect();
        let mut g = ghcb_with(|_| {});
        g.change_page_state(&ranges, PageState::Private).unwrap();
        let (_, hv) = g.into_parts();
        assert_eq!(hv.psc_done, expected);
        let one_exit_per_batch = hv.psc_exits;

        // The hypervisor does 7 entries per exit: the guest resumes.
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::Partial(7));
        g.change_page_state(&ranges, PageState::Private).unwrap();
        let (_, hv) = g.into_parts();
        assert_eq!(hv.psc_done, expected);
        assert!(hv.psc_exits > one_exit_per_batch);
        // Empty list: no exit.
        let mut g = ghcb_with(|_| {});
        g.change_page_state(&[], PageState::Shared).unwrap();
        assert_eq!(g.into_parts().1.exits, 0);
    }

    #[test]
    fn lying_hypervisors_are_refused() {
        let ranges = [r(0x1000, 0x9000)];
        let run = |mode| {
            let mut g = ghcb_with(|hv| hv.psc_mode = mode);
            let e = g.change_page_state(&ranges, PageState::Shared).unwrap_err();
            (e, g.into_parts().1.psc_exits)
        };
        assert_eq!(
            run(PscMode::NoProgress),
            (
                PscError::NoProgress {
                    before: 0,
                    after: 0
                },
                1
            )
        );
        assert_eq!(
            run(PscMode::Backwards),
            (
                PscError::NoProgress {
                    before: 2,
                    after: 1
                },
                2
            )
        );
        assert_eq!(run(PscMode::Overrun), (PscError::Overrun(9), 1));
        assert_eq!(
            run(PscMode::ShrinkEnd),
            (
                PscError::EndChanged {
                    expected: 7,
                    got: 6
                },
                1
            )
        );
        assert_eq!(run(PscMode::Reserved), (PscError::ReservedSet(1), 1));
        assert_eq!(run(PscMode::Error(0x10)), (PscError::HostError(0x10), 1));
        // Missing info2 valid bit; error status.
        let mut g = ghcb_with(|hv| hv.lie = Lie::DropValid(Field::SwExitInfo2));
        assert_eq!(
            g.change_page_state(&ranges, PageState::Shared),
            Err(PscError::Ghcb(GhcbError::MissingValidBit(
                Field::SwExitInfo2
            )))
        );
        let mut g = ghcb_with(|hv| hv.lie = Lie::Status(2, 3));
        assert_eq!(
            g.change_page_state(&ranges, PageState::Shared),
            Err(PscError::Ghcb(GhcbError::Hv(
                super::super::ghcb::HvError::InvalidScratchArea
            )))
        );
    }

    #[test]
    fn worst_case_partial_progress_is_bounded() {
        // One entry per exit over a full batch: exactly 253 exits, within the bound.
        let ranges = [r(0x1000, 0x1000 + MAX_ENTRIES as u64 * 0x1000)];
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::Partial(1));
        g.change_page_state(&ranges, PageState::Private).unwrap();
        assert_eq!(g.into_parts().1.psc_exits, MAX_ENTRIES);
    }
}
