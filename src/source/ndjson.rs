//! NDJSON files: one JSON object per line, values typed by their JSON type.
//!
//! Invariants:
//! - A key missing from an object is null for that row (JSON-lines writers often omit nulls);
//!   a mapped column that no row of the file has is a config error naming it.
//! - A line that is not a JSON object is a bad row with its line number; a last line without a
//!   line end is structural (the file looks cut short). Blank lines are skipped.
//! - Only the plan's columns are built into values; other keys are skipped as they are parsed
//!   (no map of the whole object). A key given twice keeps its last value.

use super::{Read, Source, SourceError, Split, Tail};
use crate::core::value::{from_json, Cell};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct NdjsonSource {
    path: PathBuf,
    reader: BufReader<File>,
    columns: Vec<String>,
    seen: Vec<bool>,
    line: u64,
    buf: Vec<u8>,
    rows: u64,
    /// The current line's values of the plan's columns, when serde_json reads it.
    slots: Vec<Option<serde_json::Value>>,
    /// The same, when `flatjson` reads it.
    flat: Vec<super::flatjson::Flat>,
    /// The plan's column the n-th key of the last line named (`NO_COLUMN` for none): lines
    /// mostly list their keys in one order, so each key is checked against that column first.
    order: Vec<usize>,
    require_final_newline: bool,
    stamp: super::FileStamp,
    /// Bytes read so far.
    offset: u64,
    role: Role,
    /// Files at least this long are split (`Source::split`).
    split_from: u64,
}

/// Which part of the file a source reads (`super::Split`). Every line feed ends a line (JSON
/// text holds none raw), so the head knows the boundary without waiting for it: the first line
/// start at or past the middle.
enum Role {
    Whole,
    /// The tail's columns seen and rows, for the check at the end (`Source::finish`).
    Head {
        mid: u64,
        tail: Arc<Mutex<Seen>>,
    },
    /// `reading`: `None` until the boundary is found, then whether there is a tail to read.
    Tail {
        split: Arc<Split>,
        reading: Option<bool>,
        out: Arc<Mutex<Seen>>,
    },
}

#[derive(Default)]
struct Seen {
    columns: Vec<bool>,
    rows: u64,
}

impl NdjsonSource {
    pub fn open(path: &Path, columns: &[String]) -> Result<NdjsonSource, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::Io {
            what: path.display().to_string(),
            message: format!("cannot open: {e}"),
        })?;
        let stamp = super::FileStamp::of(&file);
        Ok(NdjsonSource {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            columns: columns.to_vec(),
            seen: vec![false; columns.len()],
            line: 0,
            buf: Vec::new(),
            rows: 0,
            slots: Vec::new(),
            flat: Vec::new(),
            order: Vec::new(),
            require_final_newline: true,
            stamp,
            offset: 0,
            role: Role::Whole,
            split_from: super::SPLIT_MIN_BYTES,
        })
    }

    /// Splits files of at least `bytes` (tests split small files).
    pub fn split_from(mut self, bytes: u64) -> NdjsonSource {
        self.split_from = bytes;
        self
    }

    /// The tail's start: finds the boundary, publishes it, and puts the reader there. False
    /// when there is none (the head reads everything).
    fn start_tail(&mut self, split: &Split) -> Result<bool, SourceError> {
        let Some((offset, line)) = split.start_tail(&self.path, false)? else {
            return Ok(false);
        };
        self.go_to(offset, line)?;
        Ok(true)
    }

    /// Puts the reader at byte `offset`, the start of line `line`.
    fn go_to(&mut self, offset: u64, line: u64) -> Result<(), SourceError> {
        self.reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| SourceError::Io {
                what: self.path.display().to_string(),
                message: format!("cannot seek to byte {offset} (line {line}): {e}"),
            })?;
        (self.offset, self.line) = (offset, line - 1);
        Ok(())
    }

    /// A second reader of the same file, from its start, with a buffer of `capacity` bytes.
    fn second(&self, capacity: usize, role: Role) -> Option<NdjsonSource> {
        let input = File::open(&self.path).ok()?;
        Some(NdjsonSource {
            path: self.path.clone(),
            reader: BufReader::with_capacity(capacity, input),
            columns: self.columns.clone(),
            seen: vec![false; self.columns.len()],
            line: 0,
            buf: Vec::new(),
            rows: 0,
            slots: Vec::new(),
            flat: Vec::new(),
            order: Vec::new(),
            require_final_newline: self.require_final_newline,
            stamp: self.stamp.clone(),
            offset: 0,
            role,
            split_from: self.split_from,
        })
    }

    /// `[source] require_final_newline` (true unless set).
    pub fn require_final_newline(mut self, require: bool) -> NdjsonSource {
        self.require_final_newline = require;
        self
    }
}

