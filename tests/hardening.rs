//! Defects found by adversarial testing (issue 11), each reproduced against the real
//! binaries and a real PostgreSQL: what a task's program, a psql INSERT or a careless
//! operator can do must never jam, crash or fool a daemon.

mod common;

use std::time::Duration;

use common::{next_datagram, test_executor, wait_for, TestDb, WorkerProc};
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(30);

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

async fn status_of(client: &Client, id: i64) -> String {
    client
        .query_one("SELECT status FROM jr_work_queue WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

async fn wait_status(client: &Client, id: i64, want: &str) {
    wait_for(T, &format!("task {id} to be {want}"), || async {
        status_of(client, id).await == want
    })
    .await;
}

/// Inserts a task assigned to `worker` with `payload`, like an operator with psql.
async fn assigned_task(client: &Client, worker: &str, payload: &serde_json::Value) -> i64 {
    client
        .query_one(
            "INSERT INTO jr_work_queue (title, payload, status, assigned_jr, assigned_at) \
             VALUES ('t', $1, 'assigned', $2, now()) RETURNING id",
            &[payload, &worker],
        )
        .await
        .unwrap()
        .get(0)
}

async fn text_of(client: &Client, id: i64, column: &str) -> String {
    let sql = format!("SELECT coalesce({column}, '') FROM jr_work_queue WHERE id = $1");
    client.query_one(&sql, &[&id]).await.unwrap().get(0)
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn output_postgres_cannot_store_is_replaced_and_a_refused_outcome_blocks_no_other() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // A rule of the operator's own that refuses one result: the worker's batch of outcomes
    // then holds one the database will never take.
    exec(
        &client,
        "ALTER TABLE jr_work_queue ADD CONSTRAINT no_poison CHECK (result IS DISTINCT FROM 'poison')",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let _w = WorkerProc::start(
        &db.url,
        "jr_nul",
        &[
            "--exec",
            &test_executor(),
            "--capacity",
            "4",
            "--poll-interval",
            "100ms",
        ],
        &[],
    );
    // NUL bytes and invalid UTF-8 on stdout (a success) and on stderr (a failure).
    let nul_out = assigned_task(
        &client,
        "jr_nul",
        &serde_json::json!({"stdout": "", "stdout_b64": b64(b"a\0b\xff\n")}),
    )
    .await;
    let nul_err = assigned_task(
        &client,
        "jr_nul",
        &serde_json::json!({"stdout": "", "stderr_b64": b64(b"x\0y\n"), "exit": 3}),
    )
    .await;
    wait_status(&client, nul_out, "completed").await;
    wait_status(&client, nul_err, "failed").await;
    let result = text_of(&client, nul_out, "result").await;
    assert!(result.starts_with("a\u{FFFD}b\u{FFFD}\n"), "{result:?}");
    assert!(
        result.contains("[jrq: 1 NUL byte(s) and bytes that are not UTF-8 replaced with U+FFFD"),
        "the result says what was replaced: {result:?}"
    );
    let error = text_of(&client, nul_err, "error").await;
    assert!(error.contains("x\u{FFFD}y"), "{error:?}");
    assert!(error.contains("1 NUL byte(s) replaced"), "{error:?}");

    // Three tasks finish together; the database refuses one outcome.
    let poison = assigned_task(
        &client,
        "jr_nul",
        &serde_json::json!({"stdout": "poison", "wait_file": release}),
    )
    .await;
    let mut fine = vec![];
    for i in 0..2 {
        let p = serde_json::json!({"stdout": format!("fine {i}"), "wait_file": release});
        fine.push(assigned_task(&client, "jr_nul", &p).await);
    }
    exec(&client, "NOTIFY jrq_worker, 'jr_nul'").await;
    for id in fine.iter().chain([&poison]) {
        wait_status(&client, *id, "in_progress").await;
    }
    std::fs::write(&release, "").unwrap();
    for id in &fine {
        wait_status(&client, *id, "completed").await;
    }
    wait_status(&client, poison, "failed").await;
    let error = text_of(&client, poison, "error").await;
    assert!(
        error.starts_with("jrq could not store this attempt's outcome (completed): ")
            && error.contains("no_poison"),
        "the task says why it failed: {error:?}"
    );
    // And the worker goes on.
    let after = assigned_task(&client, "jr_nul", &serde_json::json!({})).await;
    exec(&client, "NOTIFY jrq_worker, 'jr_nul'").await;
    wait_status(&client, after, "completed").await;
}

#[tokio::test]
async fn a_worker_whose_outcome_writes_keep_failing_stops_pinging_the_watchdog() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // Every completion is refused, as by a full disk, while claims and heartbeats work.
    exec(
        &client,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'could not extend file (test)' USING ERRCODE = '53100'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON jr_task_events FOR EACH ROW \
             WHEN (NEW.action = 'completed') EXECUTE FUNCTION refuse()",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let _w = WorkerProc::start(
        &db.url,
        "jr_wd",
        &[
            "--exec",
            "noop",
            "--heartbeat-interval",
            "100ms",
            "--db-grace",
            "1s",
        ],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    next_datagram(&sock, T, |m| m.contains("READY=1")).await;
    next_datagram(&sock, T, |m| m.contains("WATCHDOG=1")).await;
    let id = assigned_task(&client, "jr_wd", &serde_json::json!({})).await;
    exec(&client, "NOTIFY jrq_worker, 'jr_wd'").await;
    next_datagram(&sock, T, |m| m.contains("outcome(s) unwritten")).await;
    let failing = tokio::time::Instant::now();
    // Watch for 3 s (the grace is 1 s): the last ping must come within the grace.
    let mut last_ping = failing;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout_at(failing + Duration::from_secs(3), sock.recv(&mut buf)).await
    {
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            last_ping = tokio::time::Instant::now();
        }
    }
    let pinged_for = last_ping - failing;
    assert!(
        pinged_for < Duration::from_millis(1500),
        "watchdog pings went on {pinged_for:?} while outcomes could not be written"
    );
    assert_eq!(status_of(&client, id).await, "in_progress");
    // The cause goes away: the outcome is written, and the worker is healthy again.
    exec(&client, "DROP TRIGGER refuse ON jr_task_events").await;
    wait_status(&client, id, "completed").await;
    next_datagram(&sock, T, |m| m.contains("WATCHDOG=1")).await;
}
