//! Large first runs as resumable jobs (issue 4): mass-update, runs bounded by `--max-requests`
//! and `--max-duration` that continue where the previous one stopped, `initial = "baseline"`,
//! the `max_added`/`max_removed` guards, and progress on stderr.

use crate::common::crash_support::*;
use crate::common::Dir;
use batchsync::emulate::Faults;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 6. Resumable backfills
// ---------------------------------------------------------------------------------------------

#[test]
fn a_large_first_run_uses_mass_update_and_max_requests_spreads_it_over_runs_without_duplicates() {
    const ROWS: u64 = 30_000;
    // Default mass_update_from (10,000): 30,000 events go as 3 mass-update requests.
    let setup = |d: &Dir, endpoint: &str| {
        Config::new(endpoint).write(d);
        write_orders(d, 0..ROWS, Customers::Unique);
    };
    let want = crash_free_events(setup);
    assert_eq!(want.len(), ROWS as usize);

    let em = emulator_free(Faults::default());
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let mut pending = Vec::new();
    for run in 1..=3 {
        let r = sync(&d, &["--max-requests", "1"]);
        // A run stopped by its own limit is completed, with events pending, and exits 0.
        r.expect_code(0, &format!("run {run} with --max-requests 1"));
        let s = r.json();
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["requests"], 1, "{s}");
        assert_eq!(s["events_sent"], 10_000, "{s}");
        pending.push(s["events_pending"].as_u64().unwrap());
        assert_eq!(
            em.received().len(),
            run * 10_000,
            "run {run} continued where the previous one stopped"
        );
    }
    assert_eq!(pending, [20_000, 10_000, 0]);
    let got = em.received();
    assert!(
        got.iter().all(|r| r.endpoint == "mass-update"),
        "a delta of at least mass_update_from events goes through /profiles/mass-update"
    );
    assert_eq!(duplicates(&got), 0);
    assert_same_events(&distinct(&got), &want, "after three bounded runs");

    // Nothing left: one more run sends nothing.
    let r = sync(&d, &[]);
    r.expect_code(0, "a run with nothing left");
    assert_eq!(r.json()["requests"], 0);
    assert_eq!(em.received().len(), ROWS as usize);
}

#[test]
fn max_duration_stops_a_backfill_in_time_and_the_next_runs_continue_until_all_is_delivered_once() {
    const ROWS: u64 = 2_000;
    // 10 requests on /profiles/update, each answered after 300 ms: 3 s of shipping.
    let setup = |d: &Dir, endpoint: &str| {
        Config {
            mass_update_from: Some(1_000_000),
            ..Config::new(endpoint)
        }
        .write(d);
        write_orders(d, 0..ROWS, Customers::Unique);
    };
    let want = crash_free_events(setup);
    let em = emulator_free(latency(300));
    let d = Dir::new();
    setup(&d, &em.endpoint());
    let mut pending = Vec::new();
    for run in 1..=10 {
        let r = sync(&d, &["--max-duration", "1s"]);
        r.expect_code(0, &format!("run {run} with --max-duration 1s"));
        let s = r.json();
        assert_eq!(s["status"], "completed", "{s}");
        // The limit is checked before each request: a run overshoots by at most one answer
        // (and its reading of the segment).
        assert!(
            r.took < Duration::from_secs(4),
            "run {run} took {:?}",
            r.took
        );
        let left = s["events_pending"].as_u64().unwrap();
        if let Some(&prev) = pending.last() {
            assert!(left < prev, "run {run} made progress: {prev} then {left}");
        }
        pending.push(left);
        if left == 0 {
            break;
        }
    }
    assert!(pending[0] > 0, "the first run stopped with events pending");
    assert_eq!(
        pending.last(),
        Some(&0),
        "pending after each run: {pending:?}"
    );
    assert!(pending.len() >= 3, "spread over several runs: {pending:?}");
    let got = em.received();
    assert_eq!(duplicates(&got), 0);
    assert_same_events(
        &distinct(&got),
        &want,
        "after runs bounded by --max-duration",
    );
}

/// `orders` orders, one per customer (requests of 200 on /profiles/update), shipped with
/// `--max-requests 1`: everything but the first request left pending.
fn requests_left_pending(orders: u64) -> (batchsync::emulate::EmulatorThread, Dir) {
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    Config {
        mass_update_from: Some(1_000_000),
        ..Config::new(&em.endpoint())
    }
    .write(&d);
    write_orders(&d, 0..orders, Customers::Unique);
    let r = sync(&d, &["--max-requests", "1"]);
    r.expect_code(0, "the first run");
    assert!(r.json()["events_pending"].as_u64().unwrap() > 0);
    (em, d)
}

