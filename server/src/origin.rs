//! Which web pages may talk to the server: the `Origin` check, applied as
//! one layer ([`OriginLayer`]) in front of every session endpoint — WebSocket,
//! SSE, long-polling, `send`, shared requests — and the matching CORS layer.
//! No handler checks the origin itself: a request refused here never
//! reaches one (no upgrade, no body read, no session looked up).

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures_util::future::Either;
use holdfast_protocol::CloseCode;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::peer::Peer;
use crate::reject::Reject;
use crate::server::ServerState;

/// The layer in front of every session endpoint, run once per request
/// before the endpoint: a page from an origin the policy refuses gets `403`
/// with a `close` 4403 frame (`PROTOCOL.md` §7) — on `/ws` before the
/// upgrade, so a foreign page gets no socket at all — and everything else
/// goes on untouched.
///
/// A hand-written tower layer rather than `axum::middleware::from_fn`:
/// its future is the endpoint's own, with no boxed wrapper holding the
/// request's parts beside it — which a held poll would keep allocated
/// (about 1.5 KiB) for its whole hold.
#[derive(Clone)]
pub(crate) struct OriginLayer {
    state: Arc<ServerState>,
}

impl OriginLayer {
    pub(crate) fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }
}

impl<I> Layer<I> for OriginLayer {
    type Service = OriginChecked<I>;

    fn layer(&self, inner: I) -> OriginChecked<I> {
        OriginChecked {
            state: self.state.clone(),
            inner,
        }
    }
}

/// An endpoint behind [`OriginLayer`].
#[derive(Clone)]
pub(crate) struct OriginChecked<I> {
    state: Arc<ServerState>,
    inner: I,
}

impl<I> Service<Request> for OriginChecked<I>
where
    I: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = I::Error;
    type Future = Either<I::Future, Ready<Result<Response, I::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let peer = Peer::of(request.extensions());
        match self.state.check_origin(request.headers(), peer) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(reject) => Either::Right(ready(Ok(reject.into_http()))),
        }
    }
}

/// Which `Origin`s are allowed. Requests without an `Origin` header
/// (non-browser clients, same-origin `GET`s) are always allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Only pages from this server's own origin (the default): the same
    /// scheme, host and port as the request — `http` and its `Host` header,
    /// unless told otherwise: see
    /// [`Builder::served_over_https`](crate::Builder::served_over_https)
    /// and, behind a reverse proxy that rewrites `Host`,
    /// [`Builder::trusted_proxies`](crate::Builder::trusted_proxies) (or
    /// list the origins instead).
    #[default]
    SameOrigin,
    /// Only these origins (`scheme://host[:port]`), compared
    /// case-insensitively; CORS allows them with credentials.
    List(Vec<String>),
    /// Any origin. CORS allows any origin without credentials — never a
    /// wildcard with credentials.
    Any,
}

impl OriginPolicy {
    /// Checks a request's `Origin` against the policy; `served` says where
    /// the request was sent (only computed for [`SameOrigin`](Self::SameOrigin)).
    pub(crate) fn check<'s>(
        &self,
        headers: &HeaderMap,
        served: impl FnOnce() -> Served<'s>,
    ) -> Result<(), Reject> {
        let Some(origin_value) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin_value.to_str().unwrap_or("");
        let refused = match self {
            Self::Any => None,
            Self::List(list) => (!list.iter().any(|o| o.eq_ignore_ascii_case(origin)))
                .then(|| format!("origin {origin:?} is not allowed")),
            Self::SameOrigin => {
                let served = served();
                // Say what the server takes itself to be: behind TLS
                // termination or a proxy, that is what to configure.
                (!served.is_same_origin(origin)).then(|| {
                    format!(
                        "origin {origin:?} is not allowed (this server is {})",
                        served.describe()
                    )
                })
            }
        };
        match refused {
            None => Ok(()),
            Some(reason) => Err(Reject::Origin(
                holdfast_protocol::Close::new(CloseCode::FORBIDDEN, reason),
                origin_value.clone(),
            )),
        }
    }

    /// The CORS layer for the HTTP transports, if cross-origin pages are
    /// allowed at all.
    pub(crate) fn cors_layer(&self) -> Option<CorsLayer> {
        let base = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                crate::transport::KEY_HEADER,
            ])
            .expose_headers([header::RETRY_AFTER]);
        match self {
            Self::SameOrigin => None,
            Self::Any => Some(base.allow_origin(AllowOrigin::any())),
            Self::List(list) => {
                let origins: Vec<HeaderValue> = list
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect();
                Some(
                    base.allow_origin(AllowOrigin::list(origins))
                        .allow_credentials(true),
                )
            }
        }
    }
}

