//! Logging setup shared by the programs: journald under systemd, plain text on stderr
//! otherwise, JSON on request. Never logs the database password: addresses are logged
//! only through `db::describe_target`.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// journald when systemd connected stderr to the journal, else plain text.
    #[default]
    Auto,
    /// Plain text on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// The systemd journal (fields such as TASK_ID, RUN_ID, WORKER are searchable).
    Journald,
}

/// Plain-text logs on stderr at `default_level` (overridden by `RUST_LOG`), without ANSI
/// colours unless stderr is a terminal.
pub fn init_stderr(default_level: &str) {
    init(LogFormat::Text, default_level);
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` names its
/// device and inode (systemd.exec(5)). A process that inherited the variable but writes
/// elsewhere — a unit with `StandardError=file:`, a program started from a unit with its
/// stderr piped — logs as text to its stderr.
pub fn stderr_is_journal() -> bool {
    let var = std::env::var("JOURNAL_STREAM").ok();
    var.is_some()
        && nix::sys::stat::fstat(std::io::stderr())
            .is_ok_and(|st| names_stream(var.as_deref(), st.st_dev, st.st_ino))
}

/// Whether a `JOURNAL_STREAM` value ("DEVICE:INODE") names this device and inode.
fn names_stream(var: Option<&str>, dev: u64, ino: u64) -> bool {
    var.and_then(|v| v.split_once(':'))
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// Sets up logging for a daemon. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        f => f,
    };
    let ansi = std::io::stderr().is_terminal();
    match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer.with_field_prefix(None))
                    .try_init();
            }
            Err(_) => init(LogFormat::Text, default_level),
        },
        LogFormat::Json => {
            let _ = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .log_internal_errors(false)
                .try_init();
        }
        LogFormat::Text | LogFormat::Auto => {
            // A log line that cannot be written (stderr's reader went away) is dropped:
            // reporting that error on stderr again would panic, and a daemon must not stop
            // because nobody reads its log.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .log_internal_errors(false)
                .try_init();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_only_when_stderr_is_the_named_stream() {
        assert!(names_stream(Some("64769:1234"), 64769, 1234));
        assert!(
            !names_stream(Some("64769:1235"), 64769, 1234),
            "another stream"
        );
        assert!(!names_stream(None, 64769, 1234));
        assert!(!names_stream(Some("garbage"), 64769, 1234));
        assert!(!names_stream(Some(""), 0, 0));
    }
}
