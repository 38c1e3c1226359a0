//! A holdfast client written from `PROTOCOL.md` alone, as an outside
//! implementer would: its own sequence numbers, cumulative acks, replay
//! buffer, duplicate dropping and resume, over its own WebSocket, SSE,
//! long-polling and send code. It shares nothing with `holdfast-protocol`.
//!
//! [`Core`] is the session state; [`Client`] drives it over one attachment
//! at a time ([`Client::attach`]) following a [`Plan`] that may cut the
//! connection abruptly at a chosen point, which is what the exactly-once
//! tests are made of. The client is strict: whatever the server does that
//! the protocol forbids (a gap, an ack for more than was sent, a replay of
//! something already acknowledged by `last`, an SSE `id:` that does not
//! match its batch…) is an error naming the rule.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::raw::{self, Sse, WsStream, encode};
use crate::wire::{self, Frame, Open, Payload};

/// The transports of `PROTOCOL.md` §8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `GET <mount>/ws`.
    WebSocket,
    /// `GET <mount>/sse` + `POST <mount>/send`.
    Sse,
    /// `GET <mount>/poll` + `POST <mount>/send`.
    Poll,
}

impl Transport {
    /// All three.
    pub const ALL: [Transport; 3] = [Transport::WebSocket, Transport::Sse, Transport::Poll];
}

/// Counters describing what happened on the wire, for diagnostics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Attachments made.
    pub attachments: usize,
    /// `resumed` frames received.
    pub resumes: usize,
    /// Downstream messages dropped as duplicates (replays).
    pub duplicates: usize,
    /// Upstream messages transmitted (including retransmissions).
    pub transmissions: usize,
    /// `ping` frames received.
    pub pings: usize,
    /// Send requests made, and how many failed or were cut.
    pub send_requests: usize,
    /// Send requests that failed or were cut.
    pub send_failures: usize,
    /// Attachments we cut on purpose.
    pub cuts: usize,
    /// `detach` codes received.
    pub detaches: Vec<u16>,
    /// Downstream batches holding more than one message whose encoding
    /// exceeds `max_msg` (§2.3 says they stay under it).
    pub oversized_batches: Vec<usize>,
    /// Native WebSocket binary messages sent.
    pub native_binary_sent: usize,
    /// Native WebSocket binary messages received.
    pub native_binary_received: usize,
}

/// What a frame meant for the attachment that carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Nothing special: carry on.
    Continue,
    /// `open` or `resumed`: the attachment's first frame.
    Greeting,
    /// `detach`: this attachment is over.
    Detach(u16, String),
    /// `close`: the session is over.
    Close(u16, String),
}

/// The client's end of a session (`PROTOCOL.md` §3–§5).
#[derive(Debug)]
pub struct Core {
    /// The `open` parameters, once the session is open.
    pub open: Option<Open>,
    next_seq: u64,
    replay: VecDeque<(u64, Payload)>,
    /// Highest upstream seq the server acknowledged.
    pub peer_ack: u64,
    /// Highest upstream seq handed to the current path.
    cursor: u64,
    max_transmitted: u64,
    /// Highest downstream seq accepted (and delivered).
    pub received: u64,
    /// Downstream messages delivered to the application, in order.
    pub delivered: Vec<Payload>,
    acked_to_peer: u64,
    unacked_since: Option<Instant>,
    /// Messages up to here must not arrive on the current attachment: the
    /// server was told they were delivered (`last`).
    floor: u64,
    /// The server's ack when the current attachment began: its `resumed`
    /// cannot be lower (a send answered meanwhile may have acked more).
    ack_at_attach: u64,
    /// `pong`s owed to the server.
    pub pongs_owed: usize,
    /// The `close` frame that ended the session, if any.
    pub close: Option<(u16, String)>,
    /// The upstream window (§3.1): the greatest `(R, room)` the server
    /// granted, in lexicographic order. `None` before `open` (or from a
    /// server that announces no window).
    pub grant: Option<(u64, u64)>,
    /// Diagnostics.
    pub stats: Stats,
}

impl Default for Core {
    fn default() -> Self {
        Self {
            open: None,
            next_seq: 1,
            replay: VecDeque::new(),
            peer_ack: 0,
            cursor: 0,
            max_transmitted: 0,
            received: 0,
            delivered: Vec::new(),
            acked_to_peer: 0,
            unacked_since: None,
            floor: 0,
            ack_at_attach: 0,
            pongs_owed: 0,
            close: None,
            grant: None,
            stats: Stats::default(),
        }
    }
}

/// When acks are due (§3): this many unacknowledged messages…
pub const ACK_EVERY: u64 = 32;
/// …or this long after the first unacknowledged one.
pub const ACK_DELAY: Duration = Duration::from_millis(100);

