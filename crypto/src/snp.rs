//! The SNP guest-message cipher: AES-256-GCM keyed with a VMPCK (SNP firmware
//! ABI 56860, "Guest messages"), behind `vellum_boot::snp::guest_msg::Aead`,
//! which does the framing (header, IV from the sequence number, AAD = header
//! bytes 0x30..0x60, tag at 0x00).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use vellum_boot::snp::guest_msg::{Aead, GuestMsgError, IV_LEN, TAG_LEN};

/// AES-256-GCM with a VMPCK. The key lives in ring's key schedule (private
/// memory); [`VmpckAead::wipe`] overwrites it when the key is burnt.
pub struct VmpckAead {
    key: LessSafeKey,
}

impl core::fmt::Debug for VmpckAead {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("VmpckAead(..)")
    }
}

fn key_schedule(vmpck: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, vmpck).expect("AES-256 takes a 32-byte key"))
}

impl VmpckAead {
    /// A cipher keyed with the 32-byte `vmpck`.
    pub fn new(vmpck: &[u8; 32]) -> Self {
        VmpckAead {
            key: key_schedule(vmpck),
        }
    }

    /// Encrypts `data` in place; returns the tag (the [`Aead::seal`] of the
    /// guest-message framing, callable without naming the trait).
    pub fn seal_in_place(
        &mut self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*iv), Aad::from(aad), data)
            .expect("guest messages are far below the AES-GCM length limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Authenticates and decrypts `data` in place; on failure zeroes `data`
    /// and returns `false`.
    pub fn open_in_place(
        &mut self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        let Ok(tag) = Tag::try_from(&tag[..]) else {
            data.fill(0);
            return false;
        };
        match self.key.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*iv),
            Aad::from(aad),
            tag,
            data,
            0..,
        ) {
            Ok(_) => true,
            Err(_) => {
                // No unauthenticated plaintext may survive.
                data.fill(0);
                false
            }
        }
    }

    /// Overwrites the key schedule in place with that of the all-zero key.
    /// ring keeps the schedule inline and does not zeroize it on drop, so
    /// this is what erases VMPCK0 from the cipher's memory (the `black_box`
    /// keeps the store from being optimised away before a drop).
    pub fn wipe(&mut self) {
        self.key = key_schedule(&[0; 32]);
        core::hint::black_box(&self.key);
    }
}

impl Aead for VmpckAead {
    fn seal(&mut self, iv: &[u8; IV_LEN], aad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        self.seal_in_place(iv, aad, data)
    }

    fn open(
        &mut self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), GuestMsgError> {
        if self.open_in_place(iv, aad, data, tag) {
            Ok(())
        } else {
            Err(GuestMsgError::AuthFailed)
        }
    }

