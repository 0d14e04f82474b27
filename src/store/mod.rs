//! The SQLite state store: runs, the baseline snapshot, the outbox of requests, the rejects.
//!
//! Invariants:
//! - Opened in WAL mode with `synchronous = FULL`, foreign keys on and a busy timeout (asserted
//!   by a test); migrations are append-only (`schema`).
//! - One durable change, one transaction, opened `IMMEDIATE`: a run's commit ([`commit`]), and
//!   then one per answer from Batch ([`outbox`]). None is held across a network call.
//! - Crash points: before a run's commit the store is as it was; after it, the run's baseline,
//!   requests, rejects and run record all exist. Each answer is recorded whole or not at all.
//! - No secret is ever written here: request bodies hold events, never keys.

mod baseline;
pub mod commit;
pub(crate) mod history;
pub mod outbox;
mod schema;
mod staged;

pub use baseline::BaselineIter;

use crate::core::encode::RowHash;
use crate::core::run::{Counts, RunStatus, RunSummary};
use crate::state::{OpenRejects, RunLog, StateStore};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use std::path::{Path, PathBuf};

pub use crate::state::StoreError;

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
}

pub(crate) trait Ctx<T> {
    fn ctx(self, path: &Path) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, rusqlite::Error> {
    fn ctx(self, path: &Path) -> Result<T> {
        self.map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        })
    }
}

