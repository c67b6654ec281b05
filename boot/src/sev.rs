//! The hardware half of boot's SEV-SNP support: MSR accesses, VMGEXIT,
//! PVALIDATE, the GHCB page, and the steps that bring the GHCB up and validate
//! memory. The protocol logic is the host-tested `vellum_boot::snp` layer; this
//! module only plugs instructions into its traits.
//!
//! Boot is single-threaded and runs with interrupts disabled (and no IDT in
//! long mode: any exception is a shutdown), so the only shared state is an
//! atomic "port mode".
//!
//! Rules (reference §4, GHCB spec 56421, AMD APM):
//! * the GHCB page is the first page of the shared pool (`layout::POOL_BASE`),
//!   mapped without the C-bit by `entry.s`, never validated;
//! * it is made shared with the MSR-protocol PSC (0x014) *before* anything is
//!   written to it (conversion is destructive, reference §1.7), then zeroed and
//!   registered (0x012/0x013);
//! * every failure is a termination request (MSR 0x100) with a reason from
//!   `TerminateReason` (`docs/snp-termination.md`): fail closed.
//!
//! Before any of that, [`check_sev_features`] and [`check_vmpl0`] decide
//! whether this guest may run at all (`vellum_boot::snp::sev_status`).

use core::{
    arch::asm,
    ptr::read_volatile,
    sync::atomic::{AtomicU8, Ordering},
};
use vellum_boot::{
    layout,
    snp::{
        GpaRange, PageSize, PageState,
        ghcb::{Ghcb, GhcbError, GhcbMem, IoSize},
        msr_protocol::{self, HvFeatures, SevInfo, TerminateReason},
        psc::PscError,
        sev_status::{self, RMPADJUST_4K, RMPADJUST_VMPL1_NO_ACCESS},
        validate::Validator,
    },
};

/// SEV_STATUS bit 2: SEV-SNP active (reference §4).
pub const SEV_STATUS_SNP: u64 = sev_status::SNP_ENABLED;

pub use crate::ghcb_page::{GHCB_GPA, PageMem, Vmgexit, terminate};

/// How boot's port I/O is done.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortMode {
    /// IN/OUT instructions (no SEV).
    Direct,
    /// SNP, before the GHCB is registered: no port I/O is possible (it would
    /// raise #VC, and boot has no #VC handler in long mode).
    Unavailable,
    /// SNP with the GHCB registered: IOIO NAE calls.
    Ghcb,
}

static PORT_MODE: AtomicU8 = AtomicU8::new(0);

/// The current port mode.
pub fn port_mode() -> PortMode {
    match PORT_MODE.load(Ordering::Relaxed) {
        0 => PortMode::Direct,
        1 => PortMode::Unavailable,
        _ => PortMode::Ghcb,
    }
}

fn set_port_mode(m: PortMode) {
    let v = match m {
        PortMode::Direct => 0,
        PortMode::Unavailable => 1,
        PortMode::Ghcb => 2,
    };
    PORT_MODE.store(v, Ordering::Relaxed);
}

/// Whether boot runs as an SEV-SNP guest (set once by [`enter_snp`]).
pub fn is_snp() -> bool {
    port_mode() != PortMode::Direct
}

/// Records that boot runs under SNP: from now on port I/O needs the GHCB and
/// every failure terminates.
pub fn enter_snp() {
    set_port_mode(PortMode::Unavailable);
}

/// Terminates (set 0, code 2 "SEV-SNP features not supported", as Linux
/// `snp_check_features`) if SEV_STATUS has a feature bit Vellum does not
/// implement. Uses only the MSR protocol, so it works before the GHCB exists.
pub fn check_sev_features(sev_status: u64) {
    if sev_status::unsupported_features(sev_status) != 0 {
        terminate(TerminateReason::SNP_UNSUPPORTED);
    }
}

/// RMPADJUST (F3 0F 01 FE): RAX = page VA, RCX = page size, RDX = attributes.
/// Returns EAX.
fn rmpadjust(va: u64, size: u64, attrs: u64) -> u32 {
    let rax: u64;
    // SAFETY: RMPADJUST changes only the permissions a *less* privileged VMPL
    // has on the page at `va` (the caller passes a private, validated boot
    // page and target VMPL 1, where nothing runs); it reads and writes no
    // memory through RAX, and only EAX and rFLAGS change. CPL 0.
    unsafe {
        asm!(
            ".byte 0xF3, 0x0F, 0x01, 0xFE",
            inout("rax") va => rax,
            in("rcx") size,
            in("rdx") attrs,
            options(nostack)
        )
    };
    rax as u32
}

/// Terminates with `NOT_VMPL0` unless the guest runs at VMPL0: RMPADJUST of
/// the early page (SNP_SEC_MEM: private, validated at launch as a 4 KiB page,
/// identity-mapped with the C-bit through the boot PT0) to take VMPL1's
/// access away succeeds only at VMPL0 (`sev_status` module docs; Linux
/// `enforce_vmpl0`).
pub fn check_vmpl0() {
    let eax = rmpadjust(
        layout::BOOT_EARLY_PAGE,
        RMPADJUST_4K,
        RMPADJUST_VMPL1_NO_ACCESS,
    );
    if sev_status::check_vmpl0_probe(eax).is_err() {
        terminate(TerminateReason::NOT_VMPL0);
    }
}

/// VMGEXITs boot made so far (all kinds).
pub fn vmgexits() -> u64 {
    crate::ghcb_page::EXITS.total()
}

