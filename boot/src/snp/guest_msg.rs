//! SNP guest messages (MSG_REPORT_REQ / MSG_REPORT_RSP): framing, sequence
//! numbers, and the one exchange loop the kernel runs ([`GuestChannel`]).
//!
//! Sources: SNP FW ABI 56860 §7 "Guest Messages" (message header, Table 100;
//! MSG_REPORT_REQ/RSP, Tables 21/24; report layout, Table 23: VMPL at 0x30,
//! REPORT_DATA at 0x50); Oak `oak_sev_guest/src/guest.rs` (header,
//! `AttestationRequest`/`AttestationResponse`) and `crypto.rs` (IV =
//! sequence number little-endian, zero-padded to 12 bytes; AAD = header bytes
//! 0x30..0x60); Linux `drivers/virt/coco/sev-guest/sev-guest.c` (now
//! `arch/x86/coco/sev/core.c`) `verify_and_dec_payload` (response seqno =
//! request seqno + 1, type = request type + 1, same version, size bound),
//! `snp_get_msg_seqno` (the secrets page stores a 32-bit counter: refuse past
//! `u32::MAX`), `__handle_guest_request` (BUSY: resend the same message every
//! `SNP_REQ_RETRY_DELAY` = 2 s, give up after `SNP_REQ_MAX_RETRY_DURATION` =
//! 60 s; "after this call the sequence number must be incremented or the
//! VMPCK must be deleted to prevent reuse of the IV") and `snp_disable_vmpck`
//! (wipe the key on any failure); reference §5.
//!
//! # Never reuse a nonce
//!
//! The sequence number is the AES-GCM IV. Sealing two different messages
//! under one sequence number with VMPCK0 would be a nonce reuse (keystream
//! and authentication key exposed), so [`GuestChannel`] follows three rules:
//!
//! 1. A sequence number is taken ([`Sequence::take`]) *before* the sealed
//!    message is handed to the host, and never given out again, whatever
//!    happens to the message. The response's number (request + 1) is skipped
//!    too.
//! 2. BUSY means "resend the **same** message": the identical sealed page,
//!    byte for byte, is copied to the shared page again (the host may have
//!    changed the shared copy). Nothing is ever re-sealed.
//! 3. Any failure once a message was handed over (BUSY for too long, a host or
//!    firmware error, a response that is malformed, does not authenticate, or
//!    carries the wrong sequence number, a report with other REPORT_DATA or
//!    VMPL) **burns** the key: the cipher's key material is overwritten, the
//!    copy of VMPCK0 on the (private) secrets page is wiped, and every later
//!    request is refused with [`GuestMsgError::KeyBurnt`]. The guest and the
//!    PSP may no longer agree on the next sequence number, and a guest that
//!    could still use the key could be made to reuse one.
//!
//! AES-256-GCM is done by the `crypto` crate behind [`Aead`], which holds
//! VMPCK0 itself, so the key never passes through this crate. The request and
//! response pages must be shared (the hypervisor copies them to the PSP):
//! the request is sealed in a private buffer and copied out, the response is
//! copied into a private buffer and only that copy is parsed (never decrypt in
//! shared memory).

use super::ghcb::GuestRequestStatus;

/// Message page size.
pub const MSG_PAGE_SIZE: usize = 4096;
/// Header size (`hdr_size`).
pub const HEADER_SIZE: usize = 0x60;
/// Largest payload.
pub const MAX_PAYLOAD: usize = MSG_PAGE_SIZE - HEADER_SIZE;
/// AES-GCM tag length used (the field has 32 bytes; 16 are used).
pub const TAG_LEN: usize = 16;
/// IV length.
pub const IV_LEN: usize = 12;

/// Header offsets (SNP FW ABI Table 100; Oak `GuestMessageHeader`).
pub mod offset {
    /// `auth_tag[32]`.
    pub const AUTH_TAG: usize = 0x00;
    /// `u64 msg_seqno`.
    pub const SEQNO: usize = 0x20;
    /// `u8 algo`.
    pub const ALGO: usize = 0x30;
    /// `u8 hdr_version`.
    pub const HDR_VERSION: usize = 0x31;
    /// `u16 hdr_size`.
    pub const HDR_SIZE: usize = 0x32;
    /// `u8 msg_type`.
    pub const MSG_TYPE: usize = 0x34;
    /// `u8 msg_version`.
    pub const MSG_VERSION: usize = 0x35;
    /// `u16 msg_size`.
    pub const MSG_SIZE: usize = 0x36;
    /// `u8 msg_vmpck`.
    pub const MSG_VMPCK: usize = 0x3C;
    /// Payload.
    pub const PAYLOAD: usize = 0x60;
    /// AAD: header bytes `[AAD_START, AAD_END)`.
    pub const AAD_START: usize = 0x30;
    /// End of the AAD.
    pub const AAD_END: usize = 0x60;
}

/// `algo` = AES-256-GCM.
pub const ALGO_AES_256_GCM: u8 = 1;
/// `hdr_version`.
pub const HDR_VERSION: u8 = 1;

/// Message types (SNP FW ABI Table 99).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum MsgType {
    /// CPUID request.
    CpuidReq = 1,
    /// CPUID response.
    CpuidRsp = 2,
    /// Key request.
    KeyReq = 3,
    /// Key response.
    KeyRsp = 4,
    /// Attestation report request.
    ReportReq = 5,
    /// Attestation report response.
    ReportRsp = 6,
}

/// Attestation report size.
pub const REPORT_SIZE: usize = 0x4A0;
/// MSG_REPORT_REQ payload size.
pub const REPORT_REQ_SIZE: usize = 96;
/// MSG_REPORT_RSP payload size (status, size, 24 reserved, report).
pub const REPORT_RSP_SIZE: usize = 0x20 + REPORT_SIZE;

/// Errors from framing, sequencing, the exchange and parsing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestMsgError {
    /// Request payload larger than [`MAX_PAYLOAD`] (nothing was sent).
    PayloadTooLarge(usize),
    /// The sequence counter would pass `u32::MAX`.
    SeqnoExhausted,
    /// An earlier failure burnt the key: no more messages.
    KeyBurnt,
    /// The host answered BUSY for longer than [`BusyPolicy`] allows.
    HostBusy,
    /// The guest-request NAE returned an error (SW_EXITINFO2).
    HostError {
        /// Hypervisor error (`[63:32]`).
        vmm_error: u32,
        /// Firmware error (`[31:0]`).
        fw_error: u32,
    },
    /// Header field `algo`, `hdr_version` or `hdr_size` wrong.
    BadHeader,
    /// Response type is not request type + 1.
    WrongType(u8),
    /// Response version differs from the request's.
    WrongVersion(u8),
    /// Response VMPCK index differs from the request's.
    WrongVmpck(u8),
    /// Response seqno is not request seqno + 1.
    WrongSeqno {
        /// Expected.
        expected: u64,
        /// Found.
        got: u64,
    },
    /// Response `msg_size` larger than the page or the output buffer.
    ResponseTooLarge(usize),
    /// Authentication failed.
    AuthFailed,
    /// MSG_REPORT_RSP status non-zero (0x16 = invalid parameters).
    ReportStatus(u32),
    /// MSG_REPORT_RSP report_size is not 0x4A0, or the payload is too short.
    BadReportSize(u32),
    /// The report's REPORT_DATA is not what was asked for.
    ReportDataMismatch,
    /// The report's VMPL is not what was asked for.
    VmplMismatch {
        /// Asked for.
        expected: u32,
        /// In the report.
        got: u32,
    },
}

