//! Raw transport access, one request or socket at a time, for tests that
//! look at exact wire behaviour (statuses, headers, close codes). Every
//! wait is bounded by [`DEADLINE`] (or an explicit one) and panics with a
//! description when it runs out.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, Stream, StreamExt};
use http::HeaderMap;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wire::{self, Frame, SharedBatch, SseEvent, SseParser};

/// The next application-visible message on `stream` (WebSocket pings are
/// skipped), waiting at most `bound`.
async fn next_in<S>(stream: &mut S, bound: Duration) -> WsIn
where
    S: Stream<Item = Result<WsMessage, tungstenite::Error>> + Unpin,
{
    loop {
        let next = within(bound, "waiting for a WebSocket message", stream.next()).await;
        return match next {
            None => WsIn::Ended("stream ended".into()),
            Some(Err(e)) => WsIn::Ended(e.to_string()),
            Some(Ok(WsMessage::Text(text))) => match wire::parse_batch(text.as_bytes()) {
                Ok(frames) => WsIn::Frames(frames),
                Err(e) => panic!("server sent a bad batch: {e}"),
            },
            Some(Ok(WsMessage::Binary(bytes))) if bytes.first() == Some(&wire::TEXT_MESSAGE) => {
                match wire::decode_native_text(&bytes) {
                    Ok((seq, text)) => WsIn::NativeText { seq, text },
                    Err(e) => panic!("server sent a bad native text message: {e}"),
                }
            }
            Some(Ok(WsMessage::Binary(bytes))) => match wire::decode_binary(&bytes) {
                Ok((seq, payload)) => WsIn::Binary { seq, payload },
                Err(e) => panic!("server sent a bad binary message: {e}"),
            },
            Some(Ok(WsMessage::Close(frame))) => {
                WsIn::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                continue;
            }
        };
    }
}

/// Reads `stream` until it closes: every frame on the way (binary messages
/// as `bin` frames), then the WebSocket close code and reason. Panics if it
/// ends without a close.
async fn until_closed<S>(stream: &mut S) -> Ending
where
    S: Stream<Item = Result<WsMessage, tungstenite::Error>> + Unpin,
{
    let mut frames = Vec::new();
    loop {
        match next_in(stream, DEADLINE).await {
            WsIn::Frames(batch) => frames.extend(batch),
            WsIn::Binary { seq, payload } => frames.push(Frame::Bin { seq, data: payload }),
            WsIn::NativeText { seq, text } => frames.push(Frame::Msg { seq, data: text }),
            WsIn::Closed(close) => return (frames, close),
            WsIn::Ended(why) => panic!(
                "the socket ended without a WebSocket close ({why}); frames so far {frames:?}"
            ),
        }
    }
}

/// How a WebSocket ended: the frames read until its close, then the close
/// code and reason (`None`: a close frame without a code).
pub type Ending = (Vec<Frame>, Option<(u16, String)>);

/// The default bound on any single wait in a test.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Awaits `future` for at most `within`, panicking with `what` otherwise.
pub async fn within<F: Future>(within: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(within, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {within:?}: {what}"),
    }
}

