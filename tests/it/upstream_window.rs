//! Upstream flow control on the wire (`PROTOCOL.md` §3.1), with raw
//! sockets and requests written from the document alone.
//!
//! The bug this fixes (issue 11, item 1): a WebSocket client sends a burst
//! of large messages; the server stopped reading its socket while the
//! application was behind, while the application waited in `send` for the
//! client's acks — which sat unread in that same socket. 60 × 60 KB stalled
//! after 17 echoes, then `detach` 4408; 20,000 × 100 B after 4,096. Now the
//! server always reads, and a client keeps within the window the server
//! announces (`open.win`, then `room` with every ack).

use std::time::Duration;

use crate::support::client::charge;
use crate::support::raw;
use crate::support::wire::{self, Open};
use crate::support::*;
use futures_util::StreamExt;
use holdfast::server::ServerConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The bound on a whole burst: far above what it takes (well under a
/// second), far below the 40 s after which the old stall ended in 4408.
const BURST_DEADLINE: Duration = Duration::from_secs(8);

/// What a burst on one WebSocket saw.
#[derive(Debug, Default)]
struct Burst {
    /// The echoes, in order.
    echoes: Vec<Payload>,
    /// The most charged bytes this client ever had in flight after the
    /// server's latest ack.
    max_in_flight: u64,
    /// Grants `(R, room)` received, in order.
    grants: Vec<(u64, u64)>,
    /// The window `open` announced.
    win: Option<u64>,
}

/// Opens a session on a raw WebSocket, sends `messages` as PROTOCOL.md
/// §3.1 says — never more than `room` charged bytes after the server's
/// latest ack, batches cut at `max_msg` (§2.3) — acks every echo batch at
/// once and answers every ping, until every echo arrived.
async fn ws_burst(server: &TestServer, messages: &[Payload]) -> Burst {
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let mut burst = Burst::default();
    within(BURST_DEADLINE, "the burst's echoes", async {
        let mut open: Option<Open> = None;
        let mut grant = (0u64, 0u64);
        let mut next = 0usize; // index of the next message to send
        let mut received = 0u64; // downstream seq delivered
        loop {
            // Send what the window allows.
            if let Some(open) = &open {
                loop {
                    let (acked, room) = grant;
                    let in_flight: u64 = messages[acked as usize..next].iter().map(charge).sum();
                    burst.max_in_flight = burst.max_in_flight.max(in_flight);
                    let mut left = room.saturating_sub(in_flight);
                    let mut batch = Vec::new();
                    let mut size = 2;
                    while let Some(payload) = messages.get(next) {
                        let frame = payload.frame(next as u64 + 1);
                        let len = wire::encoded_len(&frame);
                        if charge(payload) > left
                            || (!batch.is_empty() && size + len > open.max_msg as usize)
                        {
                            break;
                        }
                        left -= charge(payload);
                        size += len;
                        batch.push(frame);
                        next += 1;
                    }
                    if batch.is_empty() {
                        break;
                    }
                    ws.send_frames(&batch).await;
                }
            }
            if burst.echoes.len() == messages.len() {
                return;
            }
            let text = match ws.stream.next().await {
                Some(Ok(WsMessage::Text(text))) => text,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                other => panic!(
                    "the socket ended after {} echoes, {next} sent, grants {:?}: {other:?}",
                    burst.echoes.len(),
                    burst.grants.last()
                ),
            };
            let frames = wire::parse_batch(text.as_bytes()).expect("a batch");
            let grants = wire::grants(text.as_bytes()).expect("grants");
            for g in &grants {
                grant = grant.max(*g);
            }
            burst.grants.extend(grants);
            let mut reply = Vec::new();
            for frame in frames {
                match frame {
                    Frame::Open(o) => {
                        // No `win`: a server without flow control, no limit.
                        burst.win = o.win;
                        grant = (0, o.win.unwrap_or(u64::MAX));
                        open = Some(o);
                    }
                    Frame::Msg { seq, data } if seq == received + 1 => {
                        received = seq;
                        burst.echoes.push(Payload::Text(data));
                    }
                    Frame::Msg { seq, .. } => panic!("echo {seq} after {received}"),
                    Frame::Ping => reply.push(Frame::Pong),
                    Frame::Detach { code, reason } => panic!("detached: {code} {reason}"),
                    Frame::Close { code, reason, .. } => panic!("closed: {code} {reason}"),
                    _ => {}
                }
            }
            if received > 0 {
                reply.push(Frame::Ack { seq: received });
            }
            ws.send_frames(&reply).await;
        }
    })
    .await;
    let _ = ws.stream.close(None).await;
    burst
}

fn texts(count: usize, len: usize) -> Vec<Payload> {
    (0..count)
        .map(|i| {
            let mut text = format!("{i}:");
            text.push_str(&"y".repeat(len - text.len()));
            Payload::Text(text)
        })
        .collect()
}

/// The reproduction: 60 × 60,000 bytes back to back on the echo
/// example's defaults. All 60 echoes come back, in order, and the client
/// never had more in flight than the window.
#[tokio::test]
async fn sixty_large_messages_on_websocket_all_come_back() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let messages = texts(60, 60_000);
    let burst = ws_burst(&server, &messages).await;
    assert_exactly("echoes", &burst.echoes, &messages);
    let window = ServerConfig::default().session.max_inbound_bytes as u64;
    assert_eq!(burst.win, Some(window), "`open` announces the window");
    assert!(
        burst.max_in_flight <= window,
        "{} in flight",
        burst.max_in_flight
    );
    assert!(
        burst.max_in_flight > window / 2,
        "the window was used: {}",
        burst.max_in_flight
    );
    assert!(burst.grants.iter().all(|(_, room)| *room <= window));
}

