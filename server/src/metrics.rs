//! What the server counts, through the [`metrics`] facade: the
//! application installs a recorder (a Prometheus exporter, say) and every
//! metric below appears in it; without one, each count is a no-op.
//!
//! This module names every metric and every label value; the rest of the
//! server calls the functions here. Label values come from closed sets
//! written below, never from a string a client sent.
//!
//! Counting must not cost the message path: the counters it touches per
//! batch are handles registered once when a [`Holdfast`](crate::Holdfast)
//! is built ([`Metrics`]), so an increment is one atomic add, with no
//! lookup, allocation or formatting; a batch of messages is counted with
//! one increment; the clock is read only for the ack-delay sample and for
//! a send that had to wait. Rare events (a session closed, a refusal, a
//! client's report) use the facade's macros with static labels.
//!
//! The handles are bound to the recorder installed when the `Holdfast` was
//! built: install the exporter first.

use std::time::Duration;

use holdfast_protocol::connector::{Cause, Fallback};
use holdfast_protocol::{Close, CloseCode, Frame, Initiator, TransportKind};
use metrics::{Counter, Gauge, Histogram, Unit};

use crate::reject::Reject;

/// Open sessions on this node (gauge), by `state`.
pub(crate) const SESSIONS: &str = "holdfast_sessions";
/// Sessions opened on this node (counter).
pub(crate) const SESSIONS_OPENED: &str = "holdfast_sessions_opened_total";
/// Sessions ended (counter), by `reason`.
pub(crate) const SESSIONS_CLOSED: &str = "holdfast_sessions_closed_total";
/// Sessions that moved between nodes (counter), by `direction`.
pub(crate) const SESSIONS_MOVED: &str = "holdfast_sessions_moved_total";
/// Attachments now (gauge), by `transport`.
pub(crate) const ATTACHMENTS: &str = "holdfast_attachments";
/// Attachments made (counter), by `transport`.
pub(crate) const ATTACHMENTS_TOTAL: &str = "holdfast_attachments_total";
/// Resume attempts (counter), by `transport` and `recovered`.
pub(crate) const RESUMES: &str = "holdfast_resumes_total";
/// Messages of the stream (counter), by `direction` and `transport`.
pub(crate) const MESSAGES: &str = "holdfast_messages_total";
/// Payload bytes of those messages (counter), by `direction`.
pub(crate) const MESSAGE_BYTES: &str = "holdfast_message_bytes_total";
/// Downstream messages written again after a cut (counter).
pub(crate) const REPLAYED: &str = "holdfast_replayed_messages_total";
/// Bytes buffered across all sessions (gauge).
pub(crate) const BUFFERED_BYTES: &str = "holdfast_buffered_bytes";
/// Downstream message queued → acknowledged (histogram, sampled).
pub(crate) const ACK_DELAY: &str = "holdfast_ack_delay_seconds";
/// How long a `Session::send` that found no room waited (histogram).
pub(crate) const SEND_WAIT: &str = "holdfast_send_wait_seconds";
/// Requests and attachments refused (counter), by `reason`.
pub(crate) const REJECTIONS: &str = "holdfast_rejections_total";
/// How late the runtime ran the lag probe last (gauge).
pub(crate) const SCHEDULING_LAG: &str = "holdfast_scheduling_lag_seconds";
/// Fallbacks the clients reported (counter), by `from`, `to`, `reason`,
/// `status`.
pub(crate) const CLIENT_FALLBACKS: &str = "holdfast_client_fallbacks_total";
/// Fallback reports received (counter), by `valid`.
pub(crate) const CLIENT_REPORTS: &str = "holdfast_client_reports_total";

/// The `transport` label of each transport (`TransportKind::as_str`).
pub(crate) fn transport_label(kind: TransportKind) -> &'static str {
    kind.as_str()
}

