//! Topics: one publish reaches every subscribed session once, in one order
//! for everyone — on one node, and on three nodes sharing a
//! `MemoryCluster` behind a real nginx, across a node's death and a
//! hand-over. `redis/tests/` checks the Redis broker itself, and the
//! chat tests the same on real processes and Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::client_support::*;
use crate::nginx_support::{Nginx, Profile};
use holdfast::client::{Connection, Event, Message, TransportKind};
use holdfast::server::store::{MemoryCluster, MemoryStore};
use holdfast::server::{
    Holdfast, MAX_TOPICS_PER_SESSION, PresenceEvent, Session, SlowConsumer, Topic, TopicError,
};
use tokio::task::JoinHandle;

/// Sessions whose handler ran again on another node (after a takeover or
/// a hand-over). Only the three-node test moves sessions.
static MOVED: AtomicUsize = AtomicUsize::new(0);

/// Of those, the subscriptions that resumed the session's place in the
/// topic.
static RESUMED: AtomicUsize = AtomicUsize::new(0);

/// Of those, the sessions that moved on again before their handler
/// subscribed (a node that died takes a session over as well as any).
static LEFT: AtomicUsize = AtomicUsize::new(0);

/// What every handler does: subscribe its session to "room" (as the name
/// its client sends first, on a new session), say so, then publish what
/// the client sends.
async fn member(session: Session) {
    let Ok(room) = session.topic("room") else {
        return;
    };
    // Tests read as fast as they can; a burst must not close them.
    let room = room.with_slow_consumer(SlowConsumer::Wait);
    let name = if session.continued() {
        MOVED.fetch_add(1, Ordering::Relaxed);
        String::new()
    } else {
        match session.recv().await.as_ref().and_then(Message::as_text) {
            Some(name) => name.to_owned(),
            None => return,
        }
    };
    match room.subscribe_as(&session, name).await {
        Ok(subscribed) if subscribed.resumed => {
            RESUMED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(TopicError::Closed) if session.continued() => {
            LEFT.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => return,
    }
    if !session.continued() && session.send("subscribed").await.is_err() {
        return;
    }
    while let Some(message) = session.recv().await {
        if room.publish(message).await.is_err() {
            return;
        }
    }
}

struct Node {
    holdfast: Holdfast,
    store: Option<Arc<MemoryStore>>,
    addr: SocketAddr,
    /// Its holdfast URL.
    url: String,
    task: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node serving its topics at `mount` (a cluster's nodes share one, so
/// that nginx balances one path over them).
async fn node(store: Option<Arc<MemoryStore>>, mount: &str) -> Node {
    node_with_history(store, 10_000, mount).await
}

async fn node_with_history(store: Option<Arc<MemoryStore>>, history: usize, mount: &str) -> Node {
    let mut config = quick_server_config();
    config.topic_history = history;
    let mut builder = Holdfast::builder().config(config);
    if let Some(store) = &store {
        builder = builder.store(store.clone());
    }
    let holdfast = builder.on_session(member);
    let (addr, task) = serve(&holdfast, mount).await;
    Node {
        holdfast,
        store,
        addr,
        url: format!("http://{addr}{mount}"),
        task,
    }
}

/// A client on `transport` at `url`, subscribed as `name`.
async fn subscriber(url: &str, transport: TransportKind, name: &str) -> Connection {
    let mut connection = client(url)
        .transport(transport)
        .connect()
        .await
        .expect("connect");
    connection.send(name.to_owned()).await.expect("send name");
    wait_for(&mut connection, |event| match event {
        Event::Message(message) if message.as_text() == Some("subscribed") => Some(()),
        _ => None,
    })
    .await;
    connection
}

/// The first `count` topic messages a client gets.
async fn received(connection: &mut Connection, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = wait_for(connection, |event| match event {
            Event::Message(message) => Some(message.as_text().unwrap_or_default().to_owned()),
            Event::Closed(closed) => panic!("session closed: {closed:?}"),
            _ => None,
        })
        .await;
        seen.push(message);
    }
    seen
}

/// The topic's messages a client gets until it has seen `last`.
async fn received_until(connection: &mut Connection, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, connection.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} messages", seen.len()))
            .expect("the connection ended");
        match event {
            Event::Message(message) => {
                let text = message.as_text().unwrap_or_default().to_owned();
                let done = text == last;
                seen.push(text);
                if done {
                    return seen;
                }
            }
            Event::Closed(closed) => panic!("session closed: {closed:?}"),
            _ => {}
        }
    }
}

/// `got` is `order` from some point to its end: nothing missed after the
/// first message, nothing twice, nothing out of order.
fn is_a_suffix(got: &[String], order: &[String], who: &str) {
    let first = got.first().unwrap_or_else(|| panic!("{who}: got nothing"));
    let start = order
        .iter()
        .position(|m| m == first)
        .unwrap_or_else(|| panic!("{who}: {first:?} was never published"));
    assert_eq!(
        got,
        &order[start..],
        "{who}: not the published order from {first:?} on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_every_subscriber_gets_every_message_once_in_one_order() {
    let node = node(None, &unique_mount()).await;
    let url = node.url.clone();
    let room = node.holdfast.topic("room").expect("topic");
    let mut presence = room.watch_presence();
    let mut clients = Vec::new();
    for (transport, name) in [
        (TransportKind::WebSocket, "ws"),
        (TransportKind::Sse, "sse"),
        (TransportKind::LongPoll, "poll"),
    ] {
        clients.push(subscriber(&url, transport, name).await);
    }
    // Every client publishes (through its handler), all at once.
    for (i, connection) in clients.iter().enumerate() {
        for n in 0..100 {
            connection.send(format!("c{i}:{n}")).await.expect("publish");
        }
    }
    let mut orders = Vec::new();
    for connection in &mut clients {
        orders.push(received(connection, 300).await);
    }
    let mut distinct = orders[0].clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 300, "every message, once");
    for order in &orders[1..] {
        assert_eq!(order, &orders[0], "one order for everyone");
    }
    for i in 0..3 {
        let mine: Vec<&String> = orders[0]
            .iter()
            .filter(|m| m.starts_with(&format!("c{i}:")))
            .collect();
        let sent: Vec<String> = (0..100).map(|n| format!("c{i}:{n}")).collect();
        assert_eq!(
            mine,
            sent.iter().collect::<Vec<_>>(),
            "a publisher's order kept"
        );
    }
    // Presence: three members, by name; one leaves when its session ends.
    let mut names: Vec<String> = room
        .members()
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.info)
        .collect();
    names.sort();
    assert_eq!(names, ["poll", "sse", "ws"]);
    // This node's watch heard the three join (a watch reports changes
    // from what it saw: follow it before the leave).
    tokio::time::timeout(DEADLINE, async {
        while presence.members().len() < 3 {
            presence.next().await.expect("presence");
        }
    })
    .await
    .expect("three joins in time");
    let leaving = clients.pop().expect("a client");
    leaving.close().await;
    let left = tokio::time::timeout(DEADLINE, async {
        loop {
            match presence.next().await {
                Some(PresenceEvent::Leave(member)) => return member.info,
                Some(_) => {}
                None => panic!("presence stopped"),
            }
        }
    })
    .await
    .expect("a leave in time");
    assert_eq!(left, "poll");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_every_queue_is_caught_up_from_the_log_in_order() {
    let node = node(None, &unique_mount()).await;
    let url = node.url.clone();
    let mut connection = subscriber(&url, TransportKind::WebSocket, "reader").await;
    let room = node.holdfast.topic("room").expect("topic");
    // More than the broker's queue to this node (4096) and the hub's
    // (1024) hold: events are dropped, the hub reads the log instead.
    let count = 6000;
    for n in 0..count {
        room.publish(format!("{n}")).await.expect("publish");
    }
    let got = received(&mut connection, count).await;
    let expected: Vec<String> = (0..count).map(|n| n.to_string()).collect();
    assert!(got == expected, "every message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_further_behind_than_the_history_closes_subscribers_rather_than_skip() {
    let node = node_with_history(None, 50, &unique_mount()).await;
    let url = node.url.clone();
    let mut connection = subscriber(&url, TransportKind::WebSocket, "reader").await;
    let room = node.holdfast.topic("room").expect("topic");
    let count = 20_000;
    for n in 0..count {
        room.publish(format!("{n}")).await.expect("publish");
    }
    // Either the node kept up (every message), or it fell behind past the
    // history and the session is closed with 4429: never a gap.
    let mut next = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let closed = loop {
        let event = tokio::time::timeout_at(deadline, connection.next_event())
            .await
            .expect("an event in time");
        match event {
            Some(Event::Message(message)) => {
                assert_eq!(message.as_text(), Some(next.to_string().as_str()), "no gap");
                next += 1;
                if next == count {
                    break None;
                }
            }
            Some(Event::Closed(closed)) => break Some(closed),
            Some(_) => {}
            None => panic!("ended without a close"),
        }
    };
    if let Some(closed) = closed {
        assert_eq!(closed.code, holdfast::client::CloseCode::TOO_SLOW);
    }
}

/// Publishes `count` messages named `prefix-n` from three tasks, one per
/// topic handle, and returns them in the topic's order.
async fn publish_from(rooms: Vec<Topic>, prefix: &str, count: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for (i, room) in rooms.into_iter().enumerate() {
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut published = Vec::new();
            for n in (i..count).step_by(3) {
                let text = format!("{prefix}-{n}");
                let position = room.publish(text.clone()).await.expect("publish");
                published.push((position.offset, text));
                // Let deliveries interleave with publishing.
                tokio::task::yield_now().await;
            }
            published
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("publisher"));
    }
    all.sort();
    let offsets: Vec<u64> = all.iter().map(|(offset, _)| *offset).collect();
    let mut distinct = offsets.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), offsets.len(), "one offset per message");
    all.into_iter().map(|(_, text)| text).collect()
}

