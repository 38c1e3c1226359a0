//! One session on the server: the sans-IO core behind a mutex, the wakers
//! of the tasks that wait on it, the timer task that drives it, and the
//! [`Session`] handle the application holds.
//!
//! Every change to the core goes through a [`CoreGuard`]; when the guard
//! drops, it compares the core before and after and wakes exactly the tasks
//! that can now make progress (the attached transport, the application's
//! `recv`, senders waiting for room, the timer task), logs lifecycle events
//! and keeps the server-wide byte count.

use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use holdfast_protocol::{
    AttachmentId, Close, CloseCode, Frame, Message, ProtocolError, SendError, ServerEvent,
    ServerSession, Transmit, TransportKind, message_charge,
};
use http::{Extensions, HeaderMap};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::logs::loggable;
use crate::metrics::Presence;
use crate::server::ServerState;
use crate::store::{Position, Write};

mod durable;

mod cursors;

mod report;

pub(crate) use cursors::Cursors;
pub(crate) use durable::Stored;
use durable::{AppProgress, Pending};
pub(crate) use durable::{Durable, backoff};

/// The ack-delay histogram samples the first message a session sends,
/// then one of every this many sent while no sample is in flight.
const ACK_SAMPLE_EVERY: u8 = 16;

/// The current time on tokio's clock (so paused-time tests work too).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// State shared by the application's handles, the transports and the timer
/// task of one session.
pub(crate) struct Shared {
    pub(crate) session_id: Arc<str>,
    /// The session's span (`session_id`, never the key): its lifecycle
    /// events, and the spans of its attachments, are in it.
    pub(crate) span: tracing::Span,
    pub(crate) key: Arc<str>,
    inner: Mutex<Inner>,
    /// The attached transport: output may be ready.
    pub(crate) transmit: Notify,
    /// The application's `recv`: a message arrived or the session closed.
    app: Notify,
    /// Senders: room in the replay buffer, or the session closed.
    space: Notify,
    /// A WebSocket reader held back by the server-wide total: the
    /// application read its queue empty or below the total, or began to
    /// wait for room to send (see [`Shared::may_read_inbound`]).
    pub(crate) drained: Notify,
    /// Senders waiting in `send` (the application's, or a topic's
    /// delivery) for room: see [`Shared::wants_room`].
    waiting_senders: AtomicUsize,
    /// The latest `try_send` found no room, and none has succeeded since:
    /// an application that polls `try_send` waits for room too.
    refused_send: AtomicBool,
    /// The timer task: the next deadline moved earlier (or the session was
    /// evicted).
    timer: Notify,
    /// A tombstone evicted from the registry: the timer task ends now.
    evicted: AtomicBool,
    /// The timer task ended: the session is forgotten on this node.
    forgotten: AtomicBool,
    headers: HeaderMap,
    extensions: Extensions,
    server: Arc<ServerState>,
    /// With a store: where the session's state is kept for other nodes.
    pub(crate) durable: Option<Durable>,
    /// What the client reported of its fallbacks.
    reports: report::Reports,
}

struct Inner {
    core: ServerSession,
    /// With a store: the application's place in the client's messages,
    /// and what was last stored.
    app: AppProgress,
    stored: Stored,
    /// With a store: where the session is in each topic it subscribed to.
    cursors: Cursors,
    /// Sequence number of the last message the application took.
    taken: u64,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    /// Bytes this session counts in the server-wide total: what its replay
    /// buffer and inbound queue are charged (payload plus
    /// `MESSAGE_OVERHEAD` per message).
    accounted: usize,
    /// What the session adds to the sessions and attachments gauges.
    presence: Presence,
    /// The highest downstream sequence number written to the client:
    /// messages up to it that are written again are replays.
    written: u64,
    /// The transport to count a send request's messages under when no
    /// transport is attached: the last one that was.
    last_transport: TransportKind,
    /// The downstream message whose acknowledgement the ack-delay
    /// histogram waits for, and when it was queued: one at a time.
    ack_sample: Option<(u64, Instant)>,
    /// Sends to let pass before the next sample (the clock is read twice
    /// per sample: not for every round trip).
    ack_skip: u8,
    /// The span of the latest attachment (if a subscriber records it):
    /// events that happen in it are logged in it.
    attachment_span: Option<tracing::Id>,
}

/// What the guard compares to decide whom to wake.
#[derive(Clone, Copy)]
struct Snapshot {
    received: u64,
    unacked_bytes: usize,
    inbound_bytes: usize,
    closed: bool,
    output_epoch: u64,
    transport: Option<TransportKind>,
    sent: u64,
    acked: u64,
    /// With a store: received messages the store holds (the application
    /// may take them).
    confirmed_received: u64,
}

impl Snapshot {
    fn of(core: &ServerSession) -> Self {
        Self {
            sent: core.sent(),
            acked: core.acked(),
            confirmed_received: core.confirmed_received(),
            received: core.received(),
            unacked_bytes: core.unacked_bytes(),
            inbound_bytes: core.inbound_bytes(),
            closed: core.is_closed(),
            output_epoch: core.output_epoch(),
            transport: core.transport(),
        }
    }
}

