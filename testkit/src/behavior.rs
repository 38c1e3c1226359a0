//! What the proxy does to the traffic: [`Behavior`] and its parts.

use std::time::Duration;

/// A point in a connection's life: after some bytes, after some time, or
/// whichever comes first. Both `None` means never.
///
/// Bytes are counted on the **downstream** direction (what the proxy writes
/// to the client); time runs from the moment the trigger starts counting
/// (the accept for [`Behavior::cut`], the upgrade for the `*_after_upgrade`
/// behaviours).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct After {
    /// Trigger once this many bytes have gone downstream (exactly: a chunk
    /// crossing the limit is split at it).
    pub bytes: Option<u64>,
    /// Trigger once this much time has passed.
    pub time: Option<Duration>,
}

impl After {
    /// At once: zero bytes.
    pub const IMMEDIATELY: After = After {
        bytes: Some(0),
        time: None,
    };

    /// After `n` bytes.
    pub fn bytes(n: u64) -> Self {
        After {
            bytes: Some(n),
            time: None,
        }
    }

    /// After `time`.
    pub fn time(time: Duration) -> Self {
        After {
            bytes: None,
            time: Some(time),
        }
    }

    /// After `ms` milliseconds.
    pub fn millis(ms: u64) -> Self {
        Self::time(Duration::from_millis(ms))
    }

    /// Also trigger after `n` bytes, whichever comes first.
    pub fn or_bytes(mut self, n: u64) -> Self {
        self.bytes = Some(n);
        self
    }

    /// Also trigger after `time`, whichever comes first.
    pub fn or_time(mut self, time: Duration) -> Self {
        self.time = Some(time);
        self
    }
}

/// Which requests a behaviour applies to, by request path (the query string
/// is not part of it). For absolute-form requests (forward proxy) and
/// requests inside a `CONNECT` tunnel the path is taken the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PathFilter {
    /// Every request.
    #[default]
    Any,
    /// Paths ending with this string, e.g. `"/sse"`.
    EndsWith(String),
    /// Paths containing this string.
    Contains(String),
}

impl PathFilter {
    /// Paths ending with `suffix`.
    pub fn ends_with(suffix: impl Into<String>) -> Self {
        PathFilter::EndsWith(suffix.into())
    }

    /// Paths containing `needle`.
    pub fn contains(needle: impl Into<String>) -> Self {
        PathFilter::Contains(needle.into())
    }

    /// Whether `path` (without query) is selected.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathFilter::Any => true,
            PathFilter::EndsWith(s) => path.ends_with(s.as_str()),
            PathFilter::Contains(s) => path.contains(s.as_str()),
        }
    }
}

/// An intermediary's own HTML error page, sent instead of forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorPage {
    /// The status, typically 502 or 504 (any works).
    pub status: u16,
    /// The requests answered this way.
    pub paths: PathFilter,
}

/// Response buffering, as buffering proxies do to SSE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffering {
    /// The body goes out in blocks of at least this many bytes (raw bytes on
    /// the wire, chunked-encoding framing included); what is left when the
    /// upstream ends the response goes out then.
    pub bytes: usize,
    /// The responses buffered, by request path.
    pub paths: PathFilter,
}

/// Cutting connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// When to close: bytes written downstream on the connection (response
    /// heads and the proxy's own answers included) or time since accept.
    pub after: After,
    /// With a seed, each connection gets its own limits, drawn uniformly
    /// from `1..=bytes` and `0..=time` by a generator seeded with `seed` and
    /// the connection's number (0 for the first connection the proxy
    /// accepted): the same seed and order give the same cuts.
    pub seed: Option<u64>,
}

