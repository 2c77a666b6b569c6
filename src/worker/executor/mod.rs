//! How a task runs: a [`Handler`]. The worker ships three — `noop`, `sleep:<duration>`
//! and [`Program`] (any executable and its arguments, started without a shell) — and a
//! Rust program embedding the worker can give its own.
//!
//! ## The executor program contract
//!
//! - stdin: the task's JSON payload, then end of file.
//! - environment: `JR_TASK_ID`, `JR_TASK_TITLE` (its first [`TITLE_ENV_MAX`] bytes),
//!   `JR_ATTEMPT` (1 for the first), `JR_MAX_ATTEMPTS`, `JR_RUN_ID` (empty without a
//!   run), `JR_PROVIDER` (the provider to use: the task's own, or the fallback provider it
//!   was routed to while its own is paused; empty without one), `JR_WORKER`,
//!   `JR_WORKER_INSTANCE` (the worker process's instance id), `JR_DEADLINE` (RFC 3339,
//!   UTC: when the attempt's timeout is up — SIGTERM then, SIGKILL a kill grace later),
//!   `JR_CHECKPOINT` (the last checkpoint an earlier attempt stored, JSON; unset when
//!   none) and `JR_CHECKPOINT_FILE` (a file holding the same, mode 600, removed when the
//!   attempt ends), plus the
//!   worker's own environment minus `DATABASE_URL`, `PGPASSWORD` and systemd's notify
//!   variables. The worker's own environment and memory are out of the program's reach
//!   although it runs as the same user (the worker is not dumpable, see [`crate::worker::guard`]).
//! - its own process group; when the task must stop (timeout, cancel, lost lease, end of
//!   the drain) the group and every other process the task started — also those that
//!   left the group (`setsid`) or were orphaned (a double fork) — get SIGTERM, then
//!   SIGKILL after the kill grace. When the program exits, whatever it left running is
//!   killed too: no orphans.
//! - exit status:
//!   - `0`: success — the task is completed; the tail of stdout is its result.
//!   - `75` (EX_TEMPFAIL): retryable failure — the task goes back to pending after a
//!     backoff while attempts remain, else it fails.
//!   - `76`: the provider refused (rate-limited, out of quota) — the attempt is not
//!     charged, the worker's circuit is not touched, the task goes back to pending, and
//!     its provider is paused fleet-wide until the time a stdout line
//!     `JRQ-RETRY-AT: <RFC 3339 time | seconds>` gives (at most 24 h ahead), else for
//!     the worker's `--provider-backoff` (60 s).
//!   - any other status: permanent failure — the task fails at once; the tail of stderr
//!     is its error.
//!   - killed by the kernel's OOM killer (the worker's memory cgroup — its unit's
//!     `MemoryMax` — counted an OOM kill while the task ran, and the program died of a
//!     signal or exited with a status other than 0 and 75): permanent failure, with an
//!     error that names the limit. Running it again would hit the same limit. (A
//!     program that handles the kill and exits 75 gets its retry.)
//!   - killed by any other signal (a crash, someone's `kill`) or timed out: the program
//!     could not say, so the attempt is treated as retryable.
//! - the program (and what it starts) is the OOM killer's preferred victim within the
//!   unit (`oom_score_adj` raised to [`EXECUTOR_OOM_SCORE_ADJ`]): a task that outgrows
//!   the memory limit ends, the worker that supervises it does not.
//! - output: stdout and stderr are streamed into the task's log as they come (`jrq logs`;
//!   the worker's `--output-keep` bytes kept per task); an attempt that writes nothing and
//!   reports no progress for its idle timeout ends, retryable.
//! - control lines on stdout, left out of the result and the log:
//!   - `JRQ-PROGRESS: N` (N from 0 to 100, optionally with `%`) sets `progress_percent`;
//!   - `JRQ-CHECKPOINT: <JSON>` (at most [`CHECKPOINT_MAX`] bytes) stores the task's
//!     checkpoint, which the next attempt gets in `JR_CHECKPOINT`;
//!   - `JRQ-USAGE: {"model": …, "input_tokens": N, "output_tokens": N, "cost_usd": X}`
//!     (any subset) adds to the attempt's usage; a task whose usage reaches its own
//!     budget is ended "over budget" (not retried).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

