//! The cleanup's report as people read it.

use std::fmt::Write as _;

use super::{CleanupReport, Verdict};

/// The report as people read it (like the operators' own script).
pub fn render_text(r: &CleanupReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Scanning this host's jr-queue-worker processes ({})...",
        r.host
    );
    let _ = writeln!(s, "Found {} worker process(es)", r.findings.len());
    for f in &r.findings {
        let name = f.process.name.as_deref().unwrap_or("?");
        let (tag, reason) = match &f.verdict {
            Verdict::Ok(x) => ("ok   ", x),
            Verdict::Stale(x) => ("STALE", x),
        };
        let _ = write!(s, "  {tag} pid {} worker {name}: {reason}", f.process.pid);
        if let Some(e) = &f.ended {
            let _ = write!(s, " -> {e}");
        }
        let _ = writeln!(s);
    }
    for x in &r.skipped {
        let name = x.name.as_deref().unwrap_or("?");
        let _ = writeln!(s, "  skip  pid {} worker {name}: {}", x.pid, x.why);
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(
            s,
            "Not judged: {} worker process(es) of another database (or unknown)",
            r.skipped.len()
        );
    }
    let stale = r
        .findings
        .iter()
        .filter(|f| matches!(f.verdict, Verdict::Stale(_)))
        .count();
    let _ = writeln!(s, "Found {stale} stale worker(s)");
    for x in &r.registry {
        let verb = match (r.force, x.done) {
            (true, true) => format!("marked offline, {} task(s) released", x.tasks_released),
            (true, false) => "changed meanwhile: left alone".into(),
            (false, _) => "would be marked offline and its tasks released".into(),
        };
        let _ = writeln!(s, "  registry: worker '{}' {}: {verb}", x.name, x.why);
    }
    if !r.force && (stale > 0 || !r.registry.is_empty()) {
        let _ = writeln!(s, "Dry run: nothing was changed; run with --force to act");
    } else if r.force {
        let _ = writeln!(s, "Cleanup complete");
    }
    s
}
