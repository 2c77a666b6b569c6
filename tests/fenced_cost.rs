//! What the worker's fenced functions (migrations/V6) cost per call, against the plain
//! statements they replaced (copied below from before V6, run as the table owner) and
//! against LANGUAGE sql versions of the same functions (planned on every call on
//! PostgreSQL 15, where plpgsql keeps its plans per session). Not part of the suite: run it
//! on a quiet machine, on a private cluster of its own —
//!
//!   cargo test --release --test fenced_cost -- --ignored --nocapture
//!
//! (`FENCED_COST_STOCK=1` starts the cluster with PostgreSQL's durable defaults instead of
//! fsync off). Each variant has a worker name, an instance and assigned tasks of its own;
//! the variants take turns in blocks of calls, so that the table's growth and the
//! machine's noise fall on all of them alike.

mod common;

use std::time::Instant;

use jrq::db::tasks::{self, Finish, FinishedAttempt};
use jrq::db::{workers, Statements};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use uuid::Uuid;

const CALLS: usize = 10_000;
const BLOCK: usize = 500;

const OLD_CLAIM: &str = "WITH c AS ( \
                 SELECT id FROM jr_work_queue \
                 WHERE status = 'assigned' AND assigned_jr = $1 \
                   AND ($4::uuid IS NULL OR run_id = $4) \
                 ORDER BY sacred_fire_priority DESC, priority, created_at, id \
                 LIMIT $2 FOR UPDATE SKIP LOCKED), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'in_progress', started_at = now(), \
                     attempts = q.attempts + 1, lease_instance = $3, progress_percent = 0, \
                     result = NULL, error = NULL, updated_at = now() \
                 FROM c WHERE q.id = c.id \
                 RETURNING q.id, q.title, q.payload, q.attempts, q.max_attempts, q.run_id, \
                     q.provider, (extract(epoch FROM q.timeout) * 1000)::int8 AS timeout_ms, \
                     q.sacred_fire_priority, q.priority, q.created_at), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, 'started', 'assigned', 'in_progress', $1, attempts, \
                     'attempt ' || attempts || ' of ' || max_attempts FROM upd) \
             SELECT id, title, payload, attempts, max_attempts, run_id, provider, timeout_ms \
             FROM upd ORDER BY sacred_fire_priority DESC, priority, created_at, id";

/// The finish statement's body; `{channel}` is `$11` as a statement, the literal in the
/// LANGUAGE sql function.
const OLD_FINISH: &str = "WITH f AS ( \
                 SELECT * FROM unnest($3::int8[], $4::int4[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::int8[], $10::bool[]) \
                 AS f(id, attempt, to_status, action, result, error, backoff_ms, failure)), \
             upd AS ( \
                 UPDATE jr_work_queue q SET \
                     status = CASE WHEN f.to_status = 'pending' \
                         AND q.cancel_requested_at IS NOT NULL THEN 'cancelled' \
                         ELSE f.to_status END, \
                     completed_at = CASE WHEN f.to_status = 'pending' \
                         AND q.cancel_requested_at IS NULL THEN NULL ELSE now() END, \
                     progress_percent = CASE f.to_status WHEN 'completed' THEN 100 \
                         WHEN 'pending' THEN 0 ELSE q.progress_percent END, \
                     result = f.result, \
                     error = f.error, \
                     run_after = CASE WHEN f.to_status = 'pending' \
                         THEN now() + f.backoff_ms * interval '1 millisecond' \
                         ELSE q.run_after END, \
                     attempts = CASE WHEN f.action = 'released' THEN q.attempts - 1 \
                         ELSE q.attempts END, \
                     assigned_jr = CASE WHEN f.to_status = 'pending' \
                         AND q.cancel_requested_at IS NULL THEN NULL ELSE q.assigned_jr END, \
                     assigned_at = CASE WHEN f.to_status = 'pending' \
                         AND q.cancel_requested_at IS NULL THEN NULL ELSE q.assigned_at END, \
                     lease_instance = NULL, \
                     updated_at = now() \
                 FROM f \
                 WHERE q.id = f.id AND q.assigned_jr = $1 AND q.attempts = f.attempt \
                   AND q.lease_instance = $2 AND q.status = 'in_progress' \
                 RETURNING q.id, f.attempt, q.status AS to_status, \
                     CASE WHEN q.status = 'cancelled' AND f.to_status = 'pending' \
                         THEN 'cancelled' ELSE f.action END AS action, \
                     f.failure, f.backoff_ms, \
                     coalesce(f.error, '') || CASE WHEN q.status = 'cancelled' \
                         AND f.to_status = 'pending' \
                         THEN ' (a cancel was requested: cancelled, not retried)' \
                         ELSE '' END AS details), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, action, 'in_progress', to_status, $1, attempt, \
                     left(details, 500) || CASE WHEN action = 'retry_scheduled' \
                         THEN ' (next attempt in ' || backoff_ms || ' ms)' ELSE '' END \
                 FROM upd), \
             w AS ( \
                 UPDATE jr_status SET \
                     tasks_completed = tasks_completed + \
                         (SELECT count(*) FROM upd WHERE to_status = 'completed'), \
                     tasks_failed = tasks_failed + (SELECT count(*) FROM upd WHERE failure), \
                     consecutive_failures = CASE \
                         WHEN EXISTS (SELECT 1 FROM upd WHERE to_status = 'completed') THEN 0 \
                         ELSE consecutive_failures + (SELECT count(*) FROM upd WHERE failure) END, \
                     last_failure_at = CASE WHEN EXISTS (SELECT 1 FROM upd WHERE failure) \
                         THEN now() ELSE last_failure_at END, \
                     updated_at = now() \
                 WHERE jr_name = $1 AND instance_id = $2 \
                   AND EXISTS (SELECT 1 FROM upd WHERE to_status = 'completed' OR failure)), \
             n AS ( \
                 SELECT pg_notify({channel}, 'capacity') FROM upd LIMIT 1) \
             SELECT coalesce(array_agg(id), '{}'), (SELECT count(*) FROM n) FROM upd";

