//! Upstream flow control (`PROTOCOL.md` §3.1), on the session cores: the
//! server announces its window in `open` and what is left of it with every
//! acknowledgement, refuses a client that overruns it, and announces room
//! that comes back on whatever downstream the session has; the client
//! keeps within the window and resumes as room comes back.

use std::time::{Duration, Instant};

use holdfast_protocol::{
    AttachmentId, ClientSession, CloseCode, Frame, MESSAGE_OVERHEAD, Message, OpenParams,
    ProtocolError, ServerSession, SessionConfig, SessionIdentity, TransportKind,
};

/// Payload of the test messages, and what each is charged.
const LEN: usize = 1000;
const CHARGE: usize = LEN + MESSAGE_OVERHEAD;

/// A server whose window holds exactly four test messages.
fn small_window() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.set_max_message(LEN);
    config.max_unacked_bytes = 4 * CHARGE;
    config.max_inbound_bytes = 4 * CHARGE;
    config
}

fn server(config: SessionConfig) -> ServerSession {
    let identity = SessionIdentity {
        key: "k".into(),
        session_id: "s".into(),
    };
    ServerSession::new(Instant::now(), config, identity)
}

fn msg(seq: u64) -> Frame {
    Frame::Message {
        seq,
        message: Message::text("x".repeat(LEN)),
    }
}

/// Attaches `kind` and takes the greeting. On long-polling, the poll the
/// greeting answered is followed by the next one, held.
fn attach(server: &mut ServerSession, now: Instant, kind: TransportKind) -> (AttachmentId, Frame) {
    let mut id = server.attach(now, kind, 0).expect("attach");
    let greeting = server
        .poll_transmit(now, id)
        .and_then(|t| t.frames.into_iter().next())
        .expect("a greeting");
    if kind == TransportKind::LongPoll {
        id = server.attach(now, kind, 0).expect("the next poll");
    }
    (id, greeting)
}

/// Feeds `frames` as the client would on `kind`: on the socket, or in a
/// send request whose reply is returned.
fn upstream(
    server: &mut ServerSession,
    now: Instant,
    kind: TransportKind,
    id: AttachmentId,
    frames: Vec<Frame>,
) -> Result<Vec<Frame>, ProtocolError> {
    if kind.is_duplex() {
        server.handle_frames(now, Some(id), frames)?;
        Ok(Vec::new())
    } else {
        server.handle_frames(now, None, frames)?;
        Ok(server.request_reply())
    }
}

fn acks(frames: &[Frame]) -> Vec<(u64, Option<u64>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Ack { seq, room } => Some((*seq, *room)),
            _ => None,
        })
        .collect()
}

// ---- the server ------------------------------------------------------------

#[test]
fn open_announces_the_window_and_every_ack_and_resumed_the_room_left() {
    let t0 = Instant::now();
    let window = 4 * CHARGE as u64;
    let mut server = server(small_window());
    let (ws, greeting) = attach(&mut server, t0, TransportKind::WebSocket);
    assert!(
        matches!(&greeting, Frame::Open(p) if p.window == Some(4 * CHARGE)),
        "{greeting:?}"
    );
    server
        .handle_frames(t0, Some(ws), vec![msg(1), msg(2)])
        .expect("within the window");
    // The ack delay passes: the socket carries the ack with its room.
    let t1 = t0 + Duration::from_millis(100);
    server.handle_timeout(t1);
    let frames = server.poll_transmit(t1, ws).map(|t| t.frames);
    assert_eq!(
        frames.as_deref().map(acks),
        Some(vec![(2, Some(window - 2 * CHARGE as u64))])
    );
    // A send reply says the same.
    assert_eq!(
        acks(&server.request_reply()),
        [(2, Some(window - 2 * CHARGE as u64))]
    );
    // The application takes one: a resume announces the room then.
    assert!(server.poll_message().is_some());
    let (_sse, greeting) = attach(&mut server, t1, TransportKind::Sse);
    assert_eq!(
        greeting,
        Frame::Resumed {
            ack: 2,
            room: Some(window - CHARGE as u64),
            native_text: false,
        }
    );
}

