//! A registered worker at work, as the daemon runner drives it: its slots and their
//! attempts, the claim, progress coalescing, the heartbeat and what it reads back (the
//! run, the leases held, cancel requests), the drain, and the way out.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Notification;
use uuid::Uuid;

use super::executor::StopReason;
use super::guard;
use super::outcomes::Outcomes;
use super::prefetch::{AutoPrefetch, Prefetch};
use super::slots::{Event, Slots};
use super::supervise::Done;
use super::{Exit, Worker, WorkerConfig};

mod leave;
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::daemon::runner::{Beat, Component, Ctx};
use crate::daemon::shutdown::Shutdown;
use crate::db::tasks::{self, ClaimedTask, Finish, FinishedAttempt};
use crate::db::{self, runs, workers};
use crate::error::Result;
use crate::task::RunStatus;
use crate::validate::format_duration;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Claiming and running.
    Serving,
    /// No more claims; wait for the running tasks, then exit with this.
    Finishing(Exit),
    /// SIGTERM: no more claims; running tasks get until `deadline`.
    Draining { deadline: Instant },
}

/// The running state of a registered worker.
pub(super) struct Session {
    w: Worker,
    slots: Slots,
    outcomes: Outcomes,
    mode: Mode,
    /// A claim is due at once (assigned tasks were announced, or the connection is back).
    wake: bool,
    next_poll: Instant,
    /// When orphaned processes of tasks are next reaped.
    next_reap: Instant,
    loops: u64,
    lost_name: Option<String>,
    /// The automatic prefetch (`--prefetch auto`); `None` when it is fixed.
    prefetch: Option<AutoPrefetch>,
}

impl Session {
    pub(super) fn new(w: Worker) -> Session {
        let now = Instant::now();
        let slots = Slots::new(w.cfg.output_keep);
        let prefetch =
            (w.cfg.prefetch == Prefetch::Auto).then(|| AutoPrefetch::new(w.cfg.capacity));
        Session {
            prefetch,
            w,
            slots,
            outcomes: Outcomes::new(),
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
        (self.cfg().capacity as usize).saturating_sub(self.slots.len())
    }

    fn on_done(&mut self, d: Done) {
        let ran = self.slots.ended(&d);
        if let (Some(ran), Some(p)) = (ran, self.prefetch.as_mut()) {
            p.observe(ran);
        }
        match d.finish {
            Some(finish) => self.outcomes.push(FinishedAttempt {
                task_id: d.task_id,
                attempt: d.attempt,
                finish: finish.into_storable(),
            }),
            None => {
                tracing::warn!(
                    task_id = d.task_id,
                    attempt = d.attempt,
                    "lease lost: the task was given to another owner; its outcome here is dropped"
                );
                // No outcome write will claim for the freed slot, and a notification that
                // came while it was still taken found the worker full: look now.
                self.wake = true;
            }
        }
        // Capacity freed: the outcome write claims more in the same statement.
    }

    /// Counts the outcomes written in the registry row, when due (or `now`).
    async fn count_outcomes(&mut self, ctx: &mut Ctx<'_>, now: bool) {
        let fence = self.w.fence();
        self.outcomes.count(ctx.link, &fence, now).await;
    }

    /// Writes what ended; with room, the next claim rides along.
    async fn write_outcomes(&mut self, ctx: &mut Ctx<'_>) {
        let free = self.free();
        let claim = (self.mode == Mode::Serving && free > 0).then_some(free as i64);
        let fence = self.w.fence();
        let claimed = self.outcomes.write(ctx.link, ctx.live, &fence, claim).await;
        if let Some(claimed) = claimed {
            self.loops += 1;
            self.after_claim(free, claimed);
        }
    }

    fn heartbeat_status(&self) -> &'static str {
        match self.mode {
            Mode::Draining { .. } => "draining",
            _ if self.slots.is_empty() => "idle",
            _ => "busy",
        }
    }

    fn on_heartbeat_reply(&mut self, reply: workers::HeartbeatReply) {
        if let Some(run) = self.cfg().run_id {
            self.on_run_status(run, reply.run_status);
        }
        for id in &reply.cancel_requested {
            self.slots.stop(*id, StopReason::Cancelled);
        }
        self.slots.stop_unheld(&reply.held);
    }

    /// Leases the heartbeat says this instance holds on attempts it neither runs nor has an
    /// outcome of: the reply to a claim, or an outcome, was lost (a database crash between
    /// commit and answer; a failover to a standby that had not received it). Claims and
    /// outcome writes happen on this loop, one statement at a time, so what this worker
    /// knows is complete when the reply comes.
    fn unrun(&self, held: &[i64]) -> Vec<i64> {
        held.iter()
            .copied()
            .filter(|id| !self.slots.contains(*id) && !self.outcomes.contains(*id))
            .collect()
    }

