//! TLS to PostgreSQL, with libpq's sslmode semantics: the real binaries and the library's
//! connections against a private cluster started with `ssl = on` (a CA, a server and a
//! client certificate made here with rcgen) and one without SSL, both on 127.0.0.1.
//!
//! The SSL cluster's pg_hba.conf: `certuser` only over TLS with a client certificate
//! (`cert`), `sslonly` only over TLS, `plainonly` only without; everyone else is trusted
//! either way.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::{s, wait_for, PrivateCluster, Run, WorkerProc};
use jrq::db::DbConfig;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

const HBA: &str = "\
hostssl   all certuser  127.0.0.1/32 cert
hostnossl all certuser  127.0.0.1/32 reject
hostnossl all sslonly   127.0.0.1/32 reject
hostssl   all plainonly 127.0.0.1/32 reject
";

/// The certificates: made once per test process, kept in a directory of their own.
struct Pki {
    dir: PathBuf,
    /// The CA that signed the server's and the client's certificates.
    ca: PathBuf,
    /// A CA that signed nothing here.
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// `client_key`'s certificate signed by `other_ca`.
    stranger_cert: PathBuf,
}

struct Servers {
    pki: Pki,
    /// `ssl = on`, the server certificate for `localhost` and `127.0.0.1`, client
    /// certificates checked against the CA.
    ssl: PrivateCluster,
    /// TCP without SSL.
    plain: PrivateCluster,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("jrq-test-pki.")
        .tempdir()
        .unwrap()
        .keep();
    // Removed once this test process has exited, as the clusters are.
    Command::new("setsid")
        .args([
            "--fork",
            "bash",
            "-c",
            "tail --pid=\"$1\" -f /dev/null; rm -rf \"$2\"",
            "reaper",
        ])
        .arg(std::process::id().to_string())
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        (cert, Issuer::new(params, key))
    };
    let (ca_cert, issuer) = ca("jrq test CA");
    let (other_cert, other_issuer) = ca("some other CA");
    let server_key = KeyPair::generate().unwrap();
    let mut sp =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    sp.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = sp.signed_by(&server_key, &issuer).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    // `cert` authentication maps the certificate's CN to the user name.
    cp.distinguished_name.push(DnType::CommonName, "certuser");
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();
    // The same user's certificate from a CA the server does not trust.
    let stranger_cert = cp.signed_by(&client_key, &other_issuer).unwrap();
    write("server.crt", &server_cert.pem());
    write("server.key", &server_key.serialize_pem());
    let pki = Pki {
        ca: write("ca.crt", &ca_cert.pem()),
        other_ca: write("other-ca.crt", &other_cert.pem()),
        client_cert: write("client.crt", &client_cert.pem()),
        client_key: write("client.key", &client_key.serialize_pem()),
        stranger_cert: write("stranger.crt", &stranger_cert.pem()),
        dir: dir.clone(),
    };
    std::fs::set_permissions(&pki.client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    pki
}

/// The two clusters, started once per test process (the script's reaper removes them when
/// it exits).
fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let pki = make_pki();
        let hba = pki.dir.join("pg_hba.extra");
        std::fs::write(&hba, HBA).unwrap();
        let ssl = PrivateCluster::start_with(&["--ssl", s(&pki.dir), "--hba", s(&hba)]);
        let plain = PrivateCluster::start_with(&["--tcp"]);
        // The roles the pg_hba rules name, over the cluster's Unix socket.
        let admin = ssl.url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    common::connect_str(&admin)
                        .await
                        .batch_execute(
                            "CREATE ROLE certuser LOGIN SUPERUSER; \
                             CREATE ROLE sslonly LOGIN SUPERUSER; \
                             CREATE ROLE plainonly LOGIN SUPERUSER;",
                        )
                        .await
                        .unwrap();
                })
        })
        .join()
        .unwrap();
        Servers { pki, ssl, plain }
    })
}

/// A fresh, migrated database on `cluster` (made over its Unix socket); its name.
async fn fresh_db(cluster: &PrivateCluster) -> String {
    let name = format!("jrq_tls_{}", uuid::Uuid::new_v4().simple());
    let admin = common::connect_str(&cluster.url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut c = common::connect_str(&format!("{} dbname={name}", cluster.url)).await;
    jrq::db::migrate::migrate(&mut c).await.unwrap();
    name
}

/// A TCP address of `cluster`: `localhost` (resolved by hostaddr, so that nothing tries
/// ::1), database `db`, user `user`, and `extra`.
fn tcp(cluster: &PrivateCluster, db: &str, user: &str, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname={db} {extra}",
        cluster.port()
    )
}

