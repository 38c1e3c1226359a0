//! `holdfast-bench overload websocket <multiples> [options]`: open-loop load
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
use holdfast_protocol::CloseCode;

use self::sampler::Sample;
use self::server::ServeOptions;
use self::ws::{Opening, Outcome};

/// What an overload run does.
#[derive(Clone, Debug)]
pub struct Options {
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

const USAGE: &str = "usage: holdfast-bench overload websocket <multiple[,multiple…]> \
    [--sessions N] [--size BYTES] [--seconds S] [--warmup-ms MS] [--drain-ms MS] \
    [--arrivals PER_S] [--arrival-messages N] [--capacity MSGS_PER_S] [--work-us US] \
    [--max-sessions N] [--max-buffered-bytes N] [--retry-after-ms MS] [--quick]\n\
    --max-sessions defaults to sessions + 50; --quick: a few seconds at tiny scale (CI)";

impl Options {
    /// Reads the arguments after `overload`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut it = args.iter();
        match it.next().map(String::as_str) {
            Some("websocket") => {}
            Some(other) => {
                return Err(format!(
                    "transport {other:?}: the overload run drives WebSocket only; {USAGE}"
                ));
            }
            None => return Err(USAGE.to_owned()),
        }
        let multiples = it
            .next()
            .ok_or(USAGE)?
            .split(',')
            .map(|m| m.parse::<f64>().ok().filter(|m| *m > 0.0 && m.is_finite()))
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| format!("multiples must be positive numbers; {USAGE}"))?;
        let mut options = Self {
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
                "--work-us" | "--max-buffered-bytes" | "--retry-after-ms" => {
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

/// What one multiple measured.
struct RunResult {
    multiple: f64,
    offered: f64,
    achieved: f64,
    /// p50 and p99 of the established sessions' latencies, µs.
    p50: f64,
    p99: f64,
    max_latency_us: f64,
    unechoed: u64,
    established: Tally,
    arrivals: Tally,
    samples: Vec<Sample>,
    final_stats: std::collections::BTreeMap<String, u64>,
    max_waiting: u64,
    /// The server's and the load generator's CPU use while measuring, in
    /// cores.
    server_cpu: f64,
    generator_cpu: f64,
}

/// Sessions of one kind, counted by how they went.
#[derive(Default)]
struct Tally {
    admitted: u64,
    refused_4503: u64,
    other: u64,
    connect_failed: u64,
    timed_out: u64,
    ended_by_server: u64,
    /// The codes those sessions were ended with, and how many each.
    end_codes: std::collections::BTreeMap<String, u64>,
    due: u64,
    echoed: u64,
    violations: u64,
    first_violation: Option<String>,
    open_times: Latencies,
    /// p50 and p99 of `open_times`, µs (filled by [`Tally::finish`]).
    open_percentiles: [f64; 2],
}

impl Tally {
    fn add(&mut self, outcome: &Outcome) {
        match &outcome.opening {
            Opening::Admitted(took) => {
                self.admitted += 1;
                self.open_times.record(*took);
            }
            Opening::Refused { .. } => self.refused_4503 += 1,
            Opening::Other(_) => self.other += 1,
            Opening::ConnectFailed => self.connect_failed += 1,
            Opening::TimedOut => self.timed_out += 1,
        }
        if let Some(code) = outcome
            .ended_by_server
            .filter(|code| *code != CloseCode::NORMAL.0)
        {
            self.ended_by_server += 1;
            let kind = if outcome.detached { "detach" } else { "close" };
            *self.end_codes.entry(format!("{kind} {code}")).or_default() += 1;
        }
        self.due += outcome.due;
        self.echoed += outcome.echoed;
        self.violations += outcome.violations;
        if self.first_violation.is_none() {
            self.first_violation.clone_from(&outcome.first_violation);
        }
    }

    fn finish(&mut self) {
        let [p50, p99, _] = self.open_times.percentiles();
        self.open_percentiles = [p50, p99];
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
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
    let result = echo::run(&server, Target::HoldfastWire, spec).await;
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
        "capacity: holdfast websocket (wire client, {} sessions × {} B, window 8, work {} µs/msg) \
         {capacity:.0} echoes/s, server CPU {:.0} % of its core; raw tokio-tungstenite echo \
         (no work) {raw_rate:.0} echoes/s, server CPU {:.0} %",
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
        established.push(tokio::spawn(ws::run(addr, plan)));
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
            tasks.push(tokio::spawn(ws::run(addr, plan)));
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_run(r: &RunResult) {
    let (p50, p99) = (r.p50, r.p99);
    println!(
        "{:.2}×: offered {:.0}/s, echoed {:.0}/s, server CPU {:.0} % (generator {:.0} %), admitted p50 {:.1} ms p99 {:.1} ms max {:.1} ms \
         ({} measured messages not echoed by the end)",
        r.multiple,
        r.offered,
        r.achieved,
        r.server_cpu * 100.0,
        r.generator_cpu * 100.0,
        p50 / 1000.0,
        p99 / 1000.0,
        r.max_latency_us / 1000.0,
        r.unechoed
    );
    print!("  server RSS MiB over time:");
    for sample in r.samples.iter().step_by(4) {
        // `?`: `/stats` did not answer in time (the server is saturated).
        let buffered = sample
            .stats
            .get("buffered_bytes")
            .map_or("?".to_owned(), |b| format!("{:.0}", mib(*b)));
        print!(" {:.0}s:{:.0}/{buffered}", sample.at, mib(sample.rss));
    }
    println!(" (rss/buffered)");
    for (name, tally) in [("established", &r.established), ("arrivals", &r.arrivals)] {
        let [open_p50, open_p99] = tally.open_percentiles;
        println!(
            "  {name}: admitted {} (open p50 {:.1} ms p99 {:.1} ms), 4503 {}, other refusals {}, \
             connect failed {}, timed out {}, ended by the server {} {:?}; due {}, echoed {}, \
             exactly-once breaches {}{}",
            tally.admitted,
            open_p50 / 1000.0,
            open_p99 / 1000.0,
            tally.refused_4503,
            tally.other,
            tally.connect_failed,
            tally.timed_out,
            tally.ended_by_server,
            tally.end_codes,
            tally.due,
            tally.echoed,
            tally.violations,
            tally
                .first_violation
                .as_deref()
                .map(|v| format!(" (first: {v})"))
                .unwrap_or_default(),
        );
    }
    let rejected: Vec<String> = r
        .final_stats
        .iter()
        .filter(|(name, _)| name.starts_with("rejected_"))
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    println!(
        "  server counted: {}; most messages waiting in one client for window room: {}",
        if rejected.is_empty() {
            "no refusals".to_owned()
        } else {
            rejected.join(", ")
        },
        r.max_waiting
    );
}

fn print_table(options: &Options, capacity: f64, results: &[RunResult]) {
    println!();
    println!(
        "| load | offered/s | echoed/s | server CPU | p50 ms | p99 ms | max ms | not echoed | peak RSS MiB | final RSS MiB | peak buffered MiB | arrivals admitted / 4503 | breaches |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in results {
        let (p50, p99) = (r.p50, r.p99);
        let peak = r.samples.iter().map(|s| s.rss).max().unwrap_or(0);
        let last = r.samples.last().map_or(0, |s| s.rss);
        // `/stats` waits in line with everything else: when it mostly did
        // not answer, its peak says nothing.
        let answered: Vec<u64> = r
            .samples
            .iter()
            .filter_map(|s| s.stats.get("buffered_bytes").copied())
            .collect();
        let buffered = if answered.len() * 2 >= r.samples.len() {
            format!("{:.1}", mib(answered.iter().copied().max().unwrap_or(0)))
        } else {
            "?".to_owned()
        };
        println!(
            "| {:.1}× | {:.0} | {:.0} | {:.0} % | {:.1} | {:.1} | {:.0} | {} | {:.0} | {:.0} | {} | {} / {} | {} |",
            r.multiple,
            r.offered,
            r.achieved,
            r.server_cpu * 100.0,
            p50 / 1000.0,
            p99 / 1000.0,
            r.max_latency_us / 1000.0,
            r.unechoed,
            mib(peak),
            mib(last),
            buffered,
            r.arrivals.admitted,
            r.arrivals.refused_4503,
            r.established.violations + r.arrivals.violations,
        );
    }
    println!(
        "\ncapacity {capacity:.0} echoes/s; {} sessions × {} B, {:?} per run ({:?} warm-up), \
         {} arrivals/s of {} messages each, server: work {} µs/msg, max_sessions {}, \
         max_buffered_bytes {}",
        options.sessions,
        options.size,
        options.duration,
        options.warmup,
        options.arrivals,
        options.arrival_messages,
        options.serve.work.as_micros(),
        options.serve.max_sessions,
        options.serve.max_buffered_bytes,
    );
}

/// Whether the run held: no breach of exactly-once anywhere; with
/// `--quick`, also every message echoed, every established session
/// admitted, and the arrivals' refusals seen by the clients equal to those
/// the server counted.
fn check(options: &Options, results: &[RunResult]) -> bool {
    let mut ok = true;
    for r in results {
        let breaches = r.established.violations + r.arrivals.violations;
        if breaches > 0 {
            eprintln!(
                "FAIL {:.1}×: {breaches} breaches of exactly-once",
                r.multiple
            );
            ok = false;
        }
        if !options.quick {
            continue;
        }
        let counted = r
            .final_stats
            .get("rejected_too_many_sessions")
            .copied()
            .unwrap_or(0);
        let expectations = [
            (
                r.established.admitted == options.sessions as u64,
                "every established session admitted",
            ),
            (
                r.established.echoed == r.established.due && r.established.due > 0,
                "every message of the established sessions echoed",
            ),
            // An opening the client gave up on may still have been refused
            // (and counted) by the server later: the server's count lies
            // between what the clients saw and that plus what they gave up.
            (
                r.arrivals.refused_4503 <= counted
                    && counted <= r.arrivals.refused_4503 + r.arrivals.timed_out + r.arrivals.other,
                "the server counted each refusal the clients saw, and no more",
            ),
        ];
        for (held, what) in expectations {
            if !held {
                eprintln!("FAIL {:.1}×: expected {what}", r.multiple);
                ok = false;
            }
        }
    }
    let refused: u64 = results.iter().map(|r| r.arrivals.refused_4503).sum();
    if options.quick && refused == 0 {
        eprintln!("FAIL: no arrival was refused with 4503");
        ok = false;
    }
    if ok {
        println!(
            "OVERLOAD CHECKS HELD: {} runs, exactly-once in every session",
            results.len()
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn result(violations: u64, refused: u64, counted: u64) -> RunResult {
        let mut final_stats = std::collections::BTreeMap::new();
        final_stats.insert("rejected_too_many_sessions".to_owned(), counted);
        RunResult {
            multiple: 3.0,
            offered: 1800.0,
            achieved: 1000.0,
            p50: 0.0,
            p99: 0.0,
            max_latency_us: 0.0,
            unechoed: 0,
            established: Tally {
                admitted: 8,
                due: 100,
                echoed: 100,
                violations,
                ..Tally::default()
            },
            arrivals: Tally {
                refused_4503: refused,
                ..Tally::default()
            },
            samples: Vec::new(),
            final_stats,
            max_waiting: 0,
            server_cpu: 0.0,
            generator_cpu: 0.0,
        }
    }

    #[test]
    fn the_checks_fail_on_a_breach_or_uncounted_refusals() {
        let quick = Options::parse(&args(&["websocket", "1", "--quick"])).unwrap();
        assert!(check(&quick, &[result(0, 5, 5)]));
        assert!(
            !check(&quick, &[result(1, 5, 5)]),
            "a breach of exactly-once"
        );
        assert!(
            !check(&quick, &[result(0, 5, 4)]),
            "a refusal the server missed"
        );
        assert!(
            !check(&quick, &[result(0, 5, 6)]),
            "a refusal no client saw"
        );
        assert!(!check(&quick, &[result(0, 0, 0)]), "no refusal at all");
        assert!(check(&quick, &[result(0, 0, 0), result(0, 3, 3)]));
        let mut lost = result(0, 5, 5);
        lost.established.echoed -= 1;
        assert!(!check(&quick, &[lost]), "a message never echoed");
        // Outside CI mode only exactly-once is required.
        let full = Options::parse(&args(&["websocket", "1"])).unwrap();
        assert!(check(&full, &[result(0, 0, 0)]));
        assert!(!check(&full, &[result(2, 0, 0)]));
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
        assert!(Options::parse(&args(&["sse", "1"])).is_err());
        assert!(Options::parse(&args(&["websocket", "0"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1,x"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1", "--sessions"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1", "--bogus", "3"])).is_err());
        assert!(Options::parse(&args(&["websocket", "1", "--seconds", "1"])).is_err());
    }
}
