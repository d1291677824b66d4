//! The update operators: parsing each one's argument, and what it does to an existing
//! value or where the target is missing.

use std::cmp::Ordering;

use bson::{Bson, Document, Timestamp};
use doc::compare::{as_f64, cmp_values_with, values_equal, values_equal_with};
use errors::{ErrorCode, MongoError, Result};

use super::delta::identical;
use super::fmt;
use crate::filter::Filter;

/// A parsed operator applied at one path.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Bson),
    Mul(Bson),
    Min(Bson),
    Max(Bson),
    CurrentDate {
        timestamp: bool,
    },
    Bit(Vec<(BitOp, Bson)>),
    Push(Box<PushSpec>),
    AddToSet(Vec<Bson>),
    Pop {
        front: bool,
    },
    Pull(PullMatcher),
    PullAll(Vec<Bson>),
    /// `$rename` at its destination; the source is removed when this applies.
    Rename {
        from: String,
    },
    /// `$rename`'s source: takes part in conflict checks only.
    RenameSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitOp {
    And,
    Or,
    Xor,
}

/// `$push` with its modifiers.
#[derive(Debug, Clone)]
pub(crate) struct PushSpec {
    each: Vec<Bson>,
    slice: Option<i64>,
    sort: Option<SortSpec>,
    position: Option<i64>,
}

#[derive(Debug, Clone)]
enum SortSpec {
    Whole(bool),
    Pattern(Vec<(String, bool)>),
}

/// How `$pull` decides which elements to remove.
#[derive(Debug, Clone)]
pub(crate) enum PullMatcher {
    /// A plain value: elements equal to it.
    Equal(Bson),
    /// A query on the fields of document elements.
    Object(Box<Filter>),
    /// Operators (or a regex) applied to each element as a whole.
    Element(Box<Filter>),
}

/// The result of applying an operator to an existing value.
#[derive(Debug)]
pub(crate) enum Modify {
    NoOp,
    /// Replace the value wholesale.
    Replace(Bson),
    /// Append these elements to the existing array (logged element by element).
    Append(Vec<Bson>),
    /// Remove the field (`$unset`).
    Remove,
}

/// Context for an operator's error messages and clock.
pub(crate) struct OpCtx<'a> {
    /// `_id: 1` as MongoDB prints it.
    pub id: String,
    /// The dotted path of the target.
    pub path: &'a str,
    /// The last component of the path.
    pub field: &'a str,
    pub is_upsert_insert: bool,
    pub now: bson::DateTime,
    pub cluster_time: Timestamp,
    /// The operation's collation.
    pub collation: Option<&'a std::sync::Arc<doc::Collation>>,
}

impl OpCtx<'_> {
    fn coll(&self) -> Option<&doc::Collation> {
        self.collation.map(|c| &**c)
    }
}

/// The wrapper field under which `$pull` element queries match each element.
pub(crate) const PULL_FIELD: &str = "__pull_elem";

impl Op {
    /// Parses the argument `arg` of operator `name` for the field `field`.
    pub(crate) fn parse(name: &str, field: &str, arg: &Bson) -> Result<Op> {
        let elem = || format!("{{{}}}", fmt::element(field, arg));
        Ok(match name {
            "$set" => Op::Set(arg.clone()),
            "$setOnInsert" => Op::SetOnInsert(arg.clone()),
            "$unset" => Op::Unset,
            "$inc" | "$mul" => {
                if !is_number(arg) {
                    let verb = if name == "$inc" {
                        "increment"
                    } else {
                        "multiply"
                    };
                    return Err(MongoError::type_mismatch(format!(
                        "Cannot {verb} with non-numeric argument: {}",
                        elem()
                    )));
                }
                if name == "$inc" {
                    Op::Inc(arg.clone())
                } else {
                    Op::Mul(arg.clone())
                }
            }
            "$min" => Op::Min(arg.clone()),
            "$max" => Op::Max(arg.clone()),
            "$currentDate" => parse_current_date(field, arg)?,
            "$bit" => parse_bit(arg)?,
            "$push" => Op::Push(Box::new(parse_push(arg)?)),
            "$addToSet" => Op::AddToSet(parse_add_to_set(arg)?),
            "$pop" => {
                let n = as_f64(arg).filter(|_| is_number(arg)).ok_or_else(|| {
                    MongoError::failed_to_parse(format!(
                        "Expected a number in: {}",
                        fmt::element(field, arg)
                    ))
                })?;
                if n != 1.0 && n != -1.0 {
                    return Err(MongoError::failed_to_parse(format!(
                        "$pop expects 1 or -1, found: {}",
                        fmt::value(arg)
                    )));
                }
                Op::Pop { front: n < 0.0 }
            }
            "$pull" => Op::Pull(parse_pull(arg)?),
            "$pullAll" => match arg {
                Bson::Array(a) => Op::PullAll(a.clone()),
                other => {
                    return Err(MongoError::bad_value(format!(
                        "$pullAll requires an array argument but was given a {}",
                        fmt::type_name(other)
                    )));
                }
            },
            _ => return Err(MongoError::internal(format!("unexpected operator {name}"))),
        })
    }

