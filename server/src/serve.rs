//! [`serve`]: an accept loop for an axum app with holdfast's routes, with
//! the deadlines and limits `axum::serve` leaves out.
//!
//! `axum::serve` is deliberately minimal: it sets no hyper timer, so hyper's
//! header read timeout never fires; it has no write deadline, so a client
//! that stops reading pins its connection (and an SSE stream pins its
//! session) for as long as the socket stays open; it accepts without limit;
//! and it leaves Nagle's algorithm on. [`serve`] is the same shape — a
//! builder that you `.await` — with all of those set, each with a
//! documented default and knob in [`ServeConfig`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

use crate::write_deadline::WriteDeadline;

#[cfg(feature = "http2")]
mod h2c;

/// The knobs of [`serve`]. With the defaults, a client that stops sending
/// or stops reading cannot hold a connection past a deadline, and a flood
/// of connections cannot take more than a set number of sockets.
///
/// ```
/// use std::time::Duration;
/// use holdfast_server::ServeConfig;
///
/// let mut config = ServeConfig::default();
/// config.max_connections = 20_000;
/// config.write_timeout = Duration::from_secs(20);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeConfig {
    /// How long a client may take to send a request's head (request line
    /// and headers), counted from when the server starts waiting for it —
    /// so it also closes keep-alive connections idle between requests for
    /// longer. Past it, hyper closes the connection. A real client sends
    /// its head in one round trip; a "slowloris" client trickling header
    /// bytes would otherwise hold the connection forever. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a write to a client may make no progress — not one byte
    /// accepted — before the connection is closed. This covers every
    /// response body (an SSE stream to a reader that stopped reading)
    /// and upgraded WebSockets alike; a slow reader that keeps reading is
    /// never cut. Match it to [`ServerConfig::write_timeout`](crate::ServerConfig::write_timeout).
    /// Default 30 s.
    pub write_timeout: Duration,
    /// Most connections open at once, upgraded WebSockets included. At the
    /// limit the server stops accepting: new connections wait in the
    /// kernel's accept queue until one closes (the deadlines above see to
    /// it that none is held forever). Set it below the process's open-file
    /// limit (`ulimit -n`) less what the application needs for itself, so
    /// that a flood of connections cannot exhaust file descriptors.
    /// Default 100 000: one attached connection for each of the default
    /// [`ServerConfig::max_sessions`](crate::ServerConfig::max_sessions).
    pub max_connections: usize,
    /// Most bytes hyper buffers while reading a request: the request line
    /// and headers must fit (else `431`), and it bounds what one
    /// connection holds before its request is parsed. hyper's own default
    /// is about 400 KB, so a client trickling a huge header could make
    /// every connection hold that much until `header_read_timeout`.
    /// 64 KiB leaves room for the large cookies of single sign-on
    /// setups (nginx allows 32 KiB by default). At least 8 KiB.
    /// Default 64 KiB.
    pub max_request_head_bytes: usize,
    /// Also serve HTTP/2 over cleartext TCP ("h2c" with prior knowledge,
    /// RFC 9113 §3.3) on the same port: a connection that opens with the
    /// HTTP/2 preface is served as HTTP/2, any other as HTTP/1.1, as
    /// before. One HTTP/2 connection carries a fallback client's stream or
    /// held poll and its sends together, and a proxy that speaks h2c to
    /// its upstream can carry many clients on one connection. Browsers
    /// never speak h2c (they use HTTP/2 only over TLS, negotiated with
    /// ALPN), and WebSocket stays on HTTP/1.1. Memory: hyper's HTTP/2
    /// connection holds about 28 KiB of buffers of its own, so one h2c
    /// connection per client saves only about 3 KiB per idle fallback
    /// session against an HTTP/1.1 stream plus a kept-alive send
    /// connection; behind a proxy that multiplexes 50 clients on one h2c
    /// connection an idle fallback session costs about 8 KiB, against
    /// about 17 KiB over HTTP/1.1 (see BENCHMARKS.md). Each HTTP/2
    /// connection takes at most 100 requests at once, holds at most 64 KiB
    /// of unread body per request and 256 KiB in all, and is closed once
    /// no request has been in flight on it for `header_read_timeout`.
    /// Needs the `http2` feature. Default `false`.
    #[cfg(feature = "http2")]
    pub http2_cleartext: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            max_request_head_bytes: 64 * 1024,
            #[cfg(feature = "http2")]
            http2_cleartext: false,
        }
    }
}

