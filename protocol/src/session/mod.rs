//! The sans-IO session core: both ends of one session, as state machines fed
//! with decoded frames and the current time, and asked what to send.
//!
//! Neither side does IO or reads a clock. A driver calls, in this order:
//!
//! 1. inputs — `attach`, `handle_frames`, `detach`, `send`, `close`,
//!    `handle_timeout(now)`;
//! 2. outputs — `poll_transmit(now, …)` until `None`, then `poll_timeout()`
//!    to know when to call `handle_timeout` next, then `poll_event()` and
//!    `poll_message()` for what to tell the application.
//!
//! [`ServerSession`] and [`ClientSession`] share the sending and receiving
//! halves (the private `outbound` and `inbound` modules); they differ in who greets, who pings
//! and how the transports carry acknowledgements.

mod client;
mod flow;
mod inbound;
mod outbound;
mod server;

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

pub use client::{
    ClientConfig, ClientEvent, ClientSession, ConnectTarget, TransmitOnly, TransportFailure,
};
pub use server::{Restore, ServerEvent, ServerSession, SessionIdentity};

use crate::wire::{Close, Frame};

/// Whether `frame` travels as a native WebSocket message of its own rather
/// than in a JSON batch, given the text threshold of a WebSocket that
/// negotiated native text (`PROTOCOL.md` §2.2.1; `None`: not negotiated).
/// Only texts count: binary messages keep their acks as before.
fn travels_natively(frame: &Frame, native_text_min: Option<usize>) -> bool {
    matches!(
        (frame, native_text_min),
        (Frame::Message { message: crate::wire::Message::Text(t), .. }, Some(min)) if t.len() >= min
    )
}

/// The highest sequence number [`ServerSession::restore`] accepts from a
/// store, in either direction: 2^63, which a session never reaches (292
/// years at a billion messages a second), so that counting on from a
/// restored session never overflows.
pub const MAX_RESTORED_SEQ: u64 = 1 << 63;

/// The three transports (`PROTOCOL.md` §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// One WebSocket carries both directions.
    WebSocket,
    /// An event stream downstream, send requests upstream.
    Sse,
    /// One poll request per downstream batch, send requests upstream.
    LongPoll,
}

impl TransportKind {
    /// All transports, best first.
    pub const ALL: [Self; 3] = [Self::WebSocket, Self::Sse, Self::LongPoll];

    /// Whether the client's frames travel on the attachment itself (and so
    /// the server's acknowledgements too), rather than in send requests.
    pub fn is_duplex(self) -> bool {
        self == Self::WebSocket
    }

    /// Whether the attachment is a long-lived stream the server pings.
    pub fn is_streaming(self) -> bool {
        self != Self::LongPoll
    }

    /// The name used in URLs, logs and the clients' options.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::LongPoll => "long-poll",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "websocket" | "ws" => Ok(Self::WebSocket),
            "sse" | "eventsource" => Ok(Self::Sse),
            "long-poll" | "longpoll" | "poll" | "long-polling" => Ok(Self::LongPoll),
            other => Err(format!(
                "unknown transport {other:?} (expected websocket, sse or long-poll)"
            )),
        }
    }
}

/// Identifies one attachment of a session, so that a replaced attachment's
/// driver learns it was replaced instead of stealing frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId(pub u64);

/// Frames to write now, and whether the attachment ends after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The batch to write (may be empty for a poll answered at hold timeout).
    pub frames: Vec<Frame>,
    /// `Some`: after writing, end the attachment (close the socket with this
    /// code, end the stream, finish the response). Its frame is already the
    /// last of `frames`.
    pub end: Option<Close>,
}

/// Who ended a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initiator {
    /// This side's application, or this side's limits.
    Local,
    /// The peer, with a `close` frame or by breaking the protocol.
    Peer,
    /// Time: the resume window ran out with no attachment.
    Expired,
}

/// Gives back a queue's spare capacity once it is less than a quarter
/// full, so that a burst does not keep its peak allocation for the life of
/// the session (a `VecDeque` never shrinks by itself). Halving only below a
/// quarter keeps pushes and pops amortized O(1).
fn shrink_spare<T>(queue: &mut VecDeque<T>) {
    const KEEP: usize = 64;
    let capacity = queue.capacity();
    if capacity > KEEP && queue.len() < capacity / 4 {
        queue.shrink_to((capacity / 2).max(KEEP));
    }
}

/// The earliest of some optional deadlines.
fn earliest(deadlines: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}

/// Whether a deadline has come.
fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}
