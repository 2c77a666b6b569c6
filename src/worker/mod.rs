//! The worker daemon (`jr-queue-worker --name NAME`): registers NAME, claims the tasks the
//! assigner gave it, runs each with a [`Handler`], writes fenced outcomes, heartbeats, and
//! pings the systemd watchdog only after its database round succeeded.
//!
//! ```text
//!   start -> connect, LISTEN, check the run -> register (refuse a live holder; take over
//!   a dead one and put its running tasks back) -> heartbeat + first claim -> READY=1
//!   loop: write outcomes -> heartbeat (if due) -> WATCHDOG=1 -> claim (if woken and free)
//!         -> wait for: a notification, a finished task, a tick, a signal
//!   SIGTERM -> stop claiming -> drain -> release what is left -> offline -> STOPPING=1
//! ```

pub mod cli;
pub mod executor;
pub mod guard;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::{Client, Notification};
use uuid::Uuid;

use crate::db::tasks::{self, ClaimedTask, Finish, FinishedAttempt};
use crate::db::{self, runs, workers};
use crate::error::{Error, Result};
use crate::registry;
use crate::shutdown::Shutdown;
use crate::systemd;
use crate::validate::format_duration;
pub use executor::{ExecSpec, Handler, StopReason, TaskContext, TaskOutcome};

/// Default number of tasks run at once.
pub const DEFAULT_CAPACITY: u32 = 1;
/// Default time between heartbeats (and watchdog pings).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default time between claim polls when no notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default time running tasks get to finish after SIGTERM (systemd waits 90 s by default).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time between SIGTERM and SIGKILL for a task's process group.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Default heartbeat age after which another process's claim on the name is dead.
pub const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(30);
/// Default time the watchdog is still pinged while the database is unreachable.
pub const DEFAULT_DB_GRACE: Duration = Duration::from_secs(30);
/// Default backoff before the second attempt; it doubles per attempt.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(5);
/// Default longest retry backoff.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(600);

/// Longest wait between reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How often coalesced progress reports are written.
const PROGRESS_FLUSH: Duration = Duration::from_millis(500);
/// How long the final writes may take when the database is unreachable at exit.
const FINAL_WRITE_BUDGET: Duration = Duration::from_secs(10);

/// What a worker does and how fast. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name (the systemd instance name): letters, digits, `_`, `.`, `-`.
    pub name: String,
    /// Providers served; empty serves only tasks without a provider.
    pub providers: Vec<String>,
    /// Tasks run at once. Defaults to [`DEFAULT_CAPACITY`].
    pub capacity: u32,
    /// Tasks the assigner may queue here beyond `capacity`, so short tasks do not wait for
    /// an assigner round between them. Defaults to 0 (right for long agent tasks).
    pub prefetch: u32,
    /// Time between heartbeats. Defaults to [`DEFAULT_HEARTBEAT_INTERVAL`]; lowered to
    /// half the systemd watchdog interval when that is shorter.
    pub heartbeat_interval: Duration,
    /// Time between claim polls. Defaults to [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Time running tasks get to finish after SIGTERM. Defaults to [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// SIGTERM-to-SIGKILL time for a task's process group. Defaults to [`DEFAULT_KILL_GRACE`].
    pub kill_grace: Duration,
    /// A holder of this name silent for longer is dead. Defaults to [`DEFAULT_TAKEOVER_AFTER`].
    pub takeover_after: Duration,
    /// Watchdog pings continue this long without the database. Defaults to [`DEFAULT_DB_GRACE`].
    pub db_grace: Duration,
    /// Backoff before the second attempt. Defaults to [`DEFAULT_RETRY_BASE`].
    pub retry_base: Duration,
    /// Longest backoff. Defaults to [`DEFAULT_RETRY_MAX`].
    pub retry_max: Duration,
    /// Serve only this run, and exit once it is completed, error or archived.
    pub run_id: Option<Uuid>,
    /// Exit after this many claim rounds. Defaults to no limit.
    pub max_loops: Option<u64>,
}

impl WorkerConfig {
    /// A configuration with every default.
    pub fn new(name: impl Into<String>) -> Self {
        WorkerConfig {
            name: name.into(),
            providers: vec![],
            capacity: DEFAULT_CAPACITY,
            prefetch: 0,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
            db_grace: DEFAULT_DB_GRACE,
            retry_base: DEFAULT_RETRY_BASE,
            retry_max: DEFAULT_RETRY_MAX,
            run_id: None,
            max_loops: None,
        }
    }

    /// Checks the values; the message says which one is wrong.
    pub fn validate(&self) -> Result<()> {
        crate::validate::check_worker_name(&self.name).map_err(Error::usage)?;
        if self.capacity == 0 {
            return Err(Error::usage("capacity must be at least 1"));
        }
        for (what, d) in [
            ("heartbeat interval", self.heartbeat_interval),
            ("poll interval", self.poll_interval),
            ("takeover threshold", self.takeover_after),
        ] {
            if d.is_zero() {
                return Err(Error::usage(format!("{what} must be longer than 0")));
            }
        }
        if self.takeover_after <= self.heartbeat_interval {
            return Err(Error::usage(format!(
                "takeover threshold ({}) must be longer than the heartbeat interval ({})",
                format_duration(self.takeover_after),
                format_duration(self.heartbeat_interval)
            )));
        }
        if self.max_loops == Some(0) {
            return Err(Error::usage("max loops must be at least 1"));
        }
        Ok(())
    }
}

