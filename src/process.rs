//! What every binary's `main` does: run its future on a single-threaded runtime, and turn
//! an error into one line on stderr and its exit status.

use std::future::Future;
use std::process::ExitCode;

use crate::error::Result;

/// Runs `fut` to completion; `Ok(v)` exits with `ok(v)`, an error with one line
/// (`PROGRAM: message`) and its exit status.
pub fn block_on_main<T>(
    program: &str,
    fut: impl Future<Output = Result<T>>,
    ok: impl FnOnce(T) -> u8,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(v) => ExitCode::from(ok(v)),
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