/// One GHCB MSR-protocol exchange: write `request`, VMGEXIT, read the response.
pub fn msr_protocol(request: u64) -> u64 {
    crate::ghcb_page::msr_protocol_exchange(request)
}

/// The registered GHCB (call only in [`PortMode::Ghcb`]).
pub fn ghcb() -> Ghcb<PageMem, Vmgexit> {
    match Ghcb::new(PageMem, Vmgexit, GHCB_GPA) {
        Ok(g) => g,
        Err(_) => terminate(TerminateReason::GHCB_PROTOCOL),
    }
}

fn check_io<T>(r: Result<T, GhcbError>) -> T {
    r.unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL))
}

/// IN through the GHCB; any GHCB error terminates.
pub fn io_in(port: u16, size: IoSize) -> u32 {
    check_io(ghcb().io_in(port, size))
}

/// OUT through the GHCB; any GHCB error terminates.
pub fn io_out(port: u16, size: IoSize, value: u32) {
    check_io(ghcb().io_out(port, size, value))
}

/// Brings up the GHCB with the MSR protocol (SEV_STATUS said SNP):
/// 1. SEV information (0x002): the hypervisor must speak protocol 2;
/// 2. hypervisor features (0x080): bit 0 (SNP) must be set;
/// 3. PSC of the GHCB page to shared (0x014);
/// 4. zero it (through its C-bit-clear mapping);
/// 5. register its GFN (0x012), which must be echoed.
///
/// Returns the hypervisor's claimed C-bit (SEV information `[31:24]`) for the
/// caller to compare. Port I/O goes through the GHCB afterwards.
pub fn setup_ghcb() -> u8 {
    let info = SevInfo::try_from(msr_protocol(msr_protocol::sev_info_request()))
        .unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL));
    if info.check_protocol().is_err() {
        terminate(TerminateReason::PROTOCOL_UNSUPPORTED);
    }
    let features = HvFeatures::try_from(msr_protocol(msr_protocol::hv_features_request()))
        .unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL));
    if features.require_snp().is_err() {
        terminate(TerminateReason::SNP_UNSUPPORTED);
    }
    let gfn = GHCB_GPA >> 12;
    let req = msr_protocol::psc_request(gfn, PageState::Shared)
        .unwrap_or_else(|_| terminate(TerminateReason::PSC));
    if msr_protocol::decode_psc_response(msr_protocol(req)).is_err() {
        terminate(TerminateReason::PSC);
    }
    PageMem.clear();
    let req = msr_protocol::register_ghcb_request(gfn)
        .unwrap_or_else(|_| terminate(TerminateReason::REGISTER));
    if msr_protocol::decode_register_ghcb_response(msr_protocol(req), gfn).is_err() {
        terminate(TerminateReason::REGISTER);
    }
    set_port_mode(PortMode::Ghcb);
    info.c_bit
}

/// Makes the rest of the pool (after the GHCB page) shared with the GHCB PSC
/// NAE. The pages were never validated (no rescind needed); QEMU starts every
/// non-launch page shared anyway, this makes it explicit.
pub fn share_pool_rest() -> Result<(), PscError> {
    let Some(rest) = GpaRange::new(GHCB_GPA + layout::PAGE_SIZE, layout::POOL_END) else {
        return Ok(());
    };
    ghcb().change_page_state(&[rest], PageState::Shared)
}

/// PVALIDATE (F2 0F 01 FF): RAX = virtual address (identity map, C-bit set),
/// ECX = 0 (4 KiB) / 1 (2 MiB), EDX = 1 validate / 0 rescind. Returns
/// `(EAX, CF)`.
fn pvalidate(va: u64, size: PageSize, validate: bool) -> (u32, bool) {
    let size = match size {
        PageSize::Size4K => 0u32,
        PageSize::Size2M => 1,
    };
    let rax: u64;
    let cf: u8;
    // SAFETY: PVALIDATE changes only the RMP "validated" bit of a page the
    // validation plan owns (RAM boot has not handed out, never the image, the
    // launch ranges or the pool); it reads no memory through RAX. The plan
    // never validates a page twice (ValidatedSet), and the caller checks the
    // result. CPL 0.
    unsafe {
        asm!(
            ".byte 0xF2, 0x0F, 0x01, 0xFF",
            "setc {cf}",
            inout("rax") va => rax,
            in("ecx") size,
            in("edx") u32::from(validate),
            cf = out(reg_byte) cf,
            options(nostack)
        )
    };
    (rax as u32, cf != 0)
}

/// The [`Validator`] over the GHCB (PSC), PVALIDATE and the identity map.
#[derive(Debug)]
pub struct BootValidator;

impl Validator for BootValidator {
    fn psc_private(&mut self, range: GpaRange) -> Result<(), PscError> {
        ghcb().change_page_state(&[range], PageState::Private)
    }

    fn pvalidate(&mut self, gpa: u64, size: PageSize, validate: bool) -> (u32, bool) {
        pvalidate(gpa, size, validate)
    }

    fn touch(&mut self, gpa: u64) {
        let first = gpa as *const u8;
        let last = (gpa + layout::PAGE_SIZE - 1) as *const u8;
        // SAFETY: the page was just validated (private, C-bit mapping, identity
        // map of RAM below 4 GiB); reading it has no effect beyond the cache.
        unsafe {
            let _ = read_volatile(first);
            let _ = read_volatile(last);
        }
    }
}
