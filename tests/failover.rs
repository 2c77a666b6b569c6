//! Primary failover: a private primary with a streaming standby (`pg_basebackup -R`), every
//! long-lived program on a two-host address with `target_session_attrs=read-write`. The
//! primary is killed mid-load (immediate shutdown, as a crash), the standby promoted, and
//! the same processes — none restarted — finish every task on the new primary.
//!
//! With synchronous replication nothing a client saw completed is lost: every task read as
//! completed on the old primary before the kill is completed on the new one by the same
//! attempt (not run again). With asynchronous replication the last commits before the
//! crash may be missing on the standby: tasks whose completion was among them run again
//! (their leases are given back by the workers that no longer run them), and still every
//! task ends completed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{connect_str, count, process_runs, wait_for, PrivateCluster, Web, WorkerProc};
use tokio_postgres::Client;

const T: Duration = Duration::from_secs(60);
/// Tasks enqueued; the primary dies after [`KILL_AFTER`] of them completed.
const TASKS: i64 = 240;
const KILL_AFTER: i64 = 60;

async fn completed_attempts(client: &Client) -> HashMap<i64, i32> {
    client
        .query(
            "SELECT id, attempts FROM jr_work_queue WHERE status = 'completed'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn failover(sync: bool) {
    let primary = PrivateCluster::start_with(&["--tcp"]);
    let client = primary.migrated().await;
    let standby = primary.standby(sync);
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let exec = common::test_executor();
    let fast = ["--heartbeat-interval", "1s", "--poll-interval", "200ms"];
    let assigner = WorkerProc::assigner(&url, "assigner.failover", &fast);
    let workers: Vec<WorkerProc> = (1..=2)
        .map(|i| {
            let mut args = vec!["--exec", &exec, "--capacity", "4"];
            args.extend(fast);
            WorkerProc::start(&url, &format!("jr_failover{i}"), &args, &[])
        })
        .collect();
    let monitor = WorkerProc::start_bin(
        "jr-health-monitor",
        &url,
        &["--watch", "1s", "--manager", "none"],
        &[],
    );
    let web = Web::start(&url, &[], &[]);
    for w in &workers {
        w.wait_log(T, "worker ready").await;
    }
    assigner.wait_log(T, "assigner ready").await;

    client
        .execute(
            "INSERT INTO jr_work_queue (title, payload) \
             SELECT 'failover ' || i, '{\"sleep\": 0.1}' FROM generate_series(1, $1::bigint) i",
            &[&TASKS],
        )
        .await
        .unwrap();
    // Asynchronous replication: the enqueue itself is on the standby before the crash (the
    // test is about what the fleet does, not about inserts the clients saw committed).
    let replica = connect_str(&standby.url).await;
    wait_for(T, "the standby to have every task", || async {
        count(&replica, "SELECT count(*) FROM jr_work_queue").await == TASKS
    })
    .await;
    drop(replica);
    wait_for(T, "the fleet to be mid-load", || async {
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        )
        .await
            >= KILL_AFTER
    })
    .await;
    // What clients saw completed: with a synchronous standby, all of it is on the standby.
    let acknowledged = completed_attempts(&client).await;
    primary.kill_server();
    standby.promote();

    let promoted = std::time::Instant::now();
    let new_primary = connect_str(&standby.url).await;
    let done_at_promotion = count(
        &new_primary,
        "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
    )
    .await;
    wait_for(T, "the first completion on the new primary", || async {
        count(
            &new_primary,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
        )
        .await
            > done_at_promotion
    })
    .await;
    let resumed = promoted.elapsed();
    wait_for(
        Duration::from_secs(120),
        "every task to complete",
        || async {
            count(
                &new_primary,
                "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
            )
            .await
                == TASKS
        },
    )
    .await;
    let after = completed_attempts(&new_primary).await;
    if sync {
        for (id, attempts) in &acknowledged {
            assert_eq!(
                after.get(id),
                Some(attempts),
                "task {id} was completed by attempt {attempts} before the failover"
            );
        }
    }
    let given_back = count(
        &new_primary,
        "SELECT count(*) FROM jr_task_events WHERE action = 'released' \
         AND details LIKE '%does not run the attempt%'",
    )
    .await;
    eprintln!(
        "{} replication: {} tasks completed before the kill; the first completion on the \
         new primary {:.1} s after the promotion; {given_back} unrun leases given back",
        if sync { "synchronous" } else { "asynchronous" },
        acknowledged.len(),
        resumed.as_secs_f64()
    );
    // The same processes did it all: none exited, each reconnected by itself.
    for (what, p) in workers
        .iter()
        .map(|w| ("worker", w))
        .chain([("assigner", &assigner), ("monitor", &monitor)])
    {
        assert!(process_runs(p.pid()), "the {what} exited:\n{}", p.log());
        p.wait_log(T, "database connection restored").await;
    }
    wait_for(
        T,
        "the dashboard to be healthy on the new primary",
        || async { web.get("/healthz").0 == 200 },
    )
    .await;
    // Nothing is left with a lease or a worker.
    assert_eq!(
        count(
            &new_primary,
            "SELECT count(*) FROM jr_work_queue WHERE lease_instance IS NOT NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn with_a_synchronous_standby_the_fleet_fails_over_and_loses_nothing_completed() {
    failover(true).await;
}

#[tokio::test]
async fn with_an_asynchronous_standby_the_fleet_fails_over_and_finishes_every_task() {
    failover(false).await;
}
