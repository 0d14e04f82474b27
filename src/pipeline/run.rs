//! One run as a value: [`Run::resume`], [`Run::commit`], [`Run::ship`], and one
//! [`Run::finish`] that closes its record whatever happened.
//!
//! Invariants:
//! - Nothing is written to the baseline or the outbox before the commit; a failure before it
//!   leaves them as they were (a failed run writes only its own run record).
//! - Pending requests of earlier runs are shipped before anything new is read; a run that
//!   cannot empty them stops there.
//! - The summary is built from what was recorded, and the store keeps it as it is, so
//!   `--json` and `status` tell what the store holds.
//! - Generic over the [`StateStore`] and fed by any [`DiffEngine`]: the database mode runs
//!   these same steps.

use super::delta::Apply;
use super::diff::{self, DiffEngine};
use super::{RunError, RunOptions};
use crate::config::Settings;
use crate::core::run::{check_guards, status, RunStatus, RunSummary};
use crate::ship::client::{Client, Credentials};
use crate::ship::{Halt, Progress, ShipOptions, StopFlag};
use crate::state::{Commit, CommitMeta, StateStore};
use crate::ui::Ui;
use std::time::{Duration, Instant};

pub struct Run<'a, S: StateStore> {
    settings: &'a Settings,
    opts: &'a RunOptions,
    store: S,
    client: Client,
    rt: tokio::runtime::Runtime,
    stop: &'a StopFlag,
    ui: &'a Ui,
    t0: Instant,
    summary: RunSummary,
    /// Said after the halt's own message: why the run stopped where it did.
    note: Option<&'static str>,
    /// The store holds recipe-1 hashes: this run upgrades it (read once, at the start).
    upgrade: bool,
    /// This run is the sync's first with its profile attributes (read once, at the start:
    /// only the run's commit changes it).
    backfill: bool,
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

impl std::error::Error for RunFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl From<RunError> for Box<RunFailed> {
    /// A run that failed before it had a record: nothing of it is in the store.
    fn from(error: RunError) -> Box<RunFailed> {
        let summary = RunSummary::failed(crate::errors::chain(&error));
        Box::new(RunFailed { error, summary })
    }
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
        tally: opts.tally.clone(),
    }
}

/// What to tell the user when shipping halted; `None` for the run's own limits.
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

impl<'a, S: StateStore> Run<'a, S> {
    /// A run on a store whose lock the caller holds: closes what dead runs left open, refuses
    /// a store written for another mapping, and readies the client.
    pub fn start(
        settings: &'a Settings,
        opts: &'a RunOptions,
        store: S,
        creds: Credentials,
        stop: &'a StopFlag,
        ui: &'a Ui,
    ) -> Result<Self, RunError> {
        let t0 = Instant::now();
        let started_at = crate::store::now_rfc3339();
        store.close_interrupted_runs()?;
        // A store of hash recipe 1 is upgraded by this run (`steps`); any other is checked.
        let upgrade = settings.upgrades_recipe(store.stored_identity()?.as_deref());
        if !upgrade {
            store.check_identity(&settings.store_identity())?;
        }
        let backfill = backfill(settings, store.profile_identity()?);
        let client = Client::new(&settings.destination, creds).map_err(RunError::Client)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Runtime)?;
        Ok(Run {
            settings,
            opts,
            store,
            client,
            rt,
            stop,
            ui,
            t0,
            summary: RunSummary::new(started_at),
            note: None,
            upgrade,
            backfill,
        })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether this run upgrades a store of hash recipe 1.
    pub fn upgrades_recipe(&self) -> bool {
        self.upgrade
    }

    /// Whether this run is the sync's first with its profile attributes (a backfill).
    pub fn backfill(&self) -> bool {
        self.backfill
    }

    /// Ships what earlier runs left pending. `Some(halt)` when they could not all be shipped
    /// (or the run's own limits were reached): the run reads nothing new and finishes there.
    pub fn resume(&mut self) -> Result<Option<Halt>, RunError> {
        let pending = self.store.pending()?;
        if pending.requests == 0 {
            return Ok(None);
        }
        tracing::info!(
            requests = pending.requests,
            events = pending.events,
            "shipping what earlier runs left pending first"
        );
        let id = self.store.record_resume_run(&self.summary.started_at)?;
        self.summary.run_id = Some(id);
        self.summary.counts.resumed_requests = pending.requests;
        let halt = self.ship()?;
        if halt.as_ref().is_some_and(|h| *h != Halt::Limit) {
            self.note = Some(
                "pending requests of an earlier run could not all be shipped; nothing new was read",
            );
        }
        Ok(halt)
    }

    /// Whether no run has committed a baseline yet.
    pub fn first_run(&self) -> Result<bool, RunError> {
        Ok(!self.store.has_baseline()?)
    }

