//! One open-loop session over WebSocket, speaking holdfast's wire protocol
//! directly (as small a client as the bench's wire client), so that every
//! refusal is seen as the server sends it and the client costs the load
//! generator little.
//!
//! Messages are due at fixed times (`start + (k − 1) / rate`) whatever the
//! replies; each is timed from when it was due, not from when it could be
//! sent, so a server that holds the client back shows in the latency (no
//! coordinated omission). The client keeps within the upstream window
//! (`PROTOCOL.md` §3.1) as a conforming client must: what the window does
//! not admit waits in the client, due times running.
//!
//! Every echo is checked: downstream `seq`s follow each other, and the
//! payloads come back in the order sent, each once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use holdfast_protocol::wire::json;
use holdfast_protocol::{Close, CloseCode, Frame, MESSAGE_OVERHEAD, Message};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::Error as WsError;

use crate::stats::Latencies;

/// The shortest sleep between transmissions: a session whose messages fall
/// due faster sends them in batches.
const MIN_SLEEP: Duration = Duration::from_millis(1);
/// Echoes left unacknowledged before an ack travels alone (otherwise it
/// rides with the next messages).
const ACK_ALONE_AFTER: u64 = 64;
/// Most messages in one WebSocket message (far below `max_batch` at the
/// sizes the bench uses).
const MAX_BATCH_MESSAGES: usize = 256;
/// How long an opening may take before it counts as refused by silence.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Digits of the index that starts every payload.
const INDEX_DIGITS: usize = 12;

/// What one session does, and when.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Messages per second, due at fixed intervals.
    pub rate: f64,
    /// Payload bytes per message (at least [`INDEX_DIGITS`]).
    pub size: usize,
    /// When the first message is due.
    pub start: Instant,
    /// No message is due from then on.
    pub stop: Instant,
    /// Most messages, for sessions that come, send a few and go.
    pub limit: Option<u64>,
    /// Echoes arriving then count towards the achieved rate…
    pub measure_from: Instant,
    /// …and latencies of messages due from then on are kept.
    pub latency_from: Instant,
    /// The session stops waiting for echoes then and closes.
    pub give_up: Instant,
}

/// How the opening went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening {
    /// `open` received after this long.
    Admitted(Duration),
    /// Upgraded, then `close` 4503 (too many sessions, or this address
    /// opens too fast), with its `retry_after`.
    Refused {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other close, or an HTTP status instead of an upgrade.
    Other(String),
    /// No TCP connection (refused, reset).
    ConnectFailed,
    /// Nothing within [`OPEN_TIMEOUT`].
    TimedOut,
}

/// What one session saw.
pub struct Outcome {
    pub opening: Opening,
    /// Messages that fell due.
    pub due: u64,
    /// Messages put on the wire.
    pub transmitted: u64,
    /// Echoes received (all checked).
    pub echoed: u64,
    /// Echoes received while measuring.
    pub echoed_measured: u64,
    /// Breaches of exactly-once, in order: how many, and the first.
    pub violations: u64,
    pub first_violation: Option<String>,
    /// Latency of each measured message, from when it was due; a message
    /// not echoed when the session gave up counts with its age then (a
    /// lower bound).
    pub latencies: Latencies,
    /// Measured messages not echoed when the session gave up.
    pub unechoed_measured: u64,
    /// The longest of `latencies`.
    pub max_latency: Duration,
    /// The session's end, when the server ended it: `close`/`detach` code
    /// (1006: the connection dropped without one).
    pub ended_by_server: Option<u16>,
    /// …and it was a `detach`: the session lives on, resumable (this
    /// client does not resume).
    pub detached: bool,
    /// Most messages waiting in the client for window room at once.
    pub max_waiting: u64,
}

impl Outcome {
    /// A session that ended at its opening (or, with `Admitted`, the
    /// outcome of one about to run).
    pub(super) fn refused(opening: Opening) -> Self {
        Self {
            opening,
            due: 0,
            transmitted: 0,
            echoed: 0,
            echoed_measured: 0,
            violations: 0,
            first_violation: None,
            latencies: Latencies::default(),
            unechoed_measured: 0,
            max_latency: Duration::ZERO,
            ended_by_server: None,
            detached: false,
            max_waiting: 0,
        }
    }

    pub(super) fn timed(&mut self, latency: Duration) {
        self.latencies.record(latency);
        self.max_latency = self.max_latency.max(latency);
    }

    fn violation(&mut self, what: impl FnOnce() -> String) {
        self.violations += 1;
        if self.first_violation.is_none() {
            self.first_violation = Some(what());
        }
    }
}

