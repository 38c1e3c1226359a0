//! `holdfast-bench overload <websocket|sse|long-poll> <multiples> [options]`: open-loop load
//! at multiples of what the server can echo, to see what holdfast does when
//! offered more than it can carry.
//!
//! 1. **Capacity**: the closed-loop echo rate of the same server (same
//!    sessions, same size, a window of 8 messages in flight each), and of a
//!    raw tokio-tungstenite echo driven by the same load generator (how much
//!    the generator itself can drive: it must outpace the server).
//! 2. **Each multiple**, on a fresh server: the established sessions send
//!    at fixed rates adding up to `multiple × capacity` ([`ws`]); new
//!    sessions arrive at a steady rate, each sending a few messages and
//!    leaving, so that admission shows; the server's memory and `/stats`
//!    are sampled throughout ([`sampler`]).
//!
//! Every echo is checked for exactly-once delivery in order; the command
//! fails if any session saw a breach, and with `--quick` (what CI runs)
//! also unless every message was echoed and the refusals the clients saw
//! are the ones the server counted.

mod client;
mod report;
mod results;
pub mod sampler;
pub mod server;
pub mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::echo::{self, EchoSpec, Target};
use crate::process::{self, ServerProcess};
use crate::serve::ServerKind;
use crate::stats::Latencies;
use holdfast_client::TransportKind;

use self::report::{check, print_run, print_table};
use self::results::{RunResult, Tally};
use self::server::ServeOptions;
use self::ws::Outcome;

/// What an overload run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// `None`: WebSocket through the wire client ([`ws`]); otherwise
    /// `holdfast-client` forced onto this transport ([`client`]).
    pub transport: Option<TransportKind>,
    /// Offered load, as multiples of the measured capacity.
    pub multiples: Vec<f64>,
    /// Sessions open from the start, sharing the offered load.
    pub sessions: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// How long messages fall due.
    pub duration: Duration,
    /// Excluded from the achieved rate and from latencies.
    pub warmup: Duration,
    /// How long sessions wait for their last echoes after the load stops.
    pub drain: Duration,
    /// New sessions per second during the load.
    pub arrivals: f64,
    /// Messages each arriving session sends before it leaves.
    pub arrival_messages: u64,
    /// Skip the capacity measurement: this many echoes per second.
    pub capacity: Option<f64>,
    /// The server's settings.
    pub serve: ServeOptions,
    /// CI mode: tiny, and strict about what must have happened.
    pub quick: bool,
}

const USAGE: &str = "usage: holdfast-bench overload <websocket|sse|long-poll> <multiple[,multiple…]> \
    [--sessions N] [--size BYTES] [--seconds S] [--warmup-ms MS] [--drain-ms MS] \
    [--arrivals PER_S] [--arrival-messages N] [--capacity MSGS_PER_S] [--work-us US] \
    [--max-sessions N] [--max-buffered-bytes N] [--retry-after-ms MS] \
    [--open-lag-limit-ms MS (0: none)] [--quick]\n\
    --max-sessions defaults to sessions + 50; --quick: a few seconds at tiny scale (CI)";

impl Options {
    /// Reads the arguments after `overload`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut it = args.iter();
        let transport = match it.next().map(String::as_str) {
            Some("websocket") => None,
            Some(other) => Some(
                other
                    .parse::<TransportKind>()
                    .map_err(|_| format!("unknown transport {other:?}; {USAGE}"))?,
            ),
            None => return Err(USAGE.to_owned()),
        };
        let multiples = it
            .next()
            .ok_or(USAGE)?
            .split(',')
            .map(|m| m.parse::<f64>().ok().filter(|m| *m > 0.0 && m.is_finite()))
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| format!("multiples must be positive numbers; {USAGE}"))?;
        let mut options = Self {
            transport,
            multiples,
            sessions: 200,
            size: 64,
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(2),
            drain: Duration::from_secs(5),
            arrivals: 20.0,
            arrival_messages: 20,
            capacity: None,
            serve: ServeOptions::default(),
            quick: false,
        };
        let mut max_sessions = None;
        let mut serve_args = Vec::new();
        while let Some(flag) = it.next() {
            if flag == "--quick" {
                options.quick = true;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
            let number: f64 = value
                .parse()
                .ok()
                .filter(|n: &f64| *n >= 0.0 && n.is_finite())
                .ok_or_else(|| format!("{flag} {value:?}: not a number; {USAGE}"))?;
            match flag.as_str() {
                "--sessions" => options.sessions = number as usize,
                "--size" => options.size = number as usize,
                "--seconds" => options.duration = Duration::from_secs_f64(number),
                "--warmup-ms" => options.warmup = Duration::from_millis(number as u64),
                "--drain-ms" => options.drain = Duration::from_millis(number as u64),
                "--arrivals" => options.arrivals = number,
                "--arrival-messages" => options.arrival_messages = number as u64,
                "--capacity" => options.capacity = Some(number),
                "--max-sessions" => max_sessions = Some(number as usize),
                "--work-us"
                | "--max-buffered-bytes"
                | "--retry-after-ms"
                | "--open-lag-limit-ms" => {
                    serve_args.extend([flag.clone(), value.clone()]);
                }
                other => return Err(format!("unknown argument {other:?}; {USAGE}")),
            }
        }
        if options.quick {
            options.quick_defaults();
        }
        options.serve = ServeOptions::parse(&serve_args)?;
        if options.quick && !serve_args.iter().any(|a| a == "--work-us") {
            // At most 1000 echoes a second: 3 × 400 is overload.
            options.serve.work = Duration::from_millis(1);
        }
        options.serve.max_sessions = max_sessions.unwrap_or(if options.quick {
            // Every arrival finds the server full: refusals must show.
            options.sessions
        } else {
            options.sessions + 50
        });
        if options.sessions == 0 || options.size < 16 || options.duration <= options.warmup {
            return Err(format!(
                "need at least 1 session, --size 16 and --seconds longer than the warm-up; {USAGE}"
            ));
        }
        Ok(options)
    }

    /// `--quick`: a few seconds at tiny scale, every message drained.
    fn quick_defaults(&mut self) {
        self.sessions = 8;
        self.duration = Duration::from_secs(2);
        self.warmup = Duration::from_millis(500);
        self.drain = Duration::from_secs(20);
        self.arrivals = 10.0;
        self.arrival_messages = 5;
        self.capacity.get_or_insert(400.0);
    }
}

