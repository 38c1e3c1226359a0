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
    // Warm the server up (allocator pools, first-use tables), then measure.
    let warm = open_many(server.addr, kind, 200.min(sessions)).await?;
    settle().await;
    let before = server.rss_bytes();
    let held = open_many(server.addr, kind, sessions).await?;
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
) -> Result<(), String> {
    let held = open_many(addr, kind, sessions).await?;
    tokio::time::sleep(duration).await;
    drop(held);
    Ok(())
}

/// Lets the server finish what the last connections started.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn open_many(
    addr: SocketAddr,
    kind: TransportKind,
    count: usize,
) -> Result<Vec<Held>, String> {
    let mut held = Vec::with_capacity(count);
    let mut remaining = count;
    while remaining > 0 {
        let batch = remaining.min(250);
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            tasks.push(tokio::spawn(open_one(addr, kind)));
        }
        for task in tasks {
            held.push(task.await.map_err(|e| e.to_string())??);
        }
        remaining -= batch;
    }
    Ok(held)
}

async fn open_one(addr: SocketAddr, kind: TransportKind) -> Result<Held, String> {
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
            read_until(&mut tcp, b"\"open\"").await?;
            Ok(Held::Tcp(tcp))
        }
        TransportKind::LongPoll => {
            let mut first = request(addr, "/realtime/poll?v=1").await?;
            let answer = read_until(&mut first, b"\"sid\"").await?;
            let key = extract_key(&answer).ok_or("no key in the open frame")?;
            // The held poll keeps the session attached.
            let held = request(addr, &format!("/realtime/poll?v=1&key={key}&last=0")).await?;
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
