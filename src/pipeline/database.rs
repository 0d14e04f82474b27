//! The database mode's wiring (WAREHOUSE.md "One run"): the advisory lock on the run's
//! connection, the tables checked (never created), then the run's own steps with the SQL diff
//! engine and the database store. Everything after the wiring is the local mode's code.

use super::delta::Apply;
use super::run::{Run, RunFailed};
use super::{RunError, RunOptions};
use crate::config::Settings;
use crate::core::run::RunSummary;
use crate::ship::client::Credentials;
use crate::ship::{Halt, StopFlag};
use crate::ui::Ui;
use crate::warehouse::diff::{SqlDiff, Target};
use crate::warehouse::store::DbStore;
use crate::warehouse::{self, Db};
use std::time::Instant;

/// Connects and checks the sync's tables: a run or a plan against a schema never set up, or
/// whose tables were dropped, stops here (exit 2, naming `setup`), before anything is read.
pub fn open(settings: &Settings) -> Result<DbStore, RunError> {
    let db = Db::connect(settings)?;
    warehouse::verify(&db, false)?;
    Ok(DbStore::new(db, settings.destination.mass_update_from))
}

/// One whole run of the database mode.
pub fn run(
    settings: &Settings,
    creds: Credentials,
    opts: &RunOptions,
    stop: &StopFlag,
    ui: &Ui,
) -> Result<RunSummary, Box<RunFailed>> {
    let db = Db::connect(settings).map_err(RunError::from)?;
    db.lock()?;
    warehouse::verify(&db, false).map_err(RunError::from)?;
    let store = DbStore::new(db, settings.destination.mass_update_from);
    let mut run = Run::start(settings, opts, store, creds, stop, ui)?;
    let outcome = steps(&mut run, settings, opts, stop, ui);
    run.finish(outcome)
}

/// resume → stage → commit → ship.
fn steps(
    run: &mut Run<'_, DbStore>,
    settings: &Settings,
    opts: &RunOptions,
    stop: &StopFlag,
    ui: &Ui,
) -> Result<Option<Halt>, RunError> {
    if let Some(halt) = run.resume()? {
        return Ok(Some(halt));
    }
    let first_run = run.first_run()?;
    let initial = opts.initial.unwrap_or(settings.sync.initial);
    let policy = Apply::for_run(settings, first_run, initial, false).policy;
    let t0 = Instant::now();
    let mut engine = SqlDiff::stage(
        run.store(),
        settings,
        policy,
        Target::Run,
        opts.retry_rejects,
    )?;
    let staged = t0.elapsed();
    if stop.is_raised() {
        return Err(RunError::Interrupted);
    }
    let spin = ui.step("mapping the delta and committing");
    let committed = run.commit(&mut engine);
    spin.done();
    committed?;
    drop(engine);
    let committed = t0.elapsed();
    let halt = run.ship();
    tracing::debug!(
        stage_ms = staged.as_millis() as u64,
        fetch_map_commit_ms = (committed - staged).as_millis() as u64,
        ship_ms = (t0.elapsed() - committed).as_millis() as u64,
        bytes_received = run.store().db.received(),
        "database mode steps"
    );
    halt
}
