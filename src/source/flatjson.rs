//! NDJSON's common line read without serde_json: one flat object whose values are strings
//! without escapes, integers, `true`, `false`, `null` or plain numbers.
//!
//! Invariants:
//! - [`parse`] either reads the line to exactly the cells serde_json and `from_json` make of
//!   it (the same columns, values and key order), or declines and leaves the line to them,
//!   which then make the same values or the same error as before: a line it declines was
//!   never half-trusted. A test holds the two readers to the same cells on generated lines,
//!   valid and not.
//! - It declines anything it does not read in full: escapes, control characters, nested arrays
//!   and objects, integers outside i64 and `-0`, malformed or trailing text.
//! - Numbers with a fraction or an exponent are read by serde_json itself (its rounding is its
//!   own), from their text alone.
//! - What it reads lands in plain [`Flat`] slots (a kind and a range of the line), not in
//!   `serde_json::Value`s: moving those enums between stack slots stalled on every value.

use crate::core::value::{Cell, Value};

/// One column's value on a line read by [`parse`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Flat {
    kind: Kind,
    /// The string's bytes in the line (`Kind::Text`).
    from: usize,
    to: usize,
    int: i64,
    float: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Kind {
    /// The line has no such key.
    #[default]
    Missing,
    Text,
    Int,
    Float,
    Bool,
    Null,
}

impl Flat {
    /// The cell, as `from_json` types the value; `None` when the key was missing. Inlined into
    /// [`Flat::write`], so that the cell is written where it goes: a cell returned through a
    /// call, or pushed from the stack, was read back before its stores had landed.
    #[inline(always)]
    pub(super) fn cell(&self, line: &str) -> Option<Cell> {
        Some(Cell::Typed(match self.kind {
            Kind::Missing => return None,
            Kind::Text => Value::Text(line[self.from..self.to].to_owned()),
            Kind::Int => Value::Int(self.int),
            Kind::Float => match Value::number(self.float) {
                Ok(v) => v,
                Err(e) => return Some(Cell::Invalid(e.to_string())),
            },
            Kind::Bool => Value::Bool(self.int != 0),
            Kind::Null => Value::Null,
        }))
    }
}

impl Flat {
    /// Writes the cell into `cell`, into the buffer already there when both are text (a row's
    /// strings then cost no allocation once the first rows have sized them); false when the
    /// key was missing (a null is written).
    #[inline(always)]
    pub(super) fn write(&self, line: &str, cell: &mut Cell) -> bool {
        if let (Kind::Text, Cell::Typed(Value::Text(t))) = (self.kind, &mut *cell) {
            t.clear();
            t.push_str(&line[self.from..self.to]);
            return true;
        }
        match self.cell(line) {
            Some(c) => {
                *cell = c;
                true
            }
            None => {
                *cell = Cell::Typed(Value::Null);
                false
            }
        }
    }
}

/// Reads `line` (UTF-8, with or without its line end) into `slots` (one per column of
/// `columns`, all missing on entry) when it is a flat object, trying first for the n-th key
/// the column `order[n]` named on the line before (and updating `order`). False when the
/// line is anything else: `slots` then holds nothing to use, and `order` only hints.
pub(super) fn parse(
    line: &str,
    columns: &[String],
    order: &mut Vec<usize>,
    slots: &mut [Flat],
) -> bool {
    parse_object(line, columns, order, slots).is_some()
}

