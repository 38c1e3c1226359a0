//! Timers (`PROTOCOL.md` §6): the server pings every `ping` ms on WebSocket
//! and SSE and answers the client's pings; a client that stays silent is
//! detached after `timeout` (4408); a poll that follows the previous one
//! within `timeout` continues the attachment, a later one resumes.

use std::time::{Duration, Instant};

use crate::support::raw::{self, resume_query};
use crate::support::*;

const PING: u64 = 150;
const TIMEOUT: u64 = 500;

/// Asserts ping arrival times are `PING` apart (loosely: timers, 2 cores).
fn assert_ping_rhythm(times: &[Instant]) {
    assert!(times.len() >= 5, "only {} pings", times.len());
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(PING * 2 / 3) && gap <= Duration::from_millis(PING * 2),
            "pings {gap:?} apart, expected about {PING} ms: {:?}",
            times.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
        );
    }
}

/// Asserts a detach for silence came about `TIMEOUT` after the client's
/// last word.
fn assert_timed_out_after(silent_since: Instant) {
    let silent = silent_since.elapsed();
    assert!(
        silent >= Duration::from_millis(TIMEOUT - 20)
            && silent <= Duration::from_millis(TIMEOUT + 600),
        "detached after {silent:?} of silence, expected about {TIMEOUT} ms"
    );
}

#[tokio::test]
async fn websocket_pings_keep_answering_clients_and_drop_silent_ones() {
    let server = TestServer::echo(config_with_timers(PING, TIMEOUT)).await;
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    match ws.recv_frames().await.first() {
        Some(Frame::Open(open)) => assert_eq!((open.ping, open.timeout), (PING, TIMEOUT)),
        other => panic!("{other:?}"),
    }
    // Answer every ping for three timeouts: the attachment stays.
    let mut pings = Vec::new();
    let until = Instant::now() + Duration::from_millis(TIMEOUT * 3);
    let mut last_word = Instant::now();
    while Instant::now() < until {
        match ws.recv_within(Duration::from_millis(PING * 3)).await {
            WsIn::Frames(frames) => {
                for frame in frames {
                    match frame {
                        Frame::Ping => {
                            pings.push(Instant::now());
                            ws.send_frames(&[Frame::Pong]).await;
                            last_word = Instant::now();
                        }
                        other => panic!("unexpected {other:?} while answering pings"),
                    }
                }
            }
            other => panic!("the attachment ended while answering pings: {other:?}"),
        }
    }
    assert_ping_rhythm(&pings);
    // The server answers our ping too.
    ws.send_frames(&[Frame::Ping]).await;
    last_word = last_word.max(Instant::now());
    let mut ponged = false;
    // Now silence: pings keep coming, then detach 4408 and close 4408.
    let detach = within(
        Duration::from_millis(TIMEOUT * 4),
        "the timeout detach",
        async {
            loop {
                match ws.recv().await {
                    WsIn::Frames(frames) => {
                        for frame in frames {
                            match frame {
                                Frame::Pong => ponged = true,
                                Frame::Ping => {}
                                Frame::Detach { code, .. } => return code,
                                other => panic!("unexpected {other:?}"),
                            }
                        }
                    }
                    other => panic!("the socket ended without a detach frame: {other:?}"),
                }
            }
        },
    )
    .await;
    assert_timed_out_after(last_word);
    assert_eq!(detach, 4408);
    assert!(ponged, "no pong for our ping");
    match ws.recv().await {
        WsIn::Closed(close) => assert_eq!(close.map(|c| c.0), Some(4408)),
        other => panic!("after detach 4408: {other:?}"),
    }
}

