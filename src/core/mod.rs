//! The pure core: no I/O, no clock, no randomness, no async. Everything here is a function of
//! its arguments and is tested without a file, a database or a socket.
//!
//! - [`value`]: typed values, declared types, the spellings accepted from untyped sources.
//! - [`encode`]: the hash recipe (version 1), its one home: the canonical encoding of values
//!   and rows, the row hash, the row key, decoding.
//! - [`mapping`]: the columns a sync uses, and a row → a Batch event, with Batch's rules.
//! - [`diff`]: the sorted merge of snapshot and baseline, and what each delta does.
//! - [`pack`]: events → operations → requests, with the manifest that maps them back to rows.
//! - [`retry`]: answer classification, backoff with full jitter, `Retry-After`.
//! - [`history`]: a row's history (`explain`): its lines' kinds, Batch's answer about a line,
//!   the KEY argument read into the keys each store holds.
//! - [`run`]: a run's counts, status, summary and exit code, the guards, modelled once.
//!
//! Among the first three, `mapping` uses `encode`, which uses `value`, never the reverse.

pub mod diff;
pub mod encode;
pub mod history;
pub mod mapping;
pub mod pack;
pub mod retry;
pub mod run;
pub mod value;
