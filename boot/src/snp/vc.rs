//! #VC (vector 29) decision logic, without an instruction decoder.
//!
//! Vellum's design (Oak stage0 style, reference §4 "#VC"): port I/O, MSR
//! accesses and MMIO are **explicit GHCB calls** ([`super::ghcb::Ghcb`]), never
//! intercepted instructions, and MMIO is always mapped with the C-bit clear and
//! accessed through the MMIO NAE. So IOIO (0x7B), MSR (0x7C) and NPF (0x400)
//! are never expected to fault. The instructions that may raise #VC are:
//!
//! * `CPUID` (0F A2, exit code 0x72): answered from the CPUID page (kernel) or
//!   the MSR protocol (32-bit boot);
//! * `RDTSC` (0F 31, exit code 0x6E) and `RDTSCP` (0F 01 F9, exit code 0x87),
//!   only if the hypervisor intercepts them (KVM does not by default; the
//!   kernel reads the TSC for its clock on every poll): the kernel's handler
//!   asks the hypervisor with the RDTSC/RDTSCP NAE and writes EAX/EDX (and ECX)
//!   back, as Linux `vc_handle_rdtsc` does. The value is the hypervisor's
//!   either way (without Secure TSC, which Vellum refuses in
//!   [`super::sev_status`], the TSC is not trusted). **Boot** has no #VC
//!   handler in long mode and reads the TSC before it has any IDT (the reset
//!   RDTSC in 16-bit code): there an intercepted RDTSC is a triple fault, i.e.
//!   the VM shuts down (fail closed, no reason code).
//!
//! Everything else — including an exit code whose bytes at RIP are not the
//! matching instruction — is treated as an injected or unexpected event and
//! terminates (without restricted injection the hypervisor can inject #VC at
//! will; Linux `vc_check_opcode_bytes`, Oak `vc_handler`). The opcode bytes
//! must be at RIP exactly (no prefixes): Vellum's code never prefixes them.
//!
//! Sources: AMD APM vol. 2 (24593) §15.35.5 "#VC Exception" (error code = SVM
//! exit code); Linux `arch/x86/coco/sev/vc-handle.c` `vc_check_opcode_bytes`
//! (`SVM_EXIT_CPUID`: opcode 0x0FA2; `SVM_EXIT_RDTSC`: 0x0F31;
//! `SVM_EXIT_RDTSCP`: 0x0F01 with ModRM 0xF9) and `vc_handle_rdtsc`; exit codes
//! in [`super::ghcb::exit_code`].

use super::ghcb::exit_code;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;
/// `CPUID` opcode bytes.
pub const CPUID_OPCODE: [u8; 2] = [0x0F, 0xA2];
/// `RDTSC` opcode bytes.
pub const RDTSC_OPCODE: [u8; 2] = [0x0F, 0x31];
/// `RDTSCP` opcode bytes (0F 01 with ModRM F9).
pub const RDTSCP_OPCODE: [u8; 3] = [0x0F, 0x01, 0xF9];
/// Bytes at RIP the handler must copy for [`decide`] (the longest opcode).
pub const OPCODE_BYTES: usize = RDTSCP_OPCODE.len();
/// #VC error code for a private access to a page whose RMP entry is not
/// validated (`VMEXIT_PAGE_NOT_VALIDATED`, APM vol. 2 §15.36.10; reference
/// §4 "PVALIDATE": error 0x404). Not an NAE: nothing to emulate.
pub const PAGE_NOT_VALIDATED: u64 = 0x404;

/// What the #VC handler must do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcAction {
    /// Emulate CPUID (from the CPUID page, or the MSR protocol before it is
    /// available) and advance RIP by `insn_len`.
    CpuidAtRip {
        /// Bytes to skip (2).
        insn_len: u8,
    },
    /// Emulate RDTSC with the RDTSC NAE (EAX, EDX) and advance RIP.
    RdtscAtRip {
        /// Bytes to skip (2).
        insn_len: u8,
    },
    /// Emulate RDTSCP with the RDTSCP NAE (EAX, EDX, ECX) and advance RIP.
    RdtscpAtRip {
        /// Bytes to skip (3).
        insn_len: u8,
    },
    /// Terminate with [`super::msr_protocol::TerminateReason::UNEXPECTED_VC`].
    Unexpected(VcReason),
}

