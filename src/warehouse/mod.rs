//! The database mode (WAREHOUSE.md): a sync's whole state inside the PostgreSQL database that
//! holds its segment. The snapshot, the hashes and the diff run there as SQL
//! ([`diff::SqlDiff`], a [`DiffEngine`](crate::pipeline::diff::DiffEngine)); the baseline, the
//! delta, the outbox, the rejects and the run records are tables of the sync's own
//! ([`store::DbStore`], a [`StateStore`](crate::state::StateStore)). Mapping, packing, the
//! guards, shipping and the run's bookkeeping are the local mode's own code.
//!
//! ```text
//! lock (pg_try_advisory_lock, on the run's connection) → resume → BEGIN REPEATABLE READ
//!   → stage (one INSERT … SELECT: query ⟗ baseline → <name>_delta) → counts → guards
//!   → fetch (cursor over the rows that become events) → map → outbox, rejects
//!   → baseline takes the delta → run record → COMMIT → ship (one transaction per answer)
//! ```
//!
//! Invariants:
//! - A run never creates or migrates tables: `batchsync setup` does. Missing tables, or tables
//!   of another version or recipe, stop a run with exit 2 naming `setup` ([`verify`]).
//! - Nothing of a run is visible before its COMMIT; a crash or a lost connection anywhere
//!   before it leaves the database as it was (PostgreSQL rolls back).
//! - The client is tokio-postgres on a runtime of its own (one worker thread drives the
//!   connection); calls block on the client's futures, so the store is usable from the
//!   pipeline's plain code and from inside the send loop's runtime alike.

pub mod diff;
pub mod sql;
pub mod store;

use crate::config::{Settings, SourceSettings};
use crate::source::postgres::{self as pg, ConnectionError, Target};
use crate::state::StoreError;
use sql::{ident, literal, Tables};
use std::cell::Cell;
use std::future::Future;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

/// The schema version `setup` writes and every run requires.
pub const SCHEMA_VERSION: i64 = 1;

/// One connection to the sync's database, with the session pinned (see [`sql::SESSION`]).
pub struct Db {
    rt: tokio::runtime::Runtime,
    client: Client,
    lost: ConnectionError,
    /// The database, without credentials: `postgres://user@host:port/db`.
    pub what: String,
    pub tables: Tables,
    in_tx: Cell<bool>,
    /// Where it connected: counts the bytes received on its socket.
    target: Target,
}

fn database(settings: &Settings) -> Result<&crate::config::DatabaseSettings, StoreError> {
    match &settings.source {
        SourceSettings::Postgres(db) => Ok(db),
        _ => Err(StoreError::NotSetUp {
            what: settings.file.display().to_string(),
            message: "[state] store = \"database\" needs a postgres source".into(),
        }),
    }
}

impl Db {
    /// Connects to the source's database and pins the session's settings.
    pub fn connect(settings: &Settings) -> Result<Db, StoreError> {
        let wh = settings
            .warehouse
            .as_ref()
            .ok_or_else(|| StoreError::NotSetUp {
                what: settings.file.display().to_string(),
                message: "[state] store is not \"database\"".into(),
            })?;
        let src = database(settings)?;
        let target =
            Target::new(&src.url, src.password_env.as_deref(), src.timeout).map_err(|e| {
                StoreError::Database {
                    what: "source.url".into(),
                    message: crate::errors::chain(&e),
                }
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("batchsync-db")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database {
                what: target.what.clone(),
                message: format!("cannot start the driver's runtime: {e}"),
            })?;
        let (client, lost) = rt
            .block_on(target.connect())
            .map_err(|e| StoreError::Database {
                what: target.what.clone(),
                message: crate::errors::chain(&e),
            })?;
        let db = Db {
            rt,
            client,
            lost,
            what: target.what.clone(),
            tables: Tables {
                schema: wh.schema.clone(),
                name: wh.name.clone(),
            },
            in_tx: Cell::new(false),
            target,
        };
        let timeout = src.timeout.as_millis().min(i32::MAX as u128);
        // The server's keepalives on its side: a client host that vanishes without closing
        // its socket frees the sync's lock within about a minute, not the default two hours.
        db.batch(&format!(
            "{}; SET statement_timeout = {timeout}; SET application_name = 'batchsync'; \
             SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3",
            sql::SESSION
        ))?;
        Ok(db)
    }

    /// Bytes received from the server on this connection's socket so far.
    pub fn received(&self) -> u64 {
        self.target.received()
    }

    /// Runs a client future to its end on this thread; the connection runs on the runtime.
    fn block<F: Future>(&self, f: F) -> F::Output {
        let _keep = &self.rt;
        futures_executor::block_on(f)
    }

    /// The database's error, in its own words (severity, message, SQLSTATE, detail).
    pub fn error(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Database {
            what: self.what.clone(),
            message: pg::message(e, Some(&self.lost)),
        }
    }

    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        self.block(self.client.batch_execute(sql))
            .map_err(|e| self.error(&e))
    }

