//! The worker's own memory cgroup (its systemd unit's, when it runs as one): how the
//! worker tells an executor killed by the kernel's OOM killer — the unit's `MemoryMax`
//! reached — from one killed from outside, and what the limit is.
//!
//! Both cgroup layouts are read: v2 (`memory.events`, `memory.max` under the `0::` path)
//! and v1 (`memory.oom_control`, `memory.limit_in_bytes` under the `memory` controller's
//! path). Outside a memory cgroup, or where the files cannot be read, everything here
//! answers `None` and the worker reports kills as it did before.

use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A memory cgroup's counter and limit files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroup {
    /// The directory of the cgroup (for messages).
    pub dir: PathBuf,
    events: PathBuf,
    limit: PathBuf,
}

impl MemoryCgroup {
    /// This process's memory cgroup, when there is one with readable counters.
    pub fn own() -> Option<MemoryCgroup> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::from_proc(&text, Path::new(CGROUP_ROOT))
    }

    /// The memory cgroup named in a `/proc/PID/cgroup` text, under `root`.
    pub fn from_proc(text: &str, root: &Path) -> Option<MemoryCgroup> {
        let v1 = v1_dir(text, root, "memory").map(|dir| MemoryCgroup {
            events: dir.join("memory.oom_control"),
            limit: dir.join("memory.limit_in_bytes"),
            dir,
        });
        let v2 = v2_dir(text, root).map(|dir| MemoryCgroup {
            events: dir.join("memory.events"),
            limit: dir.join("memory.max"),
            dir,
        });
        v1.into_iter().chain(v2).find(|cg| cg.events.exists())
    }

    /// How many processes of this cgroup the OOM killer has killed so far.
    pub fn oom_kills(&self) -> Option<u64> {
        parse_oom_kill(&std::fs::read_to_string(&self.events).ok()?)
    }

    /// The memory limit in bytes; `None` when unlimited or unreadable.
    pub fn limit(&self) -> Option<u64> {
        parse_limit(&std::fs::read_to_string(&self.limit).ok()?)
    }
}

/// The directory of `controller` for the process whose `/proc/PID/cgroup` text this is:
/// its v1 hierarchy when the controller has one, else the v2 (unified) cgroup.
pub fn controller_dir(text: &str, root: &Path, controller: &str) -> Option<PathBuf> {
    v1_dir(text, root, controller).or_else(|| v2_dir(text, root))
}

/// The `(controllers, path)` of each line of a `/proc/PID/cgroup` text.
fn entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        Some((controllers, path.trim_start_matches('/')))
    })
}

fn v1_dir(text: &str, root: &Path, controller: &str) -> Option<PathBuf> {
    entries(text)
        .find(|(cs, _)| cs.split(',').any(|c| c == controller))
        .map(|(_, path)| root.join(controller).join(path))
}

fn v2_dir(text: &str, root: &Path) -> Option<PathBuf> {
    entries(text)
        .find(|(cs, _)| cs.is_empty())
        .map(|(_, path)| root.join(path))
}

/// The `oom_kill N` line of `memory.events` (v2) or `memory.oom_control` (v1).
pub fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("oom_kill"))
            .then(|| w.next()?.parse().ok())
            .flatten()
    })
}

/// A limit file's value: `max` (v2) or a page-rounded huge number (v1) mean unlimited.
pub fn parse_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    // v1 writes "no limit" as LONG_MAX rounded down to a page.
    (n < (1 << 62)).then_some(n)
}

/// Bytes as an operator writes them in a unit (`MemoryMax=64M`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (suffix, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{suffix}", n / size);
        }
    }
    for (suffix, size) in UNITS {
        if n >= size {
            return format!("{:.1}{suffix}", n as f64 / size as f64);
        }
    }
    format!("{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_layouts() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("memory/app.slice/w.service");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "67108864\n").unwrap();
        let text = "9:name=systemd:/app.slice/w.service\n4:memory:/app.slice/w.service\n\
                    0::/app.slice/w.service\n";
        let cg = MemoryCgroup::from_proc(text, root.path()).unwrap();
        assert_eq!(cg.oom_kills(), Some(2));
        assert_eq!(cg.limit(), Some(64 << 20));

        let v2 = root.path().join("user.slice/w.service");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 3\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        let cg = MemoryCgroup::from_proc("0::/user.slice/w.service\n", root.path()).unwrap();
        assert_eq!(cg.oom_kills(), Some(1));
        assert_eq!(cg.limit(), None, "max is no limit");

        assert_eq!(
            MemoryCgroup::from_proc("0::/elsewhere\n", root.path()),
            None
        );
        assert_eq!(
            controller_dir(text, root.path(), "cpu"),
            Some(root.path().join("app.slice/w.service")),
            "no v1 cpu hierarchy: the unified one"
        );
        assert_eq!(
            controller_dir("3:cpu,cpuacct:/a.slice\n0::/b\n", root.path(), "cpu"),
            Some(root.path().join("cpu/a.slice"))
        );
    }

    #[test]
    fn limits_and_sizes() {
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("max"), None);
        assert_eq!(human_bytes(64 << 20), "64M");
        assert_eq!(human_bytes(2 << 30), "2G");
        assert_eq!(human_bytes(1536 << 20), "1536M");
        assert_eq!(human_bytes(1000), "1000");
        assert_eq!(parse_oom_kill("oom 4\noom_kill 3\n"), Some(3));
        assert_eq!(parse_oom_kill("oom 4\n"), None);
    }
}
