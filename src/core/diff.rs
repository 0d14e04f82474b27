//! The diff: a merge of the new snapshot with the baseline, both sorted by row key.
//!
//! Invariants:
//! - Inputs are sorted by key (the snapshot by key then source line); the merge never buffers
//!   more than the rows that share one key, so memory does not grow with the segment.
//! - Each key of either side yields exactly one [`Delta`], except an unchanged key the caller
//!   asked to have passed over and counted ([`Merge::settle_unchanged`]): the rule that decides
//!   it ([`unchanged`]) is the one that would have yielded [`Delta::Unchanged`].
//! - A key that a bad row or several rows share never counts as removed: the baseline keeps
//!   its entry and the rows are rejected (DESIGN.md, step 5).
//! - Pure: no I/O; the caller feeds the cursors ([`SnapCursor`], [`BaseCursor`], or iterators
//!   through [`merge`]) and applies the deltas.

use super::encode::RowHash;
use super::mapping::Reject;
use std::cmp::Ordering;

/// One row of the new snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapRow {
    pub key: Vec<u8>,
    pub hash: RowHash,
    /// The row's hash under the recipe the store was written with, when it is not the
    /// current one (a run upgrading the store diffs with it): DESIGN.md "Hash recipe upgrades".
    pub old_hash: Option<RowHash>,
    /// The profile hash, when the sync maps profile attributes.
    pub profile: Option<RowHash>,
    /// The canonical encoding of the used columns' values, in plan order (values only).
    pub payload: Vec<u8>,
    /// Where the row began in its file when its values were left there (the snapshot's
    /// `Payloads::Refetch`): the payload is empty until the row is read again, which the local
    /// engine does for a row that may send something.
    pub at: Option<u64>,
    /// Where the row came from: the 1-based line (files) or row number (queries).
    pub line: u64,
    /// A row-level read or typing error: the row is rejected, its key kept as it was. Boxed:
    /// rare, and a row is moved several times on its way through the diff.
    pub bad: Option<Box<Reject>>,
}

/// One entry of the baseline. `present = false` is a tombstone: the key left the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRow {
    pub key: Vec<u8>,
    pub hash: RowHash,
    pub present: bool,
    /// The profile hash of the attributes last sent (or recorded) for this row, if any.
    pub profile: Option<RowHash>,
}

/// A baseline entry read in place (its key borrowed from the page it sits in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseRef<'a> {
    pub key: &'a [u8],
    pub hash: RowHash,
    pub present: bool,
    pub profile: Option<RowHash>,
}

impl BaseRef<'_> {
    pub fn to_row(&self) -> BaseRow {
        BaseRow {
            key: self.key.to_vec(),
            hash: self.hash,
            present: self.present,
            profile: self.profile,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// A key not present in the baseline; `reentry` when it left the segment before.
    Added {
        row: SnapRow,
        reentry: bool,
    },
    Changed {
        row: SnapRow,
        old: RowHash,
    },
    Unchanged {
        key: Vec<u8>,
    },
    /// The row is the baseline's (its hash under the store's recipe is the entry's), and its
    /// entry is rewritten with its hash under the current recipe: nothing else happens.
    Rehashed {
        row: SnapRow,
    },
    /// The row hash is the baseline's, but the profile attributes differ from the ones last
    /// sent (or were never sent): a profile update, never a changed row.
    Profile {
        row: SnapRow,
    },
    Removed {
        key: Vec<u8>,
        hash: RowHash,
    },
    /// Several rows share this primary key: all are rejected; `in_baseline` keeps its entry.
    Duplicate {
        rows: Vec<SnapRow>,
        in_baseline: bool,
    },
    /// One row that could not be read or typed; the baseline keeps its entry.
    Bad {
        row: SnapRow,
        in_baseline: bool,
    },
    /// A tombstone with no row in the snapshot: nothing to do.
    Absent {
        key: Vec<u8>,
    },
}

impl Delta {
    /// The row key this delta is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Delta::Added { row, .. }
            | Delta::Changed { row, .. }
            | Delta::Bad { row, .. }
            | Delta::Profile { row }
            | Delta::Rehashed { row } => &row.key,
            Delta::Unchanged { key } | Delta::Removed { key, .. } | Delta::Absent { key } => key,
            Delta::Duplicate { rows, .. } => &rows[0].key,
        }
    }
}

