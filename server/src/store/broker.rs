//! The broker seam: topics whose messages reach subscribers on every node,
//! in one order, with a bounded history, and who is subscribed (presence).
//!
//! A topic is a **log**: every published message gets the next **offset**
//! (1, 2, 3, … with no holes) within the log's **epoch**, a number the
//! broker picks when the log is created. The epoch changes only when the
//! log was lost (a store restarted without persistence): offsets of another
//! epoch name nothing. The broker keeps the newest messages of each log (its
//! history bound) so that a node that missed some — a bus hiccup, a
//! session taken over from a dead node — reads them back by offset.
//!
//! Each node asks for the topics it has subscribers on
//! ([`Broker::subscribe`]) and gets what is published to them as
//! [`TopicEvent`]s, in offset order per topic, or a [`TopicEvent::Reset`]
//! when events were lost (then it reads the logs to catch up).
//!
//! Presence is a set of [`Member`]s per topic, each recorded with the node
//! that added it: a member whose node died is not listed (it expires with
//! the node's liveness), and members are announced with
//! [`TopicEvent::Presence`] when they join or leave.

use std::sync::Arc;

use holdfast_protocol::Message;
use tokio::sync::mpsc;

use super::StoreFuture;

/// A message's place in a topic's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    /// The log's epoch (never 0 for a log that exists).
    pub epoch: u64,
    /// The message's offset in the log, from 1.
    pub offset: u64,
}

/// Part of a topic's log.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Range {
    /// The log's epoch now (0: the log does not exist yet; nothing was
    /// ever published to it).
    pub epoch: u64,
    /// The oldest offset the log still holds (`last + 1` when it holds
    /// none).
    pub first: u64,
    /// The newest offset in the log (0 when nothing was published).
    pub last: u64,
    /// The messages asked for: consecutive offsets, in order.
    pub messages: Vec<(u64, Message)>,
}

/// Someone subscribed to a topic, as presence lists them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    /// Unique within the topic: holdfast uses the session id.
    pub id: String,
    /// What the application said about them (a display name, say), at
    /// most [`MAX_MEMBER_INFO`] bytes.
    pub info: String,
}

/// Longest [`Member::info`], in bytes.
pub const MAX_MEMBER_INFO: usize = 1024;

/// Something published to a topic this node subscribed to.
#[derive(Clone, Debug, PartialEq)]
pub enum TopicEvent {
    /// A message, in offset order per topic (a broker may send one again:
    /// subscribers skip offsets they have).
    Published {
        /// The topic.
        topic: Arc<str>,
        /// Where it is in the log.
        position: Position,
        /// The message.
        message: Message,
    },
    /// Presence of the topic changed (someone joined or left).
    Presence {
        /// The topic.
        topic: Arc<str>,
    },
    /// Events were lost (the connection to the store dropped, or this
    /// node's queue overflowed): read every subscribed topic's log again
    /// from where you were, and its presence.
    Reset,
}

/// Where topics live: in this process for one node, in a store shared by
/// several nodes (Redis). See the [store module](crate::store).
///
/// Topic names given to a broker are checked by the caller: 1 to
/// [`MAX_TOPIC_NAME`] bytes of printable ASCII other than `{` and `}`.
pub trait Broker: Send + Sync + 'static {
    /// Appends `message` to the topic's log and hands it to every
    /// subscribed node; returns its position.
    fn publish<'a>(&'a self, topic: &'a str, message: &'a Message) -> StoreFuture<'a, Position>;

    /// At most `max` messages of the log after offset `after` (all the log
    /// holds when `after` is older than its oldest message), and where the
    /// log stands. `max = 0` only asks where it stands.
    fn read<'a>(&'a self, topic: &'a str, after: u64, max: usize) -> StoreFuture<'a, Range>;

    /// This node wants the topic's events (again: no effect).
    fn subscribe<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, ()>;

    /// This node no longer wants the topic's events.
    fn unsubscribe<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, ()>;

    /// The events of the topics this node subscribed to. Called once, when
    /// the first topic is used.
    fn events(&self) -> mpsc::Receiver<TopicEvent>;

    /// Adds (or updates) a member of the topic's presence, recorded as this
    /// node's, and announces it.
    fn join<'a>(&'a self, topic: &'a str, member: &'a Member) -> StoreFuture<'a, ()>;

    /// Removes a member this node added, and announces it.
    fn leave<'a>(&'a self, topic: &'a str, member_id: &'a str) -> StoreFuture<'a, ()>;

    /// The topic's members on nodes that are alive.
    fn members<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, Vec<Member>>;
}

/// Longest topic name, in bytes.
pub const MAX_TOPIC_NAME: usize = 200;

/// Whether `name` is a valid topic name (see [`Broker`]).
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_printable_ascii_without_braces() {
        assert!(valid_topic_name("chat:lobby/1"));
        for bad in ["", "a b", "a{b", "}", "é", "a\nb"] {
            assert!(!valid_topic_name(bad), "{bad:?}");
        }
        assert!(valid_topic_name(&"x".repeat(MAX_TOPIC_NAME)));
        assert!(!valid_topic_name(&"x".repeat(MAX_TOPIC_NAME + 1)));
    }
}
