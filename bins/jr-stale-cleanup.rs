//! `jr-stale-cleanup`: ends this host's worker processes that have no reason to live.
//! Everything lives in `jrq::cleanup`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::cleanup::CleanupArgs::parse();
    jrq::telemetry::init(args.log_format, "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jr-stale-cleanup: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(jrq::cleanup::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jr-stale-cleanup: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
