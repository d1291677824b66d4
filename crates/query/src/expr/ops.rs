//! Expression operators: parsing their arguments and evaluating them.

use std::cmp::Ordering;
use std::hash::{BuildHasher, Hasher};

use bson::{Bson, Document};
use doc::Collation;
use doc::compare::{cmp_values_with, values_equal_with};
use errors::{MongoError, Result};

use super::accum::{Acc, AccKind};
use super::{
    Args, Budget, Ctx, Node, check_string_len, err, invalid_op, num, parse_node, truthy, type_name,
};
use crate::filter::Rx;

/// How an operator takes its arguments.
enum Spec {
    /// Positional, between min and max arguments.
    Pos(usize, usize),
    /// An object of named arguments: allowed, required.
    Named(&'static [&'static str], &'static [&'static str]),
    /// A date part extractor: a date expression or `{date, timezone}`.
    DatePart,
    Cond,
    GetField,
    Let,
}

const ANY: usize = usize::MAX;

#[rustfmt::skip]
const OPS: &[(&str, Spec)] = &[
    ("$add", Spec::Pos(0, ANY)), ("$subtract", Spec::Pos(2, 2)), ("$multiply", Spec::Pos(0, ANY)),
    ("$divide", Spec::Pos(2, 2)), ("$mod", Spec::Pos(2, 2)), ("$abs", Spec::Pos(1, 1)),
    ("$ceil", Spec::Pos(1, 1)), ("$floor", Spec::Pos(1, 1)), ("$exp", Spec::Pos(1, 1)),
    ("$ln", Spec::Pos(1, 1)), ("$log", Spec::Pos(2, 2)), ("$log10", Spec::Pos(1, 1)),
    ("$pow", Spec::Pos(2, 2)), ("$sqrt", Spec::Pos(1, 1)), ("$round", Spec::Pos(1, 2)),
    ("$trunc", Spec::Pos(1, 2)),
    ("$eq", Spec::Pos(2, 2)), ("$ne", Spec::Pos(2, 2)), ("$gt", Spec::Pos(2, 2)),
    ("$gte", Spec::Pos(2, 2)), ("$lt", Spec::Pos(2, 2)), ("$lte", Spec::Pos(2, 2)),
    ("$cmp", Spec::Pos(2, 2)),
    ("$and", Spec::Pos(0, ANY)), ("$or", Spec::Pos(0, ANY)), ("$not", Spec::Pos(1, 1)),
    ("$cond", Spec::Cond), ("$ifNull", Spec::Pos(2, ANY)),
    ("$switch", Spec::Named(&["branches", "default"], &["branches"])),
    ("$concat", Spec::Pos(0, ANY)), ("$substr", Spec::Pos(3, 3)), ("$substrBytes", Spec::Pos(3, 3)),
    ("$substrCP", Spec::Pos(3, 3)), ("$toLower", Spec::Pos(1, 1)), ("$toUpper", Spec::Pos(1, 1)),
    ("$strLenBytes", Spec::Pos(1, 1)), ("$strLenCP", Spec::Pos(1, 1)), ("$split", Spec::Pos(2, 2)),
    ("$trim", Spec::Named(&["input", "chars"], &["input"])),
    ("$ltrim", Spec::Named(&["input", "chars"], &["input"])),
    ("$rtrim", Spec::Named(&["input", "chars"], &["input"])),
    ("$indexOfBytes", Spec::Pos(2, 4)), ("$indexOfCP", Spec::Pos(2, 4)),
    ("$regexMatch", Spec::Named(&["input", "regex", "options"], &["input", "regex"])),
    ("$regexFind", Spec::Named(&["input", "regex", "options"], &["input", "regex"])),
    ("$regexFindAll", Spec::Named(&["input", "regex", "options"], &["input", "regex"])),
    ("$replaceOne", Spec::Named(&["input", "find", "replacement"], &["input", "find", "replacement"])),
    ("$replaceAll", Spec::Named(&["input", "find", "replacement"], &["input", "find", "replacement"])),
    ("$strcasecmp", Spec::Pos(2, 2)),
    ("$size", Spec::Pos(1, 1)), ("$arrayElemAt", Spec::Pos(2, 2)), ("$first", Spec::Pos(1, 1)),
    ("$last", Spec::Pos(1, 1)),
    ("$filter", Spec::Named(&["input", "as", "cond", "limit"], &["input", "cond"])),
    ("$map", Spec::Named(&["input", "as", "in"], &["input", "in"])),
    ("$reduce", Spec::Named(&["input", "initialValue", "in"], &["input", "initialValue", "in"])),
    ("$in", Spec::Pos(2, 2)), ("$concatArrays", Spec::Pos(0, ANY)), ("$slice", Spec::Pos(2, 3)),
    ("$zip", Spec::Named(&["inputs", "useLongestLength", "defaults"], &["inputs"])),
    ("$range", Spec::Pos(2, 3)), ("$reverseArray", Spec::Pos(1, 1)),
    ("$indexOfArray", Spec::Pos(2, 4)), ("$isArray", Spec::Pos(1, 1)),
    ("$sortArray", Spec::Named(&["input", "sortBy"], &["input", "sortBy"])),
    ("$maxN", Spec::Named(&["input", "n"], &["input", "n"])),
    ("$minN", Spec::Named(&["input", "n"], &["input", "n"])),
    ("$firstN", Spec::Named(&["input", "n"], &["input", "n"])),
    ("$lastN", Spec::Named(&["input", "n"], &["input", "n"])),
    ("$median", Spec::Named(&["input", "method"], &["input", "method"])),
    ("$percentile", Spec::Named(&["input", "p", "method"], &["input", "p", "method"])),
    ("$setUnion", Spec::Pos(0, ANY)), ("$setIntersection", Spec::Pos(0, ANY)),
    ("$setDifference", Spec::Pos(2, 2)), ("$setEquals", Spec::Pos(2, ANY)),
    ("$setIsSubset", Spec::Pos(2, 2)), ("$anyElementTrue", Spec::Pos(1, 1)),
    ("$allElementsTrue", Spec::Pos(1, 1)),
    ("$type", Spec::Pos(1, 1)),
    ("$convert", Spec::Named(&["input", "to", "onError", "onNull", "format", "base"], &["input", "to"])),
    ("$toString", Spec::Pos(1, 1)), ("$toInt", Spec::Pos(1, 1)), ("$toLong", Spec::Pos(1, 1)),
    ("$toDouble", Spec::Pos(1, 1)), ("$toDecimal", Spec::Pos(1, 1)), ("$toObjectId", Spec::Pos(1, 1)),
    ("$toBool", Spec::Pos(1, 1)), ("$toDate", Spec::Pos(1, 1)), ("$isNumber", Spec::Pos(1, 1)),
    ("$year", Spec::DatePart), ("$month", Spec::DatePart), ("$dayOfMonth", Spec::DatePart),
    ("$dayOfWeek", Spec::DatePart), ("$dayOfYear", Spec::DatePart), ("$hour", Spec::DatePart),
    ("$minute", Spec::DatePart), ("$second", Spec::DatePart), ("$millisecond", Spec::DatePart),
    ("$week", Spec::DatePart), ("$isoWeek", Spec::DatePart), ("$isoWeekYear", Spec::DatePart),
    ("$isoDayOfWeek", Spec::DatePart),
    ("$dateToString", Spec::Named(&["date", "format", "timezone", "onNull"], &["date"])),
    ("$dateFromString", Spec::Named(&["dateString", "format", "timezone", "onError", "onNull"], &["dateString"])),
    ("$dateTrunc", Spec::Named(&["date", "unit", "binSize", "timezone", "startOfWeek"], &["date", "unit"])),
    ("$dateAdd", Spec::Named(&["startDate", "unit", "amount", "timezone"], &["startDate", "unit", "amount"])),
    ("$dateSubtract", Spec::Named(&["startDate", "unit", "amount", "timezone"], &["startDate", "unit", "amount"])),
    ("$dateDiff", Spec::Named(&["startDate", "endDate", "unit", "timezone", "startOfWeek"], &["startDate", "endDate", "unit"])),
    ("$dateToParts", Spec::Named(&["date", "timezone", "iso8601"], &["date"])),
    ("$dateFromParts", Spec::Named(&["year", "month", "day", "hour", "minute", "second", "millisecond", "isoWeekYear", "isoWeek", "isoDayOfWeek", "timezone"], &[])),
    ("$let", Spec::Let),
    ("$getField", Spec::GetField),
    ("$setField", Spec::Named(&["field", "input", "value"], &["field", "input", "value"])),
    ("$unsetField", Spec::Named(&["field", "input"], &["field", "input"])),
    ("$mergeObjects", Spec::Pos(0, ANY)), ("$objectToArray", Spec::Pos(1, 1)),
    ("$arrayToObject", Spec::Pos(1, 1)), ("$rand", Spec::Pos(0, 0)),
    ("$sum", Spec::Pos(0, ANY)), ("$avg", Spec::Pos(0, ANY)), ("$min", Spec::Pos(0, ANY)),
    ("$max", Spec::Pos(0, ANY)), ("$stdDevPop", Spec::Pos(0, ANY)), ("$stdDevSamp", Spec::Pos(0, ANY)),
    ("$binarySize", Spec::Pos(1, 1)), ("$bsonSize", Spec::Pos(1, 1)),
];