    pub fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        self.block(self.client.execute(sql, params))
            .map_err(|e| self.error(&e))
    }

    pub fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.block(self.client.query(sql, params))
            .map_err(|e| self.error(&e))
    }

    pub fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        self.block(self.client.query_opt(sql, params))
            .map_err(|e| self.error(&e))
    }

    pub fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        self.block(self.client.query_one(sql, params))
            .map_err(|e| self.error(&e))
    }

    pub fn prepare(&self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        self.block(self.client.prepare(sql))
            .map_err(|e| self.error(&e))
    }

    /// Opens the run's transaction: one snapshot for every statement in it.
    pub fn begin(&self) -> Result<(), StoreError> {
        self.settle()?;
        self.batch("BEGIN ISOLATION LEVEL REPEATABLE READ")?;
        self.in_tx.set(true);
        Ok(())
    }

    pub fn in_tx(&self) -> bool {
        self.in_tx.get()
    }

    pub fn commit(&self) -> Result<(), StoreError> {
        self.in_tx.set(false);
        self.batch("COMMIT")
    }

    /// Rolls back a transaction left open (a commit dropped, a stage that failed): what is
    /// written outside a run's commit never lands inside it.
    pub fn settle(&self) -> Result<(), StoreError> {
        if self.in_tx.replace(false) {
            self.batch("ROLLBACK")?;
        }
        Ok(())
    }

    /// Several statements in one small transaction of their own (an answer's record).
    pub fn tx<T>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.settle()?;
        self.batch("BEGIN")?;
        self.in_tx.set(true);
        let v = f(self)?;
        self.commit()?;
        Ok(v)
    }
}

/// The advisory lock's first key: the same for every sync ("bsya"); the second is the hash
/// of [`lock_key`].
pub const LOCK_CLASS: i32 = 0x6273_7961;

/// What names one sync's lock.
pub fn lock_key(t: &Tables) -> String {
    format!("batchsync:{}.{}", t.schema, t.name)
}

/// How many times a run tries again, 40 ms apart (a second in all), when the lock is taken:
/// the server frees a killed run's lock only once it sees the connection closed.
const LOCK_RETRIES: u32 = 25;

impl Db {
    /// The run lock of the database mode: `pg_try_advisory_lock` on this connection, the one
    /// every statement of the run goes through, held until it closes. Not on a connection of
    /// its own (as WAREHOUSE.md first had it): a run whose lock connection alone died would go
    /// on without the lock while another run took it; on the run's own connection, losing the
    /// lock is losing the run, which stops at its next statement.
    pub fn lock(&self) -> Result<(), crate::pipeline::RunError> {
        for attempt in 0..=LOCK_RETRIES {
            let got: bool = self
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&LOCK_CLASS, &lock_key(&self.tables)],
                )?
                .get(0);
            if got {
                return Ok(());
            }
            if attempt < LOCK_RETRIES {
                std::thread::sleep(std::time::Duration::from_millis(40));
            }
        }
        Err(crate::lock::LockError::Held {
            path: self.tables.describe().into(),
            holder: format!("an advisory lock in {}", self.what),
        }
        .into())
    }
}

/// What `setup` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetupReport {
    pub database: String,
    pub schema: String,
    pub created: Vec<String>,
    pub existing: Vec<String>,
}

