//! An echo server: every message a client sends comes back to it, on
//! whatever transport the client uses.
//!
//! ```text
//! cargo run --example echo -- --addr 127.0.0.1:3000
//! cargo run --example echo -- --addr 127.0.0.1:3001 --redis redis://127.0.0.1:6379
//! ```
//!
//! With `--redis`, the node keeps its sessions in Redis: run several behind
//! any load balancer (nothing sticky), kill or restart any of them, and
//! clients continue on the others (see `docs/scaling.md`). On SIGTERM or
//! Ctrl-C it hands its sessions over before it exits.
//!
//! Endpoints under `/realtime`: `ws`, `sse`, `poll`, `send` (see
//! `PROTOCOL.md`). Logs every session opening, transport attach/detach,
//! resume and close; `RUST_LOG=debug` for more. Prometheus metrics at
//! `GET /metrics` (see `docs/operations.md`).

use std::net::SocketAddr;
use std::sync::Arc;

use holdfast::server::store::Store as _;
use holdfast::server::{Holdfast, Session};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = parse_args()?;
    // Before the server is built: its metrics bind to the recorder there is.
    let metrics = prometheus()?;

    let mut builder = Holdfast::builder();
    if let Some(url) = &args.redis {
        // One node of a cluster: sessions live in Redis, any node serves
        // any request, a node's death or restart loses nothing.
        let store = holdfast_redis::RedisStore::connect(url)
            .await
            .map_err(|error| format!("cannot use Redis at {url}: {error}"))?;
        tracing::info!(node = store.node_id(), "sessions kept in Redis at {url}");
        builder = builder.store(Arc::clone(&store) as _);
    }
    if args.no_native_text {
        // As a server from before native text (PROTOCOL.md §2.2.1): for
        // testing clients against one.
        let mut config = holdfast::server::ServerConfig::default();
        config.ws_native_text = false;
        builder = builder.config(config);
    }
    let holdfast = builder.on_session(echo);
    let app = axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/metrics", metrics)
        .nest("/realtime", holdfast.router());

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!("echo server on http://{addr}/realtime");
    tracing::info!("Prometheus metrics on http://{addr}/metrics");
    // TCP_NODELAY, header and write deadlines, a connection limit.
    holdfast::server::serve(listener, app)
        .with_graceful_shutdown(async move {
            stopped().await;
            // With Redis: the sessions continue on the other nodes. Alone:
            // they end with 1001.
            holdfast.hand_over().await;
        })
        .await?;
    Ok(())
}

/// Installs the Prometheus exporter as the process's metrics recorder;
/// the route that serves its text.
fn prometheus() -> Result<axum::routing::MethodRouter, Box<dyn std::error::Error>> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Buckets for holdfast's `_seconds` histograms (0.5 ms to 30 s): without
    // them the exporter writes summaries, which cannot be added up across
    // nodes (docs/operations.md).
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("holdfast_".to_owned()), BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Drains the histograms' samples into their buckets (the exporter's
        // own listener would; this one is served by the app).
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(axum::routing::get(move || {
        let text = handle.render();
        async move { ([("content-type", "text/plain; version=0.0.4")], text) }
    }))
}

/// Ctrl-C or SIGTERM (what a deploy sends).
async fn stopped() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sends every message back, in order, until the session ends.
async fn echo(session: Session) {
    while let Some(message) = session.recv().await {
        if session.send(message).await.is_err() {
            break;
        }
    }
}

async fn index() -> &'static str {
    "holdfast echo server\n\
     \n\
     GET  /realtime/ws     WebSocket\n\
     GET  /realtime/sse    Server-Sent Events (downstream)\n\
     GET  /realtime/poll   long-polling (downstream)\n\
     POST /realtime/send   upstream for SSE and long-polling\n\
     GET  /metrics         Prometheus metrics\n\
     \n\
     Every message you send comes back. The wire protocol is in PROTOCOL.md.\n"
}

struct Args {
    addr: SocketAddr,
    redis: Option<String>,
    no_native_text: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_owned();
    let mut redis = None;
    let mut no_native_text = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .ok_or("--addr needs a value, like 127.0.0.1:3000")?
            }
            "--redis" => {
                redis = Some(
                    args.next()
                        .ok_or("--redis needs a value, like redis://127.0.0.1:6379")?,
                )
            }
            "--no-native-text" => no_native_text = true,
            "-h" | "--help" => {
                println!(
                    "usage: echo [--addr HOST:PORT] [--redis URL] [--no-native-text]\n\
                     \n\
                     --addr   where to listen (default 127.0.0.1:3000)\n\
                     --redis  keep sessions in Redis (redis://host:port, or\n\
                     \x20        redis-cluster://host:port for a Redis Cluster) and serve\n\
                     \x20        as one node of several\n\
                     --no-native-text  never grant WebSocket clients native text\n\
                     \x20        messages, as a server written before them"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("--addr {addr:?} is not HOST:PORT: {e}"))?;
    Ok(Args {
        addr,
        redis,
        no_native_text,
    })
}
