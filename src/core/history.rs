//! A row's history (`batchsync explain`), the pure parts: what a history line says
//! ([`Change`]), how Batch's answer about a line is read from what the outbox holds
//! ([`answer`]), and how the user's KEY argument becomes the keys a store holds
//! ([`parse_key`], then [`local_keys`] for the local store's key bytes, [`text_keys`] for the
//! database mode's key text).
//!
//! Invariants:
//! - A key is encoded here exactly as the snapshot encodes it (`core::encode`'s writers, the
//!   declared type's spellings of `core::value`), and its text exactly as the database mode's
//!   `sql::key_expr` writes it (a JSON object of the key columns in configured order).
//! - An undeclared key column may hold text, or a number or bool where the source is typed
//!   (NDJSON, databases): a plain argument is looked up under each reading it has, and the
//!   store tells which one it holds. A JSON object argument (as `rejects --json` prints keys)
//!   says its types itself.

use super::encode::{encode_value, unhex};
use super::value::{from_json, parse_text, Type, Value};
use chrono_tz::Tz;

/// What a run did with a row, as one line of its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// A new key.
    Added,
    /// A key that had left the segment came back.
    Reentered,
    /// Same key, another hash.
    Changed,
    /// The key left the segment.
    Removed,
    /// The row could not become a valid event (or Batch dropped it, and its baseline entry
    /// could not be put back: a later run had written it).
    Rejected,
    /// Runs found the row as it was rejected, and did not try it again.
    StillRejected,
    /// Batch dropped the row's event, and its baseline entry was put back as it was.
    Restored,
    /// The row's profile attributes alone changed (or were never sent): a profile update.
    Profile,
}

impl Change {
    pub const ALL: [Change; 8] = [
        Change::Added,
        Change::Reentered,
        Change::Changed,
        Change::Removed,
        Change::Rejected,
        Change::StillRejected,
        Change::Restored,
        Change::Profile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Reentered => "reentered",
            Change::Changed => "changed",
            Change::Removed => "removed",
            Change::Rejected => "rejected",
            Change::StillRejected => "still_rejected",
            Change::Restored => "restored",
            Change::Profile => "profile",
        }
    }

    pub fn parse(s: &str) -> Option<Change> {
        Change::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The kind of a row whose event was built, from the baseline entry it replaced (as the
    /// manifest keeps it: none for a new key, a tombstone for a re-entering one).
    pub fn of_event(prev: Option<bool>) -> Change {
        match prev {
            None => Change::Added,
            Some(false) => Change::Reentered,
            Some(true) => Change::Changed,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Batch's answer about a row's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    Delivered,
    Dropped,
    Pending,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Delivered => "delivered",
            Answer::Dropped => "dropped",
            Answer::Pending => "pending",
        }
    }
}

/// Batch's answer about one row of a request: `state` is the request's own (none when it is
/// no longer kept), `parts` the states of the requests it was split into (a 400 on several
/// operations splits a request in halves, and those again), `dropped` whether Batch dropped
/// this row's operation (a reject of source `batch` for the request or one of its parts).
pub fn answer(state: Option<&str>, parts: &[String], dropped: bool) -> Option<Answer> {
    if dropped {
        return Some(Answer::Dropped);
    }
    match state? {
        "pending" => Some(Answer::Pending),
        "delivered" => Some(Answer::Delivered),
        // A one-operation request Batch refused: its rows are rejects, found above; without
        // one (pruned), still what happened to the request.
        "rejected" => Some(Answer::Dropped),
        "split" if parts.iter().any(|s| s == "pending") => Some(Answer::Pending),
        "split" if parts.is_empty() => None,
        "split" => Some(Answer::Delivered),
        _ => None,
    }
}

/// Why a KEY argument names no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no key given")]
    Empty,
    #[error("{0:?} is not a key column (the primary key is {1})")]
    NotAKeyColumn(String, String),
    #[error("key column {0:?} is given twice")]
    Twice(String),
    #[error("key column {0:?} is missing (the primary key is {1}: give each as col=value)")]
    Missing(String, String),
    #[error("the primary key has {0} columns ({1}): give each as col=value")]
    Positional(usize, String),
    #[error("key column {column:?}: {message}")]
    Value { column: String, message: String },
    #[error("this sync has no primary key: its rows are named by their row hash, 32 hex digits (as `rejects` shows them)")]
    NotAHash,
    #[error("{0}")]
    Json(String),
}

