//! MySQL and MariaDB queries (`type = "mysql"`): mysql_async on the source's own thread (a
//! current-thread runtime, see `db`). The query is prepared and run over the binary protocol,
//! so values come typed, and its result is read one row at a time as the pipeline takes them.
//!
//! Connection:
//! - `url` is `mysql://user@host:3306/db`. The password comes from the URL if it holds one,
//!   else from the variable `password_env` names, else from `MYSQL_PWD`.
//! - The session's `time_zone` is set to `+00:00`, so `TIMESTAMP` values arrive in UTC.
//! - `source.timeout` bounds connecting, and is the session's statement time limit
//!   (`max_statement_time` on MariaDB, `max_execution_time` on MySQL); a server that sends
//!   nothing for longer than that (plus a margin) is given up on.
//!
//! Types, by the result column's type (`[mapping] types` then converts as for any source):
//!
//! | MySQL / MariaDB | value |
//! |---|---|
//! | `TINYINT` (including `TINYINT(1)`), `SMALLINT`, `MEDIUMINT`, `INT`, `BIGINT`, `YEAR` | integer: declare `bool` in `[mapping] types` to read a `TINYINT(1)` 0/1 as a bool |
//! | `BIGINT UNSIGNED` | integer; above 2^63−1 invalid |
//! | `BIT(n)` | integer (the bits, big-endian): `BIT(1)` declared `bool` is a bool |
//! | `DOUBLE` | number; `FLOAT` read through its shortest decimal rendering |
//! | `DECIMAL` | number when an f64 holds it exactly, else invalid (as PostgreSQL's numeric) |
//! | `CHAR`, `VARCHAR`, `TEXT`, `ENUM`, `SET` | string |
//! | `BINARY`, `VARBINARY`, `BLOB` | string when the bytes are UTF-8, else invalid |
//! | `JSON` (MySQL) | as NDJSON reads it. MariaDB's `JSON` is a `LONGTEXT`: a string, unless declared `json` in `[mapping] types` |
//! | `DATE` | time: midnight in `[mapping] timezone` |
//! | `DATETIME` | time: the wall-clock time read in `[mapping] timezone` (naive, as MySQL stores it) |
//! | `TIMESTAMP` | time: the instant (read in the session's `+00:00`) |
//! | a zero date (`0000-00-00`) | invalid |
//! | NULL of any type | null |
//! | any other type (`TIME`, `GEOMETRY`, …) | invalid, naming the type: `CAST(col AS CHAR)` in the query |
//!
//! Invariants:
//! - A query error, a lost connection or a timeout reaches the pipeline as a structural error
//!   carrying the server's message, never as the end of the result.
//! - The source describes itself as `mysql://user@host:port/db`: never a password.

use super::db::{self, FedSource, Feed, Query};
use super::sqltypes;
use super::SourceError;
use crate::core::value::{Cell, Value};
use chrono::NaiveDate;
use chrono_tz::Tz;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use std::time::Duration;

/// Opens the query: connects, prepares it and resolves the plan's columns before returning.
pub fn open(q: &Query<'_>) -> Result<FedSource, SourceError> {
    let opts = Opts::from_url(q.url).map_err(|e| SourceError::Config {
        what: "source.url".into(),
        message: format!("not a MySQL connection URL: {}", crate::errors::chain(&e)),
    })?;
    let what = describe(&opts);
    let opts = match opts.pass() {
        Some(_) => opts,
        None => match db::password(&what, q.password_env, "MYSQL_PWD")? {
            Some(p) => OptsBuilder::from_opts(opts).pass(Some(p)).into(),
            None => opts,
        },
    };
    let job = Job {
        what: what.clone(),
        query: q.query.to_string(),
        columns: q.columns.to_vec(),
        timeout: q.timeout,
        tz: q.timezone,
    };
    FedSource::start(
        what,
        q.columns.len(),
        "batchsync-mysql",
        move |feed| match db::runtime(&job.what) {
            Ok(rt) => rt.block_on(job.run(feed, opts)),
            Err(e) => feed.fail(e),
        },
    )
}