    /// Whether the operator creates its target when it is missing.
    pub(crate) fn creates(&self, insert: bool) -> bool {
        match self {
            Op::Unset | Op::Pop { .. } | Op::Pull(_) | Op::PullAll(_) | Op::RenameSource => false,
            Op::SetOnInsert(_) => insert,
            _ => true,
        }
    }

    /// The value created at a missing target (for operators that create).
    pub(crate) fn create(&self, cx: &OpCtx) -> Result<Bson> {
        Ok(match self {
            Op::Set(v) | Op::SetOnInsert(v) | Op::Inc(v) | Op::Min(v) | Op::Max(v) => v.clone(),
            Op::Mul(v) => match v {
                Bson::Int32(_) => Bson::Int32(0),
                Bson::Int64(_) => Bson::Int64(0),
                Bson::Decimal128(_) => decimal(0.0),
                _ => Bson::Double(0.0),
            },
            Op::CurrentDate { timestamp } => current_date(*timestamp, cx),
            Op::Bit(ops) => {
                let mut cur = match ops.first() {
                    Some((_, Bson::Int64(_))) => Bson::Int64(0),
                    _ => Bson::Int32(0),
                };
                for (op, arg) in ops {
                    cur = bit(*op, &cur, arg);
                }
                cur
            }
            Op::Push(spec) => {
                let mut arr = Vec::new();
                push_into(&mut arr, spec, cx.coll());
                Bson::Array(arr)
            }
            Op::AddToSet(vals) => Bson::Array(vals.clone()),
            Op::Unset | Op::Pop { .. } | Op::Pull(_) | Op::PullAll(_) | Op::RenameSource => {
                Bson::Null
            }
            Op::Rename { .. } => Bson::Null,
        })
    }

