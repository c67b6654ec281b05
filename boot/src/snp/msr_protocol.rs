//! The GHCB MSR protocol: requests and validated responses.
//!
//! The guest writes a request into MSR `0xC001_0130` (GHCB MSR), executes
//! VMGEXIT, and reads the response back from the same MSR. Bits `[11:0]` are
//! GHCBInfo (the request/response code), bits `[63:12]` GHCBData.
//!
//! Sources: AMD GHCB spec 56421 §2.3.1 "GHCB MSR Protocol" and its table of
//! MSR-protocol requests; Linux `arch/x86/include/asm/sev-common.h`
//! (`GHCB_MSR_*`, `GHCB_SEV_TERM_REASON`, `SEV_TERM_SET_*`, `GHCB_TERM_*`); KVM
//! `arch/x86/kvm/svm/sev.c` `sev_handle_vmgexit_msr_protocol` (which echoes the
//! request's CPUID register field and writes zeros to reserved bits); Oak
//! `oak_sev_guest/src/msr.rs` (reserved-bit checks on CPUID/PSC responses);
//! reference §4 "GHCB MSR 0xC0010130 protocol".
//!
//! Everything the hypervisor returns is hostile: every decoder checks the
//! response code, reserved bits and any value the request asked it to echo.

use super::PageState;

/// The GHCB MSR (`MSR_AMD64_SEV_ES_GHCB`, Linux `msr-index.h`).
pub const GHCB_MSR: u32 = 0xC001_0130;
/// GHCBInfo field: bits `[11:0]`.
pub const INFO_MASK: u64 = 0xFFF;
/// GHCBData field: bits `[63:12]`.
pub const DATA_SHIFT: u32 = 12;

/// The GHCB protocol version Vellum speaks (SNP requires ≥ 2; GHCB spec §2.2,
/// Linux `GHCB_PROTOCOL_MAX`).
pub const PROTOCOL_VERSION: u16 = 2;

/// GHCBInfo request and response codes (GHCB spec §2.3.1; Linux `sev-common.h`).
pub mod code {
    /// SEV information response.
    pub const SEV_INFO_RESP: u64 = 0x001;
    /// SEV information request.
    pub const SEV_INFO_REQ: u64 = 0x002;
    /// CPUID request.
    pub const CPUID_REQ: u64 = 0x004;
    /// CPUID response.
    pub const CPUID_RESP: u64 = 0x005;
    /// AP reset hold request.
    pub const AP_RESET_HOLD_REQ: u64 = 0x006;
    /// AP reset hold response.
    pub const AP_RESET_HOLD_RESP: u64 = 0x007;
    /// Preferred GHCB GPA request.
    pub const PREFERRED_GHCB_REQ: u64 = 0x010;
    /// Preferred GHCB GPA response.
    pub const PREFERRED_GHCB_RESP: u64 = 0x011;
    /// Register GHCB GPA request.
    pub const REGISTER_GHCB_REQ: u64 = 0x012;
    /// Register GHCB GPA response.
    pub const REGISTER_GHCB_RESP: u64 = 0x013;
    /// SNP page state change request.
    pub const PSC_REQ: u64 = 0x014;
    /// SNP page state change response.
    pub const PSC_RESP: u64 = 0x015;
    /// Hypervisor feature support request.
    pub const HV_FEATURES_REQ: u64 = 0x080;
    /// Hypervisor feature support response.
    pub const HV_FEATURES_RESP: u64 = 0x081;
    /// Termination request (no response: the guest is gone).
    pub const TERMINATE_REQ: u64 = 0x100;
}

/// Largest GFN the register-GHCB request can carry (`[63:12]`, 52 bits).
pub const MAX_GHCB_GFN: u64 = (1 << 52) - 1;
/// The register-GHCB response GFN meaning "refused" (all ones, GHCB spec §2.3.1).
pub const GFN_REFUSED: u64 = MAX_GHCB_GFN;
/// Largest GFN the MSR-protocol PSC request can carry (`[51:12]`, 40 bits).
pub const MAX_PSC_GFN: u64 = (1 << 40) - 1;

