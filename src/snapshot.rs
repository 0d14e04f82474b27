//! The snapshot: stream the source, type and validate each row, compute its key and hash, and
//! hand the rows back sorted by key, spilling sorted runs to disk past a memory budget.
//!
//! Invariants:
//! - Memory is bounded by `budget` bytes of rows plus one read buffer per spilled run, whatever
//!   the segment's size (an external merge sort).
//! - The source is read to its end before anything is written to the state store: a structural
//!   error, or a bad row under `on_bad_row = "fail"`, returns an error and nothing else happens.
//! - Spill files live in a temporary directory beside the state store and are removed on drop;
//!   a crash leaves at most that directory, which the next run ignores and the OS may clean.

use crate::config::OnBadRow;
use crate::core::diff::SnapRow;
use crate::core::encode::{encode_column, encode_value, hash_encoding, RowHash};
use crate::core::mapping::{ColumnPlan, Reject};
use crate::core::value::{coerce, Cell, Value};
use crate::source::{Source, SourceError};
use chrono_tz::Tz;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read as _, Write};
use std::path::Path;

pub const DEFAULT_BUDGET: usize = 128 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "{what} line {line}: {reason} (on_bad_row = \"fail\" stops the run; nothing was committed)"
    )]
    BadRow {
        what: String,
        line: u64,
        reason: String,
    },
    #[error("spill file: {0}")]
    Spill(#[from] std::io::Error),
    #[error("interrupted after reading {rows} rows; nothing was committed")]
    Interrupted { rows: u64 },
}

/// A row rejected while reading whose key is unknown (or that has no primary key to keep).
#[derive(Debug, Clone, PartialEq)]
pub struct LooseReject {
    pub line: u64,
    pub reject: Reject,
}

pub struct Snapshot {
    pub rows: u64,
    /// Rows rejected while reading that are not in the sorted stream.
    pub loose: Vec<LooseReject>,
    pub what: String,
    sorted: Sorted,
}

enum Sorted {
    Memory(Vec<SnapRow>),
    Spilled {
        runs: Vec<File>,
        _dir: tempfile::TempDir,
    },
}

fn row_bytes(r: &SnapRow) -> usize {
    r.key.len() + r.payload.len() + 96
}

fn sort_rows(rows: &mut [SnapRow]) {
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(a.line.cmp(&b.line)));
}

