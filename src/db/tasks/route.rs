//! The assigner's side of `jr_work_queue`: pending tasks to route, assignments, and giving
//! back or failing what cannot be served.

use std::time::Duration;

use crate::db::Sql;
use uuid::Uuid;

use super::duration_ms;
use crate::db::Statements;
use crate::error::Result;

/// A pending task as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTask {
    pub id: i64,
    pub provider: String,
    pub target: Option<String>,
    pub run_id: Option<Uuid>,
    /// Workers an earlier attempt failed on (retryably, timed out, or lost with them): the
    /// next attempt prefers another.
    pub avoid: Vec<String>,
    /// Its place in the order of service: (urgent first, priority, created, id).
    pub order: (bool, i32, chrono::DateTime<chrono::Utc>, i64),
    /// Set while its own provider is paused and it allows fallback: the providers it may
    /// go to instead, in order.
    pub fallback: Option<Fallback>,
}

/// Where a task of a paused provider may go instead, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub providers: Vec<String>,
    /// "provider 'claude' paused until … (rate-limited by …)".
    pub why: String,
}

/// A pending task's place in the order of service: (not urgent, priority, created,
/// id), ascending — the columns of `jr_work_queue_pending_key_idx` (migrations/V20).
pub type OrderKey = (bool, i32, chrono::DateTime<chrono::Utc>, i64);

/// Where the assigner's pending scan starts (migrations/V20): at or below the first
/// pending task, so that the scan does not walk the index entries of the tasks already
/// assigned — entries that stay, and grow with every task, while something holds back
/// the vacuum horizon.
///
/// A round's scan starts at the floor and, with its assignments, [`tasks_pending_floor`]
/// reads the first task pending from there: the next floor. A task that becomes
/// pending below it announces its place on `jrq_pending` ([`PendingFloor::heard`] lowers
/// the floor to it); every [`PendingFloor::FULL_WALK_EVERY`] (for a write no trigger
/// saw: triggers disabled, `session_replication_role = replica`), and after a reconnect,
/// a round starts from the beginning instead. A task that waits at the head (delayed, of a
/// provider nobody serves, of a paused run) holds the floor where it is.
#[derive(Debug)]
pub struct PendingFloor {
    at: Floor,
    walked_at: std::time::Instant,
    /// Off: every scan from the start (nothing listens — through a transaction pooler —
    /// so no task could announce itself).
    off: bool,
}

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// The beginning of the index.
    Start,
    /// At this key (included).
    At(OrderKey),
    /// Nothing is pending: no scan until a task announces itself.
    Top,
}

impl Default for PendingFloor {
    fn default() -> Self {
        PendingFloor {
            at: Floor::Start,
            walked_at: std::time::Instant::now(),
            off: false,
        }
    }
}

impl PendingFloor {
    /// How often a round scans from the beginning.
    pub const FULL_WALK_EVERY: Duration = Duration::from_secs(60);

    /// A floor that stays at the start: for a process that hears no notification.
    pub fn off() -> Self {
        PendingFloor {
            off: true,
            ..PendingFloor::default()
        }
    }

    /// Where this round's scan starts ([`Floor::Start`] when a full walk is due).
    pub fn take(&mut self) -> Floor {
        if self.walked_at.elapsed() >= Self::FULL_WALK_EVERY {
            self.walked_at = std::time::Instant::now();
            self.at = Floor::Start;
        }
        self.at
    }

    /// Where the next scan starts, unless a full walk is due.
    pub fn floor(&self) -> Floor {
        self.at
    }

    /// Forgets the floor: the next scan starts from the beginning.
    pub fn forget(&mut self) {
        self.at = Floor::Start;
    }

    /// What the round's [`tasks_pending_floor`] read: the first pending task from where
    /// the round's scan started (`None`: none).
    pub fn set(&mut self, first: Option<OrderKey>) {
        if self.off {
            return;
        }
        self.at = match first {
            Some(k) => Floor::At(k),
            None => Floor::Top,
        };
    }

    /// A notification on `jrq_pending`: an insert or an update that made tasks pending
    /// ("insert …" or "pending …", migrations/V20) lowers the floor to the first of them;
    /// a place that cannot be read sends the next scan to the beginning. Other payloads
    /// ("capacity", …, and "insert" alone: no pending row) leave it.
    pub fn heard(&mut self, payload: &str) {
        let mut words = payload.split(' ').peekable();
        if !matches!(words.next(), Some("insert" | "pending")) || words.peek().is_none() {
            return;
        }
        match parse_key(words) {
            Some(k) => self.lower(k),
            None => self.at = Floor::Start,
        }
    }

