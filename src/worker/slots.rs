//! The worker's slots: the attempts running in this process, each under its supervisor
//! with a stop switch, and what they report back — their ends, and their progress,
//! coalesced per attempt between writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::executor::{Handler, Progress, StopReason, TaskContext};
use super::supervise::{supervise, Done, Policy};
use super::WorkerConfig;
use crate::daemon::link::Link;
use crate::db::tasks::{self, ClaimedTask};

/// How often coalesced progress reports are written.
const PROGRESS_FLUSH: Duration = Duration::from_millis(500);

/// What the slots deliver to the loop.
pub(super) enum Event {
    /// An attempt ended.
    Done(Done),
    /// A running attempt reported progress.
    Progress(Progress),
}

/// An attempt this process is running.
struct Running {
    attempt: i32,
    title: String,
    stop: Arc<watch::Sender<Option<StopReason>>>,
    handle: tokio::task::JoinHandle<()>,
}

/// The attempts running here, and what they reported that is not written yet.
pub(super) struct Slots {
    running: HashMap<i64, Running>,
    /// Progress reported since the last write, per attempt.
    progress: HashMap<(i64, i32), i16>,
    last_progress_flush: Instant,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    progress_tx: mpsc::UnboundedSender<Progress>,
    progress_rx: mpsc::UnboundedReceiver<Progress>,
}

impl Slots {
    pub fn new() -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        Slots {
            running: HashMap::new(),
            progress: HashMap::new(),
            last_progress_flush: Instant::now(),
            done_tx,
            done_rx,
            progress_tx,
            progress_rx,
        }
    }

    /// Attempts running.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
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
        let (ctx, stop) = TaskContext::new(
            t.id,
            t.title.clone(),
            payload,
            t.attempt,
            t.max_attempts,
            t.run_id,
            t.provider.clone(),
            cfg.name.clone(),
            instance,
            t.timeout,
            self.progress_tx.clone(),
        );
        let stop = Arc::new(stop);
        let policy = Policy {
            timeout: t.timeout,
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
            self.done_tx.clone(),
        ));
        self.running.insert(
            t.id,
            Running {
                attempt: t.attempt,
                title: t.title.clone(),
                stop,
                handle,
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

    /// An attempt ended: its slot and its unwritten progress are freed.
    pub fn ended(&mut self, d: &Done) {
        if let Some(r) = self.running.remove(&d.task_id) {
            debug_assert_eq!(r.attempt, d.attempt);
        }
        self.progress.retain(|(id, _), _| *id != d.task_id);
    }

    /// The next end or progress report; pending while nothing runs.
    pub async fn next_event(&mut self) -> Event {
        tokio::select! {
            Some(d) = self.done_rx.recv() => Event::Done(d),
            Some(p) = self.progress_rx.recv() => Event::Progress(p),
        }
    }

    /// Ends that arrived with the first (taken without waiting).
    pub fn more_done(&mut self) -> Option<Done> {
        self.done_rx.try_recv().ok()
    }

    /// Keeps the latest progress of each attempt, this report and those queued behind it.
    pub fn note_progress(&mut self, p: Progress) {
        self.progress.insert((p.task_id, p.attempt), p.percent);
        while let Ok(p) = self.progress_rx.try_recv() {
            self.progress.insert((p.task_id, p.attempt), p.percent);
        }
    }

    /// When coalesced progress is next due to be written.
    pub fn next_progress_flush(&self) -> Option<Instant> {
        (!self.progress.is_empty()).then_some(self.last_progress_flush + PROGRESS_FLUSH)
    }

    /// Writes the coalesced progress when due (fenced by `worker` and `instance`).
    pub async fn flush_progress(&mut self, link: &mut Link, worker: &str, instance: Uuid) {
        if self.progress.is_empty() || self.last_progress_flush.elapsed() < PROGRESS_FLUSH {
            return;
        }
        let Some(conn) = link.conn() else { return };
        let items: Vec<(i64, i32, i16)> = self
            .progress
            .iter()
            .map(|((id, a), p)| (*id, *a, *p))
            .collect();
        let written = tasks::tasks_progress(&conn.client, worker, instance, &items).await;
        // Tried again after the usual flush interval, not at once.
        self.last_progress_flush = Instant::now();
        match written {
            Ok(()) => self.progress.clear(),
            Err(e) => {
                link.failed("writing progress", &e);
            }
        }
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
