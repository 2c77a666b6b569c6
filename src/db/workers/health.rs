//! A worker's health score, from its recent outcomes: what `jrq workers` shows, what the
//! assigner breaks ties on load with, and what the monitor compares with the fleet's
//! median. The inputs are kept by the outcome functions of migrations/V10 in the worker's
//! registry row; the score is computed here, and only here.
//!
//! ```text
//! health = 100 × (hourly ratio + ratio of the last 20 attempts) / 2
//!          × ½ when it failed since its last success and that success is more than an
//!              hour old (or it never had one)
//!          = 0 while its circuit is open
//! hourly ratio = (completed + 1) / (completed + failed + 1), both counts exponentially
//!                weighted: an outcome counts half as much an hour later (HALF_LIFE)
//! last 20      = completed / attempts among them; 1 with none, or when the last one is
//!                more than an hour old
//! ```
//!
//! The `+ 1` is a success that never decays: a new worker is healthy, and a worker that
//! had a bad hour and then nothing to do (the assigner prefers healthier workers on equal
//! load) recovers as its failures fade, instead of keeping its ratio for ever. No history
//! table is needed.

use std::time::Duration;

use crate::db::Sql;
use serde::Serialize;

use crate::db::tasks::duration_ms;
use crate::error::Result;

/// The half-life of an outcome in the hourly ratio (also written in migrations/V10).
pub const HALF_LIFE: Duration = Duration::from_secs(3600);
/// How many of the last attempts the second ratio covers (also written in migrations/V10).
pub const RECENT: usize = 20;
/// A success older than this, with failures since, halves the score; the last attempts
/// stop counting when the last of them is older than this.
pub const STALE: Duration = Duration::from_secs(3600);

/// What the score is computed from, as `jrq workers --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthInputs {
    /// Completed attempts, exponentially weighted (half-life one hour), as of now.
    pub completed_1h: f64,
    /// Failed attempts, weighted the same way.
    pub failed_1h: f64,
    /// The last attempts, oldest first: `+` completed, `-` failed.
    pub recent: String,
    /// Seconds since its last recorded outcome; `None`: none recorded.
    pub last_outcome_age_s: Option<f64>,
    /// Seconds since its last completed attempt; `None`: none recorded.
    pub last_success_age_s: Option<f64>,
    /// Failed attempts since its last success.
    pub consecutive_failures: i32,
    /// Whether its circuit breaker is open now.
    pub circuit_open: bool,
}

/// The score and its inputs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// 0 (failing) to 100 (healthy).
    pub score: i32,
    pub inputs: HealthInputs,
}

impl HealthInputs {
    /// The inputs from the stored columns: the weighted counts as of `counted_age_s`
    /// seconds ago (decayed to now here), the rest as stored.
    pub fn from_stored(
        ok: f64,
        failed: f64,
        counted_age_s: Option<f64>,
        recent: String,
        last_success_age_s: Option<f64>,
        consecutive_failures: i32,
        circuit_open: bool,
    ) -> Self {
        let decay = counted_age_s.map_or(1.0, |age| {
            0.5f64.powf((age.max(0.0) / HALF_LIFE.as_secs_f64()).min(64.0))
        });
        HealthInputs {
            completed_1h: ok.max(0.0) * decay,
            failed_1h: failed.max(0.0) * decay,
            recent,
            last_outcome_age_s: counted_age_s,
            last_success_age_s,
            consecutive_failures,
            circuit_open,
        }
    }

    /// Outcomes in the last attempts (`+` and `-`; anything else is ignored).
    pub fn recent_counts(&self) -> (usize, usize) {
        let ok = self.recent.chars().filter(|c| *c == '+').count();
        let failed = self.recent.chars().filter(|c| *c == '-').count();
        (ok, failed)
    }

    /// The score (see the module docs).
    pub fn score(&self) -> i32 {
        if self.circuit_open {
            return 0;
        }
        let stale_after = STALE.as_secs_f64();
        let hourly = (self.completed_1h + 1.0) / (self.completed_1h + self.failed_1h + 1.0);
        let (ok, failed) = self.recent_counts();
        let current = self.last_outcome_age_s.is_some_and(|a| a <= stale_after);
        let recent = if ok + failed == 0 || !current {
            1.0
        } else {
            ok as f64 / (ok + failed) as f64
        };
        let mut score = 100.0 * (hourly + recent) / 2.0;
        if !score.is_finite() {
            score = 0.0;
        }
        let stale = self.last_success_age_s.is_none_or(|age| age > stale_after);
        if self.consecutive_failures > 0 && stale {
            score /= 2.0;
        }
        score.round().clamp(0.0, 100.0) as i32
    }

