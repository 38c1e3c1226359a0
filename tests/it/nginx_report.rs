//! Fallback timings, printed not asserted: for each network scenario, the
//! time from `connect()` to the first echoed message, the transports the
//! session went through, reconnects, throughput, and the longest pause
//! between two echoes. Prints the Markdown table of `docs/networks.md`:
//!
//! ```sh
//! cargo test --release --test it nginx_report -- --nocapture
//! ```
//!
//! The client and the server run with their **default** settings (2 s
//! probe timeout, backoff 250 ms → 30 s reset after 10 s, re-probe after
//! 15 s, 20 s pings), so the figures are what a user gets — except in the
//! one row that says otherwise. Every scenario still checks exact delivery
//! both ways (an echo out of order fails the test). Each scenario streams
//! messages as fast as the session takes them for a fixed time after the
//! first echo (1 s; 3 s with the outage, which starts 0.5 s in; 8 s with
//! the cuts, so that the backoff shows); `HOLDFAST_REPORT_SCALE=<factor>` stretches those times,
//! `HOLDFAST_REPORT_ONLY=<Scenario variant>` runs one row.
//! The scenarios run one after the other so that they do not compete for
//! the CPU; figures from this 2-core machine are indicative.

use crate::client_support;
use crate::nginx_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client_support::{EchoServer, number_of, numbered};
use crate::nginx_support::{Nginx, Profile};
use holdfast::client::{Backoff, ClientBuilder, Event, ProxyConfig, TransportKind};
use holdfast::server::ServerConfig;
use holdfast_testkit::{After, Behavior, PathFilter, Proxy};

/// The networks measured.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    Direct,
    RefusedUpgrade,
    SilentUpgrade,
    BufferedSse,
    NginxCorporate,
    NginxCorporateStrict,
    NginxWellConfigured,
    BadGatewayMidStream,
    RandomCuts,
    RandomCutsQuickReset,
}

impl Scenario {
    const ALL: [Scenario; 10] = [
        Scenario::Direct,
        Scenario::RefusedUpgrade,
        Scenario::SilentUpgrade,
        Scenario::BufferedSse,
        Scenario::NginxCorporate,
        Scenario::NginxCorporateStrict,
        Scenario::NginxWellConfigured,
        Scenario::BadGatewayMidStream,
        Scenario::RandomCuts,
        Scenario::RandomCutsQuickReset,
    ];

    fn describe(self) -> &'static str {
        match self {
            Scenario::Direct => "direct (no proxy)",
            Scenario::RefusedUpgrade => "proxy refuses the upgrade (403)",
            Scenario::SilentUpgrade => "proxy passes the upgrade, then silence",
            Scenario::BufferedSse => "no upgrade, SSE buffered (64 KiB)",
            Scenario::NginxCorporate => "nginx, corporate default",
            Scenario::NginxCorporateStrict => "nginx, corporate, ignores X-Accel-Buffering",
            Scenario::NginxWellConfigured => "nginx, well configured",
            Scenario::BadGatewayMidStream => "gateway answers 502 for 1 s mid-stream (all cut)",
            Scenario::RandomCuts => "every connection cut at a random age ≤ 2 s",
            Scenario::RandomCutsQuickReset => "the same, client backoff `reset_after` 200 ms",
        }
    }

    /// How long messages stream after the first echo.
    fn duration(self) -> Duration {
        let scale = std::env::var("HOLDFAST_REPORT_SCALE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(1.0);
        Duration::from_millis(match self {
            Scenario::BadGatewayMidStream => 3000,
            Scenario::RandomCuts | Scenario::RandomCutsQuickReset => 8000,
            _ => 1000,
        })
        .mul_f64(scale)
    }

    fn client(self, url: &str) -> ClientBuilder {
        let builder = ClientBuilder::new(url).proxy(ProxyConfig::none());
        match self {
            Scenario::RandomCutsQuickReset => builder.backoff(Backoff {
                reset_after: Duration::from_millis(200),
                ..Backoff::default()
            }),
            _ => builder,
        }
    }
}

/// What keeps a scenario's network alive until the end of the report (so
/// that no later scenario reuses its port: the client remembers what
/// worked per URL).
enum Front {
    None,
    Proxy(Arc<Proxy>),
    Nginx(Nginx),
}

struct Row {
    scenario: Scenario,
    first: Duration,
    path: Vec<TransportKind>,
    reconnects: u32,
    echoed: u32,
    rate: f64,
    longest_gap: Duration,
}

async fn start_front(scenario: Scenario, server: &EchoServer) -> Front {
    let proxied = |behavior: Behavior| {
        let upstream = server.addr;
        async move {
            let proxy = Proxy::builder()
                .upstream(upstream)
                .behavior(behavior)
                .start()
                .await
                .expect("proxy");
            Front::Proxy(Arc::new(proxy))
        }
    };
    let cuts = After::time(Duration::from_secs(2));
    match scenario {
        Scenario::Direct => Front::None,
        Scenario::RefusedUpgrade => proxied(Behavior::default().refuse_upgrades(403)).await,
        Scenario::SilentUpgrade => {
            proxied(Behavior::default().silence_after_upgrade(After::IMMEDIATELY)).await
        }
        Scenario::BufferedSse => {
            proxied(
                Behavior::default()
                    .refuse_upgrades(403)
                    .buffer_responses(64 * 1024, PathFilter::ends_with("/sse")),
            )
            .await
        }
        Scenario::NginxCorporate => {
            Front::Nginx(Nginx::start(Profile::Corporate, server.addr).await)
        }
        Scenario::NginxCorporateStrict => {
            Front::Nginx(Nginx::start(Profile::CorporateStrict, server.addr).await)
        }
        Scenario::NginxWellConfigured => {
            Front::Nginx(Nginx::start(Profile::WellConfigured, server.addr).await)
        }
        Scenario::BadGatewayMidStream => proxied(Behavior::transparent()).await,
        Scenario::RandomCuts | Scenario::RandomCutsQuickReset => {
            proxied(Behavior::default().cut_randomly(cuts, 7)).await
        }
    }
}

