//! The provider governor against a real database and the real binaries: fleet-wide
//! running limits held by several assigners together, the start rate over a measured
//! minute, pauses of a provider and of a worker, and the CLI's refusals.

mod common;

use std::time::{Duration, Instant};

use common::{count, status_of, wait_for, wait_status, TestDb, WorkerProc, WAIT};
use tokio_postgres::Client;

async fn enqueue(client: &Client, provider: &str, n: usize) -> Vec<i64> {
    let mut ids = vec![];
    for i in 0..n {
        ids.push(
            client
                .query_one(
                    "INSERT INTO jr_work_queue (title, provider) VALUES ($1, $2) RETURNING id",
                    &[&format!("{provider} {i}"), &provider],
                )
                .await
                .unwrap()
                .get(0),
        );
    }
    ids
}

/// One task of `provider` (empty: none) with the JSON `payload`, as psql would insert it.
async fn task(client: &Client, title: &str, provider: &str, payload: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO jr_work_queue (title, provider, payload) \
             VALUES ($1, $2, $3::text::jsonb) RETURNING id",
            &[&title, &provider, &payload],
        )
        .await
        .unwrap()
        .get(0)
}

fn worker(db: &TestDb, name: &str, providers: &str, capacity: &str, exec: &str) -> WorkerProc {
    WorkerProc::start(
        &db.url,
        name,
        &[
            "--exec",
            exec,
            "--provider",
            providers,
            "--capacity",
            capacity,
            "--poll-interval",
            "200ms",
            "--heartbeat-interval",
            "1s",
        ],
        &[],
    )
}

fn assigner(db: &TestDb, name: &str) -> WorkerProc {
    WorkerProc::assigner(
        &db.url,
        name,
        &["--poll-interval", "200ms", "--heartbeat-interval", "1s"],
    )
}

const ACTIVE_CLAUDE: &str = "SELECT count(*) FROM jr_work_queue \
     WHERE provider = 'claude' AND status IN ('assigned', 'in_progress')";

#[tokio::test]
async fn two_assigners_never_run_more_of_a_provider_than_its_limit() {
    let db = TestDb::new().await;
    let client = db.client().await;
    db.run(&["providers", "set", "claude", "--max-running", "4"])
        .ok();
    let _workers: Vec<WorkerProc> = ["w_a", "w_b", "w_c"]
        .iter()
        .map(|n| worker(&db, n, "claude", "3", "sleep:300ms"))
        .collect();
    let _a1 = assigner(&db, "assigner.one");
    let _a2 = assigner(&db, "assigner.two");
    enqueue(&client, "claude", 30).await;

    // Sample until the queue drains: never more than 4 assigned + running.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    let mut samples = 0;
    loop {
        let active = count(&client, ACTIVE_CLAUDE).await;
        most = most.max(active);
        samples += 1;
        assert!(
            active <= 4,
            "{active} claude tasks assigned + running (limit 4)"
        );
        let done = count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        )
        .await;
        if done == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain: {done}/30"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        most, 4,
        "the limit was reached ({samples} samples), not just respected"
    );
    let out = db.run(&["providers", "list"]);
    assert!(out.ok().contains("claude"), "{out:#?}");
}

#[tokio::test]
async fn the_start_rate_holds_over_a_measured_minute() {
    let db = TestDb::new().await;
    let client = db.client().await;
    db.run(&[
        "providers",
        "set",
        "claude",
        "--max-starts-per-minute",
        "30",
    ])
    .ok();
    let _w = worker(&db, "w_rate", "claude", "10", "noop");
    let _a = assigner(&db, "assigner.rate");
    enqueue(&client, "claude", 80).await;
    let assigned = || async {
        count(
            &client,
            "SELECT count(*) FROM jr_task_events WHERE action = 'assigned'",
        )
        .await
    };
    wait_for(WAIT, "the first start", || async { assigned().await > 0 }).await;
    let first: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT min(at) FROM jr_task_events WHERE action = 'assigned'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The measured minute: everything assigned within 60 s of the first start.
    let window_end = first + chrono::Duration::seconds(60);
    wait_for(Duration::from_secs(90), "a minute of starts", || async {
        chrono::Utc::now() > window_end + chrono::Duration::seconds(1)
    })
    .await;
    let in_minute: i64 = client
        .query_one(
            "SELECT count(*) FROM jr_task_events WHERE action = 'assigned' AND at < $1",
            &[&window_end],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (29..=31).contains(&in_minute),
        "{in_minute} starts in the measured minute (limit 30/min, ±1 bucket)"
    );
}

