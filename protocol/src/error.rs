//! Errors of the session core, kept apart by who caused them: the peer
//! ([`ProtocolError`], from untrusted input) or the local application
//! ([`SendError`]). [`ProtocolError::close_code`] is the one place where a
//! peer's fault becomes a close code (and so an HTTP status).

use crate::close::CloseCode;
use crate::wire::DecodeError;

/// The peer broke the protocol. Never caused by the local application.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The bytes are not a valid batch.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A message skipped sequence numbers.
    #[error("sequence gap: expected message {expected}, got {got}")]
    SeqGap {
        /// The sequence number expected next.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// An acknowledgement (or `last`) for messages never sent.
    #[error("acknowledgement of {ack}, but only {sent} were ever sent")]
    AckBeyondSent {
        /// The acknowledged sequence number.
        ack: u64,
        /// The highest sequence number sent.
        sent: u64,
    },
    /// A frame this side never accepts from its peer (e.g. `open` from a client).
    #[error("unexpected {0:?} frame")]
    UnexpectedFrame(&'static str),
    /// An attachment's first frame was not `open`, `resumed` or `close`.
    #[error("expected open, resumed or close first, got {0:?}")]
    MissingGreeting(&'static str),
    /// A message payload over the negotiated maximum. Ends the session.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    MessageTooBig {
        /// The payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A message beyond the upstream window (`PROTOCOL.md` §3.1): the
    /// client sent more than the last `room` allowed. The attachment ends;
    /// the session lives.
    #[error("flow-control window exceeded: message {seq} charged {charge} bytes, {room} left")]
    WindowExceeded {
        /// The message's sequence number.
        seq: u64,
        /// What it is charged (payload plus the per-message overhead).
        charge: usize,
        /// What was left of the window.
        room: usize,
    },
    /// A wire unit over the negotiated maximum. Ends the session.
    #[error("wire unit of {len} bytes exceeds the maximum of {max}")]
    BatchTooBig {
        /// The wire unit's length (or a lower bound of it).
        len: usize,
        /// The maximum.
        max: usize,
    },
}

impl ProtocolError {
    /// The close code (and, through [`CloseCode::http_status`], the HTTP
    /// status) that reports this error to the peer.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::MessageTooBig { .. } | Self::BatchTooBig { .. } => CloseCode::TOO_BIG,
            Self::WindowExceeded { .. } => CloseCode::WINDOW_EXCEEDED,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// Whether the session ends (`close`) or only the attachment (`detach`).
    pub fn ends_session(&self) -> bool {
        self.close_code() == CloseCode::TOO_BIG
    }
}

/// Why a message could not be queued for sending. Caused locally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
    /// The replay buffer is full: wait for the peer to acknowledge.
    #[error("the replay buffer is full")]
    Full,
    /// The message is larger than the session's maximum message size.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooBig {
        /// The payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

/// Why an attachment was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The session has ended and can no longer be resumed.
    #[error("session lost")]
    SessionLost,
    /// The request broke the protocol (e.g. `last` beyond what was sent).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Stored state that cannot be a session
/// ([`ServerSession::restore`](crate::ServerSession::restore)): the store
/// holds something this core never wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// More messages wait for the application than were ever received.
    #[error(
        "the stored inbound queue holds {queued} messages, but only {received} were ever received"
    )]
    InboundBeyondReceived {
        /// Highest upstream sequence number received, as stored.
        received: u64,
        /// Messages in the stored inbound queue.
        queued: usize,
    },
    /// A stored sequence number is beyond what a session can reach
    /// ([`MAX_RESTORED_SEQ`](crate::session::MAX_RESTORED_SEQ)): counting
    /// on from it could overflow.
    #[error("the stored {direction} sequence number {seq} is beyond what a session reaches (2^63)")]
    SeqOutOfRange {
        /// `"downstream"` (the last message stored for the client) or
        /// `"upstream"` (the last one received).
        direction: &'static str,
        /// The sequence number (saturated at `u64::MAX`).
        seq: u64,
    },
}
