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

/// Sets up logging for a daemon. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
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
                .try_init();
        }
        LogFormat::Text | LogFormat::Auto => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter())
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .try_init();
        }
    }
}
