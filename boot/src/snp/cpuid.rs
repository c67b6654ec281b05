//! The SNP CPUID page: parser and lookup.
//!
//! The page is filled by QEMU from `KVM_GET_CPUID2` and filtered by the PSP at
//! launch (reference §1.3; QEMU `target/i386/sev.c` `SnpCpuidInfo`, sev.c:1180
//! forces leaf 0xD sub-leaves 0/1 to EBX = 0x240, XCR0_in = 1; sev.c:1208
//! asserts the page holds `sizeof(SnpCpuidInfo)`). Layout (SNP FW ABI 56860
//! §7.1 "CPUID Reporting", Table 14; Linux `struct snp_cpuid_table` /
//! `struct snp_cpuid_fn`): `u32 count, u32 rsvd, u64 rsvd`, then up to 64
//! entries of 48 bytes at offset 16: `{u32 eax_in, u32 ecx_in, u64 xcr0_in,
//! u64 xss_in, u32 eax, ebx, ecx, edx, u64 rsvd}`.
//!
//! Lookup rules follow Linux `arch/x86/coco/sev/` (formerly
//! `arch/x86/kernel/sev-shared.c`): `snp_cpuid_get_validated_func`,
//! `snp_cpuid_calc_xsave_size`, `snp_cpuid_postprocess`, `snp_cpuid`,
//! `setup_cpuid_table` (count 0 or > 64 → terminate `GHCB_TERM_CPUID`; range
//! maxima from leaves 0x0, 0x4000_0000, 0x8000_0000):
//!
//! * the sub-leaf (ECX) matters only for indexed leaves: Linux
//!   `cpuid_function_is_indexed()` (`arch/x86/include/asm/cpuid/api.h`:
//!   0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F,
//!   0x24, 0x8000_001D). Vellum adds 0x20, 0x8000_0020 and 0x8000_0026, which
//!   the APM documents as ECX-indexed (PQE/platform QoS, extended topology);
//!   treating them as indexed can only turn a wrong answer into zeros;
//! * for 0xD sub-leaves 0 and 1 only the entry with XCR0_in ∈ {1, 3} and
//!   XSS_in = 0 is used, and EBX is recomputed from XCR0 (sub-leaf 0) or
//!   XCR0 | XSS in compacted form (sub-leaf 1) using the per-component sizes
//!   of sub-leaves 2..63, with the legacy base 0x240 (APM vol. 3 App. E.3.8).
//!   Every enabled component ≥ 2 must be in the page, and sub-leaf 1 needs
//!   XSAVEC or XSAVES (EAX bit 1 or 3), else → `None` (terminate). Unlike Linux
//!   the compacted size honours the 64-byte alignment bit (sub-leaf n ECX\[1\]),
//!   which can only make the size larger, never too small;
//! * a leaf not in the page reads as zeros (Linux: "out-of-range entries and
//!   in-range zero entries" are both zero) — except hypervisor leaves
//!   0x4000_0000..=0x4FFF_FFFF, which give `None`: a hypervisor leaf the PSP
//!   did not check is not trusted (stricter than Linux, which returns zeros
//!   there too).
//!
//! Dynamic bits the page cannot know (leaf 1 ECX\[27\] OSXSAVE, leaf 7 ECX\[4\]
//! OSPKE) are applied by [`apply_cr4_bits`]. APIC IDs (leaf 1 EBX\[31:24\],
//! 0xB EDX, 0x8000_001E) are per-vCPU; Linux takes them from the hypervisor.
//! With `-smp 1` the page's values are the BSP's, so Vellum does not fix them.

/// Most entries (Linux `SNP_CPUID_COUNT_MAX`).
pub const MAX_ENTRIES: usize = 64;
/// Offset of the first entry.
pub const ENTRIES_OFFSET: usize = 16;
/// Bytes per entry.
pub const ENTRY_LEN: usize = 48;
/// Bytes the page structure occupies (16 + 64 × 48 = 3088).
pub const TABLE_LEN: usize = ENTRIES_OFFSET + MAX_ENTRIES * ENTRY_LEN;
/// Legacy XSAVE area (512) + header (64).
pub const XSAVE_LEGACY_SIZE: u32 = 0x240;

