//! jr-health-monitor, run as the real binary against a real PostgreSQL. Time is moved by
//! back-dating rows, never by sleeping.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{exec, run_with_stdin, wait_for, Run, TestDb};
use tokio_postgres::Client;

/// The host name workers on this machine register with.
fn here() -> String {
    jrq::host::hostname()
}

/// A fake systemctl that appends its arguments, one call per line, to `log`.
fn fake_systemctl(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("systemctl.log");
    let script = dir.join("systemctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\n",
            log.display().to_string().replace('\'', "")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// Runs one monitor round with host signals neutralised (tests run on a busy machine).
fn monitor(db: &TestDb, args: &[&str]) -> Run {
    let mut cmd = common::bin("jr-health-monitor");
    cmd.env("DATABASE_URL", &db.url)
        .args(["--max-load-per-core", "100000", "--max-memory", "100"]);
    if !args.contains(&"--manager") {
        cmd.args(["--manager", "none"]);
    }
    cmd.args(args);
    Run::from(cmd.output().unwrap())
}

/// A live assigner (a healthy fleet has one; without it pending work raises an alert).
/// An assigner that heartbeat just now (a heartbeat from the future would not count: no
/// real one is ever ahead of the database's clock).
async fn assigner_alive(client: &Client) {
    exec(
        client,
        "INSERT INTO jr_status (jr_name, kind, host, is_online, status, last_seen) \
         VALUES ('assigner.test', 'assigner', 'elsewhere', true, 'idle', now())",
    )
    .await;
}

async fn status_of(client: &Client, id: i64) -> (String, Option<String>) {
    let r = client
        .query_one(
            "SELECT status, error FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn worker(client: &Client, name: &str, host: &str, silent_s: i64) {
    client
        .execute(
            "INSERT INTO jr_status (jr_name, host, pid, is_online, status, capacity, last_seen, \
                                    invocation_id) \
             VALUES ($1, $2, 999999, true, 'busy', 2, now() - $3::int8 * interval '1 second', \
                     'a-unit-invocation')",
            &[&name, &host, &silent_s],
        )
        .await
        .unwrap();
}

async fn running(client: &Client, worker: &str, started_ago_s: i64, timeout: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, started_at, timeout) \
             VALUES ('t', 'in_progress', $1, 1, now() - $2::int8 * interval '1 second', \
                     $3::text::interval) RETURNING id",
            &[&worker, &started_ago_s, &timeout],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn stuck_tasks_are_rescued_just_past_the_threshold_and_not_before() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let host = here();
    assigner_alive(&client).await;
    worker(&client, "w_in", &host, 55).await;
    worker(&client, "w_out", &host, 65).await;
    let a = running(&client, "w_in", 600, "30 minutes").await;
    let b = running(&client, "w_out", 600, "30 minutes").await;
    let out = monitor(&db, &["--stuck-after", "60s", "--dead-after", "10m"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("1 rescued"), "{out:#?}");
    assert_eq!(
        status_of(&client, a).await.0,
        "in_progress",
        "55 s silent: left alone"
    );
    let (st, err) = status_of(&client, b).await;
    assert_eq!(st, "pending", "65 s silent: rescued");
    assert_eq!(
        err.unwrap(),
        "stuck: worker 'w_out' has been silent for 65s"
    );
    let ev: (String, String, i32) = client
        .query_one(
            "SELECT action, actor, attempt FROM jr_task_events WHERE task_id = $1",
            &[&b],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(ev, ("rescued".into(), "health-monitor".into(), 1));
    // Its last attempt used up: failed, not retried.
    let c = running(&client, "w_out", 600, "30 minutes").await;
    exec(
        &client,
        &format!("UPDATE jr_work_queue SET attempts = 3 WHERE id = {c}"),
    )
    .await;
    monitor(&db, &["--stuck-after", "60s", "--dead-after", "10m"]);
    let (st, err) = status_of(&client, c).await;
    assert_eq!(st, "failed");
    assert!(err.unwrap().ends_with("(attempts used up)"));
}

#[tokio::test]
async fn dead_workers_are_marked_just_past_the_threshold_and_local_ones_restarted() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (systemctl, log) = fake_systemctl(dir.path());
    let host = here();
    assigner_alive(&client).await;
    worker(&client, "alive_w", &host, 55).await;
    worker(&client, "dead_w", &host, 65).await;
    worker(&client, "remote_w", "another-host", 65).await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at) VALUES \
           ('queued', 'assigned', 'dead_w', now() - interval '2 minutes')",
    )
    .await;
    let out = monitor(
        &db,
        &[
            "--dead-after",
            "60s",
            "--manager",
            "user",
            "--systemctl",
            systemctl.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    let online: Vec<(String, bool)> = client
        .query(
            "SELECT jr_name, is_online FROM jr_status WHERE kind = 'worker' ORDER BY jr_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        online,
        [
            ("alive_w".to_string(), true),
            ("dead_w".to_string(), false),
            ("remote_w".to_string(), false)
        ]
    );
    // Only the local one is restarted, through the user manager, without a shell.
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        "--user reset-failed jr-queue-worker@dead_w.service\n\
         --user restart jr-queue-worker@dead_w.service\n"
    );
    let note: String = client
        .query_one(
            "SELECT status_text FROM jr_status WHERE jr_name = 'dead_w'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        note,
        "restarted by the health monitor (jr-queue-worker@dead_w.service)"
    );
    // Its assigned but unstarted task goes back to pending.
    let st: String = client
        .query_one(
            "SELECT status FROM jr_work_queue WHERE title = 'queued'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(st, "pending");
    // The JSON report names the command it ran.
    worker(&client, "dead_again", &host, 120).await;
    let out = monitor(
        &db,
        &[
            "--dead-after",
            "60s",
            "--manager",
            "user",
            "--systemctl",
            systemctl.to_str().unwrap(),
            "--json",
        ],
    );
    let j = out.json();
    assert_eq!(j["restarts"][0]["command"][1], "--user");
    assert_eq!(
        j["restarts"][0]["command"][3],
        "jr-queue-worker@dead_again.service"
    );
    assert_eq!(j["restarts"][0]["ok"], true);
}

#[tokio::test]
async fn a_slow_task_is_left_alone_and_an_overdue_one_fails_clearly() {
    let db = TestDb::new().await;
    let client = db.client().await;
    assigner_alive(&client).await;
    worker(&client, "busy_w", &here(), 1).await;
    // Enough successes that one failure does not cross the failure-rate threshold.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, completed_at) \
         SELECT 'ok', 'completed', now() FROM generate_series(1, 3)",
    )
    .await;
    let slow = running(&client, "busy_w", 600, "30 minutes").await;
    let overdue = running(&client, "busy_w", 40 * 60, "30 minutes").await;
    let out = monitor(&db, &["--timeout-grace", "60s"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(status_of(&client, slow).await.0, "in_progress");
    let (st, err) = status_of(&client, overdue).await;
    assert_eq!(st, "failed");
    assert_eq!(
        err.unwrap(),
        "overdue: ran past its timeout (00:30:00) and the grace (60s) without its worker ending it"
    );
}

#[tokio::test]
async fn reports_as_text_json_and_prometheus_and_fails_on_a_crossed_threshold() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("jrq.prom");
    let out = monitor(&db, &["--textfile", prom.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "healthy: {out:#?}");
    assert!(out.stdout.contains("health:     ok"), "{out:#?}");
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, completed_at) VALUES \
           ('a', 'failed', now()), ('b', 'failed', now()), ('c', 'failed', now()), \
           ('d', 'completed', now())",
    )
    .await;
    let out = monitor(&db, &["--json", "--textfile", prom.to_str().unwrap()]);
    assert_eq!(out.code, Some(3), "a crossed threshold exits 3: {out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["failure_rate"], 0.75);
    assert_eq!(j["tasks"]["failed"], 3);
    let alert = j["alerts"][0].as_str().unwrap();
    assert!(alert.starts_with("failure rate 75 %"), "{alert}");
    let text = std::fs::read_to_string(&prom).unwrap();
    // Prometheus' own parser, and its naming conventions (the names jr-web's /metrics uses).
    let checked = run_with_stdin(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        &text,
    );
    assert_eq!(checked.code, Some(0), "promtool: {checked:#?}\n{text}");
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a sample: {line}"));
        samples.insert(name.to_string(), v);
    }
    assert_eq!(samples["jrq_failure_ratio{window=\"1h\"}"], 0.75);
    assert_eq!(samples["jrq_tasks{status=\"failed\"}"], 3.0);
    assert_eq!(samples["jrq_health_alerts"], 1.0);
    // Nothing but the final file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let out = monitor(&db, &[]);
    assert_eq!(out.code, Some(3));
    assert!(
        out.stdout.contains("ALERT:      failure rate 75 %"),
        "{out:#?}"
    );
}

#[tokio::test]
async fn two_monitors_at_once_rescue_each_stuck_task_once() {
    let db = TestDb::new().await;
    let client = db.client().await;
    worker(&client, "gone_w", &here(), 600).await;
    for _ in 0..50 {
        running(&client, "gone_w", 900, "30 minutes").await;
    }
    let spawn = || {
        common::bin("jr-health-monitor")
            .env("DATABASE_URL", &db.url)
            .args([
                "--max-load-per-core",
                "100000",
                "--max-memory",
                "100",
                "--manager",
                "none",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let mut acted = 0;
    for c in [a, b] {
        let out = Run::from(c.wait_with_output().unwrap());
        // One does the round (and alerts on the worker silent for 10 min); the other
        // either skips while the first holds the lock, or finds nothing left to do.
        assert!(matches!(out.code, Some(0) | Some(3)), "{out:#?}");
        if out.stdout.contains("50 rescued") {
            acted += 1;
        }
    }
    assert_eq!(acted, 1, "exactly one monitor rescued the tasks");
    let twice: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT task_id FROM jr_task_events WHERE action = 'rescued' \
             GROUP BY task_id HAVING count(*) <> 1) x",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0);
    let rescued: i64 = client
        .query_one(
            "SELECT count(*) FROM jr_task_events WHERE action = 'rescued'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rescued, 50);
}

#[tokio::test]
async fn finished_auto_complete_runs_are_closed_and_a_missing_assigner_is_reported() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let ok_run = db
        .run(&["runs", "create", "--auto-complete"])
        .ok()
        .trim()
        .to_string();
    let bad_run = db
        .run(&["runs", "create", "--auto-complete"])
        .ok()
        .trim()
        .to_string();
    let manual = db.run(&["runs", "create"]).ok().trim().to_string();
    for (run, status) in [
        (&ok_run, "completed"),
        (&ok_run, "completed"),
        (&bad_run, "completed"),
        (&bad_run, "failed"),
        (&manual, "completed"),
    ] {
        client
            .execute(
                "INSERT INTO jr_work_queue (title, status, run_id, completed_at) \
                 VALUES ('t', $1, $2::text::uuid, now() - interval '2 hours')",
                &[&status, &run],
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (systemctl, log) = fake_systemctl(dir.path());
    // A pending task, and this host's assigner is registered but gone.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) VALUES ('waiting')",
    )
    .await;
    client
        .execute(
            "INSERT INTO jr_status (jr_name, kind, host, is_online, status, last_seen) \
             VALUES ('assigner.here', 'assigner', $1, false, 'offline', now() - interval '1 hour')",
            &[&here()],
        )
        .await
        .unwrap();
    let out = monitor(
        &db,
        &[
            "--json",
            "--manager",
            "user",
            "--systemctl",
            systemctl.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(3), "{out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let alerts: Vec<&str> = j["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        alerts.contains(&"no assigner is alive while 1 task(s) are pending"),
        "{alerts:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "--user reset-failed jr-auto-assigner.service\n--user restart jr-auto-assigner.service\n"
    );
    let status = |id: String| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT status FROM jr_runs WHERE id = $1::text::uuid",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(status(ok_run).await, "completed");
    assert_eq!(status(bad_run).await, "error");
    assert_eq!(
        status(manual).await,
        "active",
        "runs without auto-complete are left alone"
    );
}

#[tokio::test]
async fn lost_rows_of_this_host_are_restarted_once_if_they_ran_as_units_with_a_reason_to_live() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let (systemctl, log) = fake_systemctl(dir.path());
    let host = here();
    assigner_alive(&client).await;
    let run = db.run(&["runs", "create"]).ok().trim().to_string();
    let over = db.run(&["runs", "create"]).ok().trim().to_string();
    db.run(&["runs", "set", &over, "completed"]).ok();
    // Lost: marked by the stale cleanup or by a monitor on another host.
    for (name, on, invocation, run_id) in [
        ("unit_w", host.as_str(), Some("inv-1"), None),
        ("unit_run_w", &host, Some("inv-2"), Some(run.as_str())),
        ("by_hand_w", &host, None, None),
        ("run_over_w", &host, Some("inv-3"), Some(over.as_str())),
        ("remote_w", "another-host", Some("inv-4"), None),
    ] {
        client
            .execute(
                "INSERT INTO jr_status (jr_name, host, is_online, status, last_seen, \
                                        invocation_id, run_id) \
                 VALUES ($1, $2, false, 'lost', now(), $3, $4::text::uuid)",
                &[&name, &on, &invocation, &run_id],
            )
            .await
            .unwrap();
    }
    let args = [
        "--manager",
        "user",
        "--systemctl",
        systemctl.to_str().unwrap(),
    ];
    assert_eq!(monitor(&db, &args).code, Some(0));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "--user reset-failed jr-queue-worker@unit_run_w.service\n\
         --user restart jr-queue-worker@unit_run_w.service\n\
         --user reset-failed jr-queue-worker@unit_w.service\n\
         --user restart jr-queue-worker@unit_w.service\n"
    );
    let rows: Vec<(String, String, String)> = client
        .query(
            "SELECT jr_name, status, status_text FROM jr_status WHERE kind = 'worker' \
             ORDER BY jr_name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let row = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().clone();
    assert_eq!(
        row("by_hand_w").2,
        "not restarted: it did not run under systemd"
    );
    assert_eq!(row("run_over_w").2, "not restarted: its run is over");
    assert_eq!(
        row("unit_w").2,
        "restarted by the health monitor (jr-queue-worker@unit_w.service)"
    );
    assert_eq!(row("remote_w").1, "lost", "left to its own host's monitor");
    for n in ["unit_w", "unit_run_w", "by_hand_w", "run_over_w"] {
        assert_eq!(row(n).1, "offline", "{n} taken over");
    }
    // Taken over once: the next round restarts nothing.
    std::fs::remove_file(&log).unwrap();
    assert_eq!(monitor(&db, &args).code, Some(0));
    assert!(!log.exists(), "no second restart");
}

#[tokio::test]
async fn with_alert_on_change_only_the_changes_fail_the_round() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let on_change = |db: &TestDb| monitor(db, &["--alert-on-change", "--json"]);
    assert_eq!(on_change(&db).code, Some(0), "healthy");
    // Work waits and no assigner is alive: unhealthy.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) VALUES ('waits')",
    )
    .await;
    let out = on_change(&db);
    assert_eq!(out.code, Some(3), "became unhealthy: {out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["was_unhealthy"], false);
    assert!(j["unhealthy_since"].is_string());
    // Still unhealthy: the round does not fail again (without the option it does).
    let out = on_change(&db);
    assert_eq!(out.code, Some(0), "still unhealthy: {out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["was_unhealthy"], true);
    assert_eq!(monitor(&db, &[]).code, Some(3));
    // Healthy again: exit 4, once.
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'cancelled', completed_at = now()",
    )
    .await;
    let out = monitor(&db, &["--alert-on-change"]);
    assert_eq!(out.code, Some(4), "recovered: {out:#?}");
    assert!(
        out.stdout.contains("health:     ok (recovered)"),
        "{out:#?}"
    );
    assert_eq!(on_change(&db).code, Some(0));
}

#[tokio::test]
async fn the_alert_hook_fires_on_each_change_and_says_which() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let sd = common::UserSystemd::start(&[("DATABASE_URL", &db.url)]);
    // The private manager has no journal for systemd-cat: the hook's line goes to its log.
    sd.drop_in(
        "jr-alert@.service",
        "[Service]\nExecStart=\nExecStart=/bin/echo \"jrq: %i ended: ${MONITOR_SERVICE_RESULT}, exit status ${MONITOR_EXIT_STATUS}\"\n",
    );
    sd.drop_in(
        "jr-health-monitor.service",
        "[Service]\nEnvironment=JRQ_MAX_LOAD_PER_CORE=100000 JRQ_MAX_MEMORY=100\n",
    );
    let alert_log = || sd.log("jr-alert@jr-health-monitor.service.service");
    let round = || {
        // A oneshot: `start` returns when the round is over (failed or not).
        let _ = sd.ctl(&["start", "jr-health-monitor.service"]);
    };
    let lines = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while alert_log().lines().count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "alerts: {}\nmonitor: {}\n{:#?}",
                alert_log(),
                sd.log("jr-health-monitor.service"),
                sd.ctl(&[
                    "status",
                    "--no-pager",
                    "jr-alert@jr-health-monitor.service.service"
                ])
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    round();
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) VALUES ('waits')",
    )
    .await;
    round();
    lines(1);
    assert!(alert_log().contains("exit status 3"), "{}", alert_log());
    round();
    round();
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'cancelled', completed_at = now()",
    )
    .await;
    round();
    lines(2);
    let text = alert_log();
    assert_eq!(text.lines().count(), 2, "one alert per change: {text}");
    assert!(
        text.lines().nth(1).unwrap().contains("exit status 4"),
        "{text}"
    );
    round();
    assert_eq!(alert_log().lines().count(), 2);
}

