//! The gaps a client written from `PROTOCOL.md` alone found (issue 11,
//! items 2 and 4–7), checked on the wire with the independent test client:
//!
//! - one close story (§9): the answer to a client's `close` carries the
//!   final ack on every transport, and a resume after a close — by either
//!   side — replays the unacknowledged messages, then the same `close`;
//! - probes end with a documented frame, `detach` 4001 (§8.5);
//! - a protocol version the server does not speak is a final refusal,
//!   `close` 4400, whether or not the request names a session (§10);
//! - an empty session key is a malformed request, `close` 4400 (§1.1).

use crate::support;

use std::time::Duration;

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::ServerConfig;

const KEY_HEADER: &str = "holdfast-key";

fn msg(seq: u64, data: &str) -> Frame {
    Frame::Msg {
        seq,
        data: data.to_owned(),
    }
}

fn bye() -> Frame {
    Frame::close(1000, "bye")
}

/// Messages 1–3, as the client sends them and the echo app sends them back.
fn three() -> Vec<Frame> {
    vec![msg(1, "one"), msg(2, "two"), msg(3, "three")]
}

/// Opens a session on WebSocket: the socket and the key.
async fn open_ws(server: &TestServer) -> (RawWs, String) {
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    match ws.recv_frames().await.first() {
        Some(Frame::Open(open)) => {
            let key = open.key.clone();
            (ws, key)
        }
        other => panic!("expected open, got {other:?}"),
    }
}

/// Opens a session by long-polling: its key.
async fn open_poll(server: &TestServer, http: &reqwest::Client) -> String {
    let reply = raw::get(http, &server.url("poll", "v=1"), &[]).await;
    match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected open, got {other:?}"),
    }
}

/// Reads batches until `n` messages arrived; returns every frame read.
async fn ws_until_messages(ws: &mut RawWs, n: usize) -> Vec<Frame> {
    within(DEADLINE, "the echoes", async {
        let mut frames = Vec::new();
        while frames
            .iter()
            .filter(|f: &&Frame| f.message_seq().is_some())
            .count()
            < n
        {
            match ws.recv().await {
                WsIn::Frames(batch) => frames.extend(batch),
                other => panic!("expected the echoes, got {other:?}"),
            }
        }
        frames
    })
    .await
}

/// Reads until the batch holding a `close`, then the WebSocket close:
/// that batch and the close code.
async fn ws_close_batch(ws: &mut RawWs) -> (Vec<Frame>, Option<u16>) {
    within(DEADLINE, "the answer to the close", async {
        loop {
            match ws.recv().await {
                WsIn::Frames(batch) if batch.iter().any(|f| f.kind() == "close") => {
                    let code = match ws.recv().await {
                        WsIn::Closed(close) => close.map(|(code, _)| code),
                        other => panic!("expected the WebSocket close, got {other:?}"),
                    };
                    return (batch, code);
                }
                WsIn::Frames(_) => {}
                other => panic!("expected the answer to the close, got {other:?}"),
            }
        }
    })
    .await
}

// ---- one close story (items 2 and 6) --------------------------------------------

/// Item 6: the server answers a client's `close` with an ack of everything
/// it received, then the `close` — also when that ack already went out.
#[tokio::test]
async fn the_answer_to_a_websocket_close_carries_the_ack() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let (mut ws, _key) = open_ws(&server).await;
    ws.send_frames(&three()).await;
    let echoes = ws_until_messages(&mut ws, 3).await;
    assert!(
        echoes.contains(&Frame::Ack { seq: 3 }),
        "the echoes acknowledge the messages: {echoes:?}"
    );
    ws.send_frames(&[bye()]).await;
    let (answer, code) = ws_close_batch(&mut ws).await;
    assert_eq!(
        answer,
        vec![Frame::Ack { seq: 3 }, bye()],
        "§9: ack, then close"
    );
    assert_eq!(code, Some(1000));
}

