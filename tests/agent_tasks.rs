//! Long agent tasks (migrations/V12), with the real worker, the real assigner and the
//! scripted executor (tests/fixtures/executor.py): live output and `jrq logs --follow`,
//! output that survives a cancel, a timeout and a kill -9, idle timeouts, checkpoints
//! that reach the next attempt, usage that sums across attempts, and budgets.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{assigned_task, status_of, test_executor, wait_for, wait_status, TestDb, WorkerProc};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

fn worker(db: &TestDb, name: &str, extra: &[&str], env: &[(&str, &str)]) -> WorkerProc {
    let exec = test_executor();
    let mut args = vec![
        "--exec",
        &exec,
        "--poll-interval",
        "200ms",
        "--heartbeat-interval",
        "500ms",
        "--retry-base",
        "0s",
        "--kill-grace",
        "1s",
    ];
    args.extend_from_slice(extra);
    WorkerProc::start(&db.url, name, &args, env)
}

/// The task's stored output of `stream`, in order.
async fn stored(client: &Client, id: i64, stream: &str) -> String {
    client
        .query_one(
            "SELECT coalesce(string_agg(data, '' ORDER BY seq), '') FROM jr_task_output \
             WHERE task_id = $1 AND stream = $2",
            &[&id, &stream],
        )
        .await
        .unwrap()
        .get(0)
}

/// `line 1\nline 2\n...` — the lines of the fixture, all there and in order.
fn assert_lines_in_order(text: &str, prefix: &str) -> usize {
    let nums: Vec<usize> = text
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert!(!nums.is_empty(), "no '{prefix}' lines in {text:?}");
    assert_eq!(
        nums,
        (1..=nums.len()).collect::<Vec<_>>(),
        "lines missing or out of order"
    );
    nums.len()
}

#[tokio::test]
async fn logs_follow_streams_a_running_task_and_output_survives_a_cancel() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let _w = worker(&db, "w_logs", &[], &[]);
    let payload = json!({"lines": {"count": -1, "every": 0.02, "stream": "both"}}).to_string();
    let id = assigned_task(&client, "w_logs", &payload).await;

    // `jrq logs --follow` from the start: it sees the lines while the task runs.
    let mut follow = db
        .jrq()
        .args(["logs", &id.to_string(), "--follow", "--stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + T;
    while !seen.iter().any(|l: &String| l == "line 20") {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(l)) => seen.push(l),
            _ => panic!("no 'line 20' from jrq logs --follow: {seen:?}"),
        }
    }
    assert_eq!(
        status_of(&client, id).await,
        "in_progress",
        "seen while running"
    );
    assert_eq!(seen[0], "==> attempt 1 <==");
    assert!(!seen.iter().any(|l| l.starts_with("err ")), "--stdout only");

    // Cancelled while it writes: what was flushed stays, and --follow ends with it.
    db.run(&["cancel", &id.to_string()]).ok();
    wait_status(&client, id, "cancelled").await;
    let code = tokio::task::spawn_blocking(move || follow.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        code.code(),
        Some(4),
        "--follow exits 4 for a cancelled task"
    );
    while let Ok(l) = rx.try_recv() {
        seen.push(l);
    }
    let followed = assert_lines_in_order(&seen[1..].join("\n"), "line ");
    let out = stored(&client, id, "stdout").await;
    let kept = assert_lines_in_order(&out, "line ");
    assert!(kept >= followed, "kept {kept} lines, followed {followed}");
    assert_lines_in_order(&stored(&client, id, "stderr").await, "err ");

    // Without --follow: all of it, both streams; --stderr only stderr; show keeps the tail.
    let all = db.run(&["logs", &id.to_string()]).ok().to_string();
    assert!(all.contains("line 1\n") && all.contains("err 1\n"), "{all}");
    let err = db
        .run(&["logs", &id.to_string(), "--stderr"])
        .ok()
        .to_string();
    assert!(
        err.contains("err 3\n") && !err.contains("line 3\n"),
        "{err}"
    );
    let show = db.run(&["show", &id.to_string()]).ok().to_string();
    assert!(show.contains(&format!("`jrq logs {id}`")), "{show}");
    assert!(show.contains("| line "), "{show}");
    let j = db.run(&["logs", &id.to_string(), "--json", "--attempt", "1"]);
    let first: Value = serde_json::from_str(j.ok().lines().next().unwrap()).unwrap();
    assert_eq!(first["attempt"], 1);

    // A wrong id: one line, and a non-zero exit.
    db.run(&["logs", "999999"])
        .fails(1, "there is no task 999999");
}

