//! A deterministic simulator for the session core: one [`ServerSession`] and
//! one [`ClientSession`] joined by a simulated network, with a virtual clock.
//!
//! The idea is quinn-proto's `Pair`: both state machines live in one struct,
//! every byte between them sits in an explicit queue, and the test decides
//! what arrives, in which order, and what is lost. Nothing sleeps: time is an
//! [`Instant`] that only [`Pair::advance`] moves, firing the timers each side
//! asks for through `poll_timeout` in order, as a real driver would.
//!
//! # The network model
//!
//! Every connection is a [`Link`] with a queue in each direction. Each queue
//! is FIFO (TCP); different links are independent, so their units can
//! arrive in any interleaving. Every unit is real wire bytes: frames go
//! through `wire::json` (and `wire::binary` for WebSocket binary messages,
//! `wire::sse` for event streams) and are decoded again on arrival.
//!
//! | link | carries | server side | client side |
//! |---|---|---|---|
//! | [`LinkKind::Socket`] | a WebSocket | `attach` on the upgrade, `handle_frames(Some(id))`, `poll_transmit(id)` | `attach`, frames via `Some(att)`, `poll_transmit` goes up the socket |
//! | [`LinkKind::Stream`] | an SSE stream | `attach` on the GET, `poll_transmit(id)` as events | frames via `Some(att)` |
//! | [`LinkKind::Poll`] | one long-poll GET | `attach(LongPoll, last)`; one `poll_transmit` answers and ends it | frames via `Some(att)`; the next poll follows |
//! | [`LinkKind::Send`] | one `POST …/send` | `handle_frames(None)`, then `request_reply()` | reply via `None`; failure → `request_failed` |
//!
//! The client's upstream follows its attachment: on WebSocket its
//! `poll_transmit` goes on the socket; on SSE and long-polling each
//! `poll_transmit` becomes a send request, at most one in flight. On
//! long-polling the client's attachment spans many polls: each poll carries
//! `last = client.received()` and the client calls `acked_by_request(last)`
//! when it issues it.
//!
//! Losses: [`Pair::cut`] drops everything in flight on a link and both ends
//! notice (detach, or `request_failed` for a send request);
//! [`Pair::abandon`] is a half-open connection: the client gives up on it,
//! the server does not know yet.
//!
//! The simulator checks on its own, at every step: every batch round-trips
//! through the codec; no timer stays due after `handle_timeout` (a driver
//! would spin); `ServerSession::output_epoch` moved whenever an attachment
//! has something new to write (the server driver wakes transports by it);
//! the network goes idle and the cores stop producing output (a livelock
//! fails fast instead of hanging).
//!
//! # The store
//!
//! [`Pair::with_store`] puts the server behind its durability gates
//! (`hold_until_confirmed`) and models the driver that writes to a store
//! ([`SimStore`]): after every step it writes what is not confirmed yet
//! (the core's `unconfirmed_sent` / `unconfirmed_received`, its `acked`,
//! and how far the server application got) as one write that completes
//! after a random delay, writes completing in order; on completion it
//! confirms them to the core. Send requests are answered once what they
//! carried is confirmed. [`Pair::crash`] kills the server: writes in flight
//! are lost (a random prefix of them reached the store first), every
//! connection the server held breaks, and a new core is
//! [restored](ServerSession::restore) from what the store holds.
//!
//! The server application's model: it takes every message as soon as the
//! core gives it (unless paused), and finishes it at once or (with
//! `app_finishes_at_once` unset) at [`Pair::app_finish`]; `done` (the last
//! message finished) reaches the store with the driver's next write, and
//! the store keeps the inbound messages from `done + 1` — the driver keeps
//! a message taken but not finished. So a crash delivers again, after a
//! restore, the messages the application took after the last `done` that
//! reached the store — and nothing else twice.
//!
//! Set `SIM_TRACE=1` to print every step.

#![allow(dead_code)] // each test binary uses a different part of the simulator

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast_protocol::wire::sse::{SseItem, SseParser};
use holdfast_protocol::wire::{binary, json, sse};
use holdfast_protocol::{
    AttachError, AttachmentId, ClientConfig, ClientEvent, ClientSession, Close, CloseCode, Frame,
    Initiator, Message, ProtocolError, Restore, SendError, ServerEvent, ServerSession,
    SessionConfig, SessionIdentity, TransportKind,
};

/// The session key the simulated server hands out.
pub const KEY: &str = "sim-session-key";

/// Index of a link in [`Pair::links`].
pub type LinkId = usize;

/// What a link is (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A WebSocket: the attachment, both directions.
    Socket,
    /// An SSE stream: the attachment, downstream only.
    Stream,
    /// One long-poll request and its response.
    Poll,
    /// One send request and its reply.
    Send,
}

/// A direction on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

/// The server's end of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEnd {
    /// The request has not reached the server yet.
    Pending,
    /// The server attached it as this attachment.
    Open(AttachmentId),
    /// A send request handled, its reply waiting for the store to confirm
    /// messages up to this upstream seq.
    Replying(u64),
    /// The server is done with it (answered, ended, detached).
    Closed,
}

/// One unit in flight.
#[derive(Clone, Debug)]
pub enum Unit {
    /// The request opening a link: WebSocket upgrade, SSE or poll GET, with
    /// its `last` parameter.
    Connect {
        /// Highest downstream seq the client delivered.
        last: u64,
    },
    /// A JSON batch: a WebSocket text message, or a whole HTTP body.
    Json(Vec<u8>),
    /// A native WebSocket binary message (`PROTOCOL.md` §2.2).
    Binary(Bytes),
    /// Bytes of an event stream.
    Sse(Vec<u8>),
    /// The sender ended the transport (socket closed, stream ended).
    End,
}

/// One simulated connection.
#[derive(Debug)]
pub struct Link {
    /// Its index.
    pub id: LinkId,
    /// What it is.
    pub kind: LinkKind,
    /// The transport it belongs to (for a send request: the attachment's).
    pub transport: TransportKind,
    /// The client attachment it serves (`None` for send requests).
    pub client_att: Option<AttachmentId>,
    /// Whether the client still reads it.
    pub client_open: bool,
    /// The server's end.
    pub server: ServerEnd,
    /// In flight to the server.
    pub up: VecDeque<Unit>,
    /// In flight to the client.
    pub down: VecDeque<Unit>,
    /// HTTP status of a send reply or refusal (200 unless refused).
    pub status: u16,
    parser: SseParser,
}

