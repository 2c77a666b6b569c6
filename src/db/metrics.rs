//! The counters and histograms of `/metrics`, derived from the task rows so that they only
//! go up (V11).
//!
//! A task row in a final state is the evidence of what happened to it: a completed row
//! never changes, so a count of completed rows only grows. Two things take evidence away:
//! `jrq prune` deletes final rows, and `jrq retry` turns a failed or cancelled row back
//! into a pending one. Both carry the aggregate of the rows they take into
//! `jr_metric_totals` in the same statement, with the same aggregation
//! ([`metric_cols!`], [`metric_agg!`]); a counter is the aggregate of the final rows plus
//! the totals, and never goes down.
//!
//! What is counted, per effective provider (the fallback it was routed to, else its own):
//! (V12) usage — tokens and cost, by provider and worker — from `jr_task_usage`, whose rows
//! `jrq prune` carries into the totals as `usage_input_tokens`, `usage_output_tokens`,
//! `usage_cost_microusd`; and
//! tasks by final state and the worker that last held them (`completed`, `failed`,
//! `cancelled`), the attempts and the retries (attempts after the first) of finished
//! tasks, and two histograms over completed tasks: dispatch (ready → start of the attempt
//! that completed) and run time (that start → completion).

use crate::db::Sql;

use crate::error::Result;

/// Upper bounds (seconds) of the dispatch histogram's buckets. The stored totals name
/// their bucket by its bound: changing a bound leaves the old bucket's totals under the
/// old bound (still counted, in `+Inf` and the sums) until they are pruned.
pub const DISPATCH_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

/// Upper bounds (seconds) of the run-time histogram's buckets.
pub const RUN_BOUNDS: [f64; 14] = [
    0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
];

/// The columns [`metric_agg!`] reads besides `status`, as expressions over a
/// `jr_work_queue` row (for a SELECT list or a RETURNING clause).
#[macro_export]
#[doc(hidden)]
macro_rules! metric_cols {
    () => {
        "coalesce(routed_provider, provider) AS m_provider, \
         coalesce(assigned_jr, '') AS m_worker, attempts AS m_attempts, \
         greatest(0, (extract(epoch FROM started_at - greatest(created_at, run_after)) \
             * 1000000)::int8) AS m_dispatch_us, \
         greatest(0, (extract(epoch FROM completed_at - started_at) * 1000000)::int8) \
             AS m_run_us"
    };
}

/// The aggregation of the rows of a relation named `src` (with `status` and the
/// [`metric_cols!`] columns) into `(metric, provider, worker, le, count, sum_us)` rows, one
/// per key; an observation goes to the first bucket whose bound it does not exceed
/// (Prometheus' `le`). `$d` and `$r` are the statement's parameters holding [`DISPATCH_BOUNDS`] and
/// [`RUN_BOUNDS`].
#[macro_export]
#[doc(hidden)]
macro_rules! metric_agg {
    ($d:literal, $r:literal) => {
        concat!(
            // One pass for the counters: grouped by state, provider and worker, then each
            // group's three counts unpivoted (attempts and retries per provider only).
            "SELECT metric, provider, worker, 'Infinity'::float8 AS le, sum(n)::int8 AS count, \
                    0::int8 AS sum_us \
             FROM (SELECT x.metric, c.m_provider AS provider, x.worker, x.n \
                   FROM (SELECT status, m_provider, m_worker, count(*) AS n, \
                                sum(m_attempts) AS a, sum(greatest(m_attempts - 1, 0)) AS r \
                         FROM src WHERE status IN ('completed', 'failed', 'cancelled') \
                         GROUP BY 1, 2, 3) c, \
                        LATERAL (VALUES (c.status::text, c.m_worker, c.n), \
                                        ('attempts', '', c.a), ('retries', '', c.r)) \
                            x (metric, worker, n)) y \
             GROUP BY 1, 2, 3 \
             UNION ALL \
             SELECT metric, m_provider, '', coalesce(bounds[b + 1] / 1000000.0, 'Infinity'), \
                    n, s \
             FROM (",
            // A histogram bucket per observation, by binary search: width_bucket(x - 1, B)
            // counts the bounds below x (whole microseconds), so x lands under the first
            // bound it does not exceed (Prometheus' le).
            "SELECT 'dispatch_seconds' AS metric, m_provider, ",
            $d,
            "::int8[] AS bounds, width_bucket(m_dispatch_us - 1, ",
            $d,
            "::int8[]) AS b, count(*)::int8 AS n, sum(m_dispatch_us)::int8 AS s \
                   FROM src WHERE status = 'completed' AND m_dispatch_us IS NOT NULL \
                   GROUP BY 1, 2, 3, 4 \
                   UNION ALL \
                   SELECT 'run_seconds', m_provider, ",
            $r,
            "::int8[], width_bucket(m_run_us - 1, ",
            $r,
            "::int8[]), count(*)::int8, sum(m_run_us)::int8 \
                   FROM src WHERE status = 'completed' AND m_run_us IS NOT NULL \
                   GROUP BY 1, 2, 3, 4) h"
        )
    };
}

