//! Exactly-once delivery under arbitrary interleavings, losses, reconnects
//! and transport switches, checked with proptest against the simulator.

mod sim;

use std::time::Duration;

use holdfast_protocol::{ClientEvent, Close, CloseCode, Initiator, ServerEvent, TransportKind};
use proptest::prelude::*;
use sim::{Pair, payload, small_client_config, small_server_config};

/// One step of a scenario.
#[derive(Clone, Debug)]
enum Op {
    /// The client application sends messages (how many, first shape).
    ClientSend(u8, u8),
    /// The server application sends messages (how many, first shape).
    ServerSend(u8, u8),
    /// One unit in flight arrives (which one: the pick, modulo).
    Deliver(usize),
    /// Everything in flight arrives.
    DeliverAll,
    /// A live connection breaks (which one: the pick, modulo). On
    /// long-polling, the flag says whether the client keeps its attachment
    /// and polls again.
    Cut(usize, bool),
    /// The server loses a connection the client still holds (which one:
    /// the pick, modulo); the client finds out by its own timers.
    ServerDrop(usize),
    /// The send request in flight fails (request or reply lost).
    LoseRequest,
    /// The client attaches over a transport, cutting its current connection
    /// or (flag) leaving it half-open.
    Reconnect(TransportKind, bool),
    /// The clock moves.
    Advance(Duration),
}

fn transport() -> impl Strategy<Value = TransportKind> {
    prop_oneof![
        Just(TransportKind::WebSocket),
        Just(TransportKind::Sse),
        Just(TransportKind::LongPoll),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (1u8..4, any::<u8>()).prop_map(|(n, shape)| Op::ClientSend(n, shape)),
        10 => (1u8..4, any::<u8>()).prop_map(|(n, shape)| Op::ServerSend(n, shape)),
        30 => any::<usize>().prop_map(Op::Deliver),
        3 => Just(Op::DeliverAll),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(n, keep)| Op::Cut(n, keep)),
        2 => Just(Op::LoseRequest),
        1 => any::<usize>().prop_map(Op::ServerDrop),
        4 => (transport(), any::<bool>()).prop_map(|(k, half)| Op::Reconnect(k, half)),
        8 => prop_oneof![
            8 => (0u64..200).prop_map(Duration::from_millis),
            3 => (200u64..3_000).prop_map(Duration::from_millis),
            1 => (3_000u64..45_000).prop_map(Duration::from_millis),
        ]
        .prop_map(Op::Advance),
    ]
}

/// A pair whose session is open over `kind`, with `early` client messages
/// queued before the `open` arrived.
fn opened(kind: TransportKind, early: u8) -> Pair {
    let mut server_config = small_server_config();
    // Long enough that the random scenarios never lose the session.
    server_config.resume_window = Duration::from_secs(24 * 3600);
    let mut pair = Pair::new(server_config, small_client_config());
    for n in 0..early {
        pair.client_send(payload('c', n.into(), n))
            .expect("queued before open");
    }
    pair.connect(kind);
    pair.settle();
    assert!(pair.client.params().is_some(), "the session opened");
    pair
}

/// Applies one step.
fn apply(pair: &mut Pair, op: &Op) {
    match *op {
        Op::ClientSend(count, shape) => {
            for i in 0..count {
                let n = pair.log.client_sent.len();
                let _ = pair.client_send(payload('c', n, shape.wrapping_add(i))); // Full is fine
            }
        }
        Op::ServerSend(count, shape) => {
            for i in 0..count {
                let n = pair.log.server_sent.len();
                let _ = pair.server_send(payload('s', n, shape.wrapping_add(i)));
            }
        }
        Op::Deliver(pick) => {
            let queues = pair.deliverable();
            if !queues.is_empty() {
                let (id, dir) = queues[pick % queues.len()];
                pair.deliver(id, dir);
            }
        }
        Op::DeliverAll => pair.settle(),
        Op::Cut(pick, keep_polling) => {
            let links: Vec<_> = pair
                .live_links()
                .into_iter()
                .filter(|&id| pair.links[id].kind != sim::LinkKind::Send)
                .collect();
            if !links.is_empty() {
                pair.cut(links[pick % links.len()], !keep_polling);
            }
        }
        Op::ServerDrop(pick) => {
            let links: Vec<_> = pair
                .live_links()
                .into_iter()
                .filter(|&id| matches!(pair.links[id].server, sim::ServerEnd::Open(_)))
                .collect();
            if !links.is_empty() {
                pair.drop_server_end(links[pick % links.len()]);
            }
        }
        Op::LoseRequest => {
            if let Some(id) = pair.send_link() {
                pair.cut(id, true);
            }
        }
        Op::Reconnect(_, _) if pair.client.is_closed() => {}
        Op::Reconnect(kind, half_open) => {
            if let Some(id) = pair.current_link() {
                if half_open {
                    pair.abandon(id);
                } else {
                    pair.cut(id, true);
                }
            }
            pair.connect(kind);
        }
        Op::Advance(by) => pair.advance(by),
    }
}

