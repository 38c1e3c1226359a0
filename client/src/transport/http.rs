//! The loop SSE and long-polling share: a downstream of HTTP responses
//! (one event stream, or one poll after another) and the upstream of send
//! requests, around one link to the session core.

use holdfast_protocol::connector::AttemptEnd;
use tokio::sync::Notify;

use super::poll::{PollAnswer, Poller};
use super::sse::EventStream;
use super::upstream::Upstream;
use super::{Ctx, Link, Step, sleep_until};
use crate::shared::Shared;

/// Where the server's frames come from.
pub(crate) enum Downstream<'c> {
    /// One event stream.
    Sse(EventStream),
    /// One poll after another.
    Poll(Poller<'c>),
}

/// What the downstream delivered.
enum Piece {
    Chunk(Option<Result<bytes::Bytes, reqwest::Error>>),
    Polled(u64, PollAnswer),
}

impl Downstream<'_> {
    /// Gets ready to read: a poll starts when none is out and the
    /// application has room. `Some` when the attachment is over.
    fn prepare(&mut self, link: &Link<'_>) -> Option<AttemptEnd> {
        match self {
            Self::Sse(_) => None,
            Self::Poll(poller) => poller.prepare(link),
        }
    }

    /// Whether to wait on the downstream now (not while the application is
    /// behind on reading: backpressure).
    fn reading(&self, link: &Link<'_>) -> bool {
        match self {
            Self::Sse(_) => !link.inbound_full(),
            Self::Poll(poller) => poller.polling(),
        }
    }

    /// The next piece; cancel-safe.
    async fn next(&mut self) -> Piece {
        match self {
            Self::Sse(stream) => Piece::Chunk(stream.next_chunk().await),
            Self::Poll(poller) => {
                let (last, answer) = poller.answer().await;
                Piece::Polled(last, answer)
            }
        }
    }

    fn apply(&mut self, link: &mut Link<'_>, piece: Piece) -> Step {
        match (self, piece) {
            (Self::Sse(stream), Piece::Chunk(chunk)) => stream.read(link, chunk),
            (Self::Poll(poller), Piece::Polled(last, answer)) => poller.apply(link, last, answer),
            _ => Step::Continue,
        }
    }
}

/// Carries the session on `downstream` plus send requests until the
/// attachment ends.
pub(crate) async fn carry(
    ctx: &Ctx,
    shared: &Shared,
    stop: &Notify,
    link: &mut Link<'_>,
    mut downstream: Downstream<'_>,
) -> AttemptEnd {
    let mut upstream = Upstream::new(ctx);
    loop {
        upstream.start(link);
        if let Some(end) = downstream.prepare(link) {
            return end;
        }
        let reading = downstream.reading(link);
        let busy = upstream.busy();
        let retry_at = upstream.retry_at();
        let deadline = link.deadline();
        let mut posted = None;
        let step = tokio::select! {
            piece = downstream.next(), if reading => downstream.apply(link, piece),
            result = upstream.finish(), if busy => {
                posted = Some(result);
                Step::Continue
            }
            () = sleep_until(retry_at), if retry_at.is_some() => Step::Continue,
            () = shared.driver.notified() => Step::Continue,
            () = shared.drained.notified(), if !reading => Step::Continue,
            () = sleep_until(deadline) => link.timeout(),
            () = stop.notified() => Step::End(AttemptEnd::Stopped),
        };
        let step = upstream.settle(link, posted, step);
        if let Some(end) = Link::outcome(step) {
            return end;
        }
    }
}
