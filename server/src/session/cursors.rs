//! A session's place in the topics it subscribed to, and how topics send
//! to it.
//!
//! With a store, each topic message a session gets moves its cursor in
//! that topic, under the session's lock, together with the message: the
//! writer stores the cursors with the messages (one atomic write), so a
//! node that takes the session over resumes each topic right after the
//! last message the store holds — nothing missed, nothing twice.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;

use holdfast_protocol::{Message, SendError};

use super::Shared;
use crate::store::Position;

/// Topic → the position of the last message of it the session got.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    map: BTreeMap<Arc<str>, Position>,
    /// Bumped by every change: the writer stores the whole set when it
    /// differs from the version stored.
    version: u64,
}

impl Cursors {
    /// The cursors a session taken over had in the store, at the version
    /// `stored` (so that they are not written back unchanged).
    pub(crate) fn restored(cursors: Vec<(String, Position)>, stored: u64) -> Self {
        Self {
            map: cursors
                .into_iter()
                .map(|(topic, position)| (topic.into(), position))
                .collect(),
            version: stored,
        }
    }

    pub(crate) fn advance(&mut self, topic: &Arc<str>, position: Position) {
        // Per topic message: update in place, no clone of the name.
        match self.map.get_mut(topic) {
            Some(cursor) => *cursor = position,
            None => {
                self.map.insert(topic.clone(), position);
            }
        }
        self.version += 1;
    }

    pub(crate) fn get(&self, topic: &str) -> Option<Position> {
        self.map.get(topic).copied()
    }

    pub(crate) fn forget(&mut self, topic: &str) {
        if self.map.remove(topic).is_some() {
            self.version += 1;
        }
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    pub(crate) fn to_vec(&self) -> Vec<(String, Position)> {
        self.map
            .iter()
            .map(|(topic, position)| (topic.to_string(), *position))
            .collect()
    }
}

impl Shared {
    /// Queues a topic's message if there is room now.
    pub(crate) fn try_send_topic(
        &self,
        message: Message,
        topic: &Arc<str>,
        position: Position,
    ) -> Result<(), SendError> {
        self.try_send(message, Some((topic, position))).map(|_| ())
    }

    /// Queues a topic's message, waiting for room.
    pub(crate) async fn send_topic(
        &self,
        message: Message,
        topic: &Arc<str>,
        position: Position,
    ) -> Result<(), SendError> {
        // Counted as waiting for room while it waits (`wants_room`).
        let mut waiting = None;
        loop {
            let notified = self.space.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            match self.try_send(message.clone(), Some((topic, position))) {
                Err(SendError::Full) => {
                    waiting.get_or_insert_with(|| self.wait_for_room());
                    notified.await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// The position of the last message of `topic` the session got (with
    /// a store; from the store after a takeover).
    pub(crate) fn cursor(&self, topic: &str) -> Option<Position> {
        self.lock().inner().cursors.get(topic)
    }

    /// Topics the session has a cursor in.
    pub(crate) fn cursor_count(&self) -> usize {
        self.lock().inner().cursors.map.len()
    }

    /// The session joined `topic` at `position` (the last message it is
    /// not to get). With a store, waits until the store holds it, so that
    /// a takeover resumes the topic from there; `false` if the session
    /// left this node meanwhile.
    pub(crate) async fn start_cursor(&self, topic: &Arc<str>, position: Position) -> bool {
        let Some(durable) = &self.durable else {
            return true;
        };
        let version = {
            let mut core = self.lock();
            let cursors = &mut core.inner().cursors;
            cursors.advance(topic, position);
            cursors.version()
        };
        durable.wake.notify_one();
        loop {
            let notified = durable.stored.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.lock().inner().stored.cursors >= version {
                return true;
            }
            if durable.is_gone() {
                return false;
            }
            notified.await;
        }
    }

    /// The session left `topic`.
    pub(crate) fn forget_cursor(&self, topic: &str) {
        self.lock().inner().cursors.forget(topic);
        if let Some(durable) = &self.durable {
            durable.wake.notify_one();
        }
    }

    /// Closes the session with 4429: it could not keep up with a topic.
    pub(crate) fn close_too_slow(&self) {
        self.lock().close(
            super::now(),
            holdfast_protocol::Close::new(
                holdfast_protocol::CloseCode::TOO_SLOW,
                "too slow: could not keep up with a topic",
            ),
        );
    }

    /// Whether the session is over on this node (closed, or moved away).
    pub(crate) fn is_over(&self) -> bool {
        self.is_gone() || self.lock().is_closed()
    }

    /// Waits until the session is over on this node.
    pub(crate) async fn over(&self) {
        loop {
            let notified = self.app.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.is_over() {
                return;
            }
            notified.await;
        }
    }
}
