//! The core: config, file sources, snapshot, diff, commit and the commands that show them,
//! run as the real binary against the emulator on loopback.

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn day1(dir: &Dir, endpoint: &str) {
    dir.orders_config(endpoint);
    dir.copy_fixture("orders_day1.csv", "orders.csv");
}

#[test]
fn first_run_sends_every_row_once() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["status"], "completed");
    assert_eq!(
        (
            s["rows"].as_u64(),
            s["added"].as_u64(),
            s["events_sent"].as_u64()
        ),
        (Some(12), Some(12), Some(12))
    );
    for key in [
        "run_id",
        "changed",
        "removed",
        "rejected",
        "events_pending",
        "requests",
        "retries",
        "duration_ms",
    ] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    let got = emu.received();
    assert_eq!(got.len(), 12);
    let mut orders: Vec<String> = got
        .iter()
        .map(|r| format!("{}:{}", r.custom_id, r.event["attributes"]["amount"]))
        .collect();
    orders.sort();
    orders.dedup();
    assert_eq!(orders.len(), 12, "each row once");
}

#[test]
fn second_run_sends_exactly_the_added_rows_and_a_third_sends_nothing() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    assert_eq!(dir.sync().0, 0);
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(
        (
            s["added"].as_u64(),
            s["changed"].as_u64(),
            s["removed"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert_eq!(s["events_sent"], 3);
    let new: Vec<String> = emu.received()[12..]
        .iter()
        .map(|r| r.custom_id.clone())
        .collect();
    assert_eq!(
        new,
        vec![
            "ada@example.com",
            "alan@example.com",
            "katherine@example.com"
        ]
    );

    let before = baseline_dump(&dir);
    let (code, s) = dir.sync();
    assert_eq!(code, 0);
    assert_eq!(
        (
            s["added"].as_u64(),
            s["changed"].as_u64(),
            s["events_sent"].as_u64(),
            s["requests"].as_u64()
        ),
        (Some(0), Some(0), Some(0), Some(0))
    );
    assert_eq!(emu.received().len(), 15);
    assert_eq!(
        baseline_dump(&dir),
        before,
        "an unchanged segment changes no baseline row"
    );
}

/// A second run reads an added row's values again from the file to build its event: if the
/// row changed after the diff read it, the run stops before its commit, naming the file and the
/// line, and sends nothing; the next run sends the row as the file now has it.
#[test]
fn an_added_row_edited_after_the_read_stops_the_run_and_the_next_sends_it_as_it_is() {
    use crate::common::crash_support::wait_until;
    use std::time::Duration;
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    assert_eq!(dir.sync().0, 0);
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    let pause = tempfile::tempdir().unwrap();
    let child = dir
        .cmd(&["run", "--json", "--quiet"])
        .env("BATCHSYNC_PAUSE_AT", "after_read")
        .env("BATCHSYNC_PAUSE_DIR", pause.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || pause
            .path()
            .join("paused")
            .exists()),
        "the run never paused after its read"
    );
    // The same length, so that only the row's own check can tell.
    let was = "1015,katherine@example.com,2026-11-21T10:45:00Z,27.5,";
    let csv = std::fs::read_to_string(dir.join("orders.csv")).unwrap();
    assert_eq!(csv.matches(was).count(), 1);
    dir.write(
        "orders.csv",
        csv.replacen(was, &was.replace("27.5", "72.5"), 1),
    );
    std::fs::write(pause.path().join("resume"), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("orders.csv line 15") && err.contains("the file changed during the run"),
        "{err}"
    );
    assert_eq!(emu.received().len(), 12, "the stopped run sent nothing");
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_counts(&s, &[("added", 3), ("events_sent", 3)]);
    let katherine: Vec<String> = emu.received()[12..]
        .iter()
        .filter(|r| r.custom_id == "katherine@example.com")
        .map(|r| r.event["attributes"]["amount"].to_string())
        .collect();
    assert_eq!(katherine, ["72.5"], "the row as the file has it now, once");
}

fn baseline_dump(dir: &Dir) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    crate::common::baseline(&dir.state())
}

#[test]
fn ndjson_and_csv_of_the_same_rows_give_the_same_baseline() {
    let emu = emulator();
    let csv = Dir::new();
    day1(&csv, &emu.endpoint());
    assert_eq!(csv.sync().0, 0);
    let nd = Dir::new();
    nd.orders_config(&emu.endpoint());
    nd.edit_config(
        "type = \"csv\"\npath = \"orders.csv\"",
        "type = \"ndjson\"\npath = \"orders.ndjson\"",
    );
    nd.copy_fixture("orders_day1.ndjson", "orders.ndjson");
    assert_eq!(nd.sync().0, 0);
    assert_eq!(baseline_dump(&csv), baseline_dump(&nd));
}

