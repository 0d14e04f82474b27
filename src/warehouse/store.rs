//! The database mode's [`StateStore`]: run records, the outbox and the run's commit in the
//! sync's tables (see `setup` for their shape).
//!
//! Invariants (the local store's, in PostgreSQL):
//! - The run's commit ([`DbCommit`]) lives in the transaction the diff opened
//!   ([`super::diff::SqlDiff`]): the delta, the outbox requests, the rejects, the baseline and
//!   the run record are written in it, and dropped it rolls back.
//! - The baseline takes the delta in one statement at the commit: every added, re-entering or
//!   changed row, and every removal (unless some rows' keys could not be read), except the
//!   rows this run rejected (by key). That is what the shared `Apply` asks through `put`, `tombstone`
//!   and `keep`, which therefore write nothing here; the commit checks the two agree.
//! - Each answer is recorded in its own small transaction; no transaction is held across a
//!   network call. An operation Batch drops turns its rows into rejects and puts their
//!   baseline entries back as they were, unless a later run wrote them since.
//! - Request ids are the local store's (`r{run:08}-{seq:06}`), so their order is the send order.
//! - History lines (`explain`) are written in the commit's transaction, in batches of
//!   [`LINE_BATCH`] rows per statement (`unnest`): a row's line when `Apply` tells it, an
//!   event's when its request is written (with its place in the body, which keeps the event:
//!   answered requests keep their bodies until pruned); the rows the stage settled in SQL (changes and
//!   removals no policy sends) get theirs from `<name>_delta` in one statement at the commit.
//!   What is older than the newest `keep_runs` runs is pruned there too (the local store's
//!   rules, `store::commit::prune`).

use super::Db;
use crate::core::diff::BaseRow;
use crate::core::encode::{unhex, RowHash};
use crate::core::history::Change;
use crate::core::mapping::{Operation, Reject};
use crate::core::pack::{Endpoint, PackEvent, Packed, Packer, RowRef};
use crate::core::retry::PartialError;
use crate::core::run::{Counts, RunStatus, RunSummary};
use crate::state::{
    dropped_ops, Commit, CommitMeta, Committed, Line, OpenRejects, Outbox, Pending, PendingRequest,
    Rejected, Result, RunLog, Sink, StateStore, StoreError,
};
use crate::store::commit::request_id;
use crate::store::now_rfc3339;
use std::cell::RefCell;
use std::rc::Rc;

/// What the diff tells the commit about the rows it staged.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    /// The delta table the stage wrote (the sync's own, or `plan`'s temporary one).
    pub delta: String,
    /// Rows fetched to become events: the packer's endpoint is chosen by it.
    pub candidates: u64,
    /// Some rows' keys could not be read: removals are not recorded this run.
    pub defer_removals: bool,
    /// The run only records the segment (the first under `initial = "baseline"`): no history.
    pub record_only: bool,
}

pub struct DbStore {
    pub db: Rc<Db>,
    pub staged: Rc<RefCell<Option<Staged>>>,
    mass_update_from: u64,
    /// The bodies of the requests this process committed, so that shipping them does not read
    /// them back from the database (most of the bytes a run would otherwise receive). A cache:
    /// a request not in it (an earlier process's, a split half) is read from the outbox.
    spool: RefCell<Spool>,
}

/// Request bodies in a temporary file (deleted when closed), by request id; an unusable
/// file only means the bodies are read from the database.
#[derive(Default)]
pub struct Spool {
    file: Option<std::fs::File>,
    at: std::collections::HashMap<String, (u64, usize)>,
    len: u64,
}

impl Spool {
    fn put(&mut self, id: &str, body: &[u8]) {
        use std::os::unix::fs::FileExt;
        if self.file.is_none() {
            self.file = tempfile::tempfile().ok();
        }
        let Some(f) = &self.file else { return };
        if f.write_all_at(body, self.len).is_ok() {
            self.at.insert(id.to_string(), (self.len, body.len()));
            self.len += body.len() as u64;
        }
    }

    fn get(&self, id: &str) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let (offset, len) = *self.at.get(id)?;
        let mut body = vec![0; len];
        self.file.as_ref()?.read_exact_at(&mut body, offset).ok()?;
        Some(body)
    }

    /// Takes another spool's bodies (a commit's, once it has committed).
    fn extend(&mut self, other: Spool) {
        for (id, (offset, len)) in &other.at {
            if let Some(body) = other.get_at(*offset, *len) {
                self.put(id, &body);
            }
        }
    }

    fn get_at(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut body = vec![0; len];
        self.file.as_ref()?.read_exact_at(&mut body, offset).ok()?;
        Some(body)
    }
}

impl DbStore {
    pub fn new(db: Db, mass_update_from: u64) -> DbStore {
        DbStore {
            db: Rc::new(db),
            staged: Rc::default(),
            mass_update_from,
            spool: RefCell::default(),
        }
    }

    fn meta(&self, name: &str) -> Result<Option<String>> {
        super::read_meta(&self.db, &self.db.tables.meta(), name)
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Database {
            what: self.db.tables.describe(),
            message,
        }
    }

