//! Tunnels: ordered byte streams between two nodes, carried by the store's
//! bus ([`Store::publish`], [`Store::inbox`]).
//!
//! A request for a session owned by another node travels to that node as
//! a raw HTTP/1.1 exchange over a [`Tunnel`] (see `forward.rs`). A tunnel
//! is a TCP connection in miniature:
//!
//! - **open**: the connecting node picks a random 64-bit id and sends
//!   `Open` (with the client's address); the other node answers `Accept`
//!   (or `Reset` when it refuses: too many tunnels, not serving);
//! - **data**: `Data` frames, in order, each at most
//!   [`TunnelConfig::max_frame`] bytes (one per write call);
//! - **flow control**: each direction has a window: the receiving node's
//!   [`TunnelConfig::window`], which it announces in its `Open` or
//!   `Accept`. A writer may have that many bytes unread by the other
//!   side's application; the reader grants `Credit` as its application
//!   reads. So a slow reader makes the writer wait, and no node ever
//!   buffers more than its window per tunnel. Until the `Accept` comes,
//!   an opener counts on [`MIN_WINDOW`], the least any node announces,
//!   so that nodes with different windows (a rolling upgrade) agree;
//! - **close**: `Fin` ends a direction (the reader sees end of file once it
//!   read everything before it); `Reset` breaks both (dropping a tunnel
//!   not closed both ways, a refused open, a node declared dead, a lost
//!   bus). A broken tunnel fails reads and writes: nothing waits forever on
//!   a peer that will never answer, as long as someone says the peer is
//!   gone ([`Tunnels::reset_node`]).
//!
//! Frames go out through one writer task, which batches the frames queued
//! for a node into one bus message (an *envelope*, at most
//! [`TunnelConfig::max_batch`] bytes unless one frame is larger), so a busy
//! node makes one publish per round trip rather than one per frame.
//! Publishes are sequential, which keeps each node's frames in order.
//!
//! # Wire format
//!
//! ```text
//! envelope = "HT" version:u8 sender_len:u16 sender:bytes frame*
//! frame    = kind:u8 id:u64 len:u32 payload:len bytes      (big endian)
//! kind     = 1 Open (payload: window:u32 address) | 2 Accept (payload: window:u32)
//!          | 3 Data | 4 Credit (payload: u32 bytes granted) | 5 Fin
//!          | 6 Reset (payload: reason, UTF-8)
//!          | 0x80 set: sent by the accepting side (else by the opener)
//! address  = 0 | 4 ipv4:4 port:u16 | 6 ipv6:16 port:u16
//! ```
//!
//! The sender's node id tells the receiver where replies go. A frame is
//! only taken for a tunnel whose peer is that sender; a frame for a tunnel
//! this node does not have is answered with a `Reset` (never a `Reset`
//! itself, so two nodes never bounce resets). The bus is the cluster's
//! own infrastructure, but a node that claims to be another still cannot
//! take over a tunnel: it would have to guess a random 64-bit id.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc};
#[cfg(test)]
use tokio::task::JoinHandle;

use crate::store::{BusEvent, Store};

mod outbox;
mod wire;

use outbox::{Outbox, publish_loop};
use wire::{Frame, Kind};

/// The least window any node announces, and what an opener may send
/// before the other node's `Accept` says how much it takes.
pub(crate) const MIN_WINDOW: usize = 64 * 1024;

