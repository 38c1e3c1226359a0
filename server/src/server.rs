//! The server: its builder, its router, and the stream of new sessions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::routing::{get, post};
use holdfast_protocol::{Close, CloseCode, ConfigError};
use http::Extensions;
use tokio::sync::mpsc;

use crate::auth::{AuthHook, OpenRequest, Refusal};
use crate::config::ServerConfig;
use crate::origin::OriginPolicy;
use crate::registry::Registry;
use crate::session::{Session, now};
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
    pub(crate) origins: OriginPolicy,
    pub(crate) auth: Option<AuthHook>,
    sink: SessionSink,
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
    /// choice: `/ws`, `/sse`, `/poll` and `/send` under it, and the
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
        let path = |name: &str| format!("{mount}/{name}");
        let http_routes = Router::new()
            .route(&path("client.js"), get(crate::client_js::latest))
            .route(
                &path(crate::client_js::VERSIONED_NAME),
                get(crate::client_js::versioned),
            )
            .route(&path("sse"), get(transport::sse::handle))
            .route(&path("poll"), get(transport::poll::handle))
            .route(&path("send"), post(transport::send::handle));
        let http_routes = match self.state.origins.cors_layer() {
            Some(cors) => http_routes.layer(cors),
            None => http_routes,
        };
        Router::new()
            .route(&path("ws"), get(transport::ws::handle))
            .merge(http_routes)
            .with_state(self.state.clone())
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

    /// Closes every session with 1001 (going away), for a graceful
    /// shutdown: clients get their pending messages, then `close`.
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
}

impl Builder {
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

    /// Authenticates the request that opens each session (resumes are
    /// authenticated by the session key). Return the identity to attach to
    /// the session, readable with [`Session::extensions`], or a refusal.
    ///
    /// ```
    /// use holdfast_server::{Holdfast, Refusal};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// let (holdfast, incoming) = Holdfast::builder()
    ///     .auth(|request| async move {
    ///         let user = request.cookie("user").ok_or_else(|| Refusal::unauthorized("log in first"))?;
    ///         let mut identity = http::Extensions::new();
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

    fn finish(self, sink: SessionSink) -> Holdfast {
        Holdfast {
            state: Arc::new(ServerState {
                config: self.config,
                registry: Registry::default(),
                buffered: AtomicUsize::new(0),
                origins: self.origins,
                auth: self.auth,
                sink,
            }),
        }
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