/// Everything the proxy does wrong. The default forwards faithfully.
///
/// Build with the methods (`Behavior::default().refuse_upgrades(403)`) or set
/// the fields. Install with [`Proxy::set`](crate::Proxy::set); see each field
/// for whether a change reaches connections already open.
///
/// Precedence for one request: an installed [`Answer`](crate::Answer)
/// first, then [`error_page`](Self::error_page), then
/// [`refuse_upgrade`](Self::refuse_upgrade); everything else composes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Answer WebSocket upgrade requests (`Upgrade` + `Connection: upgrade`)
    /// with this status and an HTML body instead of forwarding them. Read
    /// when a request arrives.
    pub refuse_upgrade: Option<u16>,
    /// Forward WebSocket upgrade requests as plain requests, without their
    /// `Upgrade` and `Connection: upgrade` headers, as a proxy that does
    /// not know WebSocket does: the server answers a GET it cannot upgrade.
    /// Read when a request arrives.
    pub strip_upgrade: bool,
    /// Once an upgrade went through (the 101 was passed on), stop forwarding
    /// in both directions after this point, keeping both sockets open: bytes
    /// are read and dropped, and neither side learns when the other closes.
    /// Also applies to raw (non-HTTP, e.g. TLS) `CONNECT` tunnels, counted
    /// from the `200`. Reaches live tunnels; silence is never lifted.
    pub silence_after_upgrade: Option<After>,
    /// Once an upgrade went through, reset both sockets (TCP RST) after this
    /// point. Same scope as `silence_after_upgrade`; reaches live tunnels.
    pub reset_after_upgrade: Option<After>,
    /// Answer matching requests (WebSocket upgrades included, `CONNECT`
    /// not) with an intermediary's HTML error page. Read when a request
    /// arrives.
    pub error_page: Option<ErrorPage>,
    /// Hold response bodies. Read when a response starts.
    pub buffer: Option<Buffering>,
    /// Close connections (both sockets) after a number of downstream bytes
    /// or an age. Reaches live connections (their age counts from accept).
    pub cut: Option<Cut>,
    /// Wait this long before forwarding each chunk, in each direction. Read
    /// for every chunk, so it reaches live connections.
    pub latency: Duration,
    /// Answer `CONNECT` with this status and an HTML body. Read when a
    /// `CONNECT` arrives.
    pub refuse_connect: Option<u16>,
    /// Hold each WebSocket upgrade request this long before forwarding it,
    /// as a slow gateway or a distant server does: connecting a WebSocket
    /// takes at least this long. Read when a request arrives.
    pub upgrade_delay: Duration,
}

impl Behavior {
    /// Forward everything faithfully (the default).
    pub fn transparent() -> Self {
        Self::default()
    }

    /// Refuse WebSocket upgrades with `status` (e.g. 403 or 400).
    pub fn refuse_upgrades(mut self, status: u16) -> Self {
        self.refuse_upgrade = Some(status);
        self
    }

    /// Forward upgrade requests without their upgrade headers.
    pub fn strip_upgrades(mut self) -> Self {
        self.strip_upgrade = true;
        self
    }

    /// Pass upgrades, then go silent `after` (e.g. [`After::IMMEDIATELY`]).
    pub fn silence_after_upgrade(mut self, after: After) -> Self {
        self.silence_after_upgrade = Some(after);
        self
    }

    /// Pass upgrades, then reset both sockets `after`.
    pub fn reset_after_upgrade(mut self, after: After) -> Self {
        self.reset_after_upgrade = Some(after);
        self
    }

    /// Answer requests whose path matches with an HTML error page
    /// (`status` 502 or 504, typically).
    pub fn error_page(mut self, status: u16, paths: PathFilter) -> Self {
        self.error_page = Some(ErrorPage { status, paths });
        self
    }

    /// Hold the bodies of responses to matching requests until `bytes`
    /// have accumulated or the upstream ends them.
    pub fn buffer_responses(mut self, bytes: usize, paths: PathFilter) -> Self {
        self.buffer = Some(Buffering { bytes, paths });
        self
    }

    /// Close every connection `after` (downstream bytes or age).
    pub fn cut_after(mut self, after: After) -> Self {
        self.cut = Some(Cut { after, seed: None });
        self
    }

    /// Close every connection at a random point before `after`, drawn from
    /// `seed` and the connection's number (see [`Cut::seed`]).
    pub fn cut_randomly(mut self, after: After, seed: u64) -> Self {
        self.cut = Some(Cut {
            after,
            seed: Some(seed),
        });
        self
    }

    /// Delay every chunk forwarded, in each direction, by `delay`.
    pub fn latency(mut self, delay: Duration) -> Self {
        self.latency = delay;
        self
    }

    /// Hold each WebSocket upgrade request `delay` before forwarding it.
    pub fn delay_upgrades(mut self, delay: Duration) -> Self {
        self.upgrade_delay = delay;
        self
    }

    /// Refuse `CONNECT` with `status` (e.g. 403), so a client behind this
    /// proxy has no WebSocket and must fall back to plain HTTP transports.
    pub fn refuse_connect(mut self, status: u16) -> Self {
        self.refuse_connect = Some(status);
        self
    }
}
