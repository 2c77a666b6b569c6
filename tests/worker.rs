//! jr-queue-worker, run as the real binary against a real PostgreSQL. The assigner has its
//! own issue: here tasks are assigned by psql or by a stand-in (`FakeAssigner`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    assigned_task, exec, next_datagram, status_of, test_executor, wait_for, wait_status,
    FakeAssigner, TestDb, WorkerProc,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

async fn events(client: &Client, id: i64) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT action, actor, details FROM jr_task_events WHERE task_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn actions(ev: &[(String, String, String)]) -> Vec<&str> {
    ev.iter().map(|e| e.0.as_str()).collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn wait_file(path: &Path) {
    wait_for(T, &format!("{}", path.display()), || async {
        path.exists()
    })
    .await;
}

#[tokio::test]
async fn runs_a_psql_task_with_payload_env_and_progress() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let release = out.path().join("release");
    let w = WorkerProc::start(
        &db.url,
        "it_triad_jr",
        &["--exec", &test_executor(), "--poll-interval", "200ms"],
        &[
            ("EXEC_TEST_OUT", out.path().to_str().unwrap()),
            ("PGPASSWORD", "must-not-leak"),
        ],
    );
    // Exactly an operator's psql: an INSERT of a task assigned to the worker.
    let payload = serde_json::json!({
        "stdout": "the result\n", "progress": [42], "wait_file": release.to_str().unwrap()
    })
    .to_string();
    let id: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, payload, status, assigned_jr) \
             VALUES ('Fix login bug', $1::text::jsonb, 'assigned', 'it_triad_jr') RETURNING id",
            &[&payload],
        )
        .await
        .unwrap()
        .get(0);
    wait_for(T, "progress 42", || async {
        client
            .query_one(
                "SELECT progress_percent FROM jr_work_queue WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, i16>(0)
            == 42
    })
    .await;
    std::fs::write(&release, "").unwrap();
    wait_status(&client, id, "completed").await;
    let row = client
        .query_one(
            "SELECT result, progress_percent, attempts, started_at IS NOT NULL, \
                    completed_at IS NOT NULL, error FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "the result\n",
        "progress lines are not in the result"
    );
    assert_eq!(row.get::<_, i16>(1), 100);
    assert_eq!(row.get::<_, i32>(2), 1);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
    assert_eq!(row.get::<_, Option<String>>(5), None);

    let rec = read_json(&out.path().join(format!("{id}.1.start.json")));
    assert_eq!(rec["payload"]["stdout"], "the result\n");
    let env = &rec["env"];
    assert_eq!(env["JR_TASK_ID"], id.to_string());
    assert_eq!(env["JR_TASK_TITLE"], "Fix login bug");
    assert_eq!(env["JR_ATTEMPT"], "1");
    assert_eq!(env["JR_RUN_ID"], "");
    assert_eq!(env["JR_WORKER"], "it_triad_jr");
    let instance: String = client
        .query_one(
            "SELECT instance_id::text FROM jr_status WHERE jr_name = 'it_triad_jr'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(env["JR_WORKER_INSTANCE"], instance);
    // The attempt's deadline: its start plus the task's timeout (30 minutes by default).
    let deadline = chrono::DateTime::parse_from_rfc3339(env["JR_DEADLINE"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let started: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT started_at FROM jr_work_queue WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    let ahead = (deadline - started).num_seconds();
    assert!(
        (1795..=1805).contains(&ahead),
        "JR_DEADLINE {deadline} is {ahead} s after the start"
    );
    assert!(env.get("DATABASE_URL").is_none(), "{env}");
    assert!(env.get("PGPASSWORD").is_none(), "{env}");
    assert_eq!(
        actions(&events(&client, id).await),
        ["started", "completed"]
    );
    drop(w);
}

#[tokio::test]
async fn the_exit_code_contract() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr1",
        &[
            "--exec",
            &test_executor(),
            "--capacity",
            "4",
            "--poll-interval",
            "100ms",
            "--retry-base",
            "300ms",
            "--kill-grace",
            "1s",
        ],
        &[("EXEC_TEST_OUT", out.path().to_str().unwrap())],
    );
    let _a = FakeAssigner::start(&db.url, "jr1");
    let add = |payload: Value, timeout: &'static str, max_attempts: i32| {
        let client = &client;
        async move {
            client
                .query_one(
                    "INSERT INTO jr_work_queue (title, payload, timeout, max_attempts) \
                     VALUES ('t', $1::text::jsonb, $2::text::interval, $3) RETURNING id",
                    &[&payload.to_string(), &timeout, &max_attempts],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let ok = add(serde_json::json!({"stdout": "fine"}), "30m", 3).await;
    let retry = add(
        serde_json::json!({"exit": 75, "stderr": "busy, try later"}),
        "30m",
        3,
    )
    .await;
    let fatal = add(
        serde_json::json!({"exit": 3, "stderr": "bad input"}),
        "30m",
        3,
    )
    .await;
    let slow = add(serde_json::json!({"child": true, "sleep": 60}), "1s", 1).await;

    // Success.
    wait_status(&client, ok, "completed").await;
    // Permanent failure: failed after one attempt, with the program's stderr.
    wait_status(&client, fatal, "failed").await;
    let row = client
        .query_one(
            "SELECT attempts, error FROM jr_work_queue WHERE id = $1",
            &[&fatal],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(
        row.get::<_, String>(1),
        "executor exited with status 3: bad input"
    );

    // Retryable failure: retried with a growing backoff until max_attempts, then failed.
    wait_status(&client, retry, "failed").await;
    let ev = events(&client, retry).await;
    assert_eq!(
        actions(&ev),
        [
            "started",
            "retry_scheduled",
            "started",
            "retry_scheduled",
            "started",
            "failed"
        ]
    );
    let backoffs: Vec<u64> = ev
        .iter()
        .filter(|e| e.0 == "retry_scheduled")
        .map(|e| {
            let ms = e.2.rsplit("next attempt in ").next().unwrap();
            ms.trim_end_matches(" ms)").parse().unwrap()
        })
        .collect();
    assert!((240..=360).contains(&backoffs[0]), "{backoffs:?}");
    assert!((480..=720).contains(&backoffs[1]), "{backoffs:?}");
    let row = client
        .query_one(
            "SELECT attempts, error FROM jr_work_queue WHERE id = $1",
            &[&retry],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    let err: String = row.get(1);
    assert!(
        err.contains("exit 75") && err.contains("busy, try later"),
        "{err}"
    );
    assert!(err.contains("attempt 3 of 3"), "{err}");

    // Timeout: the whole process group is gone, grandchild included.
    wait_status(&client, slow, "failed").await;
    let err: String = client
        .query_one("SELECT error FROM jr_work_queue WHERE id = $1", &[&slow])
        .await
        .unwrap()
        .get(0);
    assert!(err.starts_with("timed out after 1s"), "{err}");
    let rec = read_json(&out.path().join(format!("{slow}.1.start.json")));
    let (pid, child) = (
        rec["pid"].as_i64().unwrap(),
        rec["child_pid"].as_i64().unwrap(),
    );
    wait_for(T, "the executor and its child to be gone", || async {
        !common::process_runs(pid as i32) && !common::process_runs(child as i32)
    })
    .await;

    // Cancel of a running task.
    let long = add(serde_json::json!({"child": true, "sleep": 60}), "30m", 3).await;
    wait_status(&client, long, "in_progress").await;
    let start = out.path().join(format!("{long}.1.start.json"));
    wait_file(&start).await;
    db.run(&["cancel", &long.to_string()]).ok();
    wait_status(&client, long, "cancelled").await;
    let rec = read_json(&start);
    let (pid, child) = (
        rec["pid"].as_i64().unwrap(),
        rec["child_pid"].as_i64().unwrap(),
    );
    wait_for(T, "the cancelled executor to be gone", || async {
        !common::process_runs(pid as i32) && !common::process_runs(child as i32)
    })
    .await;
    assert_eq!(
        actions(&events(&client, long).await),
        ["started", "cancel_requested", "cancelled"]
    );
}

#[tokio::test]
async fn capacity_holds_and_no_task_runs_twice_or_elsewhere() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr) \
           SELECT 'a' || g, 'assigned', 'jr_a' FROM generate_series(1, 20) g; \
         INSERT INTO jr_work_queue (title, status, assigned_jr) \
           SELECT 'b' || g, 'assigned', 'jr_b' FROM generate_series(1, 20) g; \
         INSERT INTO jr_work_queue (title, status, assigned_jr) VALUES ('c', 'assigned', 'jr_c')",
    )
    .await;
    let _a = WorkerProc::start(
        &db.url,
        "jr_a",
        &["--exec", "sleep:30ms", "--capacity", "2"],
        &[],
    );
    let _b = WorkerProc::start(
        &db.url,
        "jr_b",
        &["--exec", "sleep:30ms", "--capacity", "3"],
        &[],
    );
    let max_seen = std::cell::Cell::new([0i64; 2]);
    wait_for(T, "40 tasks completed", || async {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'in_progress' AND assigned_jr = 'jr_a'), \
                        count(*) FILTER (WHERE status = 'in_progress' AND assigned_jr = 'jr_b'), \
                        count(*) FILTER (WHERE status = 'completed') FROM jr_work_queue",
                &[],
            )
            .await
            .unwrap();
        let [a, b] = max_seen.get();
        max_seen.set([a.max(row.get(0)), b.max(row.get(1))]);
        row.get::<_, i64>(2) == 40
    })
    .await;
    let [a, b] = max_seen.get();
    assert!(a <= 2 && b <= 3, "max in progress: {a}, {b}");
    // From the events: at no point did a worker hold more starts than its capacity.
    for (worker, cap) in [("jr_a", 2), ("jr_b", 3)] {
        let rows = client
            .query(
                "SELECT action FROM jr_task_events WHERE worker = $1 ORDER BY id",
                &[&worker],
            )
            .await
            .unwrap();
        let mut load = 0i32;
        for r in rows {
            match r.get::<_, &str>(0) {
                "started" => load += 1,
                "completed" => load -= 1,
                _ => {}
            }
            assert!(load <= cap, "{worker} ran more than {cap} at once");
        }
    }
    // Every task started exactly once, by the worker it was assigned to.
    let bad: i64 = client
        .query_one(
            "SELECT count(*) FROM jr_work_queue q WHERE q.assigned_jr IN ('jr_a', 'jr_b') AND \
               (SELECT count(*) FROM jr_task_events e WHERE e.task_id = q.id \
                  AND e.action = 'started' AND e.worker = q.assigned_jr) <> 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    let c: (String, i64) = client
        .query_one(
            "SELECT status, (SELECT count(*) FROM jr_task_events WHERE task_id = q.id) \
             FROM jr_work_queue q WHERE title = 'c'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        c,
        ("assigned".to_string(), 0),
        "a task of another worker is never touched"
    );
}

#[tokio::test]
async fn kill_9_and_restart_puts_the_task_back_and_it_completes_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--exec",
        &test_executor(),
        "--poll-interval",
        "100ms",
        "--retry-base",
        "100ms",
    ];
    let env = [("EXEC_TEST_OUT", out.path().to_str().unwrap())];
    let mut w1 = WorkerProc::start(&db.url, "jr1", &args, &env);
    let id = assigned_task(&client, "jr1", r#"{"sleep_attempt": {"1": 60}}"#).await;
    wait_status(&client, id, "in_progress").await;
    let start = out.path().join(format!("{id}.1.start.json"));
    wait_file(&start).await;
    let executor_pid = read_json(&start)["pid"].as_i64().unwrap();
    w1.signal(Signal::SIGKILL);
    assert_eq!(w1.wait_exit(T).await, None);
    wait_for(
        T,
        "the orphaned executor to die with its worker",
        || async { !common::process_runs(executor_pid as i32) },
    )
    .await;

    let _w2 = WorkerProc::start(&db.url, "jr1", &args, &env);
    // Put back at once by the new instance, not by a monitor.
    wait_for(T, "the task to be rescued", || async {
        actions(&events(&client, id).await).contains(&"rescued")
    })
    .await;
    assert_eq!(status_of(&client, id).await, "pending");
    let _a = FakeAssigner::start(&db.url, "jr1");
    wait_status(&client, id, "completed").await;
    let ev = events(&client, id).await;
    assert_eq!(actions(&ev), ["started", "rescued", "started", "completed"]);
    assert_eq!(ev[1].1, "jr1");
    assert!(ev[1].2.contains("worker restarted"), "{:?}", ev[1]);
    let row = client
        .query_one(
            "SELECT attempts, result FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert_eq!(row.get::<_, String>(1), "done attempt 2\n");
}

#[tokio::test]
async fn a_second_worker_with_a_live_name_is_refused() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let w1 = WorkerProc::start(&db.url, "jr1", &["--exec", "noop"], &[]);
    w1.wait_log(T, "worker ready").await;
    let before: (i32, uuid::Uuid) = client
        .query_one(
            "SELECT pid, instance_id FROM jr_status WHERE jr_name = 'jr1'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let tasks_before = db.fingerprint().await;
    let out = common::Run::from(
        common::bin("jr-queue-worker")
            .env("DATABASE_URL", &db.url)
            .args(["--name", "jr1", "--exec", "noop"])
            .output()
            .unwrap(),
    );
    let host = jrq::host::hostname();
    out.fails(
        1,
        &format!(
            "worker name 'jr1' is held by a live process: pid {} on host {host}",
            w1.pid()
        ),
    );
    assert!(
        out.stderr
            .contains("systemctl --user stop jr-queue-worker@jr1"),
        "{out:#?}"
    );
    let after: (i32, uuid::Uuid) = client
        .query_one(
            "SELECT pid, instance_id FROM jr_status WHERE jr_name = 'jr1'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(before, after);
    // Only jr_status's heartbeat columns may move meanwhile; the tasks are untouched.
    let strip = |f: String| {
        f.split(';')
            .filter(|p| !p.starts_with("jr_status"))
            .collect::<Vec<_>>()
            .join(";")
    };
    assert_eq!(strip(db.fingerprint().await), strip(tasks_before));

    // A bad name is refused before anything is touched.
    let out = common::Run::from(
        common::bin("jr-queue-worker")
            .env("DATABASE_URL", &db.url)
            .args(["--name", "no/slash", "--exec", "noop"])
            .output()
            .unwrap(),
    );
    out.fails(2, "worker name 'no/slash' contains '/'");
}

#[tokio::test]
async fn a_late_completion_after_losing_the_lease_changes_nothing() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let env = [("EXEC_TEST_OUT", out.path().to_str().unwrap())];
    let args = [
        "--exec",
        &test_executor(),
        "--poll-interval",
        "100ms",
        "--heartbeat-interval",
        "200ms",
    ];
    let w1 = WorkerProc::start(&db.url, "jr1", &args, &env);
    let id = assigned_task(&client, "jr1", r#"{"sleep_attempt": {"1": 1}}"#).await;
    wait_status(&client, id, "in_progress").await;
    wait_file(&out.path().join(format!("{id}.1.start.json"))).await;
    // Freeze the worker; give its task back, as the health monitor does for a silent
    // worker, and let another worker run it to the end.
    w1.signal(Signal::SIGSTOP);
    let rescued = jrq::db::tasks::tasks_rescue_worker(&client, "jr1", "monitor", "silent")
        .await
        .unwrap();
    assert_eq!(rescued.len(), 1);
    let _w2 = WorkerProc::start(&db.url, "jr2", &args, &env);
    let _a = FakeAssigner::start(&db.url, "jr2");
    wait_status(&client, id, "completed").await;
    drop(_a);
    let after_jr2 = db.fingerprint().await;
    // jr1's executor finished meanwhile; let jr1 go on and try to report.
    wait_file(&out.path().join(format!("{id}.1.end"))).await;
    w1.signal(Signal::SIGCONT);
    w1.wait_log(T, "lease lost").await;
    let strip = |f: String| {
        f.split(';')
            .filter(|p| !p.starts_with("jr_status"))
            .collect::<Vec<_>>()
            .join(";")
    };
    assert_eq!(
        strip(db.fingerprint().await),
        strip(after_jr2),
        "the late write changed nothing"
    );
    let row = client
        .query_one(
            "SELECT result, assigned_jr, attempts FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done attempt 2\n");
    assert_eq!(row.get::<_, String>(1), "jr2");
    assert_eq!(row.get::<_, i32>(2), 2);
}

/// A lease the database gives a live worker on an attempt it does not run — the reply to
/// its claim was lost in a crash, or a failover to an asynchronous standby brought back a
/// state before its outcome — is given back at its next heartbeat, not left in_progress
/// until the task's timeout.
#[tokio::test]
async fn a_lease_on_an_attempt_the_worker_does_not_run_is_given_back() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let args = [
        "--exec",
        &test_executor(),
        "--poll-interval",
        "100ms",
        "--heartbeat-interval",
        "200ms",
    ];
    let w = WorkerProc::start(&db.url, "jr_ghost", &args, &[]);
    w.wait_log(T, "worker ready").await;
    // What a committed claim whose answer never came leaves behind: in_progress under this
    // very instance, attempt 1, and nothing running it.
    let id: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, payload, status, assigned_jr, assigned_at, \
             started_at, attempts, lease_instance, timeout) \
             SELECT 'ghost', '{}', 'in_progress', 'jr_ghost', now(), now(), 1, instance_id, \
             interval '1 hour' FROM jr_status WHERE jr_name = 'jr_ghost' RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_for(T, "the unrun lease to be given back", || async {
        status_of(&client, id).await != "in_progress"
    })
    .await;
    let row = client
        .query_one(
            "SELECT status, attempts, assigned_jr FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0, "the attempt is not charged");
    assert_eq!(row.get::<_, Option<String>>(2), None);
    let ev = events(&client, id).await;
    let last = ev.last().unwrap();
    assert_eq!((last.0.as_str(), last.1.as_str()), ("released", "jr_ghost"));
    assert!(last.2.contains("does not run the attempt"), "{last:?}");
    w.wait_log(T, "given back").await;
    // And it runs: assigned again, it completes on this worker.
    let _a = FakeAssigner::start(&db.url, "jr_ghost");
    wait_status(&client, id, "completed").await;
}

/// After a failover to a standby that had not received a claim, the task is `assigned` to
/// the worker again while the worker runs it; the worker claims it anew (the same attempt,
/// the same instance) and must not start it a second time: the running attempt goes on
/// under the renewed lease and its outcome is written.
#[tokio::test]
async fn a_claim_made_again_while_the_attempt_runs_does_not_start_it_twice() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let env = [("EXEC_TEST_OUT", out.path().to_str().unwrap())];
    let args = [
        "--exec",
        &test_executor(),
        "--capacity",
        "2",
        "--poll-interval",
        "100ms",
        "--heartbeat-interval",
        "5s",
    ];
    // No heartbeat between the lost claim and the new one, as after a reconnect (the
    // worker claims first); a heartbeat first would stop the attempt as unheld instead.
    let w = WorkerProc::start(&db.url, "jr_again", &args, &env);
    let id = assigned_task(&client, "jr_again", r#"{"sleep": 2}"#).await;
    wait_file(&out.path().join(format!("{id}.1.start.json"))).await;
    // The database forgets the claim.
    exec(
        &client,
        &format!(
            "UPDATE jr_work_queue SET status = 'assigned', attempts = 0, lease_instance = NULL, \
             started_at = NULL WHERE id = {id}; SELECT pg_notify('jrq_worker:jr_again', 'jr_again')"
        ),
    )
    .await;
    w.wait_log(T, "claimed again while it runs here").await;
    wait_status(&client, id, "completed").await;
    let row = client
        .query_one(
            "SELECT attempts, result FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "done attempt 1\n");
    let started = w
        .log()
        .lines()
        .filter(|l| l.contains("task started") && l.contains(&format!("task_id={id}")))
        .count();
    assert_eq!(started, 1, "one execution:\n{}", w.log());
}

#[tokio::test]
async fn sigterm_drains_short_tasks_and_gives_back_long_ones() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let mut w = WorkerProc::start(
        &db.url,
        "jr1",
        &[
            "--exec",
            &test_executor(),
            "--capacity",
            "2",
            "--drain-timeout",
            "2s",
            "--kill-grace",
            "1s",
        ],
        &[("EXEC_TEST_OUT", out.path().to_str().unwrap())],
    );
    let release = out.path().join("release-short");
    let short = assigned_task(
        &client,
        "jr1",
        &serde_json::json!({"wait_file": release.to_str().unwrap()}).to_string(),
    )
    .await;
    let long = assigned_task(&client, "jr1", r#"{"sleep": 60}"#).await;
    let queued = assigned_task(&client, "jr1", "{}").await;
    wait_status(&client, short, "in_progress").await;
    wait_status(&client, long, "in_progress").await;
    w.signal(Signal::SIGTERM);
    w.wait_log(T, "shutting down").await;
    std::fs::write(&release, "").unwrap();
    assert_eq!(w.wait_exit(Duration::from_secs(10)).await, Some(0));
    assert_eq!(status_of(&client, short).await, "completed");
    let row = client
        .query_one(
            "SELECT status, attempts, assigned_jr FROM jr_work_queue WHERE id = $1",
            &[&long],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0, "the attempt is not charged");
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(
        actions(&events(&client, long).await),
        ["started", "released"]
    );
    // A task assigned but not started goes back too, to be routed elsewhere.
    assert_eq!(status_of(&client, queued).await, "pending");
    let st: (bool, String) = client
        .query_one(
            "SELECT is_online, status FROM jr_status WHERE jr_name = 'jr1'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(st, (false, "offline".to_string()));
}

#[tokio::test]
async fn a_run_scoped_worker_exits_when_its_run_ends_and_max_loops_bounds_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let run = db.run(&["runs", "create"]).ok().trim().to_string();
    let mut w = WorkerProc::start(
        &db.url,
        "jr_run",
        &["--exec", "noop", "--poll-interval", "200ms"],
        &[("RUN_FILTER_ID", &run)],
    );
    let id: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, run_id) \
             VALUES ('in run', 'assigned', 'jr_run', $1::text::uuid) RETURNING id",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    wait_status(&client, id, "completed").await;
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "still serving an active run"
    );
    exec(
        &client,
        &format!("UPDATE jr_runs SET status = 'completed' WHERE id = '{run}'"),
    )
    .await;
    assert_eq!(w.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert!(w.log().contains("the run is over"), "{}", w.log());

    // Already over at start: exits 0 at once, registering nothing.
    let mut w = WorkerProc::start(&db.url, "jr_late", &["--exec", "noop", "--run", &run], &[]);
    assert_eq!(w.wait_exit(T).await, Some(0));
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM jr_status WHERE jr_name = 'jr_late'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // WORKER_MAX_LOOPS bounds an idle worker.
    let mut w = WorkerProc::start(
        &db.url,
        "jr_loops",
        &["--exec", "noop", "--poll-interval", "50ms"],
        &[("WORKER_MAX_LOOPS", "3")],
    );
    assert_eq!(w.wait_exit(T).await, Some(0));
    assert!(w.log().contains("max loops reached"), "{}", w.log());
    // An unknown run is refused.
    let out = common::Run::from(
        common::bin("jr-queue-worker")
            .env("DATABASE_URL", &db.url)
            .args([
                "--name",
                "x",
                "--exec",
                "noop",
                "--run",
                "00000000-0000-4000-8000-000000000000",
            ])
            .output()
            .unwrap(),
    );
    out.fails(1, "there is no run 00000000-0000-4000-8000-000000000000");
}

#[tokio::test]
async fn systemd_notifications_and_the_watchdog_follow_the_database() {
    let cluster = common::PrivateCluster::start();
    let client = cluster.migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut w = WorkerProc::start(
        &cluster.url,
        "jr_sd",
        &[
            "--exec",
            "sleep:50ms",
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
    let first = next_datagram(&sock, T, |_| true).await;
    assert!(first.contains("READY=1"), "READY comes first: {first:?}");
    assert!(first.contains("STATUS=idle 0/1"), "{first:?}");
    next_datagram(&sock, T, |m| m.contains("WATCHDOG=1")).await;
    // A task shows in STATUS.
    assigned_task(&client, "jr_sd", "{}").await;
    exec(&client, "SELECT pg_notify('jrq_worker:jr_sd', 'jr_sd')").await;
    next_datagram(&sock, T, |m| m.contains("STATUS=running 1/1: #")).await;

    // The database goes away: pings go on for the grace, then stop.
    cluster.stop_server();
    let stopped = tokio::time::Instant::now();
    let mut last_ping = stopped;
    let mut buf = vec![0u8; 4096];
    // Watch for 3 s (the grace is 1 s): the last ping must come within the grace.
    while let Ok(Ok(n)) =
        tokio::time::timeout_at(stopped + Duration::from_secs(3), sock.recv(&mut buf)).await
    {
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            last_ping = tokio::time::Instant::now();
        }
    }
    let silent_after = last_ping - stopped;
    assert!(
        silent_after < Duration::from_millis(1500),
        "watchdog pings went on {silent_after:?} after the database stopped"
    );
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "the worker keeps running"
    );

    // The database returns: the worker reconnects and pings again.
    cluster.start_server();
    next_datagram(&sock, T, |m| m.contains("WATCHDOG=1")).await;
    w.signal(Signal::SIGTERM);
    next_datagram(&sock, T, |m| m.contains("STOPPING=1")).await;
    assert_eq!(w.wait_exit(T).await, Some(0));
}

#[tokio::test]
async fn a_postgres_restart_under_a_busy_worker_loses_nothing() {
    let cluster = common::PrivateCluster::start();
    let client = cluster.migrated().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) SELECT 't' || g FROM generate_series(1, 300) g",
    )
    .await;
    let w = WorkerProc::start(
        &cluster.url,
        "jr_busy",
        &[
            "--exec",
            "sleep:20ms",
            "--capacity",
            "4",
            "--poll-interval",
            "100ms",
        ],
        &[],
    );
    let _a = FakeAssigner::start(&cluster.url, "jr_busy");
    wait_for(T, "some progress", || async {
        client
            .query_one(
                "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            >= 20
    })
    .await;
    cluster.stop_server();
    cluster.start_server();
    let client = cluster.migrated().await;
    wait_for(Duration::from_secs(60), "all 300 completed", || async {
        client
            .query_one(
                "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 300
    })
    .await;
    w.wait_log(T, "database connection restored").await;
    // Each completed exactly once.
    let twice: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT task_id FROM jr_task_events WHERE action = 'completed' \
             GROUP BY task_id HAVING count(*) <> 1) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0);
}

