//! The frames of `PROTOCOL.md` §2, as Rust values.

use std::borrow::Cow;
use std::time::Duration;

use crate::close::CloseCode;
use crate::wire::Message;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// One protocol frame. Frames travel in batches (`Vec<Frame>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Server → client: a new session is open.
    Open(OpenParams),
    /// Server → client: the session resumed; `ack` is the highest upstream
    /// seq the server has received.
    Resumed {
        /// Highest upstream sequence number received by the server.
        ack: u64,
        /// The upstream window left after `ack`, in charged bytes
        /// (`PROTOCOL.md` §3.1). `None` from a server without flow control.
        room: Option<u64>,
        /// `wstext`: on a WebSocket whose client offered native text, the
        /// server's answer that both sides may send it (`PROTOCOL.md`
        /// §2.2.1). `false` everywhere else.
        native_text: bool,
    },
    /// An application message with its sequence number.
    Message {
        /// The message's sequence number in its direction.
        seq: u64,
        /// The payload.
        message: Message,
    },
    /// Cumulative acknowledgement of every message up to `seq`.
    Ack {
        /// Highest sequence number received.
        seq: u64,
        /// Server → client: the charged bytes of messages after `seq` the
        /// client may have in flight (`PROTOCOL.md` §3.1). `None` in the
        /// client's acks, and from a server without flow control.
        room: Option<u64>,
    },
    /// Liveness probe; must be answered with [`Frame::Pong`].
    Ping,
    /// Answer to [`Frame::Ping`].
    Pong,
    /// The session is over (or was never opened).
    Close(Close),
    /// Server → client: this attachment is over; the session lives.
    Detach(Close),
}

impl Frame {
    /// The frame's type name on the wire (`t`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Open(_) => "open",
            Self::Resumed { .. } => "resumed",
            Self::Message {
                message: Message::Text(_),
                ..
            } => "msg",
            Self::Message {
                message: Message::Binary(_),
                ..
            } => "bin",
            Self::Ack { .. } => "ack",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Close(_) => "close",
            Self::Detach(_) => "detach",
        }
    }

    /// A `close` frame.
    pub fn close(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Close(Close::new(code, reason))
    }

    /// A client's `ack` (it carries no `room`).
    pub fn ack(seq: u64) -> Self {
        Self::Ack { seq, room: None }
    }

    /// A `detach` frame.
    pub fn detach(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Detach(Close::new(code, reason))
    }
}

/// Why a session or attachment ended: a code, a human-readable reason and,
/// for overload refusals, when to retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    /// The close code.
    pub code: CloseCode,
    /// A human-readable reason (may be empty).
    pub reason: Cow<'static, str>,
    /// For [`CloseCode::OVERLOADED`]: how long to wait before retrying.
    pub retry_after: Option<Duration>,
}

/// The most bytes of reason a WebSocket close frame can carry (RFC 6455
/// §5.5: 125 bytes of payload, 2 of them the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// `reason` cut to at most [`MAX_CLOSE_REASON`] bytes, on a character
/// boundary.
pub fn truncate_reason(reason: Cow<'static, str>) -> Cow<'static, str> {
    if reason.len() <= MAX_CLOSE_REASON {
        return reason;
    }
    let mut end = MAX_CLOSE_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(reason[..end].to_owned())
}

impl Close {
    /// A close with a code and a reason.
    pub fn new(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The same close, with a retry delay.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

/// The parameters a server announces in its `open` frame (`PROTOCOL.md` §2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenParams {
    /// Protocol version in use.
    pub version: u32,
    /// The session key: a bearer credential; never log it whole.
    pub key: String,
    /// Public session id, for logs.
    pub session_id: String,
    /// The server's ping interval.
    pub ping_interval: Duration,
    /// How long the server waits without hearing from the client.
    pub timeout: Duration,
    /// How long the session survives without an attachment.
    pub resume_window: Duration,
    /// How long the server holds a poll with nothing to deliver.
    pub poll_hold: Duration,
    /// Largest message payload the server accepts, in bytes.
    pub max_message: usize,
    /// Largest wire unit (WebSocket message, send body) the server accepts.
    pub max_batch: usize,
    /// The upstream window (`win`): charged bytes of unacknowledged
    /// messages the server always accepts (`PROTOCOL.md` §3.1). `None` from
    /// a server without flow control.
    pub window: Option<usize>,
    /// `mux`: the most sessions one shared request may carry
    /// (`PROTOCOL.md` §11). `None` from a server without shared requests.
    pub mux: Option<usize>,
    /// `wstext`: on a WebSocket whose client offered native text, the
    /// server's answer that both sides may send it (`PROTOCOL.md` §2.2.1).
    /// `false` everywhere else, and from servers without it.
    pub native_text: bool,
}

impl Frame {
    /// Whether this is a greeting (`open` or `resumed`) answering a
    /// WebSocket client's offer of native text with `wstext`.
    pub fn grants_native_text(&self) -> bool {
        matches!(
            self,
            Self::Open(OpenParams {
                native_text: true,
                ..
            }) | Self::Resumed {
                native_text: true,
                ..
            }
        )
    }

    /// Marks a greeting (`open` or `resumed`) as granting native text on
    /// its WebSocket; any other frame is left as it is.
    pub fn grant_native_text(&mut self) {
        match self {
            Self::Open(params) => params.native_text = true,
            Self::Resumed { native_text, .. } => *native_text = true,
            _ => {}
        }
    }
}
