//! One downstream connection, start to end, in one task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::Shared;
use crate::behavior::Behavior;
use crate::head::{self, HeadError, RequestHead};

/// How long the proxy waits to reach an upstream.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the proxy keeps reading (and dropping) what a client still
/// sends after the proxy answered it itself, so that closing does not reset
/// the connection under the answer.
const LINGER: Duration = Duration::from_secs(1);
const CHUNK: usize = 16 * 1024;

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Normally, or because a peer went away.
    Done,
    /// The proxy cut it (behaviour, age, `cut_all`): both sockets closed.
    Cut,
    /// The proxy reset it (behaviour): both sockets reset.
    Reset,
    /// A peer reset its side: the other side is reset too.
    Abort,
}

/// What a byte limit does once reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Cut,
    Reset,
    Silence,
}

/// Where a request goes.
enum Route {
    /// The reverse-proxy upstream.
    Addr(SocketAddr),
    /// A named host (forward proxy), loopback only.
    Named(String, u16),
    /// Already connected (inside a `CONNECT` tunnel).
    Stream(TcpStream),
}

/// What the proxy's commands ([`Proxy::cut_paths`](crate::Proxy::cut_paths),
/// [`Proxy::silence_tunnels`](crate::Proxy::silence_tunnels)) reach in a
/// live connection.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// The request's path, once its head was read.
    path: OnceLock<String>,
    /// Forwarding stopped (after an upgrade).
    silent: AtomicBool,
    /// The connection became a tunnel (upgrade or raw `CONNECT`).
    tunneled: AtomicBool,
    /// Ends the connection (a stored permit: no wake-up is lost).
    kicked: Notify,
}

impl Control {
    pub(crate) fn path(&self) -> Option<&str> {
        self.path.get().map(String::as_str)
    }

    pub(crate) fn cut(&self) {
        self.kicked.notify_one();
    }

    /// Silences the connection if it is a tunnel.
    pub(crate) fn silence_tunnel(&self) {
        if self.tunneled.load(Ordering::Relaxed) {
            self.silent.store(true, Ordering::Relaxed);
        }
    }
}

/// Takes a connection out of the registry when its task ends or is aborted.
struct Registered<'a>(&'a Shared, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

/// Counts a request as open until its connection ends.
struct Open<'a> {
    shared: &'a Shared,
    path: String,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.shared.update(|s| {
            if let Some(n) = s.open.get_mut(&self.path) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.open.remove(&self.path);
                }
            }
        });
    }
}

/// Whether a request target's query holds `probe=1`.
fn is_probe(target: &str) -> bool {
    target
        .split_once('?')
        .is_some_and(|(_, query)| query.split(['&', '#']).any(|pair| pair == "probe=1"))
}

/// The state of one connection, shared by its two directions.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    index: u64,
    started: Instant,
    /// Bytes written downstream.
    down: AtomicU64,
    /// Bytes written upstream.
    up: AtomicU64,
    /// For a request with a body: where the body starts in `up`, and the
    /// request's path.
    body: OnceLock<(u64, String)>,
    control: Arc<Control>,
    /// When the tunnel (upgrade) began, and `down` at that moment.
    tunnel: OnceLock<(Instant, u64)>,
    tunnel_began: Notify,
}

/// Runs one accepted connection to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut client: TcpStream,
    index: u64,
    cuts: watch::Receiver<u64>,
) {
    let _ = client.set_nodelay(true);
    let control = Arc::new(Control::default());
    shared.register(index, control.clone());
    let _registered = Registered(&shared, index);
    let conn = Conn {
        shared: shared.clone(),
        index,
        started: Instant::now(),
        down: AtomicU64::new(0),
        up: AtomicU64::new(0),
        body: OnceLock::new(),
        control,
        tunnel: OnceLock::new(),
        tunnel_began: Notify::new(),
    };
    let end = tokio::select! {
        end = conn.serve(&mut client) => end,
        end = conn.watch_cuts(cuts) => end,
    };
    tracing::debug!(connection = index, ?end, "connection ended");
    if matches!(end, End::Reset | End::Abort) {
        let _ = client.set_zero_linger();
    }
    if matches!(end, End::Cut | End::Reset) {
        conn.shared.update(|s| s.cut += 1);
    }
}

