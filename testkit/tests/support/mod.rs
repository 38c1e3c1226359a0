//! In-process upstream and small clients for the proxy tests.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::Uri;
use axum::response::Response;
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest any expected event may take.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(400);

/// Awaits `f` for at most [`WAIT`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// The server behind the proxy:
///
/// - `GET /realtime/ws`: WebSocket; sends `open`, then echoes;
/// - `GET /realtime/stream`: a streaming body the test feeds, see
///   [`Upstream::next_stream`];
/// - `GET /realtime/big`: 10 000 bytes;
/// - `POST /realtime/send`: echoes the request body;
/// - anything else: `hello from <path>`.
pub struct Upstream {
    pub addr: SocketAddr,
    streams: mpsc::UnboundedReceiver<mpsc::UnboundedSender<Bytes>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let (streams_tx, streams) = mpsc::unbounded_channel();
        let app = Router::new()
            .route("/realtime/ws", get(ws))
            .route(
                "/realtime/stream",
                get(move || {
                    let streams_tx = streams_tx.clone();
                    async move {
                        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                        let _ = streams_tx.send(tx);
                        let body = futures_util::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
                        });
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Body::from_stream(body))
                            .unwrap()
                    }
                }),
            )
            .route("/realtime/big", get(|| async { "x".repeat(10_000) }))
            .route("/realtime/send", post(|body: Bytes| async move { body }))
            .fallback(any(|uri: Uri| async move {
                format!("hello from {}", uri.path())
            }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, streams }
    }

    /// The sender feeding the next `/realtime/stream` response; dropping it
    /// ends that response.
    pub async fn next_stream(&mut self) -> mpsc::UnboundedSender<Bytes> {
        within("a /realtime/stream request upstream", self.streams.recv())
            .await
            .expect("upstream gone")
    }
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        if socket.send(Message::Text("open".into())).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = socket.recv().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || (echo && socket.send(msg).await.is_err()) {
                break;
            }
        }
    })
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type TunnelWs = WebSocketStream<TcpStream>;

/// A WebSocket to `ws://<addr>/realtime/ws` (reverse mode).
pub async fn ws_connect(addr: SocketAddr) -> Result<Ws, tungstenite::Error> {
    within(
        "WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}/realtime/ws")),
    )
    .await
    .map(|(ws, _)| ws)
}

/// A WebSocket to `upstream` through `CONNECT` on `proxy` (forward mode).
pub async fn ws_through_connect(
    proxy: SocketAddr,
    upstream: SocketAddr,
) -> Result<TunnelWs, tungstenite::Error> {
    let tcp = connect_tunnel(proxy, upstream)
        .await
        .map_err(|status| tungstenite::Error::Io(std::io::Error::other(status.to_string())))?;
    within(
        "WebSocket handshake in a tunnel",
        tokio_tungstenite::client_async(format!("ws://{upstream}/realtime/ws"), tcp),
    )
    .await
    .map(|(ws, _)| ws)
}

/// Sends `CONNECT upstream` to `proxy`; the tunnel, or the refusal status.
pub async fn connect_tunnel(
    proxy: SocketAddr,
    target: impl std::fmt::Display,
) -> Result<TcpStream, u16> {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, _, rest) = read_head(&mut tcp).await;
    if status == 200 {
        assert!(rest.is_empty(), "bytes after the CONNECT answer");
        Ok(tcp)
    } else {
        Err(status)
    }
}

/// Reads one response head; returns the status, the head as text, and the
/// body bytes read along with it.
pub async fn read_head(tcp: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    within("a response head", async {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = res.parse(&buf) {
                let status = res.code.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                return (status, head, buf[n..].to_vec());
            }
            let mut chunk = [0u8; 4096];
            let n = tcp
                .read(&mut chunk)
                .await
                .expect("read error before the head");
            assert!(
                n > 0,
                "EOF before the head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Writes `request` to `addr` and reads the whole answer until EOF.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    read_to_end(&mut tcp).await
}

/// Reads until EOF (an error, e.g. a reset, also ends it).
pub async fn read_to_end(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    within("EOF", async {
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(n) = tcp.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    out
}

/// `GET <path>` in origin form.
pub fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// Status and body of a whole raw response.
pub fn split(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(raw) {
        Ok(httparse::Status::Complete(n)) => (
            res.code.unwrap(),
            String::from_utf8_lossy(&raw[..n]).into_owned(),
            raw[n..].to_vec(),
        ),
        other => panic!(
            "not a whole response head ({other:?}): {:?}",
            String::from_utf8_lossy(raw)
        ),
    }
}

/// An HTTP client going straight to its URL (reverse mode).
pub fn direct_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// An HTTP client using `proxy_url` as `HTTP_PROXY` (forward mode).
pub fn proxied_client(proxy_url: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(proxy_url).unwrap())
        .build()
        .unwrap()
}

/// GET `url`: status and body text.
pub async fn fetch(client: &reqwest::Client, url: &str) -> (u16, String) {
    within("an HTTP response", async {
        let res = client.get(url).send().await.expect("request failed");
        let status = res.status().as_u16();
        (status, res.text().await.expect("body failed"))
    })
    .await
}

/// The next text message of a WebSocket (panics on anything else).
pub async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match within("a WebSocket message", ws.next()).await {
        Some(Ok(tungstenite::Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends `text` and expects it back.
pub async fn echo<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(
        "a WebSocket send",
        ws.send(tungstenite::Message::text(text)),
    )
    .await
    .unwrap();
    assert_eq!(next_text(ws).await, text);
}

/// Asserts nothing at all (no message, no close, no error) arrives for
/// [`QUIET`].
pub async fn assert_quiet<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Ok(got) = timeout(QUIET, ws.next()).await {
        panic!("expected silence, got {got:?}");
    }
}

/// The status of a refused WebSocket handshake, with the body.
pub fn refusal(result: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(res)) => (
            res.status().as_u16(),
            String::from_utf8_lossy(res.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("handshake failed otherwise: {e}"),
        Ok(_) => panic!("handshake succeeded"),
    }
}
