//! The four endpoints, each a thin adapter between HTTP and the session
//! core, and what they share: reading the query, opening or resuming.
//!
//! Opening is split in two so that WebSocket can refuse after its upgrade
//! (browsers cannot read the status of a refused upgrade): [`prepare`] runs
//! on the request (query, authentication, limits; the origin was checked
//! by the Origin layer before the handler ran), [`attach`] when the
//! transport is ready to carry frames.

mod body;
mod key;
pub(crate) mod poll;
#[cfg(test)]
mod query_props;
pub(crate) mod send;
pub(crate) mod shared;
pub(crate) mod sse;
mod upgrade;
pub(crate) mod ws;

use std::sync::{Arc, Weak};

use holdfast_protocol::{
    AttachmentId, Close, CloseCode, ServerSession, SessionIdentity, TransportKind,
};
use http::{Extensions, HeaderMap, Uri};

use holdfast_protocol::connector::report::{self, Decoded, MAX_REPORT_BYTES};
use holdfast_protocol::wire::PROTOCOL_VERSION;

use crate::admission::Verdict;
use crate::auth::{Identity, OpenRequest, Refusal, RequestKind};
use crate::logs::Throttle;
use crate::peer::Peer;
use crate::registry::{new_key, new_session_id};
use crate::reject::Reject;
use crate::server::{HandOffError, ServerState};
use crate::session::{Session, Shared, now};

pub(crate) use key::KEY_HEADER;

/// The query parameters every endpoint reads (`PROTOCOL.md` §1), with the
/// session key wherever it travelled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConnectQuery {
    /// From the query, the `Holdfast-Key` header or (WebSocket) a
    /// subprotocol: see [`key`].
    pub(crate) key: Option<String>,
    pub(crate) last: u64,
    /// `probe=1`: test the transport without attaching (`PROTOCOL.md` §8.5).
    pub(crate) probe: bool,
    /// The client's fallback report (`PROTOCOL.md` §1.2), if it sent one.
    /// Never a reason to refuse the request.
    pub(crate) report: Option<Decoded>,
}

impl ConnectQuery {
    /// Reads a request's query and its key, wherever the key travelled
    /// (`websocket`: the request is an upgrade, whose subprotocols may
    /// carry it).
    pub(crate) fn read(
        headers: &HeaderMap,
        query: Option<&str>,
        websocket: bool,
    ) -> Result<Self, Reject> {
        Self::parse(query, key::outside_url(headers, websocket))
    }

    /// Reads the query in one pass, with the key found `outside` the URL
    /// (or the refusal of what was found there). In this order, so that
    /// the most final refusal wins and none touches a session:
    ///
    /// 1. a version this server does not speak: `close` 4400, whether or
    ///    not the request names a session (a `detach` would tell the
    ///    client to retry forever);
    /// 2. an empty key (`key=`, an empty header or subprotocol token):
    ///    `close` 4400 — it names no session, and no retry can help;
    /// 3. two different keys, or a malformed parameter of a request naming
    ///    a session: `detach` 1002 (that session lives on); a malformed
    ///    parameter of a request naming none: `close` 4400.
    pub(crate) fn parse(
        query: Option<&str>,
        outside: Result<Option<String>, Reject>,
    ) -> Result<Self, Reject> {
        let (mut v, mut key, mut last, mut probe) = (None, None, None, false);
        let mut report = None;
        for pair in query.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            // Our parameter names need no decoding; values might.
            match name {
                "v" => v = Some(value),
                "key" => key = Some(value),
                "last" => last = Some(value),
                "probe" => probe = value == "1",
                "report" => report = Some(value),
                _ => {}
            }
        }
        if let Some(v) = v
            && v.parse::<u32>().ok() != Some(PROTOCOL_VERSION)
        {
            return Err(Reject::bad_request(format!(
                "{} {:?}; this server speaks {PROTOCOL_VERSION}",
                crate::reject::BAD_VERSION,
                crate::logs::loggable(v)
            )));
        }
        let in_url = match key {
            None => None,
            Some(value) => Some(
                decode_if_needed(value)
                    .filter(|k| !k.is_empty())
                    .ok_or_else(key::empty_key)?,
            ),
        };
        let key = match (in_url, outside?) {
            (Some(in_url), Some(outside)) if in_url != outside => {
                return Err(Reject::protocol(
                    "the session key in the URL and the one outside it differ",
                ));
            }
            (in_url, outside) => outside.or(in_url),
        };
        let last = match last {
            None => 0,
            Some(last) => last.parse().map_err(|_| {
                let reason = format!(
                    "`last` must be a number, got {:?}",
                    crate::logs::loggable(last)
                );
                if key.is_some() {
                    Reject::protocol(reason)
                } else {
                    Reject::bad_request(reason)
                }
            })?,
        };
        Ok(Self {
            key,
            last,
            probe,
            report: report.filter(|r| !r.is_empty()).map(read_report),
        })
    }
}