struct Job {
    what: String,
    query: String,
    columns: Vec<String>,
    timeout: Duration,
    tz: Tz,
}

/// How to read one plan column out of a row.
struct Column {
    index: usize,
    kind: Kind,
    /// The SQL type's name for messages (`DATETIME`, `BLOB`).
    ty: String,
    name: String,
}

impl Job {
    fn query_error(&self, message: String) -> SourceError {
        SourceError::Query {
            what: self.what.clone(),
            message,
        }
    }

    async fn run(self, mut feed: Feed, opts: Opts) {
        let mut conn = match tokio::time::timeout(self.timeout, Conn::new(opts)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return feed.fail(SourceError::Io {
                    what: self.what.clone(),
                    message: format!("cannot connect: {}", crate::errors::chain(&e)),
                })
            }
            Err(_) => {
                return feed.fail(SourceError::Io {
                    what: self.what.clone(),
                    message: format!(
                        "cannot connect: no answer within {:?} (source.timeout)",
                        self.timeout
                    ),
                })
            }
        };
        if let Err(e) = conn.query_drop("SET time_zone = '+00:00'").await {
            return feed.fail(self.query_error(format!(
                "cannot set the session time zone: {}",
                crate::errors::chain(&e)
            )));
        }
        self.limit_statement_time(&mut conn).await;
        let statement = match conn.prep(self.query.as_str()).await {
            Ok(s) => s,
            Err(e) => {
                return feed.fail(
                    self.query_error(format!("the query failed: {}", crate::errors::chain(&e))),
                )
            }
        };
        let names: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        let at = match db::resolve(&self.what, &self.columns, &names) {
            Ok(at) => at,
            Err(e) => return feed.fail(e),
        };
        if feed.ready().is_err() {
            return;
        }
        let mut result = match conn.exec_iter(&statement, ()).await {
            Ok(r) => r,
            Err(e) => {
                return feed.fail(
                    self.query_error(format!("the query failed: {}", crate::errors::chain(&e))),
                )
            }
        };
        // Types as the result describes them: a prepared statement's metadata may be vaguer.
        let described = result.columns().unwrap_or_default();
        let columns: Vec<Column> = at
            .into_iter()
            .map(|i| {
                let (kind, ty) = match described.get(i) {
                    Some(c) => (kind_of(c), type_name(c)),
                    None => (Kind::Other, "unknown".into()),
                };
                Column {
                    index: i,
                    kind,
                    ty,
                    name: names[i].clone(),
                }
            })
            .collect();
        let idle = db::idle_limit(self.timeout);
        let mut cells = Vec::with_capacity(columns.len());
        loop {
            match tokio::time::timeout(idle, result.next()).await {
                Ok(Ok(Some(row))) => {
                    let mut values = row.unwrap();
                    cells.extend(columns.iter().map(|c| {
                        let v = values
                            .get_mut(c.index)
                            .map(|v| std::mem::replace(v, mysql_async::Value::NULL))
                            .unwrap_or(mysql_async::Value::NULL);
                        cell(c, v, self.tz)
                    }));
                    if feed.row(&mut cells).is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    let rows = feed.rows();
                    return feed.fail(self.query_error(format!(
                        "the query failed after {rows} rows: {}",
                        crate::errors::chain(&e)
                    )));
                }
                Err(_) => {
                    let rows = feed.rows();
                    return feed.fail(self.query_error(format!(
                        "no answer from the server for {idle:?} after {rows} rows (source.timeout)"
                    )));
                }
            }
        }
        drop(result);
        feed.done();
        let _ = conn.disconnect().await;
    }

    /// MariaDB and MySQL name the statement time limit differently; a server that knows
    /// neither runs without one (the client still gives up after `idle_limit`).
    async fn limit_statement_time(&self, conn: &mut Conn) {
        let secs = self.timeout.as_secs_f64();
        let mariadb = format!("SET SESSION max_statement_time = {secs:.3}");
        let mysql = format!(
            "SET SESSION max_execution_time = {}",
            self.timeout.as_millis().min(u32::MAX as u128)
        );
        if conn.query_drop(mariadb).await.is_err() && conn.query_drop(mysql).await.is_err() {
            tracing::warn!(source = %self.what, "the server takes no statement time limit; relying on the client's timeout");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Int,
    Float,
    Double,
    Decimal,
    Text,
    Binary,
    Json,
    Date,
    DateTime,
    Timestamp,
    Bit,
    Other,
}

/// The character set number MySQL gives binary strings and blobs.
const BINARY_CHARSET: u16 = 63;

fn kind_of(c: &mysql_async::Column) -> Kind {
    use ColumnType::*;
    match c.column_type() {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG
        | MYSQL_TYPE_INT24 | MYSQL_TYPE_YEAR => Kind::Int,
        MYSQL_TYPE_FLOAT => Kind::Float,
        MYSQL_TYPE_DOUBLE => Kind::Double,
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Kind::Decimal,
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_BLOB => {
            if c.character_set() == BINARY_CHARSET {
                Kind::Binary
            } else {
                Kind::Text
            }
        }
        MYSQL_TYPE_JSON => Kind::Json,
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Kind::Date,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Kind::DateTime,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp,
        MYSQL_TYPE_BIT => Kind::Bit,
        // A column that is NULL in every row (`SELECT NULL AS x`).
        MYSQL_TYPE_NULL => Kind::Text,
        _ => Kind::Other,
    }
}

fn type_name(c: &mysql_async::Column) -> String {
    use ColumnType::*;
    let binary = c.character_set() == BINARY_CHARSET;
    let name = match c.column_type() {
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING if binary => "VARBINARY",
        MYSQL_TYPE_VARCHAR | MYSQL_TYPE_VAR_STRING => "VARCHAR",
        MYSQL_TYPE_STRING if binary => "BINARY",
        MYSQL_TYPE_STRING => "CHAR",
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB
            if binary =>
        {
            "BLOB"
        }
        MYSQL_TYPE_TINY_BLOB | MYSQL_TYPE_MEDIUM_BLOB | MYSQL_TYPE_LONG_BLOB | MYSQL_TYPE_BLOB => {
            "TEXT"
        }
        MYSQL_TYPE_TINY => "TINYINT",
        MYSQL_TYPE_SHORT => "SMALLINT",
        MYSQL_TYPE_INT24 => "MEDIUMINT",
        MYSQL_TYPE_LONG => "INT",
        MYSQL_TYPE_LONGLONG => "BIGINT",
        MYSQL_TYPE_NEWDECIMAL => "DECIMAL",
        other => {
            return format!("{other:?}")
                .trim_start_matches("MYSQL_TYPE_")
                .to_string()
        }
    };
    name.to_string()
}

/// One value, by the rules of the module doc.
fn cell(c: &Column, v: mysql_async::Value, tz: Tz) -> Cell {
    use mysql_async::Value as V;
    let int = |i: i64| Cell::Typed(Value::Int(i));
    match (c.kind, v) {
        (_, V::NULL) => Cell::Typed(Value::Null),
        (Kind::Other, _) => sqltypes::unsupported(&c.ty, &format!("CAST({} AS CHAR)", c.name)),
        (_, V::Int(i)) => int(i),
        (_, V::UInt(u)) => match i64::try_from(u) {
            Ok(i) => int(i),
            Err(_) => Cell::Invalid(format!(
                "{} value {u} does not fit a 64-bit signed integer",
                c.ty
            )),
        },
        (_, V::Float(x)) => sqltypes::float4(x),
        (_, V::Double(x)) => sqltypes::float8(x),
        (Kind::Decimal, V::Bytes(b)) => match std::str::from_utf8(&b) {
            Ok(t) => sqltypes::decimal(t),
            Err(_) => Cell::Invalid("DECIMAL value is not text".into()),
        },
        (Kind::Text | Kind::Binary, V::Bytes(b)) => sqltypes::text(&b, &c.ty),
        (Kind::Json, V::Bytes(b)) => sqltypes::json_text(&b),
        (Kind::Bit, V::Bytes(b)) if b.len() <= 8 => {
            let bits = b.iter().fold(0u64, |acc, &byte| (acc << 8) | byte as u64);
            match i64::try_from(bits) {
                Ok(i) => int(i),
                Err(_) => Cell::Invalid(format!(
                    "{} value does not fit a 64-bit signed integer",
                    c.ty
                )),
            }
        }
        (Kind::Int, V::Bytes(b)) => match std::str::from_utf8(&b).ok().and_then(|t| t.parse().ok())
        {
            Some(i) => int(i),
            None => Cell::Invalid(format!("{} value is not an integer", c.ty)),
        },
        (Kind::Date | Kind::DateTime | Kind::Timestamp, V::Date(y, mo, d, h, mi, s, us)) => {
            let Some(t) = NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
                .and_then(|date| date.and_hms_micro_opt(h.into(), mi.into(), s.into(), us))
            else {
                return Cell::Invalid(format!(
                    "{} value {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} is not a date (a zero date?)",
                    c.ty
                ));
            };
            match c.kind {
                Kind::Date => sqltypes::date(t.date(), tz),
                Kind::DateTime => sqltypes::naive(t, tz),
                _ => sqltypes::naive(t, chrono_tz::UTC),
            }
        }
        (_, v) => Cell::Invalid(format!("{} value {v:?} cannot be read", c.ty)),
    }
}

/// `mysql://user@host:port/db`, from the parsed settings: no password, whatever the URL.
fn describe(o: &Opts) -> String {
    format!(
        "mysql://{}@{}:{}/{}",
        o.user().unwrap_or(""),
        o.ip_or_hostname(),
        o.tcp_port(),
        o.db_name().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_async::Value as V;

    fn column(kind: Kind, ty: &str) -> Column {
        Column {
            index: 0,
            kind,
            ty: ty.into(),
            name: "c".into(),
        }
    }

    #[test]
    fn the_description_holds_no_password() {
        let o = Opts::from_url("mysql://ada:s3cret@db.example:3307/shop").unwrap();
        assert_eq!(describe(&o), "mysql://ada@db.example:3307/shop");
    }

    #[test]
    fn datetime_is_naive_in_the_timezone_and_timestamp_is_utc() {
        let paris = chrono_tz::Europe::Paris;
        let v = || V::Date(2026, 11, 20, 10, 30, 0, 0);
        let at = |s: &str| {
            Cell::Typed(Value::Time(
                crate::core::value::parse_time(s, chrono_tz::UTC).unwrap(),
            ))
        };
        assert_eq!(
            cell(&column(Kind::DateTime, "DATETIME"), v(), paris),
            at("2026-11-20T09:30:00Z")
        );
        assert_eq!(
            cell(&column(Kind::Timestamp, "TIMESTAMP"), v(), paris),
            at("2026-11-20T10:30:00Z")
        );
        assert_eq!(
            cell(
                &column(Kind::Date, "DATE"),
                V::Date(2026, 11, 20, 0, 0, 0, 0),
                paris
            ),
            at("2026-11-19T23:00:00Z")
        );
        assert!(matches!(
            cell(
                &column(Kind::Date, "DATE"),
                V::Date(0, 0, 0, 0, 0, 0, 0),
                paris
            ),
            Cell::Invalid(_)
        ));
    }

    #[test]
    fn bits_blobs_and_big_unsigned_integers_follow_the_rules() {
        let utc = chrono_tz::UTC;
        assert_eq!(
            cell(&column(Kind::Bit, "BIT"), V::Bytes(vec![1]), utc),
            Cell::Typed(Value::Int(1))
        );
        assert!(matches!(
            cell(&column(Kind::Binary, "BLOB"), V::Bytes(vec![0xff]), utc),
            Cell::Invalid(_)
        ));
        assert!(matches!(
            cell(&column(Kind::Int, "LONGLONG"), V::UInt(u64::MAX), utc),
            Cell::Invalid(_)
        ));
        assert!(matches!(
            cell(&column(Kind::Other, "TIME"), V::Time(false, 0, 1, 0, 0, 0), utc),
            Cell::Invalid(m) if m.contains("CAST(c AS CHAR)")
        ));
    }
}
