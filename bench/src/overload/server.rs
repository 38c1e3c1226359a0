//! The server of the overload runs (`holdfast-bench overload-serve …`): the
//! bench's echo, with the limits under study set from the command line, a
//! stand-in for application work per message, and a `/stats` page the load
//! generator samples (buffered bytes, open sessions, the runtime's
//! scheduling lag, refusals by reason).
//!
//! The application work matters: a pure echo costs the server about as
//! much CPU per message as the load generator spends producing and
//! checking it, so on two cores the generator could never offer three times
//! what the server can echo. Burning `work` per message (on the server's
//! one core, like a real handler would) makes the server the bottleneck.

use std::io::Write as _;
use std::time::{Duration, Instant};

use axum::routing::get;
use holdfast_server::{Holdfast, ServerConfig, Session};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// How `overload-serve` was asked to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// CPU time burnt per echoed message.
    pub work: Duration,
    /// `ServerConfig::max_sessions`.
    pub max_sessions: usize,
    /// `ServerConfig::max_buffered_bytes`.
    pub max_buffered_bytes: usize,
    /// `ServerConfig::retry_after`.
    pub retry_after: Duration,
    /// `ServerConfig::open_lag_limit` (`--open-lag-limit-ms 0`: `None`).
    pub open_lag_limit: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        let config = ServerConfig::default();
        Self {
            work: Duration::ZERO,
            max_sessions: config.max_sessions,
            max_buffered_bytes: config.max_buffered_bytes,
            retry_after: config.retry_after,
            open_lag_limit: config.open_lag_limit,
        }
    }
}

const USAGE: &str = "usage: holdfast-bench overload-serve [--work-us N] [--max-sessions N] \
                     [--max-buffered-bytes N] [--retry-after-ms N] [--open-lag-limit-ms N (0: none)]";

impl ServeOptions {
    /// Reads the arguments after `overload-serve`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
            let number: u64 = value
                .parse()
                .map_err(|_| format!("{flag} {value:?}: not a number; {USAGE}"))?;
            match flag.as_str() {
                "--work-us" => options.work = Duration::from_micros(number),
                "--max-sessions" => options.max_sessions = number as usize,
                "--max-buffered-bytes" => options.max_buffered_bytes = number as usize,
                "--retry-after-ms" => options.retry_after = Duration::from_millis(number),
                "--open-lag-limit-ms" => {
                    options.open_lag_limit = (number > 0).then(|| Duration::from_millis(number));
                }
                other => return Err(format!("unknown argument {other:?}; {USAGE}")),
            }
        }
        Ok(options)
    }

    /// The arguments that [`parse`](Self::parse) reads back.
    pub fn to_args(&self) -> Vec<String> {
        [
            ("--work-us", self.work.as_micros() as u64),
            ("--max-sessions", self.max_sessions as u64),
            ("--max-buffered-bytes", self.max_buffered_bytes as u64),
            ("--retry-after-ms", self.retry_after.as_millis() as u64),
            (
                "--open-lag-limit-ms",
                self.open_lag_limit
                    .map_or(0, |limit| limit.as_millis() as u64),
            ),
        ]
        .iter()
        .flat_map(|(flag, value)| [(*flag).to_owned(), value.to_string()])
        .collect()
    }

    fn config(&self) -> Result<ServerConfig, String> {
        let mut config = ServerConfig::default();
        config.max_sessions = self.max_sessions;
        config.max_buffered_bytes = self.max_buffered_bytes;
        config.retry_after = self.retry_after;
        config.open_lag_limit = self.open_lag_limit;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Runs the server until stdin closes, on one worker thread (the process
/// is pinned to one core).
pub fn run(options: &ServeOptions) -> Result<(), String> {
    let config = options.config()?;
    let runtime = crate::process::one_worker_runtime().map_err(|e| e.to_string())?;
    let work = options.work;
    runtime.block_on(async move {
        // Before the server exists, so that every refusal is counted.
        let recorder = crate::recorder::install()?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let holdfast = Holdfast::builder()
            .config(config)
            .on_session(move |session| echo(session, work));
        let stats_of = holdfast.clone();
        let app = axum::Router::new()
            .merge(holdfast.router_at("/realtime"))
            .route(
                "/stats",
                get(move || std::future::ready(stats(&stats_of, &recorder))),
            );
        println!("LISTEN {addr}");
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = holdfast_server::serve(listener, app) => {}
            () = stdin_closed() => {}
        }
        Ok(())
    })
}

/// Echoes every message after `work` of CPU.
async fn echo(session: Session, work: Duration) {
    while let Some(message) = session.recv().await {
        burn(work);
        if session.send(message).await.is_err() {
            break;
        }
    }
}

/// Keeps the core busy for `work` (what a handler computing would do).
fn burn(work: Duration) {
    if work.is_zero() {
        return;
    }
    let until = Instant::now() + work;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// `/stats`: one `name value` line each, read by [`super::sampler`].
fn stats(holdfast: &Holdfast, recorder: &PrometheusHandle) -> String {
    let mut out = format!(
        "buffered_bytes {}\nsessions {}\nlag_ms {}\n",
        holdfast.buffered_bytes(),
        holdfast.session_count(),
        holdfast.scheduling_lag().as_millis()
    );
    for line in recorder.render().lines() {
        // `holdfast_rejections_total{reason="too_many_sessions"} 12`
        if let Some(rest) = line.strip_prefix("holdfast_rejections_total{reason=\"")
            && let Some((reason, value)) = rest.split_once("\"} ")
        {
            out.push_str(&format!("rejected_{reason} {value}\n"));
        }
    }
    out
}

async fn stdin_closed() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_bad_ones_are_refused() {
        let options = ServeOptions {
            work: Duration::from_micros(25),
            max_sessions: 300,
            max_buffered_bytes: 4 << 20,
            retry_after: Duration::from_millis(1500),
            open_lag_limit: Some(Duration::from_millis(300)),
        };
        assert_eq!(ServeOptions::parse(&options.to_args()), Ok(options.clone()));
        let off = ServeOptions {
            open_lag_limit: None,
            ..options
        };
        assert_eq!(ServeOptions::parse(&off.to_args()), Ok(off));
        let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(ServeOptions::parse(&args(&["--work-us"])).is_err());
        assert!(ServeOptions::parse(&args(&["--work-us", "x"])).is_err());
        assert!(ServeOptions::parse(&args(&["--work", "3"])).is_err());
        // A buffer smaller than one session's replay buffer is refused by
        // the server's own validation, not served.
        let tiny = ServeOptions::parse(&args(&["--max-buffered-bytes", "10"])).unwrap();
        assert!(tiny.config().is_err());
    }
}
