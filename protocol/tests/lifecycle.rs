//! Limits, protocol errors and the end of a session: replay buffer limits,
//! oversized messages, sequence gaps, impossible acks, graceful close and
//! the tombstone, long-poll resumes.

mod sim;

use std::time::{Duration, Instant};

use holdfast_protocol::{
    AttachError, ClientConfig, ClientEvent, Close, CloseCode, Frame, Initiator, Message,
    ProtocolError, SendError, ServerEvent, ServerSession, SessionConfig, SessionIdentity,
    TransportKind,
};
use sim::{Dir, LinkKind, Pair};

fn opened(kind: TransportKind) -> Pair {
    Pair::opened(SessionConfig::default(), ClientConfig::default(), kind)
}

fn text(s: &str) -> Message {
    Message::text(s)
}

/// A bare server session attached over WebSocket, greeting taken.
fn server_attached() -> (ServerSession, Instant, holdfast_protocol::AttachmentId) {
    let now = Instant::now();
    let identity = SessionIdentity {
        key: "k".into(),
        session_id: "s".into(),
    };
    let mut server = ServerSession::new(now, SessionConfig::default(), identity);
    let id = server.attach(now, TransportKind::WebSocket, 0).unwrap();
    assert!(matches!(
        server.poll_transmit(now, id).map(|t| t.frames),
        Some(frames) if matches!(frames[..], [Frame::Open(_)])
    ));
    (server, now, id)
}

// ---- replay buffer limits ----------------------------------------------------

/// `send` refuses with `Full` once the replay buffer holds
/// `max_unacked_messages` (or bytes) — sent or not, until acknowledged.
#[test]
fn a_full_replay_buffer_refuses_until_the_peer_acknowledges() {
    let mut server_config = SessionConfig::default();
    server_config.max_unacked_messages = 4;
    let mut client_config = ClientConfig::default();
    client_config.max_unacked_messages = 3;
    let mut pair = Pair::opened(server_config, client_config, TransportKind::WebSocket);
    let ws = pair.current_link().unwrap();

    for n in 0..4 {
        pair.server_send(text(&format!("s{n}"))).unwrap();
    }
    assert_eq!(pair.server_send(text("s4")), Err(SendError::Full));
    for n in 0..3 {
        pair.client_send(text(&format!("c{n}"))).unwrap();
    }
    assert_eq!(pair.client_send(text("c3")), Err(SendError::Full));

    // Delivered but not yet acknowledged: still full.
    pair.settle_dir(Dir::Down);
    pair.settle_dir(Dir::Up);
    assert_eq!(pair.log.client_got.len(), 4);
    assert_eq!(pair.log.server_got.len(), 3);
    assert_eq!(pair.server_send(text("s4")), Err(SendError::Full));
    assert_eq!(pair.client_send(text("c3")), Err(SendError::Full));

    // The acks arrive (after the ack delay): room again.
    pair.advance(Duration::from_millis(100));
    pair.deliver_link(ws);
    assert_eq!(pair.server.unacked_messages(), 0);
    assert_eq!(pair.client.unacked_bytes(), 0);
    pair.server_send(text("s4")).unwrap();
    pair.client_send(text("c3")).unwrap();
    pair.settle();
    pair.assert_prefixes();
    pair.assert_no_errors();
}

/// The byte limit counts the payload bytes of every unacknowledged message
/// plus the fixed per-message overhead.
#[test]
fn the_replay_buffer_byte_limit_counts_payload_bytes_and_overhead() {
    const O: usize = holdfast_protocol::MESSAGE_OVERHEAD;
    let mut server_config = SessionConfig::default();
    server_config.set_max_message(1000);
    server_config.max_unacked_bytes = 2500 + 3 * O;
    let mut pair = Pair::new(server_config, ClientConfig::default());
    let big = || Message::binary(vec![7u8; 1000]);
    pair.server_send(big()).unwrap();
    pair.server_send(big()).unwrap();
    assert!(pair.server.has_room_for(500));
    assert!(!pair.server.has_room_for(501));
    assert_eq!(pair.server_send(big()), Err(SendError::Full));
    assert_eq!(
        pair.server_send(Message::binary(vec![0u8; 1001])),
        Err(SendError::TooBig {
            len: 1001,
            max: 1000
        })
    );
    assert_eq!(pair.server.unacked_bytes(), 2000 + 2 * O);
}

