//! What an operator scrapes: a Prometheus recorder in front of an echo
//! server, Rust clients on each transport through echo exchanges and a
//! cut they resume from, refusals of several kinds — then the exposition
//! text, read with a real parser, must show each of them, and every gauge
//! back at 0 once everything ended.
//!
//! A process has one global recorder, and every other test of this binary
//! would count into it: the test runs in a process of its own
//! ([`run_alone`]), so its counts are exact.

use std::time::Duration;

use holdfast::client::{ProxyConfig, TransportKind};
use holdfast::server::ServerConfig;
use holdfast_testkit::{After, Behavior, PathFilter, Proxy};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prometheus_parse::{Sample, Scrape, Value};

use crate::client_support::{DEADLINE, EchoServer, client, exchange, numbered};
use crate::support::own_process::run_alone;
use crate::support::{Frame, RawWs, raw};

/// Echoes per exchange; each client runs two (before and after its cut).
const ECHOES: u32 = 12;

/// Server timers short enough that a long-poll session cut off is seen
/// detached within about two seconds, and that a closed session (which
/// keeps what it buffered, for a client that missed the end) is forgotten
/// within seconds.
fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.session.resume_window = Duration::from_secs(5);
    config.session.ping_interval = Duration::from_millis(300);
    config.session.timeout = Duration::from_millis(1500);
    config.session.poll_hold = Duration::from_millis(700);
    config.session.set_max_message(1024);
    config
}

/// The exposition text, parsed.
struct Scraped(Scrape);

impl Scraped {
    fn take(handle: &PrometheusHandle) -> Self {
        let text = handle.render();
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Self(Scrape::parse(lines).expect("the exposition text parses"))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.0.samples.iter().find(|sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
    }

    /// The value of the sample `name{labels}`; 0 if absent (a counter never
    /// incremented, a gauge never set).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels).map(|sample| &sample.value) {
            None => 0.0,
            Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
            Some(other) => panic!("{name}{labels:?} is not a number: {other:?}"),
        }
    }

    /// Whether `name` has a help text (it was described).
    fn described(&self, name: &str) -> bool {
        self.0.docs.get(name).is_some_and(|help| !help.is_empty())
    }
}

