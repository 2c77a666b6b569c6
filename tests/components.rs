//! Each daemon component's `run_once`, called in this process against a real database:
//! no binary started, no waiting for a poll interval. The process and systemd tests
//! (assigner.rs, worker.rs, monitor.rs, cleanup.rs, fleet.rs) stay: these show the same
//! rules one round at a time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assigned_task, count, exec, status_of, TestDb};
use futures_util::future::BoxFuture;
use jrq::assigner::{Assigner, AssignerConfig};
use jrq::cleanup::{Cleanup, CleanupConfig, Verdict, WorkerProcess};
use jrq::daemon::link::Link;
use jrq::daemon::liveness::Liveness;
use jrq::daemon::runner::{self, Beat, Component, Ctx};
use jrq::daemon::shutdown::{Shutdown, ShutdownSignal};
use jrq::db::{ServerId, Statements};
use jrq::monitor::{Manager, Monitor, MonitorConfig};
use jrq::worker::executor::Noop;
use jrq::worker::{Handler, Round, TaskContext, TaskOutcome, Worker, WorkerConfig};
use tokio::time::Instant;
use tokio_postgres::Client;

async fn enqueue(client: &Client, n: usize) {
    for i in 0..n {
        client
            .execute(
                "INSERT INTO jr_work_queue (title) VALUES ($1)",
                &[&format!("t{i}")],
            )
            .await
            .unwrap();
    }
}

/// A registered worker of `capacity` slots that runs tasks with `handler`.
async fn worker(db: &TestDb, name: &str, capacity: u32, handler: Arc<dyn Handler>) -> Worker {
    let mut cfg = WorkerConfig::new(name);
    cfg.capacity = capacity;
    let w = Worker::new(cfg, db.config(), handler);
    w.register_on(&mut db.client().await).await.unwrap();
    w
}

/// Fails every attempt whose payload says `"fail": true`, asks for a retry when it says
/// `"retry": true`, completes the rest.
struct ByPayload;

impl Handler for ByPayload {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskOutcome> {
        let p = ctx.payload.clone();
        Box::pin(async move {
            if p["fail"] == true {
                TaskOutcome::Failed("told to fail".into())
            } else if p["retry"] == true {
                TaskOutcome::Retry("told to retry".into())
            } else {
                TaskOutcome::Completed("done".into())
            }
        })
    }
}

#[tokio::test]
async fn an_assigner_round_fills_free_capacity_and_no_more() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let stmts = Statements::default();
    let a = worker(&db, "w_a", 2, Arc::new(Noop)).await;
    let _b = worker(&db, "w_b", 1, Arc::new(Noop)).await;
    enqueue(&client, 5).await;

    let mut assigner = Assigner::new(
        AssignerConfig {
            name: "assigner.test".into(),
            ..AssignerConfig::default()
        },
        db.config(),
    );
    let r = assigner.run_once(&mut client, &stmts).await.unwrap();
    assert_eq!((r.assigned, r.workers, r.free_left), (3, 2, 0), "{r:?}");
    let per_worker = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM jr_work_queue WHERE assigned_jr = $1 AND status = 'assigned'",
                    &[&name],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!((per_worker("w_a").await, per_worker("w_b").await), (2, 1));

    // Full: a second round assigns nothing.
    let r = assigner.run_once(&mut client, &stmts).await.unwrap();
    assert_eq!((r.assigned, r.workers), (0, 0), "{r:?}");

    // A worker's round frees its slots; the next assigner round fills them again.
    let done = a.run_once(&client, &stmts).await.unwrap();
    assert_eq!((done.claimed, done.completed), (2, 2), "{done:?}");
    let r = assigner.run_once(&mut client, &stmts).await.unwrap();
    assert_eq!(r.assigned, 2, "{r:?}");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE status = 'pending'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_worker_round_claims_what_is_assigned_to_it_and_writes_each_outcome() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let stmts = Statements::default();
    let w = worker(&db, "w_round", 3, Arc::new(ByPayload)).await;
    let ok = assigned_task(&client, "w_round", "{}").await;
    let fail = assigned_task(&client, "w_round", r#"{"fail": true}"#).await;
    let retry = assigned_task(&client, "w_round", r#"{"retry": true}"#).await;
    let waiting = assigned_task(&client, "w_round", "{}").await;
    let elsewhere = assigned_task(&client, "w_other", "{}").await;

    let r = w.run_once(&client, &stmts).await.unwrap();
    assert_eq!(
        r,
        Round {
            claimed: 3,
            completed: 1,
            failed: 1,
            retried: 1,
            other: 0,
            lease_lost: 0,
        }
    );
    assert_eq!(status_of(&client, ok).await, "completed");
    assert_eq!(status_of(&client, fail).await, "failed");
    // Attempts remain: back to pending after a backoff.
    assert_eq!(status_of(&client, retry).await, "pending");
    assert_eq!(status_of(&client, waiting).await, "assigned", "capacity 3");
    assert_eq!(status_of(&client, elsewhere).await, "assigned", "not ours");
    let (completed, failed): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT tasks_completed, tasks_failed FROM jr_status WHERE jr_name = 'w_round'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (completed, failed),
        (1, 2),
        "the registry counts each outcome"
    );

    let r = w.run_once(&client, &stmts).await.unwrap();
    assert_eq!((r.claimed, r.completed), (1, 1), "{r:?}");
    let r = w.run_once(&client, &stmts).await.unwrap();
    assert_eq!(r, Round::default(), "nothing left for it");
}