    /// The last `limit` runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunSummary>> {
        self.db.settle()?;
        let rows = self.db.query(
            &format!(
                "SELECT run_id, status, started_at, summary::text FROM {} ORDER BY run_id DESC LIMIT $1",
                self.db.tables.runs()
            ),
            &[&(limit as i64)],
        )?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                let status: String = r.get(1);
                let text: String = r.get(3);
                let mut s: RunSummary =
                    summary_of(&text).unwrap_or_else(|| RunSummary::new(r.get::<_, String>(2)));
                s.run_id = Some(id);
                s.status = RunStatus::parse(&status)
                    .ok_or_else(|| self.corrupt(format!("run {id}: unknown status {status:?}")))?;
                Ok(s)
            })
            .collect()
    }

    /// The rejects of one run, or of all, newest first.
    pub fn rejects(
        &self,
        run: Option<i64>,
        limit: usize,
    ) -> Result<Vec<crate::store::RejectRecord>> {
        self.db.settle()?;
        let rows = self.db.query(
            &format!(
                "SELECT run_id, k, line, column_name, rule, reason, source FROM {}
                 WHERE $1::bigint IS NULL OR run_id = $1 ORDER BY id DESC LIMIT $2",
                self.db.tables.rejects()
            ),
            &[&run, &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| crate::store::RejectRecord {
                first_run_id: None,
                run_id: r.get(0),
                key: r.get(1),
                line: r.get::<_, Option<i64>>(2).map(|l| l as u64),
                column: r.get(3),
                rule: r.get(4),
                reason: r.get(5),
                source: r.get(6),
            })
            .collect())
    }

    /// The rows rejected now, one per key (see the local store's).
    pub fn open_reject_list(&self, limit: usize) -> Result<Vec<crate::store::RejectRecord>> {
        self.db.settle()?;
        let t = &self.db.tables;
        let rows = self.db.query(
            &format!(
                "SELECT first_run, last_run, k, line, column_name, rule, reason, source FROM (
                   SELECT o.first_run, o.last_run, r.k, r.line, r.column_name, r.rule, r.reason, r.source, r.id
                   FROM {open} o JOIN {rejects} r ON r.id = o.reject_id
                   UNION ALL
                   SELECT r.run_id, r.run_id, r.k, r.line, r.column_name, r.rule, r.reason, r.source, r.id
                   FROM {rejects} r
                   WHERE r.run_id = (SELECT max(run_id) FROM {runs} WHERE committed) AND r.source = 'local'
                     AND NOT EXISTS (SELECT 1 FROM {open} o WHERE o.reject_id = r.id)
                 ) AS x ORDER BY first_run, id LIMIT $1",
                open = t.open_rejects(),
                rejects = t.rejects(),
                runs = t.runs()
            ),
            &[&(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| crate::store::RejectRecord {
                first_run_id: Some(r.get(0)),
                run_id: r.get(1),
                key: r.get(2),
                line: r.get::<_, Option<i64>>(3).map(|l| l as u64),
                column: r.get(4),
                rule: r.get(5),
                reason: r.get(6),
                source: r.get(7),
            })
            .collect())
    }

    /// Rejects per run, newest run first.
    pub fn reject_counts(&self) -> Result<Vec<(i64, u64)>> {
        self.db.settle()?;
        Ok(self
            .db
            .query(
                &format!(
                    "SELECT run_id, count(*) FROM {} GROUP BY run_id ORDER BY run_id DESC LIMIT 20",
                    self.db.tables.rejects()
                ),
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// Whether a run holds the sync's advisory lock now (a run left open by a process that
    /// died is interrupted, not shipping).
    pub fn lock_held(&self) -> Result<bool> {
        Ok(self
            .db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND classid = $1::int4::oid AND objid = hashtext($2)::oid AND objsubid = 2)",
                &[&super::LOCK_CLASS, &super::lock_key(&self.db.tables)],
            )?
            .get(0))
    }

    /// Present rows of the baseline.
    pub fn baseline_present(&self) -> Result<u64> {
        self.db.settle()?;
        let n: i64 = self
            .db
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE present",
                    self.db.tables.baseline()
                ),
                &[],
            )?
            .get(0);
        Ok(n as u64)
    }

    /// The history of the row with this key text (see the local store's `explain`).
    pub fn explain(&self, k: &str) -> Result<crate::state::Explained> {
        use crate::core::history::answer;
        use crate::state::HistoryLine;
        self.db.settle()?;
        let t = &self.db.tables;
        let rows = self.db.query(
            &format!(
                "SELECT h.run_id, COALESCE(h.at, r.started_at), h.kind, h.hash, h.op, h.ev, h.request_id,
                        j.reason, q.state, q.answered_at,
                        (SELECT array_agg(p.state) FROM {outbox} p WHERE p.id LIKE h.request_id || '.%'),
                        (SELECT b.reason FROM {rejects} b WHERE b.source = 'batch' AND b.k = h.k
                           AND (b.request_id = h.request_id OR b.request_id LIKE h.request_id || '.%')
                         ORDER BY b.id LIMIT 1)
                 FROM {h} h
                 LEFT JOIN {runs} r ON r.run_id = h.run_id
                 LEFT JOIN {rejects} j ON j.id = h.reject_id
                 LEFT JOIN {outbox} q ON q.id = h.request_id
                 WHERE h.k = $1 ORDER BY h.run_id, h.id",
                h = t.history(),
                runs = t.runs(),
                rejects = t.rejects(),
                outbox = t.outbox()
            ),
            &[&k],
        )?;
        let mut lines = Vec::with_capacity(rows.len() + 1);
        let mut bodies = crate::store::history::Bodies::default();
        for r in &rows {
            let run_id: i64 = r.get(0);
            let kind: String = r.get(2);
            let kind = Change::parse(&kind)
                .ok_or_else(|| self.corrupt(format!("history of run {run_id}: kind {kind:?}")))?;
            let (op, ev): (Option<i32>, Option<i32>) = (r.get(4), r.get(5));
            let request: Option<String> = r.get(6);
            let reason: Option<String> = r.get(7);
            let state: Option<String> = r.get(8);
            let parts: Vec<String> = r.get::<_, Option<Vec<String>>>(10).unwrap_or_default();
            let dropped: Option<String> = r.get(11);
            let (event, attributes) = match (&request, op) {
                (Some(id), Some(op)) => bodies.part(id, op.into(), ev.map(i64::from), |id| {
                    Ok::<_, StoreError>(
                        self.db
                            .query_opt(
                                &format!("SELECT body FROM {} WHERE id = $1", t.outbox()),
                                &[&id],
                            )?
                            .map(|r| r.get::<_, Vec<u8>>(0)),
                    )
                })?,
                _ => (None, None),
            };
            lines.push(HistoryLine {
                run_id,
                at: r.get(1),
                kind,
                hash: r
                    .get::<_, Option<Vec<u8>>>(3)
                    .map(|h| crate::core::encode::hex(&h)),
                event,
                attributes,
                answer: request
                    .as_ref()
                    .and_then(|_| answer(state.as_deref(), &parts, dropped.is_some())),
                reason: reason.or(dropped),
                request,
                answered_at: r.get(9),
            });
        }
        // While the row's reject is open: the streak of runs that found it still rejected.
        if let Some(r) = self.db.query_opt(
            &format!(
                "SELECT o.last_run, r.started_at, o.hash, j.reason FROM {open} o
                 JOIN {rejects} j ON j.id = o.reject_id
                 LEFT JOIN {runs} r ON r.run_id = o.last_run
                 WHERE o.k = $1 AND o.last_run > j.run_id",
                open = t.open_rejects(),
                rejects = t.rejects(),
                runs = t.runs()
            ),
            &[&k],
        )? {
            lines.push(HistoryLine {
                run_id: r.get(0),
                at: r.get(1),
                kind: Change::StillRejected,
                hash: Some(crate::core::encode::hex(r.get::<_, &[u8]>(2))),
                event: None,
                attributes: None,
                request: None,
                answer: None,
                reason: r.get(3),
                answered_at: None,
            });
        }
        let baseline = self
            .db
            .query_opt(
                &format!("SELECT hash, present FROM {} WHERE k = $1", t.baseline()),
                &[&k],
            )?
            .map(|r| (crate::core::encode::hex(r.get::<_, &[u8]>(0)), r.get(1)));
        Ok(crate::state::Explained {
            key: k.to_string(),
            lines,
            baseline,
        })
    }

    /// Rejects rows of one dropped operation and puts their baseline entries back.
    #[allow(clippy::too_many_arguments)]
    fn reject_rows(
        &self,
        db: &Db,
        req: &PendingRequest,
        rows: &[RowRef],
        run_id: i64,
        column: Option<&str>,
        rule: &str,
        reason: &str,
    ) -> Result<()> {
        let t = &db.tables;
        for row in rows {
            let k = unhex(&row.k).and_then(|k| String::from_utf8(k).ok());
            let reject_id: i64 = db
                .query_one(
                    &format!("INSERT INTO {} (run_id, k, column_name, rule, reason, source, request_id) VALUES ($1, $2, $3, $4, $5, 'batch', $6) RETURNING id", t.rejects()),
                    &[&run_id, &row.key, &column, &rule, &reason, &req.id],
                )?
                .get(0);
            let (Some(k), Some(hash)) = (k, unhex(&row.h)) else {
                continue;
            };
            // Open under the rules its event was built with: unchanged, it is not sent again.
            if let Some(rules) = &req.rules {
                db.execute(
                    &format!(
                        "INSERT INTO {} (k, hash, rules, first_run, last_run, reject_id) VALUES ($1, $2, $3, $4, $4, $5)
                         ON CONFLICT (k) DO UPDATE SET hash = excluded.hash, rules = excluded.rules,
                             last_run = excluded.last_run, reject_id = excluded.reject_id",
                        t.open_rejects()
                    ),
                    &[&k, &hash, rules, &run_id, &reject_id],
                )?;
            }
            // Only where the baseline still holds what the sending run wrote.
            let restored = match &row.prev {
                None => db.execute(
                    &format!("DELETE FROM {} WHERE k = $1 AND hash = $2", t.baseline()),
                    &[&k, &hash],
                )?,
                Some((prev, present)) => {
                    let prev = unhex(prev).unwrap_or_default();
                    db.execute(
                        &format!(
                            "UPDATE {} SET hash = $3, present = $4, run_id = $5 WHERE k = $1 AND hash = $2",
                            t.baseline()
                        ),
                        &[&k, &hash, &prev, present, &run_id],
                    )?
                }
            };
            let change = if restored > 0 {
                Change::Restored
            } else {
                Change::Rejected
            };
            db.execute(
                &format!(
                    "INSERT INTO {} (run_id, k, kind, hash, request_id, reject_id, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    t.history()
                ),
                &[&run_id, &k, &change.as_str(), &hash, &req.id, &reject_id, &now_rfc3339()],
            )?;
        }
        Ok(())
    }
}

