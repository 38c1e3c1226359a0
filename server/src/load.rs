//! CPU admission: how late the runtime runs work that is ready, and
//! whether that is late enough to refuse new sessions.
//!
//! A probe task sleeps [`PROBE_EVERY`] and records how late it gets to run
//! again, from the back of the run queue (the "event loop lag" of Node's
//! toobusy): on a runtime that keeps up, a
//! millisecond or so; on one whose workers are busy, about the time it
//! takes them to get through every task that is ready — what each step of
//! a new session's opening (accept, request, upgrade, `open`) waits too.
//! While that lag stays above
//! [`ServerConfig::open_lag_limit`](crate::ServerConfig::open_lag_limit),
//! new sessions are refused at once, before authentication or any work for
//! them: a clear `503` + `Retry-After` (close 4503) rather than an opening
//! that waits in line and times out, and no more sessions adding to the
//! load. Resumes are never refused for it: a session already open keeps
//! its guarantee, and a reconnect storm does not turn into lost sessions.
//!
//! One late probe is not enough: a runtime blocked once (a long
//! computation, a pause of the whole process) recovers by itself. The lag
//! must be over the limit for [`SUSTAINED`] probes in a row, the one in
//! flight counting once it is overdue by more than the limit (so that a
//! runtime too busy to run the probe at all is seen as busy, not as
//! unmeasured). One probe back under the limit clears it.
//!
//! The decision ([`Lag::woke`], [`Lag::busy`]) takes its times as
//! arguments, so that it is tested with made-up instants; the probe
//! ([`Lag::start`]) feeds it tokio's clock, which paused-time tests stop.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use metrics::Gauge;

use crate::session::now;

/// How often the probe measures. Ten wake-ups a second cost nothing
/// measurable, and add at most this much to the time it takes to notice
/// a lag or its end.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Late probes in a row (the one in flight counting once it is overdue)
/// that make the runtime busy.
pub(crate) const SUSTAINED: u32 = 2;

/// The lag of one runtime, as its probe measures it, and the limit past
/// which new sessions are refused.
pub(crate) struct Lag {
    /// `None`: no limit, and no probe.
    limit: Option<Duration>,
    /// The origin of the instants stored below as microseconds.
    epoch: Instant,
    /// When the probe in flight is due, in µs since `epoch`, plus one; 0:
    /// none in flight.
    due: AtomicU64,
    /// Probes in a row that woke more than `limit` late.
    late: AtomicU32,
    /// The last probe's lag, in µs.
    last: AtomicU64,
    /// Whether the probe was started.
    started: AtomicBool,
    /// `holdfast_scheduling_lag_seconds`.
    gauge: Gauge,
}

impl Lag {
    /// A lag with this limit, measured from `epoch` on.
    pub(crate) fn new(limit: Option<Duration>, epoch: Instant) -> Self {
        Self {
            limit,
            epoch,
            due: AtomicU64::new(0),
            late: AtomicU32::new(0),
            last: AtomicU64::new(0),
            started: AtomicBool::new(false),
            gauge: metrics::gauge!(crate::metrics::SCHEDULING_LAG),
        }
    }

    /// Starts the probe on the current tokio runtime, once; without a
    /// runtime, does nothing (the server was built outside one: the first
    /// new session starts it). The probe holds the lag weakly: it ends
    /// with the server.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.limit.is_none() || self.started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.started.swap(true, Ordering::Relaxed) {
            runtime.spawn(probe(Arc::downgrade(self)));
        }
    }

    /// The probe will wake at `due`.
    pub(crate) fn armed(&self, due: Instant) {
        self.due.store(self.micros(due) + 1, Ordering::Relaxed);
    }

    /// The probe due at `due` woke at `woke`: records its lag.
    pub(crate) fn woke(&self, due: Instant, woke: Instant) -> Duration {
        let lag = woke.saturating_duration_since(due);
        self.due.store(0, Ordering::Relaxed);
        self.last.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.gauge.set(lag.as_secs_f64());
        if self.limit.is_some_and(|limit| lag > limit) {
            let _ = self
                .late
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
        } else {
            self.late.store(0, Ordering::Relaxed);
        }
        lag
    }

    /// Whether new sessions are to be refused at `now`: the lag has been
    /// over the limit for [`SUSTAINED`] probes in a row, the one in flight
    /// counting if it is overdue by more than the limit.
    pub(crate) fn busy(&self, now: Instant) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        let due = self.due.load(Ordering::Relaxed);
        let overdue = due != 0 && {
            let due = self.epoch + Duration::from_micros(due - 1);
            now.saturating_duration_since(due) > limit
        };
        self.late
            .load(Ordering::Relaxed)
            .saturating_add(u32::from(overdue))
            >= SUSTAINED
    }

    /// The last probe's lag (zero before the first, or without a limit).
    pub(crate) fn latest(&self) -> Duration {
        Duration::from_micros(self.last.load(Ordering::Relaxed))
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX - 1)
    }
}

