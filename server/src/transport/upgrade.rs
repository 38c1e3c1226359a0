//! The WebSocket handshake (RFC 6455 §4.2) on top of hyper's upgrades, giving
//! tokio-tungstenite's stream directly (no wrapper types between the socket
//! and the session on the hot path).

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::write_deadline::WriteDeadline;

/// A server-side WebSocket, its writes under a deadline.
pub(crate) type Socket = WebSocketStream<WriteDeadline<TokioIo<Upgraded>>>;

/// An upgrade request that passed the handshake checks.
pub(crate) struct Upgrade {
    key: HeaderValue,
    /// Whether the client offered our subprotocol, which the answer then
    /// selects (see [`super::key`]).
    subprotocol: bool,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
pub(crate) struct NotUpgrade(&'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::UPGRADE_REQUIRED, self.0).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotUpgrade> {
        if parts.method != Method::GET {
            return Err(NotUpgrade("a WebSocket upgrade must be a GET"));
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(NotUpgrade(
                "expected `Connection: upgrade` and `Upgrade: websocket`",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(NotUpgrade("expected `Sec-WebSocket-Version: 13`"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotUpgrade("missing `Sec-WebSocket-Key`"))?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotUpgrade("this connection cannot be upgraded"))?;
        let subprotocol = super::key::offers_subprotocol(headers);
        Ok(Self {
            key,
            subprotocol,
            on_upgrade,
        })
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `callback` with the
    /// socket once the upgrade completes (in a task of its own).
    /// Writes that make no progress for `write_timeout` fail.
    pub(crate) fn on_upgrade<F, Fut>(
        self,
        config: WebSocketConfig,
        write_timeout: std::time::Duration,
        callback: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return; // the client went away mid-upgrade
            };
            // A task of its own for the long-lived part, so it does not
            // carry the handshake's state for the life of the socket.
            let socket = WebSocketStream::from_raw_socket(
                WriteDeadline::new(TokioIo::new(upgraded), write_timeout),
                Role::Server,
                Some(config),
            )
            .await;
            tokio::spawn(callback(socket));
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        // A browser that offered subprotocols fails the connection unless
        // one of them is selected; the key token never is (it would leave
        // the key in response logs).
        if self.subprotocol {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(super::key::SUBPROTOCOL),
            );
        }
        response
    }
}
