//! Applies the diff's deltas: the decision of `core::diff`, the event of `core::mapping`, and
//! what that means for the baseline, through a [`Sink`] (the run's commit, or `plan`'s counter).
//!
//! Invariants:
//! - The same code decides for `plan`, `check` and `run`, so a plan is what the run does.
//! - Every key the baseline held gets exactly one of `put`, `tombstone` or `keep`, in key
//!   order: a commit that writes a new base (a compaction) loses no entry.
//! - Each delta row that changes something (added, re-entered, changed, removed, rejected) is
//!   one history line (`Sink::history`), decided here for both stores; a run that only
//!   records the segment writes none, and a row still rejected none (its store writes one
//!   line when the streak ends).

use crate::config::{Initial, Settings};
use crate::core::diff::{decide, BaseRow, BaselineWrite, Delta, Policy, SnapRow};
use crate::core::encode::{display_key, hex, Decoder, RowHash};
use crate::core::history::Change;
use crate::core::mapping::{build_event, ColumnPlan, EventRules, Reject};
use crate::core::pack::RowRef;
use crate::core::run::Counts;
use crate::core::value::Value;
use crate::snapshot::LooseReject;
use crate::state::{Line, OpenRejects, Rejected, Sink};

pub struct Apply<'a> {
    pub plan: &'a ColumnPlan,
    pub policy: Policy,
    pub rules: EventRules,
    /// Rows whose key could not be read were rejected: a key missing from the snapshot may be
    /// one of them, so removals are not recorded this run (they would re-fire on the next).
    pub defer_removals: bool,
    /// The database mode: row keys are the key text (the key columns as JSON, already what
    /// people read), and rows have no line (a duplicate's reason lists none).
    pub text_keys: bool,
    /// Open rejects under this run's rules: a row that matches its own is still rejected.
    pub open: OpenRejects,
}

impl<'a> Apply<'a> {
    /// What a run (or its plan) does with its deltas. `loose`: some rows were rejected before
    /// their key could be read.
    pub fn for_run(
        settings: &'a Settings,
        first_run: bool,
        initial: Initial,
        loose: bool,
    ) -> Apply<'a> {
        Apply {
            plan: &settings.plan,
            policy: Policy {
                record_only: first_run && initial == Initial::Baseline,
                event_on_change: settings.sync.on_change == crate::config::OnChange::Event,
                event_on_reentry: settings.sync.reentry == crate::config::Reentry::Event,
            },
            rules: rules(settings),
            defer_removals: loose && settings.plan.has_key(),
            text_keys: settings.warehouse.is_some(),
            open: OpenRejects::new(),
        }
    }

    /// `check`: every row as if it were new, so every row is mapped and checked.
    pub fn for_check(settings: &'a Settings) -> Apply<'a> {
        Apply {
            plan: &settings.plan,
            policy: Policy {
                record_only: false,
                event_on_change: true,
                event_on_reentry: true,
            },
            rules: rules(settings),
            defer_removals: true,
            text_keys: false,
            open: OpenRejects::new(),
        }
    }
}

fn rules(settings: &Settings) -> EventRules {
    EventRules {
        late: settings.sync.late_events,
        window_micros: settings.sync.event_window.as_micros() as i64,
        now_micros: chrono::Utc::now().timestamp_micros(),
        event_id: settings.sync.event_id,
    }
}

