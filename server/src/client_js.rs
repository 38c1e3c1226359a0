//! `GET <mount>/client.js`: the JavaScript client, embedded in the binary,
//! so a page needs no bundler: `import { Holdfast } from "/realtime/client.js"`.
//!
//! Two URLs: `client.js` revalidates on every load (`ETag`, `no-cache`) so
//! an upgrade reaches browsers at once; `client-<version>.js` never changes
//! and is cached for a year.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// The client's source.
pub(crate) const SOURCE: &str = include_str!("../../client/js/holdfast.js");

/// The versioned file name, `client-<crate version>.js`.
pub(crate) const VERSIONED_NAME: &str = concat!("client-", env!("CARGO_PKG_VERSION"), ".js");

fn etag() -> String {
    // FNV-1a of the source: changes whenever the embedded file does.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in SOURCE.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{}-{hash:016x}\"", env!("CARGO_PKG_VERSION"))
}

/// `client.js`: revalidated on each load.
pub(crate) async fn latest(request: Request) -> Response {
    let etag = etag();
    let matches = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        javascript()
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// `client-<version>.js`: immutable.
pub(crate) async fn versioned() -> Response {
    let mut response = javascript();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}

fn javascript() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SOURCE,
    )
        .into_response()
}