fn positional(v: &Bson) -> Result<Vec<Node>> {
    match v {
        Bson::Array(a) => a.iter().map(parse_node).collect(),
        other => Ok(vec![parse_node(other)?]),
    }
}

fn named(name: &str, v: &Bson, allowed: &[&str], required: &[&str]) -> Result<Vec<(String, Node)>> {
    let Bson::Document(d) = v else {
        return Err(err(
            40441,
            format!("{name} only supports an object as its argument"),
        ));
    };
    let mut out = Vec::new();
    for (k, v) in d {
        if !allowed.contains(&k.as_str()) {
            return Err(err(40442, format!("Unrecognized parameter to {name}: {k}")));
        }
        out.push((k.clone(), parse_node(v)?));
    }
    for r in required {
        if !d.contains_key(*r) {
            return Err(err(40443, format!("Missing '{r}' parameter to {name}")));
        }
    }
    Ok(out)
}

fn var_name(op: &str, v: &Bson) -> Result<String> {
    match v {
        Bson::String(s) if !s.is_empty() && !s.starts_with('$') => Ok(s.clone()),
        _ => Err(err(
            16866,
            format!("{op}: 'as' must be a valid variable name"),
        )),
    }
}

/// Parses `{name: v}` where `name` starts with `$`.
pub(crate) fn parse_op(name: &str, v: &Bson) -> Result<Node> {
    if name == "$literal" {
        return Ok(Node::Lit(v.clone()));
    }
    if matches!(name, "$function" | "$accumulator" | "$where") {
        return Err(MongoError::bad_value(format!(
            "{name} needs server-side JavaScript, which this server is built without (as mongod with javascriptEnabled: false)"
        )));
    }
    if name == "$meta" {
        return match v {
            Bson::String(m) if m == "textScore" => Ok(Node::TextScore),
            Bson::String(m) if m == "geoNearDistance" => Ok(Node::GeoDistance),
            Bson::String(m)
                if matches!(
                    m.as_str(),
                    "searchScore"
                        | "searchHighlights"
                        | "searchScoreDetails"
                        | "indexKey"
                        | "recordId"
                        | "sortKey"
                        | "geoNearDistance"
                        | "geoNearPoint"
                        | "randVal"
                        | "vectorSearchScore"
                        | "score"
                        | "scoreDetails"
                ) =>
            {
                Err(MongoError::bad_value(format!(
                    "$meta: \"{m}\" is not supported by Eddy"
                )))
            }
            other => Err(MongoError::with_code(
                17308,
                format!("Unsupported argument to $meta: {other}"),
            )),
        };
    }
    let Some((key, spec)) = OPS.iter().find(|(n, _)| *n == name) else {
        return Err(invalid_op(name));
    };
    let args = match spec {
        Spec::Pos(min, max) => {
            let list = match v {
                Bson::Document(d) if d.is_empty() && *max == 0 => Vec::new(),
                _ => positional(v)?,
            };
            if list.len() < *min || list.len() > *max {
                let msg = if min == max {
                    format!(
                        "Expression {name} takes exactly {min} arguments. {} were passed in.",
                        list.len()
                    )
                } else if *max == ANY {
                    format!(
                        "Expression {name} takes at least {min} arguments, but {} were passed in.",
                        list.len()
                    )
                } else {
                    format!(
                        "Expression {name} takes at least {min} arguments, and at most {max}, but {} were passed in.",
                        list.len()
                    )
                };
                return Err(err(16020, msg));
            }
            Args::List(list)
        }
        Spec::Named(allowed, required) => {
            let mut a = named(name, v, allowed, required)?;
            if matches!(*key, "$filter" | "$map") {
                if let Some(Bson::Document(d)) = Some(v) {
                    if let Some(as_) = d.get("as") {
                        let n = var_name(name, as_)?;
                        a.retain(|(k, _)| k != "as");
                        a.push(("as".into(), Node::Lit(Bson::String(n))));
                    }
                }
            }
            if *key == "$switch" {
                match a.iter().find(|(k, _)| k == "branches") {
                    Some((_, Node::Arr(bs))) => {
                        for b in bs {
                            let Node::Obj(fields) = b else {
                                return Err(err(
                                    40061,
                                    "$switch expected each branch to be an object",
                                ));
                            };
                            for (k, _) in fields {
                                if k != "case" && k != "then" {
                                    return Err(err(
                                        40063,
                                        format!(
                                            "$switch found an unknown argument to a branch: {k}"
                                        ),
                                    ));
                                }
                            }
                            if !fields.iter().any(|(k, _)| k == "case") {
                                return Err(err(
                                    40064,
                                    "$switch requires each branch have a 'case' expression",
                                ));
                            }
                            if !fields.iter().any(|(k, _)| k == "then") {
                                return Err(err(
                                    40065,
                                    "$switch requires each branch have a 'then' expression.",
                                ));
                            }
                        }
                    }
                    _ => return Err(err(40061, "$switch expected an array for 'branches'")),
                }
            }
            Args::Named(a)
        }
        Spec::DatePart => match v {
            Bson::Document(d) if d.keys().next().is_some_and(|k| !k.starts_with('$')) => {
                Args::Named(named(name, v, &["date", "timezone"], &["date"])?)
            }
            Bson::Array(a) if a.len() != 1 => {
                return Err(err(
                    40536,
                    format!(
                        "{name} accepts exactly one argument if given an array, but was given {}",
                        a.len()
                    ),
                ));
            }
            other => Args::List(positional(other)?),
        },
        Spec::Cond => match v {
            Bson::Array(a) => {
                if a.len() != 3 {
                    return Err(err(
                        16020,
                        format!(
                            "Expression $cond takes exactly 3 arguments. {} were passed in.",
                            a.len()
                        ),
                    ));
                }
                Args::List(a.iter().map(parse_node).collect::<Result<_>>()?)
            }
            Bson::Document(d) => {
                let mut list = Vec::new();
                for k in d.keys() {
                    if !matches!(k.as_str(), "if" | "then" | "else") {
                        return Err(err(17083, format!("Unrecognized parameter to $cond: {k}")));
                    }
                }
                for k in ["if", "then", "else"] {
                    let x = d
                        .get(k)
                        .ok_or_else(|| err(17080, format!("Missing '{k}' parameter to $cond")))?;
                    list.push(parse_node(x)?);
                }
                Args::List(list)
            }
            _ => {
                return Err(err(
                    16020,
                    "Expression $cond takes exactly 3 arguments. 1 were passed in.",
                ));
            }
        },
        Spec::GetField => match v {
            Bson::Document(d) if d.keys().next().is_some_and(|k| !k.starts_with('$')) => {
                let mut a = named(name, v, &["field", "input"], &["field"])?;
                if !a.iter().any(|(k, _)| k == "input") {
                    a.push(("input".into(), Node::Var("CURRENT".into(), Vec::new())));
                }
                Args::Named(a)
            }
            other => Args::Named(vec![
                ("field".into(), parse_node(other)?),
                ("input".into(), Node::Var("CURRENT".into(), Vec::new())),
            ]),
        },
        Spec::Let => {
            let Bson::Document(d) = v else {
                return Err(err(16874, "$let only supports an object as its argument"));
            };
            let vars = match d.get("vars") {
                Some(Bson::Document(vs)) => {
                    let mut out = Vec::new();
                    for (k, e) in vs {
                        if k.is_empty()
                            || k.starts_with('$')
                            || k.contains('.')
                            || k.chars()
                                .next()
                                .is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                                && k != "CURRENT"
                        {
                            return Err(err(
                                16867,
                                format!(
                                    "'{k}' starts with an invalid character for a user variable name"
                                ),
                            ));
                        }
                        out.push((k.clone(), parse_node(e)?));
                    }
                    out
                }
                Some(_) => return Err(err(10065, "invalid parameter: expected an object (vars)")),
                None => return Err(err(16876, "Missing 'vars' parameter to $let")),
            };
            let body = d
                .get("in")
                .ok_or_else(|| err(16877, "Missing 'in' parameter to $let"))?;
            if let Some(k) = d.keys().find(|k| *k != "vars" && *k != "in") {
                return Err(err(16875, format!("Unrecognized parameter to $let: {k}")));
            }
            Args::Named(vec![
                ("vars".into(), Node::Obj(vars)),
                ("in".into(), parse_node(body)?),
            ])
        }
    };
    Ok(Node::Op(key, args))
}

fn nullish(v: &Option<Bson>) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

fn tn(v: &Option<Bson>) -> &'static str {
    type_name(v.as_ref())
}

/// Compares two possibly-missing values: missing sorts below everything but MinKey.
pub(crate) fn cmp_opt(a: &Option<Bson>, b: &Option<Bson>, coll: Option<&Collation>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(Bson::MinKey)) => Ordering::Greater,
        (None, _) => Ordering::Less,
        (Some(Bson::MinKey), None) => Ordering::Less,
        (_, None) => Ordering::Greater,
        (Some(x), Some(y)) => cmp_values_with(x, y, coll),
    }
}

/// Evaluates an operator's operands, refusing once together they would hold more than
/// [`MAX_VALUE_BYTES`](super::MAX_VALUE_BYTES) (each operand may be a copy of a large value).
pub(crate) fn eval_all(nodes: &[Node], cx: &Ctx<'_>) -> Result<Vec<Option<Bson>>> {
    let mut budget = Budget::new("an expression's operands");
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let v = n.eval(cx)?;
        if let Some(v) = &v {
            budget.add(v)?;
        }
        out.push(v);
    }
    Ok(out)
}

