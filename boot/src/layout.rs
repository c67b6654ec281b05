//! The one definition of Vellum's physical memory layout.
//!
//! `boot/` (assembly and Rust), `kernel/` and `image/` all take their addresses
//! from this module; the linker script `boot/linker.ld` is checked against it by
//! `boot/build.rs`-free means: the image tool reads the linked boot ELF and refuses
//! to lay out an image whose sections disagree with these constants.
//!
//! Everything is identity-mapped (virtual = physical) by the boot page tables.
//!
//! ```text
//! Guest physical address map (QEMU q35, `-bios target/vellum.bin`, image of S bytes)
//!
//! 0x0000_0000 ..0x0000_1000   untouched (real-mode IVT/BDA); never used
//! 0x0000_1000 ..0x0000_2000   SNP secrets page            ASEV type 2 (SECRETS)
//! 0x0000_2000 ..0x0000_3000   SNP CPUID page              ASEV type 3 (CPUID)
//! 0x0000_3000 ..0x0000_A000   boot page tables            ASEV type 1 (SNP_SEC_MEM) ┐
//!                             PML4 0x3000, PDPT 0x4000,                              │
//!                             PD[0..4] 0x5000..0x9000 (2 MiB pages, 0..4 GiB),       │
//!                             PT0 0x9000 (4 KiB pages over the first 2 MiB)          │
//! 0x0000_A000 ..0x0000_B000   early page: 32-bit IDT (#VC), SEV_STATUS/C-bit slot    │
//! 0x0000_B000 ..0x0001_0000   spare, part of SEC_MEM                                 │
//! 0x0001_0000 ..0x0006_0000   boot code/data/bss, copied from ROM at reset           │
//! 0x0006_0000 ..0x0008_0000   boot stack (grows down from 0x8_0000)                  │
//! 0x0008_0000 ..0x0009_0000   hand-off area: BootInfo, memory regions, Handoff       ┘
//! 0x0009_0000 ..0x000A_0000   usable RAM
//! 0x000A_0000 ..0x0010_0000   legacy VGA/option-ROM/BIOS hole: never RAM for us
//! 0x0010_0000 ..0x0020_0000   the shared-page pool (POOL_BASE, POOL_SIZE): the only
//!                             memory the host may access (virtio rings, packet
//!                             buffers, GHCB, guest-request pages); never validated
//! 0x0020_0000 ..kernel_end    kernel ELF segments (linked here), then its stack
//! kernel_end  ..top of RAM    usable: heap, shared pool (carved by the kernel)
//!
//! 4 GiB - S   ..4 GiB - 128K  kernel payload (header + segment bytes) in the image
//! 4 GiB - 128K..4 GiB         boot ROM: asm entry, boot RAM image (LMA), GDT, then
//! 4 GiB - 0x420..4 GiB - 0x20   the GUIDed table window (ASEV metadata + table,
//!                               written by `image`, right-aligned to 4 GiB - 0x20)
//! 4 GiB - 0x30                footer GUID (inside the window's last 16 bytes)
//! 4 GiB - 0x10                reset vector (first instruction)
//! ```
//!
//! SNP: the launch validates the whole image (as NORMAL pages) and the ASEV ranges
//! above; boot must never PVALIDATE those again (`docs/snp-reference.md` §1.4,
//! §4.4 "PVALIDATE and double validation").

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large (2 MiB) page.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// The image is mapped so that it ends here (QEMU `x86_bios_rom_init`).
pub const FIRMWARE_TOP: u64 = 0x1_0000_0000;
/// QEMU requires the `-bios` file size to be a non-zero multiple of this.
pub const IMAGE_ALIGN: u64 = 0x1_0000;
/// Largest image we produce (stays clear of the IOAPIC/LAPIC;
/// `docs/snp-reference.md` §1.1 "Loading and mapping the image").
pub const IMAGE_MAX_SIZE: u64 = 8 << 20;

