//! Every limit and refusal of `PROTOCOL.md` §2.3 and §7, each with a clear
//! answer: message too big (1009 / 413, ends the session), too many
//! sessions (503 + `Retry-After` / 4503), unknown key (410 / 4410), one poll
//! at a time (4409), malformed or out-of-protocol frames (1002 / 400, the
//! session survives and resumes with no loss), unsupported version
//! (400 / 4400).

use std::time::Duration;

use crate::support::raw::{self, resume_query};
use crate::support::wire::{self, encode_binary};
use crate::support::*;
use holdfast::server::{CloseCode, ServerConfig};
use serde_json::{Value, json};

/// `max_msg` 1024 (so `max_batch` 6 × 1024 + 4096 = 10240).
fn small_messages() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    config
}

/// Opens a session over a raw WebSocket; returns the socket and the key.
async fn open_ws(server: &TestServer) -> (RawWs, wire::Open) {
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    match ws.recv_frames().await.as_slice() {
        [Frame::Open(open)] => {
            let open = open.clone();
            (ws, open)
        }
        other => panic!("expected [open], got {other:?}"),
    }
}

/// Opens a session with a first poll; returns the key.
async fn open_poll(server: &TestServer, http: &reqwest::Client) -> wire::Open {
    let reply = raw::get(http, &server.url("poll", "v=1"), &[]).await;
    assert_eq!(reply.status, 200);
    match reply.batch().first() {
        Some(Frame::Open(open)) => open.clone(),
        other => panic!("expected open first, got {other:?}"),
    }
}

fn msg(seq: u64, text: &str) -> Frame {
    Frame::Msg {
        seq,
        data: text.into(),
    }
}

fn texts(list: &[&str]) -> Vec<Payload> {
    list.iter().map(|t| Payload::Text((*t).into())).collect()
}

/// Reads from a WebSocket until it closes; asserts the last frame is
/// `t` with `code` and the WebSocket close code is the same.
async fn expect_ws_end(ws: &mut RawWs, t: &str, code: u16) -> Vec<Frame> {
    let (frames, close) = ws.recv_until_closed().await;
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("no frame before the close {close:?}"));
    assert_eq!(
        (last.kind(), last.code()),
        (t, Some(code)),
        "expected {t} {code} before the WebSocket close, got {frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(code), "WebSocket close code");
    frames
}

// ---- message too big -------------------------------------------------------

#[tokio::test]
async fn websocket_message_too_big_ends_the_session_with_1009() {
    let cases = vec![
        (
            "text message over max_msg",
            Unit::Text(wire::encode_batch(&[msg(1, &"x".repeat(1025))])),
        ),
        (
            "bin frame over max_msg",
            Unit::Text(wire::encode_batch(&[Frame::Bin {
                seq: 1,
                data: vec![7; 1025],
            }])),
        ),
        (
            "native binary over max_msg",
            Unit::Binary(encode_binary(1, &[7; 1025])),
        ),
        (
            // A small message in a batch padded past max_batch with an
            // unknown field.
            "wire unit over max_batch",
            Unit::Text(
                json!([{"t": "msg", "seq": 1, "d": "small", "pad": "p".repeat(11_000)}])
                    .to_string(),
            ),
        ),
    ];
    for (name, unit) in cases {
        let (server, mut incoming) = TestServer::start(small_messages()).await;
        let (mut ws, open) = open_ws(&server).await;
        assert_eq!((open.max_msg, open.max_batch), (1024, 10240), "open limits");
        let session = accept(&mut incoming, DEADLINE).await;
        match unit {
            Unit::Text(text) => ws.send_text(&text).await,
            Unit::Binary(bytes) => ws.send_binary(bytes).await,
        }
        let frames = expect_ws_end(&mut ws, "close", 1009).await;
        // §9: on WebSocket the server's close carries the final ack.
        assert!(
            matches!(
                frames.as_slice(),
                [Frame::Ack { seq: 0 }, Frame::Close { code: 1009, .. }]
            ),
            "{name}: {frames:?}"
        );
        let end = within(DEADLINE, "the session to end", session.closed()).await;
        assert_eq!(end.close.code, CloseCode::TOO_BIG, "{name}: {end:?}");
        assert_eq!(
            within(DEADLINE, "recv", session.recv()).await,
            None,
            "{name}"
        );
    }
}