/// A plain HTTP client that never goes through a proxy.
pub fn http_client() -> reqwest::Client {
    // reqwest may be built with rustls but no crypto provider (feature
    // unification with the client crate): give it one. Plain HTTP here, but
    // reqwest builds its TLS configuration anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let built = std::panic::catch_unwind(|| reqwest::Client::builder().no_proxy().build());
    match built {
        Ok(client) => client.expect("build the HTTP client"),
        Err(_) => panic!(
            "reqwest::Client cannot be built: some crate in this build enabled reqwest's \
             `rustls-tls-*-no-provider` feature, and feature unification gives it to these \
             plain-HTTP tests too, where no rustls CryptoProvider is installed"
        ),
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query that resumes session `key` having delivered up to `last`.
pub fn resume_query(key: &str, last: u64) -> String {
    format!("v=1&key={}&last={last}", encode(key))
}

/// A complete HTTP response, with its body parsed as a batch when it is one.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The raw body.
    pub body: Bytes,
    /// The body as a batch, if it parses as one.
    pub frames: Result<Vec<Frame>, String>,
}

impl Reply {
    /// A response header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The batch in the body, or a panic describing the response.
    pub fn batch(&self) -> Vec<Frame> {
        match &self.frames {
            Ok(frames) => frames.clone(),
            Err(e) => panic!(
                "response {} does not hold a batch: {e}; body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            ),
        }
    }

    /// The body as a shared batch (§11.2), or a panic describing the
    /// response.
    pub fn shared(&self) -> SharedBatch {
        wire::parse_shared_batch(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} does not hold a shared batch: {e}; body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a refusal per `PROTOCOL.md` §7: this status, JSON, one frame
    /// of this type (`close`/`detach`) with this code. Returns the frame.
    pub fn assert_refusal(&self, status: u16, t: &str, code: u16) -> Frame {
        assert_eq!(
            self.status,
            status,
            "expected status {status}, got {} with body {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            self.header("content-type").starts_with("application/json"),
            "a refusal must be application/json, got {:?}",
            self.header("content-type")
        );
        let frames = self.batch();
        assert_eq!(
            frames.len(),
            1,
            "a refusal holds exactly one frame: {frames:?}"
        );
        assert_eq!(frames[0].kind(), t, "refusal frame type: {frames:?}");
        assert_eq!(frames[0].code(), Some(code), "refusal code: {frames:?}");
        frames[0].clone()
    }
}

/// Reads a whole response.
pub async fn read_reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = within(DEADLINE, "reading a response body", response.bytes())
        .await
        .unwrap_or_else(|e| panic!("response body failed: {e}"));
    let frames = wire::parse_batch(&body);
    Reply {
        status,
        headers,
        body,
        frames,
    }
}

/// `GET url` with extra headers, read whole (not for SSE streams).
pub async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = within(DEADLINE, &format!("GET {url}"), request.send())
        .await
        .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
    read_reply(response).await
}

/// `POST url` with a body and extra headers.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Reply {
    read_reply(post_request(client.post(url), url, body, headers).await).await
}

/// Sends a `POST` of `body` as text with `headers`; panics if no response
/// comes within [`DEADLINE`].
async fn post_request(
    request: reqwest::RequestBuilder,
    url: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = request
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    within(DEADLINE, &format!("POST {url}"), request.send())
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
}

/// `POST <base>/send?v=1&key=K` with a batch.
pub async fn send(client: &reqwest::Client, base: &str, key: &str, frames: &[Frame]) -> Reply {
    let url = format!("{base}/send?v=1&key={}", encode(key));
    post(client, &url, wire::encode_batch(frames), &[]).await
}

/// What a WebSocket delivered.
#[derive(Debug)]
pub enum WsIn {
    /// A text message: a batch.
    Frames(Vec<Frame>),
    /// A native binary message.
    Binary {
        /// Its seq.
        seq: u64,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A native text message (§2.2.1: only where the greeting granted it).
    NativeText {
        /// Its seq.
        seq: u64,
        /// Its text.
        text: String,
    },
    /// A WebSocket close: code and reason, if a close frame was given.
    Closed(Option<(u16, String)>),
    /// The connection ended without a close.
    Ended(String),
}

/// The socket type of the client.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket refused before the upgrade.
#[derive(Debug)]
pub struct WsRefused {
    /// The HTTP status.
    pub status: u16,
    /// The body, if any.
    pub body: Vec<u8>,
}

/// Opens a WebSocket to `url` with extra request headers.
pub async fn ws_connect(url: &str, headers: &[(&str, &str)]) -> Result<WsStream, WsRefused> {
    let mut request = url.into_client_request().expect("a valid ws:// URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    let connected = within(
        DEADLINE,
        &format!("WebSocket upgrade to {url}"),
        tokio_tungstenite::connect_async(request),
    )
    .await;
    match connected {
        Ok((stream, _response)) => Ok(stream),
        Err(tungstenite::Error::Http(response)) => Err(WsRefused {
            status: response.status().as_u16(),
            body: response.body().clone().unwrap_or_default(),
        }),
        Err(e) => panic!("WebSocket upgrade to {url} failed: {e}"),
    }
}

/// One WebSocket, read and written message by message.
pub struct RawWs {
    /// The underlying socket.
    pub stream: WsStream,
}

impl RawWs {
    /// Opens a WebSocket; panics if the upgrade is refused.
    pub async fn connect(url: &str) -> Self {
        Self::connect_with(url, &[]).await
    }