#[tokio::test]
async fn a_paused_provider_waits_while_the_others_flow_and_resume_restarts_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let _w = worker(&db, "w_mixed", "claude,codex", "4", "noop");
    let _a = assigner(&db, "assigner.pause");
    let out = db.run(&[
        "pause",
        "--provider",
        "claude",
        "--reason",
        "429 from upstream",
    ]);
    assert!(out.ok().contains("provider 'claude' paused"), "{out:#?}");
    let claude = enqueue(&client, "claude", 3).await;
    let codex = enqueue(&client, "codex", 3).await;
    for id in &codex {
        wait_status(&client, *id, "completed").await;
    }
    for id in &claude {
        assert_eq!(status_of(&client, *id).await, "pending");
    }
    let show = db.run(&["show", &claude[0].to_string()]);
    assert!(
        show.ok().contains("waiting: provider 'claude' paused by"),
        "{show:#?}"
    );
    assert!(show.ok().contains("429 from upstream"), "{show:#?}");
    let status = db.run(&["status"]);
    assert!(status.ok().contains("held:"), "{status:#?}");
    let list = db.run(&["providers", "list", "--json"]).json();
    let row = list["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "claude")
        .unwrap()
        .clone();
    assert_eq!(row["pause"]["reason"], "429 from upstream", "{list:#}");
    assert_eq!(row["pending"], 3, "{list:#}");

    let out = db.run(&["resume", "--provider", "claude"]);
    assert!(out.ok().contains("resumed"), "{out:#?}");
    for id in &claude {
        wait_status(&client, *id, "completed").await;
    }
    let out = db.run(&["resume", "--provider", "claude"]);
    assert!(out.ok().contains("was not paused"), "{out:#?}");
}

#[tokio::test]
async fn a_paused_worker_takes_nothing_new_and_a_global_pause_stops_all() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let _w1 = worker(&db, "w_paused", "claude", "4", "noop");
    let _w2 = worker(&db, "w_free", "claude", "4", "noop");
    db.run(&["pause", "--worker", "w_paused"]).ok();
    let _a = assigner(&db, "assigner.wpause");
    let ids = enqueue(&client, "claude", 8).await;
    for id in &ids {
        wait_status(&client, *id, "completed").await;
    }
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_task_events WHERE action = 'assigned' AND worker = 'w_paused'"
        )
        .await,
        0,
        "the paused worker got nothing"
    );

    db.run(&["pause", "--all", "--reason", "upgrade"]).ok();
    let held = enqueue(&client, "", 2).await;
    // Two assigner rounds (poll 200 ms) with nothing assigned.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for id in &held {
        assert_eq!(status_of(&client, *id).await, "pending");
    }
    db.run(&["resume", "--all"]).ok();
    for id in &held {
        wait_status(&client, *id, "completed").await;
    }
}

