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

use batchsync::config::{Initial, OnChange, Reentry, Settings, SourceSettings};
use batchsync::core::diff::{merge, Policy};
use batchsync::core::encode::RowHash;
use batchsync::core::mapping::{Event, EventRules, Reject};
use batchsync::core::pack::RowRef;
use batchsync::pipeline::delta::{Apply, Counts, Sink};
use batchsync::snapshot::{Snapshot, DEFAULT_BUDGET};
use batchsync::store::{RunRecord, Store};
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

fn apply(s: &Settings) -> Apply<'_> {
    Apply {
        plan: &s.plan,
        policy: Policy {
            record_only: false,
            event_on_change: s.sync.on_change == OnChange::Event,
            event_on_reentry: s.sync.reentry == Reentry::Event,
        },
        rules: EventRules {
            late: s.sync.late_events,
            window_micros: s.sync.event_window.as_micros() as i64,
            now_micros: chrono::Utc::now().timestamp_micros(),
            event_id: s.sync.event_id,
        },
        defer_removals: false,
    }
}

/// Counts what it is given and writes nothing: the `diff` stage.
struct Nothing;

impl Sink for Nothing {
    type Error = Box<dyn std::error::Error>;
    fn put(&mut self, _: &[u8], _: RowHash) -> Res<()> {
        Ok(())
    }
    fn tombstone(&mut self, _: &[u8], _: RowHash) -> Res<()> {
        Ok(())
    }
    fn event(&mut self, e: &Event, _: RowRef) -> Res<()> {
        std::hint::black_box(e);
        Ok(())
    }
    fn reject(&mut self, _: Option<&str>, _: Option<u64>, _: &Reject) -> Res<()> {
        Ok(())
    }
}

/// Writes into the run's transaction, as `pipeline`'s own sink does.
struct Writes<'a, 'b>(&'a mut batchsync::store::commit::RunWriter<'b>);

impl Sink for Writes<'_, '_> {
    type Error = Box<dyn std::error::Error>;
    fn put(&mut self, key: &[u8], hash: RowHash) -> Res<()> {
        Ok(self.0.put(key, hash)?)
    }
    fn tombstone(&mut self, key: &[u8], hash: RowHash) -> Res<()> {
        Ok(self.0.tombstone(key, hash)?)
    }
    fn event(&mut self, e: &Event, row: RowRef) -> Res<()> {
        Ok(self.0.event(&e.custom_id, &e.body.to_string(), &row)?)
    }
    fn reject(&mut self, key: Option<&str>, line: Option<u64>, r: &Reject) -> Res<()> {
        Ok(self
            .0
            .reject(key, line, r.column.as_deref(), r.rule, &r.reason)?)
    }
}

fn diff(s: &Settings) -> Res<Timed> {
    let store = Store::open_read(&s.state_path)?.ok_or("no store: do a first run")?;
    let dir = tempfile::tempdir_in(s.state_path.parent().unwrap_or(Path::new(".")))?;
    let t = Instant::now();
    let snap = take(s, dir.path())?;
    let rows = snap.rows;
    let a = apply(s);
    let mut counts = Counts::default();
    let sorted = snap.into_sorted().map(|r| r.map_err(Into::into));
    let base = store.baseline_iter().map(|r| r.map_err(Into::into));
    for d in merge::<_, _, Box<dyn std::error::Error>>(sorted, base) {
        a.delta(d?, &mut Nothing, &mut counts)?;
    }
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
    let a = Apply {
        policy: Policy {
            record_only: !store.has_baseline()? && s.sync.initial == Initial::Baseline,
            ..apply(s).policy
        },
        ..apply(s)
    };
    let reader = store.reader()?;
    let mut writer = store.begin_run(&batchsync::store::now_rfc3339(), None)?;
    if writer.compacting() {
        // The stage writes a run's delta; a compacting commit also rewrites the kept entries,
        // which only the pipeline does.
        return Err("the store's baseline layers are due for compaction: time the stages on a store after one first run".into());
    }
    let mut counts = Counts::default();
    {
        let mut sink = Writes(&mut writer);
        let sorted = snap.into_sorted().map(|r| r.map_err(Into::into));
        let base = reader.baseline_iter().map(|r| r.map_err(Into::into));
        for d in merge::<_, _, Box<dyn std::error::Error>>(sorted, base) {
            a.delta(d?, &mut sink, &mut counts)?;
        }
    }
    let ms = since(t);
    let t = Instant::now();
    writer.commit(
        &RunRecord {
            rows,
            added: counts.added,
            changed: counts.changed,
            removed: counts.removed,
            ..RunRecord::default()
        },
        s.destination.mass_update_from,
        &s.plan.identity(),
    )?;
    Ok(Timed {
        ms,
        extra_ms: since(t),
        rows,
    })
}
