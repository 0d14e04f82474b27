//! Shipping to Batch: the outbox, the client's answers and retries, and secrets, against the
//! emulator over loopback with the real binary.

use crate::common::*;
use batchsync::emulate::{Faults, Scripted};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn day1(dir: &Dir, endpoint: &str) {
    dir.orders_config(endpoint);
    dir.copy_fixture("orders_day1.csv", "orders.csv");
}

/// How many times each (custom id, event) was received.
fn multiplicity(emu: &batchsync::emulate::EmulatorThread) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in emu.received() {
        *m.entry(format!("{} {}", r.custom_id, r.event)).or_default() += 1;
    }
    m
}

#[test]
fn partial_errors_become_rejects_with_batchs_reason_and_are_retried_once_fixed() {
    let emu = emulator_with(
        true,
        Faults {
            reject_custom_ids: vec!["ada@example.com".into()],
            ..Faults::default()
        },
    );
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let (code, s) = dir.sync();
    assert_eq!(code, 3, "{s}");
    assert_eq!(s["status"], "partial");
    assert_eq!(
        (
            s["events_sent"].as_u64(),
            s["rejected"].as_u64(),
            s["events_pending"].as_u64()
        ),
        (Some(10), Some(2), Some(0))
    );
    let (_, rejects) = json_of(dir.run(&["rejects", "--json"]));
    let rejects = rejects.as_array().unwrap();
    assert_eq!(rejects.len(), 2);
    let keys: Vec<&Value> = rejects.iter().map(|r| &r["key"]).collect();
    assert_eq!(
        keys,
        vec![&json!({"order_id": 1001}), &json!({"order_id": 1004})]
    );
    assert!(
        rejects
            .iter()
            .all(|r| r["source"] == "batch" && !r["reason"].as_str().unwrap().is_empty()),
        "{rejects:?}"
    );
    assert_eq!(emu.received().len(), 10);

    // Unchanged, they are still rejected: not sent again, not new rejects (exit 0).
    emu.set_faults(Faults::default());
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_counts(
        &s,
        &[
            ("events_sent", 0),
            ("rejected", 0),
            ("still_rejected", 2),
            ("added", 0),
        ],
    );
    assert_eq!(emu.received().len(), 10);
    // The entries put back are not present: status's count, kept by the answers, agrees
    // with a full read of the baseline.
    let (_, st) = json_of(dir.run(&["status", "--json"]));
    let present = baseline(&dir.state()).iter().filter(|(_, _, p)| *p).count();
    assert_eq!(
        (st["baseline_rows"].as_u64(), present),
        (Some(10), 10),
        "{st}"
    );
    let (_, open) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(open.as_array().unwrap().len(), 2, "{open}");
    assert_eq!(
        (open[0]["first_run_id"].as_i64(), open[0]["run_id"].as_i64()),
        (Some(1), Some(2)),
        "{open}"
    );

    // --retry-rejects tries them once more; Batch takes them now: the baseline was put back.
    let (code, s) = dir.sync_with(&["--retry-rejects"]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["events_sent"], 2);
    assert!(multiplicity(&emu).values().all(|&n| n == 1));
    let (_, open) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(open, json!([]));
    let (_, all) = json_of(dir.run(&["rejects", "--json", "--all"]));
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "the history keeps them: {all}"
    );
}

#[test]
fn a_429_with_retry_after_pauses_the_lane_and_costs_no_retry_budget() {
    let emu = emulator();
    emu.script(vec![
        Scripted::Status {
            status: 429,
            retry_after: Some(1)
        };
        3
    ]);
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config("[destination]\n", "[destination]\nmax_attempts = 1\n");
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(
        (s["requests"].as_u64(), s["retries"].as_u64()),
        (Some(4), Some(3))
    );
    assert!(
        s["duration_ms"].as_u64().unwrap() >= 3000,
        "three Retry-After: 1 waits: {s}"
    );
    assert_eq!(emu.received().len(), 12);
}