/// AES-256-GCM with VMPCK0, implemented by the `crypto` crate.
///
/// # Implementation contract
///
/// `seal` encrypts `data` in place and returns the 16-byte tag; `open`
/// verifies `tag` and decrypts in place, and on failure should leave no
/// plaintext in `data` (zero it; [`open_response`] zeroes it again in any
/// case). Both use `iv` and `aad` exactly as given. `wipe` overwrites the key
/// material the cipher holds (its key schedule) with that of a fixed,
/// non-secret key: after it, the cipher must not hold anything derived from
/// VMPCK0.
pub trait Aead {
    /// Encrypts in place; returns the tag.
    fn seal(&mut self, iv: &[u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN];
    /// Authenticates and decrypts in place.
    fn open(
        &mut self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), GuestMsgError>;
    /// Overwrites the key material (burning the key).
    fn wipe(&mut self);
}

/// IV for `seqno`: its 8 little-endian bytes, then 4 zero bytes.
pub fn iv(seqno: u64) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[..8].copy_from_slice(&seqno.to_le_bytes());
    iv
}

/// Message sequence numbers for one VMPCK (the first request is 1, its
/// response 2, the next request 3, ...).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sequence {
    last: u64,
}

impl Sequence {
    /// Fresh state (nothing sent).
    pub const fn new() -> Self {
        Sequence { last: 0 }
    }

    /// Takes the next request's sequence number (last + 1) and, at once,
    /// moves past it and its response's (last + 2): once taken, a number is
    /// never given out again, whatever happens to the message. Both must fit
    /// the 32-bit counter of the secrets page (Linux `snp_get_msg_seqno`).
    pub fn take(&mut self) -> Result<u64, GuestMsgError> {
        match self.last.checked_add(2) {
            Some(resp) if resp <= u64::from(u32::MAX) => {
                self.last = resp;
                Ok(resp - 1)
            }
            _ => Err(GuestMsgError::SeqnoExhausted),
        }
    }

    /// The highest number used so far (0 before the first request).
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// Request header parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MsgParams {
    /// Message type.
    pub msg_type: MsgType,
    /// Message version (1).
    pub msg_version: u8,
    /// VMPCK index (0).
    pub vmpck: u8,
}

impl MsgParams {
    /// MSG_REPORT_REQ v1 with VMPCK0.
    pub const REPORT: Self = MsgParams {
        msg_type: MsgType::ReportReq,
        msg_version: 1,
        vmpck: 0,
    };
}

/// Builds an encrypted request in `page` (a private buffer; copy it to the
/// shared request page afterwards).
pub fn seal_request<A: Aead>(
    page: &mut [u8; MSG_PAGE_SIZE],
    aead: &mut A,
    seqno: u64,
    params: MsgParams,
    payload: &[u8],
) -> Result<(), GuestMsgError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(GuestMsgError::PayloadTooLarge(payload.len()));
    }
    page.fill(0);
    page[offset::SEQNO..offset::SEQNO + 8].copy_from_slice(&seqno.to_le_bytes());
    page[offset::ALGO] = ALGO_AES_256_GCM;
    page[offset::HDR_VERSION] = HDR_VERSION;
    page[offset::HDR_SIZE..offset::HDR_SIZE + 2]
        .copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
    page[offset::MSG_TYPE] = params.msg_type as u8;
    page[offset::MSG_VERSION] = params.msg_version;
    page[offset::MSG_SIZE..offset::MSG_SIZE + 2]
        .copy_from_slice(&(payload.len() as u16).to_le_bytes());
    page[offset::MSG_VMPCK] = params.vmpck;
    let (head, body) = page.split_at_mut(offset::PAYLOAD);
    let data = &mut body[..payload.len()];
    data.copy_from_slice(payload);
    let tag = aead.seal(&iv(seqno), &head[offset::AAD_START..offset::AAD_END], data);
    head[offset::AUTH_TAG..offset::AUTH_TAG + TAG_LEN].copy_from_slice(&tag);
    Ok(())
}

/// Checks and decrypts a response (`page` is a private copy of the shared
/// response page) for the request sent with `req_seqno` and `params`;
/// writes the plaintext into `out` and returns its length. On an
/// authentication failure `out[..msg_size]` is zeroed.
pub fn open_response<A: Aead>(
    page: &[u8; MSG_PAGE_SIZE],
    aead: &mut A,
    req_seqno: u64,
    params: MsgParams,
    out: &mut [u8],
) -> Result<usize, GuestMsgError> {
    let u16_at = |at: usize| u16::from_le_bytes([page[at], page[at + 1]]);
    if page[offset::ALGO] != ALGO_AES_256_GCM
        || page[offset::HDR_VERSION] != HDR_VERSION
        || usize::from(u16_at(offset::HDR_SIZE)) != HEADER_SIZE
    {
        return Err(GuestMsgError::BadHeader);
    }
    let ty = page[offset::MSG_TYPE];
    if ty != params.msg_type as u8 + 1 {
        return Err(GuestMsgError::WrongType(ty));
    }
    if page[offset::MSG_VERSION] != params.msg_version {
        return Err(GuestMsgError::WrongVersion(page[offset::MSG_VERSION]));
    }
    if page[offset::MSG_VMPCK] != params.vmpck {
        return Err(GuestMsgError::WrongVmpck(page[offset::MSG_VMPCK]));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&page[offset::SEQNO..offset::SEQNO + 8]);
    let got = u64::from_le_bytes(s);
    let expected = req_seqno.wrapping_add(1);
    if got != expected {
        return Err(GuestMsgError::WrongSeqno { expected, got });
    }
    let size = usize::from(u16_at(offset::MSG_SIZE));
    if size > MAX_PAYLOAD || size > out.len() {
        return Err(GuestMsgError::ResponseTooLarge(size));
    }
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&page[offset::AUTH_TAG..offset::AUTH_TAG + TAG_LEN]);
    let data = &mut out[..size];
    data.copy_from_slice(&page[offset::PAYLOAD..offset::PAYLOAD + size]);
    let opened = aead.open(
        &iv(got),
        &page[offset::AAD_START..offset::AAD_END],
        data,
        &tag,
    );
    if opened.is_err() {
        // Whatever the cipher left there: no unauthenticated bytes survive.
        data.fill(0);
        return Err(GuestMsgError::AuthFailed);
    }
    Ok(size)
}

