//! For tests: a bus between in-process "nodes", as a [`Store`] whose only
//! working methods are [`Store::publish`] and [`Store::inbox`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{IncomingTunnels, TunnelConfig, Tunnels, lock};
use crate::store::{BusEvent, NewSession, Owner, Snapshot, Store, StoreError, StoreFuture, Write};

/// Events a node's inbox holds before publishers wait.
const INBOX: usize = 1024;

/// The nodes of one test and their inboxes.
#[derive(Default)]
pub(crate) struct MemBus {
    inboxes: Mutex<HashMap<String, mpsc::Sender<BusEvent>>>,
    /// Nodes whose publishes fail.
    failing: Mutex<HashSet<String>>,
}

impl MemBus {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A node on the bus: its store (the inbox already taken, as the
    /// server does once) and its inbox.
    pub(crate) fn join(self: &Arc<Self>, node: &str) -> (Arc<MemStore>, mpsc::Receiver<BusEvent>) {
        let (tx, rx) = mpsc::channel(INBOX);
        lock(&self.inboxes).insert(node.to_owned(), tx);
        let store = Arc::new(MemStore {
            node: node.to_owned(),
            bus: self.clone(),
        });
        (store, rx)
    }

    /// A node with tunnels, its inbox dispatched.
    pub(crate) fn node(
        self: &Arc<Self>,
        node: &str,
        config: TunnelConfig,
    ) -> (Arc<Tunnels>, IncomingTunnels) {
        let (store, inbox) = self.join(node);
        let (tunnels, incoming) = Tunnels::with_config(store, config);
        tunnels.spawn_inbox(inbox);
        (tunnels, incoming)
    }

    /// The node disappears: frames to it are lost from now on.
    pub(crate) fn kill(&self, node: &str) {
        lock(&self.inboxes).remove(node);
    }

    /// From now on `node`'s publishes fail, as when the store is down.
    pub(crate) fn fail_publishes(&self, node: &str) {
        lock(&self.failing).insert(node.to_owned());
    }

    /// Delivers `event` to `node` as if some node had published it.
    pub(crate) async fn inject(&self, node: &str, event: BusEvent) {
        let tx = lock(&self.inboxes).get(node).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(event).await;
        }
    }
}

/// One node's view of a [`MemBus`].
pub(crate) struct MemStore {
    node: String,
    bus: Arc<MemBus>,
}

fn unavailable<'a, T: Send + 'a>() -> StoreFuture<'a, T> {
    Box::pin(async { Err(StoreError::Unavailable("a bus-only test store".into())) })
}

impl Store for MemStore {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn create<'a>(&'a self, _: &'a str, _: &'a NewSession, _: Duration) -> StoreFuture<'a, u64> {
        unavailable()
    }

    fn write<'a>(&'a self, _: &'a str, _: u64, _: &'a Write, _: Duration) -> StoreFuture<'a, ()> {
        unavailable()
    }

    fn owner<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Owner> {
        unavailable()
    }

    fn node_alive<'a>(&'a self, _: &'a str) -> StoreFuture<'a, bool> {
        unavailable()
    }

    fn claim<'a>(&'a self, _: &'a str, _: &'a Owner, _: Duration) -> StoreFuture<'a, Snapshot> {
        unavailable()
    }

    fn release<'a>(&'a self, _: &'a str, _: u64) -> StoreFuture<'a, ()> {
        unavailable()
    }

    fn remove<'a>(&'a self, _: &'a str, _: u64) -> StoreFuture<'a, ()> {
        unavailable()
    }

    fn touch<'a>(&'a self, _: &'a [String], _: Duration) -> StoreFuture<'a, ()> {
        unavailable()
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        unavailable()
    }

    fn publish<'a>(&'a self, node: &'a str, frame: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if lock(&self.bus.failing).contains(&self.node) {
                return Err(StoreError::Unavailable("the test bus is down".into()));
            }
            // Like Redis pub/sub: to a node nobody listens for, the frame
            // is simply gone.
            let tx = lock(&self.bus.inboxes).get(node).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(BusEvent::Frame(frame)).await;
            }
            Ok(())
        })
    }

    fn inbox(&self) -> mpsc::Receiver<BusEvent> {
        // Tests take the inbox from `MemBus::join`.
        mpsc::channel(1).1
    }

    fn broker(&self) -> Arc<dyn crate::store::Broker> {
        crate::store::MemoryTopics::new(1).node(&self.node)
    }
}
