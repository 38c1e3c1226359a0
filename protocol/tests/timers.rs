//! Every timer of the session core, driven by the simulator's virtual
//! clock: ack batching, pings, peer timeout, poll hold, resume window, the
//! client's probe and liveness checks. Times are checked to the millisecond
//! on both sides of each deadline.

mod sim;

use std::time::Duration;

use holdfast_protocol::{
    ClientConfig, ClientEvent, CloseCode, Frame, Initiator, Message, ServerEvent, SessionConfig,
    TransportFailure, TransportKind,
};
use sim::{Dir, LinkKind, Pair, Unit};

const MS: Duration = Duration::from_millis(1);

fn opened(kind: TransportKind) -> Pair {
    Pair::opened(SessionConfig::default(), ClientConfig::default(), kind)
}

fn is_ack(frame: &Frame) -> bool {
    matches!(frame, Frame::Ack { .. })
}

// ---- acknowledgements ------------------------------------------------------

/// A streaming run: 1000 messages, ten every 5 ms. The receiver acks once
/// per 32 messages (`ack_every`), never once per message.
#[test]
fn a_stream_of_messages_is_acknowledged_in_batches_both_ways() {
    for kind in [TransportKind::WebSocket, TransportKind::Sse] {
        let mut pair = opened(kind);
        for _ in 0..100 {
            for _ in 0..10 {
                let n = pair.log.server_sent.len();
                pair.server_send(Message::text(format!("s{n}"))).unwrap();
            }
            pair.settle();
            pair.advance(5 * MS);
        }
        pair.run_until(10 * MS, Duration::from_secs(1), Pair::all_delivered);
        pair.assert_no_errors();
        let acks = pair.log.client_tx_count(is_ack);
        assert!(
            (1000 / 32..=1000 / 32 + 2).contains(&acks),
            "{kind}: {acks} client acks for 1000 messages"
        );
        assert_eq!(
            pair.server.unacked_messages(),
            0,
            "{kind}: all acknowledged"
        );
    }

    // Upstream on WebSocket: the server acks on the socket, in batches too.
    let mut pair = opened(TransportKind::WebSocket);
    for _ in 0..100 {
        for _ in 0..10 {
            let n = pair.log.client_sent.len();
            pair.client_send(Message::text(format!("c{n}"))).unwrap();
        }
        pair.settle();
        pair.advance(5 * MS);
    }
    pair.run_until(10 * MS, Duration::from_secs(1), Pair::all_delivered);
    let acks = pair.log.server_tx_count(is_ack);
    assert!(
        (1000 / 32..=1000 / 32 + 2).contains(&acks),
        "{acks} server acks for 1000 messages"
    );
}

/// One message alone is acknowledged `ack_delay` after it arrived, not
/// before; `ack_every` messages are acknowledged at once.
#[test]
fn an_ack_is_due_after_ack_delay_or_at_once_after_ack_every_messages() {
    for kind in [TransportKind::WebSocket, TransportKind::Sse] {
        let mut pair = opened(kind);
        pair.server_send(Message::text("one")).unwrap();
        pair.settle();
        assert_eq!(pair.log.client_got.len(), 1);
        pair.advance(99 * MS);
        assert_eq!(pair.log.client_tx_count(is_ack), 0, "{kind}: not yet");
        pair.advance(MS);
        assert_eq!(pair.log.client_tx_count(is_ack), 1, "{kind}: after 100 ms");
        pair.settle();
        assert_eq!(pair.server.unacked_messages(), 0);

        // 32 at once: acked without waiting.
        for n in 0..32 {
            pair.server_send(Message::text(format!("m{n}"))).unwrap();
        }
        pair.settle();
        let acks: Vec<_> = pair
            .log
            .client_tx
            .iter()
            .filter(|(_, f)| is_ack(f))
            .collect();
        assert_eq!(acks.len(), 2, "{kind}");
        assert_eq!(acks[1].1, Frame::ack(33), "{kind}: at once");
        assert_eq!(pair.server.unacked_messages(), 0);
    }
}

