//! A [`Store`] in this process's memory, shared by several nodes built in
//! one process: for tests of an app on several nodes (round-robin, a node
//! dying, a rolling restart) without installing anything. It follows the
//! same contract as the Redis store — fenced writes, compare-and-set
//! claims, expiry, a bus in publish order — but lives and dies with the
//! process: it is not a way to run several real nodes.
//!
//! ```
//! use holdfast_server::store::MemoryCluster;
//!
//! let cluster = MemoryCluster::new();
//! let (a, b) = (cluster.node(), cluster.node());
//! // Holdfast::builder().store(a) on one node, .store(b) on the other.
//! # drop((a, b));
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, not `std`'s: a record's TTL runs on paused test time too.
use tokio::time::Instant;

use bytes::Bytes;
use holdfast_protocol::Message;
use tokio::sync::mpsc;

use super::memory_broker::{DEFAULT_HISTORY, MemoryBroker, MemoryTopics};
use super::{
    Broker, BusEvent, NewSession, Owner, Position, Progress, Snapshot, Store, StoreError,
    StoreFuture, StoredClose, Write,
};

/// Frames a node's inbox holds before the bus reports a [`BusEvent::Reset`]
/// to it instead of growing.
const INBOX: usize = 4096;

/// What several in-process nodes share: the sessions, the nodes, the bus.
#[derive(Clone)]
pub struct MemoryCluster {
    state: Arc<Mutex<State>>,
    topics: MemoryTopics,
}

impl Default for MemoryCluster {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            topics: MemoryTopics::new(DEFAULT_HISTORY),
        }
    }
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Record>,
    nodes: HashMap<String, NodeEntry>,
    next_node: u64,
}

struct NodeEntry {
    alive: bool,
    inbox: mpsc::Sender<BusEvent>,
    receiver: Option<mpsc::Receiver<BusEvent>>,
}

struct Record {
    session: NewSession,
    owner: Option<String>,
    epoch: u64,
    acked: u64,
    outbound: VecDeque<(u64, Message)>,
    sent: u64,
    received: u64,
    inbound: VecDeque<(u64, Message)>,
    progress: Progress,
    close: Option<StoredClose>,
    cursors: Vec<(String, Position)>,
    expires: Instant,
}

impl MemoryCluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new node's store (alive until [`MemoryStore::die`] or
    /// [`Store::leave`]).
    pub fn node(&self) -> Arc<MemoryStore> {
        let mut state = self.lock();
        state.next_node += 1;
        let id = format!("memory-node-{}", state.next_node);
        let (inbox, receiver) = mpsc::channel(INBOX);
        state.nodes.insert(
            id.clone(),
            NodeEntry {
                alive: true,
                inbox,
                receiver: Some(receiver),
            },
        );
        drop(state);
        Arc::new(MemoryStore {
            cluster: self.clone(),
            broker: self.topics.node(&id),
            id,
        })
    }

    /// Sessions held (for tests: everything expires or is removed).
    pub fn sessions(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .sessions
            .values()
            .filter(|record| record.expires > now)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One node's handle on a [`MemoryCluster`].
pub struct MemoryStore {
    cluster: MemoryCluster,
    broker: Arc<MemoryBroker>,
    id: String,
}

impl MemoryStore {
    /// The node dies as far as the others can tell (what a `kill -9` does
    /// to its liveness key): its sessions can be claimed. Its own writes
    /// still reach the store — and are refused once another node claimed
    /// the session.
    pub fn die(&self) {
        if let Some(node) = self.cluster.lock().nodes.get_mut(&self.id) {
            node.alive = false;
        }
        self.cluster.topics.die(&self.id);
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&mut self.cluster.lock())
    }
}

/// A live record of `tag`, or [`StoreError::NotFound`].
fn live<'a>(state: &'a mut State, tag: &str) -> Result<&'a mut Record, StoreError> {
    let now = Instant::now();
    match state.sessions.get(tag) {
        Some(record) if record.expires <= now => {
            state.sessions.remove(tag);
            Err(StoreError::NotFound)
        }
        Some(_) => state.sessions.get_mut(tag).ok_or(StoreError::NotFound),
        None => Err(StoreError::NotFound),
    }
}

/// Appends consecutive messages after `last`, or says why not.
fn append(
    list: &mut VecDeque<(u64, Message)>,
    last: &mut u64,
    messages: &[(u64, Message)],
) -> Result<(), StoreError> {
    for (seq, message) in messages {
        if *seq != *last + 1 {
            return Err(StoreError::Unavailable(format!(
                "sequence gap: {seq} after {last}"
            )));
        }
        list.push_back((*seq, message.clone()));
        *last = *seq;
    }
    Ok(())
}

