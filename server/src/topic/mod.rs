//! Topics: messages published once and delivered to every subscribed
//! session, on every node, in one order, exactly once per session — and
//! who is subscribed (presence).
//!
//! On one node (no store) a topic lives in this process. With a store
//! ([`Builder::store`](crate::Builder::store)) it lives in the store's
//! [`Broker`]: a message published on any node reaches the subscribers of
//! every node, and a session taken over by another node (its node died,
//! or shut down for a deploy) resumes each of its topics right after the
//! last message it got. See `docs/scaling.md`.
//!
//! Each node runs one hub per topic it uses (`hub.rs`): the hub gets the
//! topic's messages from the broker in offset order, fills any gap by
//! reading the log, and queues each message for its local subscribers.

mod hub;
mod presence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use holdfast_protocol::Message;
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::store::Member;
use crate::store::{Broker, Position, StoreError, TopicEvent, valid_topic_name};
use crate::{Session, SlowConsumer};
use hub::Command;
pub use presence::{PresenceEvent, PresenceWatch};

/// Topics one session can be subscribed to at a time, with a store (its
/// cursors are stored with every write).
pub const MAX_TOPICS_PER_SESSION: usize = 64;

/// Events a hub's queue holds; past that the hub catches up from the log.
const HUB_QUEUE: usize = 1024;

/// Why a topic operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Topic names are 1 to 200 bytes of printable ASCII other than `{`
    /// and `}`.
    #[error("invalid topic name {0:?}: use 1 to 200 printable ASCII characters, no braces")]
    InvalidName(String),
    /// The session is subscribed to [`MAX_TOPICS_PER_SESSION`] topics.
    #[error("a session can be subscribed to at most {MAX_TOPICS_PER_SESSION} topics")]
    TooManyTopics,
    /// The message is larger than any session accepts.
    #[error("message of {len} bytes is over the {max}-byte maximum")]
    TooBig {
        /// Its size.
        len: usize,
        /// The maximum ([`SessionConfig::max_message`](crate::SessionConfig)).
        max: usize,
    },
    /// Presence info over [`MAX_MEMBER_INFO`](crate::store::MAX_MEMBER_INFO) bytes.
    #[error("presence info is at most {} bytes", crate::store::MAX_MEMBER_INFO)]
    InfoTooLong,
    /// The session is over (on this node).
    #[error("the session is over")]
    Closed,
    /// The store cannot be reached; try again.
    #[error("the topic store is unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for TopicError {
    fn from(error: StoreError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// What [`Topic::subscribe`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subscribed {
    /// The session had a place in the topic (it was taken over from
    /// another node, or subscribed before): it got the messages published
    /// since, before any new one.
    pub resumed: bool,
    /// Messages published since that the topic's history no longer held
    /// (0 normally; see [`DEFAULT_HISTORY`](crate::store::DEFAULT_HISTORY)).
    pub missed: u64,
}

/// A topic: publish to every subscribed session, on every node.
///
/// ```no_run
/// use holdfast_server::Holdfast;
///
/// let holdfast = Holdfast::builder().on_session(|session| async move {
///     let Ok(room) = session.topic("room") else { return };
///     // Every message published to "room" now reaches this client, and
///     // presence lists it as "Ada".
///     if room.subscribe_as(&session, "Ada").await.is_err() {
///         return;
///     }
///     while let Some(message) = session.recv().await {
///         let _ = room.publish(message).await;
///     }
/// });
/// // Elsewhere in the app: `holdfast.topic("room")?.publish("hello").await`.
/// # drop(holdfast);
/// ```
#[derive(Clone)]
pub struct Topic {
    hub: Arc<HubHandle>,
    policy: SlowConsumer,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.name()).finish()
    }
}

/// What the application's handles and the hub task share.
pub(crate) struct HubHandle {
    name: Arc<str>,
    topics: Arc<Topics>,
    commands: mpsc::Sender<Command>,
    /// The hub's queue was full and an event was dropped: it catches up.
    lost: AtomicBool,
    members: watch::Receiver<Arc<[Member]>>,
}