/// The tables of one sync, in creation order, as `CREATE TABLE` bodies.
fn table_defs(t: &Tables) -> Vec<(String, String)> {
    use crate::core::run::RunStatus;
    let statuses: Vec<String> = RunStatus::ALL.iter().map(|s| literal(s.as_str())).collect();
    let defs: Vec<(&str, String)> = vec![
        (
            "meta",
            "(name text PRIMARY KEY, value text NOT NULL)".into(),
        ),
        (
            "runs",
            format!(
                "(run_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                  status text NOT NULL CHECK (status IN ({})),
                  started_at text NOT NULL,
                  committed boolean NOT NULL DEFAULT false,
                  summary jsonb NOT NULL DEFAULT '{{}}')",
                statuses.join(", ")
            ),
        ),
        (
            "baseline",
            "(k text COLLATE \"C\" PRIMARY KEY,
              hash bytea NOT NULL,
              present boolean NOT NULL,
              run_id bigint NOT NULL)"
                .into(),
        ),
        (
            "delta",
            "(seq bigint PRIMARY KEY,
              kind text NOT NULL,
              k text COLLATE \"C\",
              hash bytea,
              old_hash bytea,
              old_present boolean,
              n bigint)"
                .into(),
        ),
        (
            "outbox",
            "(id text COLLATE \"C\" PRIMARY KEY,
              run_id bigint NOT NULL,
              endpoint text NOT NULL,
              operations integer NOT NULL,
              events bigint NOT NULL,
              body bytea NOT NULL,
              manifest bytea NOT NULL,
              state text NOT NULL CHECK (state IN ('pending', 'delivered', 'rejected', 'split')),
              attempts integer NOT NULL DEFAULT 0,
              last_error text,
              answered_at text,
              delivered_events bigint,
              rules text)"
                .into(),
        ),
        (
            "rejects",
            "(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
              run_id bigint NOT NULL,
              k text COLLATE \"C\",
              line bigint,
              column_name text,
              rule text NOT NULL,
              reason text NOT NULL,
              source text NOT NULL,
              request_id text)"
                .into(),
        ),
        (
            "open_rejects",
            "(k text COLLATE \"C\" PRIMARY KEY,
              hash bytea NOT NULL,
              rules text NOT NULL,
              first_run bigint NOT NULL,
              last_run bigint NOT NULL,
              reject_id bigint NOT NULL)"
                .into(),
        ),
        (
            "history",
            "(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
              run_id bigint NOT NULL,
              k text COLLATE \"C\" NOT NULL,
              kind text NOT NULL CHECK (kind IN ('added', 'reentered', 'changed', 'removed', 'rejected', 'still_rejected', 'restored')),
              hash bytea,
              request_id text,
              op integer,
              ev integer,
              reject_id bigint,
              at text)"
                .into(),
        ),
    ];
    defs.into_iter()
        .map(|(suffix, body)| (t.table(suffix), body))
        .collect()
}

/// The indexes of one sync's tables: (name, table, columns). `explain` reads a key's history,
/// and a commit prunes old runs' history, rejects and requests by run.
fn index_defs(t: &Tables) -> Vec<(String, String, &'static str)> {
    [
        ("history_k", "history", "(k, run_id)"),
        ("history_run", "history", "(run_id)"),
        ("rejects_run", "rejects", "(run_id)"),
        ("outbox_run", "outbox", "(run_id)"),
    ]
    .into_iter()
    .map(|(name, table, cols)| (ident(&format!("{}_{name}", t.name)), t.table(table), cols))
    .collect()
}

