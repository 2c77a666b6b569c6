//! Defects found by adversarial testing (issue 11), each reproduced against the real
//! binaries and a real PostgreSQL: what a task's program, a psql INSERT or a careless
//! operator can do must never jam, crash or fool a daemon.

mod common;

use std::time::Duration;

use common::{next_datagram, status_of, test_executor, wait_for, wait_status, TestDb, WorkerProc};
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

async fn exec_sql(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Inserts a task assigned to `worker` with `payload`, like an operator with psql.
async fn assigned_task(client: &Client, worker: &str, payload: &serde_json::Value) -> i64 {
    client
        .query_one(
            "INSERT INTO jr_work_queue (title, payload, status, assigned_jr, assigned_at) \
             VALUES ('t', $1, 'assigned', $2, now()) RETURNING id",
            &[payload, &worker],
        )
        .await
        .unwrap()
        .get(0)
}

async fn text_of(client: &Client, id: i64, column: &str) -> String {
    let sql = format!("SELECT coalesce({column}, '') FROM jr_work_queue WHERE id = $1");
    client.query_one(&sql, &[&id]).await.unwrap().get(0)
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn output_postgres_cannot_store_is_replaced_and_a_refused_outcome_blocks_no_other() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // A rule of the operator's own that refuses one result: the worker's batch of outcomes
    // then holds one the database will never take.
    exec_sql(
        &client,
        "ALTER TABLE jr_work_queue ADD CONSTRAINT no_poison CHECK (result IS DISTINCT FROM 'poison')",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let _w = WorkerProc::start(
        &db.url,
        "jr_nul",
        &[
            "--exec",
            &test_executor(),
            "--capacity",
            "4",
            "--poll-interval",
            "100ms",
        ],
        &[],
    );
    // NUL bytes and invalid UTF-8 on stdout (a success) and on stderr (a failure).
    let nul_out = assigned_task(
        &client,
        "jr_nul",
        &serde_json::json!({"stdout": "", "stdout_b64": b64(b"a\0b\xff\n")}),
    )
    .await;
    let nul_err = assigned_task(
        &client,
        "jr_nul",
        &serde_json::json!({"stdout": "", "stderr_b64": b64(b"x\0y\n"), "exit": 3}),
    )
    .await;
    wait_status(&client, nul_out, "completed").await;
    wait_status(&client, nul_err, "failed").await;
    let result = text_of(&client, nul_out, "result").await;
    assert!(result.starts_with("a\u{FFFD}b\u{FFFD}\n"), "{result:?}");
    assert!(
        result.contains("[jrq: 1 NUL byte(s) and bytes that are not UTF-8 replaced with U+FFFD"),
        "the result says what was replaced: {result:?}"
    );
    let error = text_of(&client, nul_err, "error").await;
    assert!(error.contains("x\u{FFFD}y"), "{error:?}");
    assert!(error.contains("1 NUL byte(s) replaced"), "{error:?}");

    // Three tasks finish together; the database refuses one outcome.
    let poison = assigned_task(
        &client,
        "jr_nul",
        &serde_json::json!({"stdout": "poison", "wait_file": release}),
    )
    .await;
    let mut fine = vec![];
    for i in 0..2 {
        let p = serde_json::json!({"stdout": format!("fine {i}"), "wait_file": release});
        fine.push(assigned_task(&client, "jr_nul", &p).await);
    }
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_nul', 'jr_nul')").await;
    for id in fine.iter().chain([&poison]) {
        wait_status(&client, *id, "in_progress").await;
    }
    std::fs::write(&release, "").unwrap();
    for id in &fine {
        wait_status(&client, *id, "completed").await;
    }
    wait_status(&client, poison, "failed").await;
    let error = text_of(&client, poison, "error").await;
    assert!(
        error.starts_with("jrq could not store this attempt's outcome (completed): ")
            && error.contains("no_poison"),
        "the task says why it failed: {error:?}"
    );
    // And the worker goes on.
    let after = assigned_task(&client, "jr_nul", &serde_json::json!({})).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_nul', 'jr_nul')").await;
    wait_status(&client, after, "completed").await;
}

#[tokio::test]
async fn a_worker_whose_outcome_writes_keep_failing_stops_pinging_the_watchdog() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // Every completion is refused, as by a full disk, while claims and heartbeats work.
    exec_sql(
        &client,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'could not extend file (test)' USING ERRCODE = '53100'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON jr_task_events FOR EACH ROW \
             WHEN (NEW.action = 'completed') EXECUTE FUNCTION refuse()",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr_wd",
        &[
            "--exec",
            "noop",
            "--heartbeat-interval",
            "100ms",
            "--db-grace",
            "1s",
        ],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    next_datagram(&sock, T, |m| m.contains("READY=1")).await;
    next_datagram(&sock, T, |m| m.contains("WATCHDOG=1")).await;
    let id = assigned_task(&client, "jr_wd", &serde_json::json!({})).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_wd', 'jr_wd')").await;
    next_datagram(&sock, T, |m| m.contains("outcome(s) unwritten")).await;
    let failing = tokio::time::Instant::now();
    // Watch for 3 s (the grace is 1 s): the last ping must come within the grace.
    let mut last_ping = failing;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout_at(failing + Duration::from_secs(3), sock.recv(&mut buf)).await
    {
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            last_ping = tokio::time::Instant::now();
        }
    }
    let pinged_for = last_ping - failing;
    assert!(
        pinged_for < Duration::from_millis(1500),
        "watchdog pings went on {pinged_for:?} while outcomes could not be written"
    );
    assert_eq!(status_of(&client, id).await, "in_progress");
    // The cause goes away: the outcome is written, and the worker is healthy again.
    exec_sql(&client, "DROP TRIGGER refuse ON jr_task_events").await;
    wait_status(&client, id, "completed").await;
    next_datagram(&sock, T, |m| m.contains("WATCHDOG=1")).await;
}

/// Reads `/proc/$PPID/environ` and `/proc/$PPID/mem` — the worker's — as a task's
/// program could, and prints what it got.
const SNOOPER: &str = r#"
import os
ppid = os.getppid()
print("ppid", ppid)
try:
    data = open(f"/proc/{ppid}/environ", "rb").read()
    print("environ: read", len(data), "bytes")
    if b"must-not-leak" in data:
        print("LEAKED: the password is in the worker's environment")
except OSError as e:
    print("environ:", type(e).__name__)
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            if b"must-not-leak" in open(f"/proc/{pid}/environ", "rb").read():
                print("LEAKED by", pid, open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
try:
    with open(f"/proc/{ppid}/mem", "rb") as mem:
        start = int(open(f"/proc/{ppid}/maps").readline().split("-")[0], 16)
        mem.seek(start)
        print("mem: read", len(mem.read(64)), "bytes")
except OSError as e:
    print("mem:", type(e).__name__)
"#;

#[tokio::test]
async fn a_task_program_cannot_read_the_workers_environment_or_memory() {
    // The worker and its programs run as one ordinary user (root could read anything).
    let cluster = common::PrivateCluster::start();
    cluster.allow_other_users();
    let client = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let snooper = dir.path().join("snoop.py");
    std::fs::write(&snooper, SNOOPER).unwrap();
    let exec = format!("/usr/bin/python3 {}", snooper.display());
    let nobody = common::AS_NOBODY;
    let args = [
        "--name",
        "jr_snoop",
        "--exec",
        &exec,
        "--poll-interval",
        "100ms",
    ];
    let secret = [("PGPASSWORD", "must-not-leak")];
    let w = WorkerProc::start_wrapped(&nobody, "jr-queue-worker", &cluster.url, &args, &secret);
    w.wait_log(T, "worker ready").await;
    // Every other jrq program of that user holds the password as well.
    let assigner = WorkerProc::start_wrapped(
        &nobody,
        "jr-auto-assigner",
        &cluster.url,
        &["--name", "assigner.snoop"],
        &secret,
    );
    assigner.wait_log(T, "assigner ready").await;
    let id = assigned_task(&client, "jr_snoop", &serde_json::json!({})).await;
    exec_sql(
        &client,
        "SELECT pg_notify('jrq_worker:jr_snoop', 'jr_snoop')",
    )
    .await;
    wait_status(&client, id, "completed").await;
    let result = text_of(&client, id, "result").await;
    assert!(
        result.contains(&format!("ppid {}", w.pid())),
        "the program ran under the worker: {result}"
    );
    assert!(
        result.contains("environ: PermissionError"),
        "the worker's environment must be out of reach: {result}"
    );
    assert!(
        result.contains("mem: PermissionError"),
        "the worker's memory must be out of reach: {result}"
    );
    assert!(
        !result.contains("LEAKED"),
        "no jrq program's environment is readable: {result}"
    );
    // Hidden as it is, the worker is still known to be alive: a second one is refused.
    let mut second =
        WorkerProc::start_wrapped(&nobody, "jr-queue-worker", &cluster.url, &args, &secret);
    assert_eq!(second.wait_exit(T).await, Some(1), "{}", second.log());
    assert!(
        second.log().contains("is held by a live process"),
        "{}",
        second.log()
    );
}

/// The processes a task's program left, from its start record; killed when dropped so
/// that a failing test leaves nothing behind.
struct Left(Vec<i64>);

impl Left {
    async fn read(out: &std::path::Path, id: i64, attempt: i32) -> Left {
        let path = out.join(format!("{id}.{attempt}.start.json"));
        wait_for(T, "the start record", || async { path.exists() }).await;
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let pids: Vec<i64> = ["detached_pid", "orphan_pid"]
            .iter()
            .map(|k| rec[k].as_i64().expect("pid recorded"))
            .collect();
        Left(pids)
    }

    async fn wait_gone(&self, what: &str) {
        for &pid in &self.0 {
            wait_for(T, &format!("{what}: process {pid} to end"), || async {
                !common::process_runs(pid as i32)
            })
            .await;
        }
    }
}

impl Drop for Left {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A task that starts one process in a session of its own and leaves an orphan behind.
fn escaping(extra: serde_json::Value) -> serde_json::Value {
    let mut p = serde_json::json!({"detached_child": true, "orphan": true});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

#[tokio::test]
async fn what_a_task_started_ends_with_it_timeout_cancel_or_exit() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr_tree",
        &[
            "--exec",
            &test_executor(),
            "--poll-interval",
            "100ms",
            "--kill-grace",
            "1s",
        ],
        &[("EXEC_TEST_OUT", out.path().to_str().unwrap())],
    );
    // Timed out.
    let id = assigned_task(
        &client,
        "jr_tree",
        &escaping(serde_json::json!({"sleep": 60})),
    )
    .await;
    exec_sql(
        &client,
        &format!("UPDATE jr_work_queue SET timeout = '1s', max_attempts = 1 WHERE id = {id}"),
    )
    .await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_tree', 'jr_tree')").await;
    let left = Left::read(out.path(), id, 1).await;
    assert!(
        left.0.iter().all(|p| common::process_runs(*p as i32)),
        "started"
    );
    wait_status(&client, id, "failed").await;
    left.wait_gone("timeout").await;

    // Cancelled.
    let id = assigned_task(
        &client,
        "jr_tree",
        &escaping(serde_json::json!({"sleep": 60})),
    )
    .await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_tree', 'jr_tree')").await;
    let left = Left::read(out.path(), id, 1).await;
    wait_status(&client, id, "in_progress").await;
    db.run(&["cancel", &id.to_string()]).ok();
    wait_status(&client, id, "cancelled").await;
    left.wait_gone("cancel").await;

    // Exited by itself, successfully.
    let id = assigned_task(&client, "jr_tree", &escaping(serde_json::json!({}))).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_tree', 'jr_tree')").await;
    let left = Left::read(out.path(), id, 1).await;
    wait_status(&client, id, "completed").await;
    left.wait_gone("exit").await;
}

#[tokio::test]
async fn a_worker_killed_outside_systemd_leaves_nothing_running_once_restarted() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let args = ["--exec", &test_executor(), "--poll-interval", "100ms"];
    let env = [("EXEC_TEST_OUT", out.path().to_str().unwrap())];
    let first = WorkerProc::start(&db.url, "jr_k9", &args, &env);
    let payload = escaping(serde_json::json!({"sleep_attempt": {"1": 60}}));
    let id = assigned_task(&client, "jr_k9", &payload).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_k9', 'jr_k9')").await;
    let left = Left::read(out.path(), id, 1).await;
    first.signal(nix::sys::signal::Signal::SIGKILL);
    drop(first);
    assert!(
        left.0.iter().all(|p| common::process_runs(*p as i32)),
        "without systemd, nothing ends them at once"
    );
    // The next instance takes the name over and ends what its predecessor's task left.
    let second = WorkerProc::start(&db.url, "jr_k9", &args, &env);
    left.wait_gone("restart").await;
    second
        .wait_log(
            T,
            "ended processes the previous instance's tasks left running",
        )
        .await;
    // The task itself runs again, and its second attempt's processes end with it.
    let _assigner = common::FakeAssigner::start(&db.url, "jr_k9");
    let again = Left::read(out.path(), id, 2).await;
    wait_status(&client, id, "completed").await;
    again.wait_gone("second attempt").await;
}

#[tokio::test]
async fn workers_started_together_with_one_new_name_leave_exactly_one_ready() {
    let db = TestDb::new().await;
    let mut gate = db.client().await;
    // Hold the registry still, so that all five reach registration before any finishes.
    let txn = gate.transaction().await.unwrap();
    txn.batch_execute("LOCK TABLE jr_status IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let args = ["--exec", "noop", "--heartbeat-interval", "200ms"];
    let mut procs: Vec<WorkerProc> = (0..5)
        .map(|_| WorkerProc::start(&db.url, "jr_race", &args, &[]))
        .collect();
    let client = db.client().await;
    wait_for(T, "five registrations waiting", || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = 'jr-queue-worker' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 5
    })
    .await;
    txn.commit().await.unwrap();
    // The race is decided before READY: the losers exit, refused, without ever being ready.
    let deadline = std::time::Instant::now() + T;
    while running(&mut procs) > 1 {
        let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
        assert!(
            std::time::Instant::now() < deadline,
            "four of five should have been refused: {logs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The winner may still be in its first round when the last loser has exited.
    wait_for(T, "the winner to be ready", || async {
        procs.iter().any(|p| p.log().contains("worker ready"))
    })
    .await;
    let ready: Vec<&WorkerProc> = procs
        .iter()
        .filter(|p| p.log().contains("worker ready"))
        .collect();
    assert_eq!(ready.len(), 1, "exactly one is ready");
    for p in procs
        .iter_mut()
        .filter(|p| !p.log().contains("worker ready"))
    {
        assert_eq!(p.child.try_wait().unwrap().unwrap().code(), Some(1));
        assert!(p.log().contains("is held by a live process"), "{}", p.log());
    }
    // And the one that won keeps its name past its heartbeats.
    wait_for(T, "a few heartbeats", || async {
        client
            .query_one(
                "SELECT last_seen > started_at + interval '600 ms' FROM jr_status \
                 WHERE jr_name = 'jr_race'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    assert_eq!(running(&mut procs), 1);
}

/// How many of `procs` still run.
fn running(procs: &mut [WorkerProc]) -> usize {
    let mut n = 0;
    for p in procs.iter_mut() {
        if p.child.try_wait().unwrap().is_none() {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_title_too_long_for_an_environment_still_runs() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr_title",
        &["--exec", &test_executor(), "--poll-interval", "100ms"],
        &[("EXEC_TEST_OUT", out.path().to_str().unwrap())],
    );
    // 200 KiB: more than the kernel lets one environment string be (128 KiB).
    let title = "é".repeat(100 * 1024);
    let id: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr) \
             VALUES ($1, 'assigned', 'jr_title') RETURNING id",
            &[&title],
        )
        .await
        .unwrap()
        .get(0);
    exec_sql(
        &client,
        "SELECT pg_notify('jrq_worker:jr_title', 'jr_title')",
    )
    .await;
    wait_status(&client, id, "completed").await;
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join(format!("{id}.1.start.json"))).unwrap(),
    )
    .unwrap();
    let seen = rec["env"]["JR_TASK_TITLE"].as_str().unwrap();
    assert!(
        seen.len() <= 4096 && title.starts_with(seen),
        "{} bytes",
        seen.len()
    );
}

/// Starts a long task on a new worker named `name`, asks `jrq cancel` for it while the
/// worker is frozen (so it cannot act on the request), then kills the worker.
async fn cancel_then_kill(db: &TestDb, client: &Client, name: &str) -> i64 {
    let w = WorkerProc::start(
        &db.url,
        name,
        &["--exec", "sleep:60s", "--poll-interval", "100ms"],
        &[],
    );
    let id = assigned_task(client, name, &serde_json::json!({})).await;
    exec_sql(
        client,
        &format!("SELECT pg_notify('jrq_worker:{name}', '{name}')"),
    )
    .await;
    wait_status(client, id, "in_progress").await;
    w.signal(nix::sys::signal::Signal::SIGSTOP);
    let out = db.run(&["cancel", &id.to_string()]);
    assert!(out.ok().contains("asked to end it"), "{out:?}");
    w.signal(nix::sys::signal::Signal::SIGKILL);
    drop(w);
    assert_eq!(status_of(client, id).await, "in_progress");
    id
}

#[tokio::test]
async fn a_cancel_request_wins_over_the_rescue_of_a_dead_workers_task() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // The worker restarts: it puts back its predecessor's task — cancelled, not pending.
    let id = cancel_then_kill(&db, &client, "jr_cx").await;
    let again = WorkerProc::start(&db.url, "jr_cx", &["--exec", "noop"], &[]);
    again.wait_log(T, "worker ready").await;
    assert_eq!(status_of(&client, id).await, "cancelled");
    let attempts: i32 = client
        .query_one("SELECT attempts FROM jr_work_queue WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "it never ran again");
    assert!(text_of(&client, id, "error")
        .await
        .contains("a cancel was requested"));

    // The health monitor finds the task stuck: cancelled too.
    let id = cancel_then_kill(&db, &client, "jr_cy").await;
    exec_sql(
        &client,
        "UPDATE jr_status SET last_seen = now() - interval '1 hour' WHERE jr_name = 'jr_cy'; \
         UPDATE jr_work_queue SET started_at = now() - interval '1 hour' WHERE status = 'in_progress'",
    )
    .await;
    let mut monitor = common::bin("jr-health-monitor");
    monitor
        .env("DATABASE_URL", &db.url)
        .args(["--manager", "none", "--stuck-after", "1m"]);
    let out = common::Run::from(monitor.output().unwrap());
    assert!(out.code.is_some(), "{out:?}");
    assert_eq!(status_of(&client, id).await, "cancelled", "{out:?}");
}

#[tokio::test]
async fn a_batch_reports_each_line_the_database_would_refuse() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.jsonl");
    let big = format!(
        r#"{{"title":"big","payload":{{"x":"{}"}}}}"#,
        "y".repeat(2000)
    );
    let lines: Vec<Vec<u8>> = vec![
        br#"{"title":"good one"}"#.to_vec(),
        br#"{"title":"x","timeout":1e300}"#.to_vec(),
        br#"{"title":"nul \u0000 in title"}"#.to_vec(),
        br#"{"title":"x","payload":{"k":"nul \u0000"}}"#.to_vec(),
        br#"{"title":"x","timeout":0.0001}"#.to_vec(),
        br#"{"title":"x","delay":1e15}"#.to_vec(),
        format!(r#"{{"title":"x","unique_key":"{}"}}"#, "k".repeat(3000)).into_bytes(),
        b"{\"title\":\"latin-1 \xe9\"}".to_vec(),
        big.into_bytes(),
        br#"{"title":"good two"}"#.to_vec(),
    ];
    std::fs::write(&path, lines.join(&b'\n')).unwrap();
    let before = db.fingerprint().await;
    let args = [
        "enqueue",
        "--batch",
        common::s(&path),
        "--max-payload",
        "1KiB",
    ];
    let out = db.run(&args);
    assert_eq!(out.code, Some(1), "{out:#?}");
    for expected in [
        "line 2: timeout 1e300 is too long to be a duration",
        "line 3: title contains a NUL character",
        "line 4: payload contains a NUL character",
        "line 5: timeout 100us is out of range: give 1ms to 365d",
        "line 6: delay",
        "line 7: unique_key is 3000 bytes long",
        "line 8: not UTF-8 text",
        "line 9: payload is 2008 bytes of JSON: the limit is 1024",
        "8 of 10 lines rejected, nothing added",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?}: {out:#?}"
        );
    }
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
    assert_eq!(db.fingerprint().await, before, "nothing changed");
    let mut skip = args.to_vec();
    skip.push("--skip-invalid");
    let out = db.run(&skip);
    assert!(
        out.ok()
            .contains("added 2 task(s); skipped 8 rejected line(s)"),
        "{out:#?}"
    );
    // A single enqueue says the same in one line, exit 2.
    db.run(&["enqueue", "--title", "t", "--timeout", "400d"])
        .fails(2, "is out of range: give 1ms to 365d");
    db.run(&["enqueue", "--title", "t", "--payload", r#"{"a":"\u0000"}"#])
        .fails(2, "payload contains a NUL character");
}

#[tokio::test]
async fn values_that_would_break_a_daemon_cannot_be_inserted_with_psql() {
    let db = TestDb::new().await;
    let client = db.client().await;
    for (sql, constraint) in [
        (
            "INSERT INTO jr_work_queue (title, timeout) VALUES ('t', interval '1000000 years')",
            "jr_work_queue_timeout_check",
        ),
        (
            "INSERT INTO jr_work_queue (title, run_after) VALUES ('t', 'infinity')",
            "jr_work_queue_times_check",
        ),
        (
            "INSERT INTO jr_work_queue (title, created_at) VALUES ('t', '-infinity')",
            "jr_work_queue_times_check",
        ),
        (
            "INSERT INTO jr_status (jr_name, capacity) VALUES ('w', 2147483647)",
            "jr_status_capacity_check",
        ),
        (
            "INSERT INTO jr_status (jr_name, last_seen) VALUES ('w', 'infinity')",
            "jr_status_times_check",
        ),
        // Finite but beyond what date arithmetic and programs can take.
        (
            "INSERT INTO jr_work_queue (title, started_at) VALUES ('t', '294276-12-31 23:59:00+00')",
            "jr_work_queue_times_range_check",
        ),
        (
            "INSERT INTO jr_status (jr_name, last_failure_at) VALUES ('w', '294276-12-31+00')",
            "jr_status_times_range_check",
        ),
        (
            "INSERT INTO jr_runs (created_at) VALUES ('200000-01-01+00')",
            "jr_runs_times_range_check",
        ),
        // Counters at their limit: the next increment would fail every outcome write.
        (
            "INSERT INTO jr_status (jr_name, tasks_completed) VALUES ('w', 9223372036854775807)",
            "jr_status_counters_check",
        ),
        (
            "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, max_attempts) \
             VALUES ('t', 'assigned', 'w', 2147483647, 2147483647)",
            "jr_work_queue_max_attempts_check",
        ),
        (
            "INSERT INTO jr_work_queue (title, attempts, max_attempts) VALUES ('t', 6, 3)",
            "jr_work_queue_attempts_check",
        ),
        (
            "INSERT INTO jr_status (jr_name, providers) VALUES ('w', '{claude,NULL}')",
            "jr_status_providers_check",
        ),
        (
            "INSERT INTO jr_status (jr_name, host) VALUES ('w', E'h\\nALERT: fake')",
            "jr_status_host_check",
        ),
    ] {
        let err = client.batch_execute(sql).await.unwrap_err();
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db_err.constraint(), Some(constraint), "{sql}");
    }
    // What is left is what every program can read: the monitor's round and the lists.
    exec_sql(
        &client,
        "INSERT INTO jr_work_queue (title, timeout, status, assigned_jr, started_at, attempts) \
         VALUES ('t', interval '365 days', 'in_progress', 'w', now(), 1)",
    )
    .await;
    let mut monitor = common::bin("jr-health-monitor");
    monitor
        .env("DATABASE_URL", &db.url)
        .args(["--manager", "none"]);
    let out = common::Run::from(monitor.output().unwrap());
    assert!(matches!(out.code, Some(0) | Some(3)), "{out:#?}");
    db.run(&["tasks"]).ok();
    let id: i64 = client
        .query_one("SELECT max(id) FROM jr_work_queue", &[])
        .await
        .unwrap()
        .get(0);
    db.run(&["show", &id.to_string()]).ok();
}

#[tokio::test]
async fn control_characters_reach_people_escaped_and_scripts_exact() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let title = "pwn\x1b]0;owned\x07\x1b[2J\rhidden";
    let id: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, error) VALUES ($1, $1) RETURNING id",
            &[&title],
        )
        .await
        .unwrap()
        .get(0);
    let id = id.to_string();
    for args in [&["tasks"][..], &["show", &id]] {
        let out = db.run(args);
        let text = out.ok();
        assert!(
            !text.contains('\x1b') && !text.contains('\r') && !text.contains('\x07'),
            "{args:?}: {text:?}"
        );
        assert!(text.contains("pwn\\e]0;owned\\x07\\e[2J"), "{text}");
    }
    assert!(db.run(&["show", &id]).ok().contains("\\rhidden"));
    // A row of the timeline stays one line; text that reorders the screen is escaped.
    client
        .execute(
            "INSERT INTO jr_task_events (task_id, actor, action, details) \
             VALUES ($1::text::int8, E'forged\\nALERT: x', 'note', E'abc\\u202efed')",
            &[&id],
        )
        .await
        .unwrap();
    let text = db.run(&["show", &id]).ok().to_string();
    assert!(!text.lines().any(|l| l.starts_with("ALERT")), "{text}");
    assert!(
        text.contains("forged\\nALERT: x") && text.contains("abc\\u{202e}fed"),
        "{text}"
    );
    let j = db.run(&["show", &id, "--json"]).json();
    assert_eq!(j["task"]["title"], title, "JSON is exact");
}

