//! Schedules' ticks: when a cadence fires, and which of the ticks due a scheduling pass
//! enqueues (the catch-up policy). Pure: the assigner's pass (`db::schedules`) and
//! `jrq schedules` call it with the database's clock.
//!
//! A cadence is a cron expression in a time zone (croner: 5 fields or 6 with seconds,
//! `@hourly`-style aliases, `L`, `#`, `W`; daylight-saving gaps and overlaps as Vixie
//! cron handles them — a fixed time in a gap runs just after it, once in an overlap;
//! wildcard and step fields run in real time through both), or a fixed interval aligned
//! to the Unix epoch (`--every 10m` ticks at :00, :10, … UTC, whenever it was added).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

/// The shortest interval of `--every`.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest interval of `--every`.
pub const MAX_EVERY: Duration = Duration::from_secs(366 * 24 * 3600);
/// A tick is missed once it is later than its period, and at most this late.
pub const MAX_GRACE: Duration = Duration::from_secs(60);
/// Ticks one pass looks at per schedule; with `--catch-up all` the rest wait for the
/// next pass (a few milliseconds later), the others skip ahead.
pub const MAX_TICKS_PER_PASS: usize = 1000;

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Cadence {
    Cron { cron: Box<croner::Cron>, tz: Tz },
    Every(Duration),
}

impl Cadence {
    /// A cron expression in a time zone (an IANA name, e.g. `Europe/Berlin`; `UTC`).
    pub fn cron(expr: &str, tz: &str) -> Result<Cadence, String> {
        let tz = parse_timezone(tz)?;
        let cron = croner::Cron::from_str(expr.trim()).map_err(|e| {
            format!(
                "'{expr}' is not a cron expression ({e}): give 5 fields (minute hour \
                 day-of-month month day-of-week), 6 with seconds first, or an alias such as \
                 @hourly"
            )
        })?;
        Ok(Cadence::Cron {
            cron: Box::new(cron),
            tz,
        })
    }

    /// A fixed interval.
    pub fn every(d: Duration) -> Result<Cadence, String> {
        if !(MIN_EVERY..=MAX_EVERY).contains(&d) {
            return Err(format!(
                "--every {} is out of range: give 1s to 366d",
                crate::validate::format_duration(d)
            ));
        }
        if !d.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(format!(
                "--every {d:?} is not a whole number of milliseconds: round it"
            ));
        }
        Ok(Cadence::Every(d))
    }

    /// The latest tick at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(d) => {
                let step = d.as_millis() as i64;
                DateTime::from_timestamp_millis(t.timestamp_millis().div_euclid(step) * step)
            }
            Cadence::Cron { cron, tz } => cron
                .find_previous_occurrence(&t.with_timezone(tz), true)
                .ok()
                .map(|n| n.with_timezone(&Utc)),
        }
    }

    /// The first tick strictly after `t`; `None` when there is none (a cron expression
    /// that never matches again, such as February 30th).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(d) => {
                let step = d.as_millis() as i64;
                let ms = t.timestamp_millis();
                let next = (ms.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
            Cadence::Cron { cron, tz } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|n| n.with_timezone(&Utc)),
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Every(d) => write!(f, "every {}", crate::validate::format_duration(*d)),
            Cadence::Cron { cron, tz } => write!(f, "cron '{}' {tz}", cron.pattern),
        }
    }
}

/// An IANA time zone name.
pub fn parse_timezone(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>().map_err(|_| {
        format!(
            "'{s}' is not a time zone: give an IANA name such as UTC, Europe/Berlin or \
             America/New_York"
        )
    })
}

/// What a pass does with ticks no assigner handled in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CatchUp {
    /// Skip them: the next task is the next tick's.
    None,
    /// One task for them all: the latest one's (the default).
    #[default]
    One,
    /// A task for each (at most 1000 per pass; the rest follow).
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }
}

impl FromStr for CatchUp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(CatchUp::None),
            "one" => Ok(CatchUp::One),
            "all" => Ok(CatchUp::All),
            _ => Err(format!(
                "'{s}' is not a catch-up policy: use none, one or all"
            )),
        }
    }
}

/// What a pass does with one schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The ticks to enqueue, oldest first.
    pub enqueue: Vec<DateTime<Utc>>,
    /// Due ticks left out because they were missed (the policy) — a lower bound when
    /// more than [`MAX_TICKS_PER_PASS`] were due.
    pub missed: u64,
    /// The latest tick this pass handled.
    pub last: DateTime<Utc>,
    /// The next tick due after this pass; `None`: the cadence never fires again.
    pub next: Option<DateTime<Utc>>,
}