/// The hashes of the day-1 fixture under recipe v1, checked in: a change to the canonical
/// encoding must show up here (and bump the recipe version). `BATCHSYNC_BLESS=1` rewrites the
/// file and fails the test, so that a blessing run never passes for a checked one.
#[test]
fn fixture_hashes_match_the_checked_in_golden_file() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let (code, s) = dir.sync_with(&["--initial", "baseline"]);
    assert_eq!((code, s["rows"].as_u64()), (0, Some(12)), "{s}");
    let got: String = baseline_dump(&dir)
        .iter()
        .map(|(k, h, _)| format!("{} {}\n", hex(k), hex(h)))
        .collect();
    assert_eq!(got.lines().count(), 12, "one line per row: {got}");
    let path = fixture("orders_day1.hashes");
    if std::env::var_os("BATCHSYNC_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
        panic!(
            "{} blessed; run again without BATCHSYNC_BLESS",
            path.display()
        );
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with BATCHSYNC_BLESS=1 (then review it)",
            path.display()
        )
    });
    assert_eq!(got, golden, "row hashes changed; if the recipe changed on purpose, bump HASH_RECIPE and re-bless with BATCHSYNC_BLESS=1");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn plan_reports_the_delta_and_changes_nothing() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    assert_eq!(dir.sync().0, 0);
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    let before = std::fs::read(dir.state()).unwrap();
    let (code, p) = json_of(dir.run(&["plan", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(
        (
            p["rows"].as_u64(),
            p["added"].as_u64(),
            p["changed"].as_u64(),
            p["removed"].as_u64()
        ),
        (Some(14), Some(3), Some(2), Some(1))
    );
    assert_eq!(p["events"], 3);
    assert_eq!(p["rejected"], 0);
    let sample = p["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 3);
    assert_eq!(sample[0]["events"][0]["name"], "order_completed");
    assert!(sample[0]["identifiers"]["custom_id"].is_string());
    assert_eq!(
        std::fs::read(dir.state()).unwrap(),
        before,
        "plan changed the store"
    );
    assert_eq!(emu.received().len(), 12);
}

#[test]
fn plan_on_a_new_sync_creates_no_state() {
    let dir = Dir::new();
    day1(&dir, "http://127.0.0.1:9");
    let (code, p) = json_of(dir.run(&["plan", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(p["events"], 12);
    assert!(!dir.state().exists());
}

#[test]
fn status_shows_the_last_runs_with_their_counts() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.sync();
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    dir.sync();
    let (code, st) = json_of(dir.run(&["status", "--json"]));
    assert_eq!(code, 0);
    let runs = st["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["added"], 3);
    assert_eq!(runs[1]["events_sent"], 12);
    assert_eq!(st["pending"]["events"], 0);
    let human = dir.run(&["status"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("completed"));
}

#[test]
fn init_writes_a_starter_config_that_check_understands() {
    let dir = Dir::new();
    assert!(dir.run(&["init"]).status.success());
    let text = std::fs::read_to_string(dir.join("batchsync.toml")).unwrap();
    assert!(text.contains("[mapping]") && text.contains('#'));
    assert_eq!(
        dir.run(&["init"]).status.code(),
        Some(2),
        "init refuses to overwrite"
    );
    // The starter config points at data/orders.csv: check names the missing file.
    let out = dir.run(&["check"]);
    assert!(stderr(&out).contains("data/orders.csv"), "{}", stderr(&out));
}

#[test]
fn check_validates_source_and_mapping_without_writing_state() {
    let dir = Dir::new();
    day1(&dir, "http://127.0.0.1:9");
    let (code, c) = json_of(dir.run(&["check", "--json"]));
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["rows"], 12);
    assert!(!dir.state().exists());
}

#[test]
fn a_config_error_names_the_key_and_line_and_exits_2() {
    let dir = Dir::new();
    day1(&dir, "http://127.0.0.1:9");
    dir.edit_config("event = \"order_completed\"", "event = \"Order Completed\"");
    let out = dir.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("mapping.event") && err.contains("line 10"),
        "{err}"
    );
}

#[test]
fn a_mapped_column_missing_from_the_file_is_a_config_error_naming_it() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config(
        "attributes = [\"amount\", \"currency\", \"gift\"]",
        "attributes = [\"amount\", \"currency\", \"gift\", \"coupon\"]",
    );
    let (code, s) = dir.sync();
    assert_eq!(code, 2);
    assert!(s["error"].as_str().unwrap().contains("\"coupon\""), "{s}");
    assert!(emu.received().is_empty());
}

#[test]
fn a_missing_key_variable_exits_2_and_sends_nothing() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let out = dir
        .cmd(&["run", "--json"])
        .env_remove("BATCH_PROJECT_KEY")
        .output()
        .unwrap();
    let (code, s) = json_of(out);
    assert_eq!(code, 2);
    assert!(s["error"].as_str().unwrap().contains("BATCH_PROJECT_KEY"));
    assert!(emu.received().is_empty());
    assert!(!dir.state().exists());
}

#[test]
fn a_truncated_file_aborts_before_commit_and_leaves_the_baseline_untouched() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    assert_eq!(dir.sync().0, 0);
    let before = baseline_dump(&dir);
    let day2 = std::fs::read(fixture("orders_day2.csv")).unwrap();
    dir.write("orders.csv", &day2[..day2.len() - 20]);
    let (code, s) = dir.sync();
    assert_eq!(code, 1, "{s}");
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("orders.csv line 15") && err.contains("cut short"),
        "{err}"
    );
    assert_eq!(baseline_dump(&dir), before);
    assert_eq!(emu.received().len(), 12);
    // Fixed, the next run works.
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    assert_eq!(dir.sync().0, 0);
    assert_eq!(emu.received().len(), 15);
}

#[test]
fn an_unterminated_quote_aborts_the_run() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let mut text = std::fs::read_to_string(fixture("orders_day1.csv")).unwrap();
    text = text.replacen("black_friday", "\"black_friday", 1);
    dir.write("orders.csv", text);
    let (code, s) = dir.sync();
    assert_eq!(code, 1);
    assert!(
        s["error"].as_str().unwrap().contains("unterminated quote"),
        "{s}"
    );
    assert!(!has_committed_run(&dir));
}

