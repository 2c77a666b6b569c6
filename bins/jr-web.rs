//! `jr-web`: the dashboard, /metrics and /healthz. Everything lives in `jrq::web`.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    // Before anything else (no thread yet): the monitor's older variable names (the
    // overview's alerts use the monitor's thresholds).
    let legacy = jrq::envvars::adopt_legacy_where(
        &jrq::monitor::cli::MonitorArgs::command(),
        "JRQ_MONITOR_",
        // The thresholds only: the monitor's outputs and restarts are not the dashboard's.
        |new| {
            !matches!(
                new,
                "JRQ_MONITOR_JSON"
                    | "JRQ_MONITOR_WATCH"
                    | "JRQ_MONITOR_TEXTFILE"
                    | "JRQ_MONITOR_MANAGER"
                    | "JRQ_MONITOR_SYSTEMCTL"
                    | "JRQ_MONITOR_ALERT_ON_CHANGE"
            )
        },
    );
    let args = jrq::web::cli::WebArgs::parse();
    jrq::telemetry::init(args.log_format, "info");
    jrq::envvars::warn(&legacy);
    let work = async {
        let (cfg, db) = args.into_parts()?;
        let shutdown = jrq::shutdown::from_signals()
            .map_err(|e| jrq::Error::io("cannot install signal handlers", e))?;
        jrq::web::run(cfg, db, shutdown).await
    };
    jrq::process::block_on_main("jr-web", work, |()| 0)
}
