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

use crate::config::{Initial, OnRemove, Settings};
use crate::core::diff::{decide, BaseRow, BaselineWrite, Delta, Policy, SnapRow};
use crate::core::encode::{display_key, hex, reject_hash, Decoder, RowHash};
use crate::core::history::Change;
use crate::core::mapping::{
    build_event, build_profile, unset_profile, ColumnPlan, EventRules, Operation, Reject,
};
use crate::core::pack::{ProfileOnly, RowRef};
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
    /// `[sync] on_remove = "unset"`: a removed row's profile attributes are sent as null.
    pub unset_on_remove: bool,
    /// Computes the profile hash of rows the snapshot left without one (`lazy_profiles`).
    hasher: std::cell::RefCell<Option<crate::snapshot::ProfileHasher>>,
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
            unset_on_remove: settings.sync.on_remove == OnRemove::Unset,
            hasher: Default::default(),
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
            unset_on_remove: false,
            hasher: Default::default(),
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
        Some(b) => sink.keep(&b),
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

/// Which deltas may use their row's values (to build an event or profile attributes): the
/// local engine reads only those rows again when their values stayed in the file.
#[derive(Debug, Clone, Copy)]
pub struct Sends {
    policy: Policy,
    event: bool,
    profiles: bool,
}

impl Sends {
    /// Whether `delta` may need its row's values. Errs on the side of yes: a row whose
    /// profile attributes turn out unchanged was read for nothing, never the other way.
    pub fn values(&self, delta: &Delta) -> bool {
        match delta {
            Delta::Added { .. } | Delta::Changed { .. } => {
                (self.event && decide(delta, self.policy).0) || self.profiles
            }
            Delta::Profile { .. } => self.profiles,
            _ => false,
        }
    }
}

