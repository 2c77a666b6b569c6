//! Options of `jr-queue-worker`. Each also comes from a `JRQ_*` variable; `--run` also
//! from `RUN_FILTER_ID` and `--max-loops` from `WORKER_MAX_LOOPS`, the names operators
//! already use.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use uuid::Uuid;

use super::executor::{ExecSpec, Handler, DEFAULT_OUTPUT_LIMIT};
use super::WorkerConfig;
use crate::error::{Error, Result};
use crate::telemetry::LogFormat;
use crate::validate;

/// jr-queue-worker — runs the tasks assigned to one worker name.
///
/// Variables: each option also reads the JRQ_WORKER_* variable shown with it; DATABASE_URL
/// (and libpq's PG* variables), JRQ_POOL_MODE (session, or transaction behind PgBouncer) and
/// JRQ_LOG_FORMAT are shared by every program. The older
/// names without WORKER_ (JRQ_POLL_INTERVAL, ...) are still read, with a warning.
#[derive(Debug, Parser)]
#[command(name = "jr-queue-worker", version, about)]
pub struct WorkerArgs {
    /// Worker name (the systemd instance name): letters, digits, '_', '.', '-', at most 64.
    #[arg(long, env = "JRQ_WORKER_NAME", value_parser = validate::parse_worker_name)]
    pub name: String,

    /// How tasks run: `noop`, `sleep:<duration>`, or a program and its arguments
    /// (split into words like a shell would, but run without a shell).
    #[arg(long, env = "JRQ_WORKER_EXEC", value_parser = parse_exec)]
    pub exec: ExecSpec,

    /// Providers served (repeat or separate with commas). Default: none, which serves only
    /// tasks without a provider.
    #[arg(long = "provider", env = "JRQ_WORKER_PROVIDERS", value_delimiter = ',')]
    pub providers: Vec<String>,

    /// Tasks run at once. Range: 1 to 10000.
    #[arg(long, env = "JRQ_WORKER_CAPACITY", default_value_t = super::DEFAULT_CAPACITY, value_parser = validate::count_in::<u32>(1, 10000))]
    pub capacity: u32,

    /// Tasks the assigners may queue at this worker beyond --capacity, so that short tasks
    /// do not wait for an assigner round between them. auto: as many as would wait at most
    /// 50 ms for a slot, from the run times of the last 16 attempts (up to 2 x --capacity;
    /// none for tasks over 0.5 s at capacity 10, none before the first attempt
    /// ends). Or a number of tasks, 0 to 10000 (0: none).
    #[arg(long, env = "JRQ_WORKER_PREFETCH", default_value_t = super::DEFAULT_PREFETCH)]
    pub prefetch: super::Prefetch,

    /// Time between heartbeats (and systemd watchdog pings); lowered to half of
    /// WatchdogSec when that is shorter. Range: 100ms to 5m.
    #[arg(long, env = "JRQ_WORKER_HEARTBEAT_INTERVAL", default_value = crate::validate::format_duration(crate::daemon::defaults::HEARTBEAT_INTERVAL), value_parser = validate::duration_in("100ms", "5m"))]
    pub heartbeat_interval: Duration,

    /// Time between claim polls when no notification arrives. Range: 10ms to 1h.
    #[arg(long, env = "JRQ_WORKER_POLL_INTERVAL", default_value = crate::validate::format_duration(super::DEFAULT_POLL_INTERVAL), value_parser = validate::duration_in("10ms", "1h"))]
    pub poll_interval: Duration,

    /// After SIGTERM, time running tasks get to finish before they are ended and given
    /// back (keep it well under systemd's TimeoutStopSec). Range: 0s to 1h.
    #[arg(long, env = "JRQ_WORKER_DRAIN_TIMEOUT", default_value = crate::validate::format_duration(super::DEFAULT_DRAIN_TIMEOUT), value_parser = validate::duration_in("0s", "1h"))]
    pub drain_timeout: Duration,

