//! A daemon's one database connection — which also LISTENs — and its way back after a
//! loss: reconnect attempts with a backoff from [`RECONNECT_FIRST`] doubling to
//! [`RECONNECT_MAX`]. Notifications sent while the connection was down are gone, so the
//! daemon looks at once after every reconnect ([`Link::reconnect_if_due`] says when).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::{Client, Notification};

use crate::db::{self, DbConfig, Statements};
use crate::error::{Error, Result};
use crate::validate::format_duration;

/// The wait before the first reconnect attempt after a loss.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between reconnect attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A live connection: the client, its notifications, its prepared statements.
pub struct Conn {
    pub client: Client,
    notes: mpsc::UnboundedReceiver<Notification>,
    /// Prepared on first use, per connection (a new connection starts empty).
    pub stmts: Statements,
}

/// The connection, or when it is down, when to try again.
pub struct Link {
    db: DbConfig,
    channels: Vec<String>,
    /// Whether the session is tuned for the daemons' hot statements.
    tuned: bool,
    conn: Option<Conn>,
    delay: Duration,
    next_attempt: Instant,
}

impl Link {
    /// Connects (an error here is a failed start), LISTENs on `channels`, checks the schema
    /// and tunes the session for the daemons' statements.
    pub async fn open(db: DbConfig, channels: Vec<String>) -> Result<Link> {
        Link::start(db, channels, true).await
    }

    /// Like [`Link::open`], without notifications and with the planner's defaults: for a
    /// daemon whose statements read whole tables (the watching monitor's statistics).
    pub async fn open_plain(db: DbConfig) -> Result<Link> {
        Link::start(db, vec![], false).await
    }

    async fn start(db: DbConfig, channels: Vec<String>, tuned: bool) -> Result<Link> {
        let conn = connect(&db, &channels, tuned).await?;
        Ok(Link {
            db,
            channels,
            tuned,
            conn: Some(conn),
            delay: RECONNECT_FIRST,
            next_attempt: Instant::now(),
        })
    }

    /// The connection, while it is up.
    pub fn conn(&self) -> Option<&Conn> {
        self.conn.as_ref()
    }

    /// The connection, while it is up, for a transaction.
    pub fn conn_mut(&mut self) -> Option<&mut Conn> {
        self.conn.as_mut()
    }

    /// Whether the connection is up.
    pub fn is_up(&self) -> bool {
        self.conn.is_some()
    }

    /// The connection is gone: drop it, and try again after the backoff.
    pub fn lost(&mut self, why: &str) {
        if self.conn.take().is_some() {
            tracing::warn!(reason = why, "database connection lost; reconnecting");
        }
        self.next_attempt = Instant::now() + self.delay;
    }

    /// Handles the error of a statement (`what` failed): logs it, and when the connection
    /// turns out closed or no longer usable (the server shutting down, a standby's
    /// read-only session: [`Error::is_session_unusable`]), drops it for a reconnect. Other
    /// errors are the caller's to retry. Whether the connection was lost.
    pub fn failed(&mut self, what: &str, e: &Error) -> bool {
        let closed =
            self.conn.as_ref().is_none_or(|c| c.client.is_closed()) || e.is_session_unusable();
        tracing::warn!(error = %e, "{what} failed");
        if closed {
            self.lost(what);
        }
        closed
    }

    /// When the next reconnect attempt is due; `None` while connected.
    pub fn reconnect_at(&self) -> Option<Instant> {
        self.conn.is_none().then_some(self.next_attempt)
    }

    /// The wait the next failed attempt will add.
    pub fn retry_delay(&self) -> Duration {
        self.delay
    }

    /// Reconnects when an attempt is due. Whether the connection is back — then
    /// notifications sent meanwhile are lost: the caller looks at once.
    pub async fn reconnect_if_due(&mut self) -> bool {
        if self.conn.is_some() || Instant::now() < self.next_attempt {
            return false;
        }
        self.reconnect_now().await
    }

    /// Reconnects now, whatever the backoff says (the final writes of a daemon on its way
    /// out). Whether the connection is up.
    pub async fn reconnect_now(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        match connect(&self.db, &self.channels, self.tuned).await {
            Ok(c) => {
                tracing::info!("database connection restored");
                self.conn = Some(c);
                self.delay = RECONNECT_FIRST;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = %format_duration(self.delay), "reconnect failed");
                self.next_attempt = Instant::now() + self.delay;
                self.delay = (self.delay * 2).min(RECONNECT_MAX);
                false
            }
        }
    }

    /// A notification already received, without waiting (`None`: none, or no connection;
    /// a closed connection is marked lost).
    pub fn try_note(&mut self) -> Option<Notification> {
        let c = self.conn.as_mut()?;
        match c.notes.try_recv() {
            Ok(n) => Some(n),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.lost("the listening connection closed");
                None
            }
        }
    }

    /// The next notification. Pending while the connection is down; when it closes, it is
    /// marked lost and `None` comes back.
    pub async fn next_note(&mut self) -> Option<Notification> {
        let Some(c) = &mut self.conn else {
            return std::future::pending().await;
        };
        match c.notes.recv().await {
            Some(n) => Some(n),
            None => {
                self.lost("the listening connection closed");
                None
            }
        }
    }
}

async fn connect(db: &DbConfig, channels: &[String], tuned: bool) -> Result<Conn> {
    let channels: Vec<&str> = channels.iter().map(String::as_str).collect();
    let (client, notes) = db::listen::listen(db, &channels).await?;
    db::check_schema(&client).await?;
    if tuned {
        db::tune_session(&client).await?;
    }
    Ok(Conn {
        client,
        notes,
        stmts: Statements::default(),
    })
}