#[tokio::test]
async fn sigterm_with_the_database_gone_still_exits() {
    let cluster = common::PrivateCluster::start();
    let client = cluster.migrated().await;
    let mut w = WorkerProc::start(
        &cluster.url,
        "jr_lonely",
        &["--exec", "sleep:300ms", "--drain-timeout", "2s"],
        &[],
    );
    let id = assigned_task(&client, "jr_lonely", "{}").await;
    wait_status(&client, id, "in_progress").await;
    // The database goes away while the task runs; the task then finishes and its
    // outcome cannot be written.
    cluster.stop_server();
    w.wait_log(T, "reconnect failed").await;
    w.signal(Signal::SIGTERM);
    // The drain ends, the last write is tried within its budget, and the worker exits.
    assert_eq!(
        w.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        w.log()
    );
    assert!(
        w.log().contains("could not write the last outcomes"),
        "{}",
        w.log()
    );
}

#[tokio::test]
async fn failures_are_logged_as_warnings_and_errors_in_plain_values_on_one_line() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let exec = test_executor();
    let _assigner = WorkerProc::assigner(&db.url, "a1", &[]);
    let mut w = WorkerProc::start(&db.url, "w_log", &["--exec", &exec], &[]);
    let failed = db
        .run(&[
            "enqueue",
            "--title",
            "line one\nline two",
            "--max-attempts",
            "1",
            "--payload",
            r#"{"exit": 3, "stderr": "bad\nthing"}"#,
        ])
        .ok()
        .trim()
        .parse::<i64>()
        .unwrap();
    let flaky = db
        .run(&[
            "enqueue",
            "--title",
            "flaky",
            "--payload",
            r#"{"exit_attempt": {"1": 75}}"#,
        ])
        .ok()
        .trim()
        .parse::<i64>()
        .unwrap();
    wait_status(&client, failed, "failed").await;
    wait_status(&client, flaky, "completed").await;
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_exit(Duration::from_secs(30)).await, Some(0));
    let log = w.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
            .to_string()
    };
    let failed_line = line("task failed for good");
    assert!(
        failed_line.contains(" ERROR ") && failed_line.contains(&format!("task_id={failed}")),
        "{failed_line}"
    );
    let retry = line("attempt failed: retry scheduled");
    assert!(
        retry.contains(" WARN ") && retry.contains(&format!("task_id={flaky}")),
        "{retry}"
    );
    // A title or an error with a newline stays on its line, escaped.
    let started = line(&format!("task_id={failed}"));
    assert!(started.contains(r"line one\nline two"), "{started}");
    assert!(failed_line.contains(r"bad\nthing"), "{failed_line}");
    assert!(!log.lines().any(|l| l.starts_with("line two")), "{log}");
    // Plain values, not Rust's debug text.
    assert!(line("worker stopped").contains("outcome=drained"), "{log}");
    for debug in ["None", "Some(", "Ok(", "Drained", "RunFinished"] {
        assert!(!log.contains(debug), "{debug:?} in the log:\n{log}");
    }
}

