//! Reading a shared request (`PROTOCOL.md` §11.1): the checks that refuse
//! it whole — before any session is touched — and its body, the list of
//! sessions to carry.

use std::collections::HashSet;

use axum::body::Body;
use axum::response::Response;
use holdfast_protocol::CloseCode;
use holdfast_protocol::connector::report::{self, Decoded};
use http::{HeaderMap, Uri};
use serde::Deserialize;

use crate::reject::Reject;
use crate::server::ServerState;
use crate::transport::ConnectQuery;
use crate::transport::KEY_HEADER;
use crate::transport::body::{BodyError, read_limited, timed_out};

/// Body bytes allowed per session a shared request may carry: an entry
/// with a 43-character key, a 10-digit tag and a 16-digit `last` takes
/// about 80, so a client writing plain JSON has room to spare.
pub(crate) const BYTES_PER_SESSION: usize = 256;

/// The largest tag: 2^31 − 1, a number every JSON reader holds exactly
/// and JavaScript can use as a small integer.
const MAX_TAG: u64 = (1 << 31) - 1;

/// One session the request names.
#[derive(PartialEq, Eq)]
pub(crate) struct Entry {
    /// Marks the session's frames in the answer.
    pub(crate) tag: u32,
    /// The session key; `None` opens a new session.
    pub(crate) key: Option<String>,
    /// What the session's application was given (`last` of §1).
    pub(crate) last: u64,
    /// The client's fallback report for this session (`report` of §1.2).
    pub(crate) report: Option<Decoded>,
}

/// Never shows the key: it is a bearer credential (`PROTOCOL.md` §2.1).
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("tag", &self.tag)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("last", &self.last)
            .field("report", &self.report)
            .finish()
    }
}

/// An entry as written. Unknown fields are ignored, as in frames (§2): a
/// later client may add some.
#[derive(Deserialize)]
struct RawEntry {
    s: u64,
    key: Option<String>,
    last: Option<u64>,
    /// Any JSON: a report that is not a string is no report, never a
    /// reason to refuse the request.
    report: Option<serde_json::Value>,
}

/// Checks a shared request and reads its body (its origin was checked by the
/// Origin layer: every session it carries has the same one). A refusal is
/// the whole answer: `400` close 4400 (version, a key outside the
/// body, a malformed body), `413` close 1009 (body over its limit), `408`
/// (body too slow).
pub(crate) async fn read(
    state: &ServerState,
    headers: &HeaderMap,
    uri: &Uri,
    body: Body,
) -> Result<Vec<Entry>, Response> {
    check_url_and_headers(headers, uri).map_err(Reject::into_http)?;
    let max = state.config.session.max_shared_sessions;
    let limit = max.saturating_mul(BYTES_PER_SESSION);
    let timeout = state.config.body_timeout;
    let bytes = match read_limited(headers, body, limit, timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooBig(_)) => {
            return Err(Reject::session(
                CloseCode::TOO_BIG,
                format!(
                    "a shared request body holds at most {limit} bytes \
                     ({BYTES_PER_SESSION} per session, {max} sessions)"
                ),
            )
            .into_http());
        }
        Err(BodyError::Unreadable) => {
            return Err(Reject::bad_request("the request body could not be read").into_http());
        }
        Err(BodyError::TimedOut) => return Err(timed_out(timeout)),
    };
    parse(&bytes, max).map_err(Reject::into_http)
}

/// The version must be one this server speaks (checked first, §10); keys
/// travel in the body only. A key in the URL or a `Holdfast-Key` header
/// would name a session without saying which entry it belongs to: a
/// client bug, refused whole.
fn check_url_and_headers(headers: &HeaderMap, uri: &Uri) -> Result<(), Reject> {
    let query = ConnectQuery::parse(uri.query(), Ok(None))?;
    if query.key.is_some() || headers.contains_key(KEY_HEADER) {
        return Err(Reject::bad_request(
            "a shared request names its sessions' keys in its body only, \
             not in the URL or a `Holdfast-Key` header",
        ));
    }
    Ok(())
}

