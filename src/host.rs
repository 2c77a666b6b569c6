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
///
/// The executable link is the proof. A worker hides it (it is not dumpable, so that the
/// programs it runs cannot read its memory or environment), and then a process of the
/// same user may not read the link: the kernel's name for the process (its `comm`, the
/// executable's file name cut to 15 bytes) and the file name in its first argument must
/// both match instead. A process that merely mentions the name in its arguments matches
/// neither.
pub fn is_live_process_of(pid: i32, exe: &str) -> bool {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(_) => exe_name(pid).is_some_and(|n| n == exe),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let comm_ok = crate::procs::stat(pid)
                .is_some_and(|p| p.state != 'Z' && p.comm == truncate_comm(exe));
            let argv0_ok = crate::procs::cmdline(pid)
                .and_then(|a| a.into_iter().next())
                .is_some_and(|a0| Path::new(&a0).file_name().is_some_and(|f| f == exe));
            comm_ok && argv0_ok
        }
        Err(_) => false,
    }
}

/// A name as the kernel keeps it in `comm`: at most 15 bytes.
fn truncate_comm(name: &str) -> &str {
    crate::text::truncate_bytes(name, 15)
}

/// Whether `pid` is a live process running the worker executable.
pub fn is_live_worker(pid: i32) -> bool {
    is_live_process_of(pid, WORKER_EXE)
}

/// Whether `pid` is a live process running the assigner executable.
pub fn is_live_assigner(pid: i32) -> bool {
    is_live_process_of(pid, ASSIGNER_EXE)
}
