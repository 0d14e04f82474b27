//! The database mode's diff engine: the stage statement that diffs the query against the
//! baseline in SQL, and the fetch of the rows that become events.
//!
//! One transaction (REPEATABLE READ, so every statement sees one snapshot):
//! 1. **Stage**: one `INSERT … SELECT` hashes every row of the query ([`sql::hash_expr`]),
//!    groups it by key ([`sql::key_expr`]), full-joins it with the baseline and writes the rows
//!    that differ into the delta table, each with its kind (`added`, `reentered`, `changed`,
//!    `removed`, `duplicate`, `null_key`) and the baseline's old hash and presence.
//! 2. **Counts**: per kind, and the baseline's present rows (the guards' denominator).
//! 3. **Fetch**: a cursor over the query joined with the delta rows a policy sends, ordered by
//!    custom id (the packer groups a profile's events without buffering); each row is typed
//!    and encoded by the local mode's own code and yielded as a delta.
//!
//! What is not yielded is settled here ([`DiffEngine::settled`]): unchanged rows, removals,
//! and changes no policy sends are counted, and the baseline takes them at the commit.
//!
//! Invariants:
//! - The rows fetched are exactly the staged ones: each fetched row's hash is compared with the
//!   staged hash, and the count with the staged count; a query that reads differently the
//!   second time (a volatile function) stops the run before anything is committed.
//! - Only fetched rows are typed and checked (WAREHOUSE.md "Semantics that differ").
//! - Crash points: `after_read` (the stage statement done), `mid_fetch` (before each FETCH
//!   after the first); a crash at either leaves the database as it was.

use super::sql::{self, Col};
use super::store::{DbStore, Staged};
use super::Db;
use crate::config::{OnBadRow, Settings};
use crate::core::diff::{decide, Delta, Policy, SnapRow};
use crate::core::encode::RowHash;
use crate::core::mapping::Reject;
use crate::pipeline::diff::{DiffEngine, Diffed, Step};
use crate::pipeline::RunError;
use crate::snapshot::{LooseReject, PayloadEncoder, SnapshotError};
use crate::source::postgres::RowDecoder;
use crate::source::SourceError;
use crate::state::StoreError;
use std::collections::VecDeque;
use std::rc::Rc;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

/// Where the stage writes: the sync's delta table (a run), or a temporary one (`plan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Run,
    Plan,
}

const FETCH_BATCH: i64 = 2000;
const CURSOR: &str = "batchsync_fetch";

/// Whether a policy sends the rows of a kind: asked of `core::diff::decide` itself, so the
/// fetch can never disagree with the shared decision.
fn sends(kind: &str, policy: Policy) -> bool {
    let row = SnapRow {
        key: Vec::new(),
        hash: RowHash::default(),
        old_hash: None,
        profile: None,
        payload: Vec::new(),
        at: None,
        line: 0,
        bad: None,
    };
    let delta = match kind {
        "added" => Delta::Added {
            row,
            reentry: false,
        },
        "reentered" => Delta::Added { row, reentry: true },
        "changed" => Delta::Changed {
            row,
            old: RowHash::default(),
        },
        _ => return false,
    };
    decide(&delta, policy).0
}

pub struct SqlDiff {
    db: Rc<Db>,
    rows: u64,
    loose: Vec<LooseReject>,
    settled: Diffed,
    /// Keys several rows share: (key text, rows, whether the baseline holds the key).
    duplicates: VecDeque<(String, i64, bool)>,
    /// Rows the fetch must return.
    candidates: u64,
    fetched: u64,
    fetching: bool,
    buffer: VecDeque<Row>,
    decoder: RowDecoder,
    encoder: PayloadEncoder,
    on_bad_row: OnBadRow,
    cells: Vec<crate::core::value::Cell>,
}

fn query_error(db: &Db, message: String) -> RunError {
    RunError::Snapshot(SnapshotError::Source(SourceError::Query {
        what: db.what.clone(),
        message,
    }))
}

fn config_error(db: &Db, message: String) -> RunError {
    RunError::Snapshot(SnapshotError::Source(SourceError::Config {
        what: db.what.clone(),
        message,
    }))
}

/// A database error while reading the query: the source's error, in the database's words.
fn read_error(e: StoreError) -> RunError {
    match e {
        StoreError::Database { what, message } => {
            RunError::Snapshot(SnapshotError::Source(SourceError::Query { what, message }))
        }
        other => RunError::Store(other),
    }
}

