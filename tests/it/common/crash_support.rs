//! Support for the crash-safety and backfill tests: generated segments, configs, dumps of the
//! state store, and accounting of what the emulator received (sets, duplicates, requests that
//! were in flight when a process died).
#![allow(dead_code)]

use crate::common::Dir;
use batchsync::emulate::{EmulatorConfig, EmulatorThread, Faults, Received};
use rusqlite::{Connection, OpenFlags};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use crate::common::{API_KEY, PROJECT_KEY};

/// One event as Batch saw it: (custom id, the event object as canonical JSON text).
pub type EventKey = (String, String);

// ---------------------------------------------------------------------------------------------
// Segments and configs
// ---------------------------------------------------------------------------------------------

pub const HEADER: &str = "order_id,customer_email,ordered_at,amount,currency,gift,campaign,status";

/// How orders map to customers.
#[derive(Clone, Copy, Debug)]
pub enum Customers {
    /// One customer per order: one operation per event.
    Unique,
    /// `n` consecutive orders per customer: one operation carries `n` events.
    Grouped(u64),
}

impl Customers {
    fn of(self, order: u64) -> u64 {
        match self {
            Customers::Unique => order,
            Customers::Grouped(n) => order / n,
        }
    }
}

/// One CSV line of order `i` (stable: the same `i` gives the same row).
pub fn order_line(i: u64, customers: Customers) -> String {
    let secs = i % 86_400;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let currency = ["EUR", "USD", "GBP"][(i % 3) as usize];
    let gift = if i.is_multiple_of(7) { "true" } else { "false" };
    let campaign = if i.is_multiple_of(5) {
        "black_friday"
    } else {
        ""
    };
    format!(
        "{},user{:06}@example.com,2026-11-20T{h:02}:{m:02}:{s:02}Z,{}.25,{currency},{gift},{campaign},paid",
        100_000 + i,
        customers.of(i),
        i % 1000
    )
}

/// A whole CSV of the given orders.
pub fn orders_csv(orders: impl IntoIterator<Item = u64>, customers: Customers) -> String {
    let mut s = String::with_capacity(128 * 1024);
    s.push_str(HEADER);
    s.push('\n');
    for i in orders {
        s.push_str(&order_line(i, customers));
        s.push('\n');
    }
    s
}

/// Writes `orders.csv` (the path every config here reads).
pub fn write_orders(d: &Dir, orders: impl IntoIterator<Item = u64>, customers: Customers) {
    d.write("orders.csv", orders_csv(orders, customers));
}

/// The sync of the fixture orders, with the knobs the tests turn.
#[derive(Clone, Debug)]
pub struct Config {
    pub endpoint: String,
    pub initial: &'static str,
    pub rate: f64,
    pub mass_update_from: Option<u64>,
    pub timeout: Option<&'static str>,
    pub max_attempts: Option<u32>,
    pub max_added: Option<&'static str>,
    pub max_removed: Option<&'static str>,
}

impl Config {
    pub fn new(endpoint: &str) -> Config {
        Config {
            endpoint: endpoint.to_string(),
            initial: "send",
            rate: 100_000.0,
            mass_update_from: None,
            timeout: None,
            max_attempts: None,
            max_added: None,
            max_removed: None,
        }
    }

    pub fn render(&self) -> String {
        let mut sync = format!("initial = \"{}\"\n", self.initial);
        if let Some(v) = self.max_added {
            sync.push_str(&format!("max_added = \"{v}\"\n"));
        }
        if let Some(v) = self.max_removed {
            sync.push_str(&format!("max_removed = \"{v}\"\n"));
        }
        let mut dest = format!("rate = {}\n", self.rate);
        if let Some(v) = self.mass_update_from {
            dest.push_str(&format!("mass_update_from = {v}\n"));
        }
        if let Some(v) = self.timeout {
            dest.push_str(&format!("timeout = \"{v}\"\n"));
        }
        if let Some(v) = self.max_attempts {
            dest.push_str(&format!("max_attempts = {v}\n"));
        }
        format!(
            r#"[source]
type = "csv"
path = "orders.csv"
primary_key = ["order_id"]

[mapping]
custom_id = "customer_email"
event = "order_completed"
time = "ordered_at"
label = "campaign"
attributes = ["amount", "currency", "gift"]
types = {{ amount = "number", gift = "bool", order_id = "integer" }}
timezone = "UTC"

[sync]
on_change = "ignore"
late_events = "send"
{sync}
[destination]
endpoint = "{endpoint}"
api_key_env = "BATCH_REST_API_KEY"
project_key_env = "BATCH_PROJECT_KEY"
{dest}
[state]
path = ".batchsync/state.db"
"#,
            endpoint = self.endpoint
        )
    }

