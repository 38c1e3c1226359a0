//! The server as a child process: started pinned to its own core, read
//! from `/proc` (CPU time, resident memory), stopped by closing its stdin.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::serve::ServerKind;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`,
/// 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// A running server process.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pid: u32,
    /// Processes the server leans on (redis-server), whose CPU counts too.
    companions: Vec<u32>,
}

impl ServerProcess {
    /// Starts `holdfast-bench serve <kind>` pinned to CPU `cpu` (when
    /// `taskset` exists and the machine has that CPU).
    pub async fn start(kind: ServerKind, cpu: Option<usize>) -> Result<Self, String> {
        Self::start_with(kind, cpu, &[]).await
    }

    /// Like `start`, with extra arguments after `serve <kind>`.
    pub async fn start_with(
        kind: ServerKind,
        cpu: Option<usize>,
        extra: &[String],
    ) -> Result<Self, String> {
        // `--metrics` reaches every holdfast server of the run, whoever
        // starts it; the raw baseline has nothing to record.
        let metrics =
            (kind == ServerKind::Holdfast && crate::recorder::enabled()).then_some("--metrics");
        let mut args = vec!["serve".to_owned(), kind.arg().to_owned()];
        args.extend(extra.iter().cloned());
        args.extend(metrics.map(str::to_owned));
        Self::start_subcommand(&args, cpu, kind.arg()).await
    }

    /// Starts `holdfast-bench <args…>`, a subcommand that prints
    /// `LISTEN <addr>` and serves until its stdin closes, pinned to CPU
    /// `cpu` (when `taskset` exists and the machine has that CPU).
    pub async fn start_subcommand(
        args: &[String],
        cpu: Option<usize>,
        name: &str,
    ) -> Result<Self, String> {
        let (child, mut lines, pid) = spawn_piped(args, cpu, &format!("the {name} server"))?;
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "the server did not say where it listens")?
            .map_err(|e| e.to_string())?
            .ok_or("the server exited before listening")?;
        let addr = line
            .strip_prefix("LISTEN ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected server line {line:?}"))?;
        Ok(Self {
            child: Some(child),
            addr,
            pid,
            companions: Vec::new(),
        })
    }

    /// A server started elsewhere (its CPU and memory are not read).
    pub fn external(addr: SocketAddr) -> Self {
        Self {
            child: None,
            addr,
            pid: 0,
            companions: Vec::new(),
        }
    }

    /// Its process id (0 for an external server).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills it at once (`SIGKILL`): a crash, or a restart without a
    /// graceful shutdown.
    pub async fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// CPU time (user + system) the server has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(0.0)
    }

    /// Counts `pid`'s CPU time as the server's companion (redis-server).
    pub fn with_companion(mut self, pid: u32) -> Self {
        self.companions.push(pid);
        self
    }

    /// CPU time the companions have used so far, in seconds.
    pub fn companion_cpu_seconds(&self) -> f64 {
        self.companions
            .iter()
            .map(|&pid| cpu_seconds(pid).unwrap_or(0.0))
            .sum()
    }

    /// The CPUs the server may run on (`Cpus_allowed_list`), if known.
    pub fn cpus_allowed(&self) -> Option<String> {
        cpus_allowed(self.pid)
    }

    /// Resident memory now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid).unwrap_or(0)
    }

    /// Stops the server (closing its stdin ends it; killed if it lingers).
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// The runtime of every bench process: one worker thread, so that a
/// process pinned to one core measures that core.
pub(crate) fn one_worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

/// Starts `holdfast-bench <args…>` on `cpu` (see [`self_command`]) with
/// its stdin and stdout piped, killed when dropped: the child, the lines
/// of its stdout and its process id. `what` names it in errors.
pub(crate) fn spawn_piped(
    args: &[String],
    cpu: Option<usize>,
    what: &str,
) -> Result<(Child, ChildLines, u32), String> {
    let mut child = self_command(cpu)?
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let pid = child.id().ok_or(format!("{what} exited at once"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    Ok((child, BufReader::new(stdout).lines(), pid))
}

/// The lines a child writes to its stdout.
pub(crate) type ChildLines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// This program (`holdfast-bench`) as a child command, pinned to `cpu` with
/// `taskset` when it can be.
pub(crate) fn self_command(cpu: Option<usize>) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(match cpu.filter(|_| taskset_available()) {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&exe);
            c
        }
        None => Command::new(&exe),
    })
}

fn taskset_available() -> bool {
    std::path::Path::new("/usr/bin/taskset").exists() && machine_cpus() >= 2
}

/// CPUs the machine has online. Not `available_parallelism`: that counts
/// the CPUs this process may run on, which is one once the load generator
/// has pinned itself (`pin_self`), and the server it starts next would then
/// not be pinned at all and share the generator's core.
fn machine_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| count_cpu_list(&list))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How many CPUs a kernel CPU list (`0-3,6,8-9`) names.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.trim().split(',') {
        count += match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                last.checked_sub(first)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(count)
}

/// Pins this process (the load generator) to `cpu`, best effort.
pub fn pin_self(cpu: usize) {
    if taskset_available() {
        let _ = std::process::Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &cpu.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// The CPUs `pid` may run on, as the kernel lists them (`0-1`).
pub fn cpus_allowed(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line.split_whitespace().nth(1)?.to_owned())
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    /// The server is pinned to its own core even once the generator has
    /// pinned itself to another: the caller's affinity must not decide.
    /// This thread (alone: `taskset -p` on its thread id) is pinned to one
    /// CPU, as `pin_self` pins the generator.
    #[test]
    fn pinning_does_not_depend_on_the_callers_affinity() {
        if !std::path::Path::new("/usr/bin/taskset").exists() || machine_cpus() < 2 {
            return;
        }
        let thread = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        let tid = thread
            .file_name()
            .and_then(|name| name.to_str())
            .expect("a thread id")
            .to_owned();
        let pinned = std::process::Command::new("taskset")
            .args(["-p", "-c", "0", &tid])
            .stdout(Stdio::null())
            .status()
            .expect("taskset runs");
        assert!(pinned.success());
        assert_eq!(
            std::thread::available_parallelism().map(|n| n.get()).ok(),
            Some(1),
            "this thread is pinned"
        );
        assert!(
            taskset_available(),
            "the server would share the caller's CPU"
        );
    }
}
