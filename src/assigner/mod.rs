//! The assigner daemon (`jr-auto-assigner`): routes ready pending tasks to live workers
//! with free capacity. Several may run at once: each round locks the worker rows it fills
//! and the task rows it takes with `SKIP LOCKED`, so no task is assigned twice and no
//! worker gets more than its capacity.
//!
//! ```text
//!   start -> connect, LISTEN jrq_pending -> register -> maintenance + first round -> READY=1
//!   loop  -> round if woken (insert trigger, freed capacity, poll) -> again while it assigns
//!         -> maintenance every heartbeat: give back tasks of vanished workers, fail pinned
//!            tasks whose target stays offline, record circuit states, heartbeat,
//!            WATCHDOG=1 (only after that database work succeeded), STATUS=queue depth
//!   SIGTERM -> finish the round -> offline -> STOPPING=1 -> exit 0
//! ```

pub mod cli;
mod daemon;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::daemon::defaults;
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::daemon::runner;
use crate::daemon::shutdown::ShutdownSignal;
use crate::db::workers::CircuitPolicy;
use crate::db::{self, providers, tasks, workers};
use crate::error::{Error, Result};
use crate::registry;

/// Default most tasks routed per round.
pub const DEFAULT_BATCH_SIZE: i64 = 500;
/// How often maintenance looks for tasks assigned to names never registered (a walk of
/// every assigned task; registered workers that vanished are looked at every heartbeat).
pub const UNREGISTERED_EVERY: Duration = Duration::from_secs(60);
/// Default time between rounds when no notification arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Default time between heartbeats and maintenance (and watchdog pings).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = defaults::HEARTBEAT_INTERVAL;
/// Default heartbeat age beyond which a worker is not online.
pub const DEFAULT_ONLINE_THRESHOLD: Duration = workers::DEFAULT_ONLINE_THRESHOLD;
/// Default time a pinned task waits for its offline target before it fails.
pub const DEFAULT_PIN_GRACE: Duration = Duration::from_secs(60);
/// Default consecutive failed attempts that open a worker's circuit.
pub const DEFAULT_CIRCUIT_FAILURES: i32 = 3;
/// Default first cool-down of an open circuit; doubles with each further failure.
pub const DEFAULT_CIRCUIT_COOLDOWN: Duration = Duration::from_secs(30);
/// Default longest cool-down.
pub const DEFAULT_CIRCUIT_MAX_COOLDOWN: Duration = Duration::from_secs(600);
/// Default time the watchdog is still pinged while the database is unreachable.
pub const DEFAULT_DB_GRACE: Duration = defaults::DB_GRACE;
/// Default heartbeat age after which another process's claim on the name is dead.
pub const DEFAULT_TAKEOVER_AFTER: Duration = defaults::TAKEOVER_AFTER;

/// The assigner's settings. Every field has a documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignerConfig {
    /// Registry name; defaults to `assigner.<host>`.
    pub name: String,
    /// Most tasks routed per round. Defaults to [`DEFAULT_BATCH_SIZE`].
    pub batch_size: i64,
    /// Time between rounds without a notification. Defaults to [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// Time between heartbeats and maintenance. Defaults to [`DEFAULT_HEARTBEAT_INTERVAL`];
    /// lowered to half the systemd watchdog interval when that is shorter.
    pub heartbeat_interval: Duration,
    /// A worker silent longer is not online. Defaults to [`DEFAULT_ONLINE_THRESHOLD`].
    pub online_threshold: Duration,
    /// Pinned tasks wait this long for an offline target. Defaults to [`DEFAULT_PIN_GRACE`].
    pub pin_grace: Duration,
    /// The circuit breaker. Defaults to K = 3, 30 s doubling up to 10 min.
    pub circuit: CircuitPolicy,
    /// Watchdog pings continue this long without the database. Defaults to [`DEFAULT_DB_GRACE`].
    pub db_grace: Duration,
    /// A holder of this name silent longer is dead. Defaults to [`DEFAULT_TAKEOVER_AFTER`].
    pub takeover_after: Duration,
}

