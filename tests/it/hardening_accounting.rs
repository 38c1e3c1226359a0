//! Honest accounting (issue 10, rows 2–4): what a client makes the server
//! hold is charged per message, so floods of empty or tiny messages are
//! refused at the limit, and small payloads never pin the large frames they
//! arrived in.
//!
//! Each test is a raw-socket attacker against the echo application. It
//! never acknowledges (so the echoes fill its replay buffer and the echo
//! task stops reading: the application is "behind"), and the test asserts
//! that the server's own accounting stays within the limits plus one
//! batch, that the attacker is refused for overrunning the upstream window
//! (HTTP `400`, `detach` 1008; on WebSocket the socket is closed 1008), that
//! the process's resident memory grows by less than a bound, that a fresh
//! session still echoes during the attack, and that a concurrent
//! well-behaved session loses nothing. The figures are printed
//! (`--nocapture`) for `docs/security.md`.
//!
//! One more test checks that a send request refused for the server-wide
//! total (`503`) still delivers its acks, so that refusing input never
//! stalls an application that waits for acks before it reads again.
//!
//! The tests that measure resident memory run in a process of their own
//! ([`run_alone`]), so that the memory they measure is their attack's.

use crate::support::own_process::run_alone;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::raw;
use crate::support::*;
use futures_util::SinkExt;
use holdfast::protocol::message_charge;
use holdfast::server::ServerConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

const MIB: usize = 1024 * 1024;

/// No attack may grow the process by this much (the issue's bar is 64 MB;
/// the frame-pinning attacks below would pin about 78 MB).
const MAX_RSS_GROWTH: usize = 32 * MIB;

/// Default limits (1 MiB inbound, 1 MiB replay buffer), short waits.
fn attack_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.retry_after = Duration::from_secs(1);
    config
}

/// What the attacker's session may make the server hold: its replay buffer
/// and its inbound queue at their limits, one batch past the inbound
/// limit, and a little for the other sessions of the test.
fn bound(config: &ServerConfig, batch_cost: usize) -> usize {
    config.session.max_unacked_bytes + config.session.max_inbound_bytes + batch_cost + 64 * 1024
}

/// The process's resident memory, in bytes (Linux; `None` elsewhere).
fn rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory growth since a baseline, sampled as the attack goes.
struct RssWatch {
    baseline: Option<usize>,
    peak: Option<usize>,
}

impl RssWatch {
    fn start() -> Self {
        let baseline = rss();
        Self {
            baseline,
            peak: baseline,
        }
    }

    fn sample(&mut self) {
        if let (Some(now), Some(peak)) = (rss(), self.peak) {
            self.peak = Some(peak.max(now));
        }
    }

    /// Peak growth in bytes (0 where it cannot be measured).
    fn growth(&self) -> usize {
        match (self.baseline, self.peak) {
            (Some(base), Some(peak)) => peak.saturating_sub(base),
            _ => 0,
        }
    }

    fn assert_bounded(&self, what: &str) {
        assert!(
            self.growth() < MAX_RSS_GROWTH,
            "{what}: the process grew by {} MB (bound {} MB)",
            self.growth() / MIB,
            MAX_RSS_GROWTH / MIB
        );
    }
}

/// Opens a session over a raw WebSocket; returns the socket.
async fn open_ws(server: &TestServer) -> RawWs {
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    match ws.recv_frames().await.as_slice() {
        [Frame::Open(_)] => ws,
        other => panic!("expected [open], got {other:?}"),
    }
}

/// Sends one message on `ws` and waits for its echo; acknowledges it.
async fn round_trip(ws: &mut RawWs, seq: u64, text: &str) {
    ws.send_frames(&[Frame::Msg {
        seq,
        data: text.to_owned(),
    }])
    .await;
    loop {
        match ws.recv().await {
            WsIn::Frames(frames) => {
                for frame in frames {
                    match frame {
                        Frame::Msg { seq: s, data } if s == seq => {
                            assert_eq!(data, text, "echo of message {seq}");
                            ws.send_frames(&[Frame::Ack { seq }]).await;
                            return;
                        }
                        Frame::Msg { seq: s, data } => {
                            panic!("expected the echo of {seq}, got {s}: {data:?}")
                        }
                        Frame::Ack { .. } | Frame::Ping | Frame::Pong => {}
                        other => panic!("unexpected frame {other:?}"),
                    }
                }
            }
            other => panic!("the echo of {seq} did not come: {other:?}"),
        }
    }
}