/// The shipping run's record counts each answer in the answer's own transaction (see the local
/// store's `count_answer`).
fn count_answer(db: &Db, run_id: i64, delivered: u64, rejected: u64) -> Result<()> {
    db.execute(
        &format!(
            "UPDATE {} SET summary = summary
               || jsonb_build_object('events_sent', coalesce((summary->>'events_sent')::bigint, 0) + $2)
               || jsonb_build_object('rejected', coalesce((summary->>'rejected')::bigint, 0) + $3)
             WHERE run_id = $1",
            db.tables.runs()
        ),
        &[&run_id, &(delivered as i64), &(rejected as i64)],
    )?;
    Ok(())
}

fn summary_of(text: &str) -> Option<RunSummary> {
    #[derive(serde::Deserialize)]
    struct Stored {
        started_at: String,
        finished_at: Option<String>,
        duration_ms: Option<u64>,
        sent_nothing_reason: Option<String>,
        error: Option<String>,
        #[serde(flatten)]
        counts: Counts,
    }
    let s: Stored = serde_json::from_str(text).ok()?;
    let mut out = RunSummary::new(s.started_at);
    out.finished_at = s.finished_at;
    out.duration_ms = s.duration_ms.unwrap_or_default();
    out.sent_nothing_reason = s.sent_nothing_reason;
    out.error = s.error;
    out.counts = s.counts;
    Some(out)
}

