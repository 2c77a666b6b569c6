//! Stale-worker cleanup (`jr-stale-cleanup`, a oneshot for a timer or cron): finds this
//! host's `jr-queue-worker` processes by their executable in /proc (never by a name
//! pattern), compares each with the database, and — with `--force` — ends the stale ones
//! (SIGTERM, then SIGKILL after a grace) and releases registry rows whose process is gone.
//! A dry run changes nothing.
//!
//! A process is stale when
//! - it serves a run (`--run` / `RUN_FILTER_ID` / `JRQ_RUN`) that is completed, error,
//!   archived or gone;
//! - the registry gives its name to another live process (a duplicate, or a name taken
//!   over by another instance).
//!
//! A process whose registry row names a process that is gone may be starting: it is left
//! alone. Processes that are not jrq workers are never looked at, and workers that use
//! another database (another jrq installation on this host) are not judged.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::db::{runs, tasks, workers, ServerId};
use crate::error::Result;
use crate::{host, procs};

/// Default time a stale worker gets to drain after SIGTERM before SIGKILL (longer than
/// the worker's default 20 s drain).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A `jr-queue-worker` process on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerProcess {
    pub pid: i32,
    pub name: Option<String>,
    /// The run filter as written (may not be a valid id).
    pub run: Option<String>,
    /// The server and database its environment points at; `None` when its environment
    /// is hidden (see `env_hidden`) or holds no valid address.
    #[serde(skip)]
    pub server: Option<ServerId>,
    /// Its environment could not be read: a worker makes itself non-dumpable, which hides
    /// its environment from other processes of its user (root still sees it).
    pub env_hidden: bool,
}

/// The value of `--flag v` or `--flag=v` in a command line.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v.to_string());
        }
    }
    None
}

/// Reads `--name`, `--run` (either `--x v` or `--x=v`) from the arguments, falling back to
/// `JRQ_NAME`, `JRQ_RUN` and `RUN_FILTER_ID` from the environment, as the worker does.
pub fn parse_worker_args(
    args: &[String],
    env: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let opt = |flag: &str| flag_value(args, flag);
    let nonempty = |v: Option<&String>| v.filter(|s| !s.trim().is_empty()).cloned();
    let name = opt("--name").or_else(|| nonempty(env.get("JRQ_NAME")));
    let run = opt("--run")
        .or_else(|| nonempty(env.get("JRQ_RUN")))
        .or_else(|| nonempty(env.get("RUN_FILTER_ID")));
    (name, run)
}

/// This host's worker processes (by executable), except this process itself.
pub fn scan_processes() -> Vec<WorkerProcess> {
    let me = std::process::id() as i32;
    let mut out: Vec<WorkerProcess> = procs::all()
        .into_iter()
        .filter(|p| p.pid != me && p.state != 'Z' && host::is_live_worker(p.pid))
        .map(|p| {
            let args = procs::cmdline(p.pid).unwrap_or_default();
            let env = procs::environ(p.pid).filter(|e| !e.is_empty());
            let env_hidden = env.is_none();
            let env = env.unwrap_or_default();
            let (name, run) = parse_worker_args(&args, &env);
            let url =
                flag_value(&args, "--database-url").or_else(|| env.get("DATABASE_URL").cloned());
            let server = (!env_hidden)
                .then(|| ServerId::from_env(url.as_deref(), &|k| env.get(k).cloned()).ok())
                .flatten();
            WorkerProcess {
                pid: p.pid,
                name,
                run,
                server,
                env_hidden,
            }
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// A worker process not judged: it uses another database, or nothing tells which.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub pid: i32,
    pub name: Option<String>,
    pub why: String,
}

/// Splits the host's worker processes into those of this database and the rest. A
/// process's own environment, when readable, decides — compared by server and database
/// rather than as text (`localhost` is `127.0.0.1`), and not overruled by a registry row
/// (which anyone with write access to the table could forge). A process whose environment
/// is hidden is this database's when it is registered here (this host, its pid, and the
/// name its command line gives); otherwise it is not judged. Names and runs the command
/// line does not give come from the registry.
pub fn this_databases(
    all: Vec<WorkerProcess>,
    own: &ServerId,
    registered: &[workers::HostWorker],
) -> (Vec<WorkerProcess>, Vec<Skipped>) {
    let mut ours = vec![];
    let mut skipped = vec![];
    for mut p in all {
        let row = registered
            .iter()
            .find(|r| r.pid == p.pid && p.name.as_ref().is_none_or(|n| *n == r.name));
        let why = match (&p.server, row) {
            (Some(s), _) if !s.same_database(own) => Some("uses another database".to_string()),
            (Some(_), _) | (None, Some(_)) => None,
            (None, None) if p.env_hidden => Some(
                "its environment is hidden and no worker of this database is registered \
                 with its pid and name (another database, or still starting)"
                    .to_string(),
            ),
            (None, None) => Some("its environment holds no valid database address".to_string()),
        };
        match why {
            Some(why) => skipped.push(Skipped {
                pid: p.pid,
                name: p.name.clone(),
                why,
            }),
            None => {
                if let Some(row) = row {
                    p.name.get_or_insert_with(|| row.name.clone());
                    if p.run.is_none() {
                        p.run = row.run_id.map(|r| r.to_string());
                    }
                }
                ours.push(p);
            }
        }
    }
    (ours, skipped)
}

/// What to do about one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Ok(String),
    Stale(String),
}

/// One process and its verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub process: WorkerProcess,
    pub verdict: Verdict,
    /// With --force: how it ended.
    pub ended: Option<String>,
}