/// Leaves whose result depends on ECX (see the module doc for sources).
pub const INDEXED_LEAVES: [u32; 18] = [
    0x4,
    0x7,
    0xB,
    0xD,
    0xF,
    0x10,
    0x12,
    0x14,
    0x17,
    0x18,
    0x1D,
    0x1E,
    0x1F,
    0x20,
    0x24,
    0x8000_001D,
    0x8000_0020,
    0x8000_0026,
];

/// Whether `leaf` is ECX-indexed.
pub fn is_indexed(leaf: u32) -> bool {
    INDEXED_LEAVES.contains(&leaf)
}

/// One CPUID page entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct CpuidEntry {
    /// Leaf.
    pub eax_in: u32,
    /// Sub-leaf.
    pub ecx_in: u32,
    /// XCR0 the entry applies to (leaf 0xD sub-leaves 0/1).
    pub xcr0_in: u64,
    /// XSS the entry applies to (leaf 0xD sub-leaf 1).
    pub xss_in: u64,
    /// EAX, EBX, ECX, EDX.
    pub regs: [u32; 4],
}

/// Why the page was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CpuidError {
    /// Fewer than [`TABLE_LEN`] bytes.
    TooShort(usize),
    /// `count` is 0.
    Empty,
    /// `count` exceeds [`MAX_ENTRIES`].
    TooMany(u32),
}

/// A parsed private copy of the CPUID page.
#[derive(Clone, Copy, Debug)]
pub struct CpuidPage {
    entries: [CpuidEntry; MAX_ENTRIES],
    count: usize,
    std_max: u32,
    hyp_max: u32,
    ext_max: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

const HYP_FIRST: u32 = 0x4000_0000;
const HYP_LAST: u32 = 0x4FFF_FFFF;
const EXT_FIRST: u32 = 0x8000_0000;

impl CpuidPage {
    /// Parses `page` (a private copy: the caller copies the CPUID page out
    /// of guest memory once and never reads it again).
    pub fn parse(page: &[u8]) -> Result<Self, CpuidError> {
        if page.len() < TABLE_LEN {
            return Err(CpuidError::TooShort(page.len()));
        }
        let count = u32_at(page, 0);
        if count == 0 {
            return Err(CpuidError::Empty);
        }
        if count as usize > MAX_ENTRIES {
            return Err(CpuidError::TooMany(count));
        }
        let mut p = CpuidPage {
            entries: [CpuidEntry::default(); MAX_ENTRIES],
            count: count as usize,
            std_max: 0,
            hyp_max: 0,
            ext_max: 0,
        };
        for i in 0..p.count {
            let at = ENTRIES_OFFSET + i * ENTRY_LEN;
            p.entries[i] = CpuidEntry {
                eax_in: u32_at(page, at),
                ecx_in: u32_at(page, at + 4),
                xcr0_in: u64_at(page, at + 8),
                xss_in: u64_at(page, at + 16),
                regs: [
                    u32_at(page, at + 24),
                    u32_at(page, at + 28),
                    u32_at(page, at + 32),
                    u32_at(page, at + 36),
                ],
            };
        }
        p.std_max = p.find(0, 0).map_or(0, |e| e.regs[0]);
        p.hyp_max = p.find(HYP_FIRST, 0).map_or(0, |e| e.regs[0]);
        p.ext_max = p.find(EXT_FIRST, 0).map_or(0, |e| e.regs[0]);
        Ok(p)
    }

    /// The entries.
    pub fn entries(&self) -> &[CpuidEntry] {
        &self.entries[..self.count]
    }

    /// Highest standard, hypervisor and extended leaves (EAX of 0x0,
    /// 0x4000_0000, 0x8000_0000; 0 when absent).
    pub fn range_max(&self) -> (u32, u32, u32) {
        (self.std_max, self.hyp_max, self.ext_max)
    }