    fn lower(&mut self, k: OrderKey) {
        self.at = match self.at {
            Floor::Start => Floor::Start,
            Floor::At(f) => Floor::At(f.min(k)),
            Floor::Top => Floor::At(k),
        };
    }
}

/// "<not urgent 0/1> <priority> <created µs since 1970> <id>", nothing after.
fn parse_key<'a>(mut w: impl Iterator<Item = &'a str>) -> Option<OrderKey> {
    let not_urgent = match w.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let priority = w.next()?.parse().ok()?;
    let created = chrono::DateTime::from_timestamp_micros(w.next()?.parse().ok()?)?;
    let id = w.next()?.parse().ok()?;
    w.next()
        .is_none()
        .then_some((not_urgent, priority, created, id))
}

/// The floor as an index condition on `jr_work_queue_pending_key_idx`, its key in the
/// parameters named (a literal).
macro_rules! key_from {
    ($params:literal) => {
        concat!(
            "AND ((NOT sacred_fire_priority), priority, created_at, id) >= (",
            $params,
            ")"
        )
    };
}

/// The routing query, with an extra condition and the floor's (literals; the floor's
/// parameters are $6..$9).
macro_rules! pending_sql {
    ($extra:literal, $floor:expr) => {
        concat!(
            "SELECT id, provider, target_jr, run_id, \
                 CASE WHEN attempts > 0 THEN ARRAY( \
                     SELECT DISTINCT e.worker FROM jr_task_events e \
                     WHERE e.task_id = jr_work_queue.id AND e.worker IS NOT NULL \
                       AND e.action IN ('retry_scheduled', 'rescued')) \
                 ELSE '{}' END, \
                 NOT sacred_fire_priority, priority, created_at \
             FROM jr_work_queue \
             WHERE status = 'pending' AND run_after <= now() ",
            $extra,
            $floor,
            " AND (($5 AND provider = '') OR provider = ANY($1)) \
               AND (target_jr IS NULL OR target_jr = ANY($2)) \
               AND (run_id IS NULL OR NOT run_id = ANY($4)) \
             ORDER BY (NOT sacred_fire_priority), priority, created_at, id \
             LIMIT $3 FOR UPDATE SKIP LOCKED"
        )
    };
}

/// Takes up to `limit` ready pending tasks in the order of service of the `providers`
/// (and, `with_unprovided`, those without a provider) that some worker with free capacity
/// could serve (its target, if any, has room), not of a paused run, locking them `FOR
/// UPDATE SKIP LOCKED` for the rest of the transaction. The scan starts at `from` (a
/// [`PendingFloor`]'s).
#[allow(clippy::too_many_arguments)]
pub async fn tasks_pending_for_routing(
    client: &impl Sql,
    stmts: &Statements,
    providers: &[String],
    with_unprovided: bool,
    workers: &[String],
    paused_runs: &[Uuid],
    limit: i64,
    from: Floor,
) -> Result<Vec<PendingTask>> {
    let args = (providers, with_unprovided, workers, paused_runs, limit);
    match from {
        Floor::Top => Ok(vec![]),
        Floor::Start => pending(client, stmts, pending_sql!("", ""), args, None).await,
        Floor::At(k) => {
            const SQL: &str = pending_sql!("", key_from!("$6, $7, $8, $9"));
            pending(client, stmts, SQL, args, Some(k)).await
        }
    }
}

/// As [`tasks_pending_for_routing`], the tasks of the (paused) `providers` that allow
/// fallback (`fallback_ok`, migrations/V10: few, and indexed).
pub async fn tasks_pending_fallback(
    client: &impl Sql,
    stmts: &Statements,
    providers: &[String],
    workers: &[String],
    paused_runs: &[Uuid],
    limit: i64,
) -> Result<Vec<PendingTask>> {
    pending(
        client,
        stmts,
        pending_sql!("AND fallback_ok", ""),
        (providers, false, workers, paused_runs, limit),
        None,
    )
    .await
}

