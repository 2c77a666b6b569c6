//! Least privilege against a real PostgreSQL: the group roles of migrations/V6, each
//! program end to end under a login user that has only its group, and PostgreSQL refusing
//! what a group must not do.

mod common;

use std::time::Duration;

use common::{
    status_of, test_executor, wait_for, wait_status, PrivateCluster, Run, TestDb, WorkerProc,
};
use nix::sys::signal::Signal;
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

/// A login user made for one test, in one group (roles are cluster-wide: it is dropped at
/// the end, also when the test fails).
struct Login {
    name: String,
    /// libpq address of the test's database as this user.
    url: String,
}

/// The logins of one test; dropped (DROP OWNED, DROP ROLE) with this value.
struct Logins {
    admin_url: String,
    names: Vec<String>,
}

impl Logins {
    fn new(admin_url: &str) -> Logins {
        Logins {
            admin_url: admin_url.to_string(),
            names: vec![],
        }
    }

    /// A new login on the server of `db_url`, with a password (the test server may check
    /// them), attached to `group` by `jrq roles grant` (as the superuser) unless `None`.
    async fn create(&mut self, db_url: &str, group: Option<&str>) -> Login {
        let name = format!(
            "jrq_l_{}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10],
            group.unwrap_or("none")
        );
        let password = uuid::Uuid::new_v4().simple().to_string();
        let admin = common::connect_str(&self.admin_url).await;
        let q = jrq::db::quote_ident(&name).unwrap();
        admin
            .batch_execute(&format!("CREATE ROLE {q} LOGIN PASSWORD '{password}'"))
            .await
            .unwrap();
        self.names.push(name.clone());
        let mut cfg = common::config(db_url);
        let dbname = cfg.pg.get_dbname().unwrap().to_string();
        cfg.pg.user(&name).password(password.as_bytes());
        let url = jrq::db::conninfo_with_dbname(&cfg, &dbname);
        if let Some(g) = group {
            let out = jrq_as(db_url, &["roles", "grant", g, &name]);
            assert!(out.ok().contains("is now in"), "{out:#?}");
        }
        Login { name, url }
    }
}

