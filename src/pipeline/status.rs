//! What the state store says about a sync, read from either store: `status` (the command and
//! `serve`'s `/status`, one reading for both) and the figures `serve` keeps as gauges.
//!
//! Invariants:
//! - Read only: opens the local store read-only (creating nothing) or connects to the
//!   database mode's tables; takes no lock, writes nothing, so a run in progress goes on.
//! - A run left `shipping` or `committed` is shown `interrupted` when no process holds the
//!   sync's lock, with what is pending now as its `events_pending`: as the next run will close
//!   it. A run in progress (the lock held, by this process or another) is shown as it is.
//! - A local store that does not exist yet reads as no runs, nothing pending: the JSON of
//!   [`Status::default`].

use super::RunError;
use crate::config::Settings;
use crate::core::run::{RunStatus, RunSummary};
use crate::state::{Outbox, Pending};
use crate::store::Store;
use crate::warehouse::store::DbStore;

/// `status --json`'s object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// The last runs, newest first.
    pub runs: Vec<RunSummary>,
    pub pending: Pending,
    /// (run id, rejects it recorded), newest run first.
    pub rejects: Vec<(i64, u64)>,
    /// Present rows of the baseline.
    pub baseline_rows: u64,
}

impl Status {
    pub fn to_json(&self) -> serde_json::Value {
        let rejects: Vec<_> = self
            .rejects
            .iter()
            .map(|(r, n)| serde_json::json!({ "run_id": r, "rejects": n }))
            .collect();
        serde_json::json!({
            "runs": self.runs,
            "pending": self.pending,
            "rejects": rejects,
            "baseline_rows": self.baseline_rows,
        })
    }
}

/// Either store, opened for reading.
pub enum Reader {
    Local(Store),
    Database(DbStore),
}

impl Reader {
    /// The sync's store; `None` when the local store does not exist yet.
    pub fn open(settings: &Settings) -> Result<Option<Reader>, RunError> {
        if settings.warehouse.is_some() {
            return Ok(Some(Reader::Database(super::database::open(settings)?)));
        }
        Ok(Store::open_read(&settings.state_path)?.map(Reader::Local))
    }

    /// Whether a run holds the sync's lock now. A lock file that cannot be probed counts as
    /// held: a live run is then shown as it is rather than as interrupted.
    fn live(&self, settings: &Settings) -> Result<bool, RunError> {
        match self {
            Reader::Local(_) => Ok(crate::lock::is_held(&settings.state_path).unwrap_or(true)),
            Reader::Database(s) => Ok(s.lock_held()?),
        }
    }

    /// The last `limit` runs, newest first, as the store kept them.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunSummary>, RunError> {
        Ok(match self {
            Reader::Local(s) => s.runs(limit)?,
            Reader::Database(s) => s.runs(limit)?,
        })
    }

    pub fn pending(&self) -> Result<Pending, RunError> {
        Ok(match self {
            Reader::Local(s) => s.pending()?,
            Reader::Database(s) => s.pending()?,
        })
    }

    /// How many rows are rejected now: the lines `batchsync rejects` shows. Reads the list:
    /// cheap next to a run, which is when `serve` asks.
    pub fn rejects_open(&self) -> Result<u64, RunError> {
        let all = i64::MAX as usize;
        Ok(match self {
            Reader::Local(s) => s.open_reject_list(all)?.len(),
            Reader::Database(s) => s.open_reject_list(all)?.len(),
        } as u64)
    }

    fn reject_counts(&self) -> Result<Vec<(i64, u64)>, RunError> {
        Ok(match self {
            Reader::Local(s) => s.reject_counts()?,
            Reader::Database(s) => s.reject_counts()?,
        })
    }

    /// Present rows of the baseline: a full read of it in the local mode.
    fn baseline_present(&self) -> Result<u64, RunError> {
        Ok(match self {
            Reader::Local(s) => s.baseline_present()?,
            Reader::Database(s) => s.baseline_present()?,
        })
    }

    /// What `status` shows, with its last `runs` runs.
    pub fn status(&self, settings: &Settings, runs: usize) -> Result<Status, RunError> {
        let mut status = Status {
            runs: self.runs(runs)?,
            pending: self.pending()?,
            rejects: self.reject_counts()?,
            baseline_rows: self.baseline_present()?,
        };
        if !self.live(settings)? {
            for r in status.runs.iter_mut().filter(|r| r.status.is_open()) {
                r.status = RunStatus::Interrupted;
                r.counts.events_pending = status.pending.events;
            }
        }
        Ok(status)
    }
}

/// What `status` shows; `None` when the local store does not exist yet.
pub fn status(settings: &Settings, runs: usize) -> Result<Option<Status>, RunError> {
    match Reader::open(settings)? {
        Some(reader) => reader.status(settings, runs).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_store_reads_as_the_empty_status_object() {
        assert_eq!(
            Status::default().to_json(),
            serde_json::json!({
                "runs": [],
                "pending": { "requests": 0, "events": 0 },
                "rejects": [],
                "baseline_rows": 0
            })
        );
    }
}