// ---- protocol errors -----------------------------------------------------------

/// A message over `max_message` ends the session with 1009 (over
/// WebSocket: the close frame and the socket closed with it).
#[test]
fn a_message_over_max_message_ends_the_session_with_1009() {
    let mut server_config = SessionConfig::default();
    server_config.set_max_message(100);
    let mut pair = Pair::opened(
        server_config,
        ClientConfig::default(),
        TransportKind::WebSocket,
    );
    let ws = pair.current_link().unwrap();
    pair.server_send(text("queued before")).unwrap();
    pair.inject_up(
        ws,
        &[Frame::Message {
            seq: 1,
            message: Message::text("x".repeat(101)),
        }],
    );
    pair.settle();
    assert_eq!(
        pair.log.server_errors,
        [ProtocolError::MessageTooBig { len: 101, max: 100 }]
    );
    assert!(pair.server.is_closed());
    assert_eq!(
        pair.server.close_reason().map(|c| c.code),
        Some(CloseCode::TOO_BIG)
    );
    assert!(pair.log.server_event_list().iter().any(|e| matches!(
        e,
        ServerEvent::Closed { close, initiator: Initiator::Local } if close.code == CloseCode::TOO_BIG
    )));
    assert!(
        pair.server.poll_message().is_none(),
        "the message was not delivered"
    );
    assert_eq!(pair.log.client_got, [text("queued before")]);
    assert_eq!(
        pair.client_events_matching(sim::is_closed_with(CloseCode::TOO_BIG))
            .len(),
        1
    );
    assert!(pair.client.is_closed());
}

/// The same over a send request: `413` with the `close` frame.
#[test]
fn a_send_request_with_a_message_over_max_message_gets_413_and_ends_the_session() {
    let mut server_config = SessionConfig::default();
    server_config.set_max_message(100);
    let mut pair = Pair::opened(server_config, ClientConfig::default(), TransportKind::Sse);
    let send = pair.inject_send(&[Frame::Message {
        seq: 1,
        message: Message::binary(vec![1u8; 101]),
    }]);
    pair.deliver(send, Dir::Up);
    assert_eq!(pair.links[send].status, 413);
    assert!(pair.server.is_closed());
    pair.settle();
    assert_eq!(
        pair.client_events_matching(sim::is_closed_with(CloseCode::TOO_BIG))
            .len(),
        1
    );
}

/// A gap in sequence numbers is refused from the first bad frame on;
/// frames before it were applied and the session is intact.
#[test]
fn a_sequence_gap_is_an_error_that_leaves_the_session_intact() {
    let (mut server, now, id) = server_attached();
    let result = server.handle_frames(
        now,
        Some(id),
        [
            Frame::Message {
                seq: 1,
                message: text("a"),
            },
            Frame::Message {
                seq: 3,
                message: text("c"),
            },
            Frame::Message {
                seq: 2,
                message: text("b"),
            },
        ],
    );
    let error = result.unwrap_err();
    assert_eq!(
        error,
        ProtocolError::SeqGap {
            expected: 2,
            got: 3
        }
    );
    assert_eq!(error.close_code(), CloseCode::PROTOCOL_ERROR);
    assert!(!error.ends_session());
    assert_eq!(server.poll_message(), Some(text("a")));
    assert_eq!(server.poll_message(), None, "nothing after the gap");
    assert!(!server.is_closed());

    // The client retransmits in order: accepted, `a` not twice.
    server
        .handle_frames(
            now,
            Some(id),
            (1..=3).map(|seq| Frame::Message {
                seq,
                message: text(["a", "b", "c"][seq as usize - 1]),
            }),
        )
        .unwrap();
    assert_eq!(server.poll_message(), Some(text("b")));
    assert_eq!(server.poll_message(), Some(text("c")));
    assert_eq!(server.received(), 3);
}

