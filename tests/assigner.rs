//! jr-auto-assigner with real workers, as the real binaries, against a real PostgreSQL.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{count, exec, test_executor, wait_for, TestDb, WorkerProc};
use nix::sys::signal::Signal;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

async fn wait_count(client: &Client, sql: &str, want: i64) {
    wait_for(T, &format!("{sql} = {want}"), || async {
        count(client, sql).await == want
    })
    .await;
}

/// Tasks assigned to or running on each worker right now.
async fn loads(client: &Client) -> HashMap<String, i64> {
    client
        .query(
            "SELECT assigned_jr, count(*) FROM jr_work_queue \
             WHERE status IN ('assigned', 'in_progress') GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn the_operators_psql_insert_is_assigned_within_a_second_and_completed() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let w = WorkerProc::start(&db.url, "it_triad_jr", &["--exec", "noop"], &[]);
    let _a = WorkerProc::assigner(&db.url, "a1", &[]);
    w.wait_log(T, "worker ready").await;
    // The verification in the operators' note, without its 60 s wait.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, description, source, created_by) \
         VALUES ('Test Auto-Assign', 'Test', 'tpm', 'claude_tpm')",
    )
    .await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE title = 'Test Auto-Assign' AND status = 'completed'",
        1,
    )
    .await;
    let row = client
        .query_one(
            "SELECT assigned_jr, extract(epoch FROM \
                 (SELECT at FROM jr_task_events e WHERE e.task_id = q.id AND action = 'assigned') \
                 - created_at)::float8 \
             FROM jr_work_queue q WHERE title = 'Test Auto-Assign'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "it_triad_jr");
    let latency: f64 = row.get(1);
    assert!(latency < 1.0, "assigned {latency:.3}s after the insert");
    let ev = db.run(&["show", "1", "--json"]).json();
    let assigned = &ev["events"][0];
    assert_eq!(assigned["action"], "assigned");
    assert_eq!(assigned["actor"], "a1");
    assert_eq!(assigned["details"], "least loaded (load 0/1)");
}