impl Core {
    /// The session key, once open.
    pub fn key(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.key.as_str())
    }

    /// `max_msg` from `open` (the default before it).
    pub fn max_msg(&self) -> usize {
        self.open.as_ref().map_or(65536, |o| o.max_msg as usize)
    }

    /// Queues an application message; returns its seq.
    pub fn queue(&mut self, payload: Payload) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.replay.push_back((seq, payload));
        seq
    }

    /// Messages the application sent so far.
    pub fn sent(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether every message sent was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.replay.is_empty()
    }

    /// Messages in the replay buffer.
    pub fn unacked(&self) -> usize {
        self.replay.len()
    }

    /// A new attachment (or poll) tells the server `last`: nothing up to it
    /// may arrive on it, and upstream restarts after the server's ack.
    pub fn begin_attachment(&mut self, last: u64) {
        self.floor = last;
        self.ack_at_attach = self.peer_ack;
        self.acked_to_peer = self.acked_to_peer.max(last);
        if self.acked_to_peer >= self.received {
            self.unacked_since = None;
        }
        self.rewind();
    }

    /// Retransmits everything not acknowledged, from the oldest.
    pub fn rewind(&mut self) {
        self.cursor = self.peer_ack;
    }

    /// Whether an ack is due (32 messages or 100 ms, §3).
    pub fn ack_due(&self, now: Instant) -> bool {
        self.received > self.acked_to_peer
            && (self.received - self.acked_to_peer >= ACK_EVERY
                || self
                    .unacked_since
                    .is_some_and(|since| now >= since + ACK_DELAY))
    }

    /// Whether some downstream message is not acknowledged yet.
    pub fn has_unacked_downstream(&self) -> bool {
        self.received > self.acked_to_peer
    }

    /// An `ack` for everything received, if there is anything new.
    pub fn take_ack(&mut self) -> Option<Frame> {
        if self.received > self.acked_to_peer {
            self.acked_to_peer = self.received;
            self.unacked_since = None;
            Some(Frame::Ack { seq: self.received })
        } else {
            None
        }
    }

    /// Records that `last` was told to the server on a poll.
    pub fn acked_by_last(&mut self, last: u64) {
        self.acked_to_peer = self.acked_to_peer.max(last);
        if self.acked_to_peer >= self.received {
            self.unacked_since = None;
        }
    }

    /// Whether there are messages not yet handed to the current path (and
    /// room in the window for the next one).
    pub fn has_unsent(&self) -> bool {
        self.replay
            .iter()
            .find(|(seq, _)| *seq > self.cursor)
            .is_some_and(|(_, p)| self.window_room().is_none_or(|room| charge(p) <= room))
    }

    /// Applies the grants of a batch (§3.1): the greatest `(R, room)` wins.
    pub fn note_grants(&mut self, grants: &[(u64, u64)]) {
        for &grant in grants {
            if self.grant.is_some_and(|latest| grant > latest) {
                self.grant = Some(grant);
            }
        }
    }

    /// Charged bytes that may still be transmitted (§3.1): the granted room
    /// less the messages after its `R` already handed to the path. `None`:
    /// no window.
    fn window_room(&self) -> Option<u64> {
        let (acked, room) = self.grant?;
        let in_flight: u64 = self
            .replay
            .iter()
            .filter(|(seq, _)| *seq > acked && *seq <= self.cursor)
            .map(|(_, p)| charge(p))
            .sum();
        Some(room.saturating_sub(in_flight))
    }

    /// The next upstream batch's messages (§2.3): the first unsent message,
    /// then more while the encoded batch stays under `max_msg` — and their
    /// charges within the window (§3.1).
    pub fn take_batch(&mut self) -> Vec<(u64, Payload)> {
        let max = self.max_msg();
        let mut room = self.window_room();
        let mut out = Vec::new();
        let mut size = 2;
        for (seq, payload) in self.replay.iter().filter(|(seq, _)| *seq > self.cursor) {
            let len = wire::encoded_len(&payload.frame(*seq));
            if !out.is_empty() && size + len > max {
                break;
            }
            if let Some(room) = &mut room {
                if charge(payload) > *room {
                    break;
                }
                *room -= charge(payload);
            }
            size += len;
            out.push((*seq, payload.clone()));
        }
        if let Some((seq, _)) = out.last() {
            self.cursor = *seq;
            self.max_transmitted = self.max_transmitted.max(*seq);
            self.stats.transmissions += out.len();
        }
        out
    }

    /// Checks §2.3 on a downstream batch of `encoded` bytes.
    pub fn check_batch_size(&mut self, frames: &[Frame], encoded: usize) {
        let messages = frames.iter().filter(|f| f.message_seq().is_some()).count();
        if messages > 1 && encoded > self.max_msg() {
            self.stats.oversized_batches.push(encoded);
        }
    }

    /// Applies one frame from the server.
    pub fn handle(&mut self, frame: Frame) -> Result<Signal, String> {
        match frame {
            Frame::Open(open) => {
                if let Some(old) = &self.open {
                    return Err(format!(
                        "`open` on a session that is already open (sid {} then {})",
                        old.sid, open.sid
                    ));
                }
                if open.v != 1 {
                    return Err(format!("`open` with version {}", open.v));
                }
                self.grant = open.win.map(|win| (0, win));
                self.open = Some(open);
                Ok(Signal::Greeting)
            }
            Frame::Resumed { ack } => {
                if self.open.is_none() {
                    return Err("`resumed` before `open`".into());
                }
                if ack > self.max_transmitted {
                    return Err(format!(
                        "`resumed` acks {ack} but only {} were ever transmitted",
                        self.max_transmitted
                    ));
                }
                if ack < self.ack_at_attach {
                    return Err(format!(
                        "`resumed` acks {ack}, less than the {} acknowledged before this attachment: the server lost messages",
                        self.ack_at_attach
                    ));
                }
                self.apply_ack(ack);
                self.rewind();
                self.stats.resumes += 1;
                Ok(Signal::Greeting)
            }
            Frame::Msg { seq, data } => self.accept(seq, Payload::Text(data)),
            Frame::Bin { seq, data } => self.accept(seq, Payload::Binary(data)),
            Frame::Ack { seq } => {
                if seq > self.max_transmitted {
                    return Err(format!(
                        "`ack` {seq} for more than the {} ever transmitted",
                        self.max_transmitted
                    ));
                }
                self.apply_ack(seq);
                Ok(Signal::Continue)
            }
            Frame::Ping => {
                self.stats.pings += 1;
                self.pongs_owed += 1;
                Ok(Signal::Continue)
            }
            Frame::Pong => Ok(Signal::Continue),
            Frame::Close { code, reason, .. } => {
                self.close = Some((code, reason.clone()));
                Ok(Signal::Close(code, reason))
            }
            Frame::Detach { code, reason } => {
                self.stats.detaches.push(code);
                Ok(Signal::Detach(code, reason))
            }
        }
    }

    fn apply_ack(&mut self, seq: u64) {
        if seq <= self.peer_ack {
            return;
        }
        self.peer_ack = seq;
        while self.replay.front().is_some_and(|(s, _)| *s <= seq) {
            self.replay.pop_front();
        }
        if self.cursor < seq {
            self.cursor = seq;
        }
    }

    fn accept(&mut self, seq: u64, payload: Payload) -> Result<Signal, String> {
        if self.open.is_none() {
            return Err(format!("message {seq} before `open`"));
        }
        if seq == 0 {
            return Err("message with seq 0 (seqs start at 1)".into());
        }
        if seq <= self.floor {
            return Err(format!(
                "message {seq} retransmitted although `last` = {} told the server it was delivered (§5.1, §5.3)",
                self.floor
            ));
        }
        if seq <= self.received {
            self.stats.duplicates += 1;
            return Ok(Signal::Continue);
        }
        if seq != self.received + 1 {
            return Err(format!("gap: message {seq} after {} (§3)", self.received));
        }
        self.received = seq;
        self.delivered.push(payload);
        if self.unacked_since.is_none() {
            self.unacked_since = Some(Instant::now());
        }
        Ok(Signal::Continue)
    }
}