/// On long-polling the client acknowledges with each poll's `last`.
#[test]
fn long_polling_acknowledges_with_the_next_poll() {
    let mut pair = opened(TransportKind::LongPoll);
    for n in 0..5 {
        pair.server_send(Message::text(format!("m{n}"))).unwrap();
    }
    pair.settle();
    assert_eq!(pair.log.client_got.len(), 5);
    assert_eq!(
        pair.server.unacked_messages(),
        0,
        "the next poll carried last=5"
    );
    // The poll's `last` counts as the ack: a send request does not repeat it.
    pair.client_send(Message::text("up")).unwrap();
    pair.settle();
    assert_eq!(pair.log.server_got, [Message::text("up")]);
    assert_eq!(pair.log.client_tx_count(is_ack), 0, "no ack frames needed");
}

// ---- heartbeat and peer timeout ----------------------------------------------

/// On WebSocket and SSE the server pings every `ping_interval`; the client
/// answers each; nobody times out.
#[test]
fn streaming_transports_ping_every_interval_and_the_client_answers() {
    for kind in [TransportKind::WebSocket, TransportKind::Sse] {
        let mut pair = opened(kind);
        let pings = |pair: &Pair| pair.log.server_tx_count(|f| *f == Frame::Ping);
        for round in 1..=5 {
            pair.advance(Duration::from_secs(20) - MS);
            pair.settle();
            assert_eq!(pings(&pair), round - 1, "{kind}: not before 20 s");
            pair.advance(MS);
            assert_eq!(
                pings(&pair),
                round,
                "{kind}: ping {round} at {:?}",
                pair.elapsed()
            );
            pair.settle();
            assert_eq!(
                pair.log.client_tx_count(|f| *f == Frame::Pong),
                round,
                "{kind}: pong {round}"
            );
        }
        assert!(pair.client.transport().is_some(), "{kind}: still attached");
        assert!(
            !pair
                .log
                .server_event_list()
                .iter()
                .any(|e| matches!(e, ServerEvent::Detached { .. })),
            "{kind}: no timeout"
        );
        pair.assert_no_errors();
    }
}

/// A `ping` from the client is answered with a `pong`: on the socket, or in
/// the send reply.
#[test]
fn the_server_answers_a_clients_ping() {
    let mut pair = opened(TransportKind::WebSocket);
    let ws = pair.current_link().unwrap();
    pair.inject_up(ws, &[Frame::Ping]);
    pair.settle();
    assert_eq!(
        pair.log.server_tx.last().map(|(_, f)| f),
        Some(&Frame::Pong)
    );

    let mut pair = opened(TransportKind::Sse);
    let send = pair.inject_send(&[Frame::Ping]);
    pair.deliver(send, Dir::Up);
    let reply: Vec<_> = pair
        .log
        .server_tx
        .iter()
        .rev()
        .take(2)
        .map(|(k, f)| (*k, f.clone()))
        .collect();
    assert_eq!(
        reply,
        [
            (LinkKind::Send, Frame::Pong),
            (
                LinkKind::Send,
                Frame::Ack {
                    seq: 0,
                    room: Some(1 << 20)
                }
            )
        ]
    );
}

/// Long-polling has no pings: each poll is itself the sign of life.
#[test]
fn long_polling_is_not_pinged() {
    let mut pair = opened(TransportKind::LongPoll);
    for _ in 0..10 {
        pair.advance(Duration::from_secs(10));
        pair.settle();
    }
    assert_eq!(pair.log.server_tx_count(|f| *f == Frame::Ping), 0);
    assert_eq!(pair.client.transport(), Some(TransportKind::LongPoll));
}

