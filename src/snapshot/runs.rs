//! The snapshot's sorting side: batches of encoded rows come in from the reading thread, are
//! hashed here unless that thread had time to, and are laid out in a byte arena; a full arena
//! is sorted and spilled to a file. What is left is sorted in memory; `merge` takes it from
//! there.
//!
//! Invariants:
//! - An arena holds at most `budget` bytes (records plus 48 bytes per row: its 24-byte sort
//!   entry and the entry's place in the radix sort's scratch) before it is spilled; the last one
//!   stays in memory and joins the merge without a file. Two sides reading a split file have
//!   half the budget each (`Sorting::budget`).
//! - A record is the same bytes in an arena and in a spill file: a 36-byte header (key,
//!   payload and reject lengths as u32 LE, the line as u64 LE, the 16-byte hash), then the key,
//!   the payload and the reject (column, rule and reason, each u32 LE length ‖ bytes), then
//!   the row's recipe-1 hash (16 bytes), where the row began in its file (u64 LE) and its
//!   profile hash (16 bytes), when the line's bits 62, 61 and 63 say so. Under
//!   `Payloads::Skip` and `Payloads::Refetch` every payload is empty (the batches carry value
//!   spans only when recipe 1's hash needs them).
//! - Order is (key, line), the order `core::diff::Merge` needs: entries sort by a 16-byte key
//!   prefix (a radix sort, skipping the bytes all keys share) and fall back to the whole key and
//!   the line only where prefixes tie.

use super::cells::RecipeOne;
use crate::core::diff::SnapRow;
use crate::core::encode::{RowHash, RowHasher};
use crate::core::mapping::Reject;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

/// Rows per batch between the reading and the sorting thread.
pub(super) const BATCH_ROWS: usize = 1024;
pub(super) const HEADER: usize = 36;
/// How many records ahead of a reader in sorted order an arena's records are prefetched:
/// enough to cover a trip to memory at a merge's pace (~100 ns a record).
pub(super) const PREFETCH_AHEAD: usize = 16;

/// Where a thread's time goes, step by step: kept only when debug logs are on
/// (`BATCHSYNC_LOG=batchsync::snapshot=debug`), for docs/BENCHMARKS.md.
pub(super) struct Steps<const N: usize> {
    last: Option<Instant>,
    ms: [f64; N],
}

impl<const N: usize> Steps<N> {
    pub(super) fn new() -> Steps<N> {
        Steps {
            last: tracing::enabled!(tracing::Level::DEBUG).then(Instant::now),
            ms: [0.0; N],
        }
    }

    /// Charges the time since the last mark to step `i`.
    #[inline]
    pub(super) fn mark(&mut self, i: usize) {
        if let Some(t) = self.last {
            let now = Instant::now();
            self.ms[i] += (now - t).as_secs_f64() * 1000.0;
            self.last = Some(now);
        }
    }

    pub(super) fn ms(&self, i: usize) -> f64 {
        (self.ms[i] * 10.0).round() / 10.0
    }
}

/// Rows typed and encoded by the reading thread, on their way to the sorting thread.
pub(super) struct Batch {
    /// Per row, back to back: its values (the row hash's input is their first `hashed` bytes)
    /// ‖ its key.
    pub(super) buf: Vec<u8>,
    pub(super) rows: Vec<Pending>,
    /// Per row, one per column (`Hashing::stride`): where the column's value sits in the row's
    /// values, which are its payload.
    pub(super) spans: Vec<(u32, u32)>,
    /// Whether the rows' hashes are filled in: the reading thread hashes a batch itself when
    /// the sorting thread is behind, which shares the hashing between the two cores.
    hashed: bool,
}

pub(super) struct Pending {
    pub(super) line: u64,
    /// Where the row began in its file (`source::Read::at`; 0 for a query).
    pub(super) at: u64,
    pub(super) input: u32,
    /// The row hash's input: the first `hashed` bytes of `input` (the event's columns).
    pub(super) hashed: u32,
    /// Filled in with `hash` when the sync maps profile attributes.
    pub(super) profile: RowHash,
    /// 0 when the plan has no primary key: the key is then the recipe-1 hash.
    pub(super) key: u32,
    pub(super) hash: RowHash,
    /// Recipe 1's hash, when the layout asks for it (`Hashing::v1`).
    pub(super) v1: RowHash,
    pub(super) bad: Option<Box<Reject>>,
}

