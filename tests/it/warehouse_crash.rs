//! Crash safety of the database mode (WAREHOUSE.md "Crash safety, step by step" and "What must
//! be tested"), each test against the in-process emulator as Batch and the PostgreSQL server of
//! `BATCHSYNC_TEST_PG_URL`, in a schema of its own:
//!
//! 1. SIGKILL at every crash point the database mode reaches, in three scenarios (a first run,
//!    a delta run, a run that resumes pending requests first).
//! 2. The run's connections terminated by the server during the stage statement, the fetch,
//!    the write-back, just before COMMIT and while shipping.
//! 3. Rounds of changes, each run killed (SIGKILL or its connections terminated) at a seeded
//!    random point or moment, then recovered, against a crash-free twin.
//! 4. Runs from fresh working directories holding only the config.
//! 5. The advisory lock: a second run exits 75 and changes nothing; a killed holder's lock is
//!    free at once.
//!
//! The oracles are independent of the code under test: what the emulator received (the set of
//! events equal to a crash-free twin's, duplicates exactly the events of requests in flight)
//! and the sync's tables read back with plain SQL. The precise moments come from the pause
//! hook of `src/crash.rs` (`BATCHSYNC_PAUSE_AT`) and from a lock the test holds on one of the
//! sync's tables, never from sleeps; the run's connections are found by the TCP ports its
//! process holds, so the other tests' connections on the same server are never touched.

use crate::common::crash_support::{
    body_events, by_request, collect, counts, distinct, duplicates, emulator_free, latency,
    run_bin, wait_until, EventKey, Ran,
};
use crate::common::db::{warehouse_config, Pg, Schema, PG_VAR};
use crate::common::Dir;
use crate::url_or_skip;
use batchsync::emulate::Faults;
// The requests a dead (or failed) run had in flight, against the events its outbox still holds.
use crate::common::crash_support::in_flight_of as in_flight;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The world of one test: a schema holding the orders table and the syncs' tables
// ---------------------------------------------------------------------------------------------

/// What the server says to a session it terminates (`pg_terminate_backend`).
const TERMINATED: &str = "terminating connection due to administrator command";

const MAPPING: &str = "custom_id = \"customer_email\"\nevent = \"order_completed\"\n\
                       time = \"ordered_at\"\nlabel = \"campaign\"\n\
                       attributes = [\"amount\", \"currency\", \"gift\"]";

/// Changes are ignored (as in the local crash tests); the guards are not these tests' subject.
const SYNC: &str = "initial = \"send\"\nlate_events = \"send\"\non_change = \"ignore\"\n\
                    max_added = \"off\"\nmax_removed = \"off\"";

/// The same, with changed rows sent: the loop's rounds change rows too.
const SYNC_CHANGES: &str = "initial = \"send\"\nlate_events = \"send\"\non_change = \"event\"\n\
                            max_added = \"off\"\nmax_removed = \"off\"";

/// A unique schema with an orders table, and a plain connection to change it.
struct World {
    url: String,
    pg: Pg,
    orders: String,
    // Last: dropped (with every table in it) after the connection above.
    schema: Schema,
}

impl World {
    fn new(url: &str) -> World {
        let schema = Schema::new(url, "wcrash");
        let pg = Pg::connect(url);
        pg.exec(&format!("CREATE SCHEMA \"{}\"", schema.name));
        let orders = format!("\"{}\".orders", schema.name);
        pg.exec(&format!(
            "CREATE TABLE {orders} (order_id bigint PRIMARY KEY, customer_email text NOT NULL,
               ordered_at timestamptz NOT NULL, amount numeric NOT NULL, currency text NOT NULL,
               gift boolean NOT NULL, campaign text, status text NOT NULL)"
        ));
        World {
            url: url.to_string(),
            pg,
            orders,
            schema,
        }
    }

    /// Order `i` is the same row whenever it is inserted: its customer holds `per_customer`
    /// consecutive orders.
    fn insert(&self, ids: std::ops::Range<u64>, per_customer: u64) {
        self.insert_where(ids, per_customer, "true");
    }

    fn insert_where(&self, ids: std::ops::Range<u64>, per_customer: u64, filter: &str) {
        let Self { orders, .. } = self;
        self.pg.exec(&format!(
            "INSERT INTO {orders}
             SELECT 100000 + i, format('user%s@example.com', lpad((i / {per_customer})::text, 6, '0')),
                    timestamptz '2026-11-20 00:00:00+00' + (i % 86400) * interval '1 second',
                    (i % 1000) + 0.25, (ARRAY['EUR', 'USD', 'GBP'])[i % 3 + 1], i % 7 = 0,
                    CASE WHEN i % 5 = 0 THEN 'black_friday' END, 'paid'
             FROM generate_series({}, {}) AS i WHERE {filter}",
            ids.start,
            ids.end as i64 - 1
        ));
    }

    /// Day 2 of a day 1 of `day1` orders: orders 0..5 removed, 10..13 changed, `added` new
    /// orders of one customer each.
    fn day2(&self, day1: u64, added: u64) {
        let orders = &self.orders;
        self.pg.exec(&format!(
            "DELETE FROM {orders} WHERE order_id < 100005;
             UPDATE {orders} SET amount = amount + 0.5 WHERE order_id BETWEEN 100010 AND 100012"
        ));
        self.insert(day1..day1 + added, 1);
    }

    /// A sync `name` of the orders, its config alone in a fresh directory, set up.
    fn sync(&self, name: &str, endpoint: &str, sync: &str) -> Sync {
        let s = Sync {
            name: name.to_string(),
            schema: self.schema.name.clone(),
            config: self.config(name, endpoint, sync),
            dir: Dir::new(),
        };
        s.dir.write("batchsync.toml", &s.config);
        run_bin(&s.dir, &["setup"], None).expect_code(0, "setup");
        s
    }

    fn config(&self, name: &str, endpoint: &str, sync: &str) -> String {
        let cfg = warehouse_config(
            &self.url,
            &format!("SELECT * FROM {}", self.orders),
            "order_id",
            &self.schema.name,
            name,
            MAPPING,
            sync,
            endpoint,
        );
        let at = format!("endpoint = \"{endpoint}\"\n");
        assert!(cfg.contains(&at));
        cfg.replacen(&at, &format!("{at}rate = 100000\n"), 1)
    }

    /// One text column of every row of `sql`.
    fn texts(&self, sql: &str) -> Vec<String> {
        self.pg
            .rt
            .block_on(self.pg.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect()
    }
}