/// An empty HOME, so that no `~/.postgresql` of this machine takes part.
fn empty_home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The configuration the binaries would build from `url` and the environment `env`
/// (and an empty HOME unless `env` names one).
fn config(url: &str, env: &[(&str, &str)]) -> jrq::error::Result<DbConfig> {
    let home = empty_home();
    let mut vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.entry("HOME".into())
        .or_insert_with(|| s(home.path()).to_string());
    jrq::db::config_from_env(Some(url), &|k| vars.get(k).cloned(), "jrq-tls-test")
}

async fn connect(url: &str, env: &[(&str, &str)]) -> jrq::error::Result<Client> {
    jrq::db::connect(&config(url, env)?).await
}

/// Whether this session is encrypted, and the client certificate's DN.
async fn session(c: &Client) -> (bool, String) {
    let row = c
        .query_one(
            "SELECT ssl, coalesce(client_dn, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn encrypted(url: &str) -> bool {
    let c = connect(url, &[])
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    session(&c).await.0
}

/// `jrq ARGS` against `url` with HOME `home` and the variables `env`.
fn jrq(url: &str, home: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut c = common::bin("jrq");
    c.env("DATABASE_URL", url).env("HOME", home).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().unwrap())
}

/// Asserts a failure whose whole message is the one line that contains `needle`.
#[track_caller]
fn fails_in_one_line(r: &Run, code: i32, needle: &str) {
    r.fails(code, needle);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{r:#?}");
}

#[tokio::test]
async fn require_encrypts_every_connection_including_listen() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let url = tcp(&sv.ssl, &db, "postgres", "sslmode=require");
    let c = connect(&url, &[]).await.unwrap();
    assert_eq!(session(&c).await, (true, String::new()));
    // The LISTEN connection is encrypted too, and notifications arrive on it.
    let (listener, mut notes) = jrq::db::listen::listen(&config(&url, &[]).unwrap(), &["tls_t"])
        .await
        .unwrap();
    assert!(session(&listener).await.0);
    c.batch_execute("NOTIFY tls_t, 'over tls'").await.unwrap();
    let n = tokio::time::timeout(T, notes.recv())
        .await
        .expect("a notification in time")
        .expect("the listening connection is open");
    assert_eq!(n.payload(), "over tls");
    // require checks no certificate: a name the certificate does not carry is fine.
    assert!(
        encrypted(
            &tcp(&sv.ssl, &db, "postgres", "sslmode=require")
                .replace("host=localhost", "host=wrong.example")
        )
        .await
    );
    // The real CLI, from the key=value string and from a URL.
    let home = empty_home();
    jrq(&url, home.path(), &[], &["status"]).ok();
    let port = sv.ssl.port();
    let as_url = format!("postgres://postgres@127.0.0.1:{port}/{db}?sslmode=require");
    jrq(&as_url, home.path(), &[], &["status"]).ok();
}

#[tokio::test]
async fn verify_full_checks_the_ca_and_the_host_name() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let ca = s(&sv.pki.ca);
    let verify = format!("sslmode=verify-full sslrootcert={ca}");
    assert!(encrypted(&tcp(&sv.ssl, &db, "postgres", &verify)).await);
    // By address: the certificate names 127.0.0.1 as well.
    let port = sv.ssl.port();
    let by_ip = format!("host=127.0.0.1 port={port} user=postgres dbname={db} {verify}");
    assert!(encrypted(&by_ip).await);
    // The URL form, with the path percent-encoded.
    let home = empty_home();
    let enc = ca.replace('/', "%2F");
    let as_url = format!(
        "postgresql://postgres@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={enc}"
    );
    jrq(&as_url, home.path(), &[], &["status"]).ok();

    // A host name the certificate is not for: refused, in one line that says so.
    let wrong = format!(
        "host=wrong.example hostaddr=127.0.0.1 port={port} user=postgres password=s3cret \
         dbname={db} {verify}"
    );
    let r = jrq(&wrong, home.path(), &[], &["status"]);
    fails_in_one_line(
        &r,
        1,
        &format!(
            "cannot connect to PostgreSQL at wrong.example:{port} (database '{db}'): the \
             server's certificate is for 'localhost', '127.0.0.1', not 'wrong.example' \
             (sslmode=verify-full)"
        ),
    );
    assert!(!r.stderr.contains("s3cret"), "{r:#?}");
    // verify-ca checks the chain only: the same name passes.
    assert!(encrypted(&wrong.replace("verify-full", "verify-ca")).await);
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused_clearly() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let other = s(&sv.pki.other_ca);
    let home = empty_home();
    for mode in ["verify-full", "verify-ca", "require"] {
        // require with a CA file checks the chain, as libpq's does.
        let url = tcp(
            &sv.ssl,
            &db,
            "postgres",
            &format!("sslmode={mode} sslrootcert={other}"),
        );
        let r = jrq(&url, home.path(), &[], &["status"]);
        fails_in_one_line(
            &r,
            1,
            &format!(
                "the server's certificate is not signed by a trusted CA (sslrootcert={other})"
            ),
        );
    }
    // prefer is no protection: libpq's prefer falls back to an unencrypted session.
    let url = tcp(
        &sv.ssl,
        &db,
        "postgres",
        &format!("sslmode=prefer sslrootcert={other}"),
    );
    assert!(!encrypted(&url).await);
}