#[tokio::test]
async fn lists_leave_payloads_in_the_table_and_a_closed_stdout_ends_quietly() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec_sql(
        &client,
        "INSERT INTO jr_work_queue (title, payload) \
         SELECT 't' || g, jsonb_build_object('blob', repeat('x', 100)) \
         FROM generate_series(1, 2000) g",
    )
    .await;
    let rows = db.run(&["tasks", "--json", "--limit", "1"]).json();
    let row = rows[0].as_object().unwrap();
    assert!(
        !row.contains_key("payload") && !row.contains_key("result"),
        "a list carries no payload or result: {row:?}"
    );
    // The reader goes away before jrq writes (`jrq tasks | head` after head is done).
    for args in [
        &["tasks", "--limit", "2000"][..],
        &["workers", "--json"],
        &["show", "1"],
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = db
            .jrq()
            .args(args)
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn the_monitors_textfile_cannot_be_turned_into_an_overwrite_by_a_planted_link() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let prom = dir.path().join("jrq.prom");
    // The monitor stops before it starts, so that its pid is known: a planted link with
    // the temporary name the monitor would have used points at the victim.
    let script = format!(
        "kill -STOP $$; exec {} --manager none --textfile {}",
        common::bin_path("jr-health-monitor"),
        prom.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for(T, "the monitor to stop itself", || async {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s[s.rfind(')').unwrap() + 2..].starts_with('T'))
    })
    .await;
    for name in [
        format!(".jrq.prom.tmp.{pid}"),
        format!(".jrq.prom.{pid}.tmp"),
    ] {
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(matches!(status.code(), Some(0) | Some(3)), "{status:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("jrq_tasks"), "{text}");
    assert!(
        !std::fs::symlink_metadata(&prom)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the report is a file of its own"
    );
}

#[test]
fn every_duration_and_count_option_outside_its_range_is_refused_at_start() {
    // No database is needed to refuse them: the address points nowhere.
    let nowhere = "host=/nonexistent port=1 dbname=x";
    for (binary, args, needle) in [
        (
            "jr-queue-worker",
            &[
                "--name",
                "w",
                "--exec",
                "noop",
                "--retry-base",
                "1000000000y",
            ][..],
            "'1000000000y' is out of range: give 0s to 1d",
        ),
        (
            "jr-queue-worker",
            &["--name", "w", "--exec", "noop", "--prefetch", "4294967295"],
            "4294967295 is out of range: give auto, or 0 to 10000",
        ),
        (
            "jr-queue-worker",
            &["--name", "w", "--exec", "noop", "--capacity", "0"],
            "0 is out of range: give 1 to 10000",
        ),
        (
            "jr-queue-worker",
            &[
                "--name",
                "w",
                "--exec",
                "noop",
                "--heartbeat-interval",
                "1ms",
            ],
            "out of range: give 100ms to 5m",
        ),
        (
            "jr-queue-worker",
            &["--name", "w", "--exec", "noop", "--output-limit", "1GiB"],
            "out of range",
        ),
        (
            "jr-auto-assigner",
            &["--batch-size", "99999999999"],
            "out of range: give 1 to 10000",
        ),
        (
            "jr-auto-assigner",
            &["--circuit-max-cooldown", "100y"],
            "out of range: give 0s to 7d",
        ),
        (
            "jr-health-monitor",
            &["--watch", "2d"],
            "out of range: give 1s to 1d",
        ),
        (
            "jr-health-monitor",
            &["--max-load-per-core", "NaN"],
            "out of range: give a number of 0 or more",
        ),
        (
            "jr-stale-cleanup",
            &["--grace", "2h"],
            "out of range: give 0s to 1h",
        ),
        (
            "jrq",
            &["enqueue", "--title", "t", "--timeout", "400d"],
            "out of range: give 1ms to 365d",
        ),
        (
            "jrq",
            &["enqueue", "--title", "t", "--max-attempts", "5000"],
            "out of range: give 1 to 1000",
        ),
        ("jrq", &["prune", "--older-than", "99999d"], "out of range"),
    ] {
        let out = common::Run::from(
            common::bin(binary)
                .env("DATABASE_URL", nowhere)
                .args(args)
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, Some(2), "{binary} {args:?}: {out:#?}");
        assert!(
            out.stderr.contains(needle) && !out.stderr.contains("panicked"),
            "{binary} {args:?}: {out:#?}"
        );
    }
}

#[tokio::test]
async fn stored_json_serde_cannot_read_and_used_up_attempts_fail_their_task_not_the_worker() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let w = WorkerProc::start(
        &db.url,
        "jr_json",
        &["--exec", &test_executor(), "--poll-interval", "100ms"],
        &[],
    );
    w.wait_log(T, "worker ready").await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let mut bad = vec![];
    for payload in [r#"{"n": 1e400}"#, deep.as_str()] {
        let id: i64 = client
            .query_one(
                "INSERT INTO jr_work_queue (title, payload, status, assigned_jr) \
                 VALUES ('t', $1::text::jsonb, 'assigned', 'jr_json') RETURNING id",
                &[&payload],
            )
            .await
            .unwrap()
            .get(0);
        bad.push(id);
    }
    // Assigned with its attempts used up (a psql write can leave one).
    let used_up: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, max_attempts) \
             VALUES ('t', 'assigned', 'jr_json', 3, 3) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_json', 'jr_json')").await;
    for id in &bad {
        wait_status(&client, *id, "failed").await;
        let error = text_of(&client, *id, "error").await;
        assert!(error.contains("cannot be read as JSON"), "{error}");
    }
    wait_status(&client, used_up, "failed").await;
    assert!(text_of(&client, used_up, "error")
        .await
        .contains("no attempts left"));
    let ok = assigned_task(&client, "jr_json", &serde_json::json!({})).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_json', 'jr_json')").await;
    wait_status(&client, ok, "completed").await;
    assert!(!w.log().contains("panicked"), "{}", w.log());
    // jrq shows such a task too: its payload as the text it is.
    let out = db.run(&["show", &bad[0].to_string()]);
    assert!(
        out.ok().contains("payload:      \"{\\\"n\\\": 1000000"),
        "{out:?}"
    );
    db.run(&["show", &bad[1].to_string(), "--json"]).json();
}

