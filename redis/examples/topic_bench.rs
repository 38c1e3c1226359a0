//! Figures for topics through Redis: publish round trip, publish-to-delivery
//! latency, and redis-server CPU per published message, with 1 and 3
//! subscribed nodes.
//!
//! ```text
//! cargo run --release -p holdfast-redis --example topic_bench              # starts its own redis-server
//! cargo run --release -p holdfast-redis --example topic_bench -- --cluster # a 3-master cluster it starts
//! ```
//!
//! Options: `--redis URL` (a Redis of yours, one server: its CPU is read
//! with `INFO cpu`), `--cluster` (without `--redis`: a 3-master Redis
//! Cluster it starts; CPU summed over the masters), `--messages N` (per
//! run, default 20000), `--concurrency C` (publishes in flight, default
//! 1: a round trip each), `--subscribers 1,3` (nodes subscribed, one run
//! each).
//!
//! Each node is a `RedisStore` in this process with its own connections,
//! as separate processes would have. Messages are 64-byte text; each
//! carries its publish time, so every subscribed node measures
//! publish-to-delivery. Everything is under the prefix `hf-tbench-<random>`;
//! the topics' keys expire after `topic_ttl` (1 minute here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use holdfast_protocol::Message;
use holdfast_redis::RedisStore;
use holdfast_server::store::{Broker, Store, TopicEvent};
use holdfast_testkit::{RedisCluster, RedisServer};