fn summary_json(s: &RunSummary) -> serde_json::Value {
    serde_json::to_value(s).expect("a summary serialises")
}

impl RunLog for DbStore {
    fn close_interrupted_runs(&self) -> Result<usize> {
        self.db.settle()?;
        let runs = self.db.tables.runs();
        let outbox = self.db.tables.outbox();
        let n = self.db.execute(
            &format!(
                "UPDATE {runs} SET status = $1, summary = summary || jsonb_build_object('events_pending',
                   (SELECT coalesce(sum(events), 0) FROM {outbox} WHERE state = 'pending'),
                   'requests_pending', (SELECT count(*) FROM {outbox} WHERE state = 'pending'))
                 WHERE status IN ($2, $3)"
            ),
            &[
                &RunStatus::Interrupted.as_str(),
                &RunStatus::Shipping.as_str(),
                &RunStatus::Committed.as_str(),
            ],
        )?;
        Ok(n as usize)
    }

    fn record_resume_run(&self, started_at: &str) -> Result<i64> {
        self.db.settle()?;
        let summary = summary_json(&RunSummary::new(started_at.to_string()));
        Ok(self
            .db
            .query_one(
                &format!("INSERT INTO {} (status, started_at, summary) VALUES ($1, $2, $3) RETURNING run_id", self.db.tables.runs()),
                &[&RunStatus::Shipping.as_str(), &started_at, &summary],
            )?
            .get(0))
    }

    fn record_failed_run(&self, summary: &RunSummary) -> Result<i64> {
        self.db.settle()?;
        Ok(self
            .db
            .query_one(
                &format!("INSERT INTO {} (status, started_at, summary) VALUES ($1, $2, $3) RETURNING run_id", self.db.tables.runs()),
                &[&summary.status.as_str(), &summary.started_at, &summary_json(summary)],
            )?
            .get(0))
    }

    fn finish_run(&self, run_id: i64, summary: &RunSummary) -> Result<()> {
        self.db.settle()?;
        self.db.execute(
            &format!(
                "UPDATE {} SET status = $2, summary = $3 WHERE run_id = $1",
                self.db.tables.runs()
            ),
            &[&run_id, &summary.status.as_str(), &summary_json(summary)],
        )?;
        Ok(())
    }
}

impl Outbox for DbStore {
    fn pending(&self) -> Result<Pending> {
        self.db.settle()?;
        let r = self.db.query_one(
            &format!(
                "SELECT count(*), COALESCE(sum(events), 0)::bigint FROM {} WHERE state = 'pending'",
                self.db.tables.outbox()
            ),
            &[],
        )?;
        Ok(Pending {
            requests: r.get::<_, i64>(0) as u64,
            events: r.get::<_, i64>(1) as u64,
        })
    }

    fn next_pending(&self, after: Option<&str>) -> Result<Option<PendingRequest>> {
        self.db.settle()?;
        let Some(r) = self.db.query_opt(
            &format!(
                "SELECT id, run_id, endpoint, operations, events, attempts, rules FROM {}
                 WHERE state = 'pending' AND id > $1 ORDER BY id LIMIT 1",
                self.db.tables.outbox()
            ),
            &[&after.unwrap_or("")],
        )?
        else {
            return Ok(None);
        };
        let id: String = r.get(0);
        let endpoint: String = r.get(2);
        let endpoint = Endpoint::parse(&endpoint)
            .ok_or_else(|| self.corrupt(format!("request {id}: unknown endpoint {endpoint:?}")))?;
        let spooled = self.spool.borrow().get(&id);
        let body = match spooled {
            Some(body) => body,
            None => self
                .db
                .query_one(
                    &format!("SELECT body FROM {} WHERE id = $1", self.db.tables.outbox()),
                    &[&id],
                )?
                .get::<_, Vec<u8>>(0),
        };
        Ok(Some(PendingRequest {
            run_id: r.get(1),
            endpoint,
            operations: r.get::<_, i32>(3) as usize,
            events: r.get::<_, i64>(4) as u64,
            body,
            attempts: r.get::<_, i32>(5) as u32,
            rules: r.get(6),
            id,
        }))
    }

