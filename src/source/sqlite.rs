//! SQLite queries (`type = "sqlite"`, `path`, `query`): rusqlite on the source's own thread,
//! the database opened read-only, the result stepped one row at a time as the pipeline takes
//! them (see `db` for the channel between the two).
//!
//! SQLite types values, not columns: each value is read by its storage class, whatever the
//! column was declared as.
//!
//! | SQLite | value |
//! |---|---|
//! | INTEGER | integer: declare `bool` in `[mapping] types` to read 0/1 as a bool |
//! | REAL | number; ±Infinity invalid |
//! | TEXT | string: declare `date`, `json`, `string_array`… to parse it as any CSV field |
//! | BLOB | string when the bytes are UTF-8, else invalid |
//! | NULL | null |
//!
//! `source.timeout` is the busy timeout: how long a read waits for a writer's lock.
//!
//! Invariants:
//! - The source database is never written: it is opened with `SQLITE_OPEN_READ_ONLY`, so a
//!   query that would write fails.
//! - A query error mid-result reaches the pipeline as a structural error with SQLite's message.

use super::db::{self, FedSource, Feed};
use super::sqltypes;
use super::SourceError;
use crate::core::value::{Cell, Value};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Opens the query: opens the file, prepares the query and resolves the plan's columns
/// before returning.
pub fn open(
    path: &Path,
    query: &str,
    timeout: Duration,
    columns: &[String],
) -> Result<FedSource, SourceError> {
    let what = path.display().to_string();
    if !path.is_file() {
        return Err(SourceError::Io {
            what,
            message: "cannot open: no such database file".into(),
        });
    }
    let job = Job {
        what: what.clone(),
        path: path.to_path_buf(),
        query: query.to_string(),
        columns: columns.to_vec(),
        timeout,
    };
    FedSource::start(what, columns.len(), "batchsync-sqlite", move |feed| {
        job.run(feed)
    })
}

struct Job {
    what: String,
    path: PathBuf,
    query: String,
    columns: Vec<String>,
    timeout: Duration,
}

impl Job {
    fn run(self, mut feed: Feed) {
        let error = |message: String| SourceError::Query {
            what: self.what.clone(),
            message,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match Connection::open_with_flags(&self.path, flags) {
            Ok(c) => c,
            Err(e) => {
                return feed.fail(SourceError::Io {
                    what: self.what.clone(),
                    message: format!("cannot open: {e}"),
                })
            }
        };
        // SQLite counts the busy timeout in an i32 of milliseconds (24 days); rusqlite panics past it.
        let busy = self.timeout.min(Duration::from_millis(i32::MAX as u64));
        if let Err(e) = conn.busy_timeout(busy) {
            return feed.fail(error(format!("cannot set the busy timeout: {e}")));
        }
        let mut statement = match conn.prepare(&self.query) {
            Ok(s) => s,
            Err(e) => return feed.fail(error(format!("the query failed: {e}"))),
        };
        let names: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(String::from)
            .collect();
        let at = match db::resolve(&self.what, &self.columns, &names) {
            Ok(at) => at,
            Err(e) => return feed.fail(e),
        };
        if feed.ready().is_err() {
            return;
        }
        let mut rows = match statement.query([]) {
            Ok(r) => r,
            Err(e) => return feed.fail(error(format!("the query failed: {e}"))),
        };
        let mut cells = Vec::with_capacity(at.len());
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    for &i in &at {
                        cells.push(match row.get_ref(i) {
                            Ok(v) => cell(v),
                            Err(e) => Cell::Invalid(format!("cannot read the value: {e}")),
                        });
                    }
                    if feed.row(&mut cells).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let n = feed.rows();
                    return feed.fail(error(format!("the query failed after {n} rows: {e}")));
                }
            }
        }
        feed.done();
    }
}

fn cell(v: ValueRef<'_>) -> Cell {
    match v {
        ValueRef::Null => Cell::Typed(Value::Null),
        ValueRef::Integer(i) => Cell::Typed(Value::Int(i)),
        ValueRef::Real(x) => sqltypes::float8(x),
        ValueRef::Text(b) => sqltypes::text(b, "TEXT"),
        ValueRef::Blob(b) => sqltypes::text(b, "BLOB"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    fn db(sql: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join("s.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        dir
    }

    fn read(
        dir: &tempfile::TempDir,
        query: &str,
        cols: &[&str],
    ) -> Result<Vec<Vec<Cell>>, SourceError> {
        let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        let mut src = open(
            &dir.path().join("s.db"),
            query,
            Duration::from_secs(5),
            &cols,
        )?;
        let mut out = Vec::new();
        let mut cells = Vec::new();
        while let Some(r) = src.next_row(&mut cells)? {
            assert_eq!(r.line, out.len() as u64 + 1);
            out.push(cells.clone());
        }
        Ok(out)
    }

    #[test]
    fn values_are_typed_by_their_storage_class() {
        let dir = db(
            "CREATE TABLE t(id INTEGER, amount REAL, name TEXT, raw BLOB, gone TEXT);
             INSERT INTO t VALUES (1, 42.5, 'ada', x'6869', NULL), (2, 3.0, 'zoë', x'ff', 'x');",
        );
        let rows = read(
            &dir,
            "SELECT * FROM t ORDER BY id",
            &["name", "amount", "raw", "gone"],
        )
        .unwrap();
        assert_eq!(
            rows[0],
            vec![
                Cell::Typed(Value::Text("ada".into())),
                Cell::Typed(Value::Float(42.5)),
                Cell::Typed(Value::Text("hi".into())),
                Cell::Typed(Value::Null),
            ]
        );
        assert_eq!(rows[1][1], Cell::Typed(Value::Int(3)));
        assert!(matches!(rows[1][2], Cell::Invalid(_)));
    }

    #[test]
    fn a_missing_column_is_named_and_a_bad_query_is_an_error() {
        let dir = db("CREATE TABLE t(id INTEGER);");
        let err = read(&dir, "SELECT id FROM t", &["id", "email"]).unwrap_err();
        assert!(
            err.is_config() && err.to_string().contains("\"email\""),
            "{err}"
        );
        let err = read(&dir, "SELECT nope FROM t", &["nope"]).unwrap_err();
        assert!(
            !err.is_config() && err.to_string().contains("no such column"),
            "{err}"
        );
    }

    #[test]
    fn the_database_is_opened_read_only() {
        let dir = db("CREATE TABLE t(id INTEGER); INSERT INTO t VALUES (1);");
        let err = read(&dir, "DELETE FROM t RETURNING id", &["id"]).unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }
}
