//! Who may open a session, how fast, and who may use it afterwards (issue
//! 10): the per-address rate limit on opening sessions (and its bounded
//! map of buckets), trusted reverse proxies and what they forward, the
//! `Origin` check's scheme, and re-authorization of every request that
//! names a session.
//!
//! The servers here run with connect info (the client's TCP address in
//! each request), as `holdfast::server::serve` does. Different clients are
//! different loopback addresses: the client sockets bind 127.0.0.2 or
//! 127.0.0.3; 127.0.0.1 plays the trusted proxy where there is one.

use crate::support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::raw::{self, Reply, resume_query};
use crate::support::*;
use holdfast::server::{
    Holdfast, Identity, IpNet, OpenRateLimit, OpenRequest, ProxyHeaders, Refusal, RequestKind,
    ServerConfig,
};
use tokio::net::TcpSocket;

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A holdfast server on a loopback port, with connect info; stopped when
/// dropped.
struct Server {
    base: String,
    addr: SocketAddr,
    holdfast: Holdfast,
    _task: server::AbortOnDrop,
}

impl Server {
    async fn serve(holdfast: Holdfast) -> Self {
        let (addr, task) = server::serve_with_peers(&holdfast).await;
        Self {
            base: format!("http://{addr}{}", server::MOUNT),
            addr,
            holdfast,
            _task: task,
        }
    }

    async fn echo(builder: holdfast::server::Builder) -> Self {
        Self::serve(builder.on_session(echo)).await
    }

    fn url(&self, endpoint: &str, query: &str) -> String {
        format!("{}/{endpoint}?{query}", self.base)
    }

    fn ws_url(&self, query: &str) -> String {
        format!("ws://{}{}/ws?{query}", self.addr, server::MOUNT)
    }
}

/// A WebSocket to `url` from the loopback address `local`, or the status
/// of its refused upgrade.
async fn ws_try_from(
    local: IpAddr,
    server: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<RawWs, u16> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    let tcp = within(DEADLINE, "connect", socket.connect(server))
        .await
        .expect("connect");
    let mut request = url.into_client_request().expect("a ws:// URL");
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let upgrade = tokio_tungstenite::client_async(request, stream);
    match within(DEADLINE, "WebSocket upgrade", upgrade).await {
        Ok((stream, _)) => Ok(RawWs { stream }),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("WebSocket upgrade to {url}: {e}"),
    }
}

/// A WebSocket to `url` from the loopback address `local`.
async fn ws_from(local: IpAddr, server: SocketAddr, url: &str, headers: &[(&str, &str)]) -> RawWs {
    match ws_try_from(local, server, url, headers).await {
        Ok(ws) => ws,
        Err(status) => panic!("WebSocket upgrade to {url} refused with {status}"),
    }
}

/// Opens a session with a long-poll (its `open` frame comes back at once):
/// `Ok(key)`, or the refusal.
async fn open_poll(
    http: &reqwest::Client,
    server: &Server,
    headers: &[(&str, &str)],
) -> Result<String, Reply> {
    let reply = raw::get(http, &server.url("poll", "v=1"), headers).await;
    match reply.frames.as_deref() {
        Ok([Frame::Open(open), ..]) if reply.status == 200 => Ok(open.key.clone()),
        _ => Err(reply),
    }
}

/// Asserts that `reply` is the per-address refusal: 503, `Retry-After`,
/// close 4503 with its reason.
fn assert_rate_refusal(reply: &Reply) {
    let frame = reply.assert_refusal(503, "close", 4503);
    assert!(
        matches!(&frame, Frame::Close { reason, retry_after: Some(ms), .. }
            if reason.contains("your address") && *ms >= 1000),
        "{frame:?}"
    );
    let after: u64 = reply.header("retry-after").parse().unwrap_or(0);
    assert!(after >= 1, "Retry-After {:?}", reply.header("retry-after"));
}

fn limited(burst: u32, per_second: f64) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.open_rate_limit = Some(OpenRateLimit::new(burst, per_second));
    config
}