impl HubHandle {
    /// Hands the hub an event from the broker, or notes that it must
    /// catch up.
    fn event(&self, command: Command) {
        if self.commands.try_send(command).is_err() {
            self.lost.store(true, Ordering::Release);
            // Wake the hub if it is idle (its queue may be full: then it
            // is not idle, and sees the flag after the next command).
            let _ = self.commands.try_send(Command::CatchUp);
        }
    }
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.hub.name
    }

    /// The same topic, whose subscribers (from this handle's
    /// [`subscribe`](Self::subscribe)) get this slow-consumer policy:
    /// [`SlowConsumer::Disconnect`] (the default) closes a session whose
    /// replay buffer is full with 4429; [`SlowConsumer::Wait`] makes
    /// every subscriber on this node wait for it.
    pub fn with_slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.policy = policy;
        self
    }

    /// Publishes a message: every subscribed session, on every node, gets
    /// it after the ones published before it. Returns once the topic's
    /// log holds it.
    pub async fn publish(&self, message: impl Into<Message>) -> Result<Position, TopicError> {
        let message = message.into();
        let max = self.hub.topics.max_message;
        if message.len() > max {
            return Err(TopicError::TooBig {
                len: message.len(),
                max,
            });
        }
        Ok(self
            .hub
            .topics
            .broker
            .publish(&self.hub.name, &message)
            .await?)
    }

    /// Subscribes `session`, listed in presence with empty info. See
    /// [`subscribe_as`](Self::subscribe_as).
    pub async fn subscribe(&self, session: &Session) -> Result<Subscribed, TopicError> {
        self.subscribe_as(session, "").await
    }

    /// Subscribes `session`: it gets every message published from now on
    /// (or, for a session that had a place in the topic — taken over from
    /// another node — every message after that place first), and is listed
    /// in presence as `info` until it unsubscribes or ends. Subscribing
    /// again only updates `info`.
    pub async fn subscribe_as(
        &self,
        session: &Session,
        info: impl Into<String>,
    ) -> Result<Subscribed, TopicError> {
        let info = info.into();
        if info.len() > crate::store::MAX_MEMBER_INFO {
            return Err(TopicError::InfoTooLong);
        }
        let (reply, answer) = oneshot::channel();
        let command = Command::Subscribe {
            shared: session.shared_arc().clone(),
            info,
            policy: self.policy,
            reply,
        };
        self.hub
            .commands
            .send(command)
            .await
            .map_err(|_| TopicError::Unavailable("the topic stopped".into()))?;
        let (subscribed, new) = answer
            .await
            .map_err(|_| TopicError::Unavailable("the topic stopped".into()))??;
        if !new {
            // Only the info changed: its watcher runs already.
            return Ok(subscribed);
        }
        // The session leaves the topic (and presence) when it ends.
        let hub = self.hub.clone();
        let shared = session.shared_arc().clone();
        tokio::spawn(async move {
            shared.over().await;
            let _ = hub
                .commands
                .send(Command::Unsubscribe {
                    session: shared.session_id.clone(),
                    forget: false,
                })
                .await;
        });
        Ok(subscribed)
    }

    /// Unsubscribes `session`: it gets no more of the topic's messages and
    /// leaves presence.
    pub async fn unsubscribe(&self, session: &Session) {
        let _ = self
            .hub
            .commands
            .send(Command::Unsubscribe {
                session: session.id().into(),
                forget: true,
            })
            .await;
    }

    /// The newest `count` messages the topic's history holds, oldest
    /// first.
    pub async fn history(&self, count: usize) -> Result<Vec<(Position, Message)>, TopicError> {
        let broker = &self.hub.topics.broker;
        let tail = broker.read(&self.hub.name, 0, 0).await?;
        let after = tail.last.saturating_sub(count as u64);
        let range = broker.read(&self.hub.name, after, count).await?;
        Ok(range
            .messages
            .into_iter()
            .map(|(offset, message)| {
                (
                    Position {
                        epoch: range.epoch,
                        offset,
                    },
                    message,
                )
            })
            .collect())
    }

    /// Who is subscribed, on every live node, as the store says now.
    pub async fn members(&self) -> Result<Vec<Member>, TopicError> {
        Ok(self.hub.topics.broker.members(&self.hub.name).await?)
    }

    /// Follows presence: the members as this node last heard, and who
    /// joins and leaves. Members of a node that died leave within about a
    /// second of the store noticing.
    pub fn watch_presence(&self) -> PresenceWatch {
        PresenceWatch::new(self.hub.members.clone(), self.hub.clone())
    }
}