    /// Applies the operator to the existing value `cur`.
    pub(crate) fn modify(&self, cur: &Bson, cx: &OpCtx) -> Result<Modify> {
        let replace_if_changed = |v: Bson| {
            if identical(cur, &v) {
                Modify::NoOp
            } else {
                Modify::Replace(v)
            }
        };
        Ok(match self {
            Op::Set(v) => replace_if_changed(v.clone()),
            Op::SetOnInsert(v) => {
                if cx.is_upsert_insert {
                    replace_if_changed(v.clone())
                } else {
                    Modify::NoOp
                }
            }
            Op::Unset => Modify::Remove,
            Op::Inc(arg) | Op::Mul(arg) => {
                let is_inc = matches!(self, Op::Inc(_));
                let name = if is_inc { "$inc" } else { "$mul" };
                if !is_number(cur) {
                    return Err(MongoError::type_mismatch(format!(
                        "Cannot apply {name} to a value of non-numeric type. {{{}}} has the field '{}' of non-numeric type {}",
                        cx.id,
                        cx.field,
                        fmt::type_name(cur)
                    )));
                }
                match arith(cur, arg, is_inc) {
                    Some(v) => replace_if_changed(v),
                    None => {
                        return Err(MongoError::bad_value(format!(
                            "Failed to apply {name} operations to current value ({}) for document {{{}}}",
                            debug_number(cur),
                            cx.id
                        )));
                    }
                }
            }
            Op::Min(v) | Op::Max(v) => {
                let want = if matches!(self, Op::Min(_)) {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                if cmp_values_with(v, cur, cx.coll()) == want {
                    Modify::Replace(v.clone())
                } else {
                    Modify::NoOp
                }
            }
            Op::CurrentDate { timestamp } => replace_if_changed(current_date(*timestamp, cx)),
            Op::Bit(ops) => {
                if !matches!(cur, Bson::Int32(_) | Bson::Int64(_)) {
                    return Err(MongoError::bad_value(format!(
                        "Cannot apply $bit to a value of non-integral type.{} has the field {} of non-integer type {}",
                        cx.id,
                        cx.field,
                        fmt::type_name(cur)
                    )));
                }
                let mut v = cur.clone();
                for (op, arg) in ops {
                    v = bit(*op, &v, arg);
                }
                replace_if_changed(v)
            }
            Op::Push(spec) => {
                let Bson::Array(arr) = cur else {
                    return Err(MongoError::bad_value(format!(
                        "The field '{}' must be an array but is of type {} in document {{{}}}",
                        cx.path,
                        fmt::type_name(cur),
                        cx.id
                    )));
                };
                push_existing(arr, spec, cx.coll())
            }
            Op::AddToSet(vals) => {
                let Bson::Array(arr) = cur else {
                    return Err(MongoError::bad_value(format!(
                        "Cannot apply $addToSet to non-array field. Field named '{}' has non-array type {}",
                        cx.field,
                        fmt::type_name(cur)
                    )));
                };
                let mut add: Vec<Bson> = Vec::new();
                for v in vals {
                    let seen = |e: &Bson| values_equal_with(e, v, cx.coll());
                    if !arr.iter().any(seen) && !add.iter().any(seen) {
                        add.push(v.clone());
                    }
                }
                if add.is_empty() {
                    Modify::NoOp
                } else {
                    Modify::Append(add)
                }
            }
            Op::Pop { front } => {
                let Bson::Array(arr) = cur else {
                    return Err(MongoError::type_mismatch(format!(
                        "Path '{}' contains an element of non-array type '{}'",
                        cx.path,
                        fmt::type_name(cur)
                    )));
                };
                if arr.is_empty() {
                    Modify::NoOp
                } else {
                    let mut a = arr.clone();
                    if *front {
                        a.remove(0);
                    } else {
                        a.pop();
                    }
                    Modify::Replace(Bson::Array(a))
                }
            }
            Op::Pull(_) | Op::PullAll(_) => {
                let Bson::Array(arr) = cur else {
                    return Err(MongoError::bad_value(
                        "Cannot apply $pull to a non-array value",
                    ));
                };
                let kept: Vec<Bson> = arr
                    .iter()
                    .filter(|e| !self.pulls(e, cx.collation))
                    .cloned()
                    .collect();
                if kept.len() == arr.len() {
                    Modify::NoOp
                } else {
                    Modify::Replace(Bson::Array(kept))
                }
            }
            Op::Rename { .. } | Op::RenameSource => Modify::NoOp,
        })
    }

    fn pulls(&self, e: &Bson, coll: Option<&std::sync::Arc<doc::Collation>>) -> bool {
        let c = coll.map(|c| &**c);
        match self {
            Op::PullAll(vals) => vals.iter().any(|v| values_equal_with(v, e, c)),
            Op::Pull(PullMatcher::Equal(v)) => values_equal_with(v, e, c),
            Op::Pull(PullMatcher::Object(f)) => match e {
                Bson::Document(d) => f.matches_under(d, coll),
                _ => false,
            },
            Op::Pull(PullMatcher::Element(f)) => {
                let mut d = Document::new();
                d.insert(PULL_FIELD, e.clone());
                f.matches_under(&d, coll)
            }
            _ => false,
        }
    }
}

fn is_number(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

fn decimal(f: f64) -> Bson {
    let s = if f.is_nan() {
        "NaN".to_string()
    } else if f.is_infinite() {
        if f > 0.0 {
            "Infinity".to_string()
        } else {
            "-Infinity".to_string()
        }
    } else {
        format!("{f}")
    };
    s.parse::<bson::Decimal128>()
        .map_or(Bson::Double(f), Bson::Decimal128)
}

/// `$inc`/`$mul` arithmetic with MongoDB's result types; `None` on int64 overflow.
fn arith(a: &Bson, b: &Bson, add: bool) -> Option<Bson> {
    let int = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    if matches!(a, Bson::Decimal128(_)) || matches!(b, Bson::Decimal128(_)) {
        let (x, y) = (as_f64(a)?, as_f64(b)?);
        return Some(decimal(if add { x + y } else { x * y }));
    }
    match (int(a), int(b)) {
        (Some(x), Some(y)) => {
            let r = if add {
                x.checked_add(y)
            } else {
                x.checked_mul(y)
            }?;
            if let (Bson::Int32(_), Bson::Int32(_)) = (a, b)
                && let Ok(r32) = i32::try_from(r)
            {
                return Some(Bson::Int32(r32));
            }
            Some(Bson::Int64(r))
        }
        _ => {
            let (x, y) = (as_f64(a)?, as_f64(b)?);
            Some(Bson::Double(if add { x + y } else { x * y }))
        }
    }
}

/// MongoDB's `SafeNum::debugString` form of a number.
fn debug_number(v: &Bson) -> String {
    match v {
        Bson::Int32(i) => format!("(NumberInt){i}"),
        Bson::Int64(i) => format!("(NumberLong){i}"),
        Bson::Double(d) => format!("(NumberDouble){d}"),
        other => format!("(NumberDecimal){}", fmt::value(other)),
    }
}

fn bit(op: BitOp, cur: &Bson, arg: &Bson) -> Bson {
    let val = |v: &Bson| match v {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        _ => 0,
    };
    let (x, y) = (val(cur), val(arg));
    let r = match op {
        BitOp::And => x & y,
        BitOp::Or => x | y,
        BitOp::Xor => x ^ y,
    };
    match (cur, arg) {
        (Bson::Int32(_), Bson::Int32(_)) => Bson::Int32(r as i32),
        _ => Bson::Int64(r),
    }
}

fn current_date(timestamp: bool, cx: &OpCtx) -> Bson {
    if timestamp {
        Bson::Timestamp(cx.cluster_time)
    } else {
        Bson::DateTime(cx.now)
    }
}

fn parse_current_date(field: &str, arg: &Bson) -> Result<Op> {
    match arg {
        Bson::Boolean(_) => Ok(Op::CurrentDate { timestamp: false }),
        Bson::Document(d) => {
            let bad = || {
                MongoError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}",
                )
            };
            let mut timestamp = None;
            for (k, v) in d {
                if k != "$type" {
                    return Err(MongoError::bad_value(format!(
                        "Unrecognized $currentDate option: {k}"
                    )));
                }
                timestamp = match v.as_str() {
                    Some("date") => Some(false),
                    Some("timestamp") => Some(true),
                    _ => return Err(bad()),
                };
            }
            timestamp
                .map(|timestamp| Op::CurrentDate { timestamp })
                .ok_or_else(bad)
        }
        _ => Err(MongoError::bad_value(format!(
            "{field} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}})."
        ))),
    }
}

