//! Where a sync's state is kept: the seam between the pipeline (and shipping) and a store.
//!
//! The pipeline and the send loop speak only these traits. The local SQLite store (`store`)
//! implements them today; the database mode of WAREHOUSE.md, which keeps the baseline, the
//! outbox, the rejects and the run records inside PostgreSQL, implements the same traits, so
//! shipping, packing, mapping and the run's bookkeeping are not written twice.
//!
//! Contract for an implementation (each is a guarantee of DESIGN.md):
//! - [`StateStore::begin_run`] opens the run's one commit: nothing written through the
//!   [`Commit`] is visible before [`Commit::commit`] returns, and dropping it undoes it all.
//! - [`Outbox`]: requests come back in send order; each answer is recorded in its own small
//!   transaction, whole or not at all; no transaction is held across a network call.
//! - [`RunLog`]: run records are written outside the commit too (a run that fails before its
//!   commit still leaves a record).

use crate::core::diff::BaseRow;
use crate::core::encode::RowHash;
use crate::core::history::Change;
use crate::core::mapping::{Operation, Reject};
use crate::core::pack::{Endpoint, RowRef};
use crate::core::retry::PartialError;
use crate::core::run::{Counts, RunSummary};
use std::path::PathBuf;

/// What can go wrong where the state is kept. Every variant names the store; the database
/// mode adds its own.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state store {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("state store {path} was written for another mapping ({stored}); this config gives ({current}). Row keys or hashes would all differ. Use a new [state] path, or delete the store to start over")]
    Identity {
        path: PathBuf,
        stored: String,
        current: String,
    },
    /// The database mode: an error of the database, in its words.
    #[error("{what}: {message}")]
    Database { what: String, message: String },
    /// The database mode's tables are missing, or of another version: `batchsync setup`.
    #[error("{what}: {message}")]
    NotSetUp { what: String, message: String },
    #[error("{what} was written for another mapping ({stored}); this config gives ({current}). Row keys or hashes would all differ. Use a new [state] name, or remove the sync's tables (README) to start over")]
    DatabaseIdentity {
        what: String,
        stored: String,
        current: String,
    },
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The run's operations wait in a temporary file beside the store to be packed in
    /// custom-id order (`store::staged`): it could not be written or read back.
    #[error("cannot stage the run's operations in a temporary file in {dir}")]
    Staging {
        dir: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What the outbox holds that no answer has settled yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pending {
    pub requests: u64,
    pub events: u64,
}

/// One request waiting for an answer, as the send loop needs it; its manifest is read apart
/// ([`Outbox::manifest`]).
#[derive(Debug, Clone)]
pub struct PendingRequest {
    pub id: String,
    pub run_id: i64,
    pub endpoint: Endpoint,
    pub operations: usize,
    pub events: u64,
    pub body: Vec<u8>,
    pub attempts: u32,
    /// The mapping and rules its events were built under: rows Batch drops are open rejects
    /// under them.
    pub rules: Option<String>,
}

/// One operation of a request that Batch dropped: its rows, and what to record about them.
pub struct DroppedOp<'a> {
    pub rows: &'a [RowRef],
    pub column: Option<&'a str>,
    pub rule: &'a str,
    pub reason: &'a str,
}

/// The operations of `req` that Batch dropped, each once, in the order it reported them; an
/// index the request does not have is logged and passed over. Both stores record them so.
pub fn dropped_ops<'a>(
    req: &PendingRequest,
    manifest: &'a [Vec<RowRef>],
    dropped: &'a [PartialError],
) -> Vec<DroppedOp<'a>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for d in dropped {
        let Some(rows) = manifest.get(d.bulk_index) else {
            tracing::warn!(request = %req.id, bulk_index = d.bulk_index, "Batch reported an error for an operation the request does not have");
            continue;
        };
        if !seen.insert(d.bulk_index) {
            continue;
        }
        out.push(DroppedOp {
            rows,
            column: d.attribute.as_deref(),
            rule: if d.category.is_empty() {
                "batch"
            } else {
                d.category.as_str()
            },
            reason: if d.reason.is_empty() {
                "dropped by Batch without a reason"
            } else {
                d.reason.as_str()
            },
        });
    }
    out
}

