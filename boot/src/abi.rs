//! What boot hands the kernel besides `BootInfo`: the [`Handoff`] block at a
//! fixed address in the hand-off area.

use crate::layout;

/// Handoff magic ("VLMHNDF1").
pub const HANDOFF_MAGIC: u64 = u64::from_le_bytes(*b"VLMHNDF1");

/// Where boot writes `BootInfo`.
pub const BOOT_INFO_ADDR: u64 = layout::HANDOFF_BASE;
/// Where boot writes the memory-region array.
pub const REGIONS_ADDR: u64 = layout::HANDOFF_BASE + 0x1000;
/// Where boot writes [`Handoff`].
pub const HANDOFF_ADDR: u64 = layout::HANDOFF_END - layout::PAGE_SIZE;

/// Facts boot measured that `BootInfo` has no field for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Handoff {
    /// [`HANDOFF_MAGIC`].
    pub magic: u64,
    /// TSC read by the first instructions after reset.
    pub tsc_at_reset: u64,
    /// TSC when boot jumped to the kernel.
    pub tsc_at_kernel: u64,
    /// SEV_STATUS MSR as boot read it (0 when not under SEV).
    pub sev_status: u64,
    /// C-bit position under SEV (0 when not under SEV).
    pub c_bit: u64,
    /// Image size in bytes (the firmware occupies `[4 GiB - size, 4 GiB)`).
    pub image_size: u64,
    /// Kernel stack `[start, end)`.
    pub kernel_stack: [u64; 2],
    /// Total RAM in the e820 map.
    pub ram_bytes: u64,
    /// The shared-page pool `[start, end)`, made shared (SNP) and zeroed by boot.
    pub pool: [u64; 2],
    /// Under SEV-SNP: the GPA of the GHCB boot registered with the hypervisor
    /// (MSR protocol 0x012), always the first page of the pool; the kernel keeps
    /// using it. 0 without SNP.
    pub ghcb: u64,
    /// Under SEV-SNP: VMGEXITs boot made (MSR protocol and GHCB NAE calls,
    /// the PSCs of memory validation among them). 0 without SNP.
    pub boot_vmgexits: u64,
}

const _: () = assert!(core::mem::size_of::<Handoff>() <= layout::PAGE_SIZE as usize);
const _: () = assert!(REGIONS_ADDR + 0x1000 <= HANDOFF_ADDR);