fn parse_bit(arg: &Bson) -> Result<Op> {
    let Bson::Document(d) = arg else {
        return Err(MongoError::bad_value(format!(
            "The $bit modifier is not compatible with a {}. You must pass in an embedded document: {{$bit: {{field: {{and/or/xor: #}}}}",
            fmt::type_name(arg)
        )));
    };
    let mut ops = Vec::new();
    for (k, v) in d {
        let op = match k.as_str() {
            "and" => BitOp::And,
            "or" => BitOp::Or,
            "xor" => BitOp::Xor,
            _ => {
                return Err(MongoError::bad_value(format!(
                    "The $bit modifier only supports 'and', 'or', and 'xor', not '{k}' which is an unknown operator: {{{}}}",
                    fmt::element(k, v)
                )));
            }
        };
        if !matches!(v, Bson::Int32(_) | Bson::Int64(_)) {
            return Err(MongoError::bad_value(format!(
                "The $bit modifier field must be an Integer(32/64 bit); a '{}' is not supported here: {{{}}}",
                fmt::type_name(v),
                fmt::element(k, v)
            )));
        }
        ops.push((op, v.clone()));
    }
    if ops.is_empty() {
        return Err(MongoError::bad_value(
            "You must pass in at least one bitwise operation. The format is: {$bit: {field: {and/or/xor: #}}",
        ));
    }
    Ok(Op::Bit(ops))
}

