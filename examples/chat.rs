//! A chat room in the browser, on whatever transport each visitor's network
//! allows.
//!
//! ```text
//! cargo run --example chat                      # http://127.0.0.1:3000
//! cargo run --example chat -- --addr 0.0.0.0:8080
//! ```
//!
//! Open the page in a few tabs, pick a name, talk. Add `?transport=sse` or
//! `?transport=long-poll` (or `websocket`) to force one: people on different
//! transports share the room. The page shows its transport and connection
//! state live; stop the server for a few seconds or switch the network off
//! and on, and the conversation picks up where it was — no message lost or
//! shown twice.
//!
//! Wire format between the page and the room, one JSON text message each:
//!
//! ```text
//! page → room   {"type":"join","name":"Ada"}            first, once
//!               {"type":"say","text":"hello","cid":"k3x9"}
//! room → page   {"type":"welcome","you":"Ada","history":[…],"online":[…]}
//!               {"type":"chat","id":7,"at":1700000000000,"name":"Ada","text":"hello","cid":"k3x9"}
//!               {"type":"join"|"leave","id":8,"at":…,"name":"Grace"}
//!               {"type":"online","names":["Ada","Grace"]}
//!               {"type":"notice","text":"…"}
//! ```
//!
//! `cid` is the page's own id for a message it sent (optional, at most 64
//! characters): the page shows the message at once as "sending" and marks
//! it sent when the room's copy comes back.
//!
//! The room keeps a log of recent events with increasing ids; each session's
//! task forwards the log to its client with `send().await`, so a slow client
//! slows only itself and never misses an event, and the last
//! [`HISTORY`] chat messages greet everyone who joins.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use holdfast::server::{Holdfast, Message, Session};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// Chat messages shown to someone who joins.
const HISTORY: usize = 50;
/// Events kept for sessions that fall behind (then they get a notice).
const LOG: usize = 1000;
/// Longest name, in characters.
const MAX_NAME: usize = 32;
/// Longest message, in characters.
const MAX_TEXT: usize = 2000;
/// Longest client message id, in bytes.
const MAX_CID: usize = 64;

/// The page: one self-contained file, no external assets.
const PAGE: &str = include_str!("chat/index.html");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let addr = parse_addr()?;

    let room = Arc::new(Room::new());
    let holdfast = Holdfast::builder().on_session({
        let room = room.clone();
        move |session| serve(room.clone(), session)
    });
    let app = axum::Router::new()
        .route("/", axum::routing::get(page))
        .nest("/realtime", holdfast.router());

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!("chat on http://{}", listener.local_addr()?);
    // TCP_NODELAY, header and write deadlines, a connection limit.
    holdfast::server::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            holdfast.shutdown();
        })
        .await?;
    Ok(())
}