#[tokio::test]
async fn messages_at_the_limit_are_accepted_however_escaped() {
    let (server, mut incoming) = TestServer::start(small_messages()).await;
    let (mut ws, _) = open_ws(&server).await;
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session.clone());
    // 1024 bytes each: control characters (6 bytes each once escaped, the
    // worst case max_batch is sized for), two-byte characters, raw bytes.
    let worst = "\u{1}".repeat(1024);
    let wide = "é".repeat(512);
    ws.send_frames(&[msg(1, &worst)]).await;
    ws.send_frames(&[msg(2, &wide)]).await;
    ws.send_binary(encode_binary(3, &[0xff; 1024])).await;
    ws.send_frames(&[Frame::Bin {
        seq: 4,
        data: vec![0; 1024],
    }])
    .await;
    let got = recorder.wait_for(4, DEADLINE).await;
    assert_exactly(
        "received",
        &got,
        &[
            Payload::Text(worst),
            Payload::Text(wide),
            Payload::Binary(vec![0xff; 1024]),
            Payload::Binary(vec![0; 1024]),
        ],
    );
    assert!(!session.is_closed());
}

#[tokio::test]
async fn send_too_big_is_413_and_ends_the_session() {
    for (name, body) in [
        (
            "message over max_msg",
            wire::encode_batch(&[msg(1, &"y".repeat(1025))]),
        ),
        (
            "body over max_batch",
            json!([{"t": "msg", "seq": 1, "d": "small", "pad": "p".repeat(11_000)}]).to_string(),
        ),
    ] {
        let (server, mut incoming) = TestServer::start(small_messages()).await;
        let http = raw::http_client();
        let open = open_poll(&server, &http).await;
        let session = accept(&mut incoming, DEADLINE).await;
        let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&open.key));
        let reply = raw::post(&http, &url, body, &[]).await;
        reply.assert_refusal(413, "close", 1009);
        let end = within(DEADLINE, "the session to end", session.closed()).await;
        assert_eq!(end.close.code, CloseCode::TOO_BIG, "{name}: {end:?}");
        assert_eq!(
            within(DEADLINE, "recv", session.recv()).await,
            None,
            "{name}"
        );
    }
}

// ---- too many sessions -------------------------------------------------------

#[tokio::test]
async fn too_many_sessions_is_503_with_retry_after() {
    let mut config = ServerConfig::default();
    config.max_sessions = 2;
    config.retry_after = Duration::from_secs(3);
    config.session.resume_window = Duration::from_millis(500);
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let (mut first, first_open) = open_ws(&server).await;
    let _second = open_poll(&server, &http).await;
    assert_eq!(server.holdfast.session_count(), 2);

    for endpoint in ["sse", "poll"] {
        let reply = raw::get(&http, &server.url(endpoint, "v=1"), &[]).await;
        let frame = reply.assert_refusal(503, "close", 4503);
        assert_eq!(
            reply.header("retry-after"),
            "3",
            "{endpoint}: Retry-After (seconds)"
        );
        assert!(
            matches!(
                frame,
                Frame::Close {
                    retry_after: Some(3000),
                    ..
                }
            ),
            "{endpoint}: retry_after in ms: {frame:?}"
        );
    }
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let frames = expect_ws_end(&mut ws, "close", 4503).await;
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Close {
                retry_after: Some(3000),
                ..
            }]
        ),
        "WebSocket refusal: {frames:?}"
    );
    assert_eq!(
        server.holdfast.session_count(),
        2,
        "refusals must not count"
    );

    // Resuming an existing session is not a new session: still allowed.
    drop(first.stream.close(None).await);
    let mut again = RawWs::connect(&server.ws_url(&resume_query(&first_open.key, 0))).await;
    assert!(
        matches!(
            again.recv_frames().await.first(),
            Some(Frame::Resumed { ack: 0 })
        ),
        "resume at the session limit"
    );

    // Once a session is over and forgotten (at the latest when the resume
    // window has run out after its close), there is room again.
    again.send_frames(&[Frame::close(1000, "bye")]).await;
    expect_ws_end(&mut again, "close", 1000).await;
    server.wait_session_count(1, Duration::from_secs(3)).await;
    let (_third, _) = open_ws(&server).await;
}

