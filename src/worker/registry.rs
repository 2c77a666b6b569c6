//! Registration: one live process per worker name. A live holder is refused; a dead one
//! (silent too long, gone from this host, or from an earlier boot) is taken over and its
//! running tasks are put back at once.

use std::time::Duration;

use tokio_postgres::Client;

use super::Worker;
use crate::db::{tasks, workers};
use crate::error::{Error, Result};

/// What to do about the current holder of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nobody holds it.
    Free,
    /// The holder is dead: take over (the reason goes into the rescue events).
    TakeOver(String),
    /// A live process holds it: refuse with this message.
    Refuse(String),
}

/// Who we are, for the decision.
pub(crate) struct Me<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub boot_id: &'a str,
    pub takeover_after: Duration,
}

/// Decides about a holder. `is_live_worker` tells whether a pid on this host is a running
/// worker process.
pub(crate) fn decide(
    me: &Me<'_>,
    holder: Option<&workers::Holder>,
    is_live_worker: impl Fn(i32) -> bool,
) -> Verdict {
    let Some(h) = holder else {
        return Verdict::Free;
    };
    let who = format!(
        "pid {} on host {}",
        h.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        h.host
    );
    if h.kind != "worker" {
        return Verdict::Refuse(format!(
            "the name '{}' is registered to an {} ({who}): choose another worker name",
            me.name, h.kind
        ));
    }
    if !h.is_online {
        return Verdict::TakeOver(format!("previous instance ({who}) had gone offline"));
    }
    let age = h.last_seen_age_s.unwrap_or(f64::INFINITY);
    if age > me.takeover_after.as_secs_f64() {
        return Verdict::TakeOver(format!("previous instance ({who}) silent for {age:.0}s"));
    }
    if h.host == me.host {
        if h.boot_id
            .as_deref()
            .is_some_and(|b| !b.is_empty() && b != me.boot_id)
        {
            return Verdict::TakeOver(format!("previous instance ({who}) ran before a reboot"));
        }
        match h.pid {
            Some(pid) if is_live_worker(pid) => {}
            _ => return Verdict::TakeOver(format!("previous instance ({who}) is gone")),
        }
    }
    Verdict::Refuse(format!(
        "worker name '{}' is held by a live process: {who}, last seen {age:.0}s ago; \
         stop it first (systemctl --user stop jr-queue-worker@{}) or choose another name",
        me.name, me.name
    ))
}

/// Registers the worker in one transaction: lock the name, decide, put back a dead
/// predecessor's running tasks, write the registry row. A refusal changes nothing.
pub(crate) async fn register(w: &Worker, client: &mut Client) -> Result<()> {
    let cfg = &w.cfg;
    let txn = client.transaction().await?;
    let holder = workers::workers_lock(&txn, &cfg.name).await?;
    let me = Me {
        name: &cfg.name,
        host: &w.host,
        boot_id: &w.boot_id,
        takeover_after: cfg.takeover_after,
    };
    let verdict = decide(&me, holder.as_ref(), crate::host::is_live_worker);
    let why = match verdict {
        Verdict::Refuse(msg) => return Err(Error::Conflict(msg)),
        Verdict::Free => "worker restarted: the previous instance died during this attempt".into(),
        Verdict::TakeOver(why) => {
            tracing::info!(worker = %cfg.name, reason = %why, "taking over the worker name");
            format!("worker restarted: {why} during this attempt")
        }
    };
    let rescued =
        tasks::tasks_rescue_worker(&txn, &cfg.name, Some(w.instance), &cfg.name, &why).await?;
    for r in &rescued {
        tracing::warn!(task_id = r.id, to = %r.to_status, "put back a task the previous instance was running");
    }
    let invocation = std::env::var("INVOCATION_ID").ok();
    workers::workers_register(
        &txn,
        &workers::Registration {
            name: &cfg.name,
            host: &w.host,
            pid: std::process::id() as i32,
            instance: w.instance,
            invocation_id: invocation.as_deref(),
            boot_id: &w.boot_id,
            providers: &cfg.providers,
            capacity: cfg.capacity as i32,
            run_id: cfg.run_id,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, pid: i32, online: bool, age: f64) -> workers::Holder {
        workers::Holder {
            kind: "worker".into(),
            host: host.into(),
            pid: Some(pid),
            instance_id: None,
            boot_id: Some("boot1".into()),
            is_online: online,
            last_seen_age_s: Some(age),
        }
    }

    #[test]
    fn decisions() {
        let me = Me {
            name: "jr1",
            host: "h1",
            boot_id: "boot1",
            takeover_after: Duration::from_secs(30),
        };
        let alive = |_| true;
        let dead = |_| false;
        assert_eq!(decide(&me, None, alive), Verdict::Free);
        assert!(matches!(
            decide(&me, Some(&holder("h1", 5, false, 1.0)), alive),
            Verdict::TakeOver(_)
        ));
        assert!(matches!(
            decide(&me, Some(&holder("h2", 5, true, 31.0)), alive),
            Verdict::TakeOver(_)
        ));
        assert!(matches!(
            decide(&me, Some(&holder("h1", 5, true, 1.0)), dead),
            Verdict::TakeOver(_)
        ));
        match decide(&me, Some(&holder("h1", 5, true, 1.0)), alive) {
            Verdict::Refuse(m) => assert!(m.contains("pid 5 on host h1"), "{m}"),
            v => panic!("{v:?}"),
        }
        // Another host, fresh heartbeat: its pid cannot be checked from here.
        assert!(matches!(
            decide(&me, Some(&holder("h2", 5, true, 1.0)), dead),
            Verdict::Refuse(_)
        ));
        let mut rebooted = holder("h1", 5, true, 1.0);
        rebooted.boot_id = Some("boot0".into());
        assert!(matches!(
            decide(&me, Some(&rebooted), alive),
            Verdict::TakeOver(_)
        ));
    }
}
