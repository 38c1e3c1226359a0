//! The operator's documents agree with each other and with the code:
//!
//! - `docs/grafana-holdfast.json` is a well-formed dashboard whose every
//!   query names only metrics that `docs/operations.md` documents, on the
//!   `${DS_PROMETHEUS}` data source it asks for when imported;
//! - every query written in `docs/operations.md` names documented metrics
//!   too (a typo in a query an operator copies is a bug);
//! - every metric name the server and the Redis store write in their
//!   source (a string literal `"holdfast_…"`) is documented.
//!
//! Only files are read: no server runs, so this takes milliseconds. It
//! lives in the bench crate because that crate already has a JSON parser
//! and no other job for `cargo test` to wait on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The three kinds of metric `docs/operations.md` may give.
const KINDS: [&str; 3] = ["counter", "gauge", "histogram"];

/// The series a Prometheus histogram `name` is scraped as, besides none
/// of its own name.
const HISTOGRAM_SERIES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metrics reference of operations.md: every table row that starts
/// with a metric name in backticks, with its kind in the next cell.
fn documented(markdown: &str) -> Result<BTreeMap<String, String>, String> {
    let mut metrics = BTreeMap::new();
    for (number, line) in markdown.lines().enumerate() {
        let Some(rest) = line.strip_prefix("| `holdfast_") else {
            continue;
        };
        let mut cells = rest.split('|');
        let name = cells
            .next()
            .unwrap_or_default()
            .trim()
            .trim_end_matches('`');
        let name = format!("holdfast_{name}");
        if !is_metric_name(&name) {
            return Err(format!(
                "line {}: {name:?} is not a metric name",
                number + 1
            ));
        }
        let kind = cells.next().unwrap_or_default().trim();
        if !KINDS.contains(&kind) {
            return Err(format!(
                "line {}: {name} has kind {kind:?}, not one of {KINDS:?}",
                number + 1
            ));
        }
        if metrics.insert(name.clone(), kind.to_owned()).is_some() {
            return Err(format!("line {}: {name} is documented twice", number + 1));
        }
    }
    if metrics.is_empty() {
        return Err("no metric table (rows starting with | `holdfast_…`)".to_owned());
    }
    Ok(metrics)
}

fn is_metric_name(name: &str) -> bool {
    name.len() > "holdfast_".len()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Every `holdfast_…` name in `text`, except Rust paths (`holdfast_protocol::…`).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("holdfast_") {
        let start = at + found;
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut end = start + "holdfast_".len();
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        let inside_word = start > 0 && word(bytes[start - 1]);
        if !inside_word && !text[end..].starts_with("::") {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// Whether `name` is a documented metric or one of the series a documented
/// histogram is scraped as.
fn resolves(name: &str, metrics: &BTreeMap<String, String>) -> bool {
    if metrics.contains_key(name) {
        return true;
    }
    HISTOGRAM_SERIES.iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| metrics.get(base))
            .is_some_and(|kind| kind == "histogram")
    })
}

/// Every panel of a dashboard, rows' collapsed panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        all.push(panel);
    }
    all
}

/// Checks a dashboard against the documented metrics; the number of
/// queries checked, or every problem found.
fn check_dashboard(json: &str, metrics: &BTreeMap<String, String>) -> Result<usize, Vec<String>> {
    let dashboard: Value =
        serde_json::from_str(json).map_err(|e| vec![format!("not JSON: {e}")])?;
    let mut problems = Vec::new();
    let asks_for_prometheus = dashboard["__inputs"].as_array().is_some_and(|inputs| {
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus")
    });
    if !asks_for_prometheus {
        problems.push("no DS_PROMETHEUS input of type prometheus in __inputs".to_owned());
    }
    if dashboard["title"].as_str().is_none_or(str::is_empty) {
        problems.push("no title".to_owned());
    }
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            continue;
        }
        if !panel["id"].as_u64().is_some_and(|id| ids.insert(id)) {
            problems.push(format!("{title}: missing or repeated id"));
        }
        if panel["datasource"]["uid"] != "${DS_PROMETHEUS}" {
            problems.push(format!("{title}: data source is not ${{DS_PROMETHEUS}}"));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no query"));
        }
        for target in targets {
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("{title}: a target without expr"));
                continue;
            };
            queries += 1;
            let names = names_in(expr);
            if names.is_empty() {
                problems.push(format!("{title}: {expr:?} names no holdfast metric"));
            }
            for name in names {
                if !resolves(&name, metrics) {
                    problems.push(format!(
                        "{title}: {name} is not documented in docs/operations.md"
                    ));
                }
            }
        }
    }
    if queries == 0 {
        problems.push("no panel with a query".to_owned());
    }
    if problems.is_empty() {
        Ok(queries)
    } else {
        Err(problems)
    }
}

/// The metric names written as string literals in the Rust files under
/// `dir`.
fn names_in_source(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                names.extend(literal_names(&text));
            }
        }
    }
    names
}

/// `"holdfast_…"` string literals holding a metric name and nothing else.
fn literal_names(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("\"holdfast_") {
        rest = &rest[at + 1..];
        if let Some(end) = rest.find('"') {
            if is_metric_name(&rest[..end]) {
                names.insert(rest[..end].to_owned());
            }
        }
    }
    names
}

