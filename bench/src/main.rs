//! `holdfast-bench`: how fast holdfast is, side by side with a raw
//! tokio-tungstenite echo, in one run on one machine.
//!
//! ```text
//! cargo run --release -p holdfast-bench              # the full table (a few minutes)
//! cargo run --release -p holdfast-bench -- --quick   # seconds: proves the tool works (CI)
//! cargo run --release -p holdfast-bench -- --json results.jsonl
//! cargo run --release -p holdfast-bench -- --only echo --metrics   # servers record metrics
//! cargo run --release -p holdfast-bench -- scale websocket 1000 10000   # many idle sessions
//! cargo run --release -p holdfast-bench -- storm blip sse 5000          # reconnect storm
//! ```
//!
//! Each server runs as a child process pinned to CPU 0, the load generator
//! on CPU 1; the figure that compares fairly on 2 cores is the server's CPU
//! time per message, read from `/proc/<pid>/stat` over the measured period.
//! Every run prints one JSON line; a Markdown table with the ratios to the
//! baseline comes last.

mod cluster;
mod echo;
mod fanout;
mod h2c;
mod idle;
mod overload;
mod process;
mod recorder;
mod relay;
mod report;
mod resume;
mod scale;
mod serve;
mod spread;
mod stats;
mod storm;
mod topics;

use std::process::ExitCode;
use std::time::Duration;

use holdfast_client::TransportKind;

use crate::echo::{EchoSpec, Target};
use crate::process::ServerProcess;
use crate::report::{Report, Row};
use crate::serve::ServerKind;

/// How big a run is.
struct Plan {
    warmup: Duration,
    duration: Duration,
    client_counts: Vec<usize>,
    sizes: Vec<usize>,
    windows: Vec<usize>,
    idle_sessions: usize,
    fanout_subscribers: usize,
    fanout_messages: usize,
    resume_messages: u64,
    topics: topics::TopicsSpec,
}

impl Plan {
    fn full() -> Self {
        Self {
            warmup: Duration::from_millis(500),
            duration: Duration::from_secs(3),
            client_counts: vec![1, 100],
            sizes: vec![64, 4096],
            windows: vec![1, 8],
            idle_sessions: 10_000,
            fanout_subscribers: 1000,
            fanout_messages: 200,
            resume_messages: 1000,
            topics: topics::TopicsSpec {
                subscribers: 1000,
                messages: 200,
                window: 8,
            },
        }
    }