#[tokio::test]
async fn tasks_spread_to_the_least_loaded_and_capacity_holds() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let exec_args = ["--exec", &test_executor(), "--poll-interval", "100ms"];
    let small = WorkerProc::start(
        &db.url,
        "small",
        &[&exec_args[..], &["--capacity", "1"]].concat(),
        &[],
    );
    let big = WorkerProc::start(
        &db.url,
        "big",
        &[&exec_args[..], &["--capacity", "3"]].concat(),
        &[],
    );
    small.wait_log(T, "worker ready").await;
    big.wait_log(T, "worker ready").await;
    let _a = WorkerProc::assigner(&db.url, "a1", &["--poll-interval", "100ms"]);
    let payload = serde_json::json!({"wait_file": release.to_str().unwrap()}).to_string();
    client
        .execute(
            "INSERT INTO jr_work_queue (title, payload) \
             SELECT 't' || g, $1::text::jsonb FROM generate_series(1, 6) g",
            &[&payload],
        )
        .await
        .unwrap();
    // Back-pressure: the fleet takes 1 + 3; two wait, nothing is over-assigned.
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'in_progress'",
        4,
    )
    .await;
    let l = loads(&client).await;
    assert_eq!(l.get("small"), Some(&1), "{l:?}");
    assert_eq!(l.get("big"), Some(&3), "{l:?}");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'pending'"
        )
        .await,
        2
    );
    std::fs::write(&release, "").unwrap();
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        6,
    )
    .await;
    let reasons: Vec<String> = client
        .query(
            "SELECT details FROM jr_task_events WHERE action = 'assigned'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        reasons.iter().all(|r| r.starts_with("least loaded")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn three_assigners_never_exceed_capacity_nor_assign_twice() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) SELECT 't' || g FROM generate_series(1, 2000) g",
    )
    .await;
    let caps = [("w2", 2), ("w3", 3), ("w4", 4), ("w5", 5)];
    let _workers: Vec<WorkerProc> = caps
        .iter()
        .map(|(n, c)| {
            WorkerProc::start(
                &db.url,
                n,
                // Capacity alone (no prefetch) is the limit checked below.
                &[
                    "--exec",
                    "sleep:2ms",
                    "--capacity",
                    &c.to_string(),
                    "--prefetch",
                    "0",
                ],
                &[],
            )
        })
        .collect();
    let _assigners: Vec<WorkerProc> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| WorkerProc::assigner(&db.url, n, &["--poll-interval", "50ms"]))
        .collect();
    let cap: HashMap<&str, i64> = caps.iter().map(|(n, c)| (*n, *c as i64)).collect();
    let mut samples = 0;
    loop {
        for (w, n) in loads(&client).await {
            assert!(
                n <= cap[w.as_str()],
                "{w} holds {n} tasks, capacity {}",
                cap[w.as_str()]
            );
        }
        samples += 1;
        if count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        )
        .await
            == 2000
        {
            break;
        }
        assert!(samples < 100_000, "not done");
    }
    // Every task assigned exactly once, and started once, by the worker it was given to.
    let bad = count(
        &client,
        "SELECT count(*) FROM jr_work_queue q WHERE \
           (SELECT count(*) FROM jr_task_events e WHERE e.task_id = q.id AND action = 'assigned') <> 1 \
           OR (SELECT count(*) FROM jr_task_events e WHERE e.task_id = q.id AND action = 'started' \
                 AND e.worker = q.assigned_jr) <> 1",
    )
    .await;
    assert_eq!(bad, 0);
    let actors = count(
        &client,
        "SELECT count(DISTINCT actor) FROM jr_task_events WHERE action = 'assigned'",
    )
    .await;
    assert!(
        actors >= 2,
        "the assigners shared the work ({actors} assigned)"
    );
}

#[tokio::test]
async fn providers_and_pins_route_and_an_offline_target_fails_clearly() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let c = WorkerProc::start(
        &db.url,
        "claude_w",
        &["--exec", "noop", "--provider", "claude"],
        &[],
    );
    let p = WorkerProc::start(&db.url, "plain_w", &["--exec", "noop"], &[]);
    c.wait_log(T, "worker ready").await;
    p.wait_log(T, "worker ready").await;
    let _a = WorkerProc::assigner(
        &db.url,
        "a1",
        &["--pin-grace", "1s", "--poll-interval", "100ms"],
    );
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, provider, target_jr) VALUES \
           ('for claude', 'claude', NULL), ('for codex', 'codex', NULL), \
           ('pinned', '', 'plain_w'), ('pinned claude', 'claude', 'claude_w'), \
           ('to a ghost', '', 'ghost_jr')",
    )
    .await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        3,
    )
    .await;
    let by_title: HashMap<String, (String, Option<String>, Option<String>)> = client
        .query(
            "SELECT title, status, assigned_jr, error FROM jr_work_queue",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(by_title["for claude"].1.as_deref(), Some("claude_w"));
    assert_eq!(by_title["pinned"].1.as_deref(), Some("plain_w"));
    assert_eq!(by_title["pinned claude"].1.as_deref(), Some("claude_w"));
    assert_eq!(
        by_title["for codex"].0, "pending",
        "no worker serves codex: it waits"
    );
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE title = 'to a ghost' AND status = 'failed'",
        1,
    )
    .await;
    let err: String = client
        .query_one(
            "SELECT error FROM jr_work_queue WHERE title = 'to a ghost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(err, "target worker 'ghost_jr' is not online");
    // The codex task is not pinned: it keeps waiting for a codex worker.
    let codex = WorkerProc::start(
        &db.url,
        "codex_w",
        &["--exec", "noop", "--provider", "codex"],
        &[],
    );
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        4,
    )
    .await;
    drop(codex);
}

