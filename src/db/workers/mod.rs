//! SQL on `jr_status`, the worker registry.

use std::time::Duration;

use crate::db::Sql;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::tasks::{duration_ms, Rescued};
use crate::db::Statements;
use crate::error::Result;

pub mod health;
mod host;
mod route;

pub use host::*;
pub use route::*;

/// A worker whose heartbeat is older than this is not counted as online: three missed
/// heartbeats at the worker's default interval (5 s).
pub const DEFAULT_ONLINE_THRESHOLD: Duration = Duration::from_secs(15);

/// Where a registered worker (or assigner) is in its life. Enforced by a CHECK constraint
/// on `jr_status.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Starting,
    Idle,
    Busy,
    Draining,
    /// Stopped on purpose, or marked offline and taken over by its host's monitor.
    Offline,
    /// Gone without meaning to: its host's monitor takes it over (migrations/V4).
    Lost,
}

impl WorkerStatus {
    /// Every status.
    pub const ALL: [WorkerStatus; 6] = [
        WorkerStatus::Starting,
        WorkerStatus::Idle,
        WorkerStatus::Busy,
        WorkerStatus::Draining,
        WorkerStatus::Offline,
        WorkerStatus::Lost,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Starting => "starting",
            WorkerStatus::Idle => "idle",
            WorkerStatus::Busy => "busy",
            WorkerStatus::Draining => "draining",
            WorkerStatus::Offline => "offline",
            WorkerStatus::Lost => "lost",
        }
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorkerStatus {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        WorkerStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a worker status"))
    }
}

/// One registered worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub jr_name: String,
    pub kind: String,
    pub host: String,
    pub pid: Option<i32>,
    pub instance_id: Option<Uuid>,
    pub providers: Vec<String>,
    pub capacity: i32,
    /// Tasks running on it now (counted from the task table, not the last heartbeat).
    pub current_load: i32,
    pub is_online: bool,
    /// `is_online` and a heartbeat within the online threshold.
    pub alive: bool,
    pub status: WorkerStatus,
    pub run_id: Option<Uuid>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_seen_age_s: Option<f64>,
    pub consecutive_failures: i32,
    pub circuit_open_until: Option<DateTime<Utc>>,
    pub circuit_reason: Option<String>,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub status_text: String,
    /// Workers only: the health score and its inputs ([`health`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<health::Health>,
}

impl WorkerRow {
    /// The state to show: not alive — `lost` (waiting for its host's monitor to restart
    /// it) or `offline`; alive — `draining (paused)` when drained by `jrq workers drain`,
    /// `starting` or `draining` as it says, else `busy` or `idle` from the tasks counted
    /// in the same statement as its load (so that state and load always agree).
    pub fn display_state(&self, paused: bool) -> String {
        if !self.alive {
            return if self.status == WorkerStatus::Lost {
                WorkerStatus::Lost
            } else {
                WorkerStatus::Offline
            }
            .to_string();
        }
        if paused {
            return "draining (paused)".into();
        }
        match self.status {
            WorkerStatus::Starting | WorkerStatus::Draining => self.status.to_string(),
            _ if self.kind != "worker" => self.status.to_string(),
            _ if self.current_load > 0 => WorkerStatus::Busy.to_string(),
            _ => WorkerStatus::Idle.to_string(),
        }
    }

    /// Online by its row, yet its heartbeat is older than the online threshold: it
    /// stopped answering and the monitor has not marked it yet.
    pub fn is_stale(&self) -> bool {
        self.is_online && !self.alive
    }
}