    /// Time between SIGTERM and SIGKILL when a task's process group must end. Range: 0s to 10m.
    #[arg(long, env = "JRQ_WORKER_KILL_GRACE", default_value = crate::validate::format_duration(super::DEFAULT_KILL_GRACE), value_parser = validate::duration_in("0s", "10m"))]
    pub kill_grace: Duration,

    /// Another process holding this name is dead once its heartbeat is older than this. Range: 1s to 1h.
    #[arg(long, env = "JRQ_WORKER_TAKEOVER_AFTER", default_value = crate::validate::format_duration(crate::daemon::defaults::TAKEOVER_AFTER), value_parser = validate::duration_in("1s", "1h"))]
    pub takeover_after: Duration,

    /// While the database is unreachable, keep pinging the watchdog this long. Range: 0s to 1h.
    #[arg(long, env = "JRQ_WORKER_DB_GRACE", default_value = crate::validate::format_duration(crate::daemon::defaults::DB_GRACE), value_parser = validate::duration_in("0s", "1h"))]
    pub db_grace: Duration,

    /// Backoff before the second attempt of a failed task; it doubles per attempt (with
    /// ±20 % jitter). Range: 0s to 1d.
    #[arg(long, env = "JRQ_WORKER_RETRY_BASE", default_value = crate::validate::format_duration(super::DEFAULT_RETRY_BASE), value_parser = validate::duration_in("0s", "1d"))]
    pub retry_base: Duration,

    /// Longest retry backoff. Range: 0s to 7d.
    #[arg(long, env = "JRQ_WORKER_RETRY_MAX", default_value = crate::validate::format_duration(super::DEFAULT_RETRY_MAX), value_parser = validate::duration_in("0s", "7d"))]
    pub retry_max: Duration,

    /// How long a provider that refused (executor exit 76) is paused fleet-wide when the
    /// executor prints no `JRQ-RETRY-AT:` line. Range: 1s to 1d.
    #[arg(long, env = "JRQ_WORKER_PROVIDER_BACKOFF", default_value = crate::validate::format_duration(super::DEFAULT_PROVIDER_BACKOFF), value_parser = validate::duration_in("1s", "1d"))]
    pub provider_backoff: Duration,

    /// Bytes kept from the end of an executor's stdout (the result) and stderr (the error). Range: 1 to 16MiB.
    #[arg(long, env = "JRQ_WORKER_OUTPUT_LIMIT", default_value_t = DEFAULT_OUTPUT_LIMIT, value_parser = validate::bytes_in(1, 16 << 20))]
    pub output_limit: usize,

    /// End an attempt that writes no output (stdout or stderr) and no progress line for
    /// this long, as a retryable failure ("idle: no output for 10m"), for tasks that give
    /// no --idle-timeout of their own; 0s: never. Range: 0s to 30d.
    #[arg(long, env = "JRQ_WORKER_IDLE_TIMEOUT", default_value = "0s", value_parser = validate::duration_in("0s", "30d"))]
    pub idle_timeout: Duration,

    /// Bytes of live output (stdout and stderr, `jrq logs`) kept per task in the database:
    /// the oldest chunks go once a task holds more (checked every quarter of this, so a
    /// task may hold up to 1.25 times it); 0 turns live output off. Range: 0 to 1GiB.
    #[arg(long, env = "JRQ_WORKER_OUTPUT_KEEP", default_value = "1MiB", value_parser = validate::bytes_in(0, 1 << 30))]
    pub output_keep: usize,

    /// Serve only this run (UUID) and exit 0 once it is completed, error or archived.
    /// Also read from RUN_FILTER_ID.
    #[arg(long, env = "JRQ_WORKER_RUN", value_parser = validate::parse_run_id)]
    pub run: Option<Uuid>,