/// What a message counts against the upstream window (§3.1): its payload
/// bytes plus 128.
pub fn charge(payload: &Payload) -> u64 {
    payload.len() as u64 + 128
}

/// How to cut an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Drop everything at once.
    Now,
    /// WebSocket: write a batch, then drop the socket without waiting.
    /// HTTP: same as [`SendInFlight`](Self::SendInFlight).
    AfterSending,
    /// Stop reading for a moment so that server output piles up in flight,
    /// then drop.
    UnreadResponses,
    /// SSE: feed only part of the next chunk to the parser, then drop.
    MidChunk,
    /// SSE/poll: start a send request and drop it before (or just as) its
    /// response arrives.
    SendInFlight,
    /// Poll: drop the poll request while it is held.
    HeldPoll,
    /// Poll: drop the poll once its response headers arrived, body unread.
    ResponseUnread,
}

impl CutMode {
    /// The modes that make sense on `transport`.
    pub fn for_transport(transport: Transport) -> &'static [CutMode] {
        match transport {
            Transport::WebSocket => &[Self::Now, Self::AfterSending, Self::UnreadResponses],
            Transport::Sse => &[
                Self::Now,
                Self::MidChunk,
                Self::SendInFlight,
                Self::UnreadResponses,
            ],
            Transport::Poll => &[
                Self::Now,
                Self::HeldPoll,
                Self::ResponseUnread,
                Self::SendInFlight,
            ],
        }
    }
}

/// How `Last-Event-ID` is used when resuming on SSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastVia {
    /// `last` in the query only.
    Query,
    /// The `Last-Event-ID` header only (no `last` parameter).
    Header,
    /// Both.
    Both,
}

/// What one attachment should do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Cut after this many events (batches in or out), if set.
    pub cut_after: Option<usize>,
    /// How to cut.
    pub mode: CutMode,
    /// A cut attachment is cut after this long at the latest; an
    /// attachment without a cut fails after this long.
    pub max_duration: Duration,
    /// Once the exchange goal is reached: send `close` with this code and
    /// run until the server's `close` arrives.
    pub close_when_done: Option<u16>,
    /// Return [`Outcome::Done`] once the goal is reached.
    pub stop_when_done: bool,
    /// On SSE resumes, how to tell `last`.
    pub last_via: LastVia,
    /// Resume with `last` this much lower than what was delivered (an
    /// acknowledgement lower than one already given is ignored, §3): the
    /// server replays what it still holds and the client drops duplicates.
    pub stale_last: u64,
}

impl Plan {
    /// Run until the goal is reached, then close with 1000.
    pub fn until_done_then_close(max_duration: Duration) -> Self {
        Self {
            cut_after: None,
            mode: CutMode::Now,
            max_duration,
            close_when_done: Some(1000),
            stop_when_done: false,
            last_via: LastVia::Query,
            stale_last: 0,
        }
    }

    /// Run until the goal is reached.
    pub fn until_done(max_duration: Duration) -> Self {
        Self {
            cut_after: None,
            mode: CutMode::Now,
            max_duration,
            close_when_done: None,
            stop_when_done: true,
            last_via: LastVia::Query,
            stale_last: 0,
        }
    }

    /// Run until the session ends (`close` from the server) or the
    /// attachment does.
    pub fn until_closed(max_duration: Duration) -> Self {
        Self {
            cut_after: None,
            mode: CutMode::Now,
            max_duration,
            close_when_done: None,
            stop_when_done: false,
            last_via: LastVia::Query,
            stale_last: 0,
        }
    }

    /// Run until the greeting arrives, then return [`Outcome::Done`].
    pub fn greeting_only() -> Self {
        Self {
            cut_after: Some(0),
            mode: CutMode::Now,
            max_duration: raw::DEADLINE,
            close_when_done: None,
            stop_when_done: true,
            last_via: LastVia::Query,
            stale_last: 0,
        }
    }

    /// Whether to cut now; `Err` when an attachment without a cut ran out
    /// of time.
    fn cut_due(
        &self,
        started: Instant,
        now: Instant,
        greeted: bool,
        events: usize,
        what: &str,
    ) -> Result<bool, String> {
        let timed_out = now >= started + self.max_duration;
        match self.cut_after {
            None if timed_out => Err(format!(
                "{what} attachment not done after {:?}",
                self.max_duration
            )),
            None => Ok(false),
            Some(n) => Ok((greeted && events >= n) || timed_out),
        }
    }

    /// For [`Plan::greeting_only`], once its cut is due: `Done` if the
    /// greeting came, an error if not. `None` for every other plan.
    fn greeting_only_end(&self, greeted: bool) -> Option<Result<Outcome, String>> {
        let greeting_only = self.stop_when_done && self.cut_after == Some(0);
        greeting_only.then(|| {
            if greeted {
                Ok(Outcome::Done)
            } else {
                Err("no greeting in time".into())
            }
        })
    }

