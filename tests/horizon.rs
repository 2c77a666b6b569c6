//! Issue 19: the scans of a worker's held tasks while something holds back the vacuum
//! horizon. A real session idle in a transaction keeps every dead index entry; the claim
//! and the assigner's load count, started from their floors (migrations/V18), read only
//! the entries past them. What a scan read is the index's `tuples_returned` counter of the
//! scanning transaction.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{exec, status_of, TestDb};
use jrq::assigner::{Assigner, AssignerConfig};
use jrq::db::tasks::{
    tasks_pending_floor, tasks_pending_for_routing, Floor, LeaseFloor, OrderKey, PendingFloor,
};
use jrq::db::workers::{workers_loads, LoadFloors};
use jrq::db::Statements;
use tokio_postgres::Client;
use uuid::Uuid;

/// Finished tasks in the worker's history, their index entries dead and kept.
const HISTORY: i64 = 2_000;

/// Entries of `jr_work_queue_held_idx` read by this backend and not yet sent to the
/// statistics (a count that no flush changes inside one transaction: take differences).
async fn held_idx_reads(c: &impl tokio_postgres::GenericClient) -> i64 {
    c.query_one(
        "SELECT pg_stat_get_xact_tuples_returned('jr_work_queue_held_idx'::regclass)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Entries of `jr_work_queue_pending_key_idx` read by this backend (as [`held_idx_reads`]).
async fn pending_idx_reads(c: &impl tokio_postgres::GenericClient) -> i64 {
    c.query_one(
        "SELECT pg_stat_get_xact_tuples_returned('jr_work_queue_pending_key_idx'::regclass)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Entries read in both indexes of a worker's tasks (held, and V1's in progress), as
/// [`held_idx_reads`].
async fn worker_idx_reads(c: &Client) -> i64 {
    let in_progress: i64 = c
        .query_one(
            "SELECT pg_stat_get_xact_tuples_returned('jr_work_queue_in_progress_idx'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    held_idx_reads(c).await + in_progress
}

/// `HISTORY` tasks that were pending and are assigned now, their entries in the pending
/// index dead and kept by a session idle in transaction (returned: keep it).
async fn a_kept_pending_history(db: &TestDb, client: &Client) -> Client {
    let holder = db.client().await;
    exec(&holder, "BEGIN; SELECT txid_current();").await;
    client
        .execute(
            "INSERT INTO jr_work_queue (title) SELECT 'old' FROM generate_series(1, $1::int8)",
            &[&HISTORY],
        )
        .await
        .unwrap();
    exec(
        client,
        "UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'gone', \
             assigned_at = now() WHERE title = 'old'",
    )
    .await;
    holder
}

/// The next notification on `jrq_pending`, within a deadline.
async fn next_payload(
    notes: &mut tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) -> String {
    tokio::time::timeout(Duration::from_secs(30), notes.recv())
        .await
        .expect("a notification on jrq_pending within 30 s")
        .expect("the listening connection is open")
        .payload()
        .to_string()
}

async fn key_of(c: &impl tokio_postgres::GenericClient, id: i64) -> OrderKey {
    let r = c
        .query_one(
            "SELECT NOT sacred_fire_priority, priority, created_at, id FROM jr_work_queue \
             WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// A registered worker `v` with `HISTORY` finished tasks whose entries in the held-tasks
/// index a session idle in transaction (returned: keep it) keeps from being removed.
async fn worker_with_a_kept_history(db: &TestDb, client: &Client, instance: Uuid) -> Client {
    client
        .execute(
            "INSERT INTO jr_status (jr_name, instance_id, is_online, status, last_seen, \
                 capacity) VALUES ('v', $1, true, 'idle', now(), 8)",
            &[&instance],
        )
        .await
        .unwrap();
    let holder = db.client().await;
    exec(&holder, "BEGIN; SELECT txid_current();").await;
    client
        .execute(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at, lease_seq) \
             SELECT 'old', 'assigned', 'v', now(), nextval('jr_lease_seq') \
             FROM generate_series(1, $1::int8)",
            &[&HISTORY],
        )
        .await
        .unwrap();
    exec(
        client,
        "UPDATE jr_work_queue SET status = 'completed', completed_at = now() \
         WHERE title = 'old'",
    )
    .await;
    holder
}

async fn new_assignment(client: &Client) -> i64 {
    client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at, lease_seq) \
             VALUES ('new', 'assigned', 'v', now(), nextval('jr_lease_seq')) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_claim_from_its_floor_skips_the_entries_a_held_horizon_keeps() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let instance = Uuid::new_v4();
    let _holder = worker_with_a_kept_history(&db, &client, instance).await;
    let claim = "SELECT id, lease_floor FROM jrq_tasks_claim('v', 8, $1, NULL, $2)";

    // From the start (no floor yet): every kept entry is read, and the floor comes back.
    let first = new_assignment(&client).await;
    exec(&client, "BEGIN").await;
    let before = held_idx_reads(&client).await;
    let rows = client
        .query(claim, &[&instance, &None::<i64>])
        .await
        .unwrap();
    let full = held_idx_reads(&client).await - before;
    exec(&client, "COMMIT").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), first);
    let floor: i64 = rows[0].get(1);
    assert_eq!(floor, HISTORY, "one below the task it holds");
    assert!(full >= HISTORY, "a walk from the start read {full} entries");

    // From the floor: the running task and the new one, not the history.
    let second = new_assignment(&client).await;
    exec(&client, "BEGIN").await;
    let before = held_idx_reads(&client).await;
    let rows = client.query(claim, &[&instance, &floor]).await.unwrap();
    let bounded = held_idx_reads(&client).await - before;
    exec(&client, "COMMIT").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), second);
    assert_eq!(
        rows[0].get::<_, i64>(1),
        HISTORY,
        "the first task still runs"
    );
    assert!(
        bounded < 20,
        "a claim from its floor read {bounded} entries of the held-tasks index"
    );

    // A task assigned without a number (with psql, or by an older assigner) sorts past
    // every floor: claimed at once, and it moves no floor.
    let unnumbered: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at) \
             VALUES ('psql', 'assigned', 'v', now()) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows = client.query(claim, &[&instance, &floor]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), unnumbered);
    assert_eq!(rows[0].get::<_, i64>(1), HISTORY);

    // The worker's own bookkeeping: the floor a claim returned is where the next starts.
    let f = LeaseFloor::default();
    f.set(Some(floor));
    assert_eq!(f.next(), Some(floor));
    f.set(None);
    assert_eq!(
        f.next(),
        Some(floor),
        "a claim that returned nothing keeps it"
    );
}

