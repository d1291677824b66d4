//! Raw BSON to [`Document`] in one pass, with bounded nesting.
//!
//! `bson`'s own conversion (`Document::try_from(&RawDocument)`) turns every nested
//! document into an owned copy of its bytes before converting it, so a value at depth `d` is
//! copied `d` times, and a caller that must bound the nesting first (the wire decoder: the
//! conversion recurses once per level) walks the bytes twice. Measured on the commands a
//! single-document insert and a change stream `getMore` send, decoding was the largest
//! single cost of the command path. This walks `bson`'s raw iterator once (which validates
//! lengths, UTF-8 and types exactly as before) and builds each value in place.

use bson::{Binary, Bson, Document, JavaScriptCodeWithScope, RawArray, RawBsonRef, RawDocument};

/// Why raw bytes could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// Malformed BSON (the message is `bson`'s).
    Invalid(String),
    /// Nested deeper than the limit.
    TooDeep(usize),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Invalid(m) => f.write_str(m),
            RawError::TooDeep(max) => write!(f, "BSON nesting deeper than {max}"),
        }
    }
}

fn invalid(e: bson::raw::Error) -> RawError {
    RawError::Invalid(e.to_string())
}

/// Converts a raw document whose nesting (the document itself counting as 1) is at most
/// `max_depth`.
///
/// # Errors
/// Malformed BSON, or nesting past `max_depth`.
pub fn to_document(raw: &RawDocument, max_depth: usize) -> Result<Document, RawError> {
    if let Some(d) = fast::document(raw.as_bytes(), 1, max_depth, &mut None) {
        return Ok(d);
    }
    document(raw, 1, max_depth)
}

/// Converts raw document bytes (the whole of `bytes` must be one document).
///
/// # Errors
/// As [`to_document`].
pub fn bytes_to_document(bytes: &[u8], max_depth: usize) -> Result<Document, RawError> {
    to_document(RawDocument::from_bytes(bytes).map_err(invalid)?, max_depth)
}

fn check(depth: usize, max: usize) -> Result<(), RawError> {
    if depth > max {
        Err(RawError::TooDeep(max))
    } else {
        Ok(())
    }
}

/// Converts raw command bytes like [`bytes_to_document`], and names the first top-level
/// field that appears more than once (the document keeps its last value): mongod's
/// command parsers refuse such a command, and noticing it here costs no second walk.
///
/// # Errors
/// As [`to_document`].
pub fn bytes_to_command(
    bytes: &[u8],
    max_depth: usize,
) -> Result<(Document, Option<String>), RawError> {
    let mut repeated = None;
    if let Some(d) = fast::document(bytes, 1, max_depth, &mut repeated) {
        return Ok((d, repeated));
    }
    repeated = None;
    let raw = RawDocument::from_bytes(bytes).map_err(invalid)?;
    let d = fields(raw, 1, max_depth, &mut repeated)?;
    Ok((d, repeated))
}

fn document(raw: &RawDocument, depth: usize, max: usize) -> Result<Document, RawError> {
    fields(raw, depth, max, &mut None)
}

/// A document's fields, noting in `repeated` the first key that appears twice.
fn fields(
    raw: &RawDocument,
    depth: usize,
    max: usize,
    repeated: &mut Option<String>,
) -> Result<Document, RawError> {
    check(depth, max)?;
    let mut d = Document::new();
    for item in raw {
        let (k, v) = item.map_err(invalid)?;
        if d.insert(k.to_owned(), value(v, depth, max)?).is_some() && repeated.is_none() {
            *repeated = Some(k.to_owned());
        }
    }
    Ok(d)
}

fn array(raw: &RawArray, depth: usize, max: usize) -> Result<Vec<Bson>, RawError> {
    check(depth, max)?;
    let mut a = Vec::new();
    for item in raw {
        a.push(value(item.map_err(invalid)?, depth, max)?);
    }
    Ok(a)
}