#[tokio::test]
async fn prefer_uses_tls_when_offered_and_falls_back_without_it() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    // No sslmode is prefer, as in libpq: TLS where the server offers it.
    assert!(encrypted(&tcp(&sv.ssl, &db, "postgres", "")).await);
    // A server without SSL: unencrypted, for the default and for an explicit prefer.
    let pdb = fresh_db(&sv.plain).await;
    assert!(!encrypted(&tcp(&sv.plain, &pdb, "postgres", "")).await);
    assert!(!encrypted(&tcp(&sv.plain, &pdb, "postgres", "sslmode=prefer")).await);
    let home = empty_home();
    jrq(
        &tcp(&sv.plain, &pdb, "postgres", ""),
        home.path(),
        &[],
        &["status"],
    )
    .ok();
    // The server refuses TLS sessions for this user: prefer tries again without TLS.
    assert!(!encrypted(&tcp(&sv.ssl, &db, "plainonly", "sslmode=prefer")).await);
    // allow is the other way round: unencrypted first, TLS when that is refused.
    assert!(!encrypted(&tcp(&sv.ssl, &db, "postgres", "sslmode=allow")).await);
    assert!(encrypted(&tcp(&sv.ssl, &db, "sslonly", "sslmode=allow")).await);
}

#[tokio::test]
async fn disable_never_tries_tls() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    assert!(!encrypted(&tcp(&sv.ssl, &db, "postgres", "sslmode=disable")).await);
    // A user the server takes only over TLS is refused, with the server's own words.
    let e = connect(&tcp(&sv.ssl, &db, "sslonly", "sslmode=disable"), &[])
        .await
        .map(|_| ())
        .expect_err("refused without TLS");
    assert!(e.to_string().contains("no encryption"), "{e}");
    // Nothing about TLS is read either: a CA file that does not exist does not matter.
    let url = tcp(
        &sv.ssl,
        &db,
        "postgres",
        "sslmode=disable sslrootcert=/nonexistent/ca.crt",
    );
    assert!(!encrypted(&url).await);
    // The same from PGSSLMODE, for the real CLI.
    let home = empty_home();
    let r = jrq(
        &tcp(&sv.ssl, &db, "sslonly", ""),
        home.path(),
        &[("PGSSLMODE", "disable")],
        &["status"],
    );
    fails_in_one_line(&r, 1, "no encryption");
}

#[tokio::test]
async fn client_certificates_authenticate() {
    use std::os::unix::fs::PermissionsExt;
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let (ca, cert, key) = (s(&sv.pki.ca), s(&sv.pki.client_cert), s(&sv.pki.client_key));
    let verify = format!("sslmode=verify-full sslrootcert={ca}");
    let url = tcp(
        &sv.ssl,
        &db,
        "certuser",
        &format!("{verify} sslcert={cert} sslkey={key}"),
    );
    let c = connect(&url, &[]).await.unwrap();
    assert_eq!(session(&c).await, (true, "/CN=certuser".to_string()));
    let me: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(me, "certuser");
    // Without a client certificate the server refuses.
    let e = connect(&tcp(&sv.ssl, &db, "certuser", &verify), &[])
        .await
        .map(|_| ())
        .expect_err("refused without a certificate");
    assert!(
        e.to_string()
            .contains("connection requires a valid client certificate: set sslcert and sslkey"),
        "{e}"
    );
    // A certificate from a CA the server does not trust.
    let stranger = format!("{verify} sslcert={} sslkey={key}", s(&sv.pki.stranger_cert));
    let e = connect(&tcp(&sv.ssl, &db, "certuser", &stranger), &[])
        .await
        .map(|_| ())
        .expect_err("refused with a stranger's certificate");
    assert!(
        e.to_string().contains(&format!(
            "the server refused this client's certificate (TLS alert UnknownCA, sslcert={})",
            s(&sv.pki.stranger_cert)
        )),
        "{e}"
    );

    // The real CLI with everything from the libpq variables.
    let home = empty_home();
    let env = [
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca),
        ("PGSSLCERT", cert),
        ("PGSSLKEY", key),
    ];
    let plain_url = tcp(&sv.ssl, &db, "certuser", "");
    jrq(&plain_url, home.path(), &env, &["status"]).ok();
    // And from libpq's default files in ~/.postgresql.
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    std::fs::copy(ca, dot.join("root.crt")).unwrap();
    std::fs::copy(cert, dot.join("postgresql.crt")).unwrap();
    std::fs::copy(key, dot.join("postgresql.key")).unwrap();
    let ro = [("PGSSLMODE", "verify-full")];
    jrq(&plain_url, home.path(), &ro, &["status"]).ok();
    // A private key others may read is refused, as libpq refuses it.
    let open_key = dot.join("postgresql.key");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = jrq(&plain_url, home.path(), &ro, &["status"]);
    fails_in_one_line(
        &r,
        2,
        &format!(
            "sslkey file {} has group or world access",
            open_key.display()
        ),
    );
}