/// One key column's value as the user gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    /// Plain text (`col=value` or positional): read under each reading it has.
    Plain(String),
    /// A JSON value (from a JSON object argument): its type is its own.
    Json(serde_json::Value),
}

/// A KEY argument read against the primary key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyArg {
    /// The values of the key columns, in configured order.
    Columns(Vec<KeyValue>),
    /// Without a primary key: the row hash.
    Hash(Vec<u8>),
}

/// Reads the KEY arguments: `col=value` pairs (each key column once), one value alone when
/// the primary key has one column, one JSON object of the key columns (`{"order_id":"A-17"}`,
/// as `--json` outputs print keys), or without a primary key the row hash in hex.
pub fn parse_key(args: &[String], key_names: &[String]) -> Result<KeyArg, KeyError> {
    let names = key_names.join(", ");
    if args.is_empty() || args.iter().all(|a| a.is_empty()) {
        return Err(KeyError::Empty);
    }
    if key_names.is_empty() {
        let text = args.join("");
        let text = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(o)) => match o.get("hash") {
                Some(serde_json::Value::String(h)) => h.clone(),
                _ => return Err(KeyError::NotAHash),
            },
            _ => text,
        };
        return match unhex(text.trim()) {
            Some(h) if h.len() == 16 => Ok(KeyArg::Hash(h)),
            _ => Err(KeyError::NotAHash),
        };
    }
    if let [one] = args {
        if one.trim_start().starts_with('{') {
            return json_key(one, key_names);
        }
    }
    let is_pair = |a: &str| {
        a.split_once('=')
            .is_some_and(|(col, _)| key_names.iter().any(|k| k == col))
    };
    if key_names.len() == 1 && args.len() == 1 && !is_pair(&args[0]) {
        return Ok(KeyArg::Columns(vec![KeyValue::Plain(args[0].clone())]));
    }
    let mut values: Vec<Option<KeyValue>> = vec![None; key_names.len()];
    for a in args {
        let Some((col, value)) = a.split_once('=') else {
            return Err(KeyError::Positional(key_names.len(), names));
        };
        let Some(i) = key_names.iter().position(|k| k == col) else {
            return Err(KeyError::NotAKeyColumn(col.to_string(), names));
        };
        if values[i].is_some() {
            return Err(KeyError::Twice(col.to_string()));
        }
        values[i] = Some(KeyValue::Plain(value.to_string()));
    }
    collect(values, key_names)
}

fn json_key(text: &str, key_names: &[String]) -> Result<KeyArg, KeyError> {
    let names = key_names.join(", ");
    let obj = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return Err(KeyError::Json("a JSON key must be an object".into())),
        Err(e) => return Err(KeyError::Json(format!("not a JSON object: {e}"))),
    };
    let mut values: Vec<Option<KeyValue>> = vec![None; key_names.len()];
    for (col, v) in obj {
        let Some(i) = key_names.iter().position(|k| *k == col) else {
            return Err(KeyError::NotAKeyColumn(col, names));
        };
        values[i] = Some(KeyValue::Json(v));
    }
    collect(values, key_names)
}

fn collect(values: Vec<Option<KeyValue>>, key_names: &[String]) -> Result<KeyArg, KeyError> {
    let mut out = Vec::with_capacity(values.len());
    for (v, name) in values.into_iter().zip(key_names) {
        out.push(v.ok_or_else(|| KeyError::Missing(name.clone(), key_names.join(", ")))?);
    }
    Ok(KeyArg::Columns(out))
}

