//! Output of the `jrq` commands: aligned tables for people, JSON for scripts.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};

use crate::text::local_time;
use comfy_table::{presets, Cell, CellAlignment, ContentArrangement, Table};
use serde::Serialize;

use crate::db::events::EventRow;
use crate::db::migrate::MigrateReport;
use crate::db::runs::RunRow;
use crate::db::schedules::{ScheduleRow, ScheduleSummary};
use crate::db::tasks::{PruneReport, RetryAllReport, TaskListRow, TaskRow, TaskSummary};
use crate::db::workers::{WorkerRow, WorkerSummary};
use crate::error::{Error, Result};
use crate::validate::format_duration;

/// Prints one line for a person: control characters in it (from titles, errors, names —
/// anything a task or a psql INSERT may hold) are shown escaped, so they cannot move the
/// cursor, rewrite the screen or set the terminal's title.
macro_rules! say {
    () => {
        crate::process::print_out("\n")
    };
    ($($arg:tt)*) => {{
        let mut line = crate::text::for_terminal(&format!($($arg)*), false).into_owned();
        line.push('\n');
        crate::process::print_out(&line)
    }};
}

/// [`say!`] on stderr.
macro_rules! esay {
    ($($arg:tt)*) => {
        eprintln!("{}", crate::text::for_terminal(&format!($($arg)*), false))
    };
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| Error::encode("the output as JSON", e))?;
    // JSON stays exact: its strings carry control characters escaped already.
    crate::process::print_out(&format!("{text}\n"));
    Ok(())
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| Cell::new(h.to_uppercase())));
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t
}

/// Adds a row whose cells hold text from the database: control characters are escaped
/// per cell, so a newline cannot break a row in two nor an escape code reach the screen.
fn add_row(t: &mut Table, cells: Vec<String>) {
    t.add_row(
        cells
            .into_iter()
            .map(|c| crate::text::for_terminal(&c, false).into_owned())
            .collect::<Vec<String>>(),
    );
}

fn right(t: &mut Table, cols: &[usize]) {
    for &i in cols {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

fn print_table(t: &Table) {
    for line in t.to_string().lines() {
        say!("{}", line.trim_end());
    }
}

/// Whether long cells are printed whole: `--wide`, or standard output is not a terminal
/// (a pipe, a file). On a terminal they are cut to fit, with `…`.
static WIDE: AtomicBool = AtomicBool::new(false);

/// Sets [`WIDE`] for this run: `wide` asked, or standard output is not a terminal.
pub fn set_wide(wide: bool) {
    use std::io::IsTerminal;
    WIDE.store(wide || !std::io::stdout().is_terminal(), Ordering::Relaxed);
}

/// Timeline timestamps: milliseconds matter when a task moves fast.
const EVENT_TIME: &str = "%Y-%m-%d %H:%M:%S%.3f";

fn ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| local_time(t, "%Y-%m-%d %H:%M:%S"))
        .unwrap_or_else(|| "-".into())
}

