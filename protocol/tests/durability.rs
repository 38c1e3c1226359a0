//! The server core with a store: the durability gates (nothing reaches
//! the client about a message before the store holds it) and `restore`
//! (a session continued on another node from what the store holds).
//! Random interleavings, write delays and crashes are in `exactly_once.rs`.

mod sim;

use std::time::{Duration, Instant};

use holdfast_protocol::{
    AttachError, AttachmentId, ClientConfig, ClientSession, Close, CloseCode, Frame, Initiator,
    MAX_RESTORED_SEQ, MESSAGE_OVERHEAD, Message, ProtocolError, Restore, RestoreError,
    ServerSession, SessionConfig, SessionIdentity, TransportKind,
};
use sim::{Dir, Pair};

const MS: Duration = Duration::from_millis(1);

fn identity() -> SessionIdentity {
    SessionIdentity {
        key: "k".into(),
        session_id: "s".into(),
    }
}

fn text(s: &str) -> Message {
    Message::text(s)
}

fn msg(seq: u64, s: &str) -> Frame {
    Frame::Message {
        seq,
        message: text(s),
    }
}

/// A gated server attached over `kind`, greeting taken. On long-polling,
/// the poll the greeting answered is followed by the next one, held.
fn gated(
    now: Instant,
    config: SessionConfig,
    kind: TransportKind,
) -> (ServerSession, AttachmentId) {
    let mut server = ServerSession::new(now, config, identity());
    server.hold_until_confirmed();
    let id = attach(&mut server, now, kind, 0);
    (server, id)
}

/// Attaches `kind` with `last` and takes the greeting (asserting there is
/// one); on long-polling, issues the next poll.
fn attach(
    server: &mut ServerSession,
    now: Instant,
    kind: TransportKind,
    last: u64,
) -> AttachmentId {
    let mut id = server.attach(now, kind, last).expect("attach");
    let greeting = server.poll_transmit(now, id).expect("a greeting").frames;
    assert!(
        matches!(greeting[0], Frame::Open(_) | Frame::Resumed { .. }),
        "{greeting:?}"
    );
    if kind == TransportKind::LongPoll {
        id = server.attach(now, kind, last).expect("the next poll");
    }
    id
}

/// The sequence numbers of the messages among `frames`.
fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Payload of the large test messages, and what each is charged.
const LEN: usize = 1000;
const CHARGE: usize = LEN + MESSAGE_OVERHEAD;

fn big() -> Message {
    text(&"x".repeat(LEN))
}

fn big_frame(seq: u64) -> Frame {
    Frame::Message {
        seq,
        message: big(),
    }
}

