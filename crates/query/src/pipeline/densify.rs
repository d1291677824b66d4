//! `$densify`: fills the gaps in a numeric or date field, stepping from a lower bound,
//! within partitions. Documents without a value (null or missing) pass through; a
//! generated document holds only the densified field and the partition fields.

use std::collections::HashMap;

use bson::{Bson, Document};
use doc::compare::cmp_values;
use errors::{MongoError, Result};

use super::group::canonical_key;
use super::{DocIter, Run, dotted, set_field};
use crate::expr::date::add_units;
use crate::expr::{num, type_name};
use crate::sort::{SortSpec, Sorter};

fn err(code: i32, msg: impl Into<String>) -> MongoError {
    MongoError::with_code(code, msg)
}

/// The most documents one `$densify` may generate (mongod's
/// `internalQueryMaxAllowedDensifyDocs`).
const MAX_GENERATED: usize = 500_000;

const UNITS: &[&str] = &[
    "millisecond",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "quarter",
    "year",
];

/// A partition's field values, and its next value to generate.
type Partition = (Vec<(String, Bson)>, Option<Bson>);

#[derive(Debug, Clone)]
enum Bounds {
    Full,
    Partition,
    Explicit(Box<(Bson, Bson)>),
}

/// A parsed `$densify`.
#[derive(Debug, Clone)]
pub(crate) struct Densify {
    field: String,
    partition_by: Vec<String>,
    step: Bson,
    unit: Option<String>,
    bounds: Bounds,
}

impl Densify {
    pub(crate) fn parse(v: &Bson) -> Result<Densify> {
        let Bson::Document(spec) = v else {
            return Err(err(
                9,
                format!(
                    "The $densify stage specification must be an object, found {}",
                    type_name(Some(v))
                ),
            ));
        };
        let missing = |f: &str| {
            err(
                40414,
                format!("BSON field '$densify.{f}' is missing but a required field"),
            )
        };
        let wrong = |f: &str, v: &Bson, want: &str| {
            err(
                14,
                format!(
                    "BSON field '$densify.{f}' is the wrong type '{}', expected type '{want}'",
                    type_name(Some(v))
                ),
            )
        };
        let path_ok = |p: &str| -> Result<()> {
            if p.starts_with('$') || p.is_empty() || p.split('.').any(str::is_empty) {
                return Err(err(
                    16410,
                    "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
                ));
            }
            Ok(())
        };
        let mut field = None;
        let mut partition_by = Vec::new();
        let mut range = None;
        for (k, v) in spec {
            match k.as_str() {
                "field" => match v {
                    Bson::String(s) => {
                        path_ok(s)?;
                        field = Some(s.clone());
                    }
                    _ => return Err(wrong(k, v, "string")),
                },
                "partitionByFields" => match v {
                    Bson::Array(a) => {
                        for p in a {
                            let Bson::String(p) = p else {
                                return Err(wrong(k, p, "string"));
                            };
                            path_ok(p)?;
                            partition_by.push(p.clone());
                        }
                    }
                    _ => return Err(wrong(k, v, "array")),
                },
                "range" => match v {
                    Bson::Document(r) => range = Some(r),
                    _ => return Err(wrong(k, v, "object")),
                },
                other => {
                    return Err(err(
                        40415,
                        format!("BSON field '$densify.{other}' is an unknown field."),
                    ));
                }
            }
        }
        let field = field.ok_or_else(|| missing("field"))?;
        let range = range.ok_or_else(|| missing("range"))?;
        for p in &partition_by {
            let nested = |a: &str, b: &str| b.starts_with(a) && b[a.len()..].starts_with('.');
            if p == &field || nested(p, &field) {
                return Err(err(
                    8993000,
                    format!(
                        "partitionByFields '{p}' cannot include field '{field}' that is being densified."
                    ),
                ));
            }
            if nested(&field, p) {
                return Err(err(
                    9554500,
                    format!(
                        "field '{field}' that is being densified cannot include partitionByFields '{p}'."
                    ),
                ));
            }
        }
        let mut step = None;
        let mut unit = None;
        let mut bounds = None;
        for (k, v) in range {
            match k.as_str() {
                "step" => step = Some(v.clone()),
                "unit" => match v {
                    Bson::String(u) if UNITS.contains(&u.as_str()) => unit = Some(u.clone()),
                    Bson::String(u) => {
                        return Err(err(9, format!("unknown time unit value: {u}")));
                    }
                    _ => return Err(wrong("range.unit", v, "string")),
                },
                "bounds" => bounds = Some(v),
                other => {
                    return Err(err(
                        40415,
                        format!("BSON field '$densify.range.{other}' is an unknown field."),
                    ));
                }
            }
        }
        let step = step.ok_or_else(|| missing("range.step"))?;
        let bounds = bounds.ok_or_else(|| missing("range.bounds"))?;
        if num::kind(&step).is_none() {
            return Err(err(
                14,
                format!(
                    "BSON field '$densify.range.step' is the wrong type '{}', expected types '[int, decimal, double, long]'",
                    type_name(Some(&step))
                ),
            ));
        }
        if doc::compare::as_f64(&step).is_none_or(|x| x.is_nan() || x <= 0.0) {
            return Err(err(
                5733401,
                "The step parameter in a range statement must be a strictly positive numeric value",
            ));
        }
        if unit.is_some() && num::int(&step).is_none_or(|i| i as f64 != num::f(&step)) {
            return Err(err(
                6586400,
                "The step parameter in a range statement must be a whole number when densifying a date range",
            ));
        }
        let bounds = match bounds {
            Bson::String(s) if s == "full" => Bounds::Full,
            Bson::String(s) if s == "partition" => {
                if partition_by.is_empty() {
                    return Err(err(
                        5733408,
                        "One cannot specify the bounds as 'partition' without specifying a non-empty array of partitionByFields. You may have meant to specify 'full' bounds.",
                    ));
                }
                Bounds::Partition
            }
            Bson::String(_) => {
                return Err(err(
                    5946802,
                    "Bounds string must either be 'full' or 'partition'",
                ));
            }
            Bson::Array(a) => {
                if a.len() != 2 {
                    return Err(err(
                        5733403,
                        "A bounding array in a range statement must have exactly two elements",
                    ));
                }
                let (lo, hi) = (&a[0], &a[1]);
                match (lo, hi) {
                    (Bson::DateTime(_), Bson::DateTime(_)) => {
                        if unit.is_none() {
                            return Err(err(
                                5733410,
                                "A bounding array of dates must specify a unit",
                            ));
                        }
                    }
                    (x, y) if num::kind(x).is_some() && num::kind(y).is_some() => {
                        if unit.is_some() {
                            return Err(err(5733409, "Numeric bounds may not have unit parameter"));
                        }
                    }
                    (x, y)
                        if (num::kind(x).is_some() || matches!(x, Bson::DateTime(_)))
                            && (num::kind(y).is_some() || matches!(y, Bson::DateTime(_))) =>
                    {
                        return Err(err(
                            5733406,
                            "A bounding array must contain either both dates or both numeric types",
                        ));
                    }
                    _ => return Err(err(5946800, "Explicit bounds must be numeric or dates")),
                }
                if cmp_values(lo, hi).is_gt() {
                    return Err(err(
                        5733402,
                        "A bounding array must be an ascending array of either two dates or two numbers",
                    ));
                }
                Bounds::Explicit(Box::new((lo.clone(), hi.clone())))
            }
            _ => {
                return Err(err(
                    5733404,
                    "The bounds in a range statement must be the string 'full', 'partition', or an ascending array of two numbers or two dates",
                ));
            }
        };
        Ok(Densify {
            field,
            partition_by,
            step,
            unit,
            bounds,
        })
    }