/// A `report` value as it came in the query. Escaped, a value is at most
/// three times as long as decoded: a longer one is over the bound however
/// it is spelled, and is not even decoded.
fn read_report(raw: &str) -> Decoded {
    let unread = Decoded {
        entries: Vec::new(),
        skipped: 1,
    };
    if raw.len() > 3 * MAX_REPORT_BYTES {
        return unread;
    }
    decode_if_needed(raw).map_or(unread, |value| report::decode(&value))
}

/// A query value, percent-decoded only when it has escapes (keys never
/// do).
fn decode_if_needed(value: &str) -> Option<String> {
    if value.contains(['%', '+']) {
        percent_decode(value)
    } else {
        Some(value.to_owned())
    }
}

/// A request checked and ready to open or resume a session.
pub(crate) enum Prepared {
    Open {
        headers: HeaderMap,
        identity: Extensions,
        report: Option<Decoded>,
    },
    Resume {
        key: String,
        last: u64,
        report: Option<Decoded>,
    },
    /// A probe of a session's transport: answers, never attaches.
    Probe,
}

/// Checks a downstream request (its origin was checked by the Origin layer
/// before it got here): the query; for a request naming a
/// session, the authentication hook again (the session must exist and the
/// request carry its owner's identity); for a new session, the session
/// limits (the runtime's lag, the server-wide count, then the client
/// address's rate) and then the authentication hook — nothing is allocated
/// for a session refused here. Requests naming a session are never refused
/// for the runtime's lag.
pub(crate) async fn prepare(
    state: &ServerState,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
    kind: TransportKind,
    last_event_id: Option<u64>,
) -> Result<Prepared, Reject> {
    let mut query = ConnectQuery::read(&headers, uri.query(), kind == TransportKind::WebSocket)?;
    query.last = query.last.max(last_event_id.unwrap_or(0));
    prepare_session(state, headers, uri, peer, kind, query).await
}

/// [`prepare`] once the query is read — or, for a
/// session carried by a shared request (`PROTOCOL.md` §11), once its entry
/// in the body is: the key and `last` come from `query`, the rest (the
/// authentication hook's input, the client address) from the request.
pub(crate) async fn prepare_session(
    state: &ServerState,
    headers: HeaderMap,
    uri: Uri,
    peer: Peer,
    kind: TransportKind,
    query: ConnectQuery,
) -> Result<Prepared, Reject> {
    if query.probe {
        // Only a session's own client may probe: it proves it holds a key.
        let key = query
            .key
            .ok_or_else(|| Reject::bad_request("a probe needs the session `key`"))?;
        let shared = find(state, &key).await?;
        reauthorize(state, &shared, &headers, &uri, kind, RequestKind::Probe).await?;
        return Ok(Prepared::Probe);
    }
    if let Some(key) = query.key {
        if state.auth.is_some() {
            let shared = find(state, &key).await.inspect_err(|reject| {
                resume_refused(state, kind, reject);
            })?;
            reauthorize(state, &shared, &headers, &uri, kind, RequestKind::Resume).await?;
        }
        return Ok(Prepared::Resume {
            key,
            last: query.last,
            report: query.report,
        });
    }
    // First, as the cheapest: under CPU overload no work at all (an auth
    // hook, the store) is spent on a session that will not be served.
    state.lag.start();
    if state.lag.busy(now()) {
        return Err(overloaded(state, crate::reject::BUSY));
    }
    if state.registry.open() >= state.config.max_sessions {
        return Err(overloaded(state, crate::reject::TOO_MANY_SESSIONS));
    }
    admit(state, &headers, peer)?;
    let identity = match &state.auth {
        Some(hook) => {
            let granted = hook
                .check(OpenRequest {
                    headers: headers.clone(),
                    uri,
                    transport: kind,
                    kind: RequestKind::Open,
                })
                .await?;
            if granted.get::<Identity>().is_none() {
                // Nothing to bind the session to: any credentials the hook
                // accepts could take it over. Fail loudly instead.
                tracing::error!(
                    "the auth hook accepted a session without putting an `Identity` in the \
                     extensions it returned: refusing it (see `Builder::auth`)"
                );
                return Err(Reject::session(
                    CloseCode::INTERNAL_ERROR,
                    "the server's authentication named no identity",
                ));
            }
            granted
        }
        None => Extensions::new(),
    };
    Ok(Prepared::Open {
        headers,
        identity,
        report: query.report,
    })
}

