//! The kernel clock: TSC calibrated against PIT channel 2 once at boot.

use crate::arch::{cpu::rdtsc, port::ports};
use spin::Once;
use vellum_kernel::time::{Clock, pit_count, tsc_hz};

static CLOCK: Once<Clock> = Once::new();

/// Calibration gate in microseconds (costs this much boot time).
const GATE_US: u64 = 5_000;

/// Measures the TSC frequency and sets time zero to `origin` (the TSC at reset).
pub fn init(origin: u64) -> &'static Clock {
    CLOCK.call_once(|| {
        let p = ports();
        let count = pit_count(GATE_US);
        // Gate channel 2 on, speaker off; mode 0, lobyte/hibyte, binary.
        p.outb(0x61, (p.inb(0x61) & !0x02) | 0x01);
        p.outb(0x43, 0xB0);
        p.outb(0x42, count as u8);
        p.outb(0x42, (count >> 8) as u8);
        let t0 = rdtsc();
        // Bounded wait for OUT2; a missing PIT falls back to a nominal 2 GHz.
        let mut done = false;
        for _ in 0..50_000_000u64 {
            if p.inb(0x61) & 0x20 != 0 {
                done = true;
                break;
            }
        }
        let t1 = rdtsc();
        let hz = if done {
            tsc_hz(t1 - t0, count)
        } else {
            2_000_000_000
        };
        Clock { hz, origin }
    })
}

/// Microseconds since reset (0 before calibration).
pub fn micros() -> u64 {
    CLOCK.get().map_or(0, |c| c.micros(rdtsc()))
}
