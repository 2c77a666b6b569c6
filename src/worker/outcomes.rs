//! The worker's outcome buffer: attempts that ended, waiting to be written — in one batch,
//! fenced row by row, with the next claim riding along when there is room. An outcome
//! the database refuses never holds back the others: the batch is written outcome by
//! outcome, and one still refused becomes a failure that names the cause.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::supervise::unstorable_outcome;
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::db::providers;
use crate::db::tasks::{self, ClaimedTask, FinishedAttempt};
use crate::error::Error;

/// The wait before a failed write is tried again.
const RETRY_WRITE: Duration = Duration::from_secs(1);

/// Who writes: the fence of every outcome and claim.
pub(super) struct Fence<'a> {
    pub name: &'a str,
    pub instance: Uuid,
    pub run: Option<Uuid>,
    /// Where its claims start.
    pub floor: &'a tasks::LeaseFloor,
}

/// How long written outcomes may wait to be counted in the worker's registry row when
/// nothing makes it urgent.
const COUNT_EVERY: Duration = Duration::from_secs(1);

/// Outcomes not yet written.
pub(super) struct Outcomes {
    unwritten: Vec<FinishedAttempt>,
    /// After a failed write, the next try waits until this.
    next_write: Instant,
    /// Since when writes have been failing (`None`: they succeed).
    failing_since: Option<Instant>,
    tally: Tally,
}

/// Outcomes written by the hot cycle, which leaves the registry row's counters to the
/// worker (migrations/V19): one version of that row a second instead of one per write,
/// which matters while the vacuum horizon is held and every version stays.
#[derive(Default)]
struct Tally {
    /// '+' a completion, '-' a failed attempt, oldest first.
    outcomes: String,
    /// When the oldest of them was written.
    since: Option<Instant>,
    /// The row's last counted outcome was a failure: its consecutive failures (the
    /// circuit breaker's input) are not 0, so a completion is counted at once.
    streak: bool,
}

impl Tally {
    /// Whether counting cannot wait: a failure (the circuit breaker reads it every
    /// round), a completion that ends a streak of them.
    fn urgent(&self) -> bool {
        self.outcomes.contains('-') || (self.streak && self.outcomes.contains('+'))
    }

    /// When the outcomes should be counted (`None`: nothing to count).
    fn due_at(&self) -> Option<Instant> {
        let since = self.since?;
        Some(if self.urgent() {
            since
        } else {
            since + COUNT_EVERY
        })
    }

    /// What counting `outcomes` leaves in the row's streak.
    fn after(streak: bool, outcomes: &str) -> bool {
        match outcomes.rfind(['+', '-']) {
            Some(_) => outcomes.ends_with('-'),
            None => streak,
        }
    }
}

impl Outcomes {
    pub fn new() -> Self {
        Outcomes {
            unwritten: vec![],
            next_write: Instant::now(),
            failing_since: None,
            tally: Tally::default(),
        }
    }

    /// When the outcomes written are to be counted (see [`Outcomes::count`]).
    pub fn next_count(&self) -> Option<Instant> {
        self.tally.due_at()
    }

    /// Counts the outcomes written in the worker's registry row
    /// (`jrq_workers_count_outcomes`), when that is due — or at once with `now` (the
    /// heartbeat, the way out). Kept for the next try when the write fails.
    pub async fn count(&mut self, link: &mut Link, fence: &Fence<'_>, now: bool) {
        let Some(due) = self.tally.due_at() else {
            return;
        };
        if !now && Instant::now() < due {
            return;
        }
        let Some(conn) = link.conn() else { return };
        let outcomes = std::mem::take(&mut self.tally.outcomes);
        match crate::db::workers::workers_count_outcomes(
            &conn.client,
            fence.name,
            fence.instance,
            &outcomes,
        )
        .await
        {
            Ok(_) => {
                self.tally.streak = Tally::after(self.tally.streak, &outcomes);
                self.tally.since = None;
            }
            Err(e) => {
                self.tally.outcomes = outcomes + &self.tally.outcomes;
                link.failed("counting outcomes", &e);
            }
        }
    }