#[tokio::test]
async fn the_cli_refuses_bad_governor_input_changing_nothing() {
    let db = TestDb::new().await;
    let before = db.fingerprint().await;
    db.run(&["providers", "set", "a,b", "--max-running", "1"])
        .fails(2, "is not a provider name");
    db.run(&["providers", "set", "claude", "--max-running", "-1"])
        .fails(2, "is not a limit");
    db.run(&["providers", "set", "claude", "--max-starts-per-minute", "0"])
        .fails(2, "is not a limit");
    db.run(&["providers", "set", "claude", "--fallback", "claude"])
        .fails(2, "cannot be its own fallback");
    db.run(&["pause"]).fails(2, "required");
    db.run(&["pause", "--provider", "x", "--worker", "y"])
        .fails(2, "cannot be used with");
    db.run(&["pause", "--run", "not-a-uuid"])
        .fails(1, "there is no run 'not-a-uuid'");
    assert_eq!(db.fingerprint().await, before);

    // `none` removes a limit; unset removes the row.
    db.run(&["providers", "set", "claude", "--max-running", "3"])
        .ok();
    let out = db.run(&["providers", "set", "claude", "--max-running", "none"]);
    assert!(out.ok().contains("max running -"), "{out:#?}");
    let out = db.run(&["providers", "unset", "claude"]);
    assert!(out.ok().contains("has no limits now"), "{out:#?}");
}

#[tokio::test]
async fn a_refusing_provider_parks_its_tasks_uncharged_until_it_resets() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("refused-once");
    let exec = common::test_executor();
    let _w1 = worker(&db, "w_quota_a", "claude,codex", "2", &exec);
    let _w2 = worker(&db, "w_quota_b", "claude,codex", "2", &exec);
    let _a = assigner(&db, "assigner.quota");
    let payload = serde_json::json!({
        "once_exit": {"file": marker, "code": 76, "stdout": "JRQ-RETRY-AT: 3\n"},
    });
    let refused = task(&client, "hits the quota", "claude", &payload.to_string()).await;
    wait_for(WAIT, "the provider to be paused", || async {
        count(
            &client,
            "SELECT count(*) FROM jr_pauses WHERE scope = 'provider' AND target = 'claude' \
             AND until > now()",
        )
        .await
            == 1
    })
    .await;
    let paused_until: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT until FROM jr_pauses WHERE scope = 'provider' AND target = 'claude'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The pause is written first, the task given back right after.
    wait_status(&client, refused, "pending").await;
    let row = client
        .query_one(
            "SELECT status, attempts FROM jr_work_queue WHERE id = $1",
            &[&refused],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("pending".to_string(), 0),
        "back to pending, the attempt not charged"
    );
    // While paused: other claude tasks wait, codex flows.
    let claude = enqueue(&client, "claude", 3).await;
    let codex = enqueue(&client, "codex", 2).await;
    for id in &codex {
        wait_status(&client, *id, "completed").await;
    }
    if chrono::Utc::now() < paused_until - chrono::Duration::milliseconds(300) {
        for id in claude.iter().chain([&refused]) {
            assert_eq!(
                status_of(&client, *id).await,
                "pending",
                "task {id} while paused"
            );
        }
    }
    let list = db.run(&["providers", "list"]);
    assert!(
        list.ok().contains("rate-limited by worker w_quota_"),
        "{list:#?}"
    );
    // After the reset every task runs; the refused one on its first charged attempt.
    for id in claude.iter().chain([&refused]) {
        wait_status(&client, *id, "completed").await;
    }
    let first_start: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "SELECT min(at) FROM jr_task_events WHERE task_id = ANY($1) AND action = 'started'",
            &[&claude],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        first_start >= paused_until,
        "a claude task started at {first_start}, before the pause ended at {paused_until}"
    );
    let attempts: i32 = client
        .query_one(
            "SELECT attempts FROM jr_work_queue WHERE id = $1",
            &[&refused],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 1);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_status WHERE consecutive_failures > 0 \
             OR circuit_open_until IS NOT NULL"
        )
        .await,
        0,
        "no circuit was touched"
    );
    let released: String = client
        .query_one(
            "SELECT details FROM jr_task_events WHERE task_id = $1 AND action = 'released'",
            &[&refused],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        released.contains("the provider refused (exit 76"),
        "{released}"
    );
}

