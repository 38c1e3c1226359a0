//! Presence: members recorded with the node that added them, listed only
//! while that node is alive, kept in Redis by the node that added them.
//!
//! - Listing (`members`) reads the topic's members hash, checks the
//!   liveness key (`<prefix>:node:<id>`) of every node named there — those
//!   keys are in other slots, so outside the script —, and removes the
//!   members of dead nodes (one more script, which announces it).
//! - Every `node_ttl` this node sweeps the topics it is subscribed to, so
//!   that a dead node's members are removed and announced within about two
//!   `node_ttl`s of its death even if nobody lists them. Cheaply: it
//!   remembers which other nodes each topic's last listing named, checks
//!   the liveness keys of those nodes (one `EXISTS` per node, not per
//!   topic), and lists again only the topics that name a dead node or
//!   whose presence changed since (a presence frame came).
//! - Every quarter of the idle TTL, and after each reconnection, this node
//!   writes back the members it added that Redis lost (a restart without
//!   persistence) — never over a member another node has since — and
//!   refreshes the topic's TTL, so a topic with members on live nodes does
//!   not expire.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fred::prelude::*;
use fred::types::Value;
use holdfast_server::store::{Member, StoreError};

use super::{RedisBroker, corrupt, locked, millis, text};
use crate::codec::{array_of, bytes_of};
use crate::keys::TopicKeys;

/// What the sweep knows of one subscribed topic.
#[derive(Clone, Debug, Default)]
pub(crate) struct Seen {
    /// Bumped by every presence frame: a listing started before it does
    /// not record what it saw.
    generation: u64,
    /// The other nodes the last listing named (`None`: list it again).
    nodes: Option<BTreeSet<String>>,
}

/// Runs the keeper and the sweep until the store aborts it.
pub(crate) async fn keep(broker: Arc<RedisBroker>) {
    let mut keep = tokio::time::interval(broker.options.idle_ttl / 4);
    keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(broker.options.node_ttl);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = keep.tick() => broker.keep_members().await,
            () = broker.keep_now.notified() => broker.keep_members().await,
            _ = sweep.tick() => broker.sweep().await,
        }
    }
}

impl RedisBroker {
    /// Asks the keeper to write this node's members back now.
    pub(super) fn keep_members_soon(&self) {
        self.keep_now.notify_one();
    }

    /// Writes back this node's members that Redis lost, refreshes TTLs.
    async fn keep_members(&self) {
        let joined: Vec<(Arc<str>, BTreeMap<String, String>)> = locked(&self.joined)
            .iter()
            .map(|(topic, members)| (topic.clone(), members.clone()))
            .collect();
        for (topic, members) in joined {
            let Ok(keys) = self.keys.topic(&topic) else {
                continue;
            };
            let [channel, sharded] = self.announce_args(&keys);
            let mut args = vec![
                text(&self.node_id),
                millis(self.options.idle_ttl),
                channel,
                sharded,
            ];
            for (id, info) in &members {
                args.push(text(id));
                args.push(text(info));
            }
            if let Err(error) = self
                .run("keep members", &self.scripts.keep, &keys, args)
                .await
            {
                tracing::debug!(%error, "keeping members failed, retried at the next tick");
                continue;
            }
            // A member that left while this ran may have been written back
            // after its removal: remove it again (after, so it sticks).
            let gone: Vec<String> = {
                let joined = locked(&self.joined);
                let now = joined.get(&topic);
                members
                    .into_keys()
                    .filter(|id| now.is_none_or(|now| !now.contains_key(id)))
                    .collect()
            };
            for id in gone {
                if let Err(error) = self.remove_member(&keys, &id).await {
                    tracing::debug!(%error, "removing a member that left failed");
                }
            }
        }
    }

    /// A presence frame came for `topic`: the sweep lists it again.
    pub(super) fn presence_changed(&self, topic: &str) {
        if let Some(seen) = locked(&self.seen).get_mut(topic) {
            seen.generation += 1;
            seen.nodes = None;
        }
    }