/// The same through the simulator: a gap on a socket ends the socket with
/// `detach` 1002; the client resumes and everything arrives once.
#[test]
fn a_sequence_gap_on_a_socket_detaches_and_the_client_resumes() {
    let mut pair = opened(TransportKind::WebSocket);
    let ws = pair.current_link().unwrap();
    pair.client_send(text("one")).unwrap();
    pair.inject_up(
        ws,
        &[Frame::Message {
            seq: 5,
            message: text("bogus"),
        }],
    );
    pair.settle();
    assert_eq!(
        pair.log.server_errors,
        [ProtocolError::SeqGap {
            expected: 2,
            got: 5
        }]
    );
    assert!(
        pair.client_events_matching(|e| matches!(
            e,
            ClientEvent::Detached { close, .. } if close.code == CloseCode::PROTOCOL_ERROR
        ))
        .len()
            == 1
    );
    pair.log.server_errors.clear();
    pair.client_send(text("two")).unwrap();
    pair.reconnect_and_quiesce(TransportKind::WebSocket);
    assert_eq!(pair.log.server_got, [text("one"), text("two")]);
}

/// An ack for more than was ever sent is a protocol error, on either side
/// and in `last`; the session is intact and nothing is dropped.
#[test]
fn an_ack_beyond_what_was_sent_is_an_error() {
    let (mut server, now, id) = server_attached();
    server.send(text("a")).unwrap();
    server.send(text("b")).unwrap();
    let error = server
        .handle_frames(now, Some(id), [Frame::ack(3)])
        .unwrap_err();
    assert_eq!(error, ProtocolError::AckBeyondSent { ack: 3, sent: 2 });
    assert!(!error.ends_session());
    assert!(!server.is_closed());
    assert_eq!(server.unacked_messages(), 2, "nothing dropped");
    assert_eq!(
        server.attach(now, TransportKind::Sse, 3),
        Err(AttachError::Protocol(ProtocolError::AckBeyondSent {
            ack: 3,
            sent: 2
        }))
    );
    server
        .handle_frames(now, Some(id), [Frame::ack(2)])
        .unwrap();
    assert_eq!(server.unacked_messages(), 0);

    // The client likewise.
    let mut pair = opened(TransportKind::WebSocket);
    let ws = pair.current_link().unwrap();
    pair.client_send(text("x")).unwrap();
    pair.links[ws]
        .down
        .push_back(sim::Unit::Json(sim::encode_json(&[Frame::ack(9)])));
    pair.settle();
    assert_eq!(
        pair.log.client_errors,
        [ProtocolError::AckBeyondSent { ack: 9, sent: 1 }]
    );
    assert_eq!(pair.client.acked(), 0);
    assert!(pair.client.transport().is_some(), "the session is intact");
    pair.advance(Duration::from_millis(100));
    pair.settle();
    assert_eq!(pair.client.acked(), 1, "the real ack, after the ack delay");
}

// ---- closing -------------------------------------------------------------------

