//! The typing rules the database sources share: how a SQL value becomes a [`Cell`], so that
//! the same logical row hashes the same from PostgreSQL, MySQL, SQLite, NDJSON and typed CSV.
//!
//! Invariants:
//! - Numbers go through [`Value::number`]: an integral value is `Int` whatever its SQL type.
//! - A decimal (`numeric`, `DECIMAL`) becomes a number only when an `f64` holds it exactly
//!   (its shortest `f64` rendering is the same decimal number); otherwise the cell is invalid
//!   and the row a reject naming the column. `0.1` fits (it *is* `0.1` to a reader of the
//!   f64); `12345678901234567890.123` does not.
//! - A 32-bit float is read through its shortest decimal rendering, so a `real` 0.1 is the
//!   number 0.1, as the database prints it, not 0.100000001490116…
//! - Dates are midnight and naive timestamps are wall-clock times, both read in the configured
//!   timezone; times with a zone are instants. A wall-clock time that does not exist in the
//!   timezone (a DST gap) is invalid.
//! - A value of a type batchsync does not read is invalid, with the SQL type and the cast that
//!   fixes it in the message: it never silently becomes text.

use crate::core::value::{from_json, naive_to_micros, plain_fraction, Cell, Value};
use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;

/// A decimal's text (`-123.4500`, exponent notation accepted) as a cell.
pub fn decimal(text: &str) -> Cell {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Cell::Typed(Value::Int(i));
    }
    // MySQL sends every `DECIMAL` as text: most are computed from their digits, without the
    // checked path's allocations and float formatting. Fifteen significant digits survive
    // the round trip through an f64 (`f64::DIGITS`), so that path's exactness check would
    // pass; the tests compare the two.
    if let Some(x) = plain_fraction(t.as_bytes()) {
        return number(x);
    }
    decimal_checked(t)
}

/// [`decimal`] for any spelling: exact when an f64 holds the decimal (its shortest rendering
/// is the same decimal number), else invalid.
fn decimal_checked(t: &str) -> Cell {
    let Some(exact) = canonical(t) else {
        return Cell::Invalid(format!("numeric {t} is not a finite number"));
    };
    let x: f64 = match t.parse() {
        Ok(x) => x,
        Err(_) => return Cell::Invalid(format!("numeric {t} is not a finite number")),
    };
    if !x.is_finite() || canonical(&format!("{x:e}")).as_ref() != Some(&exact) {
        return Cell::Invalid(format!(
            "numeric {t} does not fit a 64-bit float exactly; cast it in the query, to a float to accept the rounding or to text"
        ));
    }
    number(x)
}

/// A decimal number as (negative, significant digits, exponent): `digits × 10^exponent`, with
/// no leading or trailing zero in `digits`; zero is `(false, "", 0)`. `None` if not a decimal.
fn canonical(s: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let all: String = int.chars().chain(frac.chars()).collect();
    let mut exp = exp.checked_sub(frac.len() as i64)?;
    let trimmed = all.trim_start_matches('0');
    let digits = trimmed.trim_end_matches('0');
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    exp = exp.checked_add((trimmed.len() - digits.len()) as i64)?;
    Some((negative, digits.to_string(), exp))
}

/// A 64-bit float: a number, or invalid when NaN or infinite.
pub fn float8(x: f64) -> Cell {
    if x.is_finite() {
        number(x)
    } else {
        Cell::Invalid(format!("float {x} is not a finite number"))
    }
}

/// A 32-bit float, read through its shortest decimal rendering (see the module doc).
pub fn float4(x: f32) -> Cell {
    if !x.is_finite() {
        return Cell::Invalid(format!("float {x} is not a finite number"));
    }
    match format!("{x:e}").parse::<f64>() {
        Ok(wide) => float8(wide),
        Err(_) => float8(x as f64),
    }
}

fn number(x: f64) -> Cell {
    match Value::number(x) {
        Ok(v) => Cell::Typed(v),
        Err(e) => Cell::Invalid(e.to_string()),
    }
}

/// A date: midnight in `tz`.
pub fn date(d: NaiveDate, tz: Tz) -> Cell {
    naive(d.and_hms_opt(0, 0, 0).expect("midnight exists"), tz)
}

/// A naive timestamp, read as a wall-clock time in `tz`.
pub fn naive(t: NaiveDateTime, tz: Tz) -> Cell {
    match naive_to_micros(t, tz) {
        Some(us) => Cell::Typed(Value::Time(us)),
        None => Cell::Invalid(format!(
            "{t} does not exist in time zone {tz} (a daylight-saving gap)"
        )),
    }
}

