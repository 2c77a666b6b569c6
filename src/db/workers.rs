//! SQL on `jr_status`, the worker registry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::db::tasks::duration_ms;
use crate::error::Result;

/// A worker whose heartbeat is older than this is not counted as online. The worker's
/// default heartbeat interval is well inside it.
pub const DEFAULT_ONLINE_THRESHOLD: Duration = Duration::from_secs(30);

/// One registered worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub jr_name: String,
    pub kind: String,
    pub host: String,
    pub pid: Option<i32>,
    pub instance_id: Option<Uuid>,
    pub providers: Vec<String>,
    pub capacity: i32,
    pub current_load: i32,
    pub is_online: bool,
    /// `is_online` and a heartbeat within the online threshold.
    pub alive: bool,
    pub status: String,
    pub run_id: Option<Uuid>,
    pub started_at: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    pub last_seen_age_s: Option<f64>,
    pub consecutive_failures: i32,
    pub circuit_open_until: Option<DateTime<Utc>>,
    pub circuit_reason: Option<String>,
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub status_text: String,
}

/// Lists the registry, workers first, by name.
pub async fn workers_list(
    client: &impl GenericClient,
    online_threshold: Duration,
) -> Result<Vec<WorkerRow>> {
    let rows = client
        .query(
            "SELECT jr_name, kind, host, pid, instance_id, providers, capacity, current_load, \
                    is_online, \
                    is_online AND last_seen > now() - $1::int8 * interval '1 millisecond', \
                    status, run_id, started_at, last_seen, \
                    extract(epoch FROM now() - last_seen)::float8, consecutive_failures, \
                    CASE WHEN circuit_open_until > now() THEN circuit_open_until END, \
                    circuit_reason, tasks_completed, tasks_failed, status_text \
             FROM jr_status ORDER BY kind DESC, jr_name",
            &[&duration_ms(online_threshold)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| WorkerRow {
            jr_name: r.get(0),
            kind: r.get(1),
            host: r.get(2),
            pid: r.get(3),
            instance_id: r.get(4),
            providers: r.get(5),
            capacity: r.get(6),
            current_load: r.get(7),
            is_online: r.get(8),
            alive: r.get(9),
            status: r.get(10),
            run_id: r.get(11),
            started_at: r.get(12),
            last_seen: r.get(13),
            last_seen_age_s: r.get(14),
            consecutive_failures: r.get(15),
            circuit_open_until: r.get(16),
            circuit_reason: r.get(17),
            tasks_completed: r.get(18),
            tasks_failed: r.get(19),
            status_text: r.get(20),
        })
        .collect())
}

/// The fleet at a glance, for `jrq status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WorkerSummary {
    /// Workers alive (online and heartbeating) with at least one task.
    pub busy: i64,
    /// Workers alive with no task.
    pub idle: i64,
    /// Alive workers whose circuit breaker is open.
    pub circuit_open: i64,
    /// Registered workers not alive.
    pub offline: i64,
    /// Sum of alive workers' capacity and load.
    pub capacity: i64,
    pub load: i64,
    /// Assigners alive.
    pub assigners: i64,
}

impl WorkerSummary {
    /// Workers alive.
    pub fn online(&self) -> i64 {
        self.busy + self.idle
    }
}

/// Counts workers by liveness and load.
pub async fn workers_summary(
    client: &impl GenericClient,
    online_threshold: Duration,
) -> Result<WorkerSummary> {
    let row = client
        .query_one(
            "WITH w AS ( \
                 SELECT kind, capacity, current_load, circuit_open_until, \
                        is_online AND last_seen > now() - $1::int8 * interval '1 millisecond' \
                            AS alive \
                 FROM jr_status) \
             SELECT \
               count(*) FILTER (WHERE kind = 'worker' AND alive AND current_load > 0), \
               count(*) FILTER (WHERE kind = 'worker' AND alive AND current_load <= 0), \
               count(*) FILTER (WHERE kind = 'worker' AND alive AND circuit_open_until > now()), \
               count(*) FILTER (WHERE kind = 'worker' AND NOT alive), \
               coalesce(sum(capacity) FILTER (WHERE kind = 'worker' AND alive), 0)::int8, \
               coalesce(sum(current_load) FILTER (WHERE kind = 'worker' AND alive), 0)::int8, \
               count(*) FILTER (WHERE kind = 'assigner' AND alive) \
             FROM w",
            &[&duration_ms(online_threshold)],
        )
        .await?;
    Ok(WorkerSummary {
        busy: row.get(0),
        idle: row.get(1),
        circuit_open: row.get(2),
        offline: row.get(3),
        capacity: row.get(4),
        load: row.get(5),
        assigners: row.get(6),
    })
}