/// Why a worker ended normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT: drained and released.
    Drained,
    /// The run it served reached this terminal status.
    RunFinished(String),
    /// `--max-loops` was reached.
    MaxLoops,
}

/// The backoff before attempt `attempt + 1`: `base * 2^(attempt-1)`, at most `max`, times
/// a random factor in [0.8, 1.2) so that retries of many tasks do not arrive together.
pub fn retry_backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.clamp(1, 31) - 1;
    let raw = base.saturating_mul(1u32 << exp).min(max);
    raw.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// The worker daemon. See the module docs.
pub struct Worker {
    cfg: WorkerConfig,
    db_cfg: db::DbConfig,
    handler: Arc<dyn Handler>,
    instance: Uuid,
    host: String,
    boot_id: String,
}

/// The database connection, which also LISTENs, and its prepared statements.
struct Conn {
    client: Client,
    notes: mpsc::UnboundedReceiver<Notification>,
    stmts: db::Statements,
}

/// A task this process is running.
struct Running {
    attempt: i32,
    title: String,
    stop: Arc<watch::Sender<Option<StopReason>>>,
    handle: tokio::task::JoinHandle<()>,
}

/// A finished attempt, from its supervisor to the main loop.
struct Done {
    task_id: i64,
    attempt: i32,
    /// `None`: nothing to write (the lease was lost).
    finish: Option<Finish>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Claiming and running.
    Serving,
    /// No more claims; wait for the running tasks, then exit with this.
    Finishing(Exit),
    /// SIGTERM: no more claims; running tasks get until `deadline`.
    Draining { deadline: Instant },
}

impl Worker {
    /// A worker with the given configuration, database and handler.
    pub fn new(cfg: WorkerConfig, db_cfg: db::DbConfig, handler: Arc<dyn Handler>) -> Self {
        Worker {
            cfg,
            db_cfg,
            handler,
            instance: Uuid::new_v4(),
            host: crate::host::hostname(),
            boot_id: crate::host::boot_id(),
        }
    }

    /// This process's instance id (fences its writes).
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// Runs until shutdown, the end of its run, or `max_loops`. Errors are startup
    /// failures (bad configuration, database unreachable at start, name held by a live
    /// process) or the loss of the name to another instance.
    pub async fn run(mut self, shutdown: watch::Receiver<Shutdown>) -> Result<Exit> {
        self.cfg.validate()?;
        if self.handler.runs_programs() {
            // Before anything else: the programs must not read the database password
            // out of this process, nor escape it by leaving their process group.
            guard::protect_this_process()
                .map_err(|e| Error::io("cannot protect the worker from its tasks", e))?;
        }
        if let Some(wd) = systemd::watchdog_interval() {
            let half = wd / 2;
            if self.cfg.heartbeat_interval > half {
                tracing::warn!(
                    heartbeat = %format_duration(self.cfg.heartbeat_interval),
                    watchdog = %format_duration(wd),
                    "heartbeat interval lowered to half the watchdog interval"
                );
                self.cfg.heartbeat_interval = half.max(Duration::from_millis(100));
            }
        }
        let conn = self.connect().await?;
        if let Some(run) = self.cfg.run_id {
            match runs::runs_status(&conn.client, run).await? {
                None => {
                    return Err(Error::NotFound(format!(
                        "there is no run {run}: check the id with `jrq runs list`"
                    )))
                }
                Some(s) if s.is_terminal() => {
                    tracing::info!(run_id = %run, status = %s, "the run is already over: exiting");
                    return Ok(Exit::RunFinished(s.to_string()));
                }
                Some(_) => {}
            }
        }
        let mut conn = conn;
        self.register(&mut conn.client).await?;
        let (session, channels) = Session::new(self, conn);
        session.run(channels, shutdown).await
    }

