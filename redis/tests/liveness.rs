//! Node liveness: alive while the store lives, gone `node_ttl` after it is
//! dropped without `leave` (as after a crash), gone at once with `leave`.

mod common;

use std::time::{Duration, Instant};

use holdfast_redis::RedisStore;
use holdfast_server::store::Store;
use holdfast_testkit::RedisServer;

#[tokio::test]
async fn liveness_follows_the_store() {
    let redis = match RedisServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    };
    let observer = common::store(&redis.url(), "hf").await;
    let ttl = Duration::from_millis(300);
    let connect = || async {
        match RedisStore::builder(&redis.url())
            .node_ttl(ttl)
            .connect()
            .await
        {
            Ok(store) => store,
            Err(error) => panic!("{error}"),
        }
    };

    // Alive at once, and kept alive by the heartbeat for several TTLs.
    let node = connect().await;
    let id = node.node_id().to_owned();
    let until = Instant::now() + ttl * 4;
    while Instant::now() < until {
        assert_eq!(
            observer.node_alive(&id).await.ok(),
            Some(true),
            "the heartbeat lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Dropped without leave: expires by itself, not before the TTL.
    let dropped = Instant::now();
    drop(node);
    common::eventually("a dropped node expires", Duration::from_secs(5), || async {
        observer.node_alive(&id).await.ok() == Some(false)
    })
    .await;
    assert!(dropped.elapsed() >= ttl / 2, "expired before its TTL");

    // leave: gone at once.
    let node = connect().await;
    let id = node.node_id().to_owned();
    assert_eq!(observer.node_alive(&id).await.ok(), Some(true));
    assert!(node.leave().await.is_ok());
    assert_eq!(observer.node_alive(&id).await.ok(), Some(false));
    // And it stays gone: the heartbeat stopped (checked across two TTLs).
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        assert_eq!(
            observer.node_alive(&id).await.ok(),
            Some(false),
            "the heartbeat came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(observer.node_alive("no-such-node").await.ok(), Some(false));
}
