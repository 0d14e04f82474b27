//! CSV files: a header row, RFC 4180 quoting (embedded newlines, doubled quotes), a configurable
//! delimiter, an optional UTF-8 BOM, LF or CRLF line ends.
//!
//! Invariants:
//! - Every cell is untyped text; typing happens in the snapshot by `[mapping] types`.
//! - A file that does not end with a line end, or whose last record holds an unterminated quote,
//!   is cut short: a structural error, so a half-written export never becomes a baseline.
//! - A record with the wrong number of fields is a bad row (its key still read when it can be).

use super::{Read, Source, SourceError};
use crate::core::value::Cell;
use std::fs::File;
use std::io::{Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub struct CsvSource {
    path: PathBuf,
    reader: csv::Reader<File>,
    record: csv::ByteRecord,
    positions: Vec<usize>,
    width: usize,
    last_start: u64,
    last_line: u64,
    /// Newlines inside quoted fields so far: the csv crate's line count leaves them out.
    embedded_newlines: u64,
}

impl CsvSource {
    pub fn open(path: &Path, delimiter: u8, columns: &[String]) -> Result<CsvSource, SourceError> {
        let what = path.display().to_string();
        let file = File::open(path).map_err(|e| SourceError::Io {
            what: what.clone(),
            message: format!("cannot open: {e}"),
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .has_headers(true)
            .from_reader(file);
        let headers = reader
            .byte_headers()
            .map_err(|e| SourceError::Structure {
                what: what.clone(),
                line: 1,
                message: format!("cannot read the header row: {e}"),
            })?
            .clone();
        let names: Vec<String> = headers
            .iter()
            .map(|h| {
                String::from_utf8_lossy(h)
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_string()
            })
            .collect();
        let positions = columns
            .iter()
            .map(|c| {
                names
                    .iter()
                    .position(|n| n == c)
                    .ok_or_else(|| SourceError::MissingColumn {
                        what: what.clone(),
                        column: c.clone(),
                        available: names.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CsvSource {
            path: path.to_path_buf(),
            reader,
            record: csv::ByteRecord::new(),
            positions,
            width: names.len(),
            last_start: 0,
            last_line: 1,
            embedded_newlines: headers.as_slice().iter().filter(|&&b| b == b'\n').count() as u64,
        })
    }

    /// The file must end with a line end, and its last record must close its quotes.
    fn check_ending(&self) -> Result<(), SourceError> {
        let what = self.path.display().to_string();
        let io = |e: std::io::Error| SourceError::Io {
            what: what.clone(),
            message: e.to_string(),
        };
        let mut f = File::open(&self.path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len == 0 {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.last_start)).map_err(io)?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).map_err(io)?;
        if tail.iter().filter(|&&b| b == b'"').count() % 2 == 1 {
            return Err(SourceError::Structure {
                what,
                line: self.last_line,
                message: "a quoted field opened here is never closed (unterminated quote): the file looks cut short".into(),
            });
        }
        if !tail.ends_with(b"\n") && !tail.is_empty() {
            return Err(SourceError::Structure {
                what,
                line: self.last_line,
                message: "the file does not end with a line end: its last line may be cut short. If the file is complete, end it with a newline".into(),
            });
        }
        Ok(())
    }
}

impl Source for CsvSource {
    fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
        cells.clear();
        let start = self.reader.position().clone();
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(start.line());
                SourceError::Structure {
                    what: self.path.display().to_string(),
                    line,
                    message: e.to_string(),
                }
            })?;
        if !more {
            self.check_ending()?;
            return Ok(None);
        }
        let line = self
            .record
            .position()
            .map(|p| p.line())
            .unwrap_or(start.line())
            + self.embedded_newlines;
        self.embedded_newlines += self
            .record
            .as_slice()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        self.last_start = self
            .record
            .position()
            .map(|p| p.byte())
            .unwrap_or(start.byte());
        self.last_line = line;
        let mut bad = None;
        if self.record.len() != self.width {
            bad = Some(format!(
                "{} fields where the header has {}",
                self.record.len(),
                self.width
            ));
        }
        for &p in &self.positions {
            cells.push(match self.record.get(p) {
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(s) => Cell::Text(s.to_string()),
                    Err(e) => Cell::Invalid(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
                },
                None => Cell::Invalid("missing field".into()),
            });
        }
        Ok(Some(Read { line, bad }))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
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
}
