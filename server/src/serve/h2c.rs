//! HTTP/2 over cleartext TCP with prior knowledge ([`ServeConfig::http2_cleartext`]):
//! telling such a connection from an HTTP/1.1 one by its first bytes.

use std::io;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::{Connection, ServeConfig};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's HTTP/2 connection builder for `config`.
pub(super) fn builder(config: &ServeConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // The limit on a request head, as for HTTP/1.1 (decoded header list).
    let max_head = u32::try_from(config.max_request_head_bytes.max(8192)).unwrap_or(u32::MAX);
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(max_head);
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