pub use crate::db::tasks::{Stream, UsageDelta};
use crate::validate;

mod program;
pub use program::Program;

/// The `oom_score_adj` executors start with (the worker keeps its own): when memory runs
/// out, the kernel ends a task rather than the worker.
pub const EXECUTOR_OOM_SCORE_ADJ: &std::ffi::CStr = c"500";

/// Exit status with which an executor program asks for a retry (EX_TEMPFAIL).
pub const EXIT_RETRY: i32 = 75;
/// Exit status with which an executor program says its provider refused: rate-limited
/// or out of quota.
pub const EXIT_PROVIDER_REFUSED: i32 = 76;
/// Prefix of the stdout line that says when a refusing provider resets: an RFC 3339 time
/// or a number of seconds.
pub const RETRY_AT_PREFIX: &str = "JRQ-RETRY-AT:";
/// Prefix of a progress line on an executor's stdout.
pub const PROGRESS_PREFIX: &str = "JRQ-PROGRESS:";
/// Prefix of a checkpoint line: `JRQ-CHECKPOINT: <JSON>`, the latest of which the next
/// attempt gets.
pub const CHECKPOINT_PREFIX: &str = "JRQ-CHECKPOINT:";
/// Prefix of a usage line: `JRQ-USAGE: {"model": …, "input_tokens": …, "output_tokens": …,
/// "cost_usd": …}` (any subset), added to the attempt's usage.
pub const USAGE_PREFIX: &str = "JRQ-USAGE:";
/// Most bytes of a checkpoint's JSON (larger ones are refused, with a warning).
pub const CHECKPOINT_MAX: usize = 64 * 1024;
/// Most bytes of the title given to an executor in `JR_TASK_TITLE` (the whole title is in
/// the task, `jrq show`): the kernel refuses to start a program whose environment holds
/// one string over 128 KiB.
pub const TITLE_ENV_MAX: usize = 4096;
/// Default bytes kept from the end of an executor's stdout (result) and stderr (error).
pub const DEFAULT_OUTPUT_LIMIT: usize = 16 * 1024;

/// Why the worker asks a running task to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The attempt ran past the task's timeout.
    Timeout,
    /// The attempt wrote no output and no progress for this long (its idle timeout).
    Idle(Duration),
    /// The task's usage reached its own budget: spent and budget, in micro-dollars.
    OverBudget { spent: i64, budget: i64 },
    /// `jrq cancel` asked for it.
    Cancelled,
    /// The worker no longer holds the task's lease (it was rescued and may run elsewhere).
    LeaseLost,
    /// The worker is shutting down and the drain time is over.
    Shutdown,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Timeout => f.write_str("timed out"),
            StopReason::Idle(d) => {
                write!(f, "idle: no output for {}", validate::format_duration(*d))
            }
            StopReason::OverBudget { spent, budget } => write!(
                f,
                "over budget: ${} spent of the task's ${}",
                usd(*spent),
                usd(*budget)
            ),
            StopReason::Cancelled => f.write_str("cancelled"),
            StopReason::LeaseLost => f.write_str("lease lost"),
            StopReason::Shutdown => f.write_str("worker shutting down"),
        }
    }
}

/// Micro-dollars as dollars with cents (more digits below a cent).
pub fn usd(microusd: i64) -> String {
    let d = microusd as f64 / 1e6;
    if d != 0.0 && d.abs() < 0.01 {
        format!("{d:.4}")
    } else {
        format!("{d:.2}")
    }
}

/// How a handler says its attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// Done; the text is stored as the task's result.
    Completed(String),
    /// Failed, worth another attempt (after a backoff, while attempts remain).
    Retry(String),
    /// Failed for good.
    Failed(String),
    /// Not started because of the worker, not the task (its program cannot be started
    /// here): the task goes back without its attempt charged, and the worker's circuit
    /// breaker counts it.
    NotStarted(String),
    /// The task's provider refused (rate-limited, out of quota): the attempt is not
    /// charged, the worker's circuit is not touched, the task goes back to pending and its
    /// provider is paused fleet-wide until `retry_at` (or the worker's provider back-off).
    ProviderRefused {
        error: String,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// What a running attempt reports to the worker besides its end. Everything but
/// progress is written before the attempt's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Progress, 0–100 (coalesced: the latest is written).
    Progress(i16),
    /// Output, streamed live into the task's log (`jrq logs`).
    Output { stream: Stream, data: Vec<u8> },
    /// The latest checkpoint (JSON text): the next attempt gets it.
    Checkpoint(String),
    /// Usage to add (tokens, cost), by model ('' when not said).
    Usage { model: String, delta: UsageDelta },
}

