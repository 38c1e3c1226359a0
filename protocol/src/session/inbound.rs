//! The receiving half of a session: duplicate suppression, the queue of
//! messages for the application, and when an acknowledgement is due.
//!
//! With a store (the server's durability gate), messages after
//! `confirmed` are not in the store yet: they are neither acknowledged nor
//! given to the application, and the ack timer does not run for them (an
//! ack that cannot go out must not keep a deadline in the past).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::message_charge;
use crate::error::ProtocolError;
use crate::wire::Message;

#[derive(Debug)]
pub(crate) struct Inbound {
    /// Highest sequence number accepted.
    received: u64,
    /// Highest acknowledgement handed to the peer.
    acked_out: u64,
    /// When the oldest unacknowledged message arrived (or an ack was lost).
    unacked_since: Option<Instant>,
    /// An acknowledgement was lost: send one again even if nothing new came.
    resend_ack: bool,
    /// Accepted messages the application has not taken yet.
    queue: VecDeque<Message>,
    /// What `queue` is charged: payloads plus the per-message overhead.
    queue_bytes: usize,
    /// Whether a durability gate holds messages back (a store).
    gated: bool,
    /// Highest sequence number confirmed: the gate. Without one, it
    /// follows `received`.
    confirmed: u64,
    /// What the messages in `queue` after `confirmed` are charged.
    unconfirmed_bytes: usize,
}

/// What happened to an incoming message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    New,
    Duplicate,
}

impl Inbound {
    pub(crate) fn new() -> Self {
        Self {
            received: 0,
            acked_out: 0,
            unacked_since: None,
            resend_ack: false,
            queue: VecDeque::new(),
            queue_bytes: 0,
            gated: false,
            confirmed: 0,
            unconfirmed_bytes: 0,
        }
    }

    /// A receiving half continued from stored state, gated: `received`
    /// accepted (and confirmed, and acknowledged: the `resumed` greeting
    /// says so), `queue` the last of them, not taken by the application.
    /// `None` if the queue holds more messages than were received.
    pub(crate) fn restored(received: u64, queue: Vec<Message>) -> Option<Self> {
        if u64::try_from(queue.len()).ok()? > received {
            return None;
        }
        let queue_bytes = queue.iter().map(|m| message_charge(m.len())).sum();
        Some(Self {
            received,
            acked_out: received,
            unacked_since: None,
            resend_ack: false,
            queue: queue.into(),
            queue_bytes,
            gated: true,
            confirmed: received,
            unconfirmed_bytes: 0,
        })
    }

    /// Turns the durability gate on: what was received so far counts as
    /// confirmed.
    pub(crate) fn hold_until_confirmed(&mut self) {
        self.gated = true;
    }

    /// Highest sequence number confirmed (everything received, without a
    /// gate).
    #[inline]
    pub(crate) fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Confirms messages up to `upto` (capped at `received`); whether the
    /// gate moved.
    pub(crate) fn confirm(&mut self, upto: u64) -> bool {
        let upto = upto.min(self.received);
        if !self.gated || upto <= self.confirmed {
            return false;
        }
        let newly = usize::try_from(upto - self.confirmed).unwrap_or(usize::MAX);
        let charge: usize = self
            .unconfirmed()
            .take(newly)
            .map(|(_, m)| message_charge(m.len()))
            .sum();
        self.unconfirmed_bytes -= charge;
        self.confirmed = upto;
        true
    }

    /// The messages after the gate, with their sequence numbers.
    pub(crate) fn unconfirmed(&self) -> impl Iterator<Item = (u64, &Message)> {
        let count = usize::try_from(self.received - self.confirmed).unwrap_or(usize::MAX);
        let skip = self.queue.len().saturating_sub(count);
        self.queue
            .iter()
            .skip(skip)
            .zip(self.confirmed + 1..)
            .map(|(m, seq)| (seq, m))
    }

