//! The store's session operations against one real `redis-server`.

mod common;

use std::time::Duration;

use holdfast_server::store::{Store, Write, tag};
use holdfast_testkit::RedisServer;

async fn redis() -> RedisServer {
    match RedisServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test]
async fn round_trip() {
    let redis = redis().await;
    common::round_trip(&redis.url(), "hf").await;
}

#[tokio::test]
async fn fencing() {
    let redis = redis().await;
    common::fencing(&redis.url(), "hf").await;
}

#[tokio::test]
async fn cursors() {
    let redis = redis().await;
    common::cursors(&redis.url(), "hf").await;
}

#[tokio::test]
async fn claim_is_compare_and_set() {
    let redis = redis().await;
    common::claim_is_compare_and_set(&redis.url(), "hf").await;
}

#[tokio::test]
async fn gaps_refused() {
    let redis = redis().await;
    common::gaps_refused(&redis.url(), "hf").await;
}

#[tokio::test]
async fn acked_and_progress_trim() {
    let redis = redis().await;
    common::acked_and_progress_trim(&redis.url(), "hf").await;
}

#[tokio::test]
async fn release_and_remove() {
    let redis = redis().await;
    common::release_and_remove(&redis.url(), "hf").await;
}

#[tokio::test]
async fn ttl_and_touch() {
    let redis = redis().await;
    common::ttl_and_touch(&redis.url(), "hf").await;
}

#[tokio::test]
async fn big_write() {
    let redis = redis().await;
    common::big_write(&redis.url(), "hf").await;
}

/// All three keys of a session get the write's TTL (not only the meta
/// hash), touch by the owner sets it, touch by another node does not,
/// and everything is under the prefix and the session's hash tag.
#[tokio::test]
async fn every_key_of_a_session_carries_the_ttl() {
    let redis = redis().await;
    let a = common::store(&redis.url(), "app").await;
    let b = common::store(&redis.url(), "app").await;
    let t = tag("keys");
    let _ = a.create(&t, &common::session("k"), common::LONG).await;
    let write = Write {
        outbound: common::out(1..=2),
        inbound: common::inb(1..=2),
        ..Write::default()
    };
    assert!(
        a.write(&t, 1, &write, Duration::from_secs(100))
            .await
            .is_ok()
    );
    let keys = redis
        .command(&["KEYS", &format!("app:{{{t}}}:*")])
        .await
        .unwrap_or_default();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    let expected: Vec<String> = ["i", "m", "o"]
        .iter()
        .map(|k| format!("app:{{{t}}}:{k}"))
        .collect();
    assert_eq!(keys, expected);
    let pttl = |key: String| {
        let redis = &redis;
        async move {
            let ms = redis.command(&["PTTL", &key]).await.unwrap_or_default();
            ms.parse::<i64>().unwrap_or(-9)
        }
    };
    for key in &expected {
        let ms = pttl(key.clone()).await;
        assert!((90_000..=100_000).contains(&ms), "{key}: {ms}");
    }
    assert!(
        b.touch(std::slice::from_ref(&t), Duration::from_secs(1000))
            .await
            .is_ok()
    );
    for key in &expected {
        assert!(
            pttl(key.clone()).await <= 100_000,
            "touch by another node changed {key}"
        );
    }
    assert!(
        a.touch(std::slice::from_ref(&t), Duration::from_secs(1000))
            .await
            .is_ok()
    );
    for key in &expected {
        assert!(
            pttl(key.clone()).await > 900_000,
            "touch did not reach {key}"
        );
    }
}
