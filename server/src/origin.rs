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
    /// Only pages served from the same host as the request's `Host` header
    /// (the default). Behind a proxy that rewrites `Host`, list origins
    /// explicitly instead.
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
    /// Checks a request's `Origin` against the policy.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), Reject> {
        let Some(origin_value) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin_value.to_str().unwrap_or("");
        let allowed = match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
            Self::SameOrigin => same_origin(origin, headers),
        };
        if allowed {
            Ok(())
        } else {
            Err(Reject::Origin(
                holdfast_protocol::Close::new(
                    CloseCode::FORBIDDEN,
                    format!("origin {origin:?} is not allowed"),
                ),
                origin_value.clone(),
            ))
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

/// Whether `origin` is the host the request was made to: the `Host` header,
/// or the `X-Forwarded-Host` / `Forwarded: host=` a reverse proxy in front
/// set (a proxy that rewrites `Host` without them makes every browser
/// request look cross-origin: list the origins instead).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let (origin_host, origin_port) = split_port(rest.trim_end_matches('/'));
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => 443,
        _ => 80,
    };
    let origin_port = origin_port.unwrap_or(default_port);
    let forwarded = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([';', ',']))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim_matches('"').to_owned());
    let hosts = [header::HOST, HeaderName::from_static("x-forwarded-host")]
        .into_iter()
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .chain(forwarded);
    for host in hosts {
        let (host, port) = split_port(&host);
        if host.eq_ignore_ascii_case(origin_host) && port.unwrap_or(default_port) == origin_port {
            return true;
        }
    }
    false
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

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn same_origin_compares_with_host() {
        let p = OriginPolicy::SameOrigin;
        assert!(p.check(&headers(None, "a.test:3000")).is_ok());
        assert!(
            p.check(&headers(Some("http://a.test:3000"), "a.test:3000"))
                .is_ok()
        );
        assert!(
            p.check(&headers(Some("http://evil.test"), "a.test:3000"))
                .is_err()
        );
        assert!(p.check(&headers(Some("null"), "a.test")).is_err());
        let same = |origin: &'static str, host: &'static str| {
            p.check(&headers(Some(origin), host)).is_ok()
        };
        assert!(!same("http://a.test:3001", "a.test:3000"));
        // Default ports may be left out on either side.
        assert!(same("https://a.test", "a.test:443"));
        assert!(same("http://a.test:80", "a.test"));
        // A `Host` without a port is taken at the origin scheme's default
        // (behind TLS termination the server cannot know the scheme).
        assert!(same("https://a.test", "a.test"));
        assert!(same("http://[::1]:8080", "[::1]:8080"));
    }

    #[test]
    fn same_origin_accepts_the_host_a_reverse_proxy_forwards() {
        let p = OriginPolicy::SameOrigin;
        let mut h = headers(Some("https://app.test"), "10.0.0.5:3000");
        assert!(p.check(&h).is_err(), "the proxy rewrote Host");
        h.insert("x-forwarded-host", HeaderValue::from_static("app.test"));
        assert!(p.check(&h).is_ok());
        let mut h = headers(Some("https://app.test"), "10.0.0.5:3000");
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https;host=\"app.test\""),
        );
        assert!(p.check(&h).is_ok());
    }

    #[test]
    fn list_is_exact_and_any_is_any() {
        let p = OriginPolicy::List(vec!["https://app.test".into()]);
        assert!(p.check(&headers(Some("https://APP.test"), "x")).is_ok());
        assert!(
            p.check(&headers(Some("https://app.test.evil"), "x"))
                .is_err()
        );
        let refusal = p.check(&headers(Some("http://app.test"), "x"));
        assert!(matches!(refusal, Err(Reject::Origin(c, _)) if c.code == CloseCode::FORBIDDEN));
        assert!(
            OriginPolicy::Any
                .check(&headers(Some("https://z"), "x"))
                .is_ok()
        );
    }
}
