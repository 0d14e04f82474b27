//! The snapshot: stream the source, type and validate each row, compute its key and hash, and
//! hand the rows back sorted by key, spilling sorted runs to disk past a memory budget.
//!
//! Two threads share the work (`cells`, `runs`), in one of two ways:
//! - A source that splits (a file of 8 MB or more, `Source::split`): each thread reads one
//!   part and types, encodes, hashes, lays out, sorts and spills its own rows into half the
//!   budget (`read_split`).
//! - Any other (`read_piped`): the caller's thread reads, types and encodes each row into
//!   batches; a sorting thread hashes them, lays them out in an arena, and sorts and spills it.
//!   When the sorting thread falls behind, the reading thread hashes its batches itself, so the
//!   hashing lands on whichever core is free.
//!
//! The sorted runs are then merged on a thread of their own, ahead of the consumer (`merge`).
//!
//! Invariants:
//! - Memory is bounded by `budget` bytes of rows (records and sort entries), plus one read
//!   buffer per spilled run and the few batches in flight between threads (a few MB), whatever
//!   the segment's size (an external merge sort).
//! - The rows, keys, hashes and rejects are exactly those of the reference path, one row at a
//!   time: `value::coerce` per cell (`type_row` in the tests), then `encode::encode_row` and
//!   `encode::row_key`: the tests compare the two. Under [`Payloads::Skip`] the same, except
//!   that every payload is empty.
//! - The source is read to its end before anything is written to the state store: a structural
//!   error, or a bad row under `on_bad_row = "fail"`, returns an error and nothing else happens.
//! - `progress` is called on the caller's thread, every 65,536 rows and once at the end; a
//!   `Break` stops the read with [`SnapshotError::Interrupted`].
//! - Spill files live in a temporary directory beside the state store and are removed on drop;
//!   a crash leaves at most that directory, which the next run ignores and the OS may clean.

mod cells;
mod merge;
mod runs;

use crate::config::OnBadRow;
use crate::core::diff::SnapRow;
use crate::core::encode::RowHash;
use crate::core::mapping::{ColumnPlan, Reject};
use crate::source::{Source, SourceError};
use chrono_tz::Tz;
pub use merge::{Record, Rows};
use runs::{Batch, Pending, BATCH_ROWS};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};

pub const DEFAULT_BUDGET: usize = 128 * 1024 * 1024;

/// Batches the sorting thread may have waiting (a few MB).
const QUEUE: usize = 8;
/// Waiting batches past which the reading thread hashes its own before sending them.
const BEHIND: usize = 2;

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
    /// The database mode: a fetched row under `on_bad_row = "fail"`.
    #[error(
        "{what} row {key}: {reason} (on_bad_row = \"fail\" stops the run; nothing was committed)"
    )]
    BadKey {
        what: String,
        key: String,
        reason: String,
    },
    #[error("temporary file beside the state store (sorted runs, or a query's values); nothing was committed")]
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
    sorted: runs::Sorted,
    /// The profile hash, computed by the merging thread from each row's payload, when rows
    /// keep their payloads (records then need not carry it through the sort).
    late_profile: Option<cells::ProfileHash>,
    lazy_profiles: bool,
    /// Reads the rows that become events again (`Payloads::Refetch`).
    refetch: Option<Refetcher>,
}

/// Why the reading thread stopped early.
enum Stop {
    Failed(SnapshotError),
    /// The sorting thread hung up: its own error says why.
    SorterGone,
}

impl Stop {
    fn into_error(self) -> SnapshotError {
        match self {
            Stop::Failed(e) => e,
            Stop::SorterGone => SnapshotError::Spill(std::io::Error::other(
                "the sorting thread stopped without saying why",
            )),
        }
    }
}

impl From<SnapshotError> for Stop {
    fn from(e: SnapshotError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<SourceError> for Stop {
    fn from(e: SourceError) -> Stop {
        Stop::Failed(e.into())
    }
}

/// The reading side's fixed inputs.
struct Reading<'a> {
    plan: &'a ColumnPlan,
    tz: Tz,
    on_bad_row: OnBadRow,
    /// Whether the reading thread computes each row's profile hash (it then travels in the
    /// records; otherwise the merging thread computes it from the payload, or the diff does).
    early_profile: bool,
    what: &'a str,
    hashing: runs::Hashing,
}

/// Whether the rows keep their payloads, the values an event is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payloads {
    Keep,
    /// Keys, hashes, lines and rejects only; every payload is empty. For a run that records
    /// the segment and sends nothing (the first run under `initial = "baseline"`): a record
    /// is then ~70 bytes instead of ~245, so three times the rows fit the budget.
    Skip,
    /// As `Skip`, and each record carries where its row began in the file: the rows that
    /// become events are read again from there ([`Refetcher`]), their values checked to be the
    /// ones hashed. For a run that sends a few percent of its rows. A source that cannot read
    /// a row twice (a query) has each row's values written to a spool file as it is read,
    /// and read back from there instead: the sort then carries no values either.
    Refetch,
}

/// How [`Snapshot::take_with`] reads and sorts.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub on_bad_row: OnBadRow,
    /// Where the spill files go (a temporary directory inside it).
    pub spill_dir: &'a Path,
    /// Bytes of rows held in memory before a sorted run is spilled.
    pub budget: usize,
    pub payloads: Payloads,
    /// Profile hashes are left to the diff (`core::diff::Merge::lazy_profiles`): the caller
    /// knows the row hash settles them. Not with payloads skipped.
    pub lazy_profiles: bool,
    /// The store holds recipe-1 hashes: each row carries its recipe-1 hash too
    /// (`SnapRow::old_hash`), to be diffed with them (DESIGN.md "Hash recipe upgrades").
    pub upgrade: bool,
}

/// A row's profile hash from its payload (its values back to back, in plan order), for rows
/// a snapshot left without one (`Options::lazy_profiles`).
pub struct ProfileHasher(cells::ProfileHash);

impl ProfileHasher {
    pub fn new(plan: &ColumnPlan) -> ProfileHasher {
        ProfileHasher(cells::ProfileHash::new(plan))
    }

    /// `None` when the payload cannot be read.
    pub fn of_payload(&mut self, payload: &[u8]) -> Option<RowHash> {
        self.0.of_payload(payload)
    }
}

