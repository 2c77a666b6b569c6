//! All SQL lives here, one module per table; functions are named table-then-verb.
//!
//! This module holds what every table module shares: how to find and reach the database,
//! the schema check, the notification channels and the one identifier-quoting helper.

mod config;
pub mod conninfo;
pub mod events;
pub mod listen;
pub mod metrics;
pub mod migrate;
pub mod providers;
pub mod roles;
pub mod runs;
pub mod schedules;
pub mod server;
pub mod sql;
pub mod tasks;
pub mod tls;
pub mod workers;

use std::sync::{Mutex, PoisonError};
use tokio_postgres::tls::MakeTlsConnect;

use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{describe_chain, Error, Result};
pub use config::{
    config_from, config_from_env, conninfo_with_dbname, describe_target, DbConfig, ServerId,
    DEFAULT_CONNECT_TIMEOUT,
};
pub use sql::{PoolMode, Sql, Statements};
pub use tls::{SslMode, TlsSettings};

/// Channel the insert trigger (and `jrq retry`) notify: pending tasks to route.
pub const CHANNEL_PENDING: &str = "jrq_pending";
/// The prefix of every worker's own channel ([`worker_channel`]), which the assigner (and
/// `jrq cancel`) notify: the payload is the worker name when tasks were assigned to it,
/// [`CANCEL_PREFIX`] and the name when one of its running tasks is to be cancelled.
pub const CHANNEL_WORKER: &str = "jrq_worker";
/// Prefix of a cancel request's payload on a [`worker_channel`] (names hold no `:`).
pub const CANCEL_PREFIX: &str = "cancel:";

/// The channel worker `name` LISTENs on: `jrq_worker:NAME`, cut to PostgreSQL's 63 bytes
/// at a character boundary. A notification reaches the one worker it is for, not the
/// whole fleet (two long names with the same first 52 bytes share a channel: the payload,
/// always the full name, tells them apart).
pub fn worker_channel(name: &str) -> String {
    const MAX: usize = 63;
    let mut ch = format!("{CHANNEL_WORKER}:{name}");
    if ch.len() > MAX {
        let mut cut = MAX;
        while !ch.is_char_boundary(cut) {
            cut -= 1;
        }
        ch.truncate(cut);
    }
    ch
}
/// Channel `jrq schedules` notifies when a schedule is added or resumed (the payload is
/// its name): the assigners look at their schedules at once.
pub const CHANNEL_SCHEDULES: &str = "jrq_schedules";
/// Channel `jrq runs set` notifies; the payload is the run id.
pub const CHANNEL_RUNS: &str = "jrq_runs";
/// Written output (payload: the task ids written, separated by commas): `jrq logs --follow`.
pub const CHANNEL_OUTPUT: &str = "jrq_output";

/// A connection whose driver has not been spawned yet.
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Opens one connection with libpq's sslmode semantics and returns it undriven: `allow`
/// tries without TLS first and with it when the server's pg_hba.conf refuses; `prefer`
/// the other way round, also when TLS itself fails; every other mode makes one attempt.
pub async fn open(cfg: &DbConfig) -> Result<(Client, Connection)> {
    sql::note_mode(cfg.pool_mode);
    // tokio-postgres's connect_timeout covers the TCP connect only: a server (or a proxy)
    // that accepts and then never answers would hang the caller — and a daemon's SIGTERM
    // — for as long as the peer likes. The whole startup gets the limit per attempt and
    // per host of the address (each host is tried in turn, as in libpq).
    let hosts = cfg.pg.get_hosts().len().max(cfg.pg.get_hostaddrs().len());
    let limit = cfg
        .pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
        * hosts.clamp(1, 16) as u32;
    match tokio::time::timeout(limit * 2, open_unbounded(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect {
            target: cfg.describe(),
            reason: format!(
                "the server did not complete the connection within {} (it accepted it, \
                 then did not answer)",
                crate::validate::format_duration(limit * 2)
            ),
        }),
    }
}

async fn open_unbounded(cfg: &DbConfig) -> Result<(Client, Connection)> {
    use tokio_postgres::config::SslMode as Pg;
    let attempt = |mode: Pg| {
        let mut pg = cfg.pg.clone();
        pg.ssl_mode(mode);
        let connector = cfg.connector.clone();
        async move { pg.connect(connector).await }
    };
    // The server's pg_hba.conf refused this kind of session: the other kind may pass.
    let hba_refused = |e: &tokio_postgres::Error| crate::error::sqlstate(e) == Some("28000");
    let (first, second) = match cfg.effective_mode() {
        SslMode::Disable => (Pg::Disable, None),
        SslMode::Allow => (Pg::Disable, Some(Pg::Require)),
        SslMode::Prefer => (Pg::Prefer, Some(Pg::Disable)),
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => (Pg::Require, None),
    };
    let e1 = match attempt(first).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let retry = match second {
        Some(Pg::Require) => hba_refused(&e1),
        Some(_) => tls::is_tls_failure(&e1) || hba_refused(&e1),
        None => false,
    };
    let Some(second) = second.filter(|_| retry) else {
        return Err(connect_error(cfg, &e1));
    };
    match attempt(second).await {
        Ok(c) => {
            tracing::debug!(
                sslmode = %cfg.tls.mode,
                first_error = %describe_chain(&e1),
                "connected on the second attempt"
            );
            Ok(c)
        }
        Err(e2) => {
            let again = if second == Pg::Disable {
                "without SSL"
            } else {
                "with SSL"
            };
            Err(match (connect_error(cfg, &e1), connect_error(cfg, &e2)) {
                (Error::Connect { target, reason }, Error::Connect { reason: b, .. })
                | (Error::Connect { target, reason }, Error::Tls { reason: b, .. })
                    if reason != b =>
                {
                    Error::Connect {
                        target,
                        reason: format!("{reason}; {again}: {b}"),
                    }
                }
                (Error::Tls { target, reason }, Error::Connect { reason: b, .. })
                | (Error::Tls { target, reason }, Error::Tls { reason: b, .. })
                    if reason != b =>
                {
                    Error::Tls {
                        target,
                        reason: format!("{reason}; {again}: {b}"),
                    }
                }
                (r1, _) => r1,
            })
        }
    }
}

