//! Real Redis servers for tests: a [`RedisServer`] (one `redis-server` on a
//! free loopback port, with or without AOF persistence) and a
//! [`RedisCluster`] (masters joined by `redis-cli --cluster create`).
//!
//! Each server runs in its own temporary directory (removed when it is
//! dropped) and is killed on drop. Everything waits on a condition with a
//! deadline: `PING` answered, `cluster_state:ok` with every slot covered.
//! Without `redis-server` installed, starting fails with a message saying
//! how to install it (`./test.sh` does it).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use holdfast_testkit::{RedisCluster, RedisServer};
//!
//! let mut redis = RedisServer::builder().aof(true).start().await?;
//! let url = redis.url(); // redis://127.0.0.1:<port>
//! redis.restart().await?; // same port, same data directory
//! let cluster = RedisCluster::start(3).await?;
//! let url = cluster.url(); // redis-cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,…
//! # Ok(()) }
//! ```

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a server may take to answer `PING` after it starts.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long a cluster may take to cover every slot.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);
/// One command of the test client (`command`).
const COMMAND_DEADLINE: Duration = Duration::from_secs(5);

/// Options for a [`RedisServer`].
#[derive(Clone, Debug, Default)]
pub struct RedisServerBuilder {
    aof: bool,
    cluster: bool,
    port: Option<u16>,
}

impl RedisServerBuilder {
    /// Persist with an append-only file (`appendonly yes`, `appendfsync
    /// always`) in the server's directory, so that a [`RedisServer::restart`]
    /// (or a kill and restart) keeps every acknowledged write. Default: no
    /// persistence at all (no AOF, no RDB snapshots).
    pub fn aof(mut self, on: bool) -> Self {
        self.aof = on;
        self
    }

    /// Start in cluster mode (`cluster-enabled yes`), for [`RedisCluster`].
    fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Starts the server and waits until it answers `PING`.
    pub async fn start(self) -> io::Result<RedisServer> {
        let binary = find_binary("redis-server")?;
        let port = match self.port {
            Some(port) => port,
            None => free_port(self.cluster)?,
        };
        let dir = TempDir::new()?;
        let mut server = RedisServer {
            binary,
            port,
            dir,
            options: self,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }
}

/// A `redis-server` on `127.0.0.1`, killed (and its directory removed)
/// when dropped.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: TempDir,
    options: RedisServerBuilder,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence on a free port.
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// Options (persistence).
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory (AOF, cluster config, log).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Kills it (`SIGKILL`: no shutdown save) and waits for it to exit.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it if it runs, then starts it again on the same port with the
    /// same data directory (with AOF, the data comes back) and waits until
    /// it answers `PING`.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Sends one command and returns its reply as text (arrays one item a
    /// line, nil as an empty string). An error reply is an error.
    pub async fn command(&self, args: &[&str]) -> io::Result<String> {
        command(self.port, args).await
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let dir = self.dir.0.to_string_lossy().into_owned();
        let port = self.port.to_string();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            "--save",
            "",
        ];
        if self.options.aof {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        if self.options.cluster {
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run {}: {e}", self.binary.display()),
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(io::Error::other(format!(
                        "redis-server on port {} exited at start ({status}); its log says: {}",
                        self.port,
                        self.log_tail()
                    )));
                }
            }
            if let Ok(reply) = command(self.port, &["PING"]).await {
                if reply == "PONG" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not answer PING within {START_DEADLINE:?}; its log says: {}",
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.0.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of masters on `127.0.0.1` (no replicas), stopped when
/// dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` servers (at least 3, as `redis-cli --cluster create`
    /// requires) in cluster mode, joins them with the slots spread evenly,
    /// and waits until every node says `cluster_state:ok` with all 16384
    /// slots covered.
    pub async fn start(masters: usize) -> io::Result<Self> {
        if masters < 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Redis Cluster needs at least 3 masters",
            ));
        }
        let cli = find_binary("redis-cli")?;
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(RedisServer::builder().cluster().start().await?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new(cli);
        create
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = run_with_deadline(create, CLUSTER_DEADLINE).await?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        let cluster = Self { nodes };
        cluster.wait_until_ok().await?;
        Ok(cluster)
    }

    /// `redis-cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// The masters.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    async fn wait_until_ok(&self) -> io::Result<()> {
        let deadline = Instant::now() + CLUSTER_DEADLINE;
        let expected_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut ready = true;
            let mut last = String::new();
            for node in &self.nodes {
                let info = node.command(&["CLUSTER", "INFO"]).await.unwrap_or_default();
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&expected_nodes);
                if !ok {
                    ready = false;
                    last = info;
                    break;
                }
            }
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the Redis Cluster was not ok within {CLUSTER_DEADLINE:?}: {}",
                        last.replace("\r\n", " ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs a command to its end, killing it at the deadline.
async fn run_with_deadline(
    mut command: Command,
    deadline: Duration,
) -> io::Result<std::process::Output> {
    let mut child = command.spawn()?;
    let until = Instant::now() + deadline;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{command:?} did not finish within {deadline:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `name` on the `PATH`, or where Debian puts it; a clear error if absent.
fn find_binary(name: &str) -> io::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{name} is not installed: run ./test.sh (it installs it) or `apt install redis-server`"
        ),
    ))
}

/// A free loopback port; for a cluster node also with `port + 10000` (its
/// cluster bus port) free.
fn free_port(cluster: bool) -> io::Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if !cluster {
            return Ok(port);
        }
        let Some(bus) = port.checked_add(10_000) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port pair for a cluster node"))
}

/// A directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            "holdfast-redis-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One command over a fresh connection (RESP), its reply as text.
async fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader).await
    };
    tokio::time::timeout(COMMAND_DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("redis on port {port} did not answer {args:?}"),
            ))
        })
}

/// One RESP2 reply.
async fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "redis closed the connection",
        ));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad reply line {line:?}"),
        )
    };
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(format!("redis error: {rest}"))),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            let Ok(len) = usize::try_from(len) else {
                return Ok(String::new());
            };
            let mut body = vec![0u8; len + 2];
            reader.read_exact(&mut body).await?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        "*" => {
            let count: i64 = rest.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..count.max(0) {
                items.push(Box::pin(read_reply(reader)).await?);
            }
            Ok(items.join("\n"))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let error = find_binary("holdfast-no-such-redis-server").err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("./test.sh") && message.contains("apt install redis-server"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_cluster_needs_three_masters() {
        let error = RedisCluster::start(2).await.err().map(|e| e.kind());
        assert_eq!(error, Some(io::ErrorKind::InvalidInput));
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus_port() {
        for _ in 0..20 {
            let port = free_port(true).unwrap_or(u16::MAX);
            assert!(port <= u16::MAX - 10_000, "{port}");
        }
    }

    #[tokio::test]
    async fn a_server_starts_answers_restarts_and_cleans_up() {
        let mut server = match RedisServer::start().await {
            Ok(server) => server,
            Err(error) => panic!("{error}"),
        };
        let dir = server.dir().to_owned();
        assert!(server.command(&["SET", "k", "v"]).await.is_ok());
        server.restart().await.unwrap_or_else(|e| panic!("{e}"));
        // No persistence by default: the key is gone after a restart.
        assert_eq!(
            server.command(&["GET", "k"]).await.ok(),
            Some(String::new())
        );
        server.kill();
        assert!(server.command(&["PING"]).await.is_err());
        drop(server);
        assert!(!dir.exists(), "the data directory was not removed");
    }
}