/// A value found in a document at `depth`.
fn value(v: RawBsonRef<'_>, depth: usize, max: usize) -> Result<Bson, RawError> {
    Ok(match v {
        RawBsonRef::Double(x) => Bson::Double(x),
        RawBsonRef::String(s) => Bson::String(s.to_owned()),
        RawBsonRef::Document(d) => Bson::Document(document(d, depth + 1, max)?),
        RawBsonRef::Array(a) => Bson::Array(array(a, depth + 1, max)?),
        RawBsonRef::Boolean(b) => Bson::Boolean(b),
        RawBsonRef::Null => Bson::Null,
        RawBsonRef::Int32(i) => Bson::Int32(i),
        RawBsonRef::Int64(i) => Bson::Int64(i),
        RawBsonRef::Timestamp(t) => Bson::Timestamp(t),
        RawBsonRef::DateTime(t) => Bson::DateTime(t),
        RawBsonRef::ObjectId(o) => Bson::ObjectId(o),
        RawBsonRef::Decimal128(x) => Bson::Decimal128(x),
        RawBsonRef::Binary(b) => Bson::Binary(Binary {
            subtype: b.subtype,
            bytes: b.bytes.to_vec(),
        }),
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                code: c.code.to_owned(),
                scope: document(c.scope, depth + 1, max)?,
            })
        }
        RawBsonRef::MinKey => Bson::MinKey,
        RawBsonRef::MaxKey => Bson::MaxKey,
        RawBsonRef::Undefined => Bson::Undefined,
        // Rare kinds hold no nested documents: `bson`'s conversion is exact for them.
        other @ (RawBsonRef::RegularExpression(_)
        | RawBsonRef::JavaScriptCode(_)
        | RawBsonRef::Symbol(_)
        | RawBsonRef::DbPointer(_)) => Bson::try_from(other).map_err(invalid)?,
    })
}

/// The common case of the conversion, read straight from the bytes.
///
/// `bson`'s raw iterator costs about 1,000 instructions per value (a `getMore` command
/// decoded in 13,600): it finds each element's size through a type dispatch, then reads
/// the value through another, with error context built along the way. This reads each
/// element once, for the types commands and documents are made of. It checks what
/// `bson`'s reading checks (lengths, terminators, UTF-8 of keys and strings, booleans
/// 0 or 1, nesting), and gives up, returning `None`, on anything else: malformed bytes, or
/// a rare type (regular expression, code, symbol, DBPointer, old binary). The checked
/// path then reads the document and says what is wrong.
mod fast {
    use bson::spec::BinarySubtype;
    use bson::{Binary, Bson, DateTime, Decimal128, Document, Timestamp, oid::ObjectId};

