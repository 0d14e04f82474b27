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
mod flatjson;
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

    /// The file's length when the read began.
    pub fn bytes(&self) -> u64 {
        self.len
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

/// A row read again for its event is not the row the diff read: the file changed during the
/// run.
pub(crate) fn changed(what: &str, line: u64) -> SourceError {
    SourceError::Structure {
        what: what.to_string(),
        line,
        message: "the row read again to build its event is not the row read for the diff: the file changed during the run. Nothing was committed; run again once it is complete".into(),
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
    /// The file offset of the row's first byte, where the source can read it again there
    /// ([`Source::refetch`]); `None` for a query.
    pub at: Option<u64>,
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

    /// For a second core: a reader of the source's second part, this source then reading up
    /// to where that part begins. `None` when the source cannot be split (a query, a small
    /// file) or has been read from already. See [`Split`].
    fn split(&mut self) -> Option<Tail> {
        None
    }

    /// A second reader of the same file, which reads a row again from where it began
    /// ([`Read::at`]): the snapshot then leaves the rows' values in the file and reads back
    /// only those of the rows that become events (`snapshot::Payloads::Refetch`). `None` for a
    /// query, whose rows cannot be read twice.
    fn refetch(&self) -> Option<Box<dyn Refetch>> {
        None
    }
}

/// Reads a file's rows again, one at a time, by where each began.
pub trait Refetch: Send {
    /// The row that began at byte `at`, on line `line`, into `cells` (as [`Source::next_row`]
    /// gave it). A structural error when no row is there any more.
    fn row_at(&mut self, at: u64, line: u64, cells: &mut Vec<Cell>) -> Result<Read, SourceError>;

    /// The file, for messages.
    fn describe(&self) -> String;
}

/// The second part of a split file, read on another thread.
pub struct Tail {
    pub source: Box<dyn Source>,
    pub verdict: Verdict,
}

/// The head's word on the tail.
pub struct Verdict(std::sync::Arc<Split>);

impl Verdict {
    /// Whether the tail's rows count: false when the head found that the tail began inside a
    /// record and read on to the end itself. Asked once both parts are read.
    pub fn kept(&self) -> bool {
        !self.0.abandoned()
    }
}

/// A file read in two parts, by two threads, with exact line numbers and nothing read twice or
/// skipped.
///
/// The tail finds the *boundary*: the first record start at or after the file's middle (for
/// CSV, a line end outside quotes by quote parity from the start of the file; for NDJSON, any
/// line end), and the line it begins on (line ends counted before it). It reads from there to
/// the end. The head reads from the start; the first record it would begin at or past the
/// middle waits for the boundary, and at the boundary it stops. If the head's last record ran
/// past the boundary (quote parity can be fooled: csv-core takes a quote inside an unquoted
/// field as text), the boundary was no record start: the head drops the split and reads on to
/// the end, and the tail's rows and errors are thrown away (`Verdict::kept`).
pub struct Split {
    mid: u64,
    boundary: std::sync::Mutex<Boundary>,
    found: std::sync::Condvar,
    abandoned: std::sync::atomic::AtomicBool,
}

/// Where the tail begins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boundary {
    /// Not found yet.
    Unknown,
    /// The tail's first byte and the line it is on.
    At { offset: u64, line: u64 },
    /// No record starts past the middle: the head reads everything.
    None,
}

impl Split {
    pub fn new(mid: u64) -> std::sync::Arc<Split> {
        std::sync::Arc::new(Split {
            mid,
            boundary: std::sync::Mutex::new(Boundary::Unknown),
            found: std::sync::Condvar::new(),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn mid(&self) -> u64 {
        self.mid
    }

    pub fn tail(self: &std::sync::Arc<Split>, source: Box<dyn Source>) -> Tail {
        Tail {
            source,
            verdict: Verdict(self.clone()),
        }
    }

    /// The tail's finding.
    pub fn publish(&self, b: Boundary) {
        *self.boundary.lock().unwrap_or_else(|e| e.into_inner()) = b;
        self.found.notify_all();
    }

    /// The boundary, waiting for the tail to find it.
    pub fn wait(&self) -> Boundary {
        let mut b = self.boundary.lock().unwrap_or_else(|e| e.into_inner());
        while *b == Boundary::Unknown {
            b = self.found.wait(b).unwrap_or_else(|e| e.into_inner());
        }
        *b
    }

    /// Publishes "no boundary" unless one was published: a tail dropped before it found the
    /// boundary (an error, a panic) never leaves the head waiting.
    pub fn give_up(&self) {
        let mut b = self.boundary.lock().unwrap_or_else(|e| e.into_inner());
        if *b == Boundary::Unknown {
            *b = Boundary::None;
            self.found.notify_all();
        }
    }

    /// The tail's first step: finds the boundary (`quoted`: CSV's quote parity), publishes
    /// it, and returns where the tail begins and on which line, if anywhere.
    pub(crate) fn start_tail(
        &self,
        path: &std::path::Path,
        quoted: bool,
    ) -> Result<Option<(u64, u64)>, SourceError> {
        let t = std::time::Instant::now();
        let b = find_boundary(path, self, quoted).map_err(|e| {
            self.give_up();
            SourceError::Io {
                what: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }
        })?;
        self.publish(b);
        tracing::debug!(boundary = ?b, ms = t.elapsed().as_secs_f64() * 1000.0, "source: split");
        Ok(match b {
            Boundary::At { offset, line } => Some((offset, line)),
            Boundary::None | Boundary::Unknown => None,
        })
    }

    /// The head read past the boundary: the tail's rows are not to be used.
    pub fn abandon(&self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Release);
        // A tail still looking for the boundary need not be waited for.
        self.found.notify_all();
    }

    pub fn abandoned(&self) -> bool {
        self.abandoned.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Files smaller than this are read on one thread: a second one would not pay for itself.
pub const SPLIT_MIN_BYTES: u64 = 8 << 20;

/// The tail's first byte: the first line start at or after the split's middle, where a line
/// start follows a line feed (with `quoted`, one outside quotes by quote parity from the start
/// of the file), and the line it begins on. Reads the file up to there: ~6 ms per 10 MB.
pub(crate) fn find_boundary(
    path: &std::path::Path,
    split: &Split,
    quoted: bool,
) -> std::io::Result<Boundary> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 << 10];
    let (mut at, mut quotes, mut lines) = (0u64, 0u64, 0u64);
    // Up to the byte before the middle, counted in bulk; from there, byte by byte.
    let bulk = split.mid().saturating_sub(1);
    loop {
        if split.abandoned() {
            return Ok(Boundary::None);
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(Boundary::None);
        }
        let chunk = &buf[..n];
        let counted = (bulk.saturating_sub(at) as usize).min(n);
        let (l, q) = count_lines_and_quotes(&chunk[..counted], quoted);
        (lines, quotes) = (lines + l, quotes + q);
        for (i, &c) in chunk.iter().enumerate().skip(counted) {
            match c {
                b'"' if quoted => quotes += 1,
                b'\n' => {
                    lines += 1;
                    if quotes % 2 == 0 {
                        let offset = at + i as u64 + 1;
                        let more = offset < file.metadata()?.len();
                        return Ok(if more {
                            Boundary::At {
                                offset,
                                line: lines + 1,
                            }
                        } else {
                            Boundary::None
                        });
                    }
                }
                _ => {}
            }
        }
        at += n as u64;
    }
}

/// How many of `bytes` are a line feed, and a double quote (when `quoted`): eight bytes at a
/// time, each match a 1 in its byte's lane of a counter (~15x the byte loop here, which the
/// compiler does not vectorise for the baseline x86-64).
pub(crate) fn count_lines_and_quotes(bytes: &[u8], quoted: bool) -> (u64, u64) {
    use crate::source::csv::bytes_equal;
    /// Sums the eight byte lanes of `x`.
    fn lanes(x: u64) -> u64 {
        const M: u64 = 0x00ff_00ff_00ff_00ff;
        let pairs = (x & M) + ((x >> 8) & M);
        pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48
    }
    let (mut lines, mut quotes) = (0u64, 0u64);
    let words = bytes.chunks_exact(8);
    let rest = words.remainder();
    let mut words = words.peekable();
    while words.peek().is_some() {
        // At most 255 words per round: a lane holds up to 255.
        let (mut l, mut q) = (0u64, 0u64);
        for w in words.by_ref().take(255) {
            let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            l += bytes_equal(x, b'\n') >> 7;
            if quoted {
                q += bytes_equal(x, b'"') >> 7;
            }
        }
        lines += lanes(l);
        quotes += lanes(q);
    }
    for &b in rest {
        lines += u64::from(b == b'\n');
        quotes += u64::from(quoted && b == b'"');
    }
    (lines, quotes)
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

/// Reading a split source as the snapshot does, for the sources' tests.
#[cfg(test)]
pub(crate) mod split_testing {
    use super::{Read, Source, Tail};
    use crate::core::value::Cell;

    pub type Rows = Result<Vec<(Read, Vec<Cell>)>, String>;

    /// Every row of a source, then its `finish`.
    pub fn drain(src: &mut dyn Source) -> Rows {
        let mut out = Vec::new();
        let mut cells = Vec::new();
        while let Some(r) = src.next_row(&mut cells).map_err(|e| e.to_string())? {
            out.push((r, cells.clone()));
        }
        src.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The rows of a head and its tail read on two threads and joined as the snapshot joins
    /// them (the head's error first; the tail's rows only if kept), and whether the tail was
    /// kept (`None`: the source did not split).
    pub fn split_read(head: &mut dyn Source) -> (Rows, Option<bool>) {
        let Some(Tail {
            mut source,
            verdict,
        }) = head.split()
        else {
            return (drain(head), None);
        };
        let (h, t) = std::thread::scope(|s| {
            let t = s.spawn(move || {
                let mut out = Vec::new();
                let mut cells = Vec::new();
                loop {
                    match source.next_row(&mut cells) {
                        Ok(Some(r)) => out.push((r, cells.clone())),
                        Ok(None) => break,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                source.finish().map_err(|e| e.to_string())?;
                Ok(out)
            });
            let mut out = Vec::new();
            let mut cells = Vec::new();
            let h = loop {
                match head.next_row(&mut cells) {
                    Ok(Some(r)) => out.push((r, cells.clone())),
                    Ok(None) => break Ok(out),
                    Err(e) => break Err(e.to_string()),
                }
            };
            (h, t.join().unwrap())
        });
        let kept = verdict.kept();
        let rows = match (h, kept) {
            (Err(e), _) => Err(e),
            (Ok(h), false) => head.finish().map(|()| h).map_err(|e| e.to_string()),
            (Ok(mut h), true) => t.and_then(|t| {
                h.extend(t);
                head.finish().map_err(|e| e.to_string())?;
                Ok(h)
            }),
        };
        (rows, Some(kept))
    }
}

#[cfg(test)]
mod tests {
    use super::count_lines_and_quotes;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn lines_and_quotes_are_counted_exactly(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'"'), Just(b'a'), Just(0x8a), Just(0xa2), any::<u8>()],
                0..700,
            ),
            quoted in any::<bool>(),
        ) {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            let quotes = bytes.iter().filter(|&&b| b == b'"').count() as u64;
            prop_assert_eq!(
                count_lines_and_quotes(&bytes, quoted),
                (lines, if quoted { quotes } else { 0 })
            );
        }
    }

    #[test]
    fn a_long_run_of_matches_fills_no_lane_past_its_byte() {
        let bytes = vec![b'\n'; 8 * 255 * 3 + 5];
        assert_eq!(
            count_lines_and_quotes(&bytes, true),
            (bytes.len() as u64, 0)
        );
    }
}
