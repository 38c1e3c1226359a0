//! How sessions end (`PROTOCOL.md` §5, §9): the server's `close` follows the
//! messages it already sent, on every transport; a client that missed the
//! end resumes and gets the rest and then the same `close`; dropping the
//! last `Session` handle closes with 1000; `shutdown` closes with 1001.

use std::time::Duration;

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::{CloseCode, ServerConfig, Session};

fn three() -> Vec<Payload> {
    ["one", "two", "three"]
        .iter()
        .map(|t| Payload::Text((*t).into()))
        .collect()
}

async fn send_three_then_close(session: &Session, code: CloseCode, reason: &str) {
    for payload in three() {
        session.send(to_message(&payload)).await.expect("send");
    }
    session.close(code, reason);
}

#[tokio::test]
async fn server_close_comes_after_pending_messages_on_every_transport() {
    for transport in Transport::ALL {
        let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
        let (mut client, session) = open_session(&server, &mut incoming, transport).await;
        send_three_then_close(&session, CloseCode::NORMAL, "bye").await;
        let outcome = client
            .attach(transport, &Plan::until_closed(DEADLINE))
            .await;
        assert_eq!(
            outcome,
            Ok(Outcome::Closed(1000, "bye".into())),
            "{transport:?}: {:?}",
            client.log
        );
        assert_exactly(&format!("{transport:?}"), &client.core.delivered, &three());
        let end = within(DEADLINE, "closed", session.closed()).await;
        assert_eq!(end.close.code, CloseCode::NORMAL);
        assert!(!end.expired());
        assert_eq!(within(DEADLINE, "recv", session.recv()).await, None);
    }
}

#[tokio::test]
async fn a_client_that_missed_the_close_resumes_and_gets_the_rest_then_close() {
    for (first, then) in [
        (Transport::WebSocket, Transport::Poll),
        (Transport::Poll, Transport::Sse),
        (Transport::Sse, Transport::WebSocket),
    ] {
        let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
        let (mut client, session) = open_session(&server, &mut incoming, first).await;
        // The client is gone (its attachment dropped, whatever was in
        // flight lost) while the server sends and closes.
        send_three_then_close(&session, CloseCode::NORMAL, "bye").await;
        let outcome = client.attach(then, &Plan::until_closed(DEADLINE)).await;
        assert_eq!(
            outcome,
            Ok(Outcome::Closed(1000, "bye".into())),
            "{first:?} then {then:?}: {:?}",
            client.log
        );
        assert_exactly(
            &format!("{first:?} then {then:?}"),
            &client.core.delivered,
            &three(),
        );
    }
}

#[tokio::test]
async fn a_client_close_reaches_the_application_after_its_messages() {
    for transport in Transport::ALL {
        let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
        let mut client = Client::new(&server.base, 0);
        client.backlog = three().into();
        let outcome = client
            .attach(transport, &Plan::until_done_then_close(DEADLINE))
            .await;
        assert_eq!(
            outcome,
            Ok(Outcome::Closed(1000, "done".into())),
            "{transport:?}: {:?}",
            client.log
        );
        let session = accept(&mut incoming, DEADLINE).await;
        let mut got = Vec::new();
        while let Some(message) = within(DEADLINE, "recv", session.recv()).await {
            got.push(to_payload(&message));
        }
        assert_exactly(&format!("{transport:?}"), &got, &three());
        let end = within(DEADLINE, "closed", session.closed()).await;
        assert_eq!(
            (end.close.code, &end.close.reason[..]),
            (CloseCode::NORMAL, "done")
        );
        assert!(session.send("too late").await.is_err(), "send after close");
    }
}

#[tokio::test]
async fn dropping_the_last_session_handle_closes_with_1000() {
    for transport in Transport::ALL {
        let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
        let (mut client, session) = open_session(&server, &mut incoming, transport).await;
        session.send("last words").await.expect("send");
        drop(session);
        match client
            .attach(transport, &Plan::until_closed(DEADLINE))
            .await
        {
            Ok(Outcome::Closed(1000, _)) => {}
            other => panic!("{transport:?}: {other:?}"),
        }
        assert_eq!(
            client.core.delivered,
            vec![Payload::Text("last words".into())]
        );
    }
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1001_after_pending_messages() {
    let (server, mut incoming) = TestServer::start(ServerConfig::default()).await;
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for transport in Transport::ALL {
        let (client, session) = open_session(&server, &mut incoming, transport).await;
        session
            .send(format!("bye {transport:?}"))
            .await
            .expect("send");
        clients.push((transport, client));
        sessions.push(session);
    }
    server.holdfast.shutdown();
    for (transport, mut client) in clients {
        match client
            .attach(transport, &Plan::until_closed(DEADLINE))
            .await
        {
            Ok(Outcome::Closed(1001, _)) => {}
            other => panic!("{transport:?}: {other:?}"),
        }
        assert_eq!(
            client.core.delivered,
            vec![Payload::Text(format!("bye {transport:?}"))]
        );
    }
    for session in sessions {
        let end = within(DEADLINE, "closed", session.closed()).await;
        assert_eq!(end.close.code, CloseCode::GOING_AWAY);
    }
}

#[tokio::test]
async fn a_closed_session_stays_resumable_for_the_resume_window() {
    // §5: "A session closed with a close frame (by either side) remains
    // resumable for the resume window". A long-poll client that closes
    // while a poll is on its way hits this: the poll gets 410, "session
    // lost", instead of the close it just completed.
    let (server, _incoming) = TestServer::start(ServerConfig::default()).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    let reply = raw::send(&http, &server.base, &key, &[Frame::close(1000, "bye")]).await;
    assert_eq!(
        reply.batch(),
        vec![Frame::Ack { seq: 0 }, Frame::close(1000, "bye")]
    );
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(
        reply.status, 200,
        "poll right after a completed close: {:?}",
        reply.frames
    );
    assert!(
        reply
            .batch()
            .iter()
            .any(|f| *f == Frame::close(1000, "bye")),
        "{:?}",
        reply.batch()
    );
    // The same after the handshake on a WebSocket, a little later.
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    let key = match ws.recv_frames().await.first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    ws.send_frames(&[Frame::close(1000, "bye")]).await;
    let (_, close) = ws.recv_until_closed().await;
    assert_eq!(close.map(|c| c.0), Some(1000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(
        reply.status, 200,
        "poll 300 ms after a WebSocket close handshake: {:?}",
        reply.frames
    );
}
