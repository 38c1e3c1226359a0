//! The sessions a server holds, by key, and the keys themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::session::Shared;

/// Sessions by key. The count includes closed sessions until they are
/// forgotten, so that [`max_sessions`](crate::ServerConfig::max_sessions)
/// bounds memory.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Arc<Shared>>>,
}

impl Registry {
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Shared>> {
        self.lock().get(key).cloned()
    }

    /// Inserts a session unless `max` are already held.
    pub(crate) fn insert(&self, shared: Arc<Shared>, max: usize) -> Result<(), Arc<Shared>> {
        let mut sessions = self.lock();
        if sessions.len() >= max {
            return Err(shared);
        }
        sessions.insert(shared.key.clone(), shared);
        Ok(())
    }

    pub(crate) fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Shared>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Shared>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
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
