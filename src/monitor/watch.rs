//! `jr-health-monitor --watch INTERVAL`: the monitor as a daemon on the runner, for hosts
//! without systemd's timer. Its round is its heartbeat: one every INTERVAL, and one at once
//! when the connection comes back. The first round's error ends the program (as a daemon's
//! failed start does); a later one — a database outage, a restart — is logged, and the
//! link reconnects with the daemons' backoff, so a watching monitor rides out what the
//! other daemons ride out. SIGTERM ends it with status 0, whatever the last round found.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::{render_prometheus, render_text, write_atomically, Monitor, Report};
use crate::daemon::link::Link;
use crate::daemon::liveness::Liveness;
use crate::daemon::runner::{self, Beat, Component, Ctx};
use crate::daemon::shutdown::{Shutdown, ShutdownSignal};
use crate::db::DbConfig;
use crate::error::{Error, Result};
use crate::validate::format_duration;

/// Where a round's report goes.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Print JSON instead of text.
    pub json: bool,
    /// Also write the Prometheus text file here.
    pub textfile: Option<PathBuf>,
}

impl Output {
    /// Prints the report and writes the text file (not for a skipped round).
    pub fn publish(&self, report: &Report) -> Result<()> {
        if self.json {
            let text =
                serde_json::to_string_pretty(report).map_err(|e| Error::encode("the report", e))?;
            crate::process::print_out(&format!("{text}\n"));
        } else {
            // Names and texts in it come from the database: no control characters through.
            crate::process::print_out(&crate::text::for_terminal(&render_text(report), true));
        }
        if let (Some(path), false) = (&self.textfile, report.skipped) {
            write_atomically(path, &render_prometheus(report))?;
        }
        Ok(())
    }
}

/// Runs rounds every `every` until shutdown; the first round's error is the program's.
pub async fn watch(
    monitor: Monitor,
    db: DbConfig,
    out: Output,
    every: Duration,
    shutdown: ShutdownSignal,
) -> Result<u8> {
    let every = Liveness::heartbeat_interval(every, "jr-health-monitor");
    let link = Link::open_plain(db).await?;
    let w = Watch {
        monitor,
        out,
        every,
        rounds: 0,
        first_error: None,
        last: None,
        stop: false,
    };
    runner::run(w, link, crate::daemon::defaults::DB_GRACE, shutdown).await
}

struct Watch {
    monitor: Monitor,
    out: Output,
    every: Duration,
    /// Rounds that succeeded.
    rounds: u64,
    first_error: Option<Error>,
    /// Alerts of the last round that succeeded.
    last: Option<usize>,
    stop: bool,
}

impl Watch {
    async fn round(&self, link: &Link) -> Result<Report> {
        let conn = link.conn().ok_or_else(|| Error::Db {
            message: "the connection is down".into(),
            sqlstate: None,
        })?;
        let report = self.monitor.run_once(&conn.client).await?;
        self.out.publish(&report)?;
        Ok(report)
    }
}

impl Component for Watch {
    type Event = ();
    type Exit = u8;

    fn heartbeat_interval(&self) -> Duration {
        self.every
    }

    async fn heartbeat(&mut self, ctx: &mut Ctx<'_>) -> Beat {
        match self.round(ctx.link).await {
            Ok(report) => {
                self.rounds += 1;
                self.last = Some(report.alerts.len());
                Beat::Ok
            }
            Err(e) if self.rounds == 0 => {
                self.first_error = Some(e);
                Beat::End
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = %format_duration(self.every), "monitor round failed");
                // A closed connection goes back to the link's reconnects; one that goes on
                // must not keep the round's lock (other monitors would skip for ever). One
                // that cannot go on (a standby's now, the server shutting down) is dropped.
                let released = match ctx.link.conn() {
                    Some(c) if !c.client.is_closed() && !e.is_session_unusable() => {
                        self.monitor.release(&c.client).await
                    }
                    _ => Err(e),
                };
                if released.is_err() {
                    ctx.link.lost("monitor round");
                }
                Beat::Failed
            }
        }
    }

    async fn tick(&mut self, _ctx: &mut Ctx<'_>) {}

    async fn on_shutdown(&mut self, level: Shutdown, _ctx: &mut Ctx<'_>) {
        if level != Shutdown::Running {
            self.stop = true;
        }
    }

    fn wake_at(&self, _connected: bool) -> Option<Instant> {
        None
    }

    fn status_text(&self, db_down_for: Option<Duration>) -> String {
        let last = match self.last {
            None => "no round yet".to_string(),
            Some(0) => format!("{} rounds, last healthy", self.rounds),
            Some(n) => format!("{} rounds, last with {n} alert(s)", self.rounds),
        };
        match db_down_for {
            Some(d) => format!(
                "{last}; database unreachable for {}",
                format_duration(Duration::from_secs(d.as_secs()))
            ),
            None => format!("{last}; every {}", format_duration(self.every)),
        }
    }

    fn done(&self) -> bool {
        self.stop
    }

    async fn finish(self, _link: &mut Link, live: &mut Liveness) -> Result<u8> {
        if let Some(e) = self.first_error {
            return Err(e);
        }
        live.stopping("stopping");
        // Stopped on purpose: a clean exit, whatever the last round found.
        Ok(0)
    }
}
