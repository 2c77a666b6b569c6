//! Run callbacks (migrations/V16) and schedules, with the real binaries.

mod common;

use std::time::Duration;

use common::{count, exec, wait_for, TestDb, WorkerProc};
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
        (
            r#"{"title":"x","after":[1]}"#,
            "cannot depend on other tasks",
        ),
        (
            r#"{"title":"x","unique_key":"k"}"#,
            "cannot have a unique key",
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

/// The ticks a schedule's tasks carry, oldest first, with each task's insert time.
async fn scheduled(
    c: &Client,
    name: &str,
) -> Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    c.query(
        "SELECT (payload->'schedule'->>'tick')::timestamptz, created_at FROM jr_work_queue \
         WHERE payload->'schedule'->>'name' = $1 ORDER BY 1",
        &[&name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// `--every 1s` under three assigners for over ten seconds: one task per tick, no tick
/// left out, each enqueued soon after its tick.
#[tokio::test]
async fn an_every_second_schedule_under_three_assigners_enqueues_each_tick_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let _a: Vec<_> = (1..=3)
        .map(|i| WorkerProc::assigner(&db.url, &format!("a{i}"), &["--poll-interval", "1s"]))
        .collect();
    let added = db
        .run(&[
            "schedules",
            "add",
            "tick",
            "--every",
            "1s",
            "--catch-up",
            "all",
            "--title",
            "beat",
            "--payload",
            r#"{"n":1}"#,
        ])
        .ok()
        .to_string();
    assert!(
        added.starts_with("schedule 'tick': every 1s, next "),
        "{added}"
    );
    wait_for(Duration::from_secs(40), "12 ticks", || async {
        scheduled(&c, "tick").await.len() >= 12
    })
    .await;
    db.run(&["schedules", "pause", "tick"]).ok();
    let ticks = scheduled(&c, "tick").await;
    let distinct: std::collections::BTreeSet<_> = ticks.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "a tick enqueued twice: {ticks:?}"
    );
    for w in ticks.windows(2) {
        assert_eq!(
            (w[1].0 - w[0].0).num_milliseconds(),
            1000,
            "a tick left out: {ticks:?}"
        );
    }
    // Within a second of the tick, mostly: the median, and none wildly late.
    let mut lag: Vec<i64> = ticks
        .iter()
        .map(|(t, created)| (*created - *t).num_milliseconds())
        .collect();
    lag.sort_unstable();
    assert!(lag[0] >= 0, "enqueued before its tick: {lag:?}");
    assert!(
        lag[lag.len() / 2] < 1000,
        "median lag over a second: {lag:?}"
    );
    eprintln!("tick -> enqueued lag (ms): {lag:?}");
    // Each with its key, source, event; the counts agree.
    let (tick, _) = ticks[0];
    let row = c
        .query_one(
            "SELECT unique_key, source, payload->>'n' FROM jr_work_queue \
             WHERE payload->'schedule'->>'name' = 'tick' ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).unwrap(),
        format!(
            "schedule:tick:{}",
            tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    );
    assert_eq!(row.get::<_, String>(1), "schedule");
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("1"));
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM jr_task_events WHERE action = 'scheduled'"
        )
        .await,
        ticks.len() as i64
    );
    let listed = db.run(&["schedules", "list", "--json"]).json();
    assert_eq!(listed[0]["name"], "tick");
    assert_eq!(listed[0]["paused"], true);
    assert_eq!(listed[0]["enqueued_total"], ticks.len() as i64);
}