    /// Accepts the next message, drops a replayed one, refuses a gap.
    #[inline]
    pub(crate) fn accept(
        &mut self,
        now: Instant,
        seq: u64,
        message: Message,
    ) -> Result<Accepted, ProtocolError> {
        if seq <= self.received {
            return Ok(Accepted::Duplicate);
        }
        if seq != self.received + 1 {
            return Err(ProtocolError::SeqGap {
                expected: self.received + 1,
                got: seq,
            });
        }
        self.received = seq;
        self.unacked_since.get_or_insert(now);
        let charge = message_charge(message.len());
        self.queue_bytes += charge;
        if self.gated {
            self.unconfirmed_bytes += charge;
        } else {
            self.confirmed = seq;
        }
        self.queue.push_back(message);
        Ok(Accepted::New)
    }

    /// Takes the oldest message for the application.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Message> {
        if self.gated && !self.front_confirmed() {
            return None;
        }
        let message = self.queue.pop_front()?;
        self.queue_bytes -= message_charge(message.len());
        super::shrink_spare(&mut self.queue);
        Some(message)
    }

    /// Whether the oldest queued message is confirmed (behind a gate).
    #[cold]
    fn front_confirmed(&self) -> bool {
        // Its seq: the queue ends at `received`.
        let front = self.received + 1 - self.queue.len() as u64;
        front <= self.confirmed
    }

    /// What the queued messages are charged: payloads plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD) each.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queue_bytes
    }

    /// What the queued messages up to the gate are charged: the room an
    /// acknowledgement of [`confirmed`](Self::confirmed) announces counts
    /// these (the client counts the later ones as in flight).
    #[inline]
    pub(crate) fn confirmed_bytes(&self) -> usize {
        self.queue_bytes - self.unconfirmed_bytes
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Whether messages arrived since the last acknowledgement.
    pub(crate) fn has_unacked(&self) -> bool {
        self.confirmed > self.acked_out || self.resend_ack
    }

    /// When an acknowledgement is due: at once after `every` messages, else
    /// `delay` after the first unacknowledged one. Behind a durability
    /// gate, only confirmed messages count, and none is due while nothing
    /// new is confirmed (once it is, the deadline may be past: the ack goes
    /// out at once).
    pub(crate) fn ack_deadline(&self, every: u64, delay: Duration) -> Option<Instant> {
        let since = self.unacked_since?;
        let ackable = self.confirmed.saturating_sub(self.acked_out);
        if self.resend_ack || ackable >= every {
            Some(since)
        } else if ackable > 0 {
            Some(since + delay)
        } else {
            None
        }
    }

    /// Records that an acknowledgement of everything received (and
    /// confirmed) is on its way and returns it.
    pub(crate) fn take_ack(&mut self) -> u64 {
        let upto = self.confirmed;
        self.acked_out = upto;
        if upto == self.received {
            self.unacked_since = None;
        } // else the rest waits for the gate, its timer still running
        self.resend_ack = false;
        upto
    }

    /// Records an acknowledgement that travelled outside frames (the `last`
    /// of a poll request).
    pub(crate) fn acked_through(&mut self, seq: u64) {
        if seq >= self.received {
            self.take_ack();
        } else if seq > self.acked_out {
            self.acked_out = seq;
        }
    }

    /// Forgets that an acknowledgement was sent (it may have been lost), so
    /// a new one goes out.
    pub(crate) fn ack_lost(&mut self, now: Instant) {
        if self.received > 0 {
            self.resend_ack = true;
            self.unacked_since.get_or_insert(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_in_order_drops_duplicates_refuses_gaps() {
        let now = Instant::now();
        let mut inb = Inbound::new();
        assert_eq!(inb.accept(now, 1, Message::text("a")), Ok(Accepted::New));
        assert_eq!(
            inb.accept(now, 1, Message::text("a")),
            Ok(Accepted::Duplicate)
        );
        assert_eq!(
            inb.accept(now, 3, Message::text("c")),
            Err(ProtocolError::SeqGap {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(inb.pop(), Some(Message::text("a")));
        assert_eq!(inb.pop(), None);
    }

    #[test]
    fn every_queued_message_is_charged_its_payload_and_the_overhead() {
        let now = Instant::now();
        let mut inb = Inbound::new();
        inb.accept(now, 1, Message::text("")).ok();
        assert_eq!(
            inb.queued_bytes(),
            crate::MESSAGE_OVERHEAD,
            "empty is not free"
        );
        inb.accept(now, 2, Message::binary(vec![0u8; 10])).ok();
        assert_eq!(inb.queued_bytes(), 2 * crate::MESSAGE_OVERHEAD + 10);
        inb.accept(now, 2, Message::binary(vec![0u8; 10])).ok();
        assert_eq!(
            inb.queued_bytes(),
            2 * crate::MESSAGE_OVERHEAD + 10,
            "duplicate"
        );
        inb.pop();
        assert_eq!(inb.queued_bytes(), crate::MESSAGE_OVERHEAD + 10);
        inb.pop();
        assert_eq!(inb.queued_bytes(), 0);
    }

    #[test]
    fn a_drained_queue_gives_its_peak_capacity_back() {
        let now = Instant::now();
        let mut inb = Inbound::new();
        for seq in 1..=100_000 {
            inb.accept(now, seq, Message::text("")).ok();
        }
        let peak = inb.queue.capacity();
        while inb.pop().is_some() {}
        assert!(
            inb.queue.capacity() <= 64,
            "{peak} -> {}",
            inb.queue.capacity()
        );
    }

    #[test]
    fn behind_the_gate_messages_wait_unacknowledged_and_untaken() {
        let t0 = Instant::now();
        let delay = Duration::from_millis(100);
        let mut inb = Inbound::new();
        inb.accept(t0, 1, Message::text("a")).ok();
        inb.hold_until_confirmed();
        assert_eq!(inb.confirmed(), 1, "what came before counts as confirmed");
        inb.accept(t0, 2, Message::text("bb")).ok();
        inb.accept(t0, 3, Message::text("ccc")).ok();
        let waiting: Vec<_> = inb.unconfirmed().map(|(seq, m)| (seq, m.len())).collect();
        assert_eq!(waiting, [(2, 2), (3, 3)]);
        assert_eq!(inb.confirmed_bytes(), crate::MESSAGE_OVERHEAD + 1);
        assert_eq!(inb.take_ack(), 1, "only what is confirmed");
        assert!(!inb.has_unacked());
        assert_eq!(inb.ack_deadline(1, delay), None, "no timer for what waits");
        assert_eq!(inb.pop(), Some(Message::text("a")));
        assert_eq!(inb.pop(), None, "2 waits");
        assert!(!inb.confirm(1), "not forward");
        assert!(inb.confirm(2));
        assert_eq!(
            inb.ack_deadline(5, delay),
            Some(t0 + delay),
            "from the arrival"
        );
        assert_eq!(inb.confirmed_bytes(), crate::MESSAGE_OVERHEAD + 2);
        assert!(inb.confirm(9), "capped");
        assert_eq!(inb.confirmed(), 3);
        assert_eq!(inb.unconfirmed().count(), 0);
        assert_eq!(inb.take_ack(), 3);
        assert_eq!(inb.ack_deadline(1, delay), None);
        assert_eq!(
            Inbound::restored(1, vec![Message::text(""); 2]).map(|_| ()),
            None
        );
    }

    #[test]
    fn ack_is_due_after_a_count_or_a_delay() {
        let t0 = Instant::now();
        let delay = Duration::from_millis(100);
        let mut inb = Inbound::new();
        assert_eq!(inb.ack_deadline(3, delay), None);
        inb.accept(t0, 1, Message::text("a")).ok();
        assert_eq!(inb.ack_deadline(3, delay), Some(t0 + delay));
        inb.accept(t0, 2, Message::text("b")).ok();
        inb.accept(t0, 3, Message::text("c")).ok();
        assert_eq!(inb.ack_deadline(3, delay), Some(t0));
        assert_eq!(inb.take_ack(), 3);
        assert_eq!(inb.ack_deadline(3, delay), None);
        inb.ack_lost(t0);
        assert!(inb.has_unacked());
    }
}
