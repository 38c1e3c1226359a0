//! HTTP/1 request and response heads: reading, parsing (httparse), and
//! rewriting for one-request-per-connection forwarding.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest head accepted, in bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 128;

/// A request head, owned.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A response head, owned.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub version: u8,
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why no head was read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Not HTTP, or too large: the status to answer with.
    Bad(u16),
    /// The peer closed in the middle of the head.
    Truncated,
    /// A read failed.
    Io,
}

pub(crate) type Parsed<T> = Result<Option<(T, usize)>, u16>;

pub(crate) fn parse_request(buf: &[u8]) -> Parsed<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            RequestHead {
                method: req.method.unwrap_or("").to_owned(),
                target: req.path.unwrap_or("").to_owned(),
                version: req.version.unwrap_or(1),
                headers: own(req.headers),
            },
            n,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(431),
        Err(_) => Err(400),
    }
}

pub(crate) fn parse_response(buf: &[u8]) -> Parsed<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            ResponseHead {
                version: res.version.unwrap_or(1),
                code: res.code.unwrap_or(502),
                reason: res.reason.unwrap_or("").to_owned(),
                headers: own(res.headers),
            },
            n,
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(502),
    }
}

fn own(headers: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// Reads into `buf` (which may already hold bytes) until `parse` finds a
/// whole head. Returns the head and its length in `buf`, or `None` when the
/// peer closed before sending anything.
pub(crate) async fn read_head<R, T>(
    r: &mut R,
    buf: &mut Vec<u8>,
    parse: fn(&[u8]) -> Parsed<T>,
) -> Result<Option<(T, usize)>, HeadError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(status) => return Err(HeadError::Bad(status)),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::Bad(431));
        }
        buf.reserve(8 * 1024);
        match r.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(HeadError::Truncated),
            Ok(_) => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Lower-cased tokens of every `Connection` header.
