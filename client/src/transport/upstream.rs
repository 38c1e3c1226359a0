//! The upstream of the HTTP transports: the client's frames as send
//! requests, one in flight at a time, each answered with an ack.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use holdfast_protocol::Frame;
use holdfast_protocol::wire::json;
use http::header;

use super::{Ctx, EndReason, KEY_HEADER, Link, Step};
use crate::error::{AttemptError, HttpFailure, classify_http};
use crate::shared::now;

type Request<'c> = Pin<Box<dyn Future<Output = Result<Vec<Frame>, HttpFailure>> + Send + 'c>>;

/// Consecutive failed send requests after which the attachment is given
/// up (the downstream is probably gone too).
const MAX_FAILURES: u32 = 4;

/// At most one send request in flight; a failed one is retried after a
/// short, growing delay.
pub(crate) struct Upstream<'c> {
    ctx: &'c Ctx,
    in_flight: Option<Request<'c>>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl<'c> Upstream<'c> {
    pub(crate) fn new(ctx: &'c Ctx) -> Self {
        Self {
            ctx,
            in_flight: None,
            failures: 0,
            retry_at: None,
        }
    }

    /// When a failed request may be retried, if one is waiting.
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
            let response = request
                .await
                .map_err(|e| HttpFailure::Intermediary(format!("send request failed: {e}")))?;
            let status = response.status().as_u16();
            let body = response
                .bytes()
                .await
                .map_err(|e| HttpFailure::Intermediary(format!("send reply cut: {e}")))?;
            if status != 200 {
                return Err(classify_http(status, &body));
            }
            json::decode_batch(&body).map_err(|e| {
                HttpFailure::Intermediary(format!("send reply is not a holdfast batch: {e}"))
            })
        }));
    }

    /// Waits for the request in flight (pending forever if none).
    pub(crate) async fn finish(&mut self) -> Result<Vec<Frame>, HttpFailure> {
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
        posted: Option<Result<Vec<Frame>, HttpFailure>>,
        step: Step,
    ) -> Step {
        match posted {
            Some(result) => self.apply(link, result),
            None => step,
        }
    }

    /// Applies a finished request to the link.
    pub(crate) fn apply(
        &mut self,
        link: &mut Link<'_>,
        result: Result<Vec<Frame>, HttpFailure>,
    ) -> Step {
        match result {
            Ok(frames) => {
                self.failures = 0;
                link.feed(frames, true)
            }
            Err(HttpFailure::Closed(close)) => link.feed(vec![Frame::Close(close)], true),
            Err(failure) => {
                link.shared.lock().core.request_failed(now());
                self.failures += 1;
                if self.failures < MAX_FAILURES && matches!(failure, HttpFailure::Intermediary(_)) {
                    // Nothing is lost (the same messages go again); the
                    // downstream may well be fine: retry before giving up.
                    let delay = Duration::from_millis(100) * 2u32.pow(self.failures - 1);
                    self.retry_at = Some(tokio::time::Instant::now() + delay);
                    tracing::debug!(
                        failures = self.failures,
                        ?delay,
                        "send request failed; retrying"
                    );
                    return Step::Continue;
                }
                match failure {
                    HttpFailure::Detached(close) if close.retry_after.is_some() => {
                        Step::Ended(EndReason::Busy(close.retry_after))
                    }
                    HttpFailure::Detached(close) => Step::Ended(EndReason::Lost(format!(
                        "send refused: {} {}",
                        close.code, close.reason
                    ))),
                    HttpFailure::Intermediary(why) => Step::Ended(EndReason::Lost(why)),
                    HttpFailure::Closed(_) => Step::Failed(AttemptError::Blocked(String::new())),
                }
            }
        }
    }
}