/// Reads the body: a JSON array of 1 to `max` entries with unique tags.
pub(crate) fn parse(bytes: &[u8], max: usize) -> Result<Vec<Entry>, Reject> {
    let raw: Vec<RawEntry> = serde_json::from_slice(bytes).map_err(|error| {
        // serde's message may quote the input (a key): say where, not what.
        Reject::bad_request(format!(
            "the body must be a JSON array of {{\"s\":tag,\"key\":key,\"last\":n}} \
             objects ({:?} error at line {}, column {})",
            error.classify(),
            error.line(),
            error.column()
        ))
    })?;
    if raw.is_empty() {
        return Err(Reject::bad_request(
            "a shared request names no session: name at least one",
        ));
    }
    if raw.len() > max {
        return Err(Reject::bad_request(format!(
            "a shared request carries at most {max} sessions, this one names {}",
            raw.len()
        )));
    }
    let mut tags = HashSet::with_capacity(raw.len());
    raw.into_iter()
        .map(|entry| {
            let tag = u32::try_from(entry.s)
                .ok()
                .filter(|tag| u64::from(*tag) <= MAX_TAG)
                .ok_or_else(|| {
                    Reject::bad_request(format!(
                        "tag {} out of range: tags are 0 to {MAX_TAG}",
                        entry.s
                    ))
                })?;
            if !tags.insert(tag) {
                return Err(Reject::bad_request(format!(
                    "tag {tag} appears twice: tags are unique within a request"
                )));
            }
            Ok(Entry {
                tag,
                key: entry.key,
                last: entry.last.unwrap_or(0),
                report: entry
                    .report
                    .as_ref()
                    .and_then(serde_json::Value::as_str)
                    .filter(|report| !report.is_empty())
                    .map(report::decode),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str, max: usize) -> String {
        match parse(body.as_bytes(), max) {
            Err(Reject::Session(close)) if close.code == CloseCode::BAD_REQUEST => {
                close.reason.into_owned()
            }
            other => panic!("{body}: expected a 4400 refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_entries() {
        let entries = parse(
            br#"[{"s":1,"key":"k1","last":12},{"s":2,"key":null},{"s":2147483647,"x":[1]}]"#,
            3,
        );
        assert_eq!(
            entries,
            Ok(vec![
                Entry {
                    tag: 1,
                    key: Some("k1".into()),
                    last: 12,
                    report: None,
                },
                Entry {
                    tag: 2,
                    key: None,
                    last: 0,
                    report: None,
                },
                Entry {
                    tag: (1 << 31) - 1,
                    key: None,
                    last: 0,
                    report: None,
                },
            ])
        );
    }

    #[test]
    fn reads_each_sessions_report_and_never_refuses_for_it() {
        let entries = parse(
            br#"[{"s":1,"report":"websocket:sse:status:403:12"},{"s":2,"report":7},{"s":3,"report":"x,y"},{"s":4,"report":""}]"#,
            4,
        )
        .expect("a body");
        let reports: Vec<_> = entries.into_iter().map(|e| e.report).collect();
        assert_eq!(reports[0].as_ref().map(|r| r.entries.len()), Some(1));
        assert_eq!(reports[1], None);
        assert_eq!(reports[2].as_ref().map(|r| r.skipped), Some(2));
        assert_eq!(reports[3], None);
    }

    #[test]
    fn an_entry_never_shows_its_key() {
        let entry = Entry {
            tag: 1,
            key: Some("secret-key".into()),
            last: 2,
            report: None,
        };
        assert!(!format!("{entry:?}").contains("secret"));
    }

    #[test]
    fn refuses_malformed_bodies_whole() {
        for body in [
            "",
            "{}",
            "[1]",
            r#"[{"key":"k"}]"#,
            r#"[{"s":-1}]"#,
            r#"[{"s":1.5}]"#,
            r#"[{"s":"1"}]"#,
            r#"[{"s":1,"last":-2}]"#,
            r#"[{"s":1,"key":7}]"#,
            r#"[{"s":1}] x"#,
        ] {
            refused(body, 4);
        }
        assert!(refused("[]", 4).contains("no session"));
        assert!(refused(r#"[{"s":1},{"s":1}]"#, 4).contains("twice"));
        assert!(refused(r#"[{"s":2147483648}]"#, 4).contains("out of range"));
        assert!(refused(r#"[{"s":1},{"s":2},{"s":3}]"#, 2).contains("at most 2"));
        // The reason never quotes what the client wrote (a key, maybe).
        let reason = refused(r#"[{"s":"secret-key-material"}]"#, 4);
        assert!(!reason.contains("secret"), "{reason}");
    }

    #[test]
    fn keys_travel_in_the_body_only() {
        let uri = |q: &str| q.parse::<Uri>().expect("uri");
        let none = HeaderMap::new();
        assert_eq!(check_url_and_headers(&none, &uri("/sse?v=1&t=9")), Ok(()));
        assert!(check_url_and_headers(&none, &uri("/sse?v=1&key=k")).is_err());
        assert!(check_url_and_headers(&none, &uri("/sse?v=1&key=")).is_err());
        assert!(check_url_and_headers(&none, &uri("/sse?v=2")).is_err());
        let mut with_key = HeaderMap::new();
        with_key.insert(KEY_HEADER, http::HeaderValue::from_static("k"));
        let refusal = check_url_and_headers(&with_key, &uri("/sse?v=1"));
        assert!(
            matches!(refusal, Err(Reject::Session(ref c)) if c.code == CloseCode::BAD_REQUEST),
            "{refusal:?}"
        );
    }
}
