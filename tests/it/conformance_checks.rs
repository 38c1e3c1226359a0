//! The checks of `holdfast-conformance <url>` (open, echo in order, resume
//! after cuts, on every transport) against this repository's server, and a
//! control: a server whose application changes what it echoes fails them.

use holdfast::server::{Holdfast, Message, ServerConfig, Session};
use holdfast_conformance::checks;

use crate::support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_echo_server_passes_every_conformance_check() {
    let server = TestServer::echo(ServerConfig::default()).await;
    let reports = checks::run_all(&server.base).await;
    for report in &reports {
        println!("{report}");
    }
    assert_eq!(reports.len(), 6, "two checks on each of three transports");
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(ToString::to_string)
        .collect();
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n"));
}

/// Echoes texts upper-cased: a protocol-abiding server whose echo is wrong.
async fn shouting_echo(session: Session) {
    while let Some(message) = session.recv().await {
        let echoed = match message {
            Message::Text(text) => Message::text(text.as_str().to_uppercase()),
            binary => binary,
        };
        if session.send(echoed).await.is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_that_changes_messages_fails_the_echo_check() {
    let holdfast = Holdfast::builder().on_session(shouting_echo);
    let server = TestServer::serve(holdfast).await;
    for transport in checks::Transport::ALL {
        let failure = checks::echo_in_order(&server.base, transport)
            .await
            .expect_err("an upper-cased echo passed");
        assert!(
            failure.contains("first difference at index 0"),
            "{transport:?}: {failure}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_at_the_url_fails_every_check_with_a_report() {
    // A port nothing listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let reports = checks::run_all(&format!("http://127.0.0.1:{port}/realtime")).await;
    assert_eq!(reports.len(), 6);
    for report in &reports {
        let failure = report.result.as_ref().expect_err("passed with no server");
        assert!(
            failure.contains("failed") || failure.contains("refused"),
            "{report}"
        );
    }
}