#[test]
fn the_dashboard_names_only_documented_metrics() {
    let metrics = documented(&read("docs/operations.md")).unwrap();
    match check_dashboard(&read("docs/grafana-holdfast.json"), &metrics) {
        Ok(queries) => assert!(queries >= 9, "only {queries} queries"),
        Err(problems) => panic!("docs/grafana-holdfast.json:\n{}", problems.join("\n")),
    }
}

/// The PromQL of a Markdown page: its `promql` and `yaml` (alert rules)
/// blocks, and its inline code that names a metric or calls a function.
fn queries_in(markdown: &str) -> Vec<&str> {
    let mut queries = Vec::new();
    let mut fence: Option<bool> = None;
    for line in markdown.lines() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(matches!(info.trim(), "promql" | "yaml")),
            };
            continue;
        }
        match fence {
            Some(true) => queries.push(line),
            Some(false) => {}
            None => queries.extend(
                line.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|code| code.starts_with("holdfast_") || code.contains('(')),
            ),
        }
    }
    queries
}

#[test]
fn the_queries_in_operations_md_name_documented_metrics() {
    let text = read("docs/operations.md");
    let metrics = documented(&text).unwrap();
    let queries = queries_in(&text);
    assert!(
        queries.len() >= 20,
        "only {} query lines found",
        queries.len()
    );
    let unknown: Vec<_> = names_in(&queries.join("\n"))
        .into_iter()
        .filter(|name| !resolves(name, &metrics))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/operations.md names undocumented metrics: {unknown:?}"
    );
}

#[test]
fn every_metric_the_code_names_is_documented() {
    let metrics = documented(&read("docs/operations.md")).unwrap();
    let mut undocumented = Vec::new();
    for dir in ["server/src", "redis/src"] {
        for name in names_in_source(&root().join(dir)) {
            if !metrics.contains_key(&name) {
                undocumented.push(format!("{dir}: {name}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "metrics missing from docs/operations.md: {undocumented:?}"
    );
}

// The checks themselves: each must refuse what it is there to refuse.

const DOC: &str = "\
| name | kind | labels |
|---|---|---|
| `holdfast_sessions` | gauge | `state` |
| `holdfast_ack_delay_seconds` | histogram | — |
| `holdfast_rejections_total` | counter | `reason` |
";

fn dashboard_with(expr: &str) -> String {
    serde_json::json!({
        "__inputs": [{"name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}],
        "title": "t",
        "panels": [
            {"type": "row", "title": "r", "id": 1, "panels": [{
                "id": 2, "type": "timeseries", "title": "p",
                "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
                "targets": [{"refId": "A", "expr": expr}],
            }]},
        ],
    })
    .to_string()
}

#[test]
fn a_dashboard_naming_an_undocumented_metric_is_refused() {
    let metrics = documented(DOC).unwrap();
    let good =
        "histogram_quantile(0.99, sum by (le) (rate(holdfast_ack_delay_seconds_bucket[5m])))";
    assert_eq!(check_dashboard(&dashboard_with(good), &metrics), Ok(1));
    let typo = "sum(rate(holdfast_rejection_total[5m]))";
    let problems = check_dashboard(&dashboard_with(typo), &metrics).unwrap_err();
    assert!(
        problems[0].contains("holdfast_rejection_total"),
        "{problems:?}"
    );
    // `_bucket` belongs to histograms only.
    let bucket = "holdfast_sessions_bucket";
    assert!(check_dashboard(&dashboard_with(bucket), &metrics).is_err());
    assert!(check_dashboard(&dashboard_with("up"), &metrics).is_err());
    assert!(check_dashboard("{\"panels\": [", &metrics).is_err());
    let elsewhere = dashboard_with(good).replace("${DS_PROMETHEUS}", "prod");
    assert!(check_dashboard(&elsewhere, &metrics).is_err());
}

#[test]
fn the_metric_table_is_read_strictly() {
    assert_eq!(documented(DOC).unwrap().len(), 3);
    assert!(documented("no table").is_err());
    assert!(documented("| `holdfast_x` | summary | — |").is_err());
    assert!(documented("| `holdfast_x` | gauge | — |\n| `holdfast_x` | gauge | — |").is_err());
}

#[test]
fn queries_are_read_from_promql_blocks_and_inline_code() {
    let page = "Run `rate(holdfast_a[5m])` or `holdfast_b`, not `RUST_LOG=holdfast_c`.\n\
                ```promql\nholdfast_d\n```\n```sh\nholdfast_e\n```\n```yaml\nexpr: holdfast_f\n```\n";
    let names = names_in(&queries_in(page).join("\n"));
    let expected = ["holdfast_a", "holdfast_b", "holdfast_d", "holdfast_f"];
    assert_eq!(names, expected.map(str::to_owned).into());
}

#[test]
fn names_are_found_in_queries_and_code() {
    let names =
        names_in("rate(holdfast_a_total[1m]) / holdfast_b, holdfast_protocol::x, my_holdfast_c");
    assert_eq!(
        names,
        BTreeSet::from(["holdfast_a_total".to_owned(), "holdfast_b".to_owned()])
    );
    let literals =
        literal_names(r#"const A: &str = "holdfast_a"; let b = "holdfast_b x"; f("holdfast_c");"#);
    assert_eq!(
        literals,
        BTreeSet::from(["holdfast_a".to_owned(), "holdfast_c".to_owned()])
    );
}