/// The limits of a node's tunnels.
#[derive(Clone, Debug)]
pub(crate) struct TunnelConfig {
    /// Bytes the other node may send on a tunnel that this node's
    /// application has not read: what one tunnel buffers at most here.
    /// At least [`MIN_WINDOW`]. Default 256 KiB.
    pub(crate) window: usize,
    /// Most bytes of one `Data` frame (one write call). Default 64 KiB.
    pub(crate) max_frame: usize,
    /// Most bytes of one bus message (frames batched for one node; a
    /// single larger frame still goes alone). Default 256 KiB.
    pub(crate) max_batch: usize,
    /// Most tunnels open on this node at once, both directions together.
    /// Beyond it, [`Tunnels::connect`] fails and an `Open` is answered
    /// with a `Reset`. Worst case memory is about `2 × window` per tunnel
    /// (a full receive window and a full send queue). Default 65 536.
    pub(crate) max_tunnels: usize,
    /// Incoming tunnels queued for the accept loop; more are refused.
    /// Default 1024.
    pub(crate) accept_queue: usize,
    /// How long a new tunnel waits for the other node's `Accept`
    /// ([`Tunnel::watch`]): a node that does not answer within it is
    /// taken for dead. Default 5 s.
    pub(crate) accept_timeout: Duration,
    /// How long `forward` waits for the response head once the tunnel
    /// is accepted: more than the longest the remote router holds a
    /// request before answering (the long-poll hold). Default 60 s.
    pub(crate) response_timeout: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            window: 256 * 1024,
            max_frame: 64 * 1024,
            max_batch: 256 * 1024,
            max_tunnels: 65_536,
            accept_queue: 1024,
            accept_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a tunnel failed or could not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TunnelError {
    /// This node has as many tunnels open as it may.
    #[error("this node has too many tunnels open (limit {limit})")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// The other node broke the tunnel, or refused it; its reason.
    #[error("the other node reset the tunnel: {0}")]
    PeerReset(String),
    /// The other node was declared gone ([`Tunnels::reset_node`]).
    #[error("the other node is gone")]
    NodeGone,
    /// The bus lost frames ([`BusEvent::Reset`]).
    #[error("the bus between the nodes lost frames")]
    BusReset,
    /// Publishing on the bus failed (frames were lost).
    #[error("the bus between the nodes failed: {0}")]
    Publish(String),
    /// The other node did not accept the tunnel in time.
    #[error("the other node did not accept the tunnel within {0:?}")]
    NotAccepted(Duration),
    /// The other node broke the tunnel protocol (e.g. sent past its
    /// window).
    #[error("the other node broke the tunnel protocol: {0}")]
    Protocol(&'static str),
    /// This end was dropped.
    #[error("the tunnel is closed")]
    Closed,
    /// No random tunnel id could be drawn.
    #[error("no random tunnel id: {0}")]
    Random(String),
}

impl TunnelError {
    /// Why this node resets a tunnel, as its peer is told (and shows as
    /// "the other node reset the tunnel: …").
    fn reason_for_peer(&self) -> String {
        match self {
            Self::TooMany { limit } => format!("it has too many tunnels open (limit {limit})"),
            Self::PeerReset(_) => "it was reset".into(),
            Self::NodeGone => "it took this node for gone".into(),
            Self::BusReset => "its bus lost frames".into(),
            Self::Publish(_) => "it could not publish on the bus".into(),
            Self::NotAccepted(after) => format!("it got no accept within {after:?}"),
            Self::Protocol(what) => format!("it got {what}"),
            Self::Closed => "it closed the tunnel".into(),
            Self::Random(_) => "it has no random numbers".into(),
        }
    }

    fn to_io(&self) -> io::Error {
        let kind = match self {
            Self::NotAccepted(_) => io::ErrorKind::TimedOut,
            Self::Closed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::ConnectionReset,
        };
        io::Error::new(kind, self.clone())
    }
}

/// Tunnels the other nodes opened to this one, each with the address of
/// the client whose request it carries; read by `serve_tunnels`. When it
/// is dropped, this node refuses new tunnels.
pub(crate) type IncomingTunnels = mpsc::Receiver<(Tunnel, Option<SocketAddr>)>;

/// Which tunnel a frame is for: its id, and whether this node opened it
/// (ids are picked by the opener, so the two directions never collide).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    opened_here: bool,
    id: u64,
}

impl Key {
    /// Whether frames this end sends carry the acceptor flag.
    fn sends_as_acceptor(self) -> bool {
        !self.opened_here
    }
}

/// One tunnel's end, shared by its [`Tunnel`] handle and the table.
struct End {
    key: Key,
    peer: Arc<str>,
    state: Mutex<EndState>,
    /// Woken when the tunnel is accepted or broken.
    accept: Notify,
}

struct EndState {
    /// Bytes received and not read yet, in order.
    recv: VecDeque<Bytes>,
    recv_len: usize,
    /// The peer ended its direction: end of file after `recv`.
    recv_fin: bool,
    /// Bytes the peer may still send (its credit as this end counts it).
    recv_allowed: usize,
    /// Bytes read since the last credit grant.
    consumed: usize,
    /// Bytes this end may still send.
    send_credit: usize,
    /// This end ended its direction.
    sent_fin: bool,
    accepted: bool,
    broken: Option<TunnelError>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl End {
    /// An end that may receive `window` bytes ahead of its application's
    /// reads, and send `send_credit` bytes before the peer grants more.
    fn new(
        key: Key,
        peer: Arc<str>,
        window: usize,
        send_credit: usize,
        accepted: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            key,
            peer,
            state: Mutex::new(EndState {
                recv: VecDeque::new(),
                recv_len: 0,
                recv_fin: false,
                recv_allowed: window,
                consumed: 0,
                send_credit,
                sent_fin: false,
                accepted,
                broken: None,
                read_waker: None,
                write_waker: None,
            }),
            accept: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, EndState> {
        lock(&self.state)
    }

    /// A frame from this end to its peer.
    fn frame(&self, kind: Kind, payload: Bytes) -> Frame {
        Frame {
            kind,
            from_acceptor: self.key.sends_as_acceptor(),
            id: self.key.id,
            payload,
        }
    }

    /// Breaks the tunnel (once): wakes everything waiting on it, and tells
    /// the peer if `outbox` is given.
    fn break_with(&self, error: TunnelError, outbox: Option<&Outbox>) {
        let mut state = self.state();
        if state.broken.is_some() {
            return;
        }
        if let Some(outbox) = outbox {
            let reason = Bytes::from(error.reason_for_peer().into_bytes());
            outbox.push(&self.peer, self.frame(Kind::Reset, reason), false);
        }
        state.broken = Some(error);
        state.wake_all();
        drop(state);
        self.accept.notify_waiters();
    }
}

impl EndState {
    fn wake_all(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }
}

/// A node's tunnels: opens them, routes the bus's frames to them, breaks
/// them when a node goes away.
pub(crate) struct Tunnels {
    node: Arc<str>,
    config: TunnelConfig,
    me: Weak<Tunnels>,
    table: Mutex<HashMap<Key, Arc<End>>>,
    outbox: Arc<Outbox>,
    incoming: mpsc::Sender<(Tunnel, Option<SocketAddr>)>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("node", &self.node)
            .field("open", &self.open_count())
            .finish_non_exhaustive()
    }
}

impl Tunnels {
    /// This node's tunnels with the default [`TunnelConfig`]. See
    /// [`with_config`](Self::with_config).
    pub(crate) fn new(store: Arc<dyn Store>) -> (Arc<Self>, IncomingTunnels) {
        Self::with_config(store, TunnelConfig::default())
    }

