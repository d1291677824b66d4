//! Type expressions: `$type`, `$isNumber`, `$convert` and the `$toX` shorthands.

use std::str::FromStr;

use bson::oid::ObjectId;
use bson::{Bson, DateTime, Decimal128};
use errors::{MongoError, Result};

use super::ops::{eval_named, fmt_double};
use super::{Args, Ctx, err, num, type_name};

/// A ConversionFailure (241) error.
pub(crate) fn conversion_error(msg: impl Into<String>) -> MongoError {
    MongoError {
        code: 241,
        code_name: "ConversionFailure".into(),
        message: msg.into(),
        labels: Vec::new(),
        extra: None,
    }
}

pub(crate) fn handles(name: &str) -> bool {
    matches!(
        name,
        "$type"
            | "$isNumber"
            | "$toString"
            | "$toInt"
            | "$toLong"
            | "$toDouble"
            | "$toDecimal"
            | "$toObjectId"
            | "$toBool"
            | "$toDate"
    )
}

pub(crate) fn eval(name: &str, mut vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let v = vals.pop().flatten();
    match name {
        "$type" => Ok(Some(Bson::String(type_name(v.as_ref()).to_string()))),
        "$isNumber" => Ok(Some(Bson::Boolean(
            v.as_ref().is_some_and(|v| num::kind(v).is_some()),
        ))),
        _ => {
            let target = &name[3..];
            let target = match target {
                "String" => "string",
                "Int" => "int",
                "Long" => "long",
                "Double" => "double",
                "Decimal" => "decimal",
                "ObjectId" => "objectId",
                "Bool" => "bool",
                _ => "date",
            };
            match v {
                None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
                Some(v) => convert(&v, target).map(Some),
            }
        }
    }
}

fn target_name(v: &Bson) -> Result<&'static str> {
    let code = match v {
        Bson::String(s) => {
            return match s.as_str() {
                "double" | "string" | "objectId" | "bool" | "date" | "int" | "long" | "decimal" => {
                    Ok(crate::filter::type_alias(match s.as_str() {
                        "double" => 1,
                        "string" => 2,
                        "objectId" => 7,
                        "bool" => 8,
                        "date" => 9,
                        "int" => 16,
                        "long" => 18,
                        _ => 19,
                    }))
                }
                _ => Err(MongoError::bad_value(format!("Unknown type name: {s}"))),
            };
        }
        other => super::ops::as_int(other)
            .ok_or_else(|| err(50900, "$convert's 'to' argument must be a string or number"))?,
    };
    match code {
        1 | 2 | 7 | 8 | 9 | 16 | 18 | 19 => Ok(crate::filter::type_alias(code as i32)),
        _ => Err(MongoError::bad_value(format!("Invalid type code: {code}"))),
    }
}

/// `$convert`.
pub(crate) fn eval_convert(args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let to = eval_named(args, "to", cx)?;
    let input = eval_named(args, "input", cx)?;
    let to = match to {
        None | Some(Bson::Null) => return Ok(Some(Bson::Null)),
        Some(t) => target_name(&t)?,
    };
    if matches!(input, None | Some(Bson::Null) | Some(Bson::Undefined)) {
        return match args.get("onNull") {
            Some(n) => n.eval(cx),
            None => Ok(Some(Bson::Null)),
        };
    }
    let input = input.unwrap_or(Bson::Null);
    match convert(&input, to) {
        Ok(v) => Ok(Some(v)),
        Err(e) => match args.get("onError") {
            Some(n) if e.code == 241 => n.eval(cx),
            _ => Err(e),
        },
    }
}

fn unsupported(v: &Bson, to: &str) -> MongoError {
    conversion_error(format!(
        "Unsupported conversion from {} to {to} in $convert with no onError value",
        type_name(Some(v))
    ))
}

fn overflow(v: &Bson) -> MongoError {
    conversion_error(format!(
        "Conversion would overflow target type in $convert with no onError value: {v}"
    ))
}

fn float_to_int(v: &Bson, f: f64, lo: f64, hi: f64) -> Result<i64> {
    if f.is_nan() {
        return Err(conversion_error(
            "Attempt to convert NaN value to integer type in $convert with no onError value",
        ));
    }
    let t = f.trunc();
    if !(lo..hi).contains(&t) {
        return Err(overflow(v));
    }
    Ok(t as i64)
}

fn parse_failed(s: &str) -> MongoError {
    conversion_error(format!(
        "Failed to parse number '{s}' in $convert with no onError value: Did not consume whole string."
    ))
}

fn parse_int(s: &str) -> Result<i64> {
    let t = s.trim_start_matches(['+', '-']);
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) || s.len() - t.len() > 1 {
        return Err(parse_failed(s));
    }
    s.parse::<i64>().map_err(|_| {
        conversion_error(format!(
            "Failed to parse number '{s}' in $convert with no onError value: Overflow"
        ))
    })
}

fn parse_float(s: &str) -> Result<f64> {
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "nan" | "-nan" => return Ok(f64::NAN),
        "inf" | "infinity" => return Ok(f64::INFINITY),
        "-inf" | "-infinity" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return Err(parse_failed(s));
    }
    s.parse::<f64>().map_err(|_| parse_failed(s))
}

