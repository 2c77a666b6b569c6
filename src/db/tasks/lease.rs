//! The worker's side of `jr_work_queue`: claims, fenced outcome writes, progress, and
//! putting back the tasks of a dead predecessor.
//!
//! Every write a worker makes to a task it runs is fenced: it names the task id, the
//! worker, the attempt and the worker's process instance, and `status = 'in_progress'`.
//! A write that matches no row means the lease was lost.

use std::time::Duration;

use crate::db::Sql;
use serde::Serialize;
use uuid::Uuid;

use super::duration_ms;
use crate::db::{Statements, CHANNEL_PENDING};
use crate::error::Result;
use crate::task::TaskStatus;

/// A task a worker has claimed and now runs.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimedTask {
    pub id: i64,
    pub title: String,
    /// The payload, or why it cannot be read (stored JSON serde_json refuses).
    pub payload: std::result::Result<serde_json::Value, String>,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_id: Option<Uuid>,
    /// The provider to use: the task's own, or the fallback provider it was routed to
    /// (`routed_provider`, migrations/V10).
    pub provider: String,
    pub timeout: Duration,
    /// The task's own idle timeout (`None`: the worker's default applies).
    pub idle_timeout: Option<Duration>,
    /// The last checkpoint an earlier attempt stored (JSON text).
    pub checkpoint: Option<String>,
    /// The task's budget, in micro-dollars.
    pub max_cost_microusd: Option<i64>,
    /// What earlier attempts spent, in micro-dollars (0 for a task without a budget).
    pub cost_microusd: i64,
}

/// Where a worker's claims start (migrations/V18): a lease number below every task the
/// worker holds, so that the claim's scan of its tasks skips the entries its finished
/// tasks left in the index — which nothing can remove while the vacuum horizon is held.
/// Each claim returns the next floor. A claim walks from the beginning only with a new
/// connection (no floor yet): since V21 the schema keeps every held task past every
/// floor (a task set assigned without a new number gets none, which sorts last), so the
/// walks V18 did every 5 s — a read of the worker's whole history under a held horizon —
/// are gone.
#[derive(Debug, Default)]
pub struct LeaseFloor {
    state: std::sync::Mutex<Option<i64>>,
}

