//! Where the diff happens, and the one loop that applies it.
//!
//! A [`DiffEngine`] yields a run's deltas in key order, each with the baseline entry it met.
//! The local engine ([`LocalDiff`]) reads the source into a sorted snapshot (`snapshot`) and
//! merges it with the SQLite store's baseline (`core::diff::Merge`), both read in place. The database mode of
//! WAREHOUSE.md computes the same deltas as SQL inside PostgreSQL and yields them through the
//! same trait, so mapping, the guards, the commit and shipping are shared.
//!
//! [`apply`] is the only loop over deltas: `run` feeds it the run's commit, `plan` and `check`
//! a counter of samples.
//!
//! Invariants:
//! - Deltas arrive in key order, one per key; the loop stops at the first error and at a raised
//!   stop flag, before anything is committed.
//! - The guards' denominator (the baseline's present rows) is counted as the entries go by: no
//!   second read of the baseline.
//! - The local engine settles a key whose one row and baseline entry make a
//!   `Delta::Unchanged` (`core::diff::unchanged`) in place, without a row or a step (up to
//!   65,536 in a row, so that a stop is seen), unless the sink must be told each entry it keeps
//!   (a compaction). Every other delta is the same; the settled keys reach the counts, the
//!   guards' denominator and the sink (`Sink::kept`) as one number.

use super::delta::{Apply, Sends};
use super::RunError;
use crate::config::Settings;
use crate::core::diff::{
    merge_cursors, BaseCursor, BaseRef, BaseRow, Delta, Merge, SnapCursor, SnapPeek, SnapRow,
};
use crate::core::run::Counts;
use crate::ship::StopFlag;
use crate::snapshot::{LooseReject, Payloads, Refetcher, Rows, Snapshot, SnapshotError};
use crate::state::Sink;
use crate::store::BaselineIter;
use crate::ui::Ui;

/// One delta and the baseline entry it met.
pub type Step = (Delta, Option<BaseRow>);

/// How a run's deltas are computed.
pub trait DiffEngine {
    /// Rows the source yielded.
    fn rows(&self) -> u64;
    /// Rows rejected before their key could be read: they never meet the baseline.
    fn loose(&self) -> &[LooseReject];
    /// The next delta (in key order, for the local engine).
    fn next_step(&mut self) -> Option<Result<Step, RunError>>;
    /// What the engine settled without yielding it, known once every step is taken: the
    /// database mode counts unchanged rows, removals and changes no policy sends in SQL, and its
    /// commit writes them to the baseline there; it also knows the baseline's size. The local
    /// engine counts the unchanged rows it settled in place.
    fn settled(&self) -> Diffed {
        Diffed::default()
    }
    /// Unchanged rows need not be yielded one by one: the sink keeps their entries as they
    /// are (`Sink::keeps_each` is false). Told before the first step.
    fn settle_unchanged(&mut self) {}
}

/// What the loop found: the delta's counts and the baseline's size for the guards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diffed {
    pub counts: Counts,
    /// Present entries of the baseline (tombstones not counted).
    pub baseline_rows: u64,
    /// Present entries kept as they were without a step each (`DiffEngine::settle_unchanged`):
    /// told to the sink as a count (`Sink::kept`).
    pub kept: u64,
}

/// The one diff loop: every delta of `engine`, decided by `apply`, into `sink`.
pub fn apply<S: Sink>(
    engine: &mut dyn DiffEngine,
    apply: &Apply,
    sink: &mut S,
    stop: &StopFlag,
) -> Result<Diffed, RunError>
where
    RunError: From<S::Error>,
{
    let mut out = Diffed::default();
    apply.loose(engine.loose(), sink, &mut out.counts)?;
    if !sink.keeps_each() {
        engine.settle_unchanged();
    }
    while let Some(step) = engine.next_step() {
        if stop.is_raised() {
            return Err(RunError::Interrupted);
        }
        let (delta, base) = step?;
        out.baseline_rows += base.as_ref().is_some_and(|b| b.present) as u64;
        apply.delta(delta, base, sink, &mut out.counts)?;
    }
    let settled = engine.settled();
    sink.kept(settled.kept)?;
    out.counts += settled.counts;
    out.baseline_rows += settled.baseline_rows;
    out.kept = settled.kept;
    Ok(out)
}

