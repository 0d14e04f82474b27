//! The diff: a merge of the new snapshot with the baseline, both sorted by row key.
//!
//! Invariants:
//! - Inputs are sorted by key (the snapshot by key then source line); the merge never buffers
//!   more than the rows that share one key, so memory does not grow with the segment.
//! - Each key of either side yields exactly one [`Delta`].
//! - A key that a bad row or several rows share never counts as removed: the baseline keeps
//!   its entry and the rows are rejected (DESIGN.md, step 5).
//! - Pure: no I/O; the caller feeds the iterators and applies the deltas.

use super::encode::RowHash;
use super::mapping::Reject;
use std::cmp::Ordering;
use std::iter::Peekable;

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

/// The merge, as an iterator of deltas in key order.
pub struct Merge<S: Iterator, B: Iterator> {
    snap: Peekable<S>,
    base: Peekable<B>,
    lazy_profiles: bool,
}

pub fn merge<S, B, E>(snap: S, base: B) -> Merge<S, B>
where
    S: Iterator<Item = Result<SnapRow, E>>,
    B: Iterator<Item = Result<BaseRow, E>>,
{
    Merge {
        snap: snap.peekable(),
        base: base.peekable(),
        lazy_profiles: false,
    }
}

impl<S: Iterator, B: Iterator> Merge<S, B> {
    /// The snapshot's rows carry no profile hash where the row hash settles it (every profile
    /// attribute is an event column, and the baseline's profile hashes are the current
    /// mapping's): an unchanged row keeps its entry's, and only an entry that has none yet
    /// makes the row a [`Delta::Profile`], whose hash the caller computes.
    pub fn lazy_profiles(mut self, on: bool) -> Self {
        self.lazy_profiles = on;
        self
    }
}

impl<S, B, E> Merge<S, B>
where
    S: Iterator<Item = Result<SnapRow, E>>,
    B: Iterator<Item = Result<BaseRow, E>>,
{
    /// The next delta with the baseline entry it met, if any. A run that writes a new base
    /// (a compaction) needs that entry to keep it when the delta leaves it as it was.
    pub fn next_with_base(&mut self) -> Option<Result<(Delta, Option<BaseRow>), E>> {
        // Surface errors from either side first.
        if matches!(self.snap.peek(), Some(Err(_))) {
            return self.snap.next().map(|r| r.map(|_| unreachable!()));
        }
        if matches!(self.base.peek(), Some(Err(_))) {
            return self.base.next().map(|r| r.map(|_| unreachable!()));
        }
        let order = match (self.snap.peek(), self.base.peek()) {
            (None, None) => return None,
            (Some(Ok(_)), None) => Ordering::Less,
            (None, Some(Ok(_))) => Ordering::Greater,
            (Some(Ok(s)), Some(Ok(b))) => s.key.cmp(&b.key),
            _ => unreachable!("errors handled above"),
        };
        let base = match order {
            Ordering::Less => None,
            _ => match self.base.next() {
                Some(Ok(b)) => Some(b),
                _ => unreachable!("peeked Ok"),
            },
        };
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
            return Some(Ok((delta, Some(b))));
        }
        // Take every snapshot row that shares this key.
        let first = match self.snap.next() {
            Some(Ok(s)) => s,
            _ => unreachable!("peeked Ok"),
        };
        let present = base.as_ref().is_some_and(|b| b.present);
        // A group is allocated only for a key seen twice: one row is the rule.
        let duplicate = matches!(self.snap.peek(), Some(Ok(next)) if next.key == first.key);
        let delta = if duplicate {
            let mut rows = vec![first];
            while let Some(Ok(next)) = self.snap.peek() {
                if next.key != rows[0].key {
                    break;
                }
                match self.snap.next() {
                    Some(Ok(s)) => rows.push(s),
                    _ => unreachable!("peeked Ok"),
                }
            }
            Delta::Duplicate {
                rows,
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
                Some(_) => Delta::Unchanged { key: row.key },
            }
        };
        Some(Ok((delta, base)))
    }
}

impl<S, B, E> Iterator for Merge<S, B>
where
    S: Iterator<Item = Result<SnapRow, E>>,
    B: Iterator<Item = Result<BaseRow, E>>,
{
    type Item = Result<Delta, E>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_base().map(|r| r.map(|(d, _)| d))
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
    }
}
