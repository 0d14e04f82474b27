//! A run's commit: the new baseline, the outbox requests, the rejects and the run record, in
//! one IMMEDIATE transaction.
//!
//! Invariants:
//! - Nothing of a run is visible before `commit` returns; dropping a [`RunWriter`] rolls back,
//!   and so does a COMMIT that fails (the transaction is rusqlite's `Transaction`).
//! - The baseline's changes arrive in key order (the merge's order) and go straight into one
//!   layer (`baseline`): a delta layer of the puts and tombstones, or, when the layers are due
//!   for compaction, a new base that also takes every entry the run keeps as it was
//!   ([`Sink::keep`](crate::state::Sink::keep)).
//! - Operations (events, profile updates) wait in `store::staged` (16 MB in memory, then sorted
//!   runs in an anonymous file beside the store) until the merge is over, then leave it sorted
//!   by custom id to be packed into requests (one operation per profile).
//! - Request ids are deterministic: `r{run:08}-{seq:06}`, so their order is the send order.
//! - Each delta row's history line is written in the same transaction: at once for a row
//!   without an event; for a row sent in a request, once the requests are packed (its
//!   manifest's rows, each with its place in the body, which keeps the event: no second copy
//!   is written). Those wait in a TEMP table and go into `history` sorted by key, the order
//!   of its `history_key` index.
//!   A still-rejected row's streak gets its one line when its open reject closes or renews.
//! - Before the COMMIT, what is older than the newest `keep_runs` runs is pruned ([`prune`]).
//! - Crash points: `mid_commit` (half the outbox written), `before_commit`.

use super::baseline::{self, LayerWriter, State};
use super::staged::{self, Staged};
use super::{now_rfc3339, Ctx, Result, Store, StoreError};
use crate::core::diff::BaseRow;
use crate::core::encode::{unhex, RowHash};
use crate::core::history::Change;
use crate::core::mapping::{Operation, Reject};
use crate::core::pack::{Endpoint, Packed, Packer, ProfileOnly, RowRef};
use crate::core::run::{Counts, RunStatus};
use crate::state::{Commit, CommitMeta, Line, Rejected, Sink};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use std::path::PathBuf;

pub use crate::state::Committed;

pub struct RunWriter<'a> {
    store: &'a Store,
    tx: Transaction<'a>,
    run_id: i64,
    events: u64,
    layer: Option<LayerWriter>,
    /// The mapping and rules this run's rejects and requests are recorded under.
    rules: String,
    /// The operations to pack, in the order the diff sends them (`store::staged`); they
    /// spill beside the store.
    staged: Staged,
    /// The reject last recorded: a `Rejected` history line names it.
    last_reject: Option<i64>,
    /// Present entries after this commit: every key the baseline held gets one of `put`,
    /// `tombstone` or `keep`, and every new key a `put`, so the puts and the entries kept
    /// present are the whole count (what `status` shows without reading the baseline).
    present: u64,
}

const INSERT_LINE: &str = "INSERT INTO history (run_id, key, kind, hash, request_id, op, ev, reject_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The change a row sent in a request is recorded as in its history line.
fn sent_change(row: &RowRef) -> Change {
    match row.only {
        None => Change::of_event(row.prev.as_ref().map(|(_, present)| *present)),
        // A changed row (another row hash) whose profile alone was sent is still a changed
        // row; a row whose row hash stayed is a profile update.
        Some(ProfileOnly::Update) if row.prev.as_ref().is_some_and(|(h, _)| *h != row.h) => {
            Change::Changed
        }
        Some(ProfileOnly::Update) => Change::Profile,
        Some(ProfileOnly::Unset) => Change::Removed,
    }
}

/// The history lines of a request's rows (its manifest's), each with the request and its
/// place in the body: the operation and, for a row with an event, the event's place in it.
/// They wait in `new_place` to be written in key order ([`RunWriter::commit_all`]).
fn places(st: &mut rusqlite::CachedStatement<'_>, id: &str, r: &Packed) -> rusqlite::Result<()> {
    for (op, rows) in r.manifest.iter().enumerate() {
        let mut ev = 0i64;
        for row in rows {
            let at = row.has_event().then_some(ev);
            ev += at.is_some() as i64;
            st.execute(params![
                unhex(&row.k).unwrap_or_default(),
                sent_change(row).as_str(),
                unhex(&row.h),
                id,
                op as i64,
                at
            ])?;
        }
    }
    Ok(())
}

pub fn request_id(run_id: i64, seq: u64) -> String {
    format!("r{run_id:08}-{seq:06}")
}

