//! One attachment at a time (`PROTOCOL.md` §5): a new attachment replaces
//! the current one, which gets `detach` 4409 and ends the way its transport
//! ends — a WebSocket closes with 4409, an SSE stream ends after the
//! `detach` event, a held poll returns at once. Checked for every pair of
//! transports; the session carries on over the new attachment.

use std::time::Duration;

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::ServerConfig;

/// The old attachment, live.
enum Old {
    Ws(RawWs),
    Sse(Sse),
    Poll(tokio::task::JoinHandle<raw::Reply>),
}

#[tokio::test]
async fn a_new_attachment_replaces_the_old_one_with_4409() {
    let mut config = ServerConfig::default();
    config.session.poll_hold = Duration::from_secs(10);
    let (server, mut incoming) = TestServer::start(config).await;
    let http = raw::http_client();
    let (client, session) = open_session(&server, &mut incoming, Transport::Poll).await;
    let key = client.core.key().expect("key").to_owned();
    let mut delivered = 0u64;

    for old_kind in Transport::ALL {
        for new_kind in Transport::ALL {
            let what = format!("{old_kind:?} replaced by {new_kind:?}");
            // Attach the old one and see it work: one message through it.
            let query = resume_query(&key, delivered);
            session
                .send(format!("via {old_kind:?}"))
                .await
                .expect("send");
            delivered += 1;
            let old = match old_kind {
                Transport::WebSocket => {
                    let mut ws = RawWs::connect(&server.ws_url(&query)).await;
                    let mut frames = Vec::new();
                    while !frames
                        .iter()
                        .any(|f: &Frame| f.message_seq() == Some(delivered))
                    {
                        frames.extend(ws.recv_frames().await);
                    }
                    Old::Ws(ws)
                }
                Transport::Sse => {
                    let mut sse = Sse::open(&http, &server.url("sse", &query), &[])
                        .await
                        .unwrap_or_else(|r| panic!("{what}: {r:?}"));
                    let mut seen = false;
                    while !seen {
                        match sse.next_within(DEADLINE).await {
                            SseIn::Event { frames, .. } => {
                                seen = frames.iter().any(|f| f.message_seq() == Some(delivered))
                            }
                            other => panic!("{what}: {other:?}"),
                        }
                    }
                    Old::Sse(sse)
                }
                Transport::Poll => {
                    let reply = raw::get(&http, &server.url("poll", &query), &[]).await;
                    assert!(
                        reply
                            .batch()
                            .iter()
                            .any(|f| f.message_seq() == Some(delivered)),
                        "{what}: {:?}",
                        reply.batch()
                    );
                    // Now a held poll. Its `last` acknowledges the message
                    // just delivered: once the replay buffer is empty, the
                    // poll has reached the session.
                    let url = server.url("poll", &resume_query(&key, delivered));
                    let http = http.clone();
                    let held = tokio::spawn(async move { raw::get(&http, &url, &[]).await });
                    server.wait_buffered_bytes(0, DEADLINE).await;
                    assert!(!held.is_finished(), "{what}: the poll was not held");
                    Old::Poll(held)
                }
            };

            // The new attachment.
            let query = resume_query(&key, delivered);
            let mut newer_poll = None;
            let new = match new_kind {
                Transport::WebSocket => {
                    let mut ws = RawWs::connect(&server.ws_url(&query)).await;
                    let first = ws.recv_frames().await;
                    assert!(
                        matches!(first.first(), Some(Frame::Resumed { .. })),
                        "{what}: {first:?}"
                    );
                    Some(ws)
                }
                Transport::Sse => {
                    let mut sse = Sse::open(&http, &server.url("sse", &query), &[])
                        .await
                        .unwrap_or_else(|r| panic!("{what}: {r:?}"));
                    match sse.next_within(DEADLINE).await {
                        SseIn::Event { frames, .. } => assert!(
                            matches!(frames.first(), Some(Frame::Resumed { .. })),
                            "{what}: {frames:?}"
                        ),
                        other => panic!("{what}: {other:?}"),
                    }
                    drop(sse);
                    None
                }
                Transport::Poll if old_kind == Transport::Poll => {
                    // A poll after a poll continues the attachment: no
                    // `resumed`, so with nothing to deliver it is held.
                    let url = server.url("poll", &query);
                    let http = http.clone();
                    let newer = tokio::spawn(async move { raw::get(&http, &url, &[]).await });
                    newer_poll = Some(newer);
                    None
                }
                Transport::Poll => {
                    let reply = raw::get(&http, &server.url("poll", &query), &[]).await;
                    assert!(
                        matches!(reply.batch().first(), Some(Frame::Resumed { .. })),
                        "{what}: {:?}",
                        reply.batch()
                    );
                    None
                }
            };

            // The old one was told, and ended properly.
            match old {
                Old::Ws(mut ws) => {
                    let (frames, close) = ws.recv_until_closed().await;
                    assert!(
                        matches!(frames.last(), Some(Frame::Detach { code: 4409, .. })),
                        "{what}: {frames:?}"
                    );
                    assert_eq!(
                        close.map(|c| c.0),
                        Some(4409),
                        "{what}: WebSocket close code"
                    );
                }
                Old::Sse(mut sse) => {
                    let (frames, end) = sse.read_to_end(DEADLINE).await;
                    assert!(
                        matches!(frames.last(), Some(Frame::Detach { code: 4409, .. })),
                        "{what}: {frames:?}"
                    );
                    assert!(matches!(end, SseIn::Ended), "{what}: {end:?}");
                }
                Old::Poll(held) => {
                    let reply = within(Duration::from_secs(2), "the held poll to return", held)
                        .await
                        .expect("poll task");
                    assert_eq!(reply.status, 200, "{what}");
                    assert_eq!(
                        reply
                            .batch()
                            .into_iter()
                            .map(|f| f.code())
                            .collect::<Vec<_>>(),
                        vec![Some(4409)],
                        "{what}: the held poll returns [detach 4409]"
                    );
                }
            }
            drop(new);
            if let Some(newer) = newer_poll.take() {
                session.send("to the newer poll").await.expect("send");
                delivered += 1;
                let reply = within(DEADLINE, "the newer poll", newer)
                    .await
                    .expect("poll task");
                assert_eq!(
                    reply.batch(),
                    vec![Frame::Msg {
                        seq: delivered,
                        data: "to the newer poll".into()
                    }],
                    "{what}: the newer poll carries on"
                );
            }
            assert!(!session.is_closed(), "{what}");
        }
    }
}