impl Snapshot {
    /// [`Snapshot::take_with`], payloads kept.
    pub fn take(
        source: &mut dyn Source,
        plan: &ColumnPlan,
        tz: Tz,
        on_bad_row: OnBadRow,
        spill_dir: &Path,
        budget: usize,
        progress: impl FnMut(u64) -> std::ops::ControlFlow<()>,
    ) -> Result<Snapshot, SnapshotError> {
        let opts = Options {
            on_bad_row,
            spill_dir,
            budget,
            payloads: Payloads::Keep,
            lazy_profiles: false,
            upgrade: false,
        };
        Snapshot::take_with(source, plan, tz, opts, progress)
    }

    pub fn take_with(
        source: &mut dyn Source,
        plan: &ColumnPlan,
        tz: Tz,
        opts: Options<'_>,
        progress: impl FnMut(u64) -> std::ops::ControlFlow<()>,
    ) -> Result<Snapshot, SnapshotError> {
        let Options {
            on_bad_row,
            spill_dir,
            budget,
            payloads,
            lazy_profiles,
            upgrade,
        } = opts;
        let refetch = match payloads {
            Payloads::Refetch => source.refetch(),
            _ => None,
        };
        let tail = source.split();
        // A source that cannot read a row again spools its values, unless both cores read it
        // (each side would have a spool of its own: none does today).
        let spool = payloads == Payloads::Refetch && refetch.is_none() && tail.is_none();
        let payloads = match (payloads, &refetch) {
            (Payloads::Refetch, None) if !spool => Payloads::Keep,
            (p, _) => p,
        };
        let lazy_profiles = lazy_profiles && payloads != Payloads::Skip;
        let early_profile = plan.has_profile()
            && match payloads {
                Payloads::Skip => true,
                Payloads::Refetch => !lazy_profiles,
                Payloads::Keep => false,
            };
        let has_key = plan.has_key();
        let v1 = (upgrade || !has_key).then(|| cells::RecipeOne::new(plan));
        let hashing = runs::Hashing {
            row: crate::core::encode::RowHasher::new(
                plan.columns[..plan.hashed].iter().map(String::as_str),
            ),
            stride: if payloads == Payloads::Keep || v1.is_some() {
                plan.columns.len()
            } else {
                0
            },
            v1,
        };
        let what = source.describe();
        let reading = Reading {
            plan,
            tz,
            on_bad_row,
            early_profile,
            what: &what,
            hashing: hashing.clone(),
        };
        let layout = || runs::Layout {
            has_key,
            payloads: payloads == Payloads::Keep,
            profile: early_profile,
            upgrade,
            offsets: payloads == Payloads::Refetch,
            spool,
            hashing: hashing.clone(),
        };
        let (rows, loose, mut sorted) = match tail {
            Some(tail) => read_split(&reading, source, tail, layout, budget, spill_dir, progress)?,
            None => read_piped(&reading, source, layout(), budget, spill_dir, progress)?,
        };
        let late_profile = (plan.has_profile() && payloads == Payloads::Keep && !lazy_profiles)
            .then(|| cells::ProfileHash::new(plan));
        let refetch = match (refetch, sorted.spool.take()) {
            (Some(source), _) => Some(Refetcher::new(Again::File(source), plan, tz, hashing)),
            (None, Some(spool)) => Some(Refetcher::new(Again::Spool(spool), plan, tz, hashing)),
            (None, None) => None,
        };
        Ok(Snapshot {
            rows,
            loose,
            what,
            sorted,
            late_profile,
            lazy_profiles: lazy_profiles && plan.has_profile(),
            refetch,
        })
    }

    /// What reads the rows that become events again, when their payloads stayed in the file
    /// (`Payloads::Refetch`); every row of the sorted stream then comes with `SnapRow::at`.
    pub fn take_refetcher(&mut self) -> Option<Refetcher> {
        self.refetch.take()
    }

    /// Whether the rows were left without profile hashes (`Options::lazy_profiles`).
    pub fn lazy_profiles(&self) -> bool {
        self.lazy_profiles
    }

    /// The rows, sorted by key then line.
    pub fn into_sorted(self) -> Rows {
        merge::into_rows(self.sorted, self.late_profile)
    }
}

/// The reading thread's steps, for the debug log.
const STEPS: usize = 4;
const PARSE: usize = 0;
const ENCODE: usize = 1;
const HASH: usize = 2;
const WAIT: usize = 3;

/// The reading thread's loop: each row typed, encoded and keyed into batches for the sorting
/// thread. Returns the row count and the rows rejected without a key.
fn read_rows(
    r: &Reading<'_>,
    source: &mut dyn Source,
    progress: &mut impl FnMut(u64) -> std::ops::ControlFlow<()>,
    to_sorter: &mut impl Sink,
) -> Result<(u64, Vec<LooseReject>), Stop> {
    let has_key = r.plan.has_key();
    let mut steps = runs::Steps::<STEPS>::new();
    let mut hashed = 0u64;
    let mut encoder = cells::RowEncoder::new(r.plan, r.tz);
    // Without payloads, the profile hash travels in the records; with them, the merging thread
    // computes it from the payload (`Snapshot::late_profile`), off the sort's path.
    let mut profile = if r.early_profile {
        cells::ProfileHash::new(r.plan)
    } else {
        cells::ProfileHash::default()
    };
    let mut cells = Vec::with_capacity(r.plan.columns.len());
    let mut batch = Batch::new();
    let mut loose = Vec::new();
    let mut rows = 0u64;
    while let Some(read) = source.next_row(&mut cells)? {
        steps.mark(PARSE);
        rows += 1;
        if rows.is_multiple_of(65_536) && progress(rows).is_break() {
            return Err(SnapshotError::Interrupted { rows }.into());
        }
        let at = batch.buf.len();
        let typed = encoder.row(&mut cells, &mut batch.buf);
        let input = batch.buf.len() - at;
        let problem = match (read.bad, typed) {
            (Some(why), _) => Some(Reject::new(None, "unreadable_row", why)),
            (None, typed) => typed,
        };
        let key = if has_key {
            encoder.key(&mut batch.buf, at)
        } else {
            Ok(())
        };
        let bad = match (problem, key) {
            (None, Ok(())) => None,
            (Some(p), Ok(())) if has_key => Some(Box::new(p)),
            (Some(p), _) | (None, Err(p)) => {
                batch.buf.truncate(at);
                if r.on_bad_row == OnBadRow::Fail {
                    return Err(bad_row(r.what, read.line, &p).into());
                }
                loose.push(LooseReject {
                    line: read.line,
                    reject: p,
                });
                continue;
            }
        };
        if let (Some(p), OnBadRow::Fail) = (&bad, r.on_bad_row) {
            return Err(bad_row(r.what, read.line, p).into());
        }
        if r.hashing.stride > 0 {
            batch.spans.extend_from_slice(encoder.spans());
        }
        let profile = if profile.is_empty() {
            RowHash::default()
        } else {
            profile.of(&batch.buf[at..at + input], encoder.spans())
        };
        batch.rows.push(Pending {
            line: read.line,
            at: read.at.unwrap_or(0),
            input: input as u32,
            hashed: encoder.hashed_len(),
            profile,
            v1: RowHash::default(),
            key: (batch.buf.len() - at - input) as u32,
            hash: RowHash::default(),
            bad,
        });
        steps.mark(ENCODE);
        if batch.rows.len() == BATCH_ROWS {
            batch = to_sorter.send(batch, &r.hashing, &mut steps, &mut hashed)?;
        }
    }
    if !batch.rows.is_empty() {
        to_sorter.send(batch, &r.hashing, &mut steps, &mut hashed)?;
    }
    steps.mark(PARSE);
    tracing::debug!(
        rows,
        parse_ms = steps.ms(PARSE),
        encode_ms = steps.ms(ENCODE),
        hash_ms = steps.ms(HASH),
        batches_hashed = hashed,
        wait_ms = steps.ms(WAIT),
        "snapshot: reading thread"
    );
    if progress(rows).is_break() {
        return Err(SnapshotError::Interrupted { rows }.into());
    }
    Ok((rows, loose))
}