fn has_committed_run(dir: &Dir) -> bool {
    let c = rusqlite::Connection::open(dir.state()).unwrap();
    c.query_row(
        "SELECT EXISTS(SELECT 1 FROM run WHERE committed = 1)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn bad_rows_file() -> String {
    let mut text = std::fs::read_to_string(fixture("orders_day1.csv")).unwrap();
    text = text.replacen("42.50", "NaN", 1); // line 2, order 1001: not a finite number
    text = text.replacen("1003,linus@example.com", "1002,linus@example.com", 1); // lines 3 and 4 share a key
    text = text.replacen("ken@example.com", "", 1); // line 7: empty custom id
    text = text.replacen("\"", "", 0);
    text.push_str("1013,eve@example.com,2026-11-20T21:00:00Z,10,EUR,maybe,,paid\n"); // line 14: bad bool
    text
}

#[test]
fn bad_rows_are_rejected_with_line_column_and_rule_and_the_rest_is_sent() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.write("orders.csv", bad_rows_file());
    let (code, s) = dir.sync();
    assert_eq!(code, 3, "{s}");
    assert_eq!(s["status"], "partial");
    assert_eq!(s["rejected"], 5);
    assert_eq!(s["events_sent"], 8);
    let (_, rejects) = json_of(dir.run(&["rejects", "--json"]));
    let rejects = rejects.as_array().unwrap();
    let find = |rule: &str| {
        rejects
            .iter()
            .filter(|r| r["rule"] == rule)
            .cloned()
            .collect::<Vec<Value>>()
    };
    let nan = &find("type")[..];
    assert!(
        nan.iter()
            .any(|r| r["column"] == "amount" && r["key"] == serde_json::json!({"order_id": 1001})),
        "{rejects:?}"
    );
    assert!(nan.iter().any(|r| r["column"] == "gift"), "{rejects:?}");
    assert_eq!(find("duplicate_key").len(), 2);
    assert_eq!(find("custom_id_empty")[0]["column"], "customer_email");
    assert!(rejects
        .iter()
        .all(|r| r["source"] == "local" && r["run_id"].is_i64() && r["reason"].is_string()));

    // Rejected rows do not advance the baseline: once fixed, they are sent.
    dir.copy_fixture("orders_day1.csv", "orders.csv");
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(
        s["events_sent"], 4,
        "1001, 1002, 1003 and 1006 are new once fixed: {s}"
    );
}

