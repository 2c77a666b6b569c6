//! The dashboard's database connections: a small deadpool of connections opened by
//! [`db::open`] (so libpq's sslmode semantics and the TLS settings hold as for every
//! program). The pool opens connections on demand: `jr-web` starts, serves and says
//! "database unreachable" while PostgreSQL is away, and recovers when it is back.

use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tokio_postgres::Client;

use crate::db::{self, DbConfig};
use crate::error::{describe_chain, Error, Result};

/// Connections the dashboard holds at most.
pub const POOL_SIZE: usize = 4;
/// How long a request waits for a free connection, or for a new one.
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// Opens connections for the pool.
pub struct Manager {
    db: DbConfig,
}

impl managed::Manager for Manager {
    type Type = Client;
    type Error = Error;

    async fn create(&self) -> Result<Client> {
        let (client, connection) = db::open(&self.db).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe_chain(&e), "database connection closed");
            }
        });
        // The dashboard only reads: a bug cannot write through it. No statement may run for
        // ever (a page's: seconds at most; a scrape's scan of a big task table: longer).
        // Through a transaction pooler these would stay on a server connection other
        // clients then use: set them on the dashboard's login role (docs/operations.md).
        if self.db.pool_mode == db::PoolMode::Transaction {
            db::warn_once_unless(
                &client,
                "default_transaction_read_only",
                "on",
                "the dashboard's login is not read-only (a transaction pooler cannot hold a \
                 session's setting): ALTER ROLE … SET default_transaction_read_only = on, \
                 statement_timeout = '30s' (docs/operations.md, \"Through PgBouncer\")",
            )
            .await;
            return Ok(client);
        }
        client
            .batch_execute("SET default_transaction_read_only = on; SET statement_timeout = '30s'")
            .await
            .map_err(|e| Error::from_pg(&e))?;
        Ok(client)
    }

    async fn recycle(&self, client: &mut Client, _: &Metrics) -> RecycleResult<Error> {
        if client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        Ok(())
    }
}

/// The pool.
pub type Pool = managed::Pool<Manager>;

/// A pool for `db` (no connection is opened yet).
pub fn pool(db: DbConfig) -> Result<Pool> {
    managed::Pool::builder(Manager { db })
        .max_size(POOL_SIZE)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT * 3))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::Usage(format!("cannot set up the connection pool: {e}")))
}

/// A connection from the pool, or the reason there is none, as one line.
pub async fn get(pool: &Pool) -> Result<managed::Object<Manager>> {
    pool.get().await.map_err(|e| match e {
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Timeout(_) => Error::Connect {
            target: "the database".into(),
            reason: "no connection became free or could be opened in time".into(),
        },
        other => Error::Connect {
            target: "the database".into(),
            reason: other.to_string(),
        },
    })
}
