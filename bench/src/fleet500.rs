//! Scenario 9: a fleet of hundreds of real worker processes on one PostgreSQL — directly
//! (every worker with its own connection, LISTENing on its channel) and through PgBouncer
//! in transaction mode (polling, a few server connections). Capacity 1 each, a 1–5 s
//! sleep executor (five groups of workers, `sleep:1s` … `sleep:5s`), two assigners, one
//! watching monitor, on a private cluster of its own (stock settings, `max_connections`
//! raised to fit the direct layout).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::{fleet, percentile, Ctx};

/// One layout's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fleet500Row {
    pub layout: String,
    pub workers: usize,
    pub assigners: usize,
    /// What bounds the server's connections: `max_connections N` or `pool_size N`.
    pub limit: String,
    /// The workers' and assigners' poll intervals in this layout.
    pub intervals: String,
    /// From the first spawn until every worker is online, s.
    pub start_s: f64,
    /// Server connections (client backends) at rest and the most seen under load.
    pub connections_idle: i64,
    pub connections_max: i64,
    /// CPU of every PostgreSQL process and of the fleet's processes, % of one core.
    pub idle_pg_cpu_pct: f64,
    pub idle_fleet_cpu_pct: f64,
    /// PgBouncer's CPU (the pooled layout), % of one core.
    pub idle_bouncer_cpu_pct: Option<f64>,
    /// Transactions the server committed a second at rest (heartbeats, polls, rounds).
    pub idle_commits_per_s: f64,
    pub load_offered_per_s: f64,
    pub load_completed_per_s: f64,
    pub load_pg_cpu_pct: f64,
    pub load_fleet_cpu_pct: f64,
    pub load_bouncer_cpu_pct: Option<f64>,
    pub load_commits_per_s: f64,
    /// Routing rounds that assigned something, from the assigners' own timing.
    pub rounds: usize,
    pub round_ms_p50: f64,
    pub round_ms_p99: f64,
    /// Insert → start of the load phase's tasks, ms.
    pub dispatch_ms_p50: f64,
    pub dispatch_ms_p99: f64,
    pub dispatched: usize,
    /// A busy worker killed with SIGKILL: until its task started again on another, s.
    pub dead_rerun_s: Option<f64>,
    /// The monitor's `--dead-after` in this run, s.
    pub dead_after_s: f64,
    /// Resident memory of all the fleet's processes at rest, MiB.
    pub fleet_rss_mib: f64,
}

/// The fleet's processes, killed (and reaped) when dropped.
struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn spawn(
    bin: &Path,
    url: &str,
    env: &[(&str, &str)],
    args: &[String],
    log: Option<&Path>,
) -> Result<Child> {
    let rust_log = if log.is_some() {
        "warn,jrq::assigner=debug"
    } else {
        "warn"
    };
    let mut cmd = fleet::command(bin, url, args, rust_log);
    cmd.envs(env.iter().copied());
    match log {
        Some(p) => cmd.stderr(
            std::fs::File::create(p)
                .map_err(|e| Error::io(format!("cannot create {}", p.display()), e))?,
        ),
        None => cmd.stderr(Stdio::null()),
    };
    cmd.spawn()
        .map_err(|e| Error::io(format!("cannot start {}", bin.display()), e))
}

