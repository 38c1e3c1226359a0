//! The server: its builder, its router, and the stream of new sessions.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::routing::{get, post};
use holdfast_protocol::{Close, CloseCode, ConfigError};
use http::{Extensions, HeaderMap, header};
use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::admission::Admission;
use crate::auth::{AuthHook, OpenRequest, Refusal};
use crate::cluster::{Cluster, Routing};
use crate::config::ServerConfig;
use crate::load::Lag;
use crate::origin::{OriginPolicy, Served};
use crate::peer::{Forwarded, Peer, ProxyHeaders, TrustedProxies};
use crate::registry::Registry;
use crate::reject::Reject;
use crate::session::{Session, now};
use crate::store::{MemoryTopics, Store};
use crate::topic::{Topic, TopicError, Topics};
use crate::transport;

/// A holdfast server: mount [`router`](Self::router) into an axum app, take
/// sessions from the [`Incoming`] stream (or a handler). Cheap to clone.
///
/// ```no_run
/// use holdfast_server::Holdfast;
///
/// # async fn run() -> std::io::Result<()> {
/// let (holdfast, mut incoming) = Holdfast::builder().build();
/// tokio::spawn(async move {
///     while let Some(session) = incoming.accept().await {
///         tokio::spawn(async move {
///             while let Some(message) = session.recv().await {
///                 if session.send(message).await.is_err() {
///                     break;
///                 }
///             }
///         });
///     }
/// });
/// let app = axum::Router::new().nest("/realtime", holdfast.router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// // `axum::serve` plus TCP_NODELAY, header and write deadlines and a
/// // connection limit.
/// holdfast_server::serve(listener, app).await
/// # }
/// ```
#[derive(Clone)]
pub struct Holdfast {
    state: Arc<ServerState>,
}

/// What the transports share.
pub(crate) struct ServerState {
    pub(crate) config: ServerConfig,
    pub(crate) registry: Registry,
    /// Bytes buffered across all sessions.
    pub(crate) buffered: AtomicUsize,
    /// The metric handles the sessions and transports count with.
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) origins: OriginPolicy,
    pub(crate) auth: Option<AuthHook>,
    /// Per-address limit on opening sessions.
    pub(crate) admission: Admission,
    /// The runtime's scheduling lag, which refuses new sessions past
    /// `open_lag_limit`.
    pub(crate) lag: Arc<Lag>,
    /// Reverse proxies whose forwarded headers are believed.
    proxies: TrustedProxies,
    /// Clients reach the server over https (TLS terminated in front).
    https: bool,
    /// Whether the missing connect info was reported.
    warned_no_peer: AtomicBool,
    /// Whether forwarded headers from an untrusted peer were reported.
    warned_untrusted_proxy: AtomicBool,
    sink: SessionSink,
    /// With a store: this node's part in the cluster.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The topics this node uses (started by the first one).
    topics: std::sync::OnceLock<Arc<Topics>>,
}

type Handler = Arc<dyn Fn(Session) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Where new sessions go.
enum SessionSink {
    Channel(mpsc::Sender<Session>),
    Handler(Handler),
}

/// Why a new session could not be handed to the application.
pub(crate) enum HandOffError {
    /// [`Incoming`] is full or gone.
    NotAccepting,
}

impl ServerState {
    /// The topic named `name` on this node (see [`Holdfast::topic`]).
    pub(crate) fn topic(&self, name: &str) -> Result<Topic, TopicError> {
        self.topics
            .get_or_init(|| {
                let broker = match &self.cluster {
                    Some(cluster) => cluster.store.broker(),
                    None => MemoryTopics::new(self.config.topic_history).node("local"),
                };
                Topics::start(broker, self.config.session.max_message)
            })
            .topic(name)
    }

    /// Checks the request's `Origin` against the policy.
    pub(crate) fn check_origin(&self, headers: &HeaderMap, peer: Peer) -> Result<(), Reject> {
        self.origins.check(headers, || {
            let (proto, forwarded_host) = match self.forwarded(headers, peer) {
                Some(forwarded) => (forwarded.proto, forwarded.host),
                None => (None, None),
            };
            let https = match proto.map(|p| p.to_ascii_lowercase()).as_deref() {
                Some("https" | "wss") => true,
                Some("http" | "ws") => false,
                _ => self.https,
            };
            Served {
                https,
                host: headers.get(header::HOST).and_then(|v| v.to_str().ok()),
                forwarded_host,
            }
        })
    }

