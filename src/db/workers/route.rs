//! The registry as the assigner reads it: the candidates for a round, locked per
//! provider; their loads; the circuit breaker.

use std::time::Duration;

use crate::db::Sql;
use uuid::Uuid;

use crate::db::tasks::duration_ms;
use crate::db::Statements;
use crate::error::Result;

/// The circuit breaker's settings (owned by the assigner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitPolicy {
    /// Consecutive failed attempts that open the circuit.
    pub failures: i32,
    /// Cool-down after the K-th failure; doubles with each further failure.
    pub cooldown: Duration,
    /// Longest cool-down.
    pub max_cooldown: Duration,
}

/// A worker that may take tasks now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub providers: Vec<String>,
    pub capacity: i32,
    pub prefetch: i32,
    pub run_id: Option<Uuid>,
    /// Its health score (0–100), the tie-breaker after load.
    pub health: i32,
}

/// Advisory lock namespace of the per-worker routing locks ("jrq" in ASCII: 6976113, the
/// number [`CANDIDATES_SQL`] spells out).
pub const ROUTING_LOCK_CLASS: i32 = 0x006a_7271;

/// The candidates of one assigner's share, each guarded by a transaction-level advisory
/// lock in the class [`ROUTING_LOCK_CLASS`] (written out in the statement). The lock is not
/// a row lock: a row lock would make the worker's own writes to its registry row (outcome
/// counters, heartbeats) wait for the assigner's round, and the two would take turns.
///
/// The share: of the `n` live assigners (online, heartbeat within the online threshold
/// `$1`, and the asking one `$5` itself) in name order, the asking one is the `i`-th (the
/// live ones with a smaller name); a worker belongs to it when its name hashes to `i`
/// modulo `n`. Both numbers come from one scan, computed once per statement. Several assigners thus route to disjoint sets of
/// workers instead of all try-locking all of them each round, and when one dies its
/// workers fall to the others once it is no longer live (one online threshold). While
/// the assigners disagree about who is live (a round apart), a worker can be in two shares
/// for a round — the lock keeps that safe — or in none, until the next round.
const CANDIDATES_SQL: &str = "WITH share AS ( \
        SELECT count(*) FILTER (WHERE jr_name < $5::text) AS i, count(*) + 1 AS n \
        FROM jr_status \
        WHERE kind = 'assigner' AND is_online AND jr_name <> $5::text \
          AND last_seen BETWEEN now() - $1::int8 * interval '1 millisecond' \
              AND now() + interval '1 minute'), \
    c AS MATERIALIZED ( \
        SELECT jr_name, providers, capacity, run_id, prefetch, health_ok, health_failed, \
            extract(epoch FROM now() - health_at)::float8 AS health_age, recent_outcomes, \
            extract(epoch FROM now() - last_success_at)::float8 AS success_age, \
            consecutive_failures FROM jr_status \
        WHERE kind = 'worker' AND is_online AND status IN ('starting', 'idle', 'busy') \
          AND last_seen BETWEEN now() - $1::int8 * interval '1 millisecond' \
              AND now() + interval '1 minute' \
          AND NOT coalesce(jrq_circuit_open_until(last_failure_at, consecutive_failures, \
              $2, $3, $4) > now(), false) \
          AND ((SELECT n FROM share) = 1 \
               OR mod(hashtext(jr_name)::int8 + 2147483648, (SELECT n FROM share)) \
                  = (SELECT i FROM share)) \
        ORDER BY jr_name) \
    SELECT jr_name, providers, capacity, run_id, prefetch, health_ok, health_failed, \
        health_age, recent_outcomes, success_age, consecutive_failures FROM c \
    WHERE pg_try_advisory_xact_lock(6976113, hashtext(jr_name))";

/// Takes, for the rest of the transaction, the workers of this assigner's share (see
/// [`CANDIDATES_SQL`]) that may take tasks: alive (online, heartbeat within
/// `online_threshold`), not draining, circuit closed. Each is guarded by a per-worker
/// advisory lock held until the transaction ends; workers another assigner holds are
/// skipped: two assigners never fill one worker at once.
pub async fn workers_lock_candidates(
    client: &impl Sql,
    stmts: &Statements,
    assigner: &str,
    online_threshold: Duration,
    circuit: &CircuitPolicy,
) -> Result<Vec<Candidate>> {
    let rows = stmts
        .rows(
            client,
            CANDIDATES_SQL,
            &[
                &duration_ms(online_threshold),
                &circuit.failures,
                &(duration_ms(circuit.cooldown) as f64),
                &(duration_ms(circuit.max_cooldown) as f64),
                &assigner,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Candidate {
            name: r.get(0),
            providers: r.get(1),
            capacity: r.get(2),
            run_id: r.get(3),
            prefetch: r.get(4),
            health: super::health::HealthInputs::from_stored(
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
                r.get(9),
                r.get(10),
                false,
            )
            .score(),
        })
        .collect())
}

