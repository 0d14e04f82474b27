//! `plan` and `check`: the run's own diff loop with a sink that only counts and samples.
//!
//! Invariant: neither writes anywhere; `plan` is the run minus its writes, never a second
//! implementation (the same [`Apply`] decides, through the same loop).

use super::delta::Apply;
use super::diff::{self, DiffEngine, LocalDiff};
use super::{RunError, RunOptions};
use crate::config::Settings;
use crate::core::diff::BaseRow;
use crate::core::encode::RowHash;
use crate::core::mapping::{Operation, Reject};
use crate::core::pack::{Endpoint, RowRef};
use crate::core::run::check_guards;
use crate::ship::StopFlag;
use crate::snapshot::Payloads;
use crate::state::{OpenRejects, Outbox, Pending, Rejected, Sink, StateStore};
use crate::store::Store;
use crate::ui::Ui;
use std::convert::Infallible;

/// What `plan --json` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanSummary {
    pub rows: u64,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Rows still rejected (unchanged since their open reject): not sent, not counted above.
    pub still_rejected: u64,
    /// Events a run would send now: the new ones and those pending from earlier runs.
    pub events: u64,
    pub new_events: u64,
    pub pending_events: u64,
    /// Operations a run now would send that carry profile attributes (with an event or alone).
    pub profile_updates: u64,
    /// The run would be its sync's first with these profile attributes: it sets them on every
    /// present row (a backfill).
    pub profile_backfill: bool,
    pub endpoint: &'static str,
    pub sample: Vec<serde_json::Value>,
    /// A few of the profile updates a run would send alone (without an event).
    pub profile_sample: Vec<serde_json::Value>,
    pub rejects_sample: Vec<serde_json::Value>,
    pub guard: Option<String>,
    pub first_run: bool,
}

/// What `check --json` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckSummary {
    pub config: String,
    pub source: String,
    pub rows: u64,
    /// Rows that would be rejected if every row were new.
    pub rejected: u64,
    pub rejects_sample: Vec<serde_json::Value>,
    pub sample: Vec<serde_json::Value>,
    pub credentials: String,
    /// Where the state lives, and for the database mode, that its tables are in place.
    pub state: String,
}

const SAMPLE: usize = 5;

/// Keeps the first few events and rejects; writes nothing.
#[derive(Default)]
struct Samples {
    events: Vec<serde_json::Value>,
    /// Operations that carry profile attributes alone.
    profiles: Vec<serde_json::Value>,
    rejects: Vec<serde_json::Value>,
}

