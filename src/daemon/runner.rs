//! The one loop every daemon runs. It owns the connection ([`Link`]), systemd's view
//! ([`Liveness`]), the heartbeat timer and the shutdown signal; the daemon's own behaviour
//! is a [`Component`] it calls:
//!
//! ```text
//!   heartbeat + first tick -> READY=1
//!   loop: a shutdown signal raised? -> the component hears it; done? -> finish
//!         reconnect when due (then: look at once, heartbeat at once)
//!         tick (the component's due work)
//!         heartbeat when due -> WATCHDOG=1 only if it succeeded and the component is healthy
//!         done? -> finish
//!         STATUS= (when changed)
//!         wait for: shutdown, a notification, the component's event, the next deadline
//! ```
//!
//! A component never sleeps and never waits for the database itself: it says when it
//! wants to run again ([`Component::wake_at`]), and with the connection down only the
//! heartbeat and the reconnect wake the loop — a deadline of work that needs the
//! database would be in the past and spin it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Notification;

use super::link::Link;
use super::liveness::Liveness;
use super::shutdown::{Shutdown, ShutdownSignal};
use crate::error::Result;

/// How a heartbeat round went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Beat {
    /// Written: the daemon is alive and the database answers.
    Ok,
    /// The database did not take it (down, or an error): the watchdog is pinged only
    /// within the grace.
    Failed,
    /// The daemon cannot go on — another process holds its name now, or its first round
    /// failed: the loop ends (the component's `finish` says why).
    End,
}

/// What a component may touch while the runner calls it.
pub struct Ctx<'a> {
    pub link: &'a mut Link,
    pub live: &'a mut Liveness,
    heartbeat_at: &'a mut Instant,
}

impl Ctx<'_> {
    /// Asks for a heartbeat round as soon as the current call returns (it reads what the
    /// daemon must react to, such as cancel requests).
    pub fn heartbeat_now(&mut self) {
        *self.heartbeat_at = Instant::now();
    }
}

/// A daemon's behaviour, as the runner drives it.
pub trait Component {
    /// What the component's own sources (channels of its tasks) deliver.
    type Event;
    /// What the daemon ends with.
    type Exit;

    /// Time between heartbeat rounds.
    fn heartbeat_interval(&self) -> Duration;

