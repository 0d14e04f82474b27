//! Typed values and the rules that turn what a source yields into them.
//!
//! Invariants:
//! - A `Value` is what the row hash and the event are computed from; two sources that yield the
//!   same logical row yield equal `Value`s (an NDJSON `42`, a CSV `"42"` declared `number` and a
//!   PostgreSQL `int4` 42 are all `Value::Int(42)`).
//! - Floats are always finite: NaN and infinities are type errors, never values.
//! - Times are UTC instants with microsecond precision.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::fmt;

/// A typed cell value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// Finite, and never integral within `i64` range (those become `Int`): see [`Value::number`].
    Float(f64),
    Text(String),
    /// Microseconds since the Unix epoch, UTC.
    Time(i64),
    Url(String),
    StrArray(Vec<String>),
    /// An object or an array that is not an array of strings (NDJSON, json/jsonb columns).
    Json(serde_json::Value),
}

impl Value {
    /// The one way to build a number, so that `42`, `42.0` and `"42"` read as a number are equal.
    pub fn number(x: f64) -> Result<Value, TypeError> {
        if !x.is_finite() {
            return Err(TypeError::new(
                Type::Number,
                "a finite number",
                &x.to_string(),
            ));
        }
        if x.fract() == 0.0 && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&x) {
            Ok(Value::Int(x as i64))
        } else {
            Ok(Value::Float(x))
        }
    }

    /// The value as text for places that need a string (custom id, event name from a column).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Text(s) | Value::Url(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            _ => None,
        }
    }
}

/// The types a column can be declared as in `[mapping] types`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    String,
    Number,
    Integer,
    Bool,
    Date,
    Url,
    StringArray,
    Json,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Type::String => "string",
            Type::Number => "number",
            Type::Integer => "integer",
            Type::Bool => "bool",
            Type::Date => "date",
            Type::Url => "url",
            Type::StringArray => "string_array",
            Type::Json => "json",
        };
        f.write_str(s)
    }
}

/// A value that does not fit its type. Row-level: it follows `on_bad_row`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TypeError {
    pub ty: Type,
    pub expected: &'static str,
    pub found: String,
}

impl TypeError {
    fn describe(&self) -> String {
        if self.expected.is_empty() {
            self.found.clone()
        } else {
            format!(
                "expected {} ({}), found {:?}",
                self.expected, self.ty, self.found
            )
        }
    }

    pub fn new(ty: Type, expected: &'static str, found: &str) -> TypeError {
        let mut found = found.to_string();
        if found.chars().count() > 60 {
            found = found.chars().take(57).collect::<String>() + "...";
        }
        TypeError {
            ty,
            expected,
            found,
        }
    }
}

/// What a source yields for one field, before typing.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Untyped text (CSV). Empty text is null.
    Text(String),
    /// Natively typed (NDJSON, databases).
    Typed(Value),
    /// The source could not read this field (invalid UTF-8, a numeric that does not fit).
    Invalid(String),
}

/// Types a cell: by its declared type when there is one, else by what the source says it is.
pub fn coerce(cell: Cell, declared: Option<Type>, tz: Tz) -> Result<Value, TypeError> {
    match (cell, declared) {
        (Cell::Invalid(why), ty) => Err(TypeError {
            ty: ty.unwrap_or(Type::String),
            expected: "",
            found: why,
        }),
        (Cell::Text(s), _) if s.is_empty() => Ok(Value::Null),
        (Cell::Text(s), None | Some(Type::String)) => Ok(Value::Text(s)),
        (Cell::Text(s), Some(ty)) => parse_text(&s, ty, tz),
        (Cell::Typed(v), None) => Ok(v),
        (Cell::Typed(v), Some(ty)) => convert(v, ty, tz),
    }
}

