//! Registration in `jr_status`: one live process per name. A live holder is refused; a
//! dead one (silent too long, gone from this host, or from an earlier boot) is taken over.

use std::time::Duration;

use tokio_postgres::Transaction;

use crate::db::workers;
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
    /// `worker` or `assigner`.
    pub kind: &'a str,
    /// How a person stops the holder, for the refusal message.
    pub stop_hint: &'a str,
    pub host: &'a str,
    pub boot_id: &'a str,
    pub takeover_after: Duration,
}

/// Decides about a holder. `is_live` tells whether a pid on this host is a running
/// process of our kind.
pub(crate) fn decide(
    me: &Me<'_>,
    holder: Option<&workers::Holder>,
    is_live: impl Fn(i32) -> bool,
) -> Verdict {
    let Some(h) = holder else {
        return Verdict::Free;
    };
    let who = format!(
        "pid {} on host {}",
        h.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        h.host
    );
    if h.kind != me.kind {
        return Verdict::Refuse(format!(
            "the name '{}' is registered to a {} ({who}): choose another name",
            me.name, h.kind
        ));
    }
    if !h.is_online {
        return Verdict::TakeOver(format!("previous instance ({who}) had gone offline"));
    }
    let age = h.last_seen_age_s.unwrap_or(f64::INFINITY);
    if age < -60.0 {
        // A heartbeat a minute or more in the future was never written by a holder (every
        // heartbeat is the database's now()): a hand-made row, not a live process.
        return Verdict::TakeOver(format!(
            "previous holder ({who}) has a heartbeat in the future"
        ));
    }
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
            Some(pid) if is_live(pid) => {}
            _ => return Verdict::TakeOver(format!("previous instance ({who}) is gone")),
        }
    }
    Verdict::Refuse(format!(
        "{} name '{}' is held by a live process: {who}, last seen {age:.0}s ago; \
         stop it first ({}) or choose another name",
        me.kind, me.name, me.stop_hint
    ))
}

/// Locks the name and decides; on a refusal nothing was written. The caller writes the
/// registration (which, for a worker, puts back a dead predecessor's tasks) in the same
/// transaction, then commits.
pub(crate) async fn claim_name(
    txn: &Transaction<'_>,
    me: &Me<'_>,
    is_live: impl Fn(i32) -> bool,
) -> Result<Verdict> {
    let holder = workers::workers_lock(txn, me.name).await?;
    match decide(me, holder.as_ref(), is_live) {
        Verdict::Refuse(msg) => Err(Error::Conflict(msg)),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(host: &str, pid: i32, online: bool, age: f64) -> workers::Holder {
        workers::Holder {
            kind: "worker".into(),
            host: host.into(),
            pid: Some(pid),
            boot_id: Some("boot1".into()),
            is_online: online,
            last_seen_age_s: Some(age),
        }
    }

    #[test]
    fn decisions() {
        let me = Me {
            name: "jr1",
            kind: "worker",
            stop_hint: "systemctl --user stop jr-queue-worker@jr1",
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