/// How a batch's rows are hashed: recipe 2 always; recipe 1 too for a sync without a primary
/// key (whose key it is) and during a run that upgrades a recipe-1 store.
#[derive(Clone)]
pub(super) struct Hashing {
    pub(super) row: RowHasher,
    pub(super) v1: Option<RecipeOne>,
    /// Value spans a batch carries per row (the plan's columns, or none).
    pub(super) stride: usize,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch {
            buf: Vec::with_capacity(BATCH_ROWS * 512),
            rows: Vec::with_capacity(BATCH_ROWS),
            spans: Vec::with_capacity(BATCH_ROWS * 16),
            hashed: false,
        }
    }

    /// Fills in the rows' hashes (a profile hash is computed elsewhere: by the reading thread
    /// as it encodes a row, or by the merging thread).
    pub(super) fn hash(&mut self, h: &Hashing) {
        if self.hashed {
            return;
        }
        let mut at = 0;
        for (i, r) in self.rows.iter_mut().enumerate() {
            let values = &self.buf[at..at + r.input as usize];
            r.hash = h.row.hash(&values[..r.hashed as usize]);
            if let Some(v1) = &h.v1 {
                r.v1 = v1.hash(values, &self.spans[i * h.stride..(i + 1) * h.stride]);
            }
            at += (r.input + r.key) as usize;
        }
        self.hashed = true;
    }
}

/// A run's sort entry: the first 16 key bytes (zero-padded, big-endian halves) and the
/// record's offset in the arena.
#[derive(Clone, Copy)]
struct Entry {
    hi: u64,
    lo: u64,
    at: usize,
}

/// One sorted run in memory: records back to back, and their sort entries.
pub(super) struct Run {
    data: Vec<u8>,
    entries: Vec<Entry>,
    /// The radix sort's other buffer, kept from run to run: allocating it for each sort made
    /// the next run's entries regrow past the last one's size (~25 MB more RSS at 10M rows).
    scratch: Vec<Entry>,
}

#[derive(Clone, Copy)]
pub(super) struct Header {
    pub(super) key: usize,
    pub(super) payload: usize,
    pub(super) bad: usize,
    pub(super) line: u64,
    pub(super) hash: RowHash,
    /// Whether the record ends with a profile hash (the last 16 bytes).
    pub(super) profile: bool,
    /// Whether the record carries the row's recipe-1 hash (16 bytes after the reject).
    pub(super) old: bool,
    /// Whether the record carries where the row began in its file (8 bytes, before the
    /// profile hash).
    pub(super) at: bool,
    /// Whether another merged record shares this one's key (`set_dup_flag`).
    pub(super) dup: bool,
}

/// The line's top bit in a header: the record carries a profile hash.
const PROFILE_BIT: u64 = 1 << 63;
/// The line's next bit: the record carries the row's recipe-1 hash (an upgrading run).
const OLD_BIT: u64 = 1 << 62;
/// And the next: the record carries where the row began in its file (`Payloads::Refetch`).
const AT_BIT: u64 = 1 << 61;
/// And the next, set only by the merging thread on its way out: another record shares this
/// record's key (never in a run: a run's records are marked as they are merged).
const DUP_BIT: u64 = 1 << 60;
const FLAGS: u64 = PROFILE_BIT | OLD_BIT | AT_BIT | DUP_BIT;

/// Marks a merged record's header: another record shares its key.
pub(super) fn set_dup_flag(head: &mut [u8]) {
    let line = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes")) | DUP_BIT;
    head[12..20].copy_from_slice(&line.to_le_bytes());
}

/// Marks a record's header as followed, after its reject, by a profile hash.
pub(super) fn set_profile_flag(head: &mut [u8]) {
    let line = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes")) | PROFILE_BIT;
    head[12..20].copy_from_slice(&line.to_le_bytes());
}

impl Header {
    /// The whole record's length, header included.
    pub(super) fn len(&self) -> usize {
        HEADER
            + self.key
            + self.payload
            + self.bad
            + if self.profile { 16 } else { 0 }
            + if self.old { 16 } else { 0 }
            + if self.at { 8 } else { 0 }
    }
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize
}

