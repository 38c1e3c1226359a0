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
            Self::SameOrigin => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                origin_host(origin).is_some_and(|o| o.eq_ignore_ascii_case(host))
            }
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

/// `host[:port]` of an origin `scheme://host[:port]`.
fn origin_host(origin: &str) -> Option<&str> {
    let (_, rest) = origin.split_once("://")?;
    Some(rest.trim_end_matches('/'))
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
