//! Where a request's session key travels (`PROTOCOL.md` §1): outside the
//! URL where the client can put it there — the `Holdfast-Key` request
//! header on any endpoint, or on a WebSocket upgrade a
//! `holdfast.key.<key>` subprotocol (browsers cannot set headers on a
//! WebSocket, but can offer subprotocols) — or in the `key` query
//! parameter for clients that cannot. URLs end up in access logs; headers
//! mostly do not.

use http::{HeaderMap, HeaderName, header};

use crate::reject::Reject;

/// The request header that carries the session key.
pub(crate) const KEY_HEADER: HeaderName = HeaderName::from_static("holdfast-key");

/// The WebSocket subprotocol a client offers with its key token, and the
/// one the server selects: a browser fails the connection unless the
/// server answers one of the subprotocols it offered, and the key token
/// must never be echoed.
pub(crate) const SUBPROTOCOL: &str = "holdfast.v1";

/// The prefix of the subprotocol token that carries the key (keys are
/// base64url: valid token characters).
const KEY_TOKEN_PREFIX: &str = "holdfast.key.";

/// The key a request names outside its URL: from `Holdfast-Key`, and on a
/// WebSocket upgrade (`websocket`) from a `holdfast.key.<key>`
/// subprotocol. `Ok(None)` when there is none. Refused (never quoting the
/// key): an empty key (`close` 4400: a client that sends one has lost its
/// key, and no retry can help), and keys that disagree or cannot be read
/// (`detach` 1002, a malformed request naming a session).
pub(crate) fn outside_url(headers: &HeaderMap, websocket: bool) -> Result<Option<String>, Reject> {
    let mut keys = Vec::new();
    for value in headers.get_all(KEY_HEADER) {
        let value = value
            .to_str()
            .map_err(|_| Reject::protocol("the `Holdfast-Key` header is not visible ASCII"))?;
        keys.push(value.trim());
    }
    if websocket {
        keys.extend(offered_subprotocols(headers).filter_map(|t| t.strip_prefix(KEY_TOKEN_PREFIX)));
    }
    if keys.iter().any(|key| key.is_empty()) {
        return Err(empty_key());
    }
    let mut keys = keys.into_iter();
    let first = keys.next();
    if keys.any(|key| Some(key) != first) {
        return Err(Reject::protocol(
            "the request names two different session keys",
        ));
    }
    Ok(first.map(str::to_owned))
}

/// The refusal of an empty session key, wherever it travelled.
pub(crate) fn empty_key() -> Reject {
    Reject::bad_request("empty session key: name a session's key, or none to open one")
}

/// Whether a WebSocket upgrade offers [`SUBPROTOCOL`], which the server
/// then selects.
pub(crate) fn offers_subprotocol(headers: &HeaderMap) -> bool {
    offered_subprotocols(headers).any(|token| token == SUBPROTOCOL)
}

/// The tokens of `Sec-WebSocket-Protocol` (RFC 6455 §4.1: a comma-separated
/// list, possibly over several header lines). Unreadable lines offer
/// nothing.
fn offered_subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn reads_the_key_header() {
        let map = headers(&[(&KEY_HEADER, "abc")]);
        assert_eq!(outside_url(&map, false), Ok(Some("abc".into())));
        assert_eq!(outside_url(&HeaderMap::new(), true), Ok(None));
        // An empty key is a malformed request, final (4400).
        assert_eq!(
            outside_url(&headers(&[(&KEY_HEADER, " ")]), false),
            Err(empty_key())
        );
        let twice = headers(&[(&KEY_HEADER, "abc"), (&KEY_HEADER, "abc")]);
        assert_eq!(outside_url(&twice, false), Ok(Some("abc".into())));
        let differ = headers(&[(&KEY_HEADER, "abc"), (&KEY_HEADER, "abd")]);
        let error = outside_url(&differ, false).expect_err("two keys");
        assert_eq!(
            error.close().code,
            holdfast_protocol::CloseCode::PROTOCOL_ERROR
        );
        assert!(
            !error.close().reason.contains("abc"),
            "an error never holds a key"
        );
    }

    #[test]
    fn reads_the_key_subprotocol_on_websocket_only() {
        let proto = &header::SEC_WEBSOCKET_PROTOCOL;
        let map = headers(&[(proto, "holdfast.v1, holdfast.key.k-_9")]);
        assert_eq!(outside_url(&map, true), Ok(Some("k-_9".into())));
        assert_eq!(outside_url(&map, false), Ok(None));
        assert!(offers_subprotocol(&map));
        let split = headers(&[(proto, "chat"), (proto, "holdfast.key.k,holdfast.v1")]);
        assert_eq!(outside_url(&split, true), Ok(Some("k".into())));
        assert!(offers_subprotocol(&split));
        assert!(!offers_subprotocol(&headers(&[(proto, "holdfast.key.k")])));
        let both = headers(&[(proto, "holdfast.v1, holdfast.key.k"), (&KEY_HEADER, "k")]);
        assert_eq!(outside_url(&both, true), Ok(Some("k".into())));
        let differ = headers(&[(proto, "holdfast.v1, holdfast.key.k"), (&KEY_HEADER, "j")]);
        assert!(outside_url(&differ, true).is_err());
        let empty = headers(&[(proto, "holdfast.v1, holdfast.key.")]);
        assert_eq!(outside_url(&empty, true), Err(empty_key()));
    }
}
