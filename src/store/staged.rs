//! A run's operations on their way to the packer: the diff hands them over in key order, the
//! packer takes them in custom-id order (one operation per profile). They wait here, in memory
//! up to a budget, then as sorted runs in one temporary file, merged at the commit.
//!
//! Invariants:
//! - Every operation added comes out once, in (custom id, arrival) order: the in-memory sort is
//!   stable, and where two runs hold the same custom id the earlier run's come first. A failed
//!   write or read is an error, never a shorter stream.
//! - Memory: at most `budget` bytes of records (and 8 bytes of index each) before a run is
//!   spilled; the merge's read buffers hold `MERGE_BUFFERS` bytes in all (4 to 64 KiB a run).
//! - The file is anonymous (`tempfile::tempfile_in`, beside the state store): the system
//!   removes it when it is closed, even after kill -9.
//! - A record: its length (u32 LE), then the custom id, the event's JSON, the profile
//!   attributes' JSON and the manifest row's JSON, each a u32 LE length (`ABSENT` for none)
//!   and its bytes.

use crate::core::pack::{PackEvent, RowRef};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of records held in memory before a sorted run is spilled.
pub(super) const BUDGET: usize = 16 << 20;
/// The merge's read buffers, all runs together: a 10M-row backfill spills ~400 runs.
const MERGE_BUFFERS: usize = 8 << 20;
const ABSENT: u32 = u32::MAX;

pub(super) struct Staged {
    dir: PathBuf,
    budget: usize,
    /// Records back to back, in arrival order.
    mem: Vec<u8>,
    /// Where each record of `mem` starts.
    starts: Vec<u32>,
    file: Option<File>,
    /// The spilled runs: offset and length in `file`.
    runs: Vec<(u64, u64)>,
    /// Bytes written to `file`.
    written: u64,
    added: u64,
}

/// Appends a field: its length, then its bytes, written by `write` straight into `buf`.
fn put(buf: &mut Vec<u8>, write: Option<impl FnOnce(&mut Vec<u8>)>) -> io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&ABSENT.to_le_bytes());
    if let Some(write) = write {
        write(buf);
        let len = u32::try_from(buf.len() - at - 4)
            .ok()
            .filter(|&l| l != ABSENT)
            .ok_or_else(|| corrupt("a field of 4 GiB or more"))?;
        buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

/// A value's JSON text, written into a record.
fn json(v: &impl serde::Serialize) -> impl FnOnce(&mut Vec<u8>) + '_ {
    move |buf| serde_json::to_writer(buf, v).expect("JSON serialises into memory")
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("staged operations: {what}"),
    )
}

/// Reads a record's fields: custom id, event, attributes, row.
fn fields(rec: &[u8]) -> io::Result<[Option<&[u8]>; 4]> {
    let mut rest = rec;
    let mut out = [None; 4];
    for f in &mut out {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("a record cut short"))?;
        let len = u32::from_le_bytes(*len);
        rest = tail;
        if len != ABSENT {
            let len = len as usize;
            if rest.len() < len {
                return Err(corrupt("a record cut short"));
            }
            let (b, tail) = rest.split_at(len);
            *f = Some(b);
            rest = tail;
        }
    }
    Ok(out)
}

/// The custom id of a record (its bytes after the length).
fn custom_id(rec: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes")) as usize;
    &rec[8..8 + len]
}

fn text(b: Option<&[u8]>, what: &str) -> io::Result<Option<String>> {
    b.map(|b| String::from_utf8(b.to_vec()).map_err(|_| corrupt(what)))
        .transpose()
}

/// The operation of a record (with its length prefix).
fn event(rec: &[u8]) -> io::Result<PackEvent> {
    let [id, event, attributes, row] = fields(&rec[4..])?;
    let row = row.ok_or_else(|| corrupt("a record without its row"))?;
    let row: RowRef =
        serde_json::from_slice(row).map_err(|e| corrupt(&format!("unreadable row: {e}")))?;
    Ok(PackEvent {
        custom_id: text(id, "a custom id")?.ok_or_else(|| corrupt("a record without custom id"))?,
        event_json: text(event, "an event")?,
        attributes_json: text(attributes, "attributes")?,
        row,
    })
}

impl Staged {
    pub(super) fn new(dir: &Path, budget: usize) -> Staged {
        Staged {
            dir: dir.to_path_buf(),
            budget,
            mem: Vec::new(),
            starts: Vec::new(),
            file: None,
            runs: Vec::new(),
            written: 0,
            added: 0,
        }
    }