/// A session handed over to a node whose hub is behind it in the topic
/// (that node's events stopped: it reads the log once a second) resumes
/// right after what it got, not from where that hub stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_to_a_node_behind_it_in_the_topic_gets_nothing_twice() {
    let cluster = MemoryCluster::new();
    let mount = unique_mount();
    let nodes = [
        node(Some(cluster.node()), &mount).await,
        node(Some(cluster.node()), &mount).await,
    ];
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = Nginx::start_balanced(Profile::WellConfigured, &upstreams).await;
    // Both nodes' hubs run (each has heard of the subscriber)...
    let rooms = nodes
        .each_ref()
        .map(|node| node.holdfast.topic("room").expect("topic"));
    let mut watches = rooms.each_ref().map(Topic::watch_presence);
    let mut connection = subscriber(&nginx.url_to(&mount), TransportKind::WebSocket, "mover").await;
    for watch in &mut watches {
        tokio::time::timeout(DEADLINE, async {
            while watch.members().is_empty() {
                watch.next().await.expect("presence");
            }
        })
        .await
        .expect("the hub heard of the subscriber");
    }
    let home = usize::from(nodes[0].holdfast.session_count() == 0);
    let (home, other) = (&nodes[home], &nodes[1 - home]);
    let [room, behind] = if home.addr == nodes[0].addr {
        rooms
    } else {
        let [a, b] = rooms;
        [b, a]
    };
    // ...then the other one hears nothing more (it reads the log once a
    // second).
    if let Some(store) = &other.store {
        store.die();
    }
    let published: Vec<String> = (0..20).map(|n| format!("m{n}")).collect();
    for text in &published {
        room.publish(text.clone()).await.expect("publish");
    }
    assert_eq!(received(&mut connection, 20).await, published);

    // Handed over before the other hub's next read of the log.
    home.holdfast.hand_over().await;
    behind.publish("after").await.expect("publish");
    let got = received_until(&mut connection, "after").await;
    assert_eq!(got, ["after"], "nothing it got comes again");
    assert_eq!(other.holdfast.session_count(), 1, "continued there");
    drop(nginx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_order_across_a_nodes_death_and_a_hand_over() {
    let cluster = MemoryCluster::new();
    let mut nodes = Vec::new();
    let mount = unique_mount();
    for _ in 0..3 {
        nodes.push(node(Some(cluster.node()), &mount).await);
    }
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = Nginx::start_balanced(Profile::WellConfigured, &upstreams).await;
    let url = nginx.url_to(&mount);
    // HTTP transports: their requests spread over the nodes, so a dead
    // node's sessions are taken over at the next request.
    let mut clients = Vec::new();
    for (transport, name) in [
        (TransportKind::Sse, "sse"),
        (TransportKind::LongPoll, "poll-1"),
        (TransportKind::LongPoll, "poll-2"),
    ] {
        clients.push(subscriber(&url, transport, name).await);
    }
    let rooms: Vec<Topic> = nodes
        .iter()
        .map(|node| node.holdfast.topic("room").expect("topic"))
        .collect();
    let mut order = publish_from(rooms.clone(), "before", 150).await;

    // The node owning most sessions dies (as the others see it) while
    // messages are being published (a dead node's `publish` still reaches
    // the shared log: it is a zombie, not gone).
    let dead = (0..3)
        .max_by_key(|&i| nodes[i].holdfast.session_count())
        .unwrap_or(0);
    let during = tokio::spawn(async move { publish_from(rooms, "during-death", 300).await });
    tokio::task::yield_now().await;
    if let Some(store) = &nodes[dead].store {
        store.die();
    }
    order.extend(during.await.expect("publishers"));
    let rooms: Vec<Topic> = nodes
        .iter()
        .map(|node| node.holdfast.topic("room").expect("topic"))
        .collect();

    // A rolling restart of another node: its sessions are handed over.
    let handing = (0..3).find(|&i| i != dead).unwrap_or(0);
    let hand_over = {
        let holdfast = nodes[handing].holdfast.clone();
        tokio::spawn(async move { holdfast.hand_over().await })
    };
    let last_node: Vec<Topic> = (0..3)
        .filter(|&i| i != dead && i != handing)
        .map(|i| rooms[i].clone())
        .collect();
    order.extend(publish_from(last_node, "after-hand-over", 150).await);
    let last = order.last().cloned().expect("messages");
    tokio::time::timeout(Duration::from_secs(15), hand_over)
        .await
        .expect("hand-over in time")
        .expect("hand-over task");

    for (i, connection) in clients.iter_mut().enumerate() {
        let got = received_until(connection, &last).await;
        is_a_suffix(&got, &order, &format!("client {i}"));
        assert_eq!(
            got.len(),
            order.len(),
            "client {i} subscribed before the first message: gets them all"
        );
    }
    assert_eq!(nodes[handing].holdfast.session_count(), 0, "handed over");
    // Which sessions move depends on where they were: the dead node's
    // polling sessions are claimed by the next poll that reaches another
    // node, but its SSE session (if it has it) may stay on its stream there;
    // the handing node may hold none. At least one moves either way, and a
    // moved session continues on another node at its client's next request,
    // which may come after the client has read everything: wait (bounded)
    // for the handlers there. Every session that moved must have resumed its
    // place in the topic, unless it moved on again first.
    let settled = tokio::time::timeout(DEADLINE, async {
        loop {
            let moved = MOVED.load(Ordering::Relaxed);
            let left = LEFT.load(Ordering::Relaxed);
            if moved > left && RESUMED.load(Ordering::Relaxed) + left == moved {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (moved, resumed, left) = (
        MOVED.load(Ordering::Relaxed),
        RESUMED.load(Ordering::Relaxed),
        LEFT.load(Ordering::Relaxed),
    );
    assert!(
        settled.is_ok(),
        "{moved} sessions moved to other nodes, {resumed} resumed their place in the topic, \
         {left} moved on before subscribing"
    );
    drop(nginx);
}

/// A handler that checks the topic limits and reports each as a line.
async fn limits(session: Session) {
    let mut report = Vec::new();
    for bad in ["", "a b", "{slot}", "é"] {
        let refused = matches!(session.topic(bad), Err(TopicError::InvalidName(_)));
        report.push(format!("name {bad:?} refused: {refused}"));
    }
    let long = "x".repeat(holdfast::server::store::MAX_TOPIC_NAME + 1);
    let refused = matches!(session.topic(&long), Err(TopicError::InvalidName(_)));
    report.push(format!("long name refused: {refused}"));
    if let Ok(room) = session.topic("limits") {
        let max = quick_server_config().session.max_message;
        let refused = matches!(
            room.publish(vec![0u8; max + 1]).await,
            Err(TopicError::TooBig { .. })
        );
        report.push(format!("big message refused: {refused}"));
        let info = "i".repeat(holdfast::server::store::MAX_MEMBER_INFO + 1);
        let refused = matches!(
            room.subscribe_as(&session, info).await,
            Err(TopicError::InfoTooLong)
        );
        report.push(format!("long info refused: {refused}"));
    }
    // With a store, a session's topics are bounded (their cursors are
    // stored with every write).
    let mut subscribed = 0;
    let mut too_many = false;
    for n in 0..=MAX_TOPICS_PER_SESSION {
        let Ok(topic) = session.topic(&format!("t{n}")) else {
            break;
        };
        match topic.subscribe(&session).await {
            Ok(_) => subscribed += 1,
            Err(TopicError::TooManyTopics) => too_many = true,
            Err(_) => break,
        }
    }
    report.push(format!("subscribed {subscribed}, then refused: {too_many}"));
    let _ = session.send(report.join("\n")).await;
    while session.recv().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_limits_give_clear_errors() {
    let store = MemoryCluster::new().node();
    let holdfast = Holdfast::builder()
        .config(quick_server_config())
        .store(store)
        .on_session(limits);
    let mount = unique_mount();
    let (addr, server) = serve(&holdfast, &mount).await;
    let url = format!("http://{addr}{mount}");
    let mut connection = client(&url).connect().await.expect("connect");
    let report = wait_for(&mut connection, |event| match event {
        Event::Message(message) => message.as_text().map(str::to_owned),
        _ => None,
    })
    .await;
    let expected = [
        "name \"\" refused: true",
        "name \"a b\" refused: true",
        "name \"{slot}\" refused: true",
        "name \"é\" refused: true",
        "long name refused: true",
        "big message refused: true",
        "long info refused: true",
        &format!("subscribed {MAX_TOPICS_PER_SESSION}, then refused: true"),
    ]
    .join("\n");
    assert_eq!(report, expected);
    connection.close().await;
    server.abort();
}
