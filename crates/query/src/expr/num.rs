//! Numeric arithmetic with MongoDB's result types: int32 widens to int64 on overflow, int64
//! to double; any double makes a double, any decimal128 a decimal128. Decimal addition,
//! subtraction and multiplication are exact while the result fits in 34 digits; other decimal
//! operations go through doubles.

use std::str::FromStr;

use bson::{Bson, Decimal128};
use doc::compare::as_f64;

/// The numeric type of a value, ordered by width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Int,
    Long,
    Double,
    Dec,
}

/// The numeric kind of `v`, if it is a number.
pub(crate) fn kind(v: &Bson) -> Option<Kind> {
    match v {
        Bson::Int32(_) => Some(Kind::Int),
        Bson::Int64(_) => Some(Kind::Long),
        Bson::Double(_) => Some(Kind::Double),
        Bson::Decimal128(_) => Some(Kind::Dec),
        _ => None,
    }
}

/// An integral number as i64 (int32/int64 only).
pub(crate) fn int(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    }
}

/// Any number as f64.
pub(crate) fn f(v: &Bson) -> f64 {
    as_f64(v).unwrap_or(f64::NAN)
}

/// An int64 as the narrowest of int32/int64.
pub(crate) fn narrow(i: i64) -> Bson {
    i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32)
}

/// An exact decimal: coefficient × 10^exponent.
#[derive(Debug, Clone, Copy)]
struct Dec {
    coef: i128,
    exp: i32,
}

const MAX_COEF: i128 = 9_999_999_999_999_999_999_999_999_999_999_999;

fn parse_dec(s: &str) -> Option<Dec> {
    let (mant, exp) = match s.find(['E', 'e']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant.strip_prefix('+').unwrap_or(mant)),
    };
    let (int_part, frac) = mant.split_once('.').unwrap_or((mant, ""));
    if int_part.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int_part}{frac}");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 36 {
        return None;
    }
    let coef: i128 = digits.parse().ok()?;
    Some(Dec {
        coef: if neg { -coef } else { coef },
        exp: exp - frac.len() as i32,
    })
}

fn to_dec(v: &Bson) -> Option<Dec> {
    match v {
        Bson::Int32(i) => Some(Dec {
            coef: i128::from(*i),
            exp: 0,
        }),
        Bson::Int64(i) => Some(Dec {
            coef: i128::from(*i),
            exp: 0,
        }),
        Bson::Double(d) if d.is_finite() => parse_dec(&format!("{d:e}")),
        Bson::Decimal128(d) => parse_dec(&d.to_string()),
        _ => None,
    }
}

fn dec_bson(d: Dec) -> Option<Bson> {
    let mut d = d;
    while d.coef.abs() > MAX_COEF {
        if d.coef % 10 != 0 {
            return None;
        }
        d.coef /= 10;
        d.exp += 1;
    }
    Decimal128::from_str(&format!("{}E{}", d.coef, d.exp))
        .ok()
        .map(Bson::Decimal128)
}

/// A double as a decimal128.
pub(crate) fn dec_from_f64(x: f64) -> Bson {
    let s = if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        format!("{x:e}")
    };
    Decimal128::from_str(&s).map_or(Bson::Double(x), Bson::Decimal128)
}

/// Any number as a decimal128.
pub(crate) fn to_decimal(v: &Bson) -> Bson {
    match v {
        Bson::Decimal128(_) => v.clone(),
        Bson::Double(d) => dec_from_f64(*d),
        _ => to_dec(v)
            .and_then(dec_bson)
            .unwrap_or_else(|| dec_from_f64(f(v))),
    }
}

fn align(a: Dec, b: Dec) -> Option<(i128, i128, i32)> {
    let exp = a.exp.min(b.exp);
    let scale = |d: Dec| -> Option<i128> {
        let diff = u32::try_from(d.exp - exp).ok()?;
        d.coef.checked_mul(10i128.checked_pow(diff)?)
    };
    Some((scale(a)?, scale(b)?, exp))
}

fn dec_op(a: &Bson, b: &Bson, op: char) -> Bson {
    let exact = (|| {
        let (x, y) = (to_dec(a)?, to_dec(b)?);
        let r = match op {
            '+' => {
                let (x, y, exp) = align(x, y)?;
                Dec {
                    coef: x.checked_add(y)?,
                    exp,
                }
            }
            '-' => {
                let (x, y, exp) = align(x, y)?;
                Dec {
                    coef: x.checked_sub(y)?,
                    exp,
                }
            }
            _ => Dec {
                coef: x.coef.checked_mul(y.coef)?,
                exp: x.exp + y.exp,
            },
        };
        dec_bson(r)
    })();
    exact.unwrap_or_else(|| {
        let (x, y) = (f(a), f(b));
        dec_from_f64(match op {
            '+' => x + y,
            '-' => x - y,
            _ => x * y,
        })
    })
}

fn widest(a: &Bson, b: &Bson) -> Kind {
    kind(a)
        .unwrap_or(Kind::Double)
        .max(kind(b).unwrap_or(Kind::Double))
}