#[test]
fn a_storm_of_5xx_is_retried_to_success() {
    let emu = emulator();
    let storm = [500, 503, 502, 504, 503]
        .iter()
        .map(|&status| Scripted::Status {
            status,
            retry_after: None,
        })
        .collect();
    emu.script(storm);
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["retries"], 5);
    assert_eq!(emu.received().len(), 12);
    assert!(multiplicity(&emu).values().all(|&n| n == 1));
}

#[test]
fn an_exhausted_retry_budget_exits_1_and_the_next_run_ships_the_pending_requests_first() {
    let emu = emulator();
    emu.script(vec![
        Scripted::Status {
            status: 503,
            retry_after: None
        };
        3
    ]);
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config("[destination]\n", "[destination]\nmax_attempts = 3\n");
    let (code, s) = dir.sync();
    assert_eq!(code, 1, "{s}");
    assert_eq!(s["status"], "failed");
    assert_eq!(s["events_pending"], 12);
    assert!(
        s["error"].as_str().unwrap().contains("failed 3 times"),
        "{s}"
    );
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["resumed_requests"], 1);
    assert_eq!(s["events_sent"], 15, "12 pending, then 3 added: {s}");
    let got = emu.received();
    assert_eq!(got.len(), 15);
    assert!(
        got[..12].iter().all(|r| r.request == got[0].request),
        "pending events went first, in their own request"
    );
}

#[test]
fn a_wrong_key_stops_the_run_keeps_everything_pending_and_the_right_key_delivers_it() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let out = dir
        .cmd(&["run", "--json", "--quiet"])
        .env("BATCH_REST_API_KEY", "not-the-key")
        .output()
        .unwrap();
    let (code, s) = json_of(out);
    assert_eq!(code, 1, "{s}");
    assert_eq!(s["events_pending"], 12);
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("401")
            && err.contains("BATCH_REST_API_KEY")
            && err.contains("BATCH_PROJECT_KEY"),
        "{err}"
    );
    assert!(emu.received().is_empty());
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["events_sent"], 12);
    assert_eq!(emu.received().len(), 12);
}

#[test]
fn a_wrong_api_version_is_a_404_that_names_the_setting() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config("[destination]\n", "[destination]\napi_version = \"3.0\"\n");
    let (code, s) = dir.sync();
    assert_eq!(code, 1);
    assert!(s["error"].as_str().unwrap().contains("api_version"), "{s}");
    assert_eq!(s["events_pending"], 12);
}

#[test]
fn a_request_whose_answer_is_lost_after_processing_is_resent_once_and_only_once() {
    let emu = emulator();
    emu.script(vec![Scripted::DropAfter]);
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["retries"], 1);
    let m = multiplicity(&emu);
    assert_eq!(m.len(), 12);
    assert!(
        m.values().all(|&n| n == 2),
        "the lost answer's request was sent twice, no more: {m:?}"
    );
    let (_, s) = dir.sync();
    assert_eq!(s["requests"], 0);
    assert_eq!(emu.received().len(), 24);
}

#[test]
fn a_400_on_a_request_is_split_to_isolate_the_bad_operation() {
    let emu = emulator_with(
        true,
        Faults {
            bad_request_custom_ids: vec!["grace@example.com".into()],
            ..Faults::default()
        },
    );
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let (code, s) = dir.sync();
    assert_eq!(code, 3, "{s}");
    assert_eq!(
        (
            s["events_sent"].as_u64(),
            s["rejected"].as_u64(),
            s["events_pending"].as_u64()
        ),
        (Some(11), Some(1), Some(0))
    );
    let (_, rejects) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(rejects[0]["key"], json!({"order_id": 1002}));
    assert_eq!(rejects[0]["source"], "batch");
    assert!(multiplicity(&emu).values().all(|&n| n == 1));
    assert!(!emu
        .received()
        .iter()
        .any(|r| r.custom_id == "grace@example.com"));
}

