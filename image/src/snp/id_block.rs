//! The SNP ID block and ID authentication structure passed to
//! SNP_LAUNCH_FINISH (QEMU `sev-snp-guest` properties `id-block`, `id-auth`,
//! `author-key-enabled`).
//!
//! AMD SEV-SNP Firmware ABI (56860):
//! - §8.18 SNP_LAUNCH_FINISH, "ID Block" structure: `LD[48] | FAMILY_ID[16] |
//!   IMAGE_ID[16] | u32 VERSION (=1) | u32 GUEST_SVN | u64 POLICY` (96 bytes);
//!   the firmware refuses to finish the launch if LD differs from the launch
//!   digest or POLICY from the launch policy;
//! - §8.18, "ID Authentication Information" structure (4096 bytes, offsets in
//!   [`auth`]): the ID block signed by the ID key, the ID key, and optionally
//!   the ID key signed by an author key;
//! - Chapter 10 "Digital Signatures": ECDSA P-384 with SHA-384 (algorithm 1);
//!   a signature is `R[72] | S[72]` little-endian, zero-padded, in a 512-byte
//!   field; a public key is `u32 CURVE (2 = P-384) | QX[72] | QY[72]`,
//!   little-endian, zero-padded, in a 1028-byte field.
//!
//! `docs/snp-reference.md` §3.3 "ID block and ID authentication" has the
//! layout with sources; sev-snp-measure's
//! `snp-create-id-block` produces the same structure (the tests compare them).
#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

use p384::ecdsa::signature::{Signer, Verifier};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::elliptic_curve::Generate;
use p384::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use p384::{FieldBytes, SecretKey};

use super::page_info::{DIGEST_LEN, sha384};

/// ID block size.
pub const ID_BLOCK_LEN: usize = 0x60;
/// ID authentication information size.
pub const ID_AUTH_LEN: usize = 0x1000;
/// ECDSA signature field size.
pub const SIGNATURE_LEN: usize = 0x200;
/// ECDSA public key field size.
pub const PUBLIC_KEY_LEN: usize = 0x404;
/// Size of one little-endian scalar or coordinate in a signature or key.
pub const ECC_PARAM_LEN: usize = 0x48;
/// Algorithm code for ECDSA P-384 with SHA-384.
pub const ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Curve code for P-384.
pub const CURVE_P384: u32 = 2;
/// ID block VERSION the firmware accepts.
pub const ID_BLOCK_VERSION: u32 = 1;
/// Default guest policy: SMT allowed (bit 16) and the must-be-one bit 17.
pub const DEFAULT_POLICY: u64 = 0x30000;
/// Policy bit 17 is reserved and must be one.
pub const POLICY_RESERVED_ONE: u64 = 1 << 17;

/// ID block field offsets (56860 §8.18, "ID Block").
pub mod block {
    /// Expected launch digest.
    pub const LD: usize = 0x00;
    /// Family ID (16 bytes, guest-chosen).
    pub const FAMILY_ID: usize = 0x30;
    /// Image ID (16 bytes, guest-chosen).
    pub const IMAGE_ID: usize = 0x40;
    /// u32 VERSION.
    pub const VERSION: usize = 0x50;
    /// u32 GUEST_SVN.
    pub const GUEST_SVN: usize = 0x54;
    /// u64 POLICY.
    pub const POLICY: usize = 0x58;
}

/// ID authentication information field offsets (56860 §8.18).
pub mod auth {
    /// u32 ID_KEY_ALGO.
    pub const ID_KEY_ALGO: usize = 0x000;
    /// u32 AUTH_KEY_ALGO.
    pub const AUTH_KEY_ALGO: usize = 0x004;
    /// ID_BLOCK_SIG: the ID key's signature over the 96-byte ID block.
    pub const ID_BLOCK_SIG: usize = 0x040;
    /// ID_KEY: the ID public key.
    pub const ID_KEY: usize = 0x240;
    /// ID_KEY_SIG: the author key's signature over the 1028-byte ID_KEY.
    pub const ID_KEY_SIG: usize = 0x680;
    /// AUTHOR_KEY: the author public key.
    pub const AUTHOR_KEY: usize = 0x880;
    /// End of the defined fields; reserved up to 0x1000.
    pub const END: usize = 0xC84;
}