/// The first task pending at or after `from` in the order of service, whatever it waits
/// for: the next [`PendingFloor`]. Read in the round's transaction, with its assignments
/// (before or after them: either is at or below the first task left pending); `None` when
/// there is none.
pub async fn tasks_pending_floor(
    client: &impl Sql,
    stmts: &Statements,
    from: Floor,
) -> Result<Option<OrderKey>> {
    macro_rules! probe {
        ($floor:expr) => {
            concat!(
                "SELECT NOT sacred_fire_priority, priority, created_at, id \
                 FROM jr_work_queue WHERE status = 'pending' ",
                $floor,
                " ORDER BY (NOT sacred_fire_priority), priority, created_at, id LIMIT 1"
            )
        };
    }
    let rows = match from {
        Floor::Top => return Ok(None),
        Floor::Start => stmts.rows(client, probe!(""), &[]).await?,
        Floor::At((u, p, c, id)) => {
            const SQL: &str = probe!(key_from!("$1, $2, $3, $4"));
            stmts.rows(client, SQL, &[&u, &p, &c, &id]).await?
        }
    };
    Ok(rows
        .first()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))))
}

async fn pending(
    client: &impl Sql,
    stmts: &Statements,
    sql: &'static str,
    (providers, with_unprovided, workers, paused_runs, limit): (
        &[String],
        bool,
        &[String],
        &[Uuid],
        i64,
    ),
    from: Option<OrderKey>,
) -> Result<Vec<PendingTask>> {
    type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);
    let mut params: Vec<Param> = vec![&providers, &workers, &limit, &paused_runs, &with_unprovided];
    if let Some((u, p, c, id)) = &from {
        params.extend::<[Param; 4]>([u, p, c, id]);
    }
    let rows = stmts.rows(client, sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| PendingTask {
            id: r.get(0),
            provider: r.get(1),
            target: r.get(2),
            run_id: r.get(3),
            avoid: r.get(4),
            order: (r.get(5), r.get(6), r.get(7), r.get(0)),
            fallback: None,
        })
        .collect())
}

/// One routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: i64,
    pub worker: String,
    /// Why this worker (recorded in the event): "least loaded (1/4)", "pinned", ...
    pub reason: String,
    /// The provider it goes under when that is not the task's own (fallback), written as
    /// `routed_provider` (migrations/V10).
    pub routed_provider: Option<String>,
}

