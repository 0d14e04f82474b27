//! The end of the snapshot: the sorted runs merged into one stream of rows, on a thread of its
//! own, a few batches ahead of the consumer (who is busy with the baseline and the writes).
//!
//! Invariants:
//! - Rows come out in (key, line) order: a k-way merge of runs that are each in that order.
//! - The merging thread hands over records (the bytes of `runs`), not rows: a row's buffers are
//!   allocated and freed on the consumer's thread, where the allocator reuses them at once;
//!   freeing another thread's allocations costs glibc a lock per row. The consumer may read a
//!   record in place ([`Rows::peek`]) and never make it a row at all.
//! - A record that shares its key with another is marked so (`Header::dup`), and the records
//!   of one key are never split between two batches: whether a key has one row is known from
//!   the record alone.
//! - A failure of the merging thread reaches the consumer as an error, and a panic as a panic:
//!   the rows never just end early (a missing row would read as a removal).
//! - The spill directory lives as long as the merging thread; dropping the rows stops the
//!   thread and waits for it, so the files are gone when the drop returns.

use super::cells::ProfileHash;
use super::runs::{
    header, row, set_dup_flag, set_profile_flag, Header, Run, Sorted, Steps, HEADER, PREFETCH_AHEAD,
};
use crate::core::diff::SnapRow;
use crate::core::encode::RowHash;
use std::cmp::Ordering;
use std::collections::binary_heap::{BinaryHeap, PeekMut};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

/// Bytes of records per batch handed to the consumer.
const BATCH_BYTES: usize = 256 * 1024;

enum Cursor {
    File(BufReader<File>),
    Memory { run: Run, next: usize },
}

impl Cursor {
    /// Reads the next record into `rec`; false at the end of the run.
    fn next_into(&mut self, rec: &mut Vec<u8>) -> io::Result<bool> {
        rec.clear();
        match self {
            Cursor::Memory { run, next } => match run.sorted_at(*next) {
                Some(at) => {
                    run.prefetch(*next + PREFETCH_AHEAD);
                    *next += 1;
                    rec.extend_from_slice(run.record(at));
                    Ok(true)
                }
                None => Ok(false),
            },
            Cursor::File(r) => {
                rec.resize(HEADER, 0);
                match r.read_exact(rec) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
                    Err(e) => return Err(e),
                }
                let h = header(rec);
                rec.resize(h.len(), 0);
                r.read_exact(&mut rec[HEADER..])?;
                Ok(true)
            }
        }
    }
}

/// A run's current record in the merge.
struct Head {
    rec: Vec<u8>,
    cursor: usize,
}

impl Head {
    fn key_line(&self) -> (&[u8], u64) {
        let h = header(&self.rec);
        (&self.rec[HEADER..HEADER + h.key], h.line)
    }
}

/// The key of the record that starts `rec`.
fn key_of(rec: &[u8]) -> &[u8] {
    let n = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes")) as usize;
    &rec[HEADER..HEADER + n]
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
        other.key_line().cmp(&self.key_line())
    }
}

type Batches = SyncSender<io::Result<Vec<u8>>>;

/// The merging thread: records in order into batches, until the runs end or the consumer
/// hangs up. Owns the spill directories (`_dirs`), removed when it returns.
fn merge(
    mut cursors: Vec<Cursor>,
    tx: Batches,
    recycled: Receiver<Vec<u8>>,
    _dirs: Vec<tempfile::TempDir>,
    mut late_profile: Option<ProfileHash>,
) {
    let mut heap = BinaryHeap::with_capacity(cursors.len());
    let mut steps = Steps::<2>::new();
    let (mut rows, runs) = (0u64, cursors.len());
    let merged = (|| -> io::Result<()> {
        for (cursor, c) in cursors.iter_mut().enumerate() {
            let mut rec = Vec::new();
            if c.next_into(&mut rec)? {
                heap.push(Head { rec, cursor });
            }
        }
        let mut out = Vec::with_capacity(BATCH_BYTES + 4096);
        // Where the batch's last record starts.
        let mut last: Option<usize> = None;
        loop {
            let Some(mut top) = heap.peek_mut() else {
                break;
            };
            rows += 1;
            let at = out.len();
            out.extend_from_slice(&top.rec);
            if let Some(p) = &mut late_profile {
                with_profile(p, &mut out, at)?;
            }
            if let Some(prev) = last {
                if key_of(&out[prev..]) == key_of(&out[at..]) {
                    set_dup_flag(&mut out[prev..]);
                    set_dup_flag(&mut out[at..]);
                }
            }
            last = Some(at);
            let cursor = top.cursor;
            if cursors[cursor].next_into(&mut top.rec)? {
                drop(top);
            } else {
                PeekMut::pop(top);
            }
            // A batch ends between two keys, never inside one.
            let full = out.len() >= BATCH_BYTES
                && heap
                    .peek()
                    .is_none_or(|next| key_of(&next.rec) != key_of(&out[at..]));
            if full {
                last = None;
                steps.mark(0);
                if tx.send(Ok(out)).is_err() {
                    return Ok(());
                }
                steps.mark(1);
                out = recycled.try_recv().unwrap_or_default();
                out.clear();
            }
        }
        if !out.is_empty() {
            let _ = tx.send(Ok(out));
        }
        Ok(())
    })();
    steps.mark(0);
    tracing::debug!(
        rows,
        runs,
        merge_ms = steps.ms(0),
        wait_ms = steps.ms(1),
        "snapshot: merging thread"
    );
    if let Err(e) = merged {
        let _ = tx.send(Err(e));
    }
}