    /// Opens a WebSocket with extra headers; panics if the upgrade is refused.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Self {
        match ws_connect(url, headers).await {
            Ok(stream) => Self { stream },
            Err(refused) => panic!(
                "WebSocket upgrade refused with {}: {:?}",
                refused.status,
                String::from_utf8_lossy(&refused.body)
            ),
        }
    }

    /// The next application-visible message (WebSocket pings are skipped).
    pub async fn recv(&mut self) -> WsIn {
        self.recv_within(DEADLINE).await
    }

    /// Like [`recv`](Self::recv), with an explicit bound.
    pub async fn recv_within(&mut self, bound: Duration) -> WsIn {
        next_in(&mut self.stream, bound).await
    }

    /// The next batch; panics on anything else.
    pub async fn recv_frames(&mut self) -> Vec<Frame> {
        match self.recv().await {
            WsIn::Frames(frames) => frames,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    /// Reads until the socket closes: every frame on the way (binary
    /// messages as `bin` frames), then the WebSocket close code and reason.
    pub async fn recv_until_closed(&mut self) -> Ending {
        until_closed(&mut self.stream).await
    }

    /// Splits the socket: a task of its own reads until the close, as
    /// [`recv_until_closed`](Self::recv_until_closed) does — the way a
    /// browser reads while the page sends — and the caller keeps the
    /// sending half.
    pub fn read_in_background(
        self,
    ) -> (
        SplitSink<WsStream, WsMessage>,
        tokio::task::JoinHandle<Ending>,
    ) {
        let (sink, mut stream) = self.stream.split();
        let reader = tokio::spawn(async move { until_closed(&mut stream).await });
        (sink, reader)
    }

    /// Sends a batch as a text message.
    pub async fn send_frames(&mut self, frames: &[Frame]) {
        self.send_text(&wire::encode_batch(frames)).await;
    }

    /// Sends a raw text message.
    pub async fn send_text(&mut self, text: &str) {
        within(
            DEADLINE,
            "sending a text message",
            self.stream.send(WsMessage::text(text.to_owned())),
        )
        .await
        .unwrap_or_else(|e| panic!("sending a text message failed: {e}"));
    }

    /// Sends a raw binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        within(
            DEADLINE,
            "sending a binary message",
            self.stream.send(WsMessage::binary(bytes)),
        )
        .await
        .unwrap_or_else(|e| panic!("sending a binary message failed: {e}"));
    }

    /// Starts the WebSocket closing handshake with this code.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        let _ = within(
            DEADLINE,
            "closing a WebSocket",
            self.stream.close(Some(frame)),
        )
        .await;
    }
}

/// An SSE response, read event by event.
pub struct Sse {
    /// The response status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    /// The event-stream parser (comment counts, last event id).
    pub parser: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
    /// Bytes of body read so far.
    pub bytes_read: usize,
}

/// What a shared stream delivered.
#[derive(Debug)]
pub enum SharedIn {
    /// An event holding a shared batch.
    Event(SharedBatch),
    /// The body ended cleanly (terminating chunk).
    Ended,
    /// The body was cut or failed.
    Failed(String),
}

/// How an SSE read ended.
#[derive(Debug)]
pub enum SseIn {
    /// An event holding a batch.
    Event {
        /// The `id:` field.
        id: Option<String>,
        /// The batch in `data:`.
        frames: Vec<Frame>,
    },
    /// The body ended cleanly (terminating chunk).
    Ended,
    /// The body was cut or failed.
    Failed(String),
}

