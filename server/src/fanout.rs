//! Broadcasting: the same messages to many sessions, with an explicit
//! policy for the sessions that cannot keep up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use holdfast_protocol::{CloseCode, Message, SendError};

use crate::session::Session;

/// What to do with a member whose replay buffer is full (its client has not
/// acknowledged enough) when a message is broadcast.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close that session with code 4429 ("too slow") and carry on: one
    /// slow client never holds the others back, and never silently misses
    /// a message. The default.
    #[default]
    Disconnect,
    /// Wait until every member has room: the slowest client sets the pace
    /// for all.
    Wait,
}

/// A set of sessions that receive the same messages, each exactly once and
/// in order, sharing one copy of every payload.
///
/// A fan-out lives in this process: its members are sessions of this
/// node. For a broadcast that reaches every node sharing a store — with
/// one order for everyone, a history, and presence — use a
/// [`Topic`](crate::Topic).
///
/// ```no_run
/// use holdfast_server::{Fanout, Holdfast, SlowConsumer};
///
/// let room = Fanout::new(SlowConsumer::Disconnect);
/// let holdfast = Holdfast::builder().on_session({
///     let room = room.clone();
///     move |session| {
///         let room = room.clone();
///         async move {
///             room.join(&session);
///             while let Some(message) = session.recv().await {
///                 room.send(message).await;
///             }
///             room.leave(&session);
///         }
///     }
/// });
/// ```
#[derive(Clone, Default)]
pub struct Fanout {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    members: Mutex<HashMap<String, Session>>,
    policy: SlowConsumer,
}

/// What one broadcast did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutReport {
    /// Members the message was queued for.
    pub delivered: usize,
    /// Members closed by [`SlowConsumer::Disconnect`].
    pub disconnected: usize,
    /// Members found closed (and removed).
    pub gone: usize,
}

impl Fanout {
    /// An empty fan-out with this slow-consumer policy.
    pub fn new(policy: SlowConsumer) -> Self {
        Self {
            inner: Arc::new(Inner {
                members: Mutex::new(HashMap::new()),
                policy,
            }),
        }
    }

    /// Adds a session (again: no effect).
    pub fn join(&self, session: &Session) {
        self.members()
            .insert(session.id().to_owned(), session.clone());
    }

    /// Removes a session.
    pub fn leave(&self, session: &Session) {
        self.members().remove(session.id());
    }

    /// Members now.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    /// Queues `message` for every member, applying the slow-consumer
    /// policy. Closed members are removed.
    pub async fn send(&self, message: impl Into<Message>) -> FanoutReport {
        let message = message.into();
        let members: Vec<Session> = self.members().values().cloned().collect();
        let mut report = FanoutReport::default();
        let mut remove = Vec::new();
        for session in members {
            let result = match self.inner.policy {
                SlowConsumer::Wait => session.send(message.clone()).await,
                SlowConsumer::Disconnect => {
                    // `try_send` never waits: yield now and then (tokio's
                    // cooperative budget, as `send` does) across thousands
                    // of members.
                    tokio::task::coop::consume_budget().await;
                    session.try_send(message.clone())
                }
            };
            match result {
                Ok(()) => report.delivered += 1,
                Err(SendError::Full) => {
                    tracing::info!(session = session.id(), "disconnecting a slow consumer");
                    session.close(
                        CloseCode::TOO_SLOW,
                        "too slow: could not keep up with the broadcast",
                    );
                    report.disconnected += 1;
                    remove.push(session.id().to_owned());
                }
                Err(_) => {
                    report.gone += 1;
                    remove.push(session.id().to_owned());
                }
            }
        }
        if !remove.is_empty() {
            let mut members = self.members();
            for id in remove {
                members.remove(&id);
            }
        }
        report
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.members.lock().unwrap_or_else(|e| e.into_inner())
    }
}
