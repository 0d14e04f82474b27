//! Crash safety of the real binary (DESIGN.md guarantees 1, 2, 3 and 5): named crash points,
//! a kill -9 campaign, the run lock, graceful stops and network faults, each against the
//! in-process emulator as Batch.

use crate::common::crash_support::*;
use crate::common::Dir;
use batchsync::emulate::{Faults, Scripted};
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 1. Every crash point
// ---------------------------------------------------------------------------------------------

/// A sync brought to the moment before the run that crashes.
struct Scenario {
    name: &'static str,
    /// Config, data and earlier (clean) runs.
    prepare: fn(&Dir, &str),
    /// The segment of the run that crashes.
    crash_input: fn(&Dir),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Left {
    /// The store as it was before the run's commit.
    Before,
    /// The store with the run's whole commit.
    Committed,
}

/// `point[:n]` as (point, n).
fn parse_spec(spec: &str) -> (&str, usize) {
    match spec.split_once(':') {
        Some((p, n)) => (p, n.parse().unwrap()),
        None => (spec, 1),
    }
}

/// Where a crash at a point leaves the store.
#[derive(Debug, Clone, Copy)]
enum StoreAt {
    /// Before the run's commit.
    Before,
    /// With the run's whole commit.
    Committed,
    /// A shipping point: reached first while resuming the requests earlier runs left pending,
    /// before the run's commit; then for the run's own requests, after it.
    BeforeWhileResumingThenCommitted,
}

/// What a crash at one named point must leave behind.
struct Expect {
    point: &'static str,
    store: StoreAt,
    /// Whether the crashing run had sent the request it reached the point for (when it is a
    /// shipping point); the requests before it were all sent.
    sent: bool,
    /// Whether Batch had answered that request without the answer being recorded: the one
    /// request whose events a resumed run sends twice.
    answer_lost: bool,
}

/// Every crash point of `batchsync::crash::POINTS` and what a crash there must leave. A point
/// added to the registry without a row here fails
/// `every_crash_point_has_an_expected_state_and_every_expected_state_a_point`.
const EXPECTED: &[Expect] = &[
    Expect {
        point: "after_read",
        store: StoreAt::Before,
        sent: false,
        answer_lost: false,
    },
    Expect {
        point: "mid_fetch",
        store: StoreAt::Before,
        sent: false,
        answer_lost: false,
    },
    Expect {
        point: "mid_commit",
        store: StoreAt::Before,
        sent: false,
        answer_lost: false,
    },
    Expect {
        point: "before_commit",
        store: StoreAt::Before,
        sent: false,
        answer_lost: false,
    },
    Expect {
        point: "after_commit",
        store: StoreAt::Committed,
        sent: false,
        answer_lost: false,
    },
    Expect {
        point: "before_send",
        store: StoreAt::BeforeWhileResumingThenCommitted,
        sent: false,
        answer_lost: false,
    },
    Expect {
        point: "after_send",
        store: StoreAt::BeforeWhileResumingThenCommitted,
        sent: true,
        answer_lost: true,
    },
    Expect {
        point: "after_record",
        store: StoreAt::BeforeWhileResumingThenCommitted,
        sent: true,
        answer_lost: false,
    },
];

/// The crash points the second-request test stops at, beyond each point's first reach.
const SECOND_REQUEST_SPECS: &[&str] = &["before_send:2", "after_send:2", "after_record:2"];

fn expectation(point: &str) -> &'static Expect {
    EXPECTED
        .iter()
        .find(|e| e.point == point)
        .unwrap_or_else(|| {
            panic!("crash point {point} has no row in EXPECTED: add what a crash there must leave")
        })
}

fn is_shipping(e: &Expect) -> bool {
    matches!(e.store, StoreAt::BeforeWhileResumingThenCommitted)
}

/// Where a crash at `spec` leaves the store. The shipping points are reached first while
/// resuming the requests earlier runs left pending (before this run's commit), then for its
/// own requests.
fn expected_state(spec: &str, r: &Reference) -> Left {
    let (point, nth) = parse_spec(spec);
    match expectation(point).store {
        StoreAt::Before => Left::Before,
        StoreAt::Committed => Left::Committed,
        StoreAt::BeforeWhileResumingThenCommitted if nth <= r.resumed => Left::Before,
        StoreAt::BeforeWhileResumingThenCommitted => Left::Committed,
    }
}