fn localhost() -> Vec<IpNet> {
    vec![IpNet::from(IpAddr::from([127, 0, 0, 1]))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_opening_in_a_loop_is_refused_while_others_open_and_lose_nothing() {
    const BURST: u32 = 50;
    const RATE: f64 = 5.0;
    const ATTEMPTS: usize = 400;
    let server = Server::echo(Holdfast::builder().config(limited(BURST, RATE))).await;

    // A well-behaved session from another address, exchanging all along.
    let messages: Vec<Payload> = (0..300)
        .map(|i| Payload::Text(format!("steady {i}")))
        .collect();
    let mut steady = Client::new(&server.base, 7);
    steady.backlog = messages.clone().into();
    steady.expect_down = messages.len();
    steady.release_max = 2;
    let steady = tokio::spawn(async move {
        let outcome = steady
            .attach(
                Transport::WebSocket,
                &Plan::until_done(Duration::from_secs(20)),
            )
            .await;
        (outcome, steady)
    });

    // The flood: one connection from one address, opening in a tight loop.
    let attacker = http_from(ATTACKER);
    let started = Instant::now();
    let (mut admitted, mut refused) = (0usize, 0usize);
    for _ in 0..ATTEMPTS {
        match open_poll(&attacker, &server, &[]).await {
            Ok(_) => admitted += 1,
            Err(reply) => {
                assert_rate_refusal(&reply);
                refused += 1;
            }
        }
    }
    let flood = started.elapsed();
    let allowed = BURST as usize + (RATE * flood.as_secs_f64()).ceil() as usize;
    eprintln!(
        "admission: one address, {ATTEMPTS} opens in {flood:?}: {admitted} admitted \
         (burst {BURST}, {RATE}/s allow {allowed}), {refused} refused with 503 + Retry-After"
    );
    assert!(
        admitted >= BURST as usize && admitted <= allowed,
        "{admitted} opens admitted, the limit allows {allowed}"
    );
    assert_eq!(admitted + refused, ATTEMPTS);

    // Its WebSocket and SSE opens are refused too (4503 after the upgrade).
    let mut ws = ws_from(ATTACKER, server.addr, &server.ws_url("v=1"), &[]).await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Close { code: 4503, .. }]),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(4503));
    let sse = raw::get(&attacker, &server.url("sse", "v=1"), &[]).await;
    assert_rate_refusal(&sse);

    // Other addresses still open sessions that work, on every transport.
    let other = http_from(OTHER);
    assert!(open_poll(&other, &server, &[]).await.is_ok());
    for transport in Transport::ALL {
        let mut fresh = Client::new(&server.base, 1);
        fresh.backlog = vec![Payload::Text(format!("fresh on {transport:?}"))].into();
        fresh.expect_down = 1;
        assert_eq!(
            fresh.attach(transport, &Plan::until_done(DEADLINE)).await,
            Ok(Outcome::Done),
            "{transport:?}: {:?}",
            fresh.log
        );
        assert_exactly(
            "echo",
            &fresh.core.delivered,
            &[Payload::Text(format!("fresh on {transport:?}"))],
        );
    }

    // The well-behaved session lost nothing.
    let (outcome, steady) = within(Duration::from_secs(25), "the steady session", steady)
        .await
        .expect("the steady task");
    assert_eq!(outcome, Ok(Outcome::Done), "{:?}", steady.log);
    assert_exactly("steady echo", &steady.core.delivered, &messages);
    // Refused opens allocated no session.
    assert_eq!(
        server.holdfast.held_sessions(),
        admitted + 1 + 1 + Transport::ALL.len(),
        "sessions held: the attacker's admitted ones, the steady one, the others"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    const BURST: usize = 3;
    let builder = Holdfast::builder()
        .config(limited(BURST as u32, 0.1))
        .trusted_proxies(localhost());
    let server = Server::echo(builder).await;
    let proxy = http_from(IpAddr::from([127, 0, 0, 1]));
    let xff = |value: &'static str| [("x-forwarded-for", value)];

    // The proxy (127.0.0.1) forwards client A: its burst, then 503.
    for _ in 0..BURST {
        assert!(
            open_poll(&proxy, &server, &xff("203.0.113.1"))
                .await
                .is_ok()
        );
    }
    assert_rate_refusal(
        &open_poll(&proxy, &server, &xff("203.0.113.1"))
            .await
            .unwrap_err(),
    );
    // Client B, behind the same proxy, is not affected.
    assert!(
        open_poll(&proxy, &server, &xff("203.0.113.2"))
            .await
            .is_ok()
    );
    // What a client wrote itself (left of what the proxy appended) does
    // not count: this is client A again.
    let forged = open_poll(&proxy, &server, &xff("198.51.100.7, 203.0.113.1")).await;
    assert_rate_refusal(&forged.unwrap_err());
    // RFC 7239 `Forwarded` is not read unless configured: the proxy
    // itself is the client here, and has its own bucket.
    let rfc = [("forwarded", "for=203.0.113.1")];
    assert!(open_poll(&proxy, &server, &rfc).await.is_ok());

    // A client that is not a trusted proxy cannot pick its address.
    let attacker = http_from(ATTACKER);
    let (mut admitted, mut refused) = (0, 0);
    for i in 0..20 {
        let spoof = format!("198.51.100.{i}");
        match open_poll(&attacker, &server, &[("x-forwarded-for", &spoof)]).await {
            Ok(_) => admitted += 1,
            Err(reply) => {
                assert_rate_refusal(&reply);
                refused += 1;
            }
        }
    }
    eprintln!(
        "admission: an untrusted peer forging X-Forwarded-For: {admitted} of 20 admitted \
         (burst {BURST}), {refused} refused"
    );
    assert_eq!((admitted, refused), (BURST, 20 - BURST));

    // RFC 7239 when the proxy is declared to write it.
    let builder = Holdfast::builder()
        .config(limited(1, 0.1))
        .trusted_proxies(localhost())
        .proxy_headers(ProxyHeaders::Forwarded);
    let server = Server::echo(builder).await;
    let element = |v: &'static str| [("forwarded", v)];
    assert!(
        open_poll(&proxy, &server, &element("for=203.0.113.9"))
            .await
            .is_ok()
    );
    let again = open_poll(&proxy, &server, &element("for=\"203.0.113.9:5000\"")).await;
    assert_rate_refusal(&again.unwrap_err());
    assert!(
        open_poll(&proxy, &server, &element("for=\"[2001:db8::1]\""))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_map_of_buckets_stays_bounded() {
    const MAX_CLIENTS: usize = 16;
    const BURST: u32 = 5;
    let mut config = limited(BURST, 0.01);
    if let Some(limit) = &mut config.open_rate_limit {
        limit.max_clients = MAX_CLIENTS;
    }
    let builder = Holdfast::builder()
        .config(config)
        .trusted_proxies(localhost());
    let server = Server::echo(builder).await;
    let proxy = http_from(IpAddr::from([127, 0, 0, 1]));
    // One client spends its burst…
    let held_back = [("x-forwarded-for", "192.0.2.1")];
    for _ in 0..BURST {
        assert!(open_poll(&proxy, &server, &held_back).await.is_ok());
    }
    let mut most = 0;
    for i in 0..300u32 {
        // …while a flood of one-off addresses (each opening once, so
        // each with more left than it) comes through…
        let client = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff);
        assert!(
            open_poll(&proxy, &server, &[("x-forwarded-for", &client)])
                .await
                .is_ok(),
            "{client}"
        );
        most = most.max(server.holdfast.tracked_client_addresses());
        // …and it stays held back.
        if i % 10 == 0 {
            assert_rate_refusal(&open_poll(&proxy, &server, &held_back).await.unwrap_err());
        }
    }
    eprintln!(
        "admission: 300 one-off client addresses, at most {most} buckets tracked \
         (max_clients {MAX_CLIENTS})"
    );
    assert!(most <= MAX_CLIENTS, "{most} buckets tracked");
}

#[tokio::test]
async fn the_origin_check_compares_the_scheme() {
    let server = Server::echo(Holdfast::builder()).await;
    let http = raw::http_client();
    let own = format!("http://{}", server.addr);
    let tls = format!("https://{}", server.addr);
    let origin = |o: &str| vec![("origin".to_owned(), o.to_owned())];
    let get = |endpoint: &'static str, headers: Vec<(String, String)>| {
        let http = http.clone();
        let url = server.url(endpoint, "v=1");
        async move {
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            raw::get(&http, &url, &refs).await
        }
    };
    // The same host and port over https is another origin.
    for endpoint in ["poll", "sse"] {
        get(endpoint, origin(&tls))
            .await
            .assert_refusal(403, "close", 4403);
    }
    let refused = raw::ws_connect(&server.ws_url("v=1"), &[("origin", &tls)]).await;
    assert_eq!(refused.err().map(|r| r.status), Some(403));
    assert_eq!(get("poll", origin(&own)).await.status, 200);

    // Without a port in `Host`, the server's scheme's default port.
    let host = |h: &str, o: &str| {
        let mut headers = origin(o);
        headers.push(("host".into(), h.into()));
        headers
    };
    get("poll", host("app.test", "https://app.test"))
        .await
        .assert_refusal(403, "close", 4403);
    get("poll", host("app.test", "http://app.test:443"))
        .await
        .assert_refusal(403, "close", 4403);
    assert_eq!(
        get("poll", host("app.test", "http://app.test"))
            .await
            .status,
        200
    );

    // A server told it is served over https wants https pages.
    let server = Server::echo(Holdfast::builder().served_over_https()).await;
    let url = server.url("poll", "v=1");
    let refused = raw::get(
        &http,
        &url,
        &[("host", "app.test"), ("origin", "http://app.test")],
    )
    .await;
    refused.assert_refusal(403, "close", 4403);
    for origin in ["https://app.test", "https://app.test:443"] {
        let reply = raw::get(&http, &url, &[("host", "app.test"), ("origin", origin)]).await;
        assert_eq!(reply.status, 200, "{origin}");
    }
}