#[test]
fn a_message_beyond_the_window_is_refused_with_1008_and_nothing_after_it_is_applied() {
    for kind in TransportKind::ALL {
        let t0 = Instant::now();
        let mut server = server(small_window());
        let (id, _) = attach(&mut server, t0, kind);
        let error = upstream(&mut server, t0, kind, id, (1..=6).map(msg).collect());
        assert_eq!(
            error,
            Err(ProtocolError::WindowExceeded {
                seq: 5,
                charge: CHARGE,
                room: 0
            }),
            "{kind}"
        );
        let error = error.expect_err("an error");
        assert_eq!(error.close_code(), CloseCode::WINDOW_EXCEEDED);
        assert_eq!(error.close_code().http_status(), 400);
        assert!(!error.ends_session(), "the session lives");
        assert!(!server.is_closed());
        assert_eq!(server.received(), 4, "{kind}: up to the overrun, not after");
        assert_eq!(server.room(), 0);
        // A duplicate costs nothing: a retransmission never overruns.
        assert_eq!(
            upstream(&mut server, t0, kind, id, vec![msg(4)]).err(),
            None
        );
        // Once the application took some, the same message is accepted.
        assert!(server.poll_message().is_some());
        assert_eq!(
            upstream(&mut server, t0, kind, id, vec![msg(5)]).err(),
            None
        );
        assert_eq!(server.received(), 5);
    }
}

#[test]
fn room_coming_back_is_announced_on_every_transport() {
    let window = 4 * CHARGE as u64;
    for kind in TransportKind::ALL {
        let t0 = Instant::now();
        let mut server = server(small_window());
        let (id, _) = attach(&mut server, t0, kind);
        // The client fills the window; the server's acknowledgement says
        // there is no room left.
        let reply = upstream(&mut server, t0, kind, id, (1..=4).map(msg).collect());
        let t1 = t0 + Duration::from_millis(100);
        server.handle_timeout(t1);
        let announced = match reply {
            Ok(reply) if !kind.is_duplex() => acks(&reply),
            _ => server
                .poll_transmit(t1, id)
                .map_or(Vec::new(), |t| acks(&t.frames)),
        };
        assert_eq!(announced, [(4, Some(0))], "{kind}");
        assert_eq!(
            server.poll_transmit(t1, id),
            None,
            "{kind}: nothing more to say"
        );

        // One taken: room 1 message, under half the window: no update.
        let epoch = server.output_epoch();
        assert!(server.poll_message().is_some());
        assert_eq!(server.poll_transmit(t1, id), None, "{kind}");
        // Two taken: half the window is free again. The attachment — a
        // socket, an event stream, a held poll — carries an `ack` with the
        // room, and the driver is told to write.
        assert!(server.poll_message().is_some());
        assert_ne!(
            server.output_epoch(),
            epoch,
            "{kind}: the transport is woken"
        );
        let transmit = server.poll_transmit(t1, id).expect("an update");
        assert_eq!(
            transmit.frames,
            [Frame::Ack {
                seq: 4,
                room: Some(window / 2)
            }],
            "{kind}"
        );
        // Said once: more room (still above the threshold) is not news.
        assert!(server.poll_message().is_some());
        let next = if kind == TransportKind::LongPoll {
            server.attach(t1, kind, 0).expect("the next poll")
        } else {
            id
        };
        assert_eq!(server.poll_transmit(t1, next), None, "{kind}");
    }
}

#[test]
fn an_update_due_between_polls_answers_the_next_poll_at_once() {
    let t0 = Instant::now();
    let mut server = server(small_window());
    let (poll, _) = attach(&mut server, t0, TransportKind::LongPoll);
    // The poll is answered (empty, at its hold) and the client sends.
    let hold = t0 + SessionConfig::default().poll_hold;
    server.handle_timeout(hold);
    assert_eq!(
        server.poll_transmit(hold, poll).map(|t| t.frames),
        Some(Vec::new())
    );
    assert_eq!(
        acks(
            &upstream(
                &mut server,
                t0,
                TransportKind::LongPoll,
                poll,
                (1..=4).map(msg).collect()
            )
            .unwrap_or_default()
        ),
        [(4, Some(0))]
    );
    server.poll_message();
    server.poll_message();
    let next = server
        .attach(t0, TransportKind::LongPoll, 0)
        .expect("the next poll");
    let answer = server.poll_transmit(t0, next).map(|t| acks(&t.frames));
    assert_eq!(answer, Some(vec![(4, Some(2 * CHARGE as u64))]));
}

// ---- the client ------------------------------------------------------------

fn open_params(window: Option<usize>) -> OpenParams {
    OpenParams {
        version: 1,
        key: "k".into(),
        session_id: "s".into(),
        ping_interval: Duration::from_secs(20),
        timeout: Duration::from_secs(40),
        resume_window: Duration::from_secs(120),
        poll_hold: Duration::from_secs(25),
        max_message: LEN,
        max_batch: 6 * LEN + 4096,
        window,
        mux: None,
        native_text: false,
    }
}

