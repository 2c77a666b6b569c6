//! `jr-stale-cleanup`: ends this host's worker processes that have no reason to live.
//! Everything lives in `jrq::cleanup`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::cleanup::CleanupArgs::parse();
    jrq::telemetry::init(args.log_format, "warn");
    jrq::process::block_on_main("jr-stale-cleanup", jrq::cleanup::run(args), |()| 0)
}