/// Size of the boot ROM region at the top of the image (boot ELF's ROM part).
pub const BOOT_ROM_SIZE: u64 = 0x2_0000;
/// Where the boot ROM region starts.
pub const BOOT_ROM_BASE: u64 = FIRMWARE_TOP - BOOT_ROM_SIZE;
/// Real-mode reachable window (CS base 0xFFFF_0000): the 16-bit code lives here.
pub const REAL_MODE_WINDOW: u64 = FIRMWARE_TOP - 0x1_0000;
/// The reset vector: the first instruction the CPU executes.
pub const RESET_VECTOR: u64 = FIRMWARE_TOP - 0x10;
/// The GUIDed table ends here (the 32 bytes above are the reset-vector area).
pub const FW_TABLE_END: u64 = FIRMWARE_TOP - 0x20;
/// Bytes reserved below [`FW_TABLE_END`] for the ASEV metadata block and the table.
pub const FW_TABLE_WINDOW: u64 = 0x400;
/// Start of the reserved window.
pub const FW_TABLE_START: u64 = FW_TABLE_END - FW_TABLE_WINDOW;

/// SNP secrets page (ASEV type 2).
pub const SNP_SECRETS_PAGE: u64 = 0x1000;
/// SNP CPUID page (ASEV type 3).
pub const SNP_CPUID_PAGE: u64 = 0x2000;

/// Boot page tables: PML4.
pub const BOOT_PML4: u64 = 0x3000;
/// Boot page tables: the one PDPT.
pub const BOOT_PDPT: u64 = 0x4000;
/// Boot page tables: four page directories (0..4 GiB in 2 MiB pages).
pub const BOOT_PD0: u64 = 0x5000;
/// Number of page directories the boot tables use.
pub const BOOT_PD_COUNT: u64 = 4;
/// Boot page tables: the 4 KiB page table that PD0\[0\] points to, splitting
/// the first 2 MiB so that the shared pool can be mapped without the C-bit.
pub const BOOT_PT0: u64 = BOOT_PD0 + BOOT_PD_COUNT * PAGE_SIZE;
/// End of the boot page tables.
pub const BOOT_PAGE_TABLES_END: u64 = BOOT_PT0 + PAGE_SIZE;

/// Early page written by `entry.s` in 32-bit mode: the 32-bit IDT (32 gates,
/// vector 29 = the #VC MSR-protocol CPUID handler) at offset 0, and the
/// [`BOOT_EARLY_STATE`] slot. Inside SNP_SEC_MEM (pre-validated, private).
pub const BOOT_EARLY_PAGE: u64 = BOOT_PAGE_TABLES_END;
/// The 32-bit IDT (before long mode only).
pub const BOOT_IDT32: u64 = BOOT_EARLY_PAGE;
/// Gates in the 32-bit IDT (the exception vectors).
pub const BOOT_IDT32_GATES: u64 = 32;
/// What `entry.s` detected: `u64` SEV_STATUS at +0 (0 without SEV), `u64`
/// C-bit position at +8 (0 without SEV-SNP). Read by the 64-bit entry code and
/// passed to `boot_main`.
pub const BOOT_EARLY_STATE: u64 = BOOT_EARLY_PAGE + 0x100;
/// End of the early page.
pub const BOOT_EARLY_PAGE_END: u64 = BOOT_EARLY_PAGE + PAGE_SIZE;

/// Under SEV-SNP the boot page tables map this window of the 32-bit PCI hole
/// (PCI BARs, IOAPIC 0xFEC0_0000, HPET, LAPIC 0xFEE0_0000) **without** the C-bit:
/// MMIO must be accessed as shared (`docs/snp-reference.md` §1.7). It stops below the
/// largest firmware image, whose range stays private. q35 never puts RAM here
/// (low RAM ends at or below the 0xB000_0000 MMCONFIG window); boot refuses an
/// e820 map that does.
pub const MMIO_SHARED_START: u64 = 0xC000_0000;
/// End of the shared MMIO window.
pub const MMIO_SHARED_END: u64 = FIRMWARE_TOP - IMAGE_MAX_SIZE;