/// A report and the attempt it is from.
#[derive(Debug, Clone)]
pub struct Reported {
    pub task_id: i64,
    pub attempt: i32,
    pub report: Report,
}

/// When an attempt last showed signs of life (output or progress): what an idle timeout
/// measures.
#[derive(Debug)]
pub struct Activity {
    start: std::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// The attempt is alive now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long the attempt has been silent.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// The sending end of an attempt's reports; every report is a sign of life.
#[derive(Debug, Clone)]
pub struct Reporter {
    task_id: i64,
    attempt: i32,
    tx: mpsc::UnboundedSender<Reported>,
    activity: Arc<Activity>,
}

impl Reporter {
    fn send(&self, report: Report) {
        self.activity.touch();
        let _ = self.tx.send(Reported {
            task_id: self.task_id,
            attempt: self.attempt,
            report,
        });
    }

    /// Reports progress (0–100).
    pub fn progress(&self, percent: u8) {
        self.send(Report::Progress(i16::from(percent.min(100))));
    }

    /// Adds output to the task's log.
    pub fn output(&self, stream: Stream, data: Vec<u8>) {
        if !data.is_empty() {
            self.send(Report::Output { stream, data });
        }
    }

    /// Stores a checkpoint (JSON text, at most [`CHECKPOINT_MAX`] bytes) for the next
    /// attempt.
    pub fn checkpoint(&self, json: String) {
        self.send(Report::Checkpoint(json));
    }

    /// Adds usage.
    pub fn usage(&self, model: String, delta: UsageDelta) {
        self.send(Report::Usage { model, delta });
    }

    /// A sign of life that is no report (output that is not kept, e.g. with live output off).
    pub fn touch(&self) {
        self.activity.touch();
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub id: i64,
    pub title: String,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_id: Option<Uuid>,
    /// The provider to use: the task's own, or the fallback provider the assigner routed
    /// it to while its own was paused (empty: none).
    pub provider: String,
    pub worker: String,
    /// The worker process instance running the attempt (it fences the attempt's writes).
    pub worker_instance: Uuid,
    pub timeout: Duration,
    /// The checkpoint an earlier attempt stored (JSON text), to resume from.
    pub checkpoint: Option<String>,
    stop: watch::Receiver<Option<StopReason>>,
    reporter: Reporter,
}

/// What [`TaskContext::new`] needs besides the channels.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub title: String,
    pub payload: serde_json::Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_id: Option<Uuid>,
    pub provider: String,
    pub worker: String,
    pub worker_instance: Uuid,
    pub timeout: Duration,
    pub checkpoint: Option<String>,
}

impl TaskContext {
    /// A context, the sender that stops it, and its activity; for the worker and for
    /// tests of handlers.
    pub fn new(
        a: Attempt,
        reports: mpsc::UnboundedSender<Reported>,
    ) -> (
        TaskContext,
        watch::Sender<Option<StopReason>>,
        Arc<Activity>,
    ) {
        let (tx, rx) = watch::channel(None);
        let activity = Arc::new(Activity::new());
        let reporter = Reporter {
            task_id: a.id,
            attempt: a.attempt,
            tx: reports,
            activity: activity.clone(),
        };
        (
            TaskContext {
                id: a.id,
                title: a.title,
                payload: a.payload,
                attempt: a.attempt,
                max_attempts: a.max_attempts,
                run_id: a.run_id,
                provider: a.provider,
                worker: a.worker,
                worker_instance: a.worker_instance,
                timeout: a.timeout,
                checkpoint: a.checkpoint,
                stop: rx,
                reporter,
            },
            tx,
            activity,
        )
    }