#[tokio::test]
async fn sse_pings_are_answered_by_send_and_silence_detaches() {
    let server = TestServer::echo(config_with_timers(PING, TIMEOUT)).await;
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
    let mut pings = Vec::new();
    let mut last_word = Instant::now();
    let until = Instant::now() + Duration::from_millis(TIMEOUT * 3);
    while Instant::now() < until {
        match sse.next_within(Duration::from_millis(PING * 3)).await {
            SseIn::Event { frames, .. } => {
                assert_eq!(frames, vec![Frame::Ping], "only pings on an idle stream");
                pings.push(Instant::now());
                // pong, and a ping of ours, in a send request.
                let reply = raw::send(&http, &server.base, &key, &[Frame::Pong, Frame::Ping]).await;
                assert_eq!(reply.batch(), vec![Frame::Ack { seq: 0 }, Frame::Pong]);
                last_word = Instant::now();
            }
            other => panic!("the stream ended while answering pings: {other:?}"),
        }
    }
    assert_ping_rhythm(&pings);
    // Silence: the stream ends with detach 4408.
    let (frames, end) = sse.read_to_end(Duration::from_millis(TIMEOUT * 4)).await;
    assert_timed_out_after(last_word);
    assert!(
        matches!(frames.last(), Some(Frame::Detach { code: 4408, .. })),
        "expected detach 4408 last: {frames:?}"
    );
    assert!(
        frames[..frames.len() - 1].iter().all(|f| *f == Frame::Ping),
        "{frames:?}"
    );
    assert!(
        matches!(end, SseIn::Ended),
        "the stream must end cleanly after detach: {end:?}"
    );
}

#[tokio::test]
async fn a_late_poll_resumes_where_a_prompt_one_continues() {
    let server = TestServer::echo(config_with_timers(PING, TIMEOUT)).await;
    let http = raw::http_client();
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[]).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("{other:?}"),
    };
    // Within the timeout: the attachment continues, no `resumed`. The poll
    // is held (poll hold = TIMEOUT / 2) and answered [].
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(
        reply.batch(),
        vec![],
        "a continuing poll gets no resumed frame"
    );
    let reply = raw::send(
        &http,
        &server.base,
        &key,
        &[Frame::Msg {
            seq: 1,
            data: "echo".into(),
        }],
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 0)), &[]).await;
    assert_eq!(
        reply.batch(),
        vec![Frame::Msg {
            seq: 1,
            data: "echo".into()
        }],
        "a continuing poll"
    );
    // Away longer than the timeout: the attachment was dropped, the next
    // poll is a resume.
    tokio::time::sleep(Duration::from_millis(TIMEOUT + 200)).await;
    let reply = raw::get(&http, &server.url("poll", &resume_query(&key, 1)), &[]).await;
    assert_eq!(
        reply.batch().first(),
        Some(&Frame::Resumed { ack: 1 }),
        "{:?}",
        reply.batch()
    );
}

#[tokio::test]
async fn websocket_acks_come_after_32_messages_or_the_ack_delay() {
    // A long ack delay tells the two rules apart.
    let delay = Duration::from_millis(600);
    let mut config = holdfast::server::ServerConfig::default();
    config.session.ack_delay = delay;
    let (server, mut incoming) = TestServer::start(config).await;
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Open(_))
    ));
    let session = accept(&mut incoming, DEADLINE).await;
    let (_recorder, _) = Recorder::start(session);

    async fn next_ack(ws: &mut RawWs) -> u64 {
        loop {
            for frame in ws.recv_frames().await {
                match frame {
                    Frame::Ack { seq } => return seq,
                    Frame::Ping => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    // One message: acknowledged after the delay, not before.
    let sent = Instant::now();
    ws.send_frames(&[Frame::Msg {
        seq: 1,
        data: "one".into(),
    }])
    .await;
    assert_eq!(next_ack(&mut ws).await, 1);
    let waited = sent.elapsed();
    assert!(
        waited >= delay - Duration::from_millis(50) && waited < delay * 3,
        "one message acked after {waited:?}, expected about the {delay:?} ack delay"
    );
    // 32 messages: acknowledged without waiting for the delay.
    let frames: Vec<Frame> = (2..=33)
        .map(|seq| Frame::Msg {
            seq,
            data: format!("m{seq}"),
        })
        .collect();
    let sent = Instant::now();
    ws.send_frames(&frames).await;
    assert_eq!(next_ack(&mut ws).await, 33);
    let waited = sent.elapsed();
    assert!(
        waited < delay / 2,
        "32 messages acked after {waited:?}, not at once"
    );
}
