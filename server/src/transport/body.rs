//! Reading a request body whole, within a byte limit and a time limit: a
//! client must not make the server buffer more than the endpoint allows,
//! nor hold a request (and its connection) by trickling its body.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};

use crate::reject::Reject;

/// Why a body could not be read.
pub(crate) enum BodyError {
    /// Longer than the limit: the `Content-Length` it declared, or the
    /// limit plus one once more arrived.
    TooBig(usize),
    /// The connection failed while it was read.
    Unreadable,
    /// It did not arrive whole in time; answer with [`timed_out`].
    TimedOut,
}

/// Reads `body` whole: at most `max` bytes (a larger `Content-Length` is
/// refused before anything is read), within `timeout`.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > max) {
        return Err(BodyError::TooBig(len));
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) if is_length_limit(&error) => Err(BodyError::TooBig(max.saturating_add(1))),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Err(_) => {
            tracing::debug!(?timeout, "request body too slow");
            Err(BodyError::TimedOut)
        }
    }
}

/// The answer to a body that did not arrive in time: `408`, `detach`
/// 4408. The rest of the body may still trickle in: the connection cannot
/// carry another request, so it is closed.
pub(crate) fn timed_out(timeout: Duration) -> Response {
    let mut response = Reject::body_timeout(timeout).into_http();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn is_length_limit(error: &axum::Error) -> bool {
    let source: &(dyn std::error::Error + 'static) = error;
    let mut current = Some(source);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}
