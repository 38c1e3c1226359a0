//! The upstream of the HTTP transports: the client's frames as send
//! requests, one in flight at a time, each answered with an ack. What to do
//! when one fails is the connection policy's [`SendPolicy`].
//!
//! A failed request holds back only what it carried: messages refused for
//! now (a 503's `Retry-After`) or lost (a failed request's backoff) wait,
//! and meanwhile acks, pongs and pings still go in ack-only requests, on
//! time — the server needs those acks to free the buffers that made it
//! refuse (`PROTOCOL.md` §8.4).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use holdfast_protocol::connector::{AttemptEnd, Carried, SendFailure, SendPolicy, SendVerdict};
use holdfast_protocol::wire::json;
use holdfast_protocol::{CloseCode, Frame, TransmitOnly};
use http::header;
use tokio::time::Instant;

use super::{Ctx, KEY_HEADER, Link, Step};
use crate::driver::random_unit;
use crate::error::{classify_http, ended, request_end};
use crate::shared::now;

/// A send request's answer: frames, or how it failed.
type Request<'c> = Pin<Box<dyn Future<Output = Result<Vec<Frame>, AttemptEnd>> + Send + 'c>>;

/// At most one send request in flight; what a failed one carried is sent
/// again when the policy says so.
pub(crate) struct Upstream<'c> {
    ctx: &'c Ctx,
    /// The request in flight, and what it carried.
    in_flight: Option<(Request<'c>, Carried)>,
    policy: SendPolicy,
    /// Messages wait until then (a refusal's `Retry-After`, a failed
    /// request's backoff).
    messages_at: Option<Instant>,
    /// Ack-only requests wait until then (one failed).
    control_at: Option<Instant>,
}

impl<'c> Upstream<'c> {
    pub(crate) fn new(ctx: &'c Ctx) -> Self {
        Self {
            ctx,
            in_flight: None,
            policy: ctx.send_policy.clone(),
            messages_at: None,
            control_at: None,
        }
    }

    /// When something held back may be sent, if anything is.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        match (self.messages_at, self.control_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Starts a send request if none is in flight and there is something
    /// that may go now.
    pub(crate) fn start(&mut self, link: &mut Link<'_>) {
        if self.in_flight.is_some() || !link.greeted() {
            return;
        }
        let now = Instant::now();
        self.messages_at = self.messages_at.filter(|at| now < *at);
        self.control_at = self.control_at.filter(|at| now < *at);
        let only = match (self.messages_at, self.control_at) {
            (None, None) => None,
            (Some(_), None) => Some(TransmitOnly::Control),
            (None, Some(_)) => Some(TransmitOnly::Messages),
            (Some(_), Some(_)) => return,
        };
        let Some(key) = link.key() else { return };
        let Some(frames) = link.transmit(only) else {
            return;
        };
        let carried = if frames
            .iter()
            .any(|f| matches!(f, Frame::Message { .. } | Frame::Close(_)))
        {
            Carried::Messages
        } else {
            Carried::Control
        };
        let url = self.ctx.send_url();
        let body = json::encode_batch_to_vec(&frames);
        tracing::trace!(
            frames = frames.len(),
            bytes = body.len(),
            ?carried,
            "send request"
        );
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
        let request: Request<'c> = Box::pin(async move {
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
        });
        self.in_flight = Some((request, carried));
    }

    /// Waits for the request in flight (pending forever if none).
    pub(crate) async fn finish(&mut self) -> (Result<Vec<Frame>, AttemptEnd>, Carried) {
        match &mut self.in_flight {
            Some((request, carried)) => {
                let carried = *carried;
                let result = request.await;
                self.in_flight = None;
                (result, carried)
            }
            None => std::future::pending().await,
        }
    }

    /// The step after a select: a finished send request, if there was one,
    /// decides it.
    pub(crate) fn settle(
        &mut self,
        link: &mut Link<'_>,
        posted: Option<(Result<Vec<Frame>, AttemptEnd>, Carried)>,
        step: Step,
    ) -> Step {
        match posted {
            Some((result, carried)) => self.apply(link, result, carried),
            None => step,
        }
    }

    /// Applies a finished request to the link.
    fn apply(
        &mut self,
        link: &mut Link<'_>,
        result: Result<Vec<Frame>, AttemptEnd>,
        carried: Carried,
    ) -> Step {
        // The failure, and how the attachment ends if it is given up.
        let (failure, end) = match result {
            Ok(frames) => {
                self.policy.succeeded(carried);
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
        // What it carried goes again: the messages from the oldest
        // unacknowledged one (the server drops what it already has), the
        // acknowledgement as it then stands.
        link.shared.lock().core.request_failed(now());
        match self.policy.failed(carried, failure, random_unit()) {
            SendVerdict::Retry(delay) => {
                tracing::debug!(
                    ?failure,
                    ?carried,
                    ?delay,
                    "send request failed; sending again"
                );
                let at = Some(Instant::now() + delay);
                match carried {
                    Carried::Messages => self.messages_at = at,
                    Carried::Control => self.control_at = at,
                }
                Step::Continue
            }
            SendVerdict::EndAttachment => Step::End(end),
        }
    }
}
