//! The dashboard's pages, rendered on the server with maud (HTML escaped by construction).
//! Every page is one layout: a header with the navigation, `<main>` with the content, and
//! a footer. A live page names its refresh period in `data-refresh`: `/static/live.js`
//! fetches the page again and swaps its `<main>` (no reload, the scroll position kept).

use std::time::Duration;

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::chart;
use crate::db::events::EventRow;
use crate::db::providers::{Pauses, ProviderRow};
use crate::db::tasks::{OutputRow, UsageTotal};
use crate::db::tasks::{TaskListRow, TaskRow, TaskSummary};
use crate::db::workers::{WorkerRow, WorkerSummary};
use crate::monitor::Report;
use crate::task::TaskStatus;
use crate::validate::format_duration;

/// Which page is shown (the navigation marks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Workers,
    Tasks,
    Schedules,
}

/// What every page knows besides its data.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// The live period, or none.
    pub refresh: Option<Duration>,
    /// What the last action did (shown once, at the top).
    pub notice: Option<String>,
    /// The CSRF token when actions are on: the pages show their buttons.
    pub csrf: Option<String>,
}

impl Ctx {
    /// The same, without refreshing by itself.
    pub fn still(&self) -> Ctx {
        Ctx {
            refresh: None,
            ..self.clone()
        }
    }
}

/// A button that POSTs an action (with the CSRF token), optionally with a reason field.
fn action(ctx: &Ctx, path: &str, label: &str, reason: bool) -> Markup {
    match &ctx.csrf {
        None => html! {},
        Some(token) => html! {
            form.action method="post" action=(path) {
                input type="hidden" name="csrf" value=(token);
                @if reason { input name="reason" placeholder="reason" size="14"; }
                button type="submit" { (label) }
            }
        },
    }
}

/// The layout around every page. `refresh`: the live period, or none.
pub fn layout(title: &str, nav: Nav, refresh: Option<Duration>, body: Markup) -> Markup {
    let now = Utc::now();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jrq" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/live.js" defer {}
            }
            body data-refresh=[refresh.map(|r| r.as_millis().to_string())] {
                header {
                    a.brand href="/" { "jrq" }
                    nav {
                        a href="/" class=[(nav == Nav::Overview).then_some("on")] { "Overview" }
                        a href="/workers" class=[(nav == Nav::Workers).then_some("on")] { "Workers" }
                        a href="/tasks" class=[(nav == Nav::Tasks).then_some("on")] { "Tasks" }
                        a href="/schedules" class=[(nav == Nav::Schedules).then_some("on")] { "Schedules" }
                    }
                    span #live class="live" title="refreshes by itself" {
                        @if let Some(r) = refresh { "live · every " (format_duration(r)) }
                    }
                }
                main data-rendered=(now.to_rfc3339()) {
                    (body)
                    p.stamp { "as of " (time(now)) }
                }
                footer {
                    "jrq " (env!("CARGO_PKG_VERSION")) " · "
                    a href="/metrics" { "metrics" } " · "
                    a href="/healthz" { "health" }
                }
            }
        }
    }
}

/// A page saying what went wrong (the database away, an unknown id).
pub fn problem(title: &str, nav: Nav, message: &str, refresh: Option<Duration>) -> Markup {
    layout(
        title,
        nav,
        refresh,
        html! {
            h1 { (title) }
            p.problem role="alert" { (message) }
        },
    )
}