/// The baseline's entry stays as it was (if there was one).
fn keep<S: Sink>(sink: &mut S, base: Option<BaseRow>) -> Result<(), S::Error> {
    match base {
        Some(b) => sink.keep(&b.key, b.hash, b.present),
        None => Ok(()),
    }
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
    /// One history line, unless the run only records the segment (the first under
    /// `initial = "baseline"`: nothing is sent, and its rows are the starting point).
    fn line<S: Sink>(
        &self,
        sink: &mut S,
        key: &[u8],
        change: Change,
        hash: Option<RowHash>,
        sent: bool,
    ) -> Result<(), S::Error> {
        if self.policy.record_only {
            return Ok(());
        }
        sink.history(Line {
            key,
            change,
            hash,
            sent,
        })
    }

    fn key_of(&self, key: &[u8]) -> String {
        if self.text_keys {
            return String::from_utf8_lossy(key).into_owned();
        }
        display_key(key, self.plan.key_names())
    }

    /// Whether the row is its open reject's row still; if so, it is counted and told to the
    /// sink, and nothing else happens to it.
    fn still<S: Sink>(
        &self,
        row: &SnapRow,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<bool, S::Error> {
        if self.open.get(&row.key) != Some(&row.hash) {
            return Ok(false);
        }
        sink.still_rejected(&row.key)?;
        counts.still_rejected += 1;
        Ok(true)
    }

    fn reject_row<S: Sink>(
        &self,
        row: &SnapRow,
        rej: &Reject,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let key = self.key_of(&row.key);
        let at = Rejected {
            key: Some(&key),
            row: Some((&row.key, row.hash)),
            line: Some(row.line),
        };
        sink.reject(at, rej)?;
        self.line(sink, &row.key, Change::Rejected, Some(row.hash), false)
    }

    pub fn loose<S: Sink>(
        &self,
        loose: &[LooseReject],
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        for l in loose {
            let at = Rejected {
                line: Some(l.line),
                ..Rejected::default()
            };
            sink.reject(at, &l.reject)?;
            counts.rejected += 1;
        }
        Ok(())
    }

    fn wanted<S: Sink>(
        &self,
        row: &SnapRow,
        prev: Option<(RowHash, bool)>,
        base: Option<BaseRow>,
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
                let change = Change::of_event(prev.map(|(_, present)| present));
                self.line(sink, &row.key, change, Some(row.hash), true)?;
            }
            Err(rej) => {
                self.reject_row(row, &rej, sink)?;
                counts.rejected += 1;
                keep(sink, base)?;
            }
        }
        Ok(())
    }

    /// Applies one delta; `base` is the baseline entry it met, kept when the delta leaves it.
    pub fn delta<S: Sink>(
        &self,
        delta: Delta,
        base: Option<BaseRow>,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        let (wants, write) = decide(&delta, self.policy);
        match delta {
            Delta::Added { row, .. } | Delta::Changed { row, .. }
                if self.still(&row, sink, counts)? =>
            {
                keep(sink, base)?;
            }
            Delta::Added { row, reentry } => {
                counts.added += 1;
                counts.reentered += reentry as u64;
                let prev = reentry.then_some((RowHash::default(), false));
                if wants {
                    // A re-entering key's tombstone keeps its old hash; the manifest restores the
                    // tombstone, whatever hash it held, if Batch drops the event.
                    self.wanted(&row, prev, base, sink, counts)?;
                } else {
                    sink.put(&row.key, row.hash)?;
                    let change = if reentry {
                        Change::Reentered
                    } else {
                        Change::Added
                    };
                    self.line(sink, &row.key, change, Some(row.hash), false)?;
                }
            }
            Delta::Changed { row, old } => {
                counts.changed += 1;
                if wants {
                    self.wanted(&row, Some((old, true)), base, sink, counts)?;
                } else {
                    sink.put(&row.key, row.hash)?;
                    self.line(sink, &row.key, Change::Changed, Some(row.hash), false)?;
                }
            }
            Delta::Removed { key, hash } => {
                counts.removed += 1;
                if write == BaselineWrite::Tombstone && !self.defer_removals {
                    sink.tombstone(&key, hash)?;
                    self.line(sink, &key, Change::Removed, Some(hash), false)?;
                } else {
                    keep(sink, base)?;
                }
            }
            Delta::Unchanged { .. } => {
                counts.unchanged += 1;
                keep(sink, base)?;
            }
            Delta::Absent { .. } => keep(sink, base)?,
            Delta::Duplicate { rows, .. } => {
                let lines: Vec<String> = rows.iter().map(|r| r.line.to_string()).collect();
                let lines = if self.text_keys {
                    String::new()
                } else {
                    format!(" (lines {})", lines.join(", "))
                };
                let reason = format!(
                    "{} rows share this primary key{lines}; all are rejected until it is unique",
                    rows.len()
                );
                let rej = Reject::new(None, "duplicate_key", reason);
                let key = self.key_of(&rows[0].key);
                for r in &rows {
                    // Not open: which of the rows would be the reject's cannot be said.
                    let at = Rejected {
                        key: Some(&key),
                        row: None,
                        line: Some(r.line),
                    };
                    sink.reject(at, &rej)?;
                    counts.rejected += 1;
                }
                self.line(sink, &rows[0].key, Change::Rejected, None, false)?;
                keep(sink, base)?;
            }
            Delta::Bad { row, .. } => {
                if self.still(&row, sink, counts)? {
                    return keep(sink, base);
                }
                let rej = row.bad.clone().expect("a bad row carries its reject");
                self.reject_row(&row, &rej, sink)?;
                counts.rejected += 1;
                keep(sink, base)?;
            }
        }
        Ok(())
    }
}