#[tokio::test]
async fn tasks_of_a_worker_that_vanished_before_starting_them_go_elsewhere() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let mut gone = WorkerProc::start(
        &db.url,
        "gone",
        &[
            "--exec",
            "noop",
            "--capacity",
            "2",
            "--heartbeat-interval",
            "200ms",
        ],
        &[],
    );
    gone.wait_log(T, "worker ready").await;
    let _a = WorkerProc::assigner(
        &db.url,
        "a1",
        &[
            "--online-threshold",
            "1s",
            "--heartbeat-interval",
            "200ms",
            "--poll-interval",
            "100ms",
        ],
    );
    // The worker freezes (it cannot claim), is given two tasks, and dies.
    gone.signal(Signal::SIGSTOP);
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) VALUES ('x'), ('y')",
    )
    .await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'assigned' AND assigned_jr = 'gone'",
        2,
    )
    .await;
    gone.signal(Signal::SIGKILL);
    gone.wait_exit(T).await;
    let _other = WorkerProc::start(&db.url, "other", &["--exec", "noop"], &[]);
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed' AND assigned_jr = 'other'",
        2,
    )
    .await;
    let details: Vec<String> = client
        .query(
            "SELECT details FROM jr_task_events WHERE action = 'unassigned' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(details.len(), 2);
    assert!(
        details[0].starts_with("worker 'gone' has been silent for"),
        "{details:?}"
    );
    assert!(details[0].ends_with("before starting it"), "{details:?}");
}

#[tokio::test]
async fn the_circuit_breaker_opens_skips_the_worker_and_closes_on_success() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let w = WorkerProc::start(&db.url, "flaky", &["--exec", &test_executor()], &[]);
    w.wait_log(T, "worker ready").await;
    let _a = WorkerProc::assigner(
        &db.url,
        "a1",
        &[
            "--circuit-failures",
            "2",
            "--circuit-cooldown",
            "2s",
            "--heartbeat-interval",
            "200ms",
            "--poll-interval",
            "100ms",
        ],
    );
    exec(
        &client,
        r#"INSERT INTO jr_work_queue (title, payload, max_attempts) VALUES
             ('bad 1', '{"exit": 3}', 1), ('bad 2', '{"exit": 3}', 1)"#,
    )
    .await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'failed'",
        2,
    )
    .await;
    // Open: a good task waits while the cool-down runs.
    exec(&client, "INSERT INTO jr_work_queue (title) VALUES ('good')").await;
    wait_for(T, "the circuit to show as open", || async {
        let j = db.run(&["workers", "--json"]).json();
        j.as_array()
            .unwrap()
            .iter()
            .any(|w| w["jr_name"] == "flaky" && w["circuit_open_until"].is_string())
    })
    .await;
    let j = db.run(&["workers", "--json"]).json();
    let flaky = j
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["jr_name"] == "flaky")
        .unwrap()
        .clone();
    assert_eq!(flaky["circuit_reason"], "2 failed attempts in a row");
    assert!(db.run(&["workers"]).ok().contains("open until"));
    let row = client
        .query_one(
            "SELECT status, (SELECT circuit_open_until > now() FROM jr_status \
                             WHERE jr_name = 'flaky') \
             FROM jr_work_queue WHERE title = 'good'",
            &[],
        )
        .await
        .unwrap();
    if row.get::<_, bool>(1) {
        assert_eq!(
            row.get::<_, String>(0),
            "pending",
            "skipped while the circuit is open"
        );
    }
    // After the cool-down it gets the task; the success closes the circuit.
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE title = 'good' AND status = 'completed'",
        1,
    )
    .await;
    let assigned_after: bool = client
        .query_one(
            "SELECT (SELECT at FROM jr_task_events e WHERE e.task_id = q.id AND action = 'assigned') \
                 >= (SELECT last_failure_at FROM jr_status WHERE jr_name = 'flaky') \
                    + interval '2 seconds' \
             FROM jr_work_queue q WHERE title = 'good'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(assigned_after, "assigned only after the cool-down");
    wait_for(T, "the circuit to close", || async {
        let j = db.run(&["workers", "--json"]).json();
        j.as_array().unwrap().iter().any(|w| {
            w["jr_name"] == "flaky"
                && w["circuit_open_until"].is_null()
                && w["consecutive_failures"] == 0
        })
    })
    .await;
}

