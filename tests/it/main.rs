//! holdfast's integration tests, as one test binary (`cargo test --test it`),
//! so that the support code compiles once. Run a module or a group with a
//! filter: `cargo test --test it session_endings::`, `cargo test --test it
//! hardening_`.
//!
//! Every test passes alone and alongside the others on the default test
//! threads. What separate binaries used to hide is handled where it
//! arises: tests that bound the process's resident memory re-run
//! themselves in a process of their own ([`support::own_process`]), and
//! the Rust client's echo servers are mounted at paths of their own
//! ([`client_support::unique_mount`]), since the client remembers per URL
//! what worked and the ports of finished tests come back.

// ---- support ----------------------------------------------------------------

/// The Rust client (`holdfast-client`) against an in-process echo server.
mod client_support;
/// The example binaries, run as child processes.
mod example_support;
/// A real nginx in front of in-process servers or example processes.
mod nginx_support;
/// In-process servers, seeds, exact-delivery checks, and the independent
/// wire client of `holdfast-conformance`.
mod support;

// ---- the wire protocol, spoken by the independent conformance client --------

/// One attachment at a time: a new one replaces the old with 4409.
mod attachments;
/// `holdfast-conformance <url>`'s checks, and a server that fails them.
mod conformance_checks;
/// CPU overload: busy sessions yield their worker, a lagging runtime
/// refuses new sessions (not resumes).
mod cpu_overload;
/// Every limit and refusal, each with its exact status and close code.
mod limits;
/// A Prometheus scrape after clients on each transport, cuts and refusals.
mod metrics_scrape;
/// Native text messages on WebSocket (`PROTOCOL.md` §2.2.1).
mod native_text;
/// The `Origin` check and the authentication hook on every transport.
mod origin_auth;
/// Pings, silence timeouts, poll continuation (`PROTOCOL.md` §6).
mod pings_and_timeouts;
/// Probes (`probe=1`) prove a transport without touching the session.
mod probes;
/// The gaps the independent client found in the protocol (issue 11).
mod protocol_gaps;
/// Exactly-once both ways across abrupt cuts and transport switches.
mod resume_across_cuts;
/// How sessions end: `close` after pending messages, dropped handles,
/// shutdown.
mod session_endings;
/// A detached session lives for the resume window, then is lost.
mod session_expiry;
/// Several sessions' downstreams on one request (`PROTOCOL.md` §11).
mod shared_requests;
/// An echo over each transport, as a user would first try it.
mod smoke;
/// Upstream flow control (`PROTOCOL.md` §3.1) on raw sockets.
mod upstream_window;
/// Batches, binary messages, unknown fields, `ping`/`pong`.
mod wire_format;

// ---- the HTTP transports in detail ------------------------------------------

/// Caching and buffering headers, SSE padding and recycling, the poll hold.
mod http_transports;

// ---- hardening: attackers on raw sockets (issue 10) -------------------------

/// Floods are charged per message; small payloads never pin large frames.
mod hardening_accounting;
/// Open rate limits, trusted proxies, re-authorization per request.
mod hardening_admission;
/// A deadline on every wait: slow readers, trickled heads and bodies.
mod hardening_deadlines;
/// Huge request heads refused, and at most so much of them kept.
mod hardening_headers;
/// Session keys outside URLs: header, subprotocol, never in access logs.
mod hardening_keys;
/// The server-wide budget on WebSocket input: bounded, never deadlocked.
mod overload_budget;

// ---- the Rust client through hostile networks -------------------------------

/// The soak: 100,000 messages each way through a changing hostile proxy.
mod chaos;
/// Transport-policy bugs the soak found, each with a control.
mod chaos_findings;
/// `HTTP_PROXY` / `NO_PROXY` honoured, in a child process.
mod client_env_proxy;
/// Acks during a refused send's `Retry-After`; greeting deadlines.
mod client_policy;
/// Fallback reports: the client tells the server why, once; hostile ones.
mod client_reports;
/// Fallback, switching up, error pages, cuts, expiry, overload.
mod client_switching;
/// `https://` and `wss://`, directly and through a `CONNECT` tunnel.
mod client_tls;

// ---- server features: broadcasting and topics -------------------------------

/// `Fanout`: every member gets everything once; slow members are cut.
mod fanout;
/// Topics on one node and on three nodes sharing a `MemoryCluster`.
mod topic_delivery;

// ---- behind a real nginx ----------------------------------------------------

/// The Rust client behind nginx in several configurations.
mod nginx;
/// Fallback timings per network scenario, printed for `docs/networks.md`.
mod nginx_report;

// ---- clusters ---------------------------------------------------------------

/// The chat example on three processes sharing Redis, behind nginx.
mod chat_cluster;
/// Nodes in this process sharing a `MemoryCluster`, behind nginx.
mod cluster_in_process;
/// `echo --redis` processes with a real Redis (and Redis Cluster), behind
/// nginx, killed and restarted under load.
mod cluster_processes;

// ---- the examples as users run them -----------------------------------------

/// The `client` example against the `echo` example, on every transport.
mod examples;
