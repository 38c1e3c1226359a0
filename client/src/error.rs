//! Errors: what `connect` and the builder report to the application, and
//! how one connection attempt failed (which decides fallback and backoff).

use std::time::Duration;

use holdfast_protocol::wire::json;
use holdfast_protocol::{Close, CloseCode, Frame};
use tokio_tungstenite::tungstenite;

/// Why [`ClientBuilder::connect`](crate::ClientBuilder::connect) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not an `http(s)://` URL.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The client could not be built (TLS roots, HTTP client).
    #[error("cannot build the client: {0}")]
    Build(String),
    /// The server refused the session (authentication, origin, overload,
    /// unsupported version): its close code and reason.
    #[error("refused by the server: {code} {reason}")]
    Refused {
        /// The close code (`PROTOCOL.md` §7).
        code: CloseCode,
        /// The server's reason.
        reason: String,
        /// For overload refusals: when the server said to retry.
        retry_after: Option<Duration>,
    },
    /// No transport reached the server: each one's failure, in the order
    /// tried.
    #[error("no transport worked: {}", .0.join("; "))]
    NoTransport(Vec<String>),
}

/// How one attempt to attach a transport failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttemptError {
    /// The network did not answer at all (connection refused, DNS, proxy
    /// unreachable): the server may simply be down. Not a reason to fall
    /// back.
    Unreachable(String),
    /// Something answered but this transport does not work through it
    /// (refused upgrade, error page, closed or silent before the first
    /// frame): try the next transport.
    Blocked(String),
    /// holdfast itself answered with a `close` frame: no other transport
    /// would do better.
    Refused(Close),
}

impl AttemptError {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Unreachable(s) => format!("unreachable: {s}"),
            Self::Blocked(s) => s.clone(),
            Self::Refused(close) => format!("refused: {} {}", close.code, close.reason),
        }
    }

    /// Classifies a failed WebSocket handshake.
    pub(crate) fn from_ws_handshake(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Http(response) => {
                let status = response.status();
                match response.body().as_deref().and_then(close_in_body) {
                    Some(close) => Self::Refused(close),
                    None => Self::Blocked(format!("WebSocket upgrade refused with HTTP {status}")),
                }
            }
            tungstenite::Error::Io(e) => Self::Unreachable(e.to_string()),
            other => Self::Blocked(format!("WebSocket handshake failed: {other}")),
        }
    }
}

/// Classifies a non-200 answer to an HTTP request: holdfast's own refusals
/// carry a JSON `close` or `detach` frame; anything else (502, 504, an HTML
/// page) comes from an intermediary and is never data.
pub(crate) fn classify_http(status: u16, body: &[u8]) -> HttpFailure {
    match json::decode_batch(body)
        .ok()
        .and_then(|f| f.into_iter().next())
    {
        Some(Frame::Close(close)) => HttpFailure::Closed(close),
        Some(Frame::Detach(close)) => HttpFailure::Detached(close),
        _ => HttpFailure::Intermediary(format!(
            "HTTP {status} {}",
            if body.contains(&b'<') {
                "(an HTML error page: an intermediary, not holdfast)"
            } else {
                "(not from holdfast)"
            }
        )),
    }
}

/// What a non-200 HTTP answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HttpFailure {
    /// holdfast ended (or refused) the session.
    Closed(Close),
    /// holdfast refused this request; the session lives.
    Detached(Close),
    /// Not holdfast: a proxy, gateway or load balancer.
    Intermediary(String),
}

fn close_in_body(body: &[u8]) -> Option<Close> {
    match json::decode_batch(body).ok()?.into_iter().next()? {
        Frame::Close(close) => Some(close),
        _ => None,
    }
}
