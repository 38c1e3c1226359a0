//! Topics and presence through Redis, on one server and on a cluster:
//! offsets with no holes from concurrent publishers, every subscribed node
//! sees every offset in order, the history bound, reads after a gap,
//! resets after a lost subscriber connection, presence across nodes and
//! after a node's death, unsubscribe, a new epoch after Redis lost the log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_protocol::Message;
use holdfast_redis::RedisStore;
use holdfast_server::store::{
    Broker, MAX_MEMBER_INFO, Member, Position, Store, StoreError, TopicEvent,
};
use holdfast_testkit::{RedisCluster, RedisServer};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

async fn node(url: &str, prefix: &str, history: usize) -> Arc<RedisStore> {
    match RedisStore::builder(url)
        .prefix(prefix)
        .node_ttl(Duration::from_millis(400))
        .command_timeout(Duration::from_millis(500))
        .topic_history(history)
        .connect()
        .await
    {
        Ok(store) => store,
        Err(error) => panic!("connect to {url}: {error}"),
    }
}

async fn ok<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error}"),
    }
}

async fn next(events: &mut mpsc::Receiver<TopicEvent>) -> TopicEvent {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event queue closed"),
        Err(_) => panic!("no topic event within {WAIT:?}"),
    }
}

/// The next event that is not a presence change.
async fn next_message(events: &mut mpsc::Receiver<TopicEvent>) -> TopicEvent {
    loop {
        let event = next(events).await;
        if !matches!(event, TopicEvent::Presence { .. }) {
            return event;
        }
    }
}

fn member(id: &str) -> Member {
    Member {
        id: id.to_owned(),
        info: format!("{id} ✓"),
    }
}

/// Two nodes publish 300 messages each at the same time (one text, one
/// binary): the offsets are 1..=600 with no hole and no double, each
/// publisher's in increasing order; three subscribed nodes each see all
/// 600 in offset order, each with the message its publisher got that
/// offset for, the kind kept.
pub async fn concurrent_publishers(url: &str, prefix: &str) {
    let nodes = [
        node(url, prefix, 1000).await,
        node(url, prefix, 1000).await,
        node(url, prefix, 1000).await,
    ];
    let brokers: Vec<Arc<dyn Broker>> = nodes.iter().map(|n| n.broker()).collect();
    assert!(Arc::ptr_eq(&brokers[0], &nodes[0].broker()), "one broker");
    let mut queues = Vec::new();
    for broker in &brokers {
        queues.push(broker.events());
        ok("subscribe", broker.subscribe("room").await).await;
    }
    const EACH: u64 = 300;
    let publish = |broker: Arc<dyn Broker>, binary: bool| async move {
        let mut got = Vec::new();
        for n in 0..EACH {
            let message = if binary {
                Message::binary(vec![0xff, 0, (n % 256) as u8, b':'])
            } else {
                Message::text(format!("text {n} é:"))
            };
            let position = ok("publish", broker.publish("room", &message).await).await;
            got.push((position, message));
        }
        got
    };
    let (from_a, from_b) = tokio::join!(
        publish(brokers[0].clone(), false),
        publish(brokers[1].clone(), true)
    );
    let mut by_offset = BTreeMap::new();
    let epoch = from_a[0].0.epoch;
    assert_ne!(epoch, 0);
    for got in [&from_a, &from_b] {
        assert!(got.windows(2).all(|w| w[0].0.offset < w[1].0.offset));
        for (position, message) in got {
            assert_eq!(position.epoch, epoch);
            assert!(
                by_offset.insert(position.offset, message.clone()).is_none(),
                "offset {} twice",
                position.offset
            );
        }
    }
    let offsets: Vec<u64> = by_offset.keys().copied().collect();
    assert_eq!(offsets, (1..=2 * EACH).collect::<Vec<_>>());
    for (n, queue) in queues.iter_mut().enumerate() {
        for offset in 1..=2 * EACH {
            match next_message(queue).await {
                TopicEvent::Published {
                    topic,
                    position,
                    message,
                } => {
                    assert_eq!(&*topic, "room");
                    assert_eq!(position, Position { epoch, offset }, "node {n}");
                    assert_eq!(Some(&message), by_offset.get(&offset));
                }
                other => panic!("node {n}, offset {offset}: {other:?}"),
            }
        }
    }
    let range = ok("read", brokers[2].read("room", 0, 10_000).await).await;
    assert_eq!((range.epoch, range.first, range.last), (epoch, 1, 2 * EACH));
    assert_eq!(
        range.messages,
        by_offset.into_iter().collect::<Vec<_>>(),
        "the log holds what the events said"
    );
}

