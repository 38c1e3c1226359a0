//! Topics: one publisher, many subscribers of one topic (holdfast clients
//! over WebSocket), on one node without a store (the topic lives in the
//! process) and on 2 and 3 nodes sharing one redis-server (the topic lives
//! in Redis, each node fans it out to its own subscribers).
//!
//! Every server process and redis-server are pinned to CPU 0, the load
//! generator (this process: every client) keeps CPU 1, as in the
//! `cluster` part: the CPU figures are sums over all server-side
//! processes, comparable between one node and three.
//!
//! Subscribers are spread evenly over the nodes (subscriber k connects
//! straight to node k mod n); the publisher is on node 1. Each published
//! message carries its number and send time (`t:<i>:<ns>`); every
//! subscriber checks it gets 0, 1, 2, … exactly once and in order, and
//! the run fails otherwise. The publisher keeps at most `window` messages
//! not yet delivered to every subscriber: the subscribers' buffers never
//! fill (the server side uses `SlowConsumer::Wait` anyway), and the
//! latency is that of a steady stream, not of a burst queued at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use holdfast_client::{Connection, Event, Message};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cluster::Redis;
use crate::fanout::connect;
use crate::process::{ServerProcess, cpu_seconds};
use crate::serve::ServerKind;
use crate::stats::Latencies;

/// How long any one step may take before the run is declared stuck.
const STEP: Duration = Duration::from_secs(30);

/// The size of one run.
#[derive(Clone, Copy, Debug)]
pub struct TopicsSpec {
    pub subscribers: usize,
    pub messages: usize,
    /// Messages published but not yet delivered to every subscriber, at
    /// most.
    pub window: usize,
}

/// One measured run.
pub struct TopicsResult {
    pub nodes: usize,
    /// `memory` (in-process topic) or `redis`.
    pub store: &'static str,
    pub spec: TopicsSpec,
    pub deliveries: u64,
    pub seconds: f64,
    pub latencies: Latencies,
    /// CPU time of all node processes over the measured period.
    pub server_cpu_seconds: f64,
    /// CPU time of redis-server over the measured period (0 without).
    pub redis_cpu_seconds: f64,
}

/// Runs the single node without a store, then 2 and 3 nodes on Redis
/// (skipped, with a note, when redis-server is not installed).
pub async fn runs(spec: TopicsSpec) -> Result<Vec<TopicsResult>, String> {
    let mut results = Vec::new();
    let node = ServerProcess::start(ServerKind::Holdfast, Some(0)).await?;
    let nodes = [node];
    let result = run(&nodes, None, spec).await;
    for node in nodes {
        node.stop().await;
    }
    results.push(result?);

    let Some(redis) = Redis::start(0).await? else {
        println!("topics: redis-server not found, the runs across nodes are skipped");
        return Ok(results);
    };
    for count in [2, 3] {
        let result = across(&redis, count, spec).await;
        match result {
            Ok(result) => results.push(result),
            Err(e) => {
                redis.stop().await;
                return Err(e);
            }
        }
    }
    redis.stop().await;
    Ok(results)
}

/// `count` nodes on `redis`, each started with the Redis store.
async fn across(redis: &Redis, count: usize, spec: TopicsSpec) -> Result<TopicsResult, String> {
    let extra = ["--redis".to_owned(), redis.url.clone()];
    let mut nodes = Vec::with_capacity(count);
    let mut started = Ok(());
    for _ in 0..count {
        match ServerProcess::start_with(ServerKind::Holdfast, Some(0), &extra).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => run(&nodes, Some(redis.pid), spec).await,
        Err(e) => Err(e),
    };
    for node in nodes {
        node.stop().await;
    }
    result
}

/// What the subscribers tell the publisher.
#[derive(Clone, Copy, Default)]
struct Progress {
    /// Messages delivered to every subscriber (always a prefix: each
    /// subscriber gets them in order).
    complete: usize,
    /// A subscriber failed: stop publishing.
    failed: bool,
}

/// Per message, how many subscribers got it.
struct Tally {
    counts: Vec<AtomicU32>,
    subscribers: u32,
    progress: watch::Sender<Progress>,
}

impl Tally {
    fn delivered(&self, index: usize) {
        let got = self.counts[index].fetch_add(1, Ordering::AcqRel) + 1;
        if got == self.subscribers {
            self.progress
                .send_modify(|p| p.complete = p.complete.max(index + 1));
        }
    }

    fn fail(&self) {
        self.progress.send_modify(|p| p.failed = true);
    }
}

/// Sends `command` and waits for `reply` (anything else but events that
/// are not messages is an error).
async fn request(connection: &mut Connection, command: &str, reply: &str) -> Result<(), String> {
    connection.send(command).await.map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(STEP, connection.next_event()).await {
            Ok(Some(Event::Message(m))) if m.as_text() == Some(reply) => return Ok(()),
            Ok(Some(Event::Message(m))) => {
                return Err(format!(
                    "{command}: got {:?} instead of {reply:?}",
                    m.as_text().unwrap_or("(binary)")
                ));
            }
            Ok(Some(_)) => {}
            other => return Err(format!("{command}: no {reply:?}: {other:?}")),
        }
    }
}

/// Parses `t:<index>:<sent ns>`.
fn parse(message: &Message) -> Option<(usize, u64)> {
    let mut parts = message.as_text()?.strip_prefix("t:")?.split(':');
    let index = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((index, sent))
}

