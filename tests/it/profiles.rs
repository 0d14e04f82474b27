//! Profile attributes (DESIGN.md "Profile attributes") with the real binary against the
//! emulator, which keeps each profile's attributes: the profile mirrors the segment through
//! added, changed, removed and re-entered rows; a change of other columns sends nothing for
//! the profile; enabling the feature on an existing sync backfills every present row; a bad
//! value is a reject naming its column and rule; and a kill -9 while shipping leaves the
//! profiles exact (attribute updates are upserts: a re-sent request does no harm).

use crate::common::crash_support::run_bin;
use crate::common::*;
use batchsync::emulate::EmulatorThread;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const HEADER: &str = "email,plan,country,signed_up_at\n";

/// A sync keyed by the custom id: one event per new row, `plan` and `country` (as
/// `$region`) on the profile, removed rows' attributes unset.
fn sync_dir(endpoint: &str, profile: bool) -> Dir {
    sync_dir_with(endpoint, profile, false)
}

/// `event_attributes`: `plan` and `country` are the event's attributes too, so the row hash
/// covers them and the diff leaves profile hashes to rows whose row hash changed (the lazy
/// path of `pipeline::diff::lazy_profiles`).
fn sync_dir_with(endpoint: &str, profile: bool, event_attributes: bool) -> Dir {
    let dir = Dir::new();
    let profile = if profile {
        "profile_attributes = { plan = \"plan\", \"$region\" = \"country\" }"
    } else {
        ""
    };
    let attributes = if event_attributes {
        "attributes = [\"plan\", \"country\"]\n"
    } else {
        ""
    };
    dir.write(
        "batchsync.toml",
        format!(
            "[source]\ntype = \"csv\"\npath = \"users.csv\"\nprimary_key = [\"email\"]\n\n\
             [mapping]\ncustom_id = \"email\"\nevent = \"signed_up\"\ntime = \"signed_up_at\"\n{attributes}{profile}\n\n\
             [sync]\nlate_events = \"send\"\non_remove = \"unset\"\nmax_added = \"off\"\nmax_removed = \"off\"\n\n\
             [destination]\nendpoint = \"{endpoint}\"\nrate = 100000\nmass_update_from = 1000000\n"
        ),
    );
    dir
}

/// One user row: (email, plan, country, signed up day).
fn segment(dir: &Dir, rows: &[(&str, &str, &str, u32)]) {
    let body: String = rows
        .iter()
        .map(|(e, p, c, d)| format!("{e},{p},{c},2026-11-{d:02}T10:00:00Z\n"))
        .collect();
    dir.write("users.csv", format!("{HEADER}{body}"));
}

/// Every profile the emulator holds attributes for, as JSON.
fn profiles(emu: &EmulatorThread) -> Value {
    json!(emu.profiles())
}

fn counts(dir: &Dir) -> Value {
    let (code, s) = dir.sync();
    assert_eq!(code, 0, "{s}");
    s
}