/// Lists the registry, workers first, by name.
pub async fn workers_list(client: &impl Sql, online_threshold: Duration) -> Result<Vec<WorkerRow>> {
    let rows = client
        .rows(
            "SELECT jr_name, kind, host, pid, instance_id, providers, capacity, \
                    (SELECT count(*) FROM jr_work_queue q \
                     WHERE q.status = 'in_progress' AND q.assigned_jr = w.jr_name)::int4, \
                    is_online, \
                    coalesce(is_online AND last_seen BETWEEN \
                        now() - $1::int8 * interval '1 millisecond' AND now() + interval '1 minute', \
                        false), \
                    status, run_id, started_at, last_seen, \
                    extract(epoch FROM now() - last_seen)::float8, consecutive_failures, \
                    CASE WHEN circuit_open_until > now() THEN circuit_open_until END, \
                    circuit_reason, tasks_completed, tasks_failed, status_text, \
                    health_ok, health_failed, extract(epoch FROM now() - health_at)::float8, \
                    recent_outcomes, extract(epoch FROM now() - last_success_at)::float8 \
             FROM jr_status w ORDER BY kind DESC, jr_name",
            &[&duration_ms(online_threshold)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WorkerRow {
            jr_name: r.get(0),
            kind: r.get(1),
            host: r.get(2),
            pid: r.get(3),
            instance_id: r.get(4),
            providers: r.get(5),
            capacity: r.get(6),
            current_load: r.get(7),
            is_online: r.get(8),
            alive: r.get(9),
            status: r.get(10),
            run_id: r.get(11),
            started_at: r.get(12),
            last_seen: r.get(13),
            last_seen_age_s: r.get(14),
            consecutive_failures: r.get(15),
            circuit_open_until: r.get(16),
            circuit_reason: r.get(17),
            tasks_completed: r.get(18),
            tasks_failed: r.get(19),
            status_text: r.get(20),
            health: (r.get::<_, String>(1) == "worker").then(|| {
                health::HealthInputs::from_stored(
                    r.get(21),
                    r.get(22),
                    r.get(23),
                    r.get(24),
                    r.get(25),
                    r.get(15),
                    r.get::<_, Option<DateTime<Utc>>>(16).is_some(),
                )
                .health()
            }),
        })
        .collect())
}

/// The fleet at a glance, for `jrq status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerSummary {
    /// Workers alive (online and heartbeating) with at least one task.
    pub busy: i64,
    /// Workers alive with no task.
    pub idle: i64,
    /// Alive workers whose circuit breaker is open.
    pub circuit_open: i64,
    /// Registered workers not alive.
    pub offline: i64,
    /// Sum of alive workers' capacity and load.
    pub capacity: i64,
    pub load: i64,
    /// Assigners alive.
    pub assigners: i64,
}

impl WorkerSummary {
    /// Workers alive.
    pub fn online(&self) -> i64 {
        self.busy + self.idle
    }
}

/// Counts workers by liveness and load.
pub async fn workers_summary(
    client: &impl Sql,
    online_threshold: Duration,
) -> Result<WorkerSummary> {
    let row = client
        .row(
            "WITH w AS ( \
                 SELECT kind, capacity, circuit_open_until, \
                        (SELECT count(*) FROM jr_work_queue q WHERE q.status = 'in_progress' \
                           AND q.assigned_jr = s.jr_name) AS current_load, \
                        is_online AND last_seen BETWEEN now() - $1::int8 * interval '1 millisecond' \
                            AND now() + interval '1 minute' \
                            AS alive \
                 FROM jr_status s) \
             SELECT \
               count(*) FILTER (WHERE kind = 'worker' AND alive AND current_load > 0), \
               count(*) FILTER (WHERE kind = 'worker' AND alive AND current_load <= 0), \
               count(*) FILTER (WHERE kind = 'worker' AND alive AND circuit_open_until > now()), \
               count(*) FILTER (WHERE kind = 'worker' AND NOT alive), \
               coalesce(sum(capacity) FILTER (WHERE kind = 'worker' AND alive), 0)::int8, \
               coalesce(sum(current_load) FILTER (WHERE kind = 'worker' AND alive), 0)::int8, \
               count(*) FILTER (WHERE kind = 'assigner' AND alive) \
             FROM w",
            &[&duration_ms(online_threshold)],
        )
        .await?;
    Ok(WorkerSummary {
        busy: row.get(0),
        idle: row.get(1),
        circuit_open: row.get(2),
        offline: row.get(3),
        capacity: row.get(4),
        load: row.get(5),
        assigners: row.get(6),
    })
}

/// Who holds a worker name in the registry now. Not its instance id: that fences the
/// holder's writes, and a process that only asks about a name must not learn it.
#[derive(Debug, Clone)]
pub struct Holder {
    pub kind: String,
    pub host: String,
    pub pid: Option<i32>,
    pub boot_id: Option<String>,
    pub is_online: bool,
    /// Seconds since the holder's last heartbeat (`None`: never).
    pub last_seen_age_s: Option<f64>,
}

