//! # holdfast
//!
//! One ordered, exactly-once message stream between a client and a server,
//! over WebSocket, Server-Sent Events or HTTP long-polling — whichever the
//! network allows — that survives dropped connections and transport
//! switches without losing, duplicating or reordering a message.
//!
//! This crate is a facade over the workspace:
//!
//! - [`protocol`] (always): the wire frames and the sans-IO session core;
//! - [`server`] (feature `server`, on by default): the axum service;
//! - [`client`] (feature `client`, on by default): the tokio client.
//!
//! See `PROTOCOL.md` for the wire protocol and the README for a quick start.

pub use holdfast_protocol as protocol;

#[cfg(feature = "server")]
pub use holdfast_server as server;

#[cfg(feature = "client")]
pub use holdfast_client as client;

/// The README's code examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
