//! The three transports, each a loop that moves frames between the network
//! and the session core until its attachment ends, and what they share:
//! URLs, the link to the core, the upstream send pump.

pub(crate) mod http;
pub(crate) mod poll;
pub(crate) mod probe;
pub(crate) mod sse;
pub(crate) mod upstream;
pub(crate) mod ws;

use std::time::Duration;

use holdfast_protocol::connector::{AttemptEnd, SendPolicy};
use holdfast_protocol::wire::PROTOCOL_VERSION;
use holdfast_protocol::{
    AttachmentId, ClientEvent, Close, ConnectTarget, Frame, ProtocolError, TransmitOnly,
    TransportFailure, TransportKind,
};
use url::Url;

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
    /// How long a probe waits for its answer; also bounds a few waits of
    /// an attachment that are not its greeting (a refusal's body, a
    /// goodbye). An attachment's greeting gets the connection policy's
    /// deadline instead (`Action::Attach`).
    pub(crate) probe_timeout: Duration,
    /// How long a poll may be held by the server before we give up on it.
    pub(crate) poll_timeout: Duration,
    pub(crate) max_message: usize,
    /// The send-retry rule each attachment starts with.
    pub(crate) send_policy: SendPolicy,
}

impl Ctx {
    /// The URL of an endpoint, with the connect query and the fallback
    /// `report` to deliver, if any. The key is not in it: it travels in
    /// [`KEY_HEADER`].
    pub(crate) fn endpoint(
        &self,
        kind: TransportKind,
        target: &ConnectTarget,
        report: Option<&str>,
    ) -> Url {
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
            if let Some(report) = report {
                query.append_pair("report", report);
            }
            if kind == TransportKind::WebSocket {
                // Offers native text (PROTOCOL.md §2.2.1); a server
                // without it ignores the parameter.
                query.append_pair("wstext", "1");
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

/// What a step of the core said about the attachment.
pub(crate) enum Step {
    Continue,
    End(AttemptEnd),
}

/// One attachment's link to the session core: feeds it, asks it what to
/// send, turns its events into steps and application events, and tells the
/// driver when the attachment proved itself (opened, trusted).
pub(crate) struct Link<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) id: AttachmentId,
    pub(crate) kind: TransportKind,
    /// Whether the first frame arrived (or, for a poll continuing a poll
    /// attachment, none is coming: `PROTOCOL.md` §5).
    greeted: bool,
    /// Whether the server proved this transport works: its greeting, or
    /// for a continuing poll the first poll answer.
    opened: bool,
    /// Whether the application heard that the session is on this link.
    announced: bool,
    /// The fallback report this attachment's requests carry until it
    /// opened.
    report: Option<String>,
    sent_any: bool,
    received_any: bool,
    /// A poll continuing a poll attachment gets no `resumed` and may be
    /// held with nothing to deliver (`PROTOCOL.md` §5), so after a lost
    /// poll nothing would prove the session until the hold ends: a `ping`
    /// in a send request does at once (its reply confirms the link).
    ping_due: bool,
}

impl<'a> Link<'a> {
    /// Attaches a new transport to the core, which fails it if its first
    /// frame has not arrived within `greeting_timeout`. `None` if the
    /// session is over.
    pub(crate) fn attach(
        shared: &'a Shared,
        kind: TransportKind,
        greeting_timeout: Duration,
    ) -> Option<(Self, ConnectTarget)> {
        let mut inner = shared.lock();
        let target = inner.core.connect_target()?;
        let id = inner.core.attach_within(now(), kind, greeting_timeout);
        // A poll that continues a poll attachment gets no `resumed`
        // (`PROTOCOL.md` §5): the core counts such an attachment as greeted
        // at once, and so does the link.
        let greeted = inner.core.transport() == Some(kind);
        let report = inner.report.clone();
        drop(inner);
        Some((
            Self {
                shared,
                id,
                kind,
                greeted,
                opened: false,
                announced: false,
                report,
                sent_any: false,
                received_any: false,
                ping_due: greeted && kind == TransportKind::LongPoll,
            },
            target,
        ))
    }