struct Args {
    redis: Option<String>,
    cluster: bool,
    messages: u64,
    concurrency: usize,
    subscribers: Vec<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        redis: None,
        cluster: false,
        messages: 20_000,
        concurrency: 1,
        subscribers: vec![1, 3],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--redis" => args.redis = Some(value()?),
            "--cluster" => args.cluster = true,
            "--messages" => args.messages = value()?.parse().map_err(|e| format!("{e}"))?,
            "--concurrency" => {
                args.concurrency = value()?.parse().map_err(|e| format!("{e}"))?;
            }
            "--subscribers" => {
                args.subscribers = value()?
                    .split(',')
                    .map(|n| n.parse().map_err(|e| format!("{e}")))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.concurrency == 0 || args.messages == 0 {
        return Err("--messages and --concurrency must be at least 1".into());
    }
    Ok(args)
}

/// Where redis-server's CPU is read.
enum Cpu<'a> {
    Servers(Vec<&'a RedisServer>),
    Client(Client),
}

impl Cpu<'_> {
    /// `used_cpu_sys + used_cpu_user`, seconds, summed over the servers.
    async fn seconds(&self) -> Result<f64, String> {
        let infos = match self {
            Cpu::Servers(servers) => {
                let mut infos = Vec::new();
                for server in servers {
                    infos.push(
                        server
                            .command(&["INFO", "cpu"])
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                infos
            }
            Cpu::Client(client) => vec![
                client
                    .info::<String>(Some(fred::types::InfoKind::Cpu))
                    .await
                    .map_err(|e| e.to_string())?,
            ],
        };
        let mut total = 0.0;
        for info in infos {
            for field in ["used_cpu_sys:", "used_cpu_user:"] {
                total += info
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .ok_or_else(|| format!("INFO cpu has no {field}"))?;
            }
        }
        Ok(total)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    match sorted.len() {
        0 => "-".to_owned(),
        n => format!("{:?}", sorted[((n - 1) as f64 * p) as usize]),
    }
}

/// A 64-byte text message carrying its publish time (µs since `start`).
fn message(start: Instant) -> Message {
    let micros = start.elapsed().as_micros();
    Message::text(format!("{micros:020}{}", "x".repeat(44)))
}

fn sent_at(message: &Message) -> Option<u128> {
    match message {
        Message::Text(text) => text.as_str().get(..20)?.parse().ok(),
        Message::Binary(_) => None,
    }
}

/// Reads a node's events until it has `count` messages; their delivery
/// latencies.
async fn receive(
    mut events: tokio::sync::mpsc::Receiver<TopicEvent>,
    count: u64,
    start: Instant,
) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::with_capacity(count as usize);
    let mut resets = 0;
    while (latencies.len() as u64) < count {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .map_err(|_| "a subscriber got nothing for 30 s".to_owned())?
            .ok_or("the event queue closed")?;
        match event {
            TopicEvent::Published { message, .. } => {
                let sent = sent_at(&message).ok_or("a message without its time")?;
                let now = start.elapsed().as_micros();
                latencies.push(Duration::from_micros(now.saturating_sub(sent) as u64));
            }
            TopicEvent::Reset => resets += 1,
            TopicEvent::Presence { .. } => {}
        }
        if resets > 0 {
            return Err("a subscriber lost events (Reset): figures would be wrong".into());
        }
    }
    Ok(latencies)
}

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args = parse_args().map_err(|e| {
        format!("{e}\nusage: topic_bench [--redis URL | --cluster] [--messages N] [--concurrency C] [--subscribers 1,3]")
    })?;
    let own;
    let own_cluster;
    let (url, cpu) = match &args.redis {
        Some(url) => {
            let client = Client::new(Config::from_url(url)?, None, None, None);
            client.init().await?;
            (url.clone(), Cpu::Client(client))
        }
        None if args.cluster => {
            own_cluster = RedisCluster::start(3).await?;
            println!("started a 3-master Redis Cluster (no persistence)");
            (
                own_cluster.url(),
                Cpu::Servers(own_cluster.nodes().iter().collect()),
            )
        }
        None => {
            own = RedisServer::start().await?;
            println!(
                "started redis-server on port {} (no persistence)",
                own.port()
            );
            (own.url(), Cpu::Servers(vec![&own]))
        }
    };
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(|e| e.to_string())?;
    let prefix = format!("hf-tbench-{}", u32::from_be_bytes(random));
    let connect = || {
        RedisStore::builder(&url)
            .prefix(&prefix)
            .topic_ttl(Duration::from_secs(60))
            .connect()
    };
    let publisher = connect().await?;
    println!(
        "url {url}, cluster: {}, {} messages per run, {} in flight",
        publisher.is_cluster(),
        args.messages,
        args.concurrency
    );
    let start = Instant::now();
    for &subscribers in &args.subscribers {
        let topic = format!("bench-{subscribers}");
        let mut nodes = Vec::new();
        let mut receivers = Vec::new();
        // Warm-up messages first, then the measured ones.
        let warm_up = 1000u64.min(args.messages);
        for _ in 0..subscribers {
            let node = connect().await?;
            let broker = node.broker();
            let events = broker.events();
            broker.subscribe(&topic).await?;
            receivers.push(tokio::spawn(receive(
                events,
                warm_up + args.messages,
                start,
            )));
            nodes.push(node);
        }
        let broker: Arc<dyn Broker> = publisher.broker();
        for _ in 0..warm_up {
            broker.publish(&topic, &message(start)).await?;
        }
        let cpu_before = cpu.seconds().await?;
        let began = Instant::now();
        let mut round_trips = Vec::with_capacity(args.messages as usize);
        let mut left = args.messages;
        while left > 0 {
            let batch = left.min(args.concurrency as u64);
            let publishes = (0..batch).map(|_| {
                let broker = broker.clone();
                let topic = topic.as_str();
                async move {
                    let sent = Instant::now();
                    broker.publish(topic, &message(start)).await?;
                    Ok::<_, holdfast_server::store::StoreError>(sent.elapsed())
                }
            });
            for result in futures_util::future::join_all(publishes).await {
                round_trips.push(result?);
            }
            left -= batch;
        }
        let took = began.elapsed();
        let mut delivered = Vec::new();
        for receiver in receivers {
            let latencies = receiver.await??;
            delivered.extend_from_slice(&latencies[warm_up as usize..]);
        }
        let cpu_after = cpu.seconds().await?;
        round_trips.sort_unstable();
        delivered.sort_unstable();
        let n = args.messages as f64;
        println!(
            "{subscribers} subscribed node(s): publish round trip p50 {} p99 {}, {:.0} publishes/s; \
             publish-to-delivery p50 {} p99 {}; redis-server CPU {:.1} µs per published message \
             ({:.2} s over {} messages)",
            percentile(&round_trips, 0.5),
            percentile(&round_trips, 0.99),
            n / took.as_secs_f64(),
            percentile(&delivered, 0.5),
            percentile(&delivered, 0.99),
            (cpu_after - cpu_before) * 1e6 / n,
            cpu_after - cpu_before,
            args.messages,
        );
        drop(nodes);
    }
    Ok(())
}
