//! Several nodes, one app: sessions kept in a [`Store`], any node serving
//! any request (see the [store module](crate::store) for the model).
//!
//! - [`Cluster::create`] records a new session in the store before its
//!   client hears of it (the `open` greeting carries the key that names it
//!   on every node).
//! - [`route`] runs before every endpoint that names a session: the
//!   session is here (serve it), owned by another live node (carry the
//!   request there through a [`tunnel`]), or owned by nobody alive (claim
//!   it, rebuild it here and start the application's handler with
//!   [`Session::continued`](crate::Session::continued)).
//! - Background tasks: the bus reader, the server of tunnels other nodes
//!   open to this one, the watch on nodes at the far end of tunnels, and
//!   the refresh of the store's expiry for the sessions held here.
//! - [`Cluster::hand_over`]: a graceful shutdown that loses nothing.

pub(crate) mod forward;
pub(crate) mod tunnel;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use holdfast_protocol::{Close, CloseCode, Initiator, Restore, ServerSession, SessionIdentity};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue};

use crate::auth::Identity;
use crate::reject::Reject;
use crate::server::{HandOffError, ServerState};
use crate::session::{Durable, Session, Shared, Stored, now};
use crate::store::{BusEvent, NewSession, Owner, Snapshot, Store, StoreError, StoredClose, tag};
use crate::transport::{ConnectQuery, overloaded};

/// A node's part in a cluster.
pub(crate) struct Cluster {
    pub(crate) store: Arc<dyn Store>,
    tunnels: Arc<tunnel::Tunnels>,
    /// The tunnels other nodes open to this one, until [`Self::start`]
    /// serves them.
    incoming: std::sync::Mutex<Option<tunnel::IncomingTunnels>>,
    /// Ends the serving of tunnels (the node left the cluster).
    stopped: tokio::sync::watch::Sender<bool>,
    /// One claim at a time on this node: two requests for the same
    /// session arriving together must not both rebuild it.
    claiming: tokio::sync::Mutex<()>,
    /// Shutting down: no new sessions, no claims.
    draining: AtomicBool,
    /// The server, once started.
    state: std::sync::OnceLock<Weak<ServerState>>,
}

/// Where a request's session is.
pub(crate) enum Found {
    /// On this node (perhaps just claimed), or nowhere: serve the request
    /// here (a session nowhere gets the usual `410` / 4410).
    Here,
    /// Owned by this live node.
    At(String),
}

