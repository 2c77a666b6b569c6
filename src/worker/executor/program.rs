//! [`Program`]: a task as an executable and its arguments, started without a shell, in
//! its own process group, supervised to the contract of the [executor module](super):
//! the payload on stdin, progress lines and the tail of stdout, the exit status read as
//! an outcome, and every process it started ended with it.

use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{
    Handler, Reporter, Stream, TaskContext, TaskOutcome, UsageDelta, CHECKPOINT_MAX,
    CHECKPOINT_PREFIX, EXECUTOR_OOM_SCORE_ADJ, EXIT_PROVIDER_REFUSED, EXIT_RETRY, PROGRESS_PREFIX,
    RETRY_AT_PREFIX, TITLE_ENV_MAX, USAGE_PREFIX,
};
use crate::worker::guard;

/// Runs each task as a program (see the module docs for the contract).
#[derive(Debug, Clone)]
pub struct Program {
    pub program: String,
    pub args: Vec<String>,
    /// Time between SIGTERM and SIGKILL when the task must stop.
    pub kill_grace: Duration,
    /// Bytes kept from the end of stdout and stderr.
    pub output_limit: usize,
    /// Stream stdout and stderr into the task's log as they come (`jrq logs`).
    pub live_output: bool,
    /// The worker's memory cgroup, to recognise OOM kills (`None`: not recognised).
    pub memory: Option<crate::cgroup::MemoryCgroup>,
}

impl Handler for Program {
    fn run(&self, ctx: TaskContext) -> BoxFuture<'static, TaskOutcome> {
        let me = self.clone();
        Box::pin(async move { me.run_program(ctx).await })
    }

    fn runs_programs(&self) -> bool {
        true
    }

    fn reports_activity(&self) -> bool {
        true
    }
}

