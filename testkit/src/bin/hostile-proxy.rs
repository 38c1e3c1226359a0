//! `hostile-proxy`: the testkit's hostile proxy as a program, for test
//! suites that are not written in Rust (the JavaScript client's).
//!
//! ```text
//! hostile-proxy [--upstream HOST:PORT] [--route PREFIX=HOST:PORT]...
//! ```
//!
//! It listens on `127.0.0.1`, on a port the system picks, in front of
//! `--upstream` (and as a forward proxy), exactly as
//! [`holdfast_testkit::Proxy`] does; `--route /test/=127.0.0.1:8081` sends
//! the paths starting with `/test/` to another server. Its first line on
//! stdout is where it listens:
//!
//! ```text
//! {"addr":"127.0.0.1:40123","port":40123}
//! ```
//!
//! Then it reads commands on stdin, one JSON object a line, and answers each
//! with one JSON line on stdout, in order: `{"ok":true,…}` or
//! `{"ok":false,"error":"…"}`. It exits when stdin closes, so a test run
//! that dies takes its proxy with it.
//!
//! | command | does | answer |
//! |---|---|---|
//! | `{"cmd":"set", …behaviour}` | replaces the [`Behavior`] (fields below; absent ones are off) | |
//! | `{"cmd":"cut"}` | [`Proxy::cut_all`] | |
//! | `{"cmd":"cut","paths":P}` | [`Proxy::cut_paths`] | |
//! | `{"cmd":"silence_tunnels"}` | [`Proxy::silence_tunnels`] | |
//! | `{"cmd":"answer","status":502, …}` | [`Proxy::answer`]; also `method`, `paths`, `times`, `ms` (lasting), `headers` (`{"Retry-After":"1"}`), `body` and `content_type` (default: an HTML error page) | `"id"` |
//! | `{"cmd":"withdraw","id":3}` | [`Proxy::withdraw`] | `"withdrawn"` |
//! | `{"cmd":"stats"}` | [`Proxy::stats`] | `"stats"`: the [`Stats`] fields |
//! | `{"cmd":"reset_max"}` | [`Proxy::reset_max`] | |
//!
//! Behaviour fields of `set`: `refuse_upgrade` (a status), `strip_upgrade`
//! (a boolean), `silence_after_upgrade` and `reset_after_upgrade` (`{"bytes":n,"ms":t}`,
//! either or both), `error_page` (`{"status":502,"paths":P}`), `buffer`
//! (`{"bytes":n,"paths":P}`; without `bytes`, until the response ends),
//! `cut` (`{"bytes":n,"ms":t,"seed":s}`; `{"bytes":0}` cuts every
//! connection at once: a network that is down), `latency_ms`,
//! `refuse_connect` (a status), `upgrade_delay_ms`. A path filter `P` is
//! `{"ends_with":"/sse"}` or `{"contains":"/realtime"}`; absent, every path.
//!
//! Commands are at most 1 MiB a line; a bad one gets an error answer and
//! changes nothing.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use holdfast_testkit::{
    After, Answer, AnswerId, Behavior, Buffering, Cut, ErrorPage, PathFilter, Proxy, Stats,
};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const USAGE: &str = "usage: hostile-proxy [--upstream HOST:PORT] [--route PREFIX=HOST:PORT]...\n\
    Listens on 127.0.0.1 (first stdout line: {\"addr\":…,\"port\":…}), then takes one JSON\n\
    command a line on stdin and answers each on stdout; exits when stdin closes.\n\
    See the crate documentation of holdfast-testkit (src/bin/hostile-proxy.rs).";

/// Longest command line accepted.
const MAX_LINE: usize = 1 << 20;

/// The command line.
#[derive(Debug, Default)]
struct Options {
    upstream: Option<SocketAddr>,
    routes: Vec<(String, SocketAddr)>,
    help: bool,
}

fn parse_options(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--upstream" => {
                let v = value("--upstream")?;
                options.upstream = Some(addr(&v)?);
            }
            "--route" => {
                let v = value("--route")?;
                let (prefix, to) = v
                    .split_once('=')
                    .ok_or(format!("--route {v:?}: expected PREFIX=HOST:PORT"))?;
                if !prefix.starts_with('/') {
                    return Err(format!("--route {v:?}: the prefix must start with /"));
                }
                options.routes.push((prefix.to_owned(), addr(to)?));
            }
            "-h" | "--help" => options.help = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(options)
}

fn addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address (HOST:PORT, e.g. 127.0.0.1:8080)"))
}

/// A path filter: `{"ends_with":"/sse"}` or `{"contains":"x"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Paths {
    EndsWith(String),
    Contains(String),
}

fn paths(p: Option<Paths>) -> PathFilter {
    match p {
        None => PathFilter::Any,
        Some(Paths::EndsWith(s)) => PathFilter::EndsWith(s),
        Some(Paths::Contains(s)) => PathFilter::Contains(s),
    }
}