    /// The client's address: the TCP peer's, or behind a trusted proxy the
    /// one it forwarded. `None` without connect info.
    pub(crate) fn client_addr(&self, headers: &HeaderMap, peer: Peer) -> Option<IpAddr> {
        let Some(addr) = peer.0 else {
            self.warn_no_peer();
            return None;
        };
        Some(match self.proxies.forwarded(addr.ip(), headers) {
            Some(forwarded) => forwarded.client,
            None => {
                self.warn_untrusted_forwarding(addr.ip(), headers);
                addr.ip()
            }
        })
    }

    /// Says once that a peer not declared a proxy forwards clients: they
    /// all share its open-rate bucket (or a client is forging headers).
    fn warn_untrusted_forwarding(&self, peer: IpAddr, headers: &HeaderMap) {
        let forwards =
            headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED);
        if forwards && !self.warned_untrusted_proxy.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %peer,
                "a request carries X-Forwarded-For or Forwarded from an address that is not a \
                 trusted proxy: if it is your reverse proxy, declare it with \
                 `Builder::trusted_proxies`, or all its clients share one limit on opening \
                 sessions (logged once)"
            );
        }
    }

    /// What a trusted proxy forwarded, if the request came from one.
    fn forwarded(&self, headers: &HeaderMap, peer: Peer) -> Option<Forwarded> {
        if self.proxies.is_empty() {
            return None;
        }
        let Some(addr) = peer.0 else {
            self.warn_no_peer();
            return None;
        };
        self.proxies.forwarded(addr.ip(), headers)
    }

    fn warn_no_peer(&self) {
        if self.config.open_rate_limit.is_none() && self.proxies.is_empty() {
            return;
        }
        if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "requests carry no client address (serve with `holdfast::server::serve` or \
                 `into_make_service_with_connect_info::<SocketAddr>()`): there is no \
                 per-address limit on opening sessions, and forwarded headers are ignored"
            );
        }
    }

    /// Gives a new session to the application.
    pub(crate) fn hand_off(&self, session: Session) -> Result<(), HandOffError> {
        match &self.sink {
            SessionSink::Channel(tx) => {
                tx.try_send(session).map_err(|_| HandOffError::NotAccepting)
            }
            SessionSink::Handler(handler) => {
                tokio::spawn(handler(session));
                Ok(())
            }
        }
    }
}

