//! The health monitor (`jr-health-monitor`, a oneshot on a timer): rescues stuck tasks,
//! fails overdue ones, marks dead workers and restarts local units, checks that an
//! assigner is alive while work waits, finishes auto-complete runs, and reports queue
//! health — as text, JSON and a Prometheus text file. Exits non-zero when a threshold is
//! crossed, so the oneshot unit fails and an `OnFailure=` unit can alert.
//!
//! Safe when two monitors run at once: a round holds an advisory lock; a second monitor
//! skips its round, and every statement takes its rows `FOR UPDATE SKIP LOCKED`.

pub mod cli;
mod report;
pub mod watch;

pub use report::{render_prometheus, render_text, write_atomically};

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use crate::db::{runs, server, tasks, workers, DbConfig};
use crate::error::Result;
use crate::validate::format_duration;

/// Default heartbeat age beyond which a worker's running tasks are stuck.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(60);
/// Default time past a task's own timeout before the monitor fails it.
pub const DEFAULT_TIMEOUT_GRACE: Duration = Duration::from_secs(60);
/// Default heartbeat age beyond which a worker (or assigner) is marked offline.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(60);
/// Alert: a worker not responding this long (the operators' "> 5 min").
pub const DEFAULT_SILENT_ALERT: Duration = Duration::from_secs(300);
/// Window of the failure rate.
pub const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(3600);
/// Alert: failure rate above this (the operators' "> 50 %").
pub const DEFAULT_MAX_FAILURE_RATE: f64 = 0.5;
/// Alert: a task has waited longer than this.
pub const DEFAULT_MAX_PENDING_AGE: Duration = Duration::from_secs(900);
/// Alert: a task has awaited a person's approval longer than this.
pub const DEFAULT_APPROVAL_ALERT_AFTER: Duration = Duration::from_secs(4 * 3600);
/// Alert: a transaction (or prepared transaction, or replication slot) has held back
/// this database's vacuum horizon longer than this.
pub const DEFAULT_MAX_HORIZON_AGE: Duration = Duration::from_secs(300);
/// Alert: the horizon is this many transactions behind (for a holder whose age the
/// monitor's login may not see: `pg_read_all_stats` shows it).
pub const DEFAULT_MAX_HORIZON_XIDS: i64 = 1_000_000;
/// Alert: PostgreSQL's notification queue fuller than this share.
pub const DEFAULT_MAX_NOTIFY_QUEUE: f64 = 0.5;
/// Alert: more dead row versions than this in `jr_work_queue`.
pub const DEFAULT_MAX_DEAD_TUPLES: i64 = 1_000_000;
/// Alert: 1-minute load average above this per core (the operators' "> 6.0" on 2 cores).
pub const DEFAULT_MAX_LOAD_PER_CORE: f64 = 3.0;
/// Alert: memory in use above this share.
pub const DEFAULT_MAX_MEMORY: f64 = 0.9;
/// Alert: a worker whose health score is this many points or more below the fleet's
/// median (see [`crate::db::workers::health`]).
pub const DEFAULT_HEALTH_GAP: f64 = 30.0;
/// A worker is compared with the fleet only with at least this many of its last attempts
/// recorded, and only in a fleet of at least [`HEALTH_MIN_FLEET`] such workers.
pub const HEALTH_MIN_ATTEMPTS: usize = 5;
/// The smallest fleet whose median means something.
pub const HEALTH_MIN_FLEET: usize = 3;

/// The advisory lock a monitor round holds ("jrq_moni" in ASCII).
const MONITOR_LOCK_KEY: i64 = 0x6a72_715f_6d6f_6e69;

/// Exit status when a threshold is crossed (with `--alert-on-change`: when the queue
/// became unhealthy this round).
pub const EXIT_UNHEALTHY: u8 = 3;
/// Exit status with `--alert-on-change` when the queue became healthy again this round.
pub const EXIT_RECOVERED: u8 = 4;