/// Boot's RAM image (code, rodata, data, bss) is linked and copied here.
pub const BOOT_RAM_BASE: u64 = 0x1_0000;
/// End of boot's RAM image area.
pub const BOOT_RAM_END: u64 = 0x6_0000;
/// Top of the boot stack (grows down to [`BOOT_RAM_END`]).
pub const BOOT_STACK_TOP: u64 = 0x8_0000;

/// Hand-off area: the `BootInfo`, the memory-region array and [`crate::abi::Handoff`].
pub const HANDOFF_BASE: u64 = 0x8_0000;
/// End of the hand-off area.
pub const HANDOFF_END: u64 = 0x9_0000;

/// Pre-validated boot memory (ASEV type 1, SNP_SEC_MEM): page tables through hand-off.
pub const SEC_MEM_START: u64 = BOOT_PML4;
/// End of the pre-validated boot memory.
pub const SEC_MEM_END: u64 = HANDOFF_END;

/// Legacy hole (VGA, option ROMs, BIOS alias): never treated as RAM.
pub const LEGACY_HOLE_START: u64 = 0xA_0000;
/// End of the legacy hole.
pub const LEGACY_HOLE_END: u64 = 0x10_0000;

/// The shared-page pool: one contiguous range, the only memory ever shared with
/// the host. Its size is a build-time setting (this constant); it must stay in
/// `[LEGACY_HOLE_END, KERNEL_BASE)`. Under SEV-SNP it is never validated and is
/// mapped without the C-bit (4 KiB pages: the boot page tables split the first
/// 2 MiB for it).
pub const POOL_BASE: u64 = 0x10_0000;
/// Size of the shared-page pool.
pub const POOL_SIZE: u64 = 0x10_0000;
/// End of the shared-page pool.
pub const POOL_END: u64 = POOL_BASE + POOL_SIZE;

/// Who owns each page of the pool, as page numbers from [`POOL_BASE`]: the
/// one list. The kernel's `pool::split` hands out one typed part per owner;
/// nothing else forms a pool address.
pub mod pool_pages {
    /// The GHCB: boot shares and registers it first, both stages use it under
    /// SEV-SNP. Boot relies on it being page 0 (it shares it on its own, then
    /// the rest of the pool in one page-state change).
    pub const GHCB: u64 = 0;
    /// The SNP guest-request page (the sealed request goes out here).
    pub const GUEST_REQUEST: u64 = 1;
    /// The SNP guest-response page (the sealed response comes back here).
    pub const GUEST_RESPONSE: u64 = 2;
    /// First page of the NIC region (virtio rings and packet buffers), which
    /// runs to the end of the pool.
    pub const NIC: u64 = 3;
}

/// Guest-physical address of pool page `page` (see [`pool_pages`]).
pub const fn pool_page(page: u64) -> u64 {
    POOL_BASE + page * PAGE_SIZE
}

/// Lowest address a kernel segment may be loaded at (its link base).
pub const KERNEL_BASE: u64 = 0x20_0000;
/// Kernel segments plus stack must end below this.
pub const KERNEL_LIMIT: u64 = 0x100_0000;
/// Page offset the kernel's linker script gives ring's stitched AES-GCM code
/// (`_aesni_ctr32_ghash_6x` first): the placement at which it runs fast
/// under QEMU's TCG (see `kernel/build.rs`); checked by `image build`.
pub const KERNEL_AES_GCM_PAGE_OFFSET: u64 = 0xac0;
/// The symbol whose address carries that offset.
pub const KERNEL_AES_GCM_SYMBOL: &str = "_aesni_ctr32_ghash_6x";

