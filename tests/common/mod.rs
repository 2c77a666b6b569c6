//! The test harness: a fresh, migrated database per test on a real PostgreSQL, and helpers
//! to run the real binaries against it.
//!
//! The server is `DATABASE_URL` when set (it must allow CREATE DATABASE); otherwise a
//! private throwaway cluster started by `scripts/dev-postgres`, stopped once this test
//! process exits. Each test gets its own database, dropped when the test ends, so tests run
//! in parallel.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, Config, NoTls};

/// The server's address for administrative connections.
fn admin_config() -> &'static Config {
    static ADMIN: OnceLock<Config> = OnceLock::new();
    ADMIN.get_or_init(|| {
        let conninfo = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => start_private_cluster(),
        };
        conninfo
            .parse::<Config>()
            .expect("DATABASE_URL is a valid PostgreSQL address")
    })
}

fn start_private_cluster() -> String {
    let dir = tempfile::Builder::new()
        .prefix("jrq-test-pg.")
        .tempdir()
        .expect("temp dir")
        .keep();
    let out = Command::new(project_root().join("scripts/dev-postgres"))
        .arg("start")
        .arg(&dir)
        .arg("--owner-pid")
        .arg(std::process::id().to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/dev-postgres");
    assert!(out.status.success(), "scripts/dev-postgres start failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The project's root directory.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Quotes a libpq keyword value.
fn kv(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A libpq key=value address for `dbname` on the test server.
fn conninfo_for(dbname: &str) -> String {
    let admin = admin_config();
    let mut parts = vec![];
    if let Some(h) = admin.get_hosts().first() {
        let host = match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        parts.push(format!("host={}", kv(&host)));
    }
    if let Some(p) = admin.get_ports().first() {
        parts.push(format!("port={p}"));
    }
    if let Some(u) = admin.get_user() {
        parts.push(format!("user={}", kv(u)));
    }
    if let Some(pw) = admin.get_password() {
        parts.push(format!("password={}", kv(&String::from_utf8_lossy(pw))));
    }
    parts.push(format!("dbname={}", kv(dbname)));
    parts.join(" ")
}

async fn connect_str(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of its own for one test, dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    /// libpq address of this database, for DATABASE_URL.
    pub url: String,
}

impl TestDb {
    /// A fresh database with the jrq schema.
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        let mut client = db.client().await;
        jrq::db::migrate::migrate(&mut client)
            .await
            .expect("migrate the test database");
        db
    }

    /// A fresh database without any schema.
    pub async fn empty() -> TestDb {
        let name = format!("jrq_t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect_str(&conninfo_for(
            admin_config().get_dbname().unwrap_or("postgres"),
        ))
        .await;
        let quoted = jrq::db::quote_ident(&name).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
            .expect("create the test database");
        TestDb {
            url: conninfo_for(&name),
            name,
        }
    }

    /// A new connection to this database.
    pub async fn client(&self) -> Client {
        connect_str(&self.url).await
    }

    /// The `jrq` binary with this database as DATABASE_URL and a clean environment.
    pub fn jrq(&self) -> Command {
        let mut c = bin("jrq");
        c.env("DATABASE_URL", &self.url);
        c
    }

    /// Runs `jrq ARGS` and returns its output.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.jrq().args(args).output().expect("run jrq"))
    }

    /// Runs `jrq ARGS` with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        run_with_stdin(self.jrq().args(args), input)
    }

    /// A digest of every jrq table's contents: equal digests mean nothing changed.
    pub async fn fingerprint(&self) -> String {
        let client = self.client().await;
        let mut out = String::new();
        for table in ["jr_work_queue", "jr_task_events", "jr_runs", "jr_status"] {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .unwrap()
                .get(0);
            if !exists {
                out.push_str(&format!("{table}:absent;"));
                continue;
            }
            let q = format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
                 FROM {table} t"
            );
            let row = client.query_one(&q, &[]).await.unwrap();
            let n: i64 = row.get(0);
            let h: String = row.get(1);
            out.push_str(&format!("{table}:{n}:{h};"));
        }
        out
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = conninfo_for(admin_config().get_dbname().unwrap_or("postgres"));
        // Drop runs outside any async context: use a runtime of its own on a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = connect_str(&admin_url).await;
                let quoted = jrq::db::quote_ident(&name).unwrap();
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

/// A built binary of this package with the JRQ_*, PG* and DATABASE_URL variables removed.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "jrq" => env!("CARGO_BIN_EXE_jrq"),
        other => panic!("unknown binary {other}"),
    };
    let mut c = Command::new(path);
    for (k, _) in std::env::vars() {
        if k.starts_with("JRQ_") || k.starts_with("PG") || k == "DATABASE_URL" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a command with `input` on stdin.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Run {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().unwrap();
    Run::from(out)
}

/// A finished process: its status, stdout and stderr.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts the exit status and that stderr's first line contains `needle`; the whole
    /// message is one line.
    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self:#?}");
        let first = self.stderr.lines().next().unwrap_or_default();
        assert!(
            first.contains(needle),
            "expected first stderr line to contain {needle:?}: {self:#?}"
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `text` to a file in a fresh temp dir and returns the dir (keep it alive) and path.
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `path` as &str.
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
