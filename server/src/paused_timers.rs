//! The server's timers on tokio's paused clock (unit tests, so that they
//! build into the crate's one test binary): heartbeat pings, the
//! dead-peer timeout, the poll hold, the resume window and the WebSocket
//! write deadline, each checked to the millisecond of test time with the
//! default configuration (seconds of timers, milliseconds of wall time).
//!
//! The server runs in-process: HTTP requests go straight into the router,
//! and a WebSocket runs over an in-memory pipe served by hyper, so nothing
//! waits on a real socket or a real clock. Every timer the server arms
//! must be on tokio's clock for these tests to pass: a deadline taken from
//! `std::time::Instant` would never come due while the clock is paused.

use std::time::Duration;

use crate::{Holdfast, Incoming, ServerConfig, Session};
use axum::body::Body;
use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::wire::json;
use holdfast_protocol::wire::sse::{SseItem, SseParser};
use holdfast_protocol::{CloseCode, Frame};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::DuplexStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::ServiceExt;

/// Timers fire on the millisecond they are due, but tokio rounds a sleep
/// up to its next millisecond tick.
const TICK: Duration = Duration::from_millis(1);

struct Server {
    holdfast: Holdfast,
    incoming: Incoming,
    router: axum::Router,
}

impl Server {
    fn start(config: ServerConfig) -> Self {
        let (holdfast, incoming) = Holdfast::builder().config(config).build();
        let router = holdfast.router();
        Self {
            holdfast,
            incoming,
            router,
        }
    }

    /// `GET <uri>`, answered whole: the status and the batch.
    async fn get(&self, uri: &str) -> (StatusCode, Vec<Frame>) {
        let request = Request::get(uri)
            .header("host", "server.test")
            .body(Body::empty())
            .expect("a valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let body = response.into_body().collect().await.expect("a body");
        let frames = json::decode_batch(&body.to_bytes()).expect("a batch");
        (status, frames)
    }

    /// Opens a session with a first poll: its key, and the session.
    async fn open_by_poll(&mut self) -> (String, Session) {
        let (status, frames) = self.get("/poll?v=1").await;
        assert_eq!(status, StatusCode::OK);
        let key = match frames.first() {
            Some(Frame::Open(open)) => open.key.clone(),
            other => panic!("the first poll answered {other:?}"),
        };
        let session = self.incoming.accept().await.expect("a new session");
        (key, session)
    }

    /// `GET <uri>` as an event stream.
    async fn event_stream(&self, uri: &str) -> EventStream {
        let request = Request::get(uri)
            .header("host", "server.test")
            .body(Body::empty())
            .expect("a valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        EventStream::new(response.into_body())
    }

    /// `POST <mount>/send` of `frames` for session `key`: the status.
    async fn send(&self, key: &str, frames: &[Frame]) -> StatusCode {
        let request = Request::post(format!("/send?v=1&key={key}"))
            .header("host", "server.test")
            .body(Body::from(json::encode_batch_to_vec(frames)))
            .expect("a valid request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        response.status()
    }

    /// A WebSocket to `uri` over an in-memory pipe of `pipe` bytes each
    /// way, served by hyper as a real connection would be.
    async fn websocket(&self, uri: &str, pipe: usize) -> WebSocketStream<DuplexStream> {
        let (client, server) = tokio::io::duplex(pipe);
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            router.clone().oneshot(request.map(Body::new))
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(server);
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades();
            // The connection ends when the test drops its side.
            let _ = connection.await;
        });
        let url = format!("ws://server.test{uri}");
        let (ws, _) = tokio_tungstenite::client_async(url, client)
            .await
            .expect("the WebSocket upgrade");
        ws
    }
}

/// An event stream being read: the events (each a batch) in order.
struct EventStream {
    body: Body,
    parser: SseParser,
    ready: std::collections::VecDeque<Vec<Frame>>,
}

impl EventStream {
    fn new(body: Body) -> Self {
        Self {
            body,
            parser: SseParser::new(1 << 20),
            ready: Default::default(),
        }
    }