pub(super) fn header(b: &[u8]) -> Header {
    let line = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
    Header {
        key: u32_at(b, 0),
        payload: u32_at(b, 4),
        bad: u32_at(b, 8),
        line: line & !FLAGS,
        hash: RowHash(b[20..36].try_into().expect("16 bytes")),
        profile: line & PROFILE_BIT != 0,
        old: line & OLD_BIT != 0,
        at: line & AT_BIT != 0,
        dup: line & DUP_BIT != 0,
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn static_rule(rule: &[u8]) -> &'static str {
    match rule {
        b"type" => "type",
        b"unreadable_row" => "unreadable_row",
        b"key_null" => "key_null",
        _ => "bad_row",
    }
}

fn decode_reject(b: &[u8]) -> io::Result<Reject> {
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "corrupt reject in a run");
    let mut parts = Vec::with_capacity(3);
    let mut at = 0;
    for _ in 0..3 {
        let n = b
            .get(at..at + 4)
            .map(|_| u32_at(b, at))
            .ok_or_else(corrupt)?;
        parts.push(b.get(at + 4..at + 4 + n).ok_or_else(corrupt)?);
        at += 4 + n;
    }
    let column = String::from_utf8_lossy(parts[0]).into_owned();
    Ok(Reject {
        column: (!column.is_empty()).then_some(column),
        rule: static_rule(parts[1]),
        reason: String::from_utf8_lossy(parts[2]).into_owned(),
    })
}

/// A row from its header and its body (key ‖ payload ‖ reject ‖ recipe-1 hash ‖ file offset ‖
/// profile hash, the last three if any).
pub(super) fn row(h: &Header, body: &[u8]) -> io::Result<SnapRow> {
    let (key, rest) = body.split_at(h.key);
    let (payload, rest) = rest.split_at(h.payload);
    let (bad, mut rest) = rest.split_at(h.bad);
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "corrupt record in a run");
    let mut take = |on: bool, n: usize| -> io::Result<Option<&[u8]>> {
        if !on {
            return Ok(None);
        }
        let (h, tail) = rest.split_at_checked(n).ok_or_else(corrupt)?;
        rest = tail;
        Ok(Some(h))
    };
    let hash16 = |b: Option<&[u8]>| b.map(|b| RowHash(b.try_into().expect("16 bytes")));
    let old_hash = hash16(take(h.old, 16)?);
    let at = take(h.at, 8)?.map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let profile = hash16(take(h.profile, 16)?);
    Ok(SnapRow {
        key: key.to_vec(),
        hash: h.hash,
        old_hash,
        profile,
        payload: payload.to_vec(),
        at,
        line: h.line,
        bad: if h.bad == 0 {
            None
        } else {
            Some(Box::new(decode_reject(&bad[..h.bad])?))
        },
    })
}

