//! The client's connection policy as a state machine with no IO: which
//! transport to attach, when to fall back, how long to back off, when to
//! probe a better transport and switch up, when to give up — the same
//! machine in the Rust client (this module) and the JS client (a port in
//! `holdfast.js`), both checked against the scenario vectors in
//! `protocol/vectors/`.
//!
//! The driver reports what happened to each attempt and asks what to do:
//!
//! ```text
//!   opened / trusted / ended(AttemptEnd) ──▶           ──▶ poll(now): Action
//!   probed(id, works) / wake(cause)     ──▶ Connector ──▶ poll_timeout()
//!   send_failed(failure) ───────────────▶           ──▶ SendVerdict (at once)
//! ```
//!
//! The rules (`docs/networks.md`, "The client's fallback rules"):
//!
//! - a transport that never delivers its first frame (refused upgrade,
//!   error page, timeout, silence, closed early) is *blocked*: the next one
//!   is tried at once, and the step goes in the fallback report;
//! - a transport that cannot even connect means the server (or the
//!   network) is down: no fallback, the best transport again after a
//!   backoff;
//! - before the session ever opened, the client keeps trying for
//!   `connect_timeout`, then gives up; afterwards it never gives up (the
//!   server says when the session is lost);
//! - a transport that dies twice within 10 s of opening without carrying
//!   frames both ways is demoted;
//! - a transport that carried frames both ways is remembered, and resets
//!   the backoff;
//! - on a fallback transport, better transports are probed now and then,
//!   and the session switches up when one works;
//! - a send request that failed is sent again (up to `send_retries` times,
//!   then the attachment is given up); one refused with 4503 is sent again
//!   after its `retry_after`, as often as it takes; meanwhile acks, pings
//!   and pongs still go, in ack-only requests ([`Carried`]);
//! - a server's `retry_after` is a floor: the client waits a random delay
//!   between it and half as long again ([`RETRY_AFTER_SPREAD`]), so that
//!   the clients it refused together do not come back together;
//! - an attachment has `probe_timeout` to deliver its first frame; a
//!   transport that carried frames both ways in this session gets
//!   [`PROVEN_GREETING_FACTOR`] times that when attached again, and each
//!   greeting timeout in a row doubles it, up to [`MAX_GREETING_FACTOR`]
//!   times (`Action::Attach`'s `greeting_timeout`), so that a busy server
//!   is not sent a new handshake every 2 s by each of its returning
//!   clients.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use holdfast_protocol::TransportKind;
//! use holdfast_protocol::connector::{Action, AttemptEnd, Connector, ConnectorConfig};
//!
//! let t0 = Instant::now();
//! let mut connector = Connector::new(ConnectorConfig::default(), t0, Box::new(|| 0.5));
//! assert_eq!(
//!     connector.poll(t0),
//!     Some(Action::Attach {
//!         transport: TransportKind::WebSocket,
//!         fresh_session: false,
//!         greeting_timeout: Duration::from_secs(2),
//!     })
//! );
//! // A proxy refuses the upgrade: SSE next, at once.
//! let t1 = t0 + Duration::from_millis(30);
//! connector.ended(t1, AttemptEnd::Status { status: 426, retry_after: None });
//! assert_eq!(
//!     connector.poll(t1),
//!     Some(Action::Attach {
//!         transport: TransportKind::Sse,
//!         fresh_session: false,
//!         greeting_timeout: Duration::from_secs(2),
//!     })
//! );
//! ```

mod attempt;
mod backoff;
pub mod report;
mod reprobe;
mod send;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use attempt::{AttemptEnd, Cause, Failure, Fallback};
pub use backoff::{Backoff, RETRY_AFTER_SPREAD, spread_retry_after};
pub use reprobe::MAX_REPROBE;
pub use send::{Carried, SEND_RETRY, SendFailure, SendPolicy, SendVerdict};

use crate::{Close, CloseCode, TransportKind};
use reprobe::Reprobe;