/// This node's topics: one hub per topic in use, fed by the broker's
/// events.
pub(crate) struct Topics {
    broker: Arc<dyn Broker>,
    hubs: Mutex<HashMap<Arc<str>, Weak<HubHandle>>>,
    /// Subscribing and unsubscribing in the broker, one at a time: a hub
    /// that stops must not unsubscribe its successor.
    subscriptions: tokio::sync::Mutex<()>,
    /// The largest message a session accepts.
    max_message: usize,
}

impl Topics {
    /// Starts the topics of this node on `broker` (spawns the task that
    /// routes its events).
    pub(crate) fn start(broker: Arc<dyn Broker>, max_message: usize) -> Arc<Self> {
        let topics = Arc::new(Self {
            broker,
            hubs: Mutex::new(HashMap::new()),
            subscriptions: tokio::sync::Mutex::new(()),
            max_message,
        });
        tokio::spawn(route(Arc::downgrade(&topics), topics.broker.events()));
        topics
    }

    /// The topic named `name`, its hub started if it was not running.
    pub(crate) fn topic(self: &Arc<Self>, name: &str) -> Result<Topic, TopicError> {
        if !valid_topic_name(name) {
            return Err(TopicError::InvalidName(name.escape_debug().to_string()));
        }
        let mut hubs = self.lock();
        if let Some(hub) = hubs.get(name).and_then(Weak::upgrade) {
            return Ok(Topic {
                hub,
                policy: SlowConsumer::default(),
            });
        }
        let name: Arc<str> = name.into();
        let (commands, receiver) = mpsc::channel(HUB_QUEUE);
        let (members_tx, members) = watch::channel(Arc::from(Vec::new()));
        let hub = Arc::new(HubHandle {
            name: name.clone(),
            topics: self.clone(),
            commands,
            lost: AtomicBool::new(false),
            members,
        });
        hubs.retain(|_, hub| hub.strong_count() > 0);
        hubs.insert(name.clone(), Arc::downgrade(&hub));
        tokio::spawn(hub::run(hub::Hub::new(
            name,
            self.clone(),
            Arc::downgrade(&hub),
            members_tx,
            receiver,
        )));
        Ok(Topic {
            hub,
            policy: SlowConsumer::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Weak<HubHandle>>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hub(&self, name: &str) -> Option<Arc<HubHandle>> {
        self.lock().get(name).and_then(Weak::upgrade)
    }

    /// Whether a hub for `name` is running.
    fn has_hub(&self, name: &str) -> bool {
        self.hub(name).is_some()
    }
}

/// Routes the broker's events to the hubs.
async fn route(topics: Weak<Topics>, mut events: mpsc::Receiver<TopicEvent>) {
    while let Some(event) = events.recv().await {
        let Some(topics) = topics.upgrade() else {
            return;
        };
        match event {
            TopicEvent::Published {
                topic,
                position,
                message,
            } => {
                if let Some(hub) = topics.hub(&topic) {
                    hub.event(Command::Published { position, message });
                }
            }
            TopicEvent::Presence { topic } => {
                if let Some(hub) = topics.hub(&topic) {
                    hub.event(Command::Presence);
                }
            }
            TopicEvent::Reset => {
                let hubs: Vec<Arc<HubHandle>> =
                    topics.lock().values().filter_map(Weak::upgrade).collect();
                for hub in hubs {
                    hub.lost.store(true, Ordering::Release);
                    hub.event(Command::CatchUp);
                }
            }
        }
    }
}