impl Apply<'_> {
    /// What this run sends, for [`Sends::values`].
    pub fn sends(&self) -> Sends {
        Sends {
            policy: self.policy,
            event: self.plan.has_event(),
            profiles: self.profiles(),
        }
    }

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
        // Under the store's recipe when the run upgrades it; then rewritten under the new one.
        let held = reject_hash(row.old_hash.unwrap_or(row.hash), row.profile);
        if self.open.get(&row.key) != Some(&held) {
            return Ok(false);
        }
        let rehash = row.old_hash.map(|_| reject_hash(row.hash, row.profile));
        sink.still_rejected(&row.key, rehash)?;
        counts.still_rejected += 1;
        counts.rehashed += rehash.is_some() as u64;
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
            row: Some((&row.key, reject_hash(row.hash, row.profile))),
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

    /// Gives a row the snapshot left without a profile hash (`lazy_profiles`) its hash, from
    /// its payload. A payload that cannot be read leaves it without one: the row is then
    /// rejected as corrupt when its values are read.
    fn fill_profile(&self, row: &mut SnapRow) {
        if row.profile.is_some() || !self.plan.has_profile() {
            return;
        }
        let mut hasher = self.hasher.borrow_mut();
        let hasher = hasher.get_or_insert_with(|| crate::snapshot::ProfileHasher::new(self.plan));
        row.profile = hasher.of_payload(&row.payload);
    }

    /// Whether the run sends profile attributes (a run that only records sends nothing).
    fn profiles(&self) -> bool {
        self.plan.has_profile() && !self.policy.record_only
    }

    /// Whether a row's profile attributes differ from those the baseline entry last sent.
    fn profile_changed(&self, row: &SnapRow, base: Option<&BaseRow>) -> bool {
        self.profiles() && row.profile != base.and_then(|b| b.profile)
    }

    /// One row that may send something: its event (`event`), its profile attributes
    /// (`profile`), both or neither. What it sends goes out as one operation, and the baseline
    /// takes the row; a row that breaks a rule is rejected whole and the baseline keeps its
    /// entry. `prev` is the entry replaced, as the manifest keeps it.
    #[allow(clippy::too_many_arguments)]
    fn row<S: Sink>(
        &self,
        row: &SnapRow,
        prev: Option<(RowHash, bool)>,
        base: Option<BaseRow>,
        (event, profile): (bool, bool),
        change: Change,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        let event = event && self.plan.has_event();
        if !event && !profile {
            sink.put(&row.key, row.hash, row.profile)?;
            return self.line(sink, &row.key, change, Some(row.hash), false);
        }
        let built = decode(self.plan, &row.payload).and_then(|values| {
            let e = event
                .then(|| {
                    let id = event_id(&row.key, row.hash);
                    build_event(self.plan, &values, &self.rules, &id)
                })
                .transpose()?;
            let p = profile
                .then(|| build_profile(self.plan, &values))
                .transpose()?;
            Ok((e, p))
        });
        match built {
            Ok((e, p)) => {
                counts.events += e.is_some() as u64;
                counts.profile_updates += p.is_some() as u64;
                counts.profile_changed +=
                    (p.is_some() && base.as_ref().is_some_and(|b| b.present)) as u64;
                let only = e.is_none().then_some(ProfileOnly::Update);
                let op = Operation::new(e, p).expect("an event or a profile update");
                let mut rref = RowRef::new(self.key_of(&row.key), &row.key, row.hash, prev)
                    .with_profile(row.profile, base.as_ref().and_then(|b| b.profile));
                rref.only = only;
                sink.send(&op, rref)?;
                sink.put(&row.key, row.hash, row.profile)?;
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

    /// A removed row under `on_remove = "unset"` whose profile attributes were sent: they go
    /// as null. The custom id is the row key's one value (profile attributes need it so).
    fn unset<S: Sink>(
        &self,
        key: &[u8],
        hash: RowHash,
        base: &BaseRow,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<bool, S::Error> {
        if !self.unset_on_remove || !self.profiles() || base.profile.is_none() {
            return Ok(false);
        }
        let custom_id = match Decoder::new(key).value() {
            Ok(v) => match v.as_text() {
                Some(id) if !id.trim().is_empty() => id,
                _ => return Ok(false),
            },
            Err(_) => return Ok(false),
        };
        let op = Operation::new(None, Some(unset_profile(self.plan, custom_id)))
            .expect("a profile update");
        let mut rref = RowRef::new(self.key_of(key), key, hash, Some((hash, true)))
            .with_profile(None, base.profile);
        rref.only = Some(ProfileOnly::Unset);
        sink.send(&op, rref)?;
        counts.profile_updates += 1;
        Ok(true)
    }

    /// Applies one delta; `base` is the baseline entry it met, kept when the delta leaves it.
    pub fn delta<S: Sink>(
        &self,
        delta: Delta,
        base: Option<BaseRow>,
        sink: &mut S,
        counts: &mut Counts,
    ) -> Result<(), S::Error> {
        let mut delta = delta;
        if let Delta::Added { row, .. } | Delta::Changed { row, .. } | Delta::Profile { row } =
            &mut delta
        {
            self.fill_profile(row);
        }
        let (wants, write) = decide(&delta, self.policy);
        match delta {
            Delta::Added { row, .. } | Delta::Changed { row, .. } | Delta::Profile { row }
                if self.still(&row, sink, counts)? =>
            {
                keep(sink, base)?;
            }
            Delta::Added { row, reentry } => {
                counts.added += 1;
                counts.reentered += reentry as u64;
                // A re-entering key's tombstone keeps its old hash; the manifest restores the
                // tombstone, whatever hash it held, if Batch drops the event.
                let prev = reentry.then_some((RowHash::default(), false));
                let change = if reentry {
                    Change::Reentered
                } else {
                    Change::Added
                };
                let sends = (wants, self.profiles());
                self.row(&row, prev, base, sends, change, sink, counts)?;
            }
            Delta::Changed { row, old } => {
                counts.changed += 1;
                let sends = (wants, self.profile_changed(&row, base.as_ref()));
                let prev = Some((old, true));
                self.row(&row, prev, base, sends, Change::Changed, sink, counts)?;
            }
            Delta::Profile { row } => {
                counts.unchanged += 1;
                let sends = (false, self.profiles());
                let prev = Some((row.hash, true));
                self.row(&row, prev, base, sends, Change::Profile, sink, counts)?;
            }
            Delta::Removed { key, hash } => {
                counts.removed += 1;
                if write == BaselineWrite::Tombstone && !self.defer_removals {
                    sink.tombstone(&key, hash)?;
                    let sent = match &base {
                        Some(b) => self.unset(&key, hash, b, sink, counts)?,
                        None => false,
                    };
                    self.line(sink, &key, Change::Removed, Some(hash), sent)?;
                } else {
                    keep(sink, base)?;
                }
            }
            Delta::Unchanged { .. } => {
                counts.unchanged += 1;
                keep(sink, base)?;
            }
            Delta::Rehashed { row } => {
                // The same row, its entry rewritten under the current recipe; nothing is sent.
                counts.unchanged += 1;
                counts.rehashed += 1;
                let profile = row.profile.or(base.and_then(|b| b.profile));
                sink.put(&row.key, row.hash, profile)?;
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

#[cfg(test)]
mod tests {
    use super::Sends;
    use crate::core::diff::{Delta, Policy, SnapRow};
    use crate::core::encode::RowHash;

    fn row() -> SnapRow {
        SnapRow {
            key: vec![1],
            hash: RowHash([1; 16]),
            old_hash: None,
            profile: None,
            payload: vec![],
            at: Some(0),
            line: 2,
            bad: None,
        }
    }

    #[test]
    fn only_rows_that_may_send_something_need_their_values() {
        let added = Delta::Added {
            row: row(),
            reentry: false,
        };
        let reentry = Delta::Added {
            row: row(),
            reentry: true,
        };
        let changed = Delta::Changed {
            row: row(),
            old: RowHash([2; 16]),
        };
        let profile = Delta::Profile { row: row() };
        let rehashed = Delta::Rehashed { row: row() };
        let sends = |record_only, on_change, on_reentry, event, profiles| Sends {
            policy: Policy {
                record_only,
                event_on_change: on_change,
                event_on_reentry: on_reentry,
            },
            event,
            profiles,
        };
        let all = [&added, &reentry, &changed, &profile, &rehashed];
        let needs = |s: Sends| all.map(|d| s.values(d));
        // Events on entry only: the added rows, not the changed ones or a re-entry.
        assert_eq!(
            needs(sends(false, false, false, true, false)),
            [true, false, false, false, false]
        );
        assert_eq!(
            needs(sends(false, true, true, true, false)),
            [true, true, true, false, false]
        );
        // Profile attributes: any row whose attributes may have changed.
        assert_eq!(
            needs(sends(false, false, false, true, true)),
            [true, true, true, true, false]
        );
        // A run that only records, or a sync without events: nothing to build.
        assert_eq!(needs(sends(true, true, true, true, false)), [false; 5]);
        assert_eq!(needs(sends(false, true, true, false, false)), [false; 5]);
    }
}
