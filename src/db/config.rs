//! Where the database is and how to reach it: the address (a URL, libpq's `key=value`
//! form, or the `PG*` variables), the TLS settings, and the identity of a server and
//! database however the address is written.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo;
use super::sql::PoolMode;
use super::tls::{self, SslMode, TlsSettings};
use crate::error::{describe_chain, Error, Result};

/// How long a connection attempt may take when the address does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive when the address does not say (`keepalives_idle`, `keepalives_interval`,
/// `keepalives_retries`): an idle connection to a server that vanished without a word (a
/// power cut, a failover behind a network partition) is given up after about
/// 30 s + 3 × 10 s, instead of the kernel's two hours and more.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVES_RETRIES: u32 = 3;
/// How long sent data may stay unacknowledged before the connection is given up, when the
/// address does not say (`tcp_user_timeout`): a statement sent to a server that is gone
/// fails after this instead of the kernel's ~15 minutes of retransmissions. A long-running
/// statement is not affected: the server's kernel acknowledges the statement at once.
pub const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// tokio-postgres's own keepalive idle time: the address did not set one.
const TOKIO_POSTGRES_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Where the database is and how to reach it: tokio-postgres's settings and the TLS
/// settings it has no place for, with the TLS connector built from them once (connections
/// share it).
#[derive(Clone)]
pub struct DbConfig {
    /// Host, port, user, password, database and the other settings tokio-postgres reads.
    /// Its `ssl_mode` is set per connection attempt from [`DbConfig::tls`].
    pub pg: Config,
    pub(super) tls: TlsSettings,
    pub(super) connector: MakeRustlsConnect,
    /// Whether a pooler in transaction mode stands between this program and PostgreSQL
    /// (`JRQ_POOL_MODE`; [`PoolMode`]).
    pub pool_mode: PoolMode,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's Debug shows the password as "_".
        f.debug_struct("DbConfig")
            .field("pg", &self.pg)
            .field("tls", &self.tls)
            .field("pool_mode", &self.pool_mode)
            .finish_non_exhaustive()
    }
}

