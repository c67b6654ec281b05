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
//! # The resume loop
//!
//! The hypervisor may return before it has done everything: it leaves
//! `cur_entry` at the first entry not finished and, inside a 2 MiB entry,
//! counts the 4 KiB pages done in that entry's `cur_page` (KVM does a range per
//! exit to user space and sets `cur_page` to 512 or 1 on every entry it
//! finished, `__snp_complete_one_psc`; the emulated platform of
//! `docs/snp-platform.md` stops after a few entries, and inside 2 MiB
//! entries). The guest VMGEXITs again with the buffer as the hypervisor left
//! it until `cur_entry > end_entry`.
//! After every exit the header and every entry are read **once** into private
//! memory and checked ([`check_exit`]):
//!
//! * the header's reserved field is 0 and `end_entry` is unchanged
//!   (Linux: "PSC processing going backward");
//! * no entry was rewritten: bits `[63:12]` (GFN, operation, size, reserved)
//!   of every entry are what the guest wrote; only `cur_page` is the
//!   hypervisor's to write;
//! * progress never goes backwards: the position (`cur_entry`, `cur_page` of
//!   that entry) is lexicographically ≥ the previous one, so `cur_entry` never
//!   decreases and `cur_page` never decreases within the same entry;
//! * `cur_page` of the current entry is at most its page count (512 or 1),
//!   and `cur_entry` at most `end_entry + 1`.
//!
//! An exit without progress is allowed (Linux accepts it too) but bounded: at
//! most [`MAX_STALLED_EXITS`] per batch, then [`PscError::NoProgress`]. Since
//! every other exit moves the position forward, a batch takes at most
//! (pages + entries + [`MAX_STALLED_EXITS`]) exits ([`exit_bound`]). Linux
//! (`vmgexit_psc()` in `arch/x86/coco/sev/`) has no such bound and spins for
//! as long as the hypervisor makes no progress.
//!
//! # What the guest cannot see here
//!
//! The buffer is the hypervisor's word, nothing more: a hypervisor that says
//! "done" (`cur_entry = end_entry + 1`) but changed nothing in the RMP passes
//! every check above. (KVM and the emulated platform set `cur_page` of the
//! entries they finish, but requiring that would only catch a careless liar
//! and would refuse any hypervisor that leaves it alone; Vellum does not.)
//! That lie is caught where it matters:
//!
//! * to **private** (memory validation): the PVALIDATE that follows fails
//!   (FAIL_INPUT, or an RMP fault the host cannot resolve, for a page that is
//!   not guest-assigned; CF = 1 for a page that was assigned and validated
//!   already), and boot terminates with `PVALIDATE`
//!   ([`super::validate`]);
//! * to **shared** (the pool): the pages were never validated and hold no
//!   secrets; if they stay guest-owned, the host simply cannot use them
//!   (device I/O stops): a denial of service, which the host can always cause.
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
/// Exits without progress tolerated per batch (see the module docs).
pub const MAX_STALLED_EXITS: usize = 16;

const _: () = assert!(HEADER_LEN + MAX_ENTRIES * ENTRY_LEN == SHARED_BUFFER_LEN);

/// Entry bit fields.
pub mod entry {
    /// `[11:0]` current page (hypervisor progress inside a 2 MiB entry).
    pub const CUR_PAGE_MASK: u64 = 0xFFF;
    /// `[63:12]`: what the guest writes and the hypervisor must leave alone.
    pub const GUEST_MASK: u64 = !CUR_PAGE_MASK;
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
    /// `cur_entry` went past `end_entry + 1`.
    Overrun(u16),
    /// The hypervisor changed bits `[63:12]` of an entry (GFN, operation,
    /// size or reserved bits).
    EntryRewritten {
        /// Entry index.
        index: u16,
        /// What the guest wrote.
        expected: u64,
        /// What came back.
        got: u64,
    },
    /// `cur_entry` decreased.
    EntryBackwards {
        /// Before the exit.
        before: u16,
        /// After the exit.
        after: u16,
    },
    /// `cur_page` of the current entry decreased.
    PageBackwards {
        /// The entry.
        entry: u16,
        /// Before the exit.
        before: u16,
        /// After the exit.
        after: u16,
    },
    /// `cur_page` of the current entry is beyond its page count.
    BadCurPage {
        /// The entry.
        entry: u16,
        /// The value read.
        cur_page: u16,
    },
    /// More than [`MAX_STALLED_EXITS`] exits of this batch made no progress.
    NoProgress {
        /// Exits without progress.
        stalls: usize,
    },
    /// The iteration bound ([`exit_bound`]) was reached (cannot happen when
    /// every check holds; kept as a backstop).
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

