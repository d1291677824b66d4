//! Helpers over the `bson` crate that every layer shares.
//!
//! - [`compare`]: MongoDB's cross-type comparison and sort order, optionally under a
//!   [`collation`].
//! - [`collation`]: collation documents and locale-aware string comparison (ICU4X).
//! - [`path`]: dotted paths, literal and array-expanding.
//! - [`keystring`]: the order-preserving byte encoding (MongoDB's KeyString V1) used for
//!   `_id` keys, index keys and resume tokens, so that byte order is value order.
//! - [`raw`]: raw BSON to `Document` in one pass, with bounded nesting.

pub mod collation;
pub mod compare;
pub mod encode;
pub mod keystring;
pub mod path;
pub mod raw;

pub use collation::Collation;
pub use compare::{
    cmp_documents, cmp_values, cmp_values_with, type_name, values_equal, values_equal_with,
};
pub use path::{get_path, lookup_all, remove_path, set_path};

/// The bytes a document takes encoded as BSON, computed without encoding it.
pub fn encoded_len(d: &bson::Document) -> usize {
    4 + d
        .iter()
        .map(|(k, v)| 1 + k.len() + 1 + value_len(v))
        .sum::<usize>()
        + 1
}

/// The bytes a value takes encoded as a BSON element's value.
pub fn value_len(v: &bson::Bson) -> usize {
    use bson::Bson;
    match v {
        Bson::Double(_) | Bson::DateTime(_) | Bson::Timestamp(_) | Bson::Int64(_) => 8,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 4 + s.len() + 1,
        Bson::Document(d) => encoded_len(d),
        Bson::Array(a) => {
            4 + a
                .iter()
                .enumerate()
                .map(|(i, v)| 1 + i.checked_ilog10().unwrap_or(0) as usize + 2 + value_len(v))
                .sum::<usize>()
                + 1
        }
        Bson::Binary(b) => 4 + 1 + b.bytes.len(),
        Bson::ObjectId(_) => 12,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::RegularExpression(r) => r.pattern.len() + 1 + r.options.len() + 1,
        Bson::JavaScriptCodeWithScope(c) => 4 + 4 + c.code.len() + 1 + encoded_len(&c.scope),
        Bson::Int32(_) => 4,
        Bson::Decimal128(_) => 16,
        Bson::DbPointer(_) => {
            // Not inspectable: measure by encoding this one value.
            bson::to_vec(&bson::doc! {"": v.clone()}).map_or(0, |b| b.len().saturating_sub(7))
        }
    }
}

#[cfg(test)]
mod encoded_len_tests {
    use bson::{Bson, doc, oid::ObjectId};

    #[test]
    fn matches_the_encoder() {
        let d = doc! {
            "s": "text", "i": 1, "l": 2i64, "f": 1.5, "b": true, "n": Bson::Null,
            "o": ObjectId::new(), "t": bson::Timestamp { time: 1, increment: 2 },
            "dt": bson::DateTime::now(), "a": [1, "x", {"y": [[]]}], "d": {"e": {}},
            "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "re": bson::Regex { pattern: "a.*".into(), options: "i".into() },
            "big": (0..120).map(Bson::Int32).collect::<Vec<_>>(),
            "dec": bson::Decimal128::from_bytes([0; 16]), "min": Bson::MinKey,
        };
        assert_eq!(super::encoded_len(&d), bson::to_vec(&d).unwrap().len());
    }
}