    /// Registers the name in one transaction: lock it, refuse a live holder, put back a
    /// dead predecessor's running tasks, write the registry row. A refusal changes nothing.
    async fn register(&self, client: &mut Client) -> Result<()> {
        let cfg = &self.cfg;
        let txn = client.transaction().await?;
        let stop_hint = format!("systemctl --user stop jr-queue-worker@{}", cfg.name);
        let me = registry::Me {
            name: &cfg.name,
            kind: "worker",
            stop_hint: &stop_hint,
            host: &self.host,
            boot_id: &self.boot_id,
            takeover_after: cfg.takeover_after,
        };
        let verdict = registry::claim_name(&txn, &me, crate::host::is_live_worker).await?;
        let why = match verdict {
            registry::Verdict::TakeOver(why) => {
                tracing::info!(worker = %cfg.name, reason = %why, "taking over the worker name");
                format!("worker restarted: {why} during this attempt")
            }
            _ => "worker restarted: the previous instance died during this attempt".into(),
        };
        // The registration puts back what a dead predecessor was running, in the same
        // transaction.
        let invocation = std::env::var("INVOCATION_ID").ok();
        let registered = workers::workers_register(
            &txn,
            &workers::Registration {
                name: &cfg.name,
                kind: "worker",
                host: &self.host,
                pid: std::process::id() as i32,
                instance: self.instance,
                invocation_id: invocation.as_deref(),
                boot_id: &self.boot_id,
                providers: &cfg.providers,
                capacity: cfg.capacity as i32,
                prefetch: cfg.prefetch as i32,
                run_id: cfg.run_id,
                takeover_why: &why,
            },
        )
        .await?;
        for r in &registered.rescued {
            tracing::warn!(task_id = r.id, to = %r.to_status, "put back a task the previous instance was running");
        }
        // What the dead predecessor's tasks left running on this host (it was killed
        // outside systemd, which would have ended its cgroup) goes before its tasks run
        // again.
        let predecessor = registered.previous_instance.filter(|i| {
            registered.previous_host.as_deref() == Some(self.host.as_str()) && *i != self.instance
        });
        txn.commit().await?;
        if let (Some(old), true) = (predecessor, self.handler.runs_programs()) {
            let ended = guard::end_processes_of_instance(old);
            if ended > 0 {
                tracing::warn!(
                    processes = ended,
                    instance = %old,
                    "ended processes the previous instance's tasks left running"
                );
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Conn> {
        let (client, notes) =
            db::listen::listen(&self.db_cfg, &[db::CHANNEL_WORKER, db::CHANNEL_RUNS]).await?;
        db::check_schema(&client).await?;
        db::tune_session(&client).await?;
        Ok(Conn {
            client,
            notes,
            stmts: db::Statements::default(),
        })
    }
}

/// The running state of a registered worker.
struct Session {
    w: Worker,
    conn: Option<Conn>,
    running: HashMap<i64, Running>,
    unwritten: Vec<FinishedAttempt>,
    progress: HashMap<(i64, i32), i16>,
    done_tx: mpsc::UnboundedSender<Done>,
    progress_tx: mpsc::UnboundedSender<executor::Progress>,
    mode: Mode,
    wake: bool,
    loops: u64,
    last_db_ok: Instant,
    next_heartbeat: Instant,
    next_poll: Instant,
    next_reconnect: Instant,
    reconnect_delay: Duration,
    last_progress_flush: Instant,
    last_status: String,
    lost_name: Option<String>,
    /// READY=1 has been sent; watchdog pings only after it.
    ready: bool,
    /// After a failed outcome write, the next try waits until this.
    next_write: Instant,
    /// Since when outcome writes have been failing (`None`: they succeed).
    writes_failing_since: Option<Instant>,
}

impl Session {
    fn new(w: Worker, conn: Conn) -> (Session, Channels) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        (
            Session {
                w,
                conn: Some(conn),
                running: HashMap::new(),
                unwritten: vec![],
                progress: HashMap::new(),
                done_tx,
                progress_tx,
                mode: Mode::Serving,
                wake: true,
                loops: 0,
                last_db_ok: now,
                next_heartbeat: now,
                next_poll: now,
                next_reconnect: now,
                reconnect_delay: Duration::from_millis(100),
                last_progress_flush: now,
                last_status: String::new(),
                lost_name: None,
                ready: false,
                next_write: now,
                writes_failing_since: None,
            },
            Channels {
                done_rx,
                progress_rx,
            },
        )
    }
}

/// Receivers the main loop selects on (kept apart from the session to borrow separately).
struct Channels {
    done_rx: mpsc::UnboundedReceiver<Done>,
    progress_rx: mpsc::UnboundedReceiver<executor::Progress>,
}

impl Session {
    async fn run(self, mut c: Channels, mut shutdown: watch::Receiver<Shutdown>) -> Result<Exit> {
        let mut s = self;
        // First round before READY=1: heartbeat and a claim poll.
        s.heartbeat().await;
        s.claim().await;
        systemd::ready(&s.status_text());
        s.ready = true;
        tracing::info!(
            worker = %s.w.cfg.name,
            instance = %s.w.instance,
            capacity = s.w.cfg.capacity,
            "worker ready"
        );
        let mut shutdown_level = *shutdown.borrow();
        loop {
            if shutdown_level >= Shutdown::Drain && !matches!(s.mode, Mode::Draining { .. }) {
                s.begin_drain(shutdown_level).await;
            }
            if s.conn.is_none() && Instant::now() >= s.next_reconnect {
                s.reconnect().await;
            }
            s.write_outcomes().await;
            s.flush_progress(false).await;
            if Instant::now() >= s.next_heartbeat {
                s.heartbeat().await;
            }
            if s.lost_name.is_some() {
                break;
            }
            if s.wake || Instant::now() >= s.next_poll {
                s.claim().await;
            }
            if let Mode::Draining { deadline } = s.mode {
                if Instant::now() >= deadline && !s.running.is_empty() {
                    s.stop_all(StopReason::Shutdown);
                }
            }
            if s.finished() {
                break;
            }
            s.update_status();

            let wait_until = s.next_wake();
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_ok() {
                        shutdown_level = *shutdown.borrow_and_update();
                        if shutdown_level == Shutdown::Now {
                            if let Mode::Draining { .. } = s.mode {
                                s.mode = Mode::Draining { deadline: Instant::now() };
                            }
                        }
                    }
                }
                note = next_note(&mut s.conn) => match note {
                    Some(n) => s.on_notification(&n),
                    None => s.connection_lost("the listening connection closed"),
                },
                Some(done) = c.done_rx.recv() => {
                    s.on_done(done);
                    while let Ok(d) = c.done_rx.try_recv() {
                        s.on_done(d);
                    }
                }
                Some(p) = c.progress_rx.recv() => {
                    s.progress.insert((p.task_id, p.attempt), p.percent);
                    while let Ok(p) = c.progress_rx.try_recv() {
                        s.progress.insert((p.task_id, p.attempt), p.percent);
                    }
                }
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
        s.finish(&mut c).await
    }
}

async fn next_note(conn: &mut Option<Conn>) -> Option<Notification> {
    match conn {
        Some(c) => c.notes.recv().await,
        None => std::future::pending().await,
    }
}

impl Session {
    fn cfg(&self) -> &WorkerConfig {
        &self.w.cfg
    }

    fn free(&self) -> usize {
        (self.cfg().capacity as usize).saturating_sub(self.running.len())
    }

    /// Whether the loop is done: a reason to stop and nothing running. Outcomes not yet
    /// written are left to `finish`, which tries within a bounded budget: with the
    /// database gone, waiting here for them would never end.
    fn finished(&self) -> bool {
        match &self.mode {
            Mode::Serving => false,
            Mode::Finishing(_) | Mode::Draining { .. } => self.running.is_empty(),
        }
    }

    fn next_wake(&self) -> Instant {
        let mut t = self.next_heartbeat;
        if matches!(self.mode, Mode::Serving) && self.free() > 0 {
            t = t.min(self.next_poll);
        }
        if self.conn.is_none() {
            t = t.min(self.next_reconnect);
        }
        let now = Instant::now();
        if let Mode::Draining { deadline } = self.mode {
            // Once passed, the stopped tasks report back through the done channel.
            if !self.running.is_empty() && deadline > now {
                t = t.min(deadline);
            }
        }
        // Writes wait for a connection: without one, their timers are not reasons to wake
        // (a past deadline here would spin the loop until the database is back).
        if self.conn.is_some() {
            if !self.progress.is_empty() {
                t = t.min(self.last_progress_flush + PROGRESS_FLUSH);
            }
            if !self.unwritten.is_empty() {
                t = t.min(self.next_write);
            }
        }
        t.max(now)
    }

    fn on_notification(&mut self, n: &Notification) {
        let name = &self.w.cfg.name;
        if n.channel() == db::CHANNEL_WORKER {
            // Notifications for other workers cost nothing: no query. Assignments wake a
            // claim; a cancel request a heartbeat, which reads the cancel requests (a
            // heartbeat on every assignment would double the worker's statements).
            let payload = n.payload();
            if payload == name {
                self.wake = true;
            } else if payload.strip_prefix(db::CANCEL_PREFIX) == Some(name.as_str()) {
                self.next_heartbeat = Instant::now();
            }
        } else if n.channel() == db::CHANNEL_RUNS {
            if let Some(run) = self.cfg().run_id {
                if n.payload() == run.to_string() {
                    self.next_poll = Instant::now();
                }
            }
        }
    }

    fn on_done(&mut self, d: Done) {
        if let Some(r) = self.running.remove(&d.task_id) {
            debug_assert_eq!(r.attempt, d.attempt);
        }
        self.progress.retain(|(id, _), _| *id != d.task_id);
        match d.finish {
            Some(finish) => self.unwritten.push(FinishedAttempt {
                task_id: d.task_id,
                attempt: d.attempt,
                finish: finish.into_storable(),
            }),
            None => tracing::warn!(
                task_id = d.task_id,
                attempt = d.attempt,
                "lease lost: the task was given to another owner; its outcome here is dropped"
            ),
        }
        // Capacity freed: the outcome write claims more in the same transaction.
    }

    fn connection_lost(&mut self, why: &str) {
        if self.conn.take().is_some() {
            tracing::warn!(reason = why, "database connection lost; reconnecting");
        }
        self.next_reconnect = Instant::now() + self.reconnect_delay;
    }

    /// Handles a database error: a closed connection is reconnected; other errors are
    /// logged and retried on the next round.
    fn db_error(&mut self, what: &str, e: &Error) {
        let closed = self.conn.as_ref().is_none_or(|c| c.client.is_closed());
        tracing::warn!(error = %e, "{what} failed");
        if closed {
            self.connection_lost(what);
        }
    }

    async fn reconnect(&mut self) {
        match self.w.connect().await {
            Ok(conn) => {
                tracing::info!("database connection restored");
                self.conn = Some(conn);
                self.reconnect_delay = Duration::from_millis(100);
                // Notifications sent while we were away are gone: look at once.
                self.wake = true;
                self.next_heartbeat = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = %format_duration(self.reconnect_delay), "reconnect failed");
                self.next_reconnect = Instant::now() + self.reconnect_delay;
                self.reconnect_delay = (self.reconnect_delay * 2).min(RECONNECT_MAX);
            }
        }
    }

    async fn write_outcomes(&mut self) {
        if self.unwritten.is_empty() || Instant::now() < self.next_write {
            return;
        }
        let Some(conn) = &self.conn else { return };
        let cfg = &self.w.cfg;
        let free = self.free();
        // When there is room, the next claim rides in the same transaction.
        let claim_too = self.mode == Mode::Serving && free > 0;
        let result = if claim_too {
            tasks::tasks_finish_and_claim(
                &conn.client,
                &conn.stmts,
                &cfg.name,
                self.w.instance,
                &self.unwritten,
                free as i64,
                cfg.run_id,
            )
            .await
        } else {
            tasks::tasks_finish(
                &conn.client,
                &conn.stmts,
                &cfg.name,
                self.w.instance,
                &self.unwritten,
            )
            .await
            .map(|applied| (applied, vec![]))
        };
        match result {
            Ok((applied, claimed)) => {
                let done = std::mem::take(&mut self.unwritten);
                self.outcomes_written(done, &applied);
                if claim_too {
                    self.loops += 1;
                    self.after_claim(free, claimed);
                }
            }
            // One outcome the database refuses (a value it cannot store, a constraint)
            // must not hold back the others: write each alone.
            Err(e) if e.is_refused_data() => {
                tracing::warn!(
                    error = %e,
                    tasks = self.unwritten.len(),
                    "the database refused a batch of outcomes: writing each alone"
                );
                self.write_outcomes_alone().await;
            }
            Err(e) => self.outcome_write_failed(&e),
        }
    }

    /// Writes the unwritten outcomes one by one. An outcome the database refuses is
    /// replaced by a failure that states the cause, so the task ends and says why; any
    /// other error keeps the rest for the next try.
    async fn write_outcomes_alone(&mut self) {
        let mut pending = std::mem::take(&mut self.unwritten).into_iter();
        let mut failure = None;
        for mut f in pending.by_ref() {
            let Some(conn) = &self.conn else {
                self.unwritten.push(f);
                break;
            };
            let (name, instance) = (&self.w.cfg.name, self.w.instance);
            let mut replaced = false;
            loop {
                let one = std::slice::from_ref(&f);
                match tasks::tasks_finish(&conn.client, &conn.stmts, name, instance, one).await {
                    Ok(applied) => {
                        self.outcomes_written(vec![f], &applied);
                        break;
                    }
                    Err(e) if e.is_refused_data() && !replaced => {
                        tracing::error!(
                            task_id = f.task_id,
                            attempt = f.attempt,
                            outcome = f.finish.kind(),
                            error = %e,
                            "the database refused this outcome: the task fails with the cause"
                        );
                        f.finish = unstorable_outcome(&f.finish, &e);
                        replaced = true;
                    }
                    Err(e) => {
                        self.unwritten.push(f);
                        failure = Some(e);
                        break;
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        self.unwritten.extend(pending);
        if let Some(e) = failure {
            self.outcome_write_failed(&e);
        }
    }

    /// Logs outcomes the database took (`applied`: the ids whose fenced write matched).
    fn outcomes_written(&mut self, done: Vec<FinishedAttempt>, applied: &[i64]) {
        let applied: HashSet<i64> = applied.iter().copied().collect();
        for f in done {
            if applied.contains(&f.task_id) {
                tracing::info!(
                    task_id = f.task_id,
                    worker = %self.w.cfg.name,
                    attempt = f.attempt,
                    outcome = f.finish.kind(),
                    error = %crate::text::for_terminal(f.finish.error().unwrap_or(""), false),
                    "task finished"
                );
            } else {
                tracing::warn!(
                    task_id = f.task_id,
                    attempt = f.attempt,
                    "lease lost before the outcome was written: left to the new owner"
                );
            }
        }
        self.last_db_ok = Instant::now();
        if self.unwritten.is_empty() {
            self.writes_failing_since = None;
        }
    }

    fn outcome_write_failed(&mut self, e: &Error) {
        self.writes_failing_since.get_or_insert_with(Instant::now);
        self.next_write = Instant::now() + Duration::from_secs(1);
        self.db_error("writing task outcomes", e);
    }

    /// Whether outcomes get written: false once writes have failed for longer than the
    /// database grace. Then the watchdog is no longer pinged — a worker that cannot record
    /// what its tasks did is not healthy, however well it heartbeats.
    fn writes_healthy(&self) -> bool {
        self.writes_failing_since
            .is_none_or(|t| t.elapsed() < self.cfg().db_grace)
    }

    async fn flush_progress(&mut self, force: bool) {
        if self.progress.is_empty()
            || (!force && self.last_progress_flush.elapsed() < PROGRESS_FLUSH)
        {
            return;
        }
        let Some(conn) = &self.conn else { return };
        let items: Vec<(i64, i32, i16)> = self
            .progress
            .iter()
            .map(|((id, a), p)| (*id, *a, *p))
            .collect();
        match tasks::tasks_progress(&conn.client, &self.w.cfg.name, self.w.instance, &items).await {
            Ok(()) => {
                self.progress.clear();
                self.last_progress_flush = Instant::now();
            }
            Err(e) => {
                // Try again after the usual flush interval, not at once.
                self.last_progress_flush = Instant::now();
                self.db_error("writing progress", &e);
            }
        }
    }

    fn heartbeat_status(&self) -> &'static str {
        match self.mode {
            Mode::Draining { .. } => "draining",
            _ if self.running.is_empty() => "idle",
            _ => "busy",
        }
    }

    /// Refreshes `last_seen`; only after that write succeeded is the watchdog pinged.
    /// Reads back the run's status, the leases held and the cancel requests.
    async fn heartbeat(&mut self) {
        self.next_heartbeat = Instant::now() + self.cfg().heartbeat_interval;
        if self.w.handler.runs_programs() {
            // Orphans that exited since: reaped; unattributed ones once no task runs.
            guard::reap_orphans();
        }
        let text = self.status_text();
        let Some(conn) = &self.conn else {
            self.ping_within_grace();
            return;
        };
        let hb = workers::Heartbeat {
            name: &self.w.cfg.name,
            instance: self.w.instance,
            load: self.running.len() as i32,
            status: self.heartbeat_status(),
            status_text: &text,
            run_id: self.w.cfg.run_id,
        };
        match workers::workers_heartbeat(&conn.client, &conn.stmts, &hb).await {
            Ok(Some(reply)) => {
                self.last_db_ok = Instant::now();
                if self.ready && self.writes_healthy() {
                    systemd::watchdog();
                } else if self.ready {
                    tracing::error!(
                        tasks = self.unwritten.len(),
                        "task outcomes could not be written for longer than the database grace: not pinging the watchdog"
                    );
                }
                self.on_heartbeat_reply(reply);
            }
            Ok(None) => {
                let msg = format!(
                    "worker name '{}' was taken over by another process: this instance stops",
                    self.w.cfg.name
                );
                tracing::error!("{msg}");
                self.stop_all(StopReason::LeaseLost);
                self.lost_name = Some(msg);
            }
            Err(e) => {
                self.db_error("heartbeat", &e);
                self.ping_within_grace();
            }
        }
    }

    /// While the database is away, the watchdog is still pinged for `db_grace`: a short
    /// outage does not restart a worker whose tasks are running fine.
    fn ping_within_grace(&self) {
        if self.ready && self.last_db_ok.elapsed() < self.cfg().db_grace && self.writes_healthy() {
            systemd::watchdog();
        }
    }

    fn on_heartbeat_reply(&mut self, reply: workers::HeartbeatReply) {
        if let Some(run) = self.cfg().run_id {
            self.on_run_status(run, reply.run_status);
        }
        for id in &reply.cancel_requested {
            self.stop_task(*id, StopReason::Cancelled);
        }
        let held: HashSet<i64> = reply.held.iter().copied().collect();
        let lost: Vec<i64> = self
            .running
            .keys()
            .copied()
            .filter(|id| !held.contains(id))
            .collect();
        for id in lost {
            tracing::warn!(
                task_id = id,
                "lease lost (the task was rescued elsewhere): stopping it here"
            );
            self.stop_task(id, StopReason::LeaseLost);
        }
    }

    /// At the top of every round, a run-scoped worker checks its run: once the run is
    /// over it claims nothing more.
    async fn check_run(&mut self) {
        let (Some(run), Some(conn)) = (self.cfg().run_id, &self.conn) else {
            return;
        };
        if self.mode != Mode::Serving {
            return;
        }
        match runs::runs_status(&conn.client, run).await {
            Ok(status) => self.on_run_status(run, status),
            Err(e) => self.db_error("checking the run", &e),
        }
    }

    fn on_run_status(&mut self, run: Uuid, status: Option<crate::task::RunStatus>) {
        if self.mode != Mode::Serving {
            return;
        }
        if status.is_none_or(|s| s.is_terminal()) {
            let status = status.map_or("deleted".to_string(), |s| s.to_string());
            tracing::info!(run_id = %run, status = %status, "the run is over: finishing running tasks, then exiting");
            self.mode = Mode::Finishing(Exit::RunFinished(status));
        }
    }

    async fn claim(&mut self) {
        self.wake = false;
        self.next_poll = Instant::now() + self.cfg().poll_interval;
        self.check_run().await;
        if self.mode != Mode::Serving {
            return;
        }
        let free = self.free();
        let Some(conn) = &self.conn else { return };
        if free == 0 {
            return;
        }
        self.loops += 1;
        let cfg = &self.w.cfg;
        match tasks::tasks_claim(
            &conn.client,
            &conn.stmts,
            &cfg.name,
            self.w.instance,
            free as i64,
            cfg.run_id,
        )
        .await
        {
            Ok(claimed) => self.after_claim(free, claimed),
            Err(e) => self.db_error("claiming tasks", &e),
        }
    }

    /// Starts what a claim returned; ends the serving after `max_loops` rounds.
    fn after_claim(&mut self, free: usize, claimed: Vec<ClaimedTask>) {
        self.last_db_ok = Instant::now();
        // A full claim means more may be waiting: look again as soon as room frees.
        self.wake = free > 0 && claimed.len() == free;
        self.next_poll = Instant::now() + self.cfg().poll_interval;
        for t in claimed {
            self.spawn(t);
        }
        if let Some(max) = self.cfg().max_loops {
            if self.loops >= max && self.mode == Mode::Serving {
                tracing::info!(
                    loops = self.loops,
                    "max loops reached: finishing running tasks, then exiting"
                );
                self.mode = Mode::Finishing(Exit::MaxLoops);
            }
        }
    }

    fn spawn(&mut self, t: ClaimedTask) {
        let cfg = &self.w.cfg;
        tracing::info!(
            task_id = t.id,
            run_id = ?t.run_id,
            worker = %cfg.name,
            attempt = t.attempt,
            title = %crate::text::for_terminal(&t.title, false),
            "task started"
        );
        let payload = match t.payload {
            Ok(p) => p,
            Err(why) => {
                // Stored JSON no program could be given as it is: the task fails, the
                // worker goes on.
                tracing::warn!(task_id = t.id, error = %why, "task failed before it started");
                self.unwritten.push(FinishedAttempt {
                    task_id: t.id,
                    attempt: t.attempt,
                    finish: Finish::Failed { error: why },
                });
                return;
            }
        };
        let (ctx, stop) = TaskContext::new(
            t.id,
            t.title.clone(),
            payload,
            t.attempt,
            t.max_attempts,
            t.run_id,
            cfg.name.clone(),
            self.w.instance,
            t.timeout,
            self.progress_tx.clone(),
        );
        let stop = Arc::new(stop);
        let policy = Policy {
            timeout: t.timeout,
            kill_grace: cfg.kill_grace,
            retry_base: cfg.retry_base,
            retry_max: cfg.retry_max,
        };
        let handle = tokio::spawn(supervise(
            self.w.handler.clone(),
            ctx,
            stop.clone(),
            policy,
            self.done_tx.clone(),
        ));
        self.running.insert(
            t.id,
            Running {
                attempt: t.attempt,
                title: t.title,
                stop,
                handle,
            },
        );
    }

    fn stop_task(&mut self, id: i64, reason: StopReason) {
        if let Some(r) = self.running.get(&id) {
            if r.stop.borrow().is_none() {
                tracing::info!(task_id = id, reason = %reason, "stopping task");
                r.stop.send_replace(Some(reason));
            }
        }
    }

    fn stop_all(&mut self, reason: StopReason) {
        let ids: Vec<i64> = self.running.keys().copied().collect();
        for id in ids {
            self.stop_task(id, reason);
        }
    }

    async fn begin_drain(&mut self, level: Shutdown) {
        let timeout = if level == Shutdown::Now {
            Duration::ZERO
        } else {
            self.cfg().drain_timeout
        };
        tracing::info!(running = self.running.len(), drain = %format_duration(timeout), "shutting down: no more claims");
        self.mode = Mode::Draining {
            deadline: Instant::now() + timeout,
        };
        self.unassign().await;
        self.next_heartbeat = Instant::now();
    }

    /// Gives tasks assigned here but not started back to pending, so they go elsewhere.
    async fn unassign(&mut self) {
        let Some(conn) = &self.conn else { return };
        let (name, instance) = (&self.w.cfg.name, self.w.instance);
        match tasks::tasks_unassign_own(&conn.client, name, instance, "worker stopping").await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "assigned tasks given back to pending"),
            Err(e) => self.db_error("giving back assigned tasks", &e),
        }
    }

    fn status_text(&self) -> String {
        let cap = self.cfg().capacity;
        let n = self.running.len();
        let verb = match &self.mode {
            Mode::Draining { .. } => "draining",
            Mode::Finishing(Exit::RunFinished(_)) => "run over, finishing",
            Mode::Finishing(_) => "finishing",
            Mode::Serving if n == 0 => "idle",
            Mode::Serving => "running",
        };
        let mut text = format!("{verb} {n}/{cap}");
        if let Some((id, r)) = self.running.iter().min_by_key(|(id, _)| **id) {
            let title: String = r.title.chars().take(60).collect();
            text.push_str(&format!(": #{id} '{title}'"));
            if n > 1 {
                text.push_str(&format!(" and {} more", n - 1));
            }
        }
        if self.conn.is_none() {
            text.push_str(&format!(
                "; database unreachable for {}",
                format_duration(self.last_db_ok.elapsed())
            ));
        } else if let Some(since) = self.writes_failing_since {
            text.push_str(&format!(
                "; {} outcome(s) unwritten for {}",
                self.unwritten.len(),
                format_duration(since.elapsed())
            ));
        }
        text
    }

    fn update_status(&mut self) {
        let text = self.status_text();
        if text != self.last_status {
            systemd::status(&text);
            self.last_status = text;
        }
    }

    /// The way out: wait for stopped tasks, write every outcome, give back assigned
    /// tasks, go offline, STOPPING=1.
    async fn finish(mut self, c: &mut Channels) -> Result<Exit> {
        // Tasks asked to stop get the kill grace (and a little) to report back.
        let hard = Instant::now() + self.cfg().kill_grace + Duration::from_secs(2);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(hard, c.done_rx.recv()).await {
                Ok(Some(d)) => self.on_done(d),
                _ => break,
            }
        }
        for (id, r) in self.running.drain() {
            // A handler that ignored the stop: abort it and give its task back.
            r.handle.abort();
            self.unwritten.push(FinishedAttempt {
                task_id: id,
                attempt: r.attempt,
                finish: Finish::Released {
                    reason: "worker shutting down (handler did not stop in time)".into(),
                },
            });
        }
        let deadline = Instant::now() + FINAL_WRITE_BUDGET;
        loop {
            if self.conn.is_none() {
                self.reconnect().await;
            }
            self.next_write = Instant::now();
            self.write_outcomes().await;
            if self.unwritten.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until((Instant::now() + self.reconnect_delay).min(deadline)).await;
        }
        if !self.unwritten.is_empty() {
            tracing::error!(
                tasks = self.unwritten.len(),
                "could not write the last outcomes: the health monitor will put these tasks back"
            );
        }
        let exit = match (&self.lost_name, &self.mode) {
            (Some(msg), _) => Err(Error::NameLost(msg.clone())),
            (None, Mode::Finishing(e)) => Ok(e.clone()),
            (None, _) => Ok(Exit::Drained),
        };
        if self.lost_name.is_none() {
            self.unassign().await;
            if let Some(conn) = &self.conn {
                let why = match &exit {
                    Ok(Exit::RunFinished(s)) => format!("exited: run {s}"),
                    Ok(Exit::MaxLoops) => "exited: max loops reached".into(),
                    _ => "exited: stopped".into(),
                };
                if let Err(e) = workers::workers_set_offline(
                    &conn.client,
                    &self.w.cfg.name,
                    self.w.instance,
                    &why,
                )
                .await
                {
                    tracing::warn!(error = %e, "could not mark the worker offline");
                }
            }
        }
        systemd::stopping("stopping");
        tracing::info!(outcome = ?exit, "worker stopped");
        exit
    }
}

/// What a supervisor needs to turn a handler's end into a task transition.
#[derive(Debug, Clone, Copy)]
struct Policy {
    timeout: Duration,
    kill_grace: Duration,
    retry_base: Duration,
    retry_max: Duration,
}

/// Runs one attempt: the handler, raced against the task's timeout and the worker's stop
/// requests; then maps the end to a transition and reports it to the main loop.
async fn supervise(
    handler: Arc<dyn Handler>,
    ctx: TaskContext,
    stop: Arc<watch::Sender<Option<StopReason>>>,
    p: Policy,
    done: mpsc::UnboundedSender<Done>,
) {
    let (task_id, attempt, max_attempts) = (ctx.id, ctx.attempt, ctx.max_attempts);
    let mut stop_rx = stop.subscribe();
    let fut = AssertUnwindSafe(handler.run(ctx)).catch_unwind();
    tokio::pin!(fut);
    let first = tokio::select! {
        out = &mut fut => Some(out),
        _ = tokio::time::sleep(p.timeout) => {
            stop.send_if_modified(|r| {
                if r.is_none() { *r = Some(StopReason::Timeout); true } else { false }
            });
            None
        }
        _ = stop_rx.wait_for(|r| r.is_some()) => None,
    };
    let out = match first {
        Some(out) => Some(out),
        // Asked to stop: give the handler the kill grace (and a little) to end.
        None => tokio::time::timeout(p.kill_grace + Duration::from_secs(1), &mut fut)
            .await
            .ok(),
    };
    let out =
        out.map(|r| r.unwrap_or_else(|_| TaskOutcome::Retry("the task handler panicked".into())));
    let reason = *stop.borrow();
    let finish = decide(out, reason, attempt, max_attempts, &p);
    let _ = done.send(Done {
        task_id,
        attempt,
        finish,
    });
}

/// The failure written instead of an outcome the database refused: the task ends, and
/// its error says what the attempt ended with and why that could not be stored.
fn unstorable_outcome(original: &Finish, e: &Error) -> Finish {
    let cause = e.to_string();
    Finish::Failed {
        error: format!(
            "jrq could not store this attempt's outcome ({}): {}",
            original.kind(),
            crate::text::truncate_bytes(&cause, 1000)
        ),
    }
}

/// Maps a handler's outcome and the stop reason (if any) to the transition to write.
fn decide(
    out: Option<TaskOutcome>,
    reason: Option<StopReason>,
    attempt: i32,
    max_attempts: i32,
    p: &Policy,
) -> Option<Finish> {
    let attempt_failed = |error: String| {
        if attempt < max_attempts {
            Finish::RetryLater {
                error,
                backoff: retry_backoff(attempt, p.retry_base, p.retry_max),
            }
        } else {
            Finish::Failed {
                error: format!("{error} (attempt {attempt} of {max_attempts}: no attempts left)"),
            }
        }
    };
    match (out, reason) {
        // Work that finished is kept, whatever happened meanwhile.
        (Some(TaskOutcome::Completed(result)), _) => Some(Finish::Completed { result }),
        (_, Some(StopReason::LeaseLost)) => None,
        (_, Some(StopReason::Cancelled)) => Some(Finish::Cancelled {
            reason: "cancelled while running".into(),
        }),
        (_, Some(StopReason::Shutdown)) => Some(Finish::Released {
            reason: "worker shutting down: given back, attempt not charged".into(),
        }),
        (_, Some(StopReason::Timeout)) => Some(attempt_failed(format!(
            "timed out after {}",
            format_duration(p.timeout)
        ))),
        (Some(TaskOutcome::Retry(e)), None) => Some(attempt_failed(e)),
        (Some(TaskOutcome::Failed(e)), None) => Some(Finish::Failed { error: e }),
        (Some(TaskOutcome::NotStarted(e)), None) => Some(Finish::NotStarted {
            reason: format!("{e}: given back, attempt not charged"),
        }),
        (None, None) => Some(attempt_failed("the task handler did not finish".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            timeout: Duration::from_secs(60),
            kill_grace: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(100),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(10);
        for _ in 0..100 {
            let a1 = retry_backoff(1, b, m);
            let a2 = retry_backoff(2, b, m);
            let a3 = retry_backoff(3, b, m);
            assert!(a1 >= Duration::from_millis(800) && a1 < Duration::from_millis(1200));
            assert!(a2 > a1 && a3 > a2);
            assert!(retry_backoff(30, b, m) < Duration::from_secs(12));
        }
    }

    #[test]
    fn outcomes_map_to_transitions() {
        let p = policy();
        let d = |o, r, a| decide(o, r, a, 3, &p);
        assert_eq!(
            d(
                Some(TaskOutcome::Completed("ok".into())),
                Some(StopReason::Timeout),
                1
            ),
            Some(Finish::Completed {
                result: "ok".into()
            })
        );
        assert!(matches!(
            d(Some(TaskOutcome::Retry("x".into())), None, 1),
            Some(Finish::RetryLater { .. })
        ));
        match d(Some(TaskOutcome::Retry("x".into())), None, 3) {
            Some(Finish::Failed { error }) => assert!(error.contains("no attempts left")),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            d(Some(TaskOutcome::Failed("x".into())), None, 1),
            Some(Finish::Failed { .. })
        ));
        assert_eq!(d(None, Some(StopReason::LeaseLost), 1), None);
        assert!(matches!(
            d(None, Some(StopReason::Cancelled), 1),
            Some(Finish::Cancelled { .. })
        ));
        assert!(matches!(
            d(None, Some(StopReason::Shutdown), 1),
            Some(Finish::Released { .. })
        ));
        match d(
            Some(TaskOutcome::Retry("stopped".into())),
            Some(StopReason::Timeout),
            1,
        ) {
            Some(Finish::RetryLater { error, .. }) => {
                assert!(error.starts_with("timed out after 1m"))
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn config_validation() {
        assert!(WorkerConfig::new("ok_name").validate().is_ok());
        assert!(WorkerConfig::new("bad name").validate().is_err());
        let mut c = WorkerConfig::new("w");
        c.capacity = 0;
        assert!(c.validate().is_err());
        let mut c = WorkerConfig::new("w");
        c.takeover_after = c.heartbeat_interval;
        assert!(c.validate().is_err());
    }
}