/// Why a #VC is unexpected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcReason {
    /// Port I/O: Vellum uses GHCB IOIO calls, never `in`/`out` under SNP.
    Ioio,
    /// MSR: Vellum uses GHCB MSR calls.
    Msr,
    /// Nested page fault (MMIO): Vellum uses GHCB MMIO calls.
    Npf,
    /// Page not validated (0x404): a validated private page was taken away
    /// (terminate with `NOT_VALIDATED`).
    PageNotValidated,
    /// Any other exit code.
    ExitCode(u64),
    /// CPUID/RDTSC/RDTSCP exit code but the bytes at RIP are not that
    /// instruction.
    OpcodeMismatch,
    /// Fewer instruction bytes than the opcode needs.
    TooShort,
}

/// Whether `insn` starts with `opcode`.
fn opcode_at(insn: &[u8], opcode: &[u8]) -> Result<(), VcReason> {
    match insn.get(..opcode.len()) {
        None => Err(VcReason::TooShort),
        Some(b) if b == opcode => Ok(()),
        Some(_) => Err(VcReason::OpcodeMismatch),
    }
}

/// Decides what to do with a #VC whose error code is `error_code`, given a
/// private copy of the bytes at RIP (at least [`OPCODE_BYTES`] of them, up to
/// [`MAX_INSN_LEN`]).
pub fn decide(error_code: u64, insn: &[u8]) -> VcAction {
    let reason = match error_code {
        exit_code::CPUID => match opcode_at(insn, &CPUID_OPCODE) {
            Ok(()) => return VcAction::CpuidAtRip { insn_len: 2 },
            Err(r) => r,
        },
        exit_code::RDTSC => match opcode_at(insn, &RDTSC_OPCODE) {
            Ok(()) => return VcAction::RdtscAtRip { insn_len: 2 },
            Err(r) => r,
        },
        exit_code::RDTSCP => match opcode_at(insn, &RDTSCP_OPCODE) {
            Ok(()) => return VcAction::RdtscpAtRip { insn_len: 3 },
            Err(r) => r,
        },
        exit_code::IOIO => VcReason::Ioio,
        exit_code::MSR => VcReason::Msr,
        exit_code::NPF => VcReason::Npf,
        PAGE_NOT_VALIDATED => VcReason::PageNotValidated,
        other => VcReason::ExitCode(other),
    };
    VcAction::Unexpected(reason)
}