/// A transport that died without carrying frames both ways within this
/// long after opening counts as a flap.
pub const FLAP_WINDOW: Duration = Duration::from_secs(10);
/// Flaps after which a transport is demoted.
pub const FLAPS_TO_DEMOTE: u32 = 2;
/// The most steps a fallback report holds (the first ones are kept).
pub const MAX_FALLBACKS: usize = 16;
/// The most failures kept for a reconnect reason or a give-up.
const MAX_FAILURES: usize = 8;
/// A transport that carried frames both ways in this session has this many
/// probe timeouts to deliver its first frame when attached again.
///
/// It is known to pass here, so an attempt that is slow is far more likely
/// a busy server or network (every client returning at once after a blip
/// or a restart: a full accept queue, a dropped SYN retransmitted after
/// 1 s and 3 s) than a buffering proxy; abandoning it at the plain probe
/// timeout throws away a handshake the server already paid for and sends
/// it another. Twice covers the SYN retransmission at 1 s with room for
/// the upgrade and the greeting.
pub const PROVEN_GREETING_FACTOR: u32 = 2;
/// The longest greeting deadline, in probe timeouts (16 s by default).
///
/// Each greeting timeout in a row on a transport doubles its deadline up
/// to this: 16 s covers the kernel's SYN retransmissions at 1, 3, 7 and
/// 15 s, stays well under the connect timeout (30 s: a session that never
/// opened still gets more than one attempt) and the server's resume window
/// (120 s).
pub const MAX_GREETING_FACTOR: u32 = 8;

/// The connection policy's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorConfig {
    /// The transports to use, best first. Default all three.
    pub transports: Vec<TransportKind>,
    /// The transport that worked last time for this server, if remembered:
    /// tried first.
    pub remembered: Option<TransportKind>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// On a fallback transport, how long before the better ones are probed
    /// (doubling after each failed round, up to [`MAX_REPROBE`]). Default
    /// 15 s.
    pub reprobe_after: Duration,
    /// How long to keep trying before the session ever opened; `None`:
    /// forever. Default 30 s.
    pub connect_timeout: Option<Duration>,
    /// How many times a failed send request is sent again before its
    /// attachment is given up. Default 3.
    pub send_retries: u32,
    /// How long a first attempt on a transport has to deliver its first
    /// frame (the client's probe timeout: how a buffering proxy is
    /// caught). Default 2 s. Proven transports and greeting timeouts in a
    /// row get longer ([`PROVEN_GREETING_FACTOR`],
    /// [`MAX_GREETING_FACTOR`]).
    pub probe_timeout: Duration,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            transports: TransportKind::ALL.to_vec(),
            remembered: None,
            backoff: Backoff::default(),
            reprobe_after: Duration::from_secs(15),
            connect_timeout: Some(Duration::from_secs(30)),
            send_retries: 3,
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// What the driver is to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Attach this transport now. `fresh_session`: start a new session
    /// (the server refused to open the last one for now).
    Attach {
        /// The transport.
        transport: TransportKind,
        /// Whether to open a new session rather than resume.
        fresh_session: bool,
        /// How long the attachment has to deliver its first frame (connect,
        /// upgrade or response headers included) before it failed with
        /// [`AttemptEnd::Timeout`] or [`AttemptEnd::NoFirstFrame`]: the
        /// probe timeout, longer for a transport proven in this session and
        /// after greeting timeouts in a row (see the [module
        /// documentation](self)).
        greeting_timeout: Duration,
    },
    /// Stop the current attachment (a better transport works): it ends with
    /// [`AttemptEnd::Stopped`], and the better one is attached next.
    Stop,
    /// Probe this better transport without touching the session
    /// (`PROTOCOL.md` §8.5), then report with
    /// [`probed`](Connector::probed).
    Probe {
        /// Names this probe in [`probed`](Connector::probed).
        id: u64,
        /// The transport to probe.
        transport: TransportKind,
    },
    /// Remember this transport for this server (it carried frames both
    /// ways).
    Remember(TransportKind),
    /// Tell the application the session is reconnecting; the next
    /// [`Attach`](Self::Attach) comes after `delay`.
    Reconnecting {
        /// Attempts since the connection last worked, from 1.
        attempt: u32,
        /// How long until the next attempt.
        delay: Duration,
        /// Why, for people.
        reason: String,
    },
    /// The network came back while attached: check the attachment (ping a
    /// socket, poll again, restart a stream), which may have died unseen.
    Check,
    /// Give up: the session never opened and will not.
    GiveUp(GiveUp),
}

