//! Real nginx in front of an in-process holdfast server, for the tests in
//! `nginx`, `nginx_report` and the cluster tests.
//!
//! [`Nginx::start`] writes a configuration into a fresh temporary
//! directory (pid, logs and every temp path inside it), runs
//! `nginx -p <dir> -c <dir>/nginx.conf` in the foreground as one process
//! (`daemon off; master_process off;`) on a free loopback port, and waits
//! until that very instance answers. Dropping the [`Nginx`] kills it (even
//! when the test panics) and, if the test failed, prints nginx's error and
//! access logs.
//!
//! nginx cannot listen on port 0, so a free port is found by binding
//! `127.0.0.1:0` and releasing it; if another process takes it in between,
//! nginx fails to bind and the start is retried on a new port.
//!
//! Missing nginx is a failure, not a skip: `./test.sh` installs it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How nginx is configured in front of holdfast.
#[derive(Clone, Debug)]
pub enum Profile {
    /// What a proxy configured for plain web pages does: `Upgrade` and
    /// `Connection` are not forwarded, HTTP/1.0 to the upstream, response
    /// buffering on with the default buffer sizes, default timeouts.
    Corporate,
    /// [`Profile::Corporate`], and it also ignores `X-Accel-Buffering`
    /// (`proxy_ignore_headers X-Accel-Buffering`), so nothing can turn its
    /// buffering off: what a buffering proxy that is not nginx does.
    CorporateStrict,
    /// What the README recommends: upgrades forwarded over HTTP/1.1,
    /// buffering off, long read timeouts.
    WellConfigured,
    /// Upgrades forwarded and buffering off, but nginx's default `Host`
    /// (the upstream's address) with what the browser asked for in
    /// `X-Forwarded-Host` and `X-Forwarded-Proto`, and the client's address
    /// appended to `X-Forwarded-For`: what holdfast needs
    /// `Builder::trusted_proxies` for.
    Forwarding,
    /// [`Profile::WellConfigured`] with `proxy_read_timeout` and
    /// `proxy_send_timeout` of this long: nginx cuts a proxied connection
    /// on which the upstream sent nothing for that long.
    Impatient(Duration),
}

impl Profile {
    /// The `location` directives of this profile.
    fn directives(&self) -> String {
        match self {
            Profile::Corporate => "\
            # No Upgrade/Connection forwarding, HTTP/1.0 to the upstream,\n\
            # buffering on with default buffer sizes and timeouts.\n\
            proxy_http_version 1.0;\n\
            proxy_buffering on;\n"
                .into(),
            Profile::CorporateStrict => "\
            proxy_http_version 1.0;\n\
            proxy_buffering on;\n\
            proxy_ignore_headers X-Accel-Buffering;\n"
                .into(),
            Profile::WellConfigured => well_configured("1h"),
            Profile::Forwarding => "\
            proxy_http_version 1.1;\n\
            proxy_set_header Upgrade $http_upgrade;\n\
            proxy_set_header Connection $connection_upgrade;\n\
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
            proxy_set_header X-Forwarded-Host $http_host;\n\
            proxy_set_header X-Forwarded-Proto $scheme;\n\
            proxy_buffering off;\n"
                .into(),
            Profile::Impatient(timeout) => well_configured(&format!("{}ms", timeout.as_millis())),
        }
    }

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Profile::Corporate => "corporate default".into(),
            Profile::CorporateStrict => "corporate, ignores X-Accel-Buffering".into(),
            Profile::WellConfigured => "well configured".into(),
            Profile::Forwarding => "forwarding (default Host, X-Forwarded-*)".into(),
            Profile::Impatient(t) => format!("impatient (proxy_read_timeout {t:?})"),
        }
    }
}

fn well_configured(read_timeout: &str) -> String {
    format!(
        "\
        proxy_http_version 1.1;\n\
        proxy_set_header Upgrade $http_upgrade;\n\
        proxy_set_header Connection $connection_upgrade;\n\
        proxy_set_header Host $host;\n\
        proxy_buffering off;\n\
        proxy_cache off;\n\
        proxy_read_timeout {read_timeout};\n\
        proxy_send_timeout {read_timeout};\n"
    )
}

/// A running nginx. Killed when dropped.
pub struct Nginx {
    child: Child,
    dir: PathBuf,
    /// Where nginx listens.
    pub addr: SocketAddr,
    /// The path prefix this instance proxies (`/<token>`), so that URLs are
    /// unique per instance even if a port is reused later in the process.
    prefix: String,
    profile: Profile,
}

