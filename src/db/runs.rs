//! SQL on `jr_runs`: runs group tasks and the workers started for them.

use crate::db::Sql;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::CHANNEL_RUNS;
use crate::error::{Error, Result};
use crate::task::RunStatus;

/// One run, with its tasks counted by status.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: Uuid,
    pub name: String,
    pub status: RunStatus,
    pub auto_complete: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub tasks_total: i64,
    pub tasks_unfinished: i64,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub tasks_cancelled: i64,
    /// Its budget in US dollars (None: none).
    pub max_cost_usd: Option<f64>,
    /// What its tasks reported spending (JRQ-USAGE), in US dollars.
    pub cost_usd: f64,
    /// The title of the task enqueued when the run completes (`--on-complete`).
    pub on_complete: Option<String>,
    /// The title of the task enqueued when the run ends in error (`--on-error`).
    pub on_error: Option<String>,
    /// The callback enqueued when the run ended.
    pub callback_task: Option<i64>,
    /// Why the callback could not be enqueued.
    pub callback_error: Option<String>,
}

fn run_from_row(r: &tokio_postgres::Row) -> RunRow {
    RunRow {
        id: r.get(0),
        name: r.get(1),
        status: r.get(2),
        auto_complete: r.get(3),
        created_at: r.get(4),
        updated_at: r.get(5),
        finished_at: r.get(6),
        tasks_total: r.get(7),
        tasks_unfinished: r.get(8),
        tasks_completed: r.get(9),
        tasks_failed: r.get(10),
        tasks_cancelled: r.get(11),
        max_cost_usd: r.get(12),
        cost_usd: r.get::<_, i64>(13) as f64 / 1e6,
        on_complete: r.get(14),
        on_error: r.get(15),
        callback_task: r.get(16),
        callback_error: r.get(17),
    }
}

/// What `runs_create` makes.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub name: String,
    pub auto_complete: bool,
    /// A budget in US dollars.
    pub max_cost_usd: Option<f64>,
    /// Task templates ([`crate::task::NewTask::to_template`]) enqueued once when the run
    /// completes, or ends in error (migrations/V16).
    pub on_complete: Option<serde_json::Value>,
    pub on_error: Option<serde_json::Value>,
}

