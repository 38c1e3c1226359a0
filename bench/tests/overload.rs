//! The overload run at CI scale (`holdfast-bench overload websocket 1,3
//! --quick`): a few seconds of open-loop load at and past what a slowed-down
//! server can echo, with every session's echoes checked for exactly-once
//! delivery in order, every message drained, and new sessions refused with
//! close 4503 while the server is full — each refusal seen by a client also
//! counted by the server. Correctness only: no timing is checked.

use std::process::Command;

#[test]
fn overload_at_ci_scale_keeps_exactly_once_and_counts_refusals() {
    let output = Command::new(env!("CARGO_BIN_EXE_holdfast-bench"))
        .args(["overload", "websocket", "1,3", "--quick"])
        .output()
        .expect("the bench binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "overload --quick failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("OVERLOAD CHECKS HELD: 2 runs"),
        "no verdict:\n{stdout}"
    );
    // The arrivals' refusals, as the clients saw them and as the server
    // counted them (the command itself fails when the two differ).
    let refused = stdout
        .lines()
        .filter(|line| line.contains("server counted: rejected_too_many_sessions"))
        .count();
    assert_eq!(refused, 2, "refusals not counted in both runs:\n{stdout}");
}
