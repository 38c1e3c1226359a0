//! Native text messages on WebSocket (`PROTOCOL.md` §2.2.1): offered by the
//! client (`wstext=1`), granted in the greeting (`"wstext":1`), then large
//! texts travel as `0x02` binary messages both ways — and never to or from
//! a peer that did not negotiate them. Limits, charges and exactly-once
//! delivery are those of the same text in a JSON `msg` frame.

use crate::support::raw::{self, resume_query};
use crate::support::wire::encode_native_text;
use crate::support::*;
use futures_util::StreamExt;
use holdfast::server::{CloseCode, ServerConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A text the holdfast implementations send natively (≥ 1024 bytes), with
/// what JSON must escape and multi-byte characters; its number first.
fn big(n: u64) -> String {
    let mut text = format!("{n}:\"quoted\"\n\\ é ☃ 𝄞 ");
    while text.len() < 1500 {
        text.push_str("line \"x\"\t\n");
    }
    text
}

/// Opens a raw WebSocket with `query`; returns it, the greeting's JSON
/// and the key. The greeting is read as raw JSON to see `wstext`.
async fn open_raw(server: &TestServer, query: &str) -> (RawWs, serde_json::Value) {
    let mut ws = RawWs::connect(&server.ws_url(query)).await;
    let greeting = greeting(&mut ws).await;
    (ws, greeting)
}

/// The first frame on a socket, as JSON.
async fn greeting(ws: &mut RawWs) -> serde_json::Value {
    let message = within(DEADLINE, "the greeting", ws.stream.next())
        .await
        .expect("a greeting")
        .expect("a greeting");
    let WsMessage::Text(text) = message else {
        panic!("greeting is not a text message: {message:?}");
    };
    let batch: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
    batch[0].clone()
}

/// A server whose application sends `texts`, then waits for the end.
async fn server_sending(config: ServerConfig, texts: Vec<String>) -> TestServer {
    let holdfast = holdfast::server::Holdfast::builder()
        .config(config)
        .on_session(move |session| {
            let texts = texts.clone();
            async move {
                for text in &texts {
                    if session
                        .send(to_message(&Payload::Text(text.clone())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                session.closed().await;
            }
        });
    TestServer::serve(holdfast).await
}

/// What a raw socket receives until `n` messages came: `(seq, text,
/// native)` in order.
async fn receive_texts(ws: &mut RawWs, n: usize) -> Vec<(u64, String, bool)> {
    let mut got = Vec::new();
    within(DEADLINE, "the server's texts", async {
        while got.len() < n {
            match ws.recv().await {
                WsIn::NativeText { seq, text } => got.push((seq, text, true)),
                WsIn::Frames(frames) => {
                    for frame in frames {
                        if let Frame::Msg { seq, data } = frame {
                            got.push((seq, data, false));
                        }
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    got
}

#[tokio::test]
async fn an_offering_client_is_granted_native_text_and_gets_large_texts_natively() {
    let texts = vec![
        "small".to_owned(),
        big(2),
        "x".repeat(1023),
        "y".repeat(1024),
    ];
    let server = server_sending(ServerConfig::default(), texts.clone()).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    assert_eq!(open["t"], "open");
    assert_eq!(open["wstext"], 1, "the greeting grants native text: {open}");
    let got = receive_texts(&mut ws, 4).await;
    let expected: Vec<(u64, String, bool)> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 1, t.clone(), t.len() >= 1024))
        .collect();
    assert_eq!(got, expected, "large texts native, small ones in JSON");
}

#[tokio::test]
async fn a_client_that_does_not_offer_gets_every_text_in_json() {
    let texts = vec![big(1), "small".to_owned()];
    let server = server_sending(ServerConfig::default(), texts.clone()).await;
    // No offer; an offer with another value is no offer either.
    for query in ["v=1", "v=1&wstext=0"] {
        let (mut ws, open) = open_raw(&server, query).await;
        assert_eq!(open["t"], "open");
        assert!(open.get("wstext").is_none(), "{query}: {open}");
        let got = receive_texts(&mut ws, 2).await;
        assert!(got.iter().all(|(_, _, native)| !native), "{query}: {got:?}");
        assert_eq!(got[0].1, texts[0]);
    }
}

#[tokio::test]
async fn native_text_upstream_is_received_like_json_and_acknowledged() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    assert_eq!(open["wstext"], 1);
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session);
    ws.send_binary(encode_native_text(1, big(1).as_bytes()))
        .await;
    ws.send_frames(&[Frame::Msg {
        seq: 2,
        data: "json".into(),
    }])
    .await;
    // A short native text: receivers accept any size.
    ws.send_binary(encode_native_text(3, "é".as_bytes())).await;
    // A duplicate, natively: dropped like any duplicate.
    ws.send_binary(encode_native_text(1, big(1).as_bytes()))
        .await;
    let got = recorder.wait_for(3, DEADLINE).await;
    assert_eq!(
        got,
        vec![
            Payload::Text(big(1)),
            Payload::Text("json".into()),
            Payload::Text("é".into())
        ]
    );
}

#[tokio::test]
async fn a_server_without_native_text_ignores_the_offer_and_refuses_0x02() {
    let mut config = ServerConfig::default();
    config.ws_native_text = false;
    let server = server_sending(config.clone(), vec![big(1)]).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    assert!(open.get("wstext").is_none(), "{open}");
    let got = receive_texts(&mut ws, 1).await;
    assert_eq!(got, vec![(1, big(1), false)]);
    // Byte 0 = 0x02 is reserved for such a server, as it was before.
    let (server, _incoming) = TestServer::start(config).await;
    let (mut ws, _) = open_raw(&server, "v=1&wstext=1").await;
    ws.send_binary(encode_native_text(1, b"hello")).await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.last(), Some(Frame::Detach { code: 1002, .. })),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(1002));
}

#[tokio::test]
async fn invalid_utf8_in_native_text_detaches_1002_and_the_session_resumes_intact() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let mut ws = RawWs::connect(&server.ws_url("v=1&wstext=1")).await;
    let key = match ws.recv_frames().await.as_slice() {
        [Frame::Open(open)] => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session);
    ws.send_binary(encode_native_text(1, b"fine")).await;
    // Invalid UTF-8 in several ways: a lone continuation byte, a truncated
    // sequence, an encoded surrogate, an overlong encoding.
    for (i, bad) in [
        &b"a\x80b"[..],
        &b"ab\xe2\x98"[..],
        &b"\xed\xa0\x80"[..],
        &b"\xc0\xaf"[..],
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            ws = RawWs::connect(&server.ws_url(&format!("{}&wstext=1", resume_query(&key, 0))))
                .await;
            assert!(
                matches!(
                    ws.recv_frames().await.first(),
                    Some(Frame::Resumed { ack: 1 })
                ),
                "case {i}: resumed with everything before the bad message"
            );
        }
        ws.send_binary(encode_native_text(2, bad)).await;
        let (frames, close) = ws.recv_until_closed().await;
        assert!(
            matches!(frames.last(), Some(Frame::Detach { code: 1002, .. })),
            "case {i}: {frames:?}"
        );
        assert_eq!(close.map(|c| c.0), Some(1002), "case {i}");
    }
    // The session lives: resume and send message 2 properly.
    let mut ws =
        RawWs::connect(&server.ws_url(&format!("{}&wstext=1", resume_query(&key, 0)))).await;
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Resumed { ack: 1 })
    ));
    ws.send_binary(encode_native_text(2, "ok ✓".as_bytes()))
        .await;
    assert_eq!(
        recorder.wait_for(2, DEADLINE).await,
        vec![Payload::Text("fine".into()), Payload::Text("ok ✓".into())]
    );
}

