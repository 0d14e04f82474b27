//! Named crash points for the crash-safety tests.
//!
//! In debug builds (the ones `cargo test` runs), `BATCHSYNC_CRASH_AT=<point>[:<n>]` makes the
//! process SIGKILL itself the n-th time (default: first) it reaches `<point>`, exactly as
//! `kill -9` would. Release builds compile the check out.
//!
//! The same points can hold the process still instead: `BATCHSYNC_PAUSE_AT=<point>[:<n>]` with
//! `BATCHSYNC_PAUSE_DIR=<dir>` makes the n-th reach of `<point>` write `<dir>/paused` (the
//! process's id) and wait until `<dir>/resume` exists (at most [`PAUSE_LIMIT`]). A test acts on
//! the world at that exact moment (terminates the run's database connections, takes a lock,
//! starts a second run) and then lets the run go on, or kills it. A pause comes before a crash
//! at the same reach.

/// Every crash point, in the order a run reaches them. The crash tests crash at each one and
/// hold each to its own expected state (`tests/it/crash.rs`, `EXPECTED`).
pub const POINTS: &[&str] = &[
    "after_read",
    // The database mode only: the fetch's cursor is open, and has yielded rows, before each
    // FETCH after the first.
    "mid_fetch",
    "mid_commit",
    "before_commit",
    "after_commit",
    "before_send",
    "after_send",
    "after_record",
];

/// The longest a paused process waits for `<dir>/resume`; then it goes on by itself, so a
/// test that failed before releasing it leaves no process behind for long.
pub const PAUSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `<point>[:<n>]` of the variable `var`, when set: (point, n).
#[cfg(debug_assertions)]
fn spec(var: &str) -> Option<(String, u64)> {
    let spec = std::env::var(var).ok()?;
    Some(match spec.split_once(':') {
        Some((p, n)) => (p.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    })
}

#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // A point the crash tests do not know of would go untested.
    assert!(
        POINTS.contains(&name),
        "crash point {name} is not in crash::POINTS: register it, and its expected state in the crash tests"
    );
    static PAUSE_HITS: AtomicU64 = AtomicU64::new(0);
    if let Some((target, nth)) = spec("BATCHSYNC_PAUSE_AT") {
        if target == name && PAUSE_HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            pause(name);
        }
    }
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((target, nth)) = spec("BATCHSYNC_CRASH_AT") else {
        return;
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

/// Holds the process at `name` until the test says `resume` (see the module doc).
#[cfg(debug_assertions)]
fn pause(name: &str) {
    let Some(dir) = std::env::var_os("BATCHSYNC_PAUSE_DIR").map(std::path::PathBuf::from) else {
        eprintln!("batchsync: BATCHSYNC_PAUSE_AT without BATCHSYNC_PAUSE_DIR: not pausing");
        return;
    };
    eprintln!(
        "batchsync: pause point {name} reached: waiting for {}",
        dir.join("resume").display()
    );
    // Written whole, then renamed: the test never reads half a file.
    let tmp = dir.join("paused.tmp");
    if std::fs::write(&tmp, std::process::id().to_string())
        .and_then(|()| std::fs::rename(&tmp, dir.join("paused")))
        .is_err()
    {
        eprintln!("batchsync: cannot write {}: not pausing", dir.display());
        return;
    }
    let t0 = std::time::Instant::now();
    while !dir.join("resume").exists() && t0.elapsed() < PAUSE_LIMIT {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    eprintln!("batchsync: pause point {name} released");
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