/// Which systemd manager restarts local units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Manager {
    /// `systemctl --user` (the installed units are user units).
    User,
    /// `systemctl` (system units).
    System,
    /// Restart nothing; only report.
    None,
}

/// The monitor's settings; every field has a documented default.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub stuck_after: Duration,
    pub timeout_grace: Duration,
    pub dead_after: Duration,
    pub silent_alert: Duration,
    pub failure_window: Duration,
    pub max_failure_rate: f64,
    pub max_pending_age: Duration,
    /// A task awaiting approval longer than this raises an alert.
    pub approval_alert_after: Duration,
    /// A holder of the vacuum horizon older than this raises an alert.
    pub max_horizon_age: Duration,
    /// ... or this many transactions behind.
    pub max_horizon_xids: i64,
    pub max_notify_queue: f64,
    pub max_dead_tuples: i64,
    pub max_load_per_core: f64,
    pub max_memory: f64,
    /// Points below the fleet's median health that raise an alert.
    pub health_gap: f64,
    pub manager: Manager,
    /// The systemctl program.
    pub systemctl: PathBuf,
    /// This host's name, as workers register it.
    pub host: String,
    /// Who the events name.
    pub actor: String,
    /// Keep this host's standing between rounds (`--alert-on-change`): the changes into
    /// unhealthy and back are what the exit status and the log say.
    pub alert_on_change: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            stuck_after: DEFAULT_STUCK_AFTER,
            timeout_grace: DEFAULT_TIMEOUT_GRACE,
            dead_after: DEFAULT_DEAD_AFTER,
            silent_alert: DEFAULT_SILENT_ALERT,
            failure_window: DEFAULT_FAILURE_WINDOW,
            max_failure_rate: DEFAULT_MAX_FAILURE_RATE,
            max_pending_age: DEFAULT_MAX_PENDING_AGE,
            approval_alert_after: DEFAULT_APPROVAL_ALERT_AFTER,
            max_horizon_age: DEFAULT_MAX_HORIZON_AGE,
            max_horizon_xids: DEFAULT_MAX_HORIZON_XIDS,
            max_notify_queue: DEFAULT_MAX_NOTIFY_QUEUE,
            max_dead_tuples: DEFAULT_MAX_DEAD_TUPLES,
            max_load_per_core: DEFAULT_MAX_LOAD_PER_CORE,
            max_memory: DEFAULT_MAX_MEMORY,
            health_gap: DEFAULT_HEALTH_GAP,
            manager: Manager::User,
            systemctl: PathBuf::from("systemctl"),
            host: crate::host::hostname(),
            actor: "health-monitor".into(),
            alert_on_change: false,
        }
    }
}

/// A unit restart the monitor ran.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub unit: String,
    /// The command, word by word (no shell).
    pub command: Vec<String>,
    pub ok: bool,
    pub detail: String,
}