fn integral(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(*d as i64),
        Bson::Decimal128(_) => {
            let f = as_f64(v)?;
            (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
        }
        _ => None,
    }
}

fn parse_push(arg: &Bson) -> Result<PushSpec> {
    let mut spec = PushSpec {
        each: vec![arg.clone()],
        slice: None,
        sort: None,
        position: None,
    };
    let Bson::Document(d) = arg else {
        return Ok(spec);
    };
    if !d.contains_key("$each") {
        return Ok(spec);
    }
    for (k, v) in d {
        match k.as_str() {
            "$each" => match v {
                Bson::Array(a) => spec.each = a.clone(),
                other => {
                    return Err(MongoError::bad_value(format!(
                        "The argument to $each in $push must be an array but it was of type: {}",
                        fmt::type_name(other)
                    )));
                }
            },
            "$slice" => {
                spec.slice = Some(integral(v).ok_or_else(|| {
                    MongoError::bad_value(format!(
                        "The value for $slice must be an integer value but was given type: {}",
                        fmt::type_name(v)
                    ))
                })?);
            }
            "$position" => {
                spec.position = Some(integral(v).ok_or_else(|| {
                    MongoError::bad_value(format!(
                        "The value for $position must be an integer value, not of type: {}",
                        fmt::type_name(v)
                    ))
                })?);
            }
            "$sort" => spec.sort = Some(parse_sort(v)?),
            other => {
                return Err(MongoError::bad_value(format!(
                    "Unrecognized clause in $push: {other}"
                )));
            }
        }
    }
    Ok(spec)
}

fn parse_sort(v: &Bson) -> Result<SortSpec> {
    let invalid = || {
        MongoError::bad_value(
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        )
    };
    let dir = |v: &Bson| match integral(v) {
        Some(1) => Ok(true),
        Some(-1) => Ok(false),
        _ => Err(MongoError::bad_value(
            "The $sort element value must be either 1 or -1",
        )),
    };
    match v {
        Bson::Document(d) => {
            if d.is_empty() {
                return Err(MongoError::bad_value(
                    "The $sort pattern is empty when it should be a set of fields.",
                ));
            }
            let mut keys = Vec::new();
            for (k, v) in d {
                if k.is_empty() || k.starts_with('$') || k.split('.').any(str::is_empty) {
                    return Err(MongoError::bad_value(
                        "The $sort field is a special modifier, it cannot be used as a field name",
                    ));
                }
                keys.push((k.clone(), dir(v)?));
            }
            Ok(SortSpec::Pattern(keys))
        }
        v if is_number(v) => dir(v).map(SortSpec::Whole).map_err(|_| invalid()),
        _ => Err(invalid()),
    }
}

fn sort_key<'a>(e: &'a Bson, path: &str) -> &'a Bson {
    static NULL: Bson = Bson::Null;
    match e {
        Bson::Document(d) => doc::get_path(d, path).unwrap_or(&NULL),
        _ => &NULL,
    }
}

