//! A hostile network for holdfast's tests: a loopback HTTP proxy that a test
//! starts in-process, puts between a client and a server, and whose
//! misbehaviour it changes while it runs.
//!
//! One [`Proxy`] works in two modes at once:
//!
//! - **reverse proxy**: the client talks to [`Proxy::url`] as if it were the
//!   server (`http://127.0.0.1:<port>/realtime`); origin-form requests go to
//!   the upstream given at start;
//! - **forward proxy**: the client is configured with
//!   `HTTP_PROXY=`[`Proxy::url`]; absolute-form requests
//!   (`GET http://host:port/path`) go to the named host, and `CONNECT
//!   host:port` opens a tunnel to it (loopback hosts only). Plain HTTP inside
//!   a tunnel (`ws://` through `CONNECT`) is parsed like any request, so the
//!   behaviours apply to it too.
//!
//! Every request gets its own upstream connection: the proxy forwards it with
//! `Connection: close` and hop-by-hop headers removed, streams the response
//! back until the upstream closes, then closes the client connection. A 101
//! turns the connection into a tunnel. What goes wrong is a [`Behavior`],
//! replaced at any time with [`Proxy::set`], plus the [`Answer`]s installed
//! with [`Proxy::answer`] (the proxy's own response to the next `n`
//! matching requests: a gateway's 502, a server's 503). [`Proxy::stats`]
//! counts what happened; [`Proxy::cut_all`], [`Proxy::cut_paths`] and
//! [`Proxy::silence_tunnels`] act on the connections open right now.
//! Dropping the `Proxy` stops it and every connection task.
//!
//! # As a program: `hostile-proxy`
//!
//! Test suites in other languages (the JavaScript client's, in
//! `client/js/test/support/proxy.js`) run the same proxy as a program:
//!
//! ```text
//! cargo build -p holdfast-testkit --bin hostile-proxy
//! target/debug/hostile-proxy --upstream 127.0.0.1:8080 [--route /test/=127.0.0.1:8081]
//! ```
//!
//! It prints `{"addr":"127.0.0.1:<port>","port":<port>}` as its first line,
//! then takes one JSON command a line on stdin (`{"cmd":"set",
//! "refuse_upgrade":403}`, `{"cmd":"cut"}`, `{"cmd":"answer","status":502,
//! "times":3}`, `{"cmd":"stats"}`, …) and answers each with one JSON line
//! on stdout. It exits when its stdin closes, so a test run that dies
//! leaves no proxy behind. The commands are listed in
//! `testkit/src/bin/hostile-proxy.rs`.
//!
//! # Limits
//!
//! - HTTP/1 only, no TLS termination. A `CONNECT` tunnel carrying TLS is
//!   relayed raw: only byte-level behaviours reach it (cut, latency, and
//!   silence/reset counted from the `200`). Absolute-form `https://` targets
//!   are answered 400.
//! - One request per client connection: keep-alive is turned off
//!   (`Connection: close` both ways), so every request is a new connection
//!   in [`Stats::connections`]. A `CONNECT` tunnel carrying plain HTTP serves
//!   one request, then closes. A response ends when the upstream closes the
//!   connection: the upstream must honour `Connection: close` (hyper and
//!   axum do).
//! - The forward proxy only reaches loopback addresses (others get 502).
//! - Byte counts are raw wire bytes: heads, chunked-encoding framing and
//!   WebSocket framing included.
//! - Silence, once on, stays on for that connection. Upgrade refusals,
//!   error pages and `CONNECT` refusals are decided when a request arrives;
//!   buffering when a response starts.
//! - After answering with its own page, the proxy keeps reading what the
//!   client still sends for up to a second before closing (so the close
//!   does not reset the answer away).
//!
//! ```
//! use std::time::Duration;
//! use holdfast_testkit::{After, Behavior, PathFilter, Proxy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! # let server_addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
//! // `server_addr`: where the holdfast server under test listens.
//! let proxy = Proxy::start(server_addr).await?;
//! let url = format!("{}/realtime", proxy.url()); // give this to the client
//! # let _ = url;
//!
//! // A middlebox that completes WebSocket upgrades, then goes silent, and
//! // buffers SSE until 4 KiB have accumulated.
//! proxy.set(
//!     Behavior::default()
//!         .silence_after_upgrade(After::IMMEDIATELY)
//!         .buffer_responses(4096, PathFilter::ends_with("/sse")),
//! );
//! // … run the client, then check what reached the network:
//! let stats = proxy.stats();
//! assert_eq!(stats.upgrades, 0);
//! assert_eq!(stats.requests_to("/sse"), 0);
//!
//! // Later: a gateway that times out on polls, and slow links everywhere.
//! proxy.set(
//!     Behavior::default()
//!         .error_page(504, PathFilter::ends_with("/poll"))
//!         .latency(Duration::from_millis(50)),
//! );
//! proxy.cut_all(); // every live connection ends now
//! # Ok(())
//! # }
//! ```

