//! Server-wide parameters: the session parameters plus limits and
//! proxy-hardening knobs of the HTTP transports.

use std::time::Duration;

use holdfast_protocol::SessionConfig;

use crate::admission::OpenRateLimit;

/// The smallest `open_lag_limit`: tokio's timers tick every millisecond,
/// and below this ordinary jitter would refuse sessions.
const MIN_OPEN_LAG_LIMIT: Duration = Duration::from_millis(10);

/// Parameters of a [`Holdfast`](crate::Holdfast) server. Every field has a
/// default sized for proxies that cut silent connections at 30 s.
///
/// ```
/// use std::time::Duration;
/// use holdfast_server::ServerConfig;
///
/// let mut config = ServerConfig::default();
/// config.max_sessions = 10_000;
/// config.session.resume_window = Duration::from_secs(60);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Timers and per-session limits, announced to clients in `open`, and
    /// how many sessions one shared request may carry
    /// ([`SessionConfig::max_shared_sessions`]).
    pub session: SessionConfig,
    /// Most sessions open at once; past it, new sessions get `503` +
    /// `Retry-After` (WebSocket: close 4503). Closed sessions stay
    /// resumable for the resume window without counting here, up to this
    /// many too (the oldest go first). Default 100 000.
    pub max_sessions: usize,
    /// How fast one client address may open sessions, so that one client
    /// cannot take all `max_sessions` and lock everyone out; past it, new
    /// sessions from that address get `503` + `Retry-After` (WebSocket:
    /// close 4503). Checked before anything is allocated for the session
    /// or the auth hook runs. Resumes, sends and polls are not limited.
    ///
    /// The address is the TCP peer's, which the server knows only when it
    /// runs with connect info (`holdfast::server::serve`, or axum's
    /// `into_make_service_with_connect_info::<SocketAddr>()`); without it
    /// there is no per-address limit. Behind a reverse proxy every client
    /// has the proxy's address: declare it with
    /// [`Builder::trusted_proxies`](crate::Builder::trusted_proxies) so the
    /// forwarded address counts instead.
    ///
    /// Default: a burst of 1000, then 25 a second, per address (an IPv6
    /// /64 is one address) — an office behind one NAT address can all
    /// reconnect at once, while one address can hold at most 5 % of the
    /// default `max_sessions`. Lower it with `max_sessions`. `None`: no
    /// limit.
    pub open_rate_limit: Option<OpenRateLimit>,
    /// How late the runtime may run ready work before new sessions are
    /// refused: past it, new sessions get `503` + `Retry-After` (WebSocket:
    /// close 4503), checked before anything else is done for them (no
    /// authentication, no store, no registry). Resumes, sends and polls
    /// are never refused for it: sessions already open keep their
    /// guarantee, and a reconnect storm does not lose sessions.
    ///
    /// The lag is measured by one task per server that sleeps 100 ms at a
    /// time and records how late it wakes
    /// ([`Holdfast::scheduling_lag`](crate::Holdfast::scheduling_lag),
    /// the `holdfast_scheduling_lag_seconds` gauge): about how long work
    /// that is ready waits for a worker. Under CPU overload every step of
    /// an opening (accept, request, upgrade, `open`) waits that long, and
    /// clients give up on them; a refusal is an answer they act on. It
    /// must be over the limit for two probes in a row (the one in flight
    /// counting once it is overdue by more than the limit), so that one
    /// stall — a long computation, the process paused — refuses nothing.
    ///
    /// Default 1 s: above what a runtime that keeps up shows (milliseconds
    /// with CPU to spare, peaks of a few hundred at 100 % CPU without a
    /// backlog), and reached when the workers have about a second of ready
    /// work queued, at which point an opening takes seconds. At least
    /// 10 ms. `None`: no limit, and no probe.
    pub open_lag_limit: Option<Duration>,
    /// Most bytes buffered across all sessions: replay buffers and
    /// received-but-unread messages, each message counting its payload plus
    /// [`MESSAGE_OVERHEAD`](holdfast_protocol::MESSAGE_OVERHEAD) (the
    /// figure [`Holdfast::buffered_bytes`](crate::Holdfast::buffered_bytes)
    /// reports). Past it, `send` waits and `try_send` reports full (for a
    /// session with messages in flight), send requests are refused at once
    /// with `503` (their acks still applied), and a WebSocket is not read
    /// while its session has received messages queued — unless its
    /// application waits for room to send (a `send` waiting, or its latest
    /// `try_send` refused): the acknowledgements it waits for travel behind
    /// the client's data, so that session's queue may fill up to its
    /// upstream window (`SessionConfig::max_inbound_bytes`), and stays
    /// there until the application takes it. Otherwise the total passes
    /// this by at most one batch (one send request or WebSocket message)
    /// and one outgoing message per session: a batch read or taken while
    /// the total was below this or the session's queue was empty, a
    /// message sent while the session had none in flight. Default 512 MiB.
    pub max_buffered_bytes: usize,
    /// `Retry-After` given with overload refusals. Default 5 s.
    pub retry_after: Duration,
    /// Bytes of padding comment at the start of each SSE stream, which makes
    /// some buffering proxies start forwarding. Default 2048; 0 disables.
    pub sse_padding: usize,
    /// An SSE stream is recycled (ended with `detach` 4000, the client
    /// reconnects at once) after this many bytes… Default 256 KiB.
    pub sse_max_bytes: usize,
    /// …or after this long, so a buffering proxy can never hoard it.
    /// Default 300 s.
    pub sse_max_age: Duration,
    /// How long a probe (`PROTOCOL.md` §8.5) stays open before the server
    /// ends it with `detach` 4001. Default 10 s.
    pub probe_lifetime: Duration,
    /// WebSocket read buffer per connection, in bytes. tungstenite zeroes
    /// this much before every read and keeps it allocated for the life of
    /// the connection, so it sets both the per-message CPU floor and the
    /// memory of an idle WebSocket session; larger messages simply take
    /// several reads. Default 2 KiB.
    pub ws_read_buffer: usize,
    /// Whether a WebSocket client that offers native text (`wstext=1`,
    /// `PROTOCOL.md` §2.2.1) gets it: large text messages then travel as
    /// WebSocket binary messages with a 9-byte header instead of escaped
    /// in JSON batches, both ways. Off, the server behaves exactly as one
    /// written before native text: it never grants it and refuses native
    /// text messages as malformed (1002). Default on.
    pub ws_native_text: bool,
    /// New sessions waiting for [`Incoming::accept`](crate::Incoming::accept);
    /// past it, new sessions are refused with `503`. Default 1024.
    pub accept_backlog: usize,
    /// How long a write to a client may make no progress — a WebSocket
    /// message (data, pong or close) — before the attachment is dropped
    /// (the session lives on and can resume). A reader that stopped reading
    /// can then no longer pin a connection, its task and its buffers.
    /// HTTP response bodies (an SSE stream) are written by the HTTP server,
    /// not by holdfast: [`serve`](crate::serve) applies the same deadline
    /// to them ([`ServeConfig::write_timeout`](crate::ServeConfig::write_timeout)).
    /// Default 30 s.
    pub write_timeout: Duration,
    /// How long the body of a `POST <mount>/send`, or of a shared request
    /// (`POST <mount>/sse` or `/poll`, `PROTOCOL.md` §11), may take to
    /// arrive whole; past it the request is refused with `408` and its
    /// connection closed. Default 15 s.
    pub body_timeout: Duration,
    /// Bytes of the opening request's headers kept with the session for
    /// [`Session::headers`](crate::Session::headers); headers past the
    /// budget are dropped (the auth hook still sees all of them).
    /// Default 8 KiB.
    pub max_kept_header_bytes: usize,
    /// Messages each [topic](crate::Topic)'s history keeps on a node
    /// without a store: a subscriber further behind than this (a session
    /// resuming, a node whose queue overflowed) cannot get what it missed.
    /// With a store, the store's own setting counts. Default 1000.
    pub topic_history: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            max_sessions: 100_000,
            open_rate_limit: Some(OpenRateLimit::default()),
            open_lag_limit: Some(Duration::from_secs(1)),
            max_buffered_bytes: 512 * 1024 * 1024,
            retry_after: Duration::from_secs(5),
            sse_padding: 2048,
            sse_max_bytes: 256 * 1024,
            sse_max_age: Duration::from_secs(300),
            probe_lifetime: Duration::from_secs(10),
            ws_read_buffer: 2048,
            ws_native_text: true,
            accept_backlog: 1024,
            write_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(15),
            max_kept_header_bytes: 8 * 1024,
            topic_history: crate::store::DEFAULT_HISTORY,
        }
    }
}

