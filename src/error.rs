//! Errors that reach a person as one clear line: what is wrong and what to do.

use std::fmt::Write as _;

/// Every error the library reports. The variants decide the exit status: usage errors
/// (bad arguments or input) exit 2, everything else 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or input, detected before anything was changed.
    #[error("{0}")]
    Usage(String),

    /// The database could not be reached. `target` names host and port, never the password.
    #[error(
        "cannot connect to PostgreSQL at {target}: {reason} \
         (check DATABASE_URL or PGHOST/PGPORT, and that the server is running)"
    )]
    Connect { target: String, reason: String },

    /// TLS to the database failed: `reason` says what (an untrusted certificate, a host
    /// name mismatch, a server without SSL) and what to do. Never the password.
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Tls { target: String, reason: String },

    /// The database has no jrq tables yet.
    #[error("database '{database}' has no jrq schema: run `jrq migrate` first")]
    SchemaMissing { database: String },

    /// The database was migrated by a newer jrq.
    #[error(
        "database schema is at version {found}, newer than this jrq knows ({known}): \
         upgrade jrq on this machine"
    )]
    SchemaTooNew { found: i32, known: i32 },

    /// The database needs migrations this binary carries.
    #[error("database schema is at version {found}, this jrq needs {known}: run `jrq migrate`")]
    SchemaTooOld { found: i32, known: i32 },

    /// An id that names nothing.
    #[error("{0}")]
    NotFound(String),

    /// The request conflicts with the current state (duplicate unique key, wrong status).
    #[error("{0}")]
    Conflict(String),

    /// The database refused for lack of a privilege; says who may do it instead.
    #[error("{0}")]
    Denied(String),

    /// Another process took this daemon's name over (its registry row names another
    /// instance now): this one stops.
    #[error("{0}")]
    NameLost(String),

    /// A report or result could not be encoded (JSON).
    #[error("cannot encode {what}: {reason}")]
    Encode { what: String, reason: String },

    /// Input lines refused (a batch with bad lines and no --skip-invalid).
    #[error("{0}")]
    Rejected(String),

    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),

    /// Any other database error, with the server's message, detail and hint, and its
    /// SQLSTATE when the server sent one.
    #[error("database error: {message}")]
    Db {
        message: String,
        sqlstate: Option<String>,
    },

    /// Reading input or writing output failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit status for this error: 2 for usage, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// A usage error.
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    /// A database error with the server's message, detail and hint.
    pub fn from_pg(e: &tokio_postgres::Error) -> Self {
        Error::Db {
            message: describe_pg_error(e),
            sqlstate: sqlstate(e).map(str::to_string),
        }
    }

    /// Whether the database refused the data itself — a value it cannot store or that
    /// breaks a constraint or a limit (SQLSTATE classes 22, 23 and 54) — rather than the
    /// connection or the moment: the same write will fail again however often it is
    /// tried, and writes of other data are unaffected.
    pub fn is_refused_data(&self) -> bool {
        match self {
            Error::Db {
                sqlstate: Some(code),
                ..
            } => ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class)),
            _ => false,
        }
    }

    /// Whether the session that returned this error cannot go on — the server is shutting
    /// down or starting (SQLSTATE 57P01–57P03), the connection broke (class 08), or the
    /// session is read-only (25006: a standby, or a primary demoted behind a failover) —
    /// so the way on is a new connection, which a multi-host address with
    /// `target_session_attrs=read-write` takes to whichever server is the primary now.
    pub fn is_session_unusable(&self) -> bool {
        match self {
            Error::Db {
                sqlstate: Some(code),
                ..
            } => {
                code.starts_with("08")
                    || matches!(code.as_str(), "57P01" | "57P02" | "57P03" | "25006")
            }
            _ => false,
        }
    }

    /// A JSON encoding error, saying what was being encoded.
    pub fn encode(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Encode {
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::from_pg(&e)
    }
}

/// The server's message, detail and hint for a database error, or the chain of causes for
/// a client-side one. tokio-postgres alone displays just "db error".
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(detail) = db.detail() {
            let _ = write!(s, " ({detail})");
        }
        if let Some(hint) = db.hint() {
            let _ = write!(s, "; hint: {hint}");
        }
        return s;
    }
    describe_chain(e)
}

/// `error: cause: cause` for any error with sources, skipping repeated texts.
pub fn describe_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// The constraint a database error names, if any.
pub fn constraint(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().and_then(|d| d.constraint())
}