/// A registry row of this host whose process is gone.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryFix {
    pub name: String,
    pub pid: Option<i32>,
    pub why: String,
    pub done: bool,
    pub tasks_released: u64,
}

/// The whole result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub host: String,
    pub force: bool,
    pub findings: Vec<Finding>,
    /// Worker processes not judged: another database's, or unknown.
    pub skipped: Vec<Skipped>,
    pub registry: Vec<RegistryFix>,
}

/// Judges each process against the database.
pub async fn assess(
    client: &Client,
    procs: &[WorkerProcess],
    this_host: &str,
) -> Result<Vec<Finding>> {
    let mut out = vec![];
    for p in procs {
        let verdict = judge(client, p, this_host).await?;
        out.push(Finding {
            process: p.clone(),
            verdict,
            ended: None,
        });
    }
    Ok(out)
}

async fn judge(client: &Client, p: &WorkerProcess, this_host: &str) -> Result<Verdict> {
    let Some(name) = &p.name else {
        return Ok(Verdict::Ok(
            "its worker name cannot be read: left alone".into(),
        ));
    };
    let mut serving = "serving any run".to_string();
    if let Some(run_text) = &p.run {
        let Ok(run) = Uuid::parse_str(run_text.trim()) else {
            return Ok(Verdict::Ok(format!(
                "run filter '{run_text}' is not a run id: left alone"
            )));
        };
        match runs::runs_status(client, run).await? {
            None => {
                return Ok(Verdict::Stale(format!(
                    "targeting run {run}, which no longer exists"
                )))
            }
            Some(s) if s.is_terminal() => {
                return Ok(Verdict::Stale(format!("targeting run {run} (status: {s})")))
            }
            Some(s) => serving = format!("targeting run {run} (status: {s})"),
        }
    }
    let Some(h) = workers::workers_holder(client, name).await? else {
        return Ok(Verdict::Ok(format!(
            "{serving}; not registered yet (starting?)"
        )));
    };
    let workers::NameHolder {
        host: h_host,
        pid: h_pid,
        is_online: online,
        fresh,
    } = h;
    if h_host == this_host && h_pid == Some(p.pid) {
        return Ok(Verdict::Ok(format!("{serving}; registered")));
    }
    let other = format!(
        "pid {} on {h_host}",
        h_pid.map(|x| x.to_string()).unwrap_or_else(|| "?".into())
    );
    let other_alive = if h_host == this_host {
        h_pid.is_some_and(host::is_live_worker)
    } else {
        online && fresh.unwrap_or(false)
    };
    if other_alive {
        Ok(Verdict::Stale(format!(
            "worker name '{name}' belongs to {other}: this process is a duplicate"
        )))
    } else {
        Ok(Verdict::Ok(format!(
            "{serving}; the registry names {other}, which is gone: this one may be starting"
        )))
    }
}

