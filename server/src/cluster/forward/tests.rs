use std::convert::Infallible;
use std::sync::Mutex;

use axum::extract::ws::{Message as WsMessage, WebSocketUpgrade};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as TMessage;

use super::*;
use crate::cluster::tunnel::TunnelConfig;
use crate::cluster::tunnel::membus::MemBus;

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn config() -> TunnelConfig {
    TunnelConfig {
        accept_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(1500),
        ..TunnelConfig::default()
    }
}

/// Chunks the `/stream` route sends, handed over by the test.
type Chunks = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

/// Signals when dropped.
struct DropSignal(mpsc::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

/// What B's routes tell the test.
#[derive(Clone)]
struct Probes {
    chunks: Chunks,
    /// `/held` started.
    started: mpsc::Sender<()>,
    /// `/held` was dropped (its client went away).
    dropped: mpsc::Sender<()>,
}

/// Node B's app: what each test asks of the owner.
fn node_b_router(probes: Probes) -> Router {
    let chunks = probes.chunks.clone();
    Router::new()
        .route(
            "/held",
            get(move || async move {
                let _dropped = DropSignal(probes.dropped.clone());
                let _ = probes.started.send(()).await;
                std::future::pending::<String>().await
            }),
        )
        .route(
            "/hello",
            get(|request: Request<Body>| async move {
                let addr = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0);
                let tunneled = request.extensions().get::<Tunneled>().is_some();
                let query = request.uri().query().unwrap_or_default().to_owned();
                format!("hello {query} from {addr:?}, tunneled: {tunneled}")
            }),
        )
        .route(
            "/echo",
            post(|headers: HeaderMap, body: Bytes| async move {
                let tag = headers
                    .get("x-tag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                ([("x-tag", tag)], body)
            })
            .layer(axum::extract::DefaultBodyLimit::max(8 << 20)),
        )
        .route(
            "/stream",
            get(move || async move {
                let Some(rx) = chunks.lock().ok().and_then(|mut c| c.take()) else {
                    return StatusCode::CONFLICT.into_response();
                };
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
                });
                Body::from_stream(stream).into_response()
            }),
        )
        .route("/never", get(std::future::pending::<String>))
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        let reply = match message {
                            WsMessage::Text(text) => WsMessage::Text(format!("echo {text}").into()),
                            WsMessage::Binary(bytes) => WsMessage::Binary(bytes),
                            WsMessage::Close(_) => break,
                            _ => continue,
                        };
                        if socket.send(reply).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
}

/// Nodes A and B on one bus; B serves its tunnels with its router.
struct Cluster {
    bus: Arc<MemBus>,
    a: Arc<Tunnels>,
    /// Kept: B's tunnels live as long as the cluster.
    _b: Arc<Tunnels>,
    chunks: Chunks,
    started: mpsc::Receiver<()>,
    dropped: mpsc::Receiver<()>,
}

fn cluster(serve: ServeConfig) -> Cluster {
    let bus = MemBus::new();
    let (a, _a_incoming) = bus.node("A", config());
    let (b, b_incoming) = bus.node("B", config());
    let chunks: Chunks = Arc::default();
    let (started_tx, started) = mpsc::channel(4);
    let (dropped_tx, dropped) = mpsc::channel(4);
    let probes = Probes {
        chunks: chunks.clone(),
        started: started_tx,
        dropped: dropped_tx,
    };
    tokio::spawn(serve_tunnels(
        b_incoming,
        node_b_router(probes),
        serve,
        std::future::pending(),
    ));
    Cluster {
        bus,
        a,
        _b: b,
        chunks,
        started,
        dropped,
    }
}

fn request(method: &str, uri: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "app.test")
        .body(body)
        .expect("a request")
}