/// One round's findings and actions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Another monitor held the lock: this round did nothing.
    pub skipped: bool,
    pub tasks: std::collections::BTreeMap<String, i64>,
    pub oldest_pending_s: Option<f64>,
    /// Tasks awaiting approval longer than the threshold.
    pub approvals_overdue: i64,
    /// The longest-waiting of them: (id, seconds awaiting approval).
    pub oldest_approval: Option<(i64, f64)>,
    pub failure_rate: Option<f64>,
    /// The window of `failure_rate`, in seconds.
    pub failure_window_s: f64,
    pub failed_in_window: i64,
    pub completed_in_window: i64,
    pub workers_online: i64,
    pub workers_offline: i64,
    pub workers_circuit_open: i64,
    pub assigners_alive: i64,
    pub longest_silence_s: Option<f64>,
    pub rescued: Vec<tasks::Acted>,
    pub overdue_failed: Vec<tasks::Acted>,
    pub marked_offline: Vec<workers::MarkedDead>,
    pub unassigned: u64,
    pub restarts: Vec<Restart>,
    pub runs_finished: Vec<(uuid::Uuid, String)>,
    /// Runs ended within the failure window whose callback could not be enqueued:
    /// (id, name, why).
    pub callback_errors: Vec<(uuid::Uuid, String, String)>,
    pub notify_queue_usage: f64,
    pub dead_tuples: i64,
    /// What holds back this database's vacuum horizon the longest (issue 19).
    pub horizon: Option<server::HorizonHolder>,
    pub load_per_core: Option<f64>,
    pub memory_used: Option<f64>,
    /// The median health score of the alive workers with enough recorded attempts.
    pub health_median: Option<f64>,
    /// Alive workers far below that median: (name, score).
    pub unhealthy_workers: Vec<(String, i32)>,
    /// Thresholds crossed, one line each.
    pub alerts: Vec<String>,
    /// Whether the round before this one (by any monitor) had alerts.
    pub was_unhealthy: bool,
    /// Since when the queue has been unhealthy (this round's alerts included).
    pub unhealthy_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Report {
    /// Whether a threshold was crossed.
    pub fn unhealthy(&self) -> bool {
        !self.alerts.is_empty()
    }

    /// The exit status of a round: with `on_change`, 3 only when the queue became
    /// unhealthy, 4 when it became healthy again, else 0; without, 3 while unhealthy.
    pub fn exit_status(&self, on_change: bool) -> u8 {
        match (on_change, self.unhealthy(), self.was_unhealthy) {
            _ if self.skipped => 0,
            (false, true, _) | (true, true, false) => EXIT_UNHEALTHY,
            (true, false, true) => EXIT_RECOVERED,
            _ => 0,
        }
    }
}

/// The health monitor.
pub struct Monitor {
    cfg: MonitorConfig,
    /// Where the round's lock is taken through a transaction pooler (see [`Monitor::run_once`]).
    lock_db: Option<DbConfig>,
}

impl Monitor {
    pub fn new(cfg: MonitorConfig) -> Self {
        Monitor { cfg, lock_db: None }
    }

    /// The database the rounds' lock is taken in, by a transaction of its own (see
    /// [`Monitor::run_once`]).
    pub fn with_lock_db(mut self, db: DbConfig) -> Self {
        self.lock_db = Some(db);
        self
    }

    /// One round. Holds an advisory lock for its duration; when another monitor holds it,
    /// returns a report with `skipped` set. With a lock database ([`Monitor::with_lock_db`],
    /// as the program runs) the lock is a transaction's on a connection of its own, which
    /// holds also through a transaction pooler — and through one nobody said was there,
    /// where a session's lock would stay behind on whichever server connection took it;
    /// without one, it is `client`'s session's.
    pub async fn run_once(&self, client: &Client) -> Result<Report> {
        let skipped = || {
            Ok(Report {
                skipped: true,
                ..Default::default()
            })
        };
        let xact = match &self.lock_db {
            Some(db) => match server::XactLock::try_take(db, MONITOR_LOCK_KEY).await? {
                Some(lock) => Some(lock),
                None => return skipped(),
            },
            None => {
                if !server::server_try_lock(client, MONITOR_LOCK_KEY).await? {
                    return skipped();
                }
                None
            }
        };
        let result = self.round(client, xact.as_ref()).await;
        let unlocked = match xact {
            Some(lock) => lock.release().await,
            None => server::server_unlock(client, MONITOR_LOCK_KEY).await,
        };
        let report = result?;
        unlocked?;
        Ok(report)
    }

    /// Releases the round's lock on a connection that goes on after a failed round (a
    /// connection that closes releases it by itself; a transaction's lock is released by
    /// [`Monitor::run_once`] on every path).
    pub async fn release(&self, client: &Client) -> Result<()> {
        if self.lock_db.is_some() {
            return Ok(());
        }
        server::server_unlock_all(client).await
    }

