//! batchsync: incremental change detection and checkpointed delivery of a segment's new rows
//! to Batch's Profile API as events.
//!
//! One run, in ten lines:
//!
//! 1. take the store's run lock (`lock`);
//! 2. ship what earlier runs left pending in the outbox (`ship`, `store::outbox`);
//! 3. stream the segment from its source (`source`), type and hash each row (`core::value`,
//!    `core::encode`) into a snapshot sorted by row key, spilled past a memory budget (`snapshot`);
//! 4. merge it with the baseline, sorted the same way (`core::diff`);
//! 5. map each added row to a Batch event or a reject (`core::mapping`);
//! 6. pack the events into requests (`core::pack`) and commit baseline, outbox, rejects and the
//!    run record in one transaction (`store::commit`);
//! 7. send the requests in order, paced and retried (`ship`, `core::retry`), recording each
//!    answer in its own transaction;
//! 8. close the run record and print the summary (`pipeline`, `core::run`).
//!
//! Modules: `core` is pure (no I/O); `config` and `cli` turn the file and the arguments into
//! settings; `source`, `snapshot`, `store`, `ship`, `lock` and `ui` are the edges; `state` is the
//! seam between the pipeline and where a sync's state is kept (the SQLite `store` today);
//! `pipeline` drives a run, with `pipeline::diff` the seam where the diff happens; `emulate` is
//! the local Batch-compatible server; `demo` wires them together; `serve` runs the sync on a
//! schedule in one process, with metrics and health over HTTP.

mod accept;
pub mod cli;
pub mod commands;
pub mod config;
pub mod core;
pub mod crash;
pub mod demo;
pub mod emulate;
pub mod errors;
pub mod explain;
pub mod lock;
pub mod pipeline;
pub mod serve;
pub mod ship;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod store;
pub mod ui;
pub mod warehouse;
