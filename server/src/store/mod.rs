//! The store seam: where a session's durable state lives when several
//! nodes serve one app.
//!
//! Without a store (the default) a session lives in the memory of the node
//! that opened it, and nothing here runs: today's single-node fast path.
//! With one (`Builder::store`, e.g. the Redis
//! store of the `holdfast-redis` crate), every node can serve every request
//! of every session:
//!
//! - one node **owns** a session: it holds its sans-IO core, runs the
//!   application's handler, and writes to the store — before the client is
//!   told — every message the client is acknowledged for and every message
//!   whose `send().await` returned ([`Store::write`]);
//! - each write carries the owner's **epoch**; the store refuses a write
//!   whose epoch is not the session's current one ([`StoreError::Fenced`]),
//!   so a node that lost a session can never change it again;
//! - a request for a session owned by another live node is carried to that
//!   node over the store's **bus** ([`Store::publish`], [`Store::inbox`]);
//! - a request for a session whose owner is dead (its liveness key expired)
//!   or gone (it released its sessions on shutdown) **claims** it
//!   ([`Store::claim`]): epoch + 1, and the claiming node rebuilds the core
//!   from the [`Snapshot`] and starts the application's handler with
//!   `Session::continued` set.
//!
//! Two stores: [`MemoryCluster`] (several nodes in one process, for tests)
//! and the Redis store of the `holdfast-redis` crate (real nodes).
//!
//! Each store also has a [`Broker`] ([`Store::broker`]): where the
//! [topics](crate::Topic) of the nodes sharing it live. A topic is a log:
//! every published message gets the next offset (1, 2, 3, … with no holes)
//! within the log's epoch, a number picked when the log is created (it
//! changes only if the log was lost). The broker keeps the newest messages
//! of each log, so a node that missed some reads them back by offset;
//! each node gets the [`TopicEvent`]s of the topics it subscribed to, in
//! offset order, or a [`TopicEvent::Reset`] when some were lost. Presence
//! is a set of [`Member`]s per topic, each recorded with the node that
//! added it: a member whose node died is not listed.
//!
//! A session is named in the store by its [`tag`], derived from its key by
//! a one-way hash: the store never holds the key itself, and reading the
//! store does not let anyone resume a session.

mod broker;
mod memory;
mod memory_broker;

pub use broker::{
    Broker, MAX_MEMBER_INFO, MAX_TOPIC_NAME, Member, Position, Range, TopicEvent, valid_topic_name,
};
pub use memory::{MemoryCluster, MemoryStore};
pub use memory_broker::DEFAULT_HISTORY;
pub(crate) use memory_broker::MemoryTopics;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use holdfast_protocol::Message;
use tokio::sync::mpsc;

/// What a store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The session's epoch is no longer the one this node holds: another
    /// node took it over. The write was not made.
    #[error("another node owns this session now")]
    Fenced,
    /// The store has no such session (it expired, or never existed).
    #[error("the session is not in the store")]
    NotFound,
    /// The store cannot be reached or answered an error; the operation may
    /// be retried.
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

/// A session's name in the store: the first 16 bytes of the SHA-256 of its
/// key, in lowercase hex (32 characters). One-way: the tag does not give
/// the key. Stores put every key of one session under this tag (a Redis
/// Cluster hash tag), so each atomic step touches one slot.
pub fn tag(key: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a new session's record holds besides its messages: what the
/// application's handler needs to continue it on another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession {
    /// The public session id (for logs).
    pub session_id: String,
    /// The [`Identity`](crate::Identity) the authentication hook gave it.
    pub identity: Option<String>,
    /// The headers kept from the request that opened it (already within
    /// [`ServerConfig::max_kept_header_bytes`](crate::ServerConfig::max_kept_header_bytes)).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How far the application got with the client's messages, for a
/// takeover to resume exactly there (see `docs/scaling.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every inbound message up to this sequence number is processed: a
    /// takeover never delivers it again (the store may drop it).
    pub done: u64,
    /// The inbound message the handler was processing (0: none); a
    /// takeover delivers it again.
    pub current: u64,
    /// Messages the handler sent while processing `current`. A takeover
    /// drops this many of the new handler's sends after it receives
    /// `current` again: they are in the store already.
    pub sends: u64,
}

/// How a session ended, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredClose {
    /// The close code.
    pub code: u16,
    /// The reason.
    pub reason: String,
    /// Whether the client ended it (else the server did).
    pub by_client: bool,
}

/// One atomic write by a session's owner. Applied whole or not at all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Write {
    /// Messages for the client, consecutive sequence numbers, the first
    /// one following the last one stored.
    pub outbound: Vec<(u64, Message)>,
    /// Messages from the client, consecutive sequence numbers, the first
    /// one following the last one stored.
    pub inbound: Vec<(u64, Message)>,
    /// The client acknowledged every message for it up to this sequence
    /// number: the store may drop them.
    pub acked: Option<u64>,
    /// How far the application got.
    pub progress: Option<Progress>,
    /// The `open` greeting went out (a takeover greets with `resumed`).
    pub opened: bool,
    /// The session ended.
    pub close: Option<StoredClose>,
    /// Where the session is in each topic it is subscribed to: the last
    /// message of each topic among the session's messages, this write's
    /// included. `Some` replaces the whole set stored.
    pub cursors: Option<Vec<(String, Position)>>,
}

