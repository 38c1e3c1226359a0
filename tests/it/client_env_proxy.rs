//! The client honours `HTTP_PROXY` / `NO_PROXY` from the environment on
//! every transport. Environment variables are process-wide, so this runs the
//! `client` example (built with the tests) as a child process with its own
//! environment, against an in-process echo server and proxy.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::client_support::*;
use holdfast_testkit::{Behavior, Proxy};

/// `target/<profile>/examples/client`, next to this test's binary.
fn client_example() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join("client");
    assert!(
        path.exists(),
        "{} is missing: `cargo test --all-targets` (or `cargo build --examples`) builds it",
        path.display()
    );
    path
}

/// Runs the example against `url` with `env`; returns its JSON summary.
async fn run_client(url: &str, transport: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let mut command = tokio::process::Command::new(client_example());
    command
        .args([
            "--url",
            url,
            "--transport",
            transport,
            "--count",
            "300",
            "--timeout",
            "20",
        ])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the client example finished in time")
        .expect("the client example ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client example failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("the summary is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_from_the_environment_carries_every_transport() {
    let server = EchoServer::start(quick_server_config()).await;
    let proxy = Proxy::builder().start().await.expect("proxy");
    for transport in ["websocket", "sse", "long-poll"] {
        let before = proxy.stats();
        let summary = run_client(&server.url(), transport, &[("HTTP_PROXY", &proxy.url())]).await;
        assert_eq!(summary["transport"], transport, "{summary}");
        assert_eq!(summary["lost"], 0);
        let after = proxy.stats();
        assert!(
            after.connections > before.connections,
            "{transport} did not go through HTTP_PROXY: {after:?}"
        );
        if transport == "websocket" {
            assert!(after.connects > before.connects, "WebSocket uses CONNECT");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_connect_leaves_the_http_transports() {
    let server = EchoServer::start(quick_server_config()).await;
    let proxy = Proxy::builder()
        .behavior(Behavior::default().refuse_connect(403))
        .start()
        .await
        .expect("proxy");
    let summary = run_client(&server.url(), "auto", &[("http_proxy", &proxy.url())]).await;
    assert_eq!(summary["transport"], "sse", "{summary}");
    assert_eq!(summary["lost"], 0);
    assert!(proxy.stats().connects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_bypasses_the_proxy() {
    let server = EchoServer::start(quick_server_config()).await;
    let proxy = Proxy::builder().start().await.expect("proxy");
    let summary = run_client(
        &server.url(),
        "auto",
        &[
            ("HTTP_PROXY", &proxy.url()),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ],
    )
    .await;
    assert_eq!(summary["transport"], "websocket", "{summary}");
    assert_eq!(proxy.stats().connections, 0, "NO_PROXY was ignored");
}