impl Link {
    /// Whether either end still uses the link.
    pub fn is_live(&self) -> bool {
        self.client_open || self.server != ServerEnd::Closed
    }
}

/// Everything that happened, for assertions.
#[derive(Debug, Default)]
pub struct Log {
    /// Messages the client application sent (accepted by `send`).
    pub client_sent: Vec<Message>,
    /// Messages the server application sent.
    pub server_sent: Vec<Message>,
    /// Messages the client delivered (`poll_message`).
    pub client_got: Vec<Message>,
    /// Messages the server delivered.
    pub server_got: Vec<Message>,
    /// Client events with the time they were polled.
    pub client_events: Vec<(Duration, ClientEvent)>,
    /// Server events with the time they were polled.
    pub server_events: Vec<(Duration, ServerEvent)>,
    /// Errors returned by the client core.
    pub client_errors: Vec<ProtocolError>,
    /// Errors returned by the server core.
    pub server_errors: Vec<ProtocolError>,
    /// Every frame the client transmitted (socket or send request).
    pub client_tx: Vec<(LinkKind, Frame)>,
    /// Every frame the server transmitted (attachments and send replies).
    pub server_tx: Vec<(LinkKind, Frame)>,
    /// Every frame handed to the client core, with the link it came on.
    pub client_rx: Vec<(LinkId, Frame)>,
    /// Every frame handed to the server core.
    pub server_rx: Vec<(LinkId, Frame)>,
    /// The upstream seq of each message in `server_got`.
    pub server_got_seqs: Vec<u64>,
    /// Server crashes: how many messages the server application had got
    /// by then, and the `done` the store held.
    pub crashes: Vec<(usize, u64)>,
}

impl Log {
    /// How many frames the client transmitted that match.
    pub fn client_tx_count(&self, f: impl Fn(&Frame) -> bool) -> usize {
        self.client_tx.iter().filter(|(_, fr)| f(fr)).count()
    }

    /// How many frames the server transmitted that match.
    pub fn server_tx_count(&self, f: impl Fn(&Frame) -> bool) -> usize {
        self.server_tx.iter().filter(|(_, fr)| f(fr)).count()
    }

    /// Client events, without their times.
    pub fn client_event_list(&self) -> Vec<ClientEvent> {
        self.client_events.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Server events, without their times.
    pub fn server_event_list(&self) -> Vec<ServerEvent> {
        self.server_events.iter().map(|(_, e)| e.clone()).collect()
    }
}

/// What the simulated store holds, and the writes in flight to it.
#[derive(Debug, Default)]
pub struct SimStore {
    /// The client acknowledged up to here (as written).
    pub acked: u64,
    /// Downstream messages `acked + 1 ..`.
    pub outbound: VecDeque<Message>,
    /// Highest upstream seq written.
    pub received: u64,
    /// Upstream messages `done + 1 ..= received`.
    pub inbound: VecDeque<Message>,
    /// The last upstream message the application finished.
    pub done: u64,
    /// How the session ended, if a write said so.
    pub closed: Option<(Close, Initiator)>,
    /// Writes issued and not completed, oldest first.
    pub writes: VecDeque<StoreWrite>,
    /// What the writes issued so far cover.
    issued: (u64, u64, u64, u64),
    /// Whether a write issued so far holds the close.
    issued_close: bool,
    /// The longest a write takes.
    max_delay: Duration,
    rng: u64,
}

/// One write to the simulated store.
#[derive(Debug)]
pub struct StoreWrite {
    /// When it completes.
    pub due: Instant,
    /// Downstream messages, consecutive.
    pub outbound: Vec<(u64, Message)>,
    /// Upstream messages, consecutive.
    pub inbound: Vec<(u64, Message)>,
    /// The client's acknowledgement.
    pub acked: u64,
    /// The application's progress.
    pub done: u64,
    /// The session ended.
    pub close: Option<(Close, Initiator)>,
}

impl SimStore {
    /// Highest downstream seq held.
    pub fn last_sent(&self) -> u64 {
        self.acked + self.outbound.len() as u64
    }

    /// A pseudo-random number below `n` (xorshift: deterministic per seed).
    fn below(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if n == 0 { 0 } else { self.rng % n }
    }

    /// Applies a write, as the store would.
    fn apply(&mut self, write: &StoreWrite) {
        for (seq, message) in &write.outbound {
            assert_eq!(
                *seq,
                self.last_sent() + 1,
                "outbound writes are consecutive"
            );
            self.outbound.push_back(message.clone());
        }
        for (seq, message) in &write.inbound {
            assert_eq!(*seq, self.received + 1, "inbound writes are consecutive");
            self.received = *seq;
            self.inbound.push_back(message.clone());
        }
        assert!(
            write.acked <= self.last_sent(),
            "an ack of messages not stored"
        );
        while self.acked < write.acked {
            self.outbound.pop_front();
            self.acked += 1;
        }
        assert!(write.done <= self.received, "progress past what was stored");
        while self.done < write.done {
            self.inbound.pop_front();
            self.done += 1;
        }
        if write.close.is_some() {
            self.closed.clone_from(&write.close);
        }
    }
}

/// A server and a client session joined by a simulated network.
pub struct Pair {
    /// The virtual clock's origin.
    pub start: Instant,
    /// The virtual clock.
    pub now: Instant,
    /// The server's end.
    pub server: ServerSession,
    /// The client's end.
    pub client: ClientSession,
    /// Every link ever made (finished ones stay, for inspection).
    pub links: Vec<Link>,
    /// What happened.
    pub log: Log,
    client_kinds: BTreeMap<AttachmentId, TransportKind>,
    /// The server's `output_epoch` when its transmits were last drained.
    drained_epoch: Option<u64>,
    /// The store, when the server writes to one (see the module docs).
    pub store: Option<SimStore>,
    /// The upstream seq of the last message the server application took.
    pub app_taken: u64,
    /// The upstream seq of the last message the server application
    /// finished: see [`Pair::app_finish`].
    pub app_done: u64,
    /// Whether the application finishes each message as it takes it
    /// (else only at [`Pair::app_finish`]).
    pub app_finishes_at_once: bool,
    /// How the server's session ended, as its events said.
    pub server_closed: Option<(Close, Initiator)>,
    /// The server application takes no message while set (its queue and
    /// the upstream window fill).
    pub app_paused: bool,
    trace: bool,
}

impl Pair {
    /// A new, unconnected pair.
    pub fn new(server_config: SessionConfig, client_config: ClientConfig) -> Self {
        server_config.validate().expect("valid server config");
        let start = Instant::now();
        let identity = SessionIdentity {
            key: KEY.into(),
            session_id: "sim".into(),
        };
        Self {
            start,
            now: start,
            server: ServerSession::new(start, server_config, identity),
            client: ClientSession::new(client_config),
            links: Vec::new(),
            log: Log::default(),
            client_kinds: BTreeMap::new(),
            drained_epoch: None,
            store: None,
            app_taken: 0,
            app_done: 0,
            app_finishes_at_once: true,
            server_closed: None,
            app_paused: false,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        }
    }

