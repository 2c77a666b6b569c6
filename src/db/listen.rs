//! LISTEN on a connection whose driver hands notifications to the caller.
//!
//! A pooled connection drops notifications, so listeners open their own connection and
//! drive it here. The channel names pass through [`quote_ident`](super::quote_ident).
//! When the connection dies the receiver ends: reconnect, LISTEN again, and poll at once,
//! because notifications sent meanwhile are gone. Through a transaction pooler
//! ([`PoolMode::Transaction`]) nothing listens: the callers poll.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Notification};

use super::{open, quote_ident, DbConfig, PoolMode};
use crate::error::{describe_chain, Result};

/// Opens a connection (with the TLS settings of `cfg`, as [`super::connect`] does),
/// LISTENs on `channels`, and returns the client (usable for queries too) and the stream
/// of notifications. The stream ends when the connection closes.
pub async fn listen(
    cfg: &DbConfig,
    channels: &[&str],
) -> Result<(Client, mpsc::UnboundedReceiver<Notification>)> {
    let (client, mut connection) = open(cfg).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    // Drive the connection before issuing LISTEN: nothing moves otherwise.
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %describe_chain(&e), "listening connection closed");
                    break;
                }
            }
        }
    });
    // Through a transaction pooler a LISTEN would hold on to whichever server connection
    // ran it, and its notifications would reach whichever client used that one next:
    // nothing listens, the stream stays silent, and the caller's polling does the work.
    if cfg.pool_mode == PoolMode::Transaction {
        tracing::debug!(
            ?channels,
            "transaction pooling: not listening, polling only"
        );
        return Ok((client, rx));
    }
    let mut sql = String::new();
    for ch in channels {
        sql.push_str(&format!("LISTEN {};", quote_ident(ch)?));
    }
    if !sql.is_empty() {
        client.batch_execute(&sql).await?;
    }
    Ok((client, rx))
}
