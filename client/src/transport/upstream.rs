//! The upstream of the HTTP transports: the client's frames as send
//! requests, one in flight at a time, each answered with an ack. What to do
//! when one fails is the connection policy's [`SendPolicy`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use holdfast_protocol::connector::{AttemptEnd, SendFailure, SendPolicy, SendVerdict};
use holdfast_protocol::wire::json;
use holdfast_protocol::{CloseCode, Frame};
use http::header;

use super::{Ctx, KEY_HEADER, Link, Step};
use crate::error::{classify_http, ended, request_end};
use crate::shared::now;

/// A send request's answer: frames, or how it failed.
type Request<'c> = Pin<Box<dyn Future<Output = Result<Vec<Frame>, AttemptEnd>> + Send + 'c>>;

/// At most one send request in flight; a failed one is sent again when the
/// policy says so.
pub(crate) struct Upstream<'c> {
    ctx: &'c Ctx,
    in_flight: Option<Request<'c>>,
    policy: SendPolicy,
    retry_at: Option<tokio::time::Instant>,
}

impl<'c> Upstream<'c> {
    pub(crate) fn new(ctx: &'c Ctx) -> Self {
        Self {
            ctx,
            in_flight: None,
            policy: ctx.send_policy.clone(),
            retry_at: None,
        }
    }

    /// When a failed request may be sent again, if one is waiting.
    pub(crate) fn retry_at(&self) -> Option<tokio::time::Instant> {
        self.retry_at
    }

    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts a send request if none is in flight and there is something
    /// to send.
    pub(crate) fn start(&mut self, link: &mut Link<'_>) {
        if self.in_flight.is_some() || !link.greeted() {
            return;
        }
        if let Some(at) = self.retry_at {
            if tokio::time::Instant::now() < at {
                return;
            }
            self.retry_at = None;
        }
        let Some(key) = link.key() else { return };
        let Some(frames) = link.transmit() else {
            return;
        };
        let url = self.ctx.send_url();
        let body = json::encode_batch_to_vec(&frames);
        tracing::trace!(frames = frames.len(), bytes = body.len(), "send request");
        let request = self
            .ctx
            .net
            .http
            .post(url)
            .header(KEY_HEADER, key)
            .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
            .timeout(self.ctx.probe_timeout.max(Duration::from_secs(10)))
            .body(body)
            .send();
        self.in_flight = Some(Box::pin(async move {
            let response = request.await.map_err(|e| request_end(&e))?;
            let status = response.status().as_u16();
            // Headers matter only on a refusal: no copy on the usual path.
            let headers = (status != 200).then(|| response.headers().clone());
            let body = response.bytes().await.map_err(|e| request_end(&e))?;
            if let Some(headers) = headers {
                return Err(classify_http(status, &headers, &body));
            }
            json::decode_batch(&body)
                .map_err(|e| ended(AttemptEnd::Invalid, format_args!("send reply: {e}")))
        }));
    }

    /// Waits for the request in flight (pending forever if none).
    pub(crate) async fn finish(&mut self) -> Result<Vec<Frame>, AttemptEnd> {
        match &mut self.in_flight {
            Some(request) => {
                let result = request.await;
                self.in_flight = None;
                result
            }
            None => std::future::pending().await,
        }
    }

    /// The step after a select: a finished send request, if there was one,
    /// decides it.
    pub(crate) fn settle(
        &mut self,
        link: &mut Link<'_>,
        posted: Option<Result<Vec<Frame>, AttemptEnd>>,
        step: Step,
    ) -> Step {
        match posted {
            Some(result) => self.apply(link, result),
            None => step,
        }
    }

    /// Applies a finished request to the link.
    fn apply(&mut self, link: &mut Link<'_>, result: Result<Vec<Frame>, AttemptEnd>) -> Step {
        // The failure, and how the attachment ends if it is given up.
        let (failure, end) = match result {
            Ok(frames) => {
                self.policy.succeeded();
                let step = link.feed(frames, true);
                // The session answered on this server: a continuing poll
                // attachment need not wait for its held poll to say so.
                if matches!(step, Step::Continue) {
                    link.confirm();
                }
                return step;
            }
            // holdfast closed the session: the core hears it.
            Err(AttemptEnd::Refused(close)) => return link.feed(vec![Frame::Close(close)], true),
            Err(AttemptEnd::Detached(close)) if close.code == CloseCode::OVERLOADED => (
                SendFailure::Overloaded {
                    retry_after: close.retry_after,
                },
                AttemptEnd::Detached(close),
            ),
            Err(AttemptEnd::Detached(close)) => (SendFailure::Refused, AttemptEnd::Detached(close)),
            Err(end) => (
                SendFailure::Failed {
                    retry_after: match end {
                        AttemptEnd::Status { retry_after, .. } => retry_after,
                        _ => None,
                    },
                },
                AttemptEnd::Closed,
            ),
        };
        // The messages go again from the oldest unacknowledged one; the
        // server drops what it already has.
        link.shared.lock().core.request_failed(now());
        match self.policy.failed(failure) {
            SendVerdict::Retry(delay) => {
                tracing::debug!(?failure, ?delay, "send request failed; sending again");
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                Step::Continue
            }
            SendVerdict::EndAttachment => Step::End(end),
        }
    }
}
