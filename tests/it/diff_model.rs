//! The snapshot and diff against a naive in-memory model, on random segments with duplicate
//! keys, nulls, unicode and columns in any order, read from NDJSON files by the NDJSON reader.

use batchsync::config::OnBadRow;
use batchsync::core::diff::{merge, BaseRow, Delta};
use batchsync::core::mapping::{ColumnPlan, MappingSpec};
use batchsync::core::value::Value;
use batchsync::snapshot::Snapshot;
use batchsync::source::ndjson::NdjsonSource;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// A segment row: key, email, note (may be null or unicode), amount (may be null).
type Row = (i64, String, Option<String>, Option<i64>);

/// The rows as an NDJSON file whose objects hold their keys in `layout`'s order ("extra" is a
/// column the mapping does not use): the order reaches batchsync's own reader.
fn write_ndjson(path: &Path, rows: &[Row], layout: &[&str]) {
    let mut text = String::new();
    for (id, email, note, amount) in rows {
        let fields: Vec<String> = layout
            .iter()
            .map(|name| {
                let v = match *name {
                    "id" => json!(id),
                    "email" => json!(email),
                    "note" => json!(note),
                    "amount" => json!(amount),
                    _ => json!("unmapped"),
                };
                format!("{}:{v}", json!(name))
            })
            .collect();
        text.push_str(&format!("{{{}}}\n", fields.join(",")));
    }
    std::fs::write(path, text).unwrap();
}

fn plan() -> ColumnPlan {
    ColumnPlan::new(MappingSpec {
        primary_key: vec!["id".into()],
        custom_id: "email".into(),
        event: Some("e".into()),
        attributes: vec!["note".into(), "amount".into()],
        ..Default::default()
    })
    .unwrap()
}

fn snapshot(rows: &[Row], layout: Vec<&'static str>) -> Vec<batchsync::core::diff::SnapRow> {
    let plan = plan();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.ndjson");
    write_ndjson(&file, rows, &layout);
    let mut src = NdjsonSource::open(&file, &plan.columns).unwrap();
    // A tiny budget, so that spilling and the k-way merge are exercised too.
    Snapshot::take(
        &mut src,
        &plan,
        chrono_tz::UTC,
        OnBadRow::Reject,
        dir.path(),
        2_000,
        |_| std::ops::ControlFlow::Continue(()),
    )
    .unwrap()
    .into_sorted()
    .map(|r| r.unwrap())
    .collect()
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Kind {
    Added,
    Changed,
    Unchanged,
    Removed,
    Duplicate,
}

/// The naive model: by key, compare whole rows.
fn model(old: &[Row], new: &[Row]) -> BTreeMap<i64, Kind> {
    let mut groups: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
    for r in new {
        groups.entry(r.0).or_default().push(r);
    }
    let mut old_groups: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
    for r in old {
        old_groups.entry(r.0).or_default().push(r);
    }
    // A key duplicated in the old segment never made it to the baseline.
    let baseline: BTreeMap<i64, &Row> = old_groups
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(k, v)| (*k, v[0]))
        .collect();
    let mut out = BTreeMap::new();
    for (k, rows) in &groups {
        let kind = if rows.len() > 1 {
            Kind::Duplicate
        } else {
            match baseline.get(k) {
                None => Kind::Added,
                Some(b) if *b == rows[0] => Kind::Unchanged,
                Some(_) => Kind::Changed,
            }
        };
        out.insert(*k, kind);
    }
    for k in baseline.keys() {
        out.entry(*k).or_insert(Kind::Removed);
    }
    out
}

fn kinds(
    old: &[Row],
    new: &[Row],
    layout_old: Vec<&'static str>,
    layout_new: Vec<&'static str>,
) -> BTreeMap<i64, Kind> {
    // The baseline: the first snapshot's keys that were not duplicated.
    let first = snapshot(old, layout_old);
    let mut base: Vec<BaseRow> = Vec::new();
    for d in merge(first.into_iter().map(Ok::<_, ()>), std::iter::empty()) {
        if let Delta::Added { row, .. } = d.unwrap() {
            base.push(BaseRow {
                key: row.key,
                hash: row.hash,
                present: true,
                profile: None,
            });
        }
    }
    let second = snapshot(new, layout_new);
    let key_of = |key: &[u8]| -> i64 {
        let mut d = batchsync::core::encode::Decoder::new(key);
        match d.value().unwrap() {
            Value::Int(i) => i,
            other => panic!("{other:?}"),
        }
    };
    let mut out = BTreeMap::new();
    for d in merge(
        second.into_iter().map(Ok::<_, ()>),
        base.into_iter().map(Ok),
    ) {
        let (k, kind) = match d.unwrap() {
            Delta::Added { row, .. } => (key_of(&row.key), Kind::Added),
            Delta::Changed { row, .. } => (key_of(&row.key), Kind::Changed),
            Delta::Unchanged { key } => (key_of(&key), Kind::Unchanged),
            Delta::Removed { key, .. } => (key_of(&key), Kind::Removed),
            Delta::Duplicate { rows, .. } => (key_of(&rows[0].key), Kind::Duplicate),
            other => panic!("unexpected {other:?}"),
        };
        out.insert(k, kind);
    }
    out
}

fn row() -> impl Strategy<Value = Row> {
    (
        0i64..30,
        prop::sample::select(vec!["a@x.test", "ü@x.test", "名前@x.test"]).prop_map(String::from),
        prop::option::of(
            prop::sample::select(vec!["", "é", "naïve", "😀", "a,b", "\"q\""])
                .prop_map(String::from),
        ),
        prop::option::of(-3i64..3),
    )
}

fn layout() -> impl Strategy<Value = Vec<&'static str>> {
    Just(vec!["id", "email", "note", "amount", "extra"]).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_diff_agrees_with_a_naive_model(
        old in prop::collection::vec(row(), 0..60),
        new in prop::collection::vec(row(), 0..60),
        l1 in layout(),
        l2 in layout(),
    ) {
        prop_assert_eq!(kinds(&old, &new, l1, l2), model(&old, &new));
    }

    #[test]
    fn an_unchanged_segment_in_another_column_order_is_all_unchanged(rows in prop::collection::vec(row(), 0..60), l1 in layout(), l2 in layout()) {
        let got = kinds(&rows, &rows, l1, l2);
        prop_assert!(got.values().all(|k| matches!(k, Kind::Unchanged | Kind::Duplicate)), "{got:?}");
    }
}
