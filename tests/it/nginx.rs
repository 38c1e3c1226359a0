//! The Rust client through a real nginx (started by the tests on loopback,
//! see `nginx_support`) in front of an in-process holdfast echo server:
//!
//! - *corporate default* (no upgrade forwarding, HTTP/1.0 upstream,
//!   buffering on): the WebSocket upgrade never reaches holdfast as one, so
//!   the client falls back — to SSE, which works because holdfast's
//!   `X-Accel-Buffering: no` turns nginx's buffering off for the stream;
//! - the same proxy ignoring `X-Accel-Buffering` (what buffering proxies
//!   other than nginx do): SSE is held, the probe timeout catches it, and
//!   the client ends on long-polling;
//! - *well configured*: the client stays on WebSocket;
//! - *impatient* (`proxy_read_timeout` 2 s): with the server's ping
//!   interval and poll hold below it nothing is ever cut; with them above
//!   it nginx cuts idle connections and the sessions resume without loss;
//! - *forwarding* (nginx's default `Host`, `X-Forwarded-*`): a browser's
//!   `Origin` matches and each client has its own open-rate bucket once
//!   nginx is declared a trusted proxy, not before.
//!
//! Every exchange checks exact delivery both ways (the echo comes back
//! exactly once, in order). nginx missing is a failure: `./test.sh`
//! installs it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::client_support::*;
use crate::nginx_support::{Nginx, Profile};
use crate::support::http_from;
use crate::support::server::serve_with_peers;
use holdfast::client::{Connection, Event, TransportKind};
use holdfast::server::{Holdfast, IpNet, OpenRateLimit, ServerConfig};

/// nginx's `proxy_read_timeout` in the impatient profile: holdfast's
/// defaults (20 s pings, 25 s poll hold) scaled down for tests.
const IMPATIENT: Duration = Duration::from_secs(2);

/// How long the impatient tests leave sessions idle: more than twice
/// nginx's timeout.
const IDLE: Duration = Duration::from_millis(4500);

async fn behind(profile: Profile, config: ServerConfig) -> (EchoServer, Nginx) {
    let server = EchoServer::start(config).await;
    let nginx = Nginx::start(profile, server.addr).await;
    (server, nginx)
}