/// MSG_REPORT_REQ payload: `report_data[64] | u32 vmpl | rsvd[28]`.
pub fn report_request(report_data: &[u8; 64], vmpl: u32) -> [u8; REPORT_REQ_SIZE] {
    let mut p = [0u8; REPORT_REQ_SIZE];
    p[..64].copy_from_slice(report_data);
    p[64..68].copy_from_slice(&vmpl.to_le_bytes());
    p
}

/// Parses MSG_REPORT_RSP: `u32 status | u32 report_size | rsvd[24] |
/// report[1184]`; status must be 0 and report_size 0x4A0.
pub fn parse_report_response(payload: &[u8]) -> Result<[u8; REPORT_SIZE], GuestMsgError> {
    if payload.len() < 8 {
        return Err(GuestMsgError::BadReportSize(0));
    }
    let status = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    if status != 0 {
        return Err(GuestMsgError::ReportStatus(status));
    }
    let size = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
    if size as usize != REPORT_SIZE || payload.len() < REPORT_RSP_SIZE {
        return Err(GuestMsgError::BadReportSize(size));
    }
    let mut report = [0u8; REPORT_SIZE];
    report.copy_from_slice(&payload[0x20..0x20 + REPORT_SIZE]);
    Ok(report)
}

/// Report offsets (SNP FW ABI Table 23 `ATTESTATION_REPORT`).
pub mod report_offset {
    /// `u32 vmpl`.
    pub const VMPL: usize = 0x30;
    /// `report_data[64]`.
    pub const REPORT_DATA: usize = 0x50;
}

/// Checks that `report` is the one asked for: REPORT_DATA and VMPL as
/// requested (a report for someone else's data, or for another VMPL, must
/// never be passed on as ours).
pub fn check_report(
    report: &[u8; REPORT_SIZE],
    report_data: &[u8; 64],
    vmpl: u32,
) -> Result<(), GuestMsgError> {
    let rd = report_offset::REPORT_DATA;
    if report[rd..rd + 64] != report_data[..] {
        return Err(GuestMsgError::ReportDataMismatch);
    }
    let v = report_offset::VMPL;
    let got = u32::from_le_bytes([report[v], report[v + 1], report[v + 2], report[v + 3]]);
    if got != vmpl {
        return Err(GuestMsgError::VmplMismatch {
            expected: vmpl,
            got,
        });
    }
    Ok(())
}

/// How long a BUSY host gets. Every resend is the same sealed message; when
/// the budget is spent the key is burnt ([`GuestMsgError::HostBusy`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BusyPolicy {
    /// Wait between two sends (µs).
    pub delay_us: u64,
    /// Give up once this long has passed since the first send (µs).
    pub max_us: u64,
    /// Give up after this many resends whatever the clock says (a clock that
    /// does not advance cannot keep the guest here).
    pub max_resends: u32,
}

impl BusyPolicy {
    /// Linux's: every 2 s, for up to 60 s (`SNP_REQ_RETRY_DELAY`,
    /// `SNP_REQ_MAX_RETRY_DURATION`).
    pub const LINUX: Self = BusyPolicy {
        delay_us: 2_000_000,
        max_us: 60_000_000,
        max_resends: 30,
    };

    /// Vellum's kernel: every 100 ms, for up to 3 s, at most 30 resends. The
    /// request is answered inside the single-threaded poll loop, so every
    /// moment spent waiting stalls all connections; 3 s keeps that bounded
    /// while still riding out a host that throttles guest requests for a few
    /// seconds (reference §5: about 10 reports per 10 s measured on one host).
    pub const VELLUM: Self = BusyPolicy {
        delay_us: 100_000,
        max_us: 3_000_000,
        max_resends: 30,
    };
}

/// The hypervisor side of a guest request, as the kernel provides it.
///
/// # Implementation contract
///
/// * `send` copies all of `request` (a private, sealed page) into the shared
///   request page, every time it is called, then issues the guest-request NAE
///   with the shared request and response pages and returns its status. A
///   malformed GHCB reply is the implementation's to handle (the kernel
///   terminates, like for every GHCB call).
/// * `receive` copies the shared response page into `response` (private).
/// * `now_us` is a monotonic clock in microseconds; `pause_us` waits about
///   that long.
/// * `wipe_key` erases every copy of VMPCK0 the guest keeps outside the
///   channel's cipher (the secrets page).
pub trait GuestRequestHost {
    /// Copies the sealed `request` to the shared page and sends it.
    fn send(&mut self, request: &[u8; MSG_PAGE_SIZE]) -> GuestRequestStatus;
    /// Copies the shared response page into `response`.
    fn receive(&mut self, response: &mut [u8; MSG_PAGE_SIZE]);
    /// Monotonic microseconds.
    fn now_us(&mut self) -> u64;
    /// Waits `us` microseconds.
    fn pause_us(&mut self, us: u64);
    /// Wipes VMPCK0 wherever else the guest keeps it.
    fn wipe_key(&mut self);
}

/// Guest requests under one VMPCK: the cipher, the sequence numbers and the
/// BUSY policy. Once burnt, always burnt (module docs).
#[derive(Debug)]
pub struct GuestChannel<A> {
    aead: Option<A>,
    seq: Sequence,
    policy: BusyPolicy,
}

impl<A: Aead> GuestChannel<A> {
    /// A channel sealing with `aead` (keyed with the VMPCK).
    pub const fn new(aead: A, policy: BusyPolicy) -> Self {
        GuestChannel {
            aead: Some(aead),
            seq: Sequence::new(),
            policy,
        }
    }

    /// A channel without a key (for instance an all-zero VMPCK0: the PSP
    /// gave none, or it was wiped): every request is refused.
    pub const fn without_key(policy: BusyPolicy) -> Self {
        GuestChannel {
            aead: None,
            seq: Sequence::new(),
            policy,
        }
    }

    /// Whether the key is burnt (or was never there).
    pub fn is_burnt(&self) -> bool {
        self.aead.is_none()
    }

    /// The highest sequence number used so far.
    pub fn last_seqno(&self) -> u64 {
        self.seq.last()
    }

    /// Burns the key: overwrites the cipher's key material, drops it, and
    /// has `host` wipe every other copy. Idempotent.
    pub fn burn<H: GuestRequestHost>(&mut self, host: &mut H) {
        if let Some(mut aead) = self.aead.take() {
            aead.wipe();
        }
        host.wipe_key();
    }

