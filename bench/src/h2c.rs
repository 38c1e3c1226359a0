//! Idle fallback sessions over HTTP/2 in cleartext (h2c, prior knowledge):
//! each client holds ONE connection carrying its SSE stream or held poll
//! and one answered send, as a client with HTTP/2 would. The server must
//! run with `--h2c` (`ServeConfig::http2_cleartext`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use holdfast_client::TransportKind;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::idle::extract_key;

type ResponseFuture =
    Pin<Box<dyn Future<Output = hyper::Result<hyper::Response<Incoming>>> + Send>>;

/// What keeps one h2c session attached: the connection's handle, and the
/// stream's body or the poll's pending answer (dropping either would reset
/// its HTTP/2 stream).
#[allow(dead_code)]
pub enum H2Held {
    Stream(SendRequest<Full<Bytes>>, Incoming),
    Poll(SendRequest<Full<Bytes>>, ResponseFuture),
}

/// Opens one fallback session on one h2c connection, sends one `ping` on
/// the same connection, and returns what holds it.
pub async fn open_one(addr: SocketAddr, kind: TransportKind) -> Result<H2Held, String> {
    open_on(connect(addr).await?, addr, kind).await
}

/// One h2c connection: the handle that sends requests on it.
pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Opens one fallback session on the h2c connection of `sender` (which
/// may carry others: a proxy speaking h2c to its upstream multiplexes its
/// clients so), sends one `ping` on it, and returns what holds it.
pub async fn open_on(
    mut sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    kind: TransportKind,
) -> Result<H2Held, String> {
    match kind {
        TransportKind::Sse => {
            let response = sender
                .send_request(get(addr, "/realtime/sse?v=1")?)
                .await
                .map_err(|e| format!("sse: {e}"))?;
            let (stream, open) = read_until(response.into_body(), b"\"key\"").await?;
            let key = extract_key(&open).ok_or("no key in the open frame")?;
            send_once(&mut sender, addr, &key).await?;
            Ok(H2Held::Stream(sender, stream))
        }
        TransportKind::LongPoll => {
            let response = sender
                .send_request(get(addr, "/realtime/poll?v=1")?)
                .await
                .map_err(|e| format!("poll: {e}"))?;
            let (_, open) = read_until(response.into_body(), b"\"key\"").await?;
            let key = extract_key(&open).ok_or("no key in the open frame")?;
            let held =
                sender.send_request(get(addr, &format!("/realtime/poll?v=1&key={key}&last=0"))?);
            let held: ResponseFuture = Box::pin(held);
            send_once(&mut sender, addr, &key).await?;
            Ok(H2Held::Poll(sender, held))
        }
        TransportKind::WebSocket => Err("WebSocket does not run over h2c here".into()),
    }
}

fn get(addr: SocketAddr, path: &str) -> Result<hyper::Request<Full<Bytes>>, String> {
    hyper::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())
}

/// One `POST …/send` with a `ping`, its answer read.
async fn send_once(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    key: &str,
) -> Result<(), String> {
    let request = hyper::Request::post(format!("http://{addr}/realtime/send?v=1"))
        .header("holdfast-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"[{"t":"ping"}]"#)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("send: {}", response.status()));
    }
    let _answered = read_until(response.into_body(), b"\"pong\"").await?;
    Ok(())
}

/// Reads `body` until `needle` has arrived; gives back the body (still
/// open) and what was read.
async fn read_until(mut body: Incoming, needle: &[u8]) -> Result<(Incoming, Vec<u8>), String> {
    let mut seen = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .map_err(|_| "no answer")?
            .ok_or("body ended")?
            .map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
            if seen.windows(needle.len()).any(|w| w == needle) {
                return Ok((body, seen));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both fallback transports open, send and stay held on one h2c
    /// connection each (what `idle-rss … --h2c` counts on).
    #[tokio::test]
    async fn each_fallback_session_is_held_on_one_h2c_connection() {
        let holdfast = holdfast_server::Holdfast::builder().on_session(|session| async move {
            while let Some(message) = session.recv().await {
                if session.send(message).await.is_err() {
                    break;
                }
            }
        });
        let app = axum::Router::new().merge(holdfast.router_at("/realtime"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut config = holdfast_server::ServeConfig::default();
        config.http2_cleartext = true;
        tokio::spawn(async move {
            let _ = holdfast_server::serve(listener, app).config(config).await;
        });
        let sse = open_one(addr, TransportKind::Sse)
            .await
            .expect("an SSE session");
        assert!(matches!(sse, H2Held::Stream(..)));
        let poll = open_one(addr, TransportKind::LongPoll)
            .await
            .expect("a long-poll session");
        assert!(matches!(poll, H2Held::Poll(..)));
        assert_eq!(holdfast.session_count(), 2);
        assert!(open_one(addr, TransportKind::WebSocket).await.is_err());
        // Many sessions on one connection (`--h2c-shared`), as a proxy
        // speaking h2c to its upstream carries them.
        let shared = connect(addr).await.expect("an h2c connection");
        let mut held = Vec::new();
        for kind in [TransportKind::Sse, TransportKind::LongPoll].repeat(5) {
            held.push(
                open_on(shared.clone(), addr, kind)
                    .await
                    .expect("a session"),
            );
        }
        assert_eq!(holdfast.session_count(), 12);
    }
}
