//! HTTP requests carried to the node that owns their session, and served
//! there by its own router.
//!
//! The node that got the request ([`forward`]) opens a [`Tunnel`] to the
//! owner and runs a hyper HTTP/1.1 client connection over it: the request
//! goes as it came (method, headers, streamed body; the path as the
//! owner's router must see it), and the response comes back streamed. A
//! WebSocket upgrade is forwarded too: once the owner answers `101`, the
//! client's upgraded connection and the owner's are bridged both ways.
//!
//! The owner ([`serve_tunnels`]) serves each incoming tunnel as one HTTP/1.1
//! connection, with the extensions a real connection gives (the client's
//! address as [`ConnectInfo`]) and the [`Tunneled`] marker, so that a
//! tunneled request is never forwarded again.
//!
//! [`Tunnel`]: super::tunnel::Tunnel

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower::ServiceExt as _;

use super::tunnel::{IncomingTunnels, Tunnel, TunnelError, TunnelWatch, Tunnels};
use crate::serve::ServeConfig;
use crate::write_deadline::WriteDeadline;

/// In a request's extensions: it came through a tunnel from another node
/// (so it is served here, never forwarded again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tunneled;

/// Carries `request` to `node` and returns its response.
///
/// `client_addr` is the request's TCP peer here (its `ConnectInfo`): the
/// owner sees it as its own peer, so its trusted-proxy checks give the
/// same answer. `path_and_query` is the target as the owner's router must
/// see it.
///
/// Answers `502` (with a text body saying why) if the tunnel cannot open,
/// the owner does not accept it within
/// [`TunnelConfig::accept_timeout`](super::tunnel::TunnelConfig::accept_timeout)
/// or it breaks before the response head; `504` if the head does not come
/// within [`TunnelConfig::response_timeout`](super::tunnel::TunnelConfig::response_timeout).
/// A tunnel that breaks mid-body ends the body with an error: the client
/// sees its stream cut and reconnects.
pub(crate) async fn forward(
    tunnels: &Tunnels,
    node: &str,
    client_addr: Option<SocketAddr>,
    mut request: Request<Body>,
    path_and_query: PathAndQuery,
) -> Response {
    let tunnel = match tunnels.connect(node, client_addr) {
        Ok(tunnel) => tunnel,
        Err(error) => return unreachable(node, &error),
    };
    let watch = tunnel.watch();
    let websocket = is_websocket_upgrade(request.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    // An upgrade request has no body; what follows it is the new protocol.
    let mut outgoing = Request::new(if websocket { Body::empty() } else { body });
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = Uri::from(path_and_query);
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = forwarded_headers(parts.headers, websocket);

    // Until there is a response, giving up (an error, a deadline, or the
    // client leaving, which drops this future) resets the tunnel: the
    // owner stops serving a request nobody waits for, whatever hyper's
    // connection task does with it.
    let mut abort = AbortOnDrop(Some(watch.clone()));
    let response_timeout = tunnels.config().response_timeout;
    let exchange = tokio::time::timeout(response_timeout, exchange(tunnel, outgoing));
    let refused = async {
        match watch.accepted().await {
            Ok(()) => std::future::pending().await,
            Err(error) => error,
        }
    };
    let mut response = tokio::select! {
        result = exchange => match result {
            Ok(Ok(response)) => response,
            // Why the tunnel broke says more than hyper's "connection
            // closed" does; else it is hyper's (a malformed response).
            Ok(Err(error)) => match watch.broken() {
                Some(broken) => return unreachable(node, &broken),
                None => return unreachable(node, &error),
            },
            Err(_) => return gateway_timeout(node, response_timeout),
        },
        error = refused => return unreachable(node, &error),
    };
    // From here the response body (or the bridge) holds the tunnel.
    abort.0 = None;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(bridge(client, upstream, watch));
        }
    }
    response.map(Body::new)
}

/// Resets the tunnel when dropped armed.
struct AbortOnDrop(Option<TunnelWatch>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(watch) = self.0.take() {
            watch.abort(TunnelError::Closed);
        }
    }
}

