//! `GET <mount>/sse`: the downstream as a `text/event-stream` (`PROTOCOL.md`
//! §8.2). Hardened for proxies: no caching or transformation, no nginx
//! buffering, a padding prelude, and the stream recycled after a byte or
//! time budget so a buffering proxy can never hoard it.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use tracing::Instrument;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use holdfast_protocol::wire::sse;
use holdfast_protocol::{CloseCode, Frame, TransportKind};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use tokio::time::Instant;

use super::{Prepared, WeakAttachment, attach, prepare, probe_over};
use crate::peer::Peer;
use crate::server::ServerState;
use crate::session::{Shared, now};

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    peer: Peer,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let attached = match prepare(
        &state,
        headers,
        uri,
        peer,
        TransportKind::Sse,
        last_event_id,
    )
    .await
    {
        Ok(Prepared::Probe) => {
            return probe(state.config.sse_padding, state.config.probe_lifetime);
        }
        Ok(prepared) => attach(&state, prepared, TransportKind::Sse).await,
        Err(reject) => Err(reject),
    };
    let (shared, id) = match attached {
        Ok(attached) => attached,
        Err(reject) => return reject.into_http(),
    };
    let config = &state.config;
    let span = shared.attachment_span(TransportKind::Sse);
    let feed = Feed {
        attachment: WeakAttachment::new(&shared, id),
        padding: config.sse_padding,
        budget: config.sse_max_bytes,
        recycle_at: Instant::now() + config.sse_max_age,
        done: false,
    };
    let body = futures_util::stream::unfold(feed, move |mut feed| {
        let span = span.clone();
        async move {
            let chunk = feed.next_chunk().instrument(span).await?;
            Some((Ok::<_, Infallible>(chunk), feed))
        }
    });
    event_stream(Body::from_stream(body))
}

/// A probe (`PROTOCOL.md` §8.5): the padding and one `ping` event at once,
/// then the stream stays open (so a proxy that buffers until the end shows
/// itself) until `lifetime`, and ends with a `detach` 4001 event.
fn probe(padding: usize, lifetime: std::time::Duration) -> Response {
    let mut first = Vec::new();
    sse::encode_padding(padding, &mut first);
    sse::encode_event(&[Frame::Ping], &mut first);
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(first)) })
        .chain(futures_util::stream::once(async move {
            tokio::time::sleep(lifetime).await;
            let mut last = Vec::new();
            sse::encode_event(&[Frame::Detach(probe_over())], &mut last);
            Ok(Bytes::from(last))
        }));
    event_stream(Body::from_stream(body))
}

/// The frame that ends a stream after its byte or time budget: the client
/// resumes at once (`PROTOCOL.md` §6).
pub(crate) fn recycled() -> Frame {
    Frame::detach(CloseCode::RECONNECT, "stream recycled, reconnect")
}

/// A `200` event stream with the headers that keep proxies from caching,
/// transforming or buffering it.
pub(crate) fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    // hyper keeps a response's header map after writing it, to reuse for
    // the connection's next request — which a stream's connection has not
    // for the stream's whole life: sized to exactly what it holds (half
    // of what growing it one insert at a time allocates).
    let headers = response.headers_mut();
    *headers = HeaderMap::with_capacity(3);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One SSE attachment, producing the body chunk by chunk.
///
/// It holds its session weakly ([`WeakAttachment`], which detaches when
/// the body is dropped: client gone, stream ended, write deadline passed).
/// hyper stops polling a body whose socket is full, so a reader that
/// stopped reading leaves the body parked until the connection ends —
/// which only a write deadline on the connection's IO (see
/// [`serve`](crate::serve)) can bring about. Meanwhile the session times
/// the attachment out and, once its resume window is over, is forgotten:
/// the parked body must not keep it in memory.
struct Feed {
    attachment: WeakAttachment,
    /// Padding still to write at the start.
    padding: usize,
    /// Bytes left before the stream is recycled.
    budget: usize,
    recycle_at: Instant,
    done: bool,
}

impl Feed {
    /// The next chunk of the body: every event ready now. `None` once the
    /// stream has ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // Gone: the session was forgotten while the body was parked.
        let shared = self.attachment.shared.upgrade()?;
        let id = self.attachment.id;
        let mut out = Vec::new();
        if self.padding > 0 {
            sse::encode_padding(std::mem::take(&mut self.padding), &mut out);
        }
        loop {
            let notified = shared.transmit.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            // Stop taking events once the budget is spent: what is left
            // waits for the next stream (PROTOCOL.md §6, SSE recycling).
            while out.len() < self.budget {
                let transmit = {
                    let mut core = shared.lock();
                    let now = now();
                    let transmit = core.poll_transmit(now, id);
                    if transmit.is_none() && core.is_finished(now) {
                        // Over for good: end the stream with what is left.
                        self.done = true;
                        return (!out.is_empty()).then(|| out.into());
                    }
                    transmit
                };
                let Some(transmit) = transmit else { break };
                sse::encode_event(&transmit.frames, &mut out);
                if transmit.end.is_some() {
                    self.done = true;
                    return Some(out.into());
                }
            }
            if !out.is_empty() {
                self.budget = self.budget.saturating_sub(out.len());
                if self.budget == 0 {
                    self.recycle(&shared, &mut out);
                }
                return Some(out.into());
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(self.recycle_at) => {
                    self.recycle(&shared, &mut out);
                    return Some(out.into());
                }
            }
        }
    }

    /// Ends the stream with `detach` 4000: the client reconnects at once.
    fn recycle(&mut self, shared: &Shared, out: &mut Vec<u8>) {
        sse::encode_event(&[recycled()], out);
        shared.lock().detach(now(), self.attachment.id);
        self.done = true;
    }
}
