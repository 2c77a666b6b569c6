//! The worker's way out, after the runner's loop: wait for the stopped attempts (within
//! the kill grace), write every outcome (within a budget, reconnecting when needed), give
//! back the tasks assigned here but not started, go offline, `STOPPING=1`.

use std::time::Duration;

use tokio::time::Instant;

use super::{Mode, Session};
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::db::tasks::{self, Finish, FinishedAttempt};
use crate::db::workers;
use crate::error::{Error, Result};
use crate::worker::Exit;

/// How long the final writes may take when the database is unreachable at exit.
const FINAL_WRITE_BUDGET: Duration = Duration::from_secs(10);

impl Session {
    /// The way out: wait for stopped tasks, write every outcome, give back assigned
    /// tasks, go offline, STOPPING=1.
    pub(super) async fn leave(mut self, link: &mut Link, live: &mut Liveness) -> Result<Exit> {
        // Tasks asked to stop get the kill grace (and a little) to report back.
        let hard = Instant::now() + self.cfg().kill_grace + Duration::from_secs(2);
        while !self.slots.is_empty() {
            match self.slots.done_until(hard).await {
                Some(d) => self.on_done(d),
                None => break,
            }
        }
        for (id, attempt) in self.slots.abort_all() {
            // A handler that ignored the stop: aborted; its task goes back.
            self.outcomes.push(FinishedAttempt {
                task_id: id,
                attempt,
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
            // The attempts' reports first, as in every round.
            let (name, instance) = (&self.w.cfg.name, self.w.instance);
            if !self.slots.flush_reports(link, name, instance, true).await {
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep_until((Instant::now() + link.retry_delay()).min(deadline)).await;
                continue;
            }
            let fence = self.w.fence();
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
            let fence = self.w.fence();
            self.outcomes.count(link, &fence, true).await;
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
        match &exit {
            Ok(e) => tracing::info!(outcome = %e, "worker stopped"),
            Err(e) => tracing::error!(error = %e, "worker stopped"),
        }
        exit
    }

    /// Gives tasks assigned here but not started back to pending, so they go elsewhere.
    pub(super) async fn unassign(&mut self, link: &mut Link) {
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
