//! Topic events: frames from the subscriber connection to the node's
//! bounded event queue, subscriptions made again after they were lost.
//!
//! Like the bus inbox, the queue never blocks the reader of Redis and
//! never grows: when it is full an event is dropped and the queue gets
//! [`TopicEvent::Reset`] before the next one that fits. A reconnection of
//! the subscriber connection (or, on a cluster, a sharded subscription
//! dropped because its slot moved) makes every subscription again, then
//! sends `Reset`: events published in between are gone, the hubs read
//! the logs.

use std::sync::Arc;

use fred::prelude::*;
use holdfast_server::store::TopicEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::{RedisBroker, frames};
use crate::bus::SHARD_CHECK;
use crate::codec::bytes_of;

/// Events the queue holds before it drops and resets.
pub(crate) const QUEUE: usize = 4096;

/// Where events go, and whether some were lost since the last one that
/// got through.
pub(crate) struct Queue {
    tx: mpsc::Sender<TopicEvent>,
    lost: bool,
}

/// The queue's reader is gone.
pub(crate) struct Closed;

impl Queue {
    pub(crate) fn new(tx: mpsc::Sender<TopicEvent>) -> Self {
        Self { tx, lost: false }
    }

    /// Hands one event on, or drops it and remembers to say so.
    pub(crate) fn send(&mut self, event: TopicEvent) -> Result<(), Closed> {
        if self.lost && !self.reset()? {
            return Ok(());
        }
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost = true;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Events were (or may have been) lost: say so now if there is room,
    /// else before the next event. Returns whether the reset went out.
    pub(crate) fn reset(&mut self) -> Result<bool, Closed> {
        self.lost = true;
        match self.tx.try_send(TopicEvent::Reset) {
            Ok(()) => {
                self.lost = false;
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }
}

/// Moves topic frames from the subscriber connection to `tx` until the
/// queue's reader is gone (or the store drops and aborts this task).
pub(crate) async fn forward(
    broker: Arc<RedisBroker>,
    tx: mpsc::Sender<TopicEvent>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
) {
    let mut queue = Queue::new(tx);
    let mut check = tokio::time::interval(SHARD_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            biased;
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Subscribed again before the reset: a hub reading the
                    // log on the reset then misses nothing published after.
                    broker.resubscribe_all(&mut reconnects).await;
                    broker.keep_members_soon();
                    queue.reset().map(drop)
                }
                Err(RecvError::Closed) => return,
            },
            _ = check.tick(), if broker.cluster => {
                if broker.resubscribe_lost().await {
                    queue.reset().map(drop)
                } else {
                    Ok(())
                }
            },
            message = messages.recv() => match message {
                Ok(message) => match broker.keys.topic_of_channel(&message.channel) {
                    Some(topic) if broker.is_subscribed(topic) => {
                        let event = bytes_of(&message.value)
                            .and_then(|frame| frames::decode(topic, &frame));
                        if let Some(TopicEvent::Presence { topic }) = &event {
                            broker.presence_changed(topic);
                        }
                        match event {
                            Some(event) => queue.send(event),
                            None => {
                                tracing::warn!("a frame this crate does not write was dropped from a topic channel");
                                Ok(())
                            }
                        }
                    }
                    _ => Ok(()),
                },
                Err(RecvError::Lagged(_)) => queue.reset().map(drop),
                Err(RecvError::Closed) => return,
            },
        };
        if step.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence(topic: &str) -> TopicEvent {
        TopicEvent::Presence {
            topic: Arc::from(topic),
        }
    }

    #[test]
    fn a_full_queue_drops_events_then_resets_before_the_next_one() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut queue = Queue::new(tx);
        for name in ["a", "b", "c", "d"] {
            assert!(queue.send(presence(name)).is_ok());
        }
        assert_eq!(rx.try_recv().ok(), Some(presence("a")));
        assert_eq!(rx.try_recv().ok(), Some(presence("b")));
        assert!(rx.try_recv().is_err());
        assert!(queue.send(presence("e")).is_ok());
        assert_eq!(rx.try_recv().ok(), Some(TopicEvent::Reset));
        assert_eq!(rx.try_recv().ok(), Some(presence("e")));
        drop(rx);
        assert!(queue.send(presence("f")).is_err());
    }
}
