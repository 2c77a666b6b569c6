//! SQL on `jr_work_queue`, the task table.

use std::collections::HashMap;
use std::time::Duration;

use crate::db::Sql;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::db::{events, metrics, worker_channel, CHANNEL_PENDING};
use crate::error::{sqlstate, Error, Result};
use crate::task::TaskStatus;

mod deps;
mod insert;
mod lease;
mod output;
mod rescue;
mod route;
pub use deps::*;
pub use insert::*;
pub use lease::*;
pub use output::*;
pub use rescue::*;
pub use route::*;

/// A `jsonb` (or `json`) value as its text, without parsing it. PostgreSQL stores JSON
/// that serde_json refuses to parse — a number like `1e400`, nesting deeper than 128 — and
/// such a payload, inserted with psql, must fail its task, not the program reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub String);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == tokio_postgres::types::Type::JSONB {
            // The binary format: a version byte (1), then the text.
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unknown jsonb format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?.to_string()))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(
            *ty,
            tokio_postgres::types::Type::JSONB | tokio_postgres::types::Type::JSON
        )
    }
}

impl JsonText {
    /// The value, or why serde_json cannot read it.
    pub fn parse(&self) -> std::result::Result<serde_json::Value, String> {
        serde_json::from_str(&self.0).map_err(|e| {
            format!(
                "the payload cannot be read as JSON ({e}); jrq reads numbers that fit a \
                 64-bit float and at most 128 levels of nesting"
            )
        })
    }
}

/// One task as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub id: i64,
    pub title: String,
    pub description: String,
    pub source: String,
    pub created_by: String,
    pub priority: i32,
    pub sacred_fire_priority: bool,
    pub status: TaskStatus,
    pub assigned_jr: Option<String>,
    pub created_at: DateTime<Utc>,
    pub assigned_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub progress_percent: i16,
    pub payload: serde_json::Value,
    pub provider: String,
    pub target_jr: Option<String>,
    pub run_id: Option<Uuid>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_ms: i64,
    pub run_after: DateTime<Utc>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub unique_key: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// May go to a fallback provider while its own is paused.
    pub fallback_ok: bool,
    /// The fallback provider its last assignment went under (None: its own).
    pub routed_provider: Option<String>,
    /// Its own idle timeout (None: the worker's).
    pub idle_timeout_ms: Option<i64>,
    /// Its budget in US dollars.
    pub max_cost_usd: Option<f64>,
    /// The last checkpoint an attempt stored, and when.
    pub checkpoint: Option<serde_json::Value>,
    pub checkpoint_at: Option<DateTime<Utc>>,
    /// While waiting: dependencies not completed yet.
    pub deps_pending: i32,
    /// The dependency whose end cancelled this task.
    pub cancelled_by: Option<i64>,
    /// The approval gate (None: none; "": anyone; else a database role), and who passed it.
    pub approve_by: Option<String>,
    pub approved_at: Option<DateTime<Utc>>,
    pub approved_by: Option<String>,
}

impl TaskRow {
    fn from_row(r: &Row) -> Self {
        TaskRow {
            id: r.get("id"),
            title: r.get("title"),
            description: r.get("description"),
            source: r.get("source"),
            created_by: r.get("created_by"),
            priority: r.get("priority"),
            sacred_fire_priority: r.get("sacred_fire_priority"),
            status: r.get("status"),
            assigned_jr: r.get("assigned_jr"),
            created_at: r.get("created_at"),
            assigned_at: r.get("assigned_at"),
            started_at: r.get("started_at"),
            completed_at: r.get("completed_at"),
            progress_percent: r.get("progress_percent"),
            // Shown as it is stored: as JSON when serde_json reads it, else as its text.
            payload: {
                let text: JsonText = r.get("payload");
                text.parse().unwrap_or(serde_json::Value::String(text.0))
            },
            provider: r.get("provider"),
            target_jr: r.get("target_jr"),
            run_id: r.get("run_id"),
            attempts: r.get("attempts"),
            max_attempts: r.get("max_attempts"),
            timeout_ms: r.get("timeout_ms"),
            run_after: r.get("run_after"),
            result: r.get("result"),
            error: r.get("error"),
            unique_key: r.get("unique_key"),
            cancel_requested_at: r.get("cancel_requested_at"),
            updated_at: r.get("updated_at"),
            fallback_ok: r.get("fallback_ok"),
            routed_provider: r.get("routed_provider"),
            idle_timeout_ms: r.get("idle_timeout_ms"),
            max_cost_usd: r.get("max_cost_usd"),
            checkpoint: r
                .get::<_, Option<JsonText>>("checkpoint")
                .map(|t| t.parse().unwrap_or(serde_json::Value::String(t.0))),
            checkpoint_at: r.get("checkpoint_at"),
            deps_pending: r.get("deps_pending"),
            cancelled_by: r.get("cancelled_by"),
            approve_by: r.get("approve_by"),
            approved_at: r.get("approved_at"),
            approved_by: r.get("approved_by"),
        }
    }
}

/// Whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The ids (and statuses) of the tasks among `ids` (when not empty) that match every
/// filter given, oldest first.
pub async fn tasks_select(
    client: &impl Sql,
    ids: &[i64],
    f: &TaskFilter,
    older_than: Option<Duration>,
) -> Result<Vec<(i64, TaskStatus)>> {
    let status = f.status.map(|s| s.as_str());
    let older = older_than.map(duration_ms);
    let rows = client
        .rows(
            "SELECT id, status FROM jr_work_queue \
             WHERE (cardinality($1::int8[]) = 0 OR id = ANY($1)) \
               AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR assigned_jr = $3) \
               AND ($4::uuid IS NULL OR run_id = $4) \
               AND ($5::text IS NULL OR provider = $5) \
               AND ($6::int8 IS NULL OR created_at < now() - $6 * interval '1 millisecond') \
             ORDER BY id",
            &[&ids, &status, &f.worker, &f.run_id, &f.provider, &older],
        )
        .await?;
    rows.iter().map(|r| Ok((r.get(0), r.try_get(1)?))).collect()
}

/// Filters for [`tasks_list`]; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub worker: Option<String>,
    pub run_id: Option<Uuid>,
    pub provider: Option<String>,
    pub limit: i64,
    /// Only tasks with a smaller id (the next page of a list, newest first).
    pub before: Option<i64>,
    /// Only the tasks that depend on this one.
    pub waiting_on: Option<i64>,
}

/// Characters of a title a list carries (`jrq show` has all of it); `tasks_list`'s
/// statement spells the number out.
pub const LIST_TITLE_CHARS: i32 = 200;

