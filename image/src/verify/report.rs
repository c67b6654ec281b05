//! The SEV-SNP attestation report: field offsets and the signature field.
//!
//! Layout: SNP ABI (AMD 56860) Table 23 "ATTESTATION_REPORT Structure",
//! `docs/snp-reference.md` §5.4 "Attestation report layout" (a test checks
//! these offsets against that table). All integers are little-endian.
#![forbid(unsafe_code)]

use p384::FieldBytes;
use p384::ecdsa::Signature;

/// Size of a report (versions 2, 3 and 5).
pub const REPORT_LEN: usize = 0x4A0;

/// Byte offsets (and lengths, `*_LEN`) of the fields the verifier reads.
pub mod off {
    /// u32 report version.
    pub const VERSION: usize = 0x00;
    /// u32 guest SVN.
    pub const GUEST_SVN: usize = 0x04;
    /// u64 guest policy.
    pub const POLICY: usize = 0x08;
    /// 16-byte family ID.
    pub const FAMILY_ID: usize = 0x10;
    /// 16-byte image ID.
    pub const IMAGE_ID: usize = 0x20;
    /// u32 VMPL of the request.
    pub const VMPL: usize = 0x30;
    /// u32 signature algorithm.
    pub const SIGNATURE_ALGO: usize = 0x34;
    /// u64 current TCB.
    pub const CURRENT_TCB: usize = 0x38;
    /// u64 platform info.
    pub const PLATFORM_INFO: usize = 0x40;
    /// u32 flags: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_ID, bits 2..4 SIGNING_KEY.
    pub const FLAGS: usize = 0x48;
    /// 64-byte REPORT_DATA supplied by the guest.
    pub const REPORT_DATA: usize = 0x50;
    /// Length of REPORT_DATA.
    pub const REPORT_DATA_LEN: usize = 64;
    /// 48-byte launch MEASUREMENT.
    pub const MEASUREMENT: usize = 0x90;
    /// Length of MEASUREMENT.
    pub const MEASUREMENT_LEN: usize = 48;
    /// 32-byte HOST_DATA.
    pub const HOST_DATA: usize = 0xC0;
    /// 48-byte ID_KEY_DIGEST.
    pub const ID_KEY_DIGEST: usize = 0xE0;
    /// 48-byte AUTHOR_KEY_DIGEST.
    pub const AUTHOR_KEY_DIGEST: usize = 0x110;
    /// 32-byte REPORT_ID.
    pub const REPORT_ID: usize = 0x140;
    /// u64 REPORTED_TCB (the TCB the VCEK is derived for).
    pub const REPORTED_TCB: usize = 0x180;
    /// 64-byte CHIP_ID.
    pub const CHIP_ID: usize = 0x1A0;
    /// Length of CHIP_ID.
    pub const CHIP_ID_LEN: usize = 64;
    /// u64 COMMITTED_TCB.
    pub const COMMITTED_TCB: usize = 0x1E0;
    /// u64 LAUNCH_TCB.
    pub const LAUNCH_TCB: usize = 0x1F0;
    /// Start of the signature; the signed bytes are `[0, SIGNATURE)`.
    pub const SIGNATURE: usize = 0x2A0;
    /// Signature R: 72 bytes little-endian.
    pub const SIG_R: usize = 0x2A0;
    /// Signature S: 72 bytes little-endian.
    pub const SIG_S: usize = 0x2E8;
    /// Length of R and S fields.
    pub const SIG_PARAM_LEN: usize = 72;
}

/// Policy bit 17: reserved, must be one.
pub const POLICY_RESERVED_ONE: u64 = 1 << 17;
/// Policy bit 19: DEBUG allowed.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Policy bit 16: SMT allowed.
pub const POLICY_SMT: u64 = 1 << 16;
/// Policy bit 18: MIGRATE_MA allowed.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;
/// Policy bit 20: SINGLE_SOCKET required.
pub const POLICY_SINGLE_SOCKET: u64 = 1 << 20;
/// Signature algorithm 1: ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Flags bit 1: CHIP_ID is masked (zero).
pub const FLAG_MASK_CHIP_ID: u32 = 1 << 1;

/// A report, length-checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    bytes: [u8; REPORT_LEN],
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version())
            .field("policy", &format_args!("{:#x}", self.policy()))
            .field("vmpl", &self.vmpl())
            .finish_non_exhaustive()
    }
}