impl SqlDiff {
    /// Opens the run's transaction and stages the delta; the counts are known on return.
    /// `retry_rejects`: rows still rejected are tried again (`run --retry-rejects`).
    pub fn stage(
        store: &DbStore,
        settings: &Settings,
        policy: Policy,
        target: Target,
        retry_rejects: bool,
    ) -> Result<SqlDiff, RunError> {
        let db = store.db.clone();
        let src = match &settings.source {
            crate::config::SourceSettings::Postgres(s) => s,
            _ => {
                return Err(config_error(
                    &db,
                    "the database mode reads a postgres source".into(),
                ))
            }
        };
        let query = sql::embeddable(&src.query).map_err(|p| {
            config_error(
                &db,
                match p {
                    sql::QueryProblem::Empty => "source.query is empty".into(),
                    sql::QueryProblem::Statements(at) => format!(
                        "source.query holds more than one statement (the first ends at character {at}); the database mode embeds it as a subquery: keep one SELECT (one trailing `;` is fine)"
                    ),
                },
            )
        })?;
        let statement = db.prepare(&query).map_err(read_error)?;
        let names: Vec<String> = statement
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        let types: Vec<Type> = statement
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        let plan = &settings.plan;
        let at = crate::source::positions(
            &db.what,
            &plan.columns,
            &names,
            "rename one in the query (… AS other_name)",
        )
        .map_err(|e| RunError::Snapshot(SnapshotError::Source(e)))?;
        let cols: Vec<Col> = at
            .iter()
            .map(|&i| Col::new(&names[i], types[i].clone()))
            .collect();
        let key_names: Vec<String> = plan.key_names().to_vec();
        let key_cols: Vec<Col> = plan.key.iter().map(|&i| cols[i].clone()).collect();
        let k = sql::key_expr(&key_names, &key_cols);
        let h = sql::hash_expr(&cols);
        let t = &db.tables;
        let baseline = t.baseline();
        let open = t.open_rejects();
        // Rows whose key and hash are those of their open reject under these rules stay
        // rejected (DESIGN.md "Rows that stay rejected"); no rules match under --retry-rejects.
        let rules: Option<String> = (!retry_rejects).then(|| settings.rules_identity());

        db.begin()?;
        let delta = match target {
            Target::Run => {
                db.execute(&format!("DELETE FROM {}", t.delta()), &[])?;
                t.delta()
            }
            Target::Plan => {
                db.batch(&format!(
                    "CREATE TEMP TABLE batchsync_delta (LIKE {} INCLUDING ALL) ON COMMIT DROP",
                    t.delta()
                ))?;
                "pg_temp.batchsync_delta".to_string()
            }
        };
        let stage = format!(
            "WITH s AS (
               SELECT {k} AS k, {h} AS h FROM ({query}
             ) AS u),
             g AS (SELECT DISTINCT ON (k) k, h, count(*) OVER (PARTITION BY k) AS n FROM s ORDER BY k),
             j AS (
               SELECT g.k AS gk, g.h, g.n, b.k AS bk, b.hash AS bh, b.present AS bp, o.hash AS oh
               FROM g FULL JOIN {baseline} AS b ON b.k = g.k
               LEFT JOIN {open} AS o ON o.k = g.k AND o.rules = $1::text
             ),
             x AS (
               SELECT coalesce(gk, bk) AS k, h, n, bh, bp,
                 CASE WHEN n IS NULL THEN 'removed'
                      WHEN gk IS NULL THEN 'null_key'
                      WHEN n > 1 THEN 'duplicate'
                      WHEN oh = h THEN 'still_rejected'
                      WHEN bk IS NULL THEN 'added'
                      WHEN NOT bp THEN 'reentered'
                      ELSE 'changed' END AS kind
               FROM j
               WHERE (n IS NULL AND bp)
                  OR (n IS NOT NULL AND (gk IS NULL OR n > 1 OR bk IS NULL OR NOT bp OR h IS DISTINCT FROM bh))
             )
             INSERT INTO {delta} (seq, kind, k, hash, old_hash, old_present, n)
             SELECT row_number() OVER (ORDER BY k COLLATE \"C\" NULLS FIRST), kind, k, h, bh, bp, n FROM x"
        );
        tracing::trace!(sql = %stage, "the stage statement");
        db.execute(&stage, &[&rules]).map_err(read_error)?;
        crate::crash::point("after_read");

        let mut by_kind = std::collections::HashMap::new();
        for r in db.query(
            &format!("SELECT kind, count(*), coalesce(sum(n), 0)::bigint, count(*) FILTER (WHERE old_present) FROM {delta} GROUP BY kind"),
            &[],
        )? {
            let kind: String = r.get(0);
            by_kind.insert(kind, (r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64, r.get::<_, i64>(3) as u64));
        }
        let count = |kind: &str| by_kind.get(kind).copied().unwrap_or_default();
        let present: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM {baseline} WHERE present"),
                &[],
            )?
            .get(0);
        let present = present as u64;

