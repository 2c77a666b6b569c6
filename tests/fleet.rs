//! The fleet end to end under a real systemd user manager (in a private mount namespace):
//! the units as installed, the real binaries, a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{status_of, test_executor, wait_for, wait_status_within, TestDb, UserSystemd};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(60);

/// One fleet at a time: several private managers with their workers on a 2-core machine
/// starve each other's watchdogs and stop timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WORKER: &str = "jr-queue-worker@it_triad_jr.service";

/// A private systemd user manager with the units installed against a fresh database, one
/// at a time. (Fields drop in order: the manager and its units first, the database last.)
struct Fleet {
    sd: UserSystemd,
    client: Client,
    db: TestDb,
    /// EXEC_TEST_OUT of the test executor.
    _out: tempfile::TempDir,
    _one: tokio::sync::MutexGuard<'static, ()>,
}

impl Fleet {
    async fn new() -> Fleet {
        let one = ONE_AT_A_TIME.lock().await;
        let db = TestDb::new().await;
        let client = db.client().await;
        let out = tempfile::tempdir().unwrap();
        let sd = UserSystemd::start(&[
            ("DATABASE_URL", &db.url),
            ("JRQ_WORKER_EXEC", &test_executor()),
            ("JRQ_WORKER_POLL_INTERVAL", "200ms"),
            ("JRQ_WORKER_RETRY_BASE", "100ms"),
            ("EXEC_TEST_OUT", out.path().to_str().unwrap()),
        ]);
        Fleet {
            sd,
            client,
            db,
            _out: out,
            _one: one,
        }
    }

    /// Starts the worker unit (with a drop-in when `drop_in` is not empty) and waits until
    /// it is active; its main pid.
    async fn start_worker(&self, drop_in: &str) -> i32 {
        if !drop_in.is_empty() {
            self.sd.drop_in(WORKER, drop_in);
        }
        self.sd.ctl(&["start", WORKER]).ok();
        self.sd.wait_prop(WORKER, "ActiveState", "active", T).await;
        main_pid(&self.sd, WORKER)
    }
}

fn main_pid(sd: &UserSystemd, unit: &str) -> i32 {
    sd.prop(unit, "MainPID").parse().unwrap()
}

#[tokio::test]
async fn units_start_ready_run_the_psql_insert_and_restart_after_kill_9() {
    let f = Fleet::new().await;
    let (sd, client) = (&f.sd, &f.client);
    sd.ctl(&["start", "jr-auto-assigner.service", WORKER]).ok();
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    sd.wait_prop("jr-auto-assigner.service", "ActiveState", "active", T)
        .await;
    let status = sd.ctl(&["status", "--no-pager", WORKER]);
    assert!(
        status.stdout.contains("Status: \"idle 0/1\""),
        "{status:#?}"
    );

    // The operators' verification, through the units.
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title, description, source, created_by) \
             VALUES ('Test Auto-Assign', 'Test', 'tpm', 'claude_tpm')",
        )
        .await
        .unwrap();
    wait_status_within(T, client, 1, "completed").await;
    let assigned: String = client
        .query_one("SELECT assigned_jr FROM jr_work_queue WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(assigned, "it_triad_jr");

    // kill -9 of the worker mid-task: systemd restarts it and the task completes. The
    // task's program started a process in a session of its own and left an orphan:
    // the unit's cgroup ends them with the worker.
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, payload) VALUES ('long',
               '{"sleep_attempt": {"1": 60}, "detached_child": true, "orphan": true}')"#,
        )
        .await
        .unwrap();
    wait_status_within(T, client, 2, "in_progress").await;
    let escaped = left_behind(f._out.path(), 2, 1).await;
    assert!(escaped.iter().all(|p| common::process_runs(*p)), "they run");
    let pid = main_pid(sd, WORKER);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    sd.wait_prop(WORKER, "NRestarts", "1", T).await;
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    assert_ne!(main_pid(sd, WORKER), pid);
    wait_status_within(T, client, 2, "completed").await;
    let attempts: i32 = client
        .query_one("SELECT attempts FROM jr_work_queue WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        attempts, 2,
        "put back after the kill, completed on the retry"
    );
    let retry = left_behind(f._out.path(), 2, 2).await;
    for pid in escaped.into_iter().chain(retry) {
        wait_for(T, &format!("process {pid} to end"), || async {
            !common::process_runs(pid)
        })
        .await;
    }
}