fn age(t: Option<DateTime<Utc>>) -> String {
    match t {
        Some(t) => {
            let d = (Utc::now() - t).to_std().unwrap_or_default();
            format!("{} ago", format_duration(d))
        }
        None => "-".into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let s = s.replace(['\n', '\r', '\t'], " ");
    if WIDE.load(Ordering::Relaxed) || s.chars().count() <= max {
        s
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

mod providers;
mod roles;
pub use providers::{provider_set, providers};
pub use roles::{groups_missing, roles, roles_granted, roles_setup};

pub fn migrate(r: &MigrateReport) {
    if r.applied.is_empty() {
        say!("schema is up to date (version {})", r.version);
    } else {
        let v: Vec<String> = r.applied.iter().map(|v| format!("V{v}")).collect();
        say!(
            "applied {} migration(s) ({}); schema is at version {}",
            r.applied.len(),
            v.join(", "),
            r.version
        );
    }
}

pub fn rejected_lines(rejected: &[(usize, String)]) {
    for (line, why) in rejected {
        esay!("line {line}: {why}");
    }
}

pub fn batch_added(added: usize, rejected: usize) {
    if rejected > 0 {
        say!("added {added} task(s); skipped {rejected} rejected line(s)");
    } else {
        say!("added {added} task(s)");
    }
}

#[derive(Serialize)]
struct StatusJson<'a> {
    tasks: std::collections::BTreeMap<&'a str, i64>,
    total: i64,
    pending_delayed: i64,
    oldest_pending_age_s: Option<f64>,
    window_s: f64,
    completed_in_window: i64,
    failed_in_window: i64,
    failure_rate: Option<f64>,
    workers: WorkersJson,
    /// What the governor holds back: pauses, providers at their limits.
    held: &'a [String],
    /// Usage reported in the window (JRQ-USAGE), by provider and by worker.
    usage_by_provider: &'a [crate::db::tasks::UsageTotal],
    usage_by_worker: &'a [crate::db::tasks::UsageTotal],
    schedules: &'a ScheduleSummary,
    /// The oldest holder of the vacuum horizon, when it has held it 10 s or more.
    vacuum_horizon: Option<&'a crate::db::server::HorizonHolder>,
}

/// Usage reported in `jrq status`'s window.
pub struct StatusUsage {
    pub by_provider: Vec<crate::db::tasks::UsageTotal>,
    pub by_worker: Vec<crate::db::tasks::UsageTotal>,
}

#[derive(Serialize)]
struct WorkersJson {
    online: i64,
    busy: i64,
    idle: i64,
    offline: i64,
    circuit_open: i64,
    capacity: i64,
    load: i64,
    assigners: i64,
}

pub fn status(
    t: &TaskSummary,
    w: &WorkerSummary,
    held: &[String],
    usage: &StatusUsage,
    schedules: &ScheduleSummary,
    horizon: Option<&crate::db::server::HorizonHolder>,
    json: bool,
) -> Result<()> {
    let total: i64 = t.by_status.iter().map(|(_, n)| n).sum();
    if json {
        return print_json(&StatusJson {
            tasks: t.by_status.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
            total,
            pending_delayed: t.pending_delayed,
            oldest_pending_age_s: t.oldest_pending_age_s,
            window_s: t.window_s,
            completed_in_window: t.completed_window,
            failed_in_window: t.failed_window,
            failure_rate: t.failure_rate,
            workers: WorkersJson {
                online: w.online(),
                busy: w.busy,
                idle: w.idle,
                offline: w.offline,
                circuit_open: w.circuit_open,
                capacity: w.capacity,
                load: w.load,
                assigners: w.assigners,
            },
            held,
            usage_by_provider: &usage.by_provider,
            usage_by_worker: &usage.by_worker,
            schedules,
            vacuum_horizon: horizon,
        });
    }
    let pct = |n: i64| {
        if total > 0 {
            format!("{:.0}%", n as f64 * 100.0 / total as f64)
        } else {
            "-".into()
        }
    };
    let mut tb = table(&["tasks", "count", "share"]);
    for (s, n) in &t.by_status {
        let label = if s == "pending" && t.pending_delayed > 0 {
            format!("pending ({} delayed)", t.pending_delayed)
        } else {
            s.clone()
        };
        tb.add_row(vec![label, n.to_string(), pct(*n)]);
    }
    tb.add_row(vec!["total".to_string(), total.to_string(), String::new()]);
    right(&mut tb, &[1, 2]);
    print_table(&tb);
    say!();
    let oldest = t
        .oldest_pending_age_s
        .map(|s| format_duration(Duration::from_secs_f64(s.max(0.0))))
        .unwrap_or_else(|| "none waiting".into());
    say!("oldest pending:  {oldest}");
    let window = if t.window_s >= 3600.0 && t.window_s % 3600.0 == 0.0 {
        format!("{}h", t.window_s as u64 / 3600)
    } else {
        format_duration(Duration::from_secs_f64(t.window_s))
    };
    let rate = t
        .failure_rate
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into());
    say!(
        "{:<17}{} completed, {} failed, failure rate {rate}",
        format!("last {window}:"),
        t.completed_window,
        t.failed_window
    );
    say!(
        "workers:         {} online ({} busy, {} idle), {} offline, {} circuit open; load {}/{}",
        w.online(),
        w.busy,
        w.idle,
        w.offline,
        w.circuit_open,
        w.load,
        w.capacity
    );
    say!("assigners:       {} alive", w.assigners);
    if schedules.active + schedules.paused > 0 {
        let next = match (&schedules.next_name, schedules.next_tick_in_s) {
            (Some(n), Some(s)) if s > 0.0 => format!(
                "; next: {n} in {}",
                format_duration(Duration::from_secs_f64(s))
            ),
            (Some(n), Some(s)) if s < -60.0 => format!(
                "; next: {n}, overdue by {}: is an assigner running?",
                format_duration(Duration::from_secs_f64(-s))
            ),
            (Some(n), Some(_)) => format!("; next: {n}, due now"),
            _ => String::new(),
        };
        let failing = if schedules.failing > 0 {
            format!(
                "; {} failing (`jrq schedules list` says why)",
                schedules.failing
            )
        } else {
            String::new()
        };
        say!(
            "schedules:       {} active, {} paused{next}{failing}",
            schedules.active,
            schedules.paused
        );
    }
    if !usage.by_provider.is_empty() {
        let cost: f64 = usage.by_provider.iter().map(|u| u.cost_usd).sum();
        let (i, o): (i64, i64) = usage.by_provider.iter().fold((0, 0), |(i, o), u| {
            (i + u.input_tokens, o + u.output_tokens)
        });
        let name = |k: &str| {
            if k.is_empty() {
                "-".to_string()
            } else {
                k.to_string()
            }
        };
        let list = |v: &[crate::db::tasks::UsageTotal]| {
            v.iter()
                .map(|u| format!("{} ${:.2}", name(&u.key), u.cost_usd))
                .collect::<Vec<_>>()
                .join(", ")
        };
        say!(
            "{:<17}${cost:.2} spent, {i} tokens in, {o} out; by provider: {}; by worker: {}",
            format!("usage {window}:"),
            list(&usage.by_provider),
            list(&usage.by_worker)
        );
    }
    for h in held {
        say!("held:            {h}");
    }
    if let Some(h) = horizon {
        say!(
            "vacuum horizon:  held by {}: dead rows cannot be removed while it lasts",
            h.describe()
        );
    }
    Ok(())
}

pub fn tasks(rows: &[TaskListRow], json: bool) -> Result<()> {
    if json {
        return print_json(rows);
    }
    if rows.is_empty() {
        say!("no tasks");
        return Ok(());
    }
    let mut t = table(&[
        "id", "status", "pri", "title", "provider", "worker", "attempt", "created",
    ]);
    for r in rows {
        let pri = if r.sacred_fire_priority {
            format!("!{}", r.priority)
        } else {
            r.priority.to_string()
        };
        add_row(
            &mut t,
            vec![
                r.id.to_string(),
                r.status.to_string(),
                pri,
                truncate(&r.title, 40),
                if r.provider.is_empty() {
                    "-".into()
                } else {
                    r.provider.clone()
                },
                r.assigned_jr.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", r.attempts, r.max_attempts),
                age(Some(r.created_at)),
            ],
        );
    }
    right(&mut t, &[0, 2]);
    print_table(&t);
    Ok(())
}

#[derive(Serialize)]
struct ShowJson<'a> {
    task: &'a TaskRow,
    events: &'a [EventRow],
    /// Why a pending task waits on the governor, when it does.
    waiting: Option<&'a str>,
    /// Its usage by model, all attempts.
    usage: &'a [crate::db::tasks::UsageTotal],
    /// The end of its live output (`jrq logs` has all that is kept).
    output_tail: &'a [crate::db::tasks::OutputRow],
    /// The tasks it depends on, and those depending on it, with their states.
    depends_on: &'a [crate::db::tasks::DepRow],
    dependents: &'a [crate::db::tasks::DepRow],
}

