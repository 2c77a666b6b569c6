//! The `jrq` admin CLI: options (clap), commands, and their output.
//!
//! Every option can also come from a `JRQ_*` environment variable; the database address
//! comes from `--database-url` / `DATABASE_URL` or the libpq `PG*` variables.

/// Prints a line of a command's result (see [`crate::process::print_out`]); one
/// definition for every command module below.
macro_rules! out {
    ($($arg:tt)*) => {
        crate::process::print_out(&format!("{}\n", format_args!($($arg)*)))
    };
}

mod commands;
mod governor;
mod logs;
mod render;
mod schedules;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::task::{RunStatus, TaskStatus};
use crate::validate;

pub use commands::run;

/// jrq — a Postgres-native task queue and worker fleet, supervised by systemd.
#[derive(Debug, Parser)]
#[command(name = "jrq", version, about, propagate_version = true)]
pub struct Cli {
    /// PostgreSQL address: a postgres:// URL or a libpq "key=value" string. Without it the
    /// libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE apply.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// Print long cells (titles, details, errors) whole. On by itself when standard output
    /// is not a terminal (a pipe, a file): only a terminal's tables are cut to fit, with
    /// `…`. Ages ("3s ago") are for people: `--json` gives the timestamps.
    #[arg(long, env = "JRQ_WIDE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub wide: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the schema (safe to run from several processes at once).
    Migrate,
    /// Add a task (or, with --batch, many) to the queue; prints the new id.
    Enqueue(Box<EnqueueArgs>),
    /// The queue at a glance: tasks by status, workers, oldest pending, failure rate.
    Status(StatusArgs),
    /// List tasks, newest first.
    Tasks(TasksArgs),
    /// One task and its timeline of events.
    Show(ShowArgs),
    /// A task's output as its worker streamed it (every attempt, oldest first); with
    /// --follow, what it writes next, until it ends — then exits 0 when it completed, 3
    /// when it failed, 4 when it was cancelled.
    Logs(LogsArgs),
    /// Put a failed or cancelled task back to pending with a fresh attempt budget.
    Retry(RetryArgs),
    /// Cancel a task: at once when pending or assigned; a running task is ended by its worker.
    Cancel(CancelArgs),
    /// Approve a task that awaits approval (`jrq enqueue --needs-approval`): it becomes
    /// pending — or, while it still waits for dependencies, is pending as soon as they
    /// complete. Recorded in its timeline with who approved.
    Approve(ApproveArgs),
    /// Reject a task that awaits approval: it is cancelled with the reason, and so are
    /// the tasks waiting for it.
    Reject(RejectArgs),
    /// Create, list and finish runs (groups of tasks and the workers serving them).
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Tasks enqueued on a cron expression or an interval, by the assigners (one task per
    /// tick however many run): add, list (with the next run times), pause, resume,
    /// remove, run-now.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// The worker registry: who is online, their load and circuit state.
    Workers(WorkersArgs),
    /// Delete finished tasks (completed, failed, cancelled) and their events.
    Prune(PruneArgs),
    /// The database groups of least privilege, one per program: list them, create them
    /// and grant their rights, attach a login user to one (see docs/security.md).
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Fleet-wide limits per provider (at most N running, at most N starts a minute) and
    /// their fallbacks; a provider without limits needs no row.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Stop new assignments to a provider, a run, a worker or everything; running tasks
    /// finish. Shown by `jrq status` until `jrq resume`.
    Pause(PauseArgs),
    /// End a pause set by `jrq pause` (or by a provider that ran out of quota).
    Resume(ScopeArgs),
    /// Print the shell completions of jrq or of a daemon (scripts/install-user-units
    /// installs them for bash, zsh and fish).
    Completions {
        /// The shell: bash, zsh, fish, elvish, powershell.
        shell: clap_complete::Shell,
        /// The program: jrq, jr-queue-worker, jr-auto-assigner, jr-health-monitor,
        /// jr-stale-cleanup, jr-web.
        #[arg(long, default_value = "jrq", value_parser = ["jrq", "jr-queue-worker", "jr-auto-assigner", "jr-health-monitor", "jr-stale-cleanup", "jr-web"])]
        program: String,
    },
    /// Write the man pages of every program into DIR: jrq(1) and one per subcommand
    /// (jrq-enqueue(1), ...), jr-queue-worker(1), jr-auto-assigner(1), jr-health-monitor(1),
    /// jr-stale-cleanup(1), jr-web(1).
    Man {
        /// Where (e.g. ~/.local/share/man/man1); created when missing.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// The clap command of each program, by name (completions and man pages).
pub fn program_command(name: &str) -> Option<clap::Command> {
    use clap::CommandFactory;
    Some(match name {
        "jrq" => Cli::command(),
        "jr-queue-worker" => crate::worker::cli::WorkerArgs::command(),
        "jr-auto-assigner" => crate::assigner::cli::AssignerArgs::command(),
        "jr-health-monitor" => crate::monitor::cli::MonitorArgs::command(),
        "jr-stale-cleanup" => crate::cleanup::CleanupArgs::command(),
        "jr-web" => crate::web::cli::WebArgs::command(),
        _ => return None,
    })
}

/// Every program's name.
pub const PROGRAMS: [&str; 6] = [
    "jrq",
    "jr-queue-worker",
    "jr-auto-assigner",
    "jr-health-monitor",
    "jr-stale-cleanup",
    "jr-web",
];

/// Options of `jrq enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Title of the task.
    #[arg(long, env = "JRQ_TITLE", required_unless_present = "batch")]
    pub title: Option<String>,
    /// Longer description.
    #[arg(long, env = "JRQ_DESCRIPTION", default_value = "")]
    pub description: String,
    /// Payload, a JSON document given to the executor on stdin. Default: {}.
    #[arg(long, env = "JRQ_PAYLOAD", value_parser = validate::parse_json, conflicts_with = "payload_file")]
    pub payload: Option<serde_json::Value>,
    /// Read the JSON payload from FILE ("-" for stdin).
    #[arg(long, env = "JRQ_PAYLOAD_FILE", value_name = "FILE")]
    pub payload_file: Option<PathBuf>,
    /// Priority: a non-negative integer, lower is more urgent.
    #[arg(long, env = "JRQ_PRIORITY", default_value_t = crate::task::DEFAULT_PRIORITY, value_parser = validate::parse_priority, allow_hyphen_values = true)]
    pub priority: i32,
    /// Jump the line (sets sacred_fire_priority): served before every non-urgent task.
    #[arg(long, env = "JRQ_URGENT", value_parser = clap::builder::BoolishValueParser::new())]
    pub urgent: bool,
    /// Routing class (e.g. claude, codex, ollama); only workers serving it take the task.
    /// Default: empty, any worker.
    #[arg(long, env = "JRQ_PROVIDER", default_value = "")]
    pub provider: String,
    /// While its provider is paused, the task may go to the workers of that provider's
    /// fallback providers (`jrq providers set P --fallback Q`); a payload with
    /// "fallback": true does the same. Default: it waits for its own provider.
    #[arg(long, env = "JRQ_FALLBACK_OK", value_parser = clap::builder::BoolishValueParser::new())]
    pub fallback_ok: bool,
    /// Pin the task to one worker by name.
    #[arg(long, env = "JRQ_TARGET", value_parser = validate::parse_worker_name)]
    pub target: Option<String>,
    /// The run the task belongs to (see `jrq runs create`): its id, a unique prefix of
    /// it, or its name.
    #[arg(long, env = "JRQ_RUN", value_parser = parse_run_ref)]
    pub run: Option<RunRef>,
    /// Attempts before the task fails for good. Range: 1 to 1000.
    #[arg(long, env = "JRQ_MAX_ATTEMPTS", default_value_t = crate::task::DEFAULT_MAX_ATTEMPTS, value_parser = validate::parse_max_attempts, allow_hyphen_values = true)]
    pub max_attempts: i32,
    /// How long one attempt may run (e.g. 90s, 30m, 2h). Range: 1ms to 365d.
    #[arg(long, env = "JRQ_TIMEOUT", default_value = crate::validate::format_duration(crate::task::DEFAULT_TIMEOUT), value_parser = validate::duration_in("1ms", "365d"))]
    pub timeout: Duration,
    /// End an attempt that writes no output and no progress line for this long, as a
    /// retryable failure ("idle: no output for 10m"), distinct from --timeout. Default:
    /// the worker's --idle-timeout. Range: 1s to 30d.
    #[arg(long, env = "JRQ_IDLE_TIMEOUT", value_parser = validate::duration_in("1s", "30d"))]
    pub idle_timeout: Option<Duration>,
    /// The task's budget in US dollars (from its executor's JRQ-USAGE lines, all attempts):
    /// an attempt that reaches it ends as "over budget", not retried. Default: none.
    #[arg(long, env = "JRQ_MAX_COST_USD", value_name = "USD", value_parser = validate::parse_usd)]
    pub max_cost_usd: Option<f64>,
    /// Do not start the task before this delay has passed (e.g. 10m). Default: at once. Range: 0s to 3650d.
    #[arg(long, env = "JRQ_DELAY", value_parser = validate::duration_in("0s", "3650d"), conflicts_with = "run_at")]
    pub delay: Option<Duration>,
    /// Do not start the task before this time (RFC 3339, e.g. 2026-11-23T18:00:00Z).
    #[arg(long, env = "JRQ_RUN_AT", value_parser = validate::parse_timestamp)]
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// At most one unfinished task may hold this key; a second one is refused as a duplicate.
    #[arg(long, env = "JRQ_UNIQUE_KEY")]
    pub unique_key: Option<String>,
    /// Recorded as the task's source.
    #[arg(long, env = "JRQ_SOURCE", default_value = "jrq")]
    pub source: String,
    /// Recorded as the task's creator. Default: $USER.
    #[arg(long, env = "JRQ_CREATED_BY")]
    pub created_by: Option<String>,
    /// Wait until these tasks (ids, comma-separated; repeatable) have completed: the task
    /// is `waiting` until the last of them completes, and is cancelled when one of them
    /// fails or is cancelled (`jrq retry` of that one revives it). Default: none.
    #[arg(long, env = "JRQ_AFTER", value_name = "ID[,ID...]", value_parser = validate::parse_task_ids, action = clap::ArgAction::Append)]
    pub after: Vec<Vec<i64>>,
    /// The task waits in `awaiting_approval` until `jrq approve ID` (or is cancelled by
    /// `jrq reject ID`). Default: no approval needed.
    #[arg(long, env = "JRQ_NEEDS_APPROVAL", value_parser = clap::builder::BoolishValueParser::new())]
    pub needs_approval: bool,
    /// Like --needs-approval, and only members of this database role may approve or
    /// reject it.
    #[arg(long, env = "JRQ_APPROVE_BY", value_name = "ROLE", value_parser = parse_role)]
    pub approve_by: Option<String>,
    /// Read tasks as JSON lines from FILE ("-" for stdin), one object per line with fields
    /// named like these options (title, description, payload, priority, urgent, provider,
    /// fallback_ok, target, run, max_attempts, timeout, idle_timeout, max_cost_usd, delay,
    /// run_at, unique_key, source, created_by, after, needs_approval, approve_by) and
    /// "key": a name later lines give in their "after" (ids and keys of earlier lines),
    /// so that a whole chain is enqueued at once.
    #[arg(long, env = "JRQ_BATCH", value_name = "FILE", conflicts_with_all = ["title", "payload", "payload_file", "unique_key", "after", "needs_approval", "approve_by"])]
    pub batch: Option<PathBuf>,
    /// With --batch: insert the valid lines even when some are rejected. Default: a batch
    /// with any bad line inserts nothing.
    #[arg(long, env = "JRQ_SKIP_INVALID", requires = "batch", value_parser = clap::builder::BoolishValueParser::new())]
    pub skip_invalid: bool,
    /// Print JSON: {"id": N}, or with --batch {"ids": [...], "rejected": [...]}.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// Largest payload accepted, as bytes of JSON (e.g. 1MiB, 64KiB, 2000000; 0 = no
    /// limit). Keep big data elsewhere and pass a reference: every claim reads the payload.
    #[arg(long, env = "JRQ_MAX_PAYLOAD", default_value = "1MiB", value_parser = validate::parse_bytes)]
    pub max_payload: u64,
}

/// Options of `jrq status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Window for the failure count and failure rate. Range: 1m to 365d.
    #[arg(long, env = "JRQ_WINDOW", default_value = "24h", value_parser = validate::duration_in("1m", "365d"))]
    pub window: Duration,
    /// A worker silent for longer than this counts as offline. Range: 1s to 1h.
    #[arg(long, env = "JRQ_ONLINE_THRESHOLD", default_value = crate::validate::format_duration(crate::db::workers::DEFAULT_ONLINE_THRESHOLD), value_parser = validate::duration_in("1s", "1h"))]
    pub online_threshold: Duration,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Options of `jrq tasks`.
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks in this status (waiting, awaiting_approval, pending, assigned,
    /// in_progress, completed, failed, cancelled). `--status awaiting_approval` is the
    /// approvals inbox.
    #[arg(long, env = "JRQ_STATUS", value_parser = parse_task_status)]
    pub status: Option<TaskStatus>,
    /// Only the tasks that depend on this task (`jrq enqueue --after ID`).
    #[arg(long, value_name = "ID", value_parser = parse_task_id)]
    pub waiting_on: Option<i64>,
    /// Only tasks assigned to this worker.
    #[arg(long, env = "JRQ_WORKER")]
    pub worker: Option<String>,
    /// Only tasks of this run (its id, a unique prefix of it, or its name).
    #[arg(long, env = "JRQ_RUN", value_parser = parse_run_ref)]
    pub run: Option<RunRef>,
    /// Only tasks for this provider.
    #[arg(long, env = "JRQ_PROVIDER")]
    pub provider: Option<String>,
    /// At most this many tasks. Range: 1 to 100000.
    #[arg(long, env = "JRQ_LIMIT", default_value = "50", value_parser = parse_limit, allow_hyphen_values = true)]
    pub limit: i64,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Options of `jrq show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Task id.
    #[arg(value_parser = parse_task_id)]
    pub id: i64,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Options of `jrq approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Task id.
    #[arg(value_parser = parse_task_id)]
    pub id: i64,
    /// Why, or anything the timeline should keep with the approval.
    #[arg(long, default_value = "")]
    pub comment: String,
    /// Recorded as the approver. Default: $USER (and the database user, always).
    #[arg(long = "as", value_name = "NAME", env = "JRQ_ACTOR")]
    pub actor: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Options of `jrq reject`.
#[derive(Debug, Args)]
pub struct RejectArgs {
    /// Task id.
    #[arg(value_parser = parse_task_id)]
    pub id: i64,
    /// Why: kept as the task's error and in its timeline.
    #[arg(long, required = true)]
    pub reason: String,
    /// Recorded as the one who rejected. Default: $USER (and the database user, always).
    #[arg(long = "as", value_name = "NAME", env = "JRQ_ACTOR")]
    pub actor: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Options of `jrq logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Task id.
    #[arg(value_parser = parse_task_id)]
    pub id: i64,
    /// Keep printing what the task writes until it ends (completed 0, failed 3,
    /// cancelled 4).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only its standard output.
    #[arg(long, conflicts_with_all = ["stderr", "both"])]
    pub stdout: bool,
    /// Only its standard error.
    #[arg(long, conflicts_with_all = ["stdout", "both"])]
    pub stderr: bool,
    /// Both streams, interleaved as written (the default).
    #[arg(long)]
    pub both: bool,
    /// Only output written since then: a duration ago (10m) or a time (RFC 3339).
    #[arg(long, value_parser = logs::parse_since)]
    pub since: Option<logs::Since>,
    /// Only this attempt's output.
    #[arg(long, value_parser = validate::parse_at_least_one)]
    pub attempt: Option<i32>,
    /// Print JSON lines, one per chunk: {"seq", "attempt", "stream", "at", "data"}.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// Options of `jrq retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Task ids.
    #[arg(value_parser = parse_task_id)]
    pub ids: Vec<i64>,
    /// Clear the tasks' checkpoints too: their next attempt starts from the beginning
    /// instead of resuming (JR_CHECKPOINT).
    #[arg(long)]
    pub from_scratch: bool,
    /// Retry every failed task.
    #[arg(long, env = "JRQ_ALL_FAILED", conflicts_with_all = ["ids", "status", "provider", "worker", "run", "older_than"], value_parser = clap::builder::BoolishValueParser::new())]
    pub all_failed: bool,
    #[command(flatten)]
    pub filter: BulkFilter,
}

/// Which tasks a bulk `cancel` or `retry` acts on: the ids given and/or every task that
/// matches the filters (the same as `jrq tasks`'s). At least one id or one filter.
#[derive(Debug, Args)]
pub struct BulkFilter {
    /// Only tasks in this status.
    #[arg(long, value_parser = parse_task_status)]
    pub status: Option<TaskStatus>,
    /// Only tasks of this provider.
    #[arg(long)]
    pub provider: Option<String>,
    /// Only tasks assigned to this worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// Only tasks of this run (its id, a unique prefix of it, or its name).
    #[arg(long, value_parser = parse_run_ref)]
    pub run: Option<RunRef>,
    /// Only tasks created longer ago than this (e.g. 2h). Range: 0s to 3650d.
    #[arg(long, value_parser = validate::duration_in("0s", "3650d"))]
    pub older_than: Option<Duration>,
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: the ids changed (or that would be), skipped with why, and missing.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

impl BulkFilter {
    /// Whether any filter is given.
    pub fn any(&self) -> bool {
        self.status.is_some()
            || self.provider.is_some()
            || self.worker.is_some()
            || self.run.is_some()
            || self.older_than.is_some()
    }
}

/// Options of `jrq cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Task ids.
    #[arg(value_parser = parse_task_id)]
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub filter: BulkFilter,
}

/// `jrq runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Create an active run; prints its id.
    Create {
        /// A name for people.
        #[arg(long, env = "JRQ_RUN_NAME", default_value = "")]
        name: String,
        /// Let the health monitor mark the run completed (or error) once all of its tasks
        /// are finished.
        #[arg(long, env = "JRQ_AUTO_COMPLETE", value_parser = clap::builder::BoolishValueParser::new())]
        auto_complete: bool,
        /// A budget in US dollars: once its tasks' reported cost (JRQ-USAGE) reaches it,
        /// the run is paused (no new assignments; running tasks finish) until `jrq runs
        /// budget` raises it or `jrq resume --run` ends the pause. Default: none.
        #[arg(long, env = "JRQ_RUN_MAX_COST_USD", value_name = "USD", value_parser = validate::parse_usd)]
        max_cost_usd: Option<f64>,
        /// A task enqueued once when the run completes (all its tasks finished, none
        /// failed; or `jrq runs set ID completed`): a JSON object in the `enqueue --batch`
        /// line format, e.g. '{"title":"summarise","payload":{"prompt":"..."}}'. Its
        /// payload gets the run's summary under "run" (counts, failed and cancelled ids,
        /// usage totals). No dependencies, unique_key or run_at. Default: none.
        #[arg(long, env = "JRQ_RUN_ON_COMPLETE", value_name = "TASK_JSON")]
        on_complete: Option<String>,
        /// A task enqueued once when the run ends in error (a task failed, or `jrq runs
        /// set ID error`); the same format as --on-complete. Default: none.
        #[arg(long, env = "JRQ_RUN_ON_ERROR", value_name = "TASK_JSON")]
        on_error: Option<String>,
        /// Print JSON: {"id": "...", "name": ..., "auto_complete": ..., "max_cost_usd": ...}.
        #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Set or remove a run's budget (US dollars; `none` removes it); a pause the budget
    /// set ends when the run is under the new one.
    Budget {
        /// The run: its id, a unique prefix of it, or its name.
        #[arg(value_parser = parse_run_ref)]
        id: RunRef,
        /// The budget in US dollars, or `none`.
        #[arg(value_name = "USD|none", value_parser = parse_usd_or_none)]
        max_cost_usd: UsdOrNone,
    },
    /// List runs, newest first, with their tasks counted.
    List {
        /// Only runs in this status (active, completed, error, archived).
        #[arg(long, env = "JRQ_RUN_STATUS", value_parser = parse_run_status)]
        status: Option<RunStatus>,
        /// At most this many runs. Range: 1 to 100000.
        #[arg(long, env = "JRQ_LIMIT", default_value = "50", value_parser = parse_limit, allow_hyphen_values = true)]
        limit: i64,
        /// Print JSON instead of text.
        #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Set a run's status; completed, error and archived end the workers serving it.
    Set {
        /// The run: its id, a unique prefix of it, or its name.
        #[arg(value_parser = parse_run_ref)]
        id: RunRef,
        /// New status: active, completed, error or archived.
        #[arg(value_parser = parse_run_status)]
        status: RunStatus,
    },
}

/// `jrq schedules ...`
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Add a schedule: a cadence (--cron or --every) and the task to enqueue at each tick,
    /// given with the options of `jrq enqueue` (--title, --payload, --provider, ...). Each
    /// task's payload gets "schedule": {"name", "tick"}; its unique key is
    /// schedule:NAME:TICK. The first tick is the cadence's next after now.
    Add(Box<ScheduleAddArgs>),
    /// The schedules, with their next two run times, their last task and their counts.
    List {
        /// Print JSON instead of text.
        #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Stop enqueueing a schedule's ticks (its tasks already enqueued are left alone).
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Enqueue a paused schedule's ticks again, from the cadence's next tick after now
    /// (the ticks of the pause are not caught up).
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Remove a schedule (its tasks stay).
    Remove {
        /// The schedule's name.
        name: String,
    },
    /// Enqueue a schedule's task now, outside its cadence (its next tick is unchanged);
    /// prints the task's id. With --unique-while-running, refused while its previous task
    /// is unfinished, unless --force.
    RunNow {
        /// The schedule's name.
        name: String,
        /// Enqueue even while the schedule's previous task is unfinished.
        #[arg(long)]
        force: bool,
    },
}

/// Options of `jrq schedules add`.
#[derive(Debug, Args)]
pub struct ScheduleAddArgs {
    /// The schedule's name: letters, digits, '.', '_' and '-', at most 100 characters.
    #[arg(value_parser = parse_schedule_name)]
    pub name: String,
    /// A cron expression: 5 fields (minute hour day-of-month month day-of-week), 6 with
    /// seconds first, or an alias (@yearly, @monthly, @weekly, @daily, @hourly); `L`, `#`
    /// and `W` as croner has them. Read in --timezone.
    #[arg(
        long,
        env = "JRQ_SCHEDULE_CRON",
        value_name = "EXPR",
        required_unless_present = "every",
        conflicts_with = "every"
    )]
    pub cron: Option<String>,
    /// A fixed interval instead of --cron (1s to 366d), aligned to the Unix epoch: 10m
    /// ticks at :00, :10, ... UTC.
    #[arg(long, env = "JRQ_SCHEDULE_EVERY", value_name = "DURATION", value_parser = validate::duration_in("1s", "366d"))]
    pub every: Option<Duration>,
    /// The time zone of --cron: an IANA name (Europe/Berlin, America/New_York). Daylight
    /// saving: a fixed time in the hour that does not exist runs just after it; in the
    /// hour that repeats, once.
    #[arg(
        long,
        env = "JRQ_SCHEDULE_TIMEZONE",
        value_name = "TZ",
        default_value = "UTC"
    )]
    pub timezone: String,
    /// Ticks no assigner handled in time (later than their period, at most a minute —
    /// no assigner ran, say): none skips them, one enqueues the latest, all enqueues each.
    #[arg(long, env = "JRQ_SCHEDULE_CATCH_UP", value_enum, default_value = "one")]
    pub catch_up: crate::schedule::CatchUp,
    /// Skip a tick while the schedule's previous task is unfinished (tasks that can
    /// outlast their period).
    #[arg(long, env = "JRQ_SCHEDULE_UNIQUE_WHILE_RUNNING", value_parser = clap::builder::BoolishValueParser::new())]
    pub unique_while_running: bool,
    /// Add it paused (`jrq schedules resume` starts it).
    #[arg(long, value_parser = clap::builder::BoolishValueParser::new())]
    pub paused: bool,
    /// Redefine the schedule if it exists (its counts are kept; its next tick is the new
    /// cadence's next after now).
    #[arg(long)]
    pub replace: bool,
    /// The task to enqueue at each tick: the options of `jrq enqueue` (its --source
    /// defaults to "schedule" here). Not allowed: --batch, --after, --unique-key, --run-at.
    #[command(flatten)]
    pub task: EnqueueArgs,
}

