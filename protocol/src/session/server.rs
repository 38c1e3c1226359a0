//! The server's end of a session.
//!
//! Lifecycle (`PROTOCOL.md` §4–§6):
//!
//! ```text
//!            attach                 detach / peer timeout
//!   ┌────────────────────┐  ┌─────────────────────────────────┐
//!   │                    ▼  │                                 ▼
//! (new) ──attach──▶ Attached ◀──attach (resume)── Detached ──resume window──▶ lost
//!                    │   ▲                                     ▲
//!      poll answered │   │ next poll                           │ timeout
//!                    ▼   │                                     │
//!                  BetweenPolls ───────────────────────────────┘
//! ```
//!
//! Independently of presence, the session is `Open` or `Closed`; a closed
//! session stays resumable (a tombstone that replays and repeats its
//! `close`) for the resume window.
//!
//! # Durability gates
//!
//! When a session's state lives in a store (so that another node can
//! continue it), the client must never hear of a message the store does
//! not hold: a downstream message it delivered, or an upstream one it was
//! told the server took, would be lost with the node. A driver with a
//! store calls [`ServerSession::hold_until_confirmed`] right after
//! [`ServerSession::new`]; from then on the core holds back, behind two
//! gates:
//!
//! - **downstream**: a message after
//!   [`confirmed_sent`](ServerSession::confirmed_sent) is never
//!   transmitted (and the `close` that follows the messages waits with
//!   them, and for the messages received to be confirmed: it carries the
//!   final ack); an acknowledgement of it is refused like one of a message
//!   never sent;
//! - **upstream**: no acknowledgement (`ack` frames, the `ack` of a send
//!   reply, the `resumed` greeting) covers a message after
//!   [`confirmed_received`](ServerSession::confirmed_received), the room it
//!   announces counts only the messages up to there (the client counts the
//!   later ones as in flight), and [`poll_message`](ServerSession::poll_message)
//!   does not give such a message to the application.
//!
//! The driver writes [`unconfirmed_sent`](ServerSession::unconfirmed_sent)
//! and [`unconfirmed_received`](ServerSession::unconfirmed_received) to the
//! store, then calls [`confirm_sent`](ServerSession::confirm_sent) and
//! [`confirm_received`](ServerSession::confirm_received), which bump
//! [`output_epoch`](ServerSession::output_epoch) (messages may go out, an
//! ack may be due): it wakes its transports and re-reads `poll_timeout` as
//! after any input. It answers a send request after confirming what the
//! request carried, so that the reply acknowledges it.
//!
//! The ack timer runs only for confirmed messages: an ack whose messages
//! wait for the store gives `poll_timeout` no deadline (a deadline in the
//! past would spin the driver's timer task); once they are confirmed it is
//! due when it would have been (`ack_delay` after the first of them
//! arrived, or at once after `ack_every`), or at once if that time passed.
//!
//! [`ServerSession::restore`] continues a session on another node from
//! what the store holds ([`Restore`]): everything restored counts as
//! confirmed, and the gates are on.
//!
//! Without a store nothing of this runs: the gates stand open (one
//! comparison per message).

use std::collections::VecDeque;
use std::time::Instant;

use super::flow::Grant;
use super::inbound::{Accepted, Inbound};
use super::outbound::Outbound;
use super::{AttachmentId, Initiator, Transmit, TransportKind, due, earliest};
use crate::close::CloseCode;
use crate::config::{SessionConfig, message_charge};
use crate::error::{AttachError, ProtocolError, RestoreError, SendError};
use crate::wire::{Close, Frame, OpenParams, PROTOCOL_VERSION, json};

/// The key and public id of a session, chosen by the server's driver (the
/// core has no random number generator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionIdentity {
    /// The secret session key (≥ 128 random bits).
    pub key: String,
    /// The public session id, for logs.
    pub session_id: String,
}

/// What happened to a session, for the driver to log and act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A transport attached (not reported for each poll of an ongoing
    /// long-poll attachment).
    Attached {
        /// The attachment.
        id: AttachmentId,
        /// Its transport.
        kind: TransportKind,
        /// `false` for the attachment that opened the session.
        resumed: bool,
    },
    /// The session lost its attachment; it lives on for the resume window.
    Detached {
        /// The attachment.
        id: AttachmentId,
        /// Its transport.
        kind: TransportKind,
        /// Why, for logs.
        reason: &'static str,
    },
    /// The session ended.
    Closed {
        /// The code and reason.
        close: Close,
        /// Who ended it.
        initiator: Initiator,
    },
}

/// A session as the store holds it, for [`ServerSession::restore`]: what
/// another node needs to continue it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restore {
    /// The client acknowledged every downstream message up to this
    /// sequence number (as far as the store knows: the client may have
    /// delivered more, and says so with `last` when it attaches).
    pub acked: u64,
    /// The downstream messages not acknowledged, sequence numbers
    /// `acked + 1 ..= acked + outbound.len()`: the replay buffer.
    pub outbound: Vec<crate::wire::Message>,
    /// Highest upstream sequence number received.
    pub received: u64,
    /// The upstream messages the application has not taken (or not
    /// finished with), sequence numbers
    /// `received - inbound.len() + 1 ..= received`: the application gets
    /// them first, in order.
    pub inbound: Vec<crate::wire::Message>,
    /// How the session ended, if it did: the restored session is a
    /// tombstone that replays `outbound` and repeats this close for the
    /// resume window (counted from the restore).
    pub closed: Option<(Close, Initiator)>,
}

