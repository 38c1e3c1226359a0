//! Who sent a request: the TCP peer, and — only when that peer is a reverse
//! proxy the application trusts — what the proxy forwards about the
//! client: its address (`X-Forwarded-For` / `Forwarded: for=`) and the
//! host and scheme it used (`X-Forwarded-Host`, `X-Forwarded-Proto` /
//! `Forwarded: host=`, `proto=`).
//!
//! A client can write any of these headers itself, so none is believed by
//! default, and behind trusted proxies the client's address is the
//! rightmost forwarded one that is not a trusted proxy: everything left of
//! it was written by the client.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName, header};
use ipnet::IpNet;

/// The TCP peer of a request, when the server was started with connect
/// info ([`serve`](https://docs.rs/axum/latest/axum/fn.serve.html) of
/// `into_make_service_with_connect_info::<SocketAddr>()`, which
/// `holdfast::server::serve` does); `None` otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self::of(&parts.extensions))
    }
}

impl Peer {
    /// The peer named in a request's extensions.
    pub(crate) fn of(extensions: &Extensions) -> Self {
        let addr = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .or_else(|| {
                extensions
                    .get::<MockConnectInfo<SocketAddr>>()
                    .map(|info| info.0)
            });
        Self(addr)
    }
}

/// Which headers the trusted reverse proxies write (see
/// [`Builder::trusted_proxies`](crate::Builder::trusted_proxies)). Only
/// one kind is read: a proxy passes the other kind through untouched, so
/// whatever the client wrote there would be believed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeaders {
    /// `X-Forwarded-For` (each proxy appends the address it received the
    /// request from), `X-Forwarded-Host` and `X-Forwarded-Proto` (set by
    /// the proxy facing the browser; the rightmost value counts). What
    /// nginx, HAProxy and most cloud load balancers write. The default.
    #[default]
    XForwarded,
    /// `Forwarded` (RFC 7239): each proxy appends an element
    /// `for=…;host=…;proto=…`.
    Forwarded,
}

/// The reverse proxies whose forwarded headers are believed.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<IpNet>,
    headers: ProxyHeaders,
}

/// What the trusted proxies say about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Forwarded {
    /// The client's address: the rightmost forwarded address that is not a
    /// trusted proxy (the nearest trusted proxy's own address if the
    /// proxies forwarded none, or an unusable one).
    pub(crate) client: IpAddr,
    /// The host (and port) the client asked for, if a proxy said.
    pub(crate) host: Option<String>,
    /// The scheme the client used (`http`, `https`), if a proxy said.
    pub(crate) proto: Option<String>,
}

/// Most forwarded addresses looked at: a chain of proxies is short, and
/// the walk stops at the first untrusted one anyway.
const MAX_HOPS: usize = 32;

impl TrustedProxies {
    pub(crate) fn new(nets: Vec<IpNet>, headers: ProxyHeaders) -> Self {
        Self { nets, headers }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// What the proxies forwarded, if `peer` is a trusted proxy; `None`
    /// if it is not (then no forwarded header means anything).
    pub(crate) fn forwarded(&self, peer: IpAddr, headers: &HeaderMap) -> Option<Forwarded> {
        if !self.trusts(peer) {
            return None;
        }
        let peer = peer.to_canonical();
        Some(match self.headers {
            ProxyHeaders::XForwarded => {
                let hops = values_from_right(headers, HeaderName::from_static("x-forwarded-for"))
                    .map(parse_node);
                Forwarded {
                    client: self.walk(peer, hops),
                    host: rightmost(headers, HeaderName::from_static("x-forwarded-host")),
                    proto: rightmost(headers, HeaderName::from_static("x-forwarded-proto")),
                }
            }
            ProxyHeaders::Forwarded => self.walk_rfc7239(peer, headers),
        })
    }

    /// From the peer leftwards: each trusted hop vouches for the address
    /// it received the request from; the first untrusted one is the
    /// client. An unusable entry stops the walk at the hop that wrote it.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer;
        for hop in hops.take(MAX_HOPS) {
            if !self.trusts(client) {
                break;
            }
            match hop {
                Some(ip) => client = ip,
                None => break,
            }
        }
        client
    }

    /// [`walk`](Self::walk) over RFC 7239 elements; the host and scheme
    /// come from the element that named the client: the one written by
    /// the proxy the client connected to.
    fn walk_rfc7239(&self, peer: IpAddr, headers: &HeaderMap) -> Forwarded {
        let mut found = Forwarded {
            client: peer,
            host: None,
            proto: None,
        };
        for element in values_from_right(headers, header::FORWARDED).take(MAX_HOPS) {
            if !self.trusts(found.client) {
                break;
            }
            let mut hop = None;
            found.host = None;
            found.proto = None;
            for (name, value) in element
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
            {
                let value = value.trim().trim_matches('"');
                if name.eq_ignore_ascii_case("for") {
                    hop = parse_node(value);
                } else if name.eq_ignore_ascii_case("host") {
                    found.host = Some(value.to_owned());
                } else if name.eq_ignore_ascii_case("proto") {
                    found.proto = Some(value.to_owned());
                }
            }
            match hop {
                Some(ip) => found.client = ip,
                None => break,
            }
        }
        found
    }
}