fn value_error(column: &str, message: impl ToString) -> KeyError {
    KeyError::Value {
        column: column.to_string(),
        message: message.to_string(),
    }
}

/// The values one key column may hold, typed as the snapshot types them.
fn readings(v: &KeyValue, ty: Option<Type>, tz: Tz, column: &str) -> Result<Vec<Value>, KeyError> {
    let text = match v {
        KeyValue::Plain(s) => s.clone(),
        KeyValue::Json(serde_json::Value::String(s)) => s.clone(),
        KeyValue::Json(j) => {
            return match ty {
                // A declared type reads the value's text, as from an untyped source.
                Some(ty) => parse_text(&j.to_string(), ty, tz)
                    .map(|v| vec![v])
                    .map_err(|e| value_error(column, e)),
                None => from_json(j.clone())
                    .map(|v| vec![v])
                    .map_err(|e| value_error(column, e)),
            };
        }
    };
    if text.is_empty() {
        return Err(value_error(column, "a key column is never empty"));
    }
    match (ty, v) {
        (Some(ty), _) => parse_text(&text, ty, tz)
            .map(|v| vec![v])
            .map_err(|e| value_error(column, e)),
        (None, KeyValue::Json(_)) => Ok(vec![Value::Text(text)]),
        (None, KeyValue::Plain(_)) => {
            let mut out = vec![Value::Text(text.clone())];
            if let Ok(j @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) =
                serde_json::from_str::<serde_json::Value>(&text)
            {
                if let Ok(v) = from_json(j) {
                    out.push(v);
                }
            }
            Ok(out)
        }
    }
}

/// Every combination of the columns' readings, in column order.
fn product<T: Clone>(columns: Vec<Vec<T>>) -> Vec<Vec<T>> {
    columns.into_iter().fold(vec![Vec::new()], |acc, col| {
        acc.iter()
            .flat_map(|prefix| {
                col.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    p
                })
            })
            .collect()
    })
}

/// The local store's key bytes the argument may name: each key column's value encoded as the
/// snapshot encodes it (`types`: the key columns' declared types, in key order).
pub fn local_keys(
    arg: &KeyArg,
    types: &[Option<Type>],
    names: &[String],
    tz: Tz,
) -> Result<Vec<Vec<u8>>, KeyError> {
    let values = match arg {
        KeyArg::Hash(h) => return Ok(vec![h.clone()]),
        KeyArg::Columns(v) => v,
    };
    let columns = values
        .iter()
        .zip(types)
        .zip(names)
        .map(|((v, ty), name)| readings(v, *ty, tz, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(product(columns)
        .into_iter()
        .map(|vals| {
            let mut key = Vec::new();
            for v in &vals {
                encode_value(v, &mut key);
            }
            key
        })
        .collect())
}

/// The database mode's key texts the argument may name: `{"col":value,…}` in key order, each
/// value as `to_json` writes it (numbers without trailing zeros, as `trim_scale` leaves them).
pub fn text_keys(arg: &KeyArg, names: &[String]) -> Result<Vec<String>, KeyError> {
    let values = match arg {
        KeyArg::Hash(_) => return Err(KeyError::NotAHash),
        KeyArg::Columns(v) => v,
    };
    let columns: Vec<Vec<String>> = values
        .iter()
        .map(|v| match v {
            KeyValue::Json(serde_json::Value::Number(n)) => vec![json_number(&n.to_string())],
            KeyValue::Json(j) => vec![j.to_string()],
            KeyValue::Plain(s) => {
                let mut out = vec![serde_json::Value::String(s.clone()).to_string()];
                match serde_json::from_str::<serde_json::Value>(s) {
                    Ok(serde_json::Value::Number(n)) => out.push(json_number(&n.to_string())),
                    Ok(b @ serde_json::Value::Bool(_)) => out.push(b.to_string()),
                    _ => {}
                }
                out
            }
        })
        .collect();
    Ok(product(columns)
        .into_iter()
        .map(|vals| {
            let mut text = String::from("{");
            for (i, (name, v)) in names.iter().zip(&vals).enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&serde_json::Value::String(name.clone()).to_string());
                text.push(':');
                text.push_str(v);
            }
            text.push('}');
            text
        })
        .collect())
}