/// The server's `close` goes out after the messages it queued, so the
/// client delivers them all first; the socket ends with it.
#[test]
fn a_graceful_close_comes_after_the_queued_messages() {
    for kind in TransportKind::ALL {
        let mut pair = opened(kind);
        for n in 0..3 {
            pair.server_send(text(&format!("m{n}"))).unwrap();
        }
        pair.server_close(Close::new(CloseCode::NORMAL, "bye"));
        assert_eq!(pair.server_send(text("late")), Err(SendError::Closed));
        pair.settle();
        assert_eq!(pair.log.client_got, pair.log.server_sent, "{kind}");
        let tail: Vec<_> = pair
            .log
            .client_rx
            .iter()
            .rev()
            .take(4)
            .map(|(_, f)| f.clone())
            .collect();
        // On WebSocket the close carries the final ack (PROTOCOL.md §9).
        let closed_after_messages = match &tail[..] {
            [
                Frame::Close(c),
                Frame::Ack { seq: 0, .. },
                Frame::Message { seq: 3, .. },
                ..,
            ] => kind.is_duplex() && c.code == CloseCode::NORMAL,
            [Frame::Close(c), Frame::Message { seq: 3, .. }, ..] => {
                !kind.is_duplex() && c.code == CloseCode::NORMAL
            }
            _ => false,
        };
        assert!(
            closed_after_messages,
            "{kind}: messages then close: {tail:?}"
        );
        assert_eq!(
            pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. })),
            [ClientEvent::Closed {
                close: Close::new(CloseCode::NORMAL, "bye"),
                initiator: Initiator::Peer
            }],
            "{kind}"
        );
        assert!(
            pair.live_links().is_empty(),
            "{kind}: every connection ended"
        );
    }
}

/// Regression: a send request answered while a server close is queued
/// behind undelivered messages must not carry the `close` (the client
/// would end the session without them). Found by this suite; fixed in
/// `ServerSession::request_reply`.
#[test]
fn a_send_reply_does_not_overtake_the_messages_queued_before_a_close() {
    for kind in [TransportKind::Sse, TransportKind::LongPoll] {
        let mut pair = opened(kind);
        let downstream = pair.current_link().unwrap();
        pair.server_send(text("a")).unwrap();
        pair.server_send(text("b")).unwrap();
        pair.server_close(Close::new(CloseCode::NORMAL, "bye"));
        // The client sends before the messages reach it.
        pair.client_send(text("hi")).unwrap();
        let send = pair.send_link().unwrap();
        pair.deliver_link(send);
        assert!(!pair.client.is_closed(), "{kind}: not closed by the reply");
        pair.deliver_link(downstream);
        pair.settle();
        assert_eq!(pair.log.client_got, [text("a"), text("b")], "{kind}");
        assert_eq!(
            pair.client_events_matching(sim::is_closed_with(CloseCode::NORMAL))
                .len(),
            1,
            "{kind}"
        );
    }
}

/// Once the client acknowledged everything, a send reply does carry the
/// server's `close` (the client may have no attachment to learn it on).
#[test]
fn a_send_reply_carries_the_close_once_everything_was_acknowledged() {
    let mut pair = opened(TransportKind::Sse);
    let stream = pair.current_link().unwrap();
    pair.server_send(text("a")).unwrap();
    pair.run_until(
        Duration::from_millis(50),
        Duration::from_secs(1),
        Pair::all_delivered,
    );
    pair.cut(stream, true);
    pair.server_close(Close::new(CloseCode::GOING_AWAY, "shutdown"));
    let send = pair.inject_send(&[Frame::Ping]);
    pair.deliver_link(send);
    assert_eq!(
        pair.client_events_matching(sim::is_closed_with(CloseCode::GOING_AWAY))
            .len(),
        1
    );
}