fn parse_schedule_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{}' is not a schedule name: use letters, digits, '.', '_' and '-' (starting \
             with a letter or digit), at most 100 characters",
            crate::text::for_terminal(s, false)
        ))
    }
}

/// A budget, or none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsdOrNone(pub Option<f64>);

fn parse_usd_or_none(s: &str) -> Result<UsdOrNone, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(UsdOrNone(None));
    }
    validate::parse_usd(s).map(|v| UsdOrNone(Some(v)))
}

/// Options of `jrq workers`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkersArgs {
    #[command(subcommand)]
    pub action: Option<WorkersAction>,
    /// A worker silent for longer than this counts as offline. Range: 1s to 1h.
    #[arg(long, env = "JRQ_ONLINE_THRESHOLD", default_value = crate::validate::format_duration(crate::db::workers::DEFAULT_ONLINE_THRESHOLD), value_parser = validate::duration_in("1s", "1h"))]
    pub online_threshold: Duration,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// `jrq workers drain|undrain NAME`
#[derive(Debug, Subcommand)]
pub enum WorkersAction {
    /// The worker takes nothing new, finishes what it runs and stays registered (its
    /// unit keeps running); the tasks assigned to it and not started go back to pending.
    /// Shown by `jrq workers` until `undrain`.
    Drain {
        #[arg(value_parser = validate::parse_worker_name)]
        name: String,
        /// Why, for the others.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The worker takes tasks again.
    Undrain {
        #[arg(value_parser = validate::parse_worker_name)]
        name: String,
    },
}

/// Options of `jrq prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete tasks that finished longer ago than this (e.g. 7d, 12h). Range: 0s to 3650d.
    #[arg(long, env = "JRQ_OLDER_THAN", value_parser = validate::duration_in("0s", "3650d"))]
    pub older_than: Duration,
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// `jrq providers ...`
#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Set a provider's limits (options not given stay as they are).
    Set {
        /// The provider, as tasks (--provider) and workers (--provider) name it.
        #[arg(value_parser = validate::parse_provider)]
        name: String,
        /// At most N of its tasks assigned + running across the fleet; `none` removes the
        /// limit. Range: 0 to 1000000.
        #[arg(long, value_name = "N|none", value_parser = parse_cap(0), allow_hyphen_values = true)]
        max_running: Option<Cap>,
        /// At most N of its tasks started per minute across the fleet (a token bucket in
        /// the database: starts spread over the minute, in bursts of N/30, at least 1);
        /// `none` removes the limit. Range: 1 to 1000000.
        #[arg(long, value_name = "N|none", value_parser = parse_cap(1), allow_hyphen_values = true)]
        max_starts_per_minute: Option<Cap>,
        /// At most this many US dollars of its tasks' reported cost (JRQ-USAGE) per day
        /// (UTC): once reached, the provider is paused until the next midnight UTC;
        /// `none` removes the budget. Range: 0 to 1e9.
        #[arg(long, value_name = "USD|none", value_parser = parse_usd_or_none)]
        max_cost_usd_per_day: Option<UsdOrNone>,
        /// Providers whose workers may take its tasks while it is paused (tasks whose
        /// payload has "fallback": true), separated by commas; an empty value removes them.
        #[arg(long, value_name = "OTHER[,OTHER]")]
        fallback: Option<String>,
    },
    /// The providers: limits, tasks running and pending, pauses.
    List {
        /// Print JSON instead of text.
        #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Remove a provider's limits (its pause, if any, stays until `jrq resume`).
    Unset {
        #[arg(value_parser = validate::parse_provider)]
        name: String,
    },
}

/// Which scope a pause is about: exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// A provider's tasks.
    #[arg(long, value_parser = validate::parse_provider)]
    pub provider: Option<String>,
    /// A run's tasks (its id, a unique prefix of it, or its name).
    #[arg(long, value_parser = parse_run_ref)]
    pub run: Option<RunRef>,
    /// One worker (it finishes what it runs and takes nothing new).
    #[arg(long, value_parser = validate::parse_worker_name)]
    pub worker: Option<String>,
    /// Every task.
    #[arg(long)]
    pub all: bool,
}

