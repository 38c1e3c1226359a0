//! Errors `connect` and the builder report to the application, and how a
//! failed request or handshake reads as the end of an attempt
//! ([`AttemptEnd`], the one outcome every transport reports to the
//! connection policy).

use std::fmt::Display;
use std::time::Duration;

use holdfast_protocol::connector::{AttemptEnd, Failure, GiveUp};
use holdfast_protocol::wire::json;
use holdfast_protocol::{CloseCode, Frame};
use http::HeaderMap;
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
    /// No transport reached the server within the connect timeout: the
    /// last failures, in the order tried (`"sse: answered HTTP 502"`).
    #[error("no transport worked: {}", .0.join("; "))]
    NoTransport(Vec<String>),
}

impl From<GiveUp> for ConnectError {
    fn from(why: GiveUp) -> Self {
        match why {
            GiveUp::Refused(close) => Self::Refused {
                code: close.code,
                reason: close.reason.to_string(),
                retry_after: close.retry_after,
            },
            GiveUp::NoTransport(failures) => {
                Self::NoTransport(failures.iter().map(Failure::to_string).collect())
            }
        }
    }
}

/// `end`, after logging what exactly happened (for people debugging a
/// network; the policy only needs `end`).
pub(crate) fn ended(end: AttemptEnd, detail: impl Display) -> AttemptEnd {
    tracing::debug!(?end, %detail, "attempt ended");
    end
}

/// What a non-200 answer to an HTTP request means: holdfast's own refusals
/// carry a JSON `close` (the session is refused or over) or `detach` (this
/// request is refused, the session lives); anything else (502, 504, an HTML
/// page) comes from an intermediary and is never data.
pub(crate) fn classify_http(status: u16, headers: &HeaderMap, body: &[u8]) -> AttemptEnd {
    match json::decode_batch(body)
        .ok()
        .and_then(|f| f.into_iter().next())
    {
        Some(Frame::Close(close)) => AttemptEnd::Refused(close),
        Some(Frame::Detach(close)) => AttemptEnd::Detached(close),
        _ => {
            let from = if body.contains(&b'<') {
                "an HTML error page: an intermediary, not holdfast"
            } else {
                "not from holdfast"
            };
            ended(
                AttemptEnd::Status {
                    status,
                    retry_after: retry_after(headers),
                },
                format_args!("HTTP {status} ({from})"),
            )
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not worth a parser
/// here: intermediaries that send one get the backoff instead).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// How a failed WebSocket handshake ends the attempt.
pub(crate) fn ws_handshake_end(error: tungstenite::Error) -> AttemptEnd {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            classify_http(response.status().as_u16(), response.headers(), body)
        }
        tungstenite::Error::Io(e) => ended(AttemptEnd::Unreachable, e),
        other => ended(AttemptEnd::Invalid, format_args!("handshake: {other}")),
    }
}

/// How a failed HTTP request (no answer) ends the attempt.
pub(crate) fn request_end(error: &reqwest::Error) -> AttemptEnd {
    let end = if error.is_connect() {
        AttemptEnd::Unreachable
    } else if error.is_timeout() {
        AttemptEnd::Timeout
    } else {
        AttemptEnd::Closed
    };
    ended(end, error)
}
