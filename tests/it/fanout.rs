//! Broadcasting with `Fanout`: every member gets every message exactly once
//! and in order; a member that cannot keep up is disconnected with 4429
//! (never silently skipped) without holding the others back.

use std::time::Duration;

use crate::client_support::*;
use holdfast::client::{Event, Message, TransportKind};
use holdfast::server::{CloseCode, Fanout, Holdfast, ServerConfig, SlowConsumer};

/// A server whose sessions all join one room; returns its URL and the room.
async fn room_server(config: ServerConfig) -> (String, Fanout) {
    let room = Fanout::new(SlowConsumer::Disconnect);
    let holdfast = Holdfast::builder().config(config).on_session({
        let room = room.clone();
        move |session| {
            let room = room.clone();
            async move {
                room.join(&session);
                session.closed().await;
                room.leave(&session);
            }
        }
    });
    // Served until the test's runtime ends.
    let mount = unique_mount();
    let (addr, _) = serve(&holdfast, &mount).await;
    (format!("http://{addr}{mount}"), room)
}

async fn wait_members(room: &Fanout, count: usize) {
    tokio::time::timeout(DEADLINE, async {
        while room.len() < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("members joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_gets_every_message_in_order_on_any_transport() {
    let (url, room) = room_server(quick_server_config()).await;
    let mut members = Vec::new();
    for kind in TransportKind::ALL {
        members.push(
            client(&url)
                .transport(kind)
                .connect()
                .await
                .expect("connect"),
        );
    }
    wait_members(&room, 3).await;
    for n in 0..500u32 {
        let report = room.send(numbered(n)).await;
        assert_eq!(report.delivered, 3, "message {n}: {report:?}");
    }
    for member in &mut members {
        let mut next = 0u32;
        while next < 500 {
            let event = tokio::time::timeout(DEADLINE, member.next_event())
                .await
                .expect("broadcast arrives")
                .expect("connection open");
            if let Event::Message(message) = event {
                assert_eq!(number_of(&message), next, "{:?}", member.transport());
                next += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_is_disconnected_with_4429_and_the_others_carry_on() {
    let mut config = quick_server_config();
    config.session.max_unacked_messages = 256;
    let (url, room) = room_server(config).await;
    let mut fast = client(&url).connect().await.expect("fast");
    // Reads nothing and lets little pile up: its transport stops reading,
    // so it stops acknowledging.
    let mut slow = client(&url)
        .max_inbound_bytes(1024)
        .connect()
        .await
        .expect("slow");
    wait_members(&room, 2).await;
    let mut disconnected = 0;
    let mut next = 0u32;
    for n in 0..2000u32 {
        let payload = Message::text(format!("{n}:{}", "p".repeat(200)));
        disconnected += room.send(payload).await.disconnected;
        // The fast member keeps up.
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(0), fast.next_event()).await
        {
            if let Event::Message(message) = event {
                assert_eq!(number_of(&message), next);
                next += 1;
            }
        }
        // Bursts well under the fast member's buffer, with time to ack.
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(disconnected, 1, "the slow member was disconnected once");
    assert_eq!(room.len(), 1);
    while next < 2000 {
        match tokio::time::timeout(DEADLINE, fast.next_event()).await {
            Ok(Some(Event::Message(message))) => {
                assert_eq!(number_of(&message), next);
                next += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("fast member stopped at {next}: {other:?}"),
        }
    }
    let closed = wait_for(&mut slow, |event| match event {
        Event::Closed(closed) => Some(closed.clone()),
        _ => None,
    })
    .await;
    assert_eq!(closed.code, CloseCode::TOO_SLOW);
    assert!(!closed.session_lost);
}
