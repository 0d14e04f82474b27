//! The integration tests: one test binary, so the library and its dependencies are linked
//! once rather than once per file. Each module is one subject; every test runs the real
//! `batchsync` binary (or the emulator) and is named for what it proves. Run one module with
//! `cargo test --test it sync::`, one test by its full name.
//!
//! - `sync`: config, file sources, snapshot, diff, commit and the commands that show them.
//! - `ship`: delivery to Batch: retries, rate limits, splitting, rejects from Batch.
//! - `crash`: crash safety: every named crash point, kill -9 at random moments, the run lock,
//!   graceful stops, network faults.
//! - `backfill`: large first runs as resumable jobs and the delta guards.
//! - `db_sources`: PostgreSQL, MariaDB and SQLite sources against real servers.
//! - `diff_model`: the snapshot and diff against a naive model (proptest).
//! - `emulator`: the local Batch emulator over real HTTP.
//! - `explain`: a row's history across runs, in both modes, and its pruning by `keep_runs`.
//! - `emulator_profiles`: the emulator's profile attributes (upserts, partial errors,
//!   read-back) over real HTTP.
//! - `profiles`: profile attributes end to end: the emulator's final profile state after
//!   added, changed, removed and re-entered rows, a backfill, bad values, and kill -9.
//! - `warehouse`: the database mode against the real PostgreSQL: setup, runs, plan, bad input.
//! - `warehouse_props`: the database mode held to the local mode's deltas (proptest), and to
//!   its own promises about rendering and names.
//! - `layout`: this binary holds every test file.
//! - `serve`: `batchsync serve` on a short interval: ticks through a Batch outage, the
//!   metrics held to the store and the emulator, the lock per run, signals, `--listen`.
//! - `tls`: TLS to PostgreSQL and MariaDB servers the tests start, with certificates they make.
//! - `warehouse_crash`: crash safety of the database mode: every crash point, connections
//!   terminated by the server, kills in a loop against a crash-free twin, fresh working
//!   directories, the advisory lock.

mod common;

mod backfill;
mod crash;
mod db_sources;
mod diff_model;
mod emulator;
mod emulator_profiles;
mod explain;
mod layout;
mod profiles;
mod serve;
mod ship;
mod sync;
mod tls;
mod warehouse;
mod warehouse_crash;
mod warehouse_props;
