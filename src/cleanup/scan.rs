//! Finding this host's `jr-queue-worker` processes (by executable in /proc, never by a
//! name pattern) and telling which of them use this database.

use std::collections::HashMap;

use serde::Serialize;

use crate::db::{workers, ServerId};
use crate::{host, procs};

/// A `jr-queue-worker` process on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerProcess {
    pub pid: i32,
    pub name: Option<String>,
    /// The run filter as written (may not be a valid id).
    pub run: Option<String>,
    /// The server and database its environment points at; `None` when its environment
    /// is hidden (see `env_hidden`) or holds no valid address.
    #[serde(skip)]
    pub server: Option<ServerId>,
    /// Its environment could not be read: a worker makes itself non-dumpable, which hides
    /// its environment from other processes of its user (root still sees it).
    pub env_hidden: bool,
}

/// The value of `--flag v` or `--flag=v` in a command line.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v.to_string());
        }
    }
    None
}

/// Reads `--name`, `--run` (either `--x v` or `--x=v`) from the arguments, falling back to
/// `JRQ_WORKER_NAME`, `JRQ_WORKER_RUN`, the older `JRQ_NAME`, `JRQ_RUN`, and
/// `RUN_FILTER_ID` from the environment, as the worker does (its environment as it
/// started: the worker reads an older name as the new one without changing what
/// /proc shows).
pub fn parse_worker_args(
    args: &[String],
    env: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let opt = |flag: &str| flag_value(args, flag);
    let nonempty = |v: Option<&String>| v.filter(|s| !s.trim().is_empty()).cloned();
    let name = opt("--name")
        .or_else(|| nonempty(env.get("JRQ_WORKER_NAME")))
        .or_else(|| nonempty(env.get("JRQ_NAME")));
    let run = opt("--run")
        .or_else(|| nonempty(env.get("JRQ_WORKER_RUN")))
        .or_else(|| nonempty(env.get("JRQ_RUN")))
        .or_else(|| nonempty(env.get("RUN_FILTER_ID")));
    (name, run)
}

/// This host's worker processes (by executable), except this process itself.
pub fn scan_processes() -> Vec<WorkerProcess> {
    let me = std::process::id() as i32;
    let mut out: Vec<WorkerProcess> = procs::all()
        .into_iter()
        .filter(|p| p.pid != me && p.state != 'Z' && host::is_live_worker(p.pid))
        .map(|p| {
            let args = procs::cmdline(p.pid).unwrap_or_default();
            let env = procs::environ(p.pid).filter(|e| !e.is_empty());
            let env_hidden = env.is_none();
            let env = env.unwrap_or_default();
            let (name, run) = parse_worker_args(&args, &env);
            let url =
                flag_value(&args, "--database-url").or_else(|| env.get("DATABASE_URL").cloned());
            let server = (!env_hidden)
                .then(|| ServerId::from_env(url.as_deref(), &|k| env.get(k).cloned()).ok())
                .flatten();
            WorkerProcess {
                pid: p.pid,
                name,
                run,
                server,
                env_hidden,
            }
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// A worker process not judged: it uses another database, or nothing tells which.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub pid: i32,
    pub name: Option<String>,
    pub why: String,
}

/// Splits the host's worker processes into those of this database and the rest. A
/// process's own environment, when readable, decides — compared by server and database
/// rather than as text (`localhost` is `127.0.0.1`), and not overruled by a registry row
/// (which anyone with write access to the table could forge). A process whose environment
/// is hidden is this database's when it is registered here (this host, its pid, and the
/// name its command line gives); otherwise it is not judged. Names and runs the command
/// line does not give come from the registry.
pub fn this_databases(
    all: Vec<WorkerProcess>,
    own: &ServerId,
    registered: &[workers::HostWorker],
) -> (Vec<WorkerProcess>, Vec<Skipped>) {
    let mut ours = vec![];
    let mut skipped = vec![];
    for mut p in all {
        let row = registered
            .iter()
            .find(|r| r.pid == p.pid && p.name.as_ref().is_none_or(|n| *n == r.name));
        let why = match (&p.server, row) {
            (Some(s), _) if !s.same_database(own) => Some("uses another database".to_string()),
            (Some(_), _) | (None, Some(_)) => None,
            (None, None) if p.env_hidden => Some(
                "its environment is hidden and no worker of this database is registered \
                 with its pid and name (another database, or still starting)"
                    .to_string(),
            ),
            (None, None) => Some("its environment holds no valid database address".to_string()),
        };
        match why {
            Some(why) => skipped.push(Skipped {
                pid: p.pid,
                name: p.name.clone(),
                why,
            }),
            None => {
                if let Some(row) = row {
                    p.name.get_or_insert_with(|| row.name.clone());
                    if p.run.is_none() {
                        p.run = row.run_id.map(|r| r.to_string());
                    }
                }
                ours.push(p);
            }
        }
    }
    (ours, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn worker_arguments() {
        let env = HashMap::new();
        assert_eq!(
            parse_worker_args(&v(&["jr-queue-worker", "--name", "a", "--run=r1"]), &env),
            (Some("a".into()), Some("r1".into()))
        );
        let env: HashMap<String, String> = [
            ("JRQ_NAME".to_string(), "b".to_string()),
            ("RUN_FILTER_ID".to_string(), "r2".to_string()),
        ]
        .into();
        assert_eq!(
            parse_worker_args(&v(&["jr-queue-worker", "--exec", "noop"]), &env),
            (Some("b".into()), Some("r2".into()))
        );
        assert_eq!(parse_worker_args(&v(&["x"]), &HashMap::new()), (None, None));
        // The program's own names first, then the older ones.
        let env: HashMap<String, String> = [
            ("JRQ_WORKER_NAME".to_string(), "c".to_string()),
            ("JRQ_NAME".to_string(), "old".to_string()),
            ("JRQ_WORKER_RUN".to_string(), "r3".to_string()),
            ("RUN_FILTER_ID".to_string(), "r2".to_string()),
        ]
        .into();
        assert_eq!(
            parse_worker_args(&v(&["jr-queue-worker"]), &env),
            (Some("c".into()), Some("r3".into()))
        );
    }
}
