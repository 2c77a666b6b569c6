//! What every binary's `main` does: run its future on a single-threaded runtime, and turn
//! an error into one line on stderr and its exit status; and how programs print their
//! results, so that a closed pipe (`jrq tasks | head`) ends them quietly.

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
    // Every jrq program holds the database password (in its environment, in memory): none
    // is dumpable, so a program of the same user — a task's executor, anything else that
    // user runs — cannot read it from /proc/PID/environ or /proc/PID/mem.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("{program}: cannot protect its memory from other processes: {e}");
        return ExitCode::FAILURE;
    }
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

/// Writes `text` to standard output. When the reader has gone (`| head`), the program
/// ends at once and quietly with status 0, as `cat` would: what it was asked to do is done
/// (results are printed after their transaction committed), only the rest of its output
/// has nobody to read it. Any other write error ends it with one line and status 1.
pub fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