/// How many requests Batch received from the run that crashed at `spec`: a run resumes the
/// requests left pending before it reads, and sends one request at a time.
fn expected_requests_received(spec: &str, r: &Reference) -> usize {
    let (point, nth) = parse_spec(spec);
    let e = expectation(point);
    if is_shipping(e) {
        nth - 1 + usize::from(e.sent)
    } else {
        r.resumed
    }
}

/// Day 2 after a day 1 of `day1` orders: orders 0..5 removed, 10..13 changed (ignored by
/// `on_change`), 450 orders of 225 new customers added: 225 operations of 2 events, in 2
/// requests (200 + 25 operations).
fn day2_after(d: &Dir, day1: u64) {
    let mut csv = String::from(HEADER);
    csv.push('\n');
    for i in 5..day1 + 450 {
        let line = order_line(i, Customers::Grouped(2));
        let line = if (10..13).contains(&i) {
            line.replace(".25,", ".75,")
        } else {
            line
        };
        csv.push_str(&line);
        csv.push('\n');
    }
    d.write("orders.csv", csv);
}

/// Day 2 adds more than half of day 1: the guard is not what these tests are about.
fn no_guard(endpoint: &str) -> Config {
    Config {
        max_added: Some("off"),
        ..Config::new(endpoint)
    }
}

/// Day 1 (300 orders of 150 customers: one request) committed and shipped.
const AFTER_DAY1: Scenario = Scenario {
    name: "day 1 committed and shipped, the day-2 run crashes",
    prepare: |d, endpoint| {
        no_guard(endpoint).write(d);
        write_orders(d, 0..300, Customers::Grouped(2));
        sync(d, &[]).expect_code(0, "the day-1 run");
    },
    crash_input: |d| day2_after(d, 300),
};

/// The first run of a store crashes: 750 orders of 375 customers, 2 requests (200 + 175).
const FIRST_RUN: Scenario = Scenario {
    name: "the first run crashes",
    prepare: |d, endpoint| Config::new(endpoint).write(d),
    crash_input: |d| write_orders(d, 0..750, Customers::Grouped(2)),
};

/// Day 1 (600 orders: 2 requests) stopped by `--max-requests 1` with one request pending; the
/// day-2 run resumes it first, then commits its own 2 requests.
const RESUMING: Scenario = Scenario {
    name: "a day-1 request left pending, the day-2 run resumes it and crashes",
    prepare: |d, endpoint| {
        no_guard(endpoint).write(d);
        write_orders(d, 0..600, Customers::Grouped(2));
        let r = sync(d, &["--max-requests", "1"]);
        r.expect_code(0, "the day-1 run");
        assert!(r.json()["events_pending"].as_u64().unwrap() > 0);
    },
    crash_input: |d| day2_after(d, 600),
};

/// What a crash-free run of a scenario sends and leaves in the store.
struct Reference {
    events: BTreeSet<EventKey>,
    store: Dump,
    /// The events of each request the crashing run sends, in send order: those pending from
    /// earlier runs, then its own.
    request_events: Vec<i64>,
    /// How many of those were pending from earlier runs.
    resumed: usize,
}

fn reference(sc: &Scenario) -> Reference {
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    (sc.prepare)(&d, &em.endpoint());
    let n0 = em.received().len();
    let before = dump(&d.state());
    (sc.crash_input)(&d);
    let r = sync(&d, &[]);
    r.expect_code(0, "the crash-free reference run");
    let got = em.received()[n0..].to_vec();
    assert_eq!(duplicates(&got), 0);
    let store = dump(&d.state());
    let pending_before = before.request_ids("pending");
    let earlier: BTreeSet<String> = before.request_ids("delivered").into_iter().collect();
    let request_events: Vec<i64> = store
        .requests
        .iter()
        .filter(|r| !earlier.contains(&text(&r[0])))
        .map(|r| int(&r[4]))
        .collect();
    let own = request_events.len() - pending_before.len();
    assert!(
        own >= 2,
        "{}: the crashing run must commit at least 2 requests to reach every point, got {own}",
        sc.name
    );
    Reference {
        events: distinct(&got),
        store,
        request_events,
        resumed: pending_before.len(),
    }
}