#[tokio::test]
async fn each_program_reads_its_own_variables_and_the_old_names_with_a_warning() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // The old, shared names still work (with a warning); the program's own name wins.
    let w = WorkerProc::start(
        &db.url,
        "w_env",
        &["--exec", "noop"],
        &[
            ("JRQ_CAPACITY", "3"),
            ("JRQ_PREFETCH", "5"),
            ("JRQ_WORKER_PREFETCH", "0"),
        ],
    );
    wait_for(Duration::from_secs(30), "w_env registered", || async {
        common::count(
            &client,
            "SELECT count(*) FROM jr_status WHERE jr_name = 'w_env' AND capacity = 3 AND prefetch = 0",
        )
        .await
            == 1
    })
    .await;
    w.wait_log(
        Duration::from_secs(30),
        "JRQ_CAPACITY is read as JRQ_WORKER_CAPACITY",
    )
    .await;
    w.wait_log(
        Duration::from_secs(30),
        "JRQ_PREFETCH is ignored: JRQ_WORKER_PREFETCH is set too",
    )
    .await;
    // Each program's --help names its own variables.
    for (program, var) in [
        ("jr-queue-worker", "JRQ_WORKER_POLL_INTERVAL"),
        ("jr-auto-assigner", "JRQ_ASSIGNER_POLL_INTERVAL"),
        ("jr-health-monitor", "JRQ_MONITOR_STUCK_AFTER"),
        ("jr-stale-cleanup", "JRQ_CLEANUP_FORCE"),
        ("jr-web", "JRQ_WEB_LISTEN"),
    ] {
        let out = common::bin(program).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(&format!("[env: {var}=")), "{program}: {help}");
        assert!(
            !help.contains("[env: JRQ_POLL_INTERVAL="),
            "{program}: {help}"
        );
        assert!(help.contains("[env: JRQ_LOG_FORMAT="), "{program}: {help}");
    }
}