#[rstest::rstest]
fn the_profile_mirrors_the_segment_through_added_changed_removed_and_reentered_rows(
    #[values(false, true)] event_attributes: bool,
) {
    let emu = emulator_with(false, Default::default());
    let dir = sync_dir_with(&emu.endpoint(), true, event_attributes);
    segment(
        &dir,
        &[
            ("a@x.io", "pro", "FR", 1),
            ("b@x.io", "free", "DE", 1),
            ("c@x.io", "team", "US", 1),
        ],
    );
    let s = counts(&dir);
    assert_counts(
        &s,
        &[("added", 3), ("events_sent", 3), ("profile_updates", 3)],
    );
    assert_eq!(
        profiles(&emu),
        json!({
            "a@x.io": {"$region": "FR", "plan": "pro"},
            "b@x.io": {"$region": "DE", "plan": "free"},
            "c@x.io": {"$region": "US", "plan": "team"},
        })
    );
    // An added row's attributes travel in the same operation as its event.
    assert_eq!(emu.stats().profile_updates, 3);
    assert_eq!(emu.received().len(), 3);

    // a: plan changes (its profile alone); b leaves (unset); c: its event time changes (a
    // changed row, on_change = "ignore": nothing for the event, nothing for the profile);
    // d arrives with no country (sent as null: not set on the profile).
    segment(
        &dir,
        &[
            ("a@x.io", "team", "FR", 1),
            ("c@x.io", "team", "US", 2),
            ("d@x.io", "free", "", 2),
        ],
    );
    let (_, plan) = json_of(dir.run(&["plan", "--json"]));
    assert_eq!(
        (
            plan["profile_updates"].as_u64(),
            plan["profile_backfill"].as_bool()
        ),
        (Some(3), Some(false)),
        "{plan}"
    );
    assert_eq!(plan["endpoint"], "update", "{plan}");
    let s = counts(&dir);
    // With plan an event attribute too, a's row hash changed: a changed row (that sends no
    // event, on_change = "ignore") whose profile update goes all the same.
    let (changed, unchanged) = if event_attributes { (2, 0) } else { (1, 1) };
    assert_counts(
        &s,
        &[
            ("added", 1),
            ("changed", changed),
            ("removed", 1),
            ("unchanged", unchanged),
            ("events_sent", 1),
            ("profile_updates", 3),
        ],
    );
    assert_eq!(
        profiles(&emu),
        json!({
            "a@x.io": {"$region": "FR", "plan": "team"},
            "c@x.io": {"$region": "US", "plan": "team"},
            "d@x.io": {"plan": "free"},
        })
    );
    // a, b and d: c sent nothing.
    assert_eq!(emu.stats().profile_updates, 6);
    assert_eq!(emu.profile("b@x.io").map(|a| a.len()), Some(0));

    // b comes back: a re-entered row sets its attributes again, with its event.
    segment(
        &dir,
        &[
            ("a@x.io", "team", "FR", 1),
            ("b@x.io", "pro", "DE", 3),
            ("c@x.io", "team", "US", 2),
            ("d@x.io", "free", "", 2),
        ],
    );
    let s = counts(&dir);
    assert_counts(
        &s,
        &[("added", 1), ("reentered", 1), ("profile_updates", 1)],
    );
    assert_eq!(
        emu.profile("b@x.io").map(|a| json!(a)),
        Some(json!({"$region": "DE", "plan": "pro"}))
    );

    // Nothing changed: nothing is sent.
    let s = counts(&dir);
    assert_counts(
        &s,
        &[("unchanged", 4), ("profile_updates", 0), ("requests", 0)],
    );

    // explain shows what each run set on the profile.
    let (code, e) = json_of(dir.run(&["explain", "--json", "a@x.io"]));
    assert_eq!(code, 0, "{e}");
    let h = e["history"].as_array().unwrap();
    let kinds: Vec<_> = h.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    let second = if event_attributes {
        "changed"
    } else {
        "profile"
    };
    assert_eq!(kinds, ["added", second], "{e}");
    assert_eq!(h[0]["attributes"], json!({"$region": "FR", "plan": "pro"}));
    assert_eq!(h[1]["attributes"], json!({"$region": "FR", "plan": "team"}));
    assert_eq!(h[1]["event"], Value::Null);
    assert_eq!(h[1]["answer"], "delivered");
    let (_, e) = json_of(dir.run(&["explain", "--json", "b@x.io"]));
    let h = e["history"].as_array().unwrap();
    assert_eq!(h[1]["kind"], "removed", "{e}");
    assert_eq!(h[1]["attributes"], json!({"$region": null, "plan": null}));
    let text = String::from_utf8(dir.run(&["explain", "a@x.io"]).stdout).unwrap();
    assert!(
        text.contains("profile attributes of run 2: {\"$region\":\"FR\",\"plan\":\"team\"}"),
        "{text}"
    );
}

