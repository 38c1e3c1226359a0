//! One topic on one node: the task that delivers the topic's messages, in
//! offset order, to the sessions of this node subscribed to it.
//!
//! The hub knows where the log stands (`epoch`, `last`: the last offset
//! it delivered). Every message from the broker is checked against that:
//! an offset it has is skipped (a broker may repeat itself), one past the
//! next is a gap filled by reading the log first, one of another epoch
//! means the log was lost and started again. A session subscribing with a
//! place in the topic (a cursor, restored after a takeover) first gets
//! what it missed from the log, then joins the others at `last`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use holdfast_protocol::{Message, SendError};
use tokio::sync::{mpsc, oneshot, watch};

use super::{HubHandle, MAX_TOPICS_PER_SESSION, Subscribed, TopicError, Topics};
use crate::SlowConsumer;
use crate::session::Shared;
use crate::store::{Member, Position, StoreFuture};

/// Messages read from the log per request when catching up.
const READ_BATCH: usize = 256;

/// How long a subscription waits for the session's store to hold its
/// starting place.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// How often presence is read again while anyone on this node uses the
/// topic (members of a node that died leave without an announcement), and
/// the log's end checked against what was delivered.
const PRESENCE_REFRESH: Duration = Duration::from_secs(1);

/// What the hub is asked to do.
pub(crate) enum Command {
    /// A message from the broker.
    Published {
        position: Position,
        message: Message,
    },
    /// Presence changed.
    Presence,
    /// Events were lost: read the log from `last`.
    CatchUp,
    /// Once a second: presence again, and whether the log moved past
    /// `last` with no event saying so (a broker drops events when a
    /// node's queue is full, and says so only with its next event).
    Tick,
    Subscribe {
        shared: Arc<Shared>,
        info: String,
        policy: SlowConsumer,
        /// The result, and whether the session was not subscribed before.
        reply: oneshot::Sender<Result<(Subscribed, bool), TopicError>>,
    },
    Unsubscribe {
        session: Arc<str>,
        /// The application unsubscribed (else the session ended here, and
        /// keeps its place for a node that takes it over).
        forget: bool,
    },
}

struct Subscriber {
    shared: Arc<Shared>,
    policy: SlowConsumer,
}

pub(crate) struct Hub {
    name: Arc<str>,
    topics: Arc<Topics>,
    handle: Weak<HubHandle>,
    members: watch::Sender<Arc<[Member]>>,
    commands: mpsc::Receiver<Command>,
    /// The log's epoch (0: not read yet, or the log does not exist).
    epoch: u64,
    /// The last offset delivered to the subscribers.
    last: u64,
    subscribers: HashMap<Arc<str>, Subscriber>,
}

impl Hub {
    pub(crate) fn new(
        name: Arc<str>,
        topics: Arc<Topics>,
        handle: Weak<HubHandle>,
        members: watch::Sender<Arc<[Member]>>,
        commands: mpsc::Receiver<Command>,
    ) -> Self {
        Self {
            name,
            topics,
            handle,
            members,
            commands,
            epoch: 0,
            last: 0,
            subscribers: HashMap::new(),
        }
    }
}

/// Runs the hub until no handle on it is left.
pub(crate) async fn run(mut hub: Hub) {
    // Subscribe before reading where the log stands: nothing published in
    // between is missed (what comes twice is skipped).
    {
        let _one_at_a_time = hub.topics.subscriptions.lock().await;
        retry(|| hub.topics.broker.subscribe(&hub.name)).await;
    }
    let tail = retry(|| hub.topics.broker.read(&hub.name, 0, 0)).await;
    hub.epoch = tail.epoch;
    hub.last = tail.last;
    hub.refresh_presence().await;
    let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            command = hub.commands.recv() => command,
            _ = refresh.tick() => Some(Command::Tick),
        };
        let Some(command) = command else {
            break;
        };
        hub.handle(command).await;
        let lost = hub
            .handle
            .upgrade()
            .is_some_and(|handle| handle.lost.swap(false, Ordering::AcqRel));
        if lost {
            hub.catch_up().await;
            hub.refresh_presence().await;
        }
    }
    // Every handle is gone (no subscriber, no `Topic`, no presence watch).
    let _one_at_a_time = hub.topics.subscriptions.lock().await;
    if !hub.topics.has_hub(&hub.name) {
        let _ = hub.topics.broker.unsubscribe(&hub.name).await;
    }
}

