//! # holdfast-conformance
//!
//! A holdfast client written from `PROTOCOL.md` alone, as an outside
//! implementer would write one: its own frames and batches, sequence
//! numbers, cumulative acks, replay buffer, duplicate dropping and resume,
//! over its own WebSocket, SSE, long-polling and send code. It shares no
//! code with `holdfast-protocol` or `holdfast-client`.
//!
//! That makes it a **test oracle**: like `h2spec` for HTTP/2, it can be
//! pointed at any server that claims to speak the holdfast protocol — this
//! repository's, or another implementation — and it fails, naming the
//! rule, whenever the server does something the protocol forbids (a gap, an
//! ack for more than was sent, a replay of something already acknowledged,
//! an SSE `id:` that does not match its batch, a missing header…).
//!
//! - [`wire`]: frames, batches, the binary header and the event-stream
//!   parser of `PROTOCOL.md` §2 and §8.2;
//! - [`raw`]: single requests and sockets, for exact wire checks (statuses,
//!   headers, close codes), every wait bounded;
//! - [`client`]: a complete client ([`Client`]) that runs one attachment at
//!   a time on any transport following a [`Plan`], which may cut the
//!   connection abruptly at a chosen point — the material of exactly-once
//!   tests;
//! - [`checks`]: a few end-to-end checks against a server's echo
//!   application (open, echo in order, resume after a cut with nothing
//!   lost or duplicated), which the `holdfast-conformance <url>` binary
//!   runs.
//!
//! ```no_run
//! # async fn run() -> Result<(), String> {
//! use holdfast_conformance::checks;
//!
//! for report in checks::run_all("http://127.0.0.1:8080/realtime").await {
//!     println!("{report}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Servers under test must be reachable over plain HTTP (`http://` base
//! URLs, `ws://` for WebSocket); requests never go through a proxy.

pub mod checks;
pub mod client;
pub mod raw;
pub mod wire;

pub use client::{Client, CutMode, LastVia, Outcome, Plan, Transport};
pub use wire::{Frame, Payload};