impl Store {
    /// Opens the run's transaction and allocates its id.
    /// `existing` is the record a resuming run already wrote before shipping earlier requests.
    pub(super) fn open_run(
        &self,
        started_at: &str,
        existing: Option<i64>,
        rules: &str,
    ) -> Result<RunWriter<'_>> {
        let p = &self.path;
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).ctx(p)?;
        let spill_dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut w = RunWriter {
            store: self,
            tx,
            staged: Staged::new(&spill_dir, staged::BUDGET),
            run_id: 0,
            events: 0,
            layer: None,
            rules: rules.to_string(),
            present: 0,
            last_reject: None,
        };
        // run_open: the keys whose reject is open after this run (still rejected, or
        // rejected now with their hash and reject record); every other open reject closes.
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS new_place (key BLOB NOT NULL, kind TEXT NOT NULL, hash BLOB, request_id TEXT NOT NULL, op INTEGER NOT NULL, ev INTEGER);
                 DELETE FROM temp.new_place;
                 CREATE TEMP TABLE IF NOT EXISTS run_open (key BLOB PRIMARY KEY, hash BLOB, reject_id INTEGER, still INTEGER NOT NULL) WITHOUT ROWID;
                 DELETE FROM temp.run_open;",
            )
            .ctx(p)?;
        match existing {
            Some(id) => {
                self.conn
                    .execute(
                        "UPDATE run SET status = ?2, committed = 1 WHERE id = ?1",
                        params![id, RunStatus::Committing],
                    )
                    .ctx(p)?;
                w.run_id = id;
            }
            None => {
                self.conn
                    .execute(
                        "INSERT INTO run (started_at, status, committed) VALUES (?1, ?2, 1)",
                        params![started_at, RunStatus::Committing],
                    )
                    .ctx(p)?;
                w.run_id = self.conn.last_insert_rowid();
            }
        }
        let compact = baseline::should_compact(&baseline::layers(self)?);
        w.layer = Some(LayerWriter::begin(self, compact, w.run_id)?);
        Ok(w)
    }
}

