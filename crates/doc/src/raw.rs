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

fn document(raw: &RawDocument, depth: usize, max: usize) -> Result<Document, RawError> {
    check(depth, max)?;
    let mut d = Document::new();
    for item in raw {
        let (k, v) = item.map_err(invalid)?;
        d.insert(k.to_owned(), value(v, depth, max)?);
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