/// `bounds` in whole microseconds, as the statements take them.
pub fn bounds_us(bounds: &[f64]) -> Vec<i64> {
    bounds.iter().map(|b| (b * 1e6).round() as i64).collect()
}

/// The upsert that adds a relation `agg` of aggregated rows into `jr_metric_totals`.
#[macro_export]
#[doc(hidden)]
macro_rules! metric_carry {
    () => {
        "INSERT INTO jr_metric_totals AS t (metric, provider, worker, le, count, sum_us) \
         SELECT metric, provider, worker, le, count, sum_us FROM agg \
         ORDER BY metric, provider, worker, le \
         ON CONFLICT (metric, provider, worker, le) DO UPDATE \
             SET count = t.count + EXCLUDED.count, sum_us = t.sum_us + EXCLUDED.sum_us"
    };
}

/// One counted key: a counter's value (`le` infinite) or a histogram bucket's count and
/// sum. Sums are whole microseconds: integers add up the same in any order, so a sum
/// never goes down by a rounding (a float's would, when a prune moves rows to the totals).
#[derive(Debug, Clone, PartialEq)]
pub struct Total {
    pub metric: String,
    pub provider: String,
    pub worker: String,
    pub le: f64,
    pub count: i64,
    pub sum_us: i64,
}

/// Every counter and histogram bucket: the final rows' aggregate plus the carried totals.
/// Reads the whole task table (one scan); `jr-web` caches the answer between scrapes.
pub async fn metrics_totals(client: &impl Sql) -> Result<Vec<Total>> {
    let sql = concat!(
        "WITH src AS MATERIALIZED (SELECT status, ",
        metric_cols!(),
        " FROM jr_work_queue WHERE status IN ('completed', 'failed', 'cancelled')), \
         agg AS (",
        metric_agg!("$1", "$2"),
        ") SELECT metric, provider, worker, le, sum(count)::int8, sum(sum_us)::int8 FROM ( \
             SELECT metric, provider, worker, le, count, sum_us FROM agg \
             UNION ALL \
             SELECT metric, provider, worker, le, count, sum_us FROM jr_metric_totals \
             UNION ALL \
             SELECT x.metric, u.provider, u.worker, 'Infinity', sum(x.n)::int8, 0 \
             FROM jr_task_usage u, LATERAL (VALUES ('usage_input_tokens', u.input_tokens), \
                 ('usage_output_tokens', u.output_tokens), \
                 ('usage_cost_microusd', u.cost_microusd)) x (metric, n) \
             GROUP BY 1, 2, 3) x \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    );
    let rows = client
        .rows(
            sql,
            &[&bounds_us(&DISPATCH_BOUNDS), &bounds_us(&RUN_BOUNDS)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Total {
            metric: r.get(0),
            provider: r.get(1),
            worker: r.get(2),
            le: r.get(3),
            count: r.get(4),
            sum_us: r.get(5),
        })
        .collect())
}
