//! The client's fallback report (`PROTOCOL.md` §1.2): a Rust client pushed
//! off a transport by the hostile proxy tells the server why, once, and the
//! application reads it on its `Session`; hostile `report` values neither
//! fail a request nor grow what a session keeps.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use holdfast::client::{Connection, Event, TransportKind};
use holdfast::server::{Cause, Fallback, Holdfast, Session};
use holdfast_testkit::{After, Behavior, PathFilter, Proxy};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client_support::*;

/// An echo server that hands the test every session it opens, behind a
/// test proxy (when given a behavior).
struct Reporting {
    addr: SocketAddr,
    mount: String,
    sessions: mpsc::UnboundedReceiver<Session>,
    task: JoinHandle<()>,
}

impl Reporting {
    /// Serves with request heads up to `max_head` bytes (room for hostile
    /// queries).
    async fn start(max_head: usize) -> Self {
        let (tx, sessions) = mpsc::unbounded_channel();
        let holdfast = Holdfast::builder()
            .config(quick_server_config())
            .on_session(move |session: Session| {
                let _ = tx.send(session.clone());
                crate::support::echo(session)
            });
        let mount = unique_mount();
        let app = axum::Router::new().nest(&mount, holdfast.router());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = holdfast::server::serve(listener, app)
                .max_request_head_bytes(max_head)
                .await;
        });
        Self {
            addr,
            mount,
            sessions,
            task,
        }
    }

    /// The next session the server opened.
    async fn session(&mut self) -> Session {
        tokio::time::timeout(DEADLINE, self.sessions.recv())
            .await
            .expect("timed out waiting for a session")
            .expect("the server is gone")
    }

    /// The session `connection` is on, skipping those its failed attempts
    /// opened (an upgrade or a stream the proxy let through, whose answer
    /// never reached the client).
    async fn session_of(&mut self, connection: &Connection) -> Session {
        let id = connection.session_id().expect("an open session");
        loop {
            let session = self.session().await;
            if session.id() == id {
                return session;
            }
        }
    }

    fn base(&self) -> String {
        format!("http://{}{}", self.addr, self.mount)
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reporting server behind a proxy behaving as `behavior`, and its URL
/// through the proxy.
async fn proxied_reporting(behavior: Behavior) -> (Reporting, Proxy, String) {
    init_tracing();
    let server = Reporting::start(64 * 1024).await;
    let proxy = Proxy::builder()
        .upstream(server.addr)
        .behavior(behavior)
        .start()
        .await
        .expect("proxy");
    let url = format!("{}{}", proxy.url(), server.mount);
    (server, proxy, url)
}

/// The steps as the app would print them: transports and causes, not
/// timings.
fn steps(fallbacks: &[Fallback]) -> Vec<(TransportKind, TransportKind, Cause)> {
    fallbacks.iter().map(|f| (f.from, f.to, f.cause)).collect()
}

/// The steps with their timings as the wire carries them (whole
/// milliseconds).
fn on_the_wire(fallbacks: &[Fallback]) -> Vec<(TransportKind, TransportKind, Cause, u128)> {
    fallbacks
        .iter()
        .map(|f| (f.from, f.to, f.cause, f.after.as_millis()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_reaches_the_session_once() {
    let (mut server, proxy, url) =
        proxied_reporting(Behavior::default().refuse_upgrades(403)).await;
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    let session = server.session().await;
    // Recorded before the application got the session.
    let reported = session.fallbacks();
    assert_eq!(
        steps(&reported),
        [(
            TransportKind::WebSocket,
            TransportKind::Sse,
            Cause::Status(403)
        )]
    );
    assert_eq!(
        on_the_wire(&connection.fallbacks()),
        on_the_wire(&reported),
        "what the client knows"
    );

    // A cut, and a resume on SSE: the server is not told again.
    exchange(&mut connection, 50, |_| {}).await;
    proxy.cut_all();
    wait_for(&mut connection, |event| match event {
        Event::Resumed { transport } => Some(*transport),
        _ => None,
    })
    .await;
    exchange(&mut connection, 50, |_| {}).await;
    assert_eq!(session.fallbacks(), reported, "an entry arrives once");
    assert!(
        proxy.stats().requests_to("/sse") >= 2,
        "the session resumed on a request of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_is_reported_as_no_first_frame() {
    let (mut server, _proxy, url) =
        proxied_reporting(Behavior::default().silence_after_upgrade(After::IMMEDIATELY)).await;
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    let session = server.session_of(&connection).await;
    let reported = session.fallbacks();
    assert_eq!(
        steps(&reported),
        [(
            TransportKind::WebSocket,
            TransportKind::Sse,
            Cause::NoFirstFrame
        )]
    );
    // Given up at the probe timeout (800 ms in these tests).
    assert!(
        reported[0].after >= Duration::from_millis(700),
        "{reported:?}"
    );
    assert_eq!(on_the_wire(&connection.fallbacks()), on_the_wire(&reported));
    exchange(&mut connection, 20, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_steps_down_arrive_together_on_long_polling() {
    let (mut server, _proxy, url) = proxied_reporting(
        Behavior::default()
            .refuse_upgrades(426)
            .buffer_responses(64 * 1024, PathFilter::ends_with("/sse")),
    )
    .await;
    let connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::LongPoll));
    let session = server.session_of(&connection).await;
    let reported = session.fallbacks();
    assert_eq!(
        steps(&reported),
        [
            (
                TransportKind::WebSocket,
                TransportKind::Sse,
                Cause::Status(426)
            ),
            (
                TransportKind::Sse,
                TransportKind::LongPoll,
                Cause::NoFirstFrame
            ),
        ]
    );
    assert_eq!(on_the_wire(&connection.fallbacks()), on_the_wire(&reported));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_after_opening_arrives_with_the_resume() {
    let (mut server, proxy, url) = proxied_reporting(Behavior::transparent()).await;
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
    let session = server.session().await;
    assert!(session.fallbacks().is_empty());
    assert!(connection.fallbacks().is_empty());

    // The network changes under the session: upgrades refused from now on.
    proxy.set(Behavior::default().refuse_upgrades(403));
    proxy.cut_all();
    let changed = wait_for(&mut connection, |event| match event {
        Event::TransportChanged { from, to } => Some((*from, *to)),
        _ => None,
    })
    .await;
    assert_eq!(changed, (TransportKind::WebSocket, TransportKind::Sse));
    assert_eq!(
        steps(&session.fallbacks()),
        [(
            TransportKind::WebSocket,
            TransportKind::Sse,
            Cause::Status(403)
        )]
    );
    assert_eq!(
        on_the_wire(&connection.fallbacks()),
        on_the_wire(&session.fallbacks())
    );
    exchange(&mut connection, 20, |_| {}).await;
    assert!(
        server.sessions.try_recv().is_err(),
        "the same session, resumed"
    );
}

/// `n` valid entries, the `i`-th given up after `first + i` ms.
fn valid_report(first: u64, n: u64) -> String {
    (first..first + n)
        .map(|ms| format!("websocket:sse:timeout::{ms}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reports_fail_nothing_and_stay_bounded() {
    init_tracing();
    // Request heads large enough for the largest URL (64 KiB): the report
    // is what is refused, not the head.
    let mut server = Reporting::start(256 << 10).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    // As long as a URL can be, of entries that would be valid alone.
    let long = vec!["websocket:sse:timeout::1"; 1_600].join(",");
    let many = ",".repeat(10_000);
    for hostile in [
        long.as_str(),
        many.as_str(),
        "%zz%ff::,,:::",
        "websocket:sse:nonsense::1,\u{1F600}:sse:timeout::1",
        "websocket:sse:status:403:99999999999999999999999",
    ] {
        let url = format!("{}/poll?v=1", server.base());
        let response = http
            .get(&url)
            .query(&[("report", hostile)])
            .send()
            .await
            .expect("poll");
        assert_eq!(response.status(), 200, "a bad report fails nothing");
        let body = response.text().await.expect("body");
        assert!(body.contains(r#""t":"open""#), "{body}");
        let session = server.session().await;
        assert!(session.fallbacks().is_empty(), "nothing read from it");
    }

    // Valid reports on every transport, four times the bound in all: the
    // session keeps the newest 16.
    let url = format!("{}/poll?v=1", server.base());
    let opened = http
        .get(&url)
        .query(&[("report", valid_report(0, 16))])
        .send()
        .await
        .expect("poll")
        .text()
        .await
        .expect("a body");
    let opened: serde_json::Value = serde_json::from_str(&opened).expect("a batch");
    let key = opened[0]["key"].as_str().expect("a key").to_owned();
    let session = server.session().await;
    assert_eq!(session.fallbacks().len(), 16);

    let sse = http
        .get(format!("{}/sse?v=1", server.base()))
        .query(&[("report", valid_report(100, 16))])
        .header("holdfast-key", &key)
        .send()
        .await
        .expect("sse");
    assert_eq!(sse.status(), 200);
    drop(sse);

    let ws_url = format!(
        "ws://{}{}/ws?v=1&report={}",
        server.addr,
        server.mount,
        valid_report(200, 16)
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .expect("a request");
    request
        .headers_mut()
        .insert("holdfast-key", key.parse().expect("a header value"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    // Its first frame (`resumed`) comes after the report was recorded.
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("a frame");
    assert!(
        first.to_text().unwrap_or("").contains("resumed"),
        "{first:?}"
    );

    let response = http
        .get(format!("{}/poll?v=1&last=0", server.base()))
        .query(&[("report", valid_report(300, 16))])
        .header("holdfast-key", &key)
        .send()
        .await
        .expect("poll");
    assert_eq!(response.status(), 200);
    let kept: Vec<u64> = session
        .fallbacks()
        .iter()
        .map(|f| f.after.as_millis() as u64)
        .collect();
    assert_eq!(kept, (300..316).collect::<Vec<_>>());
    assert!(server.sessions.try_recv().is_err(), "one session");

    // 2 MB: no URL is that long, and the HTTP layer refuses the head
    // before any handler runs; the server goes on serving.
    let mut socket = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "GET {}/poll?v=1&report={} HTTP/1.1\r\nHost: x\r\n\r\n",
        server.mount,
        "x".repeat(2 << 20)
    );
    // The server may answer and close before reading it all.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut socket, &mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    let response = http
        .get(format!("{}/poll?v=1", server.base()))
        .send()
        .await
        .expect("poll");
    assert_eq!(response.status(), 200);
}
