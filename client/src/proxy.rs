//! Forward proxies from the environment — `HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY`, `NO_PROXY` (and their lower-case forms, which win) — the
//! same choice for every transport, so WebSocket goes through `CONNECT` on
//! the proxy the HTTP transports use.

use std::net::IpAddr;

use url::Url;

/// Which proxy (if any) to use for which URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// For `http://` and `ws://` URLs.
    pub http: Option<Url>,
    /// For `https://` and `wss://` URLs.
    pub https: Option<Url>,
    /// Hosts reached directly.
    pub no_proxy: NoProxy,
}

impl ProxyConfig {
    /// No proxy at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads the standard environment variables.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `get` (testable without touching the
    /// process environment).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |lower: &str, upper: &str| {
            get(lower)
                .or_else(|| get(upper))
                .filter(|v| !v.trim().is_empty())
        };
        let parse = |v: Option<String>| v.and_then(|v| parse_proxy_url(&v));
        let all = parse(var("all_proxy", "ALL_PROXY"));
        Self {
            http: parse(var("http_proxy", "HTTP_PROXY")).or_else(|| all.clone()),
            https: parse(var("https_proxy", "HTTPS_PROXY")).or(all),
            no_proxy: NoProxy::parse(&var("no_proxy", "NO_PROXY").unwrap_or_default()),
        }
    }

    /// The proxy for a target URL, if one applies.
    pub fn proxy_for(&self, target: &Url) -> Option<&Url> {
        let host = target.host_str()?;
        if self.no_proxy.matches(host) {
            return None;
        }
        match target.scheme() {
            "https" | "wss" => self.https.as_ref(),
            _ => self.http.as_ref(),
        }
    }
}

/// Accepts `host:port` as well as `http://host:port`.
fn parse_proxy_url(value: &str) -> Option<Url> {
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    Url::parse(&with_scheme).ok()
}

/// `NO_PROXY`: comma-separated host names (matching the name and its
/// subdomains, with or without a leading dot), IP addresses, CIDR blocks,
/// or `*` for everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NoProxyEntry {
    Domain(String),
    Network { addr: IpAddr, prefix: u8 },
}

impl NoProxy {
    /// Parses a `NO_PROXY` value.
    pub fn parse(value: &str) -> Self {
        let mut no_proxy = Self::default();
        for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                no_proxy.all = true;
                continue;
            }
            let parsed = if let Some((addr, prefix)) = entry.split_once('/') {
                match (addr.parse(), prefix.parse()) {
                    (Ok(addr), Ok(prefix)) => NoProxyEntry::Network { addr, prefix },
                    _ => continue,
                }
            } else if let Ok(addr) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                let prefix = if addr.is_ipv4() { 32 } else { 128 };
                NoProxyEntry::Network { addr, prefix }
            } else {
                // Drop a port (`host:8080`) and the leading dot.
                let host = entry.rsplit_once(':').map_or(entry, |(h, _)| h);
                NoProxyEntry::Domain(host.trim_start_matches('.').to_ascii_lowercase())
            };
            no_proxy.entries.push(parsed);
        }
        no_proxy
    }

    /// Whether `host` (a name or an address) is reached directly.
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|entry| match (entry, ip) {
            (NoProxyEntry::Domain(domain), None) => {
                host == *domain || host.ends_with(&format!(".{domain}"))
            }
            (NoProxyEntry::Network { addr, prefix }, Some(ip)) => in_network(ip, *addr, *prefix),
            _ => false,
        })
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let prefix = u32::from(prefix.min(32));
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let prefix = u32::from(prefix.min(128));
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> ProxyConfig {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyConfig::from_vars(|k| vars.get(k).cloned())
    }

    fn url(s: &str) -> Url {
        Url::parse(s)
            .unwrap_or_else(|_| Url::parse("http://invalid").unwrap_or_else(|_| unreachable!()))
    }

    #[test]
    fn picks_the_proxy_by_scheme_and_lower_case_wins() {
        let c = config(&[
            ("HTTP_PROXY", "http://upper:1"),
            ("http_proxy", "lower:3128"),
            ("HTTPS_PROXY", "http://secure:8080"),
        ]);
        assert_eq!(
            c.proxy_for(&url("ws://a.test/x")).map(Url::as_str),
            Some("http://lower:3128/")
        );
        assert_eq!(
            c.proxy_for(&url("wss://a.test/x")).map(Url::as_str),
            Some("http://secure:8080/")
        );
        let all = config(&[("ALL_PROXY", "http://all:1")]);
        assert!(all.proxy_for(&url("https://a.test")).is_some());
        assert_eq!(config(&[]).proxy_for(&url("http://a.test")), None);
    }

    #[test]
    fn no_proxy_matches_domains_addresses_and_networks() {
        let n = NoProxy::parse(
            "localhost, .internal.test,example.com:8080, 10.0.0.0/8, ::1, 192.168.1.5",
        );
        for host in [
            "localhost",
            "a.internal.test",
            "internal.test",
            "example.com",
            "www.example.com",
            "10.1.2.3",
            "[::1]",
            "192.168.1.5",
        ] {
            assert!(n.matches(host), "{host}");
        }
        for host in [
            "notexample.com",
            "11.0.0.1",
            "192.168.1.6",
            "internal.test.evil",
        ] {
            assert!(!n.matches(host), "{host}");
        }
        assert!(NoProxy::parse("*").matches("anything"));
    }
}