    /// This node's tunnels, and the tunnels other nodes open to it.
    /// Starts the task that publishes frames (it ends when the returned
    /// `Tunnels` and every tunnel are dropped); must be called within a
    /// tokio runtime. Frames from the bus come in through
    /// [`dispatch`](Self::dispatch) or [`spawn_inbox`](Self::spawn_inbox).
    pub(crate) fn with_config(
        store: Arc<dyn Store>,
        config: TunnelConfig,
    ) -> (Arc<Self>, IncomingTunnels) {
        let config = TunnelConfig {
            window: config.window.max(MIN_WINDOW),
            max_frame: config.max_frame.max(1),
            max_batch: config.max_batch.max(1),
            max_tunnels: config.max_tunnels.max(1),
            accept_queue: config.accept_queue.max(1),
            ..config
        };
        let (incoming, incoming_rx) = mpsc::channel(config.accept_queue);
        let outbox = Arc::new(Outbox::default());
        let node: Arc<str> = Arc::from(store.node_id());
        let tunnels = Arc::new_cyclic(|me| Self {
            node: node.clone(),
            config: config.clone(),
            me: me.clone(),
            table: Mutex::new(HashMap::new()),
            outbox: outbox.clone(),
            incoming,
        });
        tokio::spawn(publish_loop(
            store,
            outbox,
            node,
            Arc::downgrade(&tunnels),
            config.max_batch,
        ));
        (tunnels, incoming_rx)
    }

