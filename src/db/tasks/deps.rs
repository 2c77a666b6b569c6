//! Dependencies between tasks (`jr_task_deps`) and approval gates (migrations/V15).
//!
//! What follows from a dependency — a task waiting, becoming ready when the last of its
//! dependencies completes, cancelled when one fails, revived by a retry — is done by the
//! database's triggers, in the transaction that made it so; this module only adds the
//! rows and reads them.

use serde::Serialize;

use crate::db::Sql;
use chrono::{DateTime, Utc};

use super::no_such_task;
use crate::error::{sqlstate, Error, Result};
use crate::task::TaskStatus;

/// Adds dependency rows: `(task, depends_on)`. The triggers lock each dependency, count
/// it against its task (which becomes `waiting`), or cancel the task at once when the
/// dependency already failed. Rows go in in dependency order, so that concurrent
/// enqueues lock shared dependencies in one order.
pub async fn tasks_deps_insert(client: &impl Sql, pairs: &[(i64, i64)]) -> Result<u64> {
    if pairs.is_empty() {
        return Ok(0);
    }
    let (task, dep): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
    client
        .exec(
            "INSERT INTO jr_task_deps (task_id, depends_on) \
             SELECT t, d FROM unnest($1::int8[], $2::int8[]) AS u (t, d) \
             ORDER BY d, t ON CONFLICT DO NOTHING",
            &[&task, &dep],
        )
        .await
        .map_err(|e| deps_error(&e))
}

fn deps_error(e: &tokio_postgres::Error) -> Error {
    match sqlstate(e) {
        Some("23503") => Error::NotFound(
            "a dependency names a task that does not exist: check the ids with `jrq tasks`".into(),
        ),
        Some("23514") => Error::Conflict(match e.as_db_error() {
            Some(d) if d.constraint() == Some("jr_task_deps_order_check") => {
                "a task can depend only on tasks created before it (so that no cycle is \
                 possible)"
                    .into()
            }
            Some(d) => d.message().to_string(),
            None => e.to_string(),
        }),
        _ => Error::from_pg(e),
    }
}

/// Deletes tasks this transaction inserted and then refused (a batch line waiting for
/// a refused line): nobody else has seen them.
pub async fn tasks_delete_new(client: &impl Sql, ids: &[i64]) -> Result<()> {
    if !ids.is_empty() {
        client
            .exec("DELETE FROM jr_work_queue WHERE id = ANY($1)", &[&ids])
            .await?;
    }
    Ok(())
}

/// Which of `ids` are tasks.
pub async fn tasks_existing(client: &impl Sql, ids: &[i64]) -> Result<Vec<i64>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = client
        .rows(
            "SELECT id FROM jr_work_queue WHERE id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A task at the other end of a dependency.
#[derive(Debug, Clone, Serialize)]
pub struct DepRow {
    pub id: i64,
    pub title: String,
    pub status: TaskStatus,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A task's dependencies and its dependents, by id.
pub async fn tasks_deps_of(client: &impl Sql, id: i64) -> Result<(Vec<DepRow>, Vec<DepRow>)> {
    let rows = client
        .rows(
            "SELECT 'dep', q.id, left(q.title, 200), q.status, q.completed_at \
             FROM jr_task_deps d JOIN jr_work_queue q ON q.id = d.depends_on \
             WHERE d.task_id = $1 \
             UNION ALL \
             SELECT 'dependent', q.id, left(q.title, 200), q.status, q.completed_at \
             FROM jr_task_deps d JOIN jr_work_queue q ON q.id = d.task_id \
             WHERE d.depends_on = $1 \
             ORDER BY 1, 2",
            &[&id],
        )
        .await?;
    let mut deps = vec![];
    let mut dependents = vec![];
    for r in &rows {
        let row = DepRow {
            id: r.get(1),
            title: r.get(2),
            status: r.try_get(3)?,
            completed_at: r.get(4),
        };
        if r.get::<_, &str>(0) == "dep" {
            deps.push(row);
        } else {
            dependents.push(row);
        }
    }
    Ok((deps, dependents))
}

/// Who acts on an approval gate: the name recorded (`--as`, else $USER) and the
/// database user, which the gate's role is checked against.
#[derive(Debug, Clone)]
pub struct Approver<'a> {
    pub name: &'a str,
    pub comment: &'a str,
}

/// What an approval did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Approved {
    pub id: i64,
    /// The status now: `pending`, or `waiting` while dependencies are unfinished.
    pub status: TaskStatus,
    pub approved_by: String,
}