/// The default registry name: `assigner.<host>`, reduced to the characters names allow.
pub fn default_name() -> String {
    let host: String = crate::host::hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("assigner.{host}");
    name.truncate(crate::validate::WORKER_NAME_MAX);
    name
}

impl Default for AssignerConfig {
    fn default() -> Self {
        AssignerConfig {
            name: default_name(),
            batch_size: DEFAULT_BATCH_SIZE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            online_threshold: DEFAULT_ONLINE_THRESHOLD,
            pin_grace: DEFAULT_PIN_GRACE,
            circuit: CircuitPolicy {
                failures: DEFAULT_CIRCUIT_FAILURES,
                cooldown: DEFAULT_CIRCUIT_COOLDOWN,
                max_cooldown: DEFAULT_CIRCUIT_MAX_COOLDOWN,
            },
            db_grace: DEFAULT_DB_GRACE,
            takeover_after: DEFAULT_TAKEOVER_AFTER,
        }
    }
}

impl AssignerConfig {
    /// Checks the values; the message says which one is wrong.
    pub fn validate(&self) -> Result<()> {
        crate::validate::check_worker_name(&self.name)
            .map_err(|e| Error::usage(e.replace("worker name", "assigner name")))?;
        if self.batch_size < 1 {
            return Err(Error::usage("batch size must be at least 1"));
        }
        if self.circuit.failures < 1 {
            return Err(Error::usage("circuit failures must be at least 1"));
        }
        if self.online_threshold <= self.heartbeat_interval {
            return Err(Error::usage(
                "--online-threshold must be longer than --heartbeat-interval (three intervals \
                 or more): the assigners judge each other, and the workers, by it",
            ));
        }
        if self.takeover_after <= self.heartbeat_interval {
            return Err(Error::usage(
                "takeover threshold must be longer than the heartbeat interval",
            ));
        }
        Ok(())
    }
}

/// What one routing round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RoundOutcome {
    /// Tasks assigned.
    pub assigned: u64,
    /// Ready tasks looked at that no worker could take now (they stay pending).
    pub unplaced: u64,
    /// Workers that could take tasks this round.
    pub workers: u64,
    /// Free slots left after the round.
    pub free_left: u64,
    /// What the governor held back: "provider 'claude' at its limit 8/8", "everything
    /// paused by alice: upgrade", one line each.
    pub held: Vec<String>,
    /// A limited provider's row was held by another assigner's round, so this round gave
    /// that provider no room: the next round comes soon, not at the next poll (with
    /// several assigners each serving its own share, the provider's tasks would otherwise
    /// go to the other share only).
    pub contended: bool,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Maintenance {
    /// Tasks given back because their worker vanished before starting them.
    pub unassigned: u64,
    /// Pinned tasks failed because their target stayed offline.
    pub pins_failed: u64,
    pub circuits_opened: u64,
    pub circuits_closed: u64,
    /// Ready pending tasks, and how long the oldest has waited (seconds).
    pub pending: i64,
    pub oldest_pending_s: Option<f64>,
}

/// The assigner daemon.
pub struct Assigner {
    cfg: AssignerConfig,
    db_cfg: db::DbConfig,
    instance: Uuid,
    host: String,
    boot_id: String,
    rr: usize,
    /// Where its load counts start (migrations/V18).
    floors: workers::LoadFloors,
    /// Where its pending scans start (migrations/V20).
    pending_floor: tasks::PendingFloor,
    /// When maintenance last looked for tasks assigned to names never registered.
    unregistered_at: Option<std::time::Instant>,
}

impl Assigner {
    pub fn new(cfg: AssignerConfig, db_cfg: db::DbConfig) -> Self {
        // Through a transaction pooler nothing listens: no task could announce itself.
        let pending_floor = if db_cfg.pool_mode == db::PoolMode::Transaction {
            tasks::PendingFloor::off()
        } else {
            tasks::PendingFloor::default()
        };
        Assigner {
            cfg,
            db_cfg,
            instance: Uuid::new_v4(),
            host: crate::host::hostname(),
            boot_id: crate::host::boot_id(),
            rr: 0,
            floors: workers::LoadFloors::default(),
            pending_floor,
            unregistered_at: None,
        }
    }