/// Types one row: values in plan order, or the first column that does not fit.
pub fn type_row(
    plan: &ColumnPlan,
    tz: Tz,
    cells: &mut Vec<Cell>,
    values: &mut Vec<Value>,
) -> Result<(), Reject> {
    values.clear();
    let mut first_err = None;
    for (i, cell) in cells.drain(..).enumerate() {
        match coerce(cell, plan.types[i], tz) {
            Ok(v) => values.push(v),
            Err(e) => {
                values.push(Value::Null);
                if first_err.is_none() {
                    first_err = Some(Reject::new(Some(&plan.columns[i]), "type", e.to_string()));
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Encodes a typed row: (payload, hash). The payload is the values in plan order; the hash
/// covers names and values (see `core::encode`).
pub fn encode_row(
    plan: &ColumnPlan,
    values: &[Value],
    scratch: &mut Vec<u8>,
) -> (Vec<u8>, RowHash) {
    scratch.clear();
    for (name, v) in plan.columns.iter().zip(values) {
        encode_column(name, v, scratch);
    }
    let hash = hash_encoding(scratch);
    let mut payload = Vec::with_capacity(scratch.len());
    for v in values {
        encode_value(v, &mut payload);
    }
    (payload, hash)
}

/// The row key of typed values, or why there is none (a null key column).
pub fn row_key(plan: &ColumnPlan, values: &[Value], hash: RowHash) -> Result<Vec<u8>, Reject> {
    if !plan.has_key() {
        return Ok(hash.0.to_vec());
    }
    let mut key = Vec::with_capacity(16);
    for &i in &plan.key {
        if values[i].is_null() {
            return Err(Reject::new(
                Some(&plan.columns[i]),
                "key_null",
                "a primary-key column is null",
            ));
        }
        encode_value(&values[i], &mut key);
    }
    Ok(key)
}

impl Snapshot {
    pub fn take(
        source: &mut dyn Source,
        plan: &ColumnPlan,
        tz: Tz,
        on_bad_row: OnBadRow,
        spill_dir: &Path,
        budget: usize,
        mut progress: impl FnMut(u64) -> std::ops::ControlFlow<()>,
    ) -> Result<Snapshot, SnapshotError> {
        let what = source.describe();
        let mut cells = Vec::with_capacity(plan.columns.len());
        let mut values = Vec::with_capacity(plan.columns.len());
        let mut scratch = Vec::with_capacity(256);
        let mut chunk: Vec<SnapRow> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut runs: Vec<File> = Vec::new();
        let mut dir: Option<tempfile::TempDir> = None;
        let mut loose = Vec::new();
        let mut rows = 0u64;

        while let Some(read) = source.next_row(&mut cells)? {
            rows += 1;
            if rows % 65_536 == 0 && progress(rows).is_break() {
                return Err(SnapshotError::Interrupted { rows });
            }
            let typed = type_row(plan, tz, &mut cells, &mut values);
            let (payload, hash) = encode_row(plan, &values, &mut scratch);
            let problem = match (read.bad, typed) {
                (Some(why), _) => Some(Reject::new(None, "unreadable_row", why)),
                (None, Err(e)) => Some(e),
                (None, Ok(())) => None,
            };
            let key = row_key(plan, &values, hash);
            let (key, bad) = match (problem, key) {
                (None, Ok(k)) => (k, None),
                (Some(p), Ok(k)) if plan.has_key() => (k, Some(p)),
                (Some(p), _) | (None, Err(p)) => {
                    if on_bad_row == OnBadRow::Fail {
                        return Err(bad_row(&what, read.line, &p));
                    }
                    loose.push(LooseReject {
                        line: read.line,
                        reject: p,
                    });
                    continue;
                }
            };
            if let (Some(p), OnBadRow::Fail) = (&bad, on_bad_row) {
                return Err(bad_row(&what, read.line, p));
            }
            let row = SnapRow {
                key,
                hash,
                payload,
                line: read.line,
                bad,
            };
            chunk_bytes += row_bytes(&row);
            chunk.push(row);
            if chunk_bytes >= budget {
                let d = match &dir {
                    Some(d) => d,
                    None => dir.insert(
                        tempfile::Builder::new()
                            .prefix("spill-")
                            .tempdir_in(spill_dir)?,
                    ),
                };
                runs.push(spill(&mut chunk, d.path())?);
                chunk_bytes = 0;
            }
        }
        source.finish()?;
        if progress(rows).is_break() {
            return Err(SnapshotError::Interrupted { rows });
        }
        let sorted = match dir {
            None => {
                sort_rows(&mut chunk);
                Sorted::Memory(chunk)
            }
            Some(d) => {
                if !chunk.is_empty() {
                    runs.push(spill(&mut chunk, d.path())?);
                }
                Sorted::Spilled { runs, _dir: d }
            }
        };
        Ok(Snapshot {
            rows,
            loose,
            what,
            sorted,
        })
    }

    /// The rows, sorted by key then line.
    pub fn into_sorted(self) -> Box<dyn Iterator<Item = Result<SnapRow, std::io::Error>>> {
        match self.sorted {
            Sorted::Memory(rows) => Box::new(rows.into_iter().map(Ok)),
            Sorted::Spilled { runs, _dir } => Box::new(KMerge::new(runs, _dir)),
        }
    }
}

fn bad_row(what: &str, line: u64, p: &Reject) -> SnapshotError {
    let col = p
        .column
        .as_deref()
        .map(|c| format!("column {c:?}: "))
        .unwrap_or_default();
    SnapshotError::BadRow {
        what: what.to_string(),
        line,
        reason: format!("{col}{} ({})", p.reason, p.rule),
    }
}

fn spill(chunk: &mut Vec<SnapRow>, dir: &Path) -> std::io::Result<File> {
    sort_rows(chunk);
    let mut file = tempfile::tempfile_in(dir)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &mut file);
        for r in chunk.drain(..) {
            write_row(&mut w, &r)?;
        }
        w.flush()?;
    }
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    Ok(file)
}

fn put(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    w.write_all(&(b.len() as u32).to_le_bytes())?;
    w.write_all(b)
}

fn write_row(w: &mut impl Write, r: &SnapRow) -> std::io::Result<()> {
    put(w, &r.key)?;
    w.write_all(&r.hash.0)?;
    w.write_all(&r.line.to_le_bytes())?;
    put(w, &r.payload)?;
    match &r.bad {
        None => w.write_all(&[0]),
        Some(b) => {
            w.write_all(&[1])?;
            put(w, b.column.as_deref().unwrap_or("").as_bytes())?;
            put(w, b.rule.as_bytes())?;
            put(w, b.reason.as_bytes())
        }
    }
}

fn get(r: &mut impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut b = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn static_rule(rule: &[u8]) -> &'static str {
    match rule {
        b"type" => "type",
        b"unreadable_row" => "unreadable_row",
        b"key_null" => "key_null",
        _ => "bad_row",
    }
}

fn read_row(r: &mut BufReader<File>) -> std::io::Result<Option<SnapRow>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut key)?;
    let mut hash = [0u8; 16];
    r.read_exact(&mut hash)?;
    let mut line = [0u8; 8];
    r.read_exact(&mut line)?;
    let payload = get(r)?;
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    let bad = if flag[0] == 1 {
        let column = String::from_utf8_lossy(&get(r)?).into_owned();
        let rule = static_rule(&get(r)?);
        let reason = String::from_utf8_lossy(&get(r)?).into_owned();
        Some(Reject {
            column: (!column.is_empty()).then_some(column),
            rule,
            reason,
        })
    } else {
        None
    };
    Ok(Some(SnapRow {
        key,
        hash: RowHash(hash),
        payload,
        line: u64::from_le_bytes(line),
        bad,
    }))
}

struct Head {
    row: SnapRow,
    run: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    // Reversed: BinaryHeap is a max-heap and we want the smallest (key, line) first.
    fn cmp(&self, other: &Self) -> Ordering {
        (&other.row.key, other.row.line).cmp(&(&self.row.key, self.row.line))
    }
}

struct KMerge {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Head>,
    started: bool,
    _dir: tempfile::TempDir,
}

impl KMerge {
    fn new(runs: Vec<File>, dir: tempfile::TempDir) -> KMerge {
        KMerge {
            readers: runs
                .into_iter()
                .map(|f| BufReader::with_capacity(256 * 1024, f))
                .collect(),
            heap: BinaryHeap::new(),
            started: false,
            _dir: dir,
        }
    }
}

impl Iterator for KMerge {
    type Item = std::io::Result<SnapRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            for run in 0..self.readers.len() {
                match read_row(&mut self.readers[run]) {
                    Ok(Some(row)) => self.heap.push(Head { row, run }),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        let Head { row, run } = self.heap.pop()?;
        match read_row(&mut self.readers[run]) {
            Ok(Some(next)) => self.heap.push(Head { row: next, run }),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mapping::MappingSpec;
    use crate::core::value::Type;
    use crate::source::Read;

    struct VecSource(Vec<Vec<Cell>>, usize);
    impl Source for VecSource {
        fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
            cells.clear();
            let Some(r) = self.0.get(self.1) else {
                return Ok(None);
            };
            self.1 += 1;
            cells.extend(r.iter().cloned());
            Ok(Some(Read {
                line: self.1 as u64 + 1,
                bad: None,
            }))
        }
        fn describe(&self) -> String {
            "rows".into()
        }
    }

    fn plan() -> ColumnPlan {
        ColumnPlan::new(MappingSpec {
            primary_key: vec!["id".into()],
            custom_id: "email".into(),
            event: Some("e".into()),
            attributes: vec!["amount".into()],
            types: [
                ("amount".to_string(), Type::Number),
                ("id".to_string(), Type::Integer),
            ]
            .into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn rows(n: usize) -> Vec<Vec<Cell>> {
        // plan order: amount, email, id
        (0..n)
            .map(|i| {
                vec![
                    Cell::Text(format!("{}.5", i % 7)),
                    Cell::Text(format!("u{i}@x.test")),
                    Cell::Text(((i * 7919) % n).to_string()),
                ]
            })
            .collect()
    }

    #[test]
    fn spilled_and_in_memory_snapshots_yield_the_same_sorted_rows() {
        let dir = tempfile::tempdir().unwrap();
        let take = |budget| {
            let mut src = VecSource(rows(5000), 0);
            Snapshot::take(
                &mut src,
                &plan(),
                chrono_tz::UTC,
                OnBadRow::Reject,
                dir.path(),
                budget,
                |_| std::ops::ControlFlow::Continue(()),
            )
            .unwrap()
            .into_sorted()
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
        };
        let mem = take(usize::MAX);
        let spilled = take(20_000);
        assert_eq!(mem.len(), 5000);
        assert_eq!(mem, spilled);
        assert!(mem.windows(2).all(|w| w[0].key <= w[1].key));
    }

    #[test]
    fn a_bad_value_keeps_its_key_and_names_its_column() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = VecSource(
            vec![vec![
                Cell::Text("abc".into()),
                Cell::Text("a@x".into()),
                Cell::Text("4".into()),
            ]],
            0,
        );
        let snap = Snapshot::take(
            &mut src,
            &plan(),
            chrono_tz::UTC,
            OnBadRow::Reject,
            dir.path(),
            usize::MAX,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        let rows: Vec<_> = snap.into_sorted().map(|r| r.unwrap()).collect();
        let bad = rows[0].bad.as_ref().unwrap();
        assert_eq!(bad.column.as_deref(), Some("amount"));
        assert_eq!(bad.rule, "type");
    }

    #[test]
    fn under_fail_a_bad_value_aborts_with_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = VecSource(
            vec![vec![
                Cell::Text("NaN".into()),
                Cell::Text("a@x".into()),
                Cell::Text("4".into()),
            ]],
            0,
        );
        let err = Snapshot::take(
            &mut src,
            &plan(),
            chrono_tz::UTC,
            OnBadRow::Fail,
            dir.path(),
            usize::MAX,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 2") && err.contains("\"amount\""),
            "{err}"
        );
    }
}