/// The boot page tables identity-map this much (2 MiB pages).
pub const IDENTITY_MAPPED_END: u64 = BOOT_PD_COUNT << 30;

/// Round `x` up to a multiple of `align` (a power of two). `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Round `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

// The layout rules, checked at compile time.
const _: () = {
    assert!(BOOT_PAGE_TABLES_END <= BOOT_RAM_BASE);
    assert!(BOOT_EARLY_PAGE_END <= BOOT_RAM_BASE);
    assert!(BOOT_IDT32 + BOOT_IDT32_GATES * 8 <= BOOT_EARLY_STATE);
    assert!(SEC_MEM_START <= BOOT_PML4 && BOOT_EARLY_PAGE_END <= SEC_MEM_END);
    // The pool lies in the first 2 MiB, which PT0 maps with 4 KiB pages.
    assert!(POOL_END <= LARGE_PAGE_SIZE);
    assert!(MMIO_SHARED_START.is_multiple_of(LARGE_PAGE_SIZE));
    assert!(MMIO_SHARED_END.is_multiple_of(LARGE_PAGE_SIZE));
    assert!(MMIO_SHARED_START < MMIO_SHARED_END && MMIO_SHARED_END <= IDENTITY_MAPPED_END);
    assert!(BOOT_RAM_END <= BOOT_STACK_TOP);
    assert!(BOOT_STACK_TOP <= HANDOFF_BASE);
    assert!(HANDOFF_END <= LEGACY_HOLE_START);
    assert!(LEGACY_HOLE_END <= KERNEL_BASE);
    assert!(LEGACY_HOLE_END <= POOL_BASE && POOL_END <= KERNEL_BASE);
    assert!(POOL_BASE.is_multiple_of(PAGE_SIZE) && POOL_SIZE.is_multiple_of(PAGE_SIZE));
    assert!(pool_pages::GHCB == 0 && pool_pages::GUEST_REQUEST == 1);
    assert!(pool_pages::GUEST_RESPONSE == 2 && pool_pages::NIC == 3);
    assert!(pool_page(pool_pages::NIC) < POOL_END);
    assert!(SNP_CPUID_PAGE + PAGE_SIZE <= SEC_MEM_START);
    assert!(SNP_SECRETS_PAGE + PAGE_SIZE <= SNP_CPUID_PAGE);
    assert!(FW_TABLE_START > REAL_MODE_WINDOW);
    assert!(KERNEL_BASE.is_multiple_of(LARGE_PAGE_SIZE));
    assert!(SEC_MEM_START.is_multiple_of(PAGE_SIZE) && SEC_MEM_END.is_multiple_of(PAGE_SIZE));
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_helpers() {
        assert_eq!(align_up(0, 0x1000), Some(0));
        assert_eq!(align_up(1, 0x1000), Some(0x1000));
        assert_eq!(align_up(0x1000, 0x1000), Some(0x1000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert_eq!(align_down(0x1fff, 0x1000), 0x1000);
    }

    #[test]
    fn snp_ranges_do_not_overlap() {
        let ranges = [
            (SNP_SECRETS_PAGE, SNP_SECRETS_PAGE + PAGE_SIZE),
            (SNP_CPUID_PAGE, SNP_CPUID_PAGE + PAGE_SIZE),
            (SEC_MEM_START, SEC_MEM_END),
        ];
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
        // All in low RAM, below the legacy hole, page aligned.
        for (s, e) in ranges {
            assert!(e <= LEGACY_HOLE_START);
            assert_eq!(s % PAGE_SIZE, 0);
            assert_eq!(e % PAGE_SIZE, 0);
        }
    }

    #[test]
    fn boot_rom_holds_the_table_window_and_reset_vector() {
        const { assert!(FW_TABLE_START >= BOOT_ROM_BASE) };
        const { assert!(RESET_VECTOR > FW_TABLE_END) };
        assert_eq!(FIRMWARE_TOP - RESET_VECTOR, 16);
    }
}
