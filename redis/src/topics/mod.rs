//! [`RedisBroker`]: the [`Broker`] trait over Redis (and Redis Cluster),
//! returned by [`RedisStore::broker`](holdfast_server::store::Store::broker).
//!
//! Each topic is three keys under the hash tag `{<topic>}` (see
//! [`Keys::topic`]): a stream (the log, ids `<offset>-0`, so that `XRANGE`
//! reads by offset), a meta hash (`epoch`, `last`) and a members hash.
//! Every operation is one Lua script on that one slot; the scripts that
//! change something announce it on the topic's channel from inside the
//! script (`SPUBLISH` on a cluster — the channel carries the same hash
//! tag, so the script may —, `PUBLISH` on one server), so frames leave in
//! offset order. See [`scripts`] for the scripts, [`events`] for how
//! frames become [`TopicEvent`]s, [`presence`] for how members of dead
//! nodes disappear.

mod events;
mod frames;
mod presence;
mod scripts;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;
use fred::util::redis_keyslot;
use holdfast_protocol::Message;
use holdfast_server::store::{
    Broker, MAX_MEMBER_INFO, Member, Position, Range, StoreError, StoreFuture, TopicEvent,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

use crate::codec::{array_of, bytes_of, decode_message, encode_message, number_of};
use crate::keys::{Keys, TopicKeys};
use crate::scripts::Script;
use crate::store::within;
use scripts::TopicScripts;

/// What a broker needs from the store's options.
#[derive(Clone, Debug)]
pub(crate) struct TopicOptions {
    /// Messages kept per log.
    pub(crate) history: usize,
    /// A topic's keys expire this long after the last publish, join or
    /// refresh of a member of a live node.
    pub(crate) idle_ttl: Duration,
    /// How long a node counts as alive (the dead-member sweep's period).
    pub(crate) node_ttl: Duration,
    /// Each command's deadline.
    pub(crate) command_timeout: Duration,
}

/// The topics of the nodes sharing one Redis. See the [module docs](self).
pub(crate) struct RedisBroker {
    client: Client,
    subscriber: Client,
    node_id: String,
    keys: Keys,
    cluster: bool,
    options: TopicOptions,
    scripts: TopicScripts,
    /// Topics this node subscribed to: their frames are events.
    subscribed: Mutex<HashSet<Arc<str>>>,
    /// Members this node added, per topic (id → info), kept in Redis.
    joined: Mutex<BTreeMap<Arc<str>, BTreeMap<String, String>>>,
    /// What the presence sweep knows of each subscribed topic (see
    /// [`presence`]).
    seen: Mutex<std::collections::HashMap<Arc<str>, presence::Seen>>,
    receiver: Mutex<Option<mpsc::Receiver<TopicEvent>>>,
    /// Wakes the member keeper (after a reconnection).
    keep_now: Notify,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisBroker {
    /// The broker and its two background tasks (events, members), which
    /// the store aborts when it is dropped.
    pub(crate) fn start(
        client: Client,
        subscriber: Client,
        node_id: String,
        keys: Keys,
        cluster: bool,
        options: TopicOptions,
    ) -> (Arc<Self>, [AbortHandle; 2]) {
        let (tx, rx) = mpsc::channel(events::QUEUE);
        // Listening before anything subscribes: nothing is missed.
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        let broker = Arc::new(Self {
            client,
            subscriber,
            node_id,
            keys,
            cluster,
            options,
            scripts: TopicScripts::new(),
            subscribed: Mutex::new(HashSet::new()),
            joined: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(std::collections::HashMap::new()),
            receiver: Mutex::new(Some(rx)),
            keep_now: Notify::new(),
        });
        let forwarder =
            tokio::spawn(events::forward(broker.clone(), tx, messages, reconnects)).abort_handle();
        let keeper = tokio::spawn(presence::keep(broker.clone())).abort_handle();
        (broker, [forwarder, keeper])
    }

    async fn call<T>(
        &self,
        what: &str,
        command: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, StoreError> {
        within(self.options.command_timeout, what, command).await
    }

    /// Runs a topic script on the topic's three keys.
    async fn run(
        &self,
        what: &str,
        script: &Script,
        keys: &TopicKeys,
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        self.call(what, script.run(&self.client, keys.all(), args))
            .await
    }

    fn is_subscribed(&self, topic: &str) -> bool {
        locked(&self.subscribed).contains(topic)
    }

    fn subscribed_topics(&self) -> Vec<Arc<str>> {
        locked(&self.subscribed).iter().cloned().collect()
    }

    /// The channel, and the flag the scripts read to publish on it.
    fn announce_args(&self, keys: &TopicKeys) -> [Value; 2] {
        [
            text(&keys.channel),
            text(if self.cluster { "1" } else { "0" }),
        ]
    }

    async fn subscribe_channel(&self, channel: &str) -> Result<(), StoreError> {
        self.call(
            "subscribe",
            crate::bus::subscribe(&self.subscriber, channel, self.cluster),
        )
        .await
    }

    /// Makes every subscription again (after a reconnection), retrying
    /// until each one works; reconnections meanwhile are covered by it.
    async fn resubscribe_all(&self, reconnects: &mut tokio::sync::broadcast::Receiver<Server>) {
        let mut pending = self.subscribed_topics();
        while !pending.is_empty() {
            let attempts = pending.iter().map(|topic| async move {
                let Ok(keys) = self.keys.topic(topic) else {
                    return None;
                };
                // Unsubscribed meanwhile: nothing to do.
                if !self.is_subscribed(topic) {
                    return None;
                }
                match self.subscribe_channel(&keys.channel).await {
                    Ok(()) => None,
                    Err(error) => {
                        tracing::debug!(%error, "topic subscription failed, retrying");
                        Some(topic.clone())
                    }
                }
            });
            pending = futures_util::future::join_all(attempts)
                .await
                .into_iter()
                .flatten()
                .collect();
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                while reconnects.try_recv().is_ok() {}
            }
        }
    }

    /// On a cluster: subscribes again to topics whose sharded subscription
    /// this node lost (their slot moved to another master: Redis drops
    /// the subscription without closing the connection, and the client
    /// crate does not report it); returns whether any was.
    async fn resubscribe_lost(&self) -> bool {
        let mut lost = self.lost_subscriptions().await;
        if !lost.is_empty() {
            // A subscription still on its way counts as lost: look again.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = self.lost_subscriptions().await;
            lost.retain(|topic| again.contains(topic));
        }
        for topic in &lost {
            tracing::debug!("a topic subscription was dropped (slot moved?), subscribing again");
            // Until it works, the next check finds it lost again.
            if let Ok(keys) = self.keys.topic(topic) {
                if self.is_subscribed(topic) {
                    let _ = self.subscribe_channel(&keys.channel).await;
                }
            }
        }
        !lost.is_empty()
    }

    /// The subscribed topics on masters that hold fewer of this node's
    /// sharded subscriptions than they should. `PUBSUB SHARDNUMSUB` would
    /// not do: it counts every node's subscribers, so one node subscribing
    /// again on the new master would hide that another one did not. Each
    /// master is asked `CLIENT LIST TYPE pubsub` instead: this node's
    /// subscriber connection (by its name) and its `ssub` count, against
    /// the number of this node's channels (topics and its bus channel) whose
    /// slot the master holds. A master that does not answer is asked again
    /// at the next check.
    async fn lost_subscriptions(&self) -> Vec<Arc<str>> {
        let Some(state) = self.client.cached_cluster_state() else {
            return Vec::new();
        };
        let slot = |channel: &str| state.get_server(redis_keyslot(channel.as_bytes())).cloned();
        let mut expected: std::collections::HashMap<Server, (u64, Vec<Arc<str>>)> =
            std::collections::HashMap::new();
        if let Some(server) = slot(&self.keys.bus(&self.node_id)) {
            expected.entry(server).or_default().0 += 1;
        }
        for topic in self.subscribed_topics() {
            let Ok(keys) = self.keys.topic(&topic) else {
                continue;
            };
            if let Some(server) = slot(&keys.channel) {
                let entry = expected.entry(server).or_default();
                entry.0 += 1;
                entry.1.push(topic);
            }
        }
        let name = format!("name={}", self.subscriber.id());
        let checks = expected.into_iter().map(|(server, (count, topics))| {
            let name = &name;
            async move {
                let list: String = self
                    .call(
                        "subscription check",
                        self.client
                            .with_cluster_node(server)
                            .custom(fred::cmd!("CLIENT"), vec!["LIST", "TYPE", "pubsub"]),
                    )
                    .await
                    .ok()?;
                let ours: u64 = list
                    .lines()
                    .filter(|line| line.split(' ').any(|field| field == name))
                    .filter_map(|line| {
                        line.split(' ')
                            .find_map(|field| field.strip_prefix("ssub="))
                            .and_then(|n| n.parse::<u64>().ok())
                    })
                    .sum();
                (ours < count).then_some(topics)
            }
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    }
}

fn text(s: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

fn count(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn millis(ttl: Duration) -> Value {
    Value::Integer(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

/// A new log's epoch: random, not 0, below 2^53 (exact in a JavaScript
/// number and in the scripts' Lua numbers).
fn new_epoch() -> Result<u64, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Unavailable(format!("no randomness for an epoch: {e}")))?;
    Ok((u64::from_le_bytes(bytes) & ((1 << 53) - 1)).max(1))
}

/// An error for a topic reply this crate did not expect.
fn corrupt(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected topic data in Redis: {what}"))
}

/// One `XRANGE` entry: `[id, [field, value]]`, id `<offset>-0`.
fn entry(value: Value) -> Result<(u64, Message), StoreError> {
    let mut items = array_of(value)?.into_iter();
    let (Some(id), Some(fields)) = (items.next(), items.next()) else {
        return Err(corrupt("a log entry is short"));
    };
    let id = bytes_of(&id).ok_or_else(|| corrupt("a log entry id"))?;
    let offset = std::str::from_utf8(&id)
        .ok()
        .and_then(|id| id.strip_suffix("-0"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| corrupt("a log entry id is not <offset>-0"))?;
    let stored = array_of(fields)?
        .get(1)
        .and_then(bytes_of)
        .ok_or_else(|| corrupt("a log entry has no message"))?;
    Ok((offset, decode_message(stored)?))
}

impl Broker for RedisBroker {
    fn publish<'a>(&'a self, topic: &'a str, message: &'a Message) -> StoreFuture<'a, Position> {
        Box::pin(async move {
            let keys = self.keys.topic(topic)?;
            let [channel, sharded] = self.announce_args(&keys);
            let args = vec![
                count(new_epoch()?),
                Value::Bytes(encode_message(message)),
                count(self.options.history as u64),
                millis(self.options.idle_ttl),
                channel,
                sharded,
            ];
            let reply = self
                .run("publish", &self.scripts.publish, &keys, args)
                .await?;
            let items = array_of(reply)?;
            match items.as_slice() {
                [epoch, offset] => Ok(Position {
                    epoch: number_of(epoch).ok_or_else(|| corrupt("the epoch"))?,
                    offset: number_of(offset).ok_or_else(|| corrupt("the offset"))?,
                }),
                _ => Err(corrupt("the publish reply")),
            }
        })
    }

    fn read<'a>(&'a self, topic: &'a str, after: u64, max: usize) -> StoreFuture<'a, Range> {
        Box::pin(async move {
            let keys = self.keys.topic(topic)?;
            let args = vec![
                count(after),
                count(max as u64),
                count(self.options.history as u64),
            ];
            let reply = self.run("read", &self.scripts.read, &keys, args).await?;
            let mut items = array_of(reply)?.into_iter();
            let (Some(epoch), Some(last), Some(first), Some(entries)) =
                (items.next(), items.next(), items.next(), items.next())
            else {
                return Err(corrupt("the read reply is short"));
            };
            let messages = array_of(entries)?
                .into_iter()
                .map(entry)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Range {
                epoch: number_of(&epoch).ok_or_else(|| corrupt("the epoch"))?,
                first: number_of(&first).ok_or_else(|| corrupt("the first offset"))?,
                last: number_of(&last).ok_or_else(|| corrupt("the last offset"))?,
                messages,
            })
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys.topic(topic)?;
            let new = locked(&self.subscribed).insert(Arc::from(topic));
            if new {
                locked(&self.seen).insert(Arc::from(topic), presence::Seen::default());
            }
            let result = self.subscribe_channel(&keys.channel).await;
            if result.is_err() && new {
                locked(&self.subscribed).remove(topic);
                locked(&self.seen).remove(topic);
            }
            result
        })
    }

    fn unsubscribe<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys.topic(topic)?;
            // Frames still on their way are dropped from now on.
            locked(&self.subscribed).remove(topic);
            locked(&self.seen).remove(topic);
            if self.cluster {
                self.call("unsubscribe", self.subscriber.sunsubscribe(keys.channel))
                    .await
            } else {
                self.call("unsubscribe", self.subscriber.unsubscribe(keys.channel))
                    .await
            }
        })
    }

    fn events(&self) -> mpsc::Receiver<TopicEvent> {
        locked(&self.receiver).take().unwrap_or_else(|| {
            tracing::warn!("Broker::events called twice: the second receiver gets nothing");
            mpsc::channel(1).1
        })
    }

    fn join<'a>(&'a self, topic: &'a str, member: &'a Member) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if member.info.len() > MAX_MEMBER_INFO {
                return Err(StoreError::Unavailable(format!(
                    "join refused: the member's info is {} bytes, more than {MAX_MEMBER_INFO}",
                    member.info.len()
                )));
            }
            let keys = self.keys.topic(topic)?;
            locked(&self.joined)
                .entry(Arc::from(topic))
                .or_default()
                .insert(member.id.clone(), member.info.clone());
            let [channel, sharded] = self.announce_args(&keys);
            let args = vec![
                text(&member.id),
                text(&self.node_id),
                text(&member.info),
                millis(self.options.idle_ttl),
                channel,
                sharded,
            ];
            self.run("join", &self.scripts.join, &keys, args).await?;
            Ok(())
        })
    }

    fn leave<'a>(&'a self, topic: &'a str, member_id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = self.keys.topic(topic)?;
            {
                let mut joined = locked(&self.joined);
                if let Some(members) = joined.get_mut(topic) {
                    members.remove(member_id);
                    if members.is_empty() {
                        joined.remove(topic);
                    }
                }
            }
            self.remove_member(&keys, member_id).await
        })
    }

    fn members<'a>(&'a self, topic: &'a str) -> StoreFuture<'a, Vec<Member>> {
        Box::pin(self.live_members(topic))
    }
}