impl LeaseFloor {
    /// The floor the next claim (or heartbeat) starts from; `None`: the start.
    pub fn next(&self) -> Option<i64> {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the floor: the next claim walks from the start (a new connection — the
    /// server may be another one, whose sequence is behind).
    pub fn forget(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// What a claim returned: the floor for the next one (`None`: keep the one there is).
    pub fn set(&self, next: Option<i64>) {
        if let Some(f) = next {
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
        }
    }
}

/// Claims up to `limit` tasks assigned to `worker`, in the order of service, and starts
/// them: one statement, `FOR UPDATE SKIP LOCKED`, one `started` event per task. With
/// `run`, only that run's tasks are claimed. The scan starts at `floor`, which it raises.
pub async fn tasks_claim(
    client: &impl Sql,
    stmts: &Statements,
    worker: &str,
    instance: Uuid,
    limit: i64,
    run: Option<Uuid>,
    floor: &LeaseFloor,
) -> Result<Vec<ClaimedTask>> {
    if limit <= 0 {
        return Ok(vec![]);
    }
    let from = floor.next();
    let rows = stmts
        .rows(
            client,
            CLAIM_SQL,
            &[&worker, &limit, &instance, &run, &from],
        )
        .await?;
    floor.set(rows.first().and_then(|r| r.get(12)));
    Ok(rows.iter().map(|r| claimed_from_row(r, 0)).collect())
}

/// A claimed task from the columns `id, title, payload, attempts, max_attempts, run_id,
/// provider, timeout_ms, idle_timeout_ms, checkpoint, max_cost_microusd, cost_microusd` of
/// a row, starting at column `at`.
fn claimed_from_row(r: &tokio_postgres::Row, at: usize) -> ClaimedTask {
    ClaimedTask {
        id: r.get(at),
        title: r.get(at + 1),
        payload: r.get::<_, super::JsonText>(at + 2).parse(),
        attempt: r.get(at + 3),
        max_attempts: r.get(at + 4),
        run_id: r.get(at + 5),
        provider: r.get(at + 6),
        timeout: Duration::from_millis(r.get::<_, i64>(at + 7).max(1) as u64),
        idle_timeout: r
            .get::<_, Option<i64>>(at + 8)
            .map(|ms| Duration::from_millis(ms.max(1) as u64)),
        checkpoint: r.get::<_, Option<super::JsonText>>(at + 9).map(|j| j.0),
        max_cost_microusd: r.get(at + 10),
        cost_microusd: r.get(at + 11),
    }
}

/// The claim, fenced in `jrq_tasks_claim` (migrations/V6, from a floor since V18): only the
/// process that holds the name may claim, and the worker's role has no rights on the
/// tables themselves.
const CLAIM_SQL: &str = "SELECT id, title, payload, attempts, max_attempts, run_id, provider, \
                 timeout_ms, idle_timeout_ms, checkpoint, max_cost_microusd, cost_microusd, \
                 lease_floor \
                 FROM jrq_tasks_claim($1, $2, $3, $4, $5)";

/// How a running attempt ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The task is done.
    Completed { result: String },
    /// The attempt failed and attempts remain: back to pending after `backoff`.
    RetryLater { error: String, backoff: Duration },
    /// The task failed for good (permanent failure, or its attempts are used up).
    Failed { error: String },
    /// The task spent its own budget (`max_cost_usd`): failed for good, like `Failed`,
    /// but not the worker's fault — its circuit and health are not touched.
    OverBudget { error: String },
    /// Ended on a cancel request.
    Cancelled { reason: String },
    /// Given back unfinished (worker shutdown): back to pending at once, the attempt not
    /// charged.
    Released { reason: String },
    /// Not started, through the worker's own fault (its executor cannot be started: a
    /// missing program, no file descriptors left): given back like `Released`, the attempt
    /// not charged, but counted against the worker's circuit breaker, so a broken worker
    /// stops getting tasks while the tasks keep their attempts for a worker that works.
    NotStarted { reason: String },
    /// The provider refused (rate-limited, out of quota): back to pending not before
    /// `until`, the attempt not charged, the circuit not touched; the worker pauses the
    /// task's provider until then ([`tasks_provider_refused`]) before it writes this.
    ProviderRefused {
        reason: String,
        until: chrono::DateTime<chrono::Utc>,
    },
}

impl Finish {
    fn parts(&self) -> (&'static str, &'static str, Option<&str>, Option<&str>, i64) {
        // (to_status, action, result, error, backoff_ms)
        match self {
            Finish::Completed { result } => ("completed", "completed", Some(result), None, 0),
            Finish::RetryLater { error, backoff } => (
                "pending",
                "retry_scheduled",
                None,
                Some(error),
                duration_ms(*backoff),
            ),
            Finish::Failed { error } | Finish::OverBudget { error } => {
                ("failed", "failed", None, Some(error), 0)
            }
            Finish::Cancelled { reason } => ("cancelled", "cancelled", None, Some(reason), 0),
            Finish::Released { reason } | Finish::NotStarted { reason } => {
                ("pending", "released", None, Some(reason), 0)
            }
            Finish::ProviderRefused { reason, until } => (
                "pending",
                "released",
                None,
                Some(reason),
                (*until - chrono::Utc::now()).num_milliseconds().max(0),
            ),
        }
    }

    /// A one-word name for logs: completed, retry_scheduled, failed, cancelled, released.
    pub fn kind(&self) -> &'static str {
        self.parts().1
    }

    /// The error recorded, if any.
    pub fn error(&self) -> Option<&str> {
        self.parts().3
    }

    /// The same outcome with its text made storable: PostgreSQL refuses NUL characters in
    /// `text`, and a handler may return any string (see [`crate::text::storable`]).
    pub fn into_storable(self) -> Self {
        use crate::text::storable;
        match self {
            Finish::Completed { result } => Finish::Completed {
                result: storable(result),
            },
            Finish::RetryLater { error, backoff } => Finish::RetryLater {
                error: storable(error),
                backoff,
            },
            Finish::Failed { error } => Finish::Failed {
                error: storable(error),
            },
            Finish::OverBudget { error } => Finish::OverBudget {
                error: storable(error),
            },
            Finish::Cancelled { reason } => Finish::Cancelled {
                reason: storable(reason),
            },
            Finish::Released { reason } => Finish::Released {
                reason: storable(reason),
            },
            Finish::NotStarted { reason } => Finish::NotStarted {
                reason: storable(reason),
            },
            Finish::ProviderRefused { reason, until } => Finish::ProviderRefused {
                reason: storable(reason),
                until,
            },
        }
    }

    /// Whether this counts as a failed attempt for the worker's circuit breaker.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Finish::RetryLater { .. } | Finish::Failed { .. } | Finish::NotStarted { .. }
        )
    }
}

