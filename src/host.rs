//! Facts about this host and its processes: name, boot id, whether a pid is a live jrq
//! worker. Read from /proc; never from a process-name pattern.

use std::path::Path;

/// The executable name of the worker daemon.
pub const WORKER_EXE: &str = "jr-queue-worker";

/// This host's name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The kernel's id for the current boot; a registry row with another boot id belongs to
/// processes of an earlier boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The file name of a process's executable, if the process exists and we may look.
pub fn exe_name(pid: i32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = link.file_name()?.to_string_lossy().into_owned();
    // A replaced binary shows as "name (deleted)".
    Some(name.trim_end_matches(" (deleted)").to_string())
}

/// The executable name of the assigner daemon.
pub const ASSIGNER_EXE: &str = "jr-auto-assigner";

/// Whether `pid` is a live process running the executable named `exe`.
pub fn is_live_process_of(pid: i32, exe: &str) -> bool {
    pid > 0
        && Path::new(&format!("/proc/{pid}")).exists()
        && exe_name(pid).is_some_and(|n| n == exe)
}

/// Whether `pid` is a live process running the worker executable.
pub fn is_live_worker(pid: i32) -> bool {
    is_live_process_of(pid, WORKER_EXE)
}

/// Whether `pid` is a live process running the assigner executable.
pub fn is_live_assigner(pid: i32) -> bool {
    is_live_process_of(pid, ASSIGNER_EXE)
}
