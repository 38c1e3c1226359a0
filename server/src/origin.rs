//! Which web pages may talk to the server: the `Origin` check made on every
//! request of every transport, and the matching CORS layer.

use holdfast_protocol::CloseCode;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::reject::Reject;

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
}
