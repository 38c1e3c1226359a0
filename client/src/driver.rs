//! The driver task: keeps the session attached by doing what the
//! connection policy ([`Connector`], in `holdfast-protocol`) says — attach
//! this transport, probe that one, back off, switch up, give up — and
//! telling it how each attempt went. The policy itself (fallback,
//! demotion, backoff and its reset, re-probing, remembering) lives there,
//! shared with the JS client and checked by the scenario vectors in
//! `protocol/vectors/`; this file only runs it on tokio.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use holdfast_protocol::connector::{Action, AttemptEnd, Connector, ConnectorConfig, report};
use holdfast_protocol::{ClientConfig, ClientSession, Close, CloseCode, TransportKind};
use tokio::sync::Notify;

use crate::error::ConnectError;
use crate::event::Event;
use crate::memory;
use crate::shared::{ConnectState, Progress, Shared, now};
use crate::transport::{self, Ctx, probe::probe, sleep_until};

/// A probe under way: its id and whether the transport works.
type Probe<'a> = Pin<Box<dyn Future<Output = (u64, bool)> + Send + 'a>>;

pub(crate) struct Driver {
    pub(crate) ctx: Ctx,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: ConnectorConfig,
    pub(crate) remember_for: Duration,
    pub(crate) core_config: ClientConfig,
    pub(crate) memory_key: String,
}

impl Driver {
    pub(crate) async fn run(self) {
        self.drive().await;
    }

    async fn drive(&self) {
        let mut policy = self.policy.clone();
        policy.remembered = memory::recall(&self.memory_key);
        let mut connector = Connector::new(policy, now(), Box::new(random_unit));
        let mut probe: Option<Probe<'_>> = None;
        // How many of the fallback report's entries the server was told.
        let mut reported = 0;
        loop {
            if self.give_up_if_abandoned() {
                return;
            }
            let Some(action) = connector.poll(now()) else {
                if connector.is_done() {
                    self.finish();
                    return;
                }
                // Backing off: wait for the policy's timer, a probe's
                // result, or the application (a close cuts the wait short;
                // a send does not).
                let timeout = connector.poll_timeout().map(tokio::time::Instant::from_std);
                tokio::select! {
                    () = sleep_until(timeout) => {}
                    (id, works) = finish_probe(&mut probe), if probe.is_some() => {
                        connector.probed(now(), id, works);
                    }
                    () = self.shared.driver.notified() => {
                        if self.shared.lock().closing {
                            connector.wake(now(), false);
                        }
                    }
                }
                continue;
            };
            match action {
                Action::Attach {
                    transport,
                    fresh_session,
                    greeting_timeout,
                } => {
                    if fresh_session {
                        self.shared.lock().core = ClientSession::new(self.core_config.clone());
                    }
                    let riding = self.offer_report(&connector, reported);
                    let end = self
                        .attach(transport, greeting_timeout, &mut connector, &mut probe)
                        .await;
                    tracing::debug!(%transport, ?end, "attachment ended");
                    {
                        let mut inner = self.shared.lock();
                        // The server answered a request that carried the
                        // report: it has those entries, never send them again.
                        if inner.progress.opened {
                            reported = riding;
                        }
                        inner.report = None;
                    }
                    connector.ended(now(), end);
                    self.shared.lock().fallbacks = connector.fallbacks().to_vec();
                }
                Action::GiveUp(why) => {
                    self.fail(why.into());
                    return;
                }
                other => self.act(other, &mut probe),
            }
        }
    }