/// Converts a non-null value to the named type (`"int"`, `"string"`, ...).
pub(crate) fn convert(v: &Bson, to: &str) -> Result<Bson> {
    Ok(match to {
        "double" => Bson::Double(match v {
            Bson::Double(d) => *d,
            Bson::Int32(_) | Bson::Int64(_) => num::f(v),
            Bson::Decimal128(_) => {
                let f = num::f(v);
                if f.is_infinite() && !v.to_string().contains("Infinity") {
                    return Err(overflow(v));
                }
                f
            }
            Bson::Boolean(b) => f64::from(u8::from(*b)),
            Bson::String(s) => parse_float(s)?,
            Bson::DateTime(d) => d.timestamp_millis() as f64,
            _ => return Err(unsupported(v, "double")),
        }),
        "int" => Bson::Int32(match v {
            Bson::Int32(i) => *i,
            Bson::Int64(i) => i32::try_from(*i).map_err(|_| overflow(v))?,
            Bson::Double(_) | Bson::Decimal128(_) => {
                float_to_int(v, num::f(v), -2_147_483_648.0, 2_147_483_648.0)? as i32
            }
            Bson::Boolean(b) => i32::from(*b),
            Bson::String(s) => i32::try_from(parse_int(s)?).map_err(|_| overflow(v))?,
            _ => return Err(unsupported(v, "int")),
        }),
        "long" => Bson::Int64(match v {
            Bson::Int32(i) => i64::from(*i),
            Bson::Int64(i) => *i,
            Bson::Double(_) | Bson::Decimal128(_) => {
                float_to_int(v, num::f(v), -9.223_372_036_854_776e18, 9.223_372_036_854_776e18)?
            }
            Bson::Boolean(b) => i64::from(*b),
            Bson::String(s) => parse_int(s)?,
            Bson::DateTime(d) => d.timestamp_millis(),
            _ => return Err(unsupported(v, "long")),
        }),
        "decimal" => match v {
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
                num::to_decimal(v)
            }
            Bson::Boolean(b) => num::to_decimal(&Bson::Int32(i32::from(*b))),
            Bson::String(s) => {
                Bson::Decimal128(Decimal128::from_str(s).map_err(|_| parse_failed(s))?)
            }
            Bson::DateTime(d) => num::to_decimal(&Bson::Int64(d.timestamp_millis())),
            _ => return Err(unsupported(v, "decimal")),
        },
        "bool" => Bson::Boolean(match v {
            Bson::Boolean(b) => *b,
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
                super::truthy(v)
            }
            _ => true,
        }),
        "string" => Bson::String(match v {
            Bson::String(s) | Bson::Symbol(s) => s.clone(),
            Bson::Int32(i) => i.to_string(),
            Bson::Int64(i) => i.to_string(),
            Bson::Double(d) => fmt_double(*d),
            Bson::Decimal128(d) => d.to_string(),
            Bson::Boolean(b) => b.to_string(),
            Bson::DateTime(d) => super::date::iso_string(d.timestamp_millis()),
            Bson::ObjectId(o) => o.to_hex(),
            Bson::RegularExpression(r) => format!("/{}/{}", r.pattern, r.options),
            Bson::JavaScriptCode(c) => c.clone(),
            Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
            _ => return Err(unsupported(v, "string")),
        }),
        "objectId" => match v {
            Bson::ObjectId(_) => v.clone(),
            Bson::String(s) => Bson::ObjectId(ObjectId::parse_str(s).map_err(|_| {
                conversion_error(format!(
                    "Failed to parse objectId '{s}' in $convert with no onError value: Invalid string length for parsing to OID, expected 24 but found {}",
                    s.len()
                ))
            })?),
            _ => return Err(unsupported(v, "objectId")),
        },
        _ => Bson::DateTime(match v {
            Bson::DateTime(d) => *d,
            Bson::Int64(i) => DateTime::from_millis(*i),
            Bson::Double(_) | Bson::Decimal128(_) => DateTime::from_millis(float_to_int(
                v,
                num::f(v),
                -9.223_372_036_854_776e18,
                9.223_372_036_854_776e18,
            )?),
            Bson::String(s) => DateTime::from_millis(super::date::parse_date_string(s, None)?),
            Bson::ObjectId(o) => DateTime::from_millis(o.timestamp().timestamp_millis() / 1000 * 1000),
            Bson::Timestamp(t) => DateTime::from_millis(i64::from(t.time) * 1000),
            _ => return Err(unsupported(v, "date")),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(
            convert(&Bson::String("42".into()), "int").unwrap(),
            Bson::Int32(42)
        );
        assert_eq!(convert(&Bson::Double(2.9), "int").unwrap(), Bson::Int32(2));
        assert_eq!(
            convert(&Bson::Double(-2.9), "long").unwrap(),
            Bson::Int64(-2)
        );
        assert!(convert(&Bson::String("4.5".into()), "int").is_err());
        assert_eq!(
            convert(&Bson::String("4.5".into()), "double").unwrap(),
            Bson::Double(4.5)
        );
        assert_eq!(convert(&Bson::Int64(1 << 40), "int").unwrap_err().code, 241);
        assert_eq!(
            convert(&Bson::Double(1.0), "string").unwrap(),
            Bson::String("1".into())
        );
        assert_eq!(
            convert(&Bson::Double(2.5), "string").unwrap(),
            Bson::String("2.5".into())
        );
        assert_eq!(
            convert(&Bson::String("".into()), "bool").unwrap(),
            Bson::Boolean(true)
        );
        assert_eq!(
            convert(&Bson::Int32(0), "bool").unwrap(),
            Bson::Boolean(false)
        );
        assert_eq!(
            convert(&Bson::Boolean(true), "int").unwrap(),
            Bson::Int32(1)
        );
        assert!(convert(&Bson::Double(f64::NAN), "int").is_err());
        assert_eq!(
            convert(&Bson::String("2018-03-03T00:00:00Z".into()), "date").unwrap(),
            Bson::DateTime(DateTime::from_millis(1_520_035_200_000))
        );
        assert!(convert(&Bson::Int32(5), "date").is_err());
        assert!(convert(&Bson::String("zz".into()), "objectId").is_err());
    }
}
