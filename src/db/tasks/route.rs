//! The assigner's side of `jr_work_queue`: pending tasks to route, assignments, and giving
//! back or failing what cannot be served.

use std::time::Duration;

use crate::db::Sql;
use uuid::Uuid;

use super::duration_ms;
use crate::db::Statements;
use crate::error::Result;

/// A pending task as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTask {
    pub id: i64,
    pub provider: String,
    pub target: Option<String>,
    pub run_id: Option<Uuid>,
    /// Workers an earlier attempt failed on (retryably, timed out, or lost with them): the
    /// next attempt prefers another.
    pub avoid: Vec<String>,
    /// Its place in the order of service: (urgent first, priority, created, id).
    pub order: (bool, i32, chrono::DateTime<chrono::Utc>, i64),
    /// Set while its own provider is paused and it allows fallback: the providers it may
    /// go to instead, in order.
    pub fallback: Option<Fallback>,
}

/// Where a task of a paused provider may go instead, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub providers: Vec<String>,
    /// "provider 'claude' paused until … (rate-limited by …)".
    pub why: String,
}

/// The routing query, with an extra condition (a literal).
macro_rules! pending_sql {
    ($extra:literal) => {
        concat!(
            "SELECT id, provider, target_jr, run_id, \
                 CASE WHEN attempts > 0 THEN ARRAY( \
                     SELECT DISTINCT e.worker FROM jr_task_events e \
                     WHERE e.task_id = jr_work_queue.id AND e.worker IS NOT NULL \
                       AND e.action IN ('retry_scheduled', 'rescued')) \
                 ELSE '{}' END, \
                 NOT sacred_fire_priority, priority, created_at \
             FROM jr_work_queue \
             WHERE status = 'pending' AND run_after <= now() ",
            $extra,
            " AND (($5 AND provider = '') OR provider = ANY($1)) \
               AND (target_jr IS NULL OR target_jr = ANY($2)) \
               AND (run_id IS NULL OR NOT run_id = ANY($4)) \
             ORDER BY sacred_fire_priority DESC, priority, created_at, id \
             LIMIT $3 FOR UPDATE SKIP LOCKED"
        )
    };
}

/// Takes up to `limit` ready pending tasks in the order of service of the `providers`
/// (and, `with_unprovided`, those without a provider) that some worker with free capacity
/// could serve (its target, if any, has room), not of a paused run, locking them `FOR
/// UPDATE SKIP LOCKED` for the rest of the transaction.
pub async fn tasks_pending_for_routing(
    client: &impl Sql,
    stmts: &Statements,
    providers: &[String],
    with_unprovided: bool,
    workers: &[String],
    paused_runs: &[Uuid],
    limit: i64,
) -> Result<Vec<PendingTask>> {
    pending(
        client,
        stmts,
        pending_sql!(""),
        (providers, with_unprovided, workers, paused_runs, limit),
    )
    .await
}

/// As [`tasks_pending_for_routing`], the tasks of the (paused) `providers` that allow
/// fallback (`fallback_ok`, migrations/V10: few, and indexed).
pub async fn tasks_pending_fallback(
    client: &impl Sql,
    stmts: &Statements,
    providers: &[String],
    workers: &[String],
    paused_runs: &[Uuid],
    limit: i64,
) -> Result<Vec<PendingTask>> {
    pending(
        client,
        stmts,
        pending_sql!("AND fallback_ok"),
        (providers, false, workers, paused_runs, limit),
    )
    .await
}

async fn pending(
    client: &impl Sql,
    stmts: &Statements,
    sql: &'static str,
    (providers, with_unprovided, workers, paused_runs, limit): (
        &[String],
        bool,
        &[String],
        &[Uuid],
        i64,
    ),
) -> Result<Vec<PendingTask>> {
    let rows = stmts
        .rows(
            client,
            sql,
            &[&providers, &workers, &limit, &paused_runs, &with_unprovided],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PendingTask {
            id: r.get(0),
            provider: r.get(1),
            target: r.get(2),
            run_id: r.get(3),
            avoid: r.get(4),
            order: (r.get(5), r.get(6), r.get(7), r.get(0)),
            fallback: None,
        })
        .collect())
}

/// One routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: i64,
    pub worker: String,
    /// Why this worker (recorded in the event): "least loaded (1/4)", "pinned", ...
    pub reason: String,
    /// The provider it goes under when that is not the task's own (fallback), written as
    /// `routed_provider` (migrations/V10).
    pub routed_provider: Option<String>,
}

