//! The canonical row encoding, the row hash and the row key.
//!
//! Recipe version 1 (changing any byte of it is a new version, see `HASH_RECIPE`):
//!
//! - A row is encoded over the columns the sync uses (primary key and mapped columns), in
//!   ascending byte order of their names, whatever order the source yields them in. Each column
//!   is `u32 BE length of name ‖ name bytes ‖ value`.
//! - A value is a tag byte and its payload:
//!   `0x00` null; `0x01` bool (1 byte); `0x02` integer (i64 BE); `0x03` float (f64 bits BE,
//!   `-0.0` written as `0.0`); `0x04` text (u32 BE length ‖ UTF-8); `0x05` time (i64 BE
//!   microseconds since the epoch, UTC); `0x06` URL (as text); `0x07` string array (u32 BE
//!   count, then each as text); `0x08` JSON (its compact serialisation with object keys sorted,
//!   as text).
//! - Row hash = the first 16 bytes of BLAKE3(`"batchsync-row-v1\0"` ‖ encoding).
//! - Row key = the values of the primary-key columns, in configured order, each encoded as
//!   above; without a primary key, the row hash.
//!
//! So `1` and `"1"` differ (tags 0x02 and 0x04), `null` and `""` differ (0x00 and 0x04 with
//! length 0), and a number is hashed the same whether a source said `42`, `42.0` or `"42"`
//! under a `number` type, because [`Value::number`] makes them one value before encoding.

use super::value::Value;
use std::fmt;

/// Bumped whenever the encoding changes; stored in the state store so that a store written under
/// another recipe is refused rather than silently re-firing every row.
pub const HASH_RECIPE: u32 = 1;
const DOMAIN: &[u8] = b"batchsync-row-v1\0";

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
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Appends the canonical encoding of one value.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0x00),
        Value::Bool(b) => {
            out.push(0x01);
            out.push(*b as u8);
        }
        Value::Int(i) => {
            out.push(0x02);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Float(f) => {
            out.push(0x03);
            let f = if *f == 0.0 { 0.0f64 } else { *f };
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Value::Text(s) => {
            out.push(0x04);
            put_str(s, out);
        }
        Value::Time(t) => {
            out.push(0x05);
            out.extend_from_slice(&t.to_be_bytes());
        }
        Value::Url(s) => {
            out.push(0x06);
            put_str(s, out);
        }
        Value::StrArray(items) => {
            out.push(0x07);
            out.extend_from_slice(&(items.len() as u32).to_be_bytes());
            for s in items {
                put_str(s, out);
            }
        }
        Value::Json(j) => {
            out.push(0x08);
            // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
            put_str(&j.to_string(), out);
        }
    }
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends one `name ‖ value` column entry.
pub fn encode_column(name: &str, v: &Value, out: &mut Vec<u8>) {
    put_str(name, out);
    encode_value(v, out);
}

pub fn hash_encoding(encoding: &[u8]) -> RowHash {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN);
    h.update(encoding);
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

    pub fn is_done(&self) -> bool {
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

    /// Reads a `name ‖ value` column entry.
    pub fn column(&mut self) -> Result<(String, Value), DecodeError> {
        let name = self.string()?;
        Ok((name, self.value()?))
    }

    pub fn value(&mut self) -> Result<Value, DecodeError> {
        let at = self.pos;
        let tag = self.take(1)?[0];
        Ok(match tag {
            0x00 => Value::Null,
            0x01 => Value::Bool(self.take(1)?[0] != 0),
            0x02 => Value::Int(self.i64()?),
            0x03 => Value::Float(f64::from_bits(self.i64()? as u64)),
            0x04 => Value::Text(self.string()?),
            0x05 => Value::Time(self.i64()?),
            0x06 => Value::Url(self.string()?),
            0x07 => {
                let n = self.u32()?;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    items.push(self.string()?);
                }
                Value::StrArray(items)
            }
            0x08 => {
                let s = self.string()?;
                Value::Json(serde_json::from_str(&s).map_err(|_| DecodeError(at))?)
            }
            _ => return Err(DecodeError(at)),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row_hash(cols: &[(&str, Value)]) -> RowHash {
        let mut sorted: Vec<_> = cols.to_vec();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut buf = Vec::new();
        for (n, v) in &sorted {
            encode_column(n, v, &mut buf);
        }
        hash_encoding(&buf)
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