/// Runs `scripts/dev-postgres ARGS` (from the project's root, where `scripts/bench` runs
/// the benchmark); its standard output.
pub(crate) fn dev_postgres(args: &[&str]) -> Result<String> {
    let out = Command::new("scripts/dev-postgres")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::io("cannot run scripts/dev-postgres", e))?;
    if !out.status.success() {
        return Err(Error::Bench(format!(
            "scripts/dev-postgres {} failed",
            args[0]
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn one(c: &Client, sql: &str) -> Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

/// The server's client connections, but the benchmark's own (application `jrq-bench`).
const CONNECTIONS: &str = "SELECT count(*) FROM pg_stat_activity \
    WHERE backend_type = 'client backend' AND application_name <> 'jrq-bench'";
const COMMITS: &str =
    "SELECT xact_commit::int8 FROM pg_stat_database WHERE datname = current_database()";

/// CPU ticks of the PostgreSQL processes, of `pids` and of PgBouncer now.
fn ticks(pids: &[u32]) -> (u64, u64, u64) {
    (
        fleet::postgres_ticks(),
        pids.iter().map(|p| fleet::cpu_ticks(*p)).sum(),
        comm_ticks("pgbouncer"),
    )
}

/// CPU ticks of every process of this machine whose command is `comm`.
fn comm_ticks(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == comm)
                .unwrap_or(false)
        })
        .map(fleet::cpu_ticks)
        .sum()
}

fn pct(t0: u64, t1: u64, secs: f64) -> f64 {
    t1.saturating_sub(t0) as f64 / fleet::ticks_per_second() / secs * 100.0
}

/// The elapsed_us of every "round" line the assigners logged.
fn round_times(logs: &[std::path::PathBuf]) -> Vec<f64> {
    let mut out = vec![];
    for p in logs {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(" round")) {
            if let Some(v) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("elapsed_us="))
                .and_then(|v| v.parse::<f64>().ok())
            {
                out.push(v / 1000.0);
            }
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

/// Both layouts, on one private cluster.
pub async fn fleet500(ctx: &Ctx) -> Result<Vec<Fleet500Row>> {
    let workers = if ctx.quick { 100 } else { 500 };
    let dir = crate::tempfile_dir("jrq-bench-fleet-pg")?;
    let bouncer_dir = crate::tempfile_dir("jrq-bench-fleet-pgbouncer")?;
    let d = dir.display().to_string();
    let bd = bouncer_dir.display().to_string();
    let pid = std::process::id().to_string();
    let url = dev_postgres(&["start", &d, "--stock", "--owner-pid", &pid])?;
    let result = async {
        let admin = Ctx::connect(&url).await?;
        admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET max_connections = {}",
                workers + 100
            ))
            .await?;
        drop(admin);
        dev_postgres(&["server-stop", &d])?;
        dev_postgres(&["server-start", &d])?;
        let pool = 40;
        let bouncer = dev_postgres(&[
            "pgbouncer",
            &bd,
            "--from",
            &d,
            "--pool-size",
            &pool.to_string(),
            "--owner-pid",
            &pid,
        ])?;
        let mut rows = vec![];
        for (layout, pooled) in [
            ("direct: a connection per program, LISTEN", false),
            ("PgBouncer, transaction pooling: polling", true),
        ] {
            let row = run_layout(ctx, &url, &bouncer, layout, pooled, workers, pool).await?;
            eprintln!(
                "fleet500    {}: {} workers on {} server connections (at most {}); idle db \
                 {:.0} % fleet {:.0} %; load {:.0}/s done, db {:.0} % fleet {:.0} %; round \
                 p50 {:.1} ms; dispatch p50 {:.0} ms p99 {:.0} ms; dead worker's task re-run \
                 after {}",
                row.layout,
                row.workers,
                row.connections_idle,
                row.connections_max,
                row.idle_pg_cpu_pct,
                row.idle_fleet_cpu_pct,
                row.load_completed_per_s,
                row.load_pg_cpu_pct,
                row.load_fleet_cpu_pct,
                row.round_ms_p50,
                row.dispatch_ms_p50,
                row.dispatch_ms_p99,
                row.dead_rerun_s
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| "-".into())
            );
            rows.push(row);
        }
        Ok(rows)
    }
    .await;
    let _ = dev_postgres(&["stop", &bd]);
    let _ = dev_postgres(&["stop", &d]);
    result
}