#[tokio::test]
async fn a_full_fleet_makes_tasks_wait_and_the_status_line_says_so() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let w = WorkerProc::start(
        &db.url,
        "only",
        &["--exec", &test_executor(), "--capacity", "2"],
        &[],
    );
    w.wait_log(T, "worker ready").await;
    let _a = WorkerProc::assigner(&db.url, "a1", &["--heartbeat-interval", "200ms"]);
    let payload = serde_json::json!({"wait_file": release.to_str().unwrap()}).to_string();
    client
        .execute(
            "INSERT INTO jr_work_queue (title, payload) \
             SELECT 't' || g, $1::text::jsonb FROM generate_series(1, 10) g",
            &[&payload],
        )
        .await
        .unwrap();
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'in_progress'",
        2,
    )
    .await;
    wait_for(T, "the assigner to report the backlog", || async {
        let text: String = client
            .query_one(
                "SELECT status_text FROM jr_status WHERE jr_name = 'a1'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        text.starts_with("8 pending (oldest") && text.contains("fleet full")
    })
    .await;
    assert!(loads(&client).await["only"] <= 2);
    std::fs::write(&release, "").unwrap();
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        10,
    )
    .await;
}

#[tokio::test]
async fn assigner_and_postgres_restarts_under_load_lose_and_duplicate_nothing() {
    let cluster = common::PrivateCluster::start();
    let client = cluster.migrated().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) SELECT 't' || g FROM generate_series(1, 600) g",
    )
    .await;
    let _w1 = WorkerProc::start(
        &cluster.url,
        "w1",
        &["--exec", "sleep:10ms", "--capacity", "3"],
        &[],
    );
    let _w2 = WorkerProc::start(
        &cluster.url,
        "w2",
        &["--exec", "sleep:10ms", "--capacity", "3"],
        &[],
    );
    let mut a = WorkerProc::assigner(&cluster.url, "a1", &["--poll-interval", "100ms"]);
    let done = "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'";
    wait_for(T, "some progress", || async {
        count(&client, done).await >= 50
    })
    .await;
    a.signal(Signal::SIGKILL);
    a.wait_exit(T).await;
    let a = WorkerProc::assigner(&cluster.url, "a1", &["--poll-interval", "100ms"]);
    wait_for(T, "progress after the restart", || async {
        count(&client, done).await >= 200
    })
    .await;
    cluster.stop_server();
    cluster.start_server();
    let client = cluster.migrated().await;
    wait_for(Duration::from_secs(60), "all 600 completed", || async {
        count(&client, done).await == 600
    })
    .await;
    a.wait_log(T, "database connection restored").await;
    let bad = count(
        &client,
        "SELECT count(*) FROM jr_work_queue q WHERE \
           (SELECT count(*) FROM jr_task_events e WHERE e.task_id = q.id AND action = 'assigned') <> 1 \
           OR (SELECT count(*) FROM jr_task_events e WHERE e.task_id = q.id AND action = 'completed') <> 1",
    )
    .await;
    assert_eq!(bad, 0, "each task assigned once and completed once");
}

