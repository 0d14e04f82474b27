//! A row's history as the local store keeps it (`explain`): its lines (written by the run's
//! commit and by answers, `commit` and `outbox`), with Batch's answer about each event read
//! from the outbox now, and the streak of runs that find it still rejected while its reject
//! is open.
//!
//! Read only; nothing here is written.

use super::{Ctx, Result, Store};
use crate::core::encode::hex;
use crate::core::history::{answer, Change};
use crate::state::{Explained, HistoryLine};
use rusqlite::{params, OptionalExtension};

impl Store {
    /// The history of the row with these key bytes; `display` is the key as people read it
    /// (what the rejects of Batch record).
    pub fn explain(&self, key: &[u8], display: &str) -> Result<Explained> {
        let p = &self.path;
        let mut st = self
            .conn
            .prepare(
                "SELECT h.run_id, COALESCE(h.at, r.started_at), h.kind, h.hash, h.event, h.request_id,
                        j.reason, q.state, q.answered_at
                 FROM history h
                 LEFT JOIN run r ON r.id = h.run_id
                 LEFT JOIN reject j ON j.id = h.reject_id
                 LEFT JOIN request q ON q.id = h.request_id
                 WHERE h.key = ?1 ORDER BY h.run_id, h.id",
            )
            .ctx(p)?;
        type Raw = (
            i64,
            Option<String>,
            String,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let raw: Vec<Raw> = st
            .query_map([key], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .ctx(p)?
            .collect::<rusqlite::Result<_>>()
            .ctx(p)?;
        let mut lines = Vec::with_capacity(raw.len() + 1);
        for (run_id, at, kind, hash, event, request, reason, state, answered_at) in raw {
            let kind = Change::parse(&kind)
                .ok_or_else(|| self.corrupt(format!("history of run {run_id}: kind {kind:?}")))?;
            let mut line = HistoryLine {
                run_id,
                at,
                kind,
                hash: hash.map(|h| hex(&h)),
                event: event.and_then(|e| serde_json::from_str(&e).ok()),
                request: request.clone(),
                answer: None,
                reason,
                answered_at,
            };
            if let Some(id) = &request {
                let dropped = self.dropped_by_batch(id, display)?;
                let parts = self.request_parts(id)?;
                line.answer = answer(state.as_deref(), &parts, dropped.is_some());
                if line.reason.is_none() {
                    line.reason = dropped;
                }
            }
            lines.push(line);
        }
        if let Some(still) = self.still_rejected_now(key)? {
            lines.push(still);
        }
        Ok(Explained {
            key: display.to_string(),
            lines,
            baseline: self
                .baseline_get(key)?
                .map(|(h, present)| (h.to_hex(), present)),
        })
    }

    /// Batch's reason, if it dropped this row's operation in request `id` or one of its parts.
    fn dropped_by_batch(&self, id: &str, display: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached(
                "SELECT reason FROM reject WHERE source = 'batch' AND key = ?2
                   AND (request_id = ?1 OR request_id LIKE ?1 || '.%') ORDER BY id LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![id, display], |r| r.get(0)).optional())
            .ctx(&self.path)
    }

    /// The states of the requests `id` was split into, and theirs.
    fn request_parts(&self, id: &str) -> Result<Vec<String>> {
        self.conn
            .prepare_cached("SELECT state FROM request WHERE id LIKE ?1 || '.%'")
            .and_then(|mut s| {
                s.query_map([id], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .ctx(&self.path)
    }

    /// While the row's reject is open and later runs found it still rejected: one line, at
    /// the latest of them (the commit writes it down once the streak ends).
    fn still_rejected_now(&self, key: &[u8]) -> Result<Option<HistoryLine>> {
        self.conn
            .query_row(
                "SELECT o.last_run, r.started_at, o.hash, j.reason FROM open_reject o
                 JOIN reject j ON j.id = o.reject_id
                 LEFT JOIN run r ON r.id = o.last_run
                 WHERE o.key = ?1 AND o.last_run > j.run_id",
                [key],
                |r| {
                    Ok(HistoryLine {
                        run_id: r.get(0)?,
                        at: r.get(1)?,
                        kind: Change::StillRejected,
                        hash: r.get::<_, Vec<u8>>(2).map(|h| hex(&h))?.into(),
                        event: None,
                        request: None,
                        answer: None,
                        reason: r.get(3)?,
                        answered_at: None,
                    })
                },
            )
            .optional()
            .ctx(&self.path)
    }
}