/// The log keeps the last `history` messages: `read` says where it starts
/// and ends; reads by offset after a gap, `max` honoured, `max = 0` only
/// says where the log stands; a log that does not exist.
pub async fn history_and_reads(url: &str, prefix: &str) {
    let a = node(url, prefix, 10).await;
    let broker = a.broker();
    let nothing = ok("read", broker.read("never", 0, 10).await).await;
    assert_eq!(
        (
            nothing.epoch,
            nothing.first,
            nothing.last,
            nothing.messages.len()
        ),
        (0, 1, 0, 0)
    );
    let message = |n: u64| Message::text(format!("m{n}"));
    let mut epoch = 0;
    for n in 1..=300 {
        let position = ok("publish", broker.publish("h", &message(n)).await).await;
        assert_eq!(position.offset, n);
        epoch = position.epoch;
    }
    let all = ok("read", broker.read("h", 0, 1000).await).await;
    assert_eq!((all.epoch, all.first, all.last), (epoch, 291, 300));
    let expected: Vec<(u64, Message)> = (291..=300).map(|n| (n, message(n))).collect();
    assert_eq!(all.messages, expected);
    // After a gap: from where the reader was, at most `max`.
    let some = ok("read", broker.read("h", 294, 3).await).await;
    assert_eq!(some.messages, expected[4..7].to_vec());
    let tail = ok("read", broker.read("h", 300, 10).await).await;
    assert!(tail.messages.is_empty());
    let stands = ok("read", broker.read("h", 0, 0).await).await;
    assert_eq!((stands.epoch, stands.first, stands.last), (epoch, 291, 300));
    assert!(stands.messages.is_empty());
    assert!(
        ok("read", broker.read("h", u64::MAX, 5).await)
            .await
            .messages
            .is_empty()
    );
    // Bad names never reach Redis.
    assert!(matches!(
        broker.publish("a{b}", &message(1)).await,
        Err(StoreError::Unavailable(_))
    ));
}

/// A node that missed messages (not subscribed for a while) sees the jump
/// in offsets and reads the gap from the log.
pub async fn read_after_a_gap(url: &str, prefix: &str) {
    let a = node(url, prefix, 100).await;
    let b = node(url, prefix, 100).await;
    let (pa, pb) = (a.broker(), b.broker());
    let mut events = pb.events();
    ok("subscribe", pb.subscribe("gap").await).await;
    let message = |n: u64| Message::text(format!("g{n}"));
    ok("publish", pa.publish("gap", &message(1)).await).await;
    let TopicEvent::Published { position, .. } = next_message(&mut events).await else {
        panic!("not a message");
    };
    assert_eq!(position.offset, 1);
    ok("unsubscribe", pb.unsubscribe("gap").await).await;
    for n in 2..=4 {
        ok("publish", pa.publish("gap", &message(n)).await).await;
    }
    ok("subscribe", pb.subscribe("gap").await).await;
    ok("publish", pa.publish("gap", &message(5)).await).await;
    let TopicEvent::Published { position, .. } = next_message(&mut events).await else {
        panic!("not a message");
    };
    assert_eq!(
        position.offset, 5,
        "2..=4 were published while unsubscribed"
    );
    let missed = ok("read", pb.read("gap", 1, 3).await).await;
    assert_eq!(
        missed.messages,
        (2..=4).map(|n| (n, message(n))).collect::<Vec<_>>()
    );
}

/// After unsubscribe a node gets no more events of the topic (shown by the
/// next event being another topic's message published after).
pub async fn unsubscribe_stops_events(url: &str, prefix: &str) {
    let a = node(url, prefix, 100).await;
    let broker = a.broker();
    let mut events = broker.events();
    ok("subscribe", broker.subscribe("u1").await).await;
    ok("subscribe", broker.subscribe("u2").await).await;
    ok("publish", broker.publish("u1", &Message::text("1")).await).await;
    assert!(matches!(
        next_message(&mut events).await,
        TopicEvent::Published { topic, .. } if &*topic == "u1"
    ));
    ok("unsubscribe", broker.unsubscribe("u1").await).await;
    for _ in 0..20 {
        ok("publish", broker.publish("u1", &Message::text("x")).await).await;
    }
    ok("publish", broker.publish("u2", &Message::text("2")).await).await;
    assert!(matches!(
        next_message(&mut events).await,
        TopicEvent::Published { topic, .. } if &*topic == "u2"
    ));
    assert!(events.try_recv().is_err(), "nothing after");
}

