//! [`RedisStore`]: the [`Store`] trait over Redis.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::*;
use fred::types::Value;
use holdfast_server::store::{
    Broker, BusEvent, NewSession, Owner, Snapshot, Store, StoreError, StoreFuture, Write,
};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::codec::{
    Meta, array_of, bytes_of, encode_cursors, encode_headers, encode_message, number_of,
};
use crate::config::{Builder, client_url, redacted};
use crate::keys::Keys;
use crate::scripts::{Script, Scripts};
use crate::topics::{RedisBroker, TopicOptions};
use crate::{Error, bus, liveness};

/// A session store in Redis or Redis Cluster. See the [crate docs](crate).
pub struct RedisStore {
    client: Client,
    subscriber: Client,
    node_id: String,
    keys: Keys,
    cluster: bool,
    command_timeout: Duration,
    scripts: Scripts,
    inbox: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    heartbeat: AbortHandle,
    forwarder: AbortHandle,
    broker: Arc<RedisBroker>,
    /// The broker's tasks (topic events, members).
    topic_tasks: [AbortHandle; 2],
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node_id", &self.node_id)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects with the default options: `redis://host:port` is one
    /// server, `redis-cluster://host:port[,host:port…]` a Redis Cluster
    /// (see [`builder`](Self::builder) for the options). Fails within the
    /// connect timeout (3 s) if Redis cannot be reached.
    pub async fn connect(url: &str) -> Result<Arc<Self>, Error> {
        Self::builder(url).connect().await
    }

    /// Options, then [`Builder::connect`].
    pub fn builder(url: &str) -> Builder {
        Builder::new(url)
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(crate) async fn start(options: Builder) -> Result<Arc<Self>, Error> {
        describe_metrics();
        let url = client_url(&options.url)?;
        let shown = redacted(&options.url);
        let unreachable = |reason: String| Error::Unreachable {
            url: shown.clone(),
            reason,
        };
        let mut config = Config::from_url(&url).map_err(|e| Error::InvalidUrl(e.to_string()))?;
        // The first connection's failure is returned, not retried.
        config.fail_fast = true;
        let cluster = matches!(config.server, ServerConfig::Clustered { .. });
        let mut builder = fred::types::Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = options.connect_timeout;
                c.internal_command_timeout = options.command_timeout;
                // A command in flight when the connection drops fails
                // instead of being sent again: a publish sent twice would
                // reach the other node twice.
                c.max_command_attempts = 1;
                // Commands queued while Redis is away: bounded.
                c.max_command_buffer_len = 100_000;
                // Each connection is named after its client, so that the
                // broker finds its own subscriber connection in `CLIENT
                // LIST` (see `topics::RedisBroker::lost_subscriptions`).
                c.auto_client_setname = true;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = options.command_timeout;
                // Shared by the bus and the topics (both read every frame
                // of the subscriber connection): a burst of topic frames
                // must not make the bus lag (a lagging reader resets).
                p.broadcast_channel_capacity = options.bus_capacity.max(crate::topics::QUEUE);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2));
        let build = |what: &str| {
            builder
                .build()
                .map_err(|e| unreachable(format!("{what} client: {e}")))
        };
        let client = build("command")?;
        let subscriber = build("subscriber")?;

