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
}