/// Offsets inside a signature field (56860 ch. 10, ECDSA signature).
pub mod sig {
    /// R, little-endian, zero-padded to 72 bytes.
    pub const R: usize = 0x00;
    /// S, little-endian, zero-padded to 72 bytes.
    pub const S: usize = 0x48;
}

/// Offsets inside a public key field (56860 ch. 10, ECDSA public key).
pub mod key {
    /// u32 CURVE.
    pub const CURVE: usize = 0x00;
    /// QX, little-endian, zero-padded to 72 bytes.
    pub const QX: usize = 0x04;
    /// QY, little-endian, zero-padded to 72 bytes.
    pub const QY: usize = 0x4C;
}

const _: () = {
    assert!(block::POLICY + 8 == ID_BLOCK_LEN);
    assert!(block::FAMILY_ID == block::LD + DIGEST_LEN);
    assert!(auth::ID_KEY == auth::ID_BLOCK_SIG + SIGNATURE_LEN);
    assert!(auth::ID_KEY + PUBLIC_KEY_LEN + 60 == auth::ID_KEY_SIG);
    assert!(auth::AUTHOR_KEY == auth::ID_KEY_SIG + SIGNATURE_LEN);
    assert!(auth::END == auth::AUTHOR_KEY + PUBLIC_KEY_LEN);
    assert!(auth::END <= ID_AUTH_LEN);
    assert!(sig::S + ECC_PARAM_LEN <= SIGNATURE_LEN);
    assert!(key::QY + ECC_PARAM_LEN <= PUBLIC_KEY_LEN);
};

/// The guest-chosen ID block contents.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IdBlock {
    /// The expected launch digest.
    pub ld: [u8; DIGEST_LEN],
    /// Family ID.
    pub family_id: [u8; 16],
    /// Image ID.
    pub image_id: [u8; 16],
    /// Guest security version number.
    pub guest_svn: u32,
    /// Guest policy; must equal the launch policy (QEMU `policy=`).
    pub policy: u64,
}

impl IdBlock {
    /// An ID block for `ld` with zero IDs, SVN 0 and the default policy.
    pub fn new(ld: [u8; DIGEST_LEN]) -> Self {
        Self {
            ld,
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 0,
            policy: DEFAULT_POLICY,
        }
    }

    /// Serialises the 96-byte structure.
    pub fn to_bytes(&self) -> [u8; ID_BLOCK_LEN] {
        let mut b = [0u8; ID_BLOCK_LEN];
        b[block::LD..block::FAMILY_ID].copy_from_slice(&self.ld);
        b[block::FAMILY_ID..block::IMAGE_ID].copy_from_slice(&self.family_id);
        b[block::IMAGE_ID..block::VERSION].copy_from_slice(&self.image_id);
        b[block::VERSION..block::GUEST_SVN].copy_from_slice(&ID_BLOCK_VERSION.to_le_bytes());
        b[block::GUEST_SVN..block::POLICY].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[block::POLICY..].copy_from_slice(&self.policy.to_le_bytes());
        b
    }
}