impl Holdfast {
    /// A builder with the default configuration.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The routes to mount (with [`Router::nest`]) at the path of your
    /// choice: `/ws`, `/sse`, `/poll` and `/send` under it (and `POST` on
    /// `/sse` and `/poll`: shared requests, `PROTOCOL.md` §11, unless
    /// [`SessionConfig::max_shared_sessions`](holdfast_protocol::SessionConfig::max_shared_sessions)
    /// is 0), and the
    /// JavaScript client at `/client.js` (revalidated on each load) and
    /// `/client-<version>.js` (immutable). They compose
    /// with any tower layer (tracing, auth, …); do not wrap them in a
    /// compression layer that buffers `text/event-stream`.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.routes("")
    }

    /// The same routes with `mount` (e.g. `"/realtime"`) already in their
    /// paths, to [`merge`](Router::merge) rather than nest: it spares every
    /// request the prefix stripping that nesting does.
    ///
    /// ```
    /// # let (holdfast, _incoming) = holdfast_server::Holdfast::builder().build();
    /// let app: axum::Router = axum::Router::new().merge(holdfast.router_at("/realtime"));
    /// ```
    pub fn router_at<S>(&self, mount: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.routes(mount.trim_end_matches('/'))
    }

    fn routes<S>(&self, mount: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let endpoints = self.endpoints(mount);
        if self.state.cluster.is_none() {
            return endpoints;
        }
        // Sessions may live on other nodes: find them first.
        let routing = Routing {
            state: self.state.clone(),
            mount: mount.into(),
        };
        endpoints.layer(axum::middleware::from_fn_with_state(
            routing,
            crate::cluster::route,
        ))
    }

    /// The endpoints under `mount`, as one node serves them.
    ///
    /// The session endpoints sit behind one Origin layer
    /// ([`OriginLayer`](crate::origin::OriginLayer)): each request is
    /// checked there once, before its handler runs. The JavaScript client
    /// is not: any page may load the script (the requests it then makes
    /// are checked). CORS, when cross-origin pages are allowed, wraps the
    /// HTTP endpoints outside the Origin layer, so a refusal carries the
    /// same CORS headers as any other answer.
    fn endpoints<S>(&self, mount: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let path = |name: &str| format!("{mount}/{name}");
        let origin_checked = crate::origin::OriginLayer::new(self.state.clone());
        let http_sessions = Router::new().route(&path("send"), post(transport::send::handle));
        // Shared requests (PROTOCOL.md §11): `POST` on the same paths.
        // Turned off, they are not routed, and axum answers `405`.
        let http_sessions = if self.state.config.session.max_shared_sessions > 0 {
            http_sessions
                .route(
                    &path("sse"),
                    get(transport::sse::handle).post(transport::shared::sse::handle),
                )
                .route(
                    &path("poll"),
                    get(transport::poll::handle).post(transport::shared::poll::handle),
                )
        } else {
            http_sessions
                .route(&path("sse"), get(transport::sse::handle))
                .route(&path("poll"), get(transport::poll::handle))
        };
        let http_routes = http_sessions
            .layer(origin_checked.clone())
            .route(&path("client.js"), get(crate::client_js::latest))
            .route(
                &path(crate::client_js::VERSIONED_NAME),
                get(crate::client_js::versioned),
            );
        let http_routes = match self.state.origins.cors_layer() {
            Some(cors) => http_routes.layer(cors),
            None => http_routes,
        };
        // WebSocket has no CORS: browsers do not apply it to upgrades.
        let ws = Router::new()
            .route(&path("ws"), get(transport::ws::handle))
            .layer(origin_checked);
        ws.merge(http_routes).with_state(self.state.clone())
    }

    /// The topic named `name`: publish to it, subscribe sessions to it,
    /// follow who is subscribed. One topic, with one order, across every
    /// node sharing the [store](Builder::store); this process alone
    /// without one. Names are 1 to 200 bytes of printable ASCII without
    /// `{` or `}`. Call it inside a Tokio runtime (the first call starts
    /// the task that delivers topics on this node).
    pub fn topic(&self, name: &str) -> Result<Topic, TopicError> {
        self.state.topic(name)
    }

    /// Open sessions now (what `max_sessions` limits).
    pub fn session_count(&self) -> usize {
        self.state.registry.open()
    }

    /// Sessions held now: the open ones and the closed ones still
    /// resumable for the resume window.
    pub fn held_sessions(&self) -> usize {
        self.state.registry.held()
    }

    /// Client addresses the per-address limit on opening sessions tracks
    /// now (at most
    /// [`OpenRateLimit::max_clients`](crate::OpenRateLimit::max_clients)).
    pub fn tracked_client_addresses(&self) -> usize {
        self.state.admission.tracked()
    }

    /// How late the runtime last ran the server's lag probe, which sleeps
    /// 100 ms at a time: about how long work that is ready waits for a
    /// worker. Past
    /// [`ServerConfig::open_lag_limit`](crate::ServerConfig::open_lag_limit)
    /// for two probes in a row, new sessions are refused. Zero without
    /// that limit (no probe runs) and before the first probe.
    pub fn scheduling_lag(&self) -> std::time::Duration {
        self.state.lag.latest()
    }

    /// Bytes buffered across all sessions now, as the limits count them:
    /// each queued message (replay buffers and received-but-unread
    /// messages) at its payload plus
    /// [`MESSAGE_OVERHEAD`](holdfast_protocol::MESSAGE_OVERHEAD).
    pub fn buffered_bytes(&self) -> usize {
        self.state.buffered.load(Ordering::Relaxed)
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.state.config
    }

    /// Hands this node's sessions over to the other nodes, for a rolling
    /// deploy that loses nothing (with a [store](Builder::store)): the
    /// node stops taking new sessions, stores what each session holds,
    /// releases it, and tells its client to reconnect at once (`detach`
    /// 4000), landing on another node that continues it; the handlers
    /// here end ([`SessionEnd::moved`](crate::SessionEnd::moved)). Call it
    /// on SIGTERM, before the HTTP server's graceful shutdown. Without a
    /// store there is nowhere to hand sessions to: the same as
    /// [`shutdown`](Self::shutdown).
    pub async fn hand_over(&self) {
        match &self.state.cluster {
            Some(cluster) => cluster.hand_over(&self.state).await,
            None => self.shutdown(),
        }
    }

    /// Closes every session with 1001 (going away), for a graceful
    /// shutdown: clients get their pending messages, then `close`. With a
    /// store, this ends the sessions for good: see
    /// [`hand_over`](Self::hand_over) to keep them.
    pub fn shutdown(&self) {
        let now = now();
        for shared in self.state.registry.all() {
            shared.lock().close(
                now,
                Close::new(CloseCode::GOING_AWAY, "server shutting down"),
            );
        }
    }
}