/// A slot freed by a lost lease writes no outcome (whose statement would have claimed the
/// next task): the worker looks at once for what is assigned to it, instead of at its next
/// poll — an assignment whose notification came while the slot was still taken would
/// otherwise wait for it.
#[tokio::test]
async fn a_slot_freed_by_a_lost_lease_claims_what_waits_at_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let args = [
        "--exec",
        "sleep:10m",
        "--capacity",
        "1",
        "--poll-interval",
        "60s",
        "--heartbeat-interval",
        "200ms",
    ];
    let w = WorkerProc::start(&db.url, "jr_lost", &args, &[]);
    w.wait_log(T, "worker ready").await;
    let assign = |title: &'static str| {
        let c = &client;
        async move {
            c.query_one(
                "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at) \
                 VALUES ($1, 'assigned', 'jr_lost', now()) RETURNING id",
                &[&title],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let first = assign("first").await;
    client
        .execute("SELECT pg_notify('jrq_worker:jr_lost', 'jr_lost')", &[])
        .await
        .unwrap();
    wait_status(&client, first, "in_progress").await;
    // The next one is assigned while the worker is full: no notification will come.
    let second = assign("second").await;
    // The first task's lease goes to another owner (as a rescue would give it).
    client
        .execute(
            "UPDATE jr_work_queue SET lease_instance = gen_random_uuid() WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap();
    w.wait_log(T, "lease lost").await;
    // The poll is a minute away: only the freed slot's own look claims the second.
    wait_status(&client, second, "in_progress").await;
}
