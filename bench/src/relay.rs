//! A TCP relay between the load's clients and the server, that can cut
//! every connection at once: a network blip, without touching the clients.
//!
//! Each connection the relay accepts goes on to the server from a loopback
//! source address of its own rotation ([`Sources`]), so the server sees the
//! clients spread over many addresses, as real users are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::spread::{self, Sources};

/// A running relay.
pub struct Relay {
    /// Where the clients connect.
    pub addr: SocketAddr,
    cut: watch::Sender<u64>,
}

impl Relay {
    /// Relays to `server`; upstream connection `j` comes from
    /// `sources.addr(first + j % span)`, so each wave of `span`
    /// connections spreads over the same addresses.
    pub async fn start(
        server: SocketAddr,
        sources: Sources,
        first: usize,
        span: usize,
    ) -> std::io::Result<Self> {
        // A deep accept queue: the relay stands for the network, it must
        // not drop connections of its own in a storm.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
        let listener = socket.listen(65_535)?;
        let addr = listener.local_addr()?;
        let (cut, cuts) = watch::channel(0u64);
        let counter = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    continue;
                };
                let j = counter.fetch_add(1, Ordering::Relaxed);
                let src = sources.addr(first + j % span.max(1));
                let mut cuts = cuts.clone();
                // A connection accepted before a cut belongs to it.
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let _ = down.set_nodelay(true);
                    let up = match spread::connect_from(src, server).await {
                        Ok(up) => up,
                        // The server is down: the client sees a reset, as
                        // if it had been refused itself.
                        Err(_) => return abort(down),
                    };
                    pipe(down, up, cuts).await;
                });
            }
        });
        Ok(Self { addr, cut })
    }

    /// Cuts every connection open now (both sides get a reset).
    pub fn cut(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

/// Copies both ways until either side ends or the relay cuts.
async fn pipe(mut down: TcpStream, mut up: TcpStream, mut cuts: watch::Receiver<u64>) {
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => false,
        _ = cuts.changed() => true,
    };
    if cut {
        abort(down);
        abort(up);
    }
}

/// Closes `tcp` with a reset (no FIN, no `TIME_WAIT`), as a cut cable
/// followed by a timeout would look to the peer.
fn abort(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}
