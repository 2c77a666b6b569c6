//! Scenario 10 (issue 19): a steady feed under pressure on the database.
//!
//! One assigner and two workers × 8 (`sleep:1ms`), fed at a fixed rate by batched INSERTs
//! credited on wall-clock time (a slow insert is made up at the next one, so the offered
//! load does not bend to the queue). Three phases: clean → stress → recovery. A stress
//! cell is one of:
//!
//! - `idle`: another session runs `BEGIN; SELECT txid_current();` and stays idle in that
//!   transaction for the whole phase — the vacuum horizon is held;
//! - `rr`: four overlapping REPEATABLE READ readers, each holding its snapshot 2 s over a
//!   count of the table, staggered by half a second;
//! - `overload`: the feed at 1.5 × the rate.
//!
//! Per phase: completion rate (median of 5 s samples), insert → start p50 / p99 of the
//! tasks inserted in the phase, the pending backlog's maximum, dead row versions
//! (`n_dead_tup`, its maximum), and per completed task the row updates (and their HOT
//! share), WAL bytes and commits.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::Result;
use crate::fleet::Fleet;
use crate::{percentile, wait_count, Ctx, COMPLETED_BY_WORKERS};

/// One phase's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    /// Offered tasks/s.
    pub offered_per_s: f64,
    /// Completed tasks/s: the median of 5 s samples.
    pub completed_per_s: f64,
    /// Insert → start of the tasks inserted in this phase, ms.
    pub start_p50_ms: f64,
    pub start_p99_ms: f64,
    pub pending_max: i64,
    pub dead_tuples_max: i64,
    /// Dead row versions the phase added (`n_dead_tup`, last sample less the first) per
    /// completed task: 0 or less where vacuum keeps up, about the updates per task while
    /// the horizon is held. (Absent from results written before it.)
    #[serde(default)]
    pub dead_per_task: f64,
    /// Per completed task.
    pub updates_per_task: f64,
    /// Share of those updates that were HOT (no index entries).
    pub hot_share: f64,
    pub wal_bytes_per_task: f64,
    pub commits_per_task: f64,
}

/// One cell: a stress and its three phases.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PressureRow {
    pub cell: String,
    pub rate: f64,
    pub phases: Vec<Phase>,
    /// The stress phase's completion rate against what was offered during it.
    pub kept: f64,
}

/// What a sample reads.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at: f64,
    completed: i64,
    pending: i64,
    dead: i64,
    upd: i64,
    hot: i64,
    wal: f64,
    commits: i64,
}

async fn sample(c: &Client, started: Instant) -> Result<Sample> {
    let r = c
        .query_one(
            "SELECT (SELECT coalesce(sum(tasks_completed), 0)::int8 FROM jr_status \
                     WHERE kind = 'worker'), \
                    (SELECT count(*) FROM jr_work_queue WHERE status = 'pending'), \
                    coalesce(s.n_dead_tup, 0), coalesce(s.n_tup_upd, 0), \
                    coalesce(s.n_tup_hot_upd, 0), \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                    (SELECT xact_commit FROM pg_stat_database \
                     WHERE datname = current_database()) \
             FROM (SELECT 1) one \
             LEFT JOIN pg_stat_user_tables s ON s.relname = 'jr_work_queue'",
            &[],
        )
        .await?;
    Ok(Sample {
        at: started.elapsed().as_secs_f64(),
        completed: r.get(0),
        pending: r.get(1),
        dead: r.get(2),
        upd: r.get(3),
        hot: r.get(4),
        wal: r.get(5),
        commits: r.get(6),
    })
}

/// The cells to run, the rate, and the phase lengths (clean, stress, recovery).
pub struct Plan {
    pub cells: Vec<String>,
    pub rate: f64,
    pub phases: [Duration; 3],
}