    /// First entry matching Linux `snp_cpuid_get_validated_func`.
    fn find(&self, leaf: u32, subleaf: u32) -> Option<&CpuidEntry> {
        self.entries().iter().find(|e| {
            e.eax_in == leaf
                && (!is_indexed(leaf) || e.ecx_in == subleaf)
                && !(e.eax_in == 0xD
                    && (e.ecx_in == 0 || e.ecx_in == 1)
                    && (!(e.xcr0_in == 1 || e.xcr0_in == 3) || e.xss_in != 0))
        })
    }

    fn in_range(&self, leaf: u32) -> bool {
        leaf <= self.std_max
            || (HYP_FIRST..=self.hyp_max).contains(&leaf)
            || (EXT_FIRST..=self.ext_max).contains(&leaf)
    }

    /// CPUID(`leaf`, `subleaf`) given the current XCR0 and XSS (pass XCR0 = 1
    /// when CR4.OSXSAVE is clear and XSS = 0 when XSAVES is not enabled, as
    /// Linux does). `None` means the answer cannot be trusted: terminate with
    /// [`super::msr_protocol::TerminateReason::CPUID`].
    pub fn lookup(&self, leaf: u32, subleaf: u32, xcr0: u64, xss: u64) -> Option<[u32; 4]> {
        let mut regs = match self.find(leaf, subleaf) {
            Some(e) => e.regs,
            None if (HYP_FIRST..=HYP_LAST).contains(&leaf) => return None,
            None if !self.in_range(leaf) => return Some([0; 4]),
            None => [0; 4],
        };
        if leaf == 0xD && (subleaf == 0 || subleaf == 1) {
            let (enabled, compacted) = if subleaf == 0 {
                (xcr0, false)
            } else {
                // XSAVEC (bit 1) or XSAVES (bit 3) must be offered.
                if regs[0] & ((1 << 1) | (1 << 3)) == 0 {
                    return None;
                }
                (xcr0 | xss, true)
            };
            regs[1] = self.xsave_size(enabled, compacted)?;
        }
        Some(regs)
    }

    /// XSAVE area size for the components in `enabled` (bits ≥ 2 looked up in
    /// leaf 0xD sub-leaves 2..63: EAX size, EBX standard offset, ECX\[1\]
    /// 64-byte alignment in compacted form).
    pub fn xsave_size(&self, enabled: u64, compacted: bool) -> Option<u32> {
        let mut size = u64::from(XSAVE_LEGACY_SIZE);
        for i in 2..64u32 {
            if enabled & (1 << i) == 0 {
                continue;
            }
            let e = self.find(0xD, i)?;
            let (len, off, align) = (
                u64::from(e.regs[0]),
                u64::from(e.regs[1]),
                e.regs[2] & 2 != 0,
            );
            if compacted {
                if align {
                    size = (size + 63) & !63;
                }
                size += len;
            } else {
                size = size.max(off + len);
            }
        }
        u32::try_from(size).ok()
    }

    /// The C-bit position from leaf 0x8000_001F EBX\[5:0\] (PSP-checked), to
    /// compare with what the hypervisor reported through the MSR protocol.
    pub fn c_bit(&self) -> Option<u8> {
        self.find(0x8000_001F, 0).map(|e| (e.regs[1] & 0x3F) as u8)
    }