/// An index into the per-transport handle arrays.
fn slot(kind: TransportKind) -> usize {
    match kind {
        TransportKind::WebSocket => 0,
        TransportKind::Sse => 1,
        TransportKind::LongPoll => 2,
    }
}

/// Describes every metric (unit and help text) to the installed recorder.
/// Run when a `Holdfast` is built; describing twice is harmless.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        SESSIONS,
        Unit::Count,
        "Open sessions on this node, by state: attached (a transport carries it) or detached (waiting for the client to resume)."
    );
    describe_counter!(
        SESSIONS_OPENED,
        Unit::Count,
        "New sessions opened on this node."
    );
    describe_counter!(
        SESSIONS_CLOSED,
        Unit::Count,
        "Sessions ended on this node, by reason: client, server, expired, timeout, overflow, protocol, lost, shutdown."
    );
    describe_counter!(
        SESSIONS_MOVED,
        Unit::Count,
        "Sessions that moved between nodes (with a store): in = taken over here, out = handed over or taken away."
    );
    describe_gauge!(
        ATTACHMENTS,
        Unit::Count,
        "Sessions with a transport attached now, by transport (a long-poll session between two polls counts)."
    );
    describe_counter!(
        ATTACHMENTS_TOTAL,
        Unit::Count,
        "Attachments made (a session opened or resumed on a transport; not every poll), by transport."
    );
    describe_counter!(
        RESUMES,
        Unit::Count,
        "Requests that resumed a session, by transport and whether it was recovered (false: the session was unknown or over)."
    );
    describe_counter!(
        MESSAGES,
        Unit::Count,
        "Messages of the stream, each counted once: in = received from clients (duplicates dropped), out = written to clients the first time (replays in holdfast_replayed_messages_total)."
    );
    describe_counter!(
        MESSAGE_BYTES,
        Unit::Bytes,
        "Payload bytes of the messages in holdfast_messages_total, by direction."
    );
    describe_counter!(
        REPLAYED,
        Unit::Count,
        "Downstream messages written again on a later attachment (resume or next poll) because the client had not acknowledged them."
    );
    describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes buffered across all sessions (replay buffers and received messages not yet read), as max_buffered_bytes counts them."
    );
    describe_histogram!(
        ACK_DELAY,
        Unit::Seconds,
        "Time from a downstream message queued by the application to its acknowledgement by the client; sampled: a session's first message, then one in 16 of those sent while no sampled one awaits its acknowledgement."
    );
    describe_histogram!(
        SEND_WAIT,
        Unit::Seconds,
        "Time a Session::send waited for room in the replay buffer; only sends that had to wait are recorded."
    );
    describe_counter!(
        REJECTIONS,
        Unit::Count,
        "Requests and attachments refused, by reason: origin, auth, too_large, too_many_sessions, rate_limited, busy, protocol, session_lost, overloaded, version, unavailable, timeout."
    );
    describe_gauge!(
        SCHEDULING_LAG,
        Unit::Seconds,
        "How late the runtime ran the server's lag probe, which sleeps 100 ms at a time: about how long work that is ready waits for a worker. New sessions are refused while it stays above ServerConfig::open_lag_limit."
    );
    describe_counter!(
        CLIENT_FALLBACKS,
        Unit::Count,
        "Transports the clients gave up, from their reports: from, to, reason (the cause), status (HTTP status or close code, else empty)."
    );
    describe_counter!(
        CLIENT_REPORTS,
        Unit::Count,
        "Fallback reports received from clients, by whether they could be read."
    );
}

/// The handles the hot paths count with, registered once with the
/// recorder installed when the server was built.
pub(crate) struct Metrics {
    /// `holdfast_sessions{state="attached"}`, `{state="detached"}`.
    sessions: [Gauge; 2],
    opened: Counter,
    /// Per transport ([`slot`]).
    attachments: [Gauge; 3],
    attachments_total: [Counter; 3],
    /// Per transport, `recovered="true"`.
    resumed: [Counter; 3],
    /// Per transport, `recovered="false"`.
    resume_lost: [Counter; 3],
    messages_in: [Counter; 3],
    messages_out: [Counter; 3],
    bytes_in: Counter,
    bytes_out: Counter,
    replayed: Counter,
    buffered: Gauge,
    ack_delay: Histogram,
    send_wait: Histogram,
}

