//! Enqueueing: tasks inserted in bulk, with the unique-key check and one notification per
//! statement.

use std::collections::{HashMap, HashSet};

use crate::db::Sql;
use chrono::{DateTime, Utc};

use super::duration_ms;
use crate::error::{constraint, sqlstate, Error, Result};
use crate::task::{NewTask, RunAfter};

/// Rows per INSERT statement in a bulk enqueue.
const INSERT_CHUNK: usize = 5_000;

/// What happened to one task of an insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Inserted with this id.
    Inserted(i64),
    /// Not inserted: an unfinished task already holds the unique key.
    Duplicate { key: String, existing: Option<i64> },
}

/// Inserts tasks in bulk (one statement per few thousand rows, one notification per
/// statement). The outcomes come back in input order. A task whose unique key an
/// unfinished task already holds — in the table or earlier in `tasks` — is not inserted
/// and reported as a duplicate. Run inside a transaction to make the whole batch atomic.
pub async fn tasks_insert(client: &impl Sql, tasks: &[NewTask]) -> Result<Vec<InsertOutcome>> {
    let mut outcomes: Vec<Option<InsertOutcome>> = vec![None; tasks.len()];

    // Keys held by unfinished tasks already in the table.
    let keys: Vec<&str> = tasks
        .iter()
        .filter_map(|t| t.unique_key.as_deref())
        .collect();
    let mut held: HashMap<String, i64> = HashMap::new();
    if !keys.is_empty() {
        let sql = "SELECT unique_key, id FROM jr_work_queue \
             WHERE unique_key = ANY($1) \
               AND status IN ('waiting', 'awaiting_approval', 'pending', 'assigned', 'in_progress')";
        for r in client.rows(sql, &[&keys]).await? {
            held.insert(r.get(0), r.get(1));
        }
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut to_insert: Vec<usize> = Vec::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if let Some(k) = t.unique_key.as_deref() {
            if let Some(id) = held.get(k) {
                outcomes[i] = Some(InsertOutcome::Duplicate {
                    key: k.to_string(),
                    existing: Some(*id),
                });
                continue;
            }
            if !seen.insert(k) {
                outcomes[i] = Some(InsertOutcome::Duplicate {
                    key: k.to_string(),
                    existing: None,
                });
                continue;
            }
        }
        to_insert.push(i);
    }

    for chunk in to_insert.chunks(INSERT_CHUNK) {
        let rows = insert_chunk(client, tasks, chunk).await?;
        // Rows come back in insertion order; a key that lost a race with a concurrent
        // insert is skipped by ON CONFLICT and reported as a duplicate.
        let mut returned = rows.into_iter().peekable();
        for &i in chunk {
            let t = &tasks[i];
            match returned.next_if(|(_, ord)| *ord == i as i64) {
                Some((id, _)) => outcomes[i] = Some(InsertOutcome::Inserted(id)),
                None => {
                    outcomes[i] = Some(InsertOutcome::Duplicate {
                        key: t.unique_key.clone().unwrap_or_default(),
                        existing: None,
                    })
                }
            }
        }
    }
    Ok(outcomes
        .into_iter()
        // Invariant: each index is either a duplicate found before the inserts or in
        // `to_insert`, whose every index the loop above gives an outcome.
        .map(|o| o.expect("every task has an outcome"))
        .collect())
}

