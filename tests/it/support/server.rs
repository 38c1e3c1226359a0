//! Starting a holdfast server in-process on `127.0.0.1:0`, and a few
//! applications to run on it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use holdfast::protocol::Message;
use holdfast::server::{Holdfast, Incoming, ServeConfig, ServerConfig, Session};
use tokio::task::JoinHandle;

use super::wire::Payload;

/// Where the holdfast routes are mounted in test servers.
pub const MOUNT: &str = "/realtime";

/// A server listening on a loopback port, stopped when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:<port>/realtime`: the mount point.
    pub base: String,
    /// The listening address.
    pub addr: SocketAddr,
    /// The holdfast handle (session count, config, shutdown).
    pub holdfast: Holdfast,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves `holdfast` (mounted at [`MOUNT`]) on a fresh loopback port,
    /// with `holdfast::server::serve`'s defaults and the write deadline of
    /// the holdfast configuration.
    pub async fn serve(holdfast: Holdfast) -> Self {
        let mut serve = ServeConfig::default();
        serve.write_timeout = holdfast.config().write_timeout;
        Self::serve_with(holdfast, serve).await
    }

    /// Serves `holdfast` (mounted at [`MOUNT`]) on a fresh loopback port
    /// with these connection settings.
    pub async fn serve_with(holdfast: Holdfast, serve: ServeConfig) -> Self {
        init_tracing();
        let app = axum::Router::new().nest(MOUNT, holdfast.router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            if let Err(error) = holdfast::server::serve(listener, app).config(serve).await {
                tracing::error!(%error, "test server stopped");
            }
        });
        Self {
            base: format!("http://{addr}{MOUNT}"),
            addr,
            holdfast,
            task,
        }
    }

    /// Starts a server with `config`, handing new sessions to the test.
    pub async fn start(config: ServerConfig) -> (Self, Incoming) {
        let (holdfast, incoming) = Holdfast::builder().config(config).build();
        (Self::serve(holdfast).await, incoming)
    }

    /// Starts a server with `config` that echoes every message back.
    pub async fn echo(config: ServerConfig) -> Self {
        Self::serve(Holdfast::builder().config(config).on_session(echo)).await
    }

    /// The `ws://` URL of an endpoint, with `query` (no leading `?`).
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}{MOUNT}/ws?{query}", self.addr)
    }

    /// The `http://` URL of an endpoint (`sse`, `poll`, `send`), with `query`.
    pub fn url(&self, endpoint: &str, query: &str) -> String {
        format!("{}/{endpoint}?{query}", self.base)
    }

    /// Waits until the server holds `n` sessions, or panics after `within`.
    pub async fn wait_session_count(&self, n: usize, within: Duration) {
        self.wait_until(within, 5, || {
            let count = self.holdfast.session_count();
            (count == n).then_some(()).ok_or_else(|| {
                format!("server still holds {count} sessions after {within:?}, expected {n}")
            })
        })
        .await;
    }

    /// Waits until the server buffers `n` bytes across all sessions (replay
    /// buffers and unread input), or panics after `within`. A resume's or
    /// poll's `last` drops acknowledged messages from the replay buffer, so
    /// this shows that a request has reached the session.
    pub async fn wait_buffered_bytes(&self, n: usize, within: Duration) {
        self.wait_until(within, 2, || {
            let bytes = self.holdfast.buffered_bytes();
            (bytes == n).then_some(()).ok_or_else(|| {
                format!("server buffers {bytes} bytes after {within:?}, expected {n}")
            })
        })
        .await;
    }

    /// Polls `check` every `every_ms` until it is `Ok`; panics with its
    /// last `Err` after `within`.
    async fn wait_until(
        &self,
        within: Duration,
        every_ms: u64,
        check: impl Fn() -> Result<(), String>,
    ) {
        let reached = tokio::time::timeout(within, async {
            while check().is_err() {
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
            }
        })
        .await;
        if reached.is_err()
            && let Err(failure) = check()
        {
            panic!("{failure}");
        }
    }
}

/// Serves `holdfast` at [`MOUNT`] on a fresh loopback port with plain
/// `axum::serve` and connect info (each request's TCP peer, as
/// `holdfast::server::serve` gives it): the address, and the serving task,
/// stopped when dropped.
pub async fn serve_with_peers(holdfast: &Holdfast) -> (SocketAddr, AbortOnDrop) {
    let app = axum::Router::new().nest(MOUNT, holdfast.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service).await;
    });
    (addr, AbortOnDrop(task))
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The echo application: every message comes back, in order, until the
/// session ends.
pub async fn echo(session: Session) {
    while let Some(message) = session.recv().await {
        if session.send(message).await.is_err() {
            break;
        }
    }
}

/// A payload as the server API sees it.
pub fn to_message(payload: &Payload) -> Message {
    match payload {
        Payload::Text(t) => Message::text(t.clone()),
        Payload::Binary(b) => Message::binary(b.clone()),
    }
}

/// A server-side message as the wire client sees it.
pub fn to_payload(message: &Message) -> Payload {
    match message {
        Message::Text(t) => Payload::Text(t.as_str().to_owned()),
        Message::Binary(b) => Payload::Binary(b.to_vec()),
    }
}

/// Takes the next new session, or panics after `within`.
pub async fn accept(incoming: &mut Incoming, within: Duration) -> Session {
    match tokio::time::timeout(within, incoming.accept()).await {
        Ok(Some(session)) => session,
        Ok(None) => panic!("the server stopped accepting sessions"),
        Err(_) => panic!("no new session within {within:?}"),
    }
}

/// Everything a session received, collected by a background task.
#[derive(Clone, Default)]
pub struct Recorder {
    received: Arc<Mutex<Vec<Payload>>>,
}

impl Recorder {
    /// Starts recording what `session` receives, until it ends.
    pub fn start(session: Session) -> (Self, JoinHandle<()>) {
        let recorder = Self::default();
        let received = recorder.received.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = session.recv().await {
                received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(to_payload(&message));
            }
        });
        (recorder, task)
    }

    /// What was received so far.
    pub fn received(&self) -> Vec<Payload> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` messages were received, or panics after `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Payload> {
        let reached = tokio::time::timeout(within, async {
            loop {
                if self.received().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let got = self.received();
        assert!(
            reached.is_ok(),
            "the server session received {} messages within {within:?}, expected {n}",
            got.len()
        );
        got
    }
}

/// Logs to the test output with `RUST_LOG` (off by default). The first
/// call in the process installs the subscriber; later ones do nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}