/// The server's end of one session. See the [module docs](super) for the
/// calling convention.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    identity: SessionIdentity,
    out: Outbound,
    inb: Inbound,
    /// The upstream window granted to the client (`PROTOCOL.md` §3.1).
    grant: Grant,
    /// Whether `open` was ever queued (the first attachment greets with it).
    opened: bool,
    state: State,
    presence: Presence,
    next_attachment: u64,
    /// Attachments this core ended (replaced, timed out) whose drivers have
    /// not been told yet.
    ended: Vec<(AttachmentId, Close)>,
    /// Last time anything arrived from the client, on any path.
    last_heard: Instant,
    /// A `ping` arrived in a send request: answer in its reply.
    request_pong: bool,
    /// Bumped by every input that may give an attachment something to
    /// write, so a driver can wake its transport only then.
    output_epoch: u64,
    events: VecDeque<ServerEvent>,
}

#[derive(Debug)]
enum State {
    Open,
    Closed {
        close: Close,
        at: Instant,
        initiator: Initiator,
    },
}

#[derive(Debug)]
enum Presence {
    Attached(Attachment),
    /// A long-poll attachment between two polls.
    BetweenPolls {
        since: Instant,
        id: AttachmentId,
    },
    Detached {
        since: Instant,
    },
}

#[derive(Debug)]
struct Attachment {
    id: AttachmentId,
    kind: TransportKind,
    greeting: Option<Frame>,
    pong_due: bool,
    ack_due: bool,
    ping_due: bool,
    /// Streaming transports: when the next `ping` is due.
    next_ping: Option<Instant>,
    /// Long-polling: when a poll with nothing to deliver is answered `[]`.
    hold_until: Option<Instant>,
    hold_expired: bool,
    /// WebSocket with native text granted (`PROTOCOL.md` §2.2.1): texts
    /// of at least this many bytes travel outside any batch. Four bytes,
    /// which fit beside the flags: an attachment stays as small as it was.
    native_text_min: Option<std::num::NonZeroU32>,
}

impl ServerSession {
    /// A new session, not attached yet. `config` should be
    /// [validated](SessionConfig::validate).
    pub fn new(now: Instant, config: SessionConfig, identity: SessionIdentity) -> Self {
        Self {
            out: Outbound::new(config.max_unacked_bytes, config.max_unacked_messages),
            inb: Inbound::new(),
            grant: Grant::new(config.max_inbound_bytes, config.max_message),
            config,
            identity,
            opened: false,
            state: State::Open,
            presence: Presence::Detached { since: now },
            next_attachment: 1,
            ended: Vec::new(),
            last_heard: now,
            request_pong: false,
            output_epoch: 0,
            events: VecDeque::new(),
        }
    }

    /// A session continued from what the store holds: another node opened
    /// it, this one takes it over. Everything restored counts as
    /// confirmed, and the gates are on
    /// ([`hold_until_confirmed`](Self::hold_until_confirmed)).
    ///
    /// The session is detached. Its client holds the key already, so the
    /// first attachment greets with `resumed`, never `open`; an attachment
    /// with `last` anywhere in `acked ..= acked + outbound.len()` replays
    /// from `last + 1`. The upstream window counts the restored inbound
    /// queue as if its messages had just arrived: the room announced is
    /// what they leave. Yet until the application took as much, the core
    /// admits that much beyond the window: the previous node may have
    /// given the client room for messages its application had taken but
    /// not finished, which the store kept. The resume window starts again
    /// at `now`.
    ///
    /// Stored state that cannot be a session (more inbound messages than
    /// were received, sequence numbers beyond
    /// [`MAX_RESTORED_SEQ`](super::MAX_RESTORED_SEQ)) is refused with a
    /// [`RestoreError`], never a panic.
    pub fn restore(
        now: Instant,
        config: SessionConfig,
        identity: SessionIdentity,
        restore: Restore,
    ) -> Result<Self, RestoreError> {
        let Restore {
            acked,
            outbound,
            received,
            inbound,
            closed,
        } = restore;
        let last_sent = acked.saturating_add(u64::try_from(outbound.len()).unwrap_or(u64::MAX));
        for (direction, seq) in [("downstream", last_sent), ("upstream", received)] {
            if seq > super::MAX_RESTORED_SEQ {
                return Err(RestoreError::SeqOutOfRange { direction, seq });
            }
        }
        let queued = inbound.len();
        let inb = Inbound::restored(received, inbound)
            .ok_or(RestoreError::InboundBeyondReceived { received, queued })?;
        let mut out = Outbound::restored(
            config.max_unacked_bytes,
            config.max_unacked_messages,
            acked,
            outbound,
        )
        .ok_or(RestoreError::SeqOutOfRange {
            direction: "downstream",
            seq: last_sent,
        })?;
        out.set_release(out.last_seq());
        let mut grant = Grant::new(config.max_inbound_bytes, config.max_message);
        // As if an ack had announced the room left: the `resumed` greeting
        // will; and an application taking messages before it makes an
        // update due exactly as it would have.
        grant.announce(inb.queued_bytes());
        grant.allow(inb.queued_bytes());
        let state = match closed {
            None => State::Open,
            Some((close, initiator)) => State::Closed {
                close,
                at: now,
                initiator,
            },
        };
        Ok(Self {
            out,
            inb,
            grant,
            config,
            identity,
            opened: true,
            state,
            presence: Presence::Detached { since: now },
            next_attachment: 1,
            ended: Vec::new(),
            last_heard: now,
            request_pong: false,
            output_epoch: 0,
            events: VecDeque::new(),
        })
    }

