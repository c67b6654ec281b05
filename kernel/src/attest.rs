//! SNP attestation reports through the guest-request protocol (MSG_REPORT_REQ,
//! SNP firmware ABI 56860 "Guest messages"; `snp-reference.md` §5).
//!
//! The request is built and sealed in private memory with VMPCK0 (read from
//! the secrets page, which stays private), copied into the shared request page
//! of the pool, sent with the GHCB guest-request NAE, and the response page is
//! copied back into private memory before it is authenticated and decrypted.
//! Sequence numbers strictly increase and are never reused; a BUSY host gets
//! the identical message again; any other failure burns the key: VMPCK0 is
//! wiped, so no IV can ever be reused.

use crate::sev;
use alloc::{boxed::Box, vec};
use core::{
    intrinsics::volatile_copy_nonoverlapping_memory,
    ptr::{read_volatile, write_volatile},
};
use spin::Mutex;
use vellum_boot::{
    layout,
    snp::{
        ghcb::GuestRequestStatus,
        guest_msg::{self, MAX_PAYLOAD, MSG_PAGE_SIZE, MsgParams, Sequence},
    },
};
use vellum_crypto::{AttestError, snp::VmpckAead};

static SEQUENCE: Mutex<Sequence> = Mutex::new(Sequence::new());

/// How often a BUSY answer is retried (with the same message).
const BUSY_RETRIES: u32 = 100;

fn shared_page(pool_offset: u64) -> *mut u8 {
    (layout::POOL_BASE + pool_offset) as *mut u8
}

/// Reads VMPCK0 from the secrets page into a private buffer.
fn vmpck0() -> [u8; 32] {
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        let p = (layout::SNP_SECRETS_PAGE + sev::VMPCK0_OFFSET + i as u64) as *const u8;
        // SAFETY: the secrets page is launch-validated private memory at a
        // fixed, identity-mapped address (ASEV type 2); reading it has no side
        // effects.
        *b = unsafe { read_volatile(p) };
    }
    key
}

/// Burns the key after a failure other than BUSY.
fn burn(seq: &mut Sequence) -> AttestError {
    seq.burn();
    for i in 0..32u64 {
        let p = (layout::SNP_SECRETS_PAGE + sev::VMPCK0_OFFSET + i) as *mut u8;
        // SAFETY: as in `vmpck0`; zeroing VMPCK0 only disables further guest
        // requests, which is the point.
        unsafe { write_volatile(p, 0) };
    }
    log::error!("attestation: guest request failed; VMPCK0 wiped, no further reports");
    AttestError::Failed
}

/// A report whose REPORT_DATA is `report_data`.
pub fn report(report_data: &[u8; 64]) -> Result<[u8; 1184], AttestError> {
    if !sev::is_snp() {
        return Err(AttestError::NotSnp);
    }
    let mut seq = SEQUENCE.lock();
    let Ok(seqno) = seq.next_request() else {
        return Err(AttestError::Failed);
    };
    let mut key = vmpck0();
    if key.iter().all(|&b| b == 0) {
        return Err(AttestError::Failed);
    }
    let mut aead = VmpckAead::new(&key);
    key.fill(0);

    let mut request: Box<[u8; MSG_PAGE_SIZE]> = Box::new([0; MSG_PAGE_SIZE]);
    let payload = guest_msg::report_request(report_data, 0);
    if guest_msg::seal_request(&mut request, &mut aead, seqno, MsgParams::REPORT, &payload).is_err()
    {
        return Err(burn(&mut seq));
    }
    let (req, resp) = (
        shared_page(sev::GUEST_REQUEST_PAGE),
        shared_page(sev::GUEST_RESPONSE_PAGE),
    );
    // SAFETY: pool pages 1 and 2 are reserved for guest requests (the NIC
    // driver's range starts after them); they are shared, identity-mapped and
    // page-sized; the copy is volatile and reads only private memory.
    unsafe { volatile_copy_nonoverlapping_memory(req, request.as_ptr(), MSG_PAGE_SIZE) };

    let mut status = GuestRequestStatus::from_info2(0);
    for _ in 0..BUSY_RETRIES {
        status = sev::guest_request(req as u64, resp as u64);
        if status.vmm_error != GuestRequestStatus::VMM_ERR_BUSY {
            break;
        }
        for _ in 0..1_000_000 {
            core::hint::spin_loop();
        }
    }
    if status.vmm_error == GuestRequestStatus::VMM_ERR_BUSY {
        // Not sent: the same sequence number may be used again later.
        return Err(AttestError::Busy);
    }
    if !status.is_ok() {
        log::error!(
            "attestation: guest request: vmm error {}, firmware error {:#x}",
            status.vmm_error,
            status.fw_error
        );
        return Err(burn(&mut seq));
    }
    // Decrypt from a private copy: the host may change the shared page.
    let mut response: Box<[u8; MSG_PAGE_SIZE]> = Box::new([0; MSG_PAGE_SIZE]);
    // SAFETY: as above; one volatile copy of the shared response page.
    unsafe { volatile_copy_nonoverlapping_memory(response.as_mut_ptr(), resp, MSG_PAGE_SIZE) };
    let mut plain = vec![0u8; MAX_PAYLOAD];
    let n = match guest_msg::open_response(
        &response,
        &mut aead,
        seqno,
        MsgParams::REPORT,
        &mut plain,
    ) {
        Ok(n) => n,
        Err(e) => {
            log::error!("attestation: bad response: {e:?}");
            return Err(burn(&mut seq));
        }
    };
    seq.complete(seqno);
    guest_msg::parse_report_response(&plain[..n]).map_err(|e| {
        log::error!("attestation: report response: {e:?}");
        AttestError::Failed
    })
}