#[tokio::test]
async fn the_assigners_load_count_starts_from_its_floor() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let instance = Uuid::new_v4();
    let _holder = worker_with_a_kept_history(&db, &client, instance).await;
    new_assignment(&client).await;
    new_assignment(&client).await;
    let stmts = Statements::default();
    let mut floors = LoadFloors::default();
    let names = vec!["v".to_string()];

    // The first count walks from the start; the second from the floor it found.
    let mut reads = vec![];
    for _ in 0..2 {
        let txn = client.transaction().await.unwrap();
        let before = held_idx_reads(&txn).await;
        let loads = workers_loads(&txn, &stmts, &names, &mut floors)
            .await
            .unwrap();
        assert_eq!(loads.get("v"), Some(&2));
        reads.push(held_idx_reads(&txn).await - before);
        txn.commit().await.unwrap();
    }
    assert!(reads[0] >= HISTORY, "from the start: {} entries", reads[0]);
    assert!(reads[1] < 20, "from the floor: {} entries", reads[1]);

    // Holding nothing, the floor moves to the last number drawn; a task assigned after
    // it is counted.
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'completed' WHERE title = 'new'",
    )
    .await;
    let txn = client.transaction().await.unwrap();
    let loads = workers_loads(&txn, &stmts, &names, &mut floors)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(loads.get("v"), Some(&0));
    new_assignment(&client).await;
    let txn = client.transaction().await.unwrap();
    let loads = workers_loads(&txn, &stmts, &names, &mut floors)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(loads.get("v"), Some(&1));
}

