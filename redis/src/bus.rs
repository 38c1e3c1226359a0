//! The bus: frames other nodes publish to this one, from the subscriber
//! connection to the bounded inbox.
//!
//! Each node listens on its own channel (`<prefix>:bus:<node id>`): classic
//! pub/sub on one server, sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, the
//! channel's slot owner only) on a cluster. Redis delivers messages on one
//! channel from one connection in the order they were published.
//!
//! The inbox is bounded ([`Builder::bus_capacity`](crate::Builder::bus_capacity)).
//! When it is full a frame is dropped, never queued: the reader is never
//! blocked and memory never grows. The next time there is room the inbox
//! gets [`BusEvent::Reset`] before any later frame, so whoever relied on
//! order learns that frames were lost. The same happens when the
//! subscriber connection was lost and came back (frames published in
//! between are gone), and when this crate's own buffer in front of the
//! inbox overflowed.

use std::time::Duration;

use fred::prelude::*;
use holdfast_server::store::BusEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::codec::bytes_of;
use crate::lossy::LossyQueue;

/// Subscribes `subscriber` to `channel` (sharded on a cluster).
pub(crate) async fn subscribe(
    subscriber: &Client,
    channel: &str,
    sharded: bool,
) -> Result<(), Error> {
    if sharded {
        subscriber.ssubscribe(channel).await
    } else {
        subscriber.subscribe(channel).await
    }
}

/// How often a sharded subscription is checked (see [`forward`]).
pub(crate) const SHARD_CHECK: Duration = Duration::from_secs(1);

/// Moves frames for `channel` from the subscriber connection to `tx` until
/// the inbox's reader is gone (or the store drops and aborts this task).
/// After each reconnection it sends [`BusEvent::Reset`] and subscribes
/// again (retrying every `retry` until it works).
///
/// A sharded subscription is also dropped, without a reconnection, when
/// its slot moves to another master (resharding); the client crate does
/// not report that. So on a cluster, every [`SHARD_CHECK`], `checker` asks
/// the channel's master how many subscribers it has: none means the
/// subscription was lost, handled like a reconnection.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    subscriber: Client,
    checker: Client,
    channel: String,
    sharded: bool,
    tx: mpsc::Sender<BusEvent>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnects: tokio::sync::broadcast::Receiver<Server>,
    retry: Duration,
) {
    let mut inbox = LossyQueue::new(tx, || BusEvent::Reset);
    let mut check = tokio::time::interval(SHARD_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step = tokio::select! {
            // A reconnection is handled before messages that arrived with
            // it: they belong after the reset.
            biased;
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    let reset = inbox.reset().map(|_| ());
                    resubscribe(&subscriber, &channel, sharded, retry, &mut reconnects).await;
                    reset
                }
                Err(RecvError::Closed) => return,
            },
            _ = check.tick(), if sharded => {
                if subscribed(&checker, &channel).await == Some(false) {
                    tracing::debug!("the bus subscription was dropped (slot moved?), subscribing again");
                    let reset = inbox.reset().map(|_| ());
                    resubscribe(&subscriber, &channel, sharded, retry, &mut reconnects).await;
                    reset
                } else {
                    Ok(())
                }
            },
            message = messages.recv() => match message {
                Ok(message) if *message.channel == *channel => match bytes_of(&message.value) {
                    Some(frame) => inbox.send(BusEvent::Frame(frame)),
                    None => {
                        tracing::warn!("a bus message that is not bytes was dropped");
                        Ok(())
                    }
                },
                Ok(_) => Ok(()),
                Err(RecvError::Lagged(_)) => inbox.reset().map(|_| ()),
                Err(RecvError::Closed) => return,
            },
        };
        if step.is_err() {
            return;
        }
    }
}

/// Whether the master of `channel`'s slot has a subscriber on it (`None`:
/// no answer).
pub(crate) async fn subscribed(checker: &Client, channel: &str) -> Option<bool> {
    let reply: fred::types::Value = checker.pubsub_shardnumsub(channel).await.ok()?;
    let items = crate::codec::array_of(reply).ok()?;
    let count = items.get(1).and_then(crate::codec::number_of)?;
    Some(count > 0)
}

/// Subscribes again after a reconnection, until it works. Reconnection
/// events that come meanwhile are consumed: this subscription covers them.
async fn resubscribe(
    subscriber: &Client,
    channel: &str,
    sharded: bool,
    retry: Duration,
    reconnects: &mut tokio::sync::broadcast::Receiver<Server>,
) {
    loop {
        match subscribe(subscriber, channel, sharded).await {
            Ok(()) => return,
            Err(error) => {
                tracing::debug!(%error, "bus subscription failed, retrying");
                tokio::time::sleep(retry).await;
                while reconnects.try_recv().is_ok() {}
            }
        }
    }
}