/// Where the reading loop puts its full batches.
trait Sink {
    /// Takes a full batch; returns an empty one to fill next.
    fn send(
        &mut self,
        batch: Batch,
        hashing: &runs::Hashing,
        steps: &mut runs::Steps<STEPS>,
        hashed: &mut u64,
    ) -> Result<Batch, Stop>;
}

/// Both cores read (a split file): each reading thread hashes, lays out and sorts its own
/// rows.
struct Inline<'a>(runs::Sorting<'a>);

impl Sink for Inline<'_> {
    fn send(
        &mut self,
        mut batch: Batch,
        _: &runs::Hashing,
        steps: &mut runs::Steps<STEPS>,
        _: &mut u64,
    ) -> Result<Batch, Stop> {
        steps.mark(ENCODE);
        self.0.add(&mut batch).map_err(|e| Stop::Failed(e.into()))?;
        // All of the side's hashing, layout, sorting and spilling: its own debug line
        // ("snapshot: sorting", side "head" or "tail") breaks it down.
        steps.mark(HASH);
        Ok(batch)
    }
}

/// The reading thread's end of the channel to the sorting thread.
struct Sorter<'a> {
    tx: SyncSender<Batch>,
    recycled: Receiver<Batch>,
    /// Batches sent and not yet taken.
    queued: &'a AtomicUsize,
}

impl Sink for Sorter<'_> {
    /// Hands a full batch to the sorting thread, hashing it here first when that thread is
    /// behind (sorting or spilling a run, say); returns an empty batch to fill next.
    fn send(
        &mut self,
        mut batch: Batch,
        hashing: &runs::Hashing,
        steps: &mut runs::Steps<STEPS>,
        hashed: &mut u64,
    ) -> Result<Batch, Stop> {
        if self.queued.load(Ordering::Relaxed) >= BEHIND {
            batch.hash(hashing);
            *hashed += 1;
            steps.mark(HASH);
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(batch).map_err(|_| Stop::SorterGone)?;
        steps.mark(WAIT);
        Ok(self.recycled.try_recv().unwrap_or_else(|_| Batch::new()))
    }
}

/// What a read gives: the rows, those rejected without a key, and the sorted runs.
type ReadOut = (u64, Vec<LooseReject>, runs::Sorted);

/// One core reads, types and encodes; the other hashes, sorts and spills (a query, a small
/// file).
fn read_piped(
    reading: &Reading<'_>,
    source: &mut dyn Source,
    layout: runs::Layout,
    budget: usize,
    spill_dir: &Path,
    mut progress: impl FnMut(u64) -> std::ops::ControlFlow<()>,
) -> Result<ReadOut, SnapshotError> {
    let (to_sorter, batches) = mpsc::sync_channel::<Batch>(QUEUE);
    let (recycle, recycled) = mpsc::channel::<Batch>();
    let abort = AtomicBool::new(false);
    let queued = AtomicUsize::new(0);
    let (read, sorted) = std::thread::scope(|scope| {
        let sorter = std::thread::Builder::new()
            .name("batchsync-sort".into())
            .spawn_scoped(scope, || {
                let sorting = runs::Sorting::new(layout, budget, spill_dir);
                runs::sort_batches(batches, recycle, &queued, sorting, &abort)
            })?;
        let mut to_sorter = Sorter {
            tx: to_sorter,
            recycled,
            queued: &queued,
        };
        let read = read_rows(reading, source, &mut progress, &mut to_sorter)
            .and_then(|read| Ok(source.finish().map(|()| read)?));
        if read.is_err() {
            // Before hanging up: the sorting thread must not sort what nobody will read.
            abort.store(true, Ordering::Release);
        }
        drop(to_sorter);
        let sorted = sorter
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok::<_, std::io::Error>((read, sorted))
    })?;
    match (read, sorted) {
        (Err(Stop::Failed(e)), _) => Err(e),
        (Err(Stop::SorterGone), Err(e)) | (Ok(_), Err(e)) => Err(e.into()),
        (Err(Stop::SorterGone), Ok(_)) | (Ok(_), Ok(None)) => {
            unreachable!("the sorting thread stops early only on an error or an abort")
        }
        (Ok((rows, loose)), Ok(Some(sorted))) => Ok((rows, loose, sorted)),
    }
}

