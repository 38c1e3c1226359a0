//! `holdfast-bench scale` and `storm` at a size CI runs in seconds: the
//! counts must be exact (every session opened and held; after a network
//! blip every session resumed, none lost; after a server restart every
//! session lost and reopened). Timings are printed, never checked.

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_holdfast-bench"))
        .args(args)
        .output()
        .expect("holdfast-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "holdfast-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The value of `key=` on the line that starts with `prefix`.
fn field<'a>(out: &'a str, prefix: &str, key: &str) -> &'a str {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn scale_opens_and_holds_every_session_on_every_transport() {
    for kind in ["websocket", "sse", "long-poll", "raw"] {
        let out = bench(&["scale", kind, "30"]);
        assert_eq!(field(&out, kind, "sessions"), "30", "{out}");
        // The server holds them: at least one connection per session.
        let fds: usize = field(&out, kind, "server_fds").parse().unwrap();
        assert!(fds >= 30, "{out}");
    }
}

#[test]
fn a_blip_resumes_every_session() {
    for kind in ["websocket", "sse", "long-poll"] {
        let out = bench(&[
            "storm",
            "blip",
            kind,
            "20",
            "--per-addr",
            "5",
            "--deadline",
            "30",
        ]);
        let prefix = format!("storm blip {kind}");
        assert_eq!(field(&out, &prefix, "back"), "20", "{out}");
        assert_eq!(field(&out, &prefix, "lost"), "0", "{out}");
        assert_eq!(field(&out, &prefix, "failed"), "0", "{out}");
    }
}

#[test]
fn a_restart_loses_every_session_and_each_client_opens_a_new_one() {
    for kind in ["websocket", "long-poll"] {
        let out = bench(&[
            "storm",
            "restart",
            kind,
            "20",
            "--per-addr",
            "5",
            "--deadline",
            "30",
        ]);
        let prefix = format!("storm restart {kind}");
        assert_eq!(field(&out, &prefix, "lost"), "20", "{out}");
        assert_eq!(field(&out, &prefix, "back"), "20", "{out}");
        assert_eq!(field(&out, &prefix, "failed"), "0", "{out}");
    }
}