impl RunWriter<'_> {
    fn layer(&mut self) -> &mut LayerWriter {
        self.layer.as_mut().expect("a layer until the commit")
    }

    /// Whether this commit writes a whole new base: then every entry the run keeps must be
    /// passed to [`Sink::keep`], in key order with the puts and tombstones.
    fn compacting(&self) -> bool {
        self.layer.as_ref().is_some_and(LayerWriter::is_base)
    }

    fn push(
        &mut self,
        key: &[u8],
        state: State,
        hash: &RowHash,
        profile: Option<&RowHash>,
    ) -> Result<()> {
        let store = self.store;
        self.layer().push(store, key, state, hash, profile)
    }

    /// Packs the events into requests, writes the run record, and commits.
    fn commit_all(mut self, counts: &Counts, meta: &CommitMeta<'_>) -> Result<Committed> {
        let p = self.store.path.clone();
        let conn: &rusqlite::Connection = &self.tx;
        if let Some(layer) = self.layer.take() {
            layer.finish(self.store)?;
        }
        let endpoint = Endpoint::for_run(
            self.events,
            counts.profile_updates,
            meta.mass_update_from,
            meta.backfill,
        );
        let mut packer = Packer::new(endpoint);
        let mut seq = 0u64;
        let mut written = Committed::default();
        {
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO request (id, run_id, endpoint, operations, events, body, manifest, state, rules)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8)",
                )
                .ctx(&p)?;
            let mut place = conn
                .prepare_cached(
                    "INSERT INTO temp.new_place (key, kind, hash, request_id, op, ev) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .ctx(&p)?;
            let mut write = |r: Packed, seq: &mut u64| -> Result<()> {
                *seq += 1;
                let id = request_id(self.run_id, *seq);
                let manifest = serde_json::to_vec(&r.manifest).expect("manifest serialises");
                insert
                    .execute(params![
                        id,
                        self.run_id,
                        endpoint.as_str(),
                        r.operations as i64,
                        r.events as i64,
                        r.body.as_bytes(),
                        manifest,
                        self.rules
                    ])
                    .ctx(&p)?;
                places(&mut place, &id, &r).ctx(&p)?;
                written.requests += 1;
                written.events += r.events as u64;
                if *seq == 2 {
                    crate::crash::point("mid_commit");
                }
                Ok(())
            };
            let staged = self.staged;
            let dir = staged.dir().to_path_buf();
            let staging = |source| StoreError::Staging {
                dir: dir.clone(),
                source,
            };
            for op in staged.into_sorted().map_err(staging)? {
                for r in packer.push(op.map_err(staging)?) {
                    write(r, &mut seq)?;
                }
            }
            for r in packer.finish() {
                write(r, &mut seq)?;
            }
        }
        // The sent rows' history lines, in key order, which is the order of the `history_key`
        // index: written as their requests are packed (in custom-id order), each would land at
        // a random place in it. Sorting them first is cheaper.
        conn.execute(
            "INSERT INTO history (run_id, key, kind, hash, request_id, op, ev)
             SELECT ?1, key, kind, hash, request_id, op, ev FROM temp.new_place ORDER BY key",
            [self.run_id],
        )
        .ctx(&p)?;
        conn.execute("DELETE FROM temp.new_place", []).ctx(&p)?;
        // A streak of runs that found a row still rejected ends when its open reject closes or
        // renews: one line, at the last of those runs.
        conn.execute(
            "INSERT INTO history (run_id, key, kind, hash, reject_id)
             SELECT o.last_run, o.key, 'still_rejected', o.hash, o.reject_id
             FROM open_reject o JOIN reject r ON r.id = o.reject_id
             WHERE o.last_run > r.run_id AND o.key NOT IN (SELECT key FROM temp.run_open WHERE still = 1)",
            [],
        )
        .ctx(&p)?;
        conn.execute_batch(
            "DELETE FROM open_reject WHERE key NOT IN (SELECT key FROM temp.run_open);",
        )
        .ctx(&p)?;
        // A run upgrading the hash recipe gives a still-rejected row its new hash.
        conn.execute(
            "UPDATE open_reject SET last_run = ?1,
                    hash = COALESCE((SELECT r.hash FROM temp.run_open r WHERE r.key = open_reject.key), hash)
             WHERE key IN (SELECT key FROM temp.run_open WHERE still = 1)",
            [self.run_id],
        )
        .ctx(&p)?;
        conn.execute(
            "INSERT INTO open_reject (key, hash, rules, first_run, last_run, reject_id)
             SELECT key, hash, ?2, ?1, ?1, reject_id FROM temp.run_open WHERE still = 0
             ON CONFLICT(key) DO UPDATE SET hash = excluded.hash, rules = excluded.rules,
                 last_run = excluded.last_run, reject_id = excluded.reject_id",
            params![self.run_id, self.rules],
        )
        .ctx(&p)?;
        conn.execute("DELETE FROM temp.run_open", []).ctx(&p)?;
        let status = if written.requests > 0 {
            RunStatus::Shipping
        } else {
            RunStatus::Committed
        };
        conn.execute(
            "UPDATE run SET status = ?2, rows = ?3, added = ?4, changed = ?5, removed = ?6, rejected = ?7, events = ?8,
                    events_pending = ?8, unchanged = ?9, reentered = ?10, still_rejected = ?11, profile_updates = ?12,
                    requests_pending = ?13
             WHERE id = ?1",
            params![
                self.run_id,
                status,
                counts.rows as i64,
                counts.added as i64,
                counts.changed as i64,
                counts.removed as i64,
                counts.rejected as i64,
                written.events as i64,
                counts.unchanged as i64,
                counts.reentered as i64,
                counts.still_rejected as i64,
                counts.profile_updates as i64,
                written.requests as i64
            ],
        )
        .ctx(&p)?;
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('identity', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [meta.identity],
        )
        .ctx(&p)?;
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('profile', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [meta.profile],
        )
        .ctx(&p)?;
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('last_commit', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [now_rfc3339()],
        )
        .ctx(&p)?;
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('present_rows', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            [self.present.to_string()],
        )
        .ctx(&p)?;
        prune(conn, meta.keep_runs).ctx(&p)?;
        crate::crash::point("before_commit");
        self.tx.commit().ctx(&p)?;
        crate::crash::point("after_commit");
        Ok(written)
    }
}