impl ScopeArgs {
    /// (scope, target) as `jr_pauses` stores them.
    /// The scope and its target; a run named by a prefix or a name is looked up.
    pub async fn scope(
        &self,
        client: &tokio_postgres::Client,
    ) -> crate::Result<(&'static str, String)> {
        Ok(if let Some(p) = &self.provider {
            ("provider", p.clone())
        } else if let Some(r) = &self.run {
            (
                "run",
                crate::db::runs::runs_resolve(client, &r.0)
                    .await?
                    .to_string(),
            )
        } else if let Some(w) = &self.worker {
            ("worker", w.clone())
        } else {
            ("all", String::new())
        })
    }
}

/// A run as a person names it: its id, a unique prefix of the id, or its name (looked up
/// with [`crate::db::runs::runs_resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef(pub String);

fn parse_run_ref(s: &str) -> Result<RunRef, String> {
    let t = s.trim();
    if t.is_empty() || t.len() > 200 || t.chars().any(char::is_control) {
        return Err(format!(
            "'{}' is not a run: give its id, a unique prefix of it, or its name (see `jrq runs list`)",
            crate::text::for_terminal(s, false)
        ));
    }
    Ok(RunRef(t.to_string()))
}

/// Options of `jrq pause`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Why, for the others (shown by `jrq status` and `jrq providers list`).
    #[arg(long, env = "JRQ_REASON", default_value = "")]
    pub reason: String,
    /// End the pause by itself after this long (e.g. 30m). Default: until `jrq resume`.
    /// Range: 1s to 365d.
    #[arg(long = "for", value_name = "DURATION", value_parser = validate::duration_in("1s", "365d"))]
    pub duration: Option<Duration>,
}