/// A JSON number as PostgreSQL's `to_json` writes it: an integer without a fraction or
/// exponent; otherwise the shortest text that reads back as the same double.
fn json_number(n: &str) -> String {
    if let Ok(i) = n.parse::<i64>() {
        return i.to_string();
    }
    match n.parse::<f64>() {
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        Ok(f) if f.is_finite() => format!("{f}"),
        _ => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn plain(v: &[&str]) -> KeyArg {
        KeyArg::Columns(v.iter().map(|x| KeyValue::Plain(x.to_string())).collect())
    }

    #[rstest]
    #[case::positional(&["A-17"], &["order_id"], Ok(plain(&["A-17"])))]
    #[case::pair(&["order_id=A-17"], &["order_id"], Ok(plain(&["A-17"])))]
    #[case::value_with_equals(&["a=b"], &["order_id"], Ok(plain(&["a=b"])))]
    #[case::pairs_in_any_order(&["b=2", "a=1"], &["a", "b"], Ok(plain(&["1", "2"])))]
    #[case::positional_for_two(&["1", "2"], &["a", "b"], Err(KeyError::Positional(2, "a, b".into())))]
    #[case::missing(&["a=1"], &["a", "b"], Err(KeyError::Missing("b".into(), "a, b".into())))]
    #[case::twice(&["a=1", "a=2"], &["a", "b"], Err(KeyError::Twice("a".into())))]
    #[case::not_a_column(&["a=1", "c=2"], &["a", "b"], Err(KeyError::NotAKeyColumn("c".into(), "a, b".into())))]
    #[case::empty(&[], &["a"], Err(KeyError::Empty))]
    #[case::json(&[r#"{"b":"x","a":17}"#], &["a", "b"], Ok(KeyArg::Columns(vec![KeyValue::Json(17.into()), KeyValue::Json("x".into())])))]
    #[case::json_not_a_column(&[r#"{"c":1}"#], &["a"], Err(KeyError::NotAKeyColumn("c".into(), "a".into())))]
    #[case::hash(&["000102030405060708090a0b0c0d0e0f"], &[], Ok(KeyArg::Hash((0u8..16).collect())))]
    #[case::hash_object(&[r#"{"hash":"000102030405060708090a0b0c0d0e0f"}"#], &[], Ok(KeyArg::Hash((0u8..16).collect())))]
    #[case::not_a_hash(&["A-17"], &[], Err(KeyError::NotAHash))]
    fn key_arguments_are_read_against_the_primary_key(
        #[case] args: &[&str],
        #[case] names: &[&str],
        #[case] expected: Result<KeyArg, KeyError>,
    ) {
        assert_eq!(parse_key(&s(args), &s(names)), expected);
    }

    fn encoded(values: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            encode_value(v, &mut out);
        }
        out
    }

    #[test]
    fn a_local_key_is_encoded_as_the_snapshot_encodes_it() {
        let tz = chrono_tz::UTC;
        let names = s(&["id", "at"]);
        let arg = parse_key(&s(&["id=17", "at=2024-01-02"]), &names).unwrap();
        // Declared integer and date: one reading each.
        let keys = local_keys(&arg, &[Some(Type::Integer), Some(Type::Date)], &names, tz).unwrap();
        let midnight = 1_704_153_600_000_000;
        assert_eq!(
            keys,
            vec![encoded(&[Value::Int(17), Value::Time(midnight)])]
        );
        // Undeclared: text (CSV) or a number (NDJSON, databases); the date stays text.
        let keys = local_keys(&arg, &[None, None], &names, tz).unwrap();
        assert_eq!(
            keys,
            vec![
                encoded(&[Value::Text("17".into()), Value::Text("2024-01-02".into())]),
                encoded(&[Value::Int(17), Value::Text("2024-01-02".into())]),
            ]
        );
        // A JSON argument says its own type.
        let arg = parse_key(&s(&[r#"{"id":"17","at":"x"}"#]), &names).unwrap();
        let keys = local_keys(&arg, &[None, None], &names, tz).unwrap();
        assert_eq!(
            keys,
            vec![encoded(&[
                Value::Text("17".into()),
                Value::Text("x".into())
            ])]
        );
        // A number that is integral is the integer the snapshot makes of it.
        let arg = parse_key(&s(&["17.0"]), &names[..1]).unwrap();
        let keys = local_keys(&arg, &[Some(Type::Number)], &names[..1], tz).unwrap();
        assert_eq!(keys, vec![encoded(&[Value::Int(17)])]);
    }

    #[test]
    fn a_local_key_that_does_not_fit_its_type_is_refused() {
        let names = s(&["id"]);
        let arg = parse_key(&s(&["abc"]), &names).unwrap();
        let e = local_keys(&arg, &[Some(Type::Integer)], &names, chrono_tz::UTC).unwrap_err();
        assert!(e.to_string().contains("\"id\""), "{e}");
    }

    #[test]
    fn a_text_key_is_the_json_the_database_writes() {
        let names = s(&["id", "code"]);
        let arg = parse_key(&s(&["code=a\"b", "id=17.50"]), &names).unwrap();
        assert_eq!(
            text_keys(&arg, &names).unwrap(),
            vec![
                r#"{"id":"17.50","code":"a\"b"}"#,
                r#"{"id":17.5,"code":"a\"b"}"#
            ]
        );
        let arg = parse_key(&s(&["id=3", "code=true"]), &names).unwrap();
        assert_eq!(
            text_keys(&arg, &names).unwrap(),
            vec![
                r#"{"id":"3","code":"true"}"#,
                r#"{"id":"3","code":true}"#,
                r#"{"id":3,"code":"true"}"#,
                r#"{"id":3,"code":true}"#
            ]
        );
        let arg = parse_key(&s(&[r#"{"id":1e3,"code":"x"}"#]), &names).unwrap();
        assert_eq!(
            text_keys(&arg, &names).unwrap(),
            vec![r#"{"id":1000,"code":"x"}"#]
        );
    }

    #[rstest]
    #[case::pending(Some("pending"), &[], false, Some(Answer::Pending))]
    #[case::delivered(Some("delivered"), &[], false, Some(Answer::Delivered))]
    #[case::dropped_in_a_delivered_request(Some("delivered"), &[], true, Some(Answer::Dropped))]
    #[case::refused(Some("rejected"), &[], false, Some(Answer::Dropped))]
    #[case::split_with_a_part_pending(Some("split"), &["delivered", "pending"], false, Some(Answer::Pending))]
    #[case::split_and_delivered(Some("split"), &["delivered", "split", "delivered"], false, Some(Answer::Delivered))]
    #[case::dropped_in_a_part(Some("split"), &["delivered"], true, Some(Answer::Dropped))]
    #[case::pruned(None, &[], false, None)]
    fn batchs_answer_is_read_from_the_outbox(
        #[case] state: Option<&str>,
        #[case] parts: &[&str],
        #[case] dropped: bool,
        #[case] expected: Option<Answer>,
    ) {
        assert_eq!(answer(state, &s(parts), dropped), expected);
    }

    #[test]
    fn every_change_reads_back() {
        for c in Change::ALL {
            assert_eq!(Change::parse(c.as_str()), Some(c));
        }
        assert_eq!(Change::of_event(None), Change::Added);
        assert_eq!(Change::of_event(Some(false)), Change::Reentered);
        assert_eq!(Change::of_event(Some(true)), Change::Changed);
    }
}
