//! The canonical row encoding, the row hash and the row key: the hash recipe, defined here and
//! nowhere else.
//!
//! Recipe version 2 (changing any byte of it is a new version, see `HASH_RECIPE`):
//!
//! - A row is encoded over the columns the sync uses (primary key and mapped columns), in
//!   ascending byte order of their names, whatever order the source yields them in: each
//!   column's value, back to back. The names, the same on every row, are in the hash's key.
//! - A value is a tag byte and its payload:
//!   `0x00` null; `0x01` bool (1 byte); `0x02` integer (i64 BE); `0x03` float (f64 bits BE,
//!   `-0.0` written as `0.0`); `0x04` text (u32 BE length ‖ UTF-8); `0x05` time (i64 BE
//!   microseconds since the epoch, UTC); `0x06` URL (as text); `0x07` string array (u32 BE
//!   count, then each as text); `0x08` JSON (its compact serialisation with object keys sorted,
//!   as text).
//! - Row hash = the first 16 bytes of BLAKE3 keyed by the row key of [`RowHasher`] (BLAKE3 in
//!   key-derivation mode, context `"batchsync row hash v2"`, over each column's name header
//!   `u32 BE length of name ‖ name bytes`, in the same order) over the encoding. The row
//!   encoding covers the event's columns only: a column used by profile attributes alone is
//!   covered by the profile hash ([`hash_profile`]) instead.
//! - Recipe 1, which stores written before recipe 2 hold, hashed BLAKE3(`"batchsync-row-v1\0"`
//!   ‖ per column its name header ‖ its value) without a key: [`hash_v1`] computes it still,
//!   for the run that upgrades such a store (DESIGN.md "Hash recipe upgrades").
//! - Row key = the values of the primary-key columns, in configured order, each encoded as
//!   above; without a primary key, the row's recipe-1 hash ([`hash_v1`]): a key's encoding
//!   never changes.
//!
//! So `1` and `"1"` differ (tags 0x02 and 0x04), `null` and `""` differ (0x00 and 0x04 with
//! length 0), and a number is hashed the same whether a source said `42`, `42.0` or `"42"`
//! under a `number` type, because [`Value::number`] makes them one value before encoding.
//!
//! Invariants:
//! - The tag bytes, the way each type is written ([`encode_value`] and the `put_*` writers it
//!   is made of), a column's name header (`put_name`) and the hash's domain live in this file
//!   only. The snapshot's fast path (`snapshot::cells`) writes straight from source text
//!   through the same writers, so a new recipe is a change to this file.
//! - The reference path, one [`Value`] at a time (`encode_row`, `row_key`), sits at the end
//!   of this file, built for the tests only: the recipe's executable spec, which the
//!   snapshot's tests check the fast path against byte for byte.
//! - The snapshot cuts a row's key from its hash input (`put_key_part`), so whatever the
//!   recipe, the key stays what the recipe's "Row key" bullet says.

use super::value::Value;
use std::fmt;
use std::ops::Range;

/// Bumped whenever the encoding changes; stored in the state store (in the mapping's identity)
/// so that a store written under another recipe is upgraded (from recipe 1) or refused, never
/// silently re-fires every row.
pub const HASH_RECIPE: u32 = 2;
/// Recipe 1's domain (`hash_v1`).
const DOMAIN_V1: &[u8] = b"batchsync-row-v1\0";

/// The row hash of recipe 2 for one sync's columns: the key derived from their names.
#[derive(Clone)]
pub struct RowHasher {
    key: [u8; 32],
}

impl RowHasher {
    /// `columns`: the row hash's columns, in name order.
    pub fn new<'a>(columns: impl Iterator<Item = &'a str>) -> RowHasher {
        let mut material = Vec::new();
        for c in columns {
            put_name(c, &mut material);
        }
        RowHasher {
            key: blake3::derive_key("batchsync row hash v2", &material),
        }
    }

    /// The row hash of an encoding: the hashed columns' values, back to back.
    #[inline]
    pub fn hash(&self, encoding: &[u8]) -> RowHash {
        let mut out = [0u8; 16];
        out.copy_from_slice(&blake3::keyed_hash(&self.key, encoding).as_bytes()[..16]);
        RowHash(out)
    }
}

/// Recipe 1's row hash, from each hashed column's name header and value bytes, in name order.
pub fn hash_v1<'a>(parts: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> RowHash {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_V1);
    for (name, value) in parts {
        h.update(name);
        h.update(value);
    }
    let mut out = [0u8; 16];
    h.finalize_xof().fill(&mut out);
    RowHash(out)
}

/// The 128-bit row hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RowHash(pub [u8; 16]);