async fn page() -> Response {
    let mut response = Html(PAGE).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One event in the room's log.
#[derive(Clone)]
struct Entry {
    id: u64,
    /// Milliseconds since the Unix epoch.
    at: u64,
    kind: Kind,
    name: String,
    text: String,
    /// The sender's own id for a chat message.
    cid: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Join,
    Leave,
}

impl Entry {
    fn to_json(&self) -> Value {
        let kind = match self.kind {
            Kind::Chat => "chat",
            Kind::Join => "join",
            Kind::Leave => "leave",
        };
        let mut value = json!({ "type": kind, "id": self.id, "at": self.at, "name": self.name });
        if self.kind == Kind::Chat {
            value["text"] = json!(self.text);
        }
        if let Some(cid) = &self.cid {
            value["cid"] = json!(cid);
        }
        value
    }
}

/// The room: its log, who is in it, and a signal for each change.
struct Room {
    state: Mutex<RoomState>,
    /// The id of the newest entry; changes wake every session's task.
    latest: watch::Sender<u64>,
    /// Who is online, sorted.
    online: watch::Sender<Vec<String>>,
}

struct RoomState {
    next_id: u64,
    log: VecDeque<Entry>,
    /// Session id → name.
    members: BTreeMap<String, String>,
}

impl Room {
    fn new() -> Self {
        Self {
            state: Mutex::new(RoomState {
                next_id: 1,
                log: VecDeque::new(),
                members: BTreeMap::new(),
            }),
            latest: watch::Sender::new(0),
            online: watch::Sender::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an entry to the log and wakes everyone.
    fn push(&self, state: &mut RoomState, kind: Kind, name: &str, text: &str, cid: Option<&str>) {
        let id = state.next_id;
        state.next_id += 1;
        state.log.push_back(Entry {
            id,
            at: now_ms(),
            kind,
            name: name.to_owned(),
            text: text.to_owned(),
            cid: cid.map(str::to_owned),
        });
        if state.log.len() > LOG {
            state.log.pop_front();
        }
        self.latest.send_replace(id);
    }

    /// Someone joined: announces them; returns the recent chat history
    /// and the id of the first entry they have not seen.
    fn join(&self, session: &str, name: &str) -> (Vec<Value>, u64) {
        let mut state = self.lock();
        let history: Vec<Value> = {
            let chats: Vec<&Entry> = state
                .log
                .iter()
                .rev()
                .filter(|e| e.kind == Kind::Chat)
                .take(HISTORY)
                .collect();
            chats.into_iter().rev().map(Entry::to_json).collect()
        };
        let next = state.next_id;
        state.members.insert(session.to_owned(), name.to_owned());
        self.push(&mut state, Kind::Join, name, "", None);
        self.publish_online(&state);
        (history, next)
    }

    fn leave(&self, session: &str) {
        let mut state = self.lock();
        if let Some(name) = state.members.remove(session) {
            self.push(&mut state, Kind::Leave, &name, "", None);
            self.publish_online(&state);
        }
    }

    fn say(&self, name: &str, text: &str, cid: Option<&str>) {
        let mut state = self.lock();
        self.push(&mut state, Kind::Chat, name, text, cid);
    }

    fn publish_online(&self, state: &RoomState) {
        let mut names: Vec<String> = state.members.values().cloned().collect();
        names.sort_by_key(|n| n.to_lowercase());
        names.dedup();
        self.online.send_replace(names);
    }

    /// Entries from id `next` on, and how many older ones were dropped
    /// from the log before this reader got to them.
    fn since(&self, next: u64) -> (Vec<Entry>, u64) {
        let state = self.lock();
        let oldest = state.log.front().map_or(state.next_id, |e| e.id);
        let missed = oldest.saturating_sub(next);
        let entries = state.log.iter().filter(|e| e.id >= next).cloned().collect();
        (entries, missed)
    }
}

/// One visitor: waits for their name, then forwards the room to them and
/// their messages to the room, until the session ends.
async fn serve(room: Arc<Room>, session: Session) {
    let Some(name) = wait_for_join(&session).await else {
        return;
    };
    // Subscribe before the snapshot, so nothing falls between the two.
    let mut latest = room.latest.subscribe();
    let mut online = room.online.subscribe();
    let (history, mut next) = room.join(session.id(), &name);
    tracing::info!(session = session.id(), %name, "joined");
    let welcome = json!({
        "type": "welcome",
        "you": name,
        "history": history,
        "online": *online.borrow_and_update(),
    });
    if send(&session, &welcome).await {
        loop {
            let (entries, missed) = room.since(next);
            if missed > 0 {
                let text = format!("{missed} events went by while you were away");
                if !send(&session, &json!({ "type": "notice", "text": text })).await {
                    break;
                }
            }
            let mut gone = false;
            for entry in entries {
                next = entry.id + 1;
                if !send(&session, &entry.to_json()).await {
                    gone = true;
                    break;
                }
            }
            if gone {
                break;
            }
            tokio::select! {
                message = session.recv() => match message {
                    Some(message) => {
                        if let Err(problem) = say(&room, &name, &message) {
                            let notice = json!({ "type": "notice", "text": problem });
                            if !send(&session, &notice).await {
                                break;
                            }
                        }
                    }
                    None => break,
                },
                changed = latest.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                changed = online.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let names = online.borrow_and_update().clone();
                    if !send(&session, &json!({ "type": "online", "names": names })).await {
                        break;
                    }
                }
            }
        }
    }
    room.leave(session.id());
    tracing::info!(session = session.id(), %name, "left");
}

/// The first message must be `{"type":"join","name":…}`.
async fn wait_for_join(session: &Session) -> Option<String> {
    loop {
        let message = session.recv().await?;
        let request = parse(&message);
        let name = request
            .as_ref()
            .filter(|r| r["type"] == "join")
            .and_then(|r| r["name"].as_str())
            .map(clean);
        match name {
            Some(name) if !name.is_empty() && name.chars().count() <= MAX_NAME => {
                return Some(name);
            }
            _ => {
                let text = format!("say who you are first: a name of 1 to {MAX_NAME} characters");
                if !send(session, &json!({ "type": "notice", "text": text })).await {
                    return None;
                }
            }
        }
    }
}

/// A message from a member: `{"type":"say","text":…,"cid":…}`.
fn say(room: &Room, name: &str, message: &Message) -> Result<(), String> {
    let request = parse(message).ok_or("messages are JSON text")?;
    if request["type"] != "say" {
        return Err(format!("unknown request {}", request["type"]));
    }
    let text = request["text"].as_str().map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(());
    }
    if text.chars().count() > MAX_TEXT {
        return Err(format!("messages are at most {MAX_TEXT} characters"));
    }
    let cid = request["cid"].as_str().filter(|c| c.len() <= MAX_CID);
    room.say(name, text, cid);
    Ok(())
}

fn parse(message: &Message) -> Option<Value> {
    serde_json::from_str(message.as_text()?).ok()
}

/// A name without control characters or surrounding spaces.
fn clean(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Sends one JSON message; `false` once the session is over.
async fn send(session: &Session, value: &Value) -> bool {
    session.send(value.to_string()).await.is_ok()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn parse_addr() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:3000".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .ok_or("--addr needs a value, like 127.0.0.1:3000")?
            }
            "-h" | "--help" => {
                println!("usage: chat [--addr HOST:PORT]   (default 127.0.0.1:3000)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    addr.parse()
        .map_err(|e| format!("--addr {addr:?} is not HOST:PORT: {e}"))
}