    async fn round(&self, client: &Client, lock: Option<&server::XactLock>) -> Result<Report> {
        let cfg = &self.cfg;
        let actor = cfg.actor.as_str();
        // Order matters: mark the dead first, so their running tasks count as stuck now.
        let marked_offline = workers::workers_mark_dead(client, cfg.dead_after).await?;
        let mut r = Report {
            marked_offline,
            rescued: tasks::tasks_rescue_stuck(client, actor, cfg.stuck_after).await?,
            overdue_failed: tasks::tasks_fail_overdue(client, actor, cfg.timeout_grace).await?,
            unassigned: tasks::tasks_unassign_vanished(client, actor, cfg.dead_after, true).await?,
            ..Default::default()
        };
        for d in &r.marked_offline {
            tracing::warn!(worker = %d.name, kind = %d.kind, host = %d.host, silent_s = d.silent_s, "marked offline");
        }
        // Lost rows of this host — marked just now, by a monitor elsewhere, or by the
        // stale cleanup — are this monitor's to bring back.
        if cfg.manager != Manager::None {
            for lost in workers::workers_take_lost(client, &cfg.host).await? {
                let unit = unit_for(&lost.kind, &lost.name);
                if let Some(why) = &lost.leave {
                    tracing::info!(worker = %lost.name, unit, why = %why, "lost, not restarted");
                    workers::workers_note(client, &lost.name, &format!("not restarted: {why}"))
                        .await?;
                    continue;
                }
                // (No lock check here: taking a lost row is one UPDATE … RETURNING, so
                // each row goes to exactly one monitor, lock or not; ending the round
                // now would leave the rows taken and never restarted.)
                let restart = self.restart(&unit);
                let note = if restart.ok {
                    format!("restarted by the health monitor ({unit})")
                } else {
                    format!("restart by the health monitor failed: {}", restart.detail)
                };
                workers::workers_note(client, &lost.name, &note).await?;
                r.restarts.push(restart);
            }
        }
        for a in r.rescued.iter().chain(r.overdue_failed.iter()) {
            tracing::warn!(task_id = a.id, to = %a.to_status, why = %crate::text::for_terminal(&a.why, false), "acted on a running task");
        }
        r.runs_finished = runs::runs_complete_finished(client).await?;
        self.look(client, &mut r, Some(lock)).await?;
        if !self.cfg.alert_on_change {
            for a in &r.alerts {
                tracing::warn!(alert = %crate::text::for_terminal(a, false), "unhealthy");
            }
            return Ok(r);
        }
        // The standing between rounds: a change into unhealthy, or back, is what alerts.
        let before = server::server_swap_standing(client, &self.cfg.host, &r.alerts).await?;
        r.was_unhealthy = !before.alerts.is_empty();
        r.unhealthy_since = match (r.unhealthy(), before.since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(chrono::Utc::now()),
            (false, _) => None,
        };
        match (r.unhealthy(), r.was_unhealthy) {
            (true, false) => {
                for a in &r.alerts {
                    tracing::error!(alert = %crate::text::for_terminal(a, false), "the queue is unhealthy");
                }
            }
            (false, true) => {
                let since = before
                    .since
                    .map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())
                    .map(|d| format_duration(Duration::from_secs(d.as_secs())))
                    .unwrap_or_else(|| "a while".into());
                tracing::warn!(unhealthy_for = %since, "the queue is healthy again");
            }
            (true, true) => {
                for a in &r.alerts {
                    tracing::warn!(alert = %crate::text::for_terminal(a, false), "still unhealthy");
                }
            }
            (false, false) => {}
        }
        Ok(r)
    }

    /// What a round would report, without acting (no rescue, no restart, no write): the
    /// dashboard's alerts. The silence of workers not yet marked offline is not an alert
    /// here (marking them is an action); the dashboard shows them as stale.
    pub async fn observe(&self, client: &Client) -> Result<Report> {
        let mut r = Report::default();
        self.look(client, &mut r, None).await?;
        Ok(r)
    }

    /// The checks of a round, into `r`; `act`: restart a missing local assigner (with
    /// the round's lock, when it has one: checked first).
    async fn look(
        &self,
        client: &Client,
        r: &mut Report,
        act: Option<Option<&server::XactLock>>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let summary = tasks::tasks_summary(client, cfg.failure_window).await?;
        let w = workers::workers_summary(client, cfg.dead_after).await?;
        r.tasks = summary.by_status.iter().cloned().collect();
        r.oldest_pending_s = summary.oldest_pending_age_s;
        r.callback_errors = runs::runs_callback_errors(client, cfg.failure_window).await?;
        (r.approvals_overdue, r.oldest_approval) =
            tasks::tasks_awaiting_approval(client, cfg.approval_alert_after).await?;
        r.failure_rate = summary.failure_rate;
        r.failure_window_s = cfg.failure_window.as_secs_f64();
        r.failed_in_window = summary.failed_window;
        r.completed_in_window = summary.completed_window;
        r.workers_online = w.online();
        r.workers_offline = w.offline;
        r.workers_circuit_open = w.circuit_open;
        r.assigners_alive = w.assigners;
        r.longest_silence_s = workers::workers_longest_silence(client).await?;
        let health = server::server_queue_health(client).await?;
        r.notify_queue_usage = health.notify_queue_usage;
        r.dead_tuples = health.dead_tuples;
        r.horizon = server::server_horizon_holder(client, act.flatten().map(|l| l.pid())).await?;
        r.load_per_core = load_per_core();
        r.memory_used = memory_used();
        let fleet = workers::health::workers_health(client, cfg.dead_after).await?;
        (r.health_median, r.unhealthy_workers) = far_below_median(&fleet, cfg.health_gap);

        // The orchestrator-down check: work waits and no assigner is alive.
        let ready_pending = summary
            .by_status
            .iter()
            .find(|(s, _)| s == "pending")
            .map(|(_, n)| *n)
            .unwrap_or(0)
            - summary.pending_delayed;
        if ready_pending > 0 && r.assigners_alive == 0 {
            r.alerts.push(format!(
                "no assigner is alive while {ready_pending} task(s) are pending"
            ));
            let local = workers::workers_on_host(client, "assigner", &cfg.host).await?;
            let already = r
                .restarts
                .iter()
                .any(|x| x.unit == "jr-auto-assigner.service");
            if let Some(lock) = act {
                if !local.is_empty() && !already && cfg.manager != Manager::None {
                    if let Some(l) = lock {
                        l.check().await?;
                    }
                    r.restarts.push(self.restart("jr-auto-assigner.service"));
                }
            }
        }
        self.check_thresholds(r);
        Ok(())
    }

    fn check_thresholds(&self, r: &mut Report) {
        let cfg = &self.cfg;
        if let Some(rate) = r.failure_rate {
            if rate > cfg.max_failure_rate {
                r.alerts.push(format!(
                    "failure rate {:.0} % over the last {} (threshold {:.0} %)",
                    rate * 100.0,
                    format_duration(cfg.failure_window),
                    cfg.max_failure_rate * 100.0
                ));
            }
        }
        if let Some(age) = r.oldest_pending_s {
            if age > cfg.max_pending_age.as_secs_f64() {
                r.alerts.push(format!(
                    "the oldest pending task has waited {} (threshold {})",
                    format_duration(Duration::from_secs_f64(age)),
                    format_duration(cfg.max_pending_age)
                ));
            }
        }
        if let Some((id, age)) = r.oldest_approval {
            r.alerts.push(format!(
                "{} task(s) have awaited approval longer than {} (the oldest, task {id}, for \
                 {}): `jrq tasks --status awaiting_approval` lists them, `jrq approve ID` or \
                 `jrq reject ID --reason ...` decides",
                r.approvals_overdue,
                format_duration(cfg.approval_alert_after),
                format_duration(Duration::from_secs_f64(age))
            ));
        }
        for (id, name, why) in &r.callback_errors {
            r.alerts.push(format!(
                "run {id}{} ended but its callback could not be enqueued: {why}",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name})")
                }
            ));
        }
        for d in &r.marked_offline {
            if d.silent_s > cfg.silent_alert.as_secs_f64() {
                r.alerts.push(format!(
                    "{} '{}' on {} did not respond for {} (threshold {})",
                    d.kind,
                    d.name,
                    d.host,
                    format_duration(Duration::from_secs_f64(d.silent_s)),
                    format_duration(cfg.silent_alert)
                ));
            }
        }
        if r.notify_queue_usage > cfg.max_notify_queue {
            r.alerts.push(format!(
                "PostgreSQL's notification queue is {:.0} % full (threshold {:.0} %): a \
                 listener is stuck in a transaction",
                r.notify_queue_usage * 100.0,
                cfg.max_notify_queue * 100.0
            ));
        }
        if let Some(h) = &r.horizon {
            let old = h
                .age_s
                .is_some_and(|a| a > cfg.max_horizon_age.as_secs_f64());
            if old || h.xid_age > cfg.max_horizon_xids {
                r.alerts.push(format!(
                    "{} is holding back vacuum (thresholds {}, {} transactions): jrq dispatch \
                     slows while it lasts — end it{}",
                    h.describe(),
                    format_duration(cfg.max_horizon_age),
                    cfg.max_horizon_xids,
                    match (h.kind.as_str(), h.pid) {
                        ("session", Some(pid)) => format!(
                            " (commit or roll it back, or SELECT pg_terminate_backend({pid}))"
                        ),
                        _ => String::new(),
                    }
                ));
            }
        }
        if r.dead_tuples > cfg.max_dead_tuples {
            r.alerts.push(format!(
                "jr_work_queue has {} dead row versions (threshold {}): vacuum is behind",
                r.dead_tuples, cfg.max_dead_tuples
            ));
        }
        if let Some(l) = r.load_per_core {
            if l > cfg.max_load_per_core {
                r.alerts.push(format!(
                    "load average {l:.1} per core (threshold {:.1})",
                    cfg.max_load_per_core
                ));
            }
        }
        if let Some(m) = r.memory_used {
            if m > cfg.max_memory {
                r.alerts.push(format!(
                    "memory {:.0} % used (threshold {:.0} %)",
                    m * 100.0,
                    cfg.max_memory * 100.0
                ));
            }
        }
        if let Some(median) = r.health_median {
            for (name, score) in &r.unhealthy_workers {
                r.alerts.push(format!(
                    "worker '{name}' has health {score}, far below the fleet's median \
                     {median:.0} (threshold {:.0} points below): `jrq workers` shows its \
                     recent outcomes",
                    cfg.health_gap
                ));
            }
        }
        for x in &r.restarts {
            if !x.ok {
                r.alerts
                    .push(format!("could not restart {}: {}", x.unit, x.detail));
            }
        }
    }

    /// The command that runs `systemctl VERB unit`, word by word.
    pub fn systemctl_command(&self, verb: &str, unit: &str) -> Option<Vec<String>> {
        let sys = self.cfg.systemctl.display().to_string();
        match self.cfg.manager {
            Manager::User => Some(vec![sys, "--user".into(), verb.into(), unit.into()]),
            Manager::System => Some(vec![sys, verb.into(), unit.into()]),
            Manager::None => None,
        }
    }

    /// Restarts a unit whose process went silent. A unit systemd gave up on (its start
    /// limit hit after a crash loop) is in the failed state and refuses a plain restart:
    /// `reset-failed` first gives it a fresh start budget, once per monitor round.
    fn restart(&self, unit: &str) -> Restart {
        if let Some(reset) = self.systemctl_command("reset-failed", unit) {
            // Fails harmlessly when the unit is not failed or not loaded.
            let _ = std::process::Command::new(&reset[0])
                .args(&reset[1..])
                .stdin(std::process::Stdio::null())
                .output();
        }
        let Some(cmd) = self.systemctl_command("restart", unit) else {
            return Restart {
                unit: unit.into(),
                command: vec![],
                ok: true,
                detail: "restarts disabled (--manager none)".into(),
            };
        };
        // Arguments are passed as words: no shell, nothing interpolated.
        let out = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .output();
        let (ok, detail) = match out {
            Ok(o) if o.status.success() => (true, "restarted".to_string()),
            Ok(o) => (
                false,
                format!(
                    "{} exited with {}: {}",
                    cmd[0],
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ),
            Err(e) => (false, format!("cannot run {}: {e}", cmd[0])),
        };
        let detail_text = crate::text::for_terminal(&detail, false);
        if ok {
            tracing::info!(unit, detail = %detail_text, "restarted");
        } else {
            tracing::error!(unit, detail = %detail_text, "restart failed");
        }
        Restart {
            unit: unit.into(),
            command: cmd,
            ok,
            detail,
        }
    }
}