/// Scrapes until `check` holds (it says what it waits for), or panics
/// with the last scrape after [`DEADLINE`].
async fn scrape_until(
    handle: &PrometheusHandle,
    what: &str,
    check: impl Fn(&Scraped) -> bool,
) -> Scraped {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let scraped = Scraped::take(handle);
        if check(&scraped) {
            return scraped;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{what}: never seen within {DEADLINE:?}\n{}",
                handle.render()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn label(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::WebSocket => "websocket",
        TransportKind::Sse => "sse",
        TransportKind::LongPoll => "long-poll",
    }
}

/// The payload bytes of one exchange's messages.
fn exchange_bytes() -> f64 {
    (0..ECHOES).map(|n| numbered(n).len()).sum::<usize>() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_each_transport_resumes_refusals_and_gauges_back_at_zero() {
    if !run_alone(
        module_path!(),
        "a_scrape_shows_each_transport_resumes_refusals_and_gauges_back_at_zero",
    )
    .await
    {
        return;
    }
    // Installed before the server is built: its handles bind to it.
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    let server = EchoServer::start(config()).await;
    let proxy = Proxy::builder()
        .upstream(server.addr)
        .behavior(Behavior::transparent())
        .start()
        .await
        .expect("proxy");
    let url = server.url_at(&proxy.url());

    for (done, kind) in TransportKind::ALL.into_iter().enumerate() {
        let transport = label(kind);
        let mut connection = client(&url)
            .transport(kind)
            .connect()
            .await
            .expect("connect");
        exchange(&mut connection, ECHOES, |_| {}).await;
        // Cut everything and answer with gateway errors until the server
        // sees the session detached (a long-poll session: once its timeout
        // passes with no poll), then let the client back in.
        proxy.set(Behavior::default().error_page(502, PathFilter::Any));
        proxy.cut_all();
        scrape_until(&handle, "the session detached", |s| {
            s.value("holdfast_sessions", &[("state", "detached")]) == 1.0
                && s.value("holdfast_attachments", &[("transport", transport)]) == 0.0
        })
        .await;
        proxy.set(Behavior::transparent());
        // (Whether the client reports the resume as such depends on its
        // timing — a long-poll client may take the gateway errors for a
        // pause — the server's count does not.)
        exchange(&mut connection, ECHOES, |_| {}).await;
        let scraped = scrape_until(&handle, "the session attached again", |s| {
            s.value("holdfast_sessions", &[("state", "attached")]) == 1.0
        })
        .await;
        assert!(
            scraped.value(
                "holdfast_resumes_total",
                &[("transport", transport), ("recovered", "true")]
            ) == 1.0,
            "{transport}: the resume that recovered"
        );
        assert_eq!(
            scraped.value("holdfast_attachments", &[("transport", transport)]),
            1.0,
            "{transport}: attached now"
        );
        assert!(
            scraped.value("holdfast_attachments_total", &[("transport", transport)]) >= 2.0,
            "{transport}: the opening attachment and the resumed one"
        );
        connection.close().await;
        drop(connection);
        scrape_until(&handle, "the client's close", |s| {
            s.value("holdfast_sessions_closed_total", &[("reason", "client")]) == (done + 1) as f64
        })
        .await;
    }

    // Refusals, straight to the server.
    let http = raw::http_client();
    let base = server.url();
    raw::get(
        &http,
        &format!("{base}/poll?v=1"),
        &[("origin", "http://evil.test")],
    )
    .await
    .assert_refusal(403, "close", 4403);
    raw::get(&http, &format!("{base}/poll?v=9"), &[])
        .await
        .assert_refusal(400, "close", 4400);
    raw::get(&http, &format!("{base}/poll?v=1&key=nosuchkey"), &[])
        .await
        .assert_refusal(410, "close", 4410);
    // A WebSocket message over `max_message` ends its session (1009).
    let ws_url = format!("ws://{}{}/ws?v=1", server.addr, server.mount);
    let mut ws = RawWs::connect(&ws_url).await;
    assert!(matches!(
        ws.recv_frames().await.as_slice(),
        [Frame::Open(_)]
    ));
    let big = format!(r#"[{{"t":"msg","seq":1,"d":"{}"}}]"#, "x".repeat(2000));
    ws.send_text(&big).await;
    let ending = ws.recv_until_closed().await;
    assert_eq!(
        ending.1.as_ref().map(|code| code.0),
        Some(1009),
        "{ending:?}"
    );

    let scraped = scrape_until(&handle, "every gauge back at 0", |s| {
        s.value("holdfast_sessions_closed_total", &[("reason", "protocol")]) == 1.0
            && ["attached", "detached"]
                .iter()
                .all(|state| s.value("holdfast_sessions", &[("state", state)]) == 0.0)
            && TransportKind::ALL
                .iter()
                .all(|kind| s.value("holdfast_attachments", &[("transport", label(*kind))]) == 0.0)
            && s.value("holdfast_buffered_bytes", &[]) == 0.0
    })
    .await;
    // Every gauge was there, and moved: not merely absent.
    for (name, labels) in [
        ("holdfast_sessions", [("state", "attached")]),
        ("holdfast_sessions", [("state", "detached")]),
        ("holdfast_attachments", [("transport", "websocket")]),
        ("holdfast_attachments", [("transport", "sse")]),
        ("holdfast_attachments", [("transport", "long-poll")]),
    ] {
        assert!(scraped.find(name, &labels).is_some(), "{name}{labels:?}");
    }
    assert!(scraped.find("holdfast_buffered_bytes", &[]).is_some());
    assert_eq!(
        server.holdfast.buffered_bytes(),
        0,
        "the gauge follows the server's count"
    );

    // Exactly once each way, per transport: the replays are apart.
    for kind in TransportKind::ALL {
        let transport = label(kind);
        for direction in ["in", "out"] {
            assert_eq!(
                scraped.value(
                    "holdfast_messages_total",
                    &[("direction", direction), ("transport", transport)]
                ),
                f64::from(2 * ECHOES),
                "{direction} on {transport}"
            );
        }
    }
    for direction in ["in", "out"] {
        assert_eq!(
            scraped.value("holdfast_message_bytes_total", &[("direction", direction)]),
            6.0 * exchange_bytes(),
            "{direction}"
        );
    }
    assert_eq!(scraped.value("holdfast_sessions_opened_total", &[]), 4.0);
    assert_eq!(
        scraped.value("holdfast_sessions_closed_total", &[("reason", "client")]),
        3.0
    );
    for reason in ["origin", "version", "session_lost", "too_large"] {
        assert_eq!(
            scraped.value("holdfast_rejections_total", &[("reason", reason)]),
            1.0,
            "rejections for {reason}"
        );
    }
    assert_eq!(
        scraped.value(
            "holdfast_resumes_total",
            &[("transport", "long-poll"), ("recovered", "false")]
        ),
        1.0,
        "the poll naming an unknown session"
    );
    // The client acknowledged what the echo sent: the sampled delay has
    // observations.
    assert!(scraped.value("holdfast_ack_delay_seconds_count", &[]) >= 3.0);
    for name in [
        "holdfast_sessions",
        "holdfast_sessions_opened_total",
        "holdfast_sessions_closed_total",
        "holdfast_attachments",
        "holdfast_attachments_total",
        "holdfast_resumes_total",
        "holdfast_messages_total",
        "holdfast_message_bytes_total",
        "holdfast_buffered_bytes",
        "holdfast_rejections_total",
    ] {
        assert!(scraped.described(name), "{name} has help text");
    }
}

/// `cargo run --example echo` serves `/metrics`: a client's echoes show
/// there, counted on its transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_example_serves_metrics() {
    let node =
        crate::example_support::ExampleNode::start("echo", "echo server on http://", &[]).await;
    let mut connection = client(&format!("http://{}/realtime", node.addr))
        .transport(TransportKind::WebSocket)
        .connect()
        .await
        .expect("connect");
    exchange(&mut connection, ECHOES, |_| {}).await;
    let http = raw::http_client();
    let url = format!("http://{}/metrics", node.addr);
    let reply = raw::get(&http, &url, &[]).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.header("content-type").starts_with("text/plain"),
        "{:?}",
        reply.header("content-type")
    );
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scraped = Scraped(Scrape::parse(lines).expect("the exposition text parses"));
    for direction in ["in", "out"] {
        assert_eq!(
            scraped.value(
                "holdfast_messages_total",
                &[("direction", direction), ("transport", "websocket")]
            ),
            f64::from(ECHOES),
            "{direction}\n{text}"
        );
    }
    assert_eq!(
        scraped.value("holdfast_attachments", &[("transport", "websocket")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        scraped.value("holdfast_sessions", &[("state", "attached")]),
        1.0,
        "{text}"
    );
    // With buckets, as docs/operations.md asks: a histogram, not a summary.
    assert!(
        scraped.0.samples.iter().any(|sample| {
            sample.metric == "holdfast_ack_delay_seconds"
                && matches!(sample.value, Value::Histogram(_))
        }),
        "the ack delay has buckets\n{text}"
    );
}

/// Clients pushed off their best transport by intermediaries show up as
/// `holdfast_client_fallbacks_total`, by why: a proxy that strips
/// `Upgrade` (the server answers the plain GET), a tunnel silent after the
/// upgrade, an event stream a proxy buffers (with upgrades refused), and a
/// forward proxy refusing the WebSocket's `CONNECT` — and the attachments
/// count the transports they ended up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_why_clients_fell_back() {
    if !run_alone(module_path!(), "a_scrape_shows_why_clients_fell_back").await {
        return;
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    let server = EchoServer::start(config()).await;
    let networks = [
        (Behavior::default().strip_upgrades(), TransportKind::Sse),
        (
            Behavior::default().silence_after_upgrade(After::IMMEDIATELY),
            TransportKind::Sse,
        ),
        (
            Behavior::default()
                .refuse_upgrades(403)
                .buffer_responses(64 * 1024, PathFilter::ends_with("/sse")),
            TransportKind::LongPoll,
        ),
    ];
    let mut proxies = Vec::new();
    for (behavior, ends_on) in networks {
        let proxy = Proxy::builder()
            .upstream(server.addr)
            .behavior(behavior)
            .start()
            .await
            .expect("proxy");
        let mut connection = client(&server.url_at(&proxy.url()))
            .connect()
            .await
            .expect("connect");
        assert_eq!(connection.transport(), Some(ends_on));
        exchange(&mut connection, ECHOES, |_| {}).await;
        proxies.push((proxy, connection));
    }
    // A forward proxy that lets no WebSocket through: the client's
    // WebSocket goes through `CONNECT`, which it refuses.
    let forward = Proxy::builder()
        .behavior(Behavior::default().refuse_connect(403))
        .start()
        .await
        .expect("proxy");
    let forward_url = url::Url::parse(&forward.url()).expect("proxy url");
    let mut connection = client(&server.url())
        .proxy(ProxyConfig {
            http: Some(forward_url.clone()),
            https: Some(forward_url),
            ..ProxyConfig::none()
        })
        .connect()
        .await
        .expect("connect through the forward proxy");
    assert_eq!(connection.transport(), Some(TransportKind::Sse));
    exchange(&mut connection, ECHOES, |_| {}).await;
    proxies.push((forward, connection));
    // Each fallback counted once, although the last client's report also
    // reached the session its buffered event stream opened (the client
    // never heard of that one, and reported again on long-poll).
    let scraped = scrape_until(&handle, "five fallbacks", |s| {
        fallbacks(s, None, None) == 5.0
    })
    .await;
    let fallbacks = |to: &str, reason: &str| fallbacks(&scraped, Some(to), Some(reason));
    // The stripped upgrade is answered by the server itself (a GET it
    // cannot upgrade), the refused one by the proxy: both a status.
    let stripped = scraped
        .find(
            "holdfast_client_fallbacks_total",
            &[("from", "websocket"), ("to", "sse"), ("reason", "status")],
        )
        .map(|sample| sample.labels.get("status").unwrap_or_default().to_owned());
    assert!(
        stripped
            .as_deref()
            .is_some_and(|status| status.starts_with('4')),
        "the stripped upgrade's status: {stripped:?}\n{}",
        handle.render()
    );
    assert_eq!(fallbacks("sse", "status"), 3.0, "{}", handle.render());
    assert_eq!(
        fallbacks("sse", "no_first_frame"),
        1.0,
        "{}",
        handle.render()
    );
    assert_eq!(
        fallbacks("long-poll", "no_first_frame"),
        1.0,
        "{}",
        handle.render()
    );
    assert_eq!(
        scraped.value(
            "holdfast_client_fallbacks_total",
            &[
                ("from", "websocket"),
                ("to", "sse"),
                ("reason", "status"),
                ("status", "403")
            ]
        ),
        2.0,
        "{}",
        handle.render()
    );
    assert_eq!(
        scraped.value("holdfast_attachments", &[("transport", "sse")]),
        3.0
    );
    assert_eq!(
        scraped.value("holdfast_attachments", &[("transport", "long-poll")]),
        1.0
    );
    assert_eq!(
        scraped.value("holdfast_attachments", &[("transport", "websocket")]),
        0.0
    );
    drop(proxies);
}

/// The sum of `holdfast_client_fallbacks_total` over the samples going
/// `to` for `reason` (any, for `None`).
fn fallbacks(scraped: &Scraped, to: Option<&str>, reason: Option<&str>) -> f64 {
    scraped
        .0
        .samples
        .iter()
        .filter(|sample| {
            sample.metric == "holdfast_client_fallbacks_total"
                && to.is_none_or(|to| sample.labels.get("to") == Some(to))
                && reason.is_none_or(|reason| sample.labels.get("reason") == Some(reason))
        })
        .map(|sample| match sample.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
