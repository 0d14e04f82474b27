//! One run, end to end (DESIGN.md "The pipeline of one run"), and `plan`, its dry twin.
//!
//! lock → resume pending → snapshot → diff + map → commit → ship → finish.
//!
//! Invariants:
//! - Nothing is written to the baseline or the outbox before the commit; a failure before it
//!   leaves them as they were (a failed run writes only its own run record).
//! - Pending requests of earlier runs are shipped before anything new is read; a run that
//!   cannot empty them stops there.
//! - The summary is built from what was recorded, so `--json` tells what the store holds.

pub mod delta;

use crate::config::{Initial, OnChange, Reentry, Settings};
use crate::core::diff::{merge, BaseRow, Policy};
use crate::core::encode::RowHash;
use crate::core::mapping::{Event, EventRules, Reject};
use crate::core::pack::RowRef;
use crate::lock::{LockError, RunLock};
use crate::ship::client::{Client, Credentials};
use crate::ship::{Halt, Progress, ShipOptions, StopFlag};
use crate::snapshot::{Payloads, Snapshot, SnapshotError};
use crate::store::{now_rfc3339, RunRecord, Store, StoreError};
use delta::{Apply, Counts, Sink};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Guard(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("interrupted before the commit; nothing was committed")]
    Interrupted,
}