    /// Puts the server behind its durability gates, writing to a store
    /// whose writes take up to `max_delay` each (random, from `seed`). Call
    /// it on a new pair.
    pub fn with_store(mut self, max_delay: Duration, seed: u64) -> Self {
        self.server.hold_until_confirmed();
        self.store = Some(SimStore {
            max_delay,
            rng: seed | 1,
            ..SimStore::default()
        });
        self
    }

    /// The server dies and another takes the session over from the store.
    /// The first `applied` (modulo) writes in flight reached the store
    /// before the death, the others are lost. Every connection the server
    /// held breaks; requests not yet arrived reach the new server. A poll
    /// that breaks is followed by a new poll on the same attachment if
    /// `keep_polling`.
    pub fn crash(&mut self, applied: usize, keep_polling: bool) {
        let store = self.store.as_mut().expect("a crash needs a store");
        let applied = applied % (store.writes.len() + 1);
        for _ in 0..applied {
            let write = store.writes.pop_front().expect("counted");
            store.apply(&write);
        }
        store.writes.clear();
        // What the client was told is in the store.
        assert!(
            store.received >= self.client.acked(),
            "the client saw {} acknowledged, the store holds {}",
            self.client.acked(),
            store.received
        );
        assert!(
            self.client.received() <= store.last_sent(),
            "the client delivered {}, the store holds {}",
            self.client.received(),
            store.last_sent()
        );
        let restore = Restore {
            acked: store.acked,
            outbound: store.outbound.iter().cloned().collect(),
            received: store.received,
            inbound: store.inbound.iter().cloned().collect(),
            closed: store.closed.clone(),
        };
        store.issued_close = store.closed.is_some();
        self.server_closed.clone_from(&store.closed);
        let (last_sent, done) = (store.last_sent(), store.done);
        store.issued = (last_sent, store.received, store.acked, done);
        self.trace(|| format!("server crash: restore {restore:?}"));
        // Sends that did not reach the store never returned to the
        // application: they are not sent.
        assert!(self.log.server_sent.len() as u64 >= last_sent);
        self.log.server_sent.truncate(last_sent as usize);
        self.log.crashes.push((self.log.server_got.len(), done));
        self.app_taken = done;
        self.app_done = done;
        for id in 0..self.links.len() {
            if matches!(
                self.links[id].server,
                ServerEnd::Open(_) | ServerEnd::Replying(_)
            ) {
                self.close_server_end(id, false);
                self.close_client_end(id, !keep_polling, true);
            }
        }
        let config = self.server.config().clone();
        let identity = self.server.identity().clone();
        self.server = ServerSession::restore(self.now, config, identity, restore)
            .expect("the store holds a valid session");
        self.drained_epoch = None;
        self.pump();
    }

    /// The server application finishes every message it took: the driver
    /// writes that progress to the store with its next write.
    pub fn app_finish(&mut self) {
        self.app_done = self.app_taken;
        self.pump();
    }

    /// Completes the oldest write in flight to the store now, ahead of its
    /// time (a store faster than drawn).
    pub fn complete_store_write(&mut self) {
        if let Some(write) = self.store.as_mut().and_then(|s| s.writes.front_mut()) {
            write.due = self.now;
            self.pump();
        }
    }

    /// The driver's store work: completes the writes due (in order) and
    /// confirms them to the core, then writes what is new. Whether a write
    /// completed.
    fn store_step(&mut self) -> bool {
        let Some(store) = self.store.as_mut() else {
            return false;
        };
        let mut completed = false;
        while store.writes.front().is_some_and(|w| w.due <= self.now) {
            let write = store.writes.pop_front().expect("checked");
            store.apply(&write);
            if let Some(&(seq, _)) = write.outbound.last() {
                self.server.confirm_sent(seq);
            }
            if let Some(&(seq, _)) = write.inbound.last() {
                self.server.confirm_received(seq);
            }
            completed = true;
        }
        let (sent, received, acked, done) = store.issued;
        let outbound: Vec<_> = self
            .server
            .unconfirmed_sent()
            .filter(|(seq, _)| *seq > sent)
            .map(|(seq, m)| (seq, m.clone()))
            .collect();
        let inbound: Vec<_> = self
            .server
            .unconfirmed_received()
            .filter(|(seq, _)| *seq > received)
            .map(|(seq, m)| (seq, m.clone()))
            .collect();
        let (new_acked, new_done) = (self.server.acked(), self.app_done);
        let close = (!store.issued_close)
            .then(|| self.server_closed.clone())
            .flatten();
        if outbound.is_empty()
            && inbound.is_empty()
            && new_acked == acked
            && new_done == done
            && close.is_none()
        {
            return completed;
        }
        store.issued_close |= close.is_some();
        let delay = store.below(store.max_delay.as_millis() as u64 + 1);
        let after = store.writes.back().map_or(self.now, |w| w.due);
        let write = StoreWrite {
            due: after.max(self.now + Duration::from_millis(delay)),
            acked: new_acked,
            done: new_done,
            close,
            outbound,
            inbound,
        };
        store.issued = (
            write.outbound.last().map_or(sent, |w| w.0),
            write.inbound.last().map_or(received, |w| w.0),
            new_acked,
            new_done,
        );
        if self.trace {
            eprintln!(
                "[{:>9.3}s] store write {write:?}",
                (self.now - self.start).as_secs_f64()
            );
        }
        store.writes.push_back(write);
        completed
    }