/// Why a request could not be encoded or a response was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MsrProtocolError {
    /// GHCBInfo is not the response code the request calls for.
    WrongResponse {
        /// The response code expected.
        expected: u64,
        /// GHCBInfo as read.
        got: u64,
    },
    /// A reserved (must-be-zero) bit of the response is set.
    ReservedBitsSet(u64),
    /// The CPUID response names another register than the one asked for.
    RegisterMismatch {
        /// Asked for.
        expected: CpuidReg,
        /// Echoed.
        got: CpuidReg,
    },
    /// The hypervisor's protocol range does not include [`PROTOCOL_VERSION`].
    ProtocolUnsupported {
        /// Lowest version the hypervisor speaks.
        min: u16,
        /// Highest version the hypervisor speaks.
        max: u16,
    },
    /// A GFN argument does not fit its field.
    GfnOutOfRange(u64),
    /// The hypervisor refused the GHCB registration (all-ones GFN).
    RegistrationRefused,
    /// The registration response echoes another GFN.
    GfnMismatch {
        /// Registered.
        expected: u64,
        /// Echoed.
        got: u64,
    },
    /// The PSC response carries a non-zero error code.
    PscFailed(u32),
    /// The hypervisor does not offer SNP (HV features bit 0 clear).
    SnpUnsupported,
}

type Result<T> = core::result::Result<T, MsrProtocolError>;

fn expect_code(raw: u64, expected: u64) -> Result<()> {
    let got = raw & INFO_MASK;
    if got != expected {
        return Err(MsrProtocolError::WrongResponse { expected, got });
    }
    Ok(())
}

fn expect_zero(raw: u64, reserved_mask: u64) -> Result<()> {
    if raw & reserved_mask != 0 {
        return Err(MsrProtocolError::ReservedBitsSet(raw & reserved_mask));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// SEV information (0x002 / 0x001)

/// The SEV information request (0x002).
pub const fn sev_info_request() -> u64 {
    code::SEV_INFO_REQ
}

/// The SEV information response (0x001): `[63:48]` max protocol, `[47:32]` min
/// protocol, `[31:24]` C-bit position, `[23:12]` reserved.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SevInfo {
    /// Highest GHCB protocol version the hypervisor supports.
    pub max_protocol: u16,
    /// Lowest GHCB protocol version the hypervisor supports.
    pub min_protocol: u16,
    /// C-bit position as the hypervisor claims it (untrusted: check it against
    /// [`super::cpuid::CpuidPage::c_bit`]).
    pub c_bit: u8,
}

impl SevInfo {
    /// Checks that the hypervisor speaks [`PROTOCOL_VERSION`] (SNP needs ≥ 2).
    pub fn check_protocol(&self) -> Result<u16> {
        if self.min_protocol <= PROTOCOL_VERSION && PROTOCOL_VERSION <= self.max_protocol {
            Ok(PROTOCOL_VERSION)
        } else {
            Err(MsrProtocolError::ProtocolUnsupported {
                min: self.min_protocol,
                max: self.max_protocol,
            })
        }
    }
}

impl TryFrom<u64> for SevInfo {
    type Error = MsrProtocolError;

    fn try_from(raw: u64) -> Result<Self> {
        expect_code(raw, code::SEV_INFO_RESP)?;
        expect_zero(raw, 0x00FF_F000)?;
        Ok(SevInfo {
            max_protocol: (raw >> 48) as u16,
            min_protocol: (raw >> 32) as u16,
            c_bit: (raw >> 24) as u8,
        })
    }
}

// ---------------------------------------------------------------------------
// CPUID (0x004 / 0x005)

/// The register a CPUID MSR-protocol request asks for (`[31:30]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum CpuidReg {
    /// EAX (0).
    Eax = 0,
    /// EBX (1).
    Ebx = 1,
    /// ECX (2).
    Ecx = 2,
    /// EDX (3).
    Edx = 3,
}

impl CpuidReg {
    /// All four, in request order.
    pub const ALL: [CpuidReg; 4] = [CpuidReg::Eax, CpuidReg::Ebx, CpuidReg::Ecx, CpuidReg::Edx];

