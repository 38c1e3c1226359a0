//! The server-wide budget (`ServerConfig::max_buffered_bytes`) on
//! WebSocket input. Past it, a WebSocket is not read while its session's
//! application has received messages to take and does not wait for room
//! to send: the total stays within the budget plus one batch and one
//! outgoing message per session, whether or not the applications have
//! messages in flight. An application that waits for room (its acks travel
//! behind its client's data) still gets them: the reader reads on for it,
//! within the upstream window, which a client that overruns it still hears
//! about (1008). Holding back never loses, reorders or repeats anything,
//! and a client whose application works through its queue meanwhile is not
//! timed out for the silence the server imposed.
//!
//! Raw wire clients (`holdfast-conformance`), `127.0.0.1` only.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use holdfast::protocol::message_charge;
use holdfast::server::{ServerConfig, Session};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::*;

/// Payload bytes of every client message.
const PAYLOAD: usize = 100;
/// Messages per WebSocket message (one batch).
const PER_BATCH: usize = 10;
/// The server-wide budget.
const BUDGET: usize = 32 * 1024;
/// Each session's upstream window.
const WINDOW: usize = 64 * 1024;

/// Small limits: a budget of 32 KiB, windows of 64 KiB, replay buffers of
/// 16 KiB.
fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    config.session.max_unacked_bytes = 16 * 1024;
    config.session.max_inbound_bytes = WINDOW;
    config.max_buffered_bytes = BUDGET;
    config
}

/// The client messages that fit in one window: every one of them may be
/// in flight at once.
fn window_full() -> u64 {
    (WINDOW / message_charge(PAYLOAD)) as u64
}

/// What one batch is charged.
fn batch_charge() -> usize {
    PER_BATCH * message_charge(PAYLOAD)
}

/// The payload of message `seq`: its number first.
fn text(seq: u64) -> String {
    let mut text = format!("{seq:08}-");
    text.push_str(&"u".repeat(PAYLOAD - text.len()));
    text
}

/// Messages `from..=to` as batches of [`PER_BATCH`].
fn batches(from: u64, to: u64) -> Vec<Vec<Frame>> {
    let frames: Vec<Frame> = (from..=to)
        .map(|seq| Frame::Msg {
            seq,
            data: text(seq),
        })
        .collect();
    frames.chunks(PER_BATCH).map(<[Frame]>::to_vec).collect()
}

/// What a [`Client`] read.
#[derive(Debug)]
enum Seen {
    Frame(Frame),
    /// The socket closed (the WebSocket close code, if any).
    Closed(Option<u16>),
}

/// A raw wire client on tasks of its own: it sends the batches it is
/// given, in order, answers pings if asked to, and passes on everything
/// it reads. It never acknowledges on its own.
struct Client {
    out: mpsc::UnboundedSender<Vec<Frame>>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Client {
    /// Opens a session; the client and the application's end of it.
    async fn open(
        server: &TestServer,
        incoming: &mut holdfast::server::Incoming,
        answer_pings: bool,
    ) -> (Self, Session) {
        let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
        match ws.recv_frames().await.as_slice() {
            [Frame::Open(open)] => assert_eq!(open.win, Some(WINDOW as u64)),
            other => panic!("expected [open], got {other:?}"),
        }
        let session = accept(incoming, DEADLINE).await;
        let (mut sink, mut stream) = ws.stream.split();
        let (out, mut to_send) = mpsc::unbounded_channel::<Vec<Frame>>();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(frames) = to_send.recv().await {
                let batch = WsMessage::text(wire::encode_batch(&frames));
                if sink.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let pongs = out.clone();
        tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let frames = match message {
                    Ok(WsMessage::Text(text)) => {
                        wire::parse_batch(text.as_bytes()).expect("a batch from the server")
                    }
                    Ok(WsMessage::Close(close)) => {
                        let _ = seen_tx.send(Seen::Closed(close.map(|c| c.code.into())));
                        return;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                for frame in frames {
                    if frame == Frame::Ping && answer_pings {
                        let _ = pongs.send(vec![Frame::Pong]);
                    }
                    let _ = seen_tx.send(Seen::Frame(frame));
                }
            }
            let _ = seen_tx.send(Seen::Closed(None));
        });
        (Self { out, seen }, session)
    }

    fn send(&self, frames: Vec<Frame>) {
        self.out.send(frames).expect("the client's sender runs");
    }

    /// The next thing read, within [`DEADLINE`].
    async fn next(&mut self) -> Seen {
        within(DEADLINE, "the client reading", self.seen.recv())
            .await
            .unwrap_or(Seen::Closed(None))
    }

    /// Reads until the socket closes: the frames, then the close code.
    async fn until_closed(&mut self) -> (Vec<Frame>, Option<u16>) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                Seen::Frame(frame) => frames.push(frame),
                Seen::Closed(code) => return (frames, code),
            }
        }
    }
}

