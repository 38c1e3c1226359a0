//! Session parameters, with the defaults `PROTOCOL.md` §6 documents, and
//! what a queued message is charged against the byte limits.

use std::time::Duration;

/// Bytes charged for every queued message on top of its payload, in the
/// inbound queue and the replay buffer alike, so that a flood of empty or
/// tiny messages costs what it really holds.
///
/// Sized from what a queued message costs on a 64-bit target (measured
/// with glibc malloc): its queue slot (`size_of::<Message>()`, 40 bytes),
/// the allocator's header and rounding of its payload (a 1-byte payload
/// takes a 32-byte chunk, larger ones up to 23 bytes more than asked),
/// and the 32-byte reference-count block [`bytes::Bytes`] allocates the
/// first time a message is cloned (replay buffers clone every message
/// they transmit): 40 + 31 + 32 = 103, rounded up to 128 for queue spare
/// capacity. Measured: 1,000,000 queued 1-byte messages hold 72 bytes
/// each, 104 once cloned.
pub const MESSAGE_OVERHEAD: usize = 128;

/// What a queued message of `payload_len` bytes counts against a byte
/// limit: its payload plus [`MESSAGE_OVERHEAD`].
pub const fn message_charge(payload_len: usize) -> usize {
    payload_len.saturating_add(MESSAGE_OVERHEAD)
}

/// Parameters of a session as the server runs it. Every field has a default
/// sized for proxies that cut silent connections at 30 s.
///
/// ```
/// use std::time::Duration;
/// use holdfast_protocol::SessionConfig;
///
/// let mut config = SessionConfig::default();
/// config.resume_window = Duration::from_secs(300);
/// config.set_max_message(256 * 1024);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// How often the server pings on WebSocket and SSE. Default 20 s: under
    /// the 30 s after which many proxies cut a silent connection.
    pub ping_interval: Duration,
    /// How long the server waits without hearing from the client before it
    /// drops the attachment. Default 40 s (two ping intervals).
    pub timeout: Duration,
    /// How long a session survives with no attachment. Default 120 s: long
    /// enough for a mobile network switch or a deploy.
    pub resume_window: Duration,
    /// How long a poll with nothing to deliver is held. Default 25 s, below
    /// common 30 s proxy cut-offs; must be below `timeout`.
    pub poll_hold: Duration,
    /// Largest message payload accepted or sent, in bytes. Default 64 KiB.
    /// Also the size at which batches are cut.
    pub max_message: usize,
    /// Largest wire unit accepted (WebSocket message, send body), in bytes.
    /// Default `6 × max_message + 4096`: any message of `max_message` bytes
    /// fits, however its text must be escaped.
    pub max_batch: usize,
    /// Replay buffer limit in bytes: past it, `send` reports the buffer full
    /// until the peer acknowledges. Each message counts its payload plus
    /// [`MESSAGE_OVERHEAD`]. Default 1 MiB; at least `max_message +
    /// MESSAGE_OVERHEAD`.
    pub max_unacked_bytes: usize,
    /// Replay buffer limit in messages. Default 4096.
    pub max_unacked_messages: usize,
    /// Received messages the application has not taken yet, in bytes, past
    /// which transports stop reading (backpressure): a WebSocket is not
    /// read, a send request waits and is then refused with `503`. Each
    /// message counts its payload plus [`MESSAGE_OVERHEAD`]; a batch is
    /// admitted only if it fits whole, or into an empty queue (so any
    /// legal batch gets in eventually). Default 1 MiB; at least
    /// `max_message + MESSAGE_OVERHEAD`.
    pub max_inbound_bytes: usize,
    /// Send an ack once this many messages are unacknowledged. Default 32.
    pub ack_every: u64,
    /// …or this long after the first unacknowledged message. Default 100 ms.
    pub ack_delay: Duration,
    /// Most sessions one shared request (`POST …/sse` or `POST …/poll`,
    /// `PROTOCOL.md` §11) may carry, announced in `open` as `mux`. A
    /// shared request's body may hold 256 bytes per session allowed.
    /// Default 64, at most [`MAX_SHARED_SESSIONS`]; 0 turns shared
    /// requests off (no `mux` in `open`, and the server answers
    /// `POST …/sse` and `POST …/poll` with `405`).
    pub max_shared_sessions: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        let max_message = 64 * 1024;
        Self {
            ping_interval: Duration::from_secs(20),
            timeout: Duration::from_secs(40),
            resume_window: Duration::from_secs(120),
            poll_hold: Duration::from_secs(25),
            max_message,
            max_batch: default_max_batch(max_message),
            max_unacked_bytes: 1024 * 1024,
            max_unacked_messages: 4096,
            max_inbound_bytes: 1024 * 1024,
            ack_every: 32,
            ack_delay: Duration::from_millis(100),
            max_shared_sessions: 64,
        }
    }
}