        let (added, reentered, changed, removed) = (
            count("added").0,
            count("reentered").0,
            count("changed").0,
            count("removed").0,
        );
        let (_, dup_rows, dup_present) = count("duplicate");
        let (_, null_rows, _) = count("null_key");
        // A row still rejected is in the baseline (present) when it was a rejected change.
        let (still, _, still_present) = count("still_rejected");
        let unchanged = present.saturating_sub(changed + removed + dup_present + still_present);
        let rows = unchanged + changed + added + reentered + dup_rows + null_rows + still;

        let mut settled = Diffed {
            baseline_rows: present,
            ..Diffed::default()
        };
        settled.counts.unchanged = unchanged;
        settled.counts.removed = removed;
        settled.counts.still_rejected = still;
        let mut fetch = Vec::new();
        let mut candidates = 0;
        for (kind, n) in [
            ("added", added),
            ("reentered", reentered),
            ("changed", changed),
        ] {
            if sends(kind, policy) {
                fetch.push(kind.to_string());
                candidates += n;
            } else {
                match kind {
                    "changed" => settled.counts.changed += n,
                    "reentered" => {
                        settled.counts.added += n;
                        settled.counts.reentered += n;
                    }
                    _ => settled.counts.added += n,
                }
            }
        }

        // Rows whose key is null: rejected, naming the first null key column, as locally.
        let mut loose = Vec::new();
        if null_rows > 0 {
            let flags: Vec<String> = key_cols
                .iter()
                .map(|c| format!("{} IS NULL", c.expr))
                .collect();
            for r in db
                .query(
                    &format!(
                        "SELECT {} FROM ({query}\n) AS u WHERE {k} IS NULL",
                        flags.join(", ")
                    ),
                    &[],
                )
                .map_err(read_error)?
            {
                let first = (0..key_cols.len())
                    .find(|&i| r.get::<_, bool>(i))
                    .unwrap_or(0);
                loose.push(LooseReject {
                    line: 0,
                    reject: Reject::new(
                        Some(&key_names[first]),
                        "key_null",
                        "a primary-key column is null",
                    ),
                });
            }
        }
        let duplicates = db
            .query(
                &format!("SELECT k, n, coalesce(old_present, false) FROM {delta} WHERE kind = 'duplicate' ORDER BY seq"),
                &[],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();

        // The fetch: the query again (the same snapshot), joined with the rows to send.
        // What crosses the wire per row: the baseline's presence (the kind: none is added,
        // false re-entered, true changed), the key text, the hashes, and the used columns.
        // A row that reads differently the second time is left out by the hash check, and the
        // count tells it. The check is `IS NOT DISTINCT FROM`, not `=`: an equality would be
        // taken as a second hash-join key, and the hash computed for every row of the query.
        let offset = 4;
        if candidates > 0 {
            let cid = &cols[plan.custom_id].expr;
            let list: Vec<String> = cols.iter().map(|c| c.expr.clone()).collect();
            db.execute(
                &format!(
                    "DECLARE {CURSOR} NO SCROLL CURSOR FOR
                     SELECT d.old_present, d.k, d.hash, d.old_hash, {}
                     FROM ({query}
                     ) AS u JOIN {delta} AS d ON d.k = {k}
                     WHERE d.kind = ANY($1) AND ({h}) IS NOT DISTINCT FROM d.hash
                     ORDER BY ({cid})::text COLLATE \"C\", d.seq",
                    list.join(", ")
                ),
                &[&fetch],
            )
            .map_err(read_error)?;
        }
        let decoder = RowDecoder::new(
            at.iter()
                .enumerate()
                .map(|(i, &q)| (offset + i, types[q].clone(), names[q].clone()))
                .collect(),
            settings.timezone,
        );
        *store.staged.borrow_mut() = Some(Staged {
            delta,
            candidates,
            defer_removals: !loose.is_empty(),
            record_only: policy.record_only,
        });
        tracing::debug!(
            rows,
            added,
            reentered,
            changed,
            removed,
            dup_rows,
            null_rows,
            candidates,
            bytes_received = db.received(),
            "staged"
        );
        Ok(SqlDiff {
            db,
            rows,
            loose,
            settled,
            duplicates,
            candidates,
            fetched: 0,
            fetching: candidates > 0,
            buffer: VecDeque::new(),
            decoder,
            encoder: PayloadEncoder::new(plan, settings.timezone),
            on_bad_row: settings.sync.on_bad_row,
            cells: Vec::new(),
        })
    }

