//! The example binaries (`echo`, `client`, …) as the tests run them: built
//! by `cargo test --all-targets` next to the test binaries.

use std::path::PathBuf;

/// The path of example `name`'s binary; panics with what to run if it is
/// missing.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --all-targets` builds the examples",
        path.display()
    );
    path
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// One example process serving on a port it keeps across restarts, its
/// standard output kept as its log.
pub struct ExampleNode {
    pub addr: std::net::SocketAddr,
    name: &'static str,
    /// A log line that says the process listens.
    ready: &'static str,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Starts so far.
    pub starts: u32,
}

impl ExampleNode {
    /// Starts example `name` with `--addr` and `args`, and waits until it
    /// logs `ready`.
    pub async fn start(name: &'static str, ready: &'static str, args: &[&str]) -> ExampleNode {
        let mut node = ExampleNode {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
            name,
            ready,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
            log: Default::default(),
            starts: 0,
        };
        node.run().await;
        node
    }

    /// Starts the process (again) and waits until it listens.
    pub async fn run(&mut self) {
        use std::time::Duration;
        use tokio::io::{AsyncBufReadExt, BufReader};
        assert!(self.child.is_none(), "already running");
        let mut last_error = String::new();
        // The port may be taken by another test's process in between.
        for _ in 0..20 {
            let mut child = tokio::process::Command::new(example(self.name))
                .arg("--addr")
                .arg(self.addr.to_string())
                .args(&self.args)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("the {} example starts: {e}", self.name));
            let stdout = child.stdout.take().expect("stdout");
            let stderr = child.stderr.take().expect("stderr");
            let mut lines = BufReader::new(stdout).lines();
            let log = self.log.clone();
            let ready = self.ready;
            let listening = tokio::time::timeout(Duration::from_secs(20), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    let up = line.contains(ready);
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    if up {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            let log = self.log.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
            if listening {
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(_)) = lines.next_line().await {}
                });
                self.child = Some(child);
                self.starts += 1;
                return;
            }
            let mut error = String::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut error),
            )
            .await;
            let _ = child.kill().await;
            last_error = error;
            if !last_error.contains("Address already in use") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "the {} node on {} did not start: {last_error}",
            self.name, self.addr
        );
    }

    /// SIGKILL: the node dies with everything in its memory.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM: the node hands its sessions over, then exits.
    pub async fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let exited = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait()).await;
        assert!(
            exited.is_ok(),
            "the node on {} did not exit within 20 s of SIGTERM",
            self.addr
        );
    }

    /// Log lines containing all of `words`.
    pub fn logged(&self, words: &[&str]) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|line| words.iter().all(|word| line.contains(word)))
            .count()
    }

    /// Its holdfast mount.
    pub fn url(&self) -> String {
        format!("http://{}/realtime", self.addr)
    }
}