impl Source for NdjsonSource {
    /// Fills `cells` with one cell per plan column; a text cell the caller hands back from the
    /// last row keeps its buffer for the same column's text on a flat line.
    fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
        if let Role::Tail { split, reading, .. } = &mut self.role {
            let split = split.clone();
            let more = match *reading {
                Some(more) => more,
                None => {
                    *reading = Some(false);
                    let more = self.start_tail(&split)?;
                    if let Role::Tail { reading, .. } = &mut self.role {
                        *reading = Some(more);
                    }
                    more
                }
            };
            if !more {
                return Ok(None);
            }
        }
        let mut at;
        loop {
            if let Role::Head { mid, .. } = self.role {
                if self.offset >= mid {
                    return Ok(None);
                }
            }
            at = self.offset;
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| SourceError::Io {
                    what: self.path.display().to_string(),
                    message: format!("read error after line {}: {e}", self.line),
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.offset += n as u64;
            self.line += 1;
            if !self.buf.ends_with(b"\n") {
                let cut = |message: &str| SourceError::Structure {
                    what: self.path.display().to_string(),
                    line: self.line,
                    message: message.into(),
                };
                if self.require_final_newline {
                    return Err(cut("the file does not end with a line end: its last line may be cut short. If the file is complete, end it with a newline, or set [source] require_final_newline = false"));
                }
                // Without its line end, the last line is taken only if it parses whole.
                if serde_json::from_slice::<serde::de::IgnoredAny>(&self.buf).is_err() {
                    return Err(cut("the last line has no line end and is not whole JSON: the file looks cut short"));
                }
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            break;
        }
        self.rows += 1;
        let line = self.line;
        // UTF-8 checked once for the line, not string by string; a line that is not UTF-8 is
        // parsed as bytes, so that its error names the byte as before. A flat object is read
        // without serde_json (`flatjson`); any other line, or one it declines, with it.
        let text = std::str::from_utf8(&self.buf);
        self.flat.clear();
        self.flat.resize(self.columns.len(), Default::default());
        let flat = text.is_ok_and(|text| {
            super::flatjson::parse(text, &self.columns, &mut self.order, &mut self.flat)
        });
        let parsed = if flat {
            Ok(Shape::Object)
        } else {
            self.slots.clear();
            self.slots.resize(self.columns.len(), None);
            let seed = LineSeed {
                columns: &self.columns,
                slots: &mut self.slots,
                order: &mut self.order,
            };
            match text {
                Ok(text) => seed.parse(serde_json::Deserializer::from_str(text)),
                Err(_) => seed.parse(serde_json::Deserializer::from_slice(&self.buf)),
            }
        };
        let bad = match parsed {
            Ok(Shape::Object) => None,
            Ok(Shape::Array) => Some("the line is an array, not a JSON object".to_string()),
            Ok(Shape::Scalar) => Some("the line is a scalar, not a JSON object".to_string()),
            Err(e) => Some(format!("not valid JSON: {e}")),
        };
        if bad.is_some() {
            cells.clear();
            cells.resize(
                self.columns.len(),
                Cell::Typed(crate::core::value::Value::Null),
            );
            return Ok(Some(Read {
                line,
                bad,
                at: Some(at),
            }));
        }
        if let (true, Ok(text)) = (flat, text) {
            cells.truncate(self.flat.len());
            cells.resize(
                self.flat.len(),
                Cell::Typed(crate::core::value::Value::Null),
            );
            for ((f, seen), cell) in self
                .flat
                .iter()
                .zip(self.seen.iter_mut())
                .zip(cells.iter_mut())
            {
                *seen |= f.write(text, cell);
            }
            return Ok(Some(Read {
                line,
                bad: None,
                at: Some(at),
            }));
        }
        cells.clear();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            cells.push(match slot.take() {
                Some(v) => {
                    self.seen[i] = true;
                    match from_json(v) {
                        Ok(v) => Cell::Typed(v),
                        Err(e) => Cell::Invalid(e.to_string()),
                    }
                }
                None => Cell::Typed(crate::core::value::Value::Null),
            });
        }
        Ok(Some(Read {
            line,
            bad: None,
            at: Some(at),
        }))
    }