// ---- unknown key -----------------------------------------------------------------

#[tokio::test]
async fn unknown_key_is_410_on_http_and_4410_on_websocket() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for endpoint in ["sse", "poll"] {
        raw::get(&http, &server.url(endpoint, &resume_query(key, 3)), &[])
            .await
            .assert_refusal(410, "close", 4410);
    }
    raw::send(&http, &server.base, key, &[msg(1, "hi")])
        .await
        .assert_refusal(410, "close", 4410);
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(key, 3))).await;
    let frames = expect_ws_end(&mut ws, "close", 4410).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
}

// ---- one poll at a time ----------------------------------------------------------

#[tokio::test]
async fn a_second_poll_replaces_the_held_one_with_4409() {
    let mut config = ServerConfig::default();
    config.session.poll_hold = Duration::from_secs(10);
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let open = open_poll(&server, &http).await;
    let session = accept(&mut incoming, DEADLINE).await;
    // A message delivered by a first poll and acknowledged by the next:
    // when the replay buffer is empty, that next poll is held at the server.
    session.send("before").await.expect("send");
    let reply = raw::get(&http, &server.url("poll", &resume_query(&open.key, 0)), &[]).await;
    assert_eq!(reply.batch(), vec![msg(1, "before")]);
    let url = server.url("poll", &resume_query(&open.key, 1));
    let poll = |http: reqwest::Client, url: String| async move { raw::get(&http, &url, &[]).await };
    let mut first = tokio::spawn(poll(http.clone(), url.clone()));
    server.wait_buffered_bytes(0, DEADLINE).await;
    assert!(!first.is_finished(), "the first poll must be held");
    let mut held = tokio::spawn(poll(http.clone(), url.clone()));

    // The held one returns at once, with [detach 4409]; the newer one is held.
    let replaced = within(
        Duration::from_secs(2),
        "the held poll to be replaced",
        &mut first,
    )
    .await;
    let replaced = replaced.expect("poll task");
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.header("cache-control"), "no-store");
    assert!(
        matches!(
            replaced.batch().as_slice(),
            [Frame::Detach { code: 4409, .. }]
        ),
        "the replaced poll: {:?}",
        replaced.batch()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut held)
            .await
            .is_err(),
        "the newer poll must stay held"
    );
    // The newer poll carries on: it delivers the next message.
    session.send("after").await.expect("send");
    let delivered = within(DEADLINE, "the held poll to deliver", held)
        .await
        .expect("poll task");
    assert!(
        delivered
            .batch()
            .iter()
            .any(|f| matches!(f, Frame::Msg { seq: 2, data } if data == "after")),
        "{:?}",
        delivered.batch()
    );
}

// ---- malformed and out-of-protocol frames ------------------------------------------

/// A bad wire unit, and how many of the messages it holds come before the
/// bad part (they must be applied, §7).
struct Bad {
    name: &'static str,
    unit: Unit,
    applied_before: u64,
}

enum Unit {
    Text(String),
    Binary(Vec<u8>),
}

/// A batch `[msg 3 "c", bad]`.
fn after_c(bad: Value) -> Unit {
    Unit::Text(Value::Array(vec![msg(3, "c").to_json(), bad]).to_string())
}