#[test]
fn under_on_bad_row_fail_a_bad_row_aborts_with_file_line_and_column() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config("[sync]\n", "[sync]\non_bad_row = \"fail\"\n");
    dir.write("orders.csv", bad_rows_file());
    let (code, s) = dir.sync();
    assert_eq!(code, 1);
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("orders.csv line 2") && err.contains("\"amount\""),
        "{err}"
    );
    assert!(emu.received().is_empty());
    assert!(!has_committed_run(&dir));
}

#[test]
fn a_new_unmapped_column_changes_no_hash_and_sends_nothing() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    assert_eq!(dir.sync().0, 0);
    let before = baseline_dump(&dir);
    let text = std::fs::read_to_string(fixture("orders_day1.csv")).unwrap();
    let widened: String = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l},warehouse\n")
            } else {
                format!("{l},w{i}\n")
            }
        })
        .collect();
    dir.write("orders.csv", widened);
    let (code, s) = dir.sync();
    assert_eq!(code, 0);
    assert_eq!(
        (s["changed"].as_u64(), s["events_sent"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        baseline_dump(&dir)
            .iter()
            .map(|r| (&r.0, &r.1))
            .collect::<Vec<_>>(),
        before.iter().map(|r| (&r.0, &r.1)).collect::<Vec<_>>()
    );
}

/// `csv` with its columns in the order of `order` (indexes into the original columns).
fn reorder_columns(csv: &str, order: &[usize]) -> String {
    csv.lines()
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), order.len(), "a plain CSV line: {line}");
            let mut out = order
                .iter()
                .map(|&i| cells[i])
                .collect::<Vec<_>>()
                .join(",");
            out.push('\n');
            out
        })
        .collect()
}

/// Events as Batch received them, in a stable order.
fn events(received: &[batchsync::emulate::Received]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = received
        .iter()
        .map(|r| (r.custom_id.clone(), r.event.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_csv_with_its_columns_in_another_order_gives_the_same_hashes_and_events() {
    let day1_csv = std::fs::read_to_string(fixture("orders_day1.csv")).unwrap();
    // status, amount, order_id, gift, customer_email, campaign, ordered_at, currency
    let shuffled_csv = reorder_columns(&day1_csv, &[7, 3, 0, 5, 1, 6, 2, 4]);
    assert!(shuffled_csv.starts_with("status,amount,order_id,gift,customer_email,"));

    let emu = emulator();
    let original = Dir::new();
    day1(&original, &emu.endpoint());
    assert_eq!(original.sync().0, 0);
    let shuffled = Dir::new();
    shuffled.orders_config(&emu.endpoint());
    shuffled.write("orders.csv", &shuffled_csv);
    let (code, s) = shuffled.sync();
    assert_eq!((code, s["events_sent"].as_u64()), (0, Some(12)), "{s}");

    assert_eq!(
        baseline_dump(&shuffled),
        baseline_dump(&original),
        "the same keys and row hashes"
    );
    let got = emu.received();
    assert_eq!(got.len(), 24);
    assert_eq!(
        events(&got[12..]),
        events(&got[..12]),
        "the same events, attribute for attribute"
    );

    // The store of the original order sees the shuffled file as the same segment.
    original.write("orders.csv", &shuffled_csv);
    let (code, s) = original.sync();
    assert_eq!(code, 0, "{s}");
    assert_counts(
        &s,
        &[
            ("added", 0),
            ("changed", 0),
            ("removed", 0),
            ("events_sent", 0),
        ],
    );
}

#[test]
fn on_change_event_sends_changed_rows_and_reentry_sends_returning_rows() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config("on_change = \"ignore\"", "on_change = \"event\"");
    assert_eq!(dir.sync().0, 0);
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    let (_, s) = dir.sync();
    assert_eq!(s["events_sent"], 5, "3 added + 2 changed: {s}");
    // Order 1004 left on day 2; it comes back.
    dir.copy_fixture("orders_day1.csv", "orders.csv");
    let (_, s) = dir.sync_with(&["--force"]);
    assert_eq!(s["added"], 1);
    let last = emu.received().last().unwrap().clone();
    assert!(
        emu.received()
            .iter()
            .filter(|r| r.custom_id == "ada@example.com" && r.event["attributes"]["amount"] == 7)
            .count()
            == 2,
        "{last:?}"
    );
    // With reentry = "ignore", a returning row is recorded but not sent.
    dir.edit_config("[sync]\n", "[sync]\nreentry = \"ignore\"\n");
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    dir.sync_with(&["--force"]);
    let n = emu.received().len();
    dir.copy_fixture("orders_day1.csv", "orders.csv");
    let (_, s) = dir.sync_with(&["--force"]);
    assert_eq!(s["added"], 1);
    assert_eq!(emu.received().len(), n + changed_back(&s), "{s}");
}

/// Rows that change back from day 2 to day 1 are events under on_change = "event".
fn changed_back(s: &Value) -> usize {
    s["changed"].as_u64().unwrap() as usize
}

#[test]
fn late_events_are_rejected_by_default_with_a_clear_reason() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    // The fixture sets `late_events = "send"`: without the line, the default applies.
    dir.edit_config("late_events = \"send\"\n", "");
    let config = std::fs::read_to_string(dir.join("batchsync.toml")).unwrap();
    assert!(!config.contains("late_events"), "{config}");
    let now = chrono::Utc::now();
    let mut text = std::fs::read_to_string(fixture("orders_day1.csv")).unwrap();
    text = text.replacen(
        "2026-11-20T09:15:00Z",
        &(now - chrono::Duration::hours(1)).to_rfc3339(),
        1,
    );
    dir.write("orders.csv", text);
    let (code, s) = dir.sync();
    assert_eq!(code, 3);
    assert_eq!(s["events_sent"], 1);
    assert_eq!(s["rejected"], 11);
    let (_, rejects) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(rejects[0]["rule"], "time_window");
    assert!(rejects[0]["reason"]
        .as_str()
        .unwrap()
        .contains("late_events"));
}

#[test]
fn a_config_with_a_tab_delimiter_reads_tsv() {
    let emu = emulator();
    let dir = Dir::new();
    dir.orders_config(&emu.endpoint());
    dir.edit_config(
        "path = \"orders.csv\"",
        "path = \"orders.tsv\"\ndelimiter = \"\\t\"",
    );
    let text = std::fs::read_to_string(fixture("orders_day1.csv"))
        .unwrap()
        .replace(',', "\t");
    dir.write("orders.tsv", text);
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["events_sent"], 12);
}

