//! Echo load: N clients, each keeping a window of messages in flight, for a
//! warm-up and then a measured period. Echoes come back in order, so each
//! round trip is timed against the oldest message in flight.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use holdfast_client::{ClientBuilder, Event, Message, ProxyConfig, TransportKind};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::process::ServerProcess;
use crate::stats::Latencies;

/// What one echo run does.
#[derive(Clone, Copy, Debug)]
pub struct EchoSpec {
    pub clients: usize,
    pub size: usize,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one echo run measured.
pub struct EchoResult {
    pub round_trips: u64,
    pub seconds: f64,
    pub latencies: Latencies,
    pub server_cpu_seconds: f64,
    /// CPU time of the server's companions (redis-server) over the same period.
    pub companion_cpu_seconds: f64,
}

/// Which client talks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    RawWs,
    Holdfast(TransportKind),
    /// holdfast's WebSocket transport driven by a minimal client speaking
    /// the wire protocol directly: the server's share of the round trip.
    HoldfastWire,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

pub async fn run(
    server: &ServerProcess,
    target: Target,
    spec: EchoSpec,
) -> Result<EchoResult, String> {
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut tasks = Vec::new();
    for _ in 0..spec.clients {
        let phase = phase.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            match target {
                Target::RawWs => raw_client(addr, spec, phase).await,
                Target::Holdfast(kind) => holdfast_client(addr, kind, spec, phase).await,
                Target::HoldfastWire => wire_client(addr, spec, phase).await,
            }
        }));
    }
    tokio::time::sleep(spec.warmup).await;
    let cpu_start = server.cpu_seconds();
    let companion_start = server.companion_cpu_seconds();
    let started = Instant::now();
    phase.store(MEASURE, Ordering::SeqCst);
    tokio::time::sleep(spec.duration).await;
    phase.store(STOP, Ordering::SeqCst);
    let seconds = started.elapsed().as_secs_f64();
    let server_cpu_seconds = server.cpu_seconds() - cpu_start;
    let companion_cpu_seconds = server.companion_cpu_seconds() - companion_start;
    let mut latencies = Latencies::default();
    let mut round_trips = 0;
    for task in tasks {
        let (count, samples) = task.await.map_err(|e| e.to_string())??;
        round_trips += count;
        latencies.merge(samples);
    }
    Ok(EchoResult {
        round_trips,
        seconds,
        latencies,
        server_cpu_seconds,
        companion_cpu_seconds,
    })
}

fn payload(size: usize) -> String {
    "x".repeat(size)
}

/// Counts a round trip that completed while measuring.
fn complete(
    inflight: &mut VecDeque<Instant>,
    phase: &AtomicU8,
    count: &mut u64,
    latencies: &mut Latencies,
) {
    if let Some(sent) = inflight.pop_front()
        && phase.load(Ordering::Relaxed) == MEASURE
    {
        *count += 1;
        latencies.record(sent.elapsed());
    }
}

async fn raw_client(
    addr: std::net::SocketAddr,
    spec: EchoSpec,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Latencies), String> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .map_err(|e| format!("raw connect: {e}"))?;
    let (mut tx, mut rx) = ws.split();
    let text = payload(spec.size);
    let mut inflight = VecDeque::new();
    let (mut count, mut latencies) = (0, Latencies::default());
    loop {
        if phase.load(Ordering::Relaxed) != STOP && inflight.len() < spec.window {
            while inflight.len() < spec.window {
                tx.feed(WsMessage::text(text.clone()))
                    .await
                    .map_err(|e| e.to_string())?;
                inflight.push_back(Instant::now());
            }
            tx.flush().await.map_err(|e| e.to_string())?;
        }
        if inflight.is_empty() {
            break;
        }
        match rx.next().await {
            Some(Ok(m)) if m.is_text() => {
                complete(&mut inflight, &phase, &mut count, &mut latencies)
            }
            Some(Ok(_)) => {}
            other => return Err(format!("raw echo ended: {other:?}")),
        }
    }
    let _ = tx.close().await;
    Ok((count, latencies))
}

/// A client as small as the raw one, speaking holdfast's protocol over
/// WebSocket: each message carries its seq and an ack of what came back.
async fn wire_client(
    addr: std::net::SocketAddr,
    spec: EchoSpec,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Latencies), String> {
    use holdfast_protocol::Frame;
    use holdfast_protocol::wire::json;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/realtime/ws?v=1"))
        .await
        .map_err(|e| format!("wire connect: {e}"))?;
    let (mut tx, mut rx) = ws.split();
    // The `open` frame.
    rx.next()
        .await
        .ok_or("closed before open")?
        .map_err(|e| e.to_string())?;
    let text = holdfast_protocol::Message::text(payload(spec.size));
    let (mut seq, mut received) = (0u64, 0u64);
    let mut inflight = VecDeque::new();
    let (mut count, mut latencies) = (0, Latencies::default());
    loop {
        if phase.load(Ordering::Relaxed) != STOP && inflight.len() < spec.window {
            while inflight.len() < spec.window {
                seq += 1;
                let batch = json::encode_batch_to_string(&[
                    Frame::Message {
                        seq,
                        message: text.clone(),
                    },
                    Frame::ack(received),
                ]);
                tx.feed(WsMessage::text(batch))
                    .await
                    .map_err(|e| e.to_string())?;
                inflight.push_back(Instant::now());
            }
            tx.flush().await.map_err(|e| e.to_string())?;
        }
        if inflight.is_empty() {
            break;
        }
        match rx.next().await {
            Some(Ok(WsMessage::Text(batch))) => {
                let frames = json::decode_batch_str(batch.as_str()).map_err(|e| e.to_string())?;
                for frame in frames {
                    if let Frame::Message { seq, .. } = frame {
                        received = seq;
                        complete(&mut inflight, &phase, &mut count, &mut latencies);
                    }
                }
            }
            Some(Ok(_)) => {}
            other => return Err(format!("wire echo ended: {other:?}")),
        }
    }
    let _ = tx.close().await;
    Ok((count, latencies))
}

async fn holdfast_client(
    addr: std::net::SocketAddr,
    kind: TransportKind,
    spec: EchoSpec,
    phase: Arc<AtomicU8>,
) -> Result<(u64, Latencies), String> {
    let connection = ClientBuilder::new(format!("http://{addr}/realtime"))
        .transport(kind)
        .proxy(ProxyConfig::none())
        .max_unacked_bytes(16 * 1024 * 1024)
        .connect()
        .await
        .map_err(|e| format!("holdfast connect over {kind}: {e}"))?;
    let (tx, mut rx) = connection.split();
    let message = Message::text(payload(spec.size));
    let mut inflight = VecDeque::new();
    let (mut count, mut latencies) = (0, Latencies::default());
    loop {
        while phase.load(Ordering::Relaxed) != STOP && inflight.len() < spec.window {
            tx.send(message.clone()).await.map_err(|e| e.to_string())?;
            inflight.push_back(Instant::now());
        }
        if inflight.is_empty() {
            break;
        }
        match rx.next_event().await {
            Some(Event::Message(_)) => complete(&mut inflight, &phase, &mut count, &mut latencies),
            Some(Event::Closed(closed)) => return Err(format!("session closed: {closed:?}")),
            Some(_) => {}
            None => return Err("connection ended".into()),
        }
    }
    tx.close().await;
    Ok((count, latencies))
}
