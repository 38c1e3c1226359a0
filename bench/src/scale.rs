//! Many idle sessions on one box: `holdfast-bench scale <transport> <N>…`.
//!
//! For each N, a fresh server (`serve holdfast --stock`: the defaults a
//! user gets, only the limits the README names raised when N needs them),
//! warmed with 200 sessions; then N idle sessions opened by minimal raw
//! clients, spread over loopback source addresses and over as many load
//! processes as the open-files limit asks. Printed: the server's RSS
//! growth per session, sessions opened per second, the time to open them
//! all, the server's CPU time spent opening them, and the load side's RSS.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use holdfast_client::TransportKind;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::idle::{extract_key, read_until, send_once};
use crate::process::ServerProcess;
use crate::serve::ServerKind;
use crate::spread::{self, Commands, Sources, Worker};

/// What a scale run opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A raw tokio-tungstenite WebSocket to `serve raw-ws`: the floor.
    Raw,
    /// A holdfast session; SSE and long-poll clients also hold their
    /// kept-alive send connection, as the real clients do.
    Holdfast(TransportKind),
}

impl Target {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(Self::Raw),
            other => other.parse().ok().map(Self::Holdfast),
        }
    }

    fn arg(self) -> String {
        match self {
            Self::Raw => "raw".into(),
            Self::Holdfast(kind) => kind.to_string(),
        }
    }

    /// Connections one idle session holds on the server.
    pub fn connections(self) -> u64 {
        match self {
            Self::Raw | Self::Holdfast(TransportKind::WebSocket) => 1,
            Self::Holdfast(_) => 2,
        }
    }
}

/// Sessions per source address: below the server's default per-address
/// burst (1000), so the open-rate limit never refuses the load.
const PER_ADDR: usize = 500;
/// Sessions a load process opens at once.
const IN_FLIGHT: usize = 128;
/// The warm-up before the baseline is read.
const WARM: usize = 200;

/// One step's figures.
#[derive(Debug)]
pub struct Step {
    /// Sessions opened and held.
    pub sessions: usize,
    /// Server RSS growth per session over the warmed baseline.
    pub bytes_per_session: f64,
    /// Sessions opened per second.
    pub per_second: f64,
    /// From "go" to the last session open.
    pub open_seconds: f64,
    /// Server CPU (user + system) over the same period.
    pub server_cpu_seconds: f64,
    /// Connections the server held at the RSS reading.
    pub server_fds: usize,
    /// The load processes' RSS, summed.
    pub load_rss: u64,
    /// How many load processes held them.
    pub processes: u64,
}