#[tokio::test]
async fn forwarded_host_and_scheme_count_only_from_a_trusted_proxy() {
    // A proxy that rewrote `Host` to the upstream's address and said what
    // the browser asked for.
    let forwarded = |origin: &'static str| {
        [
            ("host", "10.0.0.5:3000"),
            ("x-forwarded-host", "app.test"),
            ("x-forwarded-proto", "https"),
            ("origin", origin),
        ]
    };
    let proxy = http_from(IpAddr::from([127, 0, 0, 1]));

    // Not declared: the forwarded headers mean nothing.
    let server = Server::echo(Holdfast::builder()).await;
    raw::get(
        &proxy,
        &server.url("poll", "v=1"),
        &forwarded("https://app.test"),
    )
    .await
    .assert_refusal(403, "close", 4403);

    // Declared: believed from the proxy's address only.
    let server = Server::echo(Holdfast::builder().trusted_proxies(localhost())).await;
    let url = server.url("poll", "v=1");
    assert_eq!(
        raw::get(&proxy, &url, &forwarded("https://app.test"))
            .await
            .status,
        200
    );
    // The forwarded scheme counts.
    raw::get(&proxy, &url, &forwarded("http://app.test"))
        .await
        .assert_refusal(403, "close", 4403);
    // Without a forwarded scheme, the server's own (http).
    let no_proto = [
        ("host", "10.0.0.5:3000"),
        ("x-forwarded-host", "app.test"),
        ("origin", "http://app.test"),
    ];
    assert_eq!(raw::get(&proxy, &url, &no_proto).await.status, 200);
    // From any other address, the same headers are the client's word.
    let attacker = http_from(ATTACKER);
    raw::get(&attacker, &url, &forwarded("https://app.test"))
        .await
        .assert_refusal(403, "close", 4403);
    // On WebSocket too, before the upgrade.
    let ws_url = server.ws_url("v=1");
    let headers = forwarded("https://app.test");
    let trusted = ws_try_from(IpAddr::from([127, 0, 0, 1]), server.addr, &ws_url, &headers).await;
    let mut ws = trusted.unwrap_or_else(|status| panic!("refused with {status}"));
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Open(_))
    ));
    let untrusted = ws_try_from(ATTACKER, server.addr, &ws_url, &headers).await;
    assert_eq!(untrusted.err(), Some(403));

    // RFC 7239, when declared.
    let server = Server::echo(
        Holdfast::builder()
            .trusted_proxies(localhost())
            .proxy_headers(ProxyHeaders::Forwarded),
    )
    .await;
    let url = server.url("poll", "v=1");
    let rfc = [
        ("host", "10.0.0.5:3000"),
        ("forwarded", "for=203.0.113.4;host=app.test;proto=https"),
        ("origin", "https://app.test"),
    ];
    assert_eq!(raw::get(&proxy, &url, &rfc).await.status, 200);
    // …and then X-Forwarded-* is the client's word.
    raw::get(&proxy, &url, &forwarded("https://app.test"))
        .await
        .assert_refusal(403, "close", 4403);
}