mod answer;
mod behavior;
mod conn;
mod head;
mod redis;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

pub use answer::{Answer, AnswerId};
pub use behavior::{After, Behavior, Buffering, Cut, ErrorPage, PathFilter};
pub use redis::{RedisCluster, RedisServer, RedisServerBuilder};

/// What the proxy saw, for assertions. A snapshot: see [`Proxy::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted from clients.
    pub connections: u64,
    /// Of those, still open.
    pub live: u64,
    /// HTTP requests by path (query left out), including upgrade requests,
    /// requests inside `CONNECT` tunnels and requests the proxy answered
    /// itself (error pages, refusals). `CONNECT` itself is not here.
    pub requests: BTreeMap<String, u64>,
    /// Requests asking for an upgrade (WebSocket), refused ones included.
    pub upgrade_requests: u64,
    /// 101 responses passed to clients: upgrades that went through.
    pub upgrades: u64,
    /// `CONNECT` requests, refused ones included.
    pub connects: u64,
    /// Bytes written to upstreams.
    pub bytes_up: u64,
    /// Bytes written to clients (the proxy's own answers included).
    pub bytes_down: u64,
    /// Connections the proxy ended itself: cut, reset, [`Proxy::cut_all`]
    /// or [`Proxy::cut_paths`].
    pub cut: u64,
    /// The most connections open at once (`live`), since the start or the
    /// last [`Proxy::reset_max`].
    pub max_live: u64,
    /// Requests whose query string holds `probe=1`: holdfast clients mark
    /// the attempts that probe a better transport so.
    pub probes: u64,
    /// Requests open now, by path: from the request head to the end of its
    /// connection (a held poll, an event stream, a WebSocket tunnel).
    pub open: BTreeMap<String, u64>,
    /// The most requests open at once, by path, since the start or the last
    /// [`Proxy::reset_max`].
    pub max_open: BTreeMap<String, u64>,
    /// The largest request body forwarded upstream, by path (raw bytes after
    /// the head, chunked framing included; upgrades not counted), since the
    /// start or the last [`Proxy::reset_max`].
    pub largest_body: BTreeMap<String, u64>,
}

impl Stats {
    /// Requests whose path ends with `suffix` (e.g. `"/sse"`).
    pub fn requests_to(&self, suffix: &str) -> u64 {
        self.requests
            .iter()
            .filter(|(path, _)| path.ends_with(suffix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests open now whose path ends with `suffix`.
    pub fn open_to(&self, suffix: &str) -> u64 {
        self.open
            .iter()
            .filter(|(path, _)| path.ends_with(suffix))
            .map(|(_, n)| n)
            .sum()
    }

    /// The most requests open at once on one path ending with `suffix`
    /// (the largest of those paths' [`max_open`](Self::max_open)).
    pub fn max_open_to(&self, suffix: &str) -> u64 {
        self.max_open
            .iter()
            .filter(|(path, _)| path.ends_with(suffix))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
    }

    /// The largest request body forwarded on a path ending with `suffix`.
    pub fn largest_body_to(&self, suffix: &str) -> u64 {
        self.largest_body
            .iter()
            .filter(|(path, _)| path.ends_with(suffix))
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0)
    }
}

/// State shared by the handle and every connection task.
pub(crate) struct Shared {
    upstream: Option<SocketAddr>,
    /// Path prefixes served by another upstream, first match wins.
    routes: Vec<(String, SocketAddr)>,
    behavior: watch::Sender<Arc<Behavior>>,
    cuts: watch::Sender<u64>,
    stats: Mutex<Stats>,
    changed: Notify,
    answers: Mutex<answer::Answers>,
    /// Every live connection, for the commands aimed at some of them.
    conns: Mutex<HashMap<u64, Arc<conn::Control>>>,
}

impl Shared {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
        self.changed.notify_waiters();
    }

    /// Where an origin-form request for `path` goes.
    pub(crate) fn upstream_for(&self, path: &str) -> Option<SocketAddr> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, addr)| *addr)
            .or(self.upstream)
    }

    /// The response of an installed [`Answer`] taking this request.
    pub(crate) fn take_answer(&self, method: &str, path: &str) -> Option<Vec<u8>> {
        lock(&self.answers).take(method, path)
    }

    pub(crate) fn register(&self, index: u64, control: Arc<conn::Control>) {
        lock(&self.conns).insert(index, control);
    }

    pub(crate) fn unregister(&self, index: u64) {
        lock(&self.conns).remove(&index);
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decrements `live` when a connection task ends (or is aborted).
struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.live = s.live.saturating_sub(1));
    }
}

/// Options for starting a [`Proxy`].
#[derive(Debug, Default)]
pub struct ProxyBuilder {
    upstream: Option<SocketAddr>,
    routes: Vec<(String, SocketAddr)>,
    behavior: Behavior,
}

