//! Configuring and opening a connection.

use std::time::Duration;

use holdfast_protocol::connector::{Backoff, ConnectorConfig, SendPolicy};
use holdfast_protocol::{ClientConfig, ClientSession, TransportKind};
use http::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::connection::Connection;
use crate::driver::Driver;
use crate::error::ConnectError;
use crate::net::{Net, tls_config};
use crate::proxy::ProxyConfig;
use crate::shared::{ConnectState, Shared};
use crate::transport::Ctx;

/// Configures a connection to a holdfast server.
///
/// ```no_run
/// use std::time::Duration;
/// use holdfast_client::{ClientBuilder, TransportKind};
///
/// # async fn run() -> Result<(), holdfast_client::ConnectError> {
/// let connection = ClientBuilder::new("https://example.com/realtime")
///     .transports([TransportKind::Sse, TransportKind::LongPoll])
///     .probe_timeout(Duration::from_secs(3))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientBuilder {
    url: String,
    /// The session core's settings (probe timeout, close timeout, limits).
    core: ClientConfig,
    /// The connection policy's settings (transports, backoff, re-probe,
    /// connect timeout).
    policy: ConnectorConfig,
    max_inbound_bytes: usize,
    headers: HeaderMap,
    proxy: Option<ProxyConfig>,
    extra_roots: Vec<Vec<u8>>,
    remember_for: Duration,
    poll_timeout: Duration,
    header_error: Option<String>,
}

impl ClientBuilder {
    /// A builder for the server mounted at `url` (`http://…/realtime` or
    /// `https://…`), with the defaults of the session core
    /// ([`ClientConfig`]) and of the connection policy
    /// ([`ConnectorConfig`]): WebSocket → SSE → long-polling, 2 s probe
    /// timeout, backoff 250 ms → 30 s with jitter, 30 s connect timeout,
    /// proxies from the environment.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            core: ClientConfig::default(),
            policy: ConnectorConfig::default(),
            max_inbound_bytes: 1024 * 1024,
            headers: HeaderMap::new(),
            proxy: None,
            extra_roots: Vec::new(),
            remember_for: Duration::from_secs(600),
            poll_timeout: Duration::from_secs(40),
            header_error: None,
        }
    }

    /// The transports to try, best first (default: WebSocket, SSE,
    /// long-polling).
    pub fn transports(mut self, transports: impl IntoIterator<Item = TransportKind>) -> Self {
        let mut list: Vec<TransportKind> = Vec::new();
        for kind in transports {
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        if !list.is_empty() {
            self.policy.transports = list;
        }
        self
    }

    /// Uses only this transport.
    pub fn transport(self, transport: TransportKind) -> Self {
        self.transports([transport])
    }

    /// A transport whose first frame has not arrived after this long is
    /// unusable (this is how a buffering proxy is caught). Default 2 s.
    ///
    /// That is the deadline of a first attempt on a transport. Attached
    /// again after it carried frames both ways in this session, a transport
    /// gets twice as long, and each greeting timeout in a row doubles the
    /// deadline, up to 8 × this (16 s by default), until an attachment
    /// opens: a server swamped by returning clients is not sent a new
    /// handshake every 2 s by each of them. Probes of a better transport
    /// always wait this long.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.core.probe_timeout = timeout;
        self
    }

    /// How much longer than the server's ping interval silence may last
    /// before a connection counts as dead. Default: half the ping interval.
    pub fn heartbeat_tolerance(mut self, tolerance: Duration) -> Self {
        self.core.heartbeat_tolerance = Some(tolerance);
        self
    }

    /// Reconnect delays.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// How long [`Connection::close`] waits for the server to confirm the
    /// close before giving up on it. Default 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.core.close_timeout = timeout;
        self
    }

    /// Most payload bytes sent but not yet acknowledged; past it, `send`
    /// waits. Default 1 MiB.
    pub fn max_unacked_bytes(mut self, bytes: usize) -> Self {
        self.core.max_unacked_bytes = bytes;
        self
    }

    /// Most payload bytes received but not yet read by the application;
    /// past it, transports stop reading. Default 1 MiB.
    pub fn max_inbound_bytes(mut self, bytes: usize) -> Self {
        self.max_inbound_bytes = bytes;
        self
    }

    /// A header sent with every request (cookies, `Authorization`, …).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.headers.insert(name, value);
            }
            _ => self.header_error = Some(format!("invalid header {name:?}")),
        }
        self
    }

    /// Uses these proxies instead of the environment's
    /// (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`).
    pub fn proxy(mut self, proxy: ProxyConfig) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Also trusts this root certificate (DER), e.g. a company CA or a test
    /// certificate.
    pub fn add_root_certificate(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots.push(der.into());
        self
    }

    /// How long to remember the transport that worked for this server.
    /// Default 10 minutes.
    pub fn remember_for(mut self, duration: Duration) -> Self {
        self.remember_for = duration;
        self
    }

    /// How long to wait, on a fallback transport, before probing the better
    /// ones again (doubling each time, up to 5 minutes). Default 15 s.
    pub fn reprobe_after(mut self, delay: Duration) -> Self {
        self.policy.reprobe_after = delay;
        self
    }

    /// How long `connect` keeps trying before it gives up: while the
    /// server is unreachable, every transport is blocked, or the server
    /// says it is overloaded. Default 30 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.policy.connect_timeout = Some(timeout);
        self
    }

    /// Connects: opens a session on the first transport that works, and
    /// returns once the session is open. From then on the connection
    /// reconnects and resumes by itself.
    pub async fn connect(mut self) -> Result<Connection, ConnectError> {
        if let Some(error) = self.header_error {
            return Err(ConnectError::Build(error));
        }
        let base = parse_base(&self.url)?;
        // The connection policy gives each attachment its greeting deadline
        // from it (longer for a transport this session already used).
        self.policy.probe_timeout = self.core.probe_timeout;
        let tls = tls_config(&self.extra_roots).map_err(|e| ConnectError::Build(e.to_string()))?;
        let proxy = self.proxy.unwrap_or_else(ProxyConfig::from_env);
        let net = Net::new(tls, proxy, self.headers, self.core.probe_timeout)
            .map_err(|e| ConnectError::Build(e.to_string()))?;
        let shared = Shared::new(
            ClientSession::new(self.core.clone()),
            self.max_inbound_bytes,
            self.core.close_timeout,
        );
        let memory_key = base.as_str().to_owned();
        let driver = Driver {
            ctx: Ctx {
                base,
                net,
                probe_timeout: self.core.probe_timeout,
                poll_timeout: self.poll_timeout,
                max_message: self.core.max_message.saturating_mul(6) + 4096,
                send_policy: SendPolicy::new(self.policy.send_retries, self.policy.backoff.initial),
            },
            shared: shared.clone(),
            policy: self.policy,
            remember_for: self.remember_for,
            core_config: self.core,
            memory_key,
        };
        let mut state = shared.connect_state.subscribe();
        tokio::spawn(driver.run());
        let result = state
            .wait_for(|s| !matches!(s, ConnectState::Pending))
            .await
            .map(|s| s.clone());
        match result {
            Ok(ConnectState::Open) => Ok(Connection::new(shared)),
            Ok(ConnectState::Failed(error)) => Err(error),
            _ => Err(ConnectError::NoTransport(vec!["the client stopped".into()])),
        }
    }
}