/// Reads until the socket closes and checks the session ended with 1009.
async fn expect_too_big(ws: &mut RawWs, session: &holdfast::server::Session, name: &str) {
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.last(), Some(Frame::Close { code: 1009, .. })),
        "{name}: {frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(1009), "{name}");
    let end = within(DEADLINE, "the session to end", session.closed()).await;
    assert_eq!(end.close.code, CloseCode::TOO_BIG, "{name}: {end:?}");
}

#[tokio::test]
async fn native_text_over_max_msg_ends_the_session_with_1009_as_in_json() {
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    // At the limit: accepted (2-byte characters, 1024 bytes).
    let (server, mut incoming) = TestServer::start(config.clone()).await;
    let (mut ws, _) = open_raw(&server, "v=1&wstext=1").await;
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session);
    ws.send_binary(encode_native_text(1, "é".repeat(512).as_bytes()))
        .await;
    assert_eq!(recorder.wait_for(1, DEADLINE).await.len(), 1);
    // One byte over: refused, the session ends.
    let (server, mut incoming) = TestServer::start(config).await;
    let (mut ws, _) = open_raw(&server, "v=1&wstext=1").await;
    let session = accept(&mut incoming, DEADLINE).await;
    ws.send_binary(encode_native_text(1, "x".repeat(1025).as_bytes()))
        .await;
    expect_too_big(&mut ws, &session, "over max_msg").await;
}

