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

use jrq::db::DbConfig;
use tokio_postgres::Client;

/// The server's address for administrative connections (with the TLS settings
/// DATABASE_URL and the PGSSL* variables give, as the binaries read them).
fn admin_config() -> &'static DbConfig {
    static ADMIN: OnceLock<DbConfig> = OnceLock::new();
    ADMIN.get_or_init(|| {
        let conninfo = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => start_private_cluster(),
        };
        jrq::db::config_from(Some(&conninfo), "jrq-test")
            .unwrap_or_else(|e| panic!("DATABASE_URL: {e}"))
    })
}

fn start_private_cluster() -> String {
    // Kept for the life of the test process; the script's reaper removes it afterwards.
    let cluster = PrivateCluster::start();
    let url = cluster.url.clone();
    std::mem::forget(cluster);
    url
}

/// The project's root directory.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A libpq key=value address for `dbname` on the test server.
fn conninfo_for(dbname: &str) -> String {
    jrq::db::conninfo_with_dbname(admin_config(), dbname)
}

/// The configuration of a libpq address, as the binaries read it.
pub fn config(conninfo: &str) -> DbConfig {
    jrq::db::config_from(Some(conninfo), "jrq-test").unwrap_or_else(|e| panic!("{e}"))
}

/// A connection to a libpq address, driven in the background.
pub async fn connect_str(conninfo: &str) -> Client {
    jrq::db::connect(&config(conninfo))
        .await
        .unwrap_or_else(|e| panic!("connect to the test server: {e}"))
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
            admin_config().pg.get_dbname().unwrap_or("postgres"),
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

    /// This database's configuration, as the binaries read it from DATABASE_URL.
    pub fn config(&self) -> DbConfig {
        config(&self.url)
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
        for table in [
            "jr_work_queue",
            "jr_task_events",
            "jr_runs",
            "jr_status",
            "jr_providers",
            "jr_pauses",
            "jr_metric_totals",
        ] {
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
        let admin_url = conninfo_for(admin_config().pg.get_dbname().unwrap_or("postgres"));
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
    let mut c = Command::new(bin_path(name));
    clean_env(&mut c);
    c
}

/// Removes the JRQ_*, PG*, DATABASE_URL and RUST_LOG variables; stdin from /dev/null.
fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("JRQ_") || k.starts_with("PG") || k == "DATABASE_URL" || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
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

/// How long a test waits for what should happen soon.
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs SQL statements; panics with the statement when they fail.
pub async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// The single number a query returns.
pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// A task's status.
pub async fn status_of(client: &Client, id: i64) -> String {
    client
        .query_one("SELECT status FROM jr_work_queue WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

/// Waits (up to [`WAIT`]) until task `id` has status `want`.
pub async fn wait_status(client: &Client, id: i64, want: &str) {
    wait_status_within(WAIT, client, id, want).await
}

/// Waits up to `timeout` until task `id` has status `want`.
pub async fn wait_status_within(timeout: Duration, client: &Client, id: i64, want: &str) {
    wait_for(timeout, &format!("task {id} to be {want}"), || async {
        status_of(client, id).await == want
    })
    .await;
}

/// Inserts a task assigned to `worker` with the JSON `payload`, as an operator would with
/// psql (no assigner needed).
pub async fn assigned_task(client: &Client, worker: &str, payload: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO jr_work_queue (title, payload, status, assigned_jr, assigned_at) \
             VALUES ('t', $1::text::jsonb, 'assigned', $2, now()) RETURNING id",
            &[&payload, &worker],
        )
        .await
        .unwrap()
        .get(0)
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

/// Reads notify datagrams until `pred` matches one (returned), or fails after `timeout`.
pub async fn next_datagram(
    sock: &tokio::net::UnixDatagram,
    timeout: Duration,
    mut pred: impl FnMut(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .expect("the expected notification in time")
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if pred(&msg) {
            return msg;
        }
    }
}

/// Whether a process runs: it exists and has not exited (a zombie nobody has reaped yet
/// runs nothing).
pub fn process_runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
}

/// A command prefix that runs a program as the unprivileged user `nobody`, for tests of
/// what one ordinary user's processes can do to another's (root could do anything).
pub const AS_NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--",
];

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

/// The test executor program (`tests/fixtures/executor.py`), as an `--exec` value.
pub fn test_executor() -> String {
    format!(
        "python3 {}",
        project_root().join("tests/fixtures/executor.py").display()
    )
}

/// A worker process started for a test; killed (and reaped) when dropped.
pub struct WorkerProc {
    pub child: std::process::Child,
    pub name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProc {
    /// Starts `jr-queue-worker --name NAME ARGS` against `url`, logging to a file.
    pub fn start(url: &str, name: &str, args: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        let mut all = vec!["--name", name];
        all.extend_from_slice(args);
        WorkerProc::start_bin("jr-queue-worker", url, &all, env)
    }

    /// Starts `jr-auto-assigner --name NAME ARGS` against `url`, logging to a file.
    pub fn assigner(url: &str, name: &str, args: &[&str]) -> WorkerProc {
        let mut all = vec!["--name", name];
        all.extend_from_slice(args);
        WorkerProc::start_bin("jr-auto-assigner", url, &all, &[])
    }

    /// Starts one of the daemons with `ARGS` against `url`, logging to a file.
    pub fn start_bin(binary: &str, url: &str, args: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        WorkerProc::start_wrapped(&[], binary, url, args, env)
    }

    /// Like [`WorkerProc::start_bin`], run through `wrapper` (e.g. `setpriv --reuid=...
    /// --`): the daemon's pid is then the wrapper's, which execs it.
    pub fn start_wrapped(
        wrapper: &[&str],
        binary: &str,
        url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> WorkerProc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let mut cmd = match wrapper.split_first() {
            None => bin(binary),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin_path(binary));
                clean_env(&mut c);
                c
            }
        };
        cmd.env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            .args(["--log-format", "text"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let name = args
            .iter()
            .position(|a| *a == "--name")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.to_string())
            .unwrap_or_else(|| binary.to_string());
        WorkerProc {
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("start {binary}: {e}")),
            name,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The worker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit; its exit code (`None`: killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit in time; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls the log until it contains `needle`.
    pub async fn wait_log(&self, timeout: Duration, needle: &str) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "worker {} never logged {needle:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A stand-in for the assigner (which has its own issue): gives every ready pending
/// task to `worker` and notifies it, until dropped. Reconnects when the server goes away.
pub struct FakeAssigner {
    handle: tokio::task::JoinHandle<()>,
}

impl FakeAssigner {
    pub fn start(url: &str, worker: &str) -> FakeAssigner {
        let cfg = config(url);
        let worker = worker.to_string();
        let handle = tokio::spawn(async move {
            loop {
                let Ok(client) = jrq::db::connect(&cfg).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                loop {
                    let r = client
                        .query_one(
                            "WITH a AS (UPDATE jr_work_queue SET status = 'assigned', \
                                 assigned_jr = $1, assigned_at = now() \
                             WHERE status = 'pending' AND run_after <= now() RETURNING 1) \
                             SELECT count(*), pg_notify('jrq_worker:' || $1, $1) FROM a",
                            &[&worker],
                        )
                        .await;
                    if r.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        FakeAssigner { handle }
    }
}

impl Drop for FakeAssigner {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// A private PostgreSQL cluster of its own, for tests that stop and restart the server.
pub struct PrivateCluster {
    dir: PathBuf,
    pub url: String,
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        PrivateCluster::start_with(&[])
    }

    /// A cluster started with more `scripts/dev-postgres start` options (`--tcp`,
    /// `--ssl CERTDIR`, `--hba FILE`).
    pub fn start_with(options: &[&str]) -> PrivateCluster {
        let dir = tempfile::Builder::new()
            .prefix("jrq-test-pg.")
            .tempdir()
            .unwrap()
            .keep();
        let out = Command::new(project_root().join("scripts/dev-postgres"))
            .arg("start")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .args(options)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "dev-postgres start failed");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        PrivateCluster { dir, url }
    }

    /// The server's port: its TCP port on 127.0.0.1 with `--tcp` or `--ssl`.
    pub fn port(&self) -> u16 {
        config(&self.url).pg.get_ports()[0]
    }

    fn script(&self, cmd: &str) {
        let st = Command::new(project_root().join("scripts/dev-postgres"))
            .arg(cmd)
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "dev-postgres {cmd} failed");
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop_server(&self) {
        self.script("server-stop");
    }

    /// Starts the stopped server again.
    pub fn start_server(&self) {
        self.script("server-start");
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, sessions cut).
    pub fn kill_server(&self) {
        self.script("server-kill");
    }

    /// A streaming standby of this cluster (`scripts/dev-postgres standby`), caught up when
    /// this returns; with `sync`, this cluster waits for it on every commit.
    pub fn standby(&self, sync: bool) -> PrivateCluster {
        let dir = tempfile::Builder::new()
            .prefix("jrq-test-pg.")
            .tempdir()
            .unwrap()
            .keep();
        let mut cmd = Command::new(project_root().join("scripts/dev-postgres"));
        cmd.arg("standby")
            .arg(&dir)
            .arg("--from")
            .arg(&self.dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string());
        if sync {
            cmd.arg("--sync");
        }
        let out = cmd.stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "dev-postgres standby failed");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        PrivateCluster { dir, url }
    }

    /// Promotes this standby to primary (returns once it takes writes).
    pub fn promote(&self) {
        self.script("promote");
    }

    /// The server's log (`server.log` in the cluster's directory).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Lets other users of this host reach the server's socket (the cluster's directory
    /// is its owner's alone): for tests that run a program as another user.
    pub fn allow_other_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }

    /// A migrated database on this cluster (the cluster's own "postgres" database).
    pub async fn migrated(&self) -> Client {
        let mut c = connect_str(&self.url).await;
        jrq::db::migrate::migrate(&mut c).await.unwrap();
        c
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.script("stop");
    }
}

/// PgBouncer in transaction pooling mode in front of a [`PrivateCluster`]
/// (`scripts/dev-postgres pgbouncer`): `pool` server connections at most per database and
/// user. Stopped when dropped.
pub struct PgBouncer {
    dir: PathBuf,
    pub url: String,
}

impl PgBouncer {
    pub fn start(cluster: &PrivateCluster, pool: u32) -> PgBouncer {
        let dir = tempfile::Builder::new()
            .prefix("jrq-test-pgbouncer.")
            .tempdir()
            .unwrap()
            .keep();
        let out = Command::new(project_root().join("scripts/dev-postgres"))
            .arg("pgbouncer")
            .arg(&dir)
            .arg("--from")
            .arg(&cluster.dir)
            .args(["--pool-size", &pool.to_string()])
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "dev-postgres pgbouncer failed");
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        PgBouncer { dir, url }
    }

    /// Stops PgBouncer (its clients' connections are cut) and starts it again, same port.
    pub fn restart(&self) {
        let st = Command::new(project_root().join("scripts/dev-postgres"))
            .arg("pgbouncer-restart")
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "dev-postgres pgbouncer-restart failed");
    }

    /// PgBouncer's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Command::new(project_root().join("scripts/dev-postgres"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// What every unit gets under the tests' user manager: its output in HOME/logs, and what
/// the test machine needs besides the units' hardening — the tests' HOME (binaries, the
/// database socket) lives in /tmp, which a unit's private /tmp would hide, and the tests
/// run as root while the database socket belongs to the postgres user: root reaches it
/// only with CAP_DAC_OVERRIDE, which the units' empty capability bounding set removes
/// (for a user that is not root the set is empty anyway).
pub const TEST_DROP_IN: &str = "[Service]\nStandardOutput=append:%h/logs/%n.log\n\
    StandardError=append:%h/logs/%n.log\nPrivateTmp=no\n\
    CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_KILL\n";

/// A private systemd user manager with jrq's units installed (as
/// `scripts/install-user-units` would: binaries in ~/.local/bin, units in
/// ~/.config/systemd/user, ~/.config/jrq/jrq.env). Stopped, with every unit, when dropped.
pub struct UserSystemd {
    manager: std::process::Child,
    pub runtime: tempfile::TempDir,
    pub home: tempfile::TempDir,
}

impl UserSystemd {
    /// Starts the manager; `env` lines go into jrq.env (DATABASE_URL, JRQ_EXEC, ...).
    pub fn start(env: &[(&str, &str)]) -> UserSystemd {
        use std::os::unix::fs::PermissionsExt;
        let runtime = tempfile::tempdir().unwrap();
        std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let home = tempfile::tempdir().unwrap();
        let bin = home.path().join(".local/bin");
        let units = home.path().join(".config/systemd/user");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&units).unwrap();
        std::fs::create_dir_all(home.path().join(".config/jrq")).unwrap();
        for name in [
            "jrq",
            "jr-queue-worker",
            "jr-auto-assigner",
            "jr-health-monitor",
            "jr-stale-cleanup",
            "jr-web",
        ] {
            let path = bin_path(name);
            std::os::unix::fs::symlink(path, bin.join(name)).unwrap();
        }
        // The private manager has no journal: each service logs to HOME/logs/UNIT.log.
        std::fs::create_dir_all(home.path().join("logs")).unwrap();
        for e in std::fs::read_dir(project_root().join("systemd")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), units.join(e.file_name())).unwrap();
            let name = e.file_name().into_string().unwrap();
            if name.ends_with(".service") {
                let dir = units.join(format!("{name}.d"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("test-log.conf"), TEST_DROP_IN).unwrap();
            }
        }
        let mut text = String::new();
        for (k, v) in env {
            text.push_str(&format!(
                "{k}=\"{}\"\n",
                v.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        std::fs::write(home.path().join(".config/jrq/jrq.env"), text).unwrap();
        Self::launch(runtime, home)
    }

    /// Starts a manager with an empty HOME: nothing installed (for the installer's test).
    pub fn bare() -> UserSystemd {
        use std::os::unix::fs::PermissionsExt;
        let runtime = tempfile::tempdir().unwrap();
        std::fs::set_permissions(runtime.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Self::launch(runtime, tempfile::tempdir().unwrap())
    }

    fn launch(runtime: tempfile::TempDir, home: tempfile::TempDir) -> UserSystemd {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--kill-child=SIGTERM", "--"])
            .arg(project_root().join("scripts/user-systemd"))
            .arg(runtime.path())
            .arg(home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // If the test dies, unshare is killed, and --kill-child stops the manager and its
        // units. (unshare ignores SIGTERM while it waits for its child.)
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let manager = cmd.spawn().expect("unshare (util-linux)");
        let sd = UserSystemd {
            manager,
            runtime,
            home,
        };
        let socket = sd.runtime.path().join("systemd/private");
        let pid_file = sd.runtime.path().join("manager.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() || !pid_file.exists() {
            assert!(
                Instant::now() < deadline,
                "the systemd user manager did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sd
    }

    /// `systemctl --user ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Run {
        Run::from(
            Command::new("systemctl")
                .arg("--user")
                .args(args)
                .env("XDG_RUNTIME_DIR", self.runtime.path())
                .env("HOME", self.home.path())
                .output()
                .unwrap(),
        )
    }

    /// A unit's property (`systemctl --user show -p PROP --value UNIT`).
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.ctl(&["show", "-p", prop, "--value", unit])
            .stdout
            .trim()
            .to_string()
    }

    /// Polls until a unit's property has `value`.
    pub async fn wait_prop(&self, unit: &str, prop: &str, value: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.prop(unit, prop);
            if v == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} {prop} is {v:?}, not {value:?}: {:#?}\n{unit}'s log:\n{}",
                self.ctl(&["status", "--no-pager", unit]),
                self.log(unit)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a service has written to stdout and stderr so far.
    pub fn log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.home.path().join(format!("logs/{unit}.log")))
            .unwrap_or_default()
    }

    /// Adds a drop-in to a unit (e.g. a shorter WatchdogSec for a test) and reloads.
    pub fn drop_in(&self, unit: &str, text: &str) {
        let dir = self
            .home
            .path()
            .join(format!(".config/systemd/user/{unit}.d"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("test.conf"), text).unwrap();
        self.ctl(&["daemon-reload"]).ok();
    }
}

impl Drop for UserSystemd {
    fn drop(&mut self) {
        // The manager stops every unit on SIGTERM and exits; then unshare exits.
        let pid = std::fs::read_to_string(self.runtime.path().join("manager.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        match pid {
            Some(p) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            None => {
                let _ = self.manager.kill();
            }
        }
        let _ = self.manager.wait();
        // Nothing the manager ran may outlive it: every unit runs from HOME.
        if !std::thread::panicking() {
            let home = self.home.path().to_string_lossy().into_owned();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = processes_mentioning(&home);
                if left.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "processes left behind by the systemd user manager: {left:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Processes whose command line mentions `needle` (pid and command line).
pub fn processes_mentioning(needle: &str) -> Vec<(String, String)> {
    let mut found = vec![];
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The path of one of this package's binaries.
pub fn bin_path(name: &str) -> &'static str {
    match name {
        "jrq" => env!("CARGO_BIN_EXE_jrq"),
        "jr-queue-worker" => env!("CARGO_BIN_EXE_jr-queue-worker"),
        "jr-auto-assigner" => env!("CARGO_BIN_EXE_jr-auto-assigner"),
        "jr-health-monitor" => env!("CARGO_BIN_EXE_jr-health-monitor"),
        "jr-stale-cleanup" => env!("CARGO_BIN_EXE_jr-stale-cleanup"),
        "jr-web" => env!("CARGO_BIN_EXE_jr-web"),
        other => panic!("unknown binary {other}"),
    }
}

/// A `jr-web` process for a test; killed when dropped.
pub struct Web {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Web {
    /// Starts `jr-web --listen 127.0.0.1:0 ARGS` against `url` and waits for its address.
    pub fn start(url: &str, args: &[&str], env: &[(&str, &str)]) -> Web {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("web.log");
        let mut cmd = bin("jr-web");
        cmd.env("DATABASE_URL", url)
            .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start jr-web");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "jr-web did not say where it serves: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        let base = line
            .trim()
            .strip_prefix("jr-web: serving on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            })
            .to_string();
        Web {
            child,
            base,
            stderr,
            _dir: dir,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.base, path, None)
    }

    /// What jr-web has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "jr-web's log:\n{}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }
}

/// A POST of a form over HTTP/1.1: status and body.
pub fn http_post(base: &str, path: &str, form: &str, auth: Option<&str>) -> (u16, String) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        form.len()
    );
    if let Some(a) = auth {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(a);
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(form);
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// A GET over HTTP/1.1 (one request per connection): status and body.
pub fn http_get(base: &str, path: &str, auth: Option<&str>) -> (u16, String) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(a);
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Bodies here are small: axum sends them with a length, not chunked.
    (status, body.to_string())
}
