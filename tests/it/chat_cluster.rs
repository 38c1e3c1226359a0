//! The chat example on a cluster: three `chat --redis` processes sharing a
//! real `redis-server`, behind a real nginx balancing round-robin, and
//! Rust clients on every transport speaking the chat's JSON like the page
//! does. One room for all: every client sees every line exactly once, in
//! one order — also when a node is killed with SIGKILL, or stopped with
//! SIGTERM, mid-conversation (its visitors' sessions continue on the other
//! nodes, their lines in flight included) and restarted. Also: what a
//! moved session holds until its client says who it is, and the chat's
//! limits, with their notices.

use crate::client_support;

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::example_support::ExampleNode as Node;
use crate::nginx_support::{Nginx, Profile};
use holdfast::client::{Event, Message, Sender, TransportKind};
use holdfast_testkit::RedisServer;
use serde_json::{Value, json};

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(60);

/// A chat node (with `redis`: one of several sharing it).
async fn chat_node(redis: Option<&str>) -> Node {
    match redis {
        Some(redis) => Node::start("chat", "chat on http://", &["--redis", redis]).await,
        None => Node::start("chat", "chat on http://", &[]).await,
    }
}

/// What one visitor heard from the room, as the page keeps it.
#[derive(Default)]
struct Heard {
    welcome: Option<Value>,
    /// Entries that came before the welcome (the page shows them after its
    /// history).
    early: Vec<Value>,
    /// Chat, join and leave entries in the order shown: the welcome's
    /// history, then what came live — not deduplicated, so that a
    /// duplicate shows.
    entries: Vec<Value>,
    notices: Vec<String>,
    online: Vec<String>,
    rejoins: u32,
    closed: Option<String>,
}

impl Heard {
    fn chats(&self) -> Vec<&Value> {
        self.entries
            .iter()
            .filter(|e| e["type"] == "chat")
            .collect()
    }