/// One sync of the database mode: its working directory and its tables.
struct Sync {
    name: String,
    schema: String,
    config: String,
    dir: Dir,
}

impl Sync {
    fn table(&self, suffix: &str) -> String {
        format!("\"{}\".\"{}_{suffix}\"", self.schema, self.name)
    }

    /// `run --json --quiet` to the end.
    fn run(&self) -> Ran {
        run_bin(&self.dir, &["run", "--json", "--quiet"], None)
    }

    fn run_with(&self, extra: &[&str]) -> Ran {
        let mut args = vec!["run", "--json", "--quiet"];
        args.extend_from_slice(extra);
        run_bin(&self.dir, &args, None)
    }

    /// The run, spawned with `env` set.
    fn spawn(&self, env: &[(&str, &str)]) -> Child {
        let mut c = self.dir.cmd(&["run", "--json", "--quiet"]);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("batchsync starts")
    }

    fn dump(&self, w: &World) -> Dump {
        let outbox = self.table("outbox");
        let rows = |sql: &str| w.texts(sql);
        let requests =
            w.pg.rt
                .block_on(w.pg.client.query(
                    &format!(
                        "SELECT id, state,
                        ROW(id, run_id, endpoint, operations, events)::text,
                        ROW(id, run_id, endpoint, operations, events, md5(body), md5(manifest),
                            state, attempts, last_error, answered_at, delivered_events)::text
                     FROM {outbox} ORDER BY id"
                    ),
                    &[],
                ))
                .unwrap()
                .iter()
                .map(|r| Request {
                    id: r.get(0),
                    state: r.get(1),
                    commit: r.get(2),
                    full: r.get(3),
                })
                .collect();
        Dump {
            baseline: rows(&format!(
                "SELECT ROW(k, hash, present)::text FROM {} ORDER BY k",
                self.table("baseline")
            )),
            requests,
            rejects: rows(&format!(
                "SELECT ROW(run_id, k, line, column_name, rule, reason, source, request_id)::text
                 FROM {} ORDER BY id",
                self.table("rejects")
            )),
            committed_runs: rows(&format!(
                "SELECT ROW(run_id, summary->'rows', summary->'added', summary->'changed',
                            summary->'removed', summary->'events')::text || ' ' || status
                 FROM {} WHERE committed ORDER BY run_id",
                self.table("runs")
            )),
            meta: rows(&format!(
                "SELECT ROW(name, value)::text FROM {} ORDER BY name",
                self.table("meta")
            )),
            delta_rows: w
                .pg
                .count(&format!("SELECT count(*) FROM {}", self.table("delta"))),
        }
    }

    /// The events of every pending request.
    fn pending_events(&self, w: &World) -> BTreeSet<EventKey> {
        let sql = format!(
            "SELECT body FROM {} WHERE state = 'pending' ORDER BY id",
            self.table("outbox")
        );
        w.pg.rt
            .block_on(w.pg.client.query(&sql, &[]))
            .unwrap()
            .iter()
            .flat_map(|r| body_events(r.get::<_, &[u8]>(0)))
            .collect()
    }

    /// The sync's baseline: (k, hash, present) in key order.
    fn baseline(&self, w: &World) -> Vec<String> {
        self.dump(w).baseline
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Request {
    id: String,
    state: String,
    /// What the commit decides: id, run, endpoint, operations, events.
    commit: String,
    /// Every column (the body and manifest by their md5).
    full: String,
}

/// Every durable thing a run can change in the sync's tables, in key order.
#[derive(Debug, Clone, PartialEq)]
struct Dump {
    /// (k, hash, present)
    baseline: Vec<String>,
    requests: Vec<Request>,
    rejects: Vec<String>,
    /// (run_id, rows, added, changed, removed, events) and the status
    committed_runs: Vec<String>,
    meta: Vec<String>,
    delta_rows: i64,
}

/// What a run's commit decides, leaving out what shipping and the clock change afterwards.
#[derive(Debug, Clone, PartialEq)]
struct CommitView {
    baseline: Vec<String>,
    requests: Vec<String>,
    rejects: Vec<String>,
    runs: Vec<String>,
    meta: Vec<String>,
}

impl Dump {
    fn commit_view(&self) -> CommitView {
        CommitView {
            baseline: self.baseline.clone(),
            requests: self.requests.iter().map(|r| r.commit.clone()).collect(),
            rejects: self.rejects.clone(),
            runs: self
                .committed_runs
                .iter()
                .map(|r| {
                    r.rsplit_once(' ')
                        .map_or(r.as_str(), |(v, _)| v)
                        .to_string()
                })
                .collect(),
            meta: self
                .meta
                .iter()
                .filter(|m| !m.starts_with("(last_commit,"))
                .cloned()
                .collect(),
        }
    }

    fn request_ids(&self, state: &str) -> Vec<String> {
        self.requests
            .iter()
            .filter(|r| r.state == state)
            .map(|r| r.id.clone())
            .collect()
    }

    /// Whether `after` is `self` as far as a commit goes: with requests pending before the
    /// run, shipping them is recorded before its commit, so those may have moved from pending
    /// to delivered, and nothing else may differ.
    fn unchanged_by_commit(&self, after: &Dump) -> bool {
        if self.request_ids("pending").is_empty() {
            return after == self;
        }
        let moved_on = self.requests.len() == after.requests.len()
            && self.requests.iter().zip(&after.requests).all(|(b, a)| {
                b.state == a.state || (b.state == "pending" && a.state == "delivered")
            });
        moved_on && after.commit_view() == self.commit_view() && after.delta_rows == 0
    }
}

/// How dumps differ, table by table, for a failure's message (the rows themselves are many).
fn differences(dumps: &[(&str, &Dump)]) -> String {
    let views: Vec<(&str, CommitView, &Dump)> = dumps
        .iter()
        .map(|(name, d)| (*name, d.commit_view(), *d))
        .collect();
    let mut lines = Vec::new();
    for (table, len) in [
        (
            "baseline rows",
            (|v: &CommitView| v.baseline.len()) as fn(&CommitView) -> usize,
        ),
        ("requests", |v| v.requests.len()),
        ("rejects", |v| v.rejects.len()),
        ("committed runs", |v| v.runs.len()),
        ("meta rows", |v| v.meta.len()),
    ] {
        let counts: Vec<String> = views
            .iter()
            .map(|(name, v, _)| format!("{name} {}", len(v)))
            .collect();
        lines.push(format!("{table}: {}", counts.join(", ")));
    }
    for (name, v, d) in &views {
        lines.push(format!(
            "{name}: runs {:?}, meta {:?}, request states {:?}, delta rows {}",
            v.runs,
            v.meta,
            d.requests
                .iter()
                .map(|r| r.state.as_str())
                .collect::<Vec<_>>(),
            d.delta_rows
        ));
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Processes and connections
// ---------------------------------------------------------------------------------------------

/// The TCP sockets process `pid` holds, as (local port, remote port) (Linux: its fds and the
/// namespace's TCP tables). Empty once the process is gone.
fn tcp_sockets(pid: u32) -> Vec<(i32, i32)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: BTreeSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port = |address: &str| {
        let (_, hex) = address.rsplit_once(':')?;
        i32::from_str_radix(hex, 16).ok()
    };
    let mut sockets = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                if let (Some(local), Some(remote)) = (port(f[1]), port(f[2])) {
                    sockets.push((local, remote));
                }
            }
        }
    }
    sockets
}