impl Cluster {
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let (tunnels, incoming) = tunnel::Tunnels::new(store.clone());
        Arc::new(Self {
            store,
            tunnels,
            incoming: std::sync::Mutex::new(Some(incoming)),
            stopped: tokio::sync::watch::channel(false).0,
            claiming: tokio::sync::Mutex::new(()),
            draining: AtomicBool::new(false),
            state: std::sync::OnceLock::new(),
        })
    }

    /// How long the store keeps a session nobody refreshes: its resume
    /// window (the owner refreshes open sessions, see [`Self::start`]).
    fn ttl(state: &ServerState) -> Duration {
        state.config.session.resume_window
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records a new session owned by this node; its client hears of it
    /// only after this.
    pub(crate) async fn create(
        &self,
        state: &Arc<ServerState>,
        mut core: ServerSession,
        headers: HeaderMap,
        extensions: Extensions,
    ) -> Result<Arc<Shared>, Reject> {
        if self.is_draining() {
            return Err(overloaded(state, "this node is shutting down"));
        }
        let headers = crate::session::kept_copy(&headers, state.config.max_kept_header_bytes);
        let record = NewSession {
            session_id: core.identity().session_id.clone(),
            identity: extensions
                .get::<Identity>()
                .map(|identity| identity.as_str().to_owned()),
            headers: headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
        };
        let tag = tag(&core.identity().key);
        let ttl = Self::ttl(state);
        let epoch = self
            .store
            .create(&tag, &record, ttl)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "session store");
                overloaded(state, "the session store is unavailable")
            })?;
        core.hold_until_confirmed();
        let durable = Durable::new(self.store.clone(), tag, epoch, ttl, false);
        Ok(Shared::with_store(
            core,
            headers,
            extensions,
            state.clone(),
            Some(durable),
            Stored::default(),
            Vec::new(),
        ))
    }

    /// Whether the store has the session named `key` (a store that cannot
    /// be asked is taken to have it: the client tries again).
    pub(crate) async fn knows(&self, key: &str) -> bool {
        !matches!(self.store.owner(&tag(key)).await, Ok(Owner::Unknown))
    }

    /// Where the session named `key` is, claiming it if its owner is gone.
    pub(crate) async fn find(&self, state: &Arc<ServerState>, key: &str) -> Result<Found, Reject> {
        if state.registry.get(key).is_some() {
            return Ok(Found::Here);
        }
        let tag = tag(key);
        // A claim that lost a race reads the owner again, once.
        for _ in 0..2 {
            let owner = self
                .store
                .owner(&tag)
                .await
                .map_err(|error| unavailable(state, &error))?;
            let alive = match &owner {
                Owner::Unknown => return Ok(Found::Here),
                Owner::Node { node, .. } if node == self.store.node_id() => false,
                Owner::Node { node, .. } => self
                    .store
                    .node_alive(node)
                    .await
                    .map_err(|error| unavailable(state, &error))?,
                Owner::Released { .. } => false,
            };
            if alive && let Owner::Node { node, .. } = owner {
                return Ok(Found::At(node));
            }
            if self.is_draining() {
                return Err(leaving());
            }
            match self.claim(state, key, &tag, &owner).await {
                Ok(()) => return Ok(Found::Here),
                Err(StoreError::Fenced) => continue,
                Err(StoreError::NotFound) => return Ok(Found::Here),
                Err(_) if self.is_draining() => return Err(leaving()),
                Err(error) => return Err(unavailable(state, &error)),
            }
        }
        Err(unavailable(
            state,
            &StoreError::Unavailable("the session changed owner twice while claiming it".into()),
        ))
    }

    /// Takes the session over from `owner` and starts its handler here.
    async fn claim(
        &self,
        state: &Arc<ServerState>,
        key: &str,
        tag: &str,
        owner: &Owner,
    ) -> Result<(), StoreError> {
        let _one_at_a_time = self.claiming.lock().await;
        if state.registry.get(key).is_some() {
            return Ok(());
        }
        if self.is_draining() {
            return Err(StoreError::Unavailable("this node is shutting down".into()));
        }
        if state.registry.open() >= state.config.max_sessions {
            return Err(StoreError::Unavailable(
                "this node holds too many sessions".into(),
            ));
        }
        let snapshot = self.store.claim(tag, owner, Self::ttl(state)).await?;
        if let Owner::Node { node, .. } = owner {
            // If it is alive after all (paused past its liveness key), it
            // must let go now: its attachment would serve a stale session.
            let lost = Lost {
                tag: tag.to_owned(),
                epoch: snapshot.epoch,
            };
            if let Err(error) = self.store.publish(node, lost.encode()).await {
                tracing::debug!(%error, "could not tell the last owner it lost a session");
            }
        }
        let epoch = snapshot.epoch;
        let shared = match restore(state, key, snapshot) {
            Ok(shared) => shared,
            Err(reason) => {
                // Corrupt: forget it (its client gets 4410), rather than
                // have every request claim it again.
                tracing::error!(reason, "a stored session could not be rebuilt");
                let _ = self.store.remove(tag, epoch).await;
                return Err(StoreError::NotFound);
            }
        };
        if state
            .registry
            .insert(shared.clone(), state.config.max_sessions)
            .is_err()
        {
            self.give_back(&shared).await;
            return Err(StoreError::Unavailable(
                "this node holds too many sessions".into(),
            ));
        }
        if let Err(HandOffError::NotAccepting) = state.hand_off(Session::new(shared.clone())) {
            state.registry.remove(&shared);
            self.give_back(&shared).await;
            return Err(StoreError::Unavailable(
                "the application is not accepting sessions".into(),
            ));
        }
        tracing::info!(session = %shared.session_id, "session taken over");
        tokio::spawn(shared.clone().drive_timers());
        tokio::spawn(shared.clone().write_to_store());
        Ok(())
    }

    /// Releases a session this node claimed but cannot serve.
    async fn give_back(&self, shared: &Shared) {
        if let Some(durable) = &shared.durable
            && let Err(error) = self.store.release(&durable.tag, durable.epoch).await
        {
            tracing::debug!(%error, "could not release a session");
        }
    }

    /// Starts the node's background tasks: reading the bus, serving the
    /// tunnels other nodes open to this one (with `router`: the endpoints
    /// without the mount prefix), watching the nodes at the far end of
    /// tunnels, and keeping the sessions held here from expiring in the
    /// store.
    pub(crate) fn start(self: &Arc<Self>, state: Weak<ServerState>, router: axum::Router) {
        let _ = self.state.set(state.clone());
        tokio::spawn(read_bus(Arc::downgrade(self), self.store.inbox()));
        let incoming = self
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(incoming) = incoming {
            let mut stopped = self.stopped.subscribe();
            let stop = async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            };
            tokio::spawn(forward::serve_tunnels(
                incoming,
                router,
                crate::ServeConfig::default(),
                stop,
            ));
        }
        tokio::spawn(watch_peers(Arc::downgrade(self)));
        tokio::spawn(keep_alive(Arc::downgrade(self), state));
    }

    /// Hands every session over for another node to continue: no new
    /// sessions or claims here; each session's state is stored, released,
    /// and its client told to reconnect at once (`detach` 4000), to
    /// whichever node; the application's handlers end
    /// ([`SessionEnd::moved`](crate::SessionEnd::moved)). Then the node
    /// leaves the cluster.
    pub(crate) async fn hand_over(&self, state: &ServerState) {
        self.draining.store(true, Ordering::Release);
        // A claim under way finishes first (and its session is handed
        // over with the others); later ones see the node draining.
        drop(self.claiming.lock().await);
        let sessions = state.registry.all();
        let handed = futures_util::future::join_all(
            sessions.iter().map(|shared| self.hand_over_one(shared)),
        )
        .await;
        let handed = handed.into_iter().filter(|handed| *handed).count();
        tracing::info!(sessions = handed, "sessions handed over");
        if let Err(error) = self.store.leave().await {
            tracing::warn!(%error, "could not leave the cluster cleanly");
        }
        // Requests other nodes carried here before they noticed finish;
        // no new ones are taken.
        self.stopped.send_replace(true);
        self.tunnels.reset_all();
    }

    async fn hand_over_one(&self, shared: &Arc<Shared>) -> bool {
        let Some(durable) = &shared.durable else {
            return false;
        };
        // Stored first: the writer stores whatever the core holds; wait
        // for it, with a deadline (a store down now loses nothing: the
        // session stays ours until its owner key expires, then is
        // claimed from what the store has).
        // The handler gets no more messages, and may finish the one it
        // is answering: its sends still go out.
        shared.start_hand_over();
        let deadline = tokio::time::Instant::now() + HAND_OVER_DEADLINE;
        loop {
            let notified = durable.stored.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if shared.settled() {
                break;
            }
            // Not settled: wait for the writer to store something, or check
            // again shortly (the handler's next step wakes nobody here).
            let step = tokio::time::Instant::now() + Duration::from_millis(20);
            if tokio::time::timeout_at(deadline.min(step), notified)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                break;
            }
        }
        shared.leave(Close::new(
            CloseCode::RECONNECT,
            "this node is shutting down, reconnect",
        ));
        match self.store.release(&durable.tag, durable.epoch).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(session = %shared.session_id, %error, "could not release a session");
                false
            }
        }
    }
}