    /// Adds what a write applied to the tally (`counted`: the write counted them itself).
    fn tally(&mut self, done: &[FinishedAttempt], applied: &[i64], counted: bool) {
        let applied: HashSet<i64> = applied.iter().copied().collect();
        let marks: String = done
            .iter()
            .filter(|f| applied.contains(&f.task_id))
            .filter_map(|f| match &f.finish {
                tasks::Finish::Completed { .. } => Some('+'),
                x if x.is_failure() => Some('-'),
                _ => None,
            })
            .collect();
        if marks.is_empty() {
            return;
        }
        if counted {
            self.tally.streak = Tally::after(self.tally.streak, &marks);
        } else {
            self.tally.outcomes.push_str(&marks);
            self.tally.since.get_or_insert_with(Instant::now);
        }
    }

    pub fn push(&mut self, f: FinishedAttempt) {
        self.unwritten.push(f);
    }

    pub fn is_empty(&self) -> bool {
        self.unwritten.is_empty()
    }

    pub fn len(&self) -> usize {
        self.unwritten.len()
    }

    /// Whether an outcome of task `id` waits to be written.
    pub fn contains(&self, id: i64) -> bool {
        self.unwritten.iter().any(|f| f.task_id == id)
    }

    /// Whether a write is due (something to write, and no failed write to wait out).
    pub fn due(&self) -> bool {
        !self.unwritten.is_empty() && Instant::now() >= self.next_write
    }

    /// When the next write is due, if there is anything to write.
    pub fn next_write(&self) -> Option<Instant> {
        (!self.unwritten.is_empty()).then_some(self.next_write)
    }

    /// The next write may go at once (the way out does not wait out a backoff).
    pub fn write_now(&mut self) {
        self.next_write = Instant::now();
    }

    /// How long writes have been failing.
    pub fn failing_for(&self) -> Option<Duration> {
        self.failing_since.map(|t| t.elapsed())
    }

    /// Whether outcomes get written: false once writes have failed for longer than
    /// `grace`. Then the watchdog is no longer pinged — a worker that cannot record what
    /// its tasks did is not healthy, however well it heartbeats.
    pub fn healthy(&self, grace: Duration) -> bool {
        self.failing_for().is_none_or(|d| d < grace)
    }

    /// Writes the buffer, when a write is due and the connection is up. With `claim`
    /// (the free slots), the next claim rides in the same statement; the tasks claimed
    /// come back (`None`: no claim was made).
    pub async fn write(
        &mut self,
        link: &mut Link,
        live: &mut Liveness,
        fence: &Fence<'_>,
        claim: Option<i64>,
    ) -> Option<Vec<ClaimedTask>> {
        if !self.due() {
            return None;
        }
        // A write that counts its own outcomes goes after those still waiting to be
        // counted: the counters' order (consecutive failures, recent outcomes) is kept.
        if claim.is_none() {
            self.count(link, fence, true).await;
        }
        let conn = link.conn()?;
        // A refusing provider is paused before its task goes back to pending, so that no
        // other worker burns an attempt on it meanwhile.
        match providers::providers_refused(
            &conn.client,
            fence.name,
            fence.instance,
            &self.unwritten,
        )
        .await
        {
            Ok(paused) => {
                for (provider, until) in paused {
                    tracing::warn!(provider = %provider, until = %until, "the provider refused: paused fleet-wide");
                }
            }
            // The connection is gone: the outcomes wait for it as well.
            Err(e) if conn.client.is_closed() || e.is_session_unusable() => {
                self.failed(link, &e);
                return None;
            }
            // Any other refusal must not hold back the outcomes (completions among them):
            // the tasks still go back, with run_after at the reset.
            Err(e) => {
                tracing::error!(error = %e, "could not pause the refusing provider");
            }
        }
        let result = match claim {
            Some(limit) => {
                tasks::tasks_finish_and_claim(
                    &conn.client,
                    &conn.stmts,
                    fence.name,
                    fence.instance,
                    &self.unwritten,
                    tasks::NextClaim {
                        limit,
                        run: fence.run,
                        floor: fence.floor,
                    },
                )
                .await
            }
            None => tasks::tasks_finish(
                &conn.client,
                &conn.stmts,
                fence.name,
                fence.instance,
                &self.unwritten,
            )
            .await
            .map(|applied| (applied, vec![])),
        };
        match result {
            Ok((applied, claimed)) => {
                let done = std::mem::take(&mut self.unwritten);
                self.tally(&done, &applied, claim.is_none());
                self.written(done, &applied, fence.name);
                live.db_ok();
                self.count(link, fence, false).await;
                claim.map(|_| claimed)
            }
            // One outcome the database refuses (a value it cannot store, a constraint)
            // must not hold back the others: write each alone.
            Err(e) if e.is_refused_data() => {
                tracing::warn!(
                    error = %e,
                    tasks = self.unwritten.len(),
                    "the database refused a batch of outcomes: writing each alone"
                );
                self.write_alone(link, live, fence).await;
                None
            }
            Err(e) => {
                self.failed(link, &e);
                None
            }
        }
    }