/// A server whose hook wants `Authorization: Bearer <name>`: binds the
/// session to `Identity(name)`, except `guest` (accepted with no identity,
/// a broken hook) and `mallory` (forbidden). Records the kind of every
/// request it sees.
async fn auth_server() -> (
    Server,
    holdfast::server::Incoming,
    Arc<Mutex<Vec<RequestKind>>>,
) {
    let kinds = Arc::new(Mutex::new(Vec::new()));
    let seen = kinds.clone();
    let (holdfast, incoming) = Holdfast::builder()
        .auth(move |request: OpenRequest| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(request.kind);
            async move {
                let name = request
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned)
                    .ok_or_else(|| Refusal::unauthorized("log in first"))?;
                let mut granted = http::Extensions::new();
                match name.as_str() {
                    "mallory" => return Err(Refusal::forbidden("not you")),
                    "guest" => {}
                    _ => {
                        granted.insert(Identity::new(name));
                    }
                }
                Ok(granted)
            }
        })
        .build();
    (Server::serve(holdfast).await, incoming, kinds)
}

fn bearer(name: &str) -> String {
    format!("Bearer {name}")
}

#[tokio::test]
async fn a_request_with_another_identity_or_none_is_refused_and_the_owner_loses_nothing() {
    let (server, mut incoming, kinds) = auth_server().await;
    let http = raw::http_client();

    // Alice opens a session on WebSocket.
    let alice = bearer("alice");
    let alice_auth = [("authorization", alice.as_str())];
    let mut ws = RawWs::connect_with(&server.ws_url("v=1"), &alice_auth).await;
    let key = match ws.recv_frames().await.first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let session = accept(&mut incoming, DEADLINE).await;
    assert_eq!(
        session.extensions().get::<Identity>(),
        Some(&Identity::new("alice"))
    );
    let (recorder, _) = Recorder::start(session.clone());
    session.send("m1").await.expect("send");
    assert_eq!(
        ws.recv_frames().await,
        vec![Frame::Msg {
            seq: 1,
            data: "m1".into()
        }]
    );
    let buffered = server.holdfast.buffered_bytes();
    assert!(buffered > 0, "m1 is unacknowledged");

    // Someone else, or no one, with Alice's key: refused on every kind of
    // request, before touching the session.
    let bob = bearer("bob");
    let guest = bearer("guest");
    let intruders: [(&str, &[(&str, &str)]); 3] = [
        ("bob", &[("authorization", bob.as_str())]),
        (
            "someone the hook names no one",
            &[("authorization", guest.as_str())],
        ),
        ("no one", &[]),
    ];
    for (who, headers) in intruders {
        // Resumes (that would acknowledge m1 and replace Alice's socket).
        let mut other = RawWs::connect_with(&server.ws_url(&resume_query(&key, 1)), headers).await;
        let (frames, close) = other.recv_until_closed().await;
        assert!(
            matches!(frames.as_slice(), [Frame::Close { code: 4401, .. }]),
            "{who} on ws: {frames:?}"
        );
        assert_eq!(close.map(|c| c.0), Some(4401), "{who}");
        for endpoint in ["sse", "poll"] {
            raw::get(
                &http,
                &server.url(endpoint, &resume_query(&key, 1)),
                headers,
            )
            .await
            .assert_refusal(401, "close", 4401);
        }
        // Sends (that would deliver a message and be acknowledged).
        let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&key));
        let batch = support::wire::encode_batch(&[Frame::Msg {
            seq: 1,
            data: format!("from {who}"),
        }]);
        raw::post(&http, &url, batch, headers)
            .await
            .assert_refusal(401, "close", 4401);
        // Probes.
        let probe = format!("v=1&key={}&probe=1", raw::encode(&key));
        raw::get(&http, &server.url("poll", &probe), headers)
            .await
            .assert_refusal(401, "close", 4401);
        let mut probe_ws = RawWs::connect_with(&server.ws_url(&probe), headers).await;
        let (_, close) = probe_ws.recv_until_closed().await;
        assert_eq!(close.map(|c| c.0), Some(4401), "{who} probing on ws");
    }
    // The hook's own refusals pass through.
    let mallory = bearer("mallory");
    raw::get(
        &http,
        &server.url("poll", &resume_query(&key, 1)),
        &[("authorization", mallory.as_str())],
    )
    .await
    .assert_refusal(403, "close", 4403);

    // Nothing reached the session: m1 is still unacknowledged, nothing was
    // received, and Alice's socket is still the attachment.
    assert_eq!(server.holdfast.buffered_bytes(), buffered);
    assert!(recorder.received().is_empty(), "{:?}", recorder.received());
    assert!(!session.is_closed());
    ws.send_frames(&[
        Frame::Ack { seq: 1 },
        Frame::Msg {
            seq: 1,
            data: "from alice".into(),
        },
    ])
    .await;
    assert_exactly(
        "received",
        &recorder.wait_for(1, DEADLINE).await,
        &[Payload::Text("from alice".into())],
    );
    session.send("m2").await.expect("send");
    let mut got = Vec::new();
    while !got.contains(&Frame::Msg {
        seq: 2,
        data: "m2".into(),
    }) {
        match ws.recv().await {
            WsIn::Frames(frames) => got.extend(frames),
            other => panic!("Alice's socket: {other:?} after {got:?}"),
        }
    }
    assert!(
        got.iter()
            .all(|f| !matches!(f, Frame::Detach { .. } | Frame::Close { .. })),
        "{got:?}"
    );

    // Alice herself resumes and sends on the other transports.
    let reply = raw::get(
        &http,
        &server.url("poll", &resume_query(&key, 2)),
        &alice_auth,
    )
    .await;
    assert!(
        matches!(reply.batch().first(), Some(Frame::Resumed { ack: 1 })),
        "{:?}",
        reply.batch()
    );
    let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&key));
    let batch = support::wire::encode_batch(&[Frame::Msg {
        seq: 2,
        data: "again".into(),
    }]);
    let reply = raw::post(&http, &url, batch, &alice_auth).await;
    assert_eq!(reply.batch().first(), Some(&Frame::Ack { seq: 2 }));
    assert_exactly(
        "received",
        &recorder.wait_for(2, DEADLINE).await,
        &[
            Payload::Text("from alice".into()),
            Payload::Text("again".into()),
        ],
    );

    // The hook was told what each request was.
    let kinds = kinds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for kind in [
        RequestKind::Open,
        RequestKind::Resume,
        RequestKind::Send,
        RequestKind::Probe,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} not in {kinds:?}");
    }
    assert_eq!(kinds.first(), Some(&RequestKind::Open));
}

#[tokio::test]
async fn an_auth_hook_that_names_no_identity_fails_the_open_loudly() {
    let (server, _incoming, _) = auth_server().await;
    let http = raw::http_client();
    let guest = bearer("guest");
    raw::get(
        &http,
        &server.url("poll", "v=1"),
        &[("authorization", &guest)],
    )
    .await
    .assert_refusal(500, "close", 1011);
    let mut ws = RawWs::connect_with(&server.ws_url("v=1"), &[("authorization", &guest)]).await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Close { code: 1011, .. }]),
        "{frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(1011));
    assert_eq!(server.holdfast.session_count(), 0);
}
