//! All SQL lives here, one module per table; functions are named table-then-verb.
//!
//! This module holds what every table module shares: how to find and reach the database,
//! the schema check, the notification channels and the one identifier-quoting helper.

pub mod conninfo;
pub mod events;
pub mod listen;
pub mod migrate;
pub mod roles;
pub mod runs;
pub mod server;
pub mod tasks;
pub mod tls;
pub mod workers;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, GenericClient, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{describe_chain, Error, Result};
pub use tls::{SslMode, TlsSettings};

/// Channel the insert trigger (and `jrq retry`) notify: pending tasks to route.
pub const CHANNEL_PENDING: &str = "jrq_pending";
/// Channel the assigner (and `jrq cancel`) notify: the payload is the worker name when
/// tasks were assigned to it, [`CANCEL_PREFIX`] and the name when one of its running tasks
/// is to be cancelled.
pub const CHANNEL_WORKER: &str = "jrq_worker";
/// Prefix of a cancel request's payload on [`CHANNEL_WORKER`] (names hold no `:`).
pub const CANCEL_PREFIX: &str = "cancel:";
/// Channel `jrq runs set` notifies; the payload is the run id.
pub const CHANNEL_RUNS: &str = "jrq_runs";

/// How long a connection attempt may take when the address does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database is and how to reach it: tokio-postgres's settings and the TLS
/// settings it has no place for, with the TLS connector built from them once (connections
/// share it).
#[derive(Clone)]
pub struct DbConfig {
    /// Host, port, user, password, database and the other settings tokio-postgres reads.
    /// Its `ssl_mode` is set per connection attempt from [`DbConfig::tls`].
    pub pg: Config,
    tls: TlsSettings,
    connector: MakeRustlsConnect,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Debug shows the password as "_".
        f.debug_struct("DbConfig")
            .field("pg", &self.pg)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl DbConfig {
    /// A configuration from tokio-postgres's settings and resolved TLS settings; reads
    /// the certificate and key files these name (an unreadable one is a usage error).
    pub fn new(pg: Config, tls: TlsSettings) -> Result<DbConfig> {
        let connector = tls.connector()?;
        Ok(DbConfig { pg, tls, connector })
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The same server, TLS settings and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> DbConfig {
        let mut c = self.clone();
        c.pg.dbname(dbname);
        c
    }

    /// Where this configuration points, for messages: `host:port (database 'x')`.
    pub fn describe(&self) -> String {
        describe_target(&self.pg)
    }

    /// The sslmode connections use: none over Unix sockets, as in libpq.
    fn effective_mode(&self) -> SslMode {
        let unix_only = self.pg.get_hostaddrs().is_empty()
            && !self.pg.get_hosts().is_empty()
            && self
                .pg
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)));
        if unix_only {
            SslMode::Disable
        } else {
            self.tls.mode
        }
    }
}

/// Builds the connection settings: `DATABASE_URL` (a `postgres://` URL or a libpq
/// `key=value` string) when given, else the libpq variables `PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, with libpq's defaults.
/// `PGPASSWORD` also gives the password a `DATABASE_URL` does not carry.
/// TLS comes from the address's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, else from
/// `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` (also beside a `DATABASE_URL`,
/// as in libpq), else libpq's defaults (`prefer`, files in `~/.postgresql`).
pub fn config_from(database_url: Option<&str>, application_name: &str) -> Result<DbConfig> {
    let cfg = config_from_env(
        database_url,
        &|name: &str| std::env::var(name).ok(),
        application_name,
    )?;
    // An address given as --database-url (not read from DATABASE_URL) is in this
    // process's command line, which every local user can read in /proc/PID/cmdline.
    let from_command_line = database_url.is_some_and(|u| {
        std::env::var("DATABASE_URL").ok().as_deref() != Some(u) && !u.trim().is_empty()
    });
    let password_in_it =
        || address_from_env(database_url, &|_| None).is_ok_and(|(c, _)| c.get_password().is_some());
    if from_command_line && password_in_it() {
        eprintln!(
            "{application_name}: warning: the database password is on the command line, \
             where every user of this host can read it (/proc/PID/cmdline): put the address \
             in DATABASE_URL in an environment file of mode 600, or the password in PGPASSWORD"
        );
    }
    Ok(cfg)
}

/// [`config_from`] with the environment read through `env` instead of from this process:
/// for building the configuration another process was given from its environment
/// (`HOME` decides where `~/.postgresql` is). The system's trusted CAs
/// (`sslrootcert=system`) are still found through this process's `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`.
pub fn config_from_env(
    database_url: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    application_name: &str,
) -> Result<DbConfig> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let (mut cfg, ssl) = address_from_env(database_url, &env)?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name(application_name);
    }
    let pick = |from_url: Option<String>, key: &'static str, var: &'static str| {
        from_url
            .map(|value| tls::Given { value, from: key })
            .or_else(|| env(var).map(|value| tls::Given { value, from: var }))
    };
    let given = tls::GivenTls {
        sslmode: pick(ssl.sslmode, "sslmode", "PGSSLMODE"),
        sslrootcert: pick(ssl.sslrootcert, "sslrootcert", "PGSSLROOTCERT"),
        sslcert: pick(ssl.sslcert, "sslcert", "PGSSLCERT"),
        sslkey: pick(ssl.sslkey, "sslkey", "PGSSLKEY"),
    };
    let home = env("HOME").map(PathBuf::from);
    let tls = TlsSettings::resolve(&given, home.as_deref())?;
    DbConfig::new(cfg, tls)
}