    /// Resolves once the worker asks this task to stop. A handler should then end its
    /// work promptly; the worker stops waiting for it after the kill grace.
    pub async fn stopped(&mut self) -> StopReason {
        loop {
            if let Some(r) = *self.stop.borrow_and_update() {
                return r;
            }
            if self.stop.changed().await.is_err() {
                // The worker dropped the task: treat as shutdown.
                return StopReason::Shutdown;
            }
        }
    }

    /// Reports progress (0–100).
    pub fn progress(&self, percent: u8) {
        self.reporter.progress(percent);
    }

    /// The attempt's reporter: output, checkpoints, usage, progress.
    pub fn reporter(&self) -> Reporter {
        self.reporter.clone()
    }
}

/// Runs one attempt of a task.
pub trait Handler: Send + Sync + 'static {
    /// Runs the attempt described by `ctx` to its end. Watch [`TaskContext::stopped`].
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskOutcome>;

    /// Whether tasks run as other programs. The worker then guards itself from them and
    /// keeps track of what they leave behind (see [`super::guard`]).
    fn runs_programs(&self) -> bool {
        false
    }

    /// Whether its attempts report signs of life (output, progress) as they run: only
    /// then can an idle timeout tell a silent attempt from a busy one. A handler that
    /// says no is never ended as idle.
    fn reports_activity(&self) -> bool {
        false
    }
}

/// Completes every task at once (tests, benchmarks).
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Handler for Noop {
    fn run(&self, _ctx: TaskContext) -> BoxFuture<'static, TaskOutcome> {
        Box::pin(async { TaskOutcome::Completed(String::new()) })
    }
}

/// Completes every task after a fixed time (tests, benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct Sleep(pub Duration);

impl Handler for Sleep {
    fn run(&self, mut ctx: TaskContext) -> BoxFuture<'static, TaskOutcome> {
        let d = self.0;
        Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => TaskOutcome::Completed(String::new()),
                r = ctx.stopped() => TaskOutcome::Retry(format!("stopped: {r}")),
            }
        })
    }
}

/// What `--exec` names: a built-in or a program with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecSpec {
    Noop,
    Sleep(Duration),
    Program { program: String, args: Vec<String> },
}

impl FromStr for ExecSpec {
    type Err = String;

    /// `noop`, `sleep:<duration>`, or a program and its arguments split like a shell
    /// would split words (quotes allowed) — but no shell runs it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "noop" {
            return Ok(ExecSpec::Noop);
        }
        if let Some(d) = s.strip_prefix("sleep:") {
            return validate::parse_duration(d).map(ExecSpec::Sleep);
        }
        let words = shell_words::split(s)
            .map_err(|e| format!("cannot split executor '{s}' into words ({e})"))?;
        let mut words = words.into_iter();
        let program = words.next().ok_or_else(|| {
            "no executor given: use noop, sleep:<duration>, or a program and its arguments"
                .to_string()
        })?;
        Ok(ExecSpec::Program {
            program,
            args: words.collect(),
        })
    }
}

impl ExecSpec {
    /// The handler for this spec.
    pub fn handler(
        &self,
        kill_grace: Duration,
        output_limit: usize,
        live_output: bool,
    ) -> Arc<dyn Handler> {
        match self {
            ExecSpec::Noop => Arc::new(Noop),
            ExecSpec::Sleep(d) => Arc::new(Sleep(*d)),
            ExecSpec::Program { program, args } => Arc::new(Program {
                program: program.clone(),
                args: args.clone(),
                kill_grace,
                output_limit,
                live_output,
                memory: crate::cgroup::MemoryCgroup::own(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_specs() {
        assert_eq!("noop".parse::<ExecSpec>().unwrap(), ExecSpec::Noop);
        assert_eq!(
            "sleep:50ms".parse::<ExecSpec>().unwrap(),
            ExecSpec::Sleep(Duration::from_millis(50))
        );
        assert!("sleep:soon".parse::<ExecSpec>().is_err());
        assert_eq!(
            "/usr/bin/python3 'my script.py' --fast"
                .parse::<ExecSpec>()
                .unwrap(),
            ExecSpec::Program {
                program: "/usr/bin/python3".into(),
                args: vec!["my script.py".into(), "--fast".into()]
            }
        );
        assert!("".parse::<ExecSpec>().is_err());
        assert!("'unclosed".parse::<ExecSpec>().is_err());
    }
}