/// A row of the snapshot read in place, before it is taken whole.
#[derive(Debug, Clone, Copy)]
pub struct SnapPeek<'a> {
    pub key: &'a [u8],
    pub hash: RowHash,
    pub profile: Option<RowHash>,
    /// Another row shares its key (the rows of a key are next to each other).
    pub shared: bool,
    /// The only row of its key, read and typed without error, hashed under the store's recipe
    /// (no `old_hash`): its delta is decided by the baseline entry alone.
    pub plain: bool,
}

/// The snapshot's side of the merge: rows in (key, line) order, each seen in place first.
/// An error ends the merge: after one, the cursor need not go on.
pub trait SnapCursor {
    type Error;
    /// The row under the cursor; `None` past the last.
    fn peek(&mut self) -> Option<Result<SnapPeek<'_>, Self::Error>>;
    /// The row under the cursor, whole; the cursor moves past it.
    fn take(&mut self) -> Result<SnapRow, Self::Error>;
    /// Moves past the row under the cursor without making it a row.
    fn skip(&mut self);
}

/// The baseline's side of the merge: entries in key order, each seen in place first.
pub trait BaseCursor {
    type Error;
    /// The entry under the cursor; `None` past the last.
    fn peek(&mut self) -> Option<Result<BaseRef<'_>, Self::Error>>;
    /// Moves past the entry under the cursor.
    fn skip(&mut self) -> Result<(), Self::Error>;
}

/// The merge, as deltas in key order, each with the baseline entry it met.
pub struct Merge<S, B> {
    snap: S,
    base: B,
    lazy_profiles: bool,
    /// At most this many unchanged keys passed over in a row (0: none).
    settle: u64,
    settled: u64,
}

/// The merge of two cursors.
pub fn merge_cursors<S, B>(snap: S, base: B) -> Merge<S, B>
where
    S: SnapCursor,
    B: BaseCursor<Error = S::Error>,
{
    Merge {
        snap,
        base,
        lazy_profiles: false,
        settle: 0,
        settled: 0,
    }
}

/// The merge of rows and entries held whole (iterators in key order).
pub fn merge<S, B, E>(snap: S, base: B) -> Merge<RowsOf<S>, EntriesOf<B>>
where
    S: Iterator<Item = Result<SnapRow, E>>,
    B: Iterator<Item = Result<BaseRow, E>>,
{
    merge_cursors(
        RowsOf {
            iter: snap,
            head: None,
            next: None,
        },
        EntriesOf {
            iter: base,
            head: None,
        },
    )
}

impl<S, B> Merge<S, B> {
    /// The snapshot's rows carry no profile hash where the row hash settles it (every profile
    /// attribute is an event column, and the baseline's profile hashes are the current
    /// mapping's): an unchanged row keeps its entry's, and only an entry that has none yet
    /// makes the row a [`Delta::Profile`], whose hash the caller computes.
    pub fn lazy_profiles(mut self, on: bool) -> Self {
        self.lazy_profiles = on;
        self
    }

    /// A key that would be a [`Delta::Unchanged`] is passed over and counted
    /// ([`Merge::settled`]) rather than yielded, its row and entry never made whole; at most
    /// `in_a_row` keys in one call, after which the next is yielded as it would be, so that the
    /// caller gets control back (to see a stop) however long the segment. 0: none.
    pub fn settle_unchanged(&mut self, in_a_row: u64) {
        self.settle = in_a_row;
    }

    /// The unchanged keys passed over so far.
    pub fn settled(&self) -> u64 {
        self.settled
    }
}

