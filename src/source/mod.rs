//! Sources: where a segment's rows come from. Each yields, row by row, the cells of the columns
//! the sync uses, in `ColumnPlan::columns` order.
//!
//! Invariants:
//! - Streaming: a source holds one row at a time (plus its driver's buffer), never the segment.
//! - Two kinds of failure. A [`SourceError`] is structural (an unreadable file, a cut-short last
//!   line, an unterminated quote, a query error, a dropped connection): the run aborts before
//!   its commit. A row that cannot be read comes back as [`Read::bad`]: it follows `on_bad_row`.
//! - A column the mapping needs and the source lacks is a config error naming the column.

pub mod csv;
mod db;
pub mod mysql;
pub mod ndjson;
pub mod postgres;
pub mod sqlite;
mod sqltypes;

use crate::config::{DatabaseSettings, Settings, SourceSettings};
use crate::core::value::Cell;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    #[error("{what} line {line}: {message}")]
    Structure {
        what: String,
        line: u64,
        message: String,
    },
    #[error("{what}: column {column:?} is used by the mapping but the source has no such column{}", hint(.available))]
    MissingColumn {
        what: String,
        column: String,
        available: Vec<String>,
    },
    #[error("{what}: {message}")]
    Query { what: String, message: String },
    /// The source's settings cannot work as written (an unparseable URL, an unset password
    /// variable, a column the query returns twice): the user's config to fix.
    #[error("{what}: {message}")]
    Config { what: String, message: String },
}

/// Where each used column stands among the source's column names, by exact name. Extra
/// columns are ignored; a missing one is a [`SourceError::MissingColumn`], and one named
/// twice is a config error naming it and both positions (1-based): which of the two the
/// user meant cannot be guessed, and taking the first would drop the second without a word.
pub fn positions(
    what: &str,
    wanted: &[String],
    names: &[String],
    fix: &str,
) -> Result<Vec<usize>, SourceError> {
    wanted
        .iter()
        .map(|c| {
            let mut at = names
                .iter()
                .enumerate()
                .filter(|(_, n)| *n == c)
                .map(|(i, _)| i);
            match (at.next(), at.next()) {
                (Some(i), None) => Ok(i),
                (Some(i), Some(j)) => Err(SourceError::Config {
                    what: what.to_string(),
                    message: format!(
                        "column {c:?} is named twice, at positions {} and {}; {fix}",
                        i + 1,
                        j + 1
                    ),
                }),
                (None, _) => Err(SourceError::MissingColumn {
                    what: what.to_string(),
                    column: c.clone(),
                    available: names.to_vec(),
                }),
            }
        })
        .collect()
}

/// What a file looked like when its read began: a read that ends with another size or
/// modification time read a file still being written, and must not become a baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    pub fn of(file: &std::fs::File) -> FileStamp {
        let meta = file.metadata().ok();
        FileStamp {
            len: meta.as_ref().map_or(0, |m| m.len()),
            modified: meta.and_then(|m| m.modified().ok()),
        }
    }

    /// A structural error when the file at `path` is not as it was.
    pub fn check(&self, path: &std::path::Path, line: u64) -> Result<(), SourceError> {
        let now = std::fs::metadata(path).map(|m| FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
        });
        match now {
            Ok(now) if now == *self => Ok(()),
            Ok(now) => Err(SourceError::Structure {
                what: path.display().to_string(),
                line,
                message: format!(
                    "the file changed while it was read ({} bytes when the read began, {} now, or a new modification time): it is still being written. Nothing was committed; run again once it is complete",
                    self.len, now.len
                ),
            }),
            Err(e) => Err(SourceError::Io {
                what: path.display().to_string(),
                message: format!("cannot check the file after reading it: {e}"),
            }),
        }
    }
}

fn hint(available: &[String]) -> String {
    if available.is_empty() {
        String::new()
    } else {
        format!(" (it has: {})", available.join(", "))
    }
}

impl SourceError {
    /// A missing column, or source settings that cannot work, are the user's config to fix
    /// (exit 2), not a failed run.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            SourceError::MissingColumn { .. } | SourceError::Config { .. }
        )
    }
}

/// One row read: where it came from, and why it could not be read, if it could not.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// 1-based line of the file where the row starts, or the row number of a query.
    pub line: u64,
    /// A row-level read error (a malformed line, a wrong number of fields). Cells that could be
    /// read are still filled, so the row key may still be known.
    pub bad: Option<String>,
}

pub trait Source: Send {
    /// Reads the next row's cells into `cells` (cleared first, one per plan column).
    fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError>;

    /// Called once after the last row: a final check (a column seen in no row, say).
    fn finish(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// The source for messages: a file path, or the database without credentials.
    fn describe(&self) -> String;
}

/// Opens the configured source for the plan's columns.
pub fn open(settings: &Settings) -> Result<Box<dyn Source>, SourceError> {
    let columns = &settings.plan.columns;
    Ok(match &settings.source {
        SourceSettings::Csv(s) => Box::new(
            csv::CsvSource::open(&s.path, s.delimiter, columns)?
                .require_final_newline(s.require_final_newline),
        ),
        SourceSettings::Ndjson(s) => Box::new(
            ndjson::NdjsonSource::open(&s.path, columns)?
                .require_final_newline(s.require_final_newline),
        ),
        SourceSettings::Sqlite(s) => Box::new(sqlite::open(&s.path, &s.query, s.timeout, columns)?),
        SourceSettings::Postgres(db) => Box::new(postgres::open(&query(db, settings))?),
        SourceSettings::Mysql(db) => Box::new(mysql::open(&query(db, settings))?),
    })
}

/// A PostgreSQL or MySQL source's query, for the plan's columns.
fn query<'a>(db: &'a DatabaseSettings, settings: &'a Settings) -> db::Query<'a> {
    db::Query {
        url: &db.url,
        query: &db.query,
        password_env: db.password_env.as_deref(),
        timeout: db.timeout,
        columns: &settings.plan.columns,
        timezone: settings.timezone,
    }
}
