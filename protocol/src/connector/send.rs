//! What to do when a send request (the upstream of SSE and long-polling)
//! fails: its messages are never lost (the same ones go again), but a
//! request that keeps failing means the attachment is gone.

use std::time::Duration;

/// The first retry of a failed send request waits this long, doubling.
pub const SEND_RETRY: Duration = Duration::from_millis(100);

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
    /// Send the same messages again after this long.
    Retry(Duration),
    /// Give the attachment up (end it with
    /// [`AttemptEnd::Closed`](super::AttemptEnd::Closed)).
    EndAttachment,
}

/// The retry rule of one attachment's send requests (`PROTOCOL.md` §7):
/// a failed request is sent again after 100, 200, 400… ms (or its
/// `Retry-After`, if longer), up to `retries` times in a row; a 4503 is sent
/// again after its `retry_after` as often as it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendPolicy {
    retries: u32,
    /// The wait after a 4503 without `retry_after`.
    overloaded_wait: Duration,
    failures: u32,
}

impl SendPolicy {
    /// A policy allowing `retries` failures in a row.
    pub fn new(retries: u32, overloaded_wait: Duration) -> Self {
        Self {
            retries,
            overloaded_wait,
            failures: 0,
        }
    }

    /// A send request failed: what to do with its messages.
    pub fn failed(&mut self, failure: SendFailure) -> SendVerdict {
        match failure {
            SendFailure::Overloaded { retry_after } => {
                SendVerdict::Retry(retry_after.unwrap_or(self.overloaded_wait))
            }
            SendFailure::Refused => SendVerdict::EndAttachment,
            SendFailure::Failed { retry_after } => {
                if self.failures >= self.retries {
                    return SendVerdict::EndAttachment;
                }
                self.failures += 1;
                let delay = SEND_RETRY * 2u32.saturating_pow(self.failures - 1);
                SendVerdict::Retry(delay.max(retry_after.unwrap_or_default()))
            }
        }
    }

    /// A send request was answered: the count starts again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}