/// A time with its zone, and how long ago it was.
fn time(t: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S%.3f UTC")) {
            (t.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

fn ago(t: Option<DateTime<Utc>>) -> Markup {
    match t {
        None => html! { "-" },
        Some(t) => {
            let secs = (Utc::now() - t).num_milliseconds().max(0) as u64;
            let d = Duration::from_millis(secs);
            html! {
                time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) {
                    (format_duration(if d >= Duration::from_secs(1) { Duration::from_secs(d.as_secs()) } else { d })) " ago"
                }
            }
        }
    }
}

fn percent(r: Option<f64>) -> String {
    r.map(|x| format!("{:.1} %", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn status_badge(s: &str) -> Markup {
    html! { span class={ "badge " (s) } { (s) } }
}

fn progress(p: i16) -> Markup {
    html! {
        span.progress {
            progress max="100" value=(p.clamp(0, 100)) { (p) "%" }
            " " span.pct { (p) "%" }
        }
    }
}

/// Everything the overview shows.
pub struct Overview {
    pub hour: TaskSummary,
    pub day_failure_rate: Option<f64>,
    pub by_provider: Vec<(String, String, i64)>,
    pub minutes: Vec<chart::Minute>,
    pub providers: Vec<ProviderRow>,
    pub pauses: Pauses,
    pub held: Vec<String>,
    pub workers: WorkerSummary,
    pub report: Report,
    /// Usage reported in the last 24 hours, by provider and by worker.
    pub usage: (Vec<UsageTotal>, Vec<UsageTotal>),
}

pub fn overview(o: &Overview, ctx: &Ctx) -> Markup {
    let count = |s: TaskStatus| {
        o.hour
            .by_status
            .iter()
            .find(|(k, _)| k == s.as_str())
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let mut providers: Vec<&str> = o.by_provider.iter().map(|(_, p, _)| p.as_str()).collect();
    providers.dedup();
    let cell = |status: &str, provider: &str| {
        o.by_provider
            .iter()
            .find(|(s, p, _)| s == status && p == provider)
            .map(|(_, _, n)| *n)
            .unwrap_or(0)
    };
    let w = &o.workers;
    let body = html! {
        h1 { "Overview" }
        (notice(ctx))
        @if !o.report.alerts.is_empty() {
            section #alerts .alerts role="alert" {
                h2 { "Alerts" }
                ul { @for a in &o.report.alerts { li { (a) } } }
            }
        } @else {
            p #alerts .ok { "No alerts: every check the health monitor makes passes." }
        }
        section.cards {
            @for s in TaskStatus::ALL {
                a.card href={ "/tasks?status=" (s.as_str()) } id={ "count-" (s.as_str()) } {
                    span.n { (count(s)) }
                    span.k { (s.as_str()) }
                }
            }
        }
        section.facts {
            dl {
                dt { "oldest pending" }
                dd #oldest-pending {
                    @match o.hour.oldest_pending_age_s {
                        Some(a) => (format_duration(Duration::from_secs(a as u64))),
                        None => "none waiting",
                    }
                    @if o.hour.pending_delayed > 0 { " (" (o.hour.pending_delayed) " delayed)" }
                }
                dt { "failure rate, last hour" }
                dd #failure-1h { (percent(o.hour.failure_rate)) " (" (o.hour.failed_window) " failed, " (o.hour.completed_window) " completed)" }
                dt { "failure rate, last 24 h" }
                dd #failure-24h { (percent(o.day_failure_rate)) }
                dt { "workers" }
                dd #workers-summary {
                    (w.online()) " online (" (w.busy) " busy, " (w.idle) " idle), "
                    (w.offline) " offline, " (w.circuit_open) " circuit open; load "
                    (w.load) "/" (w.capacity) "; assigners alive " (w.assigners)
                }
            }
        }
        section {
            h2 { "Throughput, last " (o.minutes.len() / 60) " hours" }
            p.legend { span.key.completed {} "completed per minute " span.key.failed {} "failed per minute" }
            (PreEscaped(chart::throughput(&o.minutes, Utc::now())))
        }
        section {
            h2 { "Tasks by provider" }
            @if providers.is_empty() {
                p { "No tasks yet." }
            } @else {
                table #by-provider {
                    thead { tr { th { "provider" } @for s in TaskStatus::ALL { th { (s.as_str()) } } } }
                    tbody {
                        @for p in &providers {
                            tr {
                                td { a href={ "/tasks?provider=" (urlencode(p)) } { @if p.is_empty() { "(any)" } @else { (p) } } }
                                @for s in TaskStatus::ALL { td.num { (cell(s.as_str(), p)) } }
                            }
                        }
                    }
                }
            }
        }
        @if !o.usage.0.is_empty() {
            section #usage {
                h2 { "Usage, last 24 h: " (usd(o.usage.0.iter().map(|u| u.cost_usd).sum())) }
                div.pair {
                    (usage_table("usage-by-provider", "provider", &o.usage.0))
                    (usage_table("usage-by-worker", "worker", &o.usage.1))
                }
            }
        }
        section {
            h2 { "Providers and pauses" }
            @if o.providers.is_empty() && o.pauses.is_empty() {
                p { "No provider limits and no pauses (" code { "jrq providers set" } ", " code { "jrq pause" } ")." }
            }
            @if !o.providers.is_empty() {
                table #providers {
                    thead { tr { th { "provider" } th { "running" } th { "max running" } th { "starts/min" } th { "pending" } th { "cost today" } th { "fallback" } th { "state" } @if ctx.csrf.is_some() { th { "action" } } } }
                    tbody {
                        @for r in &o.providers {
                            tr {
                                td { (r.name) }
                                td.num { (r.running) }
                                td.num { (r.max_running.map(|m| m.to_string()).unwrap_or_else(|| "-".into())) }
                                td.num { (r.max_starts_per_minute.map(|m| m.to_string()).unwrap_or_else(|| "-".into())) }
                                td.num { (r.pending) }
                                td.num { (usd(r.cost_today_usd)) @if let Some(b) = r.max_cost_usd_per_day { " of " (usd(b)) } }
                                td { (if r.fallback.is_empty() { "-".to_string() } else { r.fallback.join(", ") }) }
                                td {
                                    @if let Some(p) = o.pauses.providers.get(&r.name) { span.badge.paused { "paused" } " " (p.describe()) }
                                    @else if r.max_running.is_some_and(|m| r.running >= i64::from(m)) { span.badge.held { "at its limit" } }
                                    @else { "open" }
                                }
                                @if ctx.csrf.is_some() {
                                    td {
                                        @if o.pauses.providers.contains_key(&r.name) {
                                            (action(ctx, &format!("/providers/{}/resume", urlencode(&r.name)), "Resume", false))
                                        } @else {
                                            (action(ctx, &format!("/providers/{}/pause", urlencode(&r.name)), "Pause", true))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !o.held.is_empty() {
                ul #held { @for h in &o.held { li { (h) } } }
            }
        }
    };
    layout("Overview", Nav::Overview, ctx.refresh, body)
}

/// The workers page: every registry row, with the task each worker runs.
/// The schedules (`jrq schedules list`): cadence, task, next two ticks, last task, counts.
pub fn schedules(rows: &[crate::db::schedules::ScheduleRow], ctx: &Ctx) -> Markup {
    let body = html! {
        h1 { "Schedules" }
        (notice(ctx))
        @if rows.is_empty() {
            p { "No schedule yet: add one with " code { "jrq schedules add NAME --cron '0 9 * * 1-5' --title ..." } "; the assigners enqueue its ticks." }
        } @else {
            table #schedules {
                thead { tr {
                    th { "name" } th { "cadence" } th { "task" } th { "next" } th { "then" }
                    th { "last task" } th { "enqueued" } th { "skipped" } th { "missed" }
                    th { "state" }
                } }
                tbody {
                    @for r in rows {
                        tr id={ "schedule-" (r.name) } class=[r.paused.then_some("gone")] {
                            td.name { (r.name) }
                            td { (r.cadence_text()) }
                            td { (r.title) }
                            td { @if r.paused { "-" } @else { (time(r.next_tick)) } }
                            td { @if r.paused { "-" } @else { @if let Some(t) = r.then { (time(t)) } @else { "-" } } }
                            td {
                                @match (r.last_task, &r.last_task_status) {
                                    (Some(id), Some(st)) => { a href={ "/tasks/" (id) } { (id) } " " (status_badge(st)) }
                                    (Some(id), None) => { (id) " (pruned)" }
                                    _ => { "-" }
                                }
                            }
                            td.num { (r.enqueued_total) }
                            td.num { (r.skipped_total) }
                            td.num { (r.missed_total) }
                            td {
                                @if r.paused { "paused" }
                                @else if let Some(e) = &r.last_error { span.problem { "failing: " (e) } }
                                @else {
                                    "catch-up " (r.catch_up)
                                    @if r.unique_while_running { ", one at a time" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Schedules", Nav::Schedules, ctx.refresh, body)
}

pub fn workers(rows: &[WorkerRow], running: &[TaskListRow], pauses: &Pauses, ctx: &Ctx) -> Markup {
    let body = html! {
        h1 { "Workers" }
        (notice(ctx))
        @if rows.is_empty() {
            p { "No worker has registered yet: start one with " code { "systemctl --user start jr-queue-worker@NAME" } "." }
        } @else {
            table #workers {
                thead { tr {
                    th { "name" } th { "kind" } th { "state" } th { "load" } th { "health" }
                    th { "circuit" } th { "heartbeat" } th { "host" } th { "pid" } th { "unit" }
                    th { "providers" } th { "status" } th { "running" }
                    @if ctx.csrf.is_some() { th { "action" } }
                } }
                tbody {
                    @for r in rows {
                        @let state = r.display_state(pauses.workers.contains_key(&r.jr_name));
                        @let class = if r.is_stale() { "stale" } else if !r.alive { "gone" } else { "" };
                        tr id={ "worker-" (r.jr_name) } class=(class) {
                            td.name { (r.jr_name) }
                            td { (r.kind) }
                            td { (status_badge(state.split(' ').next().unwrap_or(""))) @if state.contains(' ') { " (paused)" }
                                 @if r.is_stale() { " " span.badge.stale { "stale" } } }
                            td.num { @if r.kind == "worker" { (r.current_load) "/" (r.capacity) } @else { "-" } }
                            td.num { @match &r.health {
                                Some(h) => {
                                    @let (ok, failed) = h.inputs.recent_counts();
                                    span class=(if h.score < 50 { "low" } else { "" }) { (h.score) }
                                    @if ok + failed > 0 { " (" (ok) "/" (ok + failed) " ok)" }
                                },
                                None => "-",
                            } }
                            td { @if let Some(until) = r.circuit_open_until {
                                    span.badge.failed { "open" } " until " (until.format("%H:%M:%S UTC"))
                                    @if let Some(why) = &r.circuit_reason { br; small { (why) } }
                                 } @else if r.kind == "worker" {
                                    "closed" @if r.consecutive_failures > 0 { " (" (r.consecutive_failures) " failed in a row)" }
                                 } @else { "-" } }
                            td { (ago(r.last_seen)) }
                            td { (r.host) }
                            td.num { (r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())) }
                            td { code { (crate::monitor::unit_for(&r.kind, &r.jr_name)) } }
                            td { (if r.providers.is_empty() { "-".to_string() } else { r.providers.join(", ") }) }
                            td.text { (r.status_text) }
                            td {
                                @for t in running.iter().filter(|t| t.assigned_jr.as_deref() == Some(r.jr_name.as_str())) {
                                    div.current {
                                        a href={ "/tasks/" (t.id) } { "#" (t.id) " " (t.title) }
                                        " " (progress(t.progress_percent))
                                    }
                                }
                            }
                            @if ctx.csrf.is_some() {
                                td {
                                    @if r.kind == "worker" && !r.jr_name.chars().all(|c| c == '.') {
                                        @if pauses.workers.contains_key(&r.jr_name) {
                                            (action(ctx, &format!("/workers/{}/undrain", r.jr_name), "Undrain", false))
                                        } @else {
                                            (action(ctx, &format!("/workers/{}/drain", r.jr_name), "Drain", true))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @for p in pauses.workers.values() { p { (p.what()) " " (p.describe()) } }
        }
    };
    layout("Workers", Nav::Workers, ctx.refresh, body)
}

/// The filters of the task list, as given in the query string.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct TaskQuery {
    pub status: Option<String>,
    pub provider: Option<String>,
    pub worker: Option<String>,
    pub run: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

impl TaskQuery {
    /// The query string of these filters with another `before`.
    pub fn with_before(&self, before: i64) -> String {
        let mut parts = vec![];
        for (k, v) in [
            ("status", &self.status),
            ("provider", &self.provider),
            ("worker", &self.worker),
            ("run", &self.run),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        parts.push(format!("before={before}"));
        parts.join("&")
    }
}

pub fn tasks(rows: &[TaskListRow], q: &TaskQuery, limit: i64, refresh: Option<Duration>) -> Markup {
    let sel = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        h1 { "Tasks" }
        form.filters method="get" action="/tasks" {
            label { "status " select name="status" {
                option value="" { "any" }
                @for s in TaskStatus::ALL {
                    option value=(s.as_str()) selected[q.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                }
            } }
            label { "provider " input name="provider" value=(sel(&q.provider)) size="10"; }
            label { "worker " input name="worker" value=(sel(&q.worker)) size="12"; }
            label { "run " input name="run" value=(sel(&q.run)) size="12" placeholder="run id"; }
            button type="submit" { "Filter" }
            " " a href="/tasks" { "clear" }
        }
        @if rows.is_empty() {
            p #no-tasks { "No task matches." }
        } @else {
            table #tasks {
                thead { tr { th { "id" } th { "status" } th { "title" } th { "provider" } th { "worker" } th { "attempts" } th { "progress" } th { "created" } th { "finished" } } }
                tbody {
                    @for t in rows {
                        tr id={ "task-" (t.id) } {
                            td.num { a href={ "/tasks/" (t.id) } { (t.id) } }
                            td { (status_badge(t.status.as_str())) @if t.sacred_fire_priority { " " span.badge.urgent { "urgent" } } }
                            td.title { a href={ "/tasks/" (t.id) } { (t.title) } }
                            td { (t.provider) }
                            td { (t.assigned_jr.clone().or_else(|| t.target_jr.as_ref().map(|p| format!("→ {p}"))).unwrap_or_else(|| "-".into())) }
                            td.num { (t.attempts) "/" (t.max_attempts) }
                            td { @if t.status == TaskStatus::InProgress { (progress(t.progress_percent)) } }
                            td { (ago(Some(t.created_at))) }
                            td { (ago(t.completed_at)) }
                        }
                    }
                }
            }
            @if rows.len() as i64 >= limit {
                @if let Some(last) = rows.last() {
                    p.pager { a #next-page href={ "/tasks?" (q.with_before(last.id)) } { "older tasks →" } }
                }
            }
        }
    };
    layout("Tasks", Nav::Tasks, refresh, body)
}

/// What the task page shows besides the task and its timeline.
pub struct TaskExtras {
    pub waiting: Option<String>,
    /// Usage by model, all attempts.
    pub usage: Vec<UsageTotal>,
    /// The end of its live output.
    pub output: Vec<OutputRow>,
    /// The tasks it depends on, and those depending on it.
    pub deps: Vec<crate::db::tasks::DepRow>,
    pub dependents: Vec<crate::db::tasks::DepRow>,
}

/// Links to tasks with their states: `812 completed, 813 waiting`.
fn dep_links(rows: &[crate::db::tasks::DepRow]) -> Markup {
    html! {
        @for (i, d) in rows.iter().enumerate() {
            @if i > 0 { ", " }
            a href={ "/tasks/" (d.id) } title=(d.title) { (d.id) } " " (status_badge(d.status.as_str()))
        }
    }
}

/// Dollars, with more digits below a cent.
fn usd(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("${v:.4}")
    } else {
        format!("${v:.2}")
    }
}

/// A usage table: cost and tokens by provider, worker or model.
fn usage_table(id: &str, what: &str, rows: &[UsageTotal]) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { (what) } th { "cost" } th { "input tokens" } th { "output tokens" } } }
            tbody {
                @for u in rows {
                    tr {
                        td { @if u.key.is_empty() { "-" } @else { (u.key) } }
                        td.num { (usd(u.cost_usd)) }
                        td.num { (u.input_tokens) }
                        td.num { (u.output_tokens) }
                    }
                }
            }
        }
    }
}

pub fn task(t: &TaskRow, events: &[EventRow], x: &TaskExtras, ctx: &Ctx) -> Markup {
    let waiting = x.waiting.as_deref();
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let cost: f64 = x.usage.iter().map(|u| u.cost_usd).sum();
    let body = html! {
        h1 { "Task " (t.id) ": " (t.title) }
        (notice(ctx))
        @if ctx.csrf.is_some() {
            div.actions #task-actions {
                @if matches!(t.status, TaskStatus::Failed | TaskStatus::Cancelled) {
                    (action(ctx, &format!("/tasks/{}/retry", t.id), "Retry", false))
                }
                @if t.status == TaskStatus::AwaitingApproval
                    || (t.status == TaskStatus::Waiting && t.approve_by.is_some() && t.approved_at.is_none()) {
                    (action(ctx, &format!("/tasks/{}/approve", t.id), "Approve", false))
                    (action(ctx, &format!("/tasks/{}/reject", t.id), "Reject", true))
                }
                @if !t.status.is_finished() {
                    (action(ctx, &format!("/tasks/{}/cancel", t.id), "Cancel", false))
                }
            }
        }
        section.facts {
            dl #task-row {
                dt { "status" } dd #task-status { (status_badge(t.status.as_str()))
                    @if t.status == TaskStatus::InProgress { " " (progress(t.progress_percent)) }
                    @if t.cancel_requested_at.is_some() && !t.status.is_finished() { " (cancel requested)" } }
                @if let Some(w) = waiting { dt { "waiting" } dd { (w) } }
                @if let Some(gate) = &t.approve_by {
                    dt { "approval" } dd #task-approval {
                        @if let (Some(by), Some(at)) = (&t.approved_by, t.approved_at) { "approved by " (by) " at " (time(at)) }
                        @else if gate.is_empty() { "needed (anyone who may approve)" }
                        @else { "needed (members of role '" (gate) "')" }
                    }
                }
                @if !x.deps.is_empty() { dt { "depends on" } dd #task-deps { (dep_links(&x.deps)) } }
                @if !x.dependents.is_empty() { dt { "dependents" } dd #task-dependents { (dep_links(&x.dependents)) } }
                @if !t.description.is_empty() { dt { "description" } dd.text { (t.description) } }
                dt { "priority" } dd { (t.priority) @if t.sacred_fire_priority { " (urgent)" } }
                dt { "provider" } dd { @if t.provider.is_empty() { "(any)" } @else { (t.provider) }
                    @if t.fallback_ok { " (fallback allowed)" }
                    @if let Some(r) = &t.routed_provider { ", routed to '" (r) "' by fallback" } }
                dt { "worker" } dd { (opt(&t.assigned_jr)) @if let Some(p) = &t.target_jr { " (pinned to " (p) ")" } }
                dt { "run" } dd { (t.run_id.map(|r| r.to_string()).unwrap_or_else(|| "-".into())) }
                dt { "attempts" } dd { (t.attempts) " of " (t.max_attempts) }
                dt { "timeout" } dd { (format_duration(Duration::from_millis(t.timeout_ms.max(0) as u64)))
                    @if let Some(ms) = t.idle_timeout_ms { "; idle timeout " (format_duration(Duration::from_millis(ms.max(0) as u64))) } }
                @if !x.usage.is_empty() || t.max_cost_usd.is_some() {
                    dt { "cost" } dd #task-cost { (usd(cost))
                        @if let Some(b) = t.max_cost_usd { " of its budget " (usd(b)) } }
                }
                dt { "created" } dd { (time(t.created_at)) " by " (t.created_by) " (" (t.source) ")" }
                @if t.run_after > t.created_at { dt { "not before" } dd { (time(t.run_after)) } }
                @if let Some(a) = t.started_at { dt { "started" } dd { (time(a)) } }
                @if let Some(a) = t.completed_at { dt { "finished" } dd { (time(a)) } }
                @if let Some(k) = &t.unique_key { dt { "unique key" } dd { code { (k) } } }
            }
        }
        @if let Some(e) = &t.error { section { h2 { "Error" } pre #task-error { (e) } } }
        @if !x.output.is_empty() {
            section {
                h2 { "Output" @if !t.status.is_finished() { " (live)" } }
                p.legend { "The end of what it wrote, stderr marked; " code { "jrq logs " (t.id) " --follow" } " has all that is kept." }
                pre #task-output {
                    @for c in &x.output {
                        span class=(c.stream) title={ "attempt " (c.attempt) } { (c.data) }
                    }
                }
            }
        }
        @if !x.usage.is_empty() { section { h2 { "Usage" } (usage_table("task-usage", "model", &x.usage)) } }
        @if let Some(ck) = &t.checkpoint {
            section {
                h2 { "Checkpoint" }
                p.legend { "Saved " @if let Some(a) = t.checkpoint_at { (time(a)) } "; the next attempt resumes from it." }
                pre #task-checkpoint { (serde_json::to_string_pretty(ck).unwrap_or_default()) }
            }
        }
        @if let Some(r) = &t.result { section { h2 { "Result (output tail)" } pre #task-result { (r) } } }
        section {
            h2 { "Timeline" }
            table #timeline {
                thead { tr { th { "at" } th { "action" } th { "from → to" } th { "worker" } th { "attempt" } th { "by" } th { "details" } } }
                tbody {
                    tr.created { td { (time(t.created_at)) } td { "created" } td { "→ " (events.iter().find_map(|e| e.from_status.clone()).unwrap_or_else(|| t.status.to_string())) } td { "-" } td { "-" } td { (t.created_by) } td { "source " (t.source) } }
                    @for e in events {
                        tr class=(e.action) {
                            td { (time(e.at)) }
                            td { (e.action) }
                            td { (opt(&e.from_status)) " → " (opt(&e.to_status)) }
                            td { (opt(&e.worker)) }
                            td.num { (e.attempt.map(|a| a.to_string()).unwrap_or_else(|| "-".into())) }
                            td { (e.actor) }
                            td.text { (e.details) }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Payload" }
            pre #task-payload { (serde_json::to_string_pretty(&t.payload).unwrap_or_default()) }
        }
    };
    layout(&format!("Task {}", t.id), Nav::Tasks, ctx.refresh, body)
}

/// The last action's notice, when there is one.
fn notice(ctx: &Ctx) -> Markup {
    html! {
        @if let Some(n) = &ctx.notice { p #notice .notice role="status" { (n) } }
    }
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