/// The server's backends serving process `pid` (batchsync's own sessions in this database),
/// and what each is doing: (backend pid, wait_event_type, query).
fn backends_of(w: &World, pid: u32) -> Vec<(i32, Option<String>, String)> {
    let ports: Vec<i32> = tcp_sockets(pid)
        .into_iter()
        .map(|(local, _)| local)
        .collect();
    if ports.is_empty() {
        return Vec::new();
    }
    w.pg.rt
        .block_on(w.pg.client.query(
            "SELECT pid, wait_event_type, query FROM pg_stat_activity
             WHERE application_name = 'batchsync' AND datname = current_database()
               AND pid <> pg_backend_pid() AND client_port = ANY($1)",
            &[&ports],
        ))
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Terminates every connection of process `pid` from the server, and waits until the server
/// has ended them; returns how many.
fn terminate(w: &World, pid: u32) -> usize {
    let pids: Vec<i32> = backends_of(w, pid).into_iter().map(|b| b.0).collect();
    // At once for every session (the function's own wait polls every 100 ms); false, with a
    // warning, for a session that ended by itself meanwhile.
    w.pg.rt
        .block_on(w.pg.client.query(
            "SELECT pg_terminate_backend(p) FROM unnest($1::int4[]) AS p",
            &[&pids],
        ))
        .unwrap();
    let ended = wait_until(Duration::from_secs(10), || {
        w.pg.rt
            .block_on(w.pg.client.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            ))
            .unwrap()
            .get::<_, i64>(0)
            == 0
    });
    assert!(
        ended,
        "the terminated sessions {pids:?} still run after 10 s"
    );
    pids.len()
}

/// Whether any session holds the sync's advisory lock.
fn lock_held(w: &World, s: &Sync) -> bool {
    w.pg.count(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND classid = {}::int4::oid AND objid = hashtext('batchsync:{}.{}')::oid AND objsubid = 2",
        batchsync::warehouse::LOCK_CLASS,
        s.schema,
        s.name
    )) > 0
}

/// Waits until the server has ended the sessions of a killed run, and with them its advisory
/// lock: the server notices the closed socket a moment after the process dies (under load,
/// after the next run may have asked for the lock); returns how long that took.
fn lock_freed(w: &World, s: &Sync) -> Duration {
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || !lock_held(w, s)),
        "the advisory lock of a dead run is still held after 10 s"
    );
    t0.elapsed()
}

