//! The servers under test, run as child processes (`holdfast-bench serve
//! …`) so that their CPU time can be read from `/proc` and they can be
//! pinned to a core of their own.
//!
//! Both use the same runtime (multi-threaded, one worker: the process is
//! pinned to one core) and both echo every message.

use std::io::Write as _;

use futures_util::{StreamExt, TryStreamExt};
use holdfast_protocol::Message;
use holdfast_server::{Fanout, Holdfast, ServerConfig, Session, SlowConsumer, Topic};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// A raw tokio-tungstenite echo: the floor.
    RawWs,
    /// holdfast's echo on every transport, with `burst N` and `pub:` commands.
    Holdfast,
}

impl ServerKind {
    pub fn arg(self) -> &'static str {
        match self {
            Self::RawWs => "raw-ws",
            Self::Holdfast => "holdfast",
        }
    }
}

/// How `holdfast-bench serve <kind> [--redis URL] [--metrics] [--stock]
/// [--max-connections N] [--max-sessions N] [--addr ADDR]` was asked to run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `raw-ws` or `holdfast` (see [`ServerKind::arg`]).
    pub kind: String,
    /// Keep the holdfast server's sessions in Redis at this URL.
    pub redis: Option<String>,
    /// Install a Prometheus recorder before serving (`crate::recorder`).
    pub metrics: bool,
    /// The defaults a user gets (`ServerConfig::default()`, `serve`'s
    /// defaults) instead of the benchmark's: the open-rate limit on.
    pub stock: bool,
    /// `ServeConfig::max_connections` (default 200 000, or 100 000 stock).
    pub max_connections: Option<usize>,
    /// `ServerConfig::max_sessions` (default 200 000, or 100 000 stock).
    pub max_sessions: Option<usize>,
    /// Where to listen (default `127.0.0.1:0`): a restarted server takes
    /// its predecessor's port.
    pub addr: Option<String>,
    /// The listen backlog (default: tokio's `TcpListener::bind`, 1024).
    pub backlog: Option<u32>,
    /// Also accept HTTP/2 in cleartext (`ServeConfig::http2_cleartext`).
    pub h2c: bool,
}

impl Options {
    /// Reads the arguments after `serve`.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let usage = "usage: holdfast-bench serve <raw-ws|holdfast> [--redis URL] [--metrics] \
                     [--stock] [--max-connections N] [--max-sessions N] [--addr ADDR] [--backlog N] [--h2c]";
        let mut it = args.iter();
        let kind = it.next().ok_or(usage)?.clone();
        let mut options = Self {
            kind,
            ..Self::default()
        };
        let number = |v: Option<&String>| -> Result<usize, String> {
            v.and_then(|v| v.parse().ok())
                .ok_or_else(|| usage.to_owned())
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--redis" => options.redis = Some(it.next().ok_or(usage)?.clone()),
                "--metrics" => options.metrics = true,
                "--stock" => options.stock = true,
                "--max-connections" => options.max_connections = Some(number(it.next())?),
                "--max-sessions" => options.max_sessions = Some(number(it.next())?),
                "--addr" => options.addr = Some(it.next().ok_or(usage)?.clone()),
                "--backlog" => options.backlog = Some(number(it.next())? as u32),
                "--h2c" => options.h2c = true,
                other => return Err(format!("unknown argument {other:?}; {usage}")),
            }
        }
        Ok(options)
    }
}

/// Runs a server until stdin closes (the parent died or is done).
pub fn run(options: &Options) -> Result<(), String> {
    // As an application should: the soft open-files limit (often 1024)
    // up to the hard one, so that the connections it may hold are not cut
    // short by a default nobody chose.
    crate::spread::raise_nofile();
    let runtime = crate::process::one_worker_runtime().map_err(|e| e.to_string())?;
    let kind = options.kind.as_str();
    runtime.block_on(async {
        // Installed before the server exists, so that every count from its
        // first request on is recorded.
        let recorder = if options.metrics {
            Some(crate::recorder::install()?)
        } else {
            None
        };
        let store = match options.redis.as_deref() {
            Some(url) => Some(
                holdfast_redis::RedisStore::connect(url)
                    .await
                    .map_err(|e| format!("redis {url}: {e}"))?,
            ),
            None => None,
        };
        let listen = options.addr.as_deref().unwrap_or("127.0.0.1:0");
        let listener = match options.backlog {
            None => TcpListener::bind(listen).await,
            Some(backlog) => listen_with_backlog(listen, backlog),
        }
        .map_err(|e| format!("listen on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("LISTEN {addr}");
        let _ = std::io::stdout().flush();
        let serve = async move {
            match kind {
                "raw-ws" => serve_raw(listener).await,
                "holdfast" => serve_holdfast(listener, store, options).await,
                other => eprintln!("unknown server {other}"),
            }
        };
        tokio::select! {
            () = serve => {}
            () = stdin_closed() => {}
        }
        if let Some(handle) = recorder {
            // After the parent's measurement (it closes stdin last).
            eprintln!("METRICS {} samples", crate::recorder::samples(&handle));
        }
        Ok(())
    })
}

/// Listens on `addr` with an accept queue of `backlog` (the kernel caps it
/// at `net.core.somaxconn`).
fn listen_with_backlog(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
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

/// The baseline: accept, upgrade, send back every data message.
async fn serve_raw(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            // The same read buffer as holdfast's server (`ws_read_buffer`):
            // tungstenite zeroes it before every read, so both pay the
            // same floor.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(holdfast_server::ServerConfig::default().ws_read_buffer);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            // `forward` feeds while messages are ready and flushes when the
            // socket has nothing more: the cheapest echo tungstenite allows.
            let (tx, rx) = ws.split();
            let data = rx.try_filter(|m| std::future::ready(m.is_text() || m.is_binary()));
            let _ = data.forward(tx).await;
        });
    }
}