    fn manifest(&self, id: &str) -> Result<Vec<Vec<RowRef>>> {
        let r = self.db.query_one(
            &format!(
                "SELECT manifest FROM {} WHERE id = $1",
                self.db.tables.outbox()
            ),
            &[&id],
        )?;
        serde_json::from_slice(r.get::<_, &[u8]>(0))
            .map_err(|e| self.corrupt(format!("request {id}: unreadable manifest: {e}")))
    }

    fn record_delivered(
        &self,
        req: &PendingRequest,
        dropped: &[PartialError],
        run_id: i64,
    ) -> Result<(u64, u64)> {
        self.db.tx(|db| {
            let mut rejected = 0u64;
            let manifest = if dropped.is_empty() { Vec::new() } else { self.manifest(&req.id)? };
            for op in dropped_ops(req, &manifest, dropped) {
                self.reject_rows(db, req, op.rows, run_id, op.column, op.rule, op.reason)?;
                rejected += op.rows.len() as u64;
            }
            let delivered = req.events.saturating_sub(rejected);
            count_answer(db, run_id, delivered, rejected)?;
            db.execute(
                &format!(
                    "UPDATE {} SET state = 'delivered', delivered_events = $2, attempts = attempts + 1, answered_at = $3,
                            manifest = '', last_error = NULL WHERE id = $1",
                    db.tables.outbox()
                ),
                &[&req.id, &(delivered as i64), &now_rfc3339()],
            )?;
            Ok((delivered, rejected))
        })
    }

    fn record_refused(&self, req: &PendingRequest, message: &str, run_id: i64) -> Result<u64> {
        self.db.tx(|db| {
            let mut rejected = 0;
            for rows in &self.manifest(&req.id)? {
                self.reject_rows(db, req, rows, run_id, None, "batch_bad_request", message)?;
                rejected += rows.len() as u64;
            }
            count_answer(db, run_id, 0, rejected)?;
            db.execute(
                &format!(
                    "UPDATE {} SET state = 'rejected', attempts = attempts + 1, answered_at = $2, last_error = $3,
                            manifest = '' WHERE id = $1",
                    db.tables.outbox()
                ),
                &[&req.id, &now_rfc3339(), &message],
            )?;
            Ok(rejected)
        })
    }

    fn record_split(
        &self,
        req: &PendingRequest,
        halves: [(String, Vec<Vec<RowRef>>); 2],
        message: &str,
    ) -> Result<[String; 2]> {
        self.db.tx(|db| {
            let ids = [format!("{}.0", req.id), format!("{}.1", req.id)];
            for (id, (body, manifest)) in ids.iter().zip(halves.iter()) {
                let events: usize = manifest.iter().map(Vec::len).sum();
                db.execute(
                    &format!(
                        "INSERT INTO {} (id, run_id, endpoint, operations, events, body, manifest, state, rules)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)",
                        db.tables.outbox()
                    ),
                    &[
                        id,
                        &req.run_id,
                        &req.endpoint.as_str(),
                        &(manifest.len() as i32),
                        &(events as i64),
                        &body.as_bytes(),
                        &serde_json::to_vec(manifest).expect("manifest serialises"),
                        &req.rules,
                    ],
                )?;
            }
            db.execute(
                &format!(
                    "UPDATE {} SET state = 'split', attempts = attempts + 1, answered_at = $2, last_error = $3,
                            manifest = '' WHERE id = $1",
                    db.tables.outbox()
                ),
                &[&req.id, &now_rfc3339(), &message],
            )?;
            Ok(ids)
        })
    }

    fn record_attempt(&self, id: &str, error: &str) -> Result<()> {
        self.db.settle()?;
        self.db.execute(
            &format!(
                "UPDATE {} SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
                self.db.tables.outbox()
            ),
            &[&id, &error],
        )?;
        Ok(())
    }
}

impl StateStore for DbStore {
    type Commit<'a> = DbCommit<'a>;

    fn profile_identity(&self) -> Result<Option<String>> {
        Ok(None)
    }

    fn stored_identity(&self) -> Result<Option<String>> {
        self.meta("identity")
    }

