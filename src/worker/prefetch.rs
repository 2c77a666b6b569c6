//! The worker's prefetch: how many tasks the assigners may queue here beyond its capacity.
//!
//! A prefetched task waits for a slot while this worker's running attempts finish; in
//! exchange the worker never waits for an assigner round between two tasks. For short
//! tasks that is the whole difference in throughput (a worker of 10 slots alone on no-op
//! tasks goes about 1.5–2 × faster with 20 prefetched); for long agent tasks a prefetched
//! task waits minutes behind the running ones while another worker may be free.
//!
//! `--prefetch auto` (the default) chooses from what this worker measures: the slowest of
//! its recent attempts (and the age of the oldest one running) is the time a slot takes to
//! free. The prefetch is as many tasks as would wait no longer than [`AUTO_WAIT`] for a
//! slot — `AUTO_WAIT × capacity / slowest` — at most twice the capacity. No measurement
//! yet: none. So no-op and millisecond tasks get a full pipeline, tasks of more than half a
//! second at capacity 10 get none, and one slow attempt among fast ones turns it off until it is
//! out of the window.

use std::collections::VecDeque;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// How long a prefetched task should wait for a slot, at most (the automatic prefetch's
/// aim).
pub const AUTO_WAIT: Duration = Duration::from_millis(50);
/// Attempts whose run time the automatic prefetch looks at.
pub const AUTO_WINDOW: usize = 16;
/// The automatic prefetch's ceiling, in multiples of the capacity.
pub const AUTO_MAX_FACTOR: u32 = 2;
/// Changes of the automatic prefetch reach the database at most this often.
pub const AUTO_PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// The largest prefetch (the registry's limit).
pub const PREFETCH_MAX: u32 = 10_000;

/// The `--prefetch` setting: chosen by the worker, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// From the measured run times of this worker's recent attempts ([`AutoPrefetch`]).
    Auto,
    /// Always this many (0: none).
    Fixed(u32),
}

impl Prefetch {
    /// What the registration starts with: a fixed value, or 0 until there is a
    /// measurement.
    pub fn initial(self) -> u32 {
        match self {
            Prefetch::Auto => 0,
            Prefetch::Fixed(n) => n,
        }
    }
}

impl std::fmt::Display for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefetch::Auto => f.write_str("auto"),
            Prefetch::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Prefetch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Prefetch::Auto);
        }
        match s.parse::<u64>() {
            Ok(n) if n <= u64::from(PREFETCH_MAX) => Ok(Prefetch::Fixed(n as u32)),
            Ok(n) => Err(format!(
                "{n} is out of range: give auto, or 0 to {PREFETCH_MAX}"
            )),
            Err(_) => Err(format!(
                "'{s}' is not a prefetch: give auto, or 0 to {PREFETCH_MAX}"
            )),
        }
    }
}

/// The automatic prefetch's measurements and what it last told the database.
#[derive(Debug)]
pub struct AutoPrefetch {
    capacity: u32,
    recent: VecDeque<Duration>,
    /// What the database has (`None`: not known, after a reconnect).
    published: Option<u32>,
    /// When a value was last sent (sent or failed: retries wait as long).
    last_sent: Option<Instant>,
}

impl AutoPrefetch {
    pub fn new(capacity: u32) -> Self {
        AutoPrefetch {
            capacity,
            recent: VecDeque::with_capacity(AUTO_WINDOW),
            published: Some(0),
            last_sent: None,
        }
    }

    /// An attempt ran this long.
    pub fn observe(&mut self, ran: Duration) {
        if self.recent.len() == AUTO_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(ran);
    }

    /// The prefetch for what was measured, while the oldest attempt still running has run
    /// for `oldest_running`.
    pub fn target(&self, oldest_running: Option<Duration>) -> u32 {
        let Some(slowest) = self.recent.iter().max().copied() else {
            return 0;
        };
        let slowest = slowest.max(oldest_running.unwrap_or_default());
        let ceiling = self
            .capacity
            .saturating_mul(AUTO_MAX_FACTOR)
            .min(PREFETCH_MAX);
        let secs = slowest.as_secs_f64().max(1e-6);
        let p = AUTO_WAIT.as_secs_f64() * f64::from(self.capacity) / secs;
        if p >= f64::from(ceiling) {
            ceiling
        } else {
            p.floor() as u32
        }
    }