/// Locks a name for the rest of the transaction and returns its holder (in
/// `jrq_workers_lock`, migrations/V6). The name is locked, not only its row: a name nobody
/// registered yet has no row to lock, and processes registering one new name at the same
/// moment must still take turns (each then sees the one before it).
pub async fn workers_lock(client: &impl Sql, name: &str) -> Result<Option<Holder>> {
    let row = client
        .row_opt(
            "SELECT kind, host, pid, boot_id, is_online, last_seen_age_s \
             FROM jrq_workers_lock($1)",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| Holder {
        kind: r.get(0),
        host: r.get(1),
        pid: r.get(2),
        boot_id: r.get(3),
        is_online: r.get(4),
        last_seen_age_s: r.get(5),
    }))
}

/// A worker (or assigner) process announcing itself.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub name: &'a str,
    /// `worker` or `assigner`.
    pub kind: &'a str,
    pub host: &'a str,
    pub pid: i32,
    pub instance: Uuid,
    pub invocation_id: Option<&'a str>,
    pub boot_id: &'a str,
    pub providers: &'a [String],
    pub capacity: i32,
    /// Tasks the assigner may queue here beyond `capacity`.
    pub prefetch: i32,
    pub run_id: Option<Uuid>,
    /// For a worker: the error (and event details) given to each task its dead predecessor
    /// left in progress, which this registration puts back.
    pub takeover_why: &'a str,
}

/// What a registration replaced.
#[derive(Debug, Clone, Default)]
pub struct Registered {
    /// The previous holder's host and instance (`None`: a new name). Its leases are gone
    /// by the time this is known.
    pub previous_host: Option<String>,
    pub previous_instance: Option<Uuid>,
    /// The predecessor's running tasks put back (a worker's registration only).
    pub rescued: Vec<Rescued>,
}

/// Writes the registry row for a worker process: online, starting, load 0. The circuit
/// breaker's state survives a restart (a crash-looping worker stays suspect). For a worker,
/// the `in_progress` tasks of the name that this instance does not hold — a dead
/// predecessor's — go back in the same statement (pending with the attempt counted, failed
/// when it was the last, cancelled when a cancel was requested), each with a `rescued`
/// event saying `takeover_why`. In `jrq_workers_register` (migrations/V6); call it after
/// [`workers_lock`], in the same transaction, once the name may be taken.
pub async fn workers_register(client: &impl Sql, r: &Registration<'_>) -> Result<Registered> {
    let row = client
        .row(
            "SELECT previous_host, previous_instance, rescued_ids, rescued_status \
             FROM jrq_workers_register($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &r.name,
                &r.kind,
                &r.host,
                &r.pid,
                &r.instance,
                &r.invocation_id,
                &r.boot_id,
                &r.providers,
                &r.capacity,
                &r.prefetch,
                &r.run_id,
                &r.takeover_why,
            ],
        )
        .await?;
    let ids: Vec<i64> = row.get(2);
    let statuses: Vec<crate::task::TaskStatus> = row.try_get(3)?;
    Ok(Registered {
        previous_host: row.get(0),
        previous_instance: row.get(1),
        rescued: ids
            .into_iter()
            .zip(statuses)
            .map(|(id, to_status)| Rescued { id, to_status })
            .collect(),
    })
}

/// A worker's periodic report.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub name: &'a str,
    pub instance: Uuid,
    pub load: i32,
    /// `idle`, `busy` or `draining`.
    pub status: &'a str,
    pub status_text: &'a str,
    pub run_id: Option<Uuid>,
    /// The worker's lease floor: the held tasks are read from it (migrations/V21; `None`:
    /// from the start).
    pub floor: Option<i64>,
}

/// What the database says back to a heartbeat.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatReply {
    /// The status of the run the worker serves (`None`: no run, or the run is gone).
    pub run_status: Option<crate::task::RunStatus>,
    /// Tasks this instance holds a lease on.
    pub held: Vec<i64>,
    /// Held tasks with a cancel request.
    pub cancel_requested: Vec<i64>,
    /// The last lease number drawn (migrations/V21): a floor past it is not safe.
    pub lease_drawn: i64,
}