fn arg<'a>(args: &'a Args, name: &str) -> Option<&'a Node> {
    args.get(name)
}

pub(crate) fn eval_named(args: &Args, name: &str, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    match arg(args, name) {
        Some(n) => n.eval(cx),
        None => Ok(None),
    }
}

/// An integral number as i64, if it is one (doubles must be integral).
pub(crate) fn as_int(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(*d as i64),
        Bson::Decimal128(_) => {
            let d = num::f(v);
            (d.fract() == 0.0 && d.abs() < 9.2e18).then_some(d as i64)
        }
        _ => None,
    }
}

fn random_f64() -> f64 {
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Formats a double as MongoDB prints it in strings.
pub(crate) fn fmt_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let a = d.abs();
    if a != 0.0 && !(1e-4..1e15).contains(&a) {
        let s = format!("{d:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match e.strip_prefix('-') {
            Some(x) => ('-', x),
            None => ('+', e),
        };
        return format!("{m}e{sign}{digits:0>2}");
    }
    if d == 0.0 && d.is_sign_negative() {
        return "-0".into();
    }
    format!("{d}")
}

/// Coerces a value to a string as `$concat`'s relatives (`$substr`, `$toLower`) do.
pub(crate) fn coerce_str(op: &str, v: &Option<Bson>) -> Result<String> {
    Ok(match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => String::new(),
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => s.clone(),
        Some(Bson::Int32(i)) => i.to_string(),
        Some(Bson::Int64(i)) => i.to_string(),
        Some(Bson::Double(d)) => fmt_double(*d),
        Some(Bson::Decimal128(d)) => d.to_string(),
        Some(Bson::DateTime(d)) => super::date::iso_string(d.timestamp_millis()),
        Some(Bson::Timestamp(t)) => format!("Timestamp({}, {})", t.time, t.increment),
        Some(Bson::JavaScriptCode(c)) => c.clone(),
        Some(other) => {
            return Err(err(
                16007,
                format!(
                    "{op}: can't convert from BSON type {} to String",
                    type_name(Some(other))
                ),
            ));
        }
    })
}

fn dedup(items: impl IntoIterator<Item = Bson>, coll: Option<&Collation>) -> Vec<Bson> {
    let mut out: Vec<Bson> = Vec::new();
    for v in items {
        if !out.iter().any(|x| values_equal_with(x, &v, coll)) {
            out.push(v);
        }
    }
    out
}

fn accumulate(
    kind: AccKind,
    vals: Vec<Option<Bson>>,
    coll: Option<&Collation>,
) -> Result<Option<Bson>> {
    let mut acc = Acc::new(kind);
    if vals.len() == 1 {
        match vals.into_iter().next().flatten() {
            Some(Bson::Array(a)) => {
                for v in a {
                    acc.add(Some(v), coll)?;
                }
            }
            v => acc.add(v, coll)?,
        }
    } else {
        for v in vals {
            acc.add(v, coll)?;
        }
    }
    Ok(Some(acc.finish()))
}

fn regex_args(op: &str, args: &Args, cx: &Ctx<'_>) -> Result<Option<(String, Rx)>> {
    let input = eval_named(args, "input", cx)?;
    let regex = eval_named(args, "regex", cx)?;
    let options = eval_named(args, "options", cx)?;
    let (pattern, mut opts) = match &regex {
        Some(Bson::String(s)) => (s.clone(), String::new()),
        Some(Bson::RegularExpression(r)) => (r.pattern.clone(), r.options.clone()),
        r if nullish(r) => (String::new(), String::new()),
        _ => {
            return Err(err(
                51105,
                format!("{op} needs 'regex' to be of type string or regex"),
            ));
        }
    };
    match &options {
        Some(Bson::String(o)) => {
            if !opts.is_empty() && !o.is_empty() {
                return Err(err(
                    51107,
                    format!(
                        "{op} found regex option(s) specified in both 'regex' and 'option' fields"
                    ),
                ));
            }
            if opts.is_empty() {
                opts = o.clone();
            }
        }
        o if nullish(o) => {}
        _ => {
            return Err(err(
                51106,
                format!("{op} needs 'options' to be of type string"),
            ));
        }
    }
    let input = match input {
        Some(Bson::String(s)) => s,
        i if nullish(&i) => return Ok(None),
        _ => {
            return Err(err(
                51104,
                format!("{op} needs 'input' to be of type string"),
            ));
        }
    };
    if nullish(&regex) {
        return Ok(None);
    }
    Ok(Some((input, Rx::new(&pattern, &opts)?)))
}

fn regex_result(input: &str, caps: &fancy_regex::Captures<'_>) -> Bson {
    let m = caps.get(0).map_or("", |m| m.as_str());
    let start = caps.get(0).map_or(0, |m| m.start());
    let idx = input[..start].chars().count();
    let captures: Vec<Bson> = (1..caps.len())
        .map(|i| {
            caps.get(i)
                .map_or(Bson::Null, |c| Bson::String(c.as_str().to_string()))
        })
        .collect();
    let mut d = Document::new();
    d.insert("match", m);
    d.insert("idx", num::narrow(idx as i64));
    d.insert("captures", captures);
    Bson::Document(d)
}

fn array_arg(v: Option<Bson>, code: i32, msg: impl Fn(&str) -> String) -> Result<Vec<Bson>> {
    match v {
        Some(Bson::Array(a)) => Ok(a),
        other => Err(err(code, msg(tn(&other)))),
    }
}

fn int_arg(v: &Option<Bson>, code: i32, msg: &str) -> Result<i64> {
    v.as_ref()
        .and_then(as_int)
        .ok_or_else(|| err(code, msg.to_string()))
}

fn round_places(x: f64, places: i64, trunc: bool) -> f64 {
    let p = 10f64.powi(places as i32);
    let scaled = x * p;
    if !scaled.is_finite() {
        return x;
    }
    let r = if trunc {
        scaled.trunc()
    } else {
        scaled.round_ties_even()
    };
    r / p
}

fn round_int(i: i64, places: i64, trunc: bool) -> Option<i64> {
    if places >= 0 {
        return Some(i);
    }
    let p = 10i64.checked_pow(u32::try_from(-places).ok()?)?;
    let q = i / p;
    let r = i % p;
    if trunc {
        return Some(q * p);
    }
    let twice = r.abs() * 2;
    let q = if twice > p || (twice == p && q % 2 != 0) {
        q + r.signum()
    } else {
        q
    };
    q.checked_mul(p)
}

fn pow(base: &Bson, exp: &Bson) -> Result<Bson> {
    let (bf, ef) = (num::f(base), num::f(exp));
    if bf == 0.0 && ef < 0.0 {
        return Err(err(
            28764,
            "$pow cannot take a base of 0 and a negative exponent",
        ));
    }
    let k = num::kind(base).max(num::kind(exp));
    if let (Some(b), Some(e)) = (num::int(base), num::int(exp)) {
        if e >= 0 {
            if let Some(r) = u32::try_from(e).ok().and_then(|e| b.checked_pow(e)) {
                return Ok(if k == Some(num::Kind::Int) {
                    num::narrow(r)
                } else {
                    Bson::Int64(r)
                });
            }
        } else if b == 1 {
            return Ok(num::narrow(1));
        } else if b == -1 {
            return Ok(num::narrow(if e % 2 == 0 { 1 } else { -1 }));
        }
        return Ok(Bson::Double(bf.powf(ef)));
    }
    Ok(if k == Some(num::Kind::Dec) {
        num::dec_from_f64(bf.powf(ef))
    } else {
        Bson::Double(bf.powf(ef))
    })
}

fn trim_chars(op: &str, args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let input = eval_named(args, "input", cx)?;
    let s = match &input {
        Some(Bson::String(s)) => s.clone(),
        i if nullish(i) => return Ok(Some(Bson::Null)),
        other => {
            return Err(err(
                50699,
                format!(
                    "{op} requires its input to be a string, got {} (of type {}) instead.",
                    other.clone().unwrap_or(Bson::Null),
                    tn(other)
                ),
            ));
        }
    };
    let chars: Vec<char> = match eval_named(args, "chars", cx)? {
        None if arg(args, "chars").is_none() => {
            vec![
                '\0', ' ', '\t', '\n', '\u{0B}', '\u{0C}', '\r', '\u{00A0}', '\u{1680}',
                '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}',
                '\u{2007}', '\u{2008}', '\u{2009}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}',
                '\u{205F}', '\u{3000}',
            ]
        }
        Some(Bson::String(c)) => c.chars().collect(),
        c if nullish(&c) => return Ok(Some(Bson::Null)),
        other => {
            return Err(err(
                50700,
                format!(
                    "{op} requires 'chars' to be a string, got {} instead.",
                    tn(&other)
                ),
            ));
        }
    };
    let t = match op {
        "$trim" => s.trim_matches(|c| chars.contains(&c)),
        "$ltrim" => s.trim_start_matches(|c| chars.contains(&c)),
        _ => s.trim_end_matches(|c| chars.contains(&c)),
    };
    Ok(Some(Bson::String(t.to_string())))
}

