//! The layer every daemon stands on — start reading here.
//!
//! A daemon (the worker, the assigner, the watching monitor, the dashboard to come) is a
//! [`runner::Component`]: a `Config` whose defaults are named constants (shared with its
//! clap options), its state, and the methods the runner calls — `tick` for the work that
//! is due, `heartbeat` for its liveness round, handlers for notifications and its own
//! events, and `finish` for the way out. The runner ([`runner::run`]) owns everything a
//! daemon would otherwise write again:
//!
//! - [`link::Link`]: the one database connection (it also LISTENs), reconnects with a
//!   backoff, and says when notifications may have been missed;
//! - [`liveness::Liveness`]: `READY=1`, `WATCHDOG=1` only after a heartbeat that worked
//!   (within `db_grace` while the database is away), `STATUS=` when it changed, the
//!   heartbeat interval clamped to half of `WatchdogSec`;
//! - [`shutdown::ShutdownSignal`]: SIGTERM/SIGINT/SIGHUP — soft, then hard;
//! - the timers: the heartbeat's, the reconnect's, and the component's own deadlines, so
//!   that a component never sleeps, and nothing that needs the database wakes the loop
//!   while it is down.
//!
//! Adding a daemon: write its component and hand it to [`runner::run`] with a link.

pub mod link;
pub mod liveness;
pub mod runner;
pub mod shutdown;

/// Defaults every daemon shares (their clap options name the same values).
pub mod defaults {
    use std::time::Duration;

    /// Time between heartbeats (and watchdog pings).
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
    /// Time the watchdog is still pinged while the database is unreachable.
    pub const DB_GRACE: Duration = Duration::from_secs(30);
    /// Heartbeat age after which another process's claim on a name is dead.
    pub const TAKEOVER_AFTER: Duration = Duration::from_secs(30);
}