        let within = |timeout: Duration, what: &'static str| {
            move |result: Result<Result<(), fred::error::Error>, tokio::time::error::Elapsed>| {
                match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("{what}: {e}")),
                    Err(_) => Err(format!("{what}: no answer within {timeout:?}")),
                }
            }
        };
        let connect_timeout = options.connect_timeout;
        let connected = async {
            let init = tokio::time::timeout(connect_timeout, async {
                client.init().await?;
                subscriber.init().await.map(|_| ())
            })
            .await;
            within(connect_timeout, "connect")(init)
        }
        .await;
        if let Err(reason) = connected {
            quit(client, subscriber);
            return Err(unreachable(reason));
        }

        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| Error::Random(e.to_string()))?;
        let node_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let keys = Keys::new(&options.prefix);
        let channel = keys.bus(&node_id);
        let node_key = keys.node(&node_id);

        // Listen before subscribing, so that nothing published after the
        // subscription is missed.
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        let setup = async {
            let subscribe = tokio::time::timeout(
                options.command_timeout,
                bus::subscribe(&subscriber, &channel, cluster),
            )
            .await;
            within(options.command_timeout, "bus subscription")(subscribe)?;
            let alive = tokio::time::timeout(
                options.command_timeout,
                liveness::refresh(&client, &node_key, options.node_ttl),
            )
            .await;
            within(options.command_timeout, "liveness key")(alive)
        }
        .await;
        if let Err(reason) = setup {
            quit(client, subscriber);
            return Err(unreachable(reason));
        }

        let heartbeat = tokio::spawn(liveness::heartbeat(
            client.clone(),
            node_key,
            options.node_ttl,
            options.command_timeout,
        ))
        .abort_handle();
        let (tx, rx) = mpsc::channel(options.bus_capacity);
        let forwarder = tokio::spawn(bus::forward(
            subscriber.clone(),
            client.clone(),
            channel,
            cluster,
            tx,
            messages,
            reconnects,
            Duration::from_millis(100),
        ))
        .abort_handle();
        let (broker, topic_tasks) = RedisBroker::start(
            client.clone(),
            subscriber.clone(),
            node_id.clone(),
            keys.clone(),
            cluster,
            TopicOptions {
                history: options.topic_history,
                idle_ttl: options.topic_ttl,
                node_ttl: options.node_ttl,
                command_timeout: options.command_timeout,
            },
        );
        Ok(Arc::new(Self {
            client,
            subscriber,
            node_id,
            keys,
            cluster,
            command_timeout: options.command_timeout,
            scripts: Scripts::new(),
            inbox: Mutex::new(Some(rx)),
            heartbeat,
            forwarder,
            broker,
            topic_tasks,
        }))
    }

    /// Runs one command with the store's deadline; any failure is
    /// [`StoreError::Unavailable`] naming `what`. Each round trip is
    /// timed in `holdfast_store_seconds{op=what}`, each failure counted
    /// in `holdfast_store_errors_total{op=what}` (`what` is one of this
    /// file's operation names).
    async fn call<T>(
        &self,
        what: &'static str,
        command: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = within(self.command_timeout, what, command).await;
        metrics::histogram!(STORE_SECONDS, "op" => what).record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!(STORE_ERRORS, "op" => what).increment(1);
        }
        result
    }

    /// Runs a session script and reads its status reply.
    async fn script(
        &self,
        what: &'static str,
        script: &Script,
        tag: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, StoreError> {
        let keys = self.keys.session(tag)?;
        let reply = self
            .call(what, script.run(&self.client, keys, args))
            .await?;
        let mut items = array_of(reply)?.into_iter();
        let status = items.next().as_ref().and_then(bytes_of).unwrap_or_default();
        let detail = || {
            items
                .clone()
                .next()
                .as_ref()
                .and_then(bytes_of)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        match status.as_ref() {
            b"OK" => Ok(items.collect()),
            b"FENCED" => Err(StoreError::Fenced),
            b"NOTFOUND" => Err(StoreError::NotFound),
            b"GAP" => Err(StoreError::Unavailable(format!(
                "{what} refused, a sequence gap (a bug in the caller): {}",
                detail()
            ))),
            b"BAD" => Err(StoreError::Unavailable(format!(
                "{what} refused (a bug in the caller): {}",
                detail()
            ))),
            b"EXISTS" => Err(StoreError::Unavailable(format!(
                "{what} refused: another session has this tag"
            ))),
            other => Err(StoreError::Unavailable(format!(
                "{what}: unexpected reply {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }
}

/// Round trips to Redis of the session store (histogram), by `op`.
const STORE_SECONDS: &str = "holdfast_store_seconds";
/// Round trips to Redis of the session store that failed (timeout,
/// connection, server error), by `op`.
const STORE_ERRORS: &str = "holdfast_store_errors_total";

/// Describes the store's metrics to the installed recorder.
fn describe_metrics() {
    metrics::describe_histogram!(
        STORE_SECONDS,
        metrics::Unit::Seconds,
        "Round trips of the Redis session store, by operation (create, write, owner, claim, release, remove, touch, node_alive, leave, publish)."
    );
    metrics::describe_counter!(
        STORE_ERRORS,
        metrics::Unit::Count,
        "Round trips of the Redis session store that failed or timed out, by operation."
    );
}

/// Runs one command with a deadline (`timeout`, the store's command
/// timeout); any failure is [`StoreError::Unavailable`] naming `what`.
pub(crate) async fn within<T>(
    timeout: Duration,
    what: &str,
    command: impl Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, StoreError> {
    // The client's own timeout applies first; this one is the bound even
    // if the client's were not kept.
    let bound = timeout + Duration::from_millis(100);
    match tokio::time::timeout(bound, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(StoreError::Unavailable(format!("{what}: {error}"))),
        Err(_) => Err(StoreError::Unavailable(format!(
            "{what}: Redis did not answer within {timeout:?}"
        ))),
    }
}

fn millis(ttl: Duration) -> Value {
    // At least 1 ms: PEXPIRE 0 would delete the session.
    Value::Integer(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

fn seq(n: u64) -> Result<Value, StoreError> {
    i64::try_from(n)
        .map(Value::Integer)
        .map_err(|_| StoreError::Unavailable(format!("sequence number {n} is out of range")))
}

fn text(s: &str) -> Value {
    Value::Bytes(Bytes::copy_from_slice(s.as_bytes()))
}

fn flag(b: bool) -> Value {
    text(if b { "1" } else { "0" })
}

/// The first sequence number of `messages`, after checking they are
/// consecutive.
fn first_of(
    direction: &str,
    messages: &[(u64, holdfast_protocol::Message)],
) -> Result<u64, StoreError> {
    let first = messages.first().map_or(0, |(n, _)| *n);
    let consecutive = messages
        .iter()
        .zip(first..)
        .all(|((n, _), expected)| *n == expected);
    if first == 0 && !messages.is_empty() || !consecutive {
        return Err(StoreError::Unavailable(format!(
            "write refused (a bug in the caller): {direction} sequence numbers are not consecutive from 1"
        )));
    }
    Ok(first)
}

/// Builds the arguments of the write script (see [`scripts::WRITE`](crate::scripts::WRITE)).
fn write_args(
    node: &str,
    epoch: u64,
    write: &Write,
    ttl: Duration,
) -> Result<Vec<Value>, StoreError> {
    let out_first = first_of("outbound", &write.outbound)?;
    let in_first = first_of("inbound", &write.inbound)?;
    let mut args = Vec::with_capacity(19 + write.outbound.len() + write.inbound.len());
    args.push(text(node));
    args.push(seq(epoch)?);
    args.push(millis(ttl));
    args.push(seq(out_first)?);
    args.push(seq(write.outbound.len() as u64)?);
    args.push(seq(in_first)?);
    args.push(seq(write.inbound.len() as u64)?);
    args.push(match write.acked {
        Some(acked) => seq(acked)?,
        None => text(""),
    });
    let progress = write.progress.unwrap_or_default();
    args.push(flag(write.progress.is_some()));
    args.push(seq(progress.done)?);
    args.push(seq(progress.current)?);
    args.push(seq(progress.sends)?);
    args.push(flag(write.opened));
    args.push(flag(write.close.is_some()));
    let close = write.close.as_ref();
    args.push(Value::Integer(close.map_or(0, |c| i64::from(c.code))));
    args.push(text(close.map_or("", |c| c.reason.as_str())));
    args.push(flag(close.is_some_and(|c| c.by_client)));
    args.push(flag(write.cursors.is_some()));
    args.push(match &write.cursors {
        Some(cursors) => Value::Bytes(encode_cursors(cursors)?),
        None => text(""),
    });
    for (_, message) in write.outbound.iter().chain(&write.inbound) {
        args.push(Value::Bytes(encode_message(message)));
    }
    Ok(args)
}

impl Store for RedisStore {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn create<'a>(
        &'a self,
        tag: &'a str,
        session: &'a NewSession,
        ttl: Duration,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let args = vec![
                text(&self.node_id),
                millis(ttl),
                text(&session.session_id),
                flag(session.identity.is_some()),
                text(session.identity.as_deref().unwrap_or_default()),
                Value::Bytes(encode_headers(&session.headers)),
            ];
            self.script("create", &self.scripts.create, tag, args)
                .await?;
            Ok(1)
        })
    }

    fn write<'a>(
        &'a self,
        tag: &'a str,
        epoch: u64,
        write: &'a Write,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args = write_args(&self.node_id, epoch, write, ttl)?;
            self.script("write", &self.scripts.write, tag, args).await?;
            Ok(())
        })
    }

    fn owner<'a>(&'a self, tag: &'a str) -> StoreFuture<'a, Owner> {
        Box::pin(async move {
            let keys = self.keys.session(tag)?;
            let reply = self
                .call(
                    "owner",
                    self.scripts.owner.run(&self.client, keys, Vec::new()),
                )
                .await?;
            let items = array_of(reply)?;
            let [node, epoch, released] = items.as_slice() else {
                return Ok(Owner::Unknown);
            };
            let epoch = number_of(epoch).ok_or_else(|| crate::codec::corrupt("epoch"))?;
            if bytes_of(released).is_some_and(|r| r.as_ref() == b"1") {
                return Ok(Owner::Released { epoch });
            }
            let node = bytes_of(node).ok_or_else(|| crate::codec::corrupt("owner node"))?;
            Ok(Owner::Node {
                node: String::from_utf8_lossy(&node).into_owned(),
                epoch,
            })
        })
    }

    fn node_alive<'a>(&'a self, node: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let key = self.keys.node(node);
            let found: i64 = self.call("node_alive", self.client.exists(key)).await?;
            Ok(found > 0)
        })
    }

    fn claim<'a>(
        &'a self,
        tag: &'a str,
        from: &'a Owner,
        ttl: Duration,
    ) -> StoreFuture<'a, Snapshot> {
        Box::pin(async move {
            let (kind, node, epoch) = match from {
                Owner::Unknown => ("unknown", "", 0),
                Owner::Node { node, epoch } => ("node", node.as_str(), *epoch),
                Owner::Released { epoch } => ("released", "", *epoch),
            };
            let args = vec![
                text(kind),
                text(node),
                seq(epoch)?,
                text(&self.node_id),
                millis(ttl),
            ];
            let mut items = self
                .script("claim", &self.scripts.claim, tag, args)
                .await?
                .into_iter();
            let (Some(meta), Some(outbound), Some(inbound)) =
                (items.next(), items.next(), items.next())
            else {
                return Err(crate::codec::corrupt("the claim reply is short"));
            };
            Meta::parse(meta)?.snapshot(array_of(outbound)?, array_of(inbound)?)
        })
    }

    fn release<'a>(&'a self, tag: &'a str, epoch: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args = vec![text(&self.node_id), seq(epoch)?];
            self.script("release", &self.scripts.release, tag, args)
                .await?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, tag: &'a str, epoch: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let args = vec![text(&self.node_id), seq(epoch)?];
            self.script("remove", &self.scripts.remove, tag, args)
                .await?;
            Ok(())
        })
    }

    fn touch<'a>(&'a self, tags: &'a [String], ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // One script per tag (tags are on different slots); the client
            // pipelines the concurrent calls on each connection.
            for chunk in tags.chunks(512) {
                let calls = chunk.iter().map(|tag| async move {
                    let keys = self.keys.session(tag)?;
                    let args = vec![text(&self.node_id), millis(ttl)];
                    self.call("touch", self.scripts.touch.run(&self.client, keys, args))
                        .await
                });
                for result in futures_util::future::join_all(calls).await {
                    result?;
                }
            }
            Ok(())
        })
    }

    fn leave(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Stop refreshing first: a refresh after the delete would bring
            // the key back. (One already sent goes first on the same
            // connection.)
            self.heartbeat.abort();
            let key = self.keys.node(&self.node_id);
            let _: i64 = self.call("leave", self.client.del(key)).await?;
            Ok(())
        })
    }

    fn publish<'a>(&'a self, node: &'a str, frame: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let channel = self.keys.bus(node);
            let frame = Value::Bytes(frame);
            // The count of receivers is not an error when 0: a frame to a
            // node that does not listen is lost like any other (its
            // liveness key says whether it is there).
            let _: i64 = if self.cluster {
                self.call("publish", self.client.spublish(channel, frame))
                    .await?
            } else {
                self.call("publish", self.client.publish(channel, frame))
                    .await?
            };
            Ok(())
        })
    }

    fn inbox(&self) -> mpsc::Receiver<BusEvent> {
        let taken = self
            .inbox
            .lock()
            .map(|mut inbox| inbox.take())
            .unwrap_or_default();
        taken.unwrap_or_else(|| {
            // Called twice: the frames go to the first receiver only; this
            // one is closed at once.
            tracing::warn!("Store::inbox called twice: the second receiver gets nothing");
            mpsc::channel(1).1
        })
    }

    fn broker(&self) -> Arc<dyn Broker> {
        self.broker.clone()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // No `leave`: the liveness key expires by itself after node_ttl,
        // as after a crash.
        self.heartbeat.abort();
        self.forwarder.abort();
        for task in &self.topic_tasks {
            task.abort();
        }
        quit(self.client.clone(), self.subscriber.clone());
    }
}