#[test]
fn max_requests_bounds_the_whole_run_including_the_requests_it_resumes() {
    let (em, d) = requests_left_pending(300);
    // 100 new orders: the next run resumes one request, then commits one of its own.
    write_orders(&d, 0..400, Customers::Unique);
    let r = sync(&d, &["--max-requests", "1"]);
    r.expect_code(0, "a bounded run that resumes");
    let s = r.json();
    assert_eq!(s["requests"], 1, "{s}");
    assert_eq!(em.stats().requests, 2, "one request per run");
    assert!(s["events_pending"].as_u64().unwrap() > 0, "{s}");
    let r = sync(&d, &[]);
    r.expect_code(0, "the run that finishes");
    let got = em.received();
    assert_eq!((got.len(), duplicates(&got)), (400, 0));
}

#[test]
fn a_run_stopped_by_its_own_limit_while_resuming_reports_no_error() {
    // 600 orders: 3 requests; the first run ships one, the second resumes one of the two left.
    let (em, d) = requests_left_pending(600);
    let r = run_bin(&d, &["run", "--json", "--max-requests", "1"], None);
    r.expect_code(0, "a bounded run that resumes");
    let s = r.json();
    assert_eq!(s["status"], "completed", "{s}");
    assert_eq!(s["events_pending"], 200, "{s}");
    assert!(s["error"].is_null(), "a completed run has no error: {s}");
    assert!(!r.stderr.contains("error:"), "{}", r.stderr);
    assert_eq!(em.received().len(), 400);
}

#[test]
fn a_guard_refusal_after_resuming_still_reports_the_events_the_run_delivered() {
    let (em, d) = requests_left_pending(300);
    // The pending request is shipped first, then the guard refuses the doubled segment.
    write_orders(&d, 0..600, Customers::Unique);
    let r = run_bin(&d, &["run", "--json"], None);
    r.expect_code(1, "a resumed run refused by max_added");
    assert_eq!(
        em.received().len(),
        300,
        "the pending request was delivered"
    );
    let s = r.json();
    assert_eq!(s["status"], "failed", "{s}");
    assert_eq!(
        (s["events_sent"].as_u64(), s["requests"].as_u64()),
        (Some(100), Some(1)),
        "{s}"
    );
    assert!(s["run_id"].is_i64(), "{s}");
    assert!(!r.stderr.contains("or sent"), "{}", r.stderr);
    let status = run_bin(&d, &["status", "--json"], None).json();
    assert_eq!(status["runs"][0]["events_sent"], 100, "{status}");
}

// ---------------------------------------------------------------------------------------------
// 7. initial = "baseline"
// ---------------------------------------------------------------------------------------------

#[rstest::rstest]
#[case::config("baseline", &[])]
#[case::flag("send", &["--initial", "baseline"])]
fn a_first_run_under_initial_baseline_records_the_segment_and_sends_nothing_then_only_new_rows_go(
    #[case] initial: &'static str,
    #[case] flags: &[&str],
) {
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    Config {
        initial,
        ..Config::new(&em.endpoint())
    }
    .write(&d);
    write_orders(&d, 0..300, Customers::Unique);
    let first = sync(&d, flags);
    first.expect_code(0, "the first run");
    let s = first.json();
    assert_eq!(s["rows"], 300, "{s}");
    assert_eq!(s["events_sent"], 0, "{s}");
    assert_eq!(s["events_pending"], 0, "{s}");
    assert!(s["sent_nothing_reason"].is_string(), "{s}");
    assert!(em.received().is_empty(), "nothing was sent");
    assert_eq!(em.stats().requests, 0);
    let status = run_bin(&d, &["status", "--json"], None);
    status.expect_code(0, "status");
    assert_eq!(status.json()["baseline_rows"], 300);

    // One row added: the next run sends that row's event and nothing else.
    write_orders(&d, 0..301, Customers::Unique);
    let second = sync(&d, &[]);
    second.expect_code(0, "the second run");
    let got = em.received();
    assert_eq!(got.len(), 1, "only the added row: {got:?}");
    assert_eq!(got[0].custom_id, "user000300@example.com");
    assert_eq!(got[0].event["attributes"]["amount"], 300.25);
}

// ---------------------------------------------------------------------------------------------
// 8. Guards
// ---------------------------------------------------------------------------------------------

/// A store with a baseline of the orders `0..n`, all shipped.
fn baseline_of(n: u64) -> (batchsync::emulate::EmulatorThread, Dir) {
    let em = emulator_free(Faults::default());
    let d = Dir::new();
    Config::new(&em.endpoint()).write(&d);
    write_orders(&d, 0..n, Customers::Unique);
    sync(&d, &[]).expect_code(0, "the first run");
    assert_eq!(em.received().len(), n as usize);
    (em, d)
}