#[tokio::test]
async fn a_busy_worker_counts_its_outcomes_in_its_row_about_once_a_second() {
    const TASKS: i64 = 400;
    let db = TestDb::new().await;
    let client = db.client().await;
    // Every version of the registry row, as a trigger sees them.
    exec(
        &client,
        "CREATE TABLE row_versions (at timestamptz DEFAULT clock_timestamp()); \
         CREATE FUNCTION row_version() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO public.row_versions DEFAULT VALUES; RETURN NULL; END $$; \
         CREATE TRIGGER row_version AFTER UPDATE ON jr_status \
             FOR EACH ROW EXECUTE FUNCTION row_version()",
    )
    .await;
    client
        .execute(
            "INSERT INTO jr_work_queue (title, status, assigned_jr) \
             SELECT 't' || g, 'assigned', 'jr_c' FROM generate_series(1, $1::int8) g",
            &[&TASKS],
        )
        .await
        .unwrap();
    let mut w = common::WorkerProc::start(
        &db.url,
        "jr_c",
        &["--exec", "noop", "--capacity", "4", "--prefetch", "0"],
        &[],
    );
    common::wait_for(
        std::time::Duration::from_secs(60),
        "every task completed",
        || async {
            common::count(
                &client,
                "SELECT count(*) FROM jr_work_queue WHERE status = 'completed'",
            )
            .await
                == TASKS
        },
    )
    .await;
    w.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        w.wait_exit(std::time::Duration::from_secs(30)).await,
        Some(0)
    );
    // Nothing lost: every completion counted, before the worker left.
    let completed = common::count(
        &client,
        "SELECT tasks_completed FROM jr_status WHERE jr_name = 'jr_c'",
    )
    .await;
    assert_eq!(completed, TASKS);
    // At most 4 outcomes a write: 100 writes or more, each of which used to update the
    // row; now the counts go about once a second, with the heartbeats.
    let writes = common::count(
        &client,
        "SELECT count(DISTINCT at) FROM jr_task_events WHERE action = 'completed'",
    )
    .await;
    let versions = common::count(&client, "SELECT count(*) FROM row_versions").await;
    let seconds = common::count(
        &client,
        "SELECT ceil(extract(epoch FROM max(at) - min(at)))::int8 FROM row_versions",
    )
    .await;
    assert!(writes >= 100, "{writes} outcome writes");
    assert!(
        versions <= 3 * seconds + 10,
        "{versions} versions of the registry row in {seconds} s for {writes} outcome writes"
    );
}

#[tokio::test]
async fn the_pending_scan_from_its_floor_skips_the_entries_a_held_horizon_keeps() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let _holder = a_kept_pending_history(&db, &client).await;
    let new: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title) VALUES ('new') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let stmts = Statements::default();
    let workers = vec!["v".to_string()];
    let txn = client.transaction().await.unwrap();
    let scan = |from: Floor| {
        let (txn, stmts, workers) = (&txn, &stmts, &workers);
        async move {
            let before = pending_idx_reads(txn).await;
            let tasks = tasks_pending_for_routing(txn, stmts, &[], true, workers, &[], 10, from)
                .await
                .unwrap();
            let ids: Vec<i64> = tasks.iter().map(|t| t.id).collect();
            (ids, pending_idx_reads(txn).await - before)
        }
    };

    // From the start every kept entry is read; the first pending task is the floor.
    let (ids, full) = scan(Floor::Start).await;
    assert_eq!(ids, vec![new]);
    assert!(full >= HISTORY, "a scan from the start read {full} entries");
    let floor = tasks_pending_floor(&txn, &stmts, Floor::Start)
        .await
        .unwrap();
    assert_eq!(floor, Some(key_of(&txn, new).await));
    let floor = floor.unwrap();

    // From the floor: the task, not the history.
    let before = pending_idx_reads(&txn).await;
    assert_eq!(
        tasks_pending_floor(&txn, &stmts, Floor::At(floor))
            .await
            .unwrap(),
        Some(floor)
    );
    let probe = pending_idx_reads(&txn).await - before;
    let (ids, bounded) = scan(Floor::At(floor)).await;
    assert_eq!(ids, vec![new]);
    assert!(
        bounded < 20 && probe < 20,
        "from the floor the scan read {bounded} entries and the probe {probe}"
    );
    txn.commit().await.unwrap();
}