    /// 4 KiB pages the entry at `index` covers (512 for a 2 MiB entry).
    fn pages_of(&self, index: usize) -> u16 {
        pages_of(self.entries[index])
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

/// 4 KiB pages an encoded entry covers: 512 for 2 MiB, else 1.
pub const fn pages_of(encoded: u64) -> u16 {
    if encoded & entry::SIZE_2M != 0 {
        512
    } else {
        1
    }
}

/// Where the hypervisor is in a batch: `cur_entry`, and `cur_page` of that
/// entry (0 once `entry > end_entry`). Ordered lexicographically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Progress {
    /// `cur_entry`.
    pub entry: u16,
    /// `cur_page` of entry `entry`.
    pub page: u16,
}

/// What one checked exit says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExitOutcome {
    /// Every entry is processed.
    Done,
    /// More to do; `progressed` is whether the position moved forward.
    More {
        /// The new position.
        at: Progress,
        /// Whether `at` is beyond the position before the exit.
        progressed: bool,
    },
}

/// Checks one exit: `raw_header` and `entries` (`end_entry + 1` entries, each
/// read once from the shared buffer) against `batch` as the guest wrote it and
/// the position `before` the exit (module docs: the rules).
pub fn check_exit(
    batch: &PscBatch,
    before: Progress,
    raw_header: u64,
    entries: &[u64],
) -> Result<ExitOutcome, PscError> {
    let (cur, end, rsvd) = decode_header(raw_header);
    if rsvd != 0 {
        return Err(PscError::ReservedSet(rsvd));
    }
    let end_entry = batch.end_entry();
    if end != end_entry {
        return Err(PscError::EndChanged {
            expected: end_entry,
            got: end,
        });
    }
    if u32::from(cur) > u32::from(end_entry) + 1 {
        return Err(PscError::Overrun(cur));
    }
    for (i, (&got, &wrote)) in entries.iter().zip(batch.entries()).enumerate() {
        if got & entry::GUEST_MASK != wrote & entry::GUEST_MASK {
            return Err(PscError::EntryRewritten {
                index: i as u16,
                expected: wrote,
                got,
            });
        }
    }
    if cur < before.entry {
        return Err(PscError::EntryBackwards {
            before: before.entry,
            after: cur,
        });
    }
    if cur > end_entry {
        return Ok(ExitOutcome::Done);
    }
    let i = usize::from(cur);
    let page = (entries[i] & entry::CUR_PAGE_MASK) as u16;
    if page > batch.pages_of(i) {
        return Err(PscError::BadCurPage {
            entry: cur,
            cur_page: page,
        });
    }
    if cur == before.entry && page < before.page {
        return Err(PscError::PageBackwards {
            entry: cur,
            before: before.page,
            after: page,
        });
    }
    let at = Progress { entry: cur, page };
    Ok(ExitOutcome::More {
        at,
        progressed: at > before,
    })
}

/// Most exits one batch may take: one per position (each entry's pages plus
/// one, as `cur_page` runs 0..=pages) and [`MAX_STALLED_EXITS`].
pub fn exit_bound(batch: &PscBatch) -> usize {
    (0..batch.len())
        .map(|i| usize::from(batch.pages_of(i)) + 1)
        .sum::<usize>()
        + MAX_STALLED_EXITS
}