    /// Forgets the load counts' floors (a new connection: the server may be another one,
    /// whose sequence is behind — a failover to an asynchronous standby) and the pending
    /// scan's (what was announced meanwhile is lost).
    pub(crate) fn forget_floors(&mut self) {
        self.floors = workers::LoadFloors::default();
        self.pending_floor.forget();
    }

    /// A notification on `jrq_pending` (a task that became pending may lower the floor).
    pub fn heard(&mut self, payload: &str) {
        self.pending_floor.heard(payload);
    }

    fn actor(&self) -> &str {
        &self.cfg.name
    }

    /// One routing round in one transaction: lock the candidate workers, read their
    /// loads, take the pending tasks they can serve, plan, assign, notify, commit.
    pub async fn run_once(
        &mut self,
        client: &mut Client,
        stmts: &db::Statements,
    ) -> Result<RoundOutcome> {
        let cfg = &self.cfg;
        // READ COMMITTED whatever the server's default: the load count must see every
        // assignment committed before the workers' locks were taken (a snapshot from the
        // round's first statement would not), which is also what makes its floors safe.
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await?;
        let pauses = providers::pauses_active(&txn, stmts).await?;
        if let Some(p) = &pauses.all {
            txn.commit().await?;
            return Ok(RoundOutcome {
                held: vec![format!("everything {}", p.describe())],
                ..Default::default()
            });
        }
        let cands = workers::workers_lock_candidates(
            &txn,
            stmts,
            &cfg.name,
            cfg.online_threshold,
            &cfg.circuit,
        )
        .await?;
        let names: Vec<String> = cands.iter().map(|c| c.name.clone()).collect();
        let loads = workers::workers_loads(&txn, stmts, &names, &mut self.floors).await?;
        let mut slots: Vec<plan::Slot> = cands
            .into_iter()
            .map(|c| plan::Slot {
                load: loads.get(&c.name).copied().unwrap_or(0),
                name: c.name,
                providers: c.providers,
                // Assigned + running may reach capacity + prefetch; the worker still runs
                // at most `capacity` at once.
                capacity: c.capacity + c.prefetch.max(0),
                run_id: c.run_id,
                health: c.health,
            })
            .filter(|s| s.load < s.capacity && !pauses.workers.contains_key(&s.name))
            .collect();
        let free: i64 = slots.iter().map(|s| i64::from(s.capacity - s.load)).sum();
        let mut out = RoundOutcome {
            workers: slots.len() as u64,
            ..Default::default()
        };
        if free == 0 {
            txn.commit().await?;
            return Ok(out);
        }
        let mut providers: Vec<String> = slots
            .iter()
            .flat_map(|s| s.providers.iter().cloned())
            .filter(|p| !pauses.providers.contains_key(p))
            .collect();
        providers.sort();
        providers.dedup();
        // The governor: the limited providers' rows this round holds stay locked to the
        // commit, so several assigners never exceed a limit together (a row another
        // round holds gives its provider no room here).
        let budgets = providers::providers_lock_budgets(&txn, stmts, &providers).await?;
        let mut room: HashMap<String, i64> = HashMap::new();
        out.contended = budgets.iter().any(|b| !b.locked);
        for b in &budgets {
            if !b.locked {
                out.held.push(format!(
                    "provider '{}' busy in another assigner's round",
                    b.name
                ));
            }
            if let Some(why) = b.holding() {
                out.held.push(format!("provider '{}' {why}", b.name));
            }
            room.insert(b.name.clone(), b.room());
        }
        // Providers without room are left out of the pending query.
        providers.retain(|p| room.get(p).is_none_or(|r| *r > 0));
        for (name, p) in &pauses.providers {
            let fallback = match pauses.fallbacks.get(name) {
                Some(f) => format!(" (fallback: {})", f.join(", ")),
                None => String::new(),
            };
            out.held
                .push(format!("provider '{name}' {}{fallback}", p.describe()));
        }
        for (name, p) in &pauses.workers {
            out.held.push(format!("worker '{name}' {}", p.describe()));
        }
        let paused_runs: Vec<Uuid> = pauses.runs.keys().copied().collect();
        for (run, p) in &pauses.runs {
            out.held.push(format!("run {run} {}", p.describe()));
        }
        out.held.sort();
        let free_names: Vec<String> = slots.iter().map(|s| s.name.clone()).collect();
        let batch = free.min(cfg.batch_size);
        let from = self.pending_floor.take();
        let mut pending = tasks::tasks_pending_for_routing(
            &txn,
            stmts,
            &providers,
            true,
            &free_names,
            &paused_runs,
            batch,
            from,
        )
        .await?;
        // A limited provider with little room must not fill the batch either: when its
        // tasks took more of a full batch than its room, look once more without it (a
        // second query only then, so that limits that do not bind cost nothing here).
        let mut taken: HashMap<&str, i64> = HashMap::new();
        for t in &pending {
            *taken.entry(t.provider.as_str()).or_default() += 1;
        }
        let overflowing: Vec<String> = room
            .iter()
            .filter(|(p, r)| taken.get(p.as_str()).is_some_and(|n| n > *r))
            .map(|(p, _)| p.clone())
            .collect();
        if !overflowing.is_empty() && pending.len() as i64 >= batch {
            let others: Vec<String> = providers
                .iter()
                .filter(|p| !overflowing.contains(p))
                .cloned()
                .collect();
            let more = tasks::tasks_pending_for_routing(
                &txn,
                stmts,
                &others,
                true,
                &free_names,
                &paused_runs,
                batch,
                from,
            )
            .await?;
            let have: HashSet<i64> = pending.iter().map(|t| t.id).collect();
            pending.extend(more.into_iter().filter(|t| !have.contains(&t.id)));
            pending.sort_by_key(|t| t.order);
        }
        // Fallback: the tasks of paused providers that allow it, under the fallback
        // providers that can take tasks now (a query only while such a pause is set).
        let mut fallbacks: HashMap<String, tasks::Fallback> = HashMap::new();
        for (paused, list) in &pauses.fallbacks {
            let open: Vec<String> = list
                .iter()
                .filter(|f| providers.contains(f))
                .cloned()
                .collect();
            if let (false, Some(p)) = (open.is_empty(), pauses.providers.get(paused)) {
                let why = format!("provider '{paused}' {}", p.describe());
                fallbacks.insert(
                    paused.clone(),
                    tasks::Fallback {
                        providers: open,
                        why,
                    },
                );
            }
        }
        if !fallbacks.is_empty() {
            let paused: Vec<String> = fallbacks.keys().cloned().collect();
            let more = tasks::tasks_pending_fallback(
                &txn,
                stmts,
                &paused,
                &free_names,
                &paused_runs,
                batch,
            )
            .await?;
            pending.extend(more.into_iter().map(|mut t| {
                t.fallback = fallbacks.get(&t.provider).cloned();
                t
            }));
            pending.sort_by_key(|t| t.order);
        }
        let plan = plan::plan(&pending, &mut slots, &mut room, &mut self.rr);
        let mut started: HashMap<&str, usize> = HashMap::new();
        let own: HashMap<i64, &str> = pending
            .iter()
            .map(|t| (t.id, t.provider.as_str()))
            .collect();
        for a in &plan {
            let provider = match &a.routed_provider {
                Some(p) => p.as_str(),
                None => own.get(&a.task_id).copied().unwrap_or(""),
            };
            *started.entry(provider).or_default() += 1;
        }
        let spent: Vec<(String, f64)> = budgets
            .iter()
            .filter(|b| b.max_starts_per_minute.is_some())
            .filter_map(|b| {
                // A bucket nothing was taken from needs no write: its refill goes on
                // from the time it was last written.
                let n = started.get(b.name.as_str()).copied().filter(|n| *n > 0)?;
                Some((b.name.clone(), b.tokens - n as f64))
            })
            .collect();
        // The next floor, read in the same round trip as the assignments (pipelined on
        // the connection): whether the server runs it before them or after, it is at or
        // below the first task pending once this round commits (before: the first of the
        // batch assigned, whose entries the next round then walks). A task that becomes
        // pending below it from now on announces itself.
        let (assigned, first) = futures_util::future::try_join(
            tasks::tasks_assign(&txn, stmts, &self.cfg.name, &plan, &spent),
            tasks::tasks_pending_floor(&txn, stmts, from),
        )
        .await?;
        out.assigned = assigned;
        txn.commit().await?;
        self.pending_floor.set(first);
        out.unplaced = (pending.len() - plan.len()) as u64;
        out.free_left = (free as u64).saturating_sub(out.assigned);
        Ok(out)
    }