const OLD_HEARTBEAT: &str = "WITH w AS ( \
                 UPDATE jr_status SET last_seen = now(), current_load = $3, status = $4, \
                     status_text = $5, is_online = true, updated_at = now() \
                 WHERE jr_name = $1 AND instance_id = $2 RETURNING 1) \
             SELECT (SELECT count(*) FROM w), \
                 (SELECT status FROM jr_runs WHERE id = $6), \
                 coalesce((SELECT array_agg(id) FROM jr_work_queue WHERE status = 'in_progress' \
                     AND assigned_jr = $1 AND lease_instance = $2), '{}'), \
                 coalesce((SELECT array_agg(id) FROM jr_work_queue WHERE status = 'in_progress' \
                     AND assigned_jr = $1 AND lease_instance = $2 \
                     AND cancel_requested_at IS NOT NULL), '{}')";

const OLD_PROGRESS: &str =
    "UPDATE jr_work_queue q SET progress_percent = f.pct, updated_at = now() \
             FROM unnest($3::int8[], $4::int4[], $5::int2[]) AS f(id, attempt, pct) \
             WHERE q.id = f.id AND q.assigned_jr = $1 AND q.attempts = f.attempt \
               AND q.lease_instance = $2 AND q.status = 'in_progress'";

/// The same functions in LANGUAGE sql, with the V6 fences (the claim's registry check).
fn sql_functions() -> String {
    let fenced_claim = OLD_CLAIM.replace(
        "AND ($4::uuid IS NULL OR run_id = $4)",
        "AND ($4::uuid IS NULL OR run_id = $4) AND EXISTS (SELECT 1 FROM jr_status s \
         WHERE s.jr_name = $1 AND s.instance_id = $3)",
    );
    let finish = OLD_FINISH.replace("{channel}", "'jrq_pending'").replace(
        "SELECT coalesce(array_agg(id), '{}'), (SELECT count(*) FROM n) FROM upd",
        "SELECT CASE WHEN (SELECT count(*) FROM n) >= 0 THEN coalesce(array_agg(id), '{}') END \
         FROM upd",
    );
    let attrs = "SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp";
    format!(
        "CREATE FUNCTION sql_claim(text, bigint, uuid, uuid) RETURNS TABLE (id bigint, \
             title text, payload jsonb, attempts integer, max_attempts integer, run_id uuid, \
             provider text, timeout_ms bigint) LANGUAGE sql {attrs} AS $f$ {fenced_claim} $f$; \
         CREATE FUNCTION sql_finish(text, uuid, bigint[], integer[], text[], text[], text[], \
             text[], bigint[], boolean[]) RETURNS bigint[] LANGUAGE sql {attrs} \
             AS $f$ {finish} $f$; \
         CREATE FUNCTION sql_heartbeat(text, uuid, integer, text, text, uuid) RETURNS TABLE \
             (matched bigint, run_status text, held bigint[], cancel_requested bigint[]) \
             LANGUAGE sql {attrs} AS $f$ {OLD_HEARTBEAT} $f$; \
         CREATE FUNCTION sql_progress(text, uuid, bigint[], integer[], smallint[]) \
             RETURNS bigint LANGUAGE sql {attrs} \
             AS $f$ WITH u AS ({OLD_PROGRESS} RETURNING 1) SELECT count(*) FROM u $f$; \
         GRANT EXECUTE ON FUNCTION sql_claim(text, bigint, uuid, uuid), \
             sql_finish(text, uuid, bigint[], integer[], text[], text[], text[], text[], \
                 bigint[], boolean[]), \
             sql_heartbeat(text, uuid, integer, text, text, uuid), \
             sql_progress(text, uuid, bigint[], integer[], smallint[]) TO jrq_worker"
    )
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The statements before V6, as the owner.
    Old,
    /// The V6 functions through the library, as a jrq_worker login.
    Plpgsql,
    /// LANGUAGE sql versions, as a jrq_worker login.
    Sql,
}

