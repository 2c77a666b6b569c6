//! The assigner as the daemon runner drives it: routing rounds when woken (an insert,
//! freed capacity, a reconnect, a poll), maintenance and the registry heartbeat every
//! heartbeat interval, the `STATUS=` line.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Notification;

use super::{Assigner, Maintenance, RoundOutcome};
use crate::daemon::link::{Conn, Link};
use crate::daemon::liveness::Liveness;
use crate::daemon::runner::{Beat, Component, Ctx};
use crate::daemon::shutdown::Shutdown;
use crate::db::{self, schedules, workers};
use crate::error::{Error, Result};
use crate::validate::format_duration;

impl Assigner {
    async fn heartbeat(
        &mut self,
        conn: &Conn,
        prev: &Maintenance,
        round: &RoundOutcome,
    ) -> Result<Maintenance, HeartbeatError> {
        let m = self
            .maintain(&conn.client, &conn.stmts)
            .await
            .map_err(HeartbeatError::Db)?;
        if m.pending > 0 && round.free_left == 0 && prev.pending > 0 {
            tracing::info!(
                pending = m.pending,
                oldest_s = m.oldest_pending_s.unwrap_or(0.0),
                "back-pressure: tasks wait for free capacity"
            );
        }
        let text = status_text(&m, round, false);
        let hb = workers::Heartbeat {
            name: &self.cfg.name,
            instance: self.instance,
            load: 0,
            status: "idle",
            status_text: &text,
            run_id: None,
            floor: None,
        };
        match workers::workers_heartbeat(&conn.client, &conn.stmts, &hb).await {
            Ok(Some(_)) => Ok(m),
            Ok(None) => Err(HeartbeatError::LostName(format!(
                "assigner name '{}' was taken over by another process: this instance stops",
                self.cfg.name
            ))),
            Err(e) => Err(HeartbeatError::Db(e)),
        }
    }
}

enum HeartbeatError {
    Db(Error),
    LostName(String),
}

/// The longest a scheduling pass waits for the next: the safety net under the
/// notifications `jrq schedules` sends (an edit by psql sends none).
const SCHEDULES_MAX_SLEEP: Duration = Duration::from_secs(5);
/// How soon a failed scheduling pass is tried again.
const SCHEDULES_RETRY: Duration = Duration::from_secs(1);

/// How soon a round that found a limited provider's row held by another assigner's round
/// goes again.
const CONTENDED_RETRY: Duration = Duration::from_millis(20);

/// The assigner as the runner drives it: rounds when woken (an insert, freed capacity, a
/// poll), maintenance with every heartbeat.
pub(super) struct AssignerDaemon {
    a: Assigner,
    /// A round is due at once (a notification, a reconnect, a round that assigned).
    wake: bool,
    next_round: Instant,
    stop: bool,
    lost_name: Option<String>,
    last: Maintenance,
    last_round: RoundOutcome,
    /// The last routing round failed (and none succeeded since): the heartbeat is held
    /// back, so that once the online threshold passes the other assigners no longer count
    /// this one and take its share of the workers.
    rounds_failing: bool,
    /// When the next scheduling pass is due (migrations/V17: the assigners enqueue the
    /// schedules' ticks).
    next_schedules: Instant,
}

impl AssignerDaemon {
    pub(super) fn new(a: Assigner) -> Self {
        AssignerDaemon {
            a,
            wake: true,
            next_round: Instant::now(),
            stop: false,
            lost_name: None,
            last: Maintenance::default(),
            last_round: RoundOutcome::default(),
            rounds_failing: false,
            next_schedules: Instant::now(),
        }
    }
}

impl AssignerDaemon {
    /// One scheduling pass; the next is due at the soonest tick (or at once when a
    /// schedule had more due than a pass handles).
    async fn schedules(&mut self, ctx: &mut Ctx<'_>) {
        let Some(conn) = ctx.link.conn_mut() else {
            return;
        };
        match schedules::schedules_pass(&mut conn.client).await {
            Ok(p) => {
                if p.enqueued > 0 || p.missed > 0 || p.skipped > 0 {
                    tracing::debug!(
                        enqueued = p.enqueued,
                        skipped = p.skipped,
                        missed = p.missed,
                        "schedules"
                    );
                }
                if p.missed > 0 {
                    tracing::info!(
                        missed = p.missed,
                        "schedules: ticks no assigner handled in time were left out (their \
                         catch-up policy)"
                    );
                }
                for (name, why) in &p.failed {
                    tracing::warn!(schedule = %name, error = %why, "schedule tick not enqueued");
                }
                let wait = if p.more {
                    Duration::ZERO
                } else {
                    p.next_in_s
                        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
                        .unwrap_or(SCHEDULES_MAX_SLEEP)
                        .min(SCHEDULES_MAX_SLEEP)
                };
                self.next_schedules = Instant::now() + wait;
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduling pass failed: trying again in a second");
                self.next_schedules = Instant::now() + SCHEDULES_RETRY;
            }
        }
    }
}

impl Component for AssignerDaemon {
    type Event = ();
    type Exit = ();

    fn heartbeat_interval(&self) -> Duration {
        self.a.cfg.heartbeat_interval
    }

