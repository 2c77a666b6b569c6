//! All SQL lives here, one module per table; functions are named table-then-verb.
//!
//! This module holds what every table module shares: how to find and reach the database,
//! the schema check, the notification channels and the one identifier-quoting helper.

pub mod events;
pub mod listen;
pub mod migrate;
pub mod runs;
pub mod tasks;
pub mod workers;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, GenericClient, NoTls, Statement};

use crate::error::{describe_chain, Error, Result};

/// Channel the insert trigger (and `jrq retry`) notify: pending tasks to route.
pub const CHANNEL_PENDING: &str = "jrq_pending";
/// Channel the assigner (and `jrq cancel`) notify; the payload is the worker name.
pub const CHANNEL_WORKER: &str = "jrq_worker";
/// Channel `jrq runs set` notifies; the payload is the run id.
pub const CHANNEL_RUNS: &str = "jrq_runs";

/// How long a connection attempt may take when the address does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the connection settings: `DATABASE_URL` (a `postgres://` URL or a libpq
/// `key=value` string) when given, else the libpq variables `PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, with libpq's defaults.
pub fn config_from(database_url: Option<&str>, application_name: &str) -> Result<Config> {
    let mut cfg = match database_url.map(str::trim).filter(|s| !s.is_empty()) {
        Some(url) => url.parse::<Config>().map_err(|e| {
            // The parser's message never echoes the string, so no password can leak.
            Error::usage(format!(
                "DATABASE_URL is not a valid PostgreSQL address ({}): use e.g. \
                 postgres://USER@HOST:5432/DBNAME or 'host=HOST dbname=DBNAME'",
                describe_chain(&e)
            ))
        })?,
        None => config_from_pg_env()?,
    };
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name(application_name);
    }
    Ok(cfg)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn config_from_pg_env() -> Result<Config> {
    let mut cfg = Config::new();
    let hosts = env("PGHOST").unwrap_or_else(|| {
        if std::path::Path::new("/var/run/postgresql").is_dir() {
            "/var/run/postgresql".into()
        } else {
            "localhost".into()
        }
    });
    for h in hosts.split(',') {
        cfg.host(h);
    }
    if let Some(p) = env("PGPORT") {
        let port: u16 = p
            .parse()
            .map_err(|_| Error::usage(format!("PGPORT '{p}' is not a port number")))?;
        cfg.port(port);
    }
    let user = env("PGUSER")
        .or_else(|| env("USER"))
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(|| "postgres".into());
    cfg.user(&user);
    if let Some(pw) = env("PGPASSWORD") {
        cfg.password(pw);
    }
    cfg.dbname(env("PGDATABASE").unwrap_or(user));
    if let Some(a) = env("PGAPPNAME") {
        cfg.application_name(&a);
    }
    if let Some(t) = env("PGCONNECT_TIMEOUT") {
        let secs: u64 = t.parse().map_err(|_| {
            Error::usage(format!(
                "PGCONNECT_TIMEOUT '{t}' is not a number of seconds"
            ))
        })?;
        cfg.connect_timeout(Duration::from_secs(secs.max(1)));
    }
    Ok(cfg)
}

/// Where a configuration points, for messages: `host:port/dbname`, never the password.
pub fn describe_target(cfg: &Config) -> String {
    let ports = cfg.get_ports();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}/.s.PGSQL.{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    match cfg.get_dbname() {
        Some(db) => format!("{hosts} (database '{db}')"),
        None => hosts,
    }
}

/// A libpq `key=value` address for database `dbname` on the server `cfg` points at (its
/// first host and port, its user and password): for handing to child processes, such as
/// the workers a test or the benchmark starts against a database of their own.
pub fn conninfo_with_dbname(cfg: &Config, dbname: &str) -> String {
    // libpq quoting: single quotes, with \ and ' escaped.
    let kv = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = vec![];
    if let Some(h) = cfg.get_hosts().first() {
        let host = match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        parts.push(format!("host={}", kv(&host)));
    }
    if let Some(p) = cfg.get_ports().first() {
        parts.push(format!("port={p}"));
    }
    if let Some(u) = cfg.get_user() {
        parts.push(format!("user={}", kv(u)));
    }
    if let Some(pw) = cfg.get_password() {
        parts.push(format!("password={}", kv(&String::from_utf8_lossy(pw))));
    }
    parts.push(format!("dbname={}", kv(dbname)));
    parts.join(" ")
}

/// Opens one connection and drives it on a background task. For LISTEN, drive the
/// connection yourself instead: this driver drops notifications.
pub async fn connect(cfg: &Config) -> Result<Client> {
    let (client, connection) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| connect_error(cfg, &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe_chain(&e), "database connection closed");
        }
    });
    Ok(client)
}

/// A connection failure as one clear line naming the target (never the password).
pub fn connect_error(cfg: &Config, e: &tokio_postgres::Error) -> Error {
    let reason = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let text = describe_chain(e);
            text.strip_prefix("error connecting to server: ")
                .unwrap_or(&text)
                .to_string()
        }
    };
    Error::Connect {
        target: describe_target(cfg),
        reason,
    }
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
pub async fn tune_session(client: &Client) -> Result<()> {
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off; SET jit = off")
        .await?;
    Ok(())
}

/// The prepared statements of one connection, prepared on first use. The daemons' hot
/// statements are planned once per connection instead of on every call (planning a CTE
/// costs several times its execution). Make a new one for every new connection.
#[derive(Default)]
pub struct Statements {
    cache: Mutex<HashMap<&'static str, Statement>>,
}

impl Statements {
    /// The prepared statement for `sql` on this connection.
    pub async fn get(&self, client: &impl GenericClient, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.cache.lock().expect("statement cache").get(sql) {
            return Ok(s.clone());
        }
        let stmt = client.prepare(sql).await?;
        self.cache
            .lock()
            .expect("statement cache")
            .insert(sql, stmt.clone());
        Ok(stmt)
    }
}

/// Checks that the database carries exactly the schema this binary knows.
pub async fn check_schema(client: &Client) -> Result<()> {
    let known = migrate::latest_version();
    match migrate::current_version(client).await? {
        None => {
            let row = client.query_one("SELECT current_database()", &[]).await?;
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
    fn quoting() {
        assert_eq!(quote_ident("jrq_worker").unwrap(), "\"jrq_worker\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident("").is_err());
    }

    #[test]
    fn conninfo_keeps_the_server_and_quotes_values() {
        let cfg = config_from(Some("postgres://bob:p'w@db.example:6543/q"), "t").unwrap();
        let c = conninfo_with_dbname(&cfg, "other db");
        assert_eq!(
            c,
            "host='db.example' port=6543 user='bob' password='p\\'w' dbname='other db'"
        );
        let back: Config = c.parse().unwrap();
        assert_eq!(back.get_dbname(), Some("other db"));
        assert_eq!(back.get_password(), Some(&b"p'w"[..]));
    }

    #[test]
    fn target_never_shows_password() {
        let cfg = config_from(Some("postgres://bob:s3cret@db.example:6543/q"), "t").unwrap();
        let t = describe_target(&cfg);
        assert_eq!(t, "db.example:6543 (database 'q')");
        assert!(!t.contains("s3cret"));
        let err = config_from(Some("postgres://bob:s3cret@db:notaport/q"), "t").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