    fn finish(&mut self) -> Result<(), SourceError> {
        self.stamp.check(&self.path, self.line)?;
        match &self.role {
            Role::Whole => {}
            Role::Head { tail, .. } => {
                let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                self.rows += tail.rows;
                for (s, t) in self.seen.iter_mut().zip(&tail.columns) {
                    *s |= t;
                }
            }
            // The head checks the columns of both parts.
            Role::Tail { out, .. } => {
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Seen {
                    columns: self.seen.clone(),
                    rows: self.rows,
                };
                return Ok(());
            }
        }
        if self.rows == 0 {
            return Ok(());
        }
        match self.seen.iter().position(|s| !s) {
            Some(i) => Err(SourceError::MissingColumn {
                what: self.path.display().to_string(),
                column: self.columns[i].clone(),
                available: Vec::new(),
            }),
            None => Ok(()),
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn refetch(&self) -> Option<Box<dyn super::Refetch>> {
        let reader = self.second(super::csv::REFETCH_BUFFER, Role::Whole)?;
        Some(Box::new(NdjsonRefetch(reader)))
    }

    fn split(&mut self) -> Option<Tail> {
        let len = self.stamp.bytes();
        if !matches!(self.role, Role::Whole) || self.offset != 0 || len < self.split_from.max(2) {
            return None;
        }
        let mid = len / 2;
        let split = Split::new(mid);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let role = Role::Tail {
            split: split.clone(),
            reading: None,
            out: seen.clone(),
        };
        let tail = self.second(1 << 20, role)?;
        self.role = Role::Head { mid, tail: seen };
        Some(split.tail(Box::new(tail)))
    }
}

/// An NDJSON file's rows read again by where they began (`Source::refetch`).
struct NdjsonRefetch(NdjsonSource);

impl super::Refetch for NdjsonRefetch {
    fn row_at(&mut self, at: u64, line: u64, cells: &mut Vec<Cell>) -> Result<Read, SourceError> {
        let s = &mut self.0;
        s.go_to(at, line)?;
        match s.next_row(cells)? {
            Some(read) if read.line == line && read.at == Some(at) => Ok(read),
            _ => Err(super::changed(&s.describe(), line)),
        }
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

impl Drop for NdjsonSource {
    fn drop(&mut self) {
        if let Role::Tail { split, .. } = &self.role {
            split.give_up();
        }
    }
}

/// What a line turned out to be.
pub(super) enum Shape {
    Object,
    Array,
    Scalar,
}

/// Parses one line, keeping only the values of the plan's columns: the other keys are skipped
/// without building them, and no map of the whole object is made. A key given twice keeps its
/// last value, as a JSON map would.
pub(super) struct LineSeed<'a> {
    pub(super) columns: &'a [String],
    pub(super) slots: &'a mut [Option<serde_json::Value>],
    pub(super) order: &'a mut Vec<usize>,
}

/// In `NdjsonSource::order`: the key named no column of the plan.
pub(super) const NO_COLUMN: usize = usize::MAX;

impl LineSeed<'_> {
    /// The whole line: one JSON value and nothing after it.
    fn parse<'de, R: serde_json::de::Read<'de>>(
        self,
        mut de: serde_json::Deserializer<R>,
    ) -> Result<Shape, serde_json::Error> {
        let shape = self.deserialize(&mut de)?;
        de.end()?;
        Ok(shape)
    }
}

impl<'de> DeserializeSeed<'de> for LineSeed<'_> {
    type Value = Shape;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LineSeed<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut n = 0;
        loop {
            let seed = ColumnSeed {
                columns: self.columns,
                order: &mut *self.order,
                n,
            };
            let Some(column) = map.next_key_seed(seed)? else {
                break;
            };
            n += 1;
            match column {
                Some(i) => self.slots[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Shape::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Shape::Array)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }
}

/// The plan's column the `n`-th key of a line names, if any: the column the `n`-th key of the
/// last line named (`order[n]`) is tried first, and `order[n]` then remembers this one. Both
/// readers of a line (serde_json's and `flatjson`'s) find their keys' columns here.
pub(super) fn column_of(
    columns: &[String],
    order: &mut Vec<usize>,
    n: usize,
    key: &str,
) -> Option<usize> {
    let hint = order.get(n).copied().unwrap_or(NO_COLUMN);
    let column = if columns.get(hint).is_some_and(|c| c == key) {
        Some(hint)
    } else {
        columns.iter().position(|c| c == key)
    };
    match order.get_mut(n) {
        Some(o) => *o = column.unwrap_or(NO_COLUMN),
        None => order.push(column.unwrap_or(NO_COLUMN)),
    }
    column
}

/// The `n`-th key of the line's object: the index of the plan's column it names, if any
/// ([`column_of`]), found without allocating the key when it has no escapes.
struct ColumnSeed<'a> {
    columns: &'a [String],
    order: &'a mut Vec<usize>,
    n: usize,
}

impl<'de> DeserializeSeed<'de> for ColumnSeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ColumnSeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(column_of(self.columns, self.order, self.n, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::Value;
    use std::io::Write;

    fn read_all(content: &[u8], cols: &[&str]) -> Result<Vec<(Read, Vec<Cell>)>, SourceError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        let mut src = NdjsonSource::open(f.path(), &cols)?;
        let mut out = Vec::new();
        let mut cells = Vec::new();
        while let Some(r) = src.next_row(&mut cells)? {
            out.push((r, cells.clone()));
        }
        src.finish()?;
        Ok(out)
    }

    /// A text cell handed back from the last row lends its buffer to the next row's text of
    /// that column: whatever came before (longer text, a number, a missing key, a line that
    /// serde_json read), each row's cells are its own.
    #[test]
    fn cells_handed_back_give_each_row_its_own_values() {
        let content = concat!(
            "{\"a\":\"a rather long string\",\"b\":\"x\"}\n",
            "{\"a\":\"s\",\"b\":5}\n",
            "{\"b\":\"y\"}\n",
            "{\"a\":\"back\",\"b\":null}\n",
            "{\"a\":\"\\u00e9\\\"\"}\n",
            "{\"a\":\"after\",\"b\":\"z\"}\n",
        );
        let rows = read_all(content.as_bytes(), &["a", "b"]).unwrap();
        let text = |s: &str| Cell::Typed(Value::Text(s.into()));
        let cells: Vec<Vec<Cell>> = rows.into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            cells,
            vec![
                vec![text("a rather long string"), text("x")],
                vec![text("s"), Cell::Typed(Value::Int(5))],
                vec![Cell::Typed(Value::Null), text("y")],
                vec![text("back"), Cell::Typed(Value::Null)],
                vec![text("é\""), Cell::Typed(Value::Null)],
                vec![text("after"), text("z")],
            ]
        );
    }