#[tokio::test]
async fn a_retry_runs_on_another_worker_when_one_is_free() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let exec = common::test_executor();
    let start = |name: &str, capacity: &str| {
        WorkerProc::start(
            &db.url,
            name,
            &[
                "--exec",
                &exec,
                "--capacity",
                capacity,
                "--retry-base",
                "0s",
                "--poll-interval",
                "200ms",
            ],
            &[],
        )
    };
    // w_second is half busy with a long pinned task, w_first idle: by load alone every
    // attempt would go to w_first.
    let _a = start("w_first", "1");
    let _b = start("w_second", "2");
    let _asg = assigner(&db, "assigner.failover");
    let long: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, payload, target_jr) \
             VALUES ('long', '{\"sleep\": 30}', 'w_second') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_status(&client, long, "in_progress").await;
    // Both alive before the task comes: a worker still starting is no candidate.
    common::wait_for(common::WAIT, "both workers online", || async {
        client
            .query_one(
                "SELECT count(*) FROM jr_status WHERE jr_name IN ('w_first', 'w_second') \
                 AND is_online AND status <> 'starting'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 2
    })
    .await;
    let id = task(&client, "flaky", "", r#"{"exit_attempt": {"1": 75}}"#).await;
    wait_status(&client, id, "completed").await;
    let started: Vec<(String, i32)> = client
        .query(
            "SELECT worker, attempt FROM jr_task_events \
             WHERE task_id = $1 AND action = 'started' ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(
        started[0].0, "w_first",
        "the least loaded first: {started:?}"
    );
    assert_eq!(started[1].0, "w_second", "the retry elsewhere: {started:?}");
    let reason: String = client
        .query_one(
            "SELECT details FROM jr_task_events WHERE task_id = $1 AND action = 'assigned' \
             ORDER BY id DESC LIMIT 1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.contains(&format!("avoiding {}", started[0].0)),
        "{reason}"
    );
}

#[tokio::test]
async fn bulk_cancel_and_retry_act_on_filters_and_dry_runs_change_nothing() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let claude = enqueue(&client, "claude", 3).await;
    let codex = enqueue(&client, "codex", 2).await;

    // A dry run says what would change and changes nothing.
    let before = db.fingerprint().await;
    let out = db.run(&["cancel", "--provider", "claude", "--dry-run"]);
    assert!(
        out.ok().contains("3 task(s) would be cancelled"),
        "{out:#?}"
    );
    assert!(
        out.ok().contains("dry run: nothing was changed"),
        "{out:#?}"
    );
    assert_eq!(db.fingerprint().await, before);

    // The filter picks claude's tasks only.
    let out = db.run(&["cancel", "--provider", "claude"]);
    assert!(out.ok().contains("3 task(s) cancelled"), "{out:#?}");
    for id in &claude {
        assert_eq!(status_of(&client, *id).await, "cancelled");
    }
    for id in &codex {
        assert_eq!(status_of(&client, *id).await, "pending");
    }

    // Retry by ids: the cancelled one comes back, the pending one is skipped and said.
    let ids = [claude[0].to_string(), codex[0].to_string()];
    let out = db.run(&["retry", &ids[0], &ids[1]]);
    assert!(
        out.ok()
            .contains(&format!("task {} is pending again", claude[0])),
        "{out:#?}"
    );
    assert!(
        out.ok()
            .contains(&format!("task {} is pending: not retried", codex[0])),
        "{out:#?}"
    );
    assert!(
        out.ok().contains("1 task(s) retried, 1 skipped"),
        "{out:#?}"
    );

    // Retry the rest by status and provider.
    let out = db.run(&[
        "retry",
        "--status",
        "cancelled",
        "--provider",
        "claude",
        "--dry-run",
    ]);
    assert!(out.ok().contains("2 task(s) would be retried"), "{out:#?}");
    db.run(&["retry", "--status", "cancelled", "--provider", "claude"])
        .ok();
    for id in &claude {
        assert_eq!(status_of(&client, *id).await, "pending");
    }

    // --older-than: nothing is that old.
    let out = db.run(&["cancel", "--status", "pending", "--older-than", "1h"]);
    assert!(out.ok().contains("0 task(s) cancelled"), "{out:#?}");

    // Unknown ids are said, after the others are done, with a non-zero exit.
    db.run(&["cancel", &codex[1].to_string(), "999999"])
        .fails(1, "no such task(s) matching the filters: 999999");
    assert_eq!(status_of(&client, codex[1]).await, "cancelled");
    // Nothing to select by: refused.
    db.run(&["cancel"])
        .fails(2, "task ids or a filter are required");
}

