//! SNP guest-request message framing (MSG_REPORT_REQ / MSG_REPORT_RSP).
//!
//! Sources: SNP FW ABI 56860 §7 "Guest Messages" (message header, Table 100;
//! MSG_REPORT_REQ/RSP, Tables 21/24); Oak `oak_sev_guest/src/guest.rs`
//! (header, `AttestationRequest`/`AttestationResponse`) and `crypto.rs` (IV =
//! sequence number little-endian, zero-padded to 12 bytes; AAD = header bytes
//! 0x30..0x60); Linux `drivers/virt/coco/sev-guest/sev-guest.c`
//! `verify_and_dec_payload` (response seqno = request seqno + 1, type =
//! request type + 1, same version, size bound) and `snp_get_msg_seqno` (the
//! secrets page stores a 32-bit counter: refuse past `u32::MAX`); reference §5.
//!
//! Pure framing: AES-256-GCM is done by the `crypto` crate behind [`Aead`],
//! which holds VMPCK0 itself, so the key never passes through this crate.
//! The request and response pages must be shared (the hypervisor copies them
//! to the PSP); build the request in a private buffer, copy it out, and parse
//! the response from a private copy (never decrypt in shared memory).

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

/// Errors from framing, sequencing and parsing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestMsgError {
    /// Payload larger than [`MAX_PAYLOAD`] or than the output buffer.
    PayloadTooLarge(usize),
    /// The sequence counter would pass `u32::MAX`.
    SeqnoExhausted,
    /// A failed exchange burnt the key: no more messages.
    KeyBurnt,
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
    /// Authentication failed.
    AuthFailed,
    /// MSG_REPORT_RSP status non-zero (0x16 = invalid parameters).
    ReportStatus(u32),
    /// MSG_REPORT_RSP report_size is not 0x4A0, or the payload is too short.
    BadReportSize(u32),
}

/// AES-256-GCM with VMPCK0, implemented by the `crypto` crate.
///
/// # Implementation contract
///
/// `seal` encrypts `data` in place and returns the 16-byte tag; `open`
/// verifies `tag` and decrypts in place, and on failure must leave no
/// plaintext in `data` (zero it). Both use `iv` and `aad` exactly as given.
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
}

/// IV for `seqno`: its 8 little-endian bytes, then 4 zero bytes.
pub fn iv(seqno: u64) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[..8].copy_from_slice(&seqno.to_le_bytes());
    iv
}

/// Message sequence state for one VMPCK (starts at 0: the first request is 1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Sequence {
    last: u64,
    burnt: bool,
}

impl Sequence {
    /// Fresh state (nothing sent).
    pub const fn new() -> Self {
        Sequence {
            last: 0,
            burnt: false,
        }
    }

    /// The seqno for the next request: last + 1 (odd). Does not advance;
    /// resending the same message on BUSY reuses it.
    pub fn next_request(&self) -> Result<u64, GuestMsgError> {
        if self.burnt {
            return Err(GuestMsgError::KeyBurnt);
        }
        match self.last.checked_add(2) {
            // Response will be last + 2; both must fit the 32-bit counter.
            Some(resp) if resp <= u64::from(u32::MAX) => Ok(self.last + 1),
            _ => Err(GuestMsgError::SeqnoExhausted),
        }
    }

    /// Records an accepted response for request `req` (response = req + 1).
    pub fn complete(&mut self, req: u64) {
        self.last = req + 1;
    }

    /// Any failure other than BUSY: never use this key again (an IV might be
    /// reused otherwise; Linux wipes the VMPCK).
    pub fn burn(&mut self) {
        self.burnt = true;
    }

