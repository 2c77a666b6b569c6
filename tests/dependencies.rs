//! Task dependencies and approval gates (migrations/V15), with the real binaries.

mod common;

use std::time::Duration;

use common::{count, exec, status_of, wait_status_within, TestDb, WorkerProc};

fn id_of(out: &common::Run) -> i64 {
    out.ok()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {out:#?}"))
}

/// A → B → C run in order through a real assigner and worker; C became ready in the
/// transaction that completed B (its `ready` event and B's `completed` event share a
/// transaction id).
#[tokio::test]
async fn a_chain_runs_in_order_and_the_next_is_ready_at_commit() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let a = id_of(&db.run(&[
        "enqueue",
        "--title",
        "A",
        "--payload",
        r#"{"sleep_ms":200}"#,
    ]));
    let b = id_of(&db.run(&["enqueue", "--title", "B", "--after", &a.to_string()]));
    let cc = id_of(&db.run(&["enqueue", "--title", "C", "--after", &b.to_string()]));
    assert_eq!(status_of(&c, b).await, "waiting");
    assert_eq!(status_of(&c, cc).await, "waiting");
    let _w = WorkerProc::start(&db.url, "w1", &["--exec", "noop", "--capacity", "4"], &[]);
    let _a = WorkerProc::assigner(&db.url, "a1", &["--poll-interval", "100ms"]);
    wait_status_within(Duration::from_secs(30), &c, cc, "completed").await;
    // In order: each started after the one before it completed.
    let order = count(
        &c,
        &format!(
            "SELECT count(*) FROM jr_work_queue x JOIN jr_work_queue y ON y.id = x.id + 1 \
             WHERE x.id IN ({a}, {b}) AND y.started_at >= x.completed_at"
        ),
    )
    .await;
    assert_eq!(order, 2);
    let same_xact = count(
        &c,
        &format!(
            "SELECT count(*) FROM jr_task_events r, jr_task_events d \
             WHERE r.task_id = {cc} AND r.action = 'ready' AND d.task_id = {b} \
               AND d.to_status = 'completed' AND r.xmin = d.xmin AND r.at = d.at"
        ),
    )
    .await;
    assert_eq!(
        same_xact, 1,
        "C's ready event is not in B's completing transaction"
    );
}

/// A failed dependency cancels its dependents recursively, with the cause; retrying it
/// revives them.
#[tokio::test]
async fn a_failure_cancels_dependents_and_a_retry_revives_them() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let a = id_of(&db.run(&["enqueue", "--title", "A"]));
    let b = id_of(&db.run(&["enqueue", "--title", "B", "--after", &a.to_string()]));
    let d = id_of(&db.run(&["enqueue", "--title", "D", "--after", &b.to_string()]));
    exec(
        &c,
        &format!("UPDATE jr_work_queue SET status = 'failed', completed_at = now() WHERE id = {a}"),
    )
    .await;
    assert_eq!(status_of(&c, b).await, "cancelled");
    assert_eq!(status_of(&c, d).await, "cancelled");
    let show = db.run(&["show", &d.to_string(), "--json"]).json();
    assert_eq!(show["task"]["error"], format!("dependency {b} cancelled"));
    let show = db.run(&["show", &b.to_string(), "--json"]).json();
    assert_eq!(show["task"]["error"], format!("dependency {a} failed"));
    db.run(&["retry", &a.to_string()]).ok();
    assert_eq!(status_of(&c, a).await, "pending");
    assert_eq!(status_of(&c, b).await, "waiting");
    assert_eq!(status_of(&c, d).await, "waiting");
    let revived = count(
        &c,
        &format!("SELECT count(*) FROM jr_task_events WHERE task_id IN ({b}, {d}) AND action = 'revived'"),
    )
    .await;
    assert_eq!(revived, 2);
    // An unknown dependency is refused, nothing added.
    db.run(&["enqueue", "--title", "X", "--after", "999999"])
        .fails(1, "there is no task 999999");
    assert_eq!(count(&c, "SELECT count(*) FROM jr_work_queue").await, 3);
}

