//! The three transports, each a loop that moves frames between the network
//! and the session core until its attachment ends, and what they share:
//! URLs, the link to the core, the upstream send pump.

pub(crate) mod poll;
pub(crate) mod probe;
pub(crate) mod sse;
pub(crate) mod upstream;
pub(crate) mod ws;

use std::time::{Duration, Instant};

use holdfast_protocol::wire::PROTOCOL_VERSION;
use holdfast_protocol::{
    AttachmentId, ClientEvent, Close, ConnectTarget, Frame, ProtocolError, TransportFailure,
    TransportKind,
};
use url::Url;

use crate::error::AttemptError;
use crate::event::{Closed, Event};
use crate::net::Net;
use crate::shared::{Shared, now};

/// The request header that carries the session key (`PROTOCOL.md` §1):
/// never in a URL, where proxies' access logs would keep it.
pub(crate) const KEY_HEADER: &str = "holdfast-key";

/// What every transport needs: where the server is and how to reach it.
pub(crate) struct Ctx {
    /// `http(s)://host[:port]/mount`, without a trailing slash.
    pub(crate) base: Url,
    pub(crate) net: Net,
    pub(crate) probe_timeout: Duration,
    /// How long a poll may be held by the server before we give up on it.
    pub(crate) poll_timeout: Duration,
    pub(crate) max_message: usize,
}

impl Ctx {
    /// The URL of an endpoint, with the connect query. The key is not in
    /// it: it travels in [`KEY_HEADER`].
    pub(crate) fn endpoint(&self, kind: TransportKind, target: &ConnectTarget) -> Url {
        let mut url = self.base.clone();
        let path = match kind {
            TransportKind::WebSocket => "ws",
            TransportKind::Sse => "sse",
            TransportKind::LongPoll => "poll",
        };
        url.set_path(&format!(
            "{}/{path}",
            self.base.path().trim_end_matches('/')
        ));
        if kind == TransportKind::WebSocket {
            let scheme = if self.base.scheme() == "https" {
                "wss"
            } else {
                "ws"
            };
            // http → ws and https → wss are always valid scheme changes.
            let _ = url.set_scheme(scheme);
        }
        {
            let mut query = url.query_pairs_mut();
            query
                .clear()
                .append_pair("v", &PROTOCOL_VERSION.to_string());
            if target.key.is_some() {
                query.append_pair("last", &target.last.to_string());
            }
        }
        url
    }

    /// The URL of the send endpoint (the key goes in [`KEY_HEADER`]).
    pub(crate) fn send_url(&self) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}/send", self.base.path().trim_end_matches('/')));
        url.query_pairs_mut()
            .clear()
            .append_pair("v", &PROTOCOL_VERSION.to_string());
        url
    }
}

/// How an attachment ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It never delivered its first frame.
    Failed(AttemptError),
    /// It carried the session, then the transport ended.
    Ended(Ended),
    /// The session is over (the `Closed` event is already queued).
    SessionClosed,
}

/// A transport that carried the session, and how it ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) reason: EndReason,
    /// Whether frames went both ways (the transport is trusted).
    pub(crate) trusted: bool,
    /// When it greeted.
    pub(crate) greeted_at: Instant,
}

#[derive(Debug)]
pub(crate) enum EndReason {
    /// The network dropped it.
    Lost(String),
    /// The server ended the attachment with `detach`.
    Detached(Close),
    /// Nothing arrived for longer than the heartbeat allows.
    Silent,
    /// The server answered with an overload refusal for a request.
    Busy(Option<Duration>),
    /// The driver asked this transport to stop (switching up).
    Stopped,
}

/// What a step of the core said about the attachment.
pub(crate) enum Step {
    Continue,
    Failed(AttemptError),
    Ended(EndReason),
    Closed,
}

/// One attachment's link to the session core: feeds it, asks it what to
/// send, and turns its events into steps and application events.
pub(crate) struct Link<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) id: AttachmentId,
    pub(crate) kind: TransportKind,
    pub(crate) greeted_at: Option<Instant>,
    /// When the server proved this transport works: its greeting, or for a
    /// continuing poll (greeted at once) the first poll answer. Until then
    /// an ending is a failed attempt, whatever the core believes.
    proven_at: Option<Instant>,
    /// Whether the application heard that the session is on this link.
    announced: bool,
    pub(crate) sent_any: bool,
    pub(crate) received_any: bool,
}

