//! `batchsync explain KEY` (DESIGN.md "explain") with the real binary against the emulator: a
//! row's history across runs (added, changed, removed, re-entered, rejected, still rejected,
//! dropped by Batch and restored), with the event, the request and Batch's answer; an unknown
//! key; pruning by `[state] keep_runs`, which keeps what open rejects need; and the database
//! mode's main path against the real PostgreSQL.

use crate::common::db::{warehouse_config, Pg, Schema, PG_VAR};
use crate::common::*;
use crate::url_or_skip;
use batchsync::emulate::Faults;
use serde_json::{json, Value};

const HEADER: &str = "order_id,customer_email,ordered_at,amount,currency,gift,campaign,status\n";

/// One order row of the fixture's shape.
fn row(id: u32, email: &str, amount: &str) -> String {
    format!("{id},{email},2026-11-20T09:15:00Z,{amount},EUR,false,,paid\n")
}

/// A sync over `orders.csv` (the fixture config, `on_change = "event"`), holding `rows`.
fn sync_dir(endpoint: &str) -> Dir {
    let dir = Dir::new();
    dir.orders_config(endpoint);
    dir.edit_config("on_change = \"ignore\"", "on_change = \"event\"");
    dir
}

fn segment(dir: &Dir, rows: &[String]) {
    dir.write("orders.csv", format!("{HEADER}{}", rows.concat()));
}

/// `explain --json KEY…`: exit code and the parsed output.
fn explain(dir: &Dir, key: &[&str]) -> (i32, Value) {
    let mut args = vec!["explain", "--json"];
    args.extend_from_slice(key);
    json_of(dir.run(&args))
}

/// The history's kinds, in order.
fn kinds(e: &Value) -> Vec<&str> {
    e["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history: {e}"))
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect()
}