impl DbConfig {
    /// A configuration from tokio-postgres's settings and resolved TLS settings; reads
    /// the certificate and key files these name (an unreadable one is a usage error).
    pub fn new(pg: Config, tls: TlsSettings) -> Result<DbConfig> {
        let connector = tls.connector()?;
        Ok(DbConfig {
            pg,
            tls,
            connector,
            pool_mode: PoolMode::default(),
        })
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
    pub(super) fn effective_mode(&self) -> SslMode {
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
    if cfg.get_keepalives_idle() == TOKIO_POSTGRES_KEEPALIVES_IDLE {
        cfg.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if cfg.get_keepalives_interval().is_none() {
        cfg.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
    }
    if cfg.get_keepalives_retries().is_none() {
        cfg.keepalives_retries(DEFAULT_KEEPALIVES_RETRIES);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        cfg.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
    // As in libpq, the variable gives what the address does not say.
    if cfg.get_target_session_attrs() == TargetSessionAttrs::Any {
        if let Some(t) = env("PGTARGETSESSIONATTRS") {
            cfg.target_session_attrs(parse_target_session_attrs(&t)?);
        }
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
    let mut db = DbConfig::new(cfg, tls)?;
    if let Some(mode) = env("JRQ_POOL_MODE") {
        db.pool_mode = mode.parse()?;
    }
    Ok(db)
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
        // One port for every host, or one per host (PGHOST=h1,h2 PGPORT=5432,5433).
        for one in p.split(',') {
            let port: u16 = one.trim().parse().map_err(|_| {
                Error::usage(format!(
                    "PGPORT '{p}' is not a port number (or a comma-separated list of them, one per PGHOST entry)"
                ))
            })?;
            cfg.port(port);
        }
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

/// `target_session_attrs` as written (libpq's values tokio-postgres knows).
fn parse_target_session_attrs(value: &str) -> Result<TargetSessionAttrs> {
    match value {
        "any" => Ok(TargetSessionAttrs::Any),
        "read-write" => Ok(TargetSessionAttrs::ReadWrite),
        "read-only" => Ok(TargetSessionAttrs::ReadOnly),
        other => Err(Error::usage(format!(
            "PGTARGETSESSIONATTRS '{other}' is not supported: use read-write (the primary of \
             a replicated cluster), read-only or any"
        ))),
    }
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

/// A libpq `key=value` address for database `dbname` on the servers `cfg` points at (its
/// hosts and ports, `target_session_attrs`, its user and password, and its TLS settings):
/// for handing to child processes, such as the workers a test or the benchmark starts
/// against a database of their own.
pub fn conninfo_with_dbname(cfg: &DbConfig, dbname: &str) -> String {
    use conninfo::quote as kv;
    let pg = &cfg.pg;
    let list = |items: Vec<String>| items.join(",");
    let mut parts = vec![];
    if !pg.get_hosts().is_empty() {
        let hosts = pg.get_hosts().iter().map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        });
        parts.push(format!("host={}", kv(&list(hosts.collect()))));
    }
    if !pg.get_hostaddrs().is_empty() {
        let addrs = pg.get_hostaddrs().iter().map(|a| a.to_string());
        parts.push(format!("hostaddr={}", list(addrs.collect())));
    }
    if !pg.get_ports().is_empty() {
        let ports = pg.get_ports().iter().map(|p| p.to_string());
        parts.push(format!("port={}", list(ports.collect())));
    }
    match pg.get_target_session_attrs() {
        TargetSessionAttrs::ReadWrite => parts.push("target_session_attrs=read-write".into()),
        TargetSessionAttrs::ReadOnly => parts.push("target_session_attrs=read-only".into()),
        _ => {}
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

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
    fn several_hosts_and_the_primary_only() {
        let none = |_: &str| None;
        let url = "postgres://w@db1:5433,db2:5434/q?target_session_attrs=read-write";
        let cfg = config_from_env(Some(url), &none, "t").unwrap();
        assert_eq!(cfg.describe(), "db1:5433,db2:5434 (database 'q')");
        let c = conninfo_with_dbname(&cfg, "other");
        assert_eq!(
            c,
            "host='db1,db2' port=5433,5434 target_session_attrs=read-write user='w' dbname='other'"
        );
        let back = config_from_env(Some(&c), &none, "t").unwrap();
        assert_eq!(back.pg.get_hosts(), cfg.pg.get_hosts());
        assert_eq!(back.pg.get_ports(), &[5433, 5434]);
        assert_eq!(
            back.pg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        // The libpq variables: a port per host, and the session attributes.
        let env = |k: &str| match k {
            "PGHOST" => Some("db1,db2".to_string()),
            "PGPORT" => Some("5433,5434".to_string()),
            "PGTARGETSESSIONATTRS" => Some("read-write".to_string()),
            _ => None,
        };
        let cfg = config_from_env(None, &env, "t").unwrap();
        assert_eq!(cfg.describe(), "db1:5433,db2:5434 (database 'postgres')");
        assert_eq!(
            cfg.pg.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        let bad = |k: &str| (k == "PGTARGETSESSIONATTRS").then(|| "primary".to_string());
        let e = config_from_env(Some("host=h"), &bad, "t").unwrap_err();
        assert!(e.to_string().contains("use read-write"), "{e}");
        let bad = |k: &str| (k == "PGPORT").then(|| "5432,x".to_string());
        assert!(config_from_env(None, &bad, "t").is_err());
    }

    #[test]
    fn keepalives_find_a_vanished_server_in_about_a_minute() {
        let cfg = config_from_env(Some("host=h"), &|_: &str| None, "t").unwrap();
        assert_eq!(cfg.pg.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            cfg.pg.get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(cfg.pg.get_keepalives_retries(), Some(3));
        assert_eq!(
            cfg.pg.get_tcp_user_timeout(),
            Some(&DEFAULT_TCP_USER_TIMEOUT)
        );
        let given = "host=h keepalives_idle=7 tcp_user_timeout=9";
        let cfg = config_from_env(Some(given), &|_: &str| None, "t").unwrap();
        assert_eq!(cfg.pg.get_keepalives_idle(), Duration::from_secs(7));
        assert_eq!(cfg.pg.get_tcp_user_timeout(), Some(&Duration::from_secs(9)));
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
