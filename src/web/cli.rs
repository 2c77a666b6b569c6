//! Options of `jr-web`; each also from a `JRQ_WEB_*` variable. The password is read from
//! the environment only (the environment file), never from the command line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use super::{Auth, WebConfig};
use crate::error::{Error, Result};
use crate::telemetry::LogFormat;
use crate::validate;

/// jr-web — the jrq dashboard, Prometheus metrics (/metrics) and a health endpoint
/// (/healthz).
///
/// Authentication: set JRQ_WEB_PASSWORD (and optionally JRQ_WEB_USER, default "jrq") in
/// the environment file; every page but /healthz then asks for them (HTTP basic auth).
/// Without it jr-web listens on a loopback address only.
#[derive(Debug, Parser)]
#[command(name = "jr-web", version, about, long_about = None)]
pub struct WebArgs {
    /// Address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, env = "JRQ_WEB_LISTEN", default_value = super::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// How often the live pages (overview, workers, a running task) refresh; 0s turns it
    /// off. Range: 0s to 1h.
    #[arg(long, env = "JRQ_WEB_REFRESH", default_value = crate::validate::format_duration(super::DEFAULT_REFRESH), value_parser = validate::duration_in("0s", "1h"))]
    pub refresh: Duration,

    /// Tasks on one page of the task list. Range: 1 to 1000.
    #[arg(long, env = "JRQ_WEB_PAGE_SIZE", default_value_t = super::DEFAULT_PAGE_SIZE, value_parser = validate::count_in::<i64>(1, 1000))]
    pub page_size: i64,

    /// A worker whose heartbeat is older than this is shown (and counted) as not alive.
    /// Range: 1s to 1h.
    #[arg(long, env = "JRQ_WEB_ONLINE_THRESHOLD", default_value = crate::validate::format_duration(crate::db::workers::DEFAULT_ONLINE_THRESHOLD), value_parser = validate::duration_in("1s", "1h"))]
    pub online_threshold: Duration,

    /// Show the actions (retry, cancel, pause or resume a provider, drain or undrain a
    /// worker) and accept them. Needs JRQ_WEB_PASSWORD, and a database login that may
    /// write (the jrq_admin group). Default: off, read-only.
    #[arg(long, env = "JRQ_WEB_ALLOW_ACTIONS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_actions: bool,

    /// Time between watchdog pings and STATUS= updates; lowered to half of WatchdogSec
    /// when that is shorter. Range: 100ms to 5m.
    #[arg(long, env = "JRQ_WEB_HEARTBEAT_INTERVAL", default_value = crate::validate::format_duration(crate::daemon::defaults::HEARTBEAT_INTERVAL), value_parser = validate::duration_in("100ms", "5m"))]
    pub heartbeat_interval: Duration,

    /// Log format: auto (journald under systemd, else text), text, json, journald.
    #[arg(long, env = "JRQ_LOG_FORMAT", value_enum, default_value = "auto")]
    pub log_format: LogFormat,

    /// PostgreSQL address (URL or libpq "key=value"); default: the libpq PG* variables.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl WebArgs {
    /// The configuration and database address these options (and JRQ_WEB_USER,
    /// JRQ_WEB_PASSWORD) describe.
    pub fn into_parts(self) -> Result<(WebConfig, crate::db::DbConfig)> {
        let auth = match std::env::var("JRQ_WEB_PASSWORD") {
            Ok(p) if !p.is_empty() => Some(Auth {
                user: std::env::var("JRQ_WEB_USER")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| super::DEFAULT_USER.into()),
                password: p,
            }),
            Ok(_) | Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::Usage(
                    "JRQ_WEB_PASSWORD is not valid UTF-8: write it as UTF-8 text".into(),
                ))
            }
        };
        if auth.as_ref().is_some_and(|a| a.user.contains(':')) {
            return Err(Error::Usage(
                "JRQ_WEB_USER must not contain ':' (HTTP basic authentication splits on it)".into(),
            ));
        }
        // The monitor's options, read as the health monitor reads them (its JRQ_*
        // variables, from the environment file both units share).
        let monitor = crate::monitor::cli::MonitorArgs::try_parse_from(["jr-health-monitor"])
            .map_err(|e| {
                Error::Usage(format!(
                    "the health monitor's settings in the environment are not valid: {}",
                    e.to_string().lines().next().unwrap_or_default()
                ))
            })?
            .config()?;
        let cfg = WebConfig {
            listen: self.listen,
            refresh: (!self.refresh.is_zero()).then_some(self.refresh),
            page_size: self.page_size,
            online_threshold: self.online_threshold,
            auth,
            allow_actions: self.allow_actions,
            heartbeat_interval: self.heartbeat_interval,
            monitor: crate::monitor::MonitorConfig {
                manager: crate::monitor::Manager::None,
                actor: "jr-web".into(),
                ..monitor
            },
        };
        cfg.validate()?;
        let db = crate::db::config_from(self.database_url.as_deref(), "jr-web")?;
        Ok((cfg, db))
    }
}
