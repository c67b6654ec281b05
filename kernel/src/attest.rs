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

use crate::{clock, sev};
use alloc::boxed::Box;
use core::intrinsics::volatile_copy_nonoverlapping_memory;
use spin::Mutex;
use vellum_boot::{
    layout,
    snp::{
        ghcb::GuestRequestStatus,
        guest_msg::{
            BusyPolicy, GuestChannel, GuestMsgError, GuestRequestHost, MSG_PAGE_SIZE, REPORT_SIZE,
        },
    },
};
use vellum_crypto::{AttestError, snp::VmpckAead};

/// The guest-request channel under VMPCK0, made on the first request.
static CHANNEL: Mutex<Option<Box<GuestChannel<VmpckAead>>>> = Mutex::new(None);

fn shared_page(pool_offset: u64) -> *mut u8 {
    (layout::POOL_BASE + pool_offset) as *mut u8
}

/// The host side of a guest request (`GuestRequestHost`'s contract).
#[derive(Debug)]
struct Host;

impl GuestRequestHost for Host {
    fn send(&mut self, request: &[u8; MSG_PAGE_SIZE]) -> GuestRequestStatus {
        let req = shared_page(sev::GUEST_REQUEST_PAGE);
        // SAFETY: pool page 1 is reserved for guest requests (the NIC driver's
        // range starts after the reserved pages); it is shared, identity-mapped
        // and page-sized; the copy is volatile (the host may read it at any
        // time) and reads only the private `request`.
        unsafe { volatile_copy_nonoverlapping_memory(req, request.as_ptr(), MSG_PAGE_SIZE) };
        sev::guest_request(req as u64, shared_page(sev::GUEST_RESPONSE_PAGE) as u64)
    }

    fn receive(&mut self, response: &mut [u8; MSG_PAGE_SIZE]) {
        let resp = shared_page(sev::GUEST_RESPONSE_PAGE);
        // SAFETY: pool page 2 is reserved for guest-request responses (as
        // above); one volatile copy into private memory, which is all that is
        // parsed afterwards.
        unsafe { volatile_copy_nonoverlapping_memory(response.as_mut_ptr(), resp, MSG_PAGE_SIZE) };
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
    let mut guard = CHANNEL.lock();
    let channel = guard.get_or_insert_with(|| Box::new(open_channel()));
    match channel.report(&mut Host, report_data, 0) {
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
