//! One run, end to end (DESIGN.md "The pipeline of one run"), and `plan` and `check`, its dry
//! twins.
//!
//! ```text
//! lock → Run::start → resume → [DiffEngine] → commit → ship → finish
//! ```
//!
//! - [`run`]: a run as a value ([`run::Run`]) with its steps; generic over where the state is
//!   kept ([`crate::state::StateStore`]) and fed by any [`diff::DiffEngine`].
//! - [`diff`]: the seam where the diff happens (the local sort/merge today) and the one loop
//!   that applies deltas, used by `run`, `plan` and `check`.
//! - [`delta`]: what one delta does: the policy's decision, the event or reject, the baseline.
//! - [`preview`]: `plan` and `check`.
//! - [`status`]: what the store says (`status`, and `serve`'s `/status` and gauges).
//!
//! This file wires the local mode: the run lock beside the SQLite store, the snapshot of the
//! source, and the store's baseline as the other side of the merge.

pub mod database;
pub mod delta;
pub mod diff;
pub mod preview;
pub mod run;
pub mod status;

pub use preview::{check, plan, CheckSummary, PlanSummary};
pub use run::{ship_options, Run, RunFailed};

use crate::config::Initial;
use crate::config::Settings;
use crate::core::run::{ExitCode, GuardTripped, RunSummary};
use crate::lock::{LockError, RunLock};
use crate::ship::client::Credentials;
use crate::ship::StopFlag;
use crate::snapshot::SnapshotError;
use crate::store::{Store, StoreError};
use crate::ui::Ui;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Guard(#[from] GuardTripped),
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("interrupted before the commit; nothing was committed")]
    Interrupted,
    #[error("the run ended without a run record")]
    NoRecord,
}

impl From<std::convert::Infallible> for RunError {
    fn from(never: std::convert::Infallible) -> RunError {
        match never {}
    }
}

impl RunError {
    /// The exit code of a command that failed with this error (DESIGN.md "Exit codes"):
    /// another run's lock, a config problem (a column the source lacks, a store written for
    /// another mapping), or a failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            RunError::Locked(LockError::Held { .. }) => ExitCode::Locked,
            RunError::Snapshot(SnapshotError::Source(s)) if s.is_config() => ExitCode::Config,
            RunError::Store(
                StoreError::Identity { .. }
                | StoreError::DatabaseIdentity { .. }
                | StoreError::NotSetUp { .. },
            ) => ExitCode::Config,
            _ => ExitCode::Failed,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub force: bool,
    /// `--retry-rejects`: every open reject is tried again once, as if new.
    pub retry_rejects: bool,
    pub initial: Option<Initial>,
    pub max_requests: Option<u64>,
    pub max_duration: Option<Duration>,
    pub progress: bool,
    /// Counts shipping's answers for an observer (`serve`); `None` for a run by hand.
    pub tally: Option<crate::ship::AnswerTally>,
}

/// One whole run: the database mode's ([`database::run`]) when `[state] store = "database"`,
/// else the local mode's.
pub fn run(
    settings: &Settings,
    creds: Credentials,
    opts: &RunOptions,
    stop: &StopFlag,
    ui: &Ui,
) -> Result<RunSummary, Box<RunFailed>> {
    if settings.warehouse.is_some() {
        return database::run(settings, creds, opts, stop, ui);
    }
    let _lock = RunLock::acquire(&settings.state_path).map_err(RunError::from)?;
    let store = Store::open(&settings.state_path).map_err(RunError::from)?;
    let mut run = Run::start(settings, opts, store, creds, stop, ui)?;
    let outcome = steps(&mut run, settings, opts, stop, ui);
    run.finish(outcome)
}

/// resume → snapshot → commit → ship; the first step that stops the run ends it.
fn steps(
    run: &mut Run<'_, Store>,
    settings: &Settings,
    opts: &RunOptions,
    stop: &StopFlag,
    ui: &Ui,
) -> Result<Option<crate::ship::Halt>, RunError> {
    if let Some(halt) = run.resume()? {
        return Ok(Some(halt));
    }
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let payloads = diff::payloads(run.first_run()?, initial, run.backfill());
    let lazy = diff::lazy_profiles(settings, run.backfill(), opts.retry_rejects);
    let upgrade = run.upgrades_recipe();
    if upgrade {
        tracing::info!("the store holds row hashes of recipe 1: this run rewrites them under recipe {} and sends nothing for that", crate::core::encode::HASH_RECIPE);
    }
    let snap = diff::read_snapshot(settings, stop, ui, (payloads, lazy, upgrade))?;
    crate::crash::point("after_read");
    tracing::debug!(rows = snap.rows, "snapshot taken");
    // The baseline is read on a second connection while the run's transaction writes.
    let reader = run.store().reader()?;
    let sends = delta::Apply::for_run(settings, run.first_run()?, initial, false).sends();
    let mut engine = diff::LocalDiff::new(snap, Some(reader.baseline_iter())).reading_again(sends);
    let spin = ui.step("diffing against the baseline and committing");
    let committed = run.commit(&mut engine);
    spin.done();
    committed?;
    run.ship()
}
