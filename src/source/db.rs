//! What the database sources share: the settings of one query, the thread that runs a driver
//! beside the pipeline, the bounded channel that hands its rows to [`Source::next_row`],
//! resolving the plan's columns against the result, the password from the environment, and
//! how `sslmode` is read and a refused certificate explained.
//!
//! Invariants:
//! - Bounded memory: at most `DEPTH` batches of [`BATCH`] rows wait between the driver's
//!   thread and the pipeline, whatever the result's size. When the pipeline is slower, the
//!   driver blocks on the channel, stops reading its socket, and the database waits.
//! - A result ends only on the driver's explicit `Done`. A driver error, a timeout, a panic,
//!   or a thread that ends without `Done` reaches `next_row` as a structural [`SourceError`]
//!   carrying the database's message: a result is never silently cut short.
//! - Connecting, preparing the query and resolving the plan's columns happen before `open`
//!   returns, so a column the query lacks is a config error before any row is read.
//! - Dropping the source drops the receiver: the driver's next send fails, it stops, and its
//!   connection closes with it.
//! - Cells go back where they came from: `next_row` swaps the row it hands out with the cells
//!   the pipeline handed back, and a batch read to its end returns to the driver's thread (a
//!   second channel, never waited on), whose next rows are written over those cells. A text
//!   value then reuses the buffer of the one before it in its column ([`Feed::next`]), and
//!   no buffer is freed on a thread other than the one that allocated it: glibc makes such a
//!   free, and the allocations it starves, several times dearer (measured: a quarter of the
//!   PostgreSQL source's CPU, docs/BENCHMARKS.md).
//! - No password reaches a message: sources describe themselves from parsed connection
//!   settings (user, host, port, database), never from the URL's text.
//! - A server's certificate is checked in full (its chain against the roots, its names against
//!   the host) or not relied on at all ([`Tls`]): no mode checks one half of it.

use super::{Read, Source, SourceError};
use crate::core::value::Cell;
use chrono_tz::Tz;
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::env::VarError;
use std::error::Error as StdError;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

/// Rows per message between the driver's thread and the pipeline.
pub const BATCH: usize = 1024;
/// Batches that may wait in the channel.
const DEPTH: usize = 4;

/// The settings of one database query (PostgreSQL, MySQL).
pub struct Query<'a> {
    pub url: &'a str,
    pub query: &'a str,
    pub password_env: Option<&'a str>,
    /// Bounds connecting and the query (see each driver's module doc).
    pub timeout: Duration,
    /// The plan's columns, in the order the cells must come.
    pub columns: &'a [String],
    /// How naive dates and times are read.
    pub timezone: Tz,
}

enum Msg {
    Ready,
    Rows(Vec<Cell>),
    Done,
    Failed(SourceError),
}

/// The pipeline has dropped the source: the driver should stop.
#[derive(Debug)]
pub struct Gone;

/// The driver's end of the channel.
pub struct Feed {
    tx: SyncSender<Msg>,
    /// Batches read to their end by the pipeline, their cells left as it left them.
    recycled: Receiver<Vec<Cell>>,
    width: usize,
    /// `BATCH` rows of cells, the first `filled` written.
    batch: Vec<Cell>,
    filled: usize,
    rows: u64,
}

/// A batch of cells to write rows over: one handed back, or a new one.
fn batch_of(recycled: &Receiver<Vec<Cell>>, width: usize) -> Vec<Cell> {
    let mut b = recycled.try_recv().unwrap_or_default();
    b.resize(BATCH * width, Cell::Typed(crate::core::value::Value::Null));
    b
}

impl Feed {
    /// Setup is over (connected, prepared, columns resolved): `open` returns.
    pub fn ready(&self) -> Result<(), Gone> {
        self.tx.send(Msg::Ready).map_err(|_| Gone)
    }

    /// Takes one row's cells (one per plan column, drained from `row`); sends a full batch.
    pub fn row(&mut self, row: &mut Vec<Cell>) -> Result<(), Gone> {
        debug_assert_eq!(row.len(), self.width);
        for (slot, cell) in self.next().iter_mut().zip(row.drain(..)) {
            *slot = cell;
        }
        self.push()
    }

    /// The next row's cells (one per plan column), to be written in place, then [`Feed::push`]:
    /// each holds what an earlier row left in that column (a text value's buffer, say), for
    /// the driver to write over or replace. Every cell must be written.
    pub fn next(&mut self) -> &mut [Cell] {
        if self.batch.is_empty() {
            self.batch = batch_of(&self.recycled, self.width);
        }
        &mut self.batch[self.filled..self.filled + self.width]
    }

