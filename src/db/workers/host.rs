//! The registry as the health monitor and the stale cleanup read it: who went silent,
//! which rows are lost, which workers a host runs, who holds a name.

use std::time::Duration;

use crate::db::Sql;
use serde::Serialize;
use uuid::Uuid;

use crate::db::tasks::duration_ms;
use crate::error::Result;

/// A registry row the health monitor marked offline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkedDead {
    pub name: String,
    pub kind: String,
    pub host: String,
    pub silent_s: f64,
}

/// Marks `lost` (offline, to be restarted by their host's monitor) the workers and
/// assigners that are online but silent for longer than `dead_after`.
pub async fn workers_mark_dead(client: &impl Sql, dead_after: Duration) -> Result<Vec<MarkedDead>> {
    let rows = client
        .rows(
            "UPDATE jr_status SET is_online = false, status = 'lost', current_load = 0, \
                 status_text = 'marked offline by the health monitor: ' || coalesce( \
                     CASE WHEN last_seen > now() THEN 'its heartbeat is in the future' END, \
                     'silent for ' || round(extract(epoch FROM now() - last_seen))::int8 || 's', \
                     'no heartbeat ever'), \
                 updated_at = now() \
             WHERE is_online AND (last_seen IS NULL OR NOT last_seen BETWEEN \
                 now() - $1::int8 * interval '1 millisecond' AND now() + interval '1 minute') \
             RETURNING jr_name, kind, host, \
                 coalesce(greatest(extract(epoch FROM now() - last_seen)::float8, 0), 0)",
            &[&duration_ms(dead_after)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| MarkedDead {
            name: r.get(0),
            kind: r.get(1),
            host: r.get(2),
            silent_s: r.get(3),
        })
        .collect())
}

/// A `lost` registry row of this host, taken over by its health monitor.
#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    pub name: String,
    pub kind: String,
    /// Why its unit is not restarted; `None`: restart it.
    pub leave: Option<String>,
}

/// Takes over the `lost` rows of `host` (marks them `offline`) and says which to restart:
/// those that ran under systemd and have a reason to live (no run, or a run still active).
/// A worker started by hand, or one whose run is over, is not brought back as a unit.
pub async fn workers_take_lost(client: &impl Sql, host: &str) -> Result<Vec<Lost>> {
    let rows = client
        .rows(
            "UPDATE jr_status s SET status = 'offline', updated_at = now() \
             WHERE s.status = 'lost' AND NOT s.is_online AND s.host = $1 \
             RETURNING s.jr_name, s.kind, \
                 CASE WHEN coalesce(s.invocation_id, '') = '' \
                          THEN 'it did not run under systemd' \
                      WHEN s.run_id IS NOT NULL AND NOT EXISTS \
                          (SELECT 1 FROM jr_runs r WHERE r.id = s.run_id AND r.status = 'active') \
                          THEN 'its run is over' \
                 END",
            &[&host],
        )
        .await?;
    let mut lost: Vec<Lost> = rows
        .iter()
        .map(|r| Lost {
            name: r.get(0),
            kind: r.get(1),
            leave: r.get(2),
        })
        .collect();
    lost.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(lost)
}

/// Registry rows of `kind` on `host`.
pub async fn workers_on_host(client: &impl Sql, kind: &str, host: &str) -> Result<Vec<String>> {
    Ok(client
        .rows(
            "SELECT jr_name FROM jr_status WHERE kind = $1 AND host = $2 ORDER BY jr_name",
            &[&kind, &host],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A worker registered on a host: its name, process and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostWorker {
    pub name: String,
    pub pid: i32,
    pub run_id: Option<Uuid>,
}

/// The workers registered on `host` with a process id (live or not).
pub async fn workers_registered_on_host(client: &impl Sql, host: &str) -> Result<Vec<HostWorker>> {
    Ok(client
        .rows(
            "SELECT jr_name, pid, run_id FROM jr_status \
             WHERE kind = 'worker' AND host = $1 AND pid IS NOT NULL ORDER BY jr_name",
            &[&host],
        )
        .await?
        .iter()
        .map(|r| HostWorker {
            name: r.get(0),
            pid: r.get(1),
            run_id: r.get(2),
        })
        .collect())
}

/// Who a worker name is registered to, as the stale cleanup judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameHolder {
    pub host: String,
    pub pid: Option<i32>,
    pub is_online: bool,
    /// Heartbeat within the last minute (`None`: never heartbeated).
    pub fresh: Option<bool>,
}

/// The registry row of worker `name`, if any.
pub async fn workers_holder(client: &impl Sql, name: &str) -> Result<Option<NameHolder>> {
    Ok(client
        .row_opt(
            "SELECT host, pid, is_online, \
                 extract(epoch FROM now() - last_seen)::float8 < 60 \
             FROM jr_status WHERE jr_name = $1 AND kind = 'worker'",
            &[&name],
        )
        .await?
        .map(|r| NameHolder {
            host: r.get(0),
            pid: r.get(1),
            is_online: r.get(2),
            fresh: r.get(3),
        }))
}

/// A worker registered as online on a host: its name, process and boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineWorker {
    pub name: String,
    pub pid: Option<i32>,
    pub boot_id: Option<String>,
}

/// The workers registered as online on `host`, by name.
pub async fn workers_online_on_host(client: &impl Sql, host: &str) -> Result<Vec<OnlineWorker>> {
    Ok(client
        .rows(
            "SELECT jr_name, pid, boot_id FROM jr_status \
             WHERE kind = 'worker' AND host = $1 AND is_online ORDER BY jr_name",
            &[&host],
        )
        .await?
        .iter()
        .map(|r| OnlineWorker {
            name: r.get(0),
            pid: r.get(1),
            boot_id: r.get(2),
        })
        .collect())
}

/// Marks `lost` the online worker `name` of `host` whose registry row still names process
/// `pid` (it has not been taken over meanwhile), noting `why`; the row stays locked for
/// the rest of the transaction. Whether it was marked. This host's health monitor then
/// takes the row over (`workers_take_lost`).
pub async fn workers_mark_lost(
    client: &impl Sql,
    name: &str,
    host: &str,
    pid: Option<i32>,
    why: &str,
) -> Result<bool> {
    let n = client
        .exec(
            "UPDATE jr_status SET is_online = false, status = 'lost', current_load = 0, \
                 status_text = $4, updated_at = now() \
             WHERE jr_name = $1 AND host = $2 AND pid IS NOT DISTINCT FROM $3 AND is_online",
            &[&name, &host, &pid, &why],
        )
        .await?;
    Ok(n == 1)
}

/// Notes on a registry row what the health monitor did (shown by `jrq workers --json`).
pub async fn workers_note(client: &impl Sql, name: &str, text: &str) -> Result<()> {
    client
        .exec(
            "UPDATE jr_status SET status_text = $2, updated_at = now() WHERE jr_name = $1",
            &[&name, &text],
        )
        .await?;
    Ok(())
}

/// The longest silence among workers registered as online, in seconds.
pub async fn workers_longest_silence(client: &impl Sql) -> Result<Option<f64>> {
    Ok(client
        .row(
            "SELECT max(extract(epoch FROM now() - last_seen))::float8 FROM jr_status \
             WHERE kind = 'worker' AND is_online",
            &[],
        )
        .await?
        .get(0))
}
