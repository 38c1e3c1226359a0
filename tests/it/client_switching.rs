//! The Rust client through a hostile network: transport fallback, switching
//! up, intermediaries' error pages, cuts, expiry and overload — always with
//! exact delivery both ways (the echo server sends back what it received,
//! so an in-order, exactly-once echo proves both directions).

use std::sync::Arc;
use std::time::Duration;

use crate::client_support::*;
use holdfast::client::{ConnectError, Connection, Event, ProxyConfig, TransportKind};
use holdfast::server::{CloseCode, Holdfast, Session};
use holdfast_testkit::{After, Behavior, PathFilter, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_falls_back_to_sse() {
    let (_server, proxy, url) = proxied(
        quick_server_config(),
        Behavior::default().refuse_upgrades(403),
    )
    .await;
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    exchange(&mut connection, 300, |_| {}).await;
    assert_eq!(proxy.stats().upgrades, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnel_after_upgrade_falls_back_without_flapping() {
    let (_server, proxy, url) = proxied(
        quick_server_config(),
        Behavior::default().silence_after_upgrade(After::IMMEDIATELY),
    )
    .await;
    let started = std::time::Instant::now();
    let mut connection = client(&url)
        .reprobe_after(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a silent tunnel must be caught by the probe timeout"
    );
    // Re-probes keep failing (the tunnel stays silent): no flapping.
    let seen = exchange(&mut connection, 600, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen.changes.is_empty(), "flapped: {seen:?}");
    assert!(proxy.stats().upgrades >= 1);
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_reset_right_after_upgrade_falls_back() {
    let (_server, _proxy, url) = proxied(
        quick_server_config(),
        Behavior::default().reset_after_upgrade(After::IMMEDIATELY),
    )
    .await;
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    exchange(&mut connection, 200, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_that_dies_after_greeting_twice_is_demoted() {
    // The greeting passes, then the tunnel resets: the transport opens but
    // never carries a frame both ways.
    let (_server, _proxy, url) = proxied(
        quick_server_config(),
        Behavior::default().reset_after_upgrade(After::millis(300)),
    )
    .await;
    let mut connection = client(&url).connect().await.expect("connect");
    let changed = wait_for(&mut connection, |event| match event {
        Event::TransportChanged { from, to } => Some((*from, *to)),
        _ => None,
    })
    .await;
    assert_eq!(changed, (TransportKind::WebSocket, TransportKind::Sse));
    exchange(&mut connection, 300, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_sse_falls_back_to_long_polling() {
    let (_server, _proxy, url) = proxied(
        quick_server_config(),
        Behavior::default()
            .refuse_upgrades(403)
            .buffer_responses(64 * 1024, PathFilter::ends_with("/sse")),
    )
    .await;
    let started = std::time::Instant::now();
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::LongPoll));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a buffering proxy must cost under 3 s, took {:?}",
        started.elapsed()
    );
    exchange(&mut connection, 300, |_| {}).await;
}

/// A client forced onto `kind` through a transparent proxy that the test
/// can change, in front of an echo server.
async fn forced_through_proxy(kind: TransportKind) -> (EchoServer, Arc<Proxy>, Connection) {
    let (server, proxy, url) = proxied(quick_server_config(), Behavior::transparent()).await;
    let connection = client(&url)
        .transport(kind)
        .connect()
        .await
        .expect("connect");
    (server, Arc::new(proxy), connection)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermediary_error_pages_are_transient_never_data() {
    for (status, kind) in [
        (502, TransportKind::WebSocket),
        (504, TransportKind::Sse),
        (502, TransportKind::LongPoll),
    ] {
        let (_server, proxy, mut connection) = forced_through_proxy(kind).await;
        let seen = exchange(&mut connection, 400, |sent| {
            if sent == 100 {
                // A gateway answers with error pages for a while.
                proxy.set(Behavior::default().error_page(status, PathFilter::Any));
                proxy.cut_all();
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    proxy.set(Behavior::transparent());
                });
            }
        })
        .await;
        assert!(seen.reconnects >= 1, "{kind}: {seen:?}");
        assert!(seen.resumed >= 1, "{kind}: {seen:?}");
        assert!(proxy.stats().requests.values().sum::<u64>() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_cuts_on_every_transport_deliver_exactly() {
    for (seed, kind) in [
        (1, TransportKind::WebSocket),
        (2, TransportKind::Sse),
        (3, TransportKind::LongPoll),
    ] {
        let (_server, proxy, mut connection) = forced_through_proxy(kind).await;
        // Connections die at random sizes and ages, and at four fixed
        // points everything live is cut besides (as soon as something is
        // live: polls come and go).
        proxy.set(Behavior::default().cut_randomly(
            After::bytes(50_000).or_time(Duration::from_millis(400)),
            seed,
        ));
        let seen = exchange(&mut connection, 2000, |sent| {
            if [300, 700, 1100, 1500].contains(&sent) {
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
        })
        .await;
        let cuts = proxy.stats().cut;
        println!("{kind}: {cuts} cuts, {} reconnects", seen.reconnects);
        assert!(cuts >= 4, "{kind}: only {cuts} cuts");
        assert!(seen.reconnects >= 2, "{kind}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_up_to_websocket_when_the_proxy_allows_it() {
    let (_server, proxy, url) = proxied(
        quick_server_config(),
        Behavior::default().refuse_upgrades(403),
    )
    .await;
    let mut connection = client(&url)
        .reprobe_after(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    let mut allowed = false;
    let seen = exchange(&mut connection, 3000, |sent| {
        if sent == 500 {
            proxy.set(Behavior::transparent());
            allowed = true;
        }
        if sent % 500 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .await;
    assert!(allowed);
    let changed = if seen.changes.is_empty() {
        wait_for(&mut connection, |event| match event {
            Event::TransportChanged { from, to } => Some((*from, *to)),
            _ => None,
        })
        .await
    } else {
        seen.changes[0]
    };
    assert_eq!(changed, (TransportKind::Sse, TransportKind::WebSocket));
    exchange(&mut connection, 300, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_reported_as_lost() {
    let mut config = quick_server_config();
    config.session.resume_window = Duration::from_millis(300);
    let (_server, proxy, url) = proxied(config, Behavior::transparent()).await;
    let mut connection = client(&url)
        .transport(TransportKind::WebSocket)
        .connect()
        .await
        .expect("connect");
    exchange(&mut connection, 50, |_| {}).await;
    // Keep the client away longer than the resume window.
    proxy.set(Behavior::default().refuse_upgrades(503));
    proxy.cut_all();
    wait_for(&mut connection, |event| {
        matches!(event, Event::Reconnecting { .. }).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.set(Behavior::transparent());
    let closed = wait_for(&mut connection, |event| match event {
        Event::Closed(closed) => Some(closed.clone()),
        _ => None,
    })
    .await;
    assert!(closed.session_lost, "{closed:?}");
    assert_eq!(closed.code, CloseCode::SESSION_LOST);
    assert!(
        connection.next_event().await.is_none(),
        "Closed is the last event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_server_is_retried_after_retry_after() {
    let mut config = quick_server_config();
    config.max_sessions = 1;
    config.retry_after = Duration::from_secs(1);
    let server = EchoServer::start(config).await;
    let first = client(&server.url()).connect().await.expect("first");
    let url = server.url();
    let second = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let connection = client(&url)
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await;
        (connection, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.close().await;
    drop(first);
    let (connection, waited) = tokio::time::timeout(DEADLINE, second)
        .await
        .expect("second connect finished")
        .expect("task");
    let mut connection = connection.expect("second connect succeeded after the slot freed");
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After (1 s) must be honoured, retried after {waited:?}"
    );
    exchange(&mut connection, 50, |_| {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_without_patience_is_a_clear_refusal() {
    let mut config = quick_server_config();
    config.max_sessions = 1;
    config.retry_after = Duration::from_secs(30);
    let server = EchoServer::start(config).await;
    let _first = client(&server.url()).connect().await.expect("first");
    let refused = client(&server.url())
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .err()
        .expect("the second session is refused");
    match refused {
        ConnectError::Refused {
            code, retry_after, ..
        } => {
            assert_eq!(code, CloseCode::OVERLOADED);
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
        }
        other => panic!("expected an overload refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_refusing_connect_still_gets_through_over_http() {
    let server = EchoServer::start(quick_server_config()).await;
    let proxy = Proxy::builder()
        .behavior(Behavior::default().refuse_connect(403))
        .start()
        .await
        .expect("proxy");
    let proxy_url = url::Url::parse(&proxy.url()).expect("proxy url");
    let mut connection = client(&server.url())
        .proxy(ProxyConfig {
            http: Some(proxy_url.clone()),
            https: Some(proxy_url),
            ..ProxyConfig::none()
        })
        .connect()
        .await
        .expect("connect through the proxy");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    exchange(&mut connection, 200, |_| {}).await;
    let stats = proxy.stats();
    assert!(
        stats.connects >= 1,
        "the WebSocket tried CONNECT: {stats:?}"
    );
    assert!(
        stats.requests_to("/sse") >= 1,
        "SSE went through the proxy: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_proxy_carries_websocket_through_connect() {
    let server = EchoServer::start(quick_server_config()).await;
    let proxy = Proxy::builder().start().await.expect("proxy");
    let proxy_url = url::Url::parse(&proxy.url()).expect("proxy url");
    let mut connection = client(&server.url())
        .proxy(ProxyConfig {
            http: Some(proxy_url),
            ..ProxyConfig::none()
        })
        .connect()
        .await
        .expect("connect through the proxy");
    assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
    exchange(&mut connection, 200, |_| {}).await;
    assert!(proxy.stats().connects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_not_a_reason_to_fall_back() {
    // Nothing listens there: every transport is unreachable. connect
    // retries the best transport until its connect timeout (no fallback
    // could help), then says so.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let error = client(&format!("http://{addr}/realtime"))
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .err()
        .expect("nothing listens");
    match error {
        ConnectError::NoTransport(failures) => {
            assert_eq!(
                failures.len(),
                1,
                "the last round stopped at the first unreachable: {failures:?}"
            );
            assert_eq!(failures[0], "websocket: unreachable", "{failures:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// A send the server refuses for now (the server-wide buffer is full:
/// `503` with `Retry-After`) is sent again after the wait, on the same
/// attachment (`PROTOCOL.md` §7): nothing lost, nothing twice, no
/// reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_for_now_is_sent_again_after_retry_after() {
    const LIMIT: usize = 16 * 1024;
    let mut config = quick_server_config();
    config.max_buffered_bytes = LIMIT;
    config.session.max_message = 4096;
    config.session.max_unacked_bytes = LIMIT;
    config.retry_after = Duration::from_secs(1);
    // The application reads nothing until told to.
    let go = Arc::new(tokio::sync::Notify::new());
    let (got_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let holdfast = Holdfast::builder().config(config).on_session({
        let go = go.clone();
        move |session: Session| {
            let (go, got_tx) = (go.clone(), got_tx.clone());
            async move {
                go.notified().await;
                while let Some(message) = session.recv().await {
                    let text = message.as_text().unwrap_or_default().to_owned();
                    let _ = got_tx.send(text);
                }
            }
        }
    });
    let mount = unique_mount();
    let (addr, _task) = serve(&holdfast, &mount).await;
    let proxy = Proxy::builder()
        .upstream(addr)
        .start()
        .await
        .expect("proxy");
    let sends = || -> u64 {
        let stats = proxy.stats();
        let path = format!("{mount}/send");
        stats.requests.get(&path).copied().unwrap_or(0)
    };
    let connection = client(&format!("{}{mount}", proxy.url()))
        .transport(TransportKind::LongPoll)
        .connect()
        .await
        .expect("connect");
    let sent: Vec<String> = (0..20)
        .map(|n| format!("{n:04}{}", "x".repeat(1020)))
        .collect();
    // Ten fit in the server-wide budget...
    for text in &sent[..10] {
        connection.send(text.clone()).await.expect("send");
    }
    wait_until(|| holdfast.buffered_bytes() >= 10 * 1024).await;
    // ...the next ten do not: their request is refused, then sent again.
    let before = sends();
    for text in &sent[10..] {
        connection.send(text.clone()).await.expect("send");
    }
    wait_until(|| sends() >= before + 2).await;
    go.notify_one();
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let text = tokio::time::timeout(DEADLINE, got.recv())
            .await
            .expect("the application got everything in time")
            .expect("the handler runs");
        received.push(text);
    }
    assert!(received == sent, "every message once, in order");
    connection.close().await;
    let mut connection = connection;
    while let Some(event) = connection.next_event().await {
        assert!(
            !matches!(event, Event::Reconnecting { .. }),
            "a refused send reconnected: {event:?}"
        );
    }
}

/// An idle long-polling session whose held poll is cut: the server may take
/// the next poll as continuing the poll attachment (no `resumed`) and hold
/// it with nothing to deliver, so only a send request can prove the session
/// at once. The client must say it resumed long before the hold ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_long_poll_cut_resumes_before_its_next_poll_is_answered() {
    let hold = Duration::from_secs(20);
    let mut config = quick_server_config();
    config.session.poll_hold = hold;
    config.session.timeout = Duration::from_secs(30);
    let (_server, proxy, url) = proxied(config, Behavior::transparent()).await;
    let mut connection = client(&url)
        .transports([TransportKind::LongPoll])
        .connect()
        .await
        .expect("connect");
    exchange(&mut connection, 20, |_| {}).await;
    // Idle now: the next poll goes out and is held with nothing to deliver.
    // A cut in the instant between two polls ends only idle connections,
    // which the client does not notice: cut again until it does.
    let mut cuts = 0;
    loop {
        proxy.cut_all();
        cuts += 1;
        let noticed = tokio::time::timeout(
            Duration::from_secs(2),
            wait_for(&mut connection, |event| {
                matches!(event, Event::Reconnecting { .. }).then_some(())
            }),
        )
        .await;
        if noticed.is_ok() {
            break;
        }
        assert!(cuts < 5, "five cuts and the client never lost its poll");
    }
    let cut = tokio::time::Instant::now();
    let resumed = tokio::time::timeout(
        hold / 2,
        wait_for(&mut connection, |event| {
            matches!(event, Event::Resumed { .. }).then_some(())
        }),
    )
    .await;
    assert!(
        resumed.is_ok(),
        "no Resumed within {:?} of the cut: the client waited for the held poll",
        hold / 2
    );
    println!("resumed {:?} after the cut", cut.elapsed());
    // Nothing lost or doubled across the cut.
    exchange(&mut connection, 20, |_| {}).await;
}