/// The outbox of committed requests, as the send loop drives it.
pub trait Outbox {
    fn pending(&self) -> Result<Pending>;
    /// The first pending request after `after` in send order (without its manifest).
    fn next_pending(&self, after: Option<&str>) -> Result<Option<PendingRequest>>;
    /// A request's manifest: the rows of each operation. Read only when an answer needs it
    /// (Batch dropped an operation, or refused the request), so that shipping reads back
    /// the bodies only.
    fn manifest(&self, id: &str) -> Result<Vec<Vec<RowRef>>>;
    /// Batch took the request, but for the `dropped` operations, whose rows become rejects
    /// (their baseline entries put back). Returns (events delivered, rows rejected).
    fn record_delivered(
        &self,
        req: &PendingRequest,
        dropped: &[PartialError],
        run_id: i64,
    ) -> Result<(u64, u64)>;
    /// Batch will never take this one-operation request: its rows become rejects.
    fn record_refused(&self, req: &PendingRequest, message: &str, run_id: i64) -> Result<u64>;
    /// The request is replaced by its two halves, in place in the send order.
    fn record_split(
        &self,
        req: &PendingRequest,
        halves: [(String, Vec<Vec<RowRef>>); 2],
        message: &str,
    ) -> Result<[String; 2]>;
    /// A transient failure, counted against the request's retry budget.
    fn record_attempt(&self, id: &str, error: &str) -> Result<()>;
}

/// The run records.
pub trait RunLog {
    /// Runs a process that died left open: marked interrupted (their requests stay pending).
    fn close_interrupted_runs(&self) -> Result<usize>;
    /// A run with pending requests of earlier runs to ship before it reads anything.
    fn record_resume_run(&self, started_at: &str) -> Result<i64>;
    /// A run that stopped before it had a record of its own: only this record is written.
    fn record_failed_run(&self, summary: &RunSummary) -> Result<i64>;
    /// Closes a run record with its summary, kept as it is.
    fn finish_run(&self, run_id: i64, summary: &RunSummary) -> Result<()>;
}

/// Where the effects of one run's deltas go: the run's commit, or a dry run's counter.
/// Baseline writes arrive in key order; every key the baseline held gets exactly one of
/// `put`, `tombstone` or `keep`.
pub trait Sink {
    type Error;
    /// The key is in the segment with this hash (and this profile hash, when the sync maps
    /// profile attributes).
    fn put(
        &mut self,
        key: &[u8],
        hash: RowHash,
        profile: Option<RowHash>,
    ) -> std::result::Result<(), Self::Error>;
    /// The key left the segment; `hash` is the one the baseline held.
    fn tombstone(&mut self, key: &[u8], hash: RowHash) -> std::result::Result<(), Self::Error>;
    /// The baseline's entry for this key stays as it was.
    fn keep(&mut self, base: &BaseRow) -> std::result::Result<(), Self::Error>;
    /// Whether every entry kept as it was must be told to [`Sink::keep`] (a commit writing a
    /// whole new base), or a count of the unchanged ones will do ([`Sink::kept`]).
    fn keeps_each(&self) -> bool {
        true
    }
    /// This many present entries stayed as they were without being told one by one.
    fn kept(&mut self, _present: u64) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
    /// One row's operation: its event, its profile attributes, or both.
    fn send(&mut self, op: &Operation, row: RowRef) -> std::result::Result<(), Self::Error>;
    fn reject(&mut self, at: Rejected<'_>, reject: &Reject)
        -> std::result::Result<(), Self::Error>;
    /// The row with this key is its open reject's row still (same key and hash, same mapping
    /// and rules): the reject stays open, nothing new is recorded. `rehash`: the reject's hash
    /// under a new recipe, to rewrite it with (an upgrading run).
    fn still_rejected(
        &mut self,
        key: &[u8],
        rehash: Option<RowHash>,
    ) -> std::result::Result<(), Self::Error>;
    /// One line of the row's history (`explain`): a delta row that changed something, told
    /// after the row's `event` or `reject`. Not told for a run that only records the segment,
    /// nor for rows still rejected (the store writes one line when their streak ends).
    fn history(&mut self, line: Line<'_>) -> std::result::Result<(), Self::Error>;
}

/// One line of a row's history, as [`Sink::history`] is told it.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub key: &'a [u8],
    pub change: Change,
    /// The row's hash (a removal's: the one the baseline held); none for rows sharing a key.
    pub hash: Option<RowHash>,
    /// Its operation went to [`Sink::send`] just before: the store completes the line with the
    /// request that carries it, when it packs the event. Otherwise the line is complete (a
    /// `Rejected` one names the reject the sink was told just before).
    pub sent: bool,
}

/// A rejected row as a [`Sink`] records it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rejected<'a> {
    /// The key as people read it; none when it could not be read.
    pub key: Option<&'a str>,
    /// Its key bytes and hash, when the row is one row with a key: then the reject is *open*
    /// until the row changes or leaves, and a later run finds it still rejected.
    pub row: Option<(&'a [u8], RowHash)>,
    /// The file line or query row it came from (the database mode: the delta row's number).
    pub line: Option<u64>,
}

/// A reject as `rejects` shows it: an open one (`first_run_id` set, `run_id` the latest run
/// that found the row rejected), or one of the history (`rejects --all`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejectRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_run_id: Option<i64>,
    pub run_id: i64,
    /// The key as people read it; in JSON, an object of the key columns.
    #[serde(serialize_with = "key_object")]
    pub key: Option<String>,
    pub line: Option<u64>,
    pub column: Option<String>,
    pub rule: String,
    pub reason: String,
    pub source: String,
}