/// Kills every pub/sub connection on `masters` (the subscriber
/// connections of every node), as a network cut would.
async fn kill_subscribers(masters: &[&RedisServer]) {
    for master in masters {
        if let Err(error) = master.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await {
            panic!("CLIENT KILL: {error}");
        }
    }
}

/// The subscriber connection is killed: the node gets `Reset`, and events
/// flow again after it (messages published after the reset arrive).
pub async fn reset_after_the_subscriber_is_killed(
    url: &str,
    prefix: &str,
    masters: &[&RedisServer],
) {
    let a = node(url, prefix, 100).await;
    let broker = a.broker();
    let mut events = broker.events();
    ok("subscribe", broker.subscribe("k").await).await;
    ok(
        "publish",
        broker.publish("k", &Message::text("before")).await,
    )
    .await;
    assert!(matches!(
        next_message(&mut events).await,
        TopicEvent::Published { .. }
    ));
    kill_subscribers(masters).await;
    assert_eq!(next_message(&mut events).await, TopicEvent::Reset);
    // Events flow again: a message published now arrives. (A cluster
    // client may report several reconnections, each one a reset: then the
    // message may have been published before the last resubscription, and
    // another one is published.)
    let deadline = Instant::now() + WAIT;
    'resumed: loop {
        assert!(Instant::now() < deadline, "no event after the reset");
        let position = ok(
            "publish",
            broker.publish("k", &Message::text("after")).await,
        )
        .await;
        loop {
            match next_message(&mut events).await {
                TopicEvent::Published { position: got, .. } if got == position => break 'resumed,
                TopicEvent::Published { position: got, .. } => {
                    assert!(got.offset < position.offset, "{got:?} after {position:?}");
                }
                TopicEvent::Reset => continue 'resumed,
                TopicEvent::Presence { .. } => {}
            }
        }
    }
}

/// Presence across nodes: each node's members are listed everywhere,
/// announced to subscribed nodes; only the node that added a member
/// removes it; info is bounded; a dead node's members disappear (and that
/// is announced) once its liveness key expired.
pub async fn presence(url: &str, prefix: &str) {
    let a = node(url, prefix, 100).await;
    let b = node(url, prefix, 100).await;
    let c = node(url, prefix, 100).await;
    let (pa, pb) = (a.broker(), b.broker());
    let mut events = pb.events();
    ok("subscribe", pb.subscribe("lobby").await).await;
    assert!(ok("members", pa.members("lobby").await).await.is_empty());
    assert_eq!(ok("read", pa.read("lobby", 0, 0).await).await.epoch, 0);
    ok("join", pa.join("lobby", &member("s1")).await).await;
    // Joining creates the log (as publishing does): it has an epoch, no
    // message yet, and the first publish keeps that epoch.
    let joined = ok("read", pa.read("lobby", 0, 0).await).await;
    assert_ne!(joined.epoch, 0);
    assert_eq!((joined.first, joined.last), (1, 0));
    assert_eq!(
        next(&mut events).await,
        TopicEvent::Presence {
            topic: Arc::from("lobby")
        }
    );
    ok("join", pb.join("lobby", &member("s2")).await).await;
    ok("join", c.broker().join("lobby", &member("s3")).await).await;
    let everyone = vec![member("s1"), member("s2"), member("s3")];
    assert_eq!(ok("members", pb.members("lobby").await).await, everyone);
    assert_eq!(ok("members", pa.members("lobby").await).await, everyone);
    // Another node's member: left alone.
    ok("leave", pb.leave("lobby", "s1").await).await;
    assert_eq!(ok("members", pa.members("lobby").await).await, everyone);
    // Updated info, same member.
    let renamed = Member {
        id: "s2".into(),
        info: "new name".into(),
    };
    ok("join", pb.join("lobby", &renamed).await).await;
    let listed = ok("members", pa.members("lobby").await).await;
    assert_eq!(listed, vec![member("s1"), renamed.clone(), member("s3")]);
    // The info bound.
    let long = Member {
        id: "s9".into(),
        info: "x".repeat(MAX_MEMBER_INFO + 1),
    };
    match pa.join("lobby", &long).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("1024"), "{m}"),
        other => panic!("a long info was not refused: {other:?}"),
    }
    let longest = Member {
        id: "s9".into(),
        info: "x".repeat(MAX_MEMBER_INFO),
    };
    ok("join", pa.join("lobby", &longest).await).await;
    ok("leave", pa.leave("lobby", "s9").await).await;
    ok("leave", pa.leave("lobby", "s1").await).await;
    assert_eq!(
        ok("members", pb.members("lobby").await).await,
        vec![renamed.clone(), member("s3")]
    );
    // Every announcement so far is read: frames on the channel are in
    // order, so once this message is here, nothing older is pending.
    let marker = ok(
        "publish",
        pa.publish("lobby", &Message::text("marker")).await,
    )
    .await;
    assert_eq!(
        marker,
        Position {
            epoch: joined.epoch,
            offset: 1
        }
    );
    loop {
        if let TopicEvent::Published { position, .. } = next(&mut events).await {
            if position == marker {
                break;
            }
        }
    }

    // c dies (dropped without leave: its liveness key expires).
    drop(c);
    let died = Instant::now();
    // The sweep of the subscribed node b notices and announces it.
    assert_eq!(
        next(&mut events).await,
        TopicEvent::Presence {
            topic: Arc::from("lobby")
        }
    );
    assert_eq!(
        ok("members", pa.members("lobby").await).await,
        vec![renamed]
    );
    assert!(
        died.elapsed() >= Duration::from_millis(200),
        "listed as dead before its liveness key could expire"
    );
}

