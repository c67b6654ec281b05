//! SNP attestation reports through the guest-request protocol (MSG_REPORT_REQ,
//! SNP firmware ABI 56860 "Guest messages"; `docs/snp-reference.md` §5.2, §5.3).
//!
//! The rules live in `vellum_boot::snp::guest_msg::GuestChannel` (host-tested):
//! a sequence number is taken before a message leaves the guest and is never
//! used again; BUSY gets the identical sealed page again, within
//! [`BusyPolicy::VELLUM`] (every 100 ms for at most 3 s, by the kernel's TSC
//! clock, at most 30 resends); any failure burns the key. This module is the
//! hardware half ([`Host`]): the copies to and from the shared request and
//! response pages of the pool, the guest-request NAE, the clock, and wiping
//! VMPCK0.
//!
//! VMPCK0 is read from the secrets page once, on the first request, into the
//! channel's cipher (on the heap, which the panic handler wipes); the secrets
//! page's copy is wiped right away, so the cipher is the only copy the guest
//! keeps. Burning the key overwrites the cipher's key schedule and drops it;
//! every later request gets [`AttestError::Disabled`] (`503` on
//! `/attestation`).

use crate::{clock, pool::GuestMsgPages, sev};
use alloc::boxed::Box;
use spin::{Mutex, Once};
use vellum_boot::snp::{
    ghcb::GuestRequestStatus,
    guest_msg::{
        BusyPolicy, GuestChannel, GuestMsgError, GuestRequestHost, MSG_PAGE_SIZE, REPORT_SIZE,
    },
};
use vellum_crypto::{AttestError, snp::VmpckAead};

/// The guest-request channel under VMPCK0, made on the first request.
static CHANNEL: Mutex<Option<Box<GuestChannel<VmpckAead>>>> = Mutex::new(None);
/// The pool's guest-request and response pages (given once by [`init`]).
static PAGES: Once<Mutex<GuestMsgPages>> = Once::new();

/// Takes the pool's guest-message pages (call once, before any report).
pub fn init(pages: GuestMsgPages) {
    PAGES.call_once(|| Mutex::new(pages));
}

/// The host side of a guest request (`GuestRequestHost`'s contract), over the
/// pool's guest-message pages.
#[derive(Debug)]
struct Host<'a> {
    pages: &'a mut GuestMsgPages,
}

impl GuestRequestHost for Host<'_> {
    fn send(&mut self, request: &[u8; MSG_PAGE_SIZE]) -> GuestRequestStatus {
        // One copy out of private memory; the host may read the page at any time.
        self.pages.write_request(request);
        let (req, resp) = self.pages.gpas();
        sev::guest_request(req, resp)
    }

    fn receive(&mut self, response: &mut [u8; MSG_PAGE_SIZE]) {
        // One copy into private memory, which is all that is parsed afterwards.
        self.pages.read_response(response);
    }

    fn now_us(&mut self) -> u64 {
        clock::micros()
    }

    fn pause_us(&mut self, us: u64) {
        let end = clock::micros().saturating_add(us);
        // Bounded even if the TSC stood still (its value is the host's).
        for _ in 0..us.saturating_mul(1000) {
            if clock::micros() >= end {
                break;
            }
            core::hint::spin_loop();
        }
    }

    fn wipe_key(&mut self) {
        sev::wipe_vmpck0();
    }
}

/// Builds the channel from the secrets page's VMPCK0 and wipes that copy.
fn open_channel() -> GuestChannel<VmpckAead> {
    let mut key = sev::read_vmpck0();
    let channel = if key.iter().all(|&b| b == 0) {
        log::warn!("attestation: the secrets page has no VMPCK0; no reports");
        GuestChannel::without_key(BusyPolicy::VELLUM)
    } else {
        GuestChannel::new(VmpckAead::new(&key), BusyPolicy::VELLUM)
    };
    key.fill(0);
    core::hint::black_box(&key);
    sev::wipe_vmpck0();
    channel
}

/// A report whose REPORT_DATA is `report_data` (VMPL 0).
pub fn report(report_data: &[u8; 64]) -> Result<[u8; REPORT_SIZE], AttestError> {
    if !sev::is_snp() {
        return Err(AttestError::NotSnp);
    }
    let Some(pages) = PAGES.get() else {
        // The kernel gives the pages before it serves (a bug otherwise).
        return Err(AttestError::Failed);
    };
    let mut pages = pages.lock();
    let mut guard = CHANNEL.lock();
    let channel = guard.get_or_insert_with(|| Box::new(open_channel()));
    let mut host = Host { pages: &mut pages };
    match channel.report(&mut host, report_data, 0) {
        Ok(report) => Ok(report),
        Err(GuestMsgError::KeyBurnt) => Err(AttestError::Disabled),
        Err(e) => {
            log::error!(
                "attestation: guest request failed ({e:?}; sequence numbers up to {} used); \
                 VMPCK0 wiped, no further reports",
                channel.last_seqno()
            );
            Err(match e {
                GuestMsgError::HostBusy => AttestError::Busy,
                _ => AttestError::Failed,
            })
        }
    }
}