#[test]
fn a_rows_history_shows_each_run_that_added_changed_removed_or_brought_it_back() {
    let emu = emulator();
    let dir = sync_dir(&emu.endpoint());
    segment(&dir, &[row(1, "a@x.io", "10"), row(2, "b@x.io", "20")]);
    assert_eq!(dir.sync().0, 0);
    // Run 2: 1 changed (on_change = "event" sends it again), 2 removed.
    segment(&dir, &[row(1, "a@x.io", "11")]);
    assert_eq!(dir.sync().0, 0);
    // Run 3: 2 comes back.
    segment(&dir, &[row(1, "a@x.io", "11"), row(2, "b@x.io", "20")]);
    assert_eq!(dir.sync().0, 0);

    let (code, e) = explain(&dir, &["1"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(e["key"], json!({"order_id": 1}));
    assert_eq!(kinds(&e), ["added", "changed"], "{e}");
    let h = e["history"].as_array().unwrap();
    assert_eq!(
        h.iter()
            .map(|l| l["run_id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    for l in h {
        assert_eq!(l["answer"], "delivered", "{l}");
        assert!(l["answered_at"].as_str().is_some(), "{l}");
        assert!(l["request"].as_str().unwrap().starts_with('r'), "{l}");
        assert!(l["at"].as_str().unwrap().starts_with("20"), "{l}");
        assert_eq!(l["hash"].as_str().unwrap().len(), 32, "{l}");
        assert_eq!(l["reason"], Value::Null, "{l}");
        assert_eq!(l["event"]["name"], "order_completed", "{l}");
    }
    assert_eq!(h[0]["event"]["attributes"]["amount"], 10, "{e}");
    assert_eq!(h[1]["event"]["attributes"]["amount"], 11, "{e}");
    assert_ne!(h[0]["hash"], h[1]["hash"]);

    // The same row named as col=value, and as the JSON `rejects --json` prints.
    assert_eq!(explain(&dir, &["order_id=1"]).1, e);
    assert_eq!(explain(&dir, &[r#"{"order_id":1}"#]).1, e);

    let (_, e) = explain(&dir, &["order_id=2"]);
    assert_eq!(kinds(&e), ["added", "removed", "reentered"], "{e}");
    let h = e["history"].as_array().unwrap();
    assert_eq!(
        (h[1]["event"].clone(), h[1]["answer"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(h[1]["hash"], h[0]["hash"], "a removal keeps the last hash");
    assert_eq!(h[2]["answer"], "delivered");
    assert_eq!(e["baseline"]["present"], true, "{e}");

    // The human table.
    let out = dir.run(&["explain", "2"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run  at"), "{text}");
    assert!(
        text.contains("reentered") && text.contains("delivered"),
        "{text}"
    );
    assert!(text.contains("event of run 3: {"), "{text}");
}

/// Requests are packed in custom-id order, one operation per custom id, while the history
/// lines are written in key order: each line must still name its own event's place.
#[test]
fn each_rows_line_names_its_own_event_when_custom_ids_sort_apart_from_keys() {
    let emu = emulator();
    let dir = sync_dir(&emu.endpoint());
    // Custom-id order: 2 (a@), 4 (m@), then 1 and 3 in one operation (z@); 5 (b@) changes later.
    let rows = [
        (1, "z@x.io", "10"),
        (2, "a@x.io", "20"),
        (3, "z@x.io", "30"),
        (4, "m@x.io", "40"),
        (5, "b@x.io", "50"),
    ];
    segment(
        &dir,
        &rows.map(|(id, email, amount)| row(id, email, amount)),
    );
    assert_eq!(dir.sync().0, 0);
    segment(
        &dir,
        &rows.map(|(id, email, amount)| row(id, email, if id == 5 { "55" } else { amount })),
    );
    assert_eq!(dir.sync().0, 0);
    for (id, email, amount) in rows {
        let (code, e) = explain(&dir, &[&id.to_string()]);
        assert_eq!(code, 0, "{e}");
        let h = e["history"].as_array().unwrap();
        assert_eq!(h[0]["kind"], "added", "{e}");
        assert_eq!(h[0]["answer"], "delivered", "{e}");
        let event = &h[0]["event"];
        assert_eq!(
            event["attributes"]["amount"],
            amount.parse::<i64>().unwrap(),
            "key {id}: {e}"
        );
        if id == 5 {
            assert_eq!(kinds(&e), ["added", "changed"], "{e}");
            assert_eq!(h[1]["event"]["attributes"]["amount"], 55, "{e}");
        }
        let received = emu.received();
        let mine = received
            .iter()
            .filter(|r| r.custom_id == email && r.event == *event);
        assert_eq!(
            mine.count(),
            1,
            "key {id}: the event its line names reached Batch once"
        );
    }
}

#[test]
fn a_rejected_row_shows_its_reason_then_the_runs_that_found_it_still_rejected() {
    let emu = emulator();
    let dir = sync_dir(&emu.endpoint());
    let good = row(1, "a@x.io", "10");
    segment(&dir, &[good.clone(), row(7, "", "5")]);
    assert_eq!(dir.sync().0, 3, "an empty custom id is a new reject");
    assert_eq!(dir.sync().0, 0, "unchanged: still rejected");
    assert_eq!(dir.sync().0, 0);

    let (code, e) = explain(&dir, &["7"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(kinds(&e), ["rejected", "still_rejected"], "{e}");
    let h = e["history"].as_array().unwrap();
    assert_eq!(h[0]["run_id"], 1);
    assert_eq!(
        h[1]["run_id"], 3,
        "the latest run that found it still rejected"
    );
    assert!(h[0]["reason"].as_str().unwrap().contains("custom"), "{e}");
    assert_eq!(h[1]["reason"], h[0]["reason"]);
    assert_eq!(h[0]["hash"], h[1]["hash"]);
    assert_eq!(
        e["baseline"],
        Value::Null,
        "a rejected row never enters the baseline"
    );

    // Fixed: sent; the streak of runs 2-3 is written down as its reject closes.
    segment(&dir, &[good, row(7, "g@x.io", "5")]);
    assert_eq!(dir.sync().0, 0);
    let (_, e) = explain(&dir, &["7"]);
    assert_eq!(kinds(&e), ["rejected", "still_rejected", "added"], "{e}");
    let h = e["history"].as_array().unwrap();
    assert_eq!(
        (h[1]["run_id"].as_i64(), h[2]["run_id"].as_i64()),
        (Some(3), Some(4))
    );
    assert_eq!(h[2]["answer"], "delivered");
}

#[test]
fn a_row_batch_dropped_shows_the_drop_and_its_restored_baseline_then_its_delivery() {
    let emu = emulator_with(
        true,
        Faults {
            reject_custom_ids: vec!["ada@example.com".into()],
            ..Faults::default()
        },
    );
    let dir = Dir::new();
    dir.orders_config(&emu.endpoint());
    dir.copy_fixture("orders_day1.csv", "orders.csv");
    assert_eq!(dir.sync().0, 3);

    let (code, e) = explain(&dir, &["1001"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(kinds(&e), ["added", "restored"], "{e}");
    let h = e["history"].as_array().unwrap();
    assert_eq!(h[0]["answer"], "dropped");
    assert_eq!(h[1]["answer"], "dropped");
    assert_eq!(h[0]["request"], h[1]["request"]);
    let reason = h[0]["reason"].as_str().unwrap();
    assert!(!reason.is_empty());
    assert_eq!(h[1]["reason"], reason);
    assert_eq!(
        e["baseline"],
        Value::Null,
        "a new key's entry is erased again"
    );
    // Another row of the same request was delivered.
    let (_, other) = explain(&dir, &["1002"]);
    assert_eq!(kinds(&other), ["added"]);
    assert_eq!(other["history"][0]["answer"], "delivered");

    emu.set_faults(Faults::default());
    assert_eq!(dir.sync().0, 0, "unchanged: still rejected, not sent");
    assert_eq!(dir.sync_with(&["--retry-rejects"]).0, 0);
    let (_, e) = explain(&dir, &["1001"]);
    assert_eq!(
        kinds(&e),
        ["added", "restored", "still_rejected", "added"],
        "{e}"
    );
    let h = e["history"].as_array().unwrap();
    assert_eq!(h[3]["answer"], "delivered");
    assert_eq!(h[3]["run_id"], 3);
    assert_eq!(e["baseline"]["present"], true);
}

#[test]
fn an_unknown_key_exits_1_with_a_message_and_a_key_that_names_no_row_exits_2() {
    let emu = emulator();
    let dir = sync_dir(&emu.endpoint());
    let out = dir.run(&["explain", "1"]);
    assert_eq!(out.status.code(), Some(1), "no store yet");
    segment(&dir, &[row(1, "a@x.io", "10")]);
    assert_eq!(dir.sync().0, 0);

    let out = dir.run(&["explain", "--json", "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    assert!(err.contains("no row with key 999"), "{err}");

    for bad in [&["abc"][..], &["id=1"], &["order_id=1", "order_id=2"]] {
        let mut args = vec!["explain"];
        args.extend_from_slice(bad);
        let out = dir.run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("KEY"), "{}", stderr(&out));
    }
}

#[test]
fn pruning_keeps_the_newest_runs_history_and_every_open_rejects() {
    let emu = emulator();
    let dir = sync_dir(&emu.endpoint());
    dir.edit_config("[state]\n", "[state]\nkeep_runs = 2\n");
    let rejected = row(7, "", "5");
    for amount in ["1", "2", "3", "4"] {
        segment(&dir, &[row(1, "a@x.io", amount), rejected.clone()]);
        dir.sync();
    }
    // Row 1 changed in every run: only the lines of runs 3 and 4 are left.
    let (_, e) = explain(&dir, &["1"]);
    assert_eq!(kinds(&e), ["changed", "changed"], "{e}");
    assert_eq!(e["history"][0]["run_id"], 3);
    assert_eq!(e["history"][0]["answer"], "delivered");
    // Row 7's reject is open: its line of run 1 stays, with its reason.
    let (_, e) = explain(&dir, &["7"]);
    assert_eq!(kinds(&e), ["rejected", "still_rejected"], "{e}");
    assert_eq!(e["history"][0]["run_id"], 1);
    assert!(e["history"][0]["reason"].as_str().is_some(), "{e}");
    let (_, open) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(open[0]["first_run_id"], 1, "{open}");
    // Run records: the newest two, and run 1, which the open reject's line belongs to.
    let (_, status) = json_of(dir.run(&["status", "--json"]));
    let runs: Vec<i64> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_i64().unwrap())
        .collect();
    assert_eq!(runs, [4, 3, 1], "{status}");

    // Once the reject closes (the row left), its lines go with their runs, and so does run 1.
    segment(&dir, &[row(1, "a@x.io", "4")]);
    dir.sync();
    dir.sync();
    let out = dir.run(&["explain", "7"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (_, status) = json_of(dir.run(&["status", "--json"]));
    assert_eq!(status["runs"].as_array().unwrap().len(), 2, "{status}");
}

/// The database mode: the same lines from the sync's tables.
#[test]
fn the_database_mode_keeps_the_same_history() {
    let url = url_or_skip!(PG_VAR);
    let emu = emulator();
    let mut pg = Pg::connect(&url);
    let table = pg.table("ex_orders");
    pg.exec(&format!(
        "CREATE TABLE {table} (order_id int PRIMARY KEY, email text, amount numeric(10,2), ordered_at timestamptz);
         INSERT INTO {table} VALUES (1, 'a@x.io', 10, '2026-11-20T10:00:00Z'), (2, 'b@x.io', 20, '2026-11-20T10:00:00Z'),
                                    (3, '', 30, '2026-11-20T10:00:00Z');"
    ));
    let schema = Schema::new(&url, "ex");
    let dir = Dir::new();
    dir.write(
        "batchsync.toml",
        warehouse_config(
            &url,
            &format!("SELECT * FROM {table}"),
            "order_id",
            &schema.name,
            "orders",
            "custom_id = \"email\"\nevent = \"order_completed\"\ntime = \"ordered_at\"\nattributes = [\"amount\"]",
            "late_events = \"send\"\non_change = \"event\"",
            &emu.endpoint(),
        ),
    );
    assert!(dir.run(&["setup"]).status.success());
    assert_eq!(dir.sync().0, 3, "order 3 has no custom id");
    pg.exec(&format!(
        "UPDATE {table} SET amount = 11 WHERE order_id = 1; DELETE FROM {table} WHERE order_id = 2;"
    ));
    let (code, summary) = dir.sync();
    assert_eq!(code, 0, "{summary}");
    pg.exec(&format!(
        "INSERT INTO {table} VALUES (2, 'b@x.io', 20, '2026-11-20T10:00:00Z')"
    ));
    dir.edit_config("on_change = \"event\"", "on_change = \"ignore\"");
    pg.exec(&format!(
        "UPDATE {table} SET amount = 12 WHERE order_id = 1"
    ));
    assert_eq!(
        dir.sync().0,
        3,
        "other rules: order 3 is tried, and rejected, again"
    );

    let (code, e) = explain(&dir, &["1"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(e["key"], json!({"order_id": 1}));
    assert_eq!(kinds(&e), ["added", "changed", "changed"], "{e}");
    let h = e["history"].as_array().unwrap();
    assert_eq!(h[1]["event"]["attributes"]["amount"], 11, "{e}");
    assert_eq!(
        (h[0]["answer"].as_str(), h[1]["answer"].as_str()),
        (Some("delivered"), Some("delivered"))
    );
    assert_eq!(
        h[2]["event"],
        Value::Null,
        "on_change = \"ignore\": settled in SQL, no event"
    );
    assert_eq!(h[2]["run_id"], 3);

    let (_, e) = explain(&dir, &["order_id=2"]);
    assert_eq!(kinds(&e), ["added", "removed", "reentered"], "{e}");
    assert_eq!(e["history"][1]["hash"], e["history"][0]["hash"]);

    // Rejected in run 1, still in run 2 (the streak written as its reject renewed), and
    // rejected again under the new rules of run 3.
    let (_, e) = explain(&dir, &["3"]);
    assert_eq!(kinds(&e), ["rejected", "still_rejected", "rejected"], "{e}");
    let runs: Vec<i64> = e["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["run_id"].as_i64().unwrap())
        .collect();
    assert_eq!(runs, [1, 2, 3]);
    assert!(e["history"][0]["reason"].as_str().is_some(), "{e}");

    let out = dir.run(&["explain", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    drop(schema);
}