/// A client that goes silent (its pongs never arrive) is dropped `timeout`
/// after the server last heard from it: `detach` 4408, and the session
/// lives on to be resumed.
#[test]
fn a_silent_client_is_detached_with_4408_after_the_peer_timeout() {
    for kind in [TransportKind::WebSocket, TransportKind::Sse] {
        let mut pair = opened(kind);
        let t0 = pair.elapsed();
        // From now on nothing from the client reaches the server; the
        // server's pings reach the client, which answers in vain.
        for _ in 0..39 {
            pair.advance(Duration::from_secs(1));
            pair.settle_dir(Dir::Down);
        }
        pair.advance(Duration::from_secs(1) - MS);
        pair.settle_dir(Dir::Down);
        assert!(pair.client.transport().is_some(), "{kind}: not yet");
        assert!(
            pair.log.client_tx_count(|f| *f == Frame::Pong) > 0,
            "{kind}: pongs were sent"
        );
        pair.advance(MS);
        pair.settle_dir(Dir::Down);
        assert_eq!(pair.elapsed() - t0, Duration::from_secs(40));
        assert!(
            pair.log
                .server_event_list()
                .contains(&ServerEvent::Detached {
                    id: holdfast_protocol::AttachmentId(1),
                    kind,
                    reason: "peer timeout",
                }),
            "{kind}: {:?}",
            pair.log.server_events
        );
        let detached = pair.client_events_matching(|e| matches!(e, ClientEvent::Detached { .. }));
        assert!(
            matches!(&detached[..], [ClientEvent::Detached { close, .. }] if close.code == CloseCode::PEER_TIMEOUT),
            "{kind}: {detached:?}"
        );
        assert_eq!(pair.client.transport(), None);
        assert!(!pair.server.is_closed(), "{kind}: the session lives");

        // The client resumes and the stream goes on.
        pair.server_send(Message::text("after")).unwrap();
        pair.reconnect_and_quiesce(kind);
        assert_eq!(pair.log.client_got, [Message::text("after")]);
    }
}

/// On long-polling, the attachment is dropped when no new poll arrives
/// within `timeout` of the previous one ending; a later poll resumes.
#[test]
fn long_polling_is_detached_when_no_poll_follows_within_the_timeout() {
    let mut pair = Pair::default_configs();
    let first = pair.connect(TransportKind::LongPoll);
    pair.deliver_link(first);
    // The open arrived; the client's next poll is stuck on the way.
    let poll = pair.current_link().unwrap();
    assert_ne!(poll, first);
    assert_eq!(pair.links[poll].server, sim::ServerEnd::Pending);
    pair.advance(Duration::from_secs(40) - MS);
    assert_eq!(pair.server.transport(), Some(TransportKind::LongPoll));
    pair.advance(MS);
    assert_eq!(pair.server.transport(), None);
    assert!(pair.log.server_event_list().iter().any(|e| matches!(
        e,
        ServerEvent::Detached {
            kind: TransportKind::LongPoll,
            reason: "no new poll",
            ..
        }
    )));
    // The late poll arrives: it is a resume now, greeted with `resumed`.
    pair.settle();
    assert!(
        pair.log
            .client_rx
            .iter()
            .any(|(_, f)| matches!(f, Frame::Resumed { .. }))
    );
    assert_eq!(
        pair.client_events_matching(|e| matches!(e, ClientEvent::Resumed { .. }))
            .len(),
        1
    );
}

// ---- long-polling ------------------------------------------------------------

/// A poll with nothing to deliver is answered `[]` after `poll_hold`, and
/// one with something to deliver at once.
#[test]
fn a_poll_is_held_for_poll_hold_then_answered_empty() {
    let mut pair = opened(TransportKind::LongPoll);
    let poll = pair.current_link().unwrap();
    pair.deliver(poll, Dir::Up);
    assert!(
        matches!(pair.links[poll].server, sim::ServerEnd::Open(_)),
        "held"
    );
    pair.advance(Duration::from_secs(25) - MS);
    assert!(pair.links[poll].down.is_empty(), "still held");
    pair.advance(MS);
    assert!(
        matches!(pair.links[poll].down.front(), Some(Unit::Json(body)) if body == b"[]"),
        "answered []: {:?}",
        pair.links[poll].down
    );
    pair.settle();

    // The next poll is held too, until a message comes.
    let poll = pair.current_link().unwrap();
    pair.advance(Duration::from_secs(3));
    pair.server_send(Message::text("now")).unwrap();
    assert!(
        matches!(pair.links[poll].down.front(), Some(Unit::Json(_))),
        "answered at once"
    );
    pair.settle();
    assert_eq!(pair.log.client_got, [Message::text("now")]);
}

