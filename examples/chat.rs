//! A chat room in the browser, on whatever transport each visitor's network
//! allows — on one node, or on several sharing a Redis.
//!
//! ```text
//! cargo run --example chat                      # http://127.0.0.1:3000
//! cargo run --example chat -- --addr 0.0.0.0:8080
//! cargo run --example chat -- --addr 127.0.0.1:3001 --redis redis://127.0.0.1:6379
//! cargo run --example chat -- --addr 127.0.0.1:3002 --redis redis://127.0.0.1:6379
//! ```
//!
//! Open the page in a few tabs, pick a name, talk. Add `?transport=sse` or
//! `?transport=long-poll` (or `websocket`) to force one: people on different
//! transports share the room. The page shows its transport and connection
//! state live; stop the server for a few seconds or switch the network off
//! and on, and the conversation picks up where it was — no message lost or
//! shown twice.
//!
//! With `--redis`, every node sharing that Redis serves the same room:
//! history, who is online and every message, whatever node and transport
//! each visitor is on — and, when it is on a fallback, why ("on SSE:
//! WebSocket upgrade refused"), which this server logs too, from the
//! report the page's client sends it (`Session::fallbacks`). Stop a node (SIGTERM or Ctrl-C: it hands its
//! visitors over) or kill it, and its visitors carry on without noticing —
//! on another node if a load balancer sends them there, else on this one
//! when it is back (see `docs/scaling.md`). Without `--redis` the room
//! lives in this one process.
//!
//! Wire format between the page and the room, one JSON text message each:
//!
//! ```text
//! page → room   {"type":"join","name":"Ada"}            first, once
//!               {"type":"say","text":"hello","cid":"k3x9"}
//!               {"type":"join","name":"Ada","rejoin":true}   answering "rejoin"
//! room → page   {"type":"welcome","you":"Ada","history":[…],"online":[…]}
//!               {"type":"chat","id":"…","at":1700000000000,"name":"Ada","text":"hello","cid":"k3x9"}
//!               {"type":"join"|"leave","id":"…","at":…,"name":"Grace"}
//!               {"type":"online","names":["Ada","Grace"]}
//!               {"type":"notice","text":"…"}
//!               {"type":"rejoin"}
//! ```
//!
//! `id` is a string, unique in the room: the page shows an entry once even
//! if it comes twice (in the welcome's history and live, say). `cid` is the
//! page's own id for a message it sent (optional, at most 64 bytes): the
//! page shows the message at once as "sending" and marks it sent when the
//! room's copy comes back. A message with a `cid` is in the room once even
//! if a node dies while publishing it.
//!
//! `rejoin` comes when the visitor's session moved to this node from one
//! that stopped or died: this node does not know the visitor's name, and
//! asks. The page answers with its join, marked `rejoin`; it gets no second
//! welcome, and the room no second "joined" line.
//!
//! The room is a [`Topic`]: every entry is published to it once and every
//! member's session gets it from there, in one order for everyone, exactly
//! once — also across a move to another node. A member that cannot keep up
//! (its unacknowledged messages fill the session's buffer) is disconnected
//! rather than slowing the room. Who is online is the topic's presence. The
//! last [`HISTORY`] chat messages greet everyone who joins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use holdfast::server::store::{DEFAULT_HISTORY, Member, Store as _};
use holdfast::server::{Cause, Fallback, Holdfast, Message, Session, Topic, TopicError};
use serde_json::{Value, json};
use tracing_subscriber::EnvFilter;

/// The room's topic.
const ROOM: &str = "chat";
/// Chat messages shown to someone who joins.
const HISTORY: usize = 50;
/// Longest name, in characters.
const MAX_NAME: usize = 32;
/// Longest message, in characters.
const MAX_TEXT: usize = 2000;
/// Longest client message id, in bytes.
const MAX_CID: usize = 64;
/// Messages a moved session keeps while its page says who it is (the
/// page answers at once; past this they are refused with a notice).
const MAX_HELD: usize = 64;
/// Attempts at a topic operation while the store is unavailable (with
/// backoff: about 15 seconds in all).
const ATTEMPTS: u32 = 20;