    /// Whether leaf 0x8000_001F EAX bit 4 (SEV-SNP) is set.
    pub fn snp_supported(&self) -> bool {
        self.find(0x8000_001F, 0)
            .is_some_and(|e| e.regs[0] & (1 << 4) != 0)
    }
}

/// Applies the CR4-dependent bits Linux `snp_cpuid_postprocess` fixes: leaf 1
/// ECX\[27\] OSXSAVE = CR4.OSXSAVE, leaf 7 sub-leaf 0 ECX\[4\] OSPKE = CR4.PKE.
pub fn apply_cr4_bits(leaf: u32, subleaf: u32, regs: &mut [u32; 4], osxsave: bool, pke: bool) {
    let set = |r: &mut u32, bit: u32, on: bool| {
        if on {
            *r |= 1 << bit;
        } else {
            *r &= !(1 << bit);
        }
    };
    match (leaf, subleaf) {
        (1, _) => set(&mut regs[2], 27, osxsave),
        (7, 0) => set(&mut regs[2], 4, pke),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Builder(Vec<u8>);

    impl Builder {
        fn new() -> Self {
            Builder(vec![0; 4096])
        }
        fn entry(mut self, leaf: u32, sub: u32, xcr0: u64, xss: u64, regs: [u32; 4]) -> Self {
            let n = u32_at(&self.0, 0) as usize;
            let at = ENTRIES_OFFSET + n * ENTRY_LEN;
            self.0[at..at + 4].copy_from_slice(&leaf.to_le_bytes());
            self.0[at + 4..at + 8].copy_from_slice(&sub.to_le_bytes());
            self.0[at + 8..at + 16].copy_from_slice(&xcr0.to_le_bytes());
            self.0[at + 16..at + 24].copy_from_slice(&xss.to_le_bytes());
            for (k, r) in regs.iter().enumerate() {
                self.0[at + 24 + 4 * k..at + 28 + 4 * k].copy_from_slice(&r.to_le_bytes());
            }
            self.0[0..4].copy_from_slice(&(n as u32 + 1).to_le_bytes());
            self
        }
        fn e(self, leaf: u32, sub: u32, regs: [u32; 4]) -> Self {
            self.entry(leaf, sub, 0, 0, regs)
        }
    }

    /// A page shaped like QEMU's for an EPYC-v4 guest (values illustrative).
    fn epyc() -> CpuidPage {
        let b = Builder::new()
            .e(0, 0, [0xD, 0x6874_7541, 0x444D_4163, 0x6974_6E65])
            .e(1, 0, [0x0080_0F12, 0x0000_0800, 0x7EF8_3203, 0x178B_FBFF])
            .e(7, 0, [0, 0x219C_91A9, 0x0040_0004, 0])
            .e(7, 1, [0x20, 0, 0, 0])
            .entry(0xD, 0, 1, 0, [0x7, 0x240, 0x340, 0])
            .entry(0xD, 1, 1, 0, [0xF, 0x240, 0, 0])
            .e(0xD, 2, [0x100, 0x240, 0, 0]) // AVX: 256 B at 576
            .e(0xD, 9, [0x8, 0xA80, 0x2, 0]) // PKRU-like, align bit set
            .e(0xD, 11, [0x10, 0, 0x1, 0]) // supervisor component (XSS)
            .e(0xD, 12, [0x18, 0, 0x3, 0]) // supervisor, align bit set
            .e(
                0x4000_0000,
                0,
                [0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D],
            )
            .e(
                0x8000_0000,
                0,
                [0x8000_0021, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
            )
            .e(0x8000_001D, 0, [0x121, 0x01C0_003F, 0x3F, 0])
            .e(0x8000_001D, 1, [0x122, 0x01C0_003F, 0x3F, 0])
            .e(0x8000_001F, 0, [0x0101_FD3F, 0x4000_0173, 0x1FD, 0]);
        CpuidPage::parse(&b.0).unwrap()
    }

    #[test]
    fn layout_constants() {
        assert_eq!(TABLE_LEN, 3088);
        assert_eq!(ENTRY_LEN, 48);
        assert_eq!(ENTRIES_OFFSET, 16);
        assert_eq!(XSAVE_LEGACY_SIZE, 576);
    }

    #[test]
    fn parse_checks() {
        assert_eq!(
            CpuidPage::parse(&[0; 100]).unwrap_err(),
            CpuidError::TooShort(100)
        );
        assert_eq!(CpuidPage::parse(&[0; 4096]).unwrap_err(), CpuidError::Empty);
        let mut b = vec![0u8; 4096];
        b[0] = 65;
        assert_eq!(CpuidPage::parse(&b).unwrap_err(), CpuidError::TooMany(65));
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            CpuidPage::parse(&b).unwrap_err(),
            CpuidError::TooMany(u32::MAX)
        );
        // Exactly 64 entries, in exactly TABLE_LEN bytes.
        let mut bld = Builder::new();
        for i in 0..64 {
            bld = bld.e(0x8000_0000 + i, 0, [i, 0, 0, 0]);
        }
        let p = CpuidPage::parse(&bld.0[..TABLE_LEN]).unwrap();
        assert_eq!(p.entries().len(), 64);
        assert_eq!(p.entries()[63].regs[0], 63);
        // Field placement: eax at +24, xcr0_in at +8.
        let p = CpuidPage::parse(&Builder::new().entry(0xD, 0, 3, 0, [1, 2, 3, 4]).0).unwrap();
        assert_eq!(
            p.entries()[0],
            CpuidEntry {
                eax_in: 0xD,
                ecx_in: 0,
                xcr0_in: 3,
                xss_in: 0,
                regs: [1, 2, 3, 4]
            }
        );
    }

    #[test]
    fn indexed_leaves_match_linux_plus_three() {
        let linux = [
            0x4,
            0x7,
            0xB,
            0xD,
            0xF,
            0x10,
            0x12,
            0x14,
            0x17,
            0x18,
            0x1D,
            0x1E,
            0x1F,
            0x24,
            0x8000_001D,
        ];
        for l in linux {
            assert!(is_indexed(l), "{l:#x}");
        }
        for l in [0x20, 0x8000_0020, 0x8000_0026] {
            assert!(is_indexed(l));
        }
        for l in [0, 1, 2, 6, 0x8000_0000, 0x8000_001F, 0x4000_0000] {
            assert!(!is_indexed(l));
        }
    }

    #[test]
    fn lookup_rules() {
        let p = epyc();
        assert_eq!(p.range_max(), (0xD, 0x4000_0001, 0x8000_0021));
        // Non-indexed: sub-leaf ignored.
        assert_eq!(
            p.lookup(1, 5, 1, 0),
            Some([0x0080_0F12, 0x800, 0x7EF8_3203, 0x178B_FBFF])
        );
        // Indexed: sub-leaf selects.
        assert_eq!(p.lookup(7, 1, 1, 0), Some([0x20, 0, 0, 0]));
        assert_eq!(p.lookup(0x8000_001D, 1, 1, 0).unwrap()[0], 0x122);
        // Indexed sub-leaf absent but in range: zeros.
        assert_eq!(p.lookup(7, 2, 1, 0), Some([0; 4]));
        // In range but absent: zeros. Beyond max: zeros.
        assert_eq!(p.lookup(6, 0, 1, 0), Some([0; 4]));
        assert_eq!(p.lookup(0x20, 0, 1, 0), Some([0; 4]));
        assert_eq!(p.lookup(0x8000_0008, 0, 1, 0), Some([0; 4]));
        assert_eq!(p.lookup(0x8000_0100, 0, 1, 0), Some([0; 4]));
        assert_eq!(p.lookup(0xC000_0000, 0, 1, 0), Some([0; 4]));
        // Hypervisor leaves: present -> value, absent (in or out of range) -> None.
        assert_eq!(p.lookup(0x4000_0000, 0, 1, 0).unwrap()[0], 0x4000_0001);
        assert_eq!(p.lookup(0x4000_0001, 0, 1, 0), None);
        assert_eq!(p.lookup(0x4000_0100, 0, 1, 0), None);
        assert_eq!(p.lookup(0x4FFF_FFFF, 0, 1, 0), None);
        // C-bit and SNP bit.
        assert_eq!(p.c_bit(), Some(51));
        assert!(p.snp_supported());
        let bare = CpuidPage::parse(&Builder::new().e(0, 0, [1, 0, 0, 0]).0).unwrap();
        assert_eq!(bare.c_bit(), None);
        assert!(!bare.snp_supported());
    }

    #[test]
    fn xsave_sizes() {
        let p = epyc();
        // XCR0 = x87|SSE: legacy size, even though the page says 0x240 anyway.
        assert_eq!(p.lookup(0xD, 0, 0x3, 0).unwrap()[1], 0x240);
        // XCR0 = x87|SSE|AVX: max(0x240, 0x240 + 0x100) = 0x340.
        assert_eq!(p.lookup(0xD, 0, 0x7, 0).unwrap()[1], 0x340);
        // + component 9 at standard offset 0xA80, size 8: 0xA88.
        assert_eq!(p.lookup(0xD, 0, 0x207, 0).unwrap()[1], 0xA88);
        // Compacted (sub-leaf 1): 0x240 + 0x100 = 0x340, then 9 aligned to 64:
        // 0x340 is aligned, + 8 = 0x348; + XSS component 11 (16) = 0x358.
        assert_eq!(p.lookup(0xD, 1, 0x207, 0).unwrap()[1], 0x348);
        assert_eq!(p.lookup(0xD, 1, 0x207, 1 << 11).unwrap()[1], 0x358);
        // AVX + component 11: 0x340 + 0x10 = 0x350.
        assert_eq!(p.lookup(0xD, 1, 0x7, 1 << 11).unwrap()[1], 0x350);
        // Alignment matters: 11 ends at 0x250; 12 (align bit) starts at 0x280,
        // + 0x18 = 0x298. Linux's plain sum would give 0x268 (too small).
        assert_eq!(p.xsave_size(0x3 | (3 << 11), true), Some(0x298));
        // Components 9 then 11: 0x240 is aligned, + 8, + 0x10 = 0x258.
        assert_eq!(p.xsave_size(0x3 | (1 << 11) | (1 << 9), true), Some(0x258));
        // Sub-leaf 0 other registers come from the page.
        assert_eq!(p.lookup(0xD, 0, 0x7, 0).unwrap()[0], 0x7);
        // Enabled component missing from the page -> None.
        assert_eq!(p.lookup(0xD, 0, 0x1F, 0), None);
        assert_eq!(p.lookup(0xD, 1, 0x7, 1 << 13), None);
        // Sub-leaf 2 is a plain indexed lookup.
        assert_eq!(p.lookup(0xD, 2, 0x7, 0), Some([0x100, 0x240, 0, 0]));
    }

    #[test]
    fn leaf_d_entries_for_other_xcr0_are_ignored() {
        // An entry for XCR0_in = 7 (hypervisor-provided size) must not be used,
        // and XSS_in != 0 neither; the XCR0_in = 1 entry is found after them.
        let b = Builder::new()
            .e(0, 0, [0xD, 0, 0, 0])
            .entry(0xD, 0, 7, 0, [0xFF, 0x9999, 0, 0])
            .entry(0xD, 1, 1, 0x800, [0xFF, 0x9999, 0, 0])
            .entry(0xD, 0, 3, 0, [0x7, 0x240, 0x340, 0])
            .entry(0xD, 1, 1, 0, [0x1, 0x240, 0, 0])
            .e(0xD, 2, [0x100, 0x240, 0, 0]);
        let p = CpuidPage::parse(&b.0).unwrap();
        assert_eq!(p.lookup(0xD, 0, 0x7, 0), Some([0x7, 0x340, 0x340, 0]));
        // Sub-leaf 1 with only XSAVEOPT (bit 0): no XSAVEC/XSAVES -> None (Linux -EINVAL).
        assert_eq!(p.lookup(0xD, 1, 0x7, 0), None);
        // No usable 0xD/0 entry at all: zeros, then EBX recomputed (in range).
        let b = Builder::new()
            .e(0, 0, [0xD, 0, 0, 0])
            .entry(0xD, 0, 7, 0, [0xFF, 0x9999, 0, 0]);
        let p = CpuidPage::parse(&b.0).unwrap();
        assert_eq!(p.lookup(0xD, 0, 0x3, 0), Some([0, 0x240, 0, 0]));
    }

    #[test]
    fn cr4_bits() {
        let mut r = [0, 0, 0, 0];
        apply_cr4_bits(1, 0, &mut r, true, false);
        assert_eq!(r[2], 1 << 27);
        apply_cr4_bits(1, 0, &mut r, false, false);
        assert_eq!(r[2], 0);
        let mut r = [0, 0, 0xFFFF_FFFF, 0];
        apply_cr4_bits(7, 0, &mut r, true, false);
        assert_eq!(r[2], !(1 << 4));
        apply_cr4_bits(7, 1, &mut r, true, true);
        assert_eq!(r[2], !(1 << 4));
        apply_cr4_bits(7, 0, &mut r, false, true);
        assert_eq!(r[2], 0xFFFF_FFFF);
    }
}
