//! How every statement reaches the server, so that it works the same on a direct
//! connection and through a pooler in transaction mode (PgBouncer `pool_mode =
//! transaction`), where consecutive protocol messages of one client may run on different
//! server connections.
//!
//! tokio-postgres's `query(&str, …)` prepares a *named* statement, executes it and closes
//! it, each followed by its own Sync: through a transaction pooler the execute can land on
//! a server connection that never saw the prepare ("prepared statement "s3" does not
//! exist"), and the name can collide with another client's. [`Sql`] instead sends each
//! statement as one message group — the unnamed statement, parsed with its parameter
//! types, bound, executed, one Sync (`query_typed`) — which a pooler keeps on one server
//! connection and which leaves nothing behind. The parameter types are what the server
//! infers, asked once per statement text and process and kept ([`param_types`]): the same
//! types a prepare would have given, so Rust values convert exactly as before. It is also
//! one round trip per statement instead of two.
//!
//! The daemons' hot statements stay named prepared statements, planned once per
//! connection ([`Statements`]), except in transaction pooling mode ([`PoolMode`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error as PgError, GenericClient, Row, SimpleQueryMessage, Statement};

use crate::error::{Error, Result};

/// Whether the connections go straight to PostgreSQL (or through a pooler in session
/// mode) or through a pooler in transaction mode. Set by `JRQ_POOL_MODE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PoolMode {
    /// A session is a server connection: LISTEN, session settings and named prepared
    /// statements hold (the default).
    #[default]
    Session,
    /// Each transaction may run on another server connection (PgBouncer `pool_mode =
    /// transaction`): no LISTEN (the daemons poll), no session settings, no named
    /// statement outside a transaction, advisory locks held by transactions only.
    Transaction,
}

impl std::str::FromStr for PoolMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<PoolMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "session" => Ok(PoolMode::Session),
            "transaction" => Ok(PoolMode::Transaction),
            other => Err(Error::usage(format!(
                "JRQ_POOL_MODE is '{other}': say 'session' (a direct connection, or a \
                 pooler in session mode; the default) or 'transaction' (PgBouncer's \
                 pool_mode = transaction)"
            ))),
        }
    }
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        })
    }
}

static TRANSACTION_MODE: AtomicBool = AtomicBool::new(false);

/// Marks this process as connecting through a transaction pooler: [`super::open`] calls it
/// for every connection whose settings say so. It stays set (the process's statements are
/// then all pooler-safe, which is also correct on a direct connection).
pub(super) fn note_mode(mode: PoolMode) {
    if mode == PoolMode::Transaction {
        TRANSACTION_MODE.store(true, Ordering::Relaxed);
    }
}

/// Whether this process talks to a transaction pooler (see [`PoolMode::Transaction`]).
pub fn transaction_pooling() -> bool {
    TRANSACTION_MODE.load(Ordering::Relaxed)
}

/// The parameter types of statements, by their text, as the server inferred them.
static TYPES: LazyLock<Mutex<TypeCache>> = LazyLock::new(Default::default);

type TypeCache = HashMap<Box<str>, Arc<[Type]>>;

/// Names of the probes' prepared statements: a token of this process (random: in
/// containers every process may be pid 1) and a counter (see [`param_types`]). A probe cut
/// off between its PREPARE and DEALLOCATE leaves a name nobody else uses.
static PROBE: AtomicU64 = AtomicU64::new(0);
static PROCESS_TOKEN: LazyLock<String> =
    LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());

/// The types the server infers for the parameters of `sql`, asked once per process: a
/// `PREPARE`, a read of `pg_prepared_statements` and a `DEALLOCATE` in one simple-query
/// message (one round trip, one server connection even through a pooler, nothing left on
/// the session). Inside a transaction it is part of the transaction.
pub async fn param_types<C: GenericClient + Sync + ?Sized>(
    client: &C,
    sql: &str,
) -> std::result::Result<Arc<[Type]>, PgError> {
    if let Some(t) = TYPES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(sql)
    {
        return Ok(t.clone());
    }
    // One statement only: the probe is a simple query, which would run a second one.
    debug_assert!(!sql.contains(';'), "one statement: {sql}");
    let name = format!(
        "jrq_probe_{}_{}",
        *PROCESS_TOKEN,
        PROBE.fetch_add(1, Ordering::Relaxed)
    );
    // The statement text is this program's own (every statement is a constant of the db
    // module); the name is made here, of letters and digits. Nothing from outside goes in.
    let probe = format!(
        "PREPARE {name} AS {sql}\n;\n\
         SELECT coalesce(array_to_string(parameter_types::oid[], ','), '') \
         FROM pg_prepared_statements WHERE name = '{name}';\n\
         DEALLOCATE {name}"
    );
    let mut oids = None;
    for m in client.simple_query(&probe).await? {
        if let SimpleQueryMessage::Row(r) = m {
            oids = r.get(0).map(str::to_string);
        }
    }
    let mut types = vec![];
    for oid in oids
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        match oid.parse().ok().and_then(Type::from_oid) {
            Some(t) => types.push(t),
            // Not a built-in type (jrq's schema has none): let a prepare describe it.
            None => return Ok(client.prepare(sql).await?.params().into()),
        }
    }
    let types: Arc<[Type]> = types.into();
    TYPES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(sql.into(), types.clone());
    Ok(types)
}