/// The backends of `db` whose application_name is `app`: whether each is encrypted.
async fn backends_ssl(admin: &Client, db: &str, app: &str) -> Vec<bool> {
    admin
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.application_name = $2",
            &[&db, &app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_worker_the_assigner_and_the_cli_run_a_task_over_verify_full() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let url = tcp(
        &sv.ssl,
        &db,
        "postgres",
        &format!("sslmode=verify-full sslrootcert={}", s(&sv.pki.ca)),
    );
    // Long poll intervals: the task moves only by notifications, which arrive on the
    // daemons' LISTEN connections (their only connections).
    let slow = ["--poll-interval", "10m"];
    let _assigner = WorkerProc::assigner(&url, "tls_assigner", &slow);
    let mut worker_args = vec!["--exec", "noop"];
    worker_args.extend_from_slice(&slow);
    let worker = WorkerProc::start(&url, "tls_worker", &worker_args, &[]);
    let admin = common::connect_str(&format!("{} dbname={db}", sv.ssl.url)).await;
    wait_for(T, "the worker and the assigner online", || async {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM jr_status WHERE is_online \
                 AND jr_name IN ('tls_worker', 'tls_assigner')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 2
    })
    .await;
    assert_eq!(
        backends_ssl(&admin, &db, "jr-queue-worker").await,
        [true],
        "{}",
        worker.log()
    );
    assert!(!backends_ssl(&admin, &db, "jr-auto-assigner")
        .await
        .is_empty());
    assert!(backends_ssl(&admin, &db, "jr-auto-assigner")
        .await
        .iter()
        .all(|s| *s));

    // The CLI's session, caught while it waits for a lock on the queue.
    let mut lock = common::connect_str(&format!("{} dbname={db}", sv.ssl.url)).await;
    let txn = lock.transaction().await.unwrap();
    txn.batch_execute("LOCK TABLE jr_work_queue IN SHARE MODE")
        .await
        .unwrap();
    let home = empty_home();
    let cli = common::bin("jrq")
        .env("DATABASE_URL", &url)
        .env("HOME", home.path())
        .args(["enqueue", "--title", "over tls"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(T, "the CLI waiting for the lock", || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = 'jrq' AND wait_event_type = 'Lock'",
                &[&db],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert_eq!(backends_ssl(&admin, &db, "jrq").await, [true]);
    txn.commit().await.unwrap();
    let out = Run::from(cli.wait_with_output().unwrap());
    out.ok();

    wait_for(T, "the task completed", || async {
        let st: Option<String> = admin
            .query_opt(
                "SELECT status::text FROM jr_work_queue WHERE title = 'over tls'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        st.as_deref() == Some("completed")
    })
    .await;
    let by: String = admin
        .query_one(
            "SELECT assigned_jr FROM jr_work_queue WHERE title = 'over tls'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by, "tls_worker");

    // The monitor and the cleanup connect the same way.
    for (bin, args) in [
        (
            "jr-health-monitor",
            vec![
                "--manager",
                "none",
                "--max-load-per-core",
                "100000",
                "--max-memory",
                "100",
            ],
        ),
        ("jr-stale-cleanup", vec![]),
    ] {
        let r = Run::from(
            common::bin(bin)
                .env("DATABASE_URL", &url)
                .env("HOME", home.path())
                .args(&args)
                .output()
                .unwrap(),
        );
        assert!(
            matches!(r.code, Some(0) | Some(3)) && !r.stderr.contains("cannot connect"),
            "{bin}: {r:#?}"
        );
    }
}

#[tokio::test]
async fn pgsslmode_require_fails_against_a_server_without_ssl() {
    let sv = servers();
    let db = fresh_db(&sv.plain).await;
    let port = sv.plain.port();
    let url = tcp(&sv.plain, &db, "postgres", "password=s3cret");
    let home = empty_home();
    let want = format!(
        "cannot connect to PostgreSQL at localhost:{port} (database '{db}'): the server does \
         not support SSL (sslmode=require)"
    );
    let r = jrq(&url, home.path(), &[("PGSSLMODE", "require")], &["status"]);
    fails_in_one_line(&r, 1, &want);
    assert!(!r.stderr.contains("s3cret"), "{r:#?}");
    // The address's own sslmode says the same, and wins over PGSSLMODE.
    let r = jrq(
        &format!("{url} sslmode=require"),
        home.path(),
        &[("PGSSLMODE", "disable")],
        &["status"],
    );
    fails_in_one_line(&r, 1, &want);
    // A daemon refuses to start the same way.
    let mut w = WorkerProc::start(
        &url,
        "tls_nossl",
        &["--exec", "noop"],
        &[("PGSSLMODE", "require")],
    );
    assert_eq!(w.wait_exit(T).await, Some(1), "{}", w.log());
    assert!(
        w.log()
            .contains("the server does not support SSL (sslmode=require)"),
        "{}",
        w.log()
    );
}

#[tokio::test]
async fn bad_tls_settings_are_usage_errors() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let home = empty_home();
    let url = |extra: &str| tcp(&sv.ssl, &db, "postgres", extra);
    // (DATABASE_URL, environment, the message's start)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            url("sslmode=verify_full"),
            vec![],
            "sslmode 'verify_full' is not an SSL mode: use disable, allow, prefer, require, \
             verify-ca or verify-full"
                .into(),
        ),
        (
            url(""),
            vec![("PGSSLMODE", "bogus")],
            "PGSSLMODE 'bogus' is not an SSL mode".into(),
        ),
        (
            url("sslmode=verify-full sslrootcert=/nonexistent/ca.crt"),
            vec![],
            "sslrootcert /nonexistent/ca.crt cannot be read".into(),
        ),
        (
            url(""),
            vec![("PGSSLCERT", "/nonexistent/me.crt")],
            "PGSSLCERT /nonexistent/me.crt cannot be read".into(),
        ),
        (
            url("sslmode=verify-full"),
            vec![],
            "sslmode=verify-full needs the CA certificate that signed the server's certificate"
                .into(),
        ),
        (
            url("sslmode=require sslrootcert=system"),
            vec![],
            "sslmode=require may not be used with sslrootcert=system".into(),
        ),
        (
            url(&format!(
                "sslmode=verify-full sslrootcert={}",
                s(&sv.pki.client_key)
            )),
            vec![],
            format!(
                "sslrootcert file {} holds no certificate",
                s(&sv.pki.client_key)
            ),
        ),
    ];
    for (u, env, want) in &cases {
        let r = jrq(u, home.path(), env, &["status"]);
        fails_in_one_line(&r, 2, want);
    }
    // A daemon says the same and exits 2.
    let (u, env, want) = &cases[0];
    let mut w = WorkerProc::start(u, "tls_bad", &["--exec", "noop"], env);
    assert_eq!(w.wait_exit(T).await, Some(2), "{}", w.log());
    assert!(w.log().contains(want.as_str()), "{}", w.log());
}

#[tokio::test]
async fn sslrootcert_system_uses_the_system_trust_store() {
    let sv = servers();
    let db = fresh_db(&sv.ssl).await;
    let home = empty_home();
    // verify-full is the default with sslrootcert=system; SSL_CERT_FILE says where the
    // system's CAs are.
    let url = tcp(&sv.ssl, &db, "postgres", "sslrootcert=system");
    jrq(
        &url,
        home.path(),
        &[("SSL_CERT_FILE", s(&sv.pki.ca))],
        &["status"],
    )
    .ok();
    let r = jrq(
        &url,
        home.path(),
        &[("SSL_CERT_FILE", s(&sv.pki.other_ca))],
        &["status"],
    );
    fails_in_one_line(
        &r,
        1,
        "the server's certificate is not signed by a trusted CA (sslrootcert=system",
    );
    let wrong = url.replace("host=localhost", "host=wrong.example");
    let r = jrq(
        &wrong,
        home.path(),
        &[("SSL_CERT_FILE", s(&sv.pki.ca))],
        &["status"],
    );
    fails_in_one_line(&r, 1, "not 'wrong.example' (sslmode=verify-full)");
}