/// 20,000 small messages (the old stall came after 4,096 echoes: the
/// replay buffer's message limit, with the client's acks unread).
#[tokio::test]
async fn twenty_thousand_small_messages_on_websocket_all_come_back() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let messages = texts(20_000, 100);
    let burst = ws_burst(&server, &messages).await;
    assert_exactly("echoes", &burst.echoes, &messages);
}

/// A server whose application never reads: the window fills and stays
/// full.
async fn never_reading() -> (TestServer, holdfast::server::Incoming) {
    TestServer::start(ServerConfig::default()).await
}

/// A client that ignores the window gets `detach` 1008 at once — not a
/// stall — and the session lives: a resume says what was received and
/// that there is no room left.
#[tokio::test]
async fn a_websocket_client_that_overruns_the_window_is_detached_with_1008() {
    let (server, mut incoming) = never_reading().await;
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let open = match ws.recv_frames().await.as_slice() {
        [Frame::Open(open)] => open.clone(),
        other => panic!("expected open, got {other:?}"),
    };
    let _session = accept(&mut incoming, DEADLINE).await;
    let win = open.win.expect("win");
    let message = Payload::Text("z".repeat(60_000));
    let fit = win / charge(&message); // 17
    for seq in 1..=fit + 1 {
        ws.send_frames(&[message.frame(seq)]).await;
    }
    let (frames, close) = within(DEADLINE, "the overrun refusal", ws.recv_until_closed()).await;
    let detach = frames.last().cloned();
    assert!(
        matches!(&detach, Some(Frame::Detach { code: 1008, reason }) if reason.contains("window")),
        "{frames:?}"
    );
    assert_eq!(close.map(|(code, _)| code), Some(1008));

    // The session lives; everything before the overrun was taken.
    let mut ws =
        RawWs::connect_with(&server.ws_url("v=1&last=0"), &[("holdfast-key", &open.key)]).await;
    let text = match within(DEADLINE, "resumed", ws.stream.next()).await {
        Some(Ok(WsMessage::Text(text))) => text,
        other => panic!("{other:?}"),
    };
    let frames = wire::parse_batch(text.as_bytes()).expect("a batch");
    assert_eq!(frames.first(), Some(&Frame::Resumed { ack: fit }));
    let grants = wire::grants(text.as_bytes()).expect("grants");
    assert_eq!(grants.first(), Some(&(fit, win - fit * charge(&message))));
}

/// Opens a session with a first poll; its `open` frame.
async fn open_by_poll(server: &TestServer, http: &reqwest::Client) -> Open {
    let opened = raw::get(http, &server.url("poll", "v=1"), &[]).await;
    match opened.batch().as_slice() {
        [Frame::Open(open)] => open.clone(),
        other => panic!("expected open, got {other:?}"),
    }
}

/// Through `send`: a batch that overruns the window is refused at once
/// with `400` and `detach` 1008 (it used to be held 10 s, then 503), and
/// messages before the overrun are kept. Every reply before says the room
/// left.
#[tokio::test]
async fn a_send_that_overruns_the_window_is_refused_at_once_with_400() {
    let (server, mut incoming) = never_reading().await;
    let http = raw::http_client();
    let open = open_by_poll(&server, &http).await;
    let _session = accept(&mut incoming, DEADLINE).await;
    let win = open.win.expect("win");
    let message = Payload::Text("s".repeat(1000));
    let per_batch = 300u64;
    let mut seq = 0u64;
    let mut room = win;
    while room >= per_batch * charge(&message) {
        let batch: Vec<Frame> = (0..per_batch).map(|i| message.frame(seq + i + 1)).collect();
        let reply = raw::send(&http, &server.base, &open.key, &batch).await;
        seq += per_batch;
        assert_eq!(reply.batch(), vec![Frame::Ack { seq }]);
        let grants = wire::grants(&reply.body).expect("grants");
        room -= per_batch * charge(&message);
        assert_eq!(grants, [(seq, room)], "the reply's room");
    }
    let fit = room / charge(&message);
    let batch: Vec<Frame> = (0..per_batch).map(|i| message.frame(seq + i + 1)).collect();
    let started = std::time::Instant::now();
    let reply = raw::send(&http, &server.base, &open.key, &batch).await;
    let waited = started.elapsed();
    let detach = reply.assert_refusal(400, "detach", 1008);
    assert!(
        matches!(&detach, Frame::Detach { reason, .. } if reason.contains("window")),
        "{detach:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "answered at once: {waited:?}"
    );

    // The session lives and kept the messages that fit.
    let reply = raw::send(&http, &server.base, &open.key, &[]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: seq + fit }]);
    let grants = wire::grants(&reply.body).expect("grants");
    assert_eq!(grants, [(seq + fit, room - fit * charge(&message))]);
}