/// A point in a connection's life: `{"bytes":n,"ms":t}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterJson {
    bytes: Option<u64>,
    ms: Option<u64>,
}

impl From<AfterJson> for After {
    fn from(a: AfterJson) -> Self {
        After {
            bytes: a.bytes,
            time: a.ms.map(Duration::from_millis),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorPageJson {
    status: u16,
    paths: Option<Paths>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BufferJson {
    bytes: Option<usize>,
    paths: Option<Paths>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CutJson {
    bytes: Option<u64>,
    ms: Option<u64>,
    seed: Option<u64>,
}

/// The fields of `set`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BehaviorJson {
    refuse_upgrade: Option<u16>,
    strip_upgrade: bool,
    silence_after_upgrade: Option<AfterJson>,
    reset_after_upgrade: Option<AfterJson>,
    error_page: Option<ErrorPageJson>,
    buffer: Option<BufferJson>,
    cut: Option<CutJson>,
    latency_ms: u64,
    refuse_connect: Option<u16>,
    upgrade_delay_ms: u64,
}

/// The fields of `answer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerJson {
    status: u16,
    method: Option<String>,
    paths: Option<Paths>,
    times: Option<u64>,
    ms: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Command {
    Set(BehaviorJson),
    Cut { paths: Option<Paths> },
    SilenceTunnels {},
    Answer(AnswerJson),
    Withdraw { id: u64 },
    Stats {},
    ResetMax {},
}

/// A status the proxy can put on a status line.
fn status(code: u16) -> Result<u16, String> {
    if (100..=599).contains(&code) {
        Ok(code)
    } else {
        Err(format!("{code} is not an HTTP status (100 to 599)"))
    }
}

fn behavior(b: BehaviorJson) -> Result<Behavior, String> {
    Ok(Behavior {
        refuse_upgrade: b.refuse_upgrade.map(status).transpose()?,
        strip_upgrade: b.strip_upgrade,
        silence_after_upgrade: b.silence_after_upgrade.map(After::from),
        reset_after_upgrade: b.reset_after_upgrade.map(After::from),
        error_page: b
            .error_page
            .map(|p| {
                Ok::<_, String>(ErrorPage {
                    status: status(p.status)?,
                    paths: paths(p.paths),
                })
            })
            .transpose()?,
        buffer: b.buffer.map(|x| Buffering {
            bytes: x.bytes.unwrap_or(usize::MAX),
            paths: paths(x.paths),
        }),
        cut: b.cut.map(|c| Cut {
            after: After {
                bytes: c.bytes,
                time: c.ms.map(Duration::from_millis),
            },
            seed: c.seed,
        }),
        latency: Duration::from_millis(b.latency_ms),
        refuse_connect: b.refuse_connect.map(status).transpose()?,
        upgrade_delay: Duration::from_millis(b.upgrade_delay_ms),
    })
}

fn answer(a: AnswerJson) -> Result<Answer, String> {
    let mut answer = Answer::new(status(a.status)?).paths(paths(a.paths));
    if let Some(method) = a.method {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("{method:?} is not a method"));
        }
        answer = answer.method(method);
    }
    if let Some(n) = a.times {
        answer = answer.times(n);
    }
    if let Some(ms) = a.ms {
        answer = answer.lasting(Duration::from_millis(ms));
    }
    for (name, value) in a.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("{value:?} is not a header value"))?;
        answer = answer.header(name, value);
    }
    match (a.body, a.content_type) {
        (Some(body), content_type) => {
            let content_type = content_type.as_deref().unwrap_or("text/plain");
            let content_type = HeaderValue::from_str(content_type)
                .map_err(|_| format!("{content_type:?} is not a content type"))?;
            answer = answer.body(content_type, body);
        }
        (None, Some(_)) => return Err("content_type without a body".to_owned()),
        (None, None) => {}
    }
    Ok(answer)
}

fn stats_json(s: &Stats) -> Value {
    json!({
        "connections": s.connections,
        "live": s.live,
        "max_live": s.max_live,
        "requests": s.requests,
        "upgrade_requests": s.upgrade_requests,
        "upgrades": s.upgrades,
        "connects": s.connects,
        "probes": s.probes,
        "open": s.open,
        "max_open": s.max_open,
        "largest_body": s.largest_body,
        "bytes_up": s.bytes_up,
        "bytes_down": s.bytes_down,
        "cut": s.cut,
    })
}