/// The application's next message, which must be client message `seq`.
async fn expect_message(session: &Session, seq: u64) {
    let message = within(DEADLINE, "the application's next message", session.recv())
        .await
        .unwrap_or_else(|| panic!("the session ended before message {seq}"));
    assert_eq!(message.as_text(), Some(text(seq).as_str()), "message {seq}");
}

/// Waits until `done` holds, within [`DEADLINE`] (a state the test can
/// only read).
async fn until(what: &str, done: impl Fn() -> bool) {
    within(DEADLINE, what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// The bug this budget had: a WebSocket was read on whenever its
/// application had messages awaiting acks, so applications that had sent
/// something (and did not read) let every client fill its whole window,
/// whatever the budget. Now the total stays within the budget plus one
/// batch and one outgoing message per session. Each client then closes
/// behind its data: the application gets every message, in order, before
/// the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_input_stays_within_the_budget_while_applications_have_messages_in_flight() {
    const SESSIONS: usize = 4;
    let (server, mut incoming) = TestServer::start(config()).await;
    let count = window_full();
    let mut sessions = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..SESSIONS {
        let (client, session) = Client::open(&server, &mut incoming, false).await;
        // A message in flight for good: the client never acknowledges.
        session.send("down").await.expect("send");
        for batch in batches(1, count) {
            client.send(batch);
        }
        client.send(vec![Frame::close(1000, "done")]);
        sessions.push(session);
        clients.push(client);
    }
    let bound = BUDGET + SESSIONS * (batch_charge() + message_charge("down".len()));
    let unbounded = SESSIONS * (count as usize * message_charge(PAYLOAD));
    assert!(unbounded > 4 * bound, "the test can tell them apart");

    // The budget fills; then the applications read, a message at a time
    // from each in turn, while the peak is watched.
    until("the budget filling", || {
        server.holdfast.buffered_bytes() >= BUDGET
    })
    .await;
    let mut peak = server.holdfast.buffered_bytes();
    for seq in 1..=count {
        for session in &sessions {
            peak = peak.max(server.holdfast.buffered_bytes());
            expect_message(session, seq).await;
        }
    }
    eprintln!("buffered peak {peak} B: budget {BUDGET}, bound {bound}, unbounded {unbounded}");
    assert!(
        peak <= bound,
        "the server buffered {peak} bytes: budget {BUDGET}, bound {bound}"
    );

    // The close came behind the data: it ends the session only now.
    for session in &sessions {
        assert!(
            within(DEADLINE, "the session's end", session.recv())
                .await
                .is_none(),
            "nothing after the last message"
        );
        let end = within(DEADLINE, "the session's end", session.closed()).await;
        assert_eq!(end.close.code.0, 1000, "{end:?}");
    }
    for client in &mut clients {
        let (frames, code) = client.until_closed().await;
        assert_eq!(code, Some(1000), "{frames:?}");
    }
}

/// The deadlock the budget must never cause: an application waiting in
/// `send` for acks past the budget (its session's queue full of unread
/// input, the reader held back) gets them — they come behind the client's
/// data — and goes on; then everything arrives, once and in order, both
/// ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_waiting_for_acks_past_the_budget_gets_them() {
    const DOWN: u64 = 150;
    let (server, mut incoming) = TestServer::start(config()).await;
    let (mut client, session) = Client::open(&server, &mut incoming, true).await;
    // More than the budget: the reader stops part of the way in.
    let first = 200;
    let last = window_full();
    for batch in batches(1, first) {
        client.send(batch);
    }
    until("the budget filling", || {
        server.holdfast.buffered_bytes() >= BUDGET
    })
    .await;

    // The application sends more than its replay buffer holds, past the
    // budget: only acks let it on.
    let app = tokio::spawn({
        let session = session.clone();
        async move {
            for n in 1..=DOWN {
                session.send(format!("down {n}")).await.expect("send");
            }
        }
    });
    // The client acknowledges every message it gets, each ack with one
    // more message of its own (still within its window): the acks travel
    // behind data.
    let mut next_up = first + 1;
    let mut down = 0;
    while down < DOWN {
        match client.next().await {
            Seen::Frame(Frame::Msg { seq, data }) => {
                assert_eq!(seq, down + 1, "downstream in order, once");
                assert_eq!(data, format!("down {seq}"));
                down = seq;
                let mut frames = vec![Frame::Ack { seq }];
                if next_up <= last {
                    frames.insert(
                        0,
                        Frame::Msg {
                            seq: next_up,
                            data: text(next_up),
                        },
                    );
                    next_up += 1;
                }
                client.send(frames);
            }
            Seen::Frame(_) => {}
            Seen::Closed(code) => panic!("the socket closed ({code:?}) after {down} messages"),
        }
    }
    within(DEADLINE, "the application's sends", app)
        .await
        .expect("the application ran");
    for seq in next_up..=last {
        client.send(vec![Frame::Msg {
            seq,
            data: text(seq),
        }]);
    }
    for seq in 1..=last {
        expect_message(&session, seq).await;
    }
    client.send(vec![Frame::close(1000, "done")]);
    assert!(
        within(DEADLINE, "the session's end", session.recv())
            .await
            .is_none()
    );
    assert!(session.is_closed());
}

