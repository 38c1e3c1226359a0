//! Issue-10 row "opens sessions with a 380 KB header": `serve` refuses a
//! request head past `max_request_head_bytes` (431) before any session
//! exists; and where the server accepts big heads (plain `axum::serve`, or
//! a raised limit), a session keeps at most `max_kept_header_bytes` of its
//! opening request's headers, however many the client sent. A fresh
//! session still echoes.

use std::time::Duration;

use crate::support::raw;
use crate::support::*;
use holdfast::server::{Holdfast, ServeConfig, ServerConfig};

/// Bytes of names and values a session holds.
fn kept_bytes(session: &holdfast::server::Session) -> usize {
    session
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

#[tokio::test]
async fn serve_refuses_a_huge_request_head_before_it_reaches_a_session() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let big = "h".repeat(95 * 1024);
    let reply = raw::get(
        &http,
        &server.url("poll", "v=1"),
        &[("x-pad", big.as_str())],
    )
    .await;
    assert_eq!(reply.status, 431, "request header fields too large");
    assert_eq!(server.holdfast.held_sessions(), 0, "no session was opened");
    // Headers within the limit still open a session.
    let fine = "h".repeat(30 * 1024);
    let reply = raw::get(
        &http,
        &server.url("poll", "v=1"),
        &[("x-pad", fine.as_str())],
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn sessions_opened_with_huge_headers_keep_a_bounded_copy() {
    let config = ServerConfig::default();
    let budget = config.max_kept_header_bytes;
    let (holdfast, mut incoming) = Holdfast::builder().config(config).build();
    // Accept heads as big as hyper's own default does (as a server on plain
    // `axum::serve` would).
    let mut serve = ServeConfig::default();
    serve.max_request_head_bytes = 512 * 1024;
    let server = TestServer::serve_with(holdfast, serve).await;
    let http = raw::http_client();
    // hyper accepts up to ~400 KB of headers: spread 380 KB over a few.
    let chunk = "h".repeat(95 * 1024);
    let sessions = 20;
    let mut kept_total = 0;
    let mut held = Vec::new();
    for _ in 0..sessions {
        let reply = raw::get(
            &http,
            &server.url("poll", "v=1"),
            &[
                ("x-pad-1", chunk.as_str()),
                ("x-pad-2", chunk.as_str()),
                ("x-pad-3", chunk.as_str()),
                ("x-pad-4", chunk.as_str()),
                ("x-small", "kept"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "the session opens");
        let session = within(DEADLINE, "the session reaches the app", incoming.accept())
            .await
            .expect("a session");
        let kept = kept_bytes(&session);
        assert!(
            kept <= budget,
            "kept {kept} bytes of headers, budget {budget}"
        );
        assert_eq!(
            session.headers().get("x-small").map(|v| v.as_bytes()),
            Some(&b"kept"[..]),
            "small headers are kept"
        );
        kept_total += kept;
        // The app keeps the session: it must stay small while it lives.
        held.push(session);
    }
    eprintln!(
        "figure: {sessions} sessions opened with 380 KiB of headers each keep {kept_total} bytes \
         of headers in all ({} per session, budget {budget})",
        kept_total / sessions
    );

    // A fresh, ordinary session on the same server still opens and echoes.
    tokio::spawn(async move {
        while let Some(session) = incoming.accept().await {
            tokio::spawn(echo(session));
        }
    });
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let _open = ws.recv_frames().await;
    ws.send_frames(&[Frame::Msg {
        seq: 1,
        data: "still here".into(),
    }])
    .await;
    let echoed = within(Duration::from_secs(5), "the echo", async {
        loop {
            for frame in ws.recv_frames().await {
                if let Frame::Msg { data, .. } = frame {
                    return data;
                }
            }
        }
    })
    .await;
    assert_eq!(echoed, "still here");
    assert_eq!(held.len(), sessions);
}