/// Takes a token from the client address's bucket, or refuses with `503`
/// and the time until the bucket holds one again.
fn admit(state: &ServerState, headers: &HeaderMap, peer: Peer) -> Result<(), Reject> {
    let Some(client) = state.client_addr(headers, peer) else {
        return Ok(());
    };
    match state.admission.admit(client, now()) {
        Verdict::Admit => Ok(()),
        Verdict::Refuse { wait, first } => {
            if first {
                tracing::warn!(%client, "refusing new sessions from an address over its open rate");
            } else {
                tracing::debug!(%client, "refusing a new session: address over its open rate");
            }
            Err(Reject::Session(
                Close::new(CloseCode::OVERLOADED, crate::reject::RATE_LIMITED)
                    .with_retry_after(wait.max(state.config.retry_after)),
            ))
        }
    }
}

/// Runs the authentication hook for a request naming `shared`'s session
/// and checks that it yields the session's [`Identity`]. Refusals are
/// `close` frames for the requester only: the session lives on for its
/// owner.
pub(crate) async fn reauthorize(
    state: &ServerState,
    shared: &Shared,
    headers: &HeaderMap,
    uri: &Uri,
    transport: TransportKind,
    kind: RequestKind,
) -> Result<(), Reject> {
    let Some(hook) = &state.auth else {
        return Ok(());
    };
    let granted = hook
        .check(OpenRequest {
            headers: headers.clone(),
            uri: uri.clone(),
            transport,
            kind,
        })
        .await?;
    if granted.get::<Identity>() != shared.identity() {
        return Err(
            Refusal::unauthorized("these credentials are not the session's owner's").into(),
        );
    }
    Ok(())
}

/// The session named `key`, held here. Not held here: `410` / 4410 — or,
/// with a store, when the store still has it (it just moved to or from
/// this node between the routing and now), `detach` 4000: the client
/// reconnects at once and is routed afresh.
pub(crate) async fn find(state: &ServerState, key: &str) -> Result<Arc<Shared>, Reject> {
    if let Some(shared) = state.registry.get(key) {
        return Ok(shared);
    }
    match &state.cluster {
        Some(cluster) if cluster.knows(key).await => Err(Reject::Attachment(Close::new(
            CloseCode::RECONNECT,
            "the session moved, reconnect",
        ))),
        _ => Err(Reject::session_lost()),
    }
}

/// Opens or resumes the session and attaches the transport to it.
pub(crate) async fn attach(
    state: &Arc<ServerState>,
    prepared: Prepared,
    kind: TransportKind,
) -> Result<(Arc<Shared>, AttachmentId), Reject> {
    match prepared {
        Prepared::Probe => Err(Reject::bad_request("a probe does not attach")),
        Prepared::Resume { key, last, report } => {
            let attached = match find(state, &key).await {
                Ok(shared) => {
                    let id = shared.lock().attach(now(), kind, last);
                    id.map(|id| (shared, id)).map_err(Reject::from)
                }
                Err(reject) => Err(reject),
            };
            let (shared, id) =
                attached.inspect_err(|reject| resume_refused(state, kind, reject))?;
            shared.client_report(report);
            Ok((shared, id))
        }
        Prepared::Open {
            headers,
            identity,
            report,
        } => {
            let shared = open(state, headers, identity, report).await?;
            let id = shared.lock().attach(now(), kind, 0)?;
            Ok((shared, id))
        }
    }
}

/// Counts a resume that could not recover its session (unknown here,
/// expired or over) as `recovered="false"`.
fn resume_refused(state: &ServerState, kind: TransportKind, reject: &Reject) {
    if reject.close().code == CloseCode::SESSION_LOST {
        state.metrics.resume_lost(kind);
    }
}

