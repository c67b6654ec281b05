//! The boot page tables as a pure model: the value of every entry `entry.s`
//! writes, as a function of the C-bit.
//!
//! `entry.s` builds the tables in 32-bit assembly (there is no Rust before long
//! mode); this module states the same rules, is host-tested, and `boot_main`
//! compares the live tables against it entry by entry on every boot (plain
//! QEMU and SEV-SNP alike), so the assembly and the model cannot drift apart.
//!
//! The map (identity, `[0, 4 GiB)`):
//!
//! * PML4\[0\] → PDPT; PDPT\[0..4\] → PD0..PD3; every PD entry is a 2 MiB leaf,
//!   except PD0\[0\] → PT0, whose 512 entries are 4 KiB leaves over `[0, 2 MiB)`.
//! * Under SEV-SNP every entry carries the C-bit (bit `c_bit` of the entry, in
//!   its high dword, `c_bit` ∈ 32..=51), **except** the leaves of the shared pool
//!   `[POOL_BASE, POOL_END)` (host-visible by design; reference §4 "Make a page
//!   shared") and of the MMIO window `[MMIO_SHARED_START, MMIO_SHARED_END)`
//!   (MMIO must be accessed shared; reference §1.7: a C-bit=1 access to MMIO
//!   is a failing private fault). Non-leaf entries carry the C-bit too, as
//!   Linux's early SEV page tables do (`arch/x86/boot/compressed/head_64.S`);
//!   the CPU treats page-table walks as private either way (AMD APM vol. 2
//!   §15.34.5).
//! * Without SNP (`c_bit` = `None`) no entry has it; the structure is the same,
//!   so there is one code path.

use crate::{
    e820::{E820, TYPE_RAM},
    layout,
};

/// Present.
pub const PRESENT: u64 = 1 << 0;
/// Writable.
pub const WRITABLE: u64 = 1 << 1;
/// Page size (2 MiB leaf in a PD entry).
pub const HUGE: u64 = 1 << 7;

/// Accessed and Dirty: set by the CPU as it walks the tables, so ignored
/// when live tables are compared with the model.
pub const ACCESSED_DIRTY: u64 = (1 << 5) | (1 << 6);

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Number of PD entries (four PDs).
pub const PD_ENTRIES: usize = layout::BOOT_PD_COUNT as usize * ENTRIES;

/// Lowest and highest C-bit positions `entry.s` accepts from the (untrusted)
/// CPUID 0x8000_001F EBX\[5:0\] before checking it against the CPUID page: the
/// bit must fall in the high dword of an entry and inside the 52-bit physical
/// address field (every SNP part so far uses 51, or 47 on some).
pub const C_BIT_MIN: u8 = 32;
/// See [`C_BIT_MIN`].
pub const C_BIT_MAX: u8 = 51;

/// Whether `pos` is a C-bit position the boot tables can encode.
pub const fn c_bit_plausible(pos: u64) -> bool {
    pos >= C_BIT_MIN as u64 && pos <= C_BIT_MAX as u64
}

/// The encryption mask for `c_bit` (`None`: no SNP, mask 0).
pub const fn c_bit_mask(c_bit: Option<u8>) -> u64 {
    match c_bit {
        Some(c) => 1 << c,
        None => 0,
    }
}

/// Whether the page at `gpa` is mapped without the C-bit (shared) under SNP:
/// the shared pool and the MMIO window.
pub const fn is_shared(gpa: u64) -> bool {
    (gpa >= layout::POOL_BASE && gpa < layout::POOL_END)
        || (gpa >= layout::MMIO_SHARED_START && gpa < layout::MMIO_SHARED_END)
}

/// PML4\[0\] (the only present PML4 entry).
pub const fn pml4_entry(c_bit: Option<u8>) -> u64 {
    layout::BOOT_PDPT | PRESENT | WRITABLE | c_bit_mask(c_bit)
}

