//! `jr-web`: the dashboard, `/metrics` and `/healthz`.
//!
//! An axum server on the program's one tokio thread, reading the database through a small
//! pool ([`pool`]) with the same library the CLI uses, rendering HTML on the server
//! ([`pages`], maud) with a chart drawn as SVG ([`chart`]); one stylesheet and one small
//! script ([`static`](self)) are compiled in, so the pages work offline. The overview, the
//! workers page and a running task's page refresh by themselves (short polling of the page
//! itself, its `<main>` swapped in place).
//!
//! Read-only unless `--allow-actions` ([`actions`]): every connection sets
//! `default_transaction_read_only` (an action opens its transaction READ WRITE), and the
//! read-only dashboard works with the `jrq_reader` group; actions need `jrq_admin`.
//!
//! Liveness: `READY=1` once the socket is bound; `WATCHDOG=1` while the server runs —
//! with the database away the dashboard keeps serving (it says so, `/healthz` answers 503)
//! instead of being restarted for what it reports.

mod actions;
pub mod chart;
pub mod cli;
pub mod pages;
pub mod pool;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::liveness::Liveness;
use crate::daemon::shutdown::{Shutdown, ShutdownSignal};
use crate::error::{Error, Result};
use crate::validate::format_duration;

/// The address `jr-web` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8470";
/// How often live pages refresh.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);
/// Tasks on one page of the list.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// The longest a `/metrics` answer is reused (several scrapers, one scan).
pub const METRICS_MAX_AGE: Duration = Duration::from_secs(2);
/// Minutes of the overview's chart.
pub const CHART_MINUTES: i32 = 180;
/// The longest a database probe (STATUS=, /healthz) or a scrape's reads may take: a hung
/// connection must not hold the liveness loop or every scrape behind it.
pub const DB_DEADLINE: Duration = Duration::from_secs(5);
/// The longest a scrape's reads may take: they scan the task table (about 0.3 s per
/// 100 000 finished tasks kept, docs/benchmarks-notes.md).
pub const METRICS_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stop waits for requests in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The user name of HTTP basic authentication when `JRQ_WEB_USER` is not set.
pub const DEFAULT_USER: &str = "jrq";

/// Who may look: HTTP basic authentication, from the environment file only.
#[derive(Clone)]
pub struct Auth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The dashboard's settings; every field has a documented default.
#[derive(Debug, Clone)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// `None`: pages do not refresh by themselves.
    pub refresh: Option<Duration>,
    pub page_size: i64,
    /// A worker whose heartbeat is older than this is not alive (the monitor's and the
    /// assigner's threshold).
    pub online_threshold: Duration,
    pub auth: Option<Auth>,
    /// The pages' buttons (retry, cancel, pause, drain) and their POSTs: needs `auth`.
    pub allow_actions: bool,
    pub heartbeat_interval: Duration,
    /// The health monitor's thresholds (from its own variables in the same environment
    /// file): the overview's alerts are the ones it would raise.
    pub monitor: crate::monitor::MonitorConfig,
}

impl WebConfig {
    /// Refuses what would expose the dashboard: an address other than loopback without
    /// authentication.
    pub fn validate(&self) -> Result<()> {
        if self.allow_actions && self.auth.is_none() {
            return Err(Error::Usage(
                "--allow-actions needs authentication: set JRQ_WEB_PASSWORD in the \
                 environment file (~/.config/jrq/jr-web.env); the actions are recorded under \
                 its user (JRQ_WEB_USER)"
                    .into(),
            ));
        }
        if !self.listen.ip().is_loopback() && self.auth.is_none() {
            return Err(Error::Usage(format!(
                "refusing to listen on {} without authentication: set JRQ_WEB_PASSWORD in \
                 the environment file (~/.config/jrq/jrq.env), or listen on 127.0.0.1 \
                 behind a reverse proxy that authenticates",
                self.listen
            )));
        }
        Ok(())
    }
}

/// Runs the dashboard until SIGTERM. Prints `jr-web: serving on http://ADDR` on standard
/// output once it listens (with `--listen …:0`, the port the system chose).
pub async fn run(cfg: WebConfig, db: crate::db::DbConfig, shutdown: ShutdownSignal) -> Result<()> {
    cfg.validate()?;
    let pool = pool::pool(db)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", cfg.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the listening address", e))?;
    let heartbeat = Liveness::heartbeat_interval(cfg.heartbeat_interval, "jr-web");
    let app = routes::App::new(cfg, pool.clone());
    let router = routes::router(Arc::clone(&app));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });
    let mut live = Liveness::new(Duration::MAX);
    live.ready(&format!("serving on http://{addr}"));
    tracing::info!(address = %addr, "serving");
    crate::process::print_out(&format!("jr-web: serving on http://{addr}\n"));
    let mut shutdown = shutdown;
    let ended = loop {
        tokio::select! {
            level = shutdown.changed() => {
                if level != Shutdown::Running {
                    break None;
                }
            }
            r = &mut server => break Some(r),
            _ = tokio::time::sleep(heartbeat) => {
                live.heartbeat(true, true);
                // Bounded: the watchdog and a SIGTERM are never held by a hung database.
                let db = app.database_state().await;
                live.status(&format!("serving on http://{addr}; {db}"));
            }
        }
    };
    if let Some(r) = ended {
        let e = match r {
            Ok(Ok(())) => std::io::Error::other("it stopped by itself"),
            Ok(Err(e)) => e,
            Err(e) => std::io::Error::other(e.to_string()),
        };
        return Err(Error::io(format!("the HTTP server on {addr} ended"), e));
    }
    live.stopping("stopping");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(STOP_GRACE, &mut server).await.is_err() {
        tracing::warn!(grace = %format_duration(STOP_GRACE), "requests still open at stop: ended");
        server.abort();
    }
    pool.close();
    Ok(())
}