/// Whole-unit errors and semantic errors after a good frame.
fn protocol_errors() -> Vec<Bad> {
    vec![
        Bad {
            name: "invalid JSON",
            unit: Unit::Text(r#"[{"t":"msg","seq":3,"d":"c"}"#.into()),
            applied_before: 0,
        },
        Bad {
            name: "batch not an array",
            unit: Unit::Text(r#"{"t":"ping"}"#.into()),
            applied_before: 0,
        },
        Bad {
            name: "seq gap",
            unit: after_c(json!({"t": "msg", "seq": 9, "d": "x"})),
            applied_before: 1,
        },
        Bad {
            name: "ack beyond what was sent",
            unit: after_c(json!({"t": "ack", "seq": 5})),
            applied_before: 1,
        },
        Bad {
            // 0x02 is a native text (§2.2.1), accepted; 0x03 is reserved.
            name: "reserved binary type byte",
            unit: Unit::Binary({
                let mut b = encode_binary(3, b"c");
                b[0] = 0x03;
                b
            }),
            applied_before: 0,
        },
        Bad {
            name: "binary shorter than its header",
            unit: Unit::Binary(vec![0x01, 0, 0]),
            applied_before: 0,
        },
    ]
}

/// A good frame followed, in the same batch, by one that cannot be decoded
/// (rejected with the whole batch: nothing of it applied) or by one that
/// decodes but breaks the protocol (the frames before it applied). §7.
fn malformed_frames() -> Vec<Bad> {
    vec![
        Bad {
            name: "unknown frame type",
            unit: after_c(json!({"t": "bogus"})),
            applied_before: 0,
        },
        Bad {
            name: "msg without d",
            unit: after_c(json!({"t": "msg", "seq": 4})),
            applied_before: 0,
        },
        Bad {
            name: "d not a string",
            unit: after_c(json!({"t": "msg", "seq": 4, "d": 5})),
            applied_before: 0,
        },
        Bad {
            name: "bad base64",
            unit: after_c(json!({"t": "bin", "seq": 4, "d": "@@@"})),
            applied_before: 0,
        },
        Bad {
            name: "negative seq",
            unit: after_c(json!({"t": "msg", "seq": -4, "d": "x"})),
            applied_before: 0,
        },
        Bad {
            name: "frame not an object",
            unit: after_c(json!(42)),
            applied_before: 0,
        },
        Bad {
            name: "server-only frame",
            unit: after_c(json!({"t": "resumed", "ack": 0})),
            applied_before: 1,
        },
        Bad {
            name: "detach from the client",
            unit: after_c(json!({"t": "detach", "code": 1000, "reason": "x"})),
            applied_before: 1,
        },
    ]
}

/// On WebSocket: `detach` 1002 and close 1002; the session survives; a
/// resume says what was applied and the rest is retransmitted, no loss.
async fn websocket_bad_units(cases: Vec<Bad>) {
    let mut failures = Vec::new();
    for bad in cases {
        let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
        let (mut ws, open) = open_ws(&server).await;
        let session = accept(&mut incoming, DEADLINE).await;
        let (recorder, _) = Recorder::start(session.clone());
        ws.send_frames(&[msg(1, "a"), msg(2, "b")]).await;
        recorder.wait_for(2, DEADLINE).await;
        match &bad.unit {
            Unit::Text(text) => ws.send_text(text).await,
            Unit::Binary(bytes) => ws.send_binary(bytes.clone()).await,
        }
        expect_ws_end(&mut ws, "detach", 1002).await;
        assert!(
            !session.is_closed(),
            "{}: a protocol error must not end the session",
            bad.name
        );

        let mut ws = RawWs::connect(&server.ws_url(&resume_query(&open.key, 0))).await;
        let ack = match ws.recv_frames().await.first() {
            Some(Frame::Resumed { ack }) => *ack,
            other => panic!("{}: expected resumed first, got {other:?}", bad.name),
        };
        if ack != 2 + bad.applied_before {
            failures.push(format!(
                "{}: resumed ack {ack}, expected {} (§7)",
                bad.name,
                2 + bad.applied_before
            ));
        }
        let retransmit: Vec<Frame> = [msg(3, "c"), msg(4, "d")]
            .into_iter()
            .filter(|f| f.message_seq() > Some(ack))
            .collect();
        ws.send_frames(&retransmit).await;
        let got = recorder.wait_for(4, DEADLINE).await;
        assert_exactly(bad.name, &got, &texts(&["a", "b", "c", "d"]));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// On send: `400` with `detach` 1002; the session survives; the next send
/// acknowledges what was applied and nothing is lost.
async fn send_bad_units(cases: Vec<Bad>) {
    let mut failures = Vec::new();
    for bad in cases {
        let Unit::Text(body) = bad.unit else { continue };
        let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
        let http = raw::http_client();
        let open = open_poll(&server, &http).await;
        let session = accept(&mut incoming, DEADLINE).await;
        let (recorder, _) = Recorder::start(session.clone());
        let reply = raw::send(&http, &server.base, &open.key, &[msg(1, "a"), msg(2, "b")]).await;
        assert_eq!(reply.batch().first(), Some(&Frame::Ack { seq: 2 }));
        let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&open.key));
        raw::post(&http, &url, body, &[])
            .await
            .assert_refusal(400, "detach", 1002);
        assert!(
            !session.is_closed(),
            "{}: a protocol error must not end the session",
            bad.name
        );

        let reply = raw::send(&http, &server.base, &open.key, &[]).await;
        let ack = match reply.batch().first() {
            Some(Frame::Ack { seq }) => *seq,
            other => panic!("{}: send reply starts with {other:?}", bad.name),
        };
        if ack != 2 + bad.applied_before {
            failures.push(format!(
                "{}: ack {ack} after the refused send, expected {} (§7)",
                bad.name,
                2 + bad.applied_before
            ));
        }
        // A client retransmits from what it knows was acknowledged (2).
        let reply = raw::send(&http, &server.base, &open.key, &[msg(3, "c"), msg(4, "d")]).await;
        assert_eq!(
            reply.batch().first(),
            Some(&Frame::Ack { seq: 4 }),
            "{}",
            bad.name
        );
        let got = recorder.wait_for(4, DEADLINE).await;
        assert_exactly(bad.name, &got, &texts(&["a", "b", "c", "d"]));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn websocket_protocol_error_detaches_1002_and_the_session_resumes_intact() {
    websocket_bad_units(protocol_errors()).await;
}

#[tokio::test]
async fn send_protocol_error_is_400_and_the_session_stays_intact() {
    send_bad_units(protocol_errors()).await;
}

#[tokio::test]
async fn websocket_malformed_batches_are_rejected_whole_out_of_protocol_frames_from_there() {
    websocket_bad_units(malformed_frames()).await;
}

#[tokio::test]
async fn send_malformed_batches_are_rejected_whole_out_of_protocol_frames_from_there() {
    send_bad_units(malformed_frames()).await;
}

#[tokio::test]
async fn resume_with_last_beyond_what_was_sent_is_a_protocol_error() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let http = raw::http_client();
    let (ws, open) = open_ws(&server).await;
    drop(ws);
    let session = accept(&mut incoming, DEADLINE).await;
    session.send("one").await.expect("send");
    // The server sent 1 message; last=5 is out of protocol.
    for endpoint in ["sse", "poll"] {
        raw::get(
            &http,
            &server.url(endpoint, &resume_query(&open.key, 5)),
            &[],
        )
        .await
        .assert_refusal(400, "detach", 1002);
    }
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(&open.key, 5))).await;
    expect_ws_end(&mut ws, "detach", 1002).await;
    // The session is intact: a correct resume gets the message.
    assert!(!session.is_closed());
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(&open.key, 0))).await;
    let (frames, _) = within(DEADLINE, "resumed and the message", async {
        let mut frames = Vec::new();
        while frames.len() < 2 {
            match ws.recv().await {
                WsIn::Frames(batch) => frames.extend(batch),
                other => panic!("{other:?}"),
            }
        }
        (frames, ())
    })
    .await;
    assert_eq!(
        frames,
        vec![Frame::Resumed { ack: 0 }, msg(1, "one")],
        "resume after the refused one"
    );
}