/// The payload of message `k`: its index, then padding.
pub fn payload(k: u64, size: usize) -> String {
    let mut text = format!("{k:0INDEX_DIGITS$}");
    while text.len() < size {
        text.push('x');
    }
    text
}

/// The index a payload starts with.
pub fn index_of(payload: &str) -> Option<u64> {
    payload.get(..INDEX_DIGITS)?.parse().ok()
}

/// Runs one session to its end.
pub async fn run(addr: SocketAddr, plan: Plan) -> Outcome {
    let asked = Instant::now();
    let url = format!("ws://{addr}/realtime/ws?v=1");
    let connected = tokio::time::timeout(OPEN_TIMEOUT, async {
        // Without TCP_NODELAY, Nagle's algorithm holds each message back
        // until the previous one is acknowledged (40 ms with delayed ACKs):
        // an open-loop client writes without waiting for answers.
        let (mut ws, _) = match tokio_tungstenite::connect_async_with_config(&url, None, true).await
        {
            Ok(ws) => ws,
            Err(WsError::Io(_)) => return Err(Opening::ConnectFailed),
            Err(WsError::Http(response)) => {
                return Err(Opening::Other(format!("HTTP {}", response.status())));
            }
            Err(e) => return Err(Opening::Other(e.to_string())),
        };
        let first = loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => break text,
                Some(Ok(WsMessage::Close(close))) => {
                    return Err(Opening::Other(format!("closed before open: {close:?}")));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Opening::Other(e.to_string())),
                None => return Err(Opening::Other("ended before open".into())),
            }
        };
        let frames = json::decode_batch_str(first.as_str())
            .map_err(|e| Opening::Other(format!("bad first batch: {e}")))?;
        match frames.into_iter().next() {
            Some(Frame::Open(open)) => Ok((ws, open.window)),
            Some(Frame::Close(close)) if close.code == CloseCode::OVERLOADED => {
                Err(Opening::Refused {
                    reason: close.reason.to_string(),
                    retry_after: close.retry_after,
                })
            }
            Some(other) => Err(Opening::Other(format!("first frame {}", other.type_name()))),
            None => Err(Opening::Other("empty first batch".into())),
        }
    })
    .await;
    let (ws, window) = match connected {
        Ok(Ok(open)) => open,
        Ok(Err(opening)) => return Outcome::refused(opening),
        Err(_) => return Outcome::refused(Opening::TimedOut),
    };
    let mut outcome = Outcome::refused(Opening::Admitted(asked.elapsed()));
    drive(ws, window, plan, &mut outcome).await;
    outcome
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The upstream window as the client tracks it (`PROTOCOL.md` §3.1).
struct Upstream {
    /// The greatest `(R, room)` pair heard.
    acked: u64,
    room: u64,
    /// Highest seq transmitted (message `k` travels as seq `k`).
    sent: u64,
    /// Charge of one message.
    charge: u64,
}

impl Upstream {
    fn heard(&mut self, seq: u64, room: Option<u64>) {
        let room = room.unwrap_or(u64::MAX);
        if (seq, room) > (self.acked, self.room) {
            (self.acked, self.room) = (seq, room);
        }
    }

    /// Whether one more message stays within the window.
    fn admits_one(&self) -> bool {
        (self.sent - self.acked + 1) * self.charge <= self.room
    }
}

