//! SQL on `jr_task_events`, the append-only history of every task transition.

use crate::db::Sql;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;

/// One transition to record.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub task_id: i64,
    /// Who made the transition: `jrq`, a worker name, `assigner:HOST:PID`, ...
    pub actor: &'a str,
    pub action: &'a str,
    pub from_status: Option<&'a str>,
    pub to_status: Option<&'a str>,
    pub worker: Option<&'a str>,
    pub attempt: Option<i32>,
    pub details: &'a str,
}

/// One recorded transition.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub task_id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub worker: Option<String>,
    pub attempt: Option<i32>,
    pub details: String,
}

/// Records one transition.
pub async fn events_insert(client: &impl Sql, e: &NewEvent<'_>) -> Result<()> {
    client
        .exec(
            "INSERT INTO jr_task_events \
                 (task_id, actor, action, from_status, to_status, worker, attempt, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &e.task_id,
                &e.actor,
                &e.action,
                &e.from_status,
                &e.to_status,
                &e.worker,
                &e.attempt,
                &e.details,
            ],
        )
        .await?;
    Ok(())
}

/// A task's history, oldest first.
pub async fn events_for_task(client: &impl Sql, task_id: i64) -> Result<Vec<EventRow>> {
    let rows = client
        .rows(
            "SELECT id, task_id, at, actor, action, from_status, to_status, worker, attempt, \
                    details \
             FROM jr_task_events WHERE task_id = $1 ORDER BY id",
            &[&task_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EventRow {
            id: r.get(0),
            task_id: r.get(1),
            at: r.get(2),
            actor: r.get(3),
            action: r.get(4),
            from_status: r.get(5),
            to_status: r.get(6),
            worker: r.get(7),
            attempt: r.get(8),
            details: r.get(9),
        })
        .collect())
}
