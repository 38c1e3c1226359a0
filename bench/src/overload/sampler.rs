//! Samples the server while it is under load: its resident memory from
//! `/proc`, and its `/stats` page (bytes buffered across sessions, open
//! sessions, refusals by reason).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::process::ServerProcess;

/// How often the server is sampled.
pub const EVERY: Duration = Duration::from_millis(250);

/// One look at the server.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Seconds since sampling began.
    pub at: f64,
    /// The server's resident memory, bytes.
    pub rss: u64,
    /// `name value` pairs of `/stats`.
    pub stats: BTreeMap<String, u64>,
}

/// Reads `/stats` (`name value` lines); unreadable lines are skipped.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// One `/stats` read, empty when the server does not answer within `wait`.
pub async fn stats(
    client: &reqwest::Client,
    server: &ServerProcess,
    wait: Duration,
) -> BTreeMap<String, u64> {
    let url = format!("http://{}/stats", server.addr);
    // A saturated server answers late: memory is read from `/proc` on time
    // whatever `/stats` does.
    let read = async { client.get(url).send().await?.text().await };
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(text)) => parse_stats(&text),
        _ => BTreeMap::new(),
    }
}

/// Samples `server` every [`EVERY`] until `stop` is set; returns the samples.
pub async fn run(server: Arc<ServerProcess>, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let client = reqwest::Client::new();
    let began = Instant::now();
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(EVERY);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let rss = server.rss_bytes();
        let stats = stats(&client, &server, EVERY * 2).await;
        samples.push(Sample {
            at: began.elapsed().as_secs_f64(),
            rss,
            stats,
        });
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines_are_read_and_junk_skipped() {
        let stats = parse_stats(
            "buffered_bytes 123\nsessions 4\nrejected_too_many_sessions 7\njunk\nx y\n",
        );
        assert_eq!(stats.get("buffered_bytes"), Some(&123));
        assert_eq!(stats.get("rejected_too_many_sessions"), Some(&7));
        assert_eq!(stats.len(), 3);
    }
}