impl RowHash {
    pub fn to_hex(self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for RowHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowHash({})", self.to_hex())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The tag bytes, one per value type: the first byte of a value's encoding.
mod tag {
    pub const NULL: u8 = 0x00;
    pub const BOOL: u8 = 0x01;
    pub const INT: u8 = 0x02;
    pub const FLOAT: u8 = 0x03;
    pub const TEXT: u8 = 0x04;
    pub const TIME: u8 = 0x05;
    pub const URL: u8 = 0x06;
    pub const STR_ARRAY: u8 = 0x07;
    pub const JSON: u8 = 0x08;
}

/// Appends the canonical encoding of one value.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => put_null(out),
        Value::Bool(b) => put_bool(*b, out),
        Value::Int(i) => put_int(*i, out),
        Value::Float(f) => put_float(*f, out),
        Value::Text(s) => put_text(s, out),
        Value::Time(t) => put_time(*t, out),
        Value::Url(s) => put_url(s, out),
        Value::StrArray(items) => put_str_array(items, out),
        Value::Json(j) => put_json(j, out),
    }
}

// The writers of each type, for the fast path that has no `Value` to hand to `encode_value`.
// Inlined: the snapshot calls them once per cell.

#[inline]
pub(crate) fn put_null(out: &mut Vec<u8>) {
    out.push(tag::NULL);
}

#[inline]
pub(crate) fn put_bool(b: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&[tag::BOOL, b as u8]);
}

#[inline]
pub(crate) fn put_int(i: i64, out: &mut Vec<u8>) {
    out.push(tag::INT);
    out.extend_from_slice(&i.to_be_bytes());
}

#[inline]
pub(crate) fn put_float(f: f64, out: &mut Vec<u8>) {
    out.push(tag::FLOAT);
    let f = if f == 0.0 { 0.0f64 } else { f };
    out.extend_from_slice(&f.to_bits().to_be_bytes());
}

#[inline]
pub(crate) fn put_text(s: &str, out: &mut Vec<u8>) {
    out.push(tag::TEXT);
    put_str(s, out);
}

/// `micros`: microseconds since the epoch, UTC.
#[inline]
pub(crate) fn put_time(micros: i64, out: &mut Vec<u8>) {
    out.push(tag::TIME);
    out.extend_from_slice(&micros.to_be_bytes());
}

fn put_url(s: &str, out: &mut Vec<u8>) {
    out.push(tag::URL);
    put_str(s, out);
}

fn put_str_array(items: &[String], out: &mut Vec<u8>) {
    out.push(tag::STR_ARRAY);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for s in items {
        put_str(s, out);
    }
}

fn put_json(j: &serde_json::Value, out: &mut Vec<u8>) {
    out.push(tag::JSON);
    // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
    put_str(&j.to_string(), out);
}

/// Appends a column's name header, written before its value in the hash input.
#[inline]
pub(crate) fn put_name(name: &str, out: &mut Vec<u8>) {
    put_str(name, out);
}

#[inline]
fn put_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends a primary-key column's part of the row key, from its value as the hash input holds
/// it (`buf[value]`, written by `encode_value` or the writers above); `false`, and nothing
/// appended, when the value is null, which no key column may be. Under recipe v1 a value is
/// written the same in both, so the part is a copy; the key's encoding never changes (DESIGN.md,
/// "Hash recipe upgrades"), so a recipe that writes values otherwise converts them here.
#[inline]
pub(crate) fn put_key_part(buf: &mut Vec<u8>, value: Range<usize>) -> bool {
    if buf[value.start] == tag::NULL {
        return false;
    }
    buf.extend_from_within(value);
    true
}

/// The profile hash, kept beside the row hash when a sync maps profile attributes: the first
/// 16 bytes of BLAKE3 keyed by [`profile_key`] (which covers the attributes' names) over the
/// values of the profile attributes' columns, encoded as above, in ascending byte order of the
/// attributes' names. Values only, so that a row's input is one BLAKE3 block or two.
/// `values` yields them in that order.
pub fn hash_profile<'a>(
    key: &[u8; 32],
    values: impl Iterator<Item = &'a [u8]>,
    scratch: &mut Vec<u8>,
) -> RowHash {
    scratch.clear();
    for v in values {
        scratch.extend_from_slice(v);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::keyed_hash(key, scratch).as_bytes()[..16]);
    RowHash(out)
}