impl<S, B, E> Merge<S, B>
where
    S: SnapCursor<Error = E>,
    B: BaseCursor<Error = E>,
{
    /// The next delta with the baseline entry it met, if any. A run that writes a new base
    /// (a compaction) needs that entry to keep it when the delta leaves it as it was.
    pub fn next_with_base(&mut self) -> Option<Result<(Delta, Option<BaseRow>), E>> {
        let mut in_a_row = 0;
        loop {
            let snap = match self.snap.peek() {
                Some(Err(e)) => return Some(Err(e)),
                other => other.map(|r| r.ok().expect("errors returned above")),
            };
            let base = match self.base.peek() {
                Some(Err(e)) => return Some(Err(e)),
                other => other.map(|r| r.ok().expect("errors returned above")),
            };
            let order = match (&snap, &base) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(s), Some(b)) => s.key.cmp(b.key),
            };
            let shared = snap.is_some_and(|s| s.shared);
            let settles = match (&snap, &base) {
                (Some(s), Some(b)) if in_a_row < self.settle && order.is_eq() && s.plain => {
                    unchanged(
                        (s.hash, s.profile),
                        (b.hash, b.present, b.profile),
                        self.lazy_profiles,
                    )
                }
                _ => false,
            };
            if settles {
                in_a_row += 1;
                self.settled += 1;
                self.snap.skip();
                if let Err(e) = self.base.skip() {
                    return Some(Err(e));
                }
                continue;
            }
            let base = base.filter(|_| order.is_ge()).map(|b| b.to_row());
            if base.is_some() {
                if let Err(e) = self.base.skip() {
                    return Some(Err(e));
                }
            }
            return Some(self.key_delta(order, base, shared));
        }
    }

    /// The delta of the key under the cursors: the snapshot's (`Less`), the baseline's
    /// (`Greater`, its entry taken) or both's (`Equal`); `shared`: the snapshot has several
    /// rows of it.
    fn key_delta(
        &mut self,
        order: Ordering,
        base: Option<BaseRow>,
        shared: bool,
    ) -> Result<(Delta, Option<BaseRow>), E> {
        if order == Ordering::Greater {
            let b = base.expect("taken");
            let delta = if b.present {
                Delta::Removed {
                    key: b.key.clone(),
                    hash: b.hash,
                }
            } else {
                Delta::Absent { key: b.key.clone() }
            };
            return Ok((delta, Some(b)));
        }
        // Take every snapshot row that shares this key.
        let first = self.snap.take()?;
        let present = base.as_ref().is_some_and(|b| b.present);
        // A group is allocated only for a key seen twice: one row is the rule.
        let mut more: Vec<SnapRow> = Vec::new();
        if shared {
            loop {
                match self.snap.peek() {
                    Some(Err(e)) => return Err(e),
                    Some(Ok(next)) if next.key == first.key.as_slice() => {}
                    _ => break,
                }
                more.push(self.snap.take()?);
            }
        }
        let delta = if !more.is_empty() {
            more.insert(0, first);
            Delta::Duplicate {
                rows: more,
                in_baseline: present,
            }
        } else {
            let row = first;
            match &base {
                _ if row.bad.is_some() => Delta::Bad {
                    row,
                    in_baseline: present,
                },
                None => Delta::Added {
                    row,
                    reentry: false,
                },
                Some(b) if !b.present => Delta::Added { row, reentry: true },
                // Under the store's recipe when the run upgrades it.
                Some(b) if b.hash != row.old_hash.unwrap_or(row.hash) => {
                    Delta::Changed { row, old: b.hash }
                }
                Some(b) if row.profile.is_some() && row.profile != b.profile => {
                    Delta::Profile { row }
                }
                Some(b) if self.lazy_profiles && b.profile.is_none() => Delta::Profile { row },
                Some(_) if row.old_hash.is_some() => Delta::Rehashed { row },
                Some(b) => {
                    debug_assert!(unchanged(
                        (row.hash, row.profile),
                        (b.hash, b.present, b.profile),
                        self.lazy_profiles
                    ));
                    Delta::Unchanged { key: row.key }
                }
            }
        };
        Ok((delta, base))
    }
}

/// Whether a key's one row, good and hashed under the store's recipe (no `old_hash`), and the
/// baseline entry of the same key make a [`Delta::Unchanged`]: the rule [`Merge`] ends with,
/// and the one it settles a key by in place (`Merge::settle_unchanged`). `row`: its hash and
/// profile hash; `base`: the entry's hash, presence and profile hash; `lazy`: as
/// [`Merge::lazy_profiles`].
pub fn unchanged(
    (hash, profile): (RowHash, Option<RowHash>),
    (base_hash, present, base_profile): (RowHash, bool, Option<RowHash>),
    lazy: bool,
) -> bool {
    present
        && hash == base_hash
        && (profile.is_none() || profile == base_profile)
        && !(lazy && base_profile.is_none())
}

impl<S, B, E> Iterator for Merge<S, B>
where
    S: SnapCursor<Error = E>,
    B: BaseCursor<Error = E>,
{
    type Item = Result<Delta, E>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_base().map(|r| r.map(|(d, _)| d))
    }
}