impl ProxyBuilder {
    /// Where origin-form requests go (reverse-proxy mode). Without one, the
    /// proxy answers them 502 and works as a forward proxy only.
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.upstream = Some(addr);
        self
    }

    /// Origin-form requests whose path starts with `prefix` (e.g.
    /// `"/test/"`) go to `addr` instead of the upstream: a second server
    /// behind the same origin, such as the pages of a browser test. The
    /// first matching route wins; behaviours and answers apply alike.
    pub fn route(mut self, prefix: impl Into<String>, addr: SocketAddr) -> Self {
        self.routes.push((prefix.into(), addr));
        self
    }

    /// The behaviour from the first connection on (default: transparent).
    pub fn behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(self) -> io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: self.upstream,
            routes: self.routes,
            behavior: watch::Sender::new(Arc::new(self.behavior)),
            cuts: watch::Sender::new(0),
            stats: Mutex::new(Stats::default()),
            changed: Notify::new(),
            answers: Mutex::new(answer::Answers::default()),
            conns: Mutex::new(HashMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::debug!(%addr, upstream = ?self.upstream, "test proxy listening");
        Ok(Proxy {
            addr,
            shared,
            accept,
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here: when the proxy handle aborts this task, dropping the set
    // aborts every connection task.
    let mut tasks = JoinSet::new();
    let mut index = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::trace!(connection = index, %peer, "accepted");
                    let cuts = shared.cuts.subscribe();
                    shared.update(|s| {
                        s.connections += 1;
                        s.live += 1;
                        s.max_live = s.max_live.max(s.live);
                    });
                    let guard = LiveGuard(shared.clone());
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        let _guard = guard;
                        conn::run(shared, stream, index, cuts).await;
                    });
                    index += 1;
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!("test proxy accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// A running proxy on `127.0.0.1`. Dropping it stops it: the listener
/// closes and every connection through it is dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Options: upstream and initial behaviour.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// A transparent proxy in front of `upstream` (and a forward proxy).
    pub async fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        Self::builder().upstream(upstream).start().await
    }

    /// A transparent forward proxy only (no reverse upstream).
    pub async fn start_forward() -> io::Result<Proxy> {
        Self::builder().start().await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the base URL in reverse mode, and the
    /// `HTTP_PROXY` value in forward mode.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the behaviour. New connections and requests see it at once;
    /// for live connections see each [`Behavior`] field.
    pub fn set(&self, behavior: Behavior) {
        tracing::debug!(?behavior, "test proxy behaviour changed");
        self.shared.behavior.send_replace(Arc::new(behavior));
    }

    /// The current behaviour.
    pub fn behavior(&self) -> Behavior {
        (**self.shared.behavior.borrow()).clone()
    }

    /// Closes every connection open right now (both sockets of each).
    /// Connections accepted afterwards are not affected.
    pub fn cut_all(&self) {
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// Closes every connection open right now whose request path matches
    /// (e.g. `PathFilter::ends_with("/sse")`: the event streams), as
    /// [`cut_all`](Self::cut_all) does; connections still reading their
    /// request head, and later ones, are not affected.
    pub fn cut_paths(&self, paths: &PathFilter) {
        for control in lock(&self.shared.conns).values() {
            if control.path().is_some_and(|p| paths.matches(p)) {
                control.cut();
            }
        }
    }

    /// Silences every tunnel (upgraded connection) open right now, as
    /// [`Behavior::silence_after_upgrade`] does, but leaves later tunnels
    /// alone: a middlebox that lost its state.
    pub fn silence_tunnels(&self) {
        for control in lock(&self.shared.conns).values() {
            control.silence_tunnel();
        }
    }

    /// Installs `answer`: matching requests get it instead of being
    /// forwarded, until it runs out or is withdrawn.
    pub fn answer(&self, answer: Answer) -> AnswerId {
        tracing::debug!(?answer, "test proxy answer installed");
        lock(&self.shared.answers).install(answer)
    }

    /// Removes an installed answer; false if it had already run out.
    pub fn withdraw(&self, id: AnswerId) -> bool {
        lock(&self.shared.answers).withdraw(id)
    }

    /// Starts the high-water marks ([`Stats::max_live`],
    /// [`Stats::max_open`], [`Stats::largest_body`]) over from now.
    pub fn reset_max(&self) {
        self.shared.update(|s| {
            s.max_live = s.live;
            s.max_open = s.open.clone();
            s.largest_body.clear();
        });
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Waits until `condition` holds for the counters, and returns them.
    /// Never times out by itself: wrap it in `tokio::time::timeout`.
    pub async fn wait_until(&self, mut condition: impl FnMut(&Stats) -> bool) -> Stats {
        loop {
            let changed = self.shared.changed.notified();
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