/// Writes assignments in one statement: pending → assigned, one `assigned` event each
/// (by `actor`, with the reason; the provider it went under when that is a fallback), and
/// one notification per worker on its own channel (payload: its name),
/// delivered when the transaction commits; `spent` sets the token buckets of the
/// providers whose tasks started (the tokens left). Returns how many were written.
///
/// The round's transaction then commits without waiting for its WAL to reach the disk
/// (`synchronous_commit = off` for this transaction only): an assignment a crash takes is
/// a task pending again — its event goes with it; its notification, delivered at commit,
/// may have woken the worker for nothing (its claim finds no task) — and whatever a worker
/// does with an assignment it saw starts with the worker's own synchronous commit, which
/// flushes the WAL up to and past the assignment. docs/benchmarks-notes.md argues it.
pub async fn tasks_assign(
    client: &impl Sql,
    stmts: &Statements,
    actor: &str,
    assignments: &[Assignment],
    spent: &[(String, f64)],
) -> Result<u64> {
    if assignments.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = assignments.iter().map(|a| a.task_id).collect();
    let workers: Vec<&str> = assignments.iter().map(|a| a.worker.as_str()).collect();
    let reasons: Vec<&str> = assignments.iter().map(|a| a.reason.as_str()).collect();
    let routed: Vec<Option<&str>> = assignments
        .iter()
        .map(|a| a.routed_provider.as_deref())
        .collect();
    let channels: Vec<String> = assignments
        .iter()
        .map(|a| crate::db::worker_channel(&a.worker))
        .collect();
    let (names, tokens): (Vec<&str>, Vec<f64>) =
        spent.iter().map(|(n, t)| (n.as_str(), *t)).unzip();
    let row = stmts
        .row(
            client,
            ASSIGN_SQL,
            &[
                &ids, &workers, &reasons, &actor, &channels, &names, &tokens, &routed,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

const ASSIGN_SQL: &str = "WITH a AS ( \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $8::text[], \
                     $5::text[]) AS a(id, worker, reason, routed, channel)), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'assigned', assigned_jr = a.worker, \
                     assigned_at = now(), routed_provider = a.routed, updated_at = now(), \
                     lease_seq = nextval('jr_lease_seq') \
                 FROM a WHERE q.id = a.id AND q.status = 'pending' \
                 RETURNING q.id, a.worker, a.reason, q.attempts, a.channel), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $4, 'assigned', 'pending', 'assigned', worker, attempts, reason \
                 FROM upd), \
             n AS ( \
                 SELECT pg_notify(c, w) FROM (SELECT DISTINCT worker AS w, channel AS c \
                     FROM upd) d), \
             spend AS ( \
                 UPDATE jr_providers p SET tokens = s.tokens, tokens_at = clock_timestamp() \
                 FROM unnest($6::text[], $7::float8[]) AS s(name, tokens) \
                 WHERE p.name = s.name) \
             SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n), \
                 set_config('synchronous_commit', 'off', true)";

/// Gives back to pending the tasks assigned (not started) to workers that are not alive:
/// registered workers that are offline or silent longer than `online_threshold`, and
/// names never registered once the assignment is older than the threshold. One event
/// each, saying why. Returns how many.
pub async fn tasks_unassign_vanished(
    client: &impl Sql,
    actor: &str,
    online_threshold: Duration,
) -> Result<u64> {
    let row = client
        .row(
            "WITH gone AS ( \
                 SELECT q.id, q.assigned_jr, \
                     CASE WHEN w.jr_name IS NULL THEN 'is not registered' \
                          WHEN NOT w.is_online THEN 'went offline' \
                          ELSE 'has been silent for ' || \
                               round(extract(epoch FROM now() - w.last_seen))::int8 || 's' \
                     END AS why \
                 FROM jr_work_queue q LEFT JOIN jr_status w ON w.jr_name = q.assigned_jr \
                 WHERE q.status = 'assigned' AND ( \
                     (w.jr_name IS NOT NULL AND NOT (w.is_online \
                         AND w.last_seen BETWEEN now() - $2::int8 * interval '1 millisecond' \
                             AND now() + interval '1 minute')) \
                     OR (w.jr_name IS NULL \
                         AND q.assigned_at < now() - $2::int8 * interval '1 millisecond')) \
                 FOR UPDATE OF q SKIP LOCKED), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'pending', assigned_jr = NULL, \
                     assigned_at = NULL, updated_at = now() \
                 FROM gone WHERE q.id = gone.id \
                 RETURNING q.id, q.attempts, gone.assigned_jr, gone.why), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, 'unassigned', 'assigned', 'pending', assigned_jr, attempts, \
                     'worker ''' || assigned_jr || ''' ' || why || ' before starting it' \
                 FROM upd) \
             SELECT count(*) FROM upd",
            &[&actor, &duration_ms(online_threshold)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Fails pending tasks pinned to a worker that has not been alive for `grace` since the
/// task became ready, with the error `target worker 'NAME' is not online`. Returns how
/// many.
pub async fn tasks_fail_unreachable_pins(
    client: &impl Sql,
    actor: &str,
    online_threshold: Duration,
    grace: Duration,
) -> Result<u64> {
    let row = client
        .row(
            "WITH dead AS ( \
                 SELECT q.id FROM jr_work_queue q \
                 WHERE q.status = 'pending' AND q.target_jr IS NOT NULL \
                   AND greatest(q.created_at, q.run_after) \
                       < now() - $3::int8 * interval '1 millisecond' \
                   AND NOT EXISTS ( \
                       SELECT 1 FROM jr_status w \
                       WHERE w.jr_name = q.target_jr AND w.kind = 'worker' AND w.is_online \
                         AND w.last_seen BETWEEN now() - $2::int8 * interval '1 millisecond' \
                             AND now() + interval '1 minute') \
                 FOR UPDATE OF q SKIP LOCKED), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'failed', completed_at = now(), \
                     error = 'target worker ''' || q.target_jr || ''' is not online', \
                     updated_at = now() \
                 FROM dead WHERE q.id = dead.id \
                 RETURNING q.id, q.attempts, q.target_jr, q.error), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, 'failed', 'pending', 'failed', target_jr, attempts, error \
                 FROM upd) \
             SELECT count(*) FROM upd",
            &[&actor, &duration_ms(online_threshold), &duration_ms(grace)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Ready pending tasks and the age of the oldest, for the assigner's status line.
pub async fn tasks_pending_depth(client: &impl Sql) -> Result<(i64, Option<f64>)> {
    let row = client
        .row(
            "SELECT count(*), \
                 extract(epoch FROM now() - min(greatest(created_at, run_after)))::float8 \
             FROM jr_work_queue WHERE status = 'pending' AND run_after <= now()",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
