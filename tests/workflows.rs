//! Run callbacks (migrations/V16) and schedules, with the real binaries.

mod common;

use common::{count, exec, TestDb};
use tokio_postgres::Client;

fn monitor(db: &TestDb) -> std::process::Child {
    common::bin("jr-health-monitor")
        .env("DATABASE_URL", &db.url)
        .args([
            "--max-load-per-core",
            "100000",
            "--max-memory",
            "100",
            "--manager",
            "none",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Two monitors at once, to the end of both; their reports.
fn two_monitors(db: &TestDb) -> Vec<common::Run> {
    let a = monitor(db);
    let b = monitor(db);
    [a, b]
        .into_iter()
        .map(|c| common::Run::from(c.wait_with_output().unwrap()))
        .collect()
}

async fn add_task(c: &Client, run: &str, status: &str) -> i64 {
    c.query_one(
        "INSERT INTO jr_work_queue (title, status, run_id, completed_at) \
         VALUES ('step', $1, $2::text::uuid, now()) RETURNING id",
        &[&status, &run],
    )
    .await
    .unwrap()
    .get(0)
}

async fn run_row(c: &Client, run: &str) -> (String, Option<i64>, Option<String>) {
    let r = c
        .query_one(
            "SELECT status, callback_task, callback_error FROM jr_runs WHERE id = $1::text::uuid",
            &[&run],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// A run's callback is enqueued exactly once, with the run's summary, however many
/// monitors (and people) end the run at once; the other callback is not enqueued.
#[tokio::test]
async fn a_run_callback_is_enqueued_once_under_two_monitors() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let create = |name: &str| {
        db.run(&[
            "runs",
            "create",
            "--name",
            name,
            "--auto-complete",
            "--on-complete",
            r#"{"title":"summarise","payload":{"prompt":"sum up"},"priority":2}"#,
            "--on-error",
            r#"{"title":"triage","provider":"claude"}"#,
        ])
        .ok()
        .trim()
        .to_string()
    };
    let good = create("good");
    let bad = create("bad");
    let g1 = add_task(&c, &good, "completed").await;
    let _g2 = add_task(&c, &good, "completed").await;
    let _b1 = add_task(&c, &bad, "completed").await;
    let b2 = add_task(&c, &bad, "failed").await;
    let b3 = add_task(&c, &bad, "cancelled").await;
    exec(
        &c,
        &format!(
            "INSERT INTO jr_task_usage (task_id, attempt, worker, provider, run_id, \
                 input_tokens, output_tokens, cost_microusd) \
             VALUES ({g1}, 1, 'w', '', '{good}', 1000, 250, 12000)"
        ),
    )
    .await;
    let listed = db.run(&["runs", "list"]).ok().to_string();
    assert!(
        listed.contains("on complete, on error"),
        "before the end the runs list says which callbacks wait: {listed}"
    );
    // Two monitors, three times over, and a person ending the good run at the same time.
    for _ in 0..3 {
        let set = db
            .jrq()
            .args(["runs", "set", &good, "completed"])
            .spawn()
            .unwrap();
        let reports = two_monitors(&db);
        let _ = common::Run::from(set.wait_with_output().unwrap());
        for r in reports {
            assert!(matches!(r.code, Some(0) | Some(3)), "{r:#?}");
        }
    }
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM jr_work_queue WHERE title = 'summarise'"
        )
        .await,
        1,
        "one on-complete callback"
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM jr_work_queue WHERE title = 'triage'"
        )
        .await,
        1,
        "one on-error callback"
    );
    let (status, cb, err) = run_row(&c, &good).await;
    assert_eq!((status.as_str(), err), ("completed", None));
    let cb = cb.expect("the callback's id is recorded");
    let row = c
        .query_one(
            "SELECT title, status, priority, source, payload FROM jr_work_queue WHERE id = $1",
            &[&cb],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "summarise");
    assert_eq!(row.get::<_, String>(1), "pending");
    assert_eq!(row.get::<_, i32>(2), 2);
    assert_eq!(row.get::<_, String>(3), "run-callback");
    let payload: serde_json::Value = row.get(4);
    assert_eq!(payload["prompt"], "sum up", "{payload}");
    assert_eq!(payload["run"]["id"], good.as_str());
    assert_eq!(payload["run"]["name"], "good");
    assert_eq!(payload["run"]["status"], "completed");
    assert_eq!(payload["run"]["tasks"]["total"], 2);
    assert_eq!(payload["run"]["tasks"]["completed"], 2);
    assert_eq!(payload["run"]["usage"]["input_tokens"], 1000);
    assert_eq!(payload["run"]["usage"]["output_tokens"], 250);
    // The bad run's summary names its failed and cancelled tasks.
    let (status, cb, _) = run_row(&c, &bad).await;
    assert_eq!(status, "error");
    let payload: serde_json::Value = c
        .query_one(
            "SELECT payload FROM jr_work_queue WHERE id = $1",
            &[&cb.unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload["run"]["tasks"]["failed"], 1, "{payload}");
    assert_eq!(payload["run"]["failed_ids"], serde_json::json!([b2]));
    assert_eq!(payload["run"]["cancelled_ids"], serde_json::json!([b3]));
    // The callback's timeline says where it came from.
    let shown = db.run(&["show", &cb.unwrap().to_string()]).ok().to_string();
    assert!(
        shown.contains(&format!("enqueued by run {bad} (bad) ending error")),
        "{shown}"
    );
    // Active again and ended again: still one callback.
    db.run(&["runs", "set", &good, "active"]).ok();
    db.run(&["runs", "set", &good, "completed"]).ok();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM jr_work_queue WHERE title = 'summarise'"
        )
        .await,
        1
    );
    let listed = db.run(&["runs", "list"]).ok().to_string();
    assert!(
        listed.contains(&format!("task {cb}", cb = cb.unwrap())),
        "{listed}"
    );
}