pub use crate::state::RejectRecord;

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Store {
    /// Opens (creating it and its directory if needed) and migrates the store.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        let conn = Connection::open(path).ctx(path)?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.configure()?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing store for reading only (`plan`, `status`, `rejects`); `None` when there
    /// is no store yet. Creates nothing and takes no write lock.
    pub fn open_read(path: &Path) -> Result<Option<Store>> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .ctx(path)?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx(path)?;
        if version as usize > schema::MIGRATIONS.len() {
            return Err(store.corrupt(format!(
                "schema version {version} is newer than this batchsync knows; upgrade batchsync"
            )));
        }
        if version == 0 {
            return Ok(None);
        }
        Ok(Some(store))
    }

    /// A second connection on the same file, for reading the committed baseline while this one
    /// writes the run's commit.
    pub fn reader(&self) -> Result<Store> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ctx(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .ctx(&self.path)?;
        Ok(Store {
            conn,
            path: self.path.clone(),
        })
    }

    pub(crate) fn corrupt(&self, message: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn configure(&self) -> Result<()> {
        let p = &self.path;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .ctx(p)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .ctx(p)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(self.corrupt(format!("cannot switch to WAL (journal_mode is {mode})")));
        }
        self.conn
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = FILE; PRAGMA cache_size = -65536;")
            .ctx(p)
    }

    fn migrate(&self) -> Result<()> {
        let p = &self.path;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx(p)?;
        let version = version as usize;
        if version > schema::MIGRATIONS.len() {
            return Err(self.corrupt(format!(
                "schema version {version} is newer than this batchsync knows; upgrade batchsync"
            )));
        }
        for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version) {
            let number = i + 1;
            // Each migration whole or not at all: the transaction rolls back on drop, also
            // when the COMMIT itself fails.
            let tx =
                Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).ctx(p)?;
            tx.execute_batch(sql).ctx(p)?;
            for (_, step) in schema::DATA_STEPS.iter().filter(|(n, _)| *n == number) {
                step(self)?;
            }
            tx.execute_batch(&format!("PRAGMA user_version = {number}"))
                .ctx(p)?;
            tx.commit().ctx(p)?;
        }
        Ok(())
    }

    pub fn pragma(&self, name: &str) -> Result<String> {
        self.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .ctx(&self.path)
    }

    pub fn meta(&self, name: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .ctx(&self.path)
    }

    /// Present entries of the baseline (tombstones not counted): a full read, for `status`.
    /// A run counts them as its merge reads the baseline.
    /// Present entries of the baseline: the count each commit records (and each answer that
    /// puts entries back keeps true), so `status` reads no baseline; a full read on a store
    /// whose last commit predates the count.
    pub fn baseline_present(&self) -> Result<u64> {
        if let Some(n) = self.meta("present_rows")?.and_then(|v| v.parse().ok()) {
            return Ok(n);
        }
        self.baseline_present_counted()
    }

    /// Present entries of the baseline, counted by reading all of it.
    pub fn baseline_present_counted(&self) -> Result<u64> {
        let (mut n, mut entries) = (0, self.baseline_iter());
        while let Some(e) = entries.peek()? {
            n += e.present as u64;
            entries.advance()?;
        }
        Ok(n)
    }

    /// The baseline in key order (memory: one page per layer).
    pub fn baseline_iter(&self) -> BaselineIter<'_> {
        BaselineIter::new(self)
    }

    /// The baseline's entry for one key: (hash, present), or `None`.
    pub fn baseline_get(&self, key: &[u8]) -> Result<Option<baseline::Held>> {
        baseline::lookup(self, key)
    }

    /// The last runs, newest first, as their summaries were kept.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunSummary>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, started_at, finished_at, status, rows, added, changed, removed, rejected, events, events_sent,
                        events_pending, requests, retries, error, unchanged, reentered, resumed_requests, duration_ms,
                        sent_nothing_reason, still_rejected, profile_updates, rehashed, requests_pending
                 FROM run ORDER BY id DESC LIMIT ?1",
            )
            .ctx(&self.path)?;
        let rows = st
            .query_map([limit as i64], |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
                Ok(RunSummary {
                    run_id: Some(r.get(0)?),
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    status: r.get(3)?,
                    counts: Counts {
                        rows: n(4)?,
                        added: n(5)?,
                        changed: n(6)?,
                        removed: n(7)?,
                        rejected: n(8)?,
                        events: n(9)?,
                        events_sent: n(10)?,
                        events_pending: n(11)?,
                        requests: n(12)?,
                        retries: n(13)?,
                        unchanged: n(15)?,
                        reentered: n(16)?,
                        resumed_requests: n(17)?,
                        still_rejected: n(20)?,
                        profile_updates: n(21)?,
                        profile_changed: 0,
                        rehashed: n(22)?,
                        requests_pending: n(23)?,
                    },
                    error: r.get(14)?,
                    duration_ms: n(18)?,
                    sent_nothing_reason: r.get(19)?,
                })
            })
            .ctx(&self.path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx(&self.path)?;
        Ok(rows)
    }

    pub fn rejects(&self, run: Option<i64>, limit: usize) -> Result<Vec<RejectRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT run_id, key, line, column_name, rule, reason, source FROM reject
                 WHERE ?1 IS NULL OR run_id = ?1 ORDER BY id LIMIT ?2",
            )
            .ctx(&self.path)?;
        let rows = st
            .query_map(params![run, limit as i64], |r| {
                Ok(RejectRecord {
                    first_run_id: None,
                    run_id: r.get(0)?,
                    key: r.get(1)?,
                    line: r.get::<_, Option<i64>>(2)?.map(|l| l as u64),
                    column: r.get(3)?,
                    rule: r.get(4)?,
                    reason: r.get(5)?,
                    source: r.get(6)?,
                })
            })
            .ctx(&self.path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx(&self.path)?;
        Ok(rows)
    }

    /// The rows rejected now: the open rejects, one per key (the run that first rejected it,
    /// the latest that found it rejected, its latest reject's reason), and the rejects of the
    /// last committed run that cannot stay open (rows sharing a key, rows whose key could not
    /// be read): those are found again by every run until fixed.
    pub fn open_reject_list(&self, limit: usize) -> Result<Vec<RejectRecord>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT first_run, last_run, key, line, column_name, rule, reason, source FROM (
                   SELECT o.first_run, o.last_run, r.key, r.line, r.column_name, r.rule, r.reason, r.source, r.id
                   FROM open_reject o JOIN reject r ON r.id = o.reject_id
                   UNION ALL
                   SELECT r.run_id, r.run_id, r.key, r.line, r.column_name, r.rule, r.reason, r.source, r.id
                   FROM reject r
                   WHERE r.run_id = (SELECT max(id) FROM run WHERE committed = 1) AND r.source = 'local'
                     AND NOT EXISTS (SELECT 1 FROM open_reject o WHERE o.reject_id = r.id)
                 ) ORDER BY first_run, id LIMIT ?1",
            )
            .ctx(&self.path)?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(RejectRecord {
                    first_run_id: Some(r.get(0)?),
                    run_id: r.get(1)?,
                    key: r.get(2)?,
                    line: r.get::<_, Option<i64>>(3)?.map(|l| l as u64),
                    column: r.get(4)?,
                    rule: r.get(5)?,
                    reason: r.get(6)?,
                    source: r.get(7)?,
                })
            })
            .ctx(&self.path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx(&self.path)?;
        Ok(rows)
    }

    pub fn reject_counts(&self) -> Result<Vec<(i64, u64)>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT run_id, COUNT(*) FROM reject GROUP BY run_id ORDER BY run_id DESC LIMIT 20",
            )
            .ctx(&self.path)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .ctx(&self.path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx(&self.path)?;
        Ok(rows)
    }

    pub fn integrity_check(&self) -> Result<String> {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .ctx(&self.path)
    }
}

