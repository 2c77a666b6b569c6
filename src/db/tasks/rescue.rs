//! The health monitor's side of `jr_work_queue`: stuck and overdue running tasks.

use std::time::Duration;

use crate::db::Sql;
use serde::Serialize;

use super::duration_ms;
use crate::error::Result;
use crate::task::TaskStatus;

/// A running task the monitor acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Acted {
    pub id: i64,
    pub worker: Option<String>,
    /// The status it has now.
    pub to_status: TaskStatus,
    pub why: String,
}

/// Puts back `in_progress` tasks whose worker stopped heartbeating more than `stuck_after`
/// ago (or went offline, or never registered), through `jrq_tasks_rescue` (migrations/V6,
/// the rules of every rescue). One `rescued` event each. Tasks of workers that
/// still heartbeat are slow, not stuck, and are left alone.
pub async fn tasks_rescue_stuck(
    client: &impl Sql,
    actor: &str,
    stuck_after: Duration,
) -> Result<Vec<Acted>> {
    let rows = client
        .rows(
            "WITH stuck AS ( \
                 SELECT q.id, q.assigned_jr, \
                     'stuck: worker ''' || q.assigned_jr || ''' ' || \
                     CASE WHEN w.jr_name IS NULL THEN 'is not registered' \
                          WHEN NOT w.is_online THEN 'is offline' \
                          ELSE 'has been silent for ' || \
                               round(extract(epoch FROM now() - w.last_seen))::int8 || 's' \
                     END AS why \
                 FROM jr_work_queue q LEFT JOIN jr_status w ON w.jr_name = q.assigned_jr \
                 WHERE q.status = 'in_progress' \
                   AND (w.jr_name IS NULL OR NOT w.is_online \
                        OR NOT w.last_seen BETWEEN now() - $2::int8 * interval '1 millisecond' \
                            AND now() + interval '1 minute') \
                   AND q.started_at < now() - $2::int8 * interval '1 millisecond' \
                 ORDER BY q.id \
                 FOR UPDATE OF q SKIP LOCKED), \
             s AS (SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids, \
                       coalesce(array_agg(assigned_jr ORDER BY id), '{}') AS workers, \
                       coalesce(array_agg(why ORDER BY id), '{}') AS whys \
                   FROM stuck) \
             SELECT r.id, r.worker, r.status, r.error \
             FROM s, jrq_tasks_rescue(s.ids, s.workers, s.whys, $1) r",
            &[&actor, &duration_ms(stuck_after)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Acted {
                id: r.get(0),
                worker: r.get(1),
                to_status: r.try_get(2)?,
                why: r.get(3),
            })
        })
        .collect()
}

/// Fails `in_progress` tasks that ran past their own timeout plus `grace` although their
/// worker is alive (it should have ended them). The worker's later write then finds its
/// lease gone and stops the process.
pub async fn tasks_fail_overdue(
    client: &impl Sql,
    actor: &str,
    grace: Duration,
) -> Result<Vec<Acted>> {
    let rows = client
        .rows(
            "WITH late AS ( \
                 SELECT id FROM jr_work_queue \
                 WHERE status = 'in_progress' \
                   AND started_at + timeout + $2::int8 * interval '1 millisecond' < now() \
                 FOR UPDATE SKIP LOCKED), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'failed', completed_at = now(), \
                     error = 'overdue: ran past its timeout (' || q.timeout || \
                         ') and the grace (' || ($2::int8 / 1000) || \
                         's) without its worker ending it', \
                     lease_instance = NULL, updated_at = now() \
                 FROM late WHERE q.id = late.id \
                 RETURNING q.id, q.assigned_jr, q.attempts, q.error), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, 'failed', 'in_progress', 'failed', assigned_jr, attempts, error \
                 FROM upd) \
             SELECT id, assigned_jr, error FROM upd ORDER BY id",
            &[&actor, &duration_ms(grace)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Acted {
            id: r.get(0),
            worker: r.get(1),
            to_status: TaskStatus::Failed,
            why: r.get(2),
        })
        .collect())
}