/// Where nginx is: on `PATH`, or in `/usr/sbin` (not on a normal user's
/// `PATH` on Debian). Panics with what to do when it is missing.
pub fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "nginx is not installed, and these tests need a real nginx: run ./test.sh \
             (it installs nginx when missing), or `apt-get install -y nginx`"
        )
    })
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl Nginx {
    /// Starts nginx with `profile` in front of the holdfast server at
    /// `upstream` (mounted at `/realtime`). Panics (with nginx's error log)
    /// if it cannot start.
    pub async fn start(profile: Profile, upstream: SocketAddr) -> Nginx {
        Self::start_balanced(profile, &[upstream]).await
    }

    /// Starts nginx with `profile` in front of several holdfast nodes,
    /// balancing requests over them round-robin with no affinity (nginx's
    /// default), as a load balancer that knows nothing of sessions does.
    /// A node that refuses connections is skipped for a second.
    pub async fn start_balanced(profile: Profile, upstreams: &[SocketAddr]) -> Nginx {
        let binary = nginx_binary();
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let token = format!("n{}x{instance}x{:08x}", std::process::id(), random_u32());
        let mut last_error = String::new();
        for attempt in 0..5 {
            let dir = std::env::temp_dir().join(format!("holdfast-nginx-{token}-{attempt}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create nginx temp dir");
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let prefix = format!("/{token}");
            let conf = config(&dir, addr, upstreams, &prefix, &token, &profile);
            std::fs::write(dir.join("nginx.conf"), &conf).expect("write nginx.conf");
            let child = Command::new(&binary)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(dir.join("stderr.log"))
                        .map(Stdio::from)
                        .unwrap_or_else(|_| Stdio::null()),
                )
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            let mut nginx = Nginx {
                child,
                dir,
                addr,
                prefix,
                profile: profile.clone(),
            };
            match nginx.wait_ready(&token).await {
                Ok(()) => return nginx,
                Err(why) => {
                    // Dropping it kills it; a port collision is retried.
                    last_error = format!("{why}\n{}", nginx.logs());
                    let collided = last_error.contains("Address already in use");
                    drop(nginx);
                    if !collided {
                        break;
                    }
                }
            }
        }
        panic!("nginx did not start:\n{last_error}");
    }

    /// Waits until this instance (not some other process that took the
    /// port) answers its readiness location with `token`.
    async fn wait_ready(&mut self, token: &str) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("nginx exited at start: {status}"));
            }
            if let Ok(body) = get_raw(self.addr, "/__holdfast_ready").await
                && body.contains(token)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("nginx did not answer within 15 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The holdfast URL through this nginx (`http://127.0.0.1:<port>/<token>/realtime`).
    pub fn url(&self) -> String {
        self.url_to("/realtime")
    }

    /// The URL through this nginx of a server mounted at `mount`
    /// (`http://127.0.0.1:<port>/<token><mount>`).
    pub fn url_to(&self, mount: &str) -> String {
        format!("http://{}{}{mount}", self.addr, self.prefix)
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// nginx's access log so far: `<method> <uri> <status> up=<upstream
    /// status> rt=<request time> sent=<bytes>` per finished request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Finished requests to paths ending with `suffix`, as (status,
    /// upstream status) pairs.
    pub fn statuses(&self, suffix: &str) -> Vec<(u16, String)> {
        self.access_log()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let _method = fields.next()?;
                let uri = fields.next()?;
                let status = fields.next()?.parse().ok()?;
                let upstream = fields.next()?.trim_start_matches("up=").to_owned();
                uri.ends_with(suffix).then_some((status, upstream))
            })
            .collect()
    }

    /// Both logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "--- nginx ({}) in {} ---",
            self.profile.name(),
            self.dir.display()
        );
        let _ = writeln!(out, "--- error.log ---\n{}", tail(&self.error_log(), 60));
        let stderr = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        if !stderr.is_empty() {
            let _ = writeln!(out, "--- stderr ---\n{}", tail(&stderr, 20));
        }
        let _ = writeln!(out, "--- access.log ---\n{}", tail(&self.access_log(), 40));
        out
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            eprintln!("(nginx files kept in {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn config(
    dir: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    prefix: &str,
    token: &str,
    profile: &Profile,
) -> String {
    let d = dir.display();
    let directives = profile
        .directives()
        .lines()
        .map(|line| format!("            {}\n", line.trim()))
        .collect::<String>();
    // One node: proxied to directly (nginx's default `Host` is then its
    // address). Several: an upstream group, round-robin.
    let (servers, target) = match upstreams {
        [one] => (String::new(), one.to_string()),
        several => (
            several
                .iter()
                .map(|upstream| format!("        server {upstream} max_fails=1 fail_timeout=1s;\n"))
                .collect::<String>(),
            "holdfast_nodes".to_owned(),
        ),
    };
    let group = if servers.is_empty() {
        String::new()
    } else {
        format!("\n    upstream holdfast_nodes {{\n{servers}    }}\n")
    };
    format!(
        "\
# Written by holdfast's tests/it/nginx_support.rs for profile: {name}
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    log_format holdfast '$request_method $uri $status up=$upstream_status rt=$request_time sent=$bytes_sent';
    access_log {d}/access.log holdfast;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
{group}
    server {{
        listen {listen};

        location = /__holdfast_ready {{
            return 200 '{token}';
        }}

        # {prefix}/realtime/… → http://<a node>/realtime/…
        location {prefix}/ {{
            proxy_pass http://{target}/;
{directives}        }}
    }}
}}
",
        name = profile.name(),
    )
}

/// A loopback port free right now (nginx cannot listen on port 0).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `GET path` over HTTP/1.0; the whole answer. Bounded by a short timeout.
async fn get_raw(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish() as u32
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "… {skip} earlier lines …");
    }
    for line in &all[skip..] {
        let _ = writeln!(out, "{line}");
    }
    out
}
