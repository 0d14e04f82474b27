//! `batchsync serve`: the real binary on a short interval against the emulator, scraped over
//! HTTP like Prometheus and a liveness probe would; its metrics held to what the store
//! (`status --json`, `rejects --json`) and the emulator say.

use crate::common::crash_support::{
    collect, emulator_free, latency, signal, spawn, wait_until, write_orders,
    Config as OrdersConfig, Customers,
};
use crate::common::*;
use batchsync::emulate::{Emulator, EmulatorConfig, Faults};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// The process and its endpoints
// ---------------------------------------------------------------------------------------------

/// A `batchsync serve` process, its address read from the one line it prints on stdout; its
/// stderr goes to a file (a pipe nobody reads would fill up and block it).
struct Serving {
    child: Option<Child>,
    addr: String,
    log: std::path::PathBuf,
}

impl Serving {
    fn start(d: &Dir, args: &[&str]) -> Serving {
        let log = d.join("serve.log");
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let mut child = d
            .cmd(&all)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("batchsync serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no address on stdout: {line:?}\nstderr: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Serving {
            child: Some(child),
            addr,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request over a fresh connection: (status, body).
    fn request(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).expect("serve accepts connections");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path)
    }

    fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn metrics(&self) -> Scrape {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        Scrape::parse(&body)
    }

    /// SIGTERM, then the exit status (within `within`).
    fn terminate(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        signal(child, libc::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                t0.elapsed() < within,
                "serve still running {within:?} after SIGTERM\nstderr: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The samples of one `/metrics` answer: (name, labels sorted) → value. Every line is read:
/// `# HELP` and `# TYPE` comments, else `name{label="value",…} value`.
struct Scrape {
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "line {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("name{labels} value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{line:?}: {e}")),
            };
            let (name, mut labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end in }");
                    let labels = body
                        .split(',')
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            let v = v
                                .strip_prefix('"')
                                .and_then(|v| v.strip_suffix('"'))
                                .expect("a quoted value");
                            (k.to_string(), v.to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            assert!(
                name.starts_with("batchsync_")
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line:?}"
            );
            labels.sort();
            assert!(
                samples.insert((name, labels), value).is_none(),
                "a series twice: {line:?}"
            );
        }
        Scrape { samples, types }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self
            .get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in {:?}", self.samples.keys()));
        assert_eq!(v.fract(), 0.0, "{name} counts whole things: {v}");
        v as u64
    }

    /// Every sample of `name`, by its labels.
    fn series(&self, name: &str) -> Vec<(&Vec<(String, String)>, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect()
    }

    fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
        &labels.iter().find(|(k, _)| k == key).unwrap().1
    }
}

// ---------------------------------------------------------------------------------------------
// A Batch that can go down and come back on the same port
// ---------------------------------------------------------------------------------------------

/// The emulator on a runtime of the test's own, so that it can be shut down (connections
/// refused) and started again on the same address. Counts what every instance received.
struct Batch {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    config: EmulatorConfig,
    live: Option<Emulator>,
    received_before: usize,
    answered_before: BTreeMap<u16, u64>,
}