/// Where one assigner's load counts start, per worker (migrations/V18): a lease number
/// below every task the worker holds, as [`LeaseFloor`](crate::db::tasks::LeaseFloor) is
/// for its claims, and for the same reason — the count then skips the index entries of
/// the worker's finished tasks, which a held vacuum horizon keeps. A count starts from
/// the beginning for a worker it has no floor for yet (and for all of them when the
/// sequence went back).
#[derive(Debug, Default)]
pub struct LoadFloors {
    floors: std::collections::HashMap<String, i64>,
    full: bool,
}

/// Tasks assigned to or running on each named worker. Run it after locking the workers:
/// its snapshot then sees every assignment committed by whoever held the locks before
/// (and each later assignment to them draws a larger lease number, which is what makes
/// the floors it raises safe).
pub async fn workers_loads(
    client: &impl Sql,
    stmts: &Statements,
    names: &[String],
    floors: &mut LoadFloors,
) -> Result<std::collections::HashMap<String, i32>> {
    let full = std::mem::take(&mut floors.full);
    let from: Vec<i64> = names
        .iter()
        .map(|n| match full {
            true => -1,
            false => floors.floors.get(n).copied().unwrap_or(-1),
        })
        .collect();
    let rows = stmts.rows(client, LOADS_SQL, &[&names, &from]).await?;
    let mut next = std::collections::HashMap::with_capacity(names.len());
    let mut loads = std::collections::HashMap::with_capacity(names.len());
    for r in &rows {
        let name: String = r.get(0);
        // One below the lowest number it holds; holding none, the last number drawn: this
        // round holds the worker's routing lock, so nobody is assigning to it meanwhile.
        let lowest: Option<i64> = r.get(2);
        let drawn: i64 = r.get(3);
        if floors.floors.get(&name).is_some_and(|f| *f > drawn) {
            // The sequence went back (a restore, a failover): no floor is safe.
            floors.full = true;
        }
        next.insert(name.clone(), lowest.map_or(drawn, |m| m - 1));
        loads.insert(name, r.get(1));
    }
    floors.floors = next;
    Ok(loads)
}

const LOADS_SQL: &str = "SELECT x.n, l.c, l.m, \
                 (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END \
                  FROM jr_lease_seq) \
             FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS x(n, f, o), \
             LATERAL (SELECT count(*)::int4 AS c, min(q.lease_seq) AS m \
                 FROM jr_work_queue q \
                 WHERE q.status IN ('assigned', 'in_progress') AND q.assigned_jr = x.n \
                   AND coalesce(q.lease_seq, 9223372036854775807) > x.f) l \
             ORDER BY x.o";

/// Records the circuit breaker's state for people (`jrq workers`): opens the circuit of
/// workers with K or more consecutive failures (until when, and why) and clears it for
/// the others. Returns (opened, closed) counts of rows changed.
pub async fn workers_update_circuits(
    client: &impl Sql,
    circuit: &CircuitPolicy,
) -> Result<(u64, u64)> {
    let sql = "WITH o AS ( \
            UPDATE jr_status SET circuit_open_until = \
                    jrq_circuit_open_until(last_failure_at, consecutive_failures, $1, $2, $3), \
                circuit_reason = consecutive_failures || ' failed attempts in a row', \
                updated_at = now() \
            WHERE kind = 'worker' AND consecutive_failures >= $1 AND last_failure_at IS NOT NULL \
              AND circuit_open_until IS DISTINCT FROM \
                  jrq_circuit_open_until(last_failure_at, consecutive_failures, $1, $2, $3) \
            RETURNING 1), \
        c AS ( \
            UPDATE jr_status SET circuit_open_until = NULL, circuit_reason = NULL, \
                updated_at = now() \
            WHERE kind = 'worker' AND consecutive_failures < $1 \
              AND (circuit_open_until IS NOT NULL OR circuit_reason IS NOT NULL) \
            RETURNING 1) \
        SELECT (SELECT count(*) FROM o), (SELECT count(*) FROM c)";
    let row = client
        .row(
            sql,
            &[
                &circuit.failures,
                &(duration_ms(circuit.cooldown) as f64),
                &(duration_ms(circuit.max_cooldown) as f64),
            ],
        )
        .await?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Takes (waiting for it) the routing lock an assigner's round holds on worker `name`
/// for the rest of the transaction: a round routing to it now finishes first.
pub async fn workers_lock_for_routing(client: &impl Sql, name: &str) -> Result<()> {
    client
        .exec(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&ROUTING_LOCK_CLASS, &name],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_lock_class_is_the_one_the_statement_spells_out() {
        assert!(CANDIDATES_SQL.contains(&format!("({ROUTING_LOCK_CLASS}, hashtext")));
    }
}