    /// One heartbeat round, on a connection that is up (the runner pings the watchdog
    /// after it as [`Liveness::heartbeat`] says).
    fn heartbeat(&mut self, ctx: &mut Ctx<'_>) -> impl Future<Output = Beat>;

    /// The work that is due now (rounds, writes). Runs with the connection up or down:
    /// work that needs it waits for it.
    fn tick(&mut self, ctx: &mut Ctx<'_>) -> impl Future<Output = ()>;

    /// Called once, after `READY=1`.
    fn on_ready(&self) {}

    /// A notification on one of the channels the link listens on.
    fn on_notification(&mut self, _n: &Notification, _ctx: &mut Ctx<'_>) {}

    /// Whether notifications are handed over at every turn, also when the loop goes on
    /// at once (busy) — else only when it waits. The assigner's pending floor needs them
    /// at once; a busy worker would only wake claims its outcome writes already make.
    fn notes_every_turn(&self) -> bool {
        false
    }

    /// The connection is back: notifications sent meanwhile are lost.
    fn on_reconnected(&mut self) {}

    /// The next event of the component's own sources; pending when it has none (the
    /// default: a component without sources of its own).
    fn next_event(&mut self) -> impl Future<Output = Self::Event> {
        std::future::pending()
    }

    /// Handles an event.
    fn on_event(&mut self, _e: Self::Event) {}

    /// The shutdown level rose.
    fn on_shutdown(&mut self, level: Shutdown, ctx: &mut Ctx<'_>) -> impl Future<Output = ()>;

    /// Whether to go round again at once, without waiting (there is more work now).
    fn again_now(&self, _connected: bool) -> bool {
        false
    }

    /// When the component wants to run again (besides heartbeats and its events);
    /// `connected` says whether work that needs the database can run.
    fn wake_at(&self, connected: bool) -> Option<Instant>;

    /// The `STATUS=` line; `db_down_for` is set while the connection is down.
    fn status_text(&self, db_down_for: Option<Duration>) -> String;

    /// Whether the component can vouch for itself (besides its heartbeat): otherwise the
    /// watchdog is not pinged.
    fn healthy(&self) -> bool {
        true
    }

    /// Whether the loop is over.
    fn done(&self) -> bool;

    /// The way out, after the loop: the component's last writes, `STOPPING=1`.
    fn finish(
        self,
        link: &mut Link,
        live: &mut Liveness,
    ) -> impl Future<Output = Result<Self::Exit>>;
}

/// What ended a wait.
enum Woke<E> {
    Shutdown(Shutdown),
    Note(Option<Notification>),
    Event(E),
    Timer,
}

/// Runs `c` on `link` until it is done.
pub async fn run<C: Component>(
    mut c: C,
    mut link: Link,
    db_grace: Duration,
    mut shutdown: ShutdownSignal,
) -> Result<C::Exit> {
    let mut live = Liveness::new(db_grace);
    let mut heartbeat_at = Instant::now();
    macro_rules! ctx {
        () => {
            Ctx {
                link: &mut link,
                live: &mut live,
                heartbeat_at: &mut heartbeat_at,
            }
        };
    }
    // The first heartbeat and round come before READY=1.
    if beat(&mut c, &mut ctx!()).await {
        return c.finish(&mut link, &mut live).await;
    }
    c.tick(&mut ctx!()).await;
    let text = c.status_text(None);
    live.ready(&text);
    c.on_ready();
    loop {
        // A signal is heard at the top of every turn, also when the component has work
        // at once and the loop does not wait (a busy assigner must still stop).
        if let Some(level) = shutdown.raised() {
            c.on_shutdown(level, &mut ctx!()).await;
        }
        if c.done() {
            break;
        }
        if link.reconnect_if_due().await {
            c.on_reconnected();
            heartbeat_at = Instant::now();
        }
        // What arrived while the last turn ran, also when the loop did not wait, for a
        // component that asks (a busy assigner's pending floor must hear the tasks
        // announced meanwhile).
        while c.notes_every_turn() {
            let Some(n) = link.try_note() else { break };
            c.on_notification(&n, &mut ctx!());
        }
        c.tick(&mut ctx!()).await;
        if Instant::now() >= heartbeat_at && beat(&mut c, &mut ctx!()).await {
            break;
        }
        if c.done() {
            break;
        }
        let down = (!link.is_up()).then(|| live.since_db_ok());
        let text = c.status_text(down);
        live.status(&text);
        if c.again_now(link.is_up()) {
            continue;
        }
        let now = Instant::now();
        let until = [
            Some(heartbeat_at),
            c.wake_at(link.is_up()),
            link.reconnect_at(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(heartbeat_at)
        .max(now);
        let woke = tokio::select! {
            level = shutdown.changed() => Woke::Shutdown(level),
            note = link.next_note() => Woke::Note(note),
            e = c.next_event() => Woke::Event(e),
            _ = tokio::time::sleep_until(until) => Woke::Timer,
        };
        match woke {
            Woke::Shutdown(level) => c.on_shutdown(level, &mut ctx!()).await,
            Woke::Note(Some(n)) => c.on_notification(&n, &mut ctx!()),
            // The link marked the connection lost; the next turn reconnects when due.
            Woke::Note(None) => {}
            Woke::Event(e) => c.on_event(e),
            Woke::Timer => {}
        }
    }
    c.finish(&mut link, &mut live).await
}

/// A heartbeat round (when the connection is up) and the watchdog's ping as it went.
/// Whether the loop ends.
async fn beat<C: Component>(c: &mut C, ctx: &mut Ctx<'_>) -> bool {
    *ctx.heartbeat_at = Instant::now() + c.heartbeat_interval();
    let beat = if ctx.link.is_up() {
        c.heartbeat(ctx).await
    } else {
        Beat::Failed
    };
    if beat == Beat::End {
        return true;
    }
    let healthy = c.healthy();
    ctx.live.heartbeat(beat == Beat::Ok, healthy);
    false
}