/// A 64-bit mixer (splitmix64), for seeded cuts.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Conn {
    fn behavior(&self) -> Arc<Behavior> {
        self.shared.behavior.borrow().clone()
    }

    fn silent(&self) -> bool {
        self.control.silent.load(Ordering::Relaxed)
    }

    fn silence(&self) {
        if !self.control.silent.swap(true, Ordering::Relaxed) {
            tracing::debug!(connection = self.index, "tunnel silenced");
        }
    }

    fn start_tunnel(&self) {
        let _ = self
            .tunnel
            .set((Instant::now(), self.down.load(Ordering::Relaxed)));
        self.control.tunneled.store(true, Ordering::Relaxed);
        self.tunnel_began.notify_waiters();
    }

    /// This connection's cut limits under `b` (randomized when seeded).
    fn cut_limits(&self, b: &Behavior) -> (Option<u64>, Option<Duration>) {
        let Some(cut) = b.cut else {
            return (None, None);
        };
        let Some(seed) = cut.seed else {
            return (cut.after.bytes, cut.after.time);
        };
        let r1 = mix(seed ^ mix(self.index));
        let r2 = mix(r1);
        let bytes = cut.after.bytes.map(|n| if n == 0 { 0 } else { 1 + r1 % n });
        let time = cut.after.time.map(|t| {
            let us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX - 1);
            Duration::from_micros(r2 % (us + 1))
        });
        (bytes, time)
    }

    /// The earliest byte limit under `b`: its absolute `down` count and
    /// what it does.
    fn byte_limit(&self, b: &Behavior) -> Option<(u64, Action)> {
        let mut best: Option<(u64, Action)> = None;
        let mut consider = |at: Option<u64>, action| {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, action));
                }
            }
        };
        consider(self.cut_limits(b).0, Action::Cut);
        if let Some(&(_, base)) = self.tunnel.get() {
            let after = |a: Option<crate::After>| a.and_then(|a| a.bytes).map(|n| base + n);
            consider(after(b.reset_after_upgrade), Action::Reset);
            if !self.silent() {
                consider(after(b.silence_after_upgrade), Action::Silence);
            }
        }
        best
    }

    /// Writes `data` downstream under the current behaviour: latency, byte
    /// limits (the chunk is split exactly at a limit), silence, counters.
    async fn write_down<W>(&self, w: &mut W, data: &[u8]) -> Result<(), End>
    where
        W: AsyncWrite + Unpin,
    {
        if self.silent() {
            return Ok(());
        }
        let b = self.behavior();
        if !data.is_empty() && !b.latency.is_zero() {
            sleep(b.latency).await;
        }
        let sent = self.down.load(Ordering::Relaxed);
        let (data, action) = match self.byte_limit(&b) {
            Some((at, action)) if at <= sent + data.len() as u64 => {
                let allowed = usize::try_from(at.saturating_sub(sent)).unwrap_or(0);
                (&data[..allowed.min(data.len())], Some(action))
            }
            _ => (data, None),
        };
        if !data.is_empty() {
            if w.write_all(data).await.is_err() {
                return Err(End::Done);
            }
            let n = data.len() as u64;
            self.down.fetch_add(n, Ordering::Relaxed);
            self.shared.update(|s| s.bytes_down += n);
        }
        match action {
            None => Ok(()),
            Some(Action::Cut) => Err(End::Cut),
            Some(Action::Reset) => Err(End::Reset),
            Some(Action::Silence) => {
                self.silence();
                Ok(())
            }
        }
    }

    /// Writes `data` upstream (latency, silence, counters). False when the
    /// upstream cannot take it any more.
    async fn write_up<W>(&self, w: &mut W, data: &[u8]) -> bool
    where
        W: AsyncWrite + Unpin,
    {
        if self.silent() || data.is_empty() {
            return true;
        }
        let latency = self.behavior().latency;
        if !latency.is_zero() {
            sleep(latency).await;
        }
        if self.silent() {
            return true;
        }
        if w.write_all(data).await.is_err() {
            return false;
        }
        let n = data.len() as u64;
        let total = self.up.fetch_add(n, Ordering::Relaxed) + n;
        let body = self.body.get().filter(|_| self.tunnel.get().is_none());
        self.shared.update(|s| {
            s.bytes_up += n;
            if let Some((start, path)) = body {
                let size = total.saturating_sub(*start);
                match s.largest_body.get_mut(path) {
                    Some(largest) => *largest = (*largest).max(size),
                    None => {
                        s.largest_body.insert(path.clone(), size);
                    }
                }
            }
        });
        true
    }

    /// Upstream → client until the upstream's end, which is passed on
    /// (unless silent).
    async fn pump_down<R, W>(&self, r: &mut R, w: &mut W) -> Result<(), End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => self.write_down(w, &buf[..n]).await?,
                Err(_) if self.silent() => break,
                Err(_) => return Err(End::Abort),
            }
        }
        if !self.silent() {
            let _ = w.shutdown().await;
        }
        Ok(())
    }

    /// Like [`pump_down`](Self::pump_down), releasing the body in blocks of
    /// at least `n` bytes.
    async fn pump_down_buffered<R, W>(
        &self,
        r: &mut R,
        w: &mut W,
        mut held: Vec<u8>,
        n: usize,
    ) -> Result<(), End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let n = n.max(1);
        loop {
            if held.len() >= n {
                self.write_down(w, &held).await?;
                held.clear();
            }
            held.reserve(CHUNK);
            match r.read_buf(&mut held).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => return Err(End::Abort),
            }
        }
        self.write_down(w, &held).await?;
        let _ = w.shutdown().await;
        Ok(())
    }

    /// Client → upstream until the client's end, which is passed on (unless
    /// silent). Stops quietly when the upstream stops taking data.
    async fn pump_up<R, W>(&self, r: &mut R, w: &mut W) -> Result<(), End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if !self.write_up(w, &buf[..n]).await {
                        return Ok(());
                    }
                }
                Err(_) if self.silent() => break,
                Err(_) => return Err(End::Abort),
            }
        }
        if !self.silent() {
            let _ = w.shutdown().await;
        }
        Ok(())
    }

    /// Ends the connection for the cut behaviour's age limit, `cut_all`,
    /// or a cut byte limit that a behaviour change made already passed.
    async fn watch_cuts(&self, mut cuts: watch::Receiver<u64>) -> End {
        let mut behavior = self.shared.behavior.subscribe();
        loop {
            let b = behavior.borrow_and_update().clone();
            let (bytes, time) = self.cut_limits(&b);
            if bytes.is_some_and(|n| self.down.load(Ordering::Relaxed) >= n) {
                return End::Cut;
            }
            let deadline = time.map(|t| self.started + t);
            tokio::select! {
                _ = sleep_opt(deadline) => return End::Cut,
                _ = cuts.changed() => return End::Cut,
                _ = self.control.kicked.notified() => return End::Cut,
                changed = behavior.changed() => {
                    if changed.is_err() {
                        return End::Cut;
                    }
                }
            }
        }
    }

    /// Once a tunnel began, applies the time limits of silence and reset
    /// (and byte limits a behaviour change made already passed).
    async fn tunnel_control(&self) -> End {
        let (began, base) = loop {
            let notified = self.tunnel_began.notified();
            if let Some(&t) = self.tunnel.get() {
                break t;
            }
            notified.await;
        };
        let mut behavior = self.shared.behavior.subscribe();
        loop {
            let b = behavior.borrow_and_update().clone();
            let since = self.down.load(Ordering::Relaxed).saturating_sub(base);
            let reset = b.reset_after_upgrade.unwrap_or_default();
            let silence = b.silence_after_upgrade.unwrap_or_default();
            if reset.bytes.is_some_and(|n| since >= n) {
                return End::Reset;
            }
            if silence.bytes.is_some_and(|n| since >= n) {
                self.silence();
            }
            let reset_at = reset.time.map(|t| began + t);
            let silence_at = silence.time.filter(|_| !self.silent()).map(|t| began + t);
            tokio::select! {
                _ = sleep_opt(reset_at) => return End::Reset,
                _ = sleep_opt(silence_at) => self.silence(),
                changed = behavior.changed() => {
                    if changed.is_err() {
                        return End::Cut;
                    }
                }
            }
        }
    }

    /// Answers the client with the proxy's own HTML page and closes.
    async fn answer(&self, client: &mut TcpStream, status: u16, detail: &str) -> End {
        tracing::debug!(connection = self.index, status, detail, "proxy answers");
        self.respond(client, &head::error_page(status, detail))
            .await
    }

    /// Sends the client `response` (whole) and closes.
    async fn respond(&self, client: &mut TcpStream, response: &[u8]) -> End {
        if let Err(end) = self.write_down(client, response).await {
            return end;
        }
        let _ = client.shutdown().await;
        // Drain what the client still sends (a request body), so the close
        // does not turn into a reset that could destroy the answer.
        let _ = timeout(LINGER, async {
            let mut sink = [0u8; 4096];
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        End::Done
    }

    /// Reads the first request head and dispatches it.
    async fn serve(&self, client: &mut TcpStream) -> End {
        let mut buf = Vec::with_capacity(4096);
        let (mut head, n) = match head::read_head(client, &mut buf, head::parse_request).await {
            Ok(Some(found)) => found,
            Ok(None) | Err(HeadError::Io | HeadError::Truncated) => return End::Done,
            Err(HeadError::Bad(status)) => {
                return self
                    .answer(client, status, "The proxy could not parse the request.")
                    .await;
            }
        };
        let rest = buf.split_off(n);
        if head.method.eq_ignore_ascii_case("CONNECT") {
            return self.connect(client, head, rest).await;
        }
        if head.target.starts_with('/') {
            let Some(upstream) = self.shared.upstream_for(head::path_of(&head.target)) else {
                return self
                    .answer(
                        client,
                        502,
                        "This proxy has no upstream for origin-form requests.",
                    )
                    .await;
            };
            return self
                .request(client, head, rest, Route::Addr(upstream), None)
                .await;
        }
        let Some(absolute) = head::parse_absolute(&head.target) else {
            return self
                .answer(client, 400, "Unsupported request target.")
                .await;
        };
        head.target = absolute.origin;
        self.request(
            client,
            head,
            rest,
            Route::Named(absolute.host, absolute.port),
            Some(absolute.host_header),
        )
        .await
    }

    /// `CONNECT host:port`: refuse, or tunnel. Plain HTTP inside the tunnel
    /// is handled like any request (so every behaviour applies to it); other
    /// payloads (TLS) are relayed raw, as a tunnel that began at the `200`.
    async fn connect(&self, client: &mut TcpStream, head: RequestHead, rest: Vec<u8>) -> End {
        self.shared.update(|s| s.connects += 1);
        if let Some(status) = self.behavior().refuse_connect {
            return self
                .answer(client, status, "CONNECT is not allowed through this proxy.")
                .await;
        }
        let Some((host, port)) = head::parse_authority(&head.target) else {
            return self
                .answer(client, 400, "CONNECT needs a host:port target.")
                .await;
        };
        let mut upstream = match dial(&host, port).await {
            Ok(s) => s,
            Err(e) => return self.answer(client, 502, &e).await,
        };
        if let Err(end) = self
            .write_down(client, b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
        {
            return end;
        }
        let mut buf = rest;
        if buf.is_empty() {
            buf.reserve(CHUNK);
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return End::Done,
                Ok(_) => {}
            }
        }
        if buf[0].is_ascii_alphabetic() {
            let (head, n) = match head::read_head(client, &mut buf, head::parse_request).await {
                Ok(Some(found)) => found,
                Ok(None) | Err(HeadError::Io | HeadError::Truncated) => return End::Done,
                Err(HeadError::Bad(status)) => {
                    return self
                        .answer(client, status, "The proxy could not parse the request.")
                        .await;
                }
            };
            let rest = buf.split_off(n);
            return self
                .request(client, head, rest, Route::Stream(upstream), None)
                .await;
        }
        self.start_tunnel();
        let end = self.relay(client, &mut upstream, &buf, None).await;
        if matches!(end, End::Reset | End::Abort) {
            let _ = upstream.set_zero_linger();
        }
        end
    }

    /// One request: count it, answer it from the proxy, or forward it.
    async fn request(
        &self,
        client: &mut TcpStream,
        head: RequestHead,
        rest: Vec<u8>,
        route: Route,
        host: Option<String>,
    ) -> End {
        let origin = match head::parse_absolute(&head.target) {
            Some(a) => a.origin,
            None => head.target.clone(),
        };
        let path = head::path_of(&origin).to_owned();
        let upgrade = head::is_upgrade(&head);
        let probe = is_probe(&origin);
        let _ = self.control.path.set(path.clone());
        self.shared.update(|s| {
            *s.requests.entry(path.clone()).or_default() += 1;
            if upgrade {
                s.upgrade_requests += 1;
            }
            if probe {
                s.probes += 1;
            }
            let open = s.open.entry(path.clone()).or_default();
            *open += 1;
            let open = *open;
            let max = s.max_open.entry(path.clone()).or_default();
            *max = (*max).max(open);
        });
        let _open = Open {
            shared: &self.shared,
            path: path.clone(),
        };
        if let Some(response) = self.shared.take_answer(&head.method, &path) {
            tracing::debug!(
                connection = self.index,
                "an installed answer takes the request"
            );
            return self.respond(client, &response).await;
        }
        let b = self.behavior();
        if let Some(page) = b.error_page.as_ref().filter(|p| p.paths.matches(&path)) {
            let detail = match page.status {
                504 => "The upstream server did not answer in time.",
                _ => "The proxy received an invalid response from an upstream server.",
            };
            return self.answer(client, page.status, detail).await;
        }
        let upgrade = upgrade && !b.strip_upgrade;
        if upgrade {
            if let Some(status) = b.refuse_upgrade {
                return self
                    .answer(client, status, "WebSocket connections are not allowed.")
                    .await;
            }
            tokio::time::sleep(b.upgrade_delay).await;
        }
        let buffer = b
            .buffer
            .as_ref()
            .filter(|x| x.paths.matches(&path))
            .map(|x| x.bytes);
        let mut upstream = match route {
            Route::Stream(s) => s,
            Route::Addr(addr) => match timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                _ => {
                    return self
                        .answer(client, 502, &format!("Could not connect to {addr}."))
                        .await;
                }
            },
            Route::Named(host, port) => match dial(&host, port).await {
                Ok(s) => s,
                Err(e) => return self.answer(client, 502, &e).await,
            },
        };
        let _ = upstream.set_nodelay(true);
        let mut first = head::forward_request(&head, &origin, host.as_deref(), upgrade);
        if !upgrade {
            let _ = self.body.set((first.len() as u64, path));
        }
        first.extend_from_slice(&rest);
        let end = self
            .relay(client, &mut upstream, &first, Some(buffer))
            .await;
        if matches!(end, End::Reset | End::Abort) {
            let _ = upstream.set_zero_linger();
        }
        end
    }

    /// Moves bytes both ways. `http` is `Some(buffering)` when the upstream
    /// answers with an HTTP response (which may turn into a tunnel with a
    /// 101), `None` for a raw tunnel. `first` goes upstream first.
    async fn relay(
        &self,
        client: &mut TcpStream,
        upstream: &mut TcpStream,
        first: &[u8],
        http: Option<Option<usize>>,
    ) -> End {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = async {
            if !self.write_up(&mut uw, first).await {
                return Ok(());
            }
            self.pump_up(&mut cr, &mut uw).await
        };
        let down = async {
            match http {
                Some(buffer) => self.response(&mut ur, &mut cw, buffer).await,
                None => {
                    self.write_down(&mut cw, &[]).await?;
                    self.pump_down(&mut ur, &mut cw).await
                }
            }
        };
        let work = async {
            tokio::pin!(up, down);
            let mut up_done = false;
            let down_result = loop {
                tokio::select! {
                    result = &mut down => break result,
                    result = &mut up, if !up_done => {
                        if let Err(end) = result {
                            return end;
                        }
                        up_done = true;
                    }
                }
            };
            if let Err(end) = down_result {
                return end;
            }
            // An HTTP response ends the connection; a tunnel lasts until
            // both directions ended.
            if self.tunnel.get().is_none() || up_done {
                return End::Done;
            }
            match up.await {
                Ok(()) => End::Done,
                Err(end) => end,
            }
        };
        tokio::select! {
            end = work => end,
            end = self.tunnel_control() => end,
        }
    }

    /// Reads the response head(s) and forwards the response, or the tunnel
    /// after a 101.
    async fn response<R, W>(&self, ur: &mut R, cw: &mut W, buffer: Option<usize>) -> Result<(), End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            let (head, n) = match head::read_head(ur, &mut buf, head::parse_response).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    let page = head::error_page(
                        502,
                        "The upstream server closed the connection without answering.",
                    );
                    self.write_down(cw, &page).await?;
                    let _ = cw.shutdown().await;
                    return Ok(());
                }
                Err(HeadError::Bad(_) | HeadError::Truncated) => {
                    let page = head::error_page(502, "The upstream server sent an invalid answer.");
                    self.write_down(cw, &page).await?;
                    let _ = cw.shutdown().await;
                    return Ok(());
                }
                Err(HeadError::Io) => return Err(End::Abort),
            };
            let rest = buf.split_off(n);
            if head.code == 101 {
                self.shared.update(|s| s.upgrades += 1);
                self.write_down(cw, &buf).await?;
                self.start_tunnel();
                self.write_down(cw, &rest).await?;
                return self.pump_down(ur, cw).await;
            }
            if (100..200).contains(&head.code) {
                self.write_down(cw, &buf).await?;
                buf = rest;
                continue;
            }
            self.write_down(cw, &head::forward_response(&head)).await?;
            return match buffer {
                Some(n) => self.pump_down_buffered(ur, cw, rest, n).await,
                None => {
                    self.write_down(cw, &rest).await?;
                    self.pump_down(ur, cw).await
                }
            };
        }
    }
}

/// Connects to `host:port` for the forward proxy, loopback addresses only.
async fn dial(host: &str, port: u16) -> Result<TcpStream, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addrs = match timeout(DIAL_TIMEOUT, tokio::net::lookup_host((bare, port))).await {
        Ok(Ok(addrs)) => addrs.filter(|a| a.ip().is_loopback()).collect::<Vec<_>>(),
        _ => return Err(format!("Could not resolve {host}.")),
    };
    if addrs.is_empty() {
        return Err(format!(
            "{host} is not a loopback address: this test proxy only forwards to loopback."
        ));
    }
    for addr in addrs {
        if let Ok(Ok(stream)) = timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
            let _ = stream.set_nodelay(true);
            return Ok(stream);
        }
    }
    Err(format!("Could not connect to {host}:{port}."))
}