/// The median health of the workers with at least [`HEALTH_MIN_ATTEMPTS`] recorded
/// attempts (when there are [`HEALTH_MIN_FLEET`] or more), and those of them `gap` points
/// or more below it.
pub fn far_below_median(
    fleet: &[(String, workers::health::Health)],
    gap: f64,
) -> (Option<f64>, Vec<(String, i32)>) {
    let known: Vec<&(String, workers::health::Health)> = fleet
        .iter()
        .filter(|(_, h)| {
            let (ok, failed) = h.inputs.recent_counts();
            ok + failed >= HEALTH_MIN_ATTEMPTS
        })
        .collect();
    if known.len() < HEALTH_MIN_FLEET {
        return (None, vec![]);
    }
    let scores: Vec<i32> = known.iter().map(|(_, h)| h.score).collect();
    let median = workers::health::median(&scores);
    let low = known
        .iter()
        .filter(|(_, h)| median.is_some_and(|m| f64::from(h.score) <= m - gap))
        .map(|(n, h)| (n.clone(), h.score))
        .collect();
    (median, low)
}

/// The systemd unit of a registry row.
pub fn unit_for(kind: &str, name: &str) -> String {
    if kind == "assigner" {
        "jr-auto-assigner.service".into()
    } else {
        format!("jr-queue-worker@{name}.service")
    }
}

