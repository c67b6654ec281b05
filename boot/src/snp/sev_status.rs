//! What the guest checks about itself before it trusts anything else: the
//! SEV_STATUS feature bits it runs with, and that it runs at VMPL0.
//!
//! # SEV_STATUS (MSR `0xC001_0131`)
//!
//! Bits 0..2 say SEV, SEV-ES and SEV-SNP are active; bits 3 and up are the
//! SEV features the hypervisor enabled in the VMSA (`SEV_FEATURES` bit `n` is
//! SEV_STATUS bit `n + 2`; AMD APM vol. 2 (24593) §15.34.10 "SEV_STATUS MSR").
//! Some of them change what the guest must do (how #VC and interrupts are
//! delivered, which TSC to trust, whether the C-bit or a vTOM splits memory):
//! a guest that does not implement such a feature but runs with it enabled
//! misbehaves in ways that are hard to see. Linux therefore refuses them
//! (`snp_check_features()` / `snp_get_unsupported_features()` in
//! `arch/x86/boot/compressed/sev.c`, added by commit 8c29f0165405 "x86/sev:
//! Add SEV-SNP guest feature negotiation support", Linux 6.2): it terminates
//! with set 0 / `GHCB_SNP_UNSUPPORTED` when
//! `status & SNP_FEATURES_IMPL_REQ & ~SNP_FEATURES_PRESENT` is non-zero.
//!
//! The bits (Linux `arch/x86/include/asm/msr-index.h`, `MSR_AMD64_SNP_*`):
//!
//! | bit | feature | Linux `SNP_FEATURES_IMPL_REQ` (needs guest code) | Vellum |
//! |---|---|---|---|
//! | 3 | vTOM | yes | refuse |
//! | 4 | ReflectVC | yes | refuse |
//! | 5 | RestrictedInjection | yes | refuse |
//! | 6 | AlternateInjection | yes | refuse |
//! | 7 | DebugSwap | yes (Linux implements it) | refuse |
//! | 8 | PreventHostIBS | no | allow |
//! | 9 | BTBIsolation | no | allow |
//! | 10 | VmplSSS | yes | refuse |
//! | 11 | SecureTSC | yes (Linux implements it) | refuse |
//! | 12 | VMGEXIT parameter | yes | refuse |
//! | 13 | reserved | yes | refuse |
//! | 14 | IBSVirt | no | allow |
//! | 15 | reserved | yes | refuse |
//! | 16 | VMSARegProt | yes | refuse |
//! | 17 | SMTProt | no | allow |
//! | 18 | SecureAVIC | yes (Linux implements it, `CONFIG_AMD_SECURE_AVIC`) | refuse |
//! | 19..22 | reserved | yes | refuse |
//! | 23 | IBPBOnEntry | no (since "x86/sev: Allow IBPB-on-Entry feature for SNP guests", Kim Phillips, 2026; before it, bit 23 was inside the reserved mask) | allow |
//! | 24..63 | reserved | yes (`MSR_AMD64_SNP_RESERVED_MASK`) | refuse |
//!
//! So Vellum (which implements none of the features that need guest code)
//! accepts exactly bits 0..2 and the four/five "no guest code needed"
//! features; anything else terminates with set 0 code 2, as Linux does. The
//! reserved bits are refused on purpose (Linux: "As the behavior of reserved
//! feature bits is unknown to be on the safe side add them to the required
//! features mask").
//!
//! # VMPL0
//!
//! Vellum's guarantees (VMPCK0, PVALIDATE, the attestation report's VMPL)
//! assume it runs at VMPL0, the most privileged level. RMPADJUST (`F3 0F 01
//! FE`) changes the permissions a *less* privileged VMPL has on a page; it
//! fails when the target VMPL is not numerically greater than the current
//! one. So RMPADJUST of a private, validated 4 KiB page with target VMPL 1
//! succeeds only at VMPL0 (Linux `enforce_vmpl0()` / `running_at_vmpl0()` in
//! `arch/x86/boot/compressed/sev.c` and `svsm_setup()`, which terminate with
//! `SEV_TERM_SET_LINUX, GHCB_TERM_NOT_VMPL0` unless an SVSM is present; Vellum
//! supports no SVSM). Inputs: RAX = page VA, RCX = 0 (4 KiB), RDX = attributes
//! (`[7:0]` target VMPL = 1, `[15:8]` permission mask = 0, bit 16 VMSA = 0);
//! EAX = 0 on success (APM vol. 3 (24594) "RMPADJUST": 1 FAIL_INPUT,
//! 2 FAIL_PERMISSION, 6 FAIL_SIZEMISMATCH). Taking VMPL1's access away is
//! harmless: nothing runs at VMPL1.