/// The ticks due at `now` from `first` (itself a tick, the schedule's `next_tick`) and
/// what `policy` keeps of them. A tick is on time when it is at most its period late
/// (at most [`MAX_GRACE`]); the others are missed. On-time ticks are always enqueued;
/// missed ones as the policy says: none, the latest (only when no on-time tick is
/// enqueued anyway), or all.
pub fn plan(cadence: &Cadence, first: DateTime<Utc>, now: DateTime<Utc>, policy: CatchUp) -> Plan {
    let mut due = vec![first];
    let mut after = cadence.next_after(first);
    while let Some(t) = after {
        if t > now || due.len() >= MAX_TICKS_PER_PASS {
            break;
        }
        due.push(t);
        after = cadence.next_after(t);
    }
    let on_time = |t: DateTime<Utc>, following: Option<DateTime<Utc>>| {
        let period = following
            .and_then(|n| (n - t).to_std().ok())
            .unwrap_or(MAX_GRACE);
        let grace = TimeDelta::from_std(period.min(MAX_GRACE)).unwrap_or(TimeDelta::MAX);
        now - t <= grace
    };
    // More due than one pass looks at: `all` goes on from `after` at the next pass; the
    // other policies jump to the latest tick due and count the rest as missed (a lower
    // bound: they are not counted one by one).
    if matches!(after, Some(t) if t <= now) && policy != CatchUp::All {
        let latest = cadence.latest_at_or_before(now).unwrap_or(first);
        let next = cadence.next_after(latest);
        let keep = policy == CatchUp::One || on_time(latest, next);
        return Plan {
            enqueue: if keep { vec![latest] } else { vec![] },
            missed: due.len() as u64 + u64::from(!keep),
            last: latest,
            next,
        };
    }
    let mut on = vec![];
    let mut late = vec![];
    for (i, &t) in due.iter().enumerate() {
        if on_time(t, due.get(i + 1).copied().or(after)) {
            on.push(t);
        } else {
            late.push(t);
        }
    }
    let enqueue = match policy {
        CatchUp::All => due.clone(),
        CatchUp::One if on.is_empty() => late.last().copied().into_iter().collect(),
        CatchUp::One | CatchUp::None => on,
    };
    Plan {
        missed: (due.len() - enqueue.len()) as u64,
        enqueue,
        last: *due.last().unwrap_or(&first),
        next: after,
    }
}