#[tokio::test]
async fn a_title_cannot_add_lines_to_the_workers_systemd_notifications() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr_notify",
        &["--exec", "sleep:5s", "--heartbeat-interval", "100ms"],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    next_datagram(&sock, T, |m| m.contains("READY=1")).await;
    let title = "pwn\nWATCHDOG=trigger\nWATCHDOG_USEC=1\nSTOPPING=1";
    client
        .execute(
            "INSERT INTO jr_work_queue (title, status, assigned_jr) VALUES ($1, 'assigned', 'jr_notify')",
            &[&title],
        )
        .await
        .unwrap();
    exec_sql(
        &client,
        "SELECT pg_notify('jrq_worker:jr_notify', 'jr_notify')",
    )
    .await;
    let status = next_datagram(&sock, T, |m| m.contains("running 1/1")).await;
    assert!(
        status
            .lines()
            .all(|l| l.starts_with("STATUS=") || l == "WATCHDOG=1"),
        "every line is one of the worker's own: {status:?}"
    );
    assert!(status.contains("pwn\\nWATCHDOG=trigger"), "{status:?}");
}

#[tokio::test]
async fn a_worker_that_cannot_start_its_executor_gives_tasks_back_uncharged() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // The program exists when the worker starts (a missing one is refused: exit 2) ...
    let out = common::Run::from(
        common::bin("jr-queue-worker")
            .env("DATABASE_URL", &db.url)
            .args(["--name", "w", "--exec", "/nonexistent/prog"])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("is not an executable file"), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("prog");
    std::fs::copy("/bin/true", &prog).unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr_gone",
        &["--exec", prog.to_str().unwrap(), "--poll-interval", "100ms"],
        &[],
    );
    // ... and then goes away.
    wait_for(T, "the worker to register", || async {
        client
            .query_one(
                "SELECT count(*) FROM jr_status WHERE jr_name = 'jr_gone'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    std::fs::remove_file(&prog).unwrap();
    let id = assigned_task(&client, "jr_gone", &serde_json::json!({})).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_gone', 'jr_gone')").await;
    wait_status(&client, id, "pending").await;
    let row = client
        .query_one(
            "SELECT q.attempts, q.error, w.consecutive_failures FROM jr_work_queue q, jr_status w \
             WHERE q.id = $1 AND w.jr_name = 'jr_gone'",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0, "the attempt is not charged");
    let error: String = row.get(1);
    assert!(
        error.contains("this worker cannot start its executor"),
        "{error}"
    );
    assert_eq!(
        row.get::<_, i32>(2),
        1,
        "the worker's circuit breaker counts it"
    );
}

#[tokio::test]
async fn sighup_drains_like_sigterm_and_a_closed_log_stops_nothing() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // The worker's stderr is a pipe nobody reads any more.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut child = common::bin("jr-queue-worker")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .args([
            "--name",
            "jr_hup",
            "--exec",
            "sleep:60s",
            "--poll-interval",
            "100ms",
        ])
        .args(["--log-format", "text", "--drain-timeout", "0s"])
        .stderr(std::process::Stdio::from(write))
        .spawn()
        .unwrap();
    let id = assigned_task(&client, "jr_hup", &serde_json::json!({})).await;
    exec_sql(&client, "SELECT pg_notify('jrq_worker:jr_hup', 'jr_hup')").await;
    wait_status(&client, id, "in_progress").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_status(&client, id, "pending").await;
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        status.code(),
        Some(0),
        "drained and exited on SIGHUP: {status:?}"
    );
    let attempts: i32 = client
        .query_one("SELECT attempts FROM jr_work_queue WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 0, "given back, not charged");
}

