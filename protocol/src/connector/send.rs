//! What to do when a send request (the upstream of SSE and long-polling)
//! fails: its messages are never lost (the same ones go again), but a
//! request that keeps failing means the attachment is gone.
//!
//! Requests carrying messages and ack-only ones are counted apart, and
//! waiting for one never holds the other back: while messages wait out a
//! refusal's `Retry-After` (the server admits no new messages now) or a
//! failed request's backoff, acknowledgements, pongs and pings still go
//! out on time in ack-only requests, which cost the server nothing and are
//! always admitted (`PROTOCOL.md` §3, §8.4). Holding them back would hold
//! back the acks that free the server's replay buffers, which is what
//! keeps its budget full and the next sends refused.

use std::time::Duration;

use super::backoff::spread_retry_after;

/// The first retry of a failed send request waits this long, doubling.
pub const SEND_RETRY: Duration = Duration::from_millis(100);

/// What a send request carried: what its failure holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// Messages (or the session's `close`, which follows them): when the
    /// request fails, the same messages go again after the verdict's
    /// delay, and ack-only requests go meanwhile.
    Messages,
    /// Only `ack`, `ping` and `pong` frames: when it fails, the next
    /// ack-only request waits the verdict's delay and carries the latest
    /// acknowledgement (acks are cumulative: it supersedes the lost one).
    /// Messages are not held back by it.
    Control,
}

/// What went wrong with a send request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    /// No answer, or an answer not from holdfast (with its `Retry-After`).
    Failed {
        /// What its `Retry-After` said.
        retry_after: Option<Duration>,
    },
    /// holdfast refused the messages for now (`detach` 4503): the
    /// application is not keeping up, or the session is between nodes.
    Overloaded {
        /// The server's `retry_after`.
        retry_after: Option<Duration>,
    },
    /// holdfast refused the request for good (another `detach`).
    Refused,
}

/// What to do about a failed send request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendVerdict {
    /// Send again after this long (the same messages, for a request that
    /// carried messages; the latest acks, for an ack-only one).
    Retry(Duration),
    /// Give the attachment up (end it with
    /// [`AttemptEnd::Closed`](super::AttemptEnd::Closed)).
    EndAttachment,
}

/// The retry rule of one attachment's send requests (`PROTOCOL.md` §7):
/// a failed request is sent again after 100, 200, 400… ms (or a random
/// delay between its `Retry-After` and half as long again, if longer), up
/// to `retries` times in a row; a 4503 is sent again after its
/// `retry_after` (spread the same way) as often as it takes. Requests
/// carrying messages and ack-only requests each count their own failures
/// in a row ([`Carried`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendPolicy {
    retries: u32,
    /// The wait after a 4503 without `retry_after`.
    overloaded_wait: Duration,
    /// Requests carrying messages that failed in a row.
    failures: u32,
    /// Ack-only requests that failed in a row.
    control_failures: u32,
}

impl SendPolicy {
    /// A policy allowing `retries` failures in a row.
    pub fn new(retries: u32, overloaded_wait: Duration) -> Self {
        Self {
            retries,
            overloaded_wait,
            failures: 0,
            control_failures: 0,
        }
    }

    /// A send request that carried `carried` failed: what to do. `random`
    /// is a uniform number in `[0, 1)` that spreads a `Retry-After` (see
    /// [`Backoff`](super::Backoff)); it is only used when there is one.
    pub fn failed(&mut self, carried: Carried, failure: SendFailure, random: f64) -> SendVerdict {
        let retries = self.retries;
        let overloaded_wait = self.overloaded_wait;
        let failures = match carried {
            Carried::Messages => &mut self.failures,
            Carried::Control => &mut self.control_failures,
        };
        match failure {
            // The server names no wait: ours stands in for it, spread the
            // same way, so that the clients refused together do not all
            // come back together.
            SendFailure::Overloaded { retry_after } => SendVerdict::Retry(spread_retry_after(
                retry_after.unwrap_or(overloaded_wait),
                random,
            )),
            SendFailure::Refused => SendVerdict::EndAttachment,
            SendFailure::Failed { retry_after } => {
                if *failures >= retries {
                    return SendVerdict::EndAttachment;
                }
                *failures += 1;
                let delay = SEND_RETRY * 2u32.saturating_pow(*failures - 1);
                match retry_after {
                    Some(after) => SendVerdict::Retry(delay.max(spread_retry_after(after, random))),
                    None => SendVerdict::Retry(delay),
                }
            }
        }
    }

    /// A send request that carried `carried` was answered: its count
    /// starts again.
    pub fn succeeded(&mut self, carried: Carried) {
        match carried {
            Carried::Messages => self.failures = 0,
            Carried::Control => self.control_failures = 0,
        }
    }

    /// The attachment ended: every count starts again.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.control_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Option<Duration> = Some(Duration::from_secs(1));

    #[test]
    fn messages_and_acks_count_their_failures_apart() {
        let mut policy = SendPolicy::new(2, Duration::from_millis(250));
        let failed = SendFailure::Failed { retry_after: None };
        let ms = |n| SendVerdict::Retry(Duration::from_millis(n));
        assert_eq!(policy.failed(Carried::Messages, failed, 0.5), ms(100));
        // Ack-only requests answered meanwhile do not hide that the
        // messages keep failing...
        policy.succeeded(Carried::Control);
        assert_eq!(policy.failed(Carried::Messages, failed, 0.5), ms(200));
        // ...and an ack-only request failing starts its own count.
        assert_eq!(policy.failed(Carried::Control, failed, 0.5), ms(100));
        assert_eq!(
            policy.failed(Carried::Messages, failed, 0.5),
            SendVerdict::EndAttachment
        );
        policy.succeeded(Carried::Messages);
        assert_eq!(policy.failed(Carried::Messages, failed, 0.5), ms(100));
        policy.reset();
        assert_eq!(policy.failed(Carried::Control, failed, 0.5), ms(100));
    }

    #[test]
    fn a_retry_after_is_spread_over_half_again() {
        let mut policy = SendPolicy::new(3, Duration::from_millis(250));
        let overloaded = SendFailure::Overloaded {
            retry_after: SECOND,
        };
        let ms = |n| SendVerdict::Retry(Duration::from_millis(n));
        assert_eq!(policy.failed(Carried::Messages, overloaded, 0.0), ms(1000));
        assert_eq!(policy.failed(Carried::Messages, overloaded, 0.5), ms(1250));
        assert_eq!(
            policy.failed(Carried::Messages, overloaded, 0.999_999),
            ms(1499)
        );
        // Without a Retry-After, our own wait is spread the same way.
        let bare = SendFailure::Overloaded { retry_after: None };
        assert_eq!(policy.failed(Carried::Control, bare, 0.5), ms(312));
        // A gateway's Retry-After, when longer than the retry delay.
        let gateway = SendFailure::Failed {
            retry_after: SECOND,
        };
        assert_eq!(policy.failed(Carried::Messages, gateway, 0.5), ms(1250));
    }
}
