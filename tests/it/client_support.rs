//! Shared by the Rust client's integration tests: an echo server, a client
//! builder with test-sized timers, and exact-delivery checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::support::echo;
pub use crate::support::server::init_tracing;

use holdfast::client::{Backoff, ClientBuilder, Connection, Event, Message, TransportKind};
use holdfast::server::{Holdfast, ServerConfig};
use holdfast_testkit::{Behavior, Proxy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A mount path no other server of this process had: `/s<n>/realtime`.
///
/// The client remembers, per URL and for the whole process, the transport
/// that worked there. All the integration tests share one process and the
/// ports of finished tests are handed out again, so a server on a reused
/// port would inherit what a client learnt from another test's server —
/// SSE remembered behind a proxy that refused upgrades, say. A path of its
/// own makes every server's URL new, whatever its port, through proxies
/// and nginx alike (they pass the path on).
pub fn unique_mount() -> String {
    static SERVERS: AtomicU64 = AtomicU64::new(0);
    format!("/s{}/realtime", SERVERS.fetch_add(1, Ordering::Relaxed))
}

/// Serves `holdfast` mounted at `mount` on a fresh loopback port with
/// `holdfast::server::serve` (and the configuration's write deadline): the
/// address, and the task to abort to stop it.
pub async fn serve(holdfast: &Holdfast, mount: &str) -> (SocketAddr, JoinHandle<()>) {
    let app = axum::Router::new().nest(mount, holdfast.router());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let write_timeout = holdfast.config().write_timeout;
    let task = tokio::spawn(async move {
        let _ = holdfast::server::serve(listener, app)
            .write_timeout(write_timeout)
            .await;
    });
    (addr, task)
}

/// An echo server on 127.0.0.1, mounted at a path of its own
/// ([`unique_mount`]).
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Where the holdfast endpoints are: `/s<n>/realtime`.
    pub mount: String,
    pub holdfast: Holdfast,
    task: JoinHandle<()>,
}

impl EchoServer {
    pub async fn start(config: ServerConfig) -> Self {
        let holdfast = Holdfast::builder().config(config).on_session(echo);
        let mount = unique_mount();
        let (addr, task) = serve(&holdfast, &mount).await;
        Self {
            addr,
            mount,
            holdfast,
            task,
        }
    }

    /// The server's holdfast URL.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.mount)
    }

    /// Its holdfast URL through a front at `origin` (`http://host:port`)
    /// that passes paths on, such as a test proxy.
    pub fn url_at(&self, origin: &str) -> String {
        format!("{origin}{}", self.mount)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An echo server behind a test proxy behaving as `behavior`, and the
/// server's URL through the proxy.
pub async fn proxied(config: ServerConfig, behavior: Behavior) -> (EchoServer, Proxy, String) {
    let server = EchoServer::start(config).await;
    let proxy = Proxy::builder()
        .upstream(server.addr)
        .behavior(behavior)
        .start()
        .await
        .expect("proxy");
    let url = server.url_at(&proxy.url());
    (server, proxy, url)
}

/// Server timers short enough for tests that wait on them.
pub fn quick_server_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.ping_interval = Duration::from_millis(500);
    config.session.timeout = Duration::from_secs(3);
    config.session.poll_hold = Duration::from_secs(2);
    config
}

/// A client with test-sized timers.
pub fn client(url: &str) -> ClientBuilder {
    init_tracing();
    ClientBuilder::new(url)
        .probe_timeout(Duration::from_millis(800))
        .heartbeat_tolerance(Duration::from_secs(2))
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            jitter: 0.5,
            reset_after: Duration::from_secs(2),
        })
        .reprobe_after(Duration::from_secs(3600))
        .proxy(holdfast::client::ProxyConfig::none())
}

/// What one exchange saw.
#[derive(Debug, Default)]
pub struct Exchange {
    pub transports: Vec<TransportKind>,
    pub changes: Vec<(TransportKind, TransportKind)>,
    pub reconnects: u32,
    pub resumed: u32,
}

/// Sends `count` numbered messages (every third one binary) and checks the
/// echoes arrive exactly once and in order, calling `during` after each
/// send so a test can break things mid-stream.
pub async fn exchange(
    connection: &mut Connection,
    count: u32,
    mut during: impl FnMut(u32),
) -> Exchange {
    let mut seen = Exchange::default();
    let mut expected = 0u32;
    let mut sent = 0u32;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while expected < count {
        while sent < count && sent < expected + 64 {
            let message = numbered(sent);
            connection.send(message).await.expect("send");
            sent += 1;
            during(sent);
        }
        let event = tokio::time::timeout_at(deadline, connection.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out with {expected}/{count} echoes back: {seen:?}"))
            .expect("the connection ended early");
        match event {
            Event::Message(message) => {
                assert_eq!(
                    number_of(&message),
                    expected,
                    "echo out of order or duplicated"
                );
                expected += 1;
            }
            Event::Open { transport, .. } => seen.transports.push(transport),
            Event::Resumed { transport } => {
                seen.resumed += 1;
                seen.transports.push(transport);
            }
            Event::TransportChanged { from, to } => seen.changes.push((from, to)),
            Event::Reconnecting { .. } => seen.reconnects += 1,
            Event::Closed(closed) => panic!("session closed mid-exchange: {closed:?}"),
            _ => {}
        }
    }
    seen
}

/// Message `n`: text, or binary for every third.
pub fn numbered(n: u32) -> Message {
    if n % 3 == 2 {
        let mut bytes = n.to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(0xA5u8, (n % 50) as usize));
        Message::binary(bytes)
    } else {
        Message::text(format!("{n}:{}", "x".repeat((n % 40) as usize)))
    }
}

/// The number of a message made by [`numbered`].
pub fn number_of(message: &Message) -> u32 {
    match message {
        Message::Binary(bytes) => u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")),
        Message::Text(text) => text
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("numbered text"),
    }
}

/// Waits for the first event matching `pick`, skipping (and checking)
/// others.
pub async fn wait_for<T>(
    connection: &mut Connection,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, connection.next_event())
            .await
            .expect("timed out waiting for an event")
            .expect("the connection ended");
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

/// Waits, with [`DEADLINE`], until `done` holds (a state the test can only
/// read, not be told of).
pub async fn wait_until(done: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("in time");
}
