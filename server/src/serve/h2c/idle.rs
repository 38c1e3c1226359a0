//! Closing an HTTP/2 connection that carries no request.
//!
//! On HTTP/1.1, hyper's header read timeout also closes a connection idle
//! between requests. hyper's HTTP/2 server has no such deadline: a client
//! could open connections, send nothing on them, and hold each (about
//! 28 KiB of buffers, and a `max_connections` slot) for as long as it
//! likes. [`Streams`] counts the requests in flight on one connection —
//! a request counts until its response body has been sent or dropped, so
//! a held SSE stream or poll keeps its connection — and [`Streams::idle`]
//! ends once none has been in flight for the deadline.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The requests in flight on one HTTP/2 connection.
#[derive(Debug)]
pub(crate) struct Streams {
    state: Mutex<State>,
    /// A request started, or the last one in flight ended.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// Since when none has been in flight (`None` while some are).
    idle_since: Option<Instant>,
}

impl Streams {
    /// A connection just opened: idle, as nothing has been asked yet.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Some(Instant::now()),
            }),
            changed: Notify::new(),
        })
    }

    /// A request starts: it is in flight until the returned guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.idle_since = None;
        drop(state);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Ends once no request has been in flight for `deadline` (at once
    /// never: a connection that just went idle gets the whole deadline).
    pub(crate) async fn idle(&self, deadline: Duration) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let since = self.lock().idle_since;
            match since {
                Some(since) if since.elapsed() >= deadline => return,
                Some(since) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(since + deadline) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request in flight on an HTTP/2 connection (see [`Streams::start`]).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Streams>);

impl InFlight {
    /// `body`, keeping this request in flight until it is sent or dropped.
    pub(crate) fn hold(self, body: Body) -> Body {
        Body::new(Held {
            body,
            _in_flight: self,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Some(Instant::now());
            drop(state);
            self.0.changed.notify_waiters();
        }
    }
}

/// A response body that keeps its request in flight.
struct Held {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_after_the_deadline() {
        let streams = Streams::new();
        let started = Instant::now();
        streams.idle(DEADLINE).await;
        assert_eq!(started.elapsed(), DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_it_busy_and_its_end_restarts_the_deadline() {
        let streams = Streams::new();
        let request = streams.start();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle(DEADLINE).await }
        });
        // Far past the deadline with the request in flight: not idle.
        tokio::time::sleep(DEADLINE * 5).await;
        assert!(!idle.is_finished());
        let ended = Instant::now();
        drop(request);
        idle.await.expect("the idle wait ends");
        assert_eq!(ended.elapsed(), DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_started_meanwhile_defers_it() {
        let streams = Streams::new();
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle(DEADLINE).await }
        });
        tokio::time::sleep(DEADLINE / 2).await;
        let request = streams.start();
        tokio::time::sleep(DEADLINE).await;
        assert!(!idle.is_finished());
        let ended = Instant::now();
        drop(request);
        idle.await.expect("the idle wait ends");
        assert_eq!(ended.elapsed(), DEADLINE);
    }
}
