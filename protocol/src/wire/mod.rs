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

pub use frame::{Close, Frame, OpenParams, PROTOCOL_VERSION};
pub use message::{Message, Text};

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
