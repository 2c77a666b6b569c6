//! SQL on PostgreSQL itself: advisory locks and the server's own statistics that jrq
//! reports (the notification queue, the task table's dead rows).

use tokio_postgres::Client;

use serde::Serialize;

use crate::db::{DbConfig, Sql};
use crate::error::Result;

/// A transaction-level advisory lock, held by an open transaction on a connection of its
/// own for as long as this lives: the lock a session cannot hold through a transaction
/// pooler. Through one it keeps one server connection for the holder's duration.
pub struct XactLock {
    client: Client,
    /// The backend of the lock's connection.
    pid: i32,
}

impl XactLock {
    /// Takes lock `key` if nobody holds it (as a session or a transaction lock): the lock,
    /// or `None`.
    pub async fn try_take(db: &DbConfig, key: i64) -> Result<Option<XactLock>> {
        let client = super::connect(db).await?;
        client.batch_execute("BEGIN").await?;
        let row = client
            .row(
                "SELECT pg_try_advisory_xact_lock($1), pg_backend_pid()",
                &[&key],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            client.batch_execute("ROLLBACK").await?;
            return Ok(None);
        }
        Ok(Some(XactLock {
            client,
            pid: row.get(1),
        }))
    }

    /// The backend holding the lock (its open transaction is not a vacuum problem).
    pub fn pid(&self) -> i32 {
        self.pid
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

/// What holds back this database's vacuum horizon the longest: the oldest snapshot or
/// transaction of a session in this database, a prepared transaction, or a replication
/// slot. While it holds, no row version deleted or updated after it started can be
/// removed, in any table — jr_work_queue's hot indexes fill with dead entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HorizonHolder {
    /// `session`, `prepared transaction` or `replication slot`.
    pub kind: String,
    pub pid: Option<i32>,
    pub user: Option<String>,
    pub application: Option<String>,
    pub client_addr: Option<String>,
    /// `idle in transaction`, `active`, ... (NULL without pg_read_all_stats).
    pub state: Option<String>,
    /// For a session: how long its transaction has been open (NULL without
    /// pg_read_all_stats); a prepared transaction: since it was prepared.
    pub age_s: Option<f64>,
    /// Transactions since its horizon (`age(backend_xmin)`), always known.
    pub xid_age: i64,
    /// A prepared transaction's gid, a slot's name.
    pub name: Option<String>,
}

impl HorizonHolder {
    /// "a transaction open for 12m from 10.0.0.5 (psql, user u, pid 4242, idle in
    /// transaction; 812 transaction(s) behind)".
    pub fn describe(&self) -> String {
        let age = self
            .age_s
            .map(|s| {
                crate::validate::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64))
            })
            .map(|a| format!(" open for {a}"))
            .unwrap_or_default();
        match self.kind.as_str() {
            "session" => {
                let from = self
                    .client_addr
                    .as_deref()
                    .map(|a| format!(" from {a}"))
                    .unwrap_or_else(|| " from a local socket".into());
                let mut who = vec![];
                // Names from the database: shown as text, never as terminal controls.
                let clean = |s: &str| crate::text::for_terminal(s, false).to_string();
                if let Some(a) = self.application.as_deref().filter(|a| !a.is_empty()) {
                    who.push(clean(a));
                }
                if let Some(u) = &self.user {
                    who.push(format!("user {}", clean(u)));
                }
                if let Some(p) = self.pid {
                    who.push(format!("pid {p}"));
                }
                if let Some(st) = &self.state {
                    who.push(st.clone());
                }
                format!(
                    "a transaction{age}{from} ({}; {} transaction(s) behind)",
                    who.join(", "),
                    self.xid_age
                )
            }
            "prepared transaction" => format!(
                "prepared transaction '{}'{age} ({} transaction(s) behind; COMMIT PREPARED \
                 or ROLLBACK PREPARED it)",
                crate::text::for_terminal(self.name.as_deref().unwrap_or_default(), false),
                self.xid_age
            ),
            _ => format!(
                "replication slot '{}' ({} transaction(s) behind: a standby or consumer that \
                 stopped reading)",
                crate::text::for_terminal(self.name.as_deref().unwrap_or_default(), false),
                self.xid_age
            ),
        }
    }
}

/// The oldest holder of this database's vacuum horizon, other than this session and
/// `exclude` (the monitor's own lock connection); `None` when nothing holds it.
pub async fn server_horizon_holder(
    client: &impl Sql,
    exclude: Option<i32>,
) -> Result<Option<HorizonHolder>> {
    let row = client
        .row_opt(
            "SELECT * FROM ( \
                 SELECT 'session' AS kind, pid, usename::text, application_name, \
                     host(client_addr), state, \
                     extract(epoch FROM now() - xact_start)::float8, \
                     greatest(age(backend_xmin), age(backend_xid))::int8 AS xid_age, \
                     NULL::text \
                 FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                   AND pid IS DISTINCT FROM $1 \
                   AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) \
                 UNION ALL \
                 SELECT 'prepared transaction', NULL, owner::text, NULL, NULL, NULL, \
                     extract(epoch FROM now() - prepared)::float8, age(transaction)::int8, gid \
                 FROM pg_prepared_xacts WHERE database = current_database() \
                 UNION ALL \
                 SELECT 'replication slot', active_pid, NULL, NULL, NULL, NULL, NULL, \
                     greatest(age(xmin), age(catalog_xmin))::int8, slot_name::text \
                 FROM pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL \
             ) h ORDER BY xid_age DESC NULLS LAST, 7 DESC NULLS LAST LIMIT 1",
            &[&exclude],
        )
        .await?;
    Ok(row.map(|r| HorizonHolder {
        kind: r.get(0),
        pid: r.get(1),
        user: r.get(2),
        application: r.get(3),
        client_addr: r.get(4),
        state: r.get(5),
        age_s: r.get(6),
        xid_age: r.get::<_, Option<i64>>(7).unwrap_or(0),
        name: r.get(8),
    }))
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