/// Refreshes `last_seen` and the load, and reads back the run's status and the leases
/// held. `None` means another instance has taken the name over.
pub async fn workers_heartbeat(
    client: &impl Sql,
    stmts: &Statements,
    hb: &Heartbeat<'_>,
) -> Result<Option<HeartbeatReply>> {
    let row = stmts
        .row(
            client,
            HEARTBEAT_SQL,
            &[
                &hb.name,
                &hb.instance,
                &hb.load,
                &hb.status,
                &hb.status_text,
                &hb.run_id,
                &hb.floor,
            ],
        )
        .await?;
    if row.get::<_, i64>(0) == 0 {
        return Ok(None);
    }
    Ok(Some(HeartbeatReply {
        run_status: row.get(1),
        held: row.get(2),
        cancel_requested: row.get(3),
        lease_drawn: row.get(4),
    }))
}

/// The heartbeat, fenced by the instance in `jrq_workers_heartbeat` (migrations/V6; from
/// the lease floor since V21).
const HEARTBEAT_SQL: &str = "SELECT matched, run_status, held, cancel_requested, lease_drawn \
                 FROM jrq_workers_heartbeat($1, $2, $3, $4, $5, $6, $7)";

/// Sets this instance's prefetch (`--prefetch auto`), in `jrq_workers_prefetch`
/// (migrations/V14), which wakes the assigners when it grew. False when the instance no
/// longer holds the name.
pub async fn workers_set_prefetch(
    client: &impl Sql,
    name: &str,
    instance: Uuid,
    prefetch: i32,
) -> Result<bool> {
    let row = client
        .row(
            "SELECT jrq_workers_prefetch($1, $2, $3)",
            &[&name, &instance, &prefetch],
        )
        .await?;
    Ok(row.get(0))
}

/// Counts outcomes this instance has written (fenced) in its registry row, in
/// `jrq_workers_count_outcomes` (migrations/V19): `outcomes` is their sequence, '+' a
/// completion, '-' a failed attempt. False when the instance no longer holds the name.
pub async fn workers_count_outcomes(
    client: &impl Sql,
    name: &str,
    instance: Uuid,
    outcomes: &str,
) -> Result<bool> {
    let row = client
        .row(
            "SELECT jrq_workers_count_outcomes($1, $2, $3)",
            &[&name, &instance, &outcomes],
        )
        .await?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Marks this instance's registry row offline (a clean exit), in
/// `jrq_workers_set_offline` (migrations/V6).
pub async fn workers_set_offline(
    client: &impl Sql,
    name: &str,
    instance: Uuid,
    status_text: &str,
) -> Result<()> {
    client
        .exec(
            "SELECT jrq_workers_set_offline($1, $2, $3)",
            &[&name, &instance, &status_text],
        )
        .await?;
    Ok(())
}

/// Drains worker `name` (`jrq workers drain`, the dashboard's button): a pause of the
/// worker, and its assigned tasks given back, in one transaction. The tasks given back.
pub async fn workers_drain(
    client: &mut tokio_postgres::Client,
    name: &str,
    reason: &str,
    actor: &str,
) -> Result<u64> {
    let txn = client.build_transaction().read_only(false).start().await?;
    let known = workers_list(&txn, DEFAULT_ONLINE_THRESHOLD)
        .await?
        .into_iter()
        .any(|w| w.jr_name == name && w.kind == "worker");
    if !known {
        return Err(crate::Error::NotFound(format!(
            "there is no worker '{name}': see `jrq workers`"
        )));
    }
    // A routing round holding this worker finishes first (its assignments are given back
    // below); one that has not locked it yet skips it, and every later one sees the pause.
    workers_lock_for_routing(&txn, name).await?;
    let why = if reason.trim().is_empty() {
        "draining (jrq workers drain)".to_string()
    } else {
        format!("draining: {}", reason.trim())
    };
    crate::db::providers::pauses_set(&txn, "worker", name, None, &why, actor).await?;
    let given_back = crate::db::tasks::tasks_unassign_worker(
        &txn,
        name,
        &format!("worker '{name}' is draining"),
    )
    .await?;
    txn.commit().await?;
    Ok(given_back)
}