/// Writes assignments in one statement: pending → assigned, one `assigned` event each
/// (by `actor`, with the reason; the provider it went under when that is a fallback), and
/// one notification per worker on its own channel (payload: its name),
/// delivered when the transaction commits; `spent` sets the token buckets of the
/// providers whose tasks started (the tokens left). Returns how many were written.
///
/// The round's transaction then commits without waiting for its WAL to reach the disk
/// (`synchronous_commit = off` for this transaction only): an assignment a crash takes is
/// a task pending again — its event goes with it; its notification, delivered at commit,
/// may have woken the worker for nothing (its claim finds no task) — and whatever a worker
/// does with an assignment it saw starts with the worker's own synchronous commit, which
/// flushes the WAL up to and past the assignment. docs/benchmarks-notes.md argues it.
pub async fn tasks_assign(
    client: &impl Sql,
    stmts: &Statements,
    actor: &str,
    assignments: &[Assignment],
    spent: &[(String, f64)],
) -> Result<u64> {
    if assignments.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = assignments.iter().map(|a| a.task_id).collect();
    let workers: Vec<&str> = assignments.iter().map(|a| a.worker.as_str()).collect();
    let reasons: Vec<&str> = assignments.iter().map(|a| a.reason.as_str()).collect();
    let routed: Vec<Option<&str>> = assignments
        .iter()
        .map(|a| a.routed_provider.as_deref())
        .collect();
    let channels: Vec<String> = assignments
        .iter()
        .map(|a| crate::db::worker_channel(&a.worker))
        .collect();
    let (names, tokens): (Vec<&str>, Vec<f64>) =
        spent.iter().map(|(n, t)| (n.as_str(), *t)).unzip();
    let row = stmts
        .row(
            client,
            ASSIGN_SQL,
            &[
                &ids, &workers, &reasons, &actor, &channels, &names, &tokens, &routed,
            ],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

const ASSIGN_SQL: &str = "WITH a AS ( \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $8::text[], \
                     $5::text[]) AS a(id, worker, reason, routed, channel)), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'assigned', assigned_jr = a.worker, \
                     assigned_at = now(), routed_provider = a.routed, updated_at = now(), \
                     lease_seq = nextval('jr_lease_seq') \
                 FROM a WHERE q.id = a.id AND q.status = 'pending' \
                 RETURNING q.id, a.worker, a.reason, q.attempts, a.channel), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $4, 'assigned', 'pending', 'assigned', worker, attempts, reason \
                 FROM upd), \
             n AS ( \
                 SELECT pg_notify(c, w) FROM (SELECT DISTINCT worker AS w, channel AS c \
                     FROM upd) d), \
             spend AS ( \
                 UPDATE jr_providers p SET tokens = s.tokens, tokens_at = clock_timestamp() \
                 FROM unnest($6::text[], $7::float8[]) AS s(name, tokens) \
                 WHERE p.name = s.name) \
             SELECT (SELECT count(*) FROM upd), (SELECT count(*) FROM n), \
                 set_config('synchronous_commit', 'off', true)";

/// Gives back to pending the tasks assigned (not started) to workers that are not alive:
/// registered workers that are offline or silent longer than `online_threshold`, and —
/// with `unregistered` — names never registered once the assignment is older than the
/// threshold. One event each, saying why. Returns how many.
///
/// The registered workers' tasks are read per worker from `held_idx`; the unregistered
/// names need a walk of every assigned task, which a held vacuum horizon makes long (every
/// task assigned since leaves an entry): the assigner does that part less often.
pub async fn tasks_unassign_vanished(
    client: &impl Sql,
    actor: &str,
    online_threshold: Duration,
    unregistered: bool,
) -> Result<u64> {
    macro_rules! unassign {
        ($gone:literal) => {
            concat!(
                "WITH gone AS ( \
                     SELECT q.id, q.assigned_jr, \
                         CASE WHEN w.jr_name IS NULL THEN 'is not registered' \
                              WHEN NOT w.is_online THEN 'went offline' \
                              ELSE 'has been silent for ' || \
                                   round(extract(epoch FROM now() - w.last_seen))::int8 \
                                   || 's' \
                         END AS why ",
                $gone,
                " FOR UPDATE OF q SKIP LOCKED), \
                 upd AS ( \
                     UPDATE jr_work_queue q SET status = 'pending', assigned_jr = NULL, \
                         assigned_at = NULL, updated_at = now() \
                     FROM gone WHERE q.id = gone.id \
                     RETURNING q.id, q.attempts, gone.assigned_jr, gone.why), \
                 ev AS ( \
                     INSERT INTO jr_task_events \
                         (task_id, actor, action, from_status, to_status, worker, attempt, \
                          details) \
                     SELECT id, $1, 'unassigned', 'assigned', 'pending', assigned_jr, \
                         attempts, \
                         'worker ''' || assigned_jr || ''' ' || why || ' before starting it' \
                     FROM upd) \
                 SELECT count(*) FROM upd"
            )
        };
    }
    const REGISTERED: &str = unassign!(
        "FROM jr_status w JOIN jr_work_queue q ON q.assigned_jr = w.jr_name \
         WHERE q.status = 'assigned' AND NOT (w.is_online \
             AND w.last_seen BETWEEN now() - $2::int8 * interval '1 millisecond' \
                 AND now() + interval '1 minute')"
    );
    const ALL: &str = unassign!(
        "FROM jr_work_queue q LEFT JOIN jr_status w ON w.jr_name = q.assigned_jr \
         WHERE q.status = 'assigned' AND ( \
             (w.jr_name IS NOT NULL AND NOT (w.is_online \
                 AND w.last_seen BETWEEN now() - $2::int8 * interval '1 millisecond' \
                     AND now() + interval '1 minute')) \
             OR (w.jr_name IS NULL \
                 AND q.assigned_at < now() - $2::int8 * interval '1 millisecond'))"
    );
    let sql = if unregistered { ALL } else { REGISTERED };
    let row = client
        .row(sql, &[&actor, &duration_ms(online_threshold)])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Fails pending tasks pinned to a worker that has not been alive for `grace` since the
/// task became ready, with the error `target worker 'NAME' is not online`. Returns how
/// many.
pub async fn tasks_fail_unreachable_pins(
    client: &impl Sql,
    actor: &str,
    online_threshold: Duration,
    grace: Duration,
) -> Result<u64> {
    let row = client
        .row(
            "WITH dead AS ( \
                 SELECT q.id FROM jr_work_queue q \
                 WHERE q.status = 'pending' AND q.target_jr IS NOT NULL \
                   AND greatest(q.created_at, q.run_after) \
                       < now() - $3::int8 * interval '1 millisecond' \
                   AND NOT EXISTS ( \
                       SELECT 1 FROM jr_status w \
                       WHERE w.jr_name = q.target_jr AND w.kind = 'worker' AND w.is_online \
                         AND w.last_seen BETWEEN now() - $2::int8 * interval '1 millisecond' \
                             AND now() + interval '1 minute') \
                 FOR UPDATE OF q SKIP LOCKED), \
             upd AS ( \
                 UPDATE jr_work_queue q SET status = 'failed', completed_at = now(), \
                     error = 'target worker ''' || q.target_jr || ''' is not online', \
                     updated_at = now() \
                 FROM dead WHERE q.id = dead.id \
                 RETURNING q.id, q.attempts, q.target_jr, q.error), \
             ev AS ( \
                 INSERT INTO jr_task_events \
                     (task_id, actor, action, from_status, to_status, worker, attempt, details) \
                 SELECT id, $1, 'failed', 'pending', 'failed', target_jr, attempts, error \
                 FROM upd) \
             SELECT count(*) FROM upd",
            &[&actor, &duration_ms(online_threshold), &duration_ms(grace)],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Ready pending tasks and the age of the oldest, for the assigner's status line, counted
/// from a [`PendingFloor`]'s floor (none is pending below it).
pub async fn tasks_pending_depth(
    client: &impl Sql,
    stmts: &Statements,
    from: Floor,
) -> Result<(i64, Option<f64>)> {
    macro_rules! depth {
        ($floor:expr) => {
            concat!(
                "SELECT count(*), \
                     extract(epoch FROM now() - min(greatest(created_at, run_after)))::float8 \
                 FROM jr_work_queue WHERE status = 'pending' AND run_after <= now() ",
                $floor
            )
        };
    }
    let row = match from {
        Floor::Top => return Ok((0, None)),
        Floor::Start => stmts.row(client, depth!(""), &[]).await?,
        Floor::At((u, p, c, id)) => {
            const SQL: &str = depth!(key_from!("$1, $2, $3, $4"));
            stmts.row(client, SQL, &[&u, &p, &c, &id]).await?
        }
    };
    Ok((row.get(0), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(not_urgent: bool, priority: i32, micros: i64, id: i64) -> OrderKey {
        let t = chrono::DateTime::from_timestamp_micros(micros).unwrap();
        (not_urgent, priority, t, id)
    }

    #[test]
    fn a_task_announced_below_the_floor_lowers_it_and_one_above_does_not() {
        let mut f = PendingFloor::default();
        assert_eq!(f.floor(), Floor::Start);
        f.heard("insert 1 5 1000 7");
        assert_eq!(f.floor(), Floor::Start, "the start is below everything");
        f.set(Some(key(true, 5, 2000, 9)));
        f.heard("insert 1 5 3000 12");
        assert_eq!(f.floor(), Floor::At(key(true, 5, 2000, 9)));
        f.heard("pending 1 5 1000 3");
        assert_eq!(f.floor(), Floor::At(key(true, 5, 1000, 3)));
        f.heard("insert 0 9 9000 40");
        assert_eq!(
            f.floor(),
            Floor::At(key(false, 9, 9000, 40)),
            "urgent first"
        );
        for other in ["capacity", "rescue", "insert", "pending"] {
            f.heard(other);
        }
        assert_eq!(f.floor(), Floor::At(key(false, 9, 9000, 40)));
    }

    #[test]
    fn nothing_pending_waits_for_an_announcement() {
        let mut f = PendingFloor::default();
        f.set(None);
        assert_eq!(f.floor(), Floor::Top);
        f.heard("capacity");
        assert_eq!(f.floor(), Floor::Top);
        f.heard("insert 1 5 3000 12");
        assert_eq!(f.floor(), Floor::At(key(true, 5, 3000, 12)));
    }

    #[test]
    fn a_place_that_cannot_be_read_sends_the_scan_to_the_start() {
        for payload in [
            "insert 2 5 1 1",
            "insert 1 x 1 1",
            "insert 1 5 1",
            "insert 1 5 1 1 1",
            "pending 1 5 99999999999999999999 1",
        ] {
            let mut f = PendingFloor::default();
            f.set(Some(key(true, 5, 2000, 9)));
            f.heard(payload);
            assert_eq!(f.floor(), Floor::Start, "{payload}");
        }
    }
}
