//! `--metrics`: the server under test records holdfast's metrics into a
//! Prometheus recorder, as an application that installs
//! `metrics-exporter-prometheus` does, so that the CPU cost of counting can
//! be read off the same echo run made with and without it.
//!
//! No HTTP listener: a scrape every 15 s or so costs next to nothing per
//! message; what a message pays is the recording. Upkeep runs as the
//! exporter's own `install` would run it, so its cost is counted too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for holdfast's `_seconds` histograms, in seconds:
/// the ones docs/operations.md gives to operators.
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's upkeep runs (the exporter's default).
const UPKEEP: Duration = Duration::from_secs(5);

/// Whether the servers this run starts install a recorder (`--metrics`).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Makes every holdfast server started from now on install a recorder.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether `--metrics` was given.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder as this process's global recorder and
/// starts its upkeep on the current runtime.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Prefix("holdfast_".to_owned()), &BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP);
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The samples a scrape would return now (lines that are not comments):
/// printed when the server stops, so a run shows that the recorder was
/// fed, not merely installed.
pub fn samples(handle: &PrometheusHandle) -> usize {
    handle
        .render()
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_rise() {
        assert!(BUCKETS.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
