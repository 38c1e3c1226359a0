//! # holdfast-client
//!
//! The tokio client of holdfast: one ordered, exactly-once message stream
//! with a holdfast server, over WebSocket, Server-Sent Events or
//! long-polling — whichever the network allows — that reconnects and
//! resumes by itself.
//!
//! ```no_run
//! use holdfast_client::{ClientBuilder, Event};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut connection = ClientBuilder::new("http://127.0.0.1:3000/realtime").connect().await?;
//! connection.send("hello").await?;
//! while let Some(event) = connection.next_event().await {
//!     match event {
//!         Event::Message(message) => println!("{message:?}"),
//!         Event::Reconnecting { delay, .. } => println!("reconnecting in {delay:?}"),
//!         Event::Closed(closed) => println!("session over: {closed:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! How it works: a driver task owns the connection. It attaches one
//! transport at a time to the session core (`holdfast-protocol`), falling
//! back when a transport is blocked (refused upgrade, error page, silence
//! before the first frame), reconnecting with exponential backoff and
//! jitter when one drops, and re-probing better transports in the
//! background. Every reconnect resumes the session: nothing is lost,
//! duplicated or reordered. Proxies come from `HTTP_PROXY`/`HTTPS_PROXY`/
//! `NO_PROXY` for every transport (WebSocket through `CONNECT`); TLS is
//! rustls.

mod builder;
mod connection;
mod driver;
mod error;
mod event;
mod memory;
mod net;
mod proxy;
mod shared;
mod transport;

pub use builder::ClientBuilder;
pub use connection::{Connection, Receiver, Sender};
pub use error::ConnectError;
pub use event::{Closed, Event};
pub use holdfast_protocol::connector::{Backoff, Cause, Fallback};
pub use holdfast_protocol::{CloseCode, Message, SendError, TransportKind};
pub use proxy::{NoProxy, ProxyConfig};

/// Connects to `url` with the default settings: see [`ClientBuilder`].
pub async fn connect(url: impl Into<String>) -> Result<Connection, ConnectError> {
    ClientBuilder::new(url).connect().await
}