/// The page: one self-contained file, no external assets.
const PAGE: &str = include_str!("chat/index.html");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = parse_args()?;
    // Before the server is built: its metrics bind to the recorder there is.
    let metrics = prometheus()?;

    let mut builder = Holdfast::builder();
    if let Some(url) = &args.redis {
        // One node of several: sessions and the room live in Redis.
        let store = holdfast_redis::RedisStore::connect(url)
            .await
            .map_err(|error| format!("cannot use Redis at {url}: {error}"))?;
        tracing::info!(
            node = store.node_id(),
            "room and sessions kept in Redis at {url}"
        );
        builder = builder.store(Arc::clone(&store) as _);
    }
    let clustered = args.redis.is_some();
    let holdfast = builder.on_session(serve);
    let app = axum::Router::new()
        .route("/", axum::routing::get(page))
        .route("/metrics", metrics)
        .nest("/realtime", holdfast.router());

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!("chat on http://{addr}");
    tracing::info!("Prometheus metrics on http://{addr}/metrics");
    // TCP_NODELAY, header and write deadlines, a connection limit.
    holdfast::server::serve(listener, app)
        .with_graceful_shutdown(async move {
            stopped().await;
            if clustered {
                // Visitors continue on the other nodes.
                holdfast.hand_over().await;
            } else {
                holdfast.shutdown();
            }
        })
        .await?;
    Ok(())
}

/// Installs the Prometheus exporter as the process's metrics recorder;
/// the route that serves its text (`GET /metrics`).
fn prometheus() -> Result<axum::routing::MethodRouter, Box<dyn std::error::Error>> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Buckets for holdfast's `_seconds` histograms (0.5 ms to 30 s): without
    // them the exporter writes summaries, which cannot be added up across
    // nodes (docs/operations.md).
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("holdfast_".to_owned()), BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Drains the histograms' samples into their buckets.
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(axum::routing::get(move || {
        let text = handle.render();
        async move { ([("content-type", "text/plain; version=0.0.4")], text) }
    }))
}