/// Rows held whole, as a snapshot cursor: one row of look-ahead tells whether a row is the
/// only one of its key.
pub struct RowsOf<I: Iterator> {
    iter: I,
    head: Option<I::Item>,
    next: Option<I::Item>,
}

impl<I, E> RowsOf<I>
where
    I: Iterator<Item = Result<SnapRow, E>>,
{
    fn fill(&mut self) {
        if self.head.is_none() {
            self.head = self.next.take().or_else(|| self.iter.next());
        }
        if self.next.is_none() && matches!(self.head, Some(Ok(_))) {
            self.next = self.iter.next();
        }
    }
}

impl<I, E> SnapCursor for RowsOf<I>
where
    I: Iterator<Item = Result<SnapRow, E>>,
{
    type Error = E;

    fn peek(&mut self) -> Option<Result<SnapPeek<'_>, E>> {
        self.fill();
        if matches!(self.head, Some(Err(_))) {
            return self.head.take().map(|r| r.map(|_| unreachable!()));
        }
        let Some(Ok(row)) = &self.head else {
            return None;
        };
        let shared = matches!(&self.next, Some(Ok(n)) if n.key == row.key);
        Some(Ok(SnapPeek {
            key: &row.key,
            hash: row.hash,
            profile: row.profile,
            shared,
            plain: !shared && row.bad.is_none() && row.old_hash.is_none(),
        }))
    }

    fn take(&mut self) -> Result<SnapRow, E> {
        self.fill();
        self.head.take().expect("a row under the cursor")
    }

    fn skip(&mut self) {
        self.head = None;
    }
}

/// Entries held whole, as a baseline cursor.
pub struct EntriesOf<I> {
    iter: I,
    head: Option<BaseRow>,
}

impl<I, E> BaseCursor for EntriesOf<I>
where
    I: Iterator<Item = Result<BaseRow, E>>,
{
    type Error = E;

    fn peek(&mut self) -> Option<Result<BaseRef<'_>, E>> {
        if self.head.is_none() {
            match self.iter.next()? {
                Ok(b) => self.head = Some(b),
                Err(e) => return Some(Err(e)),
            }
        }
        self.head.as_ref().map(|b| {
            Ok(BaseRef {
                key: &b.key,
                hash: b.hash,
                present: b.present,
                profile: b.profile,
            })
        })
    }

    fn skip(&mut self) -> Result<(), E> {
        self.head = None;
        Ok(())
    }
}

/// What a run does with the baseline for one delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaselineWrite {
    Keep,
    Put { hash: RowHash },
    Tombstone,
}

/// Whether a delta asks for an event (before the mapping may still reject the row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first run with `initial = "baseline"`: record everything, send nothing.
    pub record_only: bool,
    pub event_on_change: bool,
    pub event_on_reentry: bool,
}

