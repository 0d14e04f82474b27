//! MySQL and MariaDB queries (`type = "mysql"`): mysql_async on the source's own thread (a
//! current-thread runtime, see `db`). The query is prepared and run over the binary protocol,
//! so values come typed, and its result is read one row at a time as the pipeline takes them.
//!
//! Connection:
//! - `url` is `mysql://user@host:3306/db`. The password comes from the URL if it holds one,
//!   else from the variable `password_env` names, else from `MYSQL_PWD`.
//! - `sslmode` takes libpq's words, applied as for PostgreSQL (rustls; `db::Tls` says why):
//!   - `disable`: plain TCP.
//!   - `prefer`, the default (MySQL's own client prefers TLS too): TLS when the server offers
//!     it, plain TCP only when its greeting says it has none. The certificate is not checked.
//!   - `require`, `verify-ca`, `verify-full`: TLS or no connection, the chain checked against
//!     the PEM file `sslrootcert=FILE` names, else the Mozilla roots, and the name against the
//!     host. Never a fallback.
//!
//!   MySQL's URI spellings are read too:
//!   `ssl-mode=DISABLED|PREFERRED|REQUIRED|VERIFY_CA|VERIFY_IDENTITY` (`REQUIRED` checks the
//!   certificate here, as `require` does) and `ssl-ca=FILE`. The driver's own TLS switches
//!   (`require_ssl`, `verify_ca`, `verify_identity`, `built_in_roots`) are refused: they can
//!   check half a certificate.
//! - batchsync connects where the URL says: over TCP to its host and port, or through the
//!   Unix socket `socket=PATH` names (no TLS there: the bytes stay on the machine).
//!   mysql_async would otherwise move to the socket path the server reports
//!   (`prefer_socket`), unchecked: on another machine that path may be another server's,
//!   and the move drops TLS. `prefer_socket=true` is refused.
//! - The session's `time_zone` is set to `+00:00`, so `TIMESTAMP` values arrive in UTC.
//! - `source.timeout` bounds connecting, and is the session's statement time limit
//!   (`max_statement_time` on MariaDB, `max_execution_time` on MySQL); a server that sends
//!   nothing for longer than that (plus a margin) is given up on.
//! - Bytes received are not counted here, unlike PostgreSQL: mysql_async opens its sockets
//!   itself and lends them to no one.
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

use super::db::{self, FedSource, Feed, Query, Tls};
use super::sqltypes;
use super::SourceError;
use crate::core::value::{Cell, Value};
use chrono::NaiveDate;
use chrono_tz::Tz;
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, Opts, OptsBuilder, SslOpts};
use rustls::pki_types::CertificateDer;
use std::path::PathBuf;
use std::time::Duration;

/// Opens the query: connects, prepares it and resolves the plan's columns before returning.
pub fn open(q: &Query<'_>) -> Result<FedSource, SourceError> {
    let link = Link::new(q.url, q.password_env)?;
    let what = link.what.clone();
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
            Ok(rt) => rt.block_on(job.run(feed, link)),
            Err(e) => feed.fail(e),
        },
    )
}

/// The server to connect to: the URL's settings, the password from the environment, and
/// TLS as `sslmode` asks.
struct Link {
    /// `mysql://user@host:port/db`: never a password.
    what: String,
    /// Without TLS settings, and never moving to the server's socket.
    opts: Opts,
    tls: Tls,
    /// The certificates `sslrootcert` names; empty for the Mozilla roots.
    roots: Vec<CertificateDer<'static>>,
}

/// The TLS settings of the URL, which batchsync reads and mysql_async must not see.
struct TlsParams {
    tls: Tls,
    rootcert: Option<PathBuf>,
}