/// Why the connector gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// holdfast refused to open the session.
    Refused(Close),
    /// No transport reached the server within the connect timeout: the
    /// last failures, oldest first.
    NoTransport(Vec<Failure>),
}

#[derive(Debug)]
enum Phase {
    /// Attach at the next poll.
    Ready,
    /// An attachment runs.
    Attached(Attempt),
    /// Backing off until then.
    Waiting(Instant),
    /// Gave up, or the session is over.
    Done,
}

#[derive(Debug)]
struct Attempt {
    index: usize,
    started: Instant,
    /// When its first frame arrived: until then it is an attempt that may
    /// fail, afterwards a connection that may drop.
    opened: Option<Instant>,
    trusted: bool,
    stopping: bool,
}

/// The connection policy of one client session. See the [module
/// documentation](self).
pub struct Connector {
    config: ConnectorConfig,
    random: Box<dyn FnMut() -> f64 + Send>,
    started: Instant,
    phase: Phase,
    /// The transport in use, as an index in `config.transports`.
    index: usize,
    /// Backoff attempts since the connection last worked.
    attempt: u32,
    /// Early deaths per transport.
    flaps: Vec<u32>,
    /// Per transport: whether it carried frames both ways in this session.
    proven: Vec<bool>,
    /// Per transport: greeting timeouts in a row (since an attachment last
    /// opened).
    greeting_timeouts: Vec<u32>,
    /// Whether any attachment ever opened (the session exists).
    session_open: bool,
    fresh_session: bool,
    /// Failures since the last wait.
    failures: Vec<Failure>,
    /// The most any of them asked to wait.
    failures_retry_after: Duration,
    reprobe: Reprobe,
    /// The better transport to attach once the stopped one ended.
    switch_to: Option<usize>,
    report: Vec<Fallback>,
    send: SendPolicy,
    actions: VecDeque<Action>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("phase", &self.phase)
            .field("index", &self.index)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector starting at `now`. `random` gives uniform numbers in
    /// `[0, 1)` for jitter (the tests pass a constant).
    pub fn new(
        config: ConnectorConfig,
        now: Instant,
        mut random: Box<dyn FnMut() -> f64 + Send>,
    ) -> Self {
        let reprobe = Reprobe::new(now, config.reprobe_after, random());
        let send = SendPolicy::new(config.send_retries, config.backoff.initial);
        let mut connector = Self {
            flaps: vec![0; config.transports.len()],
            proven: vec![false; config.transports.len()],
            greeting_timeouts: vec![0; config.transports.len()],
            config,
            random,
            started: now,
            phase: Phase::Ready,
            index: 0,
            attempt: 0,
            session_open: false,
            fresh_session: false,
            failures: Vec::new(),
            failures_retry_after: Duration::ZERO,
            reprobe,
            switch_to: None,
            report: Vec::new(),
            send,
            actions: VecDeque::new(),
        };
        if connector.config.transports.is_empty() {
            connector.give_up(GiveUp::NoTransport(Vec::new()));
        }
        connector.index = connector.best_index();
        connector
    }

    // ---- inputs --------------------------------------------------------