/// One outcome to write: which attempt of which task, and how it ended.
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub task_id: i64,
    pub attempt: i32,
    pub finish: Finish,
}

/// Writes many outcomes in one statement, each fenced row by row, each with its event,
/// and updates the worker's counters (completed, failed, consecutive failures, last
/// failure). One notification tells the assigners that capacity freed up (and that tasks
/// may be pending again). Returns the ids whose write matched; the others had lost their
/// lease and were left untouched.
pub async fn tasks_finish(
    client: &impl Sql,
    stmts: &Statements,
    worker: &str,
    instance: Uuid,
    done: &[FinishedAttempt],
) -> Result<Vec<i64>> {
    if done.is_empty() {
        return Ok(vec![]);
    }
    let p = FinishParams::new(done);
    let row = stmts
        .row(client, FINISH_SQL, &p.params(&worker, &instance))
        .await?;
    Ok(row.get(0))
}

/// The outcome batch as the finish statement's array parameters.
struct FinishParams<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    to_status: Vec<&'static str>,
    actions: Vec<&'static str>,
    results: Vec<Option<&'a str>>,
    errors: Vec<Option<&'a str>>,
    backoff_ms: Vec<i64>,
    failures: Vec<bool>,
}

impl<'a> FinishParams<'a> {
    fn new(done: &'a [FinishedAttempt]) -> Self {
        let n = done.len();
        let mut p = FinishParams {
            ids: Vec::with_capacity(n),
            attempts: Vec::with_capacity(n),
            to_status: Vec::with_capacity(n),
            actions: Vec::with_capacity(n),
            results: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            backoff_ms: Vec::with_capacity(n),
            failures: Vec::with_capacity(n),
        };
        for d in done {
            let (status, action, result, error, backoff) = d.finish.parts();
            p.ids.push(d.task_id);
            p.attempts.push(d.attempt);
            p.to_status.push(status);
            p.actions.push(action);
            p.results.push(result);
            p.errors.push(error);
            p.backoff_ms.push(backoff);
            p.failures.push(d.finish.is_failure());
        }
        p
    }

    fn params<'b>(
        &'b self,
        worker: &'b &str,
        instance: &'b Uuid,
    ) -> [&'b (dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            worker,
            instance,
            &self.ids,
            &self.attempts,
            &self.to_status,
            &self.actions,
            &self.results,
            &self.errors,
            &self.backoff_ms,
            &self.failures,
        ]
    }
}

/// The claim that rides along with an outcome write: up to `limit` tasks (of `run` only,
/// when set), from the worker's `floor`.
#[derive(Debug, Clone, Copy)]
pub struct NextClaim<'a> {
    pub limit: i64,
    pub run: Option<Uuid>,
    pub floor: &'a LeaseFloor,
}

/// Writes an outcome batch and claims the next tasks in one statement
/// (`jrq_tasks_finish_and_claim`): one round trip and one commit, where a claim and a
/// finish apart take two of each. Returns the ids whose outcome write matched (the others
/// had lost their lease) and the tasks claimed.
pub async fn tasks_finish_and_claim(
    client: &tokio_postgres::Client,
    stmts: &Statements,
    worker: &str,
    instance: Uuid,
    done: &[FinishedAttempt],
    next: NextClaim<'_>,
) -> Result<(Vec<i64>, Vec<ClaimedTask>)> {
    let p = FinishParams::new(done);
    let f = p.params(&worker, &instance);
    let from = next.floor.next();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        f[7],
        f[8],
        f[9],
        &next.limit,
        &next.run,
        &from,
    ];
    let rows = stmts.rows(client, FINISH_AND_CLAIM_SQL, &params).await?;
    next.floor.set(rows.first().and_then(|r| r.get(13)));
    let finished: Vec<i64> = rows.first().map(|r| r.get(0)).unwrap_or_default();
    let claimed = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(1).is_some())
        .map(|r| claimed_from_row(r, 1))
        .collect();
    Ok((finished, claimed))
}

/// The worker's hot cycle in one call (migrations/V6, its result in V12, its floor V18);
/// it leaves the worker's counters to [`workers_count_outcomes`](crate::db::workers::workers_count_outcomes) (V19).
const FINISH_AND_CLAIM_SQL: &str = "SELECT finished, id, title, payload, attempts, \
    max_attempts, run_id, provider, timeout_ms, idle_timeout_ms, checkpoint, \
    max_cost_microusd, cost_microusd, lease_floor \
    FROM jrq_tasks_finish_and_claim($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
        false)";