/// A client that missed the end of the stream resumes from the tombstone:
/// it gets the remaining messages and then the same `close` — as often as
/// it takes, within the resume window.
#[test]
fn a_closed_session_replays_then_repeats_its_close_on_resume() {
    for kind in TransportKind::ALL {
        let mut pair = opened(kind);
        pair.server_send(text("m0")).unwrap();
        pair.settle();
        let link = pair.current_link().unwrap();
        pair.cut(link, true);
        pair.server_send(text("m1")).unwrap();
        pair.server_send(text("m2")).unwrap();
        pair.server_close(Close::new(CloseCode::NORMAL, "done"));

        // First resume: everything is lost again on the way.
        let link = pair.connect(kind);
        pair.deliver(link, Dir::Up);
        assert!(
            pair.log
                .server_tx
                .iter()
                .rev()
                .any(|(_, f)| matches!(f, Frame::Close(c) if c.code == CloseCode::NORMAL)),
            "{kind}: the close went out"
        );
        pair.cut(link, true);
        assert!(!pair.server.is_finished(pair.now), "{kind}: a tombstone");

        // Second resume, a minute later: replayed, then the close again.
        pair.advance(Duration::from_secs(60));
        pair.connect(kind);
        pair.settle();
        assert_eq!(pair.log.client_got, pair.log.server_sent, "{kind}");
        assert_eq!(
            pair.client_events_matching(sim::is_closed_with(CloseCode::NORMAL))
                .len(),
            1,
            "{kind}"
        );
        let closes = pair.log.server_tx_count(|f| matches!(f, Frame::Close(_)));
        assert_eq!(closes, 2, "{kind}: the same close, twice");

        // The tombstone goes when the resume window has passed.
        pair.advance(Duration::from_secs(60));
        assert!(pair.server.is_finished(pair.now), "{kind}");
    }
}

/// The client closes: its queued messages go first, the server answers
/// with the same `close`, both sides report it.
#[test]
fn a_client_close_is_answered_by_the_server() {
    for kind in TransportKind::ALL {
        let mut pair = opened(kind);
        pair.client_send(text("last words")).unwrap();
        pair.client_close(Close::new(CloseCode::NORMAL, "client done"));
        assert_eq!(pair.client_send(text("too late")), Err(SendError::Closed));
        pair.settle();
        assert_eq!(pair.log.server_got, [text("last words")], "{kind}");
        assert!(pair.log.server_event_list().iter().any(|e| matches!(
            e,
            ServerEvent::Closed { initiator: Initiator::Peer, close } if close.code == CloseCode::NORMAL
        )), "{kind}");
        assert_eq!(
            pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. })),
            [ClientEvent::Closed {
                close: Close::new(CloseCode::NORMAL, "client done"),
                initiator: Initiator::Local
            }],
            "{kind}"
        );
        assert!(
            !pair.server.is_finished(pair.now),
            "{kind}: resumable for the resume window (PROTOCOL.md §5)"
        );
        pair.advance(Duration::from_secs(121));
        assert!(pair.server.is_finished(pair.now), "{kind}: then forgotten");
    }
}

/// A client whose connection broke before the server's answer to its
/// `close` arrived resumes and gets the answer: a closed session stays
/// resumable for the resume window (PROTOCOL.md §5), so a clean close is
/// never reported as "session lost".
#[test]
fn a_closing_client_that_missed_the_answer_gets_it_on_resume() {
    let mut pair = opened(TransportKind::WebSocket);
    let ws = pair.current_link().unwrap();
    pair.client_close(Close::new(CloseCode::NORMAL, "bye"));
    pair.deliver(ws, Dir::Up);
    assert!(pair.server.is_closed());
    assert!(!pair.server.is_finished(pair.now), "a tombstone remains");
    pair.cut(ws, true); // the answer is lost
    pair.connect(TransportKind::WebSocket);
    pair.settle();
    assert_eq!(
        pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. })),
        [ClientEvent::Closed {
            close: Close::new(CloseCode::NORMAL, "bye"),
            initiator: Initiator::Local
        }]
    );
}

/// Regression: a client whose connection breaks after its `close` went
/// out sends its unacknowledged messages and the `close` again on the next
/// attachment. It used to send nothing more, lose those messages and
/// report a clean close after `close_timeout`. Found by this suite; fixed
/// in `ClientSession::attach`.
#[test]
fn a_closing_client_resends_its_messages_and_close_after_a_reconnect() {
    for kind in TransportKind::ALL {
        let mut pair = opened(TransportKind::WebSocket);
        pair.client_send(text("a")).unwrap();
        pair.client_close(Close::new(CloseCode::NORMAL, "bye"));
        let ws = pair.current_link().unwrap();
        pair.cut(ws, true);
        pair.connect(kind);
        pair.settle();
        assert_eq!(pair.log.server_got, [text("a")], "{kind}");
        assert!(pair.server.is_closed(), "{kind}");
        assert_eq!(
            pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. })),
            [ClientEvent::Closed {
                close: Close::new(CloseCode::NORMAL, "bye"),
                initiator: Initiator::Local
            }],
            "{kind}"
        );
    }
}

