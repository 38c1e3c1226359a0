//! The client's fallback report, as a session keeps it: the steps down the
//! transport order the client took and why (a refused upgrade, a buffered
//! event stream, …), sent in the `report` parameter of the request that
//! opened or resumed the session (`PROTOCOL.md` §1.2), for the application
//! to log or show ([`Session::fallbacks`]).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use holdfast_protocol::connector::Fallback;
use holdfast_protocol::connector::report::Decoded;

use super::{Session, Shared};

/// The most entries a session keeps; past that the oldest are dropped. A
/// client sends each entry once, so only a client that keeps falling back
/// (or lies) reaches it.
pub(crate) const MAX_KEPT: usize = 16;

/// A session's kept report entries, oldest first, and those not counted
/// in the metrics yet. Apart from the core's lock: recording never waits
/// on, nor wakes, anything the core does.
#[derive(Default)]
pub(crate) struct Reports {
    kept: Mutex<VecDeque<Fallback>>,
    /// Entries counted once the client is heard on the session after the
    /// request that carried them. A client that never got that request's
    /// answer (a proxy buffered the event stream that opened the session)
    /// sends the same entries again — on another session, or on its next
    /// resume — and counting on receipt would count its fallbacks twice.
    uncounted: Mutex<Vec<Fallback>>,
    /// `uncounted` holds something (checked on every batch the client
    /// sends, without the lock).
    waiting: AtomicBool,
}

impl Reports {
    fn record(&self, entries: &[Fallback]) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        // Only the last `MAX_KEPT` of a long batch could survive anyway.
        let skip = entries.len().saturating_sub(MAX_KEPT);
        for entry in entries.iter().skip(skip) {
            if kept.len() == MAX_KEPT {
                kept.pop_front();
            }
            kept.push_back(*entry);
        }
    }

    /// A request carries `entries` (those the client has not seen
    /// answered yet): the held entries it no longer sends reached it, and
    /// are returned to be counted; `entries` are held, each once (one sent
    /// again after a lost answer is not held twice). Without either, no
    /// lock: every poll of a long-poll session comes through here.
    fn carried(&self, entries: &[Fallback]) -> Vec<Fallback> {
        if entries.is_empty() && !self.waiting.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut uncounted = self.uncounted.lock().unwrap_or_else(|e| e.into_inner());
        let (still, answered): (Vec<Fallback>, Vec<Fallback>) =
            uncounted.drain(..).partition(|held| entries.contains(held));
        *uncounted = still;
        for entry in entries {
            if uncounted.len() < MAX_KEPT && !uncounted.contains(entry) {
                uncounted.push(*entry);
            }
        }
        self.waiting.store(!uncounted.is_empty(), Ordering::Release);
        answered
    }

    /// The client was heard: the entries held so far reached it whole.
    fn heard(&self) -> Vec<Fallback> {
        if !self.waiting.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut uncounted = self.uncounted.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.store(false, Ordering::Release);
        std::mem::take(&mut *uncounted)
    }

    fn all(&self) -> Vec<Fallback> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().copied().collect()
    }
}

impl Shared {
    /// The one place a client's fallback report arrives: a request opened
    /// or resumed this session, with the entries read from its `report`
    /// parameter (if any). Their values are closed sets (transports,
    /// causes, numbers), never client text. The application sees them at
    /// once; the metrics count an entry once the client shows it got the
    /// answer: it sends on the session ([`client_heard`](Self::client_heard)),
    /// or a later request no longer carries the entry.
    pub(crate) fn client_report(&self, report: Option<Decoded>) {
        let entries = match &report {
            Some(report) => {
                self.record_report_entries(report);
                report.entries.as_slice()
            }
            None => &[],
        };
        for step in self.reports.carried(entries) {
            crate::metrics::client_fallback(&step);
        }
    }