    const fn from_bits(b: u64) -> CpuidReg {
        match b & 3 {
            0 => CpuidReg::Eax,
            1 => CpuidReg::Ebx,
            2 => CpuidReg::Ecx,
            _ => CpuidReg::Edx,
        }
    }
}

/// CPUID request (0x004): `[63:32]` leaf, `[31:30]` register. The protocol has
/// no sub-leaf: the hypervisor answers for ECX = 0.
pub const fn cpuid_request(leaf: u32, reg: CpuidReg) -> u64 {
    ((leaf as u64) << 32) | ((reg as u64) << 30) | code::CPUID_REQ
}

/// Decodes a CPUID response (0x005): `[63:32]` value, `[31:30]` the register
/// echoed, `[29:12]` reserved (zero).
pub fn decode_cpuid_response(raw: u64, expected: CpuidReg) -> Result<u32> {
    expect_code(raw, code::CPUID_RESP)?;
    expect_zero(raw, 0x3FFF_F000)?;
    let got = CpuidReg::from_bits(raw >> 30);
    if got != expected {
        return Err(MsrProtocolError::RegisterMismatch { expected, got });
    }
    Ok((raw >> 32) as u32)
}

// ---------------------------------------------------------------------------
// AP reset hold (0x006 / 0x007)

/// AP reset hold request (0x006).
pub const fn ap_reset_hold_request() -> u64 {
    code::AP_RESET_HOLD_REQ
}

/// Decodes the AP reset hold response (0x007): `true` when `[63:12]` is
/// non-zero (the AP was woken by a SIPI), `false` when the hold simply ended
/// and the AP must issue the request again (GHCB spec §2.3.1; KVM
/// `sev_vcpu_deliver_sipi_vector`; reference §1.6).
pub fn decode_ap_reset_hold_response(raw: u64) -> Result<bool> {
    expect_code(raw, code::AP_RESET_HOLD_RESP)?;
    Ok(raw >> DATA_SHIFT != 0)
}

// ---------------------------------------------------------------------------
// Preferred GHCB GPA (0x010 / 0x011)

/// Preferred GHCB GPA request (0x010).
pub const fn preferred_ghcb_request() -> u64 {
    code::PREFERRED_GHCB_REQ
}

/// Decodes the preferred-GHCB response (0x011): `Some(gfn)`, or `None` when the
/// hypervisor has no preference (all-ones GFN). A preferred GFN is a hint
/// only: the guest must check it is not private memory it uses.
pub fn decode_preferred_ghcb_response(raw: u64) -> Result<Option<u64>> {
    expect_code(raw, code::PREFERRED_GHCB_RESP)?;
    let gfn = raw >> DATA_SHIFT;
    Ok(if gfn == GFN_REFUSED { None } else { Some(gfn) })
}

// ---------------------------------------------------------------------------
// Register GHCB (0x012 / 0x013)

/// Register-GHCB request (0x012): `[63:12]` = GFN of the GHCB page.
pub fn register_ghcb_request(gfn: u64) -> Result<u64> {
    if gfn > MAX_GHCB_GFN || gfn == GFN_REFUSED {
        return Err(MsrProtocolError::GfnOutOfRange(gfn));
    }
    Ok((gfn << DATA_SHIFT) | code::REGISTER_GHCB_REQ)
}

