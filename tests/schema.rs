//! The schema against a real PostgreSQL: migrations (also concurrent), the operators' psql
//! insert, the constraints, and the insert trigger's notifications.

mod common;

use std::time::Duration;

use common::TestDb;
use jrq::db::{self, migrate};

#[tokio::test]
async fn migrate_creates_the_schema_and_is_idempotent() {
    let db = TestDb::empty().await;
    let out = db.run(&["migrate"]);
    assert!(
        out.ok().contains(
            "applied 21 migration(s) (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13, V14, V15, V16, V17, V18, V19, V20, V21)"
        ),
        "{out:#?}"
    );
    let out = db.run(&["migrate"]);
    assert!(out.ok().contains("schema is up to date"), "{out:#?}");
    let client = db.client().await;
    for table in ["jr_work_queue", "jr_status", "jr_runs", "jr_task_events"] {
        let ok: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(ok, "{table} missing");
    }
    assert_eq!(
        migrate::current_version(&client).await.unwrap(),
        Some(migrate::latest_version())
    );
}

#[tokio::test]
async fn four_concurrent_migrations_all_succeed() {
    let db = TestDb::empty().await;
    let children: Vec<_> = (0..4)
        .map(|_| {
            db.jrq()
                .arg("migrate")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for child in children {
        let out = common::Run::from(child.wait_with_output().unwrap());
        if out.ok().contains("applied") {
            applied += 1;
        }
    }
    assert_eq!(applied, 1, "exactly one process applies the migration");
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM jrq_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, migrate::latest_version() as i64);
}

#[tokio::test]
async fn the_operators_psql_insert_gives_a_pending_task_with_defaults() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title, description, source, created_by) \
             VALUES ('Test Auto-Assign', 'Test', 'tpm', 'claude_tpm')",
        )
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT status, priority, sacred_fire_priority, attempts, max_attempts, \
                    timeout = interval '30 minutes', payload::text, provider, assigned_jr, \
                    run_after <= now(), progress_percent, title, created_by, source \
             FROM jr_work_queue",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 5);
    assert!(!row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i32>(3), 0);
    assert_eq!(row.get::<_, i32>(4), 3);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "{}");
    assert_eq!(row.get::<_, String>(7), "");
    assert_eq!(row.get::<_, Option<String>>(8), None);
    assert!(row.get::<_, bool>(9));
    assert_eq!(row.get::<_, i16>(10), 0);
    assert_eq!(row.get::<_, String>(11), "Test Auto-Assign");
    assert_eq!(row.get::<_, String>(12), "claude_tpm");
    assert_eq!(row.get::<_, String>(13), "tpm");
}

#[tokio::test]
async fn the_database_enforces_status_priority_and_unique_keys() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let bad = [
        "INSERT INTO jr_work_queue (title, status) VALUES ('x', 'done')",
        "INSERT INTO jr_work_queue (title, priority) VALUES ('x', -1)",
        "INSERT INTO jr_work_queue (title, max_attempts) VALUES ('x', 0)",
        "INSERT INTO jr_work_queue (title, payload) VALUES ('x', 'not json')",
        "INSERT INTO jr_work_queue (title) VALUES ('')",
        "INSERT INTO jr_status (jr_name) VALUES ('bad name')",
        "INSERT INTO jr_runs (status) VALUES ('finished')",
    ];
    for sql in bad {
        assert!(client.batch_execute(sql).await.is_err(), "accepted: {sql}");
    }
    // One unfinished task per unique key; a finished one frees the key.
    client
        .batch_execute("INSERT INTO jr_work_queue (title, unique_key) VALUES ('a', 'env-x')")
        .await
        .unwrap();
    let dup = client
        .batch_execute("INSERT INTO jr_work_queue (title, unique_key) VALUES ('b', 'env-x')")
        .await
        .unwrap_err();
    assert_eq!(jrq::error::sqlstate(&dup), Some("23505"));
    client
        .batch_execute(
            "UPDATE jr_work_queue SET status = 'completed' WHERE unique_key = 'env-x'; \
             INSERT INTO jr_work_queue (title, unique_key) VALUES ('c', 'env-x')",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_insert_trigger_notifies_once_per_statement() {
    let db = TestDb::new().await;
    let cfg = db.config();
    let (_listener, mut notes) = db::listen::listen(&cfg, &[db::CHANNEL_PENDING, "test_sentinel"])
        .await
        .unwrap();
    let client = db.client().await;
    // A 10 000-row statement, then a one-row statement, then a sentinel sent after both
    // committed: notifications from one session arrive in commit order.
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title) SELECT 'bulk ' || g FROM generate_series(1, 10000) g",
        )
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO jr_work_queue (title) VALUES ('one')")
        .await
        .unwrap();
    client.batch_execute("NOTIFY test_sentinel").await.unwrap();
    let mut pending = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
            .await
            .expect("a notification within the deadline")
            .expect("listener open");
        if n.channel() == "test_sentinel" {
            break;
        }
        assert_eq!(n.channel(), db::CHANNEL_PENDING);
        pending += 1;
    }
    assert_eq!(pending, 2, "one notification per INSERT statement");
}