    /// A random cut for `transport`.
    pub fn random_cut(rng: &mut StdRng, transport: Transport) -> Self {
        let modes = CutMode::for_transport(transport);
        Self {
            cut_after: Some(rng.random_range(2..40)),
            mode: modes[rng.random_range(0..modes.len())],
            max_duration: Duration::from_millis(rng.random_range(40..250)),
            close_when_done: None,
            stop_when_done: false,
            last_via: match rng.random_range(0..3) {
                0 => LastVia::Query,
                1 => LastVia::Header,
                _ => LastVia::Both,
            },
            stale_last: if rng.random_ratio(1, 4) {
                rng.random_range(1..100)
            } else {
                0
            },
        }
    }
}

/// How an attachment ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// We cut it, per the plan.
    Cut,
    /// The goal was reached (or the greeting arrived, for
    /// [`Plan::greeting_only`]).
    Done,
    /// The server sent `detach` (and, on WebSocket, closed with the same code).
    Detached(u16, String),
    /// The session ended with `close` (on WebSocket, followed by a close
    /// with the same code).
    Closed(u16, String),
    /// The transport ended without a `detach` or `close` frame.
    Ended(String),
    /// The request was refused (HTTP status, or 101 for a WebSocket closed
    /// with a frame before any greeting) with these frames.
    Refused(u16, Vec<Frame>),
}

type SendResult = Result<(u16, HeaderMap, Bytes), String>;
type SendFuture = Pin<Box<dyn Future<Output = SendResult> + Send>>;
type PollFuture = Pin<Box<dyn Future<Output = reqwest::Result<reqwest::Response>> + Send>>;

async fn maybe<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a mid-chunk cut waits for a chunk before cutting anyway.
const MID_CHUNK_WAIT: Duration = Duration::from_millis(30);

/// The idle tick of the drivers: app feeding, ack delays.
const TICK: Duration = Duration::from_millis(5);

/// The upstream of an HTTP attachment (SSE or long-polling): at most one
/// send request at a time.
#[derive(Default)]
struct Upstream {
    /// The send request in flight.
    send: Option<SendFuture>,
    /// The highest seq it carries: its answer must ack at least that.
    carried: u64,
    /// Our `close` is out: release nothing more.
    closing: bool,
}

/// A wire client: [`Core`] plus transports.
pub struct Client {
    /// `http://127.0.0.1:<port>/realtime`.
    pub base: String,
    /// The HTTP client (no proxy).
    pub http: reqwest::Client,
    /// Session state.
    pub core: Core,
    /// Extra headers on every request (for example `Origin`).
    pub headers: Vec<(String, String)>,
    /// Randomness for pacing, cut points and encodings.
    pub rng: StdRng,
    /// Application messages not sent yet; released a few at a time.
    pub backlog: VecDeque<Payload>,
    /// Most messages released from the backlog per driver step.
    pub release_max: usize,
    /// Downstream messages to deliver before the exchange is done.
    pub expect_down: usize,
    /// On WebSocket, the chance of sending a binary message natively.
    pub native_binary: f64,
    /// One line per attachment, for failure reports.
    pub log: Vec<String>,
}

impl Client {
    /// A client for the server mounted at `base` (`http://…/realtime`).
    pub fn new(base: &str, seed: u64) -> Self {
        Self {
            base: base.to_owned(),
            http: raw::http_client(),
            core: Core::default(),
            headers: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            backlog: VecDeque::new(),
            release_max: 6,
            expect_down: 0,
            native_binary: 0.5,
            log: Vec::new(),
        }
    }

    /// Whether the exchange is complete: every backlog message sent and
    /// acknowledged, every expected downstream message delivered.
    pub fn is_done(&self) -> bool {
        self.backlog.is_empty()
            && self.core.all_acked()
            && self.core.delivered.len() >= self.expect_down
    }

    fn release(&mut self) {
        if self.backlog.is_empty() || self.core.open.is_none() {
            return;
        }
        let n = self.rng.random_range(0..=self.release_max);
        for _ in 0..n {
            match self.backlog.pop_front() {
                Some(p) => {
                    self.core.queue(p);
                }
                None => break,
            }
        }
    }

    fn query(&self, last: Option<u64>) -> String {
        match (self.core.key(), last) {
            (None, _) => "v=1".to_owned(),
            (Some(key), Some(last)) => raw::resume_query(key, last),
            (Some(key), None) => format!("v=1&key={}", encode(key)),
        }
    }

    fn header_refs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Runs one attachment on `transport` following `plan`. `Err` is a
    /// protocol violation by the server (or a broken test).
    pub async fn attach(&mut self, transport: Transport, plan: &Plan) -> Result<Outcome, String> {
        self.core.stats.attachments += 1;
        let before = (self.core.received, self.core.peer_ack);
        let started = Instant::now();
        let outcome = match transport {
            Transport::WebSocket => self.run_ws(plan).await,
            Transport::Sse => self.run_sse(plan).await,
            Transport::Poll => self.run_poll(plan).await,
        };
        if matches!(outcome, Ok(Outcome::Cut)) {
            self.core.stats.cuts += 1;
        }
        self.log.push(format!(
            "{transport:?} {:?}/{:?} ({:?}): down {}→{}, up acked {}→{} (sent {}): {outcome:?}",
            plan.mode,
            plan.cut_after,
            started.elapsed(),
            before.0,
            self.core.received,
            before.1,
            self.core.peer_ack,
            self.core.sent(),
        ));
        outcome
    }

    // ---- WebSocket ----------------------------------------------------

