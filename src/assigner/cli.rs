//! Options of `jr-auto-assigner`; each also from a `JRQ_ASSIGNER_*` variable.

use std::time::Duration;

use clap::Parser;

use super::AssignerConfig;
use crate::db::workers::CircuitPolicy;
use crate::error::Result;
use crate::telemetry::LogFormat;
use crate::validate;

/// jr-auto-assigner — routes pending tasks to live workers with free capacity.
///
/// Variables: each option also reads the JRQ_ASSIGNER_* variable shown with it; DATABASE_URL
/// (and libpq's PG* variables), JRQ_POOL_MODE (session, or transaction behind PgBouncer) and
/// JRQ_LOG_FORMAT are shared by every program. The older
/// names without ASSIGNER_ (JRQ_POLL_INTERVAL, ...) are still read, with a warning.
#[derive(Debug, Parser)]
#[command(name = "jr-auto-assigner", version, about)]
pub struct AssignerArgs {
    /// Registry name (letters, digits, '_', '.', '-'). Default: assigner.<host>. Give each
    /// assigner on one host its own name.
    #[arg(long, env = "JRQ_ASSIGNER_NAME")]
    pub name: Option<String>,

    /// Most tasks routed per round. Range: 1 to 10000.
    #[arg(long, env = "JRQ_ASSIGNER_BATCH_SIZE", default_value_t = super::DEFAULT_BATCH_SIZE as i32, value_parser = validate::count_in::<i32>(1, 10000))]
    pub batch_size: i32,

    /// Time between rounds when no notification arrives. Range: 10ms to 1h.
    #[arg(long, env = "JRQ_ASSIGNER_POLL_INTERVAL", default_value = crate::validate::format_duration(super::DEFAULT_POLL_INTERVAL), value_parser = validate::duration_in("10ms", "1h"))]
    pub poll_interval: Duration,

    /// Time between heartbeats and maintenance (and watchdog pings); lowered to half of
    /// WatchdogSec when that is shorter. Range: 100ms to 5m.
    #[arg(long, env = "JRQ_ASSIGNER_HEARTBEAT_INTERVAL", default_value = crate::validate::format_duration(crate::daemon::defaults::HEARTBEAT_INTERVAL), value_parser = validate::duration_in("100ms", "5m"))]
    pub heartbeat_interval: Duration,

    /// A worker whose heartbeat is older than this is not online: it gets no tasks, and
    /// the tasks assigned to it but not started go back to pending. Range: 1s to 1h.
    #[arg(long, env = "JRQ_ASSIGNER_ONLINE_THRESHOLD", default_value = crate::validate::format_duration(crate::db::workers::DEFAULT_ONLINE_THRESHOLD), value_parser = validate::duration_in("1s", "1h"))]
    pub online_threshold: Duration,

    /// A task pinned to a worker that is not online waits this long (from when it became
    /// ready), then fails with "target worker 'NAME' is not online". Range: 0s to 1d.
    #[arg(long, env = "JRQ_ASSIGNER_PIN_GRACE", default_value = crate::validate::format_duration(super::DEFAULT_PIN_GRACE), value_parser = validate::duration_in("0s", "1d"))]
    pub pin_grace: Duration,

    /// Consecutive failed attempts that open a worker's circuit (it gets no new tasks). Range: 1 to 1000.
    #[arg(long, env = "JRQ_ASSIGNER_CIRCUIT_FAILURES", default_value_t = super::DEFAULT_CIRCUIT_FAILURES, value_parser = validate::count_in::<i32>(1, 1000))]
    pub circuit_failures: i32,

    /// Cool-down of an open circuit after the last failure; doubles with each further
    /// failure, resets on a success. Range: 0s to 1d.
    #[arg(long, env = "JRQ_ASSIGNER_CIRCUIT_COOLDOWN", default_value = crate::validate::format_duration(super::DEFAULT_CIRCUIT_COOLDOWN), value_parser = validate::duration_in("0s", "1d"))]
    pub circuit_cooldown: Duration,

    /// Longest circuit cool-down. Range: 0s to 7d.
    #[arg(long, env = "JRQ_ASSIGNER_CIRCUIT_MAX_COOLDOWN", default_value = crate::validate::format_duration(super::DEFAULT_CIRCUIT_MAX_COOLDOWN), value_parser = validate::duration_in("0s", "7d"))]
    pub circuit_max_cooldown: Duration,

    /// While the database is unreachable, keep pinging the watchdog this long. Range: 0s to 1h.
    #[arg(long, env = "JRQ_ASSIGNER_DB_GRACE", default_value = crate::validate::format_duration(crate::daemon::defaults::DB_GRACE), value_parser = validate::duration_in("0s", "1h"))]
    pub db_grace: Duration,

    /// Another process holding this name is dead once its heartbeat is older than this. Range: 1s to 1h.
    #[arg(long, env = "JRQ_ASSIGNER_TAKEOVER_AFTER", default_value = crate::validate::format_duration(crate::daemon::defaults::TAKEOVER_AFTER), value_parser = validate::duration_in("1s", "1h"))]
    pub takeover_after: Duration,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, env = "JRQ_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// PostgreSQL address (URL or libpq "key=value"); default: the libpq PG* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl AssignerArgs {
    /// The configuration and database address these options describe.
    pub fn into_parts(self) -> Result<(AssignerConfig, crate::db::DbConfig)> {
        let cfg = AssignerConfig {
            name: self.name.unwrap_or_else(super::default_name),
            batch_size: i64::from(self.batch_size),
            poll_interval: self.poll_interval,
            heartbeat_interval: self.heartbeat_interval,
            online_threshold: self.online_threshold,
            pin_grace: self.pin_grace,
            circuit: CircuitPolicy {
                failures: self.circuit_failures,
                cooldown: self.circuit_cooldown,
                max_cooldown: self.circuit_max_cooldown,
            },
            db_grace: self.db_grace,
            takeover_after: self.takeover_after,
        };
        cfg.validate()?;
        let db = crate::db::config_from(self.database_url.as_deref(), "jr-auto-assigner")?;
        Ok((cfg, db))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_options_default_to_the_config_defaults() {
        let (cfg, _) = AssignerArgs::try_parse_from(["jr-auto-assigner", "--name", "a"])
            .unwrap()
            .into_parts()
            .unwrap();
        let d = AssignerConfig {
            name: "a".into(),
            ..AssignerConfig::default()
        };
        assert_eq!(cfg, d);
    }
}