/// Unchanged keys the local engine passes over before it yields one (a step, where a stop is
/// seen): a few milliseconds of the merge.
const SETTLED_IN_A_ROW: u64 = 65_536;

/// The local engine: the snapshot, sorted by key (spilled past its budget), merged with a
/// baseline read in key order; both read in place, so that a key settled as unchanged makes
/// no row (at 1M rows with a 2% change, 98% of the keys).
pub struct LocalDiff<'a> {
    rows: u64,
    loose: Vec<LooseReject>,
    merge: Merge<Records, Entries<'a>>,
    /// Reads again the rows that may send something, when their values stayed in the file.
    refetch: Option<Refetcher>,
    /// Which rows those are (any added, changed or profile row until told).
    sends: Option<Sends>,
}

impl<'a> LocalDiff<'a> {
    /// `baseline`: the committed baseline in key order, or nothing on a first run.
    pub fn new(mut snap: Snapshot, baseline: Option<BaselineIter<'a>>) -> Self {
        let rows = snap.rows;
        let refetch = snap.take_refetcher();
        let loose = snap.loose.clone();
        let lazy = snap.lazy_profiles();
        let merge = merge_cursors(Records(snap.into_sorted()), Entries(baseline));
        LocalDiff {
            rows,
            loose,
            merge: merge.lazy_profiles(lazy),
            refetch,
            sends: None,
        }
    }

    /// Reads again only the rows `sends` may use the values of (`Apply::sends`).
    pub fn reading_again(mut self, sends: Sends) -> Self {
        self.sends = Some(sends);
        self
    }
}

impl Drop for LocalDiff<'_> {
    fn drop(&mut self) {
        if let Some(r) = &self.refetch {
            tracing::debug!(rows = r.rows, "snapshot: rows read again for their events");
        }
        tracing::debug!(
            rows = self.merge.settled(),
            "diff: unchanged rows settled in place"
        );
    }
}

impl DiffEngine for LocalDiff<'_> {
    fn rows(&self) -> u64 {
        self.rows
    }
    fn loose(&self) -> &[LooseReject] {
        &self.loose
    }
    /// The merge's next delta; a row that may send something (added, changed, or its profile
    /// attributes) has its values read again first when they stayed in the file.
    fn next_step(&mut self) -> Option<Result<Step, RunError>> {
        let mut step = self.merge.next_with_base()?;
        let Some(refetch) = &mut self.refetch else {
            return Some(step);
        };
        if let Ok((delta, _)) = &mut step {
            if self.sends.is_none_or(|s| s.values(delta)) {
                if let Delta::Added { row, .. }
                | Delta::Changed { row, .. }
                | Delta::Profile { row } = delta
                {
                    if let Err(e) = refetch.fill(row) {
                        return Some(Err(RunError::Snapshot(e)));
                    }
                }
            }
        }
        Some(step)
    }
    fn settled(&self) -> Diffed {
        let n = self.merge.settled();
        Diffed {
            counts: Counts {
                unchanged: n,
                ..Counts::default()
            },
            baseline_rows: n,
            kept: n,
        }
    }
    fn settle_unchanged(&mut self) {
        self.merge.settle_unchanged(SETTLED_IN_A_ROW);
    }
}

/// The sorted snapshot as the merge's cursor: records read in place.
struct Records(Rows);

impl SnapCursor for Records {
    type Error = RunError;

