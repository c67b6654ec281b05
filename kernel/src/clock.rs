//! The kernel clock: TSC calibrated against PIT channel 2 once at boot (see
//! [`vellum_kernel::time`] for how the readings are chosen).

use crate::arch::{cpu::rdtsc, port::ports};
use spin::Once;
use vellum_kernel::time::{Calibrator, Clock, PitSample};

static CLOCK: Once<Clock> = Once::new();
static CALIBRATION: Once<Calibration> = Once::new();

/// Readings taken at most: a PIT that does not count must not hang the boot.
/// A reading is three port accesses (a GHCB exit each under SEV-SNP), so this
/// is far more than the 45 ms the calibrator may want.
const MAX_READINGS: usize = 1_000_000;

/// How the TSC was calibrated, for the boot log.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// Microseconds of PIT time the chosen span covers.
    pub span_us: u64,
    /// The span's error bound in parts per million; `None` when the PIT never
    /// counted and a nominal 2 GHz is assumed.
    pub error_ppm: Option<u64>,
}

/// Latches and reads PIT channel 2's counter, bracketed by the TSC.
fn read_pit() -> PitSample {
    let p = ports();
    let before = rdtsc();
    p.outb(0x43, 0x80); // latch channel 2
    let after = rdtsc();
    let lo = p.inb(0x42);
    let hi = p.inb(0x42);
    PitSample {
        tsc: (before, after),
        count: u16::from_le_bytes([lo, hi]),
    }
}

/// Measures the TSC frequency and sets time zero to `origin` (the TSC at reset).
pub fn init(origin: u64) -> &'static Clock {
    CLOCK.call_once(|| {
        let p = ports();
        // Gate channel 2 on, speaker off; mode 0, lobyte/hibyte, binary; the
        // full count (54.9 ms), which starts once the high byte is written.
        p.outb(0x61, (p.inb(0x61) & !0x02) | 0x01);
        p.outb(0x43, 0xB0);
        p.outb(0x42, 0xFF);
        p.outb(0x42, 0xFF);
        let mut cal = Calibrator::new();
        for _ in 0..MAX_READINGS {
            if cal.add(read_pit()) {
                break;
            }
        }
        let best = cal.best();
        CALIBRATION.call_once(|| Calibration {
            span_us: best.map_or(0, |s| s.periods() * 1_000_000 / vellum_kernel::time::PIT_HZ),
            error_ppm: best.map(|s| s.error_ppm()),
        });
        let hz = best.map_or(2_000_000_000, |s| s.hz());
        Clock { hz, origin }
    })
}

/// How [`init`] calibrated the TSC (`None` before it ran).
pub fn calibration() -> Option<Calibration> {
    CALIBRATION.get().copied()
}

/// Microseconds since reset (0 before calibration).
pub fn micros() -> u64 {
    CLOCK.get().map_or(0, |c| c.micros(rdtsc()))
}