    /// Where the runs are spilled.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds an operation: its custom id, its event and profile attributes (JSON values), and
    /// the manifest's row.
    pub(super) fn add(
        &mut self,
        custom_id: &str,
        event: Option<&serde_json::Value>,
        attributes: Option<&serde_json::Value>,
        row: &RowRef,
    ) -> io::Result<()> {
        let start = self.mem.len();
        self.mem.extend_from_slice(&[0; 4]);
        put(
            &mut self.mem,
            Some(|b: &mut Vec<u8>| b.extend_from_slice(custom_id.as_bytes())),
        )?;
        put(&mut self.mem, event.map(json))?;
        put(&mut self.mem, attributes.map(json))?;
        put(&mut self.mem, Some(json(row)))?;
        let len = u32::try_from(self.mem.len() - start)
            .map_err(|_| corrupt("an operation of 4 GiB or more"))?;
        self.mem[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.starts.push(start as u32);
        self.added += 1;
        if self.mem.len() >= self.budget || self.mem.len() > u32::MAX as usize / 2 {
            self.spill()?;
        }
        Ok(())
    }

    fn record(&self, start: u32) -> &[u8] {
        let s = start as usize;
        let len = u32::from_le_bytes(self.mem[s..s + 4].try_into().expect("4 bytes")) as usize;
        &self.mem[s..s + len]
    }

    /// Sorts the records in memory by custom id, keeping arrival order among equals.
    fn sort(&mut self) {
        let mut starts = std::mem::take(&mut self.starts);
        starts.sort_by(|a, b| custom_id(self.record(*a)).cmp(custom_id(self.record(*b))));
        self.starts = starts;
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.starts.is_empty() {
            return Ok(());
        }
        self.sort();
        if self.file.is_none() {
            self.file = Some(tempfile::tempfile_in(&self.dir)?);
        }
        let file = self.file.as_ref().expect("opened");
        let offset = self.written;
        let mut w = BufWriter::with_capacity(1 << 20, FileAt { file, at: offset });
        for &s in &self.starts {
            let s = s as usize;
            let len = u32::from_le_bytes(self.mem[s..s + 4].try_into().expect("4 bytes")) as usize;
            w.write_all(&self.mem[s..s + len])?;
        }
        let end = w.into_inner().map_err(|e| e.into_error())?.at;
        self.runs.push((offset, end - offset));
        self.written = end;
        self.mem.clear();
        self.starts.clear();
        Ok(())
    }

    /// The operations in (custom id, arrival) order.
    pub(super) fn into_sorted(mut self) -> io::Result<Sorted> {
        if self.runs.is_empty() {
            self.sort();
            return Ok(Sorted(Inner::Memory {
                starts: std::mem::take(&mut self.starts).into_iter(),
                mem: std::mem::take(&mut self.mem),
            }));
        }
        self.spill()?;
        self.mem = Vec::new();
        let file = self.file.take().expect("runs were spilled");
        let mut readers: Vec<RunReader> = self
            .runs
            .iter()
            .map(|&(at, len)| RunReader {
                buffer: (MERGE_BUFFERS / self.runs.len()).clamp(4 << 10, 64 << 10),
                at,
                end: at + len,
                buf: Vec::new(),
                pos: 0,
            })
            .collect();
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (run, r) in readers.iter_mut().enumerate() {
            let mut rec = Vec::new();
            if r.next_into(&file, &mut rec)? {
                heap.push(Head { rec, run });
            }
        }
        Ok(Sorted(Inner::Merge {
            file,
            readers,
            heap,
        }))
    }
}

/// A writer at an offset of a file, moving on as it writes.
struct FileAt<'a> {
    file: &'a File,
    at: u64,
}

