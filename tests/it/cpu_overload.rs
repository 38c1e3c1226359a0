//! A server short of CPU: a busy session's application task yields its
//! worker now and then (tokio's cooperative budget), and while the runtime
//! lags past `open_lag_limit` new sessions get a clear, fast refusal
//! (503 + `Retry-After`, close 4503) while resumes are still admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::raw::{self, Reply, resume_query};
use crate::support::*;
use holdfast::server::{Holdfast, ServerConfig};

// ---- fairness ---------------------------------------------------------------

/// Messages queued before the application reads any.
const QUEUED: usize = 1000;

/// On a single-threaded runtime, a task spawned while the application has
/// [`QUEUED`] messages ready runs before the application has read (and
/// then sent) them all: `recv` and `send` yield now and then even when
/// they never have to wait. Without that, the draining loop holds the
/// thread until every message is read, and the other task runs after.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_session_yields_its_worker_before_draining_its_queue() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    assert!(matches!(
        ws.recv_frames().await.as_slice(),
        [Frame::Open(_)]
    ));
    let session = accept(&mut incoming, DEADLINE).await;
    // Same-length payloads, so that the queue's charge is known exactly.
    let frames: Vec<Frame> = (1..=QUEUED as u64)
        .map(|seq| Frame::Msg {
            seq,
            data: format!("m{seq:05}"),
        })
        .collect();
    for batch in frames.chunks(100) {
        ws.send_frames(batch).await;
    }
    let charge = 6 + holdfast::protocol::MESSAGE_OVERHEAD;
    server.wait_buffered_bytes(QUEUED * charge, DEADLINE).await;

    let drained = tokio::spawn(async move {
        let other_ran = Arc::new(AtomicBool::new(false));
        let mut received = Vec::with_capacity(QUEUED);
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        let mut read_before_other = None;
        for n in 1..=QUEUED {
            received.push(session.recv().await.expect("a queued message"));
            if read_before_other.is_none() && other_ran.load(Ordering::Relaxed) {
                read_before_other = Some(n - 1);
            }
        }
        // The same with sends that always find room (the replay buffer
        // holds them all).
        let other_ran = Arc::new(AtomicBool::new(false));
        let flag = other_ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::Relaxed) });
        let mut sent_before_other = None;
        for (n, message) in received.into_iter().enumerate() {
            session.send(message).await.expect("room to send");
            if sent_before_other.is_none() && other_ran.load(Ordering::Relaxed) {
                sent_before_other = Some(n);
            }
        }
        (read_before_other, sent_before_other, session)
    });
    let (read, sent, _session) = within(DEADLINE, "draining the queue", drained)
        .await
        .expect("the draining task");
    // The budget is 128 operations per poll; some were spent before.
    assert!(
        read.is_some_and(|n| n <= 128),
        "the application read {read:?} of {QUEUED} ready messages before another task ran"
    );
    assert!(
        sent.is_some_and(|n| n <= 128),
        "the application sent {sent:?} of {QUEUED} messages before another task ran"
    );
}

// ---- CPU admission ----------------------------------------------------------

/// The lag limit of the admission test: far below the lag its load makes.
const LAG_LIMIT: Duration = Duration::from_millis(50);

/// How long the load blocks the server's only worker at a time.
const BLOCK: Duration = Duration::from_millis(300);

/// A runtime of its own for the server, with one worker, shut down (without
/// waiting for its blocked worker) when dropped.
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl ServerRuntime {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        Self(Some(runtime))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("the runtime").handle()
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// `GET <mount>/poll?v=1`: a new session's first poll.
async fn open_poll(http: &reqwest::Client, base: &str) -> Reply {
    raw::get(http, &format!("{base}/poll?v=1"), &[]).await
}

/// While a task blocks the server's only worker again and again (its
/// runtime lagging about [`BLOCK`], past [`LAG_LIMIT`]), new sessions are
/// refused — `503` + `Retry-After` on HTTP, close 4503 with `retry_after`
/// on WebSocket — and a session opened before is resumed all the same.
/// Once the load stops, new sessions are admitted again.
#[tokio::test]
async fn a_lagging_runtime_refuses_new_sessions_but_not_resumes() {
    let runtime = ServerRuntime::new();
    let (holdfast, addr) = runtime
        .handle()
        .spawn(async {
            let mut config = ServerConfig::default();
            config.open_lag_limit = Some(LAG_LIMIT);
            config.retry_after = Duration::from_secs(2);
            // Built on this runtime: the lag probe runs here.
            let holdfast = Holdfast::builder().config(config).on_session(echo);
            let app = axum::Router::new().nest(server::MOUNT, holdfast.router());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            let addr = listener.local_addr().expect("local address");
            tokio::spawn(async move {
                let _ = holdfast::server::serve(listener, app).await;
            });
            (holdfast, addr)
        })
        .await
        .expect("the server starts");
    let base = format!("http://{addr}{}", server::MOUNT);
    let ws_url = |query: &str| format!("ws://{addr}{}/ws?{query}", server::MOUNT);
    let http = raw::http_client();

    // A session opened before the load.
    let reply = open_poll(&http, &base).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected open, got {other:?} ({})", reply.status),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    runtime.handle().spawn(async move {
        while !stopped.load(Ordering::Relaxed) {
            std::thread::sleep(BLOCK);
            tokio::task::yield_now().await;
        }
    });

    // Sessions still open until the lag has been seen twice in a row.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let reply = open_poll(&http, &base).await;
        if reply.status == 503 {
            break reply;
        }
        assert_eq!(reply.status, 200, "{:?}", reply.frames);
        assert!(
            Instant::now() < deadline,
            "no new session refused within 20 s of load (lag {:?})",
            holdfast.scheduling_lag()
        );
    };
    let frame = refused.assert_refusal(503, "close", 4503);
    assert_eq!(refused.header("retry-after"), "2");
    assert!(
        matches!(
            &frame,
            Frame::Close {
                retry_after: Some(2000),
                reason,
                ..
            } if reason.contains("busy")
        ),
        "{frame:?}"
    );
    assert!(holdfast.scheduling_lag() > LAG_LIMIT);

    // The session opened before resumes, on WebSocket, then on
    // long-polling (a poll after another attachment is a resume, answered
    // with `resumed` at once).
    let mut resumed = RawWs::connect(&ws_url(&resume_query(&key, 0))).await;
    assert!(
        matches!(
            resumed.recv_frames().await.first(),
            Some(Frame::Resumed { .. })
        ),
        "a WebSocket resume while busy"
    );
    let reply = raw::get(
        &http,
        &format!("{base}/poll?{}", resume_query(&key, 0)),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "a resume while busy: {:?}", reply.frames);
    assert!(
        matches!(reply.batch().first(), Some(Frame::Resumed { .. })),
        "{:?}",
        reply.frames
    );
    // Still busy: a new WebSocket session gets close 4503 with
    // `retry_after`.
    let mut ws = RawWs::connect(&ws_url("v=1")).await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Close {
                code: 4503,
                retry_after: Some(2000),
                ..
            }]
        ),
        "a new WebSocket session while busy: {frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(4503));

    // The load ends: new sessions are admitted again.
    stop.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = open_poll(&http, &base).await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing new sessions 20 s after the load (lag {:?})",
            holdfast.scheduling_lag()
        );
    }
}