impl Metrics {
    /// Registers the handles (and describes the metrics) with the
    /// recorder installed now.
    pub(crate) fn new() -> Self {
        describe();
        let per_transport = |f: &dyn Fn(&'static str) -> Counter| {
            TransportKind::ALL.map(|kind| f(transport_label(kind)))
        };
        Self {
            sessions: ["attached", "detached"]
                .map(|state| metrics::gauge!(SESSIONS, "state" => state)),
            opened: metrics::counter!(SESSIONS_OPENED),
            attachments: TransportKind::ALL
                .map(|kind| metrics::gauge!(ATTACHMENTS, "transport" => transport_label(kind))),
            attachments_total: per_transport(
                &|t| metrics::counter!(ATTACHMENTS_TOTAL, "transport" => t),
            ),
            resumed: per_transport(
                &|t| metrics::counter!(RESUMES, "transport" => t, "recovered" => "true"),
            ),
            resume_lost: per_transport(
                &|t| metrics::counter!(RESUMES, "transport" => t, "recovered" => "false"),
            ),
            messages_in: per_transport(
                &|t| metrics::counter!(MESSAGES, "direction" => "in", "transport" => t),
            ),
            messages_out: per_transport(
                &|t| metrics::counter!(MESSAGES, "direction" => "out", "transport" => t),
            ),
            bytes_in: metrics::counter!(MESSAGE_BYTES, "direction" => "in"),
            bytes_out: metrics::counter!(MESSAGE_BYTES, "direction" => "out"),
            replayed: metrics::counter!(REPLAYED),
            buffered: metrics::gauge!(BUFFERED_BYTES),
            ack_delay: metrics::histogram!(ACK_DELAY),
            send_wait: metrics::histogram!(SEND_WAIT),
        }
    }

    /// A new session opened here.
    pub(crate) fn opened(&self) {
        self.opened.increment(1);
    }

    /// A transport attached (opening or resuming the session).
    pub(crate) fn attached(&self, kind: TransportKind, resumed: bool) {
        self.attachments_total[slot(kind)].increment(1);
        if resumed {
            self.resumed[slot(kind)].increment(1);
        }
    }

    /// A resume refused: the session is unknown here, or over.
    pub(crate) fn resume_lost(&self, kind: TransportKind) {
        self.resume_lost[slot(kind)].increment(1);
    }

    /// The server-wide buffered total moved by `delta` bytes (mirrors the
    /// server's atomic with the same deltas, so that it ends at 0 too).
    pub(crate) fn buffered(&self, added: usize, removed: usize) {
        if added > 0 {
            self.buffered.increment(added as f64);
        }
        if removed > 0 {
            self.buffered.decrement(removed as f64);
        }
    }

    /// Counts the messages of one batch written to a client. Those up to
    /// `written` (the highest sequence number this session ever wrote) are
    /// replays; `written` moves on past the new ones.
    pub(crate) fn transmitted(&self, kind: TransportKind, frames: &[Frame], written: &mut u64) {
        let (mut new, mut bytes, mut again) = (0u64, 0u64, 0u64);
        for frame in frames {
            if let Frame::Message { seq, message } = frame {
                if *seq > *written {
                    new += 1;
                    bytes += message.len() as u64;
                    *written = *seq;
                } else {
                    again += 1;
                }
            }
        }
        if new > 0 {
            self.messages_out[slot(kind)].increment(new);
            self.bytes_out.increment(bytes);
        }
        if again > 0 {
            self.replayed.increment(again);
        }
    }