/// A run held at a pause point (`BATCHSYNC_PAUSE_AT`, `src/crash.rs`); killed if dropped
/// while it runs (a failed test leaves no run holding the sync's tables).
struct Paused {
    child: Option<Child>,
    files: tempfile::TempDir,
    t0: Instant,
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Paused {
    /// Spawns the run of `s` and waits until it is held at `spec` (`point[:n]`).
    fn start(s: &Sync, spec: &str) -> Paused {
        Paused::try_start(s, spec).unwrap_or_else(|out| {
            panic!(
                "the run never paused at {spec}: {:?}\nstdout: {}\nstderr: {}",
                out.status, out.stdout, out.stderr
            )
        })
    }

    /// The same, or how the run ended when it never reached `spec`.
    fn try_start(s: &Sync, spec: &str) -> Result<Paused, Ran> {
        let files = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let child = s.spawn(&[
            ("BATCHSYNC_PAUSE_AT", spec),
            ("BATCHSYNC_PAUSE_DIR", files.path().to_str().unwrap()),
        ]);
        let mut p = Paused {
            child: Some(child),
            files,
            t0,
        };
        let paused = p.files.path().join("paused");
        let held = wait_until(Duration::from_secs(60), || {
            paused.exists() || p.child().try_wait().unwrap().is_some()
        });
        if paused.exists() {
            return Ok(p);
        }
        assert!(
            held,
            "the run neither paused at {spec} nor ended within 60 s"
        );
        Err(p.wait())
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the run until it is waited for")
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the run until it is waited for")
            .id()
    }

    /// Terminates the held run's connections from the server, and waits until the run's
    /// driver has read the server's last words and closed its sockets to the server (the run
    /// itself is still held): what a run finds when its connections were lost while it was
    /// busy elsewhere. Returns how many.
    fn terminate(&self, w: &World) -> usize {
        let n = terminate(w, self.pid());
        let server: i32 =
            w.pg.rt
                .block_on(w.pg.client.query_one("SELECT inet_server_port()", &[]))
                .unwrap()
                .get(0);
        assert!(
            wait_until(Duration::from_secs(10), || {
                tcp_sockets(self.pid())
                    .iter()
                    .all(|&(_, remote)| remote != server)
            }),
            "the held run still holds a socket to the server 10 s after its sessions ended"
        );
        n
    }

    /// Lets the run go on.
    fn release(&self) {
        std::fs::write(self.files.path().join("resume"), "").unwrap();
    }

    /// Waits for the run's end.
    fn wait(mut self) -> Ran {
        let child = self.child.take().expect("the run until it is waited for");
        collect(child, self.t0)
    }

    /// Lets the run go on, and waits for its end.
    fn resume(self) -> Ran {
        self.release();
        self.wait()
    }

    fn kill(mut self) -> Ran {
        self.child().kill().unwrap();
        self.wait()
    }
}

fn assert_same_events(got: &BTreeSet<EventKey>, want: &BTreeSet<EventKey>, what: &str) {
    crate::common::crash_support::assert_same_events(got, want, what)
}

/// Collects every failure of `cases` before failing, naming each.
fn every_case<T: std::fmt::Debug>(what: &str, cases: &[T], check: impl Fn(&T)) {
    let mut failures = Vec::new();
    for case in cases {
        let t0 = Instant::now();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(case))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{case:?}: {msg}"));
        }
        eprintln!("{what}: {case:?} checked in {:?}", t0.elapsed());
    }
    assert!(
        failures.is_empty(),
        "{what}: {} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at every crash point
// ---------------------------------------------------------------------------------------------

/// A sync brought to the moment before the run that crashes.
struct Scenario {
    name: &'static str,
    /// Data and earlier (clean) runs.
    prepare: fn(&World, &Sync),
    /// The table as the crashing run reads it.
    crash_input: fn(&World),
}

/// The first run of a sync crashes: 600 orders of their own customer, 3 requests.
const FIRST_RUN: Scenario = Scenario {
    name: "the first run crashes",
    prepare: |_, _| {},
    crash_input: |w| w.insert(0..600, 1),
};

/// Day 1 (300 orders, 2 requests) committed and shipped; the day-2 run (5 removed, 3 changed,
/// 450 added: 3 requests) crashes.
const AFTER_DAY1: Scenario = Scenario {
    name: "the day-2 run crashes",
    prepare: |w, s| {
        w.insert(0..300, 1);
        s.run().expect_code(0, "the day-1 run");
    },
    crash_input: |w| w.day2(300, 450),
};

/// Day 1 (600 orders, 3 requests) stopped by `--max-requests 1` with 2 requests pending; the
/// day-2 run resumes them first, then commits its own 3.
const RESUMING: Scenario = Scenario {
    name: "the day-2 run resumes 2 pending requests and crashes",
    prepare: |w, s| {
        w.insert(0..600, 1);
        let r = s.run_with(&["--max-requests", "1"]);
        r.expect_code(0, "the day-1 run");
        assert!(r.json()["events_pending"].as_u64().unwrap() > 0);
    },
    crash_input: |w| w.day2(600, 450),
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Left {
    /// The sync's tables as before the run's commit.
    Before,
    /// With the run's whole commit.
    Committed,
}

fn parse_spec(spec: &str) -> (&str, usize) {
    match spec.split_once(':') {
        Some((p, n)) => (p, n.parse().unwrap()),
        None => (spec, 1),
    }
}

fn is_shipping(point: &str) -> bool {
    matches!(point, "before_send" | "after_send" | "after_record")
}

/// What a crash-free run of a scenario sends and leaves.
struct Reference {
    events: BTreeSet<EventKey>,
    dump: Dump,
    /// The events of each request the crashing run sends, in order: those pending from
    /// earlier runs, then its own.
    request_events: Vec<u64>,
    /// How many of those were pending from earlier runs.
    resumed: usize,
}

fn reference(url: &str, sc: &Scenario) -> Reference {
    let em = emulator_free(Faults::default());
    let w = World::new(url);
    let s = w.sync("orders", &em.endpoint(), SYNC);
    (sc.prepare)(&w, &s);
    let before = s.dump(&w);
    let n0 = em.received().len();
    (sc.crash_input)(&w);
    s.run().expect_code(0, "the crash-free reference run");
    let got = em.received()[n0..].to_vec();
    assert_eq!(duplicates(&got), 0);
    let dump = s.dump(&w);
    assert_eq!(dump.delta_rows, 0, "the delta is empty after a COMMIT");
    let earlier: BTreeSet<String> = before.request_ids("delivered").into_iter().collect();
    let events_of = |id: &str| -> u64 {
        w.pg.count(&format!(
            "SELECT events FROM {} WHERE id = '{id}'",
            s.table("outbox")
        )) as u64
    };
    let request_events: Vec<u64> = dump
        .requests
        .iter()
        .filter(|r| !earlier.contains(&r.id))
        .map(|r| events_of(&r.id))
        .collect();
    let resumed = before.request_ids("pending").len();
    assert!(
        request_events.len() - resumed >= 2,
        "{}: the crashing run must commit at least 2 requests to reach every point",
        sc.name
    );
    Reference {
        events: distinct(&got),
        dump,
        request_events,
        resumed,
    }
}

/// Where a crash at `spec` leaves the sync's tables (the local mode's `EXPECTED`, moved).
fn expected_left(spec: &str, r: &Reference) -> Left {
    let (point, nth) = parse_spec(spec);
    match point {
        "after_read" | "mid_fetch" | "mid_commit" | "before_commit" => Left::Before,
        "after_commit" => Left::Committed,
        p if is_shipping(p) && nth <= r.resumed => Left::Before,
        p if is_shipping(p) => Left::Committed,
        other => panic!("crash point {other} has no expected state in warehouse_crash"),
    }
}

/// Requests Batch receives from the run that crashes at `spec`: a run resumes the requests
/// left pending before it reads, and sends one request at a time.
fn expected_requests_received(spec: &str, r: &Reference) -> usize {
    let (point, nth) = parse_spec(spec);
    match point {
        "before_send" => nth - 1,
        "after_send" | "after_record" => nth,
        _ => r.resumed,
    }
}

/// Events a resumed run sends twice after a crash at `spec`: only the request answered and
/// not recorded (`after_send`).
fn expected_duplicates(spec: &str, r: &Reference) -> usize {
    match parse_spec(spec) {
        ("after_send", nth) => r.request_events[nth - 1] as usize,
        _ => 0,
    }
}

fn crash_and_resume(url: &str, sc: &Scenario, spec: &str, r: &Reference) {
    let (point, _) = parse_spec(spec);
    let em = emulator_free(Faults::default());
    let w = World::new(url);
    let s = w.sync("orders", &em.endpoint(), SYNC);
    (sc.prepare)(&w, &s);
    let n0 = em.received().len();
    let before = s.dump(&w);
    (sc.crash_input)(&w);

    let crashed = run_bin(&s.dir, &["run", "--json", "--quiet"], Some(spec));
    assert_eq!(
        crashed.signal(),
        Some(libc::SIGKILL),
        "the run must die by SIGKILL at {spec}: {:?}\nstderr: {}",
        crashed.status,
        crashed.stderr
    );
    assert!(
        crashed
            .stderr
            .contains(&format!("crash point {point} reached")),
        "{}",
        crashed.stderr
    );
    lock_freed(&w, &s);

    // The tables: as before the run, or with its whole commit; the delta empty either way.
    let after = s.dump(&w);
    assert_eq!(
        after.delta_rows, 0,
        "the delta is empty after a crash at {spec}"
    );
    let left = if before.unchanged_by_commit(&after) {
        Left::Before
    } else if after.commit_view() == r.dump.commit_view() {
        Left::Committed
    } else {
        panic!(
            "the sync's tables are neither as before the run nor its whole commit:\n{}",
            differences(&[
                ("before", &before),
                ("after", &after),
                ("committed", &r.dump)
            ])
        )
    };
    assert_eq!(
        left,
        expected_left(spec, r),
        "the tables after a crash at {spec}"
    );

    let receipts = em.received()[n0..].to_vec();
    assert_eq!(
        by_request(&receipts).len(),
        expected_requests_received(spec, r),
        "requests Batch received from the run that crashed at {spec}"
    );
    let flying = in_flight(&receipts, &s.pending_events(&w));
    assert!(flying.len() <= 1, "one lane: {} in flight", flying.len());
    let flying_events: usize = flying.iter().map(Vec::len).sum();

    // The next run completes and converges on the crash-free one.
    let resumed = s.run();
    resumed.expect_code(0, "the run after the crash");
    let js = resumed.json();
    assert_eq!(js["status"], "completed", "{js}");
    assert_eq!(js["events_pending"], 0, "{js}");
    let got = em.received()[n0..].to_vec();
    assert_same_events(&distinct(&got), &r.events, spec);
    let dups = duplicates(&got);
    assert_eq!(
        dups, flying_events,
        "duplicates are exactly the events of the request in flight at the crash"
    );
    assert_eq!(dups, expected_duplicates(spec, r), "events received twice");
    assert!(counts(&got).values().all(|&n| n <= 2));
    let end = s.dump(&w);
    assert_eq!(
        end.baseline, r.dump.baseline,
        "the baseline is the crash-free run's"
    );
    assert_eq!(end.delta_rows, 0);
    assert!(end.request_ids("pending").is_empty());
    // The same requests delivered (a crashed run that resumed leaves a record behind, so the
    // request ids may be shifted).
    let shape = |d: &Dump| -> Vec<(String, String)> {
        d.requests
            .iter()
            .map(|q| {
                let (_, rest) = q.commit.split_once(',').unwrap();
                let (_, rest) = rest.split_once(',').unwrap();
                (rest.to_string(), q.state.clone())
            })
            .collect()
    };
    assert_eq!(shape(&end), shape(&r.dump));
}

fn every_point(sc: &Scenario, specs: &[String]) {
    let url = url_or_skip!(PG_VAR);
    let r = reference(&url, sc);
    every_case(sc.name, specs, |spec| crash_and_resume(&url, sc, spec, &r));
}

fn all_points() -> Vec<String> {
    batchsync::crash::POINTS
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn a_sigkill_at_any_crash_point_of_a_first_database_run_leaves_the_tables_before_or_committed_and_the_next_run_converges(
) {
    let mut specs = all_points();
    // The second request.
    specs.extend(["before_send:2", "after_send:2", "after_record:2"].map(String::from));
    every_point(&FIRST_RUN, &specs);
}

#[test]
fn a_sigkill_at_any_crash_point_of_a_database_delta_run_leaves_the_tables_before_or_committed_and_the_next_run_converges(
) {
    every_point(&AFTER_DAY1, &all_points());
}

#[test]
fn a_sigkill_at_any_crash_point_of_a_database_run_that_resumes_leaves_the_tables_before_or_committed_and_the_next_run_converges(
) {
    let mut specs = all_points();
    // The run's own second request, after the 2 it resumed.
    specs.extend(["before_send:4", "after_send:4", "after_record:4"].map(String::from));
    every_point(&RESUMING, &specs);
}

// ---------------------------------------------------------------------------------------------
// 2. The run's connections terminated by the server
// ---------------------------------------------------------------------------------------------

/// Where a run is when the server terminates its connections.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Moment {
    /// The stage statement, waiting on the test's lock on the baseline.
    StageStatement,
    /// Held at `mid_fetch`: the cursor has yielded its first batch, the next FETCH is due.
    Fetch,
    /// The first outbox INSERT, waiting on the test's lock on the outbox.
    WriteBack,
    /// Held at `before_commit`: everything written, the COMMIT not yet sent.
    BeforeCommit,
    /// Held at `after_send:1`: Batch answered the first request, the answer is not recorded.
    ShippingAnswered,
    /// Held at `after_record:1`: the first answer recorded, the next request not yet read.
    ShippingRecorded,
}

impl Moment {
    fn committed(self) -> bool {
        matches!(self, Moment::ShippingAnswered | Moment::ShippingRecorded)
    }
}

/// Day 1: 300 orders, shipped. Day 2: 5 removed, 3 changed, 2,500 added: more rows than one
/// FETCH brings (2,000), 13 requests.
const TERMINATED_DAY2: u64 = 2_500;

/// A connection of the test's own holding `table` in ACCESS EXCLUSIVE mode until dropped.
struct TableLock(Pg);

impl TableLock {
    fn take(url: &str, table: &str) -> TableLock {
        let pg = Pg::connect(url);
        pg.exec(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ));
        TableLock(pg)
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = self.0.rt.block_on(self.0.client.batch_execute("ROLLBACK"));
    }
}

/// Waits until a connection of `pid` waits on a lock while running a statement that starts
/// with `statement` and holds `text` (the server keeps the first 1 kB of a statement's text);
/// returns its backend pid.
fn waiting_on_lock(w: &World, pid: u32, statement: &str, text: &str) -> i32 {
    let mut found = None;
    let waited = wait_until(Duration::from_secs(60), || {
        found = backends_of(w, pid).into_iter().find(|(_, wait, query)| {
            wait.as_deref() == Some("Lock")
                && query.trim_start().starts_with(statement)
                && query.contains(text)
        });
        found.is_some()
    });
    assert!(
        waited,
        "the run never waited on the lock in {statement}…: {:?}",
        backends_of(w, pid)
    );
    found.unwrap().0
}

fn terminated_run(url: &str, moment: Moment, reference: &Reference) {
    let em = emulator_free(Faults::default());
    let w = World::new(url);
    let s = w.sync("orders", &em.endpoint(), SYNC);
    (TERMINATED_SCENARIO.prepare)(&w, &s);
    let before = s.dump(&w);
    let n0 = em.received().len();
    (TERMINATED_SCENARIO.crash_input)(&w);

    let failed = match moment {
        Moment::StageStatement => {
            let lock = TableLock::take(url, &s.table("baseline"));
            let t0 = Instant::now();
            let child = s.spawn(&[]);
            waiting_on_lock(&w, child.id(), "WITH s AS", "");
            assert!(terminate(&w, child.id()) > 0);
            drop(lock);
            collect(child, t0)
        }
        Moment::WriteBack => {
            let held = Paused::start(&s, "after_read");
            let lock = TableLock::take(url, &s.table("outbox"));
            held.release();
            waiting_on_lock(&w, held.pid(), "INSERT INTO", "orders_outbox");
            assert!(terminate(&w, held.pid()) > 0);
            drop(lock);
            held.wait()
        }
        Moment::Fetch
        | Moment::BeforeCommit
        | Moment::ShippingAnswered
        | Moment::ShippingRecorded => {
            let spec = match moment {
                Moment::Fetch => "mid_fetch",
                Moment::BeforeCommit => "before_commit",
                Moment::ShippingAnswered => "after_send:1",
                _ => "after_record:1",
            };
            let held = Paused::start(&s, spec);
            assert!(held.terminate(&w) > 0);
            held.resume()
        }
    };

    // The run fails, in the database's words.
    failed.expect_code(1, "a run whose connections the server terminated");
    assert!(
        failed.stderr.contains(TERMINATED),
        "the error is the database's: {}",
        failed.stderr
    );
    assert_eq!(failed.json()["status"], "failed");

    // Nothing half-applied: before COMMIT, the tables as they were and nothing sent; after
    // it, the whole commit, and the one request Batch received.
    let after = s.dump(&w);
    let receipts = em.received()[n0..].to_vec();
    if moment.committed() {
        assert_eq!(after.commit_view(), reference.dump.commit_view());
        assert_eq!(by_request(&receipts).len(), 1, "the first request was sent");
        let first = &after.requests[before.requests.len()];
        let state = if moment == Moment::ShippingAnswered {
            "pending"
        } else {
            "delivered"
        };
        assert_eq!(first.state, state, "the first request's record");
    } else {
        assert_eq!(after, before, "the tables as they were before the run");
        assert!(receipts.is_empty(), "nothing was sent");
    }
    assert_eq!(after.delta_rows, 0);
    let flying = in_flight(&receipts, &s.pending_events(&w));
    let flying_events: usize = flying.iter().map(Vec::len).sum();

    // The next run is exact.
    let next = s.run();
    next.expect_code(0, "the run after the connections were terminated");
    let js = next.json();
    assert_eq!(js["status"], "completed", "{js}");
    assert_eq!(js["events_pending"], 0, "{js}");
    let got = em.received()[n0..].to_vec();
    assert_same_events(&distinct(&got), &reference.events, &format!("{moment:?}"));
    assert_eq!(
        duplicates(&got),
        flying_events,
        "duplicates: the request in flight"
    );
    let dups = if moment == Moment::ShippingAnswered {
        reference.request_events[0] as usize
    } else {
        0
    };
    assert_eq!(duplicates(&got), dups);
    let end = s.dump(&w);
    assert_eq!(end.baseline, reference.dump.baseline);
    assert_eq!(end.delta_rows, 0);
    assert!(end.request_ids("pending").is_empty());
}

const TERMINATED_SCENARIO: Scenario = Scenario {
    name: "day 2 of 2,500 added orders, its connections terminated",
    prepare: |w, s| {
        w.insert(0..300, 1);
        s.run().expect_code(0, "the day-1 run");
    },
    crash_input: |w| w.day2(300, TERMINATED_DAY2),
};

#[test]
fn connections_terminated_by_the_server_at_each_step_fail_the_run_with_the_databases_message_half_apply_nothing_and_the_next_run_is_exact(
) {
    let url = url_or_skip!(PG_VAR);
    let r = reference(&url, &TERMINATED_SCENARIO);
    every_case(
        "terminated",
        &[
            Moment::StageStatement,
            Moment::Fetch,
            Moment::WriteBack,
            Moment::BeforeCommit,
            Moment::ShippingAnswered,
            Moment::ShippingRecorded,
        ],
        |m| terminated_run(&url, *m, &r),
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Rounds of changes, each run killed somewhere, against a crash-free twin
// ---------------------------------------------------------------------------------------------

/// How a round's run is stopped.
#[derive(Debug, Clone)]
enum Kill {
    /// `BATCHSYNC_CRASH_AT`: SIGKILL at the point (a run that never reaches it completes).
    At(String),
    /// SIGKILL this long after the start.
    After(Duration),
    /// The run's connections terminated while it is held at the point.
    TerminateAt(String),
    /// The run's connections terminated this long after the start.
    TerminateAfter(Duration),
}

impl Kill {
    /// A seeded random kill of a run expected to send `requests` requests in about `span`.
    fn draw(rng: &mut rand::rngs::StdRng, requests: u64, span: Duration) -> Kill {
        let points = batchsync::crash::POINTS;
        let point = points[rng.gen_range(0..points.len())];
        let nth = if is_shipping(point) {
            rng.gen_range(1..=requests.max(1))
        } else {
            1
        };
        let spec = format!("{point}:{nth}");
        // One draw whatever the span, so the seed's sequence does not depend on the machine.
        let at = span.mul_f64(rng.gen::<f64>());
        match rng.gen_range(0..4) {
            0 => Kill::At(spec),
            1 => Kill::After(at),
            2 => Kill::TerminateAt(spec),
            _ => Kill::TerminateAfter(at),
        }
    }

    fn terminates(&self) -> bool {
        matches!(self, Kill::TerminateAt(_) | Kill::TerminateAfter(_))
    }

    /// Runs `s` and stops it so.
    fn run(&self, w: &World, s: &Sync) -> Ran {
        match self {
            Kill::At(spec) => run_bin(&s.dir, &["run", "--json", "--quiet"], Some(spec)),
            Kill::TerminateAt(spec) => match Paused::try_start(s, spec) {
                Ok(held) => {
                    held.terminate(w);
                    held.resume()
                }
                Err(completed) => completed,
            },
            Kill::After(at) | Kill::TerminateAfter(at) => {
                let t0 = Instant::now();
                let mut child = s.spawn(&[]);
                wait_until(*at, || child.try_wait().unwrap().is_some());
                if child.try_wait().unwrap().is_none() {
                    if self.terminates() {
                        terminate(w, child.id());
                    } else {
                        child.kill().unwrap();
                    }
                }
                collect(child, t0)
            }
        }
    }
}

/// The round's changes: orders added (of 1 to 3 per customer), removed, changed, re-entered.
fn change(w: &World, rng: &mut rand::rngs::StdRng, round: u64, next: &mut u64) {
    let orders = &w.orders;
    let removed = rng.gen_range(0..40);
    let changed = rng.gen_range(0..40);
    w.pg.exec(&format!(
        "DELETE FROM {orders} WHERE order_id IN
           (SELECT order_id FROM {orders} ORDER BY md5(order_id::text || 'r{round}') LIMIT {removed});
         UPDATE {orders} SET amount = amount + 1 WHERE order_id IN
           (SELECT order_id FROM {orders} ORDER BY md5(order_id::text || 'c{round}') LIMIT {changed})"
    ));
    if round.is_multiple_of(2) {
        // Some of the removed orders come back, as they were.
        w.insert_where(
            0..*next,
            1,
            &format!(
                "NOT EXISTS (SELECT 1 FROM {orders} o WHERE o.order_id = 100000 + i)
                 AND md5(i::text || 'e{round}') < '3'"
            ),
        );
    }
    let added = rng.gen_range(50..700);
    w.insert(*next..*next + added, rng.gen_range(1..=3));
    *next += added;
}

#[test]
fn rounds_of_changes_each_run_killed_at_a_seeded_random_point_or_moment_end_exactly_as_a_crash_free_twin(
) {
    const ROUNDS: u64 = 12;
    const SEED: u64 = 0x00db_c4a5;
    const LATENCY: Duration = Duration::from_millis(40);
    let url = url_or_skip!(PG_VAR);
    let w = World::new(&url);
    let twin_em = emulator_free(Faults::default());
    // Answers take a while: a moment after the commit often lands with a request in flight.
    let em = emulator_free(latency(LATENCY.as_millis() as u64));
    let twin = w.sync("twin", &twin_em.endpoint(), SYNC_CHANGES);
    let s = w.sync("crashy", &em.endpoint(), SYNC_CHANGES);
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut next = 400;
    w.insert(0..next, 1);
    let mut log = Vec::new();
    let mut expected_dups = 0;
    for round in 0..ROUNDS {
        if round > 0 {
            change(&w, &mut rng, round, &mut next);
        }
        let t0 = twin_em.received().len();
        let twin_ran = twin.run();
        twin_ran.expect_code(0, "the twin's run");
        let twin_got = twin_em.received()[t0..].to_vec();
        // This sync's run takes about the twin's time, plus the latency of each request.
        let requests = twin_ran.json()["requests"].as_u64().unwrap();
        let span = twin_ran.took + LATENCY * requests as u32;

        let kill = Kill::draw(&mut rng, requests, span);
        let n0 = em.received().len();
        let killed = kill.run(&w, &s);
        let ended = match (killed.code(), killed.signal()) {
            (Some(0), _) => "completed",
            (Some(1), _) if kill.terminates() => {
                // A run held while its connections end always has the database's words (test
                // 2); one caught at a random moment may send its next statement just as its
                // driver sees the connection end, and then says only "connection closed": the
                // driver's task records the server's message a moment after it closes the
                // connection (see docs/RELIABILITY.md).
                let random_moment = matches!(kill, Kill::TerminateAfter(_));
                assert!(
                    killed.stderr.contains(TERMINATED)
                        || (random_moment && killed.stderr.contains("connection closed")),
                    "round {round}, {kill:?}: the error is the database's: {}",
                    killed.stderr
                );
                "failed"
            }
            (_, Some(libc::SIGKILL)) if !kill.terminates() => "killed",
            _ => panic!(
                "round {round}, {kill:?}: {:?}\nstderr: {}",
                killed.status, killed.stderr
            ),
        };
        // Let the emulator finish what a dead client had sent.
        std::thread::sleep(Duration::from_millis(150));
        lock_freed(&w, &s);
        assert_eq!(
            s.dump(&w).delta_rows,
            0,
            "round {round}: the delta after {kill:?}"
        );
        let receipts = em.received()[n0..].to_vec();
        let flying = in_flight(&receipts, &s.pending_events(&w));
        assert!(flying.len() <= 1, "round {round}: one lane");
        let flying_events: usize = flying.iter().map(Vec::len).sum();
        expected_dups += flying_events;

        let recovered = s.run();
        recovered.expect_code(0, "the run after the kill");
        let js = recovered.json();
        assert_eq!(js["events_pending"], 0, "{js}");
        let got = em.received()[n0..].to_vec();
        log.push(format!(
            "round {round}: {kill:?} {ended}; the twin sent {} events, this sync {} with {flying_events} in flight",
            twin_got.len(),
            got.len()
        ));
        let report = log.join("\n");

        // Exactly the twin's events, plus the requests in flight once more.
        let (mine, theirs) = (counts(&got), counts(&twin_got));
        let mut extra = 0;
        for (e, n) in &mine {
            let t = theirs.get(e).copied().unwrap_or(0);
            assert!(
                *n >= t,
                "round {round}: an event the twin sent {t} times came {n} times\n{report}"
            );
            extra += n - t;
        }
        for e in theirs.keys() {
            assert!(
                mine.contains_key(e),
                "round {round}: an event of the twin's is missing: {e:?}\n{report}"
            );
        }
        assert_eq!(
            extra, flying_events,
            "round {round}: duplicates are the requests in flight\n{report}"
        );
        assert_eq!(
            s.baseline(&w),
            twin.baseline(&w),
            "round {round}: the baseline\n{report}"
        );
        assert_eq!(s.dump(&w).delta_rows, 0);
        assert_eq!(twin.dump(&w).delta_rows, 0);
    }
    let report = log.join("\n");
    let (got, want) = (em.received(), twin_em.received());
    assert_same_events(&distinct(&got), &distinct(&want), "after every round");
    assert_eq!(
        duplicates(&got) - duplicates(&want),
        expected_dups,
        "{report}"
    );
    for kind in ["killed", "failed"] {
        assert!(
            log.iter().any(|l| l.contains(kind)),
            "no round's run was {kind}: the seed does not exercise it\n{report}"
        );
    }
    eprintln!("{report}");
}

// ---------------------------------------------------------------------------------------------
// 4. Fresh working directories
// ---------------------------------------------------------------------------------------------

/// Every file and directory under `dir`, hidden ones included, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            found.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn runs_from_fresh_working_directories_holding_only_the_config_are_exact_and_write_no_local_file() {
    let url = url_or_skip!(PG_VAR);
    let w = World::new(&url);
    let twin_em = emulator_free(Faults::default());
    let em = emulator_free(Faults::default());
    let twin = w.sync("twin", &twin_em.endpoint(), SYNC);
    let config = w.config("fresh", &em.endpoint(), SYNC);
    // A run in a new directory holding the config alone: it leaves nothing else there.
    let fresh = |what: &str, extra: &[&str], crash_at: Option<&str>| -> Ran {
        let d = Dir::new();
        d.write("batchsync.toml", &config);
        let mut args = vec!["run", "--json", "--quiet"];
        args.extend_from_slice(extra);
        let r = run_bin(&d, &args, crash_at);
        assert_eq!(
            files_under(d.path()),
            vec!["batchsync.toml".to_string()],
            "{what}: the working directory holds the config alone"
        );
        r
    };
    {
        let d = Dir::new();
        d.write("batchsync.toml", &config);
        run_bin(&d, &["setup"], None).expect_code(0, "setup");
        assert_eq!(
            files_under(d.path()),
            vec!["batchsync.toml".to_string()],
            "setup"
        );
    }
    let s = Sync {
        name: "fresh".into(),
        schema: w.schema.name.clone(),
        config: config.clone(),
        dir: Dir::new(),
    };
    // After each step, this sync has sent what the twin has, and holds its baseline.
    let same_as_twin = |what: &str, dups: usize| {
        twin.run().expect_code(0, "the twin's run");
        let (got, want) = (em.received(), twin_em.received());
        assert_same_events(&distinct(&got), &distinct(&want), what);
        assert_eq!(duplicates(&got), dups, "{what}");
        assert_eq!(s.baseline(&w), twin.baseline(&w), "{what}: the baseline");
        assert_eq!(s.dump(&w).delta_rows, 0);
    };

    w.insert(0..300, 1);
    let r = fresh("day 1", &[], None);
    r.expect_code(0, "day 1");
    assert_eq!(r.json()["events_sent"], 300);
    same_as_twin("day 1", 0);

    let r = fresh("no change", &[], None);
    r.expect_code(0, "a run without changes");
    assert_eq!(r.json()["events"], 0);
    same_as_twin("no change", 0);

    w.day2(300, 450);
    let r = fresh("day 2, killed after its commit", &[], Some("after_commit"));
    assert_eq!(r.signal(), Some(libc::SIGKILL), "{}", r.stderr);
    lock_freed(&w, &s);
    let r = fresh("day 2, shipped by the next run", &[], None);
    r.expect_code(0, "the run after the kill");
    assert_eq!(r.json()["resumed_requests"], 3);
    same_as_twin("day 2", 0);

    w.insert(750..1_350, 1);
    let r = fresh("day 3, one request", &["--max-requests", "1"], None);
    r.expect_code(0, "day 3");
    assert!(r.json()["events_pending"].as_u64().unwrap() > 0);
    let r = fresh("day 3, the rest", &[], None);
    r.expect_code(0, "the rest of day 3");
    assert_eq!(r.json()["events_pending"], 0);
    same_as_twin("day 3", 0);
}

// ---------------------------------------------------------------------------------------------
// 5. The advisory lock
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_database_run_exits_75_and_changes_nothing_and_a_killed_holders_lock_is_free_at_once() {
    let url = url_or_skip!(PG_VAR);
    let w = World::new(&url);
    let twin_em = emulator_free(Faults::default());
    let em = emulator_free(Faults::default());
    let twin = w.sync("twin", &twin_em.endpoint(), SYNC);
    let s = w.sync("locked", &em.endpoint(), SYNC);
    w.insert(0..600, 1);
    twin.run().expect_code(0, "the twin's run");

    // The holder is held after its commit, about to send its first request.
    let holder = Paused::start(&s, "before_send");
    assert!(
        lock_held(&w, &s),
        "the holder holds the sync's advisory lock"
    );
    let before = s.dump(&w);
    for (what, dir) in [("the same directory", &s.dir), ("a fresh one", &Dir::new())] {
        dir.write("batchsync.toml", &s.config);
        let second = run_bin(dir, &["run", "--json"], None);
        second.expect_code(75, &format!("a second run from {what}"));
        assert!(
            second.took < Duration::from_secs(5),
            "exits at once, took {:?}",
            second.took
        );
        assert!(
            second.stderr.contains("advisory lock"),
            "the message names the lock: {}",
            second.stderr
        );
        assert_eq!(second.json()["status"], "failed");
        assert_eq!(
            s.dump(&w),
            before,
            "the refused run from {what} changed nothing"
        );
    }
    assert!(em.received().is_empty(), "nothing was sent");

    let killed = holder.kill();
    assert_eq!(killed.signal(), Some(libc::SIGKILL));
    // No manual step, no timeout to wait out: the lock dies with the holder's connection,
    // as soon as the server sees the socket closed.
    let freed = lock_freed(&w, &s);
    assert!(
        freed < Duration::from_secs(2),
        "freed {freed:?} after the kill"
    );
    let next = s.run();
    next.expect_code(0, "the run right after the holder was killed");
    assert_eq!(next.json()["events_pending"], 0);
    // Released with the run's connection, as its process exits.
    lock_freed(&w, &s);
    let got = em.received();
    assert_same_events(
        &distinct(&got),
        &distinct(&twin_em.received()),
        "after the holder died",
    );
    assert_eq!(
        duplicates(&got),
        0,
        "the holder was killed before it sent anything"
    );
    assert_eq!(s.baseline(&w), twin.baseline(&w));
}

/// The backend holding the sync's advisory lock.
fn lock_holder(w: &World, s: &Sync) -> i32 {
    w.pg.rt
        .block_on(w.pg.client.query_one(
            &format!(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND classid = {}::int4::oid AND objid = hashtext('batchsync:{}.{}')::oid
                   AND objsubid = 2",
                batchsync::warehouse::LOCK_CLASS,
                s.schema,
                s.name
            ),
            &[],
        ))
        .unwrap()
        .get(0)
}

#[test]
fn a_run_that_loses_its_locks_connection_stops_at_its_next_database_step() {
    let url = url_or_skip!(PG_VAR);
    let w = World::new(&url);
    let em = emulator_free(Faults::default());
    let s = w.sync("orphan", &em.endpoint(), SYNC);
    w.insert(0..600, 1);
    // The first of 3 requests delivered and recorded; then the lock's connection alone ends
    // (a pooler or a firewall dropping an idle connection, idle_session_timeout).
    let held = Paused::start(&s, "after_record:1");
    let holder = lock_holder(&w, &s);
    w.pg.exec(&format!("SELECT pg_terminate_backend({holder}, 10000)"));
    assert!(!lock_held(&w, &s), "the lock died with its connection");
    // Another run could take the sync now: the held one must not go on as if it held it.
    let orphan = held.resume();
    orphan.expect_code(1, "a run whose lock's connection was lost");
    assert_eq!(
        by_request(&em.received()).len(),
        1,
        "nothing sent without the lock"
    );
    let next = s.run();
    next.expect_code(0, "the next run");
    assert_eq!(next.json()["events_pending"], 0);
    assert_eq!(duplicates(&em.received()), 0);
}