/// A real idle-in-transaction session holds back the vacuum horizon: the monitor names it
/// (application, pid, state, age) and alerts past --max-horizon-age; once it ends, the
/// alert goes. `jrq status` shows it too.
#[tokio::test]
async fn an_idle_transaction_holding_back_vacuum_is_reported_and_alerted() {
    let db = TestDb::new().await;
    let forgotten = db.client().await;
    exec(&forgotten, "SET application_name = 'forgotten-psql'").await;
    let pid: i32 = forgotten
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    exec(&forgotten, "BEGIN").await;
    exec(&forgotten, "SELECT txid_current()").await;
    // Idle in transaction from here on. A round with a threshold it has not reached:
    // reported, no alert.
    let out = monitor(&db, &["--json", "--max-horizon-age", "1h"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["horizon"]["pid"], pid, "{j}");
    assert_eq!(j["horizon"]["application"], "forgotten-psql");
    assert_eq!(j["horizon"]["state"], "idle in transaction");
    // Past the threshold: the alert names it and says what to do.
    let mut alert = String::new();
    wait_for(Duration::from_secs(30), "the horizon alert", || {
        let out = monitor(&db, &["--max-horizon-age", "1s"]);
        if let Some(a) = out
            .stdout
            .lines()
            .find(|l| l.contains("is holding back vacuum"))
        {
            alert = a.to_string();
        }
        let done = out.code == Some(3) && !alert.is_empty();
        async move { done }
    })
    .await;
    assert!(alert.contains("a transaction open for "), "{alert}");
    assert!(alert.contains("forgotten-psql"), "{alert}");
    assert!(alert.contains("idle in transaction"), "{alert}");
    assert!(
        alert.contains(&format!("SELECT pg_terminate_backend({pid})")),
        "{alert}"
    );
    // `jrq status` names a holder of 10 s or more.
    wait_for(Duration::from_secs(30), "jrq status to name it", || {
        let status = db.run(&["status"]).ok().to_string();
        let shown = status.contains("vacuum horizon:  held by a transaction open for ")
            && status.contains("forgotten-psql");
        async move { shown }
    })
    .await;
    exec(&forgotten, "ROLLBACK").await;
    let out = monitor(&db, &["--json", "--max-horizon-age", "1s"]);
    assert_eq!(out.code, Some(0), "ended: no alert {out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["horizon"], serde_json::Value::Null, "{j}");
}
