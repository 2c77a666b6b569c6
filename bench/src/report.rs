//! The benchmark's outputs: a table on stderr (as it runs), JSON, `docs/benchmarks.md`,
//! and two plots (latency distribution, backlog scale).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{Results, Stat};
use crate::error::{Error, Result};

/// Fonts tried for the plots' text (Debian's fonts-dejavu-core).
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn fmt_stat(s: &Stat, unit: &str, decimals: usize) -> String {
    format!(
        "{:.d$} {unit} ({:.d$} – {:.d$})",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One target: what it is, the figure, whether it is met and by how much it is missed.
struct Target {
    what: &'static str,
    goal: String,
    got: String,
    met: bool,
    miss: String,
}

fn targets(r: &Results) -> Vec<Target> {
    let mut t = vec![];
    let pct_short = |got: f64, goal: f64| format!("{:.0} % short", (1.0 - got / goal) * 100.0);
    let pct_over = |got: f64, goal: f64| format!("{:.0} % over", (got / goal - 1.0) * 100.0);
    // Total capacity 10 (one worker x 10) with the defaults.
    let cap10 = r
        .throughput
        .iter()
        .find(|x| x.workers == 1 && x.exec == "noop" && x.prefetch.is_none_or(|p| p == 0));
    if let Some(row) = cap10 {
        let got = row.tasks_per_s.median;
        t.push(Target {
            what: "throughput, capacity 10, noop, defaults",
            goal: "≥ 9 000 tasks/s".into(),
            got: format!("{got:.0} tasks/s"),
            met: got >= 9000.0,
            miss: pct_short(got, 9000.0),
        });
        let e = row.enqueue_per_s.median;
        t.push(Target {
            what: "bulk enqueue",
            goal: "≥ 60 000 tasks/s".into(),
            got: format!("{e:.0} tasks/s"),
            met: e >= 60000.0,
            miss: pct_short(e, 60000.0),
        });
    }
    if let Some(l) = &r.latency {
        let p50 = l.start_ms.p50.median;
        let p99 = l.start_ms.p99.median;
        t.push(Target {
            what: "latency insert → start, p50",
            goal: "≤ 2 ms".into(),
            got: format!("{p50:.2} ms"),
            met: p50 <= 2.0,
            miss: pct_over(p50, 2.0),
        });
        t.push(Target {
            what: "latency insert → start, p99",
            goal: "≤ 5 ms".into(),
            got: format!("{p99:.2} ms"),
            met: p99 <= 5.0,
            miss: pct_over(p99, 5.0),
        });
    }
    if let (Some(small), Some(big)) = (
        r.backlog.iter().find(|b| b.finished_rows == 0),
        r.backlog
            .iter()
            .filter(|b| b.finished_rows == 0)
            .max_by_key(|b| b.pending),
    ) {
        let ratio = big.tasks_per_s.median / small.tasks_per_s.median.max(1e-9);
        t.push(Target {
            what: "throughput with the largest backlog vs the smallest",
            goal: "≥ 80 %".into(),
            got: format!(
                "{:.0} % ({} vs {} pending)",
                ratio * 100.0,
                big.pending,
                small.pending
            ),
            met: ratio >= 0.8,
            miss: pct_short(ratio, 0.8),
        });
    }
    if let Some(f) = r.fleet.iter().max_by_key(|f| f.workers) {
        t.push(Target {
            what: "idle fleet connections",
            goal: format!("{} workers + assigner within max_connections", f.workers),
            got: format!("{} of {}", f.connections, f.max_connections),
            met: f.connections < f.max_connections,
            miss: "over the limit".into(),
        });
        let cpu = f.db_cpu_pct + f.fleet_cpu_pct;
        t.push(Target {
            what: "idle fleet CPU (database + fleet)",
            goal: "≈ 0 (< 1 % of a core)".into(),
            got: format!("{cpu:.2} % of a core"),
            met: cpu < 1.0,
            miss: pct_over(cpu, 1.0),
        });
    }
    if let Some(f) = r.fleet500.iter().find(|f| f.limit.starts_with("pool_size")) {
        t.push(Target {
            what: "server connections of a pooled fleet (through PgBouncer)",
            goal: format!("{} workers on ≤ 50", f.workers),
            got: format!("at most {}", f.connections_max),
            met: f.connections_max <= 50,
            miss: pct_over(f.connections_max as f64, 50.0),
        });
    }
    if let Some(fp) = &r.footprint {
        t.push(Target {
            what: "idle worker resident memory",
            goal: "≤ 16 MiB".into(),
            got: mib(fp.worker_idle_kib),
            met: fp.worker_idle_kib <= 16 * 1024,
            miss: pct_over(fp.worker_idle_kib as f64, 16.0 * 1024.0),
        });
    }
    t
}

/// Writes the JSON results.
pub fn write_json(r: &Results, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(r).map_err(|e| Error::encode("the results", e))?;
    std::fs::write(path, text).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Regenerates `DIR/benchmarks.md` and its plots.
pub fn write_docs(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let fonts = load_font();
    let mut plots = vec![];
    if let Some(l) = &r.latency {
        let path = dir.join("bench-latency.png");
        plot_latency(l, &path, fonts).map_err(|e| Error::Bench(format!("latency plot: {e}")))?;
        plots.push("bench-latency.png");
    }
    if !r.backlog.is_empty() {
        let path = dir.join("bench-backlog.png");
        plot_backlog(r, &path, fonts).map_err(|e| Error::Bench(format!("backlog plot: {e}")))?;
        plots.push("bench-backlog.png");
    }
    let notes = std::fs::read_to_string(dir.join("benchmarks-notes.md")).unwrap_or_default();
    let md = markdown(r, &plots, &notes);
    let path = dir.join("benchmarks.md");
    std::fs::write(&path, md).map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

fn markdown(r: &Results, plots: &[&str], notes: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# jrq benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `{}` on {} ({} runs per figure{}; {:.0} s in all). Each figure is the \
         **median**, with (min – max) over the runs. Do not edit by hand: run the command \
         again. The analysis comes from `docs/benchmarks-notes.md`.\n",
        r.command,
        r.date,
        r.runs,
        if r.quick { ", QUICK sizes" } else { "" },
        r.seconds
    );
    if let Some(m) = &r.machine {
        let _ = writeln!(s, "## Machine\n");
        let _ = writeln!(
            s,
            "- {} cores ({}), {:.1} GiB memory, Linux {}",
            m.cores, m.cpu, m.memory_gib, m.kernel
        );
        let settings: Vec<String> = m
            .settings
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        let _ = writeln!(
            s,
            "- PostgreSQL {} on the same machine, {}",
            m.postgres,
            settings.join(", ")
        );
        let _ = writeln!(s, "- the fleet runs the release binaries as separate processes, one database connection each\n");
    }
    let ts = targets(r);
    if !ts.is_empty() {
        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | goal | measured | |");
        let _ = writeln!(s, "|---|---|---|---|");
        for t in &ts {
            let verdict = if t.met {
                "met".to_string()
            } else {
                format!("**missed**: {}", t.miss)
            };
            let _ = writeln!(s, "| {} | {} | {} | {} |", t.what, t.goal, t.got, verdict);
        }
        let _ = writeln!(s);
    }
    if !r.throughput.is_empty() {
        let _ = writeln!(s, "## 1. Throughput\n");
        let _ = writeln!(
            s,
            "N tasks are bulk-enqueued (`tasks_insert`, one transaction), then one assigner and the \
             workers start and drain the queue. Tasks/s is N divided by the time from the first \
             assignment to the last completion, from the database's own timestamps.\n"
        );
        let _ = writeln!(s, "| fleet | tasks | end to end | bulk enqueue |");
        let _ = writeln!(s, "|---|---|---|---|");
        for t in &r.throughput {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.label,
                t.tasks,
                fmt_stat(&t.tasks_per_s, "tasks/s", 0),
                fmt_stat(&t.enqueue_per_s, "tasks/s", 0)
            );
        }
        let _ = writeln!(
            s,
            "\nWith `sleep:10ms` the ceiling is capacity / 10 ms: 1 000 tasks/s for 10 slots, \
             4 000 for 40 — there the concurrency, not the queue, is the limit.\n"
        );
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(s, "## 2. Latency\n");
        let _ = writeln!(
            s,
            "An idle, listening fleet (one assigner, one worker × 10, `noop`); {} tasks inserted \
             one at a time, {} ms apart, each in its own transaction. Times are the database's: \
             `created_at` (the insert) to `started_at` (the worker's claim) and `completed_at`.\n",
            l.tasks, l.gap_ms
        );
        let _ = writeln!(s, "| | p50 | p95 | p99 | max |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for (name, p) in [
            ("insert → start", &l.start_ms),
            ("insert → completed", &l.complete_ms),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                fmt_stat(&p.p50, "ms", 2),
                fmt_stat(&p.p95, "ms", 2),
                fmt_stat(&p.p99, "ms", 2),
                fmt_stat(&p.max, "ms", 2)
            );
        }
        let _ = writeln!(s);
        if plots.contains(&"bench-latency.png") {
            let _ = writeln!(s, "![latency distribution](bench-latency.png)\n");
        }
    }
    if !r.backlog.is_empty() {
        let _ = writeln!(s, "## 3. Backlog scale\n");
        let _ = writeln!(
            s,
            "Throughput (one assigner, one worker × 10, `noop`) while a backlog is already in the \
             table, measured over the first {} completions of each run; and with a table that has \
             already churned through finished tasks that were not pruned.\n",
            r.backlog[0].measured_tasks
        );
        let _ = writeln!(s, "| table | tasks/s |");
        let _ = writeln!(s, "|---|---|");
        for b in &r.backlog {
            let _ = writeln!(
                s,
                "| {} | {} |",
                b.label,
                fmt_stat(&b.tasks_per_s, "tasks/s", 0)
            );
        }
        let _ = writeln!(s);
        if plots.contains(&"bench-backlog.png") {
            let _ = writeln!(s, "![backlog scale](bench-backlog.png)\n");
        }
    }
    if !r.fleet.is_empty() {
        let _ = writeln!(s, "## 4. Fleet scale\n");
        let _ = writeln!(
            s,
            "Idle fleets: one assigner and N workers registered and listening. Connections are \
             the fleet's sessions in `pg_stat_activity`; the round time is the assigner's idle \
             round (lock candidates, read loads, look for work) measured in-process, 30 rounds; \
             CPU is measured over {:.0} s at rest, in % of one core.\n",
            r.fleet[0].idle_window_s
        );
        let _ = writeln!(
            s,
            "| workers | connections | assigner round | database CPU | fleet CPU |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for f in &r.fleet {
            let _ = writeln!(
                s,
                "| {} | {} of {} | {} | {:.2} % | {:.2} % |",
                f.workers,
                f.connections,
                f.max_connections,
                fmt_stat(&f.assigner_round_ms, "ms", 2),
                f.db_cpu_pct,
                f.fleet_cpu_pct
            );
        }
        let _ = writeln!(s);
    }
    if let Some(fp) = &r.footprint {
        let _ = writeln!(s, "## 5. Footprint\n");
        let _ = writeln!(s, "| | resident memory |");
        let _ = writeln!(s, "|---|---|");
        let _ = writeln!(s, "| worker, idle | {} |", mib(fp.worker_idle_kib));
        let _ = writeln!(
            s,
            "| worker, busy (noop, capacity 10) | {} |",
            mib(fp.worker_busy_kib)
        );
        let _ = writeln!(s, "| assigner, idle | {} |", mib(fp.assigner_idle_kib));
        let _ = writeln!(s, "| assigner, busy | {} |", mib(fp.assigner_busy_kib));
        let _ = writeln!(s, "\n| binary (release) | size |");
        let _ = writeln!(s, "|---|---|");
        for (b, size) in &fp.binaries {
            let _ = writeln!(s, "| `{b}` | {:.1} MiB |", *size as f64 / 1024.0 / 1024.0);
        }
        let _ = writeln!(s);
    }
    if !r.ceiling.is_empty() {
        let _ = writeln!(s, "## 6. Ceiling\n");
        let _ = writeln!(
            s,
            "The same claim-and-complete cycle on `jr_work_queue` done by `pgbench` (one \
             statement: pick pending rows in the order of service with `SKIP LOCKED`, mark them \
             completed), {} clients — the machine's own limit. jrq does more per task (assign, \
             claim, complete, three events, notifications).\n",
            r.ceiling[0].clients
        );
        let best = r
            .throughput
            .iter()
            .filter(|t| t.exec == "noop")
            .map(|t| t.tasks_per_s.median)
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "| pgbench | rows/s | jrq's best noop throughput as a share |"
        );
        let _ = writeln!(s, "|---|---|---|");
        for c in &r.ceiling {
            let share = if c.rows_per_s.median > 0.0 && best > 0.0 {
                format!("{:.0} %", best / c.rows_per_s.median * 100.0)
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "| {} row(s) per transaction | {} | {} |",
                c.rows_per_txn,
                fmt_stat(&c.rows_per_s, "rows/s", 0),
                share
            );
        }
        let _ = writeln!(s);
    }
    if let Some(o) = &r.output {
        let _ = writeln!(s, "## 7. Live output\n");
        let _ = writeln!(
            s,
            "Noop throughput (1 worker x 10, {} tasks, assigner included) alone, and next to \
             a second worker running {} tasks that print {} lines of about 60 bytes a second \
             each, streamed into `jr_task_output` (batches every 500 ms, 1 MiB kept per \
             task). The database growth is what the chatty tasks alone write, measured over a \
             window before the noop tasks: the table stays bounded (trimmed to the keep), \
             the WAL is the cost that grows.\n",
            o.noop_tasks, o.chatty_tasks, o.lines_per_s
        );
        let cut = if o.alone.median > 0.0 {
            format!(
                "{:.0} %",
                (1.0 - o.with_chatty.median / o.alone.median) * 100.0
            )
        } else {
            "-".into()
        };
        let rows = [
            ("noop throughput alone", fmt_stat(&o.alone, "tasks/s", 0)),
            (
                "noop throughput next to the chatty tasks",
                fmt_stat(&o.with_chatty, "tasks/s", 0),
            ),
            ("throughput lost (medians)", cut),
            (
                "output chunks written",
                fmt_stat(&o.output_rows_per_s, "/s", 0),
            ),
            (
                "WAL of the chatty tasks",
                fmt_stat(&o.wal_mib_per_hour, "MiB/h", 0),
            ),
            (
                "`jr_task_output` at the end",
                fmt_stat(&o.table_mib, "MiB", 1),
            ),
            (
                "chatty worker's CPU",
                fmt_stat(&o.chatty_worker_cpu_pct, "% of a core", 0),
            ),
        ];
        let _ = writeln!(s, "| figure | value |");
        let _ = writeln!(s, "|---|---|");
        for (figure, value) in rows {
            let _ = writeln!(s, "| {figure} | {value} |");
        }
        let _ = writeln!(s);
    }
    if !r.notify.is_empty() {
        let _ = writeln!(s, "## 8. Notifications at fleet scale\n");
        let _ = writeln!(
            s,
            "{} connections LISTEN as {} workers do; one sender notifies one of them per \
             transaction ({} notifications), as an assigner round of one task does. Before \
             issue 16 every worker listened on one channel; now each has its own \
             (`jrq_worker:NAME`). CPU is summed over every PostgreSQL process and over the \
             benchmark process (the listeners' clients and the sender). A private cluster \
             with stock settings and `max_connections` raised to fit.\n",
            r.notify[0].listeners, r.notify[0].listeners, r.notify[0].notifications
        );
        let _ = writeln!(
            s,
            "| layout | deliveries per notification | PostgreSQL CPU per notification | clients' CPU per notification | notifications/s |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for n in &r.notify {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} |",
                n.layout,
                n.deliveries_per_notify,
                fmt_stat(&n.pg_cpu_us, "µs", 0),
                fmt_stat(&n.client_cpu_us, "µs", 0),
                fmt_stat(&n.notify_per_s, "/s", 0)
            );
        }
        let _ = writeln!(s);
    }
    if !r.fleet500.is_empty() {
        let f = &r.fleet500[0];
        let _ = writeln!(s, "## 9. A fleet of {} workers\n", f.workers);
        let _ = writeln!(
            s,
            "{} real `jr-queue-worker` processes (capacity 1; a fifth each on `sleep:1s` … \
             `sleep:5s`), {} assigners and a watching monitor (`--watch 5s`, `--dead-after \
             {:.0}s`) on a private cluster (stock settings, `max_connections` raised to fit \
             the direct layout), first connected directly, then through PgBouncer in \
             transaction mode (`JRQ_POOL_MODE=transaction`). At rest: {} s after every \
             worker is online. Under load: tasks inserted at half the fleet's capacity for \
             {} s. Then one busy worker is killed (SIGKILL) and the time until its task \
             starts on another worker is taken. CPU in % of one core (the machine has {}); \
             one run (the scenario takes minutes).\n",
            f.workers,
            f.assigners,
            f.dead_after_s,
            if r.quick { 10 } else { 20 },
            if r.quick { 15 } else { 30 },
            r.machine.as_ref().map(|m| m.cores).unwrap_or(0),
        );
        let _ = writeln!(
            s,
            "| figure | {} |",
            r.fleet500
                .iter()
                .map(|f| f.layout.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|{}", "---|".repeat(r.fleet500.len()));
        let line =
            |s: &mut String, name: &str, f: &dyn Fn(&crate::fleet500::Fleet500Row) -> String| {
                let cells: Vec<String> = r.fleet500.iter().map(f).collect();
                let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
            };
        line(&mut s, "poll intervals", &|f| f.intervals.clone());
        line(&mut s, "server connections: limit", &|f| f.limit.clone());
        line(
            &mut s,
            "server connections: at rest / most under load",
            &|f| format!("{} / {}", f.connections_idle, f.connections_max),
        );
        line(&mut s, "start: all workers online after", &|f| {
            format!("{:.1} s", f.start_s)
        });
        line(&mut s, "fleet memory (RSS, all processes)", &|f| {
            format!("{:.0} MiB", f.fleet_rss_mib)
        });
        line(&mut s, "at rest: PostgreSQL CPU / fleet CPU", &|f| {
            format!("{:.1} % / {:.1} %", f.idle_pg_cpu_pct, f.idle_fleet_cpu_pct)
        });
        line(&mut s, "at rest: PgBouncer CPU", &|f| {
            f.idle_bouncer_cpu_pct
                .map(|c| format!("{c:.1} %"))
                .unwrap_or_else(|| "-".into())
        });
        line(&mut s, "at rest: commits/s", &|f| {
            format!("{:.0}", f.idle_commits_per_s)
        });
        line(&mut s, "load: offered / completed tasks/s", &|f| {
            format!(
                "{:.0} / {:.0}",
                f.load_offered_per_s, f.load_completed_per_s
            )
        });
        line(&mut s, "load: PostgreSQL CPU / fleet CPU", &|f| {
            format!("{:.0} % / {:.0} %", f.load_pg_cpu_pct, f.load_fleet_cpu_pct)
        });
        line(&mut s, "load: PgBouncer CPU", &|f| {
            f.load_bouncer_cpu_pct
                .map(|c| format!("{c:.0} %"))
                .unwrap_or_else(|| "-".into())
        });
        line(&mut s, "load: commits/s", &|f| {
            format!("{:.0}", f.load_commits_per_s)
        });
        line(
            &mut s,
            "assigner round (rounds that assigned) p50 / p99",
            &|f| {
                format!(
                    "{:.1} / {:.1} ms ({} rounds)",
                    f.round_ms_p50, f.round_ms_p99, f.rounds
                )
            },
        );
        line(&mut s, "dispatch (insert → start) p50 / p99", &|f| {
            format!(
                "{:.0} / {:.0} ms ({} tasks)",
                f.dispatch_ms_p50, f.dispatch_ms_p99, f.dispatched
            )
        });
        line(
            &mut s,
            "killed busy worker: its task started again after",
            &|f| {
                f.dead_rerun_s
                    .map(|v| format!("{v:.1} s"))
                    .unwrap_or_else(|| "not within 3 × dead-after".into())
            },
        );
        let _ = writeln!(s);
    }
    if !r.pressure.is_empty() {
        let p = &r.pressure[0];
        let secs: Vec<String> = p
            .phases
            .iter()
            .map(|x| format!("{:.0} s", x.seconds))
            .collect();
        let _ = writeln!(s, "## 10. Under pressure\n");
        let _ = writeln!(
            s,
            "One assigner and two workers × 8 (`sleep:1ms`) fed at {:.0} tasks/s by batched \
             INSERTs credited on wall-clock time, on the private cluster; phases clean ({}), \
             stress ({}), recovery ({}). Stress: *idle* — one session `BEGIN; SELECT \
             txid_current();` left idle in transaction (the vacuum horizon held); *rr* — four \
             overlapping REPEATABLE READ readers holding a snapshot 2 s each; *overload* — the \
             feed at 1.5 ×. Completed/s is the median of 5 s samples; insert → start of the \
             tasks inserted in the phase; per completed task: dead row versions added, row \
             updates (HOT share), WAL, commits. *Kept*: the stress phase's completions against what it offered. One \
             run.\n",
            p.rate, secs[0], secs[1], secs[2]
        );
        let _ = writeln!(
            s,
            "| cell | phase | offered/s | completed/s | insert → start p50 / p99 | pending max \
             | dead rows max (added/task) | updates/task (HOT) | WAL/task | commits/task |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for row in &r.pressure {
            for ph in &row.phases {
                let _ = writeln!(
                    s,
                    "| {} | {}{} | {:.0} | {:.0} | {:.1} / {:.1} ms | {} | {} ({:+.2}) | \
                     {:.2} ({:.0} %) | {:.0} B | {:.2} |",
                    row.cell,
                    ph.name,
                    if ph.name == "stress" {
                        format!(" (kept **{:.0} %**)", row.kept * 100.0)
                    } else {
                        String::new()
                    },
                    ph.offered_per_s,
                    ph.completed_per_s,
                    ph.start_p50_ms,
                    ph.start_p99_ms,
                    ph.pending_max,
                    ph.dead_tuples_max,
                    ph.dead_per_task,
                    ph.updates_per_task,
                    ph.hot_share * 100.0,
                    ph.wal_bytes_per_task,
                    ph.commits_per_task
                );
            }
        }
        let _ = writeln!(s);
    }
    if !notes.trim().is_empty() {
        let _ = writeln!(s, "{}", notes.trim_end());
    }
    s
}

fn load_font() -> bool {
    for p in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(p) {
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                return true;
            }
        }
    }
    false
}

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn plot_latency(l: &super::LatencyResult, path: &Path, text: bool) -> PlotResult {
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    // Cumulative distribution: x = latency (ms), y = share of tasks at or below it.
    let max_x = l
        .complete_samples
        .iter()
        .chain(l.start_samples.iter())
        .cloned()
        .fold(1.0, f64::max)
        .min(50.0);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(
                "Latency from insert (last run): cumulative share of tasks",
                ("sans-serif", 20),
            )
            .x_label_area_size(40)
            .y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(0f64..max_x, 0f64..100f64)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("milliseconds after the insert")
            .y_desc("% of tasks")
            .draw()?;
    }
    for (samples, color, label) in [
        (&l.start_samples, BLUE, "executor started"),
        (&l.complete_samples, RED, "completed"),
    ] {
        let n = samples.len().max(1) as f64;
        let series = chart.draw_series(LineSeries::new(
            samples
                .iter()
                .enumerate()
                .map(|(i, v)| (v.min(max_x), (i + 1) as f64 / n * 100.0)),
            color.stroke_width(2),
        ))?;
        if text {
            series
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn plot_backlog(r: &Results, path: &Path, text: bool) -> PlotResult {
    let pts: Vec<(f64, f64)> = r
        .backlog
        .iter()
        .filter(|b| b.finished_rows == 0)
        .map(|b| ((b.pending as f64).log10(), b.tasks_per_s.median))
        .collect();
    let churned: Vec<(f64, f64)> = r
        .backlog
        .iter()
        .filter(|b| b.finished_rows > 0)
        .map(|b| ((b.pending as f64).log10(), b.tasks_per_s.median))
        .collect();
    let max_y = pts
        .iter()
        .chain(churned.iter())
        .map(|p| p.1)
        .fold(1.0, f64::max)
        * 1.2;
    let (x0, x1) = (
        pts.iter().map(|p| p.0).fold(f64::MAX, f64::min) - 0.3,
        pts.iter().map(|p| p.0).fold(f64::MIN, f64::max) + 0.3,
    );
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption("Throughput vs backlog already pending", ("sans-serif", 20))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, 0f64..max_y)?;
    if text {
        chart
            .configure_mesh()
            .x_desc("pending tasks (log scale)")
            .y_desc("tasks/s")
            .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
            .draw()?;
    }
    chart.draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2)))?;
    let dots = chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, BLUE.filled())))?;
    if text {
        dots.label("pending backlog")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, BLUE.filled()));
    }
    let churn = chart.draw_series(
        churned
            .iter()
            .map(|p| Cross::new(*p, 8, RED.stroke_width(3))),
    )?;
    if text {
        churn
            .label("after churning finished tasks")
            .legend(|(x, y)| Cross::new((x + 10, y), 6, RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
