//! Time from the TSC, calibrated against the PIT at boot.

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// The PIT count for a gate of `micros` microseconds (fits the 16-bit counter
/// for gates up to ~54 ms).
pub fn pit_count(micros: u64) -> u16 {
    let c = PIT_HZ * micros / 1_000_000;
    c.clamp(1, u64::from(u16::MAX)) as u16
}

/// TSC frequency in Hz from `ticks` counted over a PIT gate of `count` periods.
pub fn tsc_hz(ticks: u64, count: u16) -> u64 {
    (u128::from(ticks) * u128::from(PIT_HZ) / u128::from(count.max(1))) as u64
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

    #[test]
    fn calibration_math() {
        let count = pit_count(5_000);
        assert_eq!(count, 5965);
        // A 2.5 GHz TSC counts 12.5 M ticks in 5 ms.
        let hz = tsc_hz(12_500_000, count);
        assert!((hz as i64 - 2_500_000_000).abs() < 2_500_000, "{hz}");
        assert_eq!(pit_count(1_000_000), u16::MAX);
        let c = Clock {
            hz: 1_000_000_000,
            origin: 100,
        };
        assert_eq!(c.micros(100 + 1_500_000_000), 1_500_000);
        assert_eq!(c.micros(0), 0);
    }
}