#[test]
fn enabling_profile_attributes_on_an_existing_sync_backfills_every_present_row() {
    let emu = emulator_with(false, Default::default());
    let dir = sync_dir(&emu.endpoint(), false);
    let rows = [
        ("a@x.io", "pro", "FR", 1),
        ("b@x.io", "free", "DE", 1),
        ("c@x.io", "team", "US", 1),
    ];
    segment(&dir, &rows);
    counts(&dir);
    segment(&dir, &rows[..2]);
    counts(&dir);
    assert_eq!(emu.stats().profile_updates, 0);

    // The feature is switched on: the store keeps its baseline (the row hash covers the
    // event's columns, as before), and the next run sets the attributes of a and b.
    let on = sync_dir(&emu.endpoint(), true);
    std::fs::copy(on.join("batchsync.toml"), dir.join("batchsync.toml")).unwrap();
    dir.edit_config("mass_update_from = 1000000", "mass_update_from = 2");
    let (code, plan) = json_of(dir.run(&["plan", "--json"]));
    assert_eq!(code, 0, "{plan}");
    assert_eq!(
        (
            plan["added"].as_u64(),
            plan["new_events"].as_u64(),
            plan["profile_updates"].as_u64(),
            plan["profile_backfill"].as_bool()
        ),
        (Some(0), Some(0), Some(2), Some(true)),
        "{plan}"
    );
    // A backfill may use mass-update: the delta is at least mass_update_from.
    assert_eq!(plan["endpoint"], "mass-update", "{plan}");
    assert_eq!(plan["profile_sample"].as_array().unwrap().len(), 2);
    let text = stderr(&dir.run(&["plan"]));
    assert!(
        text.contains("2 profile attribute updates (a backfill"),
        "{text}"
    );

    let s = counts(&dir);
    assert_counts(
        &s,
        &[("unchanged", 2), ("events_sent", 0), ("profile_updates", 2)],
    );
    assert_eq!(
        profiles(&emu),
        json!({
            "a@x.io": {"$region": "FR", "plan": "pro"},
            "b@x.io": {"$region": "DE", "plan": "free"},
        })
    );
    // The removed row had no attributes set: nothing to unset.
    assert_eq!(emu.profile("c@x.io"), Some(Default::default()));

    // After the backfill, profile updates go to /profiles/update whatever their number.
    segment(
        &dir,
        &[("a@x.io", "team", "FR", 1), ("b@x.io", "team", "DE", 1)],
    );
    let (_, plan) = json_of(dir.run(&["plan", "--json"]));
    assert_eq!(
        (plan["profile_updates"].as_u64(), plan["endpoint"].as_str()),
        (Some(2), Some("update")),
        "{plan}"
    );
    counts(&dir);
    assert_eq!(emu.profile("b@x.io").unwrap()["plan"], "team");
}

#[test]
fn a_bad_profile_value_is_a_reject_naming_its_column_and_rule_until_it_is_fixed() {
    let emu = emulator_with(false, Default::default());
    let dir = sync_dir(&emu.endpoint(), true);
    segment(
        &dir,
        &[("a@x.io", "pro", "FR", 1), ("b@x.io", "pro", "France", 1)],
    );
    let (code, s) = dir.sync();
    assert_eq!((code, s["status"].as_str()), (3, Some("partial")), "{s}");
    assert_counts(&s, &[("added", 2), ("rejected", 1), ("events_sent", 1)]);
    let (_, r) = json_of(dir.run(&["rejects", "--json"]));
    let r = &r.as_array().unwrap()[0];
    assert_eq!(
        (&r["key"], &r["column"], &r["rule"]),
        (
            &json!({"email": "b@x.io"}),
            &json!("country"),
            &json!("profile_native")
        ),
        "{r}"
    );
    assert!(r["reason"].as_str().unwrap().contains("ISO 3166-1"), "{r}");
    assert_eq!(emu.profile("b@x.io"), None, "nothing was sent for b");

    // Unchanged, it stays rejected; its profile column fixed, it is sent.
    let s = counts(&dir);
    assert_counts(&s, &[("still_rejected", 1), ("requests", 0)]);
    segment(
        &dir,
        &[("a@x.io", "pro", "FR", 1), ("b@x.io", "pro", "FR", 1)],
    );
    let s = counts(&dir);
    assert_counts(
        &s,
        &[("added", 1), ("events_sent", 1), ("profile_updates", 1)],
    );
    assert_eq!(
        emu.profile("b@x.io").map(|a| json!(a)),
        Some(json!({"$region": "FR", "plan": "pro"}))
    );
}

