//! NDJSON files: one JSON object per line, values typed by their JSON type.
//!
//! Invariants:
//! - A key missing from an object is null for that row (JSON-lines writers often omit nulls);
//!   a mapped column that no row of the file has is a config error naming it.
//! - A line that is not a JSON object is a bad row with its line number; a last line without a
//!   line end is structural (the file looks cut short). Blank lines are skipped.

use super::{Read, Source, SourceError};
use crate::core::value::{from_json, Cell};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

pub struct NdjsonSource {
    path: PathBuf,
    reader: BufReader<File>,
    columns: Vec<String>,
    seen: Vec<bool>,
    line: u64,
    buf: Vec<u8>,
    rows: u64,
}

impl NdjsonSource {
    pub fn open(path: &Path, columns: &[String]) -> Result<NdjsonSource, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::Io {
            what: path.display().to_string(),
            message: format!("cannot open: {e}"),
        })?;
        Ok(NdjsonSource {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            columns: columns.to_vec(),
            seen: vec![false; columns.len()],
            line: 0,
            buf: Vec::new(),
            rows: 0,
        })
    }
}

impl Source for NdjsonSource {
    fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
        cells.clear();
        loop {
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
            self.line += 1;
            if !self.buf.ends_with(b"\n") {
                return Err(SourceError::Structure {
                    what: self.path.display().to_string(),
                    line: self.line,
                    message: "the file does not end with a line end: its last line may be cut short. If the file is complete, end it with a newline".into(),
                });
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            break;
        }
        self.rows += 1;
        let line = self.line;
        let mut obj = match serde_json::from_slice::<serde_json::Value>(&self.buf) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(other) => {
                cells.resize(
                    self.columns.len(),
                    Cell::Typed(crate::core::value::Value::Null),
                );
                let kind = match other {
                    serde_json::Value::Array(_) => "an array",
                    _ => "a scalar",
                };
                return Ok(Some(Read {
                    line,
                    bad: Some(format!("the line is {kind}, not a JSON object")),
                }));
            }
            Err(e) => {
                cells.resize(
                    self.columns.len(),
                    Cell::Typed(crate::core::value::Value::Null),
                );
                return Ok(Some(Read {
                    line,
                    bad: Some(format!("not valid JSON: {e}")),
                }));
            }
        };
        for (i, c) in self.columns.iter().enumerate() {
            cells.push(match obj.remove(c) {
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
        Ok(Some(Read { line, bad: None }))
    }

    fn finish(&mut self) -> Result<(), SourceError> {
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
