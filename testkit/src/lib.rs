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
//! replaced at any time with [`Proxy::set`]; [`Proxy::stats`] counts what
//! happened and [`Proxy::cut_all`] drops every live connection. Dropping the
//! `Proxy` stops it and every connection task.
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

mod behavior;
mod conn;
mod head;
mod redis;

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

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
    /// Connections the proxy ended itself: cut, reset or [`Proxy::cut_all`].
    pub cut: u64,
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
}

/// State shared by the handle and every connection task.
pub(crate) struct Shared {
    upstream: Option<SocketAddr>,
    behavior: watch::Sender<Arc<Behavior>>,
    cuts: watch::Sender<u64>,
    stats: Mutex<Stats>,
    changed: Notify,
}

impl Shared {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_waiters();
    }
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
    behavior: Behavior,
}

impl ProxyBuilder {
    /// Where origin-form requests go (reverse-proxy mode). Without one, the
    /// proxy answers them 502 and works as a forward proxy only.
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.upstream = Some(addr);
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
            behavior: watch::Sender::new(Arc::new(self.behavior)),
            cuts: watch::Sender::new(0),
            stats: Mutex::new(Stats::default()),
            changed: Notify::new(),
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

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