/// Problems with keys and signing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KeyError {
    /// The key file could not be read.
    Read {
        /// The path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not a PEM private key.
    NotPem {
        /// The path.
        path: String,
    },
    /// The PEM key is encrypted.
    Encrypted {
        /// The path.
        path: String,
    },
    /// A PEM private key, but not a P-384 EC key (PKCS#8 or SEC1).
    NotP384 {
        /// The path.
        path: String,
    },
    /// The system RNG failed.
    Generate,
    /// Encoding or writing a key failed.
    Write {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// ECDSA signing failed.
    Sign,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, reason } => write!(f, "cannot read key file {path}: {reason}"),
            Self::NotPem { path } => write!(
                f,
                "key file {path} is not a PEM private key (expected 'BEGIN PRIVATE KEY' or \
                 'BEGIN EC PRIVATE KEY')"
            ),
            Self::Encrypted { path } => write!(
                f,
                "key file {path} is encrypted; decrypt it first (openssl pkcs8 -nocrypt)"
            ),
            Self::NotP384 { path } => write!(
                f,
                "key file {path} is not an ECDSA P-384 (secp384r1) private key in PKCS#8 or \
                 SEC1 form; SNP ID and author keys must be P-384"
            ),
            Self::Generate => write!(f, "the system random number generator failed"),
            Self::Write { path, reason } => write!(f, "cannot write key file {path}: {reason}"),
            Self::Sign => write!(f, "ECDSA P-384 signing failed"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The text of the first PEM block labelled `label`, armour included.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = start + text[start..].find(&end)? + end.len();
    Some(&text[start..stop])
}

/// Parses a PEM P-384 private key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1
/// (`BEGIN EC PRIVATE KEY`). `path` is only used in messages.
pub fn parse_key_pem(pem: &str, path: &str) -> Result<SigningKey, KeyError> {
    let path = || path.to_string();
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || pem.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(KeyError::Encrypted { path: path() });
    }
    // `openssl ecparam -genkey` puts an EC PARAMETERS block first: take only
    // the private key block.
    let secret = if let Some(block) = pem_block(pem, "PRIVATE KEY") {
        SecretKey::from_pkcs8_pem(block).map_err(|_| KeyError::NotP384 { path: path() })?
    } else if let Some(block) = pem_block(pem, "EC PRIVATE KEY") {
        SecretKey::from_sec1_pem(block).map_err(|_| KeyError::NotP384 { path: path() })?
    } else {
        return Err(KeyError::NotPem { path: path() });
    };
    Ok(SigningKey::from(secret))
}

/// Reads a PEM P-384 private key from a file.
pub fn load_key(path: &Path) -> Result<SigningKey, KeyError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| KeyError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| KeyError::NotPem {
        path: shown.clone(),
    })?;
    parse_key_pem(&text, &shown)
}

/// Generates a fresh P-384 key from the system RNG and returns it with its
/// PKCS#8 PEM encoding.
pub fn generate_key() -> Result<(SigningKey, String), KeyError> {
    let secret = SecretKey::try_generate().map_err(|_| KeyError::Generate)?;
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Write {
            path: String::new(),
            reason: e.to_string(),
        })?;
    Ok((SigningKey::from(secret), pem.to_string()))
}

fn put_le_param(out: &mut [u8], big_endian: &[u8]) {
    // `out` is the 72-byte zero-padded little-endian field.
    for (dst, src) in out.iter_mut().zip(big_endian.iter().rev()) {
        *dst = *src;
    }
}

fn le_param_to_be(field: &[u8]) -> Option<FieldBytes> {
    // Only the low 48 bytes may be non-zero for P-384.
    if field[48..ECC_PARAM_LEN].iter().any(|&b| b != 0) {
        return None;
    }
    let mut be = FieldBytes::default();
    for (dst, src) in be.iter_mut().zip(field[..48].iter().rev()) {
        *dst = *src;
    }
    Some(be)
}

/// The 1028-byte public key structure for `key`.
pub fn public_key_bytes(key: &VerifyingKey) -> [u8; PUBLIC_KEY_LEN] {
    let mut out = [0u8; PUBLIC_KEY_LEN];
    out[key::CURVE..key::QX].copy_from_slice(&CURVE_P384.to_le_bytes());
    let point = key.to_sec1_point(false);
    if let (Some(x), Some(y)) = (point.x(), point.y()) {
        put_le_param(&mut out[key::QX..key::QX + ECC_PARAM_LEN], x);
        put_le_param(&mut out[key::QY..key::QY + ECC_PARAM_LEN], y);
    }
    out
}

/// SHA-384 of the public key structure: what the attestation report carries as
/// ID_KEY_DIGEST / AUTHOR_KEY_DIGEST.
pub fn key_digest(key: &VerifyingKey) -> [u8; DIGEST_LEN] {
    sha384(&public_key_bytes(key))
}

/// Signs `msg` (ECDSA P-384, SHA-384) and returns the 512-byte signature field.
pub fn sign(key: &SigningKey, msg: &[u8]) -> Result<[u8; SIGNATURE_LEN], KeyError> {
    let s: Signature = key.try_sign(msg).map_err(|_| KeyError::Sign)?;
    let (r, s) = s.split_bytes();
    let mut out = [0u8; SIGNATURE_LEN];
    put_le_param(&mut out[sig::R..sig::R + ECC_PARAM_LEN], &r);
    put_le_param(&mut out[sig::S..sig::S + ECC_PARAM_LEN], &s);
    Ok(out)
}

