//! What the overload runs measured: per multiple ([`RunResult`]) and per
//! kind of session ([`Tally`]).

use std::collections::BTreeMap;

use holdfast_protocol::CloseCode;

use super::sampler::Sample;
use super::ws::{Opening, Outcome};
use crate::stats::Latencies;

/// What one multiple measured.
pub struct RunResult {
    /// Offered load as a multiple of the capacity.
    pub multiple: f64,
    /// Messages falling due per second, all sessions together.
    pub offered: f64,
    /// Echoes received per second while measuring.
    pub achieved: f64,
    /// p50 and p99 of the established sessions' latencies, µs.
    pub p50: f64,
    pub p99: f64,
    /// The longest latency, µs.
    pub max_latency_us: f64,
    /// Measured messages not echoed when their session gave up.
    pub unechoed: u64,
    /// The sessions open from the start…
    pub established: Tally,
    /// …and those that arrived during the load.
    pub arrivals: Tally,
    /// The server over time.
    pub samples: Vec<Sample>,
    /// `/stats` once every session was done.
    pub final_stats: BTreeMap<String, u64>,
    /// Most messages waiting in one client for window room at once.
    pub max_waiting: u64,
    /// The server's and the load generator's CPU use while measuring, in
    /// cores.
    pub server_cpu: f64,
    pub generator_cpu: f64,
}

/// Sessions of one kind, counted by how they went.
#[derive(Default)]
pub struct Tally {
    /// Openings answered with `open`…
    pub admitted: u64,
    /// …with `close` 4503 (of which `refused_busy` because the server's
    /// runtime lagged, the rest for `max_sessions` or the open rate)…
    pub refused_4503: u64,
    pub refused_busy: u64,
    /// …with any other refusal…
    pub other: u64,
    /// …with no TCP connection…
    pub connect_failed: u64,
    /// …with nothing in time.
    pub timed_out: u64,
    /// Admitted sessions the server ended (not a normal close).
    pub ended_by_server: u64,
    /// The codes those sessions were ended with, and how many each.
    pub end_codes: BTreeMap<String, u64>,
    /// Messages that fell due, and echoes received, over all sessions.
    pub due: u64,
    pub echoed: u64,
    /// Breaches of exactly-once, and the first one.
    pub violations: u64,
    pub first_violation: Option<String>,
    /// How long admitted openings took.
    pub open_times: Latencies,
    /// p50 and p99 of `open_times`, µs (filled by [`Tally::finish`]).
    pub open_percentiles: [f64; 2],
}

impl Tally {
    /// Counts one session.
    pub fn add(&mut self, outcome: &Outcome) {
        match &outcome.opening {
            Opening::Admitted(took) => {
                self.admitted += 1;
                self.open_times.record(*took);
            }
            Opening::Refused { reason, .. } => {
                self.refused_4503 += 1;
                // The server's reason for `open_lag_limit` (its text is
                // the only thing a client sees that tells them apart).
                if reason.contains("busy") {
                    self.refused_busy += 1;
                }
            }
            Opening::Other(_) => self.other += 1,
            Opening::ConnectFailed => self.connect_failed += 1,
            Opening::TimedOut => self.timed_out += 1,
        }
        if let Some(code) = outcome
            .ended_by_server
            .filter(|code| *code != CloseCode::NORMAL.0)
        {
            self.ended_by_server += 1;
            let kind = if outcome.detached { "detach" } else { "close" };
            *self.end_codes.entry(format!("{kind} {code}")).or_default() += 1;
        }
        self.due += outcome.due;
        self.echoed += outcome.echoed;
        self.violations += outcome.violations;
        if self.first_violation.is_none() {
            self.first_violation.clone_from(&outcome.first_violation);
        }
    }

    /// Computes the percentiles once every session is counted.
    pub fn finish(&mut self) {
        let [p50, p99, _] = self.open_times.percentiles();
        self.open_percentiles = [p50, p99];
    }
}