    /// The current attachment's first frame arrived: the transport works.
    pub fn opened(&mut self, now: Instant) {
        if let Phase::Attached(a) = &mut self.phase {
            a.opened.get_or_insert(now);
            self.session_open = true;
            self.fresh_session = false;
            // Whatever made attempts slow (a busy server, a congested
            // network) has passed: every deadline starts again from the
            // probe timeout.
            self.greeting_timeouts.fill(0);
        }
    }

    /// The current attachment carried frames both ways.
    pub fn trusted(&mut self, now: Instant) {
        let Phase::Attached(a) = &mut self.phase else {
            return;
        };
        a.opened.get_or_insert(now);
        if a.trusted {
            return;
        }
        a.trusted = true;
        self.session_open = true;
        self.flaps[a.index] = 0;
        self.greeting_timeouts.fill(0);
        self.proven[a.index] = true;
        if self.config.transports.len() > 1 {
            let kind = self.config.transports[a.index];
            self.config.remembered = Some(kind);
            self.actions.push_back(Action::Remember(kind));
        }
    }

    /// The current attachment ended.
    pub fn ended(&mut self, now: Instant, end: AttemptEnd) {
        // Only an attachment can end (a driver reporting an ending twice
        // must not cut a backoff short or revive a finished connector).
        if !matches!(self.phase, Phase::Attached(_)) {
            return;
        }
        let Phase::Attached(a) = std::mem::replace(&mut self.phase, Phase::Ready) else {
            return;
        };
        self.send.reset();
        if end == AttemptEnd::SessionClosed {
            self.phase = Phase::Done;
            return;
        }
        match a.opened {
            None => self.failed(now, a, end),
            Some(opened) => self.dropped(now, a, opened, end),
        }
    }

    /// What the probe `id` found. Results of probes forgotten since (after
    /// a fallback or a switch) are ignored.
    pub fn probed(&mut self, now: Instant, id: u64, works: bool) {
        let Some(candidate) = self.reprobe.current(id) else {
            return;
        };
        if works {
            self.reprobe.works(candidate);
        } else {
            let random = (self.random)();
            if let Some((id, next)) = self.reprobe.next(now, candidate, self.index, random) {
                self.request_probe(id, next);
            }
        }
    }

    /// The network came back (`online`) or the page became visible: a
    /// backoff ends now (an `online` also starts the backoff afresh), and
    /// an attachment that may have died unseen is checked.
    pub fn wake(&mut self, _now: Instant, network_changed: bool) {
        match &self.phase {
            Phase::Waiting(_) => {
                if network_changed {
                    self.attempt = 0;
                }
                self.phase = Phase::Ready;
            }
            Phase::Attached(a) if a.opened.is_some() => self.actions.push_back(Action::Check),
            _ => {}
        }
    }

    /// A send request of the current attachment, which carried `carried`,
    /// failed: what to do with what it carried. (A driver may as well give
    /// each attachment its own [`send_policy`](Self::send_policy), and
    /// draw its own random numbers.)
    pub fn send_failed(&mut self, carried: Carried, failure: SendFailure) -> SendVerdict {
        let random = (self.random)();
        self.send.failed(carried, failure, random)
    }

    /// A send request that carried `carried` was answered: its retry count
    /// starts again.
    pub fn send_succeeded(&mut self, carried: Carried) {
        self.send.succeeded(carried);
    }

    /// A fresh send policy for an attachment, with this configuration.
    pub fn send_policy(&self) -> SendPolicy {
        SendPolicy::new(self.config.send_retries, self.config.backoff.initial)
    }

    // ---- outputs -------------------------------------------------------