    // ---- durability gates ------------------------------------------------

    /// Turns the durability gates on: from now on, nothing reaches the
    /// client about a message before the driver confirms it is in the
    /// store. Call it right after [`new`](Self::new); what was sent or
    /// received before counts as confirmed. A second call changes nothing.
    ///
    /// Downstream, a message after [`confirmed_sent`](Self::confirmed_sent)
    /// is never transmitted (the `close` that follows the messages waits
    /// with them, and for every message received to be confirmed, as it
    /// carries the final ack on WebSocket), and an acknowledgement of it is
    /// refused like one of a message never sent. Upstream, no
    /// acknowledgement (`ack` frames, a send reply's `ack`, the `resumed`
    /// greeting) covers a message after
    /// [`confirmed_received`](Self::confirmed_received) — the room it
    /// announces counts only the messages up to there, the client counts
    /// the later ones as in flight — and
    /// [`poll_message`](Self::poll_message) does not return one. The ack
    /// timer runs for confirmed messages only, so an ack waiting for the
    /// store never leaves [`poll_timeout`](Self::poll_timeout) in the past.
    ///
    /// The driver writes [`unconfirmed_sent`](Self::unconfirmed_sent) and
    /// [`unconfirmed_received`](Self::unconfirmed_received) to the store,
    /// then calls [`confirm_sent`](Self::confirm_sent) and
    /// [`confirm_received`](Self::confirm_received); it answers a send
    /// request once what the request carried is confirmed, so that the
    /// reply acknowledges it.
    pub fn hold_until_confirmed(&mut self) {
        if self.holds_until_confirmed() {
            return;
        }
        self.out.set_release(self.out.last_seq());
        self.inb.hold_until_confirmed();
    }

    /// Whether the durability gates are on.
    pub fn holds_until_confirmed(&self) -> bool {
        self.out.release() != u64::MAX
    }

    /// The store holds every downstream message up to `upto` (capped at
    /// [`sent`](Self::sent); an older confirmation changes nothing): they
    /// may go out. Bumps [`output_epoch`](Self::output_epoch) when the gate
    /// moves. Without gates, a no-op.
    pub fn confirm_sent(&mut self, upto: u64) {
        if !self.holds_until_confirmed() {
            return;
        }
        let upto = upto.min(self.out.last_seq());
        if upto > self.out.release() {
            self.out.set_release(upto);
            self.output_epoch += 1;
        }
    }

    /// The store holds every upstream message up to `upto` (capped at
    /// [`received`](Self::received); an older confirmation changes
    /// nothing): they may be acknowledged and given to the application.
    /// Bumps [`output_epoch`](Self::output_epoch) when the gate moves (an
    /// ack may be due: re-read [`poll_timeout`](Self::poll_timeout)).
    /// Without gates, a no-op.
    pub fn confirm_received(&mut self, upto: u64) {
        if self.inb.confirm(upto) {
            self.output_epoch += 1;
        }
    }

    /// Highest downstream sequence number the store holds (as confirmed):
    /// nothing after it went out. Without gates, [`sent`](Self::sent).
    pub fn confirmed_sent(&self) -> u64 {
        self.out.last_seq().min(self.out.release())
    }

    /// Highest upstream sequence number the store holds (as confirmed):
    /// nothing after it was acknowledged or given to the application.
    /// Without gates, [`received`](Self::received).
    pub fn confirmed_received(&self) -> u64 {
        self.inb.confirmed()
    }

    /// The downstream messages after [`confirmed_sent`](Self::confirmed_sent),
    /// with their sequence numbers, oldest first: what the driver writes
    /// to the store next. Empty without gates.
    pub fn unconfirmed_sent(&self) -> impl Iterator<Item = (u64, &crate::wire::Message)> {
        self.out.messages_after(self.confirmed_sent())
    }

    /// The upstream messages after
    /// [`confirmed_received`](Self::confirmed_received), with their
    /// sequence numbers, oldest first: what the driver writes to the store
    /// next. Empty without gates.
    pub fn unconfirmed_received(&self) -> impl Iterator<Item = (u64, &crate::wire::Message)> {
        self.inb.unconfirmed()
    }

    /// Highest downstream sequence number the client acknowledged (in a
    /// frame, or with the `last` of an attachment): the store may drop the
    /// messages up to it.
    pub fn acked(&self) -> u64 {
        self.out.acked()
    }

    // ---- getters -------------------------------------------------------