/// Exclusive access to a session's core; wakes whoever can progress when
/// dropped.
pub(crate) struct CoreGuard<'a> {
    shared: &'a Shared,
    inner: Option<MutexGuard<'a, Inner>>,
    before: Snapshot,
}

impl Deref for CoreGuard<'_> {
    type Target = ServerSession;
    fn deref(&self) -> &ServerSession {
        match &self.inner {
            Some(inner) => &inner.core,
            None => unreachable!("the guard is only emptied in drop"),
        }
    }
}

impl DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut ServerSession {
        match &mut self.inner {
            Some(inner) => &mut inner.core,
            None => unreachable!("the guard is only emptied in drop"),
        }
    }
}

impl CoreGuard<'_> {
    fn inner(&mut self) -> &mut Inner {
        match &mut self.inner {
            Some(inner) => inner,
            None => unreachable!("the guard is only emptied in drop"),
        }
    }

    /// The application's place in the client's messages.
    fn app(&mut self) -> &mut AppProgress {
        &mut self.inner().app
    }

    /// The next message for the application, counting its progress.
    fn take_message(&mut self) -> Option<Message> {
        let inner = self.inner();
        let message = inner.core.poll_message()?;
        inner.taken += 1;
        let taken = inner.taken;
        inner.app.took(taken);
        Some(message)
    }

    /// What the store does not hold yet, as one write; `None` if nothing.
    fn pending(&mut self) -> Option<Pending> {
        let inner = self.inner();
        let core = &inner.core;
        let close = match (core.close_reason(), inner.stored.closed) {
            (Some(close), false) => Some(durable::stored_close(close, core.initiator())),
            _ => None,
        };
        let write = Write {
            outbound: core
                .unconfirmed_sent()
                .map(|(seq, message)| (seq, message.clone()))
                .collect(),
            inbound: core
                .unconfirmed_received()
                .map(|(seq, message)| (seq, message.clone()))
                .collect(),
            acked: (core.acked() > inner.stored.acked).then_some(core.acked()),
            progress: (inner.app.progress != inner.stored.progress).then_some(inner.app.progress),
            opened: false,
            close,
            cursors: (inner.cursors.version() != inner.stored.cursors)
                .then(|| inner.cursors.to_vec()),
        };
        if write.is_empty() {
            return None;
        }
        Some(Pending {
            stored: Stored {
                acked: write.acked.unwrap_or(inner.stored.acked),
                progress: inner.app.progress,
                closed: inner.stored.closed || write.close.is_some(),
                cursors: inner.cursors.version(),
            },
            sent: core.sent(),
            received: core.received(),
            write,
        })
    }

    /// [`ServerSession::poll_transmit`], counting the messages it writes.
    /// Every transport writes through here: it shadows the core's method.
    pub(crate) fn poll_transmit(&mut self, now: Instant, id: AttachmentId) -> Option<Transmit> {
        let shared = self.shared;
        let metrics = &shared.server.metrics;
        let inner = self.inner();
        let kind = inner.core.transport();
        let transmit = inner.core.poll_transmit(now, id)?;
        if let Some(kind) = kind {
            metrics.transmitted(kind, &transmit.frames, &mut inner.written);
        }
        Some(transmit)
    }

    /// [`ServerSession::handle_frames`], counting the messages it accepts
    /// (duplicates are not counted). Every transport reads through here:
    /// it shadows the core's method.
    pub(crate) fn handle_frames(
        &mut self,
        now: Instant,
        via: Option<AttachmentId>,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), ProtocolError> {
        let shared = self.shared;
        let metrics = &shared.server.metrics;
        let inner = self.inner();
        let (received, queued) = (inner.core.received(), inner.core.inbound_bytes());
        let result = inner.core.handle_frames(now, via, frames);
        // Nothing leaves the inbound queue meanwhile, and each message
        // accepted is charged its payload plus `MESSAGE_OVERHEAD`: the
        // payload bytes without looking at the frames.
        let got = inner.core.received() - received;
        let charged = inner.core.inbound_bytes().saturating_sub(queued);
        let overhead = (got as usize).saturating_mul(holdfast_protocol::MESSAGE_OVERHEAD);
        let bytes = charged.saturating_sub(overhead) as u64;
        let kind = inner.core.transport().unwrap_or(inner.last_transport);
        metrics.received(kind, got, bytes);
        result
    }

    /// `pending` is in the store: let the core act on it.
    fn stored(&mut self, pending: Pending) {
        let inner = self.inner();
        inner.core.confirm_sent(pending.sent);
        inner.core.confirm_received(pending.received);
        inner.stored = pending.stored;
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        let after = Snapshot::of(&inner.core);
        let (before_transport, before_closed) = (self.before.transport, self.before.closed);
        let shared = self.shared;
        let metrics = &shared.server.metrics;
        // Logged in the span of the attachment they happen in, else in the
        // session's: either way under the session's id.
        let mut in_attachment = None;
        while let Some(event) = inner.core.poll_event() {
            count_event(metrics, &event);
            let here = *in_attachment.get_or_insert_with(|| {
                let current = tracing::Span::current().id();
                current.is_some() && current == inner.attachment_span
            });
            if here {
                log_event(&shared.session_id, &event);
            } else {
                shared
                    .span
                    .in_scope(|| log_event(&shared.session_id, &event));
            }
        }
        let total = after.unacked_bytes + after.inbound_bytes;
        let accounted = std::mem::replace(&mut inner.accounted, total);
        if total > accounted {
            shared
                .server
                .buffered
                .fetch_add(total - accounted, Ordering::Relaxed);
            metrics.buffered(total - accounted, 0);
        } else if total < accounted {
            shared
                .server
                .buffered
                .fetch_sub(accounted - total, Ordering::Relaxed);
            metrics.buffered(0, accounted - total);
        }
        // Only an attachment coming or going, or the end, moves the gauges
        // (a session forgotten or gone takes back what it added when its
        // timer task ends).
        if (after.transport != before_transport || after.closed != before_closed)
            && inner.presence.differs(!after.closed, after.transport)
        {
            // Nothing more counts once the session is forgotten or left
            // this node (a transport may still hold it for a moment).
            let here = !shared.is_forgotten() && !shared.is_gone();
            let transport = after.transport.filter(|_| here);
            inner
                .presence
                .set(metrics, here && !after.closed, transport);
            if let Some(kind) = after.transport {
                inner.last_transport = kind;
            }
        }
        if after.acked != self.before.acked
            && let Some((seq, queued)) = inner.ack_sample
            && after.acked >= seq
        {
            inner.ack_sample = None;
            metrics.ack_delay(now().saturating_duration_since(queued));
        }
        // Only these changes can bring a deadline forward (a new message
        // to acknowledge, an attachment, a timer's effect, the end): skip
        // the computation otherwise.
        let before = self.before;
        let timers_moved = after.received != before.received
            || after.output_epoch != before.output_epoch
            || after.closed != before.closed
            || after.transport != before.transport;
        let rearm = timers_moved
            && match (inner.core.poll_timeout(), inner.armed) {
                (Some(new), Some(armed)) => new < armed,
                (Some(_), None) => true,
                (None, _) => false,
            };
        let stored_acked = inner.stored.acked;
        drop(inner);

        let closed_now = after.closed && !before.closed;
        if let Some(durable) = &shared.durable
            && (after.sent != before.sent
                || after.received != before.received
                || (after.acked != before.acked
                    && after.acked >= stored_acked + durable::ACK_WRITE_LAG)
                || closed_now)
        {
            durable.wake.notify_one();
        }
        if closed_now {
            let max = shared.server.config.max_sessions;
            for evicted in shared.server.registry.closed(&shared.key, max) {
                evicted.evicted.store(true, Ordering::Relaxed);
                evicted.timer.notify_one();
            }
        }
        if after.confirmed_received > before.confirmed_received || closed_now {
            shared.app.notify_waiters();
        }
        if after.unacked_bytes < before.unacked_bytes || closed_now {
            shared.space.notify_waiters();
        }
        // A WebSocket reader held back by the server-wide total waits for
        // the application to read (or to wait for room: `wants_room`):
        // woken only when that lets it read (`may_read_inbound`), not for
        // every message taken.
        if after.inbound_bytes < before.inbound_bytes
            && (after.inbound_bytes == 0
                || shared.server.buffered.load(Ordering::Relaxed)
                    < shared.server.config.max_buffered_bytes)
        {
            shared.drained.notify_waiters();
        }
        if after.output_epoch != before.output_epoch {
            shared.transmit.notify_waiters();
        }
        if rearm {
            shared.timer.notify_one();
        }
    }
}