impl Run {
    fn new() -> Run {
        Run {
            data: Vec::new(),
            entries: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The arena's bytes, counting the scratch the sort will need.
    fn bytes(&self) -> usize {
        self.data.len() + self.entries.len() * 2 * std::mem::size_of::<Entry>()
    }

    /// Appends a row whose payload is the `values` of its hash `input`; with its line comes,
    /// when its values stay in the file, where it began there.
    fn push(
        &mut self,
        key: &[u8],
        (hash, profile, old): (RowHash, Option<RowHash>, Option<RowHash>),
        (line, source_at): (u64, Option<u64>),
        (input, values): (&[u8], &[(u32, u32)]),
        bad: Option<&Reject>,
    ) {
        let at = self.data.len();
        let mut prefix = [0u8; 16];
        let n = key.len().min(16);
        prefix[..n].copy_from_slice(&key[..n]);
        self.entries.push(Entry {
            hi: u64::from_be_bytes(prefix[..8].try_into().expect("8 bytes")),
            lo: u64::from_be_bytes(prefix[8..].try_into().expect("8 bytes")),
            at,
        });
        let payload: u32 = values.iter().map(|&(a, b)| b - a).sum();
        let mut head = [0u8; HEADER];
        head[0..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&payload.to_le_bytes());
        let flagged = line
            | if profile.is_some() { PROFILE_BIT } else { 0 }
            | if old.is_some() { OLD_BIT } else { 0 }
            | if source_at.is_some() { AT_BIT } else { 0 };
        head[12..20].copy_from_slice(&flagged.to_le_bytes());
        head[20..36].copy_from_slice(&hash.0);
        let d = &mut self.data;
        d.reserve(HEADER + key.len() + payload as usize);
        d.extend_from_slice(&head);
        d.extend_from_slice(key);
        // The values sit back to back in the input: the payload is one slice of it.
        if let (Some(&(a, _)), Some(&(_, b))) = (values.first(), values.last()) {
            d.extend_from_slice(&input[a as usize..b as usize]);
        }
        if let Some(b) = bad {
            let from = d.len();
            put(d, b.column.as_deref().unwrap_or("").as_bytes());
            put(d, b.rule.as_bytes());
            put(d, b.reason.as_bytes());
            let n = (d.len() - from) as u32;
            d[at + 8..at + 12].copy_from_slice(&n.to_le_bytes());
        }
        if let Some(o) = old {
            d.extend_from_slice(&o.0);
        }
        if let Some(a) = source_at {
            d.extend_from_slice(&a.to_le_bytes());
        }
        if let Some(p) = profile {
            d.extend_from_slice(&p.0);
        }
    }

    pub(super) fn record(&self, at: usize) -> &[u8] {
        let h = header(&self.data[at..at + HEADER]);
        &self.data[at..at + h.len()]
    }

    /// The offset of the `i`th record in sorted order (once sorted).
    pub(super) fn sorted_at(&self, i: usize) -> Option<usize> {
        self.entries.get(i).map(|e| e.at)
    }

    /// Asks the CPU to bring the `i`th record in sorted order into its cache (a spill and the
    /// merge ask [`PREFETCH_AHEAD`] records ahead). The merge reads a
    /// run in sorted order, a random order in the arena: without this it waits on memory at
    /// nearly every record (measured: a tenth of a second run's CPU, on the merging thread).
    #[inline]
    pub(super) fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(e) = self.entries.get(i) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let record = &self.data[e.at..];
            // A record of up to 64 bytes may span two cache lines.
            for line in [0, 63.min(record.len() - 1)] {
                // SAFETY: a prefetch is a hint to the cache: it reads nothing into the program
                // and cannot fault, and the address is inside the arena anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(record[line..].as_ptr().cast::<i8>()) }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    fn sort(&mut self) {
        radix_sort(&mut self.entries, &mut self.scratch);
        let data = &self.data;
        let key_line = |at: usize| {
            let h = header(&data[at..at + HEADER]);
            (&data[at + HEADER..at + HEADER + h.key], h.line)
        };
        // Equal prefixes: duplicate keys, or keys that differ past their 16th byte.
        let mut from = 0;
        for to in 1..=self.entries.len() {
            let e = &self.entries;
            if to < e.len() && (e[to].hi, e[to].lo) == (e[from].hi, e[from].lo) {
                continue;
            }
            if to - from > 1 {
                self.entries[from..to].sort_unstable_by(|a, b| key_line(a.at).cmp(&key_line(b.at)));
            }
            from = to;
        }
    }

    /// Writes the sorted run to a new file in `dir`, leaving the run empty.
    ///
    /// Through a 1 MB buffer: one `writev` per thousand records measured slower here (the
    /// kernel's per-segment cost beats a user-space copy).
    fn spill(&mut self, dir: &Path) -> io::Result<File> {
        let mut file = tempfile::tempfile_in(dir)?;
        {
            let mut w = BufWriter::with_capacity(1 << 20, &mut file);
            for (i, e) in self.entries.iter().enumerate() {
                self.prefetch(i + PREFETCH_AHEAD);
                w.write_all(self.record(e.at))?;
            }
            w.flush()?;
        }
        file.seek(SeekFrom::Start(0))?;
        self.data.clear();
        self.entries.clear();
        Ok(file)
    }
}

/// Sorts entries by (hi, lo): least significant byte first, one counting pass per byte, and
/// none for a byte all entries share (an integer key's high bytes, the padding of short keys).
/// Stable, which the tie-break above does not rely on.
fn radix_sort(entries: &mut Vec<Entry>, scratch: &mut Vec<Entry>) {
    let n = entries.len();
    if n < 64 {
        entries.sort_unstable_by_key(|e| (e.hi, e.lo));
        return;
    }
    let digit = |e: &Entry, d: usize| -> usize {
        let word = if d < 8 { e.lo } else { e.hi };
        ((word >> ((d % 8) * 8)) & 0xff) as usize
    };
    let mut counts = vec![[0usize; 256]; 16];
    for e in entries.iter() {
        for (d, c) in counts.iter_mut().enumerate() {
            c[digit(e, d)] += 1;
        }
    }
    for (d, c) in counts.iter().enumerate() {
        if c.contains(&n) {
            continue;
        }
        let mut next = [0usize; 256];
        let mut sum = 0;
        for (slot, &k) in next.iter_mut().zip(c) {
            *slot = sum;
            sum += k;
        }
        scratch.clear();
        scratch.resize(
            n,
            Entry {
                hi: 0,
                lo: 0,
                at: 0,
            },
        );
        for e in entries.iter() {
            let b = digit(e, d);
            scratch[next[b]] = *e;
            next[b] += 1;
        }
        std::mem::swap(entries, scratch);
    }
}

/// Sorted runs to merge: spilled to files, or in memory (the last of each sorting side).
pub(super) struct Sorted {
    pub(super) files: Vec<File>,
    pub(super) memory: Vec<Run>,
    /// The spill directories, removed when dropped.
    pub(super) dirs: Vec<tempfile::TempDir>,
    /// The rows' values in the order they were read, when the records carry where each row's
    /// sit there instead of the values themselves (`Layout::spool`).
    pub(super) spool: Option<File>,
}

impl Sorted {
    /// Both sides' runs, to be merged as one.
    pub(super) fn join(mut self, other: Sorted) -> Sorted {
        self.files.extend(other.files);
        self.memory.extend(other.memory);
        self.dirs.extend(other.dirs);
        self.spool = self.spool.or(other.spool);
        self
    }
}

/// What the sorting side needs to know of the rows' shape.
pub(super) struct Layout {
    /// Without a primary key, a row's key is its hash.
    pub(super) has_key: bool,
    /// Whether records keep their payload.
    pub(super) payloads: bool,
    /// Whether rows carry a profile hash (the sync maps profile attributes).
    pub(super) profile: bool,
    /// Whether records carry the row's recipe-1 hash (a run upgrading a recipe-1 store).
    pub(super) upgrade: bool,
    /// Whether records carry where each row began in its file (`Payloads::Refetch`), or, with
    /// `spool`, where its values sit in the spool.
    pub(super) offsets: bool,
    /// Whether each row's values are written to a spool file as they come, the record carrying
    /// their place there (`Payloads::Refetch` for a source that cannot read a row again: a
    /// query). Only where one side sorts every row (`read_piped`): the places are one file's.
    pub(super) spool: bool,
    pub(super) hashing: Hashing,
}

const WAIT: usize = 0;
const HASH: usize = 1;
const ARRANGE: usize = 2;
const SORT: usize = 3;
const SPILL: usize = 4;

/// Batches hashed, laid out in an arena, sorted and spilled past the budget: on the sorting
/// thread, or inline on a reading thread when both cores read (a split file).
pub(super) struct Sorting<'a> {
    layout: Layout,
    /// This side's bytes of rows in memory: the whole budget, or half of it for each of two
    /// sides (a split file). Halves, not one budget shared: each side's arena keeps the pages
    /// of its largest run, so two sides peaking at different times would hold more than the
    /// budget between them (measured: 200 MB while reading 10M rows, with a shared 128 MB).
    budget: usize,
    spill_dir: &'a Path,
    run: Run,
    files: Vec<File>,
    dir: Option<tempfile::TempDir>,
    steps: Steps<5>,
    /// Batches this side hashed, and rows.
    hashed: u64,
    rows: u64,
    /// Where the rows' values go under `Layout::spool` (created with the first row).
    spool: Option<Spool>,
}

/// A file of rows' values in the order they were read: per row, its values' length and the
/// row hash's input length (u32 LE each), then the values (as `Pending::input`: the payload).
/// Unlinked when created, like a spill file: a crash leaves nothing behind.
struct Spool {
    out: BufWriter<File>,
    len: u64,
}

impl Spool {
    fn new(dir: &Path) -> io::Result<Spool> {
        Ok(Spool {
            out: BufWriter::with_capacity(1 << 20, tempfile::tempfile_in(dir)?),
            len: 0,
        })
    }