/// Inserts the tasks at `idx` with one statement; returns (id, input index) in order.
async fn insert_chunk(
    client: &impl Sql,
    tasks: &[NewTask],
    idx: &[usize],
) -> Result<Vec<(i64, i64)>> {
    let n = idx.len();
    let mut ord = Vec::with_capacity(n);
    let mut title = Vec::with_capacity(n);
    let mut description = Vec::with_capacity(n);
    let mut source = Vec::with_capacity(n);
    let mut created_by = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut urgent = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut provider = Vec::with_capacity(n);
    let mut fallback_ok = Vec::with_capacity(n);
    let mut target = Vec::with_capacity(n);
    let mut run_id = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut timeout_ms = Vec::with_capacity(n);
    let mut delay_ms: Vec<i64> = Vec::with_capacity(n);
    let mut run_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut unique_key = Vec::with_capacity(n);
    let mut idle_ms: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut max_cost: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut approve_by: Vec<Option<&str>> = Vec::with_capacity(n);
    for &i in idx {
        let t = &tasks[i];
        ord.push(i as i64);
        title.push(t.title.as_str());
        description.push(t.description.as_str());
        source.push(t.source.as_str());
        created_by.push(t.created_by.as_str());
        priority.push(t.priority);
        urgent.push(t.urgent);
        payload.push(&t.payload);
        provider.push(t.provider.as_str());
        fallback_ok.push(t.fallback_ok);
        target.push(t.target.as_deref());
        run_id.push(t.run_id);
        max_attempts.push(t.max_attempts);
        timeout_ms.push(duration_ms(t.timeout));
        match t.run_after {
            RunAfter::Now => {
                delay_ms.push(0);
                run_at.push(None);
            }
            RunAfter::Delay(d) => {
                delay_ms.push(duration_ms(d));
                run_at.push(None);
            }
            RunAfter::At(at) => {
                delay_ms.push(0);
                run_at.push(Some(at));
            }
        }
        unique_key.push(t.unique_key.as_deref());
        idle_ms.push(t.idle_timeout.map(duration_ms));
        max_cost.push(t.max_cost_usd);
        approve_by.push(t.approve_by.as_deref());
    }
    // `ord` orders the insert so that RETURNING maps rows back to their input lines.
    // The ON CONFLICT predicate is the unique index's (jr_work_queue_unique_key_idx).
    let sql = "INSERT INTO jr_work_queue (title, description, source, created_by, priority, \
             sacred_fire_priority, payload, provider, target_jr, run_id, max_attempts, \
             timeout, run_after, unique_key, fallback_ok, idle_timeout, max_cost_usd, \
             approve_by) \
         SELECT title, description, source, created_by, priority, urgent, payload, provider, \
             target, run_id, max_attempts, timeout_ms * interval '1 millisecond', \
             COALESCE(run_at, now() + delay_ms * interval '1 millisecond'), unique_key, \
             fallback_ok, idle_ms * interval '1 millisecond', max_cost, approve_by \
         FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
             $7::bool[], $8::jsonb[], $9::text[], $10::text[], $11::uuid[], $12::int4[], \
             $13::int8[], $14::int8[], $15::timestamptz[], $16::text[], $17::bool[], \
             $18::int8[], $19::float8[], $20::text[]) \
             AS u(ord, title, description, source, created_by, priority, urgent, payload, \
                  provider, target, run_id, max_attempts, timeout_ms, delay_ms, run_at, \
                  unique_key, fallback_ok, idle_ms, max_cost, approve_by) \
         ORDER BY ord \
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
             AND status IN ('waiting', 'awaiting_approval', 'pending', 'assigned', 'in_progress') \
         DO NOTHING \
         RETURNING id, unique_key";
    let rows = client
        .rows(
            sql,
            &[
                &ord,
                &title,
                &description,
                &source,
                &created_by,
                &priority,
                &urgent,
                &payload,
                &provider,
                &target,
                &run_id,
                &max_attempts,
                &timeout_ms,
                &delay_ms,
                &run_at,
                &unique_key,
                &fallback_ok,
                &idle_ms,
                &max_cost,
                &approve_by,
            ],
        )
        .await
        .map_err(|e| insert_error(&e))?;
    // Identity values grow in insertion order; the skipped rows are the ones whose key is
    // missing from RETURNING.
    let returned_keys: HashSet<Option<String>> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(1).map(Some))
        .collect();
    let mut ids = rows.iter().map(|r| r.get::<_, i64>(0));
    let mut out = Vec::with_capacity(rows.len());
    for &i in idx {
        let skipped = match tasks[i].unique_key.as_deref() {
            Some(k) => !returned_keys.contains(&Some(k.to_string())),
            None => false,
        };
        if !skipped {
            if let Some(id) = ids.next() {
                out.push((id, i as i64));
            }
        }
    }
    Ok(out)
}

fn insert_error(e: &tokio_postgres::Error) -> Error {
    match (sqlstate(e), constraint(e)) {
        (Some("23503"), _) => Error::NotFound(
            "a task names a run that does not exist: create it with `jrq runs create` \
             or check the id with `jrq runs list`"
                .into(),
        ),
        _ => Error::from_pg(e),
    }
}