fn connection_tokens(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether the request asks for a protocol upgrade (WebSocket).
pub(crate) fn is_upgrade(head: &RequestHead) -> bool {
    header(&head.headers, "upgrade").is_some_and(|v| !v.is_empty())
        && connection_tokens(&head.headers)
            .iter()
            .any(|t| t == "upgrade")
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Whether a header is dropped when forwarding (hop-by-hop, or named in
/// `Connection`). `Transfer-Encoding` stays: bodies go through raw.
fn dropped(name: &str, listed: &[String], keep_upgrade: bool) -> bool {
    let lower = name.to_ascii_lowercase();
    if keep_upgrade && lower == "upgrade" {
        return false;
    }
    HOP_BY_HOP.contains(&lower.as_str()) || listed.contains(&lower)
}

/// The request as sent upstream: origin-form `target`, hop-by-hop headers
/// dropped, `Host` replaced when `host` is given, and `Connection: close`
/// (or `Connection: Upgrade` for an upgrade).
pub(crate) fn forward_request(
    head: &RequestHead,
    target: &str,
    host: Option<&str>,
    upgrade: bool,
) -> Vec<u8> {
    let listed = connection_tokens(&head.headers);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "{} {} HTTP/1.{}\r\n",
            head.method,
            target,
            head.version.min(1)
        )
        .as_bytes(),
    );
    if let Some(host) = host {
        out.extend_from_slice(format!("Host: {host}\r\n").as_bytes());
    }
    for (name, value) in &head.headers {
        if dropped(name, &listed, upgrade) || (host.is_some() && name.eq_ignore_ascii_case("host"))
        {
            continue;
        }
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(if upgrade {
        b"Connection: Upgrade\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    out
}

/// A final (non-1xx) response as sent downstream: hop-by-hop connection
/// headers dropped and `Connection: close`, since the connection ends with
/// the response.
pub(crate) fn forward_response(head: &ResponseHead) -> Vec<u8> {
    let listed = connection_tokens(&head.headers);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(
        format!(
            "HTTP/1.{} {} {}\r\n",
            head.version.min(1),
            head.code,
            head.reason
        )
        .as_bytes(),
    );
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "connection" | "keep-alive" | "proxy-connection"
        ) || listed.contains(&lower)
        {
            continue;
        }
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The path of a request target, without query or fragment.
pub(crate) fn path_of(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

/// An absolute-form `http://` target, split.
pub(crate) struct Absolute {
    /// Host as written (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    /// For the `Host` header: host, and port if one was written.
    pub host_header: String,
    /// Origin-form target: path and query.
    pub origin: String,
}

pub(crate) fn parse_absolute(target: &str) -> Option<Absolute> {
    let uri: http::Uri = target.parse().ok()?;
    if !uri.scheme_str()?.eq_ignore_ascii_case("http") {
        return None;
    }
    let authority = uri.authority()?;
    let host = authority.host().to_owned();
    if host.is_empty() {
        return None;
    }
    let host_header = match authority.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let origin = match uri.path_and_query().map(|p| p.as_str()) {
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => format!("/{p}"),
        None => "/".to_owned(),
    };
    Some(Absolute {
        host,
        port: authority.port_u16().unwrap_or(80),
        host_header,
        origin,
    })
}

/// A `CONNECT` target `host:port`, split.
pub(crate) fn parse_authority(target: &str) -> Option<(String, u16)> {
    let authority: http::uri::Authority = target.parse().ok()?;
    let port = authority.port_u16()?;
    let host = authority.host();
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

/// An intermediary's HTML error page, whole response.
pub(crate) fn error_page(status: u16, detail: &str) -> Vec<u8> {
    response(
        status,
        &[("Content-Type", b"text/html")],
        &error_body(status, detail),
    )
}

/// The canonical reason phrase of `status`.
fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// The HTML body of an intermediary's error page.
pub(crate) fn error_body(status: u16, detail: &str) -> Vec<u8> {
    let reason = reason(status);
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{status} {reason}</h1></center>\r\n<p>{detail}</p>\r\n\
         <hr><center>holdfast-testkit</center>\r\n</body>\r\n</html>\r\n"
    )
    .into_bytes()
}

/// A whole response the proxy sends itself: `headers`, then its own
/// `Content-Length` and `Connection: close`, then `body`.
pub(crate) fn response(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nServer: holdfast-testkit\r\n",
            reason(status)
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form() {
        let a = parse_absolute("http://127.0.0.1:8080/realtime/poll?v=1").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.host_header.as_str()),
            ("127.0.0.1", 8080, "127.0.0.1:8080")
        );
        assert_eq!(a.origin, "/realtime/poll?v=1");
        let a = parse_absolute("http://[::1]").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.origin.as_str()),
            ("[::1]", 80, "/")
        );
        assert!(parse_absolute("https://x/").is_none());
        assert!(parse_absolute("/relative").is_none());
        assert!(parse_absolute("*").is_none());
    }

    #[test]
    fn authority() {
        assert_eq!(
            parse_authority("localhost:443"),
            Some(("localhost".into(), 443))
        );
        assert_eq!(parse_authority("localhost"), None);
        assert_eq!(parse_authority(""), None);
    }

    #[test]
    fn rewrite_request() {
        let raw = b"GET http://h:1/p?q HTTP/1.1\r\nHost: h:1\r\nProxy-Connection: keep-alive\r\n\
                    Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\nAccept: */*\r\n\r\nBODY";
        let (head, n) = parse_request(raw).unwrap().unwrap();
        assert_eq!(&raw[n..], b"BODY");
        assert!(!is_upgrade(&head));
        let out = String::from_utf8(forward_request(&head, "/p?q", Some("h:1"), false)).unwrap();
        assert_eq!(
            out,
            "GET /p?q HTTP/1.1\r\nHost: h:1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn rewrite_upgrade() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\
                    Upgrade: websocket\r\n\r\n";
        let (head, _) = parse_request(raw).unwrap().unwrap();
        assert!(is_upgrade(&head));
        let out = String::from_utf8(forward_request(&head, "/ws", None, true)).unwrap();
        assert_eq!(
            out,
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(path_of("/a/b?x=1"), "/a/b");
        assert_eq!(path_of("/a#f"), "/a");
        assert_eq!(path_of("/a"), "/a");
    }

    #[test]
    fn bad_heads() {
        assert_eq!(
            parse_request(b"\x16\x03\x01garbage\r\n\r\n").err(),
            Some(400)
        );
        assert!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .unwrap()
                .is_none()
        );
        assert_eq!(parse_response(b"SSH-2.0-x\r\n\r\n").err(), Some(502));
    }
}