impl ToSql for RunStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RunStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        RunStatus::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown run status {s:?}").into()))
    }
}

/// The columns of a run record that its summary sets, in the order of [`summary_params`].
const SUMMARY_COLUMNS: &str = "finished_at = ?2, status = ?3, rows = ?4, added = ?5, changed = ?6, removed = ?7,
    rejected = ?8, events = ?9, events_sent = ?10, events_pending = ?11, requests = ?12, retries = ?13, error = ?14,
    unchanged = ?15, reentered = ?16, resumed_requests = ?17, duration_ms = ?18, sent_nothing_reason = ?19,
    still_rejected = ?20, profile_updates = ?21, rehashed = ?22, requests_pending = ?23";

fn summary_params(run_id: i64, s: &RunSummary) -> [rusqlite::types::Value; 23] {
    use rusqlite::types::Value as V;
    let n = |v: u64| V::Integer(v as i64);
    let t = |v: &Option<String>| v.clone().map_or(V::Null, V::Text);
    let c = &s.counts;
    [
        V::Integer(run_id),
        V::Text(s.finished_at.clone().unwrap_or_else(now_rfc3339)),
        V::Text(s.status.as_str().into()),
        n(c.rows),
        n(c.added),
        n(c.changed),
        n(c.removed),
        n(c.rejected),
        n(c.events),
        n(c.events_sent),
        n(c.events_pending),
        n(c.requests),
        n(c.retries),
        t(&s.error),
        n(c.unchanged),
        n(c.reentered),
        n(c.resumed_requests),
        n(s.duration_ms),
        t(&s.sent_nothing_reason),
        n(c.still_rejected),
        n(c.profile_updates),
        n(c.rehashed),
        n(c.requests_pending),
    ]
}

impl RunLog for Store {
    fn record_failed_run(&self, summary: &RunSummary) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO run (started_at, status, committed) VALUES (?1, ?2, 0)",
                params![summary.started_at, RunStatus::Failed],
            )
            .ctx(&self.path)?;
        let id = self.conn.last_insert_rowid();
        self.finish_run(id, summary)?;
        Ok(id)
    }

    fn record_resume_run(&self, started_at: &str) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO run (started_at, status, committed) VALUES (?1, ?2, 0)",
                params![started_at, RunStatus::Shipping],
            )
            .ctx(&self.path)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn finish_run(&self, run_id: i64, summary: &RunSummary) -> Result<()> {
        self.conn
            .execute(
                &format!("UPDATE run SET {SUMMARY_COLUMNS} WHERE id = ?1"),
                rusqlite::params_from_iter(summary_params(run_id, summary)),
            )
            .ctx(&self.path)?;
        Ok(())
    }

    fn close_interrupted_runs(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE run SET status = ?1, finished_at = COALESCE(finished_at, ?2),
                        events_pending = (SELECT COALESCE(SUM(events), 0) FROM request WHERE state = 'pending'),
                        requests_pending = (SELECT COUNT(*) FROM request WHERE state = 'pending')
                 WHERE status IN (?3, ?4)",
                params![
                    RunStatus::Interrupted,
                    now_rfc3339(),
                    RunStatus::Shipping,
                    RunStatus::Committed
                ],
            )
            .ctx(&self.path)
    }
}

