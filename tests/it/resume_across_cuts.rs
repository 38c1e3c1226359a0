//! Exactly-once delivery, both ways, across abrupt cuts and transport
//! switches: for each transport, 1,000 messages each way (text and binary,
//! random sizes up to `max_msg`), the connection cut at random points about
//! ten times — sockets dropped, streams cut mid-chunk, polls dropped while
//! held or with their response unread, send requests dropped in flight — and
//! resumed on the same transport and on each other one. What the server's
//! `Session` received and what the client delivered must be exactly what
//! the other side sent.
//!
//! The seed is printed; `HOLDFAST_TEST_SEED=<seed>` replays a run.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::*;
use holdfast::server::{CloseCode, ServerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Messages each way.
const N: usize = 1000;

/// The transports to attach on, in order: `first` to `first`, to each
/// other one and back, between the other two, a few random ones, and
/// `first` again for the final stretch and the close.
fn schedule(first: Transport, rng: &mut StdRng) -> Vec<Transport> {
    let others: Vec<Transport> = Transport::ALL.into_iter().filter(|t| *t != first).collect();
    let (a, b) = if rng.random_bool(0.5) {
        (others[0], others[1])
    } else {
        (others[1], others[0])
    };
    let mut schedule = vec![first, first, a, first, b, a, b, first];
    for _ in 0..rng.random_range(1..4) {
        schedule.push(Transport::ALL[rng.random_range(0..3)]);
    }
    schedule.push(first);
    schedule
}

async fn exchange(first: Transport, name: &str) {
    let seed = support::random::seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let max_msg = 64 * 1024;
    let upstream = support::random::payloads(&mut rng, N, max_msg);
    let downstream = support::random::payloads(&mut rng, N, max_msg);

    let mut config = ServerConfig::default();
    config.session.poll_hold = Duration::from_secs(2);
    let (server, mut incoming) = TestServer::start(config).await;

    // The application: records what it receives, sends its own messages
    // at an uneven pace.
    let to_send = downstream.clone();
    let app_seed: u64 = rng.random();
    let app = tokio::spawn(async move {
        let session = accept(&mut incoming, DEADLINE).await;
        let (recorder, recording) = Recorder::start(session.clone());
        let mut rng = StdRng::seed_from_u64(app_seed);
        for payload in &to_send {
            session
                .send(to_message(payload))
                .await
                .expect("the server application's send failed");
            if rng.random_ratio(1, 10) {
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..4))).await;
            }
        }
        (session, recorder, recording)
    });

    let mut client = Client::new(&server.base, rng.random());
    client.backlog = upstream.clone().into();
    client.expect_down = N;
    let schedule = schedule(first, &mut rng);
    println!("{name}: schedule {schedule:?}");
    let started = Instant::now();

    let mut step = 0;
    let mut attachments = 0;
    let result = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            attachments += 1;
            if attachments > 400 {
                return Err("more than 400 attachments".to_owned());
            }
            let transport = schedule[step];
            let last_step = step == schedule.len() - 1;
            let plan = if last_step {
                Plan::until_done_then_close(Duration::from_secs(20))
            } else {
                Plan::random_cut(&mut rng, transport)
            };
            match client.attach(transport, &plan).await? {
                // A recycled SSE stream: resume at once.
                Outcome::Detached(4000, _) if transport == Transport::Sse => {}
                Outcome::Cut => step += 1,
                Outcome::Closed(1000, _) if last_step => return Ok(()),
                other => return Err(format!("unexpected outcome {other:?}")),
            }
        }
    })
    .await;
    let log = client.log.join("\n  ");
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{name} (seed {seed}): {e}\nattachments:\n  {log}"),
        Err(_) => panic!("{name} (seed {seed}): not done within 40 s\nattachments:\n  {log}"),
    }
    println!(
        "{name}: done in {:?}, {} attachments, stats {:?}\n  {log}",
        started.elapsed(),
        client.log.len(),
        client.core.stats
    );

    // Client side: exactly what the server application sent.
    assert_exactly(
        &format!("{name} (seed {seed}): client delivered"),
        &client.core.delivered,
        &downstream,
    );
    assert_eq!(client.core.sent(), N as u64);

    // Server side: exactly what the client sent, then the client's close.
    let (session, recorder, recording) = within(DEADLINE, "the server application", app)
        .await
        .expect("the server application panicked");
    let end = within(DEADLINE, "the server session's end", session.closed()).await;
    assert_eq!(end.close.code, CloseCode::NORMAL, "{end:?}");
    within(DEADLINE, "the server session's recv() to end", recording)
        .await
        .expect("the recorder panicked");
    assert_exactly(
        &format!("{name} (seed {seed}): server session received"),
        &recorder.received(),
        &upstream,
    );

    // The cuts really happened and really lost data in flight.
    let stats = &client.core.stats;
    assert!(stats.cuts >= 9, "only {} cuts: {log}", stats.cuts);
    assert!(
        stats.resumes >= 5,
        "only {} resumed frames: {log}",
        stats.resumes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_exactly_once_across_cuts_and_switches() {
    exchange(Transport::WebSocket, "websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_exactly_once_across_cuts_and_switches() {
    exchange(Transport::Sse, "sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_exactly_once_across_cuts_and_switches() {
    exchange(Transport::Poll, "long-polling").await;
}