/// One version of a 300-key segment: which keys are in it, their amounts, and the keys whose row
/// is bad (an amount that is not a number), from a small deterministic generator.
fn evolving_segment(version: u64) -> (String, BTreeSet<u64>) {
    let mut csv =
        String::from("order_id,customer_email,ordered_at,amount,currency,gift,campaign,status\n");
    let mut bad = BTreeSet::new();
    for k in 1..=300u64 {
        let mix = |salt: u64| {
            let mut x =
                k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 31;
            x.wrapping_mul(0x94D0_49BB_1331_11EB) >> 40
        };
        if mix(version * 2 + 1) % 10 < 3 {
            continue; // not in this version
        }
        // The amount changes in about one version in eight.
        let amount = if version == 0 {
            0
        } else {
            mix(version / 8 * 8 + 7) % 100
        };
        let amount = if mix(version * 3 + 5) % 30 == 0 {
            bad.insert(k);
            "abc".to_string()
        } else {
            format!("{amount}.50")
        };
        csv.push_str(&format!(
            "{k},u{k}@example.com,2026-11-20T09:15:00Z,{amount},EUR,false,,paid\n"
        ));
    }
    (csv, bad)
}

type Entries = BTreeMap<Vec<u8>, (Vec<u8>, bool)>;

fn entries(dir: &Dir) -> Entries {
    crate::common::baseline(&dir.state())
        .into_iter()
        .map(|(k, h, p)| (k, (h, p)))
        .collect()
}

