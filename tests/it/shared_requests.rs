//! Shared requests (`PROTOCOL.md` §11): several sessions' downstreams on
//! one `POST <mount>/sse` or `POST <mount>/poll`, each session whole and
//! separate — its own key, sequence numbers, acks, resume and end — and
//! every refusal of the whole request with its exact status and code.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::raw::{self, Reply};
use crate::support::wire::SharedBatch;
use crate::support::*;
use holdfast::server::{Holdfast, OpenRequest, Refusal, ServerConfig};
use serde_json::json;

/// One browser tab's session as the shared request's client keeps it.
#[derive(Debug, Default)]
struct Tab {
    key: Option<String>,
    /// Highest seq delivered (strictly one after another: a duplicate or a
    /// gap fails the test).
    last: u64,
    got: Vec<String>,
    /// Messages sent so far (their seqs are 1..=sent).
    sent: u64,
    /// The `detach` or `close` codes that ended its part of a request.
    ends: Vec<(&'static str, u16)>,
    /// `ping` frames received.
    pings: usize,
}

/// The tabs of one test, by tag.
struct Tabs {
    tabs: BTreeMap<u64, Tab>,
    /// Tags whose part of the current request ended: no pair may follow.
    ended: HashSet<u64>,
}

impl Tabs {
    fn new(tags: impl IntoIterator<Item = u64>) -> Self {
        Self {
            tabs: tags.into_iter().map(|t| (t, Tab::default())).collect(),
            ended: HashSet::new(),
        }
    }

    fn tab(&self, tag: u64) -> &Tab {
        &self.tabs[&tag]
    }

    fn key(&self, tag: u64) -> String {
        self.tab(tag)
            .key
            .clone()
            .unwrap_or_else(|| panic!("tab {tag} has no session yet"))
    }

    /// A new request begins: every tab may appear again.
    fn new_request(&mut self) {
        self.ended.clear();
    }

    /// The body naming `tags`: with their keys and `last` once they have a
    /// session, without (opening one) before.
    fn body(&self, tags: &[u64]) -> String {
        let entries: Vec<_> = tags
            .iter()
            .map(|tag| {
                let tab = self.tab(*tag);
                match &tab.key {
                    Some(key) => json!({"s": tag, "key": key, "last": tab.last}),
                    None => json!({"s": tag}),
                }
            })
            .collect();
        serde_json::Value::Array(entries).to_string()
    }

    /// Hands each pair to its tab, checking §11.2: known tags only,
    /// nothing after a tab's end, messages exactly once and in order.
    fn absorb(&mut self, pairs: &SharedBatch) {
        let mut seen = HashSet::new();
        for (tag, frames) in pairs {
            assert!(seen.insert(*tag), "tag {tag} twice in one shared batch");
            assert!(
                !self.ended.contains(tag),
                "tag {tag} after its end: {frames:?}"
            );
            let tab = self
                .tabs
                .get_mut(tag)
                .unwrap_or_else(|| panic!("a pair for tag {tag}, which no request named"));
            for frame in frames {
                match frame {
                    Frame::Open(open) => {
                        assert!(tab.key.is_none(), "tab {tag} opened twice");
                        tab.key = Some(open.key.clone());
                    }
                    Frame::Msg { seq, data } => {
                        assert_eq!(
                            *seq,
                            tab.last + 1,
                            "tab {tag}: message {seq} after {} ({data:?}): a duplicate or a gap",
                            tab.last
                        );
                        tab.last = *seq;
                        tab.got.push(data.clone());
                    }
                    Frame::Close { code, .. } => {
                        tab.ends.push(("close", *code));
                        self.ended.insert(*tag);
                    }
                    Frame::Detach { code, .. } => {
                        tab.ends.push(("detach", *code));
                        self.ended.insert(*tag);
                    }
                    Frame::Ping => tab.pings += 1,
                    Frame::Resumed { .. } | Frame::Ack { .. } | Frame::Pong => {}
                    Frame::Bin { .. } => panic!("tab {tag}: unexpected bin frame"),
                }
            }
        }
    }

    /// Whether every tab in `tags` has its session key.
    fn all_open(&self, tags: &[u64]) -> bool {
        tags.iter().all(|t| self.tab(*t).key.is_some())
    }

    /// Whether every tab in `tags` has `n` messages.
    fn all_have(&self, tags: &[u64], n: usize) -> bool {
        tags.iter().all(|t| self.tab(*t).got.len() >= n)
    }