/// A header's comma-separated values, rightmost first, across all its
/// lines (several lines are one list, in order).
fn values_from_right(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    lines
        .into_iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .map(str::trim)
}

/// The rightmost value of a header: what the nearest proxy wrote.
fn rightmost(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    values_from_right(headers, name)
        .next()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]`, `[::1]:5678`, maybe quoted. `None` for `unknown`, obfuscated
/// identifiers (`_hidden`) and garbage.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    let ip = node
        .parse::<IpAddr>()
        .ok()
        .or_else(|| node.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            node.strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn proxies(nets: &[&str], headers: ProxyHeaders) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter().filter_map(|n| n.parse().ok()).collect(),
            headers,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn an_untrusted_peer_forwards_nothing() {
        let p = proxies(&["10.0.0.0/8"], ProxyHeaders::XForwarded);
        let h = with(&[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-host", "a")]);
        assert_eq!(p.forwarded(ip("192.168.1.1"), &h), None);
        assert_eq!(
            TrustedProxies::default().forwarded(ip("10.0.0.1"), &h),
            None
        );
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address() {
        let p = proxies(&["10.0.0.0/8", "fd00::/8"], ProxyHeaders::XForwarded);
        let client = |pairs: &[(&'static str, &'static str)]| {
            p.forwarded(ip("10.0.0.1"), &with(pairs)).map(|f| f.client)
        };
        // What the client wrote itself (1.1.1.1) is left of what the
        // proxy appended (its peer, 2.2.2.2).
        assert_eq!(
            client(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2")]),
            Some(ip("2.2.2.2"))
        );
        // Through two trusted proxies, on two header lines.
        assert_eq!(
            client(&[
                ("x-forwarded-for", "1.1.1.1, 3.3.3.3"),
                ("x-forwarded-for", "10.9.9.9")
            ]),
            Some(ip("3.3.3.3"))
        );
        // Ports, brackets, quotes, IPv4-mapped IPv6.
        assert_eq!(
            client(&[("x-forwarded-for", "[2001:db8::1]:443")]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            client(&[("x-forwarded-for", "4.4.4.4:5000")]),
            Some(ip("4.4.4.4"))
        );
        assert_eq!(
            client(&[("x-forwarded-for", "::ffff:5.5.5.5")]),
            Some(ip("5.5.5.5"))
        );
        // Nothing forwarded, or garbage: the proxy itself.
        assert_eq!(client(&[]), Some(ip("10.0.0.1")));
        assert_eq!(
            client(&[("x-forwarded-for", "1.1.1.1, unknown")]),
            Some(ip("10.0.0.1"))
        );
        // Only proxies: the leftmost.
        assert_eq!(
            client(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]),
            Some(ip("10.1.1.1"))
        );
        // The other kind of header is ignored.
        assert_eq!(
            client(&[("forwarded", "for=6.6.6.6")]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn host_and_scheme_are_the_nearest_proxys_word() {
        let p = proxies(&["127.0.0.1/32"], ProxyHeaders::XForwarded);
        let h = with(&[
            ("x-forwarded-host", "evil.test, app.test"),
            ("x-forwarded-proto", "https"),
        ]);
        let f = p.forwarded(ip("127.0.0.1"), &h);
        assert_eq!(f.as_ref().and_then(|f| f.host.as_deref()), Some("app.test"));
        assert_eq!(f.as_ref().and_then(|f| f.proto.as_deref()), Some("https"));
    }

    #[test]
    fn rfc7239_elements() {
        let p = proxies(&["10.0.0.0/8"], ProxyHeaders::Forwarded);
        let h = with(&[(
            "forwarded",
            "for=1.1.1.1;host=evil.test, for=\"[2001:db8::7]:4711\";proto=https;host=app.test, \
             for=10.0.0.2;host=internal",
        )]);
        assert_eq!(
            p.forwarded(ip("10.0.0.3"), &h),
            Some(Forwarded {
                client: ip("2001:db8::7"),
                host: Some("app.test".into()),
                proto: Some("https".into()),
            })
        );
        // X-Forwarded-* is ignored in this mode.
        let h = with(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            p.forwarded(ip("10.0.0.3"), &h).map(|f| f.client),
            Some(ip("10.0.0.3"))
        );
        // Obfuscated: stop at the proxy that wrote it, keep its view.
        let h = with(&[("forwarded", "for=_hidden;host=app.test;proto=https")]);
        assert_eq!(
            p.forwarded(ip("10.0.0.3"), &h),
            Some(Forwarded {
                client: ip("10.0.0.3"),
                host: Some("app.test".into()),
                proto: Some("https".into()),
            })
        );
    }

    #[test]
    fn a_trusted_v4_network_matches_mapped_v6_peers() {
        let p = proxies(&["127.0.0.1/32"], ProxyHeaders::XForwarded);
        assert!(p.trusts(ip("::ffff:127.0.0.1")));
        assert!(!p.trusts(ip("127.0.0.2")));
    }
}
