//! One row's cells → its values, back to back, written straight into a byte buffer: its payload,
//! its hash input (the event's columns, which come first) and the bytes its row key is cut from.
//! The snapshot's hot loop, without a `Value` (and its `String`) per cell. Also here: the
//! profile hash of a row (`ProfileHash`) and recipe 1's row hash (`RecipeOne`), both read from
//! the value spans.
//!
//! Invariants:
//! - Byte for byte what the reference path gives (`value::coerce` per cell, then
//!   `encode::encode_row` and `encode::row_key`): text, and text declared integer, number, bool
//!   or date, take fast paths that the tests check against it; every other cell takes the
//!   reference path itself.
//! - Not a byte of the recipe here: every byte is written by `core::encode`'s writers, so a new
//!   recipe changes that file and not this one. What is decided here is only which value a
//!   cell holds.
//! - A cell that does not fit its type is encoded as null, and the first such column is the
//!   row's reject, as the reference typing does (`type_row`, in the snapshot's tests).
//! - The cells are read, not consumed, so a source may reuse their buffers for the next row.

use crate::core::encode::{
    encode_value, hash_profile, hash_v1, profile_key, put_bool, put_int, put_key_part, put_name,
    put_null, put_text, put_time, RowHash,
};
use crate::core::mapping::{ColumnPlan, Reject};
use crate::core::value::{coerce, parse_text, Cell, Type, TypeError, Value};
use chrono_tz::Tz;

pub(super) struct RowEncoder {
    columns: Vec<String>,
    types: Vec<Option<Type>>,
    key: Vec<usize>,
    tz: Tz,
    /// Where column `i`'s value sits in the last row's hash input: `spans[i]`, from its start.
    spans: Vec<(u32, u32)>,
    /// Columns `0..hashed` are the row hash's (`ColumnPlan::hashed`).
    hashed: usize,
}

/// Recipe 1's row hash of a row from its values (DESIGN.md "Hash recipe upgrades"): the key
/// of a sync without a primary key (a key never changes), and the hash a store written under
/// recipe 1 holds, during the run that upgrades it.
#[derive(Clone, Default)]
pub(super) struct RecipeOne {
    headers: Vec<Vec<u8>>,
}

impl RecipeOne {
    /// The plan's hashed columns' name headers.
    pub(super) fn new(plan: &ColumnPlan) -> RecipeOne {
        RecipeOne {
            headers: plan.columns[..plan.hashed]
                .iter()
                .map(|name| {
                    let mut h = Vec::new();
                    put_name(name, &mut h);
                    h
                })
                .collect(),
        }
    }

    /// `spans`: where each column's value sits in `values`.
    pub(super) fn hash(&self, values: &[u8], spans: &[(u32, u32)]) -> RowHash {
        hash_v1(
            self.headers
                .iter()
                .zip(spans)
                .map(|(h, &(a, b))| (&h[..], &values[a as usize..b as usize])),
        )
    }
}

/// What the profile hash reads of a row: its key (of the attributes' names) and the attributes'
/// columns, in the attributes' name order. Empty when the sync maps no profile attributes.
#[derive(Clone, Default)]
pub(super) struct ProfileHash {
    key: [u8; 32],
    columns: Vec<usize>,
    scratch: Vec<u8>,
    spans: Vec<(u32, u32)>,
}