    /// The limits in force.
    pub(crate) fn config(&self) -> &TunnelConfig {
        &self.config
    }

    /// Tunnels open now (both directions).
    pub(crate) fn open_count(&self) -> usize {
        lock(&self.table).len()
    }

    /// Opens a tunnel to `node` for the request of a client at
    /// `client_addr`. Returns at once: bytes written go out right away
    /// (within the window), before the other node accepts. Use
    /// [`Tunnel::watch`] to learn that it did, or did not in time.
    pub(crate) fn connect(
        &self,
        node: &str,
        client_addr: Option<SocketAddr>,
    ) -> Result<Tunnel, TunnelError> {
        let tunnels = self.me.upgrade().ok_or(TunnelError::Closed)?;
        let peer: Arc<str> = Arc::from(node);
        let mut table = lock(&self.table);
        if table.len() >= self.config.max_tunnels {
            return Err(TunnelError::TooMany {
                limit: self.config.max_tunnels,
            });
        }
        let key = loop {
            let id = getrandom::u64().map_err(|e| TunnelError::Random(e.to_string()))?;
            let key = Key {
                opened_here: true,
                id,
            };
            if !table.contains_key(&key) {
                break key;
            }
        };
        let end = End::new(key, peer.clone(), self.config.window, MIN_WINDOW, false);
        table.insert(key, end.clone());
        drop(table);
        let open = end.frame(
            Kind::Open,
            wire::encode_open(self.config.window, client_addr),
        );
        self.outbox.push(&peer, open, false);
        Ok(Tunnel { end, tunnels })
    }

    /// Feeds one event from the store's inbox. Never blocks; malformed
    /// input is dropped (and logged at debug level), never a panic.
    pub(crate) fn dispatch(&self, event: BusEvent) {
        match event {
            BusEvent::Frame(envelope) => self.on_envelope(envelope),
            BusEvent::Reset => {
                tracing::debug!("the bus lost frames: resetting every tunnel");
                self.reset_where(|_| true, TunnelError::BusReset);
            }
        }
    }

    /// Reads `inbox` (from [`Store::inbox`]) in a task of its own and
    /// [`dispatch`](Self::dispatch)es every event. The task ends when the
    /// inbox closes or these tunnels are dropped.
    #[cfg(test)]
    pub(crate) fn spawn_inbox(
        self: &Arc<Self>,
        mut inbox: mpsc::Receiver<BusEvent>,
    ) -> JoinHandle<()> {
        let tunnels = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = inbox.recv().await {
                let Some(tunnels) = tunnels.upgrade() else {
                    return;
                };
                tunnels.dispatch(event);
            }
        })
    }

    /// Breaks every tunnel to or from `node` (its liveness key expired, so
    /// it will never answer): both ends see an error. A `Reset` is sent
    /// to it anyway, in case it is alive after all.
    pub(crate) fn reset_node(&self, node: &str) {
        self.reset_where(|end| *end.peer == *node, TunnelError::NodeGone);
    }

    /// Breaks every tunnel, telling each peer (e.g. this node shuts down
    /// after its connections drained).
    pub(crate) fn reset_all(&self) {
        self.reset_where(|_| true, TunnelError::Closed);
    }

    fn reset_where(&self, which: impl Fn(&End) -> bool, error: TunnelError) {
        let ends: Vec<Arc<End>> = {
            let mut table = lock(&self.table);
            let keys: Vec<Key> = table
                .iter()
                .filter(|(_, end)| which(end))
                .map(|(key, _)| *key)
                .collect();
            keys.iter().filter_map(|key| table.remove(key)).collect()
        };
        for end in ends {
            end.break_with(error.clone(), Some(&self.outbox));
        }
    }

    /// Breaks every tunnel to `node` without telling it: publishing to it
    /// failed, so frames were lost.
    fn publish_failed(&self, node: &str, error: &str) {
        let ends: Vec<Arc<End>> = {
            let mut table = lock(&self.table);
            let keys: Vec<Key> = table
                .iter()
                .filter(|(_, end)| *end.peer == *node)
                .map(|(key, _)| *key)
                .collect();
            keys.iter().filter_map(|key| table.remove(key)).collect()
        };
        for end in ends {
            end.break_with(TunnelError::Publish(error.to_owned()), None);
        }
    }

