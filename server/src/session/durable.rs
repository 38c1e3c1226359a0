//! A session whose state lives in a [`Store`] as well as in memory: the
//! writer task that stores what the core holds before the client hears of
//! it, and the application's progress through the client's messages.
//!
//! The core's gates (`ServerSession::hold_until_confirmed`) keep a
//! downstream message off the wire, and an upstream message unacknowledged
//! and away from the application, until the writer has stored it. One
//! writer per session turns whatever the core holds unconfirmed, the
//! client's acknowledgements, the application's [`Progress`] and the close
//! into one [`Write`] (one script on the store), then confirms it: writes
//! made while one is in flight go out together with the next, so a busy
//! session costs one store round trip per batch, not per message.
//!
//! Exactly-once for the application across a takeover (`docs/scaling.md`):
//! when the handler takes message `n`, every message before it counts as
//! processed; what it sends while processing `n` is stored atomically with
//! that progress. A node taking the session over delivers `n` again, and
//! drops the first sends of its handler after that as many as were stored
//! — so a handler that answers each message (an echo, a request/reply)
//! neither loses nor repeats an answer. What a handler does outside
//! holdfast (a database write) may happen twice for message `n`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::{Progress, Store, StoreError, StoredClose, Write};

/// The store side of one session.
pub(crate) struct Durable {
    pub(crate) store: Arc<dyn Store>,
    /// The session's name in the store.
    pub(crate) tag: String,
    /// The epoch this node holds the session at.
    pub(crate) epoch: u64,
    /// How long the store keeps the session after a write.
    pub(crate) ttl: Duration,
    /// Whether this node took the session over from another one.
    pub(crate) continued: bool,
    /// The writer: the core holds something to store.
    pub(crate) wake: Notify,
    /// Senders and send requests: something was stored.
    pub(crate) stored: Notify,
    /// The session left this node (taken over, or handed over on
    /// shutdown): the writer stops, the application's handles end.
    pub(crate) gone: AtomicBool,
    /// The node hands the session over: the handler gets no more
    /// messages (`recv` returns `None`), and may finish answering the one
    /// it took.
    pub(crate) handing: AtomicBool,
}

impl Durable {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        tag: String,
        epoch: u64,
        ttl: Duration,
        continued: bool,
    ) -> Self {
        Self {
            store,
            tag,
            epoch,
            ttl,
            continued,
            wake: Notify::new(),
            stored: Notify::new(),
            gone: AtomicBool::new(false),
            handing: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub(crate) fn is_handing(&self) -> bool {
        self.handing.load(Ordering::Acquire)
    }
}

/// The application's place in the client's messages, kept under the
/// session's lock so that it is stored atomically with the sends it
/// counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AppProgress {
    /// What the store should hold.
    pub(crate) progress: Progress,
    /// After a takeover: the message being processed when the last owner
    /// stopped, and how many of the handler's sends after it takes that
    /// message again are already stored (and are dropped).
    pub(crate) replay: Option<(u64, u64)>,
    /// Sends left to drop (counting down once `replay`'s message is taken).
    pub(crate) suppress: u64,
}

impl AppProgress {
    /// After a takeover from `stored`.
    pub(crate) fn restored(stored: Progress) -> Self {
        Self {
            progress: stored,
            replay: (stored.current > stored.done).then_some((stored.current, stored.sends)),
            suppress: 0,
        }
    }

    /// The handler asks for the next message: the one it took last is
    /// processed (whatever it sends now answers nothing in progress).
    pub(crate) fn asks(&mut self) {
        // After a takeover, until the handler takes the message in
        // progress again, nothing it took here is in progress.
        if self.replay.is_none() && self.progress.current > self.progress.done {
            self.progress = Progress {
                done: self.progress.current,
                current: self.progress.current,
                sends: 0,
            };
        }
    }

    /// The handler took message `seq`: everything before it is processed.
    pub(crate) fn took(&mut self, seq: u64) {
        self.progress = Progress {
            done: seq.saturating_sub(1),
            current: seq,
            sends: 0,
        };
        self.suppress = match self.replay {
            Some((current, sends)) if current == seq => sends,
            _ => 0,
        };
        if self.replay.is_some_and(|(current, _)| seq >= current) {
            self.replay = None;
        }
    }