struct Variant {
    kind: Kind,
    name: String,
    instance: Uuid,
    client: Client,
    stmts: Statements,
    /// A task this variant holds (for progress and the pipelined cycle).
    held: Option<(i64, i32)>,
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

struct Outcome {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    to_status: Vec<&'static str>,
    actions: Vec<&'static str>,
    results: Vec<Option<&'static str>>,
    errors: Vec<Option<&'static str>>,
    backoff: Vec<i64>,
    failures: Vec<bool>,
}

impl Outcome {
    fn completed(t: (i64, i32)) -> Self {
        Outcome {
            ids: vec![t.0],
            attempts: vec![t.1],
            to_status: vec!["completed"],
            actions: vec!["completed"],
            results: vec![Some("ok")],
            errors: vec![None],
            backoff: vec![0],
            failures: vec![false],
        }
    }
}

impl Variant {
    async fn claim(&mut self) -> (i64, i32) {
        let none: Option<Uuid> = None;
        let one = 1i64;
        let got = match self.kind {
            Kind::Plpgsql => {
                let t = tasks::tasks_claim(
                    &self.client,
                    &self.stmts,
                    &self.name,
                    self.instance,
                    1,
                    None,
                    &tasks::LeaseFloor::default(),
                )
                .await
                .unwrap();
                t.iter().map(|t| (t.id, t.attempt)).collect::<Vec<_>>()
            }
            k => {
                let sql = if k == Kind::Old {
                    OLD_CLAIM
                } else {
                    "SELECT id, title, payload, attempts FROM sql_claim($1, $2, $3, $4)"
                };
                let st = self.stmts.get(&self.client, sql).await.unwrap();
                self.client
                    .query(&st, &[&self.name, &one, &self.instance, &none])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(3)))
                    .collect()
            }
        };
        assert_eq!(got.len(), 1, "{:?} claimed {got:?}", self.kind);
        got[0]
    }

    fn finish_sql(&self) -> &'static str {
        static OLD: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| OLD_FINISH.replace("{channel}", "$11"));
        match self.kind {
            Kind::Old => OLD.as_str(),
            _ => "SELECT sql_finish($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        }
    }

    async fn finish(&mut self, t: (i64, i32)) {
        if self.kind == Kind::Plpgsql {
            let done = [FinishedAttempt {
                task_id: t.0,
                attempt: t.1,
                finish: Finish::Completed {
                    result: "ok".into(),
                },
            }];
            let applied =
                tasks::tasks_finish(&self.client, &self.stmts, &self.name, self.instance, &done)
                    .await
                    .unwrap();
            assert_eq!(applied, [t.0]);
            return;
        }
        let o = Outcome::completed(t);
        let channel = "jrq_pending";
        let mut p: Params = vec![
            &self.name,
            &self.instance,
            &o.ids,
            &o.attempts,
            &o.to_status,
            &o.actions,
            &o.results,
            &o.errors,
            &o.backoff,
            &o.failures,
        ];
        if self.kind == Kind::Old {
            p.push(&channel);
        }
        let st = self
            .stmts
            .get(&self.client, self.finish_sql())
            .await
            .unwrap();
        let applied: Vec<i64> = self.client.query_one(&st, &p).await.unwrap().get(0);
        assert_eq!(applied, [t.0]);
    }

    /// Writes the held task's outcome and claims the next in one pipelined transaction.
    async fn finish_and_claim(&mut self) {
        let t = self.held.expect("a held task");
        let next = if self.kind == Kind::Plpgsql {
            let done = [FinishedAttempt {
                task_id: t.0,
                attempt: t.1,
                finish: Finish::Completed {
                    result: "ok".into(),
                },
            }];
            let (applied, claimed) = tasks::tasks_finish_and_claim(
                &self.client,
                &self.stmts,
                &self.name,
                self.instance,
                &done,
                tasks::NextClaim {
                    limit: 1,
                    run: None,
                    floor: &tasks::LeaseFloor::default(),
                },
            )
            .await
            .unwrap();
            assert_eq!(applied, [t.0]);
            (claimed[0].id, claimed[0].attempt)
        } else {
            let o = Outcome::completed(t);
            let channel = "jrq_pending";
            let mut fp: Params = vec![
                &self.name,
                &self.instance,
                &o.ids,
                &o.attempts,
                &o.to_status,
                &o.actions,
                &o.results,
                &o.errors,
                &o.backoff,
                &o.failures,
            ];
            if self.kind == Kind::Old {
                fp.push(&channel);
            }
            let claim_sql = if self.kind == Kind::Old {
                OLD_CLAIM
            } else {
                "SELECT id, title, payload, attempts FROM sql_claim($1, $2, $3, $4)"
            };
            let fin = self
                .stmts
                .get(&self.client, self.finish_sql())
                .await
                .unwrap();
            let cl = self.stmts.get(&self.client, claim_sql).await.unwrap();
            let (one, none) = (1i64, None::<Uuid>);
            let cp: Params = vec![&self.name, &one, &self.instance, &none];
            let (b, f, c, e) = tokio::join!(
                self.client.batch_execute("BEGIN"),
                self.client.query_one(&fin, &fp),
                self.client.query(&cl, &cp),
                self.client.batch_execute("COMMIT"),
            );
            b.unwrap();
            assert_eq!(f.unwrap().get::<_, Vec<i64>>(0), [t.0]);
            e.unwrap();
            let c = c.unwrap();
            (c[0].get(0), c[0].get(3))
        };
        self.held = Some(next);
    }

    async fn heartbeat(&mut self) {
        let none: Option<Uuid> = None;
        let matched = match self.kind {
            Kind::Plpgsql => workers::workers_heartbeat(
                &self.client,
                &self.stmts,
                &workers::Heartbeat {
                    name: &self.name,
                    instance: self.instance,
                    load: 1,
                    status: "busy",
                    status_text: "running 1/1",
                    run_id: None,
                    floor: None,
                },
            )
            .await
            .unwrap()
            .is_some(),
            k => {
                let sql = if k == Kind::Old {
                    OLD_HEARTBEAT
                } else {
                    "SELECT * FROM sql_heartbeat($1, $2, $3, $4, $5, $6)"
                };
                let st = self.stmts.get(&self.client, sql).await.unwrap();
                let row = self
                    .client
                    .query_one(
                        &st,
                        &[
                            &self.name,
                            &self.instance,
                            &1i32,
                            &"busy",
                            &"running 1/1",
                            &none,
                        ],
                    )
                    .await
                    .unwrap();
                row.get::<_, i64>(0) == 1
            }
        };
        assert!(matched);
    }

    /// Progress as a prepared statement for all three (the library's `tasks_progress`
    /// sends it unprepared, before V6 and after: it runs once per flush, not per task).
    async fn progress(&mut self, pct: i16) {
        let t = self.held.expect("a held task");
        let sql = match self.kind {
            Kind::Old => OLD_PROGRESS,
            Kind::Plpgsql => "SELECT jrq_tasks_progress($1, $2, $3, $4, $5)",
            Kind::Sql => "SELECT sql_progress($1, $2, $3, $4, $5)",
        };
        let st = self.stmts.get(&self.client, sql).await.unwrap();
        self.client
            .execute(
                &st,
                &[
                    &self.name,
                    &self.instance,
                    &vec![t.0],
                    &vec![t.1],
                    &vec![pct],
                ],
            )
            .await
            .unwrap();
    }
}