    /// Maintenance: give back tasks of vanished workers, fail pinned tasks whose target
    /// stayed offline past the grace, record circuit states, measure the queue.
    pub async fn maintain(
        &mut self,
        client: &Client,
        stmts: &db::Statements,
    ) -> Result<Maintenance> {
        // Names never registered: a walk of every assigned task, once a minute (at most a
        // minute past the online threshold, for a hand-made assignment to a wrong name).
        let unregistered = self
            .unregistered_at
            .is_none_or(|t| t.elapsed() >= UNREGISTERED_EVERY);
        if unregistered {
            self.unregistered_at = Some(std::time::Instant::now());
        }
        let cfg = &self.cfg;
        let unassigned = tasks::tasks_unassign_vanished(
            client,
            self.actor(),
            cfg.online_threshold,
            unregistered,
        )
        .await?;
        let pins_failed = tasks::tasks_fail_unreachable_pins(
            client,
            self.actor(),
            cfg.online_threshold,
            cfg.pin_grace,
        )
        .await?;
        let (opened, closed) = workers::workers_update_circuits(client, &cfg.circuit).await?;
        let (pending, oldest) =
            tasks::tasks_pending_depth(client, stmts, self.pending_floor.floor()).await?;
        if unassigned > 0 {
            tracing::info!(
                tasks = unassigned,
                "gave back tasks of workers that vanished"
            );
        }
        if pins_failed > 0 {
            tracing::warn!(
                tasks = pins_failed,
                "failed pinned tasks whose target is not online"
            );
        }
        if opened > 0 || closed > 0 {
            tracing::info!(opened, closed, "circuit breaker states changed");
        }
        Ok(Maintenance {
            unassigned,
            pins_failed,
            circuits_opened: opened,
            circuits_closed: closed,
            pending,
            oldest_pending_s: oldest,
        })
    }

