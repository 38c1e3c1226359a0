//! The SSE transport: the downstream as an event stream read with a plain
//! HTTP client (so it can send headers and see comments), the upstream as
//! send requests.

use futures_util::StreamExt;
use holdfast_protocol::TransportKind;
use holdfast_protocol::wire::json;
use holdfast_protocol::wire::sse::{SseItem, SseParser};
use http::header;
use tokio::sync::Notify;

use super::upstream::Upstream;
use super::{Ctx, EndReason, KEY_HEADER, Link, Outcome, Step, sleep_until};
use crate::error::{AttemptError, HttpFailure, classify_http};
use crate::shared::Shared;

pub(crate) async fn run(ctx: &Ctx, shared: &Shared, stop: &Notify) -> Outcome {
    let Some((mut link, target)) = Link::attach(shared, TransportKind::Sse) else {
        return Outcome::SessionClosed;
    };
    let url = ctx.endpoint(TransportKind::Sse, &target);
    let mut request = ctx
        .net
        .http
        .get(url)
        .header(header::ACCEPT, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(key) = &target.key {
        request = request.header(KEY_HEADER, key);
    }
    let request = request.send();
    let response = match tokio::time::timeout(ctx.probe_timeout, request).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            link.detach();
            return Outcome::Failed(if e.is_connect() {
                AttemptError::Unreachable(e.to_string())
            } else {
                AttemptError::Blocked(format!("SSE request failed: {e}"))
            });
        }
        Err(_) => {
            link.detach();
            return Outcome::Failed(AttemptError::Blocked("SSE request timed out".into()));
        }
    };
    let status = response.status().as_u16();
    if status != 200 {
        let body = tokio::time::timeout(ctx.probe_timeout, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let outcome = refused(&mut link, status, &body);
        link.detach();
        return outcome;
    }
    let is_event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_event_stream {
        link.detach();
        return Outcome::Failed(AttemptError::Blocked(
            "the SSE answer is not an event stream (an intermediary?)".into(),
        ));
    }
    let mut body = response.bytes_stream();
    let mut parser = SseParser::new(ctx.max_message.saturating_mul(8).max(1 << 20));
    let mut upstream = Upstream::new(ctx);
    let outcome = loop {
        upstream.start(&mut link);
        let reading = !link.inbound_full();
        let busy = upstream.busy();
        let retry_at = upstream.retry_at();
        let mut posted = None;
        let step = tokio::select! {
            chunk = body.next(), if reading => match chunk {
                Some(Ok(bytes)) => read(&mut link, &mut parser, &bytes),
                Some(Err(e)) => Step::Ended(EndReason::Lost(format!("stream cut: {e}"))),
                None => Step::Ended(EndReason::Lost("stream ended without a detach".into())),
            },
            result = upstream.finish(), if busy => {
                posted = Some(result);
                Step::Continue
            }
            () = sleep_until(retry_at), if retry_at.is_some() => Step::Continue,
            () = shared.driver.notified() => Step::Continue,
            () = shared.drained.notified(), if !reading => Step::Continue,
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

/// Feeds a chunk of the stream to the link. Any byte is proof of life,
/// even half an event.
fn read(link: &mut Link<'_>, parser: &mut SseParser, bytes: &[u8]) -> Step {
    let mut items = Vec::new();
    if let Err(e) = parser.feed(bytes, &mut items) {
        return Step::Ended(EndReason::Lost(format!("bad event stream: {e}")));
    }
    if items.is_empty() {
        return link.feed(Vec::new(), false);
    }
    for item in items {
        let frames = match item {
            SseItem::Event { data, .. } => match json::decode_batch(data.as_bytes()) {
                Ok(frames) => frames,
                Err(e) => return Step::Ended(EndReason::Lost(format!("bad batch: {e}"))),
            },
            // A keep-alive or the padding.
            SseItem::Comment => Vec::new(),
        };
        let step = link.feed(frames, false);
        if !matches!(step, Step::Continue) {
            return step;
        }
    }
    Step::Continue
}

/// What a non-200 answer to a downstream request means for the attempt.
pub(crate) fn refused(link: &mut Link<'_>, status: u16, body: &[u8]) -> Outcome {
    match classify_http(status, body) {
        HttpFailure::Closed(close) => {
            let step = link.feed(vec![holdfast_protocol::Frame::Close(close.clone())], false);
            link.outcome(step)
                .unwrap_or(Outcome::Failed(AttemptError::Refused(close)))
        }
        HttpFailure::Detached(close) => Outcome::Failed(AttemptError::Blocked(format!(
            "{} refused: {} {}",
            link.kind, close.code, close.reason
        ))),
        HttpFailure::Intermediary(why) => Outcome::Failed(AttemptError::Blocked(format!(
            "{} answered {why}",
            link.kind
        ))),
    }
}
