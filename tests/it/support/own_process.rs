//! A process of its own for a test that measures the whole process.
//!
//! Resident memory is per process. In one test binary, the tests of every
//! other module run alongside on the default test threads, and their
//! allocations would count against a test that bounds what an attack makes
//! the server hold. Such a test starts with [`run_alone`]: in the test run
//! it re-runs itself in a child process — this same binary, that one test
//! (`--exact`), one thread — and passes if the child passed; in the child
//! it returns `true` and the test body runs, alone.

use std::process::Stdio;
use std::time::Duration;

/// Set in the child to the name of the one test it runs.
const CHILD_VAR: &str = "HOLDFAST_OWN_PROCESS";

/// The longest a child may run.
const CHILD_DEADLINE: Duration = Duration::from_secs(180);

/// `true`: this is the child, run the test's body. `false`: the test
/// `function` of module `module` (`module_path!()`) ran in a child process
/// and passed (a failure panics with the child's output); return.
pub async fn run_alone(module: &str, function: &str) -> bool {
    // `it::hardening_deadlines` → `hardening_deadlines::function`, the name
    // the test harness knows the test by.
    let module = module.split_once("::").map_or("", |(_, rest)| rest);
    let name = if module.is_empty() {
        function.to_owned()
    } else {
        format!("{module}::{function}")
    };
    if std::env::var(CHILD_VAR).is_ok_and(|running| running == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let child = tokio::process::Command::new(exe)
        .args([&name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_VAR, &name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the test binary again");
    let output = tokio::time::timeout(CHILD_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not end within {CHILD_DEADLINE:?} on its own"))
        .expect("wait for the child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The test's own output, under this test's name in the parent run.
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    print!("{stdout}");
    assert!(
        output.status.success(),
        "{name} failed in its own process ({})",
        output.status
    );
    // A name that matched nothing would "pass" with 0 tests.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name}: the child process did not run exactly this test"
    );
    false
}