/// A tick as jrq writes it (unique keys, payloads): RFC 3339 in UTC, to the millisecond.
pub fn tick_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ticks(c: &Cadence, from: &str, n: usize) -> Vec<String> {
        let mut out = vec![];
        let mut t = at(from);
        for _ in 0..n {
            t = c.next_after(t).unwrap();
            out.push(tick_text(t));
        }
        out
    }

    #[test]
    fn every_is_aligned_to_the_epoch() {
        let c = Cadence::every(Duration::from_secs(600)).unwrap();
        assert_eq!(
            ticks(&c, "2026-12-03T08:03:10Z", 2),
            ["2026-12-03T08:10:00.000Z", "2026-12-03T08:20:00.000Z"]
        );
        // Strictly after: a tick's own time gives the next one.
        assert_eq!(
            ticks(&c, "2026-12-03T08:10:00Z", 1),
            ["2026-12-03T08:20:00.000Z"]
        );
        assert!(Cadence::every(Duration::from_millis(500)).is_err());
        assert!(Cadence::every(Duration::from_millis(1500)).is_ok());
        assert!(Cadence::every(Duration::from_nanos(1_500_000_001)).is_err());
    }

    #[test]
    fn cron_five_or_six_fields_and_aliases() {
        let c = Cadence::cron("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            ticks(&c, "2026-12-03T08:03:10Z", 2),
            ["2026-12-03T08:15:00.000Z", "2026-12-03T08:30:00.000Z"]
        );
        let c = Cadence::cron("*/20 * * * * *", "UTC").unwrap();
        assert_eq!(
            ticks(&c, "2026-12-03T08:03:10Z", 2),
            ["2026-12-03T08:03:20.000Z", "2026-12-03T08:03:40.000Z"]
        );
        let c = Cadence::cron("@hourly", "UTC").unwrap();
        assert_eq!(
            ticks(&c, "2026-12-03T08:03:10Z", 1),
            ["2026-12-03T09:00:00.000Z"]
        );
        let e = Cadence::cron("61 * * * *", "UTC").unwrap_err();
        assert!(e.contains("is not a cron expression"), "{e}");
        let e = Cadence::cron("0 * * * *", "Mars/Olympus").unwrap_err();
        assert!(e.contains("is not a time zone"), "{e}");
    }

    /// Spring forward in New York (2027-03-14, 02:00 EST → 03:00 EDT): a fixed 02:30
    /// runs once, just after the gap; every half hour skips the times that do not exist.
    #[test]
    fn cron_through_the_spring_forward_gap() {
        let c = Cadence::cron("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            ticks(&c, "2027-03-12T12:00:00Z", 3),
            [
                "2027-03-13T07:30:00.000Z", // 02:30 EST
                "2027-03-14T07:00:00.000Z", // 03:00 EDT: 02:30 does not exist that day
                "2027-03-15T06:30:00.000Z", // 02:30 EDT
            ]
        );
        let c = Cadence::cron("*/30 * * * *", "America/New_York").unwrap();
        assert_eq!(
            ticks(&c, "2027-03-14T06:15:00Z", 3),
            [
                "2027-03-14T06:30:00.000Z", // 01:30 EST
                "2027-03-14T07:00:00.000Z", // 03:00 EDT
                "2027-03-14T07:30:00.000Z", // 03:30 EDT
            ]
        );
    }

    /// Fall back (2027-11-07, 02:00 EDT → 01:00 EST): a fixed 01:30 runs once; every half
    /// hour runs in both passes of the repeated hour.
    #[test]
    fn cron_through_the_fall_back_overlap() {
        let c = Cadence::cron("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            ticks(&c, "2027-11-06T12:00:00Z", 2),
            [
                "2027-11-07T05:30:00.000Z", // 01:30 EDT, the first pass
                "2027-11-08T06:30:00.000Z", // 01:30 EST the next day
            ]
        );
        let c = Cadence::cron("*/30 * * * *", "America/New_York").unwrap();
        assert_eq!(
            ticks(&c, "2027-11-07T04:45:00Z", 5),
            [
                "2027-11-07T05:00:00.000Z", // 01:00 EDT
                "2027-11-07T05:30:00.000Z", // 01:30 EDT
                "2027-11-07T06:00:00.000Z", // 01:00 EST
                "2027-11-07T06:30:00.000Z", // 01:30 EST
                "2027-11-07T07:00:00.000Z", // 02:00 EST
            ]
        );
    }

    #[test]
    fn on_time_ticks_are_enqueued_whatever_the_policy() {
        let c = Cadence::every(Duration::from_secs(10)).unwrap();
        let first = at("2026-12-03T08:00:00Z");
        for policy in [CatchUp::None, CatchUp::One, CatchUp::All] {
            let p = plan(&c, first, at("2026-12-03T08:00:00.300Z"), policy);
            assert_eq!(p.enqueue, [first], "{policy:?}");
            assert_eq!(p.missed, 0);
            assert_eq!(p.next, Some(at("2026-12-03T08:00:10Z")));
        }
        // 10.3 s late: the first tick is missed (a period late), the second on time.
        let now = at("2026-12-03T08:00:10.300Z");
        let p = plan(&c, first, now, CatchUp::One);
        assert_eq!(p.enqueue, [at("2026-12-03T08:00:10Z")]);
        assert_eq!(p.missed, 1);
        let p = plan(&c, first, now, CatchUp::All);
        assert_eq!(p.enqueue.len(), 2);
        assert_eq!(p.missed, 0);
    }

    /// An hour without an assigner, every 10 minutes: six ticks missed.
    #[test]
    fn missed_ticks_follow_the_policy() {
        let c = Cadence::every(Duration::from_secs(600)).unwrap();
        let first = at("2026-12-03T07:10:00Z");
        let now = at("2026-12-03T08:05:00Z");
        let p = plan(&c, first, now, CatchUp::None);
        assert_eq!((p.enqueue.len(), p.missed), (0, 6));
        assert_eq!(p.next, Some(at("2026-12-03T08:10:00Z")));
        assert_eq!(p.last, at("2026-12-03T08:00:00Z"));
        let p = plan(&c, first, now, CatchUp::One);
        assert_eq!(p.enqueue, [at("2026-12-03T08:00:00Z")]);
        assert_eq!(p.missed, 5);
        let p = plan(&c, first, now, CatchUp::All);
        assert_eq!(p.enqueue.len(), 6);
        assert_eq!(p.enqueue[0], first);
        assert_eq!(p.next, Some(at("2026-12-03T08:10:00Z")));
        // A daily tick an hour late is missed (a minute at most is on time).
        let c = Cadence::cron("0 0 * * *", "UTC").unwrap();
        let p = plan(
            &c,
            at("2026-12-03T00:00:00Z"),
            at("2026-12-03T01:00:00Z"),
            CatchUp::None,
        );
        assert_eq!((p.enqueue.len(), p.missed), (0, 1));
        let p = plan(
            &c,
            at("2026-12-03T00:00:00Z"),
            at("2026-12-03T00:00:59Z"),
            CatchUp::None,
        );
        assert_eq!(p.enqueue.len(), 1);
    }

    #[test]
    fn a_long_outage_is_bounded_per_pass() {
        let c = Cadence::every(Duration::from_secs(1)).unwrap();
        let first = at("2026-12-03T00:00:00Z");
        let now = at("2026-12-03T08:00:00.500Z");
        let p = plan(&c, first, now, CatchUp::All);
        assert_eq!(p.enqueue.len(), MAX_TICKS_PER_PASS);
        assert_eq!(
            p.next,
            Some(at("2026-12-03T00:16:40Z")),
            "the rest next pass"
        );
        let p = plan(&c, first, now, CatchUp::One);
        assert_eq!(p.enqueue, [at("2026-12-03T08:00:00Z")], "the latest due");
        assert_eq!(p.next, Some(at("2026-12-03T08:00:01Z")), "skipped ahead");
        assert!(p.missed >= MAX_TICKS_PER_PASS as u64);
        let p = plan(&c, first, now, CatchUp::None);
        assert_eq!(
            p.enqueue,
            [at("2026-12-03T08:00:00Z")],
            "half a second late is on time"
        );
        let p = plan(&c, first, at("2026-12-03T08:00:01.500Z"), CatchUp::None);
        assert_eq!(p.enqueue, [at("2026-12-03T08:00:01Z")]);
    }
}