/// Ctrl-C or SIGTERM (what a deploy sends).
async fn stopped() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn page() -> Response {
    let mut response = Html(PAGE).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One entry of the room, as published to its topic.
fn entry(kind: &str, id: &str, name: &str, text: Option<&str>, cid: Option<&str>) -> String {
    let mut value = json!({ "type": kind, "id": id, "at": now_ms(), "name": name });
    if let Some(text) = text {
        value["text"] = json!(text);
    }
    if let Some(cid) = cid {
        value["cid"] = json!(cid);
    }
    value.to_string()
}

/// A chat line checked and waiting to be published.
struct Line {
    id: String,
    text: String,
    cid: Option<String>,
    /// It may be the message the last node was processing when the
    /// session moved: it may be in the room already.
    maybe_published: bool,
}

/// The session is over (a send failed).
struct Gone;

/// One visitor: their session, the room, and what this node knows of them.
struct Visitor {
    session: Session,
    room: Topic,
    /// Known once they said who they are (on this node).
    name: Option<String>,
    /// Lines of a moved session that came before its page said who it is.
    held: Vec<Line>,
    /// The next message taken is the first on this node of a moved
    /// session: the one the last node was processing, perhaps.
    first_after_move: bool,
    /// The names last sent as online.
    online: Vec<String>,
}

/// Forwards the visitor's messages to the room, and who is online to the
/// visitor, until the session ends; the room itself reaches the visitor
/// through the topic.
async fn serve(session: Session) {
    let fallbacks = session.fallbacks();
    if !fallbacks.is_empty() {
        // What an operator wants to know about a visitor behind a proxy.
        tracing::info!(
            session = session.id(),
            fallbacks = %fallback_words(&fallbacks),
            "on a fallback transport"
        );
    }
    let room = match session.topic(ROOM) {
        Ok(room) => room,
        Err(error) => {
            tracing::error!(%error, "no room");
            return;
        }
    };
    let mut presence = room.watch_presence();
    let continued = session.continued();
    let mut visitor = Visitor {
        session,
        room,
        name: None,
        held: Vec::new(),
        first_after_move: continued,
        online: Vec::new(),
    };
    if continued && visitor.moved_here().await.is_err() {
        return;
    }
    let session = visitor.session.clone();
    loop {
        tokio::select! {
            message = session.recv() => {
                let Some(message) = message else { break };
                if visitor.take(message).await.is_err() {
                    break;
                }
            }
            event = presence.next(), if visitor.name.is_some() => {
                if event.is_none() {
                    break;
                }
                if visitor.online_changed(presence.members()).await.is_err() {
                    break;
                }
            }
        }
    }
    visitor.ended().await;
}

impl Visitor {
    /// A session taken over from another node: its place in the room
    /// resumes at once (what it missed comes first), and the page is
    /// asked who it is — this node never heard.
    async fn moved_here(&mut self) -> Result<(), Gone> {
        tracing::info!(session = self.session.id(), "continues here");
        match retry(|| self.room.subscribe(&self.session)).await {
            Ok(subscribed) if subscribed.missed > 0 => {
                let text = format!("{} events went by while you were away", subscribed.missed);
                self.notice(&text).await?;
            }
            Ok(_) => {}
            Err(error) => return self.unavailable(error).await,
        }
        self.send(&json!({ "type": "rejoin" })).await
    }

    /// One message from the page.
    async fn take(&mut self, message: Message) -> Result<(), Gone> {
        let first_after_move = std::mem::take(&mut self.first_after_move);
        let Some(request) = parse(&message) else {
            return match self.name {
                Some(_) => self.notice("messages are JSON text").await,
                None => self.who_are_you().await,
            };
        };
        match (request["type"].as_str(), self.name.is_some()) {
            (Some("join"), false) => self.join(&request).await,
            // The page answering "rejoin" after its first join came again
            // (or after a second move): who is online may have changed.
            (Some("join"), true) if request["rejoin"] == true => {
                let names = self.names(&self.current_members().await);
                self.online.clear();
                self.send_online(names).await
            }
            (Some("say"), false) if self.session.continued() => {
                match self.line(&request, first_after_move) {
                    Ok(Some(_)) if self.held.len() >= MAX_HELD => {
                        let text = format!(
                            "at most {MAX_HELD} messages wait while the room asks who you are"
                        );
                        self.notice(&text).await
                    }
                    Ok(Some(line)) => {
                        self.held.push(line);
                        Ok(())
                    }
                    Ok(None) => Ok(()),
                    Err(problem) => self.notice(&problem).await,
                }
            }
            (_, false) => self.who_are_you().await,
            (Some("say"), true) => match self.line(&request, first_after_move) {
                Ok(Some(line)) => self.say(line).await,
                Ok(None) => Ok(()),
                Err(problem) => self.notice(&problem).await,
            },
            (kind, true) => {
                let text = format!("unknown request {}", json!(kind));
                self.notice(&text).await
            }
        }
    }

    /// `{"type":"join","name":…}`: a new member, or (with `rejoin`) one
    /// whose session moved here.
    async fn join(&mut self, request: &Value) -> Result<(), Gone> {
        let name = request["name"].as_str().map(clean).unwrap_or_default();
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return self.who_are_you().await;
        }
        self.name = Some(name.clone());
        if let Err(error) = retry(|| self.room.subscribe_as(&self.session, name.clone())).await {
            return self.unavailable(error).await;
        }
        if request["rejoin"] == true && self.session.continued() {
            // The page was welcomed by the last node: it only needs what
            // changed, and the lines it said meanwhile published.
            tracing::info!(session = self.session.id(), name = %name.escape_debug(), "rejoined");
            for line in std::mem::take(&mut self.held) {
                self.say(line).await?;
            }
            let names = self.names(&self.current_members().await);
            return self.send_online(names).await;
        }
        tracing::info!(session = self.session.id(), name = %name.escape_debug(), "joined");
        // Subscribed first, then the history: what was published in
        // between comes twice (the page shows it once), nothing falls
        // between the two.
        let recent = match retry(|| recent_chats(&self.room)).await {
            Ok(recent) => recent,
            Err(error) => return self.unavailable(error).await,
        };
        let names = self.names(&self.current_members().await);
        self.online = names.clone();
        let welcome = json!({
            "type": "welcome",
            "you": name,
            "history": recent.chats,
            "online": names,
        });
        self.send(&welcome).await?;
        // After a takeover this join may be the one the last node was
        // processing: announce it once.
        let id = format!("{}:join", self.session.id());
        if !recent.ids.contains(&id) {
            let entry = entry("join", &id, &name, None, None);
            if let Err(error) = retry(|| self.room.publish(entry.clone())).await {
                return self.unavailable(error).await;
            }
        }
        // (A page that said something before its first join: now it is
        // said.)
        for line in std::mem::take(&mut self.held) {
            self.say(line).await?;
        }
        Ok(())
    }

    /// Checks `{"type":"say","text":…,"cid":…}`: the line to publish, none
    /// for an empty text, or what is wrong with it.
    fn line(&self, request: &Value, maybe_published: bool) -> Result<Option<Line>, String> {
        let text = request["text"].as_str().map(str::trim).unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        if text.chars().count() > MAX_TEXT {
            return Err(format!("messages are at most {MAX_TEXT} characters"));
        }
        let cid = request["cid"].as_str().filter(|c| c.len() <= MAX_CID);
        // Unique in the room: the session's id is. With the page's own id
        // it is also the same if this line is published again after a
        // takeover, so that it can be recognised.
        let id = match cid {
            Some(cid) => format!("{}:c:{cid}", self.session.id()),
            None => format!("{}:r:{:016x}", self.session.id(), rand::random::<u64>()),
        };
        Ok(Some(Line {
            id,
            text: text.to_owned(),
            cid: cid.map(str::to_owned),
            maybe_published,
        }))
    }

    /// Publishes a line to the room (unless it is there already).
    async fn say(&mut self, line: Line) -> Result<(), Gone> {
        let Some(name) = self.name.clone() else {
            return Ok(());
        };
        if line.maybe_published && line.cid.is_some() {
            match retry(|| recent_ids(&self.room)).await {
                Ok(ids) if ids.contains(&line.id) => {
                    tracing::info!(
                        session = self.session.id(),
                        "a line the last node published already"
                    );
                    return Ok(());
                }
                Ok(_) => {}
                Err(error) => return self.unavailable(error).await,
            }
        }
        let entry = entry(
            "chat",
            &line.id,
            &name,
            Some(&line.text),
            line.cid.as_deref(),
        );
        match retry(|| self.room.publish(entry.clone())).await {
            Ok(_) => Ok(()),
            Err(error) => self.unavailable(error).await,
        }
    }

    /// Presence changed: tells the page if the names did.
    async fn online_changed(&mut self, members: &[Member]) -> Result<(), Gone> {
        let names = self.names(members);
        self.send_online(names).await
    }

    async fn send_online(&mut self, names: Vec<String>) -> Result<(), Gone> {
        if names == self.online {
            return Ok(());
        }
        self.online = names.clone();
        self.send(&json!({ "type": "online", "names": names }))
            .await
    }

    /// The members now, as the store says (this node's last view if it
    /// cannot be reached).
    async fn current_members(&self) -> Vec<Member> {
        match retry(|| self.room.members()).await {
            Ok(members) => members,
            Err(_) => self.room.watch_presence().members().to_vec(),
        }
    }

    /// Distinct names of the members, this visitor's included, sorted.
    fn names(&self, members: &[Member]) -> Vec<String> {
        let mut names: Vec<String> = members
            .iter()
            .map(|member| member.info.clone())
            .chain(self.name.clone())
            // A moved session is listed without a name until its page
            // answered.
            .filter(|name| !name.is_empty())
            .collect();
        names.sort_by(|a, b| a.to_lowercase().cmp(&b.to_lowercase()).then(a.cmp(b)));
        names.dedup();
        names
    }

    /// The session ended here: says so in the room, unless it only moved
    /// to another node (its handler there carries on).
    async fn ended(self) {
        let Some(name) = self.name else {
            return;
        };
        // A session handed over ends here a moment after `recv` stops:
        // not knowing, better no "left" line than a wrong one.
        let end = tokio::time::timeout(Duration::from_secs(5), self.session.closed()).await;
        let Ok(end) = end else {
            return;
        };
        if end.moved() {
            tracing::info!(session = self.session.id(), name = %name.escape_debug(), "moved to another node");
            return;
        }
        let id = format!("{}:leave", self.session.id());
        let entry = entry("leave", &id, &name, None, None);
        if let Err(error) = retry(|| self.room.publish(entry.clone())).await {
            tracing::warn!(%error, "could not say that someone left");
        }
        tracing::info!(session = self.session.id(), name = %name.escape_debug(), "left");
    }

    async fn who_are_you(&self) -> Result<(), Gone> {
        let text = format!("say who you are first: a name of 1 to {MAX_NAME} characters");
        self.notice(&text).await
    }

    /// The room cannot be reached: the visitor hears of it; the session
    /// goes on.
    async fn unavailable(&self, error: TopicError) -> Result<(), Gone> {
        tracing::warn!(session = self.session.id(), %error, "room unavailable");
        self.notice("the room is unavailable right now: try again in a moment")
            .await
    }

    async fn notice(&self, text: &str) -> Result<(), Gone> {
        self.send(&json!({ "type": "notice", "text": text })).await
    }

    /// Sends one JSON message; `Gone` once the session is over.
    async fn send(&self, value: &Value) -> Result<(), Gone> {
        self.session.send(value.to_string()).await.map_err(|_| Gone)
    }
}

