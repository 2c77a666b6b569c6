//! SQL on PostgreSQL itself: advisory locks and the server's own statistics that jrq
//! reports (the notification queue, the task table's dead rows).

use tokio_postgres::Client;

use crate::db::{DbConfig, Sql};
use crate::error::Result;

/// A transaction-level advisory lock, held by an open transaction on a connection of its
/// own for as long as this lives: the lock a session cannot hold through a transaction
/// pooler. Through one it keeps one server connection for the holder's duration.
pub struct XactLock {
    client: Client,
}

impl XactLock {
    /// Takes lock `key` if nobody holds it (as a session or a transaction lock): the lock,
    /// or `None`.
    pub async fn try_take(db: &DbConfig, key: i64) -> Result<Option<XactLock>> {
        let client = super::connect(db).await?;
        client.batch_execute("BEGIN").await?;
        let taken: bool = client
            .row("SELECT pg_try_advisory_xact_lock($1)", &[&key])
            .await?
            .get(0);
        if !taken {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        }
        Ok(Some(XactLock { client }))
    }

    /// Whether the lock is still held: its connection answers, so its transaction (and
    /// the lock) is open. A round checks before it acts outside the database (restarts),
    /// where no row lock would stop a second monitor that took the lock meanwhile.
    pub async fn check(&self) -> Result<()> {
        self.client.batch_execute("SELECT 1").await.map_err(|e| {
            crate::error::Error::Conflict(format!(
                "the round's lock was lost with its connection ({e}): the round ends \
                     before restarting anything, another monitor may hold the lock now"
            ))
        })
    }

    /// Ends the transaction, and with it the lock (dropping it without does too, when the
    /// connection closes).
    pub async fn release(self) -> Result<()> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// Takes the session-level advisory lock `key` if nobody holds it; whether it was taken.
pub async fn server_try_lock(client: &impl Sql, key: i64) -> Result<bool> {
    Ok(client
        .row("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0))
}

/// Releases the session-level advisory lock `key`.
pub async fn server_unlock(client: &impl Sql, key: i64) -> Result<()> {
    client
        .exec("SELECT pg_advisory_unlock($1)", &[&key])
        .await?;
    Ok(())
}

/// Releases every session-level advisory lock this connection holds.
pub async fn server_unlock_all(client: &impl Sql) -> Result<()> {
    client.exec("SELECT pg_advisory_unlock_all()", &[]).await?;
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
pub async fn server_queue_health(client: &impl Sql) -> Result<QueueHealth> {
    let row = client
        .row(
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

/// The health monitor's standing before a round.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    /// The alerts of the last round.
    pub alerts: Vec<String>,
    /// Since when the queue has been unhealthy.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Records this round's alerts in `host`'s row of `jr_monitor_state` and returns what it
/// held before (run under the monitor's lock: one round at a time).
pub async fn server_swap_standing(
    client: &impl Sql,
    host: &str,
    alerts: &[String],
) -> Result<Standing> {
    let row = client
        .row(
            "WITH old AS (SELECT alerts, since FROM jr_monitor_state WHERE host = $2), \
                  up AS ( \
                 INSERT INTO jr_monitor_state AS s (host, alerts, since, updated_at) \
                 VALUES ($2, $1, CASE WHEN cardinality($1::text[]) > 0 THEN now() END, now()) \
                 ON CONFLICT (host) DO UPDATE SET alerts = EXCLUDED.alerts, \
                     since = CASE WHEN cardinality(EXCLUDED.alerts) = 0 THEN NULL \
                                  ELSE coalesce(s.since, now()) END, \
                     updated_at = now()) \
             SELECT coalesce((SELECT alerts FROM old), '{}'), (SELECT since FROM old)",
            &[&alerts, &host],
        )
        .await?;
    Ok(Standing {
        alerts: row.get(0),
        since: row.get(1),
    })
}