/// What `jrq show` reads besides the task and its events.
pub struct ShowExtras<'a> {
    pub waiting: Option<&'a str>,
    /// The tasks it waits for, and the tasks waiting for it.
    pub deps: &'a [crate::db::tasks::DepRow],
    pub dependents: &'a [crate::db::tasks::DepRow],
    pub usage: &'a [crate::db::tasks::UsageTotal],
    pub output_tail: &'a [crate::db::tasks::OutputRow],
}

/// Lines of output `jrq show` prints at most.
const SHOW_OUTPUT_LINES: usize = 20;

/// `812 completed, 813 waiting` (at most 20, then how many more).
fn dep_list(rows: &[crate::db::tasks::DepRow]) -> String {
    let mut parts: Vec<String> = rows
        .iter()
        .take(20)
        .map(|d| format!("{} {}", d.id, d.status))
        .collect();
    if rows.len() > 20 {
        parts.push(format!("and {} more", rows.len() - 20));
    }
    parts.join(", ")
}

pub fn show(task: &TaskRow, events: &[EventRow], x: &ShowExtras<'_>, json: bool) -> Result<()> {
    let waiting = x.waiting;
    if json {
        return print_json(&ShowJson {
            task,
            events,
            waiting,
            usage: x.usage,
            output_tail: x.output_tail,
            depends_on: x.deps,
            dependents: x.dependents,
        });
    }
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    say!("task {}: {}", task.id, task.title);
    if !task.description.is_empty() {
        say!("  description:  {}", task.description);
    }
    say!(
        "  status:       {} ({}%)",
        task.status,
        task.progress_percent
    );
    if let Some(w) = waiting {
        say!("  {w}");
    }
    if let Some(gate) = &task.approve_by {
        let who = if gate.is_empty() {
            "anyone who may approve".to_string()
        } else {
            format!("members of role '{gate}'")
        };
        match (&task.approved_by, task.approved_at) {
            (Some(by), Some(at)) => say!("  approval:     approved by {by} at {}", ts(Some(at))),
            _ if task.status == crate::task::TaskStatus::Cancelled => {
                say!("  approval:     needed ({who})")
            }
            _ => say!(
                "  approval:     awaited from {who}: `jrq approve {}` or `jrq reject {} --reason ...`",
                task.id,
                task.id
            ),
        }
    }
    if !x.deps.is_empty() {
        let open = x
            .deps
            .iter()
            .filter(|d| d.status != crate::task::TaskStatus::Completed)
            .count();
        say!(
            "  depends on:   {}{}",
            dep_list(x.deps),
            if task.status == crate::task::TaskStatus::Waiting {
                format!(" ({open} not completed)")
            } else {
                String::new()
            }
        );
    }
    if !x.dependents.is_empty() {
        say!("  dependents:   {}", dep_list(x.dependents));
    }
    say!(
        "  priority:     {}{}",
        task.priority,
        if task.sacred_fire_priority {
            " (urgent)"
        } else {
            ""
        }
    );
    let mut provider = if task.provider.is_empty() {
        "any".to_string()
    } else {
        task.provider.clone()
    };
    if task.fallback_ok {
        provider.push_str(" (fallback allowed)");
    }
    // Only an assignment that holds now went under it; a pending task's is history.
    let holds = matches!(
        task.status,
        crate::task::TaskStatus::Assigned | crate::task::TaskStatus::InProgress
    );
    if let (true, Some(r)) = (holds, &task.routed_provider) {
        provider.push_str(&format!(", routed to '{r}' by fallback"));
    }
    say!("  provider:     {}", provider);
    say!("  target:       {}", opt(&task.target_jr));
    say!("  worker:       {}", opt(&task.assigned_jr));
    say!(
        "  run:          {}",
        task.run_id
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into())
    );
    say!("  attempts:     {} of {}", task.attempts, task.max_attempts);
    say!(
        "  timeout:      {}",
        format_duration(Duration::from_millis(task.timeout_ms.max(0) as u64))
    );
    if let Some(ms) = task.idle_timeout_ms {
        say!(
            "  idle timeout: {}",
            format_duration(Duration::from_millis(ms.max(0) as u64))
        );
    }
    say!("  unique key:   {}", opt(&task.unique_key));
    say!(
        "  created:      {} by {} via {}",
        ts(Some(task.created_at)),
        task.created_by,
        task.source
    );
    say!("  run after:    {}", ts(Some(task.run_after)));
    say!("  assigned:     {}", ts(task.assigned_at));
    say!("  started:      {}", ts(task.started_at));
    say!("  finished:     {}", ts(task.completed_at));
    if task.cancel_requested_at.is_some() {
        say!("  cancel asked: {}", ts(task.cancel_requested_at));
    }
    say!(
        "  payload:      {}",
        truncate(&task.payload.to_string(), 200)
    );
    if let Some(r) = &task.result {
        say!("  result:       {}", truncate(r, 500));
    }
    if let Some(e) = &task.error {
        say!("  error:        {}", truncate(e, 500));
    }
    let cost: f64 = x.usage.iter().map(|u| u.cost_usd).sum();
    if !x.usage.is_empty() || task.max_cost_usd.is_some() {
        let tokens_in: i64 = x.usage.iter().map(|u| u.input_tokens).sum();
        let tokens_out: i64 = x.usage.iter().map(|u| u.output_tokens).sum();
        let models: Vec<&str> = x
            .usage
            .iter()
            .map(|u| u.key.as_str())
            .filter(|m| !m.is_empty())
            .collect();
        say!(
            "  usage:        {} spent, {tokens_in} tokens in, {tokens_out} out{}",
            providers::spent(cost, task.max_cost_usd),
            if models.is_empty() {
                String::new()
            } else {
                format!(" ({})", models.join(", "))
            }
        );
    }
    if let Some(ck) = &task.checkpoint {
        say!(
            "  checkpoint:   {} (saved {}; the next attempt resumes from it, `jrq retry --from-scratch` clears it)",
            truncate(&ck.to_string(), 300),
            ts(task.checkpoint_at)
        );
    }
    if !x.output_tail.is_empty() {
        say!();
        say!(
            "output (the last {SHOW_OUTPUT_LINES} lines at most; `jrq logs {}` for all that is kept):",
            task.id
        );
        let text: String = x.output_tail.iter().map(|c| c.data.as_str()).collect();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(SHOW_OUTPUT_LINES)..] {
            say!("  | {}", truncate(l, 300));
        }
    }
    say!();
    say!("timeline:");
    let mut t = table(&["at", "actor", "action", "status", "attempt", "details"]);
    add_row(
        &mut t,
        vec![
            local_time(task.created_at, EVENT_TIME),
            task.created_by.clone(),
            "created".into(),
            // The state it was created in: what the first transition left (or now).
            events
                .iter()
                .find_map(|e| e.from_status.clone())
                .unwrap_or_else(|| task.status.to_string()),
            "-".into(),
            format!("via {}", task.source),
        ],
    );
    for e in events {
        let status = match (&e.from_status, &e.to_status) {
            (Some(f), Some(to)) if f != to => format!("{f} -> {to}"),
            (_, Some(to)) => to.clone(),
            (Some(f), None) => f.clone(),
            (None, None) => "-".into(),
        };
        add_row(
            &mut t,
            vec![
                local_time(e.at, EVENT_TIME),
                e.actor.clone(),
                e.action.clone(),
                status,
                e.attempt
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                truncate(&e.details, 80),
            ],
        );
    }
    print_table(&t);
    Ok(())
}