    /// The next thing to do at `now`, if any. Call after every input, and
    /// when [`poll_timeout`](Self::poll_timeout) passes, until `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if let Phase::Waiting(until) = self.phase
            && now >= until
        {
            self.phase = Phase::Ready;
        }
        if matches!(self.phase, Phase::Ready) {
            if let Some(found) = self.reprobe.take_found()
                && found < self.index
            {
                self.switch(now, found);
            }
            self.phase = Phase::Attached(Attempt {
                index: self.index,
                started: now,
                opened: None,
                trusted: false,
                stopping: false,
            });
            return Some(Action::Attach {
                transport: self.config.transports[self.index],
                fresh_session: std::mem::take(&mut self.fresh_session),
                greeting_timeout: self.greeting_timeout(self.index),
            });
        }
        if !self.probing_allowed() {
            return None;
        }
        if let Some(found) = self.reprobe.found()
            && let Phase::Attached(a) = &mut self.phase
            && !a.stopping
        {
            a.stopping = true;
            self.switch_to = Some(found);
            return Some(Action::Stop);
        }
        if let Some((id, candidate)) = self.reprobe.start(now) {
            self.request_probe(id, candidate);
            return self.poll(now);
        }
        None
    }

    /// When [`poll`](Self::poll) has something to do next without any
    /// input: the end of a backoff, or the next re-probe.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waiting = match self.phase {
            Phase::Waiting(until) => Some(until),
            _ => None,
        };
        let reprobe = self.probing_allowed().then(|| self.reprobe.due()).flatten();
        match (waiting, reprobe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The fallback report: every step down the transport order so far,
    /// oldest first (at most [`MAX_FALLBACKS`]).
    pub fn fallbacks(&self) -> &[Fallback] {
        &self.report
    }

    /// Whether the connector is done (gave up, or the session is over).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    // ---- the rules -----------------------------------------------------

    /// An attempt that never delivered its first frame.
    fn failed(&mut self, now: Instant, a: Attempt, end: AttemptEnd) {
        // A switch asked of an attempt that failed on its own before it
        // stopped is stale: the next probe round decides afresh.
        let switch_to = self.switch_to.take();
        match end {
            AttemptEnd::Refused(close) => return self.refused(now, close),
            AttemptEnd::Stopped => {
                if let Some(better) = switch_to {
                    self.switch(now, better);
                }
                return;
            }
            _ => {}
        }
        let Some(cause) = end.cause() else { return };
        if matches!(cause, Cause::Timeout | Cause::NoFirstFrame) {
            self.greeting_timeouts[a.index] = self.greeting_timeouts[a.index].saturating_add(1);
        }
        let transport = self.config.transports[a.index];
        self.record(Failure {
            transport,
            cause,
            after_open: false,
        });
        self.failures_retry_after = self
            .failures_retry_after
            .max(end.retry_after().unwrap_or_default());
        if cause != Cause::Unreachable && a.index + 1 < self.config.transports.len() {
            self.fall_back(now, a.index, cause, now - a.started);
            return;
        }
        // The server is down, or nothing is left: from the best again,
        // after a backoff.
        self.index = self.best_index();
        let backoff = self.next_backoff();
        let retry_after = std::mem::take(&mut self.failures_retry_after);
        let delay = backoff.max(self.spread(retry_after));
        let reason = self.failures_reason();
        self.wait(now, delay, reason);
    }

    /// holdfast refused to open the session (or closed it).
    fn refused(&mut self, now: Instant, close: Close) {
        if self.session_open {
            self.phase = Phase::Done;
            return;
        }
        if close.code == CloseCode::OVERLOADED
            && let Some(after) = close.retry_after
        {
            // Overloaded before the session opened: honour retry_after,
            // spread, and open a fresh session then.
            let backoff = self.next_backoff();
            let delay = backoff.max(self.spread(after));
            let reason = format!(
                "the server is overloaded ({} {})",
                close.code.0, close.reason
            );
            if !self.past_connect_timeout(now, delay) {
                self.fresh_session = true;
                self.wait(now, delay, reason);
                return;
            }
        }
        self.give_up(GiveUp::Refused(close));
    }

    /// A connection that worked, then ended.
    fn dropped(&mut self, now: Instant, a: Attempt, opened: Instant, end: AttemptEnd) {
        self.failures.clear();
        self.failures_retry_after = Duration::ZERO;
        let lasted = now.saturating_duration_since(opened);
        if !a.trusted && lasted < FLAP_WINDOW && end != AttemptEnd::Stopped {
            self.flaps[a.index] += 1;
            if self.flaps[a.index] >= FLAPS_TO_DEMOTE && a.index + 1 < self.config.transports.len()
            {
                self.flaps[a.index] = 0;
                self.fall_back(now, a.index, Cause::Flapping, lasted);
            }
        }
        // A connection that carried frames both ways proves the network
        // works: the next drop starts the backoff afresh, however short.
        if a.trusted || lasted >= self.config.backoff.reset_after {
            self.attempt = 0;
        }
        if let Some(better) = self.switch_to.take() {
            self.switch(now, better);
        }
        let immediate = match &end {
            AttemptEnd::Stopped => true,
            AttemptEnd::Detached(close) => {
                close.code == CloseCode::RECONNECT || close.code == CloseCode::REPLACED
            }
            AttemptEnd::Refused(_) => {
                self.phase = Phase::Done;
                return;
            }
            _ => false,
        };
        if immediate {
            self.phase = Phase::Ready;
            return;
        }
        let reason = end.cause().map_or_else(String::new, |cause| {
            let failure = Failure {
                transport: self.config.transports[a.index],
                cause,
                after_open: true,
            };
            match &end {
                AttemptEnd::Detached(close) if !close.reason.is_empty() => {
                    format!("{failure}: {}", close.reason)
                }
                _ => failure.to_string(),
            }
        });
        let backoff = self.next_backoff();
        let delay = backoff.max(self.spread(end.retry_after().unwrap_or_default()));
        self.wait(now, delay, reason);
    }

    /// Steps down from `from` to the next transport, at once.
    fn fall_back(&mut self, now: Instant, from: usize, cause: Cause, after: Duration) {
        if self.report.len() < MAX_FALLBACKS {
            self.report.push(Fallback {
                from: self.config.transports[from],
                to: self.config.transports[from + 1],
                cause,
                after,
            });
        }
        self.index = from + 1;
        self.reset_reprobe(now);
        self.phase = Phase::Ready;
    }

    /// Moves up to a better transport a probe found.
    fn switch(&mut self, now: Instant, better: usize) {
        self.index = better;
        self.reset_reprobe(now);
        self.phase = Phase::Ready;
    }

    /// Backs off for `delay`, or gives up when that would pass the connect
    /// timeout of a session that never opened.
    fn wait(&mut self, now: Instant, delay: Duration, reason: String) {
        if self.past_connect_timeout(now, delay) {
            let failures = std::mem::take(&mut self.failures);
            self.give_up(GiveUp::NoTransport(failures));
            return;
        }
        self.failures.clear();
        self.phase = Phase::Waiting(now + delay);
        self.actions.push_back(Action::Reconnecting {
            attempt: self.attempt,
            delay,
            reason,
        });
    }

    /// Whether waiting `delay` from `now` would pass the connect timeout of
    /// a session that never opened.
    fn past_connect_timeout(&self, now: Instant, delay: Duration) -> bool {
        !self.session_open
            && self
                .config
                .connect_timeout
                .is_some_and(|timeout| now + delay >= self.started + timeout)
    }

    fn give_up(&mut self, why: GiveUp) {
        self.phase = Phase::Done;
        self.actions.push_back(Action::GiveUp(why));
    }

    /// The next backoff delay; counts the attempt.
    fn next_backoff(&mut self) -> Duration {
        let random = (self.random)();
        let delay = self.config.backoff.delay(self.attempt, random);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// The wait for a server's `retry_after` (zero: none), spread
    /// ([`spread_retry_after`]). Draws a random number only when there is
    /// one.
    fn spread(&mut self, retry_after: Duration) -> Duration {
        if retry_after.is_zero() {
            return Duration::ZERO;
        }
        let random = (self.random)();
        spread_retry_after(retry_after, random)
    }

    /// How long an attachment of transport `index` has to greet: the
    /// probe timeout, times [`PROVEN_GREETING_FACTOR`] once it carried
    /// frames both ways in this session, doubled for each greeting timeout
    /// in a row, at most [`MAX_GREETING_FACTOR`] times. A first attempt on
    /// a transport never proven gets the plain probe timeout: catching a
    /// buffering proxy and falling back take no longer than they did.
    fn greeting_timeout(&self, index: usize) -> Duration {
        let base = if self.proven[index] {
            PROVEN_GREETING_FACTOR
        } else {
            1
        };
        let doubled =
            base.saturating_mul(2u32.saturating_pow(self.greeting_timeouts[index].min(16)));
        self.config
            .probe_timeout
            .saturating_mul(doubled.min(MAX_GREETING_FACTOR))
    }

    fn record(&mut self, failure: Failure) {
        if self.failures.len() == MAX_FAILURES {
            self.failures.remove(0);
        }
        self.failures.push(failure);
    }

    fn failures_reason(&self) -> String {
        let reasons: Vec<String> = self.failures.iter().map(Failure::to_string).collect();
        reasons.join("; ")
    }

    fn request_probe(&mut self, id: u64, candidate: usize) {
        let transport = self.config.transports[candidate];
        if transport == TransportKind::LongPoll {
            // Long-polling goes through anything that passes requests.
            self.reprobe.works(candidate);
            return;
        }
        self.actions.push_back(Action::Probe { id, transport });
    }

    fn reset_reprobe(&mut self, now: Instant) {
        let random = (self.random)();
        self.reprobe.reset(now, self.config.reprobe_after, random);
    }

    /// Probes run on a fallback transport of an open session, while
    /// attached or backing off.
    fn probing_allowed(&self) -> bool {
        self.index > 0
            && self.session_open
            && matches!(self.phase, Phase::Attached(_) | Phase::Waiting(_))
    }

    /// The transport to try first: the one remembered, else the best.
    fn best_index(&self) -> usize {
        self.config
            .remembered
            .and_then(|kind| self.config.transports.iter().position(|k| *k == kind))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn connector(transports: &[TransportKind], t0: Instant) -> Connector {
        let config = ConnectorConfig {
            transports: transports.to_vec(),
            ..ConnectorConfig::default()
        };
        Connector::new(config, t0, Box::new(|| 0.5))
    }

    /// The next attach's transport and greeting deadline, at `now`.
    fn attach(connector: &mut Connector, now: Instant) -> (TransportKind, Duration) {
        loop {
            match connector.poll(now) {
                Some(Action::Attach {
                    transport,
                    greeting_timeout,
                    ..
                }) => return (transport, greeting_timeout),
                Some(_) => {}
                None => panic!("no attach at {now:?}: {connector:?}"),
            }
        }
    }

    /// Ends the current attachment and returns when the next attach is due.
    fn end(connector: &mut Connector, now: Instant, end: AttemptEnd) -> Instant {
        connector.ended(now, end);
        while connector.poll(now).is_some() {}
        connector.poll_timeout().unwrap_or(now)
    }

    #[test]
    fn a_first_attempt_gets_the_probe_timeout_and_falls_back_as_fast() {
        let t0 = Instant::now();
        let mut c = connector(&TransportKind::ALL, t0);
        assert_eq!(attach(&mut c, t0), (TransportKind::WebSocket, 2000 * MS));
        let t1 = t0 + 2000 * MS;
        c.ended(t1, AttemptEnd::NoFirstFrame);
        // Blocked: the next transport at once, never proven either.
        assert_eq!(attach(&mut c, t1), (TransportKind::Sse, 2000 * MS));
    }

    #[test]
    fn a_proven_transport_gets_longer_doubling_to_the_cap_until_one_opens() {
        let t0 = Instant::now();
        let mut c = connector(&[TransportKind::WebSocket], t0);
        assert_eq!(attach(&mut c, t0).1, 2000 * MS);
        c.opened(t0 + 10 * MS);
        c.trusted(t0 + 20 * MS);
        let mut at = end(&mut c, t0 + 1000 * MS, AttemptEnd::Closed);
        let mut deadlines = Vec::new();
        for ending in [
            AttemptEnd::Timeout,
            AttemptEnd::NoFirstFrame,
            AttemptEnd::Timeout,
            AttemptEnd::Timeout,
        ] {
            let (_, deadline) = attach(&mut c, at);
            deadlines.push(deadline.as_millis());
            at = end(&mut c, at + deadline, ending);
        }
        assert_eq!(deadlines, [4000, 8000, 16000, 16000]);
        // Other failures neither grow nor reset it.
        assert_eq!(attach(&mut c, at).1, 16000 * MS);
        at = end(&mut c, at + 5 * MS, AttemptEnd::Unreachable);
        assert_eq!(attach(&mut c, at).1, 16000 * MS);
        // An attachment that opened resets it: proven, so twice.
        c.opened(at + 100 * MS);
        at = end(&mut c, at + 200 * MS, AttemptEnd::Closed);
        assert_eq!(attach(&mut c, at).1, 4000 * MS);
    }

    #[test]
    fn only_the_transport_that_carried_frames_both_ways_is_proven() {
        let t0 = Instant::now();
        let mut c = connector(&TransportKind::ALL, t0);
        attach(&mut c, t0);
        // Opened but never trusted: not proven.
        c.opened(t0 + 10 * MS);
        let at = end(&mut c, t0 + 20_000 * MS, AttemptEnd::Closed);
        assert_eq!(attach(&mut c, at), (TransportKind::WebSocket, 2000 * MS));
        c.opened(at + 10 * MS);
        c.trusted(at + 20 * MS);
        let at = end(&mut c, at + 20_000 * MS, AttemptEnd::Closed);
        assert_eq!(attach(&mut c, at), (TransportKind::WebSocket, 4000 * MS));
        // It times out: blocked, so SSE at once, with the plain timeout.
        c.ended(at + 4000 * MS, AttemptEnd::Timeout);
        assert_eq!(
            attach(&mut c, at + 4000 * MS),
            (TransportKind::Sse, 2000 * MS)
        );
    }

    #[test]
    fn a_retry_after_is_spread_everywhere_it_is_honoured() {
        let t0 = Instant::now();
        let overloaded = Close::new(CloseCode::OVERLOADED, "busy").with_retry_after(5000 * MS);
        let delay = |c: &mut Connector, now| loop {
            match c.poll(now) {
                Some(Action::Reconnecting { delay, .. }) => return delay,
                Some(_) => {}
                None => panic!("no reconnecting"),
            }
        };
        // Refused before the session opened.
        let mut c = connector(&[TransportKind::WebSocket], t0);
        attach(&mut c, t0);
        c.ended(t0, AttemptEnd::Refused(overloaded.clone()));
        assert_eq!(delay(&mut c, t0), 6250 * MS);
        // Detached after it opened.
        let mut c = connector(&[TransportKind::WebSocket], t0);
        attach(&mut c, t0);
        c.opened(t0);
        c.ended(t0, AttemptEnd::Detached(overloaded));
        assert_eq!(delay(&mut c, t0), 6250 * MS);
        // A gateway's 503 on every transport.
        let mut c = connector(&[TransportKind::LongPoll], t0);
        attach(&mut c, t0);
        c.ended(
            t0,
            AttemptEnd::Status {
                status: 503,
                retry_after: Some(4000 * MS),
            },
        );
        assert_eq!(delay(&mut c, t0), 5000 * MS);
        // A send refused for now.
        assert_eq!(
            c.send_failed(
                Carried::Messages,
                SendFailure::Overloaded {
                    retry_after: Some(2000 * MS)
                }
            ),
            SendVerdict::Retry(2500 * MS)
        );
    }
}