/// PDPT\[`i`\], `i` < 4 (the other entries are zero).
pub const fn pdpt_entry(i: usize, c_bit: Option<u8>) -> u64 {
    (layout::BOOT_PD0 + i as u64 * layout::PAGE_SIZE) | PRESENT | WRITABLE | c_bit_mask(c_bit)
}

/// Entry `i` (0..[`PD_ENTRIES`]) across PD0..PD3: a 2 MiB leaf mapping
/// `i × 2 MiB`, or for `i` = 0 the pointer to PT0.
pub const fn pd_entry(i: usize, c_bit: Option<u8>) -> u64 {
    if i == 0 {
        return layout::BOOT_PT0 | PRESENT | WRITABLE | c_bit_mask(c_bit);
    }
    let gpa = i as u64 * layout::LARGE_PAGE_SIZE;
    let c = if is_shared(gpa) { 0 } else { c_bit_mask(c_bit) };
    gpa | PRESENT | WRITABLE | HUGE | c
}

/// PT0\[`i`\] (`i` < 512): the 4 KiB leaf mapping `i × 4 KiB`.
pub const fn pt0_entry(i: usize, c_bit: Option<u8>) -> u64 {
    let gpa = i as u64 * layout::PAGE_SIZE;
    let c = if is_shared(gpa) { 0 } else { c_bit_mask(c_bit) };
    gpa | PRESENT | WRITABLE | c
}

/// The leaf entry that maps `gpa` (< 4 GiB), for tests and diagnostics.
pub const fn leaf_for(gpa: u64, c_bit: Option<u8>) -> u64 {
    if gpa < layout::LARGE_PAGE_SIZE {
        pt0_entry((gpa / layout::PAGE_SIZE) as usize, c_bit)
    } else {
        pd_entry((gpa / layout::LARGE_PAGE_SIZE) as usize, c_bit)
    }
}

/// Which table an entry belongs to (for [`first_mismatch`] reports).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Table {
    /// The PML4.
    Pml4,
    /// The PDPT.
    Pdpt,
    /// PD0..PD3, indexed as one array.
    Pd,
    /// PT0.
    Pt0,
}

/// Compares live tables (read through `read(table, index)`) with the model;
/// returns the first entry that differs as `(table, index, found, expected)`.
/// PML4 and PDPT entries beyond the used ones must be zero. The
/// [`ACCESSED_DIRTY`] bits are ignored.
pub fn first_mismatch(
    c_bit: Option<u8>,
    mut read: impl FnMut(Table, usize) -> u64,
) -> Option<(Table, usize, u64, u64)> {
    let mut check = |t: Table, i: usize, want: u64| {
        let got = read(t, i);
        (got & !ACCESSED_DIRTY != want).then_some((t, i, got, want))
    };
    for i in 0..ENTRIES {
        let want = if i == 0 { pml4_entry(c_bit) } else { 0 };
        if let Some(m) = check(Table::Pml4, i, want) {
            return Some(m);
        }
    }
    for i in 0..ENTRIES {
        let want = if i < layout::BOOT_PD_COUNT as usize {
            pdpt_entry(i, c_bit)
        } else {
            0
        };
        if let Some(m) = check(Table::Pdpt, i, want) {
            return Some(m);
        }
    }
    for i in 0..PD_ENTRIES {
        if let Some(m) = check(Table::Pd, i, pd_entry(i, c_bit)) {
            return Some(m);
        }
    }
    for i in 0..ENTRIES {
        if let Some(m) = check(Table::Pt0, i, pt0_entry(i, c_bit)) {
            return Some(m);
        }
    }
    None
}