impl Write for FileAt<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A spilled run read back through its own buffer.
struct RunReader {
    /// Bytes read at a time.
    buffer: usize,
    at: u64,
    end: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl RunReader {
    /// Makes `n` bytes available at `pos`; false at the run's clean end.
    fn fill(&mut self, file: &File, n: usize) -> io::Result<bool> {
        if self.buf.len() - self.pos >= n {
            return Ok(true);
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let want = (n.max(self.buffer) - self.buf.len()) as u64;
        let take = want.min(self.end - self.at) as usize;
        let from = self.buf.len();
        self.buf.resize(from + take, 0);
        file.read_exact_at(&mut self.buf[from..], self.at)?;
        self.at += take as u64;
        if self.buf.len() >= n {
            Ok(true)
        } else if self.buf.is_empty() {
            Ok(false)
        } else {
            Err(corrupt("a spilled run cut short"))
        }
    }

    /// Reads the next record into `rec`; false at the end of the run.
    fn next_into(&mut self, file: &File, rec: &mut Vec<u8>) -> io::Result<bool> {
        if !self.fill(file, 4)? {
            return Ok(false);
        }
        let len = u32::from_le_bytes(self.buf[self.pos..self.pos + 4].try_into().expect("4"));
        let len = len as usize;
        if len < 4 || !self.fill(file, len)? {
            return Err(corrupt("a spilled run cut short"));
        }
        rec.clear();
        rec.extend_from_slice(&self.buf[self.pos..self.pos + len]);
        self.pos += len;
        Ok(true)
    }
}

/// A run's current record in the merge.
struct Head {
    rec: Vec<u8>,
    run: usize,
}

impl Head {
    fn order(&self) -> (&[u8], usize) {
        (custom_id(&self.rec), self.run)
    }
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
    // Reversed: BinaryHeap is a max-heap; the smallest (custom id, run) comes first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.order().cmp(&self.order())
    }
}

/// The operations in order ([`Staged::into_sorted`]).
pub(super) struct Sorted(Inner);

enum Inner {
    Memory {
        mem: Vec<u8>,
        starts: std::vec::IntoIter<u32>,
    },
    Merge {
        file: File,
        readers: Vec<RunReader>,
        heap: BinaryHeap<Head>,
    },
}

impl Iterator for Sorted {
    type Item = io::Result<PackEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Inner::Memory { mem, starts } => {
                let s = starts.next()? as usize;
                let len = u32::from_le_bytes(mem[s..s + 4].try_into().expect("4 bytes")) as usize;
                Some(event(&mem[s..s + len]))
            }
            Inner::Merge {
                file,
                readers,
                heap,
            } => {
                let mut top = heap.peek_mut()?;
                let out = event(&top.rec);
                let run = top.run;
                match readers[run].next_into(file, &mut top.rec) {
                    Ok(true) => {}
                    Ok(false) => {
                        std::collections::binary_heap::PeekMut::pop(top);
                    }
                    Err(e) => {
                        std::collections::binary_heap::PeekMut::pop(top);
                        heap.clear();
                        return Some(Err(e));
                    }
                }
                Some(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Custom id, event, attributes.
    type Op = (String, Option<serde_json::Value>, Option<serde_json::Value>);

    fn row(n: usize) -> RowRef {
        RowRef::new(
            format!("{{\"id\":{n}}}"),
            &n.to_be_bytes(),
            Default::default(),
            None,
        )
    }

    /// Adds the operations, returns them as they come out.
    fn through(ops: &[Op], budget: usize) -> Vec<PackEvent> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staged::new(dir.path(), budget);
        for (n, (id, ev, attrs)) in ops.iter().enumerate() {
            s.add(id, ev.as_ref(), attrs.as_ref(), &row(n)).unwrap();
        }
        assert_eq!(s.added, ops.len() as u64);
        s.into_sorted().unwrap().map(Result::unwrap).collect()
    }

    proptest! {
        /// In memory or spilled in many runs: every operation once, in (custom id, arrival)
        /// order, with its fields as they were added.
        #[test]
        fn operations_come_out_once_sorted_by_custom_id_then_arrival(
            ops in prop::collection::vec(
                (
                    "[a-d]{0,3}",
                    prop::option::of("[a-z0-9\"{}]{0,40}".prop_map(serde_json::Value::String)),
                    prop::option::of(any::<u32>().prop_map(|n| serde_json::json!({"n": n}))),
                ),
                0..300,
            ),
            budget in prop::sample::select(vec![1usize, 64, 700, 4096, BUDGET]),
        ) {
            let out = through(&ops, budget);
            let mut want: Vec<(usize, &Op)> = ops.iter().enumerate().collect();
            want.sort_by(|a, b| a.1 .0.cmp(&b.1 .0));
            prop_assert_eq!(out.len(), want.len());
            for (got, (n, (id, ev, attrs))) in out.iter().zip(want) {
                prop_assert_eq!(&got.custom_id, id);
                prop_assert_eq!(&got.event_json, &ev.as_ref().map(|v| v.to_string()));
                prop_assert_eq!(&got.attributes_json, &attrs.as_ref().map(|v| v.to_string()));
                prop_assert_eq!(&got.row, &row(n));
            }
        }
    }

    #[test]
    fn a_spilled_run_cut_short_is_an_error_not_a_shorter_stream() {
        let dir = tempfile::tempdir().unwrap();
        let r = row(1);
        let one = 4 + 4 + 1 + 4 + 2 + 4 + 4 + serde_json::to_string(&r).unwrap().len();
        let mut s = Staged::new(dir.path(), 2 * one);
        for id in ["b", "a", "d", "c"] {
            s.add(id, Some(&serde_json::json!({})), None, &r).unwrap();
        }
        assert_eq!(s.runs.len(), 2, "two runs of two");
        // The first run loses its last byte.
        s.runs[0].1 -= 1;
        let out = s
            .into_sorted()
            .and_then(|ops| ops.collect::<io::Result<Vec<_>>>());
        assert!(
            out.as_ref()
                .is_err_and(|e| e.to_string().contains("cut short")),
            "{:?}",
            out.map(|ops| ops.len())
        );
    }
}
