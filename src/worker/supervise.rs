//! One attempt under supervision: the handler, raced against the task's timeout and the
//! worker's stop requests; its end mapped to the transition to write.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use super::executor::{Activity, Handler, StopReason, TaskContext, TaskOutcome};
use crate::db::tasks::Finish;
use crate::error::Error;
use crate::validate::format_duration;

/// A finished attempt, from its supervisor to the worker's loop.
pub(super) struct Done {
    pub task_id: i64,
    pub attempt: i32,
    /// `None`: nothing to write (the lease was lost).
    pub finish: Option<Finish>,
}

/// The backoff before attempt `attempt + 1`: `base * 2^(attempt-1)`, at most `max`, times
/// a random factor in [0.8, 1.2) so that retries of many tasks do not arrive together.
pub fn retry_backoff(attempt: i32, base: Duration, max: Duration) -> Duration {
    let exp = attempt.clamp(1, 31) - 1;
    let raw = base.saturating_mul(1u32 << exp).min(max);
    raw.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// What a supervisor needs to turn a handler's end into a task transition.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub timeout: Duration,
    /// An attempt silent (no output, no progress) this long ends; `None`: never.
    pub idle_timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long a refusing provider is paused when the executor does not say.
    pub provider_backoff: Duration,
}

/// The longest a refusing provider's pause may last, whatever the executor says.
pub const PROVIDER_PAUSE_MAX: Duration = Duration::from_secs(24 * 3600);
/// The shortest: a `JRQ-RETRY-AT` of 0 or in the past must not make the task run and
/// refuse again at once, for ever.
pub const PROVIDER_PAUSE_MIN: Duration = Duration::from_secs(5);

/// Runs one attempt: the handler, raced against the task's timeout and the worker's stop
/// requests; then maps the end to a transition and reports it to the main loop.
pub(super) async fn supervise(
    handler: Arc<dyn Handler>,
    ctx: TaskContext,
    stop: Arc<watch::Sender<Option<StopReason>>>,
    p: Policy,
    activity: Arc<Activity>,
    done: mpsc::UnboundedSender<Done>,
) {
    let (task_id, attempt, max_attempts) = (ctx.id, ctx.attempt, ctx.max_attempts);
    let mut stop_rx = stop.subscribe();
    let fut = AssertUnwindSafe(handler.run(ctx)).catch_unwind();
    tokio::pin!(fut);
    let first = tokio::select! {
        out = &mut fut => Some(out),
        _ = tokio::time::sleep(p.timeout) => {
            stop.send_if_modified(|r| {
                if r.is_none() { *r = Some(StopReason::Timeout); true } else { false }
            });
            None
        }
        idle = idle_for(&activity, p.idle_timeout) => {
            stop.send_if_modified(|r| {
                if r.is_none() { *r = Some(StopReason::Idle(idle)); true } else { false }
            });
            None
        }
        _ = stop_rx.wait_for(|r| r.is_some()) => None,
    };
    let out = match first {
        Some(out) => Some(out),
        // Asked to stop: give the handler the kill grace (and a little) to end.
        None => tokio::time::timeout(p.kill_grace + Duration::from_secs(1), &mut fut)
            .await
            .ok(),
    };
    let out =
        out.map(|r| r.unwrap_or_else(|_| TaskOutcome::Retry("the task handler panicked".into())));
    let reason = *stop.borrow();
    let finish = decide(out, reason, attempt, max_attempts, &p);
    let _ = done.send(Done {
        task_id,
        attempt,
        finish,
    });
}

/// Resolves once the attempt has been silent for `idle` (never without one).
async fn idle_for(activity: &Activity, idle: Option<Duration>) -> Duration {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        let silent = activity.silent_for();
        if silent >= idle {
            return idle;
        }
        tokio::time::sleep(idle - silent).await;
    }
}

/// The failure written instead of an outcome the database refused: the task ends, and
/// its error says what the attempt ended with and why that could not be stored.
pub(super) fn unstorable_outcome(original: &Finish, e: &Error) -> Finish {
    let cause = e.to_string();
    Finish::Failed {
        error: format!(
            "jrq could not store this attempt's outcome ({}): {}",
            original.kind(),
            crate::text::truncate_bytes(&cause, 1000)
        ),
    }
}