impl RunError {
    /// Config problems (exit 2): a column the source lacks, a store written for another mapping.
    pub fn is_config(&self) -> bool {
        match self {
            RunError::Snapshot(SnapshotError::Source(s)) => s.is_config(),
            RunError::Store(StoreError::Identity { .. }) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub force: bool,
    pub initial: Option<Initial>,
    pub max_requests: Option<u64>,
    pub max_duration: Option<Duration>,
    pub progress: bool,
}

/// The summary of a run, as `run --json` prints it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub run_id: Option<i64>,
    pub status: String,
    pub rows: u64,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub rejected: u64,
    pub events: u64,
    pub events_sent: u64,
    pub events_pending: u64,
    pub requests: u64,
    pub retries: u64,
    pub resumed_requests: u64,
    pub duration_ms: u64,
    pub sent_nothing_reason: Option<String>,
    pub error: Option<String>,
}

impl RunSummary {
    pub fn exit_code(&self) -> i32 {
        match self.status.as_str() {
            "failed" => 1,
            "partial" => 3,
            _ => 0,
        }
    }
}

fn policy(settings: &Settings, first_run: bool, initial: Initial) -> Policy {
    Policy {
        record_only: first_run && initial == Initial::Baseline,
        event_on_change: settings.sync.on_change == OnChange::Event,
        event_on_reentry: settings.sync.reentry == Reentry::Event,
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

fn spill_dir(settings: &Settings) -> std::path::PathBuf {
    settings
        .state_path
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| ".".into())
}

/// Whether the rows' payloads will be needed: not on a run that only records the segment (the
/// first under `initial = "baseline"`, as `policy` decides it), which never builds an event.
/// Should the two ever disagree, an event would find an empty payload and reject its row
/// (`corrupt_row`), never send a wrong one.
fn payloads(settings: &Settings, first_run: bool, opts: &RunOptions) -> Payloads {
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    if first_run && initial == Initial::Baseline {
        Payloads::Skip
    } else {
        Payloads::Keep
    }
}

/// Reads the source into a sorted snapshot, with progress on stderr.
fn take_snapshot(
    settings: &Settings,
    stop: &StopFlag,
    ui: &crate::ui::Ui,
    payloads: Payloads,
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

fn guard_check(
    settings: &Settings,
    counts: &Counts,
    baseline: u64,
    first_run: bool,
    force: bool,
) -> Result<(), String> {
    if first_run || force {
        return Ok(());
    }
    let mut problems = Vec::new();
    if settings.sync.max_added.exceeded(counts.added, baseline) {
        problems.push(format!(
            "{} rows added (max_added = {})",
            counts.added,
            settings.sync.max_added.describe()
        ));
    }
    if settings.sync.max_removed.exceeded(counts.removed, baseline) {
        problems.push(format!(
            "{} rows removed (max_removed = {})",
            counts.removed,
            settings.sync.max_removed.describe()
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the delta is larger than the guards allow against a baseline of {baseline} rows: {}. Nothing was committed and nothing new was sent. \
         If the segment really changed this much, run again with --force; else check the source (a truncated file or a broken query)",
        problems.join(", ")
    ))
}

struct CommitSink<'a, 'b> {
    w: &'a mut crate::store::commit::RunWriter<'b>,
    /// Whether the current delta wrote its key's baseline entry.
    wrote: bool,
}

impl Sink for CommitSink<'_, '_> {
    type Error = StoreError;
    fn put(&mut self, key: &[u8], hash: RowHash) -> Result<(), StoreError> {
        self.wrote = true;
        self.w.put(key, hash)
    }
    fn tombstone(&mut self, key: &[u8], hash: RowHash) -> Result<(), StoreError> {
        self.wrote = true;
        self.w.tombstone(key, hash)
    }
    fn event(&mut self, event: &Event, row: RowRef) -> Result<(), StoreError> {
        self.w
            .event(&event.custom_id, &event.body.to_string(), &row)
    }
    fn reject(
        &mut self,
        key: Option<&str>,
        line: Option<u64>,
        r: &Reject,
    ) -> Result<(), StoreError> {
        self.w
            .reject(key, line, r.column.as_deref(), r.rule, &r.reason)
    }
}

/// The baseline's entries, counting the present ones into `present` as they go by (the
/// guards' percentages are of the present rows).
fn counted<'a, E>(
    base: impl Iterator<Item = Result<BaseRow, E>> + 'a,
    present: &'a Cell<u64>,
) -> impl Iterator<Item = Result<BaseRow, E>> + 'a {
    base.inspect(move |r| {
        if let Ok(b) = r {
            present.set(present.get() + b.present as u64);
        }
    })
}

/// Diff and commit. Returns the counts and how many events and requests went to the outbox.
fn diff_and_commit(
    settings: &Settings,
    store: &Store,
    snap: Snapshot,
    opts: &RunOptions,
    started_at: &str,
    existing_run: Option<i64>,
    stop: &StopFlag,
) -> Result<(i64, Counts, u64, u64), RunError> {
    let t0 = Instant::now();
    let first_run = !store.has_baseline()?;
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let reader = store.reader()?;
    let apply = Apply {
        plan: &settings.plan,
        policy: policy(settings, first_run, initial),
        rules: rules(settings),
        defer_removals: !snap.loose.is_empty() && settings.plan.has_key(),
    };
    if apply.defer_removals {
        tracing::warn!(rows = snap.loose.len(), "some rows could not be read far enough to know their key: removals are not recorded this run");
    }
    let rows = snap.rows;
    let loose = snap.loose.clone();
    let mut writer = store.begin_run(started_at, existing_run)?;
    let mut counts = Counts {
        record_only: apply.policy.record_only,
        ..Counts::default()
    };
    let baseline_rows = Cell::new(0u64);
    {
        let compacting = writer.compacting();
        let mut sink = CommitSink {
            w: &mut writer,
            wrote: false,
        };
        apply.loose(&loose, &mut sink, &mut counts)?;
        let sorted = snap
            .into_sorted()
            .map(|r| r.map_err(|e| RunError::Snapshot(SnapshotError::Spill(e))));
        // A new base takes every entry, the kept ones too: the baseline rows the merge has
        // read and not yet matched with a delta wait here (at most two: the merge peeks one).
        let read = RefCell::new(VecDeque::new());
        let base = counted(reader.baseline_iter(), &baseline_rows).map(|r| {
            if let (true, Ok(b)) = (compacting, &r) {
                read.borrow_mut().push_back(b.clone());
            }
            r.map_err(RunError::Store)
        });
        for (i, d) in merge(sorted, base).enumerate() {
            if i % 65_536 == 0 && stop.is_raised() {
                return Err(RunError::Interrupted);
            }
            let d = d?;
            if !compacting {
                apply.delta(d, &mut sink, &mut counts)?;
                continue;
            }
            let old = {
                let mut read = read.borrow_mut();
                match read.front() {
                    Some(b) if b.key.as_slice() == d.key() => read.pop_front(),
                    _ => None,
                }
            };
            sink.wrote = false;
            apply.delta(d, &mut sink, &mut counts)?;
            if let (false, Some(old)) = (sink.wrote, old) {
                sink.w.keep(&old.key, old.hash, old.present)?;
            }
        }
    }
    let baseline_rows = baseline_rows.get();
    guard_check(settings, &counts, baseline_rows, first_run, opts.force)
        .map_err(RunError::Guard)?;
    let record = RunRecord {
        rows,
        added: counts.added,
        changed: counts.changed,
        removed: counts.removed,
        rejected: counts.rejected,
        ..RunRecord::default()
    };
    let run_id = writer.run_id();
    let merged = t0.elapsed();
    let written = writer.commit(
        &record,
        settings.destination.mass_update_from,
        &settings.plan.identity(),
    )?;
    tracing::debug!(
        merge_ms = merged.as_millis() as u64,
        commit_ms = (t0.elapsed() - merged).as_millis() as u64,
        events = written.events,
        requests = written.requests,
        "diff and commit"
    );
    Ok((run_id, counts, written.events, written.requests))
}

pub fn ship_options(settings: &Settings, opts: &RunOptions) -> ShipOptions {
    ShipOptions {
        rate: settings.destination.rate,
        mass_rate: settings.destination.mass_rate,
        max_attempts: settings.destination.max_attempts,
        max_throttled: settings.destination.max_throttled,
        backoff_base: Duration::from_millis(250),
        backoff_cap: Duration::from_secs(30),
        max_requests: opts.max_requests,
        deadline: opts.max_duration.map(|d| tokio::time::Instant::now() + d),
    }
}

fn halt_message(settings: &Settings, halt: &Halt) -> Option<String> {
    let d = &settings.destination;
    Some(match halt {
        Halt::Auth { status, message } => format!(
            "Batch answered {status} ({message}): check the REST API key in ${} and the project key in ${}. Every event is kept pending for the next run",
            d.api_key_env, d.project_key_env
        ),
        Halt::NotFound { message } => format!(
            "Batch answered 404 ({message}): check [destination] endpoint ({}) and api_version ({}). Every event is kept pending",
            d.endpoint, d.api_version
        ),
        Halt::RetriesExhausted { request, attempts, last } => format!(
            "request {request} failed {attempts} times (last: {last}); it and the rest stay pending for the next run"
        ),
        Halt::Throttled { waited } => format!("Batch kept answering 429 for {}s without progress; pending events are kept", waited.as_secs()),
        Halt::Interrupted => "interrupted by a signal; pending events are kept for the next run".into(),
        Halt::Limit => return None,
    })
}

/// One whole run.
pub fn run(
    settings: &Settings,
    creds: Credentials,
    opts: &RunOptions,
    stop: &StopFlag,
    ui: &crate::ui::Ui,
) -> Result<RunSummary, Box<RunFailed>> {
    let t0 = Instant::now();
    let started_at = now_rfc3339();
    let _lock = RunLock::acquire(&settings.state_path)?;
    let store = Store::open(&settings.state_path)?;
    store.close_interrupted_runs()?;
    store.check_identity(&settings.plan.identity())?;
    let client =
        Client::new(&settings.destination, creds).map_err(|e| RunError::Client(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Client(e.to_string()))?;
    let ship_opts = ship_options(settings, opts);
    let mut summary = RunSummary::default();

    let ship_now = |run_id: i64, summary: &mut RunSummary| -> Result<Option<Halt>, RunError> {
        let pending = store.pending()?;
        if pending.requests == 0 {
            return Ok(None);
        }
        // --max-requests bounds the whole run, resume included.
        let mut ship_opts = ship_opts.clone();
        ship_opts.max_requests = ship_opts
            .max_requests
            .map(|m| m.saturating_sub(summary.requests));
        let mut bar = ui.shipping(pending.events);
        let report = rt
            .block_on(crate::ship::ship(
                &store,
                &client,
                &ship_opts,
                run_id,
                stop,
                &mut bar as &mut dyn Progress,
            ))
            .map_err(|crate::ship::ShipError::Store(e)| RunError::Store(e))?;
        bar.done();
        summary.requests += report.requests;
        summary.retries += report.retries;
        summary.events_sent += report.events_sent;
        summary.rejected += report.rejected;
        Ok(report.halt)
    };

    // Resume what earlier runs left pending.
    let pending = store.pending()?;
    let mut run_id: Option<i64> = None;
    if pending.requests > 0 {
        tracing::info!(
            requests = pending.requests,
            events = pending.events,
            "shipping what earlier runs left pending first"
        );
        let id = store.record_resume_run(&started_at)?;
        run_id = Some(id);
        summary.resumed_requests = pending.requests;
        let halt = ship_now(id, &mut summary)
            .map_err(|e| fail_before_commit(&store, Some(id), &started_at, &summary, t0, e))?;
        if let Some(h) = halt {
            let why = (h != Halt::Limit).then(|| {
                "pending requests of an earlier run could not all be shipped; nothing new was read".to_string()
            });
            return finish(&store, id, summary, settings, Some(h), t0, why)
                .map_err(Box::<RunFailed>::from);
        }
    }

    // Snapshot, diff, commit.
    let first_run = !store.has_baseline()?;
    let snap = match take_snapshot(settings, stop, ui, payloads(settings, first_run, opts)) {
        Ok(s) => s,
        Err(e) => {
            return Err(fail_before_commit(
                &store,
                run_id,
                &started_at,
                &summary,
                t0,
                e,
            ))
        }
    };
    crate::crash::point("after_read");
    tracing::debug!(
        ms = t0.elapsed().as_millis() as u64,
        rows = snap.rows,
        "snapshot taken"
    );
    let rows = snap.rows;
    summary.rows = rows;
    let (id, counts, _events, _requests) =
        match diff_and_commit(settings, &store, snap, opts, &started_at, run_id, stop) {
            Ok(v) => v,
            Err(e) => {
                return Err(fail_before_commit(
                    &store,
                    run_id,
                    &started_at,
                    &summary,
                    t0,
                    e,
                ))
            }
        };
    summary.run_id = Some(id);
    summary.rows = rows;
    summary.added = counts.added;
    summary.changed = counts.changed;
    summary.removed = counts.removed;
    summary.rejected += counts.rejected;
    summary.events = counts.events;
    if counts.record_only {
        summary.sent_nothing_reason = Some(
            "initial = \"baseline\": the first run records the segment without sending".into(),
        );
    }
    let halt = ship_now(id, &mut summary).map_err(Box::<RunFailed>::from)?;
    finish(&store, id, summary, settings, halt, t0, None).map_err(Box::<RunFailed>::from)
}

/// A run that failed: the error, and the summary of what it did before (a resumed shipment
/// may have delivered events before the source failed).
#[derive(Debug)]
pub struct RunFailed {
    pub error: RunError,
    pub summary: RunSummary,
}

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RunFailed {}

impl From<RunError> for Box<RunFailed> {
    fn from(error: RunError) -> Box<RunFailed> {
        let summary = RunSummary {
            status: "failed".into(),
            error: Some(error.to_string()),
            ..RunSummary::default()
        };
        Box::new(RunFailed { error, summary })
    }
}

impl From<LockError> for Box<RunFailed> {
    fn from(e: LockError) -> Box<RunFailed> {
        RunError::from(e).into()
    }
}

impl From<StoreError> for Box<RunFailed> {
    fn from(e: StoreError) -> Box<RunFailed> {
        RunError::from(e).into()
    }
}

fn fail_before_commit(
    store: &Store,
    run_id: Option<i64>,
    started_at: &str,
    summary: &RunSummary,
    t0: Instant,
    error: RunError,
) -> Box<RunFailed> {
    let msg = error.to_string();
    let mut summary = summary.clone();
    summary.status = "failed".into();
    summary.error = Some(msg.clone());
    summary.duration_ms = t0.elapsed().as_millis() as u64;
    summary.events_pending = store.pending().map(|p| p.events).unwrap_or_default();
    let record = RunRecord {
        status: "failed".into(),
        rows: summary.rows,
        rejected: summary.rejected,
        events_sent: summary.events_sent,
        events_pending: summary.events_pending,
        requests: summary.requests,
        retries: summary.retries,
        error: Some(msg.clone()),
        ..RunRecord::default()
    };
    let recorded = match run_id {
        Some(id) => store.finish_run(id, &record).map(|_| id),
        None => store.record_failed_run(started_at, summary.rows, [0; 4], &msg),
    };
    match recorded {
        Ok(id) => summary.run_id = Some(id),
        Err(re) => tracing::warn!(error = %re, "could not record the failed run"),
    }
    Box::new(RunFailed { error, summary })
}

fn finish(
    store: &Store,
    run_id: i64,
    mut summary: RunSummary,
    settings: &Settings,
    halt: Option<Halt>,
    t0: Instant,
    extra: Option<String>,
) -> Result<RunSummary, RunError> {
    summary.run_id = Some(run_id);
    summary.events_pending = store.pending()?.events;
    summary.duration_ms = t0.elapsed().as_millis() as u64;
    let message = halt.as_ref().and_then(|h| halt_message(settings, h));
    summary.status = if message.is_some() {
        "failed"
    } else if summary.rejected > 0 {
        "partial"
    } else {
        "completed"
    }
    .into();
    summary.error = match (message, extra) {
        (Some(m), Some(x)) => Some(format!("{m}; {x}")),
        (m, x) => m.or(x),
    };
    if matches!(halt, Some(Halt::Limit)) && summary.events_pending > 0 {
        tracing::info!(
            pending = summary.events_pending,
            "stopped at --max-requests/--max-duration: the next run continues"
        );
    }
    let record = RunRecord {
        run_id,
        status: summary.status.clone(),
        rows: summary.rows,
        added: summary.added,
        changed: summary.changed,
        removed: summary.removed,
        rejected: summary.rejected,
        events: summary.events,
        events_sent: summary.events_sent,
        events_pending: summary.events_pending,
        requests: summary.requests,
        retries: summary.retries,
        error: summary.error.clone(),
        ..RunRecord::default()
    };
    store.finish_run(run_id, &record)?;
    Ok(summary)
}

/// What `plan --json` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanSummary {
    pub rows: u64,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Events a run would send now: the new ones and those pending from earlier runs.
    pub events: u64,
    pub new_events: u64,
    pub pending_events: u64,
    pub endpoint: &'static str,
    pub sample: Vec<serde_json::Value>,
    pub rejects_sample: Vec<serde_json::Value>,
    pub guard: Option<String>,
    pub first_run: bool,
}

struct PlanSink {
    sample: Vec<serde_json::Value>,
    rejects: Vec<serde_json::Value>,
}

const SAMPLE: usize = 5;

impl Sink for PlanSink {
    type Error = RunError;
    fn put(&mut self, _: &[u8], _: RowHash) -> Result<(), RunError> {
        Ok(())
    }
    fn tombstone(&mut self, _: &[u8], _: RowHash) -> Result<(), RunError> {
        Ok(())
    }
    fn event(&mut self, event: &Event, _: RowRef) -> Result<(), RunError> {
        if self.sample.len() < SAMPLE {
            self.sample.push(serde_json::json!({ "identifiers": { "custom_id": event.custom_id }, "events": [event.body] }));
        }
        Ok(())
    }
    fn reject(&mut self, key: Option<&str>, line: Option<u64>, r: &Reject) -> Result<(), RunError> {
        if self.rejects.len() < SAMPLE {
            self.rejects.push(serde_json::json!({ "key": key, "line": line, "column": r.column, "rule": r.rule, "reason": r.reason }));
        }
        Ok(())
    }
}

/// Computes the delta and the events a run would send; changes nothing anywhere.
pub fn plan(
    settings: &Settings,
    opts: &RunOptions,
    ui: &crate::ui::Ui,
) -> Result<PlanSummary, RunError> {
    let store = Store::open_read(&settings.state_path)?;
    if let Some(s) = &store {
        s.check_identity(&settings.plan.identity())?;
    }
    let first_run = match &store {
        Some(s) => !s.has_baseline()?,
        None => true,
    };
    let snap = take_snapshot(
        settings,
        &StopFlag::default(),
        ui,
        payloads(settings, first_run, opts),
    )?;
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let apply = Apply {
        plan: &settings.plan,
        policy: policy(settings, first_run, initial),
        rules: rules(settings),
        defer_removals: !snap.loose.is_empty() && settings.plan.has_key(),
    };
    let mut sink = PlanSink {
        sample: Vec::new(),
        rejects: Vec::new(),
    };
    let mut counts = Counts::default();
    let rows = snap.rows;
    apply.loose(&snap.loose.clone(), &mut sink, &mut counts)?;
    let sorted = snap
        .into_sorted()
        .map(|r| r.map_err(|e| RunError::Snapshot(SnapshotError::Spill(e))));
    let pending = match &store {
        Some(s) => s.pending()?,
        None => Default::default(),
    };
    let baseline_rows = Cell::new(0u64);
    match &store {
        Some(s) => {
            let base =
                counted(s.baseline_iter(), &baseline_rows).map(|r| r.map_err(RunError::Store));
            for d in merge(sorted, base) {
                apply.delta(d?, &mut sink, &mut counts)?;
            }
        }
        None => {
            for d in merge(sorted, std::iter::empty()) {
                apply.delta(d?, &mut sink, &mut counts)?;
            }
        }
    }
    let guard = guard_check(
        settings,
        &counts,
        baseline_rows.get(),
        first_run,
        opts.force,
    )
    .err();
    Ok(PlanSummary {
        rows,
        added: counts.added,
        changed: counts.changed,
        removed: counts.removed,
        unchanged: counts.unchanged,
        rejected: counts.rejected,
        events: if guard.is_some() {
            pending.events
        } else {
            counts.events + pending.events
        },
        new_events: counts.events,
        pending_events: pending.events,
        endpoint: crate::core::pack::Endpoint::for_delta(
            counts.events,
            settings.destination.mass_update_from,
        )
        .as_str(),
        sample: sink.sample,
        rejects_sample: sink.rejects,
        guard,
        first_run,
    })
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
}

/// Reads the whole source and maps every row as if it were new: config, source and mapping
/// problems surface without touching the store or the network.
pub fn check(settings: &Settings, ui: &crate::ui::Ui) -> Result<CheckSummary, RunError> {
    let snap = take_snapshot(settings, &StopFlag::default(), ui, Payloads::Keep)?;
    let apply = Apply {
        plan: &settings.plan,
        policy: Policy {
            record_only: false,
            event_on_change: true,
            event_on_reentry: true,
        },
        rules: rules(settings),
        defer_removals: true,
    };
    let mut sink = PlanSink {
        sample: Vec::new(),
        rejects: Vec::new(),
    };
    let mut counts = Counts::default();
    let rows = snap.rows;
    let source = snap.what.clone();
    apply.loose(&snap.loose.clone(), &mut sink, &mut counts)?;
    let sorted = snap
        .into_sorted()
        .map(|r| r.map_err(|e| RunError::Snapshot(SnapshotError::Spill(e))));
    for d in merge(sorted, std::iter::empty()) {
        apply.delta(d?, &mut sink, &mut counts)?;
    }
    Ok(CheckSummary {
        config: settings.file.display().to_string(),
        source,
        rows,
        rejected: counts.rejected,
        rejects_sample: sink.rejects,
        sample: sink.sample,
        credentials: String::new(),
    })
}