/// Parses a public key structure back into a key (`None` if malformed).
pub fn parse_public_key(field: &[u8]) -> Option<VerifyingKey> {
    let field = field.get(..PUBLIC_KEY_LEN)?;
    if field[key::CURVE..key::QX] != CURVE_P384.to_le_bytes() {
        return None;
    }
    let x = le_param_to_be(&field[key::QX..key::QX + ECC_PARAM_LEN])?;
    let y = le_param_to_be(&field[key::QY..key::QY + ECC_PARAM_LEN])?;
    let mut sec1 = vec![0x04u8];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    VerifyingKey::from_sec1_bytes(&sec1).ok()
}

/// Verifies a signature field over `msg` with `key`.
pub fn verify(key: &VerifyingKey, msg: &[u8], field: &[u8]) -> bool {
    let Some(field) = field.get(..SIGNATURE_LEN) else {
        return false;
    };
    let (Some(r), Some(s)) = (
        le_param_to_be(&field[sig::R..sig::R + ECC_PARAM_LEN]),
        le_param_to_be(&field[sig::S..sig::S + ECC_PARAM_LEN]),
    ) else {
        return false;
    };
    match Signature::from_scalars(r, s) {
        Ok(s) => key.verify(msg, &s).is_ok(),
        Err(_) => false,
    }
}

/// A signed ID block, ready for QEMU.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedIdBlock {
    /// The 96-byte ID block.
    pub id_block: [u8; ID_BLOCK_LEN],
    /// The 4096-byte ID authentication information.
    pub id_auth: Vec<u8>,
    /// SHA-384 of the ID public key structure (report ID_KEY_DIGEST).
    pub id_key_digest: [u8; DIGEST_LEN],
    /// SHA-384 of the author public key structure, if an author key was used
    /// (report AUTHOR_KEY_DIGEST; QEMU needs `author-key-enabled=on`).
    pub author_key_digest: Option<[u8; DIGEST_LEN]>,
}

/// Signs `block` with `id_key` and, if given, signs the ID key with
/// `author_key`.
pub fn sign_id_block(
    block: &IdBlock,
    id_key: &SigningKey,
    author_key: Option<&SigningKey>,
) -> Result<SignedIdBlock, KeyError> {
    let id_block = block.to_bytes();
    let mut id_auth = vec![0u8; ID_AUTH_LEN];
    id_auth[auth::ID_KEY_ALGO..auth::ID_KEY_ALGO + 4]
        .copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
    id_auth[auth::ID_BLOCK_SIG..auth::ID_BLOCK_SIG + SIGNATURE_LEN]
        .copy_from_slice(&sign(id_key, &id_block)?);
    let id_pub = public_key_bytes(id_key.verifying_key());
    id_auth[auth::ID_KEY..auth::ID_KEY + PUBLIC_KEY_LEN].copy_from_slice(&id_pub);
    let mut author_key_digest = None;
    if let Some(author) = author_key {
        id_auth[auth::AUTH_KEY_ALGO..auth::AUTH_KEY_ALGO + 4]
            .copy_from_slice(&ALGO_ECDSA_P384_SHA384.to_le_bytes());
        id_auth[auth::ID_KEY_SIG..auth::ID_KEY_SIG + SIGNATURE_LEN]
            .copy_from_slice(&sign(author, &id_pub)?);
        let author_pub = public_key_bytes(author.verifying_key());
        id_auth[auth::AUTHOR_KEY..auth::AUTHOR_KEY + PUBLIC_KEY_LEN].copy_from_slice(&author_pub);
        author_key_digest = Some(sha384(&author_pub));
    }
    Ok(SignedIdBlock {
        id_block,
        id_auth,
        id_key_digest: sha384(&id_pub),
        author_key_digest,
    })
}

