//! Reconnect storm: `holdfast-bench storm <blip|restart> <transport> <N>…`.
//!
//! N real `holdfast-client` connections (so their backoff, jitter and
//! `Retry-After` handling are what is measured), in load processes on
//! CPU 1, each process's clients going through its own [`Relay`] that
//! spreads them over loopback source addresses. Then every connection
//! drops at once:
//! - `blip`: the relays reset every connection; the server lives, so the
//!   sessions resume;
//! - `restart`: the server is killed (`SIGKILL`) and started again on the
//!   same port, without a cluster store: the sessions are gone, each client
//!   learns it (`Closed` with `session_lost`) and opens a new one.
//!
//! Printed: the time until all are back, returns and reconnect attempts
//! per 100 ms, refusals (503 / 4503, with their `Retry-After`), the
//! server's CPU time and peak RSS meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use holdfast_client::{ClientBuilder, Connection, Event, TransportKind};
use tokio::sync::mpsc;

use crate::process::ServerProcess;
use crate::relay::Relay;
use crate::scale::{self, Target};
use crate::spread::{self, Commands, Sources, Worker};

/// How every connection drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Cut by the network; the server lives.
    Blip,
    /// The server killed and started again: the sessions are gone.
    Restart,
}

/// What a storm asks.
#[derive(Clone, Debug)]
pub struct Spec {
    /// How every connection drops.
    pub case: Case,
    /// The transport every client is forced onto.
    pub kind: TransportKind,
    /// Sessions.
    pub sessions: usize,
    /// Clients per source address (the server's open-rate limit counts
    /// per address: 1000 at once by default).
    pub per_addr: usize,
    /// How long to wait for every session to be back.
    pub deadline: Duration,
    /// The server's listen backlog, if not tokio's default (1024).
    pub backlog: Option<u32>,
    /// Load processes on any CPU instead of CPU 1 (the load side needs
    /// about three times the server's CPU per reconnect: relay, client
    /// handshake; on two cores it is what limits a large storm).
    pub unpinned: bool,
}

/// What a storm measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Sessions back (resumed, or reopened after a restart).
    pub back: usize,
    /// Clients that gave up.
    pub failed: usize,
    /// Why the first client that gave up did.
    pub first_failure: Option<String>,
    /// Returns of a session already back (it dropped again meanwhile).
    pub again: usize,
    /// Clients told their session was lost (restart: all of them).
    pub lost: usize,
    /// Return times, in µs after the drop.
    pub returns: Vec<u64>,
    /// Reconnect attempts as planned (event time + delay), µs after the
    /// drop.
    pub attempts: Vec<u64>,
    /// Why the reconnect attempts were needed (the client's reason), and
    /// how often.
    pub reasons: BTreeMap<String, usize>,
    /// Connections the kernel dropped because a listen queue was full
    /// (`TcpExtListenDrops`, the whole machine: server and relays).
    pub listen_drops: u64,
    /// Reconnect waits that followed a refusal (503 / 4503).
    pub refusals: usize,
    /// The longest wait a refusal imposed, in ms.
    pub longest_refusal_wait_ms: u64,
    /// First-attempt delays chosen by the clients' backoff, in ms.
    pub first_delays_ms: Vec<u64>,
    /// The server's CPU time from the drop until all were back.
    pub server_cpu_seconds: f64,
    /// The server's peak RSS meanwhile.
    pub server_peak_rss: u64,
    /// Load processes.
    pub processes: usize,
}

impl Outcome {
    /// Seconds from the drop until the last session was back.
    pub fn all_back_seconds(&self) -> f64 {
        self.returns.iter().max().copied().unwrap_or(0) as f64 / 1e6
    }
}