/// The pure decision for one delta: does it want an event, and what does it write to the
/// baseline if the event (when wanted) is built. A rejected event always means `Keep`.
pub fn decide(delta: &Delta, policy: Policy) -> (bool, BaselineWrite) {
    match delta {
        Delta::Added { row, reentry } => {
            let wants = !policy.record_only && (!reentry || policy.event_on_reentry);
            (wants, BaselineWrite::Put { hash: row.hash })
        }
        Delta::Changed { row, .. } => (
            !policy.record_only && policy.event_on_change,
            BaselineWrite::Put { hash: row.hash },
        ),
        Delta::Removed { .. } => (false, BaselineWrite::Tombstone),
        Delta::Profile { row } | Delta::Rehashed { row } => {
            (false, BaselineWrite::Put { hash: row.hash })
        }
        Delta::Unchanged { .. }
        | Delta::Absent { .. }
        | Delta::Duplicate { .. }
        | Delta::Bad { .. } => (false, BaselineWrite::Keep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;
    use std::collections::BTreeMap;

    fn h(n: u8) -> RowHash {
        RowHash([n; 16])
    }

    fn snap(key: u8, hash: u8, line: u64) -> SnapRow {
        SnapRow {
            key: vec![key],
            hash: h(hash),
            old_hash: None,
            profile: None,
            payload: vec![],
            at: None,
            line,
            bad: None,
        }
    }

    fn deltas(mut s: Vec<SnapRow>, b: Vec<BaseRow>) -> Vec<Delta> {
        s.sort_by(|a, b| (&a.key, a.line).cmp(&(&b.key, b.line)));
        merge(s.into_iter().map(Ok::<_, ()>), b.into_iter().map(Ok))
            .map(|d| d.unwrap())
            .collect()
    }

    #[rstest]
    #[case::added(Some(1), None, "added")]
    #[case::unchanged(Some(1), Some((1, true)), "unchanged")]
    #[case::changed(Some(2), Some((1, true)), "changed")]
    #[case::removed(None, Some((1, true)), "removed")]
    #[case::reentry(Some(1), Some((1, false)), "reentry")]
    #[case::tombstone(None, Some((1, false)), "absent")]
    fn one_key_yields_one_delta(
        #[case] new: Option<u8>,
        #[case] old: Option<(u8, bool)>,
        #[case] kind: &str,
    ) {
        let s = new.map(|hash| vec![snap(7, hash, 1)]).unwrap_or_default();
        let b = old
            .map(|(hash, present)| {
                vec![BaseRow {
                    key: vec![7],
                    hash: h(hash),
                    present,
                    profile: None,
                }]
            })
            .unwrap_or_default();
        let d = deltas(s, b);
        assert_eq!(d.len(), 1);
        let got = match &d[0] {
            Delta::Added { reentry: false, .. } => "added",
            Delta::Added { reentry: true, .. } => "reentry",
            Delta::Changed { .. } => "changed",
            Delta::Unchanged { .. } => "unchanged",
            Delta::Removed { .. } => "removed",
            Delta::Absent { .. } => "absent",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, kind);
    }

    #[rstest]
    // (snapshot's profile hash, baseline's) → the delta, the row hash being the same.
    #[case::never_sent(Some(5), None, "profile")]
    #[case::differs(Some(5), Some(4), "profile")]
    #[case::same(Some(5), Some(5), "unchanged")]
    // A sync without profile attributes ignores what an earlier one recorded.
    #[case::not_mapped(None, Some(5), "unchanged")]
    fn a_profile_change_alone_is_a_profile_delta_never_a_changed_row(
        #[case] new: Option<u8>,
        #[case] old: Option<u8>,
        #[case] kind: &str,
    ) {
        let mut row = snap(7, 1, 1);
        row.profile = new.map(h);
        let base = BaseRow {
            key: vec![7],
            hash: h(1),
            present: true,
            profile: old.map(h),
        };
        let d = deltas(vec![row.clone()], vec![base.clone()]);
        let got = match &d[0] {
            Delta::Profile { .. } => "profile",
            Delta::Unchanged { .. } => "unchanged",
            other => panic!("{other:?}"),
        };
        assert_eq!(got, kind);
        // With another row hash, it is a changed row, whatever the profile hashes.
        row.hash = h(2);
        let d = deltas(vec![row], vec![base]);
        assert!(matches!(d[0], Delta::Changed { .. }), "{:?}", d[0]);
    }

    #[test]
    fn the_unchanged_rule_is_the_merges_for_every_pair_of_one_row_and_one_entry() {
        let hashes = [None, Some(1), Some(2)];
        for lazy in [false, true] {
            for (hash, profile, base_profile) in hashes
                .iter()
                .flat_map(|&a| hashes.iter().flat_map(move |&b| hashes.map(|c| (a, b, c))))
            {
                let Some(hash) = hash else { continue };
                for (base_hash, present) in [(1, true), (2, true), (1, false)] {
                    let mut row = snap(7, hash, 1);
                    row.profile = profile.map(h);
                    let base = BaseRow {
                        key: vec![7],
                        hash: h(base_hash),
                        present,
                        profile: base_profile.map(h),
                    };
                    let delta = merge(
                        vec![Ok::<_, ()>(row.clone())].into_iter(),
                        vec![Ok(base.clone())].into_iter(),
                    )
                    .lazy_profiles(lazy)
                    .next()
                    .unwrap()
                    .unwrap();
                    let rule = unchanged(
                        (row.hash, row.profile),
                        (base.hash, base.present, base.profile),
                        lazy,
                    );
                    assert_eq!(
                        rule,
                        matches!(delta, Delta::Unchanged { .. }),
                        "{row:?} {base:?} lazy {lazy}: {delta:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn with_lazy_profiles_only_an_entry_without_a_profile_hash_makes_a_profile_delta() {
        let base = |profile: Option<u8>| BaseRow {
            key: vec![7],
            hash: h(1),
            present: true,
            profile: profile.map(h),
        };
        let lazy = |b: BaseRow| {
            merge(
                vec![Ok::<_, ()>(snap(7, 1, 1))].into_iter(),
                vec![Ok(b)].into_iter(),
            )
            .lazy_profiles(true)
            .next()
            .unwrap()
            .unwrap()
        };
        // The row carries no profile hash: the row hash settles an entry that has one.
        assert!(matches!(lazy(base(Some(5))), Delta::Unchanged { .. }));
        assert!(matches!(lazy(base(None)), Delta::Profile { .. }));
        // Not lazy, a row without a profile hash is a sync without profile attributes.
        let d = deltas(vec![snap(7, 1, 1)], vec![base(None)]);
        assert!(matches!(d[0], Delta::Unchanged { .. }));
    }

    #[test]
    fn rows_sharing_a_key_are_all_rejected_and_the_key_is_not_removed() {
        let d = deltas(
            vec![snap(3, 1, 1), snap(3, 2, 9)],
            vec![BaseRow {
                key: vec![3],
                hash: h(1),
                present: true,
                profile: None,
            }],
        );
        assert!(
            matches!(&d[..], [Delta::Duplicate { rows, in_baseline: true }] if rows.len() == 2)
        );
        assert_eq!(
            decide(
                &d[0],
                Policy {
                    record_only: false,
                    event_on_change: true,
                    event_on_reentry: true
                }
            )
            .1,
            BaselineWrite::Keep
        );
    }

    #[test]
    fn a_bad_row_keeps_its_baseline_entry() {
        let mut bad = snap(3, 9, 1);
        bad.bad = Some(Box::new(Reject::new(Some("amount"), "type", "x")));
        let d = deltas(
            vec![bad],
            vec![BaseRow {
                key: vec![3],
                hash: h(1),
                present: true,
                profile: None,
            }],
        );
        assert!(matches!(
            &d[..],
            [Delta::Bad {
                in_baseline: true,
                ..
            }]
        ));
    }

    #[rstest]
    #[case(false, false, false, [true, false, false, true])]
    #[case(false, true, false, [true, true, false, true])]
    #[case(false, false, true, [true, false, false, false])]
    #[case(true, true, true, [false, false, false, false])]
    fn decisions_follow_the_policy(
        #[case] record_only: bool,
        #[case] event_on_change: bool,
        #[case] no_reentry: bool,
        #[case] wants: [bool; 4],
    ) {
        let p = Policy {
            record_only,
            event_on_change,
            event_on_reentry: !no_reentry,
        };
        let cases = [
            Delta::Added {
                row: snap(1, 1, 1),
                reentry: false,
            },
            Delta::Changed {
                row: snap(1, 1, 1),
                old: h(2),
            },
            Delta::Removed {
                key: vec![1],
                hash: h(1),
            },
            Delta::Added {
                row: snap(1, 1, 1),
                reentry: true,
            },
        ];
        let got: Vec<bool> = cases.iter().map(|d| decide(d, p).0).collect();
        assert_eq!(got, wants);
    }

    /// The naive model: maps keyed by row key.
    fn model(
        s: &[SnapRow],
        b: &BTreeMap<Vec<u8>, (RowHash, bool)>,
    ) -> BTreeMap<Vec<u8>, &'static str> {
        let mut counts: BTreeMap<Vec<u8>, Vec<&SnapRow>> = BTreeMap::new();
        for r in s {
            counts.entry(r.key.clone()).or_default().push(r);
        }
        let mut out = BTreeMap::new();
        for (k, rows) in &counts {
            let base = b.get(k);
            let kind = if rows.len() > 1 {
                "dup"
            } else {
                match base {
                    None => "added",
                    Some((_, false)) => "reentry",
                    Some((h, true)) if *h == rows[0].hash => "unchanged",
                    Some(_) => "changed",
                }
            };
            out.insert(k.clone(), kind);
        }
        for (k, (_, present)) in b {
            if !counts.contains_key(k) {
                out.insert(k.clone(), if *present { "removed" } else { "absent" });
            }
        }
        out
    }

    proptest! {
        #[test]
        fn merge_agrees_with_a_naive_model(
            new in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..3), 0u8..3), 0..40),
            old in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..3), (0u8..3, any::<bool>()), 0..30),
        ) {
            let s: Vec<SnapRow> = new.iter().enumerate()
                .map(|(i, (k, hh))| SnapRow { key: k.clone(), hash: h(*hh), old_hash: None, profile: None, payload: vec![], at: None, line: i as u64 + 1, bad: None })
                .collect();
            let base: BTreeMap<Vec<u8>, (RowHash, bool)> = old.iter().map(|(k, (hh, p))| (k.clone(), (h(*hh), *p))).collect();
            let b: Vec<BaseRow> = base.iter().map(|(k, (hh, p))| BaseRow { key: k.clone(), hash: *hh, present: *p, profile: None }).collect();
            let got: BTreeMap<Vec<u8>, &str> = deltas(s.clone(), b).into_iter().map(|d| match d {
                Delta::Added { row, reentry: false } => (row.key, "added"),
                Delta::Added { row, reentry: true } => (row.key, "reentry"),
                Delta::Changed { row, .. } => (row.key, "changed"),
                Delta::Unchanged { key } => (key, "unchanged"),
                Delta::Removed { key, .. } => (key, "removed"),
                Delta::Absent { key } => (key, "absent"),
                Delta::Duplicate { rows, .. } => (rows[0].key.clone(), "dup"),
                Delta::Bad { row, .. } => (row.key, "bad"),
                Delta::Profile { row } => (row.key, "profile"),
                Delta::Rehashed { row } => (row.key, "rehashed"),
            }).collect();
            prop_assert_eq!(got, model(&s, &base));
        }

        /// Settling unchanged keys in place leaves every other delta as it was, with the
        /// entry it met, in the same order; the keys settled are the unchanged ones.
        #[test]
        fn settling_unchanged_keys_passes_over_exactly_the_unchanged_deltas(
            new in proptest::collection::vec((proptest::collection::vec(0u8..4, 0..3), 0u8..3, 0u8..4, 0u8..6), 0..40),
            old in proptest::collection::btree_map(proptest::collection::vec(0u8..4, 0..3), (0u8..3, any::<bool>(), 0u8..4), 0..30),
            lazy in any::<bool>(),
            in_a_row in 1u64..4,
        ) {
            // A profile hash of 0 is none; a row with mark 0 is bad, with mark 1 carries an
            // old hash (an upgrading run).
            let p = |n: u8| (n > 0).then(|| h(n));
            let mut s: Vec<SnapRow> = new.iter().enumerate()
                .map(|(i, (k, hh, pp, mark))| SnapRow {
                    key: k.clone(),
                    hash: h(*hh),
                    old_hash: (*mark == 1).then(|| h(*hh)),
                    profile: p(*pp),
                    payload: vec![],
                    at: None,
                    line: i as u64 + 1,
                    bad: (*mark == 0).then(|| Box::new(Reject::new(None, "type", "x"))),
                })
                .collect();
            s.sort_by(|a, b| (&a.key, a.line).cmp(&(&b.key, b.line)));
            let b: Vec<BaseRow> = old.iter()
                .map(|(k, (hh, present, pp))| BaseRow { key: k.clone(), hash: h(*hh), present: *present, profile: p(*pp) })
                .collect();
            let run = |settle: u64| {
                let mut m = merge(s.clone().into_iter().map(Ok::<_, ()>), b.clone().into_iter().map(Ok)).lazy_profiles(lazy);
                m.settle_unchanged(settle);
                let steps: Vec<_> = std::iter::from_fn(|| m.next_with_base()).map(Result::unwrap).collect();
                (steps, m.settled())
            };
            let is_unchanged = |(d, _): &(Delta, Option<BaseRow>)| matches!(d, Delta::Unchanged { .. });
            let (all, none) = run(0);
            prop_assert_eq!(none, 0);
            let unchanged = all.iter().filter(|s| is_unchanged(s)).count() as u64;
            let changed: Vec<_> = all.iter().filter(|s| !is_unchanged(s)).cloned().collect();
            // With no bound, every unchanged key is passed over.
            let (left, settled) = run(u64::MAX);
            prop_assert_eq!(settled, unchanged);
            prop_assert_eq!(&left, &changed);
            // With a bound, an unchanged key past it since the last step is yielded.
            let (left, settled) = run(in_a_row);
            let (mut expected, mut since) = (Vec::new(), 0);
            for step in &all {
                if is_unchanged(step) && since < in_a_row {
                    since += 1;
                } else {
                    expected.push(step.clone());
                    since = 0;
                }
            }
            prop_assert_eq!(settled + left.iter().filter(|s| is_unchanged(s)).count() as u64, unchanged);
            prop_assert_eq!(left, expected);
        }
    }
}
