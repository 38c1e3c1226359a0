//! The application's side of a connection: a stream of [`Event`]s and a
//! sender with backpressure, splittable for two tasks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use futures_util::stream::BoxStream;
use holdfast_protocol::connector::Fallback;
use holdfast_protocol::{Close, CloseCode, Message, SendError, TransportKind};

use crate::event::Event;
use crate::shared::{Shared, now};

/// Ends the session when the application lets go of every handle.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.abandoned = true;
        inner
            .core
            .close(now(), Close::new(CloseCode::NORMAL, "the client let go"));
        drop(inner);
        self.shared.driver.notify_one();
    }
}

/// A connection to a holdfast server: one session that survives dropped
/// connections and transport switches.
///
/// Read it as a [`Stream`] of [`Event`]s (or with
/// [`next_event`](Self::next_event)); send with [`send`](Self::send).
/// [`split`](Self::split) gives a [`Sender`] and a [`Receiver`] for two
/// tasks. Dropping every handle closes the session.
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
}

/// The sending half of a [`Connection`].
#[derive(Clone)]
pub struct Sender {
    handle: Arc<Handle>,
}

/// The receiving half of a [`Connection`]: a [`Stream`] of [`Event`]s.
pub struct Receiver {
    _handle: Arc<Handle>,
    events: BoxStream<'static, Event>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let handle = Arc::new(Handle {
            shared: shared.clone(),
        });
        let events = futures_util::stream::unfold(shared, |shared| async move {
            let event = shared.next_event().await?;
            Some((event, shared))
        });
        Self {
            sender: Sender {
                handle: handle.clone(),
            },
            receiver: Receiver {
                _handle: handle,
                // Fused: polling again after the end keeps answering `None`.
                events: Box::pin(futures_util::StreamExt::fuse(events)),
            },
        }
    }

    /// The next event; `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        self.receiver.next_event().await
    }

    /// Queues a message, waiting while too much is unacknowledged. Fails
    /// only once the session is closed (or for a message over the server's
    /// maximum).
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.sender.send(message).await
    }

    /// Queues a message if there is room now.
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.sender.try_send(message)
    }

    /// Ends the session cleanly: queued messages go first, then the server
    /// confirms. Gives up after the close timeout if the server cannot be
    /// reached.
    pub async fn close(&self) {
        self.sender.close().await;
    }

    /// The transport carrying the session now (or last).
    pub fn transport(&self) -> Option<TransportKind> {
        self.sender.transport()
    }

    /// The session's public id.
    pub fn session_id(&self) -> Option<String> {
        self.sender.session_id()
    }

    /// Why the connection is on the transport it is on: each step down
    /// the transport order it took (from WebSocket to SSE, from SSE to
    /// long-polling), with the cause — an upgrade refused with HTTP 403,
    /// an event stream buffered past the probe timeout, … — and how long
    /// into the attempt it gave up, oldest first (at most 16). The server
    /// is told too, once, on the next request that opens or resumes the
    /// session (its application reads it with `Session::fallbacks`).
    pub fn fallbacks(&self) -> Vec<Fallback> {
        self.sender.fallbacks()
    }

    /// Payload bytes sent but not yet acknowledged by the server.
    pub fn unacked_bytes(&self) -> usize {
        self.sender.unacked_bytes()
    }

    /// Splits into halves for two tasks. The session ends when both are
    /// dropped.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }
}

impl Stream for Connection {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.receiver).poll_next(cx)
    }
}

impl Sender {
    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// See [`Connection::send`].
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.shared().send(message.into()).await
    }

    /// See [`Connection::try_send`].
    pub fn try_send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.shared().try_send(message.into())
    }

    /// See [`Connection::close`].
    pub async fn close(&self) {
        let shared = self.shared();
        {
            let mut inner = shared.lock();
            inner.closing = true;
            inner.core.close(now(), Close::new(CloseCode::NORMAL, ""));
        }
        shared.driver.notify_one();
        let closed = async {
            loop {
                let notified = shared.app.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if shared.lock().closed.is_some() {
                    return;
                }
                notified.await;
            }
        };
        // The core gives up on the server's answer `close_timeout` after
        // sending the close; this bounds the wait from the call, when no
        // transport is up to carry the close at all.
        if tokio::time::timeout(shared.close_timeout, closed)
            .await
            .is_err()
        {
            let mut inner = shared.lock();
            if inner.closed.is_none() {
                let close = Close::new(CloseCode::NORMAL, "the server could not be reached");
                inner.core.abandon(close.clone());
                inner.closed = Some(close);
            }
        }
    }

    /// See [`Connection::transport`].
    pub fn transport(&self) -> Option<TransportKind> {
        self.shared().lock().transport
    }

    /// See [`Connection::session_id`].
    pub fn session_id(&self) -> Option<String> {
        self.shared()
            .lock()
            .core
            .params()
            .map(|p| p.session_id.clone())
    }

    /// See [`Connection::fallbacks`].
    pub fn fallbacks(&self) -> Vec<Fallback> {
        self.shared().lock().fallbacks.clone()
    }

    /// See [`Connection::unacked_bytes`].
    pub fn unacked_bytes(&self) -> usize {
        self.shared().lock().core.unacked_bytes()
    }
}

impl Receiver {
    /// The next event; `None` after [`Event::Closed`].
    pub async fn next_event(&mut self) -> Option<Event> {
        futures_util::StreamExt::next(&mut self.events).await
    }
}

impl Stream for Receiver {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.as_mut().poll_next(cx)
    }
}