/// `holdfast-bench storm <blip|restart> <websocket|sse|long-poll> <N> [N2 …]
/// [--per-addr K] [--deadline S]`.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let usage = "usage: holdfast-bench storm <blip|restart> <websocket|sse|long-poll> <N> [N2 …] \
                 [--per-addr K] [--deadline SECONDS] [--backlog N] [--unpinned]";
    let Some(specs) = parse(args) else {
        eprintln!("{usage}");
        return std::process::ExitCode::from(2);
    };
    if specs.iter().all(|s| !s.unpinned) {
        crate::process::pin_self(1);
    }
    spread::raise_nofile();
    let Ok(runtime) = crate::process::one_worker_runtime() else {
        return std::process::ExitCode::FAILURE;
    };
    runtime.block_on(async {
        for spec in specs {
            match run(&spec).await {
                Ok(outcome) => print(&spec, &outcome),
                Err(e) => {
                    eprintln!("storm {:?} {} {}: {e}", spec.case, spec.kind, spec.sessions);
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        std::process::ExitCode::SUCCESS
    })
}

fn parse(args: &[String]) -> Option<Vec<Spec>> {
    let case = match args.first()?.as_str() {
        "blip" => Case::Blip,
        "restart" => Case::Restart,
        _ => return None,
    };
    let kind: TransportKind = args.get(1)?.parse().ok()?;
    let mut counts = Vec::new();
    let mut per_addr = None;
    let mut deadline = Duration::from_secs(300);
    let mut backlog = None;
    let mut unpinned = false;
    let mut it = args.get(2..)?.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--per-addr" => per_addr = Some(it.next()?.parse().ok().filter(|&k| k > 0)?),
            "--deadline" => deadline = Duration::from_secs(it.next()?.parse().ok()?),
            "--backlog" => backlog = Some(it.next()?.parse().ok()?),
            "--unpinned" => unpinned = true,
            n => counts.push(n.parse().ok().filter(|&n| n > 0)?),
        }
    }
    if counts.is_empty() {
        return None;
    }
    let specs = counts
        .into_iter()
        .map(|sessions| Spec {
            case,
            kind,
            sessions,
            per_addr: per_addr.unwrap_or(500),
            deadline,
            backlog,
            unpinned,
        })
        .collect();
    Some(specs)
}

/// Prints one storm's figures and its histogram.
pub fn print(spec: &Spec, o: &Outcome) {
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let (min_first, max_first) = (
        o.first_delays_ms.iter().min().copied().unwrap_or(0),
        o.first_delays_ms.iter().max().copied().unwrap_or(0),
    );
    println!(
        "storm {} {} sessions={} back={} again={} lost={} failed={} all_back_s={:.2} median_back_s={:.2} \
         attempts={} refusals={} longest_refusal_wait_ms={} first_delay_ms={}..{} \
         server_cpu_s={:.2} server_peak_rss_MiB={:.0} load_processes={}",
        match spec.case {
            Case::Blip => "blip",
            Case::Restart => "restart",
        },
        spec.kind,
        spec.sessions,
        o.back,
        o.again,
        o.lost,
        o.failed,
        o.all_back_seconds(),
        median(&o.returns) as f64 / 1e6,
        o.attempts.len(),
        o.refusals,
        o.longest_refusal_wait_ms,
        min_first,
        max_first,
        o.server_cpu_seconds,
        o.server_peak_rss as f64 / (1024.0 * 1024.0),
        o.processes,
    );
    println!("listen queue drops (whole machine): {}", o.listen_drops);
    if let Some(why) = &o.first_failure {
        println!("first client to give up: {why}");
    }
    let mut reasons: Vec<_> = o.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, n) in reasons.iter().take(6) {
        println!("  {n:>7} × {reason}");
    }
    print!("{}", histogram(&o.attempts, &o.returns, 100));
}

/// Attempts and returns per `bucket_ms`, one row per bucket that has any
/// (a gap of empty buckets is one `…` row), with a bar for the returns.
pub fn histogram(attempts: &[u64], returns: &[u64], bucket_ms: u64) -> String {
    let bucket = |us: &u64| us / 1000 / bucket_ms;
    let mut rows: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for a in attempts {
        rows.entry(bucket(a)).or_default().0 += 1;
    }
    for r in returns {
        rows.entry(bucket(r)).or_default().1 += 1;
    }
    let widest = rows.values().map(|r| r.1).max().unwrap_or(1).max(1);
    let mut out = format!("{:>9} {:>8} {:>8}\n", "ms", "attempts", "back");
    let mut last = None;
    for (b, (attempted, back)) in rows {
        if last.is_some_and(|l| b > l + 1) {
            out.push_str("        …\n");
        }
        last = Some(b);
        let bar = "#".repeat((back * 50).div_ceil(widest));
        out.push_str(&format!(
            "{:>9} {attempted:>8} {back:>8} {bar}\n",
            b * bucket_ms
        ));
    }
    out
}

/// File descriptors one client takes in a load process: its own socket(s)
/// and the relay's two per connection.
fn fds_per_client(kind: TransportKind) -> u64 {
    match kind {
        TransportKind::WebSocket => 3,
        // A stream or held poll, and now and then a second pooled
        // connection, each relayed.
        _ => 6,
    }
}

