//! One shutdown path for every daemon: the first SIGTERM, SIGINT or SIGHUP asks for a
//! graceful stop (drain), a second one for an immediate stop. (SIGHUP's default would end
//! the process at once, leaving its running tasks for the monitor to find.)

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How far a shutdown has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Keep running.
    Running,
    /// Stop taking work; finish what runs within the drain time.
    Drain,
    /// Stop now: end running work and give it back.
    Now,
}

/// A shutdown signal that is never sent (tests, embedded use).
pub fn never() -> watch::Receiver<Shutdown> {
    let (tx, rx) = watch::channel(Shutdown::Running);
    // Keep the sender alive for the life of the program.
    std::mem::forget(tx);
    rx
}

/// A watch that moves to [`Shutdown::Drain`] on the first SIGTERM/SIGINT/SIGHUP and to
/// [`Shutdown::Now`] on the second. Must be called inside a tokio runtime.
pub fn from_signals() -> std::io::Result<watch::Receiver<Shutdown>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = watch::channel(Shutdown::Running);
    tokio::spawn(async move {
        let mut level = Shutdown::Running;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
            level = if level == Shutdown::Running {
                Shutdown::Drain
            } else {
                Shutdown::Now
            };
            if tx.send(level).is_err() || level == Shutdown::Now {
                // Keep the sender alive so receivers do not see a closed channel.
                std::future::pending::<()>().await;
            }
        }
    });
    Ok(rx)
}