/// Microseconds per call of each variant, block by block.
#[derive(Default)]
struct Times(Vec<Vec<f64>>);

impl Times {
    fn report(&self, what: &str, variants: &[Variant]) {
        let mut line = format!("{what:<26}");
        for (i, v) in variants.iter().enumerate() {
            let mut blocks = self.0[i].clone();
            blocks.sort_by(f64::total_cmp);
            let mean = blocks.iter().sum::<f64>() / blocks.len() as f64;
            let median = blocks[blocks.len() / 2];
            line.push_str(&format!(
                "  {:>8}: mean {mean:7.1} µs, median block {median:7.1} µs",
                format!("{:?}", v.kind).to_lowercase()
            ));
        }
        println!("{line}");
    }
}

async fn measure<F>(variants: &mut [Variant], what: &str, mut op: F)
where
    F: for<'a> FnMut(&'a mut Variant, usize) -> futures_util::future::BoxFuture<'a, ()>,
{
    let mut times = Times(vec![vec![]; variants.len()]);
    for block in 0..CALLS / BLOCK {
        for (i, v) in variants.iter_mut().enumerate() {
            let start = Instant::now();
            for k in 0..BLOCK {
                op(v, block * BLOCK + k).await;
            }
            times.0[i].push(start.elapsed().as_secs_f64() * 1e6 / BLOCK as f64);
        }
    }
    times.report(what, variants);
}

