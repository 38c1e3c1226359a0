//! The Redis store against the in-memory one: echo CPU per message on
//! every transport, counting redis-server's CPU time as well.
//!
//! redis-server is started here on a free loopback port, pinned to CPU 0
//! with the server under test (the load generator keeps CPU 1), with no
//! persistence (`--save '' --appendonly no`).

use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use holdfast_client::TransportKind;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::echo::{self, EchoSpec, Target};
use crate::process::ServerProcess;
use crate::serve::ServerKind;

/// A redis-server child process, killed on drop.
pub struct Redis {
    child: Child,
    pub pid: u32,
    pub url: String,
}

impl Redis {
    /// Starts redis-server on a free port pinned to `cpu`; `None` when
    /// redis-server is not installed.
    pub async fn start(cpu: usize) -> Result<Option<Self>, String> {
        if which("redis-server").is_none() {
            return Ok(None);
        }
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut command = if which("taskset").is_some() {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg("redis-server");
            c
        } else {
            Command::new("redis-server")
        };
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let pid = child.id().ok_or("redis-server exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("redis-server did not start listening".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Some(Self {
            child,
            pid,
            url: format!("redis://127.0.0.1:{port}"),
        }))
    }

    /// Stops redis-server.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// One echo run of the comparison.
struct EchoCost {
    kind: TransportKind,
    store: &'static str,
    msgs_per_sec: f64,
    p50: f64,
    p99: f64,
    server_us: f64,
    redis_us: f64,
}

/// Echo on every transport with the in-memory store and with the Redis
/// store; prints one JSON line per run and a table. Skipped (with a note)
/// when redis-server is not installed.
pub async fn echo_costs(spec: EchoSpec) -> Result<(), String> {
    let Some(redis) = Redis::start(0).await? else {
        println!("cluster: redis-server not found, skipped");
        return Ok(());
    };
    let result = echo_costs_with(&redis, spec).await;
    redis.stop().await;
    let rows = result?;
    println!(
        "\n### Echo, Redis store vs in-memory (server and redis-server pinned to CPU 0; {} client, window {}, {} B)\n",
        spec.clients, spec.window, spec.size
    );
    println!(
        "| transport | store | msgs/s | p50 µs | p99 µs | server CPU µs/msg | redis-server CPU µs/msg | total µs/msg |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            r.kind,
            r.store,
            r.msgs_per_sec,
            r.p50,
            r.p99,
            r.server_us,
            r.redis_us,
            r.server_us + r.redis_us
        );
    }
    Ok(())
}

async fn echo_costs_with(redis: &Redis, spec: EchoSpec) -> Result<Vec<EchoCost>, String> {
    let mut rows = Vec::new();
    for kind in TransportKind::ALL {
        for store in ["memory", "redis"] {
            let extra = match store {
                "redis" => vec!["--redis".to_owned(), redis.url.clone()],
                _ => Vec::new(),
            };
            let server = ServerProcess::start_with(ServerKind::Holdfast, Some(0), &extra)
                .await?
                .with_companion(redis.pid);
            let mut result = echo::run(&server, Target::Holdfast(kind), spec).await;
            server.stop().await;
            let result = result.as_mut().map_err(|e| e.clone())?;
            let messages = result.round_trips.max(1) as f64;
            let [p50, p99, _] = result.latencies.percentiles();
            // With the memory store redis-server idles: its CPU is counted
            // anyway, so both rows are measured the same way.
            let row = EchoCost {
                kind,
                store,
                msgs_per_sec: result.round_trips as f64 / result.seconds,
                p50,
                p99,
                server_us: result.server_cpu_seconds * 1e6 / messages,
                redis_us: result.companion_cpu_seconds * 1e6 / messages,
            };
            println!(
                "{}",
                json!({
                    "bench": "cluster-echo", "transport": kind.to_string(), "store": store,
                    "clients": spec.clients, "size": spec.size, "window": spec.window,
                    "msgs_per_sec": row.msgs_per_sec.round(), "p50_us": p50, "p99_us": p99,
                    "server_cpu_us_per_msg": (row.server_us * 100.0).round() / 100.0,
                    "redis_cpu_us_per_msg": (row.redis_us * 100.0).round() / 100.0,
                })
            );
            rows.push(row);
        }
    }
    Ok(rows)
}
