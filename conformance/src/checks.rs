//! End-to-end checks against a server's echo endpoint: a holdfast mount
//! whose application sends every message back as it received it.
//!
//! On each transport (`PROTOCOL.md` §8):
//!
//! - **echo in order**: a session opens (`open` first), 60 text and binary
//!   messages go up and come back in order, byte for byte, and the session
//!   closes with 1000;
//! - **resume after cuts**: 300 messages each way while the client cuts
//!   the connection abruptly five times (sockets dropped, streams cut
//!   mid-chunk, polls dropped while held, send requests dropped in flight)
//!   and resumes: every echo arrives exactly once, in order.
//!
//! The client is strict: any frame the protocol forbids fails the check
//! with the rule it broke. Every check is bounded in time.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::client::Transport;
use crate::client::{Client, Outcome, Plan};
use crate::wire::Payload;

/// Messages of the echo check.
const ECHO_MESSAGES: usize = 60;
/// Messages of the resume check.
const RESUME_MESSAGES: usize = 300;
/// Cuts in the resume check.
const CUTS: usize = 5;
/// The longest one check may take.
const CHECK_DEADLINE: Duration = Duration::from_secs(30);
/// Most attachments one check may make (SSE streams recycled by the
/// server count too).
const MAX_ATTACHMENTS: usize = 100;

/// How one check went.
#[derive(Clone, Debug)]
pub struct Report {
    /// The check and its transport, e.g. `resume after cuts (Sse)`.
    pub name: String,
    /// `Ok` with a summary, or `Err` with what the server did wrong.
    pub result: Result<String, String>,
}

impl Report {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(summary) => write!(f, "ok    {}: {summary}", self.name),
            Err(failure) => write!(f, "FAIL  {}: {failure}", self.name),
        }
    }
}

/// Runs every check, one after another, against the echo endpoint mounted
/// at `base` (`http://host:port/<mount>`).
pub async fn run_all(base: &str) -> Vec<Report> {
    let mut reports = Vec::new();
    for transport in Transport::ALL {
        let name = format!("echo in order ({transport:?})");
        reports.push(bounded(name, echo_in_order(base, transport)).await);
    }
    for transport in Transport::ALL {
        let name = format!("resume after cuts ({transport:?})");
        reports.push(bounded(name, resume_after_cuts(base, transport)).await);
    }
    reports
}

/// Runs `check` within [`CHECK_DEADLINE`]. The wire helpers panic on what
/// a test cannot go on from (a refused connection, a request that failed):
/// here that is the check's failure, and the next check still runs.
async fn bounded(name: String, check: impl Future<Output = Result<String, String>>) -> Report {
    let guarded = AssertUnwindSafe(check).catch_unwind();
    let result = match tokio::time::timeout(CHECK_DEADLINE, guarded).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(panic_message(panic.as_ref())),
        Err(_) => Err(format!("not done within {CHECK_DEADLINE:?}")),
    };
    Report { name, result }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the check panicked".to_owned())
}

/// Opens a session on `transport`, sends `ECHO_MESSAGES` and expects them
/// back in order, then closes with 1000.
pub async fn echo_in_order(base: &str, transport: Transport) -> Result<String, String> {
    let payloads = payloads(ECHO_MESSAGES, 1);
    let mut client = client(base, &payloads, 1);
    let attachments = run_to_close(&mut client, transport, 0).await?;
    if client.core.key().is_none() {
        return Err("the session never opened".into());
    }
    same_echo(&client, &payloads)?;
    Ok(format!(
        "{} messages echoed, {attachments} attachment(s)",
        payloads.len()
    ))
}

/// Sends `RESUME_MESSAGES` on `transport` while cutting the connection
/// `CUTS` times at random points (seeded), resuming each time; every echo
/// must arrive exactly once, in order.
pub async fn resume_after_cuts(base: &str, transport: Transport) -> Result<String, String> {
    let payloads = payloads(RESUME_MESSAGES, 2);
    let mut client = client(base, &payloads, 2);
    let attachments = run_to_close(&mut client, transport, CUTS).await?;
    same_echo(&client, &payloads)?;
    let stats = &client.core.stats;
    Ok(format!(
        "{} messages echoed exactly once across {} cuts ({attachments} attachments, \
         {} resumed, {} duplicates dropped)",
        payloads.len(),
        stats.cuts,
        stats.resumes,
        stats.duplicates
    ))
}

fn client(base: &str, payloads: &[Payload], seed: u64) -> Client {
    let mut client = Client::new(base, seed);
    client.backlog = payloads.iter().cloned().collect();
    client.expect_down = payloads.len();
    client
}

/// Attaches on `transport` until `cuts` planned cuts happened and the
/// exchange is done and closed with 1000; how many attachments it took.
async fn run_to_close(
    client: &mut Client,
    transport: Transport,
    cuts: usize,
) -> Result<usize, String> {
    let mut rng = StdRng::seed_from_u64(cuts as u64);
    let mut cut = 0;
    for attachment in 1..=MAX_ATTACHMENTS {
        let plan = if cut < cuts {
            Plan::random_cut(&mut rng, transport)
        } else {
            Plan::until_done_then_close(CHECK_DEADLINE)
        };
        let outcome = client
            .attach(transport, &plan)
            .await
            .map_err(|violation| with_log(client, violation))?;
        match outcome {
            Outcome::Cut => cut += 1,
            // A recycled SSE stream (§8.2): resume at once.
            Outcome::Detached(4000, _) if transport == Transport::Sse => {}
            Outcome::Closed(1000, _) if cut == cuts => return Ok(attachment),
            other => return Err(with_log(client, format!("unexpected outcome {other:?}"))),
        }
    }
    Err(with_log(
        client,
        format!("not done after {MAX_ATTACHMENTS} attachments"),
    ))
}

/// Checks that what came back is exactly what went up.
fn same_echo(client: &Client, sent: &[Payload]) -> Result<(), String> {
    let got = &client.core.delivered;
    if got == sent {
        return Ok(());
    }
    let first = got
        .iter()
        .zip(sent)
        .position(|(g, s)| g != s)
        .unwrap_or(got.len().min(sent.len()));
    Err(with_log(
        client,
        format!(
            "{} messages came back for {} sent; first difference at index {first}: \
             got {:?}, sent {:?}",
            got.len(),
            sent.len(),
            got.get(first),
            sent.get(first)
        ),
    ))
}

fn with_log(client: &Client, failure: String) -> String {
    format!("{failure}\n  attachments:\n  {}", client.log.join("\n  "))
}

/// `n` payloads, text and binary, of uneven sizes up to 4 KiB.
fn payloads(n: usize, seed: u64) -> Vec<Payload> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let size = rng.random_range(0..4096);
            if i % 3 == 2 {
                Payload::Binary((0..size).map(|_| rng.random()).collect())
            } else {
                let mut text = format!("{i} é ");
                text.extend((text.len()..size).map(|_| rng.random_range('a'..='z')));
                Payload::Text(text)
            }
        })
        .collect()
}