    fn peek(&mut self) -> Option<Result<SnapPeek<'_>, RunError>> {
        Some(match self.0.peek()? {
            Ok(r) => Ok(SnapPeek {
                key: r.key(),
                hash: r.hash(),
                profile: r.profile(),
                shared: r.shared(),
                plain: r.plain(),
            }),
            Err(e) => Err(spill(e)),
        })
    }

    fn take(&mut self) -> Result<SnapRow, RunError> {
        match self.0.next() {
            Some(row) => row.map_err(spill),
            None => Err(spill(std::io::Error::other("no record under the cursor"))),
        }
    }

    fn skip(&mut self) {
        self.0.advance();
    }
}

fn spill(e: std::io::Error) -> RunError {
    RunError::Snapshot(SnapshotError::Spill(e))
}

/// The baseline as the merge's cursor (none on a first run): entries read in place.
struct Entries<'a>(Option<BaselineIter<'a>>);

impl BaseCursor for Entries<'_> {
    type Error = RunError;

    fn peek(&mut self) -> Option<Result<BaseRef<'_>, RunError>> {
        self.0.as_mut()?.peek().map_err(RunError::from).transpose()
    }

    fn skip(&mut self) -> Result<(), RunError> {
        match &mut self.0 {
            Some(b) => Ok(b.advance()?),
            None => Ok(()),
        }
    }
}

/// Where spilled sort runs go: beside the state store.
fn spill_dir(settings: &Settings) -> std::path::PathBuf {
    settings
        .state_path
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into())
}

/// Reads the source into a sorted snapshot, with progress on stderr; a raised stop flag ends
/// the read with [`RunError::Interrupted`].
pub fn read_snapshot(
    settings: &Settings,
    stop: &StopFlag,
    ui: &Ui,
    (payloads, lazy_profiles, upgrade): (Payloads, bool, bool),
) -> Result<Snapshot, RunError> {
    let mut source = crate::source::open(settings).map_err(SnapshotError::from)?;
    let dir = spill_dir(settings);
    std::fs::create_dir_all(&dir).map_err(SnapshotError::Spill)?;
    let mut reading = ui.reading(&source.describe());
    let opts = crate::snapshot::Options {
        on_bad_row: settings.sync.on_bad_row,
        spill_dir: &dir,
        budget: crate::snapshot::DEFAULT_BUDGET,
        payloads,
        lazy_profiles,
        upgrade,
    };
    let snap = Snapshot::take_with(
        source.as_mut(),
        &settings.plan,
        settings.timezone,
        opts,
        |rows| {
            reading.rows(rows);
            if stop.is_raised() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    );
    reading.done();
    let snap = match snap {
        Err(SnapshotError::Interrupted { .. }) => return Err(RunError::Interrupted),
        other => other?,
    };
    if stop.is_raised() {
        return Err(RunError::Interrupted);
    }
    Ok(snap)
}

/// Where the rows' payloads are kept: nowhere on a run that only records the segment (the
/// first under `initial = "baseline"`, as [`Apply::for_run`] decides it), which never builds an
/// event; in the sort on a run that may send every row (any other first run, a `backfill`);
/// otherwise in the file, read again for the rows that send something (a source that cannot,
/// a query, keeps them in the sort). Should these ever disagree with the run's policy, an event
/// would find an empty payload and reject its row (`corrupt_row`), never send a wrong one.
pub fn payloads(first_run: bool, initial: crate::config::Initial, backfill: bool) -> Payloads {
    if first_run && initial == crate::config::Initial::Baseline {
        Payloads::Skip
    } else if first_run || backfill {
        Payloads::Keep
    } else {
        Payloads::Refetch
    }
}

/// Whether the snapshot may leave profile hashes to the diff: every profile attribute is an
/// event column (the row hash settles them), the baseline's profile hashes are the current
/// mapping's (not a backfill), and no open reject is being retried (a row Batch dropped is put
/// back with its old profile hash, which only a computed hash would tell apart).
pub fn lazy_profiles(settings: &Settings, backfill: bool, retry_rejects: bool) -> bool {
    let plan = &settings.plan;
    plan.has_profile() && plan.profile_in_row_hash() && !backfill && !retry_rejects
}
