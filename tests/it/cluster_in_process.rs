//! Several nodes in one process, sharing a `MemoryCluster` store, behind a
//! real nginx balancing round-robin: the server's side of a cluster —
//! routing, tunnels between nodes, takeover, fencing, hand-over — checked
//! with the Rust client on every transport, and the application's view
//! (each message processed once, `continued()`, `moved()`) checked in the
//! handlers. `cluster_processes` runs the same against real processes and
//! a real Redis.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client_support::*;
use crate::nginx_support::{Nginx, Profile};
use holdfast::client::TransportKind;
use holdfast::server::store::{MemoryCluster, MemoryStore};
use holdfast::server::{Holdfast, Identity, OpenRequest, Refusal, Session};
use tokio::task::JoinHandle;

/// What the handlers on every node saw.
#[derive(Default)]
struct Seen {
    /// Times each message (by number) was taken by a handler.
    processed: HashMap<u32, u32>,
    /// Handlers started on a session taken over from another node.
    continued: u32,
    /// Handlers that ended because their session moved away.
    moved: u32,
    /// What the handlers of continued sessions were told of their client:
    /// its identity and its `Authorization` header.
    continued_as: Vec<(Option<String>, Option<String>)>,
}

type Shared = Arc<Mutex<Seen>>;

async fn echo(session: Session, seen: Shared) {
    if session.continued() {
        let identity = session
            .extensions()
            .get::<Identity>()
            .map(|identity| identity.as_str().to_owned());
        let header = session
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.continued += 1;
        seen.continued_as.push((identity, header));
    }
    while let Some(message) = session.recv().await {
        *seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .processed
            .entry(number_of(&message))
            .or_default() += 1;
        if session.send(message).await.is_err() {
            break;
        }
    }
    if session.closed().await.moved() {
        seen.lock().unwrap_or_else(|e| e.into_inner()).moved += 1;
    }
}

/// One node: a holdfast server with its own handle on the shared store.
struct Node {
    holdfast: Holdfast,
    store: Arc<MemoryStore>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn node(cluster: &MemoryCluster, seen: &Shared) -> Node {
    let store = cluster.node();
    let seen = seen.clone();
    let holdfast = Holdfast::builder()
        .config(quick_server_config())
        .auth(|request: OpenRequest| async move {
            let name = request
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_owned)
                .ok_or_else(|| Refusal::unauthorized("log in first"))?;
            let mut identity = http::Extensions::new();
            identity.insert(Identity::new(name));
            Ok(identity)
        })
        .store(store.clone())
        .on_session(move |session| echo(session, seen.clone()));
    // One mount for all nodes: nginx balances one path over them.
    let (addr, task) = serve(&holdfast, "/realtime").await;
    Node {
        holdfast,
        store,
        addr,
        task,
    }
}

async fn three_nodes() -> (Vec<Node>, Nginx, Shared) {
    let cluster = MemoryCluster::new();
    let seen = Shared::default();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&cluster, &seen).await);
    }
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = Nginx::start_balanced(Profile::WellConfigured, &upstreams).await;
    (nodes, nginx, seen)
}

/// Three nodes, and a client connected through nginx on `transport`.
async fn connected(
    transport: TransportKind,
) -> (Vec<Node>, Nginx, Shared, holdfast::client::Connection) {
    let (nodes, nginx, seen) = three_nodes().await;
    let connection = client(&nginx.url())
        .header("authorization", "Bearer ada")
        .transport(transport)
        .connect()
        .await
        .expect("connect");
    (nodes, nginx, seen, connection)
}

/// The node holding the one session of the test.
fn owner(nodes: &[Node]) -> Option<usize> {
    nodes
        .iter()
        .position(|node| node.holdfast.session_count() > 0)
}