#[tokio::test]
async fn a_task_that_becomes_pending_below_the_floor_announces_its_place() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let (_listener, mut notes) = jrq::db::listen::listen(&db.config(), &["jrq_pending"])
        .await
        .unwrap();
    let insert = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let mut f = PendingFloor::default();

    // An insert statement sends its first pending row: a lower priority number first.
    let first = insert(
        "WITH i AS (INSERT INTO jr_work_queue (title, priority) \
             VALUES ('a', 7), ('b', 3), ('c', 9) RETURNING id, priority) \
         SELECT id FROM i WHERE priority = 3",
    )
    .await;
    let payload = next_payload(&mut notes).await;
    assert!(payload.starts_with("insert "), "{payload}");
    f.set(None);
    f.heard(&payload);
    assert_eq!(
        f.floor(),
        Floor::At(key_of(&client, first).await),
        "{payload}"
    );

    // An urgent one goes below every other.
    let urgent = insert(
        "INSERT INTO jr_work_queue (title, sacred_fire_priority) VALUES ('u', true) \
         RETURNING id",
    )
    .await;
    f.heard(&next_payload(&mut notes).await);
    assert_eq!(f.floor(), Floor::At(key_of(&client, urgent).await));

    // A task given back to pending (a retry, a rescue, an operator's UPDATE) sends its own.
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'w' WHERE title = 'u'",
    )
    .await;
    f.set(Some(key_of(&client, first).await));
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'pending', assigned_jr = NULL WHERE title = 'u'",
    )
    .await;
    let payload = next_payload(&mut notes).await;
    assert!(payload.starts_with("pending "), "{payload}");
    f.heard(&payload);
    assert_eq!(f.floor(), Floor::At(key_of(&client, urgent).await));

    // So does a pending task moved up the order.
    f.set(Some(key_of(&client, first).await));
    exec(
        &client,
        "UPDATE jr_work_queue SET priority = 0 WHERE title = 'c'",
    )
    .await;
    let moved: i64 = insert("SELECT id FROM jr_work_queue WHERE title = 'c'").await;
    f.heard(&next_payload(&mut notes).await);
    assert_eq!(f.floor(), Floor::At(key_of(&client, moved).await));

    // Writes that make no task pending, or leave one where it is, send nothing: the next
    // notification is the marker's.
    exec(
        &client,
        "UPDATE jr_work_queue SET title = 'c2' WHERE title = 'c'",
    )
    .await;
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'w' WHERE title = 'a'",
    )
    .await;
    exec(&client, "NOTIFY jrq_pending, 'marker'").await;
    assert_eq!(next_payload(&mut notes).await, "marker");

    // An insert without a pending row sends the word alone, which moves no floor.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr) VALUES ('x', 'assigned', 'w')",
    )
    .await;
    let payload = next_payload(&mut notes).await;
    assert_eq!(payload, "insert");
    let before = f.floor();
    f.heard(&payload);
    assert_eq!(f.floor(), before);
}

#[tokio::test]
async fn an_assigner_round_routes_a_task_announced_below_its_floor() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let _holder = a_kept_pending_history(&db, &client).await;
    let (_listener, mut notes) = jrq::db::listen::listen(&db.config(), &["jrq_pending"])
        .await
        .unwrap();
    let mut cfg = jrq::worker::WorkerConfig::new("v");
    cfg.capacity = 8;
    let w = jrq::worker::Worker::new(cfg, db.config(), Arc::new(jrq::worker::executor::Noop));
    w.register_on(&mut db.client().await).await.unwrap();
    let stmts = Statements::default();
    let mut assigner = Assigner::new(
        AssignerConfig {
            name: "assigner.test".into(),
            ..AssignerConfig::default()
        },
        db.config(),
    );
    // A task of a provider nobody serves holds the floor at its place.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, provider, priority) VALUES ('held', 'nobody', 6)",
    )
    .await;
    let r = assigner.run_once(&mut client, &stmts).await.unwrap();
    assert_eq!(r.assigned, 0, "{r:?}");
    while !notes.is_empty() {
        notes.recv().await;
    }

    // More urgent than the held one: below the floor. What the assigner hears moves the
    // floor, and its next round takes the task.
    let urgent: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, priority) VALUES ('urgent', 1) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assigner.heard(&next_payload(&mut notes).await);
    let r = assigner.run_once(&mut client, &stmts).await.unwrap();
    assert_eq!(r.assigned, 1, "{r:?}");
    assert_eq!(status_of(&client, urgent).await, "assigned");
}