/// The values of `params` with the types `types`, or `None` when the counts differ (then
/// the caller lets tokio-postgres's own path report the mistake).
fn typed<'a>(
    params: &[&'a (dyn ToSql + Sync)],
    types: &[Type],
) -> Option<Vec<(&'a (dyn ToSql + Sync), Type)>> {
    (params.len() == types.len())
        .then(|| params.iter().copied().zip(types.iter().cloned()).collect())
}

/// Statements as one message group each (see the module's documentation). Implemented
/// for connections and transactions; the db module's functions take `&impl Sql`.
pub trait Sql: GenericClient + Sync {
    /// Like `query`: every row.
    fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<Vec<Row>, PgError>> + Send {
        async move {
            let types = param_types(self, sql).await?;
            match typed(params, &types) {
                Some(p) => self.query_typed(sql, &p).await,
                None => self.query(sql, params).await,
            }
        }
    }

    /// Like `query_one`: exactly one row, else an error.
    fn row(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<Row, PgError>> + Send {
        async move {
            let types = param_types(self, sql).await?;
            match typed(params, &types) {
                Some(p) => self.query_typed_one(sql, &p).await,
                None => self.query_one(sql, params).await,
            }
        }
    }

    /// Like `query_opt`: no row or one, else an error.
    fn row_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<Option<Row>, PgError>> + Send {
        async move {
            let types = param_types(self, sql).await?;
            match typed(params, &types) {
                Some(p) => self.query_typed_opt(sql, &p).await,
                None => self.query_opt(sql, params).await,
            }
        }
    }

    /// Like `execute`: the number of rows the statement changed.
    fn exec(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = std::result::Result<u64, PgError>> + Send {
        async move {
            let types = param_types(self, sql).await?;
            match typed(params, &types) {
                Some(p) => self.execute_typed(sql, &p).await,
                None => self.execute(sql, params).await,
            }
        }
    }
}

impl Sql for Client {}
impl Sql for tokio_postgres::Transaction<'_> {}

/// The prepared statements of one connection, prepared on first use. The daemons' hot
/// statements are planned once per connection instead of on every call (planning a CTE
/// costs several times its execution). Make a new one for every new connection. Through
/// a transaction pooler a named statement cannot outlive its transaction: there every
/// statement goes the [`Sql`] way and is planned each time.
#[derive(Default)]
pub struct Statements {
    cache: Mutex<HashMap<&'static str, Statement>>,
}

impl Statements {
    /// The prepared statement for `sql` on this connection (not through a transaction
    /// pooler: use [`Statements::rows`] or [`Statements::row`], which know).
    pub async fn get(&self, client: &impl GenericClient, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sql)
        {
            return Ok(s.clone());
        }
        let stmt = client.prepare(sql).await?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// `sql`'s rows, prepared once per connection.
    pub async fn rows(
        &self,
        client: &impl Sql,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        if transaction_pooling() {
            return Ok(client.rows(sql, params).await?);
        }
        let stmt = self.get(client, sql).await?;
        Ok(client.query(&stmt, params).await?)
    }

    /// `sql`'s one row, prepared once per connection.
    pub async fn row(
        &self,
        client: &impl Sql,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        if transaction_pooling() {
            return Ok(client.row(sql, params).await?);
        }
        let stmt = self.get(client, sql).await?;
        Ok(client.query_one(&stmt, params).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_modes_parse() {
        assert_eq!("session".parse::<PoolMode>().unwrap(), PoolMode::Session);
        assert_eq!(
            " Transaction ".parse::<PoolMode>().unwrap(),
            PoolMode::Transaction
        );
        let e = "statement".parse::<PoolMode>().unwrap_err().to_string();
        assert!(
            e.contains("JRQ_POOL_MODE") && e.contains("transaction"),
            "{e}"
        );
    }

    #[test]
    fn typed_params_need_the_same_count() {
        let a = 1i64;
        let p: [&(dyn ToSql + Sync); 1] = [&a];
        assert!(typed(&p, &[Type::INT8]).is_some());
        assert!(typed(&p, &[]).is_none());
    }
}