    async fn register(&self, client: &mut Client) -> Result<()> {
        let txn = client.transaction().await?;
        let me = registry::Me {
            name: &self.cfg.name,
            kind: "assigner",
            stop_hint: "systemctl --user stop jr-auto-assigner",
            host: &self.host,
            boot_id: &self.boot_id,
            takeover_after: self.cfg.takeover_after,
        };
        registry::claim_name(&txn, &me, crate::host::is_live_assigner).await?;
        let invocation = std::env::var("INVOCATION_ID").ok();
        workers::workers_register(
            &txn,
            &workers::Registration {
                name: &self.cfg.name,
                kind: "assigner",
                host: &self.host,
                pid: std::process::id() as i32,
                instance: self.instance,
                invocation_id: invocation.as_deref(),
                boot_id: &self.boot_id,
                providers: &[],
                capacity: 1,
                prefetch: 0,
                run_id: None,
                takeover_why: "",
            },
        )
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Runs until shutdown. Errors are startup failures or the loss of the name.
    pub async fn run(mut self, shutdown: ShutdownSignal) -> Result<()> {
        self.cfg.validate()?;
        self.cfg.heartbeat_interval =
            Liveness::heartbeat_interval(self.cfg.heartbeat_interval, &self.cfg.name);
        let mut link = Link::open(
            self.db_cfg.clone(),
            vec![
                db::CHANNEL_PENDING.to_string(),
                db::CHANNEL_SCHEDULES.to_string(),
            ],
        )
        .await?;
        let conn = link.conn_mut().ok_or_else(|| Error::Db {
            message: "the connection closed before registration".into(),
            sqlstate: None,
        })?;
        self.register(&mut conn.client).await?;
        let db_grace = self.cfg.db_grace;
        runner::run(daemon::AssignerDaemon::new(self), link, db_grace, shutdown).await
    }
}
