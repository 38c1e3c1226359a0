//! How an attempt ended, as the transports report it, and the closed set
//! of causes the connector keeps (for its decisions, its messages and the
//! fallback report).

use std::fmt;
use std::time::Duration;

use crate::{Close, CloseCode, TransportKind};

/// How an attachment of a transport ended: the one outcome every transport
/// adapter reports, whether or not the transport ever worked. The
/// [`Connector`](super::Connector) tells a failed attempt (the transport
/// never delivered its first frame) from a dropped connection by whether
/// [`opened`](super::Connector::opened) was called for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Nothing answered: connection refused, DNS, proxy unreachable. The
    /// server (or the network) is down, which no other transport fixes.
    Unreachable,
    /// An HTTP answer that is not holdfast's: a refused upgrade, a
    /// gateway's 502/504, an error page. `retry_after` from its
    /// `Retry-After`, if any.
    Status {
        /// The HTTP status.
        status: u16,
        /// What its `Retry-After` said.
        retry_after: Option<Duration>,
    },
    /// No answer (no upgrade, no response headers) within the probe
    /// timeout.
    Timeout,
    /// An answer, but no first frame within the probe timeout: a proxy
    /// buffering the event stream, or an upgrade answered and then silence.
    NoFirstFrame,
    /// An answer that is not a holdfast one (wrong content type, not a
    /// batch): an intermediary.
    Invalid,
    /// The connection closed, was cut or failed.
    Closed,
    /// Nothing heard from the server for longer than the heartbeat allows.
    Silent,
    /// holdfast ended this attachment (a `detach` frame or answer); the
    /// session lives.
    Detached(Close),
    /// holdfast closed the session (a `close` frame or answer): before the
    /// session opened, a refusal to open it.
    Refused(Close),
    /// The session is over (its `close` was exchanged, or it was lost).
    SessionClosed,
    /// The driver stopped the attachment (after [`Action::Stop`](super::Action::Stop)
    /// or a [`Check`](super::Action::Check) that restarts it).
    Stopped,
}

/// Why a transport failed or was left: a closed set, fit for metric labels
/// and for the fallback report the client sends to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Nothing answered.
    Unreachable,
    /// An HTTP status not from holdfast (a refused upgrade, a gateway).
    Status(u16),
    /// No answer within the probe timeout.
    Timeout,
    /// Answered, then no first frame within the probe timeout (buffered or
    /// silent).
    NoFirstFrame,
    /// An answer that is not holdfast's.
    Invalid,
    /// Closed before it worked.
    Closed,
    /// Went silent.
    Silent,
    /// holdfast detached it, with this code.
    Detached(CloseCode),
    /// holdfast refused the session, with this code.
    Refused(CloseCode),
    /// It kept dying right after opening, and was demoted.
    Flapping,
}

impl Cause {
    /// The cause's name, for metric labels and reports: one of
    /// `unreachable`, `status`, `timeout`, `no_first_frame`, `invalid`,
    /// `closed`, `silent`, `detached`, `refused`, `flapping`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Status(_) => "status",
            Self::Timeout => "timeout",
            Self::NoFirstFrame => "no_first_frame",
            Self::Invalid => "invalid",
            Self::Closed => "closed",
            Self::Silent => "silent",
            Self::Detached(_) => "detached",
            Self::Refused(_) => "refused",
            Self::Flapping => "flapping",
        }
    }

    /// The HTTP status behind it, if there was one.
    pub fn status(self) -> Option<u16> {
        match self {
            Self::Status(status) => Some(status),
            _ => None,
        }
    }
}

/// One transport that failed, as the connector tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The transport.
    pub transport: TransportKind,
    /// Why.
    pub cause: Cause,
    /// Whether it had worked (carried the session) before it failed.
    pub after_open: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = self.transport;
        match self.cause {
            Cause::Unreachable => write!(f, "{transport}: unreachable"),
            Cause::Status(status) if transport == TransportKind::WebSocket && !self.after_open => {
                write!(f, "{transport}: upgrade refused with HTTP {status}")
            }
            Cause::Status(status) => write!(f, "{transport}: answered HTTP {status}"),
            Cause::Timeout => write!(f, "{transport}: no answer within the probe timeout"),
            Cause::NoFirstFrame => {
                write!(f, "{transport}: no first frame within the probe timeout")
            }
            Cause::Invalid => write!(f, "{transport}: the answer is not holdfast's"),
            Cause::Closed if self.after_open => write!(f, "{transport}: connection lost"),
            Cause::Closed => write!(f, "{transport}: closed before its first frame"),
            Cause::Silent => write!(f, "{transport}: nothing heard from the server for too long"),
            Cause::Detached(code) => write!(f, "{transport}: detached by the server ({})", code.0),
            Cause::Refused(code) => write!(f, "{transport}: refused by the server ({})", code.0),
            Cause::Flapping => write!(f, "{transport}: keeps dying right after opening"),
        }
    }
}

impl AttemptEnd {
    /// The cause it records; `None` for the endings that are not failures.
    pub(crate) fn cause(&self) -> Option<Cause> {
        Some(match self {
            Self::Unreachable => Cause::Unreachable,
            Self::Status { status, .. } => Cause::Status(*status),
            Self::Timeout => Cause::Timeout,
            Self::NoFirstFrame => Cause::NoFirstFrame,
            Self::Invalid => Cause::Invalid,
            Self::Closed => Cause::Closed,
            Self::Silent => Cause::Silent,
            Self::Detached(close) => Cause::Detached(close.code),
            Self::Refused(close) => Cause::Refused(close.code),
            Self::SessionClosed | Self::Stopped => return None,
        })
    }

    /// How long the server (or an intermediary) asked to wait.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            Self::Detached(close) | Self::Refused(close) => close.retry_after,
            _ => None,
        }
    }
}

/// One step down the transport order, for the fallback report: which
/// transport was left for which, why, and how long into the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    /// The transport left.
    pub from: TransportKind,
    /// The transport tried next.
    pub to: TransportKind,
    /// Why `from` was left.
    pub cause: Cause,
    /// How long after the attempt on `from` started it was given up
    /// (for [`Cause::Flapping`], how long its last connection lasted).
    pub after: Duration,
}
