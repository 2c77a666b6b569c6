//! The worker daemon (`jr-queue-worker --name NAME`): registers NAME, claims the tasks the
//! assigner gave it, runs each with a [`Handler`], writes fenced outcomes, heartbeats, and
//! pings the systemd watchdog only after its database round succeeded.
//!
//! ```text
//!   start -> connect, LISTEN, check the run -> register (refuse a live holder; take over
//!   a dead one and put its running tasks back) -> the runner (crate::daemon)
//!   each turn (session.rs): write outcomes, the next claim riding along (outcomes.rs)
//!         -> progress -> claim (if woken and free) ; heartbeat when due -> WATCHDOG=1
//!   each attempt (supervise.rs): the handler (executor.rs) raced against its timeout
//!         and stop requests -> the transition to write
//!   SIGTERM -> stop claiming -> drain -> release what is left -> offline -> STOPPING=1
//! ```

pub mod cli;
pub mod executor;
pub mod guard;
mod once;
mod outcomes;
pub mod prefetch;
mod reports;
mod session;
mod slots;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use uuid::Uuid;

use crate::daemon::defaults;
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::daemon::runner;
use crate::daemon::shutdown::ShutdownSignal;
use crate::db::{self, runs, tasks, workers};
use crate::error::{Error, Result};
use crate::registry;
use crate::validate::format_duration;
pub use executor::{ExecSpec, Handler, StopReason, TaskContext, TaskOutcome};
pub use prefetch::Prefetch;
use session::Session;

/// Default number of tasks run at once.
pub const DEFAULT_CAPACITY: u32 = 1;
/// Default number of tasks queued at a worker beyond its capacity.
pub const DEFAULT_PREFETCH: Prefetch = Prefetch::Auto;
/// Default time between heartbeats (and watchdog pings).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = defaults::HEARTBEAT_INTERVAL;
/// Default time between claim polls when no notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default time running tasks get to finish after SIGTERM (systemd waits 90 s by default).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time between SIGTERM and SIGKILL for a task's process group.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Default heartbeat age after which another process's claim on the name is dead.
pub const DEFAULT_TAKEOVER_AFTER: Duration = defaults::TAKEOVER_AFTER;
/// Default time the watchdog is still pinged while the database is unreachable.
pub const DEFAULT_DB_GRACE: Duration = defaults::DB_GRACE;
/// Default backoff before the second attempt; it doubles per attempt.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(5);
/// Default longest retry backoff.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(600);
/// Default bytes of live output kept per task in the database.
pub const DEFAULT_OUTPUT_KEEP: usize = 1 << 20;
/// Default pause of a provider that refused (exit 76) without saying until when.
pub const DEFAULT_PROVIDER_BACKOFF: Duration = Duration::from_secs(60);

/// What a worker does and how fast. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The worker's name (the systemd instance name): letters, digits, `_`, `.`, `-`.
    pub name: String,
    /// Providers served; empty serves only tasks without a provider.
    pub providers: Vec<String>,
    /// Tasks run at once. Defaults to [`DEFAULT_CAPACITY`].
    pub capacity: u32,
    /// Tasks the assigner may queue here beyond `capacity`, so short tasks do not wait for
    /// an assigner round between them: fixed, or chosen from the measured run times
    /// ([`prefetch`]). Defaults to [`DEFAULT_PREFETCH`], automatic.
    pub prefetch: Prefetch,
    /// Time between heartbeats. Defaults to [`DEFAULT_HEARTBEAT_INTERVAL`]; lowered to
    /// half the systemd watchdog interval when that is shorter.
    pub heartbeat_interval: Duration,
    /// Time between claim polls. Defaults to [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Time running tasks get to finish after SIGTERM. Defaults to [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// SIGTERM-to-SIGKILL time for a task's process group. Defaults to [`DEFAULT_KILL_GRACE`].
    pub kill_grace: Duration,
    /// A holder of this name silent for longer is dead. Defaults to [`DEFAULT_TAKEOVER_AFTER`].
    pub takeover_after: Duration,
    /// Watchdog pings continue this long without the database. Defaults to [`DEFAULT_DB_GRACE`].
    pub db_grace: Duration,
    /// Backoff before the second attempt. Defaults to [`DEFAULT_RETRY_BASE`].
    pub retry_base: Duration,
    /// Longest backoff. Defaults to [`DEFAULT_RETRY_MAX`].
    pub retry_max: Duration,
    /// Pause of a provider that refused without a `JRQ-RETRY-AT`. Defaults to
    /// [`DEFAULT_PROVIDER_BACKOFF`].
    pub provider_backoff: Duration,
    /// Idle timeout of tasks that set none: an attempt silent this long ends (retryable).
    /// Defaults to `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Bytes of live output kept per task; 0: none streamed. Defaults to
    /// [`DEFAULT_OUTPUT_KEEP`].
    pub output_keep: usize,
    /// Serve only this run, and exit once it is completed, error or archived.
    pub run_id: Option<Uuid>,
    /// Exit after this many claim rounds. Defaults to no limit.
    pub max_loops: Option<u64>,
}

