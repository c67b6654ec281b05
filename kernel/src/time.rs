//! Time from the TSC, calibrated against the PIT at boot.
//!
//! The calibration reads PIT channel 2's counter many times, each reading
//! bracketed by two TSC reads ([`PitSample`]), and divides the TSC ticks by
//! the PIT periods between two readings ([`Calibrator`]). Only the two
//! readings at the ends of the span count, and only their brackets add error,
//! so a vCPU descheduled by the host during the span costs nothing; one
//! descheduled during a reading widens that reading's bracket, and the
//! calibrator keeps reading until both ends are tight. (The first version
//! timed a one-shot gate by polling its output; on a loaded CI host the vCPU
//! was off the CPU when the gate ran out and the TSC read 3305 MHz for
//! 2300 MHz, so every timeout and rate limit ran 30 % slow.)

/// PIT input clock in Hz (8254 on the PC platform: 14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;

/// PIT periods in `micros` microseconds.
pub const fn pit_periods(micros: u64) -> u64 {
    PIT_HZ * micros / 1_000_000
}

/// One reading of the PIT counter (counting down), latched at a TSC value
/// between `tsc.0` and `tsc.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PitSample {
    /// TSC just before and just after the latch command.
    pub tsc: (u64, u64),
    /// The counter value latched.
    pub count: u16,
}

impl PitSample {
    fn width(&self) -> u64 {
        self.tsc.1.saturating_sub(self.tsc.0)
    }

    fn mid(&self) -> u64 {
        self.tsc.0 + self.width() / 2
    }
}

/// TSC ticks against PIT periods between two readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The earlier reading.
    pub first: PitSample,
    /// The later reading.
    pub last: PitSample,
}

impl Span {
    /// PIT periods elapsed (the counter counts down and may wrap once).
    pub fn periods(&self) -> u64 {
        u64::from(self.first.count.wrapping_sub(self.last.count))
    }

    /// TSC ticks elapsed, between the middles of the two brackets.
    pub fn ticks(&self) -> u64 {
        self.last.mid().saturating_sub(self.first.mid())
    }

    /// TSC frequency in Hz (0 when nothing elapsed).
    pub fn hz(&self) -> u64 {
        match self.periods() {
            0 => 0,
            p => (u128::from(self.ticks()) * u128::from(PIT_HZ) / u128::from(p)) as u64,
        }
    }

    /// Bound on the relative error of [`Span::hz`] in parts per million: half
    /// of each bracket, plus one PIT period of counter resolution.
    pub fn error_ppm(&self) -> u64 {
        let (ticks, periods) = (self.ticks(), self.periods());
        if ticks == 0 || periods == 0 {
            return 1_000_000;
        }
        let brackets = (self.first.width() + self.last.width()).div_ceil(2);
        let from_brackets = u128::from(brackets) * 1_000_000 / u128::from(ticks);
        let from_counter = 1_000_000u128.div_ceil(u128::from(periods));
        (from_brackets + from_counter).min(1_000_000) as u64
    }
}

/// Good enough to stop: 0.1 %.
pub const GOOD_PPM: u64 = 1_000;
/// The shortest span used (5 ms): shorter ones are all counter resolution.
pub const MIN_SPAN_PERIODS: u64 = pit_periods(5_000);
/// The longest span (45 ms), well inside the 16-bit counter's 54.9 ms wrap.
pub const MAX_SPAN_PERIODS: u64 = pit_periods(45_000);
/// Readings within this many periods (1 ms) of the first compete to be the
/// span's start: the tightest one wins.
const START_PERIODS: u64 = pit_periods(1_000);

/// Chooses the span from a stream of readings: its start is the tightest
/// reading of the first millisecond; it ends at the first reading at least
/// [`MIN_SPAN_PERIODS`] later whose error is at most [`GOOD_PPM`], or at the
/// best one seen by [`MAX_SPAN_PERIODS`].
#[derive(Clone, Debug, Default)]
pub struct Calibrator {
    first: Option<PitSample>,
    start: Option<PitSample>,
    best: Option<Span>,
    done: bool,
}

impl Calibrator {
    /// A calibrator that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next reading; true once the calibration is settled.
    pub fn add(&mut self, s: PitSample) -> bool {
        if self.done {
            return true;
        }
        let first = *self.first.get_or_insert(s);
        let since_first = Span { first, last: s }.periods();
        if since_first <= START_PERIODS {
            if self.start.is_none_or(|b| s.width() < b.width()) {
                self.start = Some(s);
            }
            return false;
        }
        let Some(start) = self.start else {
            return false;
        };
        let span = Span {
            first: start,
            last: s,
        };
        if span.periods() >= MIN_SPAN_PERIODS
            && self.best.is_none_or(|b| span.error_ppm() <= b.error_ppm())
        {
            self.best = Some(span);
        }
        self.done = (span.periods() >= MIN_SPAN_PERIODS && span.error_ppm() <= GOOD_PPM)
            || since_first >= MAX_SPAN_PERIODS;
        self.done
    }

