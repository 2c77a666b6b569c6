//! SQL on `jr_providers` (fleet-wide limits per provider) and `jr_pauses` (scopes that get
//! no new assignments): the CLI's writes, and what an assigner's round reads.

use std::collections::HashMap;

use crate::db::Sql;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::db::Statements;
use crate::error::{Error, Result};
use crate::task::TaskStatus;

/// A provider's limits as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderRow {
    pub name: String,
    pub max_running: Option<i32>,
    pub max_starts_per_minute: Option<i32>,
    pub fallback: Vec<String>,
    /// Its daily budget in US dollars (UTC days).
    pub max_cost_usd_per_day: Option<f64>,
    /// What its tasks reported spending today (UTC), in US dollars.
    pub cost_today_usd: f64,
    /// Tasks assigned + in progress under it now (its own, and others' routed to it by
    /// fallback).
    pub running: i64,
    /// Its tasks pending now.
    pub pending: i64,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// What `jrq providers set` changes: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProviderChange<'a> {
    /// `Some(None)` removes the limit.
    pub max_running: Option<Option<i32>>,
    pub max_starts_per_minute: Option<Option<i32>>,
    pub fallback: Option<&'a [String]>,
    pub max_cost_usd_per_day: Option<Option<f64>>,
}

/// Creates or changes a provider's row; returns it.
pub async fn providers_set(
    client: &impl Sql,
    name: &str,
    change: &ProviderChange<'_>,
    actor: &str,
) -> Result<ProviderRow> {
    let (set_running, running) = split(change.max_running);
    let (set_starts, starts) = split(change.max_starts_per_minute);
    let fallback: Option<Vec<String>> = change.fallback.map(<[String]>::to_vec);
    let (set_budget, budget) = match change.max_cost_usd_per_day {
        Some(x) => (true, x),
        None => (false, None),
    };
    // A pause the budget set ends when the new budget is above today's cost.
    client
        .exec(
            "WITH p AS ( \
             INSERT INTO jr_providers AS p (name, max_running, max_starts_per_minute, \
                 fallback, tokens, updated_by, max_cost_usd_per_day) \
             VALUES ($1, $3, $5, coalesce($6::text[], '{}'), coalesce($5, 0), $7, $9) \
             ON CONFLICT (name) DO UPDATE SET \
                 max_running = CASE WHEN $2 THEN $3 ELSE p.max_running END, \
                 max_starts_per_minute = CASE WHEN $4 THEN $5 \
                     ELSE p.max_starts_per_minute END, \
                 fallback = coalesce($6::text[], p.fallback), \
                 max_cost_usd_per_day = CASE WHEN $8 THEN $9 \
                     ELSE p.max_cost_usd_per_day END, \
                 updated_by = $7, updated_at = now() \
             RETURNING p.name, p.max_cost_usd_per_day, \
                 CASE WHEN p.cost_day = (now() AT TIME ZONE 'UTC')::date \
                     THEN p.cost_day_microusd ELSE 0 END AS today) \
             DELETE FROM jr_pauses x USING p \
             WHERE $8 AND x.scope = 'provider' AND x.target = p.name AND x.set_by = 'budget' \
               AND (p.max_cost_usd_per_day IS NULL OR p.today < p.max_cost_usd_per_day * 1e6)",
            &[
                &name,
                &set_running,
                &running,
                &set_starts,
                &starts,
                &fallback,
                &actor,
                &set_budget,
                &budget,
            ],
        )
        .await
        .map_err(|e| match crate::error::sqlstate(&e) {
            Some("23514") => Error::usage(format!(
                "provider '{name}' cannot be stored: {}",
                crate::error::describe_pg_error(&e)
            )),
            _ => Error::from_pg(&e),
        })?;
    providers_list(client)
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::NotFound(format!("provider '{name}' vanished meanwhile")))
}

fn split(v: Option<Option<i32>>) -> (bool, Option<i32>) {
    match v {
        Some(x) => (true, x),
        None => (false, None),
    }
}

/// Removes a provider's row (its limits); whether there was one.
pub async fn providers_unset(client: &impl Sql, name: &str) -> Result<bool> {
    Ok(client
        .exec("DELETE FROM jr_providers WHERE name = $1", &[&name])
        .await?
        > 0)
}