#[tokio::test]
async fn an_instance_whose_name_was_taken_over_claims_nothing() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let stmts = Statements::default();
    let w = worker(&db, "w_fenced", 1, Arc::new(Noop)).await;
    let id = assigned_task(&client, "w_fenced", "{}").await;
    // The name is registered again (a new instance took it over) before the round: the
    // old instance claims nothing under the new one's name.
    let newer = worker(&db, "w_fenced", 1, Arc::new(Noop)).await;
    drop(newer);
    let r = w.run_once(&client, &stmts).await.unwrap();
    assert_eq!(r.claimed, 0, "{r:?}");
    assert_eq!(status_of(&client, id).await, "assigned");
}

#[tokio::test]
async fn a_monitor_round_marks_the_silent_and_rescues_their_tasks() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let host = jrq::host::hostname();
    exec(
        &client,
        "INSERT INTO jr_status (jr_name, kind, host, is_online, status, last_seen) VALUES \
           ('assigner.x', 'assigner', 'elsewhere', true, 'idle', now()), \
           ('w_live', 'worker', 'elsewhere', true, 'busy', now()), \
           ('w_silent', 'worker', 'elsewhere', true, 'busy', now() - interval '2 minutes')",
    )
    .await;
    client
        .execute(
            "INSERT INTO jr_status (jr_name, kind, host, is_online, status, last_seen) \
             VALUES ('w_lost_here', 'worker', $1, false, 'lost', now() - interval '1 hour')",
            &[&host],
        )
        .await
        .unwrap();
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, started_at) VALUES \
           ('live', 'in_progress', 'w_live', 1, now()), \
           ('stuck', 'in_progress', 'w_silent', 1, now() - interval '2 minutes')",
    )
    .await;
    let monitor = Monitor::new(MonitorConfig {
        manager: Manager::None,
        host: host.clone(),
        ..MonitorConfig::default()
    });
    let r = monitor.run_once(&client).await.unwrap();
    assert!(!r.skipped);
    let offline: Vec<&str> = r.marked_offline.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(offline, ["w_silent"]);
    assert_eq!(r.rescued.len(), 1, "{:?}", r.rescued);
    assert_eq!(r.rescued[0].to_status, jrq::task::TaskStatus::Pending);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE title = 'live' AND status = 'in_progress'"
        )
        .await,
        1,
        "a live worker's task is left alone"
    );
    assert!(r.restarts.is_empty(), "manager none restarts nothing");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_status WHERE jr_name = 'w_lost_here' AND status = 'lost'"
        )
        .await,
        1,
        "manager none leaves a lost row of this host for a monitor that may restart it"
    );

    // The next round finds nothing more to do.
    let r = monitor.run_once(&client).await.unwrap();
    assert!(r.marked_offline.is_empty() && r.rescued.is_empty(), "{r:?}");
}