    /// Gives the unrun leases back, so that the tasks run again at once instead of waiting
    /// for their timeout under a worker that looks alive.
    async fn release_unrun(&mut self, ctx: &mut Ctx<'_>, unrun: &[i64]) {
        if unrun.is_empty() {
            return;
        }
        let Some(conn) = ctx.link.conn() else { return };
        match tasks::tasks_release_unrun(&conn.client, &self.w.cfg.name, self.w.instance, unrun)
            .await
        {
            Ok(released) => {
                for id in released {
                    tracing::warn!(
                        task_id = id,
                        "lease held on an attempt this worker does not run (its claim's reply or its outcome was lost): given back"
                    );
                }
            }
            Err(e) => {
                ctx.link.failed("giving back unrun leases", &e);
            }
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

    /// Tells the assigners the automatic prefetch when it changed (at most once a second).
    async fn publish_prefetch(&mut self, ctx: &mut Ctx<'_>) {
        let Some(auto) = self.prefetch.as_ref() else {
            return;
        };
        let now = Instant::now();
        let Some(value) = auto.due(self.slots.oldest_age(), now) else {
            return;
        };
        let Some(conn) = ctx.link.conn() else { return };
        let stored = match workers::workers_set_prefetch(
            &conn.client,
            &self.w.cfg.name,
            self.w.instance,
            value as i32,
        )
        .await
        {
            Ok(stored) => {
                tracing::debug!(prefetch = value, stored, "automatic prefetch");
                stored
            }
            Err(e) => {
                if !ctx.link.failed("setting the prefetch", &e) {
                    // Refused, not lost (a login without EXECUTE on the function): stop
                    // asking every second; the value stays what the registration set.
                    tracing::warn!(
                        "the automatic prefetch is off for this process: run `jrq roles setup` \
                         (or `jrq migrate`) so the worker's login may set it"
                    );
                    self.prefetch = None;
                    return;
                }
                false
            }
        };
        if let Some(p) = self.prefetch.as_mut() {
            p.sent(value, stored, now);
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
            &self.w.floor,
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

    fn spawn(&mut self, mut t: ClaimedTask) {
        // Claimed again while it runs here: the database lost the first claim (a failover
        // to a standby that had not received it) and this worker claimed it anew.
        match self.slots.attempt_of(t.id) {
            // The same attempt under the same instance: the running one holds the lease
            // again, and goes on.
            Some(a) if a == t.attempt => {
                tracing::warn!(
                    task_id = t.id,
                    attempt = a,
                    "claimed again while it runs here (the database lost the first claim): the running attempt goes on"
                );
                return;
            }
            // Another attempt: the running one has lost its lease. It is stopped, and the
            // new claim, which nothing runs, is given back at the next heartbeat.
            Some(a) => {
                tracing::warn!(
                    task_id = t.id,
                    running = a,
                    claimed = t.attempt,
                    "claimed again as another attempt while one runs here: stopping the running one"
                );
                self.slots.stop(t.id, StopReason::LeaseLost);
                return;
            }
            None => {}
        }
        let cfg = &self.w.cfg;
        tracing::info!(
            task_id = t.id,
            run_id = t.run_id.map(tracing::field::display),
            worker = %cfg.name,
            attempt = t.attempt,
            title = %crate::text::for_terminal(&t.title, false),
            "task started"
        );
        if let Some(budget) = t
            .max_cost_microusd
            .filter(|b| t.cost_microusd > 0 && t.cost_microusd >= *b)
        {
            // Earlier attempts spent its budget already (they were rescued or retried).
            let why = crate::worker::StopReason::OverBudget {
                spent: t.cost_microusd,
                budget,
            };
            tracing::warn!(task_id = t.id, reason = %why, "task failed before it started");
            self.outcomes.push(FinishedAttempt {
                task_id: t.id,
                attempt: t.attempt,
                finish: Finish::OverBudget {
                    error: format!("{why} (not retried)"),
                },
            });
            return;
        }
        // The payload moves to the attempt; the rest of the row stays for its slot.
        let payload = match std::mem::replace(&mut t.payload, Ok(serde_json::Value::Null)) {
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
        self.slots
            .start(&t, payload, self.w.handler.clone(), cfg, self.w.instance);
    }

    async fn begin_drain(&mut self, level: Shutdown, ctx: &mut Ctx<'_>) {
        let timeout = if level == Shutdown::Now {
            Duration::ZERO
        } else {
            self.cfg().drain_timeout
        };
        tracing::info!(running = self.slots.len(), drain = %format_duration(timeout), "shutting down: no more claims");
        self.mode = Mode::Draining {
            deadline: Instant::now() + timeout,
        };
        self.unassign(ctx.link).await;
        ctx.heartbeat_now();
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
        // The counters go with the heartbeat at the latest.
        self.count_outcomes(ctx, true).await;
        let text = self.status_text(None);
        let Some(conn) = ctx.link.conn() else {
            return Beat::Failed;
        };
        let hb = workers::Heartbeat {
            name: &self.w.cfg.name,
            instance: self.w.instance,
            load: self.slots.len() as i32,
            status: self.heartbeat_status(),
            status_text: &text,
            run_id: self.w.cfg.run_id,
            floor: self.w.floor.next(),
        };
        match workers::workers_heartbeat(&conn.client, &conn.stmts, &hb).await {
            Ok(Some(reply)) => {
                if ctx.live.is_ready() && !self.healthy() {
                    tracing::error!(
                        tasks = self.outcomes.len(),
                        "task outcomes could not be written for longer than the database grace: not pinging the watchdog"
                    );
                }
                if self.w.floor.next().is_some_and(|f| f > reply.lease_drawn) {
                    // The sequence went back (a restore; a failover behind a pooler, on
                    // what looked like the same connection): no floor is safe.
                    tracing::warn!(
                        drawn = reply.lease_drawn,
                        "the lease sequence is behind this worker's floor: claiming from the start"
                    );
                    self.w.floor.forget();
                }
                let unrun = self.unrun(&reply.held);
                self.on_heartbeat_reply(reply);
                self.release_unrun(ctx, &unrun).await;
                Beat::Ok
            }
            Ok(None) => {
                let msg = format!(
                    "worker name '{}' was taken over by another process: this instance stops",
                    self.w.cfg.name
                );
                tracing::error!("{msg}");
                self.slots.stop_all(StopReason::LeaseLost);
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
            if Instant::now() >= deadline && !self.slots.is_empty() {
                self.slots.stop_all(StopReason::Shutdown);
            }
        }
        // What the attempts reported goes before their outcomes: their output, checkpoint
        // and usage are in the database however they ended.
        let (name, instance) = (&self.w.cfg.name, self.w.instance);
        let flushed = self
            .slots
            .flush_reports(ctx.link, name, instance, false)
            .await;
        if flushed {
            self.write_outcomes(ctx).await;
        }
        self.count_outcomes(ctx, false).await;
        if self.wake || Instant::now() >= self.next_poll {
            self.claim(ctx).await;
        }
        self.publish_prefetch(ctx).await;
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
        if n.channel() == db::worker_channel(name) {
            // This worker's own channel (shared only by long names with the same first 52
            // bytes: the payload is the full name). Assignments wake a claim; a cancel
            // request a heartbeat, which reads the cancel requests (a heartbeat on every
            // assignment would double the worker's statements).
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
        self.w.floor.forget();
        // The database may have lost the last prefetch sent (a failover): send it again.
        if let Some(p) = self.prefetch.as_mut() {
            p.forget();
        }
    }

    async fn next_event(&mut self) -> Event {
        self.slots.next_event().await
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Done(d) => {
                self.on_done(d);
                while let Some(d) = self.slots.more_done() {
                    self.on_done(d);
                }
            }
            Event::Report(r) => self.slots.note_report(r),
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
            if !self.slots.is_empty() && deadline > now {
                at(deadline);
            }
        }
        // Writes wait for a connection: without one, their timers are not reasons to wake
        // (a past deadline here would spin the loop until the database is back).
        if connected {
            if let Some(p) = self.slots.next_flush() {
                at(p);
            }
            if let Some(w) = self.outcomes.next_write() {
                at(w);
            }
            if let Some(c) = self.outcomes.next_count() {
                at(c);
            }
            // A prefetch change held back by its once-a-second limit.
            if let Some(p) = self.prefetch.as_ref() {
                if let Some(s) = p.next_send_at(self.slots.oldest_age()) {
                    at(s);
                }
            }
        }
        t
    }

    fn status_text(&self, db_down_for: Option<Duration>) -> String {
        let cap = self.cfg().capacity;
        let n = self.slots.len();
        let verb = match &self.mode {
            Mode::Draining { .. } => "draining",
            Mode::Finishing(Exit::RunFinished(_)) => "run over, finishing",
            Mode::Finishing(_) => "finishing",
            Mode::Serving if n == 0 => "idle",
            Mode::Serving => "running",
        };
        let mut text = format!("{verb} {n}/{cap}");
        if let Some((id, title)) = self.slots.first() {
            let title: String = title.chars().take(60).collect();
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
                Mode::Finishing(_) | Mode::Draining { .. } => self.slots.is_empty(),
            }
    }

    async fn finish(self, link: &mut Link, live: &mut Liveness) -> Result<Exit> {
        self.leave(link, live).await
    }
}
