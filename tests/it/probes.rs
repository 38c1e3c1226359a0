//! Probes (`PROTOCOL.md` §8.5): a client on a fallback transport checks
//! whether WebSocket or SSE works again with `probe=1` and its key. A probe
//! proves a frame can travel, and never attaches or touches the session.

use std::time::Duration;

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::ServerConfig;

fn probe_query(key: &str) -> String {
    format!("{}&probe=1", resume_query(key, 0))
}

#[tokio::test]
async fn probes_answer_without_disturbing_the_attached_session() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let http = raw::http_client();
    // The session lives on SSE.
    let mut main = Sse::open(&http, &server.url("sse", "v=1"), &[])
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    let key = match main.next_within(DEADLINE).await {
        SseIn::Event { frames, .. } => match frames.first() {
            Some(Frame::Open(open)) => open.key.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let session = accept(&mut incoming, DEADLINE).await;

    // WebSocket probe: ping → pong, and nothing else.
    let mut probe = RawWs::connect(&server.ws_url(&probe_query(&key))).await;
    probe.send_frames(&[Frame::Ping]).await;
    assert_eq!(
        probe.recv_frames().await,
        vec![Frame::Pong],
        "WebSocket probe"
    );
    // SSE probe: padding, then a ping event at once.
    let mut sse_probe = Sse::open(&http, &server.url("sse", &probe_query(&key)), &[])
        .await
        .unwrap_or_else(|r| panic!("SSE probe refused: {r:?}"));
    match sse_probe.next_within(DEADLINE).await {
        SseIn::Event { frames, .. } => assert_eq!(frames, vec![Frame::Ping], "SSE probe"),
        other => panic!("SSE probe: {other:?}"),
    }

    // The session still runs on the main stream, not on the probes.
    session.send("still here").await.expect("send");
    let mut got = Vec::new();
    within(DEADLINE, "the message on the main stream", async {
        while got.is_empty() {
            match main.next().await {
                SseIn::Event { frames, .. } => {
                    for frame in frames {
                        match frame {
                            Frame::Msg { seq, data } => got.push((seq, data)),
                            Frame::Ping => {}
                            other => panic!("main stream disturbed by the probes: {other:?}"),
                        }
                    }
                }
                other => panic!("main stream ended: {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(got, vec![(1, "still here".to_owned())]);
    probe.send_frames(&[Frame::Ping]).await;
    assert_eq!(
        probe.recv_frames().await,
        vec![Frame::Pong],
        "a probe carries no session traffic"
    );
    let quiet = tokio::time::timeout(Duration::from_millis(200), sse_probe.next()).await;
    assert!(
        !matches!(&quiet, Ok(SseIn::Event { frames, .. }) if frames.iter().any(|f| f.message_seq().is_some())),
        "an SSE probe carries no session traffic: {quiet:?}"
    );
    assert!(!session.is_closed());

    // Switching after the probe is an ordinary resume, nothing lost.
    drop((probe, sse_probe, main));
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(&key, 1))).await;
    assert_eq!(
        ws.recv_frames().await.first(),
        Some(&Frame::Resumed { ack: 0 })
    );
}

#[tokio::test]
async fn a_probe_with_an_unknown_key_is_session_lost() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let key = "not-a-key-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    raw::get(&http, &server.url("sse", &probe_query(key)), &[])
        .await
        .assert_refusal(410, "close", 4410);
    let mut ws = RawWs::connect(&server.ws_url(&probe_query(key))).await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Close { code: 4410, .. }]),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(4410));
    assert_eq!(
        server.holdfast.session_count(),
        0,
        "a probe never opens a session"
    );
}
