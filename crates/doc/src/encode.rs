//! [`Document`] to BSON bytes, written directly.
//!
//! `bson::to_vec` goes through serde: every value is a serde call, every element type
//! is discovered through a state machine. On the insert path it cost about 4,300
//! instructions for a seven-field document, and the oplog entry's small documents
//! (`o2: {_id}`, `lsid`) cost about 1,900 each through `RawDocumentBuf::from_document`.
//! This writes the same bytes with one match per value. The types it does not write
//! itself (regular expressions, code with scope, DBPointer, old binary, keys holding NUL)
//! are left to `bson::to_vec`, which gives their exact bytes or its error.

use bson::{Bson, Document, spec::BinarySubtype};

/// `doc` encoded: the bytes `bson::to_vec(doc)` gives.
///
/// # Errors
/// What `bson::to_vec` reports (a key holding NUL, say).
pub fn encode(doc: &Document) -> Result<Vec<u8>, bson::ser::Error> {
    let mut out = Vec::with_capacity(128);
    encode_into(doc, &mut out)?;
    Ok(out)
}

/// Appends `doc`'s encoding to `out` (as [`encode`]).
///
/// # Errors
/// As [`encode`]; `out` is then as it was.
pub fn encode_into(doc: &Document, out: &mut Vec<u8>) -> Result<(), bson::ser::Error> {
    let start = out.len();
    if write_doc(out, fields(doc)) {
        return Ok(());
    }
    out.truncate(start);
    doc.to_writer(&mut *out)
        .inspect_err(|_| out.truncate(start))
}

/// `doc` encoded with `_id` first, holding `id`, and its other fields after it in order:
/// the stored form of a document to insert, without building it as a `Document` first.
///
/// # Errors
/// As [`encode`].
pub fn encode_with_id(doc: &Document, id: &Bson) -> Result<Vec<u8>, bson::ser::Error> {
    let mut out = Vec::with_capacity(128);
    let rest = doc.iter().filter(|(k, _)| *k != "_id");
    let fields = std::iter::once(("_id", id)).chain(rest.map(|(k, v)| (k.as_str(), v)));
    if write_doc(&mut out, fields) {
        return Ok(out);
    }
    let mut d = Document::new();
    d.insert("_id", id.clone());
    for (k, v) in doc.iter().filter(|(k, _)| *k != "_id") {
        d.insert(k.clone(), v.clone());
    }
    bson::to_vec(&d)
}

fn fields(d: &Document) -> impl Iterator<Item = (&str, &Bson)> {
    d.iter().map(|(k, v)| (k.as_str(), v))
}

/// Writes one document; false (with `out` in an unspecified state) when a value needs
/// `bson`'s own encoding.
fn write_doc<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = (&'a str, &'a Bson)>) -> bool {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for (k, v) in fields {
        if !write_element(out, k.as_bytes(), v) {
            return false;
        }
    }
    close(out, start)
}

fn write_array(out: &mut Vec<u8>, items: &[Bson]) -> bool {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut key = [0; 20];
    for (i, v) in items.iter().enumerate() {
        if !write_element(out, index_key(&mut key, i), v) {
            return false;
        }
    }
    close(out, start)
}

fn close(out: &mut Vec<u8>, start: usize) -> bool {
    out.push(0);
    let Ok(n) = i32::try_from(out.len() - start) else {
        return false;
    };
    out[start..start + 4].copy_from_slice(&n.to_le_bytes());
    true
}

/// The decimal digits of `i` in `buf`.
fn index_key(buf: &mut [u8; 20], mut i: usize) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (i % 10) as u8;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    &buf[at..]
}

