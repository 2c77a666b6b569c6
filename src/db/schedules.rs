//! SQL on `jr_schedules` (migrations/V17): `jrq schedules`, and the assigners' pass that
//! enqueues the ticks due.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::db::{Sql, CHANNEL_SCHEDULES};
use crate::error::{Error, Result};
use crate::schedule::{self, Cadence, CatchUp};

/// What `schedules_add` stores.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub name: String,
    pub cron: Option<String>,
    pub every: Option<std::time::Duration>,
    pub timezone: String,
    /// A task template ([`crate::task::NewTask::to_template`]).
    pub template: serde_json::Value,
    pub catch_up: CatchUp,
    pub unique_while_running: bool,
    pub paused: bool,
}

impl NewSchedule {
    pub fn cadence(&self) -> Result<Cadence> {
        cadence_of(
            self.cron.as_deref(),
            self.every.map(|d| d.as_millis() as i64),
            &self.timezone,
        )
        .map_err(Error::usage)
    }
}

/// The cadence a row stores.
pub fn cadence_of(
    cron: Option<&str>,
    every_ms: Option<i64>,
    timezone: &str,
) -> std::result::Result<Cadence, String> {
    match (cron, every_ms) {
        (Some(c), _) => Cadence::cron(c, timezone),
        (None, Some(ms)) => Cadence::every(std::time::Duration::from_millis(ms.max(0) as u64)),
        (None, None) => Err("the schedule has no cadence".into()),
    }
}

/// One schedule as `jrq schedules list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleRow {
    pub name: String,
    pub cron: Option<String>,
    /// The interval of `--every`, in milliseconds.
    pub every_ms: Option<i64>,
    pub timezone: String,
    pub title: String,
    pub template: serde_json::Value,
    pub catch_up: String,
    pub unique_while_running: bool,
    pub paused: bool,
    pub next_tick: DateTime<Utc>,
    /// The tick after `next_tick` (computed, not stored).
    pub then: Option<DateTime<Utc>>,
    pub last_tick: Option<DateTime<Utc>>,
    pub last_task: Option<i64>,
    pub last_task_status: Option<String>,
    pub enqueued_total: i64,
    pub skipped_total: i64,
    pub missed_total: i64,
    pub last_error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl ScheduleRow {
    /// "every 10m" or "cron '0 9 * * 1-5' Europe/Berlin".
    pub fn cadence_text(&self) -> String {
        match cadence_of(self.cron.as_deref(), self.every_ms, &self.timezone) {
            // As the operator wrote it (croner spells aliases out).
            Ok(_) if self.cron.is_some() => format!(
                "cron '{}' {}",
                self.cron.as_deref().unwrap_or_default(),
                self.timezone
            ),
            Ok(c) => c.to_string(),
            Err(e) => format!("invalid: {e}"),
        }
    }
}

const SCHEDULES_SQL: &str = "SELECT s.name, s.cron, (extract(epoch FROM s.every) * 1000)::int8, \
        s.timezone, s.template->>'title', s.template, s.catch_up, s.unique_while_running, \
        s.paused, s.next_tick, s.last_tick, s.last_task, t.status, s.enqueued_total, \
        s.skipped_total, s.missed_total, s.last_error, s.created_by, s.created_at \
    FROM jr_schedules s LEFT JOIN jr_work_queue t ON t.id = s.last_task \
    WHERE $1::text IS NULL OR s.name = $1 ORDER BY s.name";

fn schedule_from_row(r: &tokio_postgres::Row) -> ScheduleRow {
    let mut s = ScheduleRow {
        name: r.get(0),
        cron: r.get(1),
        every_ms: r.get(2),
        timezone: r.get(3),
        title: r.get::<_, Option<String>>(4).unwrap_or_default(),
        template: r.get(5),
        catch_up: r.get(6),
        unique_while_running: r.get(7),
        paused: r.get(8),
        next_tick: r.get(9),
        then: None,
        last_tick: r.get(10),
        last_task: r.get(11),
        last_task_status: r.get(12),
        enqueued_total: r.get(13),
        skipped_total: r.get(14),
        missed_total: r.get(15),
        last_error: r.get(16),
        created_by: r.get(17),
        created_at: r.get(18),
    };
    if let Ok(c) = cadence_of(s.cron.as_deref(), s.every_ms, &s.timezone) {
        s.then = c.next_after(s.next_tick);
    }
    s
}