/// Item 2 on WebSocket: echoes 1–3 received but not acknowledged, then
/// the client's `close`; a resume (here by long-polling, `last=0`) gets the
/// three messages again, then the same `close`.
#[tokio::test]
async fn a_resume_after_a_websocket_close_replays_the_unacked_messages() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let (mut ws, key) = open_ws(&server).await;
    ws.send_frames(&three()).await;
    ws_until_messages(&mut ws, 3).await;
    ws.send_frames(&[bye()]).await;
    ws_close_batch(&mut ws).await;
    drop(ws);

    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let mut expected = vec![Frame::Resumed { ack: 3 }];
    expected.extend(three());
    expected.push(bye());
    assert_eq!(reply.batch(), expected, "§5: the rest, then the same close");

    // Acknowledged now: a resume gets only the close, on every transport.
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 3)), &[]).await;
    assert_eq!(reply.batch(), vec![Frame::Resumed { ack: 3 }, bye()]);
}

/// Item 2 through `send`: the reply to a client's `close` acknowledges its
/// messages and holds the `close` back while messages of the server's are
/// unacknowledged; they follow on the next attachment (here SSE), then
/// the close; once the client acknowledged them, a send reply carries the
/// close too.
#[tokio::test]
async fn a_resume_after_a_close_through_send_replays_the_unacked_messages() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let key = open_poll(&server, &http).await;
    let reply = raw::send(&http, &server.base, &key, &three()).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 3 }]);
    // Wait until the application echoed all three (polls with last=0,
    // acknowledging nothing).
    within(DEADLINE, "the three echoes", async {
        loop {
            let poll = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
            let got = poll.batch();
            if got.iter().filter(|f| f.message_seq().is_some()).count() == 3 {
                break;
            }
        }
    })
    .await;

    let reply = raw::send(&http, &server.base, &key, &[bye()]).await;
    assert_eq!(
        reply.batch(),
        vec![Frame::Ack { seq: 3 }],
        "§9: the ack; the close waits behind the 3 unacknowledged messages"
    );

    let mut sse = Sse::open(&http, &server.url("sse", &resume_query(&key, 0)), &[])
        .await
        .unwrap_or_else(|r| panic!("SSE resume refused: {r:?}"));
    let (frames, end) = sse.read_to_end(DEADLINE).await;
    let mut expected = vec![Frame::Resumed { ack: 3 }];
    expected.extend(three());
    expected.push(bye());
    assert_eq!(frames, expected, "§5: the rest, then the same close");
    assert!(matches!(end, SseIn::Ended), "{end:?}");

    let reply = raw::send(&http, &server.base, &key, &[Frame::Ack { seq: 3 }]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 3 }, bye()]);
}

/// The other direction: after a server close (here 1009, a message too
/// big), a resume replays the unacknowledged messages, then the close —
/// the same rule, on WebSocket with the final ack before the close.
#[tokio::test]
async fn a_resume_after_a_server_close_replays_the_unacked_messages() {
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    let server = TestServer::echo(config).await;
    let (mut ws, key) = open_ws(&server).await;
    ws.send_frames(&three()).await;
    ws_until_messages(&mut ws, 3).await;
    ws.send_frames(&[msg(4, &"x".repeat(2000))]).await;
    let (answer, code) = ws_close_batch(&mut ws).await;
    assert!(
        matches!(
            answer.as_slice(),
            [Frame::Ack { seq: 3 }, Frame::Close { code: 1009, .. }]
        ),
        "{answer:?}"
    );
    assert_eq!(code, Some(1009));
    drop(ws);
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(&key, 1))).await;
    let (frames, code) = ws.recv_until_closed().await;
    assert!(
        matches!(
            frames.as_slice(),
            [
                Frame::Resumed { ack: 3 },
                Frame::Msg { seq: 2, .. },
                Frame::Msg { seq: 3, .. },
                Frame::Ack { seq: 3 },
                Frame::Close { code: 1009, .. },
            ]
        ),
        "{frames:?}"
    );
    assert_eq!(code.map(|(code, _)| code), Some(1009));
}

// ---- probes end with a documented frame (item 4) --------------------------------

fn probe_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.probe_lifetime = Duration::from_millis(300);
    config
}

fn probe_query(key: &str) -> String {
    format!("{}&probe=1", resume_query(key, 0))
}

#[tokio::test]
async fn a_websocket_probe_ends_with_detach_4001_and_close_4001() {
    let server = TestServer::echo(probe_config()).await;
    let http = raw::http_client();
    let key = open_poll(&server, &http).await;
    let mut probe = RawWs::connect(&server.ws_url(&probe_query(&key))).await;
    probe.send_frames(&[Frame::Ping]).await;
    assert_eq!(probe.recv_frames().await, vec![Frame::Pong]);
    let (frames, close) = probe.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Detach { code: 4001, .. }]),
        "§8.5: the probe ends with detach 4001: {frames:?}"
    );
    assert_eq!(close.map(|(code, _)| code), Some(4001));
}

