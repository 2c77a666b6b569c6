//! `jr-health-monitor`: one round of rescue and health checks. Everything lives in
//! `jrq::monitor`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    // Before anything else (no thread yet): the older, shared variable names.
    let legacy =
        jrq::envvars::adopt_legacy(&jrq::monitor::cli::MonitorArgs::command(), "JRQ_MONITOR_");
    let args = jrq::monitor::cli::MonitorArgs::parse();
    jrq::telemetry::init(args.log_format, "warn");
    jrq::envvars::warn(&legacy);
    jrq::process::block_on_main("jr-health-monitor", jrq::monitor::cli::run(args), |s| s)
}