    fn record_report_entries(&self, report: &Decoded) {
        crate::metrics::client_report(report.is_valid());
        for step in &report.entries {
            tracing::debug!(
                session = %self.session_id,
                from = step.from.as_str(),
                to = step.to.as_str(),
                cause = step.cause.label(),
                after_ms = u64::try_from(step.after.as_millis()).unwrap_or(u64::MAX),
                "client fell back"
            );
        }
        self.reports.record(&report.entries);
    }

    /// The client sent something on this session (frames on its
    /// WebSocket, a send request): it got the answers before, so the
    /// report entries held are counted now. One atomic load when there are
    /// none.
    pub(crate) fn client_heard(&self) {
        for step in self.reports.heard() {
            crate::metrics::client_fallback(&step);
        }
    }
}

impl Session {
    /// Why the client is on the transport it is on: each step down the
    /// transport order it took (from WebSocket to SSE, from SSE to
    /// long-polling), with the cause (an upgrade refused with HTTP 403, an
    /// event stream buffered past the probe timeout, …) and how long into
    /// the attempt it gave up, oldest first — as the client reported them
    /// when it opened or resumed the session (at most 16; past that the
    /// oldest are dropped).
    ///
    /// Empty when the client took no fallback, or does not report (clients
    /// older than the report). Reports are not kept in a store: after the
    /// session moved to another node, it holds what the client reported
    /// there. Log it, or show it in your support tools:
    ///
    /// ```
    /// use holdfast_server::{Cause, Session};
    ///
    /// fn explain(session: &Session) {
    ///     for step in session.fallbacks() {
    ///         match step.cause {
    ///             Cause::Status(status) => {
    ///                 println!("{} refused with HTTP {status}, now {}", step.from, step.to)
    ///             }
    ///             Cause::NoFirstFrame => println!("{} buffered or silent", step.from),
    ///             other => println!("{} left: {}", step.from, other.label()),
    ///         }
    ///     }
    /// }
    /// ```
    pub fn fallbacks(&self) -> Vec<Fallback> {
        self.shared_arc().reports.all()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use holdfast_protocol::TransportKind;
    use holdfast_protocol::connector::Cause;

    use super::*;

    fn step(ms: u64) -> Fallback {
        Fallback {
            from: TransportKind::WebSocket,
            to: TransportKind::Sse,
            cause: Cause::Timeout,
            after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn keeps_the_newest_sixteen() {
        let reports = Reports::default();
        reports.record(&(0..10).map(step).collect::<Vec<_>>());
        reports.record(&(10..20).map(step).collect::<Vec<_>>());
        let all = reports.all();
        assert_eq!(all.len(), MAX_KEPT);
        assert_eq!(all.first(), Some(&step(4)));
        assert_eq!(all.last(), Some(&step(19)));
        reports.record(&(100..140).map(step).collect::<Vec<_>>());
        assert_eq!(reports.all(), (124..140).map(step).collect::<Vec<_>>());
        reports.record(&[]);
        assert_eq!(reports.all().len(), MAX_KEPT);
    }

    #[test]
    fn entries_sent_again_are_counted_once_when_the_client_is_heard() {
        let reports = Reports::default();
        assert!(reports.heard().is_empty(), "nothing held");
        reports.carried(&[step(1)]);
        // The answer was lost: the next request carries it again, and more.
        reports.carried(&[step(1), step(2)]);
        assert_eq!(reports.heard(), [step(1), step(2)]);
        assert!(reports.heard().is_empty(), "counted once");
        reports.carried(&(0..40).map(step).collect::<Vec<_>>());
        assert_eq!(reports.heard().len(), MAX_KEPT, "bounded");
    }

    #[test]
    fn a_resume_counts_what_the_client_no_longer_sends() {
        let reports = Reports::default();
        reports.carried(&[step(1), step(2)]);
        // The client still sends 2 (its answer was lost), and a new one.
        assert_eq!(reports.carried(&[step(2), step(3)]), [step(1)]);
        // Everything was answered: nothing more is sent.
        assert_eq!(reports.carried(&[]), [step(2), step(3)]);
        assert!(reports.heard().is_empty());
    }
}