/// Every schedule, by name.
pub async fn schedules_list(client: &impl Sql) -> Result<Vec<ScheduleRow>> {
    Ok(client
        .rows(SCHEDULES_SQL, &[&None::<&str>])
        .await?
        .iter()
        .map(schedule_from_row)
        .collect())
}

/// One schedule, or a clear "no schedule" error.
pub async fn schedules_get(client: &impl Sql, name: &str) -> Result<ScheduleRow> {
    client
        .row_opt(SCHEDULES_SQL, &[&Some(name)])
        .await?
        .as_ref()
        .map(schedule_from_row)
        .ok_or_else(|| no_such_schedule(name))
}

fn no_such_schedule(name: &str) -> Error {
    Error::NotFound(format!(
        "there is no schedule '{}': `jrq schedules list` shows them",
        crate::text::for_terminal(name, false)
    ))
}

/// The database's clock.
pub async fn db_now(client: &impl Sql) -> Result<DateTime<Utc>> {
    Ok(client.row("SELECT now()", &[]).await?.get(0))
}

/// Adds a schedule (or with `replace`, redefines one, keeping its counters); its first
/// tick is the cadence's next after now. Wakes the assigners.
pub async fn schedules_add(client: &impl Sql, s: &NewSchedule, replace: bool) -> Result<()> {
    let cadence = s.cadence()?;
    let now = db_now(client).await?;
    let next = cadence.next_after(now).ok_or_else(|| {
        Error::usage(format!(
            "{cadence} never fires after now: check the expression"
        ))
    })?;
    let every_ms = s.every.map(|d| d.as_millis() as i64);
    let sql = if replace {
        "INSERT INTO jr_schedules (name, cron, every, timezone, template, catch_up, \
             unique_while_running, paused, next_tick) \
         VALUES ($1, $2, $3::int8 * interval '1 millisecond', $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, every = EXCLUDED.every, \
             timezone = EXCLUDED.timezone, template = EXCLUDED.template, \
             catch_up = EXCLUDED.catch_up, \
             unique_while_running = EXCLUDED.unique_while_running, \
             paused = EXCLUDED.paused, next_tick = EXCLUDED.next_tick, last_error = NULL, \
             updated_at = now()"
    } else {
        "INSERT INTO jr_schedules (name, cron, every, timezone, template, catch_up, \
             unique_while_running, paused, next_tick) \
         VALUES ($1, $2, $3::int8 * interval '1 millisecond', $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (name) DO NOTHING"
    };
    let n = client
        .exec(
            sql,
            &[
                &s.name,
                &s.cron,
                &every_ms,
                &s.timezone,
                &s.template,
                &s.catch_up.as_str(),
                &s.unique_while_running,
                &s.paused,
                &next,
            ],
        )
        .await?;
    if n == 0 {
        return Err(Error::Conflict(format!(
            "schedule '{}' exists already: `jrq schedules remove` it first, or give --replace",
            s.name
        )));
    }
    notify(client, &s.name).await
}

async fn notify(client: &impl Sql, name: &str) -> Result<()> {
    client
        .exec("SELECT pg_notify($1, $2)", &[&CHANNEL_SCHEDULES, &name])
        .await?;
    Ok(())
}

/// Pauses a schedule, or resumes it from the cadence's next tick after now (the ticks
/// of the pause are not caught up). Returns whether it changed.
pub async fn schedules_set_paused(client: &impl Sql, name: &str, paused: bool) -> Result<bool> {
    let s = schedules_get(client, name).await?;
    if s.paused == paused {
        return Ok(false);
    }
    let next = if paused {
        s.next_tick
    } else {
        let cadence =
            cadence_of(s.cron.as_deref(), s.every_ms, &s.timezone).map_err(Error::usage)?;
        let now = db_now(client).await?;
        cadence.next_after(now).unwrap_or(s.next_tick)
    };
    client
        .exec(
            "UPDATE jr_schedules SET paused = $2, next_tick = $3, updated_at = now() \
             WHERE name = $1",
            &[&name, &paused, &next],
        )
        .await?;
    notify(client, name).await?;
    Ok(true)
}

/// Removes a schedule (its tasks stay).
pub async fn schedules_remove(client: &impl Sql, name: &str) -> Result<()> {
    let n = client
        .exec("DELETE FROM jr_schedules WHERE name = $1", &[&name])
        .await?;
    if n == 0 {
        return Err(no_such_schedule(name));
    }
    Ok(())
}

/// What `jrq schedules run-now` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunNow {
    Enqueued(i64),
    /// `--unique-while-running` and this task of the schedule is unfinished.
    StillRunning(i64),
}

