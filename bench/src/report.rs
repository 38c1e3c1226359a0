//! Results: one JSON line per run as it finishes, and Markdown tables with
//! the ratios to the raw WebSocket baseline at the end.

use std::io::Write as _;
use std::time::Duration;

use holdfast_client::TransportKind;
use serde_json::{Value, json};

use crate::echo::{EchoResult, EchoSpec, Target};
use crate::fanout::FanoutResult;
use crate::idle::IdleResult;
use crate::topics::TopicsResult;

/// One measured run.
pub enum Row {
    Echo {
        target: Target,
        spec: EchoSpec,
        msgs_per_sec: f64,
        p: [f64; 3],
        cpu_us_per_msg: f64,
    },
    Fanout {
        subscribers: usize,
        published: usize,
        deliveries_per_sec: f64,
        p: [f64; 3],
        cpu_us_per_delivery: f64,
    },
    Topics {
        nodes: usize,
        store: &'static str,
        subscribers: usize,
        published: usize,
        window: usize,
        deliveries_per_sec: f64,
        p: [f64; 3],
        cpu_us_per_delivery: f64,
        redis_us_per_message: f64,
    },
    Idle {
        kind: TransportKind,
        sessions: usize,
        bytes_per_session: f64,
    },
    Resume {
        kind: TransportKind,
        messages: u64,
        elapsed: Duration,
    },
}

fn target_name(target: Target) -> String {
    match target {
        Target::RawWs => "raw tungstenite".into(),
        Target::Holdfast(kind) => format!("holdfast {kind}"),
        Target::HoldfastWire => "holdfast websocket, wire client".into(),
    }
}

impl Row {
    pub fn echo(target: Target, spec: EchoSpec, result: &mut EchoResult) -> Self {
        let messages = result.round_trips.max(1) as f64;
        Self::Echo {
            target,
            spec,
            msgs_per_sec: result.round_trips as f64 / result.seconds,
            p: result.latencies.percentiles(),
            cpu_us_per_msg: result.server_cpu_seconds * 1e6 / messages,
        }
    }

    pub fn fanout(mut result: FanoutResult) -> Self {
        Self::Fanout {
            subscribers: result.subscribers,
            published: result.published,
            deliveries_per_sec: result.deliveries as f64 / result.seconds.max(1e-9),
            p: result.latencies.percentiles(),
            cpu_us_per_delivery: result.server_cpu_seconds * 1e6 / result.deliveries.max(1) as f64,
        }
    }

    pub fn topics(mut result: TopicsResult) -> Self {
        Self::Topics {
            nodes: result.nodes,
            store: result.store,
            subscribers: result.spec.subscribers,
            published: result.spec.messages,
            window: result.spec.window,
            deliveries_per_sec: result.deliveries as f64 / result.seconds.max(1e-9),
            p: result.latencies.percentiles(),
            cpu_us_per_delivery: result.server_cpu_seconds * 1e6 / result.deliveries.max(1) as f64,
            redis_us_per_message: result.redis_cpu_seconds * 1e6
                / result.spec.messages.max(1) as f64,
        }
    }

    pub fn idle(kind: TransportKind, result: IdleResult) -> Self {
        Self::Idle {
            kind,
            sessions: result.sessions,
            bytes_per_session: result.bytes_per_session,
        }
    }

    pub fn resume(kind: TransportKind, messages: u64, elapsed: Duration) -> Self {
        Self::Resume {
            kind,
            messages,
            elapsed,
        }
    }