/// A new poll replaces a held one, which is answered at once with
/// `detach` 4409; the attachment carries on (no detach event, no
/// `resumed`).
#[test]
fn a_new_poll_replaces_a_held_one_which_gets_4409() {
    let mut pair = opened(TransportKind::LongPoll);
    let old = pair.current_link().unwrap();
    pair.deliver(old, Dir::Up);
    // The client gives up on the held poll (say its connection looked
    // dead) and polls again on the same attachment.
    pair.abandon(old);
    let new = pair.current_link().unwrap();
    assert_ne!(new, old);
    pair.deliver(new, Dir::Up);
    assert!(
        pair.log.server_tx.contains(&(
            LinkKind::Poll,
            Frame::detach(CloseCode::REPLACED, "replaced by a newer attachment")
        )),
        "{:?}",
        pair.log.server_tx
    );
    assert_eq!(
        pair.links[old].server,
        sim::ServerEnd::Closed,
        "the old poll ended"
    );
    assert!(
        matches!(pair.links[new].server, sim::ServerEnd::Open(_)),
        "the new one is held"
    );
    assert!(
        !pair
            .log
            .server_event_list()
            .iter()
            .any(|e| matches!(e, ServerEvent::Detached { .. }))
    );
    pair.server_send(Message::text("on the new poll")).unwrap();
    pair.settle();
    assert_eq!(pair.log.client_got, [Message::text("on the new poll")]);
    pair.assert_no_errors();
}

// ---- replacement and the resume window ---------------------------------------

/// A new WebSocket replaces the current one: the old gets `detach` 4409
/// and its socket ends; the new one resumes and carries the stream.
#[test]
fn a_new_websocket_replaces_the_current_one() {
    let mut pair = opened(TransportKind::WebSocket);
    let old = pair.current_link().unwrap();
    pair.server_send(Message::text("before")).unwrap();
    let new = pair.connect(TransportKind::WebSocket);
    pair.deliver(new, Dir::Up);
    let down: Vec<_> = pair.links[old].down.iter().cloned().collect();
    assert!(
        matches!(&down[..], [Unit::Json(_), Unit::Json(detach), Unit::End]
            if sim::decode_json(detach) == [Frame::detach(CloseCode::REPLACED, "replaced by a newer attachment")]),
        "old socket: message, detach 4409, close: {down:?}"
    );
    let events = pair.log.server_event_list();
    assert!(events.iter().any(|e| matches!(
        e,
        ServerEvent::Detached {
            reason: "replaced",
            ..
        }
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ServerEvent::Attached { resumed: true, .. }))
    );
    pair.settle();
    assert_eq!(
        pair.log.client_got,
        [Message::text("before")],
        "replayed on the new socket"
    );
    assert_eq!(pair.current_link(), Some(new));
    assert!(
        pair.client_events_matching(|e| matches!(e, ClientEvent::Detached { .. }))
            .is_empty()
    );
    pair.assert_no_errors();
}

/// The session survives `resume_window` without an attachment, and not a
/// millisecond more: then it is lost (4410).
#[test]
fn the_resume_window_is_exact() {
    let window = SessionConfig::default().resume_window;
    for late in [false, true] {
        let mut pair = opened(TransportKind::WebSocket);
        pair.server_send(Message::text("kept")).unwrap();
        let link = pair.current_link().unwrap();
        pair.cut(link, true);
        pair.advance(window - MS);
        assert!(!pair.server.is_finished(pair.now));
        if late {
            pair.advance(MS);
            assert!(pair.server.is_finished(pair.now));
            assert!(pair.log.server_event_list().iter().any(|e| matches!(
                e,
                ServerEvent::Closed { initiator: Initiator::Expired, close } if close.code == CloseCode::SESSION_LOST
            )));
        }
        pair.connect(TransportKind::WebSocket);
        pair.settle();
        if late {
            assert!(pair.client.is_closed());
            assert_eq!(
                pair.client_events_matching(sim::is_closed_with(CloseCode::SESSION_LOST))
                    .len(),
                1
            );
            assert!(pair.log.client_got.is_empty());
        } else {
            assert_eq!(pair.log.client_got, [Message::text("kept")]);
            assert!(!pair.client.is_closed());
        }
    }
}