/// Runs an HTTP/1.1 client connection over `tunnel` and sends `request`.
async fn exchange(
    tunnel: Tunnel,
    request: Request<Body>,
) -> Result<hyper::Response<Incoming>, hyper::Error> {
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tunnel))
        .await?;
    // The connection outlives this function: it streams the response
    // body, or hands the tunnel to the upgrade.
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "a forwarded request's connection ended with an error");
        }
    });
    sender.send_request(request).await
}

/// Copies bytes both ways between the client's upgraded connection and the
/// owner's, until either ends.
async fn bridge(client: OnUpgrade, upstream: OnUpgrade, watch: TunnelWatch) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "a forwarded upgrade did not complete");
            watch.abort(TunnelError::Closed);
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "a forwarded WebSocket ended with an error");
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// The request's headers as the owner gets them: all of them (the owner
/// applies the same checks as for a direct request), less what this hop
/// already dealt with: `Expect` (this node's server answered
/// `100 Continue` already) and, unless it is a WebSocket upgrade being
/// forwarded, `Upgrade`.
fn forwarded_headers(mut headers: HeaderMap, websocket: bool) -> HeaderMap {
    headers.remove(header::EXPECT);
    // Hop-by-hop headers describe the client's connection to this node,
    // not the tunnel (RFC 9110 §7.6.1). A `Connection: close` from a proxy
    // in front would make the owner close the tunnel as soon as it
    // answered, while this side may still be finishing the request.
    for hop in ["keep-alive", "proxy-connection", "te", "trailer"] {
        headers.remove(hop);
    }
    if websocket {
        // The upgrade needs `Connection: upgrade`, and nothing else.
        headers.insert(
            header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers
}

/// `502`: the owner cannot be reached, or broke off.
fn unreachable(node: &str, error: &dyn std::fmt::Display) -> Response {
    tracing::debug!(node = %node.escape_debug(), error = %error, "forwarding a request failed");
    (
        StatusCode::BAD_GATEWAY,
        format!("the node that holds this session cannot be reached: {error}"),
    )
        .into_response()
}

/// `504`: the owner accepted the request but did not answer in time.
fn gateway_timeout(node: &str, after: Duration) -> Response {
    tracing::debug!(node = %node.escape_debug(), ?after, "a forwarded request got no answer");
    (
        StatusCode::GATEWAY_TIMEOUT,
        format!("the node that holds this session did not answer within {after:?}"),
    )
        .into_response()
}

/// Serves every tunnel from `incoming` as one HTTP/1.1 connection to
/// `router`, with `config`'s header read timeout, write-stall deadline and
/// head size limit (its `max_connections` does not apply: the tunnels have
/// their own limit). Runs until `incoming` ends or `shutdown` completes;
/// then stops taking tunnels (other nodes' opens are refused), lets each
/// connection finish its request, and returns when all are done.
pub(crate) async fn serve_tunnels(
    mut incoming: IncomingTunnels,
    router: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut shutdown = pin!(shutdown);
    // `true` tells connections to shut down; each holds a `done` receiver,
    // so when none is left they all finished.
    let (stop, stop_rx) = watch::channel(false);
    let (done, done_rx) = watch::channel(());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_request_head_bytes.max(8192));
    let http = Arc::new(http);
    loop {
        let (tunnel, client_addr) = tokio::select! {
            next = incoming.recv() => match next {
                Some(next) => next,
                None => break,
            },
            () = &mut shutdown => break,
        };
        tokio::spawn(serve_tunnel(
            http.clone(),
            tunnel,
            client_addr,
            router.clone(),
            config.write_timeout,
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(incoming);
    let _ = stop.send(true);
    drop(done_rx);
    done.closed().await;
}

async fn serve_tunnel(
    http: Arc<hyper::server::conn::http1::Builder>,
    tunnel: Tunnel,
    client_addr: Option<SocketAddr>,
    router: Router,
    write_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        if let Some(addr) = client_addr {
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        request.extensions_mut().insert(Tunneled);
        router.clone().oneshot(request)
    });
    let io = TokioIo::new(WriteDeadline::new(tunnel, write_timeout));
    let connection = http.serve_connection(io, service).with_upgrades();
    let mut connection = pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return finished(result),
        _ = stop.wait_for(|stop| *stop) => {}
    }
    connection.as_mut().graceful_shutdown();
    finished(connection.await);
}

fn finished(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "a tunneled connection ended with an error");
    }
}

#[cfg(test)]
mod tests;
