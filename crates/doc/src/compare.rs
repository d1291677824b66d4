//! MongoDB's cross-type comparison and sort order.
//!
//! Values of different types compare by a canonical type rank (MinKey < null/undefined <
//! numbers < symbol/string < object < array < binData < ObjectId < bool < date <
//! timestamp < regex < DBPointer < JavaScript < JavaScriptWithScope < MaxKey); numbers compare by
//! value across int32, int64, double and decimal128 (NaN sorts below every other number).
//! Strings (and symbols), wherever they are nested, compare by bytes or under a
//! [`Collation`]; field names always compare by bytes.

use std::cmp::Ordering;

use bson::{Bson, Document};

use crate::collation::Collation;

/// The canonical type rank MongoDB sorts by (BSON spec "comparison/sort order").
pub fn type_rank(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 5,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 10,
        Bson::Symbol(_) | Bson::String(_) => 15,
        Bson::Document(_) => 20,
        Bson::Array(_) => 25,
        Bson::Binary(_) => 30,
        Bson::ObjectId(_) => 35,
        Bson::Boolean(_) => 40,
        Bson::DateTime(_) => 45,
        Bson::Timestamp(_) => 47,
        Bson::RegularExpression(_) => 50,
        Bson::DbPointer(_) => 55,
        Bson::JavaScriptCode(_) => 60,
        Bson::JavaScriptCodeWithScope(_) => 65,
        Bson::MaxKey => 127,
    }
}

/// MongoDB's name for a value's BSON type (`$type`'s alias, as error messages show it).
pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// A number as a value that orders exactly across int64 and double.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Int(i64),
    Float(f64),
}

/// The numeric value of a number, if `v` is one. Decimal128 values are converted through
/// their string form (bson 2 has no decimal arithmetic).
pub fn as_number(v: &Bson) -> Option<Number> {
    match v {
        Bson::Int32(i) => Some(Number::Int(i64::from(*i))),
        Bson::Int64(i) => Some(Number::Int(*i)),
        Bson::Double(d) => Some(Number::Float(*d)),
        Bson::Decimal128(d) => Some(Number::Float(decimal_to_f64(d))),
        _ => None,
    }
}

/// A decimal128 as the nearest double (NaN for NaN, ±inf for infinities).
pub fn decimal_to_f64(d: &bson::Decimal128) -> f64 {
    let s = d.to_string();
    match s.as_str() {
        "NaN" | "-NaN" => f64::NAN,
        "Infinity" => f64::INFINITY,
        "-Infinity" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or(f64::NAN),
    }
}

/// The value of a number as f64 (lossy for large int64).
pub fn as_f64(v: &Bson) -> Option<f64> {
    as_number(v).map(|n| match n {
        Number::Int(i) => i as f64,
        Number::Float(f) => f,
    })
}

/// Compares two numbers by value. NaN equals NaN and sorts below all other numbers.
pub fn cmp_numbers(a: Number, b: Number) -> Ordering {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x.cmp(&y),
        (Number::Float(x), Number::Float(y)) => cmp_f64(x, y),
        (Number::Int(x), Number::Float(y)) => cmp_int_float(x, y),
        (Number::Float(x), Number::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

fn cmp_f64(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // -0.0 == 0.0, as in MongoDB.
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison of an int64 with a double, without the rounding of `i as f64`.
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 as f64 is exact; any double >= it exceeds every i64.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    // |t| < 2^63 here, so the cast is exact.
    let ti = t as i64;
    match i.cmp(&ti) {
        Ordering::Equal => {
            let frac = f - t;
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

/// Compares two values in MongoDB's total order (no collation: strings compare by bytes).
pub fn cmp_values(a: &Bson, b: &Bson) -> Ordering {
    cmp_values_with(a, b, None)
}

/// Compares two values in MongoDB's total order, strings under `coll` (`None` is the simple
/// collation: bytes).
pub fn cmp_values_with(a: &Bson, b: &Bson, coll: Option<&Collation>) -> Ordering {
    let (ra, rb) = (type_rank(a), type_rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Null | Bson::Undefined, _) | (Bson::MinKey, _) | (Bson::MaxKey, _) => {
            Ordering::Equal
        }
        _ if ra == 10 => cmp_numbers(as_number(a).unwrap(), as_number(b).unwrap()),
        _ if ra == 15 => match coll {
            None => str_of(a).cmp(str_of(b)),
            Some(c) => c.compare(str_of(a), str_of(b)),
        },
        (Bson::Document(x), Bson::Document(y)) => cmp_documents_with(x, y, coll),
        (Bson::Array(x), Bson::Array(y)) => cmp_arrays(x, y, coll),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(&y.code)
            .then_with(|| cmp_documents_with(&x.scope, &y.scope, coll)),
        (Bson::DbPointer(_), Bson::DbPointer(_)) => Ordering::Equal,
        _ => Ordering::Equal,
    }
}

fn str_of(v: &Bson) -> &str {
    match v {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

/// Compares two documents field by field: type rank of the value, then field name, then
/// value; a shorter prefix sorts first.
pub fn cmp_documents(a: &Document, b: &Document) -> Ordering {
    cmp_documents_with(a, b, None)
}

/// As [`cmp_documents`], with string values compared under `coll`.
pub fn cmp_documents_with(a: &Document, b: &Document, coll: Option<&Collation>) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.cmp(kb))
                    .then_with(|| cmp_values_with(va, vb, coll));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn cmp_arrays(a: &[Bson], b: &[Bson], coll: Option<&Collation>) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        let o = cmp_values_with(x, y, coll);
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Whether two values are equal in MongoDB's sense (`1 == 1.0 == NumberLong(1)`).
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    cmp_values(a, b) == Ordering::Equal
}

/// As [`values_equal`], with strings compared under `coll`.
pub fn values_equal_with(a: &Bson, b: &Bson, coll: Option<&Collation>) -> bool {
    cmp_values_with(a, b, coll) == Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{bson, doc};

    #[test]
    fn numbers_compare_across_types() {
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(1), &Bson::Int32(1)));
        assert_eq!(
            cmp_values(&Bson::Int64(i64::MAX), &Bson::Double(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            cmp_values(&Bson::Double(f64::NAN), &Bson::Int32(-5)),
            Ordering::Less
        );
        assert!(values_equal(&Bson::Double(-0.0), &Bson::Int32(0)));
        assert_eq!(
            cmp_values(&Bson::Double(1.5), &Bson::Int64(1)),
            Ordering::Greater
        );
    }

    #[test]
    fn type_order() {
        let order = [
            Bson::MinKey,
            Bson::Null,
            bson!(3),
            bson!("a"),
            bson!({"a": 1}),
            bson!([1]),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            bson!(false),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::MaxKey,
        ];
        for w in order.windows(2) {
            assert_eq!(
                cmp_values(&w[0], &w[1]),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn documents_and_arrays() {
        assert_eq!(
            cmp_documents(&doc! {"a": 1}, &doc! {"a": 1, "b": 1}),
            Ordering::Less
        );
        assert_eq!(cmp_values(&bson!([1, 2]), &bson!([1, 3])), Ordering::Less);
        assert_eq!(
            cmp_documents(&doc! {"a": 1}, &doc! {"b": 1}),
            Ordering::Less
        );
    }
}