    fn check_identity(&self, identity: &str) -> Result<()> {
        self.db.settle()?;
        match self.meta("identity")? {
            Some(stored) if stored != identity => Err(StoreError::DatabaseIdentity {
                what: format!("{} in {}", self.db.tables.describe(), self.db.what),
                stored,
                current: identity.to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn has_baseline(&self) -> Result<bool> {
        Ok(self.meta("last_commit")?.is_some())
    }

    /// None here: the stage statement matches rows with their open rejects in SQL.
    fn open_rejects(&self, _rules: &str) -> Result<OpenRejects> {
        Ok(OpenRejects::new())
    }

    /// Continues the transaction the diff opened (or opens one): the run record is written in it.
    fn begin_run(
        &self,
        started_at: &str,
        existing: Option<i64>,
        rules: &str,
    ) -> Result<DbCommit<'_>> {
        let db = &self.db;
        if !db.in_tx() {
            db.begin()?;
        }
        let runs = db.tables.runs();
        let run_id: i64 = match existing {
            Some(id) => {
                db.execute(
                    &format!("UPDATE {runs} SET status = $2, committed = true WHERE run_id = $1"),
                    &[&id, &RunStatus::Committing.as_str()],
                )?;
                id
            }
            None => db
                .query_one(
                    &format!("INSERT INTO {runs} (status, started_at, committed) VALUES ($1, $2, true) RETURNING run_id"),
                    &[&RunStatus::Committing.as_str(), &started_at],
                )?
                .get(0),
        };
        let staged = self.staged.borrow().clone().unwrap_or_default();
        let endpoint = Endpoint::for_delta(staged.candidates, self.mass_update_from);
        Ok(DbCommit {
            store: self,
            run_id,
            staged,
            endpoint,
            packer: Some(Packer::new(endpoint)),
            seq: 0,
            spool: Spool::default(),
            written: Committed::default(),
            open: (Vec::new(), Vec::new(), Vec::new()),
            rules: rules.to_string(),
            puts: 0,
            done: false,
            last_reject: None,
            lines: Lines::default(),
        })
    }
}

/// One run's commit in the database: open until [`Commit::commit`], rolled back when dropped.
pub struct DbCommit<'a> {
    store: &'a DbStore,
    /// This commit's request bodies, the store's to ship from once it has committed.
    spool: Spool,
    run_id: i64,
    staged: Staged,
    endpoint: Endpoint,
    packer: Option<Packer>,
    seq: u64,
    written: Committed,
    /// The rows this run rejected, each with a key of its own: key texts, hashes, reject
    /// records. Their baseline entries stay as they were, and their rejects stay open.
    open: (Vec<String>, Vec<Vec<u8>>, Vec<i64>),
    rules: String,
    /// Rows `Apply` put: checked against what the baseline statement writes for fetched rows.
    puts: u64,
    done: bool,
    /// The reject last recorded: a `Rejected` history line names it.
    last_reject: Option<i64>,
    /// History lines not yet written.
    lines: Lines,
}

/// History lines per statement.
pub const LINE_BATCH: usize = 5_000;

/// History lines waiting for their statement, column by column (`unnest`'s arrays).
#[derive(Default)]
struct Lines {
    k: Vec<String>,
    kind: Vec<&'static str>,
    hash: Vec<Option<Vec<u8>>>,
    request: Vec<Option<String>>,
    /// The event's place in the request's body: operation, event.
    at: Vec<Option<(i32, i32)>>,
    reject: Vec<Option<i64>>,
}

impl Lines {
    fn push(
        &mut self,
        k: String,
        change: Change,
        hash: Option<Vec<u8>>,
        request: Option<(String, i32, i32)>,
        reject: Option<i64>,
    ) {
        self.k.push(k);
        self.kind.push(change.as_str());
        self.hash.push(hash);
        self.at.push(request.as_ref().map(|(_, op, ev)| (*op, *ev)));
        self.request.push(request.map(|(id, _, _)| id));
        self.reject.push(reject);
    }

    /// Writes them in one statement.
    fn flush(&mut self, db: &Db, run_id: i64) -> Result<()> {
        if self.k.is_empty() {
            return Ok(());
        }
        let op: Vec<Option<i32>> = self.at.iter().map(|a| a.map(|(op, _)| op)).collect();
        let ev: Vec<Option<i32>> = self.at.iter().map(|a| a.map(|(_, ev)| ev)).collect();
        db.execute(
            &format!(
                "INSERT INTO {} (run_id, k, kind, hash, request_id, op, ev, reject_id)
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[], $6::int[], $7::int[], $8::bigint[])",
                db.tables.history()
            ),
            &[&run_id, &self.k, &self.kind, &self.hash, &self.request, &op, &ev, &self.reject],
        )?;
        *self = Lines::default();
        Ok(())
    }
}

impl DbCommit<'_> {
    fn write(&mut self, r: Packed) -> Result<()> {
        self.seq += 1;
        let db = &self.store.db;
        let manifest = serde_json::to_vec(&r.manifest).expect("manifest serialises");
        let id = request_id(self.run_id, self.seq);
        self.spool.put(&id, r.body.as_bytes());
        for (op, rows) in r.manifest.iter().enumerate() {
            for (ev, row) in rows.iter().enumerate() {
                let k = unhex(&row.k).and_then(|k| String::from_utf8(k).ok());
                let change = Change::of_event(row.prev.as_ref().map(|(_, present)| *present));
                self.lines.push(
                    k.unwrap_or_else(|| row.key.clone()),
                    change,
                    unhex(&row.h),
                    Some((id.clone(), op as i32, ev as i32)),
                    None,
                );
            }
        }
        db.execute(
            &format!(
                "INSERT INTO {} (id, run_id, endpoint, operations, events, body, manifest, state, rules)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)",
                db.tables.outbox()
            ),
            &[
                &id,
                &self.run_id,
                &self.endpoint.as_str(),
                &(r.operations as i32),
                &(r.events as i64),
                &r.body.as_bytes(),
                &manifest,
                &self.rules,
            ],
        )?;
        self.written.requests += 1;
        self.written.events += r.events as u64;
        if self.lines.k.len() >= LINE_BATCH {
            self.lines.flush(db, self.run_id)?;
        }
        if self.seq == 2 {
            crate::crash::point("mid_commit");
        }
        Ok(())
    }
}

