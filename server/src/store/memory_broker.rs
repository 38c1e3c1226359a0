//! A [`Broker`] in this process's memory: the topics of a single node (no
//! store), and those of the nodes of a [`MemoryCluster`](super::MemoryCluster)
//! (several nodes in one process, for tests).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use holdfast_protocol::Message;
use tokio::sync::mpsc;

use super::{Broker, Member, Position, Range, StoreError, StoreFuture, TopicEvent};

/// Messages each topic's log keeps by default.
pub const DEFAULT_HISTORY: usize = 1000;

/// Events a node's queue holds before it gets a [`TopicEvent::Reset`]
/// instead of more.
const QUEUE: usize = 4096;

/// Topics shared by the nodes of one process.
#[derive(Clone)]
pub(crate) struct MemoryTopics {
    state: Arc<Mutex<State>>,
    history: usize,
}

struct State {
    logs: HashMap<Arc<str>, Log>,
    nodes: HashMap<String, Node>,
    /// Nodes that died: their members are not listed.
    dead: HashSet<String>,
    /// Source of epochs: distinct per log (and per process start).
    next_epoch: u64,
}

struct Log {
    epoch: u64,
    last: u64,
    messages: VecDeque<(u64, Message)>,
    /// Member id → (info, node).
    members: BTreeMap<String, (String, String)>,
}

#[derive(Default)]
struct Node {
    topics: HashSet<Arc<str>>,
    queue: Option<mpsc::Sender<TopicEvent>>,
    receiver: Option<mpsc::Receiver<TopicEvent>>,
    /// Events were dropped: a reset goes before the next one.
    lost: bool,
}

impl Node {
    fn send(&mut self, event: TopicEvent) {
        let Some(queue) = &self.queue else {
            return;
        };
        if self.lost {
            if queue.try_send(TopicEvent::Reset).is_err() {
                return;
            }
            self.lost = false;
        }
        if queue.try_send(event).is_err() {
            self.lost = true;
        }
    }
}

impl MemoryTopics {
    pub(crate) fn new(history: usize) -> Self {
        // Epochs differ between runs of a process, like a store's would.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
            .max(1);
        Self {
            state: Arc::new(Mutex::new(State {
                logs: HashMap::new(),
                nodes: HashMap::new(),
                dead: HashSet::new(),
                next_epoch: seed,
            })),
            history: history.max(1),
        }
    }

