//! Values rendered the way MongoDB's `BSONElement::toString` does, for error messages
//! (`{_id: 1}`, `a: [ 1, 2 ]`, `{ b: "x" }`).

use bson::{Bson, Document};

/// `name: value`, as MongoDB prints one element.
pub(crate) fn element(name: &str, v: &Bson) -> String {
    format!("{name}: {}", value(v))
}

/// The `_id` element of a document for messages (`_id: 1`), or `no id`.
pub(crate) fn id_of(doc: &Document) -> String {
    doc.get("_id")
        .map_or_else(|| "no id".to_string(), |v| element("_id", v))
}

/// A value as MongoDB prints it inside messages.
pub(crate) fn value(v: &Bson) -> String {
    match v {
        Bson::Double(d) => double(*d),
        Bson::String(s) => format!("\"{s}\""),
        Bson::Document(d) => document(d),
        Bson::Array(a) => {
            if a.is_empty() {
                "[]".to_string()
            } else {
                let items: Vec<String> = a.iter().map(value).collect();
                format!("[ {} ]", items.join(", "))
            }
        }
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Decimal128(d) => format!("NumberDecimal(\"{d}\")"),
        Bson::ObjectId(o) => format!("ObjectId('{}')", o.to_hex()),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::RegularExpression(r) => format!("/{}/{}", r.pattern, r.options),
        Bson::MinKey => "MinKey".to_string(),
        Bson::MaxKey => "MaxKey".to_string(),
        Bson::Symbol(s) => format!("\"{s}\""),
        Bson::JavaScriptCode(c) => c.clone(),
        Bson::JavaScriptCodeWithScope(c) => c.code.clone(),
        Bson::Binary(b) => {
            let hex = doc::keystring::hex_upper(&b.bytes);
            format!("BinData({}, {hex})", u8::from(b.subtype))
        }
        Bson::DbPointer(_) => "DBRef(...)".to_string(),
    }
}

/// A document as MongoDB prints it: `{ a: 1, b: "x" }`, `{}` when empty.
pub(crate) fn document(d: &Document) -> String {
    if d.is_empty() {
        return "{}".to_string();
    }
    let items: Vec<String> = d.iter().map(|(k, v)| element(k, v)).collect();
    format!("{{ {} }}", items.join(", "))
}

fn double(d: f64) -> String {
    if d.is_nan() {
        "nan".to_string()
    } else if d.is_infinite() {
        if d > 0.0 {
            "inf".to_string()
        } else {
            "-inf".to_string()
        }
    } else if d.fract() == 0.0 && d.abs() < 1e16 {
        format!("{d:.1}")
    } else {
        d.to_string()
    }
}

pub(crate) use doc::type_name;