/// `a + b` for two numbers.
pub(crate) fn add(a: &Bson, b: &Bson) -> Bson {
    match widest(a, b) {
        Kind::Int | Kind::Long => {
            let (x, y) = (int(a).unwrap_or(0), int(b).unwrap_or(0));
            match x.checked_add(y) {
                Some(s) if widest(a, b) == Kind::Int => narrow(s),
                Some(s) => Bson::Int64(s),
                None => Bson::Double(x as f64 + y as f64),
            }
        }
        Kind::Double => Bson::Double(f(a) + f(b)),
        Kind::Dec => dec_op(a, b, '+'),
    }
}

/// `a - b` for two numbers.
pub(crate) fn sub(a: &Bson, b: &Bson) -> Bson {
    match widest(a, b) {
        Kind::Int | Kind::Long => {
            let (x, y) = (int(a).unwrap_or(0), int(b).unwrap_or(0));
            match x.checked_sub(y) {
                Some(s) if widest(a, b) == Kind::Int => narrow(s),
                Some(s) => Bson::Int64(s),
                None => Bson::Double(x as f64 - y as f64),
            }
        }
        Kind::Double => Bson::Double(f(a) - f(b)),
        Kind::Dec => dec_op(a, b, '-'),
    }
}

/// `a * b` for two numbers.
pub(crate) fn mul(a: &Bson, b: &Bson) -> Bson {
    match widest(a, b) {
        Kind::Int | Kind::Long => {
            let (x, y) = (int(a).unwrap_or(0), int(b).unwrap_or(0));
            match x.checked_mul(y) {
                Some(s) if widest(a, b) == Kind::Int => narrow(s),
                Some(s) => Bson::Int64(s),
                None => Bson::Double(x as f64 * y as f64),
            }
        }
        Kind::Double => Bson::Double(f(a) * f(b)),
        Kind::Dec => dec_op(a, b, '*'),
    }
}

/// `a / b` (double, or decimal if either is decimal); `None` when dividing by zero.
pub(crate) fn div(a: &Bson, b: &Bson) -> Option<Bson> {
    let y = f(b);
    if y == 0.0 {
        return None;
    }
    let q = f(a) / y;
    Some(if widest(a, b) == Kind::Dec {
        dec_from_f64(q)
    } else {
        Bson::Double(q)
    })
}

/// `a % b` keeping integer types; `None` when the divisor is zero.
pub(crate) fn modulo(a: &Bson, b: &Bson) -> Option<Bson> {
    match widest(a, b) {
        Kind::Int | Kind::Long => {
            let (x, y) = (int(a)?, int(b)?);
            if y == 0 {
                return None;
            }
            let r = x.wrapping_rem(y);
            Some(if widest(a, b) == Kind::Int {
                narrow(r)
            } else {
                Bson::Int64(r)
            })
        }
        k => {
            let y = f(b);
            if y == 0.0 {
                return None;
            }
            let r = f(a) % y;
            Some(if k == Kind::Dec {
                dec_from_f64(r)
            } else {
                Bson::Double(r)
            })
        }
    }
}

/// A number with the same kind as `like` from an f64 (for unary double functions applied to
/// decimals).
pub(crate) fn same_kind_float(like: &Bson, x: f64) -> Bson {
    if matches!(like, Bson::Decimal128(_)) {
        dec_from_f64(x)
    } else {
        Bson::Double(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_overflow_widens() {
        assert_eq!(
            add(&Bson::Int32(i32::MAX), &Bson::Int32(1)),
            Bson::Int64(1 << 31)
        );
        assert_eq!(
            add(&Bson::Int64(i64::MAX), &Bson::Int32(1)),
            Bson::Double(9.223_372_036_854_776e18)
        );
        assert_eq!(mul(&Bson::Int32(3), &Bson::Int32(4)), Bson::Int32(12));
        assert_eq!(sub(&Bson::Int32(3), &Bson::Int64(4)), Bson::Int64(-1));
        assert_eq!(add(&Bson::Int32(3), &Bson::Double(0.5)), Bson::Double(3.5));
    }

    #[test]
    fn decimal_exact() {
        let a = Bson::Decimal128(Decimal128::from_str("0.1").unwrap());
        let b = Bson::Decimal128(Decimal128::from_str("0.2").unwrap());
        let s = add(&a, &b);
        assert_eq!(doc::compare::as_f64(&s), Some(0.3));
        assert!(matches!(s, Bson::Decimal128(_)));
        assert!(matches!(mul(&a, &Bson::Int32(3)), Bson::Decimal128(_)));
        assert_eq!(modulo(&Bson::Int32(7), &Bson::Int32(0)), None);
        assert_eq!(
            modulo(&Bson::Int32(-7), &Bson::Int32(2)),
            Some(Bson::Int32(-1))
        );
        assert_eq!(
            div(&Bson::Int32(1), &Bson::Int32(4)),
            Some(Bson::Double(0.25))
        );
    }
}