    /// Appends a row's values; returns where they sit, for `read_spooled`.
    fn put(&mut self, values: &[u8], hashed: u32) -> io::Result<u64> {
        let at = self.len;
        self.out.write_all(&(values.len() as u32).to_le_bytes())?;
        self.out.write_all(&hashed.to_le_bytes())?;
        self.out.write_all(values)?;
        self.len += 8 + values.len() as u64;
        Ok(at)
    }

    fn finish(self) -> io::Result<File> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// The values a spool holds at `at` into `buf` (cleared first); returns how many of their
/// first bytes are the row hash's input. One `pread` of 512 bytes, a second for a longer row.
pub(super) fn read_spooled(file: &File, at: u64, buf: &mut Vec<u8>) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    const FIRST: usize = 512;
    buf.clear();
    buf.resize(FIRST, 0);
    let mut got = 0;
    while got < 8 {
        match file.read_at(&mut buf[got..], at + got as u64)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32_at(buf, 0);
    let hashed = u32_at(buf, 4);
    if hashed > len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "corrupt spool entry",
        ));
    }
    buf.resize(8 + len, 0);
    if got < 8 + len {
        file.read_exact_at(&mut buf[got..], at + got as u64)?;
    }
    buf.drain(..8);
    Ok(hashed)
}