pub fn retry_all(r: &RetryAllReport) {
    if r.skipped_unique_key > 0 {
        say!(
            "{} failed task(s) pending again; {} left failed because an unfinished task \
             holds their unique key",
            r.retried,
            r.skipped_unique_key
        );
    } else {
        say!("{} failed task(s) pending again", r.retried);
    }
}

pub fn runs(rows: &[RunRow], json: bool) -> Result<()> {
    if json {
        return print_json(rows);
    }
    if rows.is_empty() {
        say!("no runs");
        return Ok(());
    }
    let mut t = table(&[
        "id", "name", "status", "tasks", "open", "done", "failed", "cost", "callback", "created",
    ]);
    for r in rows {
        // The callback: enqueued (its task), refused (why), or waiting for which end.
        let callback = match (&r.callback_task, &r.callback_error) {
            (Some(id), _) => format!("task {id}"),
            (None, Some(e)) => format!("not enqueued: {}", truncate(e, 40)),
            (None, None) => match (&r.on_complete, &r.on_error) {
                (Some(_), Some(_)) => "on complete, on error".into(),
                (Some(_), None) => "on complete".into(),
                (None, Some(_)) => "on error".into(),
                (None, None) => "-".into(),
            },
        };
        add_row(
            &mut t,
            vec![
                r.id.to_string(),
                truncate(&r.name, 30),
                r.status.to_string(),
                r.tasks_total.to_string(),
                r.tasks_unfinished.to_string(),
                r.tasks_completed.to_string(),
                r.tasks_failed.to_string(),
                providers::spent(r.cost_usd, r.max_cost_usd),
                callback,
                age(Some(r.created_at)),
            ],
        );
    }
    right(&mut t, &[3, 4, 5, 6, 7]);
    print_table(&t);
    Ok(())
}