/// A limit, or `none` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub Option<i32>);

/// A parser of `N` (at least `min`, at most 1000000) or `none`.
fn parse_cap(min: i32) -> impl Fn(&str) -> Result<Cap, String> + Clone + Send + Sync {
    move |s: &str| {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Cap(None));
        }
        match s.trim().parse::<i32>() {
            Ok(n) if (min..=1_000_000).contains(&n) => Ok(Cap(Some(n))),
            _ => Err(format!(
                "'{s}' is not a limit: give a whole number from {min} to 1000000, or none"
            )),
        }
    }
}

/// `jrq roles ...`
#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// The groups: whether they exist, their members, and whether this database granted
    /// them their rights.
    List {
        /// Print JSON instead of text.
        #[arg(long, env = "JRQ_JSON", value_parser = clap::builder::BoolishValueParser::new())]
        json: bool,
    },
    /// Create the missing groups (needs CREATEROLE) and grant each its program's rights in
    /// this database (needs the owner of jrq's tables: the user that ran `jrq migrate`).
    Setup,
    /// Attach a login user to a group: it then has that program's rights, and may connect
    /// to this database.
    Grant {
        /// worker, assigner, monitor, reader or admin (or jrq_worker, ...).
        #[arg(value_parser = parse_group)]
        group: &'static str,
        /// An existing login role (CREATE ROLE NAME LOGIN ...).
        #[arg(value_parser = parse_login)]
        login: String,
    },
    /// Take a login user out of a group.
    Revoke {
        /// worker, assigner, monitor, reader or admin (or jrq_worker, ...).
        #[arg(value_parser = parse_group)]
        group: &'static str,
        /// The login role.
        #[arg(value_parser = parse_login)]
        login: String,
    },
}