fn cluster_masters(cluster: &RedisCluster) -> Vec<&RedisServer> {
    cluster.nodes().iter().collect()
}

async fn redis() -> RedisServer {
    RedisServer::start().await.unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn concurrent_publishers_one_server() {
    concurrent_publishers(&redis().await.url(), "tp").await;
}

#[tokio::test]
async fn history_and_reads_one_server() {
    let redis = redis().await;
    history_and_reads(&redis.url(), "th").await;
    // Redis holds about the history (MAXLEN ~), not every message, and
    // the keys carry the idle TTL (default 24 h).
    let len = redis.command(&["XLEN", "th:t:{h}:log"]).await;
    let len: u64 = len.ok().and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!((10..=110).contains(&len), "{len} entries kept");
    for key in ["th:t:{h}:log", "th:t:{h}:meta"] {
        let ttl = redis.command(&["TTL", key]).await;
        let ttl: i64 = ttl.ok().and_then(|t| t.parse().ok()).unwrap_or(-9);
        assert!((86_000..=86_400).contains(&ttl), "{key}: {ttl}");
    }
}

#[tokio::test]
async fn read_after_a_gap_one_server() {
    read_after_a_gap(&redis().await.url(), "tg").await;
}

#[tokio::test]
async fn unsubscribe_stops_events_one_server() {
    unsubscribe_stops_events(&redis().await.url(), "tu").await;
}

#[tokio::test]
async fn reset_after_the_subscriber_is_killed_one_server() {
    let redis = redis().await;
    reset_after_the_subscriber_is_killed(&redis.url(), "tk", &[&redis]).await;
}

#[tokio::test]
async fn presence_one_server() {
    let redis = redis().await;
    presence(&redis.url(), "pr").await;
    // The dead node's entry was removed from Redis, not only hidden.
    let left = redis.command(&["HKEYS", "pr:t:{lobby}:members"]).await;
    assert_eq!(left.ok().as_deref(), Some("s2"));
}

/// Redis restarts without persistence: the log is gone, the next publish
/// starts a new one with another epoch, from offset 1; subscribers get a
/// reset; members this node added are written back.
#[tokio::test]
async fn a_lost_log_comes_back_with_a_new_epoch() {
    let mut redis = redis().await;
    let a = node(&redis.url(), "te", 100).await;
    let broker = a.broker();
    let mut events = broker.events();
    ok("subscribe", broker.subscribe("e").await).await;
    ok("join", broker.join("e", &member("s1")).await).await;
    let mut before = Position::default();
    for _ in 0..3 {
        before = ok("publish", broker.publish("e", &Message::text("x")).await).await;
    }
    assert_eq!(before.offset, 3);
    redis.restart().await.unwrap_or_else(|e| panic!("{e}"));
    loop {
        if next(&mut events).await == TopicEvent::Reset {
            break;
        }
    }
    let deadline = Instant::now() + WAIT;
    let after = loop {
        if let Ok(position) = broker.publish("e", &Message::text("y")).await {
            break position;
        }
        assert!(Instant::now() < deadline, "publish does not work again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch);
    assert_ne!(after.epoch, 0);
    common::eventually("the member is written back", WAIT, || async {
        broker.members("e").await.ok() == Some(vec![member("s1")])
    })
    .await;
}

/// The event queue is bounded: thousands of events not read are dropped,
/// and the reader gets `Reset` before the next one; offsets it does get
/// are in order, with a jump only right after a reset.
#[tokio::test]
async fn a_full_queue_drops_and_resets() {
    let redis = redis().await;
    let a = node(&redis.url(), "tq", 100).await;
    let broker = a.broker();
    let mut events = broker.events();
    ok("subscribe", broker.subscribe("q").await).await;
    let total = 6000u64;
    let message = Message::text("q");
    let publishes = (0..total).map(|_| broker.publish("q", &message));
    for result in futures_join(publishes).await {
        ok("publish", result).await;
    }
    // The queue never holds more than its bound (4096; the channel's
    // capacity), so most of the 6000 were dropped. Read what it holds (the
    // forwarder may still be adding announcements that were in flight),
    // then one more message: a reset comes before it.
    assert!(events.len() <= 4096, "{} events queued", events.len());
    let mut got = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), events.recv()).await
    {
        got.push(event);
    }
    let last = ok("publish", broker.publish("q", &message).await).await;
    loop {
        let event = next(&mut events).await;
        let done = matches!(&event, TopicEvent::Published { position, .. } if *position == last);
        got.push(event);
        if done {
            break;
        }
    }
    let mut previous = 0;
    let mut resets = 0;
    let mut received = 0;
    let mut reset_since = false;
    for event in got {
        match event {
            TopicEvent::Reset => {
                resets += 1;
                reset_since = true;
            }
            TopicEvent::Published { position, .. } => {
                assert!(
                    position.offset == previous + 1 || reset_since && position.offset > previous,
                    "{} after {previous}",
                    position.offset
                );
                previous = position.offset;
                reset_since = false;
                received += 1;
            }
            TopicEvent::Presence { .. } => {}
        }
    }
    assert!(resets >= 1, "events were dropped but no reset came");
    assert!(
        received <= total,
        "nothing was dropped: the test proves nothing"
    );
}

/// Runs futures concurrently, in batches (the client pipelines them).
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    for future in futures {
        batch.push(future);
        if batch.len() == 500 {
            out.extend(futures_util::future::join_all(std::mem::take(&mut batch)).await);
        }
    }
    out.extend(futures_util::future::join_all(batch).await);
    out
}