fn index_of_str(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let s = match &vals[0] {
        Some(Bson::String(s)) => s,
        v if nullish(v) => return Ok(Some(Bson::Null)),
        other => {
            return Err(err(
                40091,
                format!(
                    "{op} requires a string as the first argument, found: {}",
                    tn(other)
                ),
            ));
        }
    };
    let Some(Bson::String(sub)) = &vals[1] else {
        return Err(err(
            40092,
            format!(
                "{op} requires a string as the second argument, found: {}",
                tn(&vals[1])
            ),
        ));
    };
    let bound = |i: usize, code: i32| -> Result<Option<usize>> {
        match vals.get(i) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_ref().and_then(as_int).ok_or_else(|| {
                    err(
                        code,
                        format!(
                            "{op} requires an integral starting index, found a value of type: {}",
                            tn(v)
                        ),
                    )
                })?;
                if n < 0 {
                    return Err(err(
                        code + 3,
                        format!("{op} requires a nonnegative start index, found: {n}"),
                    ));
                }
                Ok(Some(n as usize))
            }
        }
    };
    let start = bound(2, 40093)?.unwrap_or(0);
    let cp = op == "$indexOfCP";
    let units: Vec<usize> = if cp {
        s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
    } else {
        Vec::new()
    };
    let len = if cp { units.len() - 1 } else { s.len() };
    let end = bound(3, 40094)?.unwrap_or(len).min(len);
    if start > len || start > end {
        return Ok(Some(Bson::Int32(-1)));
    }
    let (bs, be) = if cp {
        (units[start], units[end])
    } else {
        (start, end)
    };
    let hay = s.as_bytes().get(bs..be).unwrap_or(&[]);
    let needle = sub.as_bytes();
    let pos = (0..=hay.len())
        .find(|&i| hay[i..].starts_with(needle) && (!cp || s.is_char_boundary(bs + i)));
    Ok(Some(match pos {
        None => Bson::Int32(-1),
        Some(i) if cp => num::narrow(s[..bs + i].chars().count() as i64),
        Some(i) => num::narrow((bs + i) as i64),
    }))
}

fn substr(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let s = coerce_str(op, &vals[0])?;
    let start = vals[1]
        .as_ref()
        .filter(|v| num::kind(v).is_some())
        .ok_or_else(|| {
            err(
                16034,
                format!(
                    "{op}: starting index must be a numeric type (is BSON type {})",
                    tn(&vals[1])
                ),
            )
        })?;
    let len = vals[2]
        .as_ref()
        .filter(|v| num::kind(v).is_some())
        .ok_or_else(|| {
            err(
                16035,
                format!(
                    "{op}: length must be a numeric type (is BSON type {})",
                    tn(&vals[2])
                ),
            )
        })?;
    if op == "$substrCP" {
        let start = as_int(start).ok_or_else(|| {
            err(
                34452,
                "$substrCP: the starting index must be nonnegative integer.",
            )
        })?;
        let len = as_int(len)
            .ok_or_else(|| err(34450, "$substrCP: length must be a nonnegative integer."))?;
        if start < 0 {
            return Err(err(
                34455,
                "$substrCP: the starting index must be nonnegative integer.",
            ));
        }
        if len < 0 {
            return Err(err(
                34454,
                "$substrCP: length must be a nonnegative integer.",
            ));
        }
        let out: String = s.chars().skip(start as usize).take(len as usize).collect();
        return Ok(Some(Bson::String(out)));
    }
    let start = num::f(start);
    let len = num::f(len);
    if start < 0.0 {
        return Ok(Some(Bson::String(String::new())));
    }
    let start = start as usize;
    if start >= s.len() {
        return Ok(Some(Bson::String(String::new())));
    }
    if !s.is_char_boundary(start) {
        return Err(err(
            28656,
            format!("{op}:  Invalid range, starting index is a UTF-8 continuation byte."),
        ));
    }
    let end = if len < 0.0 {
        s.len()
    } else {
        start.saturating_add(len as usize).min(s.len())
    };
    if !s.is_char_boundary(end) {
        return Err(err(
            28657,
            format!("{op}:  Invalid range, ending index is in the middle of a UTF-8 character."),
        ));
    }
    Ok(Some(Bson::String(s[start..end].to_string())))
}

fn slice_array(a: Vec<Bson>, pos: Option<i64>, n: i64) -> Vec<Bson> {
    let len = a.len() as i64;
    let (start, count) = match pos {
        None if n >= 0 => (0, n),
        None => ((len + n).max(0), -n),
        Some(p) => {
            let s = if p < 0 { (len + p).max(0) } else { p.min(len) };
            (s, n)
        }
    };
    a.into_iter()
        .skip(start as usize)
        .take(count.max(0) as usize)
        .collect()
}

/// `$median` and `$percentile` as expressions: over an array's numbers (or one number),
/// with method `approximate` (see [`super::accum::percentile_of`]).
fn percentile_expr(op: &str, args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let method = eval_named(args, "method", cx)?;
    let p = eval_named(args, "p", cx)?;
    let ps = super::accum::percentile_args(op, method.as_ref(), p.as_ref())?;
    let mut xs: Vec<f64> = match eval_named(args, "input", cx)? {
        Some(Bson::Array(a)) => a
            .iter()
            .filter(|v| num::kind(v).is_some())
            .map(num::f)
            .collect(),
        Some(v) if num::kind(&v).is_some() => vec![num::f(&v)],
        _ => Vec::new(),
    };
    xs.sort_by(f64::total_cmp);
    let out: Vec<Bson> = ps
        .iter()
        .map(|p| super::accum::percentile_of(&xs, *p))
        .collect();
    Ok(Some(if op == "$median" {
        out.into_iter().next().unwrap_or(Bson::Null)
    } else {
        Bson::Array(out)
    }))
}

fn first_n(op: &str, args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let n = eval_named(args, "n", cx)?;
    let n = match n.as_ref().and_then(as_int) {
        Some(n) if n > 0 => n as usize,
        _ => {
            return Err(err(
                5787908,
                format!(
                    "Value for 'n' must be a positive integer, found: {}",
                    n.unwrap_or(Bson::Null)
                ),
            ));
        }
    };
    let input = eval_named(args, "input", cx)?;
    let a = match input {
        Some(Bson::Array(a)) => a,
        i if nullish(&i) && matches!(op, "$maxN" | "$minN") => return Ok(Some(Bson::Null)),
        other => {
            return Err(err(
                5788200,
                format!("Input for '{op}' must be an array, found: {}", tn(&other)),
            ));
        }
    };
    Ok(Some(Bson::Array(match op {
        "$firstN" => a.into_iter().take(n).collect(),
        "$lastN" => {
            let skip = a.len().saturating_sub(n);
            a.into_iter().skip(skip).collect()
        }
        _ => {
            let mut v: Vec<Bson> = a
                .into_iter()
                .filter(|x| !matches!(x, Bson::Null | Bson::Undefined))
                .collect();
            v.sort_by(|x, y| {
                if op == "$maxN" {
                    cmp_values_with(y, x, cx.coll())
                } else {
                    cmp_values_with(x, y, cx.coll())
                }
            });
            v.truncate(n);
            v
        }
    })))
}

fn sort_array(args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let input = eval_named(args, "input", cx)?;
    let mut a = match input {
        Some(Bson::Array(a)) => a,
        i if nullish(&i) => return Ok(Some(Bson::Null)),
        other => {
            return Err(err(
                2942504,
                format!(
                    "The input argument to $sortArray must be an array, but was of type: {}",
                    tn(&other)
                ),
            ));
        }
    };
    let by = eval_named(args, "sortBy", cx)?;
    match &by {
        Some(Bson::Document(spec)) => {
            let spec = crate::sort::SortSpec::parse(spec)
                .map_err(|e| err(2942505, format!("$sortArray: {}", e.message)))?
                .with_collation(cx.vars.shared_collation());
            let empty = Document::new();
            a.sort_by(|x, y| match (x, y) {
                (Bson::Document(dx), Bson::Document(dy)) => spec.compare(dx, dy),
                (Bson::Document(dx), _) => spec.compare(dx, &empty).then(Ordering::Greater),
                (_, Bson::Document(dy)) => spec.compare(&empty, dy).then(Ordering::Less),
                _ => Ordering::Equal,
            });
        }
        Some(v) if matches!(as_int(v), Some(1) | Some(-1)) => {
            let desc = as_int(v) == Some(-1);
            a.sort_by(|x, y| {
                if desc {
                    cmp_values_with(y, x, cx.coll())
                } else {
                    cmp_values_with(x, y, cx.coll())
                }
            });
        }
        _ => {
            return Err(err(
                2942505,
                "$sortArray requires sortBy to be either 1, -1, or an object",
            ));
        }
    }
    Ok(Some(Bson::Array(a)))
}

