//! Wire frames and their encodings (`PROTOCOL.md` §2 and §8).
//!
//! - [`Frame`]: the protocol's frames as Rust values;
//! - [`json`]: batches as JSON arrays, for every transport;
//! - [`binary`]: native binary messages on WebSocket;
//! - [`sse`]: `text/event-stream` events, and an incremental parser for them.

pub mod binary;
mod decode;
mod frame;
pub mod json;
mod message;
mod scan;
pub mod sse;

pub use frame::{Close, Frame, MAX_CLOSE_REASON, OpenParams, PROTOCOL_VERSION, truncate_reason};
pub use message::{Message, Text};

use bytes::Bytes;

/// Whether a payload of `len` bytes received in `backing` may stay a slice
/// of it (zero-copy) rather than be copied into an allocation of its own.
///
/// A slice keeps the whole allocation behind `backing` alive for as long
/// as the message is queued, while the byte limits charge only the
/// payload. So a payload is shared only when
///
/// - `backing` owns its allocation ([`Bytes::is_unique`]): a frame that is
///   a view of a larger buffer — a WebSocket library's read buffer, which
///   can be far larger than the frame and is shared with the frames after
///   it — is never sliced;
/// - and the payload is at least half of `backing`.
///
/// A shared payload then pins at most twice its size (plus whatever spare
/// capacity the owner of `backing` gave it); everything else is copied.
pub fn may_share(backing: &Bytes, len: usize) -> bool {
    backing.is_unique() && share_rule(backing.len(), len)
}

/// The size half of [`may_share`]: the payload is at least half the frame.
fn share_rule(frame_len: usize, payload_len: usize) -> bool {
    payload_len >= frame_len - frame_len / 2
}

/// Why bytes from the network are not a valid batch. Always caused by the
/// peer (or something between), never by misuse of this crate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a JSON array of objects with the expected field types.
    #[error("malformed batch: {0}")]
    Json(String),
    /// A frame type this protocol version does not have.
    #[error("unknown frame type {0:?}")]
    UnknownFrameType(String),
    /// A frame lacks a field its type requires.
    #[error("{frame:?} frame without its {field:?} field")]
    MissingField {
        /// The frame type.
        frame: String,
        /// The missing field.
        field: &'static str,
    },
    /// A `bin` payload that is not standard base64.
    #[error("binary payload is not valid base64")]
    InvalidBase64,
    /// A message with sequence number 0 (sequence numbers start at 1).
    #[error("sequence number 0 (they start at 1)")]
    ZeroSeq,
    /// A binary WebSocket message with a bad header.
    #[error("binary message header: {0}")]
    BinaryHeader(&'static str),
    /// A WebSocket text message that is not UTF-8, or SSE data likewise.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}
