//! Session expiry (`PROTOCOL.md` §5): a session whose attachment is gone
//! lives for the resume window, then ends; resuming it afterwards is
//! refused with "session lost" (HTTP 410 / close 4410) on every endpoint,
//! and the application's `Session` sees the end as expired.

use std::time::{Duration, Instant};

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::{CloseCode, ServerConfig};

/// Short timers: the server notices a vanished stream within a ping.
fn short_window(resume_ms: u64) -> ServerConfig {
    let mut config = config_with_timers(100, 400);
    config.session.resume_window = Duration::from_millis(resume_ms);
    config
}

/// Asserts that every endpoint answers "session lost" for `key`.
async fn assert_session_lost(server: &TestServer, key: &str) {
    let http = raw::http_client();
    // WebSocket: the upgrade completes, then a close frame and close 4410.
    let mut ws = RawWs::connect(&server.ws_url(&resume_query(key, 0))).await;
    let (frames, close) = ws.recv_until_closed().await;
    assert!(
        matches!(frames.as_slice(), [Frame::Close { code: 4410, .. }]),
        "WebSocket resume of a lost session: expected [close 4410], got {frames:?}"
    );
    assert_eq!(close.map(|c| c.0), Some(4410), "WebSocket close code");
    // SSE, poll and send: 410 Gone with the close frame.
    for endpoint in ["sse", "poll"] {
        let reply = raw::get(&http, &server.url(endpoint, &resume_query(key, 0)), &[]).await;
        reply.assert_refusal(410, "close", 4410);
    }
    let reply = raw::send(&http, &server.base, key, &[Frame::Ack { seq: 0 }]).await;
    reply.assert_refusal(410, "close", 4410);
}

#[tokio::test]
async fn expired_session_is_lost_on_every_endpoint() {
    for transport in Transport::ALL {
        let resume = 300;
        let (server, mut incoming) = TestServer::start(short_window(resume)).await;
        let mut client = Client::new(&server.base, 0);
        let outcome = client.attach(transport, &Plan::greeting_only()).await;
        // The attachment is dropped on return: the client is gone.
        let gone = Instant::now();
        assert_eq!(outcome, Ok(Outcome::Done), "{transport:?}");
        let open = client.core.open.clone().expect("open frame");
        assert_eq!(open.resume, resume, "`resume` in open");
        let session = accept(&mut incoming, DEADLINE).await;

        let end = within(
            Duration::from_secs(3),
            "the session to expire",
            session.closed(),
        )
        .await;
        let lived = gone.elapsed();
        assert!(end.expired(), "{transport:?}: {end:?}");
        assert_eq!(end.close.code, CloseCode::SESSION_LOST);
        assert!(
            lived >= Duration::from_millis(resume),
            "{transport:?}: expired {lived:?} after the client left, before the {resume} ms window"
        );
        assert_eq!(
            within(DEADLINE, "recv after expiry", session.recv()).await,
            None
        );

        assert_session_lost(&server, &open.key).await;
        server.wait_session_count(0, DEADLINE).await;
    }
}

#[tokio::test]
async fn resume_within_the_window_keeps_the_session() {
    // The window counts from when the attachment went away, not from the
    // open: stay attached longer than the window, leave, come back within it.
    let (server, mut incoming) = TestServer::start(short_window(800)).await;
    let mut client = Client::new(&server.base, 0);
    client.backlog = vec![Payload::Text("before".into())].into();
    client.expect_down = 0;
    let mut plan = Plan::until_done(DEADLINE);
    plan.stop_when_done = true;
    assert_eq!(
        client.attach(Transport::WebSocket, &plan).await,
        Ok(Outcome::Done)
    );
    let session = accept(&mut incoming, DEADLINE).await;

    // Stay attached (answering pings) for longer than the resume window.
    let mut stay = Plan::random_cut(
        &mut rand::SeedableRng::seed_from_u64(0),
        Transport::WebSocket,
    );
    stay.cut_after = Some(usize::MAX);
    stay.max_duration = Duration::from_millis(1200);
    stay.mode = CutMode::Now;
    stay.stale_last = 0;
    assert_eq!(
        client.attach(Transport::WebSocket, &stay).await,
        Ok(Outcome::Cut)
    );
    assert!(!session.is_closed(), "the session ended while attached");

    // Away for a fraction of the window, then back on another transport.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.backlog = vec![Payload::Text("after".into())].into();
    assert_eq!(
        client.attach(Transport::Poll, &plan).await,
        Ok(Outcome::Done)
    );
    assert_eq!(client.core.stats.resumes, 2);
    let got = within(DEADLINE, "two messages", async {
        vec![session.recv().await, session.recv().await]
    })
    .await;
    assert_eq!(
        got.into_iter()
            .map(|m| m.map(|m| to_payload(&m)))
            .collect::<Vec<_>>(),
        vec![
            Some(Payload::Text("before".into())),
            Some(Payload::Text("after".into()))
        ]
    );
    assert!(!session.is_closed());
}

#[tokio::test]
async fn unknown_key_is_session_lost() {
    let server = TestServer::echo(ServerConfig::default()).await;
    assert_session_lost(&server, "never-issued-key-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
}
