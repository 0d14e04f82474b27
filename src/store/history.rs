//! A row's history as the local store keeps it (`explain`): its lines (written by the run's
//! commit and by answers, `commit` and `outbox`), each event read from its request's body,
//! Batch's answer about it from the outbox now, and the streak of runs that find the row still
//! rejected while its reject is open.
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
                "SELECT h.run_id, COALESCE(h.at, r.started_at), h.kind, h.hash, h.op, h.ev, h.request_id,
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
            (Option<i64>, Option<i64>),
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
                    (r.get(4)?, r.get(5)?),
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .ctx(p)?
            .collect::<rusqlite::Result<_>>()
            .ctx(p)?;
        let mut lines = Vec::with_capacity(raw.len() + 1);
        let mut bodies = Bodies::default();
        for (run_id, at, kind, hash, (op, ev), request, reason, state, answered_at) in raw {
            let kind = Change::parse(&kind)
                .ok_or_else(|| self.corrupt(format!("history of run {run_id}: kind {kind:?}")))?;
            let (event, attributes) = match (&request, op) {
                (Some(id), Some(op)) => bodies.part(id, op, ev, |id| self.request_body(id))?,
                _ => (None, None),
            };
            let mut line = HistoryLine {
                run_id,
                at,
                kind,
                hash: hash.map(|h| hex(&h)),
                event,
                attributes,
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
                .map(|h| (h.hash.to_hex(), h.present)),
        })
    }

    fn request_body(&self, id: &str) -> Result<Option<Vec<u8>>> {
        self.conn
            .query_row("SELECT body FROM request WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .ctx(&self.path)
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
                        attributes: None,
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

/// Request bodies read once each, as their operations.
#[derive(Default)]
pub(crate) struct Bodies(std::collections::HashMap<String, Vec<serde_json::Value>>);

impl Bodies {
    /// The event at (operation, event) of request `id`, whose body `read` gives, and the
    /// profile attributes of that operation; none when the request or its body is no longer
    /// kept. `ev` is none for an operation that carries profile attributes alone.
    pub(crate) fn part<E>(
        &mut self,
        id: &str,
        op: i64,
        ev: Option<i64>,
        read: impl FnOnce(&str) -> std::result::Result<Option<Vec<u8>>, E>,
    ) -> std::result::Result<(Option<serde_json::Value>, Option<serde_json::Value>), E> {
        if !self.0.contains_key(id) {
            let ops = read(id)?
                .and_then(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).ok())
                .unwrap_or_default();
            self.0.insert(id.to_string(), ops);
        }
        let op = self.0[id].get(op as usize);
        let event = ev.and_then(|ev| op.and_then(|o| o["events"].get(ev as usize)));
        let attributes = op.and_then(|o| o.get("attributes"));
        Ok((event.cloned(), attributes.cloned()))
    }
}