/// Serves `router` on `listener` with holdfast's safe defaults: every
/// connection gets `TCP_NODELAY` (realtime writes are small and must not
/// wait for Nagle's algorithm), hyper's header read timeout, a write-stall
/// deadline and a place under a connection limit ([`ServeConfig`]);
/// WebSocket upgrades work; each request carries the client's address as
/// [`ConnectInfo<SocketAddr>`](ConnectInfo) in its extensions. HTTP/1.1,
/// and with the `http2` feature optionally HTTP/2 in cleartext too
/// (`ServeConfig::http2_cleartext`).
///
/// Like `axum::serve`, it runs until the process stops, unless given a
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) signal.
///
/// Not covered here: a deadline on the request bodies of your own routes
/// (hyper has none; add `tower_http::timeout::RequestBodyTimeoutLayer` to
/// them — holdfast's `send` endpoint has
/// [`ServerConfig::body_timeout`](crate::ServerConfig::body_timeout)), and
/// TLS (terminate it in a reverse proxy in front).
///
/// ```no_run
/// use holdfast_server::Holdfast;
///
/// # async fn run(stop: tokio::sync::oneshot::Receiver<()>) -> std::io::Result<()> {
/// let (holdfast, _incoming) = Holdfast::builder().build();
/// let app = axum::Router::new().nest("/realtime", holdfast.router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// holdfast_server::serve(listener, app)
///     .max_connections(20_000)
///     .with_graceful_shutdown(async move {
///         let _ = stop.await; // e.g. tokio::signal::ctrl_c()
///         holdfast.shutdown();
///     })
///     .await
/// # }
/// ```
pub fn serve(listener: TcpListener, router: Router) -> Serve {
    Serve {
        listener,
        router,
        config: ServeConfig::default(),
        signal: None,
    }
}

/// A server being set up by [`serve`]; `.await` it to run it.
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    router: Router,
    config: ServeConfig,
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl fmt::Debug for Serve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .field("graceful_shutdown", &self.signal.is_some())
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Uses all of these settings.
    pub fn config(mut self, config: ServeConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets [`ServeConfig::header_read_timeout`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// Sets [`ServeConfig::write_timeout`].
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// Sets [`ServeConfig::max_request_head_bytes`] (at least 8 KiB).
    pub fn max_request_head_bytes(mut self, max: usize) -> Self {
        self.config.max_request_head_bytes = max;
        self
    }

    /// Sets [`ServeConfig::max_connections`] (at least 1).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Shuts down gracefully once `signal` completes: stops accepting,
    /// lets each connection finish the request it is serving (idle ones
    /// close at once), and resolves when they are all done. Call
    /// [`Holdfast::shutdown`](crate::Holdfast::shutdown) in the signal so
    /// that long-lived streams end too.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    async fn run(self) {
        let Self {
            listener,
            router,
            config,
            signal,
        } = self;
        let mut signal = signal.unwrap_or_else(|| Box::pin(std::future::pending()));
        let slots = Arc::new(Semaphore::new(
            config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        // `true` tells connections to shut down; dropping the sender (the
        // server future dropped) does too.
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Each connection task holds a receiver: when none is left, all
        // are done.
        let (done, done_rx) = watch::channel(());
        let http = Arc::new(Protocols::new(&config));

        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener, &slots) => accepted,
                () = &mut signal => break,
            };
            let (tcp, remote, slot) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tokio::select! {
                        () = accept_error(error) => continue,
                        () = &mut signal => break,
                    }
                }
            };
            let connection = Connection::new(tcp, config.write_timeout, slot);
            tokio::spawn(serve_connection(
                http.clone(),
                connection,
                remote,
                router.clone(),
                shutdown_rx.clone(),
                done_rx.clone(),
            ));
        }

        drop(listener);
        let _ = shutdown.send(true);
        drop(done_rx);
        tracing::debug!(
            connections = done.receiver_count(),
            "shutting down: waiting for connections to finish"
        );
        done.closed().await;
    }
}

/// What [`Serve`] resolves to. It never fails: accept errors are logged
/// and retried.
pub struct ServeFuture(Pin<Box<dyn Future<Output = io::Result<()>> + Send>>);

impl Future for ServeFuture {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture(Box::pin(async move {
            self.run().await;
            Ok(())
        }))
    }
}

/// Waits for a free slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| io::Error::other("connection limit closed"))?;
    let (tcp, remote) = listener.accept().await?;
    Ok((tcp, remote, slot))
}

