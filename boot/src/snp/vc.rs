//! #VC (vector 29) decision logic, without an instruction decoder.
//!
//! Vellum's design (Oak stage0 style, reference §4 "#VC"): port I/O, MSR
//! accesses and MMIO are **explicit GHCB calls** ([`super::ghcb::Ghcb`]), never
//! intercepted instructions, and MMIO is always mapped with the C-bit clear and
//! accessed through the MMIO NAE. So IOIO (0x7B), MSR (0x7C) and NPF (0x400)
//! are never expected to fault. The only instruction that may raise #VC is
//! `CPUID` (0F A2, exit code 0x72) in early boot before the CPUID page is in
//! use. Everything else — including a CPUID exit code whose bytes at RIP are
//! not 0F A2 — is treated as an injected or unexpected event and terminates
//! (without restricted injection the hypervisor can inject #VC at will;
//! Linux `vc_check_opcode_bytes`, Oak `vc_handler`).
//!
//! Sources: AMD APM vol. 2 (24593) §15.35.5 "#VC Exception" (error code = SVM
//! exit code); Linux `arch/x86/coco/sev/vc-handle.c` `vc_check_opcode_bytes`
//! (`SVM_EXIT_CPUID`: opcode 0x0FA2); exit codes in [`super::ghcb::exit_code`].

use super::ghcb::exit_code;

/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;
/// `CPUID` opcode bytes.
pub const CPUID_OPCODE: [u8; 2] = [0x0F, 0xA2];

/// What the #VC handler must do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcAction {
    /// Emulate CPUID (from the CPUID page, or the MSR protocol before it is
    /// available) and advance RIP by `insn_len`.
    CpuidAtRip {
        /// Bytes to skip (2).
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
    /// Any other exit code.
    ExitCode(u64),
    /// CPUID exit code but the bytes at RIP are not `0F A2`.
    OpcodeMismatch,
    /// Fewer instruction bytes than the opcode needs.
    TooShort,
}

/// Decides what to do with a #VC whose error code is `error_code`, given a
/// private copy of the bytes at RIP (up to [`MAX_INSN_LEN`]).
pub fn decide(error_code: u64, insn: &[u8]) -> VcAction {
    let reason = match error_code {
        exit_code::CPUID => {
            if insn.len() < CPUID_OPCODE.len() {
                VcReason::TooShort
            } else if insn[..2] == CPUID_OPCODE {
                return VcAction::CpuidAtRip { insn_len: 2 };
            } else {
                VcReason::OpcodeMismatch
            }
        }
        exit_code::IOIO => VcReason::Ioio,
        exit_code::MSR => VcReason::Msr,
        exit_code::NPF => VcReason::Npf,
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
        for code in [
            0x27,
            0x37,
            0x6E,
            0x6F,
            0x76,
            0x81,
            0x87,
            0x89,
            0x8A,
            0x8B,
            0x404,
            0x8000_0001,
        ] {
            assert_eq!(decide(code, &c), VcAction::Unexpected(ExitCode(code)));
        }
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