/// Enqueues a schedule's task now (its tick: now), outside its cadence; with
/// `--unique-while-running`, not while its previous task is unfinished unless `force`.
pub async fn schedules_run_now(client: &impl Sql, name: &str, force: bool) -> Result<RunNow> {
    let row = client
        .row_opt(
            "SELECT s.unique_while_running, s.last_task, \
                 t.status IN ('waiting', 'awaiting_approval', 'pending', 'assigned', \
                              'in_progress'), now() \
             FROM jr_schedules s LEFT JOIN jr_work_queue t ON t.id = s.last_task \
             WHERE s.name = $1 FOR UPDATE OF s",
            &[&name],
        )
        .await?
        .ok_or_else(|| no_such_schedule(name))?;
    let unique: bool = row.get(0);
    let last: Option<i64> = row.get(1);
    let running: Option<bool> = row.get(2);
    let now: DateTime<Utc> = row.get(3);
    if let (true, Some(id), Some(true), false) = (unique, last, running, force) {
        return Ok(RunNow::StillRunning(id));
    }
    let id: Option<i64> = client
        .row(
            "SELECT jrq_schedules_enqueue($1, $2, $3)",
            &[&name, &now, &schedule::tick_text(now)],
        )
        .await?
        .get(0);
    let id = id.ok_or_else(|| {
        Error::Conflict(format!(
            "a task of schedule '{name}' for this instant exists already: try again"
        ))
    })?;
    client
        .exec(
            "UPDATE jr_schedules SET last_task = $2, enqueued_total = enqueued_total + 1, \
                 updated_at = now() WHERE name = $1",
            &[&name, &id],
        )
        .await?;
    Ok(RunNow::Enqueued(id))
}

/// What one scheduling pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassOutcome {
    /// Tasks enqueued.
    pub enqueued: u64,
    /// Ticks skipped because the schedule's previous task was unfinished.
    pub skipped: u64,
    /// Ticks missed (the catch-up policy left them out).
    pub missed: u64,
    /// Schedules whose tick could not be enqueued: (name, why).
    pub failed: Vec<(String, String)>,
    /// Seconds until the next tick of an active schedule (None: no schedule).
    pub next_in_s: Option<f64>,
    /// A schedule had more ticks due than one pass handles: go again at once.
    pub more: bool,
}

/// Schedules one pass looks at.
const PASS_BATCH: i64 = 100;

