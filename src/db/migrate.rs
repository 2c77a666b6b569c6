//! Schema migrations: refinery, embedded in every binary, under an advisory lock so that
//! several processes can migrate one database at once.

use crate::db::Sql;
use tokio_postgres::Client;

use crate::error::{describe_chain, Error, Result};

refinery::embed_migrations!("migrations");

/// The table refinery records applied migrations in.
pub const HISTORY_TABLE: &str = "jrq_schema_history";

/// The advisory lock held while migrating ("jrq_migr" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6a72_715f_6d69_6772;

/// The newest schema version this binary carries.
pub fn latest_version() -> i32 {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// The newest applied version, or `None` when the database has no jrq schema.
pub async fn current_version(client: &Client) -> Result<Option<i32>> {
    let row = client
        .row(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{HISTORY_TABLE}")],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    // The table name is our own constant; it cannot be a parameter.
    let row = client
        .row(
            &format!("SELECT max(version)::int4 FROM {HISTORY_TABLE}"),
            &[],
        )
        .await?;
    Ok(row.get::<_, Option<i32>>(0))
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied by this call, oldest first.
    pub applied: Vec<i32>,
    /// The version the database is at now.
    pub version: i32,
}

/// Applies every migration the database lacks. Safe to run from several processes at once:
/// they queue on an advisory lock, and the later ones find nothing to do. Refused through
/// a transaction pooler.
pub async fn migrate(client: &mut Client) -> Result<MigrateReport> {
    if super::sql::transaction_pooling() {
        return Err(Error::usage(
            "jrq migrate holds a session's lock around its DDL, which a transaction pooler \
             cannot keep: run it against PostgreSQL itself (the server's address in \
             DATABASE_URL, JRQ_POOL_MODE unset), not through PgBouncer",
        ));
    }
    // A transaction pooler nobody said was there: two statements, two server sessions.
    let pid = "SELECT pg_backend_pid()";
    let (a, b): (i32, i32) = (
        client.row(pid, &[]).await?.get(0),
        client.row(pid, &[]).await?.get(0),
    );
    if a != b {
        return Err(Error::usage(
            "this address does not give jrq migrate one session (two statements ran in two \
             server processes: a pooler in transaction mode?): run it against PostgreSQL \
             itself, not through PgBouncer",
        ));
    }
    client
        .exec("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = migrate_locked(client).await;
    let unlocked = client
        .exec("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result?;
    unlocked?;
    Ok(report)
}

async fn migrate_locked(client: &mut Client) -> Result<MigrateReport> {
    // Tasks carry any text a program writes; a database in another encoding (SQL_ASCII
    // stores bytes unchecked) hands the daemons text that is not UTF-8.
    let row = client
        .row(
            "SELECT current_database(), pg_encoding_to_char(encoding) FROM pg_database \
             WHERE datname = current_database()",
            &[],
        )
        .await?;
    let (database, encoding): (String, String) = (row.get(0), row.get(1));
    if encoding != "UTF8" {
        return Err(Error::Migration(format!(
            "database '{database}' uses the encoding {encoding}: jrq needs UTF8 (create it \
             with CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
        )));
    }
    let known = latest_version();
    if let Some(found) = current_version(client).await? {
        if found > known {
            return Err(Error::SchemaTooNew { found, known });
        }
    }
    let report = migrations::runner()
        .set_migration_table_name(HISTORY_TABLE)
        .run_async(client)
        .await
        .map_err(|e| Error::Migration(describe_refinery_error(&e)))?;
    let applied = report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect();
    let version = current_version(client).await?.unwrap_or(0);
    Ok(MigrateReport { applied, version })
}

fn describe_refinery_error(e: &refinery::Error) -> String {
    // refinery wraps the driver error; show the server's own message.
    match e.kind() {
        refinery::error::Kind::Connection(what, source) => {
            match source.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => format!("{what}: {}", crate::error::describe_pg_error(pg)),
                None => format!("{what}: {}", describe_chain(source.as_ref())),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod released {
    use super::migrations;

    /// Checksums of the migrations that have been released (refinery's, as recorded in
    /// `jrq_schema_history`). A released migration never changes — a database migrated
    /// by an older binary would refuse the new one, or miss what was added to it: a
    /// change goes in a new migration. Add a line here when a migration is released.
    const RELEASED: [(i32, u64); 21] = [
        (1, 7283025288544651009),
        (2, 15561595384879818704),
        (3, 1072207000028334306),
        (4, 2182057150456426329),
        (5, 525078323954132777),
        (6, 11469895850146458289),
        (7, 5033402778369171211),
        (8, 532086340444242997),
        (9, 6833389317331649969),
        (10, 11614271053994922997),
        (11, 4635032636834514374),
        (12, 3511658661528799246),
        (13, 2578011446079530515),
        (14, 7079977778513615041),
        (15, 298979528385535413),
        (16, 5118614341663214837),
        (17, 14250619819812807710),
        (18, 15299016028813897275),
        (19, 14080851415259410230),
        (20, 16756571022506170574),
        (21, 3494536382396540614),
    ];

    #[test]
    fn released_migrations_never_change() {
        let runner = migrations::runner();
        for (version, checksum) in RELEASED {
            let m = runner
                .get_migrations()
                .iter()
                .find(|m| m.version() == version)
                .unwrap_or_else(|| panic!("released migration V{version} is missing"));
            assert_eq!(
                m.checksum(),
                checksum,
                "V{version} was released and has changed: restore it, and put the change in a new migration"
            );
        }
    }
}
