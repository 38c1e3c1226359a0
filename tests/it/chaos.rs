//! The chaos soak: one session, 100 000 messages each way (the echo server
//! sends back every message it receives), through the hostile proxy, while
//! a seeded schedule keeps changing what the network allows — upgrades
//! refused, upgrades going silent, SSE buffered, a gateway answering 502
//! for a moment and then letting everything through — and cuts connections
//! at random. The one client falls back and comes back up to WebSocket
//! again and again; every echo must come back exactly
//! once, in order, byte for byte. Afterwards the server must hold nothing:
//! no buffered bytes, no session once the resume window has passed, and the
//! process's memory back near its resting level.
//!
//! Environment:
//!
//! - `HOLDFAST_CHAOS_SEED=<u64>` replays a schedule (the seed is printed;
//!   timings still vary from run to run, so a replay is the same schedule
//!   of phases and cut limits, not the same interleaving);
//! - `HOLDFAST_CHAOS_MESSAGES=<n>` at least this many messages each way
//!   (default 100 000);
//! - `HOLDFAST_CHAOS_SECS=<s>` and keep going for at least this long
//!   (default 40, about a dozen phases; the whole test then takes about a
//!   minute), e.g. 600 for a ten-minute soak.
//!
//! Run with `--nocapture` to see progress and the summary.

use crate::client_support;
use crate::support::own_process::run_alone;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client_support::{client, proxied, quick_server_config};
use holdfast::client::{Event, Message, TransportKind};
use holdfast_testkit::{After, Behavior, PathFilter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The resume window of the soak's server: long enough for any phase of
/// the schedule, short enough to wait out at the end.
const RESUME_WINDOW: Duration = Duration::from_secs(8);

/// Longest time without a single echo before the soak counts as stuck.
const STALL: Duration = Duration::from_secs(30);

/// RSS growth tolerated between the resting level before the soak and
/// after it: the allocator keeps some freed memory, but a leak of the
/// session's traffic (hundreds of MiB of messages went through) shows.
const RSS_TOLERANCE_KIB: u64 = 24 * 1024;

struct Settings {
    seed: u64,
    messages: u64,
    secs: u64,
}

impl Settings {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
        };
        let seed = var("HOLDFAST_CHAOS_SEED").unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom(&mut bytes);
            u64::from_le_bytes(bytes)
        });
        Self {
            seed,
            messages: var("HOLDFAST_CHAOS_MESSAGES").unwrap_or(100_000),
            secs: var("HOLDFAST_CHAOS_SECS").unwrap_or(40),
        }
    }

    /// The whole soak must end by then (a stuck or crawling run fails).
    fn deadline(&self) -> Duration {
        Duration::from_secs(self.secs + 240 + self.messages / 1000)
    }
}

fn getrandom(bytes: &mut [u8]) {
    let mut rng = rand::rng();
    rng.fill(bytes);
}

/// What the network does during a phase of the schedule. Every phase
/// starts by cutting every live connection, and connections are cut at
/// random during it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// A gateway restarting: every request answered with a 502 page for a
    /// moment, then everything goes through — calmly for a second or two
    /// (so that a client on a fallback transport gets to re-probe and
    /// switch back up to WebSocket), then with random cuts again.
    Open,
    /// WebSocket upgrades refused: SSE.
    NoUpgrade,
    /// Upgrades pass, then the tunnel goes silent: SSE, after the probe
    /// timeout.
    SilentUpgrade,
    /// Upgrades refused and SSE buffered: long-polling.
    Buffered,
}

impl Phase {
    fn behavior(self, rng: &mut StdRng) -> Behavior {
        let base = match self {
            Phase::Open => Behavior::transparent(),
            Phase::NoUpgrade => Behavior::default().refuse_upgrades(*pick(rng, &[400, 403, 405])),
            Phase::SilentUpgrade => Behavior::default().silence_after_upgrade(After::IMMEDIATELY),
            Phase::Buffered => Behavior::default()
                .refuse_upgrades(403)
                .buffer_responses(64 * 1024, PathFilter::ends_with("/sse")),
        };
        // Connections die at a random size and age.
        let bytes = rng.random_range(16_000..400_000);
        let time = Duration::from_millis(rng.random_range(300..3000));
        base.cut_randomly(After::bytes(bytes).or_time(time), rng.random())
    }

