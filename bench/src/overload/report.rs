//! What the overload runs print (a line per run, a Markdown table) and
//! whether they held ([`check`]).

use super::Options;
use super::results::RunResult;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn print_run(r: &RunResult) {
    let (p50, p99) = (r.p50, r.p99);
    println!(
        "{:.2}×: offered {:.0}/s, echoed {:.0}/s, server CPU {:.0} % (generator {:.0} %), admitted p50 {:.1} ms p99 {:.1} ms max {:.1} ms \
         ({} measured messages not echoed by the end)",
        r.multiple,
        r.offered,
        r.achieved,
        r.server_cpu * 100.0,
        r.generator_cpu * 100.0,
        p50 / 1000.0,
        p99 / 1000.0,
        r.max_latency_us / 1000.0,
        r.unechoed
    );
    print!("  server RSS MiB over time:");
    for sample in r.samples.iter().step_by(4) {
        // `?`: `/stats` did not answer in time (the server is saturated).
        let buffered = sample
            .stats
            .get("buffered_bytes")
            .map_or("?".to_owned(), |b| format!("{:.0}", mib(*b)));
        print!(" {:.0}s:{:.0}/{buffered}", sample.at, mib(sample.rss));
    }
    println!(" (rss/buffered)");
    print!("  scheduling lag ms over time:");
    for sample in r.samples.iter().step_by(4) {
        let lag = sample
            .stats
            .get("lag_ms")
            .map_or("?".to_owned(), u64::to_string);
        print!(" {:.0}s:{lag}", sample.at);
    }
    println!();
    for (name, tally) in [("established", &r.established), ("arrivals", &r.arrivals)] {
        let [open_p50, open_p99] = tally.open_percentiles;
        println!(
            "  {name}: admitted {} (open p50 {:.1} ms p99 {:.1} ms), 4503 {} ({} busy), other refusals {}, \
             connect failed {}, timed out {}, ended by the server {} {:?}; due {}, echoed {}, \
             exactly-once breaches {}{}",
            tally.admitted,
            open_p50 / 1000.0,
            open_p99 / 1000.0,
            tally.refused_4503,
            tally.refused_busy,
            tally.other,
            tally.connect_failed,
            tally.timed_out,
            tally.ended_by_server,
            tally.end_codes,
            tally.due,
            tally.echoed,
            tally.violations,
            tally
                .first_violation
                .as_deref()
                .map(|v| format!(" (first: {v})"))
                .unwrap_or_default(),
        );
    }
    let rejected: Vec<String> = r
        .final_stats
        .iter()
        .filter(|(name, _)| name.starts_with("rejected_"))
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    println!(
        "  server counted: {}; most messages waiting in one client for window room: {}",
        if rejected.is_empty() {
            "no refusals".to_owned()
        } else {
            rejected.join(", ")
        },
        r.max_waiting
    );
}

pub fn print_table(options: &Options, capacity: f64, results: &[RunResult]) {
    println!();
    println!(
        "| load | offered/s | echoed/s | server CPU | p50 ms | p99 ms | max ms | not echoed | peak RSS MiB | final RSS MiB | peak buffered MiB | arrivals admitted / 4503 (busy) / no answer in 10 s | breaches |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in results {
        let (p50, p99) = (r.p50, r.p99);
        let peak = r.samples.iter().map(|s| s.rss).max().unwrap_or(0);
        let last = r.samples.last().map_or(0, |s| s.rss);
        // `/stats` waits in line with everything else: when it mostly did
        // not answer, its peak says nothing.
        let answered: Vec<u64> = r
            .samples
            .iter()
            .filter_map(|s| s.stats.get("buffered_bytes").copied())
            .collect();
        let buffered = if answered.len() * 2 >= r.samples.len() {
            format!("{:.1}", mib(answered.iter().copied().max().unwrap_or(0)))
        } else {
            "?".to_owned()
        };
        println!(
            "| {:.1}× | {:.0} | {:.0} | {:.0} % | {:.1} | {:.1} | {:.0} | {} | {:.0} | {:.0} | {} | {} / {} ({}) / {} | {} |",
            r.multiple,
            r.offered,
            r.achieved,
            r.server_cpu * 100.0,
            p50 / 1000.0,
            p99 / 1000.0,
            r.max_latency_us / 1000.0,
            r.unechoed,
            mib(peak),
            mib(last),
            buffered,
            r.arrivals.admitted,
            r.arrivals.refused_4503,
            r.arrivals.refused_busy,
            r.arrivals.timed_out,
            r.established.violations + r.arrivals.violations,
        );
    }
    println!(
        "\ncapacity {capacity:.0} echoes/s; {} sessions × {} B, {:?} per run ({:?} warm-up), \
         {} arrivals/s of {} messages each, server: work {} µs/msg, max_sessions {}, \
         max_buffered_bytes {}, open_lag_limit {:?}",
        options.sessions,
        options.size,
        options.duration,
        options.warmup,
        options.arrivals,
        options.arrival_messages,
        options.serve.work.as_micros(),
        options.serve.max_sessions,
        options.serve.max_buffered_bytes,
        options.serve.open_lag_limit,
    );
}

