//! The HTTP transports in detail (`PROTOCOL.md` §8.2–§8.4): response
//! headers that keep proxies from caching or buffering, the SSE padding
//! and event format, SSE stream recycling, `Last-Event-ID`, the poll hold,
//! and the send endpoint's replies.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::ServerConfig;

fn msg(seq: u64, text: &str) -> Frame {
    Frame::Msg {
        seq,
        data: text.into(),
    }
}

#[tokio::test]
async fn sse_stream_headers_padding_and_first_event() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let mut sse = Sse::open(&http, &server.url("sse", "v=1"), &[])
        .await
        .unwrap_or_else(|reply| panic!("SSE refused: {reply:?}"));
    assert_eq!(sse.status, 200);
    assert!(sse.header("content-type").starts_with("text/event-stream"));
    assert_eq!(sse.header("cache-control"), "no-cache, no-transform");
    assert_eq!(sse.header("x-accel-buffering"), "no");
    match sse.next_within(DEADLINE).await {
        SseIn::Event { id, frames } => {
            assert!(matches!(frames.as_slice(), [Frame::Open(_)]), "{frames:?}");
            assert_eq!(id, None, "no id on an event without messages");
        }
        other => panic!("{other:?}"),
    }
    // The default 2048-byte padding comment came first.
    assert!(
        sse.parser.comment_bytes >= 2048,
        "padding: {} bytes of comments before the first event",
        sse.parser.comment_bytes
    );
}

#[tokio::test]
async fn poll_and_send_responses_are_never_cached() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), "no-store");
    assert!(reply.header("content-type").starts_with("application/json"));
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let reply = raw::send(&http, &server.base, &key, &[msg(1, "hi")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), "no-store");
    assert!(reply.header("content-type").starts_with("application/json"));
    // The echo comes back on the next poll, which is also uncacheable.
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(reply.header("cache-control"), "no-store");
    assert!(reply.batch().contains(&msg(1, "hi")), "{:?}", reply.batch());
}

#[tokio::test]
async fn send_replies_ack_then_pong_and_drop_duplicates() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session.clone());

    // An empty batch and an ack-only batch are fine.
    let reply = raw::send(&http, &server.base, &key, &[]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 0 }]);
    let reply = raw::send(&http, &server.base, &key, &[Frame::Ack { seq: 0 }]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 0 }]);
    // ack first, then pong for a ping.
    let reply = raw::send(&http, &server.base, &key, &[msg(1, "a"), Frame::Ping]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 1 }, Frame::Pong]);
    // A retransmission (the client never saw the reply) is acked again and
    // delivered once.
    let reply = raw::send(&http, &server.base, &key, &[msg(1, "a"), msg(2, "b")]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 2 }]);
    let reply = raw::send(&http, &server.base, &key, &[msg(1, "a"), msg(2, "b")]).await;
    assert_eq!(reply.batch(), vec![Frame::Ack { seq: 2 }]);
    // Any Content-Type is accepted.
    let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&key));
    for (i, content_type) in [
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ]
    .into_iter()
    .enumerate()
    {
        let seq = 3 + i as u64;
        let body = support::wire::encode_batch(&[msg(seq, content_type)]);
        let response = within(
            DEADLINE,
            "send",
            http.post(&url)
                .header("content-type", content_type)
                .body(body)
                .send(),
        )
        .await
        .expect("send");
        let reply = raw::read_reply(response).await;
        assert_eq!(reply.batch(), vec![Frame::Ack { seq }], "{content_type}");
    }
    let got = recorder.wait_for(6, DEADLINE).await;
    let expected: Vec<Payload> = [
        "a",
        "b",
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
    ]
    .iter()
    .map(|t| Payload::Text((*t).into()))
    .collect();
    assert_exactly("received", &got, &expected);
}

#[tokio::test]
async fn an_idle_poll_is_held_then_answered_empty() {
    let mut config = ServerConfig::default();
    config.session.poll_hold = Duration::from_millis(300);
    config.session.timeout = Duration::from_secs(2);
    config.session.ping_interval = Duration::from_secs(1);
    let server = TestServer::echo(config).await;
    let http = raw::http_client();
    let started = Instant::now();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the first poll is answered at once"
    );
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let started = Instant::now();
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    let held = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.batch(), vec![], "an idle poll is answered []");
    assert!(
        held >= Duration::from_millis(280) && held < Duration::from_secs(2),
        "held {held:?}, expected about the 300 ms poll hold"
    );
}