impl<'a> Link<'a> {
    /// Attaches a new transport to the core. `None` if the session is over.
    pub(crate) fn attach(shared: &'a Shared, kind: TransportKind) -> Option<(Self, ConnectTarget)> {
        let mut inner = shared.lock();
        let target = inner.core.connect_target()?;
        let id = inner.core.attach(now(), kind);
        // A poll that continues a poll attachment gets no `resumed`
        // (`PROTOCOL.md` §5): the core counts such an attachment as greeted
        // at once, and so does the link.
        let greeted = inner.core.transport() == Some(kind);
        drop(inner);
        Some((
            Self {
                shared,
                id,
                kind,
                greeted_at: greeted.then(Instant::now),
                proven_at: None,
                announced: false,
                sent_any: false,
                received_any: false,
            },
            target,
        ))
    }

    /// Frames that arrived on this attachment (`via_request`: in a send
    /// reply).
    pub(crate) fn feed(&mut self, frames: Vec<Frame>, via_request: bool) -> Step {
        let via = (!via_request).then_some(self.id);
        let mut inner = self.shared.lock();
        // Any acknowledgement frees room (in messages, if not in payload
        // bytes: an ack of empty messages frees only their overhead).
        let acked = inner.core.acked();
        let has_message = frames.iter().any(|f| matches!(f, Frame::Message { .. }));
        let result = inner.core.handle_frames(now(), via, frames);
        if inner.core.acked() > acked {
            self.shared.space.notify_waiters();
        }
        self.shared.take_messages(&mut inner);
        drop(inner);
        if has_message && !via_request {
            self.received_any = true;
        }
        if let Err(error) = result {
            return self.protocol_error(error);
        }
        self.events()
    }

    /// Runs the core's timers.
    pub(crate) fn timeout(&mut self) -> Step {
        self.shared.lock().core.handle_timeout(now());
        self.events()
    }