/// `holdfast-bench scale <raw|websocket|sse|long-poll> <N> [N2 …]`.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let parsed = (|| {
        let target = Target::parse(args.first()?)?;
        let counts: Option<Vec<usize>> = args.get(1..)?.iter().map(|a| a.parse().ok()).collect();
        let counts = counts.filter(|c| !c.is_empty() && c.iter().all(|&n| n > 0))?;
        Some((target, counts))
    })();
    let Some((target, counts)) = parsed else {
        eprintln!("usage: holdfast-bench scale <raw|websocket|sse|long-poll> <N> [N2 …]");
        return std::process::ExitCode::from(2);
    };
    crate::process::pin_self(1);
    let (_, hard) = spread::raise_nofile();
    let Ok(runtime) = crate::process::one_worker_runtime() else {
        return std::process::ExitCode::FAILURE;
    };
    runtime.block_on(async {
        for n in counts {
            match step(target, n, hard).await {
                Ok(s) => print_step(target, &s),
                Err(e) => {
                    eprintln!("scale {} {n}: {e}", target.arg());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        std::process::ExitCode::SUCCESS
    })
}

fn print_step(target: Target, s: &Step) {
    println!(
        "{} sessions={} KiB/session={:.1} opened/s={:.0} open_s={:.2} server_cpu_s={:.2} \
         server_cpu_us/session={:.0} server_fds={} load_processes={} load_rss_MiB={:.0}",
        target.arg(),
        s.sessions,
        s.bytes_per_session / 1024.0,
        s.per_second,
        s.open_seconds,
        s.server_cpu_seconds,
        s.server_cpu_seconds * 1e6 / s.sessions as f64,
        s.server_fds,
        s.processes,
        s.load_rss as f64 / (1024.0 * 1024.0)
    );
}

/// Starts the server for `target`, able to hold `sessions` with the
/// limits a user would set (`--max-connections`/`--max-sessions` only past
/// the defaults, 100 000 each).
pub async fn start_server(target: Target, sessions: usize) -> Result<ServerProcess, String> {
    start_server_with(target, sessions, &[]).await
}

/// [`start_server`] with more `serve` arguments (`--addr`).
pub async fn start_server_with(
    target: Target,
    sessions: usize,
    more: &[String],
) -> Result<ServerProcess, String> {
    let (kind, mut extra) = match target {
        Target::Raw => (ServerKind::RawWs, vec![]),
        Target::Holdfast(_) => (ServerKind::Holdfast, vec!["--stock".to_owned()]),
    };
    let connections = (sessions + WARM) as u64 * target.connections();
    if target != Target::Raw && connections > 100_000 {
        extra.extend(["--max-connections".into(), (connections + 1000).to_string()]);
    }
    if target != Target::Raw && sessions + WARM > 100_000 {
        extra.extend(["--max-sessions".into(), (sessions + WARM).to_string()]);
    }
    extra.extend_from_slice(more);
    ServerProcess::start_with(kind, Some(0), &extra).await
}

/// Refuses `sessions` when the server process cannot hold them, naming
/// the limit.
pub fn check_server_limit(
    server: &ServerProcess,
    target: Target,
    sessions: usize,
) -> Result<(), String> {
    let limit = spread::nofile_of(server.pid()).unwrap_or(0);
    let needed = (sessions + WARM) as u64 * target.connections() + spread::FD_RESERVE;
    if needed > limit {
        let fits = limit.saturating_sub(spread::FD_RESERVE) / target.connections();
        return Err(format!(
            "the server's open-files limit (RLIMIT_NOFILE, raised to its hard limit: {limit}) \
             holds about {} {} sessions ({} connection(s) each, plus {WARM} warm-up); {sessions} \
             need {needed}. Raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE=, \
             /etc/security/limits.conf) or ask for fewer.",
            fits.saturating_sub(WARM as u64),
            target.arg(),
            target.connections()
        ));
    }
    Ok(())
}

async fn step(target: Target, sessions: usize, hard: u64) -> Result<Step, String> {
    let server = start_server(target, sessions).await?;
    let result = step_on(&server, target, sessions, hard).await;
    server.stop().await;
    result
}

async fn step_on(
    server: &ServerProcess,
    target: Target,
    sessions: usize,
    hard: u64,
) -> Result<Step, String> {
    check_server_limit(server, target, sessions)?;
    // The warm-up's own load process, on the first addresses.
    let mut warm = spawn_workers(server.addr, target, WARM, 0, hard).await?;
    go_and_wait(&mut warm).await?;
    settle().await;
    let rss_before = server.rss_bytes();
    let processes = spread::processes_for(sessions as u64 * target.connections(), hard);
    let mut workers = spawn_workers(server.addr, target, sessions, WARM, hard).await?;
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let opened = go_and_wait(&mut workers).await;
    let open_seconds = started.elapsed().as_secs_f64();
    let server_cpu_seconds = server.cpu_seconds() - cpu_before;
    let opened = match opened {
        Ok(n) => n,
        Err(e) => {
            stop_all(workers).await;
            stop_all(warm).await;
            return Err(e);
        }
    };
    settle().await;
    let rss_after = server.rss_bytes();
    let server_fds = spread::fds_of(server.pid());
    let load_rss = workers.iter().map(|w| spread::rss_of(w.pid)).sum();
    stop_all(workers).await;
    stop_all(warm).await;
    if opened != sessions {
        return Err(format!("{opened} sessions opened, {sessions} asked"));
    }
    Ok(Step {
        sessions,
        bytes_per_session: rss_after.saturating_sub(rss_before) as f64 / sessions as f64,
        per_second: sessions as f64 / open_seconds,
        open_seconds,
        server_cpu_seconds,
        server_fds,
        load_rss,
        processes,
    })
}

/// Starts the load processes for `sessions` clients numbered from
/// `first` (which fixes their source addresses), and waits until each is
/// ready.
async fn spawn_workers(
    addr: SocketAddr,
    target: Target,
    sessions: usize,
    first: usize,
    hard: u64,
) -> Result<Vec<Worker>, String> {
    let processes = spread::processes_for(sessions as u64 * target.connections(), hard) as usize;
    let mut workers = Vec::with_capacity(processes);
    let mut from = first;
    for i in 0..processes {
        let count = sessions / processes + usize::from(i < sessions % processes);
        let args = [
            "scale-client".to_owned(),
            target.arg(),
            addr.to_string(),
            count.to_string(),
            from.to_string(),
        ];
        workers.push(Worker::spawn(&args, Some(1))?);
        from += count;
    }
    for worker in &mut workers {
        worker.expect("READY", Duration::from_secs(10)).await?;
    }
    Ok(workers)
}

/// Tells every worker to open its sessions; waits until all have: the
/// number opened.
async fn go_and_wait(workers: &mut [Worker]) -> Result<usize, String> {
    for worker in workers.iter_mut() {
        worker.say("go").await?;
    }
    let mut total = 0;
    for worker in workers.iter_mut() {
        let n = worker.expect("OPENED", Duration::from_secs(600)).await?;
        total += n.parse::<usize>().map_err(|e| e.to_string())?;
    }
    Ok(total)
}

async fn stop_all(workers: Vec<Worker>) {
    for worker in workers {
        worker.stop().await;
    }
}

/// Lets the server finish what the last connections started
/// (`HOLDFAST_BENCH_SETTLE_MS`, default 300).
async fn settle() {
    let ms = std::env::var("HOLDFAST_BENCH_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// One idle client: whatever keeps its session attached (held, never read).
#[allow(dead_code)]
enum Held {
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Pair(TcpStream, TcpStream),
}

/// `holdfast-bench scale-client <target> <addr> <count> <first>`: a load
/// process. Prints `READY`, opens `count` sessions on `go`, prints
/// `OPENED <count>` (or `ERROR …`), holds them until stdin closes.
pub fn client_main(args: &[String]) -> std::process::ExitCode {
    let parsed = (|| {
        let target = Target::parse(args.first()?)?;
        let addr: SocketAddr = args.get(1)?.parse().ok()?;
        let count: usize = args.get(2)?.parse().ok()?;
        let first: usize = args.get(3)?.parse().ok()?;
        Some((target, addr, count, first))
    })();
    let Some((target, addr, count, first)) = parsed else {
        eprintln!("usage: holdfast-bench scale-client <target> <addr> <count> <first>");
        return std::process::ExitCode::from(2);
    };
    let (soft, _) = spread::raise_nofile();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return std::process::ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let needed = count as u64 * target.connections() + spread::FD_RESERVE;
        if needed > soft {
            spread::report(&format!(
                "ERROR {count} sessions need {needed} open files; this process may open {soft}"
            ));
            return std::process::ExitCode::FAILURE;
        }
        let mut commands = Commands::stdin();
        spread::report("READY");
        if commands.next().await.as_deref() != Some("go") {
            return std::process::ExitCode::SUCCESS;
        }
        let sources = Sources { per_addr: PER_ADDR };
        let results: Vec<Result<Held, String>> = futures_util::stream::iter(first..first + count)
            .map(|i| open(target, sources.addr(i), addr))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut held = Vec::with_capacity(count);
        for result in results {
            match result {
                Ok(h) => held.push(h),
                Err(e) => {
                    spread::report(&format!("ERROR {e}"));
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        spread::report(&format!("OPENED {}", held.len()));
        while commands.next().await.is_some() {}
        drop(held);
        std::process::ExitCode::SUCCESS
    })
}

/// Opens one idle session from `src`.
async fn open(target: Target, src: Ipv4Addr, addr: SocketAddr) -> Result<Held, String> {
    let connect = || async {
        spread::connect_from(src, addr)
            .await
            .map_err(|e| format!("connect from {src}: {e}"))
    };
    match target {
        Target::Raw | Target::Holdfast(TransportKind::WebSocket) => {
            let tcp = connect().await?;
            let url = format!("ws://{addr}/realtime/ws?v=1");
            // A small read buffer (tungstenite's default is 128 KiB): the
            // load side holds tens of thousands of these.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(4096);
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
                .await
                .map_err(|e| format!("ws: {e}"))?;
            if target != Target::Raw {
                // The `open` frame: the session exists.
                tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .map_err(|_| "no open frame")?
                    .ok_or("ws closed before open")?
                    .map_err(|e| e.to_string())?;
            } else {
                // The raw echo answers: the connection is served.
                ws.send("hi".into()).await.map_err(|e| e.to_string())?;
                tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .map_err(|_| "no echo")?
                    .ok_or("ws closed")?
                    .map_err(|e| e.to_string())?;
            }
            Ok(Held::Ws(Box::new(ws)))
        }
        Target::Holdfast(TransportKind::Sse) => {
            let mut stream = connect().await?;
            get(&mut stream, addr, "/realtime/sse?v=1").await?;
            let mut answer = read_until(&mut stream, b"\"open\"").await?;
            if extract_key(&answer).is_none() {
                answer = read_until(&mut stream, b"\"key\"").await?;
            }
            let key = extract_key(&answer).ok_or("no key in the open frame")?;
            let send = send_once(connect().await?, addr, &key).await?;
            Ok(Held::Pair(stream, send))
        }
        Target::Holdfast(_) => {
            let mut first = connect().await?;
            get(&mut first, addr, "/realtime/poll?v=1").await?;
            let answer = read_until(&mut first, b"\"sid\"").await?;
            let key = extract_key(&answer).ok_or("no key in the open frame")?;
            // The next poll, held: on the same kept-alive connection, as a
            // real client's pool does.
            get(
                &mut first,
                addr,
                &format!("/realtime/poll?v=1&key={key}&last=0"),
            )
            .await?;
            let send = send_once(connect().await?, addr, &key).await?;
            Ok(Held::Pair(first, send))
        }
    }
}

async fn get(tcp: &mut TcpStream, addr: SocketAddr, path: &str) -> Result<(), String> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("raw"), Some(Target::Raw));
        assert_eq!(
            Target::parse("long-poll"),
            Some(Target::Holdfast(TransportKind::LongPoll))
        );
        assert_eq!(Target::parse("carrier-pigeon"), None);
        assert_eq!(Target::Holdfast(TransportKind::Sse).connections(), 2);
        assert_eq!(
            Target::parse(&Target::Holdfast(TransportKind::LongPoll).arg()),
            Some(Target::Holdfast(TransportKind::LongPoll))
        );
    }
}
