//! Deadlines on every wait (issue 10, rows 1, 6, 7 and 10): raw-socket
//! attackers against a server run by `holdfast::server::serve` with short
//! deadlines (1 s). Each test shows the server bounded — the attacker's
//! connection closed within its deadline plus a margin — a fresh session
//! echoing during (and after) the attack, and a well-behaved session
//! running alongside that loses nothing. Figures for `docs/security.md` go
//! to stderr (`cargo test --test it hardening_deadlines -- --nocapture`).

use crate::support::own_process::run_alone;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::{Holdfast, Incoming, Message, ServeConfig, ServerConfig, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// `ServerConfig::write_timeout` and `ServeConfig::write_timeout` here.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// `ServerConfig::body_timeout` here.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// `ServeConfig::header_read_timeout` here.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling allowance on a loaded 2-core test machine.
const MARGIN: Duration = Duration::from_secs(2);

fn server_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.write_timeout = WRITE_TIMEOUT;
    config.body_timeout = BODY_TIMEOUT;
    config
}

fn serve_config() -> ServeConfig {
    let mut config = ServeConfig::default();
    config.write_timeout = WRITE_TIMEOUT;
    config.header_read_timeout = HEADER_TIMEOUT;
    config
}

async fn echo_server(config: ServerConfig) -> TestServer {
    let holdfast = Holdfast::builder().config(config).on_session(echo);
    TestServer::serve_with(holdfast, serve_config()).await
}

async fn app_server(config: ServerConfig) -> (TestServer, Incoming) {
    let (holdfast, incoming) = Holdfast::builder().config(config).build();
    (
        TestServer::serve_with(holdfast, serve_config()).await,
        incoming,
    )
}

/// Echoes every session still to come.
fn echo_the_rest(mut incoming: Incoming) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(session) = incoming.accept().await {
            tokio::spawn(echo(session));
        }
    })
}

// ---- well-behaved clients ----------------------------------------------------

/// Opens a new WebSocket session and checks that a message comes back.
async fn fresh_session_echoes(server: &TestServer, when: &str) {
    let started = Instant::now();
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let opened = ws.recv_frames().await;
    assert!(
        matches!(opened.first(), Some(Frame::Open(_))),
        "{when}: expected open, got {opened:?}"
    );
    let text = format!("fresh {when}");
    ws.send_frames(&[Frame::Msg {
        seq: 1,
        data: text.clone(),
    }])
    .await;
    loop {
        let frames = ws.recv_frames().await;
        if frames.iter().any(|f| {
            *f == Frame::Msg {
                seq: 1,
                data: text.clone(),
            }
        }) {
            break;
        }
    }
    eprintln!("  a fresh session echoed {when} in {:?}", started.elapsed());
}

/// A session that echoes one message at a time over WebSocket for as long
/// as the attack lasts; every echo must be the next one, so a message lost,
/// repeated or reordered fails it.
struct Steady {
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl Steady {
    async fn start(server: &TestServer) -> Self {
        let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
        let opened = ws.recv_frames().await;
        assert!(matches!(opened.first(), Some(Frame::Open(_))), "{opened:?}");
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let data = format!("steady {seq}");
                    let mut frames = vec![Frame::Msg {
                        seq,
                        data: data.clone(),
                    }];
                    if seq > 1 {
                        frames.push(Frame::Ack { seq: seq - 1 });
                    }
                    ws.send_frames(&frames).await;
                    'echo: loop {
                        for frame in ws.recv_frames().await {
                            match frame {
                                Frame::Msg {
                                    seq: got,
                                    data: echoed,
                                } => {
                                    assert_eq!(
                                        (got, &echoed),
                                        (seq, &data),
                                        "the steady session's echoes must come in order"
                                    );
                                    break 'echo;
                                }
                                Frame::Ack { .. } | Frame::Ping | Frame::Pong => {}
                                other => panic!("steady session: unexpected {other:?}"),
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seq
            }
        });
        Self { stop, task }
    }

    /// Stops it; how many messages made the round trip, each exactly once.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let rounds = within(DEADLINE, "the steady session's last round", self.task)
            .await
            .expect("the steady session ran without a fault");
        assert!(rounds > 0, "the steady session made no round trip");
        eprintln!("  the steady session echoed {rounds} messages, none lost");
        rounds
    }
}

// ---- raw sockets ---------------------------------------------------------------

