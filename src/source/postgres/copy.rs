//! PostgreSQL's binary `COPY … TO STDOUT` format, read back into tuples: an 11-byte signature,
//! a 32-bit flags field, a 32-bit header-extension length and that many bytes; then tuples,
//! each a 16-bit field count and, per field, a 32-bit length (-1 for NULL) and the value's
//! bytes in its type's binary send format (the bytes the extended protocol's binary results
//! carry, so the source's `cell` reads them unchanged); then the trailer, a field count of -1.
//!
//! Invariants:
//! - The server's `CopyData` messages may cut the stream anywhere: a tuple split across two
//!   messages is put back together (the server sends whole tuples, the format does not
//!   promise it). The common case, whole tuples, is read in place without a copy.
//! - Every tuple has exactly the width the statement described, every length fits its
//!   message, and nothing follows the trailer: anything else is an error, never a short row.
//! - The stream is complete only once the trailer has been read ([`Tuples::finish`]).

use std::ops::Range;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags, header-extension length.
const HEADER: usize = 11 + 4 + 4;
/// Flag bit 16: OIDs included (servers before 12); batchsync's `COPY` never asks for them.
const WITH_OIDS: u32 = 1 << 16;

/// One field of a tuple: its bytes' range in the slice handed to the callback; `None` for NULL.
pub type Field = Option<Range<usize>>;

/// Where the reader is in the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    Header,
    Tuples,
    Ended,
}

/// The stream's reader: feed it each `CopyData` message in order.
pub struct Tuples {
    width: usize,
    at: At,
    /// The start of a tuple (or of the header) that the last message cut short.
    carry: Vec<u8>,
    fields: Vec<Field>,
}

/// What stopped [`Tuples::feed`].
#[derive(Debug, PartialEq)]
pub enum Stop<E> {
    /// The stream is not valid binary COPY data of the expected width.
    Malformed(String),
    /// The callback's own error.
    Row(E),
}

/// What the parse of one buffer found at its position.
enum Step {
    /// A tuple of so many bytes (its fields in `Tuples::fields`).
    Tuple(usize),
    /// The header (so many bytes) or the trailer (2 bytes).
    Frame(usize),
    /// The buffer ends before the next tuple does.
    Short,
}

impl Tuples {
    /// A reader of tuples of `width` fields.
    pub fn new(width: usize) -> Tuples {
        Tuples {
            width,
            at: At::Header,
            carry: Vec::new(),
            fields: Vec::with_capacity(width),
        }
    }

    /// Reads the tuples `message` completes or holds, calling `row(bytes, fields)` for each in
    /// order (each field's range indexes `bytes`); a partial tuple at its end waits for the next
    /// message.
    pub fn feed<E>(
        &mut self,
        message: &[u8],
        row: &mut impl FnMut(&[u8], &[Field]) -> Result<(), E>,
    ) -> Result<(), Stop<E>> {
        if self.carry.is_empty() {
            let used = self.read(message, row)?;
            self.carry.extend_from_slice(&message[used..]);
        } else {
            let mut joined = std::mem::take(&mut self.carry);
            joined.extend_from_slice(message);
            let used = self.read(&joined, row)?;
            joined.drain(..used);
            self.carry = joined;
        }
        Ok(())
    }

    /// The end of the data: the trailer must have been read, and nothing be left over.
    pub fn finish(&self) -> Result<(), String> {
        match (self.at, self.carry.len()) {
            (At::Ended, _) => Ok(()),
            (_, 0) => Err("the COPY data ended without its trailer".into()),
            (_, n) => Err(format!("the COPY data ended inside a tuple ({n} bytes)")),
        }
    }

    /// Reads whole tuples from `buf`; returns the bytes used.
    fn read<E>(
        &mut self,
        buf: &[u8],
        row: &mut impl FnMut(&[u8], &[Field]) -> Result<(), E>,
    ) -> Result<usize, Stop<E>> {
        let mut pos = 0;
        while pos < buf.len() {
            match self.step(&buf[pos..]).map_err(Stop::Malformed)? {
                Step::Short => break,
                Step::Frame(n) => pos += n,
                Step::Tuple(n) => {
                    // The ranges are relative to the tuple's start: shift them to `buf`'s.
                    for f in self.fields.iter_mut().flatten() {
                        *f = f.start + pos..f.end + pos;
                    }
                    row(buf, &self.fields).map_err(Stop::Row)?;
                    pos += n;
                }
            }
        }
        Ok(pos)
    }