impl<'a> Sorting<'a> {
    pub(super) fn new(layout: Layout, budget: usize, spill_dir: &'a Path) -> Sorting<'a> {
        Sorting {
            layout,
            budget,
            spill_dir,
            run: Run::new(),
            files: Vec::new(),
            dir: None,
            steps: Steps::new(),
            hashed: 0,
            rows: 0,
            spool: None,
        }
    }

    /// Takes a batch's rows, hashing them unless the reading thread did; leaves the batch
    /// empty, to be filled again.
    pub(super) fn add(&mut self, batch: &mut Batch) -> io::Result<()> {
        let (layout, steps, run) = (&self.layout, &mut self.steps, &mut self.run);
        steps.mark(WAIT);
        self.hashed += !batch.hashed as u64;
        batch.hash(&layout.hashing);
        steps.mark(HASH);
        self.rows += batch.rows.len() as u64;
        let stride = layout.hashing.stride;
        let mut at = 0;
        for (i, r) in batch.rows.drain(..).enumerate() {
            let spans = if layout.payloads {
                &batch.spans[i * stride..(i + 1) * stride]
            } else {
                &[][..]
            };
            let input = &batch.buf[at..at + r.input as usize];
            let key_at = at + r.input as usize;
            at = key_at + r.key as usize;
            let key = if layout.has_key {
                &batch.buf[key_at..at]
            } else {
                &r.v1.0[..]
            };
            let hashes = (
                r.hash,
                layout.profile.then_some(r.profile),
                layout.upgrade.then_some(r.v1),
            );
            let at = if layout.spool {
                let spool = match &mut self.spool {
                    Some(s) => s,
                    None => self.spool.insert(Spool::new(self.spill_dir)?),
                };
                Some(spool.put(input, r.hashed)?)
            } else {
                layout.offsets.then_some(r.at)
            };
            run.push(key, hashes, (r.line, at), (input, spans), r.bad.as_deref());
            if run.bytes() >= self.budget {
                steps.mark(ARRANGE);
                let d = match &self.dir {
                    Some(d) => d,
                    None => self.dir.insert(
                        tempfile::Builder::new()
                            .prefix("spill-")
                            .tempdir_in(self.spill_dir)?,
                    ),
                };
                run.sort();
                steps.mark(SORT);
                self.files.push(run.spill(d.path())?);
                steps.mark(SPILL);
            }
        }
        batch.buf.clear();
        batch.spans.clear();
        batch.hashed = false;
        steps.mark(ARRANGE);
        Ok(())
    }

    /// Sorts what is left in memory; `side` names this side in the debug log.
    ///
    /// The last run stays in memory for the merge, unless the segment is several times the
    /// budget (this side spilled twice already) and the run holds a quarter of the budget or
    /// more: it is then spilled too, so that the merge, the diff and SQLite's cache do not
    /// share the memory with up to a budget of rows.
    pub(super) fn finish(mut self, side: &str) -> io::Result<Sorted> {
        self.run.sort();
        self.steps.mark(SORT);
        if let (true, Some(d)) = (
            self.files.len() >= 2 && self.run.bytes() >= self.budget / 4,
            &self.dir,
        ) {
            self.files.push(self.run.spill(d.path())?);
            // The arena's memory too: cleared, it would keep its pages.
            self.run = Run::new();
            self.steps.mark(SPILL);
        }
        // Its scratch is not needed any more.
        self.run.scratch = Vec::new();
        let steps = &self.steps;
        tracing::debug!(
            side,
            rows = self.rows,
            batches_hashed = self.hashed,
            wait_ms = steps.ms(WAIT),
            hash_ms = steps.ms(HASH),
            arrange_ms = steps.ms(ARRANGE),
            sort_ms = steps.ms(SORT),
            spill_ms = steps.ms(SPILL),
            runs_spilled = self.files.len(),
            "snapshot: sorting"
        );
        Ok(Sorted {
            files: self.files,
            memory: vec![self.run],
            dirs: self.dir.into_iter().collect(),
            spool: self.spool.map(Spool::finish).transpose()?,
        })
    }
}

/// The sorting thread: takes batches until the reading thread hangs up, then sorts what is
/// left. `None` when the reading thread gave up (`abort`): nothing is sorted for nobody.
pub(super) fn sort_batches(
    batches: Receiver<Batch>,
    recycle: Sender<Batch>,
    queued: &AtomicUsize,
    mut sorting: Sorting<'_>,
    abort: &AtomicBool,
) -> io::Result<Option<Sorted>> {
    for mut batch in batches.iter() {
        queued.fetch_sub(1, AtomicOrdering::Relaxed);
        sorting.add(&mut batch)?;
        // The reading thread may be gone already (an error): the batch is just dropped.
        let _ = recycle.send(batch);
    }
    if abort.load(AtomicOrdering::Acquire) {
        return Ok(None);
    }
    sorting.finish("sorting thread").map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_radix_sort_orders_as_a_comparison_sort_does(
            keys in proptest::collection::vec((0u64..4, any::<u64>(), 0u64..3, any::<u16>()), 0..600),
        ) {
            // Few distinct values in some bytes, many in others: passes are both skipped and run.
            let mut entries: Vec<Entry> = keys
                .iter()
                .enumerate()
                .map(|(at, &(a, b, c, d))| Entry { hi: a << 56 | b >> 8, lo: c << 40 | u64::from(d), at })
                .collect();
            let mut expected = entries.clone();
            expected.sort_by_key(|e| (e.hi, e.lo, e.at));
            radix_sort(&mut entries, &mut Vec::new());
            let got: Vec<_> = entries.iter().map(|e| (e.hi, e.lo, e.at)).collect();
            let expected: Vec<_> = expected.iter().map(|e| (e.hi, e.lo, e.at)).collect();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_spool_gives_back_each_rows_values_whatever_their_length() {
        // Around the first read's 512 bytes (8 of them the lengths), empty, and several reads.
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path()).unwrap();
        let rows: Vec<(Vec<u8>, u32)> = [0usize, 1, 503, 504, 505, 3000, 7, 0, 504]
            .iter()
            .enumerate()
            .map(|(i, &n)| ((0..n).map(|b| (b * 7 + i) as u8).collect(), (n / 2) as u32))
            .collect();
        let at: Vec<u64> = rows
            .iter()
            .map(|(v, h)| spool.put(v, *h).unwrap())
            .collect();
        let file = spool.finish().unwrap();
        let mut buf = vec![9; 40];
        // Out of order, as the merge asks for them.
        for i in [4, 0, 8, 5, 1, 3, 2, 7, 6] {
            let hashed = read_spooled(&file, at[i], &mut buf).unwrap();
            assert_eq!((&buf, hashed as u32), (&rows[i].0, rows[i].1), "row {i}");
        }
        let end = at[8] + 8 + 504;
        assert!(read_spooled(&file, end, &mut buf).is_err(), "past the end");
    }

    #[test]
    fn a_run_sorts_by_whole_key_then_line_past_the_prefix() {
        let mut run = Run::new();
        let long = |tail: &[u8]| [&[7u8; 16][..], tail].concat();
        let rows: Vec<(Vec<u8>, u64)> = (0..300u64)
            .map(|i| match i % 4 {
                0 => (long(&[(i % 7) as u8]), i),
                1 => (vec![(i % 5) as u8], i),
                2 => (vec![(i % 5) as u8, 0], i),
                _ => ((i * 7919 % 1000).to_be_bytes().to_vec(), i),
            })
            .collect();
        for (key, line) in &rows {
            run.push(
                key,
                (RowHash::default(), None, None),
                (*line, None),
                (&[], &[]),
                None,
            );
        }
        run.sort();
        let mut expected = rows.clone();
        expected.sort();
        let got: Vec<(Vec<u8>, u64)> = (0..rows.len())
            .map(|i| {
                let rec = run.record(run.sorted_at(i).unwrap());
                let h = header(rec);
                (rec[HEADER..HEADER + h.key].to_vec(), h.line)
            })
            .collect();
        assert_eq!(got, expected);
    }
}