#[test]
fn a_segment_truncated_to_half_is_refused_untouched_and_the_next_good_run_sends_no_re_entries() {
    // 201 rows, then the first 100: 101 removed, more than 50% of the baseline.
    let (em, d) = baseline_of(201);
    let before = dump(&d.state());
    write_orders(&d, 0..100, Customers::Unique);
    let refused = run_bin(&d, &["run", "--json"], None);
    refused.expect_code(1, "a run over a truncated segment");
    for needle in [
        "101 rows removed",
        "baseline of 201 rows",
        "max_removed",
        "--force",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "stderr names {needle:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(refused.json()["status"], "failed");
    assert_eq!(em.received().len(), 201, "nothing sent");
    assert_eq!(
        dump(&d.state()),
        before,
        "baseline, outbox and rejects untouched"
    );

    // The good segment again: nothing changed against the untouched baseline.
    write_orders(&d, 0..201, Customers::Unique);
    let good = sync(&d, &[]);
    good.expect_code(0, "the next good run");
    let s = good.json();
    assert_eq!(
        (s["added"].as_u64(), s["removed"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(em.received().len(), 201, "no re-entry events");
}

#[test]
fn a_forced_truncation_turns_the_next_good_run_into_re_entry_events_which_max_added_also_refuses() {
    // The contrast to the test above: what the guards protect against.
    let (em, d) = baseline_of(201);
    write_orders(&d, 0..100, Customers::Unique);
    sync(&d, &["--force"]).expect_code(0, "a forced run over the truncated segment");
    assert_eq!(em.received().len(), 201);
    write_orders(&d, 0..201, Customers::Unique);
    // Against the truncated baseline the good segment adds 101 rows to 100: refused too.
    let refused = sync(&d, &[]);
    refused.expect_code(1, "the good run against a truncated baseline");
    assert!(
        refused.stderr.contains("101 rows added"),
        "{}",
        refused.stderr
    );
    assert_eq!(em.received().len(), 201);
    sync(&d, &["--force"]).expect_code(0, "the good run, forced");
    assert_eq!(
        em.received().len(),
        302,
        "the 101 removed rows come back as re-entries"
    );
}

#[test]
fn a_doubled_segment_is_refused_by_max_added_and_accepted_with_force() {
    let (em, d) = baseline_of(150);
    let before = dump(&d.state());
    write_orders(&d, 0..300, Customers::Unique);
    let refused = run_bin(&d, &["run", "--json"], None);
    refused.expect_code(1, "a run over a doubled segment");
    for needle in [
        "150 rows added",
        "baseline of 150 rows",
        "max_added",
        "--force",
    ] {
        assert!(
            refused.stderr.contains(needle),
            "stderr names {needle:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(em.received().len(), 150, "nothing sent");
    assert_eq!(
        dump(&d.state()),
        before,
        "baseline, outbox and rejects untouched"
    );

    let forced = sync(&d, &["--force"]);
    forced.expect_code(0, "the same run with --force");
    assert_eq!(forced.json()["events_sent"], 150);
    let got = em.received();
    assert_eq!(duplicates(&got), 0);
    let ids: Vec<String> = got[150..].iter().map(|r| r.custom_id.clone()).collect();
    let want: Vec<String> = (150..300)
        .map(|i| format!("user{i:06}@example.com"))
        .collect();
    assert_eq!(ids, want, "exactly the added rows");
}

// ---------------------------------------------------------------------------------------------
// 9. Progress on stderr
// ---------------------------------------------------------------------------------------------

/// A progress line of the plain (not a terminal) output: reading or shipping, with a rate.
fn progress_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("events_per_s") || l.contains("rows_per_s"))
        .collect()
}

#[test]
fn a_long_run_logs_periodic_progress_lines_when_stderr_is_not_a_terminal_and_none_with_quiet() {
    // 4 requests answered after 3.5 s each: a run of about 14 s, past the 10 s log period.
    let start = |quiet: bool| {
        let em = emulator_free(latency(3_500));
        let d = Dir::new();
        Config {
            mass_update_from: Some(1_000_000),
            ..Config::new(&em.endpoint())
        }
        .write(&d);
        write_orders(&d, 0..800, Customers::Unique);
        let args: &[&str] = if quiet {
            &["run", "--json", "--quiet"]
        } else {
            &["run", "--json"]
        };
        let child = spawn(&d, args);
        (em, d, child)
    };
    let t0 = Instant::now();
    let (_em1, _d1, loud) = start(false);
    let (_em2, _d2, quiet) = start(true);
    let loud = collect(loud, t0);
    let quiet = collect(quiet, t0);
    loud.expect_code(0, "the run without --quiet");
    quiet.expect_code(0, "the run with --quiet");
    assert!(loud.took > Duration::from_secs(10), "{:?}", loud.took);
    let lines = progress_lines(&loud.stderr);
    assert!(
        !lines.is_empty(),
        "a run past 10 s logs progress: {}",
        loud.stderr
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("shipping") && l.contains("eta_s")),
        "{lines:?}"
    );
    assert!(
        progress_lines(&quiet.stderr).is_empty(),
        "--quiet logs no progress: {}",
        quiet.stderr
    );
    // stdout stays the one JSON value.
    assert_eq!(loud.json()["events_sent"], 800);
}