    async fn run_ws(&mut self, plan: &Plan) -> Result<Outcome, String> {
        let resuming = self.core.open.is_some();
        let last = self.core.received.saturating_sub(plan.stale_last);
        let url = format!(
            "{}/ws?{}",
            self.base.replacen("http://", "ws://", 1),
            self.query(Some(last))
        );
        let headers = self.header_refs();
        let socket = match raw::ws_connect(&url, &headers).await {
            Ok(socket) => socket,
            Err(refused) => {
                let frames = wire::parse_batch(&refused.body).unwrap_or_default();
                return Ok(Outcome::Refused(refused.status, frames));
            }
        };
        if resuming {
            self.core.begin_attachment(last);
        }
        let (sink, mut stream) = socket.split();
        let (tx, rx) = mpsc::unbounded_channel();
        let _writer = AbortOnDrop(tokio::spawn(ws_writer(sink, rx)).abort_handle());
        let started = Instant::now();
        let mut greeted = false;
        let mut events = 0usize;
        let mut closing = false;
        loop {
            let now = Instant::now();
            if plan.cut_due(started, now, greeted, events, "WebSocket")? {
                if let Some(end) = plan.greeting_only_end(greeted) {
                    return end;
                }
                match plan.mode {
                    CutMode::AfterSending => {
                        self.release();
                        self.ws_send_pending(&tx, now);
                        tokio::task::yield_now().await;
                    }
                    CutMode::UnreadResponses => self.leave_responses_unread().await,
                    _ => {}
                }
                return Ok(Outcome::Cut);
            }
            if greeted {
                if self.is_done() {
                    if plan.stop_when_done {
                        return Ok(Outcome::Done);
                    }
                    if let (Some(code), false) = (plan.close_when_done, closing) {
                        let mut frames: Vec<Frame> = self.core.take_ack().into_iter().collect();
                        frames.push(Frame::close(code, "done"));
                        let _ = tx.send(WsMessage::text(wire::encode_batch(&frames)));
                        closing = true;
                    }
                }
                if !closing {
                    self.release();
                    events += self.ws_send_pending(&tx, now);
                }
            }
            tokio::select! {
                incoming = stream.next() => {
                    events += 1;
                    let frames = match incoming {
                        None => return Ok(Outcome::Ended("WebSocket stream ended".into())),
                        Some(Err(e)) => return Ok(Outcome::Ended(format!("WebSocket error: {e}"))),
                        Some(Ok(WsMessage::Text(text))) => {
                            let frames = wire::parse_batch(text.as_bytes())?;
                            self.core.note_grants(&wire::grants(text.as_bytes())?);
                            self.core.check_batch_size(&frames, text.len());
                            frames
                        }
                        Some(Ok(WsMessage::Binary(bytes))) => {
                            let (seq, data) = wire::decode_binary(&bytes)?;
                            self.core.stats.native_binary_received += 1;
                            vec![Frame::Bin { seq, data }]
                        }
                        Some(Ok(WsMessage::Close(close))) => {
                            return Ok(Outcome::Ended(format!(
                                "WebSocket closed without a close or detach frame: {close:?}"
                            )));
                        }
                        Some(Ok(_)) => continue,
                    };
                    for frame in frames {
                        if !greeted && !matches!(frame, Frame::Open(_) | Frame::Resumed { .. } | Frame::Close { .. }) {
                            return Err(format!("first frame on a WebSocket is {frame:?}, not open/resumed/close"));
                        }
                        match self.core.handle(frame)? {
                            Signal::Continue => {}
                            Signal::Greeting => {
                                if greeted {
                                    return Err("a second greeting on one WebSocket".into());
                                }
                                greeted = true;
                            }
                            Signal::Detach(code, reason) => {
                                expect_ws_close(&mut stream, code).await?;
                                return Ok(Outcome::Detached(code, reason));
                            }
                            Signal::Close(code, reason) => {
                                expect_ws_close(&mut stream, code).await?;
                                if !greeted {
                                    return Ok(Outcome::Refused(101, vec![Frame::close(code, &reason)]));
                                }
                                return Ok(Outcome::Closed(code, reason));
                            }
                        }
                    }
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Queues pongs, message batches and a due ack on the writer; returns
    /// how many wire units were queued.
    fn ws_send_pending(&mut self, tx: &mpsc::UnboundedSender<WsMessage>, now: Instant) -> usize {
        let mut units = 0;
        let mut text: Vec<Frame> = Vec::new();
        for _ in 0..std::mem::take(&mut self.core.pongs_owed) {
            text.push(Frame::Pong);
        }
        loop {
            let batch = self.core.take_batch();
            if batch.is_empty() {
                break;
            }
            for (seq, payload) in batch {
                match payload {
                    Payload::Binary(data) if self.rng.random_bool(self.native_binary) => {
                        if !text.is_empty() {
                            let _ = tx.send(WsMessage::text(wire::encode_batch(&text)));
                            text.clear();
                            units += 1;
                        }
                        let _ = tx.send(WsMessage::binary(wire::encode_binary(seq, &data)));
                        self.core.stats.native_binary_sent += 1;
                        units += 1;
                    }
                    other => text.push(other.frame(seq)),
                }
            }
            if !text.is_empty() {
                let _ = tx.send(WsMessage::text(wire::encode_batch(&text)));
                text.clear();
                units += 1;
            }
        }
        if (units > 0 && self.core.has_unacked_downstream()) || self.core.ack_due(now) {
            text.extend(self.core.take_ack());
        }
        if !text.is_empty() {
            let _ = tx.send(WsMessage::text(wire::encode_batch(&text)));
            units += 1;
        }
        units
    }

    // ---- SSE ------------------------------------------------------------

    async fn run_sse(&mut self, plan: &Plan) -> Result<Outcome, String> {
        let resuming = self.core.open.is_some();
        let last = self.core.received.saturating_sub(plan.stale_last);
        let (last_in_query, last_in_header) = match (resuming, plan.last_via) {
            (false, _) => (false, false),
            (true, LastVia::Query) => (true, false),
            (true, LastVia::Header) => (false, true),
            (true, LastVia::Both) => (true, true),
        };
        let url = format!(
            "{}/sse?{}",
            self.base,
            self.query(last_in_query.then_some(last))
        );
        let last_string = last.to_string();
        let mut headers = self.header_refs();
        if last_in_header {
            headers.push(("last-event-id", &last_string));
        }
        let mut sse = match Sse::open(&self.http, &url, &headers).await {
            Ok(sse) => sse,
            Err(reply) => {
                return Ok(Outcome::Refused(
                    reply.status,
                    reply.frames.unwrap_or_default(),
                ));
            }
        };
        check_header(&sse.headers, "cache-control", "no-cache, no-transform")?;
        check_header(&sse.headers, "x-accel-buffering", "no")?;
        if resuming {
            self.core.begin_attachment(last);
        }
        let mut started = Instant::now();
        let mut greeted = false;
        let mut events = 0usize;
        let mut upstream = Upstream::default();
        let mut cut_mid_chunk = false;
        loop {
            let now = Instant::now();
            if cut_mid_chunk && now >= started + plan.max_duration + MID_CHUNK_WAIT {
                // The stream went quiet: no chunk to cut in the middle of.
                return Ok(Outcome::Cut);
            }
            if !cut_mid_chunk && plan.cut_due(started, now, greeted, events, "SSE")? {
                if let Some(end) = plan.greeting_only_end(greeted) {
                    return end;
                }
                match plan.mode {
                    CutMode::MidChunk => {
                        cut_mid_chunk = true;
                        started = now - plan.max_duration;
                    }
                    CutMode::SendInFlight | CutMode::AfterSending => {
                        return Ok(self.cut_with_send_in_flight(&mut upstream).await);
                    }
                    CutMode::UnreadResponses => {
                        self.leave_responses_unread().await;
                        return Ok(Outcome::Cut);
                    }
                    _ => return Ok(Outcome::Cut),
                }
            }
            if greeted && upstream.send.is_none() {
                if self.is_done() && plan.stop_when_done {
                    return Ok(Outcome::Done);
                }
                if self.send_due(&mut upstream, plan) {
                    events += 1;
                }
            }
            tokio::select! {
                chunk = sse.next_chunk() => {
                    events += 1;
                    let chunk = match chunk {
                        None => return Ok(Outcome::Ended("SSE stream ended without detach or close".into())),
                        Some(Err(e)) => return Ok(Outcome::Ended(format!("SSE stream failed: {e}"))),
                        Some(Ok(chunk)) => chunk,
                    };
                    if cut_mid_chunk {
                        let at = self.rng.random_range(0..=chunk.len());
                        sse.feed(&chunk[..at]);
                    } else {
                        sse.feed(&chunk);
                    }
                    while let Some((id, frames, encoded, grants)) = take_sse_event(&mut sse)? {
                        check_sse_id(id.as_deref(), &frames)?;
                        self.core.note_grants(&grants);
                        self.core.check_batch_size(&frames, encoded);
                        for frame in frames {
                            if !greeted && !matches!(frame, Frame::Open(_) | Frame::Resumed { .. } | Frame::Close { .. }) {
                                return Err(format!("first frame on an SSE stream is {frame:?}"));
                            }
                            match self.core.handle(frame)? {
                                Signal::Continue => {}
                                Signal::Greeting => {
                                    if greeted {
                                        return Err("a second greeting on one SSE stream".into());
                                    }
                                    greeted = true;
                                }
                                Signal::Detach(code, reason) => {
                                    expect_sse_end(&mut sse).await?;
                                    return Ok(Outcome::Detached(code, reason));
                                }
                                Signal::Close(code, reason) => return Ok(Outcome::Closed(code, reason)),
                            }
                        }
                    }
                    if cut_mid_chunk {
                        return Ok(Outcome::Cut);
                    }
                }
                result = maybe(&mut upstream.send) => {
                    if let Some(outcome) = self.finish_send(&mut upstream, result)? {
                        return Ok(outcome);
                    }
                }
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    // ---- long-polling -----------------------------------------------------

    async fn run_poll(&mut self, plan: &Plan) -> Result<Outcome, String> {
        let mut started = Instant::now();
        let mut events = 0usize;
        let mut upstream = Upstream::default();
        let mut first_poll = true;
        loop {
            // Once our `close` is out, wait for its answer rather than race
            // it with another poll (the server forgets a session whose
            // closing handshake is done).
            if upstream.closing
                && let Some(future) = upstream.send.as_mut()
            {
                let result = raw::within(raw::DEADLINE, "the reply to our close", future).await;
                if let Some(outcome) = self.finish_send(&mut upstream, result)? {
                    return Ok(outcome);
                }
                return Err("the reply to our close holds no close frame".into());
            }
            // Close between polls, not alongside one: a poll that reaches
            // the server after it processed our `close` may find the session
            // already forgotten (410).
            if let (Some(_), false, true) = (plan.close_when_done, upstream.closing, self.is_done())
            {
                if let Some(future) = upstream.send.as_mut() {
                    let result = raw::within(raw::DEADLINE, "a send reply", future).await;
                    if let Some(outcome) = self.finish_send(&mut upstream, result)? {
                        return Ok(outcome);
                    }
                }
                if self.send_due(&mut upstream, plan) {
                    continue;
                }
            }
            // One poll.
            let opening = self.core.open.is_none();
            let stale = if first_poll { plan.stale_last } else { 0 };
            let last = self.core.received.saturating_sub(stale);
            let url = format!("{}/poll?{}", self.base, self.query(Some(last)));
            if !opening {
                self.core.begin_poll(last, first_poll);
            }
            let mut request = self.http.get(&url);
            for (k, v) in &self.headers {
                request = request.header(k, v);
            }
            let mut poll: Option<PollFuture> = Some(Box::pin(request.send()));
            let mut drop_on_headers = false;
            let response = loop {
                let now = Instant::now();
                let greeted = self.core.open.is_some() && !first_poll;
                if drop_on_headers && now >= started + plan.max_duration + MID_CHUNK_WAIT {
                    // A held poll with nothing to answer: drop it held.
                    return Ok(Outcome::Cut);
                }
                if !drop_on_headers && plan.cut_due(started, now, greeted, events, "poll")? {
                    if let Some(end) = plan.greeting_only_end(greeted) {
                        return end;
                    }
                    match plan.mode {
                        CutMode::ResponseUnread => {
                            drop_on_headers = true;
                            started = now - plan.max_duration;
                        }
                        CutMode::SendInFlight | CutMode::AfterSending => {
                            return Ok(self.cut_with_send_in_flight(&mut upstream).await);
                        }
                        CutMode::HeldPoll | CutMode::UnreadResponses => {
                            // Let the poll reach the server, then drop it.
                            if let Some(future) = poll.as_mut() {
                                let wait = Duration::from_micros(self.rng.random_range(0..4000));
                                let _ = tokio::time::timeout(wait, future).await;
                            }
                            return Ok(Outcome::Cut);
                        }
                        _ => return Ok(Outcome::Cut),
                    }
                }
                if self.core.open.is_some() && upstream.send.is_none() {
                    if self.is_done() && plan.stop_when_done && !first_poll {
                        return Ok(Outcome::Done);
                    }
                    if self.send_due(&mut upstream, plan) {
                        events += 1;
                    }
                }
                tokio::select! {
                    response = maybe(&mut poll) => {
                        events += 1;
                        break response;
                    }
                    result = maybe(&mut upstream.send) => {
                        if let Some(outcome) = self.finish_send(&mut upstream, result)? {
                            return Ok(outcome);
                        }
                    }
                    () = tokio::time::sleep(TICK) => {}
                }
            };
            let response = match response {
                Ok(response) => response,
                Err(e) => return Ok(Outcome::Ended(format!("poll failed: {e}"))),
            };
            if drop_on_headers {
                return Ok(Outcome::Cut);
            }
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = match tokio::time::timeout(raw::DEADLINE, response.bytes()).await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => return Ok(Outcome::Ended(format!("poll body failed: {e}"))),
                Err(_) => return Err("a poll response body did not arrive".into()),
            };
            let frames = wire::parse_batch(&body);
            if status != 200 {
                return Ok(Outcome::Refused(status, frames.unwrap_or_default()));
            }
            check_header(&headers, "cache-control", "no-store")?;
            check_header(&headers, "content-type", "application/json")?;
            let frames = frames?;
            self.core.note_grants(&wire::grants(&body)?);
            self.core.check_batch_size(&frames, body.len());
            if opening && !matches!(frames.first(), Some(Frame::Open(_))) {
                return Err(format!(
                    "the first poll's answer does not start with open: {frames:?}"
                ));
            }
            for (i, frame) in frames.into_iter().enumerate() {
                if matches!(frame, Frame::Open(_) | Frame::Resumed { .. }) && i != 0 {
                    return Err(format!(
                        "{} frame not first in its poll response",
                        frame.kind()
                    ));
                }
                if let Frame::Resumed { .. } = frame
                    && !first_poll
                {
                    return Err(
                        "`resumed` in a poll that continues an ongoing poll attachment (§5.2)"
                            .into(),
                    );
                }
                match self.core.handle(frame)? {
                    Signal::Continue | Signal::Greeting => {}
                    Signal::Detach(code, reason) => return Ok(Outcome::Detached(code, reason)),
                    Signal::Close(code, reason) => return Ok(Outcome::Closed(code, reason)),
                }
            }
            first_poll = false;
        }
    }

    // ---- send -------------------------------------------------------------

    /// Starts a send request on `upstream` with whatever is due, releasing
    /// more of the backlog unless our `close` is out, and `close` itself
    /// once the exchange is done if the plan says so. Whether a request
    /// started.
    fn send_due(&mut self, upstream: &mut Upstream, plan: &Plan) -> bool {
        let close_now = plan
            .close_when_done
            .filter(|_| self.is_done() && !upstream.closing);
        if !upstream.closing {
            self.release();
        }
        match self.start_send(close_now, false) {
            Some((future, carried)) => {
                upstream.send = Some(future);
                upstream.carried = carried;
                upstream.closing |= close_now.is_some();
                true
            }
            None => false,
        }
    }

    /// The SSE and poll cut with a send request in flight: one is started
    /// if none is (carrying at least an ack), given a few milliseconds to
    /// reach the server, and dropped — its messages count as not sent.
    async fn cut_with_send_in_flight(&mut self, upstream: &mut Upstream) -> Outcome {
        self.release();
        if upstream.send.is_none()
            && let Some((future, _)) = self.start_send(None, true)
        {
            upstream.send = Some(future);
        }
        if let Some(future) = upstream.send.as_mut() {
            let wait = Duration::from_micros(self.rng.random_range(0..3000));
            let _ = tokio::time::timeout(wait, future).await;
            self.core.stats.send_failures += 1;
            self.core.rewind();
        }
        Outcome::Cut
    }

    /// The unread-responses cut: stop reading for a few milliseconds so that
    /// the server's output piles up in flight (the caller then drops it).
    async fn leave_responses_unread(&mut self) {
        let pause = self.rng.random_range(1..8);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }

    /// Starts a send request with whatever is due (pongs, messages, ack,
    /// and `close` with this code if given); `force` sends at least an ack. Returns the request and the
    /// highest seq it carries.
    fn start_send(&mut self, close: Option<u16>, force: bool) -> Option<(SendFuture, u64)> {
        let key = self.core.key()?.to_owned();
        let now = Instant::now();
        let mut frames: Vec<Frame> = Vec::new();
        for _ in 0..std::mem::take(&mut self.core.pongs_owed) {
            frames.push(Frame::Pong);
        }
        let batch = self.core.take_batch();
        let carried = batch.last().map_or(0, |(seq, _)| *seq);
        frames.extend(batch.into_iter().map(|(seq, p)| p.frame(seq)));
        if (!frames.is_empty() && self.core.has_unacked_downstream())
            || self.core.ack_due(now)
            || close.is_some()
            || force
        {
            match self.core.take_ack() {
                Some(ack) => frames.push(ack),
                None if frames.is_empty() => frames.push(Frame::Ack {
                    seq: self.core.received,
                }),
                None => {}
            }
        }
        if let Some(code) = close {
            frames.push(Frame::close(code, "done"));
        }
        if frames.is_empty() {
            return None;
        }
        self.core.stats.send_requests += 1;
        let url = format!("{}/send?v=1&key={}", self.base, encode(&key));
        let body = wire::encode_batch(&frames);
        let mut request = self
            .http
            .post(url)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body);
        for (k, v) in &self.headers {
            request = request.header(k, v);
        }
        let future: SendFuture = Box::pin(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            Ok((status, headers, body))
        });
        Some((future, carried))
    }

    /// Handles the answer to `upstream`'s send request; `Some` ends the
    /// attachment.
    fn finish_send(
        &mut self,
        upstream: &mut Upstream,
        result: SendResult,
    ) -> Result<Option<Outcome>, String> {
        upstream.send = None;
        let carried = upstream.carried;
        let (status, headers, body) = match result {
            Ok(reply) => reply,
            Err(_) => {
                self.core.stats.send_failures += 1;
                self.core.rewind();
                return Ok(None);
            }
        };
        let frames = wire::parse_batch(&body);
        match status {
            200 => {}
            503 => {
                self.core.stats.send_failures += 1;
                self.core.rewind();
                return Ok(None);
            }
            400 => {
                return Err(format!(
                    "a conforming send was refused with 400: {:?}",
                    String::from_utf8_lossy(&body)
                ));
            }
            _ => return Ok(Some(Outcome::Refused(status, frames.unwrap_or_default()))),
        }
        check_header(&headers, "cache-control", "no-store")?;
        let frames = frames?;
        self.core.note_grants(&wire::grants(&body)?);
        match frames.first() {
            Some(Frame::Ack { seq }) if *seq >= carried => {}
            Some(Frame::Ack { seq }) => {
                return Err(format!(
                    "send response acks {seq} although the request carried up to {carried} (§8.4)"
                ));
            }
            _ => return Err(format!("send response does not begin with ack: {frames:?}")),
        }
        for frame in frames {
            match self.core.handle(frame)? {
                Signal::Close(code, reason) => return Ok(Some(Outcome::Closed(code, reason))),
                Signal::Continue => {}
                other => return Err(format!("unexpected {other:?} in a send response")),
            }
        }
        Ok(None)
    }
}

impl Core {
    /// A poll carries `last`: it acknowledges, and nothing up to it may come
    /// back. The first poll of an attachment also rewinds upstream.
    pub fn begin_poll(&mut self, last: u64, first: bool) {
        if first {
            self.begin_attachment(last);
        } else {
            self.floor = last;
            self.acked_by_last(last);
        }
    }
}

async fn ws_writer(
    mut sink: SplitSink<WsStream, WsMessage>,
    mut rx: mpsc::UnboundedReceiver<WsMessage>,
) {
    while let Some(message) = rx.recv().await {
        if sink.feed(message).await.is_err() {
            return;
        }
        while let Ok(message) = rx.try_recv() {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// After a `close` or `detach` frame, the server closes the WebSocket with
/// the same code (§7, §8.1).
async fn expect_ws_close(
    stream: &mut futures_util::stream::SplitStream<WsStream>,
    code: u16,
) -> Result<(), String> {
    let end = tokio::time::timeout(raw::DEADLINE, async {
        loop {
            match stream.next().await {
                Some(Ok(WsMessage::Close(frame))) => return Ok(frame),
                Some(Ok(WsMessage::Text(t))) => {
                    return Err(format!("text after a close/detach frame: {t}"));
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err("binary message after a close/detach frame".to_owned());
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Ok(None),
            }
        }
    })
    .await
    .map_err(|_| format!("the WebSocket stayed open after a frame with code {code}"))??;
    match end {
        Some(frame) if u16::from(frame.code) == code => Ok(()),
        other => Err(format!(
            "after a frame with code {code} the WebSocket closed with {other:?}"
        )),
    }
}

/// After a `detach` event the SSE stream ends (§8.2).
async fn expect_sse_end(sse: &mut Sse) -> Result<(), String> {
    if sse.has_pending() {
        return Err("SSE events after a detach event".into());
    }
    let end = tokio::time::timeout(raw::DEADLINE, async {
        loop {
            match sse.next_chunk().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("SSE stream failed after detach: {e}")),
                Some(Ok(chunk)) => {
                    sse.feed(&chunk);
                    if sse.has_pending() {
                        return Err("SSE events after a detach event".into());
                    }
                }
            }
        }
    })
    .await;
    end.map_err(|_| "the SSE stream stayed open after a detach event".to_owned())?
}

/// One SSE event: its `id:`, its batch, the batch's encoded length and its
/// flow-control grants.
type SseBatch = (Option<String>, Vec<Frame>, usize, Vec<(u64, u64)>);

fn take_sse_event(sse: &mut Sse) -> Result<Option<SseBatch>, String> {
    match sse.take_event() {
        None => Ok(None),
        Some(event) => {
            if event.data_lines != 1 {
                return Err(format!(
                    "an SSE event with {} data lines (§8.2: always a single line)",
                    event.data_lines
                ));
            }
            let frames = wire::parse_batch(event.data.as_bytes())?;
            let grants = wire::grants(event.data.as_bytes())?;
            Ok(Some((event.id, frames, event.data.len(), grants)))
        }
    }
}

/// §8.2: `id:` is present when the batch holds messages and is the seq of
/// its last message.
fn check_sse_id(id: Option<&str>, frames: &[Frame]) -> Result<(), String> {
    let last = frames.iter().filter_map(Frame::message_seq).next_back();
    match (id, last) {
        (None, None) => Ok(()),
        (Some(id), Some(seq)) if id == seq.to_string() => Ok(()),
        (id, seq) => Err(format!(
            "SSE event id {id:?} does not match its batch (last message seq {seq:?}): {:?}",
            frames.iter().map(Frame::kind).collect::<Vec<_>>()
        )),
    }
}

fn check_header(headers: &HeaderMap, name: &str, expected: &str) -> Result<(), String> {
    let value = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if value.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(format!(
            "header {name}: expected {expected:?}, got {value:?}"
        ))
    }
}