#[tokio::test]
async fn a_drained_worker_finishes_what_it_runs_takes_nothing_new_and_stays_registered() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let exec = common::test_executor();
    let _w = worker(&db, "w_drain", "claude", "1", &exec);
    let _a = assigner(&db, "assigner.drain");
    let running = task(&client, "long", "claude", r#"{"sleep": 2}"#).await;
    wait_status(&client, running, "in_progress").await;
    let out = db.run(&["workers", "drain", "w_drain", "--reason", "kernel update"]);
    assert!(
        out.ok().contains("worker 'w_drain' is draining"),
        "{out:#?}"
    );
    let waiting = enqueue(&client, "claude", 2).await;
    wait_status(&client, running, "completed").await;
    // Two assigner rounds after the running task ended: nothing new for it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for id in &waiting {
        assert_eq!(status_of(&client, *id).await, "pending");
    }
    let list = db.run(&["workers"]);
    assert!(list.ok().contains("draining (paused)"), "{list:#?}");
    assert!(list.ok().contains("kernel update"), "{list:#?}");
    let json = db.run(&["workers", "--json"]).json();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["jr_name"] == "w_drain")
        .unwrap()
        .clone();
    assert!(
        row["paused"]["reason"]
            .as_str()
            .unwrap()
            .contains("kernel update"),
        "{row:#}"
    );
    assert_eq!(row["is_online"], true, "it stays registered and online");

    let out = db.run(&["workers", "undrain", "w_drain"]);
    assert!(out.ok().contains("takes tasks again"), "{out:#?}");
    for id in &waiting {
        wait_status(&client, *id, "completed").await;
    }
    db.run(&["workers", "drain", "nobody"])
        .fails(1, "there is no worker 'nobody'");
}

#[tokio::test]
async fn a_limited_provider_ahead_in_the_queue_does_not_starve_the_others() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // Room for about one start every two seconds, and a backlog ahead of the others in the
    // order of service: the others must not wait for that backlog (40 s here).
    db.run(&["providers", "set", "slow", "--max-starts-per-minute", "30"])
        .ok();
    // Twenty tasks of the limited provider, more urgent than the three others behind them.
    for i in 0..20 {
        client
            .execute(
                "INSERT INTO jr_work_queue (title, provider, priority) VALUES ($1, 'slow', 1)",
                &[&format!("slow {i}")],
            )
            .await
            .unwrap();
    }
    let others = enqueue(&client, "fast", 3).await;
    let _w = worker(&db, "w_mixed_cap", "slow,fast", "4", "noop");
    let _a = assigner(&db, "assigner.starve");
    for id in &others {
        wait_status(&client, *id, "completed").await;
    }
    let slow_done = count(
        &client,
        "SELECT count(*) FROM jr_work_queue WHERE provider = 'slow' AND status = 'completed'",
    )
    .await;
    assert!(
        slow_done < 20,
        "the others ran only after the limited provider's backlog ({slow_done} of 20 done)"
    );
}

const ROUTED_TO_CODEX: &str = "SELECT count(*) FROM jr_work_queue \
     WHERE coalesce(routed_provider, provider) = 'codex' \
       AND status IN ('assigned', 'in_progress')";