/// Builds a [`Holdfast`] server.
#[derive(Default)]
pub struct Builder {
    config: ServerConfig,
    origins: OriginPolicy,
    auth: Option<AuthHook>,
    proxies: Vec<IpNet>,
    proxy_headers: ProxyHeaders,
    https: bool,
    store: Option<Arc<dyn Store>>,
}

impl Builder {
    /// Keeps sessions in `store` (e.g. `holdfast_redis::RedisStore`), so
    /// that several nodes serve one app: any node serves any request of
    /// any session, and a node's death or shutdown loses nothing (see
    /// `docs/scaling.md`). Without a store, sessions live in this node's
    /// memory only.
    ///
    /// The server must then be built inside a tokio runtime: it starts the
    /// node's background tasks (the bus between nodes, the refresh of the
    /// sessions it holds). Shared requests (`PROTOCOL.md` §11) are not
    /// served with a store yet: browsers' tabs fall back to one
    /// connection each.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this configuration.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Allows pages from these origins (`scheme://host[:port]`), with CORS
    /// credentials. Without this, only same-origin pages are allowed.
    pub fn allow_origins<I, O>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = O>,
        O: Into<String>,
    {
        self.origins = OriginPolicy::List(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Allows pages from any origin (CORS without credentials).
    pub fn allow_any_origin(mut self) -> Self {
        self.origins = OriginPolicy::Any;
        self
    }

    /// Sets the origin policy.
    pub fn origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origins = policy;
        self
    }

    /// Authenticates the requests of each session: the one that opens it,
    /// and every later one that names it (each resume on any transport,
    /// each poll, each send, each probe — [`OpenRequest::kind`] says
    /// which). Return the identity to attach to the session, readable with
    /// [`Session::extensions`], or a refusal (`401` / close 4401 and the
    /// like).
    ///
    /// **Put an [`Identity`](crate::Identity) in what you return**: it
    /// binds the session. A later request whose credentials yield another
    /// `Identity`, or none, is refused with `401` (close 4401) before it
    /// touches the session (no attachment, no acknowledgement, no data),
    /// and the session lives on for its owner: the session key alone no
    /// longer resumes a session. An open accepted without an `Identity` is
    /// refused with `500` (close 1011) and an error in the log, as there
    /// would be nothing to bind the session to.
    ///
    /// The hook runs on every poll and send: keep it cheap (check a signed
    /// cookie or token, cache lookups), and do the expensive part only for
    /// [`RequestKind::Open`](crate::RequestKind::Open). Credentials must
    /// come with every request (cookies do; the Rust client sends the
    /// headers given to `ClientBuilder::header` on every request).
    ///
    /// ```
    /// use holdfast_server::{Holdfast, Identity, Refusal};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// let (holdfast, incoming) = Holdfast::builder()
    ///     .auth(|request| async move {
    ///         let user = request.cookie("user").ok_or_else(|| Refusal::unauthorized("log in first"))?;
    ///         let mut identity = http::Extensions::new();
    ///         identity.insert(Identity::new(user.clone()));
    ///         identity.insert(User(user));
    ///         Ok(identity)
    ///     })
    ///     .build();
    /// ```
    pub fn auth<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(OpenRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Extensions, Refusal>> + Send + 'static,
    {
        self.auth = Some(AuthHook::new(hook));
        self
    }

    /// Declares the reverse proxies in front of the server: networks such
    /// as `"10.0.0.0/8".parse::<IpNet>()`, one address as `/32` (or `/128`)
    /// or from an [`IpAddr`]. A request whose
    /// TCP peer is one of them is taken at the proxies' word
    /// ([`ProxyHeaders`] says which headers; `X-Forwarded-*` by default):
    ///
    /// - the client's address, for
    ///   [`ServerConfig::open_rate_limit`](crate::ServerConfig::open_rate_limit),
    ///   is the rightmost forwarded address that is not a trusted proxy
    ///   (what the client wrote itself is further left and never counts);
    /// - the `Origin` check compares with the forwarded host and scheme
    ///   (`X-Forwarded-Host`, `X-Forwarded-Proto`), as well as `Host`.
    ///
    /// Without this (the default), forwarded headers mean nothing: any
    /// client can write them. It needs the TCP peer's address (serve with
    /// `holdfast::server::serve`, or axum's
    /// `into_make_service_with_connect_info::<SocketAddr>()`); without it
    /// nothing is trusted. Your proxy must set (not pass through)
    /// `X-Forwarded-Host` and `X-Forwarded-Proto` if it sets them at all.
    ///
    /// ```
    /// use holdfast_server::{Holdfast, IpNet};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (holdfast, incoming) = Holdfast::builder()
    ///     .trusted_proxies(["127.0.0.1/32".parse::<IpNet>()?, "10.0.0.0/8".parse()?])
    ///     .build();
    /// # Ok(()) }
    /// ```
    pub fn trusted_proxies<I, N>(mut self, proxies: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<IpNet>,
    {
        self.proxies = proxies.into_iter().map(Into::into).collect();
        self
    }

    /// Which headers the [trusted proxies](Self::trusted_proxies) write:
    /// `X-Forwarded-*` (the default) or RFC 7239's `Forwarded`. Only that
    /// kind is read.
    pub fn proxy_headers(mut self, headers: ProxyHeaders) -> Self {
        self.proxy_headers = headers;
        self
    }

    /// Says that clients reach the server over `https` (TLS terminated by
    /// a proxy or load balancer in front, or by your own listener): the
    /// same-origin check then wants `https://` pages. Without it the
    /// server takes itself to be `http`, unless a
    /// [trusted proxy](Self::trusted_proxies) forwards the scheme.
    pub fn served_over_https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Builds the server and the stream of its new sessions.
    ///
    /// # Panics
    ///
    /// If the configuration is invalid; [`try_build`](Self::try_build)
    /// returns the error instead.
    pub fn build(self) -> (Holdfast, Incoming) {
        match self.try_build() {
            Ok(built) => built,
            Err(error) => panic!("{error}"),
        }
    }

    /// Builds the server and the stream of its new sessions, or says why
    /// the configuration is invalid.
    pub fn try_build(self) -> Result<(Holdfast, Incoming), ConfigError> {
        self.config.validate()?;
        let (tx, rx) = mpsc::channel(self.config.accept_backlog);
        Ok((self.finish(SessionSink::Channel(tx)), Incoming { rx }))
    }

    /// Builds a server that runs `handler` (in a new task) for each new
    /// session.
    ///
    /// # Panics
    ///
    /// If the configuration is invalid.
    pub fn on_session<F, Fut>(self, handler: F) -> Holdfast
    where
        F: Fn(Session) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Err(error) = self.config.validate() {
            panic!("{error}");
        }
        self.finish(SessionSink::Handler(Arc::new(move |session| {
            Box::pin(handler(session))
        })))
    }

    fn finish(mut self, sink: SessionSink) -> Holdfast {
        if self.store.is_some() {
            // Not carried between nodes yet: `open` announces no `mux`,
            // and browsers' tabs connect one by one.
            self.config.session.max_shared_sessions = 0;
        }
        let cluster = self.store.map(Cluster::new);
        let holdfast = Holdfast {
            state: Arc::new(ServerState {
                cluster: cluster.clone(),
                topics: std::sync::OnceLock::new(),
                admission: Admission::new(self.config.open_rate_limit.clone()),
                lag: Arc::new(Lag::new(self.config.open_lag_limit, now())),
                config: self.config,
                registry: Registry::default(),
                buffered: AtomicUsize::new(0),
                metrics: crate::metrics::Metrics::new(),
                origins: self.origins,
                auth: self.auth,
                proxies: TrustedProxies::new(self.proxies, self.proxy_headers),
                https: self.https,
                warned_no_peer: AtomicBool::new(false),
                warned_untrusted_proxy: AtomicBool::new(false),
                sink,
            }),
        };
        // Built outside a runtime, the probe starts with the first new
        // session instead.
        holdfast.state.lag.start();
        if let Some(cluster) = cluster {
            cluster.start(Arc::downgrade(&holdfast.state), holdfast.routes(""));
        }
        holdfast
    }
}

/// New sessions, in the order they opened. Also a
/// [`Stream`](futures_util::Stream).
pub struct Incoming {
    rx: mpsc::Receiver<Session>,
}

impl Incoming {
    /// The next new session; `None` once every [`Holdfast`] clone (and so
    /// the router) is gone.
    pub async fn accept(&mut self) -> Option<Session> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Incoming {
    type Item = Session;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Session>> {
        self.rx.poll_recv(cx)
    }
}