/// Creates an active run and returns its id.
pub async fn runs_create(client: &impl Sql, run: &NewRun) -> Result<Uuid> {
    let row = client
        .row(
            "INSERT INTO jr_runs (name, auto_complete, max_cost_usd, on_complete, on_error) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &run.name,
                &run.auto_complete,
                &run.max_cost_usd,
                &run.on_complete,
                &run.on_error,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// Sets (or with `None` removes) a run's budget. A pause the budget set ends when the
/// run is under its new budget; a run already over its new budget is paused at once.
/// Returns whether a budget pause ended, and whether one began.
pub async fn runs_set_budget(
    client: &impl Sql,
    id: Uuid,
    max_cost_usd: Option<f64>,
) -> Result<(bool, bool)> {
    let row = client
        .row_opt(
            "WITH r AS ( \
                 UPDATE jr_runs SET max_cost_usd = $2, updated_at = now() WHERE id = $1 \
                 RETURNING id, cost_microusd), \
             d AS ( \
                 DELETE FROM jr_pauses p USING r \
                 WHERE p.scope = 'run' AND p.target = r.id::text AND p.set_by = 'budget' \
                   AND ($2::float8 IS NULL OR r.cost_microusd < $2 * 1e6) \
                 RETURNING 1), \
             p AS ( \
                 INSERT INTO jr_pauses (scope, target, until, reason, set_by) \
                 SELECT 'run', r.id::text, NULL, \
                     'over budget: $' || to_char(r.cost_microusd / 1e6, 'FM999999990.00') \
                         || ' spent of the run''s $' || to_char($2, 'FM999999990.00'), \
                     'budget' \
                 FROM r WHERE $2::float8 IS NOT NULL AND r.cost_microusd >= $2 * 1e6 \
                   AND r.cost_microusd > 0 \
                 ON CONFLICT (scope, target) DO NOTHING RETURNING 1) \
             SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM p) FROM r",
            &[&id, &max_cost_usd],
        )
        .await?;
    match row {
        Some(r) => Ok((r.get::<_, i64>(0) > 0, r.get::<_, i64>(1) > 0)),
        None => Err(no_such_run(id)),
    }
}

/// Runs with their tasks counted, newest first; `$1` picks one run, `$2` a status.
const RUNS_SQL: &str = "SELECT r.id, r.name, r.status, r.auto_complete, r.created_at, \
        r.updated_at, r.finished_at, \
        count(t.id), \
        count(t.id) FILTER (WHERE t.status NOT IN ('completed', 'failed', 'cancelled')), \
        count(t.id) FILTER (WHERE t.status = 'completed'), \
        count(t.id) FILTER (WHERE t.status = 'failed'), \
        count(t.id) FILTER (WHERE t.status = 'cancelled'), \
        r.max_cost_usd, r.cost_microusd, r.on_complete->>'title', r.on_error->>'title', \
        r.callback_task, r.callback_error \
    FROM jr_runs r LEFT JOIN jr_work_queue t ON t.run_id = r.id \
    WHERE ($1::uuid IS NULL OR r.id = $1) AND ($2::text IS NULL OR r.status = $2) \
    GROUP BY r.id ORDER BY r.created_at DESC, r.id LIMIT $3";

/// Lists runs, newest first; `status` filters.
pub async fn runs_list(
    client: &impl Sql,
    status: Option<RunStatus>,
    limit: i64,
) -> Result<Vec<RunRow>> {
    let status = status.map(|s| s.as_str());
    let rows = client
        .rows(RUNS_SQL, &[&None::<Uuid>, &status, &limit])
        .await?;
    Ok(rows.iter().map(run_from_row).collect())
}

/// One run, or a clear "no run" error.
pub async fn runs_get(client: &impl Sql, id: Uuid) -> Result<RunRow> {
    client
        .row_opt(RUNS_SQL, &[&Some(id), &None::<&str>, &1i64])
        .await?
        .as_ref()
        .map(run_from_row)
        .ok_or_else(|| no_such_run(id))
}

fn no_such_run(id: Uuid) -> Error {
    Error::NotFound(format!(
        "there is no run {id}: check the id with `jrq runs list`"
    ))
}

/// Sets a run's status; a terminal status records `finished_at` and wakes the workers
/// serving the run so they exit at once.
pub async fn runs_set_status(client: &impl Sql, id: Uuid, status: RunStatus) -> Result<()> {
    let n = client
        .exec(
            "UPDATE jr_runs SET status = $2, updated_at = now(), \
                 finished_at = CASE WHEN $2 = 'active' THEN NULL \
                                    ELSE coalesce(finished_at, now()) END \
             WHERE id = $1",
            &[&id, &status.as_str()],
        )
        .await?;
    if n == 0 {
        return Err(no_such_run(id));
    }
    client
        .exec(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL_RUNS, &id.to_string()],
        )
        .await?;
    Ok(())
}

/// The status of a run, or `None` if there is no such run.
pub async fn runs_status(client: &impl Sql, run: Uuid) -> Result<Option<RunStatus>> {
    Ok(client
        .row_opt("SELECT status FROM jr_runs WHERE id = $1", &[&run])
        .await?
        .map(|r| r.get(0)))
}

/// Which of `ids` name runs that exist.
pub async fn runs_existing(
    client: &impl Sql,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>> {
    Ok(client
        .rows("SELECT id FROM jr_runs WHERE id = ANY($1)", &[&ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Marks `auto_complete` runs whose tasks are all finished: completed, or error when any
/// task failed. Wakes the workers serving them. Returns (run id, new status). The run's
/// callback, if it has one, is enqueued by the status change (migrations/V16); the
/// UPDATE checks `active` again on the row it locked, so a concurrent round (or
/// `jrq runs set`) that ended the run first makes this one skip it.
pub async fn runs_complete_finished(client: &impl Sql) -> Result<Vec<(Uuid, String)>> {
    let rows = client
        .rows(
            "WITH done AS ( \
                 SELECT r.id, bool_or(t.status = 'failed') AS any_failed \
                 FROM jr_runs r JOIN jr_work_queue t ON t.run_id = r.id \
                 WHERE r.status = 'active' AND r.auto_complete \
                 GROUP BY r.id \
                 HAVING bool_and(t.status IN ('completed', 'failed', 'cancelled'))), \
             upd AS ( \
                 UPDATE jr_runs r SET \
                     status = CASE WHEN done.any_failed THEN 'error' ELSE 'completed' END, \
                     finished_at = now(), updated_at = now() \
                 FROM done WHERE r.id = done.id AND r.status = 'active' \
                 RETURNING r.id, r.status), \
             n AS (SELECT pg_notify($1, id::text) FROM upd) \
             SELECT id, status, (SELECT count(*) FROM n) FROM upd",
            &[&CHANNEL_RUNS],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Runs that ended within `within` whose callback could not be enqueued: (id, name,
/// why), the oldest first, at most 10.
pub async fn runs_callback_errors(
    client: &impl Sql,
    within: std::time::Duration,
) -> Result<Vec<(Uuid, String, String)>> {
    Ok(client
        .rows(
            "SELECT id, name, callback_error FROM jr_runs \
             WHERE callback_error IS NOT NULL \
               AND finished_at > now() - $1::int8 * interval '1 millisecond' \
             ORDER BY finished_at, id LIMIT 10",
            &[&(within.as_millis() as i64)],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The run a person names: its id, its name, or a unique prefix of its id (at least 4
/// characters). An unknown or ambiguous reference is refused with what to give instead.
pub async fn runs_resolve(client: &impl Sql, r: &str) -> Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(r) {
        let known = client
            .row_opt("SELECT 1 FROM jr_runs WHERE id = $1", &[&id])
            .await?
            .is_some();
        return if known {
            Ok(id)
        } else {
            Err(Error::NotFound(format!(
                "there is no run {id}: create it with `jrq runs create` or check the id \
                 with `jrq runs list`"
            )))
        };
    }
    let named: Vec<Uuid> = client
        .rows(
            "SELECT id FROM jr_runs WHERE name = $1 ORDER BY created_at DESC LIMIT 3",
            &[&r],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if named.len() > 1 {
        return Err(Error::Conflict(format!(
            "several runs are named '{r}': give the run's id (or a unique prefix of it), \
             see `jrq runs list`"
        )));
    }
    let prefix = r.to_ascii_lowercase();
    let mut found: Vec<Uuid> = vec![];
    // Only hex digits and '-' reach the LIKE: no wildcard of the caller's.
    if prefix.len() >= 4 && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        found = client
            .rows(
                "SELECT id FROM jr_runs WHERE id::text LIKE $1 || '%' LIMIT 2",
                &[&prefix],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
    }
    match (named.as_slice(), found.as_slice()) {
        ([n], []) => return Ok(*n),
        ([n], [f]) if n == f => return Ok(*n),
        ([], [f]) => return Ok(*f),
        ([_], _) => {
            return Err(Error::Conflict(format!(
                "'{r}' is the name of one run and the start of another's id: give the id \
                 (see `jrq runs list`)"
            )))
        }
        ([], [_, _, ..]) => {
            return Err(Error::Conflict(format!(
                "run id prefix '{r}' is ambiguous: give more of the id (see `jrq runs list`)"
            )))
        }
        _ => {}
    }
    Err(Error::NotFound(format!(
        "there is no run '{}' (by id, id prefix or name): see `jrq runs list`",
        crate::text::for_terminal(r, false)
    )))
}
