//! systemd's notification protocol (`Type=notify`, `WatchdogSec=`). Outside systemd
//! (`NOTIFY_SOCKET` unset) every call is a silent no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Environment variables of the protocol; executors must not inherit them.
pub const PROTOCOL_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// A status line as the protocol can carry it: it is one `KEY=value` line of a datagram,
/// so a newline in it (from a task title) would add a line of its own — `WATCHDOG=trigger`,
/// `STOPPING=1` — that systemd obeys. Control characters are shown escaped.
fn one_line(status: &str) -> std::borrow::Cow<'_, str> {
    crate::text::for_terminal(status, false)
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// `STATUS=...`: what `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// `WATCHDOG=1`. Call only from the loop it vouches for, after its work succeeded.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status)),
    ]);
}

/// The watchdog interval systemd expects pings within, when enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