    /// This node's broker.
    pub(crate) fn node(&self, id: &str) -> Arc<MemoryBroker> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        self.lock().nodes.insert(
            id.to_owned(),
            Node {
                queue: Some(queue),
                receiver: Some(receiver),
                ..Node::default()
            },
        );
        Arc::new(MemoryBroker {
            topics: self.clone(),
            node: id.to_owned(),
        })
    }

    /// The node died: its members are no longer listed, and it gets no
    /// more events.
    pub(crate) fn die(&self, id: &str) {
        let mut state = self.lock();
        state.dead.insert(id.to_owned());
        if let Some(node) = state.nodes.get_mut(id) {
            node.queue = None;
        }
        let topics: Vec<Arc<str>> = state
            .logs
            .iter()
            .filter(|(_, log)| log.members.values().any(|(_, node)| node == id))
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in topics {
            announce(&mut state, &topic);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Tells every node subscribed to `topic` that its presence changed.
fn announce(state: &mut State, topic: &Arc<str>) {
    for node in state.nodes.values_mut() {
        if node.topics.contains(topic) {
            node.send(TopicEvent::Presence {
                topic: topic.clone(),
            });
        }
    }
}

/// One node's handle on [`MemoryTopics`].
pub(crate) struct MemoryBroker {
    topics: MemoryTopics,
    node: String,
}

fn ready<'a, T: Send + 'a>(result: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl MemoryBroker {
    fn log<'s>(state: &'s mut State, topic: &str) -> &'s mut Log {
        if !state.logs.contains_key(topic) {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            state.logs.insert(
                topic.into(),
                Log {
                    epoch,
                    last: 0,
                    messages: VecDeque::new(),
                    members: BTreeMap::new(),
                },
            );
        }
        match state.logs.get_mut(topic) {
            Some(log) => log,
            None => unreachable!("inserted above"),
        }
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(&'a self, topic: &'a str, message: &'a Message) -> StoreFuture<'a, Position> {
        let mut state = self.topics.lock();
        let history = self.topics.history;
        let log = Self::log(&mut state, topic);
        log.last += 1;
        let position = Position {
            epoch: log.epoch,
            offset: log.last,
        };
        log.messages.push_back((log.last, message.clone()));
        while log.messages.len() > history {
            log.messages.pop_front();
        }
        let topic: Arc<str> = topic.into();
        for node in state.nodes.values_mut() {
            if node.topics.contains(&topic) {
                node.send(TopicEvent::Published {
                    topic: topic.clone(),
                    position,
                    message: message.clone(),
                });
            }
        }
        ready(Ok(position))
    }

    fn read<'a>(&'a self, topic: &'a str, after: u64, max: usize) -> StoreFuture<'a, Range> {
        let state = self.topics.lock();
        let Some(log) = state.logs.get(topic) else {
            return ready(Ok(Range {
                first: 1,
                ..Range::default()
            }));
        };
        let first = log
            .messages
            .front()
            .map_or(log.last + 1, |(offset, _)| *offset);
        let messages = log
            .messages
            .iter()
            .filter(|(offset, _)| *offset > after)
            .take(max)
            .cloned()
            .collect();
        ready(Ok(Range {
            epoch: log.epoch,
            first,
            last: log.last,
            messages,
        }))
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, ()> {
        if let Some(node) = self.topics.lock().nodes.get_mut(&self.node) {
            node.topics.insert(topic.into());
        }
        ready(Ok(()))
    }

    fn unsubscribe<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, ()> {
        if let Some(node) = self.topics.lock().nodes.get_mut(&self.node) {
            node.topics.remove(topic);
        }
        ready(Ok(()))
    }

    fn events(&self) -> mpsc::Receiver<TopicEvent> {
        self.topics
            .lock()
            .nodes
            .get_mut(&self.node)
            .and_then(|node| node.receiver.take())
            // Called twice: the second caller gets a closed channel.
            .unwrap_or_else(|| mpsc::channel(1).1)
    }

    fn join<'a>(&'a self, topic: &'a str, member: &'a Member) -> StoreFuture<'a, ()> {
        let mut state = self.topics.lock();
        let log = Self::log(&mut state, topic);
        log.members
            .insert(member.id.clone(), (member.info.clone(), self.node.clone()));
        announce(&mut state, &topic.into());
        ready(Ok(()))
    }

    fn leave<'a>(&'a self, topic: &'a str, member_id: &'a str) -> StoreFuture<'a, ()> {
        let mut state = self.topics.lock();
        let removed = state.logs.get_mut(topic).is_some_and(|log| {
            let ours = log
                .members
                .get(member_id)
                .is_some_and(|(_, node)| *node == self.node);
            ours && log.members.remove(member_id).is_some()
        });
        if removed {
            announce(&mut state, &topic.into());
        }
        ready(Ok(()))
    }

    fn members<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, Vec<Member>> {
        let state = self.topics.lock();
        let members = state.logs.get(topic).map_or_else(Vec::new, |log| {
            log.members
                .iter()
                .filter(|(_, (_, node))| !state.dead.contains(node))
                .map(|(id, (info, _))| Member {
                    id: id.clone(),
                    info: info.clone(),
                })
                .collect()
        });
        ready(Ok(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s.to_owned())
    }

    #[tokio::test]
    async fn offsets_follow_each_other_and_history_is_bounded() {
        let topics = MemoryTopics::new(3);
        let a = topics.node("a");
        let b = topics.node("b");
        let mut events = b.events();
        b.subscribe("t").await.unwrap();
        for n in 1..=5 {
            let position = a.publish("t", &text(&n.to_string())).await.unwrap();
            assert_eq!(position.offset, n);
        }
        for n in 1..=5 {
            match events.try_recv() {
                Ok(TopicEvent::Published { position, .. }) => assert_eq!(position.offset, n),
                other => panic!("{other:?}"),
            }
        }
        let range = a.read("t", 0, 10).await.unwrap();
        assert_eq!((range.first, range.last), (3, 5));
        assert_eq!(range.messages.len(), 3);
        let tail = a.read("t", 0, 0).await.unwrap();
        assert!(tail.messages.is_empty());
        assert_eq!(tail.epoch, range.epoch);
        assert_ne!(tail.epoch, 0);
    }

    #[tokio::test]
    async fn members_of_a_dead_node_are_not_listed() {
        let topics = MemoryTopics::new(10);
        let a = topics.node("a");
        let b = topics.node("b");
        let mut events = b.events();
        b.subscribe("t").await.unwrap();
        let member = |id: &str| Member {
            id: id.into(),
            info: format!("{id}'s name"),
        };
        a.join("t", &member("s1")).await.unwrap();
        b.join("t", &member("s2")).await.unwrap();
        assert_eq!(a.members("t").await.unwrap().len(), 2);
        // Only the node that added a member removes it.
        b.leave("t", "s1").await.unwrap();
        assert_eq!(a.members("t").await.unwrap().len(), 2);
        topics.die("a");
        assert_eq!(b.members("t").await.unwrap(), vec![member("s2")]);
        let mut announced = 0;
        while let Ok(event) = events.try_recv() {
            assert!(matches!(event, TopicEvent::Presence { .. }));
            announced += 1;
        }
        assert_eq!(announced, 3, "two joins and a death");
    }

    #[tokio::test]
    async fn a_full_queue_drops_events_then_resets() {
        let topics = MemoryTopics::new(10);
        let a = topics.node("a");
        let mut events = a.events();
        a.subscribe("t").await.unwrap();
        for _ in 0..QUEUE + 5 {
            a.publish("t", &text("x")).await.unwrap();
        }
        for _ in 0..QUEUE {
            assert!(events.try_recv().is_ok());
        }
        a.publish("t", &text("y")).await.unwrap();
        assert_eq!(events.try_recv().ok(), Some(TopicEvent::Reset));
        assert!(matches!(
            events.try_recv(),
            Ok(TopicEvent::Published { .. })
        ));
    }
}