    /// The row written in [`Feed::next`]'s cells is complete; sends a full batch.
    pub fn push(&mut self) -> Result<(), Gone> {
        self.filled += self.width;
        self.rows += 1;
        if self.filled == self.batch.len() {
            let full = std::mem::take(&mut self.batch);
            self.filled = 0;
            self.tx.send(Msg::Rows(full)).map_err(|_| Gone)?;
        }
        Ok(())
    }

    /// Rows taken so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The result is complete: the last rows, then the end.
    pub fn done(mut self) {
        if self.filled > 0 {
            let mut last = std::mem::take(&mut self.batch);
            last.truncate(self.filled);
            if self.tx.send(Msg::Rows(last)).is_err() {
                return;
            }
        }
        let _ = self.tx.send(Msg::Done);
    }

    /// The query failed, before or after `ready`.
    pub fn fail(self, e: SourceError) {
        let _ = self.tx.send(Msg::Failed(e));
    }
}

/// A query whose driver runs on its own thread, read as a [`Source`].
pub struct FedSource {
    what: String,
    rx: Receiver<Msg>,
    /// Batches read to their end, back to the driver (`Feed::recycled`).
    recycle: SyncSender<Vec<Cell>>,
    width: usize,
    /// The batch being read, from cell `at`; the cells before it are the rows handed back.
    batch: Vec<Cell>,
    at: usize,
    line: u64,
    done: bool,
}

impl FedSource {
    /// Starts `drive` on a thread named `name` and waits until it is ready or has failed.
    /// `drive` must end with [`Feed::done`] or [`Feed::fail`]; anything else is an error.
    pub fn start(
        what: String,
        width: usize,
        name: &str,
        drive: impl FnOnce(Feed) + Send + 'static,
    ) -> Result<FedSource, SourceError> {
        assert!(width > 0, "a plan has at least the custom id column");
        let (tx, rx) = sync_channel(DEPTH);
        let (recycle, recycled) = sync_channel(DEPTH + 2);
        let feed = Feed {
            tx: tx.clone(),
            recycled,
            width,
            batch: Vec::new(),
            filled: 0,
            rows: 0,
        };
        let thread_what = what.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| drive(feed))) {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    let _ = tx.send(Msg::Failed(SourceError::Query {
                        what: thread_what,
                        message: format!("the database reader panicked (a bug): {why}"),
                    }));
                }
            })
            .map_err(|e| SourceError::Io {
                what: what.clone(),
                message: format!("cannot start the reader thread: {e}"),
            })?;
        match rx.recv() {
            Ok(Msg::Ready) => Ok(FedSource {
                what,
                rx,
                recycle,
                width,
                batch: Vec::new(),
                at: 0,
                line: 0,
                done: false,
            }),
            Ok(Msg::Failed(e)) => Err(e),
            Ok(Msg::Rows(_) | Msg::Done) | Err(_) => Err(SourceError::Query {
                what,
                message: "the database reader stopped before the query started".into(),
            }),
        }
    }
}

impl Source for FedSource {
    /// The row's cells are swapped with those handed back (`cells` as the last row left them).
    fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
        loop {
            if self.at + self.width <= self.batch.len() {
                if cells.len() != self.width {
                    cells.clear();
                    cells.resize(self.width, Cell::Typed(crate::core::value::Value::Null));
                }
                cells.swap_with_slice(&mut self.batch[self.at..self.at + self.width]);
                self.at += self.width;
                self.line += 1;
                return Ok(Some(Read {
                    line: self.line,
                    bad: None,
                    at: None,
                }));
            }
            if self.done {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(Msg::Rows(rows)) => {
                    let read = std::mem::replace(&mut self.batch, rows);
                    self.at = 0;
                    // A full channel (the driver has batches to spare) drops it here.
                    let _ = self.recycle.try_send(read);
                }
                Ok(Msg::Done) => self.done = true,
                Ok(Msg::Ready) => {}
                Ok(Msg::Failed(e)) => return Err(e),
                Err(_) => {
                    return Err(SourceError::Query {
                        what: self.what.clone(),
                        message: format!(
                            "the database reader stopped after row {} without finishing the result",
                            self.line
                        ),
                    })
                }
            }
        }
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// The result's column of each plan column, by exact name (`source::positions`).
pub fn resolve(what: &str, wanted: &[String], names: &[String]) -> Result<Vec<usize>, SourceError> {
    super::positions(
        what,
        wanted,
        names,
        "give the others another name (… AS other_name)",
    )
}

/// The password for a URL that holds none: from the variable `password_env` names (which
/// must then be set), else from the driver's standard variable (`PGPASSWORD`, `MYSQL_PWD`)
/// when it is set and not empty.
pub fn password(
    what: &str,
    password_env: Option<&str>,
    standard: &str,
) -> Result<Option<String>, SourceError> {
    match password_env {
        Some(var) => match std::env::var(var) {
            Ok(p) => Ok(Some(p)),
            Err(VarError::NotPresent) => Err(SourceError::Config {
                what: what.to_string(),
                message: format!(
                    "source.password_env names {var}, which is not set; export it, or remove password_env to use {standard}"
                ),
            }),
            Err(VarError::NotUnicode(_)) => Err(SourceError::Config {
                what: what.to_string(),
                message: format!("{var} (source.password_env) is not valid UTF-8"),
            }),
        },
        None => Ok(std::env::var(standard).ok().filter(|p| !p.is_empty())),
    }
}

/// The runtime an async driver runs on: one thread, the driver's own.
pub fn runtime(what: &str) -> Result<tokio::runtime::Runtime, SourceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Io {
            what: what.to_string(),
            message: format!("cannot start the driver's runtime: {e}"),
        })
}

