//! `jr-queue-worker --name NAME`: runs the tasks assigned to NAME. Everything it does
//! lives in `jrq::worker`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    // Before anything else (no thread yet): the older, shared variable names.
    let legacy =
        jrq::envvars::adopt_legacy(&jrq::worker::cli::WorkerArgs::command(), "JRQ_WORKER_");
    let args = jrq::worker::cli::WorkerArgs::parse();
    jrq::telemetry::init(args.log_format, "info");
    jrq::envvars::warn(&legacy);
    let work = async {
        let (cfg, db_cfg, handler) = args.into_parts()?;
        let shutdown = jrq::shutdown::from_signals()
            .map_err(|e| jrq::Error::io("cannot install signal handlers", e))?;
        jrq::worker::Worker::new(cfg, db_cfg, handler)
            .run(shutdown)
            .await
    };
    jrq::process::block_on_main("jr-queue-worker", work, |_exit| 0)
}