    fn on_envelope(&self, envelope: Bytes) {
        let Some((sender, frames)) = wire::Envelope::parse(envelope) else {
            tracing::debug!("dropped a bus message that is not a tunnel envelope");
            return;
        };
        let sender: Arc<str> = Arc::from(sender);
        for frame in frames {
            match frame {
                Ok(frame) => self.on_frame(&sender, frame),
                Err(error) => {
                    tracing::debug!(
                        sender = %sender.escape_debug(),
                        error,
                        "dropped the rest of a malformed tunnel envelope"
                    );
                    return;
                }
            }
        }
    }

    fn on_frame(&self, sender: &Arc<str>, frame: Frame) {
        if frame.kind == Kind::Open {
            if frame.from_acceptor {
                tracing::debug!("dropped an open frame marked as sent by an acceptor");
                return;
            }
            self.on_open(sender, frame);
            return;
        }
        let key = Key {
            opened_here: frame.from_acceptor,
            id: frame.id,
        };
        let end = lock(&self.table).get(&key).cloned();
        let Some(end) = end else {
            // Not ours (any more): say so, unless it says so itself.
            if frame.kind != Kind::Reset {
                self.stray(sender, key, "it has no such tunnel");
            }
            return;
        };
        if *end.peer != **sender {
            tracing::debug!(
                sender = %sender.escape_debug(),
                "dropped a tunnel frame from a node that is not the tunnel's peer"
            );
            return;
        }
        match frame.kind {
            Kind::Open => {}
            Kind::Accept => {
                // The acceptor's window: what it announced beyond the
                // least this end counted on.
                let Some(window) = wire::decode_count(&frame.payload) else {
                    return self.protocol_error(&end, "a malformed accept frame");
                };
                let mut state = end.state();
                if state.accepted {
                    drop(state);
                    return self.protocol_error(&end, "a second accept frame");
                }
                state.accepted = true;
                state.send_credit = state
                    .send_credit
                    .saturating_add(window.saturating_sub(MIN_WINDOW));
                if let Some(waker) = state.write_waker.take() {
                    waker.wake();
                }
                drop(state);
                end.accept.notify_waiters();
            }
            Kind::Data => self.on_data(&end, frame.payload),
            Kind::Credit => {
                let Some(grant) = wire::decode_count(&frame.payload) else {
                    return self.protocol_error(&end, "a malformed credit frame");
                };
                let mut state = end.state();
                state.send_credit = state.send_credit.saturating_add(grant);
                if let Some(waker) = state.write_waker.take() {
                    waker.wake();
                }
            }
            Kind::Fin => {
                let mut state = end.state();
                state.recv_fin = true;
                if let Some(waker) = state.read_waker.take() {
                    waker.wake();
                }
            }
            Kind::Reset => {
                self.forget(&end);
                let reason = wire::decode_reason(&frame.payload);
                end.break_with(TunnelError::PeerReset(reason), None);
            }
        }
    }

    fn on_data(&self, end: &Arc<End>, payload: Bytes) {
        let mut state = end.state();
        if state.recv_fin {
            drop(state);
            return self.protocol_error(end, "data after the end of the stream");
        }
        if payload.len() > state.recv_allowed {
            drop(state);
            return self.protocol_error(end, "data beyond the window");
        }
        if state.broken.is_some() || payload.is_empty() {
            return;
        }
        state.recv_allowed -= payload.len();
        state.recv_len += payload.len();
        state.recv.push_back(payload);
        if let Some(waker) = state.read_waker.take() {
            waker.wake();
        }
    }