pub fn schedules(rows: &[ScheduleRow], json: bool) -> Result<()> {
    if json {
        return print_json(rows);
    }
    if rows.is_empty() {
        say!("no schedules (add one with `jrq schedules add NAME --cron EXPR --title ...`)");
        return Ok(());
    }
    let mut t = table(&[
        "name",
        "cadence",
        "task",
        "next",
        "then",
        "last task",
        "enqueued",
        "skipped",
        "missed",
        "state",
    ]);
    for r in rows {
        let last = match (r.last_task, &r.last_task_status) {
            (Some(id), Some(s)) => format!("{id} {s}"),
            (Some(id), None) => format!("{id} (pruned)"),
            _ => "-".into(),
        };
        let state = match (&r.last_error, r.paused) {
            (_, true) => "paused".to_string(),
            (Some(e), false) => format!("failing: {}", truncate(e, 50)),
            (None, false) => {
                let mut s = format!("catch-up {}", r.catch_up);
                if r.unique_while_running {
                    s.push_str(", one at a time");
                }
                s
            }
        };
        add_row(
            &mut t,
            vec![
                r.name.clone(),
                truncate(&r.cadence_text(), 40),
                truncate(&r.title, 30),
                if r.paused {
                    "-".into()
                } else {
                    ts(Some(r.next_tick))
                },
                if r.paused { "-".into() } else { ts(r.then) },
                last,
                r.enqueued_total.to_string(),
                r.skipped_total.to_string(),
                r.missed_total.to_string(),
                state,
            ],
        );
    }
    right(&mut t, &[6, 7, 8]);
    print_table(&t);
    Ok(())
}