/// Sleeps [`PROBE_EVERY`] again and again, recording how late each sleep
/// ends, until the server is gone.
async fn probe(lag: Weak<Lag>) {
    loop {
        let due = now() + PROBE_EVERY;
        match lag.upgrade() {
            Some(lag) => lag.armed(due),
            None => return,
        }
        tokio::time::sleep_until(due.into()).await;
        // A multi-threaded runtime may run a task its timer just woke
        // ahead of all the others (its LIFO slot); a yield puts it at the
        // back of the run queue, where a task woken by I/O — a connection
        // accepted, a request read — usually waits.
        tokio::task::yield_now().await;
        match lag.upgrade() {
            Some(lag) => lag.woke(due, now()),
            None => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A probe cycle: armed at `at` for `PROBE_EVERY`, woke `lag` late.
    /// Returns when it woke.
    fn cycle(lag: &Lag, at: Instant, late: Duration) -> Instant {
        let due = at + PROBE_EVERY;
        lag.armed(due);
        let woke = due + late;
        assert_eq!(lag.woke(due, woke), late);
        woke
    }

    #[test]
    fn one_late_probe_is_not_busy_two_in_a_row_are() {
        let t0 = Instant::now();
        let lag = Lag::new(Some(LIMIT), t0);
        let t = cycle(&lag, t0, ms(1));
        assert!(!lag.busy(t));
        // A single stall, however long, then on time again: never busy.
        let t = cycle(&lag, t, ms(5000));
        assert!(!lag.busy(t), "one late probe");
        let t = cycle(&lag, t, ms(2));
        assert!(!lag.busy(t));
        // Sustained: two in a row.
        let t = cycle(&lag, t, ms(1200));
        assert!(!lag.busy(t));
        let t = cycle(&lag, t, ms(1100));
        assert!(lag.busy(t), "two late probes in a row");
        let t = cycle(&lag, t, ms(3000));
        assert!(lag.busy(t));
        assert_eq!(lag.latest(), ms(3000));
        // One probe back under the limit clears it.
        let t = cycle(&lag, t, ms(999));
        assert!(!lag.busy(t));
        // The limit itself is not over it.
        let t = cycle(&lag, t, LIMIT);
        let t = cycle(&lag, t, LIMIT);
        assert!(!lag.busy(t));
    }

    #[test]
    fn a_probe_overdue_now_counts_as_one_late_probe() {
        let t0 = Instant::now();
        let lag = Lag::new(Some(LIMIT), t0);
        let t = cycle(&lag, t0, ms(1500));
        let due = t + PROBE_EVERY;
        lag.armed(due);
        // In flight, not yet overdue by more than the limit: one late.
        assert!(!lag.busy(due));
        assert!(!lag.busy(due + LIMIT));
        // Overdue by more: the runtime is still busy, two in a row.
        assert!(lag.busy(due + LIMIT + ms(1)));
        // Overdue alone (the last probe was on time) is one, not two.
        lag.woke(due, due + ms(3));
        let due = due + ms(3) + PROBE_EVERY;
        lag.armed(due);
        assert!(!lag.busy(due + ms(60_000)));
    }

    #[test]
    fn without_a_limit_nothing_is_busy_and_no_probe_starts() {
        let t0 = Instant::now();
        let lag = Arc::new(Lag::new(None, t0));
        let t = cycle(&lag, t0, ms(5000));
        let t = cycle(&lag, t, ms(5000));
        assert!(!lag.busy(t));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async { lag.start() });
        assert!(!lag.started.load(Ordering::Relaxed));
    }

    #[test]
    fn the_probe_measures_a_blocked_runtime_and_ends_with_the_server() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let lag = Arc::new(Lag::new(Some(ms(50)), now()));
            lag.start();
            lag.start();
            let armed = |lag: &Lag| lag.due.load(Ordering::Relaxed);
            let mut seen = Vec::new();
            for _ in 0..2 {
                // Wait for the probe to sleep, then block its only thread
                // well past its wake-up: it is late by that much.
                while armed(&lag) == 0 {
                    tokio::time::sleep(ms(1)).await;
                }
                let sleeping = armed(&lag);
                std::thread::sleep(ms(300));
                // It woke (and slept again, due later).
                while armed(&lag) == sleeping || armed(&lag) == 0 {
                    tokio::time::sleep(ms(1)).await;
                }
                seen.push(lag.latest());
            }
            assert!(seen.iter().all(|lag| *lag >= ms(150)), "{seen:?}");
            assert!(lag.busy(now()), "two late probes: {seen:?}");
            // Gone with the server: the probe ends at its next wake-up.
            let weak = Arc::downgrade(&lag);
            drop(lag);
            assert!(weak.upgrade().is_none());
            tokio::time::sleep(PROBE_EVERY * 3).await;
        });
        // Every task ended on its own: none was left to drop.
        assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    }
}