impl Sse {
    /// `GET url` and, if it is an event stream, start reading it; a refusal
    /// comes back as the whole [`Reply`].
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Reply> {
        let mut request = client.get(url).header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = within(DEADLINE, &format!("GET {url}"), request.send())
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        Self::from_response(response).await
    }

    /// `POST url` with `body` (a shared request, §11.1) and, if the answer
    /// is an event stream, start reading it; a refusal comes back as the
    /// whole [`Reply`].
    pub async fn post(
        client: &reqwest::Client,
        url: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> Result<Self, Reply> {
        let request = client.post(url).header("accept", "text/event-stream");
        Self::from_response(post_request(request, url, body, headers).await).await
    }

    async fn from_response(response: reqwest::Response) -> Result<Self, Reply> {
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if response.status() != 200 || !is_stream {
            return Err(read_reply(response).await);
        }
        Ok(Self {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            stream: response.bytes_stream().boxed(),
            parser: SseParser::default(),
            pending: Default::default(),
            bytes_read: 0,
        })
    }

    /// A response header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The next event (cancel-safe: state lives in `self`).
    pub async fn next(&mut self) -> SseIn {
        loop {
            if let Some(event) = self.pending.pop_front() {
                assert_eq!(
                    event.data_lines, 1,
                    "PROTOCOL.md §8.2: `data:` is always a single line; got {event:?}"
                );
                let frames = wire::parse_batch(event.data.as_bytes())
                    .unwrap_or_else(|e| panic!("SSE event with a bad batch: {e}"));
                return SseIn::Event {
                    id: event.id,
                    frames,
                };
            }
            match self.stream.next().await {
                None => return SseIn::Ended,
                Some(Err(e)) => return SseIn::Failed(e.to_string()),
                Some(Ok(chunk)) => self.feed(&chunk),
            }
        }
    }

    /// The next event of a shared stream (§11.2): its shared batch.
    /// Panics on an event that is not one, or that has an `id:`.
    pub async fn next_shared(&mut self) -> SharedIn {
        loop {
            if let Some(event) = self.pending.pop_front() {
                assert_eq!(
                    event.data_lines, 1,
                    "PROTOCOL.md §8.2: `data:` is always a single line; got {event:?}"
                );
                assert_eq!(event.id, None, "§11.2: shared events have no `id:`");
                let pairs = wire::parse_shared_batch(event.data.as_bytes())
                    .unwrap_or_else(|e| panic!("SSE event with a bad shared batch: {e}"));
                return SharedIn::Event(pairs);
            }
            match self.stream.next().await {
                None => return SharedIn::Ended,
                Some(Err(e)) => return SharedIn::Failed(e.to_string()),
                Some(Ok(chunk)) => self.feed(&chunk),
            }
        }
    }

    /// The next event within `bound`; panics if none comes.
    pub async fn next_within(&mut self, bound: Duration) -> SseIn {
        within(bound, "waiting for an SSE event", self.next()).await
    }

    /// Feeds the parser raw bytes (all of a chunk, or part of one to cut it).
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes_read += chunk.len();
        let events = self.parser.feed(chunk);
        self.pending.extend(events);
    }

    /// The next raw chunk of the body, not yet parsed.
    pub async fn next_chunk(&mut self) -> Option<reqwest::Result<Bytes>> {
        self.stream.next().await
    }

    /// The next complete event already parsed, if any.
    pub fn take_event(&mut self) -> Option<SseEvent> {
        self.pending.pop_front()
    }

    /// Whether complete events are waiting to be taken.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Reads until the stream ends: every frame on the way, and whether it
    /// ended cleanly.
    pub async fn read_to_end(&mut self, bound: Duration) -> (Vec<Frame>, SseIn) {
        let mut frames = Vec::new();
        let end = within(bound, "reading an SSE stream to its end", async {
            loop {
                match self.next().await {
                    SseIn::Event { frames: batch, .. } => frames.extend(batch),
                    end => return end,
                }
            }
        })
        .await;
        (frames, end)
    }
}