#[tokio::test]
async fn a_psql_insert_wakes_a_listener_at_once() {
    let db = TestDb::new().await;
    let cfg = db.config();
    let (_listener, mut notes) = db::listen::listen(&cfg, &[db::CHANNEL_PENDING])
        .await
        .unwrap();
    let out = db.run(&["enqueue", "--title", "wake up"]);
    out.ok();
    let n = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(n.channel(), db::CHANNEL_PENDING);
}

#[tokio::test]
async fn the_hot_queries_use_the_partial_indexes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, completed_at) \
             SELECT 'done ' || g, 'completed', 'w1', now() FROM generate_series(1, 20000) g; \
             INSERT INTO jr_work_queue (title) SELECT 'p ' || g FROM generate_series(1, 50) g; \
             ANALYZE jr_work_queue",
        )
        .await
        .unwrap();
    let plan = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(&format!("EXPLAIN {sql}"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    // The routing scan (migrations/V20): from the assigner's floor, the floor an index
    // condition.
    let pending = plan(
        "SELECT id FROM jr_work_queue WHERE status = 'pending' AND run_after <= now() \
           AND ((NOT sacred_fire_priority), priority, created_at, id) \
               >= (true, 5, '2026-01-01', 7) \
         ORDER BY (NOT sacred_fire_priority), priority, created_at, id LIMIT 10 \
         FOR UPDATE SKIP LOCKED",
    )
    .await;
    assert!(
        pending.contains("jr_work_queue_pending_key_idx"),
        "{pending}"
    );
    assert!(
        pending
            .contains("Index Cond: (ROW((NOT sacred_fire_priority), priority, created_at, id) >="),
        "{pending}"
    );
    // The claim's scan (migrations/V18): a worker's held tasks from its floor, the floor
    // an index condition (not a filter over every entry of the worker).
    let assigned = plan(
        "SELECT id FROM jr_work_queue WHERE status = 'assigned' AND assigned_jr = 'w1' \
           AND coalesce(lease_seq, 9223372036854775807) > 5 \
         ORDER BY sacred_fire_priority DESC, priority, created_at, id LIMIT 10",
    )
    .await;
    assert!(assigned.contains("jr_work_queue_held_idx"), "{assigned}");
    assert!(
        assigned.contains("Index Cond: ((assigned_jr = 'w1'::text) AND (COALESCE(lease_seq"),
        "{assigned}"
    );
}

#[tokio::test]
async fn daemon_sessions_read_the_queue_index_in_order_even_without_statistics() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // A bulk insert the planner has not seen yet (autoanalyze has not run).
    client
        .batch_execute(
            "INSERT INTO jr_work_queue (title) SELECT 't' || g FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    db::tune_session(&client).await.unwrap();
    let plan: Vec<String> = client
        .query(
            "EXPLAIN SELECT id FROM jr_work_queue WHERE status = 'pending' AND run_after <= now() \
             AND (provider = '' OR provider = ANY('{}')) AND (target_jr IS NULL OR target_jr = ANY('{w}')) \
             ORDER BY (NOT sacred_fire_priority), priority, created_at, id LIMIT 10 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using jr_work_queue_pending_key_idx"),
        "{plan}"
    );
    assert!(
        !plan.contains("Sort"),
        "the backlog must not be sorted per round:\n{plan}"
    );
}
