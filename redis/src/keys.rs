//! The names of everything this crate keeps in Redis.
//!
//! A session's keys share the hash tag `{<tag>}`, so that each script
//! touches one Redis Cluster slot: `<prefix>:{<tag>}:m` (meta hash),
//! `<prefix>:{<tag>}:o` (outbound list), `<prefix>:{<tag>}:i` (inbound
//! list). A node's liveness key is `<prefix>:node:<id>`, its bus channel
//! `<prefix>:bus:<id>`.
//!
//! A topic's keys and channel share the hash tag `{<topic>}` (topic names
//! have no braces): `<prefix>:t:{<topic>}:log` (stream),
//! `<prefix>:t:{<topic>}:meta` (hash), `<prefix>:t:{<topic>}:members`
//! (hash), channel `<prefix>:t:{<topic>}:events`. The `t:` keeps them apart
//! from session keys whatever the topic's name.

use fred::types::MultipleKeys;
use holdfast_server::store::{StoreError, valid_topic_name};

/// Key names under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The session's three keys (meta, outbound, inbound), one slot.
    pub(crate) fn session(&self, tag: &str) -> Result<MultipleKeys, StoreError> {
        // Tags come from `store::tag` (hex); a brace in one would move the
        // hash tag and split a session over slots.
        if tag.is_empty() || tag.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!(
                "invalid session tag {:?}: it must be non-empty, without braces",
                tag.escape_debug().to_string()
            )));
        }
        let p = &self.prefix;
        Ok(vec![
            format!("{p}:{{{tag}}}:m"),
            format!("{p}:{{{tag}}}:o"),
            format!("{p}:{{{tag}}}:i"),
        ]
        .into())
    }

    /// A node's liveness key.
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// A node's bus channel.
    pub(crate) fn bus(&self, node: &str) -> String {
        format!("{}:bus:{node}", self.prefix)
    }

    /// A topic's keys and channel, one slot.
    pub(crate) fn topic(&self, topic: &str) -> Result<TopicKeys, StoreError> {
        // Names are checked by the server; checked again here because a
        // brace would move the hash tag and split the topic over slots.
        if !valid_topic_name(topic) {
            return Err(StoreError::Unavailable(format!(
                "invalid topic name {:?}: 1 to 200 bytes of printable ASCII without braces",
                topic.escape_debug().to_string()
            )));
        }
        let base = format!("{}:t:{{{topic}}}", self.prefix);
        Ok(TopicKeys {
            log: format!("{base}:log"),
            meta: format!("{base}:meta"),
            members: format!("{base}:members"),
            channel: format!("{base}:events"),
        })
    }

    /// The topic whose channel this is (see [`Keys::topic`]), if it is one.
    pub(crate) fn topic_of_channel<'c>(&self, channel: &'c str) -> Option<&'c str> {
        let topic = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":t:{")?
            .strip_suffix("}:events")?;
        valid_topic_name(topic).then_some(topic)
    }
}

/// The names of one topic's keys and channel.
#[derive(Clone, Debug)]
pub(crate) struct TopicKeys {
    /// The stream of messages, ids `<offset>-0`.
    pub(crate) log: String,
    /// Hash: `epoch`, `last` offset.
    pub(crate) meta: String,
    /// Hash: member id → `<node id> <info>`.
    pub(crate) members: String,
    /// Where publishes and presence changes are announced.
    pub(crate) channel: String,
}

impl TopicKeys {
    /// The three keys, for a script.
    pub(crate) fn all(&self) -> MultipleKeys {
        vec![self.log.clone(), self.meta.clone(), self.members.clone()].into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keys_share_one_hash_tag_and_bad_tags_are_refused() {
        let keys = Keys::new("hf");
        let names = keys.session("abc").map(|k| k.inner()).unwrap_or_default();
        let names: Vec<String> = names
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["hf:{abc}:m", "hf:{abc}:o", "hf:{abc}:i"]);
        for bad in ["", "a}b", "{x"] {
            assert!(
                matches!(keys.session(bad), Err(StoreError::Unavailable(_))),
                "{bad:?}"
            );
        }
        assert_eq!(keys.node("n1"), "hf:node:n1");
        assert_eq!(keys.bus("n1"), "hf:bus:n1");
    }

    #[test]
    fn a_topic_keys_share_one_hash_tag_and_its_channel_names_it() {
        let keys = Keys::new("hf");
        let Ok(topic) = keys.topic("chat:lobby") else {
            panic!("a valid name was refused");
        };
        assert_eq!(topic.log, "hf:t:{chat:lobby}:log");
        assert_eq!(topic.meta, "hf:t:{chat:lobby}:meta");
        assert_eq!(topic.members, "hf:t:{chat:lobby}:members");
        assert_eq!(topic.channel, "hf:t:{chat:lobby}:events");
        assert_eq!(keys.topic_of_channel(&topic.channel), Some("chat:lobby"));
        for other in [
            "hf:bus:x",
            "hf:t:{}:events",
            "app:t:{a}:events",
            "hf:t:{a}:log",
        ] {
            assert_eq!(keys.topic_of_channel(other), None, "{other}");
        }
        for bad in ["", "a{b", "a b", "}"] {
            assert!(keys.topic(bad).is_err(), "{bad:?}");
        }
    }
}
