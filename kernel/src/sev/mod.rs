//! The kernel's AMD SEV-SNP support: the GHCB boot registered, port
//! I/O through it, the #VC handler (CPUID from the CPUID page, intercepted
//! RDTSC/RDTSCP through the GHCB), termination (reasons in
//! `docs/snp-termination.md`), the VMGEXIT and #VC counts shown on
//! `/metrics`, and wiping key material.
//!
//! Boot has already done the one-time work (reference §4): detected SNP, built
//! page tables with the C-bit on every private mapping (the shared pool and
//! MMIO without), shared and registered the GHCB at the first page of the
//! pool, checked the C-bit against the PSP-filtered CPUID page, and validated
//! all RAM from the e820 plan. The kernel never converts or validates anything
//! else: the pool `[handoff.pool)` stays the one shared range.
//!
//! The GHCB is the pool page `vellum_boot::layout::pool_pages::GHCB`; the
//! other pool pages are handed out by `crate::pool::split`.
//!
//! Every failure under SNP ends in [`terminate`] (fail closed).

mod ghcb;
pub mod vc;

use crate::arch::port;
use core::{
    ptr::write_volatile,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};
use spin::Once;
use vellum_boot::{
    abi::Handoff,
    layout::{self, PAGE_SIZE},
    snp::{cpuid::CpuidPage, msr_protocol::TerminateReason},
};

pub use ghcb::{GhcbPorts, exits, guest_request};

/// SEV_STATUS bit 2: SEV-SNP active.
const SEV_STATUS_SNP: u64 = 1 << 2;

/// Secrets page (reference §5): VMPCK0 at 0x20, VMPCK1..3 at 0x40, 0x60, 0x80,
/// 32 bytes each.
const VMPCK0_OFFSET: u64 = 0x20;
const VMPCK1_OFFSET: u64 = 0x40;
const VMPCK_END: u64 = 0xA0;

static SNP: AtomicBool = AtomicBool::new(false);
static GHCB_GPA: AtomicU64 = AtomicU64::new(0);
static BOOT_VMGEXITS: AtomicU64 = AtomicU64::new(0);
static CPUID: Once<CpuidPage> = Once::new();

/// Whether the kernel runs as an SEV-SNP guest.
pub fn is_snp() -> bool {
    SNP.load(Ordering::Relaxed)
}

/// The GHCB's GPA (0 without SNP).
pub fn ghcb_gpa() -> u64 {
    GHCB_GPA.load(Ordering::Relaxed)
}

/// VMGEXITs the boot stage made (from the hand-off; 0 without SNP).
pub fn boot_vmgexits() -> u64 {
    BOOT_VMGEXITS.load(Ordering::Relaxed)
}

/// The parsed CPUID page (SNP only).
pub fn cpuid_page() -> Option<&'static CpuidPage> {
    CPUID.get()
}

/// Sets up SNP support from the hand-off: call first in `kernel_main`, before
/// any port I/O. Without SNP it does nothing (port I/O stays direct).
///
/// Under SNP it checks the hand-off (C-bit, GHCB = first pool page), keeps a
/// parsed private copy of the CPUID page for the #VC handler, wipes VMPCK1..3
/// from the secrets page (Vellum runs at VMPL0 and only ever uses VMPCK0), and
/// routes every `PortIo` call through the GHCB.
pub fn init(handoff: &Handoff) {
    if handoff.sev_status & SEV_STATUS_SNP == 0 {
        return;
    }
    SNP.store(true, Ordering::Relaxed);
    if handoff.ghcb == 0
        || handoff.ghcb != layout::pool_page(layout::pool_pages::GHCB)
        || !handoff.ghcb.is_multiple_of(PAGE_SIZE)
    {
        terminate(TerminateReason::REGISTER);
    }
    GHCB_GPA.store(handoff.ghcb, Ordering::Relaxed);
    BOOT_VMGEXITS.store(handoff.boot_vmgexits, Ordering::Relaxed);
    let mut copy = [0u8; PAGE_SIZE as usize];
    // SAFETY: the CPUID page is an ASEV range: private, launch-validated, and
    // identity-mapped with the C-bit by boot's tables, which the kernel keeps;
    // it is copied once and only the copy is parsed.
    unsafe {
        core::ptr::copy_nonoverlapping(
            layout::SNP_CPUID_PAGE as *const u8,
            copy.as_mut_ptr(),
            copy.len(),
        )
    };
    let page = CpuidPage::parse(&copy).unwrap_or_else(|_| terminate(TerminateReason::CPUID));
    if page.c_bit().map(u64::from) != Some(handoff.c_bit) {
        terminate(TerminateReason::C_BIT_MISMATCH);
    }
    CPUID.call_once(|| page);
    wipe_vmpck(VMPCK1_OFFSET, VMPCK_END);
    port::set_ports(&GhcbPorts);
}

/// Reads VMPCK0 from the secrets page (all zero once wiped, or when the
/// launch gave none).
pub fn read_vmpck0() -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        let p = (layout::SNP_SECRETS_PAGE + VMPCK0_OFFSET + i as u64) as *const u8;
        // SAFETY: the secrets page is an ASEV range (private, launch-validated,
        // identity-mapped with the C-bit, reserved by boot); reading it has no
        // side effects.
        *b = unsafe { core::ptr::read_volatile(p) };
    }
    key
}

/// Wipes VMPCK0 from the secrets page (attestation burns its key, or has
/// taken it into its cipher).
pub fn wipe_vmpck0() {
    wipe_vmpck(VMPCK0_OFFSET, VMPCK1_OFFSET);
}

fn wipe_vmpck(from: u64, to: u64) {
    for off in (from..to).step_by(8) {
        // SAFETY: inside the SNP secrets page (an ASEV range: private,
        // launch-validated, identity-mapped with the C-bit, reserved by boot
        // and used by nothing else in the kernel); aligned; volatile so the
        // stores are not elided.
        unsafe { write_volatile((layout::SNP_SECRETS_PAGE + off) as *mut u64, 0) };
    }
}

/// Wipes key material the heap wipe does not reach: under SNP, VMPCK0..3 on
/// the secrets page (TLS keys and sessions live on the heap, which the panic
/// handler wipes next). Called by the panic handler before it prints anything.
/// VMPCK0 stays on the secrets page until the first attestation request takes
/// it into its cipher (on the heap, which the panic handler wipes next); after
/// this call no guest request can be made.
pub fn wipe_secrets() {
    if is_snp() {
        wipe_vmpck(VMPCK0_OFFSET, VMPCK_END);
    }
}

/// Asks the hypervisor to terminate the guest (GHCB MSR protocol request
/// 0x100 with `reason`, then VMGEXIT), and halts for good if it resumes us.
/// Uses no GHCB page, so it works from any context (#VC, panic).
pub fn terminate(reason: TerminateReason) -> ! {
    ghcb::terminate_msr_protocol(reason)
}

/// Panic epilogue: under SNP, terminate (the host sees the reason code);
/// without SNP return so the caller can halt as before.
pub fn terminate_if_snp(reason: TerminateReason) {
    if is_snp() {
        terminate(reason);
    }
}