#[tokio::test]
async fn a_cleanup_round_judges_processes_and_releases_rows_of_gone_ones() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let host = jrq::host::hostname();
    let server = ServerId::from_env(Some(&db.url), &|_| None).unwrap();
    exec(
        &client,
        "INSERT INTO jr_runs (id, name, status) VALUES \
           ('00000000-0000-0000-0000-0000000000aa', 'over', 'completed'), \
           ('00000000-0000-0000-0000-0000000000bb', 'on', 'active')",
    )
    .await;
    client
        .execute(
            "INSERT INTO jr_status (jr_name, host, pid, is_online, status, last_seen) \
             VALUES ('w_gone', $1, 999999, true, 'busy', now())",
            &[&host],
        )
        .await
        .unwrap();
    exec(
        &client,
        "INSERT INTO jr_work_queue (title, status, assigned_jr, attempts, started_at) \
         VALUES ('orphan', 'in_progress', 'w_gone', 1, now())",
    )
    .await;
    let process = |pid: i32, name: &str, run: &str| WorkerProcess {
        pid,
        name: Some(name.into()),
        run: Some(run.into()),
        server: Some(server.clone()),
        env_hidden: false,
    };
    let processes = vec![
        process(4_000_001, "w_done", "00000000-0000-0000-0000-0000000000aa"),
        process(
            4_000_002,
            "w_serving",
            "00000000-0000-0000-0000-0000000000bb",
        ),
        WorkerProcess {
            server: Some(ServerId::from_env(Some("host=elsewhere dbname=x"), &|_| None).unwrap()),
            ..process(
                4_000_003,
                "w_foreign",
                "00000000-0000-0000-0000-0000000000aa",
            )
        },
    ];
    let cfg = CleanupConfig {
        force: false,
        grace: std::time::Duration::ZERO,
        host: host.clone(),
        boot_id: jrq::host::boot_id(),
        server: server.clone(),
    };

    // A dry run: verdicts, and nothing changed.
    let before = db.fingerprint().await;
    let r = Cleanup::new(cfg.clone())
        .run_once(&mut client, processes)
        .await
        .unwrap();
    let verdicts: Vec<(&str, bool)> = r
        .findings
        .iter()
        .map(|f| {
            (
                f.process.name.as_deref().unwrap(),
                matches!(f.verdict, Verdict::Stale(_)),
            )
        })
        .collect();
    assert_eq!(verdicts, [("w_done", true), ("w_serving", false)]);
    assert_eq!(
        r.skipped.len(),
        1,
        "another database's worker is not judged"
    );
    assert_eq!(r.registry.len(), 1);
    assert!(!r.registry[0].done);
    assert_eq!(db.fingerprint().await, before, "a dry run changes nothing");

    // With force (and no process to end): the gone process's row is released.
    let r = Cleanup::new(CleanupConfig { force: true, ..cfg })
        .run_once(&mut client, vec![])
        .await
        .unwrap();
    assert_eq!(r.registry.len(), 1);
    assert!(r.registry[0].done);
    assert_eq!(r.registry[0].tasks_released, 1);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM jr_work_queue WHERE title = 'orphan' AND status = 'pending'"
        )
        .await,
        1
    );
}

/// A component that always has more work at once (as a busy assigner does): the runner
/// never waits, yet must hear the shutdown.
struct Busy {
    ticks: u64,
    stop: bool,
}

impl Component for Busy {
    type Event = ();
    type Exit = u64;

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn heartbeat(&mut self, _ctx: &mut Ctx<'_>) -> Beat {
        Beat::Ok
    }

    async fn tick(&mut self, _ctx: &mut Ctx<'_>) {
        self.ticks += 1;
        // Yield as a real round's statements would.
        tokio::task::yield_now().await;
    }

    async fn on_shutdown(&mut self, level: Shutdown, _ctx: &mut Ctx<'_>) {
        self.stop |= level != Shutdown::Running;
    }

    fn again_now(&self, _connected: bool) -> bool {
        true
    }

    fn wake_at(&self, _connected: bool) -> Option<Instant> {
        None
    }

    fn status_text(&self, _db_down_for: Option<Duration>) -> String {
        "busy".into()
    }

    fn done(&self) -> bool {
        self.stop
    }

    async fn finish(self, _link: &mut Link, _live: &mut Liveness) -> jrq::Result<u64> {
        Ok(self.ticks)
    }
}

#[tokio::test]
async fn the_runner_hears_a_shutdown_while_the_component_has_work_at_once() {
    let db = TestDb::new().await;
    let link = Link::open(db.config(), vec![]).await.unwrap();
    let (tx, shutdown) = ShutdownSignal::channel();
    let run = tokio::spawn(runner::run(
        Busy {
            ticks: 0,
            stop: false,
        },
        link,
        Duration::from_secs(30),
        shutdown,
    ));
    tokio::task::yield_now().await;
    tx.send(Shutdown::Drain).unwrap();
    let ticks = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the runner stops after a shutdown, however busy")
        .unwrap()
        .unwrap();
    assert!(ticks >= 1, "it ran: {ticks} ticks");
}