/// The profile hash's key: BLAKE3 in key-derivation mode, context
/// `"batchsync profile hash v1"`, over each attribute's name header (`put_name`) in ascending
/// byte order of the names. A renamed or added attribute changes every row's profile hash.
pub fn profile_key<'a>(names: impl Iterator<Item = &'a str>) -> [u8; 32] {
    let mut material = Vec::new();
    for n in names {
        put_name(n, &mut material);
    }
    blake3::derive_key("batchsync profile hash v1", &material)
}

/// What an open reject remembers of a row: its row hash, or with profile attributes, a hash of
/// both hashes, so that a row whose profile attributes alone change is tried again.
pub fn reject_hash(hash: RowHash, profile: Option<RowHash>) -> RowHash {
    let Some(p) = profile else { return hash };
    let mut h = blake3::Hasher::new();
    h.update(b"batchsync-reject-v1\0");
    h.update(&hash.0);
    h.update(&p.0);
    let mut out = [0u8; 16];
    h.finalize_xof().fill(&mut out);
    RowHash(out)
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("corrupt row encoding at byte {0}")]
pub struct DecodeError(pub usize);

/// Reads values back from an encoding, in order. Used for row payloads and key display.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    #[cfg(test)]
    fn is_done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError(self.pos))?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        Ok(i64::from_be_bytes(
            b.try_into().map_err(|_| DecodeError(self.pos))?,
        ))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()?;
        let at = self.pos;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError(at))
    }

    pub fn value(&mut self) -> Result<Value, DecodeError> {
        let at = self.pos;
        let tag = self.take(1)?[0];
        Ok(match tag {
            tag::NULL => Value::Null,
            tag::BOOL => Value::Bool(self.take(1)?[0] != 0),
            tag::INT => Value::Int(self.i64()?),
            tag::FLOAT => Value::Float(f64::from_bits(self.i64()? as u64)),
            tag::TEXT => Value::Text(self.string()?),
            tag::TIME => Value::Time(self.i64()?),
            tag::URL => Value::Url(self.string()?),
            tag::STR_ARRAY => {
                let n = self.u32()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.string()?);
                }
                Value::StrArray(items)
            }
            tag::JSON => {
                let s = self.string()?;
                Value::Json(serde_json::from_str(&s).map_err(|_| DecodeError(at))?)
            }
            _ => return Err(DecodeError(at)),
        })
    }

    /// Steps over the next value without reading it; returns where its encoding sits.
    pub fn skip(&mut self) -> Result<Range<usize>, DecodeError> {
        let at = self.pos;
        let tag = self.take(1)?[0];
        match tag {
            tag::NULL => {}
            tag::BOOL => {
                self.take(1)?;
            }
            tag::INT | tag::FLOAT | tag::TIME => {
                self.take(8)?;
            }
            tag::TEXT | tag::URL | tag::JSON => {
                let n = self.u32()?;
                self.take(n)?;
            }
            tag::STR_ARRAY => {
                for _ in 0..self.u32()? {
                    let n = self.u32()?;
                    self.take(n)?;
                }
            }
            _ => return Err(DecodeError(at)),
        }
        Ok(at..self.pos)
    }
}

/// Renders a row key for people: `{"order_id":17}` with the key column names, or the hash in
/// hex for syncs without a primary key.
pub fn display_key(key: &[u8], pk: &[String]) -> String {
    if pk.is_empty() {
        return hex(key);
    }
    let mut d = Decoder::new(key);
    let mut obj = serde_json::Map::new();
    for name in pk {
        match d.value() {
            Ok(v) => {
                obj.insert(name.clone(), super::value::json_of(&v));
            }
            Err(_) => return hex(key),
        }
    }
    serde_json::Value::Object(obj).to_string()
}

/// The reference path: a typed row (values in the plan's column order, its names sorted) →
/// (payload, hash). The payload is the values back to back, which is also the hash's input
/// (under the key of the columns' names). The snapshot writes the same bytes from source text
/// without a `Value`.
#[cfg(test)]
pub(crate) fn encode_row(
    columns: &[String],
    values: &[Value],
    scratch: &mut Vec<u8>,
) -> (Vec<u8>, RowHash) {
    scratch.clear();
    for v in values {
        encode_value(v, scratch);
    }
    let hash = RowHasher::new(columns.iter().map(String::as_str)).hash(scratch);
    let mut payload = Vec::with_capacity(scratch.len());
    for v in values {
        encode_value(v, &mut payload);
    }
    (payload, hash)
}

