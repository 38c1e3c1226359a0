//! The example binaries (`echo`, `client`, …) as the tests run them: built
//! by `cargo test --all-targets` next to the test binaries.

#![allow(dead_code)]

use std::path::PathBuf;

/// The path of example `name`'s binary; panics with what to run if it is
/// missing.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --all-targets` builds the examples",
        path.display()
    );
    path
}
