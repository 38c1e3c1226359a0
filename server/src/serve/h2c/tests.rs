use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{PREFACE, read_preface};
use crate::{Holdfast, ServeConfig};

const PATIENCE: Duration = Duration::from_secs(10);

/// An echo server on 127.0.0.1, with or without h2c.
async fn echo_server(http2_cleartext: bool) -> SocketAddr {
    echo_server_with(ServeConfig {
        http2_cleartext,
        ..ServeConfig::default()
    })
    .await
}

/// An echo server on 127.0.0.1 served with `config`.
async fn echo_server_with(config: ServeConfig) -> SocketAddr {
    let holdfast = Holdfast::builder().on_session(|session| async move {
        while let Some(message) = session.recv().await {
            if session.send(message).await.is_err() {
                break;
            }
        }
    });
    let app = axum::Router::new().merge(holdfast.router_at("/rt"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = crate::serve(listener, app).config(config).await;
    });
    addr
}

/// Reads `body` until `needle` has arrived; all that was read.
async fn read_until(body: &mut Incoming, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("an answer in time")
            .expect("the body goes on")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return text.into_owned();
        }
    }
}

fn key_of(open: &str) -> String {
    let start = open.find("\"key\":\"").expect("a key") + 7;
    let end = open[start..].find('"').expect("the key's end") + start;
    open[start..end].to_owned()
}

/// An HTTP/2 client connection to `addr`.
async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

/// Opens an SSE session on `sender`'s connection: its response (checked
/// to be HTTP/2 and 200), its stream and its key.
async fn open_sse(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
) -> (Incoming, String) {
    let request = hyper::Request::get(format!("http://{addr}/rt/sse?v=1"))
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let response = sender.send_request(request).await.expect("a response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), http::StatusCode::OK);
    let mut stream = response.into_body();
    let key = key_of(&read_until(&mut stream, "\"key\"").await);
    (stream, key)
}

/// Sends `text` as message 1 of the session `key` on `sender`'s
/// connection; the answer's status.
async fn send_text(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    key: &str,
    text: &str,
) -> http::StatusCode {
    let body = format!(r#"[{{"t":"msg","seq":1,"d":"{text}"}}]"#);
    let send = hyper::Request::post(format!("http://{addr}/rt/send?v=1"))
        .header("holdfast-key", key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a request");
    sender
        .send_request(send)
        .await
        .expect("a send answer on the same connection")
        .status()
}

/// What h2c is for: the stream and the sends of a session on one HTTP/2
/// connection.
#[tokio::test]
async fn one_http2_connection_carries_the_stream_and_the_sends() {
    let addr = echo_server(true).await;
    let mut sender = h2_connect(addr).await;
    let (mut stream, key) = open_sse(&mut sender, addr).await;
    let sent = send_text(&mut sender, addr, &key, "over h2c").await;
    assert_eq!(sent, http::StatusCode::OK);
    let echoed = read_until(&mut stream, "over h2c").await;
    assert!(echoed.contains("\"msg\""), "{echoed}");
}

/// Turning h2c on leaves HTTP/1.1 on the same port as it was.
#[tokio::test]
async fn http1_is_served_beside_it() {
    let addr = echo_server(true).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /rt/poll?v=1 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"open\"") {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
}

/// Without the setting, an HTTP/2 client is not served.
#[tokio::test]
async fn off_by_default() {
    assert!(!ServeConfig::default().http2_cleartext);
    let addr = echo_server(false).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let handshake = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    );
    let failed = match tokio::time::timeout(PATIENCE, handshake)
        .await
        .expect("in time")
    {
        Err(_) => true,
        Ok((mut sender, connection)) => {
            tokio::spawn(connection);
            let request = hyper::Request::get(format!("http://{addr}/rt/poll?v=1"))
                .body(Full::new(Bytes::new()))
                .expect("a request");
            tokio::time::timeout(PATIENCE, sender.send_request(request))
                .await
                .expect("in time")
                .is_err()
        }
    };
    assert!(failed, "an HTTP/1.1-only server answered HTTP/2");
}

/// The preface may arrive in pieces: the server waits for the rest, and
/// gives back every byte it read.
#[tokio::test]
async fn a_preface_in_pieces() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let mut sniffing = Box::pin(read_preface(&mut server));
    client.write_all(&PREFACE[..7]).await.expect("write");
    assert!(
        sniffing.as_mut().now_or_never().is_none(),
        "waits for the rest"
    );
    client.write_all(&PREFACE[7..]).await.expect("write");
    let (matched, seen) = sniffing.await.expect("read");
    assert!(matched);
    assert_eq!(&seen[..], &PREFACE[..]);
}

/// Anything else is told apart at its first differing byte, and what was
/// read is kept for HTTP/1.1; a client that hangs up at once is left to
/// HTTP/1.1 too.
#[tokio::test]
async fn not_a_preface() {
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"POST /rt/send").await.expect("write");
    let (matched, seen) = read_preface(&mut server).await.expect("read");
    assert!(!matched);
    assert_eq!(&seen[..], b"POST /rt/send");

    let (client, mut server) = tokio::io::duplex(64);
    drop(client);
    let (matched, seen) = read_preface(&mut server).await.expect("read");
    assert!(!matched);
    assert!(seen.is_empty());
}