/// SIGTERM, then SIGKILL after `grace`; returns how the process ended.
pub fn end_process(pid: i32, grace: Duration) -> String {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return "already gone".into();
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !host::is_live_worker(pid) {
            return "ended after SIGTERM".into();
        }
        // Polling the process table while it drains.
        std::thread::sleep(Duration::from_millis(50));
    }
    if kill(p, Signal::SIGKILL).is_err() {
        return "ended after SIGTERM".into();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && host::is_live_worker(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
    format!("killed with SIGKILL after {}s", grace.as_secs())
}

/// Registry rows of this host whose process is gone (or from an earlier boot). With
/// `force`, each is marked `lost` (offline; this host's health monitor restarts its unit)
/// and its tasks released, under the row's lock so that a new instance registering
/// meanwhile is never disturbed.
pub async fn fix_registry(
    client: &mut Client,
    this_host: &str,
    boot_id: &str,
    force: bool,
) -> Result<Vec<RegistryFix>> {
    let mut out = vec![];
    for row in workers::workers_online_on_host(client, this_host).await? {
        let workers::OnlineWorker {
            name,
            pid,
            boot_id: row_boot,
        } = row;
        let why = if row_boot
            .as_deref()
            .is_some_and(|b| !b.is_empty() && b != boot_id)
        {
            "its process ran before this boot".to_string()
        } else if pid.is_none_or(|p| !host::is_live_worker(p)) {
            format!(
                "its process (pid {}) is gone",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            )
        } else {
            continue;
        };
        let mut fix = RegistryFix {
            name: name.clone(),
            pid,
            why: why.clone(),
            done: false,
            tasks_released: 0,
        };
        if force {
            // The row is marked first: it stays locked, so a new instance registering
            // meanwhile waits, and one that registered already is not touched.
            let txn = client.transaction().await?;
            let detail = format!("stale-cleanup: worker {why}");
            let note = format!("marked offline: {detail}");
            if workers::workers_mark_lost(&txn, &name, this_host, pid, &note).await? {
                let rescued =
                    tasks::tasks_rescue_worker(&txn, &name, "stale-cleanup", &detail).await?;
                let unassigned = tasks::tasks_unassign_worker(&txn, &name, &detail).await?;
                txn.commit().await?;
                fix.done = true;
                fix.tasks_released = rescued.len() as u64 + unassigned;
            }
        }
        out.push(fix);
    }
    Ok(out)
}

/// The report as people read it (like the operators' own script).
pub fn render_text(r: &CleanupReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Scanning this host's jr-queue-worker processes ({})...",
        r.host
    );
    let _ = writeln!(s, "Found {} worker process(es)", r.findings.len());
    for f in &r.findings {
        let name = f.process.name.as_deref().unwrap_or("?");
        let (tag, reason) = match &f.verdict {
            Verdict::Ok(x) => ("ok   ", x),
            Verdict::Stale(x) => ("STALE", x),
        };
        let _ = write!(s, "  {tag} pid {} worker {name}: {reason}", f.process.pid);
        if let Some(e) = &f.ended {
            let _ = write!(s, " -> {e}");
        }
        let _ = writeln!(s);
    }
    for x in &r.skipped {
        let name = x.name.as_deref().unwrap_or("?");
        let _ = writeln!(s, "  skip  pid {} worker {name}: {}", x.pid, x.why);
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(
            s,
            "Not judged: {} worker process(es) of another database (or unknown)",
            r.skipped.len()
        );
    }
    let stale = r
        .findings
        .iter()
        .filter(|f| matches!(f.verdict, Verdict::Stale(_)))
        .count();
    let _ = writeln!(s, "Found {stale} stale worker(s)");
    for x in &r.registry {
        let verb = match (r.force, x.done) {
            (true, true) => format!("marked offline, {} task(s) released", x.tasks_released),
            (true, false) => "changed meanwhile: left alone".into(),
            (false, _) => "would be marked offline and its tasks released".into(),
        };
        let _ = writeln!(s, "  registry: worker '{}' {}: {verb}", x.name, x.why);
    }
    if !r.force && (stale > 0 || !r.registry.is_empty()) {
        let _ = writeln!(s, "Dry run: nothing was changed; run with --force to act");
    } else if r.force {
        let _ = writeln!(s, "Cleanup complete");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn worker_arguments() {
        let env = HashMap::new();
        assert_eq!(
            parse_worker_args(&v(&["jr-queue-worker", "--name", "a", "--run=r1"]), &env),
            (Some("a".into()), Some("r1".into()))
        );
        let env: HashMap<String, String> = [
            ("JRQ_NAME".to_string(), "b".to_string()),
            ("RUN_FILTER_ID".to_string(), "r2".to_string()),
        ]
        .into();
        assert_eq!(
            parse_worker_args(&v(&["jr-queue-worker", "--exec", "noop"]), &env),
            (Some("b".into()), Some("r2".into()))
        );
        assert_eq!(parse_worker_args(&v(&["x"]), &HashMap::new()), (None, None));
    }
}

/// Options of `jr-stale-cleanup`; each also from a `JRQ_*` variable.
#[derive(Debug, clap::Parser)]
#[command(
    name = "jr-stale-cleanup",
    version,
    about = "jr-stale-cleanup — find (and with --force, end) this host's worker processes that have no reason to live"
)]
pub struct CleanupArgs {
    /// Act: end stale processes and release registry rows whose process is gone. Without
    /// it, a dry run that changes nothing.
    #[arg(long, env = "JRQ_FORCE")]
    pub force: bool,
    /// After SIGTERM, time a stale worker gets to drain before SIGKILL. Range: 0s to 1h.
    #[arg(long, env = "JRQ_GRACE", default_value = "30s", value_parser = crate::validate::duration_in("0s", "1h"))]
    pub grace: Duration,
    /// Print the report as JSON.
    #[arg(long, env = "JRQ_JSON")]
    pub json: bool,
    /// Log format: auto, text, json, journald.
    #[arg(long, env = "JRQ_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: crate::telemetry::LogFormat,
    /// PostgreSQL address (URL or libpq "key=value"); default: the libpq PG* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Runs the cleanup as the options say and prints the report.
pub async fn run(args: CleanupArgs) -> Result<()> {
    let db = crate::db::config_from(args.database_url.as_deref(), "jr-stale-cleanup")?;
    let mut client = crate::db::connect(&db).await?;
    crate::db::check_schema(&client).await?;
    let this_host = host::hostname();
    let own = ServerId::from_env(args.database_url.as_deref(), &|k| std::env::var(k).ok())?;
    let registered = workers::workers_registered_on_host(&client, &this_host).await?;
    let (procs, skipped) = this_databases(scan_processes(), &own, &registered);
    if !skipped.is_empty() {
        tracing::info!(
            processes = skipped.len(),
            "worker processes of another database (or unknown) are not judged"
        );
    }
    let mut report = CleanupReport {
        host: this_host.clone(),
        force: args.force,
        findings: assess(&client, &procs, &this_host).await?,
        skipped,
        registry: vec![],
    };
    if args.force {
        // End the stale processes in parallel: each may take the whole grace.
        let handles: Vec<_> = report
            .findings
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.verdict, Verdict::Stale(_)))
            .map(|(i, f)| {
                let (pid, grace) = (f.process.pid, args.grace);
                (
                    i,
                    tokio::task::spawn_blocking(move || end_process(pid, grace)),
                )
            })
            .collect();
        for (i, h) in handles {
            let ended = h.await.unwrap_or_else(|e| format!("could not end it: {e}"));
            tracing::info!(pid = report.findings[i].process.pid, ended = %ended, "stale worker");
            report.findings[i].ended = Some(ended);
        }
    }
    report.registry = fix_registry(&mut client, &this_host, &host::boot_id(), args.force).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| crate::Error::encode("the report", e))?;
        crate::process::print_out(&format!("{text}\n"));
    } else {
        // Names and run ids in it come from other processes' command lines.
        crate::process::print_out(&crate::text::for_terminal(&render_text(&report), true));
    }
    Ok(())
}