/// Opens one connection and drives it on a background task. For LISTEN, drive the
/// connection yourself instead ([`open`], or [`listen::listen`]): this driver drops
/// notifications.
pub async fn connect(cfg: &DbConfig) -> Result<Client> {
    let (client, connection) = open(cfg).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe_chain(&e), "database connection closed");
        }
    });
    Ok(client)
}

/// A connection failure as one clear line naming the target (never the password): a TLS
/// failure says what failed and what to do, anything else what the server or the network
/// said.
pub fn connect_error(cfg: &DbConfig, e: &tokio_postgres::Error) -> Error {
    let target = cfg.describe();
    if let Some(reason) = tls::explain(&cfg.tls, e) {
        return Error::Tls { target, reason };
    }
    let reason = match e.as_db_error() {
        // pg_hba.conf's `cert` (or clientcert=) without a certificate from this side.
        Some(db) if db.message().contains("requires a valid client certificate") => {
            return Error::Tls {
                target,
                reason: format!(
                    "{}: set sslcert and sslkey (or PGSSLCERT and PGSSLKEY) to a client \
                     certificate signed by a CA the server trusts",
                    db.message()
                ),
            };
        }
        Some(db) => db.message().to_string(),
        None => {
            let text = describe_chain(e);
            text.strip_prefix("error connecting to server: ")
                .unwrap_or(&text)
                .to_string()
        }
    };
    Error::Connect { target, reason }
}

/// Quotes an SQL identifier (a LISTEN channel, a database name) the way PostgreSQL's
/// `quote_ident` does. The only place identifiers are put into SQL text.
pub fn quote_ident(ident: &str) -> Result<String> {
    if ident.is_empty() || ident.contains('\0') {
        return Err(Error::usage(format!(
            "'{ident}' is not a valid SQL identifier"
        )));
    }
    Ok(format!("\"{}\"", ident.replace('"', "\"\"")))
}

/// Settings for a daemon's session. The hot statements are built around the partial
/// indexes, in the order of service; but a queue table's statistics are often stale (a
/// bulk insert is invisible to the planner until autoanalyze runs, up to a minute later),
/// and with "empty table" statistics the planner sorts the whole backlog on every round
/// instead of reading the first rows of the index. Sequential and bitmap scans stay
/// possible where no index applies (these are cost penalties, not prohibitions); JIT is
/// off because the penalty would trigger it, and short statements never gain from it.
///
/// Through a transaction pooler ([`PoolMode::Transaction`]) a session setting would stay on
/// whichever server connection ran it, for other clients: nothing is set; set these on
/// the daemons' login role instead (`ALTER ROLE … SET`, docs/operations.md).
pub async fn tune_session(client: &Client) -> Result<()> {
    if sql::transaction_pooling() {
        warn_once_unless(
            client,
            "enable_seqscan",
            "off",
            "the daemons' planner settings are not on this login (a transaction pooler \
             cannot hold a session's): ALTER ROLE … SET enable_seqscan = off, \
             enable_bitmapscan = off, jit = off (docs/operations.md, \"Through PgBouncer\")",
        )
        .await;
        return Ok(());
    }
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off; SET jit = off")
        .await?;
    Ok(())
}

/// Logs `warning` once per process when setting `name` is not `want` on `client`'s
/// session (what a login role's `ALTER ROLE … SET` would give it). A failed read is
/// silent: this is advice, not a check.
pub async fn warn_once_unless(client: &Client, name: &str, want: &str, warning: &str) {
    static WARNED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Ok(row) = client.row("SELECT current_setting($1)", &[&name]).await else {
        return;
    };
    let value: String = row.get(0);
    let mut warned = WARNED.lock().unwrap_or_else(PoisonError::into_inner);
    if value != want && !warned.iter().any(|w| w == name) {
        warned.push(name.to_string());
        tracing::warn!(setting = name, value = %value, "{warning}");
    }
}

/// Reads a status column (text, CHECKed by the schema) as its enum.
macro_rules! status_from_sql {
    ($t:ty) => {
        impl<'a> tokio_postgres::types::FromSql<'a> for $t {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
                Ok(text.parse::<$t>()?)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}

status_from_sql!(crate::task::TaskStatus);
status_from_sql!(crate::task::RunStatus);
status_from_sql!(workers::WorkerStatus);

/// Checks that the database carries exactly the schema this binary knows.
pub async fn check_schema(client: &Client) -> Result<()> {
    let known = migrate::latest_version();
    match migrate::current_version(client).await? {
        None => {
            let row = client.row("SELECT current_database()", &[]).await?;
            Err(Error::SchemaMissing {
                database: row.get(0),
            })
        }
        Some(found) if found > known => Err(Error::SchemaTooNew { found, known }),
        Some(found) if found < known => Err(Error::SchemaTooOld { found, known }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_channels_fit_postgresql_identifiers() {
        assert_eq!(worker_channel("jr1"), "jrq_worker:jr1");
        let long = "é".repeat(40);
        let ch = worker_channel(&long);
        assert!(ch.len() <= 63 && ch.starts_with("jrq_worker:é"), "{ch}");
        assert_eq!(worker_channel(&long), ch, "the same name, the same channel");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("jrq_worker").unwrap(), "\"jrq_worker\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident("").is_err());
    }
}
