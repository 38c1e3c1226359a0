//! The node's liveness key, refreshed in the background.

use std::time::Duration;

use fred::prelude::*;

/// Sets `key` with a TTL of `ttl` every `ttl / 4` until aborted (by
/// [`Store::leave`](holdfast_server::store::Store::leave) or the store's
/// drop). A failed refresh is retried at the next tick: three in a row
/// must fail before the key expires and other nodes may take this node's
/// sessions over (its writes are fenced from then on).
pub(crate) async fn heartbeat(client: Client, key: String, ttl: Duration, timeout: Duration) {
    let mut tick = tokio::time::interval(ttl / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = refresh(&client, &key, ttl);
        match tokio::time::timeout(timeout, set).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "node liveness refresh failed"),
            Err(_) => tracing::debug!("node liveness refresh timed out"),
        }
    }
}

/// One `SET key 1 PX ttl`.
pub(crate) async fn refresh(client: &Client, key: &str, ttl: Duration) -> Result<(), Error> {
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    client
        .set::<(), _, _>(key, "1", Some(Expiration::PX(ms)), None, false)
        .await
}
