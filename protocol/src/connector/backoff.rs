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

/// How much longer than a server's `Retry-After` a client may wait, as a
/// fraction of it: the wait is a random delay in
/// `[retry_after, retry_after × (1 + RETRY_AFTER_SPREAD)]`.
///
/// Every client refused at the same moment is told the same wait; a
/// jitter that does not grow with it (the backoff's, 125–250 ms) brings
/// them all back within a moment of each other, and the server, which
/// can take only so many at once (its per-address open rate, its buffer
/// budget), refuses most of them again: waves, one `Retry-After` apart.
/// Spread over half the wait, a cohort refused together comes back over
/// half a period; refused again, its spreads add up and cover the whole
/// period by the second round, so arrivals become a steady flow the
/// server admits at its own rate. Half, not more: the mean wait is 1.25 ×
/// what the server asked, and never less than it (`Retry-After` is a
/// floor: the server does not want anyone sooner).
pub const RETRY_AFTER_SPREAD: f64 = 0.5;

/// The wait for a server's `retry_after`: a delay in
/// `[after, after × (1 + RETRY_AFTER_SPREAD)]` picked by `random`
/// (uniform in `[0, 1)`), in whole milliseconds.
pub fn spread_retry_after(after: Duration, random: f64) -> Duration {
    // From whole milliseconds, as the JS client has them: both must agree
    // to the millisecond on the scenario vectors.
    let ms = after.as_millis() as f64;
    whole_millis(ms * (1.0 + RETRY_AFTER_SPREAD * random.clamp(0.0, 1.0)))
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

    #[test]
    fn a_retry_after_is_a_floor_with_up_to_half_again_on_top() {
        let after = Duration::from_millis(5000);
        assert_eq!(spread_retry_after(after, 0.0), after);
        assert_eq!(spread_retry_after(after, 0.5), Duration::from_millis(6250));
        assert_eq!(
            spread_retry_after(after, 0.999_999),
            Duration::from_millis(7499)
        );
        // Out-of-range draws are clamped, never below the floor.
        assert_eq!(spread_retry_after(after, -1.0), after);
        assert_eq!(spread_retry_after(Duration::ZERO, 0.7), Duration::ZERO);
    }
}