impl Hub {
    async fn handle(&mut self, command: Command) {
        match command {
            Command::Published { position, message } => self.published(position, message).await,
            Command::Presence => self.refresh_presence().await,
            Command::Tick => {
                self.refresh_presence().await;
                if !self.subscribers.is_empty()
                    && let Ok(tail) = self.topics.broker.read(&self.name, 0, 0).await
                    && (tail.epoch != self.epoch || tail.last > self.last)
                {
                    self.catch_up().await;
                }
            }
            Command::CatchUp => {
                if let Some(handle) = self.handle.upgrade() {
                    handle.lost.store(true, Ordering::Release);
                }
            }
            Command::Subscribe {
                shared,
                info,
                policy,
                reply,
            } => {
                let result = self.subscribe(shared, info, policy).await;
                let _ = reply.send(result);
            }
            Command::Unsubscribe { session, forget } => {
                if let Some(subscriber) = self.subscribers.remove(&session) {
                    if forget {
                        subscriber.shared.forget_cursor(&self.name);
                    }
                    self.leave_presence(&session).await;
                }
            }
        }
    }

    /// A message from the broker.
    async fn published(&mut self, position: Position, message: Message) {
        if position.epoch != self.epoch {
            // The log was lost and started again (or this hub read it
            // before it existed): its offsets start over.
            if self.epoch != 0 {
                tracing::warn!(topic = %self.name.escape_debug(), "the topic's log was lost: starting again at its new beginning");
            }
            self.epoch = position.epoch;
            self.last = 0;
        }
        if position.offset <= self.last {
            return;
        }
        if position.offset > self.last + 1 {
            self.catch_up().await;
            if position.offset <= self.last || position.epoch != self.epoch {
                return;
            }
        }
        self.deliver(position, message).await;
    }

    /// Reads the log from `last` to its end and delivers it.
    async fn catch_up(&mut self) {
        loop {
            let range = retry(|| self.topics.broker.read(&self.name, self.last, READ_BATCH)).await;
            if range.epoch != self.epoch {
                self.epoch = range.epoch;
                self.last = 0;
                continue;
            }
            if range.first > self.last + 1 {
                self.fell_behind(range.first - self.last - 1).await;
                self.last = range.first - 1;
            }
            let done = range.messages.is_empty() || range.last <= self.last;
            for (offset, message) in range.messages {
                if offset > self.last {
                    let position = Position {
                        epoch: self.epoch,
                        offset,
                    };
                    self.deliver(position, message).await;
                }
            }
            if done || self.last >= range.last {
                return;
            }
        }
    }

    /// The log dropped messages this node had not delivered yet (it fell
    /// further behind than the topic's history): its subscribers cannot
    /// get them, and are closed with 4429 rather than silently miss them.
    async fn fell_behind(&mut self, missed: u64) {
        tracing::warn!(
            topic = %self.name.escape_debug(),
            missed,
            subscribers = self.subscribers.len(),
            "this node fell further behind than the topic's history: closing its subscribers"
        );
        for (id, subscriber) in std::mem::take(&mut self.subscribers) {
            subscriber.shared.close_too_slow();
            self.leave_presence(&id).await;
        }
    }

    /// Queues one message for every subscriber.
    async fn deliver(&mut self, position: Position, message: Message) {
        self.last = position.offset;
        let mut dropped = Vec::new();
        for (id, subscriber) in &self.subscribers {
            if !send(&self.name, subscriber, position, message.clone()).await {
                dropped.push(id.clone());
            }
        }
        for id in dropped {
            self.subscribers.remove(&id);
            self.leave_presence(&id).await;
        }
    }

    async fn subscribe(
        &mut self,
        shared: Arc<Shared>,
        info: String,
        policy: SlowConsumer,
    ) -> Result<(Subscribed, bool), TopicError> {
        if shared.is_over() {
            return Err(TopicError::Closed);
        }
        let id = shared.session_id.clone();
        let member = Member {
            id: id.to_string(),
            info,
        };
        if let Some(subscriber) = self.subscribers.get_mut(&id) {
            subscriber.policy = policy;
            self.topics.broker.join(&self.name, &member).await?;
            return Ok((Subscribed::default(), false));
        }
        let cursor = shared.cursor(&self.name);
        if cursor.is_none()
            && shared.durable.is_some()
            && shared.cursor_count() >= MAX_TOPICS_PER_SESSION
        {
            return Err(TopicError::TooManyTopics);
        }
        let subscriber = Subscriber { shared, policy };
        let mut subscribed = Subscribed::default();
        match cursor {
            Some(cursor) => {
                // The session may have got further on another node than
                // this hub has delivered (a hub reads the log only once a
                // second when its node's events stop): read to the log's
                // end first, or the hub would give it again what it got.
                if cursor.epoch != self.epoch || cursor.offset > self.last {
                    self.catch_up().await;
                }
                subscribed.resumed = true;
                subscribed.missed = self.resume(&subscriber, cursor).await?;
            }
            None => {
                let start = Position {
                    epoch: self.epoch,
                    offset: self.last,
                };
                let stored = tokio::time::timeout(
                    STORE_WAIT,
                    subscriber.shared.start_cursor(&self.name, start),
                )
                .await
                .map_err(|_| TopicError::Unavailable("the session store did not answer".into()))?;
                if !stored {
                    return Err(TopicError::Closed);
                }
            }
        }
        self.topics.broker.join(&self.name, &member).await?;
        self.subscribers.insert(id, subscriber);
        Ok((subscribed, true))
    }

