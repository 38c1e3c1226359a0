//! The client's fallback report, as a session keeps it: the steps down the
//! transport order the client took and why (a refused upgrade, a buffered
//! event stream, …), sent in the `report` parameter of the request that
//! opened or resumed the session (`PROTOCOL.md` §1.2), for the application
//! to log or show ([`Session::fallbacks`]).

use std::collections::VecDeque;
use std::sync::Mutex;

use holdfast_protocol::connector::Fallback;
use holdfast_protocol::connector::report::Decoded;

use super::{Session, Shared};

/// The most entries a session keeps; past that the oldest are dropped. A
/// client sends each entry once, so only a client that keeps falling back
/// (or lies) reaches it.
pub(crate) const MAX_KEPT: usize = 16;

/// A session's kept report entries, oldest first. Apart from the core's
/// lock: recording never waits on, nor wakes, anything the core does.
#[derive(Default)]
pub(crate) struct Reports {
    kept: Mutex<VecDeque<Fallback>>,
}

impl Reports {
    fn record(&self, entries: Vec<Fallback>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        // Only the last `MAX_KEPT` of a long batch could survive anyway.
        let skip = entries.len().saturating_sub(MAX_KEPT);
        for entry in entries.into_iter().skip(skip) {
            if kept.len() == MAX_KEPT {
                kept.pop_front();
            }
            kept.push_back(entry);
        }
    }

    fn all(&self) -> Vec<Fallback> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().copied().collect()
    }
}

impl Shared {
    /// The one place a client's fallback report arrives: the entries read
    /// from the `report` parameter of a request that opened or resumed
    /// this session. Their values are closed sets (transports, causes,
    /// numbers), never client text.
    pub(crate) fn record_client_report(&self, report: Decoded) {
        crate::metrics::client_report(report.is_valid());
        let entries = report.entries;
        for step in &entries {
            crate::metrics::client_fallback(step);
            tracing::debug!(
                session = %self.session_id,
                from = step.from.as_str(),
                to = step.to.as_str(),
                cause = step.cause.label(),
                after_ms = u64::try_from(step.after.as_millis()).unwrap_or(u64::MAX),
                "client fell back"
            );
        }
        self.reports.record(entries);
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
        reports.record((0..10).map(step).collect());
        reports.record((10..20).map(step).collect());
        let all = reports.all();
        assert_eq!(all.len(), MAX_KEPT);
        assert_eq!(all.first(), Some(&step(4)));
        assert_eq!(all.last(), Some(&step(19)));
        reports.record((100..140).map(step).collect());
        assert_eq!(reports.all(), (124..140).map(step).collect::<Vec<_>>());
        reports.record(Vec::new());
        assert_eq!(reports.all().len(), MAX_KEPT);
    }
}