impl ProfileHash {
    pub(super) fn new(plan: &ColumnPlan) -> ProfileHash {
        ProfileHash {
            key: profile_key(plan.profile.iter().map(|a| a.name.as_str())),
            columns: plan.profile.iter().map(|a| a.column).collect(),
            scratch: Vec::new(),
            spans: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The profile hash of a row: its hash `input` and where each column's value sits in it.
    pub(super) fn of(&mut self, input: &[u8], spans: &[(u32, u32)]) -> RowHash {
        let values = self.columns.iter().map(|&c| {
            let (a, b) = spans[c];
            &input[a as usize..b as usize]
        });
        hash_profile(&self.key, values, &mut self.scratch)
    }

    /// The profile hash of a row from its payload (its values back to back, in plan order);
    /// `None` when the payload cannot be read (a corrupt record).
    pub(super) fn of_payload(&mut self, payload: &[u8]) -> Option<RowHash> {
        let last = *self.columns.iter().max()?;
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        let mut d = crate::core::encode::Decoder::new(payload);
        for _ in 0..=last {
            let r = d.skip().ok()?;
            spans.push((r.start as u32, r.end as u32));
        }
        let hash = self.of(payload, &spans);
        self.spans = spans;
        Some(hash)
    }
}

impl RowEncoder {
    pub(super) fn new(plan: &ColumnPlan, tz: Tz) -> RowEncoder {
        RowEncoder {
            columns: plan.columns.clone(),
            types: plan.types.clone(),
            key: plan.key.clone(),
            tz,
            spans: Vec::with_capacity(plan.columns.len()),
            hashed: plan.hashed,
        }
    }

    /// The length of the last row's row-hash input: its first `hashed` columns (profile
    /// attributes' own columns follow them, outside the row hash).
    pub(super) fn hashed_len(&self) -> u32 {
        self.spans[self.hashed - 1].1
    }

    /// Appends the row's values to `out`, per column in plan order (`core::encode`): its hash
    /// input (the first `hashed` columns') and its payload (all of them). Returns the first
    /// column whose cell does not fit its type (encoded as null).
    pub(super) fn row(&mut self, cells: &mut [Cell], out: &mut Vec<u8>) -> Option<Reject> {
        let base = out.len();
        self.spans.clear();
        let mut first = None;
        for (i, cell) in cells.iter_mut().enumerate() {
            let at = out.len();
            if let Err(e) = encode_cell(cell, self.types[i], self.tz, out) {
                out.truncate(at);
                put_null(out);
                if first.is_none() {
                    first = Some(Reject::new(Some(&self.columns[i]), "type", e.to_string()));
                }
            }
            self.spans
                .push(((at - base) as u32, (out.len() - base) as u32));
        }
        first
    }

    /// The last row's values in its hash input, from the input's start.
    pub(super) fn spans(&self) -> &[(u32, u32)] {
        &self.spans
    }

    /// Appends the row key, cut from the last row's hash input at `row_at` in `buf`, or says
    /// which key column is null.
    pub(super) fn key(&self, buf: &mut Vec<u8>, row_at: usize) -> Result<(), Reject> {
        for &i in &self.key {
            let (from, to) = self.spans[i];
            if !put_key_part(buf, row_at + from as usize..row_at + to as usize) {
                return Err(Reject::new(
                    Some(&self.columns[i]),
                    "key_null",
                    "a primary-key column is null",
                ));
            }
        }
        Ok(())
    }
}

/// Appends one cell's encoding, as `encode_value(&coerce(cell, ty, tz)?)` would.
fn encode_cell(
    cell: &mut Cell,
    ty: Option<Type>,
    tz: Tz,
    out: &mut Vec<u8>,
) -> Result<(), TypeError> {
    match cell {
        Cell::Text(s) if s.is_empty() => put_null(out),
        Cell::Text(s) => match ty {
            None | Some(Type::String) => put_text(s, out),
            Some(Type::Date) => match rfc3339_utc_micros(s) {
                Some(t) => put_time(t, out),
                None => encode_value(&parse_text(s, Type::Date, tz)?, out),
            },
            Some(Type::Bool) => match s.as_str() {
                "true" => put_bool(true, out),
                "false" => put_bool(false, out),
                _ => encode_value(&parse_text(s, Type::Bool, tz)?, out),
            },
            Some(Type::Integer) => match plain_int(s.as_bytes()) {
                Some(i) => put_int(i, out),
                None => encode_value(&parse_text(s, Type::Integer, tz)?, out),
            },
            Some(Type::Number) => match plain_decimal(s.as_bytes()) {
                Some(v) => encode_value(&v, out),
                None => encode_value(&parse_text(s, Type::Number, tz)?, out),
            },
            // URLs, arrays and JSON are rare.
            Some(ty) => encode_value(&parse_text(s, ty, tz)?, out),
        },
        Cell::Typed(v) if ty.is_none() => encode_value(v, out),
        other => {
            let cell = std::mem::replace(other, Cell::Text(String::new()));
            encode_value(&coerce(cell, ty, tz)?, out)
        }
    }
    Ok(())
}

/// `-?[0-9]{1,18}` → its value, as `str::parse::<i64>` gives it (18 digits cannot overflow);
/// `None` for any other spelling (signs, spaces, longer), which takes the reference parser.
fn plain_int(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let n = digits.iter().try_fold(0i64, |n, &c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })?;
    Some(if neg { -n } else { n })
}

/// A plain integer, or a plain fraction (`value::plain_fraction`) → the value `parse_number`
/// gives. `None` for anything else, which takes the reference parser.
fn plain_decimal(b: &[u8]) -> Option<Value> {
    if let Some(i) = plain_int(b) {
        return Some(Value::Int(i));
    }
    Value::number(crate::core::value::plain_fraction(b)?).ok()
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` → microseconds since the epoch, as chrono's RFC 3339
/// parser gives them; `None` for any other spelling (offsets, lowercase, leap seconds, spaces),
/// which then takes the reference parser.
fn rfc3339_utc_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let micros = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let nanos = num(20, 20 + digits.len())? * 10i64.pow(9 - digits.len() as u32);
            nanos / 1000
        }
        _ => return None,
    };
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if year == 0 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::encode::{encode_row, row_key};
    use crate::core::mapping::MappingSpec;
    use crate::core::value::parse_time;
    use proptest::prelude::*;

    const UTC: Tz = chrono_tz::UTC;

    fn reference(cell: Cell, ty: Option<Type>) -> Result<Vec<u8>, TypeError> {
        let mut out = Vec::new();
        encode_value(&coerce(cell, ty, UTC)?, &mut out);
        Ok(out)
    }

    fn fast(mut cell: Cell, ty: Option<Type>) -> Result<Vec<u8>, TypeError> {
        let mut out = Vec::new();
        encode_cell(&mut cell, ty, UTC, &mut out).map(|()| out)
    }

    const TYPES: [Option<Type>; 9] = [
        None,
        Some(Type::String),
        Some(Type::Number),
        Some(Type::Integer),
        Some(Type::Bool),
        Some(Type::Date),
        Some(Type::Url),
        Some(Type::StringArray),
        Some(Type::Json),
    ];

    #[test]
    fn known_spellings_encode_as_the_reference_path_does() {
        let texts = [
            "",
            "x",
            "42",
            "-7",
            "42.0",
            "3.25",
            " 12 ",
            "1e3",
            "NaN",
            "true",
            "false",
            "TRUE",
            " yes",
            "0",
            "1",
            "2026-11-27T10:30:00Z",
            "2026-11-27T10:30:00.5Z",
            "2026-11-27T10:30:00.123456789Z",
            "2026-11-27T10:30:00.1234567891Z",
            "2026-11-27T10:30:60Z",
            "2026-02-29T00:00:00Z",
            "2024-02-29T23:59:59Z",
            "1900-02-29T00:00:00Z",
            "2000-02-29T00:00:00Z",
            "1969-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-13-01T00:00:00Z",
            "2026-11-27t10:30:00z",
            "2026-11-27T10:30:00+01:00",
            "2026-11-27 10:30:00",
            "2026-11-27",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:30:00.Z",
            "https://example.com/a",
            "[\"a\",\"b\"]",
            "{\"a\":1}",
            "déjà vu, \"quoted\"",
            "-0",
            "-0.0",
            "0.10",
            "007",
            "007.50",
            "-",
            "-.5",
            "1.",
            ".5",
            "+5",
            "109.33",
            "-109.33",
            "123456789012345678",
            "1234567890123456789",
            "-9223372036854775808",
            "9223372036854775808",
            "12345678901234.5",
            "1234567890123456.5",
            "0.000000000000001",
            "1.2.3",
            "1-2",
        ];
        for t in texts {
            for ty in TYPES {
                let cell = Cell::Text(t.to_string());
                assert_eq!(
                    fast(cell.clone(), ty),
                    reference(cell, ty),
                    "{t:?} as {ty:?}"
                );
            }
        }
        let others = [
            Cell::Invalid("invalid UTF-8 at byte 3".into()),
            Cell::Typed(Value::Int(1)),
            Cell::Typed(Value::Text("7".into())),
            Cell::Typed(Value::Float(2.5)),
            Cell::Typed(Value::Bool(true)),
            Cell::Typed(Value::Null),
            Cell::Typed(Value::StrArray(vec!["a".into()])),
        ];
        for cell in others {
            for ty in TYPES {
                assert_eq!(
                    fast(cell.clone(), ty),
                    reference(cell.clone(), ty),
                    "{cell:?} as {ty:?}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn any_utc_time_parses_as_chrono_does(
            y in 1i64..=9999, mo in 1i64..=12, d in 1i64..=31,
            h in 0i64..=23, mi in 0i64..=59, s in 0i64..=59, frac in "(\\.[0-9]{1,9})?",
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z");
            let fast = rfc3339_utc_micros(&text);
            let chrono = parse_time(&text, UTC);
            // The fast path may decline, never disagree.
            if let Some(t) = fast {
                prop_assert_eq!(Some(t), chrono, "{}", text);
            }
            prop_assert_eq!(fast.is_some(), chrono.is_some(), "{}", text);
        }

        #[test]
        fn any_number_encodes_as_the_reference_path_does(
            text in "[-+]?[0-9]{0,20}(\\.[0-9]{0,20})?", number in any::<bool>(),
        ) {
            let ty = Some(if number { Type::Number } else { Type::Integer });
            let cell = Cell::Text(text);
            prop_assert_eq!(fast(cell.clone(), ty), reference(cell, ty));
        }

        #[test]
        fn any_text_encodes_as_the_reference_path_does(text in ".{0,24}", pick in 0usize..9) {
            let cell = Cell::Text(text);
            prop_assert_eq!(fast(cell.clone(), TYPES[pick]), reference(cell, TYPES[pick]));
        }
    }

    #[test]
    fn payload_and_key_are_cut_from_the_hash_input() {
        let plan = ColumnPlan::new(MappingSpec {
            primary_key: vec!["id".into(), "email".into()],
            custom_id: "email".into(),
            event: Some("e".into()),
            attributes: vec!["amount".into()],
            types: [("id".to_string(), Type::Integer)].into(),
            ..Default::default()
        })
        .unwrap();
        // plan order: amount, email, id
        let mut enc = RowEncoder::new(&plan, UTC);
        let mut cells = vec![
            Cell::Text("1.5".into()),
            Cell::Text("a@x".into()),
            Cell::Text("7".into()),
        ];
        let mut buf = b"earlier rows".to_vec();
        let at = buf.len();
        assert!(enc.row(&mut cells, &mut buf).is_none());
        let key_at = buf.len();
        enc.key(&mut buf, at).unwrap();
        let payload: Vec<u8> = enc
            .spans()
            .iter()
            .flat_map(|&(a, b)| buf[at + a as usize..at + b as usize].to_vec())
            .collect();

        let values = [
            Value::Text("1.5".into()),
            Value::Text("a@x".into()),
            Value::Int(7),
        ];
        let mut scratch = Vec::new();
        let (expected, hash) = encode_row(&plan.columns, &values, &mut scratch);
        assert_eq!(&buf[at..key_at], &scratch[..]);
        assert_eq!(payload, expected);
        let key = row_key(&plan.key, &values, hash).unwrap();
        assert_eq!(&buf[key_at..], &key[..]);
    }
}