impl Report {
    /// `None` unless `bytes` is exactly [`REPORT_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            bytes: bytes.try_into().ok()?,
        })
    }

    /// The raw 1184 bytes.
    pub fn bytes(&self) -> &[u8; REPORT_LEN] {
        &self.bytes
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[at..at + 4]);
        u32::from_le_bytes(b)
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(b)
    }

    /// Report version (2, 3 or 5 today).
    pub fn version(&self) -> u32 {
        self.u32_at(off::VERSION)
    }
    /// Guest SVN.
    pub fn guest_svn(&self) -> u32 {
        self.u32_at(off::GUEST_SVN)
    }
    /// Guest policy.
    pub fn policy(&self) -> u64 {
        self.u64_at(off::POLICY)
    }
    /// VMPL the report was requested at.
    pub fn vmpl(&self) -> u32 {
        self.u32_at(off::VMPL)
    }
    /// Signature algorithm.
    pub fn signature_algo(&self) -> u32 {
        self.u32_at(off::SIGNATURE_ALGO)
    }
    /// Flags word.
    pub fn flags(&self) -> u32 {
        self.u32_at(off::FLAGS)
    }
    /// Which key signed: 0 = VCEK, 1 = VLEK, 7 = none.
    pub fn signing_key(&self) -> u32 {
        (self.flags() >> 2) & 7
    }
    /// REPORTED_TCB.
    pub fn reported_tcb(&self) -> u64 {
        self.u64_at(off::REPORTED_TCB)
    }
    /// CURRENT_TCB.
    pub fn current_tcb(&self) -> u64 {
        self.u64_at(off::CURRENT_TCB)
    }
    /// REPORT_DATA.
    pub fn report_data(&self) -> &[u8] {
        &self.bytes[off::REPORT_DATA..off::REPORT_DATA + off::REPORT_DATA_LEN]
    }
    /// MEASUREMENT.
    pub fn measurement(&self) -> &[u8] {
        &self.bytes[off::MEASUREMENT..off::MEASUREMENT + off::MEASUREMENT_LEN]
    }
    /// HOST_DATA.
    pub fn host_data(&self) -> &[u8] {
        &self.bytes[off::HOST_DATA..off::HOST_DATA + 32]
    }
    /// CHIP_ID.
    pub fn chip_id(&self) -> &[u8] {
        &self.bytes[off::CHIP_ID..off::CHIP_ID + off::CHIP_ID_LEN]
    }
    /// The signed bytes, `[0, 0x2A0)`.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..off::SIGNATURE]
    }

    /// The ECDSA signature from the R and S fields (72-byte little-endian
    /// each; only the low 48 bytes may be non-zero).
    pub fn signature(&self) -> Result<Signature, String> {
        let r = le_param(&self.bytes[off::SIG_R..off::SIG_R + off::SIG_PARAM_LEN])
            .ok_or("signature R has non-zero bytes above the low 48")?;
        let s = le_param(&self.bytes[off::SIG_S..off::SIG_S + off::SIG_PARAM_LEN])
            .ok_or("signature S has non-zero bytes above the low 48")?;
        Signature::from_scalars(r, s)
            .map_err(|_| "signature R or S is zero or not below the P-384 order".to_string())
    }
}

/// A 72-byte little-endian field as a 48-byte big-endian scalar, `None` if any
/// of the upper 24 bytes is non-zero.
fn le_param(field: &[u8]) -> Option<FieldBytes> {
    if field[48..].iter().any(|&b| b != 0) {
        return None;
    }
    let mut be = FieldBytes::default();
    for (dst, src) in be.iter_mut().zip(field[..48].iter().rev()) {
        *dst = *src;
    }
    Some(be)
}

/// Names of the policy bits that are set, for display.
pub fn policy_names(policy: u64) -> String {
    let mut v = vec![format!("ABI {}.{}", (policy >> 8) & 0xff, policy & 0xff)];
    for (bit, name) in [
        (POLICY_SMT, "SMT"),
        (POLICY_MIGRATE_MA, "MIGRATE_MA"),
        (POLICY_DEBUG, "DEBUG"),
        (POLICY_SINGLE_SOCKET, "SINGLE_SOCKET"),
    ] {
        if policy & bit != 0 {
            v.push(name.to_string());
        }
    }
    v.join(", ")
}