fn acks(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Ack { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

// ---- without gates -----------------------------------------------------------

/// A session without a store: everything counts as confirmed, and
/// confirming changes nothing (not even the output epoch).
#[test]
fn without_gates_everything_counts_as_confirmed() {
    let t0 = Instant::now();
    let mut server = ServerSession::new(t0, SessionConfig::default(), identity());
    let ws = attach(&mut server, t0, TransportKind::WebSocket, 0);
    server.send(text("a")).unwrap();
    server
        .handle_frames(t0, Some(ws), [msg(1, "x"), msg(2, "y")])
        .unwrap();
    let epoch = server.output_epoch();
    server.confirm_sent(1);
    server.confirm_received(1);
    assert_eq!(server.output_epoch(), epoch);
    assert!(!server.holds_until_confirmed());
    assert_eq!(server.confirmed_sent(), 1);
    assert_eq!(server.confirmed_received(), 2);
    assert_eq!(server.unconfirmed_sent().count(), 0);
    assert_eq!(server.unconfirmed_received().count(), 0);
    let frames = server.poll_transmit(t0, ws).unwrap().frames;
    assert_eq!(seqs(&frames), [1]);
    assert_eq!(acks(&frames), [2], "the batch carries the ack at once");
}

// ---- downstream gate ---------------------------------------------------------

/// On every transport, a message the store does not hold yet never goes
/// out; confirming releases exactly what it confirms, and moves the output
/// epoch (the driver wakes its transports by it).
#[test]
fn an_unconfirmed_message_is_never_transmitted_and_confirming_releases_it() {
    for kind in TransportKind::ALL {
        let t0 = Instant::now();
        let (mut server, mut id) = gated(t0, SessionConfig::default(), kind);
        for s in ["a", "b", "c"] {
            server.send(text(s)).unwrap();
        }
        assert_eq!(server.sent(), 3);
        assert_eq!(server.confirmed_sent(), 0);
        let pending: Vec<_> = server
            .unconfirmed_sent()
            .map(|(seq, m)| (seq, m.clone()))
            .collect();
        assert_eq!(pending, [(1, text("a")), (2, text("b")), (3, text("c"))]);
        assert_eq!(server.poll_transmit(t0, id), None, "{kind}: held back");
        if kind == TransportKind::LongPoll {
            // The hold runs out: the poll is answered empty, not with them.
            let t1 = t0 + server.config().poll_hold;
            server.handle_timeout(t1);
            assert_eq!(server.poll_transmit(t1, id).map(|t| t.frames), Some(vec![]));
            id = server.attach(t1, kind, 0).unwrap();
        }

        let epoch = server.output_epoch();
        server.confirm_sent(2);
        assert_ne!(server.output_epoch(), epoch, "{kind}: the epoch moves");
        assert_eq!(server.confirmed_sent(), 2);
        let frames = server.poll_transmit(t0, id).expect("released").frames;
        assert_eq!(seqs(&frames), [1, 2], "{kind}: only what was confirmed");
        if kind == TransportKind::LongPoll {
            id = server.attach(t0, kind, 2).unwrap();
        }
        assert_eq!(server.poll_transmit(t0, id), None, "{kind}: 3 waits");
        assert_eq!(
            server
                .unconfirmed_sent()
                .map(|(s, _)| s)
                .collect::<Vec<_>>(),
            [3]
        );

        server.confirm_sent(3);
        let frames = server.poll_transmit(t0, id).expect("released").frames;
        assert_eq!(seqs(&frames), [3], "{kind}");
        assert_eq!(server.unconfirmed_sent().count(), 0);
    }
}

/// Confirmations are capped at what was sent and never move back; only a
/// confirmation that moves the gate moves the epoch.
#[test]
fn confirmations_are_monotonic_and_capped() {
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server.send(text("a")).unwrap();
    server.send(text("b")).unwrap();
    server.confirm_sent(100);
    assert_eq!(server.confirmed_sent(), 2, "capped at sent");
    let epoch = server.output_epoch();
    server.confirm_sent(1);
    server.confirm_sent(2);
    assert_eq!(server.confirmed_sent(), 2, "never back");
    assert_eq!(server.output_epoch(), epoch, "nothing moved");

    server
        .handle_frames(t0, Some(ws), [msg(1, "x"), msg(2, "y")])
        .unwrap();
    server.confirm_received(7);
    assert_eq!(server.confirmed_received(), 2, "capped at received");
    let epoch = server.output_epoch();
    server.confirm_received(1);
    assert_eq!(server.confirmed_received(), 2);
    assert_eq!(server.output_epoch(), epoch);
    // A second `hold_until_confirmed` does not confirm what waits.
    server.send(text("c")).unwrap();
    server.hold_until_confirmed();
    assert_eq!(server.confirmed_sent(), 2);
}

/// The `close` follows the messages: it waits for them to be confirmed
/// and sent, on the attachment and in a send reply.
#[test]
fn a_close_waits_for_the_unconfirmed_messages_before_it() {
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server.send(text("last")).unwrap();
    server.close(t0, Close::new(CloseCode::NORMAL, "bye"));
    assert_eq!(
        server.poll_transmit(t0, ws),
        None,
        "neither the message nor the close"
    );
    assert!(
        !server
            .request_reply()
            .iter()
            .any(|f| matches!(f, Frame::Close(_))),
        "a send reply does not carry the close either"
    );
    server.confirm_sent(1);
    let transmit = server.poll_transmit(t0, ws).expect("released");
    assert_eq!(seqs(&transmit.frames), [1]);
    assert_eq!(transmit.end, Some(Close::new(CloseCode::NORMAL, "bye")));
    assert!(matches!(transmit.frames.last(), Some(Frame::Close(_))));
}

/// The answer to a client's `close` carries the final ack (what the
/// session took): it waits for the messages before the close to be
/// confirmed, then acknowledges all of them.
#[test]
fn the_answer_to_a_client_close_waits_for_its_messages_to_be_confirmed() {
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    let bye = Frame::close(CloseCode::NORMAL, "bye");
    server
        .handle_frames(t0, Some(ws), [msg(1, "x"), msg(2, "y"), bye.clone()])
        .unwrap();
    assert!(server.is_closed());
    server.confirm_received(1);
    assert_eq!(server.poll_transmit(t0, ws), None, "2 is not confirmed");
    server.confirm_received(2);
    let transmit = server.poll_transmit(t0, ws).expect("the answer");
    assert_eq!(acks(&transmit.frames), [2]);
    assert_eq!(transmit.frames.last(), Some(&bye));
    assert_eq!(transmit.end, Some(Close::new(CloseCode::NORMAL, "bye")));
}

/// A client cannot acknowledge a message the store does not hold: it was
/// never sent (a frame's ack, or the `last` of an attachment).
#[test]
fn an_acknowledgement_of_an_unconfirmed_message_is_refused() {
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server.send(text("a")).unwrap();
    server.send(text("b")).unwrap();
    server.confirm_sent(1);
    let _sent = server.poll_transmit(t0, ws);
    let refused = ProtocolError::AckBeyondSent { ack: 2, sent: 1 };
    assert_eq!(
        server.handle_frames(t0, Some(ws), [Frame::Ack { seq: 2, room: None }]),
        Err(refused.clone())
    );
    assert_eq!(
        server.attach(t0, TransportKind::Sse, 2),
        Err(AttachError::Protocol(refused))
    );
    assert_eq!(
        server.handle_frames(t0, Some(ws), [Frame::Ack { seq: 1, room: None }]),
        Ok(())
    );
    assert_eq!(server.acked(), 1);
}

// ---- upstream gate -----------------------------------------------------------

/// Messages received but not confirmed are neither acknowledged — not on
/// the socket, not in a send reply, not in a `resumed` greeting — nor
/// given to the application; confirming releases exactly what it confirms.
#[test]
fn received_unconfirmed_messages_are_neither_acknowledged_nor_delivered() {
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server
        .handle_frames(t0, Some(ws), [msg(1, "x"), msg(2, "y"), msg(3, "z")])
        .unwrap();
    assert_eq!(server.received(), 3);
    assert_eq!(server.confirmed_received(), 0);
    let pending: Vec<_> = server
        .unconfirmed_received()
        .map(|(seq, m)| (seq, m.clone()))
        .collect();
    assert_eq!(pending, [(1, text("x")), (2, text("y")), (3, text("z"))]);
    assert_eq!(server.poll_message(), None);
    let t1 = t0 + Duration::from_secs(1);
    server.handle_timeout(t1);
    assert_eq!(server.poll_transmit(t1, ws), None, "no ack on the socket");
    // A server message goes out, but without an ack riding along.
    server.send(text("s")).unwrap();
    server.confirm_sent(1);
    let frames = server.poll_transmit(t1, ws).unwrap().frames;
    assert_eq!((seqs(&frames), acks(&frames)), (vec![1], vec![]));
    assert_eq!(
        acks(&server.request_reply()),
        [0],
        "a send reply acks nothing new"
    );
    let resumed_ack = |server: &mut ServerSession, kind| {
        let id = server.attach(t1, kind, 1).unwrap();
        match server.poll_transmit(t1, id).unwrap().frames[0] {
            Frame::Resumed { ack, .. } => ack,
            ref other => panic!("{other:?}"),
        }
    };
    assert_eq!(resumed_ack(&mut server, TransportKind::Sse), 0);

    let epoch = server.output_epoch();
    server.confirm_received(2);
    assert_ne!(server.output_epoch(), epoch);
    assert_eq!(server.poll_message(), Some(text("x")));
    assert_eq!(server.poll_message(), Some(text("y")));
    assert_eq!(server.poll_message(), None, "3 waits");
    assert_eq!(acks(&server.request_reply()), [2]);
    assert_eq!(resumed_ack(&mut server, TransportKind::WebSocket), 2);
    server.confirm_received(3);
    assert_eq!(server.poll_message(), Some(text("z")));
    assert_eq!(server.unconfirmed_received().count(), 0);
}

/// The ack timer runs from the messages' arrival as usual: confirmed
/// before `ack_delay` ran out, the ack goes out at the usual time;
/// confirmed after, at once.
#[test]
fn confirming_makes_the_ack_due_at_the_usual_time() {
    let delay = SessionConfig::default().ack_delay;
    // Confirmed early: due `ack_delay` after the arrival, not before.
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server.handle_frames(t0, Some(ws), [msg(1, "x")]).unwrap();
    server.confirm_received(1);
    assert_eq!(server.poll_timeout(), Some(t0 + delay));
    server.handle_timeout(t0 + delay - MS);
    assert_eq!(server.poll_transmit(t0 + delay - MS, ws), None);
    server.handle_timeout(t0 + delay);
    let frames = server.poll_transmit(t0 + delay, ws).unwrap().frames;
    assert_eq!(acks(&frames), [1]);

    // Confirmed late: due at once, and out after one `handle_timeout`.
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server.handle_frames(t0, Some(ws), [msg(1, "x")]).unwrap();
    let late = t0 + 3 * delay;
    server.handle_timeout(late);
    assert_eq!(server.poll_transmit(late, ws), None);
    let epoch = server.output_epoch();
    server.confirm_received(1);
    assert_ne!(
        server.output_epoch(),
        epoch,
        "the driver re-reads poll_timeout"
    );
    let due = server.poll_timeout().unwrap();
    assert!(due <= late, "due at once");
    server.handle_timeout(late);
    let frames = server.poll_transmit(late, ws).unwrap().frames;
    assert_eq!(acks(&frames), [1]);
    assert!(
        server.poll_timeout().unwrap() > late,
        "nothing due any more"
    );

    // `ack_every` messages confirmed: due at once.
    let every = SessionConfig::default().ack_every;
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    let batch: Vec<_> = (1..=every).map(|n| msg(n, "m")).collect();
    server.handle_frames(t0, Some(ws), batch).unwrap();
    assert!(
        server.poll_timeout().unwrap() > t0,
        "not before confirmation"
    );
    server.confirm_received(every);
    assert_eq!(server.poll_timeout(), Some(t0));
    server.handle_timeout(t0);
    assert_eq!(acks(&server.poll_transmit(t0, ws).unwrap().frames), [every]);
}

/// A driver's timer task runs `handle_timeout` at every `poll_timeout`:
/// while an ack waits for the store, that deadline is never in the past
/// (the task would spin), time moves on, and no ack goes out; once
/// confirmed, the ack does.
#[test]
fn no_deadline_stays_in_the_past_while_an_ack_waits_for_the_store() {
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, SessionConfig::default(), TransportKind::WebSocket);
    server
        .handle_frames(t0, Some(ws), [msg(1, "x"), msg(2, "y")])
        .unwrap();
    let mut now = t0;
    let mut fired = 0;
    // A client that keeps the socket alive with a ping every second.
    let mut next_ping = t0 + Duration::from_secs(1);
    while now < t0 + Duration::from_secs(30) {
        let deadline = server.poll_timeout().expect("a timer runs").min(next_ping);
        assert!(deadline > now, "a deadline in the past at {:?}", now - t0);
        now = deadline;
        if now == next_ping {
            server.handle_frames(now, Some(ws), [Frame::Ping]).unwrap();
            next_ping += Duration::from_secs(1);
        }
        server.handle_timeout(now);
        while let Some(transmit) = server.poll_transmit(now, ws) {
            assert!(
                acks(&transmit.frames).is_empty(),
                "an ack of unconfirmed messages"
            );
        }
        fired += 1;
        assert!(fired < 1_000, "the timer task spins");
    }
    server.confirm_received(2);
    let due = server.poll_timeout().unwrap();
    assert!(due <= now);
    server.handle_timeout(now);
    assert_eq!(acks(&server.poll_transmit(now, ws).unwrap().frames), [2]);
    assert!(server.poll_timeout().unwrap() > now);
}

/// The room an acknowledgement announces counts only the messages up to
/// it: the client counts the later ones as in flight. (The window itself
/// still holds all of them: the next one beyond it is refused.)
#[test]
fn the_room_announced_counts_the_confirmed_messages_only() {
    let mut config = SessionConfig::default();
    config.set_max_message(LEN);
    config.max_inbound_bytes = 4 * CHARGE;
    let t0 = Instant::now();
    let (mut server, ws) = gated(t0, config, TransportKind::WebSocket);
    server
        .handle_frames(t0, Some(ws), [big_frame(1), big_frame(2), big_frame(3)])
        .unwrap();
    server.confirm_received(1);
    assert_eq!(
        server.request_reply()[0],
        Frame::Ack {
            seq: 1,
            room: Some(3 * CHARGE as u64)
        }
    );
    assert_eq!(server.room(), CHARGE, "what the queue leaves of the window");
    server.handle_frames(t0, Some(ws), [big_frame(4)]).unwrap();
    assert!(matches!(
        server.handle_frames(t0, Some(ws), [big_frame(5)]),
        Err(ProtocolError::WindowExceeded { seq: 5, .. })
    ));
}

// ---- restore -------------------------------------------------------------------

/// Moves frames between a server and a client attachment over WebSocket
/// until both are quiet; gated messages are confirmed as they come (the
/// store answers at once).
fn exchange(
    now: Instant,
    server: &mut ServerSession,
    sid: AttachmentId,
    client: &mut ClientSession,
    cid: AttachmentId,
) {
    for _ in 0..1_000 {
        server.confirm_sent(server.sent());
        server.confirm_received(server.received());
        server.handle_timeout(now);
        client.handle_timeout(now);
        let mut moved = false;
        while let Some(transmit) = server.poll_transmit(now, sid) {
            moved = true;
            client
                .handle_frames(now, Some(cid), transmit.frames)
                .unwrap();
        }
        while let Some(transmit) = client.poll_transmit(now) {
            moved = true;
            server
                .handle_frames(now, Some(sid), transmit.frames)
                .unwrap();
        }
        if !moved {
            return;
        }
    }
    panic!("the exchange never ends");
}

/// The state as the store would hold it, built by hand: the messages the
/// client did not acknowledge, and those the application did not take.
/// Restored into a new core, the client resumes with its `last` and gets
/// every message exactly once; the application gets every client message
/// exactly once.
#[test]
fn a_restored_session_continues_where_the_store_left_it() {
    let t0 = Instant::now();
    let mut server = ServerSession::new(t0, SessionConfig::default(), identity());
    server.hold_until_confirmed();
    let mut client = ClientSession::new(ClientConfig::default());
    let cid = client.attach(t0, TransportKind::WebSocket);
    let sid = server.attach(t0, TransportKind::WebSocket, 0).unwrap();
    let server_sent: Vec<_> = (1..=9).map(|n| text(&format!("s{n}"))).collect();
    let client_sent: Vec<_> = (1..=6).map(|n| text(&format!("c{n}"))).collect();
    for m in &server_sent[..4] {
        server.send(m.clone()).unwrap();
    }
    for m in &client_sent[..3] {
        client.send(m.clone()).unwrap();
    }
    exchange(t0, &mut server, sid, &mut client, cid);
    let mut client_got: Vec<_> = std::iter::from_fn(|| client.poll_message()).collect();
    let mut app_got = vec![server.poll_message().unwrap()]; // c1 taken, c2 and c3 wait
    // The client acknowledged s1..s4 (the exchange ran its ack timer).
    let t1 = t0 + Duration::from_secs(1);
    exchange(t1, &mut server, sid, &mut client, cid);
    assert_eq!(server.acked(), 4);

    // s5..s7 reach the client, its ack does not reach the server; s8, s9
    // are confirmed, s9 never sent (the window of one transmit).
    for m in &server_sent[4..9] {
        server.send(m.clone()).unwrap();
    }
    server.confirm_sent(9);
    let batch = server.poll_transmit(t1, sid).unwrap().frames;
    let first_three: Vec<_> = batch
        .into_iter()
        .filter(|f| matches!(f, Frame::Message { seq, .. } if *seq <= 7))
        .collect();
    client.handle_frames(t1, Some(cid), first_three).unwrap();
    client_got.extend(std::iter::from_fn(|| client.poll_message()));
    // c4, c5 arrive; c4 is confirmed, c5 is not (the node dies first).
    for m in &client_sent[3..5] {
        client.send(m.clone()).unwrap();
    }
    while let Some(transmit) = client.poll_transmit(t1) {
        let messages = transmit
            .frames
            .into_iter()
            .filter(|f| matches!(f, Frame::Message { .. }));
        server.handle_frames(t1, Some(sid), messages).unwrap();
    }
    server.confirm_received(4);

    // What the store holds: unacknowledged confirmed messages, and the
    // confirmed messages the application did not take.
    let restore = Restore {
        acked: server.acked(),
        outbound: server_sent[server.acked() as usize..server.confirmed_sent() as usize].to_vec(),
        received: server.confirmed_received(),
        inbound: client_sent[app_got.len()..server.confirmed_received() as usize].to_vec(),
        closed: None,
    };
    assert_eq!((restore.acked, restore.outbound.len()), (4, 5));
    assert_eq!((restore.received, restore.inbound.len()), (4, 3));
    drop(server);

    let t2 = t1 + Duration::from_secs(1);
    let mut server = ServerSession::restore(t2, SessionConfig::default(), identity(), restore)
        .expect("a valid state");
    assert!(server.holds_until_confirmed());
    assert_eq!(server.poll_event(), None, "a continuation is not news");
    client.detach(t2, cid);
    let target = client.connect_target().unwrap();
    assert_eq!(target.last, 7, "the client is ahead of the store's acked");
    let cid = client.attach(t2, TransportKind::WebSocket);
    let sid = server
        .attach(t2, TransportKind::WebSocket, target.last)
        .unwrap();
    let greeting = server.poll_transmit(t2, sid).unwrap().frames;
    assert!(
        matches!(greeting[0], Frame::Resumed { ack: 4, .. }),
        "resumed, never open: {greeting:?}"
    );
    assert_eq!(seqs(&greeting), [8, 9], "replayed from last + 1");
    client.handle_frames(t2, Some(cid), greeting).unwrap();
    client.send(client_sent[5].clone()).unwrap();
    exchange(t2, &mut server, sid, &mut client, cid);
    exchange(
        t2 + Duration::from_secs(1),
        &mut server,
        sid,
        &mut client,
        cid,
    );
    client_got.extend(std::iter::from_fn(|| client.poll_message()));
    app_got.extend(std::iter::from_fn(|| server.poll_message()));
    assert_eq!(client_got, server_sent, "every message exactly once");
    assert_eq!(app_got, client_sent, "every client message exactly once");
    assert_eq!(client.acked(), 6, "and acknowledged");
    assert_eq!(server.acked(), 9);
}

/// Round trips through the simulator's store on every transport: the
/// server crashes with the client's `last` equal to the store's `acked`,
/// or ahead of it, and a restored core carries on.
#[test]
fn a_crash_and_restore_loses_and_doubles_nothing_on_every_transport() {
    for kind in TransportKind::ALL {
        for ahead in [false, true] {
            let mut pair = Pair::new(SessionConfig::default(), ClientConfig::default())
                .with_store(Duration::ZERO, 7);
            pair.connect(kind);
            pair.settle();
            for n in 0..5 {
                pair.server_send(text(&format!("s{n}"))).unwrap();
                pair.client_send(text(&format!("c{n}"))).unwrap();
            }
            pair.run_until(10 * MS, Duration::from_secs(5), Pair::all_delivered);
            for n in 5..9 {
                pair.server_send(text(&format!("s{n}"))).unwrap();
            }
            if ahead {
                // The client gets them (on long-polling, what one poll
                // answer carries); its ack (its next poll) never reaches
                // the server.
                pair.settle_dir(Dir::Down);
            }
            let acked = pair.store.as_ref().unwrap().acked;
            assert_eq!(acked, 5, "{kind}");
            assert_eq!(pair.client.received() > acked, ahead, "{kind}");
            pair.crash(0, false);
            pair.client_send(text("c5")).unwrap();
            pair.reconnect_and_quiesce(kind);
            assert_eq!(pair.log.server_got.len(), 6, "{kind}: no app duplicate");
            assert_eq!(pair.log.client_got.len(), 9, "{kind}");
        }
    }
}

/// A restored closed session is a tombstone: it replays what the client
/// did not acknowledge, then repeats the close, for the resume window; one
/// that expired is lost at once.
#[test]
fn a_restored_closed_session_repeats_its_close() {
    let t0 = Instant::now();
    let bye = Close::new(CloseCode::NORMAL, "bye");
    let restore = Restore {
        acked: 3,
        outbound: vec![text("s4")],
        received: 0,
        inbound: Vec::new(),
        closed: Some((bye.clone(), Initiator::Local)),
    };
    let mut server =
        ServerSession::restore(t0, SessionConfig::default(), identity(), restore).unwrap();
    assert!(server.is_closed());
    let poll = server.attach(t0, TransportKind::LongPoll, 3).unwrap();
    let transmit = server.poll_transmit(t0, poll).unwrap();
    assert!(matches!(transmit.frames[0], Frame::Resumed { .. }));
    assert_eq!(seqs(&transmit.frames), [4]);
    assert_eq!(transmit.end, Some(bye.clone()));
    let window = server.config().resume_window;
    assert!(!server.is_finished(t0 + window - MS));
    assert!(server.is_finished(t0 + window));
    assert_eq!(
        server.attach(t0 + window, TransportKind::WebSocket, 4),
        Err(AttachError::SessionLost)
    );

    let lost = Restore {
        closed: Some((
            Close::new(CloseCode::SESSION_LOST, "resume window expired"),
            Initiator::Expired,
        )),
        ..Restore::default()
    };
    let mut server =
        ServerSession::restore(t0, SessionConfig::default(), identity(), lost).unwrap();
    assert_eq!(
        server.attach(t0, TransportKind::WebSocket, 0),
        Err(AttachError::SessionLost)
    );
}

/// The restored inbound queue fills the upstream window exactly as if its
/// messages had just arrived: the greeting announces the room left, and
/// the application taking them announces the room that came back.
#[test]
fn the_restored_inbound_queue_counts_in_the_window() {
    let mut config = SessionConfig::default();
    config.set_max_message(LEN);
    config.max_inbound_bytes = 4 * CHARGE;
    let t0 = Instant::now();
    let restore = Restore {
        acked: 0,
        outbound: Vec::new(),
        received: 5,
        inbound: vec![big(), big(), big()],
        closed: None,
    };
    let mut server = ServerSession::restore(t0, config, identity(), restore).unwrap();
    assert_eq!(server.inbound_bytes(), 3 * CHARGE);
    assert_eq!(server.room(), CHARGE);
    let ws = server.attach(t0, TransportKind::WebSocket, 0).unwrap();
    let greeting = server.poll_transmit(t0, ws).unwrap().frames;
    assert_eq!(
        greeting,
        [Frame::Resumed {
            ack: 5,
            room: Some(CHARGE as u64),
            native_text: false,
        }]
    );
    assert_eq!(server.poll_transmit(t0, ws), None);
    for _ in 0..3 {
        assert_eq!(server.poll_message(), Some(big()));
    }
    let frames = server.poll_transmit(t0, ws).unwrap().frames;
    assert_eq!(
        frames,
        [Frame::Ack {
            seq: 5,
            room: Some(4 * CHARGE as u64)
        }],
        "the room that came back"
    );
}

/// The stored inbound queue starts after the last message the previous
/// node's application finished: it may hold messages that application had
/// taken, whose room that node gave the client — at most the whole
/// restored queue. The client keeps the greatest room it was given for an
/// ack, so it may have that much in flight beyond what the greeting
/// announces: the restored core admits it, and no more; once the
/// application took as much, the window is the window again.
#[test]
fn a_restored_core_admits_what_the_previous_node_gave_room_for() {
    let mut config = SessionConfig::default();
    config.set_max_message(LEN);
    config.max_inbound_bytes = 4 * CHARGE;
    let t0 = Instant::now();
    let restore = Restore {
        received: 4,
        inbound: vec![big(), big(), big(), big()],
        ..Restore::default()
    };
    let mut server = ServerSession::restore(t0, config, identity(), restore).unwrap();
    let ws = server.attach(t0, TransportKind::WebSocket, 0).unwrap();
    let greeting = server.poll_transmit(t0, ws).unwrap().frames;
    assert_eq!(
        greeting,
        [Frame::Resumed {
            ack: 4,
            room: Some(0),
            native_text: false,
        }],
        "the room announced counts the restored queue"
    );
    server
        .handle_frames(t0, Some(ws), (5..=8).map(big_frame))
        .unwrap();
    assert!(matches!(
        server.handle_frames(t0, Some(ws), [big_frame(9)]),
        Err(ProtocolError::WindowExceeded { seq: 9, .. })
    ));
    assert_eq!(
        server.inbound_bytes(),
        8 * CHARGE,
        "bounded: the window and the restored queue"
    );
    server.confirm_received(8);
    for _ in 0..8 {
        assert_eq!(server.poll_message(), Some(big()));
    }
    let ws = server.attach(t0, TransportKind::WebSocket, 0).unwrap();
    let _greeting = server.poll_transmit(t0, ws);
    server
        .handle_frames(t0, Some(ws), (9..=12).map(big_frame))
        .unwrap();
    assert!(
        matches!(
            server.handle_frames(t0, Some(ws), [big_frame(13)]),
            Err(ProtocolError::WindowExceeded { seq: 13, .. })
        ),
        "the allowance is spent"
    );
}

/// An attachment's `last` must lie within what the store holds: past it,
/// it acknowledges messages that were never sent.
#[test]
fn a_restored_session_refuses_a_last_beyond_what_it_holds() {
    let t0 = Instant::now();
    let restore = Restore {
        acked: 10,
        outbound: vec![text("s11"), text("s12")],
        ..Restore::default()
    };
    let mut server =
        ServerSession::restore(t0, SessionConfig::default(), identity(), restore).unwrap();
    assert_eq!(
        server.attach(t0, TransportKind::Sse, 13),
        Err(AttachError::Protocol(ProtocolError::AckBeyondSent {
            ack: 13,
            sent: 12
        }))
    );
    let id = server.attach(t0, TransportKind::Sse, 12).unwrap();
    let frames = server.poll_transmit(t0, id).unwrap().frames;
    assert_eq!(seqs(&frames), Vec::<u64>::new(), "nothing left to replay");
    assert_eq!(server.acked(), 12);
    assert_eq!(server.send(text("s13")), Ok(13), "numbering carries on");
}

/// Stored state that cannot be a session is refused with a clear error,
/// never a panic.
#[test]
fn an_impossible_stored_state_is_refused_with_a_clear_error() {
    let t0 = Instant::now();
    let restore = |r: Restore| {
        ServerSession::restore(t0, SessionConfig::default(), identity(), r).map(|_| ())
    };
    let error = restore(Restore {
        received: 1,
        inbound: vec![text("a"), text("b")],
        ..Restore::default()
    });
    assert_eq!(
        error,
        Err(RestoreError::InboundBeyondReceived {
            received: 1,
            queued: 2
        })
    );
    assert_eq!(
        error.unwrap_err().to_string(),
        "the stored inbound queue holds 2 messages, but only 1 were ever received"
    );
    for (acked, outbound, received, direction, seq) in [
        (u64::MAX, 1, 0, "downstream", u64::MAX),
        (MAX_RESTORED_SEQ, 1, 0, "downstream", MAX_RESTORED_SEQ + 1),
        (0, 0, MAX_RESTORED_SEQ + 1, "upstream", MAX_RESTORED_SEQ + 1),
        (0, 0, u64::MAX, "upstream", u64::MAX),
    ] {
        assert_eq!(
            restore(Restore {
                acked,
                outbound: vec![text("a"); outbound],
                received,
                ..Restore::default()
            }),
            Err(RestoreError::SeqOutOfRange { direction, seq })
        );
    }
    // At the edge: a session there counts on in both directions.
    let mut server = ServerSession::restore(
        t0,
        SessionConfig::default(),
        identity(),
        Restore {
            acked: MAX_RESTORED_SEQ - 1,
            outbound: vec![text("a")],
            received: MAX_RESTORED_SEQ,
            ..Restore::default()
        },
    )
    .unwrap();
    assert_eq!(server.send(text("b")), Ok(MAX_RESTORED_SEQ + 1));
    let ws = server
        .attach(t0, TransportKind::WebSocket, MAX_RESTORED_SEQ)
        .unwrap();
    let next = MAX_RESTORED_SEQ + 1;
    assert_eq!(server.handle_frames(t0, Some(ws), [msg(next, "c")]), Ok(()));
    assert_eq!(server.received(), next);
}

// ---- invariants under hostile input ----------------------------------------

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// One step against a gated server core.
    #[derive(Clone, Debug)]
    enum Step {
        /// Frames from the client (anything: wrong seqs, acks of anything).
        Frames(Vec<Frame>, bool),
        /// The application sends.
        Send(u8),
        /// The store confirms (up to a point near what was sent/received).
        ConfirmSent(u64),
        ConfirmReceived(u64),
        /// A transport attaches with any `last`.
        Attach(TransportKind, u64),
        /// The current attachment goes away.
        Detach,
        /// The application takes a message.
        Take,
        /// A send request's reply is written.
        Reply,
        /// The application closes.
        Close,
        /// Time passes.
        Advance(u64),
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            4 => (0u64..12, "[a-z]{0,8}").prop_map(|(seq, s)| msg(seq, &s)),
            2 => (0u64..12).prop_map(|seq| Frame::Ack { seq, room: None }),
            1 => Just(Frame::Ping),
            1 => Just(Frame::Pong),
            1 => Just(Frame::close(CloseCode::NORMAL, "bye")),
        ]
    }

    fn step() -> impl Strategy<Value = Step> {
        let kind = prop_oneof![
            Just(TransportKind::WebSocket),
            Just(TransportKind::Sse),
            Just(TransportKind::LongPoll),
        ];
        prop_oneof![
            6 => (prop::collection::vec(frame(), 1..5), any::<bool>())
                .prop_map(|(f, on)| Step::Frames(f, on)),
            4 => (1u8..4).prop_map(Step::Send),
            3 => (0u64..14).prop_map(Step::ConfirmSent),
            3 => (0u64..14).prop_map(Step::ConfirmReceived),
            2 => (kind, 0u64..12).prop_map(|(k, last)| Step::Attach(k, last)),
            1 => Just(Step::Detach),
            3 => Just(Step::Take),
            2 => Just(Step::Reply),
            1 => Just(Step::Close),
            3 => (0u64..300).prop_map(Step::Advance),
        ]
    }

    /// Checks what left the core against the gates.
    fn check(server: &ServerSession, frames: &[Frame]) -> Result<(), TestCaseError> {
        for frame in frames {
            match frame {
                Frame::Message { seq, .. } => {
                    prop_assert!(*seq <= server.confirmed_sent(), "{frame:?} went out")
                }
                Frame::Ack { seq, .. } | Frame::Resumed { ack: seq, .. } => prop_assert!(
                    *seq <= server.confirmed_received(),
                    "{frame:?} acknowledges past {}",
                    server.confirmed_received()
                ),
                _ => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512), failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever a client sends and whenever the store confirms, nothing
        /// past a gate goes out (messages, acks, greetings), the
        /// application gets only confirmed messages, the unconfirmed lists
        /// are exactly what lies past the gates, and no timer stays due.
        #[test]
        fn the_gates_hold_against_any_client(steps in prop::collection::vec(step(), 1..80)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut server = ServerSession::new(t0, SessionConfig::default(), identity());
            server.hold_until_confirmed();
            let mut current: Option<AttachmentId> = None;
            let mut taken = 0u64;
            for step in steps {
                match step {
                    Step::Frames(frames, on_attachment) => {
                        let via = if on_attachment { current } else { None };
                        let _ = server.handle_frames(now, via, frames);
                    }
                    Step::Send(n) => {
                        for i in 0..n {
                            let _ = server.send(text(&format!("s{i}")));
                        }
                    }
                    Step::ConfirmSent(upto) => server.confirm_sent(upto),
                    Step::ConfirmReceived(upto) => server.confirm_received(upto),
                    Step::Attach(kind, last) => {
                        if let Ok(id) = server.attach(now, kind, last) {
                            current = Some(id);
                        }
                    }
                    Step::Detach => {
                        if let Some(id) = current.take() {
                            server.detach(now, id);
                        }
                    }
                    Step::Take => {
                        if server.poll_message().is_some() {
                            taken += 1;
                        }
                    }
                    Step::Reply => {
                        let reply = server.request_reply();
                        check(&server, &reply)?;
                    }
                    Step::Close => server.close(now, Close::new(CloseCode::NORMAL, "end")),
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                }
                server.handle_timeout(now);
                if let Some(deadline) = server.poll_timeout() {
                    prop_assert!(deadline > now, "a timer stays due");
                }
                if let Some(id) = current {
                    while let Some(transmit) = server.poll_transmit(now, id) {
                        check(&server, &transmit.frames)?;
                        if transmit.end.is_some() {
                            current = None;
                            break;
                        }
                    }
                }
                prop_assert!(taken <= server.confirmed_received(), "took an unconfirmed message");
                prop_assert!(server.confirmed_sent() <= server.sent());
                prop_assert!(server.confirmed_received() <= server.received());
                prop_assert!(server.acked() <= server.confirmed_sent());
                let sent: Vec<u64> = server.unconfirmed_sent().map(|(s, _)| s).collect();
                prop_assert_eq!(sent, (server.confirmed_sent() + 1..=server.sent()).collect::<Vec<_>>());
                let received: Vec<u64> = server.unconfirmed_received().map(|(s, _)| s).collect();
                prop_assert_eq!(
                    received,
                    (server.confirmed_received() + 1..=server.received()).collect::<Vec<_>>()
                );
            }
        }

        /// Any stored state restores or is refused with an error, never a
        /// panic; a restored session serves an attachment with any `last`
        /// (or refuses it with an error).
        #[test]
        fn any_stored_state_restores_or_is_refused(
            acked in prop_oneof![0u64..10, Just(MAX_RESTORED_SEQ - 1), Just(u64::MAX - 1)],
            outbound in 0usize..4,
            received in prop_oneof![0u64..6, Just(MAX_RESTORED_SEQ), Just(u64::MAX)],
            inbound in 0usize..8,
            closed in any::<bool>(),
            last in 0u64..16,
        ) {
            let restore = Restore {
                acked,
                outbound: vec![text("o"); outbound],
                received,
                inbound: vec![text("i"); inbound],
                closed: closed.then(|| (Close::new(CloseCode::NORMAL, "end"), Initiator::Peer)),
            };
            let t0 = Instant::now();
            match ServerSession::restore(t0, SessionConfig::default(), identity(), restore) {
                Ok(mut server) => {
                    prop_assert!(inbound as u64 <= received);
                    if let Ok(id) = server.attach(t0, TransportKind::WebSocket, acked.saturating_add(last)) {
                        while let Some(transmit) = server.poll_transmit(t0, id) {
                            check(&server, &transmit.frames)?;
                            if transmit.end.is_some() {
                                break;
                            }
                        }
                    }
                    let next = received.saturating_add(1);
                    let _ = server.handle_frames(t0, None, [msg(next, "x")]);
                    let _ = server.send(text("s"));
                }
                Err(RestoreError::InboundBeyondReceived { .. }) => prop_assert!(inbound as u64 > received),
                Err(RestoreError::SeqOutOfRange { seq, .. }) => prop_assert!(seq > MAX_RESTORED_SEQ),
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
