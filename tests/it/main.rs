//! holdfast's integration tests, as one test binary (`cargo test --test it`).
//!
//! Each module below was once a binary of its own; together they compile
//! the support code once. Run one group or one file with a filter:
//! `cargo test --test it hardening_`, `cargo test --test it nginx::`.
//!
//! Tests that measure the whole process (resident memory) run in a process
//! of their own: see [`support::own_process`].

// ---- support ----------------------------------------------------------------

/// The wire-level support: in-process servers, seeds, exact-delivery checks,
/// and the independent client of `holdfast-conformance`.
mod support;

/// The Rust client (`holdfast-client`) against an in-process echo server.
mod client_support;

/// The example binaries, run as child processes.
mod example_support;

/// A real nginx in front of in-process servers.
mod nginx_support;

// ---- the wire protocol, spoken by the independent conformance client ---------

mod attachments;
/// The conformance binary's checks against an in-process server.
// TMP mod conformance_checks;

// ---- transports in detail -----------------------------------------------------
mod http_transports;
mod limits;
mod origin_auth;
/// Pings and silence timeouts (`PROTOCOL.md` §6).
mod pings_and_timeouts;
mod probes;
mod protocol_gaps;
/// Exactly-once both ways across abrupt cuts and transport switches.
mod resume_across_cuts;
/// How sessions end: `close`, dropped handles, shutdown.
mod session_endings;
/// A detached session lives for the resume window, then is lost.
mod session_expiry;
mod shared_requests;
mod smoke;
/// Upstream flow control (`PROTOCOL.md` §3.1) on raw sockets.
mod upstream_window;
mod wire_format;

// ---- hardening: attackers on raw sockets (issue 10) --------------------------

mod hardening_accounting;
mod hardening_admission;
mod hardening_deadlines;
mod hardening_headers;
mod hardening_keys;

// ---- the Rust client through hostile networks ---------------------------------

mod chaos;
mod chaos_findings;
mod client_env_proxy;
mod client_switching;
mod client_tls;

// ---- server features: broadcasting and topics ---------------------------------

mod fanout;
/// Topics on one node and on three nodes sharing a `MemoryCluster`.
mod topic_delivery;

// ---- behind a real nginx --------------------------------------------------------

mod nginx;
mod nginx_report;

// ---- clusters -------------------------------------------------------------------

/// The chat example on three processes sharing Redis, behind nginx.
mod chat_cluster;
/// Nodes in this process sharing a `MemoryCluster`, behind nginx.
mod cluster_in_process;
/// `echo --redis` processes, a real Redis (and Redis Cluster), behind nginx.
mod cluster_processes;

// ---- the examples as users run them ---------------------------------------------

mod examples;