/// Receives `messages` topic messages, checking their order.
async fn subscriber(
    name: String,
    mut connection: Connection,
    messages: usize,
    base: Instant,
    tally: Arc<Tally>,
) -> Result<(Latencies, Instant, Connection), String> {
    let mut latencies = Latencies::default();
    let mut last = Instant::now();
    let mut next = 0;
    while next < messages {
        let event = tokio::time::timeout(STEP, connection.next_event()).await;
        match event {
            Ok(Some(Event::Message(m))) => {
                let Some((index, sent)) = parse(&m) else {
                    tally.fail();
                    return Err(format!(
                        "{name}: unexpected message {:?}",
                        m.as_text().unwrap_or("(binary)")
                    ));
                };
                if index != next {
                    tally.fail();
                    return Err(format!("{name}: got message {index}, expected {next}"));
                }
                last = Instant::now();
                let now = base.elapsed().as_nanos() as u64;
                latencies.record(Duration::from_nanos(now.saturating_sub(sent)));
                tally.delivered(index);
                next += 1;
            }
            Ok(Some(_)) => {}
            other => {
                tally.fail();
                return Err(format!("{name}: stopped after {next} messages: {other:?}"));
            }
        }
    }
    Ok((latencies, last, connection))
}

/// One run against `nodes` (the publisher on the first).
async fn run(
    nodes: &[ServerProcess],
    redis: Option<u32>,
    spec: TopicsSpec,
) -> Result<TopicsResult, String> {
    let base = Instant::now();
    let (progress, mut watch) = watch::channel(Progress::default());
    let tally = Arc::new(Tally {
        counts: (0..spec.messages).map(|_| AtomicU32::new(0)).collect(),
        subscribers: u32::try_from(spec.subscribers).map_err(|e| e.to_string())?,
        progress,
    });
    // All subscribed first (with Redis, opening 1000 sessions takes
    // seconds), then each one's receiving starts.
    let mut joined = Vec::with_capacity(spec.subscribers);
    for k in 0..spec.subscribers {
        let node = k % nodes.len();
        let mut connection = connect(&nodes[node]).await?;
        request(&mut connection, "tjoin", "tjoined").await?;
        joined.push((format!("subscriber {k} (node {})", node + 1), connection));
    }
    let mut subscribers = JoinSet::new();
    for (name, connection) in joined {
        subscribers.spawn(subscriber(
            name,
            connection,
            spec.messages,
            base,
            tally.clone(),
        ));
    }
    let mut publisher = connect(&nodes[0]).await?;
    let server_cpu = || nodes.iter().map(ServerProcess::cpu_seconds).sum::<f64>();
    let redis_cpu = || redis.and_then(cpu_seconds).unwrap_or(0.0);
    let (server_start, redis_start) = (server_cpu(), redis_cpu());
    let started = Instant::now();
    let published = publish(&mut publisher, &mut watch, spec, base).await;

    let mut latencies = Latencies::default();
    let mut finished = started;
    let mut connections = Vec::with_capacity(spec.subscribers);
    let mut failure = published.err();
    if failure.is_some() {
        subscribers.abort_all();
    }
    while let Some(joined) = subscribers.join_next().await {
        if failure.is_some() {
            continue;
        }
        match joined.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok((samples, last, connection)) => {
                latencies.merge(samples);
                finished = finished.max(last);
                connections.push(connection);
            }
            Err(e) => {
                failure.get_or_insert(e);
                subscribers.abort_all();
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let server_cpu_seconds = server_cpu() - server_start;
    let redis_cpu_seconds = redis_cpu() - redis_start;
    // Exactly once: nothing of the topic comes after the last message
    // (the session's stream is ordered, so an extra copy queued before
    // this echo would arrive before it).
    for mut connection in connections {
        request(&mut connection, "end", "end").await?;
    }
    Ok(TopicsResult {
        nodes: nodes.len(),
        store: if redis.is_some() { "redis" } else { "memory" },
        spec,
        deliveries: latencies.len() as u64,
        seconds: finished.duration_since(started).as_secs_f64(),
        latencies,
        server_cpu_seconds,
        redis_cpu_seconds,
    })
}

/// Publishes `spec.messages` messages through `publisher`, at most
/// `spec.window` ahead of the slowest subscriber.
async fn publish(
    publisher: &mut Connection,
    watch: &mut watch::Receiver<Progress>,
    spec: TopicsSpec,
    base: Instant,
) -> Result<(), String> {
    for index in 0..spec.messages {
        loop {
            let progress = *watch.borrow_and_update();
            if progress.failed {
                return Err("a subscriber failed".into());
            }
            if progress.complete + spec.window > index {
                break;
            }
            tokio::select! {
                changed = watch.changed() => changed.map_err(|e| e.to_string())?,
                event = publisher.next_event() => match event {
                    Some(Event::Message(m)) => {
                        return Err(format!(
                            "publisher: {}",
                            m.as_text().unwrap_or("(binary)")
                        ));
                    }
                    Some(_) => {}
                    None => return Err("the publisher's session closed".into()),
                },
                () = tokio::time::sleep(STEP) => {
                    return Err(format!(
                        "message {} not delivered to every subscriber within {STEP:?}",
                        progress.complete
                    ));
                }
            }
        }
        let sent = base.elapsed().as_nanos() as u64;
        publisher
            .send(Message::text(format!("t:{index}:{sent}")))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