// ---- the client's own timers ------------------------------------------------

/// An attachment whose first frame does not come within `probe_timeout`
/// failed (a buffering proxy, say): `TransportFailed(NoGreeting)`.
#[test]
fn no_greeting_within_the_probe_timeout_fails_the_attachment() {
    for kind in TransportKind::ALL {
        // Opening: the server's answer never arrives.
        let mut pair = Pair::default_configs();
        let link = pair.connect(kind);
        pair.deliver(link, Dir::Up);
        assert!(
            !pair.links[link].down.is_empty(),
            "the greeting is on its way"
        );
        pair.advance(Duration::from_secs(2) - MS);
        assert!(pair.client.attachment().is_some(), "{kind}: not yet");
        pair.advance(MS);
        assert_eq!(
            pair.client_events_matching(|e| matches!(e, ClientEvent::TransportFailed { .. })),
            [ClientEvent::TransportFailed {
                id: holdfast_protocol::AttachmentId(1),
                failure: TransportFailure::NoGreeting,
            }],
            "{kind}"
        );
        assert_eq!(pair.client.attachment(), None);
    }

    // Resuming over a streaming transport: the `resumed` never arrives.
    for kind in [TransportKind::WebSocket, TransportKind::Sse] {
        let mut pair = opened(kind);
        let link = pair.current_link().unwrap();
        pair.cut(link, true);
        pair.connect(kind);
        pair.advance(Duration::from_secs(2));
        assert!(
            matches!(
                pair.client_events_matching(|e| matches!(e, ClientEvent::TransportFailed { .. }))[..],
                [ClientEvent::TransportFailed {
                    failure: TransportFailure::NoGreeting,
                    ..
                }]
            ),
            "{kind}"
        );
    }
}

/// A streaming attachment on which nothing arrives for the ping interval
/// plus the tolerance is dead: `TransportFailed(Silent)`.
#[test]
fn a_silent_streaming_attachment_fails() {
    for kind in [TransportKind::WebSocket, TransportKind::Sse] {
        let mut pair = opened(kind);
        let link = pair.current_link().unwrap();
        // The server's side of the connection is gone; the client's is not.
        pair.drop_server_end(link);
        pair.advance(Duration::from_secs(30) - MS);
        assert!(pair.client.attachment().is_some(), "{kind}: not yet");
        pair.advance(MS);
        assert!(
            matches!(
                pair.client_events_matching(|e| matches!(e, ClientEvent::TransportFailed { .. }))[..],
                [ClientEvent::TransportFailed {
                    failure: TransportFailure::Silent,
                    ..
                }]
            ),
            "{kind}"
        );
        assert_eq!(pair.client.attachment(), None);
    }
}

/// Pings keep a streaming attachment alive however long nothing else
/// happens; held polls keep a long-poll one alive.
#[test]
fn an_idle_but_healthy_attachment_never_fails() {
    for kind in TransportKind::ALL {
        let mut pair = opened(kind);
        let id = pair.client.attachment();
        for _ in 0..60 {
            pair.advance(Duration::from_secs(5));
            pair.settle();
        }
        assert_eq!(pair.client.attachment(), id, "{kind}");
        assert!(
            pair.client_events_matching(|e| matches!(
                e,
                ClientEvent::TransportFailed { .. } | ClientEvent::Detached { .. }
            ))
            .is_empty(),
            "{kind}"
        );
        pair.assert_no_errors();
    }
}
