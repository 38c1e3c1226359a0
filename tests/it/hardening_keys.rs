//! Key hygiene (`PROTOCOL.md` §1): the session key travels outside the URL
//! wherever the transport allows — the `Holdfast-Key` request header on
//! every endpoint, a `holdfast.key.<key>` subprotocol on a WebSocket
//! upgrade — so that access logs, which record URLs, hold no live keys.
//! The server takes the key from any of those places (and from the query,
//! for clients that cannot do otherwise) but refuses two different keys,
//! and lets cross-origin pages send the header (CORS); the Rust client
//! never puts it in a URL, on any transport, probes included, while its
//! messages still arrive exactly once.

use crate::support;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::client_support::{client, exchange, quick_server_config, unique_mount, wait_for};
use crate::support::raw::{self, RawWs, Sse, SseIn, WsIn};
use crate::support::{DEADLINE, Frame, TestServer};
use axum::serve::ListenerExt;
use holdfast::client::{Connection, Event, TransportKind};
use holdfast::server::{Holdfast, ServerConfig};
use holdfast_testkit::{Behavior, PathFilter, Proxy};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEY_HEADER: &str = "holdfast-key";

fn msg(seq: u64, text: &str) -> Frame {
    Frame::Msg {
        seq,
        data: text.into(),
    }
}

/// Opens a session with a first poll: its key.
async fn open_session(http: &reqwest::Client, server: &TestServer) -> String {
    let reply = raw::get(http, &server.url("poll", "v=1"), &[]).await;
    match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected `open`, got {other:?}"),
    }
}

/// The frames of the first WebSocket message.
async fn first_ws_frames(ws: &mut RawWs) -> Vec<Frame> {
    match ws.recv().await {
        WsIn::Frames(frames) => frames,
        other => panic!("expected a batch, got {other:?}"),
    }
}

#[tokio::test]
async fn the_server_takes_the_key_from_the_header_on_every_endpoint() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let key = open_session(&http, &server).await;
    let with_key = [(KEY_HEADER, key.as_str())];

    // send: the key in the header only.
    let sent = raw::post(
        &http,
        &server.url("send", "v=1"),
        support::wire::encode_batch(&[msg(1, "hello")]),
        &with_key,
    )
    .await;
    assert_eq!(sent.status, 200, "send with the key header: {sent:?}");
    assert_eq!(sent.batch().first(), Some(&Frame::Ack { seq: 1 }));

    // poll: the echo comes back on the session named by the header.
    let polled = raw::get(&http, &server.url("poll", "v=1&last=0"), &with_key).await;
    assert_eq!(polled.status, 200, "poll with the key header: {polled:?}");
    assert!(
        polled.batch().contains(&msg(1, "hello")),
        "the poll resumed the session: {:?}",
        polled.batch()
    );

    // sse: a resume, not a new session.
    let mut sse = Sse::open(&http, &server.url("sse", "v=1&last=1"), &with_key)
        .await
        .unwrap_or_else(|reply| panic!("SSE refused: {reply:?}"));
    match sse.next_within(DEADLINE).await {
        SseIn::Event { frames, .. } => {
            assert_eq!(
                frames.first(),
                Some(&Frame::Resumed { ack: 1 }),
                "{frames:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(sse);

    // ws: a resume, not a new session.
    let mut ws = RawWs::connect_with(&server.ws_url("v=1&last=1"), &with_key).await;
    assert_eq!(
        first_ws_frames(&mut ws).await.first(),
        Some(&Frame::Resumed { ack: 1 })
    );
    ws.close(1000, "").await;

    // Probes prove the key with the header alone.
    let mut probe = Sse::open(&http, &server.url("sse", "v=1&probe=1"), &with_key)
        .await
        .unwrap_or_else(|reply| panic!("SSE probe refused: {reply:?}"));
    match probe.next_within(DEADLINE).await {
        SseIn::Event { frames, .. } => assert_eq!(frames, vec![Frame::Ping]),
        other => panic!("{other:?}"),
    }
    drop(probe);
    let mut probe = RawWs::connect_with(&server.ws_url("v=1&probe=1"), &with_key).await;
    probe.send_frames(&[Frame::Ping]).await;
    assert_eq!(first_ws_frames(&mut probe).await, vec![Frame::Pong]);
}

#[tokio::test]
async fn a_websocket_takes_the_key_as_a_subprotocol_and_selects_holdfast_v1() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let key = open_session(&http, &server).await;

    // What a browser offers: our subprotocol and the key token.
    let mut request = server
        .ws_url("v=1&last=0")
        .into_client_request()
        .expect("request");
    let offer = format!("holdfast.v1, holdfast.key.{key}");
    request.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_str(&offer).expect("header value"),
    );
    let (stream, response) = raw::within(
        DEADLINE,
        "the WebSocket upgrade",
        tokio_tungstenite::connect_async(request),
    )
    .await
    .unwrap_or_else(|e| panic!("the upgrade offering subprotocols failed: {e}"));
    let selected: Vec<_> = response
        .headers()
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(selected, ["holdfast.v1"], "the key token is never echoed");
    let mut ws = RawWs { stream };
    assert_eq!(
        first_ws_frames(&mut ws).await.first(),
        Some(&Frame::Resumed { ack: 0 })
    );
    // The session carries on over it.
    ws.send_frames(&[msg(1, "over the subprotocol")]).await;
    let mut got = Vec::new();
    while !got.contains(&msg(1, "over the subprotocol")) {
        got.extend(first_ws_frames(&mut ws).await);
    }
}