/// A fresh session opened now still gets its message echoed.
async fn assert_fresh_session_echoes(server: &TestServer) {
    let started = Instant::now();
    let mut ws = open_ws(server).await;
    round_trip(&mut ws, 1, "fresh").await;
    ws.close(1000, "done").await;
    eprintln!("  fresh session echoed in {:?}", started.elapsed());
}

/// A well-behaved client that keeps echoing (sending, reading, acking)
/// until told to stop, checking every echo: nothing lost or reordered.
struct WellBehaved {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl WellBehaved {
    async fn start(server: &TestServer) -> Self {
        let mut ws = open_ws(server).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seq = 0;
            while !stopped.load(Ordering::Relaxed) {
                seq += 1;
                round_trip(&mut ws, seq, &format!("well-behaved {seq}")).await;
            }
            ws.close(1000, "done").await;
            seq
        });
        Self { stop, task }
    }

    /// Stops it and returns how many messages made the round trip.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let done = within(DEADLINE, "the well-behaved client finishing", self.task).await;
        let count = done.unwrap_or_else(|e| panic!("the well-behaved client failed: {e}"));
        assert!(count > 0, "the well-behaved client got nothing through");
        eprintln!("  well-behaved session: {count} messages echoed, none lost");
        count
    }
}

/// `n` text messages of `payload`, seqs from `first`, as one JSON batch.
fn batch_of(first: u64, n: usize, payload: &str) -> String {
    let mut out = String::from("[");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"t":"msg","seq":{},"d":"{payload}"}}"#,
            first + i as u64
        ));
    }
    out.push(']');
    out
}

/// Rows 2 and 3 over HTTP: `POST /send` batches of `per_batch` messages of
/// `payload`, never polling, until refused (at most `max_batches`).
async fn send_flood(what: &str, payload: &str) {
    const PER_BATCH: usize = 1000;
    const MAX_BATCHES: usize = 200;
    let config = attack_config();
    let limit = bound(&config, PER_BATCH * message_charge(payload.len()));
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let well_behaved = WellBehaved::start(&server).await;
    let mut watch = RssWatch::start();

    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected open, got {other:?}"),
    };
    let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&key));
    let mut accepted = 0;
    let mut peak = 0;
    let mut refusal = None;
    for batch in 0..MAX_BATCHES {
        let body = batch_of((batch * PER_BATCH) as u64 + 1, PER_BATCH, payload);
        let reply = raw::post(&http, &url, body, &[]).await;
        peak = peak.max(server.holdfast.buffered_bytes());
        watch.sample();
        if reply.status != 200 {
            refusal = Some(reply);
            break;
        }
        accepted += PER_BATCH;
    }
    eprintln!(
        "{what}: {accepted} messages accepted, then {}; server accounting peak {} KiB \
         (bound {} KiB); process grew {} KiB",
        refusal
            .as_ref()
            .map_or("never refused".into(), |r| format!("status {}", r.status)),
        peak / 1024,
        limit / 1024,
        watch.growth() / 1024
    );
    let refusal = refusal.unwrap_or_else(|| {
        panic!("{what}: {accepted} messages accepted and never refused: the flood is not bounded")
    });
    refusal.assert_refusal(400, "detach", 1008);
    assert!(
        peak <= limit,
        "{what}: the server holds {peak} bytes, bound {limit}"
    );
    watch.assert_bounded(what);

    assert_fresh_session_echoes(&server).await;
    // Still refused once the window is full again: the attacker's
    // application may have taken some messages meanwhile (until its
    // echoes filled the replay buffer nobody acknowledges), so a batch or
    // a few may fit first — never past the bound.
    let mut next_seq = accepted as u64 + 1;
    let mut refused_again = false;
    for _ in 0..MAX_BATCHES {
        let reply = raw::post(&http, &url, batch_of(next_seq, PER_BATCH, payload), &[]).await;
        assert!(server.holdfast.buffered_bytes() <= limit);
        if reply.status == 200 {
            next_seq += PER_BATCH as u64;
            continue;
        }
        reply.assert_refusal(400, "detach", 1008);
        refused_again = true;
        break;
    }
    assert!(
        refused_again,
        "{what}: refused again once the window is full"
    );
    well_behaved.finish().await;
}

/// Row 2: batches of zero-byte messages are charged and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batches_of_empty_messages_are_refused_at_the_inbound_limit() {
    if !run_alone(
        module_path!(),
        "send_batches_of_empty_messages_are_refused_at_the_inbound_limit",
    )
    .await
    {
        return;
    }
    send_flood("POST /send, 0-byte messages", "").await;
}