fn sort_array(arr: &mut [Bson], spec: &SortSpec, coll: Option<&doc::Collation>) {
    match spec {
        SortSpec::Whole(asc) => arr.sort_by(|a, b| {
            let o = cmp_values_with(a, b, coll);
            if *asc { o } else { o.reverse() }
        }),
        SortSpec::Pattern(keys) => arr.sort_by(|a, b| {
            for (k, asc) in keys {
                let o = cmp_values_with(sort_key(a, k), sort_key(b, k), coll);
                let o = if *asc { o } else { o.reverse() };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        }),
    }
}

/// Applies `$push` to `arr`; returns whether the array was changed in place other than by a
/// plain append (MongoDB then logs the whole array).
fn push_into(arr: &mut Vec<Bson>, spec: &PushSpec, coll: Option<&doc::Collation>) -> bool {
    let len = arr.len();
    let mut whole = false;
    if !spec.each.is_empty() {
        match spec.position {
            Some(p) if len > 0 && p <= len as i64 => {
                let at = if p >= 0 {
                    p as usize
                } else {
                    len.saturating_sub(p.unsigned_abs() as usize)
                };
                arr.splice(at..at, spec.each.iter().cloned());
                whole = true;
            }
            _ => {
                whole = len == 0;
                arr.extend(spec.each.iter().cloned());
            }
        }
    }
    if let Some(s) = &spec.sort {
        sort_array(arr, s, coll);
        whole = true;
    }
    if let Some(n) = spec.slice {
        let keep = n.unsigned_abs().min(arr.len() as u64) as usize;
        if keep < arr.len() {
            if n >= 0 {
                arr.truncate(keep);
            } else {
                arr.drain(..arr.len() - keep);
            }
            whole = true;
        }
    }
    whole
}

fn push_existing(arr: &[Bson], spec: &PushSpec, coll: Option<&doc::Collation>) -> Modify {
    let mut a = arr.to_vec();
    let whole = push_into(&mut a, spec, coll);
    if whole {
        Modify::Replace(Bson::Array(a))
    } else if spec.each.is_empty() {
        Modify::NoOp
    } else {
        Modify::Append(spec.each.clone())
    }
}

fn parse_add_to_set(arg: &Bson) -> Result<Vec<Bson>> {
    let vals = match arg {
        Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$each") => {
            if d.len() > 1 {
                return Err(MongoError::bad_value(format!(
                    "Found unexpected fields after $each in $addToSet: {}",
                    fmt::document(d)
                )));
            }
            match d.get("$each") {
                Some(Bson::Array(a)) => a.clone(),
                Some(other) => {
                    return Err(MongoError::bad_value(format!(
                        "The argument to $each in $addToSet must be an array but it was of type {}",
                        fmt::type_name(other)
                    )));
                }
                None => Vec::new(),
            }
        }
        other => vec![other.clone()],
    };
    let mut out: Vec<Bson> = Vec::new();
    for v in vals {
        if !out.iter().any(|o| values_equal(o, &v)) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Whether a `$pull` object's first field is a query operator that applies to a value
/// (`$gt`, `$in`, `$elemMatch`, ...), as opposed to a field name or `$and`-style operator.
fn is_value_operator(name: &str) -> bool {
    name.starts_with('$')
        && !matches!(
            name,
            "$and" | "$or" | "$nor" | "$expr" | "$where" | "$text" | "$comment" | "$jsonSchema"
        )
}

fn parse_pull(arg: &Bson) -> Result<PullMatcher> {
    match arg {
        Bson::Document(d) => {
            let first = d.keys().next().map(String::as_str).unwrap_or("");
            if is_value_operator(first) {
                let mut q = Document::new();
                q.insert(PULL_FIELD, arg.clone());
                Ok(PullMatcher::Element(Box::new(Filter::parse(&q)?)))
            } else {
                Ok(PullMatcher::Object(Box::new(Filter::parse(d)?)))
            }
        }
        Bson::RegularExpression(_) => {
            let mut q = Document::new();
            q.insert(PULL_FIELD, arg.clone());
            Ok(PullMatcher::Element(Box::new(Filter::parse(&q)?)))
        }
        other => Ok(PullMatcher::Equal(other.clone())),
    }
}

/// An error as MongoDB raises it for a `$`-prefixed field name in an update path.
pub(crate) fn dollar_field(part: &str, path: &str) -> MongoError {
    MongoError::new(
        ErrorCode::DollarPrefixedFieldName,
        format!(
            "The dollar ($) prefixed field '{part}' in '{path}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."
        ),
    )
}
