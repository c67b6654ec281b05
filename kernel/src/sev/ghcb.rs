//! The kernel's GHCB: the first page of the shared pool, registered by boot,
//! reached only through volatile accesses, and the `PortIo` implementation
//! that turns every IN/OUT into an IOIO NAE call.
//!
//! The kernel is single-threaded and polls (no device interrupts); the only
//! ways into a GHCB call while another is in flight are a panic or an NMI,
//! both of which end in `terminate` after printing, so the interrupted call
//! never resumes. Each call builds a fresh `Ghcb` over the page (zero-sized
//! parts): the page is cleared and fully rewritten for every NAE call.

use super::{ghcb_gpa, terminate};
use crate::arch::port::PortIo;
use vellum_boot::snp::{
    ghcb::{Ghcb, GhcbError, IoSize},
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

fn ghcb() -> Ghcb<PageMem, Vmgexit> {
    Ghcb::new(PageMem, Vmgexit, ghcb_gpa())
        .unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL))
}

fn ok<T>(r: Result<T, GhcbError>) -> T {
    r.unwrap_or_else(|_| terminate(TerminateReason::GHCB_PROTOCOL))
}

/// Port I/O through GHCB IOIO exits; any GHCB error (bad status, missing valid
/// bit, injected exception) terminates the guest.
#[derive(Clone, Copy, Debug)]
pub struct GhcbPorts;

impl PortIo for GhcbPorts {
    fn inb(&self, port: u16) -> u8 {
        ok(ghcb().io_in(port, IoSize::Byte)) as u8
    }
    fn inw(&self, port: u16) -> u16 {
        ok(ghcb().io_in(port, IoSize::Word)) as u16
    }
    fn inl(&self, port: u16) -> u32 {
        ok(ghcb().io_in(port, IoSize::Dword))
    }
    fn outb(&self, port: u16, value: u8) {
        ok(ghcb().io_out(port, IoSize::Byte, value.into()))
    }
    fn outw(&self, port: u16, value: u16) {
        ok(ghcb().io_out(port, IoSize::Word, value.into()))
    }
    fn outl(&self, port: u16, value: u32) {
        ok(ghcb().io_out(port, IoSize::Dword, value))
    }
}

/// The SNP guest-request NAE (SW_EXITCODE 0x8000_0011) for request and
/// response pages at `req_gpa` / `resp_gpa` (both in the shared pool). A
/// malformed GHCB reply terminates, like every other GHCB call.
pub fn guest_request(req_gpa: u64, resp_gpa: u64) -> vellum_boot::snp::ghcb::GuestRequestStatus {
    ok(ghcb().guest_request(req_gpa, resp_gpa))
}
