//! Idle sessions: the server's resident memory per open session that does
//! nothing, on each transport, with minimal raw clients (so the load
//! generator can hold tens of thousands).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use holdfast_client::TransportKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::ServerProcess;

/// One idle client: whatever keeps its session attached (held, never read).
#[allow(dead_code)]
enum Held {
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
    Tcp(TcpStream),
    /// A fallback session: its stream or held poll, and the client's
    /// kept-alive send connection (one send answered, then idle).
    Pair(TcpStream, TcpStream),
    /// A fallback session on one h2c connection (stream or held poll, and
    /// one answered send).
    H2(crate::h2c::H2Held),
}

/// Whether each fallback client also keeps a send connection open, as the
/// real clients do after their first `POST …/send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendConn {
    None,
    KeptAlive,
    /// Stream or held poll and the send on one h2c connection (the server
    /// must accept h2c).
    H2c,
    /// As [`SendConn::H2c`], this many sessions to one h2c connection, as
    /// a proxy speaking h2c to its upstream carries its clients.
    H2cShared(usize),
}

pub struct IdleResult {
    pub sessions: usize,
    pub bytes_per_session: f64,
}

/// Opens `sessions` idle sessions on `kind` and measures the server's RSS
/// growth per session.
pub async fn run(
    server: &ServerProcess,
    kind: TransportKind,
    sessions: usize,
) -> Result<IdleResult, String> {
    run_with(server, kind, sessions, SendConn::None).await
}

/// [`run`], choosing whether fallback clients keep a send connection.
pub async fn run_with(
    server: &ServerProcess,
    kind: TransportKind,
    sessions: usize,
    send: SendConn,
) -> Result<IdleResult, String> {
    // Warm the server up (allocator pools, first-use tables), then measure.
    let warm = open_many(server.addr, kind, 200.min(sessions), send).await?;
    settle().await;
    let before = server.rss_bytes();
    let held = open_many(server.addr, kind, sessions, send).await?;
    settle().await;
    let after = server.rss_bytes();
    drop(held);
    drop(warm);
    Ok(IdleResult {
        sessions,
        bytes_per_session: after.saturating_sub(before) as f64 / sessions as f64,
    })
}

/// Opens `sessions` idle sessions and holds them for `duration`.
pub async fn hold(
    addr: SocketAddr,
    kind: TransportKind,
    sessions: usize,
    duration: Duration,
    send: SendConn,
) -> Result<(), String> {
    let held = open_many(addr, kind, sessions, send).await?;
    tokio::time::sleep(duration).await;
    drop(held);
    Ok(())
}

/// Lets the server finish what the last connections started.
/// `HOLDFAST_BENCH_SETTLE_MS` (default 300) lengthens it, e.g. past the
/// server's header read timeout that closes idle keep-alive connections.
async fn settle() {
    let ms = std::env::var("HOLDFAST_BENCH_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn open_many(
    addr: SocketAddr,
    kind: TransportKind,
    count: usize,
    send: SendConn,
) -> Result<Vec<Held>, String> {
    if let SendConn::H2cShared(per_connection) = send {
        return open_shared(addr, kind, count, per_connection.max(1)).await;
    }
    let mut held = Vec::with_capacity(count);
    let mut remaining = count;
    while remaining > 0 {
        let batch = remaining.min(250);
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            tasks.push(tokio::spawn(open_one(addr, kind, send)));
        }
        for task in tasks {
            held.push(task.await.map_err(|e| e.to_string())??);
        }
        remaining -= batch;
    }
    Ok(held)
}

/// `count` fallback sessions, `per_connection` to each h2c connection.
async fn open_shared(
    addr: SocketAddr,
    kind: TransportKind,
    count: usize,
    per_connection: usize,
) -> Result<Vec<Held>, String> {
    let mut held = Vec::with_capacity(count);
    let mut remaining = count;
    while remaining > 0 {
        let batch = remaining.min(per_connection);
        let sender = crate::h2c::connect(addr).await?;
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            tasks.push(tokio::spawn(crate::h2c::open_on(
                sender.clone(),
                addr,
                kind,
            )));
        }
        for task in tasks {
            held.push(Held::H2(task.await.map_err(|e| e.to_string())??));
        }
        remaining -= batch;
    }
    Ok(held)
}

async fn open_one(addr: SocketAddr, kind: TransportKind, send: SendConn) -> Result<Held, String> {
    if send == SendConn::H2c {
        return crate::h2c::open_one(addr, kind).await.map(Held::H2);
    }
    match kind {
        TransportKind::WebSocket => {
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://{addr}/realtime/ws?v=1"))
                    .await
                    .map_err(|e| format!("ws: {e}"))?;
            // The `open` frame: the session exists.
            ws.next()
                .await
                .ok_or("ws closed before open")?
                .map_err(|e| e.to_string())?;
            Ok(Held::Ws(Box::new(ws)))
        }
        TransportKind::Sse => {
            let mut tcp = request(addr, "/realtime/sse?v=1").await?;
            let answer = read_until(&mut tcp, b"\"open\"").await?;
            if send == SendConn::KeptAlive {
                // Wait for the whole open frame (it carries the key).
                let answer = if extract_key(&answer).is_some() {
                    answer
                } else {
                    read_until(&mut tcp, b"\"key\"").await?
                };
                let key = extract_key(&answer).ok_or("no key in the open frame")?;
                let send = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let conn = send_once(send, addr, &key).await?;
                return Ok(Held::Pair(tcp, conn));
            }
            Ok(Held::Tcp(tcp))
        }
        TransportKind::LongPoll => {
            let mut first = request(addr, "/realtime/poll?v=1").await?;
            let answer = read_until(&mut first, b"\"sid\"").await?;
            let key = extract_key(&answer).ok_or("no key in the open frame")?;
            // The held poll keeps the session attached.
            let held = request(addr, &format!("/realtime/poll?v=1&key={key}&last=0")).await?;
            if send == SendConn::KeptAlive {
                let send = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let conn = send_once(send, addr, &key).await?;
                return Ok(Held::Pair(held, conn));
            }
            Ok(Held::Tcp(held))
        }
    }
}

pub(crate) async fn request(addr: SocketAddr, path: &str) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    Ok(tcp)
}

/// Sends one `ping` on the connected `tcp` and reads the answer, then
/// returns the connection to be held idle — as a client's kept-alive send
/// connection sits between sends.
pub(crate) async fn send_once(
    mut tcp: TcpStream,
    addr: SocketAddr,
    key: &str,
) -> Result<TcpStream, String> {
    let body = r#"[{"t":"ping"}]"#;
    let head = format!(
        "POST /realtime/send?v=1 HTTP/1.1\r\nHost: {addr}\r\nHoldfast-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_until(&mut tcp, b"\"pong\"").await?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "send: {}",
            String::from_utf8_lossy(&answer).escape_debug()
        ));
    }
    Ok(tcp)
}

pub(crate) async fn read_until(tcp: &mut TcpStream, needle: &[u8]) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .map_err(|_| "no answer")?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(needle.len()).any(|w| w == needle) {
            return Ok(buf);
        }
    }
}

pub(crate) fn extract_key(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("\"key\":\"")? + 7;
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_owned())
}