/// Closes both connections in the background (their tasks would otherwise
/// keep reconnecting), if a runtime is there to run it.
fn quit(client: Client, subscriber: Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let bound = Duration::from_secs(1);
            let _ = tokio::time::timeout(bound, client.quit()).await;
            let _ = tokio::time::timeout(bound, subscriber.quit()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_server::store::NewSession;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Against a real `redis-server`: a round trip that worked is timed
    /// under its operation, one that failed (the server gone) is counted.
    #[test]
    fn store_round_trips_are_timed_and_failures_counted_by_operation() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // One thread runs every task: the recorder of this thread sees all.
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let mut server = holdfast_testkit::RedisServer::start()
                    .await
                    .expect("redis-server on PATH");
                let store = RedisStore::builder(&server.url())
                    .prefix("metrics-test")
                    .command_timeout(Duration::from_millis(300))
                    .connect()
                    .await
                    .expect("connect");
                let session = NewSession {
                    session_id: "s1".to_owned(),
                    identity: None,
                    headers: Vec::new(),
                };
                let ttl = Duration::from_secs(60);
                store.create("t1", &session, ttl).await.expect("create");
                server.kill();
                let refused = store.release("t1", 1).await;
                assert!(refused.is_err(), "{refused:?}");
            })
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let find = |name: &str, op: &str| {
            snapshot
                .iter()
                .find(|(key, ..)| {
                    key.key().name() == name
                        && key
                            .key()
                            .labels()
                            .any(|l| l.key() == "op" && l.value() == op)
                })
                .map(|(.., value)| match value {
                    DebugValue::Histogram(values) => values.len() as u64,
                    DebugValue::Counter(n) => *n,
                    DebugValue::Gauge(_) => 0,
                })
        };
        assert_eq!(find(STORE_SECONDS, "create"), Some(1));
        assert_eq!(find(STORE_ERRORS, "create"), None);
        assert_eq!(find(STORE_SECONDS, "release"), Some(1));
        assert_eq!(find(STORE_ERRORS, "release"), Some(1));
    }
}
