//! A registered worker at work, as the daemon runner drives it: its slots and their
//! attempts, the claim, progress coalescing, the heartbeat and what it reads back (the
//! run, the leases held, cancel requests), the drain, and the way out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::Notification;
use uuid::Uuid;

use super::executor::{self, StopReason, TaskContext};
use super::guard;
use super::outcomes::{Fence, Outcomes};
use super::supervise::{supervise, Done, Policy};
use super::{Exit, Worker, WorkerConfig};
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::daemon::runner::{Beat, Component, Ctx};
use crate::daemon::shutdown::Shutdown;
use crate::db::tasks::{self, ClaimedTask, Finish, FinishedAttempt};
use crate::db::{self, runs, workers};
use crate::error::{Error, Result};
use crate::task::RunStatus;
use crate::validate::format_duration;

/// How often coalesced progress reports are written.
const PROGRESS_FLUSH: Duration = Duration::from_millis(500);
/// How long the final writes may take when the database is unreachable at exit.
const FINAL_WRITE_BUDGET: Duration = Duration::from_secs(10);

/// A task this process is running.
struct Running {
    attempt: i32,
    title: String,
    stop: Arc<watch::Sender<Option<StopReason>>>,
    handle: tokio::task::JoinHandle<()>,
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

/// What the worker's own sources deliver to the loop.
pub(super) enum Event {
    /// An attempt ended.
    Done(Done),
    /// A running attempt reported progress.
    Progress(executor::Progress),
}

/// The running state of a registered worker.
pub(super) struct Session {
    w: Worker,
    running: HashMap<i64, Running>,
    outcomes: Outcomes,
    /// Progress reported since the last write, per attempt.
    progress: HashMap<(i64, i32), i16>,
    last_progress_flush: Instant,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    progress_tx: mpsc::UnboundedSender<executor::Progress>,
    progress_rx: mpsc::UnboundedReceiver<executor::Progress>,
    mode: Mode,
    /// A claim is due at once (assigned tasks were announced, or the connection is back).
    wake: bool,
    next_poll: Instant,
    /// When orphaned processes of tasks are next reaped.
    next_reap: Instant,
    loops: u64,
    lost_name: Option<String>,
}

impl Session {
    pub(super) fn new(w: Worker) -> Session {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Session {
            w,
            running: HashMap::new(),
            outcomes: Outcomes::new(),
            progress: HashMap::new(),
            last_progress_flush: now,
            done_tx,
            done_rx,
            progress_tx,
            progress_rx,
            mode: Mode::Serving,
            wake: true,
            next_poll: now,
            next_reap: now,
            loops: 0,
            lost_name: None,
        }
    }

    fn cfg(&self) -> &WorkerConfig {
        &self.w.cfg
    }

    fn free(&self) -> usize {
        (self.cfg().capacity as usize).saturating_sub(self.running.len())
    }

