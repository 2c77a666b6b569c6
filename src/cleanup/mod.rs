//! Stale-worker cleanup (`jr-stale-cleanup`, a oneshot for a timer or cron): finds this
//! host's `jr-queue-worker` processes by their executable in /proc (never by a name
//! pattern), compares each with the database, and — with `--force` — ends the stale ones
//! (SIGTERM, then SIGKILL after a grace) and releases registry rows whose process is gone.
//! A dry run changes nothing.
//!
//! A process is stale when
//! - it serves a run (`--run` / `RUN_FILTER_ID` / `JRQ_RUN`) that is completed, error,
//!   archived or gone;
//! - the registry gives its name to another live process (a duplicate, or a name taken
//!   over by another instance).
//!
//! A process whose registry row names a process that is gone may be starting: it is left
//! alone. Processes that are not jrq workers are never looked at, and workers that use
//! another database (another jrq installation on this host) are not judged.

mod cli;
mod report;
mod scan;

pub use cli::{run, CleanupArgs};
pub use report::render_text;
pub use scan::{parse_worker_args, scan_processes, this_databases, Skipped, WorkerProcess};

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::db::{runs, tasks, workers, ServerId};
use crate::error::Result;
use crate::host;

/// Default time a stale worker gets to drain after SIGTERM before SIGKILL (longer than
/// the worker's default 20 s drain).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What the cleanup judges by and whether it acts.
#[derive(Debug, Clone)]
pub struct CleanupConfig {
    /// Act: end stale processes, release rows whose process is gone. Otherwise a dry run.
    pub force: bool,
    /// After SIGTERM, time a stale worker gets to drain before SIGKILL. Default:
    /// [`DEFAULT_GRACE`].
    pub grace: Duration,
    /// This host's name, as workers register it.
    pub host: String,
    /// This boot's id: a registry row of an earlier boot has no process.
    pub boot_id: String,
    /// The server and database this cleanup serves: workers of another are not judged.
    pub server: ServerId,
}

/// The stale-worker cleanup.
pub struct Cleanup {
    cfg: CleanupConfig,
}

impl Cleanup {
    pub fn new(cfg: CleanupConfig) -> Self {
        Cleanup { cfg }
    }

    /// One round over `processes` (this host's worker processes, as [`scan_processes`]
    /// finds them): judge those of this database, end the stale ones (with `force`), and
    /// release registry rows whose process is gone.
    pub async fn run_once(
        &self,
        client: &mut Client,
        processes: Vec<WorkerProcess>,
    ) -> Result<CleanupReport> {
        let cfg = &self.cfg;
        let registered = workers::workers_registered_on_host(client, &cfg.host).await?;
        let (procs, skipped) = this_databases(processes, &cfg.server, &registered);
        if !skipped.is_empty() {
            tracing::info!(
                processes = skipped.len(),
                "worker processes of another database (or unknown) are not judged"
            );
        }
        let mut report = CleanupReport {
            host: cfg.host.clone(),
            force: cfg.force,
            findings: assess(client, &procs, &cfg.host).await?,
            skipped,
            registry: vec![],
        };
        if cfg.force {
            // End the stale processes in parallel: each may take the whole grace.
            let handles: Vec<_> = report
                .findings
                .iter()
                .enumerate()
                .filter(|(_, f)| matches!(f.verdict, Verdict::Stale(_)))
                .map(|(i, f)| {
                    let (pid, grace) = (f.process.pid, cfg.grace);
                    (
                        i,
                        tokio::task::spawn_blocking(move || end_process(pid, grace)),
                    )
                })
                .collect();
            for (i, h) in handles {
                let ended = h.await.unwrap_or_else(|e| format!("could not end it: {e}"));
                tracing::info!(pid = report.findings[i].process.pid, ended = %ended, "stale worker");
                report.findings[i].ended = Some(ended);
            }
        }
        report.registry = fix_registry(client, &cfg.host, &cfg.boot_id, cfg.force).await?;
        Ok(report)
    }
}

/// What to do about one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Ok(String),
    Stale(String),
}

/// One process and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub process: WorkerProcess,
    pub verdict: Verdict,
    /// With --force: how it ended.
    pub ended: Option<String>,
}

/// A registry row of this host whose process is gone.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryFix {
    pub name: String,
    pub pid: Option<i32>,
    pub why: String,
    pub done: bool,
    pub tasks_released: u64,
}

/// The whole result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub host: String,
    pub force: bool,
    pub findings: Vec<Finding>,
    /// Worker processes not judged: another database's, or unknown.
    pub skipped: Vec<Skipped>,
    pub registry: Vec<RegistryFix>,
}

