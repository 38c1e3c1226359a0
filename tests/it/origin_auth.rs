//! Who may open a session (`PROTOCOL.md` §1, §4, §7): the `Origin` check on
//! every request of every transport (403 / 4403, before the upgrade on
//! WebSocket), and the application's authentication hook (401 / 4401 on
//! refusal, the identity reaching `Session::extensions()` on success; run
//! again on every request naming the session — more in
//! `hardening_admission.rs`).

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::raw::{self, resume_query};
use crate::support::*;
use holdfast::server::{Holdfast, OpenRequest, Refusal};

const GOOD: &str = "http://good.test";
const EVIL: &str = "http://evil.test";

async fn ws_refused(url: &str, headers: &[(&str, &str)]) -> raw::WsRefused {
    match raw::ws_connect(url, headers).await {
        Ok(_) => panic!("the WebSocket upgrade to {url} with {headers:?} was accepted"),
        Err(refused) => refused,
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_on_every_endpoint() {
    let (holdfast, mut incoming) = Holdfast::builder().allow_origins([GOOD]).build();
    let server = TestServer::serve(holdfast).await;
    let http = raw::http_client();
    let evil = [("origin", EVIL)];
    let good = [("origin", GOOD)];

    // Opening: refused everywhere, WebSocket before the upgrade.
    let refused = ws_refused(&server.ws_url("v=1"), &evil).await;
    assert_eq!(
        refused.status, 403,
        "WebSocket upgrade from a foreign origin"
    );
    for endpoint in ["sse", "poll"] {
        raw::get(&http, &server.url(endpoint, "v=1"), &evil)
            .await
            .assert_refusal(403, "close", 4403);
    }
    assert_eq!(server.holdfast.session_count(), 0);

    // An allowed origin, and no origin at all, open sessions.
    let reply = raw::get(&http, &server.url("poll", "v=1"), &good).await;
    let key = match reply.batch().first() {
        Some(Frame::Open(open)) => open.key.clone(),
        other => panic!("poll from the allowed origin: {other:?}"),
    };
    assert_eq!(reply.header("access-control-allow-origin"), GOOD, "CORS");
    assert_eq!(reply.header("access-control-allow-credentials"), "true");
    let session = accept(&mut incoming, DEADLINE).await;
    let (recorder, _) = Recorder::start(session.clone());
    let mut ws = RawWs::connect_with(&server.ws_url("v=1"), &good).await;
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Open(_))
    ));
    let mut ws = RawWs::connect(&server.ws_url("v=1")).await;
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Open(_))
    ));

    // Every later request of an existing session is checked too: resumes
    // on each transport, and sends — which must not be applied.
    let refused = ws_refused(&server.ws_url(&resume_query(&key, 0)), &evil).await;
    assert_eq!(
        refused.status, 403,
        "WebSocket resume from a foreign origin"
    );
    for endpoint in ["sse", "poll"] {
        raw::get(&http, &server.url(endpoint, &resume_query(&key, 0)), &evil)
            .await
            .assert_refusal(403, "close", 4403);
    }
    let url = format!("{}/send?v=1&key={}", server.base, raw::encode(&key));
    let batch = wire_batch(&[Frame::Msg {
        seq: 1,
        data: "from evil".into(),
    }]);
    raw::post(&http, &url, batch.clone(), &evil)
        .await
        .assert_refusal(403, "close", 4403);
    // The session is unharmed and the refused send was not applied.
    assert!(!session.is_closed());
    let batch = wire_batch(&[Frame::Msg {
        seq: 1,
        data: "from good".into(),
    }]);
    let reply = raw::post(&http, &url, batch, &good).await;
    assert_eq!(reply.batch().first(), Some(&Frame::Ack { seq: 1 }));
    let got = recorder.wait_for(1, DEADLINE).await;
    assert_exactly("received", &got, &[Payload::Text("from good".into())]);
}

fn wire_batch(frames: &[Frame]) -> String {
    support::wire::encode_batch(frames)
}

#[tokio::test]
async fn same_origin_policy_by_default() {
    let server = TestServer::echo(Default::default()).await;
    let http = raw::http_client();
    let own = format!("http://{}", server.addr);
    let reply = raw::get(&http, &server.url("poll", "v=1"), &[("origin", &own)]).await;
    assert!(
        matches!(reply.batch().first(), Some(Frame::Open(_))),
        "same origin: {:?}",
        reply.batch()
    );
    let refused = raw::get(&http, &server.url("poll", "v=1"), &[("origin", EVIL)]).await;
    refused.assert_refusal(403, "close", 4403);
    // The foreign page may read why (and so stop retrying), nothing more.
    assert_eq!(refused.header("access-control-allow-origin"), EVIL);
    assert_eq!(refused.header("access-control-allow-credentials"), "");
    assert_eq!(
        ws_refused(&server.ws_url("v=1"), &[("origin", EVIL)])
            .await
            .status,
        403
    );
    let mut ws = RawWs::connect_with(&server.ws_url("v=1"), &[("origin", &own)]).await;
    assert!(matches!(
        ws.recv_frames().await.first(),
        Some(Frame::Open(_))
    ));
}