    /// When the core's timers next need [`timeout`](Self::timeout).
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.shared
            .lock()
            .core
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
    }

    /// Frames to send upstream now.
    pub(crate) fn transmit(&mut self) -> Option<Vec<Frame>> {
        let transmit = self.shared.lock().core.poll_transmit(now())?;
        if transmit
            .frames
            .iter()
            .any(|f| matches!(f, Frame::Message { .. } | Frame::Pong | Frame::Ack { .. }))
        {
            self.sent_any = true;
        }
        Some(transmit.frames)
    }

    /// The session key, once the session opened.
    pub(crate) fn key(&self) -> Option<String> {
        self.shared.lock().core.params().map(|p| p.key.clone())
    }

    /// Whether the application is behind on reading.
    pub(crate) fn inbound_full(&self) -> bool {
        self.shared.inbound_full()
    }

    /// Whether the first frame arrived.
    pub(crate) fn greeted(&self) -> bool {
        self.greeted_at.is_some()
    }

    /// The outcome once the transport itself failed or ended.
    pub(crate) fn lost(&self, why: impl Into<String>) -> Outcome {
        let why = why.into();
        match self.proven_at {
            None => Outcome::Failed(AttemptError::Blocked(format!(
                "{} closed before its first frame: {why}",
                self.kind
            ))),
            Some(_) => self.ended(EndReason::Lost(why)),
        }
    }

    pub(crate) fn ended(&self, reason: EndReason) -> Outcome {
        match self.proven_at {
            None => Outcome::Failed(AttemptError::Blocked(format!(
                "{} ended before it worked: {reason:?}",
                self.kind
            ))),
            Some(proven_at) => Outcome::Ended(Ended {
                reason,
                trusted: self.sent_any && self.received_any,
                greeted_at: proven_at,
            }),
        }
    }

    /// What a step means for the attachment: `None` while it carries on.
    pub(crate) fn outcome(&self, step: Step) -> Option<Outcome> {
        match step {
            Step::Continue => None,
            Step::Failed(e) => Some(Outcome::Failed(e)),
            Step::Ended(EndReason::Lost(why)) => Some(self.lost(why)),
            Step::Ended(reason) => Some(self.ended(reason)),
            Step::Closed => Some(Outcome::SessionClosed),
        }
    }

    /// Tells the core this attachment's transport is gone.
    pub(crate) fn detach(&self) {
        self.shared.lock().core.detach(now(), self.id);
    }

    fn protocol_error(&mut self, error: ProtocolError) -> Step {
        tracing::warn!(transport = %self.kind, %error, "the server broke the protocol");
        if error.ends_session() {
            let close = Close::new(error.close_code(), error.to_string());
            self.shared.lock().core.abandon(close);
            let _ = self.events();
            return Step::Closed;
        }
        Step::Ended(EndReason::Lost(format!("protocol error: {error}")))
    }

    /// Turns the core's events into a step and application events.
    fn events(&mut self) -> Step {
        let mut step = Step::Continue;
        loop {
            let event = {
                let mut inner = self.shared.lock();
                let Some(event) = inner.core.poll_event() else {
                    break;
                };
                event
            };
            match event {
                ClientEvent::Opened { id, kind } | ClientEvent::Resumed { id, kind }
                    if id == self.id =>
                {
                    let resumed = matches!(event, ClientEvent::Resumed { .. });
                    self.greeted_at.get_or_insert_with(Instant::now);
                    self.proven_at.get_or_insert_with(Instant::now);
                    if !self.announced {
                        self.announce(kind, resumed);
                    }
                }
                ClientEvent::Opened { .. } | ClientEvent::Resumed { .. } => {}
                ClientEvent::Detached { id, close } if id == self.id => {
                    step = Step::Ended(EndReason::Detached(close));
                }
                ClientEvent::TransportFailed { id, failure } if id == self.id => {
                    step = match failure {
                        TransportFailure::NoGreeting => Step::Failed(AttemptError::Blocked(
                            format!("no first frame on {} within the probe timeout", self.kind),
                        )),
                        TransportFailure::Silent => Step::Ended(EndReason::Silent),
                    };
                }
                ClientEvent::Detached { .. } | ClientEvent::TransportFailed { .. } => {}
                ClientEvent::Closed { close, initiator } => {
                    let mut inner = self.shared.lock();
                    if inner.core.params().is_none() {
                        // Refused before the session ever opened: a failed
                        // attempt, which `connect` reports.
                        step = Step::Failed(AttemptError::Refused(close));
                        continue;
                    }
                    if inner.closed.is_none() {
                        inner.closed = Some(close.clone());
                        inner.push_event(Event::Closed(Closed::new(&close, initiator)));
                    }
                    drop(inner);
                    self.shared.app.notify_waiters();
                    self.shared.space.notify_waiters();
                    step = Step::Closed;
                }
            }
        }
        step
    }

    /// Tells the application the session is (again) on this link, if the
    /// server's greeting did not already (a continuing poll has none).
    pub(crate) fn confirm(&mut self) {
        if self.greeted() {
            self.proven_at.get_or_insert_with(Instant::now);
        }
        if !self.announced && self.greeted() {
            self.announce(self.kind, true);
        }
    }

    /// Tells the application the session is (again) on a transport.
    fn announce(&mut self, kind: TransportKind, resumed: bool) {
        self.announced = true;
        let mut inner = self.shared.lock();
        let previous = inner.transport.replace(kind);
        if resumed {
            inner.push_event(Event::Resumed { transport: kind });
        } else if previous.is_none() {
            self.shared
                .connect_state
                .send_replace(crate::shared::ConnectState::Open);
            let session_id = inner
                .core
                .params()
                .map(|p| p.session_id.clone())
                .unwrap_or_default();
            inner.push_event(Event::Open {
                transport: kind,
                session_id,
            });
        }
        if let Some(from) = previous
            && from != kind
        {
            inner.push_event(Event::TransportChanged { from, to: kind });
        }
        drop(inner);
        self.shared.app.notify_waiters();
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