/// Where a request was sent, as far as the server can tell: the origin a
/// same-origin page has.
///
/// The scheme is the server's own (`http`, or `https` when told with
/// [`Builder::served_over_https`](crate::Builder::served_over_https): behind
/// TLS termination the server cannot see it), or what a trusted proxy
/// forwarded. The host is the `Host` header's, or the host a trusted proxy
/// forwarded; a host without a port is at the scheme's default port.
#[derive(Clone, Debug)]
pub(crate) struct Served<'a> {
    pub(crate) https: bool,
    /// The `Host` header.
    pub(crate) host: Option<&'a str>,
    /// The host a trusted proxy forwarded (`X-Forwarded-Host`,
    /// `Forwarded: host=`).
    pub(crate) forwarded_host: Option<String>,
}

impl Served<'_> {
    /// `scheme://host` as the server sees itself (the forwarded host if
    /// any), for refusal reasons.
    fn describe(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = self.forwarded_host.as_deref().or(self.host).unwrap_or("?");
        // Shown to the client in a close reason (at most 123 bytes on
        // WebSocket): keep it short.
        let host: String = host.chars().take(64).collect();
        format!("{scheme}://{host}")
    }

    /// Whether `origin` is the same scheme, host and port (default ports
    /// normalised).
    fn is_same_origin(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return false,
        };
        if https != self.https {
            return false;
        }
        let default_port = if https { 443 } else { 80 };
        let (origin_host, origin_port) = split_port(rest.trim_end_matches('/'));
        let origin_port = origin_port.unwrap_or(default_port);
        [self.host, self.forwarded_host.as_deref()]
            .into_iter()
            .flatten()
            .map(|host| split_port(host.trim()))
            .any(|(host, port)| {
                host.eq_ignore_ascii_case(origin_host)
                    && port.unwrap_or(default_port) == origin_port
            })
    }
}

