//! The worker's slots: the attempts running in this process, each under its supervisor
//! with a stop switch, and what they report back — their ends, and their reports (output,
//! checkpoints, usage, progress: [`Reports`]), kept between writes. A task's own budget is
//! watched here, as its usage comes in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::executor::{Attempt, Handler, Report, Reported, StopReason, TaskContext};
use super::reports::{Reports, Sink};
use super::supervise::{supervise, Done, Policy};
use super::WorkerConfig;
use crate::db::tasks::ClaimedTask;

/// What the slots deliver to the loop.
pub(super) enum Event {
    /// An attempt ended.
    Done(Done),
    /// A running attempt reported something.
    Report(Reported),
}

/// An attempt this process is running.
struct Running {
    attempt: i32,
    title: String,
    stop: Arc<watch::Sender<Option<StopReason>>>,
    handle: tokio::task::JoinHandle<()>,
    /// The task's budget and what it spent (all attempts), in micro-dollars.
    budget: Option<i64>,
    spent: i64,
    started: Instant,
}

/// The attempts running here, and what they reported that is not written yet.
pub(super) struct Slots {
    running: HashMap<i64, Running>,
    reports: Reports,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    reports_tx: mpsc::UnboundedSender<Reported>,
    reports_rx: mpsc::UnboundedReceiver<Reported>,
}

