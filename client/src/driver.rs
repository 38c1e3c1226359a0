//! The driver task: keeps the session attached. It picks a transport,
//! falls back when one is blocked, reconnects with backoff and jitter when
//! one drops, remembers what worked, and re-probes better transports in
//! the background to switch up without losing a message.
//!
//! Fallback rules (`docs/networks.md`, "The client's fallback rules"):
//!
//! - a transport that never delivers its first frame — refused upgrade,
//!   error page, closed or silent before the first frame — is *blocked*:
//!   the next one is tried at once;
//! - a transport that cannot even connect means the server (or network) is
//!   down: that is not a reason to fall back, so the same order is retried
//!   after a backoff;
//! - a transport that dies shortly after opening without ever carrying a
//!   frame both ways, twice, is demoted;
//! - what worked is remembered (with an expiry) for the next connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, MaybeDone, maybe_done};
use holdfast_protocol::{ClientSession, Close, CloseCode, TransportKind};
use tokio::sync::Notify;

use crate::backoff::{Backoff, random_unit};
use crate::error::{AttemptError, ConnectError};
use crate::event::Event;
use crate::memory;
use crate::shared::{ConnectState, Shared};
use crate::transport::{self, Ctx, EndReason, Outcome, probe::probe};

/// A transport that died without carrying frames both ways within this
/// long after opening counts as a flap.
const FLAP_WINDOW: Duration = Duration::from_secs(10);
/// Flaps after which a transport is demoted.
const FLAPS_TO_DEMOTE: u32 = 2;
/// Longest wait between re-probes of a better transport.
const MAX_REPROBE: Duration = Duration::from_secs(300);

pub(crate) struct Driver {
    pub(crate) ctx: Ctx,
    pub(crate) shared: Arc<Shared>,
    pub(crate) order: Vec<TransportKind>,
    pub(crate) backoff: Backoff,
    pub(crate) remember_for: Duration,
    pub(crate) reprobe_after: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) core_config: holdfast_protocol::ClientConfig,
    pub(crate) memory_key: String,
}