#[tokio::test]
async fn native_text_over_max_batch_ends_the_session_with_1009_as_in_json() {
    // max_batch cut down to max_msg: a native text of max_msg bytes is a
    // WebSocket message of max_msg + 9 bytes, past it.
    let mut config = ServerConfig::default();
    config.session.set_max_message(2048);
    config.session.max_batch = 2048;
    let (server, mut incoming) = TestServer::start(config).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    assert_eq!(open["max_batch"], 2048);
    let session = accept(&mut incoming, DEADLINE).await;
    ws.send_binary(encode_native_text(1, "x".repeat(2040).as_bytes()))
        .await;
    expect_too_big(&mut ws, &session, "over max_batch").await;
}

#[tokio::test]
async fn native_text_is_charged_as_in_json_and_an_overrun_detaches_1008() {
    // max_msg 1024: a 1024-byte text is charged 1152. A window of three.
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    config.session.max_inbound_bytes = 3 * 1152;
    let (server, mut incoming) = TestServer::start(config).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    assert_eq!(open["win"], 3 * 1152);
    // Accepted, and never read: the window fills.
    let session = accept(&mut incoming, DEADLINE).await;
    let text = "z".repeat(1024);
    for seq in 1..=4 {
        ws.send_binary(encode_native_text(seq, text.as_bytes()))
            .await;
    }
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.last(), Some(Frame::Detach { code: 1008, .. })),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(1008));
    // Three were received (3 × 1152 fit exactly), the fourth was not.
    let mut ws = RawWs::connect(&server.ws_url(&format!(
        "{}&wstext=1",
        resume_query(open["key"].as_str().unwrap_or_default(), 0)
    )))
    .await;
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Resumed { ack: 3 })
    ));
    drop(session);
}