/// Reading on for an application that waits for room still holds the
/// client to its window: past it, `detach` 1008 and close 1008, as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_overrun_behind_the_budget_still_gets_1008() {
    let (server, mut incoming) = TestServer::start(config()).await;
    let (mut client, session) = Client::open(&server, &mut incoming, false).await;
    // Ten messages more than the window, never acknowledging anything.
    for batch in batches(1, window_full() + 10) {
        client.send(batch);
    }
    until("the budget filling", || {
        server.holdfast.buffered_bytes() >= BUDGET
    })
    .await;
    // The application's second message waits for an ack that never comes:
    // the reader reads on, and meets the overrun.
    let app = tokio::spawn({
        let session = session.clone();
        async move {
            session.send("first").await.expect("send");
            let _ = session.send("second").await;
        }
    });
    let (frames, code) = client.until_closed().await;
    assert!(
        frames.iter().any(
            |f| matches!(f, Frame::Detach { code: 1008, reason } if reason.contains("window"))
        ),
        "{frames:?}"
    );
    assert_eq!(code, Some(1008));
    assert!(!session.is_closed(), "the session lives");
    for seq in 1..=window_full() {
        expect_message(&session, seq).await;
    }
    app.abort();
}

/// While the budget holds the reader back and the application works
/// through its queue, the client's pongs wait behind its data: that
/// silence is the server's doing and does not time the client out. A
/// session whose application takes nothing is timed out as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_held_back_while_its_application_reads_is_not_timed_out() {
    const TAKEN: u64 = 2 * PER_BATCH as u64;
    let mut config = config();
    config.session.ping_interval = Duration::from_millis(250);
    config.session.timeout = Duration::from_secs(1);
    config.session.poll_hold = Duration::from_millis(500);
    let (server, mut incoming) = TestServer::start(config).await;
    // A session whose application never reads holds the whole budget.
    let (mut hoarder, _hoarding) = Client::open(&server, &mut incoming, true).await;
    for batch in batches(1, window_full()) {
        hoarder.send(batch);
    }
    until("the budget filling", || {
        server.holdfast.buffered_bytes() >= BUDGET
    })
    .await;
    // The other's reader takes one batch into its empty queue, then waits
    // for the application to take all of it, one message per 150 ms: each
    // batch holds it back for 1.5 s, longer than the timeout.
    let (mut client, session) = Client::open(&server, &mut incoming, true).await;
    for batch in batches(1, window_full()) {
        client.send(batch);
    }
    for seq in 1..=TAKEN {
        expect_message(&session, seq).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Not detached meanwhile.
    while let Ok(seen) = client.seen.try_recv() {
        assert!(
            !matches!(seen, Seen::Frame(Frame::Detach { .. }) | Seen::Closed(_)),
            "while the application worked through its queue: {seen:?}"
        );
    }
    // The application takes the rest; the client's close behind it ends
    // the session.
    let rest = tokio::spawn({
        let session = session.clone();
        async move {
            let mut taken = 0;
            while session.recv().await.is_some() {
                taken += 1;
            }
            taken
        }
    });
    client.send(vec![Frame::close(1000, "done")]);
    let (frames, code) = client.until_closed().await;
    assert!(
        !frames.iter().any(|f| matches!(f, Frame::Detach { .. })),
        "{frames:?}"
    );
    assert_eq!(code, Some(1000), "{frames:?}");
    let taken = within(DEADLINE, "the application's end", rest)
        .await
        .expect("the application ran");
    assert_eq!(taken, window_full() - TAKEN);
    // The hoarder's application took nothing: its client's silence counts.
    let (frames, code) = hoarder.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Detach { code: 4408, .. })),
        "{frames:?}"
    );
    assert_eq!(code, Some(4408));
}