/// Runs one storm.
pub async fn run(spec: &Spec) -> Result<Outcome, String> {
    let target = Target::Holdfast(spec.kind);
    let server = scale::start_server_with(target, spec.sessions, &backlog_args(spec)).await?;
    if let Err(e) = scale::check_server_limit(&server, Target::Holdfast(spec.kind), spec.sessions) {
        server.stop().await;
        return Err(e);
    }
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
    let processes =
        spread::processes_for(spec.sessions as u64 * fds_per_client(spec.kind), hard) as usize;
    let mut workers = Vec::with_capacity(processes);
    let mut from = 0;
    for i in 0..processes {
        let count = spec.sessions / processes + usize::from(i < spec.sessions % processes);
        let args = [
            "storm-client".to_owned(),
            spec.kind.to_string(),
            server.addr.to_string(),
            count.to_string(),
            from.to_string(),
            spec.per_addr.to_string(),
        ];
        let cpu = (!spec.unpinned).then_some(1);
        match Worker::spawn(&args, cpu) {
            Ok(w) => workers.push(w),
            Err(e) => {
                server.stop().await;
                return Err(e);
            }
        }
        from += count;
    }
    let result = storm(spec, server, &mut workers).await;
    for worker in workers {
        worker.stop().await;
    }
    result.map(|mut o| {
        o.processes = processes;
        o
    })
}

async fn storm(
    spec: &Spec,
    mut server: ServerProcess,
    workers: &mut [Worker],
) -> Result<Outcome, String> {
    let opened = async {
        for w in workers.iter_mut() {
            w.expect("READY", Duration::from_secs(10)).await?;
            w.say("open").await?;
        }
        let mut total = 0;
        for w in workers.iter_mut() {
            total += w
                .expect("OPENED", Duration::from_secs(600))
                .await?
                .parse::<usize>()
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(total)
    }
    .await;
    match opened {
        Ok(n) if n == spec.sessions => {}
        Ok(n) => {
            server.stop().await;
            return Err(format!("{n} sessions opened, {} asked", spec.sessions));
        }
        Err(e) => {
            server.stop().await;
            return Err(e);
        }
    }
    // A moment for the last clients' attachments to settle (greetings
    // read, first acks sent) before the cut. Their backoff has never
    // failed, so each first retry waits attempt 0's delay (125–250 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in workers.iter_mut() {
        w.say("arm").await?;
    }
    let drops_before = listen_drops();
    let t0 = unix_us();
    let cpu_before;
    match spec.case {
        Case::Blip => {
            cpu_before = server.cpu_seconds();
            for w in workers.iter_mut() {
                w.say("cut").await?;
            }
        }
        Case::Restart => {
            let addr = server.addr;
            server.kill().await;
            let target = Target::Holdfast(spec.kind);
            let mut extra = backlog_args(spec);
            extra.extend(["--addr".to_owned(), addr.to_string()]);
            server = restart(target, spec.sessions, &extra).await?;
            cpu_before = 0.0;
        }
    }
    let mut outcome = Outcome::default();
    let workers_count = workers.len();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut done = 0;
    let readers: Vec<_> = workers
        .iter_mut()
        .map(|w| {
            let tx = tx.clone();
            async move {
                while let Some(line) = w.next_line().await {
                    let last = line.starts_with("DONE");
                    let _ = tx.send(line);
                    if last {
                        break;
                    }
                }
            }
        })
        .collect();
    drop(tx);
    let deadline = tokio::time::sleep(spec.deadline);
    tokio::pin!(deadline);
    let mut readers = std::pin::pin!(futures_util::future::join_all(readers));
    let mut sample = tokio::time::interval(Duration::from_millis(20));
    let mut readers_done = false;
    while done < workers_count {
        tokio::select! {
            line = rx.recv() => {
                let Some(line) = line else { break };
                if line.starts_with("DONE") {
                    done += 1;
                }
                take(&line, t0, &mut outcome);
            }
            _ = &mut readers, if !readers_done => readers_done = true,
            _ = sample.tick() => {
                outcome.server_peak_rss = outcome.server_peak_rss.max(server.rss_bytes());
            }
            () = &mut deadline => break,
        }
    }
    outcome.server_cpu_seconds = server.cpu_seconds() - cpu_before;
    outcome.listen_drops = listen_drops().saturating_sub(drops_before);
    outcome.server_peak_rss = outcome.server_peak_rss.max(server.rss_bytes());
    server.stop().await;
    if done < workers_count {
        return Err(format!(
            "after {:?}: {} of {} sessions back, {} failed",
            spec.deadline, outcome.back, spec.sessions, outcome.failed
        ));
    }
    Ok(outcome)
}

