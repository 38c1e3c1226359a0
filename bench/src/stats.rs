//! Latency samples and the figures made from them.

use std::time::Duration;

/// Round-trip (or delivery) latencies, in microseconds.
#[derive(Default)]
pub struct Latencies {
    samples: Vec<u32>,
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.samples.push(micros);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// p50, p99, p99.9 in microseconds.
    pub fn percentiles(&mut self) -> [f64; 3] {
        if self.samples.is_empty() {
            return [0.0; 3];
        }
        self.samples.sort_unstable();
        let at = |q: f64| {
            let index = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
            f64::from(self.samples[index])
        };
        [at(0.50), at(0.99), at(0.999)]
    }
}