impl SessionConfig {
    /// Sets `max_message` and the `max_batch` that goes with it.
    pub fn set_max_message(&mut self, max_message: usize) -> &mut Self {
        self.max_message = max_message;
        self.max_batch = default_max_batch(max_message);
        self
    }

    /// Checks that the parameters make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |what: &'static str| Err(ConfigError(what));
        if self.ping_interval.is_zero() || self.timeout <= self.ping_interval {
            return fail("timeout must be longer than a non-zero ping_interval");
        }
        if self.poll_hold >= self.timeout {
            return fail("poll_hold must be shorter than timeout");
        }
        if self.max_message == 0 || self.max_batch < self.max_message {
            return fail("max_batch must be at least max_message, which must be non-zero");
        }
        // One message of `max_message` bytes must fit an empty buffer.
        let one = message_charge(self.max_message);
        if self.max_unacked_bytes < one || self.max_unacked_messages == 0 {
            return fail(
                "the replay buffer must hold one message of max_message bytes \
                 (max_unacked_bytes >= max_message + MESSAGE_OVERHEAD)",
            );
        }
        if self.max_inbound_bytes < one {
            return fail("max_inbound_bytes must be at least max_message + MESSAGE_OVERHEAD");
        }
        if self.ack_every == 0 {
            return fail("ack_every must be at least 1");
        }
        if self.max_shared_sessions > MAX_SHARED_SESSIONS {
            return fail("max_shared_sessions must be at most 65536");
        }
        Ok(())
    }
}

/// The largest [`SessionConfig::max_shared_sessions`]: a shared request's
/// body may hold 256 bytes per session, 16 MiB at this bound.
pub const MAX_SHARED_SESSIONS: usize = 65_536;

/// `max_batch` for a `max_message`: room for the worst JSON escaping (6×).
pub fn default_max_batch(max_message: usize) -> usize {
    max_message.saturating_mul(6).saturating_add(4096)
}

/// A configuration whose parameters contradict each other.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid session configuration: {0}")]
pub struct ConfigError(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_proxy_friendly() {
        let config = SessionConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(config.ping_interval < Duration::from_secs(30));
        assert!(config.poll_hold < Duration::from_secs(30));
        assert_eq!(config.max_batch, 397_312);
    }

    #[test]
    fn contradictions_are_refused() {
        let defaults = SessionConfig::default();
        let config = SessionConfig {
            poll_hold: defaults.timeout,
            ..defaults.clone()
        };
        assert!(config.validate().is_err());
        let config = SessionConfig {
            max_unacked_bytes: 10,
            ..defaults.clone()
        };
        assert!(config.validate().is_err());
        let config = SessionConfig {
            max_shared_sessions: MAX_SHARED_SESSIONS + 1,
            ..defaults.clone()
        };
        assert!(config.validate().is_err());
        let config = SessionConfig {
            max_shared_sessions: 0,
            ..defaults.clone()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn one_message_of_max_message_bytes_must_fit_with_its_overhead() {
        let mut config = SessionConfig::default();
        config.set_max_message(1000);
        let one = 1000 + MESSAGE_OVERHEAD;
        config.max_unacked_bytes = one;
        config.max_inbound_bytes = one;
        assert_eq!(config.validate(), Ok(()));
        for (unacked, inbound) in [(1000, one), (one, 1000), (one - 1, one), (one, one - 1)] {
            let config = SessionConfig {
                max_unacked_bytes: unacked,
                max_inbound_bytes: inbound,
                ..config.clone()
            };
            assert!(config.validate().is_err(), "{unacked} {inbound}");
        }
    }

    #[test]
    fn the_overhead_covers_a_queue_slot_and_the_allocation_headers() {
        // The queue slot, the smallest heap chunk of a payload and the
        // reference-count block of a cloned `Bytes`.
        let slot = std::mem::size_of::<crate::Message>();
        assert!(slot <= 40, "{slot}");
        assert!(MESSAGE_OVERHEAD >= slot + 31 + 32);
        assert_eq!(message_charge(0), MESSAGE_OVERHEAD);
        assert_eq!(message_charge(usize::MAX), usize::MAX);
    }
}