impl Sink for Samples {
    type Error = Infallible;
    fn put(&mut self, _: &[u8], _: RowHash, _: Option<RowHash>) -> Result<(), Infallible> {
        Ok(())
    }
    fn tombstone(&mut self, _: &[u8], _: RowHash) -> Result<(), Infallible> {
        Ok(())
    }
    fn keep(&mut self, _: &BaseRow) -> Result<(), Infallible> {
        Ok(())
    }
    fn keeps_each(&self) -> bool {
        false
    }
    fn send(&mut self, op: &Operation, _: RowRef) -> Result<(), Infallible> {
        let sample = if op.event.is_some() {
            &mut self.events
        } else {
            &mut self.profiles
        };
        if sample.len() < SAMPLE {
            sample.push(op.to_json());
        }
        Ok(())
    }
    fn reject(&mut self, at: Rejected<'_>, r: &Reject) -> Result<(), Infallible> {
        if self.rejects.len() < SAMPLE {
            let key = at.key.map(crate::state::key_json);
            self.rejects.push(serde_json::json!({ "key": key, "line": at.line, "column": r.column, "rule": r.rule, "reason": r.reason }));
        }
        Ok(())
    }
    fn still_rejected(&mut self, _: &[u8], _: Option<RowHash>) -> Result<(), Infallible> {
        Ok(())
    }
    fn history(&mut self, _: crate::state::Line<'_>) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Computes the delta and the events a run would send; changes nothing anywhere.
pub fn plan(settings: &Settings, opts: &RunOptions, ui: &Ui) -> Result<PlanSummary, RunError> {
    if settings.warehouse.is_some() {
        return plan_database(settings, opts);
    }
    let store = Store::open_read(&settings.state_path)?;
    if let Some(s) = &store {
        if !settings.upgrades_recipe(s.stored_identity()?.as_deref()) {
            s.check_identity(&settings.store_identity())?;
        }
    }
    let first_run = match &store {
        Some(s) => !s.has_baseline()?,
        None => true,
    };
    let pending = match &store {
        Some(s) => s.pending()?,
        None => Pending::default(),
    };
    let open = match &store {
        Some(s) if !opts.retry_rejects => s.open_rejects(&settings.rules_identity())?,
        _ => OpenRejects::new(),
    };
    let stored_profile = match &store {
        Some(s) => s.profile_identity()?,
        None => None,
    };
    let backfill = super::run::backfill(settings, stored_profile);
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let stop = StopFlag::default();
    let payloads = diff::payloads(first_run, initial, backfill);
    let lazy = diff::lazy_profiles(settings, backfill, opts.retry_rejects);
    let upgrade = match &store {
        Some(s) => settings.upgrades_recipe(s.stored_identity()?.as_deref()),
        None => false,
    };
    let snap = diff::read_snapshot(settings, &stop, ui, (payloads, lazy, upgrade))?;
    let sends = Apply::for_run(settings, first_run, initial, false).sends();
    let engine = match &store {
        Some(s) => LocalDiff::new(snap, Some(s.baseline_iter())),
        None => LocalDiff::new(snap, None),
    };
    let mut engine = engine.reading_again(sends);
    summarize(
        &mut engine,
        settings,
        opts,
        (first_run, backfill),
        pending,
        open,
    )
}

/// `plan` in the database mode: the run's transaction (stage, counts, fetch, map), rolled
/// back; `plan` stages into a temporary table, so it writes nothing of the sync's and takes
/// no lock.
fn plan_database(settings: &Settings, opts: &RunOptions) -> Result<PlanSummary, RunError> {
    let store = super::database::open(settings)?;
    store.check_identity(&settings.store_identity())?;
    let first_run = !store.has_baseline()?;
    let pending = store.pending()?;
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let policy = Apply::for_run(settings, first_run, initial, false).policy;
    let mut engine = crate::warehouse::diff::SqlDiff::stage(
        &store,
        settings,
        policy,
        crate::warehouse::diff::Target::Plan,
        opts.retry_rejects,
    )?;
    let summary = summarize(
        &mut engine,
        settings,
        opts,
        (first_run, false),
        pending,
        OpenRejects::new(),
    );
    drop(engine);
    store.db.settle()?;
    summary
}

/// The run's diff loop over `engine` into a counter of samples, and the guards' verdict.
fn summarize(
    engine: &mut dyn DiffEngine,
    settings: &Settings,
    opts: &RunOptions,
    (first_run, backfill): (bool, bool),
    pending: Pending,
    open: OpenRejects,
) -> Result<PlanSummary, RunError> {
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let mut apply = Apply::for_run(settings, first_run, initial, !engine.loose().is_empty());
    apply.open = open;
    let stop = StopFlag::default();
    let mut samples = Samples::default();
    let diffed = diff::apply(engine, &apply, &mut samples, &stop)?;
    let counts = diffed.counts;
    let guards = settings.sync.guards(backfill);
    let guard = check_guards(guards, &counts, diffed.baseline_rows, first_run, opts.force)
        .err()
        .map(|g| g.to_string());
    Ok(PlanSummary {
        rows: engine.rows(),
        added: counts.added,
        changed: counts.changed,
        removed: counts.removed,
        unchanged: counts.unchanged,
        rejected: counts.rejected,
        still_rejected: counts.still_rejected,
        events: if guard.is_some() {
            pending.events
        } else {
            counts.events + pending.events
        },
        new_events: counts.events,
        pending_events: pending.events,
        profile_updates: counts.profile_updates,
        profile_backfill: backfill && counts.profile_updates > 0,
        endpoint: Endpoint::for_run(
            counts.events,
            counts.profile_updates,
            settings.destination.mass_update_from,
            backfill,
        )
        .as_str(),
        sample: samples.events,
        profile_sample: samples.profiles,
        rejects_sample: samples.rejects,
        guard,
        first_run,
    })
}

/// Reads the whole source and maps every row as if it were new: config, source and mapping
/// problems surface without touching the store or the network.
pub fn check(settings: &Settings, ui: &Ui) -> Result<CheckSummary, RunError> {
    let stop = StopFlag::default();
    let snap = diff::read_snapshot(settings, &stop, ui, (Payloads::Keep, false, false))?;
    let source = snap.what.clone();
    let mut engine = LocalDiff::new(snap, None);
    let mut samples = Samples::default();
    let diffed = diff::apply(
        &mut engine,
        &Apply::for_check(settings),
        &mut samples,
        &stop,
    )?;
    Ok(CheckSummary {
        config: settings.file.display().to_string(),
        source,
        rows: engine.rows(),
        rejected: diffed.counts.rejected,
        rejects_sample: samples.rejects,
        sample: samples.events,
        credentials: String::new(),
        state: String::new(),
    })
}