    /// The session's key and public id.
    pub fn identity(&self) -> &SessionIdentity {
        &self.identity
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The transport currently attached, if any (a long-poll session between
    /// two polls counts as attached).
    pub fn transport(&self) -> Option<TransportKind> {
        match &self.presence {
            Presence::Attached(a) => Some(a.kind),
            Presence::BetweenPolls { .. } => Some(TransportKind::LongPoll),
            Presence::Detached { .. } => None,
        }
    }

    /// Whether the session has ended (it may still linger as a tombstone).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed { .. })
    }

    /// How the session ended, if it did.
    pub fn close_reason(&self) -> Option<&Close> {
        match &self.state {
            State::Closed { close, .. } => Some(close),
            State::Open => None,
        }
    }

    /// Who ended the session, if it ended.
    pub fn initiator(&self) -> Option<Initiator> {
        match &self.state {
            State::Closed { initiator, .. } => Some(*initiator),
            State::Open => None,
        }
    }

    /// Whether the session is over for good and can be forgotten: expired,
    /// or closed longer ago than the resume window.
    pub fn is_finished(&self, now: Instant) -> bool {
        match &self.state {
            State::Open => false,
            State::Closed { at, initiator, .. } => {
                // A closed session stays resumable for the resume window
                // (PROTOCOL.md §5): a client that missed the end resumes and
                // gets the rest, then the same `close`.
                *initiator == Initiator::Expired || now >= *at + self.config.resume_window
            }
        }
    }

    /// Whether a message of `len` bytes can be sent now (it is charged
    /// `len +` [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD)).
    pub fn has_room_for(&self, len: usize) -> bool {
        self.out.has_room_for(len)
    }

    /// What the replay buffer (sent or queued, not acknowledged) is
    /// charged: each message's payload plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD). `max_unacked_bytes`
    /// limits this figure.
    pub fn unacked_bytes(&self) -> usize {
        self.out.charged_bytes()
    }

    /// Messages in the replay buffer.
    pub fn unacked_messages(&self) -> usize {
        self.out.buffered_messages()
    }

    /// What the messages received and not yet taken by the application
    /// are charged: each one's payload plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD). `max_inbound_bytes`
    /// limits this figure.
    pub fn inbound_bytes(&self) -> usize {
        self.inb.queued_bytes()
    }

    /// Highest upstream sequence number received (behind the gates,
    /// perhaps not confirmed yet: see
    /// [`confirmed_received`](Self::confirmed_received)).
    pub fn received(&self) -> u64 {
        self.inb.received()
    }

    /// Changes whenever an input may have given an attachment (current or
    /// just replaced) something to write: wake transports only then.
    pub fn output_epoch(&self) -> u64 {
        self.output_epoch
    }

    /// Highest downstream sequence number sent (assigned; behind the
    /// gates, perhaps not confirmed yet: see
    /// [`confirmed_sent`](Self::confirmed_sent)).
    pub fn sent(&self) -> u64 {
        self.out.last_seq()
    }

    // ---- inputs --------------------------------------------------------

    /// A transport attaches, having delivered everything up to `last`.
    /// Replaces the current attachment. The first attachment greets with
    /// `open`, later ones with `resumed` (except a poll continuing a
    /// long-poll attachment).
    pub fn attach(
        &mut self,
        now: Instant,
        kind: TransportKind,
        last: u64,
    ) -> Result<AttachmentId, AttachError> {
        if self.is_finished(now) {
            return Err(AttachError::SessionLost);
        }
        self.out.ack(last)?;
        self.output_epoch += 1;
        let continuing = kind == TransportKind::LongPoll
            && match &self.presence {
                Presence::BetweenPolls { .. } => true,
                Presence::Attached(a) => a.kind == TransportKind::LongPoll,
                Presence::Detached { .. } => false,
            };
        if let Presence::Attached(old) = &self.presence {
            self.ended.push((
                old.id,
                Close::new(CloseCode::REPLACED, "replaced by a newer attachment"),
            ));
            if !continuing {
                self.events.push_back(ServerEvent::Detached {
                    id: old.id,
                    kind: old.kind,
                    reason: "replaced",
                });
            }
        }
        self.out.rewind();
        let greeting = if !self.opened {
            self.opened = true;
            Some(Frame::Open(self.open_params()))
        } else if continuing {
            None
        } else {
            // `ack` and `room` are filled in when it is written.
            Some(Frame::Resumed {
                ack: 0,
                room: None,
                native_text: false,
            })
        };
        let id = AttachmentId(self.next_attachment);
        self.next_attachment += 1;
        if !continuing {
            self.events.push_back(ServerEvent::Attached {
                id,
                kind,
                resumed: matches!(greeting, Some(Frame::Resumed { .. })),
            });
        }
        self.last_heard = now;
        self.presence = Presence::Attached(Attachment {
            id,
            kind,
            greeting,
            pong_due: false,
            ack_due: false,
            ping_due: false,
            next_ping: kind.is_streaming().then(|| now + self.config.ping_interval),
            hold_until: (kind == TransportKind::LongPoll).then(|| now + self.config.poll_hold),
            hold_expired: false,
            native_text_min: None,
        });
        Ok(id)
    }

    /// Attachment `id` (a WebSocket) carries texts of at least `min` bytes
    /// natively (`PROTOCOL.md` §2.2.1), which acks cannot ride along with;
    /// `Some` grants it, and the attachment's greeting says so. Call it
    /// before the attachment's first transmit.
    pub fn set_native_text(&mut self, id: AttachmentId, min: Option<usize>) {
        if let Presence::Attached(a) = &mut self.presence
            && a.id == id
        {
            // Granted: the greeting, if not written yet, says so.
            if min.is_some()
                && let Some(greeting) = &mut a.greeting
            {
                greeting.grant_native_text();
            }
            // A threshold past u32 is as good as none: no text is that long.
            a.native_text_min = min
                .and_then(|min| u32::try_from(min).ok())
                .and_then(std::num::NonZeroU32::new);
        }
    }

    /// The transport of attachment `id` is gone (socket closed, stream
    /// ended, request finished). A no-op for attachments already ended.
    pub fn detach(&mut self, now: Instant, id: AttachmentId) {
        self.ended.retain(|(e, _)| *e != id);
        let Presence::Attached(a) = &self.presence else {
            return;
        };
        if a.id != id {
            return;
        }
        if a.kind == TransportKind::LongPoll && !self.is_closed() {
            self.presence = Presence::BetweenPolls { since: now, id };
        } else {
            self.events.push_back(ServerEvent::Detached {
                id,
                kind: a.kind,
                reason: "transport closed",
            });
            self.presence = Presence::Detached { since: now };
        }
        self.out.rewind();
    }

    /// Ends the current attachment with `detach` carrying `close` (e.g.
    /// 4000: reconnect now, when the session moves to another node); the
    /// session lives on, detached. [`poll_transmit`](Self::poll_transmit)
    /// gives the attachment its `detach` frame.
    pub fn end_attachment(&mut self, now: Instant, close: Close) {
        match &self.presence {
            Presence::Attached(a) => {
                self.ended.push((a.id, close));
                self.events.push_back(ServerEvent::Detached {
                    id: a.id,
                    kind: a.kind,
                    reason: "ended by the server",
                });
                self.presence = Presence::Detached { since: now };
                self.out.rewind();
                self.output_epoch += 1;
            }
            Presence::BetweenPolls { .. } => {
                self.presence = Presence::Detached { since: now };
            }
            Presence::Detached { .. } => {}
        }
    }

    /// Counts the client as heard at `now` without any frame: for a server
    /// that is itself keeping the client's frames unread (its silence is
    /// then the server's doing, not a sign it went away).
    pub fn presume_heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Frames from the client, arriving on attachment `via` (WebSocket) or
    /// in a send request (`None`). On error, frames before the bad one have
    /// been applied; [`ProtocolError::ends_session`] says whether the
    /// session survived.
    pub fn handle_frames(
        &mut self,
        now: Instant,
        via: Option<AttachmentId>,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), ProtocolError> {
        self.last_heard = now;
        for frame in frames {
            self.handle_frame(now, via, frame)?;
        }
        Ok(())
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        via: Option<AttachmentId>,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        match frame {
            Frame::Message { seq, message } => {
                if message.len() > self.config.max_message {
                    let error = ProtocolError::MessageTooBig {
                        len: message.len(),
                        max: self.config.max_message,
                    };
                    self.fail(now, &error);
                    return Err(error);
                }
                if self.is_closed() {
                    return Ok(()); // the session is over: nobody will read it
                }
                if seq == self.inb.received() + 1 {
                    let charge = message_charge(message.len());
                    if let Err(room) = self.grant.admit(self.inb.queued_bytes(), charge) {
                        return Err(ProtocolError::WindowExceeded { seq, charge, room });
                    }
                }
                if self.inb.accept(now, seq, message)? == Accepted::Duplicate {
                    return Ok(());
                }
            }
            // A `room` from the client means nothing: ignored.
            Frame::Ack { seq, .. } => {
                self.out.ack(seq)?;
            }
            Frame::Ping => match (via, &mut self.presence) {
                (Some(id), Presence::Attached(a)) if a.id == id => {
                    a.pong_due = true;
                    self.output_epoch += 1;
                }
                (Some(_), _) => {} // an attachment already gone: nobody to answer
                (None, _) => self.request_pong = true,
            },
            Frame::Pong => {}
            Frame::Close(close) => self.peer_closed(now, close),
            other @ (Frame::Open(_) | Frame::Resumed { .. } | Frame::Detach(_)) => {
                return Err(ProtocolError::UnexpectedFrame(other.type_name()));
            }
        }
        Ok(())
    }

    /// The client broke a limit that ends the session (a message or wire
    /// unit too big). The driver reports it with the error's close code.
    pub fn fail(&mut self, now: Instant, error: &ProtocolError) {
        if error.ends_session() {
            self.end(
                now,
                Close::new(error.close_code(), error.to_string()),
                Initiator::Local,
            );
        }
    }

    /// Queues a message for the client.
    pub fn send(&mut self, message: crate::wire::Message) -> Result<u64, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if message.len() > self.config.max_message {
            return Err(SendError::TooBig {
                len: message.len(),
                max: self.config.max_message,
            });
        }
        self.output_epoch += 1;
        self.out.push(message)
    }

