//! The README's first command: `scripts/demo` runs jrq end to end (a private PostgreSQL,
//! the units under a private systemd user manager, a mixed workload) and leaves nothing
//! behind.

mod common;

use std::process::Command;

#[test]
fn the_demo_runs_the_mixed_workload_under_systemd_and_cleans_up() {
    let out = common::Run::from(
        Command::new(common::project_root().join("scripts/demo"))
            .env_remove("DATABASE_URL")
            .output()
            .unwrap(),
    );
    let text = out.ok().to_string();
    for needle in [
        "== private PostgreSQL in ",
        "== private systemd user manager",
        "added 7 task(s)",
        "2 online (",
        "retry_scheduled",
        "Status: \"idle 0/2\"",
        "== the dashboard: http://127.0.0.1:",
        "\"status\":\"ok\"",
        "== done: the demo ran in ",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    // The operators' psql insert and six more succeed; the permanent failure and the
    // timeout fail (the status table's columns are as wide as its longest status).
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in ["completed 6 75%", "failed 2 25%"] {
        assert!(flat.contains(needle), "no {needle:?} in:\n{text}");
    }
    // Nothing left: its directories are gone and no process mentions them.
    for prefix in ["== private PostgreSQL in ", "(XDG_RUNTIME_DIR="] {
        let dir = text
            .lines()
            .find_map(|l| l.split(prefix).nth(1))
            .unwrap()
            .split([' ', ')'])
            .next()
            .unwrap()
            .trim_end_matches("/run");
        assert!(!std::path::Path::new(dir).exists(), "{dir} is still there");
        let left = common::processes_mentioning(dir);
        assert!(left.is_empty(), "processes still run from {dir}: {left:?}");
    }
}