    /// Counts `count` new messages from a client, `bytes` of payload.
    pub(crate) fn received(&self, kind: TransportKind, count: u64, bytes: u64) {
        if count > 0 {
            self.messages_in[slot(kind)].increment(count);
            self.bytes_in.increment(bytes);
        }
    }

    /// A sampled downstream message was acknowledged `delay` after it was
    /// queued.
    pub(crate) fn ack_delay(&self, delay: Duration) {
        self.ack_delay.record(delay.as_secs_f64());
    }

    /// A `send` waited `waited` for room.
    pub(crate) fn send_waited(&self, waited: Duration) {
        self.send_wait.record(waited.as_secs_f64());
    }
}

/// What one session adds to the `holdfast_sessions` and
/// `holdfast_attachments` gauges now, so that each change is counted once
/// and a session that ends takes back all it added.
#[derive(Default)]
pub(crate) struct Presence {
    /// `Some(attached)` while the session is open.
    open: Option<bool>,
    transport: Option<TransportKind>,
}

impl Presence {
    /// Whether the gauges count something else than `open`, `transport`.
    pub(crate) fn differs(&self, open: bool, transport: Option<TransportKind>) -> bool {
        self.open != open.then_some(transport.is_some()) || self.transport != transport
    }

    /// Moves the gauges to count the session as `open` (or not), with
    /// `transport` attached (or none).
    pub(crate) fn set(&mut self, metrics: &Metrics, open: bool, transport: Option<TransportKind>) {
        let state = open.then_some(transport.is_some());
        if state != self.open {
            if let Some(attached) = self.open {
                metrics.sessions[usize::from(!attached)].decrement(1.0);
            }
            if let Some(attached) = state {
                metrics.sessions[usize::from(!attached)].increment(1.0);
            }
            self.open = state;
        }
        if transport != self.transport {
            if let Some(kind) = self.transport {
                metrics.attachments[slot(kind)].decrement(1.0);
            }
            if let Some(kind) = transport {
                metrics.attachments[slot(kind)].increment(1.0);
            }
            self.transport = transport;
        }
    }
}

/// The `reason` label of a session that ended with `close`, ended by
/// `initiator`:
///
/// - `client`: the client closed it (its `close` frame);
/// - `expired`: the client stayed away past the resume window;
/// - `overflow`: it fell too far behind a fan-out or topic (4429);
/// - `shutdown`: the server is going away (1001);
/// - `protocol`: the client broke the protocol or a size limit (1002,
///   1008, 1009, 4400);
/// - `timeout`: the server heard nothing from the client (4408);
/// - `lost`: the session could not be continued (4410, e.g. its store
///   state was lost);
/// - `server`: the application closed it (any other code), or an internal
///   error.
pub(crate) fn closed_reason(close: &Close, initiator: Initiator) -> &'static str {
    match initiator {
        Initiator::Expired => "expired",
        Initiator::Peer => "client",
        Initiator::Local => match close.code {
            CloseCode::TOO_SLOW => "overflow",
            CloseCode::GOING_AWAY => "shutdown",
            CloseCode::PROTOCOL_ERROR
            | CloseCode::WINDOW_EXCEEDED
            | CloseCode::TOO_BIG
            | CloseCode::BAD_REQUEST => "protocol",
            CloseCode::PEER_TIMEOUT => "timeout",
            CloseCode::SESSION_LOST => "lost",
            _ => "server",
        },
    }
}

/// Counts a session that ended.
pub(crate) fn session_closed(close: &Close, initiator: Initiator) {
    metrics::counter!(SESSIONS_CLOSED, "reason" => closed_reason(close, initiator)).increment(1);
}

/// Counts a session that moved between nodes: `true` taken over here,
/// `false` handed over or taken away.
pub(crate) fn session_moved(here: bool) {
    let direction = if here { "in" } else { "out" };
    metrics::counter!(SESSIONS_MOVED, "direction" => direction).increment(1);
}

