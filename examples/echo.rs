//! An echo server: every message a client sends comes back to it, on
//! whatever transport the client uses.
//!
//! ```text
//! cargo run --example echo -- --addr 127.0.0.1:3000
//! ```
//!
//! Endpoints under `/realtime`: `ws`, `sse`, `poll`, `send` (see
//! `PROTOCOL.md`). Logs every session opening, transport attach/detach,
//! resume and close; `RUST_LOG=debug` for more.

use std::net::SocketAddr;

use holdfast::server::{Holdfast, Session};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let addr = parse_addr()?;

    let holdfast = Holdfast::builder().on_session(echo);
    let app = axum::Router::new()
        .route("/", axum::routing::get(index))
        .nest("/realtime", holdfast.router());

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("echo server on http://{}/realtime", listener.local_addr()?);
    // TCP_NODELAY, header and write deadlines, a connection limit.
    holdfast::server::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            holdfast.shutdown();
        })
        .await?;
    Ok(())
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
     \n\
     Every message you send comes back. The wire protocol is in PROTOCOL.md.\n"
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .ok_or("--addr needs a value, like 127.0.0.1:3000")?
            }
            "-h" | "--help" => {
                println!("usage: echo [--addr HOST:PORT]   (default 127.0.0.1:3000)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    addr.parse()
        .map_err(|e| format!("--addr {addr:?} is not HOST:PORT: {e}"))
}
