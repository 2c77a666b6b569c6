//! `jrq`, the admin CLI. Everything it does lives in `jrq::admin`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = jrq::admin::Cli::parse();
    jrq::telemetry::init_stderr("warn");
    jrq::process::block_on_main("jrq", jrq::admin::run(cli), |code| code)
}
