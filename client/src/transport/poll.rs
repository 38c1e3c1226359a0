//! The long-polling transport: one downstream batch per request, each
//! carrying the acknowledgement of everything delivered so far in its
//! `last`; the upstream as send requests.

use std::future::Future;
use std::pin::Pin;

use holdfast_protocol::wire::json;
use holdfast_protocol::{Frame, TransportKind};
use http::header;
use tokio::sync::Notify;

use super::sse::refused;
use super::upstream::Upstream;
use super::{Ctx, EndReason, KEY_HEADER, Link, Outcome, Step, sleep_until};
use crate::error::AttemptError;
use crate::shared::Shared;

/// A poll's result: its `last`, and the answer.
type Poll<'c> = Pin<Box<dyn Future<Output = (u64, PollAnswer)> + Send + 'c>>;

enum PollAnswer {
    Frames(Vec<Frame>),
    Refused { status: u16, body: Vec<u8> },
    Failed { connect: bool, why: String },
}

pub(crate) async fn run(ctx: &Ctx, shared: &Shared, stop: &Notify) -> Outcome {
    let Some((mut link, target)) = Link::attach(shared, TransportKind::LongPoll) else {
        return Outcome::SessionClosed;
    };
    let mut upstream = Upstream::new(ctx);
    let mut poll: Option<Poll<'_>> = Some(start_poll(
        ctx,
        target.key.as_deref(),
        target.last,
        poll_deadline(ctx, shared),
    ));
    let outcome = loop {
        upstream.start(&mut link);
        if poll.is_none() && !link.inbound_full() {
            let target = shared.lock().core.connect_target();
            match target {
                Some(target) => {
                    tracing::trace!(last = target.last, "poll");
                    poll = Some(start_poll(
                        ctx,
                        target.key.as_deref(),
                        target.last,
                        poll_deadline(ctx, shared),
                    ))
                }
                None => break Outcome::SessionClosed,
            }
        }
        let polling = poll.is_some();
        let busy = upstream.busy();
        let retry_at = upstream.retry_at();
        let mut posted = None;
        let step = tokio::select! {
            (last, answer) = async { match &mut poll { Some(p) => p.await, None => std::future::pending().await } }, if polling => {
                poll = None;
                match answer {
                    PollAnswer::Frames(frames) => {
                        tracing::trace!(last, frames = frames.len(), "poll answered");
                        shared.lock().core.acked_by_request(last);
                        let step = link.feed(frames, false);
                        link.confirm();
                        step
                    }
                    PollAnswer::Refused { status, body } => {
                        let outcome = refused(&mut link, status, &body);
                        break if link.greeted() {
                            match outcome {
                                Outcome::Failed(e) => link.ended(EndReason::Lost(e.describe())),
                                other => other,
                            }
                        } else {
                            outcome
                        };
                    }
                    PollAnswer::Failed { connect, why } if connect && !link.greeted() => {
                        break Outcome::Failed(AttemptError::Unreachable(why));
                    }
                    PollAnswer::Failed { why, .. } => Step::Ended(EndReason::Lost(why)),
                }
            }
            result = upstream.finish(), if busy => {
                posted = Some(result);
                Step::Continue
            }
            () = sleep_until(retry_at), if retry_at.is_some() => Step::Continue,
            () = shared.driver.notified() => Step::Continue,
            () = shared.drained.notified(), if !polling => Step::Continue,
            () = sleep_until(link.deadline()) => link.timeout(),
            () = stop.notified() => Step::Ended(EndReason::Stopped),
        };
        let step = upstream.settle(&mut link, posted, step);
        if let Some(outcome) = link.outcome(step) {
            break outcome;
        }
    };
    link.detach();
    outcome
}

/// How long to wait for a poll's answer: the server's announced hold plus
/// room for the network, or the default before the session opened (the
/// first poll is answered at once).
fn poll_deadline(ctx: &Ctx, shared: &Shared) -> std::time::Duration {
    shared.lock().core.params().map_or(ctx.poll_timeout, |p| {
        p.poll_hold + ctx.probe_timeout.max(std::time::Duration::from_secs(5))
    })
}

fn start_poll<'c>(
    ctx: &'c Ctx,
    key: Option<&str>,
    last: u64,
    timeout: std::time::Duration,
) -> Poll<'c> {
    let target = holdfast_protocol::ConnectTarget {
        key: key.map(str::to_owned),
        last,
    };
    let mut request = ctx
        .net
        .http
        .get(ctx.endpoint(TransportKind::LongPoll, &target))
        .header(header::CACHE_CONTROL, "no-cache")
        .timeout(timeout);
    if let Some(key) = &target.key {
        request = request.header(KEY_HEADER, key);
    }
    let request = request.send();
    Box::pin(async move {
        let answer = match request.await {
            Err(e) => PollAnswer::Failed {
                connect: e.is_connect(),
                why: format!("poll failed: {e}"),
            },
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Err(e) => PollAnswer::Failed {
                        connect: false,
                        why: format!("poll answer cut: {e}"),
                    },
                    Ok(body) if status == 200 => match json::decode_batch(&body) {
                        Ok(frames) => PollAnswer::Frames(frames),
                        Err(e) => PollAnswer::Failed {
                            connect: false,
                            why: format!("poll answer is not a holdfast batch: {e}"),
                        },
                    },
                    Ok(body) => PollAnswer::Refused {
                        status,
                        body: body.to_vec(),
                    },
                }
            }
        };
        (last, answer)
    })
}
