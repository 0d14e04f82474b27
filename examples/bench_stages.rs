//! Where the time of one run goes: each stage of `run` timed on its own, through the library's
//! public API, for docs/BENCHMARKS.md. Run by `bench/run.sh`; by hand:
//!
//! ```text
//! cargo run --release --example bench_stages -- --config bench/out/1m/sync.toml
//! ```
//!
//! The config's store must already hold a baseline (a first run done); it is copied, never
//! written. Each stage is run `--repeat` times (default 3) and its median printed; a stage's
//! own cost is its time minus the previous stage's, since each one redoes the ones before it:
//!
//! 1. `read`: the source file read into a buffer (the page cache's speed; no parsing).
//! 2. `parse`: the source's rows read into cells (`Source::next_row`), alone.
//! 3. `snapshot`: `Snapshot::take` whole: parsing, encoding, hashing, sorting and spilling, on
//!    two threads (`BATCHSYNC_LOG=batchsync::snapshot=debug` splits it per thread and step).
//! 4. `sorted`: + reading the sorted rows back (the merge of the spilled runs).
//! 5. `baseline`: the baseline read from the store in key order, alone.
//! 6. `diff`: `sorted` + the merge with the baseline + deciding each delta, writing nothing
//!    (what `plan` does).
//! 7. `write`: `sorted` + the merge + the delta written into the run's transaction (baseline
//!    upserts, tombstones, events), on a copy of the store. `commit`: then packing the outbox
//!    and `COMMIT`, alone.
//!
//! Output: one JSON object of medians in milliseconds, and the row count.

use batchsync::config::{Settings, SourceSettings};
use batchsync::core::diff::BaseRow;
use batchsync::core::encode::RowHash;
use batchsync::core::mapping::{Operation, Reject};
use batchsync::core::pack::RowRef;
use batchsync::core::run::Counts;
use batchsync::pipeline::{self, delta::Apply, diff::LocalDiff};
use batchsync::ship::StopFlag;
use batchsync::snapshot::{Snapshot, DEFAULT_BUDGET};
use batchsync::state::{Commit, Sink, StateStore};
use batchsync::store::Store;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let mut config = PathBuf::from("batchsync.toml");
    let mut repeat = 3usize;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().ok_or("--config PATH")?.into(),
            "--repeat" => repeat = args.next().ok_or("--repeat N")?.parse()?,
            "--only" => only = Some(args.next().ok_or("--only STAGE")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let s = Settings::load(&config)?;
    let stages: [(&str, Stage); 7] = [
        ("read", read),
        ("parse", parse),
        ("snapshot", snapshot),
        ("sorted", sorted),
        ("baseline", baseline),
        ("diff", diff),
        ("write", write),
    ];
    let mut out = serde_json::Map::new();
    let mut rows = 0;
    for (name, stage) in stages {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut runs: Vec<Timed> = Vec::new();
        for _ in 0..repeat {
            runs.push(stage(&s)?);
        }
        rows = rows.max(runs[0].rows);
        let median = |f: fn(&Timed) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2] * 10.0).round() / 10.0
        };
        out.insert(name.into(), median(|t| t.ms).into());
        if name == "write" {
            out.insert("commit".into(), median(|t| t.extra_ms).into());
        }
        eprintln!("bench_stages: {name} {:.1} ms", median(|t| t.ms));
    }
    out.insert("rows".into(), rows.into());
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

type Stage = fn(&Settings) -> Res<Timed>;

struct Timed {
    ms: f64,
    /// A second figure some stages give (the commit's own time).
    extra_ms: f64,
    rows: u64,
}

fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn read(s: &Settings) -> Res<Timed> {
    let t = Instant::now();
    let path = match &s.source {
        SourceSettings::Csv(c) => &c.path,
        SourceSettings::Ndjson(n) => &n.path,
        _ => return Err("a file source".into()),
    };
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    Ok(Timed {
        ms: since(t),
        extra_ms: 0.0,
        rows: n.saturating_sub(1),
    })
}

fn parse(s: &Settings) -> Res<Timed> {
    let t = Instant::now();
    let mut src = batchsync::source::open(s)?;
    let mut cells = Vec::new();
    let mut rows = 0;
    while src.next_row(&mut cells)?.is_some() {
        rows += 1;
    }
    Ok(Timed {
        ms: since(t),
        extra_ms: 0.0,
        rows,
    })
}

fn take(s: &Settings, dir: &Path) -> Res<Snapshot> {
    let mut src = batchsync::source::open(s)?;
    Ok(Snapshot::take(
        src.as_mut(),
        &s.plan,
        s.timezone,
        s.sync.on_bad_row,
        dir,
        DEFAULT_BUDGET,
        |_| std::ops::ControlFlow::Continue(()),
    )?)
}