impl Slots {
    pub fn new(output_keep: usize) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        Slots {
            running: HashMap::new(),
            reports: Reports::new(output_keep),
            done_tx,
            done_rx,
            reports_tx,
            reports_rx,
        }
    }

    /// Attempts running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether an attempt of task `id` runs here (until its end is taken, [`Slots::ended`]).
    pub fn contains(&self, id: i64) -> bool {
        self.running.contains_key(&id)
    }

    /// The attempt of task `id` running here.
    pub fn attempt_of(&self, id: i64) -> Option<i32> {
        self.running.get(&id).map(|r| r.attempt)
    }

    /// The lowest task id running and its title (for the status line).
    pub fn first(&self) -> Option<(i64, &str)> {
        self.running
            .iter()
            .min_by_key(|(id, _)| **id)
            .map(|(id, r)| (*id, r.title.as_str()))
    }

    /// Starts task `t` (with its readable `payload`) under a supervisor.
    pub fn start(
        &mut self,
        t: &ClaimedTask,
        payload: serde_json::Value,
        handler: Arc<dyn Handler>,
        cfg: &WorkerConfig,
        instance: Uuid,
    ) {
        let (ctx, stop, activity) = TaskContext::new(
            Attempt {
                id: t.id,
                title: t.title.clone(),
                payload,
                attempt: t.attempt,
                max_attempts: t.max_attempts,
                run_id: t.run_id,
                provider: t.provider.clone(),
                worker: cfg.name.clone(),
                worker_instance: instance,
                timeout: t.timeout,
                checkpoint: t.checkpoint.clone(),
            },
            self.reports_tx.clone(),
        );
        let stop = Arc::new(stop);
        let policy = Policy {
            timeout: t.timeout,
            // Only a handler that reports signs of life can be idle.
            idle_timeout: t
                .idle_timeout
                .or(cfg.idle_timeout)
                .filter(|_| handler.reports_activity()),
            kill_grace: cfg.kill_grace,
            retry_base: cfg.retry_base,
            retry_max: cfg.retry_max,
            provider_backoff: cfg.provider_backoff,
        };
        let handle = tokio::spawn(supervise(
            handler,
            ctx,
            stop.clone(),
            policy,
            activity,
            self.done_tx.clone(),
        ));
        self.running.insert(
            t.id,
            Running {
                attempt: t.attempt,
                title: t.title.clone(),
                stop,
                handle,
                budget: t.max_cost_microusd,
                spent: t.cost_microusd,
                started: Instant::now(),
            },
        );
    }

    /// Asks the attempt of task `id` to stop (once; the first reason stands).
    pub fn stop(&self, id: i64, reason: StopReason) {
        if let Some(r) = self.running.get(&id) {
            if r.stop.borrow().is_none() {
                tracing::info!(task_id = id, reason = %reason, "stopping task");
                r.stop.send_replace(Some(reason));
            }
        }
    }

    pub fn stop_all(&self, reason: StopReason) {
        for id in self.running.keys() {
            self.stop(*id, reason);
        }
    }

    /// Stops the attempts whose lease the database no longer gives this worker.
    pub fn stop_unheld(&self, held: &[i64]) {
        let held: HashSet<i64> = held.iter().copied().collect();
        for id in self.running.keys().filter(|id| !held.contains(id)) {
            tracing::warn!(
                task_id = id,
                "lease lost (the task was rescued elsewhere): stopping it here"
            );
            self.stop(*id, StopReason::LeaseLost);
        }
    }

    /// An attempt ended: its slot is freed; what it reported is written before its
    /// outcome (its progress is dropped). The reports it sent before it ended are taken
    /// first. Returns how long it ran, when it ran here.
    pub fn ended(&mut self, d: &Done) -> Option<std::time::Duration> {
        self.take_reports();
        let ran = self.running.remove(&d.task_id).map(|r| {
            debug_assert_eq!(r.attempt, d.attempt);
            r.started.elapsed()
        });
        self.reports.ended(d.task_id, d.attempt);
        ran
    }

    /// How long the oldest attempt running has run.
    pub fn oldest_age(&self) -> Option<std::time::Duration> {
        self.running.values().map(|r| r.started.elapsed()).max()
    }

    /// The next end or report; pending while nothing runs.
    pub async fn next_event(&mut self) -> Event {
        tokio::select! {
            Some(d) = self.done_rx.recv() => Event::Done(d),
            Some(r) = self.reports_rx.recv() => Event::Report(r),
        }
    }

    /// Ends that arrived with the first (taken without waiting).
    pub fn more_done(&mut self) -> Option<Done> {
        self.done_rx.try_recv().ok()
    }

    /// Keeps this report and those queued behind it.
    pub fn note_report(&mut self, r: Reported) {
        self.keep_report(r);
        self.take_reports();
    }

    fn take_reports(&mut self) {
        while let Ok(r) = self.reports_rx.try_recv() {
            self.keep_report(r);
        }
    }

    /// Keeps a report of an attempt that runs (a late one, of an attempt already written,
    /// is dropped); a task whose usage reaches its budget is stopped.
    fn keep_report(&mut self, r: Reported) {
        let Some(run) = self
            .running
            .get_mut(&r.task_id)
            .filter(|x| x.attempt == r.attempt)
        else {
            return;
        };
        if let Report::Usage { delta, .. } = &r.report {
            run.spent = run.spent.saturating_add(delta.cost_microusd);
            // (Nothing spent is never over, also with a budget of 0.)
            if let Some(budget) = run.budget.filter(|b| run.spent > 0 && run.spent >= *b) {
                let reason = StopReason::OverBudget {
                    spent: run.spent,
                    budget,
                };
                let id = r.task_id;
                self.reports.note(r);
                self.stop(id, reason);
                return;
            }
        }
        self.reports.note(r);
    }

    /// When reports are next due to be written.
    pub fn next_flush(&self) -> Option<Instant> {
        self.reports.next_flush()
    }

    /// Writes the reports when due (all of them with `force`), fenced by `worker` and
    /// `instance`; false when the connection was lost.
    pub async fn flush_reports(
        &mut self,
        link: &mut impl Sink,
        worker: &str,
        instance: Uuid,
        force: bool,
    ) -> bool {
        self.take_reports();
        self.reports.flush(link, worker, instance, force).await
    }

    /// The next end (waits for ever while nothing runs).
    pub async fn next_done(&mut self) -> Done {
        match self.done_rx.recv().await {
            Some(d) => d,
            // The slots hold a sender: the channel cannot close.
            None => std::future::pending().await,
        }
    }

    /// The next end, or `None` once `deadline` passed.
    pub async fn done_until(&mut self, deadline: Instant) -> Option<Done> {
        tokio::time::timeout_at(deadline, self.done_rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Aborts what still runs (handlers that ignored their stop); their tasks and attempts.
    pub fn abort_all(&mut self) -> Vec<(i64, i32)> {
        self.running
            .drain()
            .map(|(id, r)| {
                r.handle.abort();
                (id, r.attempt)
            })
            .collect()
    }
}
