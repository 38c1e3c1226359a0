//! The sending half of a session: sequence numbers, the replay buffer and
//! the transmit cursor.
//!
//! ```text
//!      acked          cursor                 next_seq - 1
//!   ─────┤───────────────┤─────────────────────────┤
//!        │ sent, unacked │ queued, not yet sent     │
//!        └──────────── replay buffer ──────────────┘
//! ```
//!
//! Messages leave the buffer only when acknowledged; a new attachment
//! rewinds the cursor to `acked`, so anything unacknowledged is sent again.
//!
//! With a store (the server's durability gate), only messages up to
//! `release` may be transmitted or acknowledged: the ones after it are not
//! in the store yet. [`ack`](Outbound::ack) refuses past it; the transmit
//! loop (`push_messages`) stops at it, reading it once per batch. Without
//! a store, `release` is `u64::MAX`, and the gate costs one comparison per
//! message.

use std::collections::VecDeque;

use crate::config::message_charge;
use crate::error::{ProtocolError, SendError};
use crate::wire::Message;

#[derive(Debug)]
pub(crate) struct Outbound {
    /// Sequence number the next message will get.
    next_seq: u64,
    /// Highest sequence number the peer acknowledged.
    acked: u64,
    /// Highest sequence number handed out for transmission on the current
    /// path.
    cursor: u64,
    /// What the messages in `(acked, cursor]` (sent on the current path,
    /// not acknowledged) are charged: the upstream window counts these.
    in_flight: usize,
    /// Unacknowledged messages; `buffer[i]` has seq `acked + 1 + i`.
    buffer: VecDeque<Message>,
    /// Payload bytes in `buffer`.
    payload_bytes: usize,
    /// What `buffer` is charged: payloads plus the per-message overhead.
    /// `max_bytes` limits this.
    charged_bytes: usize,
    max_bytes: usize,
    max_messages: usize,
    /// Highest sequence number that may be transmitted (and so
    /// acknowledged): `u64::MAX` unless a durability gate holds messages
    /// back.
    release: u64,
}

impl Outbound {
    pub(crate) fn new(max_bytes: usize, max_messages: usize) -> Self {
        Self {
            next_seq: 1,
            acked: 0,
            cursor: 0,
            in_flight: 0,
            buffer: VecDeque::new(),
            payload_bytes: 0,
            charged_bytes: 0,
            max_bytes,
            max_messages,
            release: u64::MAX,
        }
    }

    /// A sending half continued from stored state: `acked` acknowledged,
    /// `buffer` holding sequence numbers `acked + 1 ..`, nothing
    /// transmitted on the current path. The limits are not checked: the
    /// messages were accepted once (under the limits of the node that
    /// took them), and a new `push` waits for room as usual. `None` if the
    /// sequence numbers would overflow.
    pub(crate) fn restored(
        max_bytes: usize,
        max_messages: usize,
        acked: u64,
        buffer: Vec<Message>,
    ) -> Option<Self> {
        let last = acked.checked_add(u64::try_from(buffer.len()).ok()?)?;
        let next_seq = last.checked_add(1)?;
        let payload_bytes = buffer.iter().map(Message::len).sum();
        let charged_bytes = buffer.iter().map(|m| message_charge(m.len())).sum();
        Some(Self {
            next_seq,
            acked,
            cursor: acked,
            in_flight: 0,
            buffer: buffer.into(),
            payload_bytes,
            charged_bytes,
            max_bytes,
            max_messages,
            release: u64::MAX,
        })
    }

    /// The durability gate: `u64::MAX` without one.
    pub(crate) fn release(&self) -> u64 {
        self.release
    }

    /// Sets the durability gate: only messages up to `release` may be
    /// transmitted or acknowledged.
    pub(crate) fn set_release(&mut self, release: u64) {
        self.release = release;
    }

    /// The messages from `after + 1` on, with their sequence numbers
    /// (`after` at least `acked`).
    pub(crate) fn messages_after(&self, after: u64) -> impl Iterator<Item = (u64, &Message)> {
        let skip = usize::try_from(after.saturating_sub(self.acked)).unwrap_or(usize::MAX);
        let first = self.acked.max(after) + 1;
        self.buffer
            .iter()
            .skip(skip)
            .zip(first..)
            .map(|(m, seq)| (seq, m))
    }