    fn quick() -> Self {
        Self {
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            client_counts: vec![1, 10],
            sizes: vec![64],
            windows: vec![1, 4],
            idle_sessions: 200,
            fanout_subscribers: 20,
            fanout_messages: 20,
            resume_messages: 100,
            topics: topics::TopicsSpec {
                subscribers: 12,
                messages: 20,
                window: 4,
            },
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        let result = serve::Options::parse(&args[1..]).and_then(|options| serve::run(&options));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serve: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) == Some("overload") {
        return overload::main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("overload-serve") {
        return overload::serve_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("load") {
        return load(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("idle-only") {
        return idle_only(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("idle-rss") {
        return idle_rss(&args[1..]);
    }
    match args.first().map(String::as_str) {
        Some("scale") => return scale::main(&args[1..]),
        Some("scale-client") => return scale::client_main(&args[1..]),
        Some("storm") => return storm::main(&args[1..]),
        Some("storm-client") => return storm::client_main(&args[1..]),
        _ => {}
    }
    let mut plan = Plan::full();
    let mut json_path = None;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => plan = Plan::quick(),
            "--json" => json_path = it.next(),
            "--only" => only = it.next().map(|s| s.split(',').map(str::to_owned).collect()),
            "--metrics" => recorder::enable(),
            "-h" | "--help" => {
                println!(
                    "usage: holdfast-bench [--quick] [--json FILE] [--only echo,fanout,idle,resume,cluster,topics] [--metrics]\n\
                     --metrics: every holdfast server under test records its metrics into a Prometheus recorder"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                return ExitCode::from(2);
            }
        }
    }
    let wants = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    if recorder::enabled() {
        eprintln!("--metrics: every holdfast server under test records into a Prometheus recorder");
    }

    process::pin_self(1);
    let runtime = match crate::process::one_worker_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = Report::new(json_path);
    let result = runtime.block_on(async {
        if wants("echo") {
            echo_runs(&plan, &mut report).await?;
        }
        if wants("fanout") {
            fanout_run(&plan, &mut report).await?;
        }
        if wants("idle") {
            idle_runs(&plan, &mut report).await?;
        }
        if wants("resume") {
            resume_runs(&plan, &mut report).await?;
        }
        if wants("cluster") {
            let spec = EchoSpec {
                clients: 1,
                size: 64,
                window: 8,
                warmup: plan.warmup,
                duration: plan.duration,
            };
            cluster::echo_costs(spec).await?;
        }
        if wants("topics") {
            for result in topics::runs(plan.topics).await? {
                report.add(Row::topics(result));
            }
        }
        Ok::<_, String>(())
    });
    report.print_tables();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `holdfast-bench load <raw|websocket|sse|long-poll> <addr> <clients>
/// <window> <size> <seconds>`: echo load against a server started by hand
/// (`holdfast-bench serve holdfast`), for profiling it (`perf record -p`).
fn load(args: &[String]) -> ExitCode {
    let usage = "usage: holdfast-bench load <raw|websocket|sse|long-poll> <addr> <clients> <window> <size> <seconds>";
    let parsed = (|| {
        let target = match args.first()?.as_str() {
            "raw" => Target::RawWs,
            other => Target::Holdfast(other.parse().ok()?),
        };
        let addr: std::net::SocketAddr = args.get(1)?.parse().ok()?;
        let number = |i: usize| args.get(i)?.parse::<u64>().ok();
        let spec = EchoSpec {
            clients: number(2)? as usize,
            window: number(3)? as usize,
            size: number(4)? as usize,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(number(5)?),
        };
        Some((target, addr, spec))
    })();
    let Some((target, addr, spec)) = parsed else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    let server = ServerProcess::external(addr);
    match runtime.block_on(echo::run(&server, target, spec)) {
        Ok(mut result) => {
            let [p50, p99, _] = result.latencies.percentiles();
            println!(
                "{} round trips, {:.0}/s, p50 {p50} µs, p99 {p99} µs",
                result.round_trips,
                result.round_trips as f64 / result.seconds
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `holdfast-bench idle-only <transport> <addr> <sessions>`: opens idle
/// sessions against a server started by hand and holds them for 3 s, for
/// heap profiling (`valgrind --tool=massif`).
fn idle_only(args: &[String]) -> ExitCode {
    let parsed = (|| {
        let kind: TransportKind = args.first()?.parse().ok()?;
        let addr: std::net::SocketAddr = args.get(1)?.parse().ok()?;
        let sessions: usize = args.get(2)?.parse().ok()?;
        let send = send_flag(args.get(3..)?)?;
        Some((kind, addr, sessions, send))
    })();
    let Some((kind, addr, sessions, send)) = parsed else {
        eprintln!(
            "usage: holdfast-bench idle-only <websocket|sse|long-poll> <addr> <sessions> [--send-conn|--h2c|--h2c-shared N]"
        );
        return ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        match idle::hold(addr, kind, sessions, Duration::from_secs(3), send).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `--send-conn`: each fallback client also holds a kept-alive send
/// connection that has answered one `POST …/send`, as the real clients do.
/// `--h2c`: stream or held poll and the send on one h2c connection per
/// client; `--h2c-shared N`: N clients to one h2c connection, as a proxy
/// speaking h2c to its upstream would carry them.
fn send_flag(rest: &[String]) -> Option<idle::SendConn> {
    match rest {
        [] => Some(idle::SendConn::None),
        [flag] if flag == "--send-conn" => Some(idle::SendConn::KeptAlive),
        [flag] if flag == "--h2c" => Some(idle::SendConn::H2c),
        [flag, n] if flag == "--h2c-shared" => n.parse().ok().map(idle::SendConn::H2cShared),
        _ => None,
    }
}

/// `holdfast-bench idle-rss <transport> <sessions> [--send-conn]`: starts
/// the holdfast server (pinned to core 0), warms it with 200 sessions, opens
/// `sessions` more and prints the server's RSS growth per session.
fn idle_rss(args: &[String]) -> ExitCode {
    let parsed = (|| {
        let kind: TransportKind = args.first()?.parse().ok()?;
        let sessions: usize = args.get(1)?.parse().ok()?;
        let send = send_flag(args.get(2..)?)?;
        Some((kind, sessions, send))
    })();
    let Some((kind, sessions, send)) = parsed else {
        eprintln!(
            "usage: holdfast-bench idle-rss <websocket|sse|long-poll> <sessions> [--send-conn|--h2c|--h2c-shared N]"
        );
        return ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let extra = if matches!(send, idle::SendConn::H2c | idle::SendConn::H2cShared(_)) {
            vec!["--h2c".to_owned()]
        } else {
            Vec::new()
        };
        let server = match ServerProcess::start_with(ServerKind::Holdfast, Some(0), &extra).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let result = idle::run_with(&server, kind, sessions, send).await;
        server.stop().await;
        match result {
            Ok(result) => {
                println!(
                    "{kind:?} sessions={} send_conn={} h2c={} KiB/session={:.1}",
                    result.sessions,
                    send != idle::SendConn::None,
                    match send {
                        idle::SendConn::H2c => "1 session per connection".to_owned(),
                        idle::SendConn::H2cShared(n) => format!("{n} sessions per connection"),
                        _ => "no".to_owned(),
                    },
                    result.bytes_per_session / 1024.0
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

const TRANSPORTS: [TransportKind; 3] = TransportKind::ALL;

async fn echo_runs(plan: &Plan, report: &mut Report) -> Result<(), String> {
    for &window in &plan.windows {
        for &clients in &plan.client_counts {
            for &size in &plan.sizes {
                let spec = EchoSpec {
                    clients,
                    size,
                    window,
                    warmup: plan.warmup,
                    duration: plan.duration,
                };
                let mut targets = vec![Target::RawWs, Target::HoldfastWire];
                targets.extend(TRANSPORTS.map(Target::Holdfast));
                for target in targets {
                    let kind = match target {
                        Target::RawWs => ServerKind::RawWs,
                        Target::Holdfast(_) | Target::HoldfastWire => ServerKind::Holdfast,
                    };
                    let server = ServerProcess::start(kind, Some(0)).await?;
                    let mut result = echo::run(&server, target, spec).await;
                    server.stop().await;
                    let result = result.as_mut().map_err(|e| e.clone())?;
                    report.add(Row::echo(target, spec, result));
                }
            }
        }
    }
    Ok(())
}

async fn fanout_run(plan: &Plan, report: &mut Report) -> Result<(), String> {
    let server = ServerProcess::start(ServerKind::Holdfast, Some(0)).await?;
    let result = fanout::run(&server, plan.fanout_subscribers, plan.fanout_messages).await;
    server.stop().await;
    report.add(Row::fanout(result?));
    Ok(())
}

async fn idle_runs(plan: &Plan, report: &mut Report) -> Result<(), String> {
    for kind in TRANSPORTS {
        let server = ServerProcess::start(ServerKind::Holdfast, Some(0)).await?;
        let result = idle::run(&server, kind, plan.idle_sessions).await;
        server.stop().await;
        report.add(Row::idle(kind, result?));
    }
    Ok(())
}

async fn resume_runs(plan: &Plan, report: &mut Report) -> Result<(), String> {
    for kind in TRANSPORTS {
        let server = ServerProcess::start(ServerKind::Holdfast, Some(0)).await?;
        let result = resume::run(&server, kind, plan.resume_messages).await;
        server.stop().await;
        report.add(Row::resume(kind, plan.resume_messages, result?));
    }
    Ok(())
}