/// One task in a list: what a person scans a list for. Payload, description, result and
/// error stay in the table (they may be megabytes each); `jrq show` reads them.
#[derive(Debug, Clone, Serialize)]
pub struct TaskListRow {
    pub id: i64,
    /// The first [`LIST_TITLE_CHARS`] characters.
    pub title: String,
    pub status: TaskStatus,
    pub priority: i32,
    pub sacred_fire_priority: bool,
    pub provider: String,
    pub assigned_jr: Option<String>,
    pub target_jr: Option<String>,
    pub run_id: Option<Uuid>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub progress_percent: i16,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Lists tasks, newest first.
pub async fn tasks_list(client: &impl Sql, f: &TaskFilter) -> Result<Vec<TaskListRow>> {
    let sql = "SELECT id, left(title, 200), status, priority, sacred_fire_priority, \
             provider, assigned_jr, target_jr, run_id, attempts, max_attempts, \
             progress_percent, created_at, started_at, completed_at FROM jr_work_queue \
         WHERE ($1::text IS NULL OR status = $1) \
           AND ($2::text IS NULL OR assigned_jr = $2) \
           AND ($3::uuid IS NULL OR run_id = $3) \
           AND ($4::text IS NULL OR provider = $4) \
           AND ($6::int8 IS NULL OR id < $6) \
           AND ($7::int8 IS NULL OR id IN (SELECT task_id FROM jr_task_deps WHERE depends_on = $7)) \
         ORDER BY id DESC LIMIT $5";
    let status = f.status.map(|s| s.as_str());
    let rows = client
        .rows(
            sql,
            &[
                &status,
                &f.worker,
                &f.run_id,
                &f.provider,
                &f.limit,
                &f.before,
                &f.waiting_on,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TaskListRow {
            id: r.get(0),
            title: r.get(1),
            status: r.get(2),
            priority: r.get(3),
            sacred_fire_priority: r.get(4),
            provider: r.get(5),
            assigned_jr: r.get(6),
            target_jr: r.get(7),
            run_id: r.get(8),
            attempts: r.get(9),
            max_attempts: r.get(10),
            progress_percent: r.get(11),
            created_at: r.get(12),
            started_at: r.get(13),
            completed_at: r.get(14),
        })
        .collect())
}

/// One task, or `None`.
pub async fn tasks_get(client: &impl Sql, id: i64) -> Result<Option<TaskRow>> {
    Ok(client
        .row_opt(
            "SELECT id, title, description, source, created_by, priority, \
                 sacred_fire_priority, status, assigned_jr, created_at, assigned_at, started_at, \
                 completed_at, progress_percent, payload, provider, target_jr, run_id, attempts, \
                 max_attempts, (extract(epoch FROM timeout) * 1000)::int8 AS timeout_ms, \
                 run_after, result, error, unique_key, cancel_requested_at, updated_at, \
                 fallback_ok, routed_provider, \
                 (extract(epoch FROM idle_timeout) * 1000)::int8 AS idle_timeout_ms, \
                 max_cost_usd, checkpoint, checkpoint_at, deps_pending, cancelled_by, \
                 approve_by, approved_at, approved_by \
             FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await?
        .as_ref()
        .map(TaskRow::from_row))
}

/// One task, or a clear "no task N" error.
pub async fn tasks_get_existing(client: &impl Sql, id: i64) -> Result<TaskRow> {
    tasks_get(client, id).await?.ok_or_else(|| no_such_task(id))
}

/// Clears the checkpoint of tasks that are pending (`jrq retry --from-scratch`, after the
/// retry: a task the retry skipped keeps its own): their next attempt starts from the
/// beginning. One event each that had one. Returns the ids cleared.
pub async fn tasks_clear_checkpoint(
    client: &impl Sql,
    ids: &[i64],
    actor: &str,
) -> Result<Vec<i64>> {
    let row = client
        .row(
            "WITH upd AS ( \
                 UPDATE jr_work_queue SET checkpoint = NULL, checkpoint_at = NULL, \
                     updated_at = now() \
                 WHERE id = ANY($1) AND checkpoint IS NOT NULL AND status = 'pending' \
                 RETURNING id, status, attempts), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, attempt, details) \
                 SELECT id, $2, 'checkpoint_cleared', status, status, attempts, \
                     'checkpoint cleared: the next attempt starts from scratch' FROM upd) \
             SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM upd",
            &[&ids, &actor],
        )
        .await?;
    Ok(row.get(0))
}

fn no_such_task(id: i64) -> Error {
    Error::NotFound(format!(
        "there is no task {id}: check the id with `jrq tasks`"
    ))
}

/// Puts one failed or cancelled task back to pending with a fresh attempt budget. Run in
/// a transaction: the change, its event and the assigners' wake-up commit together.
pub async fn tasks_retry(client: &impl Sql, id: i64, actor: &str) -> Result<TaskRow> {
    // The same reset as tasks_retry_all_failed's: a fresh attempt budget.
    // What the row counted moves into the metric totals in the same statement (V11).
    let sql = concat!(
        "WITH src AS ( \
             SELECT id, status, ",
        crate::metric_cols!(),
        " FROM jr_work_queue \
             WHERE id = $1 AND status IN ('failed', 'cancelled') FOR UPDATE), \
         agg AS (",
        crate::metric_agg!("$3", "$4"),
        "), carry AS (",
        crate::metric_carry!(),
        "), upd AS ( \
             UPDATE jr_work_queue q SET status = 'pending', attempts = 0, run_after = now(), \
                 assigned_jr = NULL, assigned_at = NULL, started_at = NULL, \
                 completed_at = NULL, progress_percent = 0, result = NULL, error = NULL, \
                 cancel_requested_at = NULL, lease_instance = NULL, updated_at = now() \
             FROM src WHERE q.id = src.id \
             RETURNING q.id, src.status AS from_status, q.status, q.error) \
         INSERT INTO jr_task_events (task_id, actor, action, from_status, to_status, details) \
         SELECT id, $2, 'retried', from_status, status, \
             'retried by hand' || CASE status WHEN 'pending' THEN '' \
                 WHEN 'waiting' THEN ': it waits for its dependencies' \
                 WHEN 'awaiting_approval' THEN ': it awaits approval' \
                 ELSE ': ' || coalesce(error, status) END \
         FROM upd RETURNING task_id"
    );
    let rows = client
        .rows(
            sql,
            &[
                &id,
                &actor,
                &metrics::bounds_us(&metrics::DISPATCH_BOUNDS),
                &metrics::bounds_us(&metrics::RUN_BOUNDS),
            ],
        )
        .await
        .map_err(|e| retry_error(&e, id))?;
    if rows.is_empty() {
        let t = tasks_get_existing(client, id).await?;
        return Err(Error::Conflict(format!(
            "task {id} is {}: only failed or cancelled tasks can be retried",
            t.status
        )));
    }
    notify_pending(client, "retry").await?;
    tasks_get_existing(client, id).await
}

fn retry_error(e: &tokio_postgres::Error, id: i64) -> Error {
    if sqlstate(e) == Some("23505") {
        return Error::Conflict(format!(
            "task {id} cannot be retried: another unfinished task holds its unique key \
             (see `jrq show {id}`)"
        ));
    }
    Error::from_pg(e)
}

/// What `tasks_retry_all_failed` did.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RetryAllReport {
    /// Tasks put back to pending.
    pub retried: u64,
    /// Failed tasks left alone because an unfinished task (or a newer failed one) holds
    /// their unique key.
    pub skipped_unique_key: u64,
}

/// Puts every failed task back to pending (one statement, one event each).
pub async fn tasks_retry_all_failed(client: &impl Sql, actor: &str) -> Result<RetryAllReport> {
    // The same reset as tasks_retry's: a fresh attempt budget.
    // What the rows counted moves into the metric totals in the same statement (V11).
    let sql = concat!(
        "WITH src AS ( \
             SELECT id, status, ",
        crate::metric_cols!(),
        " FROM jr_work_queue q \
             WHERE status = 'failed' \
               AND (unique_key IS NULL OR ( \
                    NOT EXISTS (SELECT 1 FROM jr_work_queue o WHERE o.unique_key = q.unique_key \
                                AND o.status NOT IN ('completed', 'failed', 'cancelled')) \
                    AND id = (SELECT max(f.id) FROM jr_work_queue f \
                              WHERE f.unique_key = q.unique_key AND f.status = 'failed'))) \
             FOR UPDATE SKIP LOCKED), \
         agg AS (",
        crate::metric_agg!("$2", "$3"),
        "), carry AS (",
        crate::metric_carry!(),
        "), upd AS ( \
             UPDATE jr_work_queue q SET status = 'pending', attempts = 0, run_after = now(), \
                 assigned_jr = NULL, assigned_at = NULL, started_at = NULL, \
                 completed_at = NULL, progress_percent = 0, result = NULL, error = NULL, \
                 cancel_requested_at = NULL, lease_instance = NULL, updated_at = now() \
             FROM src WHERE q.id = src.id \
             RETURNING q.id, src.status AS from_status, q.status), \
         ev AS ( \
             INSERT INTO jr_task_events (task_id, actor, action, from_status, to_status, details) \
             SELECT id, $1, 'retried', from_status, status, 'retried by hand (all failed)' \
             FROM upd) \
         SELECT (SELECT count(*) FROM upd), \
                (SELECT count(*) FROM jr_work_queue WHERE status = 'failed' \
                   AND id NOT IN (SELECT id FROM upd))"
    );
    let row = client
        .row(
            sql,
            &[
                &actor,
                &metrics::bounds_us(&metrics::DISPATCH_BOUNDS),
                &metrics::bounds_us(&metrics::RUN_BOUNDS),
            ],
        )
        .await?;
    let retried = row.get::<_, i64>(0) as u64;
    if retried > 0 {
        notify_pending(client, "retry").await?;
    }
    Ok(RetryAllReport {
        retried,
        skipped_unique_key: row.get::<_, i64>(1) as u64,
    })
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// The task was pending or assigned and is cancelled now.
    Cancelled,
    /// The task is running: its worker was asked to end it.
    Requested,
    /// A cancel was already requested and the worker has not acted yet.
    AlreadyRequested,
}

/// Cancels a task: at once when it is pending or assigned; a running task gets a cancel
/// request its worker acts on. Run in a transaction.
pub async fn tasks_cancel(client: &impl Sql, id: i64, actor: &str) -> Result<CancelOutcome> {
    let row = client
        .row_opt(
            "SELECT status, assigned_jr, cancel_requested_at IS NOT NULL \
             FROM jr_work_queue WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| no_such_task(id))?;
    let status: String = row.get(0);
    let worker: Option<String> = row.get(1);
    let already: bool = row.get(2);
    match status.as_str() {
        "waiting" | "awaiting_approval" | "pending" | "assigned" => {
            client
                .exec(
                    "UPDATE jr_work_queue SET status = 'cancelled', completed_at = now(), \
                         cancel_requested_at = now(), error = 'cancelled', updated_at = now() \
                     WHERE id = $1",
                    &[&id],
                )
                .await?;
            events::events_insert(
                client,
                &events::NewEvent {
                    task_id: id,
                    actor,
                    action: "cancelled",
                    from_status: Some(&status),
                    to_status: Some("cancelled"),
                    worker: worker.as_deref(),
                    attempt: None,
                    details: "cancelled by hand",
                },
            )
            .await?;
            Ok(CancelOutcome::Cancelled)
        }
        "in_progress" if already => Ok(CancelOutcome::AlreadyRequested),
        "in_progress" => {
            client
                .exec(
                    "UPDATE jr_work_queue SET cancel_requested_at = now(), updated_at = now() \
                     WHERE id = $1",
                    &[&id],
                )
                .await?;
            events::events_insert(
                client,
                &events::NewEvent {
                    task_id: id,
                    actor,
                    action: "cancel_requested",
                    from_status: Some("in_progress"),
                    to_status: Some("in_progress"),
                    worker: worker.as_deref(),
                    attempt: None,
                    details: "the worker will end the running attempt",
                },
            )
            .await?;
            if let Some(w) = &worker {
                let payload = format!("{}{w}", crate::db::CANCEL_PREFIX);
                client
                    .exec("SELECT pg_notify($1, $2)", &[&worker_channel(w), &payload])
                    .await?;
            }
            Ok(CancelOutcome::Requested)
        }
        other => Err(Error::Conflict(format!(
            "task {id} is already {other}: there is nothing to cancel"
        ))),
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct PruneReport {
    pub tasks: u64,
    pub events: u64,
    /// Chunks of their live output.
    pub output_chunks: u64,
}

/// Deletes finished tasks (completed, failed, cancelled) that finished before
/// `now() - older_than`, and their events.
pub async fn tasks_prune(client: &impl Sql, older_than: Duration) -> Result<PruneReport> {
    // What the rows counted moves into the metric totals in the same statement (V11).
    let sql = concat!(
        "WITH src AS ( \
             DELETE FROM jr_work_queue \
             WHERE status IN ('completed', 'failed', 'cancelled') \
               AND completed_at < now() - $1::int8 * interval '1 millisecond' \
             RETURNING id, status, ",
        crate::metric_cols!(),
        "), agg AS (",
        crate::metric_agg!("$2", "$3"),
        "), carry AS (",
        crate::metric_carry!(),
        "), e AS ( \
             DELETE FROM jr_task_events WHERE task_id IN (SELECT id FROM src) RETURNING 1), \
         o AS ( \
             DELETE FROM jr_task_output WHERE task_id IN (SELECT id FROM src) RETURNING 1), \
         u AS ( \
             DELETE FROM jr_task_usage WHERE task_id IN (SELECT id FROM src) \
             RETURNING provider, worker, input_tokens, output_tokens, cost_microusd), \
         ucarry AS ( \
             INSERT INTO jr_metric_totals AS t (metric, provider, worker, le, count, sum_us) \
             SELECT x.metric, u.provider, u.worker, 'Infinity', sum(x.n)::int8, 0 \
             FROM u, LATERAL (VALUES ('usage_input_tokens', u.input_tokens), \
                                     ('usage_output_tokens', u.output_tokens), \
                                     ('usage_cost_microusd', u.cost_microusd)) x (metric, n) \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 \
             ON CONFLICT (metric, provider, worker, le) DO UPDATE \
                 SET count = t.count + EXCLUDED.count) \
         SELECT (SELECT count(*) FROM src), (SELECT count(*) FROM e), (SELECT count(*) FROM o)"
    );
    let row = client
        .row(
            sql,
            &[
                &duration_ms(older_than),
                &metrics::bounds_us(&metrics::DISPATCH_BOUNDS),
                &metrics::bounds_us(&metrics::RUN_BOUNDS),
            ],
        )
        .await?;
    Ok(PruneReport {
        tasks: row.get::<_, i64>(0) as u64,
        events: row.get::<_, i64>(1) as u64,
        output_chunks: row.get::<_, i64>(2) as u64,
    })
}

/// What [`tasks_prune`] would delete now: the tasks and their events.
pub async fn tasks_prune_count(client: &impl Sql, older_than: Duration) -> Result<PruneReport> {
    let row = client
        .row(
            "WITH t AS ( \
                 SELECT id FROM jr_work_queue \
                 WHERE status IN ('completed', 'failed', 'cancelled') \
                   AND completed_at < now() - $1::int8 * interval '1 millisecond') \
             SELECT (SELECT count(*) FROM t), \
                    (SELECT count(*) FROM jr_task_events WHERE task_id IN (SELECT id FROM t)), \
                    (SELECT count(*) FROM jr_task_output WHERE task_id IN (SELECT id FROM t))",
            &[&duration_ms(older_than)],
        )
        .await?;
    Ok(PruneReport {
        tasks: row.get::<_, i64>(0) as u64,
        events: row.get::<_, i64>(1) as u64,
        output_chunks: row.get::<_, i64>(2) as u64,
    })
}

/// Counts and ages for `jrq status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskSummary {
    /// Tasks per status (every status present, zero included).
    pub by_status: Vec<(String, i64)>,
    /// Pending tasks whose `run_after` has not come yet (delayed or backing off).
    pub pending_delayed: i64,
    /// Seconds the longest-waiting ready pending task has waited.
    pub oldest_pending_age_s: Option<f64>,
    /// Tasks that finished completed / failed in the window.
    pub completed_window: i64,
    pub failed_window: i64,
    /// failed / (completed + failed) in the window, or `None` when nothing finished.
    pub failure_rate: Option<f64>,
    /// The window, in seconds.
    pub window_s: f64,
}

/// Summarises the queue: tasks by status, oldest pending age, failures in `window`.
pub async fn tasks_summary(client: &impl Sql, window: Duration) -> Result<TaskSummary> {
    let counts = client
        .rows(
            "SELECT status, count(*) FROM jr_work_queue GROUP BY status",
            &[],
        )
        .await?;
    let mut map: HashMap<String, i64> = counts.iter().map(|r| (r.get(0), r.get(1))).collect();
    let by_status = TaskStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), map.remove(s.as_str()).unwrap_or(0)))
        .collect();
    let row = client
        .row(
            "SELECT \
               (SELECT count(*) FROM jr_work_queue WHERE status = 'pending' AND run_after > now()), \
               (SELECT extract(epoch FROM now() - min(greatest(created_at, run_after)))::float8 \
                  FROM jr_work_queue WHERE status = 'pending' AND run_after <= now()), \
               (SELECT count(*) FROM jr_work_queue WHERE status = 'completed' \
                  AND completed_at > now() - $1::int8 * interval '1 millisecond'), \
               (SELECT count(*) FROM jr_work_queue WHERE status = 'failed' \
                  AND completed_at > now() - $1::int8 * interval '1 millisecond')",
            &[&duration_ms(window)],
        )
        .await?;
    let completed: i64 = row.get(2);
    let failed: i64 = row.get(3);
    Ok(TaskSummary {
        by_status,
        pending_delayed: row.get(0),
        oldest_pending_age_s: row.get(1),
        completed_window: completed,
        failed_window: failed,
        failure_rate: (completed + failed > 0).then(|| failed as f64 / (completed + failed) as f64),
        window_s: window.as_secs_f64(),
    })
}