impl Drop for DbCommit<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.store.db.settle() {
                tracing::warn!(error = %e, "could not roll back the run's transaction; the server will when the connection ends");
            }
        }
    }
}

impl Sink for DbCommit<'_> {
    type Error = StoreError;

    /// Written by the commit's baseline statement (see the module doc).
    fn put(&mut self, _: &[u8], _: RowHash, _: Option<RowHash>) -> Result<()> {
        self.puts += 1;
        Ok(())
    }
    fn tombstone(&mut self, _: &[u8], _: RowHash) -> Result<()> {
        Ok(())
    }
    fn keep(&mut self, _: &BaseRow) -> Result<()> {
        Ok(())
    }

    /// The database mode maps no profile attributes (the config refuses them): operations
    /// carry events only.
    fn send(&mut self, op: &Operation, row: RowRef) -> Result<()> {
        let done = self
            .packer
            .as_mut()
            .expect("a packer until the commit")
            .push(PackEvent {
                custom_id: op.custom_id.clone(),
                event_json: op.event.as_ref().map(|e| e.to_string()),
                attributes_json: op.attributes.as_ref().map(|a| a.to_string()),
                row,
            });
        for r in done {
            self.write(r)?;
        }
        Ok(())
    }

    /// The database mode's rows have no line of their own: `at.line` is not kept.
    fn reject(&mut self, at: Rejected<'_>, r: &Reject) -> Result<()> {
        let db = &self.store.db;
        let id: i64 = db
            .query_one(
                &format!(
                    "INSERT INTO {} (run_id, k, column_name, rule, reason, source) VALUES ($1, $2, $3, $4, $5, 'local') RETURNING id",
                    db.tables.rejects()
                ),
                &[&self.run_id, &at.key, &r.column, &r.rule, &r.reason],
            )?
            .get(0);
        self.last_reject = Some(id);
        if let Some((k, hash)) = at.row {
            self.open.0.push(String::from_utf8_lossy(k).into_owned());
            self.open.1.push(hash.0.to_vec());
            self.open.2.push(id);
        }
        Ok(())
    }

    /// Never asked here: the stage statement finds the rows still rejected, and the commit
    /// keeps their open rejects from the delta table.
    fn still_rejected(&mut self, _: &[u8], _: Option<RowHash>) -> Result<()> {
        Ok(())
    }

    /// A line with an event waits for its request (see the module doc).
    fn history(&mut self, line: Line<'_>) -> Result<()> {
        if line.sent {
            return Ok(());
        }
        let reject = match line.change {
            Change::Rejected => self.last_reject.take(),
            _ => None,
        };
        self.lines.push(
            String::from_utf8_lossy(line.key).into_owned(),
            line.change,
            line.hash.map(|h| h.0.to_vec()),
            None,
            reject,
        );
        if self.lines.k.len() >= LINE_BATCH {
            self.lines.flush(&self.store.db, self.run_id)?;
        }
        Ok(())
    }
}