    fn refill(&mut self) -> Result<(), RunError> {
        if self.fetched > 0 {
            // The cursor has yielded rows, some of them may be in the outbox already.
            crate::crash::point("mid_fetch");
        }
        let rows = self
            .db
            .query(&format!("FETCH {FETCH_BATCH} FROM {CURSOR}"), &[])
            .map_err(read_error)?;
        if rows.is_empty() {
            self.fetching = false;
            tracing::debug!(
                fetched = self.fetched,
                bytes_received = self.db.received(),
                "fetched"
            );
            self.db.batch(&format!("CLOSE {CURSOR}"))?;
            if self.fetched != self.candidates {
                return Err(query_error(&self.db, format!(
                    "the query gave {} of the {} rows to send on its second read in the same snapshot: it is not deterministic (a volatile function such as random() or clock_timestamp()?). Nothing was committed",
                    self.fetched, self.candidates
                )));
            }
        }
        self.buffer.extend(rows);
        Ok(())
    }

    fn step_of(&mut self, r: Row) -> Result<Step, RunError> {
        self.fetched += 1;
        let old_present: Option<bool> = r.get(0);
        let k: String = r.get(1);
        let hash = hash16(r.get::<_, &[u8]>(2));
        self.decoder.decode(&r, &mut self.cells);
        let (payload, bad) = self.encoder.encode(&mut self.cells);
        if let (Some(p), OnBadRow::Fail) = (&bad, self.on_bad_row) {
            let col = p
                .column
                .as_deref()
                .map(|c| format!("column {c:?}: "))
                .unwrap_or_default();
            return Err(RunError::Snapshot(SnapshotError::BadKey {
                what: self.db.what.clone(),
                key: k,
                reason: format!("{col}{} ({})", p.reason, p.rule),
            }));
        }
        let in_baseline = old_present == Some(true);
        let row = SnapRow {
            key: k.into_bytes(),
            hash,
            old_hash: None,
            profile: None,
            payload,
            at: None,
            // No line: the database's rows have none (rejects keep null).
            line: 0,
            bad: bad.map(Box::new),
        };
        let delta = if row.bad.is_some() {
            Delta::Bad { row, in_baseline }
        } else {
            match old_present {
                None => Delta::Added {
                    row,
                    reentry: false,
                },
                Some(false) => Delta::Added { row, reentry: true },
                Some(true) => Delta::Changed {
                    row,
                    old: hash16(r.get::<_, Option<&[u8]>>(3).unwrap_or_default()),
                },
            }
        };
        Ok((delta, None))
    }
}

fn hash16(b: &[u8]) -> RowHash {
    let mut h = RowHash::default();
    let n = b.len().min(16);
    h.0[..n].copy_from_slice(&b[..n]);
    h
}

impl DiffEngine for SqlDiff {
    fn rows(&self) -> u64 {
        self.rows
    }

    fn loose(&self) -> &[LooseReject] {
        &self.loose
    }

    fn settled(&self) -> Diffed {
        self.settled
    }

    fn next_step(&mut self) -> Option<Result<Step, RunError>> {
        if let Some((k, n, in_baseline)) = self.duplicates.pop_front() {
            let rows = (0..n.max(2))
                .map(|_| SnapRow {
                    key: k.clone().into_bytes(),
                    hash: RowHash::default(),
                    old_hash: None,
                    profile: None,
                    payload: Vec::new(),
                    at: None,
                    line: 0,
                    bad: None,
                })
                .collect();
            return Some(Ok((Delta::Duplicate { rows, in_baseline }, None)));
        }
        if self.buffer.is_empty() && self.fetching {
            if let Err(e) = self.refill() {
                self.fetching = false;
                return Some(Err(e));
            }
        }
        let r = self.buffer.pop_front()?;
        Some(self.step_of(r))
    }
}
