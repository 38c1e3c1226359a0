//! The Rust client's connection policy against the real server, where the
//! overload and reconnect-storm benchmarks found it wanting: acks that do
//! not wait out a refused send's `Retry-After`, and a longer greeting
//! deadline for a transport the session already used.

use std::sync::Arc;
use std::time::Duration;

use crate::client_support::*;
use holdfast::client::{Event, Message, TransportKind};
use holdfast::server::{Holdfast, ServerConfig, Session};
use holdfast_testkit::{Behavior, Proxy};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// On SSE the client's acks travel in send requests. A send the server
/// refuses for now (its buffer budget is full: `503` + `Retry-After`) must
/// hold back only its messages: the acks of what the server delivers
/// meanwhile still go, in ack-only requests, so the server's replay buffer
/// drains and its application's `send`, waiting for room, goes on before
/// the `Retry-After` is over. The refused message then arrives once, in
/// order, with no reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_go_out_while_a_refused_send_waits_out_its_retry_after() {
    const LIMIT: usize = 32 * 1024;
    const RETRY_AFTER: Duration = Duration::from_secs(4);
    /// Downstream messages: 48 of 1 KiB, past the budget, so the
    /// application's sends wait for the client's acks.
    const DOWN: usize = 48;
    // Default timers: the server's peer timeout (40 s) must not end the
    // attachment during the wait and resume it (a resume acknowledges).
    let mut config = ServerConfig::default();
    config.max_buffered_bytes = LIMIT;
    config.session.max_unacked_bytes = LIMIT;
    config.session.max_message = LIMIT / 2;
    config.retry_after = RETRY_AFTER;
    let go = Arc::new(Notify::new());
    let (done_tx, mut done) = mpsc::unbounded_channel::<Instant>();
    let (got_tx, mut got) = mpsc::unbounded_channel::<String>();
    let holdfast = Holdfast::builder().config(config).on_session({
        let go = go.clone();
        move |session: Session| {
            let (go, done_tx, got_tx) = (go.clone(), done_tx.clone(), got_tx.clone());
            async move {
                // Reads nothing until its own sends are through.
                go.notified().await;
                for n in 0..DOWN {
                    let text = format!("{n:04}{}", "d".repeat(1020));
                    if session.send(text).await.is_err() {
                        return;
                    }
                }
                let _ = done_tx.send(Instant::now());
                while let Some(message) = session.recv().await {
                    let _ = got_tx.send(message.as_text().unwrap_or_default().to_owned());
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
    let sends = || proxy.stats().requests_to("/send");
    let mut connection = client(&format!("{}{mount}", proxy.url()))
        .transport(TransportKind::Sse)
        .connect()
        .await
        .expect("connect");
    // Taken (the session's queue is empty) and left unread...
    let first = "f".repeat(LIMIT / 2);
    connection.send(first.clone()).await.expect("send");
    wait_until(|| holdfast.buffered_bytes() > 0).await;
    // ...so this one is past the budget: refused for now.
    let big = "b".repeat(LIMIT / 2);
    let before = sends();
    connection.send(big.clone()).await.expect("send");
    wait_until(|| sends() > before).await;
    let refused = Instant::now();
    go.notify_one();

    let mut down = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let done_at = loop {
        tokio::select! {
            at = done.recv() => break at.expect("the handler runs"),
            event = tokio::time::timeout_at(deadline, connection.next_event()) => {
                match event.expect("the application's sends got through in time") {
                    Some(Event::Message(message)) => down.push(message),
                    Some(Event::Reconnecting { reason, .. }) => panic!("reconnected: {reason}"),
                    Some(_) => {}
                    None => panic!("the connection ended"),
                }
            }
        }
    };
    let waited = done_at - refused;
    assert!(
        waited < RETRY_AFTER,
        "the server's sends waited {waited:?} for acks: the acks waited out the refused \
         send's Retry-After ({RETRY_AFTER:?}) instead of going in ack-only requests"
    );
    while down.len() < DOWN {
        match tokio::time::timeout_at(deadline, connection.next_event())
            .await
            .expect("every downstream message in time")
        {
            Some(Event::Message(message)) => down.push(message),
            Some(Event::Reconnecting { reason, .. }) => panic!("reconnected: {reason}"),
            Some(_) => {}
            None => panic!("the connection ended"),
        }
    }
    let texts: Vec<String> = down
        .iter()
        .map(|m| match m {
            Message::Text(text) => text[..4].to_owned(),
            Message::Binary(_) => panic!("a binary message"),
        })
        .collect();
    let expected: Vec<String> = (0..DOWN).map(|n| format!("{n:04}")).collect();
    assert_eq!(texts, expected, "every downstream message once, in order");

    // The refused message went again after the Retry-After (once the
    // application read the first, the server took it): once, in order.
    let mut upstream = Vec::new();
    while upstream.len() < 2 {
        let text = tokio::time::timeout_at(deadline, got.recv())
            .await
            .expect("the refused message arrived in time")
            .expect("the handler runs");
        upstream.push(text);
    }
    assert!(
        refused.elapsed() >= RETRY_AFTER,
        "the refused message waited out its Retry-After"
    );
    assert!(upstream == [first, big], "each message once, in order");
    connection.close().await;
    while let Some(event) = connection.next_event().await {
        assert!(
            !matches!(event, Event::Reconnecting { .. }),
            "a refused send reconnected: {event:?}"
        );
    }
    assert!(got.try_recv().is_err(), "nothing twice");
}

/// In a reconnect storm the server (or the network to it) is slow for a
/// while: a WebSocket that carried this session already gets twice the
/// probe timeout to greet when it comes back, so a slow upgrade resumes
/// on it instead of being dropped and falling back. A client that never
/// used it keeps the plain probe timeout (its buffering-proxy check): the
/// same slow upgrade makes it fall back to SSE at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_carried_the_session_gets_longer_to_greet_when_it_comes_back() {
    const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
    // Slower than the probe timeout, well within twice it.
    const SLOW_UPGRADE: Duration = Duration::from_millis(1400);
    let (_server, proxy, url) = proxied(quick_server_config(), Behavior::default()).await;
    let mut connection = client(&url)
        .probe_timeout(PROBE_TIMEOUT)
        .connect()
        .await
        .expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
    // Frames both ways: proven for this session.
    exchange(&mut connection, 20, |_| {}).await;
    proxy.set(Behavior::default().delay_upgrades(SLOW_UPGRADE));
    proxy.cut_all();
    let resumed_on = wait_for(&mut connection, |event| match event {
        Event::Resumed { transport } => Some(*transport),
        Event::TransportChanged { from, to } => panic!("fell back from {from} to {to}"),
        _ => None,
    })
    .await;
    assert_eq!(resumed_on, TransportKind::WebSocket);
    let seen = exchange(&mut connection, 20, |_| {}).await;
    assert!(seen.changes.is_empty(), "{seen:?}");

    // The control: the same slow upgrade is past the plain probe timeout.
    let started = Instant::now();
    let other = client(&url)
        .probe_timeout(PROBE_TIMEOUT)
        .connect()
        .await
        .expect("connect");
    assert_eq!(other.transport(), Some(TransportKind::Sse));
    assert!(
        started.elapsed() < PROBE_TIMEOUT + SLOW_UPGRADE,
        "a first attempt waits the plain probe timeout: {:?}",
        started.elapsed()
    );
}
