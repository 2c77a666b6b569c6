//! `jr-auto-assigner`: routes pending tasks to live workers. Everything it does lives in
//! `jrq::assigner`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    // Before anything else (no thread yet): the older, shared variable names.
    let legacy = jrq::envvars::adopt_legacy(
        &jrq::assigner::cli::AssignerArgs::command(),
        "JRQ_ASSIGNER_",
    );
    let args = jrq::assigner::cli::AssignerArgs::parse();
    jrq::telemetry::init(args.log_format, "info");
    jrq::envvars::warn(&legacy);
    let work = async {
        let (cfg, db_cfg) = args.into_parts()?;
        let shutdown = jrq::shutdown::from_signals()
            .map_err(|e| jrq::Error::io("cannot install signal handlers", e))?;
        jrq::assigner::Assigner::new(cfg, db_cfg)
            .run(shutdown)
            .await
    };
    jrq::process::block_on_main("jr-auto-assigner", work, |()| 0)
}