    async fn heartbeat(&mut self, ctx: &mut Ctx<'_>) -> Beat {
        let Some(conn) = ctx.link.conn() else {
            return Beat::Failed;
        };
        if self.rounds_failing {
            tracing::warn!(
                "routing rounds are failing: holding back the heartbeat, so that the other \
                 assigners take this one's workers"
            );
            return Beat::Failed;
        }
        match self.a.heartbeat(conn, &self.last, &self.last_round).await {
            Ok(m) => {
                self.last = m;
                Beat::Ok
            }
            Err(HeartbeatError::LostName(msg)) => {
                tracing::error!("{msg}");
                self.lost_name = Some(msg);
                Beat::End
            }
            Err(HeartbeatError::Db(e)) => {
                ctx.link.failed("maintenance", &e);
                Beat::Failed
            }
        }
    }

    async fn tick(&mut self, ctx: &mut Ctx<'_>) {
        if !self.stop && Instant::now() >= self.next_schedules {
            self.schedules(ctx).await;
        }
        if self.stop || !(self.wake || Instant::now() >= self.next_round) {
            return;
        }
        let Some(conn) = ctx.link.conn_mut() else {
            return;
        };
        self.wake = false;
        self.next_round = Instant::now() + self.a.cfg.poll_interval;
        let round_start = Instant::now();
        match self.a.run_once(&mut conn.client, &conn.stmts).await {
            Ok(r) => {
                ctx.live.db_ok();
                self.rounds_failing = false;
                if r.assigned > 0 {
                    tracing::debug!(
                        assigned = r.assigned,
                        unplaced = r.unplaced,
                        elapsed_us = round_start.elapsed().as_micros() as u64,
                        "round"
                    );
                    // There may be more: go again at once.
                    self.wake = true;
                } else if r.contended {
                    // Another round held a limited provider's row: once it commits, this
                    // share gets its room (soon, not at the next poll).
                    self.next_round = self.next_round.min(Instant::now() + CONTENDED_RETRY);
                }
                self.last_round = r;
            }
            Err(e) => {
                self.rounds_failing = true;
                ctx.link.failed("routing round", &e);
            }
        }
    }

    fn on_ready(&self) {
        tracing::info!(name = %self.a.cfg.name, "assigner ready");
    }

    fn on_notification(&mut self, n: &Notification, _ctx: &mut Ctx<'_>) {
        if n.channel() == db::CHANNEL_SCHEDULES {
            self.next_schedules = Instant::now();
        } else {
            if n.channel() == db::CHANNEL_PENDING {
                self.a.heard(n.payload());
            }
            self.wake = true;
        }
    }

    fn notes_every_turn(&self) -> bool {
        true
    }

    fn on_reconnected(&mut self) {
        // Notifications sent meanwhile are gone: look at once.
        self.wake = true;
        self.a.forget_floors();
        self.next_schedules = Instant::now();
    }

    async fn on_shutdown(&mut self, level: Shutdown, _ctx: &mut Ctx<'_>) {
        if level != Shutdown::Running {
            self.stop = true;
        }
    }

    fn again_now(&self, connected: bool) -> bool {
        connected && !self.stop && (self.wake || Instant::now() >= self.next_schedules)
    }

    fn wake_at(&self, connected: bool) -> Option<Instant> {
        // Rounds need the connection: without one, the runner's heartbeat and reconnect
        // timers are the only reasons to wake.
        connected.then_some(self.next_round.min(self.next_schedules))
    }

    fn status_text(&self, db_down_for: Option<Duration>) -> String {
        status_text(&self.last, &self.last_round, db_down_for.is_some())
    }

    fn done(&self) -> bool {
        self.stop || self.lost_name.is_some()
    }

    async fn finish(self, link: &mut Link, live: &mut Liveness) -> Result<()> {
        if let Some(msg) = self.lost_name {
            return Err(Error::NameLost(msg));
        }
        if let Some(c) = link.conn() {
            if let Err(e) = workers::workers_set_offline(
                &c.client,
                &self.a.cfg.name,
                self.a.instance,
                "stopped",
            )
            .await
            {
                tracing::warn!(error = %e, "could not mark the assigner offline");
            }
        }
        live.stopping("stopping");
        tracing::info!("assigner stopped");
        Ok(())
    }
}

/// The STATUS= line: queue depth, oldest pending age, what the last round did.
fn status_text(m: &Maintenance, r: &RoundOutcome, db_down: bool) -> String {
    let oldest = m
        .oldest_pending_s
        .map(|s| {
            format!(
                " (oldest {})",
                format_duration(Duration::from_secs_f64(s.max(0.0)))
            )
        })
        .unwrap_or_default();
    let mut text = format!(
        "{} pending{oldest}; last round assigned {} to {} workers with room, {} free slots left",
        m.pending, r.assigned, r.workers, r.free_left
    );
    if m.pending > 0 && r.free_left == 0 {
        text.push_str("; fleet full: tasks wait");
    }
    if !r.held.is_empty() {
        text.push_str(&format!("; holding: {}", r.held.join(", ")));
    }
    if db_down {
        text.push_str("; database unreachable");
    }
    text
}