/// The refusals of new sessions with close 4503 the server counted: at
/// `max_sessions`, and while its runtime lagged (`open_lag_limit`).
fn refusals_counted(r: &RunResult) -> u64 {
    ["rejected_too_many_sessions", "rejected_busy"]
        .iter()
        .filter_map(|name| r.final_stats.get(*name))
        .sum()
}

/// Whether the run held: no breach of exactly-once anywhere; with
/// `--quick`, also every message echoed, every established session
/// admitted, and the arrivals' refusals seen by the clients equal to those
/// the server counted.
pub fn check(options: &Options, results: &[RunResult]) -> bool {
    let mut ok = true;
    for r in results {
        let breaches = r.established.violations + r.arrivals.violations;
        if breaches > 0 {
            eprintln!(
                "FAIL {:.1}×: {breaches} breaches of exactly-once",
                r.multiple
            );
            ok = false;
        }
        if !options.quick {
            continue;
        }
        let counted = refusals_counted(r);
        let expectations = [
            (
                r.established.admitted == options.sessions as u64,
                "every established session admitted",
            ),
            (
                r.established.echoed == r.established.due && r.established.due > 0,
                "every message of the established sessions echoed",
            ),
            // An opening the client gave up on may still have been refused
            // (and counted) by the server later: the server's count lies
            // between what the clients saw and that plus what they gave up.
            // `holdfast-client` retries a 4503 after its `retry_after`
            // (and may then get in): its refusals show only on the server.
            (
                options.transport.is_some()
                    || (r.arrivals.refused_4503 <= counted
                        && counted
                            <= r.arrivals.refused_4503 + r.arrivals.timed_out + r.arrivals.other),
                "the server counted each refusal the clients saw, and no more",
            ),
        ];
        for (held, what) in expectations {
            if !held {
                eprintln!("FAIL {:.1}×: expected {what}", r.multiple);
                ok = false;
            }
        }
    }
    let refused: u64 = results
        .iter()
        .map(|r| match options.transport {
            None => r.arrivals.refused_4503,
            Some(_) => refusals_counted(r),
        })
        .sum();
    if options.quick && refused == 0 {
        eprintln!("FAIL: no arrival was refused with 4503");
        ok = false;
    }
    if ok {
        println!(
            "OVERLOAD CHECKS HELD: {} runs, exactly-once in every session",
            results.len()
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overload::results::Tally;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn result(violations: u64, refused: u64, counted: u64) -> RunResult {
        let mut final_stats = std::collections::BTreeMap::new();
        final_stats.insert("rejected_too_many_sessions".to_owned(), counted);
        RunResult {
            multiple: 3.0,
            offered: 1800.0,
            achieved: 1000.0,
            p50: 0.0,
            p99: 0.0,
            max_latency_us: 0.0,
            unechoed: 0,
            established: Tally {
                admitted: 8,
                due: 100,
                echoed: 100,
                violations,
                ..Tally::default()
            },
            arrivals: Tally {
                refused_4503: refused,
                ..Tally::default()
            },
            samples: Vec::new(),
            final_stats,
            max_waiting: 0,
            server_cpu: 0.0,
            generator_cpu: 0.0,
        }
    }

    #[test]
    fn the_checks_fail_on_a_breach_or_uncounted_refusals() {
        let quick = Options::parse(&args(&["websocket", "1", "--quick"])).unwrap();
        assert!(check(&quick, &[result(0, 5, 5)]));
        assert!(
            !check(&quick, &[result(1, 5, 5)]),
            "a breach of exactly-once"
        );
        assert!(
            !check(&quick, &[result(0, 5, 4)]),
            "a refusal the server missed"
        );
        assert!(
            !check(&quick, &[result(0, 5, 6)]),
            "a refusal no client saw"
        );
        assert!(!check(&quick, &[result(0, 0, 0)]), "no refusal at all");
        // Refusals while the server's runtime lagged are 4503 too.
        let mut busy = result(0, 5, 3);
        busy.final_stats.insert("rejected_busy".to_owned(), 2);
        assert!(check(&quick, &[busy]));
        assert!(check(&quick, &[result(0, 0, 0), result(0, 3, 3)]));
        let mut lost = result(0, 5, 5);
        lost.established.echoed -= 1;
        assert!(!check(&quick, &[lost]), "a message never echoed");
        // Outside CI mode only exactly-once is required.
        let full = Options::parse(&args(&["websocket", "1"])).unwrap();
        assert!(check(&full, &[result(0, 0, 0)]));
        assert!(!check(&full, &[result(2, 0, 0)]));
    }
}
