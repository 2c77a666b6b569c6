//! `jr-stale-cleanup`: ends this host's worker processes that have no reason to live.
//! Everything lives in `jrq::cleanup`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    // Before anything else (no thread yet): the older, shared variable names.
    let legacy = jrq::envvars::adopt_legacy(&jrq::cleanup::CleanupArgs::command(), "JRQ_CLEANUP_");
    let args = jrq::cleanup::CleanupArgs::parse();
    jrq::telemetry::init(args.log_format, "warn");
    jrq::envvars::warn(&legacy);
    jrq::process::block_on_main("jr-stale-cleanup", jrq::cleanup::run(args), |()| 0)
}