/// `JR_DEADLINE`: now plus the attempt's timeout, in RFC 3339 (UTC, whole seconds).
fn deadline(timeout: std::time::Duration) -> String {
    let now = chrono::Utc::now();
    let t = chrono::Duration::from_std(timeout)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Variables an executor must not inherit: the database address and password, where the
/// password file and the TLS client key are (systemd's socket is scrubbed too, below).
const SCRUBBED_VARS: [&str; 4] = ["DATABASE_URL", "PGPASSWORD", "PGPASSFILE", "PGSSLKEY"];

impl Program {
    async fn run_program(self, mut ctx: TaskContext) -> TaskOutcome {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .env("JR_TASK_ID", ctx.id.to_string())
            .env(
                "JR_TASK_TITLE",
                crate::text::truncate_bytes(&ctx.title, TITLE_ENV_MAX),
            )
            .env(guard::INSTANCE_VAR, ctx.worker_instance.to_string())
            .env("JR_ATTEMPT", ctx.attempt.to_string())
            .env("JR_MAX_ATTEMPTS", ctx.max_attempts.to_string())
            .env(
                "JR_RUN_ID",
                ctx.run_id.map(|r| r.to_string()).unwrap_or_default(),
            )
            .env("JR_PROVIDER", &ctx.provider)
            .env("JR_WORKER", &ctx.worker)
            // When the attempt's time is up (RFC 3339, UTC): SIGTERM comes then, SIGKILL a
            // --kill-grace later; a wrapper saves its state before.
            .env("JR_DEADLINE", deadline(ctx.timeout));
        // The checkpoint an earlier attempt stored: in the environment, and in a file
        // (mode 600, removed when the attempt ends) for programs that prefer one.
        let checkpoint_file = ctx
            .checkpoint
            .as_deref()
            .and_then(|ck| CheckpointFile::write(&ctx, ck));
        match (&ctx.checkpoint, &checkpoint_file) {
            (Some(ck), file) => {
                cmd.env("JR_CHECKPOINT", ck);
                match file {
                    Some(f) => cmd.env("JR_CHECKPOINT_FILE", &f.0),
                    None => cmd.env_remove("JR_CHECKPOINT_FILE"),
                };
            }
            (None, _) => {
                cmd.env_remove("JR_CHECKPOINT")
                    .env_remove("JR_CHECKPOINT_FILE");
            }
        }
        for v in SCRUBBED_VARS
            .iter()
            .chain(crate::systemd::PROTOCOL_VARS.iter())
        {
            cmd.env_remove(v);
        }
        // If the worker itself dies (kill -9), the executor's leader dies with it; and
        // when memory runs out, the executor goes before the worker.
        // SAFETY: prctl, open, write and close are async-signal-safe and allocate
        // nothing (the path and value are static C strings); nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                // The fork inherited the worker's non-dumpable flag, which makes its
                // /proc files root's: its own oom_score_adj could not be opened. exec
                // resets the flag anyway.
                let _ = nix::sys::prctl::set_dumpable(true);
                raise_oom_score_adj();
                Ok(())
            });
        }
        let oom_before = self.memory.as_ref().and_then(|m| m.oom_kills());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.raw_os_error() == Some(nix::libc::E2BIG) => {
                // The task's own data is too large for a process to start with: another
                // worker would fail the same way.
                return TaskOutcome::Failed(format!(
                    "cannot start executor '{}': the task's arguments and environment are \
                     too large ({e})",
                    self.program
                ));
            }
            Err(e) => {
                // This worker's setup or state (a missing program, no file descriptors
                // left), not the task: another worker may succeed, so the task keeps its
                // attempt.
                return TaskOutcome::NotStarted(format!(
                    "this worker cannot start its executor '{}': {e}",
                    self.program
                ));
            }
        };
        let pid = child.id().map(|p| p as i32);
        if let Some(p) = pid {
            guard::executor_started(p);
        }
        let pgid = pid.map(Pid::from_raw);
        let (task_id, instance) = (ctx.id, ctx.worker_instance);
        // The group, and what left it (setsid) or was left behind (a double fork).
        let signal_task = |sig: Signal, executor_alive: bool| {
            signal_group(pgid, sig);
            let exec = if executor_alive { pid } else { None };
            guard::signal_all(&guard::task_processes(exec, task_id, instance), sig);
        };

        let payload = ctx.payload.to_string();
        let mut stdin = child.stdin.take();
        let writer = tokio::spawn(async move {
            if let Some(mut s) = stdin.take() {
                // A program that does not read its input is fine: ignore EPIPE.
                let _ = s.write_all(payload.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        // Invariant: both were set to Stdio::piped() above, and are taken once, here.
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let id = ctx.id;
        let limit = self.output_limit;
        let (live, reporter) = (self.live_output, ctx.reporter());
        let out_reader = tokio::spawn(read_tail(
            stdout,
            limit,
            Stream::Stdout,
            reporter.clone(),
            live,
        ));
        let err_reader = tokio::spawn(read_tail(stderr, limit, Stream::Stderr, reporter, live));

        let status = tokio::select! {
            s = child.wait() => s,
            reason = ctx.stopped() => {
                tracing::info!(task_id = id, reason = %reason, "stopping the task's processes");
                signal_task(Signal::SIGTERM, true);
                match tokio::time::timeout(self.kill_grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        signal_task(Signal::SIGKILL, true);
                        child.wait().await
                    }
                }
            }
        };
        if let Some(p) = pid {
            guard::executor_ended(p);
        }
        // Whatever the program left running goes too: in its group, or orphaned.
        signal_task(Signal::SIGKILL, false);
        guard::reap_orphans();
        let _ = writer.await;
        let grace = Duration::from_secs(2);
        let stdout = match tokio::time::timeout(grace, out_reader).await {
            Ok(Ok(t)) => t,
            _ => String::new(),
        };
        let stderr = match tokio::time::timeout(grace, err_reader).await {
            Ok(Ok(t)) => t,
            _ => String::new(),
        };
        drop(checkpoint_file);
        let status = match status {
            Ok(s) => s,
            Err(e) => return TaskOutcome::Retry(format!("cannot wait for the executor: {e}")),
        };
        let oom = match (&self.memory, oom_before) {
            (Some(m), Some(before)) if m.oom_kills().is_some_and(|after| after > before) => {
                Some(m.limit())
            }
            _ => None,
        };
        classify(status, stdout, stderr, oom)
    }
}

/// Raises this (forked, not yet exec'd) process's `oom_score_adj`. Best effort: an
/// already higher value cannot be lowered without privilege, and that is fine.
fn raise_oom_score_adj() {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    if let Ok(fd) = open(c"/proc/self/oom_score_adj", OFlag::O_WRONLY, Mode::empty()) {
        let _ = nix::unistd::write(&fd, EXECUTOR_OOM_SCORE_ADJ.to_bytes());
    }
}

fn signal_group(pgid: Option<Pid>, sig: Signal) {
    if let Some(p) = pgid {
        // ESRCH: the group is already gone.
        let _ = killpg(p, sig);
    }
}

/// Maps an exit status to an outcome (the contract in the module docs). `oom` is set
/// when the OOM killer killed a process of the worker's cgroup during the attempt, with
/// the cgroup's limit when it has one.
fn classify(
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    oom: Option<Option<u64>>,
) -> TaskOutcome {
    use std::os::unix::process::ExitStatusExt;
    let detail = |what: String| {
        let e = stderr.trim_end();
        if e.is_empty() {
            what
        } else {
            format!("{what}: {e}")
        }
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => TaskOutcome::Completed(stdout),
        (Some(EXIT_RETRY), _) => TaskOutcome::Retry(detail(format!(
            "executor asked for a retry (exit {EXIT_RETRY})"
        ))),
        (Some(EXIT_PROVIDER_REFUSED), _) => TaskOutcome::ProviderRefused {
            error: detail(format!(
                "the provider refused (exit {EXIT_PROVIDER_REFUSED}: rate-limited or out of quota)"
            )),
            retry_at: stdout
                .lines()
                .rev()
                .find_map(|l| parse_retry_at(l, chrono::Utc::now())),
        },
        (code, sig) if oom.is_some() => {
            let how = match (code, sig) {
                (_, Some(sig)) => format!("ended the executor ({})", signal_name(sig)),
                (Some(code), _) => {
                    format!(
                        "killed a process of the executor, which then exited with status {code}"
                    )
                }
                (None, None) => "ended the executor".into(),
            };
            let limit = match oom.flatten() {
                Some(l) => format!(
                    "the worker's memory limit ({})",
                    crate::cgroup::human_bytes(l)
                ),
                None => "the memory available to the worker".into(),
            };
            TaskOutcome::Failed(detail(format!(
                "out of memory: the kernel's OOM killer {how}; the task \
                 needs more than {limit} (raise MemoryMax= in a drop-in for the worker's \
                 unit, or make the task use less)"
            )))
        }
        (Some(code), _) => {
            TaskOutcome::Failed(detail(format!("executor exited with status {code}")))
        }
        (None, Some(sig)) => TaskOutcome::Retry(detail(format!(
            "executor was killed by {}",
            signal_name(sig)
        ))),
        (None, None) => TaskOutcome::Retry(detail("executor ended without a status".into())),
    }
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// The longest line held back to see whether it is a control line (a checkpoint's JSON
/// and its prefix); a longer one is output.
const CONTROL_LINE_MAX: usize = CHECKPOINT_MAX + 64;

/// Reads a stream to its end and returns its last `limit` bytes as storable text (see
/// [`crate::text::storable_from_bytes`]); with `live`, what it reads goes to the task's log
/// as it comes. Every read is a sign of life. On stdout, the control lines —
/// `JRQ-PROGRESS`, `JRQ-USAGE`, `JRQ-CHECKPOINT` — are reported and left out of the text
/// and the log.
async fn read_tail(
    mut r: impl AsyncRead + Unpin,
    limit: usize,
    stream: Stream,
    reporter: Reporter,
    live: bool,
) -> String {
    let mut lines = Lines::new(limit, stream == Stream::Stdout);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lines.feed(&buf[..n], &reporter);
        let out = std::mem::take(&mut lines.out);
        if live {
            reporter.output(stream, out);
        }
        reporter.touch();
    }
    lines.finish(&reporter);
    if live {
        reporter.output(stream, std::mem::take(&mut lines.out));
    }
    lines.tail.into_string()
}

/// A stream cut into what is output (kept in the tail, sent to the log) and, on stdout,
/// control lines (reported).
struct Lines {
    tail: Tail,
    /// Output read since the last take.
    out: Vec<u8>,
    /// The start of a line that may be a control line, held until its end.
    held: Vec<u8>,
    /// The current line is output (its start went out already).
    plain: bool,
    control: bool,
}

impl Lines {
    fn new(limit: usize, control: bool) -> Self {
        Lines {
            tail: Tail::new(limit),
            out: Vec::new(),
            held: Vec::new(),
            plain: false,
            control,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.tail.push(bytes);
        self.out.extend_from_slice(bytes);
    }

    fn feed(&mut self, bytes: &[u8], reporter: &Reporter) {
        if !self.control {
            self.emit(bytes);
            return;
        }
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let ends = piece.ends_with(b"\n");
            if self.plain {
                self.emit(piece);
                self.plain = !ends;
                continue;
            }
            self.held.extend_from_slice(piece);
            if ends {
                let line = std::mem::take(&mut self.held);
                if !report_control(&line, reporter) {
                    self.emit(&line);
                }
            } else if !could_be_control(&self.held) || self.held.len() > CONTROL_LINE_MAX {
                // Output (a token stream need not end its lines): out at once.
                let start = std::mem::take(&mut self.held);
                self.emit(&start);
                self.plain = true;
            }
        }
    }

    fn finish(&mut self, reporter: &Reporter) {
        let line = std::mem::take(&mut self.held);
        if !line.is_empty() && !report_control(&line, reporter) {
            self.emit(&line);
        }
    }
}

/// Whether a line's start may still become a control line.
fn could_be_control(start: &[u8]) -> bool {
    const P: &[u8] = b"JRQ-";
    start.starts_with(P) || P.starts_with(start)
}

/// Reports a control line; false when `line` is none (or is malformed: then it stays
/// output, and a warning says why).
fn report_control(line: &[u8], reporter: &Reporter) -> bool {
    // Progress lines were always read with their surroundings trimmed; the lines that
    // carry money and state only at the start of a line.
    if let Some(p) = parse_progress(line) {
        reporter.progress(p as u8);
        return true;
    }
    if !line.starts_with(b"JRQ-") {
        return false;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return false;
    };
    let text = text.trim();
    if let Some(json) = text.strip_prefix(CHECKPOINT_PREFIX) {
        match parse_checkpoint(json) {
            Ok(ck) => {
                reporter.checkpoint(ck);
                return true;
            }
            Err(why) => {
                tracing::warn!(task_id = reporter.task_id, "checkpoint line ignored: {why}");
                return false;
            }
        }
    }
    if let Some(json) = text.strip_prefix(USAGE_PREFIX) {
        match parse_usage(json) {
            Ok((model, delta)) => {
                reporter.usage(model, delta);
                return true;
            }
            Err(why) => {
                tracing::warn!(task_id = reporter.task_id, "usage line ignored: {why}");
                return false;
            }
        }
    }
    false
}

/// A checkpoint line's JSON, as stored: valid JSON of at most [`CHECKPOINT_MAX`] bytes
/// that PostgreSQL's jsonb accepts.
pub fn parse_checkpoint(json: &str) -> Result<String, String> {
    let json = json.trim();
    if json.len() > CHECKPOINT_MAX {
        return Err(format!(
            "{} bytes, more than the {} a checkpoint may hold",
            json.len(),
            CHECKPOINT_MAX
        ));
    }
    serde_json::from_str::<serde_json::Value>(json).map_err(|e| format!("not JSON ({e})"))?;
    if json.contains("\\u0000") {
        return Err("it holds \\u0000, which PostgreSQL's jsonb cannot store".into());
    }
    Ok(json.to_string())
}

/// Most tokens one usage line may add (more is taken as this): sums stay far from
/// overflowing a bigint whatever an executor prints.
pub const USAGE_TOKENS_MAX: u64 = 1_000_000_000_000;

/// A usage line's JSON: `{"model": …, "input_tokens": …, "output_tokens": …,
/// "cost_usd": …}`, any subset (other keys are ignored).
pub fn parse_usage(json: &str) -> Result<(String, UsageDelta), String> {
    #[derive(serde::Deserialize)]
    struct Line {
        model: Option<String>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        cost_usd: Option<f64>,
    }
    let l: Line = serde_json::from_str(json.trim()).map_err(|e| {
        format!(
            "not a usage object ({e}): expected {{\"model\": …, \"input_tokens\": N, \"output_tokens\": N, \"cost_usd\": X}}"
        )
    })?;
    let tokens = |n: Option<u64>| n.unwrap_or(0).min(USAGE_TOKENS_MAX) as i64;
    let cost = match l.cost_usd {
        None => 0,
        Some(c) if c.is_finite() && (0.0..=1e9).contains(&c) => (c * 1e6).round() as i64,
        Some(c) => return Err(format!("cost_usd {c} is not between 0 and 1e9")),
    };
    let model = l.model.unwrap_or_default();
    Ok((
        crate::text::truncate_bytes(&model, 200).replace('\0', ""),
        UsageDelta {
            input_tokens: tokens(l.input_tokens),
            output_tokens: tokens(l.output_tokens),
            cost_microusd: cost,
        },
    ))
}

/// The checkpoint given to an attempt as a file (`JR_CHECKPOINT_FILE`), removed when the
/// attempt ends.
struct CheckpointFile(std::path::PathBuf);

impl CheckpointFile {
    fn write(ctx: &TaskContext, json: &str) -> Option<CheckpointFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!(
            "jrq-checkpoint-{}-{}-{}.json",
            ctx.id, ctx.attempt, ctx.worker_instance
        ));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(json.as_bytes()));
        match written {
            Ok(()) => Some(CheckpointFile(path)),
            Err(e) => {
                tracing::warn!(task_id = ctx.id, path = %path.display(), error = %e,
                    "cannot write the checkpoint file: JR_CHECKPOINT_FILE is not set");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

impl Drop for CheckpointFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Parses a `JRQ-RETRY-AT: <RFC 3339 time | seconds>` line (seconds from `now`).
pub fn parse_retry_at(
    line: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let v = line.trim().strip_prefix(RETRY_AT_PREFIX)?.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    let secs: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
    // More than a day is clamped later; here only what can be represented.
    let ms = (secs.min(1e9) * 1000.0) as i64;
    Some(now + chrono::Duration::milliseconds(ms))
}

/// Parses a `JRQ-PROGRESS: N` line.
pub fn parse_progress(line: &[u8]) -> Option<i16> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let n = text
        .strip_prefix(PROGRESS_PREFIX)?
        .trim()
        .trim_end_matches('%');
    let v: i16 = n.trim().parse().ok()?;
    (0..=100).contains(&v).then_some(v)
}

/// The last `limit` bytes of a stream.
struct Tail {
    buf: Vec<u8>,
    limit: usize,
    cut: bool,
}

impl Tail {
    fn new(limit: usize) -> Self {
        Tail {
            buf: Vec::new(),
            limit: limit.max(1),
            cut: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.limit {
            let drop = self.buf.len() - self.limit;
            self.buf.drain(..drop);
            self.cut = true;
        }
    }

    fn into_string(mut self) -> String {
        if self.buf.len() > self.limit {
            let drop = self.buf.len() - self.limit;
            self.buf.drain(..drop);
            self.cut = true;
        }
        if self.cut {
            // The cut may have split a character: start at the next whole one.
            let partial = self.buf.iter().take(3).take_while(|b| **b & 0xC0 == 0x80);
            let n = partial.count();
            self.buf.drain(..n);
        }
        // What PostgreSQL cannot store (NUL, invalid UTF-8) is replaced, and said so.
        let text = crate::text::storable_from_bytes(&self.buf);
        if self.cut {
            format!("…{text}")
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_at_lines() {
        let now = chrono::Utc::now();
        assert_eq!(
            parse_retry_at("JRQ-RETRY-AT: 30", now),
            Some(now + chrono::Duration::seconds(30))
        );
        assert_eq!(
            parse_retry_at("JRQ-RETRY-AT: 2026-12-01T15:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T15:00:00+00:00"
        );
        assert_eq!(parse_retry_at("JRQ-RETRY-AT: soon", now), None);
        assert_eq!(parse_retry_at("JRQ-RETRY-AT: -5", now), None);
        assert_eq!(parse_retry_at("retry at 30", now), None);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress(b"JRQ-PROGRESS: 42\n"), Some(42));
        assert_eq!(parse_progress(b"JRQ-PROGRESS:100%"), Some(100));
        assert_eq!(parse_progress(b"JRQ-PROGRESS: 101"), None);
        assert_eq!(parse_progress(b"progress 5"), None);
    }

    #[test]
    fn tails_keep_the_end() {
        let mut t = Tail::new(5);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.into_string(), "…world");
        let mut t = Tail::new(50);
        t.push(b"short");
        assert_eq!(t.into_string(), "short");
        // A cut through a character is not reported as invalid UTF-8.
        let mut t = Tail::new(3);
        t.push("ééé".as_bytes());
        assert_eq!(t.into_string(), "…é");
    }

    #[test]
    fn exit_statuses() {
        use std::os::unix::process::ExitStatusExt;
        let st = |raw| std::process::ExitStatus::from_raw(raw);
        assert_eq!(
            classify(st(0), "out".into(), String::new(), None),
            TaskOutcome::Completed("out".into())
        );
        assert!(matches!(
            classify(st(75 << 8), String::new(), String::new(), None),
            TaskOutcome::Retry(_)
        ));
        match classify(st(3 << 8), String::new(), "bad input\n".into(), None) {
            TaskOutcome::Failed(e) => assert_eq!(e, "executor exited with status 3: bad input"),
            o => panic!("{o:?}"),
        }
        match classify(st(9), String::new(), String::new(), None) {
            TaskOutcome::Retry(e) => assert!(e.contains("SIGKILL"), "{e}"),
            o => panic!("{o:?}"),
        }
        // The OOM killer counted a kill while the task ran: a failure that names the limit.
        match classify(st(9), String::new(), String::new(), Some(Some(64 << 20))) {
            TaskOutcome::Failed(e) => assert_eq!(
                e,
                "out of memory: the kernel's OOM killer ended the executor (SIGKILL); the task \
                 needs more than the worker's memory limit (64M) (raise MemoryMax= in a drop-in \
                 for the worker's unit, or make the task use less)"
            ),
            o => panic!("{o:?}"),
        }
        match classify(st(137 << 8), String::new(), "Killed\n".into(), Some(None)) {
            TaskOutcome::Failed(e) => {
                assert!(e.contains("exited with status 137"), "{e}");
                assert!(e.contains("the memory available to the worker"), "{e}");
                assert!(e.ends_with(": Killed"), "{e}");
            }
            o => panic!("{o:?}"),
        }
        // A success is a success and a retry request a retry, whatever else the OOM
        // killer did meanwhile.
        assert_eq!(
            classify(st(0), "out".into(), String::new(), Some(None)),
            TaskOutcome::Completed("out".into())
        );
        assert!(matches!(
            classify(st(75 << 8), String::new(), String::new(), Some(None)),
            TaskOutcome::Retry(_)
        ));
    }
}
