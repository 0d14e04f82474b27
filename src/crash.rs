//! Named crash points for the crash-safety tests.
//!
//! In debug builds (the ones `cargo test` runs), `BATCHSYNC_CRASH_AT=<point>[:<n>]` makes the
//! process SIGKILL itself the n-th time (default: first) it reaches `<point>`, exactly as
//! `kill -9` would. Release builds compile the check out.

/// Every crash point, in the order a run reaches them. The crash tests crash at each one and
/// hold each to its own expected state (`tests/it/crash.rs`, `EXPECTED`).
pub const POINTS: &[&str] = &[
    "after_read",
    "mid_commit",
    "before_commit",
    "after_commit",
    "before_send",
    "after_send",
    "after_record",
];

#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // A point the crash tests do not know of would go untested.
    assert!(
        POINTS.contains(&name),
        "crash point {name} is not in crash::POINTS: register it, and its expected state in the crash tests"
    );
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("BATCHSYNC_CRASH_AT") else {
        return;
    };
    let (target, nth) = match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    if target != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        eprintln!("batchsync: crash point {name} reached: killing myself");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