    /// The value to send now, if it differs from what the database has and none was sent
    /// in the last [`AUTO_PUBLISH_EVERY`].
    pub fn due(&self, oldest_running: Option<Duration>, now: Instant) -> Option<u32> {
        let target = self.target(oldest_running);
        let quiet = self
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= AUTO_PUBLISH_EVERY);
        (Some(target) != self.published && quiet).then_some(target)
    }

    /// When a change held back by the once-a-second limit may be sent (`None`: nothing
    /// to send).
    pub fn next_send_at(&self, oldest_running: Option<Duration>) -> Option<Instant> {
        if Some(self.target(oldest_running)) == self.published {
            return None;
        }
        Some(
            self.last_sent
                .map_or_else(Instant::now, |t| t + AUTO_PUBLISH_EVERY),
        )
    }

    /// The database may not have what was sent (the connection was lost: a failover to a
    /// standby that had not received it): send the value again at the next chance.
    pub fn forget(&mut self) {
        self.published = None;
    }

    /// `value` was sent at `now`; `stored` says whether the database took it.
    pub fn sent(&mut self, value: u32, stored: bool, now: Instant) {
        self.last_sent = Some(now);
        if stored {
            self.published = Some(value);
        }
    }

    /// What the database has, when known.
    pub fn published(&self) -> Option<u32> {
        self.published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_auto_and_numbers_and_refuses_the_rest() {
        assert_eq!("auto".parse::<Prefetch>(), Ok(Prefetch::Auto));
        assert_eq!("AUTO".parse::<Prefetch>(), Ok(Prefetch::Auto));
        assert_eq!("0".parse::<Prefetch>(), Ok(Prefetch::Fixed(0)));
        assert_eq!("10000".parse::<Prefetch>(), Ok(Prefetch::Fixed(10000)));
        for bad in ["10001", "-1", "", "some", "1.5"] {
            let e = bad.parse::<Prefetch>().unwrap_err();
            assert!(e.contains("give auto, or 0 to 10000"), "{bad}: {e}");
        }
        assert_eq!(Prefetch::Auto.to_string(), "auto");
        assert_eq!(Prefetch::Fixed(7).initial(), 7);
        assert_eq!(Prefetch::Auto.initial(), 0);
    }

    #[test]
    fn nothing_measured_means_no_prefetch() {
        let a = AutoPrefetch::new(10);
        assert_eq!(a.target(None), 0);
        assert_eq!(a.due(None, Instant::now()), None);
    }

    #[test]
    fn short_tasks_get_twice_the_capacity_and_long_ones_none() {
        let mut a = AutoPrefetch::new(10);
        a.observe(Duration::from_micros(30));
        assert_eq!(a.target(None), 20);
        let mut a = AutoPrefetch::new(10);
        a.observe(ms(10));
        assert_eq!(
            a.target(None),
            20,
            "10 ms at 10 slots: 50 would wait ≤ 50 ms"
        );
        let mut a = AutoPrefetch::new(10);
        a.observe(ms(100));
        assert_eq!(a.target(None), 5, "100 ms at 10 slots: 5 wait ≤ 50 ms");
        let mut a = AutoPrefetch::new(10);
        a.observe(Duration::from_secs(1));
        assert_eq!(a.target(None), 0);
        let mut a = AutoPrefetch::new(1);
        a.observe(ms(60));
        assert_eq!(
            a.target(None),
            0,
            "one slot of 60 ms: a prefetched task waits 60 ms"
        );
    }

    #[test]
    fn one_slow_attempt_in_the_window_turns_it_off_until_it_leaves() {
        let mut a = AutoPrefetch::new(10);
        for _ in 0..AUTO_WINDOW {
            a.observe(ms(1));
        }
        assert_eq!(a.target(None), 20);
        a.observe(Duration::from_secs(30));
        assert_eq!(a.target(None), 0);
        for _ in 0..AUTO_WINDOW - 1 {
            a.observe(ms(1));
        }
        assert_eq!(a.target(None), 0, "still in the window");
        a.observe(ms(1));
        assert_eq!(a.target(None), 20, "out of the window");
    }

    #[test]
    fn a_long_attempt_still_running_counts_already() {
        let mut a = AutoPrefetch::new(10);
        a.observe(ms(1));
        assert_eq!(a.target(Some(ms(2))), 20);
        assert_eq!(a.target(Some(Duration::from_secs(5))), 0);
    }

    #[test]
    fn changes_are_sent_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut a = AutoPrefetch::new(10);
        a.observe(ms(1));
        assert_eq!(a.due(None, t0), Some(20));
        a.sent(20, true, t0);
        assert_eq!(a.published(), Some(20));
        assert_eq!(a.due(None, t0), None, "the database has it");
        a.observe(Duration::from_secs(2));
        assert_eq!(a.due(None, t0 + ms(10)), None, "sent 10 ms ago");
        assert_eq!(a.due(None, t0 + AUTO_PUBLISH_EVERY), Some(0));
        // A failed send is tried again, not at once.
        a.sent(0, false, t0 + AUTO_PUBLISH_EVERY);
        assert_eq!(a.published(), Some(20));
        assert_eq!(a.due(None, t0 + AUTO_PUBLISH_EVERY + ms(10)), None);
        assert_eq!(a.due(None, t0 + 2 * AUTO_PUBLISH_EVERY), Some(0));
        assert_eq!(
            a.next_send_at(None),
            Some(t0 + 2 * AUTO_PUBLISH_EVERY),
            "the held-back change has a time to be sent"
        );
    }

    #[test]
    fn after_a_reconnect_the_value_is_sent_again() {
        let t0 = Instant::now();
        let mut a = AutoPrefetch::new(10);
        a.observe(ms(1));
        a.sent(20, true, t0);
        assert_eq!(a.next_send_at(None), None);
        a.forget();
        assert_eq!(a.due(None, t0 + AUTO_PUBLISH_EVERY), Some(20));
    }

    #[test]
    fn the_ceiling_is_the_registry_limit() {
        let mut a = AutoPrefetch::new(10_000);
        a.observe(Duration::from_micros(1));
        assert_eq!(a.target(None), PREFETCH_MAX);
    }
}
