//! The sessions a server holds, by key, and the keys themselves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::session::Shared;

/// Sessions by key: open ones, and closed ones kept resumable for the
/// resume window (tombstones, PROTOCOL.md §5).
///
/// [`max_sessions`](crate::ServerConfig::max_sessions) bounds the open
/// sessions; tombstones are bounded by the same number, the oldest evicted
/// first, so a client that opens and closes sessions in a loop can neither
/// lock others out nor grow memory without bound.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Arc<str>, Entry>,
    open: usize,
    /// Tombstones, oldest first.
    closed: VecDeque<Arc<str>>,
}

struct Entry {
    shared: Arc<Shared>,
    closed: bool,
}

impl Registry {
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Shared>> {
        self.lock().sessions.get(key).map(|e| e.shared.clone())
    }

    /// Inserts a new session unless `max` are already open.
    pub(crate) fn insert(&self, shared: Arc<Shared>, max: usize) -> Result<(), Arc<Shared>> {
        let mut inner = self.lock();
        if inner.open >= max {
            return Err(shared);
        }
        inner.open += 1;
        inner.sessions.insert(
            shared.key.clone(),
            Entry {
                shared,
                closed: false,
            },
        );
        Ok(())
    }

    /// Records that a session closed (it stays, as a tombstone). Returns
    /// the tombstones evicted to keep at most `max_tombstones`.
    pub(crate) fn closed(&self, key: &str, max_tombstones: usize) -> Vec<Arc<Shared>> {
        let mut inner = self.lock();
        let Some(entry) = inner.sessions.get_mut(key) else {
            return Vec::new();
        };
        if entry.closed {
            return Vec::new();
        }
        entry.closed = true;
        let key = entry.shared.key.clone();
        inner.open -= 1;
        inner.closed.push_back(key);
        let mut evicted = Vec::new();
        while inner.closed.len() > max_tombstones {
            let Some(oldest) = inner.closed.pop_front() else {
                break;
            };
            if let Some(entry) = inner.sessions.remove(&oldest) {
                evicted.push(entry.shared);
            }
        }
        evicted
    }

    /// Forgets a session (if the registry still holds this one: a session
    /// that left the node and came back is another [`Shared`]).
    pub(crate) fn remove(&self, shared: &Shared) {
        let key = &*shared.key;
        let mut inner = self.lock();
        match inner.sessions.get(key) {
            Some(entry) if std::ptr::eq(Arc::as_ptr(&entry.shared), shared) => {}
            _ => return,
        }
        let Some(entry) = inner.sessions.remove(key) else {
            return;
        };
        if !entry.closed {
            inner.open -= 1;
        } else if inner.closed.front().is_some_and(|k| &**k == key) {
            inner.closed.pop_front();
        } else {
            inner.closed.retain(|k| &**k != key);
        }
    }

    /// Open sessions.
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }

    /// Sessions held, tombstones included.
    pub(crate) fn held(&self) -> usize {
        self.lock().sessions.len()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Shared>> {
        self.lock()
            .sessions
            .values()
            .map(|e| e.shared.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new session key: 256 bits from the operating system's CSPRNG,
/// base64url (43 characters).
pub(crate) fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A new public session id: 64 random bits, hex. Unrelated to the key.
pub(crate) fn new_session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_distinct_and_url_safe() {
        let a = new_key().unwrap_or_default();
        let b = new_key().unwrap_or_default();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(new_session_id().unwrap_or_default().len(), 16);
    }
}
