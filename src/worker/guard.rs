//! The worker as the guardian of the programs its tasks run.
//!
//! - It is not dumpable (`PR_SET_DUMPABLE 0`): a task's program runs as the same user, and
//!   could otherwise read the worker's environment (`DATABASE_URL`, `PGPASSWORD`) from
//!   `/proc/PPID/environ` and its memory from `/proc/PPID/mem`. Programs it starts are
//!   dumpable again (exec resets the flag), so they keep their own core dumps and /proc.
//! - It is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process a task started and
//!   then left (double fork, `setsid`, a daemonising helper) is reparented to the worker,
//!   not to init, so the worker can still find it and end it with its task. Each such
//!   orphan is attributed to its task by the `JR_TASK_ID` and `JR_WORKER_INSTANCE` it
//!   inherited; one that cleared its environment is ended once no task runs.
//! - It reaps those orphans when they exit (the executors themselves are reaped by tokio).
//! - A worker that takes over its name from a dead instance (kill -9, outside systemd)
//!   ends what that instance's tasks left running.
//!
//! Under systemd the unit's cgroup holds all of it anyway; these rules make the same true
//! for a worker started by hand.

use std::collections::BTreeSet;
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use uuid::Uuid;

use crate::procs;

/// The environment variable that names the worker process instance a task's processes
/// belong to.
pub const INSTANCE_VAR: &str = "JR_WORKER_INSTANCE";

/// Pids of the executors running now: tokio waits for these, the guard never does.
static EXECUTORS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn executors() -> std::sync::MutexGuard<'static, BTreeSet<i32>> {
    EXECUTORS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes this process non-dumpable and a child subreaper. Fails only where the kernel
/// lacks the calls.
pub fn protect_this_process() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false)?;
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// Records a running executor (call right after spawning it).
pub fn executor_started(pid: i32) {
    executors().insert(pid);
}

/// Forgets an executor once tokio has waited for it.
pub fn executor_ended(pid: i32) {
    executors().remove(&pid);
}

/// Every process of one task besides its process group: the descendants of its executor
/// (while it runs), and the orphans it left — children of this worker that are not
/// executors and carry the task's id and this worker's instance — with their descendants.
pub fn task_processes(executor: Option<i32>, task_id: i64, instance: Uuid) -> Vec<i32> {
    let me = std::process::id() as i32;
    let table = procs::all();
    let running = executors().clone();
    let (id, inst) = (task_id.to_string(), instance.to_string());
    let mut roots: Vec<i32> = executor.into_iter().collect();
    for p in table.iter().filter(|p| p.ppid == me && p.state != 'Z') {
        if running.contains(&p.pid) {
            continue;
        }
        let env = procs::environ(p.pid).unwrap_or_default();
        if env.get("JR_TASK_ID") == Some(&id) && env.get(INSTANCE_VAR) == Some(&inst) {
            roots.push(p.pid);
        }
    }
    let mut all = procs::descendants(&table, &roots);
    all.extend(roots.into_iter().filter(|p| Some(*p) != executor));
    all
}

/// Sends `sig` to each pid (gone ones are skipped).
pub fn signal_all(pids: &[i32], sig: Signal) {
    for &p in pids {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// Reaps orphans that exited; when no executor runs, also ends the orphans nobody could
/// attribute (their task is over, whichever it was). Returns how many were ended.
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    let running = executors().clone();
    let table = procs::all();
    let mut ended = 0;
    let leftovers: Vec<i32> = table
        .iter()
        .filter(|p| p.ppid == me && !running.contains(&p.pid))
        .map(|p| p.pid)
        .collect();
    if running.is_empty() && !leftovers.is_empty() {
        let mut all = procs::descendants(&table, &leftovers);
        all.extend(&leftovers);
        let live: Vec<i32> = all
            .into_iter()
            .filter(|p| table.iter().any(|t| t.pid == *p && t.state != 'Z'))
            .collect();
        if !live.is_empty() {
            tracing::info!(
                processes = live.len(),
                "ending processes left behind by finished tasks"
            );
            ended = live.len();
            signal_all(&live, Signal::SIGKILL);
        }
    }
    for pid in leftovers {
        // Only orphans: an executor's exit is tokio's to collect.
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    }
    ended
}

/// Ends every process that a task of worker instance `instance` (a dead predecessor of
/// this worker) left running on this host, with its descendants. Returns how many.
pub fn end_processes_of_instance(instance: Uuid) -> usize {
    let me = std::process::id() as i32;
    let inst = instance.to_string();
    let table = procs::all();
    let roots: Vec<i32> = table
        .iter()
        .filter(|p| p.pid != me && p.state != 'Z')
        .filter(|p| procs::environ(p.pid).is_some_and(|env| env.get(INSTANCE_VAR) == Some(&inst)))
        .map(|p| p.pid)
        .collect();
    if roots.is_empty() {
        return 0;
    }
    let mut all = procs::descendants(&table, &roots);
    all.extend(&roots);
    signal_all(&all, Signal::SIGKILL);
    all.len()
}
