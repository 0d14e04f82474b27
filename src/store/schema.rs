//! Migrations of the state store, applied in order and tracked by `PRAGMA user_version`.
//!
//! Invariant: a migration that has landed is never edited; a change is a new entry at the end.
//! A migration whose data cannot move in SQL alone names a step in [`DATA_STEPS`], run in the
//! same transaction right after its SQL.

pub const MIGRATIONS: &[&str] = &[
    // 1: runs, baseline, outbox, rejects.
    r#"
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE run (
        id             INTEGER PRIMARY KEY,
        started_at     TEXT NOT NULL,
        finished_at    TEXT,
        status         TEXT NOT NULL,
        committed      INTEGER NOT NULL,
        rows           INTEGER NOT NULL DEFAULT 0,
        added          INTEGER NOT NULL DEFAULT 0,
        changed        INTEGER NOT NULL DEFAULT 0,
        removed        INTEGER NOT NULL DEFAULT 0,
        rejected       INTEGER NOT NULL DEFAULT 0,
        events         INTEGER NOT NULL DEFAULT 0,
        events_sent    INTEGER NOT NULL DEFAULT 0,
        events_pending INTEGER NOT NULL DEFAULT 0,
        requests       INTEGER NOT NULL DEFAULT 0,
        retries        INTEGER NOT NULL DEFAULT 0,
        error          TEXT
    );

    CREATE TABLE baseline (
        key     BLOB PRIMARY KEY,
        hash    BLOB NOT NULL,
        present INTEGER NOT NULL,
        run_id  INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE request (
        id               TEXT PRIMARY KEY,
        run_id           INTEGER NOT NULL REFERENCES run(id),
        endpoint         TEXT NOT NULL,
        operations       INTEGER NOT NULL,
        events           INTEGER NOT NULL,
        body             BLOB NOT NULL,
        manifest         BLOB NOT NULL,
        state            TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        delivered_events INTEGER NOT NULL DEFAULT 0,
        last_error       TEXT,
        answered_at      TEXT
    );
    CREATE INDEX request_pending ON request(id) WHERE state = 'pending';

    CREATE TABLE reject (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER NOT NULL REFERENCES run(id),
        key         TEXT,
        line        INTEGER,
        column_name TEXT,
        rule        TEXT NOT NULL,
        reason      TEXT NOT NULL,
        source      TEXT NOT NULL,
        request_id  TEXT
    );
    CREATE INDEX reject_run ON reject(run_id);
    "#,
    // 2: the baseline as sorted layers of packed pages (store::baseline); the rows of the
    // one-row-per-key table are packed into a base layer by the data step, then dropped.
    r#"
    CREATE TABLE base_layer (
        id      INTEGER PRIMARY KEY,
        kind    TEXT NOT NULL CHECK (kind IN ('base', 'delta')),
        run_id  INTEGER NOT NULL,
        entries INTEGER NOT NULL
    );

    CREATE TABLE base_page (
        id      INTEGER PRIMARY KEY,
        layer   INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        last    BLOB NOT NULL,
        entries INTEGER NOT NULL,
        data    BLOB NOT NULL,
        UNIQUE (layer, seq)
    );
    CREATE INDEX base_page_last ON base_page(layer, last);

    ALTER TABLE baseline RENAME TO baseline_v1;
    "#,
    // 3: a run record keeps the whole run summary (core::run::RunSummary), and its status is
    // one of core::run::RunStatus (SQLite cannot add a CHECK to a column in place: triggers).
    // Runs of older versions left 'committing' only inside their own transaction.
    r#"
    ALTER TABLE run ADD COLUMN unchanged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run ADD COLUMN reentered INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run ADD COLUMN resumed_requests INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run ADD COLUMN duration_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run ADD COLUMN sent_nothing_reason TEXT;

    CREATE TRIGGER run_status_insert BEFORE INSERT ON run
    WHEN NEW.status NOT IN ('committing', 'shipping', 'committed', 'completed', 'partial', 'failed', 'interrupted')
    BEGIN SELECT RAISE(ABORT, 'run.status must be a RunStatus'); END;

    CREATE TRIGGER run_status_update BEFORE UPDATE OF status ON run
    WHEN NEW.status NOT IN ('committing', 'shipping', 'committed', 'completed', 'partial', 'failed', 'interrupted')
    BEGIN SELECT RAISE(ABORT, 'run.status must be a RunStatus'); END;
    "#,
    // 4: rows that stay rejected (DESIGN.md): the open rejects, one per key, with the hash and
    // the rules it was rejected under and its latest reject record; requests keep the rules
    // their events were built under (rows Batch drops become open rejects under them).
    r#"
    ALTER TABLE run ADD COLUMN still_rejected INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE request ADD COLUMN rules TEXT;
    CREATE TABLE open_reject (
        key       BLOB PRIMARY KEY,
        hash      BLOB NOT NULL,
        rules     TEXT NOT NULL,
        first_run INTEGER NOT NULL,
        last_run  INTEGER NOT NULL,
        reject_id INTEGER NOT NULL REFERENCES reject(id)
    ) WITHOUT ROWID;
    "#,
    // 5: each row's history (`explain`): one line per delta row a run changed, and per answer
    // that dropped a row; the request that carried its event and where in it (operation `op`,
    // event `ev`: answered requests keep their bodies now), the reject that says why. `at` is
    // set for lines of answers; a run's lines take its start. Pruned with old runs
    // (`[state] keep_runs`), as are requests no longer pending (`request_run`).
    r#"
    CREATE TABLE history (
        id         INTEGER PRIMARY KEY,
        run_id     INTEGER NOT NULL,
        key        BLOB NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('added', 'reentered', 'changed', 'removed', 'rejected', 'still_rejected', 'restored')),
        hash       BLOB,
        request_id TEXT,
        op         INTEGER,
        ev         INTEGER,
        reject_id  INTEGER,
        at         TEXT
    );
    CREATE INDEX history_key ON history(key, run_id);
    CREATE INDEX history_run ON history(run_id);
    CREATE INDEX request_run ON request(run_id);
    "#,
    // 6: profile attributes (DESIGN.md): a run counts the operations that carry them (and the
    // entries it rewrote under a new hash recipe, `rehashed`, and the requests it left
    // pending, which profile updates alone make more than its events say), and a
    // row's history has a `profile` line for an update of them alone (SQLite cannot change a
    // CHECK in place: the table is copied). The baseline's pages take a new entry state for
    // the profile hash (store::baseline): older entries read as never sent.
    r#"
    ALTER TABLE run ADD COLUMN profile_updates INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run ADD COLUMN rehashed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE run ADD COLUMN requests_pending INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE history_v6 (
        id         INTEGER PRIMARY KEY,
        run_id     INTEGER NOT NULL,
        key        BLOB NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('added', 'reentered', 'changed', 'removed', 'rejected', 'still_rejected', 'restored', 'profile')),
        hash       BLOB,
        request_id TEXT,
        op         INTEGER,
        ev         INTEGER,
        reject_id  INTEGER,
        at         TEXT
    );
    INSERT INTO history_v6 SELECT id, run_id, key, kind, hash, request_id, op, ev, reject_id, at FROM history;
    DROP TABLE history;
    ALTER TABLE history_v6 RENAME TO history;
    CREATE INDEX history_key ON history(key, run_id);
    CREATE INDEX history_run ON history(run_id);
    "#,
];

/// A migration's data step, run after its SQL in the same transaction.
pub type DataStep = fn(&super::Store) -> super::Result<()>;

/// (migration number, step).
pub const DATA_STEPS: &[(usize, DataStep)] = &[(2, super::baseline::pack_legacy)];
