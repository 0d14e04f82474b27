//! The outbox: pending requests in send order, and one small transaction per answer.
//!
//! Invariants:
//! - A request is `pending` until an answer about it is recorded; only then does it become
//!   `delivered`, `rejected` or `split`. A process that dies in between leaves it `pending`,
//!   so a resumed run re-sends exactly the requests whose answer was never recorded.
//! - An operation Batch drops turns each of its rows into a reject with Batch's reason, and puts
//!   the row's baseline entry back as it was before the run that sent it, so a fixed row is
//!   tried again (only where no later run has changed the entry since).
//! - Each row of a dropped operation gets a history line in the answer's transaction:
//!   `restored` when its baseline entry went back, `rejected` when a later run had written it.
//! - Answered requests keep their counts and bodies (a row's history shows its event from
//!   there) but drop their manifests; they go with their run when it is pruned
//!   (`[state] keep_runs`), so the store does not grow with every event ever sent.

use super::baseline::{self, State};
use super::{now_rfc3339, Ctx, Result, Store};
use crate::core::encode::{reject_hash, unhex, RowHash};
use crate::core::history::Change;
use crate::core::pack::{events_in, Endpoint, RowRef};
use crate::core::retry::PartialError;
use crate::state::{dropped_ops, Outbox};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

pub use crate::state::{Pending, PendingRequest};

impl Store {
    /// One answer, one IMMEDIATE transaction: committed whole, or rolled back when `f` or
    /// the COMMIT itself fails (rusqlite's `Transaction` rolls back on drop).
    fn tx<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .ctx(&self.path)?;
        let v = f(self)?;
        tx.commit().ctx(&self.path)?;
        Ok(v)
    }

    /// Rejects every row of one operation with Batch's reason, and adds to `restore` the
    /// baseline entries to put back: each row's entry as it was before the run that sent it,
    /// where the baseline still holds what that run wrote.
    #[allow(clippy::too_many_arguments)]
    fn reject_rows(
        &self,
        req: &PendingRequest,
        rows: &[RowRef],
        run_id: i64,
        column: Option<&str>,
        rule: &str,
        reason: &str,
        restore: &mut Vec<baseline::Entry>,
    ) -> Result<()> {
        let p = &self.path;
        for row in rows {
            self.conn
                .prepare_cached(
                    "INSERT INTO reject (run_id, key, column_name, rule, reason, source, request_id) VALUES (?1, ?2, ?3, ?4, ?5, 'batch', ?6)",
                )
                .and_then(|mut s| s.execute(params![run_id, row.key, column, rule, reason, req.id]))
                .ctx(p)?;
            let reject_id = self.conn.last_insert_rowid();
            let (Some(key), Some(hash)) = (unhex(&row.k), unhex(&row.h)) else {
                continue;
            };
            let profile = row.p.as_deref().and_then(hash_of);
            let open = reject_hash(hash_of(&row.h).unwrap_or_default(), profile);
            // Open under the rules its event was built with: the row, unchanged, is not sent
            // again (DESIGN.md "Rows that stay rejected").
            if let Some(rules) = &req.rules {
                self.conn
                    .prepare_cached(
                        "INSERT INTO open_reject (key, hash, rules, first_run, last_run, reject_id) VALUES (?1, ?2, ?3, ?4, ?4, ?5)
                         ON CONFLICT(key) DO UPDATE SET hash = excluded.hash, rules = excluded.rules,
                             last_run = excluded.last_run, reject_id = excluded.reject_id",
                    )
                    .and_then(|mut s| s.execute(params![key, &open.0[..], rules, run_id, reject_id]))
                    .ctx(p)?;
            }
            let held = self.baseline_get(&key)?;
            // Put back only where the baseline holds what the sending run wrote; a later run
            // changed the entry otherwise, and it is left as it is.
            let restored = held.is_some_and(|h| {
                h.hash.0[..] == hash[..] && (profile.is_none() || h.profile == profile)
            });
            let change = if restored {
                Change::Restored
            } else {
                Change::Rejected
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO history (run_id, key, kind, hash, request_id, reject_id, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![run_id, key, change.as_str(), hash, req.id, reject_id, now_rfc3339()])
                })
                .ctx(p)?;
            if !restored {
                continue;
            }
            restore.push(match &row.prev {
                None => (key, State::Erased, RowHash::default(), None),
                Some((prev, present)) => {
                    let h = hash_of(prev).unwrap_or_default();
                    let state = if *present {
                        State::Present
                    } else {
                        State::Tombstone
                    };
                    (key, state, h, row.pp.as_deref().and_then(hash_of))
                }
            });
        }
        Ok(())
    }
}

/// A 16-byte hash from its hex (as manifests keep it).
fn hash_of(hex: &str) -> Option<RowHash> {
    let b = unhex(hex)?;
    Some(RowHash(b.get(..16)?.try_into().ok()?))
}

impl Store {
    /// Puts baseline entries back after Batch dropped their rows, and keeps the count of
    /// present entries true: each entry put back was present (the sending run's), and is no
    /// longer unless it goes back to present.
    fn restore(&self, run_id: i64, restore: Vec<baseline::Entry>) -> Result<()> {
        let gone = restore
            .iter()
            .filter(|(_, st, _, _)| *st != State::Present)
            .count() as i64;
        baseline::write_delta(self, run_id, restore)?;
        if gone > 0 {
            self.conn
                .execute(
                    "UPDATE meta SET value = CAST(CAST(value AS INTEGER) - ?1 AS TEXT) WHERE name = 'present_rows'",
                    [gone],
                )
                .ctx(&self.path)?;
        }
        Ok(())
    }