/// Both cores read a split file (`Source::split`): the caller's thread the head, another the
/// tail, each typing, hashing and sorting its own rows into half the budget; the merge joins
/// them. The head's rows come first, so an error in the head is the one reported; the
/// tail's rows and errors count only if the split held (`Verdict::kept`).
fn read_split(
    reading: &Reading<'_>,
    head: &mut dyn Source,
    tail: crate::source::Tail,
    layout: impl Fn() -> runs::Layout,
    budget: usize,
    spill_dir: &Path,
    mut progress: impl FnMut(u64) -> std::ops::ControlFlow<()>,
) -> Result<ReadOut, SnapshotError> {
    let abort = AtomicBool::new(false);
    let tail_rows = std::sync::atomic::AtomicU64::new(0);
    let crate::source::Tail {
        source: mut tail_source,
        verdict,
    } = tail;
    let half = budget / 2;
    let (head_read, tail_read) = std::thread::scope(|scope| {
        let tail_layout = layout();
        let spawned = std::thread::Builder::new()
            .name("batchsync-read".into())
            .spawn_scoped(scope, || {
                let mut sink = Inline(runs::Sorting::new(tail_layout, half, spill_dir));
                let mut stop = |rows: u64| {
                    tail_rows.store(rows, Ordering::Relaxed);
                    if abort.load(Ordering::Relaxed) {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                };
                let read = read_rows(reading, tail_source.as_mut(), &mut stop, &mut sink)
                    .and_then(|read| Ok(tail_source.finish().map(|()| read)?));
                drop(tail_source);
                let (rows, loose) = read?;
                let sorted = sink.0.finish("tail").map_err(|e| Stop::Failed(e.into()))?;
                Ok((rows, loose, sorted))
            });
        // Without a second thread the tail is dropped unread, which tells the head to read on.
        let tail = spawned.ok();
        let mut sink = Inline(runs::Sorting::new(layout(), half, spill_dir));
        let mut head_progress = |rows: u64| progress(rows + tail_rows.load(Ordering::Relaxed));
        let mut read =
            read_rows(reading, head, &mut head_progress, &mut sink).and_then(|(rows, loose)| {
                let sorted = sink.0.finish("head").map_err(|e| Stop::Failed(e.into()))?;
                Ok((rows, loose, sorted))
            });
        if read.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        let tail_read = tail.map(|t| {
            // Progress, and an interrupt, while the tail reads on.
            while !t.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(20));
                if let Ok((rows, ..)) = &read {
                    let rows = rows + tail_rows.load(Ordering::Relaxed);
                    if progress(rows).is_break() && !abort.swap(true, Ordering::Relaxed) {
                        read = Err(SnapshotError::Interrupted { rows }.into());
                    }
                }
            }
            t.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (read, tail_read)
    });
    let (rows, mut loose, sorted) = head_read.map_err(Stop::into_error)?;
    let read = match tail_read {
        Some(tail) if verdict.kept() => {
            let (t_rows, t_loose, t_sorted) = tail.map_err(Stop::into_error)?;
            loose.extend(t_loose);
            (rows + t_rows, loose, sorted.join(t_sorted))
        }
        _ => (rows, loose, sorted),
    };
    head.finish()?;
    Ok(read)
}

/// One row's cells as the snapshot encodes them: the payload (the values back to back) and
/// the first cell that does not fit its type. The database mode encodes the rows it fetches
/// with it, so a fetched row maps exactly as the same row read locally.
pub struct PayloadEncoder {
    enc: cells::RowEncoder,
    buf: Vec<u8>,
}

impl PayloadEncoder {
    pub fn new(plan: &ColumnPlan, tz: Tz) -> PayloadEncoder {
        PayloadEncoder {
            enc: cells::RowEncoder::new(plan, tz),
            buf: Vec::new(),
        }
    }

    pub fn encode(&mut self, cells: &mut [crate::core::value::Cell]) -> (Vec<u8>, Option<Reject>) {
        self.buf.clear();
        let bad = self.enc.row(cells, &mut self.buf);
        let payload = self
            .enc
            .spans()
            .iter()
            .flat_map(|&(a, b)| &self.buf[a as usize..b as usize])
            .copied()
            .collect();
        (payload, bad)
    }
}

/// Reads a row's values again for its event, from where the row began in its file or from the
/// spool a query's rows were written to (`Payloads::Refetch`). From a file, they are encoded
/// as the snapshot encoded them, and must hash to the row's hashes (and give its key), or the
/// file changed during the run and the run stops before its commit. From the spool, they are
/// the snapshot's own bytes, checked against the row's hashes all the same.
pub struct Refetcher {
    from: Again,
    enc: cells::RowEncoder,
    /// The row hash (recipe 2), as the snapshot computed it.
    hasher: crate::core::encode::RowHasher,
    profile: cells::ProfileHash,
    has_key: bool,
    cells: Vec<crate::core::value::Cell>,
    buf: Vec<u8>,
    /// Rows read again, for the debug log.
    pub rows: u64,
}

/// Where a [`Refetcher`] reads rows again.
enum Again {
    File(Box<dyn crate::source::Refetch>),
    Spool(std::fs::File),
}

impl Refetcher {
    fn new(from: Again, plan: &ColumnPlan, tz: Tz, hashing: runs::Hashing) -> Refetcher {
        Refetcher {
            from,
            enc: cells::RowEncoder::new(plan, tz),
            hasher: hashing.row,
            profile: if plan.has_profile() {
                cells::ProfileHash::new(plan)
            } else {
                cells::ProfileHash::default()
            },
            has_key: plan.has_key(),
            cells: Vec::with_capacity(plan.columns.len()),
            buf: Vec::new(),
            rows: 0,
        }
    }

    /// Fills in the payload of a row whose values stayed in the file (`SnapRow::at`); a row
    /// that has its payload is left as it is.
    pub fn fill(&mut self, row: &mut SnapRow) -> Result<(), SnapshotError> {
        let Some(at) = row.at else {
            return Ok(());
        };
        self.rows += 1;
        let source = match &mut self.from {
            Again::File(source) => source,
            Again::Spool(spool) => {
                let parts = (&mut self.buf, &self.hasher, &mut self.profile);
                return fill_spooled(spool, parts, row, at);
            }
        };
        let read = source.row_at(at, row.line, &mut self.cells)?;
        self.buf.clear();
        let typed = self.enc.row(&mut self.cells, &mut self.buf);
        let input = self.buf.len();
        let hash = self
            .hasher
            .hash(&self.buf[..self.enc.hashed_len() as usize]);
        let profile = row
            .profile
            .map(|_| self.profile.of(&self.buf[..input], self.enc.spans()));
        let key_same = !self.has_key
            || (self.enc.key(&mut self.buf, 0).is_ok() && self.buf[input..] == row.key[..]);
        let same = read.bad.is_none()
            && typed.is_none()
            && hash == row.hash
            && profile == row.profile
            && key_same;
        if !same {
            return Err(crate::source::changed(&source.describe(), row.line).into());
        }
        self.buf.truncate(input);
        row.payload.clear();
        row.payload.extend_from_slice(&self.buf);
        row.at = None;
        Ok(())
    }
}

/// [`Refetcher::fill`] from the spool, with the refetcher's buffer and hashers.
fn fill_spooled(
    spool: &std::fs::File,
    (buf, hasher, profiles): (
        &mut Vec<u8>,
        &crate::core::encode::RowHasher,
        &mut cells::ProfileHash,
    ),
    row: &mut SnapRow,
    at: u64,
) -> Result<(), SnapshotError> {
    let hashed = runs::read_spooled(spool, at, buf)?;
    let profile = row.profile.map(|_| profiles.of_payload(buf));
    if hasher.hash(&buf[..hashed]) != row.hash || profile != row.profile.map(Some) {
        return Err(SnapshotError::Spill(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the values of row {} read back from the spool do not hash as they did",
                row.line
            ),
        )));
    }
    row.payload.clear();
    row.payload.extend_from_slice(buf);
    row.at = None;
    Ok(())
}

