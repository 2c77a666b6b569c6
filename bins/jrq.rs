//! `jrq`, the admin CLI. Everything it does lives in `jrq::admin`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = jrq::admin::Cli::parse();
    jrq::telemetry::init_stderr("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jrq: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(jrq::admin::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jrq: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