/// A callback that can no longer be enqueued does not hold up the run's end: the run
/// ends, the error is recorded, and the monitor alerts. Bad callbacks are refused at once.
#[tokio::test]
async fn a_callback_that_cannot_be_enqueued_is_reported_and_bad_ones_refused() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let other = db.run(&["runs", "create"]).ok().trim().to_string();
    let run = db
        .run(&[
            "runs",
            "create",
            "--auto-complete",
            "--on-complete",
            &format!(r#"{{"title":"next","run":"{other}"}}"#),
        ])
        .ok()
        .trim()
        .to_string();
    add_task(&c, &run, "completed").await;
    exec(&c, &format!("DELETE FROM jr_runs WHERE id = '{other}'")).await;
    let out = common::Run::from(monitor(&db).wait_with_output().unwrap());
    assert_eq!(out.code, Some(3), "{out:#?}");
    let (status, cb, err) = run_row(&c, &run).await;
    assert_eq!(status, "completed", "the run ended all the same");
    assert_eq!(cb, None);
    assert!(
        err.as_deref().unwrap_or_default().contains("foreign key"),
        "{err:?}"
    );
    assert!(
        out.stdout.contains(&format!(
            "run {run} ended but its callback could not be enqueued"
        )),
        "{out:#?}"
    );
    // Refused before anything is written, each with what to do.
    let before = count(&c, "SELECT count(*) FROM jr_runs").await;
    for (json, needle) in [
        ("{\"title\":", "not valid JSON"),
        (r#"{"title":"x","after":[1]}"#, "cannot have dependencies"),
        (
            r#"{"title":"x","unique_key":"k"}"#,
            "cannot have a unique_key",
        ),
        (r#"{"title":"x","payload":[1]}"#, "must be a JSON object"),
        (
            r#"{"title":"x","run_at":"2030-01-01T00:00:00Z"}"#,
            "give a delay instead",
        ),
        (r#"{"title":"x","colour":"red"}"#, "unknown field"),
        (
            r#"{"title":"x","run":"00000000-0000-0000-0000-000000000001"}"#,
            "there is no run",
        ),
        (
            r#"{"title":"x","approve_by":"no_such_role"}"#,
            "does not exist",
        ),
    ] {
        db.run(&["runs", "create", "--on-complete", json]).fails(
            if needle == "there is no run" || needle == "does not exist" {
                1
            } else {
                2
            },
            needle,
        );
    }
    assert_eq!(count(&c, "SELECT count(*) FROM jr_runs").await, before);
}