/// The room's recent chat messages, for a welcome.
struct Recent {
    /// The last [`HISTORY`] chat messages, oldest first.
    chats: Vec<Value>,
    /// The ids of every entry read.
    ids: Vec<String>,
}

/// Reads back through the room's history until [`HISTORY`] chat messages
/// are found (or the history ends).
async fn recent_chats(room: &Topic) -> Result<Recent, TopicError> {
    let mut count = HISTORY * 2;
    loop {
        let entries = room.history(count).await?;
        let values: Vec<Value> = entries
            .iter()
            .filter_map(|(_, message)| parse(message))
            .collect();
        let chats = values.iter().filter(|v| v["type"] == "chat").count();
        if chats >= HISTORY || entries.len() < count || count >= DEFAULT_HISTORY {
            let ids = values
                .iter()
                .filter_map(|v| v["id"].as_str().map(str::to_owned))
                .collect();
            let mut chats: Vec<Value> =
                values.into_iter().filter(|v| v["type"] == "chat").collect();
            chats.drain(..chats.len().saturating_sub(HISTORY));
            return Ok(Recent { chats, ids });
        }
        count = (count * 2).min(DEFAULT_HISTORY);
    }
}

/// The ids of the entries in the room's history.
async fn recent_ids(room: &Topic) -> Result<Vec<String>, TopicError> {
    Ok(room
        .history(DEFAULT_HISTORY)
        .await?
        .iter()
        .filter_map(|(_, message)| parse(message))
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect())
}

