//! `jr-auto-assigner`: routes pending tasks to live workers. Everything it does lives in
//! `jrq::assigner`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::assigner::cli::AssignerArgs::parse();
    jrq::telemetry::init(args.log_format, "info");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jr-auto-assigner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (cfg, db_cfg) = args.into_parts()?;
        let shutdown = jrq::shutdown::from_signals()
            .map_err(|e| jrq::Error::io("cannot install signal handlers", e))?;
        jrq::assigner::Assigner::new(cfg, db_cfg)
            .run(shutdown)
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jr-auto-assigner: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