/// How long a hand-over waits for a handler to finish the message it is
/// answering and for the store to hold everything.
const HAND_OVER_DEADLINE: Duration = Duration::from_secs(5);

/// A store failure as the client of a session sees it: `503` / `detach`
/// 4503, try again after `Retry-After` (the session lives).
fn unavailable(state: &ServerState, error: &StoreError) -> Reject {
    tracing::warn!(%error, "session store");
    retry_later(state, "the session store is unavailable")
}

/// This node is shutting down and hands its sessions over: `detach` 4000,
/// reconnect at once (another node serves the session).
fn leaving() -> Reject {
    Reject::Attachment(Close::new(
        CloseCode::RECONNECT,
        "this node is shutting down, reconnect",
    ))
}

/// `503` / `detach` 4503 with `Retry-After`: the session lives.
fn retry_later(state: &ServerState, reason: &'static str) -> Reject {
    Reject::Attachment(
        Close::new(CloseCode::OVERLOADED, reason).with_retry_after(state.config.retry_after),
    )
}

/// Rebuilds a session from its stored state.
fn restore(state: &Arc<ServerState>, key: &str, snapshot: Snapshot) -> Result<Arc<Shared>, String> {
    let Snapshot {
        session,
        epoch,
        opened: _,
        acked,
        outbound,
        received,
        inbound,
        progress,
        close,
        cursors,
    } = snapshot;
    let identity = SessionIdentity {
        key: key.to_owned(),
        session_id: session.session_id.clone(),
    };
    let closed = close.clone().map(
        |StoredClose {
             code,
             reason,
             by_client,
         }| {
            let initiator = if by_client {
                Initiator::Peer
            } else {
                Initiator::Local
            };
            (Close::new(CloseCode(code), reason), initiator)
        },
    );
    let core = ServerSession::restore(
        now(),
        state.config.session.clone(),
        identity,
        Restore {
            acked,
            outbound: outbound.into_iter().map(|(_, message)| message).collect(),
            received,
            inbound: inbound.into_iter().map(|(_, message)| message).collect(),
            closed,
        },
    )
    .map_err(|error| error.to_string())?;
    let mut headers = HeaderMap::new();
    for (name, value) in session.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    let mut extensions = Extensions::new();
    if let Some(identity) = session.identity {
        extensions.insert(Identity::new(identity));
    }
    let cluster = state.cluster.as_ref().ok_or("no cluster")?;
    let durable = Durable::new(
        cluster.store.clone(),
        tag(key),
        epoch,
        Cluster::ttl(state),
        true,
    );
    Ok(Shared::with_store(
        core,
        headers,
        extensions,
        state.clone(),
        Some(durable),
        Stored {
            acked,
            progress,
            closed: close.is_some(),
            cursors: 0,
        },
        cursors,
    ))
}

