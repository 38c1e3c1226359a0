//! `POST <mount>/send`: upstream batches for SSE and long-polling
//! (`PROTOCOL.md` §8.4). The reply acknowledges everything received, with
//! the room left in the upstream window (§3.1).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use holdfast_protocol::wire::json;
use holdfast_protocol::{Close, CloseCode, Frame, ProtocolError, TransportKind, message_charge};
use http::{HeaderMap, HeaderValue, Uri, header};

use super::{ConnectQuery, batch_response, reauthorize};
use crate::auth::RequestKind;
use crate::peer::Peer;
use crate::reject::Reject;
use crate::server::ServerState;
use crate::session::now;

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    peer: Peer,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    match receive(&state, peer, &headers, &uri, body).await {
        Ok(response) => response,
        Err(reject) => reject.into_http(),
    }
}

async fn receive(
    state: &ServerState,
    peer: Peer,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Response, Reject> {
    state.check_origin(headers, peer)?;
    let query = ConnectQuery::read(headers, uri.query(), false)?;
    let key = query
        .key
        .ok_or_else(|| Reject::bad_request("a send request needs the session key"))?;
    let shared = state.registry.get(&key).ok_or_else(Reject::session_lost)?;
    if state.auth.is_some() {
        // Before the body is read: a refused send touches nothing.
        let transport = shared.lock().transport().unwrap_or(TransportKind::LongPoll);
        reauthorize(state, &shared, headers, uri, transport, RequestKind::Send).await?;
    }
    let max = state.config.session.max_batch;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_big = |len: usize| {
        let error = ProtocolError::BatchTooBig { len, max };
        shared.lock().fail(now(), &error);
        Reject::from(error)
    };
    if let Some(len) = declared.filter(|len| *len > max) {
        return Err(too_big(len));
    }
    // A client trickling its body must not hold the request (and the
    // connection) forever.
    let timeout = state.config.body_timeout;
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) if is_length_limit(&error) => return Err(too_big(max + 1)),
        Ok(Err(_)) => return Err(Reject::protocol("the request body could not be read")),
        Err(_) => {
            tracing::debug!(?timeout, "send request body too slow");
            // The rest of the body may still trickle in: the connection
            // cannot carry another request, so hyper closes it.
            let mut response = Reject::body_timeout(timeout).into_http();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let frames = json::decode_batch(&bytes).map_err(ProtocolError::from)?;

    // Answered at once, never held (`PROTOCOL.md` §3.1, §8.4). Messages
    // beyond the upstream window are the client's fault: the core refuses
    // them (`400`, `detach` 1008). The server-wide total is refused for now
    // (`503`, `detach` 4503, the client retries the same messages later;
    // nothing is lost), but the batch's acks are taken: the application may
    // be waiting for them to make room, and so to read.
    let mut core = shared.lock();
    if !shared.admits_buffered(&core, batch_cost(&frames, core.received())) {
        let acks: Vec<Frame> = frames
            .into_iter()
            .filter(|f| matches!(f, Frame::Ack { .. }))
            .collect();
        core.handle_frames(now(), None, acks)?;
        return Err(Reject::Attachment(
            Close::new(CloseCode::OVERLOADED, "the application is not keeping up")
                .with_retry_after(state.config.retry_after),
        ));
    }
    core.handle_frames(now(), None, frames)?;
    Ok(batch_response(&core.request_reply()))
}

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

fn is_length_limit(error: &axum::Error) -> bool {
    let source: &(dyn std::error::Error + 'static) = error;
    let mut current = Some(source);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}