    fn json(&self) -> Value {
        match self {
            Self::Echo {
                target,
                spec,
                msgs_per_sec,
                p,
                cpu_us_per_msg,
            } => json!({
                "bench": "echo", "target": target_name(*target), "clients": spec.clients,
                "size": spec.size, "window": spec.window, "msgs_per_sec": msgs_per_sec.round(),
                "p50_us": p[0], "p99_us": p[1], "p999_us": p[2],
                "server_cpu_us_per_msg": round2(*cpu_us_per_msg),
            }),
            Self::Fanout {
                subscribers,
                published,
                deliveries_per_sec,
                p,
                cpu_us_per_delivery,
            } => json!({
                "bench": "fanout", "subscribers": subscribers, "published": published,
                "deliveries_per_sec": deliveries_per_sec.round(),
                "p50_us": p[0], "p99_us": p[1], "p999_us": p[2],
                "server_cpu_us_per_delivery": round2(*cpu_us_per_delivery),
            }),
            Self::Topics {
                nodes,
                store,
                subscribers,
                published,
                window,
                deliveries_per_sec,
                p,
                cpu_us_per_delivery,
                redis_us_per_message,
            } => json!({
                "bench": "topics", "nodes": nodes, "store": store,
                "subscribers": subscribers, "published": published, "window": window,
                "deliveries_per_sec": deliveries_per_sec.round(),
                "p50_us": p[0], "p99_us": p[1], "p999_us": p[2],
                "server_cpu_us_per_delivery": round2(*cpu_us_per_delivery),
                "redis_cpu_us_per_message": round2(*redis_us_per_message),
            }),
            Self::Idle {
                kind,
                sessions,
                bytes_per_session,
            } => json!({
                "bench": "idle", "transport": kind.as_str(), "sessions": sessions,
                "bytes_per_session": bytes_per_session.round(),
            }),
            Self::Resume {
                kind,
                messages,
                elapsed,
            } => json!({
                "bench": "resume", "transport": kind.as_str(), "messages": messages,
                "ms": round2(elapsed.as_secs_f64() * 1000.0),
            }),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Collects rows, prints each as JSON, and the tables at the end.
pub struct Report {
    rows: Vec<Row>,
    json: Option<std::fs::File>,
}

impl Report {
    pub fn new(json_path: Option<String>) -> Self {
        let json = json_path.and_then(|p| std::fs::File::create(p).ok());
        Self {
            rows: Vec::new(),
            json,
        }
    }

    pub fn add(&mut self, row: Row) {
        let line = row.json().to_string();
        println!("{line}");
        if let Some(file) = &mut self.json {
            let _ = writeln!(file, "{line}");
        }
        self.rows.push(row);
    }

    pub fn print_tables(&self) {
        self.print_echo();
        self.print_others();
    }

    fn baseline(&self, clients: usize, size: usize, window: usize) -> Option<(f64, f64)> {
        self.rows.iter().find_map(|row| match row {
            Row::Echo {
                target: Target::RawWs,
                spec,
                p,
                cpu_us_per_msg,
                ..
            } if spec.clients == clients && spec.size == size && spec.window == window => {
                Some((*cpu_us_per_msg, p[0]))
            }
            _ => None,
        })
    }

    fn print_echo(&self) {
        let echo: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| matches!(r, Row::Echo { .. }))
            .collect();
        if echo.is_empty() {
            return;
        }
        println!(
            "\n### Echo (server pinned to one core; window of messages in flight per client)\n"
        );
        println!(
            "| window | clients × size | server | msgs/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/msg | CPU vs raw | p50 vs raw |"
        );
        println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in echo {
            if let Row::Echo {
                target,
                spec,
                msgs_per_sec,
                p,
                cpu_us_per_msg,
            } = row
            {
                let (cpu_ratio, p50_ratio) =
                    match self.baseline(spec.clients, spec.size, spec.window) {
                        Some((cpu, p50)) if cpu > 0.0 && p50 > 0.0 => (
                            format!("{:.2}×", cpu_us_per_msg / cpu),
                            format!("{:.2}×", p[0] / p50),
                        ),
                        _ => ("–".into(), "–".into()),
                    };
                println!(
                    "| {} | {} × {} B | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} |",
                    spec.window,
                    spec.clients,
                    spec.size,
                    target_name(*target),
                    msgs_per_sec,
                    p[0],
                    p[1],
                    p[2],
                    cpu_us_per_msg,
                    cpu_ratio,
                    p50_ratio
                );
            }
        }
    }

    fn print_topics(&self) {
        let topics: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| matches!(r, Row::Topics { .. }))
            .collect();
        if topics.is_empty() {
            return;
        }
        println!(
            "\n### Topics (nodes and redis-server pinned to CPU 0, clients to CPU 1; server CPU summed over the nodes)\n"
        );
        println!(
            "| nodes | store | subscribers | messages | window | deliveries/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/delivery | redis-server CPU µs/message |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in topics {
            if let Row::Topics {
                nodes,
                store,
                subscribers,
                published,
                window,
                deliveries_per_sec,
                p,
                cpu_us_per_delivery,
                redis_us_per_message,
            } = row
            {
                let redis = if *store == "redis" {
                    format!("{redis_us_per_message:.1}")
                } else {
                    "–".into()
                };
                println!(
                    "| {nodes} | {store} | {subscribers} | {published} | {window} | {deliveries_per_sec:.0} | {:.0} | {:.0} | {:.0} | {cpu_us_per_delivery:.2} | {redis} |",
                    p[0], p[1], p[2]
                );
            }
        }
    }

    fn print_others(&self) {
        for row in &self.rows {
            match row {
                Row::Fanout {
                    subscribers,
                    published,
                    deliveries_per_sec,
                    p,
                    cpu_us_per_delivery,
                } => {
                    println!("\n### Fan-out\n");
                    println!(
                        "| subscribers | messages | deliveries/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/delivery |"
                    );
                    println!("|---:|---:|---:|---:|---:|---:|---:|");
                    println!(
                        "| {subscribers} | {published} | {deliveries_per_sec:.0} | {:.0} | {:.0} | {:.0} | {cpu_us_per_delivery:.2} |",
                        p[0], p[1], p[2]
                    );
                }
                Row::Topics { .. } | Row::Idle { .. } | Row::Resume { .. } | Row::Echo { .. } => {}
            }
        }
        self.print_topics();
        let idle: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| matches!(r, Row::Idle { .. }))
            .collect();
        if !idle.is_empty() {
            println!("\n### Idle sessions (server resident memory)\n");
            println!("| transport | sessions | KiB per session |");
            println!("|---|---:|---:|");
            for row in idle {
                if let Row::Idle {
                    kind,
                    sessions,
                    bytes_per_session,
                } = row
                {
                    println!(
                        "| {kind} | {sessions} | {:.1} |",
                        bytes_per_session / 1024.0
                    );
                }
            }
        }
        let resume: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| matches!(r, Row::Resume { .. }))
            .collect();
        if !resume.is_empty() {
            println!("\n### Resume (reconnect and receive the messages queued meanwhile)\n");
            println!("| transport | messages | ms |");
            println!("|---|---:|---:|");
            for row in resume {
                if let Row::Resume {
                    kind,
                    messages,
                    elapsed,
                } = row
                {
                    println!(
                        "| {kind} | {messages} | {:.1} |",
                        elapsed.as_secs_f64() * 1000.0
                    );
                }
            }
        }
    }
}