/// A copy of request headers in allocations of their own, at most `budget`
/// bytes of names and values. hyper's header values are slices of the
/// connection's read buffer (8–16 KiB): keeping them for the life of the
/// session would keep that whole buffer. And a client controls its headers:
/// a session must not keep hundreds of kilobytes of them for its lifetime.
/// Headers are kept in order while they fit; one that does not fit is left
/// out whole (a truncated cookie or token would be worse than none).
pub(crate) fn kept_copy(headers: &HeaderMap, budget: usize) -> HeaderMap {
    let mut copy = HeaderMap::new();
    let mut left = budget;
    for (name, value) in headers {
        let cost = name.as_str().len() + value.len();
        if cost > left {
            continue;
        }
        let copied_name = http::HeaderName::from_bytes(name.as_str().as_bytes());
        let copied = http::HeaderValue::from_bytes(value.as_bytes());
        if let (Ok(name), Ok(mut copied)) = (copied_name, copied) {
            left -= cost;
            copied.set_sensitive(value.is_sensitive());
            copy.append(name, copied);
        }
    }
    copy
}

/// Counts a lifecycle event in the metrics.
fn count_event(metrics: &crate::metrics::Metrics, event: &ServerEvent) {
    match event {
        ServerEvent::Attached { kind, resumed, .. } => {
            if !resumed {
                metrics.opened();
            }
            metrics.attached(*kind, *resumed);
        }
        ServerEvent::Detached { .. } => {}
        ServerEvent::Closed { close, initiator } => {
            crate::metrics::session_closed(close, *initiator);
        }
    }
}