fn array_to_object(v: Option<Bson>) -> Result<Option<Bson>> {
    let a = match v {
        Some(Bson::Array(a)) => a,
        v if nullish(&v) => return Ok(Some(Bson::Null)),
        other => {
            return Err(err(
                40386,
                format!(
                    "$arrayToObject requires an array input, found: {}",
                    tn(&other)
                ),
            ));
        }
    };
    let mut d = Document::new();
    let mut pair_form = None;
    for e in a {
        let (k, v) = match e {
            Bson::Array(p) => {
                if pair_form == Some(false) {
                    return Err(err(
                        40391,
                        "$arrayToObject requires a consistent input format. Elements must all be arrays or all be objects.",
                    ));
                }
                pair_form = Some(true);
                if p.len() != 2 {
                    return Err(err(
                        40397,
                        format!(
                            "$arrayToObject requires an array of size 2 arrays,found array of size: {}",
                            p.len()
                        ),
                    ));
                }
                let mut it = p.into_iter();
                let (k, v) = (
                    it.next().unwrap_or(Bson::Null),
                    it.next().unwrap_or(Bson::Null),
                );
                let Bson::String(k) = k else {
                    return Err(err(
                        40395,
                        format!(
                            "$arrayToObject requires an array of key-value pairs, where the key must be of type string. Found key type: {}",
                            type_name(Some(&k))
                        ),
                    ));
                };
                (k, v)
            }
            Bson::Document(mut kv) => {
                if pair_form == Some(true) {
                    return Err(err(
                        40391,
                        "$arrayToObject requires a consistent input format. Elements must all be arrays or all be objects.",
                    ));
                }
                pair_form = Some(false);
                if kv.len() != 2 || !kv.contains_key("k") || !kv.contains_key("v") {
                    return Err(err(
                        40392,
                        "$arrayToObject requires an object keys of 'k' and 'v'. Found incorrect number of keys",
                    ));
                }
                let k = kv.remove("k").unwrap_or(Bson::Null);
                let v = kv.remove("v").unwrap_or(Bson::Null);
                let Bson::String(k) = k else {
                    return Err(err(
                        40394,
                        format!(
                            "$arrayToObject requires an object with keys 'k' and 'v', where the value of 'k' must be of type string. Found type: {}",
                            type_name(Some(&k))
                        ),
                    ));
                };
                (k, v)
            }
            other => {
                return Err(err(
                    40398,
                    format!(
                        "Unrecognised input type format for $arrayToObject: {}",
                        type_name(Some(&other))
                    ),
                ));
            }
        };
        if k.contains('\0') {
            return Err(err(
                4940401,
                "Key field cannot contain an embedded null byte",
            ));
        }
        d.insert(k, v);
    }
    Ok(Some(Bson::Document(d)))
}

fn field_name_arg(op: &str, args: &Args, cx: &Ctx<'_>) -> Result<String> {
    match eval_named(args, "field", cx)? {
        Some(Bson::String(s)) => Ok(s),
        other => Err(err(
            3041704,
            format!(
                "{op} requires 'field' to evaluate to type String, but got {}",
                tn(&other)
            ),
        )),
    }
}

fn zip(args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let inputs = match eval_named(args, "inputs", cx)? {
        Some(Bson::Array(a)) => a,
        other => {
            return Err(err(
                34461,
                format!(
                    "inputs must be an array of expressions, found {}",
                    tn(&other)
                ),
            ));
        }
    };
    let mut arrays = Vec::new();
    for i in inputs {
        match i {
            Bson::Array(a) => arrays.push(a),
            Bson::Null | Bson::Undefined => return Ok(Some(Bson::Null)),
            other => {
                return Err(err(
                    34468,
                    format!("$zip found a non-array expression in input: {other}"),
                ));
            }
        }
    }
    let longest = eval_named(args, "useLongestLength", cx)?
        .as_ref()
        .is_some_and(truthy);
    let defaults = match eval_named(args, "defaults", cx)? {
        None => Vec::new(),
        Some(Bson::Array(d)) => {
            if !longest {
                return Err(err(
                    34466,
                    "cannot specify defaults unless useLongestLength is true",
                ));
            }
            if d.len() != arrays.len() {
                return Err(err(34467, "defaults and inputs must have the same length"));
            }
            d
        }
        Some(other) => {
            return Err(err(
                34462,
                format!(
                    "defaults must be an array of expressions, found {}",
                    type_name(Some(&other))
                ),
            ));
        }
    };
    let n = if longest {
        arrays.iter().map(Vec::len).max()
    } else {
        arrays.iter().map(Vec::len).min()
    }
    .unwrap_or(0);
    let out = (0..n)
        .map(|i| {
            Bson::Array(
                arrays
                    .iter()
                    .enumerate()
                    .map(|(j, a)| {
                        a.get(i)
                            .cloned()
                            .or_else(|| defaults.get(j).cloned())
                            .unwrap_or(Bson::Null)
                    })
                    .collect(),
            )
        })
        .collect();
    Ok(Some(Bson::Array(out)))
}

/// Evaluates an operator call.
pub(crate) fn eval_op(name: &str, args: &Args, cx: &Ctx<'_>) -> Result<Option<Bson>> {
    let list = args.list();
    match name {
        "$cond" => {
            let c = list[0].eval(cx)?;
            if c.as_ref().is_some_and(truthy) {
                list[1].eval(cx)
            } else {
                list[2].eval(cx)
            }
        }
        "$and" => {
            for n in list {
                if !n.eval(cx)?.as_ref().is_some_and(truthy) {
                    return Ok(Some(Bson::Boolean(false)));
                }
            }
            Ok(Some(Bson::Boolean(true)))
        }
        "$or" => {
            for n in list {
                if n.eval(cx)?.as_ref().is_some_and(truthy) {
                    return Ok(Some(Bson::Boolean(true)));
                }
            }
            Ok(Some(Bson::Boolean(false)))
        }
        "$ifNull" => {
            let (last, init) = list.split_last().ok_or_else(|| invalid_op(name))?;
            for n in init {
                let v = n.eval(cx)?;
                if !nullish(&v) {
                    return Ok(v);
                }
            }
            last.eval(cx)
        }
        "$switch" => {
            if let Some(Node::Arr(branches)) = arg(args, "branches") {
                for b in branches {
                    let Node::Obj(fields) = b else { continue };
                    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, n)| n);
                    if let (Some(c), Some(t)) = (get("case"), get("then")) {
                        if c.eval(cx)?.as_ref().is_some_and(truthy) {
                            return t.eval(cx);
                        }
                    }
                }
            }
            match arg(args, "default") {
                Some(d) => d.eval(cx),
                None => Err(err(
                    40066,
                    "$switch could not find a matching branch for an input, and no default was specified.",
                )),
            }
        }
        "$let" => {
            let mut vars = cx.vars.clone();
            if let Some(Node::Obj(vs)) = arg(args, "vars") {
                for (k, n) in vs {
                    match n.eval(cx)? {
                        Some(v) => vars.set(k, v),
                        None => {
                            vars.user.remove(k);
                            vars.set(k, Bson::Undefined);
                        }
                    }
                }
            }
            let inner = Ctx {
                root: cx.root,
                vars: &vars,
            };
            eval_named(args, "in", &inner)
        }
        "$map" | "$filter" => {
            let input = eval_named(args, "input", cx)?;
            let a = match input {
                Some(Bson::Array(a)) => a,
                i if nullish(&i) => return Ok(Some(Bson::Null)),
                other => {
                    let code = if name == "$map" { 16883 } else { 28651 };
                    return Err(err(
                        code,
                        format!("input to {name} must be an array not {}", tn(&other)),
                    ));
                }
            };
            let var = match arg(args, "as") {
                Some(Node::Lit(Bson::String(s))) => s.clone(),
                _ => "this".to_string(),
            };
            let limit = if name == "$filter" {
                match eval_named(args, "limit", cx)? {
                    None | Some(Bson::Null) => None,
                    Some(l) => match as_int(&l) {
                        Some(n) if n > 0 => Some(n as usize),
                        _ => {
                            return Err(err(
                                327391,
                                format!("$filter: limit must be greater than 0: {l}"),
                            ));
                        }
                    },
                }
            } else {
                None
            };
            let body = if name == "$map" {
                arg(args, "in")
            } else {
                arg(args, "cond")
            };
            let Some(body) = body else {
                return Err(invalid_op(name));
            };
            let mut vars = cx.vars.clone();
            let mut out = Vec::new();
            let mut budget = Budget::new("$map");
            for e in a {
                vars.set(&var, e.clone());
                let inner = Ctx {
                    root: cx.root,
                    vars: &vars,
                };
                let r = body.eval(&inner)?;
                if name == "$map" {
                    let r = r.unwrap_or(Bson::Null);
                    budget.add(&r)?;
                    out.push(r);
                } else if r.as_ref().is_some_and(truthy) {
                    out.push(e);
                    if limit.is_some_and(|l| out.len() >= l) {
                        break;
                    }
                }
            }
            Ok(Some(Bson::Array(out)))
        }
        "$reduce" => {
            let input = eval_named(args, "input", cx)?;
            let a = match input {
                Some(Bson::Array(a)) => a,
                i if nullish(&i) => return Ok(Some(Bson::Null)),
                other => {
                    return Err(err(
                        40080,
                        format!(
                            "$reduce requires that 'input' be an array, found: {}",
                            tn(&other)
                        ),
                    ));
                }
            };
            let mut acc = eval_named(args, "initialValue", cx)?;
            let Some(body) = arg(args, "in") else {
                return Err(invalid_op(name));
            };
            let mut vars = cx.vars.clone();
            for e in a {
                vars.set("this", e);
                vars.set("value", acc.clone().unwrap_or(Bson::Null));
                acc = body.eval(&Ctx {
                    root: cx.root,
                    vars: &vars,
                })?;
            }
            Ok(acc)
        }
        "$trim" | "$ltrim" | "$rtrim" => trim_chars(name, args, cx),
        "$regexMatch" => Ok(Some(Bson::Boolean(match regex_args(name, args, cx)? {
            Some((input, rx)) => rx.is_match(&input),
            None => false,
        }))),
        "$regexFind" => Ok(Some(match regex_args(name, args, cx)? {
            Some((input, rx)) => match rx.regex().captures(&input) {
                Ok(Some(c)) => regex_result(&input, &c),
                _ => Bson::Null,
            },
            None => Bson::Null,
        })),
        "$regexFindAll" => {
            let Some((input, rx)) = regex_args(name, args, cx)? else {
                return Ok(Some(Bson::Array(Vec::new())));
            };
            let mut out = Vec::new();
            let mut pos = 0;
            while pos <= input.len() {
                let Ok(Some(c)) = rx.regex().captures_from_pos(&input, pos) else {
                    break;
                };
                let Some(m) = c.get(0) else { break };
                out.push(regex_result(&input, &c));
                pos = if m.end() > m.start() {
                    m.end()
                } else {
                    m.end() + input[m.end()..].chars().next().map_or(1, char::len_utf8)
                };
            }
            Ok(Some(Bson::Array(out)))
        }
        "$replaceOne" | "$replaceAll" => {
            let mut vals = Vec::new();
            for k in ["input", "find", "replacement"] {
                vals.push((k, eval_named(args, k, cx)?));
            }
            for (k, v) in &vals {
                if !nullish(v)
                    && !matches!(v, Some(Bson::String(_)))
                    && (*k != "find" || !matches!(v, Some(Bson::RegularExpression(_))))
                {
                    return Err(err(
                        51746,
                        format!(
                            "{name} requires that '{k}' be a string, found: {}",
                            v.clone().unwrap_or(Bson::Null)
                        ),
                    ));
                }
            }
            if vals.iter().any(|(_, v)| nullish(v)) {
                return Ok(Some(Bson::Null));
            }
            let s = |i: usize| match &vals[i].1 {
                Some(Bson::String(s)) => s.clone(),
                _ => String::new(),
            };
            let (input, find, rep) = (s(0), s(1), s(2));
            let rx = match &vals[1].1 {
                Some(Bson::RegularExpression(r)) => Some(Rx::new(&r.pattern, &r.options)?),
                _ => None,
            };
            // The longest the result can be, refused before it is built.
            let matches = match &rx {
                _ if name == "$replaceOne" => 1,
                Some(rx) => rx.regex().find_iter(&input).count(),
                None if find.is_empty() => 0,
                None => input.matches(&find).count(),
            };
            check_string_len(
                input
                    .len()
                    .saturating_add(matches.saturating_mul(rep.len())),
            )?;
            let out = match &rx {
                Some(rx) => {
                    let rep = fancy_regex::NoExpand(&rep);
                    if name == "$replaceOne" {
                        rx.regex().replacen(&input, 1, rep).into_owned()
                    } else {
                        rx.regex().replace_all(&input, rep).into_owned()
                    }
                }
                None if name == "$replaceOne" => input.replacen(&find, &rep, 1),
                None if find.is_empty() => input,
                None => input.replace(&find, &rep),
            };
            Ok(Some(Bson::String(out)))
        }
        "$zip" => zip(args, cx),
        "$sortArray" => sort_array(args, cx),
        "$maxN" | "$minN" | "$firstN" | "$lastN" => first_n(name, args, cx),
        "$median" | "$percentile" => percentile_expr(name, args, cx),
        "$getField" => {
            let field = field_name_arg(name, args, cx)?;
            match eval_named(args, "input", cx)? {
                Some(Bson::Document(d)) => Ok(d.get(&field).cloned()),
                None => Ok(None),
                Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
                Some(_) => Ok(None),
            }
        }
        "$setField" | "$unsetField" => {
            let field = field_name_arg(name, args, cx)?;
            let mut d = match eval_named(args, "input", cx)? {
                Some(Bson::Document(d)) => d,
                i if nullish(&i) => return Ok(Some(Bson::Null)),
                other => {
                    return Err(err(
                        4161105,
                        format!(
                            "{name} requires 'input' to evaluate to type Object, but got {}",
                            tn(&other)
                        ),
                    ));
                }
            };
            let value = if name == "$setField" {
                eval_named(args, "value", cx)?
            } else {
                None
            };
            match value {
                Some(v) => {
                    d.insert(field, v);
                }
                None => {
                    d.remove(&field);
                }
            }
            Ok(Some(Bson::Document(d)))
        }
        "$convert" => super::convert::eval_convert(args, cx),
        _ if matches!(args, Args::Named(_)) => super::date::eval(name, args, cx),
        _ => {
            let vals = eval_all(list, cx)?;
            eval_values(name, vals, cx.coll())
        }
    }
}