impl Batch {
    fn start(faults: Faults) -> Batch {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = EmulatorConfig {
            api_key: API_KEY.into(),
            project_key: PROJECT_KEY.into(),
            limits: false,
            faults,
            record_path: None,
            seed: 7,
        };
        let live = rt
            .block_on(Emulator::start(([127, 0, 0, 1], 0).into(), config.clone()))
            .expect("the emulator starts");
        Batch {
            addr: live.addr(),
            rt,
            config,
            live: Some(live),
            received_before: 0,
            answered_before: BTreeMap::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn down(&mut self) {
        let e = self.live.take().expect("up");
        self.received_before += e.received().len();
        for (status, n) in e.stats().by_status {
            *self.answered_before.entry(status).or_default() += n;
        }
        self.rt.block_on(e.shutdown());
    }

    fn up(&mut self) {
        let e = self
            .rt
            .block_on(Emulator::start(self.addr, self.config.clone()))
            .expect("the emulator starts again on its port");
        self.live = Some(e);
    }

    /// Events accepted, by every instance.
    fn received(&self) -> usize {
        self.received_before + self.live.as_ref().map_or(0, |e| e.received().len())
    }

    /// Answers with this HTTP status, by every instance.
    fn answered(&self, status: u16) -> u64 {
        let live = self.live.as_ref().map_or(0, |e| {
            e.stats().by_status.get(&status).copied().unwrap_or(0)
        });
        self.answered_before.get(&status).copied().unwrap_or(0) + live
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A row whose amount is no number: rejected locally, and still rejected on every run after.
const BAD_ROW: &str = "1099,hopper@example.com,2026-11-20T21:00:00Z,lots,EUR,false,,paid\n";

/// A fixture day plus the bad row, written whole then renamed into place, so a run never
/// reads it half-written.
fn write_day(d: &Dir, fixture_name: &str) {
    let day = std::fs::read_to_string(fixture(fixture_name)).unwrap();
    d.write("orders.csv.tmp", format!("{day}{BAD_ROW}"));
    std::fs::rename(d.join("orders.csv.tmp"), d.join("orders.csv")).unwrap();
}

/// The orders fixture against `endpoint`, giving up on a request after two attempts (so a
/// failing tick is short).
fn orders_sync(d: &Dir, endpoint: &str) {
    d.orders_config(endpoint);
    d.edit_config(
        "project_key_env = \"BATCH_PROJECT_KEY\"",
        "project_key_env = \"BATCH_PROJECT_KEY\"\nmax_attempts = 2",
    );
}

fn runs_of(status: &Value) -> &Vec<Value> {
    status["runs"].as_array().unwrap()
}

/// A scrape and `status --json` with every run, read with no tick in between: a tick between
/// the two shows as a run the scrape did not count, and they are read again.
fn consistent_reading(serve: &Serving, d: &Dir) -> (Scrape, Value) {
    (0..50)
        .find_map(|_| {
            let m = serve.metrics();
            let status = json_of(d.run(&["status", "--json", "--runs", "1000"])).1;
            let counted: u64 = m
                .series("batchsync_runs_total")
                .iter()
                .map(|(_, v)| *v as u64)
                .sum();
            if counted == runs_of(&status).len() as u64 {
                Some((m, status))
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("a scrape and a status with the same runs")
}

fn wait_for(what: &str, s: &Serving, within: Duration, mut cond: impl FnMut() -> bool) {
    assert!(
        wait_until(within, &mut cond),
        "{what}: not within {within:?}\nstderr: {}",
        s.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn scheduled_runs_go_on_through_a_batch_outage_and_the_metrics_match_the_store_and_batch() {
    let mut batch = Batch::start(Faults {
        // ada's operations are dropped by Batch: rejects of source `batch`.
        reject_custom_ids: vec!["ada@example.com".into()],
        ..Faults::default()
    });
    let d = Dir::new();
    orders_sync(&d, &batch.endpoint());
    write_day(&d, "orders_day1.csv");
    let mut serve = Serving::start(&d, &["--every", "1s", "--listen", "127.0.0.1:0"]);

    // Tick 1 sends day 1 (10 delivered, ada's 2 dropped by Batch, the bad row rejected here).
    // (Asked of the metrics: /status, like `status`, can fail while the first run creates
    // the store.)
    wait_for("the first run", &serve, Duration::from_secs(30), || {
        serve
            .metrics()
            .get("batchsync_runs_total", &[("status", "partial")])
            == Some(1.0)
    });
    assert_eq!(batch.received(), 10);

    // Batch goes away, and day 2 brings 3 new orders: the tick that commits them cannot ship.
    batch.down();
    write_day(&d, "orders_day2.csv");
    wait_for(
        "a failed run during the outage",
        &serve,
        Duration::from_secs(30),
        || {
            let (code, body) = serve.get("/healthz");
            assert_eq!(code, 200, "/healthz during the outage: {body}");
            // The store records the run before serve counts its tick (it reads the store
            // again first): wait for both.
            runs_of(&serve.status())
                .iter()
                .any(|r| r["status"] == "failed" && r["events_pending"].as_u64() > Some(0))
                && serve
                    .metrics()
                    .get("batchsync_runs_total", &[("status", "failed")])
                    .is_some_and(|n| n >= 1.0)
        },
    );
    // A failing run ends neither serve nor its liveness: /healthz said 200 at every probe.
    let during = serve.metrics();
    assert!(during.value("batchsync_runs_total", &[("status", "failed")]) >= 1);
    assert!(during.value("batchsync_events_pending", &[]) > 0);
    assert!(
        during.value(
            "batchsync_requests_total",
            &[("endpoint", "update"), ("code", "connection")]
        ) >= 2
    );
    assert_eq!(serve.get("/healthz").0, 200);

    // Batch is back: a later tick ships what the failed one left pending.
    batch.up();
    wait_for(
        "the pending events delivered",
        &serve,
        Duration::from_secs(30),
        || {
            let st = serve.status();
            st["pending"]["events"] == 0 && runs_of(&st)[0]["status"] != "failed"
        },
    );

    let (m, status) = consistent_reading(&serve, &d);
    let runs = runs_of(&status);
    let (_, open) = json_of(d.run(&["rejects", "--json"]));
    let (_, all) = json_of(d.run(&["rejects", "--all", "--json"]));
    let recorded = |source: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["source"] == source)
            .count() as u64
    };
    let sum = |field: &str| runs.iter().map(|r| r[field].as_u64().unwrap()).sum::<u64>();

    // Every family, of the type its name says.
    for (name, kind) in [
        ("batchsync_runs_total", "counter"),
        ("batchsync_events_sent_total", "counter"),
        ("batchsync_rows_rejected_total", "counter"),
        ("batchsync_rejects_open", "gauge"),
        ("batchsync_events_pending", "gauge"),
        ("batchsync_last_success_timestamp_seconds", "gauge"),
        ("batchsync_run_duration_seconds", "histogram"),
        ("batchsync_requests_total", "counter"),
    ] {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    // Runs, by the status the store recorded.
    for st in ["completed", "partial", "failed"] {
        let stored = runs.iter().filter(|r| r["status"] == st).count() as u64;
        assert_eq!(
            m.value("batchsync_runs_total", &[("status", st)]),
            stored,
            "{st} runs; store: {status}"
        );
    }
    assert_eq!(m.value("batchsync_runs_total", &[("status", "locked")]), 0);
    assert!(m.value("batchsync_runs_total", &[("status", "failed")]) >= 1);
    assert!(runs.len() >= 3, "several ticks: {status}");
    // Events: what the store recorded as delivered is what Batch accepted: 10 of day 1, then
    // 2 of day 2's 3 (ada's order 1013 is dropped).
    assert_eq!(
        m.value("batchsync_events_sent_total", &[]),
        sum("events_sent")
    );
    assert_eq!(m.value("batchsync_events_sent_total", &[]), 12);
    assert_eq!(batch.received(), 12);
    // Rejects, by where they were found.
    let local = m.value("batchsync_rows_rejected_total", &[("source", "local")]);
    let dropped = m.value("batchsync_rows_rejected_total", &[("source", "batch")]);
    assert_eq!((local, dropped), (recorded("local"), recorded("batch")));
    assert_eq!((local, dropped), (1, 3));
    assert_eq!(local + dropped, sum("rejected"));
    assert_eq!(
        m.value("batchsync_rejects_open", &[]),
        open.as_array().unwrap().len() as u64
    );
    // 1001 and the bad row, unchanged, and 1013; 1004 left the segment.
    assert_eq!(m.value("batchsync_rejects_open", &[]), 3);
    assert_eq!(
        m.value("batchsync_events_pending", &[]),
        status["pending"]["events"].as_u64().unwrap()
    );
    // The last success is the newest completed or partial run's end.
    let last_ok = runs
        .iter()
        .find(|r| r["status"] == "completed" || r["status"] == "partial")
        .unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(last_ok["finished_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    let at = m
        .get("batchsync_last_success_timestamp_seconds", &[])
        .unwrap();
    assert!((at - finished).abs() < 0.001, "{at} vs {finished}");
    // The duration histogram: one observation per run, cumulative buckets up to +Inf.
    let count = m.value("batchsync_run_duration_seconds_count", &[]);
    assert_eq!(count, runs.len() as u64);
    let mut buckets: Vec<(f64, f64)> = m
        .series("batchsync_run_duration_seconds_bucket")
        .iter()
        .map(|(l, v)| {
            let le = Scrape::label(l, "le");
            (
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            )
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count as f64));
    let secs = m.get("batchsync_run_duration_seconds_sum", &[]).unwrap();
    assert!(secs >= sum("duration_ms") as f64 / 1000.0 - 0.01, "{secs}");
    // Requests: every attempt the store counted, by Batch's answer or the refused connection.
    let requests = m.series("batchsync_requests_total");
    assert_eq!(
        requests.iter().map(|(_, v)| *v as u64).sum::<u64>(),
        sum("requests")
    );
    for (labels, v) in &requests {
        assert_eq!(Scrape::label(labels, "endpoint"), "update");
        match Scrape::label(labels, "code") {
            "connection" => assert!(*v >= 2.0),
            code => assert_eq!(*v as u64, batch.answered(code.parse().unwrap()), "{code}"),
        }
    }

    let exit = serve.terminate(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{exit:?}\nstderr: {}", serve.log());
}

#[test]
fn a_signal_during_a_run_exits_0_once_the_answer_in_flight_is_recorded() {
    // 3,000 events in 15 requests answered after 300 ms each: 4.5 s of shipping.
    let em = emulator_free(latency(300));
    let d = Dir::new();
    OrdersConfig {
        mass_update_from: Some(1_000_000),
        ..OrdersConfig::new(&em.endpoint())
    }
    .write(&d);
    write_orders(&d, 0..3_000, Customers::Unique);
    let mut serve = Serving::start(&d, &["--every", "1h", "--listen", "127.0.0.1:0"]);
    wait_for("shipping", &serve, Duration::from_secs(30), || {
        !em.received().is_empty()
    });
    // The first request is in flight: Batch has it, its answer is on the way.
    let t0 = Instant::now();
    let exit = serve.terminate(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{exit:?}\nstderr: {}", serve.log());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    let (_, status) = json_of(d.run(&["status", "--json"]));
    let run = &runs_of(&status)[0];
    assert_eq!(run["status"], "failed", "{status}");
    assert!(
        run["error"].as_str().unwrap().contains("signal"),
        "{status}"
    );
    // Every event Batch accepted is recorded as sent: the answer in flight was waited for.
    assert_eq!(
        run["events_sent"].as_u64().unwrap(),
        em.received().len() as u64,
        "{status}"
    );
    assert_eq!(
        run["events_sent"].as_u64().unwrap() + run["events_pending"].as_u64().unwrap(),
        3_000
    );
}

#[test]
fn the_lock_is_taken_per_run_so_a_run_by_hand_works_between_ticks_a_held_lock_is_counted_and_a_restart_keeps_the_last_success(
) {
    let em = emulator();
    let d = Dir::new();
    d.orders_config(&em.endpoint());
    d.copy_fixture("orders_day1.csv", "orders.csv");

    // Another process's run holds the lock when serve ticks: the tick is `locked`, no run.
    std::fs::create_dir_all(d.join(".batchsync")).unwrap();
    let held = batchsync::lock::RunLock::acquire(&d.state()).unwrap();
    let serve = Serving::start(&d, &["--every", "1s", "--listen", "127.0.0.1:0"]);
    wait_for("a locked tick", &serve, Duration::from_secs(30), || {
        serve
            .metrics()
            .get("batchsync_runs_total", &[("status", "locked")])
            .is_some_and(|v| v >= 1.0)
    });
    assert!(em.received().is_empty());
    drop(held);
    wait_for(
        "a run once the lock is free",
        &serve,
        Duration::from_secs(30),
        || {
            serve
                .metrics()
                .get("batchsync_runs_total", &[("status", "completed")])
                .is_some_and(|v| v >= 1.0)
        },
    );
    assert_eq!(em.received().len(), 12);
    let mut serve = serve;
    assert_eq!(serve.terminate(Duration::from_secs(10)).code(), Some(0));

    // Between two ticks of a long interval, the lock is free for a run by hand.
    let serve = Serving::start(&d, &["--every", "1h", "--listen", "127.0.0.1:0"]);
    wait_for("the first tick", &serve, Duration::from_secs(30), || {
        serve
            .metrics()
            .get("batchsync_runs_total", &[("status", "completed")])
            == Some(1.0)
    });
    d.copy_fixture("orders_day2.csv", "orders.csv");
    let (code, s) = d.sync();
    assert_eq!(code, 0, "a run by hand between ticks: {s}");
    assert_counts(&s, &[("added", 3), ("events_sent", 3)]);
    assert_eq!(em.received().len(), 15);
    // /status is the `status --json` object, read by the same code.
    let (_, by_hand) = json_of(d.run(&["status", "--json"]));
    assert_eq!(serve.status(), by_hand);
    assert_eq!(runs_of(&by_hand)[0]["run_id"], s["run_id"]);
    let mut serve = serve;
    assert_eq!(serve.terminate(Duration::from_secs(10)).code(), Some(0));

    // A restart shows the store's last success (the run by hand's end) before it runs.
    let held = batchsync::lock::RunLock::acquire(&d.state()).unwrap();
    let serve = Serving::start(&d, &["--every", "1h", "--listen", "127.0.0.1:0"]);
    wait_for("a locked tick", &serve, Duration::from_secs(30), || {
        serve
            .metrics()
            .get("batchsync_runs_total", &[("status", "locked")])
            == Some(1.0)
    });
    let m = serve.metrics();
    assert_eq!(
        m.value("batchsync_runs_total", &[("status", "completed")]),
        0
    );
    let finished = s["finished_at"].as_str().unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(finished)
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    assert_eq!(
        m.get("batchsync_last_success_timestamp_seconds", &[]),
        Some(finished)
    );
    drop(held);
}

#[test]
fn a_listen_address_beyond_loopback_needs_allow_remote_and_other_paths_are_not_found() {
    let em = emulator();
    let d = Dir::new();
    d.orders_config(&em.endpoint());
    d.copy_fixture("orders_day1.csv", "orders.csv");
    let mut refused = spawn(&d, &["serve", "--every", "1m", "--listen", "0.0.0.0:0"]);
    let exited = wait_until(Duration::from_secs(10), || {
        refused.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = refused.kill();
    }
    let out = collect(refused, Instant::now());
    assert!(exited, "serve started on 0.0.0.0: {}", out.stdout);
    out.expect_code(2, "--listen beyond loopback without --allow-remote");
    assert!(out.stderr.contains("--allow-remote"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert!(em.received().is_empty(), "nothing ran");

    let serve = Serving::start(
        &d,
        &["--every", "1h", "--listen", "0.0.0.0:0", "--allow-remote"],
    );
    assert_eq!(serve.get("/healthz").0, 200);
    assert_eq!(serve.get("/").0, 404);
    assert_eq!(serve.request("POST", "/metrics").0, 405);
}

#[test]
fn in_the_database_mode_serve_runs_each_tick_and_reads_its_figures_from_the_sync_s_tables() {
    use crate::common::db::{warehouse_config, Pg, Schema, PG_VAR};
    let url = crate::url_or_skip!(PG_VAR);
    let em = emulator();
    let mut pg = Pg::connect(&url);
    let table = pg.table("serve_orders");
    pg.exec(&format!(
        "CREATE TABLE {table} (order_id int PRIMARY KEY, email text, amount numeric(10,2));
         INSERT INTO {table} SELECT i, 'o' || i || '@x.io', i * 1.50 FROM generate_series(1, 30) i;"
    ));
    let schema = Schema::new(&url, "serve");
    let d = Dir::new();
    d.write(
        "batchsync.toml",
        warehouse_config(
            &url,
            &format!("SELECT * FROM {table}"),
            "order_id",
            &schema.name,
            "orders",
            "custom_id = \"email\"\nevent = \"order_completed\"\nattributes = [\"amount\"]",
            "",
            &em.endpoint(),
        ),
    );
    let setup = d.run(&["setup"]);
    assert!(setup.status.success(), "{}", stderr(&setup));

    let mut serve = Serving::start(&d, &["--every", "1s", "--listen", "127.0.0.1:0"]);
    let sent = |s: &Serving| s.metrics().get("batchsync_events_sent_total", &[]);
    wait_for("the first run", &serve, Duration::from_secs(30), || {
        sent(&serve) == Some(30.0)
    });
    pg.exec(&format!(
        "INSERT INTO {table} SELECT i, 'o' || i || '@x.io', i * 1.50 FROM generate_series(31, 35) i;"
    ));
    wait_for("the new rows sent", &serve, Duration::from_secs(30), || {
        sent(&serve) == Some(35.0)
    });
    let (m, status) = consistent_reading(&serve, &d);
    let runs = runs_of(&status);
    assert!(runs.len() >= 2, "{status}");
    assert_eq!(
        m.value("batchsync_runs_total", &[("status", "completed")]),
        runs.len() as u64
    );
    let sent_by_store: u64 = runs
        .iter()
        .map(|r| r["events_sent"].as_u64().unwrap())
        .sum();
    assert_eq!(sent_by_store, 35);
    assert_eq!(em.received().len(), 35);
    assert_eq!(m.value("batchsync_events_pending", &[]), 0);
    assert_eq!(m.value("batchsync_rejects_open", &[]), 0);
    assert_eq!(
        m.value(
            "batchsync_requests_total",
            &[("endpoint", "update"), ("code", "202")]
        ),
        em.stats().by_status[&202]
    );
    // /status reads the sync's tables, as `status --json` does.
    let served = serve.status();
    assert_eq!(served["baseline_rows"], 35, "{served}");
    assert_eq!(served["pending"], status["pending"]);
    assert!(runs_of(&served)[0]["run_id"].as_i64() >= runs[0]["run_id"].as_i64());

    let exit = serve.terminate(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "{exit:?}\nstderr: {}", serve.log());
}
