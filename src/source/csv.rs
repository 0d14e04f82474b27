//! CSV files: a header row, RFC 4180 quoting (embedded newlines, doubled quotes), a configurable
//! delimiter, an optional UTF-8 BOM, LF or CRLF line ends.
//!
//! The reader is the `csv` crate's grammar (csv-core's state machine with a CRLF terminator,
//! double quotes, no escape or comment), written out here so that its common case is fast: a
//! line with no quote and no carriage return is split on the delimiter eight bytes at a time;
//! any other record takes the state machine byte by byte. The tests hold it to the `csv` crate.
//!
//! Invariants:
//! - Every cell is untyped text; typing happens in the snapshot by `[mapping] types`.
//! - A file that does not end with a line end, or whose last record holds an unterminated quote,
//!   is cut short: a structural error, so a half-written export never becomes a baseline.
//!   `require_final_newline = false` takes a last record without a line end (RFC 4180 allows
//!   it), never one with an open quote.
//! - A file whose size or modification time changed during the read is refused at its end:
//!   it was still being written.
//! - A record with the wrong number of fields is a bad row (its key still read when it can be).
//! - A row's line is the 1-based line where its record starts, counting every line feed before
//!   it (those inside quoted fields and blank lines included).
//! - Memory: one read buffer (1 MB, more only for a longer record) and one record.

use super::{Boundary, Read, Source, SourceError, Split, Tail};
use crate::core::value::Cell;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BUFFER: usize = 1 << 20;

pub struct CsvSource {
    path: PathBuf,
    records: Records<File>,
    positions: Vec<usize>,
    width: usize,
    last_line: u64,
    require_final_newline: bool,
    stamp: super::FileStamp,
    role: Role,
    /// Files at least this long are split (`Source::split`).
    split_from: u64,
}

/// Which part of the file a source reads (`super::Split`).
enum Role {
    Whole,
    /// From the start to the boundary; `known` once the boundary is `records.stop_at`.
    Head {
        split: Arc<Split>,
        known: bool,
    },
    /// From the boundary to the end; `started` once the boundary is found.
    Tail {
        split: Arc<Split>,
        started: bool,
    },
}

/// Records, read from a buffered byte stream: field `i` of the current record is
/// `bytes()[fields[i].0..fields[i].1]`, unescaped.
struct Records<R> {
    input: R,
    buf: Vec<u8>,
    /// Unread bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    eof: bool,
    delimiter: u8,
    /// Whether the fast path may be taken (a delimiter that is no quote or line end).
    fast: bool,
    /// The line of `buf[pos]`.
    line: u64,
    /// The last byte of the input, once read.
    last_byte: Option<u8>,
    /// The current record's unescaped bytes, unless it is `buf[line_at..]` as read.
    data: Vec<u8>,
    line_at: Option<usize>,
    fields: Vec<(usize, usize)>,
    /// The line where the current record starts.
    record_line: u64,
    /// The input's offset of the current record's first byte.
    record_at: u64,
    /// The current record reached the end of the input inside a quoted field.
    open_quote: bool,
    /// The input's offset of `buf[0]`.
    base: u64,
    /// A record starting at or past this offset is not read (`stopped`): a split file's head.
    stop_at: u64,
    stopped: bool,
    /// The input's offset just past the last record read (its line end included).
    last_end: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    StartField,
    InField,
    InQuoted,
    /// A quote inside a quoted field: the field's end, or the first of a doubled quote.
    QuoteInQuoted,
}

const LO: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of every byte of `x` that equals `b`, exactly (no false positives).
#[inline(always)]
pub(crate) fn bytes_equal(x: u64, b: u8) -> u64 {
    let y = x ^ (LO * u64::from(b));
    !(((y & LOW7).wrapping_add(LOW7)) | y | LOW7)
}

/// Where a quoted field's closing quote is in `bytes` (which start just past its opening
/// quote), if it comes before any line end or carriage return.
#[inline]
fn quoted_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let x = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let hits = bytes_equal(x, b'"') | bytes_equal(x, b'\n') | bytes_equal(x, b'\r');
        if hits != 0 {
            let at = i + (hits.trailing_zeros() / 8) as usize;
            return (bytes[at] == b'"').then_some(at);
        }
        i += 8;
    }
    let at = i + bytes[i..]
        .iter()
        .position(|&b| matches!(b, b'"' | b'\n' | b'\r'))?;
    (bytes[at] == b'"').then_some(at)
}

