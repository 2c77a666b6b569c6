//! `jrq-bench`, the benchmark behind `scripts/bench`: throughput, latency, backlog scale,
//! fleet scale, footprint, and the machine's own ceiling measured with pgbench — on the
//! real binaries and a real PostgreSQL. Every figure is the median of `--runs` runs with
//! min and max. Writes a JSON file and regenerates `docs/benchmarks.md` and its plots.
//!
//! A crate of its own, outside the library: it uses jrq's public API and its own SQL.

mod error;
mod fleet;
mod fleet500;
mod pressure;
mod report;

use std::process::ExitCode;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use fleet::Fleet;
use jrq::db;

/// jrq-bench — measures the fleet on this machine and writes docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(name = "jrq-bench", version, about)]
pub struct BenchArgs {
    /// Server to benchmark on (the user must be allowed to CREATE DATABASE).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        required_unless_present = "from_json"
    )]
    pub database_url: Option<String>,
    /// Runs per figure (the median is reported, with min and max).
    #[arg(long, env = "JRQ_BENCH_RUNS", default_value = "3")]
    pub runs: usize,
    /// Scenarios to run: throughput, latency, backlog, fleet, footprint, ceiling, output,
    /// notify, fleet500 (hundreds of real workers, directly and through PgBouncer; one run
    /// whatever --runs says, several minutes), and pressure (issue 19: a fixed-rate feed
    /// through clean, stress and recovery phases; not in the default set — about 3
    /// minutes a cell, one run).
    #[arg(
        long,
        env = "JRQ_BENCH_SCENARIOS",
        value_delimiter = ',',
        default_value = "throughput,latency,backlog,fleet,footprint,ceiling,output,notify,fleet500"
    )]
    pub scenarios: Vec<String>,
    /// The stress cells of `pressure`: idle (a session idle in transaction), rr (four
    /// REPEATABLE READ readers), overload (1.5 × the rate).
    #[arg(
        long,
        env = "JRQ_BENCH_PRESSURE_CELLS",
        value_delimiter = ',',
        default_value = "idle,rr,overload"
    )]
    pub pressure_cells: Vec<String>,
    /// How long `pressure`'s stress phase lasts (default 90s, 30s with --quick).
    #[arg(long, env = "JRQ_BENCH_PRESSURE_HOLD", value_parser = jrq::validate::duration_in("1s", "1d"))]
    pub pressure_hold: Option<Duration>,
    /// Smaller sizes, for a quick look (the report says so).
    #[arg(long, env = "JRQ_BENCH_QUICK")]
    pub quick: bool,
    /// The governor's cost: every task of provider `bench`, the workers serving it, and
    /// limits on it that never bind (max running and starts per minute of 1000000).
    #[arg(long, env = "JRQ_BENCH_GOVERNED")]
    pub governed: bool,
    /// Where the JSON results go.
    #[arg(
        long,
        env = "JRQ_BENCH_JSON",
        default_value = "target/bench/results.json"
    )]
    pub json: PathBuf,
    /// Directory of benchmarks.md and its plots.
    #[arg(long, env = "JRQ_BENCH_DOCS", default_value = "docs")]
    pub docs: PathBuf,
    /// The command line recorded in the report.
    #[arg(long, env = "JRQ_BENCH_COMMAND", default_value = "scripts/bench")]
    pub command: String,
    /// Measure nothing: regenerate the docs from this earlier JSON output (e.g. after
    /// editing docs/benchmarks-notes.md).
    #[arg(long, value_name = "JSON")]
    pub from_json: Option<PathBuf>,
}

