//! The command-line client: talk to a holdfast server, or check that an
//! echo server delivers exactly.
//!
//! ```text
//! cargo run --example client -- --url http://127.0.0.1:3000/realtime [--transport auto|websocket|sse|long-poll]
//! cargo run --example client -- --url http://127.0.0.1:3000/realtime --count 10000
//! ```
//!
//! Without `--count`, lines from stdin are sent and what arrives is printed.
//! With `--count N`, N numbered messages go to an echo server; what comes
//! back is checked and one JSON line is printed last:
//! `{"transport":…,"sent":N,"received":N,"lost":0,"duplicated":0,"reordered":0,"reconnects":0,"elapsed_ms":…}`.
//! The exit status is non-zero on any loss, duplicate or reordering.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use holdfast::client::{ClientBuilder, Event, Message, TransportKind};
use tokio::io::AsyncBufReadExt;

struct Args {
    url: String,
    transport: Option<TransportKind>,
    count: Option<u64>,
    timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let mut builder = ClientBuilder::new(&args.url);
    if let Some(transport) = args.transport {
        builder = builder.transport(transport);
    }
    let connection = match builder.connect().await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("cannot connect to {}: {error}", args.url);
            return ExitCode::FAILURE;
        }
    };
    match args.count {
        Some(count) => check_echo(connection, count, args.timeout).await,
        None => interactive(connection).await,
    }
}

/// Sends stdin's lines, prints what arrives.
async fn interactive(connection: holdfast::client::Connection) -> ExitCode {
    eprintln!(
        "connected over {}; type lines to send, Ctrl-D to close",
        connection.transport().map_or("?", |t| t.as_str())
    );
    let (sender, mut receiver) = connection.split();
    let input = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).await.is_err() {
                return;
            }
        }
        sender.close().await;
    });
    while let Some(event) = receiver.next_event().await {
        match event {
            Event::Message(Message::Text(text)) => println!("{text}"),
            Event::Message(Message::Binary(bytes)) => println!("<{} bytes>", bytes.len()),
            Event::Closed(closed) => {
                eprintln!("closed: {} {}", closed.code, closed.reason);
                break;
            }
            other => eprintln!("{other:?}"),
        }
    }
    input.abort();
    ExitCode::SUCCESS
}

/// Sends `count` numbered messages and checks the echoes.
async fn check_echo(
    connection: holdfast::client::Connection,
    count: u64,
    timeout: Duration,
) -> ExitCode {
    let started = Instant::now();
    let (sender, mut receiver) = connection.split();
    let send_all = tokio::spawn({
        let sender = sender.clone();
        async move {
            for n in 0..count {
                if sender.send(n.to_string()).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut seen = HashSet::new();
    let (mut received, mut duplicated, mut reordered, mut reconnects) = (0u64, 0u64, 0u64, 0u64);
    let mut highest: Option<u64> = None;
    let mut transport = sender.transport();
    let deadline = tokio::time::Instant::now() + timeout;
    while (seen.len() as u64) < count {
        let event = match tokio::time::timeout_at(deadline, receiver.next_event()).await {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => break,
        };
        match event {
            Event::Message(message) => {
                received += 1;
                let Some(n) = message.as_text().and_then(|t| t.parse::<u64>().ok()) else {
                    continue;
                };
                if !seen.insert(n) {
                    duplicated += 1;
                } else if highest.is_some_and(|h| n < h) {
                    reordered += 1;
                }
                highest = highest.max(Some(n));
            }
            Event::Reconnecting { .. } => reconnects += 1,
            Event::Resumed { transport: t } | Event::Open { transport: t, .. } => {
                transport = Some(t)
            }
            Event::TransportChanged { to, .. } => transport = Some(to),
            Event::Closed(closed) => {
                eprintln!("session closed: {} {}", closed.code, closed.reason);
                break;
            }
            _ => {}
        }
    }
    send_all.abort();
    let lost = count - seen.len() as u64;
    let transport = sender
        .transport()
        .or(transport)
        .map_or("none", |t| t.as_str());
    println!(
        "{{\"transport\":\"{transport}\",\"sent\":{count},\"received\":{received},\"lost\":{lost},\"duplicated\":{duplicated},\"reordered\":{reordered},\"reconnects\":{reconnects},\"elapsed_ms\":{}}}",
        started.elapsed().as_millis()
    );
    sender.close().await;
    if lost + duplicated + reordered == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: client --url http://HOST:PORT/MOUNT [--transport auto|websocket|sse|long-poll] [--count N] [--timeout SECONDS]";
    let mut args = Args {
        url: String::new(),
        transport: None,
        count: None,
        timeout: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value\n{usage}"));
        match arg.as_str() {
            "--url" => args.url = value()?,
            "--transport" => {
                let v = value()?;
                args.transport = match v.as_str() {
                    "auto" => None,
                    other => Some(other.parse().map_err(|e| format!("{e}\n{usage}"))?),
                };
            }
            "--count" => {
                let v = value()?;
                args.count = Some(
                    v.parse()
                        .map_err(|_| format!("--count {v:?} is not a number"))?,
                );
            }
            "--timeout" => {
                let v = value()?;
                args.timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout {v:?} is not a number of seconds"))?,
                );
            }
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{usage}")),
        }
    }
    if args.url.is_empty() {
        args.url = "http://127.0.0.1:3000/realtime".into();
    }
    Ok(args)
}