/// The address part of [`config_from_env`]: tokio-postgres's settings and the TLS keys
/// as written, without reading any file.
fn address_from_env(
    database_url: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, conninfo::SslKeys)> {
    match database_url.map(str::trim).filter(|s| !s.is_empty()) {
        Some(url) => {
            let invalid = |why: String| {
                // Neither message ever echoes the string, so no password can leak.
                Error::usage(format!(
                    "DATABASE_URL is not a valid PostgreSQL address ({why}): use e.g. \
                     postgres://USER@HOST:5432/DBNAME or 'host=HOST dbname=DBNAME'"
                ))
            };
            let split = conninfo::split(url).map_err(invalid)?;
            let mut cfg = split
                .rest
                .parse::<Config>()
                .map_err(|e| invalid(describe_chain(&e)))?;
            // As in libpq: PGPASSWORD gives the password an address lacks, so that the
            // address can sit in a unit's environment file and the password apart.
            if cfg.get_password().is_none() {
                if let Some(pw) = env("PGPASSWORD") {
                    cfg.password(pw);
                }
            }
            Ok((cfg, split.ssl))
        }
        None => Ok((config_from_pg_env(env)?, conninfo::SslKeys::default())),
    }
}

/// Which server and database an address reaches, however it is written: `localhost` and
/// `127.0.0.1`, a socket directory by two paths, `postgres://` or `key=value`. For telling
/// whether another process (a worker found in /proc) uses the same database as this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId {
    /// `ip:port` for each TCP address (host names resolved), `unix:PATH` for sockets.
    endpoints: std::collections::BTreeSet<String>,
    dbname: String,
}

impl ServerId {
    /// The server an address (`DATABASE_URL`, else the `PG*` variables, read through
    /// `env`) points at. Reads no file; resolves host names.
    pub fn from_env(
        database_url: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ServerId> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let (cfg, _) = address_from_env(database_url, &env)?;
        Ok(ServerId::of(&cfg))
    }

    /// The server a configuration points at.
    pub fn of(cfg: &Config) -> ServerId {
        use std::net::ToSocketAddrs;
        let ports = cfg.get_ports();
        let port_of = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let mut endpoints = std::collections::BTreeSet::new();
        for (i, h) in cfg.get_hosts().iter().enumerate() {
            let port = port_of(i);
            match h {
                Host::Tcp(name) => match (name.as_str(), port).to_socket_addrs() {
                    Ok(addrs) => endpoints.extend(addrs.map(|a| a.to_string())),
                    Err(_) => {
                        endpoints.insert(format!("{}:{port}", name.to_ascii_lowercase()));
                    }
                },
                Host::Unix(dir) => {
                    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                    endpoints.insert(format!("unix:{}/.s.PGSQL.{port}", dir.display()));
                }
            }
        }
        for (i, ip) in cfg.get_hostaddrs().iter().enumerate() {
            endpoints.insert(std::net::SocketAddr::new(*ip, port_of(i)).to_string());
        }
        let dbname = cfg
            .get_dbname()
            .or(cfg.get_user())
            .unwrap_or_default()
            .to_string();
        ServerId { endpoints, dbname }
    }

    /// Whether both reach the same database: one endpoint in common, the same name.
    pub fn same_database(&self, other: &ServerId) -> bool {
        self.dbname == other.dbname && !self.endpoints.is_disjoint(&other.endpoints)
    }
}

fn config_from_pg_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
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
/// first host and port, its user and password, and its TLS settings): for handing to child
/// processes, such as the workers a test or the benchmark starts against a database of
/// their own.
pub fn conninfo_with_dbname(cfg: &DbConfig, dbname: &str) -> String {
    use conninfo::quote as kv;
    let pg = &cfg.pg;
    let mut parts = vec![];
    if let Some(h) = pg.get_hosts().first() {
        let host = match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        parts.push(format!("host={}", kv(&host)));
    }
    if let Some(a) = pg.get_hostaddrs().first() {
        parts.push(format!("hostaddr={a}"));
    }
    if let Some(p) = pg.get_ports().first() {
        parts.push(format!("port={p}"));
    }
    if let Some(u) = pg.get_user() {
        parts.push(format!("user={}", kv(u)));
    }
    if let Some(pw) = pg.get_password() {
        parts.push(format!("password={}", kv(&String::from_utf8_lossy(pw))));
    }
    parts.push(format!("dbname={}", kv(dbname)));
    let t = &cfg.tls;
    if t.mode != SslMode::Prefer {
        parts.push(format!("sslmode={}", t.mode));
    }
    match &t.root_cert {
        tls::RootCert::None => {}
        tls::RootCert::System => parts.push("sslrootcert=system".into()),
        tls::RootCert::File(p) => parts.push(format!("sslrootcert={}", kv(&p.to_string_lossy()))),
    }
    if let Some(c) = &t.client_cert {
        parts.push(format!("sslcert={}", kv(&c.cert.to_string_lossy())));
        parts.push(format!("sslkey={}", kv(&c.key.to_string_lossy())));
    }
    parts.join(" ")
}

