//! `[source]` once read: one variant per `type`, each holding only the keys that kind takes,
//! so a reader of a variant never meets a key that another kind needs.
//!
//! `primary_key`, which every kind takes, belongs to the mapping ([`super::Settings::plan`]).

use std::path::PathBuf;
use std::time::Duration;

/// `timeout` of a query source when the file sets none: how long SQLite waits for a writer's
/// lock, or how long PostgreSQL and MySQL may take to connect and to run the query.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSettings {
    Csv(CsvSettings),
    Ndjson(NdjsonSettings),
    Sqlite(SqliteSettings),
    Postgres(DatabaseSettings),
    Mysql(DatabaseSettings),
}

/// `type = "csv"`.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvSettings {
    /// Resolved against the config file's folder.
    pub path: PathBuf,
    /// One ASCII byte; `"\t"` for TSV.
    pub delimiter: u8,
    /// `require_final_newline`: a file whose last record has no line end is refused as cut
    /// short (the default); `false` takes it as RFC 4180 allows, if its quotes are closed.
    pub require_final_newline: bool,
}

impl CsvSettings {
    pub const DEFAULT_DELIMITER: u8 = b',';
}

/// `type = "ndjson"`.
#[derive(Debug, Clone, PartialEq)]
pub struct NdjsonSettings {
    /// Resolved against the config file's folder.
    pub path: PathBuf,
    /// As for CSV; `false` takes a last line without a line end if it parses whole.
    pub require_final_newline: bool,
}

/// `type = "sqlite"`.
#[derive(Debug, Clone, PartialEq)]
pub struct SqliteSettings {
    /// The database file, resolved against the config file's folder.
    pub path: PathBuf,
    pub query: String,
    /// The busy timeout; [`DEFAULT_QUERY_TIMEOUT`] when not set.
    pub timeout: Duration,
}

/// `type = "postgres"` or `type = "mysql"`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSettings {
    /// As written: it may hold a password, so it is never printed.
    pub url: String,
    pub query: String,
    /// The environment variable that holds the password, if any.
    pub password_env: Option<String>,
    /// Bounds connecting and the query; [`DEFAULT_QUERY_TIMEOUT`] when not set.
    pub timeout: Duration,
}
