//! Upstream flow control (`PROTOCOL.md` §3.1), both ends of it.
//!
//! The server grants a **window** of `W` charged bytes (payload plus
//! [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD) per message): every
//! acknowledgement `R` it writes carries `room`, what is left of `W` once
//! the messages received and not yet taken by the application are counted.
//! The client never has messages after `R` in flight whose charges sum to
//! more than `room`. So the server's inbound queue never exceeds `W`, and
//! the server can always read its socket: acks and pings are never stuck
//! behind data it refuses to read.
//!
//! [`Grant`] is the server's side, [`Credit`] the client's.

/// The server's side: the window it grants and when to tell the client
/// that room came back.
#[derive(Debug)]
pub(crate) struct Grant {
    /// `W`: the session's `max_inbound_bytes`.
    size: usize,
    /// Room at which a client may be waiting no longer: half the window,
    /// or one largest message if that is more (never more than `W`).
    threshold: usize,
    /// The room announced with the latest acknowledgement written.
    announced: usize,
    /// Room grew past `threshold` since it was last announced: write an
    /// `ack` on whatever downstream the session has.
    update_due: bool,
    /// Charged bytes admitted beyond `size` after a restore: the restored
    /// queue may hold messages the previous node's application had taken
    /// already (they were not finished), whose room that node announced
    /// to the client; the client, which keeps the greatest room for an
    /// ack, may have that much in flight. Shrinks as the application takes
    /// messages; 0 otherwise.
    allowance: usize,
}

impl Grant {
    pub(crate) fn new(size: usize, max_message: usize) -> Self {
        let one_message = crate::config::message_charge(max_message);
        Self {
            size,
            threshold: (size / 2).max(one_message).min(size),
            announced: size,
            update_due: false,
            allowance: 0,
        }
    }

    /// After a restore: admits up to `restored` charged bytes beyond the
    /// window until the application took that much.
    pub(crate) fn allow(&mut self, restored: usize) {
        self.allowance = restored;
    }

    /// The application took `message`.
    #[inline]
    pub(crate) fn took(&mut self, message: &crate::wire::Message) {
        if self.allowance > 0 {
            self.spend(message);
        }
    }

    /// Only after a restore: out of every message's way.
    #[cold]
    fn spend(&mut self, message: &crate::wire::Message) {
        let charge = crate::config::message_charge(message.len());
        self.allowance = self.allowance.saturating_sub(charge);
    }

    /// `W`, as announced in `open`.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// What is left of the window with `queued` charged bytes waiting for
    /// the application.
    pub(crate) fn room(&self, queued: usize) -> usize {
        self.size.saturating_sub(queued)
    }

    /// Whether a new message charged `charge` fits: `Err(room)` is an
    /// overrun.
    pub(crate) fn admit(&self, queued: usize, charge: usize) -> Result<(), usize> {
        if queued.saturating_add(charge) <= self.size + self.allowance {
            Ok(())
        } else {
            Err(self.room(queued))
        }
    }

    /// The room to write with an acknowledgement now, recorded as
    /// announced.
    pub(crate) fn announce(&mut self, queued: usize) -> u64 {
        let room = self.room(queued);
        self.announced = room;
        self.update_due = false;
        room as u64
    }

    /// The application took messages, leaving `queued`: whether an update
    /// just became due (the room the client knows was below the threshold
    /// and now the room is at or above it).
    pub(crate) fn taken(&mut self, queued: usize) -> bool {
        let newly_due = !self.update_due
            && self.announced < self.threshold
            && self.room(queued) >= self.threshold;
        self.update_due |= newly_due;
        newly_due
    }

    /// Whether an `ack` must go out to announce room that came back.
    pub(crate) fn update_due(&self) -> bool {
        self.update_due
    }
}

/// The client's side: the latest room the server granted.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    /// `(R, room)`: the greatest pair seen, in lexicographic order. `None`
    /// while the server announced no window (an older server): no limit.
    latest: Option<(u64, usize)>,
}

impl Credit {
    /// The window from `open` (nothing is acknowledged yet).
    pub(crate) fn open(&mut self, window: Option<usize>) {
        self.latest = window.map(|w| (0, w));
    }

    /// An acknowledgement of `seq` with `room` (from `ack` or `resumed`).
    /// Acknowledgements may arrive out of order (a send reply racing the
    /// downstream): the greatest `(seq, room)` wins; for the same `seq` the
    /// room can only have grown, as nothing was accepted meanwhile.
    pub(crate) fn grant(&mut self, seq: u64, room: usize) {
        if self.latest.is_none_or(|latest| (seq, room) > latest) {
            self.latest = Some((seq, room));
        }
    }

    /// An acknowledgement of `seq` without `room`, which freed messages
    /// charged `charge` beyond the latest grant: they are in the server's
    /// queue, so the grant shrinks by as much (and counts from `seq`).
    pub(crate) fn consumed(&mut self, seq: u64, charge: usize) {
        if let Some((acked, room)) = &mut self.latest
            && seq > *acked
        {
            *acked = seq;
            *room = room.saturating_sub(charge);
        }
    }

    /// How many more charged bytes may be transmitted with `in_flight`
    /// already sent after the latest grant's `R`; `None`: no limit.
    pub(crate) fn budget(&self, in_flight: usize) -> Option<usize> {
        self.latest.map(|(_, room)| room.saturating_sub(in_flight))
    }

    /// The latest grant, `(R, room)`.
    pub(crate) fn latest(&self) -> Option<(u64, usize)> {
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MESSAGE_OVERHEAD;

    #[test]
    fn the_threshold_is_half_the_window_or_one_largest_message() {
        assert_eq!(Grant::new(1 << 20, 65536).threshold, 1 << 19);
        let one = 1000 + MESSAGE_OVERHEAD;
        assert_eq!(Grant::new(one, 1000).threshold, one, "never above W");
        assert_eq!(Grant::new(3 * one / 2, 1000).threshold, one);
    }

    #[test]
    fn an_update_is_due_once_when_room_crosses_the_threshold_from_below() {
        let mut grant = Grant::new(1000, 100);
        assert!(!grant.taken(0), "the whole window was announced");
        assert_eq!(grant.announce(900), 100);
        assert!(!grant.taken(600), "room 400 < 500");
        assert!(grant.taken(500), "room 500");
        assert!(!grant.taken(0), "already due");
        assert!(grant.update_due());
        assert_eq!(grant.announce(0), 1000);
        assert!(!grant.update_due());
        assert_eq!(grant.admit(900, 100), Ok(()));
        assert_eq!(grant.admit(901, 100), Err(99));
    }

    #[test]
    fn the_greatest_grant_wins_in_lexicographic_order() {
        let mut credit = Credit::default();
        assert_eq!(credit.budget(10), None, "no window announced: no limit");
        credit.open(Some(1000));
        assert_eq!(credit.budget(300), Some(700));
        credit.grant(5, 200);
        credit.grant(4, 1000);
        assert_eq!(credit.latest(), Some((5, 200)), "an older ack is ignored");
        credit.grant(5, 100);
        assert_eq!(credit.latest(), Some((5, 200)), "same R: room only grows");
        credit.grant(5, 900);
        assert_eq!(credit.latest(), Some((5, 900)));
        credit.consumed(7, 300);
        assert_eq!(credit.latest(), Some((7, 600)));
        credit.consumed(6, 300);
        assert_eq!(credit.latest(), Some((7, 600)));
    }
}