impl<M: GhcbMem, H: Hypervisor> Ghcb<M, H> {
    /// Executes one PSC batch: writes it to the shared buffer once, then
    /// VMGEXITs until `cur_entry > end_entry`, checking the status,
    /// SW_EXITINFO2, the header and every entry after each exit (each read
    /// once; [`check_exit`]).
    pub fn page_state_change(&mut self, batch: &PscBatch) -> Result<(), PscError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = [0u8; SHARED_BUFFER_LEN];
        let n = batch.encode(&mut buf);
        self.mem_mut().clear();
        self.mem_mut().write_bytes(offset::SHARED_BUFFER, &buf[..n]);
        let mut at = Progress::default();
        let mut stalls = 0;
        let mut entries = [0u64; MAX_ENTRIES];
        let entries = &mut entries[..batch.len()];
        for _ in 0..exit_bound(batch) {
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
            // Header and entries are read once per exit and checked before use.
            let raw = self.mem().read_u64(offset::SHARED_BUFFER);
            for (i, e) in entries.iter_mut().enumerate() {
                *e = self
                    .mem()
                    .read_u64(offset::SHARED_BUFFER + HEADER_LEN + i * ENTRY_LEN);
            }
            match check_exit(batch, at, raw, entries)? {
                ExitOutcome::Done => return Ok(()),
                ExitOutcome::More {
                    at: now,
                    progressed,
                } => {
                    if !progressed {
                        stalls += 1;
                        if stalls > MAX_STALLED_EXITS {
                            return Err(PscError::NoProgress { stalls });
                        }
                    }
                    at = now;
                }
            }
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

    /// A batch of `pages` (as `(gpa, 2M?)`).
    fn batch_of(pages: &[(u64, bool)]) -> PscBatch {
        let mut b = PscBatch::new();
        for &(gpa, big) in pages {
            let size = if big {
                PageSize::Size2M
            } else {
                PageSize::Size4K
            };
            b.push(Page { gpa, size }, PageState::Private).unwrap();
        }
        b
    }

    fn hdr(cur: u16, end: u16, rsvd: u32) -> u64 {
        u64::from(cur) | (u64::from(end) << 16) | (u64::from(rsvd) << 32)
    }

    fn at(entry: u16, page: u16) -> Progress {
        Progress { entry, page }
    }

    #[test]
    fn check_exit_rules() {
        // Entry 0: 4 KiB; entry 1: 2 MiB; entry 2: 4 KiB (end_entry 2).
        let b = batch_of(&[(0x1000, false), (0x20_0000, true), (0x40_0000, false)]);
        let mut e = b.entries().to_vec();
        let more = |a: Progress, progressed| Ok(ExitOutcome::More { at: a, progressed });
        // Done.
        assert_eq!(
            check_exit(&b, at(0, 0), hdr(3, 2, 0), &e),
            Ok(ExitOutcome::Done)
        );
        // Entry 0 finished (KVM sets its cur_page to 1): progress.
        e[0] |= 1;
        assert_eq!(
            check_exit(&b, at(0, 0), hdr(1, 2, 0), &e),
            more(at(1, 0), true)
        );
        // Partial progress inside the 2 MiB entry: cur_entry unchanged, cur_page up.
        e[1] |= 100;
        assert_eq!(
            check_exit(&b, at(1, 0), hdr(1, 2, 0), &e),
            more(at(1, 100), true)
        );
        assert_eq!(
            check_exit(&b, at(1, 99), hdr(1, 2, 0), &e),
            more(at(1, 100), true)
        );
        // The same position again: allowed, but not progress.
        assert_eq!(
            check_exit(&b, at(1, 100), hdr(1, 2, 0), &e),
            more(at(1, 100), false)
        );
        // cur_page backwards within the same entry.
        assert_eq!(
            check_exit(&b, at(1, 101), hdr(1, 2, 0), &e),
            Err(PscError::PageBackwards {
                entry: 1,
                before: 101,
                after: 100
            })
        );
        // Moving to the next entry is progress whatever the old cur_page was.
        assert_eq!(
            check_exit(&b, at(1, 300), hdr(2, 2, 0), &e),
            more(at(2, 0), true)
        );
        // cur_entry backwards.
        assert_eq!(
            check_exit(&b, at(2, 0), hdr(1, 2, 0), &e),
            Err(PscError::EntryBackwards {
                before: 2,
                after: 1
            })
        );
        // cur_page beyond the entry: 513 in a 2 MiB entry, 2 in a 4 KiB one.
        let mut big = e.clone();
        big[1] = (big[1] & !0xFFF) | 513;
        assert_eq!(
            check_exit(&b, at(1, 0), hdr(1, 2, 0), &big),
            Err(PscError::BadCurPage {
                entry: 1,
                cur_page: 513
            })
        );
        big[1] = (big[1] & !0xFFF) | 512;
        assert_eq!(
            check_exit(&b, at(1, 0), hdr(1, 2, 0), &big),
            more(at(1, 512), true)
        );
        big[2] |= 2;
        assert_eq!(
            check_exit(&b, at(1, 0), hdr(2, 2, 0), &big),
            Err(PscError::BadCurPage {
                entry: 2,
                cur_page: 2
            })
        );
        // An entry rewritten: GFN, operation, size, reserved bits; any entry,
        // finished or not.
        for (i, flip) in [
            (2usize, 1u64 << 12),
            (0, 3 << 52),
            (1, 1 << 56),
            (2, 1 << 60),
        ] {
            let mut bad = e.clone();
            bad[i] ^= flip;
            assert_eq!(
                check_exit(&b, at(1, 0), hdr(1, 2, 0), &bad),
                Err(PscError::EntryRewritten {
                    index: i as u16,
                    expected: b.entries()[i],
                    got: bad[i]
                }),
                "entry {i}"
            );
        }
        // Header: overrun, end changed, reserved bits.
        assert_eq!(
            check_exit(&b, at(0, 0), hdr(4, 2, 0), &e),
            Err(PscError::Overrun(4))
        );
        assert_eq!(
            check_exit(&b, at(0, 0), hdr(3, 1, 0), &e),
            Err(PscError::EndChanged {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            check_exit(&b, at(0, 0), hdr(3, 2, 1), &e),
            Err(PscError::ReservedSet(1))
        );
        // A full batch: cur_entry may reach 253, not 254.
        let full = batch_of(
            &(0..MAX_ENTRIES as u64)
                .map(|i| (i << 12, false))
                .collect::<Vec<_>>(),
        );
        let fe = full.entries().to_vec();
        assert_eq!(
            check_exit(&full, at(200, 0), hdr(253, 252, 0), &fe),
            Ok(ExitOutcome::Done)
        );
        assert_eq!(
            check_exit(&full, at(200, 0), hdr(254, 252, 0), &fe),
            Err(PscError::Overrun(254))
        );
        // The bound: one exit per position plus the stalls.
        assert_eq!(exit_bound(&b), 2 + 513 + 2 + MAX_STALLED_EXITS);
        assert_eq!(exit_bound(&full), 2 * MAX_ENTRIES + MAX_STALLED_EXITS);
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
    fn progress_inside_a_2m_entry_over_several_exits() {
        // [0x1F_F000, 0x60_1000): 4K, 2M, 2M, 4K. 100 pages per exit: each
        // 2 MiB entry takes several exits with cur_entry unchanged and
        // cur_page advancing (the emulated platform does 256 per exit).
        let ranges = [r(0x1F_F000, 0x60_1000)];
        let expected: Vec<u64> = PscBatches::new(&ranges, PageState::Private)
            .unwrap()
            .flat_map(|b| b.entries().to_vec())
            .collect();
        for per_exit in [1u16, 100, 256, 511, 512, 513] {
            let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::Pages(per_exit));
            g.change_page_state(&ranges, PageState::Private).unwrap();
            let (_, hv) = g.into_parts();
            assert_eq!(hv.psc_done, expected, "{per_exit} pages per exit");
            let pages: usize = 1 + 512 + 512 + 1;
            assert_eq!(
                hv.psc_exits,
                pages.div_ceil(usize::from(per_exit)),
                "{per_exit} pages per exit"
            );
        }
    }

    #[test]
    fn stalls_are_tolerated_up_to_the_bound() {
        let ranges = [r(0x1000, 0x9000)];
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::Stall(MAX_STALLED_EXITS));
        g.change_page_state(&ranges, PageState::Shared).unwrap();
        let (_, hv) = g.into_parts();
        assert_eq!(hv.psc_exits, MAX_STALLED_EXITS + 1);
        assert_eq!(hv.psc_done.len(), 8);
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::NoProgress);
        assert_eq!(
            g.change_page_state(&ranges, PageState::Shared),
            Err(PscError::NoProgress {
                stalls: MAX_STALLED_EXITS + 1
            })
        );
        assert_eq!(g.into_parts().1.psc_exits, MAX_STALLED_EXITS + 1);
    }

    #[test]
    fn lying_hypervisors_are_refused() {
        // Four 4 KiB pages, then a 2 MiB one (end_entry 4).
        let ranges = [r(0x1C_0000, 0x1C_4000), r(0x20_0000, 0x40_0000)];
        let run = |mode| {
            let mut g = ghcb_with(|hv| hv.psc_mode = mode);
            let e = g.change_page_state(&ranges, PageState::Shared).unwrap_err();
            (e, g.into_parts().1.psc_exits)
        };
        assert_eq!(
            run(PscMode::Backwards),
            (
                PscError::EntryBackwards {
                    before: 2,
                    after: 1
                },
                2
            )
        );
        assert_eq!(run(PscMode::Overrun), (PscError::Overrun(6), 1));
        assert_eq!(
            run(PscMode::ShrinkEnd),
            (
                PscError::EndChanged {
                    expected: 4,
                    got: 3
                },
                1
            )
        );
        assert_eq!(run(PscMode::Reserved), (PscError::ReservedSet(1), 1));
        assert_eq!(run(PscMode::Error(0x10)), (PscError::HostError(0x10), 1));
        let b = PscBatches::new(&ranges, PageState::Shared)
            .unwrap()
            .next()
            .unwrap();
        let e = b.entries();
        // The host rewrites the next entry's GFN, or the operation of the one
        // it finished, between exits: terminate (the caller maps PscError to
        // TerminateReason::PSC).
        assert_eq!(
            run(PscMode::RewriteGfn),
            (
                PscError::EntryRewritten {
                    index: 1,
                    expected: e[1],
                    got: e[1] + (1 << 12)
                },
                1
            )
        );
        assert_eq!(
            run(PscMode::RewriteOp),
            (
                PscError::EntryRewritten {
                    index: 0,
                    expected: e[0],
                    got: (e[0] | 1) ^ (3 << 52)
                },
                1
            )
        );
        assert_eq!(
            run(PscMode::CurPageTooBig),
            (
                PscError::BadCurPage {
                    entry: 0,
                    cur_page: 513
                },
                1
            )
        );
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
    fn page_backwards_inside_a_2m_entry_is_refused() {
        let ranges = [r(0x20_0000, 0x40_0000)];
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::PageBackwards);
        assert_eq!(
            g.change_page_state(&ranges, PageState::Private),
            Err(PscError::PageBackwards {
                entry: 0,
                before: 100,
                after: 50
            })
        );
        assert_eq!(g.into_parts().1.psc_exits, 2);
    }

    /// "Done" with nothing done cannot be told from the buffer (the module
    /// docs say why): the PSC layer accepts it, and the PVALIDATE that follows
    /// a PSC to private is what catches it (see validate.rs
    /// `psc_that_changed_nothing_is_caught_by_pvalidate`).
    #[test]
    fn done_but_nothing_done_is_not_visible_here() {
        let ranges = [r(0x20_0000, 0x40_0000), r(0x50_0000, 0x50_2000)];
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::NoopDone);
        g.change_page_state(&ranges, PageState::Private).unwrap();
        let (_, hv) = g.into_parts();
        assert_eq!(hv.psc_exits, 1);
        assert!(hv.psc_done.is_empty());
    }

    #[test]
    fn worst_case_partial_progress_is_bounded() {
        // One entry per exit over a full batch: exactly 253 exits, within the bound.
        let ranges = [r(0x1000, 0x1000 + MAX_ENTRIES as u64 * 0x1000)];
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::Partial(1));
        g.change_page_state(&ranges, PageState::Private).unwrap();
        assert_eq!(g.into_parts().1.psc_exits, MAX_ENTRIES);
        // One page per exit over 2 MiB entries: 512 exits per entry.
        let ranges = [r(0x20_0000, 0x60_0000)];
        let mut g = ghcb_with(|hv| hv.psc_mode = PscMode::Pages(1));
        g.change_page_state(&ranges, PageState::Private).unwrap();
        assert_eq!(g.into_parts().1.psc_exits, 1024);
    }
}
