//! What worked, per server: the transport a connection to a URL should try
//! first, remembered for a while in this process.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use holdfast_protocol::TransportKind;

static MEMORY: LazyLock<Mutex<HashMap<String, (TransportKind, Instant)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The transport that last worked for `url`, if remembered and not expired.
pub(crate) fn recall(url: &str) -> Option<TransportKind> {
    let memory = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    memory
        .get(url)
        .filter(|(_, until)| *until > Instant::now())
        .map(|(kind, _)| *kind)
}

/// Remembers that `kind` works for `url`, for `duration`.
pub(crate) fn remember(url: &str, kind: TransportKind, duration: Duration) {
    let mut memory = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    memory.insert(url.to_owned(), (kind, Instant::now() + duration));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_expiry() {
        remember(
            "http://a.test/rt",
            TransportKind::Sse,
            Duration::from_secs(60),
        );
        assert_eq!(recall("http://a.test/rt"), Some(TransportKind::Sse));
        remember("http://b.test/rt", TransportKind::Sse, Duration::ZERO);
        assert_eq!(recall("http://b.test/rt"), None);
        assert_eq!(recall("http://c.test/rt"), None);
    }
}
