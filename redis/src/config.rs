//! The store's options and the URLs it understands.

use std::sync::Arc;
use std::time::Duration;

use crate::{Error, RedisStore};

/// Options for a [`RedisStore`]; [`Builder::connect`] makes the store.
#[derive(Clone, Debug)]
pub struct Builder {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) node_ttl: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) bus_capacity: usize,
    pub(crate) topic_history: usize,
    pub(crate) topic_ttl: Duration,
}

impl Builder {
    pub(crate) fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: "hf".to_owned(),
            node_ttl: Duration::from_millis(1500),
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            bus_capacity: 1024,
            topic_history: holdfast_server::store::DEFAULT_HISTORY,
            topic_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// How long this node counts as alive after its last heartbeat
    /// (refreshed every `node_ttl / 4`). Default 1.5 s: a killed node's
    /// sessions can be taken over that long after its death. At least
    /// 100 ms.
    pub fn node_ttl(mut self, ttl: Duration) -> Self {
        self.node_ttl = ttl;
        self
    }

    /// What every key and channel name starts with (default `hf`), so
    /// that several apps can share one Redis. No braces.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// How long one command may take before it fails with
    /// [`StoreError::Unavailable`](holdfast_server::store::StoreError::Unavailable)
    /// (default 1 s). Commands made while Redis is away wait for the
    /// reconnection at most this long.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long [`connect`](Self::connect) tries before it gives up
    /// (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many bus events the inbox holds before frames are dropped
    /// (default 1024; see [`Store::inbox`](holdfast_server::store::Store::inbox)).
    pub fn bus_capacity(mut self, capacity: usize) -> Self {
        self.bus_capacity = capacity;
        self
    }

    /// How many messages each topic's log keeps (default
    /// [`DEFAULT_HISTORY`](holdfast_server::store::DEFAULT_HISTORY), 1000;
    /// at least 1): a node that missed messages (a lost connection, a
    /// session taken over) reads them back as long as they are among the
    /// last `history`. Redis trims the log to about this (`XADD MAXLEN ~`
    /// keeps up to one stream node more: 100 entries by default); reads
    /// show exactly the last `history`. Give every node the same value.
    pub fn topic_history(mut self, history: usize) -> Self {
        self.topic_history = history;
        self
    }

    /// How long a topic's keys (log, epoch and offset, members) stay in
    /// Redis after the last publish or join, or the last refresh by a
    /// live node that has members on it (every `ttl / 4`). Default 24 h;
    /// at least 1 s. A topic that expired starts again with a new epoch.
    pub fn topic_ttl(mut self, ttl: Duration) -> Self {
        self.topic_ttl = ttl;
        self
    }

    /// Connects: see [`RedisStore::connect`].
    pub async fn connect(self) -> Result<Arc<RedisStore>, Error> {
        self.check()?;
        RedisStore::start(self).await
    }

    fn check(&self) -> Result<(), Error> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::InvalidOption(
                "the prefix must be non-empty, without braces".into(),
            ));
        }
        if self.node_ttl < Duration::from_millis(100) {
            return Err(Error::InvalidOption(
                "node_ttl must be at least 100 ms".into(),
            ));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::InvalidOption(
                "timeouts must be more than zero".into(),
            ));
        }
        if self.topic_history == 0 {
            return Err(Error::InvalidOption(
                "topic_history must be at least 1".into(),
            ));
        }
        if self.topic_ttl < Duration::from_secs(1) {
            return Err(Error::InvalidOption(
                "topic_ttl must be at least 1 s".into(),
            ));
        }
        if self.bus_capacity == 0 {
            return Err(Error::InvalidOption(
                "bus_capacity must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The URL in the form the client crate reads: `redis-cluster://a,b,c` is
/// rewritten to `redis-cluster://a?node=b&node=c`.
pub(crate) fn client_url(url: &str) -> Result<String, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidUrl(format!("{} has no scheme", redacted(url))))?;
    let known = ["redis", "rediss", "redis-cluster", "rediss-cluster"];
    if !known.contains(&scheme) {
        return Err(Error::InvalidUrl(format!(
            "unknown scheme {scheme:?}: use redis:// (one server) or redis-cluster:// (a cluster)"
        )));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let mut hosts = hosts.split(',');
    let first = hosts.next().unwrap_or_default();
    if first.is_empty() {
        return Err(Error::InvalidUrl(format!(
            "{} names no host",
            redacted(url)
        )));
    }
    let more: Vec<&str> = hosts.collect();
    if more.is_empty() {
        return Ok(url.to_owned());
    }
    if !scheme.ends_with("-cluster") {
        return Err(Error::InvalidUrl(format!(
            "{} names several hosts: use redis-cluster:// for a cluster",
            redacted(url)
        )));
    }
    let mut out = format!("{scheme}://{userinfo}{first}");
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    out.push_str(path);
    let nodes: Vec<String> = more.iter().map(|h| format!("node={h}")).collect();
    out.push('?');
    out.push_str(&nodes.join("&"));
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        out.push('&');
        out.push_str(query);
    }
    Ok(out)
}

/// The URL without its password, for error messages and logs.
pub(crate) fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..end].rsplit_once('@') {
                Some((_, hosts)) => format!("{scheme}://***@{hosts}{}", &rest[end..]),
                None => url.to_owned(),
            }
        }
        None => "(not a URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_with_commas_become_node_parameters() {
        assert_eq!(
            client_url("redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002").ok(),
            Some("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002".into())
        );
        assert_eq!(
            client_url("redis-cluster://u:p@a:1,b:2?x=1").ok(),
            Some("redis-cluster://u:p@a:1?node=b:2&x=1".into())
        );
        assert_eq!(
            client_url("redis://127.0.0.1:6000").ok(),
            Some("redis://127.0.0.1:6000".into())
        );
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for bad in [
            "127.0.0.1:6379",
            "http://a:1",
            "redis://",
            "redis://a:1,b:2",
        ] {
            let error = client_url(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.starts_with("invalid Redis URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redacted("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
    }
}