async fn open(
    state: &Arc<ServerState>,
    headers: HeaderMap,
    identity: Extensions,
    report: Option<Decoded>,
) -> Result<Arc<Shared>, Reject> {
    let (key, session_id) = match (new_key(), new_session_id()) {
        (Ok(key), Ok(id)) => (key, id),
        _ => {
            tracing::error!("the operating system's random number generator failed");
            return Err(Reject::session(
                CloseCode::INTERNAL_ERROR,
                "cannot create a session key",
            ));
        }
    };
    let core = ServerSession::new(
        now(),
        state.config.session.clone(),
        SessionIdentity { key, session_id },
    );
    let shared = match &state.cluster {
        None => Shared::new(core, headers, identity, state.clone()),
        Some(cluster) => cluster.create(state, core, headers, identity).await?,
    };
    if state
        .registry
        .insert(shared.clone(), state.config.max_sessions)
        .is_err()
    {
        return Err(overloaded(state, crate::reject::TOO_MANY_SESSIONS));
    }
    // Before the application gets the session, so that it sees the report
    // from its first look.
    shared.client_report(report);
    if let Err(HandOffError::NotAccepting) = state.hand_off(Session::new(shared.clone())) {
        state.registry.remove(&shared);
        return Err(overloaded(
            state,
            "the application is not accepting sessions",
        ));
    }
    tokio::spawn(shared.clone().drive_timers());
    if shared.durable.is_some() {
        tokio::spawn(shared.clone().write_to_store());
    }
    Ok(shared)
}

/// The frame that ends a probe once its lifetime is over (`PROTOCOL.md`
/// §8.5): a documented end, so that a client never mistakes it for a
/// failed transport.
pub(crate) fn probe_over() -> Close {
    Close::new(CloseCode::PROBE_OVER, "probe over")
}

/// A refused new session: `503` / close 4503 with `Retry-After`.
pub(crate) fn overloaded(state: &ServerState, reason: &'static str) -> Reject {
    // Under a flood this runs for every request: warn once in a while.
    static WARNED: Throttle = Throttle::new(std::time::Duration::from_secs(10));
    if WARNED.allow(now()) {
        tracing::warn!(reason, "refusing new sessions (logged at most every 10 s)");
    } else {
        tracing::debug!(reason, "refusing a new session");
    }
    Reject::Session(
        Close::new(CloseCode::OVERLOADED, reason).with_retry_after(state.config.retry_after),
    )
}

/// An attachment that holds its session weakly and detaches it when
/// dropped, if the session is still there. A streaming body that a
/// reader stopped reading stays parked until its connection ends, and
/// must not keep a session that was meanwhile forgotten (its replay
/// buffer, its received messages) in memory.
pub(crate) struct WeakAttachment {
    pub(crate) shared: Weak<Shared>,
    pub(crate) id: AttachmentId,
}

impl WeakAttachment {
    pub(crate) fn new(shared: &Arc<Shared>, id: AttachmentId) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            id,
        }
    }
}

impl Drop for WeakAttachment {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.lock().detach(now(), self.id);
        }
    }
}

/// Detaches an attachment when its transport goes away, however it goes:
/// normal end, error, or the client hanging up (the future is dropped).
pub(crate) struct DetachOnDrop {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: AttachmentId,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.shared.lock().detach(now(), self.id);
    }
}

/// A `200` JSON batch that no cache may keep.
pub(crate) fn batch_response(frames: &[holdfast_protocol::Frame]) -> axum::response::Response {
    json_response(holdfast_protocol::wire::json::encode_batch_to_vec(frames))
}

