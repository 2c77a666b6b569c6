//! The `jrq` admin CLI, run as the real binary against a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{count, exec, s, temp_file, TestDb};
use serde_json::Value;
use tokio_postgres::Client;

fn id_of(out: &common::Run) -> i64 {
    out.ok()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {out:#?}"))
}

// ---------------------------------------------------------------------------------------
// enqueue
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn enqueue_stores_every_option() {
    let db = TestDb::new().await;
    let run = db.run(&["runs", "create", "--name", "nightly"]);
    let run_id = run.ok().trim().to_string();
    let out = db.run(&[
        "enqueue",
        "--title",
        "Fix login bug",
        "--description",
        "see ticket",
        "--payload",
        r#"{"prompt":"fix it","n":[1,2]}"#,
        "--priority",
        "2",
        "--urgent",
        "--provider",
        "claude",
        "--target",
        "it_triad_jr",
        "--run",
        &run_id,
        "--max-attempts",
        "5",
        "--timeout",
        "90s",
        "--delay",
        "10m",
        "--unique-key",
        "ticket-42",
        "--source",
        "ci",
        "--created-by",
        "alice",
    ]);
    let id = id_of(&out);
    let t = db.run(&["show", &id.to_string(), "--json"]).json();
    let task = &t["task"];
    assert_eq!(task["title"], "Fix login bug");
    assert_eq!(task["description"], "see ticket");
    assert_eq!(task["payload"]["prompt"], "fix it");
    assert_eq!(task["payload"]["n"][1], 2);
    assert_eq!(task["priority"], 2);
    assert_eq!(task["sacred_fire_priority"], true);
    assert_eq!(task["provider"], "claude");
    assert_eq!(task["target_jr"], "it_triad_jr");
    assert_eq!(task["run_id"], run_id.as_str());
    assert_eq!(task["max_attempts"], 5);
    assert_eq!(task["timeout_ms"], 90_000);
    assert_eq!(task["unique_key"], "ticket-42");
    assert_eq!(task["source"], "ci");
    assert_eq!(task["created_by"], "alice");
    assert_eq!(task["status"], "pending");
    let client = db.client().await;
    let delayed: bool = client
        .query_one(
            "SELECT run_after BETWEEN created_at + interval '9 minutes' \
                                  AND created_at + interval '11 minutes' \
             FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(delayed, "--delay 10m sets run_after");

    let at = db.run(&[
        "enqueue",
        "--title",
        "later",
        "--run-at",
        "2030-01-02T03:04:05Z",
    ]);
    let id = id_of(&at);
    let t = db.run(&["show", &id.to_string(), "--json"]).json();
    assert_eq!(t["task"]["run_after"], "2030-01-02T03:04:05Z");
}

#[tokio::test]
async fn enqueue_takes_options_from_jrq_variables_and_payload_files() {
    let db = TestDb::new().await;
    let out = db
        .jrq()
        .args(["enqueue"])
        .env("JRQ_TITLE", "from env")
        .env("JRQ_PRIORITY", "1")
        .env("JRQ_PROVIDER", "codex")
        .output()
        .unwrap();
    let id = id_of(&common::Run::from(out));
    let t = db.run(&["show", &id.to_string(), "--json"]).json();
    assert_eq!(t["task"]["title"], "from env");
    assert_eq!(t["task"]["priority"], 1);
    assert_eq!(t["task"]["provider"], "codex");

    let (_dir, path) = temp_file("p.json", r#"{"from":"file"}"#);
    let id = id_of(&db.run(&["enqueue", "--title", "f", "--payload-file", s(&path)]));
    let t = db.run(&["show", &id.to_string(), "--json"]).json();
    assert_eq!(t["task"]["payload"]["from"], "file");

    let out = db.run_with_stdin(
        &["enqueue", "--title", "stdin", "--payload-file", "-"],
        r#"{"from":"stdin"}"#,
    );
    let id = id_of(&out);
    let t = db.run(&["show", &id.to_string(), "--json"]).json();
    assert_eq!(t["task"]["payload"]["from"], "stdin");
}

#[tokio::test]
async fn enqueue_batch_adds_every_line_in_bulk() {
    let db = TestDb::new().await;
    let mut lines = String::new();
    for i in 0..1200 {
        lines.push_str(&format!(
            "{{\"title\":\"t{i}\",\"priority\":{},\"payload\":{{\"i\":{i}}}}}\n",
            i % 10
        ));
    }
    lines.push('\n'); // blank lines are skipped
    let (_dir, path) = temp_file("batch.jsonl", &lines);
    let out = db.run(&["enqueue", "--batch", s(&path)]);
    assert!(out.ok().contains("added 1200 task(s)"), "{out:#?}");
    let client = db.client().await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM jr_work_queue").await,
        1200
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE payload->>'i' = substr(title, 2)"
        )
        .await,
        1200
    );

    let out = db.run_with_stdin(
        &["enqueue", "--batch", "-"],
        "{\"title\":\"a\",\"unique_key\":\"k1\"}\n{\"title\":\"b\"}\n",
    );
    assert!(out.ok().contains("added 2 task(s)"), "{out:#?}");
}

#[tokio::test]
async fn a_batch_with_bad_lines_adds_nothing_unless_asked() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, unique_key) VALUES ('holder', 'env-x')",
    )
    .await;
    let lines = [
        r#"{"title":"good one"}"#,
        r#"{"title":"broken""#,
        r#"{"title":"neg","priority":-3}"#,
        r#"{"title":"typo","priorty":1}"#,
        r#"{"title":"dup in db","unique_key":"env-x"}"#,
        r#"{"title":"first k","unique_key":"k"}"#,
        r#"{"title":"second k","unique_key":"k"}"#,
        r#"{"title":"no run","run":"00000000-0000-4000-8000-000000000000"}"#,
        r#"{"title":"bad timeout","timeout":"soon"}"#,
        r#"{"title":"good two","delay":"1s"}"#,
    ]
    .join("\n");
    let (_dir, path) = temp_file("batch.jsonl", &lines);
    let before = db.fingerprint().await;
    let out = db.run(&["enqueue", "--batch", s(&path)]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    for expected in [
        "line 2: not valid JSON",
        "line 3: priority -3 is negative",
        "line 4: unknown field `priorty`",
        "line 5: duplicate unique key 'env-x'",
        "line 7: duplicate unique key 'k' (repeated in this batch)",
        "line 8: there is no run 00000000-0000-4000-8000-000000000000",
        "line 9: timeout: 'soon' is not a duration",
        "7 of 10 lines rejected, nothing added",
        "--skip-invalid",
    ] {
        assert!(
            out.stderr.contains(expected),
            "missing {expected:?}: {out:#?}"
        );
    }
    assert_eq!(
        db.fingerprint().await,
        before,
        "a rejected batch changes nothing"
    );

    let out = db.run(&["enqueue", "--batch", s(&path), "--skip-invalid"]);
    assert!(
        out.ok()
            .contains("added 3 task(s); skipped 7 rejected line(s)"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("line 2: not valid JSON"));
    let titles: Vec<String> = client
        .query(
            "SELECT title FROM jr_work_queue WHERE title <> 'holder' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(titles, ["good one", "first k", "good two"]);
}

// ---------------------------------------------------------------------------------------
// status, tasks, show, workers
// ---------------------------------------------------------------------------------------

/// A queue with tasks in every state and a small fleet.
async fn populate(client: &Client) {
    exec(
        client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr, provider, completed_at, created_at) VALUES
           ('p1', 'pending', NULL, 'claude', NULL, now() - interval '5 minutes'),
           ('p2', 'pending', NULL, '', NULL, now()),
           ('a1', 'assigned', 'w1', '', NULL, now()),
           ('r1', 'in_progress', 'w1', 'claude', NULL, now()),
           ('c1', 'completed', 'w1', '', now() - interval '1 hour', now()),
           ('c2', 'completed', 'w2', '', now() - interval '2 hours', now()),
           ('c3', 'completed', 'w2', '', now() - interval '3 hours', now()),
           ('f1', 'failed', 'w2', '', now() - interval '1 hour', now()),
           ('f_old', 'failed', 'w2', '', now() - interval '3 days', now()),
           ('x1', 'cancelled', NULL, '', now(), now());
         UPDATE jr_work_queue SET run_after = created_at;
         INSERT INTO jr_work_queue (title, run_after) VALUES ('later', now() + interval '1 hour');
         INSERT INTO jr_status (jr_name, kind, host, pid, capacity, current_load, is_online, status, last_seen, providers) VALUES
           ('w1', 'worker', 'h1', 101, 4, 2, true, 'busy', now(), '{claude}'),
           ('w2', 'worker', 'h1', 102, 2, 0, true, 'idle', now(), '{}'),
           ('w3', 'worker', 'h2', 103, 1, 0, true, 'idle', now() - interval '1 hour', '{}'),
           ('w4', 'worker', 'h2', 104, 1, 0, false, 'offline', now() - interval '2 days', '{}'),
           ('assigner-h1', 'assigner', 'h1', 100, 1, 0, true, 'idle', now(), '{}');
         UPDATE jr_status SET consecutive_failures = 3, circuit_open_until = now() + interval '1 minute',
                circuit_reason = '3 failures in a row' WHERE jr_name = 'w2';",
    )
    .await;
}

#[tokio::test]
async fn status_reports_tasks_workers_oldest_pending_and_failure_rate() {
    let db = TestDb::new().await;
    let client = db.client().await;
    populate(&client).await;
    let j = db.run(&["status", "--json"]).json();
    assert_eq!(j["tasks"]["pending"], 3);
    assert_eq!(j["tasks"]["assigned"], 1);
    assert_eq!(j["tasks"]["in_progress"], 1);
    assert_eq!(j["tasks"]["completed"], 3);
    assert_eq!(j["tasks"]["failed"], 2);
    assert_eq!(j["tasks"]["cancelled"], 1);
    assert_eq!(j["total"], 11);
    assert_eq!(j["pending_delayed"], 1);
    let age = j["oldest_pending_age_s"].as_f64().unwrap();
    assert!(
        (299.0..400.0).contains(&age),
        "oldest pending ~5 min: {age}"
    );
    assert_eq!(j["completed_in_window"], 3);
    assert_eq!(
        j["failed_in_window"], 1,
        "the 3-day-old failure is outside 24h"
    );
    assert_eq!(j["failure_rate"], 0.25);
    let w = &j["workers"];
    assert_eq!(w["online"], 2);
    assert_eq!(w["busy"], 1);
    assert_eq!(w["idle"], 1);
    assert_eq!(w["offline"], 2);
    assert_eq!(w["circuit_open"], 1);
    assert_eq!(w["capacity"], 6);
    assert_eq!(
        w["load"], 1,
        "counted from the tasks, not the last heartbeat"
    );
    assert_eq!(w["assigners"], 1);

    let text = db.run(&["status"]);
    let text = text.ok();
    for expected in [
        "pending (1 delayed)",
        "oldest pending:  5m",
        "3 completed, 1 failed, failure rate 25.0%",
        "2 online (1 busy, 1 idle), 2 offline, 1 circuit open; load 1/6",
        "1 alive",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let j = db.run(&["status", "--json", "--window", "4d"]).json();
    assert_eq!(j["failed_in_window"], 2);
}

#[tokio::test]
async fn tasks_lists_with_filters() {
    let db = TestDb::new().await;
    let client = db.client().await;
    populate(&client).await;
    let run = db.run(&["runs", "create"]).ok().trim().to_string();
    let id = id_of(&db.run(&["enqueue", "--title", "in run", "--run", &run]));

    let titles = |j: Value| -> Vec<String> {
        j.as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap().to_string())
            .collect()
    };
    let all = db.run(&["tasks", "--json"]).json();
    assert_eq!(all.as_array().unwrap().len(), 12);
    assert_eq!(all[0]["id"], id, "newest first");
    assert_eq!(
        titles(db.run(&["tasks", "--status", "completed", "--json"]).json()),
        ["c3", "c2", "c1"]
    );
    assert_eq!(
        titles(db.run(&["tasks", "--worker", "w1", "--json"]).json()),
        ["c1", "r1", "a1"]
    );
    assert_eq!(
        titles(db.run(&["tasks", "--provider", "claude", "--json"]).json()),
        ["r1", "p1"]
    );
    assert_eq!(
        titles(db.run(&["tasks", "--run", &run, "--json"]).json()),
        ["in run"]
    );
    assert_eq!(
        db.run(&["tasks", "--limit", "2", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let text = db.run(&["tasks", "--status", "in_progress"]);
    let text = text.ok();
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("r1") && text.contains("in_progress") && text.contains("w1"));
    assert!(db
        .run(&["tasks", "--status", "failed", "--worker", "nobody"])
        .ok()
        .contains("no tasks"));
}

#[tokio::test]
async fn show_prints_the_task_and_its_timeline() {
    let db = TestDb::new().await;
    let id = id_of(&db.run(&["enqueue", "--title", "timeline", "--payload", r#"{"a":1}"#]));
    db.run(&["cancel", &id.to_string()]).ok();
    db.run(&["retry", &id.to_string()]).ok();
    let text = db.run(&["show", &id.to_string()]);
    let text = text.ok();
    let header = format!("task {id}: timeline");
    for expected in [
        header.as_str(),
        "status:       pending",
        r#"payload:      {"a":1}"#,
        "timeline:",
        "created",
        "cancelled",
        "pending -> cancelled",
        "retried",
        "cancelled -> pending",
    ] {
        assert!(text.contains(expected), "missing {expected:?}:\n{text}");
    }
    let j = db.run(&["show", &id.to_string(), "--json"]).json();
    let events = j["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["action"], "cancelled");
    assert_eq!(events[0]["actor"], "jrq");
    assert_eq!(events[1]["action"], "retried");
    assert_eq!(events[1]["from_status"], "cancelled");
    assert_eq!(events[1]["to_status"], "pending");
}

#[tokio::test]
async fn workers_lists_the_registry() {
    let db = TestDb::new().await;
    let client = db.client().await;
    populate(&client).await;
    let j = db.run(&["workers", "--json"]).json();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 5);
    let by_name = |n: &str| rows.iter().find(|r| r["jr_name"] == n).unwrap().clone();
    assert_eq!(by_name("w1")["alive"], true);
    assert_eq!(by_name("w1")["providers"][0], "claude");
    assert_eq!(by_name("w3")["alive"], false, "silent for an hour");
    assert_eq!(by_name("w2")["circuit_reason"], "3 failures in a row");
    assert!(by_name("w2")["circuit_open_until"].is_string());
    let text = db.run(&["workers"]);
    let text = text.ok();
    assert!(
        text.contains("w1") && text.contains("1/4") && text.contains("claude"),
        "{text}"
    );
    assert!(text.contains("open until"), "{text}");
    let w3 = text.lines().find(|l| l.starts_with("w3")).unwrap();
    assert!(w3.contains("offline"), "{w3}");
}

// ---------------------------------------------------------------------------------------
// retry, cancel, runs, prune
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_puts_failed_tasks_back_with_a_fresh_budget() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (id, title, status, attempts, error, assigned_jr, completed_at, unique_key) VALUES
           (1, 'f1', 'failed', 3, 'boom', 'w1', now(), NULL),
           (2, 'f2', 'failed', 3, 'boom', 'w1', now(), 'k'),
           (3, 'f3', 'failed', 3, 'boom', 'w1', now(), 'k'),
           (4, 'f4', 'failed', 3, 'boom', 'w1', now(), 'held'),
           (5, 'p5', 'pending', 0, NULL, NULL, NULL, 'held'),
           (6, 'f6', 'failed', 3, 'boom', 'w1', now(), NULL)",
    )
    .await;
    let out = db.run(&["retry", "1"]);
    assert!(out.ok().contains("task 1 is pending again"), "{out:#?}");
    let row = client
        .query_one(
            "SELECT status, attempts, error, assigned_jr, completed_at FROM jr_work_queue WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(row.get::<_, Option<String>>(3), None);
    assert_eq!(row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(4), None);

    let out = db.run(&["retry", "--all-failed"]);
    assert!(
        out.ok()
            .contains("2 failed task(s) pending again; 2 left failed"),
        "{out:#?}"
    );
    let pending: Vec<i64> = client
        .query(
            "SELECT id FROM jr_work_queue WHERE status = 'pending' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        pending,
        [1, 3, 5, 6],
        "the newest failed task per key is retried"
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_task_events WHERE action = 'retried'"
        )
        .await,
        3
    );
    // A failed task whose key an unfinished task holds cannot be retried.
    let before = db.fingerprint().await;
    db.run(&["retry", "4"])
        .fails(1, "another unfinished task holds its unique key");
    db.run(&["retry", "5"]).fails(
        1,
        "task 5 is pending: only failed or cancelled tasks can be retried",
    );
    assert_eq!(db.fingerprint().await, before);
}

#[tokio::test]
async fn cancel_ends_queued_tasks_at_once_and_asks_the_worker_for_running_ones() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (id, title, status, assigned_jr, attempts) VALUES
           (1, 'pending', 'pending', NULL, 0),
           (2, 'assigned', 'assigned', 'w1', 0),
           (3, 'running', 'in_progress', 'w1', 1),
           (4, 'done', 'completed', 'w1', 1)",
    )
    .await;
    let cfg = db.config();
    let (_l, mut notes) = jrq::db::listen::listen(&cfg, &[&jrq::db::worker_channel("w1")])
        .await
        .unwrap();

    assert!(db.run(&["cancel", "1"]).ok().contains("task 1 cancelled"));
    assert!(db.run(&["cancel", "2"]).ok().contains("task 2 cancelled"));
    let out = db.run(&["cancel", "3"]);
    assert!(
        out.ok().contains("its worker was asked to end it"),
        "{out:#?}"
    );
    let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("the worker is notified")
        .unwrap();
    assert_eq!(
        n.payload(),
        "cancel:w1",
        "a cancel, not an assignment, for w1"
    );
    assert!(db
        .run(&["cancel", "3"])
        .ok()
        .contains("a cancel was already requested"));

    let rows: Vec<(String, bool, bool)> = client
        .query(
            "SELECT status, cancel_requested_at IS NOT NULL, completed_at IS NOT NULL \
             FROM jr_work_queue ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        [
            ("cancelled".into(), true, true),
            ("cancelled".into(), true, true),
            ("in_progress".into(), true, false),
            ("completed".into(), false, false),
        ]
    );
    let before = db.fingerprint().await;
    db.run(&["cancel", "4"])
        .fails(1, "task 4 is already completed: there is nothing to cancel");
    assert_eq!(db.fingerprint().await, before);
    let actions: Vec<String> = client
        .query("SELECT action FROM jr_task_events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actions, ["cancelled", "cancelled", "cancel_requested"]);
}

#[tokio::test]
async fn runs_are_created_listed_and_finished() {
    let db = TestDb::new().await;
    let id = db.run(&["runs", "create", "--name", "lead list", "--auto-complete"]);
    let id = id.ok().trim().to_string();
    uuid::Uuid::parse_str(&id).expect("prints the run id");
    db.run(&["enqueue", "--title", "t1", "--run", &id]).ok();
    db.run(&["enqueue", "--title", "t2", "--run", &id]).ok();
    let j = db.run(&["runs", "list", "--json"]).json();
    assert_eq!(j[0]["id"], id.as_str());
    assert_eq!(j[0]["name"], "lead list");
    assert_eq!(j[0]["status"], "active");
    assert_eq!(j[0]["auto_complete"], true);
    assert_eq!(j[0]["tasks_total"], 2);
    assert_eq!(j[0]["tasks_unfinished"], 2);

    let cfg = db.config();
    let (_l, mut notes) = jrq::db::listen::listen(&cfg, &[jrq::db::CHANNEL_RUNS])
        .await
        .unwrap();
    assert!(db
        .run(&["runs", "set", &id, "completed"])
        .ok()
        .contains("is completed"));
    let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("run workers are notified")
        .unwrap();
    assert_eq!(n.payload(), id);
    let j = db.run(&["runs", "list", "--json"]).json();
    assert_eq!(j[0]["status"], "completed");
    assert!(j[0]["finished_at"].is_string());
    assert_eq!(
        db.run(&["runs", "list", "--status", "active", "--json"])
            .json(),
        serde_json::json!([])
    );
    let text = db.run(&["runs", "list"]);
    assert!(text.ok().contains("lead list"));
    db.run(&["runs", "set", &id, "active"]).ok();
    let j = db.run(&["runs", "list", "--json"]).json();
    assert!(j[0]["finished_at"].is_null());
}

#[tokio::test]
async fn prune_deletes_old_finished_tasks_and_their_events() {
    let db = TestDb::new().await;
    let client = db.client().await;
    exec(
        &client,
        "INSERT INTO jr_work_queue (id, title, status, completed_at, created_at) VALUES
           (1, 'old done', 'completed', now() - interval '8 days', now() - interval '9 days'),
           (2, 'old failed', 'failed', now() - interval '8 days', now() - interval '9 days'),
           (3, 'old cancelled', 'cancelled', now() - interval '8 days', now() - interval '9 days'),
           (4, 'new done', 'completed', now() - interval '1 day', now() - interval '2 days'),
           (5, 'old pending', 'pending', NULL, now() - interval '30 days');
         INSERT INTO jr_task_events (task_id, actor, action) VALUES
           (1, 'w', 'started'), (1, 'w', 'completed'), (2, 'w', 'failed'), (4, 'w', 'completed'),
           (5, 'jrq', 'retried');",
    )
    .await;
    // A dry run counts what would go and changes nothing.
    let before = db.fingerprint().await;
    let j = db
        .run(&["prune", "--older-than", "7d", "--dry-run", "--json"])
        .json();
    assert_eq!(
        (j["tasks"].as_i64(), j["events"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(j["dry_run"], true);
    let out = db.run(&["prune", "--older-than", "7d", "--dry-run"]);
    assert!(
        out.ok().contains(
            "would prune 3 task(s), 3 event(s) and 0 chunk(s) of output (dry run: nothing deleted)"
        ),
        "{out:#?}"
    );
    assert_eq!(db.fingerprint().await, before);
    let j = db.run(&["prune", "--older-than", "7d", "--json"]).json();
    assert_eq!(j["tasks"], 3);
    assert_eq!(j["events"], 3);
    let left: Vec<i64> = client
        .query("SELECT id FROM jr_work_queue ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [4, 5]);
    assert_eq!(
        count(&client, "SELECT count(*) FROM jr_task_events").await,
        2
    );
    let out = db.run(&["prune", "--older-than", "7d"]);
    assert!(out
        .ok()
        .contains("pruned 0 task(s), 0 event(s) and 0 chunk(s) of output"));
}

// ---------------------------------------------------------------------------------------
// bad input: one clear line, the right exit status, nothing changed
// ---------------------------------------------------------------------------------------

/// Runs `args`, checks the exit status and the first stderr line, and that the database
/// is unchanged.
async fn refused(db: &TestDb, args: &[&str], code: i32, needle: &str) {
    let before = db.fingerprint().await;
    db.run(args).fails(code, needle);
    assert_eq!(
        db.fingerprint().await,
        before,
        "{args:?} changed the database"
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_with_exit_2() {
    let db = TestDb::new().await;
    db.run(&["enqueue", "--title", "existing"]).ok();
    let run = db.run(&["runs", "create"]).ok().trim().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["enqueue", "--title", "x", "--payload", "{bad"],
            "payload is not valid JSON",
        ),
        (
            &["enqueue", "--title", "x", "--priority", "-1"],
            "priority -1 is negative",
        ),
        (
            &["enqueue", "--title", "x", "--priority", "high"],
            "priority 'high' is not a number",
        ),
        (
            &["enqueue", "--title", "x", "--timeout", "soon"],
            "'soon' is not a duration",
        ),
        (
            &["enqueue", "--title", "x", "--timeout", "0s"],
            "'0s' is zero",
        ),
        (
            &["enqueue", "--title", "x", "--delay", "5"],
            "'5' is not a duration",
        ),
        (
            &["enqueue", "--title", "x", "--run-at", "tomorrow"],
            "'tomorrow' is not a timestamp",
        ),
        (
            &["enqueue", "--title", "x", "--max-attempts", "0"],
            "'0' is not a whole number of at least 1",
        ),
        (
            &["enqueue", "--title", "x", "--target", "no such/worker"],
            "worker name 'no such/worker' contains",
        ),
        (&["enqueue", "--title", ""], "title is empty"),
        (
            &["enqueue", "--titel", "x"],
            "unexpected argument '--titel'",
        ),
        (
            &["tasks", "--status", "done"],
            "'done' is not a task status",
        ),
        (&["tasks", "--limit", "-5"], "'-5' is not a limit"),
        (&["show", "abc"], "'abc' is not a task id"),
        (&["cancel", "0"], "'0' is not a task id"),
        (&["retry"], "required"),
        (
            &["runs", "set", &run, "finished"],
            "'finished' is not a run status",
        ),
        (&["prune", "--older-than", "3"], "'3' is not a duration"),
        (
            &["status", "--window", "yesterday"],
            "'yesterday' is not a duration",
        ),
    ];
    for (args, needle) in cases {
        refused(&db, args, 2, needle).await;
    }
    // A payload file that is not JSON, from a file and from stdin.
    let (_dir, path) = temp_file("p.json", "{not json");
    refused(
        &db,
        &["enqueue", "--title", "x", "--payload-file", s(&path)],
        2,
        "is not valid JSON",
    )
    .await;
    let before = db.fingerprint().await;
    db.run_with_stdin(&["enqueue", "--title", "x", "--payload-file", "-"], "nope")
        .fails(2, "payload in standard input is not valid JSON");
    assert_eq!(db.fingerprint().await, before);
}

#[tokio::test]
async fn unknown_ids_and_conflicts_are_refused_with_exit_1() {
    let db = TestDb::new().await;
    db.run(&["enqueue", "--title", "holder", "--unique-key", "env-x"])
        .ok();
    let missing_run = "0f0f0f0f-0000-4000-8000-000000000000";
    let cases: &[(&[&str], &str)] = &[
        (&["show", "999"], "there is no task 999"),
        (&["retry", "999"], "there is no task 999"),
        (&["cancel", "999"], "there is no task 999"),
        (
            &["enqueue", "--title", "x", "--run", missing_run],
            "there is no run 0f0f0f0f",
        ),
        (
            &["enqueue", "--title", "x", "--run", "42"],
            "there is no run '42' (by id, id prefix or name)",
        ),
        (
            &["runs", "set", missing_run, "completed"],
            "there is no run 0f0f0f0f",
        ),
        (
            &["enqueue", "--title", "again", "--unique-key", "env-x"],
            "duplicate unique key 'env-x': task 1 with that key is not finished yet",
        ),
    ];
    for (args, needle) in cases {
        refused(&db, args, 1, needle).await;
    }
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    for args in [&["status"][..], &["enqueue", "--title", "x"], &["migrate"]] {
        let out = common::Run::from(
            common::bin("jrq")
                .args(args)
                .env("DATABASE_URL", "postgres://jrq:s3cretpw@127.0.0.1:1/jrq")
                .output()
                .unwrap(),
        );
        out.fails(
            1,
            "cannot connect to PostgreSQL at 127.0.0.1:1 (database 'jrq')",
        );
        assert!(out.stderr.contains("check DATABASE_URL"), "{out:#?}");
        assert!(!out.stderr.contains("s3cretpw"), "{out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    }
    let out = common::Run::from(
        common::bin("jrq")
            .arg("status")
            .env("DATABASE_URL", "postgres://jrq:s3cretpw@db:notaport/jrq")
            .output()
            .unwrap(),
    );
    out.fails(2, "DATABASE_URL is not a valid PostgreSQL address");
    assert!(!out.stderr.contains("s3cretpw"), "{out:#?}");
    // The libpq variables work when DATABASE_URL is absent.
    let out = common::Run::from(
        common::bin("jrq")
            .arg("status")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "1")
            .env("PGPASSWORD", "s3cretpw")
            .env("PGDATABASE", "elsewhere")
            .output()
            .unwrap(),
    );
    out.fails(
        1,
        "cannot connect to PostgreSQL at 127.0.0.1:1 (database 'elsewhere')",
    );
    assert!(!out.stderr.contains("s3cretpw"), "{out:#?}");
}

#[tokio::test]
async fn a_database_without_the_schema_says_run_migrate() {
    let db = TestDb::empty().await;
    for args in [
        &["status"][..],
        &["enqueue", "--title", "x"],
        &["tasks"],
        &["workers"],
        &["runs", "list"],
    ] {
        refused(&db, args, 1, "has no jrq schema: run `jrq migrate` first").await;
    }
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let newer = jrq::db::migrate::latest_version() + 1;
    client
        .execute(
            "INSERT INTO jrq_schema_history (version, name, applied_on, checksum) \
             VALUES ($1, 'from_the_future', '2030-01-01', '0')",
            &[&newer],
        )
        .await
        .unwrap();
    let needle = format!("database schema is at version {newer}, newer than this jrq knows");
    refused(&db, &["status"], 1, &needle).await;
    refused(&db, &["enqueue", "--title", "x"], 1, &needle).await;
    refused(&db, &["migrate"], 1, &needle).await;
}

#[tokio::test]
async fn help_is_available_for_every_subcommand() {
    for sub in [
        "migrate", "enqueue", "status", "tasks", "show", "retry", "cancel", "runs", "workers",
        "prune",
    ] {
        let out = common::Run::from(common::bin("jrq").args([sub, "--help"]).output().unwrap());
        assert!(out.ok().contains("Usage: jrq"), "{sub}: {out:#?}");
    }
    let out = common::Run::from(
        common::bin("jrq")
            .args(["enqueue", "--help"])
            .output()
            .unwrap(),
    );
    let help = out.ok().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("JRQ_PRIORITY"), "{help}");
    assert!(help.contains("[default: 5]"), "{help}");
}

// ---------------------------------------------------------------------------------------
// conventions: booleans, pipes, zones, one snapshot
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn boolean_variables_take_the_usual_spellings() {
    let db = TestDb::new().await;
    for (value, urgent) in [
        ("1", true),
        ("yes", true),
        ("on", true),
        ("0", false),
        ("off", false),
        ("no", false),
    ] {
        let out = common::Run::from(
            db.jrq()
                .args(["enqueue", "--title", value])
                .env("JRQ_URGENT", value)
                .output()
                .unwrap(),
        );
        let id = id_of(&out);
        let t = db.run(&["show", &id.to_string(), "--json"]).json();
        assert_eq!(
            t["task"]["sacred_fire_priority"], urgent,
            "JRQ_URGENT={value}"
        );
    }
    let before = db.fingerprint().await;
    let out = common::Run::from(
        db.jrq()
            .args(["enqueue", "--title", "x"])
            .env("JRQ_URGENT", "maybe")
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("'maybe'"), "{out:#?}");
    assert_eq!(db.fingerprint().await, before);
}

#[tokio::test]
async fn long_cells_are_whole_in_pipes_and_with_wide_and_cut_only_on_a_terminal() {
    let db = TestDb::new().await;
    let title = format!("{} the end", "x".repeat(120));
    let id = id_of(&db.run(&["enqueue", "--title", &title]));
    db.run(&["cancel", &id.to_string()]).ok();
    // Tests read stdout through a pipe: nothing is cut.
    let text = db.run(&["tasks"]).ok().to_string();
    assert!(text.contains(&title), "{text}");
    // On a terminal (script(1) gives one) the table fits; --wide prints it whole.
    let on_tty = |args: &str| {
        let out = std::process::Command::new("script")
            .args([
                "-qec",
                &format!("{} {args}", common::bin_path("jrq")),
                "/dev/null",
            ])
            .env("DATABASE_URL", &db.url)
            .output()
            .expect("script (util-linux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cut = on_tty("tasks");
    assert!(cut.contains('…') && !cut.contains("the end"), "{cut}");
    let wide = on_tty("tasks --wide");
    assert!(wide.contains(&title), "{wide}");
}

#[tokio::test]
async fn times_carry_their_zone_and_follow_tz() {
    let db = TestDb::new().await;
    let id = id_of(&db.run(&["enqueue", "--title", "zoned"]));
    let show = |tz: &str| {
        common::Run::from(
            db.jrq()
                .args(["show", &id.to_string()])
                .env("TZ", tz)
                .output()
                .unwrap(),
        )
        .ok()
        .to_string()
    };
    let utc = show("UTC");
    let created = utc.lines().find(|l| l.contains("created:")).unwrap();
    assert!(created.contains(" UTC by "), "{created}");
    let tokyo = show("JST-9");
    let created = tokyo.lines().find(|l| l.contains("created:")).unwrap();
    assert!(created.contains(" +09:00 by "), "{created}");
    let event = tokyo.lines().find(|l| l.contains(" created ")).unwrap();
    assert!(event.contains("+09:00"), "{tokyo}");
}

#[tokio::test]
async fn workers_state_and_load_come_from_one_snapshot() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // The rows say busy and idle; the tasks say the opposite: the tasks win, everywhere.
    exec(
        &client,
        "INSERT INTO jr_status (jr_name, kind, host, pid, capacity, current_load, is_online, status, last_seen) VALUES
           ('says-busy', 'worker', 'h1', 101, 2, 1, true, 'busy', now()),
           ('says-idle', 'worker', 'h1', 102, 2, 0, true, 'idle', now());
         INSERT INTO jr_work_queue (title, status, assigned_jr, started_at) VALUES
           ('running', 'in_progress', 'says-idle', now());",
    )
    .await;
    let text = db.run(&["workers"]).ok().to_string();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(
        line("says-busy ").contains("idle") && line("says-busy ").contains("0/2"),
        "{text}"
    );
    assert!(
        line("says-idle ").contains("busy") && line("says-idle ").contains("1/2"),
        "{text}"
    );
    let status = db.run(&["status"]).ok().to_string();
    assert!(status.contains("(1 busy, 1 idle)"), "{status}");
}

#[test]
fn every_script_answers_help() {
    for script in [
        "test",
        "demo",
        "bench",
        "dev-postgres",
        "install-user-units",
        "screenshots",
        "user-systemd",
    ] {
        let out = common::Run::from(
            std::process::Command::new(common::project_root().join("scripts").join(script))
                .arg("--help")
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, Some(0), "{script} --help: {out:#?}");
        assert!(
            out.stdout.lines().count() >= 3 && !out.stdout.contains("set -euo"),
            "{script} --help: {out:#?}"
        );
    }
}

#[tokio::test]
async fn write_commands_print_the_ids_they_changed_as_json() {
    let db = TestDb::new().await;
    let j = db.run(&["enqueue", "--title", "one", "--json"]).json();
    let id = j["id"].as_i64().unwrap();
    assert_eq!(
        db.run(&["show", &id.to_string(), "--json"]).json()["task"]["title"],
        "one"
    );

    let batch = "{\"title\":\"b1\"}\n{\"title\":\"\"}\n{\"title\":\"b2\"}\n";
    let j = db
        .run_with_stdin(
            &["enqueue", "--batch", "-", "--skip-invalid", "--json"],
            batch,
        )
        .json();
    let ids: Vec<i64> = j["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(j["rejected"][0]["line"], 2);
    assert!(j["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("title"));

    let j = db.run(&["cancel", &id.to_string(), "--json"]).json();
    assert_eq!(
        (j["id"].as_i64(), j["outcome"].as_str()),
        (Some(id), Some("cancelled"))
    );
    let j = db.run(&["retry", &id.to_string(), "--json"]).json();
    assert_eq!(
        (j["id"].as_i64(), j["status"].as_str()),
        (Some(id), Some("pending"))
    );

    // Bulk: what changed, what was skipped and why, what does not exist.
    let j = db
        .run(&[
            "cancel",
            &ids[0].to_string(),
            &ids[1].to_string(),
            "--json",
            "--dry-run",
        ])
        .json();
    assert_eq!(j["would_change"], serde_json::json!(ids));
    assert_eq!(j["dry_run"], true);
    let out = db.run(&["cancel", &ids[0].to_string(), "999999", "--json"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["changed"], serde_json::json!([ids[0]]));
    assert_eq!(j["missing"], serde_json::json!([999999]));
    let j = db.run(&["retry", "--status", "cancelled", "--json"]).json();
    assert_eq!(j["changed"], serde_json::json!([ids[0]]));

    let j = db
        .run(&[
            "runs",
            "create",
            "--name",
            "nightly",
            "--auto-complete",
            "--json",
        ])
        .json();
    assert!(
        uuid::Uuid::parse_str(j["id"].as_str().unwrap()).is_ok(),
        "{j}"
    );
    assert_eq!(j["name"], "nightly");
    assert_eq!(j["auto_complete"], true);
}

#[tokio::test]
async fn runs_are_named_by_id_prefix_or_name() {
    let db = TestDb::new().await;
    let id = db
        .run(&["runs", "create", "--name", "nightly"])
        .ok()
        .trim()
        .to_string();
    let other = db
        .run(&["runs", "create", "--name", "weekly"])
        .ok()
        .trim()
        .to_string();
    let t1 = id_of(&db.run(&["enqueue", "--title", "by name", "--run", "nightly"]));
    let prefix = &id[..8];
    let t2 = id_of(&db.run(&["enqueue", "--title", "by prefix", "--run", prefix]));
    for t in [t1, t2] {
        let j = db.run(&["show", &t.to_string(), "--json"]).json();
        assert_eq!(j["task"]["run_id"], id.as_str());
    }
    let j = db.run(&["tasks", "--run", "nightly", "--json"]).json();
    assert_eq!(j.as_array().unwrap().len(), 2);
    db.run(&["runs", "set", "weekly", "archived"]).ok();
    let j = db.run(&["runs", "list", "--json"]).json();
    let weekly = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == other.as_str())
        .unwrap()
        .clone();
    assert_eq!(weekly["status"], "archived");
    db.run(&["pause", "--run", "nightly"]).ok();
    db.run(&["resume", "--run", prefix]).ok();
    // Two runs of one name: the id is needed.
    db.run(&["runs", "create", "--name", "nightly"]).ok();
    let before = db.fingerprint().await;
    db.run(&["enqueue", "--title", "x", "--run", "nightly"])
        .fails(1, "several runs are named 'nightly'");
    db.run(&["tasks", "--run", "nope"])
        .fails(1, "there is no run 'nope'");
    assert_eq!(db.fingerprint().await, before);
    // A name that is also the start of another run's id: the id is needed.
    let prefix4 = other[..4].to_string();
    db.run(&["runs", "create", "--name", &prefix4]).ok();
    db.run(&["tasks", "--run", &prefix4])
        .fails(1, "is the name of one run and the start of another's id");
    // A batch takes --run for the lines that name no run.
    let j = db
        .run_with_stdin(
            &["enqueue", "--batch", "-", "--run", "weekly", "--json"],
            "{\"title\":\"b1\"}\n{\"title\":\"b2\"}\n",
        )
        .json();
    for id in j["ids"].as_array().unwrap() {
        let t = db.run(&["show", &id.to_string(), "--json"]).json();
        assert_eq!(t["task"]["run_id"], other.as_str());
    }
}