/// Runs the command; the exit code says whether the checks held.
pub fn main(args: &[String]) -> ExitCode {
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    process::pin_self(1);
    let runtime = match crate::process::one_worker_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_all(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("overload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `holdfast-bench overload-serve …`: the server child of the runs.
pub fn serve_main(args: &[String]) -> ExitCode {
    match ServeOptions::parse(args).and_then(|options| server::run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overload-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start_server(options: &ServeOptions) -> Result<ServerProcess, String> {
    let mut args = vec!["overload-serve".to_owned()];
    args.extend(options.to_args());
    ServerProcess::start_subcommand(&args, Some(0), "overload").await
}

/// Capacity, then each multiple; whether every check held.
async fn run_all(options: &Options) -> Result<bool, String> {
    let capacity = match options.capacity {
        Some(capacity) => capacity,
        None => measure_capacity(options).await?,
    };
    let mut results = Vec::new();
    for &multiple in &options.multiples {
        let result = run_one(options, capacity, multiple).await?;
        print_run(&result);
        results.push(result);
    }
    print_table(options, capacity, &results);
    Ok(check(options, &results))
}

/// Closed-loop echo rates: holdfast (the capacity) and the raw baseline.
async fn measure_capacity(options: &Options) -> Result<f64, String> {
    let spec = EchoSpec {
        clients: options.sessions,
        size: options.size,
        window: 8,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(3),
    };
    let server = start_server(&options.serve).await?;
    let target = options
        .transport
        .map_or(Target::HoldfastWire, Target::Holdfast);
    let result = echo::run(&server, target, spec).await;
    server.stop().await;
    let result = result?;
    let capacity = result.round_trips as f64 / result.seconds;
    let server_cpu = result.server_cpu_seconds / result.seconds;
    let raw = ServerProcess::start(ServerKind::RawWs, Some(0)).await?;
    let baseline = echo::run(&raw, Target::RawWs, spec).await;
    raw.stop().await;
    let baseline = baseline?;
    let raw_rate = baseline.round_trips as f64 / baseline.seconds;
    println!(
        "capacity: holdfast {} ({} sessions × {} B, window 8, work {} µs/msg) \
         {capacity:.0} echoes/s, server CPU {:.0} % of its core; raw tokio-tungstenite echo \
         (no work) {raw_rate:.0} echoes/s, server CPU {:.0} %",
        options
            .transport
            .map_or("websocket, wire client".to_owned(), |kind| format!(
                "{kind}, holdfast-client"
            )),
        options.sessions,
        options.size,
        options.serve.work.as_micros(),
        server_cpu * 100.0,
        baseline.server_cpu_seconds / baseline.seconds * 100.0,
    );
    Ok(capacity)
}

async fn run_one(options: &Options, capacity: f64, multiple: f64) -> Result<RunResult, String> {
    let server = Arc::new(start_server(&options.serve).await?);
    println!(
        "{multiple}×: server on CPU {}, load generator on CPU {}",
        server.cpus_allowed().unwrap_or_default(),
        process::cpus_allowed(std::process::id()).unwrap_or_default()
    );
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampling = tokio::spawn(sampler::run(server.clone(), stop_sampling.clone()));
    let offered = capacity * multiple;
    let rate = offered / options.sessions as f64;
    // A second for the sessions to open before the first message is due.
    let t0 = Instant::now() + Duration::from_secs(1);
    let stop = t0 + options.duration;
    let measure_from = t0 + options.warmup;
    let plan = ws::Plan {
        rate,
        size: options.size,
        start: t0,
        stop,
        limit: None,
        measure_from,
        latency_from: measure_from,
        give_up: stop + options.drain,
    };
    let addr = server.addr;
    let mut established = Vec::new();
    for i in 0..options.sessions {
        // Spread over one interval, so that the sessions do not send in step.
        let phase = Duration::from_secs_f64(i as f64 / options.sessions as f64 / rate);
        let plan = ws::Plan {
            start: t0 + phase,
            ..plan
        };
        established.push(tokio::spawn(session(addr, options.transport, plan)));
    }
    let arrivals = tokio::spawn(arrivals(addr, options.clone(), plan));
    let cpu = {
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let me = std::process::id();
            let before = (
                server.cpu_seconds(),
                process::cpu_seconds(me).unwrap_or(0.0),
            );
            tokio::time::sleep_until(stop.into()).await;
            let seconds = (stop - measure_from).as_secs_f64();
            (
                (server.cpu_seconds() - before.0) / seconds,
                (process::cpu_seconds(me).unwrap_or(0.0) - before.1) / seconds,
            )
        })
    };
    let mut result = RunResult {
        multiple,
        offered,
        achieved: 0.0,
        p50: 0.0,
        p99: 0.0,
        max_latency_us: 0.0,
        unechoed: 0,
        established: Tally::default(),
        arrivals: Tally::default(),
        samples: Vec::new(),
        final_stats: Default::default(),
        max_waiting: 0,
        server_cpu: 0.0,
        generator_cpu: 0.0,
    };
    let mut echoed_measured = 0;
    let mut latencies = Latencies::default();
    for task in established {
        let outcome = task.await.map_err(|e| e.to_string())?;
        result.established.add(&outcome);
        echoed_measured += outcome.echoed_measured;
        result.unechoed += outcome.unechoed_measured;
        result.max_waiting = result.max_waiting.max(outcome.max_waiting);
        result.max_latency_us = result
            .max_latency_us
            .max(outcome.max_latency.as_secs_f64() * 1e6);
        latencies.merge(outcome.latencies);
    }
    for outcome in arrivals.await.map_err(|e| e.to_string())? {
        result.arrivals.add(&outcome);
    }
    (result.server_cpu, result.generator_cpu) = cpu.await.map_err(|e| e.to_string())?;
    result.established.finish();
    result.arrivals.finish();
    result.achieved = echoed_measured as f64 / (stop - measure_from).as_secs_f64();
    [result.p50, result.p99, _] = latencies.percentiles();
    stop_sampling.store(true, Ordering::Relaxed);
    result.samples = sampling.await.map_err(|e| e.to_string())?;
    // The server may still be working through the backlog the sessions
    // left: wait for it to answer.
    result.final_stats =
        sampler::stats(&reqwest::Client::new(), &server, Duration::from_secs(30)).await;
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    Ok(result)
}

/// One session on the transport asked for.
async fn session(addr: SocketAddr, transport: Option<TransportKind>, plan: ws::Plan) -> Outcome {
    match transport {
        None => ws::run(addr, plan).await,
        Some(kind) => client::run(addr, kind, plan).await,
    }
}

/// New sessions at a steady rate while the load runs, each sending
/// `arrival_messages` at the established sessions' rate.
async fn arrivals(addr: SocketAddr, options: Options, plan: ws::Plan) -> Vec<Outcome> {
    let mut tasks = Vec::new();
    if options.arrivals > 0.0 {
        let every = Duration::from_secs_f64(1.0 / options.arrivals);
        let mut next = plan.start;
        while next < plan.stop {
            tokio::time::sleep_until(next.into()).await;
            let plan = ws::Plan {
                start: Instant::now(),
                limit: Some(options.arrival_messages),
                // Their latencies stay out of the established sessions'.
                latency_from: plan.give_up,
                ..plan
            };
            tasks.push(tokio::spawn(session(addr, options.transport, plan)));
            next += every;
        }
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let options = Options::parse(&args(&[
            "websocket",
            "1,1.5,3",
            "--sessions",
            "100",
            "--work-us",
            "40",
        ]))
        .unwrap();
        assert_eq!(options.multiples, vec![1.0, 1.5, 3.0]);
        assert_eq!(options.sessions, 100);
        assert_eq!(options.serve.work, Duration::from_micros(40));
        assert_eq!(options.serve.max_sessions, 150);
        let quick = Options::parse(&args(&["websocket", "1", "--quick"])).unwrap();
        assert_eq!(quick.serve.max_sessions, quick.sessions);
        let sse = Options::parse(&args(&["sse", "1.5"])).unwrap();
        assert_eq!(sse.transport, Some(TransportKind::Sse));
        assert!(Options::parse(&args(&["smoke-signals", "1"])).is_err());
        assert!(Options::parse(&args(&["websocket", "0"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1,x"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1", "--sessions"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1", "--bogus", "3"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1", "--seconds", "1"])).is_err());
    }
}
