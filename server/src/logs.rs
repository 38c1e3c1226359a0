//! Logging what clients control, safely: their strings escaped and cut,
//! and warnings a flood of requests could repeat thousands of times a
//! second throttled.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A client-supplied string made safe for a log line: escaped (no line
/// breaks, no terminal escapes: the Debug form) and cut to the 123 bytes a
/// WebSocket close reason may hold, so a client can neither forge log lines
/// nor flood the log.
pub(crate) fn loggable(text: &str) -> impl std::fmt::Debug + '_ {
    const MAX: usize = holdfast_protocol::wire::MAX_CLOSE_REASON;
    let mut end = text.len().min(MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Loggable {
        text: &text[..end],
        cut: end < text.len(),
    }
}

struct Loggable<'a> {
    text: &'a str,
    cut: bool,
}

impl std::fmt::Debug for Loggable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text)?;
        if self.cut {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Lets a warning through at most once per `every`; the rest go to
/// `debug`. One per kind of event.
pub(crate) struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
        }
    }

    /// Whether a warning at `now` should be logged at `warn`.
    pub(crate) fn allow(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match *last {
            Some(at) if now < at + self.every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loggable_escapes_and_cuts() {
        let text = format!("a\nb\u{1b}[31m{}", "é".repeat(100));
        let shown = format!("{:?}", loggable(&text));
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'));
        assert!(shown.ends_with('…'));
        assert!(shown.len() < 2 * 123);
        assert_eq!(format!("{:?}", loggable("short")), "\"short\"");
    }

    #[test]
    fn throttle_lets_one_warning_through_per_period() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(throttle.allow(t0));
        assert!(!throttle.allow(t0 + Duration::from_secs(1)));
        assert!(throttle.allow(t0 + Duration::from_secs(10)));
    }
}
