//! The Vellum kernel: a `bootloader_api` kernel started by `vellum-boot`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt, core_intrinsics))]
#![cfg_attr(target_os = "none", allow(internal_features))]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vellum-kernel runs inside the Vellum image; build it with `image build`.");
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod attest;
#[cfg(target_os = "none")]
mod clock;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
mod net;
#[cfg(target_os = "none")]
mod pci;
#[cfg(target_os = "none")]
mod pool;
#[cfg(target_os = "none")]
#[macro_use]
mod serial;
#[cfg(target_os = "none")]
mod sev;
#[cfg(target_os = "none")]
mod tls;

#[cfg(target_os = "none")]
mod kmain {
    use crate::{arch, clock, heap, serial};
    use alloc::{boxed::Box, vec::Vec};
    use bootloader_api::{BootInfo, BootloaderConfig, entry_point};
    use core::panic::PanicInfo;
    use vellum_boot::abi::{HANDOFF_ADDR, HANDOFF_MAGIC, Handoff};
    use vellum_kernel::memory;

    /// The kernel's requests to the boot stage (only the stack size is honoured:
    /// boot always identity-maps, which is `physical_memory_offset = 0`).
    pub const CONFIG: BootloaderConfig = {
        let mut c = BootloaderConfig::new_default();
        c.kernel_stack_size = 512 * 1024;
        c
    };

    entry_point!(kernel_main, config = &CONFIG);

    /// Smallest heap we accept.
    const MIN_HEAP: u64 = 2 << 20;

    fn read_handoff() -> Handoff {
        // SAFETY: boot wrote a `Handoff` at this reserved, identity-mapped,
        // page-aligned address before jumping here, and nothing writes it since.
        let h = unsafe { (HANDOFF_ADDR as *const Handoff).read() };
        if h.magic != HANDOFF_MAGIC {
            panic!("boot hand-off block missing (magic {:#x})", h.magic);
        }
        h
    }

    fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
        let handoff = read_handoff();
        crate::sev::init(&handoff);
        serial::init(log::LevelFilter::Info);
        let clk = clock::init(handoff.tsc_at_reset);
        println!(
            "Vellum {} - confidential unikernel (SEV-SNP ready; running {})",
            env!("CARGO_PKG_VERSION"),
            if handoff.sev_status & 4 != 0 {
                "under SEV-SNP"
            } else {
                "without SEV"
            }
        );
        if crate::sev::is_snp() {
            log::info!(
                "snp: active, C-bit {}, GHCB at {:#x} (registered by boot, {} VMGEXITs in boot)",
                handoff.c_bit,
                handoff.ghcb,
                handoff.boot_vmgexits
            );
        }
        match clock::calibration() {
            Some(clock::Calibration {
                span_us,
                error_ppm: Some(ppm),
            }) => {
                log::info!(
                    "tsc {} MHz (+-{}.{:02} % over {} us of PIT); boot stage took {} us",
                    clk.hz / 1_000_000,
                    ppm / 10_000,
                    ppm / 100 % 100,
                    span_us,
                    clk.micros(handoff.tsc_at_kernel)
                );
                if ppm > 20_000 {
                    log::warn!(
                        "tsc: the calibration may be off by more than 2 %, so timeouts and \
                         rate limits run that much fast or slow (the host kept descheduling \
                         this vCPU while it read the PIT)"
                    );
                }
            }
            _ => log::warn!(
                "tsc: the PIT never counted, so the clock assumes 2 GHz and timeouts and rate \
                 limits may be off; give the guest a PIT (QEMU's default machine has one)"
            ),
        }
        arch::interrupts::init();
        x86_64::instructions::interrupts::int3();
        log::info!("gdt/tss/idt loaded; exceptions run on IST stacks (int3 handled)");

        let regions = &*boot_info.memory_regions;
        for r in regions {
            log::info!("memory: {:#010x}..{:#010x} {:?}", r.start, r.end, r.kind);
        }
        let pool = memory::Range {
            start: handoff.pool[0],
            end: handoff.pool[1],
        };
        let plan = memory::plan(regions, pool, MIN_HEAP, u64::MAX)
            .unwrap_or_else(|e| panic!("memory plan: {e:?}"));
        log::info!(
            "memory found: {} MiB in e820, {} KiB usable",
            handoff.ram_bytes >> 20,
            plan.usable >> 10
        );
        // SAFETY: `plan` returns a usable RAM range (per the boot memory map,
        // identity-mapped by boot) that overlaps nothing else the kernel uses
        // (the pool is disjoint by construction), and this is the only call.
        unsafe { heap::init(plan.heap.start, plan.heap.len()) };
        log::info!(
            "heap: {:#x}..{:#x} ({} KiB)",
            plan.heap.start,
            plan.heap.end,
            plan.heap.len() >> 10
        );
        log::info!(
            "shared pool: {:#x}..{:#x} ({} KiB), the only memory the host may access",
            pool.start,
            pool.end,
            pool.len() >> 10
        );
        heap_self_test();

        // SAFETY: boot reserved this range for the pool (the memory plan just
        // checked no usable region overlaps it), made it shared under SEV-SNP,
        // and nothing else in the kernel uses it; it is split only here.
        let parts = unsafe { crate::pool::split(pool) };
        crate::attest::init(parts.guest_msg);
        match crate::net::run(parts.nic, handoff.sev_status & 4 != 0) {
            Ok(()) => unreachable!("the network loop does not return"),
            Err(e) => {
                log::warn!("network: {e}; serving nothing");
                log::info!("boot to ready: {} us since reset", clock::micros());
                crate::println!("vellum ready (no network)");
                arch::cpu::halt_forever()
            }
        }
    }

    /// Allocates and frees through the global allocator and checks the heap
    /// returns to where it was.
    fn heap_self_test() {
        let (used0, _) = heap::stats();
        {
            let v: Vec<u64> = (0..4096).collect();
            let b = Box::new([0xA5u8; 1000]);
            assert_eq!(v.iter().sum::<u64>(), 4095 * 4096 / 2);
            assert!(b.iter().all(|&x| x == 0xA5));
            let (used1, _) = heap::stats();
            assert!(used1 >= used0 + 4096 * 8 + 1000);
        }
        let (used2, free) = heap::stats();
        assert_eq!(used2, used0, "heap leaked after free");
        log::info!(
            "heap self-test: allocate and free ok ({} KiB free)",
            free >> 10
        );
    }

    #[panic_handler]
    fn panic(info: &PanicInfo<'_>) -> ! {
        crate::sev::wipe_secrets();
        serial::print_unlocked(format_args!("\nvellum: PANIC: {info}\n"));
        // TLS keys and session state live on the heap: gone before the guest
        // stops (the message above may point into it, so it goes first).
        // SAFETY: nothing below touches the heap, and the handler never
        // returns; Vellum runs one CPU without interrupts.
        unsafe { heap::wipe() };
        crate::sev::terminate_if_snp(vellum_boot::snp::msr_protocol::TerminateReason::PANIC);
        // isa-debug-exit, when QEMU has it: status 0x11 makes QEMU exit with 35.
        arch::port::ports().outb(0xF4, 0x11);
        arch::cpu::halt_forever()
    }
}