/// Checks an ID block / ID auth pair the way the firmware does (signatures,
/// algorithms, curve); `author` says whether the author fields must verify.
pub fn verify_id_auth(id_block: &[u8], id_auth: &[u8], author: bool) -> Result<(), &'static str> {
    if id_block.len() != ID_BLOCK_LEN || id_auth.len() != ID_AUTH_LEN {
        return Err("wrong structure length");
    }
    let algo = |at: usize| {
        u32::from_le_bytes([
            id_auth[at],
            id_auth[at + 1],
            id_auth[at + 2],
            id_auth[at + 3],
        ])
    };
    if algo(auth::ID_KEY_ALGO) != ALGO_ECDSA_P384_SHA384 {
        return Err("ID_KEY_ALGO is not ECDSA P-384 SHA-384");
    }
    let id_pub = &id_auth[auth::ID_KEY..auth::ID_KEY + PUBLIC_KEY_LEN];
    let id_key = parse_public_key(id_pub).ok_or("ID_KEY is not a P-384 public key")?;
    if !verify(&id_key, id_block, &id_auth[auth::ID_BLOCK_SIG..]) {
        return Err("ID_BLOCK_SIG does not verify");
    }
    if author {
        if algo(auth::AUTH_KEY_ALGO) != ALGO_ECDSA_P384_SHA384 {
            return Err("AUTH_KEY_ALGO is not ECDSA P-384 SHA-384");
        }
        let author_key = parse_public_key(&id_auth[auth::AUTHOR_KEY..])
            .ok_or("AUTHOR_KEY is not a P-384 public key")?;
        if !verify(&author_key, id_pub, &id_auth[auth::ID_KEY_SIG..]) {
            return Err("ID_KEY_SIG does not verify");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_block_layout() {
        let mut b = IdBlock::new([0xab; 48]);
        b.family_id = [1; 16];
        b.image_id = [2; 16];
        b.guest_svn = 7;
        let raw = b.to_bytes();
        assert_eq!(&raw[..48], &[0xab; 48]);
        assert_eq!(&raw[0x30..0x40], &[1; 16]);
        assert_eq!(&raw[0x40..0x50], &[2; 16]);
        assert_eq!(&raw[0x50..0x54], &[1, 0, 0, 0]);
        assert_eq!(&raw[0x54..0x58], &[7, 0, 0, 0]);
        assert_eq!(&raw[0x58..0x60], &[0, 0, 3, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let (id, pem) = generate_key().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let again = parse_key_pem(&pem, "mem").unwrap();
        assert_eq!(again.verifying_key(), id.verifying_key());
        let (author, _) = generate_key().unwrap();
        let signed = sign_id_block(&IdBlock::new([3; 48]), &id, Some(&author)).unwrap();
        assert_eq!(signed.id_auth.len(), ID_AUTH_LEN);
        verify_id_auth(&signed.id_block, &signed.id_auth, true).unwrap();
        assert_eq!(signed.id_key_digest, key_digest(id.verifying_key()));
        // A flipped bit in the block breaks the signature.
        let mut bad = signed.id_block;
        bad[0] ^= 1;
        assert_eq!(
            verify_id_auth(&bad, &signed.id_auth, true),
            Err("ID_BLOCK_SIG does not verify")
        );
        // Without an author key the author fields stay zero.
        let plain = sign_id_block(&IdBlock::new([3; 48]), &id, None).unwrap();
        assert!(
            plain.id_auth[auth::AUTH_KEY_ALGO..auth::ID_BLOCK_SIG]
                .iter()
                .all(|&b| b == 0)
        );
        assert!(plain.id_auth[auth::ID_KEY_SIG..].iter().all(|&b| b == 0));
        assert!(plain.author_key_digest.is_none());
        verify_id_auth(&plain.id_block, &plain.id_auth, false).unwrap();
        assert!(verify_id_auth(&plain.id_block, &plain.id_auth, true).is_err());
    }

    #[test]
    fn bad_keys_are_reported() {
        assert!(matches!(
            parse_key_pem("hello", "x"),
            Err(KeyError::NotPem { .. })
        ));
        assert!(matches!(
            parse_key_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "x"
            ),
            Err(KeyError::NotP384 { .. })
        ));
        assert!(matches!(
            parse_key_pem(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "x"
            ),
            Err(KeyError::Encrypted { .. })
        ));
        assert!(matches!(
            load_key(Path::new("/nonexistent/vellum-key.pem")),
            Err(KeyError::Read { .. })
        ));
    }
}