impl<R: std::io::Read> Records<R> {
    fn new(input: R, delimiter: u8, capacity: usize) -> Records<R> {
        Records {
            input,
            buf: vec![0; capacity.max(1)],
            pos: 0,
            len: 0,
            eof: false,
            delimiter,
            fast: !matches!(delimiter, b'"' | b'\r' | b'\n'),
            line: 1,
            last_byte: None,
            data: Vec::with_capacity(1024),
            line_at: None,
            fields: Vec::with_capacity(64),
            record_line: 1,
            record_at: 0,
            open_quote: false,
            base: 0,
            stop_at: u64::MAX,
            stopped: false,
            last_end: 0,
        }
    }

    /// The input's offset of the next unread byte.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Reads more input after the unread bytes (moved to the front, the buffer grown when they
    /// fill it); false at the end of the input.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.base += self.pos as u64;
        self.pos = 0;
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.len..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.last_byte = Some(self.buf[self.len + n - 1]);
                    self.len += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next record; false at the end of the input.
    fn next_record(&mut self) -> std::io::Result<bool> {
        self.data.clear();
        self.line_at = None;
        self.fields.clear();
        // Line ends between records (blank lines, the LF of a CRLF) are skipped.
        loop {
            if self.pos == self.len && !self.fill()? {
                return Ok(false);
            }
            match self.buf[self.pos] {
                b'\n' => self.line += 1,
                b'\r' => {}
                _ => break,
            }
            self.pos += 1;
        }
        if self.offset() >= self.stop_at {
            self.stopped = true;
            return Ok(false);
        }
        self.record_line = self.line;
        self.record_at = self.offset();
        let read = (self.fast && self.fast_line()) || self.slow_record()?;
        self.last_end = self.offset();
        Ok(read)
    }

    /// The current record's bytes, which its fields index.
    fn bytes(&self) -> &[u8] {
        match self.line_at {
            Some(at) => &self.buf[at..],
            None => &self.data,
        }
    }