fn parse_group(s: &str) -> Result<&'static str, String> {
    crate::db::roles::group_named(s).ok_or_else(|| {
        format!(
            "'{s}' is not a jrq group: use worker, assigner, monitor, reader or admin \
             (or {})",
            crate::db::roles::group_names()
        )
    })
}

fn parse_login(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('\0') {
        return Err("a login role name is not empty and has no NUL character".into());
    }
    if crate::db::roles::GROUPS.iter().any(|(g, _)| *g == s) {
        return Err(format!(
            "'{s}' is a jrq group, not a login user: create a login (CREATE ROLE NAME LOGIN) \
             and attach that"
        ));
    }
    Ok(s.to_string())
}

fn parse_role(s: &str) -> Result<String, String> {
    validate::check_role_name(s)?;
    Ok(s.to_string())
}

fn parse_task_id(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a task id: task ids are positive integers (see `jrq tasks`)"
        )),
    }
}

/// Most rows a list prints.
const MAX_LIMIT: i64 = 100_000;

fn parse_limit(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Ok(n) if n > MAX_LIMIT => Err(format!("limit {n} is out of range: give 1 to {MAX_LIMIT}")),
        _ => Err(format!(
            "'{s}' is not a limit: use a positive integer up to {MAX_LIMIT}"
        )),
    }
}

fn parse_task_status(s: &str) -> Result<TaskStatus, String> {
    s.parse()
}

fn parse_run_status(s: &str) -> Result<RunStatus, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_options_are_consistent() {
        // clap checks its definitions (groups, conflicts, defaults) when it builds them.
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
