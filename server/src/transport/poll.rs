//! `GET <mount>/poll`: one downstream batch per request (`PROTOCOL.md`
//! §8.3), answered as soon as there is something to deliver, or `[]` after
//! the poll hold.

use std::pin::pin;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use holdfast_protocol::{AttachmentId, TransportKind};
use http::{HeaderMap, Uri};

use super::{DetachOnDrop, attach, batch_response, prepare};
use crate::peer::Peer;
use crate::server::ServerState;
use crate::session::{Shared, now};
use tracing::Instrument;

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    peer: Peer,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    // Boxed, and freed before the wait: opening or resuming a session
    // (authentication hook, store) needs far more future state than
    // waiting does, and inline it would stay allocated for the whole hold
    // of every held poll (about 3 KiB each).
    let attached = Box::pin(async {
        let prepared = prepare(&state, headers, uri, peer, TransportKind::LongPoll, None).await?;
        attach(&state, prepared, TransportKind::LongPoll).await
    })
    .await;
    drop(state);
    let (shared, id) = match attached {
        Ok(attached) => attached,
        Err(reject) => return reject.into_http(),
    };
    let span = shared.attachment_span(TransportKind::LongPoll);
    answer(shared, id).instrument(span).await
}

/// Answers the poll once the session has something to deliver (or the
/// hold is over).
async fn answer(shared: Arc<Shared>, id: AttachmentId) -> Response {
    // If the client hangs up, this future is dropped and the poll ends.
    let _detach = DetachOnDrop {
        shared: shared.clone(),
        id,
    };
    loop {
        let notified = shared.transmit.notified();
        let mut notified = pin!(notified);
        notified.as_mut().enable();
        let transmit = shared.lock().poll_transmit(now(), id);
        if let Some(transmit) = transmit {
            return batch_response(&transmit.frames);
        }
        notified.await;
    }
}
