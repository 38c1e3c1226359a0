//! # holdfast-protocol
//!
//! The heart of holdfast, with no IO: the wire frames of `PROTOCOL.md` and
//! the session core that makes one ordered, exactly-once message stream out
//! of connections that come and go.
//!
//! ```text
//!   bytes from a transport                         bytes to a transport
//!          │                                                ▲
//!   wire::json / binary / sse (decode)       wire::json / binary / sse (encode)
//!          ▼                                                │
//!   handle_frames(now, …) ──▶ ServerSession / ClientSession ──▶ poll_transmit(now, …)
//!   attach / detach / send ─▶   seq · acks · replay buffer  ──▶ poll_event / poll_message
//!   handle_timeout(now) ────▶         timers                ──▶ poll_timeout
//! ```
//!
//! Time is always a parameter, so every timer — heartbeat, dead peer, poll
//! hold, resume window, ack delay — is tested with injected time. The
//! server and client crates each drive these state machines with tokio.
//!
//! ```
//! use std::time::Instant;
//! use holdfast_protocol::{
//!     ClientSession, Message, ServerSession, SessionConfig, SessionIdentity, TransportKind,
//! };
//!
//! let now = Instant::now();
//! let identity = SessionIdentity { key: "secret".into(), session_id: "s1".into() };
//! let mut server = ServerSession::new(now, SessionConfig::default(), identity);
//! let mut client = ClientSession::default();
//!
//! // The client connects over WebSocket; the server greets with `open`.
//! let client_attachment = client.attach(now, TransportKind::WebSocket);
//! let server_attachment = server.attach(now, TransportKind::WebSocket, 0).unwrap();
//! server.send(Message::text("hello")).unwrap();
//! let transmit = server.poll_transmit(now, server_attachment).unwrap();
//! client.handle_frames(now, Some(client_attachment), transmit.frames).unwrap();
//! assert_eq!(client.poll_message(), Some(Message::text("hello")));
//! ```

pub mod close;
pub mod config;
pub mod connector;
pub mod error;
pub mod session;
pub mod wire;

pub use close::CloseCode;
pub use config::{
    ConfigError, MAX_SHARED_SESSIONS, MESSAGE_OVERHEAD, SessionConfig, message_charge,
};
pub use error::{AttachError, ProtocolError, RestoreError, SendError};
pub use session::{
    AttachmentId, ClientConfig, ClientEvent, ClientSession, ConnectTarget, Initiator,
    MAX_RESTORED_SEQ, Restore, ServerEvent, ServerSession, SessionIdentity, Transmit, TransmitOnly,
    TransportFailure, TransportKind,
};
pub use wire::{Close, DecodeError, Frame, Message, OpenParams, Text};