#[test]
fn a_large_delta_goes_to_mass_update() {
    let emu = emulator();
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    dir.edit_config("[destination]\n", "[destination]\nmass_update_from = 10\n");
    assert_eq!(dir.sync().0, 0);
    assert!(emu.received().iter().all(|r| r.endpoint == "mass-update"));
    dir.copy_fixture("orders_day2.csv", "orders.csv");
    assert_eq!(dir.sync().0, 0);
    assert!(
        emu.received()[12..].iter().all(|r| r.endpoint == "update"),
        "a 3-event delta uses /profiles/update"
    );
}

#[test]
fn operations_group_a_profiles_events_in_requests_of_at_most_200() {
    let emu = emulator_with(false, Faults::default());
    let dir = Dir::new();
    dir.orders_config(&emu.endpoint());
    let mut csv =
        String::from("order_id,customer_email,ordered_at,amount,currency,gift,campaign,status\n");
    for i in 0..1000 {
        // 250 profiles, 4 orders each, plus one profile with 20 orders.
        csv.push_str(&format!(
            "{i},user{}@example.com,2026-11-20T09:00:00Z,{i},EUR,false,,paid\n",
            i % 250
        ));
    }
    for i in 1000..1020 {
        csv.push_str(&format!(
            "{i},big@example.com,2026-11-20T09:00:00Z,{i},EUR,false,,paid\n"
        ));
    }
    dir.write("orders.csv", csv);
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["events_sent"], 1020);
    // 251 profiles, one with 20 events (2 operations): 252 operations → 2 requests.
    assert_eq!(s["requests"], 2);
    let mut per_op: BTreeMap<(u64, usize), usize> = BTreeMap::new();
    for r in emu.received() {
        *per_op.entry((r.request, r.bulk_index)).or_default() += 1;
    }
    assert_eq!(per_op.len(), 252);
    assert!(per_op.values().all(|&n| n <= 15));
}

#[test]
fn keys_never_reach_the_state_store_logs_or_json_output() {
    let emu = emulator_with(
        true,
        Faults {
            reject_custom_ids: vec!["ada@example.com".into()],
            ..Faults::default()
        },
    );
    let dir = Dir::new();
    day1(&dir, &emu.endpoint());
    let mut outputs = Vec::new();
    let wrong = dir
        .cmd(&["run", "--json"])
        .env("BATCH_PROJECT_KEY", format!("{PROJECT_KEY}-wrong"))
        .env("BATCHSYNC_LOG", "trace")
        .output()
        .unwrap();
    outputs.push(wrong);
    emu.script(vec![
        Scripted::Status {
            status: 503,
            retry_after: None,
        },
        Scripted::DropAfter,
    ]);
    outputs.push(
        dir.cmd(&["run", "--json"])
            .env("BATCHSYNC_LOG", "trace")
            .output()
            .unwrap(),
    );
    outputs.push(dir.run(&["status", "--json"]));
    outputs.push(dir.run(&["rejects", "--json"]));
    outputs.push(dir.run(&["plan", "--json"]));
    let mut haystack: Vec<u8> = Vec::new();
    for o in &outputs {
        haystack.extend_from_slice(&o.stdout);
        haystack.extend_from_slice(&o.stderr);
    }
    for entry in walk(dir.path()) {
        haystack.extend_from_slice(&std::fs::read(entry).unwrap());
    }
    let text = String::from_utf8_lossy(&haystack);
    assert!(
        text.contains("order_completed"),
        "the haystack holds the run's data"
    );
    for secret in [API_KEY, PROJECT_KEY] {
        assert!(!text.contains(secret), "a key leaked");
        assert!(!text.contains(&secret[..12]), "a key prefix leaked");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_emulate_command_serves_on_loopback_and_prints_its_endpoint() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = Dir::new();
    let mut child = dir
        .cmd(&["emulate", "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = endpoint["endpoint"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /_emulator/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"requests\":0"), "{answer}");
}