#[tokio::test]
async fn prefetch_queues_tasks_beyond_capacity_but_runs_only_capacity() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let w = WorkerProc::start(
        &db.url,
        "pf",
        &[
            "--exec",
            &test_executor(),
            "--capacity",
            "1",
            "--prefetch",
            "2",
        ],
        &[],
    );
    w.wait_log(T, "worker ready").await;
    let _a = WorkerProc::assigner(&db.url, "a1", &["--poll-interval", "100ms"]);
    let payload = serde_json::json!({"wait_file": release.to_str().unwrap()}).to_string();
    client
        .execute(
            "INSERT INTO jr_work_queue (title, payload) \
             SELECT 't' || g, $1::text::jsonb FROM generate_series(1, 6) g",
            &[&payload],
        )
        .await
        .unwrap();
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'assigned'",
        2,
    )
    .await;
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'in_progress'"
        )
        .await,
        1,
        "capacity 1: one runs"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'pending'"
        )
        .await,
        3,
        "capacity + prefetch = 3 held by the worker"
    );
    std::fs::write(&release, "").unwrap();
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        6,
    )
    .await;
}

#[tokio::test]
async fn the_automatic_prefetch_pipelines_short_tasks() {
    // The default prefetch: 10 ms attempts at 2 slots would wait ≤ 50 ms behind 10 more,
    // so the worker asks for up to its ceiling, twice its capacity, after its first
    // attempt (less when a loaded machine stretches an attempt past 25 ms), and the
    // assigner keeps more than the 2 running there.
    let db = TestDb::new().await;
    let client = db.client().await;
    let w = WorkerProc::start(
        &db.url,
        "auto_pf",
        &["--exec", "sleep:10ms", "--capacity", "2"],
        &[],
    );
    w.wait_log(T, "worker ready").await;
    assert_eq!(
        count(
            &client,
            "SELECT prefetch::int8 FROM jr_status WHERE jr_name = 'auto_pf'"
        )
        .await,
        0,
        "nothing measured yet: no prefetch"
    );
    let _a = WorkerProc::assigner(&db.url, "a1", &["--poll-interval", "100ms"]);
    client
        .execute(
            "INSERT INTO jr_work_queue (title) SELECT 't' || g FROM generate_series(1, 400) g",
            &[],
        )
        .await
        .unwrap();
    wait_count(
        &client,
        "SELECT CASE WHEN prefetch >= 1 THEN 1::int8 ELSE 0::int8 END FROM jr_status \
         WHERE jr_name = 'auto_pf'",
        1,
    )
    .await;
    // Held at once: running and queued, beyond the capacity of 2.
    wait_count(
        &client,
        "SELECT CASE WHEN count(*) >= 3 THEN 1::int8 ELSE 0::int8 END FROM jr_work_queue \
         WHERE assigned_jr = 'auto_pf' AND status IN ('assigned', 'in_progress')",
        1,
    )
    .await;
    assert!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE assigned_jr = 'auto_pf' \
             AND status IN ('assigned', 'in_progress')"
        )
        .await
            <= 6,
        "never more than capacity + prefetch"
    );
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        400,
    )
    .await;
}

#[tokio::test]
async fn work_flows_on_notifications_alone_when_nobody_polls() {
    // Polls ten minutes apart: the insert trigger wakes the assigner, the assigner wakes
    // the worker, and each batch of outcomes tells the assigner that capacity freed up.
    let db = TestDb::new().await;
    let client = db.client().await;
    let slow = ["--poll-interval", "10m"];
    let _a = WorkerProc::assigner(&db.url, "assigner.quiet", &slow);
    let w = WorkerProc::start(
        &db.url,
        "jr_quiet",
        &["--exec", "noop", "--poll-interval", "10m"],
        &[],
    );
    w.wait_log(T, "worker ready").await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title) SELECT 't' || g FROM generate_series(1, 50) g",
    )
    .await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        50,
    )
    .await;
}