/// After an accept error: a connection that failed before it was accepted
/// is nothing to wait for; anything else (out of file descriptors, most
/// likely) gets a pause so the loop does not spin.
async fn accept_error(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// hyper's connection builders, set up once from the [`ServeConfig`].
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    /// Set when [`ServeConfig::http2_cleartext`] is.
    #[cfg(feature = "http2")]
    http2: Option<hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>>,
    #[cfg(feature = "http2")]
    header_read_timeout: Duration,
}

impl Protocols {
    fn new(config: &ServeConfig) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(config.max_request_head_bytes.max(8192));
        Self {
            http1,
            #[cfg(feature = "http2")]
            http2: config.http2_cleartext.then(|| h2c::builder(config)),
            #[cfg(feature = "http2")]
            header_read_timeout: config.header_read_timeout,
        }
    }
}

/// Serves one connection until it ends, or until a graceful shutdown lets
/// its current request finish.
async fn serve_connection(
    protocols: Arc<Protocols>,
    #[allow(unused_mut)] // Without the `http2` feature, nothing is read here.
    mut connection: Connection,
    remote: SocketAddr,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(remote));
        router.clone().oneshot(request)
    });
    #[cfg(feature = "http2")]
    if let Some(http2) = &protocols.http2 {
        // Like hyper's header read timeout: a client that sends nothing
        // is not waited for.
        // Boxed, as it is over before the connection is served: inline,
        // it would add to the size of every connection's task.
        let sniffing = Box::pin(tokio::time::timeout(
            protocols.header_read_timeout,
            h2c::sniff(&mut connection),
        ));
        let sniffed = tokio::select! {
            sniffed = sniffing => sniffed,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match sniffed {
            Ok(Ok(true)) => {
                // hyper's HTTP/2 server has no idle deadline of its own.
                use hyper::service::Service as _;
                let streams = h2c::Streams::new();
                let service = {
                    let streams = streams.clone();
                    hyper::service::service_fn(move |request| {
                        let in_flight = streams.start();
                        let response = service.call(request);
                        async move {
                            let response = response.await?;
                            Ok::<_, std::convert::Infallible>(
                                response.map(|body| in_flight.hold(body)),
                            )
                        }
                    })
                };
                // Boxed: held inline, HTTP/2's connection state would
                // make every HTTP/1.1 connection's task as big.
                let mut conn = Box::pin(http2.serve_connection(TokioIo::new(connection), service));
                tokio::select! {
                    () = drive(conn.as_mut(), &mut shutdown, |conn| conn.graceful_shutdown()) => return,
                    () = streams.idle(protocols.header_read_timeout) => {
                        tracing::debug!("HTTP/2 connection idle past the header read timeout");
                    }
                }
                conn.as_mut().graceful_shutdown();
                finished(conn.await);
                return;
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection ended before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!("no request on a new connection before the header read timeout");
                return;
            }
        }
    }
    // Pinned here and lent to `drive`: moved into it, the connection's
    // state would take its room twice in this task.
    let conn = pin!(
        protocols
            .http1
            .serve_connection(TokioIo::new(connection), service)
            .with_upgrades()
    );
    drive(conn, &mut shutdown, |conn| conn.graceful_shutdown()).await;
}

/// Runs a hyper connection to its end, or — told to shut down — lets it
/// finish its current requests.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    shutdown: &mut watch::Receiver<bool>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::select! {
        result = conn.as_mut() => {
            finished(result);
            return;
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    graceful_shutdown(conn.as_mut());
    finished(conn.await);
}

fn finished(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        // Timeouts, resets, malformed requests: per-connection events.
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// A client's TCP connection: writes under the stall deadline, and one of
/// the [`ServeConfig::max_connections`] slots held for as long as the
/// socket lives — also after a WebSocket upgrade, which takes it away from
/// hyper.
struct Connection {
    io: WriteDeadline<TcpStream>,
    /// Bytes read to tell HTTP/2 from HTTP/1.1, given back to hyper
    /// before anything else is read (boxed: most connections never have
    /// any, or only for their first read).
    #[cfg(feature = "http2")]
    replay: Option<Box<[u8]>>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    fn new(tcp: TcpStream, write_timeout: Duration, slot: OwnedSemaphorePermit) -> Self {
        // Realtime writes are small: do not let Nagle's algorithm hold
        // them back waiting for an ACK.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        Self {
            io: WriteDeadline::new(tcp, write_timeout),
            #[cfg(feature = "http2")]
            replay: None,
            _slot: slot,
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        #[cfg(feature = "http2")]
        if let Some(replay) = &mut self.replay
            && buf.remaining() > 0
        {
            let n = replay.len().min(buf.remaining());
            buf.put_slice(&replay[..n]);
            self.replay = (n < replay.len()).then(|| replay[n..].into());
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
