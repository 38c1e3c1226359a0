//! The session tests against a real 3-master Redis Cluster: tags land on
//! different slots (and masters), each session's keys on one slot.

mod common;

use holdfast_server::store::{Store, tag};
use holdfast_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_operations_on_a_cluster() {
    let cluster = match RedisCluster::start(3).await {
        Ok(cluster) => cluster,
        Err(error) => panic!("{error}"),
    };
    let url = cluster.url();
    common::all(&url, "hfc").await;
    // Sessions are spread over the masters (tags are fixed, so is where
    // they land): each master holds some.
    let store = common::store(&url, "hfc-spread").await;
    for n in 0..30 {
        let t = tag(&format!("spread-{n}"));
        assert!(
            store
                .create(&t, &common::session("s"), common::LONG)
                .await
                .is_ok()
        );
    }
    for node in cluster.nodes() {
        let count = node.command(&["DBSIZE"]).await.unwrap_or_default();
        assert!(
            count.parse::<u64>().unwrap_or(0) > 0,
            "a master holds no key"
        );
    }
}