/// `host` and its port, if it names one (`[v6]:port` included).
fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            match port.parse() {
                Ok(port) => (host, Some(port)),
                Err(_) => (authority, None),
            }
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    fn served(https: bool, host: &str) -> Served<'_> {
        Served {
            https,
            host: Some(host),
            forwarded_host: None,
        }
    }

    #[test]
    fn same_origin_compares_scheme_host_and_port() {
        let p = OriginPolicy::SameOrigin;
        let same = |origin: &'static str, https: bool, host: &str| {
            p.check(&headers(Some(origin)), || served(https, host))
                .is_ok()
        };
        assert!(p.check(&headers(None), || served(false, "a")).is_ok());
        assert!(same("http://a.test:3000", false, "a.test:3000"));
        assert!(same("http://A.TEST:3000/", false, "a.test:3000"));
        assert!(!same("http://evil.test", false, "a.test:3000"));
        assert!(!same("null", false, "a.test"));
        assert!(!same("http://a.test:3001", false, "a.test:3000"));
        // The scheme counts, explicit port or not.
        assert!(!same("https://a.test:3000", false, "a.test:3000"));
        assert!(!same("http://a.test:3000", true, "a.test:3000"));
        assert!(!same("https://a.test", false, "a.test"));
        assert!(!same("http://a.test", true, "a.test"));
        assert!(!same("ftp://a.test", false, "a.test"));
        // Default ports may be left out on either side.
        assert!(same("https://a.test", true, "a.test:443"));
        assert!(same("https://a.test:443", true, "a.test"));
        assert!(same("http://a.test:80", false, "a.test"));
        assert!(!same("http://a.test:443", true, "a.test"));
        assert!(same("http://[::1]:8080", false, "[::1]:8080"));
    }

    #[test]
    fn a_same_origin_refusal_says_what_the_server_takes_itself_to_be() {
        let refusal = OriginPolicy::SameOrigin
            .check(&headers(Some("https://a.test")), || served(false, "a.test"));
        let reason = match refusal {
            Err(reject) => reject.close().reason.to_string(),
            Ok(()) => String::new(),
        };
        assert_eq!(
            reason,
            r#"origin "https://a.test" is not allowed (this server is http://a.test)"#
        );
    }

    #[test]
    fn same_origin_accepts_the_forwarded_host_it_is_given() {
        let p = OriginPolicy::SameOrigin;
        let h = headers(Some("https://app.test"));
        assert!(p.check(&h, || served(true, "10.0.0.5:3000")).is_err());
        let forwarded = || Served {
            https: true,
            host: Some("10.0.0.5:3000"),
            forwarded_host: Some("app.test".into()),
        };
        assert!(p.check(&h, forwarded).is_ok());
    }

    #[test]
    fn list_is_exact_and_any_is_any() {
        let p = OriginPolicy::List(vec!["https://app.test".into()]);
        let x = || served(false, "x");
        assert!(p.check(&headers(Some("https://APP.test")), x).is_ok());
        assert!(p.check(&headers(Some("https://app.test.evil")), x).is_err());
        let refusal = p.check(&headers(Some("http://app.test")), x);
        assert!(matches!(refusal, Err(Reject::Origin(c, _)) if c.code == CloseCode::FORBIDDEN));
        assert!(
            OriginPolicy::Any
                .check(&headers(Some("https://z")), x)
                .is_ok()
        );
    }

    /// Each session endpoint goes through the Origin layer, before its
    /// handler: a foreign page is refused with `403` and `close` 4403 even
    /// where the handler itself would have refused the request for another
    /// reason (no upgrade headers, no key, a bad version, a malformed
    /// body), while the same request from an allowed page or without an
    /// `Origin` reaches the handler. The JavaScript client is served to
    /// any page.
    mod layer {
        use axum::body::Body;
        use holdfast_protocol::wire::json;
        use holdfast_protocol::{CloseCode, Frame};
        use http::{Request, StatusCode};
        use http_body_util::BodyExt;
        use tower::ServiceExt;

        use crate::{Holdfast, ServerConfig};

        const GOOD: &str = "http://good.test";
        const EVIL: &str = "http://evil.test";

        /// Every route under the mount, each with a request its handler
        /// refuses on its own (so a `403` can only come from the layer).
        fn requests() -> Vec<(&'static str, &'static str, &'static str)> {
            vec![
                // Not an upgrade: the handler's extractor answers 426.
                ("GET", "/rt/ws?v=1", ""),
                ("GET", "/rt/sse?v=99", ""),
                ("GET", "/rt/poll?v=99", ""),
                // No session key.
                ("POST", "/rt/send?v=1", "[]"),
                // Shared requests: an empty list of sessions.
                ("POST", "/rt/sse?v=1", "[]"),
                ("POST", "/rt/poll?v=1", "[]"),
            ]
        }

        async fn answer(
            holdfast: &Holdfast,
            method: &str,
            uri: &str,
            body: &'static str,
            origin: Option<&str>,
        ) -> (StatusCode, Vec<u8>) {
            let mut request = Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "server.test");
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            let request = request.body(Body::from(body)).expect("a valid request");
            let router: axum::Router = holdfast.router_at("/rt");
            let response = router.oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response.into_body().collect().await.expect("a body");
            (status, body.to_bytes().to_vec())
        }

        fn is_origin_refusal(status: StatusCode, body: &[u8]) -> bool {
            let close = match json::decode_batch(body).ok().as_deref() {
                Some([Frame::Close(close)]) => close.code,
                _ => return false,
            };
            status == StatusCode::FORBIDDEN && close == CloseCode::FORBIDDEN
        }

        async fn check(holdfast: Holdfast, allowed: &str) {
            for (method, uri, body) in requests() {
                let (status, refusal) = answer(&holdfast, method, uri, body, Some(EVIL)).await;
                assert!(
                    is_origin_refusal(status, &refusal),
                    "{method} {uri} from a foreign page: {status} {:?}",
                    String::from_utf8_lossy(&refusal)
                );
                for origin in [Some(allowed), None] {
                    let (status, answer) = answer(&holdfast, method, uri, body, origin).await;
                    assert!(
                        !is_origin_refusal(status, &answer) && status.is_client_error(),
                        "{method} {uri} from {origin:?} must reach the handler \
                         (which refuses it for its own reason): {status} {:?}",
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
            for script in [
                "/rt/client.js",
                &format!("/rt/{}", crate::client_js::VERSIONED_NAME),
            ] {
                let (status, _) = answer(&holdfast, "GET", script, "", Some(EVIL)).await;
                assert_eq!(status, StatusCode::OK, "{script} is served to any page");
            }
            assert_eq!(holdfast.held_sessions(), 0);
        }

        #[tokio::test]
        async fn every_endpoint_is_behind_the_layer_with_a_list() {
            let (holdfast, _incoming) = Holdfast::builder().allow_origins([GOOD]).build();
            check(holdfast, GOOD).await;
        }

        #[tokio::test]
        async fn every_endpoint_is_behind_the_layer_same_origin() {
            let (holdfast, _incoming) = Holdfast::builder().build();
            check(holdfast, "http://server.test").await;
        }

        /// With shared requests turned off, `POST` on `/sse` and `/poll` is
        /// not routed: `405` for pages that may talk to the server.
        #[tokio::test]
        async fn without_shared_requests_the_other_routes_are_still_behind_it() {
            let mut config = ServerConfig::default();
            config.session.max_shared_sessions = 0;
            let (holdfast, _incoming) = Holdfast::builder().config(config).build();
            for (method, uri, body) in requests() {
                let (status, refusal) = answer(&holdfast, method, uri, body, Some(EVIL)).await;
                assert!(
                    is_origin_refusal(status, &refusal),
                    "{method} {uri}: {status}"
                );
            }
            let (status, _) = answer(&holdfast, "POST", "/rt/poll?v=1", "[]", None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        }
    }
}
