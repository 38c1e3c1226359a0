//! `POST <mount>/send`: upstream batches for SSE and long-polling
//! (`PROTOCOL.md` §8.4). The reply acknowledges everything received, with
//! the room left in the upstream window (§3.1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use holdfast_protocol::wire::json;
use holdfast_protocol::{Close, CloseCode, Frame, ProtocolError, TransportKind, message_charge};
use http::{HeaderMap, Uri};

use super::body::{BodyError, read_limited, timed_out};
use super::{ConnectQuery, batch_response, reauthorize};
use crate::auth::RequestKind;
use crate::reject::Reject;
use crate::server::ServerState;
use crate::session::now;

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    match receive(&state, &headers, &uri, body).await {
        Ok(response) => response,
        Err(reject) => reject.into_http(),
    }
}

async fn receive(
    state: &ServerState,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Response, Reject> {
    // The origin was checked by the Origin layer, before the body.
    let query = ConnectQuery::read(headers, uri.query(), false)?;
    let key = query
        .key
        .ok_or_else(|| Reject::bad_request("a send request needs the session key"))?;
    let shared = super::find(state, &key).await?;
    if state.auth.is_some() {
        // Before the body is read: a refused send touches nothing.
        let transport = shared.lock().transport().unwrap_or(TransportKind::LongPoll);
        reauthorize(state, &shared, headers, uri, transport, RequestKind::Send).await?;
    }
    let max = state.config.session.max_batch;
    // A client trickling its body must not hold the request (and the
    // connection) forever.
    let timeout = state.config.body_timeout;
    let bytes = match read_limited(headers, body, max, timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooBig(len)) => {
            let error = ProtocolError::BatchTooBig { len, max };
            shared.lock().fail(now(), &error);
            return Err(Reject::from(error));
        }
        Err(BodyError::Unreadable) => {
            return Err(Reject::protocol("the request body could not be read"));
        }
        Err(BodyError::TimedOut) => return Ok(timed_out(timeout)),
    };
    let frames = json::decode_batch(&bytes).map_err(ProtocolError::from)?;
    // A send request names the session: the client got its opening answer.
    shared.client_heard();

    // Answered at once, never held (`PROTOCOL.md` §3.1, §8.4). Messages
    // beyond the upstream window are the client's fault: the core refuses
    // them (`400`, `detach` 1008). The server-wide total is refused for now
    // (`503`, `detach` 4503, the client retries the same messages later;
    // nothing is lost), but the batch's acks are taken: the application may
    // be waiting for them to make room, and so to read.
    let received = {
        let mut core = shared.lock();
        if !shared.admits_buffered(&core, batch_cost(&frames, core.received())) {
            let acks: Vec<Frame> = frames
                .into_iter()
                .filter(|f| matches!(f, Frame::Ack { .. }))
                .collect();
            core.handle_frames(now(), None, acks)?;
            return Err(Reject::Attachment(
                Close::new(CloseCode::OVERLOADED, crate::reject::NOT_KEEPING_UP)
                    .with_retry_after(state.config.retry_after),
            ));
        }
        core.handle_frames(now(), None, frames)?;
        if shared.durable.is_none() {
            return Ok(batch_response(&core.request_reply()));
        }
        core.received()
    };
    {
        // With a store, the reply acknowledges only what the store holds:
        // wait for the session's writer, within a deadline (the client
        // sends the same messages again after `Retry-After`; duplicates
        // are dropped).
        let stored = tokio::time::timeout(STORE_DEADLINE, shared.stored_received(received)).await;
        match stored {
            Ok(true) => {}
            Ok(false) => {
                return Err(Reject::Attachment(Close::new(
                    CloseCode::RECONNECT,
                    "session moved to another node, reconnect",
                )));
            }
            Err(_) => {
                return Err(Reject::Attachment(
                    Close::new(CloseCode::OVERLOADED, "the session store is slow")
                        .with_retry_after(state.config.retry_after),
                ));
            }
        }
    }
    Ok(batch_response(&shared.lock().request_reply()))
}

/// How long a send request waits for the store to hold its messages.
const STORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What the new messages of a batch will be charged once queued: payload
/// plus `MESSAGE_OVERHEAD` each. Messages up to `received` are duplicates
/// the session drops.
fn batch_cost(frames: &[Frame], received: u64) -> usize {
    frames
        .iter()
        .map(|frame| match frame {
            Frame::Message { seq, message } if *seq > received => message_charge(message.len()),
            _ => 0,
        })
        .fold(0, usize::saturating_add)
}