#[derive(Serialize)]
struct WorkerJson<'a> {
    #[serde(flatten)]
    row: &'a WorkerRow,
    /// A pause of this worker (`jrq workers drain`, `jrq pause --worker`).
    paused: Option<&'a crate::db::providers::Pause>,
}

/// "92 (18/20 ok)": the score and the last attempts it counts (`--json` has every input).
fn health_cell(h: &crate::db::workers::health::Health) -> String {
    let (ok, failed) = h.inputs.recent_counts();
    if ok + failed == 0 {
        format!("{} (no attempts yet)", h.score)
    } else {
        format!("{} ({ok}/{} ok)", h.score, ok + failed)
    }
}

pub fn workers(
    rows: &[WorkerRow],
    pauses: &crate::db::providers::Pauses,
    json: bool,
) -> Result<()> {
    if json {
        let rows: Vec<WorkerJson> = rows
            .iter()
            .map(|row| WorkerJson {
                row,
                paused: pauses.workers.get(&row.jr_name),
            })
            .collect();
        return print_json(&rows);
    }
    if rows.is_empty() {
        say!("no workers registered");
        return Ok(());
    }
    let mut t = table(&[
        "name",
        "kind",
        "state",
        "load",
        "providers",
        "host",
        "pid",
        "last seen",
        "circuit",
        "health",
    ]);
    for r in rows {
        let state = r.display_state(pauses.workers.contains_key(&r.jr_name));
        let circuit = match (&r.circuit_open_until, &r.circuit_reason) {
            (Some(until), reason) => format!(
                "open until {} ({})",
                local_time(*until, "%H:%M:%S"),
                reason.clone().unwrap_or_default()
            ),
            (None, _) if r.consecutive_failures == 1 => "closed (1 failure)".into(),
            (None, _) if r.consecutive_failures > 1 => {
                format!("closed ({} failures in a row)", r.consecutive_failures)
            }
            (None, _) => "closed".into(),
        };
        let (load, circuit) = if r.kind == "worker" {
            (format!("{}/{}", r.current_load, r.capacity), circuit)
        } else {
            ("-".into(), "-".into())
        };
        add_row(
            &mut t,
            vec![
                r.jr_name.clone(),
                r.kind.clone(),
                state,
                load,
                if r.providers.is_empty() {
                    "-".into()
                } else {
                    r.providers.join(",")
                },
                r.host.clone(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                age(r.last_seen),
                circuit,
                r.health
                    .as_ref()
                    .map(health_cell)
                    .unwrap_or_else(|| "-".into()),
            ],
        );
    }
    print_table(&t);
    for p in pauses.workers.values() {
        say!("{} {}", p.what(), p.describe());
    }
    Ok(())
}

pub fn prune_dry_run(r: &PruneReport, json: bool) -> Result<()> {
    if json {
        return print_json(&serde_json::json!({
            "tasks": r.tasks, "events": r.events, "output_chunks": r.output_chunks,
            "dry_run": true
        }));
    }
    say!(
        "would prune {} task(s), {} event(s) and {} chunk(s) of output (dry run: nothing deleted)",
        r.tasks,
        r.events,
        r.output_chunks
    );
    Ok(())
}

pub fn prune(r: &PruneReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    say!(
        "pruned {} task(s), {} event(s) and {} chunk(s) of output",
        r.tasks,
        r.events,
        r.output_chunks
    );
    Ok(())
}