fn load_per_core() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let load: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Some(load / cores as f64)
}

fn memory_used() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:")?;
    (total > 0.0).then(|| 1.0 - avail / total)
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[test]
    fn the_exit_status_says_unhealthy_always_or_on_a_change_only() {
        let r = |alerts: usize, was: bool, skipped: bool| Report {
            alerts: vec!["x".into(); alerts],
            was_unhealthy: was,
            skipped,
            ..Default::default()
        };
        // Without --alert-on-change: 3 while unhealthy.
        assert_eq!(r(1, false, false).exit_status(false), EXIT_UNHEALTHY);
        assert_eq!(r(1, true, false).exit_status(false), EXIT_UNHEALTHY);
        assert_eq!(r(0, true, false).exit_status(false), 0);
        // With it: 3 into unhealthy, 4 back, 0 otherwise.
        assert_eq!(r(1, false, false).exit_status(true), EXIT_UNHEALTHY);
        assert_eq!(r(1, true, false).exit_status(true), 0);
        assert_eq!(r(0, true, false).exit_status(true), EXIT_RECOVERED);
        assert_eq!(r(0, false, false).exit_status(true), 0);
        // A skipped round (another monitor's turn) says nothing.
        for on_change in [false, true] {
            assert_eq!(r(0, true, true).exit_status(on_change), 0);
            assert_eq!(r(1, false, true).exit_status(on_change), 0);
        }
    }
}