    /// Runs one attachment to its end, telling the policy how far it got
    /// and doing what the policy says meanwhile (probe, switch up).
    async fn attach<'a>(
        &'a self,
        kind: TransportKind,
        greeting_timeout: Duration,
        connector: &mut Connector,
        probe: &mut Option<Probe<'a>>,
    ) -> AttemptEnd {
        self.shared.lock().progress = Progress::default();
        let stop = Notify::new();
        let run = async {
            let (ctx, shared, stop) = (&self.ctx, &*self.shared, &stop);
            match kind {
                TransportKind::WebSocket => {
                    transport::ws::run(ctx, shared, stop, greeting_timeout).await
                }
                TransportKind::Sse => {
                    transport::sse::run(ctx, shared, stop, greeting_timeout).await
                }
                TransportKind::LongPoll => {
                    transport::poll::run(ctx, shared, stop, greeting_timeout).await
                }
            }
        };
        let mut run = pin!(run);
        let mut told = Progress::default();
        loop {
            let timeout = connector.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                end = &mut run => {
                    self.tell_progress(connector, &mut told);
                    return end;
                }
                () = self.shared.progress.notified() => self.tell_progress(connector, &mut told),
                (id, works) = finish_probe(probe), if probe.is_some() => {
                    connector.probed(now(), id, works);
                }
                () = sleep_until(timeout) => {}
            }
            while let Some(action) = connector.poll(now()) {
                match action {
                    Action::Stop => {
                        tracing::info!(from = %kind, "a better transport works again; switching");
                        stop.notify_one();
                    }
                    other => self.act(other, probe),
                }
            }
        }
    }

    /// Puts the fallback report's entries after the first `reported` on
    /// the next attachment's requests (`PROTOCOL.md` §1.2); how many
    /// entries that makes the server know once one is answered.
    fn offer_report(&self, connector: &Connector, reported: usize) -> usize {
        let fallbacks = connector.fallbacks();
        let unsent = fallbacks.get(reported..).unwrap_or_default();
        self.shared.lock().report = (!unsent.is_empty()).then(|| report::encode(unsent));
        fallbacks.len()
    }

    /// The actions that need no attachment of their own.
    fn act<'a>(&'a self, action: Action, probe: &mut Option<Probe<'a>>) {
        match action {
            Action::Probe { id, transport } => *probe = Some(self.probe(id, transport)),
            Action::Remember(kind) => memory::remember(&self.memory_key, kind, self.remember_for),
            Action::Reconnecting {
                attempt,
                delay,
                reason,
            } => {
                tracing::info!(attempt, ?delay, %reason, "reconnecting");
                self.shared.push_event(Event::Reconnecting {
                    attempt,
                    delay,
                    reason,
                });
            }
            // No `online` or visibility hints reach a Rust client: `wake`
            // is never called with an attachment up.
            Action::Check => {}
            // Handled by the callers.
            Action::Attach { .. } | Action::Stop | Action::GiveUp(_) => {
                tracing::debug!(?action, "not expected here");
            }
        }
    }

    /// Tells the policy what the transports recorded since last time.
    fn tell_progress(&self, connector: &mut Connector, told: &mut Progress) {
        let progress = self.shared.lock().progress;
        if progress.opened && !told.opened {
            connector.opened(now());
        }
        if progress.trusted && !told.trusted {
            connector.trusted(now());
        }
        *told = progress;
    }

    /// Probes `kind` for the session, without touching it.
    fn probe(&self, id: u64, kind: TransportKind) -> Probe<'_> {
        let key = self.shared.lock().core.params().map(|p| p.key.clone());
        Box::pin(async move {
            let works = match key {
                Some(key) => probe(&self.ctx, kind, &key).await,
                None => false,
            };
            (id, works)
        })
    }

    /// The policy is done: the session is over (its `Closed` event is
    /// queued), or it never opened.
    fn finish(&self) {
        if matches!(*self.shared.connect_state.borrow(), ConnectState::Pending) {
            self.fail(ConnectError::NoTransport(vec![
                "the session closed before it opened".into(),
            ]));
        }
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

/// Waits for the probe under way (pending if none), and clears it.
async fn finish_probe(probe: &mut Option<Probe<'_>>) -> (u64, bool) {
    let Some(running) = probe else {
        return std::future::pending().await;
    };
    let result = running.await;
    *probe = None;
    result
}

/// A uniform random number in `[0, 1)` from the operating system's RNG
/// (jitter needs no cryptographic quality, but needs to differ between
/// processes started together).
pub(crate) fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Fall back on the clock's low bits: still differs between clients.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return f64::from(nanos % 1_000_000) / 1_000_000.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