async fn serve_holdfast(
    listener: TcpListener,
    store: Option<std::sync::Arc<holdfast_redis::RedisStore>>,
    options: &Options,
) {
    let room = Fanout::new(SlowConsumer::Wait);
    let mut config = ServerConfig::default();
    let mut max_connections = holdfast_server::ServeConfig::default().max_connections;
    if !options.stock {
        config.max_sessions = 200_000;
        max_connections = 200_000;
        // The idle benchmark opens thousands of sessions at once from one
        // loopback address: measure the server, not its admission control.
        config.open_rate_limit = None;
        config.session.max_unacked_messages = 8192;
    }
    if let Some(max) = options.max_sessions {
        config.max_sessions = max;
    }
    if let Some(max) = options.max_connections {
        max_connections = max;
    }
    let mut builder = Holdfast::builder().config(config);
    if let Some(store) = store {
        builder = builder.store(store as _);
    }
    let holdfast = builder.on_session(move |session| {
        let room = room.clone();
        async move { app(session, room).await }
    });
    let app = axum::Router::new().merge(holdfast.router_at("/realtime"));
    let mut serve = holdfast_server::ServeConfig::default();
    serve.max_connections = max_connections;
    serve.http2_cleartext = options.h2c;
    let _ = holdfast_server::serve(listener, app).config(serve).await;
}

/// The topic of the `topics` benchmark.
const BENCH_TOPIC: &str = "bench";

/// Echo, plus `burst N` (send N numbered messages), `join` (receive
/// broadcasts), `pub:…` (broadcast this message to everyone joined),
/// `tjoin` (subscribe to the topic `bench`, with `SlowConsumer::Wait`;
/// answers `tjoined`) and `t:…` (publish this message to that topic,
/// waiting until its log holds it; answers only a failure).
async fn app(session: Session, room: Fanout) {
    // Held for the session's life: a node's hub runs while a handle does.
    let mut topic: Option<Topic> = None;
    while let Some(message) = session.recv().await {
        if let Some(text) = message.as_text() {
            if text == "tjoin" {
                let answer = match bench_topic(&session, &mut topic) {
                    Ok(t) => match t.subscribe(&session).await {
                        Ok(_) => "tjoined".to_owned(),
                        Err(e) => format!("tjoin failed: {e}"),
                    },
                    Err(e) => format!("tjoin failed: {e}"),
                };
                if session.send(answer).await.is_err() {
                    break;
                }
                continue;
            }
            if text.starts_with("t:") {
                let result = match bench_topic(&session, &mut topic) {
                    Ok(t) => t.publish(message.clone()).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    if session.send(format!("tpub failed: {e}")).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            if let Some(n) = text.strip_prefix("burst ") {
                let n: u64 = n.parse().unwrap_or(0);
                for i in 1..=n {
                    if session.send(format!("b{i}")).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            if text == "join" {
                room.join(&session);
                continue;
            }
            if text.starts_with("pub:") {
                room.send(Message::text(text)).await;
                continue;
            }
        }
        if session.send(message).await.is_err() {
            break;
        }
    }
    room.leave(&session);
}

/// The session's handle on the benchmark's topic, made on first use.
fn bench_topic<'a>(
    session: &Session,
    topic: &'a mut Option<Topic>,
) -> Result<&'a Topic, holdfast_server::TopicError> {
    if topic.is_none() {
        *topic = Some(
            session
                .topic(BENCH_TOPIC)?
                .with_slow_consumer(SlowConsumer::Wait),
        );
    }
    topic.as_ref().ok_or(holdfast_server::TopicError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_in_any_order() {
        let asked = args(&["holdfast", "--metrics", "--redis", "redis://127.0.0.1:6379"]);
        assert_eq!(
            Options::parse(&asked),
            Ok(Options {
                kind: "holdfast".to_owned(),
                redis: Some("redis://127.0.0.1:6379".to_owned()),
                metrics: true,
                ..Options::default()
            })
        );
        let plain = Options::parse(&args(&["raw-ws"])).unwrap();
        assert!(!plain.metrics && plain.redis.is_none());
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Options::parse(&[]).is_err());
        assert!(Options::parse(&args(&["holdfast", "--redis"])).is_err());
        assert!(Options::parse(&args(&["holdfast", "--metric"])).is_err());
        assert!(Options::parse(&args(&["holdfast", "--max-sessions", "many"])).is_err());
    }

    #[test]
    fn stock_limits_and_address() {
        let asked = args(&[
            "holdfast",
            "--stock",
            "--max-connections",
            "120000",
            "--addr",
            "127.0.0.1:4000",
        ]);
        let options = Options::parse(&asked).unwrap();
        assert!(options.stock);
        assert_eq!(options.max_connections, Some(120_000));
        assert_eq!(options.max_sessions, None);
        assert_eq!(options.addr.as_deref(), Some("127.0.0.1:4000"));
    }
}