    /// Ends the session. The `close` frame goes out after the messages
    /// already queued, so the client delivers those first.
    pub fn close(&mut self, now: Instant, close: Close) {
        self.end(now, close, Initiator::Local);
    }

    /// Advances timers: call when [`poll_timeout`](Self::poll_timeout)
    /// passes (earlier calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let before = self.timer_state();
        self.expire(now);
        if self.timer_state() != before {
            self.output_epoch += 1;
        }
    }

    /// What the timers can change, to tell whether they changed anything.
    fn timer_state(&self) -> (bool, bool, bool, usize, bool, bool) {
        let (ack, ping, hold) = match &self.presence {
            Presence::Attached(a) => (a.ack_due, a.ping_due, a.hold_expired),
            _ => (false, false, false),
        };
        let detached = matches!(self.presence, Presence::Detached { .. });
        (
            ack,
            ping,
            hold,
            self.ended.len(),
            detached,
            self.is_closed(),
        )
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        match &mut self.presence {
            Presence::Attached(a) => {
                if a.kind.is_duplex()
                    && !a.ack_due
                    && due(
                        self.inb
                            .ack_deadline(self.config.ack_every, self.config.ack_delay),
                        now,
                    )
                {
                    a.ack_due = true;
                }
                if due(a.next_ping, now) {
                    a.ping_due = true;
                    a.next_ping = Some(now + self.config.ping_interval);
                }
                if due(a.hold_until, now) {
                    a.hold_expired = true;
                    a.hold_until = None;
                }
                if now >= self.last_heard + timeout {
                    let (id, kind) = (a.id, a.kind);
                    self.ended.push((
                        id,
                        Close::new(CloseCode::PEER_TIMEOUT, "heard nothing from the client"),
                    ));
                    self.events.push_back(ServerEvent::Detached {
                        id,
                        kind,
                        reason: "peer timeout",
                    });
                    self.presence = Presence::Detached { since: now };
                    self.out.rewind();
                }
            }
            Presence::BetweenPolls { since, id } => {
                if now >= *since + timeout {
                    self.events.push_back(ServerEvent::Detached {
                        id: *id,
                        kind: TransportKind::LongPoll,
                        reason: "no new poll",
                    });
                    self.presence = Presence::Detached { since: *since };
                }
            }
            Presence::Detached { since } => {
                let closed = matches!(self.state, State::Closed { .. });
                if !closed && now >= *since + self.config.resume_window {
                    self.end(
                        now,
                        Close::new(CloseCode::SESSION_LOST, "resume window expired"),
                        Initiator::Expired,
                    );
                }
            }
        }
    }

    // ---- outputs -------------------------------------------------------

    /// What to write on attachment `id` now. For an attachment this core
    /// ended, its `detach` frame. On long-polling, each transmit answers
    /// the poll and ends it.
    pub fn poll_transmit(&mut self, now: Instant, id: AttachmentId) -> Option<Transmit> {
        if let Some(pos) = self.ended.iter().position(|(e, _)| *e == id) {
            let (_, close) = self.ended.swap_remove(pos);
            return Some(Transmit {
                frames: vec![Frame::Detach(close.clone())],
                end: Some(close),
            });
        }
        let Presence::Attached(a) = &mut self.presence else {
            return None;
        };
        if a.id != id {
            return None;
        }
        let mut frames = Vec::new();
        if let Some(greeting) = a.greeting.take() {
            // The room is what is left when the greeting is written.
            let room = self.grant.announce(self.inb.confirmed_bytes());
            frames.push(match greeting {
                Frame::Resumed { native_text, .. } => Frame::Resumed {
                    ack: self.inb.confirmed(),
                    room: Some(room),
                    native_text,
                },
                other => other,
            });
        }
        if std::mem::take(&mut a.pong_due) {
            frames.push(Frame::Pong);
        }
        if std::mem::take(&mut a.ping_due) {
            frames.push(Frame::Ping);
        }
        // Whoever closed, every message queued before the close goes out
        // ahead of it, and a resume replays the unacknowledged ones
        // (PROTOCOL.md §9): a close never discards messages.
        push_messages(
            &mut self.out,
            self.config.max_message,
            None,
            &mut frames,
            native_text_min(a),
        );
        // Behind the gates, the close also waits for what was received to
        // be confirmed: its ack tells the client what the session took.
        let closing = matches!(self.state, State::Closed { .. })
            && !self.out.has_pending()
            && self.inb.confirmed() == self.inb.received();
        // On WebSocket the close always carries the final ack, even one
        // already sent: it tells the client which of its messages the
        // session took before it ended. Room that came back is announced
        // on every transport.
        // An ack rides along only where it is free: in a JSON batch going
        // out anyway. Native messages are no batch (§2.3): with nothing
        // else to send, the ack waits for its deadline (§3).
        let batch_going = frames
            .iter()
            .any(|f| !super::travels_natively(f, native_text_min(a)));
        if (a.kind.is_duplex()
            && (closing || (self.inb.has_unacked() && (a.ack_due || batch_going))))
            || self.grant.update_due()
        {
            a.ack_due = false;
            frames.push(ack_frame(&mut self.inb, &mut self.grant));
        }
        let mut end = None;
        if let State::Closed { close, .. } = &self.state
            && closing
        {
            frames.push(Frame::Close(close.clone()));
            end = Some(close.clone());
        }
        let kind = a.kind;
        let hold_expired = a.hold_expired;
        if frames.is_empty() && !(kind == TransportKind::LongPoll && hold_expired) {
            return None;
        }
        if end.is_some() {
            self.presence = Presence::Detached { since: now };
        } else if kind == TransportKind::LongPoll {
            self.presence = Presence::BetweenPolls { since: now, id };
        }
        Some(Transmit { frames, end })
    }

    /// The reply to a send request, after its frames were handled: the
    /// acknowledgement of everything received (behind the gates, of
    /// everything confirmed: answer once what the request carried is), a
    /// `pong` if it held a `ping`,
    /// and the `close` frame if the session has ended — whoever closed it,
    /// only once the client acknowledged every message, which must reach
    /// it first (they and the close follow on the attachment, or on a
    /// resume).
    pub fn request_reply(&mut self) -> Vec<Frame> {
        let mut frames = vec![ack_frame(&mut self.inb, &mut self.grant)];
        if std::mem::take(&mut self.request_pong) {
            frames.push(Frame::Pong);
        }
        if let State::Closed { close, .. } = &self.state
            && self.out.buffered_messages() == 0
        {
            frames.push(Frame::Close(close.clone()));
        }
        frames
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let presence = match &self.presence {
            Presence::Attached(a) => earliest([
                (a.kind.is_duplex() && !a.ack_due)
                    .then(|| {
                        self.inb
                            .ack_deadline(self.config.ack_every, self.config.ack_delay)
                    })
                    .flatten(),
                // Already moved one interval on when it fell due, so never in
                // the past: it needs no re-arming when the ping goes out.
                a.next_ping,
                a.hold_until,
                Some(self.last_heard + self.config.timeout),
            ]),
            Presence::BetweenPolls { since, .. } => Some(*since + self.config.timeout),
            Presence::Detached { since } => {
                (!self.is_closed()).then(|| *since + self.config.resume_window)
            }
        };
        let tombstone = match &self.state {
            State::Closed { at, initiator, .. } if *initiator != Initiator::Expired => {
                Some(*at + self.config.resume_window)
            }
            _ => None,
        };
        earliest([presence, tombstone])
    }

    /// The next lifecycle event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The next message from the client, for the application (behind the
    /// gates, only a confirmed one). Room it gives back may make an `ack`
    /// due on the attachment (`PROTOCOL.md` §3.1).
    pub fn poll_message(&mut self) -> Option<crate::wire::Message> {
        let message = self.inb.pop()?;
        self.grant.took(&message);
        if self.grant.taken(self.inb.confirmed_bytes()) {
            self.output_epoch += 1;
        }
        Some(message)
    }

    /// What is left of the upstream window now: `max_inbound_bytes` less
    /// what the messages not yet taken by the application are charged.
    pub fn room(&self) -> usize {
        self.grant.room(self.inb.queued_bytes())
    }

    // ---- internals -----------------------------------------------------

    fn open_params(&self) -> OpenParams {
        OpenParams {
            version: PROTOCOL_VERSION,
            key: self.identity.key.clone(),
            session_id: self.identity.session_id.clone(),
            ping_interval: self.config.ping_interval,
            timeout: self.config.timeout,
            resume_window: self.config.resume_window,
            poll_hold: self.config.poll_hold,
            max_message: self.config.max_message,
            max_batch: self.config.max_batch,
            window: Some(self.grant.size()),
            mux: (self.config.max_shared_sessions > 0).then_some(self.config.max_shared_sessions),
            // The WebSocket transport grants it, on its own attachments.
            native_text: false,
        }
    }

    /// The client's `close`: it ends the session, or answers ours.
    ///
    /// The reason is cut to what a WebSocket close frame can carry: the
    /// client chose it, and a closed session keeps it for the resume window.
    fn peer_closed(&mut self, now: Instant, mut close: Close) {
        close.reason = crate::wire::truncate_reason(close.reason);
        self.end(now, close, Initiator::Peer);
    }

    fn end(&mut self, now: Instant, close: Close, initiator: Initiator) {
        if self.is_closed() {
            return;
        }
        self.output_epoch += 1;
        self.events.push_back(ServerEvent::Closed {
            close: close.clone(),
            initiator,
        });
        self.state = State::Closed {
            close,
            at: now,
            initiator,
        };
    }
}

