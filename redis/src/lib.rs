//! A Redis (and Redis Cluster) session store for holdfast: sessions whose
//! state outlives the node that opened them.
//!
//! [`RedisStore`] implements [`holdfast_server::store::Store`]. Give it to
//! the server's builder and every node of an app, pointed at the same
//! Redis, can serve every request of every session. Its
//! [`broker`](holdfast_server::store::Store::broker) carries topics
//! (messages every subscribed node gets, in one order, with a bounded
//! history) and presence across the nodes (see [Topics](#topics)).
//!
//! ```no_run
//! # async fn run() -> Result<(), holdfast_redis::Error> {
//! use std::time::Duration;
//! use holdfast_redis::RedisStore;
//!
//! // One server:
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! // A cluster (any of its masters; the others are discovered), with options:
//! let store = RedisStore::builder("redis-cluster://10.0.0.1:7000,10.0.0.2:7000")
//!     .prefix("myapp")
//!     .node_ttl(Duration::from_millis(1500))
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # URLs
//!
//! - `redis://[user:password@]host:port[/db]` — one server (`rediss://` for TLS
//!   is understood by the URL parser but this crate is built without a TLS
//!   feature: such a URL fails to connect);
//! - `redis-cluster://[user:password@]host:port[,host:port…]` — a Redis
//!   Cluster, given one or more of its nodes (the client crate's own form,
//!   `redis-cluster://host:port?node=host:port&node=…`, works too).
//!
//! # What is stored where
//!
//! Every name starts with the prefix (default `hf`). A session is named by
//! its [`tag`](holdfast_server::store::tag) (a one-way hash of its key), and
//! its three keys share the Redis Cluster hash tag `{<tag>}`, so that each
//! operation is **one Lua script on one slot**, atomic on a cluster too:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `hf:{<tag>}:m` | hash | session id, identity, kept headers; owner node, fencing epoch, released flag; `open` sent; acked / last outbound; last inbound / progress (done, current, sends); close code, reason, who closed |
//! | `hf:{<tag>}:o` | list | messages for the client not yet acknowledged (`acked + 1 ..`) |
//! | `hf:{<tag>}:i` | list | messages from the client the app has not processed (`done + 1 ..`) |
//! | `hf:node:<node id>` | string | this node is alive (TTL `node_ttl`) |
//! | `hf:bus:<node id>` | pub/sub channel | frames for this node |
//! | `hf:t:{<topic>}:log` | stream | the topic's last messages, entry id `<offset>-0`, field `m` = the stored message |
//! | `hf:t:{<topic>}:meta` | hash | `epoch` (random, set by the first publish or join), `last` offset |
//! | `hf:t:{<topic>}:members` | hash | presence: member id → `<node id> <info>` |
//! | `hf:t:{<topic>}:events` | pub/sub channel | `m<epoch>:<offset>:<stored message>` per message, `p` per presence change |
//!
//! The session's meta hash also holds its topic cursors (field `tc`: a
//! line `<topic> <epoch> <offset>` per topic), written by the same script
//! as the messages they count, so a takeover resumes every topic right
//! after the last message stored.
//!
//! A stored message is one byte of kind (`t` text, `b` binary) and its
//! bytes: binary-safe, and it comes back as the kind it went in as.
//!
//! The scripts (see the `scripts` module source) check before they change
//! anything: a write whose epoch (or node) is not the session's current
//! owner's is refused with [`StoreError::Fenced`](holdfast_server::store::StoreError::Fenced)
//! and changes nothing; a write whose first message does not follow the
//! last one stored (a gap: a bug in the caller) is refused with
//! `Unavailable` and a message saying which numbers; messages already
//! stored are skipped, so a write retried after its answer was lost is
//! applied once. `acked` drops outbound messages up to it, `progress.done`
//! drops inbound messages up to it. [`claim`](holdfast_server::store::Store::claim)
//! is a compare-and-set on the owner read before: of two claims from the
//! same read, exactly one wins.
//!
//! # What expires when
//!
//! - A session's keys: `ttl` after the last `create`, `write`, `claim` or
//!   `touch` (all three keys get the same TTL in the same script). `touch`
//!   only refreshes sessions this node still owns.
//! - A node's liveness key: `node_ttl` (default 1.5 s) after its last
//!   refresh; a background task refreshes it every `node_ttl / 4` from
//!   `connect` until [`leave`](holdfast_server::store::Store::leave)
//!   (deleted at once) or the store is dropped (it then expires as after a
//!   crash).
//! - Bus frames are not stored: a frame published while its receiver is
//!   not subscribed is lost.
//! - A topic's keys: [`Builder::topic_ttl`] (default 24 h) after the last
//!   publish or join, refreshed every `topic_ttl / 4` (at most 30 s) while
//!   a live node has members on it. A topic that expired starts again with a new
//!   epoch.
//!
//! # When Redis goes away
//!
//! - At start: [`RedisStore::connect`] fails with [`Error::Unreachable`]
//!   within the connect timeout (default 3 s).
//! - While running: every command has a deadline (the command timeout,
//!   default 1 s), so operations fail with `Unavailable` instead of hanging;
//!   the client reconnects by itself (backoff 50 ms doubling to 1 s, for
//!   ever); the bus subscribes again and the inbox gets
//!   [`BusEvent::Reset`](holdfast_server::store::BusEvent::Reset). A
//!   command in flight when the connection drops is not sent again (it
//!   fails): a retried `write` is safe (see above), a publish is not
//!   doubled.
//! - After a Redis restart **without persistence**, every session and
//!   liveness key is gone: each node's liveness key comes back at its next
//!   refresh, sessions are `NotFound` (clients must open new ones); topic
//!   logs start again under new epochs, and each node writes back the
//!   members it added.
//! - After a restart **with AOF** (`appendonly yes`; `appendfsync always`
//!   loses nothing acknowledged, `everysec` up to a second of writes),
//!   sessions come back as they were, with what remains of their TTLs
//!   (Redis keeps absolute expiry times: sessions whose time passed while
//!   it was down are gone). With RDB snapshots only, sessions come back as
//!   of the last snapshot: writes after it are lost, so a client may be
//!   told about a message the store no longer has — use AOF with
//!   `appendfsync always` for the exactly-once promise across a Redis
//!   crash.
//!
//! # The bus
//!
//! [`publish`](holdfast_server::store::Store::publish) sends to the
//! receiver's channel (sharded pub/sub — `SPUBLISH`/`SSUBSCRIBE` — on a
//! cluster, so a frame goes only to the slot owner, not to every node;
//! classic pub/sub on one server, which works on any Redis version).
//! Frames from one node arrive in the order it published them. A lost
//! subscription gives the inbox a `BusEvent::Reset` and is made again: after
//! the subscriber connection comes back, and on a cluster also when the
//! channel's slot moved to another master (resharding drops sharded
//! subscriptions without closing the connection; the store checks its
//! subscription with `PUBSUB SHARDNUMSUB` every second). The inbox
//! holds at most [`Builder::bus_capacity`] events (default 1024): when it is
//! full the next frames are **dropped** (the reader of Redis is never
//! blocked and nothing grows without bound) and the inbox gets
//! `BusEvent::Reset` before the next frame that fits.
//!
//! # Topics
//!
//! Each topic is a log in Redis: its three keys share the hash tag
//! `{<topic>}`, so every operation is **one Lua script on one slot**.
//! [`publish`](holdfast_server::store::Broker::publish) takes the next
//! offset, appends the message (`XADD` with id `<offset>-0`, trimmed with
//! `MAXLEN ~ history`) and announces it on the topic's channel **from
//! inside the script** — `SPUBLISH` on a cluster (the channel has the
//! topic's hash tag, so it is the script's slot; only that slot's master
//! and the nodes subscribed there carry it), `PUBLISH` on one server — so
//! announcements leave in offset order, whichever node published.
//! [`read`](holdfast_server::store::Broker::read) is an `XRANGE` from an
//! offset. The epoch is a random number below 2^53 chosen by the publish
//! (or join) that creates the log: after Redis lost a log (a restart without
//! persistence, expiry), offsets start again at 1 under another epoch.
//!
//! Each node subscribes to the channels of the topics it has subscribers
//! on, on the store's subscriber connection (sharded subscriptions on a
//! cluster). Resharding drops sharded subscriptions silently, so every
//! second each node asks each master for its own subscriber connection
//! (`CLIENT LIST TYPE pubsub`, the connection found by its name: every
//! connection is named with `CLIENT SETNAME`) and compares its `ssub`
//! count with the number of its channels in that master's slots — not
//! `PUBSUB SHARDNUMSUB`, which counts every node's subscribers, so that
//! one node subscribing again would hide another that did not. Its events go through a
//! bounded queue (4096 events): when it is full, events are dropped and
//! `TopicEvent::Reset` goes before the next one that fits. After every
//! reconnection of the subscriber connection (and every sharded
//! subscription lost to a slot move) the node subscribes again, **then**
//! sends `Reset`: whoever reads the logs on it misses nothing published
//! after.
//!
//! Presence: `join` records the member with this node's id; `leave`
//! removes only a member this node added; `members` lists only members
//! whose node's liveness key exists, and removes the others (announcing
//! it). Each node also sweeps the topics it is subscribed to every
//! `node_ttl`, so that a dead node's members are removed and announced
//! within about two `node_ttl`s even if nobody lists them, and writes back
//! the members it added that Redis lost or other nodes removed while this
//! one seemed dead (after a reconnection, and every `topic_ttl / 4` or
//! 30 s, whichever is shorter; never over a member another node has
//! since). A member's info is at most
//! [`MAX_MEMBER_INFO`](holdfast_server::store::MAX_MEMBER_INFO) bytes: a
//! longer one is refused with `StoreError::Unavailable`.
//!
//! What bounds Redis memory per topic: the log holds about
//! [`Builder::topic_history`] messages (default 1000; `MAXLEN ~` keeps up
//! to one stream node more, 100 entries by default; reads show exactly the
//! last `history`), plus one entry per present member; a topic nobody
//! publishes to, joins, or has members on a live node disappears after
//! `topic_ttl`. Nothing is kept per subscriber or per node.
//!
//! # Why `fred`
//!
//! `fred` 10 and `redis` 0.32 measured equal on the work this store does
//! (one `EVALSHA` round trip ≈ 100 µs on loopback for both, 64 concurrent
//! sessions ≈ 5 µs per op for both). `fred` was chosen because it does in
//! one client what this store needs: a reconnect policy on every
//! connection (cluster ones included) with events a subscriber can act on,
//! per-command timeouts and a bounded command queue, cluster routing with
//! sharded pub/sub, and a per-client command pipeline that concurrent
//! callers share.

mod bus;
mod codec;
mod config;
mod error;
mod keys;
mod liveness;
mod lossy;
mod scripts;
mod store;
mod topics;

pub use config::Builder;
pub use error::Error;
pub use store::RedisStore;
