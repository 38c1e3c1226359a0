//! Admission control: how fast one client address may open sessions.
//!
//! Each address has a token bucket: [`OpenRateLimit::burst`] opens at once,
//! then [`OpenRateLimit::per_second`]. Without it one client could open
//! `max_sessions` sessions in seconds and lock everyone else out for as
//! long as a silent session lives (`timeout` + `resume_window`, 160 s by
//! default).
//!
//! The buckets live in a map bounded by [`OpenRateLimit::max_clients`], so
//! that the map cannot become the attack: when it is full, buckets that
//! have refilled (idle clients, indistinguishable from new ones) go first,
//! then the fullest, so the clients being held back stay held back. A
//! flood from more addresses than that defeats any per-address limit
//! anyway; `max_sessions` still bounds the whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast one client address may open sessions (see
/// [`ServerConfig::open_rate_limit`](crate::ServerConfig::open_rate_limit)).
///
/// ```
/// use holdfast_server::{OpenRateLimit, ServerConfig};
///
/// let mut config = ServerConfig::default();
/// // A kiosk network where each address is one device.
/// config.open_rate_limit = Some(OpenRateLimit::new(20, 1.0));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct OpenRateLimit {
    /// Sessions one address may open at once (the bucket's size).
    /// Default 1000: a whole office behind one NAT address reconnecting
    /// after a server restart.
    pub burst: u32,
    /// Sessions per second one address may open after its burst (the
    /// bucket's refill rate). Default 25: 90 000 an hour. With the burst,
    /// one address can hold at most 1000 + 25 × 160 = 5000 sessions that
    /// live the default 160 s (`timeout` + `resume_window`) without ever
    /// attaching again: 5 % of the default `max_sessions`.
    pub per_second: f64,
    /// Most addresses tracked at once (about 50 bytes each). Default
    /// 50 000, about 3 MiB at most.
    pub max_clients: usize,
}

impl OpenRateLimit {
    /// `burst` opens at once, then `per_second`, with the default
    /// [`max_clients`](Self::max_clients).
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst,
            per_second,
            ..Self::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), holdfast_protocol::ConfigError> {
        if self.burst == 0 || self.max_clients == 0 {
            return Err(holdfast_protocol::ConfigError(
                "open_rate_limit: burst and max_clients must be at least 1",
            ));
        }
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(holdfast_protocol::ConfigError(
                "open_rate_limit: per_second must be a positive number",
            ));
        }
        Ok(())
    }
}

impl Default for OpenRateLimit {
    fn default() -> Self {
        Self {
            burst: 1000,
            per_second: 25.0,
            max_clients: 50_000,
        }
    }
}

/// Whether a client may open a session now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    Admit,
    /// Not now. `wait`: until the bucket holds a token again. `first`:
    /// this client was admitted last time (log once per episode, not per
    /// refused request).
    Refuse {
        wait: Duration,
        first: bool,
    },
}

/// The clients a bucket is kept for. An IPv6 client usually holds a whole
/// /64, so that is one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(v4.to_bits()),
            IpAddr::V6(v6) => Self::V6Prefix((v6.to_bits() >> 64) as u64),
        }
    }
}

struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// The last request was refused.
    refused: bool,
}

impl Bucket {
    fn tokens_at(&self, now: Instant, limit: &OpenRateLimit) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * limit.per_second;
        (self.tokens + refill).min(f64::from(limit.burst))
    }
}

/// The buckets of one server.
pub(crate) struct Admission {
    limit: Option<OpenRateLimit>,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl Admission {
    pub(crate) fn new(limit: Option<OpenRateLimit>) -> Self {
        Self {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `client`'s bucket, if it has one.
    pub(crate) fn admit(&self, client: IpAddr, now: Instant) -> Verdict {
        let Some(limit) = &self.limit else {
            return Verdict::Admit;
        };
        let key = ClientKey::of(client);
        let mut buckets = self.lock();
        if !buckets.contains_key(&key) && buckets.len() >= limit.max_clients {
            make_room(&mut buckets, now, limit);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            at: now,
            refused: false,
        });
        bucket.tokens = bucket.tokens_at(now, limit);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.refused = false;
            Verdict::Admit
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second);
            let first = !std::mem::replace(&mut bucket.refused, true);
            Verdict::Refuse { wait, first }
        }
    }

