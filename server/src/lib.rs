//! # holdfast-server
//!
//! The axum side of holdfast: mount [`Holdfast::router`] at any path and
//! each client gets one [`Session`] — an ordered, exactly-once message
//! stream that survives dropped connections and switches between
//! WebSocket, Server-Sent Events and long-polling.
//!
//! ```text
//!  GET  <mount>/ws   ─┐  Origin   transport adapters   session core ┌─▶ Incoming::accept() → Session
//!  GET  <mount>/sse  ─┤  layer    (auth, limits,       (holdfast-   │      recv() / send() / close()
//!  GET  <mount>/poll ─┼─▶ ─────▶   codecs)         ─▶  protocol)   ─┤
//!  POST <mount>/send ─┘                                             └─▶ per-session timer task
//! ```
//!
//! Each transport is a thin adapter: it decodes what arrives, hands frames
//! to the session's sans-IO core, and writes what the core says to write.
//! The core decides sequence numbers, acknowledgements, replay and timers;
//! one timer task per session drives its clock. Refusals map to HTTP
//! statuses and close codes in one place (`PROTOCOL.md` §7).
//!
//! Serve the app with [`serve`] rather than `axum::serve`: it sets the
//! header read timeout, the write-stall deadline, the connection limit and
//! `TCP_NODELAY` that a server facing the internet needs.
//!
//! See [`Holdfast`] for a complete example.

mod admission;
mod auth;
mod client_js;
mod cluster;
mod config;
mod fanout;
mod load;
mod logs;
mod metrics;
mod origin;
#[cfg(test)]
mod paused_timers;
mod peer;
mod registry;
mod reject;
mod serve;
mod server;
mod session;
pub mod store;
mod topic;
mod transport;
mod write_deadline;

pub use admission::OpenRateLimit;
pub use auth::{Identity, OpenRequest, Refusal, RequestKind};
pub use config::ServerConfig;
pub use fanout::{Fanout, FanoutReport, SlowConsumer};
pub use holdfast_protocol::connector::{Cause, Fallback};
pub use holdfast_protocol::{Close, CloseCode, Message, SendError, SessionConfig, TransportKind};
pub use ipnet::IpNet;
pub use origin::OriginPolicy;
pub use peer::ProxyHeaders;
pub use serve::{Serve, ServeConfig, ServeFuture, serve};
pub use server::{Builder, Holdfast, Incoming};
pub use session::{Session, SessionEnd};
pub use topic::{
    MAX_TOPICS_PER_SESSION, Member, PresenceEvent, PresenceWatch, Subscribed, Topic, TopicError,
};
