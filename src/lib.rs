//! jrq — a Postgres-native task queue and worker fleet supervised by systemd.
//!
//! The programs (`jrq`, and the daemons that arrive with their own issues) are thin
//! binaries in `bins/`; every behaviour lives in this library:
//!
//! - [`db`]: all SQL, one module per table, functions named table-then-verb.
//! - [`task`]: the task state machine and validated input for new tasks.
//! - [`admin`]: the `jrq` admin CLI (options, commands, output).
//! - [`assigner`]: the assigner daemon (`jr-auto-assigner`) and its routing rules.
//! - [`cleanup`]: ending stale local worker processes (`jr-stale-cleanup`).
//! - [`monitor`]: the health monitor (`jr-health-monitor`).
//! - [`worker`]: the worker daemon (`jr-queue-worker`) and its executors.
//! - [`web`]: the dashboard, `/metrics` and `/healthz` (`jr-web`); [`metrics`]: what
//!   `/metrics` reports.
//! - [`error`]: the typed errors every program reports as one clear line.

pub mod admin;
pub mod assigner;
pub mod cgroup;
pub mod cleanup;
pub mod daemon;
pub mod db;
pub mod envvars;
pub mod error;
pub mod host;
pub mod metrics;
pub mod monitor;
pub mod process;
pub mod procs;
mod registry;
pub mod schedule;
pub mod systemd;
pub mod task;
pub mod telemetry;
pub mod text;
pub mod validate;
pub mod web;
pub mod worker;

pub use daemon::shutdown;
pub use error::{Error, Result};