/// A client whose `close` is never answered gives up after
/// `close_timeout`.
#[test]
fn an_unanswered_client_close_times_out() {
    let mut pair = opened(TransportKind::WebSocket);
    let ws = pair.current_link().unwrap();
    pair.drop_server_end(ws);
    pair.client_close(Close::new(CloseCode::NORMAL, "bye"));
    assert_eq!(
        pair.log.client_tx_count(|f| matches!(f, Frame::Close(_))),
        1
    );
    pair.advance(Duration::from_secs(5) - Duration::from_millis(1));
    assert!(!pair.client.is_closed());
    pair.advance(Duration::from_millis(1));
    assert!(pair.client.is_closed());
}

// ---- long-polling resumes ------------------------------------------------------

/// Regression: after a broken poll, the client's new long-poll attachment
/// gets no `resumed` when the server takes its poll as continuing the poll
/// attachment (`PROTOCOL.md` §5). The client used to wait for a greeting
/// that never came (an error on every answer, forever). Found by this
/// suite; fixed in `ClientSession::attach`.
#[test]
fn a_long_poll_attachment_resumes_a_continuing_poll_without_a_greeting() {
    let mut pair = opened(TransportKind::LongPoll);
    let poll = pair.current_link().unwrap();
    pair.deliver(poll, Dir::Up); // held by the server
    pair.server_send(text("a")).unwrap(); // answered, but the answer is lost
    pair.client_send(text("b")).unwrap();
    pair.cut(poll, true);
    assert_eq!(
        pair.server.transport(),
        Some(TransportKind::LongPoll),
        "between polls"
    );

    pair.connect(TransportKind::LongPoll);
    pair.settle();
    pair.assert_no_errors();
    assert_eq!(pair.log.client_got, [text("a")]);
    assert_eq!(pair.log.server_got, [text("b")]);
    assert!(
        !pair
            .log
            .client_rx
            .iter()
            .any(|(_, f)| matches!(f, Frame::Resumed { .. })),
        "no resumed: the poll continued the attachment"
    );

    // Once the server dropped the poll attachment, the next poll is a
    // resume again, greeted and reported.
    let poll = pair.current_link().unwrap();
    pair.cut(poll, true);
    pair.advance(Duration::from_secs(40));
    pair.connect(TransportKind::LongPoll);
    pair.settle();
    assert_eq!(
        pair.client_events_matching(|e| matches!(
            e,
            ClientEvent::Resumed {
                kind: TransportKind::LongPoll,
                ..
            }
        ))
        .len(),
        1
    );
    pair.assert_no_errors();
}

/// A poll answer can be lost after the server sent it; the next poll
/// (`last` unchanged) gets the same messages again, delivered once.
#[test]
fn a_lost_poll_answer_is_sent_again() {
    let mut pair = opened(TransportKind::LongPoll);
    let poll = pair.current_link().unwrap();
    pair.deliver(poll, Dir::Up);
    pair.server_send(text("x")).unwrap();
    assert_eq!(pair.links[poll].down.len(), 1, "answered");
    pair.cut(poll, false); // the client keeps its attachment and polls again
    pair.settle();
    assert_eq!(pair.log.client_got, [text("x")]);
    assert_eq!(
        pair.log
            .server_tx_count(|f| matches!(f, Frame::Message { .. })),
        2
    );
    assert!(
        pair.links
            .iter()
            .all(|l| l.kind != LinkKind::Poll || l.status == 200)
    );
    pair.assert_no_errors();
}
