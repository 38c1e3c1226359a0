//! The SSE transport: the downstream as an event stream read with a plain
//! HTTP client (so it can send headers and see comments), the upstream as
//! send requests (`http::carry`).

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use holdfast_protocol::TransportKind;
use holdfast_protocol::connector::AttemptEnd;
use holdfast_protocol::wire::json;
use holdfast_protocol::wire::sse::{SseItem, SseParser};
use http::header;
use tokio::sync::Notify;

use super::http::{Downstream, carry};
use super::{Ctx, KEY_HEADER, Link, Step};
use crate::error::{ended, request_end};
use crate::shared::Shared;

type Body = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

/// Carries the session on an event stream and send requests until it
/// ends. The response and the greeting must arrive within
/// `greeting_timeout`.
pub(crate) async fn run(
    ctx: &Ctx,
    shared: &Shared,
    stop: &Notify,
    greeting_timeout: Duration,
) -> AttemptEnd {
    let Some((mut link, target)) = Link::attach(shared, TransportKind::Sse, greeting_timeout)
    else {
        return AttemptEnd::SessionClosed;
    };
    let end = match open(ctx, &mut link, target, greeting_timeout).await {
        Ok(stream) => carry(ctx, shared, stop, &mut link, Downstream::Sse(stream)).await,
        Err(end) => end,
    };
    link.detach();
    end
}

/// Requests the event stream; its body once it is one.
async fn open(
    ctx: &Ctx,
    link: &mut Link<'_>,
    target: holdfast_protocol::ConnectTarget,
    greeting_timeout: Duration,
) -> Result<EventStream, AttemptEnd> {
    let url = ctx.endpoint(TransportKind::Sse, &target, link.report());
    let mut request = ctx
        .net
        .http
        .get(url)
        .header(header::ACCEPT, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache");
    if let Some(key) = &target.key {
        request = request.header(KEY_HEADER, key);
    }
    let response = match tokio::time::timeout(greeting_timeout, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(request_end(&e)),
        Err(_) => return Err(ended(AttemptEnd::Timeout, "no SSE answer")),
    };
    let status = response.status().as_u16();
    if status != 200 {
        let headers = response.headers().clone();
        let body = tokio::time::timeout(ctx.probe_timeout, response.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(match link.refused(status, &headers, &body) {
            Step::End(end) => end,
            Step::Continue => AttemptEnd::Invalid,
        });
    }
    let is_event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_event_stream {
        return Err(ended(
            AttemptEnd::Invalid,
            "the SSE answer is not an event stream (an intermediary?)",
        ));
    }
    Ok(EventStream {
        body: Box::pin(response.bytes_stream()),
        parser: SseParser::new(ctx.max_message.saturating_mul(8).max(1 << 20)),
    })
}

/// An open event stream.
pub(crate) struct EventStream {
    body: Body,
    parser: SseParser,
}

impl EventStream {
    /// The next chunk of the body; cancel-safe.
    pub(crate) async fn next_chunk(&mut self) -> Option<Result<bytes::Bytes, reqwest::Error>> {
        self.body.next().await
    }

    /// Feeds a chunk to the link. Any byte is proof of life, even half an
    /// event.
    pub(crate) fn read(
        &mut self,
        link: &mut Link<'_>,
        chunk: Option<Result<bytes::Bytes, reqwest::Error>>,
    ) -> Step {
        let bytes = match chunk {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Step::End(ended(AttemptEnd::Closed, e)),
            None => return Step::End(ended(AttemptEnd::Closed, "stream ended without a detach")),
        };
        let mut items = Vec::new();
        if let Err(e) = self.parser.feed(&bytes, &mut items) {
            return Step::End(ended(AttemptEnd::Invalid, e));
        }
        if items.is_empty() {
            return link.feed(Vec::new(), false);
        }
        for item in items {
            let frames = match item {
                SseItem::Event { data, .. } => match json::decode_batch(data.as_bytes()) {
                    Ok(frames) => frames,
                    Err(e) => return Step::End(ended(AttemptEnd::Invalid, e)),
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
}