/// Runs one command line; the answer to print.
fn run(proxy: &Proxy, line: &str) -> Value {
    let command: Command = match serde_json::from_str(line) {
        Ok(c) => c,
        Err(e) => return json!({"ok": false, "error": format!("bad command: {e}")}),
    };
    let done = json!({"ok": true});
    match command {
        Command::Set(b) => match behavior(b) {
            Ok(b) => {
                proxy.set(b);
                done
            }
            Err(e) => json!({"ok": false, "error": e}),
        },
        Command::Cut { paths: None } => {
            proxy.cut_all();
            done
        }
        Command::Cut { paths: Some(p) } => {
            proxy.cut_paths(&paths(Some(p)));
            done
        }
        Command::SilenceTunnels {} => {
            proxy.silence_tunnels();
            done
        }
        Command::Answer(a) => match answer(a) {
            Ok(a) => json!({"ok": true, "id": proxy.answer(a).0}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        Command::Withdraw { id } => json!({"ok": true, "withdrawn": proxy.withdraw(AnswerId(id))}),
        Command::Stats {} => json!({"ok": true, "stats": stats_json(&proxy.stats())}),
        Command::ResetMax {} => {
            proxy.reset_max();
            done
        }
    }
}

/// What the stdin reader hands over: a line, or one that was too long.
enum Line {
    Text(String),
    TooLong,
}

/// Reads stdin line by line (on its own thread: reading blocks) until it
/// closes or the receiver is gone.
fn read_lines(tx: mpsc::Sender<Line>) {
    let mut stdin = io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = Read::take(&mut stdin, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf);
        let line = match read {
            Ok(0) | Err(_) => return,
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE => {
                // Skip the rest of the line.
                let mut rest = Vec::new();
                loop {
                    rest.clear();
                    match Read::take(&mut stdin, 64 * 1024).read_until(b'\n', &mut rest) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if rest.last() == Some(&b'\n') => break,
                        Ok(_) => {}
                    }
                }
                Line::TooLong
            }
            Ok(_) => Line::Text(String::from_utf8_lossy(&buf).trim().to_owned()),
        };
        if tx.blocking_send(line).is_err() {
            return;
        }
    }
}

/// Prints one JSON line; false when stdout is gone.
fn say(value: &Value) -> bool {
    let mut out = io::stdout().lock();
    writeln!(out, "{value}").and_then(|()| out.flush()).is_ok()
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hostile-proxy: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hostile-proxy: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = Proxy::builder();
    if let Some(upstream) = options.upstream {
        builder = builder.upstream(upstream);
    }
    for (prefix, to) in options.routes {
        builder = builder.route(prefix, to);
    }
    let proxy = match runtime.block_on(builder.start()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hostile-proxy: cannot listen on 127.0.0.1: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !say(&json!({"addr": proxy.addr().to_string(), "port": proxy.addr().port()})) {
        return ExitCode::SUCCESS;
    }
    let (tx, mut rx) = mpsc::channel(16);
    std::thread::spawn(move || read_lines(tx));
    runtime.block_on(async {
        while let Some(line) = rx.recv().await {
            let reply = match line {
                Line::Text(text) if text.is_empty() => continue,
                Line::Text(text) => run(&proxy, &text),
                Line::TooLong => {
                    json!({"ok": false, "error": format!("a command line is at most {MAX_LINE} bytes")})
                }
            };
            if !say(&reply) {
                break;
            }
        }
    });
    // Stdin closed (or stdout did): stop every connection and exit.
    drop(proxy);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Options, String> {
        parse_options(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn command_line() {
        let o = args(&[
            "--upstream",
            "127.0.0.1:80",
            "--route",
            "/test/=127.0.0.1:81",
        ])
        .unwrap();
        assert_eq!(o.upstream, Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(
            o.routes,
            [("/test/".to_owned(), "127.0.0.1:81".parse().unwrap())]
        );
        assert!(args(&["--help"]).unwrap().help);
        for bad in [
            &["--upstream"][..],
            &["--upstream", "localhost"],
            &["--route", "/test/"],
            &["--route", "test=127.0.0.1:1"],
            &["--port", "1"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }

    fn set(json: &str) -> Result<Behavior, String> {
        match serde_json::from_str(json).map_err(|e| e.to_string())? {
            Command::Set(b) => behavior(b),
            other => panic!("not a set: {other:?}"),
        }
    }

    #[test]
    fn behaviours() {
        assert_eq!(set(r#"{"cmd":"set"}"#).unwrap(), Behavior::default());
        let b = set(
            r#"{"cmd":"set","buffer":{"paths":{"ends_with":"/sse"}},"cut":{"bytes":0},
                "silence_after_upgrade":{"ms":5},"upgrade_delay_ms":7}"#,
        )
        .unwrap();
        assert_eq!(
            b,
            Behavior::default()
                .buffer_responses(usize::MAX, PathFilter::ends_with("/sse"))
                .cut_after(After::IMMEDIATELY)
                .silence_after_upgrade(After::millis(5))
                .delay_upgrades(Duration::from_millis(7))
        );
        assert!(set(r#"{"cmd":"set","error_page":{"status":600}}"#).is_err());
        assert!(set(r#"{"cmd":"set","buffer":{"paths":{"starts_with":"/"}}}"#).is_err());
        assert!(set(r#"{"cmd":"set","latency_ms":-1}"#).is_err());
    }
}
