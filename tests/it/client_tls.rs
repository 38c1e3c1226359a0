//! The Rust client over TLS: `https://` for the HTTP transports and `wss://`
//! for WebSocket, against a server with a certificate the client trusts
//! through `add_root_certificate`, directly and through a forward proxy's
//! `CONNECT` tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::client_support::*;
use holdfast::client::{ConnectError, ProxyConfig, TransportKind};
use holdfast::server::Holdfast;
use holdfast_testkit::Proxy;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A TLS listener for `axum::serve`: accepts TCP, completes the handshake.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An echo server on `https://localhost:<port>/realtime`; returns its URL
/// and the certificate (DER) to trust.
async fn tls_echo_server() -> (String, Vec<u8>, tokio::task::JoinHandle<()>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("self-signed certificate");
    let cert_der = certified.cert.der().to_vec();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .expect("private key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert_der.clone())],
        key_der,
    )
    .expect("server TLS config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    let holdfast = Holdfast::builder().on_session(|session| async move {
        while let Some(message) = session.recv().await {
            if session.send(message).await.is_err() {
                break;
            }
        }
    });
    let app = axum::Router::new().nest("/realtime", holdfast.router());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("https://localhost:{port}/realtime"), cert_der, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_works_over_tls() {
    let (url, cert, server) = tls_echo_server().await;
    for kind in TransportKind::ALL {
        let mut connection = client(&url)
            .add_root_certificate(cert.clone())
            .transport(kind)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{kind} over TLS: {e}"));
        assert_eq!(connection.transport(), Some(kind));
        exchange(&mut connection, 200, |_| {}).await;
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let (url, _cert, server) = tls_echo_server().await;
    let error = client(&url)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .err()
        .expect("a self-signed certificate nobody trusts is refused");
    assert!(matches!(error, ConnectError::NoTransport(_)), "{error:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_goes_through_a_forward_proxy_with_connect() {
    let (url, cert, server) = tls_echo_server().await;
    let proxy = Proxy::builder().start().await.expect("proxy");
    let proxy_url = url::Url::parse(&proxy.url()).expect("proxy url");
    let mut connection = client(&url)
        .add_root_certificate(cert)
        .proxy(ProxyConfig {
            https: Some(proxy_url),
            ..ProxyConfig::none()
        })
        .transport(TransportKind::WebSocket)
        .connect()
        .await
        .expect("wss through CONNECT");
    exchange(&mut connection, 200, |_| {}).await;
    assert!(proxy.stats().connects >= 1);
    server.abort();
}