impl Commit for DbCommit<'_> {
    fn run_id(&self) -> i64 {
        self.run_id
    }

    fn commit(mut self, counts: &Counts, meta: &CommitMeta<'_>) -> Result<Committed> {
        let (identity, keep_runs) = (meta.identity, meta.keep_runs);
        for r in self
            .packer
            .take()
            .expect("a packer until the commit")
            .finish()
        {
            self.write(r)?;
        }
        let db = self.store.db.clone();
        self.lines.flush(&db, self.run_id)?;
        let t = &db.tables;
        let delta = &self.staged.delta;
        let mut kinds = vec!["added", "reentered", "changed"];
        if !self.staged.defer_removals {
            kinds.push("removed");
        }
        let kinds: Vec<String> = kinds.into_iter().map(String::from).collect();
        if !self.staged.record_only {
            // The lines of the rows settled in SQL: every delta row the baseline takes that
            // has no line of this run yet (rows fetched have theirs, rejected ones included).
            db.execute(
                &format!(
                    "INSERT INTO {h} (run_id, k, kind, hash)
                     SELECT $1, d.k, d.kind, CASE WHEN d.kind = 'removed' THEN d.old_hash ELSE d.hash END
                     FROM {delta} d WHERE d.kind = ANY($2)
                       AND NOT EXISTS (SELECT 1 FROM {h} x WHERE x.k = d.k AND x.run_id = $1)",
                    h = t.history()
                ),
                &[&self.run_id, &kinds],
            )?;
        }
        db.execute(
            &format!(
                "INSERT INTO {b} (k, hash, present, run_id)
                 SELECT k, CASE WHEN kind = 'removed' THEN old_hash ELSE hash END, kind <> 'removed', $1
                 FROM {delta} WHERE kind = ANY($2) AND NOT (k = ANY($3))
                 ON CONFLICT (k) DO UPDATE SET hash = excluded.hash, present = excluded.present, run_id = excluded.run_id",
                b = t.baseline()
            ),
            &[&self.run_id, &kinds, &self.open.0],
        )?;
        // Open rejects: the rows still rejected keep theirs, the rows rejected now open (or
        // renew) one; every other closes (the row changed, was fixed, or left).
        let open = t.open_rejects();
        // A streak of runs that found a row still rejected ends when its open reject closes
        // or renews: one line, at the last of those runs.
        db.execute(
            &format!(
                "INSERT INTO {h} (run_id, k, kind, hash, reject_id)
                 SELECT o.last_run, o.k, 'still_rejected', o.hash, o.reject_id
                 FROM {open} o JOIN {rejects} r ON r.id = o.reject_id
                 WHERE o.last_run > r.run_id
                   AND o.k NOT IN (SELECT k FROM {delta} WHERE kind = 'still_rejected')",
                h = t.history(),
                rejects = t.rejects()
            ),
            &[],
        )?;
        db.execute(
            &format!(
                "DELETE FROM {open} WHERE k NOT IN (SELECT k FROM {delta} WHERE kind = 'still_rejected')
                   AND NOT (k = ANY($1))"
            ),
            &[&self.open.0],
        )?;
        db.execute(
            &format!("UPDATE {open} SET last_run = $1 WHERE k IN (SELECT k FROM {delta} WHERE kind = 'still_rejected')"),
            &[&self.run_id],
        )?;
        db.execute(
            &format!(
                "INSERT INTO {open} (k, hash, rules, first_run, last_run, reject_id)
                 SELECT k, hash, $4, $5, $5, id FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS n(k, hash, id)
                 ON CONFLICT (k) DO UPDATE SET hash = excluded.hash, rules = excluded.rules,
                     last_run = excluded.last_run, reject_id = excluded.reject_id"
            ),
            &[&self.open.0, &self.open.1, &self.open.2, &self.rules, &self.run_id],
        )?;
        let status = if self.written.requests > 0 {
            RunStatus::Shipping
        } else {
            RunStatus::Committed
        };
        let mut summary = RunSummary::new(String::new());
        summary.counts = *counts;
        summary.counts.events = self.written.events;
        summary.counts.events_pending = self.written.events;
        summary.counts.requests_pending = self.written.requests;
        summary.run_id = Some(self.run_id);
        summary.status = status;
        let mut json = summary_json(&summary);
        if let Some(o) = json.as_object_mut() {
            o.remove("started_at");
        }
        db.execute(
            &format!(
                "UPDATE {} SET status = $2, summary = summary || $3 WHERE run_id = $1",
                t.runs()
            ),
            &[&self.run_id, &status.as_str(), &json],
        )?;
        for (name, value) in [
            ("identity", identity.to_string()),
            ("last_commit", now_rfc3339()),
        ] {
            db.execute(
                &format!("INSERT INTO {} (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value", t.meta()),
                &[&name, &value],
            )?;
        }
        db.execute(&format!("DELETE FROM {delta}"), &[])?;
        prune(&db, keep_runs)?;
        crate::crash::point("before_commit");
        self.done = true;
        db.commit()?;
        let committed = std::mem::take(&mut self.spool);
        let mut spool = self.store.spool.borrow_mut();
        if spool.at.is_empty() {
            *spool = committed;
        } else {
            spool.extend(committed);
        }
        crate::crash::point("after_commit");
        Ok(self.written)
    }
}

/// What is older than the newest `keep_runs` runs, pruned by the local store's rules
/// (`store::commit::prune`): never what an open reject needs.
fn prune(db: &Db, keep_runs: u64) -> Result<()> {
    let t = &db.tables;
    let Some(cutoff) = db.query_opt(
        &format!(
            "SELECT run_id FROM {} ORDER BY run_id DESC LIMIT 1 OFFSET $1",
            t.runs()
        ),
        &[&(keep_runs.saturating_sub(1).min(i64::MAX as u64) as i64)],
    )?
    else {
        return Ok(());
    };
    let cutoff: i64 = cutoff.get(0);
    let (h, rejects, outbox, runs, open) = (
        t.history(),
        t.rejects(),
        t.outbox(),
        t.runs(),
        t.open_rejects(),
    );
    db.execute(
        &format!("DELETE FROM {h} WHERE run_id < $1 AND k NOT IN (SELECT k FROM {open})"),
        &[&cutoff],
    )?;
    db.execute(
        &format!(
            "DELETE FROM {rejects} WHERE run_id < $1
               AND id NOT IN (SELECT reject_id FROM {open})
               AND id NOT IN (SELECT reject_id FROM {h} WHERE run_id < $1 AND reject_id IS NOT NULL)"
        ),
        &[&cutoff],
    )?;
    db.execute(
        &format!(
            "DELETE FROM {outbox} q WHERE run_id < $1 AND state <> 'pending'
               AND NOT EXISTS (SELECT 1 FROM {h} x WHERE x.run_id < $1 AND x.request_id IS NOT NULL
                               AND (q.id = x.request_id OR q.id LIKE x.request_id || '.%'))"
        ),
        &[&cutoff],
    )?;
    db.execute(
        &format!(
            "DELETE FROM {runs} r WHERE run_id < $1
               AND NOT EXISTS (SELECT 1 FROM {h} x WHERE x.run_id = r.run_id)
               AND NOT EXISTS (SELECT 1 FROM {rejects} x WHERE x.run_id = r.run_id)
               AND NOT EXISTS (SELECT 1 FROM {outbox} x WHERE x.run_id = r.run_id)"
        ),
        &[&cutoff],
    )?;
    Ok(())
}