/// An HTTP/2 frame as read off the wire: its type, flags, stream and
/// payload.
struct RawFrame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(tcp: &mut TcpStream) -> RawFrame {
    let mut head = [0u8; 9];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut head))
        .await
        .expect("a frame in time")
        .expect("a frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.expect("a frame payload");
    RawFrame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// What one HTTP/2 connection can make the server hold is bounded by the
/// server's settings, not hyper's defaults (200 streams, 1 MiB windows).
#[tokio::test]
async fn streams_and_flow_control_windows_are_bounded() {
    let addr = echo_server(true).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(PREFACE).await.expect("preface");
    // An empty SETTINGS frame: the client's own settings are the defaults.
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let settings = read_frame(&mut tcp).await;
    assert_eq!(
        (settings.kind, settings.flags, settings.stream),
        (0x4, 0, 0)
    );
    let values: Vec<(u16, u32)> = settings
        .payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    let setting = |id: u16| values.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(
        setting(0x3),
        Some(super::MAX_CONCURRENT_STREAMS),
        "{values:?}"
    );
    // The stream window is HTTP/2's default: sent or not, it is 65 535.
    assert_eq!(setting(0x4).unwrap_or(65_535), super::STREAM_WINDOW);
    // The connection's window starts at 65 535; a WINDOW_UPDATE on stream
    // 0 raises it to the server's.
    let mut connection_window = 65_535u32;
    for _ in 0..4 {
        let frame = read_frame(&mut tcp).await;
        if frame.kind == 0x8 && frame.stream == 0 {
            let raw = &frame.payload[..4];
            connection_window += u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) & 0x7fff_ffff;
            break;
        }
    }
    assert_eq!(connection_window, super::CONNECTION_WINDOW);
}

/// An HTTP/2 connection that carries no request is closed after the
/// header read timeout, as an idle HTTP/1.1 one is.
#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let addr = echo_server_with(ServeConfig {
        http2_cleartext: true,
        header_read_timeout: Duration::from_millis(300),
        ..ServeConfig::default()
    })
    .await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("an HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    // One answered request, then nothing.
    let request = hyper::Request::get(format!("http://{addr}/rt/nothing-here"))
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let answer = sender.send_request(request).await.expect("an answer");
    assert_eq!(answer.status(), http::StatusCode::NOT_FOUND);
    drop(answer);
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the server closes the idle connection")
        .expect("the connection task")
        .expect("a clean close (GOAWAY)");
}

/// A held stream is a request in flight: its connection stays open past
/// the header read timeout, and carries sends then.
#[tokio::test]
async fn a_held_stream_keeps_its_http2_connection() {
    let timeout = Duration::from_millis(200);
    let addr = echo_server_with(ServeConfig {
        http2_cleartext: true,
        header_read_timeout: timeout,
        ..ServeConfig::default()
    })
    .await;
    let mut sender = h2_connect(addr).await;
    let (mut stream, key) = open_sse(&mut sender, addr).await;
    // Time passing is what is tested: several idle deadlines with only
    // the stream open.
    tokio::time::sleep(timeout * 4).await;
    let sent = send_text(&mut sender, addr, &key, "still here").await;
    assert_eq!(sent, http::StatusCode::OK);
    read_until(&mut stream, "still here").await;
}