async fn run_layout(
    ctx: &Ctx,
    direct_url: &str,
    bouncer_url: &str,
    layout: &str,
    pooled: bool,
    n: usize,
    pool: u32,
) -> Result<Row> {
    // A fresh database for each layout.
    let admin = Ctx::connect(direct_url).await?;
    admin
        .batch_execute("DROP DATABASE IF EXISTS jrq_fleet WITH (FORCE)")
        .await?;
    admin.batch_execute("CREATE DATABASE jrq_fleet").await?;
    let cfg = jrq::db::config_from(Some(direct_url), "jrq-bench")?;
    let direct = jrq::db::conninfo_with_dbname(&cfg, "jrq_fleet");
    // Through a transaction pooler the daemons cannot set their planner settings on the
    // session: the database carries them, as docs/operations.md says to do for the login.
    if pooled {
        admin
            .batch_execute(
                "ALTER DATABASE jrq_fleet SET enable_seqscan = off; \
                 ALTER DATABASE jrq_fleet SET enable_bitmapscan = off; \
                 ALTER DATABASE jrq_fleet SET jit = off",
            )
            .await?;
    }
    drop(admin);
    let mut client = Ctx::connect(&direct).await?;
    jrq::db::migrate::migrate(&mut client).await?;
    let fleet_url = if pooled {
        let b = jrq::db::config_from(Some(bouncer_url), "jrq-bench")?;
        jrq::db::conninfo_with_dbname(&b, "jrq_fleet")
    } else {
        direct.clone()
    };
    let env: Vec<(&str, &str)> = if pooled {
        vec![("JRQ_POOL_MODE", "transaction")]
    } else {
        vec![]
    };
    // Through the pooler nothing is woken: the workers and assigners poll, more often
    // than their defaults (5 s and 2 s), at one statement per interval each.
    let (worker_poll, assigner_poll) = if pooled {
        ("1s", "500ms")
    } else {
        ("5s", "2s")
    };
    let dead_after = Duration::from_secs(60);
    let logs_dir = crate::tempfile_dir("jrq-bench-fleet-logs")?;
    let mut procs = Procs { children: vec![] };
    let t0 = Instant::now();
    let mut assigner_logs = vec![];
    for a in ["bench-a1", "bench-a2"] {
        let log = logs_dir.join(format!("{a}.log"));
        let c = spawn(
            &ctx.bin_dir.join("jr-auto-assigner"),
            &fleet_url,
            &env,
            &[
                "--name".into(),
                a.into(),
                "--poll-interval".into(),
                assigner_poll.into(),
            ],
            Some(&log),
        )?;
        assigner_logs.push(log);
        procs.children.push((a.into(), c));
    }
    for i in 0..n {
        let name = format!("fw{i:03}");
        let exec = format!("sleep:{}s", 1 + i % 5);
        let c = spawn(
            &ctx.bin_dir.join("jr-queue-worker"),
            &fleet_url,
            &env,
            &[
                "--name".into(),
                name.clone(),
                "--capacity".into(),
                "1".into(),
                "--exec".into(),
                exec,
                "--poll-interval".into(),
                worker_poll.into(),
            ],
            None,
        )?;
        procs.children.push((name, c));
    }
    let monitor = spawn(
        &ctx.bin_dir.join("jr-health-monitor"),
        &fleet_url,
        &env,
        &[
            "--watch".into(),
            "5s".into(),
            "--manager".into(),
            "none".into(),
            "--dead-after".into(),
            format!("{}s", dead_after.as_secs()),
        ],
        None,
    )?;
    procs.children.push(("monitor".into(), monitor));
    let deadline = Instant::now() + Duration::from_secs(300);
    while one(
        &client,
        "SELECT count(*) FROM jr_status WHERE kind = 'worker' AND is_online AND status <> 'starting'",
    )
    .await?
        < n as i64
    {
        if Instant::now() > deadline {
            return Err(Error::Bench(format!("{n} workers did not come online in 5 min")));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start_s = t0.elapsed().as_secs_f64();
    // At rest (let the start settle first).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = procs.pids();
    let window = Duration::from_secs(if ctx.quick { 10 } else { 20 });
    let connections_idle = one(&client, CONNECTIONS).await?;
    let rss: u64 = pids.iter().map(|p| fleet::rss_kib(*p)).sum();
    let (c0, (p0, f0, b0)) = (one(&client, COMMITS).await?, ticks(&pids));
    tokio::time::sleep(window).await;
    let (c1, (p1, f1, b1)) = (one(&client, COMMITS).await?, ticks(&pids));
    let w = window.as_secs_f64();
    let mut row = Row {
        layout: layout.into(),
        workers: n,
        assigners: 2,
        limit: if pooled {
            format!("pool_size {pool}")
        } else {
            format!("max_connections {}", n + 100)
        },
        intervals: format!("worker {worker_poll}, assigner {assigner_poll}"),
        start_s,
        connections_idle,
        idle_pg_cpu_pct: pct(p0, p1, w),
        idle_fleet_cpu_pct: pct(f0, f1, w),
        idle_bouncer_cpu_pct: pooled.then(|| pct(b0, b1, w)),
        // (The measuring connection's own two statements are in it: negligible.)
        idle_commits_per_s: (c1 - c0) as f64 / w,
        dead_after_s: dead_after.as_secs_f64(),
        fleet_rss_mib: rss as f64 / 1024.0,
        ..Default::default()
    };

    // Under load: about half the fleet's capacity (n slots, 3 s a task on average),
    // credited on wall-clock time in 100 ms steps.
    let rate = (n as f64 / 3.0 * 0.5).round();
    let load = Duration::from_secs(if ctx.quick { 15 } else { 30 });
    let first_id = one(&client, "SELECT coalesce(max(id), 0) FROM jr_work_queue").await?;
    let done0 = one(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
    )
    .await?;
    let (c0, (p0, f0, b0)) = (one(&client, COMMITS).await?, ticks(&pids));
    let started = Instant::now();
    let mut sent = 0i64;
    let mut most = 0i64;
    let sampler = Ctx::connect(&direct).await?;
    while started.elapsed() < load {
        let due = (started.elapsed().as_secs_f64() * rate) as i64;
        if due > sent {
            client
                .execute(
                    "INSERT INTO jr_work_queue (title) \
                     SELECT 'fleet ' || g FROM generate_series(1, $1::int8) g",
                    &[&(due - sent)],
                )
                .await?;
            sent = due;
        }
        most = most.max(one(&sampler, CONNECTIONS).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (c1, (p1, f1, b1)) = (one(&client, COMMITS).await?, ticks(&pids));
    let done1 = one(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
    )
    .await?;
    row.load_offered_per_s = sent as f64 / secs;
    row.load_completed_per_s = (done1 - done0) as f64 / secs;
    row.load_pg_cpu_pct = pct(p0, p1, secs);
    row.load_fleet_cpu_pct = pct(f0, f1, secs);
    row.load_bouncer_cpu_pct = pooled.then(|| pct(b0, b1, secs));
    row.load_commits_per_s = (c1 - c0) as f64 / secs;
    row.connections_max = most.max(connections_idle);

    // A busy worker dies without a word: until its task starts again elsewhere.
    let victim = client
        .query_opt(
            "SELECT q.id, s.jr_name, s.pid FROM jr_work_queue q \
             JOIN jr_status s ON s.jr_name = q.assigned_jr \
             WHERE q.status = 'in_progress' ORDER BY q.id LIMIT 1",
            &[],
        )
        .await?;
    if let Some(v) = victim {
        let (task, name): (i64, String) = (v.get(0), v.get(1));
        if let Some((_, child)) = procs.children.iter_mut().find(|(n, _)| *n == name) {
            let killed = Instant::now();
            let _ = child.kill();
            let _ = child.wait();
            let limit = killed + dead_after * 3;
            while Instant::now() < limit {
                let again = one(
                    &client,
                    &format!(
                        "SELECT count(*) FROM jr_task_events WHERE task_id = {task} \
                         AND action = 'started' AND worker <> '{name}'"
                    ),
                )
                .await?;
                if again > 0 {
                    row.dead_rerun_s = Some(killed.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    let lat: Vec<f64> = {
        let mut v: Vec<f64> = client
            .query(
                "SELECT extract(epoch FROM e.at - q.created_at)::float8 * 1000 \
                 FROM jr_task_events e JOIN jr_work_queue q ON q.id = e.task_id \
                 WHERE e.action = 'started' AND e.attempt = 1 AND q.id > $1",
                &[&first_id],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, f64>(0))
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    row.dispatched = lat.len();
    row.dispatch_ms_p50 = percentile(&lat, 50.0);
    row.dispatch_ms_p99 = percentile(&lat, 99.0);
    let rounds = round_times(&assigner_logs);
    row.rounds = rounds.len();
    row.round_ms_p50 = percentile(&rounds, 50.0);
    row.round_ms_p99 = percentile(&rounds, 99.0);
    drop(procs);
    let _ = std::fs::remove_dir_all(&logs_dir);
    Ok(row)
}

type Row = Fleet500Row;