impl Drop for Logins {
    fn drop(&mut self) {
        let (url, names) = (self.admin_url.clone(), std::mem::take(&mut self.names));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = common::connect_str(&url).await;
                for n in names {
                    let q = jrq::db::quote_ident(&n).unwrap();
                    // DROP OWNED takes away its privileges here and on shared objects
                    // (CONNECT on databases); the memberships go with the role.
                    let _ = admin
                        .batch_execute(&format!("DROP OWNED BY {q}; DROP ROLE {q}"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `jrq ARGS` against the libpq address `url`.
fn jrq_as(url: &str, args: &[&str]) -> Run {
    Run::from(
        common::bin("jrq")
            .env("DATABASE_URL", url)
            .args(args)
            .output()
            .unwrap(),
    )
}

fn id_of(out: &Run) -> i64 {
    out.ok()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {out:#?}"))
}

/// (action, actor) of a task's events, oldest first.
async fn events(client: &Client, id: i64) -> Vec<(String, String)> {
    client
        .query(
            "SELECT action, actor FROM jr_task_events WHERE task_id = $1 ORDER BY id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn has_event(client: &Client, id: i64, action: &str, actor: &str) -> bool {
    events(client, id)
        .await
        .iter()
        .any(|(a, b)| a == action && b == actor)
}

/// The user a program's sessions run as, by application name.
async fn session_users(client: &Client, db: &str, application: &str) -> Vec<String> {
    client
        .query(
            "SELECT DISTINCT usename::text FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2",
            &[&db, &application],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Runs `sql` and expects PostgreSQL to refuse it for lack of a privilege (42501).
#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, tokio_postgres::Error>, sql: &str) {
    match result {
        Ok(v) => panic!("PostgreSQL allowed: {sql} -> {v:?}"),
        Err(e) => assert_eq!(
            jrq::error::sqlstate(&e),
            Some("42501"),
            "{sql}: {}",
            jrq::error::describe_pg_error(&e)
        ),
    }
}

async fn refused(client: &Client, sql: &str) {
    assert_refused(client.batch_execute(sql).await, sql);
}

// ---------------------------------------------------------------------------------------
// every program under its own group
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_program_works_under_its_own_group_end_to_end() {
    let db = TestDb::new().await;
    let su = db.client().await;
    let mut logins = Logins::new(&db.url);
    let admin = logins.create(&db.url, Some("admin")).await;
    let assigner = logins.create(&db.url, Some("assigner")).await;
    let worker = logins.create(&db.url, Some("worker")).await;
    let monitor = logins.create(&db.url, Some("monitor")).await;
    let reader = logins.create(&db.url, Some("reader")).await;

    let args = [
        "--exec",
        &test_executor(),
        // (Tasks without a provider go to any worker; codex is the fallback below.)
        "--provider",
        "codex",
        "--poll-interval",
        "100ms",
        "--heartbeat-interval",
        "200ms",
    ];
    // Names of their own: the stale cleanup below judges every worker process of this host
    // by its name.
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (n1, n2, n3) = (
        format!("w1-{tag}"),
        format!("w2-{tag}"),
        format!("w3-{tag}"),
    );
    let mut w1 = WorkerProc::start(&worker.url, &n1, &args, &[]);
    let mut w2 = WorkerProc::start(&worker.url, &n2, &args, &[]);
    let mut w3 = WorkerProc::start(&worker.url, &n3, &args, &[]);
    for w in [&w1, &w2, &w3] {
        w.wait_log(T, "worker ready").await;
    }
    let _assigner = WorkerProc::assigner(
        &assigner.url,
        "a1",
        &["--poll-interval", "100ms", "--pin-grace", "200ms"],
    );

    // The admin login creates a run and the work.
    // (Its callback, and the schedule's task below, are delayed: nothing runs them.)
    let run = jrq_as(
        &admin.url,
        &[
            "runs",
            "create",
            "--name",
            "r",
            "--auto-complete",
            "--on-complete",
            r#"{"title":"wrap up","delay":"1h"}"#,
        ],
    );
    let run = run.ok().trim().to_string();
    // A schedule by the admin login, ticked by the assigner login, read by the reader.
    jrq_as(
        &admin.url,
        &[
            "schedules",
            "add",
            "beat",
            "--every",
            "1s",
            "--title",
            "beat",
            "--delay",
            "1h",
        ],
    )
    .ok();
    wait_for(T, "the schedule's first task", || async {
        common::count(
            &su,
            "SELECT count(*) FROM jr_work_queue WHERE source = 'schedule'",
        )
        .await
            >= 1
    })
    .await;
    jrq_as(&admin.url, &["schedules", "pause", "beat"]).ok();
    let listed = jrq_as(&reader.url, &["schedules", "list", "--json"]).json();
    assert!(
        listed[0]["enqueued_total"].as_i64().unwrap() >= 1,
        "{listed}"
    );
    assert_eq!(listed[0]["last_error"], serde_json::Value::Null);
    let enqueue = |extra: &[&str]| {
        let mut a = vec!["enqueue"];
        a.extend_from_slice(extra);
        id_of(&jrq_as(&admin.url, &a))
    };
    let quick = enqueue(&["--title", "quick", "--run", &run, "--unique-key", "q"]);
    // The governor under the groups: an executor's provider refusal (the worker login's
    // jrq_providers_refused), a retry's failover (the assigner login reads the events).
    let marker = tempfile::tempdir().unwrap();
    let refusing_payload = serde_json::json!({"once_exit": {
        "file": marker.path().join("refused"), "code": 76, "stdout": "JRQ-RETRY-AT: 1\n"}})
    .to_string();
    let refusing = enqueue(&["--title", "quota", "--payload", &refusing_payload]);
    let flaky = enqueue(&[
        "--title",
        "flaky",
        "--payload",
        r#"{"exit_attempt": {"1": 75}}"#,
    ]);
    // (Before the long tasks take every worker.)
    wait_status(&su, refusing, "completed").await;
    wait_status(&su, flaky, "completed").await;
    assert!(
        has_event(&su, refusing, "released", &n1).await
            || has_event(&su, refusing, "released", &n2).await
            || has_event(&su, refusing, "released", &n3).await
    );
    for w in [&w1, &w2, &w3] {
        assert!(
            !w.log().contains("could not pause the refusing provider"),
            "the worker login may call jrq_providers_refused: {}",
            w.log()
        );
    }
    // Limits and pauses by the admin login, read by the reader login.
    jrq_as(
        &admin.url,
        &["providers", "set", "claude", "--max-running", "2"],
    )
    .ok();
    jrq_as(&admin.url, &["pause", "--provider", "claude"]).ok();
    let list = jrq_as(&reader.url, &["providers", "list"]);
    assert!(list.ok().contains("claude"), "{list:#?}");
    // Fallback: the admin login enqueues with fallback_ok, the assigner login reads it and
    // writes the provider it routed under, the reader login reads both. codex is limited
    // and served: the assigner login counts its running tasks (jrq_provider_active).
    jrq_as(
        &admin.url,
        &["providers", "set", "claude", "--fallback", "codex"],
    )
    .ok();
    jrq_as(
        &admin.url,
        &["providers", "set", "codex", "--max-running", "5"],
    )
    .ok();
    let fell_back = enqueue(&[
        "--title",
        "fallback",
        "--provider",
        "claude",
        "--fallback-ok",
        "--payload",
        r#"{"stdout_env": "JR_PROVIDER"}"#,
    ]);
    wait_status(&su, fell_back, "completed").await;
    let show = jrq_as(&reader.url, &["show", &fell_back.to_string()]);
    assert!(
        show.ok().contains("claude (fallback allowed)") && show.ok().contains("JR_PROVIDER=codex"),
        "{show:#?}"
    );
    let fleet = jrq_as(&reader.url, &["workers", "--json"]).json();
    assert!(fleet[0]["health"]["score"].is_i64(), "{fleet:#}");
    assert!(jrq_as(&reader.url, &["status"]).ok().contains("held:"));
    jrq_as(&admin.url, &["resume", "--provider", "claude"]).ok();
    let long = r#"{"sleep": 300, "progress_every": 0.05}"#;
    let l1 = enqueue(&["--title", "l1", "--target", &n1, "--payload", long]);
    let l2 = enqueue(&["--title", "l2", "--target", &n2, "--payload", long]);
    let l3 = enqueue(&["--title", "l3", "--target", &n3, "--payload", long]);

    // Routed by the assigner login, run by the worker login (claim, progress, finish).
    wait_status(&su, quick, "completed").await;
    for id in [l1, l2, l3] {
        wait_status(&su, id, "in_progress").await;
    }
    wait_for(T, "progress from the worker login", || async {
        su.query_one(
            "SELECT progress_percent FROM jr_work_queue WHERE id = $1",
            &[&l3],
        )
        .await
        .unwrap()
        .get::<_, i16>(0)
            > 0
    })
    .await;
    assert_eq!(
        session_users(&su, &db.name, "jr-queue-worker").await,
        std::slice::from_ref(&worker.name)
    );
    assert_eq!(
        session_users(&su, &db.name, "jr-auto-assigner").await,
        std::slice::from_ref(&assigner.name)
    );

    // w1 dies: the stale cleanup, as the monitor login, puts its task back; the assigner
    // login then fails it (its target stays offline past the pin grace).
    w1.signal(Signal::SIGKILL);
    assert_eq!(w1.wait_exit(T).await, None);
    let out = Run::from(
        common::bin("jr-stale-cleanup")
            .env("DATABASE_URL", &monitor.url)
            .args(["--force", "--grace", "1s"])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(has_event(&su, l1, "rescued", "stale-cleanup").await);
    wait_status(&su, l1, "failed").await;

    // w2 goes silent: the health monitor login rescues its task and marks it lost.
    w2.signal(Signal::SIGKILL);
    assert_eq!(w2.wait_exit(T).await, None);
    su.batch_execute(&format!(
        "UPDATE jr_status SET last_seen = now() - interval '1 hour' WHERE jr_name = '{n2}'; \
         UPDATE jr_work_queue SET started_at = now() - interval '1 hour' WHERE id = {l2}"
    ))
    .await
    .unwrap();
    let out = Run::from(
        common::bin("jr-health-monitor")
            .env("DATABASE_URL", &monitor.url)
            .args(["--manager", "none", "--json"])
            .output()
            .unwrap(),
    );
    assert!(matches!(out.code, Some(0) | Some(3)), "{out:#?}");
    assert!(has_event(&su, l2, "rescued", "health-monitor").await);
    let w2_status: String = su
        .query_one("SELECT status FROM jr_status WHERE jr_name = $1", &[&n2])
        .await
        .unwrap()
        .get(0);
    assert_eq!(w2_status, "lost");
    // ... and closed the auto-complete run, whose only task is done.
    wait_for(T, "the run to be closed", || async {
        let out = jrq_as(&reader.url, &["runs", "list", "--json"]);
        out.json()[0]["status"] == "completed"
    })
    .await;
    // ... whose callback the monitor login's update enqueued (the trigger's rights).
    assert_eq!(
        common::count(
            &su,
            "SELECT count(*) FROM jr_work_queue WHERE title = 'wrap up' AND source = 'run-callback'",
        )
        .await,
        1
    );

    // w3 is killed and restarted: the new instance (worker login) takes the name over and
    // puts its predecessor's task back; it runs again, and the admin login cancels it.
    w3.signal(Signal::SIGKILL);
    assert_eq!(w3.wait_exit(T).await, None);
    let _w3b = WorkerProc::start(&worker.url, &n3, &args, &[]);
    wait_for(T, "the restarted w3 to put its task back", || async {
        has_event(&su, l3, "rescued", &n3).await
    })
    .await;
    wait_for(T, "l3 to run again", || async {
        let ev = events(&su, l3).await;
        ev.iter().filter(|(a, _)| a == "started").count() == 2
            && status_of(&su, l3).await == "in_progress"
    })
    .await;
    let out = jrq_as(&admin.url, &["cancel", &l3.to_string()]);
    assert!(out.ok().contains("asked to end it"), "{out:#?}");
    wait_status(&su, l3, "cancelled").await;
    assert!(has_event(&su, l3, "cancelled", &n3).await);

    // The reader login reads everything a person reads...
    for a in [
        &["status", "--json"][..],
        &["tasks"],
        &["show", &l3.to_string()],
        &["workers", "--json"],
        &["runs", "list"],
    ] {
        jrq_as(&reader.url, a).ok();
    }
    // ... and so does the dashboard (every page, the metrics, the health check) ...
    {
        let web = common::Web::start(&reader.url, &[], &[]);
        for path in [
            "/".to_string(),
            "/workers".into(),
            "/tasks".into(),
            format!("/tasks/{l3}"),
            "/metrics".into(),
            "/healthz".into(),
        ] {
            let (status, body) = web.get(&path);
            assert_eq!(status, 200, "{path} as the reader: {body}");
            if path == "/metrics" {
                assert!(body.contains("\njrq_database_up 1"), "{body}");
            }
        }
        // Actions need a login that may write: with the reader's, one says so.
        let pw = [("JRQ_WEB_PASSWORD", "pw")];
        let web = common::Web::start(&reader.url, &["--allow-actions"], &pw);
        let (_, page) = common::http_get(&web.base, &format!("/tasks/{l1}"), Some("jrq:pw"));
        let token = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no form on {page}"))
            .to_string();
        let (status, body) = common::http_post(
            &web.base,
            &format!("/tasks/{l3}/retry"),
            &format!("csrf={token}"),
            Some("jrq:pw"),
        );
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("jrq_admin"), "{body}");
    }
    // ... and writes nothing (the daemons still run: only the tasks are compared).
    let tasks = || async {
        su.query_one(
            "SELECT string_agg(id || ':' || status || ':' || attempts, ',' ORDER BY id) \
             FROM jr_work_queue",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
    };
    wait_status(&su, l1, "failed").await;
    let before = tasks().await;
    jrq_as(&reader.url, &["enqueue", "--title", "x"]).fails(1, "permission denied");
    jrq_as(&reader.url, &["retry", &l1.to_string()]).fails(1, "permission denied");
    jrq_as(&reader.url, &["prune", "--older-than", "0s"]).fails(1, "permission denied");
    assert_eq!(tasks().await, before);

    // The admin login retries (its target is still offline: the assigner fails it again),
    // sets the run's status by hand and prunes what is finished.
    let out = jrq_as(&admin.url, &["retry", &l1.to_string()]);
    assert!(out.ok().contains("pending again"), "{out:#?}");
    wait_for(T, "l1 to fail again", || async {
        let ev = events(&su, l1).await;
        ev.iter().filter(|(a, _)| a == "failed").count() == 2
    })
    .await;
    jrq_as(&admin.url, &["runs", "set", &run, "archived"]).ok();
    wait_status(&su, l2, "failed").await;
    let finished = tasks().await;
    let out = jrq_as(&admin.url, &["prune", "--older-than", "0s", "--json"]);
    // Four of the flow above and the governor's three (quota, flaky, fallback).
    assert_eq!(out.json()["tasks"], 7, "{out:#?} {finished}");
    // Left: the schedule's and the callback's tasks (delayed, unfinished).
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM jr_work_queue \
             WHERE source NOT IN ('schedule', 'run-callback') OR status <> 'pending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "before the prune: {finished}");
}

// ---------------------------------------------------------------------------------------
// forbidden writes
// ---------------------------------------------------------------------------------------

/// A victim worker `v` as PostgreSQL holds it: registered with instance `iv`, one task
/// running under its lease, one assigned to it, one pending.
async fn victim(su: &Client) -> (uuid::Uuid, i64, i64, i64) {
    let iv = uuid::Uuid::new_v4();
    su.execute(
        "INSERT INTO jr_status (jr_name, host, pid, instance_id, is_online, status, \
             last_seen, started_at) \
         VALUES ('v', 'h', 1, $1, true, 'busy', now(), now())",
        &[&iv],
    )
    .await
    .unwrap();
    let ids: Vec<i64> = su
        .query(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at, started_at, \
                 attempts, lease_instance) VALUES \
             ('running', 'in_progress', 'v', now(), now(), 1, $1), \
             ('assigned', 'assigned', 'v', now(), NULL, 0, NULL) RETURNING id",
            &[&iv],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pending: i64 = su
        .query_one(
            "INSERT INTO jr_work_queue (title) VALUES ('pending') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (iv, ids[0], ids[1], pending)
}

#[tokio::test]
async fn postgres_refuses_a_worker_login_what_its_process_does_not_hold() {
    let db = TestDb::new().await;
    let su = db.client().await;
    let mut logins = Logins::new(&db.url);
    let login = logins.create(&db.url, Some("worker")).await;
    let (iv, running, assigned, pending) = victim(&su).await;
    let w = common::connect_str(&login.url).await;
    let before = db.fingerprint().await;

    // Plain writes (without a WHERE too: those need no right to read), TRUNCATE and DDL.
    for sql in [
        "UPDATE jr_work_queue SET result = 'forged'".into(),
        "DELETE FROM jr_work_queue".into(),
        format!("UPDATE jr_work_queue SET result = 'forged' WHERE id = {running}"),
        format!("UPDATE jr_work_queue SET status = 'pending' WHERE id = {assigned}"),
        format!("DELETE FROM jr_work_queue WHERE id = {pending}"),
        "INSERT INTO jr_work_queue (title) VALUES ('mine')".into(),
        "TRUNCATE jr_work_queue".into(),
        "UPDATE jr_status SET is_online = false WHERE jr_name = 'v'".into(),
        "DELETE FROM jr_status".into(),
        "INSERT INTO jr_task_events (task_id, actor, action) VALUES (1, 'v', 'completed')".into(),
        "UPDATE jr_runs SET status = 'archived'".into(),
        "CREATE TABLE mine (a int)".into(),
        "ALTER TABLE jr_work_queue ADD COLUMN mine int".into(),
        "DROP TABLE jr_task_events".into(),
        "CREATE INDEX ON jr_work_queue (title)".into(),
        "CREATE FUNCTION mine() RETURNS int LANGUAGE sql AS 'SELECT 1'".into(),
        "DELETE FROM jrq_schema_history".into(),
        // What would let it forge another worker's fence, and the rest of the rows.
        "SELECT lease_instance FROM jr_work_queue".into(),
        "SELECT instance_id FROM jr_status".into(),
        "SELECT * FROM jr_work_queue".into(),
        "SELECT payload FROM jr_work_queue".into(),
        // Migrations and grants are the owner's.
        "SELECT jrq_grant_groups()".into(),
    ] {
        refused(&w, &sql).await;
    }

    // The functions, with the victim's name but not its instance: nothing matches.
    let wrong = uuid::Uuid::new_v4();
    let finished: Vec<i64> = w
        .query_one(
            "SELECT jrq_tasks_finish('v', $1, ARRAY[$2::int8], '{1}', '{completed}', \
                 '{completed}', '{forged}', '{NULL}', '{0}', '{false}')",
            &[&wrong, &running],
        )
        .await
        .unwrap()
        .get(0);
    assert!(finished.is_empty());
    let progressed: i64 = w
        .query_one(
            "SELECT jrq_tasks_progress('v', $1, ARRAY[$2::int8], '{1}', '{99}')",
            &[&wrong, &running],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(progressed, 0);
    // What an attempt reports (V12): the worker group may call it, the fence holds.
    let output: i64 = w
        .query_one(
            "SELECT jrq_tasks_output('v', $1, ARRAY[$2::int8], '{1}', '{stdout}', '{x}', \
             '{}', 1024)",
            &[&wrong, &running],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(output, 0);
    let checkpointed: Vec<i64> = w
        .query_one(
            "SELECT jrq_tasks_checkpoint('v', $1, ARRAY[$2::int8], '{1}', '{\"{}\"}')",
            &[&wrong, &running],
        )
        .await
        .unwrap()
        .get(0);
    assert!(checkpointed.is_empty());
    let paused = w
        .query(
            "SELECT * FROM jrq_tasks_usage('v', $1, ARRAY[$2::int8], '{1}', '{m}', '{1}', \
             '{1}', '{1000000000}')",
            &[&wrong, &running],
        )
        .await
        .unwrap();
    assert!(paused.is_empty());
    let claimed = w
        .query(
            "SELECT id FROM jrq_tasks_claim('v', 10, $1, NULL)",
            &[&wrong],
        )
        .await
        .unwrap();
    assert!(claimed.is_empty(), "claimed the victim's task: {claimed:?}");
    let hb = w
        .query_one(
            "SELECT matched, held FROM jrq_workers_heartbeat('v', $1, 0, 'idle', 'x', NULL)",
            &[&wrong],
        )
        .await
        .unwrap();
    assert_eq!(hb.get::<_, i64>(0), 0);
    assert!(hb.get::<_, Vec<i64>>(1).is_empty());
    for sql in [
        "SELECT jrq_tasks_unassign_own('v', $1, 'x')",
        "SELECT jrq_workers_set_offline('v', $1, 'x')",
    ] {
        let n: i64 = w.query_one(sql, &[&wrong]).await.unwrap().get(0);
        assert_eq!(n, 0, "{sql}");
    }
    // Asking about the name tells who holds it, not the instance that fences its writes.
    let holder = w
        .query_one("SELECT * FROM jrq_workers_lock('v')", &[])
        .await
        .unwrap();
    let columns: Vec<&str> = holder.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        columns,
        [
            "kind",
            "host",
            "pid",
            "boot_id",
            "is_online",
            "last_seen_age_s"
        ]
    );
    assert_eq!(
        db.fingerprint().await,
        before,
        "a refused write changed something"
    );

    // With the right fence the same function writes: the refusals above are the fence's.
    let done: Vec<i64> = w
        .query_one(
            "SELECT jrq_tasks_finish('v', $1, ARRAY[$2::int8], '{1}', '{completed}', \
                 '{completed}', '{ok}', '{NULL}', '{0}', '{false}')",
            &[&iv, &running],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, [running]);
    assert_eq!(status_of(&su, running).await, "completed");
}

#[tokio::test]
async fn postgres_refuses_each_group_what_its_program_does_not_do() {
    let db = TestDb::new().await;
    let su = db.client().await;
    let mut logins = Logins::new(&db.url);
    let (_, running, _, pending) = victim(&su).await;
    let before = db.fingerprint().await;

    let reader = common::connect_str(&logins.create(&db.url, Some("reader")).await.url).await;
    for sql in [
        format!("UPDATE jr_work_queue SET status = 'cancelled' WHERE id = {pending}"),
        "INSERT INTO jr_work_queue (title) VALUES ('x')".into(),
        "DELETE FROM jr_task_events".into(),
        "UPDATE jr_status SET status_text = 'x'".into(),
        "INSERT INTO jr_runs (name) VALUES ('x')".into(),
        "SELECT lease_instance FROM jr_work_queue".into(),
        "SELECT id FROM jrq_tasks_claim('v', 1, gen_random_uuid(), NULL)".into(),
    ] {
        refused(&reader, &sql).await;
    }
    reader
        .batch_execute("SELECT title, payload, result FROM jr_work_queue; SELECT * FROM jr_status")
        .await
        .unwrap();

    let monitor = common::connect_str(&logins.create(&db.url, Some("monitor")).await.url).await;
    for sql in [
        format!("UPDATE jr_work_queue SET payload = '{{}}' WHERE id = {running}"),
        format!("UPDATE jr_work_queue SET result = 'forged' WHERE id = {running}"),
        format!("UPDATE jr_work_queue SET title = 'x' WHERE id = {pending}"),
        "DELETE FROM jr_work_queue".into(),
        "TRUNCATE jr_task_events".into(),
        "INSERT INTO jr_work_queue (title) VALUES ('x')".into(),
        "UPDATE jr_status SET instance_id = gen_random_uuid()".into(),
        "SELECT lease_instance FROM jr_work_queue".into(),
        "SELECT jrq_tasks_finish('v', gen_random_uuid(), '{}', '{}', '{}', '{}', '{}', '{}', \
             '{}', '{}')"
            .into(),
        "CREATE TABLE mine (a int)".into(),
    ] {
        refused(&monitor, &sql).await;
    }

    let assigner = common::connect_str(&logins.create(&db.url, Some("assigner")).await.url).await;
    for sql in [
        format!("UPDATE jr_work_queue SET payload = '{{}}' WHERE id = {pending}"),
        format!("UPDATE jr_work_queue SET result = 'x', priority = 0 WHERE id = {pending}"),
        format!("UPDATE jr_work_queue SET lease_instance = NULL WHERE id = {running}"),
        "DELETE FROM jr_work_queue".into(),
        "UPDATE jr_status SET capacity = 10000".into(),
        "SELECT lease_instance FROM jr_work_queue".into(),
        "SELECT instance_id FROM jr_status".into(),
        "SELECT id FROM jrq_tasks_claim('v', 1, gen_random_uuid(), NULL)".into(),
        "DROP TABLE jr_runs".into(),
    ] {
        refused(&assigner, &sql).await;
    }

    let admin = common::connect_str(&logins.create(&db.url, Some("admin")).await.url).await;
    for sql in [
        format!("UPDATE jr_work_queue SET payload = '{{}}' WHERE id = {pending}"),
        format!("UPDATE jr_work_queue SET title = 'x' WHERE id = {pending}"),
        "TRUNCATE jr_work_queue".into(),
        "DELETE FROM jr_status".into(),
        "DELETE FROM jr_runs".into(),
        "UPDATE jr_status SET is_online = false".into(),
        "SELECT lease_instance FROM jr_work_queue".into(),
        "SELECT jrq_workers_heartbeat('v', gen_random_uuid(), 0, 'idle', 'x', NULL)".into(),
        "ALTER TABLE jr_work_queue DROP COLUMN payload".into(),
        "CREATE TABLE mine (a int)".into(),
    ] {
        refused(&admin, &sql).await;
    }
    assert_eq!(
        db.fingerprint().await,
        before,
        "a refused write changed something"
    );
}

// ---------------------------------------------------------------------------------------
// the groups across databases, and a migrating user without CREATEROLE
// ---------------------------------------------------------------------------------------

/// Privileges of jrq's tables and functions in a database, as text (equal texts: equal
/// grants).
async fn acl_text(client: &Client) -> String {
    client
        .query_one(
            "SELECT string_agg(x, ';' ORDER BY x) FROM ( \
                 SELECT c.relname || ':' || coalesce(c.relacl::text, '') || ':' || \
                     coalesce((SELECT string_agg(a.attname || '=' || a.attacl::text, ',' \
                                   ORDER BY a.attname) \
                               FROM pg_attribute a \
                               WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL), '') AS x \
                 FROM pg_class c \
                 WHERE c.relname LIKE 'jr%' AND c.relkind = 'r' \
                 UNION ALL \
                 SELECT p.proname || ':' || coalesce(p.proacl::text, '') FROM pg_proc p \
                 WHERE p.proname LIKE 'jrq%') s",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn many_databases_migrating_at_once_create_the_groups_once_and_grant_in_each() {
    // A cluster of its own: the groups do not exist yet, so the migrations race for them.
    let cluster = PrivateCluster::start();
    let admin = common::connect_str(&cluster.url).await;
    let names: Vec<String> = (0..6).map(|i| format!("race_{i}")).collect();
    for n in &names {
        admin
            .batch_execute(&format!("CREATE DATABASE {n}"))
            .await
            .unwrap();
    }
    let base = common::config(&cluster.url);
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            common::bin("jrq")
                .env("DATABASE_URL", jrq::db::conninfo_with_dbname(&base, n))
                .arg("migrate")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = Run::from(child.wait_with_output().unwrap());
        assert!(
            out.ok().contains(&format!(
                "applied {} migration(s)",
                jrq::db::migrate::latest_version()
            )),
            "{out:#?}"
        );
        assert!(out.stderr.is_empty(), "{out:#?}");
    }
    let groups: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1) AND NOT rolcanlogin",
            &[&jrq::db::roles::GROUPS
                .iter()
                .map(|(g, _)| *g)
                .collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(groups, 5);
    let mut acls = vec![];
    for n in &names {
        let url = jrq::db::conninfo_with_dbname(&base, n);
        let c = common::connect_str(&url).await;
        acls.push(acl_text(&c).await);
        // Granting again changes nothing.
        let out = jrq_as(&url, &["roles", "setup"]);
        assert!(out.ok().contains("granted their rights"), "{out:#?}");
        assert_eq!(acl_text(&c).await, acls[0]);
        assert!(acls[0].contains("jrq_worker=X"), "{}", acls[0]);
    }
    assert!(acls.iter().all(|a| *a == acls[0]));
}

#[tokio::test]
async fn a_migrating_user_without_createrole_migrates_and_is_told_what_is_left() {
    let cluster = PrivateCluster::start();
    let dba = common::connect_str(&cluster.url).await;
    dba.batch_execute("CREATE ROLE jrq_owner LOGIN; CREATE ROLE someone LOGIN")
        .await
        .unwrap();
    dba.batch_execute("CREATE DATABASE app OWNER jrq_owner")
        .await
        .unwrap();
    let mut cfg = common::config(&cluster.url);
    cfg.pg.user("jrq_owner");
    let owner = jrq::db::conninfo_with_dbname(&cfg, "app");

    let out = jrq_as(&owner, &["migrate"]);
    assert!(
        out.ok().contains(&format!(
            "applied {} migration(s)",
            jrq::db::migrate::latest_version()
        )),
        "{out:#?}"
    );
    let note: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(note.len(), 1, "{out:#?}");
    assert!(
        note[0]
            .contains("jrq_worker, jrq_assigner, jrq_monitor, jrq_reader, jrq_admin do not exist")
            && note[0].contains("CREATE ROLE jrq_worker NOLOGIN;")
            && note[0].contains("`jrq roles setup`"),
        "{out:#?}"
    );
    let list = jrq_as(&owner, &["roles", "list", "--json"]).json();
    assert!(list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["exists"] == false));
    jrq_as(&owner, &["roles", "setup"]).fails(1, "may not create roles");
    // Attaching a login needs CREATEROLE too: refused, nothing changes.
    dba.batch_execute("CREATE ROLE jrq_worker NOLOGIN")
        .await
        .unwrap();
    jrq_as(&owner, &["roles", "grant", "worker", "someone"]).fails(1, "cannot add 'someone'");
    let members: i64 = dba
        .query_one(
            "SELECT count(*) FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid \
             WHERE r.rolname = 'jrq_worker'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(members, 0);

    // A DBA creates the rest, the owner grants.
    dba.batch_execute(
        "CREATE ROLE jrq_assigner NOLOGIN; CREATE ROLE jrq_monitor NOLOGIN; \
         CREATE ROLE jrq_reader NOLOGIN; CREATE ROLE jrq_admin NOLOGIN",
    )
    .await
    .unwrap();
    let out = jrq_as(&owner, &["roles", "setup"]);
    assert!(
        out.ok().contains(
            "granted their rights in this database: jrq_worker, jrq_assigner, jrq_monitor, \
             jrq_reader, jrq_admin"
        ),
        "{out:#?}"
    );
    let app = common::connect_str(&jrq::db::conninfo_with_dbname(
        &common::config(&cluster.url),
        "app",
    ))
    .await;
    let granted: bool = app
        .query_one(
            "SELECT has_function_privilege('jrq_worker', \
                 'jrq_tasks_claim(text, bigint, uuid, uuid)', 'EXECUTE') \
             AND NOT has_function_privilege('jrq_reader', \
                 'jrq_tasks_claim(text, bigint, uuid, uuid)', 'EXECUTE') \
             AND has_table_privilege('jrq_reader', 'jr_runs', 'SELECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(granted);
    // `jrq migrate` has nothing left to say.
    let out = jrq_as(&owner, &["migrate"]);
    assert!(out.ok().contains("up to date"), "{out:#?}");
    assert!(out.stderr.is_empty(), "{out:#?}");
}

// ---------------------------------------------------------------------------------------
// jrq roles
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn jrq_roles_lists_attaches_and_detaches_and_refuses_bad_input_changing_nothing() {
    let db = TestDb::new().await;
    let su = db.client().await;
    let mut logins = Logins::new(&db.url);
    let someone = logins.create(&db.url, None).await;
    let membership = || async {
        su.query_one(
            "SELECT coalesce(string_agg(g.rolname, ',' ORDER BY g.rolname), '') \
             FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid \
             JOIN pg_roles m ON m.oid = am.member WHERE m.rolname = $1",
            &[&someone.name],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
    };

    // Bad input: one line, a non-zero exit, nothing changed.
    db.run(&["roles", "grant", "owner", &someone.name])
        .fails(2, "'owner' is not a jrq group");
    db.run(&["roles", "grant", "worker", "jrq_admin"])
        .fails(2, "'jrq_admin' is a jrq group, not a login user");
    db.run(&["roles", "grant", "worker", "no_such_login_xyz"])
        .fails(1, "there is no role 'no_such_login_xyz'");
    db.run(&["roles", "revoke", "reader", "no_such_login_xyz"])
        .fails(1, "there is no role 'no_such_login_xyz'");
    assert_eq!(membership().await, "");

    let out = db.run(&["roles", "grant", "jrq_reader", &someone.name]);
    assert!(
        out.ok().contains(&format!(
            "'{}' is now in jrq_reader and may connect to database '{}'",
            someone.name, db.name
        )),
        "{out:#?}"
    );
    let out = db.run(&["roles", "grant", "reader", &someone.name]);
    assert!(out.ok().contains("is already in jrq_reader"), "{out:#?}");
    // A worker that can also read instance ids could write for another worker: said so.
    let out = db.run(&["roles", "grant", "worker", &someone.name]);
    assert!(out.ok().contains("note: "), "{out:#?}");
    assert_eq!(membership().await, "jrq_reader,jrq_worker");
    // The reader's rights work for it now.
    jrq_as(&someone.url, &["status"]).ok();
    // With CONNECT revoked from PUBLIC, an attached login still connects, another not.
    let stranger = logins.create(&db.url, None).await;
    su.batch_execute(&format!(
        "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
        jrq::db::quote_ident(&db.name).unwrap()
    ))
    .await
    .unwrap();
    jrq_as(&someone.url, &["status"]).ok();
    jrq_as(&stranger.url, &["status"]).fails(1, "permission denied for database");

    let list = db.run(&["roles", "list", "--json"]).json();
    let reader = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "jrq_reader")
        .unwrap()
        .clone();
    assert_eq!(reader["exists"], true);
    assert_eq!(reader["granted_here"], true);
    assert!(reader["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == someone.name.as_str()));
    let text = db.run(&["roles", "list"]);
    assert!(text.ok().contains(&someone.name), "{text:#?}");

    let out = db.run(&["roles", "revoke", "worker", &someone.name]);
    assert!(out.ok().contains("is no longer in jrq_worker"), "{out:#?}");
    let out = db.run(&["roles", "revoke", "worker", &someone.name]);
    assert!(
        out.ok().contains("is not in jrq_worker: nothing to do"),
        "{out:#?}"
    );
    assert_eq!(membership().await, "jrq_reader");
}
