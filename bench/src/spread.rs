//! Spreading a large load over what one box allows: the open-files limit
//! of each process (raised to its hard limit, more client processes when
//! one cannot hold them all), and the ephemeral ports of one source address
//! (many loopback source addresses, bound before connecting).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{ChildStdin, ChildStdout};

/// File descriptors a process keeps for itself (runtime, pipes, listener,
/// `/proc` reads) on top of its connections.
pub const FD_RESERVE: u64 = 200;

/// Raises this process's soft open-files limit to its hard limit (a
/// process may, without privilege) and returns `(soft, hard)` after.
pub fn raise_nofile() -> (u64, u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(_) => {}
        Err(e) => eprintln!("cannot raise the open-files limit: {e}"),
    }
    rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024))
}

/// The soft open-files limit of process `pid`, from `/proc/<pid>/limits`.
pub fn nofile_of(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Open file descriptors of process `pid` (its connections, mostly).
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Loopback source addresses: `per_addr` clients on each, from
/// 127.1.0.1 upwards (the server listens on 127.0.0.1). One address's
/// ephemeral ports (28 000 here) and a server's per-address open-rate
/// limit are then never what stops the load.
#[derive(Clone, Copy, Debug)]
pub struct Sources {
    /// Clients on each address.
    pub per_addr: usize,
}

impl Sources {
    /// The address of client number `index`.
    pub fn addr(self, index: usize) -> Ipv4Addr {
        let slot = index / self.per_addr.max(1);
        // 250 hosts a /24: never .0 or .255.
        let (net, host) = (slot / 250, slot % 250 + 1);
        let [_, _, b, c] = u32::try_from(net).unwrap_or(u32::MAX).to_be_bytes();
        // 127.1.0.x, 127.1.1.x, …, 127.2.0.x: all of 127/8 is loopback.
        Ipv4Addr::new(127, b.saturating_add(1), c, host as u8)
    }
}

/// Connects to `dst` from `src` (bound first, port chosen by the kernel).
pub async fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(src.into(), 0))?;
    let tcp = socket.connect(dst).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// How many processes hold `connections` when each may hold
/// `limit - FD_RESERVE`.
pub fn processes_for(connections: u64, limit: u64) -> u64 {
    let each = limit.saturating_sub(FD_RESERVE).max(1);
    connections.div_ceil(each).max(1)
}

/// A load process: this executable re-run with other arguments, pinned to
/// a CPU, talking in lines (stdin: commands; stdout: reports). Closing
/// its stdin ends it.
pub struct Worker {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Its process id, for `/proc`.
    pub pid: u32,
}

impl Worker {
    /// Starts `holdfast-bench <args…>` on `cpu` (when `taskset` works).
    pub fn spawn(args: &[String], cpu: Option<usize>) -> Result<Self, String> {
        let (mut child, lines, pid) = crate::process::spawn_piped(args, cpu, "a load process")?;
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
            pid,
        })
    }

    /// The next line that starts with `prefix` (its rest); `ERROR …` from
    /// the worker, its exit or `timeout` are errors.
    pub async fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .map_err(|_| format!("load process {}: no {prefix} within {timeout:?}", self.pid))?
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("load process {} ended before {prefix}", self.pid))?;
            if let Some(error) = line.strip_prefix("ERROR ") {
                return Err(format!("load process {}: {error}", self.pid));
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// The next line, whatever it is (`None` once the worker ended).
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.next_line().await.ok().flatten()
    }

    /// Sends one command line.
    pub async fn say(&mut self, line: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| format!("load process {}: {e}", self.pid))
    }

    /// Ends it: closes its stdin, waits a little, kills it if it lingers.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Reads command lines from stdin (in a worker): `None` at its end.
pub struct Commands(Lines<BufReader<tokio::io::Stdin>>);

impl Commands {
    /// This process's stdin.
    pub fn stdin() -> Self {
        Self(BufReader::new(tokio::io::stdin()).lines())
    }

    /// The next command, `None` once the parent closed stdin.
    pub async fn next(&mut self) -> Option<String> {
        self.0.next_line().await.ok().flatten()
    }
}

/// Prints one report line to the parent, at once.
pub fn report(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_fill_each_address_then_move_on() {
        let s = Sources { per_addr: 2 };
        assert_eq!(s.addr(0), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(s.addr(1), Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(s.addr(2), Ipv4Addr::new(127, 1, 0, 2));
        // The 251st address starts the next /24, skipping .0 and .255.
        assert_eq!(s.addr(500), Ipv4Addr::new(127, 1, 1, 1));
        let far = Sources { per_addr: 1 }.addr(250 * 256);
        assert_eq!(far, Ipv4Addr::new(127, 2, 0, 1));
    }

    #[test]
    fn processes_cover_the_connections() {
        assert_eq!(processes_for(100, 20_000), 1);
        assert_eq!(processes_for(19_800, 20_000), 1);
        assert_eq!(processes_for(19_801, 20_000), 2);
        assert_eq!(processes_for(100_000, 20_000), 6);
        assert_eq!(processes_for(0, 20_000), 1);
    }
}
