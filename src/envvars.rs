//! The programs' environment variables. One `jrq.env` feeds every unit, so each daemon's
//! options have variables of their own — `JRQ_WORKER_*`, `JRQ_ASSIGNER_*`,
//! `JRQ_MONITOR_*`, `JRQ_CLEANUP_*`, `JRQ_WEB_*` — and only what is truly shared is
//! shared: `DATABASE_URL` (and libpq's `PG*`), `JRQ_POOL_MODE`, `JRQ_LOG_FORMAT`. The `jrq` CLI reads
//! `JRQ_*` (its options are a person's).
//!
//! The names before this split (`JRQ_POLL_INTERVAL`, `JRQ_CAPACITY`, …, read by every
//! program that had the option) are still read, as the program-specific one when that is
//! not set, with a warning that names the new one: [`adopt_legacy`], then [`warn`].

/// For every option of `cmd` whose variable is `PREFIX` + `REST`, a set `JRQ_` + `REST`
/// (the old name) with no `PREFIX` + `REST` set is copied to the new name. Call it in
/// `main`, before any thread starts and before the options are parsed. Returns
/// (old, new, adopted): `adopted` false when both were set (the new one wins).
pub fn adopt_legacy(cmd: &clap::Command, prefix: &str) -> Vec<(String, String, bool)> {
    adopt_legacy_where(cmd, prefix, |_| true)
}

/// [`adopt_legacy`] for the variables `wanted` says yes to (by their new name).
pub fn adopt_legacy_where(
    cmd: &clap::Command,
    prefix: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(String, String, bool)> {
    let mut found = vec![];
    for arg in cmd.get_arguments() {
        let Some(new) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let Some(rest) = new.strip_prefix(prefix) else {
            continue;
        };
        if !wanted(new) {
            continue;
        }
        let old = format!("JRQ_{rest}");
        let Some(value) = std::env::var_os(&old) else {
            continue;
        };
        let adopted = std::env::var_os(new).is_none();
        if adopted {
            // Before any thread: main calls this first (see above).
            std::env::set_var(new, value);
        }
        found.push((old, new.to_string(), adopted));
    }
    found
}

/// Logs what [`adopt_legacy`] found (after logging is set up).
pub fn warn(found: &[(String, String, bool)]) {
    for (old, new, adopted) in found {
        if *adopted {
            tracing::warn!(old = %old, new = %new, "{old} is read as {new}: name it {new} in jrq.env (this program's own name; the older one is read for now)");
        } else {
            tracing::warn!(old = %old, new = %new, "{old} is ignored: {new} is set too");
        }
    }
}