#[test]
fn the_baseline_stays_exact_through_many_runs_and_compactions() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config(
        "[sync]",
        "[sync]\nmax_added = \"off\"\nmax_removed = \"off\"",
    );
    let mut expected = Entries::new();
    let mut bases = BTreeSet::new();
    for version in 0..12u64 {
        let (csv, bad) = evolving_segment(version);
        dir.write("orders.csv", &csv);
        let (code, s) = dir.sync_with(&["--initial", "baseline"]);
        // New rejects make a run partial (exit 3); rows rejected as they were last time are
        // still rejected, counted apart.
        let new_rejects = s["rejected"].as_u64().unwrap();
        assert_eq!(
            code,
            if new_rejects > 0 { 3 } else { 0 },
            "version {version}: {s}"
        );
        assert_eq!(
            new_rejects + s["still_rejected"].as_u64().unwrap(),
            bad.len() as u64,
            "{s}"
        );
        let partial = if bad.is_empty() { 0 } else { 3 };

        // What the good rows hash to: a fresh store's first run over the same file.
        let fresh = Dir::new();
        day1(&fresh, &emu.endpoint());
        fresh.write("orders.csv", &csv);
        assert_eq!(fresh.sync_with(&["--initial", "baseline"]).0, partial);
        let good = entries(&fresh);
        let mut next = Entries::new();
        for (k, (h, present)) in &expected {
            // Gone from the segment: a tombstone with its last hash; a bad row: kept as is.
            if !good.contains_key(k) {
                next.insert(k.clone(), (h.clone(), *present && is_bad(k, &bad)));
            }
        }
        for (k, v) in good {
            next.insert(k, v);
        }
        expected = next;
        assert_eq!(entries(&dir), expected, "version {version}");
        // status reads the count each commit records, not the baseline: the same number.
        let (_, st) = json_of(dir.run(&["status", "--json"]));
        let present = expected.values().filter(|(_, p)| *p).count();
        assert_eq!(st["baseline_rows"], present, "version {version}");

        let c = rusqlite::Connection::open(dir.state()).unwrap();
        let base: i64 = c
            .query_row("SELECT id FROM base_layer WHERE kind = 'base'", [], |r| {
                r.get(0)
            })
            .unwrap();
        bases.insert(base);
    }
    assert!(bases.len() >= 3, "compactions happened: bases {bases:?}");
}

/// Whether the row key `k` (an integer id, canonically encoded) is one of the bad rows' ids.
fn is_bad(k: &[u8], bad: &BTreeSet<u64>) -> bool {
    bad.iter().any(|id| {
        let mut v = Vec::new();
        batchsync::core::encode::encode_value(
            &batchsync::core::value::Value::Int(*id as i64),
            &mut v,
        );
        v == k
    })
}

#[test]
fn status_shows_a_run_whose_process_died_while_shipping_as_interrupted() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let killed = dir
        .cmd(&["run", "--json", "--quiet"])
        .env("BATCHSYNC_CRASH_AT", "before_send")
        .output()
        .unwrap();
    assert_eq!(killed.status.code(), None, "killed by the crash point");
    let status = |dir: &Dir| {
        let (code, v) = json_of(dir.run(&["status", "--json"]));
        assert_eq!(code, 0);
        v["runs"][0]["status"].as_str().unwrap().to_string()
    };
    // While a live process holds the lock, the committed run may still be shipping.
    let held = batchsync::lock::RunLock::acquire(&dir.state()).unwrap();
    assert_eq!(status(&dir), "shipping");
    drop(held);
    // Nobody holds it: the process died, the run is interrupted (the store is not written).
    assert_eq!(status(&dir), "interrupted");
    // The next run records it so, and ships what it left.
    let (code, v) = dir.sync();
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["events_sent"], 12);
    let (_, s) = json_of(dir.run(&["status", "--json"]));
    assert_eq!(s["runs"][1]["status"], "interrupted");
}