/// A TCP connection with a small receive buffer (so that a client that
/// stops reading fills the server's side quickly).
async fn small_window(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    within(DEADLINE, "connect", socket.connect(addr))
        .await
        .expect("connect")
}

/// Reads an HTTP response head byte by byte (nothing past it).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    within(DEADLINE, "reading a response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let byte = tcp.read_u8().await.expect("a response head");
            head.push(byte);
            assert!(head.len() < 16 * 1024, "response head too long");
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

/// Upgrades `tcp` to a WebSocket at `path_and_query`, by hand.
async fn ws_upgrade(tcp: &mut TcpStream, addr: SocketAddr, path_and_query: &str) {
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("upgrade");
    let head = read_head(tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
}

/// Reads one unmasked WebSocket frame from the server: opcode and payload.
async fn read_ws_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    within(DEADLINE, "reading a WebSocket frame", async {
        let mut header = [0; 2];
        tcp.read_exact(&mut header).await.expect("frame header");
        let len = match header[1] & 0x7f {
            126 => u64::from(tcp.read_u16().await.expect("length")),
            127 => tcp.read_u64().await.expect("length"),
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(len).expect("frame length")];
        tcp.read_exact(&mut payload).await.expect("payload");
        (header[0] & 0x0f, payload)
    })
    .await
}

/// The key in an `open` frame somewhere in `text`.
fn key_in(text: &str) -> Option<String> {
    let start = text.find("\"key\":\"")? + 7;
    let end = start + text[start..].find('"')?;
    Some(text[start..end].to_owned())
}

