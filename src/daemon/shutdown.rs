//! One shutdown path for every daemon: the first SIGTERM, SIGINT or SIGHUP asks for a
//! graceful stop (drain), a second one for an immediate stop. (SIGHUP's default would end
//! the process at once, leaving its running tasks for the monitor to find.)
//!
//! A daemon holds a [`ShutdownSignal`]: its [`ShutdownSignal::changed`] resolves when the
//! level rises, and never when nothing can raise it any more (a signal that is never sent,
//! or whose sender is gone) — so a `select!` on it cannot spin.

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

/// The shutdown level a daemon watches.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<Shutdown>,
}

impl ShutdownSignal {
    /// A signal raised through the returned sender (tests, embedded use).
    pub fn channel() -> (watch::Sender<Shutdown>, ShutdownSignal) {
        let (tx, rx) = watch::channel(Shutdown::Running);
        (tx, ShutdownSignal { rx })
    }

    /// The current level.
    pub fn level(&self) -> Shutdown {
        *self.rx.borrow()
    }

    /// The new level when it rose since it was last seen (without waiting).
    pub fn raised(&mut self) -> Option<Shutdown> {
        match self.rx.has_changed() {
            Ok(true) => Some(*self.rx.borrow_and_update()),
            _ => None,
        }
    }

    /// Resolves with the new level once it changes. Pending for ever when it cannot change
    /// any more.
    pub async fn changed(&mut self) -> Shutdown {
        match self.rx.changed().await {
            Ok(()) => *self.rx.borrow_and_update(),
            Err(_) => std::future::pending().await,
        }
    }
}

/// A shutdown signal that is never sent (tests, embedded use).
pub fn never() -> ShutdownSignal {
    // The sender goes at once: `changed` then waits for ever instead of erroring.
    ShutdownSignal::channel().1
}

/// A signal that moves to [`Shutdown::Drain`] on the first SIGTERM/SIGINT/SIGHUP and to
/// [`Shutdown::Now`] on the second. Must be called inside a tokio runtime.
pub fn from_signals() -> std::io::Result<ShutdownSignal> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = ShutdownSignal::channel();
    tokio::spawn(async move {
        let mut level = Shutdown::Running;
        while level != Shutdown::Now {
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
            if tx.send(level).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_nobody_can_raise_waits_for_ever_instead_of_spinning() {
        let mut s = never();
        assert_eq!(s.level(), Shutdown::Running);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), s.changed()).await;
        assert!(waited.is_err(), "changed() must not resolve");
    }

    #[tokio::test]
    async fn levels_arrive() {
        let (tx, mut s) = ShutdownSignal::channel();
        tx.send(Shutdown::Drain).unwrap();
        assert_eq!(s.changed().await, Shutdown::Drain);
        assert_eq!(s.level(), Shutdown::Drain);
    }
}