    /// The span chosen so far (`None` before [`MIN_SPAN_PERIODS`] elapsed).
    pub fn best(&self) -> Option<Span> {
        self.best
    }
}

/// A TSC-based clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// TSC ticks per second.
    pub hz: u64,
    /// TSC value that counts as time zero (reset).
    pub origin: u64,
}

impl Clock {
    /// Microseconds since the origin for TSC value `tsc` (saturating at zero).
    pub fn micros(&self, tsc: u64) -> u64 {
        let d = tsc.saturating_sub(self.origin);
        (u128::from(d) * 1_000_000 / u128::from(self.hz.max(1))) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 2_300_000_000;

    /// A simulated PIT and TSC: the counter started at 0xFFFF at TSC 0.
    fn count_at(tsc: u64) -> u16 {
        let periods = u128::from(tsc) * u128::from(PIT_HZ) / u128::from(HZ);
        0xFFFFu16.wrapping_sub(periods as u16)
    }

    /// Readings every `step` ticks, each bracket `width` wide, except that
    /// the host deschedules the vCPU for `stall` ticks during every
    /// `stall_every`-th reading (after the latch, so the count is early).
    fn run(step: u64, width: u64, stall_every: u64, stall: u64) -> Calibrator {
        let mut c = Calibrator::new();
        let mut t = 1_000;
        for i in 1..100_000u64 {
            let latched = t + width / 2;
            let mut end = t + width;
            if stall_every != 0 && i % stall_every == 0 {
                end += stall;
            }
            let s = PitSample {
                tsc: (t, end),
                count: count_at(latched),
            };
            if c.add(s) {
                return c;
            }
            t = end + step;
        }
        panic!("the calibrator never settled");
    }

    #[test]
    fn periods() {
        assert_eq!(pit_periods(5_000), 5965);
        assert_eq!(pit_periods(1_000_000), PIT_HZ);
        let s = |count| PitSample { tsc: (0, 0), count };
        // The counter counts down and may wrap.
        let span = Span {
            first: s(100),
            last: s(0xFFF0),
        };
        assert_eq!(span.periods(), 116);
    }

    #[test]
    fn an_idle_host_settles_after_five_milliseconds() {
        // 2 µs brackets, a reading every 10 µs.
        let c = run(23_000, 4_600, 0, 0);
        let span = c.best().unwrap();
        assert!(span.error_ppm() <= GOOD_PPM, "{span:?}");
        assert!(span.hz().abs_diff(HZ) < HZ / 2_000, "{}", span.hz());
        assert!(span.periods() < MIN_SPAN_PERIODS + 50, "{span:?}");
    }

    /// The case a loaded host produces: every third reading stalls for 3 ms.
    /// Those readings are never an end of the span, and the result stays
    /// within its bound.
    #[test]
    fn stalled_readings_are_not_used() {
        let c = run(23_000, 4_600, 3, 6_900_000);
        let span = c.best().unwrap();
        assert!(span.error_ppm() <= GOOD_PPM, "{span:?}");
        assert!(span.first.tsc.1 - span.first.tsc.0 == 4_600, "{span:?}");
        assert!(span.last.tsc.1 - span.last.tsc.0 == 4_600, "{span:?}");
        assert!(span.hz().abs_diff(HZ) < HZ / 1_000, "{}", span.hz());
    }

    /// When every reading is slow (200 µs brackets), the span grows until the
    /// bound is met or 45 ms pass, and the error bound stays honest.
    #[test]
    fn slow_readings_lengthen_the_span() {
        let c = run(0, 460_000, 0, 0);
        let span = c.best().unwrap();
        assert!(span.periods() > MIN_SPAN_PERIODS * 5, "{span:?}");
        let err = span.hz().abs_diff(HZ) * 1_000_000 / HZ;
        assert!(err <= span.error_ppm(), "{err} ppm > bound {span:?}");
    }

    #[test]
    fn a_missing_pit_never_settles_on_a_rate() {
        // No PIT: the port reads 0xFFFF forever.
        let mut c = Calibrator::new();
        for i in 0..10_000u64 {
            let s = PitSample {
                tsc: (i * 100, i * 100 + 10),
                count: 0xFFFF,
            };
            assert!(!c.add(s));
        }
        assert_eq!(c.best(), None);
        let span = Span {
            first: PitSample {
                tsc: (0, 1),
                count: 7,
            },
            last: PitSample {
                tsc: (5, 9),
                count: 7,
            },
        };
        assert_eq!((span.hz(), span.error_ppm()), (0, 1_000_000));
    }

    #[test]
    fn clock() {
        let c = Clock {
            hz: 1_000_000_000,
            origin: 100,
        };
        assert_eq!(c.micros(100 + 1_500_000_000), 1_500_000);
        assert_eq!(c.micros(0), 0);
    }
}