    /// A pair with default configurations.
    pub fn default_configs() -> Self {
        Self::new(SessionConfig::default(), ClientConfig::default())
    }

    /// A pair whose session was opened over `kind`, everything delivered.
    pub fn opened(
        server_config: SessionConfig,
        client_config: ClientConfig,
        kind: TransportKind,
    ) -> Self {
        let mut pair = Self::new(server_config, client_config);
        pair.connect(kind);
        pair.settle();
        assert!(pair.client.params().is_some(), "the session opened");
        assert_eq!(pair.client.transport(), Some(kind));
        pair
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>9.3}s] {}", self.elapsed().as_secs_f64(), what());
        }
    }

    // ---- applications --------------------------------------------------

    /// The client application sends a message.
    pub fn client_send(&mut self, message: Message) -> Result<u64, SendError> {
        let result = self.client.send(message.clone());
        self.trace(|| format!("client app send {message:?} -> {result:?}"));
        if result.is_ok() {
            self.log.client_sent.push(message);
        }
        self.pump();
        result
    }

    /// The server application sends a message.
    pub fn server_send(&mut self, message: Message) -> Result<u64, SendError> {
        let result = self.server.send(message.clone());
        self.trace(|| format!("server app send {message:?} -> {result:?}"));
        if result.is_ok() {
            self.log.server_sent.push(message);
        }
        self.pump();
        result
    }

    /// The server application closes the session.
    pub fn server_close(&mut self, close: Close) {
        self.server.close(self.now, close);
        self.pump();
    }

    /// The client application closes the session.
    pub fn client_close(&mut self, close: Close) {
        self.client.close(self.now, close);
        self.pump();
    }

    // ---- connections ---------------------------------------------------

    /// The client attaches over `kind` to its
    /// [`connect_target`](ClientSession::connect_target). Returns the link
    /// (for long-polling, the first poll). The request is in flight: it
    /// reaches the server when delivered.
    pub fn connect(&mut self, kind: TransportKind) -> LinkId {
        let target = self.client.connect_target().expect("the client is closed");
        if let Some(key) = &target.key {
            assert_eq!(key, KEY, "the client resumes with the key it was given");
        }
        let att = self.client.attach(self.now, kind);
        self.client_kinds.insert(att, kind);
        self.trace(|| format!("client attaches {att:?} over {kind} (last {})", target.last));
        let id = match kind {
            TransportKind::WebSocket => {
                self.new_link(LinkKind::Socket, kind, Some(att), target.last)
            }
            TransportKind::Sse => self.new_link(LinkKind::Stream, kind, Some(att), target.last),
            TransportKind::LongPoll => self.issue_poll(att),
        };
        self.pump();
        id
    }

    fn new_link(
        &mut self,
        kind: LinkKind,
        transport: TransportKind,
        client_att: Option<AttachmentId>,
        last: u64,
    ) -> LinkId {
        let id = self.links.len();
        let mut up = VecDeque::new();
        if kind != LinkKind::Send {
            up.push_back(Unit::Connect { last });
        }
        self.links.push(Link {
            id,
            kind,
            transport,
            client_att,
            client_open: true,
            server: ServerEnd::Pending,
            up,
            down: VecDeque::new(),
            status: 200,
            parser: SseParser::new(16 << 20),
        });
        id
    }

    fn issue_poll(&mut self, att: AttachmentId) -> LinkId {
        let last = self.client.received();
        self.client.acked_by_request(last);
        let id = self.new_link(LinkKind::Poll, TransportKind::LongPoll, Some(att), last);
        self.trace(|| format!("client polls on link {id} (last {last})"));
        id
    }

    /// The link carrying the client's current attachment: its socket or
    /// stream, or its outstanding poll.
    pub fn current_link(&self) -> Option<LinkId> {
        let att = self.client.attachment()?;
        self.links
            .iter()
            .rev()
            .find(|l| l.client_att == Some(att) && l.client_open)
            .map(|l| l.id)
    }

    /// The send request in flight, if any.
    pub fn send_link(&self) -> Option<LinkId> {
        self.links
            .iter()
            .find(|l| l.kind == LinkKind::Send && l.client_open)
            .map(|l| l.id)
    }

    /// Links either end still uses.
    pub fn live_links(&self) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|l| l.is_live())
            .map(|l| l.id)
            .collect()
    }

    /// The connection breaks: everything in flight on it is lost and both
    /// ends notice. A WebSocket or SSE attachment is detached on both
    /// sides; a send request fails (`request_failed`). For a poll,
    /// `client_detaches` chooses whether the client drops its long-poll
    /// attachment (and resumes later with a new one) or keeps it and polls
    /// again.
    pub fn cut(&mut self, id: LinkId, client_detaches: bool) {
        self.trace(|| format!("cut link {id}"));
        self.close_server_end(id, true);
        self.close_client_end(id, client_detaches, true);
        self.pump();
    }

    /// A half-open connection: the client gives up on the link (what is in
    /// flight to it is lost), the server does not notice; what the client
    /// already sent on it may still arrive. A send request given up on
    /// failed; a poll given up on is followed by a new poll on the same
    /// attachment (the server sees it replace the held one).
    pub fn abandon(&mut self, id: LinkId) {
        self.trace(|| format!("client abandons link {id}"));
        self.close_client_end(id, false, true);
        self.pump();
    }

    /// The server side of a link goes away without the client noticing
    /// (for example a proxy that still holds the client's connection).
    pub fn drop_server_end(&mut self, id: LinkId) {
        self.trace(|| format!("server loses link {id}"));
        self.close_server_end(id, true);
        self.pump();
    }

    /// Puts raw frames on a link's upstream, as a misbehaving client would
    /// (bypassing the client core).
    pub fn inject_up(&mut self, id: LinkId, frames: &[Frame]) {
        let units = match self.links[id].kind {
            LinkKind::Socket => encode_socket(frames),
            _ => vec![Unit::Json(encode_json(frames))],
        };
        self.links[id].up.extend(units);
    }

    /// Starts a send request with raw frames, bypassing the client core;
    /// its reply reaches the client core like any send reply.
    pub fn inject_send(&mut self, frames: &[Frame]) -> LinkId {
        let id = self.new_link(LinkKind::Send, TransportKind::Sse, None, 0);
        self.links[id].up.push_back(Unit::Json(encode_json(frames)));
        id
    }

    /// Delivers everything in flight in one direction only; the other
    /// direction stays queued.
    pub fn settle_dir(&mut self, dir: Dir) {
        for _ in 0..5_000 {
            let Some(&(id, _)) = self.deliverable().iter().find(|(_, d)| *d == dir) else {
                return;
            };
            self.deliver(id, dir);
        }
        panic!("the network never goes idle");
    }

    fn close_server_end(&mut self, id: LinkId, notify: bool) {
        let link = &mut self.links[id];
        link.up.clear();
        if let ServerEnd::Open(sa) = link.server
            && notify
        {
            self.server.detach(self.now, sa);
        }
        link.server = ServerEnd::Closed;
    }

    fn close_client_end(&mut self, id: LinkId, client_detaches: bool, failed: bool) {
        let link = &mut self.links[id];
        link.down.clear();
        if !link.client_open {
            return;
        }
        link.client_open = false;
        match (link.kind, link.client_att) {
            (LinkKind::Send, _) if failed => self.client.request_failed(self.now),
            (LinkKind::Socket | LinkKind::Stream, Some(att)) => self.client.detach(self.now, att),
            (LinkKind::Poll, Some(att)) if client_detaches => self.client.detach(self.now, att),
            _ => {}
        }
    }

    // ---- delivery ------------------------------------------------------

    /// The queues holding something, as (link, direction).
    pub fn deliverable(&self) -> Vec<(LinkId, Dir)> {
        let mut out = Vec::new();
        for link in &self.links {
            if !link.up.is_empty() {
                out.push((link.id, Dir::Up));
            }
            if !link.down.is_empty() {
                out.push((link.id, Dir::Down));
            }
        }
        out
    }

    /// Whether anything is in flight.
    pub fn in_flight(&self) -> bool {
        self.links
            .iter()
            .any(|l| !l.up.is_empty() || !l.down.is_empty())
    }

    /// Delivers the oldest unit of one queue. Returns false if it was empty.
    pub fn deliver(&mut self, id: LinkId, dir: Dir) -> bool {
        let unit = match dir {
            Dir::Up => self.links[id].up.pop_front(),
            Dir::Down => self.links[id].down.pop_front(),
        };
        let Some(unit) = unit else {
            return false;
        };
        match dir {
            Dir::Up => self.arrive_at_server(id, unit),
            Dir::Down => self.arrive_at_client(id, unit),
        }
        self.pump();
        true
    }

    /// Delivers everything in flight on one link, in both directions.
    pub fn deliver_link(&mut self, id: LinkId) {
        for _ in 0..100_000 {
            if !self.deliver(id, Dir::Up) && !self.deliver(id, Dir::Down) {
                return;
            }
        }
        panic!("link {id} never drains");
    }

    /// Delivers everything in flight, and what that causes, until the
    /// network is idle. Time does not move.
    pub fn settle(&mut self) {
        for _ in 0..5_000 {
            let Some(&(id, dir)) = self.deliverable().first() else {
                return;
            };
            self.deliver(id, dir);
        }
        panic!("the network never goes idle");
    }

    fn arrive_at_server(&mut self, id: LinkId, unit: Unit) {
        let (kind, transport) = (self.links[id].kind, self.links[id].transport);
        if self.links[id].server == ServerEnd::Closed {
            // The server already ended this connection; it reads no more.
            self.trace(|| format!("server drops {unit:?} on link {id}"));
            return;
        }
        match unit {
            Unit::Connect { last } => {
                let result = self.server.attach(self.now, transport, last);
                self.trace(|| {
                    format!("server: {transport} request on link {id} (last {last}) -> {result:?}")
                });
                match result {
                    Ok(sa) => self.links[id].server = ServerEnd::Open(sa),
                    Err(AttachError::SessionLost) => self.refuse(
                        id,
                        410,
                        Frame::close(
                            CloseCode::SESSION_LOST,
                            "session lost: unknown or expired key",
                        ),
                    ),
                    Err(AttachError::Protocol(e)) => {
                        self.log.server_errors.push(e.clone());
                        self.refuse(
                            id,
                            400,
                            Frame::detach(CloseCode::PROTOCOL_ERROR, e.to_string()),
                        );
                    }
                    Err(e) => panic!("unexpected attach error {e:?}"),
                }
            }
            Unit::Json(bytes) => {
                let frames = decode_json(&bytes);
                self.server_receives(id, kind, frames);
            }
            Unit::Binary(bytes) => {
                let (seq, payload) =
                    binary::decode_binary_message(bytes).expect("valid binary message");
                let frame = Frame::Message {
                    seq,
                    message: Message::Binary(payload),
                };
                self.server_receives(id, kind, vec![frame]);
            }
            Unit::Sse(_) | Unit::End => unreachable!("never sent upstream"),
        }
    }

    fn server_receives(&mut self, id: LinkId, kind: LinkKind, frames: Vec<Frame>) {
        self.trace(|| format!("server <- link {id}: {frames:?}"));
        self.log
            .server_rx
            .extend(frames.iter().map(|f| (id, f.clone())));
        match kind {
            LinkKind::Socket => {
                let ServerEnd::Open(sa) = self.links[id].server else {
                    unreachable!("upstream on a socket the server does not hold");
                };
                if let Err(e) = self.server.handle_frames(self.now, Some(sa), frames) {
                    self.trace(|| format!("server error on link {id}: {e}"));
                    self.log.server_errors.push(e.clone());
                    if !e.ends_session() {
                        // A protocol error ends the socket with 1002.
                        self.server.detach(self.now, sa);
                        self.refuse(
                            id,
                            400,
                            Frame::detach(CloseCode::PROTOCOL_ERROR, e.to_string()),
                        );
                    }
                }
            }
            LinkKind::Send => {
                if self.server.is_finished(self.now) {
                    self.refuse(
                        id,
                        410,
                        Frame::close(
                            CloseCode::SESSION_LOST,
                            "session lost: unknown or expired key",
                        ),
                    );
                    return;
                }
                match self.server.handle_frames(self.now, None, frames) {
                    // With a store, the reply waits for what the request
                    // carried to be confirmed.
                    Ok(()) if self.store.is_some() => {
                        self.links[id].server = ServerEnd::Replying(self.server.received());
                    }
                    Ok(()) => self.reply(id),
                    Err(e) => {
                        self.trace(|| format!("server error on link {id}: {e}"));
                        self.log.server_errors.push(e.clone());
                        let status = e.close_code().http_status();
                        let frame = if e.ends_session() {
                            Frame::close(e.close_code(), e.to_string())
                        } else {
                            Frame::detach(e.close_code(), e.to_string())
                        };
                        self.refuse(id, status, frame);
                    }
                }
            }
            LinkKind::Stream | LinkKind::Poll => unreachable!("no upstream frames on {kind:?}"),
        }
    }

    /// The server answers a send request.
    fn reply(&mut self, id: LinkId) {
        let reply = self.server.request_reply();
        self.log
            .server_tx
            .extend(reply.iter().map(|f| (LinkKind::Send, f.clone())));
        self.trace(|| format!("server reply on link {id}: {reply:?}"));
        let link = &mut self.links[id];
        link.server = ServerEnd::Closed;
        if link.client_open {
            link.down.push_back(Unit::Json(encode_json(&reply)));
        }
    }

    /// The server answers a request with a refusal body (or, on a socket,
    /// the frame and a close) and is done with the link.
    fn refuse(&mut self, id: LinkId, status: u16, frame: Frame) {
        self.log
            .server_tx
            .push((self.links[id].kind, frame.clone()));
        let link = &mut self.links[id];
        link.status = status;
        link.up.clear();
        link.server = ServerEnd::Closed;
        if !link.client_open {
            return; // nobody reads the answer
        }
        link.down.push_back(Unit::Json(encode_json(&[frame])));
        if matches!(link.kind, LinkKind::Socket | LinkKind::Stream) {
            link.down.push_back(Unit::End);
        }
    }

    fn arrive_at_client(&mut self, id: LinkId, unit: Unit) {
        let link = &mut self.links[id];
        assert!(link.client_open, "units to a closed client end are dropped");
        let (kind, att, status) = (link.kind, link.client_att, link.status);
        let frames = match unit {
            Unit::Json(bytes) => vec![decode_json(&bytes)],
            Unit::Binary(bytes) => {
                let (seq, payload) =
                    binary::decode_binary_message(bytes).expect("valid binary message");
                vec![vec![Frame::Message {
                    seq,
                    message: Message::Binary(payload),
                }]]
            }
            Unit::Sse(bytes) => {
                let mut items = Vec::new();
                link.parser.feed(&bytes, &mut items).expect("valid stream");
                items
                    .into_iter()
                    .filter_map(|item| match item {
                        SseItem::Event { data, .. } => Some(decode_json(data.as_bytes())),
                        SseItem::Comment => None,
                    })
                    .collect()
            }
            Unit::End => {
                self.trace(|| format!("client: link {id} ended"));
                self.close_client_end(id, true, false);
                return;
            }
            Unit::Connect { .. } => unreachable!("never sent downstream"),
        };
        for batch in frames {
            self.client_receives(id, kind, att, status, batch);
        }
        if matches!(kind, LinkKind::Poll | LinkKind::Send) {
            // The response is complete: the request is over.
            self.links[id].client_open = false;
        }
    }

    fn client_receives(
        &mut self,
        id: LinkId,
        kind: LinkKind,
        att: Option<AttachmentId>,
        status: u16,
        frames: Vec<Frame>,
    ) {
        self.trace(|| format!("client <- link {id}: {frames:?}"));
        self.log
            .client_rx
            .extend(frames.iter().map(|f| (id, f.clone())));
        if kind == LinkKind::Send && status == 400 {
            // A refused send: the driver treats it as a failed request.
            self.client.request_failed(self.now);
            return;
        }
        let via = if kind == LinkKind::Send { None } else { att };
        if let Err(e) = self.client.handle_frames(self.now, via, frames) {
            self.trace(|| format!("client error on link {id}: {e}"));
            self.log.client_errors.push(e);
        }
    }

    // ---- outputs -------------------------------------------------------

    /// Runs both cores' outputs until neither has anything to say: the
    /// server's transmits on every attachment, the client's transmits
    /// (socket frames, send requests, the next poll), events and messages.
    /// Every input method calls it.
    ///
    /// Like a driver re-arming its timer after every input, it also fires
    /// `handle_timeout` at once when a deadline is already due (an ack due
    /// by count, for example).
    pub fn pump(&mut self) {
        let mut fired_in_vain = 0;
        for _ in 0..10_000 {
            let mut progress = self.store_step();
            progress |= self.pump_server();
            progress |= self.pump_client();
            progress |= self.drain();
            if progress {
                continue;
            }
            match self.next_timeout() {
                Some(deadline) if deadline <= self.now => {
                    fired_in_vain += 1;
                    assert!(
                        fired_in_vain < 100,
                        "a timer stays due at {:?} after handle_timeout",
                        deadline - self.start
                    );
                    self.server.handle_timeout(self.now);
                    self.client.handle_timeout(self.now);
                }
                _ => return,
            }
        }
        panic!("the cores never stop producing output");
    }

    fn pump_server(&mut self) -> bool {
        // `output_epoch` promises that nothing new is to be written unless
        // it moved: a driver only wakes its transports then.
        let quiet = self.drained_epoch == Some(self.server.output_epoch());
        let mut progress = false;
        for id in 0..self.links.len() {
            let link = &self.links[id];
            if let ServerEnd::Replying(upto) = link.server {
                if self.server.confirmed_received() >= upto {
                    self.reply(id);
                    progress = true;
                }
                continue;
            }
            let ServerEnd::Open(sa) = link.server else {
                continue;
            };
            let kind = link.kind;
            while let Some(transmit) = self.server.poll_transmit(self.now, sa) {
                assert!(
                    !quiet,
                    "output_epoch did not change, yet link {id} has {transmit:?}"
                );
                progress = true;
                self.trace(|| {
                    format!(
                        "server -> link {id}: {:?} end {:?}",
                        transmit.frames, transmit.end
                    )
                });
                self.log
                    .server_tx
                    .extend(transmit.frames.iter().map(|f| (kind, f.clone())));
                let mut units = match kind {
                    LinkKind::Socket => encode_socket(&transmit.frames),
                    LinkKind::Stream => {
                        let mut out = Vec::new();
                        sse::encode_event(&transmit.frames, &mut out);
                        vec![Unit::Sse(out)]
                    }
                    LinkKind::Poll => vec![Unit::Json(encode_json(&transmit.frames))],
                    LinkKind::Send => unreachable!("send requests are not attachments"),
                };
                let ends = kind == LinkKind::Poll || transmit.end.is_some();
                if ends && kind != LinkKind::Poll {
                    units.push(Unit::End);
                }
                let link = &mut self.links[id];
                if link.client_open {
                    link.down.extend(units);
                } // else: nobody reads this connection any more
                if ends {
                    link.server = ServerEnd::Closed;
                    link.up.clear();
                    break;
                }
            }
        }
        self.drained_epoch = Some(self.server.output_epoch());
        progress
    }

    fn pump_client(&mut self) -> bool {
        let Some(att) = self.client.attachment() else {
            return false;
        };
        let kind = self.client_kinds[&att];
        let mut progress = false;
        match kind {
            TransportKind::WebSocket => {
                let Some(id) = self.current_link() else {
                    return false;
                };
                while let Some(transmit) = self.client.poll_transmit(self.now) {
                    progress = true;
                    self.trace(|| format!("client -> link {id}: {:?}", transmit.frames));
                    self.log.client_tx.extend(
                        transmit
                            .frames
                            .iter()
                            .map(|f| (LinkKind::Socket, f.clone())),
                    );
                    let link = &mut self.links[id];
                    if link.server != ServerEnd::Closed {
                        link.up.extend(encode_socket(&transmit.frames));
                    } // else: the server closed the socket, the write is lost
                }
            }
            TransportKind::Sse | TransportKind::LongPoll => {
                if self.send_link().is_none()
                    && let Some(transmit) = self.client.poll_transmit(self.now)
                {
                    progress = true;
                    let id = self.new_link(LinkKind::Send, kind, None, 0);
                    self.trace(|| {
                        format!("client send request on link {id}: {:?}", transmit.frames)
                    });
                    self.log
                        .client_tx
                        .extend(transmit.frames.iter().map(|f| (LinkKind::Send, f.clone())));
                    self.links[id]
                        .up
                        .push_back(Unit::Json(encode_json(&transmit.frames)));
                }
                if kind == TransportKind::LongPoll && self.current_link().is_none() {
                    progress = true;
                    self.issue_poll(att);
                }
            }
        }
        progress
    }

    fn drain(&mut self) -> bool {
        let mut progress = false;
        let at = self.elapsed();
        while let Some(m) = self.client.poll_message() {
            progress = true;
            self.log.client_got.push(m);
        }
        while !self.app_paused
            && let Some(m) = self.server.poll_message()
        {
            progress = true;
            self.app_taken += 1;
            if self.app_finishes_at_once {
                self.app_done = self.app_taken;
            }
            self.log.server_got.push(m);
            self.log.server_got_seqs.push(self.app_taken);
        }
        while let Some(event) = self.server.poll_event() {
            progress = true;
            if let ServerEvent::Closed { close, initiator } = &event {
                self.server_closed = Some((close.clone(), *initiator));
            }
            self.trace(|| format!("server event {event:?}"));
            self.log.server_events.push((at, event));
        }
        while let Some(event) = self.client.poll_event() {
            progress = true;
            self.trace(|| format!("client event {event:?}"));
            match &event {
                // The client's driver gives up on the transport and closes
                // it; the server sees the connection end.
                ClientEvent::TransportFailed { id, .. } => {
                    self.client_closes(|l| l.client_att == Some(*id))
                }
                // The server ended it; the client stops reading it.
                ClientEvent::Detached { id, .. } => {
                    for link in &mut self.links {
                        if link.client_att == Some(*id) && link.kind != LinkKind::Poll {
                            link.client_open = false;
                            link.down.clear();
                        }
                    }
                }
                // The session is over: the client closes everything.
                ClientEvent::Closed { .. } => self.client_closes(|_| true),
                ClientEvent::Opened { .. } | ClientEvent::Resumed { .. } => {}
            }
            self.log.client_events.push((at, event));
        }
        progress
    }

    /// The client's driver closes its links matching `which`; the server
    /// notices those it holds.
    fn client_closes(&mut self, which: impl Fn(&Link) -> bool) {
        for id in 0..self.links.len() {
            let link = &self.links[id];
            if !link.client_open || !which(link) {
                continue;
            }
            if link.kind == LinkKind::Send {
                // Nobody reads the reply; the request may still arrive.
                self.links[id].client_open = false;
                self.links[id].down.clear();
                continue;
            }
            self.close_server_end(id, true);
            self.close_client_end(id, true, false);
        }
    }

    // ---- time ----------------------------------------------------------

    /// The next deadline either side asked for. A finished server session
    /// is one the driver forgets, so its deadlines no longer count.
    pub fn next_timeout(&self) -> Option<Instant> {
        let server = (!self.server.is_finished(self.now))
            .then(|| self.server.poll_timeout())
            .flatten();
        let store = self
            .store
            .as_ref()
            .and_then(|s| s.writes.front().map(|w| w.due));
        [server, self.client.poll_timeout(), store]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves the clock forward by `by`, firing every timer that falls due
    /// on the way, at its own instant, as a driver would.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(deadline) = self.next_timeout()
            && deadline <= target
        {
            // `pump` already fired everything due now, so this moves on.
            assert!(deadline > self.now, "a timer stays due");
            self.now = deadline;
            self.fire_timers();
        }
        self.now = target;
        self.fire_timers();
    }

    fn fire_timers(&mut self) {
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        self.pump();
    }

    /// Alternately delivers everything and moves the clock by `step` until
    /// `done` holds; panics after `max` of virtual time.
    pub fn run_until(
        &mut self,
        step: Duration,
        max: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) {
        let deadline = self.now + max;
        loop {
            self.settle();
            if done(self) {
                return;
            }
            assert!(
                self.now < deadline,
                "not done after {max:?} of virtual time"
            );
            self.advance(step);
        }
    }

    // ---- checks ----------------------------------------------------------

    /// No loss, no duplicate, no reordering so far: what each side
    /// delivered is a prefix of what the other sent.
    pub fn assert_prefixes(&self) {
        assert_prefix(
            "client delivered",
            &self.log.client_got,
            &self.log.server_sent,
        );
        if self.log.crashes.is_empty() {
            assert_prefix(
                "server delivered",
                &self.log.server_got,
                &self.log.client_sent,
            );
        } else {
            self.assert_server_app_log();
        }
    }

    /// Across crashes, the server application got the client's messages in
    /// order, each one once except those a crash delivered again: after a
    /// crash, delivery starts over from the `done` the store held.
    pub fn assert_server_app_log(&self) {
        let got = &self.log.server_got_seqs;
        let mut crashes = self.log.crashes.iter().peekable();
        let mut last = 0;
        for (i, &seq) in got.iter().enumerate() {
            let mut expected = last + 1;
            while let Some(&&(at, done)) = crashes.peek() {
                if at > i {
                    break;
                }
                assert!(
                    done <= last,
                    "the store's done {done} is past what the app got {last}"
                );
                expected = done + 1;
                crashes.next();
            }
            assert_eq!(
                seq, expected,
                "server app delivery {i}: {got:?}, crashes {:?}",
                self.log.crashes
            );
            let sent = self.log.client_sent.get(seq as usize - 1);
            assert_eq!(
                sent,
                Some(&self.log.server_got[i]),
                "server app delivery {i} (seq {seq})"
            );
            last = seq;
        }
    }

    /// Whether the server application got every message the client sent
    /// (at least once, across crashes).
    pub fn server_got_all(&self) -> bool {
        self.app_taken == self.log.client_sent.len() as u64
    }

    /// No protocol error on either side.
    pub fn assert_no_errors(&self) {
        assert!(
            self.log.client_errors.is_empty(),
            "client errors: {:?}",
            self.log.client_errors
        );
        assert!(
            self.log.server_errors.is_empty(),
            "server errors: {:?}",
            self.log.server_errors
        );
    }

    /// Everything sent was delivered and acknowledged, both ways.
    pub fn all_delivered(&self) -> bool {
        let server_got = if self.log.crashes.is_empty() {
            self.log.server_got == self.log.client_sent
        } else {
            self.server_got_all()
        };
        self.log.client_got == self.log.server_sent
            && server_got
            && self.server.unacked_messages() == 0
            && self.client.acked() == self.client.sent()
    }

    /// Cuts every live link, attaches afresh over `kind`, and runs until
    /// everything sent was delivered and acknowledged.
    pub fn reconnect_and_quiesce(&mut self, kind: TransportKind) {
        for id in self.live_links() {
            self.cut(id, true);
        }
        self.connect(kind);
        self.run_until(
            Duration::from_millis(50),
            Duration::from_secs(120),
            Self::all_delivered,
        );
        self.assert_no_errors();
        assert_eq!(self.log.client_got, self.log.server_sent);
        self.assert_prefixes();
        assert!(self.server_got_all());
    }

    /// The client events seen so far that match.
    pub fn client_events_matching(&self, f: impl Fn(&ClientEvent) -> bool) -> Vec<ClientEvent> {
        self.log
            .client_events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| f(e))
            .cloned()
            .collect()
    }
}