/// The `reason` label of a refusal; `None` for an answer that refuses
/// nothing (4000: reconnect, the session moved):
///
/// - `origin`: a page from an origin the policy does not allow;
/// - `auth`: the authentication hook refused (4401, 4403, or its own
///   status);
/// - `too_large`: a message or batch over the limits (1009);
/// - `too_many_sessions`: `max_sessions` reached;
/// - `rate_limited`: the client address opens sessions too fast;
/// - `busy`: the runtime has lagged past `open_lag_limit` (CPU overload);
/// - `overloaded`: the server-wide buffer is full (a send refused for now);
/// - `unavailable`: the server cannot take the session now (the
///   application stopped accepting sessions, the store is unavailable or
///   slow, an internal error);
/// - `version`: a protocol version this server does not speak;
/// - `protocol`: a malformed request, parameter or frame;
/// - `session_lost`: the request names a session this server does not
///   have (unknown, expired or over);
/// - `timeout`: a request body that did not arrive in time.
pub(crate) fn rejection_reason(reject: &Reject) -> Option<&'static str> {
    if let Reject::Origin(..) = reject {
        return Some("origin");
    }
    let close = reject.close();
    Some(match close.code {
        CloseCode::RECONNECT => return None,
        CloseCode::TOO_BIG => "too_large",
        CloseCode::OVERLOADED => match &*close.reason {
            crate::reject::TOO_MANY_SESSIONS => "too_many_sessions",
            crate::reject::RATE_LIMITED => "rate_limited",
            crate::reject::BUSY => "busy",
            crate::reject::NOT_KEEPING_UP => "overloaded",
            _ => "unavailable",
        },
        CloseCode::BAD_REQUEST if close.reason.starts_with(crate::reject::BAD_VERSION) => "version",
        CloseCode::BAD_REQUEST | CloseCode::PROTOCOL_ERROR | CloseCode::WINDOW_EXCEEDED => {
            "protocol"
        }
        CloseCode::SESSION_LOST => "session_lost",
        CloseCode::PEER_TIMEOUT => "timeout",
        CloseCode::INTERNAL_ERROR => "unavailable",
        // The hook's refusals: 4000 + its HTTP status.
        CloseCode(4400..=4599) => "auth",
        _ => "protocol",
    })
}

/// Counts a refusal (see [`rejection_reason`]).
pub(crate) fn rejected(reject: &Reject) {
    if let Some(reason) = rejection_reason(reject) {
        metrics::counter!(REJECTIONS, "reason" => reason).increment(1);
    }
}

/// The `status` label of a fallback: the 3-digit HTTP status for
/// `reason="status"` (100–599; else `other`), the close code for
/// `detached` and `refused` (one holdfast or RFC 6455 defines; else
/// `other`), empty otherwise. A closed set: a client cannot make up
/// label values.
pub(crate) fn fallback_status(cause: Cause) -> &'static str {
    match cause {
        Cause::Status(status) => http_status_label(status),
        Cause::Detached(code) | Cause::Refused(code) => close_code_label(code),
        _ => "",
    }
}

/// `status` as a label if it is an HTTP status, else `other`.
fn http_status_label(status: u16) -> &'static str {
    // Three digits per status from 100 to 599: "100101102…".
    static DIGITS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if !(100..=599).contains(&status) {
        return "other";
    }
    let digits = DIGITS.get_or_init(|| (100..=599).map(|s: u16| s.to_string()).collect());
    let at = usize::from(status - 100) * 3;
    digits.get(at..at + 3).unwrap_or("other")
}

/// A known close code as a label, else `other`.
fn close_code_label(code: CloseCode) -> &'static str {
    match code.0 {
        1000 => "1000",
        1001 => "1001",
        1002 => "1002",
        1006 => "1006",
        1008 => "1008",
        1009 => "1009",
        1011 => "1011",
        4000 => "4000",
        4001 => "4001",
        4400 => "4400",
        4401 => "4401",
        4403 => "4403",
        4408 => "4408",
        4409 => "4409",
        4410 => "4410",
        4429 => "4429",
        4503 => "4503",
        _ => "other",
    }
}