/// Reads the gate of a task for an approval or a rejection, locked: refuses a task that
/// has no gate, is past it, or whose gate names a role the database user is not in.
async fn gate_check(client: &impl Sql, id: i64, verb: &str) -> Result<TaskStatus> {
    let row = client
        .row_opt(
            "SELECT status, approve_by, approved_at IS NOT NULL, \
                 CASE WHEN approve_by IS NULL OR approve_by = '' THEN true \
                      WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = approve_by) \
                          THEN NULL \
                      ELSE pg_has_role(approve_by, 'MEMBER') END, \
                 current_user::text \
             FROM jr_work_queue WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| no_such_task(id))?;
    let status: TaskStatus = row.try_get(0)?;
    let approve_by: Option<String> = row.get(1);
    let approved: bool = row.get(2);
    let member: Option<bool> = row.get(3);
    let user: String = row.get(4);
    let gated = matches!(status, TaskStatus::AwaitingApproval | TaskStatus::Waiting)
        && (approve_by.is_some() || status == TaskStatus::AwaitingApproval);
    if !gated || approved {
        let why = if approved {
            "it was approved already".to_string()
        } else if approve_by.is_none() {
            "it needs no approval".to_string()
        } else {
            "it is past its approval".to_string()
        };
        return Err(Error::Conflict(format!(
            "task {id} is {status}: {why}, there is nothing to {verb} (see `jrq show {id}`)"
        )));
    }
    let role = approve_by.unwrap_or_default();
    match member {
        Some(true) => Ok(status),
        Some(false) => Err(Error::Conflict(format!(
            "task {id} may be {verb}d only by members of the database role '{role}', and \
             '{user}' is not one: ask one of them, or GRANT {role} TO {user}"
        ))),
        None => Err(Error::Conflict(format!(
            "task {id} may be {verb}d only by members of the database role '{role}', which \
             does not exist: create it (CREATE ROLE {role}) and grant it to the approvers"
        ))),
    }
}

/// Approves a task awaiting approval (or waiting for dependencies with a gate ahead):
/// it becomes pending (wakes the assigners) or, while dependencies are unfinished, stays
/// waiting with the approval recorded. One `approved` event. Run in a transaction.
pub async fn tasks_approve(client: &impl Sql, id: i64, by: &Approver<'_>) -> Result<Approved> {
    let from = gate_check(client, id, "approve").await?;
    let who = format!("{} (database user {})", by.name, db_user(client).await?);
    let details = match by.comment.trim() {
        "" => format!("approved by {who}"),
        c => format!("approved by {who}: {c}"),
    };
    let row = client
        .row(
            "WITH upd AS ( \
                 UPDATE jr_work_queue SET approved_at = now(), approved_by = $2, \
                     status = CASE WHEN status = 'awaiting_approval' THEN 'pending' \
                                   ELSE status END, \
                     run_after = CASE WHEN status = 'awaiting_approval' \
                                      THEN greatest(run_after, now()) ELSE run_after END, \
                     updated_at = now() \
                 WHERE id = $1 RETURNING id, status, attempts), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, attempt, details) \
                 SELECT id, $2, 'approved', $3, status, attempts, $4 FROM upd) \
             SELECT status FROM upd",
            &[&id, &by.name, &from.as_str(), &details],
        )
        .await?;
    let status: TaskStatus = row.try_get(0)?;
    if status == TaskStatus::Pending {
        super::notify_pending(client, "approved").await?;
    }
    Ok(Approved {
        id,
        status,
        approved_by: by.name.to_string(),
    })
}

/// Rejects a task awaiting approval: cancelled with the reason as its error (the tasks
/// waiting for it are cancelled by the database, each with the cause). One `rejected`
/// event. Run in a transaction.
pub async fn tasks_reject(client: &impl Sql, id: i64, by: &Approver<'_>) -> Result<()> {
    let from = gate_check(client, id, "reject").await?;
    let who = format!("{} (database user {})", by.name, db_user(client).await?);
    let error = format!("rejected by {who}: {}", by.comment.trim());
    client
        .exec(
            "WITH upd AS ( \
                 UPDATE jr_work_queue SET status = 'cancelled', completed_at = now(), \
                     error = $3, updated_at = now() \
                 WHERE id = $1 RETURNING id, attempts) \
             INSERT INTO jr_task_events \
                 (task_id, actor, action, from_status, to_status, attempt, details) \
             SELECT id, $2, 'rejected', $4, 'cancelled', attempts, $3 FROM upd",
            &[&id, &by.name, &error, &from.as_str()],
        )
        .await?;
    Ok(())
}

async fn db_user(client: &impl Sql) -> Result<String> {
    Ok(client.row("SELECT current_user::text", &[]).await?.get(0))
}

/// Tasks awaiting approval longer than `older_than` (seconds since they began to await
/// it): how many, and the oldest (id, seconds).
pub async fn tasks_awaiting_approval(
    client: &impl Sql,
    older_than: std::time::Duration,
) -> Result<(i64, Option<(i64, f64)>)> {
    let row = client
        .row(
            "WITH a AS ( \
                 SELECT id, extract(epoch FROM now() - updated_at)::float8 AS age \
                 FROM jr_work_queue WHERE status = 'awaiting_approval' \
                   AND updated_at < now() - $1::int8 * interval '1 millisecond') \
             SELECT (SELECT count(*) FROM a), \
                    (SELECT id FROM a ORDER BY age DESC, id LIMIT 1), \
                    (SELECT max(age) FROM a)",
            &[&super::duration_ms(older_than)],
        )
        .await?;
    let n: i64 = row.get(0);
    let oldest = match (row.get::<_, Option<i64>>(1), row.get::<_, Option<f64>>(2)) {
        (Some(id), Some(age)) => Some((id, age)),
        _ => None,
    };
    Ok((n, oldest))
}
