//! The wire format (`PROTOCOL.md` §2): batch sizes, binary messages native
//! on WebSocket and `bin` frames elsewhere, unknown fields ignored, empty
//! batches, `ping`/`pong`.

use crate::support::raw::{self, resume_query};
use crate::support::wire::encode_binary;
use crate::support::*;
use holdfast::server::ServerConfig;
use serde_json::json;

/// A server with `max_msg` 4096 whose application sends `messages` at once.
async fn server_sending(messages: Vec<Payload>) -> TestServer {
    let mut config = ServerConfig::default();
    config.session.set_max_message(4096);
    let holdfast = holdfast::server::Holdfast::builder()
        .config(config)
        .on_session(move |session| {
            let messages = messages.clone();
            async move {
                for payload in &messages {
                    if session.send(to_message(payload)).await.is_err() {
                        return;
                    }
                }
                session.closed().await;
            }
        });
    TestServer::serve(holdfast).await
}

#[tokio::test]
async fn batches_of_several_messages_stay_under_max_msg() {
    // 1000 control characters: 1000 bytes of payload, 6000 once escaped.
    let messages: Vec<Payload> = (0..30)
        .map(|i| {
            if i % 3 == 0 {
                Payload::Binary(vec![i as u8; 1000])
            } else {
                Payload::Text("\u{1}".repeat(1000))
            }
        })
        .collect();
    let server = server_sending(messages.clone()).await;
    let mut failures = Vec::new();
    for transport in Transport::ALL {
        let mut client = Client::new(&server.base, 0);
        client.expect_down = messages.len();
        let outcome = client.attach(transport, &Plan::until_done(DEADLINE)).await;
        assert_eq!(
            outcome,
            Ok(Outcome::Done),
            "{transport:?}: {:?}",
            client.log
        );
        assert_exactly(&format!("{transport:?}"), &client.core.delivered, &messages);
        if !client.core.stats.oversized_batches.is_empty() {
            failures.push(format!(
                "{transport:?}: batches of several messages of {:?} bytes, over max_msg 4096",
                client.core.stats.oversized_batches
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn binary_is_native_on_websocket_and_bin_frames_elsewhere() {
    let messages = vec![
        Payload::Binary(vec![]),
        Payload::Binary(vec![0, 1, 2, 253, 254, 255]),
        Payload::Text("between".into()),
        Payload::Binary((0..=255).collect()),
    ];
    let server = server_sending(messages.clone()).await;
    for transport in Transport::ALL {
        let mut client = Client::new(&server.base, 0);
        client.expect_down = messages.len();
        let outcome = client.attach(transport, &Plan::until_done(DEADLINE)).await;
        assert_eq!(outcome, Ok(Outcome::Done), "{transport:?}");
        assert_exactly(&format!("{transport:?}"), &client.core.delivered, &messages);
        let native = client.core.stats.native_binary_received;
        if transport == Transport::WebSocket {
            assert_eq!(native, 3, "the server sends binary natively on WebSocket");
        } else {
            assert_eq!(native, 0);
        }
    }
    // Raw check: on WebSocket binary never travels as a `bin` frame.
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let mut binaries = 0;
    while binaries < 3 {
        match ws.recv().await {
            WsIn::Binary { .. } => binaries += 1,
            WsIn::Frames(frames) => assert!(
                frames.iter().all(|f| f.kind() != "bin"),
                "a bin frame on WebSocket: {frames:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_server_accepts_every_upstream_encoding_and_ignores_unknown_fields() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let mut ws = RawWs::connect(&server.ws_url("v=1&unknown=param")).await;
    let key = match ws.recv_frames().await.first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session.clone());
    // Empty batch; unknown fields on a message; a `bin` frame and a native
    // binary message on WebSocket; a ping (answered with pong).
    ws.send_text("[]").await;
    ws.send_text(
        &json!([{"t": "msg", "seq": 1, "d": "a", "future": {"x": [1, 2]}, "z": null}]).to_string(),
    )
    .await;
    ws.send_frames(&[Frame::Bin {
        seq: 2,
        data: vec![2; 3],
    }])
    .await;
    ws.send_binary(encode_binary(3, &[3; 3])).await;
    ws.send_frames(&[Frame::Ping]).await;
    let mut ponged = false;
    let mut acked = 0;
    within(DEADLINE, "pong and ack 3", async {
        while !ponged || acked < 3 {
            match ws.recv().await {
                WsIn::Frames(frames) => {
                    for frame in frames {
                        match frame {
                            Frame::Pong => ponged = true,
                            Frame::Ack { seq } => acked = acked.max(seq),
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    // Over send: unknown fields, a `bin` frame, an ack with an unknown field.
    let http = raw::http_client();
    let url = format!(
        "{}/send?v=1&key={}&nocache=42",
        server.base,
        raw::encode(&key)
    );
    let body = json!([
        {"t": "msg", "seq": 4, "d": "b", "extra": true},
        {"t": "bin", "seq": 5, "d": "BQUF", "meta": "x"},
        {"t": "ack", "seq": 0, "note": 1}
    ]);
    let reply = raw::post(&http, &url, body.to_string(), &[]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 5 }]);
    let got = recorder.wait_for(5, DEADLINE).await;
    assert_exactly(
        "received",
        &got,
        &[
            Payload::Text("a".into()),
            Payload::Binary(vec![2; 3]),
            Payload::Binary(vec![3; 3]),
            Payload::Text("b".into()),
            Payload::Binary(vec![5; 3]),
        ],
    );
    // The session resumes on another transport with the right ack.
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(reply.batch().first(), Some(&Frame::Resumed { ack: 5 }));
}
