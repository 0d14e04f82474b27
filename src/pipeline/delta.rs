//! Applies the merge's deltas: the decision of `core::diff`, the event of `core::mapping`, and
//! what that means for the baseline, through a [`Sink`] (the run's commit, or `plan`'s counter).
//!
//! Invariant: the same code decides for `plan` and for `run`, so a plan is what the run does.

use crate::core::diff::{decide, BaselineWrite, Delta, Policy, SnapRow};
use crate::core::encode::{display_key, hex, Decoder, RowHash};
use crate::core::mapping::{build_event, ColumnPlan, Event, EventRules, Reject};
use crate::core::pack::RowRef;
use crate::core::value::Value;
use crate::snapshot::LooseReject;

pub trait Sink {
    type Error;
    fn put(&mut self, key: &[u8], hash: RowHash) -> Result<(), Self::Error>;
    /// The key left the segment; `hash` is the one the baseline held.
    fn tombstone(&mut self, key: &[u8], hash: RowHash) -> Result<(), Self::Error>;
    fn event(&mut self, event: &Event, row: RowRef) -> Result<(), Self::Error>;
    fn reject(
        &mut self,
        key: Option<&str>,
        line: Option<u64>,
        reject: &Reject,
    ) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    pub added: u64,
    pub reentered: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub events: u64,
    /// The first run under `initial = "baseline"`.
    pub record_only: bool,
}

pub struct Apply<'a> {
    pub plan: &'a ColumnPlan,
    pub policy: Policy,
    pub rules: EventRules,
    /// Rows whose key could not be read were rejected: a key missing from the snapshot may be
    /// one of them, so removals are not recorded this run (they would re-fire on the next).
    pub defer_removals: bool,
}

/// The deterministic `event_id`: BLAKE3 of the row key and row hash, 128 bits in hex.
pub fn event_id(key: &[u8], hash: RowHash) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"batchsync-event-v1\0");
    h.update(key);
    h.update(&hash.0);
    hex(&h.finalize().as_bytes()[..16])
}

fn decode(plan: &ColumnPlan, payload: &[u8]) -> Result<Vec<Value>, Reject> {
    let mut d = Decoder::new(payload);
    (0..plan.columns.len())
        .map(|_| d.value())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Reject::new(None, "corrupt_row", e.to_string()))
}

impl Apply<'_> {
    fn key_of(&self, key: &[u8]) -> String {
        display_key(key, self.plan.key_names())
    }

    pub fn loose<S: Sink>(
        &self,
        loose: &[LooseReject],
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        for l in loose {
            sink.reject(None, Some(l.line), &l.reject)?;
            counts.rejected += 1;
        }
        Ok(())
    }

    fn wanted<S: Sink>(
        &self,
        row: &SnapRow,
        prev: Option<(RowHash, bool)>,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        let built = decode(self.plan, &row.payload).and_then(|values| {
            build_event(
                self.plan,
                &values,
                &self.rules,
                &event_id(&row.key, row.hash),
            )
        });
        match built {
            Ok(event) => {
                let rref = RowRef::new(self.key_of(&row.key), &row.key, row.hash, prev);
                sink.event(&event, rref)?;
                sink.put(&row.key, row.hash)?;
                counts.events += 1;
            }
            Err(rej) => {
                sink.reject(Some(&self.key_of(&row.key)), Some(row.line), &rej)?;
                counts.rejected += 1;
            }
        }
        Ok(())
    }

    pub fn delta<S: Sink>(
        &self,
        delta: Delta,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        let (wants, write) = decide(&delta, self.policy);
        match delta {
            Delta::Added { row, reentry } => {
                counts.added += 1;
                counts.reentered += reentry as u64;
                let prev = reentry.then_some((RowHash::default(), false));
                if wants {
                    // A re-entering key's tombstone keeps its old hash; the manifest restores the
                    // tombstone, whatever hash it held, if Batch drops the event.
                    self.wanted(&row, prev, sink, counts)?;
                } else {
                    sink.put(&row.key, row.hash)?;
                }
            }
            Delta::Changed { row, old } => {
                counts.changed += 1;
                if wants {
                    self.wanted(&row, Some((old, true)), sink, counts)?;
                } else {
                    sink.put(&row.key, row.hash)?;
                }
            }
            Delta::Removed { key, hash } => {
                counts.removed += 1;
                if write == BaselineWrite::Tombstone && !self.defer_removals {
                    sink.tombstone(&key, hash)?;
                }
            }
            Delta::Unchanged { .. } => counts.unchanged += 1,
            Delta::Absent { .. } => {}
            Delta::Duplicate { rows, .. } => {
                let lines: Vec<String> = rows.iter().map(|r| r.line.to_string()).collect();
                let reason = format!("{} rows share this primary key (lines {}); all are rejected until it is unique", rows.len(), lines.join(", "));
                let rej = Reject::new(None, "duplicate_key", reason);
                let key = self.key_of(&rows[0].key);
                for r in &rows {
                    sink.reject(Some(&key), Some(r.line), &rej)?;
                    counts.rejected += 1;
                }
            }
            Delta::Bad { row, .. } => {
                let rej = row.bad.clone().expect("a bad row carries its reject");
                sink.reject(Some(&self.key_of(&row.key)), Some(row.line), &rej)?;
                counts.rejected += 1;
            }
        }
        Ok(())
    }
}