/// Parses text under a declared type, with the spellings DESIGN.md accepts.
pub fn parse_text(s: &str, ty: Type, tz: Tz) -> Result<Value, TypeError> {
    match ty {
        Type::String => Ok(Value::Text(s.to_string())),
        Type::Number => parse_number(s).ok_or_else(|| TypeError::new(ty, "a finite number", s)),
        Type::Integer => match parse_number(s) {
            Some(Value::Int(i)) => Ok(Value::Int(i)),
            _ => Err(TypeError::new(ty, "an integer", s)),
        },
        Type::Bool => parse_bool(s)
            .map(Value::Bool)
            .ok_or_else(|| TypeError::new(ty, "a bool (true/false/1/0/yes/no/t/f)", s)),
        Type::Date => parse_time(s, tz).map(Value::Time).ok_or_else(|| {
            TypeError::new(ty, "an RFC 3339 time, YYYY-MM-DD HH:MM:SS or YYYY-MM-DD", s)
        }),
        Type::Url => Ok(Value::Url(s.to_string())),
        Type::StringArray => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Array(items)) => string_array(items)
                .map(Value::StrArray)
                .ok_or_else(|| TypeError::new(ty, "a JSON array of strings", s)),
            _ => Err(TypeError::new(ty, "a JSON array of strings", s)),
        },
        Type::Json => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(v) => convert(from_json(v)?, Type::Json, tz),
            Err(_) => Err(TypeError::new(ty, "a JSON object or array", s)),
        },
    }
}

fn convert(v: Value, ty: Type, tz: Tz) -> Result<Value, TypeError> {
    let mismatch = |v: &Value, expected| Err(TypeError::new(ty, expected, &render(v)));
    match (ty, v) {
        (_, Value::Null) => Ok(Value::Null),
        (Type::String, Value::Text(s)) => Ok(Value::Text(s)),
        (Type::String, Value::Url(s)) => Ok(Value::Text(s)),
        (Type::String, Value::Int(i)) => Ok(Value::Text(i.to_string())),
        (Type::String, Value::Float(f)) => Ok(Value::Text(f.to_string())),
        (Type::String, Value::Bool(b)) => Ok(Value::Text(b.to_string())),
        (Type::String, Value::Time(t)) => Ok(Value::Text(format_time(t))),
        (Type::Number, v @ (Value::Int(_) | Value::Float(_))) => Ok(v),
        (Type::Integer, Value::Int(i)) => Ok(Value::Int(i)),
        (Type::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (Type::Bool, Value::Int(0)) => Ok(Value::Bool(false)),
        (Type::Bool, Value::Int(1)) => Ok(Value::Bool(true)),
        (Type::Date, Value::Time(t)) => Ok(Value::Time(t)),
        (Type::Url, Value::Url(s) | Value::Text(s)) => Ok(Value::Url(s)),
        (Type::StringArray, Value::StrArray(a)) => Ok(Value::StrArray(a)),
        (Type::Json, v @ (Value::Json(_) | Value::StrArray(_))) => Ok(v),
        (ty, Value::Text(s)) => parse_text(&s, ty, tz),
        (Type::Number, v) => mismatch(&v, "a number"),
        (Type::Integer, v) => mismatch(&v, "an integer"),
        (Type::Bool, v) => mismatch(&v, "a bool"),
        (Type::Date, v) => mismatch(&v, "a time"),
        (Type::Url, v) => mismatch(&v, "a URL string"),
        (Type::StringArray, v) => mismatch(&v, "an array of strings"),
        (Type::Json, v) => mismatch(&v, "a JSON object or array"),
        (Type::String, v) => mismatch(&v, "a string"),
    }
}

/// A short human rendering of a value for error messages.
pub fn render(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) | Value::Url(s) => s.clone(),
        Value::Time(t) => format_time(*t),
        Value::StrArray(a) => format!("{a:?}"),
        Value::Json(j) => j.to_string(),
    }
}

/// The JSON form of a value, as an event carries it: times as RFC 3339 text and URLs as text
/// (an event's attribute key says which they are: `date(…)`, `url(…)`).
pub fn json_of(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Text(s) | Value::Url(s) => J::String(s.clone()),
        Value::Time(t) => J::String(format_time(*t)),
        Value::StrArray(a) => J::Array(a.iter().cloned().map(J::String).collect()),
        Value::Json(j) => j.clone(),
    }
}