async fn result_of(client: &Client, id: i64) -> (String, Option<String>) {
    let r = client
        .query_one(
            "SELECT coalesce(result, ''), assigned_jr FROM jr_work_queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get::<_, String>(0).trim().to_string(), r.get(1))
}

#[tokio::test]
async fn a_paused_providers_tasks_that_allow_it_fall_back_within_the_fallbacks_limits() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let exec = common::test_executor();
    db.run(&["providers", "set", "claude", "--fallback", "codex"])
        .ok();
    // The fallback's own limit counts the tasks routed to it.
    db.run(&["providers", "set", "codex", "--max-running", "1"])
        .ok();
    db.run(&["pause", "--provider", "claude", "--reason", "quota"])
        .ok();
    let _c = worker(&db, "w_claude", "claude", "3", &exec);
    let _x = worker(&db, "w_codex", "codex", "3", &exec);
    let _a = assigner(&db, "assigner.fallback");
    let payload = r#"{"stdout_env": "JR_PROVIDER", "sleep": 0.3}"#;
    // Allowed by the option, and by the payload of a plain insert.
    let mut allowed = vec![];
    for i in 0..2 {
        let out = db.run(&[
            "enqueue",
            "--title",
            &format!("by option {i}"),
            "--provider",
            "claude",
            "--fallback-ok",
            "--payload",
            payload,
        ]);
        allowed.push(out.ok().trim().parse::<i64>().unwrap());
    }
    allowed.push(
        task(
            &client,
            "by payload",
            "claude",
            r#"{"fallback": true, "stdout_env": "JR_PROVIDER", "sleep": 0.3}"#,
        )
        .await,
    );
    let waits = task(&client, "waits", "claude", payload).await;

    // They run on the codex worker, one at a time (codex's limit), told to use codex.
    let deadline = Instant::now() + WAIT;
    loop {
        let routed = count(&client, ROUTED_TO_CODEX).await;
        assert!(routed <= 1, "{routed} tasks under codex (its limit is 1)");
        let mut done = 0;
        for id in &allowed {
            done += i64::from(status_of(&client, *id).await == "completed");
        }
        if done == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "fell back: {done}/3 completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &allowed {
        assert_eq!(
            result_of(&client, *id).await,
            ("JR_PROVIDER=codex".to_string(), Some("w_codex".to_string())),
            "task {id}"
        );
    }
    let why: String = client
        .query_one(
            "SELECT details FROM jr_task_events WHERE task_id = $1 AND action = 'assigned'",
            &[&allowed[2]],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        why.starts_with("fallback to provider 'codex' (provider 'claude' paused by ")
            && why.contains("quota"),
        "{why}"
    );
    // A task that does not allow it waits for its own provider, and says so.
    assert_eq!(status_of(&client, waits).await, "pending");
    let show = db.run(&["show", &waits.to_string()]);
    assert!(
        show.ok().contains("waiting: provider 'claude' paused by "),
        "{show:#?}"
    );
    db.run(&["resume", "--provider", "claude"]).ok();
    wait_status(&client, waits, "completed").await;
    assert_eq!(
        result_of(&client, waits).await,
        (
            "JR_PROVIDER=claude".to_string(),
            Some("w_claude".to_string())
        )
    );
}