/// How long a driver waits for the next message from the server before giving up: the
/// server's own statement timeout, plus a margin so that its message wins when it can send one.
pub fn idle_limit(timeout: Duration) -> Duration {
    timeout + Duration::from_secs(5)
}

/// How a connection uses TLS: libpq's `sslmode` words, which both database sources take.
///
/// `prefer` does not check the certificate, and that is not half-trusting it: the server's
/// answer to "do you speak TLS?" is itself unauthenticated, so whoever could present a forged
/// certificate could as well answer "no" and get plain TCP. Under `prefer` the connection is
/// encrypted against eavesdroppers and trusts the server exactly as much as plain TCP does;
/// checking the certificate there would protect against no one, while refusing the
/// self-signed certificates that servers ship with (Debian's snakeoil). Trust in the server
/// comes only from `require` and the `verify-*` modes, which check all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `disable`: plain TCP.
    Off,
    /// `prefer`, the default: TLS when the server offers it, the certificate unchecked; plain
    /// TCP only when the server answers that it has no TLS.
    Opportunistic,
    /// `require`, `verify-ca`, `verify-full`: TLS or no connection, the certificate's chain
    /// checked against the roots (`sslrootcert=FILE`, else the Mozilla roots) and its names
    /// against the host. `require` and `verify-ca` check more than libpq's do, never less.
    Verified,
}

impl Tls {
    /// The mode libpq's `sslmode` word names; `None` for a word batchsync does not take
    /// (`allow`, whose plain-first attempt no one needs from a batch job).
    pub fn from_sslmode(word: &str) -> Option<Tls> {
        match word {
            "disable" => Some(Tls::Off),
            "prefer" => Some(Tls::Opportunistic),
            "require" | "verify-ca" | "verify-full" => Some(Tls::Verified),
            _ => None,
        }
    }