/// The identity the test's authentication hook attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
struct User(String);

/// A server whose hook wants `Authorization: Bearer <name>` (or
/// `?token=<name>`), refuses `mallory` with 403 and anyone else without a
/// token with 401; counts its calls.
async fn auth_server() -> (TestServer, holdfast::server::Incoming, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let (holdfast, incoming) = Holdfast::builder()
        .allow_origins([GOOD])
        .auth(move |request: OpenRequest| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let name = request
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned)
                    .or_else(|| request.query("token"))
                    .ok_or_else(|| Refusal::unauthorized("log in first"))?;
                if name == "mallory" {
                    return Err(Refusal::forbidden("not you"));
                }
                let mut identity = http::Extensions::new();
                identity.insert(holdfast::server::Identity::new(name.as_str()));
                identity.insert(User(name));
                Ok(identity)
            }
        })
        .build();
    (TestServer::serve(holdfast).await, incoming, calls)
}

#[tokio::test]
async fn the_auth_hook_refuses_with_401_and_4401() {
    let (server, _incoming, calls) = auth_server().await;
    let http = raw::http_client();
    for endpoint in ["sse", "poll"] {
        let frame = raw::get(&http, &server.url(endpoint, "v=1"), &[])
            .await
            .assert_refusal(401, "close", 4401);
        assert!(
            matches!(frame, Frame::Close { ref reason, .. } if reason == "log in first"),
            "{frame:?}"
        );
        raw::get(&http, &server.url(endpoint, "v=1&token=mallory"), &[])
            .await
            .assert_refusal(403, "close", 4403);
    }
    for (query, code) in [("v=1", 4401), ("v=1&token=mallory", 4403)] {
        let mut ws = RawWs::connect(&server.ws_url(query)).await;
        let (frames, close) = ws.recv_until_closed().await;
        assert!(
            matches!(frames.as_slice(), [Frame::Close { code: c, .. }] if *c == code),
            "{query}: {frames:?}"
        );
        assert_eq!(
            close.map(|c| c.0),
            Some(code),
            "{query}: WebSocket close code"
        );
    }
    assert_eq!(server.holdfast.session_count(), 0);
    // A foreign origin is refused before the hook runs.
    let before = calls.load(Ordering::SeqCst);
    raw::get(
        &http,
        &server.url("poll", "v=1&token=ada"),
        &[("origin", EVIL)],
    )
    .await
    .assert_refusal(403, "close", 4403);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the hook ran for a foreign origin"
    );
}

#[tokio::test]
async fn the_identity_reaches_the_session_on_every_transport() {
    let (server, mut incoming, calls) = auth_server().await;
    for (i, transport) in Transport::ALL.into_iter().enumerate() {
        let name = format!("ada-{i}");
        let mut client = Client::new(&server.base, 0);
        client
            .headers
            .push(("authorization".into(), format!("Bearer {name}")));
        assert_eq!(
            client.attach(transport, &Plan::greeting_only()).await,
            Ok(Outcome::Done)
        );
        let session = accept(&mut incoming, DEADLINE).await;
        assert_eq!(
            session.extensions().get::<User>(),
            Some(&User(name.clone())),
            "{transport:?}"
        );
        assert_eq!(
            session
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(format!("Bearer {name}").as_str())
        );

        // Resumes run the hook again, so the client keeps sending its
        // credentials; without them the key alone is refused (4401) and the
        // session lives on.
        client.headers.clear();
        let refused = client.attach(Transport::Poll, &Plan::greeting_only()).await;
        assert!(
            matches!(&refused, Ok(Outcome::Refused(401, frames))
                if frames.first().and_then(|f| f.code()) == Some(4401)),
            "{transport:?}: a resume without credentials: {refused:?}"
        );
        assert!(!session.is_closed());
        let before = calls.load(Ordering::SeqCst);
        client
            .headers
            .push(("authorization".into(), format!("Bearer {name}")));
        client.backlog = vec![Payload::Text(format!("hello from {name}"))].into();
        let mut plan = Plan::until_done(DEADLINE);
        plan.stop_when_done = true;
        for resume_on in Transport::ALL {
            assert_eq!(
                client.attach(resume_on, &plan).await,
                Ok(Outcome::Done),
                "{transport:?} → {resume_on:?}"
            );
        }
        assert!(
            calls.load(Ordering::SeqCst) >= before + Transport::ALL.len(),
            "the hook did not run on each resume"
        );
        let got = within(DEADLINE, "the message", session.recv())
            .await
            .map(|m| to_payload(&m));
        assert_eq!(got, Some(Payload::Text(format!("hello from {name}"))));
    }
}