#[tokio::test]
async fn output_survives_a_timeout_and_a_kill_9_of_the_worker_and_prune_removes_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let mut w = worker(&db, "w_crash", &[], &[]);
    // Times out after 1.5 s while it writes; no attempts left.
    let timed = assigned_task(
        &client,
        "w_crash",
        &json!({"lines": {"count": -1, "every": 0.02}}).to_string(),
    )
    .await;
    exec_sql(
        &client,
        &format!("UPDATE jr_work_queue SET timeout = '1.5s', max_attempts = 1 WHERE id = {timed}"),
    )
    .await;
    wait_status(&client, timed, "failed").await;
    let err: String = client
        .query_one("SELECT error FROM jr_work_queue WHERE id = $1", &[&timed])
        .await
        .unwrap()
        .get(0);
    assert!(err.starts_with("timed out after 1s 500ms"), "{err}");
    assert!(assert_lines_in_order(&stored(&client, timed, "stdout").await, "line ") > 10);

    // kill -9 of the worker while a task writes: the batches written are there, in order.
    let running = assigned_task(
        &client,
        "w_crash",
        &json!({"lines": {"count": -1, "every": 0.01}}).to_string(),
    )
    .await;
    wait_for(T, "output of the running task", || async {
        stored(&client, running, "stdout").await.lines().count() > 50
    })
    .await;
    w.signal(Signal::SIGKILL);
    let _ = w.child.wait();
    let before = stored(&client, running, "stdout").await;
    let n = assert_lines_in_order(&before, "line ");
    assert!(n > 50);

    // Prune deletes a finished task's output with it.
    exec_sql(
        &client,
        &format!(
            "UPDATE jr_work_queue SET completed_at = now() - interval '2 days' WHERE id = {timed}"
        ),
    )
    .await;
    let dry = db
        .run(&["prune", "--older-than", "1d", "--dry-run", "--json"])
        .json();
    assert!(dry["output_chunks"].as_i64().unwrap() > 0, "{dry}");
    db.run(&["prune", "--older-than", "1d"]).ok();
    assert_eq!(stored(&client, timed, "stdout").await, "");
    assert!(!stored(&client, running, "stdout").await.is_empty());
}