impl StateStore for Store {
    type Commit<'a> = commit::RunWriter<'a>;

    /// Refuses a store whose baseline was computed under another key or column set.
    fn profile_identity(&self) -> Result<Option<String>> {
        self.meta("profile")
    }

    fn stored_identity(&self) -> Result<Option<String>> {
        self.meta("identity")
    }

    fn check_identity(&self, identity: &str) -> Result<()> {
        match self.meta("identity")? {
            Some(stored) if stored != identity && self.has_baseline()? => {
                Err(StoreError::Identity {
                    path: self.path.clone(),
                    stored,
                    current: identity.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether a run has committed a baseline (the first run's `initial` policy no longer applies).
    fn has_baseline(&self) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM run WHERE committed = 1)",
                [],
                |r| r.get(0),
            )
            .ctx(&self.path)
    }

    fn open_rejects(&self, rules: &str) -> Result<OpenRejects> {
        let mut st = self
            .conn
            .prepare("SELECT key, hash FROM open_reject WHERE rules = ?1")
            .ctx(&self.path)?;
        let rows = st
            .query_map([rules], |r| {
                let key: Vec<u8> = r.get(0)?;
                let hash: Vec<u8> = r.get(1)?;
                let mut h = RowHash::default();
                let n = hash.len().min(16);
                h.0[..n].copy_from_slice(&hash[..n]);
                Ok((key, h))
            })
            .ctx(&self.path)?
            .collect::<rusqlite::Result<OpenRejects>>()
            .ctx(&self.path)?;
        Ok(rows)
    }

    fn begin_run(
        &self,
        started_at: &str,
        existing: Option<i64>,
        rules: &str,
    ) -> Result<commit::RunWriter<'_>> {
        self.open_run(started_at, existing, rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::diff::BaseRow;
    use crate::state::{Commit, Sink};

    #[test]
    fn the_store_opens_in_wal_with_full_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("sub/state.db")).unwrap();
        assert_eq!(s.pragma("journal_mode").unwrap(), "wal");
        assert_eq!(s.pragma("synchronous").unwrap(), "2"); // FULL
        assert_eq!(s.pragma("foreign_keys").unwrap(), "1");
        assert_eq!(s.pragma("busy_timeout").unwrap(), "10000");
        assert_eq!(
            s.pragma("user_version").unwrap(),
            schema::MIGRATIONS.len().to_string()
        );
        assert!(
            baseline::layers(&s).unwrap().is_empty(),
            "a new store has no baseline layer until its first commit"
        );
    }

    #[test]
    fn reopening_does_not_migrate_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        drop(Store::open(&p).unwrap());
        let s = Store::open(&p).unwrap();
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn reading_a_missing_store_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.db");
        assert!(Store::open_read(&p).unwrap().is_none());
        assert!(!p.exists());
    }

    #[test]
    fn a_schema_1_baseline_is_packed_into_layers_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            // A store as batchsync with schema 1 left it: one row per key.
            let c = Connection::open(&p).unwrap();
            c.execute_batch(schema::MIGRATIONS[0]).unwrap();
            c.execute_batch("PRAGMA user_version = 1").unwrap();
            c.execute_batch("BEGIN").unwrap();
            c.execute("INSERT INTO run (id, started_at, status, committed) VALUES (1, 'x', 'completed', 1)", []).unwrap();
            for k in (0u16..40_000).rev() {
                c.execute(
                    "INSERT INTO baseline (key, hash, present, run_id) VALUES (?1, ?2, ?3, 1)",
                    rusqlite::params![
                        k.to_be_bytes().to_vec(),
                        vec![k as u8; 16],
                        (k % 3 != 0) as i64
                    ],
                )
                .unwrap();
            }
            c.execute_batch("COMMIT").unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(
            s.pragma("user_version").unwrap(),
            schema::MIGRATIONS.len().to_string()
        );
        let rows: Vec<BaseRow> = s.baseline_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 40_000);
        assert!(rows.windows(2).all(|w| w[0].key < w[1].key));
        for (k, r) in (0u16..40_000).zip(&rows) {
            assert_eq!(r.key, k.to_be_bytes());
            assert_eq!(r.hash, RowHash([k as u8; 16]));
            assert_eq!(r.present, k % 3 != 0);
        }
        let legacy: i64 = s
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'baseline%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(legacy, 0, "the old table is gone");
        assert_eq!(s.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_run_record_keeps_the_summary_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let id = s.record_resume_run("2026-01-01T00:00:00.000Z").unwrap();
        let mut summary = RunSummary::new("2026-01-01T00:00:00.000Z");
        summary.run_id = Some(id);
        summary.status = RunStatus::Partial;
        summary.finished_at = Some("2026-01-01T00:00:01.000Z".into());
        summary.duration_ms = 1234;
        summary.sent_nothing_reason = Some("why".into());
        summary.error = Some("what".into());
        summary.counts = Counts {
            rows: 1,
            added: 2,
            reentered: 3,
            changed: 4,
            removed: 5,
            unchanged: 6,
            rejected: 7,
            events: 8,
            events_sent: 9,
            events_pending: 10,
            requests: 11,
            retries: 12,
            resumed_requests: 13,
            still_rejected: 14,
            profile_updates: 15,
            profile_changed: 0,
            rehashed: 16,
            requests_pending: 17,
        };
        s.finish_run(id, &summary).unwrap();
        assert_eq!(s.runs(1).unwrap(), vec![summary]);
    }

