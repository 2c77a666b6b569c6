//! The fleet end to end under a real systemd user manager (in a private mount namespace):
//! the units as installed, the real binaries, a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{test_executor, wait_for, TestDb, UserSystemd};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(60);

/// One fleet at a time: several private managers with their workers on a 2-core machine
/// starve each other's watchdogs and stop timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const WORKER: &str = "jr-queue-worker@it_triad_jr.service";

async fn status_of(client: &Client, id: i64) -> String {
    client
        .query_one("SELECT status FROM jr_work_queue WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

async fn wait_status(client: &Client, id: i64, want: &str) {
    wait_for(T, &format!("task {id} {want}"), || async {
        status_of(client, id).await == want
    })
    .await;
}

fn fleet(db: &TestDb, out: &std::path::Path) -> UserSystemd {
    // (The caller holds ONE_AT_A_TIME.)
    UserSystemd::start(&[
        ("DATABASE_URL", &db.url),
        ("JRQ_EXEC", &test_executor()),
        ("JRQ_POLL_INTERVAL", "200ms"),
        ("JRQ_RETRY_BASE", "100ms"),
        ("EXEC_TEST_OUT", out.to_str().unwrap()),
    ])
}

fn main_pid(sd: &UserSystemd, unit: &str) -> i32 {
    sd.prop(unit, "MainPID").parse().unwrap()
}

#[tokio::test]
async fn units_start_ready_run_the_psql_insert_and_restart_after_kill_9() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let sd = fleet(&db, out.path());
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
    wait_status(&client, 1, "completed").await;
    let assigned: String = client
        .query_one("SELECT assigned_jr FROM jr_work_queue WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(assigned, "it_triad_jr");

    // kill -9 of the worker mid-task: systemd restarts it and the task completes.
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, payload) VALUES ('long', '{"sleep_attempt": {"1": 60}}')"#,
        )
        .await
        .unwrap();
    wait_status(&client, 2, "in_progress").await;
    let pid = main_pid(&sd, WORKER);
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    sd.wait_prop(WORKER, "NRestarts", "1", T).await;
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    assert_ne!(main_pid(&sd, WORKER), pid);
    wait_status(&client, 2, "completed").await;
    let attempts: i32 = client
        .query_one("SELECT attempts FROM jr_work_queue WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        attempts, 2,
        "put back after the kill, completed on the retry"
    );
}

#[tokio::test]
async fn a_hung_worker_is_killed_by_the_watchdog_and_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let out = tempfile::tempdir().unwrap();
    let sd = fleet(&db, out.path());
    // A short watchdog for the test; the worker pings at half of it.
    sd.drop_in(WORKER, "[Service]\nWatchdogSec=3\nRestartSec=1\n");
    sd.ctl(&["start", WORKER]).ok();
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    let pid = main_pid(&sd, WORKER);
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    sd.wait_prop(WORKER, "NRestarts", "1", T).await;
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    assert_ne!(
        main_pid(&sd, WORKER),
        pid,
        "a new process after the watchdog kill"
    );
}

#[tokio::test]
async fn a_run_scoped_worker_exits_when_its_run_completes_and_stays_stopped() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let run = db.run(&["runs", "create"]).ok().trim().to_string();
    let sd = fleet(&db, out.path());
    sd.drop_in(
        WORKER,
        &format!("[Service]\nEnvironment=RUN_FILTER_ID={run}\n"),
    );
    sd.ctl(&["start", WORKER]).ok();
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
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
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let sd = fleet(&db, out.path());
    sd.ctl(&["start", WORKER]).ok();
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, status, assigned_jr, payload)
               VALUES ('short', 'assigned', 'it_triad_jr', '{"sleep": 1}')"#,
        )
        .await
        .unwrap();
    wait_status(&client, 1, "in_progress").await;
    let stopped = sd.ctl(&["stop", WORKER]);
    stopped.ok();
    assert_eq!(sd.prop(WORKER, "ActiveState"), "inactive");
    assert_eq!(sd.prop(WORKER, "Result"), "success");
    assert_eq!(
        status_of(&client, 1).await,
        "completed",
        "the drain let it finish"
    );
}

/// A worker's unit cgroup counter file (`cpu.stat`), v1 or v2 layout.
fn cpu_stat(pid: i32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut v2 = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if controllers.split(',').any(|c| c == "cpu") {
            return std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/cpu.stat")).unwrap();
        }
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    std::fs::read_to_string(format!("/sys/fs/cgroup{}/cpu.stat", v2.unwrap())).unwrap()
}

fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[tokio::test]
async fn a_healthy_busy_worker_under_cpu_quota_is_not_killed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let sd = fleet(&db, out.path());
    // A short watchdog, so that a task of a few seconds outlasts it several times over.
    sd.drop_in(WORKER, "[Service]\nWatchdogSec=3\nRestartSec=1\n");
    sd.ctl(&["start", WORKER]).ok();
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    assert_eq!(sd.prop(WORKER, "CPUQuotaPerSecUSec"), "500ms");
    let pid = main_pid(&sd, WORKER);
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, status, assigned_jr, payload)
               VALUES ('cpu-bound', 'assigned', 'it_triad_jr', '{"spin": 8}')"#,
        )
        .await
        .unwrap();
    wait_status(&client, 1, "completed").await;
    let row = client
        .query_one("SELECT attempts FROM jr_work_queue WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "{}", sd.log(WORKER));
    assert_eq!(sd.prop(WORKER, "NRestarts"), "0", "{}", sd.log(WORKER));
    assert_eq!(
        main_pid(&sd, WORKER),
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
    let _one = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let sd = fleet(&db, out.path());
    sd.drop_in(WORKER, "[Service]\nMemoryHigh=infinity\nMemoryMax=96M\n");
    sd.ctl(&["start", WORKER]).ok();
    sd.wait_prop(WORKER, "ActiveState", "active", T).await;
    let pid = main_pid(&sd, WORKER);
    client
        .batch_execute(
            r#"INSERT INTO jr_work_queue (title, status, assigned_jr, payload)
               VALUES ('memory hog', 'assigned', 'it_triad_jr', '{"alloc_mb": 400}'),
                      ('modest', 'assigned', 'it_triad_jr', '{"alloc_mb": 8}')"#,
        )
        .await
        .unwrap();
    wait_status(&client, 1, "failed").await;
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
    wait_status(&client, 2, "completed").await;
    assert_eq!(main_pid(&sd, WORKER), pid, "{}", sd.log(WORKER));
    assert_eq!(sd.prop(WORKER, "NRestarts"), "0");
    assert_eq!(sd.prop(WORKER, "ActiveState"), "active");
}
