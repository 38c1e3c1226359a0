//! A bounded queue that never blocks its writer (the reader of a Redis
//! connection) and never grows: when it is full an item is dropped, and
//! the queue's reset item (the bus's `BusEvent::Reset`, the topics'
//! `TopicEvent::Reset`) goes before the next item that fits, so that the
//! reader learns that items were lost.

use tokio::sync::mpsc;

/// The queue's reader is gone.
pub(crate) struct Closed;

/// Where items go, and whether some were lost since the last one that got
/// through.
pub(crate) struct LossyQueue<T> {
    tx: mpsc::Sender<T>,
    lost: bool,
    reset: fn() -> T,
}

impl<T> LossyQueue<T> {
    /// A queue in front of `tx`, saying `reset()` after a loss.
    pub(crate) fn new(tx: mpsc::Sender<T>, reset: fn() -> T) -> Self {
        Self {
            tx,
            lost: false,
            reset,
        }
    }

    /// Hands one item on, or drops it and remembers to say so.
    pub(crate) fn send(&mut self, item: T) -> Result<(), Closed> {
        if self.lost && !self.reset()? {
            return Ok(());
        }
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost = true;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Items were (or may have been) lost: say so now if there is room,
    /// else before the next item. Returns whether the reset went out.
    pub(crate) fn reset(&mut self) -> Result<bool, Closed> {
        self.lost = true;
        match self.tx.try_send((self.reset)()) {
            Ok(()) => {
                self.lost = false;
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_items_then_resets_before_the_next_one() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut queue = LossyQueue::new(tx, || 0u8);
        for n in 1..=4u8 {
            assert!(queue.send(n).is_ok());
        }
        assert_eq!(rx.try_recv().ok(), Some(1));
        assert_eq!(rx.try_recv().ok(), Some(2));
        assert!(rx.try_recv().is_err());
        // Room again: the reset comes first, then the new item.
        assert!(queue.send(9).is_ok());
        assert_eq!(rx.try_recv().ok(), Some(0));
        assert_eq!(rx.try_recv().ok(), Some(9));
        drop(rx);
        assert!(queue.send(10).is_err());
    }
}