async fn text(response: Response) -> String {
    let body = within(
        "the body",
        axum::body::to_bytes(response.into_body(), 1 << 20),
    )
    .await
    .expect("a body");
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_get_reaches_the_owners_router_with_the_client_address_and_the_marker() {
    let cluster = cluster(ServeConfig::default());
    let client: SocketAddr = "198.51.100.4:5555".parse().expect("addr");
    let response = within(
        "forward",
        forward(
            &cluster.a,
            "B",
            Some(client),
            request("GET", "/realtime/hello?x=1", Body::empty()),
            PathAndQuery::from_static("/hello?x=1"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        text(response).await,
        "hello x=1 from Some(198.51.100.4:5555), tunneled: true"
    );
    // One tunnel per request, gone once the response is read.
    within("the tunnel to close", async {
        while cluster.a.open_count() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_goes_and_comes_back_whole() {
    let cluster = cluster(ServeConfig::default());
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let mut post = request("POST", "/echo", Body::from(body.clone()));
    post.headers_mut()
        .insert("x-tag", http::HeaderValue::from_static("t1"));
    post.headers_mut().insert(
        header::EXPECT,
        http::HeaderValue::from_static("100-continue"),
    );
    let response = within(
        "forward",
        forward(
            &cluster.a,
            "B",
            None,
            post,
            PathAndQuery::from_static("/echo"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-tag"], "t1");
    let got = within(
        "the body",
        axum::body::to_bytes(response.into_body(), 8 << 20),
    )
    .await
    .expect("a body");
    assert!(got == body, "the echoed body differs");
}

#[tokio::test]
async fn a_streamed_response_arrives_chunk_by_chunk_and_a_break_cuts_it() {
    let cluster = cluster(ServeConfig::default());
    let (tx, rx) = mpsc::channel(4);
    *cluster.chunks.lock().expect("lock") = Some(rx);
    let response = within(
        "forward",
        forward(
            &cluster.a,
            "B",
            None,
            request("GET", "/stream", Body::empty()),
            PathAndQuery::from_static("/stream"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    for chunk in ["data: one\n\n", "data: two\n\n"] {
        tx.send(Bytes::from_static(chunk.as_bytes()))
            .await
            .expect("send");
        // Each chunk arrives while the response is still open.
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = within("a chunk", body.frame())
                .await
                .expect("more body")
                .expect("no error");
            got.extend_from_slice(frame.data_ref().expect("data"));
        }
        assert_eq!(got, chunk.as_bytes());
    }
    // B is declared dead: the body ends with an error, not a hang.
    cluster.a.reset_node("B");
    let end = within("the cut", body.frame()).await;
    assert!(matches!(end, Some(Err(_))), "{end:?}");
    drop(tx);
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_ends_the_request_on_the_owner() {
    let mut cluster = cluster(ServeConfig::default());
    let a = cluster.a.clone();
    let waiting = tokio::spawn(async move {
        forward(
            &a,
            "B",
            None,
            request("GET", "/held", Body::empty()),
            PathAndQuery::from_static("/held"),
        )
        .await
    });
    within("the owner to start", cluster.started.recv()).await;
    // The client hangs up: A's handler future is dropped.
    waiting.abort();
    within("the owner to let go", cluster.dropped.recv()).await;
    assert_eq!(cluster.a.open_count(), 0);
}

#[tokio::test]
async fn a_dead_owner_gets_a_502_within_the_accept_deadline() {
    let cluster = cluster(ServeConfig::default());
    cluster.bus.kill("B");
    let started = tokio::time::Instant::now();
    let response = within(
        "forward",
        forward(
            &cluster.a,
            "B",
            None,
            request("GET", "/hello", Body::empty()),
            PathAndQuery::from_static("/hello"),
        ),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = text(response).await;
    assert!(
        body.contains("did not accept the tunnel within 300ms"),
        "{body}"
    );
    // The abandoned tunnel is gone.
    assert_eq!(cluster.a.open_count(), 0);
}

#[tokio::test]
async fn an_owner_that_does_not_answer_gets_a_504_within_the_response_deadline() {
    let cluster = cluster(ServeConfig::default());
    let started = tokio::time::Instant::now();
    let response = within(
        "forward",
        forward(
            &cluster.a,
            "B",
            None,
            request("GET", "/never", Body::empty()),
            PathAndQuery::from_static("/never"),
        ),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(text(response).await.contains("did not answer within"));
    assert_eq!(cluster.a.open_count(), 0);
}

#[tokio::test]
async fn a_tunnel_that_trickles_its_head_is_closed_by_the_header_timeout() {
    let cluster = cluster(ServeConfig {
        header_read_timeout: Duration::from_millis(200),
        ..ServeConfig::default()
    });
    let mut tunnel = cluster.a.connect("B", None).expect("connect");
    tunnel
        .write_all(b"GET /hello HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    // hyper answers 408 or just closes; either way the tunnel ends.
    let _ = within("the close", tunnel.read_to_end(&mut rest)).await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_forwarded_both_ways() {
    let cluster = cluster(ServeConfig::default());
    let a = cluster.a.clone();
    // Node A: a real listener whose every request goes to B.
    let node_a = Router::new().fallback(
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request<Body>| {
            let a = a.clone();
            async move {
                let target = request
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                forward(&a, "B", Some(peer), request, target).await
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(crate::serve::serve(listener, node_a).into_future());

    let (mut ws, response) = within(
        "the handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("a WebSocket");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..50 {
        ws.send(TMessage::text(format!("m{i}")))
            .await
            .expect("send");
    }
    for i in 0..50 {
        let message = within("an echo", ws.next())
            .await
            .expect("a message")
            .expect("no error");
        assert_eq!(message, TMessage::text(format!("echo m{i}")));
    }
    // A big binary message crosses several frames and windows.
    let big: Vec<u8> = (0..1_000_000).map(|i| (i % 249) as u8).collect();
    ws.send(TMessage::binary(big.clone())).await.expect("send");
    let message = within("the big echo", ws.next())
        .await
        .expect("a message")
        .expect("no error");
    assert!(message == TMessage::binary(big), "the big message differs");
    ws.close(None).await.expect("close");
    // The bridge ends with the socket: the tunnel closes.
    within("the tunnel to close", async {
        while cluster.a.open_count() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    // The owner is declared dead mid-socket: the client's socket ends.
    let (mut ws, _) = within(
        "the handshake",
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .expect("a WebSocket");
    ws.send(TMessage::text("before")).await.expect("send");
    let echo = within("an echo", ws.next()).await;
    assert!(matches!(echo, Some(Ok(TMessage::Text(ref t))) if t.as_str() == "echo before"));
    cluster.a.reset_node("B");
    let end = within("the socket to end", ws.next()).await;
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(TMessage::Close(_)))),
        "{end:?}"
    );
    server.abort();
}

#[tokio::test]
async fn on_shutdown_the_owner_refuses_new_tunnels_and_finishes_its_requests() {
    let bus = MemBus::new();
    let (a, _a_incoming) = bus.node("A", config());
    let (_b, b_incoming) = bus.node("B", config());
    let chunks: Chunks = Arc::default();
    let (started, _) = mpsc::channel(1);
    let (dropped, _) = mpsc::channel(1);
    let probes = Probes {
        chunks: chunks.clone(),
        started,
        dropped,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve_tunnels(
        b_incoming,
        node_b_router(probes),
        ServeConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let (tx, rx) = mpsc::channel(4);
    *chunks.lock().expect("lock") = Some(rx);
    let response = within(
        "forward",
        forward(
            &a,
            "B",
            None,
            request("GET", "/stream", Body::empty()),
            PathAndQuery::from_static("/stream"),
        ),
    )
    .await;
    let mut body = response.into_body();
    let _ = stop.send(());
    // A new request is refused...
    let refused = within(
        "forward",
        forward(
            &a,
            "B",
            None,
            request("GET", "/hello", Body::empty()),
            PathAndQuery::from_static("/hello"),
        ),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    // Refused on arrival ("not serving tunnels"), or dropped from the
    // accept queue as the loop stops ("closed the tunnel").
    let why = text(refused).await;
    assert!(why.contains("the other node reset the tunnel"), "{why}");
    // ...while the one in flight runs to its end.
    assert!(!serving.is_finished());
    tx.send(Bytes::from_static(b"last")).await.expect("send");
    drop(tx);
    let mut got = Vec::new();
    while let Some(frame) = within("the body", body.frame()).await {
        got.extend_from_slice(frame.expect("no error").data_ref().expect("data"));
    }
    assert_eq!(got, b"last");
    within("serve_tunnels to return", serving)
        .await
        .expect("task");
}
