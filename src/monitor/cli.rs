//! Options of `jr-health-monitor`; each also from a `JRQ_MONITOR_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::watch::Output;
use super::{Manager, Monitor, MonitorConfig};
use crate::error::{Error, Result};
use crate::telemetry::LogFormat;
use crate::validate;

/// jr-health-monitor — one round of rescue and health checks (a oneshot for a timer).
///
/// Exit status: 0 healthy, 3 a threshold was crossed (so the unit fails and OnFailure=
/// alerts), 1 an error, 2 bad arguments. With --alert-on-change (the unit's way): 3 only
/// when the queue became unhealthy, 4 when it recovered, 0 otherwise.
///
/// Variables: each option also reads the JRQ_MONITOR_* variable shown with it; DATABASE_URL
/// (and libpq's PG* variables), JRQ_POOL_MODE (session, or transaction behind PgBouncer) and
/// JRQ_LOG_FORMAT are shared by every program. The older
/// names without MONITOR_ (JRQ_STUCK_AFTER, ...) are still read, with a warning.
#[derive(Debug, Parser)]
#[command(name = "jr-health-monitor", version, about)]
pub struct MonitorArgs {
    /// A running task whose worker's heartbeat is older than this is stuck: it goes back
    /// to pending (attempt counted), or fails when its attempts are used up. Range: 1s to 1d.
    #[arg(long, env = "JRQ_MONITOR_STUCK_AFTER", default_value = crate::validate::format_duration(super::DEFAULT_STUCK_AFTER), value_parser = validate::duration_in("1s", "1d"))]
    pub stuck_after: Duration,
    /// A running task past its own timeout plus this, with a live worker, is failed. Range: 0s to 1d.
    #[arg(long, env = "JRQ_MONITOR_TIMEOUT_GRACE", default_value = crate::validate::format_duration(super::DEFAULT_TIMEOUT_GRACE), value_parser = validate::duration_in("0s", "1d"))]
    pub timeout_grace: Duration,
    /// A worker (or assigner) silent longer than this is marked offline; when it lives on
    /// this host its unit is restarted. Range: 1s to 1d.
    #[arg(long, env = "JRQ_MONITOR_DEAD_AFTER", default_value = crate::validate::format_duration(super::DEFAULT_DEAD_AFTER), value_parser = validate::duration_in("1s", "1d"))]
    pub dead_after: Duration,
    /// Alert when a worker marked offline had not responded for longer than this. Range: 1s to 30d.
    #[arg(long, env = "JRQ_MONITOR_SILENT_ALERT", default_value = crate::validate::format_duration(super::DEFAULT_SILENT_ALERT), value_parser = validate::duration_in("1s", "30d"))]
    pub silent_alert: Duration,
    /// Window of the failure rate. Range: 1m to 30d.
    #[arg(long, env = "JRQ_MONITOR_FAILURE_WINDOW", default_value = crate::validate::format_duration(super::DEFAULT_FAILURE_WINDOW), value_parser = validate::duration_in("1m", "30d"))]
    pub failure_window: Duration,
    /// Alert above this failure rate, in percent. Range: 0 to 100.
    #[arg(long, env = "JRQ_MONITOR_MAX_FAILURE_RATE", default_value_t = super::DEFAULT_MAX_FAILURE_RATE * 100.0)]
    pub max_failure_rate: f64,
    /// Alert when a ready task has waited longer than this. Range: 1s to 30d.
    #[arg(long, env = "JRQ_MONITOR_MAX_PENDING_AGE", default_value = crate::validate::format_duration(super::DEFAULT_MAX_PENDING_AGE), value_parser = validate::duration_in("1s", "30d"))]
    pub max_pending_age: Duration,
    /// Alert when a task has awaited a person's approval (`jrq enqueue --needs-approval`)
    /// longer than this. Range: 1m to 30d.
    #[arg(long, env = "JRQ_MONITOR_APPROVAL_ALERT_AFTER", default_value = crate::validate::format_duration(super::DEFAULT_APPROVAL_ALERT_AFTER), value_parser = validate::duration_in("1m", "30d"))]
    pub approval_alert_after: Duration,
    /// Alert when a transaction in this database (or a prepared transaction, or a
    /// replication slot) has held back vacuum longer than this: dead rows pile up and
    /// dispatch slows while it lasts. The transaction's age needs `pg_read_all_stats` for
    /// sessions of other users; --max-horizon-xids applies either way. Range: 1s to 30d.
    #[arg(long, env = "JRQ_MONITOR_MAX_HORIZON_AGE", default_value = crate::validate::format_duration(super::DEFAULT_MAX_HORIZON_AGE), value_parser = validate::duration_in("1s", "30d"))]
    pub max_horizon_age: Duration,
    /// Alert when the oldest holder of the vacuum horizon is this many transactions
    /// behind. Range: 1000 or more.
    #[arg(long, env = "JRQ_MONITOR_MAX_HORIZON_XIDS", default_value_t = super::DEFAULT_MAX_HORIZON_XIDS, value_parser = validate::count_in::<i64>(1000, i64::MAX as u64))]
    pub max_horizon_xids: i64,
    /// Alert above this usage of PostgreSQL's notification queue, in percent. Range: 0 to 100.
    #[arg(long, env = "JRQ_MONITOR_MAX_NOTIFY_QUEUE", default_value_t = super::DEFAULT_MAX_NOTIFY_QUEUE * 100.0)]
    pub max_notify_queue: f64,
    /// Alert above this many dead row versions in jr_work_queue. Range: 0 or more.
    #[arg(long, env = "JRQ_MONITOR_MAX_DEAD_TUPLES", default_value_t = super::DEFAULT_MAX_DEAD_TUPLES, value_parser = validate::count_in::<i64>(0, i64::MAX as u64))]
    pub max_dead_tuples: i64,
    /// Alert above this 1-minute load average per core. Range: 0 or more.
    #[arg(long, env = "JRQ_MONITOR_MAX_LOAD_PER_CORE", default_value_t = super::DEFAULT_MAX_LOAD_PER_CORE)]
    pub max_load_per_core: f64,
    /// Alert above this memory use, in percent. Range: 0 to 100.
    #[arg(long, env = "JRQ_MONITOR_MAX_MEMORY", default_value_t = super::DEFAULT_MAX_MEMORY * 100.0)]
    pub max_memory: f64,
    /// Alert when a worker's health score (0-100, see `jrq workers`) is this many points
    /// or more below the median of the alive workers. Compared only with 5 or more
    /// recorded attempts and 3 or more such workers. Range: 1 to 100.
    #[arg(long, env = "JRQ_MONITOR_HEALTH_GAP", default_value_t = super::DEFAULT_HEALTH_GAP)]
    pub health_gap: f64,
    /// Which systemd manager restarts local units: user, system, none.
    #[arg(long, env = "JRQ_MONITOR_MANAGER", value_enum, default_value = "user")]
    pub manager: Manager,
    /// The systemctl program.
    #[arg(long, env = "JRQ_MONITOR_SYSTEMCTL", default_value = "systemctl")]
    pub systemctl: PathBuf,
    /// Fail (exit 3) only on the round where the queue became unhealthy and exit 4 once
    /// when it is healthy again, instead of 3 on every unhealthy round: an OnFailure= alert
    /// then fires on each change, not every minute. The standing is kept in the database
    /// (jr_monitor_state), a row per host (some alerts are the host's own). With --watch,
    /// the changes are logged (ERROR into unhealthy, WARN on recovery).
    #[arg(long, env = "JRQ_MONITOR_ALERT_ON_CHANGE", value_parser = clap::builder::BoolishValueParser::new())]
    pub alert_on_change: bool,
    /// Print the report as JSON.
    #[arg(long, env = "JRQ_MONITOR_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// Also write the report in Prometheus' text format to this file (atomically), for
    /// node_exporter's textfile collector.
    #[arg(long, env = "JRQ_MONITOR_TEXTFILE", value_name = "PATH")]
    pub textfile: Option<PathBuf>,
    /// Repeat every INTERVAL instead of one round (for use without systemd's timer). Only
    /// the first round's error ends the program; a later failed round (the database
    /// restarting, say) is logged, the connection comes back with the daemons' backoff,
    /// and a round runs at once when it does. Under systemd it notifies like the other
    /// daemons (READY, WATCHDOG after each round that worked, STATUS). SIGTERM ends it
    /// (exit 0). Range: 1s to 1d.
    #[arg(long, env = "JRQ_MONITOR_WATCH", value_name = "INTERVAL", value_parser = validate::duration_in("1s", "1d"))]
    pub watch: Option<Duration>,
    /// Log format: auto, text, json, journald.
    #[arg(long, env = "JRQ_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,
    /// PostgreSQL address (URL or libpq "key=value"); default: the libpq PG* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

fn share(name: &str, pct: f64) -> Result<f64> {
    if !(0.0..=100.0).contains(&pct) {
        return Err(Error::usage(format!(
            "{name} {pct} is not a percentage between 0 and 100"
        )));
    }
    Ok(pct / 100.0)
}

impl MonitorArgs {
    /// The monitor's settings the options give.
    pub fn config(&self) -> Result<MonitorConfig> {
        let args = self;
        Ok(MonitorConfig {
            stuck_after: args.stuck_after,
            timeout_grace: args.timeout_grace,
            dead_after: args.dead_after,
            silent_alert: args.silent_alert,
            failure_window: args.failure_window,
            max_failure_rate: share("--max-failure-rate", args.max_failure_rate)?,
            max_pending_age: args.max_pending_age,
            approval_alert_after: args.approval_alert_after,
            max_horizon_age: args.max_horizon_age,
            max_horizon_xids: args.max_horizon_xids,
            max_notify_queue: share("--max-notify-queue", args.max_notify_queue)?,
            max_dead_tuples: args.max_dead_tuples,
            max_load_per_core: match args.max_load_per_core {
                x if x.is_finite() && x >= 0.0 => x,
                x => {
                    return Err(Error::usage(format!(
                        "--max-load-per-core {x} is out of range: give a number of 0 or more"
                    )))
                }
            },
            max_memory: share("--max-memory", args.max_memory)?,
            health_gap: match args.health_gap {
                x if (1.0..=100.0).contains(&x) => x,
                x => {
                    return Err(Error::usage(format!(
                        "--health-gap {x} is out of range: give 1 to 100 points"
                    )))
                }
            },
            manager: args.manager,
            systemctl: args.systemctl.clone(),
            alert_on_change: args.alert_on_change,
            ..Default::default()
        })
    }
}

/// Runs the monitor as the options say; returns the exit status.
pub async fn run(args: MonitorArgs) -> Result<u8> {
    let cfg = args.config()?;
    let db = crate::db::config_from(args.database_url.as_deref(), "jr-health-monitor")?;
    let monitor = Monitor::new(cfg).with_lock_db(db.clone());
    let out = Output {
        json: args.json,
        textfile: args.textfile,
    };
    if let Some(every) = args.watch {
        let shutdown = crate::shutdown::from_signals()
            .map_err(|e| Error::io("cannot install signal handlers", e))?;
        return super::watch::watch(monitor, db, out, every, shutdown).await;
    }
    // One round: connect, check the schema, act, report.
    let client = crate::db::connect(&db).await?;
    crate::db::check_schema(&client).await?;
    let report = monitor.run_once(&client).await?;
    out.publish(&report)?;
    Ok(report.exit_status(args.alert_on_change))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_options_default_to_the_config_defaults() {
        let cfg = MonitorArgs::try_parse_from(["jr-health-monitor"])
            .unwrap()
            .config()
            .unwrap();
        let d = MonitorConfig::default();
        assert_eq!(
            (
                cfg.stuck_after,
                cfg.timeout_grace,
                cfg.dead_after,
                cfg.silent_alert
            ),
            (d.stuck_after, d.timeout_grace, d.dead_after, d.silent_alert)
        );
        assert_eq!(
            (cfg.failure_window, cfg.max_pending_age, cfg.max_dead_tuples),
            (d.failure_window, d.max_pending_age, d.max_dead_tuples)
        );
        assert_eq!(
            (
                cfg.max_failure_rate,
                cfg.max_notify_queue,
                cfg.max_load_per_core,
                cfg.max_memory
            ),
            (
                d.max_failure_rate,
                d.max_notify_queue,
                d.max_load_per_core,
                d.max_memory
            )
        );
        assert_eq!((cfg.manager, cfg.systemctl), (d.manager, d.systemctl));
        assert_eq!(cfg.health_gap, d.health_gap);
    }
}