/// How many events a resumed run sends twice after a crash at `spec` (`point[:n]`): only a
/// crash after a request was answered and before the answer was recorded re-sends it.
fn expected_duplicates(spec: &str, r: &Reference) -> usize {
    let (point, nth) = parse_spec(spec);
    if expectation(point).answer_lost {
        r.request_events[nth - 1] as usize
    } else {
        0
    }
}

/// Whether `after` is `before` as far as a commit goes. With requests pending before the run,
/// shipping them is recorded before the commit: those may have moved from pending to
/// delivered, and nothing else may differ.
fn unchanged_by_commit(before: &Dump, after: &Dump) -> bool {
    if before.request_ids("pending").is_empty() {
        return after == before;
    }
    let moved_on = before.requests.len() == after.requests.len()
        && before.requests.iter().zip(&after.requests).all(|(b, a)| {
            let (sb, sa) = (text(&b[7]), text(&a[7]));
            sb == sa || (sb == "pending" && sa == "delivered")
        });
    moved_on && after.commit_view() == before.commit_view()
}

/// Crashes the run of `sc` at `spec`, checks the store, resumes, checks what Batch received.
fn crash_and_resume(sc: &Scenario, spec: &str, r: &Reference) {
    let (point, _) = parse_spec(spec);
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    (sc.prepare)(&d, &em.endpoint());
    let n0 = em.received().len();
    let before = dump(&d.state());
    (sc.crash_input)(&d);

    let crashed = run_bin(&d, &["run", "--json", "--quiet"], Some(spec));
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

    // The store: intact, and either as before the commit or with the whole commit.
    assert_eq!(integrity_check(&d.state()), "ok");
    let after = dump(&d.state());
    let left = if unchanged_by_commit(&before, &after) {
        Left::Before
    } else if after.commit_view() == r.store.commit_view() {
        Left::Committed
    } else {
        panic!(
            "the store is neither as before the run nor the run's whole commit:\n\
             baseline rows before/after/committed: {}/{}/{}; requests {}/{}/{}; committed runs {}/{}/{}",
            before.baseline.len(),
            after.baseline.len(),
            r.store.baseline.len(),
            before.requests.len(),
            after.requests.len(),
            r.store.requests.len(),
            before.committed_runs.len(),
            after.committed_runs.len(),
            r.store.committed_runs.len()
        )
    };
    assert_eq!(
        left,
        expected_state(spec, r),
        "the store after a crash at {spec}"
    );
    if left == Left::Committed {
        assert_eq!(
            after.present_keys(),
            r.store.present_keys(),
            "the baseline is the new snapshot's keys"
        );
    }

    // What the dead process had in flight: received by Batch, never recorded.
    let crash_receipts = em.received()[n0..].to_vec();
    assert_eq!(
        by_request(&crash_receipts).len(),
        expected_requests_received(spec, r),
        "requests Batch received from the run that crashed at {spec}"
    );
    let in_flight = in_flight(&crash_receipts, &d.state());
    assert!(
        in_flight.len() <= 1,
        "one lane: at most one request in flight, got {}",
        in_flight.len()
    );
    let in_flight_events: usize = in_flight.iter().map(Vec::len).sum();

    // The next run, without the crash point, completes and delivers everything.
    let resumed = sync(&d, &[]);
    resumed.expect_code(0, "the run after the crash");
    let s = resumed.json();
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["events_pending"], 0, "{s}");
    let got = em.received()[n0..].to_vec();
    assert_same_events(&distinct(&got), &r.events, spec);
    let dups = duplicates(&got);
    assert_eq!(
        dups, in_flight_events,
        "duplicates are exactly the events of the request in flight at the crash"
    );
    assert_eq!(
        dups,
        expected_duplicates(spec, r),
        "events received twice after a crash at {spec}"
    );
    for (_, n) in counts(&got) {
        assert!(n <= 2, "an event was received {n} times");
    }

    // The store converges to the crash-free one.
    assert_eq!(integrity_check(&d.state()), "ok");
    let end = dump(&d.state());
    assert_eq!(end.commit_view().baseline, r.store.commit_view().baseline);
    assert!(end.request_ids("pending").is_empty());
    // The same requests delivered (a crashed run leaves its record behind, so run ids, and
    // request ids with them, may be shifted by one).
    let shape = |d: &Dump| -> Vec<Row> {
        d.requests
            .iter()
            .map(|r| vec![r[2].clone(), r[3].clone(), r[4].clone(), r[7].clone()])
            .collect()
    };
    assert_eq!(shape(&end), shape(&r.store));
}