/// An acknowledgement of everything received (and confirmed), with the
/// room left in the upstream window after it, recorded as sent.
fn ack_frame(inb: &mut Inbound, grant: &mut Grant) -> Frame {
    Frame::Ack {
        seq: inb.take_ack(),
        room: Some(grant.announce(inb.confirmed_bytes())),
    }
}

/// The native-text threshold of an attachment, as the session's helpers
/// take it.
fn native_text_min(a: &Attachment) -> Option<usize> {
    a.native_text_min.map(|min| min.get() as usize)
}

/// Room kept in every batch for the control frames that may follow the
/// messages (an `ack`, a `close`).
const TRAILER_ROOM: usize = 192;

/// Moves queued messages into `frames`, so that the encoded batch stays
/// within `target` bytes when it holds more than one message (a single
/// larger message travels alone; `PROTOCOL.md` §2.3), and the messages'
/// charges within `window` (the client's upstream flow control,
/// `PROTOCOL.md` §3.1; `None`: no limit). Texts that travel natively
/// (`native_text_min`, §2.2.1) count their raw size: no JSON escaping to
/// measure, and a transmission stays bounded all the same.
pub(super) fn push_messages(
    out: &mut Outbound,
    target: usize,
    mut window: Option<usize>,
    frames: &mut Vec<Frame>,
    native_text_min: Option<usize>,
) {
    // The brackets, the frames already in the batch and their commas.
    let used: usize = 2
        + TRAILER_ROOM
        + frames
            .iter()
            .map(|f| json::encoded_len_hint(f) + 1)
            .sum::<usize>();
    let mut budget = target.saturating_sub(used);
    let mut any = false;
    // The durability gate (`u64::MAX` without a store).
    let release = out.release();
    while let Some((seq, message)) = out.peek() {
        if seq > release {
            break;
        }
        let frame = Frame::Message {
            seq,
            message: message.clone(),
        };
        let len = if super::travels_natively(&frame, native_text_min) {
            crate::wire::binary::BINARY_HEADER_LEN + message.len()
        } else {
            json::encoded_len_hint(&frame) + 1
        };
        if any && len > budget {
            break;
        }
        let charge = message_charge(message.len());
        if let Some(window) = &mut window {
            if charge > *window {
                break;
            }
            *window -= charge;
        }
        budget = budget.saturating_sub(len);
        frames.push(frame);
        out.advance();
        any = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Message;

    #[test]
    fn a_client_close_reason_is_kept_cut_to_a_websocket_reason() {
        let now = Instant::now();
        let identity = SessionIdentity {
            key: "k".into(),
            session_id: "s".into(),
        };
        let mut server = ServerSession::new(now, SessionConfig::default(), identity);
        let long = "é".repeat(150_000); // 300 KB, two bytes a character
        let close = Frame::close(CloseCode::NORMAL, long);
        assert_eq!(server.handle_frames(now, None, [close]), Ok(()));
        let kept = server.close_reason().map(|c| c.reason.len());
        assert_eq!(
            kept,
            Some(122),
            "cut on a character boundary under 123 bytes"
        );
    }

    #[test]
    fn the_answer_to_a_client_close_acknowledges_what_came_before_it() {
        let now = Instant::now();
        let identity = SessionIdentity {
            key: "k".into(),
            session_id: "s".into(),
        };
        let mut server = ServerSession::new(now, SessionConfig::default(), identity);
        let id = server
            .attach(now, TransportKind::WebSocket, 0)
            .unwrap_or(AttachmentId(0));
        let _greeting = server.poll_transmit(now, id);
        let frames = vec![
            Frame::Message {
                seq: 1,
                message: Message::text("last words"),
            },
            Frame::close(CloseCode::NORMAL, "bye"),
        ];
        assert_eq!(server.handle_frames(now, Some(id), frames), Ok(()));
        let answer = server.poll_transmit(now, id).map(|t| t.frames);
        assert_eq!(
            answer,
            Some(vec![
                Frame::Ack {
                    seq: 1,
                    room: Some((SessionConfig::default().max_inbound_bytes - 138) as u64)
                },
                Frame::close(CloseCode::NORMAL, "bye")
            ])
        );
    }

    #[test]
    fn a_resume_after_a_client_close_replays_the_unacked_messages_then_the_close() {
        let now = Instant::now();
        // Nothing waits for the application: the whole window is room.
        let room = Some(SessionConfig::default().max_inbound_bytes as u64);
        let identity = SessionIdentity {
            key: "k".into(),
            session_id: "s".into(),
        };
        let mut server = ServerSession::new(now, SessionConfig::default(), identity);
        let ws = server
            .attach(now, TransportKind::WebSocket, 0)
            .unwrap_or(AttachmentId(0));
        let _greeting = server.poll_transmit(now, ws);
        for text in ["a", "b"] {
            assert!(server.send(Message::text(text)).is_ok());
        }
        let _sent = server.poll_transmit(now, ws);
        let bye = Frame::close(CloseCode::NORMAL, "bye");
        assert_eq!(server.handle_frames(now, Some(ws), [bye.clone()]), Ok(()));
        assert_eq!(
            server.poll_transmit(now, ws).map(|t| t.frames),
            Some(vec![Frame::Ack { seq: 0, room }, bye.clone()]),
            "the answer: the ack, then the close"
        );
        let poll = server
            .attach(now, TransportKind::LongPoll, 1)
            .unwrap_or(AttachmentId(0));
        assert_eq!(
            server.poll_transmit(now, poll).map(|t| t.frames),
            Some(vec![
                Frame::Resumed {
                    ack: 0,
                    room,
                    native_text: false
                },
                Frame::Message {
                    seq: 2,
                    message: Message::text("b"),
                },
                bye,
            ]),
            "a resume gets what was not acknowledged, then the same close"
        );
    }
}