impl Write {
    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.outbound.is_empty()
            && self.inbound.is_empty()
            && self.acked.is_none()
            && self.progress.is_none()
            && !self.opened
            && self.close.is_none()
            && self.cursors.is_none()
    }
}

/// Everything a node needs to continue a session it claimed.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The session's record.
    pub session: NewSession,
    /// The epoch the claiming node now holds.
    pub epoch: u64,
    /// Whether the `open` greeting went out.
    pub opened: bool,
    /// The client acknowledged up to here.
    pub acked: u64,
    /// Messages for the client not acknowledged: sequence numbers
    /// `acked + 1 ..`, consecutive.
    pub outbound: Vec<(u64, Message)>,
    /// Highest sequence number received from the client.
    pub received: u64,
    /// Messages from the client not processed: sequence numbers
    /// `progress.done + 1 ..= received`, consecutive.
    pub inbound: Vec<(u64, Message)>,
    /// How far the application got.
    pub progress: Progress,
    /// How the session ended, if it did.
    pub close: Option<StoredClose>,
    /// Where the session is in its topics (see [`Write::cursors`]).
    pub cursors: Vec<(String, Position)>,
}

/// Who owns a session, as the store says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// No such session (expired, or never existed).
    Unknown,
    /// Owned by `node` at `epoch` (the node may be dead: see
    /// [`Store::node_alive`]).
    Node {
        /// The owning node's id.
        node: String,
        /// Its epoch.
        epoch: u64,
    },
    /// Released by its last owner (a graceful shutdown): the next request
    /// claims it.
    Released {
        /// The epoch it was released at.
        epoch: u64,
    },
}

/// Something from the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// A frame another node published to this one, in the order published
    /// (per publishing node).
    Frame(Bytes),
    /// The bus lost frames (the connection to the store dropped and came
    /// back): whatever relied on order across it must start over.
    Reset,
}

/// Where sessions live when several nodes serve one app. See the [module
/// docs](self).
///
/// Every method is one round trip (or a few) to the store; every write is
/// atomic. `ttl` is how long the store keeps the session after this
/// write if nothing refreshes it: the resume window, and more for an open
/// session (its owner refreshes it, see [`Store::touch`]).
pub trait Store: Send + Sync + 'static {
    /// This node's id: unique per process start.
    fn node_id(&self) -> &str;

    /// Records a new session owned by this node, at epoch 1.
    fn create<'a>(
        &'a self,
        tag: &'a str,
        session: &'a NewSession,
        ttl: Duration,
    ) -> StoreFuture<'a, u64>;

    /// Applies `write` if this node's `epoch` is the session's current
    /// one; [`StoreError::Fenced`] otherwise.
    fn write<'a>(
        &'a self,
        tag: &'a str,
        epoch: u64,
        write: &'a Write,
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// Who owns the session.
    fn owner<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Owner>;

    /// Whether a node is alive (its liveness key has not expired).
    fn node_alive<'a>(&'a self, node: &'a str) -> StoreFuture<'a, bool>;

    /// Takes the session over if its owner is still `from` (compare and
    /// set): this node becomes the owner at epoch + 1, and gets the
    /// session's state. [`StoreError::Fenced`] if the owner changed since
    /// `from` was read; [`StoreError::NotFound`] if it is gone.
    fn claim<'a>(
        &'a self,
        tag: &'a str,
        from: &'a Owner,
        ttl: Duration,
    ) -> StoreFuture<'a, Snapshot>;

    /// Gives the session up (a graceful shutdown), if this node still
    /// holds `epoch`: the next request for it claims it.
    fn release<'a>(&'a self, tag: &'a str, epoch: u64) -> StoreFuture<'a, ()>;

    /// Forgets a finished session, if this node still holds `epoch`.
    fn remove<'a>(&'a self, tag: &'a str, epoch: u64) -> StoreFuture<'a, ()>;

    /// Keeps sessions this node holds from expiring for another `ttl`
    /// (their owner calls this for open sessions, well within `ttl`).
    fn touch<'a>(&'a self, tags: &'a [String], ttl: Duration) -> StoreFuture<'a, ()>;

    /// Says this node is gone (its liveness key removed): a graceful
    /// shutdown, after releasing its sessions.
    fn leave(&self) -> StoreFuture<'_, ()>;

    /// Sends a frame to `node` over the bus. Frames to one node arrive in
    /// the order this node published them, or not at all (then the
    /// receiver sees [`BusEvent::Reset`]).
    fn publish<'a>(&'a self, node: &'a str, frame: Bytes) -> StoreFuture<'a, ()>;

    /// The frames other nodes publish to this one. Called once, when the
    /// server starts.
    fn inbox(&self) -> mpsc::Receiver<BusEvent>;

    /// The topics of the nodes sharing this store (one broker per store,
    /// the same on every call).
    fn broker(&self) -> Arc<dyn Broker>;
}