/// Runs `crash_and_resume` for every spec, collecting every failure before failing.
fn every_spec(sc: &Scenario, specs: &[String]) {
    let r = reference(sc);
    let mut failures = Vec::new();
    for spec in specs {
        let t0 = Instant::now();
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| crash_and_resume(sc, spec, &r))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{spec}: {msg}"));
        }
        eprintln!("{}: {spec} checked in {:?}", sc.name, t0.elapsed());
    }
    assert!(
        failures.is_empty(),
        "{}: {} crash points failed:\n{}",
        sc.name,
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every point of the registry: a point without a row in `EXPECTED` fails the run of it.
fn all_points() -> Vec<String> {
    batchsync::crash::POINTS
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// Points only the database mode reaches (its fetch): `warehouse_crash` crashes there.
const DATABASE_ONLY: &[&str] = &["mid_fetch"];

/// The points a local run reaches: every point of the registry but the database mode's own.
fn local_points() -> Vec<String> {
    all_points()
        .into_iter()
        .filter(|p| !DATABASE_ONLY.contains(&p.as_str()))
        .collect()
}

/// The names passed to `crash::point("…")` anywhere in `src/`.
fn points_in_source() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for call in text.split("crash::point(\"").skip(1) {
                    found.insert(call.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    found
}

#[test]
fn every_crash_point_has_an_expected_state_and_every_expected_state_a_point() {
    let registry: BTreeSet<String> = all_points().into_iter().collect();
    assert_eq!(
        registry.len(),
        batchsync::crash::POINTS.len(),
        "a point registered twice"
    );
    let expected: BTreeSet<String> = EXPECTED.iter().map(|e| e.point.to_string()).collect();
    assert_eq!(
        EXPECTED.len(),
        expected.len(),
        "a point with two rows in EXPECTED"
    );
    assert_eq!(
        expected, registry,
        "EXPECTED (what a crash leaves) and crash::POINTS (the registry) name the same points"
    );
    assert_eq!(
        points_in_source(),
        registry,
        "the crash::point(\"…\") calls in src/ and crash::POINTS name the same points"
    );
    for point in DATABASE_ONLY {
        assert!(
            registry.contains(*point),
            "{point}, a database-mode point, is in the registry"
        );
    }
    for spec in SECOND_REQUEST_SPECS {
        let (point, nth) = parse_spec(spec);
        assert!(
            registry.contains(point) && is_shipping(expectation(point)) && nth == 2,
            "{spec} is the second request's shipping point"
        );
    }
}

#[test]
fn a_crash_at_any_point_of_a_delta_run_leaves_the_store_before_or_committed_and_the_next_run_delivers_everything(
) {
    every_spec(&AFTER_DAY1, &local_points());
}

#[test]
fn a_crash_at_any_point_of_a_first_run_leaves_the_store_before_or_committed_and_the_next_run_delivers_everything(
) {
    every_spec(&FIRST_RUN, &local_points());
}

#[test]
fn a_crash_at_any_point_of_a_run_that_resumes_pending_requests_leaves_the_store_before_or_committed_and_the_next_run_delivers_everything(
) {
    every_spec(&RESUMING, &local_points());
}

#[test]
fn a_crash_at_the_second_request_re_sends_only_that_request_when_its_answer_was_not_recorded() {
    let specs: Vec<String> = SECOND_REQUEST_SPECS.iter().map(|s| s.to_string()).collect();
    every_spec(&FIRST_RUN, &specs);
    every_spec(&RESUMING, &specs);
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 at random moments
// ---------------------------------------------------------------------------------------------

/// Events per request of the backfill below: 200 operations of one event on /profiles/update.
const EVENTS_PER_REQUEST: usize = 200;

#[test]
fn a_backfill_killed_nine_times_at_seeded_random_moments_delivers_every_event_and_re_sends_only_requests_in_flight(
) {
    const ROWS: u64 = 20_000;
    const KILLS: usize = 9;
    const SEED: u64 = 0x5eed_0004;
    // 20,000 customers, one event each, below mass_update_from: 100 requests of 200 operations.
    let setup = |d: &Dir, endpoint: &str| {
        Config {
            mass_update_from: Some(1_000_000),
            ..Config::new(endpoint)
        }
        .write(d);
        write_orders(d, 0..ROWS, Customers::Unique);
    };
    let want = crash_free_events(setup);
    assert_eq!(want.len(), ROWS as usize);

    // With 40 ms of latency per answer, most of a shipping run's time has a request in flight.
    let em = emulator_free(latency(40));
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut expected_dups = 0usize;
    let mut log = Vec::new();
    for kill in 0..KILLS {
        // A run resumes pending requests at once: kill it 40–350 ms after it starts. Before
        // the first commit (reading and committing 20,000 rows takes ~1.3 s), the first run
        // is killed 0.6–1.8 s after it starts, wherever that lands; should that be before its
        // commit, the next one is killed 0–300 ms after its first request reaches Batch, so
        // the campaign always gets to shipping.
        let committed = !pending_events(&d.state()).is_empty();
        let n0 = em.received().len();
        let requests0 = em.stats().requests;
        let t0 = Instant::now();
        let mut child = spawn(&d, &["run", "--json", "--quiet"]);
        let at = if committed {
            Duration::from_millis(rng.gen_range(40..350))
        } else if kill == 0 {
            Duration::from_millis(rng.gen_range(600..1_800))
        } else {
            assert!(
                wait_until(Duration::from_secs(60), || em.stats().requests > requests0),
                "kill {kill}: the run never started shipping"
            );
            t0.elapsed() + Duration::from_millis(rng.gen_range(0..300))
        };
        let ended = wait_until(at.saturating_sub(t0.elapsed()), || {
            child.try_wait().unwrap().is_some()
        });
        assert!(
            !ended,
            "kill {kill}: the run ended before it could be killed ({:?}); shorten the kill moments",
            t0.elapsed()
        );
        child.kill().unwrap();
        let out = collect(child, t0);
        assert_eq!(
            out.signal(),
            Some(libc::SIGKILL),
            "kill {kill}: {:?}",
            out.status
        );
        // Let the emulator finish what the dead client had sent.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(integrity_check(&d.state()), "ok", "kill {kill}");
        let receipts = em.received()[n0..].to_vec();
        let in_flight = in_flight(&receipts, &d.state());
        assert!(
            in_flight.len() <= 1,
            "kill {kill}: one lane, at most one request in flight; got {}",
            in_flight.len()
        );
        let events: usize = in_flight.iter().map(Vec::len).sum();
        assert!(events <= EVENTS_PER_REQUEST);
        expected_dups += events;
        log.push(format!(
            "kill {kill} at {at:?}: {} events received by that run, {} in flight, {} requests pending",
            receipts.len(),
            events,
            pending_events(&d.state()).len()
        ));
    }

    let last = sync(&d, &[]);
    last.expect_code(0, "the run after the kills");
    let s = last.json();
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["events_pending"], 0, "{s}");
    let got = em.received();
    assert_same_events(&distinct(&got), &want, "after the kill -9 campaign");
    let dups = duplicates(&got);
    let report = log.join("\n");
    assert_eq!(
        dups, expected_dups,
        "duplicates are exactly the events of the requests in flight at each kill\n{report}"
    );
    assert!(dups <= KILLS * EVENTS_PER_REQUEST, "{report}");
    assert!(
        dups >= 1,
        "no kill landed while a request was in flight: the resume path was not exercised\n{report}"
    );
    eprintln!("{report}\n{dups} duplicate events in all");
}

// ---------------------------------------------------------------------------------------------
// 3. The run lock
// ---------------------------------------------------------------------------------------------

fn day1_fixture(d: &Dir, endpoint: &str) {
    Config::new(endpoint).write(d);
    d.copy_fixture("orders_day1.csv", "orders.csv");
}

#[test]
fn a_second_run_exits_75_naming_the_holder_and_changes_nothing_and_a_killed_holder_leaves_no_stale_lock(
) {
    let want = crash_free_events(day1_fixture);
    let em = emulator_free(Faults::default());
    // The first request is answered after 6 s: the first run holds the lock meanwhile.
    em.script(vec![Scripted::Delay { ms: 6_000 }]);
    let d = Dir::new();
    day1_fixture(&d, &em.endpoint());

    let t0 = Instant::now();
    let mut holder = spawn(&d, &["run", "--json", "--quiet"]);
    assert!(
        wait_until(Duration::from_secs(20), || !em.received().is_empty()),
        "the first run never sent its request"
    );
    let before = dump(&d.state());

    let second = run_bin(&d, &["run", "--json"], None);
    second.expect_code(75, "a second run while the lock is held");
    assert!(
        second.took < Duration::from_secs(2),
        "exits at once, took {:?}",
        second.took
    );
    let holder_pid = format!("pid {} since ", holder.id());
    assert!(
        second.stderr.contains(&holder_pid),
        "stderr names the holder ({holder_pid}): {}",
        second.stderr
    );
    assert_eq!(second.json()["status"], "failed");
    assert_eq!(dump(&d.state()), before, "the refused run changed nothing");

    // Read-only commands do not need the lock.
    let plan = run_bin(&d, &["plan", "--json"], None);
    plan.expect_code(0, "plan while the lock is held");
    plan.json();
    let status = run_bin(&d, &["status", "--json"], None);
    status.expect_code(0, "status while the lock is held");
    assert_eq!(status.json()["pending"]["requests"], 1);

    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder must still be running: the checks above raced it ({:?})",
        t0.elapsed()
    );
    assert_eq!(dump(&d.state()), before);
    holder.kill().unwrap();
    assert_eq!(collect(holder, t0).signal(), Some(libc::SIGKILL));

    // No manual step: the next run takes the lock and completes.
    let next = sync(&d, &[]);
    next.expect_code(0, "the run after the holder was killed");
    assert_eq!(next.json()["events_pending"], 0);
    let got = em.received();
    assert_same_events(&distinct(&got), &want, "after the holder died");
    assert_eq!(
        duplicates(&got),
        want.len(),
        "only the killed holder's request in flight is sent twice"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Graceful stop
// ---------------------------------------------------------------------------------------------

#[rstest::rstest]
#[case::sigterm(libc::SIGTERM, None)]
#[case::sigint(libc::SIGINT, None)]
#[case::sigterm_with_an_answer_too_slow_to_wait_for(libc::SIGTERM, Some(8_000))]
fn a_signal_while_shipping_stops_within_seconds_with_events_pending_and_the_next_run_completes(
    #[case] sig: i32,
    #[case] first_answer_after_ms: Option<u64>,
) {
    const ROWS: u64 = 3_000;
    let setup = |d: &Dir, endpoint: &str| {
        Config {
            mass_update_from: Some(1_000_000),
            ..Config::new(endpoint)
        }
        .write(d);
        write_orders(d, 0..ROWS, Customers::Unique);
    };
    let want = crash_free_events(setup);
    // 15 requests answered after 300 ms each: 4.5 s of shipping.
    let em = emulator_free(latency(300));
    if let Some(ms) = first_answer_after_ms {
        em.script(vec![Scripted::Delay { ms }]);
    }
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let t0 = Instant::now();
    let child = spawn(&d, &["run", "--json"]);
    assert!(
        wait_until(Duration::from_secs(30), || !em.received().is_empty()),
        "shipping never started"
    );
    // The first request is now in flight: Batch has it, its answer is on the way.
    let signalled = Instant::now();
    signal(&child, sig);
    let stopped = collect(child, t0);
    let took = signalled.elapsed();
    stopped.expect_code(1, "a run stopped by a signal");
    assert!(
        took < Duration::from_secs(5),
        "stops within a few seconds, took {took:?}"
    );
    let s = stopped.json();
    assert_eq!(s["status"], "failed", "{s}");
    assert!(s["events_pending"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(
        s["events_sent"].as_u64().unwrap() + s["events_pending"].as_u64().unwrap(),
        ROWS,
        "{s}"
    );
    assert_eq!(integrity_check(&d.state()), "ok");

    let next = sync(&d, &[]);
    next.expect_code(0, "the run after the stop");
    let got = em.received();
    assert_same_events(&distinct(&got), &want, "after a graceful stop");
    let dups = duplicates(&got);
    match first_answer_after_ms {
        // The answer in flight lands within the grace period and is recorded.
        None => assert_eq!(dups, 0, "the request in flight was recorded"),
        // Abandoned: Batch has it, the store does not: sent again, once.
        Some(_) => assert_eq!(dups, EVENTS_PER_REQUEST, "the abandoned request is re-sent"),
    }
}

#[test]
fn a_signal_while_reading_a_large_segment_stops_within_seconds_and_commits_nothing() {
    // 1,000,000 rows (80 MB) take ~10 s to read in a debug build: far more than a few seconds.
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    Config::new(&em.endpoint()).write(&d);
    write_orders(&d, 0..1_000_000, Customers::Unique);
    let t0 = Instant::now();
    let child = spawn(&d, &["run", "--json"]);
    std::thread::sleep(Duration::from_millis(700));
    let signalled = Instant::now();
    signal(&child, libc::SIGTERM);
    let stopped = collect(child, t0);
    let took = signalled.elapsed();
    stopped.expect_code(1, "a run stopped by a signal while reading");
    assert!(
        em.received().is_empty(),
        "the signal came before the commit"
    );
    let store = dump(&d.state());
    assert!(
        store.baseline.is_empty() && store.requests.is_empty(),
        "nothing committed"
    );
    assert!(
        took < Duration::from_secs(3),
        "stops within a few seconds, took {took:?}"
    );
}

#[test]
fn a_file_read_by_both_cores_sends_every_row_once_and_a_cut_short_one_is_refused() {
    // 120,000 orders (~10 MB): a file this size is read in two parts, one per core.
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    Config::new(&em.endpoint()).write(&d);
    let n = 120_000u64;
    let whole = orders_csv(0..n, Customers::Unique);
    assert!(whole.len() as u64 >= batchsync::source::SPLIT_MIN_BYTES);
    // Cut in the middle of the last line: the tail's part ends the file.
    d.write("orders.csv", &whole[..whole.len() - 10]);
    let r = sync(&d, &[]);
    r.expect_code(1, "a file cut short");
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        err.contains(&format!("orders.csv line {}", n + 1)) && err.contains("cut short"),
        "{err}"
    );
    assert!(em.received().is_empty());
    assert!(dump(&d.state()).baseline.is_empty(), "nothing committed");
    // Whole: every order once, and the next run has nothing to do.
    d.write("orders.csv", &whole);
    let r = sync(&d, &[]);
    r.expect_code(0, "the whole file");
    assert_eq!(r.json()["rows"], n);
    let received = em.received();
    assert_eq!(distinct(&received).len() as u64, n);
    assert_eq!(duplicates(&received), 0);
    let r = sync(&d, &[]);
    r.expect_code(0, "the same file again");
    assert_eq!(
        (r.json()["added"].as_u64(), r.json()["unchanged"].as_u64()),
        (Some(0), Some(n))
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Network faults
// ---------------------------------------------------------------------------------------------

/// Emulator requests whose events were all received again later: the ones whose answer the
/// client never saw. Checks that no request was re-received only in part.
fn superseded_requests(received: &[batchsync::emulate::Received]) -> Vec<u64> {
    let mut last_seen = std::collections::BTreeMap::new();
    for r in received {
        last_seen.insert(key_of(r), r.request);
    }
    by_request(received)
        .into_iter()
        .filter_map(|(seq, evs)| {
            let later = evs.iter().filter(|e| last_seen[*e] > seq).count();
            assert!(
                later == 0 || later == evs.len(),
                "emulator request {seq}: {later} of its {} events were received again",
                evs.len()
            );
            (later > 0).then_some(seq)
        })
        .collect()
}

/// After a faulty run: intact, and every committed event is either delivered or pending.
fn assert_outbox_accounts_for(d: &Dir, events: usize) {
    assert_eq!(integrity_check(&d.state()), "ok");
    let store = dump(&d.state());
    let mut delivered = 0i64;
    let mut pending = 0i64;
    for r in &store.requests {
        match text(&r[7]).as_str() {
            "delivered" => delivered += int(&r[9]),
            "pending" => pending += int(&r[4]),
            other => panic!("request {} is {other}", text(&r[0])),
        }
    }
    assert_eq!(
        (delivered + pending) as usize,
        events,
        "delivered {delivered} + pending {pending}"
    );
}

#[test]
fn resets_errors_and_answers_slower_than_the_timeout_lose_nothing_and_duplicate_only_unanswered_requests(
) {
    const ROWS: u64 = 2_000;
    let setup = |d: &Dir, endpoint: &str| {
        Config {
            mass_update_from: Some(1_000_000),
            timeout: Some("1s"),
            max_attempts: Some(3),
            ..Config::new(endpoint)
        }
        .write(d);
        write_orders(d, 0..ROWS, Customers::Unique);
    };
    let want = crash_free_events(setup);
    let em = emulator_seeded(
        Faults {
            drop_before_rate: 0.15,
            drop_after_rate: 0.15,
            error_rate: 0.15,
            ..Faults::default()
        },
        11,
    );
    // Two answers slower than the client's 1 s timeout (recorded, then answered too late).
    const TIMEOUTS: usize = 2;
    em.script(vec![
        Scripted::Delay { ms: 1_500 },
        Scripted::Ok,
        Scripted::Delay { ms: 1_500 },
    ]);
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let faulty = sync(&d, &[]);
    let s = faulty.json();
    match faulty.code() {
        Some(0) => assert_eq!(s["events_pending"], 0, "{s}"),
        Some(1) => {
            assert_eq!(s["status"], "failed", "{s}");
            assert!(s["events_pending"].as_u64().unwrap() > 0, "{s}");
        }
        other => panic!(
            "the faulty run exits 0 or 1, got {other:?}: {}",
            faulty.stderr
        ),
    }
    assert_outbox_accounts_for(&d, ROWS as usize);

    em.set_faults(Faults::default());
    let healthy = sync(&d, &[]);
    healthy.expect_code(0, "the healthy run");
    assert_eq!(healthy.json()["events_pending"], 0);
    let got = em.received();
    assert_same_events(&distinct(&got), &want, "after the faults");
    let stats = em.stats();
    let superseded = superseded_requests(&got);
    assert_eq!(
        superseded.len() as u64,
        stats.dropped_after + TIMEOUTS as u64,
        "the requests received twice are exactly those dropped after processing or answered too late ({stats:?})"
    );
    let dup_events: usize = by_request(&got)
        .into_iter()
        .filter(|(seq, _)| superseded.contains(seq))
        .map(|(_, evs)| evs.len())
        .sum();
    assert_eq!(duplicates(&got), dup_events);
    assert!(
        stats.dropped_before > 0 && stats.dropped_after > 0 && stats.by_status.contains_key(&500),
        "every fault kind was exercised: {stats:?}"
    );
}

#[test]
fn answers_always_slower_than_the_timeout_fail_the_run_with_state_intact_and_a_healthy_run_completes(
) {
    let setup = |d: &Dir, endpoint: &str| {
        Config {
            timeout: Some("1s"),
            max_attempts: Some(2),
            ..Config::new(endpoint)
        }
        .write(d);
        d.copy_fixture("orders_day1.csv", "orders.csv");
    };
    let want = crash_free_events(setup);
    let em = emulator_free(latency(1_500));
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let slow = sync(&d, &[]);
    slow.expect_code(1, "a run whose every answer comes too late");
    let s = slow.json();
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(
        s["events_pending"].as_u64().unwrap(),
        want.len() as u64,
        "{s}"
    );
    assert_eq!(s["requests"], 2, "{s}");
    assert_outbox_accounts_for(&d, want.len());

    em.set_faults(Faults::default());
    let healthy = sync(&d, &[]);
    healthy.expect_code(0, "the healthy run");
    let got = em.received();
    assert_same_events(&distinct(&got), &want, "after the timeouts");
    // Each timed-out attempt was recorded by Batch before it answered too late.
    assert_eq!(superseded_requests(&got).len(), 2);
    assert_eq!(duplicates(&got), 2 * want.len());
}
