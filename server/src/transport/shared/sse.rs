//! `POST <mount>/sse`: one event stream carrying several sessions
//! (`PROTOCOL.md` §11.2). Same headers, padding and recycling as a
//! session's own stream ([`crate::transport::sse`]); every event's `data:`
//! is a shared batch.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use holdfast_protocol::TransportKind;
use holdfast_protocol::wire::sse;
use http::{HeaderMap, Uri};
use tokio::time::Instant;

use super::{Member, SharedBatch, accept, gone, upgrade, wake_on_output};
use crate::peer::Peer;
use crate::server::ServerState;
use crate::session::{Shared, now};
use crate::transport::sse::{event_stream, recycled};

pub(crate) async fn handle(
    State(state): State<Arc<ServerState>>,
    peer: Peer,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    let (members, refusals) =
        match accept(&state, peer, &headers, &uri, body, TransportKind::Sse).await {
            Ok(accepted) => accepted,
            Err(refusal) => return refusal,
        };
    let config = &state.config;
    let mut prelude = Vec::new();
    if config.sse_padding > 0 {
        sse::encode_padding(config.sse_padding, &mut prelude);
    }
    let feed = SharedFeed {
        members,
        prelude,
        refusals: Some(refusals),
        budget: config.sse_max_bytes,
        max_event: config.session.max_message,
        recycle_at: Instant::now() + config.sse_max_age,
        done: false,
    };
    let body = futures_util::stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), feed))
    });
    event_stream(Body::from_stream(body))
}

/// The stream of one shared request, chunk by chunk. Like a session's own
/// stream it holds its sessions weakly (see [`crate::transport::sse`]):
/// between chunks it keeps no session alive.
struct SharedFeed {
    members: Vec<Member>,
    /// Written at the start of the next chunk: the padding.
    prelude: Vec<u8>,
    /// The refusals of the sessions that could not be carried: the first
    /// pairs of the first event.
    refusals: Option<SharedBatch>,
    /// Bytes left before the stream is recycled.
    budget: usize,
    /// An event is cut once it holds this many bytes: `max_msg`, the
    /// size at which a session's own batches are cut.
    max_event: usize,
    recycle_at: Instant,
    done: bool,
}

impl SharedFeed {
    /// The next chunk of the body: every event ready now. `None` once the
    /// stream has ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = std::mem::take(&mut self.prelude);
        loop {
            let live = upgrade(&self.members);
            // Registered before looking, so that no output is missed.
            let waits = wake_on_output(&live);
            // Stop taking events once the budget is spent: what is left
            // waits for the next stream (PROTOCOL.md §6, SSE recycling).
            while out.len() < self.budget {
                let first = self.refusals.take();
                if !self.round(&live, first, &mut out) {
                    break;
                }
            }
            self.members.retain(|m| !m.left);
            if !out.is_empty() {
                self.budget = self.budget.saturating_sub(out.len());
                if self.members.is_empty() {
                    self.done = true;
                } else if self.budget == 0 {
                    self.recycle(&mut out);
                }
                return Some(out.into());
            }
            if self.members.is_empty() || waits.is_empty() {
                // Nobody left to carry (every member ended in an earlier
                // chunk).
                self.done = true;
                return None;
            }
            tokio::select! {
                _ = futures_util::future::select_all(waits) => {}
                () = tokio::time::sleep_until(self.recycle_at) => {
                    self.recycle(&mut out);
                    return Some(out.into());
                }
            }
        }
    }

    /// Takes what each member has ready now, once each (one batch: a
    /// member with more waits for the next round, so that none holds up
    /// the others), as events appended to `out` — starting with `first`'s
    /// pairs, and a new event whenever one reaches `max_event` bytes, so
    /// that an event is never much larger than one session's own. Members
    /// whose part is over are marked as having left. Whether anything
    /// was written.
    fn round(
        &mut self,
        live: &[Option<Arc<Shared>>],
        first: Option<SharedBatch>,
        out: &mut Vec<u8>,
    ) -> bool {
        let now = now();
        let mut batch = first.unwrap_or_else(SharedBatch::new);
        let mut wrote = false;
        for (member, shared) in self.members.iter_mut().zip(live) {
            if member.left {
                continue;
            }
            let frames = match shared {
                // Forgotten while its part of the body was parked.
                None => Some((vec![gone()], true)),
                Some(shared) => {
                    let mut core = shared.lock();
                    match core.poll_transmit(now, member.attachment.id) {
                        // Its detach or close ends its part (§11.2).
                        Some(transmit) => Some((transmit.frames, transmit.end.is_some())),
                        None if core.is_finished(now) => Some((vec![gone()], true)),
                        None => None,
                    }
                }
            };
            let Some((frames, end)) = frames else {
                continue;
            };
            batch.push(member.tag, &frames);
            member.left = end;
            if batch.len() >= self.max_event {
                std::mem::replace(&mut batch, SharedBatch::new()).write_event(out);
                wrote = true;
            }
        }
        if !batch.is_empty() {
            batch.write_event(out);
            wrote = true;
        }
        wrote
    }

    /// Ends the stream: every member still carried gets `detach` 4000 and
    /// is detached (its client resumes at once).
    fn recycle(&mut self, out: &mut Vec<u8>) {
        let mut batch = SharedBatch::new();
        for member in self.members.drain(..) {
            if !member.left {
                batch.push(member.tag, &[recycled()]);
            }
            // Dropping the member detaches it.
        }
        if !batch.is_empty() {
            batch.write_event(out);
        }
        self.done = true;
    }
}