    /// The next value after `v`: `v + step`, or `step` units later for a date.
    fn next(&self, v: &Bson) -> Result<Bson> {
        match (v, &self.unit) {
            (Bson::DateTime(d), Some(u)) => {
                let ms = add_units(d.timestamp_millis(), u, num::int(&self.step).unwrap_or(1))
                    .ok_or_else(|| err(5166406, "$densify overflowed a date"))?;
                Ok(Bson::DateTime(bson::DateTime::from_millis(ms)))
            }
            _ => Ok(num::add(v, &self.step)),
        }
    }

    /// The densified field's value in `d`: `None` when null or missing (the document
    /// passes through), an error for a value that cannot be densified.
    fn value_of(&self, d: &Document) -> Result<Option<Bson>> {
        match doc::path::get_path(d, &self.field) {
            None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
            Some(v @ Bson::DateTime(_)) => {
                if self.unit.is_none() {
                    return Err(err(
                        6053600,
                        "Encountered date densify value in collection when step does not have a date unit.",
                    ));
                }
                Ok(Some(v.clone()))
            }
            Some(v) if num::kind(v).is_some() => {
                if self.unit.is_some() {
                    return Err(err(
                        6053600,
                        "Encountered numeric densify value in collection when step has a date unit.",
                    ));
                }
                Ok(Some(v.clone()))
            }
            Some(_) => Err(err(5733201, "Densify field type must be numeric or a date")),
        }
    }