    pub fn write(&self, d: &Dir) {
        d.write("batchsync.toml", self.render());
    }
}

/// An emulator with the token buckets off (the client paces itself; these tests are about
/// crashes, not rate limits) and the given faults.
pub fn emulator_free(faults: Faults) -> EmulatorThread {
    emulator_seeded(faults, 7)
}

pub fn emulator_seeded(faults: Faults, seed: u64) -> EmulatorThread {
    EmulatorThread::start(EmulatorConfig {
        api_key: API_KEY.into(),
        project_key: PROJECT_KEY.into(),
        limits: false,
        faults,
        record_path: None,
        seed,
    })
    .expect("emulator starts")
}

pub fn latency(ms: u64) -> Faults {
    Faults {
        latency_ms: ms,
        ..Faults::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// The outcome of one `batchsync` process.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }

    /// The one JSON value on stdout.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON value ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics, with everything the process said, unless it exited with `code`.
    pub fn expect_code(&self, code: i32, what: &str) -> &Ran {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected exit {code}, got {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `batchsync args…` in `d` to the end; `crash_at` sets `BATCHSYNC_CRASH_AT`.
pub fn run_bin(d: &Dir, args: &[&str], crash_at: Option<&str>) -> Ran {
    let mut c = d.cmd(args);
    if let Some(p) = crash_at {
        c.env("BATCHSYNC_CRASH_AT", p);
    }
    let t0 = Instant::now();
    let out = c.output().expect("batchsync runs");
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t0.elapsed(),
    }
}

/// `run --json --quiet` plus `extra`, to the end.
pub fn sync(d: &Dir, extra: &[&str]) -> Ran {
    let mut args = vec!["run", "--json", "--quiet"];
    args.extend_from_slice(extra);
    run_bin(d, &args, None)
}

/// Spawns `batchsync args…` with stdout and stderr captured.
pub fn spawn(d: &Dir, args: &[&str]) -> Child {
    d.cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("batchsync starts")
}

/// Waits for a spawned process and collects what it said.
pub fn collect(child: Child, t0: Instant) -> Ran {
    let out = child.wait_with_output().expect("wait");
    Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t0.elapsed(),
    }
}

/// Sends `sig` to a child we spawned (by its own pid only).
pub fn signal(child: &Child, sig: i32) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not yet reaped.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Polls `cond` every 5 ms until it holds or `within` passes; returns whether it held.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() >= within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The state store
// ---------------------------------------------------------------------------------------------

fn open(path: &Path) -> Option<Connection> {
    if !path.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("the state store opens");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    Some(conn)
}

/// `PRAGMA integrity_check` on the store (opening it runs WAL recovery, as the next run would).
pub fn integrity_check(path: &Path) -> String {
    match open(path) {
        None => "ok".into(),
        Some(c) => c
            .query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
            .expect("integrity_check runs"),
    }
}

pub type Row = Vec<rusqlite::types::Value>;

/// Every durable thing a run can change: the baseline, the outbox, the rejects, the committed
/// runs. Rows in primary-key order; an absent store (or one without tables yet) is empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dump {
    pub baseline: Vec<Row>,
    pub requests: Vec<Row>,
    pub rejects: Vec<Row>,
    pub committed_runs: Vec<Row>,
}

fn rows(c: &Connection, sql: &str) -> Vec<Row> {
    let mut st = match c.prepare(sql) {
        Ok(st) => st,
        // A store created but not yet migrated has no tables: nothing in it.
        Err(e) if e.to_string().contains("no such table") => return Vec::new(),
        Err(e) => panic!("{sql}: {e}"),
    };
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, rusqlite::types::Value>(i))
            .collect::<rusqlite::Result<Row>>()
    })
    .unwrap()
    .collect::<rusqlite::Result<Vec<_>>>()
    .unwrap()
}