/// Operators whose arguments are all evaluated up front.
fn eval_values(
    name: &str,
    mut vals: Vec<Option<Bson>>,
    coll: Option<&Collation>,
) -> Result<Option<Bson>> {
    let some = |v: Bson| Ok(Some(v));
    let any_nullish = vals.iter().any(nullish);
    match name {
        "$add" => {
            let mut total = Bson::Int32(0);
            let mut date: Option<i64> = None;
            for v in &vals {
                match v {
                    v if nullish(v) => return some(Bson::Null),
                    Some(Bson::DateTime(d)) => {
                        if date.is_some() {
                            return Err(err(16612, "only one date allowed in an $add expression"));
                        }
                        date = Some(d.timestamp_millis());
                    }
                    Some(n) if num::kind(n).is_some() => total = num::add(&total, n),
                    other => {
                        return Err(err(
                            16554,
                            format!(
                                "$add only supports numeric or date types, not {}",
                                tn(other)
                            ),
                        ));
                    }
                }
            }
            match date {
                Some(ms) => {
                    let add = match num::int(&total) {
                        Some(i) => i,
                        None => {
                            let f = num::f(&total);
                            if !f.is_finite() {
                                return Err(err(40237, "Can't coerce out of range value to long"));
                            }
                            f.round() as i64
                        }
                    };
                    some(Bson::DateTime(bson::DateTime::from_millis(
                        ms.wrapping_add(add),
                    )))
                }
                None => some(total),
            }
        }
        "$multiply" => {
            let mut total = Bson::Int32(1);
            for v in &vals {
                match v {
                    v if nullish(v) => return some(Bson::Null),
                    Some(n) if num::kind(n).is_some() => total = num::mul(&total, n),
                    other => {
                        return Err(err(
                            16555,
                            format!("$multiply only supports numeric types, not {}", tn(other)),
                        ));
                    }
                }
            }
            some(total)
        }
        "$subtract" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let (a, b) = (
                vals[0].take().unwrap_or(Bson::Null),
                vals[1].take().unwrap_or(Bson::Null),
            );
            match (&a, &b) {
                (Bson::DateTime(x), Bson::DateTime(y)) => some(Bson::Int64(
                    x.timestamp_millis().wrapping_sub(y.timestamp_millis()),
                )),
                (Bson::DateTime(x), n) if num::kind(n).is_some() => {
                    let d = num::int(n).unwrap_or_else(|| num::f(n).round() as i64);
                    some(Bson::DateTime(bson::DateTime::from_millis(
                        x.timestamp_millis().wrapping_sub(d),
                    )))
                }
                (x, y) if num::kind(x).is_some() && num::kind(y).is_some() => some(num::sub(x, y)),
                _ => Err(err(
                    16556,
                    format!(
                        "can't $subtract {} from {}",
                        type_name(Some(&b)),
                        type_name(Some(&a))
                    ),
                )),
            }
        }
        "$divide" | "$mod" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let (a, b) = (
                vals[0].take().unwrap_or(Bson::Null),
                vals[1].take().unwrap_or(Bson::Null),
            );
            if num::kind(&a).is_none() || num::kind(&b).is_none() {
                let code = if name == "$divide" { 16609 } else { 16611 };
                return Err(err(
                    code,
                    format!(
                        "{name} only supports numeric types, not {} and {}",
                        type_name(Some(&a)),
                        type_name(Some(&b))
                    ),
                ));
            }
            if name == "$divide" {
                num::div(&a, &b)
                    .map(Some)
                    .ok_or_else(|| MongoError::bad_value("can't $divide by zero"))
            } else {
                num::modulo(&a, &b)
                    .map(Some)
                    .ok_or_else(|| err(16610, "can't $mod by zero"))
            }
        }
        "$abs" | "$ceil" | "$floor" | "$sqrt" | "$exp" | "$ln" | "$log10" => {
            let v = vals[0].take();
            if nullish(&v) {
                return some(Bson::Null);
            }
            let v = v.unwrap_or(Bson::Null);
            if num::kind(&v).is_none() {
                return Err(err(
                    28765,
                    format!(
                        "{name} only supports numeric types, not {}",
                        type_name(Some(&v))
                    ),
                ));
            }
            let x = num::f(&v);
            match name {
                "$abs" => some(match v {
                    Bson::Int32(i) => i
                        .checked_abs()
                        .map_or(Bson::Int64(-i64::from(i)), Bson::Int32),
                    Bson::Int64(i) => Bson::Int64(
                        i.checked_abs()
                            .ok_or_else(|| err(28680, "can't take $abs of long long min"))?,
                    ),
                    other => num::same_kind_float(&other, x.abs()),
                }),
                "$ceil" | "$floor" => some(match v {
                    Bson::Int32(_) | Bson::Int64(_) => v,
                    other => num::same_kind_float(
                        &other,
                        if name == "$ceil" { x.ceil() } else { x.floor() },
                    ),
                }),
                "$sqrt" => {
                    if x < 0.0 {
                        return Err(err(
                            28714,
                            "$sqrt's argument must be greater than or equal to 0",
                        ));
                    }
                    some(num::same_kind_float(&v, x.sqrt()))
                }
                "$exp" => some(num::same_kind_float(&v, x.exp())),
                "$ln" => {
                    if x <= 0.0 {
                        return Err(err(
                            28766,
                            format!("$ln's argument must be a positive number, but is {v}"),
                        ));
                    }
                    some(num::same_kind_float(&v, x.ln()))
                }
                _ => {
                    if x <= 0.0 {
                        return Err(err(
                            28761,
                            format!("$log10's argument must be a positive number, but is {v}"),
                        ));
                    }
                    some(num::same_kind_float(&v, x.log10()))
                }
            }
        }
        "$log" | "$pow" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let (a, b) = (
                vals[0].take().unwrap_or(Bson::Null),
                vals[1].take().unwrap_or(Bson::Null),
            );
            if num::kind(&a).is_none() {
                return Err(err(
                    if name == "$log" { 28756 } else { 28762 },
                    format!(
                        "{name}'s {} must be numeric, not {}",
                        if name == "$log" { "argument" } else { "base" },
                        type_name(Some(&a))
                    ),
                ));
            }
            if num::kind(&b).is_none() {
                return Err(err(
                    if name == "$log" { 28757 } else { 28763 },
                    format!(
                        "{name}'s {} must be numeric, not {}",
                        if name == "$log" { "base" } else { "exponent" },
                        type_name(Some(&b))
                    ),
                ));
            }
            if name == "$pow" {
                return pow(&a, &b).map(Some);
            }
            let (x, base) = (num::f(&a), num::f(&b));
            if x <= 0.0 {
                return Err(err(
                    28758,
                    format!("$log's argument must be a positive number, but is {a}"),
                ));
            }
            if base <= 0.0 || base == 1.0 {
                return Err(err(
                    28759,
                    format!("$log's base must be a positive number not equal to 1, but is {b}"),
                ));
            }
            let r = x.ln() / base.ln();
            some(
                if num::kind(&a).max(num::kind(&b)) == Some(num::Kind::Dec) {
                    num::dec_from_f64(r)
                } else {
                    Bson::Double(r)
                },
            )
        }
        "$round" | "$trunc" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let v = vals[0].take().unwrap_or(Bson::Null);
            let places = match vals.get(1) {
                None => 0,
                Some(p) => match p.as_ref().and_then(as_int) {
                    Some(p) if (-20..=100).contains(&p) => p,
                    _ => {
                        return Err(err(
                            51083,
                            format!(
                                "cannot apply {name} with precision value {} value must be in [-20, 100]",
                                p.clone().unwrap_or(Bson::Null)
                            ),
                        ));
                    }
                },
            };
            let trunc = name == "$trunc";
            some(match &v {
                Bson::Int32(i) => match round_int(i64::from(*i), places, trunc) {
                    Some(r) => i32::try_from(r).map_or(Bson::Int64(r), Bson::Int32),
                    None => Bson::Int32(0),
                },
                Bson::Int64(i) => Bson::Int64(round_int(*i, places, trunc).unwrap_or(0)),
                Bson::Double(d) => Bson::Double(round_places(*d, places, trunc)),
                Bson::Decimal128(_) => num::dec_from_f64(round_places(num::f(&v), places, trunc)),
                other => {
                    return Err(err(
                        51081,
                        format!(
                            "{name} only supports numeric types, not {}",
                            type_name(Some(other))
                        ),
                    ));
                }
            })
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            let o = cmp_opt(&vals[0], &vals[1], coll);
            some(match name {
                "$eq" => Bson::Boolean(o == Ordering::Equal),
                "$ne" => Bson::Boolean(o != Ordering::Equal),
                "$gt" => Bson::Boolean(o == Ordering::Greater),
                "$gte" => Bson::Boolean(o != Ordering::Less),
                "$lt" => Bson::Boolean(o == Ordering::Less),
                "$lte" => Bson::Boolean(o != Ordering::Greater),
                _ => Bson::Int32(o as i32),
            })
        }
        "$not" => some(Bson::Boolean(!vals[0].as_ref().is_some_and(truthy))),
        "$concat" => {
            let len = vals
                .iter()
                .map(|v| match v {
                    Some(Bson::String(s)) => s.len(),
                    _ => 0,
                })
                .sum();
            check_string_len(len)?;
            let mut out = String::with_capacity(len);
            for v in &vals {
                match v {
                    Some(Bson::String(s)) => out.push_str(s),
                    v if nullish(v) => return some(Bson::Null),
                    other => {
                        return Err(err(
                            16702,
                            format!("$concat only supports strings, not {}", tn(other)),
                        ));
                    }
                }
            }
            some(Bson::String(out))
        }
        "$substr" | "$substrBytes" | "$substrCP" => substr(name, &vals),
        "$toLower" | "$toUpper" => {
            let s = coerce_str(name, &vals[0])?;
            some(Bson::String(if name == "$toLower" {
                s.to_ascii_lowercase()
            } else {
                s.to_ascii_uppercase()
            }))
        }
        "$strLenBytes" | "$strLenCP" => match &vals[0] {
            Some(Bson::String(s)) => some(num::narrow(if name == "$strLenCP" {
                s.chars().count()
            } else {
                s.len()
            } as i64)),
            other => Err(err(
                if name == "$strLenCP" { 34471 } else { 34473 },
                format!("{name} requires a string argument, found: {}", tn(other)),
            )),
        },
        "$split" => {
            let s = match &vals[0] {
                Some(Bson::String(s)) => s.clone(),
                v if nullish(v) => return some(Bson::Null),
                other => {
                    return Err(err(
                        40085,
                        format!(
                            "$split requires an expression that evaluates to a string as a first argument, found: {}",
                            tn(other)
                        ),
                    ));
                }
            };
            let d = match &vals[1] {
                Some(Bson::String(d)) => d.clone(),
                v if nullish(v) => return some(Bson::Null),
                other => {
                    return Err(err(
                        40086,
                        format!(
                            "$split requires an expression that evaluates to a string as a second argument, found: {}",
                            tn(other)
                        ),
                    ));
                }
            };
            if d.is_empty() {
                return Err(err(40087, "$split requires a non-empty separator"));
            }
            some(Bson::Array(
                s.split(d.as_str())
                    .map(|p| Bson::String(p.to_string()))
                    .collect(),
            ))
        }
        "$indexOfBytes" | "$indexOfCP" => index_of_str(name, &vals),
        "$strcasecmp" => {
            let a = coerce_str(name, &vals[0])?.to_ascii_lowercase();
            let b = coerce_str(name, &vals[1])?.to_ascii_lowercase();
            some(Bson::Int32(a.cmp(&b) as i32))
        }
        "$size" => match &vals[0] {
            Some(Bson::Array(a)) => some(num::narrow(a.len() as i64)),
            other => Err(err(
                17124,
                format!(
                    "The argument to $size must be an array. Type of argument is: {}",
                    tn(other)
                ),
            )),
        },
        "$arrayElemAt" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let a = array_arg(vals[0].take(), 28689, |t| {
                format!("$arrayElemAt's first argument must be an array, but is {t}")
            })?;
            let i = vals[1]
                .as_ref()
                .filter(|v| num::kind(v).is_some())
                .ok_or_else(|| {
                    err(
                        28690,
                        format!(
                            "$arrayElemAt's second argument must be a numeric value, but is {}",
                            tn(&vals[1])
                        ),
                    )
                })?;
            let i = as_int(i).filter(|i| i32::try_from(*i).is_ok()).ok_or_else(|| {
                err(28691, format!("$arrayElemAt's second argument must be representable as a 32-bit integer: {i}"))
            })?;
            let idx = if i < 0 { a.len() as i64 + i } else { i };
            Ok(usize::try_from(idx).ok().and_then(|i| a.get(i).cloned()))
        }
        "$first" | "$last" => match vals[0].take() {
            Some(Bson::Array(a)) => Ok(if name == "$first" {
                a.first().cloned()
            } else {
                a.last().cloned()
            }),
            None => Ok(None),
            Some(Bson::Null) | Some(Bson::Undefined) => some(Bson::Null),
            other => Err(err(
                28689,
                format!("{name}'s argument must be an array, but is {}", tn(&other)),
            )),
        },
        "$in" => {
            let a = array_arg(vals[1].take(), 40081, |t| {
                format!("$in requires an array as a second argument, found: {t}")
            })?;
            some(Bson::Boolean(match &vals[0] {
                Some(x) => a.iter().any(|e| values_equal_with(e, x, coll)),
                None => false,
            }))
        }
        "$concatArrays" => {
            let mut out = Vec::new();
            for v in vals {
                match v {
                    Some(Bson::Array(a)) => out.extend(a),
                    v if nullish(&v) => return some(Bson::Null),
                    other => {
                        return Err(err(
                            28664,
                            format!("$concatArrays only supports arrays, not {}", tn(&other)),
                        ));
                    }
                }
            }
            some(Bson::Array(out))
        }
        "$slice" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let a = array_arg(vals[0].take(), 28724, |t| {
                format!("First argument to $slice must be an array, but is of type: {t}")
            })?;
            let n1 = int_arg(
                &vals[1],
                28725,
                "Second argument to $slice must be a numeric value",
            )?;
            if vals.len() == 3 {
                let n2 = int_arg(&vals[2], 28726, "Third argument to $slice must be numeric")?;
                if n2 <= 0 {
                    return Err(err(
                        28729,
                        format!("Third argument to $slice must be positive: {n2}"),
                    ));
                }
                some(Bson::Array(slice_array(a, Some(n1), n2)))
            } else {
                some(Bson::Array(slice_array(a, None, n1)))
            }
        }
        "$range" => {
            let get = |i: usize, what: &str, c1: i32, c2: i32| -> Result<i64> {
                let v = &vals[i];
                let n = v
                    .as_ref()
                    .filter(|v| num::kind(v).is_some())
                    .ok_or_else(|| {
                        err(
                            c1,
                            format!(
                                "$range requires a numeric {what}, found value of type: {}",
                                tn(v)
                            ),
                        )
                    })?;
                as_int(n).filter(|x| i32::try_from(*x).is_ok()).ok_or_else(|| err(c2, format!("$range requires a {what} that can be represented as a 32-bit integer, found value: {n}")))
            };
            let start = get(0, "starting value", 34443, 34444)?;
            let end = get(1, "ending value", 34445, 34446)?;
            let step = if vals.len() == 3 {
                get(2, "step value", 34447, 34448)?
            } else {
                1
            };
            if step == 0 {
                return Err(err(34449, "$range requires a non-zero step value"));
            }
            // MongoDB's internalQueryMaxRangeBytes, counted as it counts it: an array
            // header and a 16-byte value per element.
            const MAX_RANGE_BYTES: i64 = 100 * 1024 * 1024;
            let steps = (end - start) / step;
            let length = if steps >= 0 { 1 + steps } else { 0 };
            let needed = 24 + length * 16;
            if needed >= MAX_RANGE_BYTES {
                return Err(err(
                    146,
                    format!(
                        "$range would use too much memory ({needed} bytes) and cannot spill to disk. Memory limit: {MAX_RANGE_BYTES} bytes"
                    ),
                ));
            }
            let mut out = Vec::with_capacity(length as usize);
            let mut i = start;
            while (step > 0 && i < end) || (step < 0 && i > end) {
                out.push(Bson::Int32(i as i32));
                i += step;
            }
            some(Bson::Array(out))
        }
        "$reverseArray" => match vals[0].take() {
            Some(Bson::Array(mut a)) => {
                a.reverse();
                some(Bson::Array(a))
            }
            v if nullish(&v) => some(Bson::Null),
            other => Err(err(
                34435,
                format!(
                    "The argument to $reverseArray must be an array, but was of type: {}",
                    tn(&other)
                ),
            )),
        },
        "$indexOfArray" => {
            let a = match vals[0].take() {
                Some(Bson::Array(a)) => a,
                v if nullish(&v) => return some(Bson::Null),
                other => {
                    return Err(err(
                        40090,
                        format!(
                            "$indexOfArray requires an array as a first argument, found: {}",
                            tn(&other)
                        ),
                    ));
                }
            };
            let bound = |i: usize, code: i32| -> Result<Option<usize>> {
                match vals.get(i) {
                    None => Ok(None),
                    Some(v) => {
                        let n = v.as_ref().and_then(as_int).ok_or_else(|| err(code, format!("$indexOfArray requires an integral starting index, found a value of type: {}", tn(v))))?;
                        if n < 0 {
                            return Err(err(
                                code + 2,
                                format!("$indexOfArray requires a nonnegative index, found: {n}"),
                            ));
                        }
                        Ok(Some(n as usize))
                    }
                }
            };
            let start = bound(2, 40096)?.unwrap_or(0);
            let end = bound(3, 40096)?.unwrap_or(a.len()).min(a.len());
            let found = (start..end).find(|&i| {
                vals[1]
                    .as_ref()
                    .is_some_and(|x| values_equal_with(&a[i], x, coll))
            });
            some(found.map_or(Bson::Int32(-1), |i| num::narrow(i as i64)))
        }
        "$isArray" => some(Bson::Boolean(matches!(vals[0], Some(Bson::Array(_))))),
        "$setUnion" | "$setIntersection" => {
            let mut sets = Vec::new();
            for v in vals {
                match v {
                    Some(Bson::Array(a)) => sets.push(a),
                    v if nullish(&v) => return some(Bson::Null),
                    other => {
                        let code = if name == "$setUnion" { 17043 } else { 17047 };
                        return Err(err(
                            code,
                            format!(
                                "All operands of {name} must be arrays. One argument is of type: {}",
                                tn(&other)
                            ),
                        ));
                    }
                }
            }
            if name == "$setUnion" {
                some(Bson::Array(dedup(sets.into_iter().flatten(), coll)))
            } else {
                let mut it = sets.into_iter();
                let first = dedup(it.next().unwrap_or_default(), coll);
                let rest: Vec<Vec<Bson>> = it.collect();
                some(Bson::Array(
                    first
                        .into_iter()
                        .filter(|x| {
                            rest.iter()
                                .all(|s| s.iter().any(|y| values_equal_with(x, y, coll)))
                        })
                        .collect(),
                ))
            }
        }
        "$setDifference" => {
            if any_nullish {
                return some(Bson::Null);
            }
            let a = array_arg(vals[0].take(), 17048, |t| {
                format!(
                    "both operands of $setDifference must be arrays. First argument is of type: {t}"
                )
            })?;
            let b = array_arg(vals[1].take(), 17049, |t| {
                format!(
                    "both operands of $setDifference must be arrays. Second argument is of type: {t}"
                )
            })?;
            some(Bson::Array(dedup(
                a.into_iter()
                    .filter(|x| !b.iter().any(|y| values_equal_with(x, y, coll))),
                coll,
            )))
        }
        "$setEquals" => {
            let mut sets = Vec::new();
            for v in vals {
                sets.push(array_arg(v, 17044, |t| {
                    format!(
                        "All operands of $setEquals must be arrays. One argument is of type: {t}"
                    )
                })?);
            }
            let subset = |a: &[Bson], b: &[Bson]| {
                a.iter()
                    .all(|x| b.iter().any(|y| values_equal_with(x, y, coll)))
            };
            some(Bson::Boolean(
                sets.windows(2)
                    .all(|w| subset(&w[0], &w[1]) && subset(&w[1], &w[0])),
            ))
        }
        "$setIsSubset" => {
            let a = array_arg(vals[0].take(), 17046, |t| {
                format!(
                    "both operands of $setIsSubset must be arrays. First argument is of type: {t}"
                )
            })?;
            let b = array_arg(vals[1].take(), 17042, |t| {
                format!(
                    "both operands of $setIsSubset must be arrays. Second argument is of type: {t}"
                )
            })?;
            some(Bson::Boolean(
                a.iter()
                    .all(|x| b.iter().any(|y| values_equal_with(x, y, coll))),
            ))
        }
        "$anyElementTrue" | "$allElementsTrue" => {
            let code = if name == "$anyElementTrue" {
                17041
            } else {
                17040
            };
            let a = array_arg(vals[0].take(), code, |t| {
                format!("{name}'s argument must be an array, but is {t}")
            })?;
            some(Bson::Boolean(if name == "$anyElementTrue" {
                a.iter().any(truthy)
            } else {
                a.iter().all(truthy)
            }))
        }
        "$mergeObjects" => {
            let mut acc = Acc::new(AccKind::MergeObjects);
            for v in vals {
                acc.add(v, coll)?;
            }
            some(acc.finish())
        }
        "$objectToArray" => match vals[0].take() {
            Some(Bson::Document(d)) => some(Bson::Array(
                d.into_iter()
                    .map(|(k, v)| {
                        let mut e = Document::new();
                        e.insert("k", k);
                        e.insert("v", v);
                        Bson::Document(e)
                    })
                    .collect(),
            )),
            v if nullish(&v) => some(Bson::Null),
            other => Err(err(
                40390,
                format!(
                    "$objectToArray requires a document input, found: {}",
                    tn(&other)
                ),
            )),
        },
        "$arrayToObject" => array_to_object(vals[0].take()),
        "$rand" => some(Bson::Double(random_f64())),
        "$sum" => accumulate(AccKind::Sum, vals, coll),
        "$avg" => accumulate(AccKind::Avg, vals, coll),
        "$min" => accumulate(AccKind::Min, vals, coll),
        "$max" => accumulate(AccKind::Max, vals, coll),
        "$stdDevPop" => accumulate(AccKind::StdDevPop, vals, coll),
        "$stdDevSamp" => accumulate(AccKind::StdDevSamp, vals, coll),
        "$binarySize" => match vals[0].take() {
            Some(Bson::String(s)) => some(num::narrow(s.len() as i64)),
            Some(Bson::Binary(b)) => some(num::narrow(b.bytes.len() as i64)),
            v if nullish(&v) => some(Bson::Null),
            other => Err(err(
                51276,
                format!(
                    "$binarySize requires a string or BinData argument, found: {}",
                    tn(&other)
                ),
            )),
        },
        "$bsonSize" => match vals[0].take() {
            Some(Bson::Document(d)) => {
                let mut buf = Vec::new();
                d.to_writer(&mut buf)
                    .map_err(|e| MongoError::internal(e.to_string()))?;
                some(num::narrow(buf.len() as i64))
            }
            v if nullish(&v) => some(Bson::Null),
            other => Err(err(
                31393,
                format!("$bsonSize requires a document input, found: {}", tn(&other)),
            )),
        },
        _ if super::convert::handles(name) => super::convert::eval(name, vals),
        _ => super::date::eval_values(name, vals),
    }
}
