//! The fleet through PgBouncer in transaction pooling mode (Debian's pgbouncer, started on
//! a private port in front of a private cluster; `JRQ_POOL_MODE=transaction` for every
//! program): more programs than the pool has server connections complete every task, the
//! server never sees more connections than the pool size, and the same processes go on
//! after PgBouncer is restarted under them.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    connect_str, count, process_runs, wait_for, PgBouncer, PrivateCluster, Web, WorkerProc,
};

const T: Duration = Duration::from_secs(60);
/// Server connections PgBouncer may open (for the one database and user of the test).
const POOL: u32 = 6;
const WORKERS: usize = 12;
const TASKS: i64 = 400;

#[tokio::test]
async fn a_fleet_through_pgbouncer_in_transaction_mode_completes_every_task_on_a_few_server_connections(
) {
    let cluster = PrivateCluster::start();
    // The schema is migrated directly: jrq migrate refuses a transaction pooler.
    let client = cluster.migrated().await;
    // Every statement the server runs is logged: none may leave session state behind.
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "ALTER SYSTEM SET log_line_prefix = '%m [%p] app=%a '",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let bouncer = PgBouncer::start(&cluster, POOL);
    let url = bouncer.url.clone();
    let pooled = [("JRQ_POOL_MODE", "transaction")];

    let refused = common::bin("jrq")
        .env("DATABASE_URL", &url)
        .envs(pooled)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "jrq migrate through PgBouncer"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("run it against PostgreSQL itself"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The server's connections other than this test's own.
    let server_sql = "SELECT count(*) FROM pg_stat_activity \
                      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let client = connect_str(&cluster.url).await;
        let most = most.clone();
        tokio::spawn(async move {
            loop {
                // (The statement leaves out the sampler; the test's own client is one.)
                let n = count(&client, server_sql).await - 1;
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let exec = common::test_executor();
    let fast = ["--heartbeat-interval", "1s", "--poll-interval", "200ms"];
    let mut args = vec!["--name", "assigner.pgbouncer"];
    args.extend(fast);
    let assigner = WorkerProc::start_bin("jr-auto-assigner", &url, &args, &pooled);
    let workers: Vec<WorkerProc> = (1..=WORKERS)
        .map(|i| {
            let mut args = vec!["--exec", &exec, "--capacity", "2"];
            args.extend(fast);
            WorkerProc::start(&url, &format!("jr_bouncer{i}"), &args, &pooled)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let textfile = dir.path().join("jrq.prom");
    let monitor = WorkerProc::start_bin(
        "jr-health-monitor",
        &url,
        &[
            "--watch",
            "1s",
            "--manager",
            "none",
            "--textfile",
            textfile.to_str().unwrap(),
        ],
        &pooled,
    );
    let web = Web::start(&url, &[], &pooled);
    for w in &workers {
        w.wait_log(T, "worker ready").await;
    }
    assigner.wait_log(T, "assigner ready").await;

    // Enqueued through PgBouncer too: the CLI in one call, the rest by SQL.
    let enqueued = common::bin("jrq")
        .env("DATABASE_URL", &url)
        .envs(pooled)
        .args(["enqueue", "--title", "through the pooler"])
        .output()
        .unwrap();
    assert!(
        enqueued.status.success(),
        "{}",
        String::from_utf8_lossy(&enqueued.stderr)
    );
    client
        .execute(
            "INSERT INTO jr_work_queue (title, payload) \
             SELECT 'pooled ' || i, '{\"sleep\": 0.02}' FROM generate_series(2, $1::bigint) i",
            &[&TASKS],
        )
        .await
        .unwrap();
    let completed = "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'";
    wait_for(T, "a third of the tasks to complete", || async {
        count(&client, completed).await >= TASKS / 3
    })
    .await;

    // PgBouncer goes away under the fleet and comes back on the same port.
    bouncer.restart();
    wait_for(
        Duration::from_secs(120),
        "every task to complete",
        || async { count(&client, completed).await == TASKS },
    )
    .await;
    for (what, p) in workers
        .iter()
        .map(|w| ("worker", w))
        .chain([("assigner", &assigner), ("monitor", &monitor)])
    {
        assert!(process_runs(p.pid()), "the {what} exited:\n{}", p.log());
        p.wait_log(T, "database connection restored").await;
    }
    // The monitor's rounds take their lock in a transaction of their own: they go on
    // (a round that was not skipped writes the textfile).
    let written = std::fs::metadata(&textfile).unwrap().modified().unwrap();
    wait_for(T, "a monitor round after the restart", || async {
        std::fs::metadata(&textfile).unwrap().modified().unwrap() > written
    })
    .await;
    let (status, body) = web.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = web.get("/tasks");
    assert_eq!(status, 200, "{body}");

    sampler.abort();
    let most = most.load(Ordering::Relaxed);
    let clients = WORKERS + 3; // the workers, the assigner, the monitor, the dashboard
    eprintln!(
        "{clients} programs through PgBouncer (pool_size {POOL}): at most {most} server \
         connections"
    );
    assert!(
        most <= POOL as i64,
        "the server saw {most} connections, the pool has {POOL}"
    );
    assert!(
        !bouncer.log().contains("prepared statement"),
        "{}",
        bouncer.log()
    );
    // What the server ran: no LISTEN, no session setting, no session lock, no named
    // statement — nothing that would stay on a server connection for the next client.
    // (The test's own direct connections, application jrq-test, are not the fleet.)
    let log = cluster.server_log();
    let fleet: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("app=jrq-test "))
        .collect();
    for banned in [
        "LISTEN ",
        "SET enable_seqscan",
        "SET default_transaction_read_only",
        "pg_advisory_lock(",
        "pg_try_advisory_lock(",
        "execute s",
    ] {
        let hit = fleet.iter().find(|l| l.contains(banned));
        assert!(
            hit.is_none(),
            "the server ran {banned:?}: {}",
            hit.copied().unwrap_or("")
        );
    }
    assert!(
        log.contains("pg_try_advisory_xact_lock("),
        "the monitor's lock, a transaction's, is in the log"
    );
    for p in workers.iter().chain([&assigner, &monitor]) {
        let log = p.log();
        assert!(
            !log.contains("prepared statement") && !log.contains("does not exist"),
            "{}:\n{log}",
            p.name
        );
    }
}