    /// The next event's frames; `None` once the stream ended.
    async fn next(&mut self) -> Option<Vec<Frame>> {
        loop {
            if let Some(frames) = self.ready.pop_front() {
                return Some(frames);
            }
            let frame = self.body.frame().await?.expect("a body without errors");
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let mut items = Vec::new();
            self.parser
                .feed(&chunk, &mut items)
                .expect("an event stream");
            for item in items {
                if let SseItem::Event { data, .. } = item {
                    self.ready
                        .push_back(json::decode_batch(data.as_bytes()).expect("a batch"));
                }
            }
        }
    }
}

/// The frames of the next text message; `None` once the socket closed.
async fn next_frames(ws: &mut WebSocketStream<DuplexStream>) -> Option<Vec<Frame>> {
    loop {
        match ws.next().await? {
            Ok(WsMessage::Text(text)) => {
                return Some(json::decode_batch(text.as_bytes()).expect("a batch"));
            }
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Runs a test body for at most an hour of test time (a few milliseconds
/// of wall time): a timer that never fires fails the test instead of
/// hanging it.
async fn bounded(body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(Duration::from_secs(3600), body)
        .await
        .is_err()
    {
        panic!("the test waited an hour of test time for something that never came");
    }
}

fn assert_at(what: &str, elapsed: Duration, due: Duration) {
    assert!(
        elapsed >= due && elapsed <= due + TICK,
        "{what} after {elapsed:?} of test time, due after {due:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_poll_with_nothing_to_deliver_is_held_for_poll_hold() {
    bounded(async {
        let mut server = Server::start(ServerConfig::default());
        let hold = server.holdfast.config().session.poll_hold;
        let (key, _session) = server.open_by_poll().await;

        let asked = Instant::now();
        let (status, frames) = server.get(&format!("/poll?v=1&key={key}&last=0")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(frames, [], "an empty batch ends the hold");
        assert_at("the held poll was answered", asked.elapsed(), hold);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_detached_session_lives_for_the_resume_window_and_not_a_millisecond_more() {
    bounded(async {
        let mut server = Server::start(ServerConfig::default());
        let window = server.holdfast.config().session.resume_window;
        let (key, session) = server.open_by_poll().await;
        // The first poll's answer starts the wait for the next one; no next
        // poll comes, so the session is detached from that instant (the
        // server notices `timeout` later), and the resume window runs from it.
        let detached = Instant::now();

        tokio::time::sleep_until(detached + window - TICK).await;
        assert!(
            !session.is_closed(),
            "closed before the resume window ended"
        );
        assert_eq!(server.holdfast.held_sessions(), 1);

        let end = session.closed().await;
        assert!(end.expired(), "ended by expiry: {end:?}");
        assert_at("the session expired", detached.elapsed(), window);
        // Gone: the server forgets it, and a resume is refused as lost.
        tokio::task::yield_now().await;
        assert_eq!(server.holdfast.held_sessions(), 0);
        let (status, frames) = server.get(&format!("/poll?v=1&key={key}&last=0")).await;
        assert_eq!(status.as_u16(), CloseCode::SESSION_LOST.http_status());
        assert!(
            matches!(frames.as_slice(), [Frame::Close(close)] if close.code == CloseCode::SESSION_LOST),
            "{frames:?}"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_resume_just_before_the_window_ends_finds_the_session() {
    bounded(async {
        let mut server = Server::start(ServerConfig::default());
        let window = server.holdfast.config().session.resume_window;
        let (key, session) = server.open_by_poll().await;
        let detached = Instant::now();
        session.send("kept").await.expect("the session is open");

        tokio::time::sleep_until(detached + window - TICK).await;
        let (status, frames) = server.get(&format!("/poll?v=1&key={key}&last=0")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            matches!(
                frames.as_slice(),
                [Frame::Resumed { .. }, Frame::Message { seq: 1, .. }]
            ),
            "the resumed poll delivers what was waiting: {frames:?}"
        );
        assert!(!session.is_closed());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn websocket_heartbeats_keep_an_answering_client_and_drop_a_silent_one() {
    bounded(async {
        let server = Server::start(ServerConfig::default());
        let session = &server.holdfast.config().session;
        let (ping, timeout) = (session.ping_interval, session.timeout);
        let mut ws = server.websocket("/ws?v=1", 64 * 1024).await;
        assert!(matches!(
            next_frames(&mut ws).await.as_deref(),
            Some([Frame::Open(_)])
        ));
        let opened = Instant::now();

        // An answering client: a ping every `ping_interval`, on the dot, for
        // longer than the dead-peer timeout.
        let mut last_word = opened;
        for n in 1..=4u32 {
            let frames = next_frames(&mut ws).await.expect("a ping");
            assert_eq!(frames, [Frame::Ping]);
            assert_at(&format!("ping {n}"), opened.elapsed(), ping * n);
            let pong = json::encode_batch_to_vec(&[Frame::Pong]);
            let pong = String::from_utf8(pong).expect("JSON is UTF-8");
            ws.send(WsMessage::text(pong)).await.expect("the pong");
            last_word = Instant::now();
        }

        // Silent from now on: pings go on, and `timeout` after the client's
        // last word the attachment is dropped with `detach` 4408.
        loop {
            match next_frames(&mut ws)
                .await
                .expect("a frame before the socket closes")
                .as_slice()
            {
                [Frame::Ping] => continue,
                [Frame::Detach(close)] => {
                    assert_eq!(close.code, CloseCode::PEER_TIMEOUT);
                    break;
                }
                other => panic!("unexpected frames {other:?}"),
            }
        }
        assert_at(
            "the silent client was dropped",
            last_word.elapsed(),
            timeout,
        );
        assert!(
            next_frames(&mut ws).await.is_none(),
            "then the socket closes"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_websocket_write_without_progress_is_dropped_after_write_timeout() {
    bounded(async {
        let config = ServerConfig {
            // Well inside the first ping and the dead-peer timeout.
            write_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        let mut server = Server::start(config);
        let write_timeout = server.holdfast.config().write_timeout;
        // A pipe much smaller than the message: the write stalls at once.
        let mut ws = server.websocket("/ws?v=1", 4 * 1024).await;
        assert!(matches!(
            next_frames(&mut ws).await.as_deref(),
            Some([Frame::Open(_)])
        ));
        let session = server.incoming.accept().await.expect("a new session");
        assert!(session.transport().is_some());

        // The client stops reading; the server writes a message the pipe
        // cannot take.
        session
            .send(vec![b'x'; 60 * 1024])
            .await
            .expect("room for it");
        let stalled = Instant::now();
        tokio::time::sleep_until(stalled + write_timeout - TICK).await;
        assert!(
            session.transport().is_some(),
            "dropped before the write deadline"
        );
        tokio::time::sleep(2 * TICK).await;
        assert_eq!(
            session.transport(),
            None,
            "the stalled attachment is dropped at the write deadline"
        );
        // The session lives on, resumable.
        assert!(!session.is_closed());
        drop(ws);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn sse_pings_answered_by_send_keep_the_stream_until_it_is_recycled_at_sse_max_age() {
    bounded(async {
        let config = ServerConfig {
            // Not a multiple of the ping interval: a ping and the recycling
            // never fall due on the same millisecond.
            sse_max_age: Duration::from_secs(290),
            ..ServerConfig::default()
        };
        let server = Server::start(config);
        let config = server.holdfast.config();
        let (ping, max_age) = (config.session.ping_interval, config.sse_max_age);
        let mut stream = server.event_stream("/sse?v=1").await;
        let started = Instant::now();
        let key = match stream.next().await.as_deref() {
            Some([Frame::Open(open)]) => open.key.clone(),
            other => panic!("the stream began with {other:?}"),
        };

        // Each ping on the dot, answered in a send request, until the stream
        // has lived `sse_max_age` (many times the dead-peer timeout).
        let mut pings = 0u32;
        let ended = loop {
            match stream
                .next()
                .await
                .expect("an event before the end")
                .as_slice()
            {
                [Frame::Ping] => {
                    pings += 1;
                    assert_at(&format!("ping {pings}"), started.elapsed(), ping * pings);
                    assert_eq!(server.send(&key, &[Frame::Pong]).await, StatusCode::OK);
                }
                [Frame::Detach(close)] => break close.code,
                other => panic!("unexpected frames {other:?}"),
            }
        };
        assert_eq!(ended, CloseCode::RECONNECT, "recycled: reconnect at once");
        assert_at("the stream was recycled", started.elapsed(), max_age);
        assert_eq!(pings as u128, max_age.as_millis() / ping.as_millis());
        assert!(stream.next().await.is_none(), "then the stream ends");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_sse_client_is_detached_after_the_timeout() {
    bounded(async {
        let server = Server::start(ServerConfig::default());
        let timeout = server.holdfast.config().session.timeout;
        let mut stream = server.event_stream("/sse?v=1").await;
        let started = Instant::now();
        assert!(matches!(
            stream.next().await.as_deref(),
            Some([Frame::Open(_)])
        ));
        loop {
            match stream
                .next()
                .await
                .expect("an event before the end")
                .as_slice()
            {
                [Frame::Ping] => continue,
                [Frame::Detach(close)] => {
                    assert_eq!(close.code, CloseCode::PEER_TIMEOUT);
                    break;
                }
                other => panic!("unexpected frames {other:?}"),
            }
        }
        assert_at("the silent client was dropped", started.elapsed(), timeout);
        assert!(stream.next().await.is_none(), "then the stream ends");
    })
    .await;
}

/// A log sink for one test.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A session's whole life — opened on long-polling, resumed on WebSocket,
/// cut, resumed on SSE, closed — is logged under its span (its id, never
/// its key), and what happens on an attachment under that attachment's
/// span. (Here for the in-process server; paused time runs it at once.)
#[tokio::test(start_paused = true)]
async fn a_sessions_life_across_transports_is_in_its_span() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || sink.clone())
        .finish();
    // This runtime runs every task on this thread: all of them log here.
    let _default = tracing::subscriber::set_default(subscriber);
    let (key, id) = {
        let mut server = Server::start(ServerConfig::default());
        let (key, session) = server.open_by_poll().await;
        bounded(async {
            let mut ws = server
                .websocket(&format!("/ws?v=1&key={key}&last=0"), 64 * 1024)
                .await;
            let greeting = next_frames(&mut ws).await.unwrap_or_default();
            assert!(matches!(greeting.first(), Some(Frame::Resumed { .. })));
            drop(ws);
            while session.transport().is_some() {
                tokio::time::sleep(TICK).await;
            }
            let mut stream = server
                .event_stream(&format!("/sse?v=1&key={key}&last=0"))
                .await;
            let greeting = stream.next().await.unwrap_or_default();
            assert!(matches!(greeting.first(), Some(Frame::Resumed { .. })));
            session.close(CloseCode::NORMAL, "bye");
            while stream.next().await.is_some() {}
        })
        .await;
        (key, session.id().to_owned())
    };
    let log =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let span = format!("session{{session_id={id}}}");
    let line = |what: &str| {
        log.lines()
            .find(|line| line.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in\n{log}"))
    };
    for what in ["session opened", "session resumed", "session closed"] {
        assert!(line(what).contains(&span), "{what} in {span}:\n{log}");
    }
    assert!(line("session opened").contains(" INFO "), "{log}");
    assert!(line("session closed").contains(" INFO "), "{log}");
    let detached = line("transport detached");
    assert!(
        detached.contains(&format!("{span}:attachment{{transport=")),
        "the cut WebSocket's end in its attachment's span:\n{log}"
    );
    assert!(!log.contains(&key), "the key is never logged:\n{log}");
}

/// What a debugging recorder holds, one entry per metric.
type Entries = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    metrics_util::debugging::DebugValue,
)>;

/// The values recorded in the histogram `name`.
fn histogram(entries: &Entries, name: &str) -> Vec<f64> {
    entries
        .iter()
        .filter(|(key, ..)| key.key().name() == name)
        .flat_map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Histogram(values) => {
                values.iter().map(|v| v.into_inner()).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

/// A `send` that found the replay buffer full is timed until the client's
/// acknowledgement made room, and the message it waited behind from
/// queued to acknowledged: both to the millisecond of test time.
#[tokio::test(start_paused = true)]
async fn a_send_waiting_for_room_and_the_ack_delay_are_timed() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // This runtime runs every task on this thread: all of them count here.
    let _local = metrics::set_default_local_recorder(&recorder);
    let wait = Duration::from_millis(250);
    bounded(async {
        let mut config = ServerConfig::default();
        config.session.max_unacked_messages = 1;
        let mut server = Server::start(config);
        let (key, session) = server.open_by_poll().await;
        session.send("one").await.expect("room for one");
        let second = tokio::spawn({
            let session = session.clone();
            async move { session.send("two").await }
        });
        tokio::time::sleep(wait).await;
        assert!(!second.is_finished(), "the second send waits for room");
        let (_, frames) = server.get(&format!("/poll?v=1&key={key}&last=0")).await;
        assert!(matches!(
            frames.first(),
            Some(Frame::Message { seq: 1, .. })
        ));
        // This poll acknowledges the first message: room for the second.
        let (_, frames) = server.get(&format!("/poll?v=1&key={key}&last=1")).await;
        assert!(matches!(
            frames.first(),
            Some(Frame::Message { seq: 2, .. })
        ));
        second
            .await
            .expect("the send task")
            .expect("sent once there was room");
    })
    .await;
    // A snapshot drains the histograms: take one.
    let entries: Entries = snapshotter.snapshot().into_vec();
    let waited = histogram(&entries, crate::metrics::SEND_WAIT);
    assert_eq!(waited.len(), 1, "one send waited: {waited:?}");
    assert!((waited[0] - wait.as_secs_f64()).abs() < 0.002, "{waited:?}");
    let delays = histogram(&entries, crate::metrics::ACK_DELAY);
    assert_eq!(delays.len(), 1, "the first message is sampled: {delays:?}");
    assert!((delays[0] - wait.as_secs_f64()).abs() < 0.002, "{delays:?}");
}