/// A client opened on `kind` with a server window of `window`, holding
/// `queued` messages to send.
fn client(
    kind: TransportKind,
    window: Option<usize>,
    queued: usize,
) -> (ClientSession, AttachmentId) {
    let now = Instant::now();
    let mut client = ClientSession::default();
    let id = client.attach(now, kind);
    client
        .handle_frames(now, Some(id), vec![Frame::Open(open_params(window))])
        .expect("open");
    for _ in 0..queued {
        client
            .send(Message::text("x".repeat(LEN)))
            .expect("room in the replay buffer");
    }
    (client, id)
}

/// Sequence numbers of the messages the client transmits now.
fn transmitted(client: &mut ClientSession) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(transmit) = client.poll_transmit(Instant::now()) {
        seqs.extend(transmit.frames.iter().filter_map(|f| match f {
            Frame::Message { seq, .. } => Some(*seq),
            _ => None,
        }));
    }
    seqs
}

#[test]
fn the_client_stops_at_the_window_and_resumes_on_an_ack_with_more_room() {
    for kind in TransportKind::ALL {
        let now = Instant::now();
        let (mut client, id) = client(kind, Some(3 * CHARGE), 8);
        assert_eq!(transmitted(&mut client), [1, 2, 3], "{kind}");
        assert_eq!(client.window_left(), Some(0));
        // An ack of 1 with one message of room: 2 and 3 are still in flight
        // after it, so nothing more goes.
        let ack = |seq, room: usize| Frame::Ack {
            seq,
            room: Some(room as u64),
        };
        client
            .handle_frames(now, None, vec![ack(1, CHARGE)])
            .expect("ack");
        assert_eq!(transmitted(&mut client), Vec::<u64>::new(), "{kind}");
        // Room that came back, on the attachment (any transport carries it).
        client
            .handle_frames(now, Some(id), vec![ack(3, 2 * CHARGE)])
            .expect("ack");
        assert_eq!(transmitted(&mut client), [4, 5], "{kind}");
        // An older ack racing it changes nothing; the same ack with more
        // room does.
        client
            .handle_frames(now, None, vec![ack(2, 10 * CHARGE)])
            .expect("ack");
        assert_eq!(client.window(), Some((3, 2 * CHARGE)));
        assert_eq!(transmitted(&mut client), Vec::<u64>::new(), "{kind}");
        client
            .handle_frames(now, None, vec![ack(3, 3 * CHARGE)])
            .expect("ack");
        assert_eq!(transmitted(&mut client), [6], "{kind}");
    }
}

#[test]
fn a_resume_restarts_the_window_from_the_resumed_ack_and_room() {
    let now = Instant::now();
    let (mut client, _) = client(TransportKind::WebSocket, Some(2 * CHARGE), 6);
    assert_eq!(transmitted(&mut client), [1, 2]);
    let id = client.attach(now, TransportKind::WebSocket);
    client
        .handle_frames(
            now,
            Some(id),
            vec![Frame::Resumed {
                ack: 1,
                room: Some(3 * CHARGE as u64),
                native_text: false,
            }],
        )
        .expect("resumed");
    assert_eq!(
        transmitted(&mut client),
        [2, 3, 4],
        "retransmitted within the room"
    );
}

#[test]
fn without_a_window_from_the_server_the_client_is_not_limited() {
    let (mut client, _) = client(TransportKind::WebSocket, None, 8);
    assert_eq!(transmitted(&mut client), (1..=8).collect::<Vec<_>>());
    assert_eq!(client.window_left(), None);
}

#[test]
fn the_client_close_waits_behind_messages_the_window_holds_back() {
    let now = Instant::now();
    let (mut client, _) = client(TransportKind::WebSocket, Some(CHARGE), 2);
    client.close(now, holdfast_protocol::Close::new(CloseCode::NORMAL, "bye"));
    let frames: Vec<Frame> = std::iter::from_fn(|| client.poll_transmit(now))
        .flat_map(|t| t.frames)
        .collect();
    assert_eq!(frames.len(), 1, "message 1 only, no close yet: {frames:?}");
    client
        .handle_frames(
            now,
            None,
            vec![Frame::Ack {
                seq: 1,
                room: Some(CHARGE as u64),
            }],
        )
        .expect("ack");
    let frames: Vec<Frame> = std::iter::from_fn(|| client.poll_transmit(now))
        .flat_map(|t| t.frames)
        .collect();
    assert!(
        matches!(frames[..], [Frame::Message { seq: 2, .. }, Frame::Close(_)]),
        "{frames:?}"
    );
}
