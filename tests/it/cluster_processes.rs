//! Several nodes, one app: three `echo --redis` nodes behind a real nginx
//! balancing round-robin with no affinity, a real `redis-server` (and a
//! 3-master Redis Cluster), and the `client` example checking every echo
//! exactly once, in order — while nodes are killed with SIGKILL and
//! restarted, or restarted one by one with SIGTERM (`docs/scaling.md`).
//!
//! Everything runs as child processes, as users run it. The soak's length
//! is `HOLDFAST_CLUSTER_SOAK` messages per run (default 12,000, a quick
//! mode for CI; the figure in BENCHMARKS.md is for 60,000).

use std::net::SocketAddr;
use std::time::Duration;

use crate::example_support::{ExampleNode as Node, example, free_port};
use crate::nginx_support::{Nginx, Profile};
use holdfast_testkit::{RedisCluster, RedisServer};
use tokio::process::Command;

/// A loopback port free right now.
/// An echo node sharing `redis`.
async fn echo_node(redis: &str) -> Node {
    Node::start("echo", "echo server on http://", &["--redis", redis]).await
}

/// Three nodes sharing `redis`, behind round-robin nginx.
struct Cluster {
    nodes: Vec<Node>,
    nginx: Nginx,
}

impl Cluster {
    async fn start(redis: &str) -> Cluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(echo_node(redis).await);
        }
        let upstreams: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
        let nginx = Nginx::start_balanced(Profile::WellConfigured, &upstreams).await;
        Cluster { nodes, nginx }
    }

    fn url(&self) -> String {
        self.nginx.url()
    }
}

/// What the `client` example reported.
#[derive(Debug)]
struct Report {
    json: serde_json::Value,
    /// What it logged (warnings: reconnects, refusals, the session's end).
    log: String,
}

impl Report {
    fn count(&self, field: &str) -> u64 {
        self.json[field].as_u64().unwrap_or(u64::MAX)
    }

    fn assert_exact(&self, sent: u64, what: &str) {
        assert_eq!(self.count("sent"), sent, "{what}: {:?}", self.json);
        assert_eq!(
            self.count("lost"),
            0,
            "{what}: lost some: {:?}\n{}",
            self.json,
            self.log
        );
        assert_eq!(
            self.count("duplicated"),
            0,
            "{what}: duplicates: {:?}",
            self.json
        );
        assert_eq!(
            self.count("reordered"),
            0,
            "{what}: reordered: {:?}",
            self.json
        );
    }
}

/// Runs the `client` example: `count` numbered messages, each echo
/// checked exactly once and in order.
fn run_client(url: &str, transport: &str, count: u64) -> tokio::task::JoinHandle<Report> {
    let (url, transport) = (url.to_owned(), transport.to_owned());
    tokio::spawn(async move {
        let output = Command::new(example("client"))
            .args([
                "--url",
                &url,
                "--transport",
                &transport,
                "--count",
                &count.to_string(),
                "--timeout",
                "240",
            ])
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output()
            .await
            .expect("the client example ran");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "{transport}: the client example printed no summary ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        });
        println!("{transport}: {}", stdout.trim());
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        Report { json, log }
    })
}

fn soak_length() -> u64 {
    std::env::var("HOLDFAST_CLUSTER_SOAK")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_round_robin_nginx_deliver_exactly_on_every_transport() {
    let redis = RedisServer::start().await.expect("redis-server starts");
    let cluster = Cluster::start(&redis.url()).await;
    for transport in ["websocket", "sse", "long-poll", "auto"] {
        let report = run_client(&cluster.url(), transport, 2_000)
            .await
            .expect("client task");
        report.assert_exact(2_000, transport);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_redis_cluster_deliver_exactly() {
    let redis = RedisCluster::start(3)
        .await
        .expect("a Redis Cluster starts");
    let cluster = Cluster::start(&redis.url()).await;
    for transport in ["websocket", "long-poll"] {
        let report = run_client(&cluster.url(), transport, 2_000)
            .await
            .expect("client task");
        report.assert_exact(2_000, transport);
    }
}

/// Kills (SIGKILL) or stops (SIGTERM) each node in turn, restarting it,
/// while clients on every transport run; every echo arrives exactly once.
async fn soak(graceful: bool) {
    let redis = RedisServer::start().await.expect("redis-server starts");
    let mut cluster = Cluster::start(&redis.url()).await;
    let count = soak_length();
    let clients: Vec<_> = ["websocket", "sse", "long-poll"]
        .into_iter()
        .map(|transport| (transport, run_client(&cluster.url(), transport, count)))
        .collect();
    // The network condition this test sets up: a node goes down every
    // few seconds, round the cluster, until every client is done.
    let mut round = 0;
    while !clients.iter().all(|(_, client)| client.is_finished()) && round < 30 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let node = &mut cluster.nodes[round % 3];
        if graceful {
            node.terminate().await;
        } else {
            node.kill().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        node.run().await;
        round += 1;
    }
    for (transport, client) in clients {
        let report = client.await.expect("client task");
        report.assert_exact(count, transport);
    }
    let restarts: u32 = cluster.nodes.iter().map(|node| node.starts - 1).sum();
    println!("{restarts} node restarts during the soak");
    assert!(restarts >= 2, "the soak should have restarted nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_node_in_turn_loses_nothing() {
    soak(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restarts_lose_nothing() {
    soak(true).await;
}

/// A request opening a session, answered by whichever node nginx picks.
async fn open_status(url: &str) -> (u16, Option<String>) {
    let response = reqwest::Client::new()
        .get(format!("{url}/poll?v=1"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    (response.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_while_running_refuses_new_sessions_and_loses_nothing_with_aof() {
    let mut redis = RedisServer::builder()
        .aof(true)
        .start()
        .await
        .expect("redis-server starts");
    let cluster = Cluster::start(&redis.url()).await;
    assert_eq!(open_status(&cluster.url()).await.0, 200);
    let clients: Vec<_> = ["websocket", "long-poll"]
        .into_iter()
        .map(|transport| (transport, run_client(&cluster.url(), transport, 3_000)))
        .collect();
    // Redis goes away under running sessions.
    redis.kill();
    let (status, retry_after) = open_status(&cluster.url()).await;
    assert_eq!(status, 503, "a new session while Redis is away");
    assert!(retry_after.is_some(), "with Retry-After");
    redis.restart().await.expect("redis-server restarts");
    // The nodes reconnect by themselves: new sessions open again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while open_status(&cluster.url()).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new sessions open again once Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (transport, client) in clients {
        let report = client.await.expect("client task");
        report.assert_exact(3_000, transport);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_is_unreachable_at_start_says_so_and_exits() {
    let closed = free_port();
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(example("echo"))
            .args([
                "--addr",
                "127.0.0.1:0",
                "--redis",
                &format!("redis://127.0.0.1:{closed}"),
            ])
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the node gave up within 20 s")
    .expect("the echo example ran");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot use Redis at"),
        "a clear error: {stderr}"
    );
}