#[tokio::test]
async fn an_sse_probe_ends_with_a_detach_4001_event() {
    let server = TestServer::echo(probe_config()).await;
    let http = raw::http_client();
    let key = open_poll(&server, &http).await;
    let mut probe = Sse::open(&http, &server.url("sse", &probe_query(&key)), &[])
        .await
        .unwrap_or_else(|r| panic!("SSE probe refused: {r:?}"));
    let (frames, end) = probe.read_to_end(DEADLINE).await;
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Ping, Frame::Detach { code: 4001, .. }]
        ),
        "§8.5: ping at once, detach 4001 at the end: {frames:?}"
    );
    assert!(matches!(end, SseIn::Ended), "{end:?}");
}

// ---- an unsupported version is final (item 5) -----------------------------------

/// `v=2` naming a live session: `close` 4400 on every endpoint (never a
/// `detach` 1002, which says "resume"), and the session is untouched: its
/// WebSocket attachment carries on, not replaced.
#[tokio::test]
async fn an_unsupported_version_naming_a_session_is_4400_and_touches_nothing() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let (mut ws, key) = open_ws(&server).await;
    let v2 = format!("v=2&key={}&last=0", raw::encode(&key));
    for endpoint in ["poll", "sse"] {
        raw::get(&http, &server.url(endpoint, &v2), &[])
            .await
            .assert_refusal(400, "close", 4400);
        // The key in the header instead.
        raw::get(&http, &server.url(endpoint, "v=2"), &[(KEY_HEADER, &key)])
            .await
            .assert_refusal(400, "close", 4400);
    }
    raw::post(
        &http,
        &server.url("send", &v2),
        support::wire::encode_batch(&[msg(1, "refused")]),
        &[],
    )
    .await
    .assert_refusal(400, "close", 4400);
    let mut refused = RawWs::connect(&server.ws_url(&v2)).await;
    let (frames, close) = refused.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Close { code: 4400, .. }]),
        "{frames:?}"
    );
    assert_eq!(close.map(|(code, _)| code), Some(4400));

    // Untouched: nothing of the refused send was applied, the WebSocket is
    // still the attachment.
    ws.send_frames(&[msg(1, "accepted")]).await;
    let frames = ws_until_messages(&mut ws, 1).await;
    assert!(
        frames.contains(&msg(1, "accepted")) && frames.iter().all(|f| f.kind() != "detach"),
        "{frames:?}"
    );
}

// ---- an empty key is malformed (item 7) -----------------------------------------

/// `key=` (or an empty `Holdfast-Key`, or an empty key subprotocol) names
/// no session: `close` 4400 on every endpoint, and no session opens.
#[tokio::test]
async fn an_empty_key_is_4400_and_opens_nothing() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    for endpoint in ["poll", "sse"] {
        raw::get(&http, &server.url(endpoint, "v=1&key="), &[])
            .await
            .assert_refusal(400, "close", 4400);
        raw::get(&http, &server.url(endpoint, "v=1"), &[(KEY_HEADER, "")])
            .await
            .assert_refusal(400, "close", 4400);
    }
    raw::post(&http, &server.url("send", "v=1&key="), "[]", &[])
        .await
        .assert_refusal(400, "close", 4400);
    for (query, headers) in [
        ("v=1&key=", vec![]),
        ("v=1", vec![(KEY_HEADER, "")]),
        (
            "v=1",
            vec![("sec-websocket-protocol", "holdfast.v1, holdfast.key.")],
        ),
    ] {
        let mut ws = RawWs::connect_with(&server.ws_url(query), &headers).await;
        let (frames, close) = ws.recv_until_closed().await;
        assert!(
            matches!(frames.as_slice(), [Frame::Close { code: 4400, .. }]),
            "{query} {headers:?}: {frames:?}"
        );
        assert_eq!(close.map(|(code, _)| code), Some(4400));
    }
    assert_eq!(server.holdfast.session_count(), 0, "no session may open");
}
