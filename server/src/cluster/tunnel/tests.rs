use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::membus::MemBus;
use super::wire::{self, Envelope, Frame, Kind};
use super::*;

/// Every wait in these tests has this deadline: a hang fails the test.
const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn config(window: usize) -> TunnelConfig {
    TunnelConfig {
        window,
        accept_timeout: Duration::from_millis(500),
        ..TunnelConfig::default()
    }
}

/// A tunnel from A to B, both ends, with A's tunnels kept alive.
struct Pair {
    bus: Arc<MemBus>,
    a: Arc<Tunnels>,
    b: Arc<Tunnels>,
    b_incoming: IncomingTunnels,
}

impl Pair {
    fn new(window: usize) -> Self {
        Self::with_windows(window, window)
    }

    /// A and B with windows of their own.
    fn with_windows(a_window: usize, b_window: usize) -> Self {
        let bus = MemBus::new();
        let (a, _a_incoming) = bus.node("A", config(a_window));
        let (b, b_incoming) = bus.node("B", config(b_window));
        Self {
            bus,
            a,
            b,
            b_incoming,
        }
    }

    async fn open(&mut self, addr: Option<SocketAddr>) -> (Tunnel, Tunnel) {
        let tunnel = self.a.connect("B", addr).expect("connect");
        let (accepted, client) = within("accept", self.b_incoming.recv())
            .await
            .expect("an incoming tunnel");
        assert_eq!(client, addr);
        assert_eq!(accepted.peer(), "A");
        within("accepted", tunnel.watch().accepted())
            .await
            .expect("accepted");
        (tunnel, accepted)
    }
}

fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn bytes_flow_both_ways_in_order() {
    let mut pair = Pair::new(256 * 1024);
    let addr: SocketAddr = "203.0.113.7:4242".parse().expect("addr");
    let (mut a, mut b) = pair.open(Some(addr)).await;
    for i in 0..100u32 {
        a.write_all(format!("ping {i};").as_bytes())
            .await
            .expect("write");
    }
    let expected: String = (0..100).map(|i| format!("ping {i};")).collect();
    let mut got = vec![0; expected.len()];
    within("read", b.read_exact(&mut got)).await.expect("read");
    assert_eq!(String::from_utf8_lossy(&got), expected);

    b.write_all(b"pong").await.expect("write");
    let mut got = [0; 4];
    within("read", a.read_exact(&mut got)).await.expect("read");
    assert_eq!(&got, b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_mebibytes_arrive_whole_both_ways_at_once() {
    let mut pair = Pair::new(256 * 1024);
    let (a, b) = pair.open(None).await;
    const SIZE: usize = 6 * 1024 * 1024;
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let send = |mut w: tokio::io::WriteHalf<Tunnel>| async move {
        // Odd-sized writes, to cross frame and window boundaries.
        let mut sent = 0;
        while sent < SIZE {
            let len = 50_000.min(SIZE - sent);
            w.write_all(&pattern(sent, len)).await.expect("write");
            sent += len;
        }
        w.shutdown().await.expect("shutdown");
        w
    };
    let receive = |mut r: tokio::io::ReadHalf<Tunnel>| async move {
        let mut got = Vec::with_capacity(SIZE);
        r.read_to_end(&mut got).await.expect("read to the end");
        assert_eq!(got.len(), SIZE);
        assert!(got == pattern(0, SIZE), "the bytes differ");
        r
    };
    let a_send = tokio::spawn(send(a_write));
    let b_send = tokio::spawn(send(b_write));
    let a_recv = tokio::spawn(receive(a_read));
    let b_recv = tokio::spawn(receive(b_read));
    a_write = within("a sends", a_send).await.expect("task");
    b_write = within("b sends", b_send).await.expect("task");
    a_read = within("a receives", a_recv).await.expect("task");
    b_read = within("b receives", b_recv).await.expect("task");
    // Closed both ways: dropping resets nothing.
    drop((a_read.unsplit(a_write), b_read.unsplit(b_write)));
    assert_eq!(pair.a.open_count(), 0);
    assert_eq!(pair.b.open_count(), 0);
}

#[tokio::test]
async fn a_reader_that_stops_makes_the_writer_wait_within_the_window() {
    // Different windows (as during a rolling upgrade): each writer keeps
    // to the window its reader announced.
    let mut pair = Pair::with_windows(64 * 1024, 160 * 1024);
    let (mut a, mut b) = pair.open(None).await;
    fill_and_drain(&mut a, &mut b, 160 * 1024).await;
    fill_and_drain(&mut b, &mut a, 64 * 1024).await;
}

/// Writes to `writer` until it waits: exactly the reader's `window` gets
/// in and is buffered there; reading a quarter lets a quarter more in.
async fn fill_and_drain(writer: &mut Tunnel, reader: &mut Tunnel, window: usize) {
    let chunk = pattern(0, 10_000);
    let mut written = 0;
    while let Some(result) = writer.write(&chunk).now_or_never() {
        written += result.expect("write");
    }
    assert_eq!(written, window);
    within("the window to arrive", async {
        while reader.buffered() < window {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(reader.buffered(), window);
    assert!(
        writer.write(&chunk).now_or_never().is_none(),
        "the writer must wait"
    );
    let mut quarter = vec![0; window / 4];
    reader.read_exact(&mut quarter).await.expect("read");
    let more = within("credit", writer.write(&chunk)).await.expect("write");
    assert!(more > 0 && more <= window / 4, "{more}");
    within("the rest to arrive", async {
        while reader.buffered() < window - window / 4 + more {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // Whatever happens, the reader holds at most its window.
    assert!(reader.buffered() <= window);
    let mut rest = vec![0; reader.buffered()];
    reader.read_exact(&mut rest).await.expect("read");
}

#[tokio::test]
async fn shutdown_gives_end_of_file_after_the_data_and_the_other_way_stays_open() {
    let mut pair = Pair::new(256 * 1024);
    let (mut a, mut b) = pair.open(None).await;
    a.write_all(b"last words").await.expect("write");
    a.shutdown().await.expect("shutdown");
    assert!(a.write_all(b"more").await.is_err(), "write after shutdown");
    let mut got = Vec::new();
    within("eof", b.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"last words");
    // Half closed: B still answers.
    b.write_all(b"reply").await.expect("write");
    b.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    within("eof", a.read_to_end(&mut got)).await.expect("read");
    assert_eq!(got, b"reply");
}

async fn both_ends_fail(a: &mut Tunnel, b: &mut Tunnel) {
    let mut byte = [0; 1];
    let a_read = within("a's read", a.read(&mut byte)).await;
    assert!(a_read.is_err(), "{a_read:?}");
    assert!(a.write_all(b"x").await.is_err());
    let b_read = within("b's read", b.read(&mut byte)).await;
    assert!(b_read.is_err(), "{b_read:?}");
    assert!(b.write_all(b"x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_node_breaks_both_ends() {
    let mut pair = Pair::new(256 * 1024);
    let (mut a, mut b) = pair.open(None).await;
    let (mut a2, mut b2) = pair.open(None).await;
    pair.a.reset_node("B");
    both_ends_fail(&mut a, &mut b).await;
    both_ends_fail(&mut a2, &mut b2).await;
    assert_eq!(a.watch().broken(), Some(TunnelError::NodeGone));
    assert_eq!(
        b.watch().broken(),
        Some(TunnelError::PeerReset("it took this node for gone".into()))
    );
    assert_eq!(pair.a.open_count(), 0);
    within("b forgets", async {
        while pair.b.open_count() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // New tunnels work.
    let (mut a, mut b) = pair.open(None).await;
    a.write_all(b"again").await.expect("write");
    let mut got = [0; 5];
    within("read", b.read_exact(&mut got)).await.expect("read");
}

#[tokio::test]
async fn a_bus_reset_breaks_both_ends() {
    let mut pair = Pair::new(256 * 1024);
    let (mut a, mut b) = pair.open(None).await;
    // B hears that its bus lost frames; A's end breaks through B's reset.
    pair.bus.inject("B", BusEvent::Reset).await;
    let mut byte = [0; 1];
    assert!(within("b's read", b.read(&mut byte)).await.is_err());
    assert_eq!(b.watch().broken(), Some(TunnelError::BusReset));
    both_ends_fail(&mut a, &mut b).await;
}

#[tokio::test]
async fn dropping_an_unfinished_tunnel_resets_the_other_end() {
    let mut pair = Pair::new(256 * 1024);
    let (a, mut b) = pair.open(None).await;
    drop(a);
    let mut byte = [0; 1];
    let error = within("b's read", b.read(&mut byte))
        .await
        .expect_err("reset");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    assert!(error.to_string().contains("closed the tunnel"), "{error}");
}

#[tokio::test]
async fn a_node_that_never_answers_fails_the_accept_in_time() {
    let bus = MemBus::new();
    let (a, _incoming) = bus.node("A", config(1024));
    let tunnel = a.connect("nobody", None).expect("connect");
    let started = tokio::time::Instant::now();
    let result = within("accept", tunnel.watch().accepted()).await;
    assert_eq!(
        result,
        Err(TunnelError::NotAccepted(Duration::from_millis(500)))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn tunnels_beyond_the_limit_are_refused_with_a_clear_error() {
    let bus = MemBus::new();
    let (a, _a_incoming) = bus.node(
        "A",
        TunnelConfig {
            max_tunnels: 2,
            ..config(1024)
        },
    );
    let (b, mut b_incoming) = bus.node(
        "B",
        TunnelConfig {
            max_tunnels: 1,
            ..config(1024)
        },
    );
    // A's own limit.
    let first = a.connect("B", None).expect("connect");
    let second = a.connect("B", None).expect("connect");
    assert_eq!(
        a.connect("B", None).map(drop),
        Err(TunnelError::TooMany { limit: 2 })
    );
    // B's limit: the second is refused, and A hears why.
    let held = within("1st", b_incoming.recv()).await;
    within("1st", first.watch().accepted())
        .await
        .expect("accepted");
    match within("2nd", second.watch().accepted()).await {
        Err(TunnelError::PeerReset(reason)) => {
            assert!(
                reason.contains("too many tunnels open (limit 1)"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(b.open_count(), 1);
    // The refused one no longer counts on A.
    assert_eq!(a.open_count(), 1);
    let third = a.connect("B", None).expect("a slot is free again");
    drop(held);
    drop(third);
}

/// Node `X` on the bus without tunnels: it writes and reads raw frames.
struct Raw {
    bus: Arc<MemBus>,
    inbox: mpsc::Receiver<BusEvent>,
}

impl Raw {
    fn join(bus: &Arc<MemBus>) -> Self {
        let (_store, inbox) = bus.join("X");
        Self {
            bus: bus.clone(),
            inbox,
        }
    }

    async fn send(&self, to: &str, sender: &str, frames: &[Frame]) {
        self.bus
            .inject(to, BusEvent::Frame(Envelope::encode(sender, frames)))
            .await;
    }

    /// The next frame `X` receives.
    async fn next(&mut self) -> (String, Vec<Frame>) {
        let event = within("a frame for X", self.inbox.recv())
            .await
            .expect("the bus");
        let BusEvent::Frame(envelope) = event else {
            panic!("expected a frame");
        };
        let (sender, frames) = Envelope::parse(envelope).expect("an envelope");
        (sender, frames.collect::<Result<_, _>>().expect("frames"))
    }
}

fn raw(kind: Kind, from_acceptor: bool, id: u64, payload: &[u8]) -> Frame {
    Frame {
        kind,
        from_acceptor,
        id,
        payload: Bytes::copy_from_slice(payload),
    }
}

#[tokio::test]
async fn frames_for_unknown_tunnels_are_answered_with_a_reset_and_resets_are_not() {
    let bus = MemBus::new();
    let (_b, _incoming) = bus.node("B", config(1024));
    let mut x = Raw::join(&bus);
    // A reset for an unknown tunnel goes unanswered, then a data frame
    // for one is answered: the first answer X gets is for the data.
    x.send("B", "X", &[raw(Kind::Reset, false, 41, b"bye")])
        .await;
    x.send("B", "X", &[raw(Kind::Data, false, 42, b"hello")])
        .await;
    x.send("B", "X", &[raw(Kind::Credit, true, 43, &[0, 0, 1, 0])])
        .await;
    let (sender, frames) = x.next().await;
    assert_eq!(sender, "B");
    let first = &frames[0];
    assert_eq!(
        (first.kind, first.id, first.from_acceptor),
        (Kind::Reset, 42, true)
    );
    let mut all = frames;
    while all.len() < 2 {
        all.extend(x.next().await.1);
    }
    // The reply to a frame from the acceptor side goes as from the opener.
    assert_eq!(
        (all[1].kind, all[1].id, all[1].from_acceptor),
        (Kind::Reset, 43, false)
    );
    // Garbage is dropped without an answer or a panic.
    bus.inject("B", BusEvent::Frame(Bytes::from_static(b"PUBLISH junk")))
        .await;
    x.send("B", "X", &[raw(Kind::Credit, false, 44, b"bad")])
        .await;
    x.send("B", "X", &[raw(Kind::Data, false, 45, b"")]).await;
    let (_, frames) = x.next().await;
    assert_eq!((frames[0].kind, frames[0].id), (Kind::Reset, 44));
}

#[tokio::test]
async fn a_node_claiming_to_be_another_cannot_touch_a_tunnel() {
    let mut pair = Pair::new(256 * 1024);
    let (mut a, mut b) = pair.open(None).await;
    let id = a.end.key.id;
    let mut x = Raw::join(&pair.bus);
    // X, under its own name, with the right id: dropped, unanswered.
    x.send("B", "X", &[raw(Kind::Data, false, id, b"evil")])
        .await;
    x.send("B", "X", &[raw(Kind::Reset, false, id, b"evil")])
        .await;
    // X under A's name with a wrong id: B answers A, which ignores it.
    x.send("B", "A", &[raw(Kind::Data, false, id ^ 1, b"evil")])
        .await;
    // The tunnel is untouched.
    a.write_all(b"genuine").await.expect("write");
    let mut got = [0; 7];
    within("read", b.read_exact(&mut got)).await.expect("read");
    assert_eq!(&got, b"genuine");
    b.write_all(b"ok").await.expect("write");
    let mut got = [0; 2];
    within("read", a.read_exact(&mut got)).await.expect("read");
    assert_eq!(&got, b"ok");
    // X heard nothing for its first two frames: the first answer it gets
    // is for a frame sent after them.
    x.send("B", "X", &[raw(Kind::Data, false, 7, b"probe")])
        .await;
    let (_, frames) = x.next().await;
    assert_eq!((frames[0].kind, frames[0].id), (Kind::Reset, 7));
}

#[tokio::test]
async fn a_peer_that_sends_past_its_window_is_reset() {
    const WINDOW: usize = MIN_WINDOW;
    let bus = MemBus::new();
    let (_b, mut incoming) = bus.node("B", config(WINDOW));
    let mut x = Raw::join(&bus);
    x.send(
        "B",
        "X",
        &[
            raw(Kind::Open, false, 9, &wire::encode_open(WINDOW, None)),
            raw(Kind::Data, false, 9, &[1; WINDOW]),
            raw(Kind::Data, false, 9, &[2]),
        ],
    )
    .await;
    let (mut tunnel, _) = within("accept", incoming.recv()).await.expect("tunnel");
    let mut frames = Vec::new();
    while frames.len() < 2 {
        frames.extend(x.next().await.1);
    }
    assert_eq!(frames[0].kind, Kind::Accept);
    assert_eq!(frames[1].kind, Kind::Reset);
    assert!(String::from_utf8_lossy(&frames[1].payload).contains("beyond the window"));
    // What arrived within the window is still read, then the error.
    let mut got = Vec::new();
    let error = within("read", tunnel.read_to_end(&mut got))
        .await
        .expect_err("broken");
    assert_eq!(got, [1; WINDOW]);
    assert!(error.to_string().contains("beyond the window"), "{error}");
}

#[tokio::test]
async fn one_write_is_one_data_frame_up_to_the_frame_size() {
    let bus = MemBus::new();
    let (_b, mut incoming) = bus.node("B", TunnelConfig::default());
    let mut x = Raw::join(&bus);
    x.send(
        "B",
        "X",
        &[raw(
            Kind::Open,
            false,
            5,
            &wire::encode_open(256 * 1024, None),
        )],
    )
    .await;
    let (mut tunnel, _) = within("accept", incoming.recv()).await.expect("tunnel");
    tunnel
        .write_all(&pattern(0, 200 * 1024))
        .await
        .expect("write");
    tunnel.write_all(b"tail").await.expect("write");
    let mut data = Vec::new();
    while data.iter().map(|f: &Frame| f.payload.len()).sum::<usize>() < 200 * 1024 + 4 {
        data.extend(
            x.next()
                .await
                .1
                .into_iter()
                .filter(|f| f.kind == Kind::Data),
        );
    }
    let sizes: Vec<usize> = data.iter().map(|f| f.payload.len()).collect();
    assert_eq!(sizes, [65536, 65536, 65536, 8192, 4]);
    let bytes: Vec<u8> = data.iter().flat_map(|f| f.payload.to_vec()).collect();
    let mut expected = pattern(0, 200 * 1024);
    expected.extend_from_slice(b"tail");
    assert!(bytes == expected);
}

#[tokio::test]
async fn reset_all_breaks_every_tunnel_on_both_sides() {
    let bus = MemBus::new();
    // Default limits, as the server uses them.
    let (a_store, a_inbox) = bus.join("A");
    let (a, _a_incoming) = Tunnels::new(a_store);
    a.spawn_inbox(a_inbox);
    let (b, mut b_incoming) = bus.node("B", TunnelConfig::default());
    let (_c, mut c_incoming) = bus.node("C", TunnelConfig::default());
    let mut to_b = a.connect("B", None).expect("connect");
    let mut to_c = a.connect("C", None).expect("connect");
    let (mut at_b, _) = within("b accepts", b_incoming.recv())
        .await
        .expect("tunnel");
    let (mut at_c, _) = within("c accepts", c_incoming.recv())
        .await
        .expect("tunnel");
    a.reset_all();
    both_ends_fail(&mut to_b, &mut at_b).await;
    both_ends_fail(&mut to_c, &mut at_c).await;
    assert_eq!(a.open_count(), 0);
    assert_eq!(b.open_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_breaks_the_tunnels_to_that_node() {
    let mut pair = Pair::new(256 * 1024);
    let (mut a, _b) = pair.open(None).await;
    pair.bus.fail_publishes("A");
    // The write is queued; its publish fails; the tunnel breaks.
    a.write_all(b"lost").await.expect("queued");
    let mut byte = [0; 1];
    let error = within("a's read", a.read(&mut byte))
        .await
        .expect_err("broken");
    assert!(
        error.to_string().contains("the test bus is down"),
        "{error}"
    );
    assert!(a.write_all(b"x").await.is_err());
    assert_eq!(pair.a.open_count(), 0);
}

#[tokio::test]
async fn opens_beyond_the_accept_queue_are_refused() {
    let bus = MemBus::new();
    let (a, _a_incoming) = bus.node("A", config(1024));
    let (_b, _b_incoming) = bus.node(
        "B",
        TunnelConfig {
            accept_queue: 1,
            ..config(1024)
        },
    );
    // Nobody takes B's tunnels: the first waits in the queue.
    let first = a.connect("B", None).expect("connect");
    let second = a.connect("B", None).expect("connect");
    within("1st", first.watch().accepted())
        .await
        .expect("accepted");
    match within("2nd", second.watch().accepted()).await {
        Err(TunnelError::PeerReset(reason)) => {
            assert!(reason.contains("accept queue is full"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_that_stopped_serving_refuses_tunnels() {
    let bus = MemBus::new();
    let (a, _a_incoming) = bus.node("A", config(1024));
    let (_b, b_incoming) = bus.node("B", config(1024));
    drop(b_incoming);
    let tunnel = a.connect("B", None).expect("connect");
    match within("refusal", tunnel.watch().accepted()).await {
        Err(TunnelError::PeerReset(reason)) => {
            assert!(reason.contains("not serving tunnels"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