    /// Reads the header, one tuple or the trailer at the start of `b`.
    fn step(&mut self, b: &[u8]) -> Result<Step, String> {
        match self.at {
            At::Ended => Err(format!("{} bytes of COPY data follow the trailer", b.len())),
            At::Header => {
                if b.len() < HEADER {
                    return Ok(Step::Short);
                }
                if &b[..11] != SIGNATURE {
                    return Err("the COPY data does not start with the binary signature".into());
                }
                if u32_at(b, 11) & WITH_OIDS != 0 {
                    return Err("the COPY data holds OIDs".into());
                }
                let extension = u32_at(b, 15) as usize;
                if b.len() < HEADER + extension {
                    return Ok(Step::Short);
                }
                self.at = At::Tuples;
                Ok(Step::Frame(HEADER + extension))
            }
            At::Tuples => {
                if b.len() < 2 {
                    return Ok(Step::Short);
                }
                let count = i16::from_be_bytes([b[0], b[1]]);
                if count == -1 {
                    self.at = At::Ended;
                    return Ok(Step::Frame(2));
                }
                if count as usize != self.width || count < 0 {
                    return Err(format!(
                        "a COPY tuple has {count} fields, the query's result {}",
                        self.width
                    ));
                }
                self.fields.clear();
                let mut pos = 2;
                for _ in 0..self.width {
                    if b.len() < pos + 4 {
                        return Ok(Step::Short);
                    }
                    let len = i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
                    pos += 4;
                    if len == -1 {
                        self.fields.push(None);
                        continue;
                    }
                    let len = usize::try_from(len)
                        .map_err(|_| format!("a COPY field has the length {len}"))?;
                    if b.len() < pos + len {
                        return Ok(Step::Short);
                    }
                    self.fields.push(Some(pos..pos + len));
                    pos += len;
                }
                Ok(Step::Tuple(pos))
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `tuples` (`None` a NULL field), as the server writes it.
    fn stream(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0u32.to_be_bytes());
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(b"ext!");
        for t in tuples {
            s.extend_from_slice(&(t.len() as i16).to_be_bytes());
            for f in t {
                match f {
                    None => s.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        s.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        s.extend_from_slice(v);
                    }
                }
            }
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s
    }

    type Rows = Vec<Vec<Option<Vec<u8>>>>;

    /// The tuples read from `messages`, or why not.
    fn read(width: usize, messages: &[&[u8]]) -> Result<Rows, String> {
        let mut t = Tuples::new(width);
        let mut rows = Vec::new();
        for m in messages {
            t.feed(m, &mut |b: &[u8], fields: &[Field]| {
                rows.push(
                    fields
                        .iter()
                        .map(|f| f.clone().map(|r| b[r].to_vec()))
                        .collect(),
                );
                Ok::<(), ()>(())
            })
            .map_err(|e| match e {
                Stop::Malformed(m) => m,
                Stop::Row(()) => unreachable!(),
            })?;
        }
        t.finish()?;
        Ok(rows)
    }

    fn sample() -> (Vec<Vec<Option<&'static [u8]>>>, Rows) {
        let tuples: Vec<Vec<Option<&[u8]>>> = vec![
            vec![Some(b"\x00\x00\x00\x01"), Some(b"ada"), None],
            vec![Some(b"\x00\x00\x00\x02"), Some(b""), Some(b"xyz")],
            vec![None, None, None],
        ];
        let rows = tuples
            .iter()
            .map(|t| t.iter().map(|f| f.map(|v| v.to_vec())).collect())
            .collect();
        (tuples, rows)
    }

    #[test]
    fn tuples_are_read_with_their_nulls_and_empty_values() {
        let (tuples, rows) = sample();
        assert_eq!(read(3, &[&stream(&tuples)]).unwrap(), rows);
    }

    #[test]
    fn a_stream_cut_anywhere_into_messages_reads_the_same() {
        let (tuples, rows) = sample();
        let s = stream(&tuples);
        for cut in 0..=s.len() {
            assert_eq!(
                read(3, &[&s[..cut], &s[cut..]]).unwrap(),
                rows,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(read(3, &bytes).unwrap(), rows, "one byte per message");
    }

    #[test]
    fn a_stream_without_its_trailer_is_incomplete() {
        let (tuples, _) = sample();
        let s = stream(&tuples);
        let err = read(3, &[&s[..s.len() - 2]]).unwrap_err();
        assert!(err.contains("without its trailer"), "{err}");
        let err = read(3, &[&s[..s.len() - 4]]).unwrap_err();
        assert!(err.contains("inside a tuple"), "{err}");
    }

    #[test]
    fn a_tuple_of_another_width_is_malformed() {
        let (tuples, _) = sample();
        let err = read(2, &[&stream(&tuples)]).unwrap_err();
        assert!(err.contains("3 fields"), "{err}");
    }

    #[test]
    fn data_after_the_trailer_or_a_bad_signature_is_malformed() {
        let (tuples, _) = sample();
        let mut s = stream(&tuples);
        s.push(0);
        assert!(read(3, &[&s]).unwrap_err().contains("follow the trailer"));
        let mut s = stream(&tuples);
        s[0] = b'X';
        assert!(read(3, &[&s]).unwrap_err().contains("signature"));
    }

    #[test]
    fn a_negative_length_other_than_null_is_malformed() {
        let mut s = stream(&[vec![Some(b"a")]]);
        // The field's length, after the header (19 + 4) and the field count (2).
        s[25..29].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(read(1, &[&s]).unwrap_err().contains("length -2"));
    }

    #[test]
    fn the_callbacks_error_stops_the_read() {
        let (tuples, _) = sample();
        let mut t = Tuples::new(3);
        let mut seen = 0;
        let got = t.feed(&stream(&tuples), &mut |_: &[u8], _: &[Field]| {
            seen += 1;
            if seen == 2 {
                Err("gone")
            } else {
                Ok(())
            }
        });
        assert_eq!(got, Err(Stop::Row("gone")));
        assert_eq!(seen, 2);
    }
}