impl Plan {
    pub fn new(quick: bool, cells: &[String], hold: Option<Duration>) -> Plan {
        let (clean, stress, recovery) = if quick { (15, 30, 15) } else { (45, 90, 45) };
        Plan {
            cells: cells.to_vec(),
            rate: if quick { 400.0 } else { 800.0 },
            phases: [
                Duration::from_secs(clean),
                hold.unwrap_or(Duration::from_secs(stress)),
                Duration::from_secs(recovery),
            ],
        }
    }
}

pub async fn pressure(ctx: &mut Ctx, plan: &Plan) -> Result<Vec<PressureRow>> {
    let mut rows = vec![];
    for cell in &plan.cells {
        let (url, client) = ctx.fresh_db().await?;
        let workers = vec![("w1".to_string(), 8), ("w2".to_string(), 8)];
        let fleet = Fleet::start(&ctx.bin_dir, &url, &workers, "sleep:1ms", true);
        fleet.wait_ready(&client).await;
        let row = one_cell(&url, &client, cell, plan).await;
        fleet.stop();
        ctx.drop_db(&url).await?;
        let row = row?;
        eprintln!(
            "pressure    {cell:<9} clean {:>5.0}/s  stress {:>5.0}/s ({:.0} %), p99 {:.0} ms  \
             recovery {:>5.0}/s",
            row.phases[0].completed_per_s,
            row.phases[1].completed_per_s,
            row.kept * 100.0,
            row.phases[1].start_p99_ms,
            row.phases[2].completed_per_s
        );
        rows.push(row);
    }
    Ok(rows)
}