fn scenario() -> impl Strategy<Value = (TransportKind, u8, Vec<Op>, TransportKind)> {
    (
        transport(),
        0u8..3,
        prop::collection::vec(op(), 1..120),
        transport(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// At every step, what each side delivered is a prefix of what the
    /// other sent; after a clean reconnect, everything sent is delivered.
    #[test]
    fn every_message_is_delivered_exactly_once_in_order(
        (first, early, ops, last) in scenario()
    ) {
        let mut pair = opened(first, early);
        for op in &ops {
            apply(&mut pair, op);
            pair.assert_prefixes();
            pair.assert_no_errors();
            prop_assert!(!pair.client.is_closed(), "the session never ends here");
        }
        let during = (pair.log.client_got.len(), pair.log.server_got.len());
        pair.reconnect_and_quiesce(last);
        if std::env::var_os("SIM_STATS").is_some() {
            let ev = pair.log.client_event_list();
            eprintln!("STATS ops={} sent=({},{}) during={:?} links={} t={:?} resumed={} failed={} detached={} sends={} polls={}",
                ops.len(), pair.log.client_sent.len(), pair.log.server_sent.len(), during, pair.links.len(), pair.elapsed(),
                ev.iter().filter(|e| matches!(e, ClientEvent::Resumed{..})).count(),
                ev.iter().filter(|e| matches!(e, ClientEvent::TransportFailed{..})).count(),
                ev.iter().filter(|e| matches!(e, ClientEvent::Detached{..})).count(),
                pair.links.iter().filter(|l| l.kind == sim::LinkKind::Send).count(),
                pair.links.iter().filter(|l| l.kind == sim::LinkKind::Poll).count(),
            );
        }
    }

    /// A client away longer than the resume window is told the session is
    /// lost (4410) when it comes back, and what it delivered before is
    /// still an exact prefix of what was sent.
    #[test]
    fn a_session_resumed_too_late_is_lost_and_nothing_is_corrupted(
        (first, early, ops, last) in (transport(), 0u8..3, prop::collection::vec(op(), 0..60), transport())
    ) {
        let mut pair = opened(first, early);
        for op in &ops {
            apply(&mut pair, op);
        }
        for id in pair.live_links() {
            pair.cut(id, true);
        }
        let window = pair.server.config().resume_window;
        pair.advance(window + Duration::from_secs(1));
        prop_assert!(pair.server.is_finished(pair.now));
        let expired = pair.log.server_event_list().into_iter().any(|e| matches!(
            e,
            ServerEvent::Closed { initiator: Initiator::Expired, ref close } if close.code == CloseCode::SESSION_LOST
        ));
        prop_assert!(expired, "the server reports the expiry");
        let got_before = pair.log.client_got.len();

        pair.connect(last);
        pair.settle();

        let closed = pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. }));
        prop_assert_eq!(closed.len(), 1, "one Closed event");
        prop_assert!(
            matches!(&closed[0], ClientEvent::Closed { close, initiator: Initiator::Peer } if close.code == CloseCode::SESSION_LOST),
            "closed as lost: {:?}", closed
        );
        prop_assert!(pair.client.is_closed());
        prop_assert_eq!(pair.client.connect_target(), None, "no retry of the resume");
        prop_assert_eq!(pair.log.client_got.len(), got_before, "nothing delivered after the loss");
        pair.assert_prefixes();
        pair.assert_no_errors();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The server closes in the middle of a random scenario: the client
    /// still delivers every message sent before the close, exactly once,
    /// then reports the close — resuming from the tombstone if it has to.
    #[test]
    fn a_server_close_comes_after_everything_sent_before_it(
        (first, early, ops, last) in scenario(),
        close_at in any::<prop::sample::Index>(),
    ) {
        let mut pair = opened(first, early);
        let close_at = close_at.index(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if i == close_at {
                pair.server_close(Close::new(CloseCode::NORMAL, "the end"));
            }
            apply(&mut pair, op);
            pair.assert_prefixes();
            pair.assert_no_errors();
        }
        if !pair.client.is_closed() {
            for id in pair.live_links() {
                pair.cut(id, true);
            }
            pair.connect(last);
            pair.run_until(Duration::from_millis(50), Duration::from_secs(120), |p| p.client.is_closed());
        }
        pair.assert_no_errors();
        prop_assert_eq!(&pair.log.client_got, &pair.log.server_sent);
        pair.assert_prefixes();
        let closed = pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. }));
        prop_assert_eq!(
            closed,
            vec![ClientEvent::Closed {
                close: Close::new(CloseCode::NORMAL, "the end"),
                initiator: Initiator::Peer,
            }]
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The client closes in the middle of a random scenario: when the
    /// server learns of the close, it has delivered every message the
    /// client sent before it, exactly once; the client reports its own
    /// close.
    #[test]
    fn a_client_close_comes_after_everything_sent_before_it(
        (first, early, ops, last) in scenario(),
        close_at in any::<prop::sample::Index>(),
    ) {
        let mut pair = opened(first, early);
        let close_at = close_at.index(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if i == close_at {
                pair.client_close(Close::new(CloseCode::NORMAL, "client done"));
            }
            // Keep the client's close timeout out of reach: this is about
            // order, not about giving up.
            let op = match op {
                Op::Advance(by) => Op::Advance((*by).min(Duration::from_secs(1))),
                other => other.clone(),
            };
            apply(&mut pair, &op);
            pair.assert_prefixes();
            pair.assert_no_errors();
        }
        if !pair.client.is_closed() {
            for id in pair.live_links() {
                pair.cut(id, true);
            }
            pair.connect(last);
            pair.run_until(Duration::from_millis(50), Duration::from_secs(4), |p| p.client.is_closed());
        }
        pair.assert_no_errors();
        let server_closed = pair.log.server_event_list().into_iter().any(|e| matches!(
            e,
            ServerEvent::Closed { initiator: Initiator::Peer, ref close } if close.code == CloseCode::NORMAL
        ));
        prop_assert!(server_closed, "the server got the close");
        prop_assert_eq!(&pair.log.server_got, &pair.log.client_sent);
        // Once the server answered the close, the handshake is done for it
        // and it forgets the session: a client that missed the answer and
        // resumes is told 4410 (see `lifecycle.rs`,
        // `a_closing_client_that_missed_the_answer_is_told_the_session_is_lost`).
        let closed = pair.client_events_matching(|e| matches!(e, ClientEvent::Closed { .. }));
        prop_assert!(
            matches!(
                &closed[..],
                [ClientEvent::Closed { close, initiator: Initiator::Local }]
                    if *close == Close::new(CloseCode::NORMAL, "client done")
                        || close.code == CloseCode::SESSION_LOST
            ),
            "{:?}", closed
        );
    }
}

