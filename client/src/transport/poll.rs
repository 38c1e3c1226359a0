//! The long-polling transport: one downstream batch per request, each
//! carrying the acknowledgement of everything delivered so far in its
//! `last`; the upstream as send requests (`http::carry`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use holdfast_protocol::connector::AttemptEnd;
use holdfast_protocol::wire::json;
use holdfast_protocol::{ConnectTarget, Frame, TransportKind};
use http::{HeaderMap, header};
use tokio::sync::Notify;

use super::http::{Downstream, carry};
use super::{Ctx, KEY_HEADER, Link, Step};
use crate::error::{ended, request_end};
use crate::shared::Shared;

/// A poll's result: its `last`, and the answer.
type Poll<'c> = Pin<Box<dyn Future<Output = (u64, PollAnswer)> + Send + 'c>>;

pub(crate) enum PollAnswer {
    Frames(Vec<Frame>),
    Refused {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
    },
    Failed(AttemptEnd),
}

/// Carries the session on polls and send requests until it ends. A poll
/// opening or resuming the session must be answered within
/// `greeting_timeout` (a poll continuing the attachment is greeted at
/// once).
pub(crate) async fn run(
    ctx: &Ctx,
    shared: &Shared,
    stop: &Notify,
    greeting_timeout: Duration,
) -> AttemptEnd {
    let Some((mut link, target)) = Link::attach(shared, TransportKind::LongPoll, greeting_timeout)
    else {
        return AttemptEnd::SessionClosed;
    };
    let poller = Poller {
        ctx,
        shared,
        poll: Some(start_poll(
            ctx,
            &target,
            poll_deadline(ctx, shared),
            link.report(),
        )),
    };
    let end = carry(ctx, shared, stop, &mut link, Downstream::Poll(poller)).await;
    link.detach();
    end
}

/// One poll after another, while the application keeps up.
pub(crate) struct Poller<'c> {
    ctx: &'c Ctx,
    shared: &'c Shared,
    poll: Option<Poll<'c>>,
}

impl Poller<'_> {
    /// Starts the next poll if none is out and the application has room.
    pub(crate) fn prepare(&mut self, link: &Link<'_>) -> Option<AttemptEnd> {
        if self.poll.is_some() || link.inbound_full() {
            return None;
        }
        let Some(target) = self.shared.lock().core.connect_target() else {
            return Some(AttemptEnd::SessionClosed);
        };
        tracing::trace!(last = target.last, "poll");
        self.poll = Some(start_poll(
            self.ctx,
            &target,
            poll_deadline(self.ctx, self.shared),
            link.report(),
        ));
        None
    }

    pub(crate) fn polling(&self) -> bool {
        self.poll.is_some()
    }

    /// The answer of the poll out; cancel-safe (pending if none).
    pub(crate) async fn answer(&mut self) -> (u64, PollAnswer) {
        let Some(poll) = &mut self.poll else {
            return std::future::pending().await;
        };
        let answer = poll.await;
        self.poll = None;
        answer
    }

    pub(crate) fn apply(&mut self, link: &mut Link<'_>, last: u64, answer: PollAnswer) -> Step {
        match answer {
            PollAnswer::Frames(frames) => {
                tracing::trace!(last, frames = frames.len(), "poll answered");
                self.shared.lock().core.acked_by_request(last);
                let step = link.feed(frames, false);
                link.confirm();
                step
            }
            PollAnswer::Refused {
                status,
                headers,
                body,
            } => match link.refused(status, &headers, &body) {
                Step::Continue => Step::End(AttemptEnd::Invalid),
                end => end,
            },
            PollAnswer::Failed(end) => Step::End(end),
        }
    }
}

/// How long to wait for a poll's answer: the server's announced hold plus
/// room for the network, or the default before the session opened (the
/// first poll is answered at once).
fn poll_deadline(ctx: &Ctx, shared: &Shared) -> Duration {
    shared.lock().core.params().map_or(ctx.poll_timeout, |p| {
        p.poll_hold + ctx.probe_timeout.max(Duration::from_secs(5))
    })
}

fn start_poll<'c>(
    ctx: &'c Ctx,
    target: &ConnectTarget,
    timeout: Duration,
    report: Option<&str>,
) -> Poll<'c> {
    let last = target.last;
    let mut request = ctx
        .net
        .http
        .get(ctx.endpoint(TransportKind::LongPoll, target, report))
        .header(header::CACHE_CONTROL, "no-cache")
        .timeout(timeout);
    if let Some(key) = &target.key {
        request = request.header(KEY_HEADER, key);
    }
    let request = request.send();
    Box::pin(async move {
        let answer = match request.await {
            Err(e) => PollAnswer::Failed(request_end(&e)),
            Ok(response) => {
                let status = response.status().as_u16();
                // Headers matter only on a refusal: no copy on the usual path.
                let headers = (status != 200).then(|| response.headers().clone());
                match response.bytes().await {
                    Err(e) => PollAnswer::Failed(request_end(&e)),
                    Ok(body) if status == 200 => match json::decode_batch(&body) {
                        Ok(frames) => PollAnswer::Frames(frames),
                        Err(e) => PollAnswer::Failed(ended(
                            AttemptEnd::Invalid,
                            format_args!("poll answer: {e}"),
                        )),
                    },
                    Ok(body) => PollAnswer::Refused {
                        status,
                        headers: headers.unwrap_or_default(),
                        body: body.to_vec(),
                    },
                }
            }
        };
        (last, answer)
    })
}