/// A `200` JSON body that no cache may keep.
pub(crate) fn json_response(body: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (http::header::CONTENT_TYPE, "application/json"),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A query parameter's value, percent-decoded.
pub(crate) fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == name).then(|| percent_decode(v))?
        })
        .next()
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_connect_query() {
        assert_eq!(
            ConnectQuery::parse(Some("v=1&key=abc&last=12&t=999"), Ok(None)).ok(),
            Some(ConnectQuery {
                key: Some("abc".into()),
                last: 12,
                probe: false,
                report: None,
            })
        );
        assert_eq!(
            ConnectQuery::parse(None, Ok(None)).ok(),
            Some(ConnectQuery {
                key: None,
                last: 0,
                probe: false,
                report: None,
            })
        );
        let bad_request = |r: Result<ConnectQuery, Reject>| matches!(r, Err(Reject::Session(c)) if c.code == CloseCode::BAD_REQUEST);
        assert!(bad_request(ConnectQuery::parse(Some("v=2"), Ok(None))));
        assert!(matches!(
            ConnectQuery::parse(Some("key=a&last=-1"), Ok(None)),
            Err(Reject::Attachment(c)) if c.code == CloseCode::PROTOCOL_ERROR
        ));
        // An unsupported version is final whether or not a session is named,
        // and wins over any other fault of the request.
        assert!(bad_request(ConnectQuery::parse(
            Some("key=a&v=9"),
            Ok(None)
        )));
        assert!(bad_request(ConnectQuery::parse(
            Some("v=2&last=x"),
            Err(Reject::protocol("two keys"))
        )));
        // An empty key names no session: malformed, final.
        assert!(bad_request(ConnectQuery::parse(Some("v=1&key="), Ok(None))));
        assert!(bad_request(ConnectQuery::parse(Some("key"), Ok(None))));
        assert!(bad_request(ConnectQuery::parse(
            Some("key=&last=3"),
            Ok(Some("abc".into()))
        )));
    }

    #[test]
    fn reads_the_key_outside_the_url() {
        let mut headers = HeaderMap::new();
        headers.insert(KEY_HEADER, http::HeaderValue::from_static("abc"));
        let read = |headers: &HeaderMap, query: &str| {
            ConnectQuery::read(headers, Some(query), false).map(|q| (q.key, q.last))
        };
        assert_eq!(read(&headers, "v=1&last=3"), Ok((Some("abc".into()), 3)));
        // The same key in the URL too (an older client's habit) is fine.
        assert_eq!(
            read(&headers, "key=abc&last=3"),
            Ok((Some("abc".into()), 3))
        );
        assert!(matches!(
            read(&headers, "key=abd&last=3"),
            Err(Reject::Attachment(c)) if c.code == CloseCode::PROTOCOL_ERROR
        ));
        // A malformed query with the key in a header names a session.
        assert!(matches!(
            read(&headers, "last=x"),
            Err(Reject::Attachment(c)) if c.code == CloseCode::PROTOCOL_ERROR
        ));
        headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("holdfast.v1, holdfast.key.xyz"),
        );
        assert!(ConnectQuery::read(&headers, None, true).is_err());
        assert_eq!(
            ConnectQuery::read(&headers, None, false).map(|q| q.key),
            Ok(Some("abc".into()))
        );
        headers.remove(KEY_HEADER);
        assert_eq!(
            ConnectQuery::read(&headers, None, true).map(|q| q.key),
            Ok(Some("xyz".into()))
        );
    }

    #[test]
    fn reads_the_report_and_never_refuses_for_it() {
        let report = |query: &str| {
            ConnectQuery::parse(Some(query), Ok(None))
                .ok()
                .and_then(|q| q.report)
        };
        // As a form encoder (URLSearchParams, `url`) writes it, and raw.
        let escaped = report("v=1&report=websocket%3Asse%3Astatus%3A403%3A12%2Csse%3Along-poll%3Ano_first_frame%3A%3A3001")
            .expect("a report");
        assert_eq!(escaped.entries.len(), 2);
        assert!(escaped.is_valid());
        assert_eq!(
            report("report=websocket:sse:status:403:12").map(|r| r.entries),
            Some(vec![holdfast_protocol::connector::Fallback {
                from: TransportKind::WebSocket,
                to: TransportKind::Sse,
                cause: holdfast_protocol::connector::Cause::Status(403),
                after: std::time::Duration::from_millis(12),
            }])
        );
        assert_eq!(report("v=1&report="), None);
        assert_eq!(report("v=1"), None);
        // Garbage, bad escapes, and values past the bound: read as nothing,
        // and the request goes on.
        for hostile in [
            "report=%zz".to_owned(),
            "report=%FF%FE".to_owned(),
            format!(
                "report={}",
                "websocket%3Asse%3Atimeout%3A%3A1%2C".repeat(200)
            ),
            format!("report={}", "x".repeat(2 << 20)),
            format!("report={}", ",".repeat(10_000)),
        ] {
            let query = ConnectQuery::parse(Some(&format!("v=1&{hostile}&last=0")), Ok(None))
                .expect("a bad report never refuses the request");
            let report = query.report.expect("a report");
            assert!(report.entries.is_empty());
            assert!(!report.is_valid());
        }
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(query_value("a=x%2By+z&b", "a").as_deref(), Some("x+y z"));
        assert_eq!(query_value("a=x&b", "b").as_deref(), Some(""));
        assert_eq!(query_value("a=%zz", "a"), None);
    }
}