fn assert_prefix(what: &str, got: &[Message], sent: &[Message]) {
    assert!(
        got.len() <= sent.len() && got == &sent[..got.len()],
        "{what} is not a prefix of what was sent:\n got:  {got:?}\n sent: {sent:?}"
    );
}

/// Encodes a batch, checking that it decodes back to the same frames.
pub fn encode_json(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    json::encode_batch(frames, &mut out);
    assert_eq!(decode_json(&out), frames, "the JSON codec round-trips");
    out
}

/// Decodes a batch the simulated peer encoded.
pub fn decode_json(bytes: &[u8]) -> Vec<Frame> {
    json::decode_batch(bytes).unwrap_or_else(|e| {
        panic!(
            "undecodable batch {:?}: {e}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Splits a batch the way a WebSocket carries it: binary messages as
/// native binary WebSocket messages, everything else in JSON text messages,
/// order kept.
pub fn encode_socket(frames: &[Frame]) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut text: Vec<Frame> = Vec::new();
    for frame in frames {
        if let Frame::Message {
            seq,
            message: Message::Binary(payload),
        } = frame
        {
            if !text.is_empty() {
                units.push(Unit::Json(encode_json(&std::mem::take(&mut text))));
            }
            units.push(Unit::Binary(binary::encode_binary_message(*seq, payload)));
        } else {
            text.push(frame.clone());
        }
    }
    if !text.is_empty() {
        units.push(Unit::Json(encode_json(&text)));
    }
    units
}

/// A payload for message number `n` of a side, in one of several shapes
/// chosen by `shape`: plain text, text that needs escaping (quotes,
/// backslashes, control characters, non-ASCII), binary, empty, or a long
/// text that forces batches to be cut.
pub fn payload(side: char, n: usize, shape: u8) -> Message {
    match shape % 6 {
        0 | 1 => Message::text(format!("{side}{n}")),
        2 => Message::text(format!("{side}{n} \"q\" \\ \n\t\u{1} é 😀 </script>")),
        3 => {
            let mut bytes = format!("{side}{n}").into_bytes();
            bytes.extend([0, 0xff, 0x80, b'\n', b'"']);
            Message::binary(bytes)
        }
        4 => Message::text(""),
        _ => Message::text(format!("{side}{n}:{}", "long \"x\" ".repeat(20 + n % 7))),
    }
}

/// A server configuration with small limits and round timers, for tests.
pub fn small_server_config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.set_max_message(512);
    config.max_unacked_bytes = 16 * 1024;
    config.max_unacked_messages = 64;
    config.ack_every = 4;
    config
}

/// A client configuration matching [`small_server_config`].
pub fn small_client_config() -> ClientConfig {
    let mut config = ClientConfig::default();
    config.max_unacked_bytes = 16 * 1024;
    config.max_unacked_messages = 64;
    config.ack_every = 4;
    config
}

/// Matches a `ClientEvent::Closed` with this code.
pub fn is_closed_with(code: CloseCode) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::Closed { close, .. } if close.code == code)
}
