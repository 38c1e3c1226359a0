//! Reconnect delays: exponential backoff with random jitter, so that a
//! thousand clients dropped at once do not come back at once.

use std::time::Duration;

/// How long to wait between reconnect attempts.
///
/// Attempt `n` (from 0) waits a random delay in
/// `[base × (1 − jitter), base]` where `base = min(initial × 2ⁿ, max)`
/// ("full jitter" when `jitter` is 1), in whole milliseconds. A server's
/// `retry_after` replaces the computed delay when it is longer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay. Default 250 ms.
    pub initial: Duration,
    /// The longest delay. Default 30 s.
    pub max: Duration,
    /// The fraction of each delay that is random, 0.0–1.0. Default 0.5.
    pub jitter: f64,
    /// After the connection has been stable this long, the next failure
    /// starts again from `initial`. Default 10 s.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            jitter: 0.5,
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), given a uniform random
    /// number `random` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(30));
        let base = self.initial.saturating_mul(factor).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0) * random.clamp(0.0, 1.0);
        whole_millis(base.as_secs_f64() * 1000.0 * (1.0 - jitter))
    }
}

/// `ms` milliseconds rounded down to a whole millisecond: the JS client
/// computes the same delays in milliseconds, and both must agree to the
/// millisecond on the scenario vectors.
pub(crate) fn whole_millis(ms: f64) -> Duration {
    Duration::from_millis(ms.max(0.0).floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_max() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
        };
        let delays: Vec<_> = (0..6).map(|n| b.delay(n, 0.5).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_delays_below_the_base() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(187));
        assert_eq!(b.delay(0, 0.999_999), Duration::from_millis(125));
        let full = Backoff {
            jitter: 1.0,
            ..Backoff::default()
        };
        assert_eq!(full.delay(0, 0.999_999), Duration::ZERO);
    }
}