/// Waits until the server closes `tcp`, reading (and dropping) whatever
/// it still had buffered; how long that took, or why it did not happen.
async fn closed_by_server(tcp: &mut TcpStream, bound: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut buf = vec![0; 64 * 1024];
    let mut drained = 0usize;
    let closed = tokio::time::timeout(bound, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    match closed {
        Ok(()) => Ok(started.elapsed()),
        Err(_) => Err(format!(
            "the server kept the connection open for {bound:?} (drained {drained} bytes)"
        )),
    }
}

/// The process's resident memory, in bytes (Linux).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Row 6: the application queues more than the kernel's buffers hold for
/// a client (`tcp`) that reads nothing; the attachment must be dropped at
/// the write deadline and the connection closed, while a fresh session
/// still echoes. `transport` names the row in the printed figure.
async fn stall_until_detached(
    server: &TestServer,
    victim: &Session,
    tcp: &mut TcpStream,
    transport: &str,
) {
    // Built first, so that they are queued at once: the stall then starts
    // when they are queued.
    let messages: Vec<Message> = (0..stalled_messages())
        .map(|i| Message::text(stalled_payload(i)))
        .collect();
    for message in messages {
        victim.try_send(message).expect("room in the replay buffer");
    }
    let queued = Instant::now();
    fresh_session_echoes(server, &format!("while the {transport} writes stall")).await;
    let detached = wait_until(WRITE_TIMEOUT + MARGIN + Duration::from_secs(2), || {
        victim.transport().is_none()
    })
    .await
    .map(|_| queued.elapsed());
    let closed = closed_by_server(tcp, MARGIN).await;
    eprintln!(
        "row 6 ({transport} reader stops reading): {} KiB queued; attachment dropped \
         {detached:?} after queueing (write_timeout {WRITE_TIMEOUT:?}); connection closed: {closed:?}",
        stalled_messages() * STALLED_SIZE / 1024
    );
    assert!(
        detached.is_some(),
        "the {transport} attachment of a client that stopped reading outlived the write deadline"
    );
    closed.expect("the connection ends with its attachment");
}

/// Waits until `check` holds, polling; how long it took, or `None` after
/// `bound`.
async fn wait_until(bound: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(bound, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

// ---- row 1: WebSocket pings never read -----------------------------------------

/// A masked WebSocket ping with a 125-byte payload (the most a control
/// frame may carry): the server answers each with a 127-byte pong.
fn ping_frame() -> Vec<u8> {
    let mask = [0x5a, 0xa5, 0x3c, 0xc3];
    let mut frame = vec![0x89, 0x80 | 125];
    frame.extend_from_slice(&mask);
    frame.extend((0..125).map(|i| mask[i % 4])); // zeros, masked
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_never_read_are_bounded_and_the_connection_dropped() {
    if !run_alone(
        module_path!(),
        "websocket_pings_never_read_are_bounded_and_the_connection_dropped",
    )
    .await
    {
        return;
    }
    let server = echo_server(server_config()).await;
    let steady = Steady::start(&server).await;

    let mut tcp = small_window(server.addr).await;
    ws_upgrade(&mut tcp, server.addr, "/realtime/ws?v=1").await;
    // Never read again: every pong the server owes stays with it.
    let chunk: Vec<u8> = std::iter::repeat_n(ping_frame(), 64).flatten().collect();
    let baseline = rss();
    let mut peak = baseline;
    let started = Instant::now();
    // Long enough for any sane bound, short enough to stay polite when
    // the bound is missing: 8 MB/s of pings for at most 8 s.
    let limit = Duration::from_secs(8);
    let mut sent = 0usize;
    let mut at = 0usize;
    let mut checked_during = false;
    let dropped = loop {
        if started.elapsed() > limit {
            break None;
        }
        // `write` is cancel-safe: a frame is never cut in two.
        match tokio::time::timeout(Duration::from_millis(50), tcp.write(&chunk[at..])).await {
            Ok(Ok(0)) => break Some("write returned 0".to_owned()),
            Ok(Ok(n)) => {
                sent += n;
                at = (at + n) % chunk.len();
            }
            Ok(Err(error)) => break Some(error.to_string()),
            Err(_) => {} // the server is not reading right now
        }
        peak = peak.max(rss());
        if !checked_during && started.elapsed() > Duration::from_millis(500) {
            checked_during = true;
            fresh_session_echoes(&server, "during the ping flood").await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let elapsed = started.elapsed();
    let growth = peak
        .zip(baseline)
        .map(|(peak, base)| peak.saturating_sub(base));
    eprintln!(
        "row 1 (WebSocket pings, never read): {} KiB of pings sent in {elapsed:?}; \
         connection dropped: {dropped:?}; server RSS growth {} KiB",
        sent / 1024,
        growth.map_or("unknown".into(), |g| (g / 1024).to_string()),
    );
    assert!(
        dropped.is_some(),
        "the server kept the connection of a client that pings and never reads for {limit:?}"
    );
    if let Some(growth) = growth {
        assert!(
            growth < 16 * 1024 * 1024,
            "the server grew by {} KiB answering pings nobody reads",
            growth / 1024
        );
    }
    fresh_session_echoes(&server, "after the ping flood").await;
    steady.finish().await;
}

// ---- row 6: a reader that stops reading ----------------------------------------

/// Size of each message the application queues for a reader that has
/// stopped reading.
const STALLED_SIZE: usize = 48 * 1024;

/// How many: twice what the kernel can buffer on the server's side of the
/// connection (its send buffer grows up to `tcp_wmem`'s maximum, 4 MiB by
/// default), plus room for the server's own write buffers — so the writes
/// stall whatever the machine's settings.
fn stalled_messages() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 * 1024 * 1024);
    (2 * wmem_max + 2 * 1024 * 1024).div_ceil(STALLED_SIZE)
}

fn stalled_payload(i: usize) -> String {
    let mut text = format!("{i:06} ");
    text.extend(std::iter::repeat_n('x', STALLED_SIZE - text.len()));
    text
}

/// Room in the replay buffer for everything queued (nothing is acked)…
fn stall_config() -> ServerConfig {
    let mut config = server_config();
    config.session.max_unacked_bytes = stalled_messages() * STALLED_SIZE + 1024 * 1024;
    // …and no SSE recycling on the way.
    config.sse_max_bytes = 2 * config.session.max_unacked_bytes;
    config
}

/// Checks that `frames` hold exactly the stalled messages, in order.
fn assert_all_stalled_messages(what: &str, frames: &[Frame]) {
    let got: Vec<Payload> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Msg { data, .. } => Some(Payload::Text(data.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<Payload> = (0..stalled_messages())
        .map(|i| Payload::Text(stalled_payload(i)))
        .collect();
    assert_exactly(what, &got, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_reader_that_stops_reading_is_detached_at_the_write_deadline() {
    let (server, mut incoming) = app_server(stall_config()).await;

    let mut tcp = small_window(server.addr).await;
    ws_upgrade(&mut tcp, server.addr, "/realtime/ws?v=1").await;
    let (opcode, open) = read_ws_frame(&mut tcp).await;
    assert_eq!(opcode, 1, "the first message is a text batch");
    let key = key_in(&String::from_utf8_lossy(&open)).expect("a key in the open frame");
    let victim = accept(&mut incoming, DEADLINE).await;
    let _echo = echo_the_rest(incoming);
    let steady = Steady::start(&server).await;

    stall_until_detached(&server, &victim, &mut tcp, "WebSocket").await;
    assert!(!victim.is_closed(), "the session lives on");

    // It resumes and gets every message, once, in order.
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(&key, 0))).await;
    let mut frames = Vec::new();
    within(DEADLINE * 2, "the resumed session's replay", async {
        while frames
            .iter()
            .filter(|f| matches!(f, Frame::Msg { .. }))
            .count()
            < stalled_messages()
        {
            frames.extend(ws.recv_frames().await);
        }
    })
    .await;
    assert!(
        matches!(frames.first(), Some(Frame::Resumed { .. })),
        "expected resumed, got {:?}",
        frames.first()
    );
    assert_all_stalled_messages("replayed after resume", &frames);
    fresh_session_echoes(&server, "after the WebSocket stall").await;
    steady.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_reader_that_stops_reading_is_detached_at_the_write_deadline() {
    let (server, mut incoming) = app_server(stall_config()).await;

    let mut tcp = small_window(server.addr).await;
    let request = format!(
        "GET /realtime/sse?v=1 HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Read up to the `open` event, then never again.
    let mut seen = Vec::new();
    let key = within(DEADLINE, "the open event", async {
        let mut buf = [0; 1024];
        loop {
            let n = tcp.read(&mut buf).await.expect("the SSE body");
            assert!(n > 0, "the SSE stream ended early");
            seen.extend_from_slice(&buf[..n]);
            if let Some(key) = key_in(&String::from_utf8_lossy(&seen)) {
                return key;
            }
        }
    })
    .await;
    let victim = accept(&mut incoming, DEADLINE).await;
    let _echo = echo_the_rest(incoming);
    let steady = Steady::start(&server).await;

    stall_until_detached(&server, &victim, &mut tcp, "SSE").await;
    assert!(!victim.is_closed(), "the session lives on");

    let http = raw::http_client();
    let mut sse = Sse::open(&http, &server.url("sse", &resume_query(&key, 0)), &[])
        .await
        .unwrap_or_else(|refused| panic!("resume refused: {refused:?}"));
    let mut frames = Vec::new();
    within(DEADLINE * 2, "the resumed SSE replay", async {
        while frames
            .iter()
            .filter(|f| matches!(f, Frame::Msg { .. }))
            .count()
            < stalled_messages()
        {
            match sse.next().await {
                SseIn::Event { frames: batch, .. } => frames.extend(batch),
                other => panic!("the resumed SSE stream ended: {other:?}"),
            }
        }
    })
    .await;
    assert_all_stalled_messages("replayed after resume", &frames);
    fresh_session_echoes(&server, "after the SSE stall").await;
    steady.finish().await;
}

// ---- row 7: bodies and headers a byte at a time ----------------------------------

/// How an attacking connection ended.
struct Trickled {
    /// When the server closed the connection, from when it was established.
    closed_after: Option<Duration>,
    /// Everything the server sent.
    response: String,
}

/// Sends `head` (a request head, or the start of one), then one byte of
/// `drip` every 100 ms; reads whatever comes back until the server closes
/// the connection or `bound` passes.
async fn trickle(addr: SocketAddr, head: String, drip: &'static [u8], bound: Duration) -> Trickled {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // Timed from the connection, not from the connect call: a burst of
    // connects can overflow the listener's accept queue, and a dropped SYN
    // is retried after a second — the kernel's doing, not the server's.
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0; 4096];
    let mut drips = drip.iter().cycle();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let _ = tcp.write_all(head.as_bytes()).await;
    let closed_after = tokio::time::timeout(bound, async {
        loop {
            tokio::select! {
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick() => {
                    if let Some(byte) = drips.next() {
                        // Past the server's close this fails: keep reading
                        // until the end is seen.
                        let _ = tcp.write_all(&[*byte]).await;
                    }
                }
            }
        }
    })
    .await
    .ok();
    Trickled {
        closed_after,
        response: String::from_utf8_lossy(&response).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_bodies_and_headers_trickled_a_byte_at_a_time_are_cut_at_their_deadlines() {
    let server = echo_server(server_config()).await;
    let steady = Steady::start(&server).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected open, got {other:?}"),
    };

    // 100 connections trickle a send body, 100 a request head.
    const EACH: usize = 100;
    let bound = BODY_TIMEOUT.max(HEADER_TIMEOUT) + MARGIN + Duration::from_secs(2);
    let body_head = format!(
        "POST /realtime/send?{} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\n\
         Content-Length: 100000\r\n\r\n",
        resume_query(&key, 0),
        server.addr
    );
    let header_head = format!(
        "POST /realtime/send?v=1 HTTP/1.1\r\nHost: {}\r\n",
        server.addr
    );
    let started = Instant::now();
    let bodies: Vec<_> = (0..EACH)
        .map(|_| tokio::spawn(trickle(server.addr, body_head.clone(), b"[", bound)))
        .collect();
    let headers: Vec<_> = (0..EACH)
        .map(|_| {
            tokio::spawn(trickle(
                server.addr,
                header_head.clone(),
                b"X-Slow: 1\r\n",
                bound,
            ))
        })
        .collect();
    fresh_session_echoes(&server, "while 200 connections trickle").await;

    let mut body_times = Vec::new();
    for task in bodies {
        let trickled = task.await.expect("attacker task");
        let closed = trickled.closed_after.unwrap_or_else(|| {
            panic!(
                "a connection trickling a send body was held past {bound:?}; it got {:?}",
                trickled.response
            )
        });
        assert!(
            trickled.response.starts_with("HTTP/1.1 408"),
            "a body too slow gets 408, got {:?}",
            trickled.response
        );
        let lower = trickled.response.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{lower}");
        assert!(
            lower.contains("\"t\":\"detach\"") && lower.contains("\"code\":4408"),
            "a 408 carries detach 4408: {lower}"
        );
        body_times.push(closed);
    }
    let mut header_times = Vec::new();
    for task in headers {
        let trickled = task.await.expect("attacker task");
        let closed = trickled.closed_after.unwrap_or_else(|| {
            panic!(
                "a connection trickling a request head was held past {bound:?}; it got {:?}",
                trickled.response
            )
        });
        header_times.push(closed);
    }
    let slowest = |times: &[Duration]| times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "row 7 (trickled bodies and heads): {EACH} send bodies got 408 and were closed within \
         {:?} (body_timeout {BODY_TIMEOUT:?}); {EACH} request heads closed within {:?} \
         (header_read_timeout {HEADER_TIMEOUT:?}); all done {:?} after the attack began",
        slowest(&body_times),
        slowest(&header_times),
        started.elapsed()
    );
    assert!(slowest(&body_times) <= BODY_TIMEOUT + MARGIN);
    assert!(slowest(&header_times) <= HEADER_TIMEOUT + MARGIN);

    // The session whose sends were trickled lives on.
    let reply = raw::send(
        &http,
        &server.base,
        &key,
        &[Frame::Msg {
            seq: 1,
            data: "after".into(),
        }],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    fresh_session_echoes(&server, "after the trickling").await;
    steady.finish().await;
}

// ---- row 10: close codes ---------------------------------------------------------

/// Sends one masked WebSocket frame, as a client must.
async fn send_ws_frame(tcp: &mut TcpStream, opcode: u8, payload: &[u8]) {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(len).expect("short frame").to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.expect("send a frame");
}

/// Reads frames until the server's close frame: the text messages before
/// it, and the code in it (as sent: no WebSocket library in between to
/// tidy it up).
async fn read_until_ws_close(tcp: &mut TcpStream) -> (Vec<String>, Option<u16>) {
    let mut texts = Vec::new();
    loop {
        match read_ws_frame(tcp).await {
            (0x8, payload) => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return (texts, code);
            }
            (0x1, payload) => texts.push(String::from_utf8_lossy(&payload).into_owned()),
            _ => {}
        }
    }
}

/// A WebSocket session opened by hand; returns the socket past `open`.
async fn raw_ws_session(server: &TestServer) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    ws_upgrade(&mut tcp, server.addr, "/realtime/ws?v=1").await;
    let (opcode, open) = read_ws_frame(&mut tcp).await;
    assert_eq!(opcode, 1, "open comes as a text batch");
    assert!(key_in(&String::from_utf8_lossy(&open)).is_some());
    tcp
}

#[tokio::test]
async fn close_codes_outside_rfc_6455_are_replaced_with_1002_never_echoed() {
    let server = echo_server(server_config()).await;
    let steady = Steady::start(&server).await;
    let forbidden = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535];
    let allowed = [1000, 1001, 1003, 1011, 1014, 3000, 4000, 4999];
    let mut table = Vec::new();
    for code in forbidden.into_iter().chain(allowed) {
        let expected = if allowed.contains(&code) { code } else { 1002 };

        // A `close` frame in a batch: the session echoes it (PROTOCOL.md
        // §7) and closes the socket with a close code of its own.
        let mut tcp = raw_ws_session(&server).await;
        let batch = format!(r#"[{{"t":"close","code":{code},"reason":"bye"}}]"#);
        send_ws_frame(&mut tcp, 0x1, batch.as_bytes()).await;
        let (texts, close) = read_until_ws_close(&mut tcp).await;
        assert_eq!(
            close,
            Some(expected),
            "client `close` frame with code {code}: the server's WebSocket close code"
        );
        // The JSON answer repeats the client's own code: the session's
        // record of how it ended, in a JSON number, not a close code on
        // the wire.
        let echo = format!(r#""t":"close","code":{code},"#);
        assert!(
            texts.iter().any(|t| t.contains(&echo)),
            "the JSON close echo of {code}: {texts:?}"
        );

        // A WebSocket-level close: tungstenite answers it (and takes 1014,
        // registered after RFC 6455, for unknown: 1002 — still never an
        // unsendable code).
        let mut tcp = raw_ws_session(&server).await;
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        send_ws_frame(&mut tcp, 0x8, &payload).await;
        let (_, answer) = read_until_ws_close(&mut tcp).await;
        let expected_answer = if code == 1014 { 1002 } else { expected };
        assert_eq!(
            answer,
            Some(expected_answer),
            "WebSocket close {code}: the server's answer"
        );
        table.push(format!("{code}→{expected}"));
    }
    eprintln!(
        "row 10 (close codes, client → server's close frame): {}",
        table.join(", ")
    );
    fresh_session_echoes(&server, "after the close codes").await;
    steady.finish().await;
}

// ---- the serve helper itself ------------------------------------------------------

#[tokio::test]
async fn serve_limits_connections_and_the_header_deadline_frees_their_slots() {
    let router = axum::Router::new().route(
        "/who",
        axum::routing::get(
            |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                peer.to_string()
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        holdfast::server::serve(listener, router)
            .header_read_timeout(HEADER_TIMEOUT)
            .max_connections(1)
            .into_future(),
    );

    // One idle connection holds the only slot…
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    // …so this request waits until hyper's header deadline closes it.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("local address");
    tcp.write_all(
        format!("GET /who HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut response = String::new();
    within(
        HEADER_TIMEOUT + MARGIN,
        "the queued request's answer",
        tcp.read_to_string(&mut response),
    )
    .await
    .expect("the response");
    let waited = started.elapsed();
    let idle_closed = closed_by_server(&mut idle, MARGIN).await;
    eprintln!(
        "serve: with max_connections 1, a request waited {waited:?} for the idle connection's slot"
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(&local.to_string()),
        "ConnectInfo is the client's address {local}: {response}"
    );
    assert!(
        waited >= HEADER_TIMEOUT / 2,
        "the second connection was served at once ({waited:?}): no connection limit"
    );
    idle_closed.expect("the idle connection was closed at the header deadline");
    server.abort();
}

#[tokio::test]
async fn serve_shuts_down_gracefully_after_the_request_in_flight() {
    let entered = Arc::new(tokio::sync::Notify::new());
    let router = axum::Router::new().route(
        "/slow",
        axum::routing::get({
            let entered = entered.clone();
            || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        holdfast::server::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let http = raw::http_client();
    let request = tokio::spawn({
        let http = http.clone();
        async move { http.get(format!("http://{addr}/slow")).send().await }
    });
    within(
        DEADLINE,
        "the request to reach its handler",
        entered.notified(),
    )
    .await;
    let _ = stop.send(());
    let response = within(DEADLINE, "the request in flight", request)
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(response.status(), 200);
    within(DEADLINE, "the server to stop", server)
        .await
        .expect("task")
        .expect("serve resolves Ok");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening after the shutdown"
    );
}
