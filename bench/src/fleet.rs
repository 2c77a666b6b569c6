//! Real fleet processes for the benchmark, and what /proc says about them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::Client;

/// The provider every worker serves (`--governed`); none when unset.
static WORKER_PROVIDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every worker started from now on serve `provider`.
pub fn serve_provider(provider: &str) {
    let _ = WORKER_PROVIDER.set(provider.to_string());
}

/// An assigner and workers started from the release binaries.
pub struct Fleet {
    children: Vec<Child>,
    pub assigner_pid: Option<u32>,
    pub worker_pids: Vec<u32>,
}

fn spawn(bin: &Path, url: &str, args: &[String]) -> Child {
    command(bin, url, args, "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// A fleet program's command: `DATABASE_URL`, `RUST_LOG=rust_log`, text logs, `args`,
/// no stdin or stdout; it gets SIGTERM when the benchmark dies, so a killed benchmark
/// takes its fleet with it. Standard error is the caller's to set.
pub fn command(bin: &Path, url: &str, args: &[String], rust_log: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(bin);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    cmd.env("DATABASE_URL", url)
        .env("RUST_LOG", rust_log)
        .args(["--log-format", "text"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Starts one worker serving `provider`, as a fleet of its own.
pub fn spawn_worker(
    bin_dir: &Path,
    url: &str,
    name: &str,
    capacity: u32,
    exec: &str,
    provider: &str,
) -> Fleet {
    let args: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--capacity".into(),
        capacity.to_string(),
        "--exec".into(),
        exec.into(),
        "--provider".into(),
        provider.into(),
    ];
    let c = spawn(&bin_dir.join("jr-queue-worker"), url, &args);
    Fleet {
        worker_pids: vec![c.id()],
        children: vec![c],
        assigner_pid: None,
    }
}

impl Fleet {
    /// Starts one assigner (unless `assigner` is false) and `workers` (name, capacity)
    /// running `exec`.
    pub fn start(
        bin_dir: &Path,
        url: &str,
        workers: &[(String, u32)],
        exec: &str,
        assigner: bool,
    ) -> Fleet {
        Fleet::start_with(bin_dir, url, workers, exec, assigner, None)
    }

    /// Like [`Fleet::start`], with each worker's `--prefetch` (`None`: the default,
    /// automatic).
    pub fn start_with(
        bin_dir: &Path,
        url: &str,
        workers: &[(String, u32)],
        exec: &str,
        assigner: bool,
        prefetch: Option<u32>,
    ) -> Fleet {
        let mut children = vec![];
        let mut assigner_pid = None;
        if assigner {
            let c = spawn(
                &bin_dir.join("jr-auto-assigner"),
                url,
                &["--name".into(), "bench-assigner".into()],
            );
            assigner_pid = Some(c.id());
            children.push(c);
        }
        let mut worker_pids = vec![];
        for (name, cap) in workers {
            let mut args: Vec<String> = vec![
                "--name".into(),
                name.clone(),
                "--capacity".into(),
                cap.to_string(),
                "--exec".into(),
                exec.into(),
            ];
            if let Some(p) = prefetch {
                args.extend(["--prefetch".into(), p.to_string()]);
            }
            if let Some(p) = WORKER_PROVIDER.get() {
                args.extend(["--provider".into(), p.clone()]);
            }
            let c = spawn(&bin_dir.join("jr-queue-worker"), url, &args);
            worker_pids.push(c.id());
            children.push(c);
        }
        Fleet {
            children,
            assigner_pid,
            worker_pids,
        }
    }

    /// Waits until every worker (and the assigner) has registered and is online.
    pub async fn wait_ready(&self, client: &Client) {
        let want = self.worker_pids.len() as i64 + i64::from(self.assigner_pid.is_some());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM jr_status WHERE is_online AND status <> 'starting'",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            if n >= want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fleet did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every process id of the fleet.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// SIGTERM to all, then waits for them.
    pub fn stop(mut self) {
        for c in &self.children {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields after the command: state is [0]; utime is field 14 overall -> [11].
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// CPU ticks used by every PostgreSQL server process on this machine.
pub fn postgres_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "postgres")
                .unwrap_or(false)
        })
        .map(cpu_ticks)
        .sum()
}

/// Clock ticks per second of /proc's CPU times (USER_HZ, which Linux fixes at 100 for
/// user space on every mainstream architecture).
pub fn ticks_per_second() -> f64 {
    100.0
}

/// The directory of the running benchmark binary (the release binaries sit beside it).
pub fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}