/// Every provider with a row, and every provider a task or a worker names, with their
/// counts (a provider without a row has no limits).
pub async fn providers_list(client: &impl Sql) -> Result<Vec<ProviderRow>> {
    let rows = client
        .rows(
            "WITH names AS ( \
                 SELECT name FROM jr_providers \
                 UNION SELECT DISTINCT provider FROM jr_work_queue \
                     WHERE provider <> '' AND status IN ('pending', 'assigned', 'in_progress') \
                 UNION SELECT DISTINCT unnest(providers) FROM jr_status WHERE kind = 'worker'), \
             counts AS ( \
                 SELECT CASE WHEN status = 'pending' THEN provider \
                         ELSE coalesce(routed_provider, provider) END AS provider, \
                     count(*) FILTER (WHERE status IN ('assigned', 'in_progress')) AS running, \
                     count(*) FILTER (WHERE status = 'pending') AS pending \
                 FROM jr_work_queue WHERE status IN ('pending', 'assigned', 'in_progress') \
                 GROUP BY 1) \
             SELECT n.name, p.max_running, p.max_starts_per_minute, \
                 coalesce(p.fallback, '{}'), coalesce(c.running, 0), coalesce(c.pending, 0), \
                 coalesce(p.updated_by, ''), coalesce(p.updated_at, now()), \
                 p.max_cost_usd_per_day, \
                 CASE WHEN p.cost_day = (now() AT TIME ZONE 'UTC')::date \
                     THEN p.cost_day_microusd ELSE 0 END \
             FROM names n LEFT JOIN jr_providers p ON p.name = n.name \
                 LEFT JOIN counts c ON c.provider = n.name \
             WHERE n.name <> '' ORDER BY n.name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ProviderRow {
            name: r.get(0),
            max_running: r.get(1),
            max_starts_per_minute: r.get(2),
            fallback: r.get(3),
            running: r.get(4),
            pending: r.get(5),
            updated_by: r.get(6),
            updated_at: r.get(7),
            max_cost_usd_per_day: r.get(8),
            cost_today_usd: r.get::<_, Option<i64>>(9).unwrap_or(0) as f64 / 1e6,
        })
        .collect())
}

/// A limited provider as a routing round sees it, its row locked for the round.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub name: String,
    /// Whether this round holds its row. Another assigner routing it now (its row
    /// locked) gives it no room in this round: rounds never wait for each other.
    pub locked: bool,
    pub max_running: Option<i32>,
    pub running: i64,
    pub max_starts_per_minute: Option<i32>,
    /// Starts the token bucket allows now (whole tokens).
    pub starts_allowed: Option<i64>,
    /// Tokens after the refill, before this round's starts.
    pub tokens: f64,
}

impl Budget {
    /// How many more of its tasks this round may assign.
    pub fn room(&self) -> i64 {
        if !self.locked {
            return 0;
        }
        let running = self
            .max_running
            .map_or(i64::MAX, |m| (i64::from(m) - self.running).max(0));
        running.min(self.starts_allowed.unwrap_or(i64::MAX))
    }

    /// Why it holds its tasks back, when it does: "at its limit 8/8", "at its start rate
    /// 30/min".
    pub fn holding(&self) -> Option<String> {
        if !self.locked {
            return None;
        }
        if let Some(m) = self.max_running {
            if self.running >= i64::from(m) {
                return Some(format!("at its limit {}/{m}", self.running));
            }
        }
        match (self.max_starts_per_minute, self.starts_allowed) {
            (Some(n), Some(0)) => Some(format!("at its start rate {n}/min")),
            _ => None,
        }
    }
}

/// The limited providers among `providers`, their rows locked for the round where no
/// other round holds them, and their budgets: running counts, and the token bucket
/// refilled to now.
pub async fn providers_lock_budgets(
    client: &impl Sql,
    stmts: &Statements,
    providers: &[String],
) -> Result<Vec<Budget>> {
    let rows = stmts.rows(client, LOCK_BUDGETS_SQL, &[&providers]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let tokens: Option<f64> = r.get(5);
            Budget {
                name: r.get(0),
                locked: r.get(1),
                max_running: r.get(2),
                running: r.get::<_, Option<i64>>(3).unwrap_or(0),
                max_starts_per_minute: r.get(4),
                starts_allowed: tokens.map(|t| t.floor().max(0.0) as i64),
                tokens: tokens.unwrap_or(0.0),
            }
        })
        .collect())
}

