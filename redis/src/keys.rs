//! The names of everything this crate keeps in Redis.
//!
//! A session's keys share the hash tag `{<tag>}`, so that each script
//! touches one Redis Cluster slot: `<prefix>:{<tag>}:m` (meta hash),
//! `<prefix>:{<tag>}:o` (outbound list), `<prefix>:{<tag>}:i` (inbound
//! list). A node's liveness key is `<prefix>:node:<id>`, its bus channel
//! `<prefix>:bus:<id>`.

use fred::types::MultipleKeys;
use holdfast_server::store::StoreError;

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
}