fn backlog_args(spec: &Spec) -> Vec<String> {
    spec.backlog
        .map(|b| vec!["--backlog".to_owned(), b.to_string()])
        .unwrap_or_default()
}

/// Starts the server again on its port (the old one's sockets may take a
/// moment to go).
async fn restart(
    target: Target,
    sessions: usize,
    extra: &[String],
) -> Result<ServerProcess, String> {
    let mut last = String::new();
    for _ in 0..50 {
        match scale::start_server_with(target, sessions, extra).await {
            Ok(server) => return Ok(server),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("the server did not start again: {last}"))
}

/// Reads one worker line into the outcome.
fn take(line: &str, t0: u64, o: &mut Outcome) {
    let mut parts = line.split_whitespace();
    let tag = parts.next().unwrap_or("");
    let mut num = || {
        parts
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match tag {
        "BACK" => {
            o.back += 1;
            o.returns.push(num().saturating_sub(t0));
        }
        "AGAIN" => o.again += 1,
        "LOST" => o.lost += 1,
        "FAILED" => {
            o.failed += 1;
            if o.first_failure.is_none() {
                let _ = num();
                o.first_failure = Some(parts.collect::<Vec<_>>().join(" "));
            }
        }
        "RC" => {
            let at = num().saturating_sub(t0);
            let attempt = num();
            let delay = num();
            let refused = num() == 1;
            let reason: Vec<&str> = parts.collect();
            *o.reasons.entry(reason.join(" ")).or_default() += 1;
            o.attempts.push(at + delay * 1000);
            if attempt == 1 {
                o.first_delays_ms.push(delay);
            }
            if refused {
                o.refusals += 1;
                o.longest_refusal_wait_ms = o.longest_refusal_wait_ms.max(delay);
            }
        }
        _ => {}
    }
}

/// `TcpExtListenDrops` from `/proc/net/netstat`: connections dropped by a
/// full accept queue, machine-wide.
fn listen_drops() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let names = names.split_whitespace();
        let values = values.split_whitespace();
        for (name, value) in names.zip(values) {
            if name == "ListenDrops" {
                return value.parse().unwrap_or(0);
            }
        }
    }
    0
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One client's report to the worker's printer, stamped (µs since the
/// epoch) by the client's task as it saw the event.
enum Report {
    Retry {
        attempt: u32,
        delay: Duration,
        refused: bool,
        reason: String,
    },
    Back,
    Lost,
    Failed(String),
}

/// `holdfast-bench storm-client <transport> <server> <count> <first>
/// <per_addr>`: a load process. `READY`; on `open` it opens `count`
/// clients through its relay and says `OPENED n`; on `arm` it starts
/// counting; on `cut` its relay cuts every connection. Once every client
/// is back (or gave up) after `arm`, it says `DONE`. Between, one line per
/// event: `RC <µs> <attempt> <delay ms> <refused 0|1>`, `BACK <µs>`
/// (`AGAIN <µs>` for a later return of the same client), `LOST <µs>`, `FAILED <µs> <why>`.
pub fn client_main(args: &[String]) -> std::process::ExitCode {
    let parsed = (|| {
        let kind: TransportKind = args.first()?.parse().ok()?;
        let server: SocketAddr = args.get(1)?.parse().ok()?;
        let count: usize = args.get(2)?.parse().ok()?;
        let first: usize = args.get(3)?.parse().ok()?;
        let per_addr: usize = args.get(4)?.parse().ok()?;
        Some((kind, server, count, first, per_addr))
    })();
    let Some((kind, server, count, first, per_addr)) = parsed else {
        eprintln!(
            "usage: holdfast-bench storm-client <transport> <server> <count> <first> <per_addr>"
        );
        return std::process::ExitCode::from(2);
    };
    let (soft, _) = spread::raise_nofile();
    let Ok(runtime) = crate::process::one_worker_runtime() else {
        return std::process::ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let needed = count as u64 * fds_per_client(kind) + spread::FD_RESERVE;
        if needed > soft {
            spread::report(&format!(
                "ERROR {count} clients need {needed} open files; this process may open {soft}"
            ));
            return std::process::ExitCode::FAILURE;
        }
        match client_run(kind, server, count, first, per_addr).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                spread::report(&format!("ERROR {e}"));
                std::process::ExitCode::FAILURE
            }
        }
    })
}

