//! `POST <mount>/poll`: one poll carrying several sessions (`PROTOCOL.md`
//! §11.2), answered with a shared batch as soon as any of them has
//! something to deliver, or `[]` after the poll hold.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use holdfast_protocol::TransportKind;
use http::{HeaderMap, Uri};

use super::{Member, SharedBatch, accept, gone, upgrade, wake_on_output};
use crate::peer::Peer;
use crate::server::ServerState;
use crate::session::{Shared, now};
use crate::transport::json_response;

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    peer: Peer,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    // Every member is detached when this future ends — answered, or
    // dropped because the client hung up — as a single poll is. Boxed, and
    // the request's parts dropped, so that the held poll keeps only what
    // waiting needs (see the single poll).
    let accepted = Box::pin(accept(
        &state,
        peer,
        &headers,
        &uri,
        body,
        TransportKind::LongPoll,
    ))
    .await;
    drop((state, headers, uri));
    let (mut members, mut batch) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal,
    };
    loop {
        let live = upgrade(&members);
        // Registered before looking, so that no output is missed.
        let waits = wake_on_output(&live);
        let answered = collect(&mut members, &live, &mut batch) || !batch.is_empty();
        if answered || waits.is_empty() {
            return json_response(batch.finish());
        }
        futures_util::future::select_all(waits).await;
    }
}

/// Takes, without waiting, what each member has now into `batch`. Whether
/// the poll is to be answered: some member had something — output, its
/// end, or its poll hold over (an empty answer, which names no session).
fn collect(members: &mut [Member], live: &[Option<Arc<Shared>>], batch: &mut SharedBatch) -> bool {
    let now = now();
    let mut answered = false;
    for (member, shared) in members.iter_mut().zip(live) {
        if member.left {
            continue;
        }
        let Some(shared) = shared else {
            batch.push(member.tag, &[gone()]);
            member.left = true;
            answered = true;
            continue;
        };
        let mut core = shared.lock();
        match core.poll_transmit(now, member.attachment.id) {
            Some(transmit) => {
                // The core ended this poll attachment with it.
                member.left = true;
                answered = true;
                if !transmit.frames.is_empty() {
                    batch.push(member.tag, &transmit.frames);
                }
            }
            None if core.is_finished(now) => {
                batch.push(member.tag, &[gone()]);
                member.left = true;
                answered = true;
            }
            None => {}
        }
    }
    answered
}