    fn on_open(&self, sender: &Arc<str>, frame: Frame) {
        let key = Key {
            opened_here: false,
            id: frame.id,
        };
        let Some((peer_window, client_addr)) = wire::decode_open(&frame.payload) else {
            return self.stray(sender, key, "a malformed open frame");
        };
        let Some(tunnels) = self.me.upgrade() else {
            return;
        };
        let mut table = lock(&self.table);
        if table.contains_key(&key) {
            drop(table);
            return self.stray(sender, key, "the tunnel id is in use there");
        }
        if table.len() >= self.config.max_tunnels {
            drop(table);
            let limit = self.config.max_tunnels;
            tracing::warn!(
                limit,
                "refused a tunnel from another node: too many tunnels open"
            );
            let reason = format!("it has too many tunnels open (limit {limit})");
            return self.stray(sender, key, &reason);
        }
        if self.incoming.is_closed() {
            drop(table);
            return self.stray(sender, key, "it is not serving tunnels");
        }
        let end = End::new(key, sender.clone(), self.config.window, peer_window, true);
        table.insert(key, end.clone());
        drop(table);
        let tunnel = Tunnel {
            end: end.clone(),
            tunnels,
        };
        // Handed over and accepted under the tunnel's lock: the `Accept`
        // is queued before anything the application writes (a tunnel's
        // frames are queued under its lock), and is only sent for a
        // tunnel that was handed over.
        let state = end.state();
        let handed = self.incoming.try_send((tunnel, client_addr));
        if handed.is_ok() {
            let accept = end.frame(Kind::Accept, wire::encode_count(self.config.window));
            self.outbox.push(sender, accept, false);
            return;
        }
        drop(state);
        tracing::warn!("refused a tunnel from another node: the accept queue is full");
        self.forget(&end);
        // Broken quietly first, so dropping it sends no reset of its own.
        end.break_with(TunnelError::Closed, None);
        drop(handed);
        self.stray(sender, key, "its accept queue is full");
    }

    /// Answers a frame this node cannot take (or an `Open` it refuses)
    /// with a `Reset` for it.
    fn stray(&self, sender: &Arc<str>, key: Key, reason: &str) {
        let reset = Frame {
            kind: Kind::Reset,
            from_acceptor: key.sends_as_acceptor(),
            id: key.id,
            payload: Bytes::copy_from_slice(reason.as_bytes()),
        };
        self.outbox.push(sender, reset, true);
    }

    fn protocol_error(&self, end: &Arc<End>, what: &'static str) {
        tracing::debug!(what, "a node broke the tunnel protocol");
        self.forget(end);
        end.break_with(TunnelError::Protocol(what), Some(&self.outbox));
    }

    /// Takes `end` out of the table (if it is still the one there).
    fn forget(&self, end: &Arc<End>) {
        let mut table = lock(&self.table);
        if table.get(&end.key).is_some_and(|e| Arc::ptr_eq(e, end)) {
            table.remove(&end.key);
        }
    }
}

impl Drop for Tunnels {
    fn drop(&mut self) {
        self.outbox.close();
    }
}

/// One end of a tunnel: ordered bytes to and from the other node.
///
/// Reads give the bytes the peer wrote, then end of file once the peer
/// shut its side down, or an error if the tunnel broke (after the bytes
/// that arrived before). Writes fail once the tunnel broke or this side
/// was shut down; they wait while the peer's window is full. Dropping a
/// tunnel that is not shut down both ways resets it.
pub(crate) struct Tunnel {
    end: Arc<End>,
    tunnels: Arc<Tunnels>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("peer", &self.end.peer)
            .field("opened_here", &self.end.key.opened_here)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// The node at the other end.
    #[cfg(test)]
    pub(crate) fn peer(&self) -> &str {
        &self.end.peer
    }
}

impl Tunnel {
    /// A handle that outlives the tunnel being moved into a connection:
    /// whether the other node accepted it, why it broke.
    pub(crate) fn watch(&self) -> TunnelWatch {
        TunnelWatch {
            end: self.end.clone(),
            tunnels: self.tunnels.clone(),
        }
    }

    /// Bytes received and not read yet.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.end.state().recv_len
    }
}

/// See [`Tunnel::watch`].
#[derive(Clone)]
pub(crate) struct TunnelWatch {
    end: Arc<End>,
    tunnels: Arc<Tunnels>,
}