/// A connection whose driver has not been spawned yet.
pub type Connection =
    tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Opens one connection with libpq's sslmode semantics and returns it undriven: `allow`
/// tries without TLS first and with it when the server's pg_hba.conf refuses; `prefer`
/// the other way round, also when TLS itself fails; every other mode makes one attempt.
pub async fn open(cfg: &DbConfig) -> Result<(Client, Connection)> {
    // tokio-postgres's connect_timeout covers the TCP connect only: a server (or a proxy)
    // that accepts and then never answers would hang the caller — and a daemon's SIGTERM
    // — for as long as the peer likes. The whole startup gets the limit (per attempt).
    let limit = cfg
        .pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
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
        let cfg = config_from_env(
            Some("postgres://bob:p'w@db.example:6543/q"),
            &|_: &str| None,
            "t",
        )
        .unwrap();
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
    fn conninfo_carries_the_tls_settings_and_env_fills_in_below_the_address() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p.display().to_string()
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, crt, key) = (
            write("my ca.pem", &cert.pem()),
            write("c.crt", &cert.pem()),
            write("c.key", &key.serialize_pem()),
        );
        let env: HashMap<&str, String> = [
            ("PGSSLMODE", "disable".to_string()),
            ("PGSSLCERT", crt.clone()),
            ("PGSSLKEY", key.clone()),
        ]
        .into();
        let lookup = |k: &str| env.get(k).cloned();
        let url = format!("host=db.example sslmode=verify-ca sslrootcert='{ca}'");
        let cfg = config_from_env(Some(&url), &lookup, "t").unwrap();
        // The address's sslmode wins over PGSSLMODE; the variables give what it lacks.
        assert_eq!(
            cfg.tls(),
            &TlsSettings {
                mode: SslMode::VerifyCa,
                root_cert: tls::RootCert::File(ca.clone().into()),
                client_cert: Some(tls::ClientCert {
                    cert: crt.clone().into(),
                    key: key.clone().into(),
                }),
            }
        );
        // Handed to a child process, the settings come along.
        let c = conninfo_with_dbname(&cfg, "other");
        let back = config_from_env(Some(&c), &|_: &str| None, "t").unwrap();
        assert_eq!(back.tls(), cfg.tls());
        assert_eq!(back.pg.get_dbname(), Some("other"));
    }

    #[test]
    fn one_server_however_it_is_written() {
        let none = |_: &str| None;
        let id = |url: &str| ServerId::from_env(Some(url), &none).unwrap();
        let a = id("postgres://u@localhost:5432/jrq");
        assert!(a.same_database(&id("host=127.0.0.1 port=5432 dbname=jrq user=other")));
        assert!(!a.same_database(&id("postgres://u@localhost:5433/jrq")));
        assert!(!a.same_database(&id("postgres://u@localhost:5432/other")));
        let tmp = std::env::temp_dir();
        let unix = |dir: &std::path::Path| {
            let url = format!("host={} dbname=jrq", dir.display());
            ServerId::from_env(Some(&url), &none).unwrap()
        };
        assert!(unix(&tmp).same_database(&unix(&tmp.join("."))));
        assert!(!unix(&tmp).same_database(&a));
        // The libpq variables, as another process had them.
        let env = |k: &str| match k {
            "PGHOST" => Some("127.0.0.1".to_string()),
            "PGDATABASE" => Some("jrq".to_string()),
            _ => None,
        };
        assert!(ServerId::from_env(None, &env).unwrap().same_database(&a));
    }

    #[test]
    fn pgpassword_gives_the_password_an_address_lacks() {
        let env = |k: &str| (k == "PGPASSWORD").then(|| "from-env".to_string());
        let cfg = config_from_env(Some("host=db user=w dbname=q"), &env, "t").unwrap();
        assert_eq!(cfg.pg.get_password(), Some(&b"from-env"[..]));
        let cfg = config_from_env(Some("postgres://w:given@db/q"), &env, "t").unwrap();
        assert_eq!(cfg.pg.get_password(), Some(&b"given"[..]));
    }

    #[test]
    fn target_never_shows_password() {
        let cfg = config_from(Some("postgres://bob:s3cret@db.example:6543/q"), "t").unwrap();
        let t = cfg.describe();
        assert_eq!(t, "db.example:6543 (database 'q')");
        assert!(!t.contains("s3cret"));
        let err = config_from(Some("postgres://bob:s3cret@db:notaport/q"), "t").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