/// The health of a worker whose attempts fail falls, `jrq workers --json` shows why, and
/// the monitor reports it once it is far below the fleet's median.
#[tokio::test]
async fn a_failing_worker_loses_health_and_the_monitor_reports_it() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let exec = common::test_executor();
    let names = ["w_ok_1", "w_ok_2", "w_ok_3", "w_bad"];
    let _workers: Vec<WorkerProc> = names
        .iter()
        .map(|n| worker(&db, n, "", "2", &exec))
        .collect();
    // A high circuit threshold keeps the failing worker taking its pinned tasks.
    let _a = WorkerProc::assigner(
        &db.url,
        "assigner.health",
        &[
            "--poll-interval",
            "200ms",
            "--heartbeat-interval",
            "1s",
            "--circuit-failures",
            "100",
        ],
    );
    let mut ids = vec![];
    for n in names {
        let payload = if n == "w_bad" { r#"{"exit": 1}"# } else { "{}" };
        for i in 0..6 {
            ids.push(
                client
                    .query_one(
                        "INSERT INTO jr_work_queue (title, target_jr, payload) \
                         VALUES ($1, $2, $3::text::jsonb) RETURNING id",
                        &[&format!("{n} {i}"), &n, &payload],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0),
            );
        }
    }
    wait_for(WAIT, "every task to finish", || async {
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status IN ('completed', 'failed')",
        )
        .await
            == 24
    })
    .await;
    // The workers count their outcomes in their rows up to a second later (V19).
    wait_for(WAIT, "every outcome counted", || async {
        count(
            &client,
            "SELECT count(*) FROM jr_status WHERE kind = 'worker' \
               AND length(recent_outcomes) = 6",
        )
        .await
            == 4
    })
    .await;
    let fleet = db.run(&["workers", "--json"]).json();
    let health = |name: &str| {
        fleet
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["jr_name"] == name)
            .unwrap_or_else(|| panic!("{name} in {fleet:#}"))["health"]
            .clone()
    };
    let bad = health("w_bad");
    // (1/7 + 0) / 2, halved: it never succeeded.
    assert_eq!(bad["score"], 4, "{bad:#}");
    assert_eq!(bad["inputs"]["recent"], "------", "{bad:#}");
    assert_eq!(bad["inputs"]["consecutive_failures"], 6, "{bad:#}");
    assert!(bad["inputs"]["last_success_age_s"].is_null(), "{bad:#}");
    let good = health("w_ok_1");
    assert_eq!(good["score"], 100, "{good:#}");
    assert_eq!(good["inputs"]["recent"], "++++++", "{good:#}");
    assert!(
        (good["inputs"]["completed_1h"].as_f64().unwrap() - 6.0).abs() < 0.01,
        "{good:#}"
    );
    let table = db.run(&["workers"]);
    assert!(table.ok().contains("4 (0/6 ok)"), "{table:#?}");

    let out = common::bin("jr-health-monitor")
        .args(["--manager", "none", "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:#?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["health_median"], 100.0, "{report:#}");
    assert_eq!(
        report["unhealthy_workers"],
        serde_json::json!([["w_bad", 4]]),
        "{report:#}"
    );
    assert!(
        report["alerts"].as_array().unwrap().iter().any(|a| a
            .as_str()
            .unwrap()
            .starts_with("worker 'w_bad' has health 4")),
        "{report:#}"
    );
}

#[tokio::test]
async fn a_round_that_found_a_limited_provider_busy_goes_again_soon_not_at_the_next_poll() {
    let db = TestDb::new().await;
    let client = db.client().await;
    db.run(&["providers", "set", "claude", "--max-running", "100"])
        .ok();
    let _w = worker(&db, "w_busy", "claude", "2", "sleep:10ms");
    // Polls only every minute: what assigns below is the retry, or nothing.
    let _a = WorkerProc::assigner(
        &db.url,
        "assigner.busy",
        &["--poll-interval", "60s", "--heartbeat-interval", "1s"],
    );
    wait_for(WAIT, "the assigner and the worker online", || async {
        count(
            &client,
            "SELECT count(*) FROM jr_status WHERE is_online AND status <> 'starting'",
        )
        .await
            == 2
    })
    .await;
    // Another round holds the provider's row (this test's transaction, as another
    // assigner's round would): the round the insert wakes gives claude no room.
    let mut holder = db.client().await;
    let txn = holder.transaction().await.unwrap();
    txn.execute(
        "SELECT 1 FROM jr_providers WHERE name = 'claude' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let id = task(&client, "held back", "claude", "{}").await;
    wait_for(WAIT, "the assigner to say the provider is busy", || async {
        count(
            &client,
            "SELECT count(*) FROM jr_status WHERE jr_name = 'assigner.busy' \
             AND status_text LIKE '%busy in another assigner''s round%'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(status_of(&client, id).await, "pending");
    txn.commit().await.unwrap();
    // Nothing notifies and the next poll is a minute away: only the retry assigns it.
    wait_status(&client, id, "completed").await;
}