/// Session lifecycle (opened, closed) at `info`; transports coming and
/// going — every SSE recycle, every reconnect — at `debug`, so a busy
/// server's log is not one line per request.
fn log_event(session: &str, event: &ServerEvent) {
    match event {
        ServerEvent::Attached {
            kind,
            resumed: false,
            ..
        } => tracing::info!(session, transport = %kind, "session opened"),
        ServerEvent::Attached {
            kind,
            resumed: true,
            ..
        } => tracing::debug!(session, transport = %kind, "session resumed"),
        ServerEvent::Detached { kind, reason, .. } => {
            tracing::debug!(session, transport = %kind, reason, "transport detached")
        }
        ServerEvent::Closed { close, initiator } => tracing::info!(
            session,
            code = close.code.0,
            reason = ?loggable(&close.reason),
            by = ?initiator,
            "session closed"
        ),
    }
}

/// A sender waiting for room, counted in [`Shared::wants_room`] until it
/// drops.
pub(crate) struct WaitingForRoom<'a>(&'a Shared);

impl Drop for WaitingForRoom<'_> {
    fn drop(&mut self) {
        self.0.waiting_senders.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub(crate) fn new(
        core: ServerSession,
        headers: HeaderMap,
        extensions: Extensions,
        server: Arc<ServerState>,
    ) -> Arc<Self> {
        let headers = kept_copy(&headers, server.config.max_kept_header_bytes);
        Self::with_store(
            core,
            headers,
            extensions,
            server,
            None,
            Stored::default(),
            Vec::new(),
        )
    }

    /// A session kept in a store too (`durable`), where `stored` says
    /// the store is (a session taken over from another node; the default
    /// for a new one). `headers` are kept as given.
    pub(crate) fn with_store(
        core: ServerSession,
        headers: HeaderMap,
        extensions: Extensions,
        server: Arc<ServerState>,
        durable: Option<Durable>,
        stored: Stored,
        cursors: Vec<(String, Position)>,
    ) -> Arc<Self> {
        let identity = core.identity();
        if durable.as_ref().is_some_and(|durable| durable.continued) {
            crate::metrics::session_moved(true);
        }
        let span = tracing::info_span!(parent: None, "session", session_id = %identity.session_id);
        let written = core.sent();
        // Counted from the start (a session taken over is detached until
        // its client attaches).
        let mut presence = Presence::default();
        presence.set(&server.metrics, !core.is_closed(), core.transport());
        Arc::new(Self {
            span,
            session_id: identity.session_id.as_str().into(),
            key: identity.key.as_str().into(),
            inner: Mutex::new(Inner {
                core,
                app: AppProgress::restored(stored.progress),
                taken: stored.progress.done,
                cursors: Cursors::restored(cursors, stored.cursors),
                stored,
                armed: None,
                accounted: 0,
                presence,
                // Restored messages were written by the node before.
                written,
                last_transport: TransportKind::LongPoll,
                ack_sample: None,
                ack_skip: 0,
                attachment_span: None,
            }),
            transmit: Notify::new(),
            app: Notify::new(),
            space: Notify::new(),
            drained: Notify::new(),
            waiting_senders: AtomicUsize::new(0),
            refused_send: AtomicBool::new(false),
            timer: Notify::new(),
            evicted: AtomicBool::new(false),
            forgotten: AtomicBool::new(false),
            headers,
            extensions,
            server,
            durable,
            reports: report::Reports::default(),
        })
    }

    /// The server's configuration.
    pub(crate) fn server_config(&self) -> &crate::config::ServerConfig {
        &self.server.config
    }

    /// Who the session belongs to, if the auth hook said.
    pub(crate) fn identity(&self) -> Option<&crate::auth::Identity> {
        self.extensions.get()
    }

    /// Locks the core.
    pub(crate) fn lock(&self) -> CoreGuard<'_> {
        // A panic while holding the lock cannot leave the core half-updated
        // in a way worse than the panic itself; keep serving.
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = Snapshot::of(&inner.core);
        CoreGuard {
            shared: self,
            inner: Some(inner),
            before,
        }
    }

    /// A span for one attachment of this session (`debug`, inside the
    /// session's): what its transport logs is in it.
    pub(crate) fn attachment_span(&self, kind: TransportKind) -> tracing::Span {
        let span =
            tracing::debug_span!(parent: &self.span, "attachment", transport = kind.as_str());
        if let Some(id) = span.id() {
            // Not through `lock`: nothing the guard compares changes.
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.attachment_span = Some(id);
        }
        span
    }

    /// Runs the session's timers until it is finished, then forgets it
    /// (in the session's span).
    pub(crate) fn drive_timers(self: Arc<Self>) -> impl Future<Output = ()> + Send {
        let span = self.span.clone();
        self.run_timers().instrument(span)
    }

    async fn run_timers(self: Arc<Self>) {
        loop {
            let notified = self.timer.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let mut guard = self.lock();
                let now = now();
                guard.handle_timeout(now);
                if guard.is_finished(now) || self.evicted.load(Ordering::Relaxed) || self.is_gone()
                {
                    break;
                }
                let deadline = guard.poll_timeout();
                if let Some(inner) = &mut guard.inner {
                    inner.armed = deadline;
                }
                deadline
            };
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline.into()) => {}
                        () = notified => {}
                    }
                }
                None => notified.await,
            }
        }
        self.server.registry.remove(&self);
        self.forgotten.store(true, Ordering::Release);
        if let Some(durable) = &self.durable {
            durable.wake.notify_one();
            if !durable.is_gone() {
                // Over for good: the store forgets it too (else it would
                // expire there with its TTL).
                let (store, tag, epoch) =
                    (durable.store.clone(), durable.tag.clone(), durable.epoch);
                tokio::spawn(async move {
                    if let Err(error) = store.remove(&tag, epoch).await {
                        tracing::debug!(%error, "could not remove a finished session from the store");
                    }
                });
            }
        }
        let accounted = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // After `forgotten`: no later guard counts this session again.
            inner.presence.set(&self.server.metrics, false, None);
            std::mem::take(&mut inner.accounted)
        };
        self.server.buffered.fetch_sub(accounted, Ordering::Relaxed);
        self.server.metrics.buffered(0, accounted);
        self.app.notify_waiters();
        self.space.notify_waiters();
        self.transmit.notify_waiters();
        tracing::debug!(session = %self.session_id, "session forgotten");
    }

    /// Whether the server-wide `max_buffered_bytes` admits received
    /// messages charged `cost` bytes in all (`core` is this session's,
    /// locked). Always when they cost nothing (acks, pings) or the inbound
    /// queue is empty, so any legal batch gets in eventually. The session's
    /// own limit, `max_inbound_bytes`, is the upstream window the core
    /// enforces (`PROTOCOL.md` §3.1): a conforming client never passes it.
    pub(crate) fn admits_buffered(&self, core: &ServerSession, cost: usize) -> bool {
        cost == 0
            || core.inbound_bytes() == 0
            || self
                .server
                .buffered
                .load(Ordering::Relaxed)
                .saturating_add(cost)
                <= self.server.config.max_buffered_bytes
    }

    /// Whether a WebSocket reader may read its next message. Never held
    /// back by the session's own limit: that is the upstream window, which
    /// a conforming client keeps within and the core enforces
    /// (`PROTOCOL.md` §3.1). Held back only by the server-wide
    /// `max_buffered_bytes`: once the total is at it, while the session
    /// has received messages queued (its application has something to
    /// take, and a take that lets the reader read wakes it: `drained`)
    /// and its application does not wait for room to send
    /// ([`wants_room`]).
    ///
    /// Holding back cannot deadlock: an application waiting for room waits
    /// for acknowledgements, which travel behind the client's data, so the
    /// reader reads on for it — into the queue, which the upstream window
    /// bounds. Any other application is free to take its queue.
    ///
    /// What it lets past the total: each read is one WebSocket message
    /// (one batch), read when the total was below the limit or the queue
    /// empty, so at most one batch per session beyond what fitted; and the
    /// reads for an application waiting for room, up to its window.
    ///
    /// [`wants_room`]: Self::wants_room
    pub(crate) fn may_read_inbound(&self) -> bool {
        self.server.buffered.load(Ordering::Relaxed) < self.server.config.max_buffered_bytes
            || self.wants_room()
            || self.lock().inbound_bytes() == 0
    }

    /// Whether the session's application (or a topic's delivery) waits for
    /// room to send: a `send` waiting, or a `try_send` refused and none
    /// succeeded since. Room comes from the client's acknowledgements.
    pub(crate) fn wants_room(&self) -> bool {
        self.waiting_senders.load(Ordering::Acquire) > 0
            || self.refused_send.load(Ordering::Acquire)
    }

    /// Counts a sender as waiting for room until the guard drops, and
    /// wakes a WebSocket reader held back meanwhile.
    pub(crate) fn wait_for_room(&self) -> WaitingForRoom<'_> {
        if self.waiting_senders.fetch_add(1, Ordering::AcqRel) == 0 {
            self.drained.notify_waiters();
        }
        WaitingForRoom(self)
    }

    /// How many received messages the application has taken so far.
    pub(crate) fn taken(&self) -> u64 {
        self.lock().inner().taken
    }

    /// The WebSocket reader is held back while the application works
    /// through its queue: the client's silence meanwhile is the server's
    /// doing (its pongs wait behind its data), so it does not count
    /// towards the peer timeout. The reader calls this only when the
    /// application took messages: a client that went away while its
    /// application takes nothing is still timed out.
    pub(crate) fn presume_heard(&self) {
        self.lock().presume_heard(now());
    }

    /// Queues a message: its sequence number, or `None` when a session
    /// taken over drops it as already stored (see [`durable`]). A topic's
    /// message (`topic`) moves the session's cursor in that topic, stored
    /// with it; it is not an answer of the handler's.
    fn try_send(
        &self,
        message: Message,
        topic: Option<(&Arc<str>, Position)>,
    ) -> Result<Option<u64>, SendError> {
        let queued = self.queue(message, topic);
        match queued {
            // The application may poll again: it waits for room, which the
            // WebSocket reader must read on for.
            Err(SendError::Full) if !self.refused_send.swap(true, Ordering::AcqRel) => {
                self.drained.notify_waiters();
            }
            Ok(_) if self.refused_send.load(Ordering::Relaxed) => {
                self.refused_send.store(false, Ordering::Release);
            }
            _ => {}
        }
        queued
    }

    /// [`try_send`](Self::try_send) without noting a refusal.
    fn queue(
        &self,
        message: Message,
        topic: Option<(&Arc<str>, Position)>,
    ) -> Result<Option<u64>, SendError> {
        let mut core = self.lock();
        if core.is_closed() || self.is_gone() {
            return Err(SendError::Closed);
        }
        let limit = self.server.config.max_buffered_bytes;
        if self.server.buffered.load(Ordering::Relaxed) + message_charge(message.len()) > limit
            && core.unacked_bytes() > 0
        {
            // Over the server-wide budget: wait for acknowledgements (this
            // session's own, when it has some in flight).
            return Err(SendError::Full);
        }
        if self.durable.is_some() {
            let max = core.config().max_message;
            if message.len() > max {
                return Err(SendError::TooBig {
                    len: message.len(),
                    max,
                });
            }
            if !core.has_room_for(message.len()) {
                return Err(SendError::Full);
            }
            if topic.is_none() && !core.app().sends() {
                return Ok(None);
            }
        }
        let seq = core.send(message)?;
        let inner = core.inner();
        if inner.ack_sample.is_none() {
            if inner.ack_skip == 0 {
                inner.ack_sample = Some((seq, now()));
                inner.ack_skip = ACK_SAMPLE_EVERY - 1;
            } else {
                inner.ack_skip -= 1;
            }
        }
        if let Some((topic, position)) = topic
            && self.durable.is_some()
        {
            core.inner().cursors.advance(topic, position);
        }
        Ok(Some(seq))
    }

    /// Whether the store holds everything, and the handler is not in the
    /// middle of a message (a hand-over waits for both).
    pub(crate) fn settled(&self) -> bool {
        let mut core = self.lock();
        core.app().between_messages() && core.pending().is_none()
    }

    /// Starts a hand-over: the handler gets no more messages.
    pub(crate) fn start_hand_over(&self) {
        if let Some(durable) = &self.durable {
            durable.handing.store(true, Ordering::Release);
            self.app.notify_waiters();
            // Acks the writer let wait go out now (see `ACK_WRITE_LAG`).
            durable.wake.notify_one();
        }
    }

    /// Whether the session left this node (taken over, handed over).
    pub(crate) fn is_gone(&self) -> bool {
        self.durable.as_ref().is_some_and(Durable::is_gone)
    }

    /// Waits until the store holds downstream messages up to `seq`.
    async fn stored_sent(&self, seq: u64) -> Result<(), SendError> {
        let Some(durable) = &self.durable else {
            return Ok(());
        };
        loop {
            let notified = durable.stored.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.lock().confirmed_sent() >= seq {
                return Ok(());
            }
            if durable.is_gone() {
                return Err(SendError::Closed);
            }
            notified.await;
        }
    }

    /// Waits until the store holds the client's messages up to `seq`
    /// (a send request answers only then: its acknowledgement must not
    /// cover what a node's death could lose). `false` if the session left
    /// this node meanwhile.
    pub(crate) async fn stored_received(&self, seq: u64) -> bool {
        let Some(durable) = &self.durable else {
            return true;
        };
        loop {
            let notified = durable.stored.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.lock().confirmed_received() >= seq {
                return true;
            }
            if durable.is_gone() {
                return false;
            }
            notified.await;
        }
    }

    /// Stores what the core holds unconfirmed, for as long as the session
    /// is on this node (the writer task of a session with a store), in the
    /// session's span.
    pub(crate) fn write_to_store(self: Arc<Self>) -> impl Future<Output = ()> + Send {
        let span = self.span.clone();
        self.store_writes().instrument(span)
    }

    async fn store_writes(self: Arc<Self>) {
        let Some(durable) = &self.durable else {
            return;
        };
        let mut failures = 0;
        loop {
            let notified = durable.wake.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if durable.is_gone() {
                return;
            }
            let Some(pending) = self.lock().pending() else {
                if self.is_forgotten() {
                    return;
                }
                notified.await;
                continue;
            };
            match durable
                .store
                .write(&durable.tag, durable.epoch, &pending.write, durable.ttl)
                .await
            {
                Ok(()) => {
                    failures = 0;
                    self.lock().stored(pending);
                    durable.stored.notify_waiters();
                }
                Err(error) if durable::lost(&error) => {
                    tracing::warn!(session = %self.session_id, %error, "session taken over by another node");
                    self.leave(holdfast_protocol::Close::new(
                        CloseCode::RECONNECT,
                        "session moved to another node, reconnect",
                    ));
                    return;
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(session = %self.session_id, %error, "cannot store session state, retrying");
                    }
                    tokio::time::sleep(durable::backoff(failures)).await;
                }
            }
        }
    }

    /// Whether the session was forgotten (finished, evicted).
    fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    /// The session leaves this node (another node owns it now, or this
    /// one is shutting down): its attachment ends with `detach` (`close`
    /// says why; 4000 makes the client reconnect at once, to whichever
    /// node), the application's handles end, and the registry forgets it.
    /// The session itself lives on in the store.
    pub(crate) fn leave(&self, close: holdfast_protocol::Close) {
        let Some(durable) = &self.durable else {
            return;
        };
        if durable.gone.swap(true, Ordering::AcqRel) {
            return;
        }
        crate::metrics::session_moved(false);
        self.lock().end_attachment(now(), close);
        self.server.registry.remove(self);
        durable.stored.notify_waiters();
        durable.wake.notify_one();
        self.app.notify_waiters();
        self.space.notify_waiters();
        self.timer.notify_one();
    }
}