    /// Lists again the subscribed topics whose presence changed since
    /// their last listing or that name a dead node: dead nodes' members
    /// are removed, and that is announced.
    async fn sweep(&self) {
        let mut stale = Vec::new();
        let mut named: HashMap<Arc<str>, BTreeSet<String>> = HashMap::new();
        {
            let seen = locked(&self.seen);
            for topic in self.subscribed_topics() {
                match seen.get(&topic).and_then(|s| s.nodes.clone()) {
                    Some(nodes) => {
                        named.insert(topic, nodes);
                    }
                    None => stale.push(topic),
                }
            }
        }
        let nodes: BTreeSet<&String> = named.values().flatten().collect();
        let dead = match self.dead_nodes(nodes.into_iter().map(String::as_str)).await {
            Ok(dead) => dead,
            Err(error) => {
                tracing::debug!(%error, "the presence sweep failed, retried at the next tick");
                return;
            }
        };
        stale.extend(
            named
                .into_iter()
                .filter(|(_, nodes)| nodes.iter().any(|node| dead.contains(node)))
                .map(|(topic, _)| topic),
        );
        for topic in stale {
            if let Err(error) = self.live_members(&topic).await {
                tracing::debug!(%error, "the presence sweep failed, retried at the next tick");
            }
        }
    }

    /// Which of `nodes` are dead (their liveness key is gone).
    async fn dead_nodes<'n>(
        &self,
        nodes: impl Iterator<Item = &'n str>,
    ) -> Result<BTreeSet<String>, StoreError> {
        let checks = nodes.map(|node| async move {
            let found: i64 = self
                .call("members", self.client.exists(self.keys.node(node)))
                .await?;
            Ok::<_, StoreError>((node, found > 0))
        });
        let mut dead = BTreeSet::new();
        for check in futures_util::future::join_all(checks).await {
            let (node, alive) = check?;
            if !alive {
                dead.insert(node.to_owned());
            }
        }
        Ok(dead)
    }

    /// Removes a member if this node added it, and announces it.
    pub(super) async fn remove_member(
        &self,
        keys: &TopicKeys,
        member_id: &str,
    ) -> Result<(), StoreError> {
        let [channel, sharded] = self.announce_args(keys);
        let args = vec![text(member_id), text(&self.node_id), channel, sharded];
        self.run("leave", &self.scripts.leave, keys, args).await?;
        Ok(())
    }

    /// The topic's members whose node is alive; members of dead nodes are
    /// removed on the way.
    pub(super) async fn live_members(&self, topic: &str) -> Result<Vec<Member>, StoreError> {
        let keys = self.keys.topic(topic)?;
        let generation = locked(&self.seen).get(topic).map(|s| s.generation);
        let reply = self
            .run("members", &self.scripts.members, &keys, Vec::new())
            .await?;
        let items = array_of(reply)?;
        let mut entries = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks_exact(2) {
            let string = |value: &Value| {
                bytes_of(value)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    .ok_or_else(|| corrupt("a presence entry is not UTF-8"))
            };
            let id = string(&pair[0])?;
            let value = string(&pair[1])?;
            let (node, info) = value
                .split_once(' ')
                .ok_or_else(|| corrupt("a presence entry names no node"))?;
            entries.push((id, node.to_owned(), info.to_owned()));
        }
        let others: BTreeSet<&str> = entries
            .iter()
            .map(|(_, node, _)| node.as_str())
            .filter(|node| *node != self.node_id)
            .collect();
        let dead = self.dead_nodes(others.iter().copied()).await?;
        // What the sweep checks from now on (for a subscribed topic, if
        // no presence frame came meanwhile).
        let alive: BTreeSet<String> = others
            .iter()
            .filter(|node| !dead.contains(**node))
            .map(|node| (*node).to_owned())
            .collect();
        if let Some(entry) = locked(&self.seen).get_mut(topic) {
            if generation == Some(entry.generation) {
                entry.nodes = Some(alive);
            }
        }
        if !dead.is_empty() {
            let [channel, sharded] = self.announce_args(&keys);
            let mut args = vec![channel, sharded];
            args.extend(dead.iter().map(|node| text(node)));
            // Listing does not depend on it: a failure is retried by the
            // next listing.
            if let Err(error) = self.run("members", &self.scripts.prune, &keys, args).await {
                tracing::debug!(%error, "removing dead nodes' members failed");
            }
        }
        let mut members: Vec<Member> = entries
            .into_iter()
            .filter(|(_, node, _)| !dead.contains(node))
            .map(|(id, _, info)| Member { id, info })
            .collect();
        members.sort();
        Ok(members)
    }
}