/// Decodes the register-GHCB response (0x013): it must echo `gfn`; all ones
/// means refused.
pub fn decode_register_ghcb_response(raw: u64, gfn: u64) -> Result<()> {
    expect_code(raw, code::REGISTER_GHCB_RESP)?;
    let got = raw >> DATA_SHIFT;
    if got == GFN_REFUSED {
        return Err(MsrProtocolError::RegistrationRefused);
    }
    if got != gfn {
        return Err(MsrProtocolError::GfnMismatch { expected: gfn, got });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Page state change (0x014 / 0x015)

/// MSR-protocol PSC request (0x014): `[51:12]` GFN, `[55:52]` operation
/// (1 private, 2 shared), `[63:56]` reserved. One 4 KiB page per request.
pub fn psc_request(gfn: u64, op: PageState) -> Result<u64> {
    if gfn > MAX_PSC_GFN {
        return Err(MsrProtocolError::GfnOutOfRange(gfn));
    }
    Ok(((op as u64) << 52) | (gfn << DATA_SHIFT) | code::PSC_REQ)
}

/// Decodes the PSC response (0x015): `[63:32]` error (0 = success), `[31:12]`
/// reserved (zero; KVM `snp_complete_psc_msr` writes exactly `ret << 32 | 0x015`).
pub fn decode_psc_response(raw: u64) -> Result<()> {
    expect_code(raw, code::PSC_RESP)?;
    expect_zero(raw, 0xFFFF_F000)?;
    match (raw >> 32) as u32 {
        0 => Ok(()),
        e => Err(MsrProtocolError::PscFailed(e)),
    }
}

// ---------------------------------------------------------------------------
// Hypervisor features (0x080 / 0x081)

/// Hypervisor-features request (0x080).
pub const fn hv_features_request() -> u64 {
    code::HV_FEATURES_REQ
}

/// The hypervisor feature bitmap (MSR response `[63:12]`, or SW_EXITINFO2 of
/// the HV-features NAE; GHCB spec §2.3.1 / §4.1.x; Linux `GHCB_HV_FT_*`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HvFeatures(pub u64);

impl HvFeatures {
    /// Bit 0: SEV-SNP.
    pub const SNP: u64 = 1 << 0;
    /// Bit 1: SNP AP creation.
    pub const SNP_AP_CREATION: u64 = 1 << 1;
    /// Bit 2: SNP restricted injection.
    pub const SNP_RESTRICTED_INJECTION: u64 = 1 << 2;
    /// Bit 3: SNP restricted injection timer.
    pub const SNP_RESTRICTED_INJECTION_TIMER: u64 = 1 << 3;

    /// Whether `bit` (one of the consts) is offered.
    pub const fn has(&self, bit: u64) -> bool {
        self.0 & bit == bit
    }

    /// Ok if SNP is offered (an SNP guest must check this; reference §4).
    pub fn require_snp(&self) -> Result<()> {
        if self.has(Self::SNP) {
            Ok(())
        } else {
            Err(MsrProtocolError::SnpUnsupported)
        }
    }
}

impl TryFrom<u64> for HvFeatures {
    type Error = MsrProtocolError;

    fn try_from(raw: u64) -> Result<Self> {
        expect_code(raw, code::HV_FEATURES_RESP)?;
        Ok(HvFeatures(raw >> DATA_SHIFT))
    }
}

// ---------------------------------------------------------------------------
// Termination (0x100)

/// A termination reason: `[15:12]` reason-code set, `[23:16]` reason code
/// (GHCB spec 56421 §2.3.1, MSR protocol 0x100; the same two fields are
/// SW_EXITINFO1 `[3:0]` and `[11:4]` of the termination NAE 0x8000_FFFE).
///
/// Two sets are used, so that a host log tells a Vellum guest from a Linux one:
///
/// * **Set 0** is the GHCB spec's general set (Linux `SEV_TERM_SET_GEN`):
///   0 general request, 1 GHCB protocol range unsupported, 2 SEV-SNP features
///   unsupported. Vellum uses it exactly where those meanings apply.
/// * **Set 0xF** ([`TerminateReason::VELLUM_SET`]) is Vellum's own. Set 1 is
///   Linux's (`SEV_TERM_SET_LINUX`, "Linux-specific reason codes (used with
///   reason set 1)" in `arch/x86/include/asm/sev-common.h`), so Vellum stays
///   out of it; the set field is 4 bits and the spec gives meanings to set 0
///   only (its wording on sets 1..15 was not re-verified here), so Vellum
///   takes the top one, the least likely to be claimed by another guest OS.
///   Where a Vellum reason means the same as a Linux `GHCB_TERM_*` code it
///   keeps that number (0..5), so the two tables read alike; Vellum's other
///   reasons start at 0x10.
///
/// `docs/snp-termination.md` is the table for reading a host's log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TerminateReason {
    /// Reason-code set (4 bits).
    pub set: u8,
    /// Reason code (8 bits).
    pub code: u8,
}

impl TerminateReason {
    /// The GHCB spec's general reason-code set.
    pub const GENERAL_SET: u8 = 0;
    /// Vellum's reason-code set.
    pub const VELLUM_SET: u8 = 0xF;

    const fn vellum(code: u8) -> Self {
        Self {
            set: Self::VELLUM_SET,
            code,
        }
    }

    /// Set 0, code 0: general termination request (boot's fatal errors before
    /// the kernel, an exception in 32-bit boot code).
    pub const GENERAL: Self = Self { set: 0, code: 0 };
    /// Set 0, code 1: GHCB protocol range not supported.
    pub const PROTOCOL_UNSUPPORTED: Self = Self { set: 0, code: 1 };
    /// Set 0, code 2: SEV-SNP features not supported: the hypervisor does not
    /// offer SNP (HV features bit 0), the guest runs SEV-ES without SNP, or
    /// SEV_STATUS has a feature bit Vellum does not implement (as Linux
    /// `snp_check_features`).
    pub const SNP_UNSUPPORTED: Self = Self { set: 0, code: 2 };
    /// Set 0xF, code 0: GHCB GPA registration failed (as Linux `GHCB_TERM_REGISTER`).
    pub const REGISTER: Self = Self::vellum(0);
    /// Set 0xF, code 1: page state change failed or the hypervisor's PSC
    /// progress was inconsistent (as Linux `GHCB_TERM_PSC`).
    pub const PSC: Self = Self::vellum(1);
    /// Set 0xF, code 2: PVALIDATE failed, or double validation (as Linux
    /// `GHCB_TERM_PVALIDATE`).
    pub const PVALIDATE: Self = Self::vellum(2);
    /// Set 0xF, code 3: not running at VMPL0 (RMPADJUST probe failed; as
    /// Linux `GHCB_TERM_NOT_VMPL0`).
    pub const NOT_VMPL0: Self = Self::vellum(3);
    /// Set 0xF, code 4: CPUID page invalid or a leaf missing (as Linux
    /// `GHCB_TERM_CPUID`).
    pub const CPUID: Self = Self::vellum(4);
    /// Set 0xF, code 5: CPUID through the hypervisor failed (as Linux
    /// `GHCB_TERM_CPUID_HV`).
    pub const CPUID_HV: Self = Self::vellum(5);
    /// Set 0xF, code 0x10: a GHCB NAE call returned a bad status or missing
    /// valid bits.
    pub const GHCB_PROTOCOL: Self = Self::vellum(0x10);
    /// Set 0xF, code 0x11: an unexpected #VC (wrong exit code or opcode).
    pub const UNEXPECTED_VC: Self = Self::vellum(0x11);
    /// Set 0xF, code 0x12: the C-bit from the hypervisor disagrees with the
    /// CPUID page.
    pub const C_BIT_MISMATCH: Self = Self::vellum(0x12);
    /// Set 0xF, code 0x14: boot's memory plan or validated set is
    /// inconsistent.
    pub const VALIDATION_PLAN: Self = Self::vellum(0x14);
    /// Set 0xF, code 0x15: the GHCB was needed while a call through it was in
    /// flight (a #VC inside a GHCB call).
    pub const GHCB_REENTERED: Self = Self::vellum(0x15);
    /// Set 0xF, code 0x16: a Rust panic (boot or kernel), after the message
    /// was printed when the console was up.
    pub const PANIC: Self = Self::vellum(0x16);
    /// Set 0xF, code 0x17: #VC 0x404 (PAGE_NOT_VALIDATED): a private access hit
    /// a page whose RMP entry is no longer validated (the host took a page
    /// away and gave it back).
    pub const NOT_VALIDATED: Self = Self::vellum(0x17);

    /// Every reason Vellum uses (for tests and the documentation table).
    pub const ALL: [Self; 16] = [
        Self::GENERAL,
        Self::PROTOCOL_UNSUPPORTED,
        Self::SNP_UNSUPPORTED,
        Self::REGISTER,
        Self::PSC,
        Self::PVALIDATE,
        Self::NOT_VMPL0,
        Self::CPUID,
        Self::CPUID_HV,
        Self::GHCB_PROTOCOL,
        Self::UNEXPECTED_VC,
        Self::C_BIT_MISMATCH,
        Self::VALIDATION_PLAN,
        Self::GHCB_REENTERED,
        Self::PANIC,
        Self::NOT_VALIDATED,
    ];
}

/// Termination request (0x100) with `reason`. The set is masked to 4 bits.
pub const fn terminate_request(reason: TerminateReason) -> u64 {
    (((reason.code as u64) & 0xFF) << 16)
        | (((reason.set as u64) & 0xF) << 12)
        | code::TERMINATE_REQ
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encodings_match_the_spec_table() {
        assert_eq!(GHCB_MSR, 0xC001_0130);
        assert_eq!(sev_info_request(), 0x002);
        assert_eq!(ap_reset_hold_request(), 0x006);
        assert_eq!(preferred_ghcb_request(), 0x010);
        assert_eq!(hv_features_request(), 0x080);
        // CPUID: leaf 0x8000_001F, EBX -> 0x8000_001F_4000_0004.
        assert_eq!(
            cpuid_request(0x8000_001F, CpuidReg::Ebx),
            0x8000_001F_4000_0004
        );
        assert_eq!(cpuid_request(0, CpuidReg::Eax), 0x004);
        assert_eq!(cpuid_request(1, CpuidReg::Ecx), 0x1_8000_0004);
        assert_eq!(
            cpuid_request(0x4000_0000, CpuidReg::Edx),
            0x4000_0000_C000_0004
        );
        // Register GHCB at GPA 0x9_F000 (GFN 0x9F) -> 0x9_F012.
        assert_eq!(register_ghcb_request(0x9F), Ok(0x9_F012));
        assert_eq!(
            register_ghcb_request(MAX_GHCB_GFN - 1),
            Ok(0xFFFF_FFFF_FFFF_E012)
        );
        assert_eq!(
            register_ghcb_request(GFN_REFUSED),
            Err(MsrProtocolError::GfnOutOfRange(GFN_REFUSED))
        );
        assert_eq!(
            register_ghcb_request(1 << 52),
            Err(MsrProtocolError::GfnOutOfRange(1 << 52))
        );
        // PSC: GFN 0x123, private -> 0x0010_0000_0012_3014; shared -> 0x0020_...
        assert_eq!(
            psc_request(0x123, PageState::Private),
            Ok(0x0010_0000_0012_3014)
        );
        assert_eq!(
            psc_request(0x123, PageState::Shared),
            Ok(0x0020_0000_0012_3014)
        );
        assert_eq!(
            psc_request(MAX_PSC_GFN, PageState::Shared),
            Ok(0x002F_FFFF_FFFF_F014)
        );
        assert_eq!(
            psc_request(MAX_PSC_GFN + 1, PageState::Private),
            Err(MsrProtocolError::GfnOutOfRange(1 << 40))
        );
    }

    #[test]
    fn terminate_encodings() {
        // Set 0: the GHCB spec's general codes, as Linux sends them
        // (sev_es_terminate(SEV_TERM_SET_GEN, GHCB_SNP_UNSUPPORTED) = 0x2_0100).
        assert_eq!(terminate_request(TerminateReason::GENERAL), 0x100);
        assert_eq!(
            terminate_request(TerminateReason::PROTOCOL_UNSUPPORTED),
            0x1_0100
        );
        assert_eq!(
            terminate_request(TerminateReason::SNP_UNSUPPORTED),
            0x2_0100
        );
        // Set 0xF: Vellum's; Linux's numbers where the meaning is Linux's.
        assert_eq!(terminate_request(TerminateReason::REGISTER), 0xF100);
        assert_eq!(terminate_request(TerminateReason::PSC), 0x1_F100);
        assert_eq!(terminate_request(TerminateReason::PVALIDATE), 0x2_F100);
        assert_eq!(terminate_request(TerminateReason::NOT_VMPL0), 0x3_F100);
        assert_eq!(terminate_request(TerminateReason::CPUID), 0x4_F100);
        assert_eq!(terminate_request(TerminateReason::CPUID_HV), 0x5_F100);
        assert_eq!(terminate_request(TerminateReason::GHCB_PROTOCOL), 0x10_F100);
        assert_eq!(terminate_request(TerminateReason::UNEXPECTED_VC), 0x11_F100);
        assert_eq!(
            terminate_request(TerminateReason::C_BIT_MISMATCH),
            0x12_F100
        );
        assert_eq!(
            terminate_request(TerminateReason::VALIDATION_PLAN),
            0x14_F100
        );
        assert_eq!(
            terminate_request(TerminateReason::GHCB_REENTERED),
            0x15_F100
        );
        assert_eq!(terminate_request(TerminateReason::PANIC), 0x16_F100);
        assert_eq!(terminate_request(TerminateReason::NOT_VALIDATED), 0x17_F100);
        // Set masked to 4 bits, code to 8.
        assert_eq!(
            terminate_request(TerminateReason {
                set: 0x1F,
                code: 0xFF
            }),
            0xFF_F100
        );
        // Every named reason is distinct; none is in Linux's set 1; set 0 only
        // carries the three general codes the spec defines.
        let all = TerminateReason::ALL;
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a.set, 1, "{a:?} in Linux's set");
            assert!(a.set == 0 || a.set == TerminateReason::VELLUM_SET, "{a:?}");
            if a.set == 0 {
                assert!(a.code <= 2, "{a:?}");
            }
            for b in &all[i + 1..] {
                assert_ne!(terminate_request(*a), terminate_request(*b));
            }
        }
    }

    /// `docs/snp-termination.md` lists every reason with its raw MSR value:
    /// the table and the code agree.
    #[test]
    fn termination_doc_lists_every_reason() {
        let doc = include_str!("../../../docs/snp-termination.md");
        for r in TerminateReason::ALL {
            let row = format!(
                "| {:#x} | {:#04x} | `{:#x}` |",
                r.set,
                r.code,
                terminate_request(r)
            );
            assert!(doc.contains(&row), "docs/snp-termination.md lacks {row}");
        }
    }

    #[test]
    fn sev_info_decoding() {
        // KVM: GHCB_MSR_SEV_INFO(2, 1, 51) = 2<<48 | 1<<32 | 51<<24 | 1.
        let raw = (2u64 << 48) | (1 << 32) | (51 << 24) | 0x001;
        let info = SevInfo::try_from(raw).unwrap();
        assert_eq!(
            info,
            SevInfo {
                max_protocol: 2,
                min_protocol: 1,
                c_bit: 51
            }
        );
        assert_eq!(info.check_protocol(), Ok(2));
        // Protocol 1 only: SNP impossible.
        let old = SevInfo::try_from((1u64 << 48) | (1 << 32) | (51 << 24) | 1).unwrap();
        assert_eq!(
            old.check_protocol(),
            Err(MsrProtocolError::ProtocolUnsupported { min: 1, max: 1 })
        );
        // Min above 2.
        let new = SevInfo::try_from((5u64 << 48) | (3 << 32) | 1).unwrap();
        assert!(new.check_protocol().is_err());
        // Wrong code, reserved bits.
        assert_eq!(
            SevInfo::try_from(raw & !0xFFF | 0x005),
            Err(MsrProtocolError::WrongResponse {
                expected: 1,
                got: 5
            })
        );
        assert_eq!(
            SevInfo::try_from(raw | 0x1000),
            Err(MsrProtocolError::ReservedBitsSet(0x1000))
        );
        assert_eq!(
            SevInfo::try_from(raw | 0x80_0000),
            Err(MsrProtocolError::ReservedBitsSet(0x80_0000))
        );
    }

    #[test]
    fn cpuid_response_decoding() {
        // KVM echoes the request with the value in [63:32] and code 0x005.
        // (KVM: set_ghcb_msr_bits(value, [63:32]) and (0x005, [11:0]) on the request.)
        let req = cpuid_request(0x8000_001F, CpuidReg::Ebx);
        let resp = (0x173u64 << 32) | (req & 0xFFFF_F000) | 0x005;
        assert_eq!(decode_cpuid_response(resp, CpuidReg::Ebx), Ok(0x173));
        for reg in CpuidReg::ALL {
            let raw = (0xDEAD_BEEFu64 << 32) | ((reg as u64) << 30) | 0x005;
            assert_eq!(decode_cpuid_response(raw, reg), Ok(0xDEAD_BEEF));
        }
        // Echo of a different register.
        assert_eq!(
            decode_cpuid_response((1u64 << 30) | 0x005, CpuidReg::Eax),
            Err(MsrProtocolError::RegisterMismatch {
                expected: CpuidReg::Eax,
                got: CpuidReg::Ebx
            })
        );
        // Reserved [29:12].
        assert_eq!(
            decode_cpuid_response(0x2000_0005, CpuidReg::Eax),
            Err(MsrProtocolError::ReservedBitsSet(0x2000_0000))
        );
        assert_eq!(
            decode_cpuid_response(0x1005, CpuidReg::Eax),
            Err(MsrProtocolError::ReservedBitsSet(0x1000))
        );
        // The request itself (hypervisor did nothing) is refused.
        assert!(decode_cpuid_response(req, CpuidReg::Ebx).is_err());
    }

    #[test]
    fn ap_reset_hold_decoding() {
        assert_eq!(decode_ap_reset_hold_response(0x1007), Ok(true));
        assert_eq!(
            decode_ap_reset_hold_response(0xFFFF_FFFF_FFFF_F007),
            Ok(true)
        );
        assert_eq!(decode_ap_reset_hold_response(0x007), Ok(false));
        assert!(decode_ap_reset_hold_response(0x1006).is_err());
    }

    #[test]
    fn preferred_ghcb_decoding() {
        assert_eq!(decode_preferred_ghcb_response(0x9_F011), Ok(Some(0x9F)));
        assert_eq!(
            decode_preferred_ghcb_response(0xFFFF_FFFF_FFFF_F011),
            Ok(None)
        );
        assert!(decode_preferred_ghcb_response(0x9_F013).is_err());
    }

    #[test]
    fn register_ghcb_decoding() {
        assert_eq!(decode_register_ghcb_response(0x9_F013, 0x9F), Ok(()));
        assert_eq!(
            decode_register_ghcb_response(0xFFFF_FFFF_FFFF_F013, 0x9F),
            Err(MsrProtocolError::RegistrationRefused)
        );
        assert_eq!(
            decode_register_ghcb_response(0xA_0013, 0x9F),
            Err(MsrProtocolError::GfnMismatch {
                expected: 0x9F,
                got: 0xA0
            })
        );
        // The request left unchanged in the MSR (hypervisor ignored it).
        assert_eq!(
            decode_register_ghcb_response(register_ghcb_request(0x9F).unwrap(), 0x9F),
            Err(MsrProtocolError::WrongResponse {
                expected: 0x013,
                got: 0x012
            })
        );
    }

    #[test]
    fn psc_response_decoding() {
        assert_eq!(decode_psc_response(0x015), Ok(()));
        assert_eq!(
            decode_psc_response((5u64 << 32) | 0x015),
            Err(MsrProtocolError::PscFailed(5))
        );
        assert_eq!(
            decode_psc_response(0x1015),
            Err(MsrProtocolError::ReservedBitsSet(0x1000))
        );
        assert!(decode_psc_response(0x014).is_err());
    }

    #[test]
    fn hv_features_decoding() {
        let f = HvFeatures::try_from(0x3081).unwrap();
        assert_eq!(f, HvFeatures(3));
        assert!(f.has(HvFeatures::SNP));
        assert!(f.has(HvFeatures::SNP_AP_CREATION));
        assert!(!f.has(HvFeatures::SNP_RESTRICTED_INJECTION));
        assert_eq!(f.require_snp(), Ok(()));
        let none = HvFeatures::try_from(0x2081).unwrap();
        assert_eq!(none.require_snp(), Err(MsrProtocolError::SnpUnsupported));
        assert!(HvFeatures::try_from(0x1080).is_err());
        assert_eq!(HvFeatures::SNP_RESTRICTED_INJECTION_TIMER, 8);
    }
}