/// Text from bytes the database says are text (or binary bytes, which must be UTF-8).
pub fn text(bytes: &[u8], sql_type: &str) -> Cell {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cell::Typed(Value::Text(s.to_string())),
        Err(e) => Cell::Invalid(format!(
            "{sql_type} value is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )),
    }
}

/// [`text`] of bytes the driver already allocated: kept as they are, not copied.
pub fn text_owned(bytes: Vec<u8>, sql_type: &str) -> Cell {
    match String::from_utf8(bytes) {
        Ok(s) => Cell::Typed(Value::Text(s)),
        Err(e) => text(e.as_bytes(), sql_type),
    }
}

/// [`text`] into `slot`, in the buffer of the text it holds, if any, unless that buffer is
/// far larger than the text (once a long value's, it is not kept for short ones: a batch's
/// cells would otherwise hold every column's longest text for the rest of the read).
pub fn text_into(bytes: &[u8], sql_type: &str, slot: &mut Cell) {
    match (std::str::from_utf8(bytes), slot) {
        (Ok(s), Cell::Typed(Value::Text(t))) if t.capacity() <= 4096.max(2 * s.len()) => {
            t.clear();
            t.push_str(s);
        }
        (_, slot) => *slot = text(bytes, sql_type),
    }
}

/// A JSON document: objects and arrays as they are, scalars as their JSON type (as NDJSON).
pub fn json(v: serde_json::Value) -> Cell {
    match from_json(v) {
        Ok(v) => Cell::Typed(v),
        Err(e) => Cell::Invalid(e.to_string()),
    }
}

/// A JSON document held as text.
pub fn json_text(bytes: &[u8]) -> Cell {
    match serde_json::from_slice(bytes) {
        Ok(v) => json(v),
        Err(e) => Cell::Invalid(format!("json value cannot be read: {e}")),
    }
}

/// A value of a type batchsync does not read.
pub fn unsupported(sql_type: &str, cast: &str) -> Cell {
    Cell::Invalid(format!(
        "SQL type {sql_type} is not read by batchsync; cast the column in the query ({cast})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn typed(c: Cell) -> Option<Value> {
        match c {
            Cell::Typed(v) => Some(v),
            _ => None,
        }
    }

    #[rstest]
    #[case("42", Some(Value::Int(42)))]
    #[case("-7", Some(Value::Int(-7)))]
    #[case("250.00", Some(Value::Int(250)))]
    #[case("42.50", Some(Value::Float(42.5)))]
    #[case("0.1", Some(Value::Float(0.1)))]
    #[case("-0.00", Some(Value::Int(0)))]
    #[case("19.99", Some(Value::Float(19.99)))]
    #[case("0.00001", Some(Value::Float(0.00001)))]
    #[case("100000000000000000000", Some(Value::Float(1e20)))]
    #[case("9223372036854775807", Some(Value::Int(i64::MAX)))]
    #[case("12345678901234567890.123", None)]
    #[case("12345678901234567890", None)]
    #[case("0.1000000000000000055511151231257827", None)]
    #[case("1.00000000000000000001", None)]
    #[case("NaN", None)]
    #[case("Infinity", None)]
    #[case("-Infinity", None)]
    fn decimals_are_numbers_only_when_an_f64_holds_them_exactly(
        #[case] text: &str,
        #[case] expected: Option<Value>,
    ) {
        assert_eq!(typed(decimal(text)), expected, "{text}");
    }

    proptest::proptest! {
        #[test]
        fn a_plain_decimal_is_the_number_the_checked_path_gives(
            int in "-?[0-9]{1,12}",
            frac in "[0-9]{1,12}",
        ) {
            let t = format!("{int}.{frac}");
            let fast = plain_fraction(t.as_bytes());
            let digits = int.trim_start_matches('-').len() + frac.len();
            proptest::prop_assert_eq!(fast.is_some(), digits <= 15, "{}", t);
            if let Some(x) = fast {
                proptest::prop_assert_eq!(typed(number(x)), typed(decimal_checked(&t)), "{}", t);
            }
        }
    }

    #[rstest]
    #[case("-0.00")]
    #[case("007.50")]
    #[case("999999999999.999")]
    #[case("0.00000000000001")]
    #[case("-12.5")]
    fn plain_decimals_at_the_edges_read_as_checked_ones(#[case] t: &str) {
        let x = plain_fraction(t.as_bytes()).expect("plain");
        assert_eq!(typed(number(x)), typed(decimal_checked(t)), "{t}");
    }

    #[test]
    fn a_text_written_over_keeps_a_buffer_only_of_its_size() {
        let mut slot = Cell::Typed(Value::Text(String::with_capacity(100)));
        text_into(b"short", "text", &mut slot);
        let Cell::Typed(Value::Text(t)) = &slot else {
            panic!("{slot:?}")
        };
        assert_eq!(
            (t.as_str(), t.capacity()),
            ("short", 100),
            "a small buffer is reused"
        );
        let mut slot = Cell::Typed(Value::Text("x".repeat(1 << 20)));
        text_into(b"short", "text", &mut slot);
        let Cell::Typed(Value::Text(t)) = &slot else {
            panic!("{slot:?}")
        };
        assert!(
            t == "short" && t.capacity() < 4096,
            "a long value's buffer is let go"
        );
        text_into(b"\xff", "text", &mut slot);
        assert_eq!(slot, text(b"\xff", "text"));
    }

    #[rstest]
    #[case(b"caf\xc3\xa9")]
    #[case(b"")]
    #[case(b"ok\xff\x00")]
    fn owned_text_reads_as_borrowed_text(#[case] b: &[u8]) {
        assert_eq!(text_owned(b.to_vec(), "BLOB"), text(b, "BLOB"));
    }

    #[rstest]
    #[case("1.")]
    #[case(".5")]
    #[case("+1.5")]
    #[case("1.5e3")]
    #[case("1234567890.1234567")]
    #[case("1.2.3")]
    #[case("-")]
    fn other_spellings_take_the_checked_path(#[case] t: &str) {
        assert_eq!(plain_fraction(t.as_bytes()), None, "{t}");
    }

    #[test]
    fn a_decimal_that_does_not_fit_says_so() {
        let Cell::Invalid(why) = decimal("12345678901234567890.123") else {
            panic!("expected an invalid cell");
        };
        assert!(why.contains("does not fit a 64-bit float exactly"), "{why}");
    }

    #[rstest]
    #[case("1.50", Some((false, "15".to_string(), -1)))]
    #[case("-0012.3400", Some((true, "1234".to_string(), -2)))]
    #[case("1.5e3", Some((false, "15".to_string(), 2)))]
    #[case("0", Some((false, String::new(), 0)))]
    #[case("-0.0e7", Some((false, String::new(), 0)))]
    #[case(".5", Some((false, "5".to_string(), -1)))]
    #[case("1.", Some((false, "1".to_string(), 0)))]
    #[case(".", None)]
    #[case("1e", None)]
    #[case("inf", None)]
    #[case("", None)]
    fn decimals_have_one_canonical_form(
        #[case] text: &str,
        #[case] expected: Option<(bool, String, i64)>,
    ) {
        assert_eq!(canonical(text), expected);
    }

    #[test]
    fn a_real_reads_as_the_decimal_the_database_prints() {
        assert_eq!(typed(float4(0.1)), Some(Value::Float(0.1)));
        assert_eq!(typed(float4(3.0)), Some(Value::Int(3)));
        assert!(matches!(float4(f32::NAN), Cell::Invalid(_)));
        assert!(matches!(float8(f64::INFINITY), Cell::Invalid(_)));
    }

    #[test]
    fn dates_and_naive_times_are_read_in_the_timezone() {
        let d = NaiveDate::from_ymd_opt(2026, 7, 1).unwrap();
        assert_eq!(
            typed(date(d, chrono_tz::Europe::Paris)),
            Some(Value::Time(
                crate::core::value::parse_time("2026-06-30T22:00:00Z", chrono_tz::UTC).unwrap()
            ))
        );
        let gap = NaiveDate::from_ymd_opt(2026, 3, 29)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert!(matches!(
            naive(gap, chrono_tz::Europe::Paris),
            Cell::Invalid(_)
        ));
    }

    #[test]
    fn binary_text_must_be_utf8() {
        assert_eq!(
            typed(text(b"caf\xc3\xa9", "BLOB")),
            Some(Value::Text("café".into()))
        );
        assert!(matches!(text(b"\xff\x00", "BLOB"), Cell::Invalid(_)));
    }
}