/// The server tells a client waiting for room that it came back, on the
/// downstream of every transport: here a held poll is answered with an
/// `ack` carrying the room, once the application read half the window.
#[tokio::test]
async fn room_coming_back_answers_a_held_poll() {
    let (server, mut incoming) = never_reading().await;
    let http = raw::http_client();
    let open = open_by_poll(&server, &http).await;
    let session = accept(&mut incoming, DEADLINE).await;
    let win = open.win.expect("win");
    let message = Payload::Text("p".repeat(60_000));
    let fill = win / charge(&message);
    for seq in 1..=fill {
        let reply = raw::send(&http, &server.base, &open.key, &[message.frame(seq)]).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // A poll, held: nothing to deliver.
    let poll_url = server.url("poll", "v=1&last=0");
    let key = open.key.clone();
    let held = tokio::spawn({
        let http = http.clone();
        async move { raw::get(&http, &poll_url, &[("holdfast-key", &key)]).await }
    });
    // The application reads just over half the window.
    let half = fill / 2 + 1;
    for _ in 0..half {
        within(DEADLINE, "the application reads", session.recv()).await;
    }
    let answer = within(DEADLINE, "the held poll's answer", held)
        .await
        .expect("the poll task");
    assert_eq!(answer.status, 200);
    let frames = answer.batch();
    let grants = wire::grants(&answer.body).expect("grants");
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Ack { seq } if *seq == fill)),
        "{frames:?}"
    );
    assert_eq!(
        grants.last(),
        Some(&(fill, win - (fill - half) * charge(&message)))
    );
}

/// The same burst through the independent wire client on every transport:
/// it keeps within the window (a send refused with 400, or a `detach`
/// 1008, would fail it).
#[tokio::test]
async fn the_wire_client_keeps_within_the_window_on_every_transport() {
    let server = TestServer::echo(ServerConfig::default()).await;
    for transport in Transport::ALL {
        let messages = texts(60, 60_000);
        let mut client = Client::new(&server.base, 11);
        client.backlog = messages.clone().into();
        client.expect_down = messages.len();
        client.release_max = messages.len();
        within(BURST_DEADLINE, "the wire client's burst", async {
            loop {
                let plan = Plan::until_done(BURST_DEADLINE);
                match client.attach(transport, &plan).await {
                    Ok(Outcome::Done) => return,
                    // A recycled SSE stream: resume at once.
                    Ok(Outcome::Detached(4000, _)) => {}
                    other => panic!("{transport:?}: {other:?}"),
                }
            }
        })
        .await;
        assert_exactly(
            &format!("{transport:?} echoes"),
            &client.core.delivered,
            &messages,
        );
    }
}

/// The Rust client: the same burst, sent back to back (`send` waits while
/// its replay buffer is full), on WebSocket and long-polling. Every echo
/// arrives once, in order, with no reconnect (a window overrun would
/// detach it with 1008).
#[tokio::test]
async fn the_rust_client_passes_the_burst_on_websocket_and_long_polling() {
    use holdfast::client::{ClientBuilder, Event, Message, ProxyConfig, TransportKind};
    let server = TestServer::echo(ServerConfig::default()).await;
    for transport in [TransportKind::WebSocket, TransportKind::LongPoll] {
        let connection = ClientBuilder::new(server.base.clone())
            .transport(transport)
            .proxy(ProxyConfig::none())
            .connect()
            .await
            .expect("connect");
        let (sender, mut receiver) = connection.split();
        let messages = texts(60, 60_000);
        let outgoing: Vec<Message> = messages
            .iter()
            .map(|p| match p {
                Payload::Text(t) => Message::text(t.clone()),
                Payload::Binary(b) => Message::binary(b.clone()),
            })
            .collect();
        let sending = tokio::spawn(async move {
            for message in outgoing {
                sender.send(message).await.expect("send");
            }
            sender
        });
        let mut echoes = Vec::new();
        within(BURST_DEADLINE, "the Rust client's echoes", async {
            while echoes.len() < messages.len() {
                match receiver.next_event().await {
                    Some(Event::Message(message)) => echoes.push(to_payload(&message)),
                    Some(Event::Open { .. }) => {}
                    other => panic!("{transport:?}: unexpected {other:?}"),
                }
            }
        })
        .await;
        assert_exactly(&format!("{transport:?} echoes"), &echoes, &messages);
        let sender = sending.await.expect("the sending task");
        sender.close().await;
    }
}
