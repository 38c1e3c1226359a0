//! The network under the transports: TLS (rustls), forward proxies for
//! every transport (WebSocket through `CONNECT`), and the HTTP client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderMap;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use url::Url;

use holdfast_protocol::connector::AttemptEnd;

use crate::error::{ended, ws_handshake_end};
use crate::proxy::ProxyConfig;
use crate::transport::KEY_HEADER;

/// A TCP stream, with or without TLS.
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) type WsStream = WebSocketStream<MaybeTls>;

/// TLS, proxies, extra headers, and the HTTP client built from them.
pub(crate) struct Net {
    pub(crate) http: reqwest::Client,
    tls: TlsConnector,
    proxy: ProxyConfig,
    pub(crate) headers: HeaderMap,
}

impl Net {
    pub(crate) fn new(
        tls: Arc<rustls::ClientConfig>,
        proxy: ProxyConfig,
        headers: HeaderMap,
        connect_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(connect_timeout)
            .default_headers(headers.clone())
            .tcp_nodelay(true);
        builder = if proxy.http.is_some() || proxy.https.is_some() {
            let proxies = proxy.clone();
            builder.proxy(reqwest::Proxy::custom(move |url| {
                proxies.proxy_for(url).cloned()
            }))
        } else {
            builder.no_proxy()
        };
        Ok(Self {
            http: builder.build()?,
            tls: TlsConnector::from(tls),
            proxy,
            headers,
        })
    }

    /// Opens a WebSocket to `url` (`ws://` or `wss://`), through the proxy
    /// the environment names for it, naming session `key` in the upgrade
    /// request's headers.
    pub(crate) async fn connect_ws(
        &self,
        url: &Url,
        max_message: usize,
        key: Option<&str>,
    ) -> Result<WsStream, AttemptEnd> {
        let host = url
            .host_str()
            .ok_or_else(|| ended(AttemptEnd::Unreachable, format_args!("no host in {url}")))?
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let tcp = match self.proxy.proxy_for(url) {
            Some(proxy) => tunnel(proxy, &host, port).await?,
            None => TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| ended(AttemptEnd::Unreachable, format_args!("{host}:{port}: {e}")))?,
        };
        let _ = tcp.set_nodelay(true);
        let stream = if url.scheme() == "wss" {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                ended(
                    AttemptEnd::Unreachable,
                    format_args!("bad TLS name {host:?}: {e}"),
                )
            })?;
            let tls = self.tls.connect(name, tcp).await.map_err(|e| {
                ended(
                    AttemptEnd::Invalid,
                    format_args!("TLS handshake with {host}: {e}"),
                )
            })?;
            MaybeTls::Tls(Box::new(tls))
        } else {
            MaybeTls::Plain(tcp)
        };
        let mut request = url.as_str().into_client_request().map_err(|e| {
            ended(
                AttemptEnd::Unreachable,
                format_args!("bad WebSocket URL {url}: {e}"),
            )
        })?;
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        if let Some(key) = key {
            let key = http::HeaderValue::from_str(key).map_err(|_| {
                ended(
                    AttemptEnd::Invalid,
                    "the session key is not a valid header value",
                )
            })?;
            request
                .headers_mut()
                .insert(http::HeaderName::from_static(KEY_HEADER), key);
        }
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(max_message);
        config.max_frame_size = Some(max_message);
        // tungstenite zeroes its whole read buffer before each read: keep it
        // small (larger messages just take several reads).
        config.read_buffer_size = 16 * 1024;
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(ws_handshake_end)?;
        Ok(ws)
    }
}

/// Opens a tunnel to `host:port` through an HTTP proxy with `CONNECT`.
async fn tunnel(proxy: &Url, host: &str, port: u16) -> Result<TcpStream, AttemptEnd> {
    let proxy_host = proxy.host_str().unwrap_or("");
    let proxy_port = proxy.port_or_known_default().unwrap_or(3128);
    let mut tcp = TcpStream::connect((proxy_host, proxy_port))
        .await
        .map_err(|e| {
            ended(
                AttemptEnd::Unreachable,
                format_args!("proxy {proxy_host}:{proxy_port}: {e}"),
            )
        })?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if !proxy.username().is_empty() {
        let credentials = format!(
            "{}:{}",
            percent_decode(proxy.username()),
            percent_decode(proxy.password().unwrap_or(""))
        );
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            BASE64.encode(credentials)
        ));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(|e| {
        ended(
            AttemptEnd::Unreachable,
            format_args!("proxy {proxy_host}: {e}"),
        )
    })?;

    // Read the proxy's answer up to the blank line, byte-exact, so nothing
    // of the tunnelled stream is consumed.
    let mut reader = BufReader::with_capacity(1, &mut tcp);
    let mut status_line = String::new();
    let mut total = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.map_err(|e| {
            ended(
                AttemptEnd::Closed,
                format_args!("proxy {proxy_host} during CONNECT: {e}"),
            )
        })?;
        total += n;
        if n == 0 || total > 16 * 1024 {
            return Err(ended(
                AttemptEnd::Invalid,
                format_args!("proxy {proxy_host} ended or garbled its CONNECT answer"),
            ));
        }
        if status_line.is_empty() {
            status_line = line.trim().to_owned();
        } else if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200) => {}
        Some(status) => {
            return Err(ended(
                AttemptEnd::Status {
                    status,
                    retry_after: None,
                },
                format_args!("proxy {proxy_host} refused CONNECT {authority}"),
            ));
        }
        None => {
            return Err(ended(
                AttemptEnd::Invalid,
                format_args!("proxy {proxy_host} answered CONNECT with a garbled status line"),
            ));
        }
    }
    Ok(tcp)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..(i + 3).min(s.len())], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A rustls configuration with the webpki roots plus `extra_roots` (DER).
pub(crate) fn tls_config(
    extra_roots: &[Vec<u8>],
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots.add(rustls::pki_types::CertificateDer::from(der.clone()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
