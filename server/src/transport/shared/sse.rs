//! `POST <mount>/sse`: one event stream carrying several sessions
//! (`PROTOCOL.md` §11.2). Same headers, padding and recycling as a
//! session's own stream ([`crate::transport::sse`]); every event's `data:`
//! is a shared batch.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use holdfast_protocol::TransportKind;
use holdfast_protocol::wire::sse;
use http::{HeaderMap, Uri};
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::{Member, SharedBatch, gone, request, split, take};
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
    let entries = match request::read(&state, peer, &headers, &uri, body).await {
        Ok(entries) => entries,
        Err(refusal) => return refusal,
    };
    let carried = take(&state, &headers, &uri, peer, TransportKind::Sse, entries).await;
    let (members, refusals) = split(carried);
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
        recycle_at: Instant::now() + config.sse_max_age,
        start: 0,
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
    recycle_at: Instant,
    /// Where the next round starts, so that no member always comes last
    /// when the budget runs out.
    start: usize,
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
            let live: Vec<Option<Arc<Shared>>> = self
                .members
                .iter()
                .map(|m| m.attachment.shared.upgrade())
                .collect();
            // Registered before looking, so that no output is missed.
            let mut waits: Vec<Pin<Box<Notified<'_>>>> = live
                .iter()
                .flatten()
                .map(|shared| Box::pin(shared.transmit.notified()))
                .collect();
            for wait in &mut waits {
                wait.as_mut().enable();
            }
            // Stop taking events once the budget is spent: what is left
            // waits for the next stream (PROTOCOL.md §6, SSE recycling).
            while out.len() < self.budget {
                let mut batch = self.refusals.take().unwrap_or_else(SharedBatch::new);
                self.round(&live, &mut batch);
                if batch.is_empty() {
                    break;
                }
                batch.write_event(&mut out);
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

    /// Takes what each member has ready now, once each, into `batch`.
    /// Members whose part is over are marked as having left.
    fn round(&mut self, live: &[Option<Arc<Shared>>], batch: &mut SharedBatch) {
        let n = self.members.len();
        if n == 0 {
            return;
        }
        let now = now();
        for k in 0..n {
            let i = (self.start + k) % n;
            let member = &mut self.members[i];
            if member.left {
                continue;
            }
            let Some(shared) = &live[i] else {
                // Forgotten while its part of the body was parked.
                batch.push(member.tag, &[gone()]);
                member.left = true;
                continue;
            };
            let transmit = {
                let mut core = shared.lock();
                let transmit = core.poll_transmit(now, member.attachment.id);
                if transmit.is_none() && core.is_finished(now) {
                    batch.push(member.tag, &[gone()]);
                    member.left = true;
                    continue;
                }
                transmit
            };
            if let Some(transmit) = transmit {
                batch.push(member.tag, &transmit.frames);
                if transmit.end.is_some() {
                    // Its detach or close ends its part (§11.2).
                    member.left = true;
                }
            }
        }
        self.start = (self.start + 1) % n;
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
