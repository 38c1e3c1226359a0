//! HTTP/2 over cleartext TCP with prior knowledge ([`ServeConfig::http2_cleartext`]):
//! telling such a connection from an HTTP/1.1 one by its first bytes.

use std::io;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::{Connection, ServeConfig};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

mod idle;

pub(super) use idle::Streams;

/// Requests one HTTP/2 connection may have open at once: the least RFC
/// 9113 §6.5.2 recommends. hyper's default is 200. A client needs two (its
/// stream or held poll, and a send); a proxy multiplexing many clients
/// opens more connections when one is full.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Request body bytes a client may send on one stream before the server
/// has read them: HTTP/2's own initial window (RFC 9113 §6.9.2). hyper's
/// default is 1 MiB. Larger bodies still go through, paced by the reads.
const STREAM_WINDOW: u32 = 65_535;
/// …and on the whole connection: what one connection can make the server
/// hold in unread request bodies. hyper's default is 1 MiB.
const CONNECTION_WINDOW: u32 = 256 * 1024;

/// hyper's HTTP/2 connection builder for `config`.
pub(super) fn builder(config: &ServeConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // The limit on a request head, as for HTTP/1.1 (decoded header list).
    let max_head = u32::try_from(config.max_request_head_bytes.max(8192)).unwrap_or(u32::MAX);
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(max_head)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    http2
}

/// Reads the connection's first bytes, up to the length of the HTTP/2
/// preface or the first byte that differs from it, and keeps them to be
/// read again by whichever protocol serves the connection. `true` if the
/// client sent the whole preface. A client that closes first is left to
/// HTTP/1.1, which sees the end of the stream as usual.
pub(super) async fn sniff(connection: &mut Connection) -> io::Result<bool> {
    let (matched, seen) = read_preface(&mut connection.io).await?;
    if !seen.is_empty() {
        connection.replay = Some(seen.into());
    }
    Ok(matched)
}

/// [`sniff`] on any reader: whether it starts with the preface, and the
/// bytes read to tell.
async fn read_preface<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<(bool, Vec<u8>)> {
    let mut seen = [0u8; PREFACE.len()];
    let mut len = 0;
    let matched = loop {
        let n = io.read(&mut seen[len..]).await?;
        if n == 0 {
            break false;
        }
        len += n;
        if seen[..len] != PREFACE[..len] {
            break false;
        }
        if len == PREFACE.len() {
            break true;
        }
    };
    Ok((matched, seen[..len].to_vec()))
}

#[cfg(test)]
mod tests;
