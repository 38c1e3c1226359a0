//! One open-loop session through `holdfast-client` on a forced transport
//! (SSE or long-polling): what an application using the real client sees.
//!
//! Messages fall due at fixed times as in [`super::ws`]; the client's
//! `send` applies backpressure (its own buffer full), so a message may go
//! out after it fell due, and is timed from when it fell due all the same.
//! A send the server refuses for now (`503` + `Retry-After`) is the
//! client's to retry; the server counts those refusals (`/stats`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use holdfast_client::{ClientBuilder, ConnectError, Event, Message, ProxyConfig, TransportKind};
use holdfast_protocol::CloseCode;

use super::ws::{self, Opening, Outcome, Plan};

/// How long `connect` may take (the client retries a 4503 after its
/// `retry_after` within this).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one session to its end.
pub async fn run(addr: SocketAddr, kind: TransportKind, plan: Plan) -> Outcome {
    let asked = Instant::now();
    let connecting = ClientBuilder::new(format!("http://{addr}/realtime"))
        .transport(kind)
        .proxy(ProxyConfig::none())
        .connect_timeout(OPEN_TIMEOUT)
        .connect();
    let connection = match tokio::time::timeout(OPEN_TIMEOUT * 2, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(ConnectError::Refused {
            code,
            reason,
            retry_after,
        })) if code == CloseCode::OVERLOADED => {
            return Outcome::refused(Opening::Refused {
                reason,
                retry_after,
            });
        }
        Ok(Err(ConnectError::NoTransport(_))) | Err(_) => {
            return Outcome::refused(Opening::TimedOut);
        }
        Ok(Err(e)) => return Outcome::refused(Opening::Other(e.to_string())),
    };
    let mut outcome = Outcome::refused(Opening::Admitted(asked.elapsed()));
    let (tx, mut rx) = connection.split();
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let due_at = move |k: u64| plan.start + interval.mul_f64((k - 1) as f64);
    let due = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let (due, done) = (due.clone(), done.clone());
        tokio::spawn(async move {
            let mut k = 1;
            while due_at(k) < plan.stop && plan.limit.is_none_or(|limit| k <= limit) {
                tokio::time::sleep_until(due_at(k).into()).await;
                due.store(k, Ordering::Relaxed);
                if tx
                    .send(Message::text(ws::payload(k, plan.size)))
                    .await
                    .is_err()
                {
                    break;
                }
                k += 1;
            }
            done.store(true, Ordering::Relaxed);
            tx
        })
    };
    let give_up = tokio::time::sleep_until(plan.give_up.into());
    tokio::pin!(give_up);
    // Wakes the loop now and then to see whether the sender is done.
    let mut check = tokio::time::interval(Duration::from_millis(50));
    loop {
        if done.load(Ordering::Relaxed) && outcome.echoed == due.load(Ordering::Relaxed) {
            break;
        }
        tokio::select! {
            () = &mut give_up => break,
            _ = check.tick() => {}
            event = rx.next_event() => match event {
                Some(Event::Message(message)) => {
                    ws::echoed(&plan, &due_at, message.as_text(), &mut outcome);
                }
                Some(Event::Closed(closed)) => {
                    outcome.ended_by_server = Some(closed.code.0);
                    break;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    sender.abort();
    if let Ok(tx) = sender.await {
        tx.close().await;
    }
    outcome.due = due.load(Ordering::Relaxed);
    outcome.transmitted = outcome.due;
    let end = Instant::now();
    for k in outcome.echoed + 1..=outcome.due {
        let due = due_at(k);
        if due >= plan.latency_from {
            outcome.unechoed_measured += 1;
            outcome.timed(end.saturating_duration_since(due));
        }
    }
    outcome
}