async fn client_run(
    kind: TransportKind,
    server: SocketAddr,
    count: usize,
    first: usize,
    per_addr: usize,
) -> Result<(), String> {
    let relay = Relay::start(server, Sources { per_addr }, first, count)
        .await
        .map_err(|e| format!("relay: {e}"))?;
    let url = format!("http://{}/realtime", relay.addr);
    let mut commands = Commands::stdin();
    spread::report("READY");
    if commands.next().await.as_deref() != Some("open") {
        return Ok(());
    }
    let results: Vec<Result<Connection, String>> = {
        use futures_util::StreamExt;
        futures_util::stream::iter(0..count)
            .map(|_| connect(&url, kind))
            .buffer_unordered(64)
            .collect()
            .await
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, u64, Report)>();
    let mut opened = 0;
    for (i, result) in results.into_iter().enumerate() {
        let connection = result?;
        opened += 1;
        tokio::spawn(follow(i, connection, url.clone(), kind, tx.clone()));
    }
    drop(tx);
    spread::report(&format!("OPENED {opened}"));
    // Events before `arm` (there should be none) are not the storm's.
    let mut armed = false;
    let mut back = vec![false; count];
    let mut settled = 0;
    loop {
        tokio::select! {
            command = commands.next() => match command.as_deref() {
                Some("arm") => armed = true,
                Some("cut") => relay.cut(),
                Some(_) => {}
                None => return Ok(()),
            },
            event = rx.recv() => {
                let Some((i, at, event)) = event else { return Ok(()) };
                if !armed {
                    continue;
                }
                match event {
                    Report::Retry { attempt, delay, refused, reason } => {
                        spread::report(&format!(
                            "RC {at} {attempt} {} {} {}",
                            delay.as_millis(),
                            u8::from(refused),
                            reason.escape_debug()
                        ));
                    }
                    Report::Back => {
                        if std::mem::replace(&mut back[i], true) {
                            // Back once already: dropped again meanwhile.
                            spread::report(&format!("AGAIN {at}"));
                        } else {
                            spread::report(&format!("BACK {at}"));
                            settled += 1;
                        }
                    }
                    Report::Lost => spread::report(&format!("LOST {at}")),
                    Report::Failed(why) => {
                        spread::report(&format!("FAILED {at} {}", why.escape_debug()));
                        if !std::mem::replace(&mut back[i], true) {
                            settled += 1;
                        }
                    }
                }
                if settled == count {
                    spread::report("DONE");
                    settled += 1;
                }
            }
        }
    }
}

async fn connect(url: &str, kind: TransportKind) -> Result<Connection, String> {
    ClientBuilder::new(url)
        .transport(kind)
        .proxy(holdfast_client::ProxyConfig::none())
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// Follows one client's events; reopens a session the server lost.
async fn follow(
    i: usize,
    mut connection: Connection,
    url: String,
    kind: TransportKind,
    tx: mpsc::UnboundedSender<(usize, u64, Report)>,
) {
    loop {
        let Some(event) = connection.next_event().await else {
            return;
        };
        let report = match event {
            Event::Reconnecting {
                attempt,
                delay,
                reason,
            } => Report::Retry {
                attempt,
                delay,
                refused: reason.contains("503"),
                reason,
            },
            Event::Resumed { .. } => Report::Back,
            Event::Closed(closed) => {
                let _ = tx.send((i, unix_us(), Report::Lost));
                if !closed.session_lost {
                    let why = format!("closed: {}", closed.reason);
                    let _ = tx.send((i, unix_us(), Report::Failed(why)));
                    return;
                }
                match connect(&url, kind).await {
                    Ok(fresh) => {
                        connection = fresh;
                        Report::Back
                    }
                    Err(e) => {
                        let _ = tx.send((i, unix_us(), Report::Failed(e)));
                        return;
                    }
                }
            }
            _ => continue,
        };
        if tx.send((i, unix_us(), report)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments() {
        let specs =
            parse(&args(&["blip", "websocket", "10", "20", "--per-addr", "5"])).expect("valid");
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].sessions, 20);
        assert_eq!(specs[0].per_addr, 5);
        assert!(parse(&args(&["flood", "websocket", "10"])).is_none());
        assert!(parse(&args(&["blip", "websocket"])).is_none());
        assert!(parse(&args(&["blip", "websocket", "0"])).is_none());
        assert!(parse(&args(&["blip", "websocket", "10", "--per-addr"])).is_none());
    }

    #[test]
    fn histogram_buckets_and_gaps() {
        let h = histogram(&[50_000, 150_000], &[120_000, 130_000, 950_000], 100);
        let lines: Vec<&str> = h.lines().collect();
        assert!(lines[1].starts_with("        0        1        0"));
        assert!(lines[2].starts_with("      100        1        2"));
        assert_eq!(lines[3].trim(), "…");
        assert!(lines[4].starts_with("      900        0        1"));
    }
}