pub fn dump(path: &Path) -> Dump {
    let Some(c) = open(path) else {
        return Dump::default();
    };
    Dump {
        baseline: crate::common::baseline(path)
            .into_iter()
            .map(|(k, h, present)| {
                use rusqlite::types::Value;
                vec![
                    Value::Blob(k),
                    Value::Blob(h),
                    Value::Integer(present as i64),
                ]
            })
            .collect(),
        requests: rows(
            &c,
            "SELECT id, run_id, endpoint, operations, events, body, manifest, state, attempts,
                    delivered_events, last_error, answered_at FROM request ORDER BY id",
        ),
        rejects: rows(
            &c,
            "SELECT id, run_id, key, line, column_name, rule, reason, source, request_id
             FROM reject ORDER BY id",
        ),
        committed_runs: rows(
            &c,
            "SELECT id, started_at, finished_at, status, committed, rows, added, changed, removed,
                    rejected, events, events_sent, events_pending, requests, retries, error
             FROM run WHERE committed = 1 ORDER BY id",
        ),
    }
}

/// What a run's commit decides, leaving out what shipping changes afterwards (delivery state,
/// attempts, timestamps, counters): equal between a crashed run that committed and the same
/// run crash-free.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommitView {
    /// (key, hash, present)
    pub baseline: Vec<Row>,
    /// (id, run_id, endpoint, operations, events)
    pub requests: Vec<Row>,
    /// (run_id, key, line, column_name, rule, reason, source)
    pub rejects: Vec<Row>,
    /// (id, rows, added, changed, removed, events)
    pub runs: Vec<Row>,
}

impl Dump {
    pub fn commit_view(&self) -> CommitView {
        let pick = |rows: &[Row], cols: &[usize]| -> Vec<Row> {
            rows.iter()
                .map(|r| cols.iter().map(|&i| r[i].clone()).collect())
                .collect()
        };
        CommitView {
            baseline: pick(&self.baseline, &[0, 1, 2]),
            requests: pick(&self.requests, &[0, 1, 2, 3, 4]),
            rejects: pick(&self.rejects, &[1, 2, 3, 4, 5, 6, 7]),
            runs: pick(&self.committed_runs, &[0, 5, 6, 7, 8, 10]),
        }
    }

    /// Keys of the present baseline rows.
    pub fn present_keys(&self) -> BTreeSet<Vec<u8>> {
        self.baseline
            .iter()
            .filter(|r| r[2] == rusqlite::types::Value::Integer(1))
            .map(|r| match &r[0] {
                rusqlite::types::Value::Blob(b) => b.clone(),
                other => panic!("baseline key is not a blob: {other:?}"),
            })
            .collect()
    }

    /// Ids of the requests in the given state.
    pub fn request_ids(&self, state: &str) -> Vec<String> {
        self.requests
            .iter()
            .filter(|r| r[7] == rusqlite::types::Value::Text(state.into()))
            .map(|r| text(&r[0]))
            .collect()
    }
}

pub fn text(v: &rusqlite::types::Value) -> String {
    match v {
        rusqlite::types::Value::Text(t) => t.clone(),
        other => panic!("not text: {other:?}"),
    }
}