#[tokio::test]
async fn a_task_set_held_by_hand_keeps_no_old_number_below_the_floors() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let lease = |title: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT lease_seq FROM jr_work_queue WHERE title = $1",
                    &[&title],
                )
                .await
                .unwrap()
                .get::<_, Option<i64>>(0)
        }
    };
    // Assigned with a number, then given back: it keeps the number while pending.
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr, lease_seq) \
         VALUES ('t', 'assigned', 'v', nextval('jr_lease_seq'))",
    )
    .await;
    let first = lease("t").await;
    assert!(first.is_some());
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'pending', assigned_jr = NULL WHERE title = 't'",
    )
    .await;
    assert_eq!(lease("t").await, first);
    // Set assigned by hand (no new number): it has none, which sorts past every floor.
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'v' WHERE title = 't'",
    )
    .await;
    assert_eq!(lease("t").await, None);
    // An assignment that draws a number keeps it, and so does the claim that starts it.
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'pending', assigned_jr = NULL WHERE title = 't'; \
         UPDATE jr_work_queue SET status = 'assigned', assigned_jr = 'v', \
             lease_seq = nextval('jr_lease_seq') WHERE title = 't'",
    )
    .await;
    let drawn = lease("t").await;
    assert!(drawn.is_some() && drawn > first, "{drawn:?}");
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'in_progress' WHERE title = 't'",
    )
    .await;
    assert_eq!(lease("t").await, drawn);
}

#[tokio::test]
async fn the_heartbeat_reads_the_tasks_it_holds_from_the_floor() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let instance = Uuid::new_v4();
    let _holder = worker_with_a_kept_history(&db, &client, instance).await;
    // The history also went through in progress: the index the heartbeat read before V21
    // holds it too.
    client
        .execute(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at, started_at, \
                 lease_seq) \
             SELECT 'old2', 'in_progress', 'v', now(), now(), nextval('jr_lease_seq') \
             FROM generate_series(1, $1::int8)",
            &[&HISTORY],
        )
        .await
        .unwrap();
    exec(
        &client,
        "UPDATE jr_work_queue SET status = 'completed', completed_at = now() \
         WHERE title = 'old2'",
    )
    .await;
    let running: i64 = client
        .query_one(
            "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at, started_at, \
                 lease_seq, lease_instance) \
             VALUES ('run', 'in_progress', 'v', now(), now(), nextval('jr_lease_seq'), $1) \
             RETURNING id",
            &[&instance],
        )
        .await
        .unwrap()
        .get(0);
    let floor = 2 * HISTORY;
    let heartbeat = "SELECT matched, held, lease_drawn, \
                         (SELECT last_value FROM jr_lease_seq) \
                     FROM jrq_workers_heartbeat('v', $1, 1, 'busy', '', NULL, $2)";
    let mut reads = vec![];
    for floor in [None, Some(floor)] {
        exec(&client, "BEGIN").await;
        let before = worker_idx_reads(&client).await;
        let row = client
            .query_one(heartbeat, &[&instance, &floor])
            .await
            .unwrap();
        reads.push(worker_idx_reads(&client).await - before);
        exec(&client, "COMMIT").await;
        assert_eq!(row.get::<_, i64>(0), 1);
        assert_eq!(row.get::<_, Vec<i64>>(1), vec![running], "from {floor:?}");
        // The last number drawn, for the worker to see a sequence that went back.
        assert_eq!(row.get::<_, i64>(2), row.get::<_, i64>(3));
    }
    assert!(reads[0] >= HISTORY, "from the start: {} entries", reads[0]);
    assert!(reads[1] < 20, "from the floor: {} entries", reads[1]);
}