/// Types a JSON value by its JSON type (NDJSON).
pub fn from_json(v: serde_json::Value) -> Result<Value, TypeError> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::number(n.as_f64().unwrap_or(f64::NAN))
                .map_err(|_| TypeError::new(Type::Number, "a finite number", &n.to_string()))?,
        },
        J::String(s) => Value::Text(s),
        J::Array(items) => {
            // An empty array is an empty string array, as CSV's "[]" and an empty text[] are.
            if items.iter().all(|i| i.is_string()) {
                Value::StrArray(string_array(items).unwrap_or_default())
            } else {
                Value::Json(J::Array(items))
            }
        }
        obj @ J::Object(_) => Value::Json(obj),
    })
}

fn string_array(items: Vec<serde_json::Value>) -> Option<Vec<String>> {
    items
        .into_iter()
        .map(|i| match i {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// `-?[0-9]+\.[0-9]+` of at most 15 digits in all → its value as `str::parse::<f64>` gives
/// it, computed from the digits: they make an integer `m < 10^15 < 2^53` over `10^k`
/// (k ≤ 14), both exact in an f64, so one division rounds correctly (Clinger's fast path, which
/// the standard parser takes too). `None` for any other spelling, which takes the caller's
/// full parser. Typed CSV and MySQL's `DECIMAL` text read most numbers through it.
#[inline]
pub fn plain_fraction(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 15] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
    ];
    let (negative, rest) = match b {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, b),
    };
    let dot = rest.iter().position(|&c| c == b'.')?;
    let (int, frac) = (&rest[..dot], &rest[dot + 1..]);
    if int.is_empty() || frac.is_empty() || int.len() + frac.len() > 15 {
        return None;
    }
    let m = int.iter().chain(frac).try_fold(0u64, |m, &c| {
        c.is_ascii_digit().then(|| m * 10 + u64::from(c - b'0'))
    })?;
    let x = m as f64 / POW10[frac.len()];
    Some(if negative { -x } else { x })
}

pub fn parse_number(s: &str) -> Option<Value> {
    let t = s.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::Int(i));
    }
    // Rust accepts "inf", "NaN" and "infinity": those are not numbers here.
    let looks_numeric = t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !looks_numeric || t.is_empty() {
        return None;
    }
    t.parse::<f64>().ok().and_then(|x| Value::number(x).ok())
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "t" => Some(true),
        "false" | "0" | "no" | "f" => Some(false),
        _ => None,
    }
}

/// RFC 3339 with `Z` or an offset; naive `YYYY-MM-DD[ T]HH:MM:SS[.fraction]` read in `tz`;
/// or a date `YYYY-MM-DD` at midnight in `tz`. Returns microseconds since the epoch.
pub fn parse_time(s: &str, tz: Tz) -> Option<i64> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    let naive = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    naive_to_micros(naive, tz)
}

/// Reads a naive wall-clock time in `tz`. In a DST gap there is no such instant: an error.
/// In a DST overlap the earlier instant is taken (documented in the README).
pub fn naive_to_micros(naive: NaiveDateTime, tz: Tz) -> Option<i64> {
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|dt| dt.with_timezone(&Utc).timestamp_micros())
}