/// Takes `sslmode` (or MySQL's `ssl-mode`; the last one wins), `sslrootcert` (or `ssl-ca`)
/// and `prefer_socket` out of the URL; refuses the driver's own TLS switches.
fn tls_params(url: &str) -> Result<(String, TlsParams), String> {
    const DRIVERS: [&str; 4] = [
        "require_ssl",
        "verify_ca",
        "verify_identity",
        "built_in_roots",
    ];
    let keys = [
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-ca",
        "prefer_socket",
    ];
    let (rest, params) = db::take_url_params(url, &[&keys[..], &DRIVERS[..]].concat());
    let mut taken = TlsParams {
        tls: Tls::Opportunistic,
        rootcert: None,
    };
    for (key, value) in params {
        match key.as_str() {
            "sslmode" => {
                taken.tls = Tls::from_sslmode(&value).ok_or_else(|| {
                    format!(
                        "sslmode={value} is not one batchsync takes: disable, prefer, require, \
                         verify-ca or verify-full"
                    )
                })?
            }
            "ssl-mode" => {
                taken.tls = match value.to_ascii_uppercase().as_str() {
                    "DISABLED" => Tls::Off,
                    "PREFERRED" => Tls::Opportunistic,
                    "REQUIRED" | "VERIFY_CA" | "VERIFY_IDENTITY" => Tls::Verified,
                    _ => {
                        return Err(format!(
                            "ssl-mode={value} is not one of DISABLED, PREFERRED, REQUIRED, \
                             VERIFY_CA, VERIFY_IDENTITY"
                        ))
                    }
                }
            }
            "sslrootcert" | "ssl-ca" => taken.rootcert = Some(PathBuf::from(value)),
            "prefer_socket" if value != "true" => {}
            "prefer_socket" => {
                return Err(
                    "prefer_socket=true would move the connection to the socket path \
                     the server reports, unchecked and without TLS: name the socket with \
                     socket=PATH instead"
                        .into(),
                )
            }
            driver => {
                return Err(format!(
                    "{driver} is mysql_async's own TLS switch, which can check half a \
                     certificate: say sslmode=disable, prefer, require or verify-full instead"
                ))
            }
        }
    }
    Ok((rest, taken))
}

impl Link {
    fn new(url: &str, password_env: Option<&str>) -> Result<Link, SourceError> {
        let bad_url = |message: String| SourceError::Config {
            what: "source.url".into(),
            message: format!("not a MySQL connection URL: {message}"),
        };
        let (url, params) = tls_params(url).map_err(bad_url)?;
        let opts = Opts::from_url(&url).map_err(|e| bad_url(crate::errors::chain(&e)))?;
        let what = describe(&opts);
        let mut builder = OptsBuilder::from_opts(opts.clone()).prefer_socket(false);
        if opts.pass().is_none() {
            if let Some(p) = db::password(&what, password_env, "MYSQL_PWD")? {
                builder = builder.pass(Some(p));
            }
        }
        params
            .tls
            .check_rootcert(&what, params.rootcert.as_deref())?;
        let roots = match &params.rootcert {
            Some(path) => db::root_certificates(&what, path)?,
            None => Vec::new(),
        };
        // mysql_async builds its rustls config on the process's default provider. ring is the
        // only one compiled in, so rustls would pick it anyway; installing it says so, and
        // keeps that true should another crate ever bring aws-lc-rs in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Link {
            what,
            opts: builder.into(),
            tls: params.tls,
            roots,
        })
    }

    async fn connect(&self) -> Result<Conn, mysql_async::Error> {
        let with_tls = |ssl: SslOpts| -> Opts {
            OptsBuilder::from_opts(self.opts.clone())
                .ssl_opts(Some(ssl))
                .into()
        };
        match self.tls {
            Tls::Off => Conn::new(self.opts.clone()).await,
            Tls::Opportunistic => {
                let unchecked = SslOpts::default().with_danger_accept_invalid_certs(true);
                match Conn::new(with_tls(unchecked)).await {
                    // The server's greeting says it has no TLS: the one case that goes plain.
                    Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)) => {
                        Conn::new(self.opts.clone()).await
                    }
                    other => other,
                }
            }
            Tls::Verified => {
                let roots = self.roots.iter().map(|c| c.to_vec().into()).collect();
                let checked = SslOpts::default()
                    .with_root_certs(roots)
                    .with_disable_built_in_roots(!self.roots.is_empty());
                Conn::new(with_tls(checked)).await
            }
        }
    }
}