/// SEV_STATUS MSR number (Linux `MSR_AMD64_SEV`).
pub const SEV_STATUS_MSR: u32 = 0xC001_0131;

/// Bit 0: SEV active.
pub const SEV_ENABLED: u64 = 1 << 0;
/// Bit 1: SEV-ES active.
pub const SEV_ES_ENABLED: u64 = 1 << 1;
/// Bit 2: SEV-SNP active.
pub const SNP_ENABLED: u64 = 1 << 2;

/// SEV_STATUS feature bits (Linux `MSR_AMD64_SNP_*`).
pub mod feature {
    /// Bit 3: virtual top of memory.
    pub const VTOM: u64 = 1 << 3;
    /// Bit 4: #VC reflected to a higher VMPL.
    pub const REFLECT_VC: u64 = 1 << 4;
    /// Bit 5: restricted injection (#HV only).
    pub const RESTRICTED_INJ: u64 = 1 << 5;
    /// Bit 6: alternate injection.
    pub const ALT_INJ: u64 = 1 << 6;
    /// Bit 7: debug-register swap.
    pub const DEBUG_SWAP: u64 = 1 << 7;
    /// Bit 8: prevent host IBS.
    pub const PREVENT_HOST_IBS: u64 = 1 << 8;
    /// Bit 9: BTB isolation.
    pub const BTB_ISOLATION: u64 = 1 << 9;
    /// Bit 10: VMPL supervisor shadow stacks.
    pub const VMPL_SSS: u64 = 1 << 10;
    /// Bit 11: Secure TSC.
    pub const SECURE_TSC: u64 = 1 << 11;
    /// Bit 12: VMGEXIT parameter.
    pub const VMGEXIT_PARAM: u64 = 1 << 12;
    /// Bit 13: reserved.
    pub const RESERVED_BIT13: u64 = 1 << 13;
    /// Bit 14: IBS virtualization.
    pub const IBS_VIRT: u64 = 1 << 14;
    /// Bit 15: reserved.
    pub const RESERVED_BIT15: u64 = 1 << 15;
    /// Bit 16: VMSA register protection.
    pub const VMSA_REG_PROT: u64 = 1 << 16;
    /// Bit 17: SMT protection.
    pub const SMT_PROT: u64 = 1 << 17;
    /// Bit 18: Secure AVIC.
    pub const SECURE_AVIC: u64 = 1 << 18;
    /// Bits 19..22: reserved.
    pub const RESERVED_BITS19_22: u64 = 0xF << 19;
    /// Bit 23: IBPB on entry.
    pub const IBPB_ON_ENTRY: u64 = 1 << 23;
    /// Bits 24..63: reserved.
    pub const RESERVED_MASK: u64 = !((1 << 24) - 1);
}

/// Features that need an implementation in the guest (Linux
/// `SNP_FEATURES_IMPL_REQ`, with the reserved bits 19..22 of the
/// IBPB-on-Entry change).
pub const FEATURES_IMPL_REQ: u64 = feature::VTOM
    | feature::REFLECT_VC
    | feature::RESTRICTED_INJ
    | feature::ALT_INJ
    | feature::DEBUG_SWAP
    | feature::VMPL_SSS
    | feature::SECURE_TSC
    | feature::VMGEXIT_PARAM
    | feature::VMSA_REG_PROT
    | feature::RESERVED_BIT13
    | feature::RESERVED_BIT15
    | feature::SECURE_AVIC
    | feature::RESERVED_BITS19_22
    | feature::RESERVED_MASK;

/// Of [`FEATURES_IMPL_REQ`], what Vellum implements: nothing (Linux's
/// `SNP_FEATURES_PRESENT` has DebugSwap, SecureTSC and SecureAVIC).
pub const FEATURES_IMPLEMENTED: u64 = 0;

/// Everything Vellum accepts in SEV_STATUS under SNP.
pub const ACCEPTED: u64 = !(FEATURES_IMPL_REQ & !FEATURES_IMPLEMENTED);

/// The feature bits of `status` that Vellum does not implement (0 when SNP is
/// not active, as Linux `snp_get_unsupported_features`).
pub const fn unsupported_features(status: u64) -> u64 {
    if status & SNP_ENABLED == 0 {
        return 0;
    }
    status & FEATURES_IMPL_REQ & !FEATURES_IMPLEMENTED
}

/// RMPADJUST: RCX for a 4 KiB page.
pub const RMPADJUST_4K: u64 = 0;
/// RMPADJUST attributes of the VMPL0 probe: target VMPL 1, no permissions,
/// not a VMSA.
pub const RMPADJUST_VMPL1_NO_ACCESS: u64 = 1;
/// RMPADJUST EAX: success.
pub const RMPADJUST_SUCCESS: u32 = 0;
/// RMPADJUST EAX: FAIL_PERMISSION (the target VMPL is not less privileged).
pub const RMPADJUST_FAIL_PERMISSION: u32 = 2;