    /// The shipping run's record counts each answer as it is recorded, in the answer's own
    /// transaction: a run killed while shipping keeps true counts (the summary it would have
    /// written at its end holds the same totals).
    fn count_answer(&self, run_id: i64, delivered: u64, rejected: u64) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE run SET events_sent = events_sent + ?2, rejected = rejected + ?3 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![run_id, delivered as i64, rejected as i64]))
            .ctx(&self.path)?;
        Ok(())
    }
}

impl Outbox for Store {
    fn pending(&self) -> Result<Pending> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(events), 0) FROM request WHERE state = 'pending'",
                [],
                |r| {
                    Ok(Pending {
                        requests: r.get::<_, i64>(0)? as u64,
                        events: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .ctx(&self.path)
    }

    /// The first pending request after `after` in send order.
    fn next_pending(&self, after: Option<&str>) -> Result<Option<PendingRequest>> {
        let p = &self.path;
        let row = self
            .conn
            .query_row(
                "SELECT id, run_id, endpoint, operations, events, body, attempts, rules FROM request
                 WHERE state = 'pending' AND id > ?1 ORDER BY id LIMIT 1",
                [after.unwrap_or("")],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                },
            )
            .optional()
            .ctx(p)?;
        let Some((id, run_id, endpoint, operations, events, body, attempts, rules)) = row else {
            return Ok(None);
        };
        let endpoint = Endpoint::parse(&endpoint)
            .ok_or_else(|| self.corrupt(format!("request {id}: unknown endpoint {endpoint:?}")))?;
        Ok(Some(PendingRequest {
            id,
            run_id,
            endpoint,
            operations: operations as usize,
            events: events as u64,
            body,
            attempts: attempts as u32,
            rules,
        }))
    }

    fn manifest(&self, id: &str) -> Result<Vec<Vec<RowRef>>> {
        let bytes: Vec<u8> = self
            .conn
            .query_row("SELECT manifest FROM request WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .ctx(&self.path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(format!("request {id}: unreadable manifest: {e}")))
    }

    /// Batch accepted the request, but for the dropped operations. Returns the events delivered
    /// and the rows rejected.
    fn record_delivered(
        &self,
        req: &PendingRequest,
        dropped: &[PartialError],
        run_id: i64,
    ) -> Result<(u64, u64)> {
        self.tx(|s| {
            let (mut rejected, mut lost) = (0u64, 0u64);
            let mut restore = Vec::new();
            let manifest = if dropped.is_empty() { Vec::new() } else { s.manifest(&req.id)? };
            for op in dropped_ops(req, &manifest, dropped) {
                s.reject_rows(req, op.rows, run_id, op.column, op.rule, op.reason, &mut restore)?;
                rejected += op.rows.len() as u64;
                lost += events_in(op.rows) as u64;
            }
            s.restore(run_id, restore)?;
            let delivered = req.events.saturating_sub(lost);
            s.count_answer(run_id, delivered, rejected)?;
            s.conn
                .execute(
                    "UPDATE request SET state = 'delivered', delivered_events = ?2, attempts = attempts + 1, answered_at = ?3,
                            manifest = x'', last_error = NULL WHERE id = ?1",
                    params![req.id, delivered as i64, now_rfc3339()],
                )
                .ctx(&s.path)?;
            Ok((delivered, rejected))
        })
    }

    /// A 400 on a single operation: Batch will never take it; its rows become rejects.
    fn record_refused(&self, req: &PendingRequest, message: &str, run_id: i64) -> Result<u64> {
        self.tx(|s| {
            let mut rejected = 0;
            let mut restore = Vec::new();
            for rows in &s.manifest(&req.id)? {
                s.reject_rows(req, rows, run_id, None, "batch_bad_request", message, &mut restore)?;
                rejected += rows.len() as u64;
            }
            s.restore(run_id, restore)?;
            s.count_answer(run_id, 0, rejected)?;
            s.conn
                .execute(
                    "UPDATE request SET state = 'rejected', attempts = attempts + 1, answered_at = ?2, last_error = ?3,
                            manifest = x'' WHERE id = ?1",
                    params![req.id, now_rfc3339(), message],
                )
                .ctx(&s.path)?;
            Ok(rejected)
        })
    }

    /// A 400 on several operations: the request is replaced by its two halves, in place in the
    /// send order (ids `<id>.0` and `<id>.1` sort right after `<id>`).
    fn record_split(
        &self,
        req: &PendingRequest,
        halves: [(String, Vec<Vec<RowRef>>); 2],
        message: &str,
    ) -> Result<[String; 2]> {
        self.tx(|s| {
            let ids = [format!("{}.0", req.id), format!("{}.1", req.id)];
            for (id, (body, manifest)) in ids.iter().zip(halves.iter()) {
                let events: usize = manifest.iter().map(|rows| events_in(rows)).sum();
                s.conn
                    .execute(
                        "INSERT INTO request (id, run_id, endpoint, operations, events, body, manifest, state, rules)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                        params![
                            id,
                            req.run_id,
                            req.endpoint.as_str(),
                            manifest.len() as i64,
                            events as i64,
                            body.as_bytes(),
                            serde_json::to_vec(manifest).expect("manifest serialises"),
                            req.rules
                        ],
                    )
                    .ctx(&s.path)?;
            }
            s.conn
                .execute(
                    "UPDATE request SET state = 'split', attempts = attempts + 1, answered_at = ?2, last_error = ?3,
                            manifest = x'' WHERE id = ?1",
                    params![req.id, now_rfc3339(), message],
                )
                .ctx(&s.path)?;
            Ok(ids)
        })
    }

    /// A transient failure (5xx, timeout, reset): counts against the request's retry budget.
    fn record_attempt(&self, id: &str, error: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE request SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .ctx(&self.path)?;
        Ok(())
    }
}
