//! The examples as users run them: the `client` example against the `echo`
//! example delivers 10,000 messages exactly, on each forced transport and
//! on auto. Both run as child processes, built with the tests.

use std::process::Stdio;
use std::time::Duration;

use crate::example_support::example;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the echo example on a free port; returns it and its base URL.
async fn start_echo() -> (Child, String) {
    let mut child = Command::new(example("echo"))
        .args(["--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("echo example starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(at) = line.find("http://") {
                return line[at..].trim().to_owned();
            }
        }
        panic!("the echo example exited before saying where it listens");
    })
    .await
    .expect("the echo example said where it listens");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_example_delivers_10k_exactly_on_every_transport() {
    let (_echo, url) = start_echo().await;
    for transport in ["websocket", "sse", "long-poll", "auto"] {
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            Command::new(example("client"))
                .args(["--url", &url, "--transport", transport, "--count", "10000"])
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the client example finished in time")
        .expect("the client example ran");
        let stdout = String::from_utf8_lossy(&output.stdout);
        println!("{transport}: {}", stdout.trim());
        assert!(
            output.status.success(),
            "{transport}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().expect("summary")).expect("JSON summary");
        assert_eq!(summary["received"], 10_000, "{summary}");
        assert_eq!(summary["lost"], 0);
        assert_eq!(summary["duplicated"], 0);
        assert_eq!(summary["reordered"], 0);
        let expected = if transport == "auto" {
            "websocket"
        } else {
            transport
        };
        assert_eq!(summary["transport"], expected);
    }
}
