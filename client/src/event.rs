//! What a [`Connection`](crate::Connection) reports to the application.

use std::time::Duration;

use holdfast_protocol::{Close, CloseCode, Initiator, Message, TransportKind};

/// One thing that happened on a connection, in order.
///
/// Messages arrive exactly once and in order across every reconnect and
/// transport switch. A transport dropping is reported as [`Event::Reconnecting`]
/// — the session lives on — never as [`Event::Closed`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The session opened (once, first).
    Open {
        /// The transport that carries it.
        transport: TransportKind,
        /// The session's public id, for logs and support.
        session_id: String,
    },
    /// A message from the server.
    Message(Message),
    /// The connection dropped; the client will resume the session after
    /// `delay`.
    Reconnecting {
        /// 1 for the first attempt after a drop, then 2, 3, …
        attempt: u32,
        /// The wait before this attempt (backoff with jitter, or the
        /// server's `Retry-After`).
        delay: Duration,
        /// Why the previous transport ended, for logs.
        reason: String,
    },
    /// The session resumed after a drop: the stream is whole — nothing was
    /// lost or duplicated. (A resume that cannot be whole is reported as
    /// [`Event::Closed`] with `session_lost`.)
    Resumed {
        /// The transport that carries it now.
        transport: TransportKind,
    },
    /// The session now travels on another transport (after a fallback, or
    /// an upgrade once a better transport works again).
    TransportChanged {
        /// The previous transport.
        from: TransportKind,
        /// The new one.
        to: TransportKind,
    },
    /// The session is over. Last event.
    Closed(Closed),
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The close code (`PROTOCOL.md` §7).
    pub code: CloseCode,
    /// The reason.
    pub reason: String,
    /// The server no longer knew the session (resume window expired, or the
    /// server restarted): messages in flight at that time may be lost. Open
    /// a new connection to start over.
    pub session_lost: bool,
    /// Whether this side (the application's `close`, or giving up) ended it.
    pub by_client: bool,
}

impl Closed {
    pub(crate) fn new(close: &Close, initiator: Initiator) -> Self {
        Self {
            code: close.code,
            reason: close.reason.to_string(),
            session_lost: close.code == CloseCode::SESSION_LOST,
            by_client: initiator == Initiator::Local,
        }
    }
}