#[test]
fn rows_that_stay_rejected_are_not_added_again_nor_counted_by_the_guards_nor_a_reason_for_exit_3() {
    let emu = emulator();
    let dir = Dir::new();
    dir.orders_config(&emu.endpoint());
    let head = "order_id,customer_email,ordered_at,amount,currency,gift,campaign,status\n";
    let good = "1001,ada@example.com,2026-11-20T09:15:00Z,42.50,EUR,false,,paid\n";
    let bad_amount = "1002,grace@example.com,2026-11-20T10:02:11Z,twelve,EUR,true,,paid\n";
    let no_id = "1003,,2026-11-20T11:00:00Z,7.00,EUR,false,,paid\n";
    dir.write("orders.csv", format!("{head}{good}{bad_amount}{no_id}"));
    let (code, first) = dir.sync();
    assert_eq!(code, 3, "{first}");
    assert_counts(&first, &[("rejected", 2), ("events_sent", 1)]);

    // One good row appended: the two rejected rows are still rejected, not "2 added" against a
    // baseline of 1 (which max_added = 50% would refuse), and not a reason for exit 3.
    let more = "1004,alan@example.com,2026-11-20T12:00:00Z,3.00,EUR,false,,paid\n";
    dir.write(
        "orders.csv",
        format!("{head}{good}{bad_amount}{no_id}{more}"),
    );
    let (code, second) = dir.sync();
    assert_eq!(code, 0, "{second}");
    assert_counts(
        &second,
        &[
            ("added", 1),
            ("rejected", 0),
            ("still_rejected", 2),
            ("events_sent", 1),
        ],
    );
    let out = dir.run(&["run"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 rows are still rejected"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `rejects` shows one line per row rejected now, with the run that first rejected it.
    let (_, open) = json_of(dir.run(&["rejects", "--json"]));
    let open = open.as_array().unwrap().clone();
    assert_eq!(open.len(), 2, "{open:?}");
    assert_eq!(open[0]["key"], serde_json::json!({"order_id": 1002}));
    assert_eq!(
        (open[0]["first_run_id"].as_i64(), open[0]["run_id"].as_i64()),
        (Some(1), Some(3))
    );
    let table = String::from_utf8_lossy(&dir.run(&["rejects"]).stdout).into_owned();
    assert!(table.lines().next().unwrap().starts_with("key "), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    // Fixing one makes it new again: added and sent; the other stays rejected.
    let fixed = bad_amount.replace("twelve", "12.00");
    dir.write("orders.csv", format!("{head}{good}{fixed}{no_id}{more}"));
    let (code, third) = dir.sync();
    assert_eq!(code, 0, "{third}");
    assert_counts(
        &third,
        &[("added", 1), ("still_rejected", 1), ("events_sent", 1)],
    );

    // Other rules make the last one new again: rejected anew (exit 3).
    dir.edit_config(
        "late_events = \"send\"",
        "late_events = \"send_without_time\"",
    );
    let (code, fourth) = dir.sync();
    assert_eq!(code, 3, "{fourth}");
    assert_counts(&fourth, &[("rejected", 1), ("still_rejected", 0)]);
    let (_, open) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(
        open[0]["first_run_id"].as_i64(),
        Some(1),
        "still the run that first rejected it: {open}"
    );
    assert_eq!(emu.received().len(), 3);
}

#[test]
fn a_run_killed_while_shipping_keeps_true_counts_of_what_it_delivered_and_left_pending() {
    use crate::common::crash_support::{emulator_free, run_bin, write_orders, Config, Customers};
    let em = emulator_free(batchsync::emulate::Faults::default());
    let d = Dir::new();
    Config::new(&em.endpoint()).write(&d);
    // 600 profiles: three requests of 200 operations.
    write_orders(&d, 0..600, Customers::Unique);
    let killed = run_bin(&d, &["run", "--json", "--quiet"], Some("after_record:1"));
    assert_eq!(killed.status.code(), None, "killed by the crash point");
    assert_eq!(em.received().len(), 200);
    let (code, s) = json_of(d.run(&["status", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(s["pending"]["events"], 400, "{s}");
    let run = &s["runs"][0];
    assert_eq!(run["status"], "interrupted", "{s}");
    assert_counts(
        run,
        &[
            ("events", 600),
            ("events_sent", 200),
            ("events_pending", 400),
        ],
    );
    // The next run records it so, with the same counts, and ships the rest.
    let (code, next) = d.sync();
    assert_eq!(code, 0, "{next}");
    assert_counts(&next, &[("events_sent", 400), ("resumed_requests", 2)]);
    let (_, s) = json_of(d.run(&["status", "--json"]));
    assert_eq!(s["runs"][1]["status"], "interrupted");
    assert_counts(
        &s["runs"][1],
        &[("events_sent", 200), ("events_pending", 400)],
    );
}

#[test]
fn status_json_has_the_same_keys_whether_or_not_a_store_exists() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let (code, before) = json_of(dir.run(&["status", "--json"]));
    assert_eq!(code, 0);
    assert!(!dir.state().exists(), "status created no store");
    assert_eq!(dir.sync().0, 0);
    let (_, after) = json_of(dir.run(&["status", "--json"]));
    assert_eq!(keys(&before), keys(&after), "{before} / {after}");
    assert_eq!(before["baseline_rows"], 0);
}

#[test]
fn status_on_a_terminal_draws_the_last_runs_as_sparklines_and_not_when_piped() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    assert_eq!(dir.sync().0, 0);
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    assert_eq!(dir.sync().0, 0);
    let piped = String::from_utf8_lossy(&dir.run(&["status"]).stdout).into_owned();
    assert!(!piped.contains('▁') && !piped.contains('█'), "{piped}");
    // `script` runs the command on a pseudo-terminal (util-linux).
    let Ok(out) = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} status", env!("CARGO_BIN_EXE_batchsync")),
            "/dev/null",
        ])
        .current_dir(dir.path())
        .output()
    else {
        eprintln!("SKIPPED: no `script` to give status a terminal");
        return;
    };
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = shown
        .lines()
        .find(|l| l.contains("events sent"))
        .unwrap_or_else(|| panic!("{shown}"));
    // Day 1 sent 12 events, day 2 sent 3: the first bar is the tallest.
    assert!(line.contains("events sent █"), "{line}");
}

#[test]
fn with_json_a_run_on_a_terminal_prints_its_json_and_no_progress() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    // `script` gives the run a terminal for stdout and stderr alike (util-linux).
    let Ok(out) = std::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} run --json", env!("CARGO_BIN_EXE_batchsync")),
            "/dev/null",
        ])
        .current_dir(dir.path())
        .env("BATCH_REST_API_KEY", API_KEY)
        .env("BATCH_PROJECT_KEY", PROJECT_KEY)
        .env("BATCHSYNC_LOG", "off")
        .output()
    else {
        eprintln!("SKIPPED: no `script` to give the run a terminal");
        return;
    };
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!shown.contains('\u{1b}'), "no bar drawn: {shown:?}");
    let v: Value = serde_json::from_str(shown.trim()).unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_eq!(v["events_sent"], 12, "{v}");
}