#[tokio::test]
async fn sse_last_event_id_is_honoured() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let http = raw::http_client();
    let mut sse = Sse::open(&http, &server.url("sse", "v=1"), &[])
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    let key = match sse.next_within(DEADLINE).await {
        SseIn::Event { frames, .. } => match frames.first() {
            Some(Frame::Open(open)) => open.key.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let session = accept(&mut incoming, DEADLINE).await;
    for i in 1..=10 {
        session.send(format!("m{i}")).await.expect("send");
    }
    // Read until the event with id 10; ids are the last seq of each batch.
    let mut seen = Vec::new();
    within(DEADLINE, "ten messages", async {
        while seen.last() != Some(&10) {
            if let SseIn::Event { id, frames } = sse.next().await {
                let last = frames.iter().filter_map(Frame::message_seq).next_back();
                assert_eq!(id, last.map(|s| s.to_string()), "id: {frames:?}");
                seen.extend(frames.iter().filter_map(Frame::message_seq));
            }
        }
    })
    .await;
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(sse.parser.last_event_id.as_deref(), Some("10"));
    drop(sse);

    // (query `last`, Last-Event-ID header) → first seq the server may send.
    for (last, header, first) in [(None, "6", 7), (Some(3), "8", 9), (Some(9), "2", 10)] {
        let query = match last {
            Some(last) => resume_query(&key, last),
            None => format!("v=1&key={}", raw::encode(&key)),
        };
        let mut sse = Sse::open(
            &http,
            &server.url("sse", &query),
            &[("last-event-id", header)],
        )
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
        let mut seqs = Vec::new();
        within(DEADLINE, "the replay", async {
            while seqs.last() != Some(&10) {
                match sse.next().await {
                    SseIn::Event { frames, .. } => {
                        seqs.extend(frames.iter().filter_map(Frame::message_seq))
                    }
                    other => panic!("{other:?}"),
                }
            }
        })
        .await;
        assert_eq!(
            seqs,
            (first..=10).collect::<Vec<_>>(),
            "last={last:?}, Last-Event-ID: {header}: the effective last is the larger"
        );
    }
}

/// Drives the SSE transport until done, resuming after each recycle.
async fn run_recycled_exchange(sse_max_bytes: usize) -> (Client, Vec<Payload>, usize) {
    let mut config = ServerConfig::default();
    config.sse_max_bytes = sse_max_bytes;
    let (server, mut incoming) = TestServer::start(config).await;
    let downstream: Vec<Payload> = (0..300)
        .map(|i| Payload::Text(format!("{i:04} {}", "z".repeat(300))))
        .collect();
    let upstream: Vec<Payload> = (0..100)
        .map(|i| Payload::Binary(vec![i as u8; 100]))
        .collect();
    let to_send = downstream.clone();
    let app = tokio::spawn(async move {
        let session = accept(&mut incoming, DEADLINE).await;
        let (recorder, _) = Recorder::start(session.clone());
        for (i, payload) in to_send.iter().enumerate() {
            session.send(to_message(payload)).await.expect("send");
            if i % 10 == 9 {
                // Paced, so that streams fill event by event.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        (session, recorder)
    });
    let mut client = Client::new(&server.base, 7);
    client.backlog = upstream.clone().into();
    client.expect_down = downstream.len();
    let mut recycles = 0;
    within(Duration::from_secs(20), "the recycled exchange", async {
        loop {
            match client
                .attach(Transport::Sse, &Plan::until_done_then_close(DEADLINE))
                .await
            {
                Ok(Outcome::Detached(4000, _)) => recycles += 1,
                Ok(Outcome::Closed(1000, _)) => break,
                other => panic!("{other:?}\n{}", client.log.join("\n")),
            }
            assert!(recycles < 200, "too many recycles");
        }
    })
    .await;
    let (_session, recorder) = within(DEADLINE, "app", app).await.expect("app");
    let got = recorder.wait_for(upstream.len(), DEADLINE).await;
    assert_exactly("server received", &got, &upstream);
    assert_exactly("client delivered", &client.core.delivered, &downstream);
    (client, downstream, recycles)
}

#[tokio::test]
async fn sse_streams_are_recycled_with_4000_and_lose_nothing() {
    let (_client, _, recycles) = run_recycled_exchange(16 * 1024).await;
    // About 100 KB downstream with a 16 KiB budget.
    assert!(recycles >= 4, "only {recycles} recycles");
}

#[tokio::test]
async fn sse_recycling_bounds_each_stream() {
    let budget = 16 * 1024;
    let mut config = ServerConfig::default();
    config.sse_max_bytes = budget;
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let mut sse = Sse::open(&http, &server.url("sse", "v=1"), &[])
        .await
        .unwrap_or_else(|r| panic!("{r:?}"));
    let SseIn::Event { .. } = sse.next_within(DEADLINE).await else {
        panic!("no open event")
    };
    let session = accept(&mut incoming, DEADLINE).await;
    // 100 KB ready at once (well within the replay buffer).
    for i in 0..300 {
        session
            .send(format!("{i:04} {}", "z".repeat(300)))
            .await
            .expect("send");
    }
    let (frames, end) = sse.read_to_end(DEADLINE).await;
    assert!(matches!(end, SseIn::Ended), "{end:?}");
    assert!(
        matches!(frames.last(), Some(Frame::Detach { code: 4000, .. })),
        "the stream ends with detach 4000"
    );
    // One event past the budget is fine (an event here is one batch, cut
    // at max_msg: 300-byte ASCII messages need no escaping); a stream that
    // carries everything that was ready is not recycled "after this many
    // bytes".
    let max_event = server.holdfast.config().session.max_message + 1024;
    assert!(
        sse.bytes_read <= 2048 + budget + max_event,
        "a stream with a {budget}-byte budget carried {} bytes",
        sse.bytes_read
    );
}