/// Wakes the assigners (e.g. after tasks went back to pending).
pub async fn notify_pending(client: &impl Sql, why: &str) -> Result<()> {
    client
        .exec("SELECT pg_notify($1, $2)", &[&CHANNEL_PENDING, &why])
        .await?;
    Ok(())
}

/// Tasks completed and failed in each of the last `minutes` minutes (the current one
/// last, minutes without any included): (minute, completed, failed).
pub async fn tasks_per_minute(
    client: &impl Sql,
    minutes: i32,
) -> Result<Vec<(DateTime<Utc>, i64, i64)>> {
    let rows = client
        .rows(
            "WITH c AS ( \
                 SELECT date_trunc('minute', completed_at) AS m, \
                        count(*) FILTER (WHERE status = 'completed') AS c, \
                        count(*) FILTER (WHERE status = 'failed') AS f \
                 FROM jr_work_queue \
                 WHERE status IN ('completed', 'failed', 'cancelled') \
                   AND completed_at >= date_trunc('minute', now()) - ($1 - 1) * interval '1 minute' \
                 GROUP BY 1) \
             SELECT s.m, coalesce(c.c, 0), coalesce(c.f, 0) \
             FROM generate_series(date_trunc('minute', now()) - ($1 - 1) * interval '1 minute', \
                                  date_trunc('minute', now()), interval '1 minute') s (m) \
             LEFT JOIN c USING (m) ORDER BY 1",
            &[&minutes],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Tasks by status and provider: (status, provider, tasks).
pub async fn tasks_by_provider(client: &impl Sql) -> Result<Vec<(String, String, i64)>> {
    let rows = client
        .rows(
            "SELECT status, provider, count(*) FROM jr_work_queue GROUP BY 1, 2 ORDER BY 2, 1",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