// ---- version -----------------------------------------------------------------------

#[tokio::test]
async fn unsupported_version_is_400_or_4400() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    for endpoint in ["sse", "poll"] {
        raw::get(&http, &server.url(endpoint, "v=2"), &[])
            .await
            .assert_refusal(400, "close", 4400);
    }
    let mut ws = RawWs::connect(&server.ws_url("v=2")).await;
    let frames = expect_ws_end(&mut ws, "close", 4400).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(server.holdfast.session_count(), 0, "no session may open");

    // v=1 and no v at all both open a session, and `open` echoes v=1.
    for query in ["v=1", "", "v=1&cache-buster=12345"] {
        let reply = raw::get(&http, &server.url("poll", query), &[]).await;
        assert!(
            matches!(reply.batch().first(), Some(Frame::Open(o)) if o.v == 1),
            "{query:?}: {:?}",
            reply.batch()
        );
    }

    // A send with v=2 is refused too.
    let open = open_poll(&server, &http).await;
    let url = format!("{}/send?v=2&key={}", server.base, raw::encode(&open.key));
    let reply = raw::post(&http, &url, "[]", &[]).await;
    // Final, even naming a session (§10): a `detach` would say "resume".
    reply.assert_refusal(400, "close", 4400);
}

// ---- buffers full ---------------------------------------------------------------------

