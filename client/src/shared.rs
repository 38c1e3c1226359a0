//! What the application's handles and the driver task share: the session
//! core, the ordered queue of events for the application, and the wakers.
//!
//! Everything goes through [`Shared::lock`], whose guard wakes whoever can
//! progress when it is dropped — readers when events were queued, senders
//! when acks freed room, transports when the application drained its
//! queue, the driver when the attachment proved itself, everyone when the
//! session ended — so no call site has to remember whom to wake.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use holdfast_protocol::connector::Fallback;
use holdfast_protocol::{ClientSession, Close, Message, SendError, TransportKind};
use tokio::sync::{Notify, watch};

use crate::error::ConnectError;
use crate::event::Event;

/// Where `connect` stands.
#[derive(Clone, Debug)]
pub(crate) enum ConnectState {
    Pending,
    Open,
    Failed(ConnectError),
}

/// The current time on tokio's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// The application: events are ready.
    pub(crate) app: Notify,
    /// Senders: room in the replay buffer, or the session ended.
    pub(crate) space: Notify,
    /// The driver: the application queued something, or let go.
    pub(crate) driver: Notify,
    /// Transports holding back input: the application took events.
    pub(crate) drained: Notify,
    /// The driver: the current attachment proved itself (see
    /// [`Progress`]).
    pub(crate) progress: Notify,
    /// Largest size of unread message payloads before transports stop
    /// reading.
    pub(crate) max_inbound_bytes: usize,
    /// How long `close` waits for the server's answer.
    pub(crate) close_timeout: std::time::Duration,
    /// Whether the session opened yet, for `connect`.
    pub(crate) connect_state: watch::Sender<ConnectState>,
}

pub(crate) struct Inner {
    pub(crate) core: ClientSession,
    /// Events for the application, in order; messages among them.
    events: VecDeque<Event>,
    /// Payload bytes of the messages in `events`.
    event_bytes: usize,
    /// Set once the session is over (after `Event::Closed` is queued).
    pub(crate) closed: Option<Close>,
    /// The transport that last carried the session.
    pub(crate) transport: Option<TransportKind>,
    /// The application dropped every handle.
    pub(crate) abandoned: bool,
    /// The application asked to close.
    pub(crate) closing: bool,
    /// How far the current attachment got, for the connection policy.
    pub(crate) progress: Progress,
    /// The connection policy's fallback report, for the application.
    pub(crate) fallbacks: Vec<Fallback>,
    /// The `report` value the current attachment's requests carry
    /// (`PROTOCOL.md` §1.2): the entries the server has not been told yet.
    pub(crate) report: Option<String>,
    /// Events ever queued (tells the guard new ones arrived).
    queued: u64,
}

/// What the guard compares before and after, to know whom to wake.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    queued: u64,
    acked: u64,
    /// The application heard the end (`Inner::closed`).
    closed: bool,
    /// The core is over (senders fail from now on).
    core_closed: bool,
    inbound_full: bool,
    progress: Progress,
}

impl Inner {
    fn snapshot(&self, max_inbound_bytes: usize) -> Snapshot {
        Snapshot {
            queued: self.queued,
            acked: self.core.acked(),
            closed: self.closed.is_some(),
            core_closed: self.core.is_closed(),
            inbound_full: self.event_bytes >= max_inbound_bytes,
            progress: self.progress,
        }
    }
}

/// Exclusive access to the shared state; wakes whoever can progress when
/// dropped.
pub(crate) struct Guard<'a> {
    shared: &'a Shared,
    inner: Option<MutexGuard<'a, Inner>>,
    before: Snapshot,
}

impl Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        match &self.inner {
            Some(inner) => inner,
            None => unreachable!("the guard is only emptied in drop"),
        }
    }
}

impl DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        match &mut self.inner {
            Some(inner) => inner,
            None => unreachable!("the guard is only emptied in drop"),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let after = inner.snapshot(self.shared.max_inbound_bytes);
        drop(inner);
        let before = self.before;
        if after == before {
            return;
        }
        let ended = (after.closed && !before.closed) || (after.core_closed && !before.core_closed);
        if after.queued != before.queued || ended {
            self.shared.app.notify_waiters();
        }
        // Any acknowledgement frees room (in messages, if not in payload
        // bytes: an ack of empty messages frees only their overhead).
        if after.acked > before.acked || ended {
            self.shared.space.notify_waiters();
        }
        if before.inbound_full && !after.inbound_full {
            self.shared.drained.notify_waiters();
        }
        if after.progress != before.progress {
            self.shared.progress.notify_one();
        }
    }
}

/// How far the current attachment got: the transports record it, the
/// driver tells the connection policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Its first frame arrived: the transport works.
    pub(crate) opened: bool,
    /// Frames went both ways on it.
    pub(crate) trusted: bool,
}

impl Shared {
    pub(crate) fn new(
        core: ClientSession,
        max_inbound_bytes: usize,
        close_timeout: std::time::Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                core,
                events: VecDeque::new(),
                event_bytes: 0,
                closed: None,
                transport: None,
                abandoned: false,
                closing: false,
                progress: Progress::default(),
                fallbacks: Vec::new(),
                report: None,
                queued: 0,
            }),
            app: Notify::new(),
            space: Notify::new(),
            driver: Notify::new(),
            drained: Notify::new(),
            progress: Notify::new(),
            max_inbound_bytes,
            close_timeout,
            connect_state: watch::Sender::new(ConnectState::Pending),
        })
    }

    /// The shared state; the guard wakes whoever can progress when dropped.
    pub(crate) fn lock(&self) -> Guard<'_> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = inner.snapshot(self.max_inbound_bytes);
        Guard {
            shared: self,
            inner: Some(inner),
            before,
        }
    }

    /// Records how far the current attachment got (the driver hears).
    pub(crate) fn attempt_progress(&self, update: impl FnOnce(&mut Progress)) {
        update(&mut self.lock().progress);
    }

    /// Queues an event for the application.
    pub(crate) fn push_event(&self, event: Event) {
        self.lock().push_event(event);
    }

    /// Moves messages the core received into the event queue.
    pub(crate) fn take_messages(inner: &mut Inner) {
        while let Some(message) = inner.core.poll_message() {
            inner.push_event(Event::Message(message));
        }
    }

    /// Whether transports should stop reading until the application
    /// catches up.
    pub(crate) fn inbound_full(&self) -> bool {
        self.lock().event_bytes >= self.max_inbound_bytes
    }

    /// The next event, waiting for one; `None` after `Closed`.
    pub(crate) async fn next_event(&self) -> Option<Event> {
        loop {
            let notified = self.app.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if let Some(event) = inner.events.pop_front() {
                    if let Event::Message(m) = &event {
                        inner.event_bytes -= m.len();
                    }
                    return Some(event);
                }
                if inner.closed.is_some() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Queues a message for the server.
    pub(crate) fn try_send(&self, message: Message) -> Result<(), SendError> {
        let result = self.lock().core.send(message).map(|_| ());
        if result.is_ok() {
            // The application queued something: the transport sends it.
            self.driver.notify_one();
        }
        result
    }

    /// Queues a message, waiting while the replay buffer is full.
    pub(crate) async fn send(&self, message: Message) -> Result<(), SendError> {
        loop {
            let notified = self.space.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            match self.try_send(message.clone()) {
                Err(SendError::Full) => notified.await,
                other => return other,
            }
        }
    }
}

impl Inner {
    pub(crate) fn push_event(&mut self, event: Event) {
        if let Event::Message(m) = &event {
            self.event_bytes += m.len();
        }
        self.queued += 1;
        self.events.push_back(event);
    }
}