    /// Frames that arrived on this attachment (`via_request`: in a send
    /// reply).
    pub(crate) fn feed(&mut self, frames: Vec<Frame>, via_request: bool) -> Step {
        let via = (!via_request).then_some(self.id);
        let has_message = frames.iter().any(|f| matches!(f, Frame::Message { .. }));
        let mut inner = self.shared.lock();
        let result = inner.core.handle_frames(now(), via, frames);
        Shared::take_messages(&mut inner);
        drop(inner);
        if has_message && !via_request {
            self.received_any = true;
            self.check_trusted();
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

    /// Frames to send upstream now: everything due, or (`only`) the part
    /// a send request may carry while the rest waits.
    pub(crate) fn transmit(&mut self, only: Option<TransmitOnly>) -> Option<Vec<Frame>> {
        let transmit = {
            let mut inner = self.shared.lock();
            match only {
                None => inner.core.poll_transmit(now()),
                Some(only) => inner.core.poll_transmit_only(now(), only),
            }
        };
        let Some(transmit) = transmit else {
            // Anything sent proves the session as well as a ping does; the
            // ping is control, and waits while only messages may go.
            if only == Some(TransmitOnly::Messages) {
                return None;
            }
            return std::mem::take(&mut self.ping_due).then(|| vec![Frame::Ping]);
        };
        self.ping_due = false;
        if transmit
            .frames
            .iter()
            .any(|f| matches!(f, Frame::Message { .. } | Frame::Pong | Frame::Ack { .. }))
        {
            self.sent_any = true;
            self.check_trusted();
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

    /// The fallback report for this attachment's next request: until the
    /// server answered one (the session opened or resumed), then never.
    pub(crate) fn report(&self) -> Option<&str> {
        self.report.as_deref().filter(|_| !self.opened)
    }

    /// Whether the first frame arrived.
    pub(crate) fn greeted(&self) -> bool {
        self.greeted
    }

    /// What a step means for the attachment: `None` while it carries on.
    pub(crate) fn outcome(step: Step) -> Option<AttemptEnd> {
        match step {
            Step::Continue => None,
            Step::End(end) => Some(end),
        }
    }

    /// Tells the core this attachment's transport is gone.
    pub(crate) fn detach(&self) {
        self.shared.lock().core.detach(now(), self.id);
    }

    /// A non-200 answer to a request of this attachment: a `close` in it
    /// goes to the core (which ends or refuses the session), anything else
    /// ends the attachment.
    pub(crate) fn refused(
        &mut self,
        status: u16,
        headers: &::http::HeaderMap,
        body: &[u8],
    ) -> Step {
        match crate::error::classify_http(status, headers, body) {
            AttemptEnd::Refused(close) => {
                match self.feed(vec![Frame::Close(close.clone())], true) {
                    Step::Continue => Step::End(AttemptEnd::Refused(close)),
                    end => end,
                }
            }
            end => Step::End(end),
        }
    }

    fn protocol_error(&mut self, error: ProtocolError) -> Step {
        tracing::warn!(transport = %self.kind, %error, "the server broke the protocol");
        if error.ends_session() {
            let close = Close::new(error.close_code(), error.to_string());
            self.shared.lock().core.abandon(close);
            let _ = self.events();
            return Step::End(AttemptEnd::SessionClosed);
        }
        Step::End(AttemptEnd::Invalid)
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
                    self.greeted = true;
                    self.mark_opened();
                    if !self.announced {
                        self.announce(kind, resumed);
                    }
                }
                ClientEvent::Opened { .. } | ClientEvent::Resumed { .. } => {}
                ClientEvent::Detached { id, close } if id == self.id => {
                    step = Step::End(AttemptEnd::Detached(close));
                }
                ClientEvent::TransportFailed { id, failure } if id == self.id => {
                    step = Step::End(match failure {
                        TransportFailure::NoGreeting => AttemptEnd::NoFirstFrame,
                        TransportFailure::Silent => AttemptEnd::Silent,
                    });
                }
                ClientEvent::Detached { .. } | ClientEvent::TransportFailed { .. } => {}
                ClientEvent::Closed { close, initiator } => {
                    let mut inner = self.shared.lock();
                    if inner.core.params().is_none() {
                        // Refused before the session ever opened: the
                        // connection policy decides (retry later, or give
                        // up and let `connect` report it).
                        step = Step::End(AttemptEnd::Refused(close));
                        continue;
                    }
                    if inner.closed.is_none() {
                        inner.closed = Some(close.clone());
                        inner.push_event(Event::Closed(Closed::new(&close, initiator)));
                    }
                    drop(inner);
                    step = Step::End(AttemptEnd::SessionClosed);
                }
            }
        }
        step
    }

    /// A poll answer (or a send reply) arrived: a continuing poll
    /// attachment (greeted at once) is proven now, and the application
    /// hears the session is on this link if the greeting did not already
    /// tell it.
    pub(crate) fn confirm(&mut self) {
        if self.greeted {
            self.mark_opened();
            if !self.announced {
                self.announce(self.kind, true);
            }
        }
    }

    fn mark_opened(&mut self) {
        if !self.opened {
            self.opened = true;
            self.shared.attempt_progress(|p| p.opened = true);
            self.check_trusted();
        }
    }

    fn check_trusted(&mut self) {
        if self.opened && self.sent_any && self.received_any {
            self.shared.attempt_progress(|p| p.trusted = true);
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
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