/// A send past the upstream window (`PROTOCOL.md` §3.1) is refused at
/// once — `400`, `detach` 1008, never held — and a retry once the
/// application read loses nothing.
#[tokio::test]
async fn a_send_past_the_window_is_refused_at_once_and_a_retry_loses_nothing() {
    let mut config = small_messages();
    // A window of four of the 1000-byte messages below, each charged its
    // payload plus the per-message overhead.
    config.session.max_inbound_bytes = 4 * holdfast::protocol::message_charge(1000);
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let open = open_poll(&server, &http).await;
    // The application takes the session but does not read yet.
    let session = accept(&mut incoming, DEADLINE).await;
    let messages: Vec<Frame> = (1..=8)
        .map(|seq| msg(seq, &format!("{seq}").repeat(1000)))
        .collect();
    let mut acked = 0;
    let mut refused = None;
    for frame in &messages {
        let reply = raw::send(&http, &server.base, &open.key, std::slice::from_ref(frame)).await;
        if reply.status != 200 {
            refused = Some((frame.clone(), reply));
            break;
        }
        acked += 1;
    }
    let (frame, reply) = refused.expect("the application never read, yet every send was accepted");
    assert_eq!(acked, 4, "the window holds exactly 4");
    reply.assert_refusal(400, "detach", 1008);
    assert!(
        !session.is_closed(),
        "buffers full must not end the session"
    );

    // The application catches up; the client retries the same request.
    let (recorder, _) = Recorder::start(session.clone());
    let rest: Vec<Frame> = messages
        .iter()
        .filter(|f| f.message_seq() >= frame.message_seq())
        .cloned()
        .collect();
    for frame in rest {
        let reply = raw::send(&http, &server.base, &open.key, std::slice::from_ref(&frame)).await;
        assert_eq!(
            reply.batch().first(),
            Some(&Frame::Ack {
                seq: frame.message_seq().unwrap_or(0)
            })
        );
    }
    let got = recorder.wait_for(8, DEADLINE).await;
    let expected: Vec<Payload> = (1..=8u64)
        .map(|seq| Payload::Text(format!("{seq}").repeat(1000)))
        .collect();
    assert_exactly("received", &got, &expected);
}
