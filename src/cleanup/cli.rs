//! Options of `jr-stale-cleanup`; each also from a `JRQ_*` variable.

use std::time::Duration;

use super::{scan_processes, Cleanup, CleanupConfig, DEFAULT_GRACE};
use crate::db::ServerId;
use crate::error::Result;
use crate::host;

/// Options of `jr-stale-cleanup`; each also from a `JRQ_CLEANUP_*` variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "jr-stale-cleanup",
    version,
    about = "jr-stale-cleanup — find (and with --force, end) this host's worker processes that have no reason to live",
    after_help = "Variables: each option also reads the JRQ_CLEANUP_* variable shown with it; DATABASE_URL (and libpq's PG* variables), JRQ_POOL_MODE (session, or transaction behind PgBouncer) and JRQ_LOG_FORMAT are shared by every program. The older names without CLEANUP_ (JRQ_FORCE, ...) are still read, with a warning."
)]
pub struct CleanupArgs {
    /// Act: end stale processes and release registry rows whose process is gone. Without
    /// it, a dry run that changes nothing.
    #[arg(long, env = "JRQ_CLEANUP_FORCE", value_parser = clap::builder::BoolishValueParser::new())]
    pub force: bool,
    /// After SIGTERM, time a stale worker gets to drain before SIGKILL. Range: 0s to 1h.
    #[arg(long, env = "JRQ_CLEANUP_GRACE", default_value = crate::validate::format_duration(DEFAULT_GRACE), value_parser = crate::validate::duration_in("0s", "1h"))]
    pub grace: Duration,
    /// Print the report as JSON.
    #[arg(long, env = "JRQ_CLEANUP_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// Log format: auto, text, json, journald.
    #[arg(long, env = "JRQ_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: crate::telemetry::LogFormat,
    /// PostgreSQL address (URL or libpq "key=value"); default: the libpq PG* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Runs the cleanup as the options say and prints the report.
pub async fn run(args: CleanupArgs) -> Result<()> {
    let db = crate::db::config_from(args.database_url.as_deref(), "jr-stale-cleanup")?;
    let mut client = crate::db::connect(&db).await?;
    crate::db::check_schema(&client).await?;
    let cleanup = Cleanup::new(CleanupConfig {
        force: args.force,
        grace: args.grace,
        host: host::hostname(),
        boot_id: host::boot_id(),
        server: ServerId::from_env(args.database_url.as_deref(), &|k| std::env::var(k).ok())?,
    });
    let report = cleanup.run_once(&mut client, scan_processes()).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| crate::Error::encode("the report", e))?;
        crate::process::print_out(&format!("{text}\n"));
    } else {
        // Names and run ids in it come from other processes' command lines.
        crate::process::print_out(&crate::text::for_terminal(
            &super::render_text(&report),
            true,
        ));
    }
    Ok(())
}