/// The profiles a segment of `n` users must leave: user i's plan and region.
fn users(n: usize, version: usize) -> (Vec<(String, String, String)>, Value) {
    let plans = ["free", "pro", "team"];
    let regions = ["FR", "DE", "US", "JP"];
    let rows: Vec<_> = (0..n)
        .map(|i| {
            (
                format!("u{i:04}@x.io"),
                plans[(i + version * (i % 3)) % 3].to_string(),
                regions[(i / 7 + version) % 4].to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<_, _> = rows
        .iter()
        .map(|(e, p, r)| (e.clone(), json!({"plan": p, "$region": r})))
        .collect();
    (rows, json!(expected))
}

fn write_users(dir: &Dir, rows: &[(String, String, String)]) {
    let body: String = rows
        .iter()
        .map(|(e, p, r)| format!("{e},{p},{r},2026-11-01T10:00:00Z\n"))
        .collect();
    dir.write("users.csv", format!("{HEADER}{body}"));
}

#[test]
fn a_kill_while_shipping_leaves_the_profiles_exact() {
    let emu = emulator_with(false, Default::default());
    let dir = sync_dir(&emu.endpoint(), true);
    // 450 users: 3 requests of at most 200 operations on /profiles/update.
    let (rows, expected) = users(450, 0);
    write_users(&dir, &rows);
    // Killed after Batch took the second request, before the answer was recorded: the
    // resumed run sends it again.
    let crashed = run_bin(&dir, &["run", "--json", "--quiet"], Some("after_send:2"));
    assert!(
        crashed.stderr.contains("crash point after_send reached"),
        "{}",
        crashed.stderr
    );
    assert_ne!(profiles(&emu), expected, "the crash came before the end");
    let s = counts(&dir);
    assert_counts(&s, &[("resumed_requests", 2)]);
    assert_eq!(profiles(&emu), expected);

    // A delta of profile updates alone (most profiles: past the guard), killed the same way.
    dir.edit_config(
        "max_removed = \"off\"",
        "max_removed = \"off\"\nmax_profile_updates = \"off\"",
    );
    let (rows, expected) = users(450, 1);
    write_users(&dir, &rows);
    let (_, plan) = json_of(dir.run(&["plan", "--json"]));
    let updates = plan["profile_updates"].as_u64().unwrap();
    assert!(updates > 200, "{plan}");
    let crashed = run_bin(&dir, &["run", "--json", "--quiet"], Some("after_send:1"));
    assert!(
        crashed.stderr.contains("crash point after_send reached"),
        "{}",
        crashed.stderr
    );
    assert_ne!(profiles(&emu), expected, "the crash came before the end");
    counts(&dir);
    assert_eq!(profiles(&emu), expected);
    // Events: the 450 of the first segment, and once more the 200 of the request whose answer
    // the first crash kept from being recorded (DESIGN.md: at most that request goes twice).
    assert_eq!(emu.received().len(), 650);
}

#[test]
fn a_profile_update_batch_drops_is_a_reject_and_its_baseline_entry_goes_back() {
    let ok = emulator_with(false, Default::default());
    let dir = sync_dir(&ok.endpoint(), true);
    segment(
        &dir,
        &[("a@x.io", "pro", "FR", 1), ("b@x.io", "free", "DE", 1)],
    );
    counts(&dir);

    // Batch drops a's operation: a profile update alone.
    let refusing = emulator_with(
        false,
        batchsync::emulate::Faults {
            reject_custom_ids: vec!["a@x.io".into()],
            ..Default::default()
        },
    );
    dir.edit_config(&ok.endpoint(), &refusing.endpoint());
    segment(
        &dir,
        &[("a@x.io", "team", "FR", 1), ("b@x.io", "free", "DE", 1)],
    );
    let (code, s) = dir.sync();
    assert_eq!(code, 3, "{s}");
    assert_counts(&s, &[("profile_updates", 1), ("rejected", 1)]);
    let (_, r) = json_of(dir.run(&["rejects", "--json"]));
    assert_eq!(r[0]["key"], json!({"email": "a@x.io"}), "{r}");
    assert_eq!(r[0]["source"], "batch", "{r}");
    let (_, e) = json_of(dir.run(&["explain", "--json", "a@x.io"]));
    let kinds: Vec<_> = e["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["added", "profile", "restored"], "{e}");

    // Unchanged, it stays rejected: nothing is sent again.
    let (_, s) = dir.sync();
    assert_counts(&s, &[("still_rejected", 1), ("requests", 0)]);

    // Tried again, the update goes: its baseline entry went back to the attributes Batch has.
    dir.edit_config(&refusing.endpoint(), &ok.endpoint());
    let (code, s) = dir.sync_with(&["--retry-rejects"]);
    assert_eq!(code, 0, "{s}");
    assert_counts(&s, &[("profile_updates", 1)]);
    assert_eq!(ok.profile("a@x.io").unwrap()["plan"], "team");
}

#[test]
fn a_sync_without_an_event_sends_profile_attributes_alone() {
    let emu = emulator_with(false, Default::default());
    let dir = sync_dir(&emu.endpoint(), true);
    dir.edit_config("event = \"signed_up\"\ntime = \"signed_up_at\"\n", "");
    segment(
        &dir,
        &[("a@x.io", "pro", "FR", 1), ("b@x.io", "free", "DE", 1)],
    );
    let s = counts(&dir);
    assert_counts(&s, &[("added", 2), ("events", 0), ("profile_updates", 2)]);
    assert!(emu.received().is_empty());
    assert_eq!(
        profiles(&emu),
        json!({
            "a@x.io": {"$region": "FR", "plan": "pro"},
            "b@x.io": {"$region": "DE", "plan": "free"},
        })
    );
    segment(&dir, &[("a@x.io", "team", "FR", 1)]);
    let s = counts(&dir);
    assert_counts(&s, &[("removed", 1), ("profile_updates", 2)]);
    assert_eq!(
        profiles(&emu),
        json!({"a@x.io": {"$region": "FR", "plan": "team"}})
    );
}

#[test]
fn a_run_that_changes_most_profiles_is_refused_by_max_profile_updates_but_a_backfill_is_not() {
    let emu = emulator_with(false, Default::default());
    let dir = sync_dir(&emu.endpoint(), false);
    let (rows, _) = users(300, 0);
    write_users(&dir, &rows);
    counts(&dir);
    // Profile attributes switched on: the backfill updates every row, and is not refused.
    let on = sync_dir(&emu.endpoint(), true);
    std::fs::copy(on.join("batchsync.toml"), dir.join("batchsync.toml")).unwrap();
    let s = counts(&dir);
    assert_counts(&s, &[("profile_updates", 300)]);
    // A broken query: every plan null.
    let nulled: Vec<_> = rows
        .iter()
        .map(|(e, _, r)| (e.clone(), String::new(), r.clone()))
        .collect();
    write_users(&dir, &nulled);
    let out = dir.run(&["run", "--json", "--quiet"]);
    let (code, s) = json_of(out);
    assert_eq!(code, 1, "{s}");
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("300 rows' profile attributes changed (max_profile_updates = 50%)"),
        "{s}"
    );
    assert_eq!(emu.stats().profile_updates, 300, "nothing more was sent");
    // --force says the change is real.
    let (code, s) = dir.sync_with(&["--force"]);
    assert_eq!(code, 0, "{s}");
    assert_counts(&s, &[("profile_updates", 300)]);
    assert_eq!(emu.profile("u0001@x.io").unwrap().get("plan"), None);
}

#[test]
fn when_the_row_hash_settles_profiles_a_row_rejected_in_the_backfill_stays_rejected_until_fixed() {
    let emu = emulator_with(false, Default::default());
    // plan and country are event attributes too: after the backfill, the diff computes
    // profile hashes only where it must (an entry that has none, a changed row).
    let dir = sync_dir_with(&emu.endpoint(), false, true);
    let rows = [("a@x.io", "pro", "FR", 1), ("b@x.io", "pro", "France", 1)];
    segment(&dir, &rows);
    counts(&dir);
    let on = sync_dir_with(&emu.endpoint(), true, true);
    std::fs::copy(on.join("batchsync.toml"), dir.join("batchsync.toml")).unwrap();
    // The backfill: b's $region breaks Batch's rule; its entry keeps no profile hash.
    let (code, s) = dir.sync();
    assert_eq!(code, 3, "{s}");
    assert_counts(&s, &[("profile_updates", 1), ("rejected", 1)]);
    // Unchanged, b is still rejected, not an unchanged row whose profile was never sent.
    let s = counts(&dir);
    assert_counts(
        &s,
        &[("still_rejected", 1), ("unchanged", 1), ("requests", 0)],
    );
    // Fixed, it is a changed row whose profile goes.
    segment(&dir, &[rows[0], ("b@x.io", "pro", "FR", 1)]);
    let s = counts(&dir);
    assert_counts(&s, &[("changed", 1), ("profile_updates", 1)]);
    assert_eq!(
        emu.profile("b@x.io").map(|a| json!(a)),
        Some(json!({"$region": "FR", "plan": "pro"}))
    );
}
