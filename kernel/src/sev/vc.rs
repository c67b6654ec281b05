//! The #VC (vector 29) handler's logic: CPUID answered from the CPUID page,
//! RDTSC/RDTSCP through the GHCB, everything else terminates. No instruction
//! decoder (reference §4 "#VC").
//!
//! The entry stub (`arch::interrupts`, on `IST_VC`) saves every GPR into a
//! [`VcFrame`] and the extended state with XSAVE, calls [`handle`], restores
//! and IRETQs, so the handler can rewrite RAX..RDX and RIP of the interrupted
//! code.
//!
//! Why only these: the kernel does port I/O through explicit GHCB calls, reads
//! no intercepted MSRs and maps no MMIO, so IOIO/MSR/NPF exits never happen
//! legitimately; CPUID does (runtime feature detection in dependencies), and
//! RDTSC/RDTSCP do if the hypervisor intercepts them (the clock reads the TSC
//! on every poll; KVM does not intercept it by default). The hypervisor can
//! inject #VC at will (no restricted injection), so the error code is checked
//! against the bytes at RIP (`vc::decide`, as Linux `vc_check_opcode_bytes`
//! and Oak `vc_handler` do). Every #VC is counted ([`count`], on `/metrics`):
//! under a host that does not intercept RDTSC it stays at the handful of
//! CPUIDs made at start-up.

use super::{cpuid_page, ghcb, is_snp, terminate};
use core::{
    arch::asm,
    sync::atomic::{AtomicU64, Ordering},
};
use vellum_boot::snp::{
    cpuid::apply_cr4_bits,
    msr_protocol::TerminateReason,
    vc::{self, OPCODE_BYTES, VcAction, VcReason},
};

/// #VC exceptions handled.
static VC_COUNT: AtomicU64 = AtomicU64::new(0);

/// #VC exceptions handled so far.
pub fn count() -> u64 {
    VC_COUNT.load(Ordering::Relaxed)
}

/// The interrupted context as the entry stub saved it: GPRs in reverse push
/// order, then the CPU's exception frame (error code, RIP, CS, RFLAGS, RSP, SS).
#[derive(Debug)]
#[repr(C)]
pub struct VcFrame {
    /// Saved R15.
    pub r15: u64,
    /// Saved R14.
    pub r14: u64,
    /// Saved R13.
    pub r13: u64,
    /// Saved R12.
    pub r12: u64,
    /// Saved R11.
    pub r11: u64,
    /// Saved R10.
    pub r10: u64,
    /// Saved R9.
    pub r9: u64,
    /// Saved R8.
    pub r8: u64,
    /// Saved RBP.
    pub rbp: u64,
    /// Saved RDI.
    pub rdi: u64,
    /// Saved RSI.
    pub rsi: u64,
    /// Saved RDX.
    pub rdx: u64,
    /// Saved RCX.
    pub rcx: u64,
    /// Saved RBX.
    pub rbx: u64,
    /// Saved RAX.
    pub rax: u64,
    /// #VC error code: the SVM exit code.
    pub error_code: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted SS.
    pub ss: u64,
}

/// Bytes of the frame the stub builds (15 GPRs + 6 CPU words).
pub const VC_FRAME_SIZE: usize = 21 * 8;
const _: () = assert!(size_of::<VcFrame>() == VC_FRAME_SIZE);

fn xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) reads XCR0; boot set CR4.OSXSAVE (checked by the
    // caller), so it cannot fault, and it is not intercepted under SNP.
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Handles one #VC on `frame` (called by the entry stub).
pub fn handle(frame: &mut VcFrame) {
    if !is_snp() {
        panic!(
            "exception: #VC (error code {:#x}) at {:#x} without SEV-SNP",
            frame.error_code, frame.rip
        );
    }
    VC_COUNT.fetch_add(1, Ordering::Relaxed);
    let mut insn = [0u8; OPCODE_BYTES];
    for (i, b) in insn.iter_mut().enumerate() {
        // SAFETY: RIP is the interrupted kernel instruction (the hypervisor
        // cannot change guest registers under SNP); all of [0, 4 GiB) is
        // mapped present by the boot tables and the kernel lies far below
        // 4 GiB, so reading three bytes there cannot fault; the bytes are
        // copied once and only the copy is examined.
        *b = unsafe { core::ptr::read_volatile((frame.rip as *const u8).wrapping_add(i)) };
    }
    match vc::decide(frame.error_code, &insn) {
        VcAction::CpuidAtRip { insn_len } => {
            let leaf = frame.rax as u32;
            let subleaf = frame.rcx as u32;
            let cr4 = x86_64::registers::control::Cr4::read_raw();
            let osxsave = cr4 & (1 << 18) != 0;
            let pke = cr4 & (1 << 22) != 0;
            // XSS: Vellum never enables supervisor XSAVE state (IA32_XSS is 0
            // from reset and never written), and reading it would itself be an
            // intercepted MSR access.
            let xcr0 = if osxsave { xcr0() } else { 1 };
            let Some(page) = cpuid_page() else {
                terminate(TerminateReason::CPUID)
            };
            let Some(mut regs) = page.lookup(leaf, subleaf, xcr0, 0) else {
                terminate(TerminateReason::CPUID)
            };
            apply_cr4_bits(leaf, subleaf, &mut regs, osxsave, pke);
            frame.rax = regs[0].into();
            frame.rbx = regs[1].into();
            frame.rcx = regs[2].into();
            frame.rdx = regs[3].into();
            frame.rip += u64::from(insn_len);
        }
        VcAction::RdtscAtRip { insn_len } => {
            let tsc = ghcb::rdtsc();
            frame.rax = tsc & 0xFFFF_FFFF;
            frame.rdx = tsc >> 32;
            frame.rip += u64::from(insn_len);
        }
        VcAction::RdtscpAtRip { insn_len } => {
            let (tsc, aux) = ghcb::rdtscp();
            frame.rax = tsc & 0xFFFF_FFFF;
            frame.rdx = tsc >> 32;
            frame.rcx = aux.into();
            frame.rip += u64::from(insn_len);
        }
        VcAction::Unexpected(VcReason::PageNotValidated) => {
            terminate(TerminateReason::NOT_VALIDATED)
        }
        VcAction::Unexpected(_) => terminate(TerminateReason::UNEXPECTED_VC),
    }
}