/// The present entries of a store's baseline: (key, hash).
fn present(dir: &Dir) -> Vec<(Vec<u8>, Vec<u8>)> {
    baseline_dump(dir)
        .into_iter()
        .filter(|(_, _, p)| *p)
        .map(|(k, h, _)| (k, h))
        .collect()
}

/// DESIGN.md "Hash recipe upgrades". `fixtures/recipe1/state.db` was written by the release
/// before recipe 2 (schema 5, recipe 1): the day-1 orders and a row with a bad amount, recorded
/// with `--initial baseline`. Its next run computes both hashes of every row, diffs with the
/// old ones, stores the new ones and sends nothing for the recipe change itself; day 2's real
/// changes are still found; the run after it diffs normally.
#[test]
fn a_recipe_1_store_is_upgraded_by_its_next_run_which_sends_only_the_real_changes() {
    let emu = emulator();
    let dir = Dir::new();
    dir.orders_config(&emu.endpoint());
    std::fs::create_dir_all(dir.join(".batchsync")).unwrap();
    std::fs::copy(fixture("recipe1/state.db"), dir.state()).unwrap();
    // The old release's hashes are recipe 1's, byte for byte.
    let golden = std::fs::read_to_string(fixture("orders_day1.recipe1.hashes")).unwrap();
    let old: String = baseline_dump(&dir)
        .iter()
        .map(|(k, h, _)| format!("{} {}\n", hex(k), hex(h)))
        .collect();
    assert_eq!(old, golden);

    let bad = "9001,bad@example.com,2026-11-20T09:15:00Z,abc,EUR,false,,paid\n";
    let day2 = std::fs::read_to_string(fixture("orders_day2.csv")).unwrap();
    dir.write("orders.csv", format!("{day2}{bad}"));
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    // Day 2: 3 added, 2 changed, 1 removed; the other 9 rows and the bad one are rehashed.
    assert_counts(
        &s,
        &[
            ("added", 3),
            ("changed", 2),
            ("removed", 1),
            ("unchanged", 9),
            ("still_rejected", 1),
            ("rehashed", 10),
            ("events_sent", 3),
            ("rejected", 0),
        ],
    );
    assert_eq!(
        emu.received().len(),
        3,
        "the added orders' events, nothing else"
    );

    // Every present entry holds what a recipe-2 store of the same rows holds.
    let fresh = Dir::new();
    fresh.orders_config(&emu.endpoint());
    fresh.write("orders.csv", format!("{day2}{bad}"));
    let (code, f) = fresh.sync_with(&["--initial", "baseline"]);
    assert_eq!(code, 3, "{f}");
    assert_eq!(present(&dir), present(&fresh));

    // The next run diffs under recipe 2: nothing to do, the bad row still rejected.
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_counts(
        &s,
        &[
            ("unchanged", 14),
            ("still_rejected", 1),
            ("rehashed", 0),
            ("requests", 0),
        ],
    );
}