/// Row 3: batches of 1-byte messages are charged and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_batches_of_one_byte_messages_are_refused_at_the_inbound_limit() {
    if !run_alone(
        module_path!(),
        "send_batches_of_one_byte_messages_are_refused_at_the_inbound_limit",
    )
    .await
    {
        return;
    }
    send_flood("POST /send, 1-byte messages", "x").await;
}

/// Sends `message`: `false` once the server refused the socket (the send
/// fails) or stopped taking it.
async fn send_or_refused(
    ws: &mut (impl futures_util::Sink<WsMessage, Error = tungstenite::Error> + Unpin),
    message: WsMessage,
) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ws.send(message)).await,
        Ok(Ok(()))
    )
}

/// Row 3 over WebSocket: text messages of 1,000 one-byte messages each,
/// never acknowledged. The server reads on, and refuses the attacker
/// (`detach` 1008, close 1008) once it overruns the upstream window, so it
/// is never queued in memory past the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_floods_of_one_byte_messages_are_refused_at_the_window() {
    if !run_alone(
        module_path!(),
        "websocket_floods_of_one_byte_messages_are_refused_at_the_window",
    )
    .await
    {
        return;
    }
    const PER_FRAME: usize = 1000;
    // Enough to fill any loopback socket buffers several times over.
    const MAX_FRAMES: usize = 4000;
    let config = attack_config();
    let limit = bound(&config, PER_FRAME * message_charge(1));
    let server = TestServer::echo(config).await;
    let well_behaved = WellBehaved::start(&server).await;
    let mut watch = RssWatch::start();

    // The attacker reads while it sends, as a browser would: the server's
    // refusal reaches it whatever its socket buffers hold.
    let (mut attacker, reader) = open_ws(&server).await.read_in_background();
    let mut sent = 0;
    let mut peak = 0;
    for frame in 0..MAX_FRAMES {
        let text = batch_of((frame * PER_FRAME) as u64 + 1, PER_FRAME, "x");
        if reader.is_finished() || !send_or_refused(&mut attacker, WsMessage::text(text)).await {
            break;
        }
        sent += PER_FRAME;
        peak = peak.max(server.holdfast.buffered_bytes());
        if frame % 50 == 0 {
            watch.sample();
        }
    }
    let (frames, close) = within(DEADLINE, "the refusal", reader)
        .await
        .expect("the reader panicked");
    watch.sample();
    peak = peak.max(server.holdfast.buffered_bytes());
    eprintln!(
        "WebSocket, 1-byte messages: {sent} messages sent before the refusal; server \
         accounting peak {} KiB (bound {} KiB); process grew {} KiB",
        peak / 1024,
        limit / 1024,
        watch.growth() / 1024
    );
    assert_eq!(
        frames.last().and_then(Frame::code),
        Some(1008),
        "{sent} messages sent and never refused"
    );
    assert_eq!(close.map(|(code, _)| code), Some(1008));
    assert!(
        peak <= limit,
        "the server holds {peak} bytes, bound {limit}"
    );
    watch.assert_bounded("WebSocket flood of 1-byte messages");
    assert_fresh_session_echoes(&server).await;
    assert!(server.holdfast.buffered_bytes() <= limit);
    well_behaved.finish().await;
}

/// Sends `frames` WebSocket messages built by `message`, then reads the
/// attacker's socket until `frames` echoes came back (without acking: they
/// stay in the replay buffer), so that everything sent is held.
async fn pin_attack(what: &str, frames: usize, message: impl Fn(u64) -> Vec<WsMessage>) {
    let config = attack_config();
    let server = TestServer::echo(config.clone()).await;
    let well_behaved = WellBehaved::start(&server).await;
    let mut watch = RssWatch::start();

    let mut attacker = open_ws(&server).await;
    for seq in 1..=frames as u64 {
        for unit in message(seq) {
            within(DEADLINE, "sending a frame", attacker.stream.send(unit))
                .await
                .unwrap_or_else(|e| panic!("sending failed: {e}"));
        }
        if seq % 20 == 0 {
            watch.sample();
        }
    }
    let mut echoed = 0;
    while echoed < frames {
        match attacker.recv().await {
            WsIn::Frames(batch) => echoed += batch.iter().filter(|f| f.kind() == "msg").count(),
            WsIn::Binary { .. } => echoed += 1,
            other => panic!("the attacker's socket ended: {other:?}"),
        }
    }
    watch.sample();
    let held = server.holdfast.buffered_bytes();
    let limit = bound(&config, 0);
    eprintln!(
        "{what}: {frames} messages held; server accounting {} KiB (bound {} KiB); process \
         grew {} KiB",
        held / 1024,
        limit / 1024,
        watch.growth() / 1024
    );
    watch.assert_bounded(what);
    assert!(
        held >= frames * message_charge(1),
        "each held message is charged"
    );
    assert!(
        held <= limit,
        "the server holds {held} bytes, bound {limit}"
    );
    assert_fresh_session_echoes(&server).await;
    well_behaved.finish().await;
}

