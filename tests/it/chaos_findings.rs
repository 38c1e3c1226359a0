//! What the chaos soak and the network report found in the Rust client's
//! transport policy, now fixed; each has its regression test next to a
//! control. The sessions themselves never lost, duplicated or reordered
//! anything; these were about *which* transport the client ends on and how
//! long it waits.
//!
//! 1. The re-probe timer started over with every attachment, so a client on
//!    a fallback transport switches back up only if one attachment outlives
//!    the re-probe delay. A busy SSE session — recycled by the server every
//!    `sse_max_bytes` (256 KiB by default), i.e. every few seconds at a few
//!    hundred KB/s — never returned to WebSocket. Now the re-probe deadline
//!    survives reconnects, and so does the probe in flight: CI found that a
//!    probe slower than the stream's life (a loaded machine, a distant
//!    server) was dropped and started over with every reconnect.
//! 2. A gateway answering 502 for a moment (an app restarting behind nginx)
//!    demotes a WebSocket session to long-polling: the 502 on `ws` and
//!    `sse` counts as "blocked", and a long-poll attempt on an open session
//!    counts as greeted before any answer, so its own 502 is a dropped
//!    connection, not a failed attempt — the client never goes back to the
//!    top of its order, and only the re-probe (15 s by default, then
//!    doubling) brought it back. Now a poll attachment counts as working
//!    only once a poll was answered.
//! 3. The backoff resets only after a connection lived `reset_after` (10 s
//!    by default), even if it delivered messages: on a network that drops
//!    connections every second or two, reconnect delays climbed to the 30 s
//!    maximum and the session spent most of its time waiting. Now a
//!    connection that carried messages both ways resets the backoff.

use std::time::Duration;

use crate::client_support::*;
use holdfast::client::{Backoff, Event, TransportKind};
use holdfast_testkit::{After, Behavior, PathFilter};

/// Starts a session on SSE (upgrades refused), lets upgrades through —
/// each taking `UPGRADE_DELAY`, so a probe takes longer than that — and
/// keeps `per_tick` messages flowing every 5 ms; returns how long the
/// switch back up to WebSocket took, if it happened within 8 s.
async fn switch_up_while_busy(sse_max_bytes: usize, per_tick: u32) -> Option<Duration> {
    let mut config = quick_server_config();
    config.sse_max_bytes = sse_max_bytes;
    let (_server, proxy, url) = proxied(config, Behavior::default().refuse_upgrades(403)).await;
    let mut connection = client(&url)
        .reprobe_after(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    proxy.set(Behavior::transparent().delay_upgrades(UPGRADE_DELAY));
    let allowed = tokio::time::Instant::now();
    let until = allowed + Duration::from_secs(8);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut sent = 0u32;
    let mut echoed = 0u32;
    let mut recycled = 0u32;
    // Everything but messages, with when it happened, for the failure report.
    let mut events = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if tokio::time::Instant::now() > until {
                    println!("no switch: {echoed} echoes, {recycled} SSE streams recycled");
                    for (at, event) in &events {
                        println!("  {at:?}: {event:?}");
                    }
                    return None;
                }
                // Keep at most a few hundred in flight.
                for _ in 0..per_tick {
                    if sent < echoed + 400 {
                        connection.send(numbered(sent)).await.expect("send");
                        sent += 1;
                    }
                }
            }
            event = connection.next_event() => match event.expect("connection ended") {
                Event::Message(message) => {
                    assert_eq!(number_of(&message), echoed, "exactly once, in order");
                    echoed += 1;
                }
                // On a loaded machine a slow SSE reconnect may fall back to
                // long-polling first; what matters is reaching WebSocket.
                Event::TransportChanged {
                    to: TransportKind::WebSocket,
                    ..
                } => return Some(allowed.elapsed()),
                Event::Closed(closed) => panic!("closed: {closed:?}"),
                Event::Resumed { .. } => recycled += 1,
                other => events.push((allowed.elapsed(), other)),
            }
        }
    }
}

