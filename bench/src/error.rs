//! The benchmark's errors: the library's, or a measurement that could not be made.

/// What stops a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the library (database, input, I/O).
    #[error(transparent)]
    Jrq(#[from] jrq::Error),
    /// A measurement that could not be made (a run that stalled, a plot).
    #[error("{0}")]
    Bench(String),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Jrq(e.into())
    }
}

impl Error {
    /// A usage error (exit 2).
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Jrq(jrq::Error::usage(msg))
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Jrq(jrq::Error::io(context, source))
    }

    /// A JSON encoding error.
    pub fn encode(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Jrq(jrq::Error::encode(what, e))
    }

    /// The exit status: the library's, 1 for a failed measurement.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Jrq(e) => e.exit_code(),
            Error::Bench(_) => 1,
        }
    }
}

/// The benchmark's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
