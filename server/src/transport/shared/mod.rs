//! Shared requests (`PROTOCOL.md` §11): `POST <mount>/sse` and
//! `POST <mount>/poll` carry the downstreams of several sessions — one per
//! browser tab — on one request, so that tabs on a fallback transport do
//! not take all of a browser's six HTTP/1.1 connections.
//!
//! Each session is taken exactly as its own `GET` would take it
//! ([`prepare_session`], [`attach`]): authentication, session limits,
//! greeting, replay, its own end. The request only multiplexes: every
//! frame a session's own request would carry goes out as `[tag, batch]`.

pub(crate) mod poll;
mod request;
pub(crate) mod sse;

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use holdfast_protocol::wire::json;
use holdfast_protocol::{CloseCode, Frame, TransportKind};
use http::{HeaderMap, Uri};
use tokio::sync::futures::Notified;

use super::{ConnectQuery, WeakAttachment, attach, key, prepare_session};
use crate::peer::Peer;
use crate::server::ServerState;
use crate::session::Shared;

/// A session a shared request carries.
struct Member {
    tag: u32,
    /// Held weakly and detached when dropped: the request ending, however
    /// it ends, ends the member's attachment.
    attachment: WeakAttachment,
    /// Its part of the request is over (its end was written, or the
    /// session is gone); dropped at the next opportunity.
    left: bool,
}

/// Each entry of a request, taken on its own.
enum Carried {
    Attached(Member),
    /// The refusal its own request would have got, as its tagged frames.
    Refused {
        tag: u32,
        frame: Frame,
    },
}

/// Reads a shared request and takes each session it names on transport
/// `kind`: the members to carry, and the refusals of the sessions that
/// could not be, as the first pairs of the answer — or the refusal of the
/// whole request ([`request::read`]).
async fn accept(
    state: &Arc<ServerState>,
    peer: Peer,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
    kind: TransportKind,
) -> Result<(Vec<Member>, SharedBatch), Response> {
    let entries = request::read(state, headers, uri, body).await?;
    Ok(split(take(state, headers, uri, peer, kind, entries).await))
}

/// Opens or resumes each session the request names, in order, as its own
/// request on transport `kind` would: the authentication hook for each
/// (`Open` or `Resume`), the session limits and the client address's open
/// rate for each new one. A refusal is that session's alone.
async fn take(
    state: &Arc<ServerState>,
    headers: &HeaderMap,
    uri: &Uri,
    peer: Peer,
    kind: TransportKind,
    entries: Vec<request::Entry>,
) -> Vec<Carried> {
    let mut carried = Vec::with_capacity(entries.len());
    for entry in entries {
        let tag = entry.tag;
        let taken = if entry.key.as_deref() == Some("") {
            Err(key::empty_key())
        } else {
            let query = ConnectQuery {
                key: entry.key,
                last: entry.last,
                probe: false,
                report: entry.report,
            };
            match prepare_session(state, headers.clone(), uri.clone(), peer, kind, query).await {
                Ok(prepared) => attach(state, prepared, kind).await,
                Err(reject) => Err(reject),
            }
        };
        carried.push(match taken {
            Ok((shared, id)) => Carried::Attached(Member {
                tag,
                attachment: WeakAttachment::new(&shared, id),
                left: false,
            }),
            Err(reject) => {
                crate::metrics::rejected(&reject);
                tracing::debug!(
                    tag,
                    code = reject.close().code.0,
                    "a shared request's session refused"
                );
                Carried::Refused {
                    tag,
                    frame: reject.frame(),
                }
            }
        });
    }
    carried
}

/// Splits what [`take`] returned: the members, and the refusals as the
/// first pairs of the answer.
fn split(carried: Vec<Carried>) -> (Vec<Member>, SharedBatch) {
    let mut members = Vec::with_capacity(carried.len());
    let mut refusals = SharedBatch::new();
    for c in carried {
        match c {
            Carried::Attached(member) => members.push(member),
            Carried::Refused { tag, frame } => refusals.push(tag, &[frame]),
        }
    }
    (members, refusals)
}

/// What a member whose session is over for good without a last frame for
/// it (forgotten while carried) gets: reconnect now. Its resume then gets
/// what any request naming it would (`close` 4410). Its own stream would
/// have ended without a word, which a client also answers by resuming;
/// a shared request goes on for the others and must say so.
fn gone() -> Frame {
    Frame::detach(CloseCode::RECONNECT, "session gone, reconnect")
}

/// The members' sessions, for one look at them (`None`: forgotten). Held
/// only while the request is being served, never while its body is parked.
fn upgrade(members: &[Member]) -> Vec<Option<Arc<Shared>>> {
    members
        .iter()
        .map(|m| m.attachment.shared.upgrade())
        .collect()
}

/// One wait per live session for its next output, registered now: enable
/// them before looking at the sessions, and no output is missed. Await
/// them with `select_all`; empty when no session is live.
fn wake_on_output(live: &[Option<Arc<Shared>>]) -> Vec<Pin<Box<Notified<'_>>>> {
    let mut waits: Vec<Pin<Box<Notified<'_>>>> = live
        .iter()
        .flatten()
        .map(|shared| Box::pin(shared.transmit.notified()))
        .collect();
    for wait in &mut waits {
        wait.as_mut().enable();
    }
    waits
}

/// A shared batch (`PROTOCOL.md` §11.2) being written: `[[tag,batch],…]`.
struct SharedBatch {
    bytes: Vec<u8>,
    pairs: usize,
}

impl SharedBatch {
    fn new() -> Self {
        Self {
            bytes: vec![b'['],
            pairs: 0,
        }
    }

    /// Appends the pair `[tag, frames]`.
    fn push(&mut self, tag: u32, frames: &[Frame]) {
        if self.pairs > 0 {
            self.bytes.push(b',');
        }
        // Writing to a Vec cannot fail.
        let _ = write!(self.bytes, "[{tag},");
        json::encode_batch(frames, &mut self.bytes);
        self.bytes.push(b']');
        self.pairs += 1;
    }

    fn is_empty(&self) -> bool {
        self.pairs == 0
    }

    /// Bytes written so far.
    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The JSON text.
    fn finish(mut self) -> Vec<u8> {
        self.bytes.push(b']');
        self.bytes
    }

    /// Appends it as one event (`data:` on one line, no `id:`: its
    /// messages belong to several sessions).
    fn write_event(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.finish());
        out.extend_from_slice(b"\n\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_shared_batches() {
        let mut batch = SharedBatch::new();
        assert!(batch.is_empty());
        batch.push(7, &[Frame::Ping]);
        batch.push(0, &[]);
        let mut out = Vec::new();
        batch.write_event(&mut out);
        assert_eq!(out, b"data: [[7,[{\"t\":\"ping\"}]],[0,[]]]\n\n");
        assert_eq!(SharedBatch::new().finish(), b"[]");
    }
}