/// The reference path: the row key of a typed row, `key` being the primary-key columns'
/// indices in configured order (none: `hash`, the recipe-1 hash, is the key), or the index of
/// a null one.
#[cfg(test)]
pub(crate) fn row_key(key: &[usize], values: &[Value], hash: RowHash) -> Result<Vec<u8>, usize> {
    if key.is_empty() {
        return Ok(hash.0.to_vec());
    }
    let mut out = Vec::with_capacity(16);
    for &i in key {
        if matches!(values[i], Value::Null) {
            return Err(i);
        }
        encode_value(&values[i], &mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_hash(cols: &[(&str, Value)]) -> RowHash {
        let mut sorted: Vec<_> = cols.to_vec();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let (names, values): (Vec<String>, Vec<Value>) =
            sorted.into_iter().map(|(n, v)| (n.to_string(), v)).unzip();
        encode_row(&names, &values, &mut Vec::new()).1
    }

    #[test]
    fn one_and_the_string_one_hash_differently() {
        assert_ne!(
            row_hash(&[("a", Value::Int(1))]),
            row_hash(&[("a", Value::Text("1".into()))])
        );
    }

    #[test]
    fn null_and_empty_string_hash_differently() {
        assert_ne!(
            row_hash(&[("a", Value::Null)]),
            row_hash(&[("a", Value::Text(String::new()))])
        );
    }

    #[test]
    fn column_boundaries_are_unambiguous() {
        assert_ne!(
            row_hash(&[("a", Value::Text("bc".into())), ("d", Value::Null)]),
            row_hash(&[("a", Value::Text("b".into())), ("cd", Value::Null)])
        );
    }

    #[test]
    fn negative_zero_hashes_as_zero() {
        assert_eq!(
            row_hash(&[("a", Value::Float(-0.0))]),
            row_hash(&[("a", Value::Float(0.0))])
        );
    }

    /// Recipe v1 byte for byte, as the module doc states it: a change here is a new recipe.
    #[test]
    fn every_type_is_written_as_recipe_v1_says() {
        let cases: Vec<(Value, Vec<u8>)> = vec![
            (Value::Null, vec![0x00]),
            (Value::Bool(true), vec![0x01, 1]),
            (Value::Bool(false), vec![0x01, 0]),
            (
                Value::Int(-2),
                vec![0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe],
            ),
            (
                Value::Float(1.5),
                [&[0x03][..], &1.5f64.to_bits().to_be_bytes()].concat(),
            ),
            (Value::Float(-0.0), [&[0x03][..], &[0; 8]].concat()),
            (
                Value::Text("hé".into()),
                vec![0x04, 0, 0, 0, 3, b'h', 0xc3, 0xa9],
            ),
            (Value::Time(258), vec![0x05, 0, 0, 0, 0, 0, 0, 1, 2]),
            (Value::Url("u".into()), vec![0x06, 0, 0, 0, 1, b'u']),
            (
                Value::StrArray(vec!["a".into(), "".into()]),
                vec![0x07, 0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 0],
            ),
            (
                Value::Json(serde_json::json!({"b": 1, "a": [true]})),
                [&[0x08, 0, 0, 0, 18][..], br#"{"a":[true],"b":1}"#].concat(),
            ),
        ];
        for (v, bytes) in cases {
            let mut out = Vec::new();
            encode_value(&v, &mut out);
            assert_eq!(out, bytes, "{v:?}");
        }
        let mut header = Vec::new();
        put_name("id", &mut header);
        assert_eq!(header, [0, 0, 0, 2, b'i', b'd']);
    }

    #[test]
    fn a_key_part_is_the_value_as_the_hash_input_holds_it_and_never_null() {
        let mut buf = Vec::new();
        encode_value(&Value::Int(7), &mut buf);
        encode_value(&Value::Null, &mut buf);
        let (int, null) = (0..9, 9..10);
        assert!(put_key_part(&mut buf, int.clone()));
        assert_eq!(&buf[10..], &buf[int]);
        assert!(!put_key_part(&mut buf, null));
        assert_eq!(buf.len(), 19);
    }

    #[test]
    fn every_value_decodes_to_itself() {
        let values = vec![
            Value::Null,
            Value::Bool(true),
            Value::Int(-7),
            Value::Float(2.5),
            Value::Text("héllo".into()),
            Value::Time(1_700_000_000_000_000),
            Value::Url("https://x.test/a".into()),
            Value::StrArray(vec!["a".into(), "".into()]),
            Value::Json(serde_json::json!({"b": [1, 2], "a": null})),
        ];
        let mut buf = Vec::new();
        for v in &values {
            encode_value(v, &mut buf);
        }
        let mut d = Decoder::new(&buf);
        for v in &values {
            assert_eq!(&d.value().unwrap(), v);
        }
        assert!(d.is_done());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert_eq!(hex(&[0, 1, 0xab, 0x7f, 255]), "0001ab7fff");
        assert_eq!(unhex("zz"), None);
    }
}