impl TunnelWatch {
    /// Resolves once the other node accepted the tunnel; an error if it
    /// refused, the tunnel broke, or [`TunnelConfig::accept_timeout`]
    /// passed first.
    pub(crate) async fn accepted(&self) -> Result<(), TunnelError> {
        let wait = async {
            loop {
                let mut notified = pin!(self.end.accept.notified());
                notified.as_mut().enable();
                {
                    let state = self.end.state();
                    if let Some(error) = &state.broken {
                        return Err(error.clone());
                    }
                    if state.accepted {
                        return Ok(());
                    }
                }
                notified.await;
            }
        };
        let timeout = self.tunnels.config.accept_timeout;
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(TunnelError::NotAccepted(timeout)))
    }

    /// Breaks the tunnel with `error`, telling the other node: whoever
    /// holds the tunnel (a connection task) sees its reads and writes
    /// fail and lets go of it.
    pub(crate) fn abort(&self, error: TunnelError) {
        self.tunnels.forget(&self.end);
        self.end.break_with(error, Some(&self.tunnels.outbox));
    }

    /// Why the tunnel broke, if it did.
    pub(crate) fn broken(&self) -> Option<TunnelError> {
        self.end.state().broken.clone()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.end.state();
        if state.recv_len == 0 {
            if state.recv_fin {
                return Poll::Ready(Ok(()));
            }
            if let Some(error) = &state.broken {
                return Poll::Ready(Err(error.to_io()));
            }
            state.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut read = 0;
        while buf.remaining() > 0 {
            let Some(chunk) = state.recv.front_mut() else {
                break;
            };
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n == chunk.len() {
                state.recv.pop_front();
            } else {
                let _ = chunk.split_to(n);
            }
            read += n;
        }
        state.recv_len -= read;
        state.consumed += read;
        // Grant credit in quarters of the window: few frames, and the
        // writer never waits while the reader keeps up.
        let window = this.tunnels.config.window;
        if !state.recv_fin && state.broken.is_none() && state.consumed >= window.div_ceil(4) {
            let grant = std::mem::take(&mut state.consumed);
            state.recv_allowed += grant;
            let frame = this.end.frame(Kind::Credit, wire::encode_count(grant));
            this.tunnels.outbox.push(&this.end.peer, frame, false);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        let mut state = this.end.state();
        if let Some(error) = &state.broken {
            return Poll::Ready(Err(error.to_io()));
        }
        if state.sent_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the tunnel was shut down",
            )));
        }
        if state.send_credit == 0 {
            state.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf
            .len()
            .min(state.send_credit)
            .min(this.tunnels.config.max_frame);
        state.send_credit -= n;
        // Queued under the state lock: a tunnel's frames keep their order.
        let frame = this
            .end
            .frame(Kind::Data, Bytes::copy_from_slice(&buf[..n]));
        this.tunnels.outbox.push(&this.end.peer, frame, false);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are queued for the publishing task, which sends
        // them without delay: nothing to flush. Not an error after a
        // reset either: what was written before it went out (a peer that
        // answered and left is no failure of the bytes sent to it).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.end.state();
        if let Some(error) = &state.broken {
            return Poll::Ready(Err(error.to_io()));
        }
        if !state.sent_fin {
            state.sent_fin = true;
            let frame = this.end.frame(Kind::Fin, Bytes::new());
            this.tunnels.outbox.push(&this.end.peer, frame, false);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.tunnels.forget(&self.end);
        let mut state = self.end.state();
        if state.broken.is_none() && !(state.sent_fin && state.recv_fin) {
            let frame = self
                .end
                .frame(Kind::Reset, Bytes::from_static(b"it closed the tunnel"));
            self.tunnels.outbox.push(&self.end.peer, frame, false);
        }
        // Why it broke, if it did, stays readable through a watch.
        state.broken.get_or_insert(TunnelError::Closed);
        state.recv.clear();
        state.recv_len = 0;
    }
}

/// Locks `mutex`, also after a panic elsewhere (the state stays usable:
/// every update is complete before anything can panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod membus;

#[cfg(test)]
mod tests;

impl Tunnels {
    /// The nodes at the far end of the tunnels open now (each once), for
    /// the watch that breaks tunnels to dead nodes.
    pub(crate) fn peers(&self) -> Vec<Arc<str>> {
        let mut peers: Vec<Arc<str>> = lock(&self.table)
            .values()
            .map(|end| end.peer.clone())
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }
}
