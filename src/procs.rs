//! The process table, read from /proc: parents, states, command lines, environments.
//!
//! What another process's /proc files show depends on who asks: a process that made
//! itself non-dumpable (the worker does, see [`crate::worker::executor`]) hides its
//! environment, memory and executable link from processes of the same user; its `stat`
//! and `cmdline` stay readable. Every reader here returns `None` where it may not look.

use std::collections::HashMap;

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `D`, `Z` (exited, not yet reaped), `T`, ...
    pub state: char,
    /// The kernel's name for it: the executable's file name, cut to 15 bytes.
    pub comm: String,
}

/// Parses the text of `/proc/PID/stat`.
pub fn parse_stat(pid: i32, text: &str) -> Option<Proc> {
    // The name (field 2) is in parentheses and may hold spaces or ')': it ends at the
    // last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        state,
        comm,
    })
}

/// One process, if it exists.
pub fn stat(pid: i32) -> Option<Proc> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Every process on the host (those that exit while the table is read are left out).
pub fn all() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .collect()
}

/// Whether `pid` runs (exists and has not exited: a zombie runs nothing).
pub fn is_running(pid: i32) -> bool {
    pid > 0 && stat(pid).is_some_and(|p| p.state != 'Z')
}

fn read_nul_list(path: &str) -> Option<Vec<String>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// A process's arguments (readable for every process of the host).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    read_nul_list(&format!("/proc/{pid}/cmdline"))
}

/// A process's environment as it was started, when we may read it (our own user's
/// processes that did not hide it, or any process for root); `None` otherwise.
pub fn environ(pid: i32) -> Option<HashMap<String, String>> {
    let vars = read_nul_list(&format!("/proc/{pid}/environ"))?;
    Some(
        vars.into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// The pids in `table` that descend from any of `roots` (children, their children, ...),
/// roots not included.
pub fn descendants(table: &[Proc], roots: &[i32]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = vec![];
    let mut todo: Vec<i32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        for &c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            // The table is a snapshot: guard against a pid seen twice.
            if !out.contains(&c) && !roots.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        let p = parse_stat(42, "42 (my (odd) name) S 7 42 42 0 -1").unwrap();
        assert_eq!(p.comm, "my (odd) name");
        assert_eq!(p.state, 'S');
        assert_eq!(p.ppid, 7);
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn trees() {
        let p = |pid, ppid| Proc {
            pid,
            ppid,
            state: 'S',
            comm: String::new(),
        };
        let table = [p(1, 0), p(10, 1), p(11, 10), p(12, 11), p(20, 1), p(13, 10)];
        let mut d = descendants(&table, &[10]);
        d.sort();
        assert_eq!(d, vec![11, 12, 13]);
        assert!(descendants(&table, &[12]).is_empty());
    }

    #[test]
    fn this_process_is_in_the_table() {
        let me = std::process::id() as i32;
        assert!(all().iter().any(|p| p.pid == me));
        assert!(is_running(me));
        assert!(cmdline(me).is_some_and(|a| !a.is_empty()));
    }
}