    fn duration(self, rng: &mut StdRng) -> Duration {
        Duration::from_millis(rng.random_range(2000..4000))
    }

    /// How long the gateway answers 502 at the start of the phase, and how
    /// long it then forwards without cuts.
    fn outage_and_calm(self, rng: &mut StdRng) -> (Duration, Duration) {
        match self {
            Phase::Open => (
                Duration::from_millis(rng.random_range(300..1000)),
                Duration::from_millis(rng.random_range(1500..2500)),
            ),
            _ => (Duration::ZERO, Duration::ZERO),
        }
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Message `n`: text or binary, mostly small, one in 400 between 2 and
/// 18 KiB, all of its bytes derived from `n` so corruption shows too.
fn payload(n: u64) -> Message {
    let h = mix(n);
    let len = if h % 400 == 0 {
        2048 + (h >> 20) % 16384
    } else {
        (h >> 20) % 64
    } as usize;
    if h & (1 << 10) != 0 {
        let mut bytes = n.to_be_bytes().to_vec();
        bytes.extend((0..len).map(|i| (i as u8) ^ (h as u8)));
        Message::binary(bytes)
    } else {
        let filler: String = (0..len)
            .map(|i| char::from(b'a' + ((n as usize + i) % 26) as u8))
            .collect();
        Message::text(format!("{n}:{filler}"))
    }
}

/// SplitMix64: a good spread of bits from a counter.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits (bounded) until `condition` holds; false if it never did.
async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while !condition() {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_one_session_exactly_once_across_cuts_and_transport_switches() {
    if !run_alone(
        module_path!(),
        "chaos_soak_one_session_exactly_once_across_cuts_and_transport_switches",
    )
    .await
    {
        return;
    }
    let settings = Settings::from_env();
    let seed = settings.seed;
    println!(
        "chaos seed {seed} (replay the schedule with HOLDFAST_CHAOS_SEED={seed}); \
         {} messages each way, at least {} s",
        settings.messages, settings.secs
    );
    let mut config = quick_server_config();
    config.session.resume_window = RESUME_WINDOW;
    // Streams recycled every 128 KiB: SSE ends and resumes on its own too.
    config.sse_max_bytes = 128 * 1024;
    let (server, proxy, url) = proxied(config, Behavior::transparent()).await;
    let proxy = Arc::new(proxy);

    // The resting level: the server, proxy and client code warmed up by a
    // short session, closed (its tombstone goes with the resume window).
    {
        let mut warm = client(&url).connect().await.expect("warm-up connect");
        client_support::exchange(&mut warm, 500, |_| {}).await;
        warm.close().await;
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            server.holdfast.session_count() == 0 && server.holdfast.buffered_bytes() == 0
        })
        .await,
        "the warm-up session did not close"
    );
    let rss_before = rss_kib();

    let started = Instant::now();
    // Every reconnect starts again from WebSocket (nothing remembered), and
    // long enough attachments re-probe better transports after 300 ms:
    // restrictive phases push the client down, open ones bring it back up.
    let connection = client(&url)
        .reprobe_after(Duration::from_millis(300))
        .remember_for(Duration::ZERO)
        .connect()
        .await
        .expect("connect");
    let (sender, mut receiver) = connection.split();

    // The schedule, on its own task.
    let stop = Arc::new(AtomicBool::new(false));
    let schedule = tokio::spawn({
        let proxy = proxy.clone();
        let stop = stop.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut log: Vec<(Phase, Duration)> = Vec::new();
            let kinds = [
                Phase::Open,
                Phase::NoUpgrade,
                Phase::SilentUpgrade,
                Phase::Buffered,
            ];
            'rounds: loop {
                // Each round plays every kind once, in a random order.
                let mut round = kinds.to_vec();
                for i in (1..round.len()).rev() {
                    round.swap(i, rng.random_range(0..=i));
                }
                for phase in round {
                    if stop.load(Ordering::Relaxed) {
                        break 'rounds;
                    }
                    let behavior = phase.behavior(&mut rng);
                    let duration = phase.duration(&mut rng);
                    let (outage, calm) = phase.outage_and_calm(&mut rng);
                    log.push((phase, outage + calm + duration));
                    // Every phase starts by cutting what is live, so the
                    // client must reconnect into it.
                    if !outage.is_zero() {
                        proxy.set(Behavior::default().error_page(502, PathFilter::Any));
                        proxy.cut_all();
                        tokio::time::sleep(outage).await;
                        proxy.set(Behavior::transparent());
                        tokio::time::sleep(calm).await;
                        proxy.set(behavior);
                    } else {
                        proxy.set(behavior);
                        proxy.cut_all();
                    }
                    // Extra cuts of everything live, at random moments.
                    let until = tokio::time::Instant::now() + duration;
                    loop {
                        let next = tokio::time::Instant::now()
                            + Duration::from_millis(rng.random_range(200..2500));
                        if next >= until {
                            tokio::time::sleep_until(until).await;
                            break;
                        }
                        tokio::time::sleep_until(next).await;
                        if rng.random_bool(0.4) {
                            proxy.cut_all();
                        }
                    }
                }
            }
            proxy.set(Behavior::transparent());
            log
        }
    });

    // The sender: numbered messages until both the count and the time
    // are reached; `total` is the final count once known.
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let sent = Arc::new(AtomicU64::new(0));
    let sending = tokio::spawn({
        let total = total.clone();
        let sent = sent.clone();
        let (messages, secs) = (settings.messages, settings.secs);
        async move {
            let mut n = 0u64;
            loop {
                if n >= messages && started.elapsed() >= Duration::from_secs(secs) {
                    total.store(n, Ordering::SeqCst);
                    return sender;
                }
                sender
                    .send(payload(n))
                    .await
                    .unwrap_or_else(|e| panic!("send {n} failed: {e:?} (seed {seed})"));
                n += 1;
                sent.store(n, Ordering::Relaxed);
            }
        }
    });

    // The receiver: every echo, in order, exactly once, intact.
    let mut expected = 0u64;
    let mut on: Option<TransportKind> = None;
    let mut per_transport: BTreeMap<String, u64> = BTreeMap::new();
    let mut changes: Vec<(TransportKind, TransportKind)> = Vec::new();
    let mut reconnects = 0u32;
    let mut resumed = 0u32;
    let mut last_report = Instant::now();
    let deadline = started + settings.deadline();
    while expected < total.load(Ordering::SeqCst) {
        let stuck = || {
            format!(
                "seed {seed}: {expected} echoes back, {} sent, on {on:?}, {reconnects} \
                 reconnects, proxy {:?}",
                sent.load(Ordering::Relaxed),
                proxy.stats()
            )
        };
        assert!(
            Instant::now() < deadline,
            "the soak overran its deadline: {}",
            stuck()
        );
        let event = match tokio::time::timeout(STALL, receiver.next_event()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the connection ended: {}", stuck()),
            Err(_) => panic!("no event for {STALL:?}: {}", stuck()),
        };
        match event {
            Event::Message(message) => {
                if message != payload(expected) {
                    panic!(
                        "seed {seed}: echo {expected} wrong (lost, duplicated, reordered or \
                         corrupted): got {message:?}"
                    );
                }
                expected += 1;
                *per_transport
                    .entry(on.map(|k| k.to_string()).unwrap_or_default())
                    .or_default() += 1;
            }
            Event::Open { transport, .. } => on = Some(transport),
            Event::Resumed { transport } => {
                resumed += 1;
                on = Some(transport);
            }
            Event::TransportChanged { from, to } => {
                changes.push((from, to));
                on = Some(to);
            }
            Event::Reconnecting { .. } => reconnects += 1,
            Event::Closed(closed) => panic!("seed {seed}: the session closed: {closed:?}"),
            _ => {}
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:>4} s: {expected} echoed, on {on:?}, {reconnects} reconnects, {} switches, \
                 server buffered {} B, rss {} KiB",
                started.elapsed().as_secs(),
                changes.len(),
                server.holdfast.buffered_bytes(),
                rss_kib()
            );
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let phases = tokio::time::timeout(Duration::from_secs(10), schedule)
        .await
        .expect("the schedule stops")
        .expect("schedule task");
    let sender = sending.await.expect("sender task");
    proxy.set(Behavior::transparent());

    // Nothing more may arrive: no extra echo, no duplicate at the end.
    let late = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match receiver.next_event().await {
                Some(Event::Message(m)) => return Some(m),
                Some(Event::Closed(c)) => panic!("seed {seed}: closed at the end: {c:?}"),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    assert!(
        !matches!(late, Ok(Some(_))),
        "seed {seed}: an echo beyond the last: {late:?}"
    );

    let stats = proxy.stats();
    let mut phase_count: BTreeMap<String, (u32, Duration)> = BTreeMap::new();
    for (phase, duration) in &phases {
        let entry = phase_count.entry(format!("{phase:?}")).or_default();
        entry.0 += 1;
        entry.1 += *duration;
    }
    println!(
        "chaos soak (seed {seed}): {expected} messages each way in {elapsed:.1?} \
         ({:.0} msg/s each way), zero lost, duplicated or reordered",
        expected as f64 / elapsed.as_secs_f64()
    );
    println!("  echoes by transport: {per_transport:?}");
    let mut switches: BTreeMap<String, u32> = BTreeMap::new();
    for (from, to) in &changes {
        *switches.entry(format!("{from} → {to}")).or_default() += 1;
    }
    println!("  {} transport switches: {switches:?}", changes.len());
    println!("  {reconnects} reconnects, {resumed} resumes");
    println!("  phases: {phase_count:?}");
    println!(
        "  proxy: {} connections, {} cut, {} upgrades, requests {:?}",
        stats.connections, stats.cut, stats.upgrades, stats.requests
    );

    // The run really was chaotic: every transport carried messages, the
    // client switched many times, and many connections were cut.
    for kind in TransportKind::ALL {
        assert!(
            per_transport.get(&kind.to_string()).copied().unwrap_or(0) > 0,
            "seed {seed}: {kind} never carried an echo: {per_transport:?}"
        );
    }
    assert!(changes.len() >= 3, "seed {seed}: {changes:?}");
    assert!(stats.cut >= 10, "seed {seed}: {stats:?}");
    assert!(reconnects >= 5, "seed {seed}: {reconnects} reconnects");

    // Close, then the server must hold nothing.
    sender.close().await;
    drop(sender);
    drop(receiver);
    let holdfast = &server.holdfast;
    assert!(
        eventually(Duration::from_secs(10), || holdfast.session_count() == 0).await,
        "seed {seed}: the session is still open after close"
    );
    assert!(
        eventually(Duration::from_secs(10), || holdfast.buffered_bytes() == 0).await,
        "seed {seed}: {} bytes still buffered after close",
        holdfast.buffered_bytes()
    );
    assert!(
        holdfast.held_sessions() >= 1,
        "seed {seed}: the closed session stays resumable for the resume window"
    );
    assert!(
        eventually(RESUME_WINDOW + Duration::from_secs(5), || {
            holdfast.held_sessions() == 0
        })
        .await,
        "seed {seed}: closed sessions were never forgotten: {} held",
        holdfast.held_sessions()
    );
    let rss_after = rss_kib();
    println!(
        "  server after close: 0 sessions, 0 buffered bytes; rss {rss_before} KiB before, \
         {rss_after} KiB after ({:+} KiB)",
        rss_after as i64 - rss_before as i64
    );
    assert!(
        rss_after <= rss_before + RSS_TOLERANCE_KIB,
        "seed {seed}: memory did not come back: {rss_before} KiB before, {rss_after} KiB after"
    );
}