    /// The score with its inputs.
    pub fn health(self) -> Health {
        Health {
            score: self.score(),
            inputs: self,
        }
    }
}

/// The median of the scores (the mean of the middle two for an even count).
pub fn median(scores: &[i32]) -> Option<f64> {
    let mut s = scores.to_vec();
    s.sort_unstable();
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(f64::from(s[n / 2])),
        _ => Some((f64::from(s[n / 2 - 1]) + f64::from(s[n / 2])) / 2.0),
    }
}

/// The health of every alive worker (online, heartbeat within `online_threshold`), by
/// name.
pub async fn workers_health(
    client: &impl Sql,
    online_threshold: Duration,
) -> Result<Vec<(String, Health)>> {
    let rows = client
        .rows(
            "SELECT jr_name, health_ok, health_failed, \
                 extract(epoch FROM now() - health_at)::float8, recent_outcomes, \
                 extract(epoch FROM now() - last_success_at)::float8, consecutive_failures, \
                 coalesce(circuit_open_until > now(), false) \
             FROM jr_status \
             WHERE kind = 'worker' AND is_online \
               AND last_seen BETWEEN now() - $1::int8 * interval '1 millisecond' \
                   AND now() + interval '1 minute' \
             ORDER BY jr_name",
            &[&duration_ms(online_threshold)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let inputs = HealthInputs::from_stored(
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            );
            (r.get(0), inputs.health())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(ok: f64, failed: f64, recent: &str) -> HealthInputs {
        HealthInputs::from_stored(ok, failed, Some(0.0), recent.into(), Some(10.0), 0, false)
    }

    #[test]
    fn a_new_worker_is_healthy_and_an_open_circuit_is_zero() {
        assert_eq!(inputs(0.0, 0.0, "").score(), 100);
        let mut i = inputs(10.0, 0.0, "++++");
        i.circuit_open = true;
        assert_eq!(i.score(), 0);
    }

    #[test]
    fn both_ratios_count_equally() {
        // Hourly (3 + 1) / (4 + 1), recent 1/2 -> (0.8 + 0.5) / 2.
        assert_eq!(inputs(3.0, 1.0, "+-+-").score(), 65);
        // (1/6 + 0) / 2.
        assert_eq!(inputs(0.0, 5.0, "-----").score(), 8);
    }

    #[test]
    fn a_worker_left_idle_after_a_bad_hour_recovers() {
        let bad = |hours: f64| {
            HealthInputs::from_stored(
                0.0,
                5.0,
                Some(hours * 3600.0),
                "-----".into(),
                Some(hours * 3600.0 + 60.0),
                0,
                false,
            )
            .score()
        };
        assert_eq!(bad(0.0), 8);
        // An hour later the last attempts no longer count; the failures fade.
        assert!(bad(2.0) > 60, "{}", bad(2.0));
        assert!(bad(8.0) >= 98, "{}", bad(8.0));
    }

    #[test]
    fn failing_since_an_old_success_halves_it() {
        let mut i = inputs(3.0, 1.0, "+++-");
        i.consecutive_failures = 1;
        let fresh = i.score();
        i.last_success_age_s = Some(2.0 * 3600.0);
        assert_eq!(i.score(), (fresh as f64 / 2.0).round() as i32);
        i.last_success_age_s = None;
        assert_eq!(i.score(), (fresh as f64 / 2.0).round() as i32);
        // An idle worker whose last success is old but has not failed since is not.
        i.consecutive_failures = 0;
        assert_eq!(i.score(), fresh);
    }

    #[test]
    fn outcomes_weigh_half_as_much_an_hour_later() {
        let i = HealthInputs::from_stored(8.0, 4.0, Some(3600.0), String::new(), None, 0, false);
        assert!((i.completed_1h - 4.0).abs() < 1e-9);
        assert!((i.failed_1h - 2.0).abs() < 1e-9);
        // A very old count decays towards nothing without overflow.
        let i = HealthInputs::from_stored(8.0, 4.0, Some(1e12), String::new(), None, 0, false);
        assert!(i.completed_1h < 1e-15);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[90, 10, 50]), Some(50.0));
        assert_eq!(median(&[100, 0, 80, 60]), Some(70.0));
    }
}