    /// Client addresses tracked now.
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Frees at least a quarter of a full map, so that the O(n) pass runs at
/// most once every `max_clients / 4` new addresses: first the buckets that
/// refilled (forgetting them changes nothing), then the fullest.
fn make_room(buckets: &mut HashMap<ClientKey, Bucket>, now: Instant, limit: &OpenRateLimit) {
    let burst = f64::from(limit.burst);
    buckets.retain(|_, bucket| bucket.tokens_at(now, limit) < burst);
    let target = limit.max_clients - limit.max_clients.div_ceil(4);
    if buckets.len() <= target {
        return;
    }
    let mut fullness: Vec<(f64, ClientKey)> = buckets
        .iter()
        .map(|(key, bucket)| (bucket.tokens_at(now, limit), *key))
        .collect();
    let excess = fullness.len() - target;
    // The `excess` fullest first.
    fullness.select_nth_unstable_by(excess - 1, |a, b| b.0.total_cmp(&a.0));
    for (_, key) in &fullness[..excess] {
        buckets.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(n))
    }

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let admission = Admission::new(Some(OpenRateLimit::new(3, 2.0)));
        let t0 = Instant::now();
        let a = v4(1);
        for _ in 0..3 {
            assert_eq!(admission.admit(a, t0), Verdict::Admit);
        }
        assert_eq!(
            admission.admit(a, t0),
            Verdict::Refuse {
                wait: Duration::from_millis(500),
                first: true
            }
        );
        assert!(matches!(
            admission.admit(a, t0),
            Verdict::Refuse { first: false, .. }
        ));
        // Another client is not affected.
        assert_eq!(admission.admit(v4(2), t0), Verdict::Admit);
        // Half a second later, one more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(admission.admit(a, t1), Verdict::Admit);
        assert!(matches!(admission.admit(a, t1), Verdict::Refuse { .. }));
        // Refilled, but never above the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(admission.admit(a, t2), Verdict::Admit);
        }
        assert!(matches!(admission.admit(a, t2), Verdict::Refuse { .. }));
    }

    #[test]
    fn one_v6_slash_64_is_one_client_and_mapped_v4_is_v4() {
        let admission = Admission::new(Some(OpenRateLimit::new(1, 1.0)));
        let now = Instant::now();
        let a: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 1));
        let b: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 2));
        let c: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(admission.admit(a, now), Verdict::Admit);
        assert!(matches!(admission.admit(b, now), Verdict::Refuse { .. }));
        assert_eq!(admission.admit(c, now), Verdict::Admit);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap_or(v4(0));
        assert_eq!(admission.admit(mapped, now), Verdict::Admit);
        assert!(matches!(
            admission.admit("192.0.2.1".parse().unwrap_or(v4(0)), now),
            Verdict::Refuse { .. }
        ));
    }

    #[test]
    fn no_limit_admits_everyone_and_tracks_nothing() {
        let admission = Admission::new(None);
        for _ in 0..10_000 {
            assert_eq!(admission.admit(v4(7), Instant::now()), Verdict::Admit);
        }
        assert_eq!(admission.tracked(), 0);
    }

    #[test]
    fn the_map_stays_bounded_and_held_back_clients_stay_held_back() {
        let mut limit = OpenRateLimit::new(5, 0.01);
        limit.max_clients = 1000;
        let admission = Admission::new(Some(limit));
        let start = Instant::now();
        let attacker = v4(u32::MAX);
        let mut now = start;
        for _ in 0..5 {
            assert_eq!(admission.admit(attacker, now), Verdict::Admit);
        }
        let mut max_tracked = 0;
        let distinct = 300_000u32;
        for n in 0..distinct {
            now += Duration::from_micros(10);
            // A flood of one-off addresses, each opening once…
            assert_eq!(admission.admit(v4(n), now), Verdict::Admit);
            max_tracked = max_tracked.max(admission.tracked());
            // …while the held-back client keeps trying.
            if n % 100 == 0 {
                assert!(
                    matches!(admission.admit(attacker, now), Verdict::Refuse { .. }),
                    "the held-back client got a fresh bucket after {n} other addresses"
                );
            }
        }
        assert!(max_tracked <= 1000, "{max_tracked} buckets");
        eprintln!(
            "admission: {distinct} distinct addresses in {:?}, at most {max_tracked} buckets \
             tracked (max_clients 1000), about {} bytes each",
            start.elapsed(),
            std::mem::size_of::<(ClientKey, Bucket)>() + 1,
        );
    }
}