#[tokio::test]
async fn two_different_keys_are_refused_and_the_session_lives_on() {
    // A short poll hold: a poll that were wrongly accepted answers soon.
    let mut config = ServerConfig::default();
    config.session.poll_hold = Duration::from_millis(300);
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let key = open_session(&http, &server).await;
    let other = format!("{key}x");
    let in_url = format!("v=1&key={}&last=0", raw::encode(&key));

    // The real key in the URL, another in the header: 400 with `detach`
    // 1002 (a malformed request naming a session; it ends nothing).
    let poll = raw::get(&http, &server.url("poll", &in_url), &[(KEY_HEADER, &other)]).await;
    poll.assert_refusal(400, "detach", 1002);
    let send = raw::post(
        &http,
        &server.url("send", &in_url),
        support::wire::encode_batch(&[msg(1, "refused")]),
        &[(KEY_HEADER, &other)],
    )
    .await;
    send.assert_refusal(400, "detach", 1002);
    let sse = raw::get(&http, &server.url("sse", &in_url), &[(KEY_HEADER, &other)]).await;
    sse.assert_refusal(400, "detach", 1002);

    // On WebSocket: after the upgrade, `detach` 1002 and close 1002; here
    // the header and the subprotocol disagree.
    let offer = format!("holdfast.v1, holdfast.key.{key}");
    let mut ws = RawWs::connect_with(
        &server.ws_url("v=1&last=0"),
        &[(KEY_HEADER, &other), ("sec-websocket-protocol", &offer)],
    )
    .await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Detach { code: 1002, .. }]),
        "{frames:?}"
    );
    assert_eq!(close.map(|(code, _)| code), Some(1002));

    // Nothing of the refused send was applied; the session carries on.
    let sent = raw::post(
        &http,
        &server.url("send", "v=1"),
        support::wire::encode_batch(&[msg(1, "accepted")]),
        &[(KEY_HEADER, &key)],
    )
    .await;
    assert_eq!(sent.status, 200, "{sent:?}");
    let polled = raw::get(
        &http,
        &server.url("poll", "v=1&last=0"),
        &[(KEY_HEADER, &key)],
    )
    .await;
    assert_eq!(polled.batch(), vec![msg(1, "accepted")]);
}

/// A request a server saw: its URI, and its key header if any.
type Request = (String, Option<String>);

/// Every request a server saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Request>>>);

impl Seen {
    fn all(&self) -> Vec<Request> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests to `endpoint` (`"/ws"`, `"/send"`…) carrying the key header,
    /// and whose query holds `with` (`""`: any).
    fn keyed(&self, endpoint: &str, with: &str) -> usize {
        self.all()
            .iter()
            .filter(|(uri, key)| {
                let path = uri.split('?').next().unwrap_or("");
                key.is_some() && path.ends_with(endpoint) && uri.contains(with)
            })
            .count()
    }

    /// Panics if any URI holds a key: a `key=` parameter, or any key a
    /// request carried in its header.
    fn assert_no_key_in_urls(&self) {
        let all = self.all();
        let keys: Vec<&String> = all.iter().filter_map(|(_, key)| key.as_ref()).collect();
        for (uri, _) in &all {
            let query = uri.split_once('?').map_or("", |(_, q)| q);
            assert!(
                !query.split('&').any(|pair| pair.starts_with("key=")),
                "a URL holds the key: {uri}"
            );
            for key in &keys {
                assert!(!uri.contains(key.as_str()), "a URL holds the key: {uri}");
            }
        }
    }
}