/// Everything above on a 3-master cluster: sharded pub/sub (the topic's
/// channel is subscribed on its slot's master only), scripts on one slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_on_a_cluster() {
    let cluster = RedisCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.url();
    concurrent_publishers(&url, "ctp").await;
    history_and_reads(&url, "cth").await;
    read_after_a_gap(&url, "ctg").await;
    unsubscribe_stops_events(&url, "ctu").await;
    reset_after_the_subscriber_is_killed(&url, "ctk", &cluster_masters(&cluster)).await;
    presence(&url, "cpr").await;

    // Sharded: only the slot's master has subscribers on the channel.
    let a = node(&url, "cts", 100).await;
    let b = node(&url, "cts", 100).await;
    for store in [&a, &b] {
        ok("subscribe", store.broker().subscribe("s").await).await;
    }
    let channel = "cts:t:{s}:events";
    let mut counts = Vec::new();
    for master in cluster.nodes() {
        let reply = master.command(&["PUBSUB", "SHARDNUMSUB", channel]).await;
        let count = reply
            .ok()
            .and_then(|r| r.lines().nth(1).and_then(|n| n.parse::<u64>().ok()));
        counts.push(count.unwrap_or(0));
    }
    counts.sort_unstable();
    assert_eq!(counts, [0, 0, 2], "subscribers per master");
}