    fn wipe(&mut self) {
        VmpckAead::wipe(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vellum_boot::snp::guest_msg::{
        self, MSG_PAGE_SIZE, MsgParams, MsgType, REPORT_RSP_SIZE, offset, report_request,
    };

    /// NIST GCM test vector (gcmEncryptExtIV256, Count 0 of the 96-bit-IV,
    /// 128-bit-tag, 128-bit-PT, 128-bit-AAD set): key, IV, PT, AAD -> CT, tag.
    #[test]
    fn aes_256_gcm_known_answer() {
        let h = |s: &str| -> Vec<u8> {
            (0..s.len() / 2)
                .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        };
        let key: [u8; 32] = h("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b")
            .try_into()
            .unwrap();
        let iv: [u8; 12] = h("ac93a1a6145299bde902f21a").try_into().unwrap();
        let mut data = h("2d71bcfa914e4ac045b2aa60955fad24");
        let aad = h("1e0889016f67601c8ebea4943bc23ad6");
        let mut a = VmpckAead::new(&key);
        let tag = a.seal(&iv, &aad, &mut data);
        assert_eq!(data, h("8995ae2e6df3dbf96fac7b7137bae67f"));
        assert_eq!(tag.to_vec(), h("eca5aa77d51d4a0a14d9c51e1da474ab"));
        a.open(&iv, &aad, &mut data, &tag).unwrap();
        assert_eq!(data, h("2d71bcfa914e4ac045b2aa60955fad24"));
    }

    /// After `wipe` the cipher holds the all-zero key: what VMPCK0 sealed no
    /// longer opens, and it seals exactly what a fresh zero-key cipher seals.
    #[test]
    fn wipe_replaces_the_key() {
        let key = [0x5Au8; 32];
        let iv = [1u8; 12];
        let mut a = VmpckAead::new(&key);
        let mut data = *b"sixteen byte msg";
        let tag = a.seal(&iv, b"aad", &mut data);
        Aead::wipe(&mut a);
        let mut copy = data;
        assert_eq!(
            a.open(&iv, b"aad", &mut copy, &tag),
            Err(GuestMsgError::AuthFailed)
        );
        assert_eq!(copy, [0; 16], "no plaintext after a failed open");
        let (mut x, mut y) = (*b"sixteen byte msg", *b"sixteen byte msg");
        let t1 = a.seal(&iv, b"", &mut x);
        let t2 = VmpckAead::new(&[0; 32]).seal(&iv, b"", &mut y);
        assert_eq!((x, t1), (y, t2));
    }

    /// A request sealed by our framing decrypts with the same key the way the
    /// PSP would read it: IV = seqno LE, AAD = header 0x30..0x60, tag at 0.
    #[test]
    fn request_framing_with_the_real_cipher() {
        let key = [7u8; 32];
        let mut page = [0u8; MSG_PAGE_SIZE];
        let rd = [0xabu8; 64];
        let payload = report_request(&rd, 0);
        guest_msg::seal_request(
            &mut page,
            &mut VmpckAead::new(&key),
            1,
            MsgParams::REPORT,
            &payload,
        )
        .unwrap();
        assert_eq!(page[offset::MSG_TYPE], MsgType::ReportReq as u8);
        assert_eq!(u64::from_le_bytes(page[0x20..0x28].try_into().unwrap()), 1);
        // Independent decryption with ring, straight from the layout.
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&1u64.to_le_bytes());
        let mut ct = page[0x60..0x60 + payload.len()].to_vec();
        let tag = Tag::try_from(&page[0..16]).unwrap();
        k.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(&page[0x30..0x60]),
            tag,
            &mut ct,
            0..,
        )
        .unwrap();
        assert_eq!(ct, payload);

        // A response the "PSP" seals with seqno 2 opens; tampering fails closed.
        let mut resp = [0u8; MSG_PAGE_SIZE];
        resp[offset::ALGO] = 1;
        resp[offset::HDR_VERSION] = 1;
        resp[offset::HDR_SIZE..offset::HDR_SIZE + 2].copy_from_slice(&0x60u16.to_le_bytes());
        resp[offset::MSG_TYPE] = MsgType::ReportReq as u8 + 1;
        resp[offset::MSG_VERSION] = 1;
        resp[offset::MSG_SIZE..offset::MSG_SIZE + 2]
            .copy_from_slice(&(REPORT_RSP_SIZE as u16).to_le_bytes());
        resp[0x20..0x28].copy_from_slice(&2u64.to_le_bytes());
        let mut body = vec![0u8; REPORT_RSP_SIZE];
        body[4..8].copy_from_slice(&0x4a0u32.to_le_bytes());
        body[0x20 + 0x50..0x20 + 0x90].copy_from_slice(&rd);
        let mut iv2 = [0u8; 12];
        iv2[..8].copy_from_slice(&2u64.to_le_bytes());
        let aad: Vec<u8> = resp[0x30..0x60].to_vec();
        let t = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv2),
                Aad::from(&aad),
                &mut body,
            )
            .unwrap();
        resp[0x60..0x60 + REPORT_RSP_SIZE].copy_from_slice(&body);
        resp[0..16].copy_from_slice(t.as_ref());
        let mut out = vec![0u8; 4000];
        let n = guest_msg::open_response(
            &resp,
            &mut VmpckAead::new(&key),
            1,
            MsgParams::REPORT,
            &mut out,
        )
        .unwrap();
        let report = guest_msg::parse_report_response(&out[..n]).unwrap();
        assert_eq!(&report[0x50..0x90], &rd[..]);
        let mut bad = resp;
        bad[0x61] ^= 1;
        let mut out = vec![0u8; 4000];
        assert_eq!(
            guest_msg::open_response(
                &bad,
                &mut VmpckAead::new(&key),
                1,
                MsgParams::REPORT,
                &mut out
            ),
            Err(GuestMsgError::AuthFailed)
        );
        assert!(
            out.iter().all(|&b| b == 0),
            "no plaintext after a failed open"
        );
    }
}