    /// `sslrootcert` under a mode that checks no certificate: the user expects a check that
    /// would not happen, so it is a config error rather than a file silently ignored.
    pub fn check_rootcert(self, what: &str, rootcert: Option<&Path>) -> Result<(), SourceError> {
        match (self, rootcert) {
            (Tls::Off | Tls::Opportunistic, Some(path)) => Err(SourceError::Config {
                what: what.to_string(),
                message: format!(
                    "sslrootcert={} names a CA to check the server's certificate against, but \
                     sslmode {} checks no certificate: add sslmode=verify-full to the URL",
                    path.display(),
                    if self == Tls::Off {
                        "disable"
                    } else {
                        "prefer (the default)"
                    }
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// The certificates of the PEM file `sslrootcert` names (relative to the working directory,
/// as libpq reads it): at least one, else a config error.
pub fn root_certificates(
    what: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    let bad = |message: String| SourceError::Config {
        what: what.to_string(),
        message: format!("sslrootcert {}: {message}", path.display()),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Why the server's certificate was refused, with what to do about it, when `e` is or wraps
/// the certificate error rustls raised (drivers wrap it in an `io::Error`, whose `source`
/// skips it, hence the `get_ref`).
pub fn certificate_refusal(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut at = Some(e);
    while let Some(err) = at {
        let refused = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(c)) = refused {
            use rustls::CertificateError as C;
            let hint = match c {
                C::UnknownIssuer => {
                    "; it is not signed by a CA batchsync trusts: name the PEM file of the CA \
                     that signed it with sslrootcert=FILE in the URL"
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "; connect by a host name (or IP address) the certificate names"
                }
                C::NotValidYet | C::NotValidYetContext { .. } => "; check this machine's clock",
                _ => "",
            };
            return Some(format!(
                "the server's TLS certificate is refused ({}){hint}",
                rustls::Error::InvalidCertificate(c.clone())
            ));
        }
        at = err.source();
    }
    None
}

/// The URL's query parameters named in `keys`, taken out of it (in the URL's order,
/// percent-decoded), and the URL without them, for the options a driver does not parse.
pub fn take_url_params(url: &str, keys: &[&str]) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        let key = percent_decode(key);
        if keys.contains(&key.as_str()) {
            taken.push((key, percent_decode(value)));
        } else {
            kept.push(param);
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, taken)
}

/// `%XX` escapes decoded (a malformed one is kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::Value;
    use rstest::rstest;

    fn int(i: i64) -> Cell {
        Cell::Typed(Value::Int(i))
    }

    fn read_all(src: &mut FedSource) -> Result<Vec<(u64, Vec<Cell>)>, SourceError> {
        let mut out = Vec::new();
        let mut cells = Vec::new();
        while let Some(r) = src.next_row(&mut cells)? {
            out.push((r.line, cells.clone()));
        }
        Ok(out)
    }

    #[test]
    fn rows_cross_the_channel_in_order_with_their_row_numbers() {
        let n = BATCH as i64 * 3 + 7;
        let mut src = FedSource::start("test".into(), 2, "feed-test", move |mut feed| {
            feed.ready().unwrap();
            for i in 0..n {
                if feed.row(&mut vec![int(i), int(-i)]).is_err() {
                    return;
                }
            }
            feed.done();
        })
        .unwrap();
        let rows = read_all(&mut src).unwrap();
        assert_eq!(rows.len() as i64, n);
        assert_eq!(rows[1500], (1501, vec![int(1500), int(-1500)]));
        assert_eq!(src.next_row(&mut Vec::new()).unwrap(), None);
    }

    #[test]
    fn cells_written_over_those_handed_back_give_each_row_its_own_values() {
        // Texts of changing lengths, a null among them, over several batches; the pipeline
        // takes some cells out of the rows it is handed (as the encoder does a declared
        // column's) and leaves the others.
        // Past DEPTH + 2 batches the driver must wait for the pipeline, so batches come back.
        let n = BATCH * 12 + 5;
        let text = |i: usize| "x".repeat(i % 37) + &i.to_string();
        let reused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = reused.clone();
        let mut src = FedSource::start("test".into(), 3, "feed-test", move |mut feed| {
            feed.ready().unwrap();
            for i in 0..n {
                let row = feed.next();
                if matches!(&row[0], Cell::Typed(Value::Text(_))) {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let t = text(i);
                super::super::sqltypes::text_into(t.as_bytes(), "text", &mut row[0]);
                row[1] = if i % 5 == 0 {
                    Cell::Typed(Value::Null)
                } else {
                    int(i as i64)
                };
                super::super::sqltypes::text_into(t.as_bytes(), "text", &mut row[2]);
                if feed.push().is_err() {
                    return;
                }
            }
            feed.done();
        })
        .unwrap();
        let mut cells = Vec::new();
        let mut i = 0;
        while let Some(r) = src.next_row(&mut cells).unwrap() {
            let t = Cell::Typed(Value::Text(text(i)));
            let second = if i % 5 == 0 {
                Cell::Typed(Value::Null)
            } else {
                int(i as i64)
            };
            assert_eq!(
                (r.line, &cells),
                (i as u64 + 1, &vec![t.clone(), second, t])
            );
            if i % 3 == 0 {
                cells[2] = Cell::Text(String::new());
            }
            i += 1;
        }
        assert_eq!(i, n);
        assert!(
            reused.load(std::sync::atomic::Ordering::Relaxed) >= BATCH,
            "no cell came back"
        );
    }

    #[test]
    fn a_failure_mid_stream_is_an_error_not_an_early_end() {
        let mut src = FedSource::start("test".into(), 1, "feed-test", |mut feed| {
            feed.ready().unwrap();
            for i in 0..(BATCH as i64 + 3) {
                feed.row(&mut vec![int(i)]).unwrap();
            }
            feed.fail(SourceError::Query {
                what: "test".into(),
                message: "connection reset".into(),
            });
        })
        .unwrap();
        let err = read_all(&mut src).unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
    }

    #[test]
    fn a_driver_that_ends_without_done_is_an_error() {
        let mut src = FedSource::start("test".into(), 1, "feed-test", |mut feed| {
            feed.ready().unwrap();
            feed.row(&mut vec![int(1)]).unwrap();
        })
        .unwrap();
        let err = read_all(&mut src).unwrap_err();
        assert!(err.to_string().contains("without finishing"), "{err}");
    }

    #[test]
    fn a_panicking_driver_is_an_error_with_its_message() {
        let mut src = FedSource::start("test".into(), 1, "feed-test", |feed| {
            feed.ready().unwrap();
            panic!("decoder exploded");
        })
        .unwrap();
        let err = read_all(&mut src).unwrap_err();
        assert!(err.to_string().contains("decoder exploded"), "{err}");
    }

    #[test]
    fn a_setup_failure_is_returned_by_start() {
        let err = FedSource::start("test".into(), 1, "feed-test", |feed| {
            feed.fail(SourceError::Query {
                what: "test".into(),
                message: "relation \"nope\" does not exist".into(),
            })
        })
        .map(|_| ())
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn dropping_the_source_stops_the_driver() {
        let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
        let src = FedSource::start("test".into(), 1, "feed-test", move |mut feed| {
            feed.ready().unwrap();
            let mut i = 0;
            while feed.row(&mut vec![int(i)]).is_ok() {
                i += 1;
            }
            stopped_tx.send(i).unwrap();
        })
        .unwrap();
        drop(src);
        let sent = stopped_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the driver stops");
        // The channel holds at most DEPTH batches: the driver never ran ahead of that.
        assert!(sent <= (BATCH * (DEPTH + 2)) as i64, "{sent}");
    }

    #[test]
    fn columns_resolve_by_name_and_a_missing_or_doubled_one_is_a_config_error() {
        let names: Vec<String> = ["id", "email", "extra", "dup", "dup"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let want = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            resolve("q", &want(&["email", "id"]), &names).unwrap(),
            vec![1, 0]
        );
        let missing = resolve("q", &want(&["id", "amount"]), &names).unwrap_err();
        assert!(missing.is_config() && missing.to_string().contains("\"amount\""));
        let doubled = resolve("q", &want(&["dup"]), &names).unwrap_err();
        assert!(doubled.is_config(), "{doubled}");
        assert!(
            doubled
                .to_string()
                .contains("named twice, at positions 4 and 5"),
            "{doubled}"
        );
    }

    #[test]
    fn an_unset_password_variable_is_a_config_error_naming_it() {
        let err = password(
            "q",
            Some("BATCHSYNC_TEST_SURELY_UNSET_PASSWORD_VAR"),
            "PGPASSWORD",
        )
        .unwrap_err();
        assert!(err.is_config());
        assert!(err
            .to_string()
            .contains("BATCHSYNC_TEST_SURELY_UNSET_PASSWORD_VAR"));
    }

    #[rstest]
    #[case("mysql://u@h/db", &[], "mysql://u@h/db")]
    #[case("mysql://u@h/db?sslmode=require", &[("sslmode", "require")], "mysql://u@h/db")]
    #[case(
        "mysql://u@h/db?a=1&sslrootcert=%2Fetc%2Fca%20x.pem&b=2",
        &[("sslrootcert", "/etc/ca x.pem")],
        "mysql://u@h/db?a=1&b=2"
    )]
    #[case(
        "postgres://u@h/db?sslmode=prefer&sslmode=disable",
        &[("sslmode", "prefer"), ("sslmode", "disable")],
        "postgres://u@h/db"
    )]
    fn url_parameters_are_taken_out_decoded(
        #[case] url: &str,
        #[case] taken: &[(&str, &str)],
        #[case] rest: &str,
    ) {
        let (got_rest, got) = take_url_params(url, &["sslmode", "sslrootcert"]);
        assert_eq!(got_rest, rest);
        let want: Vec<(String, String)> = taken
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_root_certificate_under_a_mode_that_checks_none_is_a_config_error() {
        let ca = Some(Path::new("ca.pem"));
        for mode in [Tls::Off, Tls::Opportunistic] {
            let err = mode.check_rootcert("db", ca).unwrap_err();
            assert!(err.is_config(), "{err}");
            assert!(err.to_string().contains("sslmode=verify-full"), "{err}");
        }
        assert!(Tls::Verified.check_rootcert("db", ca).is_ok());
        assert!(Tls::Opportunistic.check_rootcert("db", None).is_ok());
    }

    #[test]
    fn a_certificate_refusal_is_found_inside_an_io_error_and_says_what_to_do() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let said = certificate_refusal(&io).expect("a refusal");
        assert!(said.contains("UnknownIssuer"), "{said}");
        assert!(said.contains("sslrootcert=FILE"), "{said}");
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(certificate_refusal(&other), None);
    }
}
