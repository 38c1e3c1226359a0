//! The overload run at CI scale (`holdfast-bench overload <transport> 1,3
//! --quick`): a few seconds of open-loop load at and past what a slowed-down
//! server can echo, with every session's echoes checked for exactly-once
//! delivery in order, every message drained, and new sessions refused with
//! 503 / close 4503 while the server is full, each refusal counted by the
//! server (on WebSocket, whose wire client sees every refusal, exactly the
//! refusals the clients saw). Correctness only: no timing is checked.
//!
//! One test, the transports one after the other: each run pins its server
//! and its load to the same two cores.

use std::process::Command;

fn quick(transport: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_holdfast-bench"))
        .args(["overload", transport, "1,3", "--quick"])
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "overload {transport} --quick failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("OVERLOAD CHECKS HELD: 2 runs"),
        "no verdict:\n{stdout}"
    );
    // At `max_sessions` (`rejected_too_many_sessions`), or while the
    // runtime lagged (`rejected_busy`), should a loaded CI machine make it.
    let refused = stdout
        .lines()
        .filter(|line| line.contains("server counted: rejected_"))
        .count();
    assert_eq!(refused, 2, "refusals not counted in both runs:\n{stdout}");
}

#[test]
fn overload_at_ci_scale_keeps_exactly_once_and_counts_refusals() {
    for transport in ["websocket", "sse", "long-poll"] {
        quick(transport);
    }
}