fn processed_once(seen: &Shared, count: u32) {
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for n in 0..count {
        assert_eq!(
            seen.processed.get(&n),
            Some(&1),
            "message {n} processed (continued {}, moved {})",
            seen.continued,
            seen.moved
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_three_nodes_is_exactly_once_on_every_transport() {
    for transport in [
        TransportKind::WebSocket,
        TransportKind::Sse,
        TransportKind::LongPoll,
    ] {
        let (nodes, _nginx, seen, mut connection) = connected(transport).await;
        exchange(&mut connection, 300, |_| {}).await;
        processed_once(&seen, 300);
        let holding: usize = nodes.iter().map(|node| node.holdfast.session_count()).sum();
        assert_eq!(holding, 1, "{transport:?}: one node owns the session");
        assert_eq!(seen.lock().map(|s| s.continued).unwrap_or(9), 0);
        connection.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_session_is_taken_over_and_its_writes_are_fenced() {
    // (A WebSocket stays on the zombie, which nothing contradicts until a
    // request reaches another node: HTTP transports spread their requests.)
    for transport in [TransportKind::Sse, TransportKind::LongPoll] {
        let (nodes, _nginx, seen, mut connection) = connected(transport).await;
        exchange(&mut connection, 50, |_| {}).await;
        let first = owner(&nodes).expect("a node owns the session");
        // The owner "dies" as the others see it (its liveness key gone)
        // but keeps running: a zombie, whose writes must be refused once
        // another node claimed the session.
        nodes[first].store.die();
        let mut numbers = 50..;
        let exchanged = exchange_from(&mut connection, &mut numbers, 250).await;
        let now = owner(&nodes).expect("a node owns the session");
        assert_ne!(now, first, "{transport:?}: another node took it over");
        assert_eq!(
            nodes[first].holdfast.session_count(),
            0,
            "{transport:?}: the zombie let go of it (fenced)"
        );
        {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            assert_eq!(seen.continued, 1, "{transport:?}: one takeover");
            for n in 0..exchanged {
                let times = seen.processed.get(&n).copied().unwrap_or(0);
                assert!(
                    (1..=2).contains(&times),
                    "message {n} processed {times} times"
                );
            }
            // Messages the zombie took after its last stored progress come
            // again on the new owner (its answers to them were refused): the
            // client still gets each echo once, as `exchange` checked.
        }
        connection.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_moves_sessions_to_other_nodes_losing_and_doubling_nothing() {
    for transport in [
        TransportKind::WebSocket,
        TransportKind::Sse,
        TransportKind::LongPoll,
    ] {
        let (nodes, _nginx, seen, mut connection) = connected(transport).await;
        exchange(&mut connection, 50, |_| {}).await;
        let first = owner(&nodes).expect("a node owns the session");
        let handing = {
            let holdfast = nodes[first].holdfast.clone();
            tokio::spawn(async move { holdfast.hand_over().await })
        };
        let mut numbers = 50..;
        exchange_from(&mut connection, &mut numbers, 250).await;
        tokio::time::timeout(Duration::from_secs(10), handing)
            .await
            .expect("hand-over finished in time")
            .expect("hand-over task");
        assert_eq!(nodes[first].holdfast.session_count(), 0);
        assert!(owner(&nodes).is_some_and(|now| now != first));
        processed_once(&seen, 300);
        {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            assert_eq!(
                seen.continued, 1,
                "{transport:?}: continued on another node"
            );
            assert_eq!(
                seen.moved, 1,
                "{transport:?}: the old handler was told it moved"
            );
            assert_eq!(
                seen.continued_as,
                vec![(Some("ada".to_owned()), Some("Bearer ada".to_owned()))],
                "{transport:?}: the new handler knows who the client is"
            );
        }
        connection.close().await;
    }
}

/// [`exchange`] for `count` more messages, numbered from `numbers`:
/// returns the highest number exchanged + 1.
async fn exchange_from(
    connection: &mut holdfast::client::Connection,
    numbers: &mut std::ops::RangeFrom<u32>,
    count: u32,
) -> u32 {
    let first = numbers.start;
    let mut expected = first;
    let mut sent = first;
    let end = first + count;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while expected < end {
        while sent < end && sent < expected + 64 {
            connection.send(numbered(sent)).await.expect("send");
            sent += 1;
        }
        let event = tokio::time::timeout_at(deadline, connection.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out at {expected}/{end}"))
            .expect("the connection ended early");
        match event {
            holdfast::client::Event::Message(message) => {
                assert_eq!(
                    number_of(&message),
                    expected,
                    "echo out of order or doubled"
                );
                expected += 1;
            }
            holdfast::client::Event::Closed(closed) => panic!("session closed: {closed:?}"),
            _ => {}
        }
    }
    numbers.start = end;
    end
}