/// Counts one fallback a client reported.
pub(crate) fn client_fallback(fallback: &Fallback) {
    metrics::counter!(
        CLIENT_FALLBACKS,
        "from" => transport_label(fallback.from),
        "to" => transport_label(fallback.to),
        "reason" => fallback.cause.label(),
        "status" => fallback_status(fallback.cause),
    )
    .increment(1);
}

/// Counts a fallback report: `valid` if it could be read (entries it
/// skipped make it invalid).
pub(crate) fn client_report(valid: bool) {
    let valid = if valid { "true" } else { "false" };
    metrics::counter!(CLIENT_REPORTS, "valid" => valid).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_reasons_by_initiator_and_code() {
        let close = |code| Close::new(CloseCode(code), "x");
        assert_eq!(closed_reason(&close(1000), Initiator::Peer), "client");
        // What the client says its code is does not make it a shutdown.
        assert_eq!(closed_reason(&close(1001), Initiator::Peer), "client");
        assert_eq!(closed_reason(&close(4410), Initiator::Expired), "expired");
        for (code, reason) in [
            (1000, "server"),
            (4123, "server"),
            (1011, "server"),
            (1001, "shutdown"),
            (4429, "overflow"),
            (1009, "protocol"),
            (1002, "protocol"),
            (1008, "protocol"),
            (4400, "protocol"),
            (4408, "timeout"),
            (4410, "lost"),
        ] {
            assert_eq!(
                closed_reason(&close(code), Initiator::Local),
                reason,
                "{code}"
            );
        }
    }

    #[test]
    fn rejection_reasons() {
        use crate::reject::{BAD_VERSION, BUSY, NOT_KEEPING_UP, RATE_LIMITED, TOO_MANY_SESSIONS};
        let session = |code, reason: &str| Reject::session(CloseCode(code), reason.to_owned());
        let origin = Reject::Origin(
            Close::new(CloseCode::FORBIDDEN, "origin"),
            http::HeaderValue::from_static("https://evil.example"),
        );
        assert_eq!(rejection_reason(&origin), Some("origin"));
        // The same code from the auth hook is `auth`.
        assert_eq!(rejection_reason(&session(4403, "no")), Some("auth"));
        assert_eq!(rejection_reason(&session(4401, "no")), Some("auth"));
        assert_eq!(rejection_reason(&session(4418, "teapot")), Some("auth"));
        assert_eq!(rejection_reason(&session(1009, "big")), Some("too_large"));
        for (reason, label) in [
            (TOO_MANY_SESSIONS, "too_many_sessions"),
            (RATE_LIMITED, "rate_limited"),
            (BUSY, "busy"),
            (NOT_KEEPING_UP, "overloaded"),
            ("the session store is slow", "unavailable"),
        ] {
            assert_eq!(rejection_reason(&session(4503, reason)), Some(label));
        }
        let version = format!("{BAD_VERSION} \"2\"; this server speaks 1");
        assert_eq!(rejection_reason(&session(4400, &version)), Some("version"));
        assert_eq!(
            rejection_reason(&Reject::bad_request("no key")),
            Some("protocol")
        );
        assert_eq!(
            rejection_reason(&Reject::protocol("bad frame")),
            Some("protocol")
        );
        assert_eq!(
            rejection_reason(&Reject::session_lost()),
            Some("session_lost")
        );
        assert_eq!(
            rejection_reason(&Reject::body_timeout(Duration::from_secs(1))),
            Some("timeout")
        );
        assert_eq!(
            rejection_reason(&Reject::Attachment(Close::new(
                CloseCode::RECONNECT,
                "moved"
            ))),
            None
        );
    }

    #[test]
    fn fallback_status_labels_are_a_closed_set() {
        assert_eq!(fallback_status(Cause::Status(403)), "403");
        assert_eq!(fallback_status(Cause::Status(100)), "100");
        assert_eq!(fallback_status(Cause::Status(599)), "599");
        assert_eq!(fallback_status(Cause::Status(600)), "other");
        assert_eq!(fallback_status(Cause::Status(42)), "other");
        assert_eq!(fallback_status(Cause::Refused(CloseCode(4503))), "4503");
        assert_eq!(fallback_status(Cause::Detached(CloseCode(4321))), "other");
        assert_eq!(fallback_status(Cause::NoFirstFrame), "");
    }

    #[test]
    fn a_reported_fallback_is_counted_with_closed_labels() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            client_fallback(&Fallback {
                from: TransportKind::WebSocket,
                to: TransportKind::Sse,
                cause: Cause::Status(403),
                after: Duration::from_millis(12),
            });
            client_report(true);
        });
        let entries = snapshotter.snapshot().into_vec();
        let labels = |name: &str| {
            entries
                .iter()
                .find(|(key, ..)| key.key().name() == name)
                .map(|(key, ..)| {
                    key.key()
                        .labels()
                        .map(|l| format!("{}={}", l.key(), l.value()))
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(
            labels(CLIENT_FALLBACKS),
            Some(vec![
                "from=websocket".to_owned(),
                "to=sse".to_owned(),
                "reason=status".to_owned(),
                "status=403".to_owned(),
            ])
        );
        assert_eq!(labels(CLIENT_REPORTS), Some(vec!["valid=true".to_owned()]));
    }

    #[test]
    fn presence_takes_back_what_it_added() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let metrics = Metrics::new();
            let mut presence = Presence::default();
            presence.set(&metrics, true, Some(TransportKind::WebSocket));
            presence.set(&metrics, true, None);
            presence.set(&metrics, true, Some(TransportKind::LongPoll));
            presence.set(&metrics, false, Some(TransportKind::LongPoll));
            presence.set(&metrics, false, None);
            assert!(!presence.differs(false, None));
        });
        let gauges: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| matches!(key.key().name(), SESSIONS | ATTACHMENTS))
            .collect();
        assert_eq!(gauges.len(), 5, "{gauges:?}");
        for (key, _, _, value) in gauges {
            assert_eq!(
                value,
                metrics_util::debugging::DebugValue::Gauge(0.0.into()),
                "{key:?}"
            );
        }
    }

    #[test]
    fn transmitted_counts_replays_apart() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let metrics = Metrics::new();
            let message = |seq| Frame::Message {
                seq,
                message: holdfast_protocol::Message::text("abc"),
            };
            let mut written = 0;
            metrics.transmitted(TransportKind::Sse, &[message(1), message(2)], &mut written);
            metrics.transmitted(
                TransportKind::Sse,
                &[message(2), message(3), Frame::Ping],
                &mut written,
            );
            assert_eq!(written, 3);
        });
        // A snapshot drains the counters: take one.
        let snapshot = snapshotter.snapshot().into_vec();
        let counter = |name: &str, labels: &[(&str, &str)]| {
            snapshot
                .iter()
                .find(|(key, ..)| {
                    key.key().name() == name
                        && labels.iter().all(|(k, v)| {
                            key.key().labels().any(|l| l.key() == *k && l.value() == *v)
                        })
                })
                .and_then(|(.., value)| match value {
                    metrics_util::debugging::DebugValue::Counter(n) => Some(*n),
                    _ => None,
                })
        };
        assert_eq!(
            counter(MESSAGES, &[("direction", "out"), ("transport", "sse")]),
            Some(3)
        );
        assert_eq!(counter(MESSAGE_BYTES, &[("direction", "out")]), Some(9));
        assert_eq!(counter(REPLAYED, &[]), Some(1));
    }
}