/// The outcome batch, fenced row by row in `jrq_tasks_finish` (migrations/V6), which also
/// updates the worker's counters and notifies [`CHANNEL_PENDING`](crate::db::CHANNEL_PENDING).
const FINISH_SQL: &str = "SELECT jrq_tasks_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Records progress (0–100) of running attempts; fenced like every worker write (in
/// `jrq_tasks_progress`, migrations/V6).
pub async fn tasks_progress(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    progress: &[(i64, i32, i16)],
) -> Result<()> {
    if progress.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = progress.iter().map(|p| p.0).collect();
    let attempts: Vec<i32> = progress.iter().map(|p| p.1).collect();
    let pct: Vec<i16> = progress.iter().map(|p| p.2).collect();
    client
        .exec(
            "SELECT jrq_tasks_progress($1, $2, $3, $4, $5)",
            &[&worker, &instance, &ids, &attempts, &pct],
        )
        .await?;
    Ok(())
}

/// Gives back leases this worker instance holds on attempts it does not run — the reply to
/// its claim, or its outcome, was lost in a database crash or a failover — as released
/// attempts (not charged; cancelled where a cancel was requested). Fenced by worker and
/// instance in `jrq_tasks_release_unrun` (migrations/V13). The ids given back.
pub async fn tasks_release_unrun(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    ids: &[i64],
) -> Result<Vec<i64>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let row = client
        .row(
            "SELECT jrq_tasks_release_unrun($1, $2, $3)",
            &[&worker, &instance, &ids],
        )
        .await?;
    Ok(row.get(0))
}

/// A task put back because the process running it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rescued {
    pub id: i64,
    /// `pending`; `failed` when the attempt that died was the last one; `cancelled` when
    /// a cancel was requested.
    pub to_status: TaskStatus,
}

/// Puts back every `in_progress` task of `worker` (its process is gone: the stale
/// cleanup) through `jrq_tasks_rescue` (migrations/V6, the rules of every rescue): pending
/// again with the attempt counted, failed when its attempts are used up, cancelled when a
/// cancel was requested. One event each, by `actor`, saying `why`.
pub async fn tasks_rescue_worker(
    client: &impl Sql,
    worker: &str,
    actor: &str,
    why: &str,
) -> Result<Vec<Rescued>> {
    let rows = client
        .rows(
            "WITH old AS ( \
                 SELECT id FROM jr_work_queue \
                 WHERE status = 'in_progress' AND assigned_jr = $1 ORDER BY id FOR UPDATE), \
             ids AS (SELECT coalesce(array_agg(id ORDER BY id), '{}') AS a FROM old) \
             SELECT r.id, r.status FROM ids, jrq_tasks_rescue(ids.a, \
                 array_fill($1::text, ARRAY[cardinality(ids.a)]), \
                 array_fill($3::text, ARRAY[cardinality(ids.a)]), $2) r",
            &[&worker, &actor, &why],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Rescued {
                id: r.get(0),
                to_status: r.try_get(1)?,
            })
        })
        .collect()
}

/// Gives the tasks assigned to `worker` but not started back to pending (its process is
/// gone: the stale cleanup), one event each. Returns how many.
pub async fn tasks_unassign_worker(client: &impl Sql, worker: &str, why: &str) -> Result<u64> {
    let row = client
        .row(
            "WITH upd AS ( \
                 UPDATE jr_work_queue SET status = 'pending', assigned_jr = NULL, \
                     assigned_at = NULL, updated_at = now() \
                 WHERE status = 'assigned' AND assigned_jr = $1 \
                 RETURNING id, attempts), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, 'unassigned', 'assigned', 'pending', $1, attempts, $2 FROM upd), \
             n AS (SELECT pg_notify($3, 'unassign') FROM upd LIMIT 1) \
             SELECT count(*), (SELECT count(*) FROM n) FROM upd",
            &[&worker, &why, &CHANNEL_PENDING],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Gives the tasks assigned to `worker` but not started back to pending because the
/// worker is stopping, one event each; only while `instance` holds the name (fenced in
/// `jrq_tasks_unassign_own`, migrations/V6). Returns how many.
pub async fn tasks_unassign_own(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    why: &str,
) -> Result<u64> {
    let row = client
        .row(
            "SELECT jrq_tasks_unassign_own($1, $2, $3)",
            &[&worker, &instance, &why],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}