/// The pids a task's attempt started outside its process group (from its start record).
async fn left_behind(out: &std::path::Path, id: i64, attempt: i32) -> Vec<i32> {
    let path = out.join(format!("{id}.{attempt}.start.json"));
    wait_for(T, "the start record", || async { path.exists() }).await;
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pids: Vec<i32> = ["detached_pid", "orphan_pid"]
        .iter()
        .map(|k| rec[k].as_i64().unwrap() as i32)
        .collect();
    pids
}

#[tokio::test]
async fn a_hung_worker_is_killed_by_the_watchdog_and_restarted() {
    let f = Fleet::new().await;
    let sd = &f.sd;
    // A short watchdog for the test; the worker pings at half of it.
    let pid = f
        .start_worker("[Service]\nWatchdogSec=3\nRestartSec=1\n")
        .await;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    sd.wait_prop(WORKER, "NRestarts", "1", T).await;
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    assert_ne!(
        main_pid(sd, WORKER),
        pid,
        "a new process after the watchdog kill"
    );
}

#[tokio::test]
async fn a_run_scoped_worker_exits_when_its_run_completes_and_stays_stopped() {
    let f = Fleet::new().await;
    let (sd, client) = (&f.sd, &f.client);
    let run = f.db.run(&["runs", "create"]).ok().trim().to_string();
    f.start_worker(&format!("[Service]\nEnvironment=RUN_FILTER_ID={run}\n"))
        .await;
    client
        .execute(
            "UPDATE jr_runs SET status = 'completed' WHERE id = $1::text::uuid",
            &[&run],
        )
        .await
        .unwrap();
    sd.wait_prop(WORKER, "ActiveState", "inactive", T).await;
    assert_eq!(sd.prop(WORKER, "Result"), "success");
    assert_eq!(sd.prop(WORKER, "NRestarts"), "0", "exit 0 is not restarted");
}

#[tokio::test]
async fn systemctl_stop_drains_and_loses_no_task() {
    let f = Fleet::new().await;
    let (sd, client) = (&f.sd, &f.client);
    f.start_worker("").await;
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, status, assigned_jr, payload)
               VALUES ('short', 'assigned', 'it_triad_jr', '{"sleep": 1}')"#,
        )
        .await
        .unwrap();
    wait_status_within(T, client, 1, "in_progress").await;
    let stopped = sd.ctl(&["stop", WORKER]);
    stopped.ok();
    assert_eq!(sd.prop(WORKER, "ActiveState"), "inactive");
    assert_eq!(sd.prop(WORKER, "Result"), "success");
    assert_eq!(
        status_of(client, 1).await,
        "completed",
        "the drain let it finish"
    );
}

/// A process's CPU cgroup counters (`cpu.stat`), v1 or v2 layout.
fn cpu_stat(pid: i32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let root = std::path::Path::new(jrq::cgroup::CGROUP_ROOT);
    let dir = jrq::cgroup::controller_dir(&cgroups, root, "cpu").unwrap();
    std::fs::read_to_string(dir.join("cpu.stat")).unwrap()
}

fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[tokio::test]
async fn a_healthy_busy_worker_under_cpu_quota_is_not_killed() {
    let f = Fleet::new().await;
    let (sd, client) = (&f.sd, &f.client);
    // A short watchdog, so that a task of a few seconds outlasts it several times over.
    let pid = f
        .start_worker("[Service]\nWatchdogSec=3\nRestartSec=1\n")
        .await;
    assert_eq!(sd.prop(WORKER, "CPUQuotaPerSecUSec"), "500ms");
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, status, assigned_jr, payload)
               VALUES ('cpu-bound', 'assigned', 'it_triad_jr', '{"spin": 8}')"#,
        )
        .await
        .unwrap();
    wait_status_within(T, client, 1, "completed").await;
    let row = client
        .query_one("SELECT attempts FROM jr_work_queue WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "{}", sd.log(WORKER));
    assert_eq!(sd.prop(WORKER, "NRestarts"), "0", "{}", sd.log(WORKER));
    assert_eq!(
        main_pid(sd, WORKER),
        pid,
        "the same worker process throughout"
    );
    // The quota did bite: the unit was throttled while the task ran.
    let throttled = stat_value(&cpu_stat(pid), "nr_throttled");
    assert!(
        throttled > 0,
        "the unit was never throttled: {}",
        cpu_stat(pid)
    );
}

#[tokio::test]
async fn a_task_past_memory_max_fails_out_of_memory_and_the_worker_carries_on() {
    let f = Fleet::new().await;
    let (sd, client) = (&f.sd, &f.client);
    let pid = f
        .start_worker("[Service]\nMemoryHigh=infinity\nMemoryMax=96M\n")
        .await;
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, status, assigned_jr, payload)
               VALUES ('memory hog', 'assigned', 'it_triad_jr', '{"alloc_mb": 400}'),
                      ('modest', 'assigned', 'it_triad_jr', '{"alloc_mb": 8}')"#,
        )
        .await
        .unwrap();
    wait_status_within(T, client, 1, "failed").await;
    let row = client
        .query_one(
            "SELECT attempts, error FROM jr_work_queue WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    let error: String = row.get(1);
    assert!(
        error.starts_with("out of memory: the kernel's OOM killer ended the executor (SIGKILL)")
            && error.contains("memory limit (96M)"),
        "{error}"
    );
    assert_eq!(row.get::<_, i32>(0), 1, "not retried into the same wall");
    // The worker was not the victim: same process, and it goes on with the next task.
    wait_status_within(T, client, 2, "completed").await;
    assert_eq!(main_pid(sd, WORKER), pid, "{}", sd.log(WORKER));
    assert_eq!(sd.prop(WORKER, "NRestarts"), "0");
    assert_eq!(sd.prop(WORKER, "ActiveState"), "active");
}

/// Timers that fire every 2 s instead of every minute / hour.
const FAST_TIMER: &str =
    "[Timer]\nOnBootSec=\nOnCalendar=\nPersistent=no\nOnActiveSec=1s\nOnUnitActiveSec=2s\nAccuracySec=100ms\n";

