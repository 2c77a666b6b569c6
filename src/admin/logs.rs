//! `jrq logs ID [--follow]`: a task's live output as its worker streamed it
//! (`jr_task_output`, migrations/V12), and with `--follow` what comes next, until the task
//! ends: LISTEN on `jrq_output` wakes it at once, and it polls as well (a notification
//! can be missed across a reconnect, or come from a server that sends none).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::LogsArgs;
use crate::db::tasks::{self, OutputQuery, Stream};
use crate::db::{self, DbConfig};
use crate::error::{Error, Result};
use crate::task::TaskStatus;

/// How often `--follow` polls when no notification comes.
const POLL: Duration = Duration::from_secs(1);
/// Chunks read per query.
const PAGE: i64 = 1000;

/// Exit status of `--follow` when the task completed.
pub const EXIT_COMPLETED: u8 = 0;
/// Exit status of `--follow` when the task failed.
pub const EXIT_FAILED: u8 = 3;
/// Exit status of `--follow` when the task was cancelled.
pub const EXIT_CANCELLED: u8 = 4;

/// Since when: a duration ago (`10m`) or a time (RFC 3339).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(DateTime<Utc>),
}

pub fn parse_since(s: &str) -> std::result::Result<Since, String> {
    if let Ok(t) = crate::validate::parse_timestamp(s) {
        return Ok(Since::At(t));
    }
    crate::validate::parse_duration(s)
        .map(Since::Ago)
        .map_err(|_| format!("'{s}' is neither a duration (e.g. 10m) nor an RFC 3339 time"))
}

/// Prints the output; with `--follow` waits for more until the task ends, and returns the
/// exit status of its outcome.
pub async fn logs(cfg: &DbConfig, client: &Client, args: &LogsArgs) -> Result<u8> {
    let task = tasks::tasks_get_existing(client, args.id).await?;
    let since = args.since.map(|s| match s {
        Since::At(t) => t,
        Since::Ago(d) => Utc::now() - chrono::Duration::from_std(d).unwrap_or_default(),
    });
    let stream = match (args.stdout, args.stderr) {
        (true, false) => Some(Stream::Stdout),
        (false, true) => Some(Stream::Stderr),
        _ => None,
    };
    let mut q = OutputQuery {
        after_seq: 0,
        stream,
        since,
        attempt: args.attempt,
        limit: PAGE,
    };
    let mut out = Printer::new(args.json);
    if !args.follow {
        drain(client, args.id, &mut q, &mut out).await?;
        if out.printed == 0 && !args.json {
            eprintln!("{}", nothing_yet(&task.status));
        }
        return Ok(0);
    }
    // Listen first, then read: nothing written in between is missed.
    let (listener, mut notes) = db::listen::listen(cfg, &[db::CHANNEL_OUTPUT]).await?;
    let id_text = args.id.to_string();
    loop {
        drain(&listener, args.id, &mut q, &mut out).await?;
        let status = tasks::tasks_get_existing(&listener, args.id).await?.status;
        if status.is_finished() {
            // What was written before the end is all there: read it once more.
            drain(&listener, args.id, &mut q, &mut out).await?;
            return Ok(match status {
                TaskStatus::Completed => EXIT_COMPLETED,
                TaskStatus::Cancelled => EXIT_CANCELLED,
                _ => EXIT_FAILED,
            });
        }
        let deadline = tokio::time::Instant::now() + POLL;
        loop {
            match tokio::time::timeout_at(deadline, notes.recv()).await {
                Err(_) => break,
                Ok(None) => {
                    return Err(Error::Db {
                        message: "the connection closed while following the output".into(),
                        sqlstate: None,
                    })
                }
                Ok(Some(n)) if n.payload().split(',').any(|p| p == id_text) => break,
                Ok(Some(_)) => {}
            }
        }
    }
}

fn nothing_yet(status: &TaskStatus) -> String {
    match status {
        TaskStatus::Pending | TaskStatus::Assigned => {
            format!("no output yet: the task is {status} (--follow waits for it)")
        }
        _ => format!(
            "no output kept: the task is {status} (its executor wrote nothing, its worker \
             streams no output (--output-keep 0), or it ran before jrq kept output)"
        ),
    }
}

/// Prints every chunk after `q.after_seq`, page by page.
async fn drain(client: &Client, id: i64, q: &mut OutputQuery, out: &mut Printer) -> Result<()> {
    loop {
        let rows = tasks::output_read(client, id, q).await?;
        let n = rows.len() as i64;
        for r in &rows {
            out.chunk(r)?;
            q.after_seq = r.seq;
        }
        if n < q.limit {
            return Ok(());
        }
    }
}

/// Chunks as they are (to a terminal with control characters shown escaped), with a
/// header where the attempt changes; or as JSON lines.
struct Printer {
    json: bool,
    terminal: bool,
    attempt: Option<i32>,
    printed: usize,
}

impl Printer {
    fn new(json: bool) -> Self {
        use std::io::IsTerminal;
        Printer {
            json,
            terminal: std::io::stdout().is_terminal(),
            attempt: None,
            printed: 0,
        }
    }

    fn chunk(&mut self, r: &tasks::OutputRow) -> Result<()> {
        self.printed += 1;
        if self.json {
            let line = serde_json::to_string(r)
                .map_err(|e| Error::usage(format!("cannot print JSON: {e}")))?;
            crate::process::print_out(&format!("{line}\n"));
            return Ok(());
        }
        if self.attempt != Some(r.attempt) {
            if self.attempt.is_some() {
                crate::process::print_out("\n");
            }
            crate::process::print_out(&format!("==> attempt {} <==\n", r.attempt));
            self.attempt = Some(r.attempt);
        }
        if self.terminal {
            crate::process::print_out(&crate::text::for_terminal(&r.data, true));
        } else {
            crate::process::print_out(&r.data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        assert_eq!(
            parse_since("10m").unwrap(),
            Since::Ago(Duration::from_secs(600))
        );
        assert!(matches!(
            parse_since("2026-12-01T10:00:00Z").unwrap(),
            Since::At(_)
        ));
        assert!(parse_since("soon").is_err());
    }
}
