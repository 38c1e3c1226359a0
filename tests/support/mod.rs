//! Support for holdfast's integration tests.
//!
//! - [`wire`]: the frames, batches, binary header and event-stream parser of
//!   `PROTOCOL.md`, written from the document alone;
//! - [`client`]: a complete client (sequence numbers, acks, replay,
//!   dedup, resume) over WebSocket, SSE and long-polling, with planned cuts;
//! - [`raw`]: single requests and sockets for exact wire checks;
//! - [`server`]: an in-process server on `127.0.0.1:0` and small apps;
//! - [`random`]: the seed and random payloads.
//!
//! Nothing here uses `holdfast-protocol`'s session core or codecs: the
//! point is to show that a client written from `PROTOCOL.md` interoperates.
//! The server helpers convert to and from the server API's `Message` only.

// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod client;
pub mod random;
pub mod raw;
pub mod server;
pub mod wire;

#[allow(unused_imports)]
pub use client::{Client, CutMode, LastVia, Outcome, Plan, Transport};
#[allow(unused_imports)]
pub use raw::{DEADLINE, RawWs, SharedIn, Sse, SseIn, WsIn, within};
#[allow(unused_imports)]
pub use server::{Recorder, TestServer, accept, echo, to_message, to_payload};
#[allow(unused_imports)]
pub use wire::{Frame, Payload};

/// Short timers for timer tests: ping `ping_ms`, timeout `timeout_ms`.
pub fn config_with_timers(ping_ms: u64, timeout_ms: u64) -> holdfast::server::ServerConfig {
    use std::time::Duration;
    let mut config = holdfast::server::ServerConfig::default();
    config.session.ping_interval = Duration::from_millis(ping_ms);
    config.session.timeout = Duration::from_millis(timeout_ms);
    config.session.poll_hold = Duration::from_millis(timeout_ms / 2);
    config
}

/// Asserts that `got` is exactly `expected`: same messages, same order,
/// none lost or repeated. On failure, names the first difference.
pub fn assert_exactly(what: &str, got: &[Payload], expected: &[Payload]) {
    if got == expected {
        return;
    }
    let first = got
        .iter()
        .zip(expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    let detail = match (got.get(first), expected.get(first)) {
        (Some(g), Some(e)) => {
            let dup = got[..first].contains(g);
            let later = expected[first..].iter().position(|x| x == g);
            format!(
                "at index {first}: got {g:?}, expected {e:?} (got one is {}{})",
                if dup {
                    "a duplicate of an earlier one, "
                } else {
                    ""
                },
                match later {
                    Some(i) => format!("expected at index {}", first + i),
                    None => "not expected at all".into(),
                }
            )
        }
        (None, Some(e)) => format!("missing from index {first}: next expected {e:?}"),
        (Some(g), None) => format!("extra from index {first}: {g:?}"),
        (None, None) => unreachable!(),
    };
    panic!(
        "{what}: {} messages, expected {}; first difference {detail}",
        got.len(),
        expected.len()
    );
}