fn write_element(out: &mut Vec<u8>, key: &[u8], v: &Bson) -> bool {
    if key.contains(&0) {
        return false;
    }
    let t = v.element_type() as u8;
    out.push(t);
    out.extend_from_slice(key);
    out.push(0);
    match v {
        Bson::Double(x) => out.extend_from_slice(&x.to_le_bytes()),
        Bson::String(s) | Bson::JavaScriptCode(s) | Bson::Symbol(s) => write_str(out, s),
        Bson::Document(d) => return write_doc(out, fields(d)),
        Bson::Array(a) => return write_array(out, a),
        Bson::Binary(b) => {
            if b.subtype == BinarySubtype::BinaryOld || b.bytes.len() > i32::MAX as usize {
                return false;
            }
            out.extend_from_slice(&(b.bytes.len() as i32).to_le_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
        }
        Bson::ObjectId(o) => out.extend_from_slice(&o.bytes()),
        Bson::Boolean(b) => out.push(u8::from(*b)),
        Bson::DateTime(d) => out.extend_from_slice(&d.timestamp_millis().to_le_bytes()),
        Bson::Null | Bson::Undefined | Bson::MaxKey | Bson::MinKey => {}
        Bson::Int32(i) => out.extend_from_slice(&i.to_le_bytes()),
        Bson::Int64(i) => out.extend_from_slice(&i.to_le_bytes()),
        Bson::Timestamp(ts) => {
            out.extend_from_slice(&ts.increment.to_le_bytes());
            out.extend_from_slice(&ts.time.to_le_bytes());
        }
        Bson::Decimal128(d) => out.extend_from_slice(&d.bytes()),
        Bson::RegularExpression(_) | Bson::JavaScriptCodeWithScope(_) | Bson::DbPointer(_) => {
            return false;
        }
    }
    true
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Binary, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp, doc, oid::ObjectId};

    fn every_type() -> Document {
        doc! {
            "d": 1.5, "s": "str", "e": "", "sub": {"a": 1, "b": {"c": [1, "x", {"y": null}]}},
            "arr": (0..12).map(Bson::Int32).collect::<Vec<_>>(), "empty": [], "ed": {},
            "bin": Binary {subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3]},
            "uuid": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7; 16]},
            "oid": ObjectId::from_bytes([3; 12]), "t": true, "f": false,
            "dt": bson::DateTime::from_millis(-5), "null": null, "undef": Bson::Undefined,
            "i": -7i32, "l": 1i64 << 40, "ts": Timestamp {time: 5, increment: 9},
            "dec": Decimal128::from_bytes([9; 16]), "max": Bson::MaxKey, "min": Bson::MinKey,
            "code": Bson::JavaScriptCode("f()".into()), "sym": Bson::Symbol("s".into()),
            "uni": "é漢字",
        }
    }

    #[test]
    fn same_bytes_as_bson() {
        let d = every_type();
        assert_eq!(encode(&d).unwrap(), bson::to_vec(&d).unwrap());
        let big: Vec<Bson> = (0..1001).map(Bson::Int64).collect();
        let d = doc! {"big": big};
        assert_eq!(encode(&d).unwrap(), bson::to_vec(&d).unwrap());
    }

    #[test]
    fn types_left_to_bson_still_encode() {
        for v in [
            Bson::RegularExpression(Regex {
                pattern: "a.b".into(),
                options: "im".into(),
            }),
            Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                code: "x".into(),
                scope: doc! {"x": 1},
            }),
            Bson::Binary(Binary {
                subtype: BinarySubtype::BinaryOld,
                bytes: vec![1, 2],
            }),
        ] {
            let d = doc! {"a": 1, "nested": {"v": [v]}};
            assert_eq!(encode(&d).unwrap(), bson::to_vec(&d).unwrap());
        }
        let mut bad = Document::new();
        bad.insert("a\0b", 1);
        assert!(encode(&bad).is_err());
        assert!(encode_with_id(&bad, &Bson::Int32(1)).is_err());
    }

    #[test]
    fn id_goes_first() {
        let d = every_type();
        let mut want = doc! {"_id": 4};
        want.extend(d.clone());
        assert_eq!(
            encode_with_id(&d, &Bson::Int32(4)).unwrap(),
            bson::to_vec(&want).unwrap()
        );
        let mut later = doc! {"a": 1, "_id": "x", "b": [Bson::RegularExpression(Regex {pattern: "r".into(), options: String::new()})]};
        let want = doc! {"_id": "x", "a": 1, "b": [Bson::RegularExpression(Regex {pattern: "r".into(), options: String::new()})]};
        assert_eq!(
            encode_with_id(&later, &Bson::String("x".into())).unwrap(),
            bson::to_vec(&want).unwrap()
        );
        later.remove("b");
        let want = doc! {"_id": "x", "a": 1};
        assert_eq!(
            encode_with_id(&later, &Bson::String("x".into())).unwrap(),
            bson::to_vec(&want).unwrap()
        );
    }
}
