//! The client's end of a session.
//!
//! The client decides where to connect ([`ClientSession::connect_target`]),
//! attaches one transport at a time, and learns from the first frame whether
//! the session opened, resumed or is lost. Its upstream path follows the
//! attachment: frames go on the socket for WebSocket, in send requests for
//! SSE and long-polling (one request in flight at a time).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::flow::Credit;
use super::inbound::Inbound;
use super::outbound::Outbound;
use super::server::push_messages;
use super::{AttachmentId, Initiator, Transmit, TransportKind, due, earliest};
use crate::error::{ProtocolError, SendError};
use crate::wire::{Close, Frame, Message, OpenParams};

/// Parameters of the client's end of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// A new attachment whose first frame has not arrived after this long
    /// failed (this is how a buffering proxy is caught). Default 2 s. The
    /// holdfast clients give an attachment longer when its transport
    /// already carried this session and after greeting timeouts in a row
    /// ([`ClientSession::attach_within`], the connection policy's
    /// `Action::Attach`).
    pub probe_timeout: Duration,
    /// A streaming attachment is dead when nothing arrived for the server's
    /// ping interval plus this. Default `None`: half the ping interval (so
    /// 1.5 × ping, as `PROTOCOL.md` §6 recommends).
    pub heartbeat_tolerance: Option<Duration>,
    /// How long to wait for the server's answer to our `close`. Default 5 s.
    pub close_timeout: Duration,
    /// Largest message accepted by `send` before the server announced its
    /// own limit. Default 64 KiB (the server default).
    pub max_message: usize,
    /// Replay buffer limit in bytes, each message counting its payload plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD). An empty buffer takes
    /// any message, so a server's larger `max_msg` cannot wedge `send`.
    /// Default 1 MiB.
    pub max_unacked_bytes: usize,
    /// Replay buffer limit in messages. Default 4096.
    pub max_unacked_messages: usize,
    /// Send an ack once this many messages are unacknowledged. Default 32.
    pub ack_every: u64,
    /// …or this long after the first unacknowledged one. Default 100 ms.
    pub ack_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            probe_timeout: Duration::from_secs(2),
            heartbeat_tolerance: None,
            close_timeout: Duration::from_secs(5),
            max_message: 64 * 1024,
            max_unacked_bytes: 1024 * 1024,
            max_unacked_messages: 4096,
            ack_every: 32,
            ack_delay: Duration::from_millis(100),
        }
    }
}

/// Where the next attachment should point: the key to resume (none: open a
/// new session) and the highest downstream seq delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The session key, to resume; `None` opens a new session.
    pub key: Option<String>,
    /// The `last` query parameter.
    pub last: u64,
}

/// What a send request may carry while part of the upstream waits
/// ([`ClientSession::poll_transmit_only`], `PROTOCOL.md` §8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransmitOnly {
    /// Only the acknowledgement and the `pong` that are due: the messages
    /// (and the `close` behind them) wait out a refused request's
    /// `Retry-After` or a failed one's backoff, and must not hold back the
    /// acks that free the server's buffers.
    Control,
    /// Nothing unless a message (or the `close`) goes; acks and pongs
    /// ride along: a failed ack-only request's acks wait their own retry
    /// delay.
    Messages,
}

/// Why an attachment failed, as seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// No first frame within the probe timeout.
    NoGreeting,
    /// Nothing received for longer than the heartbeat allows.
    Silent,
}

/// What happened, for the client's driver and application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A new session opened on attachment `id`.
    Opened {
        /// The attachment.
        id: AttachmentId,
        /// Its transport.
        kind: TransportKind,
    },
    /// The session resumed on attachment `id`; the stream is whole.
    Resumed {
        /// The attachment.
        id: AttachmentId,
        /// Its transport.
        kind: TransportKind,
    },
    /// The server ended attachment `id` (`detach`); resume unless replaced.
    Detached {
        /// The attachment.
        id: AttachmentId,
        /// The server's code and reason.
        close: Close,
    },
    /// Attachment `id` failed on the client's own timers.
    TransportFailed {
        /// The attachment.
        id: AttachmentId,
        /// How.
        failure: TransportFailure,
    },
    /// The session is over. `close.code == CloseCode::SESSION_LOST` means
    /// the server no longer knew it.
    Closed {
        /// The code and reason.
        close: Close,
        /// Who ended it.
        initiator: Initiator,
    },
}