/// Why connecting failed, in words that say what to do where the driver's do not.
fn connect_error(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer) => {
            "the server offers no TLS, and sslmode asks for it (require, verify-ca and \
             verify-full never fall back to plain TCP): enable TLS on the server"
                .into()
        }
        _ => db::certificate_refusal(e).unwrap_or_else(|| crate::errors::chain(e)),
    }
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

    async fn run(self, mut feed: Feed, link: Link) {
        let mut conn = match tokio::time::timeout(self.timeout, link.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return feed.fail(SourceError::Io {
                    what: self.what.clone(),
                    message: format!("cannot connect: {}", connect_error(&e)),
                });
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
        (Kind::Text | Kind::Binary, V::Bytes(b)) => sqltypes::text_owned(b, &c.ty),
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
    use rstest::rstest;

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

    #[rstest]
    #[case("mysql://u@h/db", Tls::Opportunistic, None, "mysql://u@h/db")]
    #[case("mysql://u@h/db?sslmode=disable", Tls::Off, None, "mysql://u@h/db")]
    #[case(
        "mysql://u@h/db?sslmode=verify-full&sslrootcert=%2Fca.pem&stmt_cache_size=8",
        Tls::Verified,
        Some("/ca.pem"),
        "mysql://u@h/db?stmt_cache_size=8"
    )]
    #[case(
        "mysql://u@h/db?ssl-mode=required",
        Tls::Verified,
        None,
        "mysql://u@h/db"
    )]
    #[case(
        "mysql://u@h/db?ssl-mode=VERIFY_IDENTITY&ssl-ca=ca.pem",
        Tls::Verified,
        Some("ca.pem"),
        "mysql://u@h/db"
    )]
    #[case(
        "mysql://u@h/db?ssl-mode=PREFERRED",
        Tls::Opportunistic,
        None,
        "mysql://u@h/db"
    )]
    #[case(
        "mysql://u@h/db?prefer_socket=false",
        Tls::Opportunistic,
        None,
        "mysql://u@h/db"
    )]
    fn tls_settings_are_taken_out_of_the_url(
        #[case] url: &str,
        #[case] tls: Tls,
        #[case] rootcert: Option<&str>,
        #[case] rest: &str,
    ) {
        let (got_rest, got) = tls_params(url).unwrap();
        assert_eq!(
            (got_rest.as_str(), got.tls, got.rootcert),
            (rest, tls, rootcert.map(PathBuf::from))
        );
        assert!(Opts::from_url(&got_rest).is_ok(), "{got_rest}");
    }

    #[rstest]
    #[case("mysql://u@h/db?require_ssl=true", "require_ssl")]
    #[case("mysql://u@h/db?sslmode=require&verify_ca=false", "verify_ca")]
    #[case("mysql://u@h/db?verify_identity=false", "verify_identity")]
    #[case("mysql://u@h/db?sslmode=allow", "sslmode=allow")]
    #[case("mysql://u@h/db?ssl-mode=sometimes", "ssl-mode=sometimes")]
    #[case("mysql://u@h/db?prefer_socket=true", "socket=PATH")]
    fn tls_settings_that_could_trust_half_a_certificate_are_refused(
        #[case] url: &str,
        #[case] says: &str,
    ) {
        let err = tls_params(url).map(|_| ()).unwrap_err();
        assert!(err.contains(says), "{err}");
    }

    #[test]
    fn the_connection_never_moves_to_the_servers_socket() {
        let link = Link::new("mysql://u:p@db.example/shop", None).unwrap();
        assert!(!link.opts.prefer_socket());
        assert!(link.opts.ssl_opts().is_none());
        let err = Link::new("mysql://u:p@db.example/shop?sslrootcert=ca.pem", None)
            .map(|_| ())
            .unwrap_err();
        assert!(err.is_config(), "{err}");
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