pub(crate) fn bad_row(what: &str, line: u64, p: &Reject) -> SnapshotError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::encode::{encode_row, row_key};
    use crate::core::mapping::MappingSpec;
    use crate::core::value::{coerce, Cell, Type, Value};
    use crate::source::Read;

    /// Types one row: values in plan order, or the first column that does not fit (its value
    /// null). The reference for what `cells` does per cell.
    fn type_row(
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
                        first_err =
                            Some(Reject::new(Some(&plan.columns[i]), "type", e.to_string()));
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

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
                at: None,
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

    /// Rows with their read errors, as a file source would give them.
    struct Script(Vec<(Vec<Cell>, Option<String>)>, usize);
    impl Source for Script {
        fn next_row(&mut self, cells: &mut Vec<Cell>) -> Result<Option<Read>, SourceError> {
            cells.clear();
            let Some((r, bad)) = self.0.get(self.1) else {
                return Ok(None);
            };
            self.1 += 1;
            cells.extend(r.iter().cloned());
            Ok(Some(Read {
                line: self.1 as u64 * 2,
                bad: bad.clone(),
                at: None,
            }))
        }
        fn describe(&self) -> String {
            "script".into()
        }
    }

    type Outcome = Result<(Vec<SnapRow>, Vec<LooseReject>), String>;

    /// The snapshot one row at a time through `type_row`, `encode_row` and `row_key`, sorted
    /// in memory: what `take` must give, whatever its threads and runs.
    /// `upgrade`: rows carry their recipe-1 hash too (`Options::upgrade`).
    fn reference_with(
        script: &Script,
        plan: &ColumnPlan,
        on_bad_row: OnBadRow,
        upgrade: bool,
    ) -> Outcome {
        let (mut rows, mut loose) = (Vec::new(), Vec::new());
        let (mut values, mut scratch) = (Vec::new(), Vec::new());
        for (i, (cells, bad)) in script.0.iter().enumerate() {
            let line = (i as u64 + 1) * 2;
            let mut cells = cells.clone();
            let typed = type_row(plan, chrono_tz::UTC, &mut cells, &mut values);
            // The row hash covers the event's columns; the payload, every column.
            let h = plan.hashed;
            let (_, hash) = encode_row(&plan.columns[..h], &values[..h], &mut scratch);
            let (payload, _) = encode_row(&plan.columns, &values, &mut scratch);
            let profile = plan.has_profile().then(|| reference_profile(plan, &values));
            let problem = match (bad, typed) {
                (Some(why), _) => Some(Reject::new(None, "unreadable_row", why.clone())),
                (None, t) => t.err(),
            };
            // Without a primary key, the key is the row's recipe-1 hash (keys never change).
            let key = row_key(&plan.key, &values, reference_v1(plan, &values)).map_err(|i| {
                Reject::new(
                    Some(&plan.columns[i]),
                    "key_null",
                    "a primary-key column is null",
                )
            });
            let (key, bad) = match (problem, key) {
                (None, Ok(k)) => (k, None),
                (Some(p), Ok(k)) if plan.has_key() => (k, Some(p)),
                (Some(p), _) | (None, Err(p)) => {
                    if on_bad_row == OnBadRow::Fail {
                        return Err(bad_row("script", line, &p).to_string());
                    }
                    loose.push(LooseReject { line, reject: p });
                    continue;
                }
            };
            if let (Some(p), OnBadRow::Fail) = (&bad, on_bad_row) {
                return Err(bad_row("script", line, p).to_string());
            }
            rows.push(SnapRow {
                key,
                hash,
                old_hash: upgrade.then(|| reference_v1(plan, &values)),
                profile,
                payload,
                at: None,
                line,
                bad: bad.map(Box::new),
            });
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key).then(a.line.cmp(&b.line)));
        Ok((rows, loose))
    }

    /// Recipe 1's row hash, one `Value` at a time: each hashed column's name header and value.
    fn reference_v1(plan: &ColumnPlan, values: &[Value]) -> RowHash {
        let parts: Vec<(Vec<u8>, Vec<u8>)> = (0..plan.hashed)
            .map(|i| {
                let (mut name, mut value) = (Vec::new(), Vec::new());
                crate::core::encode::put_name(&plan.columns[i], &mut name);
                crate::core::encode::encode_value(&values[i], &mut value);
                (name, value)
            })
            .collect();
        crate::core::encode::hash_v1(parts.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// The profile hash, one `Value` at a time: the attributes' column values, in the
    /// attributes' name order, under the key of their names (`encode::hash_profile`).
    fn reference_profile(plan: &ColumnPlan, values: &[Value]) -> RowHash {
        let key = crate::core::encode::profile_key(plan.profile.iter().map(|a| a.name.as_str()));
        let parts: Vec<Vec<u8>> = plan
            .profile
            .iter()
            .map(|a| {
                let mut value = Vec::new();
                crate::core::encode::encode_value(&values[a.column], &mut value);
                value
            })
            .collect();
        crate::core::encode::hash_profile(&key, parts.iter().map(|v| &v[..]), &mut Vec::new())
    }

    /// A sync with profile attributes: `email` the key and custom id, `id` an event attribute
    /// and a profile attribute, `amount` a profile attribute alone (outside the row hash).
    fn profile_plan() -> ColumnPlan {
        ColumnPlan::with_profile(
            MappingSpec {
                primary_key: vec!["email".into()],
                custom_id: "email".into(),
                event: Some("e".into()),
                attributes: vec!["id".into()],
                types: [
                    ("amount".to_string(), Type::Number),
                    ("id".to_string(), Type::Integer),
                ]
                .into(),
                ..Default::default()
            },
            vec![
                ("tier".into(), "amount".into()),
                ("idx".into(), "id".into()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_profile_attributes_own_column_changes_the_profile_hash_never_the_row_hash() {
        let plan = profile_plan();
        assert_eq!(plan.columns, ["email", "id", "amount"]);
        let take = |amount: &str, id: &str| {
            let row = vec![
                Cell::Text("a@x.io".into()),
                Cell::Text(id.into()),
                Cell::Text(amount.into()),
            ];
            let mut script = Script(vec![(row, None)], 0);
            let (rows, _) = taken(
                &mut script,
                &plan,
                OnBadRow::Reject,
                usize::MAX,
                Payloads::Skip,
            )
            .unwrap();
            (rows[0].hash, rows[0].profile.expect("a profile hash"))
        };
        let (h1, p1) = take("10", "1");
        let (h2, p2) = take("11", "1");
        let (h3, p3) = take("10", "2");
        assert_eq!(h1, h2, "amount is outside the row hash");
        assert_ne!(p1, p2);
        assert_ne!(h1, h3, "id is the event's");
        assert_ne!(p1, p3, "and a profile attribute too");
    }

    fn taken(
        script: &mut Script,
        plan: &ColumnPlan,
        on_bad_row: OnBadRow,
        budget: usize,
        payloads: Payloads,
    ) -> Outcome {
        taken_with(script, plan, (on_bad_row, budget, payloads), false)
    }

    fn taken_with(
        script: &mut Script,
        plan: &ColumnPlan,
        (on_bad_row, budget, payloads): (OnBadRow, usize, Payloads),
        upgrade: bool,
    ) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            on_bad_row,
            spill_dir: dir.path(),
            budget,
            payloads,
            lazy_profiles: false,
            upgrade,
        };
        let mut snap = Snapshot::take_with(script, plan, chrono_tz::UTC, opts, |_| {
            std::ops::ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
        let loose = snap.loose.clone();
        let mut refetch = snap.take_refetcher();
        let mut rows: Vec<SnapRow> = snap.into_sorted().map(|r| r.unwrap()).collect();
        // The spool is made with the first row that is sorted.
        let spooled = payloads == Payloads::Refetch && !rows.is_empty();
        assert_eq!(refetch.is_some(), spooled);
        // A script cannot read a row again: its rows' values come back from the spool.
        if let Some(refetch) = &mut refetch {
            for row in &mut rows {
                assert!(row.at.is_some() && row.payload.is_empty());
                refetch.fill(row).unwrap();
            }
            assert_eq!(refetch.rows, rows.len() as u64);
        }
        Ok((rows, loose))
    }

    fn any_cell() -> impl Strategy<Value = Cell> {
        prop_oneof![
            4 => "|[0-9]{1,3}|-?[0-9]{1,2}\\.[0-9]{1,2}|x|NaN|é".prop_map(Cell::Text),
            1 => Just(Cell::Invalid("invalid UTF-8 at byte 0".into())),
            1 => (0i64..30).prop_map(|i| Cell::Typed(Value::Int(i))),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn take_gives_the_reference_rows_keys_hashes_and_rejects(
            rows in proptest::collection::vec(
                (proptest::collection::vec(any_cell(), 3), proptest::option::weighted(0.1, "[a-z ]{1,8}")),
                0..300,
            ),
            keyed in 0u8..3,
            fail in proptest::bool::weighted(0.2),
            budget in prop_oneof![Just(usize::MAX), 200usize..20_000],
            payloads in prop_oneof![Just(Payloads::Keep), Just(Payloads::Skip), Just(Payloads::Refetch)],
            upgrade in proptest::bool::weighted(0.3),
        ) {
            let plan = if keyed == 2 {
                profile_plan()
            } else if keyed == 1 {
                plan()
            } else {
                ColumnPlan::new(MappingSpec {
                    custom_id: "email".into(),
                    event: Some("e".into()),
                    attributes: vec!["amount".into(), "id".into()],
                    types: [("amount".to_string(), Type::Number)].into(),
                    ..Default::default()
                })
                .unwrap()
            };
            let on_bad_row = if fail { OnBadRow::Fail } else { OnBadRow::Reject };
            let mut script = Script(rows, 0);
            let mut expected = reference_with(&script, &plan, on_bad_row, upgrade);
            if let (Payloads::Skip, Ok((rows, _))) = (payloads, &mut expected) {
                rows.iter_mut().for_each(|r| r.payload.clear());
            }
            let got = taken_with(&mut script, &plan, (on_bad_row, budget, payloads), upgrade);
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn without_payloads_the_rows_keep_their_keys_hashes_lines_and_rejects() {
        let mut script = Script(
            rows(3000)
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    if i % 97 == 0 {
                        r[0] = Cell::Text("NaN".into());
                    }
                    (r, (i % 389 == 0).then(|| "torn".to_string()))
                })
                .collect(),
            0,
        );
        let mut take = |payloads| {
            script.1 = 0;
            taken(&mut script, &plan(), OnBadRow::Reject, 40_000, payloads).unwrap()
        };
        let (full, full_loose) = take(Payloads::Keep);
        let (bare, bare_loose) = take(Payloads::Skip);
        assert_eq!(full.len(), 3000);
        assert!(full.iter().any(|r| r.bad.is_some()));
        assert!(bare.iter().all(|r| r.payload.is_empty()));
        let without_payload = |rows: Vec<SnapRow>| {
            rows.into_iter()
                .map(|r| (r.key, r.hash, r.line, r.bad))
                .collect::<Vec<_>>()
        };
        assert_eq!(without_payload(bare), without_payload(full));
        assert_eq!(bare_loose, full_loose);
    }

    #[test]
    fn many_batches_and_runs_come_back_whole_and_in_order() {
        // More rows than a few batches, a budget that spills a dozen runs.
        let mut src = VecSource(rows(20_000), 0);
        let (rows, loose) = taken_vec(&mut src, 400_000);
        assert!(loose.is_empty());
        assert_eq!(rows.len(), 20_000);
        assert!(rows
            .windows(2)
            .all(|w| (&w[0].key, w[0].line) <= (&w[1].key, w[1].line)));
    }

    fn taken_vec(src: &mut VecSource, budget: usize) -> (Vec<SnapRow>, Vec<LooseReject>) {
        let dir = tempfile::tempdir().unwrap();
        let snap = Snapshot::take(
            src,
            &plan(),
            chrono_tz::UTC,
            OnBadRow::Reject,
            dir.path(),
            budget,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        let loose = snap.loose.clone();
        (snap.into_sorted().map(|r| r.unwrap()).collect(), loose)
    }

    #[test]
    fn a_break_from_progress_interrupts_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = VecSource(rows(70_000), 0);
        let err = Snapshot::take(
            &mut src,
            &plan(),
            chrono_tz::UTC,
            OnBadRow::Reject,
            dir.path(),
            100_000,
            |_| std::ops::ControlFlow::Break(()),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            matches!(err, SnapshotError::Interrupted { rows: 65_536 }),
            "{err}"
        );
    }

    #[test]
    fn dropping_the_sorted_rows_early_removes_the_spill_files() {
        let dir = tempfile::tempdir().unwrap();
        // Megabytes of rows: more than the merging thread may run ahead, so it is still
        // reading its runs when the consumer gives up.
        let mut src = VecSource(rows(50_000), 0);
        let snap = Snapshot::take(
            &mut src,
            &plan(),
            chrono_tz::UTC,
            OnBadRow::Reject,
            dir.path(),
            200_000,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        let mut sorted = snap.into_sorted();
        assert!(sorted.next().unwrap().is_ok());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(sorted);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A CSV file for `plan()`: quoted newlines throughout and, when `messy`, bad amounts,
    /// empty keys and repeated keys spread over the whole file, so that both parts of a split
    /// meet them; `bad`: rows whose amount is not a number, whatever `messy`.
    fn messy_csv(n: usize, messy: bool, bad: &[usize]) -> Vec<u8> {
        let mut s = String::from("id,email,amount\n");
        for i in 0..n {
            let id = if messy && i % 97 == 5 {
                String::new()
            } else if messy {
                ((i * 7919) % (n - n / 50)).to_string()
            } else {
                i.to_string()
            };
            let email = if i % 13 == 0 {
                format!("\"u{i}\nline two, \"\"quoted\"\"\"")
            } else {
                format!("u{i}@x.test")
            };
            let amount = if (messy && i % 89 == 3) || bad.contains(&i) {
                "lots".into()
            } else {
                format!("{}.5", i % 7)
            };
            s.push_str(&format!("{id},{email},{amount}\n"));
        }
        s.into_bytes()
    }

    type Taken = Result<(u64, Vec<SnapRow>, Vec<LooseReject>), String>;

    fn taken_csv(content: &[u8], split: bool, budget: usize, on_bad_row: OnBadRow) -> Taken {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rows.csv");
        std::fs::write(&file, content).unwrap();
        let cols = plan().columns.clone();
        let mut src = crate::source::csv::CsvSource::open(&file, b',', &cols)
            .unwrap()
            .split_from(if split { 1 } else { u64::MAX });
        let snap = Snapshot::take(
            &mut src,
            &plan(),
            chrono_tz::UTC,
            on_bad_row,
            dir.path(),
            budget,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "<dir>")
        })?;
        let (rows, loose) = (snap.rows, snap.loose.clone());
        Ok((
            rows,
            snap.into_sorted().map(|r| r.unwrap()).collect(),
            loose,
        ))
    }

    #[test]
    fn a_file_read_by_both_cores_gives_the_rows_of_one_reader() {
        let content = messy_csv(6000, true, &[]);
        for budget in [usize::MAX, 60_000] {
            let one = taken_csv(&content, false, budget, OnBadRow::Reject).unwrap();
            let two = taken_csv(&content, true, budget, OnBadRow::Reject).unwrap();
            assert_eq!(one.0, 6000);
            assert!(one.2.len() > 50, "rows without a key are loose rejects");
            assert!(one.1.iter().filter(|r| r.bad.is_some()).count() > 50);
            assert_eq!(one, two, "budget {budget}");
        }
    }

    /// A file's snapshot with `payloads`, and its refetcher if it has one.
    fn taken_file(
        file: &std::path::Path,
        plan: &ColumnPlan,
        (split, budget, payloads): (bool, usize, Payloads),
    ) -> (Vec<SnapRow>, Option<Refetcher>) {
        let cols = plan.columns.clone();
        let split = if split { 1 } else { u64::MAX };
        let mut src: Box<dyn Source> = if file.extension().is_some_and(|e| e == "csv") {
            Box::new(
                crate::source::csv::CsvSource::open(file, b',', &cols)
                    .unwrap()
                    .split_from(split),
            )
        } else {
            Box::new(
                crate::source::ndjson::NdjsonSource::open(file, &cols)
                    .unwrap()
                    .split_from(split),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            on_bad_row: OnBadRow::Reject,
            spill_dir: dir.path(),
            budget,
            payloads,
            lazy_profiles: false,
            upgrade: false,
        };
        let mut snap = Snapshot::take_with(src.as_mut(), plan, chrono_tz::UTC, opts, |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
        let refetch = snap.take_refetcher();
        (snap.into_sorted().map(|r| r.unwrap()).collect(), refetch)
    }

    /// The CSV of `messy_csv` as NDJSON, line for line where it has no quoted newline.
    fn messy_ndjson(n: usize) -> Vec<u8> {
        let mut s = String::new();
        for i in 0..n {
            let id = ((i * 7919) % (n - n / 50)).to_string();
            let amount = if i % 89 == 3 {
                "\"lots\"".to_string()
            } else {
                format!("{}.5", i % 7)
            };
            if i % 17 == 0 {
                s.push_str("   \n");
            }
            s.push_str(&format!(
                "{{\"id\":{id},\"email\":\"u{i}\\nline two\",\"amount\":{amount}}}\r\n"
            ));
        }
        s.into_bytes()
    }

    #[test]
    fn rows_read_again_from_the_file_are_the_rows_kept_payloads_give() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("rows.csv");
        std::fs::write(&csv, messy_csv(6000, true, &[])).unwrap();
        let ndjson = dir.path().join("rows.ndjson");
        std::fs::write(&ndjson, messy_ndjson(6000)).unwrap();
        for (file, plan) in [(&csv, plan()), (&csv, profile_plan()), (&ndjson, plan())] {
            for (split, budget) in [(false, usize::MAX), (true, 60_000)] {
                let at = format!("{} split {split} budget {budget}", file.display());
                let (kept, none) = taken_file(file, &plan, (split, budget, Payloads::Keep));
                assert!(none.is_none(), "{at}");
                let (mut left, refetch) =
                    taken_file(file, &plan, (split, budget, Payloads::Refetch));
                let mut refetch = refetch.expect("a file can be read again");
                assert_eq!(kept.len(), left.len(), "{at}");
                assert!(
                    kept.iter().any(|r| r.bad.is_some()),
                    "{at}: some rows are rejected"
                );
                let mut kept = kept;
                for (k, l) in kept.iter_mut().zip(&mut left) {
                    assert!(
                        l.at.is_some() && l.payload.is_empty(),
                        "{at}: line {}",
                        l.line
                    );
                    if l.bad.is_some() {
                        // A rejected row sends nothing: it is never read again.
                        (l.at, k.payload) = (None, Vec::new());
                    } else {
                        refetch.fill(l).unwrap();
                    }
                }
                assert_eq!(kept, left, "{at}");
                let good = kept.iter().filter(|r| r.bad.is_none()).count() as u64;
                assert_eq!(refetch.rows, good, "{at}");
            }
        }
    }

    #[test]
    fn merged_records_tell_whether_their_key_is_shared_across_batch_borders() {
        // Keys 0..20000 three times each, then 40000 keys once: the groups span many 256 KB
        // batches, whose borders would fall inside some of them.
        let mut csv = String::from("id,email,amount\n");
        for i in 0..100_000usize {
            let id = if i < 60_000 { i / 3 } else { i };
            let amount = if i % 1001 == 7 { "lots" } else { "1.5" };
            csv.push_str(&format!("{id},u{i}@x.test,{amount}\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rows.csv");
        std::fs::write(&file, csv).unwrap();
        let cols = plan().columns.clone();
        for budget in [usize::MAX, 200_000] {
            let mut src = crate::source::csv::CsvSource::open(&file, b',', &cols)
                .unwrap()
                .split_from(1);
            let opts = Options {
                on_bad_row: OnBadRow::Reject,
                spill_dir: dir.path(),
                budget,
                payloads: Payloads::Refetch,
                lazy_profiles: false,
                upgrade: false,
            };
            let snap = Snapshot::take_with(&mut src, &plan(), chrono_tz::UTC, opts, |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            let mut rows = snap.into_sorted();
            let mut seen = 0usize;
            while let Some(rec) = rows.peek() {
                let rec = rec.unwrap();
                let (shared, plain) = (rec.shared(), rec.plain());
                let row = rec.to_row().unwrap();
                let line = row.line;
                // Line 2 is row 0.
                assert_eq!(shared, line - 2 < 60_000, "budget {budget}: line {line}");
                assert_eq!(
                    plain,
                    !shared && row.bad.is_none(),
                    "budget {budget}: line {line}"
                );
                rows.advance();
                seen += 1;
            }
            assert_eq!(seen, 100_000, "budget {budget}");
        }
    }

    #[test]
    fn a_row_that_changed_in_the_file_since_it_was_read_stops_the_run_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["rows.csv", "rows.ndjson"] {
            let file = dir.path().join(name);
            let (content, was, now) = if name.ends_with("csv") {
                (
                    messy_csv(3000, false, &[]),
                    "u1500@x.test,2.5",
                    "u1500@x.test,3.5",
                )
            } else {
                (
                    messy_ndjson(3000),
                    "u1500\\nline two\",\"amount\":2.5",
                    "u1500\\nline two\",\"amount\":3.5",
                )
            };
            std::fs::write(&file, &content).unwrap();
            let (mut rows, refetch) =
                taken_file(&file, &plan(), (true, usize::MAX, Payloads::Refetch));
            let mut refetch = refetch.unwrap();
            // The same length, one value changed: only a row's own check can tell.
            let text = String::from_utf8(content).unwrap();
            assert_eq!(text.matches(was).count(), 1, "{name}");
            std::fs::write(&file, text.replacen(was, now, 1)).unwrap();
            let errors: Vec<(u64, String)> = rows
                .iter_mut()
                .filter(|r| r.bad.is_none())
                .filter_map(|r| refetch.fill(r).err().map(|e| (r.line, e.to_string())))
                .collect();
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            let (line, e) = &errors[0];
            assert!(
                e.contains(&format!("{} line {line}:", file.display()))
                    && e.contains("the file changed during the run")
                    && e.contains("Nothing was committed"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn under_fail_the_first_bad_row_of_the_file_is_reported_whichever_part_meets_it() {
        // Row 0 spans lines 2-3 (its email holds a newline), so row 3 is on line 6.
        for bad in [&[3, 5000][..], &[5000, 5500]] {
            let content = messy_csv(6000, false, bad);
            let line = 2 + bad[0] + bad[0].div_ceil(13);
            let one = taken_csv(&content, false, usize::MAX, OnBadRow::Fail);
            let two = taken_csv(&content, true, usize::MAX, OnBadRow::Fail);
            let e = one.as_ref().unwrap_err();
            assert!(e.contains(&format!("line {line}:")), "{bad:?}: {e}");
            assert_eq!(one.map(|_| ()), two.map(|_| ()), "{bad:?}");
        }
        assert!(taken_csv(
            &messy_csv(6000, false, &[]),
            true,
            usize::MAX,
            OnBadRow::Fail
        )
        .is_ok());
    }
}