async fn exec_sql(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn an_idle_task_is_ended_and_retried_while_a_chatty_one_runs_on() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let _w = worker(
        &db,
        "w_idle",
        &["--capacity", "2", "--idle-timeout", "1s"],
        &[],
    );
    // Silent for 4 s on its first attempt, at once done on its second.
    let silent = assigned_task(
        &client,
        "w_idle",
        &json!({"sleep_attempt": {"1": 4}, "exit": 0}).to_string(),
    )
    .await;
    // Writes a line every 0.2 s for 3 s: longer than the idle timeout, never silent.
    let chatty = assigned_task(
        &client,
        "w_idle",
        &json!({"lines": {"count": 15, "every": 0.2}}).to_string(),
    )
    .await;
    wait_status(&client, chatty, "completed").await;
    wait_for(T, "the silent task's first attempt to end idle", || async {
        client
            .query_one(
                "SELECT count(*) FROM jr_task_events WHERE task_id = $1 \
                 AND action = 'retry_scheduled' AND details LIKE 'idle: no output for 1s%'",
                &[&silent],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    let attempts: i32 = client
        .query_one(
            "SELECT attempts FROM jr_work_queue WHERE id = $1",
            &[&chatty],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1, "the chatty task ran once, to its end");

    // A task's own idle timeout wins over the worker's: 30 s here, so 2 s of silence pass.
    let own = db.run(&[
        "enqueue",
        "--title",
        "slow thinker",
        "--target",
        "w_idle",
        "--idle-timeout",
        "30s",
        "--payload",
        r#"{"sleep": 2}"#,
    ]);
    let own: i64 = own.ok().trim().parse().unwrap();
    exec_sql(
        &client,
        &format!("UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'w_idle', assigned_at = now() WHERE id = {own}"),
    )
    .await;
    let _ = client
        .execute("SELECT pg_notify('jrq_worker:w_idle', 'w_idle')", &[])
        .await;
    wait_status(&client, own, "completed").await;
    let show = db.run(&["show", &own.to_string()]).ok().to_string();
    assert!(show.contains("idle timeout: 30s"), "{show}");
}

#[tokio::test]
async fn the_next_attempt_gets_the_checkpoint_and_retry_from_scratch_clears_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let out = tempfile::tempdir().unwrap();
    let _w = worker(
        &db,
        "w_ck",
        &[],
        &[("EXEC_TEST_OUT", out.path().to_str().unwrap())],
    );
    let ck = json!({"session_id": "abc-123", "step": 3});
    let payload = json!({"checkpoint_attempt": {"1": ck}, "exit_attempt": {"1": 75}}).to_string();
    let id = assigned_task(&client, "w_ck", &payload).await;
    // Attempt 1 checkpoints and asks for a retry; the FakeAssigner-free way: assign again.
    wait_for(T, "attempt 1 to end", || async {
        status_of(&client, id).await == "pending"
    })
    .await;
    exec_sql(
        &client,
        &format!("UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'w_ck', assigned_at = now(), run_after = now() WHERE id = {id}"),
    )
    .await;
    let _ = client
        .execute("SELECT pg_notify('jrq_worker:w_ck', 'w_ck')", &[])
        .await;
    wait_status(&client, id, "completed").await;
    let start2: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join(format!("{id}.2.start.json"))).unwrap(),
    )
    .unwrap();
    let env_ck: Value =
        serde_json::from_str(start2["env"]["JR_CHECKPOINT"].as_str().unwrap()).unwrap();
    assert_eq!(env_ck, ck, "attempt 2 got attempt 1's checkpoint");
    let file_ck: Value = serde_json::from_str(start2["checkpoint_file"].as_str().unwrap()).unwrap();
    assert_eq!(file_ck, ck);
    assert_eq!(start2["checkpoint_file_mode"], "0o600");
    let start1: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join(format!("{id}.1.start.json"))).unwrap(),
    )
    .unwrap();
    assert!(
        start1["env"].get("JR_CHECKPOINT").is_none(),
        "attempt 1 had none"
    );
    // The file is gone with the attempt.
    let file = start2["env"]["JR_CHECKPOINT_FILE"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!std::path::Path::new(&file).exists(), "{file} left behind");
    let ev: i64 = client
        .query_one(
            "SELECT count(*) FROM jr_task_events WHERE task_id = $1 AND action = 'checkpoint'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ev, 1);
    // The checkpoint line is not part of the result or the log.
    let show = db.run(&["show", &id.to_string()]).ok().to_string();
    assert!(
        show.contains(r#"checkpoint:   {"session_id":"abc-123","step":3}"#),
        "{show}"
    );
    assert!(!db
        .run(&["logs", &id.to_string()])
        .ok()
        .contains("JRQ-CHECKPOINT"));

    // Failed for good, then retried from scratch: no checkpoint, an event says so.
    exec_sql(
        &client,
        &format!("UPDATE jr_work_queue SET status = 'failed' WHERE id = {id}"),
    )
    .await;
    db.run(&["retry", &id.to_string(), "--from-scratch"]).ok();
    let (has, cleared): (bool, i64) = {
        let r = client
            .query_one(
                "SELECT checkpoint IS NOT NULL, (SELECT count(*) FROM jr_task_events \
                 WHERE task_id = $1 AND action = 'checkpoint_cleared') \
                 FROM jr_work_queue WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!has);
    assert_eq!(cleared, 1);
}

#[tokio::test]
async fn usage_sums_across_attempts_and_budgets_stop_assignments() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let _w = worker(&db, "w_cost", &[], &[]);
    let _a = WorkerProc::assigner(
        &db.url,
        "assigner.cost",
        &["--poll-interval", "200ms", "--heartbeat-interval", "1s"],
    );
    let enqueue = |args: &[&str]| -> i64 {
        let mut all = vec!["enqueue"];
        all.extend_from_slice(args);
        db.run(&all).ok().trim().parse().unwrap()
    };

    // Two attempts, each reporting usage: the task's usage is their sum.
    let usage1 = json!({"model": "m1", "input_tokens": 100, "output_tokens": 10, "cost_usd": 0.25});
    let usage2 = json!({"model": "m1", "input_tokens": 50, "output_tokens": 5, "cost_usd": 0.5});
    let summed = enqueue(&[
        "--title",
        "two attempts",
        "--payload",
        &json!({"usage": [usage1, usage2], "exit_attempt": {"1": 75}}).to_string(),
    ]);
    wait_status(&client, summed, "completed").await;
    let show = db.run(&["show", &summed.to_string(), "--json"]).json();
    let u = &show["usage"][0];
    assert_eq!(u["key"], "m1");
    assert_eq!(u["input_tokens"], 300, "{show}");
    assert_eq!(u["output_tokens"], 30);
    assert!(
        (u["cost_usd"].as_f64().unwrap() - 1.5).abs() < 1e-9,
        "{show}"
    );
    let text = db.run(&["show", &summed.to_string()]).ok().to_string();
    assert!(
        text.contains("usage:        $1.50 spent, 300 tokens in, 30 out (m1)"),
        "{text}"
    );
    let status = db.run(&["status", "--json"]).json();
    assert!((status["usage_by_worker"][0]["cost_usd"].as_f64().unwrap() - 1.5).abs() < 1e-9);
    // The dashboard's task page shows it; /metrics counts it, also after a prune took the
    // task away (its usage is carried into the totals).
    let web = common::Web::start(&db.url, &[], &[]);
    let (code, page) = web.get(&format!("/tasks/{summed}"));
    assert_eq!(code, 200);
    assert!(
        page.contains("$1.50") && page.contains("task-usage"),
        "{page}"
    );
    drop(web);
    exec_sql(
        &client,
        &format!(
            "UPDATE jr_work_queue SET completed_at = now() - interval '2 days' WHERE id = {summed}"
        ),
    )
    .await;
    db.run(&["prune", "--older-than", "1d"]).ok();
    let left: i64 = client
        .query_one("SELECT count(*) FROM jr_task_usage", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the usage went with its task");
    let web = common::Web::start(&db.url, &[], &[]);
    let (_, metrics) = web.get("/metrics");
    let cost = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"jrq_usage_cost_usd_total{provider="",worker="w_cost"} "#))
        .unwrap_or_else(|| panic!("no usage cost sample:\n{metrics}"));
    assert!(
        (cost.trim().parse::<f64>().unwrap() - 1.5).abs() < 1e-9,
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"jrq_usage_tokens_total{provider="",worker="w_cost",direction="input"} 300"#
        ),
        "{metrics}"
    );
    drop(web);

    // A task over its own budget ends "over budget" and is not retried.
    let over = enqueue(&[
        "--title",
        "expensive",
        "--max-cost-usd",
        "0.5",
        "--max-attempts",
        "3",
        "--payload",
        &json!({"usage": [{"cost_usd": 0.3}, {"cost_usd": 0.3}], "sleep": 30}).to_string(),
    ]);
    wait_status(&client, over, "failed").await;
    let (err, attempts): (String, i32) = {
        let r = client
            .query_one(
                "SELECT error, attempts FROM jr_work_queue WHERE id = $1",
                &[&over],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        err,
        "over budget: $0.60 spent of the task's $0.50 (not retried)"
    );
    assert_eq!(attempts, 1);

    // A run's budget: once its tasks' cost reaches it, nothing more of it is assigned,
    // and its waiting tasks say why.
    let run = db
        .run(&[
            "runs",
            "create",
            "--name",
            "budgeted",
            "--max-cost-usd",
            "1",
        ])
        .ok()
        .trim()
        .to_string();
    let costly = json!({"usage": [{"cost_usd": 0.6, "model": "m2"}]}).to_string();
    let first = enqueue(&["--title", "r1", "--run", &run, "--payload", &costly]);
    wait_status(&client, first, "completed").await;
    let second = enqueue(&["--title", "r2", "--run", &run, "--payload", &costly]);
    wait_status(&client, second, "completed").await;
    let third = enqueue(&["--title", "r3", "--run", &run, "--payload", &costly]);
    let show = db.run(&["show", &third.to_string()]).ok().to_string();
    let waiting = show
        .lines()
        .find(|l| l.contains("waiting:"))
        .unwrap_or_else(|| panic!("no waiting line: {show}"));
    assert!(
        waiting.contains("over budget: $1.20 spent of the run's $1.00"),
        "{waiting}"
    );
    let runs = db.run(&["runs", "list"]).ok().to_string();
    assert!(runs.contains("$1.20 of $1.00"), "{runs}");
    // Held: still pending after a later task outside the run was assigned and done.
    let later = enqueue(&["--title", "outside the run"]);
    wait_status(&client, later, "completed").await;
    assert_eq!(status_of(&client, third).await, "pending");
    // A higher budget lets it go.
    let raised = db.run(&["runs", "budget", &run, "5"]).ok().to_string();
    assert!(raised.contains("budget pause ended"), "{raised}");
    wait_status(&client, third, "completed").await;

    // A provider's daily budget: reached, the provider is paused until midnight UTC.
    db.run(&[
        "providers",
        "set",
        "claude",
        "--max-cost-usd-per-day",
        "0.5",
    ])
    .ok();
    let worker_claude = worker(&db, "w_claude", &["--provider", "claude"], &[]);
    let p1 = enqueue(&[
        "--title",
        "c1",
        "--provider",
        "claude",
        "--payload",
        &costly,
    ]);
    wait_status(&client, p1, "completed").await;
    let p2 = enqueue(&[
        "--title",
        "c2",
        "--provider",
        "claude",
        "--payload",
        &costly,
    ]);
    let show = db.run(&["show", &p2.to_string()]).ok().to_string();
    assert!(
        show.contains("over budget: $0.60 spent today (UTC) of its $0.50 a day"),
        "{show}"
    );
    let list = db.run(&["providers", "list"]).ok().to_string();
    assert!(list.contains("$0.60 of $0.50"), "{list}");
    drop(worker_claude);
}

#[tokio::test]
async fn a_handler_that_reports_nothing_is_never_idle() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // `sleep:` writes nothing and reports nothing: an idle timeout cannot judge it.
    let _w = WorkerProc::start(
        &db.url,
        "w_quiet",
        &[
            "--exec",
            "sleep:2s",
            "--idle-timeout",
            "1s",
            "--poll-interval",
            "200ms",
        ],
        &[],
    );
    let id = assigned_task(&client, "w_quiet", "{}").await;
    wait_status(&client, id, "completed").await;
}

#[tokio::test]
async fn a_checkpoint_postgresql_refuses_is_skipped_and_the_others_are_stored() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let _w = worker(&db, "w_cks", &["--capacity", "2"], &[]);
    let release = tempfile::tempdir().unwrap();
    let gate = release.path().join("go");
    let gate = gate.to_str().unwrap();
    // Both checkpoint, then wait together: their checkpoints go in one batch.
    // serde_json reads 1e-20000 (as 0), jsonb refuses it (beyond numeric's range).
    let bad = assigned_task(
        &client,
        "w_cks",
        &json!({"checkpoint_raw": r#"{"x": 1e-20000}"#, "wait_file": gate}).to_string(),
    )
    .await;
    let good = assigned_task(
        &client,
        "w_cks",
        &json!({"checkpoint": {"step": 7}, "wait_file": gate}).to_string(),
    )
    .await;
    wait_for(T, "the good checkpoint", || async {
        client
            .query_one(
                "SELECT checkpoint IS NOT NULL FROM jr_work_queue WHERE id = $1",
                &[&good],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    std::fs::write(gate, "").unwrap();
    wait_status(&client, bad, "completed").await;
    wait_status(&client, good, "completed").await;
    let r = client
        .query_one(
            "SELECT (SELECT checkpoint FROM jr_work_queue WHERE id = $1) IS NULL, \
                    (SELECT checkpoint->>'step' FROM jr_work_queue WHERE id = $2)",
            &[&bad, &good],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0), "the refused checkpoint is not stored");
    assert_eq!(r.get::<_, String>(1), "7");
}