/// Locks the limited providers' rows (skipping those another round holds: they get no
/// room this round, and rounds never wait for each other), and reads their budgets. The
/// running count comes from `jrq_provider_active` (V9), a VOLATILE function: it takes its
/// own snapshot after the row is locked, so it sees what the assigner that held the lock
/// before committed (the statement's own snapshot predates the wait). The token bucket
/// holds two seconds' worth of starts, at least one: a burst the default poll interval
/// refills, so that starts spread over the minute.
const LOCK_BUDGETS_SQL: &str = "WITH limited AS ( \
         SELECT name FROM jr_providers \
         WHERE name = ANY($1) \
           AND (max_running IS NOT NULL OR max_starts_per_minute IS NOT NULL)), \
     p AS MATERIALIZED ( \
         SELECT name, max_running, max_starts_per_minute, tokens, tokens_at \
         FROM jr_providers WHERE name IN (SELECT name FROM limited) \
         ORDER BY name FOR UPDATE SKIP LOCKED) \
     SELECT l.name, p.name IS NOT NULL, p.max_running, \
         CASE WHEN p.name IS NOT NULL THEN jrq_provider_active(p.name) END, \
         p.max_starts_per_minute, \
         CASE WHEN p.max_starts_per_minute IS NOT NULL THEN \
             least(greatest(1, ceil(p.max_starts_per_minute / 30.0)), \
                   p.tokens + extract(epoch FROM clock_timestamp() - p.tokens_at)::float8 \
                       * p.max_starts_per_minute / 60.0) END \
     FROM limited l LEFT JOIN p ON p.name = l.name ORDER BY l.name";

/// A paused scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// `all`, `provider`, `run` or `worker`.
    pub scope: String,
    /// The provider, run id or worker name; empty for `all`.
    pub target: String,
    /// `None`: until `jrq resume`.
    pub until: Option<DateTime<Utc>>,
    pub reason: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

impl Pause {
    /// "provider 'claude'", "run 3f…", "worker 'w1'", "everything".
    pub fn what(&self) -> String {
        match self.scope.as_str() {
            "all" => "everything".into(),
            "run" => format!("run {}", self.target),
            s => format!("{s} '{}'", self.target),
        }
    }

    /// "paused by alice: maintenance", "paused until 15:00 UTC (rate-limited by …)".
    pub fn describe(&self) -> String {
        let mut s = match self.until {
            Some(t) => format!(
                "paused until {}",
                crate::text::local_time(t, "%Y-%m-%d %H:%M:%S")
            ),
            None => "paused".to_string(),
        };
        if !self.set_by.is_empty() {
            s.push_str(&format!(" by {}", self.set_by));
        }
        if !self.reason.is_empty() {
            s.push_str(&format!(": {}", self.reason));
        }
        s
    }
}

/// The pauses in force now, by scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pauses {
    pub all: Option<Pause>,
    pub providers: HashMap<String, Pause>,
    pub runs: HashMap<Uuid, Pause>,
    pub workers: HashMap<String, Pause>,
    /// The fallback providers of each paused provider that has some (jr_providers).
    pub fallbacks: HashMap<String, Vec<String>>,
}

impl Pauses {
    pub fn is_empty(&self) -> bool {
        self.all.is_none()
            && self.providers.is_empty()
            && self.runs.is_empty()
            && self.workers.is_empty()
    }

    /// Every pause, for lists.
    pub fn iter(&self) -> impl Iterator<Item = &Pause> {
        self.all
            .iter()
            .chain(self.providers.values())
            .chain(self.runs.values())
            .chain(self.workers.values())
    }
}

/// The pauses in force now (a timed one that ran out is not).
pub async fn pauses_active(client: &impl Sql, stmts: &Statements) -> Result<Pauses> {
    let rows = stmts
        .rows(
            client,
            "SELECT p.scope, p.target, p.until, p.reason, p.set_by, p.set_at, \
                 coalesce(r.fallback, '{}') \
             FROM jr_pauses p \
                 LEFT JOIN jr_providers r ON p.scope = 'provider' AND r.name = p.target \
             WHERE p.until IS NULL OR p.until > now() ORDER BY p.scope, p.target",
            &[],
        )
        .await?;
    let mut out = Pauses::default();
    for r in rows {
        let p = Pause {
            scope: r.get(0),
            target: r.get(1),
            until: r.get(2),
            reason: r.get(3),
            set_by: r.get(4),
            set_at: r.get(5),
        };
        match p.scope.as_str() {
            "all" => out.all = Some(p),
            "provider" => {
                let fallback: Vec<String> = r.get(6);
                if !fallback.is_empty() {
                    out.fallbacks.insert(p.target.clone(), fallback);
                }
                out.providers.insert(p.target.clone(), p);
            }
            "run" => {
                // A target that is not a run id pauses nothing (the CLI checks it).
                if let Ok(id) = Uuid::parse_str(&p.target) {
                    out.runs.insert(id, p);
                }
            }
            _ => {
                out.workers.insert(p.target.clone(), p);
            }
        }
    }
    Ok(out)
}

/// Pauses a scope (again: the new reason and time replace the old).
pub async fn pauses_set(
    client: &impl Sql,
    scope: &str,
    target: &str,
    until: Option<DateTime<Utc>>,
    reason: &str,
    actor: &str,
) -> Result<()> {
    client
        .exec(
            "INSERT INTO jr_pauses (scope, target, until, reason, set_by) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (scope, target) DO UPDATE SET until = EXCLUDED.until, \
                 reason = EXCLUDED.reason, set_by = EXCLUDED.set_by, set_at = now()",
            &[&scope, &target, &until, &reason, &actor],
        )
        .await?;
    Ok(())
}

