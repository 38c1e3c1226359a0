//! The bus: frames in publish order, bounded inbox with a reset on loss,
//! a reset after Redis restarts, on one server and on a cluster.

mod common;

use std::time::Duration;

use bytes::Bytes;
use holdfast_redis::RedisStore;
use holdfast_server::store::{BusEvent, Store};
use holdfast_testkit::{RedisCluster, RedisServer};
use tokio::sync::mpsc;

async fn next(inbox: &mut mpsc::Receiver<BusEvent>) -> BusEvent {
    match tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the inbox closed"),
        Err(_) => panic!("no bus event within 5 s"),
    }
}

fn frame(n: u32) -> Bytes {
    // Binary frames, with bytes that are not UTF-8.
    let mut bytes = n.to_be_bytes().to_vec();
    bytes.extend([0xff, 0x00, 0xfe]);
    Bytes::from(bytes)
}

async fn thousand_in_order(url: &str) {
    let a = common::store(url, "bus").await;
    let b = common::store(url, "bus").await;
    let mut inbox = b.inbox();
    for n in 0..1000 {
        if let Err(error) = a.publish(b.node_id(), frame(n)).await {
            panic!("publish {n}: {error}");
        }
    }
    for n in 0..1000 {
        assert_eq!(next(&mut inbox).await, BusEvent::Frame(frame(n)));
    }
    // A second inbox gets nothing (and says so by being closed).
    assert!(b.inbox().recv().await.is_none());
}

#[tokio::test]
async fn a_thousand_frames_arrive_in_order() {
    let redis = RedisServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    thousand_in_order(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_frames_arrive_in_order_on_a_cluster() {
    let cluster = RedisCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    thousand_in_order(&cluster.url()).await;
}

/// A full inbox drops frames and says so: frames come in order, a jump in
/// numbers only right after a `Reset`, and nothing is queued beyond the
/// capacity.
#[tokio::test]
async fn a_full_inbox_drops_and_resets() {
    let redis = RedisServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let a = common::store(&redis.url(), "bus").await;
    let b = RedisStore::builder(&redis.url())
        .prefix("bus")
        .bus_capacity(4)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut inbox = b.inbox();
    for n in 0..100 {
        assert!(a.publish(b.node_id(), frame(n)).await.is_ok());
    }
    // Drain what is there, then send a last frame and read up to it.
    let mut events = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await
    {
        events.push(event);
    }
    assert!(inbox.len() <= 4);
    assert!(a.publish(b.node_id(), frame(1000)).await.is_ok());
    loop {
        let event = next(&mut inbox).await;
        let last = event == BusEvent::Frame(frame(1000));
        events.push(event);
        if last {
            break;
        }
    }
    let mut previous: Option<u32> = None;
    let mut reset_since = false;
    let mut resets = 0;
    let mut frames = 0;
    for event in &events {
        match event {
            BusEvent::Reset => {
                reset_since = true;
                resets += 1;
            }
            BusEvent::Frame(bytes) => {
                let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                let expected = previous.map_or(0, |p| p + 1);
                assert!(n >= expected, "out of order: {n} after {previous:?}");
                assert!(
                    n == expected || reset_since,
                    "{n} follows {previous:?} without a reset"
                );
                previous = Some(n);
                reset_since = false;
                frames += 1;
            }
        }
    }
    assert!(resets >= 1, "frames were dropped but no reset came");
    assert!(frames < 101, "nothing was dropped: the test proves nothing");
}

/// After Redis restarts, the inbox gets a `Reset`, and frames flow again.
#[tokio::test]
async fn reset_after_a_redis_restart() {
    let mut redis = RedisServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let a = common::store(&redis.url(), "bus").await;
    let b = common::store(&redis.url(), "bus").await;
    let mut inbox = b.inbox();
    assert!(a.publish(b.node_id(), frame(1)).await.is_ok());
    assert_eq!(next(&mut inbox).await, BusEvent::Frame(frame(1)));

    redis.restart().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next(&mut inbox).await, BusEvent::Reset);
    // The subscription is back: a frame published now arrives (published
    // until it does, since `a` may still be reconnecting).
    let mut got = None;
    for n in 2..200 {
        let _ = a.publish(b.node_id(), frame(n)).await;
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), inbox.recv()).await
        {
            got = Some(event);
            break;
        }
    }
    assert!(
        matches!(got, Some(BusEvent::Frame(_))),
        "no frame after the restart: {got:?}"
    );
}

/// Resharding moves the slot of a node's bus channel to another master:
/// Redis drops the sharded subscription without closing the connection.
/// The inbox gets a `Reset` and frames flow again through the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_follows_its_slot_to_another_master() {
    let cluster = RedisCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let a = common::store(&cluster.url(), "mv").await;
    let b = common::store(&cluster.url(), "mv").await;
    let mut inbox = b.inbox();
    assert!(a.publish(b.node_id(), frame(1)).await.is_ok());
    assert_eq!(next(&mut inbox).await, BusEvent::Frame(frame(1)));

    let nodes = cluster.nodes();
    let channel = format!("mv:bus:{}", b.node_id());
    let slot = nodes[0]
        .command(&["CLUSTER", "KEYSLOT", &channel])
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
        let count = node.command(&["PUBSUB", "SHARDNUMSUB", &channel]).await;
        if count.ok().is_some_and(|c| c.ends_with("\n1")) {
            owner = Some(n);
        }
    }
    let Some(src) = owner else {
        panic!("no master holds the subscription to {channel}");
    };
    let dst = (src + 1) % nodes.len();
    // Move the (keyless) slot: the new owner first, then the others.
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

    assert_eq!(next(&mut inbox).await, BusEvent::Reset);
    let mut got = None;
    for n in 2..200 {
        let _ = a.publish(b.node_id(), frame(n)).await;
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), inbox.recv()).await
        {
            got = Some(event);
            break;
        }
    }
    assert!(
        matches!(got, Some(BusEvent::Frame(_))),
        "no frame after the move: {got:?}"
    );
    let moved = nodes[dst]
        .command(&["PUBSUB", "SHARDNUMSUB", &channel])
        .await;
    assert!(
        moved.ok().is_some_and(|c| c.ends_with("\n1")),
        "not subscribed on the new master"
    );
}