/// Longer than a busy session's SSE streams live (below), shorter than the
/// test client's probe timeout (800 ms).
const UPGRADE_DELAY: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_sse_session_switches_back_up_to_websocket() {
    let took = switch_up_while_busy(256 * 1024, 1).await;
    assert!(took.is_some(), "a quiet session re-probes and switches up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_sse_session_switches_back_up_to_websocket() {
    // 16 KiB streams and ~40 messages of ~30 bytes per 5 ms: the stream is
    // recycled every couple of hundred milliseconds, well within the 500 ms
    // re-probe delay, and sooner than a probe takes (`UPGRADE_DELAY`): the
    // re-probe's deadline and the probe in flight must survive reconnects.
    let took = switch_up_while_busy(16 * 1024, 40).await;
    assert!(
        took.is_some(),
        "upgrades have been allowed for 8 s (re-probe after 500 ms), yet the busy session \
         is still on SSE"
    );
}

/// A WebSocket session through a gateway that answers 502 to everything
/// for a second; returns the transport it is on afterwards.
async fn after_gateway_outage(outage: Behavior) -> Option<TransportKind> {
    let (_server, proxy, url) = proxied(quick_server_config(), Behavior::transparent()).await;
    // The test client never re-probes (reprobe_after is an hour): what it
    // ends on is where its reconnects took it.
    let mut connection = client(&url).connect().await.expect("connect");
    assert_eq!(connection.transport(), Some(TransportKind::WebSocket));
    exchange(&mut connection, 200, |_| {}).await;
    proxy.set(outage);
    proxy.cut_all();
    wait_for(&mut connection, |event| {
        matches!(event, Event::Reconnecting { .. }).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.set(Behavior::transparent());
    let seen = exchange(&mut connection, 200, |_| {}).await;
    println!("after the outage: {:?}, {seen:?}", connection.transport());
    connection.transport()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_falls_back_to_sse_when_only_upgrades_fail_for_a_moment() {
    // Control: only the upgrade fails (refused) for a second — HTTP works,
    // so falling back is right; the session then runs on SSE.
    let transport = after_gateway_outage(Behavior::default().refuse_upgrades(403)).await;
    assert_eq!(transport, Some(TransportKind::Sse));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_session_is_back_on_websocket_after_a_gateway_outage() {
    let transport =
        after_gateway_outage(Behavior::default().error_page(502, PathFilter::Any)).await;
    assert_eq!(
        transport,
        Some(TransportKind::WebSocket),
        "every transport got 502 (the server behind the gateway was away): expected the \
         session back on WebSocket once the gateway recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_on_a_network_that_cuts_every_few_seconds_keeps_flowing() {
    let (_server, _proxy, url) = proxied(
        quick_server_config(),
        Behavior::default()
            .cut_randomly(After::bytes(256 * 1024).or_time(Duration::from_secs(2)), 3),
    )
    .await;
    // The default backoff (250 ms → 30 s, reset after 10 s stable).
    let mut connection = client(&url)
        .backoff(Backoff::default())
        .connect()
        .await
        .expect("connect");
    let until = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut sent = 0u32;
    let mut echoed = 0u32;
    let mut last = tokio::time::Instant::now();
    let mut longest = Duration::ZERO;
    let mut reconnects = 0u32;
    while tokio::time::Instant::now() < until {
        while sent < echoed + 64 {
            connection.send(numbered(sent)).await.expect("send");
            sent += 1;
        }
        let Ok(event) = tokio::time::timeout_at(until, connection.next_event()).await else {
            break;
        };
        match event.expect("connection ended") {
            Event::Message(message) => {
                assert_eq!(number_of(&message), echoed, "exactly once, in order");
                echoed += 1;
                longest = longest.max(last.elapsed());
                last = tokio::time::Instant::now();
            }
            Event::Reconnecting { .. } => reconnects += 1,
            _ => {}
        }
    }
    longest = longest.max(last.elapsed());
    println!("{echoed} echoes in 25 s, {reconnects} reconnects, longest pause {longest:?}");
    assert!(
        longest < Duration::from_secs(5),
        "every connection works (it is merely cut after at most 2 s), yet the session paused \
         for {longest:?}"
    );
}