    /// One request/response exchange: seals `payload` under a fresh sequence
    /// number, sends it (resending the identical page while the host answers
    /// BUSY, within the policy), and opens the response into `out`, returning
    /// the plaintext length. Any failure after the sequence number was taken
    /// burns the key.
    pub fn exchange<H: GuestRequestHost>(
        &mut self,
        host: &mut H,
        params: MsgParams,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, GuestMsgError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(GuestMsgError::PayloadTooLarge(payload.len()));
        }
        if self.aead.is_none() {
            return Err(GuestMsgError::KeyBurnt);
        }
        let r = self.exchange_once(host, params, payload, out);
        if r.is_err() {
            self.burn(host);
        }
        r
    }

    fn exchange_once<H: GuestRequestHost>(
        &mut self,
        host: &mut H,
        params: MsgParams,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<usize, GuestMsgError> {
        let Some(aead) = self.aead.as_mut() else {
            return Err(GuestMsgError::KeyBurnt);
        };
        // Rule 1: taken before anything leaves the guest, never reused.
        let seqno = self.seq.take()?;
        let mut request = [0u8; MSG_PAGE_SIZE];
        seal_request(&mut request, aead, seqno, params, payload)?;
        // Rule 2: BUSY gets the identical page again, nothing is re-sealed.
        let start = host.now_us();
        let mut resends = 0;
        let status = loop {
            let status = host.send(&request);
            if !status.is_busy() {
                break status;
            }
            let waited = host.now_us().saturating_sub(start);
            if resends >= self.policy.max_resends || waited >= self.policy.max_us {
                return Err(GuestMsgError::HostBusy);
            }
            host.pause_us(self.policy.delay_us);
            resends += 1;
        };
        if !status.is_ok() {
            return Err(GuestMsgError::HostError {
                vmm_error: status.vmm_error,
                fw_error: status.fw_error,
            });
        }
        let mut response = [0u8; MSG_PAGE_SIZE];
        host.receive(&mut response);
        open_response(&response, aead, seqno, params, out)
    }

    /// An attestation report for `report_data` at `vmpl`: the exchange, then
    /// the MSG_REPORT_RSP status and size, then REPORT_DATA and VMPL
    /// ([`check_report`]). Any failure burns the key.
    pub fn report<H: GuestRequestHost>(
        &mut self,
        host: &mut H,
        report_data: &[u8; 64],
        vmpl: u32,
    ) -> Result<[u8; REPORT_SIZE], GuestMsgError> {
        let payload = report_request(report_data, vmpl);
        let mut plain = [0u8; REPORT_RSP_SIZE];
        let n = self.exchange(host, MsgParams::REPORT, &payload, &mut plain)?;
        let r = parse_report_response(&plain[..n])
            .and_then(|report| check_report(&report, report_data, vmpl).map(|()| report));
        plain.fill(0);
        if r.is_err() {
            self.burn(host);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        cell::{Cell, RefCell},
        collections::BTreeSet,
        rc::Rc,
    };

    // ------------------------------------------------------------------
    // Ciphers.

    /// The kernel's AES-256-GCM: `vellum_crypto::snp::VmpckAead` (a
    /// dev-dependency). These unit tests are built from a second copy of this
    /// crate, whose `Aead` trait is not the one `vellum_crypto` implements, so
    /// the cipher is reached through its inherent methods.
    struct Real(vellum_crypto::snp::VmpckAead);

    impl Real {
        fn new(key: &[u8; 32]) -> Self {
            Real(vellum_crypto::snp::VmpckAead::new(key))
        }
    }

    impl Aead for Real {
        fn seal(&mut self, iv: &[u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
            self.0.seal_in_place(iv, aad, data)
        }
        fn open(
            &mut self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            data: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), GuestMsgError> {
            if self.0.open_in_place(iv, aad, data, tag) {
                Ok(())
            } else {
                Err(GuestMsgError::AuthFailed)
            }
        }
        fn wipe(&mut self) {
            self.0.wipe();
        }
    }

    /// A toy AEAD (XOR keystream, mixing tag) that records IV and AAD, and
    /// breaks the `open` contract on purpose: it decrypts first and leaves
    /// the plaintext behind when the tag is wrong. For header tests, and to
    /// show that `open_response` itself leaves no plaintext.
    struct Careless {
        key: u64,
        seen: Vec<([u8; IV_LEN], Vec<u8>)>,
    }

    fn mix(mut h: u64, bytes: &[u8]) -> u64 {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        h
    }

    impl Careless {
        fn new() -> Self {
            Careless {
                key: 0xC0FFEE,
                seen: vec![],
            }
        }
        fn stream(&self, iv: &[u8; IV_LEN], data: &mut [u8]) {
            let mut s = mix(self.key, iv);
            for b in data {
                s = mix(s, &[0x5A]);
                *b ^= s as u8;
            }
        }
        fn tag(&self, iv: &[u8; IV_LEN], aad: &[u8], ct: &[u8]) -> [u8; TAG_LEN] {
            let a = mix(mix(mix(self.key, iv), aad), ct);
            let b = mix(a, b"second half");
            let mut t = [0u8; TAG_LEN];
            t[..8].copy_from_slice(&a.to_le_bytes());
            t[8..].copy_from_slice(&b.to_le_bytes());
            t
        }
    }

    impl Aead for Careless {
        fn seal(&mut self, iv: &[u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
            self.seen.push((*iv, aad.to_vec()));
            self.stream(iv, data);
            self.tag(iv, aad, data)
        }
        fn open(
            &mut self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            data: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), GuestMsgError> {
            let good = self.tag(iv, aad, data) == *tag;
            self.stream(iv, data); // plaintext in place, verified or not
            if good {
                Ok(())
            } else {
                Err(GuestMsgError::AuthFailed)
            }
        }
        fn wipe(&mut self) {
            self.key = 0;
        }
    }

    /// Every `(seqno, plaintext)` the guest sealed, in order.
    type SealLog = Rc<RefCell<Vec<(u64, Vec<u8>)>>>;

    /// The real cipher, recording every seal and whether it was wiped.
    struct Recording {
        inner: Real,
        sealed: SealLog,
        wiped: Rc<Cell<bool>>,
    }

    impl Aead for Recording {
        fn seal(&mut self, iv: &[u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
            let mut s = [0u8; 8];
            s.copy_from_slice(&iv[..8]);
            self.sealed
                .borrow_mut()
                .push((u64::from_le_bytes(s), data.to_vec()));
            self.inner.seal(iv, aad, data)
        }
        fn open(
            &mut self,
            iv: &[u8; IV_LEN],
            aad: &[u8],
            data: &mut [u8],
            tag: &[u8; TAG_LEN],
        ) -> Result<(), GuestMsgError> {
            self.inner.open(iv, aad, data, tag)
        }
        fn wipe(&mut self) {
            self.inner.wipe();
            self.wiped.set(true);
        }
    }

    const KEY: [u8; 32] = [0x42; 32];

    // ------------------------------------------------------------------
    // A fake host with a PSP behind it.

    /// How the host (or the firmware behind it) misbehaves.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Lie {
        None,
        /// BUSY on every send.
        BusyForever,
        /// BUSY this many times (scribbling over the shared request page each
        /// time), then answer.
        Busy(u32),
        /// Answer every request after the first with the first's response.
        Replay,
        /// Flip one ciphertext byte of the response.
        Alter,
        /// A valid response whose report has other REPORT_DATA.
        OtherReportData,
        /// A valid response whose report says VMPL 1.
        OtherVmpl,
        /// SW_EXITINFO2 of the guest-request NAE (VMM << 32 | firmware).
        Error(u64),
        /// A valid MSG_REPORT_RSP with this status.
        ReportStatus(u32),
    }

    struct FakePsp {
        psp: Real,
        lie: Lie,
        /// The PSP's next expected request sequence number.
        psp_next: u64,
        shared_request: [u8; MSG_PAGE_SIZE],
        shared_response: [u8; MSG_PAGE_SIZE],
        first_response: Option<[u8; MSG_PAGE_SIZE]>,
        /// Every page the guest sent, byte for byte.
        sends: Vec<Vec<u8>>,
        /// Every `(seqno, plaintext)` the PSP decrypted and answered.
        processed: Vec<(u64, Vec<u8>)>,
        busy_answers: u32,
        now: u64,
        paused: u64,
        wipes: u32,
    }

    impl FakePsp {
        fn new(lie: Lie) -> Self {
            FakePsp {
                psp: Real::new(&KEY),
                lie,
                psp_next: 1,
                shared_request: [0; MSG_PAGE_SIZE],
                shared_response: [0; MSG_PAGE_SIZE],
                first_response: None,
                sends: vec![],
                processed: vec![],
                busy_answers: 0,
                now: 1_000,
                paused: 0,
                wipes: 0,
            }
        }

        /// The PSP's side: authenticate and decrypt the shared request page.
        fn open_request(&mut self) -> Option<(u64, Vec<u8>)> {
            let p = &self.shared_request;
            let seqno = u64::from_le_bytes(p[0x20..0x28].try_into().unwrap());
            let size = usize::from(u16::from_le_bytes([p[0x36], p[0x37]]));
            let tag: [u8; TAG_LEN] = p[..TAG_LEN].try_into().unwrap();
            let mut data = p[0x60..0x60 + size].to_vec();
            self.psp
                .open(&iv(seqno), &p[0x30..0x60], &mut data, &tag)
                .ok()?;
            Some((seqno, data))
        }

        fn answer(&mut self) -> GuestRequestStatus {
            let Some((seqno, plain)) = self.open_request() else {
                return GuestRequestStatus::from_info2(0x27); // firmware refuses
            };
            if seqno != self.psp_next || plain.len() != REPORT_REQ_SIZE {
                return GuestRequestStatus::from_info2(0x27);
            }
            self.psp_next = seqno + 2;
            self.processed.push((seqno, plain.clone()));
            let mut rsp = vec![0u8; REPORT_RSP_SIZE];
            if let Lie::ReportStatus(st) = self.lie {
                rsp[..4].copy_from_slice(&st.to_le_bytes());
            }
            rsp[4..8].copy_from_slice(&(REPORT_SIZE as u32).to_le_bytes());
            let report = &mut rsp[0x20..];
            report[0] = 2; // version
            report[0x30..0x34].copy_from_slice(&plain[64..68]); // VMPL asked for
            report[0x50..0x90].copy_from_slice(&plain[..64]); // REPORT_DATA
            match self.lie {
                Lie::OtherReportData => report[0x50] ^= 0xFF,
                Lie::OtherVmpl => report[0x30] = 1,
                _ => {}
            }
            let params = MsgParams {
                msg_type: MsgType::ReportRsp,
                msg_version: 1,
                vmpck: 0,
            };
            let mut page = [0u8; MSG_PAGE_SIZE];
            seal_request(&mut page, &mut self.psp, seqno + 1, params, &rsp).unwrap();
            self.shared_response = page;
            match (self.lie, self.first_response) {
                (Lie::Replay, Some(first)) => self.shared_response = first,
                (Lie::Alter, _) => self.shared_response[0x60 + 0x70] ^= 1,
                _ => {}
            }
            self.first_response.get_or_insert(page);
            GuestRequestStatus::from_info2(0)
        }
    }

    impl GuestRequestHost for FakePsp {
        fn send(&mut self, request: &[u8; MSG_PAGE_SIZE]) -> GuestRequestStatus {
            self.shared_request = *request;
            self.sends.push(request.to_vec());
            self.now += 10;
            let busy = GuestRequestStatus::from_info2(2 << 32);
            match self.lie {
                Lie::BusyForever => return busy,
                Lie::Busy(n) if self.busy_answers < n => {
                    self.busy_answers += 1;
                    // The host may scribble over the shared page meanwhile.
                    self.shared_request[0x60..0x70].fill(0xEE);
                    return busy;
                }
                Lie::Error(info2) => return GuestRequestStatus::from_info2(info2),
                _ => {}
            }
            self.answer()
        }
        fn receive(&mut self, response: &mut [u8; MSG_PAGE_SIZE]) {
            *response = self.shared_response;
        }
        fn now_us(&mut self) -> u64 {
            self.now
        }
        fn pause_us(&mut self, us: u64) {
            self.now += us;
            self.paused += us;
        }
        fn wipe_key(&mut self) {
            self.wipes += 1;
        }
    }

    struct Setup {
        ch: GuestChannel<Recording>,
        host: FakePsp,
        sealed: SealLog,
        wiped: Rc<Cell<bool>>,
    }

    fn setup(lie: Lie, policy: BusyPolicy) -> Setup {
        let sealed = SealLog::default();
        let wiped = Rc::new(Cell::new(false));
        let aead = Recording {
            inner: Real::new(&KEY),
            sealed: sealed.clone(),
            wiped: wiped.clone(),
        };
        Setup {
            ch: GuestChannel::new(aead, policy),
            host: FakePsp::new(lie),
            sealed,
            wiped,
        }
    }

    fn rd(i: u8) -> [u8; 64] {
        [i; 64]
    }

    impl Setup {
        fn report(&mut self, i: u8) -> Result<[u8; REPORT_SIZE], GuestMsgError> {
            self.ch.report(&mut self.host, &rd(i), 0)
        }

        /// No sequence number was ever sealed twice, and every one is a
        /// request number (odd), in increasing order.
        fn assert_no_nonce_reuse(&self) {
            let sealed = self.sealed.borrow();
            let mut seen = BTreeSet::new();
            let mut last = 0;
            for (seqno, _) in sealed.iter() {
                assert!(
                    seen.insert(*seqno),
                    "seqno {seqno} sealed twice: {sealed:?}"
                );
                assert_eq!(seqno % 2, 1, "{seqno}");
                assert!(*seqno > last);
                last = *seqno;
            }
        }

        /// The key is burnt: cipher wiped, the secrets-page copy wiped, every later
        /// request refused before anything is sealed or sent.
        fn assert_burnt(&mut self) {
            assert!(self.ch.is_burnt());
            assert!(self.wiped.get(), "cipher key material overwritten");
            assert!(self.host.wipes >= 1, "secrets-page copy wiped");
            let (sealed, sent) = (self.sealed.borrow().len(), self.host.sends.len());
            for i in 0..3 {
                assert_eq!(self.report(100 + i), Err(GuestMsgError::KeyBurnt));
            }
            assert_eq!(
                self.sealed.borrow().len(),
                sealed,
                "nothing sealed after burning"
            );
            assert_eq!(self.host.sends.len(), sent, "nothing sent after burning");
            self.assert_no_nonce_reuse();
        }
    }

    // ------------------------------------------------------------------
    // Framing.

    /// What the PSP would send back: a response sealed with seqno req+1.
    fn psp_response(req_seqno: u64, payload: &[u8]) -> [u8; MSG_PAGE_SIZE] {
        let mut page = [0u8; MSG_PAGE_SIZE];
        let params = MsgParams {
            msg_type: MsgType::ReportRsp,
            msg_version: 1,
            vmpck: 0,
        };
        seal_request(
            &mut page,
            &mut Real::new(&KEY),
            req_seqno + 1,
            params,
            payload,
        )
        .unwrap();
        page
    }

    fn report_rsp_payload() -> Vec<u8> {
        let mut p = vec![0u8; REPORT_RSP_SIZE];
        p[4..8].copy_from_slice(&(REPORT_SIZE as u32).to_le_bytes());
        for (i, b) in p[0x20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn layout_constants() {
        assert_eq!(HEADER_SIZE, 0x60);
        assert_eq!(MAX_PAYLOAD, 4000);
        assert_eq!(REPORT_SIZE, 1184);
        assert_eq!(REPORT_RSP_SIZE, 1216);
        assert_eq!(offset::AAD_END - offset::AAD_START, 48);
        assert_eq!(MsgType::ReportReq as u8, 5);
        assert_eq!(MsgType::ReportRsp as u8, 6);
        assert_eq!(MsgType::KeyReq as u8, 3);
        assert_eq!(MsgType::KeyRsp as u8, 4);
        assert_eq!(MsgType::CpuidReq as u8, 1);
        assert_eq!(MsgType::CpuidRsp as u8, 2);
        assert_eq!(report_offset::VMPL, 0x30);
        assert_eq!(report_offset::REPORT_DATA, 0x50);
    }

    #[test]
    fn iv_is_seqno_le_then_zeros() {
        assert_eq!(iv(1), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            iv(0x0102_0304_0506_0708),
            [8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn request_header_bytes() {
        let mut page = [0xFFu8; MSG_PAGE_SIZE];
        let mut a = Careless::new();
        let payload = report_request(&[0xAB; 64], 0);
        seal_request(&mut page, &mut a, 1, MsgParams::REPORT, &payload).unwrap();
        assert_eq!(&page[0x20..0x28], &1u64.to_le_bytes());
        assert_eq!(&page[0x28..0x30], &[0; 8]);
        assert_eq!(page[0x30], 1); // algo
        assert_eq!(page[0x31], 1); // hdr_version
        assert_eq!(&page[0x32..0x34], &[0x60, 0x00]);
        assert_eq!(page[0x34], 5);
        assert_eq!(page[0x35], 1);
        assert_eq!(&page[0x36..0x38], &[96, 0]);
        assert_eq!(page[0x3C], 0);
        assert!(page[0x3D..0x60].iter().all(|&b| b == 0));
        assert!(page[0x10..0x20].iter().all(|&b| b == 0), "unused tag half");
        assert!(page[0x60 + 96..].iter().all(|&b| b == 0));
        // The AEAD saw IV(1) and AAD = bytes 0x30..0x60.
        assert_eq!(a.seen[0].0, iv(1));
        assert_eq!(a.seen[0].1, page[0x30..0x60].to_vec());
        // Payload is encrypted (not the plaintext).
        assert_ne!(&page[0x60..0x60 + 64], &[0xAB; 64][..]);
        // Too large.
        let big = [0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            seal_request(&mut page, &mut a, 1, MsgParams::REPORT, &big),
            Err(GuestMsgError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn report_payloads() {
        let p = report_request(&[7; 64], 2);
        assert_eq!(&p[..64], &[7; 64]);
        assert_eq!(&p[64..68], &[2, 0, 0, 0]);
        assert!(p[68..].iter().all(|&b| b == 0));
        let rsp = report_rsp_payload();
        let report = parse_report_response(&rsp).unwrap();
        assert_eq!(report[0], 0);
        assert_eq!(report[1183], (1183 % 256) as u8);
        let mut bad = rsp.clone();
        bad[0] = 0x16;
        assert_eq!(
            parse_report_response(&bad),
            Err(GuestMsgError::ReportStatus(0x16))
        );
        let mut bad = rsp.clone();
        bad[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            parse_report_response(&bad),
            Err(GuestMsgError::BadReportSize(1000))
        );
        assert_eq!(
            parse_report_response(&rsp[..REPORT_RSP_SIZE - 1]),
            Err(GuestMsgError::BadReportSize(REPORT_SIZE as u32))
        );
        assert_eq!(
            parse_report_response(&rsp[..4]),
            Err(GuestMsgError::BadReportSize(0))
        );
        // REPORT_DATA and VMPL must be the ones asked for.
        let mut r = [0u8; REPORT_SIZE];
        r[0x50..0x90].copy_from_slice(&[9; 64]);
        r[0x30] = 0;
        assert_eq!(check_report(&r, &[9; 64], 0), Ok(()));
        assert_eq!(
            check_report(&r, &[8; 64], 0),
            Err(GuestMsgError::ReportDataMismatch)
        );
        assert_eq!(
            check_report(&r, &[9; 64], 1),
            Err(GuestMsgError::VmplMismatch {
                expected: 1,
                got: 0
            })
        );
        r[0x8F] ^= 1;
        assert_eq!(
            check_report(&r, &[9; 64], 0),
            Err(GuestMsgError::ReportDataMismatch)
        );
    }

    #[test]
    fn round_trip_and_response_checks() {
        let rsp = report_rsp_payload();
        let mut out = [0u8; MAX_PAYLOAD];
        let page = psp_response(1, &rsp);
        let mut key = Real::new(&KEY);
        let n = open_response(&page, &mut key, 1, MsgParams::REPORT, &mut out).unwrap();
        assert_eq!(&out[..n], &rsp[..]);
        // Wrong seqno (replayed response for request 3).
        assert_eq!(
            open_response(&page, &mut key, 3, MsgParams::REPORT, &mut out),
            Err(GuestMsgError::WrongSeqno {
                expected: 4,
                got: 2
            })
        );
        let tweak = |at: usize, v: u8| {
            let mut p = page;
            p[at] = v;
            open_response(
                &p,
                &mut Real::new(&KEY),
                1,
                MsgParams::REPORT,
                &mut [0u8; MAX_PAYLOAD],
            )
        };
        assert_eq!(tweak(offset::ALGO, 2), Err(GuestMsgError::BadHeader));
        assert_eq!(tweak(offset::HDR_VERSION, 2), Err(GuestMsgError::BadHeader));
        assert_eq!(tweak(offset::HDR_SIZE, 0x50), Err(GuestMsgError::BadHeader));
        assert_eq!(tweak(offset::MSG_TYPE, 5), Err(GuestMsgError::WrongType(5)));
        assert_eq!(
            tweak(offset::MSG_VERSION, 2),
            Err(GuestMsgError::WrongVersion(2))
        );
        assert_eq!(
            tweak(offset::MSG_VMPCK, 1),
            Err(GuestMsgError::WrongVmpck(1))
        );
        // Authenticated reserved header byte, payload byte, tag byte.
        assert_eq!(tweak(0x40, 1), Err(GuestMsgError::AuthFailed));
        assert_eq!(
            tweak(0x60 + 10, page[0x60 + 10] ^ 1),
            Err(GuestMsgError::AuthFailed)
        );
        assert_eq!(tweak(0, page[0] ^ 1), Err(GuestMsgError::AuthFailed));
        // Oversized msg_size (bigger than the page payload, or than `out`).
        let mut p = page;
        p[offset::MSG_SIZE..offset::MSG_SIZE + 2].copy_from_slice(&4001u16.to_le_bytes());
        assert_eq!(
            open_response(&p, &mut key, 1, MsgParams::REPORT, &mut out),
            Err(GuestMsgError::ResponseTooLarge(4001))
        );
        let mut small = [0u8; 100];
        assert_eq!(
            open_response(&page, &mut key, 1, MsgParams::REPORT, &mut small),
            Err(GuestMsgError::ResponseTooLarge(REPORT_RSP_SIZE))
        );
    }

    /// With the real AES-256-GCM: a response whose ciphertext or tag was
    /// changed does not open, and no byte of plaintext is left in `out`.
    #[test]
    fn failed_authentication_leaves_no_plaintext_real_aes_gcm() {
        let rsp = report_rsp_payload();
        let page = psp_response(1, &rsp);
        for at in [
            0x00,
            0x0F,
            0x40,
            0x60,
            0x60 + 0x70,
            0x60 + REPORT_RSP_SIZE - 1,
        ] {
            let mut p = page;
            p[at] ^= 1;
            let mut out = [0xCCu8; MAX_PAYLOAD];
            assert_eq!(
                open_response(&p, &mut Real::new(&KEY), 1, MsgParams::REPORT, &mut out),
                Err(GuestMsgError::AuthFailed),
                "byte {at:#x}"
            );
            assert!(
                out[..REPORT_RSP_SIZE].iter().all(|&b| b == 0),
                "byte {at:#x}"
            );
            assert!(
                out[REPORT_RSP_SIZE..].iter().all(|&b| b == 0xCC),
                "untouched beyond msg_size"
            );
        }
        // Another key: same result.
        let mut out = [0xCCu8; MAX_PAYLOAD];
        assert_eq!(
            open_response(
                &page,
                &mut Real::new(&[1; 32]),
                1,
                MsgParams::REPORT,
                &mut out
            ),
            Err(GuestMsgError::AuthFailed)
        );
        assert!(out[..REPORT_RSP_SIZE].iter().all(|&b| b == 0));
    }

    /// `open_response` does not rely on the cipher to clean up: a cipher that
    /// decrypts before it authenticates (and leaves the bytes there) still
    /// leaves no plaintext behind.
    #[test]
    fn failed_authentication_leaves_no_plaintext_whatever_the_cipher() {
        let rsp = report_rsp_payload();
        let params = MsgParams {
            msg_type: MsgType::ReportRsp,
            msg_version: 1,
            vmpck: 0,
        };
        let mut page = [0u8; MSG_PAGE_SIZE];
        seal_request(&mut page, &mut Careless::new(), 2, params, &rsp).unwrap();
        let mut out = [0u8; MAX_PAYLOAD];
        let n = open_response(&page, &mut Careless::new(), 1, MsgParams::REPORT, &mut out).unwrap();
        assert_eq!(&out[..n], &rsp[..]);
        page[0] ^= 1; // the tag
        let mut out = [0u8; MAX_PAYLOAD];
        assert_eq!(
            open_response(&page, &mut Careless::new(), 1, MsgParams::REPORT, &mut out),
            Err(GuestMsgError::AuthFailed)
        );
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn sequence_rules() {
        let mut s = Sequence::new();
        assert_eq!(s.last(), 0);
        assert_eq!(s.take(), Ok(1));
        assert_eq!(s.last(), 2, "the response's number is used up too");
        assert_eq!(s.take(), Ok(3));
        assert_eq!(s.take(), Ok(5));
        // 32-bit counter bound: request and response must both fit.
        let mut s = Sequence {
            last: u64::from(u32::MAX) - 4,
        };
        assert_eq!(s.take(), Ok(u64::from(u32::MAX) - 3));
        assert_eq!(s.take(), Ok(u64::from(u32::MAX) - 1));
        assert_eq!(s.last(), u64::from(u32::MAX));
        assert_eq!(s.take(), Err(GuestMsgError::SeqnoExhausted));
        assert_eq!(s.take(), Err(GuestMsgError::SeqnoExhausted));
        let mut s = Sequence {
            last: u64::from(u32::MAX) - 1,
        };
        assert_eq!(s.take(), Err(GuestMsgError::SeqnoExhausted));
    }

    // ------------------------------------------------------------------
    // The channel against a host.

    #[test]
    fn honest_host_many_reports() {
        let mut t = setup(Lie::None, BusyPolicy::VELLUM);
        for i in 0..5u8 {
            let report = t.report(i).unwrap();
            assert_eq!(&report[0x50..0x90], &rd(i)[..]);
        }
        assert!(!t.ch.is_burnt());
        assert_eq!(t.host.wipes, 0);
        assert!(!t.wiped.get());
        assert_eq!(t.ch.last_seqno(), 10);
        let sealed = t.sealed.borrow().clone();
        let seqnos: Vec<u64> = sealed.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqnos, [1, 3, 5, 7, 9]);
        // The PSP decrypted exactly what was sealed.
        assert_eq!(t.host.processed, sealed);
        assert_eq!(t.host.sends.len(), 5);
        t.assert_no_nonce_reuse();
    }

    #[test]
    fn busy_forever_burns_the_key_after_identical_resends() {
        for policy in [BusyPolicy::VELLUM, BusyPolicy::LINUX] {
            let mut t = setup(Lie::BusyForever, policy);
            assert_eq!(t.report(1), Err(GuestMsgError::HostBusy));
            // Bounded, and every send was the same sealed page, byte for byte.
            let sends = &t.host.sends;
            assert_eq!(sends.len(), policy.max_resends as usize + 1, "{policy:?}");
            assert!(sends.iter().all(|p| *p == sends[0]));
            assert!(t.host.paused <= policy.max_us + policy.delay_us);
            assert_eq!(t.sealed.borrow().len(), 1, "sealed once");
            assert!(t.host.processed.is_empty());
            t.assert_burnt();
        }
    }

    #[test]
    fn busy_gives_up_even_when_the_clock_stands_still() {
        struct Frozen(FakePsp);
        impl GuestRequestHost for Frozen {
            fn send(&mut self, r: &[u8; MSG_PAGE_SIZE]) -> GuestRequestStatus {
                let st = self.0.send(r);
                self.0.now = 0;
                st
            }
            fn receive(&mut self, r: &mut [u8; MSG_PAGE_SIZE]) {
                self.0.receive(r)
            }
            fn now_us(&mut self) -> u64 {
                0
            }
            fn pause_us(&mut self, _: u64) {}
            fn wipe_key(&mut self) {
                self.0.wipe_key()
            }
        }
        let t = setup(Lie::BusyForever, BusyPolicy::VELLUM);
        let (mut ch, mut host) = (t.ch, Frozen(t.host));
        assert_eq!(
            ch.report(&mut host, &rd(1), 0),
            Err(GuestMsgError::HostBusy)
        );
        assert_eq!(host.0.sends.len(), 31);
        assert!(ch.is_burnt() && host.0.wipes == 1);
    }

    #[test]
    fn busy_then_answer_resends_the_identical_page() {
        let mut t = setup(Lie::Busy(3), BusyPolicy::VELLUM);
        let report = t.report(7).unwrap();
        assert_eq!(&report[0x50..0x90], &rd(7)[..]);
        // Four sends of one sealed page, although the host scribbled over the
        // shared copy after each BUSY; the PSP saw the original.
        assert_eq!(t.host.sends.len(), 4);
        assert!(t.host.sends.iter().all(|p| *p == t.host.sends[0]));
        assert_eq!(t.host.paused, 3 * BusyPolicy::VELLUM.delay_us);
        assert_eq!(t.sealed.borrow().len(), 1);
        assert_eq!(t.host.processed.len(), 1);
        // The next request takes the next number.
        t.host.lie = Lie::None;
        t.report(8).unwrap();
        let seqnos: Vec<u64> = t.sealed.borrow().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqnos, [1, 3]);
        assert!(!t.ch.is_burnt());
        t.assert_no_nonce_reuse();
    }

    #[test]
    fn replayed_response_burns_the_key() {
        let mut t = setup(Lie::Replay, BusyPolicy::VELLUM);
        t.report(1).unwrap();
        // The host answers request 3 with the response to request 1.
        assert_eq!(
            t.report(2),
            Err(GuestMsgError::WrongSeqno {
                expected: 4,
                got: 2
            })
        );
        t.assert_burnt();
        let seqnos: Vec<u64> = t.sealed.borrow().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqnos, [1, 3]);
    }

    #[test]
    fn altered_response_burns_the_key_and_leaves_no_plaintext() {
        let mut t = setup(Lie::Alter, BusyPolicy::VELLUM);
        let mut out = [0xCCu8; MAX_PAYLOAD];
        let payload = report_request(&rd(1), 0);
        assert_eq!(
            t.ch.exchange(&mut t.host, MsgParams::REPORT, &payload, &mut out),
            Err(GuestMsgError::AuthFailed)
        );
        assert!(out[..REPORT_RSP_SIZE].iter().all(|&b| b == 0));
        t.assert_burnt();
        // Through `report` as well.
        let mut t = setup(Lie::Alter, BusyPolicy::VELLUM);
        assert_eq!(t.report(1), Err(GuestMsgError::AuthFailed));
        t.assert_burnt();
    }

    #[test]
    fn a_report_for_other_data_or_another_vmpl_burns_the_key() {
        let mut t = setup(Lie::OtherReportData, BusyPolicy::VELLUM);
        assert_eq!(t.report(1), Err(GuestMsgError::ReportDataMismatch));
        t.assert_burnt();
        let mut t = setup(Lie::OtherVmpl, BusyPolicy::VELLUM);
        assert_eq!(
            t.report(1),
            Err(GuestMsgError::VmplMismatch {
                expected: 0,
                got: 1
            })
        );
        t.assert_burnt();
    }

    #[test]
    fn host_and_firmware_errors_burn_the_key() {
        for (lie, err) in [
            (
                Lie::Error(0x16),
                GuestMsgError::HostError {
                    vmm_error: 0,
                    fw_error: 0x16,
                },
            ),
            (
                Lie::Error(1 << 32),
                GuestMsgError::HostError {
                    vmm_error: 1,
                    fw_error: 0,
                },
            ),
            (
                Lie::Error((3 << 32) | 5),
                GuestMsgError::HostError {
                    vmm_error: 3,
                    fw_error: 5,
                },
            ),
            (Lie::ReportStatus(0x16), GuestMsgError::ReportStatus(0x16)),
        ] {
            let mut t = setup(lie, BusyPolicy::VELLUM);
            assert_eq!(t.report(1), Err(err), "{lie:?}");
            t.assert_burnt();
        }
    }

    #[test]
    fn failures_after_successes_never_reuse_a_number() {
        // Honest for three reports, then each way of failing: the numbers
        // sealed are 1, 3, 5, 7 and nothing after the failure.
        for lie in [
            Lie::BusyForever,
            Lie::Alter,
            Lie::OtherReportData,
            Lie::Error(0x16),
        ] {
            let mut t = setup(Lie::None, BusyPolicy::VELLUM);
            for i in 0..3 {
                t.report(i).unwrap();
            }
            t.host.lie = lie;
            assert!(t.report(3).is_err(), "{lie:?}");
            let seqnos: Vec<u64> = t.sealed.borrow().iter().map(|(s, _)| *s).collect();
            assert_eq!(seqnos, [1, 3, 5, 7], "{lie:?}");
            t.assert_burnt();
        }
    }

    #[test]
    fn what_does_not_burn() {
        // A payload that is too large never leaves the guest.
        let mut t = setup(Lie::None, BusyPolicy::VELLUM);
        let big = [0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            t.ch.exchange(&mut t.host, MsgParams::REPORT, &big, &mut [0u8; 16]),
            Err(GuestMsgError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        assert!(!t.ch.is_burnt());
        assert!(t.sealed.borrow().is_empty() && t.host.sends.is_empty());
        t.report(1).unwrap();
        // A channel without a key refuses without touching anything.
        let mut ch: GuestChannel<Real> = GuestChannel::without_key(BusyPolicy::VELLUM);
        let mut host = FakePsp::new(Lie::None);
        assert!(ch.is_burnt());
        assert_eq!(
            ch.report(&mut host, &rd(1), 0),
            Err(GuestMsgError::KeyBurnt)
        );
        assert!(host.sends.is_empty());
    }

    #[test]
    fn exhausted_sequence_burns_before_sealing() {
        let mut t = setup(Lie::None, BusyPolicy::VELLUM);
        t.ch.seq = Sequence {
            last: u64::from(u32::MAX) - 1,
        };
        assert_eq!(t.report(1), Err(GuestMsgError::SeqnoExhausted));
        assert!(t.sealed.borrow().is_empty());
        assert!(t.host.sends.is_empty());
        t.assert_burnt();
    }
}