/// The client's end of one session.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    params: Option<OpenParams>,
    out: Outbound,
    inb: Inbound,
    /// The upstream window the server granted (`PROTOCOL.md` §3.1).
    credit: Credit,
    state: State,
    attachment: Option<Attachment>,
    next_attachment: u64,
    pong_due: bool,
    events: VecDeque<ClientEvent>,
}

#[derive(Debug)]
enum State {
    Open,
    /// Our `close` is queued (`sent_at: None`) or awaiting the answer.
    Closing {
        close: Close,
        sent_at: Option<Instant>,
    },
    Closed,
}

#[derive(Debug)]
struct Attachment {
    id: AttachmentId,
    kind: TransportKind,
    greeted: bool,
    greeting_deadline: Instant,
    last_heard: Instant,
    ack_due: bool,
    /// Native text granted on this WebSocket (`PROTOCOL.md` §2.2.1): texts
    /// of at least this many bytes travel outside any batch.
    native_text_min: Option<usize>,
}

impl ClientSession {
    /// A session not yet opened.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            out: Outbound::new(config.max_unacked_bytes, config.max_unacked_messages),
            inb: Inbound::new(),
            credit: Credit::default(),
            config,
            params: None,
            state: State::Open,
            attachment: None,
            next_attachment: 1,
            pong_due: false,
            events: VecDeque::new(),
        }
    }

    // ---- getters -------------------------------------------------------

    /// Where to attach next; `None` once the session is closed.
    pub fn connect_target(&self) -> Option<ConnectTarget> {
        if matches!(self.state, State::Closed) {
            return None;
        }
        Some(ConnectTarget {
            key: self.params.as_ref().map(|p| p.key.clone()),
            last: self.inb.received(),
        })
    }

    /// The server's `open` parameters, once the session opened.
    pub fn params(&self) -> Option<&OpenParams> {
        self.params.as_ref()
    }

    /// The current attachment's transport, once it greeted.
    pub fn transport(&self) -> Option<TransportKind> {
        self.attachment
            .as_ref()
            .filter(|a| a.greeted)
            .map(|a| a.kind)
    }

    /// The current attachment, greeted or not.
    pub fn attachment(&self) -> Option<AttachmentId> {
        self.attachment.as_ref().map(|a| a.id)
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Payload bytes sent or queued but not acknowledged (`bufferedAmount`).
    /// The replay buffer's limit counts more: each message's payload plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD).
    pub fn unacked_bytes(&self) -> usize {
        self.out.payload_bytes()
    }

    /// Whether a message of `len` bytes can be queued now (an empty replay
    /// buffer takes any message up to `max_message`).
    pub fn has_room_for(&self, len: usize) -> bool {
        self.out.has_room_for(len)
    }

    /// The upstream window (`PROTOCOL.md` §3.1): the latest
    /// acknowledgement with a `room` and that room, in charged bytes.
    /// `None` while the server announced no window (an older server).
    pub fn window(&self) -> Option<(u64, usize)> {
        self.credit.latest()
    }

    /// Charged bytes more that may be transmitted now (`None`: no limit):
    /// the server's latest `room` less the messages sent after its ack.
    pub fn window_left(&self) -> Option<usize> {
        self.credit.budget(self.out.in_flight())
    }

    /// Highest downstream sequence number received.
    pub fn received(&self) -> u64 {
        self.inb.received()
    }

    /// Highest upstream sequence number assigned.
    pub fn sent(&self) -> u64 {
        self.out.last_seq()
    }

    /// Highest upstream sequence number the server acknowledged.
    pub fn acked(&self) -> u64 {
        self.out.acked()
    }

    /// Messages received and not yet taken by the application, charged
    /// their payload plus [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD)
    /// each.
    pub fn inbound_bytes(&self) -> usize {
        self.inb.queued_bytes()
    }

    // ---- inputs --------------------------------------------------------

    /// A transport connected to [`connect_target`](Self::connect_target);
    /// its first frame is awaited. Replaces any current attachment.
    ///
    /// Except on long-polling once the session is open: a poll that the
    /// server takes as continuing its poll attachment gets no `resumed`
    /// (`PROTOCOL.md` §5), and the client cannot tell such a poll from a
    /// resume, so that attachment is usable at once; a `resumed` may still
    /// come (and is reported) on any poll.
    ///
    /// While closing, the new attachment carries the unacknowledged
    /// messages again, then the `close`.
    pub fn attach(&mut self, now: Instant, kind: TransportKind) -> AttachmentId {
        self.attach_within(now, kind, self.config.probe_timeout)
    }

    /// [`attach`](Self::attach), the first frame being awaited for
    /// `greeting_timeout` instead of the configured probe timeout (the
    /// connection policy's deadline for this attachment).
    pub fn attach_within(
        &mut self,
        now: Instant,
        kind: TransportKind,
        greeting_timeout: Duration,
    ) -> AttachmentId {
        let id = AttachmentId(self.next_attachment);
        self.next_attachment += 1;
        self.out.rewind();
        if let State::Closing { sent_at, .. } = &mut self.state {
            *sent_at = None;
        }
        self.attachment = Some(Attachment {
            id,
            kind,
            greeted: kind == TransportKind::LongPoll && self.params.is_some(),
            greeting_deadline: now + greeting_timeout,
            last_heard: now,
            ack_due: false,
            native_text_min: None,
        });
        id
    }

    /// The current attachment (a WebSocket whose greeting granted native
    /// text, `PROTOCOL.md` §2.2.1) carries texts of at least `min` bytes
    /// natively, which acks cannot ride along with.
    pub fn set_native_text(&mut self, min: Option<usize>) {
        if let Some(a) = &mut self.attachment {
            a.native_text_min = min;
        }
    }

    /// Attachment `id`'s transport is gone. A no-op for older attachments.
    pub fn detach(&mut self, _now: Instant, id: AttachmentId) {
        if self.attachment.as_ref().is_some_and(|a| a.id == id) {
            self.attachment = None;
            self.out.rewind();
        }
    }

    /// Frames from the server: on attachment `via`, or (`None`) in the
    /// reply to a send request. Frames from a replaced attachment are
    /// ignored (they will be replayed on the current one).
    pub fn handle_frames(
        &mut self,
        now: Instant,
        via: Option<AttachmentId>,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<(), ProtocolError> {
        if let Some(id) = via {
            match &mut self.attachment {
                Some(a) if a.id == id => a.last_heard = now,
                _ => return Ok(()),
            }
        }
        for frame in frames {
            if self.is_closed() {
                break;
            }
            self.handle_frame(now, via, frame)?;
        }
        Ok(())
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        via: Option<AttachmentId>,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        let greeting_pending =
            via.is_some() && self.attachment.as_ref().is_some_and(|a| !a.greeted);
        match frame {
            Frame::Open(params) if greeting_pending && self.params.is_none() => {
                self.credit.open(params.window);
                self.params = Some(params);
                self.greeted(now, false);
            }
            Frame::Resumed { ack, room, .. } if via.is_some() && self.params.is_some() => {
                // On long-polling a `resumed` may start any poll's answer.
                self.acknowledged(ack, room)?;
                self.out.rewind();
                if greeting_pending
                    || self
                        .attachment
                        .as_ref()
                        .is_some_and(|a| a.kind == TransportKind::LongPoll)
                {
                    self.greeted(now, true);
                }
            }
            Frame::Close(close) => self.closed_by_server(close),
            other if greeting_pending => {
                return Err(ProtocolError::MissingGreeting(other.type_name()));
            }
            Frame::Message { seq, message } => {
                let max = self.max_message();
                if message.len() > max {
                    return Err(ProtocolError::MessageTooBig {
                        len: message.len(),
                        max,
                    });
                }
                self.inb.accept(now, seq, message)?;
            }
            // On every transport: the server announces room that came
            // back on its downstream too.
            Frame::Ack { seq, room } => self.acknowledged(seq, room)?,
            Frame::Ping => self.pong_due = true,
            Frame::Pong => {}
            Frame::Detach(close) if via.is_some() => {
                if let Some(a) = self.attachment.take() {
                    self.events
                        .push_back(ClientEvent::Detached { id: a.id, close });
                }
                self.out.rewind();
            }
            other @ (Frame::Open(_) | Frame::Resumed { .. } | Frame::Detach(_)) => {
                return Err(ProtocolError::UnexpectedFrame(other.type_name()));
            }
        }
        Ok(())
    }

    /// An acknowledgement of `seq` from the server, with the room it left.
    fn acknowledged(&mut self, seq: u64, room: Option<u64>) -> Result<(), ProtocolError> {
        let freed = self.out.charge_through(seq);
        self.out.ack(seq)?;
        match room {
            Some(room) => self
                .credit
                .grant(seq, usize::try_from(room).unwrap_or(usize::MAX)),
            None => self.credit.consumed(seq, freed),
        }
        Ok(())
    }

    /// A send request failed: what it carried will be sent again.
    pub fn request_failed(&mut self, now: Instant) {
        self.out.rewind();
        self.inb.ack_lost(now);
        if let State::Closing { sent_at, .. } = &mut self.state {
            *sent_at = None;
        }
    }

    /// A poll request carried `last` as its acknowledgement.
    pub fn acked_by_request(&mut self, last: u64) {
        self.inb.acked_through(last);
    }

    /// Queues a message for the server. Allowed before the session opens
    /// and while detached: it goes out, in order, once attached.
    pub fn send(&mut self, message: Message) -> Result<u64, SendError> {
        if !matches!(self.state, State::Open) {
            return Err(SendError::Closed);
        }
        let max = self.max_message();
        if message.len() > max {
            return Err(SendError::TooBig {
                len: message.len(),
                max,
            });
        }
        self.out.push(message)
    }

    /// Ends the session: `close` goes out after the queued messages, and the
    /// session is closed when the server answers (or after the close
    /// timeout).
    pub fn close(&mut self, now: Instant, close: Close) {
        if !matches!(self.state, State::Open) {
            return;
        }
        if self.params.is_none() {
            // Never opened: there is nobody to tell.
            self.finish(close, Initiator::Local);
            return;
        }
        let _ = now;
        self.state = State::Closing {
            close,
            sent_at: None,
        };
    }

    /// Gives the session up without telling the server (the driver could
    /// not reach it).
    pub fn abandon(&mut self, close: Close) {
        if !self.is_closed() {
            self.finish(close, Initiator::Local);
        }
    }

    /// Advances timers: call when [`poll_timeout`](Self::poll_timeout)
    /// passes (earlier calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Closing {
            close,
            sent_at: Some(at),
        } = &self.state
            && now >= *at + self.config.close_timeout
        {
            let close = close.clone();
            self.finish(close, Initiator::Local);
            return;
        }
        let ack_deadline = self
            .inb
            .ack_deadline(self.config.ack_every, self.config.ack_delay);
        let dead_after = self.dead_after();
        let Some(a) = &mut self.attachment else {
            return;
        };
        let failure = if !a.greeted {
            (now >= a.greeting_deadline).then_some(TransportFailure::NoGreeting)
        } else if a.kind.is_streaming() && dead_after.is_some_and(|d| now >= a.last_heard + d) {
            Some(TransportFailure::Silent)
        } else {
            None
        };
        if let Some(failure) = failure {
            let id = a.id;
            self.attachment = None;
            self.out.rewind();
            self.events
                .push_back(ClientEvent::TransportFailed { id, failure });
            return;
        }
        if a.greeted && a.kind != TransportKind::LongPoll && due(ack_deadline, now) {
            a.ack_due = true;
        }
    }

    // ---- outputs -------------------------------------------------------

    /// Frames to send upstream now: on the socket for WebSocket, as a send
    /// request for SSE and long-polling (call only when no send request is
    /// in flight). `None` until the attachment greeted.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.transmit(now, true, true)
    }

    /// [`poll_transmit`](Self::poll_transmit) for a send request that may
    /// carry only part of what is due (see [`TransmitOnly`]).
    pub fn poll_transmit_only(&mut self, now: Instant, only: TransmitOnly) -> Option<Transmit> {
        match only {
            TransmitOnly::Control => self.transmit(now, false, true),
            TransmitOnly::Messages => self.transmit(now, true, false),
        }
    }

    /// Frames to send now: messages and the `close` if `messages`; acks
    /// and pongs alone (without a message or the `close` going) if
    /// `control_alone`.
    fn transmit(&mut self, now: Instant, messages: bool, control_alone: bool) -> Option<Transmit> {
        let a = self.attachment.as_mut().filter(|a| a.greeted)?;
        let mut frames = Vec::new();
        let open = messages
            && matches!(
                self.state,
                State::Open | State::Closing { sent_at: None, .. }
            );
        if open {
            let target = self
                .params
                .as_ref()
                .map_or(self.config.max_message, |p| p.max_message);
            let window = self.credit.budget(self.out.in_flight());
            push_messages(
                &mut self.out,
                target,
                window,
                &mut frames,
                a.native_text_min,
            );
        }
        let close_due = messages
            && matches!(self.state, State::Closing { sent_at: None, .. })
            && !self.out.has_pending();
        if frames.is_empty() && !close_due && !control_alone {
            return None;
        }
        if std::mem::take(&mut self.pong_due) {
            frames.insert(0, Frame::Pong);
        }
        // An ack rides along only in a JSON batch going out anyway: native
        // messages are no batch (§2.3), so it then waits for its deadline.
        let batch_going = frames
            .iter()
            .any(|f| !super::travels_natively(f, a.native_text_min));
        if self.inb.has_unacked() && (a.ack_due || batch_going) {
            a.ack_due = false;
            frames.push(Frame::ack(self.inb.take_ack()));
        }
        if let State::Closing { close, sent_at } = &mut self.state
            && close_due
        {
            frames.push(Frame::Close(close.clone()));
            *sent_at = Some(now);
        }
        (!frames.is_empty()).then_some(Transmit { frames, end: None })
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let closing = match &self.state {
            State::Closing {
                sent_at: Some(at), ..
            } => Some(*at + self.config.close_timeout),
            _ => None,
        };
        let attachment = self.attachment.as_ref().and_then(|a| {
            if !a.greeted {
                return Some(a.greeting_deadline);
            }
            earliest([
                (a.kind.is_streaming())
                    .then(|| self.dead_after().map(|d| a.last_heard + d))
                    .flatten(),
                (a.kind != TransportKind::LongPoll && !a.ack_due)
                    .then(|| {
                        self.inb
                            .ack_deadline(self.config.ack_every, self.config.ack_delay)
                    })
                    .flatten(),
            ])
        });
        earliest([closing, attachment])
    }

    /// The next lifecycle event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The next message from the server, for the application.
    pub fn poll_message(&mut self) -> Option<Message> {
        self.inb.pop()
    }

    // ---- internals -----------------------------------------------------

    fn max_message(&self) -> usize {
        self.params
            .as_ref()
            .map_or(self.config.max_message, |p| p.max_message)
    }

    fn dead_after(&self) -> Option<Duration> {
        self.params.as_ref().map(|p| {
            p.ping_interval
                + self
                    .config
                    .heartbeat_tolerance
                    .unwrap_or(p.ping_interval / 2)
        })
    }

    fn greeted(&mut self, now: Instant, resumed: bool) {
        if let Some(a) = &mut self.attachment {
            let first = !a.greeted;
            a.greeted = true;
            a.last_heard = now;
            let (id, kind) = (a.id, a.kind);
            if first || resumed {
                self.events.push_back(if resumed {
                    ClientEvent::Resumed { id, kind }
                } else {
                    ClientEvent::Opened { id, kind }
                });
            }
        }
    }

    fn closed_by_server(&mut self, close: Close) {
        let initiator = match self.state {
            State::Closing { .. } => Initiator::Local,
            _ => Initiator::Peer,
        };
        self.finish(close, initiator);
    }

    fn finish(&mut self, close: Close, initiator: Initiator) {
        self.state = State::Closed;
        self.attachment = None;
        self.events
            .push_back(ClientEvent::Closed { close, initiator });
    }
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new(ClientConfig::default())
    }
}