async fn run(scenario: Scenario, keep: &mut Vec<(EchoServer, Front)>) -> Row {
    let budget = scenario.duration();
    let server = EchoServer::start(ServerConfig::default()).await;
    let front = start_front(scenario, &server).await;
    let url = match &front {
        Front::None => server.url(),
        Front::Proxy(proxy) => server.url_at(&proxy.url()),
        Front::Nginx(nginx) => nginx.url_to(&server.mount),
    };
    let outage_proxy = match (&front, scenario) {
        (Front::Proxy(proxy), Scenario::BadGatewayMidStream) => Some(proxy.clone()),
        _ => None,
    };

    let started = Instant::now();
    let connection = scenario
        .client(&url)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}: connect failed: {e}", scenario.describe()));
    let (sender, mut receiver) = connection.split();
    let sending = tokio::spawn({
        let sender = sender.clone();
        async move {
            for n in 0.. {
                if sender.send(numbered(n)).await.is_err() {
                    return;
                }
            }
        }
    });

    let mut first = None;
    let mut path = Vec::new();
    let mut echoed = 0u32;
    let mut reconnects = 0u32;
    let mut last_echo = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut until = Instant::now() + budget + Duration::from_secs(10);
    let mut outage_at = None;
    loop {
        let Ok(event) =
            tokio::time::timeout_at(tokio::time::Instant::from_std(until), receiver.next_event())
                .await
        else {
            break; // the time budget is spent
        };
        match event.expect("the connection ended") {
            Event::Message(message) => {
                assert_eq!(
                    number_of(&message),
                    echoed,
                    "{}: lost, duplicated or reordered",
                    scenario.describe()
                );
                let now = Instant::now();
                if first.is_none() {
                    first = Some(started.elapsed());
                    until = now + budget;
                    outage_at = outage_proxy
                        .as_ref()
                        .map(|_| now + Duration::from_millis(500));
                } else {
                    longest_gap = longest_gap.max(now - last_echo);
                }
                last_echo = now;
                echoed += 1;
                if outage_at.is_some_and(|at| now >= at)
                    && let Some(proxy) = &outage_proxy
                {
                    outage_at = None;
                    proxy.set(Behavior::default().error_page(502, PathFilter::Any));
                    proxy.cut_all();
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        proxy.set(Behavior::transparent());
                    });
                }
            }
            Event::Open { transport, .. } => path.push(transport),
            Event::TransportChanged { to, .. } => path.push(to),
            Event::Reconnecting { .. } => reconnects += 1,
            Event::Closed(closed) => panic!("{}: closed: {closed:?}", scenario.describe()),
            _ => {}
        }
    }
    let end = Instant::now();
    // A budget that ran out counts the wait at the end as a pause too.
    longest_gap = longest_gap.max(end - last_echo);
    let flowing = first
        .map(|first| end - (started + first))
        .unwrap_or_default();
    sending.abort();
    sender.close().await;
    keep.push((server, front));
    Row {
        scenario,
        first: first.unwrap_or_default(),
        path,
        reconnects,
        echoed,
        rate: f64::from(echoed.saturating_sub(1)) / flowing.as_secs_f64().max(1e-6),
        longest_gap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_report() {
    client_support::init_tracing();
    // Fails clearly before anything else if nginx is missing.
    nginx_support::nginx_binary();
    let mut keep = Vec::new();
    let mut rows = Vec::new();
    // `HOLDFAST_REPORT_ONLY=RandomCuts` (a variant name) runs one row.
    let only = std::env::var("HOLDFAST_REPORT_ONLY").ok();
    let chosen = Scenario::ALL
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| *o == format!("{s:?}")));
    for scenario in chosen {
        let row = run(scenario, &mut keep).await;
        println!(
            "{}: first echo after {:?}, {} echoes",
            scenario.describe(),
            row.first,
            row.echoed
        );
        rows.push(row);
    }
    let profile = if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    };
    println!(
        "\nDefault client and server settings, {profile}, {} cores:\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| network | connect() → first echo | transports | reconnects | echoed | messages/s each way | longest pause |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|");
    for row in &rows {
        let path = row
            .path
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" → ");
        println!(
            "| {} | {} ms | {path} | {} | {} | {:.0} | {} ms |",
            row.scenario.describe(),
            row.first.as_millis(),
            row.reconnects,
            row.echoed,
            row.rate,
            row.longest_gap.as_millis()
        );
    }
    // Printed, not asserted — beyond every scenario delivering something,
    // exactly, and the two clean paths being WebSocket.
    assert!(!rows.is_empty(), "no scenario named {only:?}");
    for row in &rows {
        assert!(
            row.echoed > 0,
            "{}: nothing echoed",
            row.scenario.describe()
        );
        if matches!(
            row.scenario,
            Scenario::Direct | Scenario::NginxWellConfigured
        ) {
            assert_eq!(row.path, [TransportKind::WebSocket]);
        }
    }
}