    /// Sends `n` more messages from tab `tag` in one send request.
    async fn send(&mut self, http: &reqwest::Client, base: &str, tag: u64, n: u64) {
        let key = self.key(tag);
        let tab = self.tabs.get_mut(&tag).expect("tab");
        let frames: Vec<Frame> = (tab.sent + 1..=tab.sent + n)
            .map(|seq| Frame::Msg {
                seq,
                data: text(tag, seq),
            })
            .collect();
        tab.sent += n;
        let reply = raw::send(http, base, &key, &frames).await;
        assert_eq!(reply.status, 200, "send of tab {tag}: {:?}", reply.body);
    }

    /// Asserts that every tab of `tags` got exactly its own echoes 1..=n
    /// and is still going.
    fn assert_all_echoed(&self, tags: &[u64], n: u64) {
        for &tag in tags {
            self.assert_echoes(tag, n);
            assert!(self.tab(tag).ends.is_empty(), "tab {tag} ended");
        }
    }

    /// Asserts that tab `tag` got exactly its own echoes 1..=n.
    fn assert_echoes(&self, tag: u64, n: u64) {
        let expected: Vec<Payload> = (1..=n).map(|seq| Payload::Text(text(tag, seq))).collect();
        let got: Vec<Payload> = self
            .tab(tag)
            .got
            .iter()
            .map(|t| Payload::Text(t.clone()))
            .collect();
        assert_exactly(&format!("tab {tag}"), &got, &expected);
    }
}

/// The text of message `seq` of tab `tag`: no two tabs send the same.
fn text(tag: u64, seq: u64) -> String {
    format!("tab {tag} message {seq}")
}

fn tags(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

/// An echo server with default settings, an HTTP client, and `n` tabs
/// (tags 1..=n) with no session yet.
async fn echo_and_tabs(n: u64) -> (TestServer, reqwest::Client, Vec<u64>, Tabs) {
    let server = TestServer::echo(ServerConfig::default()).await;
    let all = tags(n);
    let tabs = Tabs::new(all.clone());
    (server, raw::http_client(), all, tabs)
}

/// Opens a shared stream, panicking on a refusal.
async fn shared_sse(http: &reqwest::Client, server: &TestServer, body: String) -> Sse {
    match Sse::post(http, &server.url("sse", "v=1"), body, &[]).await {
        Ok(sse) => sse,
        Err(reply) => panic!(
            "shared stream refused with {}: {:?}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

/// Opens the sessions of `all` on one shared stream: the stream, once
/// every tab has its key.
async fn open_on_one_stream(
    http: &reqwest::Client,
    server: &TestServer,
    tabs: &mut Tabs,
    all: &[u64],
) -> Sse {
    let mut sse = shared_sse(http, server, tabs.body(all)).await;
    read_until(&mut sse, tabs, "opens", |t| t.all_open(all)).await;
    sse
}

/// One shared poll.
async fn shared_poll(http: &reqwest::Client, server: &TestServer, body: String) -> Reply {
    raw::post(http, &server.url("poll", "v=1"), body, &[]).await
}

/// Reads a shared stream into `tabs` until `done` holds.
async fn read_until(sse: &mut Sse, tabs: &mut Tabs, what: &str, done: impl Fn(&Tabs) -> bool) {
    within(DEADLINE, what, async {
        while !done(tabs) {
            match sse.next_shared().await {
                SharedIn::Event(pairs) => tabs.absorb(&pairs),
                end => panic!("{what}: the shared stream ended: {end:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn twelve_sessions_open_and_echo_on_one_stream() {
    let (server, http, all, mut tabs) = echo_and_tabs(12).await;
    let mut sse = shared_sse(&http, &server, tabs.body(&all)).await;
    assert_eq!(sse.header("content-type"), "text/event-stream");
    assert_eq!(sse.header("cache-control"), "no-cache, no-transform");
    assert_eq!(sse.header("x-accel-buffering"), "no");
    read_until(&mut sse, &mut tabs, "twelve opens", |t| t.all_open(&all)).await;
    assert!(sse.parser.comment_bytes > 0, "the padding comes first");
    assert_eq!(server.holdfast.session_count(), 12);
    for round in 0..4 {
        for &tag in &all {
            tabs.send(&http, &server.base, tag, 5).await;
        }
        let n = 5 * (round + 1);
        read_until(&mut sse, &mut tabs, "every tab's echoes", |t| {
            t.all_have(&all, n)
        })
        .await;
    }
    tabs.assert_all_echoed(&all, 20);
}

#[tokio::test]
async fn twelve_sessions_open_and_echo_by_shared_polls() {
    let (server, http, all, mut tabs) = echo_and_tabs(12).await;
    let reply = shared_poll(&http, &server, tabs.body(&all)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("cache-control"), "no-store");
    tabs.absorb(&reply.shared());
    assert!(
        tabs.all_open(&all),
        "every entry without a key opens at once"
    );
    for &tag in &all {
        tabs.send(&http, &server.base, tag, 10).await;
    }
    let mut polls = 0;
    while !tabs.all_have(&all, 10) {
        polls += 1;
        assert!(polls <= 50, "still missing echoes after 50 polls");
        tabs.new_request();
        let reply = shared_poll(&http, &server, tabs.body(&all)).await;
        assert_eq!(reply.status, 200);
        let pairs = reply.shared();
        assert!(!pairs.is_empty(), "answered before the hold with nothing");
        assert!(
            pairs.iter().all(|(_, frames)| !frames.is_empty()),
            "a poll answer names only sessions that had something: {pairs:?}"
        );
        tabs.absorb(&pairs);
    }
    tabs.assert_all_echoed(&all, 10);
}

#[tokio::test]
async fn a_stream_cut_mid_flow_resumes_every_session_exactly() {
    let (server, http, all, mut tabs) = echo_and_tabs(3).await;
    let mut sse = open_on_one_stream(&http, &server, &mut tabs, &all).await;
    tabs.send(&http, &server.base, 1, 30).await;
    read_until(&mut sse, &mut tabs, "some echoes", |t| {
        !t.tab(1).got.is_empty()
    })
    .await;
    // The others' echoes are on their way when the stream is cut.
    for tag in [2, 3] {
        tabs.send(&http, &server.base, tag, 30).await;
    }
    drop(sse);
    let before: Vec<u64> = all.iter().map(|tag| tabs.tab(*tag).last).collect();
    // More while nothing is attached.
    for &tag in &all {
        tabs.send(&http, &server.base, tag, 10).await;
    }
    tabs.new_request();
    let mut sse = shared_sse(&http, &server, tabs.body(&all)).await;
    read_until(&mut sse, &mut tabs, "the rest of every session", |t| {
        t.all_have(&all, 40)
    })
    .await;
    for &tag in &all {
        tabs.assert_echoes(tag, 40);
    }
    assert_eq!(&before[1..], [0, 0], "tabs 2 and 3 had nothing when cut");
}

#[tokio::test]
async fn a_shared_poll_that_lost_its_answer_gets_it_again() {
    let (server, http, all, mut tabs) = echo_and_tabs(4).await;
    tabs.absorb(&shared_poll(&http, &server, tabs.body(&all)).await.shared());
    for &tag in &all {
        tabs.send(&http, &server.base, tag, 8).await;
    }
    // An answer that never reached the tabs: its messages come again,
    // since each session's `last` did not move.
    let lost = tabs.body(&all);
    let mut polls = 0;
    loop {
        polls += 1;
        assert!(polls <= 50, "no echoes after 50 polls");
        let reply = shared_poll(&http, &server, lost.clone()).await;
        let count: usize = reply
            .shared()
            .iter()
            .map(|(_, frames)| frames.iter().filter(|f| f.message_seq().is_some()).count())
            .sum();
        if count == 4 * 8 {
            break;
        }
    }
    while !tabs.all_have(&all, 8) {
        polls += 1;
        assert!(polls <= 100, "still missing echoes after 100 polls");
        tabs.new_request();
        tabs.absorb(&shared_poll(&http, &server, tabs.body(&all)).await.shared());
    }
    for &tag in &all {
        tabs.assert_echoes(tag, 8);
    }
}

#[tokio::test]
async fn a_session_taken_by_its_own_stream_leaves_with_4409_and_the_others_go_on() {
    let (server, http, all, mut tabs) = echo_and_tabs(3).await;
    let mut sse = open_on_one_stream(&http, &server, &mut tabs, &all).await;
    let key2 = tabs.key(2);
    let mut own = match Sse::open(
        &http,
        &server.url("sse", "v=1&last=0"),
        &[("holdfast-key", key2.as_str())],
    )
    .await
    {
        Ok(sse) => sse,
        Err(reply) => panic!("GET /sse refused: {}", reply.status),
    };
    read_until(&mut sse, &mut tabs, "tab 2's detach", |t| {
        !t.tab(2).ends.is_empty()
    })
    .await;
    assert_eq!(tabs.tab(2).ends, vec![("detach", 4409)]);
    for tag in [1, 3, 2] {
        tabs.send(&http, &server.base, tag, 5).await;
    }
    read_until(&mut sse, &mut tabs, "tabs 1 and 3 go on", |t| {
        t.all_have(&[1, 3], 5)
    })
    .await;
    tabs.assert_echoes(1, 5);
    tabs.assert_echoes(3, 5);
    assert!(tabs.tab(2).got.is_empty(), "tab 2 got echoes after its end");
    // Tab 2's echoes go to its own stream.
    let mut own_got = Vec::new();
    within(DEADLINE, "tab 2's echoes on its own stream", async {
        while own_got.len() < 5 {
            match own.next().await {
                SseIn::Event { frames, .. } => {
                    own_got.extend(frames.into_iter().filter_map(|f| match f {
                        Frame::Msg { data, .. } => Some(data),
                        _ => None,
                    }))
                }
                end => panic!("tab 2's own stream ended: {end:?}"),
            }
        }
    })
    .await;
    assert_eq!(own_got, (1..=5).map(|seq| text(2, seq)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_refused_session_gets_its_refusal_and_the_others_go_on() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let mut tabs = Tabs::new(tags(5));
    // Tab 1 names a key the server never issued, tab 3 an empty one.
    tabs.tabs.get_mut(&1).expect("tab").key = Some("no-such-session-key".into());
    let body = r#"[{"s":1,"key":"no-such-session-key"},{"s":2},{"s":3,"key":""}]"#;
    let mut sse = shared_sse(&http, &server, body.into()).await;
    read_until(&mut sse, &mut tabs, "the first event", |t| {
        t.tab(2).key.is_some() && !t.tab(1).ends.is_empty() && !t.tab(3).ends.is_empty()
    })
    .await;
    assert_eq!(tabs.tab(1).ends, vec![("close", 4410)]);
    assert_eq!(tabs.tab(3).ends, vec![("close", 4400)]);
    tabs.send(&http, &server.base, 2, 3).await;
    read_until(&mut sse, &mut tabs, "tab 2's echoes", |t| {
        t.all_have(&[2], 3)
    })
    .await;
    tabs.assert_echoes(2, 3);

    // The same on a shared poll, with a `last` beyond what tab 2's session
    // sent (detach 1002: its session lives) next to a new session.
    tabs.new_request();
    let key2 = tabs.key(2);
    let body = json!([
        {"s": 1, "key": "no-such-session-key"},
        {"s": 2, "key": key2, "last": 99},
        {"s": 4},
    ]);
    let reply = shared_poll(&http, &server, body.to_string()).await;
    assert_eq!(reply.status, 200);
    tabs.absorb(&reply.shared());
    assert_eq!(tabs.tab(1).ends, vec![("close", 4410), ("close", 4410)]);
    assert_eq!(tabs.tab(2).ends, vec![("detach", 1002)]);
    assert!(tabs.tab(4).key.is_some(), "tab 4 opened");
    assert_eq!(server.holdfast.session_count(), 2);
}

/// A server whose hook wants `Authorization: Bearer <name>`, refuses
/// `mallory` with 403, and echoes.
async fn auth_server() -> TestServer {
    let holdfast = Holdfast::builder()
        .auth(|request: OpenRequest| async move {
            let name = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
                .ok_or_else(|| Refusal::unauthorized("log in first"))?;
            if name == "mallory" {
                return Err(Refusal::forbidden("not you"));
            }
            let mut identity = http::Extensions::new();
            identity.insert(holdfast::server::Identity::new(name.as_str()));
            Ok(identity)
        })
        .on_session(echo);
    TestServer::serve(holdfast).await
}

#[tokio::test]
async fn the_auth_hook_runs_for_each_session() {
    let server = auth_server().await;
    let http = raw::http_client();
    let url = server.url("poll", "v=1");
    // Without credentials every new session is refused on its own.
    let reply = raw::post(&http, &url, r#"[{"s":1},{"s":2}]"#, &[]).await;
    assert_eq!(reply.status, 200);
    let pairs = reply.shared();
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    for (_, frames) in &pairs {
        assert!(
            matches!(frames.as_slice(), [Frame::Close { code: 4401, .. }]),
            "{pairs:?}"
        );
    }
    assert_eq!(server.holdfast.session_count(), 0);

    // Ada opens two sessions.
    let mut tabs = Tabs::new(tags(3));
    let ada = [("authorization", "Bearer ada")];
    tabs.absorb(
        &raw::post(&http, &url, tabs.body(&[1, 2]), &ada)
            .await
            .shared(),
    );
    let key1 = tabs.key(1);
    // Bob names Ada's session next to a new one of his: refused for hers
    // (4401, her session untouched), his opens.
    tabs.new_request();
    let bob = [("authorization", "Bearer bob")];
    let body = json!([{"s": 1, "key": key1, "last": 0}, {"s": 3}]).to_string();
    let pairs = raw::post(&http, &url, body, &bob).await.shared();
    tabs.absorb(&pairs);
    assert_eq!(tabs.tab(1).ends, vec![("close", 4401)]);
    assert!(tabs.tab(3).key.is_some(), "bob's session opened: {pairs:?}");
    // Mallory is forbidden everything.
    let body = json!([{"s": 1, "key": key1}, {"s": 5}]).to_string();
    let pairs = raw::post(&http, &url, body, &[("authorization", "Bearer mallory")])
        .await
        .shared();
    assert!(
        pairs
            .iter()
            .all(|(_, f)| matches!(f.as_slice(), [Frame::Close { code: 4403, .. }])),
        "{pairs:?}"
    );
    // Ada's session still works for Ada.
    tabs.send_as(&http, &server.base, 1, 2, &ada).await;
    let mut polls = 0;
    tabs.ended.clear();
    tabs.tabs.get_mut(&1).expect("tab").ends.clear();
    while !tabs.all_have(&[1], 2) {
        polls += 1;
        assert!(polls <= 20, "no echoes for ada");
        tabs.new_request();
        tabs.absorb(
            &raw::post(&http, &url, tabs.body(&[1, 2]), &ada)
                .await
                .shared(),
        );
    }
    tabs.assert_echoes(1, 2);
}

impl Tabs {
    /// [`Tabs::send`] with the credentials of `headers`.
    async fn send_as(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        tag: u64,
        n: u64,
        headers: &[(&str, &str)],
    ) {
        let key = self.key(tag);
        let tab = self.tabs.get_mut(&tag).expect("tab");
        let frames: Vec<Frame> = (tab.sent + 1..=tab.sent + n)
            .map(|seq| Frame::Msg {
                seq,
                data: text(tag, seq),
            })
            .collect();
        tab.sent += n;
        let url = format!("{base}/send?v=1");
        let mut all = headers.to_vec();
        all.push(("holdfast-key", key.as_str()));
        let reply = raw::post(http, &url, support::wire::encode_batch(&frames), &all).await;
        assert_eq!(reply.status, 200, "send of tab {tag}: {:?}", reply.body);
    }
}

/// One request refused whole, and how.
struct Case {
    what: &'static str,
    query: String,
    body: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: u16,
}

/// Every way a shared request is refused whole, on both endpoints: the
/// exact status and code, and no session touched.
#[tokio::test]
async fn refusals_of_the_whole_request() {
    let mut config = ServerConfig::default();
    config.session.max_shared_sessions = 4;
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    // A session to name where a request names one.
    let open = raw::get(&http, &server.url("poll", "v=1"), &[])
        .await
        .batch();
    let key = match open.first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("expected open, got {other:?}"),
    };
    let named = json!([{"s": 1, "key": key}]).to_string();
    let too_big = format!(r#"[{{"s":1,"pad":"{}"}}]"#, "x".repeat(4 * 256));
    let case =
        |what, query: &str, body: &str, headers: &[(&'static str, &str)], status, code| Case {
            what,
            query: query.to_owned(),
            body: body.to_owned(),
            headers: headers.iter().map(|(n, v)| (*n, v.to_string())).collect(),
            status,
            code,
        };
    let cases = [
        case(
            "a foreign origin",
            "v=1",
            &named,
            &[("origin", "http://evil.test")],
            403,
            4403,
        ),
        case("an unsupported version", "v=2", &named, &[], 400, 4400),
        case("a malformed version", "v=x", &named, &[], 400, 4400),
        case("not JSON", "v=1", "[{", &[], 400, 4400),
        case("not an array", "v=1", r#"{"s":1}"#, &[], 400, 4400),
        case(
            "an entry without a tag",
            "v=1",
            &format!(r#"[{{"key":"{key}"}}]"#),
            &[],
            400,
            4400,
        ),
        case(
            "a duplicate tag",
            "v=1",
            r#"[{"s":1},{"s":1}]"#,
            &[],
            400,
            4400,
        ),
        case(
            "a tag out of range",
            "v=1",
            r#"[{"s":2147483648}]"#,
            &[],
            400,
            4400,
        ),
        case("a negative tag", "v=1", r#"[{"s":-1}]"#, &[], 400, 4400),
        case("no session", "v=1", "[]", &[], 400, 4400),
        case(
            "too many sessions",
            "v=1",
            r#"[{"s":1},{"s":2},{"s":3},{"s":4},{"s":5}]"#,
            &[],
            400,
            4400,
        ),
        case(
            "a body over 256 B per session",
            "v=1",
            &too_big,
            &[],
            413,
            1009,
        ),
        case(
            "a key in the URL",
            &format!("v=1&key={key}"),
            r#"[{"s":1}]"#,
            &[],
            400,
            4400,
        ),
        case(
            "a key in a header",
            "v=1",
            r#"[{"s":1}]"#,
            &[("holdfast-key", &key)],
            400,
            4400,
        ),
    ];
    for endpoint in ["sse", "poll"] {
        for Case {
            what,
            query,
            body,
            headers,
            status,
            code,
        } in cases.iter()
        {
            let (status, code) = (*status, *code);
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let url = server.url(endpoint, query);
            let reply = match Sse::post(&http, &url, body.clone(), &headers).await {
                Ok(_) => panic!("{endpoint}: {what}: answered with a stream"),
                Err(reply) => reply,
            };
            let what = format!("{endpoint}: {what}");
            assert_eq!(reply.status, status, "{what}: {:?}", reply.body);
            assert_eq!(reply.header("content-type"), "application/json", "{what}");
            match reply.batch().as_slice() {
                [
                    Frame::Close {
                        code: c, reason, ..
                    },
                ] if *c == code => {
                    assert!(!reason.contains(&key), "{what}: the reason holds the key");
                }
                other => panic!("{what}: expected one close {code}, got {other:?}"),
            }
        }
    }
    // Nothing opened, and the named session was never attached: it is
    // still between polls on its first attachment, so its next poll gets
    // no `resumed` (a resume would have made one).
    assert_eq!(server.holdfast.session_count(), 1);
    let url = server.url("poll", "v=1&last=0");
    let headers = [("holdfast-key", key.as_str())];
    let next = raw::get(&http, &url, &headers);
    let answer = tokio::time::timeout(Duration::from_millis(300), next).await;
    assert!(
        answer.is_err(),
        "the untouched session's next poll is held (nothing to deliver): {answer:?}"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = ServerConfig::default();
    config.body_timeout = Duration::from_millis(300);
    let server = TestServer::echo(config).await;
    for endpoint in ["sse", "poll"] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /realtime/{endpoint}?v=1 HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n[{{\"s\":1",
            server.addr
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        let started = Instant::now();
        let mut response = Vec::new();
        within(DEADLINE, "the 408 and the connection's end", async {
            let mut buf = [0; 1024];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 408"),
            "{endpoint}: {response}"
        );
        assert!(
            response.contains("\"t\":\"detach\"") && response.contains("\"code\":4408"),
            "{endpoint}: {response}"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
    assert_eq!(server.holdfast.session_count(), 0);
}

#[tokio::test]
async fn mux_is_announced_and_turning_it_off_removes_the_routes() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let open: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(open[0]["mux"], 64, "{open}");

    let mut config = ServerConfig::default();
    config.session.max_shared_sessions = 0;
    let off = TestServer::echo(config).await;
    let reply = raw::get(&http, &off.url("poll", "v=1"), &[]).await;
    let open: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert!(open[0].get("mux").is_none(), "{open}");
    for endpoint in ["sse", "poll"] {
        let reply = raw::post(&http, &off.url(endpoint, "v=1"), "[{\"s\":1}]", &[]).await;
        assert_eq!(reply.status, 405, "{endpoint}");
    }
    assert_eq!(off.holdfast.session_count(), 1);
}

#[tokio::test]
async fn a_shared_poll_with_nothing_to_deliver_is_held_then_answered_empty() {
    let config = config_with_timers(1000, 2000);
    let hold = config.session.poll_hold;
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let all = tags(3);
    let mut tabs = Tabs::new(all.clone());
    tabs.absorb(&shared_poll(&http, &server, tabs.body(&all)).await.shared());
    tabs.new_request();
    let started = Instant::now();
    let reply = shared_poll(&http, &server, tabs.body(&all)).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"[]", "nothing named: {:?}", reply.body);
    assert!(
        took >= hold - Duration::from_millis(50) && took < hold + Duration::from_millis(800),
        "held {took:?}, the hold is {hold:?}"
    );
    // A message for one tab answers the next poll at once, naming only it.
    tabs.new_request();
    tabs.send(&http, &server.base, 2, 1).await;
    let started = Instant::now();
    let mut polls = 0;
    while !tabs.all_have(&[2], 1) {
        polls += 1;
        assert!(polls <= 5);
        let reply = shared_poll(&http, &server, tabs.body(&all)).await;
        let pairs = reply.shared();
        assert!(pairs.iter().all(|(tag, _)| *tag == 2), "{pairs:?}");
        tabs.absorb(&pairs);
    }
    assert!(started.elapsed() < hold, "answered at once");
    tabs.assert_echoes(2, 1);
}

#[tokio::test]
async fn a_recycled_stream_detaches_every_session_with_4000() {
    let mut config = ServerConfig::default();
    config.sse_padding = 0;
    config.sse_max_bytes = 4096;
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let all = tags(3);
    let mut tabs = Tabs::new(all.clone());
    let mut sse = open_on_one_stream(&http, &server, &mut tabs, &all).await;
    for &tag in &all {
        tabs.send(&http, &server.base, tag, 40).await;
    }
    let end = within(DEADLINE, "the recycled stream's end", async {
        loop {
            match sse.next_shared().await {
                SharedIn::Event(pairs) => tabs.absorb(&pairs),
                end => return end,
            }
        }
    })
    .await;
    assert!(matches!(end, SharedIn::Ended), "{end:?}");
    for &tag in &all {
        assert_eq!(tabs.tab(tag).ends, vec![("detach", 4000)], "tab {tag}");
    }
    // Each resumes where it was.
    tabs.new_request();
    let mut sse = shared_sse(&http, &server, tabs.body(&all)).await;
    read_until(&mut sse, &mut tabs, "the rest", |t| t.all_have(&all, 40)).await;
    for &tag in &all {
        tabs.assert_echoes(tag, 40);
    }
}

/// A session whose client never acknowledges fills its replay buffer:
/// the application's sends to it wait, and the other sessions on the same
/// stream keep receiving.
#[tokio::test]
async fn a_session_with_a_full_replay_buffer_does_not_stall_the_others() {
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    config.session.max_unacked_bytes = 8 * 1024;
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let all = tags(3);
    let mut tabs = Tabs::new(all.clone());
    let mut sse = shared_sse(&http, &server, tabs.body(&all)).await;
    // Sessions open in the order the request names them.
    let sessions: Vec<_> = {
        let mut sessions = Vec::new();
        for _ in &all {
            sessions.push(accept(&mut incoming, DEADLINE).await);
        }
        sessions
    };
    read_until(&mut sse, &mut tabs, "opens", |t| {
        all.iter().all(|tag| t.tab(*tag).key.is_some())
    })
    .await;
    // Tab 1's buffer fills: its client never acks.
    let chunk = "y".repeat(1000);
    let mut queued = 0;
    // One more of the same size waits for room.
    while sessions[0].try_send(chunk.clone()).is_ok() {
        queued += 1;
        assert!(queued < 100, "the replay buffer never filled");
    }
    let blocked = sessions[0].clone();
    let extra = tokio::spawn(async move { blocked.send(chunk).await });
    read_until(&mut sse, &mut tabs, "tab 1's buffer", |t| {
        t.all_have(&[1], queued)
    })
    .await;
    // Tabs 2 and 3 keep receiving, many times what tab 1 could hold.
    for i in 0..200u64 {
        for (tag, session) in [(2, &sessions[1]), (3, &sessions[2])] {
            session
                .send(text(tag, i + 1))
                .await
                .expect("send to a session whose client acks");
        }
        if i % 20 == 19 {
            read_until(&mut sse, &mut tabs, "tabs 2 and 3", |t| {
                t.all_have(&[2, 3], (i + 1) as usize)
            })
            .await;
            for tag in [2, 3] {
                let last = tabs.tab(tag).last;
                let reply = raw::send(
                    &http,
                    &server.base,
                    &tabs.key(tag),
                    &[Frame::Ack { seq: last }],
                )
                .await;
                assert_eq!(reply.status, 200);
            }
        }
    }
    tabs.assert_echoes(2, 200);
    tabs.assert_echoes(3, 200);
    assert_eq!(
        tabs.tab(1).got.len(),
        queued,
        "tab 1 got more than its buffer"
    );
    assert!(
        !extra.is_finished(),
        "tab 1's application still waits for room"
    );
    // Tab 1 acknowledges: its application goes on.
    let reply = raw::send(
        &http,
        &server.base,
        &tabs.key(1),
        &[Frame::Ack { seq: queued as u64 }],
    )
    .await;
    assert_eq!(reply.status, 200);
    within(DEADLINE, "tab 1's waiting send", extra)
        .await
        .expect("task")
        .expect("send");
    read_until(&mut sse, &mut tabs, "tab 1's last", |t| {
        t.all_have(&[1], queued + 1)
    })
    .await;
}

/// Each session on a stream has its own end and its own timers: one
/// closed by its application, one whose client goes silent (4408), and
/// one that keeps talking and keeps being pinged and served.
#[tokio::test]
async fn each_session_ends_on_its_own_and_the_others_go_on() {
    let config = config_with_timers(200, 600);
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let all = tags(3);
    let mut tabs = Tabs::new(all.clone());
    let mut sse = shared_sse(&http, &server, tabs.body(&all)).await;
    let mut sessions = Vec::new();
    for _ in &all {
        sessions.push(accept(&mut incoming, DEADLINE).await);
    }
    read_until(&mut sse, &mut tabs, "opens", |t| {
        all.iter().all(|tag| t.tab(*tag).key.is_some())
    })
    .await;
    sessions[2].close(holdfast::protocol::CloseCode::NORMAL, "bye");
    // Tab 1 answers its pings; tab 2 says nothing.
    let started = Instant::now();
    let key1 = tabs.key(1);
    while started.elapsed() < Duration::from_millis(1500) {
        let pings = tabs.tab(1).pings;
        let reply = raw::send(&http, &server.base, &key1, &[Frame::Pong]).await;
        assert_eq!(reply.status, 200);
        read_until(&mut sse, &mut tabs, "tab 1's next ping", |t| {
            t.tab(1).pings > pings
        })
        .await;
    }
    assert_eq!(tabs.tab(3).ends, vec![("close", 1000)]);
    assert_eq!(tabs.tab(2).ends, vec![("detach", 4408)]);
    assert!(tabs.tab(1).ends.is_empty(), "{:?}", tabs.tab(1).ends);
    sessions[0]
        .send(text(1, 1))
        .await
        .expect("tab 1's session lives");
    read_until(&mut sse, &mut tabs, "tab 1's message", |t| {
        t.all_have(&[1], 1)
    })
    .await;
    tabs.assert_echoes(1, 1);
}

/// The session limits apply to each new session a shared request opens:
/// past them that session alone gets `close` 4503 with `retry_after`.
#[tokio::test]
async fn session_limits_apply_to_each_entry() {
    let mut config = ServerConfig::default();
    config.max_sessions = 2;
    let server = TestServer::echo(config).await;
    let mut config = ServerConfig::default();
    config.open_rate_limit = Some(holdfast::server::OpenRateLimit::new(2, 0.001));
    let rate_limited = TestServer::echo(config).await;
    let http = raw::http_client();
    for (server, what) in [
        (&server, "max_sessions"),
        (&rate_limited, "open_rate_limit"),
    ] {
        let pairs = shared_poll(&http, server, r#"[{"s":1},{"s":2},{"s":3}]"#.into())
            .await
            .shared();
        let opened = pairs
            .iter()
            .filter(|(_, f)| matches!(f.first(), Some(Frame::Open(_))))
            .count();
        let refused: Vec<_> = pairs
            .iter()
            .filter(|(_, f)| {
                matches!(
                    f.as_slice(),
                    [Frame::Close {
                        code: 4503,
                        retry_after: Some(_),
                        ..
                    }]
                )
            })
            .map(|(tag, _)| *tag)
            .collect();
        assert_eq!((opened, refused), (2, vec![3]), "{what}: {pairs:?}");
        assert_eq!(server.holdfast.session_count(), 2, "{what}");
    }
}

/// A body without `Content-Length` is read only up to its limit.
#[tokio::test]
async fn a_chunked_body_over_its_limit_gets_413() {
    let mut config = ServerConfig::default();
    config.session.max_shared_sessions = 2;
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = std::iter::once(b"[".to_vec())
        .chain((0..100).map(|i| format!(r#"{{"s":{i}}},"#).into_bytes()))
        .chain(std::iter::once(br#"{"s":100}]"#.to_vec()))
        .map(Ok)
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let reply = raw::post(&http, &server.url("sse", "v=1"), body, &[]).await;
    reply.assert_refusal(413, "close", 1009);
    assert_eq!(server.holdfast.session_count(), 0);
}

/// A stream's events stay near the size of one session's batches
/// (`max_msg`): one round over many sessions with much to replay is cut
/// into several events.
#[tokio::test]
async fn events_are_cut_near_max_msg() {
    let mut config = ServerConfig::default();
    config.session.set_max_message(1024);
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let all = tags(4);
    let mut tabs = Tabs::new(all.clone());
    tabs.absorb(&shared_poll(&http, &server, tabs.body(&all)).await.shared());
    // Everything is queued before the stream starts: its first round finds
    // every session with a full batch to send.
    let mut sessions = Vec::new();
    for (i, &tag) in all.iter().enumerate() {
        let session = accept(&mut incoming, DEADLINE).await;
        assert_eq!(i + 1, tag as usize);
        for seq in 1..=20 {
            let mut text = text(tag, seq);
            text.push_str(&"x".repeat(200));
            session.try_send(text).expect("room");
        }
        sessions.push(session);
    }
    tabs.new_request();
    let mut sse = shared_sse(&http, &server, tabs.body(&all)).await;
    let mut sizes = Vec::new();
    within(DEADLINE, "every tab's messages", async {
        while !tabs.all_have(&all, 20) {
            if let Some(event) = sse.take_event() {
                sizes.push(event.data.len());
                let pairs = support::wire::parse_shared_batch(event.data.as_bytes())
                    .expect("a shared batch");
                tabs.absorb(&pairs);
                continue;
            }
            match sse.next_chunk().await {
                Some(Ok(chunk)) => sse.feed(&chunk),
                other => panic!("the stream ended: {other:?}"),
            }
        }
    })
    .await;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        largest < 2 * 1024 + 64,
        "an event of {largest} bytes (max_msg 1024): {sizes:?}"
    );
    for &tag in &all {
        assert_eq!(tabs.tab(tag).got.len(), 20);
    }
}
