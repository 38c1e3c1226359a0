//! Redis unreachable at start, lost while running, back again: clear and
//! bounded errors, then everything works again; what survives a restart
//! with AOF.

mod common;

use std::time::{Duration, Instant};

use holdfast_redis::{Error, RedisStore};
use holdfast_server::store::{Owner, Store, StoreError, Write, tag};
use holdfast_testkit::RedisServer;

#[tokio::test]
async fn unreachable_at_start_is_a_clear_error() {
    // A port nothing listens on: start a server, note its port, stop it.
    let mut redis = RedisServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let url = redis.url();
    redis.kill();
    let started = Instant::now();
    let result = RedisStore::builder(&url)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    match result {
        Err(Error::Unreachable { url: shown, reason }) => {
            assert_eq!(shown, url);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // The same for a cluster URL naming dead nodes.
    let port = url.rsplit(':').next().unwrap_or_default();
    let cluster = format!("redis-cluster://127.0.0.1:{port},127.0.0.1:{port}");
    let started = Instant::now();
    let result = RedisStore::builder(&cluster)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(result, Err(Error::Unreachable { .. })),
        "{result:?}"
    );
    assert!(matches!(
        RedisStore::connect("http://127.0.0.1:1").await,
        Err(Error::InvalidUrl(_))
    ));
    // Options out of range are refused before anything is tried.
    let refused = [
        RedisStore::builder(&url).prefix("a{b"),
        RedisStore::builder(&url).prefix(""),
        RedisStore::builder(&url).node_ttl(Duration::from_millis(99)),
        RedisStore::builder(&url).command_timeout(Duration::ZERO),
        RedisStore::builder(&url).connect_timeout(Duration::ZERO),
        RedisStore::builder(&url).bus_capacity(0),
        RedisStore::builder(&url).topic_history(0),
        RedisStore::builder(&url).topic_ttl(Duration::from_millis(999)),
    ];
    for builder in refused {
        let shown = format!("{builder:?}");
        assert!(
            matches!(builder.connect().await, Err(Error::InvalidOption(_))),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn lost_while_running_fails_fast_then_recovers() {
    let mut redis = RedisServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let store = common::store(&redis.url(), "hf").await;
    let t = tag("outage");
    assert!(
        store
            .create(&t, &common::session("o"), common::LONG)
            .await
            .is_ok()
    );

    redis.kill();
    // Each operation fails within the command timeout (500 ms) and a
    // margin, every time (the client keeps reconnecting meanwhile).
    let bound = Duration::from_millis(500 + 700);
    let write = Write {
        outbound: common::out(1..=1),
        ..Write::default()
    };
    for attempt in 0..3 {
        let timed = |what: &'static str, started: Instant, result: Option<StoreError>| {
            let took = started.elapsed();
            eprintln!("attempt {attempt}: {what} failed after {took:?}");
            assert!(
                matches!(result, Some(StoreError::Unavailable(_))),
                "{what}: {result:?}"
            );
            assert!(took < bound, "{what} took {took:?}");
        };
        let t0 = Instant::now();
        timed(
            "write",
            t0,
            store.write(&t, 1, &write, common::LONG).await.err(),
        );
        let t0 = Instant::now();
        timed("owner", t0, store.owner(&t).await.err());
        let t0 = Instant::now();
        timed(
            "node_alive",
            t0,
            store.node_alive(store.node_id()).await.err(),
        );
        let t0 = Instant::now();
        timed(
            "publish",
            t0,
            store.publish(store.node_id(), "x".into()).await.err(),
        );
        let t0 = Instant::now();
        let tags = [t.clone(), tag("outage-2")];
        timed("touch", t0, store.touch(&tags, common::LONG).await.err());
        let t0 = Instant::now();
        timed(
            "claim",
            t0,
            store.claim(&t, &Owner::Unknown, common::LONG).await.err(),
        );
    }

    // Back (empty: no persistence): the client reconnects by itself.
    redis.restart().await.unwrap_or_else(|e| panic!("{e}"));
    common::eventually("the store works again", Duration::from_secs(10), || async {
        store.owner(&t).await.is_ok()
    })
    .await;
    assert_eq!(
        store.owner(&t).await.ok(),
        Some(Owner::Unknown),
        "no persistence: gone"
    );
    assert_eq!(
        store
            .create(&t, &common::session("o2"), common::LONG)
            .await
            .ok(),
        Some(1)
    );
    // The liveness key comes back with the next heartbeat.
    common::eventually(
        "the node is alive again",
        Duration::from_secs(5),
        || async { store.node_alive(store.node_id()).await.ok() == Some(true) },
    )
    .await;
}

#[tokio::test]
async fn sessions_survive_a_redis_kill_with_aof() {
    let mut redis = RedisServer::builder()
        .aof(true)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let a = common::store(&redis.url(), "hf").await;
    let t = tag("aof");
    assert!(
        a.create(&t, &common::session("p"), common::LONG)
            .await
            .is_ok()
    );
    let write = Write {
        outbound: common::out(1..=3),
        inbound: common::inb(1..=2),
        acked: Some(1),
        opened: true,
        ..Write::default()
    };
    assert!(a.write(&t, 1, &write, common::LONG).await.is_ok());

    redis.restart().await.unwrap_or_else(|e| panic!("{e}"));
    let b = common::store(&redis.url(), "hf").await;
    let owner = b.owner(&t).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        owner,
        Owner::Node {
            node: a.node_id().to_owned(),
            epoch: 1
        }
    );
    let snapshot = b
        .claim(&t, &owner, common::LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.outbound, common::out(2..=3));
    assert_eq!(snapshot.inbound, common::inb(1..=2));
    assert_eq!(snapshot.session, common::session("p"));
    assert!(snapshot.opened);
    // The old owner, reconnected, is fenced.
    common::eventually(
        "the old owner reconnects",
        Duration::from_secs(10),
        || async { !matches!(a.owner(&t).await, Err(StoreError::Unavailable(_))) },
    )
    .await;
    assert!(matches!(
        a.write(&t, 1, &write, common::LONG).await,
        Err(StoreError::Fenced)
    ));
}