/// Why the VMPL0 probe failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Vmpl0Error {
    /// RMPADJUST returned FAIL_PERMISSION: the guest runs at VMPL1 or above.
    NotVmpl0,
    /// Any other non-zero code (FAIL_INPUT: the probe page is not a
    /// validated private page; FAIL_SIZEMISMATCH): the probe proves nothing,
    /// so the guest cannot claim VMPL0 either.
    ProbeFailed(u32),
}

/// Decodes the RMPADJUST result of the VMPL0 probe: only 0 proves VMPL0.
pub const fn check_vmpl0_probe(eax: u32) -> Result<(), Vmpl0Error> {
    match eax {
        RMPADJUST_SUCCESS => Ok(()),
        RMPADJUST_FAIL_PERMISSION => Err(Vmpl0Error::NotVmpl0),
        other => Err(Vmpl0Error::ProbeFailed(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::{feature::*, *};

    #[test]
    fn linux_mask_by_hand() {
        // Linux 6.2..: VTOM|REFLECT_VC|RESTRICTED_INJ|ALT_INJ|DEBUG_SWAP|
        // VMPL_SSS|SECURE_TSC|VMGEXIT_PARAM|VMSA_REG_PROT|BIT13|BIT15|
        // SECURE_AVIC|reserved; bits 8, 9, 14, 17 (and 23) need no guest code.
        let expected_low24 = 0x7D_BCF8u64;
        assert_eq!(FEATURES_IMPL_REQ & 0xFF_FFFF, expected_low24);
        assert_eq!(FEATURES_IMPL_REQ >> 24, (1 << 40) - 1);
        for allowed in [
            SEV_ENABLED,
            SEV_ES_ENABLED,
            SNP_ENABLED,
            PREVENT_HOST_IBS,
            BTB_ISOLATION,
            IBS_VIRT,
            SMT_PROT,
            IBPB_ON_ENTRY,
        ] {
            assert_eq!(FEATURES_IMPL_REQ & allowed, 0, "{allowed:#x}");
            assert_eq!(ACCEPTED & allowed, allowed, "{allowed:#x}");
        }
        assert_eq!(
            !ACCEPTED, FEATURES_IMPL_REQ,
            "Vellum implements none of them"
        );
    }

    #[test]
    fn qemu_kvm_default_is_accepted() {
        // QEMU 10 KVM_SEV_INIT2 with vmsa_features = 0: SEV_FEATURES = SNP
        // active only, so SEV_STATUS = 0b111 (reference §1.4/§1.5).
        assert_eq!(unsupported_features(0b111), 0);
        // Host-side hardening features need nothing from the guest.
        let hardened = 0b111 | PREVENT_HOST_IBS | BTB_ISOLATION | SMT_PROT | IBPB_ON_ENTRY;
        assert_eq!(unsupported_features(hardened), 0);
    }

    #[test]
    fn features_needing_guest_code_are_refused() {
        for bit in 3..64 {
            let f = 1u64 << bit;
            let status = 0b111 | f;
            let allowed = [8, 9, 14, 17, 23].contains(&bit);
            assert_eq!(
                unsupported_features(status),
                if allowed { 0 } else { f },
                "bit {bit}"
            );
        }
        // Several at once: all of them are reported.
        let s = 0b111 | SECURE_TSC | DEBUG_SWAP | (1 << 40) | SMT_PROT;
        assert_eq!(unsupported_features(s), SECURE_TSC | DEBUG_SWAP | (1 << 40));
        // Without SNP nothing is checked (Linux returns 0 too).
        assert_eq!(unsupported_features(0b011 | SECURE_TSC), 0);
        assert_eq!(unsupported_features(0), 0);
    }

    #[test]
    fn vmpl0_probe_results() {
        assert_eq!(check_vmpl0_probe(0), Ok(()));
        assert_eq!(check_vmpl0_probe(2), Err(Vmpl0Error::NotVmpl0));
        assert_eq!(check_vmpl0_probe(1), Err(Vmpl0Error::ProbeFailed(1)));
        assert_eq!(check_vmpl0_probe(6), Err(Vmpl0Error::ProbeFailed(6)));
        assert_eq!(RMPADJUST_VMPL1_NO_ACCESS & 0xFF, 1, "target VMPL 1");
        assert_eq!(RMPADJUST_VMPL1_NO_ACCESS >> 8, 0, "no permissions, no VMSA");
    }
}