#[tokio::test]
async fn timers_fire_the_monitor_which_restarts_a_given_up_unit_and_the_cleanup() {
    let f = Fleet::new().await;
    let (sd, db) = (&f.sd, &f.db);
    // systemd gives up on this worker after one restart-worthy death (a crash loop, in
    // short); it heartbeats often, so the monitor may call it dead after 3 s of silence.
    sd.drop_in(
        "jr-health-monitor.service",
        "[Service]\nEnvironment=JRQ_DEAD_AFTER=3s\n",
    );
    sd.drop_in(
        "jr-stale-cleanup.service",
        "[Service]\nEnvironment=JRQ_CLEANUP_GRACE=1s\n",
    );
    sd.drop_in("jr-health-monitor.timer", FAST_TIMER);
    sd.drop_in("jr-stale-cleanup.timer", FAST_TIMER);
    let pid = f
        .start_worker(
            "[Unit]\nStartLimitBurst=1\n[Service]\nRestartSec=100ms\n\
             Environment=JRQ_HEARTBEAT_INTERVAL=500ms\n",
        )
        .await;

    // A stray worker outside systemd, for a run that has finished, hung (SIGSTOP): it
    // cannot notice the end of its run, so only the cleanup can end it.
    let run = db.run(&["runs", "create"]).ok().trim().to_string();
    let mut stray =
        common::WorkerProc::start(&db.url, "stray_jr", &["--run", &run, "--exec", "noop"], &[]);
    stray.wait_log(T, "worker ready").await;
    stray.signal(Signal::SIGSTOP);
    db.run(&["runs", "set", &run, "completed"]).ok();

    sd.ctl(&["start", "jr-health-monitor.timer", "jr-stale-cleanup.timer"])
        .ok();

    // kill -9: the automatic restart hits the start limit and systemd gives up.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    sd.wait_prop(WORKER, "ActiveState", "failed", T).await;
    // (systemd counts the restart it refused.)
    assert_eq!(sd.prop(WORKER, "NRestarts"), "1");

    // The monitor, fired by its timer, finds the silent worker and restarts its unit.
    let deadline = std::time::Instant::now() + T;
    while sd.prop(WORKER, "ActiveState") != "active" {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor did not restart the worker; its log:\n{}",
            sd.log("jr-health-monitor.service")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(main_pid(sd, WORKER), pid);
    // The unit can be active again before the monitor has printed its report.
    let deadline = std::time::Instant::now() + T;
    loop {
        let log = sd.log("jr-health-monitor.service");
        if log.contains("restart:    jr-queue-worker@it_triad_jr.service: restarted\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The cleanup, fired by its timer, ended the stray (SIGKILL: it could not drain).
    assert_eq!(stray.wait_exit(T).await, None, "killed by a signal");
    assert!(
        sd.log("jr-stale-cleanup.service").contains("stray_jr"),
        "{}",
        sd.log("jr-stale-cleanup.service")
    );
    for timer in ["jr-health-monitor.timer", "jr-stale-cleanup.timer"] {
        assert_ne!(sd.prop(timer, "LastTriggerUSec"), "n/a", "{timer} fired");
    }
}

#[tokio::test]
async fn the_installer_installs_starts_updates_and_uninstalls() {
    use std::os::unix::fs::PermissionsExt;
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let sd = UserSystemd::bare();
    let home = sd.home.path().to_path_buf();
    let bins = std::path::Path::new(common::bin_path("jrq"))
        .parent()
        .unwrap();
    let install = |args: &[&str], with_env: bool| {
        let mut cmd =
            std::process::Command::new(common::project_root().join("scripts/install-user-units"));
        cmd.args(args)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", sd.runtime.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DATABASE_URL")
            .env_remove("JRQ_EXEC");
        if with_env {
            // A TLS variable reaches the units' environment file too (disable: the test
            // server is a Unix socket, where TLS is never used anyway).
            cmd.env("DATABASE_URL", &db.url)
                .env("JRQ_EXEC", test_executor())
                .env("PGSSLMODE", "disable");
        }
        common::Run::from(cmd.output().unwrap())
    };
    let prebuilt = ["--prebuilt", bins.to_str().unwrap()];

    // A bad worker name is refused before anything is installed.
    install(&[&prebuilt[..], &["bad name"]].concat(), true)
        .fails(1, "worker name 'bad name' is not valid");
    assert!(!home.join(".local/bin/jrq").exists());

    // The dashboard too. This test's HOME and database socket live in /tmp, and it runs as
    // root while the socket belongs to another user: the tests' drop-in lets the hardened
    // units see them (their own private /tmp and empty capability set would not).
    std::fs::create_dir_all(home.join("logs")).unwrap();
    for unit in [
        "jr-queue-worker@.service",
        "jr-auto-assigner.service",
        "jr-health-monitor.service",
        "jr-stale-cleanup.service",
        "jr-web.service",
    ] {
        let dir = home.join(format!(".config/systemd/user/{unit}.d"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("test.conf"), common::TEST_DROP_IN).unwrap();
    }
    let web_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web_addr = format!("127.0.0.1:{web_port}");
    let out = install(
        &[&prebuilt[..], &["--web", &web_addr, "it_triad_jr"]].concat(),
        true,
    );
    let text = out.ok().to_string();
    assert!(text.contains("wrote"), "{text}");
    assert!(
        text.contains(&format!("the dashboard: http://{web_addr}")),
        "{text}"
    );
    sd.wait_prop("jr-web.service", "ActiveState", "active", T)
        .await;
    assert_eq!(sd.prop("jr-web.service", "UnitFileState"), "enabled");
    // Man pages and completions of every program.
    let man = home.join(".local/share/man/man1");
    let completion = home.join(".local/share/bash-completion/completions/jr-queue-worker");
    assert!(man.join("jr-queue-worker.1").exists() && man.join("jrq-enqueue.1").exists());
    assert!(std::fs::read_to_string(&completion)
        .unwrap()
        .contains("--capacity"));
    assert!(home.join(".config/fish/completions/jrq.fish").exists());
    let (status, answer) = common::http_get(&format!("http://{web_addr}"), "/healthz", None);
    assert_eq!(status, 200, "{answer}");
    // Linger: enabled, or (no logind here) a line saying what to run; never a failure.
    assert!(
        text.contains("== linger enabled") || text.contains("sudo loginctl enable-linger"),
        "{text}"
    );
    let env_file = home.join(".config/jrq/jrq.env");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the environment file is private");
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    assert!(env_text.contains(&format!("DATABASE_URL=\"{}\"", db.url)));
    assert!(env_text.contains("\nPGSSLMODE=\"disable\"\n"), "{env_text}");
    for unit in [
        "jr-auto-assigner.service",
        "jr-health-monitor.timer",
        "jr-stale-cleanup.timer",
        WORKER,
    ] {
        sd.wait_prop(unit, "ActiveState", "active", T).await;
        assert_eq!(sd.prop(unit, "UnitFileState"), "enabled", "{unit}");
    }
    // The operators' check, through the installed units.
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title, description, source, created_by) \
             VALUES ('Test Auto-Assign', 'Test', 'tpm', 'claude_tpm')",
        )
        .await
        .unwrap();
    wait_status_within(T, &client, 1, "completed").await;

    // Again, without the environment: the settings are kept, nothing restarts.
    let pid = main_pid(&sd, WORKER);
    let text = install(&[&prebuilt[..], &["it_triad_jr"]].concat(), false)
        .ok()
        .to_string();
    assert!(text.contains("keeping"), "{text}");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), env_text);
    assert_eq!(main_pid(&sd, WORKER), pid, "same binaries: not restarted");

    let text = install(&["--uninstall"], false).ok().to_string();
    assert!(text.contains("jrq uninstalled"), "{text}");
    for unit in [
        "jr-auto-assigner.service",
        "jr-health-monitor.timer",
        "jr-web.service",
        WORKER,
    ] {
        sd.wait_prop(unit, "ActiveState", "inactive", T).await;
    }
    // The settings stay unless asked: a reinstall picks them up again.
    assert!(text.contains("kept"), "{text}");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), env_text);
    install(&["--purge"], false).fails(2, "--purge goes with --uninstall");
    let text = install(&["--uninstall", "--purge"], false).ok().to_string();
    assert!(text.contains("deleted"), "{text}");
    assert!(!env_file.exists());
    assert!(!home.join(".local/bin/jr-queue-worker").exists());
    assert!(!man.join("jr-queue-worker.1").exists() && !completion.exists());
    assert!(!home
        .join(".config/systemd/user/jr-queue-worker@.service")
        .exists());
}

#[tokio::test]
async fn a_workers_own_environment_file_wins_over_jrq_env() {
    let f = Fleet::new().await;
    // jrq.env says capacity 1 (the default); a drop-in's Environment= loses to any
    // environment file, the worker's own file wins over jrq.env.
    std::fs::write(
        f.sd.home.path().join(".config/jrq/worker-it_triad_jr.env"),
        "JRQ_WORKER_CAPACITY=3\n",
    )
    .unwrap();
    f.start_worker("[Service]\nEnvironment=JRQ_WORKER_CAPACITY=2\n")
        .await;
    wait_for(T, "the worker's registration", || async {
        f.client
            .query_opt(
                "SELECT capacity FROM jr_status WHERE jr_name = 'it_triad_jr' AND is_online",
                &[],
            )
            .await
            .unwrap()
            .is_some_and(|r| r.get::<_, i32>(0) == 3)
    })
    .await;
}