    /// A generated document: the partition's fields and the value.
    fn generated(&self, part: &[(String, Bson)], v: Bson) -> Result<Document> {
        let mut d = Document::new();
        for (p, pv) in part {
            set_field(&mut d, &dotted(p), Some(pv.clone()));
        }
        set_field(&mut d, &dotted(&self.field), Some(v));
        Ok(d)
    }

    pub(crate) fn run(&self, input: DocIter, run: &Run) -> Result<DocIter> {
        let full = matches!(self.bounds, Bounds::Full);
        let mut keys = Document::new();
        if !full {
            for p in &self.partition_by {
                keys.insert(p.clone(), 1);
            }
        }
        keys.insert(self.field.clone(), 1);
        let spec = SortSpec::parse(&keys)?.with_collation(run.vars.shared_collation());
        let mut sorter = Sorter::new(spec, &run.limits, None);
        for d in input {
            run.env.check_interrupt()?;
            sorter.push(d?)?;
        }
        let coll = run.vars.collation();
        // Each partition's next value to generate, and its field values; in first-seen
        // order for the final pass of `full` bounds.
        let mut next: HashMap<String, usize> = HashMap::new();
        let mut parts: Vec<Partition> = Vec::new();
        let mut out = Vec::new();
        let mut generated = 0usize;
        let mut global: Option<(Bson, Bson)> = None;
        let mut emit = |out: &mut Vec<Result<Document>>,
                        d: Document,
                        generated_doc: bool|
         -> Result<()> {
            if generated_doc {
                generated += 1;
                if generated > MAX_GENERATED {
                    return Err(err(
                        5897900,
                        format!(
                            "Generated {generated} documents in $densify, which is over the limit of {MAX_GENERATED}. Increase the 'internalQueryMaxAllowedDensifyDocs' parameter to allow more generated documents"
                        ),
                    ));
                }
            }
            out.push(Ok(d));
            Ok(())
        };
        let upper = |global: &Option<(Bson, Bson)>| -> Option<Bson> {
            match &self.bounds {
                Bounds::Explicit(b) => Some(b.1.clone()),
                Bounds::Full => global.as_ref().map(|g| g.1.clone()),
                Bounds::Partition => None,
            }
        };
        for d in sorter.finish()? {
            run.env.check_interrupt()?;
            let d = d?;
            let Some(v) = self.value_of(&d)? else {
                emit(&mut out, d, false)?;
                continue;
            };
            let part: Vec<(String, Bson)> = self
                .partition_by
                .iter()
                .filter_map(|p| doc::path::get_path(&d, p).map(|v| (p.clone(), v.clone())))
                .collect();
            let mut key = String::new();
            for p in &self.partition_by {
                key.push_str(&canonical_key(
                    doc::path::get_path(&d, p).unwrap_or(&Bson::Undefined),
                    coll,
                ));
            }
            if global.is_none() {
                global = Some((v.clone(), v.clone()));
            }
            if let Some(g) = &mut global {
                g.1 = v.clone();
            }
            let i = match next.get(&key) {
                Some(i) => *i,
                None => {
                    let start = match &self.bounds {
                        Bounds::Explicit(b) => b.0.clone(),
                        Bounds::Full => global.as_ref().map_or(v.clone(), |g| g.0.clone()),
                        Bounds::Partition => v.clone(),
                    };
                    parts.push((part.clone(), Some(start)));
                    next.insert(key, parts.len() - 1);
                    parts.len() - 1
                }
            };
            let hi = upper(&global);
            // Generate up to the document's value (below the upper bound, if any).
            while let Some(c) = parts[i].1.clone() {
                let below_doc = cmp_values(&c, &v).is_lt();
                let below_hi = hi.as_ref().is_none_or(|h| cmp_values(&c, h).is_lt());
                if !below_doc || !below_hi {
                    break;
                }
                emit(&mut out, self.generated(&parts[i].0, c.clone())?, true)?;
                parts[i].1 = Some(self.next(&c)?);
            }
            if let Some(c) = parts[i].1.clone() {
                if cmp_values(&c, &v).is_eq() {
                    parts[i].1 = Some(self.next(&c)?);
                }
            }
            emit(&mut out, d, false)?;
        }
        // Each partition then reaches the upper bound (explicit, or the whole input's
        // maximum for `full`).
        if let Some(hi) = upper(&global) {
            for (part, cand) in &parts {
                let mut c = cand.clone();
                while let Some(v) = c {
                    if !cmp_values(&v, &hi).is_lt() {
                        break;
                    }
                    emit(&mut out, self.generated(part, v.clone())?, true)?;
                    c = Some(self.next(&v)?);
                }
            }
        }
        Ok(Box::new(out.into_iter()))
    }
}
