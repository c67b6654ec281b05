//! The kernel's GHCB: the first page of the shared pool, registered by boot,
//! reached only through volatile accesses, and the `PortIo` implementation
//! that turns every IN/OUT into an IOIO NAE call.
//!
//! The kernel is single-threaded and polls (no device interrupts). The only
//! ways into a GHCB call while another is in flight are a #VC raised inside
//! one (the #VC handler uses the GHCB for an intercepted RDTSC; the GHCB code
//! itself executes no RDTSC or CPUID, so only an injected #VC could do it), a
//! panic or an NMI. [`with_ghcb`] refuses such nesting: the guest terminates
//! with `GHCB_REENTERED` rather than let two calls share the page. Each call
//! builds a fresh `Ghcb` over the page (zero-sized parts): the page is cleared
//! and fully rewritten for every NAE call.
//!
//! Every VMGEXIT is counted by kind (`ghcb_page::EXITS`, on `/metrics`).

use super::{ghcb_gpa, terminate};
use crate::arch::port::PortIo;
use core::sync::atomic::{AtomicBool, Ordering};
use vellum_boot::snp::{
    ghcb::{ExitCounters, Ghcb, GhcbError, GuestRequestStatus, IoSize},
    msr_protocol::TerminateReason,
};

// The GHCB page accessor and VMGEXIT, shared with boot: one implementation.
#[path = "../../../boot/src/ghcb_page.rs"]
#[allow(
    dead_code,
    reason = "boot also uses the MSR-protocol exchange; the kernel only terminates with it"
)]
mod ghcb_page;
pub use ghcb_page::terminate as terminate_msr_protocol;
use ghcb_page::{PageMem, Vmgexit};

/// Whether a call through the GHCB is in flight.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Runs one GHCB call `f`. A call while another is in flight terminates
/// (`GHCB_REENTERED`); any GHCB error (bad status, missing valid bit, injected
/// exception) terminates (`GHCB_PROTOCOL`).
fn with_ghcb<T>(f: impl FnOnce(&mut Ghcb<PageMem, Vmgexit>) -> Result<T, GhcbError>) -> T {
    if IN_USE.swap(true, Ordering::Acquire) {
        terminate(TerminateReason::GHCB_REENTERED);
    }
    let r = Ghcb::new(PageMem, Vmgexit, ghcb_gpa()).and_then(|mut g| f(&mut g));
    IN_USE.store(false, Ordering::Release);
    r.unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL))
}

/// The kernel's VMGEXITs so far, by kind.
pub fn exits() -> &'static ExitCounters {
    &ghcb_page::EXITS
}

/// Port I/O through GHCB IOIO exits; any GHCB error terminates the guest.
#[derive(Clone, Copy, Debug)]
pub struct GhcbPorts;

impl PortIo for GhcbPorts {
    fn inb(&self, port: u16) -> u8 {
        with_ghcb(|g| g.io_in(port, IoSize::Byte)) as u8
    }
    fn inw(&self, port: u16) -> u16 {
        with_ghcb(|g| g.io_in(port, IoSize::Word)) as u16
    }
    fn inl(&self, port: u16) -> u32 {
        with_ghcb(|g| g.io_in(port, IoSize::Dword))
    }
    fn outb(&self, port: u16, value: u8) {
        with_ghcb(|g| g.io_out(port, IoSize::Byte, value.into()))
    }
    fn outw(&self, port: u16, value: u16) {
        with_ghcb(|g| g.io_out(port, IoSize::Word, value.into()))
    }
    fn outl(&self, port: u16, value: u32) {
        with_ghcb(|g| g.io_out(port, IoSize::Dword, value))
    }
}

/// The SNP guest-request NAE (SW_EXITCODE 0x8000_0011) for request and
/// response pages at `req_gpa` / `resp_gpa` (both in the shared pool). A
/// malformed GHCB reply terminates, like every other GHCB call.
pub fn guest_request(req_gpa: u64, resp_gpa: u64) -> GuestRequestStatus {
    with_ghcb(|g| g.guest_request(req_gpa, resp_gpa))
}

/// RDTSC through the GHCB (the #VC handler's answer to an intercepted RDTSC).
pub fn rdtsc() -> u64 {
    with_ghcb(|g| g.rdtsc())
}

/// RDTSCP through the GHCB: the TSC and TSC_AUX.
pub fn rdtscp() -> (u64, u32) {
    with_ghcb(|g| g.rdtscp())
}