/// A batch enqueues a diamond by client keys in one call; D waits for both sides.
#[tokio::test]
async fn a_batch_enqueues_a_diamond_by_keys() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let lines = [
        r#"{"title":"plan","key":"p"}"#,
        r#"{"title":"left","key":"l","after":"p"}"#,
        r#"{"title":"right","key":"r","after":["p"]}"#,
        r#"{"title":"join","after":["l","r"]}"#,
    ]
    .join("\n");
    let out = db
        .run_with_stdin(&["enqueue", "--batch", "-", "--json"], &lines)
        .json();
    let ids: Vec<i64> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    let edges = count(&c, "SELECT count(*) FROM jr_task_deps").await;
    assert_eq!(edges, 4);
    let done = |id: i64| {
        format!(
            "UPDATE jr_work_queue SET status = 'completed', completed_at = now() WHERE id = {id}"
        )
    };
    exec(&c, &done(ids[0])).await;
    assert_eq!(status_of(&c, ids[1]).await, "pending");
    assert_eq!(status_of(&c, ids[2]).await, "pending");
    exec(&c, &done(ids[1])).await;
    assert_eq!(status_of(&c, ids[3]).await, "waiting");
    exec(&c, &done(ids[2])).await;
    assert_eq!(status_of(&c, ids[3]).await, "pending");
    // A key no earlier line has is refused.
    let bad = db.run_with_stdin(
        &["enqueue", "--batch", "-"],
        r#"{"title":"x","after":"nope"}"#,
    );
    assert_ne!(bad.code, Some(0));
    assert!(
        format!("{}{}", bad.stdout, bad.stderr).contains("no earlier line has key 'nope'"),
        "{bad:#?}"
    );
}

/// Approve and reject, with who did it in the timeline; a rejection cancels dependents.
#[tokio::test]
async fn approve_and_reject_with_the_timeline() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let t = id_of(&db.run(&["enqueue", "--title", "deploy", "--needs-approval"]));
    assert_eq!(status_of(&c, t).await, "awaiting_approval");
    let inbox = db
        .run(&["tasks", "--status", "awaiting_approval", "--json"])
        .json();
    assert_eq!(inbox.as_array().unwrap().len(), 1);
    db.run(&[
        "approve",
        &t.to_string(),
        "--comment",
        "ship it",
        "--as",
        "alice",
    ])
    .ok();
    assert_eq!(status_of(&c, t).await, "pending");
    let ev = db.run(&["show", &t.to_string(), "--json"]).json();
    let approved = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "approved")
        .expect("an approved event")
        .clone();
    assert_eq!(approved["actor"], "alice");
    assert!(approved["details"].as_str().unwrap().contains("ship it"));
    db.run(&["approve", &t.to_string()])
        .fails(1, "approved already");

    let r = id_of(&db.run(&["enqueue", "--title", "spend", "--needs-approval"]));
    let dep = id_of(&db.run(&["enqueue", "--title", "after", "--after", &r.to_string()]));
    db.run(&[
        "reject",
        &r.to_string(),
        "--reason",
        "too expensive",
        "--as",
        "bob",
    ])
    .ok();
    assert_eq!(status_of(&c, r).await, "cancelled");
    assert_eq!(status_of(&c, dep).await, "cancelled");
    let show = db.run(&["show", &r.to_string(), "--json"]).json();
    assert!(show["task"]["error"]
        .as_str()
        .unwrap()
        .contains("rejected by bob"));
}

/// The monitor alerts on a task that has awaited approval past its threshold, and not
/// before; a decision ends the alert.
#[tokio::test]
async fn the_monitor_alerts_on_an_approval_waiting_too_long() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let monitor = || {
        let mut cmd = common::bin("jr-health-monitor");
        cmd.env("DATABASE_URL", &db.url).args([
            "--max-load-per-core",
            "100000",
            "--max-memory",
            "100",
            "--manager",
            "none",
            "--approval-alert-after",
            "1h",
            "--json",
        ]);
        common::Run::from(cmd.output().unwrap())
    };
    let id = id_of(&db.run(&["enqueue", "--title", "deploy", "--needs-approval"]));
    assert_eq!(status_of(&c, id).await, "awaiting_approval");
    let out = monitor();
    assert_eq!(out.code, Some(0), "a fresh approval is no alert: {out:#?}");
    // Waiting for 59 min: still none; for 2 h: an alert naming the task.
    exec(
        &c,
        &format!(
            "UPDATE jr_work_queue SET updated_at = now() - interval '59 minutes' WHERE id = {id}"
        ),
    )
    .await;
    assert_eq!(monitor().code, Some(0));
    exec(
        &c,
        &format!(
            "UPDATE jr_work_queue SET updated_at = now() - interval '2 hours' WHERE id = {id}"
        ),
    )
    .await;
    let out = monitor();
    assert_eq!(out.code, Some(3), "an overdue approval exits 3: {out:#?}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["approvals_overdue"], 1);
    let alert = j["alerts"][0].as_str().unwrap();
    assert!(
        alert.starts_with(&format!(
            "1 task(s) have awaited approval longer than 1h (the oldest, task {id}, for 2h"
        )),
        "{alert}"
    );
    db.run(&["reject", &id.to_string(), "--reason", "not today"])
        .ok();
    assert_eq!(monitor().code, Some(0), "decided: no alert");
}
