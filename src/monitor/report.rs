//! The monitor's report as people read it (text), as Prometheus reads it (a text file for
//! node_exporter's textfile collector), and the atomic write of that file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::Report;
use crate::error::{Error, Result};
use crate::metrics::names;
use crate::validate::format_duration;

/// The report as people read it.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    if r.skipped {
        return "another health monitor is running: this round skipped\n".into();
    }
    let counts: Vec<String> = r.tasks.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "tasks:      {}", counts.join(", "));
    let _ = writeln!(
        s,
        "pending:    oldest {}",
        r.oldest_pending_s
            .map(|a| format_duration(Duration::from_secs_f64(a)))
            .unwrap_or_else(|| "none waiting".into())
    );
    if let Some((id, age)) = r.oldest_approval {
        let _ = writeln!(
            s,
            "approvals:  {} overdue, the oldest task {id} for {}",
            r.approvals_overdue,
            format_duration(Duration::from_secs_f64(age))
        );
    }
    let _ = writeln!(
        s,
        "failures:   {} failed, {} completed in the window, rate {}",
        r.failed_in_window,
        r.completed_in_window,
        r.failure_rate
            .map(|x| format!("{:.1} %", x * 100.0))
            .unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        s,
        "workers:    {} online, {} offline, {} circuit open; assigners alive {}",
        r.workers_online, r.workers_offline, r.workers_circuit_open, r.assigners_alive
    );
    let _ = writeln!(
        s,
        "actions:    {} rescued, {} overdue failed, {} marked offline, {} unassigned, {} restarted, {} runs finished",
        r.rescued.len(),
        r.overdue_failed.len(),
        r.marked_offline.len(),
        r.unassigned,
        r.restarts.iter().filter(|x| x.ok).count(),
        r.runs_finished.len()
    );
    for x in &r.restarts {
        let _ = writeln!(s, "restart:    {}: {}", x.unit, x.detail);
    }
    if let Some(m) = r.health_median {
        let low: Vec<String> = r
            .unhealthy_workers
            .iter()
            .map(|(n, h)| format!("{n} {h}"))
            .collect();
        let _ = writeln!(
            s,
            "worker health: median {m:.0}{}",
            if low.is_empty() {
                String::new()
            } else {
                format!(", far below it: {}", low.join(", "))
            }
        );
    }
    let _ = writeln!(
        s,
        "postgres:   notification queue {:.1} %, {} dead rows in jr_work_queue",
        r.notify_queue_usage * 100.0,
        r.dead_tuples
    );
    if let Some(h) = &r.horizon {
        let _ = writeln!(s, "horizon:    held longest by {}", h.describe());
    }
    if r.alerts.is_empty() {
        let _ = writeln!(
            s,
            "health:     ok{}",
            if r.was_unhealthy { " (recovered)" } else { "" }
        );
    } else {
        if let Some(t) = r.unhealthy_since {
            let _ = writeln!(
                s,
                "health:     unhealthy since {}",
                crate::text::local_time(t, "%Y-%m-%d %H:%M:%S")
            );
        }
        for a in &r.alerts {
            let _ = writeln!(s, "ALERT:      {a}");
        }
    }
    s
}

/// The report in Prometheus' text format (for node_exporter's textfile collector).
pub fn render_prometheus(r: &Report) -> String {
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(s, "{name}{labels} {v}");
        }
    };
    let tasks: Vec<(String, f64)> = r
        .tasks
        .iter()
        .map(|(k, v)| (format!("{{status=\"{k}\"}}"), *v as f64))
        .collect();
    gauge(names::TASKS, "Tasks by status.", &tasks);
    gauge(
        names::OLDEST_PENDING,
        "How long the oldest ready pending task has waited.",
        &[(String::new(), r.oldest_pending_s.unwrap_or(0.0))],
    );
    gauge(
        "jrq_vacuum_horizon_age_seconds",
        "How long the oldest holder of this database's vacuum horizon has held it (0: none, \
         or its age is not visible to the monitor's login).",
        &[(
            String::new(),
            r.horizon.as_ref().and_then(|h| h.age_s).unwrap_or(0.0),
        )],
    );
    gauge(
        "jrq_vacuum_horizon_xids",
        "Transactions the oldest holder of this database's vacuum horizon is behind.",
        &[(
            String::new(),
            r.horizon.as_ref().map(|h| h.xid_age as f64).unwrap_or(0.0),
        )],
    );
    gauge(
        "jrq_approvals_overdue",
        "Tasks awaiting approval longer than the monitor's --approval-alert-after.",
        &[(String::new(), r.approvals_overdue as f64)],
    );
    let window = format_duration(Duration::from_secs_f64(r.failure_window_s));
    gauge(
        names::FAILURE_RATIO,
        "Failed / (completed + failed) of the tasks that finished in the window.",
        &r.failure_rate
            .map(|f| vec![(format!("{{window=\"{window}\"}}"), f)])
            .unwrap_or_default(),
    );
    gauge(
        names::WORKERS,
        "Workers by state.",
        &[
            ("{state=\"online\"}".into(), r.workers_online as f64),
            ("{state=\"offline\"}".into(), r.workers_offline as f64),
            (
                "{state=\"circuit_open\"}".into(),
                r.workers_circuit_open as f64,
            ),
        ],
    );
    gauge(
        names::ASSIGNERS_ALIVE,
        "Assigners heartbeating.",
        &[(String::new(), r.assigners_alive as f64)],
    );
    gauge(
        "jrq_monitor_actions",
        "What the last monitor round did.",
        &[
            ("{action=\"rescued\"}".into(), r.rescued.len() as f64),
            (
                "{action=\"overdue_failed\"}".into(),
                r.overdue_failed.len() as f64,
            ),
            (
                "{action=\"marked_offline\"}".into(),
                r.marked_offline.len() as f64,
            ),
            ("{action=\"unassigned\"}".into(), r.unassigned as f64),
            ("{action=\"restarted\"}".into(), r.restarts.len() as f64),
        ],
    );
    gauge(
        "jrq_notification_queue_usage_ratio",
        "Share of PostgreSQL's notification queue in use.",
        &[(String::new(), r.notify_queue_usage)],
    );
    gauge(
        "jrq_queue_dead_tuples",
        "Dead row versions in jr_work_queue.",
        &[(String::new(), r.dead_tuples as f64)],
    );
    if let Some(m) = r.health_median {
        gauge(
            names::HEALTH_MEDIAN,
            "Median health score (0-100) of the alive workers with enough recorded attempts.",
            &[(String::new(), m)],
        );
    }
    gauge(
        "jrq_workers_unhealthy",
        "Alive workers whose health is far below the fleet's median.",
        &[(String::new(), r.unhealthy_workers.len() as f64)],
    );
    gauge(
        "jrq_health_alerts",
        "Thresholds crossed in the last round.",
        &[(String::new(), r.alerts.len() as f64)],
    );
    s
}

/// Writes `text` to `path` atomically: a new temporary file in the same directory, then
/// renamed over `path`. The temporary name is unpredictable and the file is created
/// exclusively without following links (`O_CREAT|O_EXCL|O_NOFOLLOW`), so a link planted
/// in a shared directory (node_exporter's textfile directory often is one) cannot turn
/// the write into an overwrite of another file.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("jrq.prom");
    let suffix: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(16)
        .collect();
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}", tmp.display()), e))?;
    if let Err(e) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("cannot write {}", tmp.display()), e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("cannot replace {}", path.display()), e)
    })
}