/// `batchsync setup`: creates the schema and the sync's tables where they are missing, and
/// records the schema version and the recipe. Idempotent; one transaction.
pub fn setup(settings: &Settings) -> Result<SetupReport, StoreError> {
    let db = Db::connect(settings)?;
    let t = db.tables.clone();
    db.tx(|db| {
        let mut report = SetupReport {
            database: db.what.clone(),
            schema: t.schema.clone(),
            created: Vec::new(),
            existing: Vec::new(),
        };
        let schema_exists: bool = db
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&t.schema],
            )?
            .get(0);
        if !schema_exists {
            db.batch(&format!("CREATE SCHEMA {}", ident(&t.schema)))?;
            report.created.push(format!("schema {}", t.schema));
        }
        for (table, body) in table_defs(&t) {
            let exists: bool = db
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?
                .get(0);
            if exists {
                report.existing.push(table);
            } else {
                db.batch(&format!("CREATE TABLE {table} {body}"))?;
                report.created.push(table);
            }
        }
        for (name, table, cols) in index_defs(&t) {
            db.batch(&format!("CREATE INDEX IF NOT EXISTS {name} ON {table} {cols}"))?;
        }
        let meta = t.meta();
        if let Some(v) = read_meta(db, &meta, "schema_version")? {
            if v != SCHEMA_VERSION.to_string() {
                return Err(StoreError::NotSetUp {
                    what: t.describe(),
                    message: format!("schema version {v} is not one this batchsync knows ({SCHEMA_VERSION}); use the batchsync that wrote it"),
                });
            }
        }
        for (name, value) in [
            ("schema_version", SCHEMA_VERSION.to_string()),
            ("recipe", sql::RECIPE.to_string()),
        ] {
            db.execute(
                &format!("INSERT INTO {meta} (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"),
                &[&name, &value],
            )?;
        }
        Ok(report)
    })
}

fn read_meta(db: &Db, meta: &str, name: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .query_opt(
            &format!("SELECT value FROM {meta} WHERE name = $1"),
            &[&name],
        )?
        .map(|r| r.get(0)))
}

/// The sync's tables exist, at this version and recipe; what `run` and `plan` require.
/// `grants`: also that the session may read and write each of them (what `check` verifies).
pub fn verify(db: &Db, grants: bool) -> Result<(), StoreError> {
    let t = &db.tables;
    let not_set_up = |message: String| StoreError::NotSetUp {
        what: format!("{} in {}", t.describe(), db.what),
        message,
    };
    let mut missing = Vec::new();
    for suffix in Tables::SUFFIXES {
        let table = t.table(suffix);
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?
            .get(0);
        if !exists {
            missing.push(format!("{}_{suffix}", t.name));
        }
    }
    if !missing.is_empty() {
        return Err(not_set_up(format!(
            "the sync's tables are missing ({}): run `batchsync setup` first. Nothing was sent: a run never creates them, so lost state never turns into a first run that sends the whole segment again",
            missing.join(", ")
        )));
    }
    let meta = t.meta();
    let version = read_meta(db, &meta, "schema_version")?;
    if version.as_deref() != Some(&SCHEMA_VERSION.to_string()) {
        return Err(not_set_up(format!(
            "schema version {} where {SCHEMA_VERSION} is needed: run `batchsync setup`",
            version.as_deref().unwrap_or("(none)")
        )));
    }
    let recipe = read_meta(db, &meta, "recipe")?;
    if recipe.as_deref() != Some(sql::RECIPE) {
        return Err(not_set_up(format!(
            "hash recipe {} where {} is needed: run `batchsync setup`",
            recipe.as_deref().unwrap_or("(none)"),
            sql::RECIPE
        )));
    }
    if grants {
        let schema_ok: bool = db
            .query_one("SELECT has_schema_privilege($1, 'USAGE')", &[&t.schema])?
            .get(0);
        if !schema_ok {
            return Err(not_set_up(format!(
                "the role may not use schema {}: GRANT USAGE ON SCHEMA {} TO the role",
                t.schema,
                ident(&t.schema)
            )));
        }
        for suffix in Tables::SUFFIXES {
            let table = t.table(suffix);
            // Asked one by one: with several, has_table_privilege is true if any is held.
            for privilege in ["SELECT", "INSERT", "UPDATE", "DELETE"] {
                let ok: bool = db
                    .query_one("SELECT has_table_privilege($1, $2)", &[&table, &privilege])?
                    .get(0);
                if !ok {
                    return Err(not_set_up(format!(
                        "the role lacks {privilege} on {table}; a run needs SELECT, INSERT, UPDATE, DELETE on the sync's tables: GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO the role"
                    )));
                }
            }
        }
        let temp: bool = db
            .query_one(
                "SELECT has_database_privilege(current_database(), 'TEMP')",
                &[],
            )?
            .get(0);
        if !temp {
            return Err(not_set_up(
                "the role may not create temporary tables, which `plan` needs: GRANT TEMP ON DATABASE … TO the role".into(),
            ));
        }
    }
    Ok(())
}
