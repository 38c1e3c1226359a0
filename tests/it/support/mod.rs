//! Support for the wire-level tests.
//!
//! - [`wire`], [`raw`], [`client`]: the independent client of
//!   `holdfast-conformance`, written from `PROTOCOL.md` alone (frames and
//!   batches, single requests and sockets, a complete client with planned
//!   cuts);
//! - [`server`]: an in-process server on `127.0.0.1:0` and small apps;
//! - [`random`]: the seed and random payloads;
//! - [`own_process`]: runs a test that measures the whole process in a
//!   process of its own.
//!
//! Nothing here uses `holdfast-protocol`'s session core or codecs: the
//! point is to show that a client written from `PROTOCOL.md` interoperates.
//! The server helpers convert to and from the server API's `Message` only.

pub mod own_process;
pub mod random;
pub mod server;

pub use holdfast_conformance::{client, raw, wire};

pub use client::{Client, CutMode, Outcome, Plan, Transport};
pub use raw::{DEADLINE, RawWs, SharedIn, Sse, SseIn, WsIn, within};
pub use server::{Recorder, TestServer, accept, echo, to_message, to_payload};
pub use wire::{Frame, Payload};

/// Opens a session on `transport` with a new wire client (the attachment
/// ends once greeted) and takes the application's end of it.
pub async fn open_session(
    server: &TestServer,
    incoming: &mut holdfast::server::Incoming,
    transport: Transport,
) -> (Client, holdfast::server::Session) {
    let mut client = Client::new(&server.base, 0);
    assert_eq!(
        client.attach(transport, &Plan::greeting_only()).await,
        Ok(Outcome::Done),
        "opening a session on {transport:?}"
    );
    (client, accept(incoming, DEADLINE).await)
}

/// A plain HTTP client (no proxy) whose connections come from `local`, a
/// loopback address other than 127.0.0.1: another client, as the server
/// sees it.
pub fn http_from(local: std::net::IpAddr) -> reqwest::Client {
    // As in `raw::http_client`: reqwest may need a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .local_address(local)
        .build()
        .expect("build the HTTP client")
}

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