/// Exactly-once and order across a WebSocket cut and a switch to SSE with
/// native texts in flight both ways: the server's texts sent natively and
/// not acknowledged come again as `msg` frames on SSE, and the client's
/// texts sent natively are sent again in a JSON `send` — duplicates
/// dropped.
#[tokio::test]
async fn native_texts_in_flight_survive_a_cut_and_a_switch_to_sse_exactly_once() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    let key = open["key"].as_str().expect("a key").to_owned();
    let session = accept(&mut incoming, DEADLINE).await;
    // Downstream: three large texts, natively.
    for n in 1..=3 {
        session
            .send(to_message(&Payload::Text(big(n))))
            .await
            .expect("send");
    }
    let got = receive_texts(&mut ws, 3).await;
    assert!(got.iter().all(|(_, _, native)| *native), "{got:?}");
    // Upstream: three large texts, natively; the application takes them.
    for seq in 1..=3 {
        ws.send_binary(encode_native_text(seq, big(100 + seq).as_bytes()))
            .await;
    }
    let (recorder, _) = Recorder::start(session.clone());
    recorder.wait_for(3, DEADLINE).await;
    // The socket dies before the client acknowledged anything, and it
    // delivered only the first text to its application.
    drop(ws);
    // Resume on SSE with last=1: texts 2 and 3 come again, in JSON.
    let http = raw::http_client();
    let mut sse = Sse::open(
        &http,
        &server.url("sse", &format!("v=1&last=1&key={}", raw::encode(&key))),
        &[],
    )
    .await
    .unwrap_or_else(|refused| panic!("SSE refused: {}", refused.status));
    let mut frames: Vec<Frame> = Vec::new();
    within(DEADLINE, "the replay on SSE", async {
        while frames.iter().filter(|f| f.kind() == "msg").count() < 2 {
            match sse.next().await {
                SseIn::Event { frames: batch, .. } => frames.extend(batch),
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(
        matches!(frames.first(), Some(Frame::Resumed { ack: 3 })),
        "{frames:?}"
    );
    let replayed: Vec<&Frame> = frames.iter().filter(|f| f.kind() == "msg").collect();
    assert_eq!(
        replayed,
        vec![
            &Frame::Msg {
                seq: 2,
                data: big(2)
            },
            &Frame::Msg {
                seq: 3,
                data: big(3)
            }
        ]
    );
    // The client sends its last text again (it missed the ack) and a new
    // one, in JSON: the duplicate is dropped, the new one taken once.
    let reply = raw::send(
        &http,
        &server.base,
        &key,
        &[
            Frame::Msg {
                seq: 3,
                data: big(103),
            },
            Frame::Msg {
                seq: 4,
                data: big(104),
            },
            Frame::Ack { seq: 3 },
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(matches!(reply.batch().first(), Some(Frame::Ack { seq: 4 })));
    let all = recorder.wait_for(4, DEADLINE).await;
    assert_eq!(
        all,
        (101..=104)
            .map(|n| Payload::Text(big(n)))
            .collect::<Vec<_>>()
    );
}

// ---- the Rust client -------------------------------------------------------

mod rust_client {
    use super::big;
    use crate::client_support::*;
    use holdfast::client::{Connection, Event, Message, TransportKind};
    use holdfast_testkit::Behavior;

    /// Sends texts `from..to` (numbered, [`big`]) and checks their echoes
    /// come back exactly once, in order; `during(n)` after each send.
    async fn echo_texts(
        connection: &mut Connection,
        from: u64,
        to: u64,
        mut during: impl FnMut(u64),
    ) -> Vec<TransportKind> {
        let mut transports = Vec::new();
        let (mut sent, mut expected) = (from, from);
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while expected < to {
            while sent < to && sent < expected + 16 {
                connection
                    .send(Message::text(big(sent)))
                    .await
                    .expect("send");
                sent += 1;
                during(sent);
            }
            let event = tokio::time::timeout_at(deadline, connection.next_event())
                .await
                .unwrap_or_else(|_| panic!("timed out at {expected}/{to}"))
                .expect("the connection ended early");
            match event {
                Event::Message(message) => {
                    assert_eq!(
                        message.as_text(),
                        Some(big(expected).as_str()),
                        "echo out of order, duplicated or damaged"
                    );
                    expected += 1;
                }
                Event::Open { transport, .. } | Event::Resumed { transport } => {
                    transports.push(transport)
                }
                Event::Closed(closed) => panic!("session closed: {closed:?}"),
                _ => {}
            }
        }
        transports
    }

    /// Bytes both ways through a proxy for 40 escaped texts echoed over
    /// WebSocket, with the server's native text on or off.
    async fn bytes_for(native: bool) -> (u64, u64) {
        let mut config = quick_server_config();
        config.ws_native_text = native;
        let (_server, proxy, url) = proxied(config, Behavior::transparent()).await;
        let mut connection = client(&url)
            .transport(TransportKind::WebSocket)
            .connect()
            .await
            .expect("connect");
        echo_texts(&mut connection, 0, 40, |_| {}).await;
        connection.close().await;
        let stats = proxy.stats();
        (stats.bytes_up, stats.bytes_down)
    }

    /// The client offers native text and uses it both ways once granted
    /// (its texts escape heavily in JSON, so the bytes tell), and works as
    /// before with a server that does not grant it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rust_client_sends_and_receives_native_text_only_where_granted() {
        let (up_native, down_native) = bytes_for(true).await;
        let (up_json, down_json) = bytes_for(false).await;
        println!(
            "native: {up_native} up, {down_native} down; JSON: {up_json} up, {down_json} down"
        );
        // 40 texts of 1500 bytes: JSON escapes about a third more.
        assert!(
            up_native * 5 < up_json * 4,
            "upstream not native: {up_native} vs {up_json}"
        );
        assert!(
            down_native * 5 < down_json * 4,
            "downstream not native: {down_native} vs {down_json}"
        );
    }

    /// Texts sent natively and cut off in flight arrive exactly once after
    /// a WebSocket cut and a fallback to SSE, where they travel as JSON.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn native_texts_in_flight_survive_a_cut_and_a_fallback_to_sse() {
        let (_server, proxy, url) = proxied(quick_server_config(), Behavior::transparent()).await;
        let proxy = std::sync::Arc::new(proxy);
        let mut connection = client(&url).connect().await.expect("connect");
        assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
        let cutter = proxy.clone();
        let transports = echo_texts(&mut connection, 0, 200, move |sent| {
            if sent == 100 {
                // WebSocket is refused from now on, and the live one cut
                // with texts in flight both ways.
                cutter.set(Behavior::default().refuse_upgrades(403));
                cutter.cut_all();
            }
        })
        .await;
        assert!(proxy.stats().cut >= 1);
        assert_eq!(
            connection.transport(),
            Some(TransportKind::Sse),
            "{transports:?}"
        );
    }
}

/// An ack rides along only in a JSON batch that goes out anyway: next to a
/// native text it would be a WebSocket message of its own, so the server
/// keeps it for its deadline (§3) — while small texts still carry theirs.
#[tokio::test]
async fn acks_ride_only_on_json_batches_and_otherwise_wait_for_their_deadline() {
    let mut config = ServerConfig::default();
    config.session.ack_delay = std::time::Duration::from_secs(1);
    let server = TestServer::echo(config).await;
    let (mut ws, open) = open_raw(&server, "v=1&wstext=1").await;
    assert_eq!(open["wstext"], 1);
    // Small texts: each echo's batch carries the ack of what came.
    ws.send_frames(&[Frame::Msg {
        seq: 1,
        data: "small".into(),
    }])
    .await;
    match ws.recv().await {
        WsIn::Frames(frames) => assert!(
            frames.contains(&Frame::Ack { seq: 1 }),
            "the ack rides on the echo's batch: {frames:?}"
        ),
        other => panic!("{other:?}"),
    }
    // Large texts, natively: the echoes come alone, and one ack for all
    // of them follows at its deadline.
    let started = std::time::Instant::now();
    for seq in 2..=4 {
        ws.send_binary(encode_native_text(seq, big(seq).as_bytes()))
            .await;
    }
    for seq in 2..=4 {
        match ws.recv().await {
            WsIn::NativeText { seq: got, text } => assert_eq!((got, text), (seq, big(seq))),
            other => panic!("expected the native echo {seq}, got {other:?}"),
        }
    }
    match ws.recv().await {
        WsIn::Frames(frames) => assert_eq!(frames, vec![Frame::Ack { seq: 4 }]),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "the ack waited for its deadline"
    );
}