async fn one_cell(url: &str, client: &Client, cell: &str, plan: &Plan) -> Result<PressureRow> {
    let started = Instant::now();
    let total: Duration = plan.phases.iter().sum();
    let bounds = [
        plan.phases[0].as_secs_f64(),
        (plan.phases[0] + plan.phases[1]).as_secs_f64(),
        total.as_secs_f64(),
    ];
    let overload = cell == "overload";
    // The producer: credited on wall-clock time, one batched INSERT every 10 ms.
    let producer = {
        let c = Ctx::connect(url).await?;
        let rate = plan.rate;
        tokio::spawn(async move {
            let mut produced = 0f64;
            let mut last = 0.0f64;
            let mut credit = 0f64;
            loop {
                let t = started.elapsed().as_secs_f64();
                if t >= bounds[2] {
                    break;
                }
                let factor = if overload && t >= bounds[0] && t < bounds[1] {
                    1.5
                } else {
                    1.0
                };
                credit += (t - last) * rate * factor;
                last = t;
                let n = (credit - produced).floor() as i64;
                if n > 0 {
                    if c.execute(
                        "INSERT INTO jr_work_queue (title) \
                             SELECT 'p' FROM generate_series(1, $1::int8)",
                        &[&n],
                    )
                    .await
                    .is_err()
                    {
                        break;
                    }
                    produced += n as f64;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            produced as i64
        })
    };
    // The stress, from the end of the clean phase to the start of the recovery.
    let stress = {
        let url = url.to_string();
        let cell = cell.to_string();
        tokio::spawn(async move {
            let until_start = Duration::from_secs_f64(bounds[0]);
            let until_end = Duration::from_secs_f64(bounds[1]);
            tokio::time::sleep(until_start.saturating_sub(started.elapsed())).await;
            match cell.as_str() {
                "idle" => {
                    let c = Ctx::connect(&url).await?;
                    c.batch_execute("BEGIN; SELECT txid_current();").await?;
                    tokio::time::sleep(until_end.saturating_sub(started.elapsed())).await;
                    c.batch_execute("ROLLBACK").await?;
                }
                "rr" => {
                    let mut readers = vec![];
                    for i in 0..4u64 {
                        let url = url.clone();
                        readers.push(tokio::spawn(async move {
                            let c = Ctx::connect(&url).await?;
                            tokio::time::sleep(Duration::from_millis(500 * i)).await;
                            while started.elapsed() < until_end {
                                c.batch_execute(
                                    "BEGIN ISOLATION LEVEL REPEATABLE READ; \
                                     SELECT count(*) FROM jr_work_queue;",
                                )
                                .await?;
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                c.batch_execute("COMMIT").await?;
                            }
                            Ok::<_, crate::error::Error>(())
                        }));
                    }
                    for r in readers {
                        r.await
                            .map_err(|e| crate::error::Error::Bench(e.to_string()))??;
                    }
                }
                _ => {}
            }
            Ok::<_, crate::error::Error>(())
        })
    };
    // Samples every second.
    let mut samples = vec![sample(client, started).await?];
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(sample(client, started).await?);
    }
    let produced = producer
        .await
        .map_err(|e| crate::error::Error::Bench(e.to_string()))?;
    stress
        .await
        .map_err(|e| crate::error::Error::Bench(e.to_string()))??;
    // Drain what is left, then read the latencies of every task.
    wait_count(
        client,
        COMPLETED_BY_WORKERS,
        produced,
        Duration::from_secs(600),
        |_| {},
    )
    .await?;
    let base: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT min(created_at) FROM jr_work_queue", &[])
        .await?
        .get(0);
    let lat = client
        .query(
            "SELECT extract(epoch FROM created_at - $1)::float8, \
                    extract(epoch FROM started_at - created_at)::float8 * 1000 \
             FROM jr_work_queue",
            &[&base],
        )
        .await?;
    // The first insert came a few milliseconds after `started`: phases by insert time.
    let offset = samples.first().map(|s| s.at).unwrap_or(0.0);
    let names = ["clean", "stress", "recovery"];
    let mut phases = vec![];
    let mut from = 0.0;
    for (i, &to) in bounds.iter().enumerate() {
        let in_phase: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect();
        let (first, last) = (in_phase.first(), in_phase.last());
        let mut rates = vec![];
        for w in in_phase.windows(6).step_by(5) {
            let (a, b) = (w[0], w[5]);
            rates.push((b.completed - a.completed) as f64 / (b.at - a.at));
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        let mut starts: Vec<f64> = lat
            .iter()
            .filter(|r| {
                let t = r.get::<_, f64>(0) + offset;
                t >= from && t < to
            })
            .map(|r| r.get::<_, f64>(1))
            .collect();
        starts.sort_by(|a, b| a.total_cmp(b));
        let (completed, upd, hot, wal, commits, dead) = match (first, last) {
            (Some(a), Some(b)) => (
                (b.completed - a.completed).max(1) as f64,
                (b.upd - a.upd) as f64,
                (b.hot - a.hot) as f64,
                b.wal - a.wal,
                (b.commits - a.commits) as f64,
                (b.dead - a.dead) as f64,
            ),
            _ => (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        };
        let factor = if overload && i == 1 { 1.5 } else { 1.0 };
        phases.push(Phase {
            name: names[i].into(),
            seconds: to - from,
            offered_per_s: plan.rate * factor,
            completed_per_s: if rates.is_empty() {
                0.0
            } else {
                rates[rates.len() / 2]
            },
            start_p50_ms: percentile(&starts, 50.0),
            start_p99_ms: percentile(&starts, 99.0),
            pending_max: in_phase.iter().map(|s| s.pending).max().unwrap_or(0),
            dead_tuples_max: in_phase.iter().map(|s| s.dead).max().unwrap_or(0),
            dead_per_task: dead / completed,
            updates_per_task: upd / completed,
            hot_share: if upd > 0.0 { hot / upd } else { 0.0 },
            wal_bytes_per_task: wal / completed,
            commits_per_task: commits / completed,
        });
        from = to;
    }
    // Of what was offered during the stress (1.5 × the rate when overloaded).
    let kept = phases[1].completed_per_s / phases[1].offered_per_s;
    Ok(PressureRow {
        cell: cell.to_string(),
        rate: plan.rate,
        phases,
        kept,
    })
}