    /// Whether [`Sequence::burn`] was called.
    pub fn is_burnt(&self) -> bool {
        self.burnt
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
/// writes the plaintext into `out` and returns its length.
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
        return Err(GuestMsgError::PayloadTooLarge(size));
    }
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&page[offset::AUTH_TAG..offset::AUTH_TAG + TAG_LEN]);
    let data = &mut out[..size];
    data.copy_from_slice(&page[offset::PAYLOAD..offset::PAYLOAD + size]);
    aead.open(
        &iv(got),
        &page[offset::AAD_START..offset::AAD_END],
        data,
        &tag,
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy AEAD: XOR keystream from (key, iv), tag = mixing of key, iv, aad,
    /// ciphertext. Enough to detect any change of IV, AAD, data or tag.
    struct FakeAead {
        key: u64,
        seen: Vec<([u8; IV_LEN], Vec<u8>)>,
    }

    fn mix(mut h: u64, bytes: &[u8]) -> u64 {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        h
    }

    impl FakeAead {
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

    impl Aead for FakeAead {
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
            if self.tag(iv, aad, data) != *tag {
                data.fill(0);
                return Err(GuestMsgError::AuthFailed);
            }
            self.stream(iv, data);
            Ok(())
        }
    }

    fn aead() -> FakeAead {
        FakeAead {
            key: 0xC0FFEE,
            seen: vec![],
        }
    }

    /// What the PSP would send back: a response sealed with seqno req+1.
    fn psp_response(req_seqno: u64, payload: &[u8]) -> [u8; MSG_PAGE_SIZE] {
        let mut page = [0u8; MSG_PAGE_SIZE];
        let params = MsgParams {
            msg_type: MsgType::ReportRsp,
            msg_version: 1,
            vmpck: 0,
        };
        seal_request(&mut page, &mut aead(), req_seqno + 1, params, payload).unwrap();
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
        let mut a = aead();
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
    }

    #[test]
    fn round_trip_and_response_checks() {
        let rsp = report_rsp_payload();
        let mut out = [0u8; MAX_PAYLOAD];
        let page = psp_response(1, &rsp);
        let n = open_response(&page, &mut aead(), 1, MsgParams::REPORT, &mut out).unwrap();
        assert_eq!(&out[..n], &rsp[..]);
        // Wrong seqno (replayed response for request 3).
        assert_eq!(
            open_response(&page, &mut aead(), 3, MsgParams::REPORT, &mut out),
            Err(GuestMsgError::WrongSeqno {
                expected: 4,
                got: 2
            })
        );
        let tweak = |at: usize, v: u8| {
            let mut p = page;
            p[at] = v;
            open_response(&p, &mut aead(), 1, MsgParams::REPORT, &mut out.clone())
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
            open_response(&p, &mut aead(), 1, MsgParams::REPORT, &mut out),
            Err(GuestMsgError::PayloadTooLarge(4001))
        );
        let mut small = [0u8; 100];
        assert_eq!(
            open_response(&page, &mut aead(), 1, MsgParams::REPORT, &mut small),
            Err(GuestMsgError::PayloadTooLarge(REPORT_RSP_SIZE))
        );
        // Failed authentication leaves no plaintext behind.
        let mut p = page;
        p[0] ^= 1;
        let mut o = [0u8; MAX_PAYLOAD];
        assert!(open_response(&p, &mut aead(), 1, MsgParams::REPORT, &mut o).is_err());
        assert!(o.iter().all(|&b| b == 0));
    }

    #[test]
    fn sequence_rules() {
        let mut s = Sequence::new();
        assert_eq!(s.next_request(), Ok(1));
        // BUSY: resend with the same seqno.
        assert_eq!(s.next_request(), Ok(1));
        s.complete(1);
        assert_eq!(s.next_request(), Ok(3));
        s.complete(3);
        assert_eq!(s.next_request(), Ok(5));
        s.burn();
        assert!(s.is_burnt());
        assert_eq!(s.next_request(), Err(GuestMsgError::KeyBurnt));
        // 32-bit counter bound.
        let mut s = Sequence::new();
        s.complete(u64::from(u32::MAX) - 3); // last = MAX - 2
        assert_eq!(s.next_request(), Ok(u64::from(u32::MAX) - 1));
        s.complete(u64::from(u32::MAX) - 1); // last = MAX
        assert_eq!(s.next_request(), Err(GuestMsgError::SeqnoExhausted));
    }
}
