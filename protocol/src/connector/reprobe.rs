//! When to probe the transports better than the one in use, and what the
//! probes found.
//!
//! The clock survives reconnects: a busy session on a fallback transport
//! reconnects often (event streams are recycled every few hundred
//! kilobytes) and must still get to probe. A probe that finds nothing
//! pushes the next one back, doubling (with jitter) up to
//! [`MAX_REPROBE`].

use std::time::{Duration, Instant};

use super::backoff::whole_millis;

/// Longest wait between re-probes of a better transport.
pub const MAX_REPROBE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub(crate) struct Reprobe {
    /// The wait after the next failed round.
    delay: Duration,
    /// When the next round starts.
    due: Instant,
    /// The round under way: the probe's id and the candidate it probes.
    probing: Option<(u64, usize)>,
    /// A better transport the last round found, not yet acted on.
    found: Option<usize>,
    next_id: u64,
}

impl Reprobe {
    pub(crate) fn new(now: Instant, first: Duration, random: f64) -> Self {
        Self {
            delay: first,
            due: now + jittered(first, random),
            probing: None,
            found: None,
            next_id: 0,
        }
    }

    /// Starts the clock afresh (after a fallback or a switch): any probe
    /// under way is forgotten.
    pub(crate) fn reset(&mut self, now: Instant, first: Duration, random: f64) {
        let next_id = self.next_id;
        *self = Self::new(now, first, random);
        self.next_id = next_id;
    }

    /// When the next round is due, while none is under way or found.
    pub(crate) fn due(&self) -> Option<Instant> {
        (self.probing.is_none() && self.found.is_none()).then_some(self.due)
    }

    /// Starts a round at `now` if one is due: the probe's id and the
    /// candidate to probe (the best transport).
    pub(crate) fn start(&mut self, now: Instant) -> Option<(u64, usize)> {
        if self.due().is_none_or(|due| now < due) {
            return None;
        }
        self.probe(0)
    }

    fn probe(&mut self, candidate: usize) -> Option<(u64, usize)> {
        self.next_id += 1;
        self.probing = Some((self.next_id, candidate));
        self.probing
    }

    /// The candidate probe `id` was for, if it is the one under way.
    pub(crate) fn current(&self, id: u64) -> Option<usize> {
        self.probing.filter(|(p, _)| *p == id).map(|(_, c)| c)
    }

    /// The candidate works.
    pub(crate) fn works(&mut self, candidate: usize) {
        self.probing = None;
        self.found = Some(candidate);
    }

    /// The candidate does not work: probe the next one better than
    /// `index`, or end the round and wait longer.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        candidate: usize,
        index: usize,
        random: f64,
    ) -> Option<(u64, usize)> {
        if candidate + 1 < index {
            return self.probe(candidate + 1);
        }
        self.failed(now, random);
        None
    }

    fn failed(&mut self, now: Instant, random: f64) {
        self.probing = None;
        self.delay = (self.delay * 2).min(MAX_REPROBE);
        self.due = now + jittered(self.delay, random);
    }

    /// The better transport found, if any (kept until taken).
    pub(crate) fn found(&self) -> Option<usize> {
        self.found
    }

    pub(crate) fn take_found(&mut self) -> Option<usize> {
        self.found.take()
    }
}

/// `delay` spread over ±25 %.
fn jittered(delay: Duration, random: f64) -> Duration {
    whole_millis(delay.as_secs_f64() * 1000.0 * (0.75 + 0.5 * random.clamp(0.0, 1.0)))
}