pub fn int(v: &rusqlite::types::Value) -> i64 {
    match v {
        rusqlite::types::Value::Integer(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The events of one request body (a JSON array of operations).
pub fn body_events(body: &[u8]) -> Vec<EventKey> {
    let ops: Vec<serde_json::Value> = serde_json::from_slice(body).expect("a request body");
    let mut v = Vec::new();
    for op in ops {
        let id = op["identifiers"]["custom_id"]
            .as_str()
            .expect("custom_id")
            .to_string();
        for e in op["events"].as_array().expect("events") {
            v.push((id.clone(), e.to_string()));
        }
    }
    v
}

/// The events of every pending request, by request id.
pub fn pending_events(path: &Path) -> BTreeMap<String, Vec<EventKey>> {
    let Some(c) = open(path) else {
        return BTreeMap::new();
    };
    let mut st = match c.prepare("SELECT id, body FROM request WHERE state = 'pending' ORDER BY id")
    {
        Ok(st) => st,
        Err(e) if e.to_string().contains("no such table") => return BTreeMap::new(),
        Err(e) => panic!("{e}"),
    };
    st.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })
    .unwrap()
    .map(|r| {
        let (id, body) = r.unwrap();
        (id, body_events(&body))
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// What the emulator received
// ---------------------------------------------------------------------------------------------

pub fn key_of(r: &Received) -> EventKey {
    (r.custom_id.clone(), r.event.to_string())
}

/// How many times each event was received.
pub fn counts(received: &[Received]) -> BTreeMap<EventKey, usize> {
    let mut m = BTreeMap::new();
    for r in received {
        *m.entry(key_of(r)).or_insert(0) += 1;
    }
    m
}

pub fn distinct(received: &[Received]) -> BTreeSet<EventKey> {
    received.iter().map(key_of).collect()
}

/// Receipts beyond the first, summed over events.
pub fn duplicates(received: &[Received]) -> usize {
    counts(received).values().map(|n| n - 1).sum()
}

/// The receipts of `received`, grouped by the emulator's request number.
pub fn by_request(received: &[Received]) -> BTreeMap<u64, Vec<EventKey>> {
    let mut m: BTreeMap<u64, Vec<EventKey>> = BTreeMap::new();
    for r in received {
        m.entry(r.request).or_default().push(key_of(r));
    }
    m
}

/// The requests a dead process had in flight: those the emulator received from it (`since`:
/// its receipts) whose answer the store never recorded (still pending). Returns, per such
/// emulator request, its events. Each of them will be received once more on resume.
pub fn in_flight(since: &[Received], state: &Path) -> Vec<Vec<EventKey>> {
    let pending: BTreeSet<EventKey> = pending_events(state).into_values().flatten().collect();
    in_flight_of(since, &pending)
}

/// [`in_flight`] against the events still pending in any outbox (the database mode's too).
pub fn in_flight_of(since: &[Received], pending: &BTreeSet<EventKey>) -> Vec<Vec<EventKey>> {
    by_request(since)
        .into_values()
        .filter(|evs| {
            let hit = evs.iter().filter(|e| pending.contains(e)).count();
            assert!(
                hit == 0 || hit == evs.len(),
                "a request received by the emulator is half pending in the outbox ({hit} of {})",
                evs.len()
            );
            hit > 0
        })
        .collect()
}

/// What a crash-free run over the same inputs sends: prepare a fresh directory with `setup`
/// (config and data for the endpoint given), run once, and return the distinct events (after
/// checking it completed, without duplicates).
pub fn crash_free_events(setup: impl FnOnce(&Dir, &str)) -> BTreeSet<EventKey> {
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let r = sync(&d, &[]);
    r.expect_code(0, "the crash-free reference run");
    let got = em.received();
    assert_eq!(duplicates(&got), 0, "a crash-free run sends no duplicate");
    distinct(&got)
}

/// Asserts set equality with a readable difference.
pub fn assert_same_events(got: &BTreeSet<EventKey>, want: &BTreeSet<EventKey>, what: &str) {
    if got != want {
        let missing: Vec<_> = want.difference(got).take(5).collect();
        let extra: Vec<_> = got.difference(want).take(5).collect();
        panic!(
            "{what}: received {} distinct events, expected {}; {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
            got.len(),
            want.len(),
            want.difference(got).count(),
            got.difference(want).count()
        );
    }
}