    fn len_at(b: &[u8]) -> Option<usize> {
        usize::try_from(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)).ok()
    }

    fn fixed<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
        b.get(..N)?.try_into().ok()
    }

    /// The elements of the document that is the whole of `b`, each passed to `f` with its
    /// key; false if `b` is not a well-formed document of common types.
    fn elements(b: &[u8], depth: usize, max: usize, mut f: impl FnMut(&str, Bson)) -> Option<()> {
        if depth > max || b.len() < 5 || len_at(b)? != b.len() || b[b.len() - 1] != 0 {
            return None;
        }
        let end = b.len() - 1;
        let mut at = 4;
        while at < end {
            let t = b[at];
            let key_len = b[at + 1..end].iter().position(|&c| c == 0)?;
            let key = std::str::from_utf8(&b[at + 1..at + 1 + key_len]).ok()?;
            let v = at + 1 + key_len + 1;
            let (value, n) = value(t, &b[v..end], depth, max)?;
            f(key, value);
            at = v + n;
        }
        Some(())
    }

    pub(super) fn document(
        b: &[u8],
        depth: usize,
        max: usize,
        repeated: &mut Option<String>,
    ) -> Option<Document> {
        let mut d = Document::new();
        elements(b, depth, max, |k, v| {
            if d.insert(k.to_owned(), v).is_some() && repeated.is_none() {
                *repeated = Some(k.to_owned());
            }
        })?;
        Some(d)
    }

    fn array(b: &[u8], depth: usize, max: usize) -> Option<Vec<Bson>> {
        let mut a = Vec::new();
        elements(b, depth, max, |_, v| a.push(v))?;
        Some(a)
    }

    /// A value of type `t` at the start of `rest` (which runs to its document's
    /// terminator), and its size.
    fn value(t: u8, rest: &[u8], depth: usize, max: usize) -> Option<(Bson, usize)> {
        Some(match t {
            0x01 => (Bson::Double(f64::from_le_bytes(fixed(rest)?)), 8),
            0x02 => {
                let n = 4 + len_at(rest)?;
                let s = rest.get(..n)?;
                if n < 5 || s[n - 1] != 0 {
                    return None;
                }
                let text = std::str::from_utf8(&s[4..n - 1]).ok()?;
                (Bson::String(text.to_owned()), n)
            }
            0x03 => {
                let n = len_at(rest)?;
                let sub = document(rest.get(..n)?, depth + 1, max, &mut None)?;
                (Bson::Document(sub), n)
            }
            0x04 => {
                let n = len_at(rest)?;
                (Bson::Array(array(rest.get(..n)?, depth + 1, max)?), n)
            }
            0x05 => {
                let n = len_at(rest)?.checked_add(5)?;
                if n >= i32::MAX as usize {
                    return None;
                }
                let s = rest.get(..n)?;
                let subtype = BinarySubtype::from(s[4]);
                if subtype == BinarySubtype::BinaryOld {
                    return None;
                }
                let bytes = s[5..].to_vec();
                (Bson::Binary(Binary { subtype, bytes }), n)
            }
            0x06 => (Bson::Undefined, 0),
            0x07 => (Bson::ObjectId(ObjectId::from_bytes(fixed(rest)?)), 12),
            0x08 => match rest.first()? {
                0 => (Bson::Boolean(false), 1),
                1 => (Bson::Boolean(true), 1),
                _ => return None,
            },
            0x09 => {
                let ms = i64::from_le_bytes(fixed(rest)?);
                (Bson::DateTime(DateTime::from_millis(ms)), 8)
            }
            0x0A => (Bson::Null, 0),
            0x10 => (Bson::Int32(i32::from_le_bytes(fixed(rest)?)), 4),
            0x11 => {
                let increment = u32::from_le_bytes(fixed(rest)?);
                let time = u32::from_le_bytes(fixed(rest.get(4..)?)?);
                (Bson::Timestamp(Timestamp { time, increment }), 8)
            }
            0x12 => (Bson::Int64(i64::from_le_bytes(fixed(rest)?)), 8),
            0x13 => (Bson::Decimal128(Decimal128::from_bytes(fixed(rest)?)), 16),
            0x7F => (Bson::MaxKey, 0),
            0xFF => (Bson::MinKey, 0),
            _ => return None,
        })
    }
}

/// One element of the BSON document in `b` whose element starts at `at`: its key, type
/// byte and value bytes, and where the next element starts. A walk of trusted bytes (what
/// Eddy wrote and checked with a CRC): it checks bounds, lengths and terminators, never
/// UTF-8 or nested documents; `None` for anything malformed, and the caller then uses
/// `bson`'s checked reading, which says what is wrong.
pub fn element(b: &[u8], at: usize) -> Option<(&[u8], u8, &[u8], usize)> {
    let t = *b.get(at)?;
    let key_end = at + 1 + b.get(at + 1..)?.iter().position(|&c| c == 0)?;
    let key = &b[at + 1..key_end];
    let v = key_end + 1;
    let len_at = |i: usize| -> Option<usize> {
        let n = i32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?);
        usize::try_from(n).ok()
    };
    let cstr_end =
        |i: usize| -> Option<usize> { Some(i + b.get(i..)?.iter().position(|&c| c == 0)? + 1) };
    let n = match t {
        0x01 | 0x09 | 0x11 | 0x12 => 8,
        0x02 | 0x0D | 0x0E => 4 + len_at(v)?,
        0x03 | 0x04 | 0x0F => len_at(v)?,
        0x05 => 5 + len_at(v)?,
        0x07 => 12,
        0x08 => 1,
        0x06 | 0x0A | 0x7F | 0xFF => 0,
        0x0B => cstr_end(cstr_end(v)?)? - v,
        0x0C => 4 + len_at(v)? + 12,
        0x10 => 4,
        0x13 => 16,
        _ => return None,
    };
    let value = b.get(v..v.checked_add(n)?)?;
    // Strings, documents and arrays end with a NUL, and hold at least that.
    if matches!(t, 0x02..=0x04 | 0x0D | 0x0E) && (value.len() < 5 || value.last() != Some(&0)) {
        return None;
    }
    Some((key, t, value, v + n))
}