    #[test]
    fn a_run_status_outside_the_enum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        let id = s.record_resume_run("x").unwrap();
        let bad = s
            .conn
            .execute("UPDATE run SET status = 'shiping' WHERE id = ?1", [id]);
        assert!(bad.unwrap_err().to_string().contains("RunStatus"));
        let bad = s.conn.execute(
            "INSERT INTO run (started_at, status, committed) VALUES ('x', 'done', 0)",
            [],
        );
        assert!(bad.is_err());
        s.close_interrupted_runs().unwrap();
        assert_eq!(s.runs(1).unwrap()[0].status, RunStatus::Interrupted);
    }

    #[test]
    fn a_failed_commit_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        {
            let mut w = s.begin_run("x", None, "r").unwrap();
            w.put(b"k", RowHash([1; 16]), None).unwrap();
            // Dropped without a commit: rolled back.
        }
        assert!(
            s.conn.is_autocommit(),
            "the dropped run's transaction is closed"
        );
        assert!(!s.has_baseline().unwrap());
        assert!(s.runs(10).unwrap().is_empty());

        // A COMMIT that fails (here a deferred foreign key) rolls back too.
        let mut w = s.begin_run("x", None, "r").unwrap();
        w.put(b"k", RowHash([1; 16]), None).unwrap();
        s.conn
            .execute_batch(
                "PRAGMA defer_foreign_keys = ON;
                 INSERT INTO reject (run_id, rule, reason, source) VALUES (999, 'r', 'x', 'local');",
            )
            .unwrap();
        let meta = crate::state::CommitMeta {
            identity: "id",
            profile: "",
            backfill: false,
            mass_update_from: 10_000,
            keep_runs: 1000,
        };
        let err = w.commit(&Counts::default(), &meta).unwrap_err();
        let err = crate::errors::chain(&err);
        assert!(err.contains("FOREIGN KEY"), "{err}");
        assert!(
            s.conn.is_autocommit(),
            "the failed commit's transaction is closed"
        );
        assert!(!s.has_baseline().unwrap());
        s.begin_run("y", None, "r").unwrap();
    }
}