/// Runs a topic operation until it works, while the store is unavailable
/// (backing off from 50 ms to 1 s, [`ATTEMPTS`] times at most).
async fn retry<T, F, Fut>(mut operation: F) -> Result<T, TopicError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TopicError>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match operation().await {
            Err(TopicError::Unavailable(_)) if attempt < ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn parse(message: &Message) -> Option<Value> {
    serde_json::from_str(message.as_text()?).ok()
}

/// A client's fallback report for the log, e.g. `websocket->sse: status
/// 403, sse->long-poll: no_first_frame` (closed sets and numbers only: no
/// client text reaches the log).
fn fallback_words(fallbacks: &[Fallback]) -> String {
    let words: Vec<String> = fallbacks
        .iter()
        .map(|step| {
            let detail = match step.cause {
                Cause::Status(status) => format!(" {status}"),
                Cause::Detached(code) | Cause::Refused(code) => format!(" {}", code.0),
                _ => String::new(),
            };
            format!("{}->{}: {}{detail}", step.from, step.to, step.cause.label())
        })
        .collect();
    words.join(", ")
}

/// A name without control characters or surrounding spaces.
fn clean(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct Args {
    addr: SocketAddr,
    redis: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_owned();
    let mut redis = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .ok_or("--addr needs a value, like 127.0.0.1:3000")?
            }
            "--redis" => {
                redis = Some(
                    args.next()
                        .ok_or("--redis needs a value, like redis://127.0.0.1:6379")?,
                )
            }
            "-h" | "--help" => {
                println!(
                    "usage: chat [--addr HOST:PORT] [--redis URL]\n\
                     \n\
                     --addr   where to listen (default 127.0.0.1:3000)\n\
                     --redis  share the room with every node using this Redis\n\
                     \x20        (redis://host:port, or redis-cluster://host:port for a\n\
                     \x20        Redis Cluster); without it the room is in this process"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("--addr {addr:?} is not HOST:PORT: {e}"))?;
    Ok(Args { addr, redis })
}