    fn on_done(&mut self, d: Done) {
        if let Some(r) = self.running.remove(&d.task_id) {
            debug_assert_eq!(r.attempt, d.attempt);
        }
        self.progress.retain(|(id, _), _| *id != d.task_id);
        match d.finish {
            Some(finish) => self.outcomes.push(FinishedAttempt {
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
        // Capacity freed: the outcome write claims more in the same statement.
    }

    /// Writes what ended; with room, the next claim rides along.
    async fn write_outcomes(&mut self, ctx: &mut Ctx<'_>) {
        let free = self.free();
        let claim = (self.mode == Mode::Serving && free > 0).then_some(free as i64);
        let fence = Fence {
            name: &self.w.cfg.name,
            instance: self.w.instance,
            run: self.w.cfg.run_id,
        };
        let claimed = self.outcomes.write(ctx.link, ctx.live, &fence, claim).await;
        if let Some(claimed) = claimed {
            self.loops += 1;
            self.after_claim(free, claimed);
        }
    }

    async fn flush_progress(&mut self, ctx: &mut Ctx<'_>) {
        if self.progress.is_empty() || self.last_progress_flush.elapsed() < PROGRESS_FLUSH {
            return;
        }
        let Some(conn) = ctx.link.conn() else { return };
        let items: Vec<(i64, i32, i16)> = self
            .progress
            .iter()
            .map(|((id, a), p)| (*id, *a, *p))
            .collect();
        let written =
            tasks::tasks_progress(&conn.client, &self.w.cfg.name, self.w.instance, &items).await;
        // Tried again after the usual flush interval, not at once.
        self.last_progress_flush = Instant::now();
        match written {
            Ok(()) => self.progress.clear(),
            Err(e) => {
                ctx.link.failed("writing progress", &e);
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

    /// At the top of every claim, a run-scoped worker checks its run: once the run is
    /// over it claims nothing more.
    async fn check_run(&mut self, ctx: &mut Ctx<'_>) {
        let (Some(run), Some(conn)) = (self.cfg().run_id, ctx.link.conn()) else {
            return;
        };
        if self.mode != Mode::Serving {
            return;
        }
        match runs::runs_status(&conn.client, run).await {
            Ok(status) => self.on_run_status(run, status),
            Err(e) => {
                ctx.link.failed("checking the run", &e);
            }
        }
    }

    fn on_run_status(&mut self, run: Uuid, status: Option<RunStatus>) {
        if self.mode != Mode::Serving {
            return;
        }
        if status.is_none_or(|s| s.is_terminal()) {
            let status = status.map_or("deleted".to_string(), |s| s.to_string());
            tracing::info!(run_id = %run, status = %status, "the run is over: finishing running tasks, then exiting");
            self.mode = Mode::Finishing(Exit::RunFinished(status));
        }
    }

    async fn claim(&mut self, ctx: &mut Ctx<'_>) {
        self.wake = false;
        self.next_poll = Instant::now() + self.cfg().poll_interval;
        self.check_run(ctx).await;
        if self.mode != Mode::Serving {
            return;
        }
        let free = self.free();
        let Some(conn) = ctx.link.conn() else { return };
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
            Ok(claimed) => {
                ctx.live.db_ok();
                self.after_claim(free, claimed);
            }
            Err(e) => {
                ctx.link.failed("claiming tasks", &e);
            }
        }
    }

    /// Starts what a claim returned; ends the serving after `max_loops` rounds.
    fn after_claim(&mut self, free: usize, claimed: Vec<ClaimedTask>) {
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
                self.outcomes.push(FinishedAttempt {
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

    async fn begin_drain(&mut self, level: Shutdown, ctx: &mut Ctx<'_>) {
        let timeout = if level == Shutdown::Now {
            Duration::ZERO
        } else {
            self.cfg().drain_timeout
        };
        tracing::info!(running = self.running.len(), drain = %format_duration(timeout), "shutting down: no more claims");
        self.mode = Mode::Draining {
            deadline: Instant::now() + timeout,
        };
        self.unassign(ctx.link).await;
        ctx.heartbeat_now();
    }

    /// Gives tasks assigned here but not started back to pending, so they go elsewhere.
    async fn unassign(&mut self, link: &mut Link) {
        let Some(conn) = link.conn() else { return };
        let (name, instance) = (&self.w.cfg.name, self.w.instance);
        match tasks::tasks_unassign_own(&conn.client, name, instance, "worker stopping").await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tasks = n, "assigned tasks given back to pending"),
            Err(e) => {
                link.failed("giving back assigned tasks", &e);
            }
        }
    }
}

impl Component for Session {
    type Event = Event;
    type Exit = Exit;

    fn heartbeat_interval(&self) -> Duration {
        self.cfg().heartbeat_interval
    }

    /// Refreshes `last_seen` and reads back the run's status, the leases held and the
    /// cancel requests.
    async fn heartbeat(&mut self, ctx: &mut Ctx<'_>) -> Beat {
        let text = self.status_text(None);
        let Some(conn) = ctx.link.conn() else {
            return Beat::Failed;
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
                if ctx.live.is_ready() && !self.healthy() {
                    tracing::error!(
                        tasks = self.outcomes.len(),
                        "task outcomes could not be written for longer than the database grace: not pinging the watchdog"
                    );
                }
                self.on_heartbeat_reply(reply);
                Beat::Ok
            }
            Ok(None) => {
                let msg = format!(
                    "worker name '{}' was taken over by another process: this instance stops",
                    self.w.cfg.name
                );
                tracing::error!("{msg}");
                self.stop_all(StopReason::LeaseLost);
                self.lost_name = Some(msg);
                Beat::End
            }
            Err(e) => {
                ctx.link.failed("heartbeat", &e);
                Beat::Failed
            }
        }
    }

    async fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if let Mode::Draining { deadline } = self.mode {
            if Instant::now() >= deadline && !self.running.is_empty() {
                self.stop_all(StopReason::Shutdown);
            }
        }
        self.write_outcomes(ctx).await;
        self.flush_progress(ctx).await;
        if self.wake || Instant::now() >= self.next_poll {
            self.claim(ctx).await;
        }
        if self.w.handler.runs_programs() && Instant::now() >= self.next_reap {
            // Orphans that exited since: reaped; unattributed ones once no task runs.
            guard::reap_orphans();
            self.next_reap = Instant::now() + self.cfg().heartbeat_interval;
        }
    }

    fn on_ready(&self) {
        tracing::info!(
            worker = %self.w.cfg.name,
            instance = %self.w.instance,
            capacity = self.w.cfg.capacity,
            "worker ready"
        );
    }

    fn on_notification(&mut self, n: &Notification, ctx: &mut Ctx<'_>) {
        let name = &self.w.cfg.name;
        if n.channel() == db::CHANNEL_WORKER {
            // Notifications for other workers cost nothing: no query. Assignments wake a
            // claim; a cancel request a heartbeat, which reads the cancel requests (a
            // heartbeat on every assignment would double the worker's statements).
            let payload = n.payload();
            if payload == name {
                self.wake = true;
            } else if payload.strip_prefix(db::CANCEL_PREFIX) == Some(name.as_str()) {
                ctx.heartbeat_now();
            }
        } else if n.channel() == db::CHANNEL_RUNS {
            if let Some(run) = self.cfg().run_id {
                if n.payload() == run.to_string() {
                    self.next_poll = Instant::now();
                }
            }
        }
    }

    fn on_reconnected(&mut self) {
        // Notifications sent while we were away are gone: look at once.
        self.wake = true;
    }

    async fn next_event(&mut self) -> Event {
        tokio::select! {
            Some(d) = self.done_rx.recv() => Event::Done(d),
            Some(p) = self.progress_rx.recv() => Event::Progress(p),
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Done(d) => {
                self.on_done(d);
                while let Ok(d) = self.done_rx.try_recv() {
                    self.on_done(d);
                }
            }
            Event::Progress(p) => {
                self.progress.insert((p.task_id, p.attempt), p.percent);
                while let Ok(p) = self.progress_rx.try_recv() {
                    self.progress.insert((p.task_id, p.attempt), p.percent);
                }
            }
        }
    }

    async fn on_shutdown(&mut self, level: Shutdown, ctx: &mut Ctx<'_>) {
        match (&self.mode, level) {
            (_, Shutdown::Running) => {}
            (Mode::Draining { .. }, Shutdown::Now) => {
                // A second signal: the drain is over now.
                self.mode = Mode::Draining {
                    deadline: Instant::now(),
                };
            }
            (Mode::Draining { .. }, _) => {}
            _ => self.begin_drain(level, ctx).await,
        }
    }

    fn wake_at(&self, connected: bool) -> Option<Instant> {
        let now = Instant::now();
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if matches!(self.mode, Mode::Serving) && self.free() > 0 {
            at(self.next_poll);
        }
        if let Mode::Draining { deadline } = self.mode {
            // Once passed, the stopped tasks report back through the done channel.
            if !self.running.is_empty() && deadline > now {
                at(deadline);
            }
        }
        // Writes wait for a connection: without one, their timers are not reasons to wake
        // (a past deadline here would spin the loop until the database is back).
        if connected {
            if !self.progress.is_empty() {
                at(self.last_progress_flush + PROGRESS_FLUSH);
            }
            if let Some(w) = self.outcomes.next_write() {
                at(w);
            }
        }
        t
    }

    fn status_text(&self, db_down_for: Option<Duration>) -> String {
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
        if let Some(down) = db_down_for {
            text.push_str(&format!(
                "; database unreachable for {}",
                format_duration(down)
            ));
        } else if let Some(failing) = self.outcomes.failing_for() {
            text.push_str(&format!(
                "; {} outcome(s) unwritten for {}",
                self.outcomes.len(),
                format_duration(failing)
            ));
        }
        text
    }

    fn healthy(&self) -> bool {
        self.outcomes.healthy(self.cfg().db_grace)
    }

    /// Done: the name is lost, or there is a reason to stop and nothing runs. Outcomes
    /// not yet written are left to `finish`, which tries within a bounded budget: with
    /// the database gone, waiting here for them would never end.
    fn done(&self) -> bool {
        self.lost_name.is_some()
            || match &self.mode {
                Mode::Serving => false,
                Mode::Finishing(_) | Mode::Draining { .. } => self.running.is_empty(),
            }
    }

    /// The way out: wait for stopped tasks, write every outcome, give back assigned
    /// tasks, go offline, STOPPING=1.
    async fn finish(mut self, link: &mut Link, live: &mut Liveness) -> Result<Exit> {
        // Tasks asked to stop get the kill grace (and a little) to report back.
        let hard = Instant::now() + self.cfg().kill_grace + Duration::from_secs(2);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(hard, self.done_rx.recv()).await {
                Ok(Some(d)) => self.on_done(d),
                _ => break,
            }
        }
        for (id, r) in self.running.drain() {
            // A handler that ignored the stop: abort it and give its task back.
            r.handle.abort();
            self.outcomes.push(FinishedAttempt {
                task_id: id,
                attempt: r.attempt,
                finish: Finish::Released {
                    reason: "worker shutting down (handler did not stop in time)".into(),
                },
            });
        }
        let deadline = Instant::now() + FINAL_WRITE_BUDGET;
        loop {
            if !link.is_up() {
                link.reconnect_now().await;
            }
            self.outcomes.write_now();
            let fence = Fence {
                name: &self.w.cfg.name,
                instance: self.w.instance,
                run: self.w.cfg.run_id,
            };
            let _ = self.outcomes.write(link, live, &fence, None).await;
            if self.outcomes.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until((Instant::now() + link.retry_delay()).min(deadline)).await;
        }
        if !self.outcomes.is_empty() {
            tracing::error!(
                tasks = self.outcomes.len(),
                "could not write the last outcomes: the health monitor will put these tasks back"
            );
        }
        let exit = match (&self.lost_name, &self.mode) {
            (Some(msg), _) => Err(Error::NameLost(msg.clone())),
            (None, Mode::Finishing(e)) => Ok(e.clone()),
            (None, _) => Ok(Exit::Drained),
        };
        if self.lost_name.is_none() {
            self.unassign(link).await;
            if let Some(conn) = link.conn() {
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
        live.stopping("stopping");
        tracing::info!(outcome = ?exit, "worker stopped");
        exit
    }
}
