//! Logging setup shared by the programs.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Plain-text logs on stderr at `default_level` (overridden by `RUST_LOG`), without ANSI
/// colours unless stderr is a terminal.
pub fn init_stderr(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