#[tokio::test]
async fn assigners_split_the_workers_and_a_dead_ones_share_is_taken_within_the_online_threshold() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // Which of two assigners' shares each worker falls into (by hashtext, as the
    // assigners compute it).
    let names = ["ws1", "ws2", "ws3", "ws4", "ws5", "ws6", "ws7", "ws8"];
    let share = |name: &str| {
        let c = &client;
        let name = name.to_string();
        async move {
            c.query_one("SELECT mod(hashtext($1)::int8 + 2147483648, 2)", &[&name])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let mut shares: HashMap<String, i64> = HashMap::new();
    for n in names {
        shares.insert(n.to_string(), share(n).await);
    }
    assert!(
        shares.values().any(|s| *s == 0) && shares.values().any(|s| *s == 1),
        "the test's names must fall into both shares: {shares:?}"
    );
    let fast = ["--heartbeat-interval", "1s"];
    let workers: Vec<WorkerProc> = names
        .iter()
        .map(|n| {
            let mut args = vec!["--exec", "sleep:5ms", "--capacity", "2"];
            args.extend(fast);
            WorkerProc::start(&db.url, n, &args, &[])
        })
        .collect();
    // "a1" sorts first: it serves share 0, "a2" share 1.
    let assigner = |name: &str| {
        WorkerProc::assigner(
            &db.url,
            name,
            &[
                "--poll-interval",
                "50ms",
                "--heartbeat-interval",
                "1s",
                "--online-threshold",
                "5s",
            ],
        )
    };
    let a1 = assigner("a1");
    let a2 = assigner("a2");
    for w in &workers {
        w.wait_log(T, "worker ready").await;
    }
    a1.wait_log(T, "assigner ready").await;
    a2.wait_log(T, "assigner ready").await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_status WHERE kind = 'assigner' AND is_online",
        2,
    )
    .await;

    exec(
        &client,
        "INSERT INTO jr_work_queue (title) SELECT 'share ' || g FROM generate_series(1, 400) g",
    )
    .await;
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        400,
    )
    .await;
    // Each worker was routed to by the one assigner whose share it is.
    let rows = client
        .query(
            "SELECT worker, array_agg(DISTINCT actor) FROM jr_task_events \
             WHERE action = 'assigned' GROUP BY worker",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), names.len(), "every worker got tasks");
    for r in &rows {
        let (worker, actors): (String, Vec<String>) = (r.get(0), r.get(1));
        let want = if shares[&worker] == 0 { "a1" } else { "a2" };
        assert_eq!(actors, vec![want.to_string()], "{worker}'s assigners");
    }

    // a1 dies without a word: its share goes to a2 once a1 is no longer live. Tasks
    // pinned to a1's workers can only be routed by whoever serves that share.
    let orphans: Vec<String> = shares
        .iter()
        .filter(|(_, s)| **s == 0)
        .map(|(n, _)| n.clone())
        .collect();
    let killed_at: chrono::DateTime<chrono::Utc> =
        client.query_one("SELECT now()", &[]).await.unwrap().get(0);
    drop(a1);
    client
        .execute(
            "INSERT INTO jr_work_queue (title, target_jr) \
             SELECT 'pinned ' || g, w FROM generate_series(1, 20) g, unnest($1::text[]) w",
            &[&orphans],
        )
        .await
        .unwrap();
    wait_count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        400 + 20 * orphans.len() as i64,
    )
    .await;
    let row = client
        .query_one(
            "SELECT count(DISTINCT worker), extract(epoch FROM min(at) - $2)::float8 \
             FROM jr_task_events WHERE action = 'assigned' AND actor = 'a2' \
               AND worker = ANY($1) AND at > $2",
            &[&orphans, &killed_at],
        )
        .await
        .unwrap();
    let (served, first): (i64, Option<f64>) = (row.get(0), row.get(1));
    assert_eq!(
        served,
        orphans.len() as i64,
        "a2 took every worker of a1 over"
    );
    eprintln!(
        "a1's {} workers: a2's first assignment to one of them {:.1} s after a1 was killed \
         (online threshold 5 s, heartbeat 1 s)",
        orphans.len(),
        first.unwrap_or_default()
    );
}