async fn drive(ws: Ws, window: Option<usize>, plan: Plan, outcome: &mut Outcome) {
    let (mut tx, mut rx) = ws.split();
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let due_at = |k: u64| plan.start + interval.mul_f64((k - 1) as f64);
    let mut up = Upstream {
        acked: 0,
        room: window.map_or(u64::MAX, |w| w as u64),
        sent: 0,
        charge: (plan.size + MESSAGE_OVERHEAD) as u64,
    };
    // Downstream: the last echo's seq, and what was last acknowledged.
    let (mut down_seq, mut down_acked) = (0u64, 0u64);
    let mut pong_owed = false;
    let give_up = tokio::time::sleep_until(plan.give_up.into());
    tokio::pin!(give_up);
    loop {
        let now = Instant::now();
        // Everything due by now joins the queue (`due`), whatever the window.
        while now < plan.stop
            && plan.limit.is_none_or(|limit| outcome.due < limit)
            && due_at(outcome.due + 1) <= now
        {
            outcome.due += 1;
        }
        outcome.max_waiting = outcome.max_waiting.max(outcome.due - up.sent);
        // Transmit what the window admits, with the ack of the echoes.
        let mut frames = Vec::new();
        while up.sent < outcome.due && frames.len() < MAX_BATCH_MESSAGES && up.admits_one() {
            up.sent += 1;
            frames.push(Frame::Message {
                seq: up.sent,
                message: Message::text(payload(up.sent, plan.size)),
            });
        }
        let ack_alone =
            down_seq - down_acked >= ACK_ALONE_AFTER || (now >= plan.stop && down_acked < down_seq);
        if !frames.is_empty() || ack_alone {
            frames.push(Frame::ack(down_seq));
            down_acked = down_seq;
        }
        if std::mem::take(&mut pong_owed) {
            frames.push(Frame::Pong);
        }
        if !frames.is_empty() {
            let batch = json::encode_batch_to_string(&frames);
            if tx.send(WsMessage::text(batch)).await.is_err() {
                break;
            }
        }
        outcome.transmitted = up.sent;
        let finished = (now >= plan.stop || plan.limit.is_some_and(|l| outcome.due >= l))
            && outcome.echoed == outcome.due;
        if finished {
            let bye = Frame::Close(Close::new(CloseCode::NORMAL, "done"));
            let _ = tx
                .send(WsMessage::text(json::encode_batch_to_string(&[bye])))
                .await;
            break;
        }
        let more_due = now < plan.stop && plan.limit.is_none_or(|limit| outcome.due < limit);
        let wake = if more_due {
            due_at(outcome.due + 1).max(now + MIN_SLEEP).min(plan.stop)
        } else if now < plan.stop {
            plan.stop
        } else {
            plan.give_up
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = &mut give_up => break,
            incoming = rx.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let Ok(frames) = json::decode_batch_str(text.as_str()) else {
                        outcome.violation(|| "undecodable batch".into());
                        break;
                    };
                    let mut ended = false;
                    for frame in frames {
                        match frame {
                            Frame::Message { seq, message } => {
                                if seq != down_seq + 1 {
                                    outcome.violation(|| format!("downstream seq {seq} after {down_seq}"));
                                }
                                down_seq = seq;
                                echoed(&plan, &due_at, message.as_text(), outcome);
                            }
                            Frame::Ack { seq, room } => up.heard(seq, room),
                            Frame::Ping => pong_owed = true,
                            Frame::Close(close) => {
                                outcome.ended_by_server = Some(close.code.0);
                                ended = true;
                            }
                            Frame::Detach(close) => {
                                outcome.ended_by_server = Some(close.code.0);
                                outcome.detached = true;
                                ended = true;
                            }
                            _ => {}
                        }
                    }
                    if ended {
                        break;
                    }
                }
                Some(Ok(WsMessage::Close(close))) => {
                    outcome.ended_by_server = Some(close.map_or(1005, |c| c.code.into()));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    outcome.ended_by_server.get_or_insert(1006);
                    break;
                }
            },
        }
    }
    // What never came back is at least this old.
    let end = Instant::now();
    for k in outcome.echoed + 1..=outcome.due {
        let due = due_at(k);
        if due >= plan.latency_from {
            outcome.unechoed_measured += 1;
            outcome.timed(end.saturating_duration_since(due));
        }
    }
}

/// Checks and times one echo.
pub(super) fn echoed(
    plan: &Plan,
    due_at: &impl Fn(u64) -> Instant,
    text: Option<&str>,
    outcome: &mut Outcome,
) {
    let expected = outcome.echoed + 1;
    let Some(k) = text.and_then(index_of) else {
        outcome.violation(|| "an echo without an index".into());
        return;
    };
    if k != expected {
        outcome.violation(|| format!("echo of message {k} where {expected} was next"));
        return;
    }
    outcome.echoed = k;
    let now = Instant::now();
    if now >= plan.measure_from && now <= plan.stop {
        outcome.echoed_measured += 1;
    }
    let due = due_at(k);
    if due >= plan.latency_from {
        outcome.timed(now.saturating_duration_since(due));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_index() {
        let text = payload(42, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(index_of(&text), Some(42));
        assert_eq!(index_of("12"), None);
        assert_eq!(index_of("abcdefghijklmnop"), None);
    }

    #[test]
    fn the_window_admits_what_room_allows_and_keeps_the_greatest_pair() {
        let mut up = Upstream {
            acked: 0,
            room: 3 * 200,
            sent: 0,
            charge: 200,
        };
        for _ in 0..3 {
            assert!(up.admits_one());
            up.sent += 1;
        }
        assert!(!up.admits_one());
        up.heard(2, Some(600));
        assert!(up.admits_one());
        // An older pair is ignored.
        up.heard(1, Some(10_000));
        assert_eq!((up.acked, up.room), (2, 600));
    }
}
