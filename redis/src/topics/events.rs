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
use crate::lossy::LossyQueue;

/// Events the queue holds before it drops and resets.
pub(crate) const QUEUE: usize = 4096;

/// The node's event queue.
type Queue = LossyQueue<TopicEvent>;

/// Moves topic frames from the subscriber connection to `tx` until the
/// queue's reader is gone (or the store drops and aborts this task).
pub(crate) async fn forward(
    broker: Arc<RedisBroker>,
    tx: mpsc::Sender<TopicEvent>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
) {
    let mut queue = Queue::new(tx, || TopicEvent::Reset);
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