/// Connects (automatic transport) through `nginx` and checks the
/// transport the client ended on; nginx's logs on failure.
async fn connect_on(server: &EchoServer, nginx: &Nginx, expected: TransportKind) -> Connection {
    let connection = client(&nginx.url_to(&server.mount))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", nginx.logs()));
    assert_eq!(connection.transport(), Some(expected), "{}", nginx.logs());
    connection
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corporate_default_falls_back_to_sse_and_delivers_exactly() {
    let mut config = quick_server_config();
    // Small enough that streams are recycled during the exchange: a
    // recycled stream must end cleanly through nginx's HTTP/1.0 upstream.
    config.sse_max_bytes = 32 * 1024;
    let (server, nginx) = behind(Profile::Corporate, config).await;
    let started = Instant::now();
    let mut connection = connect_on(&server, &nginx, TransportKind::Sse).await;
    let connected = started.elapsed();
    let seen = exchange(&mut connection, 2000, |_| {}).await;
    println!(
        "corporate default: {:?} after {connected:?}; {seen:?}",
        connection.transport()
    );
    assert!(seen.changes.is_empty(), "{seen:?}");
    assert_eq!(seen.reconnects, 0, "recycling is not a reconnect: {seen:?}");
    assert!(
        seen.resumed >= 1,
        "the 32 KiB SSE budget recycles the stream at least once: {seen:?}"
    );
    // Why: nginx sent the upgrade request without `Upgrade`/`Connection`
    // (HTTP/1.0, hop-by-hop headers dropped), so holdfast refused it as a
    // plain GET (400) and nginx passed that on. No 101 ever.
    let ws = nginx.statuses("/ws");
    assert!(!ws.is_empty(), "{}", nginx.logs());
    assert!(
        ws.iter()
            .all(|(status, up)| (400..500).contains(status) && *up == status.to_string()),
        "{ws:?}"
    );
    // Streams that finished (recycled) finished with 200, in full.
    let sse = nginx.statuses("/sse");
    assert!(
        sse.iter().all(|(status, _)| *status == 200),
        "{sse:?}\n{}",
        nginx.logs()
    );
    connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corporate_proxy_that_ignores_x_accel_buffering_ends_on_long_polling() {
    let (server, nginx) = behind(Profile::CorporateStrict, quick_server_config()).await;
    let started = Instant::now();
    let mut connection = connect_on(&server, &nginx, TransportKind::LongPoll).await;
    let connected = started.elapsed();
    let seen = exchange(&mut connection, 2000, |_| {}).await;
    println!("corporate strict: long-polling after {connected:?}; {seen:?}");
    assert!(seen.changes.is_empty(), "{seen:?}");
    assert_eq!(seen.reconnects, 0, "{seen:?}");
    // The held stream: nginx kept the padding and the `open` event in its
    // buffer until the client gave up on it (499: client closed).
    let sse = nginx.statuses("/sse");
    assert!(
        sse.iter().any(|(status, up)| *status == 499 && up == "200"),
        "{sse:?}\n{}",
        nginx.logs()
    );
    connection.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_configured_nginx_keeps_the_client_on_websocket() {
    let (server, nginx) = behind(Profile::WellConfigured, quick_server_config()).await;
    let mut connection = connect_on(&server, &nginx, TransportKind::WebSocket).await;
    let seen = exchange(&mut connection, 2000, |_| {}).await;
    assert_eq!(seen.reconnects, 0, "{seen:?}");
    assert!(seen.changes.is_empty(), "{seen:?}");
    assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
    // The other transports work through it too.
    for kind in [TransportKind::Sse, TransportKind::LongPoll] {
        let mut forced = client(&nginx.url_to(&server.mount))
            .transport(kind)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}\n{}", nginx.logs()));
        let seen = exchange(&mut forced, 500, |_| {}).await;
        assert_eq!(seen.reconnects, 0, "{kind}: {seen:?}");
        forced.close().await;
    }
    connection.close().await;
    // The upgrade went through nginx: its log line is written when the
    // tunnel ends.
    let closed = tokio::time::timeout(DEADLINE, async {
        while !nginx.statuses("/ws").iter().any(|(s, _)| *s == 101) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "no 101 in the access log\n{}", nginx.logs());
    assert_eq!(server.holdfast.session_count(), 0);
}

/// Server timers for an impatient proxy: pings and poll hold below its
/// read timeout (holdfast's defaults are 20 s and 25 s, for proxies that
/// cut at 30 s).
fn timers_below(timeout: Duration) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.ping_interval = timeout / 4;
    config.session.poll_hold = timeout / 2;
    config.session.timeout = timeout * 3 / 2;
    config
}

/// The same timers above it: what users get when they keep holdfast's
/// defaults behind a proxy that cuts at 10 s.
fn timers_above(timeout: Duration) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.ping_interval = timeout * 5 / 2;
    config.session.poll_hold = timeout * 2;
    config.session.timeout = timeout * 8;
    config
}

/// What happened to a session left idle.
#[derive(Debug, Default)]
struct Idle {
    reconnects: u32,
    resumed: u32,
    changes: Vec<(TransportKind, TransportKind)>,
}

/// Reads events for `duration` without sending anything.
async fn stay_idle(connection: &mut Connection, duration: Duration) -> Idle {
    let mut idle = Idle::default();
    let until = tokio::time::Instant::now() + duration;
    while let Ok(event) = tokio::time::timeout_at(until, connection.next_event()).await {
        match event.expect("the connection ended") {
            Event::Reconnecting { .. } => idle.reconnects += 1,
            Event::Resumed { .. } => idle.resumed += 1,
            Event::TransportChanged { from, to } => idle.changes.push((from, to)),
            Event::Message(m) => panic!("unexpected message while idle: {m:?}"),
            Event::Closed(closed) => panic!("session closed while idle: {closed:?}"),
            _ => {}
        }
    }
    idle
}

/// One session per transport, at once: exchange, stay idle for [`IDLE`],
/// exchange again. Returns what each saw.
async fn idle_sessions(
    server: &EchoServer,
    nginx: &Nginx,
) -> Vec<(TransportKind, Exchange, Idle, Exchange)> {
    let runs = TransportKind::ALL.map(|kind| {
        let url = nginx.url_to(&server.mount);
        async move {
            let mut connection = client(&url)
                .transport(kind)
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            let before = exchange(&mut connection, 200, |_| {}).await;
            let idle = stay_idle(&mut connection, IDLE).await;
            let after = exchange(&mut connection, 200, |_| {}).await;
            connection.close().await;
            (kind, before, idle, after)
        }
    });
    futures_util::future::join_all(runs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impatient_nginx_cuts_nothing_when_pings_and_poll_hold_are_below_its_timeout() {
    let (server, nginx) = behind(Profile::Impatient(IMPATIENT), timers_below(IMPATIENT)).await;
    for (kind, before, idle, after) in idle_sessions(&server, &nginx).await {
        println!("impatient nginx, timers below: {kind}: idle {idle:?}");
        assert_eq!(before.reconnects + after.reconnects, 0, "{kind}");
        assert_eq!(
            idle.reconnects,
            0,
            "{kind}: cut while idle: {idle:?}\n{}",
            nginx.logs()
        );
        assert!(idle.changes.is_empty(), "{kind}: {idle:?}");
    }
    let log = nginx.error_log();
    assert!(!log.contains("upstream timed out"), "{}", nginx.logs());
    // The default order stays on WebSocket through it.
    let mut connection = client(&nginx.url_to(&server.mount))
        .connect()
        .await
        .expect("connect");
    let idle = stay_idle(&mut connection, IMPATIENT * 2).await;
    assert_eq!(idle.reconnects, 0, "{idle:?}");
    exchange(&mut connection, 200, |_| {}).await;
    assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
    connection.close().await;
    let _ = tokio::time::timeout(DEADLINE, async {
        while server.holdfast.session_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(server.holdfast.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impatient_nginx_cuts_idle_connections_when_timers_are_above_its_timeout_but_nothing_is_lost()
 {
    let (server, nginx) = behind(Profile::Impatient(IMPATIENT), timers_above(IMPATIENT)).await;
    for (kind, before, idle, after) in idle_sessions(&server, &nginx).await {
        println!("impatient nginx, timers above: {kind}: idle {idle:?}, after {after:?}");
        assert_eq!(before.reconnects, 0, "{kind}: {before:?}");
        // nginx cut the silent connection (WebSocket, SSE) or answered the
        // held poll 504: the client reconnected and resumed, and the
        // exchange after it is exact all the same.
        assert!(
            idle.reconnects + after.reconnects >= 1,
            "{kind}: nginx cut nothing? {idle:?} {after:?}\n{}",
            nginx.logs()
        );
        assert!(idle.resumed + after.resumed >= 1, "{kind}: {idle:?}");
    }
    let log = nginx.error_log();
    assert!(log.contains("upstream timed out"), "{}", nginx.logs());
    let polls = nginx.statuses("/poll");
    assert!(
        polls.iter().any(|(status, _)| *status == 504),
        "held polls answered 504 by nginx: {polls:?}"
    );
}

/// Opens a session with a long-poll through nginx: the status.
async fn open_status(http: &reqwest::Client, nginx: &Nginx, headers: &[(&str, &str)]) -> u16 {
    let mut request = http.get(format!("{}/poll?v=1", nginx.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("a reply within the deadline")
        .unwrap_or_else(|e| panic!("GET through nginx: {e}\n{}", nginx.logs()));
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_forwarded_host_and_client_address_count_once_nginx_is_trusted() {
    const BURST: u32 = 2;
    let alice = http_from(IpAddr::from([127, 0, 0, 2]));
    let bob = http_from(IpAddr::from([127, 0, 0, 3]));
    for trusted in [false, true] {
        let mut config = ServerConfig::default();
        config.open_rate_limit = Some(OpenRateLimit::new(BURST, 0.01));
        let mut builder = Holdfast::builder().config(config);
        if trusted {
            builder = builder.trusted_proxies([IpNet::from(IpAddr::from([127, 0, 0, 1]))]);
        }
        // A server that knows each request's TCP peer, so that it can tell
        // nginx from others.
        let (addr, _server) = serve_with_peers(&builder.on_session(|_| async {})).await;
        let nginx = Nginx::start(Profile::Forwarding, addr).await;
        let logs = || format!("trusted {trusted}\n{}", nginx.logs());

        // A page served by nginx: its Origin is nginx's, while holdfast
        // sees `Host: 127.0.0.1:<upstream port>`. Only the trusted
        // X-Forwarded-Host matches it.
        let page = format!("http://{}", nginx.addr);
        let status = open_status(&alice, &nginx, &[("origin", &page)]).await;
        assert_eq!(status, if trusted { 200 } else { 403 }, "{}", logs());
        let other_page = [("origin", "http://elsewhere.test")];
        assert_eq!(
            open_status(&alice, &nginx, &other_page).await,
            403,
            "{}",
            logs()
        );

        // Per-client limits: trusted, each client address (appended by
        // nginx to X-Forwarded-For) has its own bucket; untrusted, every
        // client shares nginx's.
        let spoofed = [("x-forwarded-for", "198.51.100.1")];
        let mut alice_statuses = Vec::new();
        for _ in 0..=BURST {
            alice_statuses.push(open_status(&alice, &nginx, &spoofed).await);
        }
        let bob_status = open_status(&bob, &nginx, &[]).await;
        println!("nginx, trusted {trusted}: alice {alice_statuses:?}, bob {bob_status}");
        if trusted {
            // Alice opened once above with her page and once more here,
            // then her burst ran out; what she wrote in X-Forwarded-For
            // did not help her.
            assert_eq!(alice_statuses, [200, 503, 503], "{}", logs());
            assert_eq!(bob_status, 200, "{}", logs());
        } else {
            assert_eq!(alice_statuses, [200, 200, 503], "{}", logs());
            assert_eq!(bob_status, 503, "bob shares nginx's address\n{}", logs());
        }
    }
}