    /// Queues a message, giving it the next sequence number.
    pub(crate) fn push(&mut self, message: Message) -> Result<u64, SendError> {
        if !self.has_room_for(message.len()) {
            return Err(SendError::Full);
        }
        self.payload_bytes += message.len();
        self.charged_bytes += message_charge(message.len());
        self.buffer.push_back(message);
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Whether a message of `len` bytes fits now: within both limits,
    /// counting its payload plus the per-message overhead, or into an empty
    /// buffer (so a peer's `max_message` above these limits can never wedge
    /// the sender; a validated server config never needs this).
    pub(crate) fn has_room_for(&self, len: usize) -> bool {
        self.buffer.is_empty()
            || (self.buffer.len() < self.max_messages
                && self.charged_bytes + message_charge(len) <= self.max_bytes)
    }

    /// Applies a cumulative acknowledgement; returns how many messages it
    /// freed.
    pub(crate) fn ack(&mut self, ack: u64) -> Result<usize, ProtocolError> {
        // Past the gate, nothing was transmitted: an acknowledgement of it
        // is as false as one of a message never sent.
        let sent = self.last_seq().min(self.release);
        if ack > sent {
            return Err(ProtocolError::AckBeyondSent { ack, sent });
        }
        if ack <= self.acked {
            return Ok(0);
        }
        let freed = (ack - self.acked) as usize;
        let sent = self.cursor.saturating_sub(self.acked) as usize;
        for (i, message) in self.buffer.drain(..freed).enumerate() {
            self.payload_bytes -= message.len();
            self.charged_bytes -= message_charge(message.len());
            if i < sent {
                self.in_flight -= message_charge(message.len());
            }
        }
        super::shrink_spare(&mut self.buffer);
        self.acked = ack;
        self.cursor = self.cursor.max(ack);
        Ok(freed)
    }

    /// Sends everything unacknowledged again, from the oldest.
    pub(crate) fn rewind(&mut self) {
        self.cursor = self.acked;
        self.in_flight = 0;
    }

    /// The next message to transmit, if any.
    /// The next message to transmit, if any, gate or not: the caller
    /// stops at [`release`](Self::release).
    #[inline]
    pub(crate) fn peek(&self) -> Option<(u64, &Message)> {
        let index = usize::try_from(self.cursor - self.acked).ok()?;
        self.buffer.get(index).map(|m| (self.cursor + 1, m))
    }

    /// Marks the message returned by [`peek`](Self::peek) as transmitted.
    #[inline]
    pub(crate) fn advance(&mut self) {
        if let Some((_, message)) = self.peek() {
            self.in_flight += message_charge(message.len());
        }
        self.cursor += 1;
    }

    /// What the messages sent on the current path and not acknowledged
    /// are charged.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// What the messages an acknowledgement of `ack` would free are
    /// charged.
    pub(crate) fn charge_through(&self, ack: u64) -> usize {
        let count = usize::try_from(ack.saturating_sub(self.acked)).unwrap_or(usize::MAX);
        self.buffer
            .iter()
            .take(count)
            .map(|m| message_charge(m.len()))
            .fold(0, usize::saturating_add)
    }

    /// Whether messages are waiting for transmission.
    pub(crate) fn has_pending(&self) -> bool {
        self.cursor < self.last_seq()
    }

    /// Highest sequence number ever assigned.
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// Payload bytes held in the replay buffer.
    pub(crate) fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// What the replay buffer is charged: payloads plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD) per message.
    pub(crate) fn charged_bytes(&self) -> usize {
        self.charged_bytes
    }

    /// Messages held in the replay buffer.
    pub(crate) fn buffered_messages(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Message {
        Message::text(s)
    }

    #[test]
    fn trims_only_on_ack_and_replays_after_rewind() {
        let mut out = Outbound::new(1024, 16);
        for s in ["a", "b", "c"] {
            out.push(msg(s)).ok();
        }
        let mut sent = Vec::new();
        while let Some((seq, _)) = out.peek() {
            sent.push(seq);
            out.advance();
        }
        assert_eq!(sent, [1, 2, 3]);
        assert_eq!(out.buffered_messages(), 3, "writing does not trim");
        const O: usize = crate::MESSAGE_OVERHEAD;
        assert_eq!(out.in_flight(), 3 * (O + 1));
        assert_eq!(out.charge_through(2), 2 * (O + 1));
        assert_eq!(out.ack(1), Ok(1));
        assert_eq!(out.in_flight(), 2 * (O + 1));
        out.rewind();
        assert_eq!(out.in_flight(), 0);
        assert_eq!(out.peek().map(|(s, m)| (s, m.clone())), Some((2, msg("b"))));
        assert_eq!(
            out.ack(4),
            Err(ProtocolError::AckBeyondSent { ack: 4, sent: 3 })
        );
        assert_eq!(out.ack(0), Ok(0), "stale acks are ignored");
        assert_eq!(out.ack(3), Ok(2));
        assert!(!out.has_pending());
        assert_eq!(out.payload_bytes(), 0);
        assert_eq!(out.charged_bytes(), 0);
    }

    #[test]
    fn behind_the_gate_nothing_goes_out_or_is_acknowledged() {
        let mut out = Outbound::new(1024, 16);
        for s in ["a", "b", "c"] {
            out.push(msg(s)).ok();
        }
        out.set_release(1);
        let mut frames = Vec::new();
        crate::session::server::push_messages(&mut out, 1 << 16, None, &mut frames, None);
        assert_eq!(frames.len(), 1, "2 waits: {frames:?}");
        assert!(out.has_pending(), "but it is pending");
        assert_eq!(
            out.ack(2),
            Err(ProtocolError::AckBeyondSent { ack: 2, sent: 1 })
        );
        let after: Vec<_> = out
            .messages_after(1)
            .map(|(seq, m)| (seq, m.clone()))
            .collect();
        assert_eq!(after, [(2, msg("b")), (3, msg("c"))]);
        assert_eq!(out.ack(1), Ok(1));
        assert_eq!(out.messages_after(1).count(), 2);
        out.set_release(3);
        frames.clear();
        crate::session::server::push_messages(&mut out, 1 << 16, None, &mut frames, None);
        assert_eq!(frames.len(), 2, "2 and 3 go: {frames:?}");
        let restored = Outbound::restored(1024, 16, 5, vec![msg("f"), msg("g")]);
        let restored = restored.expect("valid");
        assert_eq!((restored.acked(), restored.last_seq()), (5, 7));
        assert!(Outbound::restored(1024, 16, u64::MAX - 1, vec![msg("x")]).is_none());
    }

    #[test]
    fn refuses_past_either_limit() {
        const O: usize = crate::MESSAGE_OVERHEAD;
        let mut out = Outbound::new(2 * O + 4, 2);
        assert_eq!(out.push(msg("abc")), Ok(1));
        assert_eq!(out.push(msg("de")), Err(SendError::Full), "bytes");
        assert_eq!(out.push(msg("d")), Ok(2));
        assert_eq!(out.charged_bytes(), 2 * O + 4);
        assert_eq!(out.payload_bytes(), 4);
        out.ack(2).ok();
        assert_eq!(out.push(msg("")), Ok(3));
        assert_eq!(out.push(msg("")), Ok(4));
        assert_eq!(out.push(msg("")), Err(SendError::Full), "count");
    }

    #[test]
    fn empty_messages_are_charged_the_overhead() {
        const O: usize = crate::MESSAGE_OVERHEAD;
        let mut out = Outbound::new(10 * O, 1_000_000);
        let mut accepted = 0;
        while out.push(msg("")).is_ok() {
            accepted += 1;
        }
        assert_eq!(accepted, 10, "empty messages are not free");
        assert_eq!(out.charged_bytes(), 10 * O);
    }

    #[test]
    fn an_empty_buffer_takes_any_message() {
        let mut out = Outbound::new(8, 1);
        assert_eq!(out.push(msg("larger than the limit")), Ok(1));
        assert_eq!(out.push(msg("")), Err(SendError::Full));
    }
}