fn ready<'a, T: Send + 'a>(result: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl Store for MemoryStore {
    fn node_id(&self) -> &str {
        &self.id
    }

    fn create<'a>(
        &'a self,
        tag: &'a str,
        session: &'a NewSession,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        ready(self.with(|state| {
            if live(state, tag).is_ok() {
                return Err(StoreError::Unavailable("the session exists".into()));
            }
            state.sessions.insert(
                tag.to_owned(),
                Record {
                    session: session.clone(),
                    owner: Some(self.id.clone()),
                    epoch: 1,
                    acked: 0,
                    outbound: VecDeque::new(),
                    sent: 0,
                    received: 0,
                    inbound: VecDeque::new(),
                    progress: Progress::default(),
                    close: None,
                    cursors: Vec::new(),
                    expires: Instant::now() + ttl,
                },
            );
            Ok(1)
        }))
    }

    fn write<'a>(
        &'a self,
        tag: &'a str,
        epoch: u64,
        write: &'a Write,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        ready(self.with(|state| {
            let record = live(state, tag)?;
            if record.epoch != epoch || record.owner.as_deref() != Some(&self.id) {
                return Err(StoreError::Fenced);
            }
            // Checked whole before anything changes: one write is atomic.
            let (mut outbound, mut sent) = (record.outbound.clone(), record.sent);
            append(&mut outbound, &mut sent, &write.outbound)?;
            let (mut inbound, mut received) = (record.inbound.clone(), record.received);
            append(&mut inbound, &mut received, &write.inbound)?;
            record.outbound = outbound;
            record.sent = sent;
            record.inbound = inbound;
            record.received = received;
            if let Some(acked) = write.acked {
                record.acked = record.acked.max(acked);
                while record
                    .outbound
                    .front()
                    .is_some_and(|(seq, _)| *seq <= acked)
                {
                    record.outbound.pop_front();
                }
            }
            if let Some(progress) = write.progress {
                record.progress = progress;
                while record
                    .inbound
                    .front()
                    .is_some_and(|(seq, _)| *seq <= progress.done)
                {
                    record.inbound.pop_front();
                }
            }
            if let Some(close) = &write.close {
                record.close = Some(close.clone());
            }
            if let Some(cursors) = &write.cursors {
                record.cursors = cursors.clone();
            }
            record.expires = Instant::now() + ttl;
            Ok(())
        }))
    }

    fn owner<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Owner> {
        ready(self.with(|state| {
            Ok(match live(state, tag) {
                Err(_) => Owner::Unknown,
                Ok(record) => match &record.owner {
                    Some(node) => Owner::Node {
                        node: node.clone(),
                        epoch: record.epoch,
                    },
                    None => Owner::Released {
                        epoch: record.epoch,
                    },
                },
            })
        }))
    }

    fn node_alive<'a>(&'a self, node: &'a str) -> StoreFuture<'a, bool> {
        ready(self.with(|state| Ok(state.nodes.get(node).is_some_and(|n| n.alive))))
    }

    fn claim<'a>(
        &'a self,
        tag: &'a str,
        from: &'a Owner,
        ttl: Duration,
    ) -> StoreFuture<'a, Snapshot> {
        ready(self.with(|state| {
            let record = live(state, tag)?;
            let unchanged = match from {
                Owner::Unknown => false,
                Owner::Node { node, epoch } => {
                    record.owner.as_deref() == Some(node.as_str()) && record.epoch == *epoch
                }
                Owner::Released { epoch } => record.owner.is_none() && record.epoch == *epoch,
            };
            if !unchanged {
                return Err(StoreError::Fenced);
            }
            record.epoch += 1;
            record.owner = Some(self.id.clone());
            record.expires = Instant::now() + ttl;
            Ok(Snapshot {
                session: record.session.clone(),
                epoch: record.epoch,
                opened: true,
                acked: record.acked,
                outbound: record.outbound.iter().cloned().collect(),
                received: record.received,
                inbound: record.inbound.iter().cloned().collect(),
                progress: record.progress,
                close: record.close.clone(),
                cursors: record.cursors.clone(),
            })
        }))
    }

    fn release<'a>(&'a self, tag: &'a str, epoch: u64) -> StoreFuture<'a, ()> {
        ready(self.with(|state| {
            let record = live(state, tag)?;
            if record.epoch != epoch || record.owner.as_deref() != Some(&self.id) {
                return Err(StoreError::Fenced);
            }
            record.owner = None;
            Ok(())
        }))
    }

    fn remove<'a>(&'a self, tag: &'a str, epoch: u64) -> StoreFuture<'a, ()> {
        ready(self.with(|state| {
            let record = live(state, tag)?;
            if record.epoch != epoch || record.owner.as_deref() != Some(&self.id) {
                return Err(StoreError::Fenced);
            }
            state.sessions.remove(tag);
            Ok(())
        }))
    }

    fn touch<'a>(&'a self, tags: &'a [String], ttl: Duration) -> StoreFuture<'a, ()> {
        ready(self.with(|state| {
            let expires = Instant::now() + ttl;
            for tag in tags {
                if let Ok(record) = live(state, tag) {
                    record.expires = expires;
                }
            }
            Ok(())
        }))
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        self.die();
        ready(Ok(()))
    }

    fn publish<'a>(&'a self, node: &'a str, frame: Bytes) -> StoreFuture<'a, ()> {
        ready(self.with(|state| {
            // Like pub/sub: a frame reaches a node that listens, whatever
            // its liveness key says; one to a node that does not is lost.
            if let Some(entry) = state.nodes.get(node)
                && entry.inbox.try_send(BusEvent::Frame(frame)).is_err()
            {
                let _ = entry.inbox.try_send(BusEvent::Reset);
            }
            Ok(())
        }))
    }

    fn inbox(&self) -> mpsc::Receiver<BusEvent> {
        let mut state = self.cluster.lock();
        match state
            .nodes
            .get_mut(&self.id)
            .and_then(|node| node.receiver.take())
        {
            Some(receiver) => receiver,
            // Called twice: the second caller gets a closed channel.
            None => mpsc::channel(1).1,
        }
    }

    fn broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> NewSession {
        NewSession {
            session_id: "s1".into(),
            identity: Some("ada".into()),
            headers: vec![("cookie".into(), b"a=1".to_vec())],
        }
    }

    fn text(s: &'static str) -> Message {
        Message::text(s)
    }

    /// A stored session lives for its TTL on tokio's clock, so tests with
    /// paused time see it expire (a `std` clock would never move).
    #[tokio::test(start_paused = true)]
    async fn a_record_expires_after_its_ttl_in_paused_time() {
        let cluster = MemoryCluster::new();
        let node = cluster.node();
        let ttl = Duration::from_secs(60);
        assert_eq!(node.create("t", &session(), ttl).await.ok(), Some(1));
        tokio::time::sleep(ttl - Duration::from_millis(1)).await;
        assert_eq!(cluster.sessions(), 1, "expired before its TTL");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(cluster.sessions(), 0, "still held after its TTL");
    }

    #[tokio::test]
    async fn writes_are_fenced_and_claims_are_compare_and_set() {
        let cluster = MemoryCluster::new();
        let (a, b, c) = (cluster.node(), cluster.node(), cluster.node());
        let ttl = Duration::from_secs(60);
        let epoch = a.create("t", &session(), ttl).await.unwrap_or(0);
        assert_eq!(epoch, 1);
        let write = Write {
            outbound: vec![(1, text("one")), (2, text("two"))],
            inbound: vec![(1, text("hi"))],
            ..Write::default()
        };
        assert!(a.write("t", 1, &write, ttl).await.is_ok());
        let owner = b.owner("t").await.unwrap_or(Owner::Unknown);
        a.die();
        assert_eq!(b.node_alive(a.node_id()).await.ok(), Some(false));
        let claimed = b.claim("t", &owner, ttl).await;
        let lost = c.claim("t", &owner, ttl).await;
        assert!(matches!(lost, Err(StoreError::Fenced)), "one claim wins");
        let snapshot = claimed.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.epoch, 2);
        assert_eq!(snapshot.outbound.len(), 2);
        assert_eq!(snapshot.received, 1);
        assert_eq!(snapshot.session, session());
        let late = Write {
            outbound: vec![(3, text("late"))],
            ..Write::default()
        };
        assert!(matches!(
            a.write("t", 1, &late, ttl).await,
            Err(StoreError::Fenced)
        ));
        let gap = Write {
            outbound: vec![(5, text("gap"))],
            ..Write::default()
        };
        assert!(matches!(
            b.write("t", 2, &gap, ttl).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn acks_and_progress_trim_and_ttl_expires() {
        let cluster = MemoryCluster::new();
        let a = cluster.node();
        let ttl = Duration::from_secs(60);
        let _ = a.create("t", &session(), ttl).await;
        let write = Write {
            outbound: vec![(1, text("1")), (2, text("2")), (3, text("3"))],
            inbound: vec![(1, text("a")), (2, text("b"))],
            acked: Some(2),
            progress: Some(Progress {
                done: 1,
                current: 2,
                sends: 1,
            }),
            ..Write::default()
        };
        assert!(a.write("t", 1, &write, ttl).await.is_ok());
        assert!(a.release("t", 1).await.is_ok());
        let owner = a.owner("t").await.unwrap_or(Owner::Unknown);
        assert_eq!(owner, Owner::Released { epoch: 1 });
        let snapshot = a
            .claim("t", &owner, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snapshot.outbound, vec![(3, text("3"))]);
        assert_eq!(snapshot.inbound, vec![(2, text("b"))]);
        assert_eq!(snapshot.progress.sends, 1);
        // Claimed with a TTL of zero: gone.
        assert_eq!(a.owner("t").await.ok(), Some(Owner::Unknown));
        assert_eq!(cluster.sessions(), 0);
    }

    #[tokio::test]
    async fn the_bus_delivers_in_order_to_live_nodes() {
        let cluster = MemoryCluster::new();
        let (a, b) = (cluster.node(), cluster.node());
        let mut inbox = b.inbox();
        for n in 0..100u8 {
            let _ = a.publish(b.node_id(), Bytes::from(vec![n])).await;
        }
        for n in 0..100u8 {
            assert_eq!(
                inbox.recv().await,
                Some(BusEvent::Frame(Bytes::from(vec![n])))
            );
        }
    }
}
