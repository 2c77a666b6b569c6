//! One worker round without the daemon loop — for a program that embeds the worker and
//! drives it itself, and for tests: claim what is assigned here, run each attempt to its
//! end under the daemon's own supervision ([`Slots`]), write what they reported and then
//! their outcomes, fenced by this instance. No heartbeats, no watchdog, no drain: the caller owns time.

use tokio_postgres::Client;

use super::slots::Slots;
use super::supervise::Done;
use super::Worker;
use crate::db::tasks::{self, Finish, FinishedAttempt};
use crate::db::Statements;
use crate::error::Result;

/// What one [`Worker::run_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Tasks claimed (started).
    pub claimed: usize,
    pub completed: usize,
    /// Failed for good.
    pub failed: usize,
    /// Failed with attempts left: pending again after a backoff.
    pub retried: usize,
    /// Cancelled, released or not started.
    pub other: usize,
    /// Outcomes the database did not take: the lease had moved on.
    pub lease_lost: usize,
}

impl Worker {
    /// Registers the name as [`Worker::run`] does at its start (refused while a live
    /// process holds it). Call once before [`Worker::run_once`].
    pub async fn register_on(&self, client: &mut Client) -> Result<()> {
        self.cfg.validate()?;
        self.register(client).await
    }

    /// One round: claims up to `capacity` tasks assigned to this worker, runs them at once
    /// and to their end (each under its timeout), and writes their outcomes in one
    /// statement. An error (the database away, or refusing an outcome it cannot store)
    /// fails the round: its tasks stay in progress under this instance until the health
    /// monitor puts them back. (The daemon keeps such outcomes and writes them one by one.)
    pub async fn run_once(&self, client: &Client, stmts: &Statements) -> Result<Round> {
        let cfg = &self.cfg;
        let claimed = tasks::tasks_claim(
            client,
            stmts,
            &cfg.name,
            self.instance,
            i64::from(cfg.capacity),
            cfg.run_id,
            &self.floor,
        )
        .await?;
        let mut round = Round {
            claimed: claimed.len(),
            ..Round::default()
        };
        let mut slots = Slots::new(cfg.output_keep);
        let mut done = vec![];
        for mut t in claimed {
            match std::mem::replace(&mut t.payload, Ok(serde_json::Value::Null)) {
                Ok(payload) => {
                    slots.start(&t, payload, self.handler.clone(), cfg, self.instance);
                }
                Err(error) => done.push(FinishedAttempt {
                    task_id: t.id,
                    attempt: t.attempt,
                    finish: Finish::Failed { error },
                }),
            }
        }
        // Each attempt ends by itself, at the latest at its timeout plus the kill grace.
        while !slots.is_empty() {
            let d = slots.next_done().await;
            slots.ended(&d);
            let Done {
                task_id,
                attempt,
                finish: Some(finish),
            } = d
            else {
                continue;
            };
            done.push(FinishedAttempt {
                task_id,
                attempt,
                finish: finish.into_storable(),
            });
        }
        // What the attempts reported goes before their outcomes, as in the daemon.
        let mut sink = client;
        slots
            .flush_reports(&mut sink, &cfg.name, self.instance, true)
            .await;
        for f in &done {
            match f.finish {
                Finish::Completed { .. } => round.completed += 1,
                Finish::Failed { .. } | Finish::OverBudget { .. } => round.failed += 1,
                Finish::RetryLater { .. } => round.retried += 1,
                _ => round.other += 1,
            }
        }
        if let Err(e) =
            crate::db::providers::providers_refused(client, &cfg.name, self.instance, &done).await
        {
            tracing::error!(error = %e, "could not pause the refusing provider");
        }
        let applied = tasks::tasks_finish(client, stmts, &cfg.name, self.instance, &done).await?;
        round.lease_lost = done.len() - applied.len();
        Ok(round)
    }
}