impl Driver {
    pub(crate) async fn run(self) {
        let started = tokio::time::Instant::now();
        let mut index = self.best_index();
        let mut attempt: u32 = 0;
        let mut flaps: HashMap<TransportKind, u32> = HashMap::new();
        let mut errors: Vec<String> = Vec::new();
        // Re-probing runs on its own clock across attachments: a busy
        // session on a fallback transport reconnects often (streams are
        // recycled), and must still get to probe.
        let mut reprobe = Reprobe::new(self.reprobe_after);
        loop {
            if self.give_up_if_abandoned() {
                return;
            }
            // A probe that finished between attachments: go straight to
            // the better transport instead of attaching below it first.
            if let Some(better) = reprobe.take_finished(index) {
                tracing::info!(from = %self.order[index], to = %self.order[better], "a better transport works again; switching");
                index = better;
                reprobe = Reprobe::new(self.reprobe_after);
            }
            let kind = self.order[index];
            let (outcome, switch_to) = self.attach(index, &mut reprobe).await;
            let delay = match outcome {
                Outcome::SessionClosed => {
                    self.fail(ConnectError::NoTransport(vec!["the session closed".into()]));
                    return;
                }
                Outcome::Failed(AttemptError::Refused(close)) => {
                    let retry = close
                        .retry_after
                        .filter(|_| close.code == CloseCode::OVERLOADED);
                    match retry {
                        Some(after) if started.elapsed() + after < self.connect_timeout => {
                            // Overloaded before the session opened: honour
                            // Retry-After with a fresh session.
                            tracing::info!(?after, "server overloaded; retrying later");
                            self.shared.lock().core = ClientSession::new(self.core_config.clone());
                            after + self.backoff.delay(0, random_unit())
                        }
                        _ => {
                            self.fail(ConnectError::Refused {
                                code: close.code,
                                reason: close.reason.to_string(),
                                retry_after: close.retry_after,
                            });
                            return;
                        }
                    }
                }
                Outcome::Failed(error) => {
                    tracing::debug!(transport = %kind, error = %error.describe(), "attempt failed");
                    errors.push(format!("{kind}: {}", error.describe()));
                    let unreachable = matches!(error, AttemptError::Unreachable(_));
                    if !unreachable && index + 1 < self.order.len() {
                        index += 1; // blocked: fall back at once
                        reprobe = Reprobe::new(self.reprobe_after);
                        continue;
                    }
                    if !self.opened() {
                        self.fail(ConnectError::NoTransport(std::mem::take(&mut errors)));
                        return;
                    }
                    index = self.best_index();
                    let delay = self.backoff.delay(attempt, random_unit());
                    attempt = attempt.saturating_add(1);
                    self.reconnecting(attempt, delay, errors.join("; "));
                    errors.clear();
                    delay
                }
                Outcome::Ended(ended) => {
                    errors.clear();
                    let lasted = ended.greeted_at.elapsed();
                    if ended.trusted {
                        memory::remember(&self.memory_key, kind, self.remember_for);
                        flaps.remove(&kind);
                    } else if lasted < FLAP_WINDOW {
                        let count = flaps.entry(kind).or_default();
                        *count += 1;
                        if *count >= FLAPS_TO_DEMOTE && index + 1 < self.order.len() {
                            tracing::info!(transport = %kind, "demoted: it keeps dying right after opening");
                            flaps.remove(&kind);
                            index += 1;
                            reprobe = Reprobe::new(self.reprobe_after);
                        }
                    }
                    // A connection that carried messages both ways proves
                    // the network works: the next drop starts the backoff
                    // afresh, however short-lived connections are.
                    if ended.trusted || lasted >= self.backoff.reset_after {
                        attempt = 0;
                    }
                    if let Some(better) = switch_to {
                        index = better;
                        reprobe = Reprobe::new(self.reprobe_after);
                    }
                    match ended.reason {
                        EndReason::Stopped => Duration::ZERO,
                        EndReason::Detached(close)
                            if close.code == CloseCode::RECONNECT
                                || close.code == CloseCode::REPLACED =>
                        {
                            Duration::ZERO
                        }
                        reason => {
                            let mut delay = self.backoff.delay(attempt, random_unit());
                            attempt = attempt.saturating_add(1);
                            if let EndReason::Busy(Some(after)) = &reason {
                                delay = delay.max(*after);
                            }
                            self.reconnecting(attempt, delay, describe(&reason));
                            delay
                        }
                    }
                }
            };
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.shared.driver.notified() => {}
                    // The probe goes on while we wait (its timeout runs
                    // whether it is polled or not).
                    () = reprobe.keep_going(&self, index), if index > 0 => {}
                }
            }
        }
    }

    /// Runs one attachment to its end, re-probing better transports in the
    /// background. Returns how it ended and, if it was stopped to switch
    /// up, the better transport's index.
    async fn attach<'a>(
        &'a self,
        index: usize,
        reprobe: &mut Reprobe<'a>,
    ) -> (Outcome, Option<usize>) {
        let stop = Notify::new();
        let kind = self.order[index];
        let run = async {
            match kind {
                TransportKind::WebSocket => {
                    transport::ws::run(&self.ctx, &self.shared, &stop).await
                }
                TransportKind::Sse => transport::sse::run(&self.ctx, &self.shared, &stop).await,
                TransportKind::LongPoll => {
                    transport::poll::run(&self.ctx, &self.shared, &stop).await
                }
            }
        };
        let mut run = std::pin::pin!(run);
        let mut switch = None;
        loop {
            tokio::select! {
                outcome = &mut run => return (outcome, switch),
                better = reprobe.outcome(self, index), if index > 0 && switch.is_none() => {
                    match better {
                        Some(better) if better < index => {
                            tracing::info!(from = %kind, to = %self.order[better], "a better transport works again; switching");
                            switch = Some(better);
                            stop.notify_one();
                        }
                        _ => reprobe.failed(),
                    }
                }
            }
        }
    }

    /// Probes the transports better than `index`; the best that works, if
    /// any.
    async fn probe_better(&self, index: usize) -> Option<usize> {
        let key = self.shared.lock().core.params().map(|p| p.key.clone())?;
        for better in 0..index {
            if probe(&self.ctx, self.order[better], &key).await {
                return Some(better);
            }
        }
        None
    }

    /// The index of the transport to try first: the one remembered for
    /// this server, else the first.
    fn best_index(&self) -> usize {
        memory::recall(&self.memory_key)
            .and_then(|kind| self.order.iter().position(|k| *k == kind))
            .unwrap_or(0)
    }

    fn opened(&self) -> bool {
        self.shared.lock().core.params().is_some()
    }

    fn fail(&self, error: ConnectError) {
        self.shared.connect_state.send_if_modified(|state| {
            if matches!(state, ConnectState::Pending) {
                *state = ConnectState::Failed(error);
                true
            } else {
                false
            }
        });
        let mut inner = self.shared.lock();
        if inner.closed.is_none() {
            let close = Close::new(CloseCode::GOING_AWAY, "no transport reaches the server");
            inner.core.abandon(close.clone());
            inner.closed = Some(close);
        }
        drop(inner);
        self.shared.app.notify_waiters();
        self.shared.space.notify_waiters();
    }

    fn reconnecting(&self, attempt: u32, delay: Duration, reason: String) {
        tracing::info!(attempt, ?delay, %reason, "reconnecting");
        self.shared.push_event(Event::Reconnecting {
            attempt,
            delay,
            reason,
        });
    }

    /// When the application let go while no transport is attached, there
    /// is nobody to tell: end here.
    fn give_up_if_abandoned(&self) -> bool {
        let mut inner = self.shared.lock();
        if !inner.abandoned {
            return inner.closed.is_some();
        }
        if inner.closed.is_none() {
            let close = Close::new(CloseCode::NORMAL, "the application let go");
            inner.core.abandon(close.clone());
            inner.closed = Some(close);
        }
        true
    }
}