/// Row 4: a 1-byte message alone in a ~390 KB WebSocket text message (the
/// rest an unknown field) is copied out; the frame is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_messages_in_large_frames_do_not_pin_them() {
    if !run_alone(
        module_path!(),
        "one_byte_messages_in_large_frames_do_not_pin_them",
    )
    .await
    {
        return;
    }
    let pad = "p".repeat(390_000);
    pin_attack("1-byte messages in 390 KB frames", 200, |seq| {
        vec![WsMessage::text(format!(
            r#"[{{"t":"msg","seq":{seq},"d":"x","pad":"{pad}"}}]"#
        ))]
    })
    .await;
}

/// Row 4, binary variant: a tiny binary message right after a large one
/// is read into the same buffer of the WebSocket library; its payload is
/// copied out rather than pinning that buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_after_large_frames_do_not_pin_the_read_buffer() {
    if !run_alone(
        module_path!(),
        "binary_messages_after_large_frames_do_not_pin_the_read_buffer",
    )
    .await
    {
        return;
    }
    // An empty batch padded with whitespace, then the 1-byte message.
    let padding = format!("[{}]", " ".repeat(390_000));
    pin_attack("1-byte binary messages after 390 KB frames", 300, |seq| {
        vec![
            WsMessage::text(padding.clone()),
            WsMessage::binary(wire::encode_binary(seq, b"x")),
        ]
    })
    .await;
}

/// Row 4, small-frame variant: a short text message whose payload is most
/// of it, right after a large one, shares the WebSocket library's read
/// buffer with it; the payload is copied out rather than pinning that
/// buffer (it is not the frame's own allocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_text_messages_after_large_frames_do_not_pin_the_read_buffer() {
    if !run_alone(
        module_path!(),
        "short_text_messages_after_large_frames_do_not_pin_the_read_buffer",
    )
    .await
    {
        return;
    }
    let padding = format!("[{}]", " ".repeat(390_000));
    let payload = "y".repeat(64);
    pin_attack("64-byte text messages after 390 KB frames", 300, |seq| {
        vec![
            WsMessage::text(padding.clone()),
            WsMessage::text(format!(r#"[{{"t":"msg","seq":{seq},"d":"{payload}"}}]"#)),
        ]
    })
    .await;
}

/// A send request refused because the server as a whole is behind
/// (`max_buffered_bytes`) still delivers its acks: the application may be
/// waiting for them to make room in its replay buffer before it reads
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_still_delivers_its_acks() {
    const FILL: usize = 8000;
    let mut config = attack_config();
    // Room for the batch below and the application's message, not one
    // message more; the session's window has room left.
    config.session.max_unacked_bytes = message_charge(config.session.max_message);
    config.max_buffered_bytes = FILL * message_charge(0) + message_charge(4) + 64;
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected open, got {other:?}"),
    };
    // The application sends one message and never reads.
    let session = accept(&mut incoming, DEADLINE).await;
    session.send("down").await.expect("send");
    // The server-wide total takes the batch…
    let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&key));
    let reply = raw::post(&http, &url, batch_of(1, FILL, ""), &[]).await;
    assert_eq!(reply.status, 200, "{:?}", reply.frames);
    let inbound = FILL * message_charge(0);
    server
        .wait_buffered_bytes(inbound + message_charge(4), DEADLINE)
        .await;
    // …but not the next one; its ack is taken all the same.
    let refused = raw::send(
        &http,
        &server.base,
        &key,
        &[
            Frame::Msg {
                seq: FILL as u64 + 1,
                data: "x".into(),
            },
            Frame::Ack { seq: 1 },
        ],
    )
    .await;
    refused.assert_refusal(503, "detach", 4503);
    server.wait_buffered_bytes(inbound, DEADLINE).await;
    assert!(!session.is_closed());
}