/// The assigners' scheduling pass: in one transaction, locks the due schedules (those
/// another assigner's pass holds are skipped: it handles them), enqueues the ticks
/// their catch-up policy keeps, and moves each past what it handled. A schedule whose
/// task cannot be enqueued (a template naming a run since deleted, say) is moved on with
/// the error recorded, and does not hold up the others.
pub async fn schedules_pass(client: &mut Client) -> Result<PassOutcome> {
    let mut out = PassOutcome::default();
    let mut txn = client.transaction().await?;
    let rows = txn
        .rows(
            "SELECT s.name, s.cron, (extract(epoch FROM s.every) * 1000)::int8, s.timezone, \
                 s.catch_up, s.unique_while_running, s.next_tick, \
                 coalesce(t.status IN ('waiting', 'awaiting_approval', 'pending', \
                     'assigned', 'in_progress'), false), now() \
             FROM jr_schedules s LEFT JOIN jr_work_queue t ON t.id = s.last_task \
             WHERE NOT s.paused AND s.next_tick <= now() \
             ORDER BY s.next_tick LIMIT $1 \
             FOR UPDATE OF s SKIP LOCKED",
            &[&PASS_BATCH],
        )
        .await?;
    out.more = rows.len() as i64 >= PASS_BATCH;
    for r in &rows {
        let name: String = r.get(0);
        let first: DateTime<Utc> = r.get(6);
        let running: bool = r.get(7);
        let now: DateTime<Utc> = r.get(8);
        let policy: CatchUp = r.get::<_, String>(4).parse().unwrap_or_default();
        let cadence = match cadence_of(r.get(1), r.get(2), &r.get::<_, String>(3)) {
            Ok(c) => c,
            Err(e) => {
                // Stored by hand, or by a later version: park it a minute, say why.
                txn.exec(
                    "UPDATE jr_schedules SET next_tick = now() + interval '1 minute', \
                         last_error = $2, updated_at = now() WHERE name = $1",
                    &[&name, &e],
                )
                .await?;
                out.failed.push((name, e));
                continue;
            }
        };
        let mut plan = schedule::plan(&cadence, first, now, policy);
        let mut skipped = 0u64;
        if r.get::<_, bool>(5) {
            // One at a time: not while the last one runs; of several due, the latest.
            if running {
                skipped = plan.enqueue.len() as u64;
                plan.enqueue.clear();
            } else if plan.enqueue.len() > 1 {
                skipped = plan.enqueue.len() as u64 - 1;
                plan.enqueue.drain(..plan.enqueue.len() - 1);
            }
        }
        if plan.next.is_some_and(|n| n <= now) {
            out.more = true;
        }
        // A savepoint per schedule: a failed enqueue rolls back only its own.
        let sp = txn.savepoint("schedule").await?;
        let mut last_task = None;
        let mut error = None;
        let mut added = 0u64;
        for &tick in &plan.enqueue {
            match sp
                .row(
                    "SELECT jrq_schedules_enqueue($1, $2, $3)",
                    &[&name, &tick, &schedule::tick_text(tick)],
                )
                .await
            {
                Ok(row) => {
                    if let Some(id) = row.get::<_, Option<i64>>(0) {
                        last_task = Some(id);
                        added += 1;
                    }
                }
                Err(e) => {
                    error = Some(Error::from_pg(&e).to_string());
                    break;
                }
            }
        }
        let enqueued = if error.is_some() {
            sp.rollback().await?;
            last_task = None;
            0
        } else {
            sp.commit().await?;
            added
        };
        // A cadence that never fires again parks the schedule far away, paused.
        let (next, paused) = match plan.next {
            Some(n) => (n, false),
            None => (plan.last, true),
        };
        let missed = plan.missed
            + if error.is_some() {
                plan.enqueue.len() as u64
            } else {
                0
            };
        txn.exec(
            "UPDATE jr_schedules SET next_tick = $2, last_tick = $3, \
                 last_task = coalesce($4, last_task), \
                 enqueued_total = enqueued_total + $5, skipped_total = skipped_total + $6, \
                 missed_total = missed_total + $7, last_error = $8, \
                 paused = paused OR $9, updated_at = now() \
             WHERE name = $1",
            &[
                &name,
                &next,
                &plan.last,
                &last_task,
                &(enqueued as i64),
                &(skipped as i64),
                &(missed as i64),
                &error,
                &paused,
            ],
        )
        .await?;
        out.enqueued += enqueued;
        out.skipped += skipped;
        out.missed += missed;
        if let Some(e) = error {
            out.failed.push((name, e));
        }
    }
    let next: Option<f64> = txn
        .row(
            "SELECT extract(epoch FROM min(next_tick) - clock_timestamp())::float8 \
             FROM jr_schedules WHERE NOT paused",
            &[],
        )
        .await?
        .get(0);
    txn.commit().await?;
    out.next_in_s = next;
    Ok(out)
}

/// Schedules counted for `jrq status` and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScheduleSummary {
    pub active: i64,
    pub paused: i64,
    /// Seconds until the next tick of an active schedule.
    pub next_tick_in_s: Option<f64>,
    /// The soonest active schedule.
    pub next_name: Option<String>,
    /// Schedules whose last pass could not enqueue their task.
    pub failing: i64,
    /// Tasks the schedules have enqueued, ticks skipped (previous task unfinished) and
    /// missed (the catch-up policy), over their lifetime.
    pub enqueued_total: i64,
    pub skipped_total: i64,
    pub missed_total: i64,
}

/// The schedules at a glance.
pub async fn schedules_summary(client: &impl Sql) -> Result<ScheduleSummary> {
    let r = client
        .row(
            "SELECT count(*) FILTER (WHERE NOT paused), count(*) FILTER (WHERE paused), \
                 extract(epoch FROM min(next_tick) FILTER (WHERE NOT paused) - now())::float8, \
                 (SELECT name FROM jr_schedules WHERE NOT paused \
                  ORDER BY next_tick, name LIMIT 1), \
                 count(*) FILTER (WHERE last_error IS NOT NULL), \
                 coalesce(sum(enqueued_total), 0)::int8, coalesce(sum(skipped_total), 0)::int8, \
                 coalesce(sum(missed_total), 0)::int8 \
             FROM jr_schedules",
            &[],
        )
        .await?;
    Ok(ScheduleSummary {
        active: r.get(0),
        paused: r.get(1),
        next_tick_in_s: r.get(2),
        next_name: r.get(3),
        failing: r.get(4),
        enqueued_total: r.get(5),
        skipped_total: r.get(6),
        missed_total: r.get(7),
    })
}