/// The application's handle on one client's session: receive its messages,
/// send to it with backpressure, close it. Cheap to clone; the session is
/// closed (code 1000) when the last handle is dropped.
///
/// A transport closing is never reported here: the session lives across
/// reconnects and transport switches, and [`recv`](Self::recv) returns
/// `None` only when the session itself is over.
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle>,
}

/// Closes the session when the application lets go of it.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let durable = self.shared.durable.as_ref();
        let draining = self
            .shared
            .server
            .cluster
            .as_ref()
            .is_some_and(|cluster| cluster.is_draining());
        if self.shared.is_gone() || durable.is_some_and(Durable::is_handing) || draining {
            // The session lives on, on another node (a node shutting down
            // drops its handlers when its runtime ends: that does not end
            // their sessions).
            return;
        }
        let mut core = self.shared.lock();
        if !core.is_closed() {
            core.close(now(), Close::new(CloseCode::NORMAL, "session dropped"));
        }
    }
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The session's state, for the topics (holding it does not keep the
    /// session open, unlike a `Session`).
    pub(crate) fn shared_arc(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The session's public id, for logs. Not its key: the id cannot
    /// resume anything.
    pub fn id(&self) -> &str {
        &self.shared().session_id
    }

    /// The headers of the request that opened the session, up to
    /// [`ServerConfig::max_kept_header_bytes`](crate::ServerConfig::max_kept_header_bytes)
    /// of them (in order; a header that does not fit is left out whole).
    /// The authentication hook sees them all: copy what you need from
    /// there into the session's [`extensions`](Self::extensions).
    pub fn headers(&self) -> &HeaderMap {
        &self.shared().headers
    }

    /// What the authentication hook attached (the identity), if anything.
    pub fn extensions(&self) -> &Extensions {
        &self.shared().extensions
    }

    /// The transport currently attached, if any.
    pub fn transport(&self) -> Option<TransportKind> {
        self.shared().lock().transport()
    }

    /// The next message from the client, in order, exactly once. `None`
    /// once the session is over (messages received before that are
    /// returned first).
    ///
    /// Like tokio's channels, it takes part in tokio's cooperative
    /// scheduling: a task that finds messages queued every time yields to
    /// the runtime now and then (after its budget of 128 ready operations),
    /// so that a busy session does not keep other tasks — other sessions,
    /// new connections — off its worker. Cancelling it then loses nothing.
    pub async fn recv(&self) -> Option<Message> {
        // Before anything is taken: a yield here leaves the message queued.
        tokio::task::coop::consume_budget().await;
        let shared = self.shared();
        if let Some(durable) = &shared.durable {
            // Asking for the next message: the last one is processed.
            shared.lock().app().asks();
            durable.wake.notify_one();
        }
        loop {
            let notified = shared.app.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if shared.is_gone() || shared.durable.as_ref().is_some_and(Durable::is_handing) {
                return None;
            }
            {
                let mut core = shared.lock();
                if let Some(message) = core.take_message() {
                    drop(core);
                    if let Some(durable) = &shared.durable {
                        // Progress to store: what came before is done.
                        durable.wake.notify_one();
                    }
                    return Some(message);
                }
                if core.is_closed() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Queues a message for the client, waiting while the replay buffer is
    /// full (until the client acknowledges). Fails only if the session is
    /// closed or the message is larger than the session's maximum.
    ///
    /// With a store ([`Builder::store`](crate::Builder::store)), returns
    /// once the store holds the message: a node's death cannot lose it.
    ///
    /// Takes part in tokio's cooperative scheduling, as
    /// [`recv`](Self::recv) does: a task that always finds room yields now
    /// and then.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        // Before the message is queued: a yield here leaves it unsent.
        tokio::task::coop::consume_budget().await;
        let message = message.into();
        let shared = self.shared();
        // When the send found no room (the clock is read only then), and
        // the count of senders waiting for room it is in meanwhile.
        let mut waiting = None;
        let sent = loop {
            let notified = shared.space.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            match shared.try_send(message.clone(), None) {
                Err(SendError::Full) => {
                    waiting.get_or_insert_with(|| (now(), shared.wait_for_room()));
                    notified.await;
                }
                sent => break sent,
            }
        };
        if let Some((since, waited_for_room)) = waiting {
            drop(waited_for_room);
            let waited = now().saturating_duration_since(since);
            shared.server.metrics.send_waited(waited);
        }
        match sent {
            Ok(Some(seq)) => shared.stored_sent(seq).await,
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Queues a message if there is room now; [`SendError::Full`] otherwise.
    /// With a store, the message is stored shortly after (before it goes
    /// out).
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.shared().try_send(message.into(), None).map(|_| ())
    }

    /// The topic named `name`, as [`Holdfast::topic`](crate::Holdfast::topic)
    /// gives it: to subscribe this session, or publish.
    pub fn topic(&self, name: &str) -> Result<crate::Topic, crate::TopicError> {
        self.shared().server.topic(name)
    }

    /// Whether this session continues one that another node served until
    /// it died or shut down (a takeover, with a store): the client's
    /// messages your last handler did not finish come again, from the
    /// one it was processing; see `docs/scaling.md`.
    pub fn continued(&self) -> bool {
        self.shared()
            .durable
            .as_ref()
            .is_some_and(|durable| durable.continued)
    }

    /// Ends the session: messages already sent are delivered first, then the
    /// client gets `close` with this code and reason.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        self.shared()
            .lock()
            .close(now(), Close::new(code, reason.into()));
    }

    /// Whether the session is over — on this node: with a store, a
    /// session that moved to another node is over here.
    pub fn is_closed(&self) -> bool {
        self.shared().is_gone() || self.shared().lock().is_closed()
    }

    /// Waits until the session is over and says how it ended.
    pub async fn closed(&self) -> SessionEnd {
        let shared = self.shared();
        loop {
            let notified = shared.app.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if let Some(end) = self.end() {
                return end;
            }
            notified.await;
        }
    }

    fn end(&self) -> Option<SessionEnd> {
        if self.shared().is_gone() {
            return Some(SessionEnd {
                close: Close::new(CloseCode::RECONNECT, "session moved to another node"),
            });
        }
        let core = self.shared().lock();
        core.close_reason().map(|close| SessionEnd {
            close: close.clone(),
        })
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id()).finish()
    }
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEnd {
    /// The code and reason sent to (or received from) the client;
    /// [`CloseCode::SESSION_LOST`] when the resume window ran out.
    pub close: Close,
}

impl SessionEnd {
    /// Whether the session ended because the client stayed away longer than
    /// the resume window.
    pub fn expired(&self) -> bool {
        self.close.code == CloseCode::SESSION_LOST
    }

    /// Whether the session did not end but moved to another node (with a
    /// store: taken over, or handed over on shutdown). Its handler there
    /// carries on; this one should stop.
    pub fn moved(&self) -> bool {
        self.close.code == CloseCode::RECONNECT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex as StdMutex;

    #[test]
    fn kept_headers_stay_within_the_budget_and_are_never_cut() {
        let mut headers = HeaderMap::new();
        headers.insert("a", http::HeaderValue::from_static("1"));
        let huge = "x".repeat(380 * 1024);
        headers.insert(
            "big",
            http::HeaderValue::from_str(&huge).unwrap_or(http::HeaderValue::from_static("")),
        );
        headers.insert("cookie", http::HeaderValue::from_static("user=ada"));
        let kept = kept_copy(&headers, 8 * 1024);
        assert_eq!(kept.get("a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(
            kept.get("cookie").map(|v| v.as_bytes()),
            Some(&b"user=ada"[..])
        );
        assert!(kept.get("big").is_none(), "too big to keep: left out whole");
        let total: usize = kept.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        assert!(total <= 8 * 1024);
        assert!(kept_copy(&headers, 0).is_empty());
    }

    /// A log sink for one test.
    #[derive(Clone, Default)]
    struct Captured(Arc<StdMutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_client_close_reason_cannot_forge_or_flood_log_lines() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let reason = format!(
            "bye\n2026-11-30T00:00:00Z  INFO forged: admin logged in\u{1b}[31m{}",
            "y".repeat(300 * 1024)
        );
        let event = ServerEvent::Closed {
            close: Close::new(CloseCode::NORMAL, reason),
            initiator: holdfast_protocol::Initiator::Peer,
        };
        tracing::subscriber::with_default(subscriber, || log_event("s1", &event));
        let log = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
        assert_eq!(log.matches('\n').count(), 1, "one line: {log:?}");
        assert!(!log.contains('\u{1b}'), "no raw escape: {log:?}");
        assert!(log.contains(r"bye\n2026"), "escaped: {log:?}");
        assert!(log.len() < 1024, "cut: {} bytes", log.len());
    }
}