    /// The run's one commit: the deltas of `engine` applied, the guards checked, then the
    /// baseline, the outbox requests, the rejects and the run's counts, all at once.
    pub fn commit(&mut self, engine: &mut dyn DiffEngine) -> Result<(), RunError> {
        let t0 = Instant::now();
        let settings = self.settings;
        let first_run = self.first_run()?;
        let initial = self.opts.initial.unwrap_or(settings.sync.initial);
        let rules = settings.rules_identity();
        let mut apply = Apply::for_run(settings, first_run, initial, !engine.loose().is_empty());
        if !self.opts.retry_rejects {
            apply.open = self.store.open_rejects(&rules)?;
        }
        if apply.defer_removals {
            tracing::warn!(rows = engine.loose().len(), "some rows could not be read far enough to know their key: removals are not recorded this run");
        }
        self.summary.counts.rows = engine.rows();
        let mut writer =
            self.store
                .begin_run(&self.summary.started_at, self.summary.run_id, &rules)?;
        let diffed = diff::apply(engine, &apply, &mut writer, self.stop)?;
        let backfill = self.backfill;
        let guards = settings.sync.guards(backfill);
        check_guards(
            guards,
            &diffed.counts,
            diffed.baseline_rows,
            first_run,
            self.opts.force,
        )?;
        let merged = t0.elapsed();
        let mut counts = self.summary.counts;
        counts += diffed.counts;
        let run_id = writer.run_id();
        let identity = settings.store_identity();
        let profile = settings.plan.profile_identity();
        let meta = CommitMeta {
            identity: &identity,
            profile: &profile,
            backfill,
            mass_update_from: settings.destination.mass_update_from,
            keep_runs: settings.keep_runs,
        };
        let written = writer.commit(&counts, &meta)?;
        tracing::debug!(
            merge_ms = merged.as_millis() as u64,
            commit_ms = (t0.elapsed() - merged).as_millis() as u64,
            events = written.events,
            requests = written.requests,
            "diff and commit"
        );
        self.summary.run_id = Some(run_id);
        self.summary.counts = counts;
        if apply.policy.record_only {
            self.summary.sent_nothing_reason = Some(
                "initial = \"baseline\": the first run records the segment without sending".into(),
            );
        }
        Ok(())
    }

    /// Sends the outbox's pending requests in order; `Some(halt)` if it stopped before the end.
    pub fn ship(&mut self) -> Result<Option<Halt>, RunError> {
        let Some(run_id) = self.summary.run_id else {
            return Ok(None);
        };
        let pending = self.store.pending()?;
        if pending.requests == 0 {
            return Ok(None);
        }
        // --max-requests bounds the whole run, resume included.
        let mut ship_opts = ship_options(self.settings, self.opts);
        ship_opts.max_requests = ship_opts
            .max_requests
            .map(|m| m.saturating_sub(self.summary.counts.requests));
        let mut bar = self.ui.shipping(pending, self.settings.destination.rate);
        let report = self
            .rt
            .block_on(crate::ship::ship(
                &self.store,
                &self.client,
                &ship_opts,
                run_id,
                self.stop,
                &mut bar as &mut dyn Progress,
            ))
            .map_err(|crate::ship::ShipError::Store(e)| RunError::Store(e))?;
        bar.done();
        self.summary.counts += report.counts;
        Ok(report.halt)
    }

    /// Closes the run record with how the run ended: its status, counts, pending events and
    /// error, kept as the summary says them.
    pub fn finish(
        mut self,
        outcome: Result<Option<Halt>, RunError>,
    ) -> Result<RunSummary, Box<RunFailed>> {
        let s = &mut self.summary;
        s.duration_ms = self.t0.elapsed().as_millis() as u64;
        s.finished_at = Some(crate::store::now_rfc3339());
        let pending = self.store.pending();
        match outcome {
            Ok(halt) => {
                let pending = pending.map_err(RunError::from)?;
                s.counts.events_pending = pending.events;
                s.counts.requests_pending = pending.requests;
                let end = halt
                    .as_ref()
                    .map_or(crate::core::run::ShipEnd::Drained, Halt::end);
                s.status = status(&s.counts, end);
                let message = halt.as_ref().and_then(|h| halt_message(self.settings, h));
                s.error = match (message, self.note) {
                    (Some(m), Some(x)) => Some(format!("{m}; {x}")),
                    (m, x) => m.or(x.map(String::from)),
                };
                if matches!(halt, Some(Halt::Limit)) && s.counts.requests_pending > 0 {
                    tracing::info!(
                        pending = s.counts.events_pending,
                        requests = s.counts.requests_pending,
                        "stopped at --max-requests/--max-duration: the next run continues"
                    );
                }
                let id = s.run_id.ok_or(RunError::NoRecord)?;
                self.store.finish_run(id, s).map_err(RunError::from)?;
                Ok(self.summary)
            }
            Err(error) => {
                let pending = pending.unwrap_or_default();
                s.counts.events_pending = pending.events;
                s.counts.requests_pending = pending.requests;
                s.status = RunStatus::Failed;
                s.error = Some(crate::errors::chain(&error));
                let recorded = match s.run_id {
                    Some(id) => self.store.finish_run(id, s).map(|_| id),
                    None => self.store.record_failed_run(s),
                };
                match recorded {
                    Ok(id) => s.run_id = Some(id),
                    Err(re) => tracing::warn!(error = %re, "could not record the failed run"),
                }
                Err(Box::new(RunFailed {
                    error,
                    summary: self.summary,
                }))
            }
        }
    }
}

/// Whether a run is its sync's first with these profile attributes (`stored`: what the last
/// commit recorded): a backfill, whose profile updates may go to mass-update.
pub fn backfill(settings: &Settings, stored: Option<String>) -> bool {
    let current = settings.plan.profile_identity();
    settings.plan.has_profile() && stored.as_deref() != Some(current.as_str())
}