    /// A whole line in the buffer with no quote and no carriage return: split on the delimiter
    /// eight bytes at a time, and left in place. False (nothing consumed) for any other line.
    fn fast_line(&mut self) -> bool {
        let bytes = &self.buf[self.pos..self.len];
        let fields = &mut self.fields;
        let mut from = 0;
        let mut i = 0;
        let mut end = None;
        'scan: while i + 8 <= bytes.len() {
            let x = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            let mut hits = bytes_equal(x, self.delimiter)
                | bytes_equal(x, b'\n')
                | bytes_equal(x, b'"')
                | bytes_equal(x, b'\r');
            while hits != 0 {
                let at = i + (hits.trailing_zeros() / 8) as usize;
                match bytes[at] {
                    b'\n' => {
                        end = Some(at);
                        break 'scan;
                    }
                    b'"' if at == from => {
                        // A quoted field without doubled quotes or line ends: its text is
                        // what lies between the quotes. Anything else takes the slow path.
                        let Some(close) = quoted_end(&bytes[at + 1..]) else {
                            fields.clear();
                            return false;
                        };
                        let close = at + 1 + close;
                        match bytes.get(close + 1) {
                            Some(b'\n') => {
                                fields.push((at + 1, close));
                                from = close + 2;
                                end = Some(close + 1);
                                break 'scan;
                            }
                            Some(&b) if b == self.delimiter => {
                                fields.push((at + 1, close));
                                from = close + 2;
                                i = close + 2;
                                continue 'scan;
                            }
                            _ => {
                                fields.clear();
                                return false;
                            }
                        }
                    }
                    b'"' | b'\r' => {
                        fields.clear();
                        return false;
                    }
                    _ => {
                        fields.push((from, at));
                        from = at + 1;
                    }
                }
                hits &= hits - 1;
            }
            i += 8;
        }
        while end.is_none() && i < bytes.len() {
            match bytes[i] {
                b'\n' => end = Some(i),
                b'"' | b'\r' => {
                    fields.clear();
                    return false;
                }
                b if b == self.delimiter => {
                    fields.push((from, i));
                    from = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        let Some(end) = end else {
            // The line runs past the buffer: the state machine reads on.
            fields.clear();
            return false;
        };
        if from <= end {
            fields.push((from, end));
        }
        self.line_at = Some(self.pos);
        self.pos += end + 1;
        self.line += 1;
        true
    }

    /// One record by csv-core's state machine, from its first byte to its line end (consumed)
    /// or the end of the input.
    fn slow_record(&mut self) -> std::io::Result<bool> {
        let mut state = State::StartField;
        let mut from = 0;
        loop {
            if self.pos == self.len && !self.fill()? {
                self.open_quote = state == State::InQuoted;
                self.fields.push((from, self.data.len()));
                return Ok(true);
            }
            let c = self.buf[self.pos];
            self.pos += 1;
            if c == b'\n' {
                self.line += 1;
            }
            let line_end = c == b'\n' || c == b'\r';
            state = match state {
                State::StartField if c == b'"' => State::InQuoted,
                State::StartField | State::InField | State::QuoteInQuoted
                    if c == self.delimiter =>
                {
                    self.fields.push((from, self.data.len()));
                    from = self.data.len();
                    State::StartField
                }
                State::StartField | State::InField | State::QuoteInQuoted if line_end => {
                    self.fields.push((from, self.data.len()));
                    return Ok(true);
                }
                State::InQuoted if c == b'"' => State::QuoteInQuoted,
                State::InQuoted => {
                    self.data.push(c);
                    State::InQuoted
                }
                State::QuoteInQuoted if c == b'"' => {
                    self.data.push(c);
                    State::InQuoted
                }
                State::StartField | State::InField | State::QuoteInQuoted => {
                    self.data.push(c);
                    State::InField
                }
            };
        }
    }
}

impl CsvSource {
    pub fn open(path: &Path, delimiter: u8, columns: &[String]) -> Result<CsvSource, SourceError> {
        let what = path.display().to_string();
        let file = File::open(path).map_err(|e| SourceError::Io {
            what: what.clone(),
            message: format!("cannot open: {e}"),
        })?;
        let stamp = super::FileStamp::of(&file);
        let mut records = Records::new(file, delimiter, BUFFER);
        let has_header = records.next_record().map_err(|e| SourceError::Structure {
            what: what.clone(),
            line: 1,
            message: format!("cannot read the header row: {e}"),
        })?;
        let names: Vec<String> = if has_header {
            records
                .fields
                .iter()
                .map(|&(a, b)| {
                    String::from_utf8_lossy(&records.bytes()[a..b])
                        .trim_start_matches('\u{feff}')
                        .trim()
                        .to_string()
                })
                .collect()
        } else {
            Vec::new()
        };
        let positions =
            super::positions(&what, columns, &names, "rename one of them in the header")?;
        Ok(CsvSource {
            path: path.to_path_buf(),
            records,
            positions,
            width: names.len(),
            last_line: 1,
            require_final_newline: true,
            stamp,
            role: Role::Whole,
            split_from: super::SPLIT_MIN_BYTES,
        })
    }

    /// Splits files of at least `bytes` (tests split small files).
    pub fn split_from(mut self, bytes: u64) -> CsvSource {
        self.split_from = bytes;
        self
    }

    /// The tail's start: finds the boundary, publishes it, and puts the reader there. False
    /// when there is none (the head reads everything).
    fn start_tail(&mut self, split: &Split) -> Result<bool, SourceError> {
        let Some((offset, line)) = split.start_tail(&self.path, true)? else {
            // Nothing to read, now or if asked again.
            self.records.stop_at = 0;
            return Ok(false);
        };
        let r = &mut self.records;
        r.input
            .seek(SeekFrom::Start(offset))
            .map_err(|e| SourceError::Io {
                what: self.path.display().to_string(),
                message: format!("cannot seek: {e}"),
            })?;
        (r.base, r.last_end, r.line, r.record_line) = (offset, offset, line, line);
        self.last_line = line;
        Ok(true)
    }

    /// The head's reader stopped at `stop_at`: true when the head's part is done, false when it
    /// reads on (the boundary just became known, or the split is dropped).
    fn head_stopped(&mut self) -> bool {
        let Role::Head { split, known } = &mut self.role else {
            return true;
        };
        let r = &mut self.records;
        r.stopped = false;
        if !*known {
            *known = true;
            match split.wait() {
                Boundary::At { offset, .. } => r.stop_at = offset,
                Boundary::None | Boundary::Unknown => r.stop_at = u64::MAX,
            }
            return false;
        }
        if r.last_end <= r.stop_at {
            return true;
        }
        // The last record ran past the boundary, which was inside it: no split.
        split.abandon();
        r.stop_at = u64::MAX;
        false
    }

    /// `[source] require_final_newline` (true unless set).
    pub fn require_final_newline(mut self, require: bool) -> CsvSource {
        self.require_final_newline = require;
        self
    }

    /// The file must end with a line end, and its last record must close its quotes.
    fn check_ending(&self) -> Result<(), SourceError> {
        let cut = |message: &str| SourceError::Structure {
            what: self.path.display().to_string(),
            line: self.last_line,
            message: message.into(),
        };
        if self.records.open_quote {
            return Err(cut("a quoted field opened here is never closed (unterminated quote): the file looks cut short"));
        }
        if self.require_final_newline && self.records.last_byte.is_some_and(|b| b != b'\n') {
            return Err(cut("the file does not end with a line end: its last line may be cut short. If the file is complete, end it with a newline, or set [source] require_final_newline = false"));
        }
        self.stamp.check(&self.path, self.last_line)
    }
}

/// A record's cells (one per plan column, `positions` in the record's fields of which the
/// header has `width`), and where it came from.
fn record_cells<R: std::io::Read>(
    r: &Records<R>,
    positions: &[usize],
    width: usize,
    cells: &mut Vec<Cell>,
) -> Read {
    let bad = (r.fields.len() != width)
        .then(|| format!("{} fields where the header has {}", r.fields.len(), width));
    // One UTF-8 check for the whole record; a field is checked alone only when that fails.
    let bytes = r.bytes();
    let end = r.fields.last().map_or(0, |f| f.1);
    let text = std::str::from_utf8(&bytes[..end]).ok();
    for (i, &p) in positions.iter().enumerate() {
        let Some(&(a, b)) = r.fields.get(p) else {
            set(cells, i, Cell::Invalid("missing field".into()));
            continue;
        };
        match text
            .and_then(|t| t.get(a..b))
            .map(Ok)
            .unwrap_or_else(|| std::str::from_utf8(&bytes[a..b]))
        {
            Ok(s) => set_text(cells, i, s),
            Err(e) => set(
                cells,
                i,
                Cell::Invalid(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
            ),
        }
    }
    cells.truncate(positions.len());
    Read {
        line: r.record_line,
        bad,
        at: Some(r.record_at),
    }
}

/// Puts text in cell `i`, reusing the buffer of the text cell already there: a row's cells
/// cost no allocation once the first rows have sized them.
fn set_text(cells: &mut Vec<Cell>, i: usize, s: &str) {
    match cells.get_mut(i) {
        Some(Cell::Text(t)) => {
            t.clear();
            t.push_str(s);
        }
        _ => set(cells, i, Cell::Text(s.to_string())),
    }
}

fn set(cells: &mut Vec<Cell>, i: usize, cell: Cell) {
    match cells.get_mut(i) {
        Some(c) => *c = cell,
        None => cells.push(cell),
    }
}

impl Source for CsvSource {
    /// Fills `cells` with one cell per plan column; cells the caller hands back from the last
    /// row keep their text buffers.
    fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
        if let Role::Tail { split, started } = &mut self.role {
            let split = split.clone();
            if split.abandoned() {
                cells.clear();
                return Ok(None);
            }
            if !*started {
                *started = true;
                if !self.start_tail(&split)? {
                    cells.clear();
                    return Ok(None);
                }
            }
        }
        let more = self
            .records
            .next_record()
            .map_err(|e| SourceError::Structure {
                what: self.path.display().to_string(),
                line: self.records.line,
                message: e.to_string(),
            })?;
        if !more {
            if self.records.stopped {
                if self.head_stopped() {
                    cells.clear();
                    self.stamp.check(&self.path, self.last_line)?;
                    return Ok(None);
                }
                return self.next_row(cells);
            }
            if let Role::Head { split, .. } = &self.role {
                // The head read to the end: a record ran past the middle to it.
                split.abandon();
            }
            cells.clear();
            self.check_ending()?;
            return Ok(None);
        }
        self.last_line = self.records.record_line;
        Ok(Some(record_cells(
            &self.records,
            &self.positions,
            self.width,
            cells,
        )))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn refetch(&self) -> Option<Box<dyn super::Refetch>> {
        let file = File::open(&self.path).ok()?;
        let input = Positioned { file, at: 0 };
        Some(Box::new(CsvRefetch {
            path: self.path.clone(),
            records: Records::new(input, self.records.delimiter, REFETCH_BUFFER),
            positions: self.positions.clone(),
            width: self.width,
        }))
    }

    fn split(&mut self) -> Option<Tail> {
        let r = &self.records;
        let len = self.stamp.bytes();
        // Only a fresh reader (past the header alone) of a file worth two threads.
        if !matches!(self.role, Role::Whole)
            || !r.fast
            || self.last_line != 1
            || len < self.split_from.max(2)
        {
            return None;
        }
        let mid = r.offset().max(len / 2);
        let input = File::open(&self.path).ok()?;
        let split = Split::new(mid);
        let tail = CsvSource {
            path: self.path.clone(),
            records: Records::new(input, r.delimiter, BUFFER),
            positions: self.positions.clone(),
            width: self.width,
            last_line: 1,
            require_final_newline: self.require_final_newline,
            stamp: self.stamp.clone(),
            role: Role::Tail {
                split: split.clone(),
                started: false,
            },
            split_from: self.split_from,
        };
        self.records.stop_at = mid;
        self.role = Role::Head {
            split: split.clone(),
            known: false,
        };
        Some(split.tail(Box::new(tail)))
    }
}

/// The refetching reader's buffer: one record and a little more, not the 1 MB of a read.
pub(crate) const REFETCH_BUFFER: usize = 512;

/// A file read from a position of its own with `pread`: moving to a row costs no system call,
/// and reading it one.
struct Positioned {
    file: File,
    at: u64,
}

impl std::io::Read for Positioned {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A CSV file's rows read again by where they began (`Source::refetch`).
struct CsvRefetch {
    path: PathBuf,
    records: Records<Positioned>,
    positions: Vec<usize>,
    width: usize,
}

impl super::Refetch for CsvRefetch {
    fn row_at(&mut self, at: u64, line: u64, cells: &mut Vec<Cell>) -> Result<Read, SourceError> {
        let r = &mut self.records;
        r.input.at = at;
        (r.base, r.pos, r.len, r.eof, r.last_byte) = (at, 0, 0, false, None);
        (r.line, r.stop_at, r.stopped, r.open_quote) = (line, u64::MAX, false, false);
        let more = r.next_record().map_err(|e| SourceError::Structure {
            what: self.path.display().to_string(),
            line,
            message: format!("cannot read the row again: {e}"),
        })?;
        if !more || r.record_at != at || r.record_line != line || r.open_quote {
            return Err(super::changed(&self.describe(), line));
        }
        Ok(record_cells(r, &self.positions, self.width, cells))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for CsvSource {
    fn drop(&mut self) {
        if let Role::Tail { split, .. } = &self.role {
            split.give_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(content: &[u8], cols: &[&str]) -> Result<Vec<(Read, Vec<Cell>)>, SourceError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        let mut src = CsvSource::open(f.path(), b',', &cols)?;
        let mut out = Vec::new();
        let mut cells = Vec::new();
        while let Some(r) = src.next_row(&mut cells)? {
            out.push((r, cells.clone()));
        }
        Ok(out)
    }

    fn text(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    #[test]
    fn bom_crlf_quotes_and_embedded_newlines_are_read() {
        let rows = read_all(
            b"\xef\xbb\xbfid,note\r\n1,\"a, \"\"b\"\"\r\nc\"\r\n2,\r\n",
            &["note", "id"],
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1, vec![text("a, \"b\"\r\nc"), text("1")]);
        assert_eq!(rows[1].0.line, 4);
        assert_eq!(rows[1].1, vec![text(""), text("2")]);
    }

    #[test]
    fn a_used_column_named_twice_in_the_header_is_refused_with_both_positions() {
        let err = read_all(
            b"id,currency,amount,currency\n1,EUR,2,USD\n",
            &["id", "currency"],
        )
        .map(|_| ())
        .unwrap_err();
        let msg = err.to_string();
        assert!(err.is_config(), "{msg}");
        assert!(
            msg.contains("\"currency\"") && msg.contains("positions 2 and 4"),
            "{msg}"
        );
        // A column named twice that the sync does not use is no ambiguity.
        read_all(b"id,note,note\n1,a,b\n", &["id"]).unwrap();
    }

    #[test]
    fn a_missing_column_is_named() {
        let err = read_all(b"id,email\n1,a\n", &["amount"])
            .map(|_| ())
            .unwrap_err();
        let msg = err.to_string();
        assert!(err.is_config());
        assert!(
            msg.contains("\"amount\"") && msg.contains("id, email"),
            "{msg}"
        );
    }

    #[test]
    fn a_last_line_without_line_end_is_structural() {
        let err = read_all(b"id,email\n1,a\n2,b", &["id"])
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, SourceError::Structure { line: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_unterminated_quote_is_structural() {
        let err = read_all(b"id,email\n1,a\n2,\"b\n3,c\n", &["id"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("unterminated quote"), "{err}");
    }

    #[test]
    fn a_record_with_the_wrong_width_is_a_bad_row_with_its_key() {
        let rows = read_all(b"id,email\n1,a,extra\n", &["id"]).unwrap();
        assert_eq!(rows[0].1, vec![text("1")]);
        assert!(rows[0].0.bad.as_deref().unwrap().contains("3 fields"));
    }

    #[test]
    fn invalid_utf8_is_an_invalid_cell() {
        let rows = read_all(b"id,email\n1,\xff\xfe\n", &["email"]).unwrap();
        assert!(matches!(rows[0].1[0], Cell::Invalid(_)));
    }

    #[test]
    fn lines_count_every_line_feed_before_the_record() {
        // LF ends, a quoted newline, a blank line: each row's own line.
        let rows = read_all(b"id,note\n1,\"a\nb\"\n\n2,x\n3,y\n", &["id"]).unwrap();
        let lines: Vec<u64> = rows.iter().map(|r| r.0.line).collect();
        assert_eq!(lines, vec![2, 5, 6]);
    }

    #[test]
    fn a_literal_quote_inside_the_last_field_is_not_an_unterminated_quote() {
        let rows = read_all(b"id,note\n1,5\" screen\n", &["note"]).unwrap();
        assert_eq!(rows[0].1, vec![text("5\" screen")]);
    }

    #[test]
    fn a_record_longer_than_the_buffer_is_read_whole() {
        let long = "x".repeat(3 * BUFFER);
        let content = format!("id,note\n1,{long}\n2,\"{long}\"\n");
        let rows = read_all(content.as_bytes(), &["note", "id"]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].1, vec![text(&long), text("2")]);
        assert_eq!(rows[1].0.line, 3);
    }

    /// A reader that hands out its bytes a few at a time, to exercise the refills.
    struct Trickle<'a>(&'a [u8], usize);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 5 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn ours(input: &[u8], delimiter: u8, capacity: usize) -> (Vec<Vec<Vec<u8>>>, bool) {
        let mut r = Records::new(Trickle(input, 0), delimiter, capacity);
        let mut out = Vec::new();
        while r.next_record().unwrap() {
            out.push(
                r.fields
                    .iter()
                    .map(|&(a, b)| r.bytes()[a..b].to_vec())
                    .collect(),
            );
        }
        (out, r.open_quote)
    }

    fn theirs(input: &[u8], delimiter: u8) -> Vec<Vec<Vec<u8>>> {
        let mut r = ::csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(false)
            .from_reader(input);
        r.byte_records()
            .map(|rec| rec.unwrap().iter().map(|f| f.to_vec()).collect())
            .collect()
    }

    #[test]
    fn plain_quoted_fields_are_read_in_place_and_the_rest_by_the_state_machine() {
        let input: &[u8] = b"1,\"a, b\",c\n2,\"x\"\n3,\"\",\"\"\"q\"\"\"\n4,\"p\"z,\"r\ns\"\n5,\"t\"\r\n6,u\"v,\"w\n";
        let mut r = Records::new(input, b',', BUFFER);
        let mut fast = Vec::new();
        while r.next_record().unwrap() {
            fast.push(r.line_at.is_some());
        }
        // Records 1-3 are plain; 3's second field doubles its quotes, 4 has text after a
        // closing quote and a quoted newline, 5 a CR, 6 a quote inside an unquoted field.
        assert_eq!(fast, [true, true, false, false, false, false]);
        assert_eq!(ours(input, b',', BUFFER).0, theirs(input, b','));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn records_are_the_csv_crates(
            input in proptest::collection::vec(
                prop_oneof![
                    4 => Just(b'a'), 1 => Just(b'b'), 3 => Just(b','), 2 => Just(b'"'),
                    2 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(b';'), 1 => Just(0xc3), 1 => Just(0xa9),
                ],
                0..120,
            ),
            semicolon in any::<bool>(),
            capacity in prop_oneof![Just(4usize), Just(16), Just(BUFFER)],
        ) {
            let delimiter = if semicolon { b';' } else { b',' };
            let expected = theirs(&input, delimiter);
            prop_assert_eq!(&ours(&input, delimiter, capacity).0, &expected);
            // Read whole, so that lines reach the fast path.
            let mut r = Records::new(&input[..], delimiter, BUFFER);
            let mut whole = Vec::new();
            while r.next_record().unwrap() {
                whole.push(r.fields.iter().map(|&(a, b)| r.bytes()[a..b].to_vec()).collect::<Vec<_>>());
            }
            prop_assert_eq!(whole, expected);
        }
    }
}

#[cfg(test)]
mod ending_tests {
    use super::*;
    use std::io::Write;

    fn read(content: &[u8], require: bool) -> Result<Vec<Vec<Cell>>, SourceError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let cols = vec!["a".to_string(), "b".to_string()];
        let mut src = CsvSource::open(f.path(), b',', &cols)?.require_final_newline(require);
        let mut out = Vec::new();
        let mut cells = Vec::new();
        while src.next_row(&mut cells)?.is_some() {
            out.push(cells.clone());
        }
        Ok(out)
    }

    #[test]
    fn a_last_record_without_a_line_end_is_refused_unless_the_option_takes_it() {
        let e = read(b"a,b\n1,x\n2,y", true).unwrap_err().to_string();
        assert!(e.contains("require_final_newline = false"), "{e}");
        let rows = read(b"a,b\n1,x\n2,\"y\nz\"", false).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][1], Cell::Text("y\nz".into()));
        // An open quote is cut short whatever the option says.
        let e = read(b"a,b\n1,x\n2,\"y", false).unwrap_err().to_string();
        assert!(e.contains("unterminated quote"), "{e}");
    }

    #[test]
    fn a_file_that_grows_during_the_read_is_refused_at_its_end() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"a,b\n1,x\n").unwrap();
        f.flush().unwrap();
        let cols = vec!["a".to_string(), "b".to_string()];
        let mut src = CsvSource::open(f.path(), b',', &cols).unwrap();
        let mut cells = Vec::new();
        // The writer appends after the read began (the reader's buffer holds what it saw).
        assert!(src.next_row(&mut cells).unwrap().is_some());
        let mut again = std::fs::OpenOptions::new()
            .append(true)
            .open(f.path())
            .unwrap();
        again.write_all(b"2,y\n").unwrap();
        let mut e = None;
        loop {
            match src.next_row(&mut cells) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(err) => {
                    e = Some(err.to_string());
                    break;
                }
            }
        }
        let e = e.expect("the grown file is refused");
        assert!(e.contains("changed while it was read"), "{e}");
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use std::io::Write;

    use crate::source::split_testing::{drain, split_read, Rows};

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn open(f: &tempfile::NamedTempFile, require: bool) -> CsvSource {
        let cols = vec!["b".to_string(), "a".to_string()];
        CsvSource::open(f.path(), b',', &cols)
            .unwrap()
            .require_final_newline(require)
            .split_from(1)
    }

    /// Errors name the file: each call writes its own.
    fn unnamed(rows: Rows, f: &tempfile::NamedTempFile) -> Rows {
        rows.map_err(|e| e.replace(&f.path().display().to_string(), "<file>"))
    }

    /// The rows of one reader over the whole file.
    fn whole(content: &[u8], require: bool) -> Rows {
        let f = file(content);
        unnamed(drain(&mut open(&f, require)), &f)
    }

    /// The rows of a head and a tail read on two threads; whether the tail was kept.
    fn split(content: &[u8], require: bool) -> (Rows, Option<bool>) {
        let f = file(content);
        let (rows, kept) = split_read(&mut open(&f, require));
        (unnamed(rows, &f), kept)
    }

    fn csv(records: &[&str]) -> Vec<u8> {
        let mut s = String::from("a,b\n");
        for r in records {
            s.push_str(r);
        }
        s.into_bytes()
    }

    #[test]
    fn a_quoted_newline_across_the_middle_keeps_the_split_and_every_line_exact() {
        // Record 51, on lines 52-54, holds a quoted field with two newlines; the last record
        // is padded until the file's middle falls inside that field.
        let content = (0..4000)
            .map(|pad| {
                let mut records: Vec<String> = (0..50).map(|i| format!("{i},x\n")).collect();
                records.push("50,\"one\ntwo\nthree\"\n".into());
                records.extend((51..59).map(|i| format!("{i},y\n")));
                records.push(format!("59,{}\n", "y".repeat(pad)));
                csv(&records.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .find(|c| {
                let q = c.windows(4).position(|w| w == b"\"one").unwrap();
                (q + 1..q + 14).contains(&(c.len() / 2))
            })
            .unwrap();
        let (rows, kept) = split(&content, true);
        assert_eq!(kept, Some(true));
        assert_eq!(rows, whole(&content, true));
        let rows = rows.unwrap();
        assert_eq!(rows.len(), 60);
        assert_eq!(rows[50].1[0], Cell::Text("one\ntwo\nthree".into()));
        assert_eq!(rows[50].0.line, 52);
        assert_eq!(rows[51].0.line, 55);
        assert_eq!(rows[59].0.line, 63);
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_fools_the_parity_and_the_head_reads_on() {
        // `x"y` is text to csv-core but counts as a quote: past it, the parity is odd, so the
        // boundary lands inside record 3's quoted field, which the head then reads past.
        let mut records = vec!["0,x\"y\n".to_string()];
        records.extend((1..40).map(|i| format!("{i},v{i}\n")));
        records.push("40,\"p\nq\nr\ns\nt\nu\nv\nw\"\n".into());
        records.extend((41..45).map(|i| format!("{i},w\n")));
        let content = csv(&records.iter().map(String::as_str).collect::<Vec<_>>());
        let (rows, kept) = split(&content, true);
        assert_eq!(rows, whole(&content, true));
        assert_eq!(rows.unwrap().len(), 45);
        // Which way the split went depends on where the middle falls; both must give the
        // same rows, and this file was built so that the parity is wrong at the middle.
        assert_eq!(kept, Some(false));
    }

    #[test]
    fn a_file_cut_short_in_its_tail_is_still_refused_with_its_line() {
        let mut records: Vec<String> = (0..40).map(|i| format!("{i},x\n")).collect();
        records.push("40,\"never closed\nmore".into());
        let content = csv(&records.iter().map(String::as_str).collect::<Vec<_>>());
        let (rows, kept) = split(&content, true);
        assert_eq!(kept, Some(true));
        let e = rows.unwrap_err();
        assert!(
            e.contains("line 42") && e.contains("unterminated quote"),
            "{e}"
        );
        assert_eq!(Err(e), whole(&content, true).map(|_| ()));
        let mut no_end = csv(&["1,x\n"; 40]);
        no_end.extend_from_slice(b"2,y");
        let (rows, kept) = split(&no_end, true);
        assert_eq!(kept, Some(true));
        let e = rows.unwrap_err();
        assert!(
            e.contains("line 42") && e.contains("does not end with a line end"),
            "{e}"
        );
        assert_eq!(split(&no_end, false).0, whole(&no_end, false));
    }

    #[test]
    fn a_file_under_the_threshold_or_already_read_is_not_split() {
        let content = csv(&["1,x\n"; 10]);
        let f = file(&content);
        let mut src = open(&f, true).split_from(content.len() as u64 + 1);
        assert!(src.split().is_none());
        let mut src = open(&f, true);
        src.next_row(&mut Vec::new()).unwrap();
        assert!(src.split().is_none());
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn split_reads_give_the_rows_and_errors_of_one_reader(
            body in proptest::collection::vec(
                prop_oneof![
                    6 => Just(b'a'), 3 => Just(b','), 2 => Just(b'"'),
                    3 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(0xc3),
                ],
                0..200,
            ),
            end_newline in any::<bool>(),
            require in any::<bool>(),
        ) {
            let mut content = b"a,b\n".to_vec();
            content.extend_from_slice(&body);
            if end_newline {
                content.push(b'\n');
            }
            prop_assert_eq!(split(&content, require).0, whole(&content, require));
        }
    }
}