    /// Exit 0 after this many claim rounds (running tasks are finished first). Also read
    /// from WORKER_MAX_LOOPS. Default: no limit. Range: 1 or more.
    #[arg(long, env = "JRQ_WORKER_MAX_LOOPS", value_parser = validate::count_in::<u64>(1, u64::MAX))]
    pub max_loops: Option<u64>,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, env = "JRQ_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// PostgreSQL address (URL or libpq "key=value"); default: the libpq PG* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

fn parse_exec(s: &str) -> Result<ExecSpec, String> {
    let spec: ExecSpec = s.parse()?;
    if let ExecSpec::Program { program, .. } = &spec {
        find_program(program, std::env::var_os("PATH").as_deref())?;
    }
    Ok(spec)
}

/// Where `program` is (a path, or a name looked up in `path` as a shell would): a worker
/// whose executor does not exist refuses to start, rather than taking tasks it cannot run.
fn find_program(
    program: &str,
    path: Option<&std::ffi::OsStr>,
) -> Result<std::path::PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return if runnable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "executor '{program}' is not an executable file: give the program's path"
            ))
        };
    }
    let dirs = path.map(std::env::split_paths).into_iter().flatten();
    for dir in dirs {
        let p = dir.join(program);
        if runnable(&p) {
            return Ok(p);
        }
    }
    Err(format!(
        "executor '{program}' is not found in PATH: give its full path, or install it"
    ))
}

impl WorkerArgs {
    /// The worker configuration, the database address and the handler these options
    /// describe. Reads the operators' RUN_FILTER_ID and WORKER_MAX_LOOPS when the
    /// options are absent.
    pub fn into_parts(self) -> Result<(WorkerConfig, crate::db::DbConfig, Arc<dyn Handler>)> {
        let run = match self.run {
            Some(r) => Some(r),
            None => match std::env::var("RUN_FILTER_ID") {
                Ok(v) if !v.trim().is_empty() => Some(
                    validate::parse_run_id(&v)
                        .map_err(|e| Error::usage(format!("RUN_FILTER_ID: {e}")))?,
                ),
                _ => None,
            },
        };
        let max_loops = match self.max_loops {
            Some(n) => Some(n),
            None => match std::env::var("WORKER_MAX_LOOPS") {
                Ok(v) if !v.trim().is_empty() => Some(v.trim().parse::<u64>().map_err(|_| {
                    Error::usage(format!("WORKER_MAX_LOOPS '{v}' is not a whole number"))
                })?),
                _ => None,
            },
        };
        let mut providers: Vec<String> = self
            .providers
            .into_iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        providers.sort();
        providers.dedup();
        let cfg = WorkerConfig {
            name: self.name,
            providers,
            capacity: self.capacity,
            prefetch: self.prefetch,
            heartbeat_interval: self.heartbeat_interval,
            poll_interval: self.poll_interval,
            drain_timeout: self.drain_timeout,
            kill_grace: self.kill_grace,
            takeover_after: self.takeover_after,
            db_grace: self.db_grace,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            provider_backoff: self.provider_backoff,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            output_keep: self.output_keep,
            run_id: run,
            max_loops,
        };
        cfg.validate()?;
        let db_cfg = crate::db::config_from(self.database_url.as_deref(), "jr-queue-worker")?;
        let handler = self.exec.handler(
            self.kill_grace,
            self.output_limit.max(1),
            self.output_keep > 0,
        );
        Ok((cfg, db_cfg, handler))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_default_to_the_config_defaults() {
        let args = WorkerArgs::try_parse_from(["jr-queue-worker", "--name", "w", "--exec", "noop"]);
        let (cfg, _, _) = args.unwrap().into_parts().unwrap();
        assert_eq!(cfg, WorkerConfig::new("w"));
    }

    #[test]
    fn executors_must_exist() {
        let path = std::ffi::OsString::from("/nonexistent:/bin:/usr/bin");
        assert!(find_program("sh", Some(&path)).is_ok());
        assert!(find_program("/bin/sh", None).is_ok());
        assert!(find_program("no-such-program-here", Some(&path))
            .unwrap_err()
            .contains("not found in PATH"));
        assert!(find_program("/nonexistent/prog", None)
            .unwrap_err()
            .contains("not an executable file"));
        assert!(find_program("/etc/passwd", None).is_err(), "not executable");
    }
}
