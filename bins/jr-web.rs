//! `jr-web`: the dashboard, /metrics and /healthz. Everything lives in `jrq::web`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::web::cli::WebArgs::parse();
    jrq::telemetry::init(args.log_format, "info");
    let work = async {
        let (cfg, db) = args.into_parts()?;
        let shutdown = jrq::shutdown::from_signals()
            .map_err(|e| jrq::Error::io("cannot install signal handlers", e))?;
        jrq::web::run(cfg, db, shutdown).await
    };
    jrq::process::block_on_main("jr-web", work, |()| 0)
}