/// Maps a handler's outcome and the stop reason (if any) to the transition to write.
fn decide(
    out: Option<TaskOutcome>,
    reason: Option<StopReason>,
    attempt: i32,
    max_attempts: i32,
    p: &Policy,
) -> Option<Finish> {
    let attempt_failed = |error: String| {
        if attempt < max_attempts {
            Finish::RetryLater {
                error,
                backoff: retry_backoff(attempt, p.retry_base, p.retry_max),
            }
        } else {
            Finish::Failed {
                error: format!("{error} (attempt {attempt} of {max_attempts}: no attempts left)"),
            }
        }
    };
    match (out, reason) {
        // Work that finished is kept, whatever happened meanwhile.
        (Some(TaskOutcome::Completed(result)), _) => Some(Finish::Completed { result }),
        (_, Some(StopReason::LeaseLost)) => None,
        (_, Some(StopReason::Cancelled)) => Some(Finish::Cancelled {
            reason: "cancelled while running".into(),
        }),
        (_, Some(StopReason::Shutdown)) => Some(Finish::Released {
            reason: "worker shutting down: given back, attempt not charged".into(),
        }),
        (_, Some(StopReason::Timeout)) => Some(attempt_failed(format!(
            "timed out after {}",
            format_duration(p.timeout)
        ))),
        // Silent is not the same as slow: another attempt may get through.
        (_, Some(r @ StopReason::Idle(_))) => Some(attempt_failed(r.to_string())),
        // Another attempt would spend more of what is over already.
        (_, Some(r @ StopReason::OverBudget { .. })) => Some(Finish::OverBudget {
            error: format!("{r} (not retried)"),
        }),
        (Some(TaskOutcome::Retry(e)), None) => Some(attempt_failed(e)),
        (Some(TaskOutcome::Failed(e)), None) => Some(Finish::Failed { error: e }),
        (Some(TaskOutcome::NotStarted(e)), None) => Some(Finish::NotStarted {
            reason: format!("{e}: given back, attempt not charged"),
        }),
        (Some(TaskOutcome::ProviderRefused { error, retry_at }), None) => {
            let now = chrono::Utc::now();
            let latest = now + chrono::Duration::from_std(PROVIDER_PAUSE_MAX).unwrap_or_default();
            let earliest = now + chrono::Duration::from_std(PROVIDER_PAUSE_MIN).unwrap_or_default();
            let until = retry_at
                .unwrap_or_else(|| {
                    now + chrono::Duration::from_std(p.provider_backoff).unwrap_or_default()
                })
                .clamp(earliest, latest);
            Some(Finish::ProviderRefused {
                reason: format!(
                    "{error}: given back, attempt not charged; provider paused until {}",
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                until,
            })
        }
        (None, None) => Some(attempt_failed("the task handler did not finish".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            timeout: Duration::from_secs(60),
            idle_timeout: None,
            kill_grace: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(100),
            provider_backoff: Duration::from_secs(60),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(10);
        for _ in 0..100 {
            let a1 = retry_backoff(1, b, m);
            let a2 = retry_backoff(2, b, m);
            let a3 = retry_backoff(3, b, m);
            assert!(a1 >= Duration::from_millis(800) && a1 < Duration::from_millis(1200));
            assert!(a2 > a1 && a3 > a2);
            assert!(retry_backoff(30, b, m) < Duration::from_secs(12));
        }
    }

    #[test]
    fn outcomes_map_to_transitions() {
        let p = policy();
        let d = |o, r, a| decide(o, r, a, 3, &p);
        assert_eq!(
            d(
                Some(TaskOutcome::Completed("ok".into())),
                Some(StopReason::Timeout),
                1
            ),
            Some(Finish::Completed {
                result: "ok".into()
            })
        );
        assert!(matches!(
            d(Some(TaskOutcome::Retry("x".into())), None, 1),
            Some(Finish::RetryLater { .. })
        ));
        match d(Some(TaskOutcome::Retry("x".into())), None, 3) {
            Some(Finish::Failed { error }) => assert!(error.contains("no attempts left")),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            d(Some(TaskOutcome::Failed("x".into())), None, 1),
            Some(Finish::Failed { .. })
        ));
        assert_eq!(d(None, Some(StopReason::LeaseLost), 1), None);
        assert!(matches!(
            d(None, Some(StopReason::Cancelled), 1),
            Some(Finish::Cancelled { .. })
        ));
        assert!(matches!(
            d(None, Some(StopReason::Shutdown), 1),
            Some(Finish::Released { .. })
        ));
        // A refusing provider: not a failure, paused as the executor says (at most a day).
        let soon = chrono::Utc::now() + chrono::Duration::seconds(30);
        match d(
            Some(TaskOutcome::ProviderRefused {
                error: "429".into(),
                retry_at: Some(soon),
            }),
            None,
            3,
        ) {
            Some(f @ Finish::ProviderRefused { until, .. }) => {
                assert_eq!(until, soon);
                assert!(!f.is_failure());
            }
            o => panic!("{o:?}"),
        }
        match d(
            Some(TaskOutcome::ProviderRefused {
                error: "quota".into(),
                retry_at: Some(chrono::Utc::now() + chrono::Duration::days(30)),
            }),
            None,
            1,
        ) {
            Some(Finish::ProviderRefused { until, .. }) => {
                assert!(until < chrono::Utc::now() + chrono::Duration::hours(25))
            }
            o => panic!("{o:?}"),
        }
        match d(
            Some(TaskOutcome::Retry("stopped".into())),
            Some(StopReason::Timeout),
            1,
        ) {
            Some(Finish::RetryLater { error, .. }) => {
                assert!(error.starts_with("timed out after 1m"))
            }
            o => panic!("{o:?}"),
        }
    }
}