#[tokio::test]
#[ignore = "a measurement: run it on a quiet machine (see the module docs)"]
async fn fenced_functions_cost_per_call() {
    use futures_util::FutureExt;
    let options: &[&str] = if std::env::var("FENCED_COST_STOCK").is_ok() {
        &["--stock"]
    } else {
        &[]
    };
    let cluster = common::PrivateCluster::start_with(options);
    let owner = cluster.migrated().await;
    owner.batch_execute(&sql_functions()).await.unwrap();
    owner
        .batch_execute("CREATE ROLE cost_worker LOGIN; GRANT jrq_worker TO cost_worker")
        .await
        .unwrap();
    let mut cfg = common::config(&cluster.url);
    cfg.pg.user("cost_worker");
    let worker_url = jrq::db::conninfo_with_dbname(&cfg, "postgres");

    let per_variant = (2 * CALLS + 10) as i64;
    let mut variants = vec![];
    for kind in [Kind::Old, Kind::Plpgsql, Kind::Sql] {
        let name = format!("w_{kind:?}").to_lowercase();
        let instance = Uuid::new_v4();
        owner
            .execute(
                "INSERT INTO jr_status (jr_name, host, pid, instance_id, is_online, status, \
                     last_seen, started_at) VALUES ($1, 'h', 1, $2, true, 'busy', now(), now())",
                &[&name, &instance],
            )
            .await
            .unwrap();
        owner
            .execute(
                "INSERT INTO jr_work_queue (title, status, assigned_jr, assigned_at, priority) \
                 SELECT 't' || g, 'assigned', $1, now(), g % 10 \
                 FROM generate_series(1, $2::int8) g",
                &[&name, &per_variant],
            )
            .await
            .unwrap();
        let client = if kind == Kind::Old {
            common::connect_str(&cluster.url).await
        } else {
            common::connect_str(&worker_url).await
        };
        jrq::db::tune_session(&client).await.unwrap();
        variants.push(Variant {
            kind,
            name,
            instance,
            client,
            stmts: Statements::default(),
            held: None,
        });
    }
    owner
        .batch_execute("VACUUM ANALYZE jr_work_queue, jr_status")
        .await
        .unwrap();
    println!(
        "{CALLS} calls per variant in blocks of {BLOCK}; old = the statements before V6 (as \
         the owner), plpgsql = V6 (as a jrq_worker login), sql = LANGUAGE sql versions"
    );

    measure(&mut variants, "claim + finish (2 commits)", |v, _| {
        async move {
            let t = v.claim().await;
            v.finish(t).await;
        }
        .boxed()
    })
    .await;
    for v in variants.iter_mut() {
        let t = v.claim().await;
        v.held = Some(t);
    }
    measure(&mut variants, "finish+claim pipelined", |v, _| {
        v.finish_and_claim().boxed()
    })
    .await;
    measure(&mut variants, "heartbeat", |v, _| v.heartbeat().boxed()).await;
    measure(&mut variants, "progress", |v, i| {
        v.progress((i % 100) as i16).boxed()
    })
    .await;
}