/// Ticks no assigner handled (the schedule's next tick years back): none, one, all.
#[tokio::test]
async fn missed_ticks_follow_the_catch_up_policy() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for policy in ["none", "one", "all"] {
        db.run(&[
            "schedules",
            "add",
            policy,
            "--cron",
            "0 0 1 1 *",
            "--catch-up",
            policy,
            "--title",
            "new year",
        ])
        .ok();
    }
    // As if no assigner had run since 2020: seven ticks missed, 2020-01-01 to 2026-01-01.
    exec(
        &c,
        "UPDATE jr_schedules SET next_tick = '2020-01-01T00:00:00Z'",
    )
    .await;
    let _a = WorkerProc::assigner(&db.url, "a1", &[]);
    wait_for(
        Duration::from_secs(30),
        "the three schedules moved on",
        || async {
            count(
                &c,
                "SELECT count(*) FROM jr_schedules WHERE next_tick = '2027-01-01T00:00:00Z'",
            )
            .await
                == 3
        },
    )
    .await;
    let years = |name: &'static str| {
        let c = &c;
        async move {
            scheduled(c, name)
                .await
                .iter()
                .map(|(t, _)| t.format("%Y").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(years("none").await.is_empty());
    assert_eq!(years("one").await, ["2026"]);
    assert_eq!(
        years("all").await,
        ["2020", "2021", "2022", "2023", "2024", "2025", "2026"]
    );
    let missed =
        |name: &str| format!("SELECT missed_total FROM jr_schedules WHERE name = '{name}'");
    assert_eq!(count(&c, &missed("none")).await, 7);
    assert_eq!(count(&c, &missed("one")).await, 6);
    assert_eq!(count(&c, &missed("all")).await, 0);
    let status = db.run(&["status"]).ok().to_string();
    assert!(
        status.contains("schedules:       3 active, 0 paused; next: "),
        "{status}"
    );
}

/// A cron in New York across the 2026 spring-forward (March 8) and fall-back (November
/// 1): 02:30 does not exist on March 8, so that tick is 03:00 EDT; local times stay put.
#[tokio::test]
async fn a_cron_schedule_keeps_local_time_across_daylight_saving() {
    let db = TestDb::new().await;
    let c = db.client().await;
    db.run(&[
        "schedules",
        "add",
        "ny",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "America/New_York",
        "--catch-up",
        "all",
        "--title",
        "nightly",
    ])
    .ok();
    exec(
        &c,
        "UPDATE jr_schedules SET next_tick = '2026-03-07T07:30:00Z'",
    )
    .await;
    let _a = WorkerProc::assigner(&db.url, "a1", &[]);
    wait_for(Duration::from_secs(30), "the ticks up to now", || async {
        count(
            &c,
            "SELECT count(*) FROM jr_schedules WHERE next_tick > now()",
        )
        .await
            == 1
    })
    .await;
    let ticks: Vec<String> = scheduled(&c, "ny")
        .await
        .iter()
        .map(|(t, _)| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect();
    for (tick, why) in [
        ("2026-03-07T07:30:00Z", "02:30 EST"),
        ("2026-03-08T07:00:00Z", "03:00 EDT: 02:30 did not exist"),
        ("2026-03-09T06:30:00Z", "02:30 EDT"),
        ("2026-10-31T06:30:00Z", "02:30 EDT"),
        ("2026-11-01T07:30:00Z", "02:30 EST"),
    ] {
        assert!(
            ticks.contains(&tick.to_string()),
            "{tick} ({why}) missing: {ticks:?}"
        );
    }
    // One a day, none twice.
    let days: std::collections::BTreeSet<_> = ticks.iter().map(|t| &t[..10]).collect();
    assert_eq!(days.len(), ticks.len(), "{ticks:?}");
}

/// `--unique-while-running`: no new task while the last is unfinished; `run-now`
/// refuses too unless forced; pause, resume and remove; bad input refused clearly.
#[tokio::test]
async fn schedules_one_at_a_time_and_the_commands() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let _a = WorkerProc::assigner(&db.url, "a1", &[]);
    db.run(&[
        "schedules",
        "add",
        "long",
        "--every",
        "1s",
        "--unique-while-running",
        "--title",
        "agent",
        "--provider",
        "claude",
    ])
    .ok();
    wait_for(
        Duration::from_secs(20),
        "the first task and skipped ticks",
        || async { count(&c, "SELECT skipped_total FROM jr_schedules").await >= 2 },
    )
    .await;
    let first: i64 = c
        .query_one("SELECT last_task FROM jr_schedules", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        scheduled(&c, "long").await.len(),
        1,
        "one while it is unfinished"
    );
    db.run(&["schedules", "run-now", "long"])
        .fails(1, &format!("its task {first} is unfinished"));
    let forced: i64 = db
        .run(&["schedules", "run-now", "long", "--force"])
        .ok()
        .trim()
        .parse()
        .unwrap();
    assert!(forced > first);
    // Both done: the next tick enqueues again.
    exec(
        &c,
        "UPDATE jr_work_queue SET status = 'completed', completed_at = now()",
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "a task after the last one ended",
        || async {
            count(
                &c,
                &format!("SELECT count(*) FROM jr_work_queue WHERE id > {forced}"),
            )
            .await
                >= 1
        },
    )
    .await;
    let listed = db.run(&["schedules", "list"]).ok().to_string();
    assert!(listed.contains("every 1s"), "{listed}");
    assert!(listed.contains("one at a time"), "{listed}");
    db.run(&["schedules", "pause", "long"]).ok();
    let before = count(&c, "SELECT count(*) FROM jr_work_queue").await;
    let resumed = db.run(&["schedules", "resume", "long"]).ok().to_string();
    assert!(
        resumed.starts_with("schedule 'long' resumed: next "),
        "{resumed}"
    );
    db.run(&["schedules", "remove", "long"]).ok();
    assert_eq!(count(&c, "SELECT count(*) FROM jr_schedules").await, 0);
    assert!(
        count(&c, "SELECT count(*) FROM jr_work_queue").await >= before,
        "tasks stay"
    );
    // Bad input: one line each, nothing written.
    for (args, code, needle) in [
        (
            vec!["add", "x", "--cron", "61 * * * *", "--title", "t"],
            2,
            "is not a cron expression",
        ),
        (
            vec![
                "add",
                "x",
                "--cron",
                "@hourly",
                "--timezone",
                "Mars/Base",
                "--title",
                "t",
            ],
            2,
            "is not a time zone",
        ),
        (
            vec!["add", "x", "--every", "500ms", "--title", "t"],
            2,
            "1s",
        ),
        (
            vec!["add", "x y", "--every", "1m", "--title", "t"],
            2,
            "is not a schedule name",
        ),
        (vec!["add", "x", "--title", "t"], 2, "required arguments"),
        (
            vec!["add", "x", "--every", "1m", "--title", "t", "--after", "1"],
            2,
            "cannot depend on other tasks",
        ),
        (
            vec![
                "add",
                "x",
                "--every",
                "1m",
                "--title",
                "t",
                "--unique-key",
                "k",
            ],
            2,
            "cannot have a unique key",
        ),
        (vec!["pause", "nope"], 1, "there is no schedule 'nope'"),
        (vec!["run-now", "nope"], 1, "there is no schedule 'nope'"),
    ] {
        let mut all = vec!["schedules"];
        all.extend(args);
        db.run(&all).fails(code, needle);
    }
    db.run(&["schedules", "add", "dup", "--every", "1h", "--title", "t"])
        .ok();
    db.run(&["schedules", "add", "dup", "--every", "1h", "--title", "t"])
        .fails(1, "exists already");
    db.run(&[
        "schedules",
        "add",
        "dup",
        "--every",
        "2h",
        "--title",
        "t",
        "--replace",
    ])
    .ok();
    assert_eq!(count(&c, "SELECT count(*) FROM jr_schedules").await, 1);
}