impl WorkerConfig {
    /// A configuration with every default.
    pub fn new(name: impl Into<String>) -> Self {
        WorkerConfig {
            name: name.into(),
            providers: vec![],
            capacity: DEFAULT_CAPACITY,
            prefetch: DEFAULT_PREFETCH,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
            db_grace: DEFAULT_DB_GRACE,
            retry_base: DEFAULT_RETRY_BASE,
            retry_max: DEFAULT_RETRY_MAX,
            provider_backoff: DEFAULT_PROVIDER_BACKOFF,
            idle_timeout: None,
            output_keep: DEFAULT_OUTPUT_KEEP,
            run_id: None,
            max_loops: None,
        }
    }

    /// Checks the values; the message says which one is wrong.
    pub fn validate(&self) -> Result<()> {
        crate::validate::check_worker_name(&self.name).map_err(Error::usage)?;
        if self.capacity == 0 {
            return Err(Error::usage("capacity must be at least 1"));
        }
        for (what, d) in [
            ("heartbeat interval", self.heartbeat_interval),
            ("poll interval", self.poll_interval),
            ("takeover threshold", self.takeover_after),
        ] {
            if d.is_zero() {
                return Err(Error::usage(format!("{what} must be longer than 0")));
            }
        }
        if self.takeover_after <= self.heartbeat_interval {
            return Err(Error::usage(format!(
                "takeover threshold ({}) must be longer than the heartbeat interval ({})",
                format_duration(self.takeover_after),
                format_duration(self.heartbeat_interval)
            )));
        }
        if self.max_loops == Some(0) {
            return Err(Error::usage("max loops must be at least 1"));
        }
        Ok(())
    }
}

/// Why a worker ended normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT: drained and released.
    Drained,
    /// The run it served reached this terminal status.
    RunFinished(String),
    /// `--max-loops` was reached.
    MaxLoops,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Drained => f.write_str("drained"),
            Exit::RunFinished(status) => write!(f, "its run is {status}"),
            Exit::MaxLoops => f.write_str("--max-loops reached"),
        }
    }
}

pub use once::Round;
pub use supervise::retry_backoff;

/// The worker daemon. See the module docs.
pub struct Worker {
    cfg: WorkerConfig,
    db_cfg: db::DbConfig,
    handler: Arc<dyn Handler>,
    instance: Uuid,
    host: String,
    boot_id: String,
    /// Where this instance's claims start (migrations/V18).
    floor: tasks::LeaseFloor,
}

impl Worker {
    /// A worker with the given configuration, database and handler.
    pub fn new(cfg: WorkerConfig, db_cfg: db::DbConfig, handler: Arc<dyn Handler>) -> Self {
        Worker {
            cfg,
            db_cfg,
            handler,
            instance: Uuid::new_v4(),
            host: crate::host::hostname(),
            boot_id: crate::host::boot_id(),
            floor: tasks::LeaseFloor::default(),
        }
    }