/// The first RAM range of `map` that overlaps the shared MMIO window, if any.
/// Such RAM would be mapped without the C-bit under SNP: boot refuses the map.
pub fn ram_in_mmio_window(map: &E820) -> Option<(u64, u64)> {
    map.entries()
        .iter()
        .filter(|e| e.kind == TYPE_RAM)
        .find(|e| e.start < layout::MMIO_SHARED_END && layout::MMIO_SHARED_START < e.end)
        .map(|e| (e.start, e.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::*;

    const C: Option<u8> = Some(51);
    const M: u64 = 1 << 51;

    #[test]
    fn c_bit_range() {
        assert!(!c_bit_plausible(0));
        assert!(!c_bit_plausible(31));
        assert!(c_bit_plausible(32));
        assert!(c_bit_plausible(47));
        assert!(c_bit_plausible(51));
        assert!(!c_bit_plausible(52));
        assert!(!c_bit_plausible(63));
        assert_eq!(c_bit_mask(None), 0);
        assert_eq!(c_bit_mask(Some(47)), 1 << 47);
    }

    #[test]
    fn without_snp_nothing_has_the_c_bit() {
        for gpa in (0..IDENTITY_MAPPED_END).step_by(PAGE_SIZE as usize * 7) {
            assert_eq!(leaf_for(gpa, None) >> 32, 0, "{gpa:#x}");
        }
        assert_eq!(pml4_entry(None), BOOT_PDPT | 3);
        assert_eq!(pdpt_entry(3, None), (BOOT_PD0 + 0x3000) | 3);
        assert_eq!(pd_entry(0, None), BOOT_PT0 | 3);
        assert_eq!(pd_entry(1, None), 0x20_0000 | 0x83);
        assert_eq!(pd_entry(PD_ENTRIES - 1, None), 0xFFE0_0000 | 0x83);
        assert_eq!(pt0_entry(0, None), 3);
        assert_eq!(pt0_entry(511, None), 0x1F_F000 | 3);
    }

    #[test]
    fn snp_pool_pages_are_shared_everything_else_private() {
        // Every 4 KiB page of the first 2 MiB.
        for i in 0..ENTRIES {
            let gpa = i as u64 * PAGE_SIZE;
            let e = pt0_entry(i, C);
            assert_eq!(e & 0x000F_FFFF_FFFF_F000 & !M, gpa);
            let in_pool = (POOL_BASE..POOL_END).contains(&gpa);
            assert_eq!(e & M == 0, in_pool, "{gpa:#x}");
        }
        // The secrets, CPUID, page-table, boot and hand-off pages are private.
        for gpa in [
            SNP_SECRETS_PAGE,
            SNP_CPUID_PAGE,
            BOOT_PML4,
            BOOT_PT0,
            BOOT_EARLY_PAGE,
            BOOT_RAM_BASE,
            HANDOFF_BASE,
            KERNEL_BASE,
            KERNEL_LIMIT,
        ] {
            assert_ne!(leaf_for(gpa, C) & M, 0, "{gpa:#x}");
        }
        assert_eq!(leaf_for(POOL_BASE, C) & M, 0);
        assert_eq!(leaf_for(POOL_END - PAGE_SIZE, C) & M, 0);
        assert_ne!(leaf_for(POOL_BASE - PAGE_SIZE, C) & M, 0);
        assert_ne!(leaf_for(POOL_END, C) & M, 0);
        // Non-leaf entries carry it.
        assert_eq!(pml4_entry(C), BOOT_PDPT | 3 | M);
        assert_eq!(pdpt_entry(0, C), BOOT_PD0 | 3 | M);
        assert_eq!(pd_entry(0, C), BOOT_PT0 | 3 | M);
    }

    #[test]
    fn snp_mmio_is_shared_firmware_private() {
        for gpa in [
            0xC000_0000u64,
            0xFEB0_0000,
            0xFEC0_0000,
            0xFED0_0000,
            0xFEE0_0000,
        ] {
            assert_eq!(leaf_for(gpa, C) & M, 0, "{gpa:#x}");
            assert!(is_shared(gpa));
        }
        // The firmware image (at most 8 MiB below 4 GiB) stays private.
        for gpa in (FIRMWARE_TOP - IMAGE_MAX_SIZE..FIRMWARE_TOP).step_by(LARGE_PAGE_SIZE as usize) {
            assert_ne!(leaf_for(gpa, C) & M, 0, "{gpa:#x}");
        }
        // RAM below the hole is private.
        for gpa in [0x20_0000u64, 0x7FE0_0000, 0xBFE0_0000] {
            assert_ne!(leaf_for(gpa, C) & M, 0, "{gpa:#x}");
        }
        // Exactly the expected number of shared 2 MiB leaves.
        let shared = (1..PD_ENTRIES).filter(|&i| pd_entry(i, C) & M == 0).count() as u64;
        assert_eq!(
            shared,
            (MMIO_SHARED_END - MMIO_SHARED_START) / LARGE_PAGE_SIZE
        );
    }

    #[test]
    fn entries_keep_the_address_and_flags() {
        for i in 1..PD_ENTRIES {
            let e = pd_entry(i, C);
            assert_eq!(e & 0xFFF, 0x83);
            assert_eq!(e & !M & !0xFFF, i as u64 * LARGE_PAGE_SIZE);
        }
    }

    #[test]
    fn mismatch_finder() {
        let live = |c: Option<u8>| {
            move |t: Table, i: usize| match t {
                Table::Pml4 => {
                    if i == 0 {
                        pml4_entry(c)
                    } else {
                        0
                    }
                }
                Table::Pdpt => {
                    if i < 4 {
                        pdpt_entry(i, c)
                    } else {
                        0
                    }
                }
                Table::Pd => pd_entry(i, c),
                Table::Pt0 => pt0_entry(i, c),
            }
        };
        assert_eq!(first_mismatch(C, live(C)), None);
        assert_eq!(first_mismatch(None, live(None)), None);
        // The CPU's accessed/dirty bits do not count.
        let walked = |t: Table, i: usize| live(C)(t, i) | ACCESSED_DIRTY;
        assert_eq!(first_mismatch(C, walked), None);
        // Tables built for another C-bit are caught at the first entry.
        assert_eq!(
            first_mismatch(C, live(Some(47))),
            Some((Table::Pml4, 0, pml4_entry(Some(47)), pml4_entry(C)))
        );
        // A pool page mapped private is caught.
        let bad = |t: Table, i: usize| {
            let v = live(C)(t, i);
            if t == Table::Pt0 && i == 0x100 {
                v | M
            } else {
                v
            }
        };
        assert_eq!(
            first_mismatch(C, bad),
            Some((
                Table::Pt0,
                0x100,
                pt0_entry(0x100, C) | M,
                pt0_entry(0x100, C)
            ))
        );
    }

    #[test]
    fn ram_in_the_mmio_window_is_found() {
        let entry = |s: u64, e: u64, k: u32| {
            let mut b = [0u8; 20];
            b[0..8].copy_from_slice(&s.to_le_bytes());
            b[8..16].copy_from_slice(&(e - s).to_le_bytes());
            b[16..20].copy_from_slice(&k.to_le_bytes());
            b
        };
        let fw = (FIRMWARE_TOP - 0x6_0000, FIRMWARE_TOP);
        let mut raw = Vec::new();
        raw.extend_from_slice(&entry(0, 0xA_0000, 1));
        raw.extend_from_slice(&entry(0x10_0000, 0x8000_0000, 1));
        raw.extend_from_slice(&entry(0xFEFF_C000, 0xFF00_0000, 2));
        let ok = E820::parse(&raw, fw).unwrap();
        assert_eq!(ram_in_mmio_window(&ok), None);
        raw.extend_from_slice(&entry(0xC000_0000, 0xC010_0000, 1));
        let bad = E820::parse(&raw, fw).unwrap();
        assert_eq!(ram_in_mmio_window(&bad), Some((0xC000_0000, 0xC010_0000)));
    }
}