/// A row key in `--json` output: `{"order_id": "A-17"}`, or `{"hash": "…"}` for a sync
/// without a primary key (whose key is the row hash, shown in hex).
fn key_object<S: serde::Serializer>(
    key: &Option<String>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::Serialize;
    key.as_deref().map(key_json).serialize(s)
}

/// A row key as people read it (`{"order_id":17}`, or the row hash in hex without a primary
/// key) as the JSON object every `--json` output gives.
pub fn key_json(key: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(key) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => serde_json::json!({ "hash": key }),
    }
}

/// One line of a row's history as `explain` shows it (`--json`: these fields, in run order).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryLine {
    pub run_id: i64,
    /// When: the run's start, or the time an answer from Batch was recorded.
    pub at: Option<String>,
    #[serde(serialize_with = "change_str")]
    pub kind: Change,
    /// The row hash in hex (a removal's: the one the baseline held).
    pub hash: Option<String>,
    /// The event built from the row, as it was sent.
    pub event: Option<serde_json::Value>,
    /// The profile attributes its operation set (or unset), as they were sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Value>,
    /// The request that carried it (or whose answer this line records).
    pub request: Option<String>,
    pub answer: Option<crate::core::history::Answer>,
    /// Why it was rejected or dropped.
    pub reason: Option<String>,
    /// When Batch's answer about the request was recorded.
    pub answered_at: Option<String>,
}

fn change_str<S: serde::Serializer>(c: &Change, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(c.as_str())
}

/// A row's history, as one store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// The key as people read it.
    pub key: String,
    pub lines: Vec<HistoryLine>,
    /// The baseline's entry now: hash in hex and presence (a tombstone is not present).
    pub baseline: Option<(String, bool)>,
}

impl Explained {
    /// Whether the store knows the row at all.
    pub fn known(&self) -> bool {
        !self.lines.is_empty() || self.baseline.is_some()
    }
}

/// The open rejects under one mapping and rules: key → the hash it was rejected with.
pub type OpenRejects = std::collections::HashMap<Vec<u8>, RowHash>;

/// What a commit wrote to the outbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct Committed {
    pub requests: u64,
    pub events: u64,
}

/// What a commit records besides the delta, and how it routes its requests.
#[derive(Debug, Clone, Copy)]
pub struct CommitMeta<'a> {
    /// The mapping's identity (`ColumnPlan::identity`).
    pub identity: &'a str,
    /// The profile attributes' identity (`ColumnPlan::profile_identity`; empty without).
    pub profile: &'a str,
    /// The run is its sync's first with these profile attributes: its profile updates may go
    /// to mass-update ([`Endpoint::for_run`]).
    pub backfill: bool,
    pub mass_update_from: u64,
    pub keep_runs: u64,
}

/// One run's commit, open until [`Commit::commit`]; dropped, it is undone.
pub trait Commit: Sink<Error = StoreError> {
    fn run_id(&self) -> i64;
    /// Packs the operations into requests, writes the run's counts, prunes what is older than
    /// the newest `keep_runs` runs (never an open reject's) and commits, all at once.
    fn commit(self, counts: &Counts, meta: &CommitMeta<'_>) -> Result<Committed>;
}

/// A sync's whole state: baseline, outbox, rejects and runs.
pub trait StateStore: Outbox + RunLog {
    type Commit<'a>: Commit
    where
        Self: 'a;
    /// Refuses a state written for another key or column set.
    fn check_identity(&self, identity: &str) -> Result<()>;
    /// The mapping's identity the last commit recorded (none before any).
    fn stored_identity(&self) -> Result<Option<String>>;
    /// The profile attributes' identity the last commit recorded (none before any, or
    /// before profile attributes existed).
    fn profile_identity(&self) -> Result<Option<String>>;
    /// Whether a run has committed a baseline (the first run's `initial` no longer applies).
    fn has_baseline(&self) -> Result<bool>;
    /// The open rejects recorded under these rules (`Settings::rules_identity`). The database
    /// mode matches them in SQL, and gives none here.
    fn open_rejects(&self, rules: &str) -> Result<OpenRejects>;
    /// Opens the run's one commit. `existing` is the record of a run that resumed first;
    /// `rules` the mapping and rules its rejects and requests are recorded under.
    fn begin_run(
        &self,
        started_at: &str,
        existing: Option<i64>,
        rules: &str,
    ) -> Result<Self::Commit<'_>>;
}