/// Whether the MSR-protocol CPUID (which carries no sub-leaf, answering for
/// ECX = 0) can answer `CPUID(leaf, subleaf)`: only for non-indexed leaves or
/// sub-leaf 0 (Oak's `vc_handler` requires ECX = 0).
pub fn msr_protocol_can_answer(leaf: u32, subleaf: u32) -> bool {
    subleaf == 0 || !super::cpuid::is_indexed(leaf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_at_rip() {
        assert_eq!(
            decide(0x72, &[0x0F, 0xA2]),
            VcAction::CpuidAtRip { insn_len: 2 }
        );
        let mut insn = [0x90u8; MAX_INSN_LEN];
        insn[..2].copy_from_slice(&CPUID_OPCODE);
        assert_eq!(decide(0x72, &insn), VcAction::CpuidAtRip { insn_len: 2 });
    }

    #[test]
    fn mismatched_or_short_opcode_terminates() {
        use VcReason::*;
        for bytes in [
            &[0x0F, 0xA3][..],
            &[0xA2, 0x0F],
            &[0x66, 0x0F, 0xA2],
            &[0x0F, 0x01, 0xD9],
            &[0xF3, 0x0F, 0x01, 0xD9],
        ] {
            assert_eq!(
                decide(0x72, bytes),
                VcAction::Unexpected(OpcodeMismatch),
                "{bytes:x?}"
            );
        }
        assert_eq!(decide(0x72, &[0x0F]), VcAction::Unexpected(TooShort));
        assert_eq!(decide(0x72, &[]), VcAction::Unexpected(TooShort));
    }

    #[test]
    fn everything_else_terminates() {
        use VcReason::*;
        // Even with CPUID bytes at RIP, another exit code is not CPUID.
        let c = [0x0F, 0xA2];
        assert_eq!(decide(0x7B, &[0xEC]), VcAction::Unexpected(Ioio));
        assert_eq!(decide(0x7B, &c), VcAction::Unexpected(Ioio));
        assert_eq!(decide(0x7C, &[0x0F, 0x32]), VcAction::Unexpected(Msr));
        assert_eq!(decide(0x400, &[0x8B, 0x00]), VcAction::Unexpected(Npf));
        assert_eq!(
            decide(0x404, &[0x8B, 0x00]),
            VcAction::Unexpected(PageNotValidated)
        );
        for code in [0x27, 0x37, 0x6F, 0x76, 0x81, 0x89, 0x8A, 0x8B, 0x8000_0001] {
            assert_eq!(decide(code, &c), VcAction::Unexpected(ExitCode(code)));
        }
    }

    #[test]
    fn rdtsc_and_rdtscp_at_rip() {
        assert_eq!(
            decide(0x6E, &[0x0F, 0x31, 0x90]),
            VcAction::RdtscAtRip { insn_len: 2 }
        );
        assert_eq!(
            decide(0x87, &[0x0F, 0x01, 0xF9]),
            VcAction::RdtscpAtRip { insn_len: 3 }
        );
        // The handler copies OPCODE_BYTES: enough for the longest.
        assert_eq!(OPCODE_BYTES, 3);
        let mut insn = [0u8; OPCODE_BYTES];
        insn[..2].copy_from_slice(&RDTSC_OPCODE);
        assert_eq!(decide(0x6E, &insn), VcAction::RdtscAtRip { insn_len: 2 });
    }

    #[test]
    fn rdtsc_exit_codes_need_their_own_opcode() {
        use VcReason::*;
        // An injected RDTSC/RDTSCP #VC anywhere else terminates.
        for (code, bytes) in [
            (0x6E, &[0x0F, 0xA2, 0x90][..]), // CPUID bytes
            (0x6E, &[0x0F, 0x01, 0xF9]),     // RDTSCP bytes for RDTSC
            (0x6E, &[0x66, 0x0F, 0x31]),     // prefixed
            (0x87, &[0x0F, 0x31, 0x90]),     // RDTSC bytes for RDTSCP
            (0x87, &[0x0F, 0x01, 0xD9]),     // VMGEXIT's ModRM
            (0x87, &[0xF3, 0x0F, 0x01]),
        ] {
            assert_eq!(
                decide(code, bytes),
                VcAction::Unexpected(OpcodeMismatch),
                "{code:#x} {bytes:x?}"
            );
        }
        assert_eq!(decide(0x6E, &[0x0F]), VcAction::Unexpected(TooShort));
        assert_eq!(decide(0x87, &[0x0F, 0x01]), VcAction::Unexpected(TooShort));
        assert_eq!(decide(0x87, &[]), VcAction::Unexpected(TooShort));
    }

    #[test]
    fn msr_protocol_cpuid_coverage() {
        assert!(msr_protocol_can_answer(0x8000_001F, 0));
        assert!(msr_protocol_can_answer(1, 7)); // ECX ignored by leaf 1
        assert!(msr_protocol_can_answer(7, 0));
        assert!(!msr_protocol_can_answer(7, 1));
        assert!(!msr_protocol_can_answer(0xD, 1));
    }
}
