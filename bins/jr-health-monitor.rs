//! `jr-health-monitor`: one round of rescue and health checks. Everything lives in
//! `jrq::monitor`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::monitor::cli::MonitorArgs::parse();
    jrq::telemetry::init(args.log_format, "warn");
    jrq::process::block_on_main("jr-health-monitor", jrq::monitor::cli::run(args), |s| s)
}