fn parse_base(url: &str) -> Result<Url, ConnectError> {
    let mut base = Url::parse(url).map_err(|e| ConnectError::InvalidUrl(format!("{url}: {e}")))?;
    match base.scheme() {
        "http" | "https" => {}
        "ws" => drop(base.set_scheme("http")),
        "wss" => drop(base.set_scheme("https")),
        other => {
            return Err(ConnectError::InvalidUrl(format!(
                "{url}: scheme {other:?} (expected http or https)"
            )));
        }
    }
    if base.host_str().is_none() {
        return Err(ConnectError::InvalidUrl(format!("{url}: no host")));
    }
    base.set_query(None);
    base.set_fragment(None);
    let path = base.path().trim_end_matches('/').to_owned();
    base.set_path(&path);
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_ws_urls_and_refuses_others() {
        assert_eq!(
            parse_base("http://a.test/realtime/").map(|u| u.to_string()),
            Ok("http://a.test/realtime".into())
        );
        assert_eq!(
            parse_base("wss://a.test/rt?x=1").map(|u| u.to_string()),
            Ok("https://a.test/rt".into())
        );
        assert!(matches!(
            parse_base("ftp://a.test"),
            Err(ConnectError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_base("not a url"),
            Err(ConnectError::InvalidUrl(_))
        ));
    }

    #[test]
    fn transports_dedupe_and_keep_order() {
        let b = ClientBuilder::new("http://a.test").transports([
            TransportKind::Sse,
            TransportKind::Sse,
            TransportKind::LongPoll,
        ]);
        assert_eq!(
            b.policy.transports,
            [TransportKind::Sse, TransportKind::LongPoll]
        );
    }
}