/// Completes the record at `at` in `out` with its profile hash, computed from its payload.
fn with_profile(p: &mut ProfileHash, out: &mut Vec<u8>, at: usize) -> io::Result<()> {
    let h = header(&out[at..at + HEADER]);
    let from = at + HEADER + h.key;
    let hash = p.of_payload(&out[from..from + h.payload]).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unreadable payload in a sorted run",
        )
    })?;
    set_profile_flag(&mut out[at..at + HEADER]);
    out.extend_from_slice(&hash.0);
    Ok(())
}

/// The sorted rows, merged on a thread of their own; `late_profile`: the profile hash to add to
/// each record from its payload.
pub(super) fn into_rows(sorted: Sorted, late_profile: Option<ProfileHash>) -> Rows {
    // The spool, if any, is the refetcher's by now (`Snapshot::take_with`).
    let Sorted {
        files,
        memory,
        dirs,
        spool: _,
    } = sorted;
    let cursors = files
        .into_iter()
        .map(|f| Cursor::File(BufReader::with_capacity(256 * 1024, f)))
        .chain(
            memory
                .into_iter()
                .map(|run| Cursor::Memory { run, next: 0 }),
        )
        .collect();
    let (tx, rx) = mpsc::sync_channel(2);
    let (recycle, recycled) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("batchsync-merge".into())
        .spawn(move || merge(cursors, tx, recycled, dirs, late_profile));
    let mut rows = Rows {
        rx: Some(rx),
        recycle,
        buf: Vec::new(),
        at: 0,
        head: None,
        thread: None,
        unstarted: None,
    };
    match spawned {
        Ok(thread) => rows.thread = Some(thread),
        // No thread to be had: an error, never a silently empty snapshot.
        Err(e) => {
            rows.rx = None;
            rows.unstarted = Some(io::Error::new(
                e.kind(),
                format!("cannot start the merge thread: {e}"),
            ));
        }
    }
    rows
}

/// The sorted rows: records read in place ([`Rows::peek`], [`Rows::advance`]) or as rows.
pub struct Rows {
    rx: Option<Receiver<io::Result<Vec<u8>>>>,
    recycle: Sender<Vec<u8>>,
    /// The current batch of records, read from `at`.
    buf: Vec<u8>,
    at: usize,
    /// The header of the record at `at`, once read.
    head: Option<Header>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Why the merging thread could not start: the first and only thing `peek` gives.
    unstarted: Option<io::Error>,
}

/// A sorted record read in place.
pub struct Record<'a> {
    h: Header,
    /// Key ‖ payload ‖ reject ‖ recipe-1 hash ‖ file offset ‖ profile hash.
    body: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn key(&self) -> &'a [u8] {
        &self.body[..self.h.key]
    }

    pub fn hash(&self) -> RowHash {
        self.h.hash
    }

    /// The profile hash, when the record carries one.
    pub fn profile(&self) -> Option<RowHash> {
        let n = self.body.len();
        self.h
            .profile
            .then(|| RowHash(self.body[n - 16..].try_into().expect("16 bytes")))
    }

    /// Another record shares this one's key.
    pub fn shared(&self) -> bool {
        self.h.dup
    }

    /// The only row of its key, read and typed without error, hashed under the store's
    /// recipe: a row whose delta only the baseline entry of its key decides.
    pub fn plain(&self) -> bool {
        !self.h.dup && self.h.bad == 0 && !self.h.old
    }

    pub fn to_row(&self) -> io::Result<SnapRow> {
        row(&self.h, self.body)
    }
}

impl Rows {
    /// The record under the cursor, receiving the next batch when this one is done; `None`
    /// at the end (and after an error, which comes once).
    pub fn peek(&mut self) -> Option<io::Result<Record<'_>>> {
        if let Some(e) = self.unstarted.take() {
            return Some(Err(e));
        }
        if self.at >= self.buf.len() {
            match self.rx.as_ref()?.recv() {
                Ok(Ok(batch)) => {
                    let done = std::mem::replace(&mut self.buf, batch);
                    let _ = self.recycle.send(done);
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.rx = None;
                    return Some(Err(e));
                }
                Err(_) => {
                    // The merging thread hung up: at the end of the rows, or in a panic.
                    self.rx = None;
                    if let Some(Err(panic)) = self.thread.take().map(|t| t.join()) {
                        std::panic::resume_unwind(panic);
                    }
                    return None;
                }
            }
        }
        let rec = &self.buf[self.at..];
        let h = *self.head.get_or_insert_with(|| header(rec));
        Some(Ok(Record {
            h,
            body: &rec[HEADER..h.len()],
        }))
    }

    /// Moves past the record under the cursor.
    pub fn advance(&mut self) {
        if self.at < self.buf.len() {
            let h = self
                .head
                .take()
                .unwrap_or_else(|| header(&self.buf[self.at..]));
            self.at += h.len();
        }
    }
}

impl Iterator for Rows {
    type Item = io::Result<SnapRow>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(h) = self.head.take() {
            // Peeked: the batch holds it.
            let row = row(&h, &self.buf[self.at + HEADER..self.at + h.len()]);
            self.at += h.len();
            return Some(row);
        }
        let row = match self.peek()? {
            Ok(rec) => rec.to_row(),
            Err(e) => return Some(Err(e)),
        };
        self.advance();
        Some(row)
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        // Hang up first, so that a merging thread blocked on a full channel wakes and ends;
        // joining then waits for the spill directory to be removed.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
