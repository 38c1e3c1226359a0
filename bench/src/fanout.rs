//! Fan-out: one publisher, many subscribers (holdfast clients over
//! WebSocket). Each published message carries its send time; every
//! subscriber records how long it took to arrive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_client::{ClientBuilder, Connection, Event, Message, ProxyConfig, TransportKind};

use crate::process::ServerProcess;
use crate::stats::Latencies;

pub struct FanoutResult {
    pub subscribers: usize,
    pub published: usize,
    pub deliveries: u64,
    pub seconds: f64,
    pub latencies: Latencies,
    pub server_cpu_seconds: f64,
}

/// A holdfast WebSocket client of `server`.
pub async fn connect(server: &ServerProcess) -> Result<Connection, String> {
    ClientBuilder::new(format!("http://{}/realtime", server.addr))
        .transport(TransportKind::WebSocket)
        .proxy(ProxyConfig::none())
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Waits for the echo of `marker`: everything sent before it was handled.
async fn sync(connection: &mut Connection, marker: &str) -> Result<(), String> {
    connection.send(marker).await.map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), connection.next_event()).await {
            Ok(Some(Event::Message(m))) if m.as_text() == Some(marker) => return Ok(()),
            Ok(Some(_)) => {}
            other => return Err(format!("no echo of {marker}: {other:?}")),
        }
    }
}

pub async fn run(
    server: &ServerProcess,
    subscribers: usize,
    published: usize,
) -> Result<FanoutResult, String> {
    let base = Arc::new(Instant::now());
    let mut connections = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut connection = connect(server).await?;
        connection.send("join").await.map_err(|e| e.to_string())?;
        sync(&mut connection, "joined").await?;
        connections.push(connection);
    }
    let mut tasks = Vec::new();
    for mut connection in connections {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut last = Instant::now();
            while latencies.len() < published {
                match tokio::time::timeout(Duration::from_secs(60), connection.next_event()).await {
                    Ok(Some(Event::Message(m))) => {
                        let sent = m
                            .as_text()
                            .and_then(|t| t.rsplit(':').next())
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                        last = Instant::now();
                        let now = base.elapsed().as_nanos() as u64;
                        latencies.record(Duration::from_nanos(now.saturating_sub(sent)));
                    }
                    Ok(Some(_)) => {}
                    other => return Err(format!("subscriber stopped: {other:?}")),
                }
            }
            Ok::<_, String>((latencies, last))
        }));
    }
    let publisher = connect(server).await?;
    let cpu_start = server.cpu_seconds();
    let started = Instant::now();
    for i in 0..published {
        let now = base.elapsed().as_nanos() as u64;
        publisher
            .send(Message::text(format!("pub:{i}:{now}")))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut latencies = Latencies::default();
    let mut finished = started;
    for task in tasks {
        let (samples, last) = task.await.map_err(|e| e.to_string())??;
        latencies.merge(samples);
        finished = finished.max(last);
    }
    let server_cpu_seconds = server.cpu_seconds() - cpu_start;
    Ok(FanoutResult {
        subscribers,
        published,
        deliveries: latencies.len() as u64,
        seconds: finished.duration_since(started).as_secs_f64(),
        latencies,
        server_cpu_seconds,
    })
}