/// An element as [`elements`] lists it: key, type byte, value bytes.
pub type Element<'a> = (&'a [u8], u8, &'a [u8]);

/// The elements of a whole document (as [`element`] reads them), `None` if its bytes are
/// malformed.
pub fn elements(doc: &[u8]) -> Option<Vec<Element<'_>>> {
    let declared = usize::try_from(i32::from_le_bytes(doc.get(..4)?.try_into().ok()?)).ok()?;
    if declared != doc.len() || doc.last() != Some(&0) {
        return None;
    }
    let mut out = Vec::new();
    let mut at = 4;
    while at < doc.len() - 1 {
        let (k, t, v, next) = element(doc, at)?;
        out.push((k, t, v));
        at = next;
    }
    (at == doc.len() - 1).then_some(out)
}

/// Builds one BSON document in a single buffer, element by element, sub-documents opened
/// and closed in turn: for the hot paths that assemble documents mostly out of BSON that
/// exists already (a change event is an oplog entry's documents plus a few fields).
/// Keys must not contain NUL (they are Eddy's own, or copied from BSON).
pub struct Writer {
    buf: Vec<u8>,
    /// Where each open document starts (the root first).
    open: Vec<usize>,
}

impl Writer {
    /// A root document, with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity.max(5));
        buf.extend_from_slice(&[0; 4]);
        Writer { buf, open: vec![0] }
    }

    fn key(&mut self, t: u8, key: &[u8]) {
        debug_assert!(!key.contains(&0), "a BSON key holds no NUL");
        self.buf.push(t);
        self.buf.extend_from_slice(key);
        self.buf.push(0);
    }

    /// A value already encoded, of type `t` (a document's bytes, say).
    pub fn raw(&mut self, key: &[u8], t: u8, value: &[u8]) {
        self.key(t, key);
        self.buf.extend_from_slice(value);
    }

    pub fn str(&mut self, key: &str, v: &str) {
        self.key(0x02, key.as_bytes());
        self.buf
            .extend_from_slice(&(v.len() as i32 + 1).to_le_bytes());
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }

    /// A string written by `f` into the buffer (no intermediate `String`).
    pub fn str_with(&mut self, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
        self.key(0x02, key.as_bytes());
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(&mut self.buf);
        self.buf.push(0);
        let n = (self.buf.len() - at - 4) as i32;
        self.buf[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }

    pub fn i64(&mut self, key: &str, v: i64) {
        self.key(0x12, key.as_bytes());
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn i32(&mut self, key: &str, v: i32) {
        self.key(0x10, key.as_bytes());
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bool(&mut self, key: &str, v: bool) {
        self.key(0x08, key.as_bytes());
        self.buf.push(u8::from(v));
    }

    pub fn timestamp(&mut self, key: &str, ts: bson::Timestamp) {
        self.key(0x11, key.as_bytes());
        let v = (u64::from(ts.time) << 32) | u64::from(ts.increment);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn datetime(&mut self, key: &str, t: bson::DateTime) {
        self.key(0x09, key.as_bytes());
        self.buf
            .extend_from_slice(&t.timestamp_millis().to_le_bytes());
    }

    pub fn binary(&mut self, key: &str, subtype: u8, bytes: &[u8]) {
        self.key(0x05, key.as_bytes());
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_le_bytes());
        self.buf.push(subtype);
        self.buf.extend_from_slice(bytes);
    }

    /// Opens a sub-document; [`Writer::end`] closes it.
    pub fn begin(&mut self, key: &str) {
        self.key(0x03, key.as_bytes());
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0; 4]);
    }

    /// Closes the innermost open document.
    pub fn end(&mut self) {
        let start = self.open.pop().expect("a document is open");
        self.buf.push(0);
        let n = (self.buf.len() - start) as i32;
        self.buf[start..start + 4].copy_from_slice(&n.to_le_bytes());
    }

    /// The bytes written so far.
    pub fn peek(&self) -> &[u8] {
        &self.buf
    }

    /// The document's bytes (closing what is open).
    pub fn finish(mut self) -> Vec<u8> {
        while !self.open.is_empty() {
            self.end();
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, spec::BinarySubtype};

    fn sample() -> Document {
        doc! {
            "_id": ObjectId::new(),
            "s": "text é",
            "n": 1, "l": 2i64, "d": 1.5, "b": true, "z": null,
            "arr": [1, "two", {"three": [3, [4]]}],
            "nested": {"a": {"b": {"c": 1}}},
            "bin": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7; 16]},
            "old": Binary {subtype: BinarySubtype::BinaryOld, bytes: vec![1, 2, 3]},
            "re": bson::Regex {pattern: "a.c".into(), options: "mi".into()},
            "ts": bson::Timestamp {time: 5, increment: 6},
            "dt": bson::DateTime::from_millis(12345),
            "dec": bson::Decimal128::from_bytes([3; 16]),
            "js": Bson::JavaScriptCode("f()".into()),
            "jsws": JavaScriptCodeWithScope {code: "g()".into(), scope: doc! {"x": {"y": 1}}},
            "sym": Bson::Symbol("sym".into()),
            "min": Bson::MinKey, "max": Bson::MaxKey, "undef": Bson::Undefined,
        }
    }

    /// The fast path either reads a document exactly as the checked path does, or gives
    /// up: never accepts what the checked path refuses. Checked over byte mutations of
    /// documents of common types (which the fast path reads) and of every type.
    #[test]
    fn fast_path_agrees_with_the_checked_path() {
        let common = doc! {
            "_id": ObjectId::from_bytes([1; 12]), "s": "text é", "n": 1, "l": 2i64, "d": 1.5,
            "b": true, "f": false, "z": null, "arr": [1, "two", {"three": [3, [4]]}],
            "nested": {"a": {"b": {"c": 1}}}, "e": "", "ed": {}, "ea": [],
            "bin": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7; 16]},
            "ts": bson::Timestamp {time: 5, increment: 6}, "dt": bson::DateTime::from_millis(-1),
            "dec": bson::Decimal128::from_bytes([3; 16]), "min": Bson::MinKey,
            "max": Bson::MaxKey, "undef": Bson::Undefined,
        };
        let checked = |b: &[u8], max: usize| -> Result<(Document, Option<String>), RawError> {
            let raw = RawDocument::from_bytes(b).map_err(invalid)?;
            let mut repeated = None;
            Ok((fields(raw, 1, max, &mut repeated)?, repeated))
        };
        let good = bson::to_vec(&common).unwrap();
        let mut r = None;
        assert_eq!(
            fast::document(&good, 1, 100, &mut r).as_ref(),
            Some(&common)
        );
        assert!(fast::document(&good, 1, 3, &mut None).is_none(), "too deep");
        assert!(fast::document(&bson::to_vec(&sample()).unwrap(), 1, 100, &mut None).is_none());
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for base in [good, bson::to_vec(&sample()).unwrap()] {
            for _ in 0..20_000 {
                let mut b = base.clone();
                for _ in 0..1 + rand(3) {
                    let i = rand(b.len());
                    b[i] = match rand(4) {
                        0 => 0,
                        1 => 0xFF,
                        2 => b[i].wrapping_add(1),
                        _ => rand(256) as u8,
                    };
                }
                if rand(8) == 0 {
                    b.truncate(rand(b.len()));
                }
                let mut repeated = None;
                match fast::document(&b, 1, 100, &mut repeated) {
                    Some(d) => {
                        accepted += 1;
                        // (Compared encoded: a mutated double may be NaN.)
                        let (want, want_repeated) =
                            checked(&b, 100).expect("checked path reads it");
                        let enc = |d: &Document| bson::to_vec(d).unwrap();
                        assert_eq!((enc(&d), repeated), (enc(&want), want_repeated), "{b:?}");
                    }
                    None => refused += 1,
                }
            }
        }
        assert!(accepted > 1000 && refused > 1000, "{accepted} {refused}");
    }

    #[test]
    fn converts_like_bson_does() {
        let d = sample();
        let bytes = bson::to_vec(&d).unwrap();
        let raw = RawDocument::from_bytes(&bytes).unwrap();
        // (`bson` sorts a regex's options, so compare with its conversion.)
        assert_eq!(
            to_document(raw, 100).unwrap(),
            Document::try_from(raw).unwrap()
        );
    }

    /// The walk reads every element of every type as `bson` does, and never panics.
    #[test]
    fn elements_walk_every_type() {
        let bytes = bson::to_vec(&sample()).unwrap();
        let walked = elements(&bytes).expect("walks");
        let raw = RawDocument::from_bytes(&bytes).unwrap();
        let keys: Vec<&str> = raw.iter().map(|e| e.unwrap().0).collect();
        assert_eq!(walked.len(), keys.len());
        for ((k, t, v), name) in walked.iter().zip(&keys) {
            assert_eq!(*k, name.as_bytes());
            // Re-assembled alone, each element is the same value.
            let mut w = Writer::with_capacity(64);
            w.raw(k, *t, v);
            let one = w.finish();
            let one = RawDocument::from_bytes(&one).unwrap();
            assert_eq!(one.get(name).unwrap(), raw.get(name).unwrap(), "{name}");
        }
        for n in 0..bytes.len() {
            let _ = elements(&bytes[..n]);
            let mut d = bytes.clone();
            d[n] = 0xff;
            let _ = elements(&d);
        }
    }

    #[test]
    fn writer_builds_what_bson_encodes() {
        let mut w = Writer::with_capacity(8);
        w.str("s", "text");
        w.str_with("h", |b| b.extend_from_slice(b"ABC"));
        w.i64("n", -5);
        w.timestamp(
            "ts",
            bson::Timestamp {
                time: 7,
                increment: 9,
            },
        );
        w.datetime("dt", bson::DateTime::from_millis(1234));
        w.binary("u", 4, &[1; 16]);
        w.begin("sub");
        w.str("db", "d");
        w.begin("deeper");
        w.end();
        w.end();
        let sub = bson::to_vec(&doc! {"x": 1}).unwrap();
        w.raw(b"raw", 0x03, &sub);
        let want = doc! {
            "s": "text", "h": "ABC", "n": -5i64,
            "ts": bson::Timestamp { time: 7, increment: 9 },
            "dt": bson::DateTime::from_millis(1234),
            "u": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] },
            "sub": {"db": "d", "deeper": {}},
            "raw": {"x": 1},
        };
        assert_eq!(w.finish(), bson::to_vec(&want).unwrap());
    }

    #[test]
    fn bounds_nesting() {
        let mut d = doc! {"x": 1};
        for _ in 0..9 {
            d = doc! {"a": d};
        }
        // 10 documents deep.
        let bytes = bson::to_vec(&d).unwrap();
        assert!(bytes_to_document(&bytes, 10).is_ok());
        assert_eq!(bytes_to_document(&bytes, 9), Err(RawError::TooDeep(9)));
        let arr = bson::to_vec(&doc! {"a": [[[1]]]}).unwrap();
        assert!(bytes_to_document(&arr, 4).is_ok());
        assert!(bytes_to_document(&arr, 3).is_err());
    }

    #[test]
    fn refuses_malformed_bytes() {
        let mut bytes = bson::to_vec(&doc! {"s": "abc"}).unwrap();
        // The string's bytes are no longer UTF-8.
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        assert!(matches!(
            bytes_to_document(&bytes, 10),
            Err(RawError::Invalid(_))
        ));
        assert!(bytes_to_document(&bytes[..bytes.len() - 1], 10).is_err());
    }
}