    /// Gives a subscriber that was at `cursor` what it missed up to
    /// `last`; returns how many messages the history no longer held.
    async fn resume(&self, subscriber: &Subscriber, cursor: Position) -> Result<u64, TopicError> {
        // A cursor of another epoch: the log it counted in is gone, all of
        // the new one is new to this session.
        let mut after = if cursor.epoch == self.epoch {
            cursor.offset
        } else {
            0
        };
        let mut missed = 0;
        while after < self.last {
            let batch = READ_BATCH.min((self.last - after) as usize);
            let range = self.topics.broker.read(&self.name, after, batch).await?;
            if range.epoch != self.epoch {
                // The log started again meanwhile; the hub catches up
                // with everyone on the next message.
                break;
            }
            if range.first > after + 1 {
                missed += range.first - after - 1;
            }
            if range.messages.is_empty() {
                break;
            }
            for (offset, message) in range.messages {
                if offset > self.last {
                    break;
                }
                let position = Position {
                    epoch: self.epoch,
                    offset,
                };
                if !send(&self.name, subscriber, position, message).await {
                    return Err(TopicError::Closed);
                }
                after = offset;
            }
        }
        Ok(missed)
    }

    async fn leave_presence(&self, session: &str) {
        if let Err(error) = self.topics.broker.leave(&self.name, session).await {
            tracing::debug!(topic = %self.name.escape_debug(), %error, "presence: could not leave");
        }
        self.refresh_presence().await;
    }

    /// Reads presence and publishes it to this node's watchers if it
    /// changed.
    async fn refresh_presence(&self) {
        if self.members.receiver_count() <= 1 && self.subscribers.is_empty() {
            return;
        }
        match self.topics.broker.members(&self.name).await {
            Ok(mut members) => {
                members.sort();
                self.members.send_if_modified(|current| {
                    if **current == *members {
                        false
                    } else {
                        *current = members.into();
                        true
                    }
                });
            }
            Err(error) => {
                tracing::debug!(topic = %self.name.escape_debug(), %error, "presence: could not read");
            }
        }
    }
}

/// Queues one message for one subscriber by its policy; `false` if the
/// subscriber is to be dropped.
async fn send(
    topic: &Arc<str>,
    subscriber: &Subscriber,
    position: Position,
    message: Message,
) -> bool {
    // One message to thousands of subscribers finds room at once in each:
    // yield now and then (tokio's cooperative budget), so that the hub does
    // not keep the sessions' own tasks off its worker.
    tokio::task::coop::consume_budget().await;
    let shared = &subscriber.shared;
    let result = match subscriber.policy {
        SlowConsumer::Disconnect => shared.try_send_topic(message, topic, position),
        SlowConsumer::Wait => shared.send_topic(message, topic, position).await,
    };
    match result {
        Ok(()) => true,
        Err(SendError::Full) => {
            tracing::info!(session = %shared.session_id, topic = %topic.escape_debug(), "disconnecting a slow consumer");
            shared.close_too_slow();
            false
        }
        Err(_) => false,
    }
}

/// Tries `operation` until it works, backing off from 50 ms to 1 s: the
/// store may be away for a while; the hub has nothing better to do.
async fn retry<'a, T, F>(mut operation: F) -> T
where
    F: FnMut() -> StoreFuture<'a, T>,
{
    let mut failures = 0;
    loop {
        match operation().await {
            Ok(value) => return value,
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%error, "topic store unavailable, retrying");
                }
                tokio::time::sleep(crate::session::backoff(failures)).await;
            }
        }
    }
}
