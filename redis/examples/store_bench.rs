//! Figures for the Redis store: `write` round trip, writes per second with
//! concurrent sessions, Redis memory per idle session and per stored
//! message.
//!
//! ```text
//! cargo run --release -p holdfast-redis --example store_bench              # starts its own redis-server
//! cargo run --release -p holdfast-redis --example store_bench -- --redis redis://127.0.0.1:6399
//! ```
//!
//! Options: `--redis URL` (default: a `redis-server` it starts on a free
//! port, no persistence), `--cluster` (without `--redis`: a 3-master Redis
//! Cluster it starts), `--writes N` (sequential writes, default 10000),
//! `--seconds S` (concurrent run, default 3), `--sessions N` (memory,
//! default 10000), `--messages N` (stored 64-byte messages, default 100000).
//!
//! Everything it writes is under the prefix `hf-bench-<random>` and removed
//! at the end; it never flushes the database. Memory is read with `INFO
//! memory` (`used_memory`) on the server the URL names: on a cluster that
//! is one master, so memory figures are only given for one server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use holdfast_protocol::Message;
use holdfast_redis::RedisStore;
use holdfast_server::store::{NewSession, Store, Write, tag};
use holdfast_testkit::{RedisCluster, RedisServer};

struct Args {
    redis: Option<String>,
    cluster: bool,
    writes: u64,
    seconds: u64,
    sessions: u64,
    messages: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        redis: None,
        cluster: false,
        writes: 10_000,
        seconds: 3,
        sessions: 10_000,
        messages: 100_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--redis" => args.redis = Some(value()?),
            "--cluster" => args.cluster = true,
            "--writes" => args.writes = number(value()?)?.max(100),
            "--seconds" => args.seconds = number(value()?)?.max(1),
            "--sessions" => args.sessions = number(value()?)?.max(100),
            "--messages" => args.messages = number(value()?)?.max(1000),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn session(n: u64) -> NewSession {
    NewSession {
        session_id: format!("{n:032x}"),
        identity: Some(format!("user-{n}")),
        headers: vec![("x-tenant".into(), b"acme".to_vec())],
    }
}

fn payload() -> Message {
    Message::text("x".repeat(64))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn used_memory(client: &Client) -> Result<u64, String> {
    let info: String = client
        .info(Some(fred::types::InfoKind::Memory))
        .await
        .map_err(|e| e.to_string())?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "INFO memory has no used_memory".to_owned())
}

type Failure = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let args = parse_args().map_err(|e| format!("{e}\nusage: store_bench [--redis URL | --cluster] [--writes N] [--seconds S] [--sessions N] [--messages N]"))?;
    let own;
    let own_cluster;
    let url = match &args.redis {
        Some(url) => url.clone(),
        None if args.cluster => {
            own_cluster = RedisCluster::start(3).await?;
            println!("started a 3-master Redis Cluster (no persistence)");
            own_cluster.url()
        }
        None => {
            own = RedisServer::start().await?;
            println!(
                "started redis-server on port {} (no persistence)",
                own.port()
            );
            own.url()
        }
    };
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(|e| e.to_string())?;
    let prefix = format!("hf-bench-{}", u32::from_be_bytes(random));
    let store = RedisStore::builder(&url).prefix(&prefix).connect().await?;
    let ttl = Duration::from_secs(600);
    println!(
        "url {url}, cluster: {}, prefix {prefix}",
        store.is_cluster()
    );

    // 1. Sequential write round trips: one 64-byte message each, acking the
    // one before (so the replay buffer stays short, as in a live session).
    let t = tag("bench-sequential");
    store.create(&t, &session(0), ttl).await?;
    let mut latencies = Vec::with_capacity(args.writes as usize);
    let started = Instant::now();
    for n in 1..=args.writes {
        let write = Write {
            outbound: vec![(n, payload())],
            acked: Some(n - 1),
            ..Write::default()
        };
        let t0 = Instant::now();
        store.write(&t, 1, &write, ttl).await?;
        latencies.push(t0.elapsed());
    }
    let total = started.elapsed();
    latencies.sort_unstable();
    println!(
        "write round trip, sequential ({} writes): mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs",
        args.writes,
        total.as_secs_f64() * 1e6 / args.writes as f64,
        percentile(&latencies, 0.5).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
    );
    store.remove(&t, 1).await?;

    // 2. 64 sessions writing at once, for `seconds`.
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for s in 0..64u64 {
        let store = store.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let t = tag(&format!("bench-concurrent-{s}"));
            store.create(&t, &session(s), ttl).await?;
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let write = Write {
                    outbound: vec![(n, payload())],
                    acked: Some(n - 1),
                    ..Write::default()
                };
                store.write(&t, 1, &write, ttl).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            store.remove(&t, 1).await
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    let writes = done.load(Ordering::Relaxed);
    println!(
        "64 concurrent sessions: {writes} writes in {:.2} s = {:.0} writes/s",
        started.elapsed().as_secs_f64(),
        writes as f64 / started.elapsed().as_secs_f64()
    );

    // 3. Memory (one server only).
    if store.is_cluster() {
        println!("memory: skipped on a cluster (INFO reaches one master)");
        return Ok(());
    }
    let config = Config::from_url(&url)?;
    let client = fred::types::Builder::from_config(config).build()?;
    client.init().await?;
    let before = used_memory(&client).await?;
    let tags: Vec<String> = (0..args.sessions)
        .map(|n| tag(&format!("bench-idle-{n}")))
        .collect();
    let records: Vec<NewSession> = (0..args.sessions).map(session).collect();
    for (chunk, records) in tags.chunks(256).zip(records.chunks(256)) {
        let creates = chunk
            .iter()
            .zip(records)
            .map(|(t, record)| store.create(t, record, ttl));
        for result in futures_util::future::join_all(creates).await {
            result?;
        }
    }
    let idle = used_memory(&client).await?;
    println!(
        "memory per idle session: {:.0} bytes ({} sessions, identity + one header, used_memory {} -> {})",
        (idle as f64 - before as f64) / args.sessions as f64,
        args.sessions,
        before,
        idle
    );
    // Unacknowledged 64-byte messages, 100 per session, in writes of 10.
    let per_session = 100u64;
    let sessions = (args.messages / per_session).min(args.sessions) as usize;
    for chunk in tags[..sessions].chunks(64) {
        let writes = chunk.iter().map(|t| {
            let store = store.clone();
            async move {
                for batch in 0..per_session / 10 {
                    let outbound = (1..=10).map(|k| (batch * 10 + k, payload())).collect();
                    store
                        .write(
                            t,
                            1,
                            &Write {
                                outbound,
                                ..Write::default()
                            },
                            ttl,
                        )
                        .await?;
                }
                Ok::<_, holdfast_server::store::StoreError>(())
            }
        });
        for result in futures_util::future::join_all(writes).await {
            result?;
        }
    }
    let stored = used_memory(&client).await?;
    let count = sessions as u64 * per_session;
    println!(
        "memory per stored 64-byte message: {:.1} bytes ({count} messages in {sessions} sessions, used_memory {idle} -> {stored})",
        (stored as f64 - idle as f64) / count as f64,
    );
    for chunk in tags.chunks(256) {
        let removes = chunk.iter().map(|t| store.remove(t, 1));
        futures_util::future::join_all(removes).await;
    }
    let _ = client.quit().await;
    Ok(())
}