    #[test]
    fn values_keep_their_json_types_and_missing_keys_are_null() {
        let rows = read_all(
            b"{\"id\":1,\"gift\":true,\"amount\":2.5}\n\n{\"id\":2}\n",
            &["amount", "gift", "id"],
        )
        .unwrap();
        assert_eq!(
            rows[0].1,
            vec![
                Cell::Typed(Value::Float(2.5)),
                Cell::Typed(Value::Bool(true)),
                Cell::Typed(Value::Int(1))
            ]
        );
        assert_eq!(rows[1].0.line, 3);
        assert_eq!(rows[1].1[0], Cell::Typed(Value::Null));
    }

    #[test]
    fn a_malformed_line_is_a_bad_row_with_its_line() {
        let rows = read_all(b"{\"id\":1}\n{\"id\":\n{\"id\":3}\n", &["id"]).unwrap();
        assert_eq!(rows[1].0.line, 2);
        assert!(rows[1].0.bad.as_deref().unwrap().contains("not valid JSON"));
    }

    #[test]
    fn other_keys_are_skipped_a_repeated_key_keeps_its_last_value_and_non_objects_are_bad_rows() {
        let rows = read_all(
            b"{\"x\":{\"id\":9,\"a\":[1,{\"b\":null}]},\"id\":1,\"id\":2,\"n\\u0061me\":\"\\u00e9\"}\n[1,2]\n\"id\"\n42\n{\"id\":3} x\n",
            &["id", "name"],
        )
        .unwrap();
        assert_eq!(
            rows[0].1,
            vec![
                Cell::Typed(Value::Int(2)),
                Cell::Typed(Value::Text("\u{e9}".into()))
            ]
        );
        assert!(rows[0].0.bad.is_none());
        let bad: Vec<&str> = rows[1..]
            .iter()
            .map(|r| r.0.bad.as_deref().unwrap())
            .collect();
        assert!(bad[0].contains("an array"), "{bad:?}");
        assert!(
            bad[1].contains("a scalar") && bad[2].contains("a scalar"),
            "{bad:?}"
        );
        assert!(bad[3].contains("not valid JSON"), "{bad:?}");
    }

