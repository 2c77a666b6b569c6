//! SQL on PostgreSQL itself: session advisory locks and the server's own statistics that
//! jrq reports (the notification queue, the task table's dead rows).

use tokio_postgres::GenericClient;

use crate::error::Result;

/// Takes the session-level advisory lock `key` if nobody holds it; whether it was taken.
pub async fn server_try_lock(client: &impl GenericClient, key: i64) -> Result<bool> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0))
}

/// Releases the session-level advisory lock `key`.
pub async fn server_unlock(client: &impl GenericClient, key: i64) -> Result<()> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await?;
    Ok(())
}

/// Releases every session-level advisory lock this connection holds.
pub async fn server_unlock_all(client: &impl GenericClient) -> Result<()> {
    client
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .await?;
    Ok(())
}

/// What the server says about the queue's health.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueHealth {
    /// Share of the notification queue in use (0–1): a listener stuck in a transaction
    /// makes it grow.
    pub notify_queue_usage: f64,
    /// Dead row versions in `jr_work_queue` (vacuum behind when this grows).
    pub dead_tuples: i64,
}

/// Reads [`QueueHealth`].
pub async fn server_queue_health(client: &impl GenericClient) -> Result<QueueHealth> {
    let row = client
        .query_one(
            "SELECT pg_notification_queue_usage(), \
                 coalesce((SELECT n_dead_tup FROM pg_stat_user_tables \
                           WHERE relname = 'jr_work_queue'), 0)",
            &[],
        )
        .await?;
    Ok(QueueHealth {
        notify_queue_usage: row.get(0),
        dead_tuples: row.get(1),
    })
}
