//! The SEV-SNP hardware primitives both guest stages need: the GHCB MSR,
//! VMGEXIT, the MSR-protocol exchange and termination, and the GHCB page seen
//! only through volatile accesses.
//!
//! One audited implementation: boot uses it as `mod ghcb_page` and the kernel
//! includes the same file (`#[path]` in `kernel/src/sev/ghcb.rs`). Both run
//! identity-mapped with the GHCB at the first page of the shared pool, which
//! boot maps without the C-bit and registers with the hypervisor.
//!
//! Every VMGEXIT made through here is counted in [`EXITS`] by kind (each stage
//! has its own copy of the static: boot hands its total to the kernel, the
//! kernel shows its own on `/metrics`).

use core::{
    arch::asm,
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, fence},
};
use vellum_boot::{
    layout,
    snp::{
        ghcb::{ExitCounters, ExitKind, GHCB_SIZE, GhcbMem, Hypervisor},
        msr_protocol::{self, GHCB_MSR, TerminateReason},
    },
};

/// VMGEXITs of this stage, by kind.
pub static EXITS: ExitCounters = ExitCounters::new();

/// GPA of the GHCB: its page of the shared pool (`layout::pool_pages`).
pub const GHCB_GPA: u64 = layout::pool_page(layout::pool_pages::GHCB);

/// Reads the GHCB MSR.
pub fn read_ghcb_msr() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the GHCB MSR (0xC001_0130) exists and is readable in every
    // SEV-ES/SNP guest, and these primitives are only used under SNP; the read
    // has no side effects.
    unsafe {
        asm!("rdmsr", in("ecx") GHCB_MSR, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes the GHCB MSR.
pub fn write_ghcb_msr(value: u64) {
    // SAFETY: as for `read_ghcb_msr`; writing it only selects what the next
    // VMGEXIT tells the hypervisor and cannot affect memory.
    unsafe {
        asm!("wrmsr", in("ecx") GHCB_MSR, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}

/// VMGEXIT (`rep vmmcall`, F3 0F 01 D9).
pub fn vmgexit() {
    // SAFETY: VMGEXIT hands control to the hypervisor, which may only change
    // shared memory (the GHCB, the pool) and the GHCB MSR; private memory and
    // registers are protected by SNP. The asm is not `nomem`, so the compiler
    // keeps memory accesses on their side of it.
    unsafe {
        asm!(
            ".byte 0xF3, 0x0F, 0x01, 0xD9",
            options(nostack, preserves_flags)
        )
    };
}

/// One GHCB MSR-protocol exchange: write `request`, VMGEXIT, read the response.
pub fn msr_protocol_exchange(request: u64) -> u64 {
    EXITS.count(ExitKind::MsrProtocol);
    write_ghcb_msr(request);
    vmgexit();
    read_ghcb_msr()
}

/// Asks the hypervisor to terminate the guest with `reason` (MSR protocol
/// 0x100; uses no GHCB page, so it works from any context), then halts for
/// good should it resume us.
pub fn terminate(reason: TerminateReason) -> ! {
    write_ghcb_msr(msr_protocol::terminate_request(reason));
    vmgexit();
    loop {
        // SAFETY: CLI; HLT parks the CPU; nothing else is left to run.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// The GHCB page, reached only through volatile accesses at checked offsets
/// (no reference into shared memory is ever made).
#[derive(Debug)]
pub struct PageMem;

impl PageMem {
    fn ptr(offset: usize, len: usize) -> *mut u8 {
        assert!(offset <= GHCB_SIZE && len <= GHCB_SIZE - offset);
        (GHCB_GPA as usize + offset) as *mut u8
    }
}

impl GhcbMem for PageMem {
    fn read_u64(&self, offset: usize) -> u64 {
        let p = Self::ptr(offset, 8).cast::<u64>();
        assert!(p.is_aligned());
        // SAFETY: inside the GHCB page (checked): identity-mapped, shared (no
        // C-bit) pool memory reserved for it; aligned; one volatile load.
        unsafe { read_volatile(p) }
    }

    fn write_u64(&mut self, offset: usize, value: u64) {
        let p = Self::ptr(offset, 8).cast::<u64>();
        assert!(p.is_aligned());
        // SAFETY: as for `read_u64`.
        unsafe { write_volatile(p, value) }
    }

    fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        let p = Self::ptr(offset, out.len());
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `p + i` is inside the GHCB page (range checked above).
            *b = unsafe { read_volatile(p.add(i)) };
        }
    }

    fn write_bytes(&mut self, offset: usize, data: &[u8]) {
        let p = Self::ptr(offset, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `p + i` is inside the GHCB page (range checked above).
            unsafe { write_volatile(p.add(i), *b) };
        }
    }

    fn clear(&mut self) {
        for off in (0..GHCB_SIZE).step_by(8) {
            self.write_u64(off, 0);
        }
    }
}

/// VMGEXIT with the GHCB: its GPA into the GHCB MSR, full fence, exit, full
/// fence (no access to the page moves across the exit).
#[derive(Debug)]
pub struct Vmgexit;

impl Hypervisor for Vmgexit {
    fn vmgexit(&mut self, exit_code: u64) {
        EXITS.count(ExitKind::of(exit_code));
        write_ghcb_msr(GHCB_GPA);
        fence(Ordering::SeqCst);
        vmgexit();
        fence(Ordering::SeqCst);
    }
}
