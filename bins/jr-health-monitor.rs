//! `jr-health-monitor`: one round of rescue and health checks. Everything lives in
//! `jrq::monitor`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::monitor::cli::MonitorArgs::parse();
    jrq::telemetry::init(args.log_format, "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jr-health-monitor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(jrq::monitor::cli::run(args)) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("jr-health-monitor: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
