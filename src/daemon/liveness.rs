//! What a daemon tells systemd, and when: `READY=1` once its first round is done,
//! `WATCHDOG=1` only after a heartbeat round that succeeded (or within `db_grace` of the
//! last one while the database is away), and `STATUS=` when the text changes.

use std::time::Duration;

use tokio::time::Instant;

use crate::systemd;
use crate::validate::format_duration;

/// The shortest heartbeat interval a watchdog can force.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// A daemon's standing with systemd.
#[derive(Debug)]
pub struct Liveness {
    ready: bool,
    last_db_ok: Instant,
    db_grace: Duration,
    last_status: String,
}

impl Liveness {
    /// `db_grace`: how long the watchdog is still pinged while the database is away.
    pub fn new(db_grace: Duration) -> Self {
        Liveness {
            ready: false,
            last_db_ok: Instant::now(),
            db_grace,
            last_status: String::new(),
        }
    }

    /// The heartbeat interval to use: `configured`, lowered to half of systemd's watchdog
    /// interval when that is shorter (with a warning, naming the daemon `who`).
    pub fn heartbeat_interval(configured: Duration, who: &str) -> Duration {
        let Some(wd) = systemd::watchdog_interval() else {
            return configured;
        };
        let half = wd / 2;
        if configured <= half {
            return configured;
        }
        tracing::warn!(
            who,
            heartbeat = %format_duration(configured),
            watchdog = %format_duration(wd),
            "heartbeat interval lowered to half the watchdog interval"
        );
        half.max(MIN_HEARTBEAT)
    }

    /// `READY=1` with the first status line.
    pub fn ready(&mut self, status: &str) {
        systemd::ready(status);
        self.ready = true;
        self.last_status = status.to_string();
    }

    /// Whether `READY=1` was sent.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// A database round succeeded.
    pub fn db_ok(&mut self) {
        self.last_db_ok = Instant::now();
    }

    /// Time since the last database round that succeeded.
    pub fn since_db_ok(&self) -> Duration {
        self.last_db_ok.elapsed()
    }

    /// After a heartbeat round: it succeeded (`ok`: ping), or the database was away (ping
    /// only within the grace). A daemon that is not `healthy` otherwise (a worker whose
    /// outcomes cannot be written) is not vouched for either way.
    pub fn heartbeat(&mut self, ok: bool, healthy: bool) {
        if ok {
            self.db_ok();
        }
        if self.ready && healthy && (ok || self.since_db_ok() < self.db_grace) {
            systemd::watchdog();
        }
    }

    /// `STATUS=` when the text changed.
    pub fn status(&mut self, text: &str) {
        if text != self.last_status {
            systemd::status(text);
            self.last_status = text.to_string();
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, text: &str) {
        systemd::stopping(text);
    }
}