/// Judges each process against the database.
pub async fn assess(
    client: &Client,
    procs: &[WorkerProcess],
    this_host: &str,
) -> Result<Vec<Finding>> {
    let mut out = vec![];
    for p in procs {
        let verdict = judge(client, p, this_host).await?;
        out.push(Finding {
            process: p.clone(),
            verdict,
            ended: None,
        });
    }
    Ok(out)
}

async fn judge(client: &Client, p: &WorkerProcess, this_host: &str) -> Result<Verdict> {
    let Some(name) = &p.name else {
        return Ok(Verdict::Ok(
            "its worker name cannot be read: left alone".into(),
        ));
    };
    let mut serving = "serving any run".to_string();
    if let Some(run_text) = &p.run {
        let Ok(run) = Uuid::parse_str(run_text.trim()) else {
            return Ok(Verdict::Ok(format!(
                "run filter '{run_text}' is not a run id: left alone"
            )));
        };
        match runs::runs_status(client, run).await? {
            None => {
                return Ok(Verdict::Stale(format!(
                    "targeting run {run}, which no longer exists"
                )))
            }
            Some(s) if s.is_terminal() => {
                return Ok(Verdict::Stale(format!("targeting run {run} (status: {s})")))
            }
            Some(s) => serving = format!("targeting run {run} (status: {s})"),
        }
    }
    let Some(h) = workers::workers_holder(client, name).await? else {
        return Ok(Verdict::Ok(format!(
            "{serving}; not registered yet (starting?)"
        )));
    };
    let workers::NameHolder {
        host: h_host,
        pid: h_pid,
        is_online: online,
        fresh,
    } = h;
    if h_host == this_host && h_pid == Some(p.pid) {
        return Ok(Verdict::Ok(format!("{serving}; registered")));
    }
    let other = format!(
        "pid {} on {h_host}",
        h_pid.map(|x| x.to_string()).unwrap_or_else(|| "?".into())
    );
    let other_alive = if h_host == this_host {
        h_pid.is_some_and(host::is_live_worker)
    } else {
        online && fresh.unwrap_or(false)
    };
    if other_alive {
        Ok(Verdict::Stale(format!(
            "worker name '{name}' belongs to {other}: this process is a duplicate"
        )))
    } else {
        Ok(Verdict::Ok(format!(
            "{serving}; the registry names {other}, which is gone: this one may be starting"
        )))
    }
}

/// SIGTERM, then SIGKILL after `grace`; returns how the process ended.
pub fn end_process(pid: i32, grace: Duration) -> String {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return "already gone".into();
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !host::is_live_worker(pid) {
            return "ended after SIGTERM".into();
        }
        // Polling the process table while it drains.
        std::thread::sleep(Duration::from_millis(50));
    }
    if kill(p, Signal::SIGKILL).is_err() {
        return "ended after SIGTERM".into();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && host::is_live_worker(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    format!("killed with SIGKILL after {}s", grace.as_secs())
}

/// Registry rows of this host whose process is gone (or from an earlier boot). With
/// `force`, each is marked `lost` (offline; this host's health monitor restarts its unit)
/// and its tasks released, under the row's lock so that a new instance registering
/// meanwhile is never disturbed.
pub async fn fix_registry(
    client: &mut Client,
    this_host: &str,
    boot_id: &str,
    force: bool,
) -> Result<Vec<RegistryFix>> {
    let mut out = vec![];
    for row in workers::workers_online_on_host(client, this_host).await? {
        let workers::OnlineWorker {
            name,
            pid,
            boot_id: row_boot,
        } = row;
        let why = if row_boot
            .as_deref()
            .is_some_and(|b| !b.is_empty() && b != boot_id)
        {
            "its process ran before this boot".to_string()
        } else if pid.is_none_or(|p| !host::is_live_worker(p)) {
            format!(
                "its process (pid {}) is gone",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            )
        } else {
            continue;
        };
        let mut fix = RegistryFix {
            name: name.clone(),
            pid,
            why: why.clone(),
            done: false,
            tasks_released: 0,
        };
        if force {
            // The row is marked first: it stays locked, so a new instance registering
            // meanwhile waits, and one that registered already is not touched.
            let txn = client.transaction().await?;
            let detail = format!("stale-cleanup: worker {why}");
            let note = format!("marked offline: {detail}");
            if workers::workers_mark_lost(&txn, &name, this_host, pid, &note).await? {
                let rescued =
                    tasks::tasks_rescue_worker(&txn, &name, "stale-cleanup", &detail).await?;
                let unassigned = tasks::tasks_unassign_worker(&txn, &name, &detail).await?;
                txn.commit().await?;
                fix.done = true;
                fix.tasks_released = rescued.len() as u64 + unassigned;
            }
        }
        out.push(fix);
    }
    Ok(out)
}