/// JSON's whitespace.
#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where the first `"`, `\\` or control character at or after `from` is (`b.len()` if none):
/// eight bytes at a time.
#[inline]
fn string_end(b: &[u8], from: usize) -> usize {
    use super::csv::bytes_equal;
    let mut i = from;
    while let Some(word) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let hits = bytes_equal(x, b'"')
            | bytes_equal(x, b'\\')
            | bytes_equal(x & 0xe0e0_e0e0_e0e0_e0e0, 0);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn skip_space(&mut self) {
        while self.at < self.b.len() && is_space(self.b[self.at]) {
            self.at += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    /// The next byte after whitespace, consumed.
    #[inline]
    fn next_token(&mut self) -> Option<u8> {
        self.skip_space();
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    /// A string's content after its opening quote, up to the closing one (consumed); `None`
    /// at an escape, a control character or the end.
    #[inline]
    fn string(&mut self, text: &'a str) -> Option<&'a str> {
        let from = self.at;
        let end = string_end(self.b, from);
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.at = end + 1;
        // Quote bytes never sit inside a multi-byte character: both ends are character
        // boundaries.
        text.get(from..end)
    }

    /// The value that starts with `c` (consumed).
    #[inline]
    fn value(&mut self, c: u8, text: &'a str) -> Option<Flat> {
        let mut v = Flat::default();
        match c {
            b'"' => {
                let from = self.at;
                self.string(text)?;
                (v.kind, v.from, v.to) = (Kind::Text, from, self.at - 1);
            }
            b't' => (v.kind, v.int) = (self.literal(b"rue", Kind::Bool)?, 1),
            b'f' => v.kind = self.literal(b"alse", Kind::Bool)?,
            b'n' => v.kind = self.literal(b"ull", Kind::Null)?,
            b'-' | b'0'..=b'9' => self.number(text, &mut v)?,
            _ => return None,
        }
        Some(v)
    }

    fn literal(&mut self, rest: &[u8], kind: Kind) -> Option<Kind> {
        let end = self.at + rest.len();
        (self.b.get(self.at..end)? == rest).then(|| {
            self.at = end;
            kind
        })
    }

    /// A number, its first byte already consumed. An integer within i64 is read here; one
    /// with a fraction or an exponent is handed to serde_json whole.
    fn number(&mut self, text: &str, v: &mut Flat) -> Option<()> {
        let from = self.at - 1;
        let negative = self.b[from] == b'-';
        let digits = if negative { self.at } else { from };
        while self
            .peek()
            .is_some_and(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            self.at += 1;
        }
        let int = &self.b[digits..self.at];
        if int.is_empty() || (int[0] == b'0' && int.get(1).is_some_and(u8::is_ascii_digit)) {
            return None;
        }
        if int.iter().all(u8::is_ascii_digit) {
            let mut n: u64 = 0;
            for &d in int {
                n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
            }
            v.kind = Kind::Int;
            v.int = match (negative, n) {
                // serde_json reads `-0` as the float -0.0.
                (true, 0) => return None,
                (true, n) if n <= 1 << 63 => (n as i64).wrapping_neg(),
                (false, n) if n <= i64::MAX as u64 => n as i64,
                _ => return None,
            };
            return Some(());
        }
        // serde_json reads a number with a fraction or an exponent as an f64.
        v.float = serde_json::from_str::<f64>(text.get(from..self.at)?).ok()?;
        v.kind = Kind::Float;
        Some(())
    }
}

fn parse_object(
    text: &str,
    columns: &[String],
    order: &mut Vec<usize>,
    slots: &mut [Flat],
) -> Option<()> {
    let b = text.as_bytes();
    let mut cur = Cursor { b, at: 0 };
    if cur.next_token()? != b'{' {
        return None;
    }
    let mut n = 0;
    let mut c = cur.next_token()?;
    if c != b'}' {
        loop {
            if c != b'"' {
                return None;
            }
            let key = cur.string(text)?;
            if cur.next_token()? != b':' {
                return None;
            }
            let column = super::ndjson::column_of(columns, order, n, key);
            n += 1;
            let first = cur.next_token()?;
            let v = cur.value(first, text)?;
            if let Some(i) = column {
                slots[i] = v;
            }
            match cur.next_token()? {
                b',' => c = cur.next_token()?,
                b'}' => break,
                _ => return None,
            }
        }
    }
    cur.skip_space();
    (cur.at == b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::DeserializeSeed;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    type Read = (Vec<Option<Cell>>, Vec<usize>);

    /// The cells the fast reader makes of `line`, and the key order, if it takes it.
    fn fast(line: &str, columns: &[String]) -> Option<Read> {
        let mut slots = vec![Flat::default(); columns.len()];
        let mut order = Vec::new();
        parse(line, columns, &mut order, &mut slots)
            .then(|| (slots.iter().map(|f| f.cell(line)).collect(), order))
    }

    /// The cells the source's serde_json reader makes of `line` (`from_json` of its values),
    /// or nothing when the line is not an object or not JSON.
    fn slow(line: &str, columns: &[String]) -> Option<Read> {
        let mut slots = vec![None; columns.len()];
        let mut order = Vec::new();
        let seed = super::super::ndjson::LineSeed {
            columns,
            slots: &mut slots,
            order: &mut order,
        };
        let mut de = serde_json::Deserializer::from_str(line);
        let shape = seed.deserialize(&mut de).ok()?;
        de.end().ok()?;
        let cells = slots
            .into_iter()
            .map(|v| {
                v.map(|v| match crate::core::value::from_json(v) {
                    Ok(v) => Cell::Typed(v),
                    Err(e) => Cell::Invalid(e.to_string()),
                })
            })
            .collect();
        matches!(shape, super::super::ndjson::Shape::Object).then_some((cells, order))
    }

    #[test]
    fn flat_lines_are_read_and_others_declined() {
        let c = cols(&["id", "name", "score", "ok"]);
        let (slots, order) = fast(
            "{\"id\":7,\"name\":\"Ada\",\"x\":null,\"score\":4.5,\"ok\":true}\n",
            &c,
        )
        .expect("a flat line");
        assert_eq!(
            slots,
            vec![
                Some(Cell::Typed(Value::Int(7))),
                Some(Cell::Typed(Value::Text("Ada".into()))),
                Some(Cell::Typed(Value::Float(4.5))),
                Some(Cell::Typed(Value::Bool(true)))
            ]
        );
        assert_eq!(order, vec![0, 1, super::super::ndjson::NO_COLUMN, 2, 3]);
        assert!(fast("{ \"id\" : -3 , \"name\" : \"é\" }\r\n", &c).is_some());
        assert!(fast("{}", &c).is_some());
        for declined in [
            "{\"name\":\"a\\\"b\"}",
            "{\"id\":[1]}",
            "{\"id\":{\"a\":1}}",
            "{\"id\":01}",
            "{\"id\":-0}",
            "{\"id\":9223372036854775808}",
            "{\"id\":-9223372036854775809}",
            "{\"id\":1,}",
            "{\"id\":1}x",
            "{\"id\":tru}",
            "{\"id\" 1}",
            "{\"na\\u006de\":1}",
            "[1]",
            "{\"name\":\"tab\there\"}",
        ] {
            assert!(fast(declined, &c).is_none(), "{declined}");
        }
    }

    /// Pieces of lines, valid and not, that the two readers must agree on.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just("[]".to_string()),
            Just("{\"n\":[\"x\"]}".to_string()),
            Just("\"\\n\"".to_string()),
            prop_oneof![
                Just("\"id\""),
                Just("\"name\""),
                Just("\"score\""),
                Just("\"other\"")
            ]
            .prop_map(str::to_string),
            "\"[a-zé ]{0,4}\"",
            prop_oneof![
                Just("true"),
                Just("false"),
                Just("null"),
                Just("nul"),
                Just("-0")
            ]
            .prop_map(str::to_string),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| f.to_string()),
            "-?[0-9]{1,22}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,3})?",
        ]
    }

    /// A flat object of the columns (and another key), in any order, each separator with
    /// or without spaces: the lines the fast reader is for; with `edges`, also values it
    /// leaves to serde_json (`-0`, integers past i64, numbers past f64).
    fn flat_line(edges: bool) -> impl Strategy<Value = String> {
        let edge = prop_oneof![
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("1e999".to_string()),
            ((i64::MAX as u64)..=u64::MAX).prop_map(|u| u.to_string()),
            ((i64::MAX as u64)..=u64::MAX).prop_map(|u| format!("-{u}")),
            "-?[1-9][0-9]{19,22}",
        ];
        let value = prop_oneof![
            if edges { 1 } else { 0 } => edge,
            4 => "\"[a-zé ]{0,6}\"",
            4 => any::<i64>().prop_map(|i| i.to_string()),
            4 => any::<f64>().prop_map(|f| serde_json::to_string(&f).unwrap()),
            // Integers past i64, and numbers past f64 (which serde_json reads where they are
            // skipped), are left to serde_json: only numbers within both here.
            4 => "-?[1-9][0-9]{0,20}\\.[0-9]{1,20}([eE][+-]?[0-9]{1,2})?",
            4 => "-?[1-9][0-9]{0,5}[eE][+-]?[0-9]{1,2}",
            4 => prop_oneof![Just("true"), Just("false"), Just("null")].prop_map(str::to_string),
        ];
        let key = prop_oneof![Just("id"), Just("name"), Just("score"), Just("other")];
        (proptest::collection::vec((key, value), 0..6), any::<bool>()).prop_map(
            |(fields, spaced)| {
                let (colon, comma) = if spaced { (": ", ", ") } else { (":", ",") };
                let body: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("\"{k}\"{colon}{v}"))
                    .collect();
                format!("{{{}}}\n", body.join(comma))
            },
        )
    }

    proptest! {
        /// Every line the fast reader takes, serde_json reads to the same values and order.
        #[test]
        fn a_line_taken_is_read_as_serde_json_reads_it(
            line in prop_oneof![
                flat_line(true),
                proptest::collection::vec(piece(), 0..12).prop_map(|p| p.concat()),
            ]
        ) {
            let c = cols(&["id", "name", "score"]);
            if let Some(got) = fast(&line, &c) {
                prop_assert_eq!(Some(got), slow(&line, &c), "{:?}", line);
            }
        }

        /// The lines it is for, it takes (unless serde_json would not read them either).
        #[test]
        fn a_flat_line_is_taken(line in flat_line(false)) {
            let c = cols(&["id", "name", "score"]);
            let got = fast(&line, &c);
            prop_assert_eq!(got.is_some(), slow(&line, &c).is_some(), "{:?}", line);
        }
    }
}
