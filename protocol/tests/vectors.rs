//! Replays every scenario vector in `protocol/vectors/` against the
//! connector, in virtual time. The JS client's suite replays the same files
//! against its port of the machine (`client/js/test/node/vectors.test.js`):
//! the two clients' connection policies are one spec.
//!
//! The format is described in `protocol/vectors/README.md`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use holdfast_protocol::connector::{
    Action, AttemptEnd, Backoff, Carried, Connector, ConnectorConfig, GiveUp, SendFailure,
    SendVerdict,
};
use holdfast_protocol::{Close, CloseCode, TransportKind};
use serde_json::{Value, json};

#[test]
fn every_vector_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("protocol/vectors")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the vectors are missing: {files:?}");
    let mut failed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read a vector");
        let vector: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        if let Err(why) = replay(&vector) {
            failed.push(format!("{}: {why}", file.display()));
        }
    }
    assert!(failed.is_empty(), "vectors failed:\n{}", failed.join("\n"));
}

/// Replays one vector; the first mismatch, if any.
fn replay(vector: &Value) -> Result<(), String> {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let random = vector["random"].as_f64().unwrap_or(0.5);
    let config = config(&vector["config"])?;
    let mut connector = Connector::new(config, t0, Box::new(move || random));
    let mut last_probe = None;
    let mut previous = 0;
    let steps = vector["steps"].as_array().ok_or("no steps")?;
    for (n, step) in steps.iter().enumerate() {
        let ms = step["at"].as_u64().ok_or(format!("step {n}: no `at`"))?;
        if ms < previous {
            return Err(format!("step {n}: `at` goes back in time"));
        }
        previous = ms;
        // Timers that fire before this step must do nothing the vector did
        // not list at their time.
        for _ in 0..100 {
            let Some(deadline) = connector.poll_timeout().filter(|d| *d < at(ms)) else {
                break;
            };
            let actions = drain(&mut connector, deadline, &mut last_probe);
            if !actions.is_empty() {
                let when = deadline.duration_since(t0).as_millis();
                return Err(format!(
                    "step {n}: at {when} ms, before this step, the connector did {} (list it in a step at {when})",
                    Value::Array(actions)
                ));
            }
            if connector.poll_timeout() == Some(deadline) {
                return Err(format!("step {n}: a timer fires and does nothing"));
            }
        }
        let mut actions = Vec::new();
        if let Some(input) = step.get("input") {
            if let Some(verdict) = apply(&mut connector, at(ms), input, last_probe)
                .map_err(|e| format!("step {n}: {e}"))?
            {
                actions.push(verdict);
            }
        }
        actions.extend(drain(&mut connector, at(ms), &mut last_probe));
        let expected = step["expect"].as_array().cloned().unwrap_or_default();
        if actions.len() != expected.len()
            || !expected.iter().zip(&actions).all(|(e, a)| matches(e, a))
        {
            return Err(format!(
                "step {n} (at {ms} ms): expected {}, got {}",
                Value::Array(expected),
                Value::Array(actions)
            ));
        }
        if let Some(report) = step.get("report") {
            let actual: Vec<Value> = connector
                .fallbacks()
                .iter()
                .map(|f| {
                    json!({
                        "from": f.from.as_str(),
                        "to": f.to.as_str(),
                        "cause": f.cause.label(),
                        "status": f.cause.status(),
                        "after": f.after.as_millis() as u64,
                    })
                })
                .collect();
            let expected = report.as_array().ok_or("`report` is not a list")?;
            if actual.len() != expected.len()
                || !expected.iter().zip(&actual).all(|(e, a)| matches(e, a))
            {
                return Err(format!(
                    "step {n}: fallback report: expected {report}, got {}",
                    Value::Array(actual)
                ));
            }
        }
    }
    Ok(())
}

fn drain(connector: &mut Connector, now: Instant, last_probe: &mut Option<u64>) -> Vec<Value> {
    let mut actions = Vec::new();
    while let Some(action) = connector.poll(now) {
        if let Action::Probe { id, .. } = &action {
            *last_probe = Some(*id);
        }
        actions.push(encode(&action));
        assert!(actions.len() < 100, "the connector does not settle");
    }
    actions
}

fn encode(action: &Action) -> Value {
    match action {
        Action::Attach {
            transport,
            fresh_session,
            greeting_timeout,
        } => json!({
            "attach": transport.as_str(),
            "fresh": fresh_session,
            "greeting": greeting_timeout.as_millis() as u64,
        }),
        Action::Stop => json!({"stop": true}),
        Action::Probe { transport, .. } => json!({"probe": transport.as_str()}),
        Action::Remember(transport) => json!({"remember": transport.as_str()}),
        Action::Reconnecting {
            attempt,
            delay,
            reason,
        } => json!({"reconnecting": {
            "attempt": attempt,
            "delay": delay.as_millis() as u64,
            "reason": reason,
        }}),
        Action::Check => json!({"check": true}),
        Action::GiveUp(GiveUp::Refused(close)) => json!({"give_up": {"refused": close.code.0}}),
        Action::GiveUp(GiveUp::NoTransport(failures)) => json!({"give_up": {
            "no_transport": failures.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }}),
    }
}

/// Whether `actual` has every field `expected` names, with equal values.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(key, value)| a.get(key).is_some_and(|actual| matches(value, actual))),
        _ => expected == actual,
    }
}