/// When to probe better transports next: a deadline that survives
/// reconnects, pushed back (doubling, with jitter) after each failed probe.
///
/// The probe in flight survives reconnects too: a busy session on a
/// fallback transport may reconnect more often than a probe takes (SSE
/// streams are recycled every few hundred kilobytes), and a probe started
/// over with every attachment would never finish.
struct Reprobe<'a> {
    delay: Duration,
    due: tokio::time::Instant,
    /// Waiting for `due`, then probing, then holding what it found until
    /// taken; `None` until first polled.
    in_flight: Option<MaybeDone<BoxFuture<'a, Option<usize>>>>,
}

impl<'a> Reprobe<'a> {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            due: tokio::time::Instant::now() + delay.mul_f64(0.75 + 0.5 * random_unit()),
            in_flight: None,
        }
    }

    /// The probe of the transports better than `index`, started if none is
    /// in flight.
    fn probe(
        &mut self,
        driver: &'a Driver,
        index: usize,
    ) -> &mut MaybeDone<BoxFuture<'a, Option<usize>>> {
        self.in_flight.get_or_insert_with(|| {
            let due = self.due;
            maybe_done(Box::pin(async move {
                tokio::time::sleep_until(due).await;
                driver.probe_better(index).await
            }))
        })
    }

    /// Waits for the probe's outcome. Cancel-safe: dropped, the probe goes
    /// on at the next call.
    async fn outcome(&mut self, driver: &'a Driver, index: usize) -> Option<usize> {
        let probe = self.probe(driver, index);
        (&mut *probe).await;
        let better = Pin::new(probe).take_output().flatten();
        self.in_flight = None;
        better
    }

    /// Drives the probe while no attachment runs (during a backoff); what
    /// it finds waits for [`take_finished`](Self::take_finished). Never
    /// returns.
    async fn keep_going(&mut self, driver: &'a Driver, index: usize) {
        self.probe(driver, index).await;
        std::future::pending().await
    }

    /// The better transport a probe found while no attachment was waiting
    /// for it, if any; a finished probe that found none counts as failed.
    fn take_finished(&mut self, index: usize) -> Option<usize> {
        let probe = self.in_flight.as_mut()?;
        (&mut *probe).now_or_never()?;
        let finished = Pin::new(probe).take_output()?;
        self.in_flight = None;
        match finished {
            Some(better) if better < index => Some(better),
            _ => {
                self.failed();
                None
            }
        }
    }

    fn failed(&mut self) {
        self.in_flight = None;
        self.delay = (self.delay * 2).min(MAX_REPROBE);
        self.due = tokio::time::Instant::now() + self.delay.mul_f64(0.75 + 0.5 * random_unit());
    }
}

fn describe(reason: &EndReason) -> String {
    match reason {
        EndReason::Lost(why) => why.clone(),
        EndReason::Detached(close) => {
            format!("detached by the server: {} {}", close.code, close.reason)
        }
        EndReason::Silent => "nothing heard from the server for too long".into(),
        EndReason::Busy(_) => "the server is busy".into(),
        EndReason::Stopped => "switching transport".into(),
    }
}