/// Median, min and max of a figure over the runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        if values.is_empty() {
            return Stat::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Stat {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub kernel: String,
    pub postgres: String,
    pub settings: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputRow {
    pub label: String,
    pub workers: u32,
    pub capacity: u32,
    /// The workers' `--prefetch`; `None`: the default (automatic). Results written before
    /// it was automatic have 0 for the default.
    pub prefetch: Option<u32>,
    pub exec: String,
    pub tasks: usize,
    pub enqueue_per_s: Stat,
    pub tasks_per_s: Stat,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Stat,
    pub p95: Stat,
    pub p99: Stat,
    pub max: Stat,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyResult {
    pub tasks: usize,
    pub gap_ms: u64,
    /// Insert commit -> executor start, ms.
    pub start_ms: Percentiles,
    /// Insert commit -> completed, ms.
    pub complete_ms: Percentiles,
    /// All start latencies of the last run (for the plot), ms.
    pub start_samples: Vec<f64>,
    pub complete_samples: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacklogRow {
    pub label: String,
    pub pending: i64,
    pub finished_rows: i64,
    pub measured_tasks: i64,
    pub tasks_per_s: Stat,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetRow {
    pub workers: usize,
    pub connections: i64,
    pub max_connections: i64,
    pub assigner_round_ms: Stat,
    pub db_cpu_pct: f64,
    pub fleet_cpu_pct: f64,
    pub idle_window_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Footprint {
    pub worker_idle_kib: u64,
    pub worker_busy_kib: u64,
    pub assigner_idle_kib: u64,
    pub assigner_busy_kib: u64,
    pub binaries: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeilingRow {
    pub rows_per_txn: u32,
    pub clients: u32,
    pub rows_per_s: Stat,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub command: String,
    pub quick: bool,
    pub runs: usize,
    pub machine: Option<Machine>,
    pub throughput: Vec<ThroughputRow>,
    pub latency: Option<LatencyResult>,
    pub backlog: Vec<BacklogRow>,
    pub fleet: Vec<FleetRow>,
    pub footprint: Option<Footprint>,
    pub ceiling: Vec<CeilingRow>,
    #[serde(default)]
    pub output: Option<OutputResult>,
    #[serde(default)]
    pub notify: Vec<NotifyRow>,
    #[serde(default)]
    pub fleet500: Vec<fleet500::Fleet500Row>,
    #[serde(default)]
    pub pressure: Vec<pressure::PressureRow>,
    pub seconds: f64,
}

/// Live output's cost (scenario 7).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutputResult {
    pub chatty_tasks: u32,
    /// Lines a second each chatty task prints (about 60 bytes each).
    pub lines_per_s: u32,
    pub noop_tasks: usize,
    /// Noop throughput, 1 worker x 10, tasks/s: alone, and next to the chatty tasks.
    pub alone: Stat,
    pub with_chatty: Stat,
    /// Chunks written into jr_task_output a second.
    pub output_rows_per_s: Stat,
    /// WAL the chatty tasks alone make, MiB an hour.
    pub wal_mib_per_hour: Stat,
    /// jr_task_output's size at the end (data, indexes, TOAST), MiB.
    pub table_mib: Stat,
    /// CPU of the chatty worker (not its tasks), % of one core.
    pub chatty_worker_cpu_pct: Stat,
}

/// Shared state of a benchmark run.
/// The provider of every task with `--governed`.
const GOVERNED_PROVIDER: &str = "bench";

pub struct Ctx {
    admin: db::DbConfig,
    runs: usize,
    quick: bool,
    bin_dir: PathBuf,
    next_db: usize,
    footprint: Footprint,
    governed: bool,
}

impl Ctx {
    /// A libpq address for `dbname` on the benchmark server.
    fn conninfo(&self, dbname: &str) -> String {
        db::conninfo_with_dbname(&self.admin, dbname)
    }

    /// A connection to `url`, with the TLS settings it names.
    pub(crate) async fn connect(url: &str) -> Result<Client> {
        Ok(db::connect(&db::config_from(Some(url), "jrq-bench")?).await?)
    }

    /// A fresh, migrated database: its address and a client.
    async fn fresh_db(&mut self) -> Result<(String, Client)> {
        self.next_db += 1;
        let name = format!("jrq_bench_{}_{}", std::process::id(), self.next_db);
        let admin = db::connect(&self.admin).await?;
        let q = db::quote_ident(&name)?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
            .await?;
        admin.batch_execute(&format!("CREATE DATABASE {q}")).await?;
        let url = self.conninfo(&name);
        let mut client = Ctx::connect(&url).await?;
        db::migrate::migrate(&mut client).await?;
        if self.governed {
            client
                .execute(
                    "INSERT INTO jr_providers (name, max_running, max_starts_per_minute) \
                     VALUES ($1, 1000000, 1000000)",
                    &[&GOVERNED_PROVIDER],
                )
                .await?;
        }
        Ok((url, client))
    }

    async fn drop_db(&self, url: &str) -> Result<()> {
        let cfg = db::config_from(Some(url), "jrq-bench")?;
        if let Some(name) = cfg.pg.get_dbname() {
            let admin = db::connect(&self.admin).await?;
            let q = db::quote_ident(name)?;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
                .await?;
        }
        Ok(())
    }
}

async fn count(client: &Client, sql: &str) -> Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Tasks the workers have completed, from their own counters in the registry: one small
/// row per worker, so that watching a run does not load the machine being measured.
const COMPLETED_BY_WORKERS: &str =
    "SELECT coalesce(sum(tasks_completed), 0)::int8 FROM jr_status WHERE kind = 'worker'";

/// Polls (every 100 ms) until `sql` (a count) reaches `want`, sampling `on_sample`.
async fn wait_count(
    client: &Client,
    sql: &str,
    want: i64,
    timeout: Duration,
    mut on_sample: impl FnMut(i64),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(client, sql).await?;
        on_sample(n);
        if n >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Bench(format!(
                "benchmark stalled: {sql} reached {n} of {want}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> Result<Results> {
    if let Some(path) = &args.from_json {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        return serde_json::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "{} is not a jrq-bench result ({e})",
                path.display()
            ))
        });
    }
    let started = Instant::now();
    let url = args.database_url.clone().unwrap_or_default();
    let admin = db::config_from(Some(&url), "jrq-bench")?;
    let mut ctx = Ctx {
        admin,
        runs: args.runs.max(1),
        quick: args.quick,
        bin_dir: fleet::bin_dir(),
        next_db: 0,
        footprint: Footprint::default(),
        governed: args.governed,
    };
    if args.governed {
        fleet::serve_provider(GOVERNED_PROVIDER);
    }
    for b in ["jr-queue-worker", "jr-auto-assigner"] {
        if !ctx.bin_dir.join(b).exists() {
            return Err(Error::usage(format!(
                "{} is missing beside jrq-bench: build with `cargo build --release --workspace --bins`",
                b
            )));
        }
    }
    let mut res = Results {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        command: args.command.clone(),
        quick: args.quick,
        runs: ctx.runs,
        ..Default::default()
    };
    res.machine = Some(machine(&ctx).await?);
    let want = |s: &str| args.scenarios.iter().any(|x| x == s);
    if want("throughput") {
        res.throughput = throughput(&mut ctx).await?;
    }
    if want("latency") {
        res.latency = Some(latency(&mut ctx).await?);
    }
    if want("backlog") {
        res.backlog = backlog(&mut ctx).await?;
    }
    if want("fleet") || want("footprint") {
        res.fleet = fleet_scale(&mut ctx, want("fleet")).await?;
    }
    if want("footprint") {
        let mut f = ctx.footprint.clone();
        for b in ["jrq", "jr-queue-worker", "jr-auto-assigner"] {
            let size = std::fs::metadata(ctx.bin_dir.join(b))
                .map(|m| m.len())
                .unwrap_or(0);
            f.binaries.push((b.to_string(), size));
        }
        res.footprint = Some(f);
    }
    if want("ceiling") {
        res.ceiling = ceiling(&mut ctx).await?;
    }
    if want("output") {
        res.output = output_cost(&mut ctx).await?;
    }
    if want("notify") {
        res.notify = notify_cost(&ctx).await?;
    }
    if want("fleet500") {
        // Minutes of work and more moving parts (PgBouncer): a failure here keeps what the
        // other scenarios measured.
        match fleet500::fleet500(&ctx).await {
            Ok(rows) => res.fleet500 = rows,
            Err(e) => eprintln!("fleet500    not measured: {e}"),
        }
    }
    if want("pressure") {
        for c in &args.pressure_cells {
            if !["idle", "rr", "overload"].contains(&c.as_str()) {
                return Err(Error::Bench(format!(
                    "'{c}' is not a pressure cell: use idle, rr, overload"
                )));
            }
        }
        let plan = pressure::Plan::new(args.quick, &args.pressure_cells, args.pressure_hold);
        res.pressure = pressure::pressure(&mut ctx, &plan).await?;
    }
    res.seconds = started.elapsed().as_secs_f64();
    Ok(res)
}

async fn machine(ctx: &Ctx) -> Result<Machine> {
    let client = db::connect(&ctx.admin).await?;
    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    let mut settings = vec![];
    for s in [
        "max_connections",
        "shared_buffers",
        "fsync",
        "synchronous_commit",
        "wal_level",
        "work_mem",
    ] {
        let v: String = client
            .query_one("SELECT current_setting($1)", &[&s])
            .await?
            .get(0);
        settings.push((s.to_string(), v));
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(Machine {
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        cpu,
        kernel,
        postgres: version,
        settings,
    })
}

fn names(prefix: &str, n: u32, cap: u32) -> Vec<(String, u32)> {
    (1..=n).map(|i| (format!("{prefix}{i}"), cap)).collect()
}

/// Scenario 1: bulk enqueue, then the fleet drains the queue.
async fn throughput(ctx: &mut Ctx) -> Result<Vec<ThroughputRow>> {
    let n_noop = if ctx.quick { 4_000 } else { 20_000 };
    let n_sleep_1 = if ctx.quick { 500 } else { 3_000 };
    let n_sleep_4 = if ctx.quick { 2_000 } else { 10_000 };
    // The first of each fleet has the defaults (automatic prefetch); the others fix it.
    // (label, workers, capacity, prefetch, executor, tasks)
    type Config<'a> = (&'a str, u32, u32, Option<u32>, &'a str, usize);
    let configs: [Config; 8] = [
        ("1 worker x 10, noop", 1, 10, None, "noop", n_noop),
        (
            "1 worker x 10, prefetch 0, noop",
            1,
            10,
            Some(0),
            "noop",
            n_noop,
        ),
        (
            "1 worker x 10, prefetch 10, noop",
            1,
            10,
            Some(10),
            "noop",
            n_noop,
        ),
        ("4 workers x 10, noop", 4, 10, None, "noop", n_noop),
        (
            "4 workers x 10, prefetch 0, noop",
            4,
            10,
            Some(0),
            "noop",
            n_noop,
        ),
        (
            "4 workers x 10, prefetch 10, noop",
            4,
            10,
            Some(10),
            "noop",
            n_noop,
        ),
        (
            "1 worker x 10, sleep:10ms",
            1,
            10,
            None,
            "sleep:10ms",
            n_sleep_1,
        ),
        (
            "4 workers x 10, sleep:10ms",
            4,
            10,
            None,
            "sleep:10ms",
            n_sleep_4,
        ),
    ];
    let mut rows = vec![];
    for (label, workers, cap, prefetch, exec, n) in configs {
        let mut enq = vec![];
        let mut tput = vec![];
        for _ in 0..ctx.runs {
            let (url, mut client) = ctx.fresh_db().await?;
            let tasks: Vec<jrq::task::NewTask> = (0..n)
                .map(|i| {
                    let mut t = jrq::task::NewTask::new(format!("bench {i}"));
                    if ctx.governed {
                        t.provider = GOVERNED_PROVIDER.into();
                    }
                    t
                })
                .collect();
            let t0 = Instant::now();
            let txn = client.transaction().await?;
            db::tasks::tasks_insert(&txn, &tasks).await?;
            txn.commit().await?;
            enq.push(n as f64 / t0.elapsed().as_secs_f64());
            let fleet = Fleet::start_with(
                &ctx.bin_dir,
                &url,
                &names("w", workers, cap),
                exec,
                true,
                prefetch,
            );
            let busy_probe = fleet.worker_pids.first().copied();
            let assigner = fleet.assigner_pid;
            let mut busy_worker = 0u64;
            let mut busy_assigner = 0u64;
            wait_count(
                &client,
                COMPLETED_BY_WORKERS,
                n as i64,
                Duration::from_secs(300),
                |done| {
                    if done > 0 && done < n as i64 {
                        if let Some(p) = busy_probe {
                            busy_worker = busy_worker.max(fleet::rss_kib(p));
                        }
                        if let Some(p) = assigner {
                            busy_assigner = busy_assigner.max(fleet::rss_kib(p));
                        }
                    }
                },
            )
            .await?;
            let secs: f64 = client
                .query_one(
                    "SELECT extract(epoch FROM max(completed_at) - \
                         (SELECT min(at) FROM jr_task_events WHERE action = 'assigned'))::float8 \
                     FROM jr_work_queue",
                    &[],
                )
                .await?
                .get(0);
            tput.push(n as f64 / secs.max(1e-6));
            fleet.stop();
            ctx.footprint.worker_busy_kib = ctx.footprint.worker_busy_kib.max(busy_worker);
            ctx.footprint.assigner_busy_kib = ctx.footprint.assigner_busy_kib.max(busy_assigner);
            ctx.drop_db(&url).await?;
        }
        let row = ThroughputRow {
            label: label.into(),
            workers,
            capacity: cap,
            prefetch,
            exec: exec.into(),
            tasks: n,
            enqueue_per_s: Stat::of(&enq),
            tasks_per_s: Stat::of(&tput),
        };
        eprintln!(
            "throughput  {:<28} {:>8.0} tasks/s (enqueue {:>7.0}/s)",
            row.label, row.tasks_per_s.median, row.enqueue_per_s.median
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Scenario 2: one task at a time into an idle, listening fleet.
async fn latency(ctx: &mut Ctx) -> Result<LatencyResult> {
    let n = if ctx.quick { 100 } else { 500 };
    let gap = Duration::from_millis(20);
    let mut starts: Vec<Vec<f64>> = vec![];
    let mut completes: Vec<Vec<f64>> = vec![];
    for _ in 0..ctx.runs {
        let (url, client) = ctx.fresh_db().await?;
        let fleet = Fleet::start(&ctx.bin_dir, &url, &names("w", 1, 10), "noop", true);
        fleet.wait_ready(&client).await;
        for i in 0..n {
            client
                .execute(
                    "INSERT INTO jr_work_queue (title) VALUES ($1)",
                    &[&format!("lat {i}")],
                )
                .await?;
            // Pacing the inserts, not waiting for a result.
            tokio::time::sleep(gap).await;
        }
        wait_count(
            &client,
            COMPLETED_BY_WORKERS,
            n as i64,
            Duration::from_secs(60),
            |_| {},
        )
        .await?;
        let rows = client
            .query(
                "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000, \
                        extract(epoch FROM completed_at - created_at)::float8 * 1000 \
                 FROM jr_work_queue",
                &[],
            )
            .await?;
        let mut s: Vec<f64> = rows.iter().map(|r| r.get(0)).collect();
        let mut c: Vec<f64> = rows.iter().map(|r| r.get(1)).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        c.sort_by(|a, b| a.total_cmp(b));
        starts.push(s);
        completes.push(c);
        fleet.stop();
        ctx.drop_db(&url).await?;
    }
    let pct = |runs: &[Vec<f64>]| Percentiles {
        p50: Stat::of(&runs.iter().map(|r| percentile(r, 50.0)).collect::<Vec<_>>()),
        p95: Stat::of(&runs.iter().map(|r| percentile(r, 95.0)).collect::<Vec<_>>()),
        p99: Stat::of(&runs.iter().map(|r| percentile(r, 99.0)).collect::<Vec<_>>()),
        max: Stat::of(
            &runs
                .iter()
                .map(|r| percentile(r, 100.0))
                .collect::<Vec<_>>(),
        ),
    };
    let out = LatencyResult {
        tasks: n,
        gap_ms: gap.as_millis() as u64,
        start_ms: pct(&starts),
        complete_ms: pct(&completes),
        start_samples: starts.last().cloned().unwrap_or_default(),
        complete_samples: completes.last().cloned().unwrap_or_default(),
    };
    eprintln!(
        "latency     insert -> start p50 {:.2} ms p99 {:.2} ms; -> completed p50 {:.2} ms",
        out.start_ms.p50.median, out.start_ms.p99.median, out.complete_ms.p50.median
    );
    Ok(out)
}

/// Scenario 3: throughput with a large backlog already in the table.
async fn backlog(ctx: &mut Ctx) -> Result<Vec<BacklogRow>> {
    let (sizes, measured): (Vec<i64>, i64) = if ctx.quick {
        (vec![2_000, 20_000, 100_000], 2_000)
    } else {
        (vec![10_000, 100_000, 1_000_000], 10_000)
    };
    let churn = *sizes.last().unwrap_or(&0);
    let mut rows = vec![];
    let mut cases: Vec<(String, i64, i64)> = sizes
        .iter()
        .map(|s| (format!("{s} pending"), *s, 0))
        .collect();
    cases.push((
        format!("{} pending after {churn} finished", sizes[0]),
        sizes[0],
        churn,
    ));
    for (label, pending, finished) in cases {
        let (url, client) = ctx.fresh_db().await?;
        // The backlog must outlast every run's measurement.
        let extra = measured * ctx.runs as i64;
        let total = pending.max(extra + measured);
        if finished > 0 {
            client
                .execute(
                    "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, started_at, \
                         completed_at, result) \
                     SELECT 'done ' || g, 'completed', 'old', 1, now() - interval '1 day', \
                         now() - interval '1 day', '' FROM generate_series(1, $1::int8) g",
                    &[&finished],
                )
                .await?;
            client
                .execute(
                    "INSERT INTO jr_task_events (task_id, actor, action, at) \
                     SELECT g, 'old', 'completed', now() - interval '1 day' \
                     FROM generate_series(1, $1::int8) g",
                    &[&finished],
                )
                .await?;
        }
        client
            .execute(
                "INSERT INTO jr_work_queue (title, priority) \
                 SELECT 'backlog ' || g, g % 10 FROM generate_series(1, $1::int8) g",
                &[&total],
            )
            .await?;
        client.batch_execute("VACUUM ANALYZE jr_work_queue").await?;
        client
            .batch_execute("VACUUM ANALYZE jr_task_events")
            .await?;
        let mut rates = vec![];
        for _ in 0..ctx.runs {
            let done_before = count(&client, COMPLETED_BY_WORKERS).await?;
            let first_event: i64 =
                count(&client, "SELECT coalesce(max(id), 0) FROM jr_task_events").await?;
            let fleet = Fleet::start(&ctx.bin_dir, &url, &names("w", 1, 10), "noop", true);
            let target = done_before + measured;
            wait_count(
                &client,
                COMPLETED_BY_WORKERS,
                target,
                Duration::from_secs(300),
                |_| {},
            )
            .await?;
            fleet.stop();
            let secs: f64 = client
                .query_one(
                    "SELECT extract(epoch FROM \
                         (SELECT completed_at FROM jr_work_queue \
                          WHERE status = 'completed' AND assigned_jr <> 'old' \
                          ORDER BY completed_at OFFSET $2::int8 - 1 LIMIT 1) \
                         - (SELECT min(at) FROM jr_task_events \
                            WHERE action = 'assigned' AND id > $1::int8))::float8",
                    &[&first_event, &target],
                )
                .await?
                .get(0);
            rates.push(measured as f64 / secs.max(1e-6));
        }
        let row = BacklogRow {
            label,
            pending,
            finished_rows: finished,
            measured_tasks: measured,
            tasks_per_s: Stat::of(&rates),
        };
        eprintln!(
            "backlog     {:<36} {:>8.0} tasks/s",
            row.label, row.tasks_per_s.median
        );
        rows.push(row);
        ctx.drop_db(&url).await?;
    }
    Ok(rows)
}

/// Scenario 4 (and the idle half of 5): idle fleets of growing size.
async fn fleet_scale(ctx: &mut Ctx, report_rows: bool) -> Result<Vec<FleetRow>> {
    let sizes: Vec<usize> = if report_rows {
        vec![1, 8, 32, 64]
    } else {
        vec![1]
    };
    let window = Duration::from_secs(if ctx.quick { 2 } else { 5 });
    let mut rows = vec![];
    for n in sizes {
        let (url, client) = ctx.fresh_db().await?;
        let fleet = Fleet::start(&ctx.bin_dir, &url, &names("w", n as u32, 1), "noop", true);
        fleet.wait_ready(&client).await;
        // Let start-up work settle before measuring the fleet at rest.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let connections = count(
            &client,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await?;
        let max_connections: i64 = client
            .query_one("SELECT current_setting('max_connections')::int8", &[])
            .await?
            .get(0);
        let pids = fleet.pids();
        let pg0 = fleet::postgres_ticks();
        let fl0: u64 = pids.iter().map(|p| fleet::cpu_ticks(*p)).sum();
        // Measuring the fleet at rest over a fixed window.
        tokio::time::sleep(window).await;
        let pg1 = fleet::postgres_ticks();
        let fl1: u64 = pids.iter().map(|p| fleet::cpu_ticks(*p)).sum();
        let hz = fleet::ticks_per_second();
        let w = window.as_secs_f64();
        if n == 1 {
            ctx.footprint.worker_idle_kib = fleet::rss_kib(fleet.worker_pids[0]);
            ctx.footprint.assigner_idle_kib = fleet.assigner_pid.map(fleet::rss_kib).unwrap_or(0);
        }
        // Idle round time: the same round the assigner runs, measured in-process.
        let mut probe = jrq::assigner::Assigner::new(
            jrq::assigner::AssignerConfig {
                // The real assigner's name: the probe routes the same share of the workers
                // (all of them) rather than half of them as a second assigner would.
                name: "bench-assigner".into(),
                ..Default::default()
            },
            db::config_from(Some(&url), "jrq-bench")?,
        );
        let mut pc = Ctx::connect(&url).await?;
        db::tune_session(&pc).await?;
        let stmts = jrq::db::Statements::default();
        let mut times = vec![];
        for _ in 0..30 {
            let t = Instant::now();
            probe.run_once(&mut pc, &stmts).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        fleet.stop();
        let row = FleetRow {
            workers: n,
            connections,
            max_connections,
            assigner_round_ms: Stat::of(&times),
            db_cpu_pct: (pg1 - pg0) as f64 / hz / w * 100.0,
            fleet_cpu_pct: (fl1 - fl0) as f64 / hz / w * 100.0,
            idle_window_s: w,
        };
        eprintln!(
            "fleet       {:>2} workers: {} connections, round {:.2} ms, idle db cpu {:.2} %, fleet cpu {:.2} %",
            n, row.connections, row.assigner_round_ms.median, row.db_cpu_pct, row.fleet_cpu_pct
        );
        rows.push(row);
        ctx.drop_db(&url).await?;
    }
    Ok(if report_rows { rows } else { vec![] })
}

/// Scenario 6: the same claim-and-complete cycle done by pgbench.
async fn ceiling(ctx: &mut Ctx) -> Result<Vec<CeilingRow>> {
    let secs = if ctx.quick { 2 } else { 5 };
    let clients = 10u32;
    let (url, client) = ctx.fresh_db().await?;
    let rows_needed: i64 = if ctx.quick { 200_000 } else { 900_000 };
    client
        .execute(
            "INSERT INTO jr_work_queue (title, priority) \
             SELECT 'pgbench ' || g, g % 10 FROM generate_series(1, $1::int8) g",
            &[&rows_needed],
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE jr_work_queue").await?;
    let dir = std::env::temp_dir().join(format!("jrq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("temp dir", e))?;
    let script = dir.join("claim_complete.sql");
    std::fs::write(
        &script,
        "WITH c AS (SELECT id FROM jr_work_queue WHERE status = 'pending' \
           ORDER BY sacred_fire_priority DESC, priority, created_at, id \
           LIMIT :n FOR UPDATE SKIP LOCKED) \
         UPDATE jr_work_queue q SET status = 'completed', started_at = now(), \
           completed_at = now(), attempts = q.attempts + 1, updated_at = now() \
         FROM c WHERE q.id = c.id;\n",
    )
    .map_err(|e| Error::io("pgbench script", e))?;
    let mut out = vec![];
    for n in [1u32, 100] {
        let mut rates = vec![];
        for _ in 0..ctx.runs {
            let o = tokio::process::Command::new("pgbench")
                .arg("-n")
                .arg("-f")
                .arg(&script)
                .arg("-c")
                .arg(clients.to_string())
                .arg("-j")
                .arg("2")
                .arg("-T")
                .arg(secs.to_string())
                .arg("-D")
                .arg(format!("n={n}"))
                .arg(&url)
                .output()
                .await
                .map_err(|e| {
                    Error::io("cannot run pgbench (apt-get install postgresql-client)", e)
                })?;
            let text = String::from_utf8_lossy(&o.stdout);
            let tps = text
                .lines()
                .find(|l| l.starts_with("tps = "))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| {
                    Error::Bench(format!(
                        "pgbench gave no tps: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ))
                })?;
            rates.push(tps * f64::from(n));
        }
        let row = CeilingRow {
            rows_per_txn: n,
            clients,
            rows_per_s: Stat::of(&rates),
        };
        eprintln!(
            "ceiling     pgbench {n:>3} row(s)/txn: {:>8.0} rows/s",
            row.rows_per_s.median
        );
        out.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    ctx.drop_db(&url).await?;
    Ok(out)
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    jrq::telemetry::init_stderr("warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jrq-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json.clone();
    let docs = args.docs.clone();
    let result = runtime.block_on(async {
        let results = run(args).await?;
        report::write_json(&results, &json)?;
        report::write_docs(&results, &docs)?;
        Ok::<_, Error>(())
    });
    match result {
        Ok(()) => {
            eprintln!(
                "jrq-bench: wrote {} and {}/benchmarks.md",
                json.display(),
                docs.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jrq-bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The program of the chatty tasks: `lines` lines a second (in bursts of a tenth of a
/// second), about 60 bytes each, until killed.
const CHATTY_PY: &str = r#"import random, sys, time
# Words in random order and a random number: about as compressible as an agent's log
# (TOAST compresses what it stores; a repeated line would flatter the figures).
words = ("the agent reads code tests file function error build change patch review "
         "diff commit branch module type value fails passes").split()
per_burst = int(sys.argv[1]) // 10
i = 0
while True:
    t = time.time()
    for _ in range(per_burst):
        i += 1
        sys.stdout.write("line %d: %s %016x\n" % (i, " ".join(random.choices(words, k=5)),
                                                 random.getrandbits(64)))
    sys.stdout.flush()
    time.sleep(max(0.0, 0.1 - (time.time() - t)))
"#;

/// Scenario 7: live output's cost. Noop throughput (1 worker x 10) alone, and next to a
/// chatty worker running 10 tasks that print 1 000 lines a second each (their output
/// streamed into `jr_task_output`); and what the chatty tasks alone write.
async fn output_cost(ctx: &mut Ctx) -> Result<Option<OutputResult>> {
    let n = if ctx.quick { 4_000 } else { 20_000 };
    let (chatty_tasks, lines) = (10u32, 1000u32);
    let window = Duration::from_secs(if ctx.quick { 5 } else { 15 });
    let dir = std::env::temp_dir().join(format!("jrq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let prog = dir.join("chatty.py");
    std::fs::write(&prog, CHATTY_PY)
        .map_err(|e| Error::io(format!("cannot write {}", prog.display()), e))?;
    let exec = format!("python3 {} {lines}", prog.display());
    let mut r = OutputResult {
        chatty_tasks,
        lines_per_s: lines,
        noop_tasks: n,
        ..Default::default()
    };
    let (mut alone, mut with, mut rows, mut wal, mut table, mut cpu) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ctx.runs {
        // Alone.
        let (url, mut client) = ctx.fresh_db().await?;
        alone.push(noop_throughput(ctx, &url, &mut client, n, true).await?);
        ctx.drop_db(&url).await?;

        // Next to the chatty tasks.
        let (url, mut client) = ctx.fresh_db().await?;
        let tasks: Vec<jrq::task::NewTask> = (0..chatty_tasks)
            .map(|i| {
                let mut t = jrq::task::NewTask::new(format!("chatty {i}"));
                t.provider = "chatty".into();
                t.timeout = Duration::from_secs(3600);
                t
            })
            .collect();
        db::tasks::tasks_insert(&client, &tasks).await?;
        let chatty =
            fleet::spawn_worker(&ctx.bin_dir, &url, "chatty", chatty_tasks, &exec, "chatty");
        let assigner = Fleet::start(&ctx.bin_dir, &url, &[], "noop", true);
        wait_count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'in_progress'",
            i64::from(chatty_tasks),
            Duration::from_secs(60),
            |_| {},
        )
        .await?;
        // What the chatty tasks alone write, over a window.
        let (lsn0, ins0) = (wal_lsn(&client).await?, output_inserts(&client).await?);
        let (cpu0, t0) = (fleet::cpu_ticks(chatty.worker_pids[0]), Instant::now());
        tokio::time::sleep(window).await;
        let (lsn1, cpu1) = (
            wal_lsn(&client).await?,
            fleet::cpu_ticks(chatty.worker_pids[0]),
        );
        let secs = t0.elapsed().as_secs_f64();
        // pg_stat counters are sent at the end of transactions, with a delay: read last.
        let diff: i64 = client
            .query_one(
                "SELECT ($2::text::pg_lsn - $1::text::pg_lsn)::int8",
                &[&lsn0, &lsn1],
            )
            .await?
            .get(0);
        wal.push(diff as f64 / secs * 3600.0 / 1024.0 / 1024.0);
        cpu.push((cpu1 - cpu0) as f64 / fleet::ticks_per_second() / secs * 100.0);
        with.push(noop_throughput(ctx, &url, &mut client, n, false).await?);
        let ins1 = output_inserts(&client).await?;
        rows.push((ins1 - ins0) as f64 / t0.elapsed().as_secs_f64());
        let size: i64 = client
            .query_one("SELECT pg_total_relation_size('jr_task_output')", &[])
            .await?
            .get(0);
        table.push(size as f64 / 1024.0 / 1024.0);
        assigner.stop();
        chatty.stop();
        ctx.drop_db(&url).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    r.alone = Stat::of(&alone);
    r.with_chatty = Stat::of(&with);
    r.output_rows_per_s = Stat::of(&rows);
    r.wal_mib_per_hour = Stat::of(&wal);
    r.table_mib = Stat::of(&table);
    r.chatty_worker_cpu_pct = Stat::of(&cpu);
    eprintln!(
        "output      noop 1x10 alone {:>6.0} tasks/s, next to {} chatty tasks {:>6.0} tasks/s; \
         chatty: {:.0} chunks/s, WAL {:.0} MiB/h, table {:.1} MiB, worker CPU {:.0} %",
        r.alone.median,
        chatty_tasks,
        r.with_chatty.median,
        r.output_rows_per_s.median,
        r.wal_mib_per_hour.median,
        r.table_mib.median,
        r.chatty_worker_cpu_pct.median
    );
    Ok(Some(r))
}

/// Enqueues `n` noop tasks and runs them with an assigner's help on one noop worker x 10;
/// returns tasks/s (first assignment to last completion).
async fn noop_throughput(
    ctx: &Ctx,
    url: &str,
    client: &mut Client,
    n: usize,
    assigner: bool,
) -> Result<f64> {
    let tasks: Vec<jrq::task::NewTask> = (0..n)
        .map(|i| jrq::task::NewTask::new(format!("bench {i}")))
        .collect();
    let txn = client.transaction().await?;
    db::tasks::tasks_insert(&txn, &tasks).await?;
    txn.commit().await?;
    let fleet = Fleet::start(&ctx.bin_dir, url, &names("w", 1, 10), "noop", assigner);
    wait_count(
        client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed' AND provider = ''",
        n as i64,
        Duration::from_secs(300),
        |_| {},
    )
    .await?;
    let secs: f64 = client
        .query_one(
            "SELECT extract(epoch FROM max(q.completed_at) - min(e.at))::float8 \
             FROM jr_work_queue q JOIN jr_task_events e ON e.task_id = q.id \
             WHERE q.provider = '' AND e.action = 'assigned'",
            &[],
        )
        .await?
        .get(0);
    fleet.stop();
    Ok(n as f64 / secs.max(1e-6))
}

async fn wal_lsn(c: &Client) -> Result<String> {
    Ok(c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

/// Rows inserted into jr_task_output so far (the statistics collector's count).
async fn output_inserts(c: &Client) -> Result<i64> {
    Ok(c.query_one(
        "SELECT coalesce((SELECT n_tup_ins FROM pg_stat_user_tables \
         WHERE relname = 'jr_task_output'), 0)::int8",
        &[],
    )
    .await?
    .get(0))
}

/// One layout of scenario 8: what a notification costs with this many listening backends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotifyRow {
    pub layout: String,
    pub listeners: usize,
    pub notifications: usize,
    /// Notifications the listeners' clients received, per notification sent.
    pub deliveries_per_notify: f64,
    /// CPU of all PostgreSQL processes per notification sent, microseconds.
    pub pg_cpu_us: Stat,
    /// CPU of the listening clients (and the sender: one process), per notification, µs.
    pub client_cpu_us: Stat,
    pub notify_per_s: Stat,
}

/// Scenario 8: the wake-ups an assignment costs at fleet scale. 500 connections LISTEN as
/// 500 workers do; one sender notifies one of them per transaction, as an assigner round
/// of one task does — once with every worker on one channel (jrq before issue 16), once
/// with a channel per worker (`jrq_worker:NAME`). On a private cluster of its own (stock
/// settings, max_connections raised to fit the listeners).
async fn notify_cost(ctx: &Ctx) -> Result<Vec<NotifyRow>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let listeners = if ctx.quick { 100 } else { 500 };
    let sends = if ctx.quick { 500 } else { 2_000 };
    let dir = tempfile_dir("jrq-bench-notify-pg")?;
    let run = fleet500::dev_postgres;
    let d = dir.display().to_string();
    let pid = std::process::id().to_string();
    let url = run(&["start", &d, "--stock", "--owner-pid", &pid])?;
    let result = async {
        let admin = Ctx::connect(&url).await?;
        admin
            .batch_execute(&format!(
                "ALTER SYSTEM SET max_connections = {}",
                // The previous run's backends may still be exiting as the next run connects.
                2 * listeners + 50
            ))
            .await?;
        drop(admin);
        run(&["server-stop", &d])?;
        run(&["server-start", &d])?;
        let cfg = db::config_from(Some(&url), "jrq-bench")?;
        let mut rows = vec![];
        for (layout, per_worker) in [
            ("one channel for the fleet (before)", false),
            ("a channel per worker (after)", true),
        ] {
            let (mut pg, mut client, mut rate, mut per) = (vec![], vec![], vec![], 0.0);
            for _ in 0..ctx.runs {
                let delivered = Arc::new(AtomicU64::new(0));
                let mut held = vec![];
                for i in 0..listeners {
                    let name = format!("w{i}");
                    let ch = if per_worker {
                        db::worker_channel(&name)
                    } else {
                        db::CHANNEL_WORKER.to_string()
                    };
                    let (c, mut notes) = db::listen::listen(&cfg, &[&ch]).await?;
                    let count = delivered.clone();
                    tokio::spawn(async move {
                        while notes.recv().await.is_some() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    held.push(c);
                }
                let sender = Ctx::connect(&url).await?;
                let expected = if per_worker { sends } else { sends * listeners } as u64;
                let (pg0, me0) = (
                    fleet::postgres_ticks(),
                    fleet::cpu_ticks(std::process::id()),
                );
                let t = Instant::now();
                for k in 0..sends {
                    let name = format!("w{}", k % listeners);
                    let ch = if per_worker {
                        db::worker_channel(&name)
                    } else {
                        db::CHANNEL_WORKER.to_string()
                    };
                    sender
                        .execute("SELECT pg_notify($1, $2)", &[&ch, &name])
                        .await?;
                }
                let deadline = Instant::now() + Duration::from_secs(120);
                while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let secs = t.elapsed().as_secs_f64();
                let (pg1, me1) = (
                    fleet::postgres_ticks(),
                    fleet::cpu_ticks(std::process::id()),
                );
                let got = delivered.load(Ordering::Relaxed);
                let us = |ticks: u64| ticks as f64 / fleet::ticks_per_second() * 1e6 / sends as f64;
                // (A backend that exited meanwhile takes its ticks with it.)
                pg.push(us(pg1.saturating_sub(pg0)));
                client.push(us(me1.saturating_sub(me0)));
                rate.push(sends as f64 / secs);
                per = got as f64 / sends as f64;
                drop(held);
            }
            let row = NotifyRow {
                layout: layout.into(),
                listeners,
                notifications: sends,
                deliveries_per_notify: per,
                pg_cpu_us: Stat::of(&pg),
                client_cpu_us: Stat::of(&client),
                notify_per_s: Stat::of(&rate),
            };
            eprintln!(
                "notify      {listeners} listeners, {layout}: {:.0} deliveries/notify, \
                 PostgreSQL {:.0} µs, clients {:.0} µs CPU per notification",
                row.deliveries_per_notify, row.pg_cpu_us.median, row.client_cpu_us.median
            );
            rows.push(row);
        }
        Ok(rows)
    }
    .await;
    let _ = run(&["stop", &d]);
    result
}

/// A new directory under the temporary directory (removed by whoever uses it).
pub(crate) fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}.{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    Ok(dir)
}
