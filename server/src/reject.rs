//! Every refusal the server makes, and how each transport reports it: the
//! one place where an error becomes an HTTP status, a frame and a
//! WebSocket close code (`PROTOCOL.md` §7).

use axum::response::{IntoResponse, Response};
use holdfast_protocol::wire::json;
use holdfast_protocol::{AttachError, Close, CloseCode, Frame, ProtocolError};
use http::{HeaderValue, StatusCode, header};

/// Refusal texts the metrics tell apart (`metrics::rejection_reason`):
/// `max_sessions` reached.
pub(crate) const TOO_MANY_SESSIONS: &str = "too many sessions";
/// The client address opens sessions faster than its rate.
pub(crate) const RATE_LIMITED: &str = "too many new sessions from your address";
/// The runtime has lagged past `open_lag_limit`: no new sessions for now.
pub(crate) const BUSY: &str = "the server is too busy for new sessions";
/// A send refused for now: the server-wide buffer is full.
pub(crate) const NOT_KEEPING_UP: &str = "the application is not keeping up";
/// How the refusal of a protocol version begins.
pub(crate) const BAD_VERSION: &str = "unsupported protocol version";

/// A refusal: either the session is over (or never opened) — a `close`
/// frame — or only this request or attachment fails — a `detach` frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// `close` frame: the session ended or was never opened.
    Session(Close),
    /// `detach` frame: the session lives; resume.
    Attachment(Close),
    /// A page from a foreign origin: `close` 4403. Over HTTP the refusal
    /// carries CORS headers for that origin (no credentials), so the page
    /// can read why and stop retrying; it learns nothing else.
    Origin(Close, HeaderValue),
}

impl Reject {
    pub(crate) fn session(code: CloseCode, reason: impl Into<String>) -> Self {
        Self::Session(Close::new(code, reason.into()))
    }

    pub(crate) fn session_lost() -> Self {
        Self::session(
            CloseCode::SESSION_LOST,
            "session lost: unknown or expired key",
        )
    }

    pub(crate) fn bad_request(reason: impl Into<String>) -> Self {
        Self::session(CloseCode::BAD_REQUEST, reason)
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Self::Attachment(Close::new(CloseCode::PROTOCOL_ERROR, reason.into()))
    }

    /// A request whose body did not arrive whole within `timeout`: `408`
    /// with `detach` 4408 (the session lives; the client sends the same
    /// messages again).
    pub(crate) fn body_timeout(timeout: std::time::Duration) -> Self {
        Self::Attachment(Close::new(
            CloseCode::PEER_TIMEOUT,
            format!("the request body did not arrive within {timeout:?}"),
        ))
    }

    pub(crate) fn close(&self) -> &Close {
        match self {
            Self::Session(close) | Self::Attachment(close) | Self::Origin(close, _) => close,
        }
    }

    pub(crate) fn frame(&self) -> Frame {
        match self {
            Self::Session(close) | Self::Origin(close, _) => Frame::Close(close.clone()),
            Self::Attachment(close) => Frame::Detach(close.clone()),
        }
    }

    /// The HTTP response: status from the code, a JSON batch holding the
    /// frame, and `Retry-After` for overload.
    pub(crate) fn into_http(self) -> Response {
        crate::metrics::rejected(&self);
        let close = self.close();
        let status = StatusCode::from_u16(close.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = close.retry_after;
        let body = json::encode_batch_to_vec(&[self.frame()]);
        let cors_origin = match &self {
            Self::Origin(_, origin) => Some(origin.clone()),
            _ => None,
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(origin) = cors_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::VARY, HeaderValue::from_static("origin"));
        }
        if let Some(after) = retry_after {
            let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<ProtocolError> for Reject {
    fn from(error: ProtocolError) -> Self {
        let close = Close::new(error.close_code(), error.to_string());
        if error.ends_session() {
            Self::Session(close)
        } else {
            Self::Attachment(close)
        }
    }
}

impl From<AttachError> for Reject {
    fn from(error: AttachError) -> Self {
        match error {
            AttachError::SessionLost => Self::session_lost(),
            AttachError::Protocol(e) => e.into(),
            _ => Self::session(CloseCode::INTERNAL_ERROR, error.to_string()),
        }
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        self.into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overload_carries_retry_after_in_seconds_and_frame() {
        let reject = Reject::Session(
            Close::new(CloseCode::OVERLOADED, "too many sessions")
                .with_retry_after(Duration::from_millis(4500)),
        );
        let response = reject.into_http();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("5"))
        );
    }

    #[test]
    fn a_body_timeout_is_408_with_detach_4408() {
        let reject = Reject::body_timeout(Duration::from_secs(15));
        assert_eq!(
            reject.frame(),
            Frame::Detach(Close::new(
                CloseCode::PEER_TIMEOUT,
                "the request body did not arrive within 15s"
            ))
        );
        assert_eq!(reject.into_http().status(), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn protocol_errors_detach_but_too_big_closes() {
        let gap = Reject::from(ProtocolError::SeqGap {
            expected: 2,
            got: 5,
        });
        assert!(matches!(gap, Reject::Attachment(ref c) if c.code == CloseCode::PROTOCOL_ERROR));
        let big = Reject::from(ProtocolError::MessageTooBig { len: 9, max: 8 });
        assert!(matches!(big, Reject::Session(ref c) if c.code == CloseCode::TOO_BIG));
        assert_eq!(big.into_http().status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