fn apply(
    connector: &mut Connector,
    now: Instant,
    input: &Value,
    last_probe: Option<u64>,
) -> Result<Option<Value>, String> {
    if let Some(name) = input.as_str() {
        match name {
            "opened" => connector.opened(now),
            "trusted" => connector.trusted(now),
            "send_ok" => connector.send_succeeded(Carried::Messages),
            "ack_send_ok" => connector.send_succeeded(Carried::Control),
            other => return Err(format!("unknown input {other:?}")),
        }
        return Ok(None);
    }
    let (name, value) = input
        .as_object()
        .and_then(|o| o.iter().next())
        .ok_or(format!("bad input {input}"))?;
    match name.as_str() {
        "ended" => connector.ended(now, attempt_end(value)?),
        "probed" => {
            let id = last_probe.ok_or("`probed` without a probe")?;
            connector.probed(now, id, value.as_bool().ok_or("`probed` takes a boolean")?);
        }
        "wake" => connector.wake(now, value == "online"),
        "send_failed" | "ack_send_failed" => {
            let carried = if name == "send_failed" {
                Carried::Messages
            } else {
                Carried::Control
            };
            let failure = match (
                value.as_str(),
                value.as_object().and_then(|o| o.iter().next()),
            ) {
                (Some("failed"), _) => SendFailure::Failed { retry_after: None },
                (Some("refused"), _) => SendFailure::Refused,
                (_, Some((kind, fields))) if kind == "failed" => SendFailure::Failed {
                    retry_after: millis(&fields["retry_after"]),
                },
                (_, Some((kind, fields))) if kind == "overloaded" => SendFailure::Overloaded {
                    retry_after: millis(&fields["retry_after"]),
                },
                _ => return Err(format!("bad send_failed {value}")),
            };
            return Ok(Some(match connector.send_failed(carried, failure) {
                SendVerdict::Retry(delay) => json!({"resend": delay.as_millis() as u64}),
                SendVerdict::EndAttachment => json!({"end_attachment": true}),
            }));
        }
        other => return Err(format!("unknown input {other:?}")),
    }
    Ok(None)
}

fn attempt_end(value: &Value) -> Result<AttemptEnd, String> {
    if let Some(name) = value.as_str() {
        return Ok(match name {
            "unreachable" => AttemptEnd::Unreachable,
            "timeout" => AttemptEnd::Timeout,
            "no_first_frame" => AttemptEnd::NoFirstFrame,
            "invalid" => AttemptEnd::Invalid,
            "closed" => AttemptEnd::Closed,
            "silent" => AttemptEnd::Silent,
            "stopped" => AttemptEnd::Stopped,
            "session_closed" => AttemptEnd::SessionClosed,
            other => return Err(format!("unknown ending {other:?}")),
        });
    }
    if let Some(status) = value.get("status") {
        return Ok(AttemptEnd::Status {
            status: status.as_u64().ok_or("bad status")? as u16,
            retry_after: millis(&value["retry_after"]),
        });
    }
    if let Some(close) = value.get("detached") {
        return Ok(AttemptEnd::Detached(close_of(close)?));
    }
    if let Some(close) = value.get("refused") {
        return Ok(AttemptEnd::Refused(close_of(close)?));
    }
    Err(format!("bad ending {value}"))
}

fn close_of(value: &Value) -> Result<Close, String> {
    let code = value["code"].as_u64().ok_or("a close needs a code")? as u16;
    let mut close = Close::new(
        CloseCode(code),
        value["reason"].as_str().unwrap_or("").to_owned(),
    );
    close.retry_after = millis(&value["retry_after"]);
    Ok(close)
}

fn millis(value: &Value) -> Option<Duration> {
    value.as_u64().map(Duration::from_millis)
}

fn config(value: &Value) -> Result<ConnectorConfig, String> {
    let mut config = ConnectorConfig::default();
    let Some(fields) = value.as_object() else {
        return Ok(config);
    };
    for (key, value) in fields {
        match key.as_str() {
            "transports" => {
                config.transports = value
                    .as_array()
                    .ok_or("transports is a list")?
                    .iter()
                    .map(transport)
                    .collect::<Result<_, _>>()?;
            }
            "remembered" => {
                config.remembered = if value.is_null() {
                    None
                } else {
                    Some(transport(value)?)
                };
            }
            "backoff" => {
                let defaults = Backoff::default();
                config.backoff = Backoff {
                    initial: millis(&value["initial"]).unwrap_or(defaults.initial),
                    max: millis(&value["max"]).unwrap_or(defaults.max),
                    jitter: value["jitter"].as_f64().unwrap_or(defaults.jitter),
                    reset_after: millis(&value["reset_after"]).unwrap_or(defaults.reset_after),
                };
            }
            "reprobe_after" => config.reprobe_after = millis(value).ok_or("reprobe_after")?,
            "connect_timeout" => config.connect_timeout = millis(value),
            "send_retries" => {
                config.send_retries = value.as_u64().ok_or("send_retries")? as u32;
            }
            "probe_timeout" => config.probe_timeout = millis(value).ok_or("probe_timeout")?,
            other => return Err(format!("unknown config field {other:?}")),
        }
    }
    Ok(config)
}

fn transport(value: &Value) -> Result<TransportKind, String> {
    match value.as_str() {
        Some("websocket") => Ok(TransportKind::WebSocket),
        Some("sse") => Ok(TransportKind::Sse),
        Some("long-poll") => Ok(TransportKind::LongPoll),
        _ => Err(format!("unknown transport {value}")),
    }
}