fn snapshot(s: &Settings) -> Res<Timed> {
    let dir = tempfile::tempdir_in(s.state_path.parent().unwrap_or(Path::new(".")))?;
    let t = Instant::now();
    let snap = take(s, dir.path())?;
    let ms = since(t);
    Ok(Timed {
        ms,
        extra_ms: 0.0,
        rows: snap.rows,
    })
}

fn sorted(s: &Settings) -> Res<Timed> {
    let dir = tempfile::tempdir_in(s.state_path.parent().unwrap_or(Path::new(".")))?;
    let t = Instant::now();
    let snap = take(s, dir.path())?;
    let mut rows = 0;
    for r in snap.into_sorted() {
        std::hint::black_box(r?);
        rows += 1;
    }
    Ok(Timed {
        ms: since(t),
        extra_ms: 0.0,
        rows,
    })
}

fn baseline(s: &Settings) -> Res<Timed> {
    let store = Store::open_read(&s.state_path)?.ok_or("no store: do a first run")?;
    let t = Instant::now();
    let mut rows = 0;
    for r in store.baseline_iter() {
        std::hint::black_box(r?);
        rows += 1;
    }
    Ok(Timed {
        ms: since(t),
        extra_ms: 0.0,
        rows,
    })
}

/// Counts what it is given and writes nothing: the `diff` stage.
struct Nothing;

impl Sink for Nothing {
    type Error = std::convert::Infallible;
    fn put(&mut self, _: &[u8], _: RowHash, _: Option<RowHash>) -> Result<(), Self::Error> {
        Ok(())
    }
    fn tombstone(&mut self, _: &[u8], _: RowHash) -> Result<(), Self::Error> {
        Ok(())
    }
    fn keep(&mut self, _: &BaseRow) -> Result<(), Self::Error> {
        Ok(())
    }
    fn send(&mut self, op: &Operation, _: RowRef) -> Result<(), Self::Error> {
        std::hint::black_box(op);
        Ok(())
    }
    fn still_rejected(&mut self, _: &[u8], _: Option<RowHash>) -> Result<(), Self::Error> {
        Ok(())
    }
    fn reject(&mut self, _: batchsync::state::Rejected<'_>, _: &Reject) -> Result<(), Self::Error> {
        Ok(())
    }
    fn history(&mut self, _: batchsync::state::Line<'_>) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn diff(s: &Settings) -> Res<Timed> {
    let store = Store::open_read(&s.state_path)?.ok_or("no store: do a first run")?;
    let dir = tempfile::tempdir_in(s.state_path.parent().unwrap_or(Path::new(".")))?;
    let t = Instant::now();
    let snap = take(s, dir.path())?;
    let rows = snap.rows;
    let a = Apply::for_run(s, false, s.sync.initial, !snap.loose.is_empty());
    let mut engine = LocalDiff::new(snap, Some(store.baseline_iter()));
    pipeline::diff::apply(&mut engine, &a, &mut Nothing, &StopFlag::default())?;
    Ok(Timed {
        ms: since(t),
        extra_ms: 0.0,
        rows,
    })
}

/// The store copied beside itself, so that a write stage leaves the original as it was.
fn copy_store(s: &Settings) -> Res<(tempfile::TempDir, PathBuf)> {
    let parent = s.state_path.parent().unwrap_or(Path::new("."));
    let dir = tempfile::tempdir_in(parent)?;
    let copy = dir.path().join("state.db");
    std::fs::copy(&s.state_path, &copy)?;
    let wal = s.state_path.with_extension("db-wal");
    if wal.exists() {
        std::fs::copy(&wal, copy.with_extension("db-wal"))?;
    }
    Ok((dir, copy))
}

fn write(s: &Settings) -> Res<Timed> {
    let (dir, copy) = copy_store(s)?;
    let store = Store::open(&copy)?;
    let t = Instant::now();
    let snap = take(s, dir.path())?;
    let rows = snap.rows;
    let first_run = !store.has_baseline()?;
    let a = Apply::for_run(s, first_run, s.sync.initial, !snap.loose.is_empty());
    let reader = store.reader()?;
    let mut writer = store.begin_run(&batchsync::store::now_rfc3339(), None, "bench")?;
    let mut engine = LocalDiff::new(snap, Some(reader.baseline_iter()));
    let diffed = pipeline::diff::apply(&mut engine, &a, &mut writer, &StopFlag::default())?;
    let ms = since(t);
    let t = Instant::now();
    let counts = Counts {
        rows,
        ..diffed.counts
    };
    let identity = s.plan.identity();
    let profile = s.plan.profile_identity();
    let meta = batchsync::state::CommitMeta {
        identity: &identity,
        profile: &profile,
        backfill: false,
        mass_update_from: s.destination.mass_update_from,
        keep_runs: s.keep_runs,
    };
    writer.commit(&counts, &meta)?;
    Ok(Timed {
        ms,
        extra_ms: since(t),
        rows,
    })
}