/// Resharding moves a topic's slot to another master: Redis drops the
/// sharded subscriptions of every node without closing connections. Both
/// subscribed nodes get `Reset` and receive again through the new master
/// (each node checks its own subscriptions: one node subscribing again
/// does not hide that the other one has not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_subscriptions_follow_their_slot_to_another_master() {
    let cluster = RedisCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.url();
    let a = node(&url, "mv", 100).await;
    // Each node checks its subscriptions every second from its start: b
    // checks half a second after a, when a may be subscribed again on the
    // new master (which a check counting every node's subscribers, such as
    // PUBSUB SHARDNUMSUB, would take for b's).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = node(&url, "mv", 100).await;
    let mut queues = Vec::new();
    for store in [&a, &b] {
        let broker = store.broker();
        queues.push(broker.events());
        ok("subscribe", broker.subscribe("m").await).await;
    }
    let channel = "mv:t:{m}:events";
    let nodes = cluster.nodes();
    let slot = nodes[0]
        .command(&["CLUSTER", "KEYSLOT", channel])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut ids = Vec::new();
    let mut owner = None;
    for (n, node) in nodes.iter().enumerate() {
        ids.push(
            node.command(&["CLUSTER", "MYID"])
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let count = node.command(&["PUBSUB", "SHARDNUMSUB", channel]).await;
        if count.ok().is_some_and(|c| c.ends_with("\n2")) {
            owner = Some(n);
        }
    }
    let Some(src) = owner else {
        panic!("no master holds both subscriptions to {channel}");
    };
    // The slot holds no key yet (nothing published): it moves at once.
    let dst = (src + 1) % nodes.len();
    let mut steps = vec![(dst, "IMPORTING", src), (src, "MIGRATING", dst)];
    for n in [dst, src, (src + 2) % nodes.len()] {
        steps.push((n, "NODE", dst));
    }
    for (n, how, id) in steps {
        let command = ["CLUSTER", "SETSLOT", slot.as_str(), how, ids[id].as_str()];
        if let Err(error) = nodes[n].command(&command).await {
            panic!("{command:?}: {error}");
        }
    }
    for queue in &mut queues {
        assert_eq!(next_message(queue).await, TopicEvent::Reset);
    }
    common::eventually("both nodes subscribed on the new master", WAIT, || async {
        let count = nodes[dst]
            .command(&["PUBSUB", "SHARDNUMSUB", channel])
            .await;
        count.ok().is_some_and(|c| c.ends_with("\n2"))
    })
    .await;
    let position = ok(
        "publish",
        a.broker().publish("m", &Message::text("moved")).await,
    )
    .await;
    for queue in &mut queues {
        loop {
            match next_message(queue).await {
                TopicEvent::Published { position: got, .. } => {
                    assert_eq!(got, position);
                    break;
                }
                // A check that ran while the other node was subscribing.
                TopicEvent::Reset => {}
                TopicEvent::Presence { .. } => unreachable!("skipped"),
            }
        }
    }
}

/// A node that only seemed dead (its liveness key gone for a moment, as
/// after a long pause) has its members removed by another node's listing;
/// its heartbeat brings the key back and its keeper writes its members
/// back (here every half second: topic_ttl 2 s), and keeps the topic's keys
/// from expiring while they are there.
#[tokio::test]
async fn members_removed_while_a_node_seemed_dead_come_back() {
    let redis = redis().await;
    let url = redis.url();
    let a = RedisStore::builder(&url)
        .prefix("kp")
        .node_ttl(Duration::from_millis(400))
        .topic_ttl(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = node(&url, "kp", 100).await;
    ok("join", a.broker().join("k", &member("s1")).await).await;
    assert_eq!(
        ok("members", b.broker().members("k").await).await,
        vec![member("s1")]
    );
    let key = format!("kp:node:{}", a.node_id());
    redis
        .command(&["DEL", &key])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ok("members", b.broker().members("k").await)
            .await
            .is_empty()
    );
    assert_eq!(
        redis
            .command(&["HLEN", "kp:t:{k}:members"])
            .await
            .ok()
            .as_deref(),
        Some("0"),
        "removed, not only hidden"
    );
    common::eventually("the member is written back", WAIT, || async {
        b.broker().members("k").await.ok() == Some(vec![member("s1")])
    })
    .await;
    // Kept alive past its idle TTL while the member is there.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        let ttl = redis.command(&["PTTL", "kp:t:{k}:members"]).await;
        let ttl: i64 = ttl.ok().and_then(|t| t.parse().ok()).unwrap_or(-9);
        assert!((0..=2000).contains(&ttl), "members TTL {ttl}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        ok("members", b.broker().members("k").await).await,
        vec![member("s1")]
    );
}