    /// Writes the unwritten outcomes one by one. An outcome the database refuses is
    /// replaced by a failure that states the cause, so the task ends and says why; any
    /// other error keeps the rest for the next try.
    async fn write_alone(&mut self, link: &mut Link, live: &mut Liveness, fence: &Fence<'_>) {
        self.count(link, fence, true).await;
        let mut pending = std::mem::take(&mut self.unwritten).into_iter();
        let mut failure = None;
        for mut f in pending.by_ref() {
            let Some(conn) = link.conn() else {
                self.unwritten.push(f);
                break;
            };
            let mut replaced = false;
            loop {
                let one = std::slice::from_ref(&f);
                let written =
                    tasks::tasks_finish(&conn.client, &conn.stmts, fence.name, fence.instance, one)
                        .await;
                match written {
                    Ok(applied) => {
                        self.tally(std::slice::from_ref(&f), &applied, true);
                        self.written(vec![f], &applied, fence.name);
                        live.db_ok();
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
            self.failed(link, &e);
        }
    }

    /// Logs outcomes the database took (`applied`: the ids whose fenced write matched).
    fn written(&mut self, done: Vec<FinishedAttempt>, applied: &[i64], worker: &str) {
        let applied: HashSet<i64> = applied.iter().copied().collect();
        for f in done {
            if applied.contains(&f.task_id) {
                // A failed attempt that will be retried is a warning, a task failed for
                // good an error (`journalctl -p warning` shows both); the rest is news.
                let error = f
                    .finish
                    .error()
                    .map(|e| crate::text::for_terminal(e, false).into_owned());
                let error = error.as_deref().map(tracing::field::display);
                use crate::db::tasks::Finish;
                macro_rules! log {
                    ($level:ident, $outcome:expr, $msg:literal) => {
                        tracing::$level!(
                            task_id = f.task_id,
                            worker = %worker,
                            attempt = f.attempt,
                            outcome = $outcome,
                            error,
                            $msg
                        )
                    };
                }
                match &f.finish {
                    Finish::Failed { .. } => log!(error, "failed", "task failed for good"),
                    Finish::OverBudget { .. } => {
                        log!(
                            warn,
                            "over_budget",
                            "task over its budget: failed, not retried"
                        )
                    }
                    Finish::RetryLater { .. } => {
                        log!(warn, "retry_scheduled", "attempt failed: retry scheduled")
                    }
                    // The executor could not start here: it counts against the circuit.
                    Finish::NotStarted { .. } => log!(
                        warn,
                        "not_started",
                        "the executor could not start: task given back"
                    ),
                    other => log!(info, other.kind(), "task finished"),
                }
            } else {
                tracing::error!(
                    task_id = f.task_id,
                    attempt = f.attempt,
                    "lease lost before the outcome was written: left to the new owner"
                );
            }
        }
        if self.unwritten.is_empty() {
            self.failing_since = None;
        }
    }

    fn failed(&mut self, link: &mut Link, e: &Error) {
        self.failing_since.get_or_insert_with(Instant::now);
        self.next_write = Instant::now() + RETRY_WRITE;
        link.failed("writing task outcomes", e);
    }
}