/// Ends a pause; whether there was one in force.
pub async fn pauses_clear(client: &impl Sql, scope: &str, target: &str) -> Result<bool> {
    Ok(client
        .row_opt(
            "DELETE FROM jr_pauses WHERE scope = $1 AND target = $2 \
             RETURNING until IS NULL OR until > now()",
            &[&scope, &target],
        )
        .await?
        .is_some_and(|r| r.get(0)))
}

/// Pauses the provider of each task whose attempt ended with
/// [`Finish::ProviderRefused`](crate::db::tasks::Finish::ProviderRefused), until the time
/// the attempt gives (fenced: only tasks this instance holds). Returns the providers paused
/// (or whose pause was extended) and until when.
pub async fn providers_refused(
    client: &impl Sql,
    worker: &str,
    instance: Uuid,
    done: &[crate::db::tasks::FinishedAttempt],
) -> Result<Vec<(String, DateTime<Utc>)>> {
    use crate::db::tasks::Finish;
    let mut ids = vec![];
    let mut attempts = vec![];
    let mut pause_ms = vec![];
    let mut whys = vec![];
    let now = Utc::now();
    for d in done {
        if let Finish::ProviderRefused { reason, until } = &d.finish {
            ids.push(d.task_id);
            attempts.push(d.attempt);
            // A length, not a time: the database's clock decides (and bounds it).
            pause_ms.push((*until - now).num_milliseconds().max(0));
            whys.push(reason.as_str());
        }
    }
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = client
        .rows(
            "SELECT provider, until FROM jrq_providers_refused($1, $2, $3, $4, $5, $6)",
            &[&worker, &instance, &ids, &attempts, &pause_ms, &whys],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Why a pending task waits on the governor, when it does: "waiting: provider 'claude' at
/// its limit 8/8", "waiting: run … paused by alice: …".
pub fn providers_waiting_reason(
    status: TaskStatus,
    provider: &str,
    fallback_ok: bool,
    run: Option<uuid::Uuid>,
    rows: &[ProviderRow],
    pauses: &Pauses,
) -> Option<String> {
    if status != TaskStatus::Pending {
        return None;
    }
    if let Some(p) = &pauses.all {
        return Some(format!("waiting: everything {}", p.describe()));
    }
    if let Some(p) = pauses.providers.get(provider) {
        let fallback = match pauses.fallbacks.get(provider) {
            Some(f) if fallback_ok => format!(
                "; it may go to {} meanwhile, when one of their workers is free",
                f.iter()
                    .map(|p| format!("'{p}'"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            _ => String::new(),
        };
        return Some(format!(
            "waiting: provider '{provider}' {}{fallback}",
            p.describe()
        ));
    }
    if let Some(p) = run.and_then(|r| pauses.runs.get(&r)) {
        return Some(format!("waiting: {} {}", p.what(), p.describe()));
    }
    let row = rows.iter().find(|r| r.name == provider)?;
    let m = row.max_running?;
    (row.running >= i64::from(m)).then(|| {
        format!(
            "waiting: provider '{provider}' at its limit {}/{m}",
            row.running
        )
    })
}

/// What `jrq status` lists as held: pauses, and providers at their limits with tasks
/// waiting.
pub async fn providers_held(client: &impl Sql) -> Result<Vec<String>> {
    let rows = providers_list(client).await?;
    let pauses = pauses_active(client, &Statements::default()).await?;
    let mut out: Vec<String> = pauses
        .iter()
        .map(|p| format!("{} {}", p.what(), p.describe()))
        .collect();
    for r in &rows {
        if let Some(m) = r.max_running {
            if r.running >= i64::from(m) && r.pending > 0 && !pauses.providers.contains_key(&r.name)
            {
                out.push(format!(
                    "waiting: provider '{}' at its limit {}/{m} ({} pending)",
                    r.name, r.running, r.pending
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What `jrq show` says about a pending task the governor holds back.
pub async fn providers_waiting(
    client: &impl Sql,
    task: &crate::db::tasks::TaskRow,
) -> Result<Option<String>> {
    if task.status != TaskStatus::Pending {
        return Ok(None);
    }
    let rows = providers_list(client).await?;
    let pauses = pauses_active(client, &Statements::default()).await?;
    Ok(providers_waiting_reason(
        task.status,
        &task.provider,
        task.fallback_ok,
        task.run_id,
        &rows,
        &pauses,
    ))
}