/// What [`route`] needs besides the server: the mount the endpoints are
/// under, stripped from a request carried to another node (whose tunnel
/// router serves them without it).
#[derive(Clone)]
pub(crate) struct Routing {
    pub(crate) state: Arc<ServerState>,
    pub(crate) mount: Arc<str>,
}

/// Runs before every endpoint: serves a request here, or carries it to
/// the node that owns its session.
pub(crate) async fn route(
    State(routing): State<Routing>,
    request: Request,
    next: Next,
) -> Response {
    let state = &routing.state;
    let Some(cluster) = &state.cluster else {
        return next.run(request).await;
    };
    let websocket = request.uri().path().ends_with("/ws");
    let key = ConnectQuery::read(request.headers(), request.uri().query(), websocket)
        .ok()
        .and_then(|query| query.key);
    let Some(key) = key else {
        // Opens a session here, or is refused here.
        return next.run(request).await;
    };
    let tunneled = request.extensions().get::<forward::Tunneled>().is_some();
    match cluster.find(state, &key).await {
        Ok(Found::Here) => next.run(request).await,
        Ok(Found::At(_)) if tunneled => {
            // Carried here by a node that took this one for the owner,
            // which it no longer is: never carried again — the client
            // tries again and is routed afresh.
            Reject::Attachment(
                Close::new(CloseCode::OVERLOADED, "the session just moved, try again")
                    .with_retry_after(Duration::ZERO),
            )
            .into_http()
            .into_response()
        }
        Ok(Found::At(node)) => {
            let client = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0);
            let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let path = target.strip_prefix(&*routing.mount).unwrap_or(target);
            match http::uri::PathAndQuery::try_from(path) {
                Ok(path) => forward::forward(&cluster.tunnels, &node, client, request, path).await,
                Err(_) => Reject::bad_request("malformed request target").into_http(),
            }
        }
        Err(reject) => reject.into_http().into_response(),
    }
}

