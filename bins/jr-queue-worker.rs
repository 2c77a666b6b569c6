//! `jr-queue-worker --name NAME`: runs the tasks assigned to NAME. Everything it does
//! lives in `jrq::worker`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::worker::cli::WorkerArgs::parse();
    jrq::telemetry::init(args.log_format, "info");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jr-queue-worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (cfg, db_cfg, handler) = args.into_parts()?;
        let shutdown = jrq::shutdown::from_signals()
            .map_err(|e| jrq::Error::io("cannot install signal handlers", e))?;
        jrq::worker::Worker::new(cfg, db_cfg, handler)
            .run(shutdown)
            .await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jr-queue-worker: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