    #[test]
    fn keys_in_any_order_each_line_find_their_columns() {
        // The first line sets the order each key is tried in; the next ones change it.
        let rows = read_all(
            b"{\"id\":1,\"x\":0,\"name\":\"a\"}\n{\"name\":\"b\",\"id\":2}\n{\"x\":0,\"name\":\"c\",\"x\":1,\"id\":3}\n{\"id\":4,\"x\":0,\"name\":\"d\"}\n",
            &["id", "name"],
        )
        .unwrap();
        let got: Vec<_> = rows.iter().map(|(_, cells)| cells.clone()).collect();
        let want: Vec<Vec<Cell>> = [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
            .iter()
            .map(|&(id, name)| {
                vec![
                    Cell::Typed(Value::Int(id)),
                    Cell::Typed(Value::Text(name.into())),
                ]
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_mapped_value_that_is_not_utf8_makes_a_bad_row_naming_the_byte() {
        let rows = read_all(
            b"{\"id\":1,\"name\":\"a\xffb\"}\n{\"id\":2,\"other\":\"\xc3\"}\n{\"id\":3,\"name\":\"c\"}\n",
            &["id", "name"],
        )
        .unwrap();
        let bad = rows[0].0.bad.as_deref().unwrap();
        assert!(
            bad.contains("not valid JSON") && bad.contains("line 1 column 18"),
            "{bad}"
        );
        // A value no column maps is skipped unread, as before.
        assert!(rows[1].0.bad.is_none() && rows[2].0.bad.is_none());
        assert_eq!(rows[1].1[0], Cell::Typed(Value::Int(2)));
    }

    #[test]
    fn a_cut_short_last_line_is_structural() {
        let err = read_all(b"{\"id\":1}\n{\"id\":2", &["id"])
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, SourceError::Structure { line: 2, .. }));
    }

    #[test]
    fn a_column_no_row_has_is_named() {
        let err = read_all(b"{\"id\":1}\n", &["id", "email"])
            .map(|_| ())
            .unwrap_err();
        assert!(err.is_config() && err.to_string().contains("\"email\""));
    }
}

#[cfg(test)]
mod ending_tests {
    use super::*;
    use std::io::Write;

    fn read(content: &[u8], require: bool) -> Result<usize, SourceError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let cols = vec!["id".to_string()];
        let mut src = NdjsonSource::open(f.path(), &cols)?.require_final_newline(require);
        let mut n = 0;
        let mut cells = Vec::new();
        while src.next_row(&mut cells)?.is_some() {
            n += 1;
        }
        src.finish()?;
        Ok(n)
    }

    #[test]
    fn a_last_line_without_a_line_end_is_taken_only_when_asked_and_whole() {
        let e = read(b"{\"id\":1}\n{\"id\":2}", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("require_final_newline = false"), "{e}");
        assert_eq!(read(b"{\"id\":1}\n{\"id\":2}", false).unwrap(), 2);
        let e = read(b"{\"id\":1}\n{\"id\":", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not whole JSON"), "{e}");
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::source::split_testing::{drain, split_read, Rows};
    use std::io::Write;

    fn both(content: &[u8], cols: &[&str], require: bool) -> (Rows, Rows, Option<bool>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        let cols: Vec<String> = cols.iter().map(|s| s.to_string()).collect();
        let open = || {
            NdjsonSource::open(f.path(), &cols)
                .unwrap()
                .require_final_newline(require)
                .split_from(1)
        };
        let whole = drain(&mut open().split_from(u64::MAX));
        let (split, kept) = split_read(&mut open());
        (whole, split, kept)
    }

    #[test]
    fn lines_and_rows_are_those_of_one_reader() {
        let mut content = Vec::new();
        for i in 0..200 {
            content.extend_from_slice(format!("{{\"id\":{i},\"note\":\"a\\nb\"}}\n").as_bytes());
            if i % 17 == 0 {
                content.extend_from_slice(b"\n{\"id\": oops\n");
            }
        }
        let (whole, split, kept) = both(&content, &["id", "note"], true);
        assert_eq!(kept, Some(true));
        assert_eq!(whole.as_ref().unwrap().len(), 212);
        assert_eq!(split, whole);
    }

    #[test]
    fn a_column_seen_in_one_part_only_is_seen_and_a_cut_short_tail_is_refused() {
        let mut content = Vec::new();
        for i in 0..100 {
            content.extend_from_slice(format!("{{\"id\":{i}}}\n").as_bytes());
        }
        content.extend_from_slice(b"{\"id\":1,\"late\":2}\n");
        let (whole, split, kept) = both(&content, &["id", "late"], true);
        assert_eq!(kept, Some(true));
        assert_eq!(split, whole);
        assert_eq!(split.unwrap().len(), 101);
        let (_, split, _) = both(&content, &["id", "never"], true);
        assert!(split.unwrap_err().contains("\"never\""));
        content.extend_from_slice(b"{\"id\":");
        let (whole, split, _) = both(&content, &["id"], true);
        let e = split.clone().unwrap_err();
        assert!(e.contains("line 102") && e.contains("line end"), "{e}");
        assert_eq!(split, whole);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn split_reads_give_the_rows_and_errors_of_one_reader(
            lines in proptest::collection::vec(
                prop_oneof![
                    4 => (0i64..50).prop_map(|i| format!("{{\"id\":{i}}}")),
                    2 => (0i64..50).prop_map(|i| format!("{{\"id\":{i},\"x\":\"y\"}}")),
                    1 => Just(String::new()),
                    1 => Just("[1]".to_string()),
                    1 => Just("{\"id\":".to_string()),
                ],
                0..60,
            ),
            end_newline in any::<bool>(),
            require in any::<bool>(),
        ) {
            let mut content = lines.join("\n").into_bytes();
            if end_newline {
                content.push(b'\n');
            }
            let (whole, split, _) = both(&content, &["id", "x"], require);
            prop_assert_eq!(split, whole);
        }
    }
}