impl Sink for RunWriter<'_> {
    type Error = StoreError;

    /// The key is in the segment with this hash. Keys come in increasing order.
    fn put(&mut self, key: &[u8], hash: RowHash, profile: Option<RowHash>) -> Result<()> {
        self.present += 1;
        self.push(key, State::Present, &hash, profile.as_ref())
    }

    /// The key left the segment; `hash` is the one it had.
    fn tombstone(&mut self, key: &[u8], hash: RowHash) -> Result<()> {
        self.push(key, State::Tombstone, &hash, None)
    }

    fn keeps_each(&self) -> bool {
        self.compacting()
    }

    fn kept(&mut self, present: u64) -> Result<()> {
        debug_assert!(present == 0 || !self.compacting());
        self.present += present;
        Ok(())
    }

    /// A baseline entry the run leaves as it was: written only into a new base.
    fn keep(&mut self, b: &BaseRow) -> Result<()> {
        self.present += b.present as u64;
        if !self.compacting() {
            return Ok(());
        }
        let state = if b.present {
            State::Present
        } else {
            State::Tombstone
        };
        self.push(&b.key, state, &b.hash, b.profile.as_ref())
    }

    /// The row's history line waits with it: it is written once the requests are packed.
    fn send(&mut self, op: &Operation, row: RowRef) -> Result<()> {
        let staged = &mut self.staged;
        staged
            .add(
                &op.custom_id,
                op.event.as_ref(),
                op.attributes.as_ref(),
                &row,
            )
            .map_err(|source| StoreError::Staging {
                dir: staged.dir().to_path_buf(),
                source,
            })?;
        self.events += op.event.is_some() as u64;
        Ok(())
    }

    fn reject(&mut self, at: Rejected<'_>, r: &Reject) -> Result<()> {
        let conn = &self.store.conn;
        let p = &self.store.path;
        conn.prepare_cached(
            "INSERT INTO reject (run_id, key, line, column_name, rule, reason, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'local')",
        )
        .and_then(|mut s| {
            s.execute(params![self.run_id, at.key, at.line.map(|l| l as i64), r.column, r.rule, r.reason])
        })
        .ctx(p)?;
        let id = conn.last_insert_rowid();
        self.last_reject = Some(id);
        if let Some((key, hash)) = at.row {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO temp.run_open (key, hash, reject_id, still) VALUES (?1, ?2, ?3, 0)",
            )
            .and_then(|mut s| s.execute(params![key, &hash.0[..], id]))
            .ctx(p)?;
        }
        Ok(())
    }

    fn still_rejected(&mut self, key: &[u8], rehash: Option<RowHash>) -> Result<()> {
        let hash = rehash.map(|h| h.0.to_vec());
        self.store
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO temp.run_open (key, hash, still) VALUES (?1, ?2, 1)",
            )
            .and_then(|mut s| s.execute(params![key, hash]))
            .ctx(&self.store.path)?;
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
        self.store
            .conn
            .prepare_cached(INSERT_LINE)
            .and_then(|mut s| {
                s.execute(params![
                    self.run_id,
                    line.key,
                    line.change.as_str(),
                    line.hash.map(|h| h.0.to_vec()),
                    None::<String>,
                    None::<i64>,
                    None::<i64>,
                    reject
                ])
            })
            .ctx(&self.store.path)?;
        Ok(())
    }
}

/// Deletes what is older than the newest `keep_runs` runs, but what an open reject needs:
/// - history lines of those runs, but an open reject's key's;
/// - their rejects, but those an open reject or a kept line names;
/// - their requests no longer pending, but those a kept line names (and their parts);
/// - their run records, but those a kept line, reject or request still belongs to.
///
/// Each statement reads those runs' rows by index (`history_run`, `reject_run`,
/// `request_run`): once past its first commit with `keep_runs` set, a commit prunes one run.
pub(super) fn prune(conn: &rusqlite::Connection, keep_runs: u64) -> rusqlite::Result<()> {
    let cutoff: Option<i64> = conn
        .query_row(
            "SELECT id FROM run ORDER BY id DESC LIMIT 1 OFFSET ?1",
            [keep_runs.saturating_sub(1).min(i64::MAX as u64) as i64],
            |r| r.get(0),
        )
        .optional()?;
    let Some(cutoff) = cutoff else {
        return Ok(());
    };
    conn.execute(
        "DELETE FROM history WHERE run_id < ?1 AND key NOT IN (SELECT key FROM open_reject)",
        [cutoff],
    )?;
    conn.execute(
        "DELETE FROM reject WHERE run_id < ?1
           AND id NOT IN (SELECT reject_id FROM open_reject)
           AND id NOT IN (SELECT reject_id FROM history WHERE run_id < ?1 AND reject_id IS NOT NULL)",
        [cutoff],
    )?;
    conn.execute(
        "DELETE FROM request WHERE run_id < ?1 AND state <> 'pending'
           AND NOT EXISTS (SELECT 1 FROM history h WHERE h.run_id < ?1 AND h.request_id IS NOT NULL
                           AND (request.id = h.request_id OR request.id LIKE h.request_id || '.%'))",
        [cutoff],
    )?;
    conn.execute(
        "DELETE FROM run WHERE id < ?1
           AND NOT EXISTS (SELECT 1 FROM history h WHERE h.run_id = run.id)
           AND NOT EXISTS (SELECT 1 FROM reject r WHERE r.run_id = run.id)
           AND NOT EXISTS (SELECT 1 FROM request q WHERE q.run_id = run.id)",
        [cutoff],
    )?;
    Ok(())
}

impl Commit for RunWriter<'_> {
    fn run_id(&self) -> i64 {
        self.run_id
    }

    fn commit(self, counts: &Counts, meta: &CommitMeta<'_>) -> Result<Committed> {
        self.commit_all(counts, meta)
    }
}
