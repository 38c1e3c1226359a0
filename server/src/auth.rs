//! The authentication hook: sees the request that opens a session and
//! refuses it or attaches an identity to the session — then every later
//! request that names the session, which must come from the same
//! [`Identity`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use holdfast_protocol::{CloseCode, TransportKind};
use http::{Extensions, HeaderMap, StatusCode, Uri, header};

use crate::reject::Reject;

/// A request that opens a session or names one, as the authentication
/// hook sees it.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    /// The request headers (cookies, `Authorization`, `Origin`, …).
    pub headers: HeaderMap,
    /// The request URI, with its query.
    pub uri: Uri,
    /// The transport the request opens or resumes the session on. For a
    /// [`RequestKind::Send`] (which serves SSE and long-polling), the
    /// transport the session is attached on now, long-polling if none.
    pub transport: TransportKind,
    /// What the request does: opens a session, or resumes, sends to or
    /// probes one.
    pub kind: RequestKind,
}

/// What a request seen by the authentication hook does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// Opens a new session (`ws`, `sse`, `poll` without a key).
    Open,
    /// Resumes a session (`ws`, `sse` with a key; every `poll` with one).
    Resume,
    /// Sends to a session (`POST <mount>/send`).
    Send,
    /// Probes a transport for a session (`probe=1`).
    Probe,
}

/// Who a session belongs to: the authentication hook puts one in the
/// [`Extensions`] it returns (see
/// [`Builder::auth`](crate::Builder::auth)), and every later request naming
/// the session must yield an equal one — else it is refused with `401`
/// (close 4401) and the session lives on for its owner. Compared exactly:
/// make it the stable user (or tenant, device…) id, not a token that is
/// renewed. Readable on the session with
/// `session.extensions().get::<Identity>()`.
///
/// ```
/// let identity = holdfast_server::Identity::new("user-42");
/// assert_eq!(identity.as_str(), "user-42");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity(Arc<str>);

impl Identity {
    /// An identity named `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// Its name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl OpenRequest {
    /// A query parameter's value (percent-decoded).
    pub fn query(&self, name: &str) -> Option<String> {
        crate::transport::query_value(self.uri.query()?, name)
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }
}

/// A refusal from the authentication hook: an HTTP status (401, 403, …)
/// and a reason the client will see. On WebSocket it becomes close code
/// `4000 + status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// The reason, shown to the client.
    pub reason: String,
}

impl Refusal {
    /// `401 Unauthorized` (close 4401).
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            reason: reason.into(),
        }
    }

    /// `403 Forbidden` (close 4403).
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            reason: reason.into(),
        }
    }
}

impl From<Refusal> for Reject {
    fn from(refusal: Refusal) -> Self {
        Reject::session(
            CloseCode::from_http_status(refusal.status.as_u16()),
            refusal.reason,
        )
    }
}

type AuthFuture = Pin<Box<dyn Future<Output = Result<Extensions, Refusal>> + Send>>;

/// The stored hook.
#[derive(Clone)]
pub(crate) struct AuthHook(Arc<dyn Fn(OpenRequest) -> AuthFuture + Send + Sync>);

impl AuthHook {
    pub(crate) fn new<F, Fut>(hook: F) -> Self
    where
        F: Fn(OpenRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Extensions, Refusal>> + Send + 'static,
    {
        Self(Arc::new(move |request| Box::pin(hook(request))))
    }

    pub(crate) async fn check(&self, request: OpenRequest) -> Result<Extensions, Refusal> {
        (self.0)(request).await
    }
}

impl std::fmt::Debug for AuthHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthHook")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_cookies_and_query() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; user=ada%20l; b=2"),
        );
        let request = OpenRequest {
            headers,
            uri: "/rt/ws?v=1&token=x%2By".parse().unwrap_or_default(),
            transport: TransportKind::WebSocket,
            kind: RequestKind::Open,
        };
        assert_eq!(request.cookie("user").as_deref(), Some("ada%20l"));
        assert_eq!(request.cookie("nope"), None);
        assert_eq!(request.query("token").as_deref(), Some("x+y"));
    }
}