/// Reads the bus: tunnels' frames, and word that a session this node held
/// was claimed by another.
async fn read_bus(cluster: Weak<Cluster>, mut inbox: tokio::sync::mpsc::Receiver<BusEvent>) {
    while let Some(event) = inbox.recv().await {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        match &event {
            BusEvent::Frame(frame) if frame.starts_with(Lost::MAGIC) => {
                if let Some(lost) = Lost::decode(frame) {
                    cluster.lost(&lost);
                }
            }
            _ => cluster.tunnels.dispatch(event),
        }
    }
}

/// Word from the node that claimed a session to the node that held it.
struct Lost {
    tag: String,
    /// The epoch the session was claimed at.
    epoch: u64,
}

impl Lost {
    const MAGIC: &[u8] = b"HL\x01";

    fn encode(&self) -> bytes::Bytes {
        let mut frame = Vec::with_capacity(Self::MAGIC.len() + 8 + self.tag.len());
        frame.extend_from_slice(Self::MAGIC);
        frame.extend_from_slice(&self.epoch.to_be_bytes());
        frame.extend_from_slice(self.tag.as_bytes());
        frame.into()
    }

    fn decode(frame: &[u8]) -> Option<Self> {
        let rest = frame.strip_prefix(Self::MAGIC)?;
        let (epoch, tag) = rest.split_at_checked(8)?;
        Some(Self {
            epoch: u64::from_be_bytes(epoch.try_into().ok()?),
            tag: std::str::from_utf8(tag).ok()?.to_owned(),
        })
    }
}

impl Cluster {
    /// Another node claimed a session: if this node still holds it at an
    /// older epoch, it leaves (its client reconnects and reaches the new
    /// owner).
    fn lost(&self, lost: &Lost) {
        let Some(state) = self.state.get().and_then(Weak::upgrade) else {
            return;
        };
        for shared in state.registry.all() {
            if let Some(durable) = &shared.durable
                && durable.tag == lost.tag
                && durable.epoch < lost.epoch
            {
                tracing::warn!(session = %shared.session_id, "session taken over by another node");
                shared.leave(Close::new(
                    CloseCode::RECONNECT,
                    "session moved to another node, reconnect",
                ));
            }
        }
    }
}

/// Breaks the tunnels to nodes that died, so that their clients reconnect
/// (and claim the sessions) instead of waiting on a silent tunnel.
async fn watch_peers(cluster: Weak<Cluster>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        for node in cluster.tunnels.peers() {
            if let Ok(false) = cluster.store.node_alive(&node).await {
                tracing::info!(node = %node, "a node died: breaking its tunnels");
                cluster.tunnels.reset_node(&node);
            }
        }
    }
}

/// Keeps the sessions held here from expiring in the store: each one's
/// TTL is its resume window, refreshed four times per window.
async fn keep_alive(cluster: Weak<Cluster>, state: Weak<ServerState>) {
    let period = match state.upgrade() {
        Some(state) => Cluster::ttl(&state) / 4,
        None => return,
    };
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (Some(cluster), Some(state)) = (cluster.upgrade(), state.upgrade()) else {
            return;
        };
        let tags: Vec<String> = state
            .registry
            .all()
            .iter()
            .filter_map(|shared| shared.durable.as_ref())
            .filter(|durable| !durable.is_gone())
            .map(|durable| durable.tag.clone())
            .collect();
        for chunk in tags.chunks(1000) {
            if let Err(error) = cluster.store.touch(chunk, Cluster::ttl(&state)).await {
                tracing::warn!(%error, "could not refresh sessions in the store");
            }
        }
    }
}