    fn chat_texts(&self) -> Vec<String> {
        self.chats()
            .iter()
            .map(|e| e["text"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

/// A client speaking the chat's JSON, over one transport.
struct Visitor {
    name: String,
    sender: Sender,
    heard: Arc<Mutex<Heard>>,
    /// Answer `rejoin` at once, as the page does.
    answer_rejoin: Arc<AtomicBool>,
    session: String,
}

impl Visitor {
    /// Connects and joins; returns once welcomed.
    async fn join(url: &str, transport: TransportKind, name: &str) -> Visitor {
        let connection = client_support::client(url)
            .transport(transport)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name} connects over {transport:?}: {e}"));
        let session = connection.session_id().expect("a session id");
        let (sender, mut receiver) = connection.split();
        let heard = Arc::new(Mutex::new(Heard::default()));
        let answer_rejoin = Arc::new(AtomicBool::new(true));
        tokio::spawn({
            let heard = heard.clone();
            let answer_rejoin = answer_rejoin.clone();
            let sender = sender.clone();
            let name = name.to_owned();
            async move {
                while let Some(event) = receiver.next_event().await {
                    match event {
                        Event::Message(Message::Text(text)) => {
                            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                                panic!("{name}: not JSON: {text}");
                            };
                            if value["type"] == "rejoin" {
                                heard.lock().expect("heard").rejoins += 1;
                                if answer_rejoin.load(Ordering::SeqCst) {
                                    let answer =
                                        json!({"type": "join", "name": name, "rejoin": true});
                                    let _ = sender.send(answer.to_string()).await;
                                }
                                continue;
                            }
                            heard.lock().expect("heard").take(value);
                        }
                        Event::Closed(closed) => {
                            heard.lock().expect("heard").closed =
                                Some(format!("{} {}", closed.code, closed.reason));
                            return;
                        }
                        _ => {}
                    }
                }
            }
        });
        let visitor = Visitor {
            name: name.to_owned(),
            sender,
            heard,
            answer_rejoin,
            session,
        };
        visitor.send(json!({"type": "join", "name": name})).await;
        visitor
            .wait(|heard| heard.welcome.is_some(), "the welcome")
            .await;
        visitor
    }

    async fn send(&self, value: Value) {
        self.sender
            .send(value.to_string())
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    async fn say(&self, text: &str, cid: &str) {
        self.send(json!({"type": "say", "text": text, "cid": cid}))
            .await;
    }

    /// Waits until `done` holds for what this visitor heard.
    async fn wait(&self, done: impl Fn(&Heard) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            {
                let heard = self.heard.lock().expect("heard");
                if done(&heard) {
                    return;
                }
                if let Some(closed) = &heard.closed {
                    panic!(
                        "{}: session closed ({closed}) waiting for {what}",
                        self.name
                    );
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: timed out waiting for {what}; chats: {:?}, notices: {:?}",
                self.name,
                self.heard.lock().expect("heard").chat_texts(),
                self.heard.lock().expect("heard").notices,
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Heard {
    fn take(&mut self, value: Value) {
        match value["type"].as_str() {
            Some("welcome") => {
                let history = value["history"].as_array().cloned().unwrap_or_default();
                // Entries are shown once by id, history first (as the page).
                let mut ids: HashSet<String> = self.entries.iter().map(id).collect();
                for entry in history.into_iter().chain(std::mem::take(&mut self.early)) {
                    if ids.insert(id(&entry)) {
                        self.entries.push(entry);
                    }
                }
                self.online = names(&value["online"]);
                self.welcome = Some(value);
            }
            Some("chat" | "join" | "leave") if self.welcome.is_none() => self.early.push(value),
            Some("chat" | "join" | "leave") => self.entries.push(value),
            Some("online") => self.online = names(&value["names"]),
            Some("notice") => self
                .notices
                .push(value["text"].as_str().unwrap_or_default().to_owned()),
            _ => panic!("unexpected message from the room: {value}"),
        }
    }
}

fn id(entry: &Value) -> String {
    entry["id"]
        .as_str()
        .expect("entry ids are strings")
        .to_owned()
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The node whose log says it welcomed or took over `session` last.
fn owner(nodes: &[Node], session: &str) -> Option<usize> {
    nodes.iter().position(|node| {
        node.logged(&[session, "joined"]) + node.logged(&[session, "rejoined"]) > 0
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_chat_nodes_share_one_room_across_a_kill_9() {
    conversation(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_chat_nodes_share_one_room_across_a_sigterm_restart() {
    conversation(Stop::Terminate).await;
}

/// How a node goes down mid-conversation.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL: its sessions are taken over once its liveness key expires.
    Kill,
    /// SIGTERM: it hands its sessions over, then exits.
    Terminate,
}

/// Six visitors on three nodes talk; one node goes down (`stop`) with
/// lines on their way to it and comes back: everyone sees every line
/// once, in one order.
async fn conversation(stop: Stop) {
    let redis = RedisServer::start().await.expect("redis-server starts");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(chat_node(Some(&redis.url())).await);
    }
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = Nginx::start_balanced(Profile::WellConfigured, &upstreams).await;

    // Six visitors: two on each transport, their sessions spread over the
    // nodes by the balancer.
    let transports = [
        TransportKind::WebSocket,
        TransportKind::Sse,
        TransportKind::LongPoll,
    ];
    let mut visitors = Vec::new();
    for i in 0..6 {
        let name = format!("v{i}");
        visitors.push(Visitor::join(&nginx.url(), transports[i % 3], &name).await);
    }
    let everyone: Vec<String> = visitors.iter().map(|v| v.name.clone()).collect();
    for visitor in &visitors {
        visitor
            .wait(|heard| heard.online == everyone, "everyone online")
            .await;
    }
    // Kill a node that serves someone.
    let owners: Vec<usize> = visitors
        .iter()
        .map(|v| owner(&nodes, &v.session).expect("a node welcomed each visitor"))
        .collect();
    let victim = owners[0];
    let moved: Vec<&Visitor> = visitors
        .iter()
        .zip(&owners)
        .filter(|(_, owner)| **owner == victim)
        .map(|(v, _)| v)
        .collect();

    // Everyone talks, a line every 40 ms; a third of the way in, the node
    // dies (lines on their way to it included), and comes back later.
    const LINES: usize = 30;
    let talk = |visitor: &Visitor| {
        let sender = visitor.sender.clone();
        let name = visitor.name.clone();
        tokio::spawn(async move {
            for k in 0..LINES {
                let say = json!({"type": "say", "text": format!("{name} line {k}"), "cid": format!("{name}-{k}")});
                sender
                    .send(say.to_string())
                    .await
                    .unwrap_or_else(|e| panic!("{name}: send: {e}"));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    println!(
        "{stop:?}: node {victim}, serving {:?}",
        moved.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    let talking: Vec<_> = visitors.iter().map(talk).collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    match stop {
        Stop::Kill => nodes[victim].kill().await,
        Stop::Terminate => nodes[victim].terminate().await,
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[victim].run().await;
    for task in talking {
        task.await.expect("talking");
    }

    // Every line reaches everyone once, in one order.
    let expected: BTreeSet<String> = everyone
        .iter()
        .flat_map(|name| (0..LINES).map(move |k| format!("{name} line {k}")))
        .collect();
    for visitor in &visitors {
        visitor
            .wait(
                |heard| heard.chat_texts().len() >= expected.len(),
                "every line",
            )
            .await;
    }
    // (Anything doubled would come right after.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let order = visitors[0].heard.lock().expect("heard").chat_texts();
    for visitor in &visitors {
        let heard = visitor.heard.lock().expect("heard");
        let texts = heard.chat_texts();
        assert_eq!(
            texts.len(),
            expected.len(),
            "{}: every line exactly once",
            visitor.name
        );
        assert_eq!(
            texts.iter().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{}: nothing lost",
            visitor.name
        );
        assert_eq!(texts, order, "{}: the same order as v0", visitor.name);
        let ids: HashSet<String> = heard.chats().into_iter().map(id).collect();
        assert_eq!(ids.len(), expected.len(), "{}: distinct ids", visitor.name);
        // Each visitor's own lines in the order said.
        for name in &everyone {
            let own: Vec<&String> = texts
                .iter()
                .filter(|t| t.starts_with(&format!("{name} ")))
                .collect();
            let said: Vec<String> = (0..LINES).map(|k| format!("{name} line {k}")).collect();
            assert_eq!(
                own,
                said.iter().collect::<Vec<_>>(),
                "{name}'s lines in order"
            );
        }
        // A move is no leave, and nobody joined twice.
        assert!(
            !heard.entries.iter().any(|e| e["type"] == "leave"),
            "{}: nobody left",
            visitor.name
        );
        let joins: Vec<String> = heard
            .entries
            .iter()
            .filter(|e| e["type"] == "join")
            .map(id)
            .collect();
        assert_eq!(
            joins.len(),
            joins.iter().collect::<HashSet<_>>().len(),
            "{}: one join each: {joins:?}",
            visitor.name
        );
        assert!(
            heard.notices.is_empty(),
            "{}: notices {:?}",
            visitor.name,
            heard.notices
        );
        // Welcomed once: the moved ones were asked who they are instead.
        let moved_here = moved.iter().any(|v| v.name == visitor.name);
        assert_eq!(
            heard.rejoins,
            u32::from(moved_here),
            "{}: asked who it is only if moved",
            visitor.name
        );
    }
    // The dead node's visitors continued elsewhere, and are online again.
    assert!(!moved.is_empty());
    for visitor in &moved {
        let continued: usize = nodes
            .iter()
            .map(|node| node.logged(&[&visitor.session, "rejoined"]))
            .sum();
        assert_eq!(continued, 1, "{} continued on another node", visitor.name);
        if let Stop::Terminate = stop {
            // Its handler on the stopped node knew it moved (no "left").
            assert_eq!(
                nodes[victim].logged(&[&visitor.session, "moved to another node"]),
                1,
                "{} handed over",
                visitor.name
            );
        }
    }
    for visitor in &visitors {
        visitor
            .wait(|heard| heard.online == everyone, "everyone online again")
            .await;
    }
    let republished: usize = nodes
        .iter()
        .map(|node| node.logged(&["a line the last node published already"]))
        .sum();
    println!("lines a moved session found published already: {republished}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_session_keeps_at_most_64_lines_until_it_says_who_it_is() {
    let redis = RedisServer::start().await.expect("redis-server starts");
    let mut nodes = vec![
        chat_node(Some(&redis.url())).await,
        chat_node(Some(&redis.url())).await,
    ];
    let upstreams: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let nginx = Nginx::start_balanced(Profile::WellConfigured, &upstreams).await;
    let ada = Visitor::join(&nginx.url(), TransportKind::WebSocket, "Ada").await;
    let grace = Visitor::join(&nginx.url(), TransportKind::LongPoll, "Grace").await;
    let victim = owner(&nodes, &ada.session).expect("Ada's node");

    // Ada's node dies; she says 70 lines before answering who she is.
    ada.answer_rejoin.store(false, Ordering::SeqCst);
    nodes[victim].kill().await;
    for k in 0..70 {
        ada.say(&format!("held {k}"), &format!("h{k}")).await;
    }
    ada.wait(|heard| heard.rejoins == 1, "the question").await;
    ada.wait(
        |heard| heard.notices.len() == 6,
        "a notice for each line past 64",
    )
    .await;
    assert!(
        ada.heard.lock().expect("heard").notices[0].contains("at most 64 messages wait"),
        "{:?}",
        ada.heard.lock().expect("heard").notices
    );
    ada.send(json!({"type": "join", "name": "Ada", "rejoin": true}))
        .await;
    let kept: Vec<String> = (0..64).map(|k| format!("held {k}")).collect();
    for visitor in [&ada, &grace] {
        visitor
            .wait(|heard| heard.chat_texts().len() >= 64, "the 64 kept lines")
            .await;
    }
    ada.say("after", "after").await;
    for visitor in [&ada, &grace] {
        visitor
            .wait(|heard| heard.chat_texts().len() >= 65, "the next line")
            .await;
        let texts = visitor.heard.lock().expect("heard").chat_texts();
        assert_eq!(texts[..64], kept[..], "{}", visitor.name);
        assert_eq!(texts[64..], ["after".to_owned()], "{}", visitor.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_s_limits_come_with_notices() {
    let node = chat_node(None).await;
    let url = node.url();
    let observer = Visitor::join(&url, TransportKind::LongPoll, "Observer").await;
    let connection = client_support::client(&url)
        .transport(TransportKind::WebSocket)
        .connect()
        .await
        .expect("connects");
    let (sender, mut receiver) = connection.split();
    let mut next = async move || -> Value {
        loop {
            let event = tokio::time::timeout(DEADLINE, receiver.next_event())
                .await
                .expect("an answer in time")
                .expect("the session goes on");
            if let Event::Message(Message::Text(text)) = event {
                return serde_json::from_str(&text).expect("JSON");
            }
        }
    };
    let send = |value: Value| {
        let sender = sender.clone();
        async move { sender.send(value.to_string()).await.expect("send") }
    };
    // A name of 33 characters, none, or a say first: who are you?
    for first in [
        json!({"type": "join", "name": "x".repeat(33)}),
        json!({"type": "join", "name": " \u{7} "}),
        json!({"type": "say", "text": "hi"}),
    ] {
        send(first).await;
        let notice = next().await;
        assert_eq!(notice["type"], "notice");
        assert!(
            notice["text"]
                .as_str()
                .is_some_and(|t| t.contains("a name of 1 to 32 characters")),
            "{notice}"
        );
    }
    // 32 characters is a name.
    let name = "y".repeat(32);
    send(json!({"type": "join", "name": name})).await;
    let welcome = next().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["you"], name.as_str());
    let joined = next().await;
    assert_eq!(joined["type"], "join");
    // 2001 characters is too long; 2000 is not.
    send(json!({"type": "say", "text": "é".repeat(2001), "cid": "long"})).await;
    let notice = next().await;
    assert_eq!(notice["text"], "messages are at most 2000 characters");
    send(json!({"type": "say", "text": "é".repeat(2000), "cid": "c".repeat(64)})).await;
    let chat = next().await;
    assert_eq!(chat["type"], "chat");
    assert_eq!(chat["cid"], "c".repeat(64));
    assert_eq!(chat["text"].as_str().map(|t| t.chars().count()), Some(2000));
    // A cid over 64 bytes is dropped, the line is not.
    send(json!({"type": "say", "text": "short", "cid": "c".repeat(65)})).await;
    let chat = next().await;
    assert_eq!(chat["text"], "short");
    assert!(chat.get("cid").is_none(), "{chat}");
    // Not JSON, or an unknown request.
    sender.send("hello").await.expect("send");
    assert_eq!(next().await["text"], "messages are JSON text");
    send(json!({"type": "dance"})).await;
    assert_eq!(next().await["text"], "unknown request \"dance\"");
    // Leaving (the session ends): the room hears it, and who is online.
    sender.close().await;
    observer
        .wait(
            |heard| {
                heard
                    .entries
                    .iter()
                    .any(|e| e["type"] == "leave" && e["name"] == name.as_str())
            },
            "the leave",
        )
        .await;
    observer
        .wait(
            |heard| heard.online == ["Observer"],
            "only the observer online",
        )
        .await;
    assert_eq!(
        observer.heard.lock().expect("heard").chat_texts().len(),
        2,
        "the two lines said"
    );
}