    /// The handler sends a message: whether it is new (else it was
    /// stored by the last owner, and is dropped).
    pub(crate) fn sends(&mut self) -> bool {
        if self.replay.is_some() {
            // Not an answer to the message in progress, which the handler
            // has not taken again yet (a greeting, say): new, and not
            // counted against that message.
            return true;
        }
        self.progress.sends += 1;
        if self.suppress > 0 {
            self.suppress -= 1;
            false
        } else {
            true
        }
    }
}

impl AppProgress {
    /// Whether the handler is between messages: it finished the last one
    /// it took (or took none).
    pub(crate) fn between_messages(&self) -> bool {
        self.progress.current == self.progress.done || self.replay.is_some()
    }
}

/// Acknowledgements alone wake the writer only once the store's are this
/// many messages behind: a write costs a store round trip, and an ack the
/// store has not heard of only means that a node taking the session over
/// sends those messages again — the client drops them by sequence number.
/// Any other write carries the latest ack along. So the store holds at most
/// this many acknowledged messages more than the replay buffer.
pub(crate) const ACK_WRITE_LAG: u64 = 16;

/// What was last stored, to write only what changed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stored {
    pub(crate) acked: u64,
    pub(crate) progress: Progress,
    pub(crate) closed: bool,
    /// The version of the session's topic cursors stored.
    pub(crate) cursors: u64,
}

/// What one write will confirm once stored.
pub(crate) struct Pending {
    pub(crate) write: Write,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) stored: Stored,
}

/// The close as the store keeps it.
pub(crate) fn stored_close(
    close: &holdfast_protocol::Close,
    initiator: Option<holdfast_protocol::Initiator>,
) -> StoredClose {
    StoredClose {
        code: close.code.0,
        reason: close.reason.to_string(),
        by_client: initiator == Some(holdfast_protocol::Initiator::Peer),
    }
}

/// How long the writer waits before trying an unavailable store again:
/// doubling from 50 ms to 1 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << failures.min(5)).min(1000))
}

/// Whether a store error means the session is no longer this node's.
pub(crate) fn lost(error: &StoreError) -> bool {
    matches!(error, StoreError::Fenced | StoreError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_drops_exactly_the_stored_sends_of_the_message_in_progress() {
        // The last owner stored: 1–4 processed, 5 in progress with 2 sends.
        let mut app = AppProgress::restored(Progress {
            done: 4,
            current: 5,
            sends: 2,
        });
        app.took(5);
        assert!(!app.sends(), "first answer to 5: stored already");
        assert!(!app.sends(), "second answer to 5: stored already");
        assert!(app.sends(), "third answer to 5: new");
        assert_eq!(
            app.progress,
            Progress {
                done: 4,
                current: 5,
                sends: 3
            }
        );
        app.took(6);
        assert!(app.sends(), "answers to 6 are all new");
        assert_eq!(app.progress.done, 5);
    }

    #[test]
    fn sends_before_the_message_in_progress_is_taken_again_are_new() {
        let mut app = AppProgress::restored(Progress {
            done: 4,
            current: 5,
            sends: 1,
        });
        assert!(app.sends(), "a greeting on takeover");
        assert_eq!(app.progress.sends, 1, "not counted against message 5");
        app.took(5);
        assert!(!app.sends());
        assert!(app.sends());
    }

    #[test]
    fn asking_for_the_next_message_finishes_the_last_one() {
        let mut app = AppProgress::default();
        app.asks();
        assert_eq!(app.progress, Progress::default());
        app.took(1);
        assert!(app.sends());
        app.asks();
        assert_eq!(
            app.progress,
            Progress {
                done: 1,
                current: 1,
                sends: 0
            }
        );
        assert_eq!(AppProgress::restored(app.progress).replay, None);
        // A new handler after a takeover asks before it took the message
        // in progress: that message is not finished.
        let mut continued = AppProgress::restored(Progress {
            done: 4,
            current: 5,
            sends: 1,
        });
        continued.asks();
        assert_eq!(continued.progress.done, 4);
    }

    #[test]
    fn nothing_is_dropped_when_no_message_was_in_progress() {
        let mut app = AppProgress::restored(Progress {
            done: 4,
            current: 4,
            sends: 1,
        });
        app.took(5);
        assert!(app.sends());
        let mut fresh = AppProgress::default();
        assert!(fresh.sends(), "a greeting before any message is new");
        fresh.took(1);
        assert!(fresh.sends());
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(10), Duration::from_secs(1));
    }
}