impl ServerConfig {
    /// Checks that the parameters make sense together.
    pub fn validate(&self) -> Result<(), holdfast_protocol::ConfigError> {
        self.session.validate()?;
        if let Some(limit) = &self.open_rate_limit {
            limit.validate()?;
        }
        if self
            .open_lag_limit
            .is_some_and(|limit| limit < MIN_OPEN_LAG_LIMIT)
        {
            return Err(holdfast_protocol::ConfigError(
                "open_lag_limit must be at least 10 ms",
            ));
        }
        if self.max_sessions == 0 || self.accept_backlog == 0 {
            return Err(holdfast_protocol::ConfigError(
                "max_sessions and accept_backlog must be at least 1",
            ));
        }
        if self.sse_max_bytes < self.sse_padding + 4096 {
            return Err(holdfast_protocol::ConfigError(
                "sse_max_bytes must leave room for events after the padding",
            ));
        }
        if self.max_buffered_bytes < self.session.max_unacked_bytes {
            return Err(holdfast_protocol::ConfigError(
                "max_buffered_bytes must hold at least one session's replay buffer",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_lag_limit_is_at_least_10_ms_or_none() {
        let mut config = ServerConfig::default();
        assert_eq!(config.open_lag_limit, Some(Duration::from_secs(1)));
        assert!(config.validate().is_ok());
        config.open_lag_limit = Some(Duration::from_millis(9));
        assert!(config.validate().is_err());
        config.open_lag_limit = Some(Duration::ZERO);
        assert!(config.validate().is_err());
        config.open_lag_limit = Some(MIN_OPEN_LAG_LIMIT);
        assert!(config.validate().is_ok());
        config.open_lag_limit = None;
        assert!(config.validate().is_ok());
    }
}