/// RFC 3339 in UTC, as Batch wants it: seconds, with a fraction only when there is one.
/// Years 0 to 9999 are written digit by digit (every event's time goes through here); others,
/// which chrono writes with a sign, by chrono's `format`.
pub fn format_time(micros: i64) -> String {
    let Some(dt) = DateTime::<Utc>::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let whole = micros % 1_000_000 == 0;
    if !(0..=9999).contains(&dt.year()) {
        return if whole {
            dt.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        } else {
            dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
        };
    }
    let mut b = *b"0000-00-00T00:00:00.000000Z";
    let mut digits = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    digits(0, 4, dt.year() as u32);
    digits(5, 2, dt.month());
    digits(8, 2, dt.day());
    digits(11, 2, dt.hour());
    digits(14, 2, dt.minute());
    digits(17, 2, dt.second());
    let text = if whole {
        b[19] = b'Z';
        &b[..20]
    } else {
        digits(20, 6, dt.nanosecond() / 1000);
        &b[..]
    };
    String::from_utf8(text.to_vec()).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use rstest::rstest;

    proptest::proptest! {
        /// The digit-by-digit writing is chrono's `format`, for every instant it can hold.
        #[test]
        fn times_are_written_as_chrono_writes_them(
            micros in proptest::prop_oneof![
                proptest::num::i64::ANY,
                -62_167_219_200_000_000i64..253_402_300_800_000_000,
                (-62_167_219_200i64..253_402_300_800).prop_map(|s| s * 1_000_000),
            ]
        ) {
            let chrono = match DateTime::<Utc>::from_timestamp_micros(micros) {
                Some(dt) if micros % 1_000_000 == 0 => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                None => micros.to_string(),
            };
            proptest::prop_assert_eq!(format_time(micros), chrono);
        }
    }

    const UTC: Tz = chrono_tz::UTC;

    #[rstest]
    #[case("42", Value::Int(42))]
    #[case("42.0", Value::Int(42))]
    #[case("4.2e1", Value::Int(42))]
    #[case("-0.5", Value::Float(-0.5))]
    #[case("1e400", Value::Null)]
    #[case("NaN", Value::Null)]
    #[case("inf", Value::Null)]
    #[case("-Infinity", Value::Null)]
    #[case("12abc", Value::Null)]
    fn numbers_parse_in_decimal_or_exponent_and_never_to_non_finite(
        #[case] text: &str,
        #[case] expected: Value,
    ) {
        let got = parse_text(text, Type::Number, UTC).unwrap_or(Value::Null);
        assert_eq!(got, expected);
    }

    #[rstest]
    #[case("true", Some(true))]
    #[case("YES", Some(true))]
    #[case("t", Some(true))]
    #[case("1", Some(true))]
    #[case("F", Some(false))]
    #[case("no", Some(false))]
    #[case("0", Some(false))]
    #[case("2", None)]
    #[case("oui", None)]
    fn bools_accept_the_documented_spellings(#[case] text: &str, #[case] expected: Option<bool>) {
        assert_eq!(parse_bool(text), expected);
    }

    #[rstest]
    #[case("2026-11-27T10:30:00Z", UTC, "2026-11-27T10:30:00Z")]
    #[case("2026-11-27T11:30:00+01:00", UTC, "2026-11-27T10:30:00Z")]
    #[case("2026-11-27 10:30:00", UTC, "2026-11-27T10:30:00Z")]
    #[case("2026-11-27T10:30:00.25", UTC, "2026-11-27T10:30:00.250000Z")]
    #[case("2026-11-27", UTC, "2026-11-27T00:00:00Z")]
    #[case(
        "2026-11-27 10:30:00",
        chrono_tz::Europe::Paris,
        "2026-11-27T09:30:00Z"
    )]
    #[case("2026-07-01", chrono_tz::America::New_York, "2026-07-01T04:00:00Z")]
    fn times_are_read_as_documented(#[case] text: &str, #[case] tz: Tz, #[case] utc: &str) {
        assert_eq!(format_time(parse_time(text, tz).unwrap()), utc);
    }

    #[test]
    fn a_time_in_a_dst_gap_is_an_error() {
        // 2026-03-29 02:30 does not exist in Paris.
        assert_eq!(
            parse_time("2026-03-29 02:30:00", chrono_tz::Europe::Paris),
            None
        );
    }

    #[test]
    fn empty_csv_text_is_null_whatever_the_type() {
        assert_eq!(
            coerce(Cell::Text(String::new()), Some(Type::Number), UTC),
            Ok(Value::Null)
        );
        assert_eq!(
            coerce(Cell::Text(String::new()), None, UTC),
            Ok(Value::Null)
        );
    }

    #[test]
    fn tinyint_one_and_zero_read_as_bool_when_declared() {
        assert_eq!(
            coerce(Cell::Typed(Value::Int(1)), Some(Type::Bool), UTC),
            Ok(Value::Bool(true))
        );
        assert!(coerce(Cell::Typed(Value::Int(2)), Some(Type::Bool), UTC).is_err());
    }

    #[test]
    fn json_numbers_that_are_integral_equal_their_integer() {
        assert_eq!(from_json(serde_json::json!(42.0)).unwrap(), Value::Int(42));
        assert_eq!(from_json(serde_json::json!(42)).unwrap(), Value::Int(42));
    }
}
