//! `holdfast-conformance <url>`: runs the wire checks of
//! [`holdfast_conformance::checks`] against the echo endpoint mounted at
//! `<url>` (`http://host:port/<mount>`), prints one line per check, and
//! exits 1 if any failed (2 on a usage error).

use std::process::ExitCode;

use holdfast_conformance::checks;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let url = match (args.next(), args.next()) {
        (Some(url), None) if url.starts_with("http://") => url,
        _ => {
            eprintln!(
                "usage: holdfast-conformance http://host:port/<mount>\n\
                 Runs the holdfast wire checks against a server whose application \
                 echoes every message back."
            );
            return ExitCode::from(2);
        }
    };
    // A check that cannot go on panics inside the wire helpers; its report
    // says why, so the default hook's message and backtrace are noise here.
    std::panic::set_hook(Box::new(|_| {}));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let reports = runtime.block_on(checks::run_all(url.trim_end_matches('/')));
    for report in &reports {
        println!("{report}");
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    println!("{} checks, {failed} failed", reports.len());
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