/// An echo server that records every request, behind a proxy the test
/// controls.
struct Recorded {
    seen: Seen,
    proxy: Arc<Proxy>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn recorded(behavior: Behavior) -> Recorded {
    let seen = Seen::default();
    let record = seen.clone();
    // An echo server of our own: the support ones have no room for a layer.
    let holdfast = Holdfast::builder()
        .config(quick_server_config())
        .on_session(crate::support::echo);
    let mount = unique_mount();
    let app =
        axum::Router::new()
            .nest(&mount, holdfast.router())
            .layer(axum::middleware::map_request(
                move |request: axum::extract::Request| {
                    let record = record.clone();
                    async move {
                        let key = request
                            .headers()
                            .get(KEY_HEADER)
                            .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
                        record
                            .0
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((request.uri().to_string(), key));
                        request
                    }
                },
            ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    let proxy = Proxy::builder()
        .upstream(addr)
        .behavior(behavior)
        .start()
        .await
        .expect("proxy");
    let url = format!("{}{mount}", proxy.url());
    Recorded {
        seen,
        proxy: Arc::new(proxy),
        url,
        task,
    }
}

/// Cuts every live connection once something is live (polls come and go).
fn cut_soon(proxy: &Arc<Proxy>) {
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let live = proxy.wait_until(|stats| stats.live > 0);
        if tokio::time::timeout(Duration::from_secs(5), live)
            .await
            .is_ok()
        {
            proxy.cut_all();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_never_puts_the_key_in_a_url() {
    for kind in [
        TransportKind::WebSocket,
        TransportKind::Sse,
        TransportKind::LongPoll,
    ] {
        let setup = recorded(Behavior::transparent()).await;
        let mut connection = client(&setup.url)
            .transport(kind)
            .connect()
            .await
            .expect("connect");
        // Cuts make the client resume, naming its session on the
        // downstream endpoint too.
        let seen = exchange(&mut connection, 300, |sent| {
            if sent == 100 || sent == 200 {
                cut_soon(&setup.proxy);
            }
        })
        .await;
        // On long-polling a cut poll may be followed by one that continues
        // the attachment (within the server's timeout) with no `resumed`:
        // every poll after the first names the session all the same.
        if kind != TransportKind::LongPoll {
            assert!(seen.resumed >= 1, "{kind}: no resume: {seen:?}");
        }
        let downstream = match kind {
            TransportKind::WebSocket => "/ws",
            TransportKind::Sse => "/sse",
            TransportKind::LongPoll => "/poll",
        };
        assert!(
            setup.seen.keyed(downstream, "") >= 1,
            "{kind}: no {downstream} request named the session in the header: {:?}",
            setup.seen.all()
        );
        if kind != TransportKind::WebSocket {
            assert!(
                setup.seen.keyed("/send", "") >= 1,
                "{kind}: no send named the session in the header"
            );
        }
        setup.seen.assert_no_key_in_urls();
        connection.close().await;
    }
}

/// Exchanges messages on the fallback, lets the proxy through, and waits
/// for the client to switch up to `to` after probing `endpoint` with its
/// key (outside the URL: the recorder checks that at the end).
async fn switches_up_after_a_probe(
    setup: &Recorded,
    connection: &mut Connection,
    to: TransportKind,
    endpoint: &str,
) {
    let from = connection.transport().expect("attached");
    exchange(connection, 100, |_| {}).await;
    setup.proxy.set(Behavior::transparent());
    let changed = wait_for(connection, |event| match event {
        Event::TransportChanged { from, to } => Some((*from, *to)),
        _ => None,
    })
    .await;
    assert_eq!(changed, (from, to));
    assert!(
        setup.seen.keyed(endpoint, "probe=1") >= 1,
        "{:?}",
        setup.seen.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_probes_with_the_key_outside_the_url() {
    // WebSocket refused: the client settles on SSE, then probes WebSocket
    // again once the proxy lets upgrades through, and switches up.
    let setup = recorded(Behavior::default().refuse_upgrades(403)).await;
    let mut connection = client(&setup.url)
        .reprobe_after(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    switches_up_after_a_probe(&setup, &mut connection, TransportKind::WebSocket, "/ws").await;

    // Buffered SSE: the client settles on long-polling, then probes SSE
    // once the buffering stops.
    let setup = recorded(
        Behavior::default()
            .refuse_upgrades(403)
            .buffer_responses(64 * 1024, PathFilter::ends_with("/sse")),
    )
    .await;
    let mut connection = client(&setup.url)
        .transports([TransportKind::Sse, TransportKind::LongPoll])
        .reprobe_after(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::LongPoll));
    switches_up_after_a_probe(&setup, &mut connection, TransportKind::Sse, "/sse").await;
    exchange(&mut connection, 100, |_| {}).await;
    setup.seen.assert_no_key_in_urls();
}

#[tokio::test]
async fn a_cross_origin_preflight_allows_the_key_header() {
    let holdfast = Holdfast::builder()
        .allow_origins(["https://app.example"])
        .on_session(support::echo);
    let server = TestServer::serve(holdfast).await;
    let http = raw::http_client();
    for endpoint in ["poll", "sse", "send"] {
        let response = raw::within(
            DEADLINE,
            "a preflight",
            http.request(http::Method::OPTIONS, server.url(endpoint, "v=1&last=0"))
                .header("origin", "https://app.example")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", KEY_HEADER)
                .send(),
        )
        .await
        .expect("preflight");
        let allowed = response
            .headers()
            .get("access-control-allow-headers")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            allowed.split(',').any(|h| h.trim() == KEY_HEADER),
            "{endpoint}: the preflight allows {allowed:?}"
        );
    }
}