/// The simplest run on each transport, as a readable example of the
/// simulator and a baseline for the properties.
#[test]
fn each_transport_carries_both_directions() {
    for kind in TransportKind::ALL {
        let mut pair = opened(kind, 2);
        for n in 0..10 {
            pair.client_send(payload('c', 2 + n, n as u8)).unwrap();
            pair.server_send(payload('s', n, n as u8)).unwrap();
        }
        pair.settle();
        pair.assert_prefixes();
        pair.run_until(
            Duration::from_millis(50),
            Duration::from_secs(60),
            Pair::all_delivered,
        );
        pair.assert_no_errors();
        assert_eq!(pair.log.server_got.len(), 12, "{kind}");
        assert_eq!(pair.log.client_got.len(), 10, "{kind}");
    }
}

/// Switching transports in every order keeps the stream whole.
#[test]
fn switching_between_every_pair_of_transports_keeps_the_stream_whole() {
    for from in TransportKind::ALL {
        for to in TransportKind::ALL {
            let mut pair = opened(from, 0);
            for n in 0..5 {
                pair.client_send(payload('c', n, n as u8)).unwrap();
                pair.server_send(payload('s', n, n as u8)).unwrap();
            }
            // Half of it arrives, then the connection breaks.
            for _ in 0..3 {
                if let Some(&(id, dir)) = pair.deliverable().first() {
                    pair.deliver(id, dir);
                }
            }
            pair.reconnect_and_quiesce(to);
            let resumed = pair.client_events_matching(|e| matches!(e, ClientEvent::Resumed { .. }));
            assert!(
                !resumed.is_empty() || to == TransportKind::LongPoll,
                "{from} -> {to}: resumed"
            );
        }
    }
}