#[tokio::test]
async fn a_connection_the_server_never_answers_times_out() {
    // A peer that accepts and then says nothing (a hung server, a broken proxy).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url =
        format!("host=127.0.0.1 port={port} user=x dbname=x connect_timeout=1 sslmode=disable");
    let mut child = common::bin("jrq")
        .env("DATABASE_URL", &url)
        .arg("status")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _held = listener.accept().unwrap();
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "jrq waits for ever");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("did not complete the connection"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_database_not_in_utf8_is_refused_by_migrate() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    let name = format!("{}_ascii", db.name);
    let quoted = jrq::db::quote_ident(&name).unwrap();
    exec_sql(
        &client,
        &format!("CREATE DATABASE {quoted} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"),
    )
    .await;
    let url = db.url.replace(&db.name, &name);
    let out = common::Run::from(
        common::bin("jrq")
            .env("DATABASE_URL", &url)
            .arg("migrate")
            .output()
            .unwrap(),
    );
    exec_sql(&client, &format!("DROP DATABASE {quoted}")).await;
    out.fails(1, "uses the encoding SQL_ASCII: jrq needs UTF8");
}

#[tokio::test]
async fn a_registry_row_with_a_heartbeat_in_the_future_is_not_alive() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec_sql(
        &client,
        "INSERT INTO jr_status (jr_name, host, is_online, status, last_seen, capacity) \
         VALUES ('ghost', 'elsewhere', true, 'idle', now() + interval '10 years', 5); \
         INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at) \
         VALUES ('t', 'assigned', 'ghost', now())",
    )
    .await;
    let workers = db.run(&["workers", "--json"]).json();
    assert_eq!(workers[0]["alive"], false, "{workers}");
    let mut monitor = common::bin("jr-health-monitor");
    monitor
        .env("DATABASE_URL", &db.url)
        .args(["--manager", "none"]);
    let _ = common::Run::from(monitor.output().unwrap());
    let row = client
        .query_one(
            "SELECT w.is_online, q.status FROM jr_status w, jr_work_queue q WHERE w.jr_name = 'ghost'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0), "marked offline");
    assert_eq!(row.get::<_, String>(1), "pending", "its task given back");
}

#[test]
fn a_password_on_the_command_line_is_warned_about() {
    let out = common::Run::from(
        common::bin("jrq")
            .args([
                "--database-url",
                "postgres://u:hunter2@/nonexistent-dir-jrq/x",
                "status",
            ])
            .output()
            .unwrap(),
    );
    assert!(
        out.stderr
            .contains("the database password is on the command line"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("hunter2"),
        "never the password itself: {out:?}"
    );
}