    /// This process's instance id (fences its writes).
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Who writes: the fence of this instance's outcomes and claims.
    fn fence(&self) -> outcomes::Fence<'_> {
        outcomes::Fence {
            name: &self.cfg.name,
            instance: self.instance,
            run: self.cfg.run_id,
            floor: &self.floor,
        }
    }

    /// Runs until shutdown, the end of its run, or `max_loops`. Errors are startup
    /// failures (bad configuration, database unreachable at start, name held by a live
    /// process) or the loss of the name to another instance.
    pub async fn run(mut self, shutdown: ShutdownSignal) -> Result<Exit> {
        self.cfg.validate()?;
        if self.handler.runs_programs() {
            // Before anything else: the programs must not read the database password
            // out of this process, nor escape it by leaving their process group.
            guard::protect_this_process()
                .map_err(|e| Error::io("cannot protect the worker from its tasks", e))?;
        }
        self.cfg.heartbeat_interval =
            Liveness::heartbeat_interval(self.cfg.heartbeat_interval, &self.cfg.name);
        // Its own channel: an assignment to another worker does not wake this one.
        let channels = vec![
            db::worker_channel(&self.cfg.name),
            db::CHANNEL_RUNS.to_string(),
        ];
        let mut link = Link::open(self.db_cfg.clone(), channels).await?;
        let Some(conn) = link.conn_mut() else {
            return Err(Error::Db {
                message: "the connection closed before registration".into(),
                sqlstate: None,
            });
        };
        if let Some(run) = self.cfg.run_id {
            match runs::runs_status(&conn.client, run).await? {
                None => {
                    return Err(Error::NotFound(format!(
                        "there is no run {run}: check the id with `jrq runs list`"
                    )))
                }
                Some(s) if s.is_terminal() => {
                    tracing::info!(run_id = %run, status = %s, "the run is already over: exiting");
                    return Ok(Exit::RunFinished(s.to_string()));
                }
                Some(_) => {}
            }
        }
        self.register(&mut conn.client).await?;
        let db_grace = self.cfg.db_grace;
        runner::run(Session::new(self), link, db_grace, shutdown).await
    }

    /// Registers the name in one transaction: lock it, refuse a live holder, put back a
    /// dead predecessor's running tasks, write the registry row. A refusal changes nothing.
    async fn register(&self, client: &mut Client) -> Result<()> {
        let cfg = &self.cfg;
        let txn = client.transaction().await?;
        let stop_hint = format!("systemctl --user stop jr-queue-worker@{}", cfg.name);
        let me = registry::Me {
            name: &cfg.name,
            kind: "worker",
            stop_hint: &stop_hint,
            host: &self.host,
            boot_id: &self.boot_id,
            takeover_after: cfg.takeover_after,
        };
        let verdict = registry::claim_name(&txn, &me, crate::host::is_live_worker).await?;
        let why = match verdict {
            registry::Verdict::TakeOver(why) => {
                tracing::info!(worker = %cfg.name, reason = %why, "taking over the worker name");
                format!("worker restarted: {why} during this attempt")
            }
            _ => "worker restarted: the previous instance died during this attempt".into(),
        };
        // The registration puts back what a dead predecessor was running, in the same
        // transaction.
        let invocation = std::env::var("INVOCATION_ID").ok();
        let registered = workers::workers_register(
            &txn,
            &workers::Registration {
                name: &cfg.name,
                kind: "worker",
                host: &self.host,
                pid: std::process::id() as i32,
                instance: self.instance,
                invocation_id: invocation.as_deref(),
                boot_id: &self.boot_id,
                providers: &cfg.providers,
                capacity: cfg.capacity as i32,
                prefetch: cfg.prefetch.initial() as i32,
                run_id: cfg.run_id,
                takeover_why: &why,
            },
        )
        .await?;
        for r in &registered.rescued {
            tracing::warn!(task_id = r.id, to = %r.to_status, "put back a task the previous instance was running");
        }
        // What the dead predecessor's tasks left running on this host (it was killed
        // outside systemd, which would have ended its cgroup) goes before its tasks run
        // again.
        let predecessor = registered.previous_instance.filter(|i| {
            registered.previous_host.as_deref() == Some(self.host.as_str()) && *i != self.instance
        });
        txn.commit().await?;
        if let (Some(old), true) = (predecessor, self.handler.runs_programs()) {
            let ended = guard::end_processes_of_instance(old);
            if ended > 0 {
                tracing::warn!(
                    processes = ended,
                    instance = %old,
                    "ended processes the previous instance's tasks left running"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(WorkerConfig::new("ok_name").validate().is_ok());
        assert!(WorkerConfig::new("bad name").validate().is_err());
        let mut c = WorkerConfig::new("w");
        c.capacity = 0;
        assert!(c.validate().is_err());
        let mut c = WorkerConfig::new("w");
        c.takeover_after = c.heartbeat_interval;
        assert!(c.validate().is_err());
    }
}
