//! `$setWindowFields`: window functions over partitions of the input, in `sortBy` order.
//!
//! The input is sorted by (partition key, `sortBy`) through the spilling [`Sorter`], then
//! read back one partition at a time: only the current partition is held in memory. Each
//! output field is computed over the partition as a column, then written into the
//! documents as `$addFields` would.
//!
//! A window is a contiguous run of the sorted partition, found per document from its
//! position (`documents`) or its `sortBy` value (`range`, with `unit` for dates). Windows
//! that start at the partition's first document are accumulated incrementally; others
//! are recomputed per document, at a cost proportional to the window's size.

use std::cmp::Ordering;

use bson::{Bson, Document};
use doc::compare::{cmp_values_with, values_equal_with};
use errors::{MongoError, Result};

use super::group::parse_accumulator;
use super::{DocIter, Run, dotted, set_field};
use crate::expr::accum::{Acc, AccKind, AccParams};
use crate::expr::date::{add_units, unit_ms};
use crate::expr::{Expr, Vars, num, type_name};
use crate::sort::{SortSpec, Sorter};

const FAILED_TO_PARSE: i32 = 9;
const TYPE_MISMATCH: i32 = 14;

fn err(code: i32, msg: impl Into<String>) -> MongoError {
    MongoError::with_code(code, msg)
}

fn parse_err(msg: impl Into<String>) -> MongoError {
    err(FAILED_TO_PARSE, msg)
}

/// A parsed `$setWindowFields`.
#[derive(Debug, Clone)]
pub(crate) struct SetWindowFields {
    partition_by: Option<Expr>,
    sort_by: Option<SortSpec>,
    outputs: Vec<Output>,
}

#[derive(Debug, Clone)]
struct Output {
    path: Vec<String>,
    func: Func,
    window: Option<Window>,
}

#[derive(Debug, Clone)]
enum Func {
    Acc(AccKind, Expr, AccParams),
    Covariance {
        samp: bool,
        x: Expr,
        y: Expr,
    },
    Derivative {
        input: Expr,
        unit: Option<i64>,
    },
    Integral {
        input: Expr,
        unit: Option<i64>,
    },
    ExpMovingAvg {
        input: Expr,
        alpha: f64,
    },
    Rank {
        dense: bool,
    },
    DocumentNumber,
    Shift {
        output: Expr,
        by: i64,
        default: Bson,
    },
    LinearFill(Expr),
    Locf(Expr),
}

#[derive(Debug, Clone, PartialEq)]
enum Bound {
    Unbounded,
    /// The current document (its position, in both kinds of window).
    Current,
    /// A position offset (`documents`) or a value offset (`range`).
    At(Bson),
}

#[derive(Debug, Clone)]
struct Window {
    range: bool,
    lower: Bound,
    upper: Bound,
    unit: Option<String>,
}

impl Window {
    fn bounded(&self) -> bool {
        self.lower != Bound::Unbounded || self.upper != Bound::Unbounded
    }
}

const TIME_UNITS: &[&str] = &[
    "year",
    "quarter",
    "month",
    "week",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
];

impl SetWindowFields {
    pub(crate) fn parse(v: &Bson) -> Result<SetWindowFields> {
        let Bson::Document(spec) = v else {
            return Err(parse_err(format!(
                "the $setWindowFields stage specification must be an object, found {}",
                type_name(Some(v))
            )));
        };
        let mut partition_by = None;
        let mut sort_by = None;
        let mut output = None;
        let wrong_type = |f: &str, v: &Bson| {
            err(
                TYPE_MISMATCH,
                format!(
                    "BSON field '$setWindowFields.{f}' is the wrong type '{}', expected type 'object'",
                    type_name(Some(v))
                ),
            )
        };
        for (k, v) in spec {
            match k.as_str() {
                "partitionBy" => {
                    let e = Expr::parse(v)?;
                    if matches!(e.as_literal(), Some(Bson::Array(_))) || matches!(v, Bson::Array(_))
                    {
                        return Err(array_partition());
                    }
                    partition_by = Some(e);
                }
                "sortBy" => {
                    let Bson::Document(d) = v else {
                        return Err(wrong_type(k, v));
                    };
                    sort_by = Some(SortSpec::parse(d)?);
                }
                "output" => {
                    let Bson::Document(d) = v else {
                        return Err(wrong_type(k, v));
                    };
                    output = Some(d);
                }
                other => {
                    return Err(err(
                        40415,
                        format!("BSON field '$setWindowFields.{other}' is an unknown field."),
                    ));
                }
            }
        }
        let Some(output) = output else {
            return Err(err(
                40414,
                "BSON field '$setWindowFields.output' is missing but a required field",
            ));
        };
        let names: Vec<&String> = output.keys().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                let prefix = |x: &str, y: &str| y.starts_with(x) && y[x.len()..].starts_with('.');
                if prefix(a, b) || prefix(b, a) {
                    return Err(err(
                        6307900,
                        "$setWindowFields 'output' specification contains two conflicting paths",
                    ));
                }
            }
        }
        let mut outputs = Vec::new();
        for (name, v) in output {
            if name.starts_with('$') || name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(err(
                    16410,
                    format!(
                        "FieldPath field names may not start with '$' or be empty. Given: {name}"
                    ),
                ));
            }
            outputs.push(parse_output(name, v, sort_by.as_ref())?);
        }
        Ok(SetWindowFields {
            partition_by,
            sort_by,
            outputs,
        })
    }

    /// Runs the stage: sorts its input, then yields one partition at a time.
    pub(crate) fn run(&self, input: DocIter, run: &Run) -> Result<DocIter> {
        let vars = &run.vars;
        // Sort by (partition key, sortBy), each document wrapped as {p, d}.
        let mut keys = Document::new();
        if self.partition_by.is_some() {
            keys.insert("p", 1);
        }
        if let Some(s) = &self.sort_by {
            for (f, asc) in s.keys() {
                keys.insert(format!("d.{f}"), if *asc { 1 } else { -1 });
            }
        }
        let wrapped: DocIter = if keys.is_empty() {
            Box::new(input.map(|d| d.map(|d| bson::doc! {"d": d})))
        } else {
            let spec = SortSpec::parse(&keys)?.with_collation(vars.shared_collation());
            let mut sorter = Sorter::new(spec, &run.limits, None);
            for d in input {
                run.env.check_interrupt()?;
                let d = d?;
                let mut w = Document::new();
                if let Some(p) = &self.partition_by {
                    let key = p.eval(&d, vars)?.unwrap_or(Bson::Null);
                    if matches!(key, Bson::Array(_)) {
                        return Err(array_partition());
                    }
                    w.insert("p", key);
                }
                w.insert("d", d);
                sorter.push(w)?;
            }
            sorter.finish()?
        };
        Ok(Box::new(Partitions {
            stage: self.clone(),
            input: wrapped.peekable(),
            vars: vars.clone(),
            max_bytes: (!run.limits.allow_disk_use).then_some(run.limits.sort_bytes),
            out: Vec::new().into_iter(),
            failed: false,
        }))
    }

    /// Computes every output over one sorted partition and writes the results in.
    fn partition(&self, mut docs: Vec<Document>, vars: &Vars) -> Result<Vec<Document>> {
        let mut cols = Vec::with_capacity(self.outputs.len());
        for o in &self.outputs {
            cols.push(self.column(o, &docs, vars)?);
        }
        for (o, col) in self.outputs.iter().zip(cols) {
            for (d, v) in docs.iter_mut().zip(col) {
                set_field(d, &o.path, Some(v));
            }
        }
        Ok(docs)
    }

    /// The `sortBy` field's value in each document (`None`: missing): the one field of a
    /// range window, `$linearFill`, `$derivative` and `$integral`.
    fn sort_values(&self, docs: &[Document], vars: &Vars) -> Result<Vec<Option<Bson>>> {
        let Some((f, _)) = self.sort_by.as_ref().and_then(|s| s.keys().first()) else {
            return Ok(vec![None; docs.len()]);
        };
        let e = Expr::parse(&Bson::String(format!("${f}")))?;
        docs.iter().map(|d| e.eval(d, vars)).collect()
    }

    fn column(&self, o: &Output, docs: &[Document], vars: &Vars) -> Result<Vec<Bson>> {
        let n = docs.len();
        let eval = |e: &Expr| -> Result<Vec<Option<Bson>>> {
            docs.iter().map(|d| e.eval(d, vars)).collect()
        };
        match &o.func {
            Func::DocumentNumber => Ok((1..=n as i64).map(num::narrow).collect()),
            Func::Rank { dense } => {
                // Ties are equal sort keys: null and missing tie, arrays by their sort key.
                let spec = self
                    .sort_by
                    .as_ref()
                    .map(|s| s.clone().with_collation(vars.shared_collation()));
                let (mut rank, mut distinct) = (0i64, 0i64);
                Ok((0..n)
                    .map(|i| {
                        let tie = i > 0
                            && spec.as_ref().is_some_and(|s| {
                                s.compare(&docs[i - 1], &docs[i]) == Ordering::Equal
                            });
                        if !tie {
                            rank = i as i64 + 1;
                            distinct += 1;
                        }
                        num::narrow(if *dense { distinct } else { rank })
                    })
                    .collect())
            }
            Func::Shift {
                output,
                by,
                default,
            } => {
                let vals = eval(output)?;
                Ok((0..n as i64)
                    .map(|i| match usize::try_from(i + by).ok().filter(|j| *j < n) {
                        Some(j) => vals[j].clone().unwrap_or(Bson::Null),
                        None => default.clone(),
                    })
                    .collect())
            }
            Func::Locf(e) => {
                let mut last = Bson::Null;
                Ok(eval(e)?
                    .into_iter()
                    .map(|v| {
                        if let Some(v) = v.filter(|v| !nullish(v)) {
                            last = v;
                        }
                        last.clone()
                    })
                    .collect())
            }
            Func::LinearFill(e) => linear_fill(eval(e)?, self.sort_values(docs, vars)?),
            Func::ExpMovingAvg { input, alpha } => {
                let mut cur: Option<f64> = None;
                let mut decimal = false;
                Ok(eval(input)?
                    .into_iter()
                    .map(|v| {
                        if let Some(v) = v.filter(|v| num::kind(v).is_some()) {
                            decimal |= matches!(v, Bson::Decimal128(_));
                            let x = num::f(&v);
                            cur = Some(cur.map_or(x, |c| x * alpha + c * (1.0 - alpha)));
                        }
                        match cur {
                            None => Bson::Null,
                            Some(c) if decimal => num::dec_from_f64(c),
                            Some(c) => Bson::Double(c),
                        }
                    })
                    .collect())
            }
            Func::Acc(..)
            | Func::Covariance { .. }
            | Func::Derivative { .. }
            | Func::Integral { .. } => {
                let bounds = self.bounds(o, docs, vars)?;
                self.windowed(o, docs, vars, &bounds)
            }
        }
    }

    /// Each document's window as a half-open range of positions in the partition.
    fn bounds(&self, o: &Output, docs: &[Document], vars: &Vars) -> Result<Vec<(usize, usize)>> {
        let n = docs.len();
        let Some(w) = o.window.as_ref().filter(|w| w.bounded() || w.range) else {
            return Ok(vec![(0, n); n]);
        };
        let position = |i: usize, b: &Bound, lower: bool| -> usize {
            match b {
                Bound::Unbounded if lower => 0,
                Bound::Unbounded => n,
                Bound::Current => i + usize::from(!lower),
                Bound::At(v) => (i as i64 + num::int(v).unwrap_or(0) + i64::from(!lower))
                    .clamp(0, n as i64) as usize,
            }
        };
        if !w.range {
            return Ok((0..n)
                .map(|i| (position(i, &w.lower, true), position(i, &w.upper, false)))
                .collect());
        }
        // A range window: by the sortBy value, numeric (or a date with a unit) in every
        // document, since every document gets an output.
        let xs: Vec<Bson> = self
            .sort_values(docs, vars)?
            .into_iter()
            .map(|x| {
                let name = x.as_ref().map_or("missing", |v| type_name(Some(v)));
                match (&w.unit, x) {
                    (Some(_), Some(x @ Bson::DateTime(_))) => Ok(x),
                    (Some(_), _) => Err(err(
                        5429513,
                        format!("Invalid range: Expected the sortBy field to be a Date, but it was {name}"),
                    )),
                    (None, Some(Bson::DateTime(_))) => Err(err(
                        5429413,
                        "Invalid range: For windows that involve date or time ranges, a unit must be provided.",
                    )),
                    (None, Some(x)) if num::kind(&x).is_some() => Ok(x),
                    (None, _) => Err(err(
                        5429414,
                        format!("Invalid range: Expected the sortBy field to be a number, but it was {name}"),
                    )),
                }
            })
            .collect::<Result<_>>()?;
        let shifted = |x: &Bson, by: &Bson| -> Result<Bson> {
            match (&w.unit, x) {
                (Some(u), Bson::DateTime(d)) => {
                    let ms = add_units(d.timestamp_millis(), u, num::int(by).unwrap_or(0))
                        .ok_or_else(|| err(5166406, "$setWindowFields range bound overflowed"))?;
                    Ok(Bson::DateTime(bson::DateTime::from_millis(ms)))
                }
                _ => Ok(num::add(x, by)),
            }
        };
        let first_ge = |v: &Bson| xs.partition_point(|x| cmp_values_with(x, v, None).is_lt());
        let first_gt = |v: &Bson| xs.partition_point(|x| cmp_values_with(x, v, None).is_le());
        xs.iter()
            .enumerate()
            .map(|(i, x)| {
                let lo = match &w.lower {
                    Bound::At(by) => first_ge(&shifted(x, by)?),
                    b => position(i, b, true),
                };
                let hi = match &w.upper {
                    Bound::At(by) => first_gt(&shifted(x, by)?),
                    b => position(i, b, false),
                };
                Ok((lo, hi))
            })
            .collect()
    }

    /// A windowed function over each document's window.
    fn windowed(
        &self,
        o: &Output,
        docs: &[Document],
        vars: &Vars,
        bounds: &[(usize, usize)],
    ) -> Result<Vec<Bson>> {
        let coll = vars.collation();
        let eval = |e: &Expr| -> Result<Vec<Option<Bson>>> {
            docs.iter().map(|d| e.eval(d, vars)).collect()
        };
        match &o.func {
            Func::Acc(kind, arg, params) => {
                let vals = eval(arg)?;
                let fresh = || Acc::new(*kind).with_params(params.clone());
                let mut out = Vec::with_capacity(docs.len());
                if bounds.iter().all(|(lo, _)| *lo == 0) {
                    // Windows from the partition's start only grow: accumulate once.
                    let mut acc = fresh();
                    let mut fed = 0;
                    let mut last: Option<(usize, Bson)> = None;
                    for &(_, hi) in bounds {
                        if let Some((_, r)) = last.as_ref().filter(|(h, _)| *h == hi) {
                            out.push(r.clone());
                            continue;
                        }
                        while fed < hi {
                            acc.add(vals[fed].clone(), coll)?;
                            fed += 1;
                        }
                        let r = acc.finish();
                        last = Some((hi, r.clone()));
                        out.push(r);
                    }
                    return Ok(out);
                }
                for &(lo, hi) in bounds {
                    let mut acc = fresh();
                    for v in vals.iter().take(hi).skip(lo) {
                        acc.add(v.clone(), coll)?;
                    }
                    out.push(acc.finish());
                }
                Ok(out)
            }
            Func::Covariance { samp, x, y } => {
                let (xs, ys) = (eval(x)?, eval(y)?);
                let pts: Vec<Option<(f64, f64)>> = xs
                    .iter()
                    .zip(&ys)
                    .map(|(a, b)| match (a, b) {
                        (Some(a), Some(b)) if num::kind(a).is_some() && num::kind(b).is_some() => {
                            Some((num::f(a), num::f(b)))
                        }
                        _ => None,
                    })
                    .collect();
                Ok(bounds
                    .iter()
                    .map(|&(lo, hi)| {
                        let w: Vec<(f64, f64)> =
                            pts.iter().take(hi).skip(lo).flatten().copied().collect();
                        covariance(&w, *samp)
                    })
                    .collect())
            }
            Func::Derivative { input, unit } => {
                let (ys, xs) = (eval(input)?, self.sort_values(docs, vars)?);
                let mut out = Vec::with_capacity(docs.len());
                for &(lo, hi) in bounds {
                    if hi <= lo {
                        out.push(Bson::Null);
                        continue;
                    }
                    let (x0, x1) = (
                        derivative_x(&xs[lo], *unit)?,
                        derivative_x(&xs[hi - 1], *unit)?,
                    );
                    let (y0, y1) = (derivative_y(&ys[lo])?, derivative_y(&ys[hi - 1])?);
                    let run = x1 - x0;
                    out.push(if run == 0.0 {
                        Bson::Null
                    } else {
                        let slope = (y1 - y0) / run;
                        Bson::Double(unit.map_or(slope, |u| slope * u as f64))
                    });
                }
                Ok(out)
            }
            Func::Integral { input, unit } => {
                let (ys, xs) = (eval(input)?, self.sort_values(docs, vars)?);
                let pts: Vec<(f64, f64)> = xs
                    .iter()
                    .zip(&ys)
                    .map(|(x, y)| integral_point(x, y, *unit))
                    .collect::<Result<_>>()?;
                Ok(bounds
                    .iter()
                    .map(|&(lo, hi)| {
                        if hi <= lo {
                            return Bson::Null;
                        }
                        let mut sum = 0.0;
                        for j in lo + 1..hi {
                            let ((x0, y0), (x1, y1)) = (pts[j - 1], pts[j]);
                            let area = (y0 + y1) * (x1 - x0) / 2.0;
                            if !area.is_nan() {
                                sum += area;
                            }
                        }
                        Bson::Double(unit.map_or(sum, |u| sum / u as f64))
                    })
                    .collect())
            }
            other => Err(MongoError::internal(format!(
                "{other:?} is not a windowed function"
            ))),
        }
    }
}

/// The partitions of the sorted input, each computed when its first document is wanted.
struct Partitions {
    stage: SetWindowFields,
    input: std::iter::Peekable<DocIter>,
    vars: Vars,
    max_bytes: Option<usize>,
    out: std::vec::IntoIter<Document>,
    failed: bool,
}

impl Partitions {
    fn unwrap(w: Result<Document>) -> Result<(Bson, Document)> {
        let mut w = w?;
        let key = w.remove("p").unwrap_or(Bson::Null);
        match w.remove("d") {
            Some(Bson::Document(d)) => Ok((key, d)),
            _ => Err(MongoError::internal("$setWindowFields lost a document")),
        }
    }

    /// Reads the next partition and computes its outputs.
    fn next_partition(&mut self) -> Result<Option<Vec<Document>>> {
        let Some(first) = self.input.next() else {
            return Ok(None);
        };
        let (key, d) = Self::unwrap(first)?;
        let coll = self.vars.collation();
        let mut bytes = crate::spill::doc_size(&d);
        let mut docs = vec![d];
        while let Some(Ok(w)) = self.input.peek() {
            let same = w.get("p").map_or(matches!(key, Bson::Null), |k| {
                values_equal_with(k, &key, coll)
            });
            if !same {
                break;
            }
            let Some(next) = self.input.next() else {
                break;
            };
            let (_, d) = Self::unwrap(next)?;
            bytes += crate::spill::doc_size(&d);
            if let Some(max) = self.max_bytes.filter(|m| bytes > *m) {
                return Err(err(
                    5414201,
                    format!(
                        "Exceeded memory limit in DocumentSourceSetWindowFields: a partition holds over {max} bytes; pass allowDiskUse:true to opt in"
                    ),
                ));
            }
            docs.push(d);
        }
        if let Some(Err(_)) = self.input.peek() {
            if let Some(Err(e)) = self.input.next() {
                return Err(e);
            }
        }
        self.stage.partition(docs, &self.vars).map(Some)
    }
}

impl Iterator for Partitions {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(d) = self.out.next() {
                return Some(Ok(d));
            }
            match self.next_partition() {
                Ok(Some(docs)) => self.out = docs.into_iter(),
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn array_partition() -> MongoError {
    err(
        TYPE_MISMATCH,
        "An expression used to partition cannot evaluate to value of type array",
    )
}

fn nullish(v: &Bson) -> bool {
    matches!(v, Bson::Null | Bson::Undefined)
}

/// `$derivative`'s x: the sortBy value, a date (in ms) with a unit, a number without.
fn derivative_x(v: &Option<Bson>, unit: Option<i64>) -> Result<f64> {
    match (unit, v) {
        (Some(_), Some(Bson::DateTime(d))) => Ok(d.timestamp_millis() as f64),
        (Some(_), _) => Err(err(
            5624900,
            "$derivative with 'unit' expects the sortBy field to be a Date",
        )),
        (None, Some(Bson::DateTime(_))) => Err(err(
            5624901,
            "$derivative where the sortBy is a Date requires an 'unit'",
        )),
        (None, Some(v)) if num::kind(v).is_some() => Ok(num::f(v)),
        (None, _) => Err(err(
            5624902,
            "$derivative (with no 'unit') expects the sortBy field to be numeric",
        )),
    }
}

/// `$derivative`'s y: the input, which must be a number.
fn derivative_y(v: &Option<Bson>) -> Result<f64> {
    match v {
        Some(v) if num::kind(v).is_some() => Ok(num::f(v)),
        _ => Err(err(
            5624903,
            "$derivative input must not be null or missing",
        )),
    }
}

/// `$integral`'s point: (sortBy value, a date in ms with a unit; input).
fn integral_point(x: &Option<Bson>, y: &Option<Bson>, unit: Option<i64>) -> Result<(f64, f64)> {
    let y = match y {
        Some(y) if num::kind(y).is_some() => num::f(y),
        _ => {
            return Err(err(
                5423900,
                "The input value of $integral window function must be a vector of 2 value, the first value must be numeric or date type and the second must be numeric.",
            ));
        }
    };
    let x = match (unit, x) {
        (Some(_), Some(Bson::DateTime(d))) => d.timestamp_millis() as f64,
        (Some(_), _) => {
            return Err(err(
                5423901,
                "$integral with 'outputUnit' expects the sortBy field to be a Date",
            ));
        }
        (None, Some(Bson::DateTime(_))) => {
            return Err(err(
                5423902,
                "$integral (with no 'outputUnit') expects the sortBy field to be numeric",
            ));
        }
        (None, Some(x)) if num::kind(x).is_some() => num::f(x),
        (None, _) => {
            return Err(err(
                5423900,
                "The input value of $integral window function must be a vector of 2 value, the first value must be numeric or date type and the second must be numeric.",
            ));
        }
    };
    Ok((x, y))
}

/// Population or sample covariance of the points; null for too few.
fn covariance(pts: &[(f64, f64)], samp: bool) -> Bson {
    let n = pts.len() as f64;
    if pts.is_empty() || (samp && pts.len() < 2) {
        return Bson::Null;
    }
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let c: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    Bson::Double(c / if samp { n - 1.0 } else { n })
}

/// `$linearFill`: each null or missing value between two numeric ones is interpolated by
/// its `sortBy` value (a number, or a date in ms); values without a neighbour on both
/// sides stay null.
fn linear_fill(ys: Vec<Option<Bson>>, xs: Vec<Option<Bson>>) -> Result<Vec<Bson>> {
    let mut date: Option<bool> = None;
    let mut x = Vec::with_capacity(xs.len());
    for v in &xs {
        let (is_date, f) = match v {
            Some(Bson::DateTime(d)) => (true, d.timestamp_millis() as f64),
            Some(v) if num::kind(v).is_some() => (false, num::f(v)),
            other => {
                return Err(err(
                    TYPE_MISMATCH,
                    format!(
                        "Value of the sortBy field must be numeric or a date, but found {}",
                        other.as_ref().map_or("missing", |v| type_name(Some(v)))
                    ),
                ));
            }
        };
        if date.is_some_and(|d| d != is_date) {
            return Err(err(
                TYPE_MISMATCH,
                "Conflicting sort value types, previously received a number and a date",
            ));
        }
        date = Some(is_date);
        x.push(f);
    }
    if x.windows(2).any(|w| w[0] == w[1]) {
        return Err(err(
            6050106,
            "There can be no repeated values in the sort field",
        ));
    }
    let known: Vec<Option<Bson>> = ys.into_iter().map(|v| v.filter(|v| !nullish(v))).collect();
    for v in known.iter().flatten() {
        if num::kind(v).is_none() {
            return Err(err(
                TYPE_MISMATCH,
                format!(
                    "Value to be filled must be numeric or nullish, but found {}",
                    type_name(Some(v))
                ),
            ));
        }
    }
    // The next known value's position after each document, found in one backward pass.
    let mut next = vec![None; known.len()];
    let mut after = None;
    for i in (0..known.len()).rev() {
        next[i] = after;
        if known[i].is_some() {
            after = Some(i);
        }
    }
    let mut prev: Option<usize> = None;
    let mut out = Vec::with_capacity(known.len());
    for i in 0..known.len() {
        if let Some(v) = &known[i] {
            out.push(v.clone());
            prev = Some(i);
            continue;
        }
        out.push(match (prev, next[i]) {
            (Some(p), Some(q)) => {
                let y = |k: usize| known[k].as_ref().map_or(0.0, num::f);
                let (y0, y1) = (y(p), y(q));
                Bson::Double(y0 + (x[i] - x[p]) * ((y1 - y0) / (x[q] - x[p])))
            }
            _ => Bson::Null,
        });
    }
    Ok(out)
}

/// Parses one output field: `{<$op>: <args>, window: {...}}`.
fn parse_output(name: &str, v: &Bson, sort_by: Option<&SortSpec>) -> Result<Output> {
    let Bson::Document(d) = v else {
        return Err(parse_err(format!("The field '{name}' must be an object")));
    };
    let mut window = None;
    let mut op: Option<(&str, &Bson)> = None;
    let mut other = None;
    for (k, v) in d {
        if k == "window" {
            window = Some(v);
        } else if k.starts_with('$') {
            if let Some((first, _)) = op {
                return Err(parse_err(match first {
                    "$count" | "$shift" => {
                        "Cannot specify multiple functions in window function spec".to_string()
                    }
                    "$first" | "$last" | "$firstN" | "$lastN" | "$minN" | "$maxN" | "$topN"
                    | "$bottomN" | "$top" | "$bottom" | "$derivative" | "$integral" => {
                        format!("{first} got unexpected argument: {k}")
                    }
                    _ => "Cannot specify two functions in window function spec".to_string(),
                }));
            }
            op = Some((k.as_str(), v));
        } else {
            other.get_or_insert(k.as_str());
        }
    }
    let Some((op, arg)) = op else {
        return Err(parse_err(match d.keys().next() {
            Some(k) => format!("Expected a $-prefixed window function, {k}"),
            None => "Expected a $-prefixed window function".to_string(),
        }));
    };
    let func = parse_func(op, arg)?;
    let sort_keys = sort_by.map_or(0, |s| s.keys().len());
    match &func {
        Func::Rank { .. } | Func::DocumentNumber => {
            if window.is_some() || other.is_some() {
                return Err(err(
                    5371601,
                    "Rank style window functions take no other arguments",
                ));
            }
            if !matches!(arg, Bson::Document(a) if a.is_empty()) {
                return Err(err(
                    5371603,
                    format!("{op} must be specified with '{{}}' as the value"),
                ));
            }
            if sort_keys != 1 {
                return Err(err(
                    5371602,
                    format!(
                        "{op} must be specified with a top level sortBy expression with exactly one element"
                    ),
                ));
            }
        }
        Func::Shift { .. } => {
            if sort_keys == 0 {
                return Err(parse_err("'$shift' requires a sortBy"));
            }
            if window.is_some() {
                return Err(parse_err("$shift does not accept a 'window' field"));
            }
        }
        Func::ExpMovingAvg { .. } => {
            if sort_keys == 0 {
                return Err(parse_err("$expMovingAvg requires an explicit 'sortBy'"));
            }
            if window.is_some() {
                return Err(parse_err(
                    "$expMovingAvg must have exactly one argument that is an object",
                ));
            }
        }
        Func::Derivative { .. } | Func::Integral { .. } => {
            if sort_keys == 0 {
                return Err(parse_err(format!("{op} requires a sortBy")));
            }
            if sort_keys > 1 {
                return Err(parse_err(format!("{op} requires a non-compound sortBy")));
            }
            if window.is_none() && matches!(func, Func::Derivative { .. }) {
                return Err(parse_err("$derivative requires explicit window bounds"));
            }
        }
        Func::LinearFill(_) | Func::Locf(_) => {
            if window.is_some() {
                return Err(parse_err(format!("'window' field is not allowed in {op}")));
            }
            if sort_keys != 1 && matches!(func, Func::LinearFill(_)) {
                return Err(err(
                    605001,
                    "$linearFill must be specified with a top level sortBy expression with exactly one element",
                ));
            }
        }
        Func::Acc(..) | Func::Covariance { .. } => {}
    }
    if let Some(k) = other {
        return Err(parse_err(format!(
            "Window function found an unknown argument: {k}"
        )));
    }
    let window = window.map(parse_window).transpose()?;
    if let Some(w) = &window {
        if w.range {
            if sort_keys != 1 {
                return Err(err(
                    5339902,
                    "Range-based bounds require sortBy a single field",
                ));
            }
            if sort_by.is_some_and(|s| !s.keys()[0].1) {
                return Err(err(
                    8947401,
                    "Range-based bounds require an ascending sortBy",
                ));
            }
        } else if w.bounded() && sort_keys == 0 {
            return Err(err(5339901, "Document-based bounds require a sortBy"));
        }
    }
    Ok(Output {
        path: dotted(name),
        func,
        window,
    })
}

/// The named arguments of a window function, checked against those it takes.
fn named_args<'a>(op: &str, arg: &'a Bson, need: &[&str], allow: &[&str]) -> Result<&'a Document> {
    let Bson::Document(d) = arg else {
        return Err(parse_err(format!("Argument to {op} must be an object")));
    };
    if let Some(k) = d
        .keys()
        .find(|k| !need.contains(&k.as_str()) && !allow.contains(&k.as_str()))
    {
        return Err(parse_err(format!("{op} got unexpected argument: {k}")));
    }
    if let Some(k) = need.iter().find(|k| !d.contains_key(**k)) {
        return Err(parse_err(format!("{op} requires an '{k}' expression.")));
    }
    Ok(d)
}

/// An integral constant (`by`, `N`, bounds): int, long or a whole double.
fn integral(v: &Bson) -> Option<i64> {
    num::int(v).filter(|i| doc::compare::as_f64(v) == Some(*i as f64))
}

/// `$derivative`'s and `$integral`'s output `unit`: week or smaller, as milliseconds.
fn output_unit(d: &Document) -> Result<Option<i64>> {
    match d.get("unit") {
        None => Ok(None),
        Some(Bson::String(u)) if TIME_UNITS.contains(&u.as_str()) => unit_ms(u)
            .map(Some)
            .ok_or_else(|| err(5490710, "unit must be 'week' or smaller")),
        Some(Bson::String(u)) => Err(parse_err(format!("unknown time unit value: {u}"))),
        Some(_) => Err(parse_err("'unit' must be a string")),
    }
}

fn parse_func(op: &str, arg: &Bson) -> Result<Func> {
    Ok(match op {
        "$rank" => Func::Rank { dense: false },
        "$denseRank" => Func::Rank { dense: true },
        "$documentNumber" => Func::DocumentNumber,
        "$covariancePop" | "$covarianceSamp" => match arg {
            Bson::Array(a) if a.len() == 2 => Func::Covariance {
                samp: op == "$covarianceSamp",
                x: Expr::parse(&a[0])?,
                y: Expr::parse(&a[1])?,
            },
            _ => {
                return Err(parse_err(format!(
                    "{op} requires an array of two expressions"
                )));
            }
        },
        "$derivative" | "$integral" => {
            let d = named_args(op, arg, &["input"], &["unit"])?;
            let input = Expr::parse(d.get("input").unwrap_or(&Bson::Null))?;
            let unit = output_unit(d)?;
            if op == "$derivative" {
                Func::Derivative { input, unit }
            } else {
                Func::Integral { input, unit }
            }
        }
        "$expMovingAvg" => {
            let shape = "$expMovingAvg sub object must have exactly two fields: An 'input' field, and either an 'N' field or an 'alpha' field";
            let Bson::Document(d) = arg else {
                return Err(parse_err(
                    "$expMovingAvg must have exactly one argument that is an object",
                ));
            };
            if let Some(k) = d
                .keys()
                .find(|k| !matches!(k.as_str(), "input" | "N" | "alpha"))
            {
                return Err(parse_err(format!(
                    "Got unrecognized field in $expMovingAvg{shape}: {k}"
                )));
            }
            if d.len() != 2 || !d.contains_key("input") {
                return Err(parse_err(shape));
            }
            let alpha = match (d.get("N"), d.get("alpha")) {
                (Some(n), _) => match (num::kind(n), integral(n)) {
                    (None, _) => {
                        return Err(parse_err(format!(
                            "'N' field must be an integer, but found type {}",
                            type_name(Some(n))
                        )));
                    }
                    (_, None) => {
                        return Err(parse_err(format!(
                            "'N' field must be an integer, but found  {n}. To use a non-integer, use the 'alpha' argument instead"
                        )));
                    }
                    (_, Some(k)) if k <= 0 => {
                        return Err(parse_err(format!("'N' must be greater than zero. Got {k}")));
                    }
                    (_, Some(k)) => 2.0 / (k as f64 + 1.0),
                },
                (None, Some(a)) => match doc::compare::as_f64(a) {
                    None => return Err(parse_err("'alpha' must be a number")),
                    Some(x) if x > 0.0 && x < 1.0 => x,
                    Some(_) => {
                        return Err(parse_err(format!(
                            "'alpha' must be between 0 and 1 (exclusive), found {a}"
                        )));
                    }
                },
                (None, None) => return Err(parse_err(shape)),
            };
            Func::ExpMovingAvg {
                input: Expr::parse(d.get("input").unwrap_or(&Bson::Null))?,
                alpha,
            }
        }
        "$shift" => {
            let Bson::Document(d) = arg else {
                return Err(parse_err("Argument to $shift must be an object"));
            };
            if d.keys()
                .any(|k| !matches!(k.as_str(), "output" | "by" | "default"))
            {
                return Err(parse_err("Unknown argument in $shift"));
            }
            let output = d
                .get("output")
                .ok_or_else(|| parse_err("$shift requires an 'output' expression."))?;
            let by = d
                .get("by")
                .ok_or_else(|| parse_err("$shift requires 'by' as an integer value."))?;
            let by = integral(by).ok_or_else(|| {
                parse_err(format!(
                    "'$shift:by' field must be an integer, but found  {by}"
                ))
            })?;
            let default = match d.get("default") {
                None => Bson::Null,
                Some(v) if is_constant(v) => Expr::parse(v)?
                    .eval(&Document::new(), &Vars::default())?
                    .unwrap_or(Bson::Null),
                Some(_) => {
                    return Err(parse_err(
                        "'$shift:default' expression must yield a constant value.",
                    ));
                }
            };
            Func::Shift {
                output: Expr::parse(output)?,
                by,
                default,
            }
        }
        "$linearFill" => Func::LinearFill(Expr::parse(arg)?),
        "$locf" => Func::Locf(Expr::parse(arg)?),
        // Not window functions in 8.0, though they accumulate in `$group`.
        "$mergeObjects" => return Err(parse_err(format!("Unrecognized window function, {op}"))),
        _ => match parse_accumulator(op, arg)? {
            Some((kind, e, params)) => Func::Acc(kind, e, params),
            None => return Err(parse_err(format!("Unrecognized window function, {op}"))),
        },
    })
}

fn parse_window(v: &Bson) -> Result<Window> {
    let Bson::Document(d) = v else {
        return Err(parse_err("'window' field must be an object"));
    };
    let (docs, range, unit) = (d.get("documents"), d.get("range"), d.get("unit"));
    if docs.is_some() && range.is_some() {
        return Err(parse_err(
            "Window bounds can specify either 'documents' or 'unit', not both.",
        ));
    }
    if unit.is_some() && range.is_none() {
        return Err(parse_err(
            "Window bounds can only specify 'unit' with range-based bounds.",
        ));
    }
    let known =
        usize::from(docs.is_some()) + usize::from(range.is_some()) + usize::from(unit.is_some());
    if known != d.len() {
        return Err(parse_err(if docs.is_some() {
            "'window' field that specifies documents cannot have other fields"
        } else if unit.is_some() {
            "'window' field that specifies unit cannot have other fields besides 'range'"
        } else if range.is_some() {
            "'window' field that specifies range cannot have other fields besides 'unit'"
        } else {
            "'window' field can only contain 'documents' as the only argument or 'range' with an optional 'unit' field"
        }));
    }
    let unit = match unit {
        None => None,
        Some(Bson::String(u)) if TIME_UNITS.contains(&u.as_str()) => Some(u.clone()),
        Some(Bson::String(u)) => return Err(parse_err(format!("unknown time unit value: {u}"))),
        Some(_) => return Err(parse_err("'unit' must be a string")),
    };
    let Some(spec) = docs.or(range) else {
        // `window: {}`: the default, the whole partition.
        return Ok(Window {
            range: false,
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
            unit: None,
        });
    };
    let is_range = range.is_some();
    let a = match spec {
        Bson::Array(a) if a.len() == 2 => a,
        _ => {
            return Err(parse_err(format!(
                "Window bounds must be a 2-element array: {spec}"
            )));
        }
    };
    let bound = |v: &Bson| -> Result<Bound> {
        match v {
            Bson::String(s) if s == "unbounded" => return Ok(Bound::Unbounded),
            Bson::String(s) if s == "current" => return Ok(Bound::Current),
            Bson::String(_) => {
                return Err(parse_err(
                    "Window bounds must be 'unbounded', 'current', or a number.",
                ));
            }
            _ => {}
        }
        if !is_constant(v) {
            return Err(parse_err("Window bounds expression must be a constant."));
        }
        let x = Expr::parse(v)?
            .eval(&Document::new(), &Vars::default())?
            .unwrap_or(Bson::Null);
        if !is_range {
            return integral(&x)
                .map(|i| Bound::At(Bson::Int64(i)))
                .ok_or_else(|| parse_err("Numeric document-based bounds must be an integer"));
        }
        if num::kind(&x).is_none() {
            return Err(parse_err("Range-based bounds expression must be a number"));
        }
        if unit.is_some() && integral(&x).is_none() {
            return Err(parse_err(
                "With 'unit', range-based bounds must be an integer",
            ));
        }
        Ok(Bound::At(x))
    };
    let (lower, upper) = (bound(&a[0])?, bound(&a[1])?);
    let offset = |b: &Bound| match b {
        Bound::Current => Some(0.0),
        Bound::At(v) => doc::compare::as_f64(v),
        Bound::Unbounded => None,
    };
    if let (Some(l), Some(u)) = (offset(&lower), offset(&upper)) {
        if l > u {
            return Err(err(
                5339900,
                format!(
                    "Lower bound must not exceed upper bound: [{}, {}]",
                    a[0], a[1]
                ),
            ));
        }
    }
    Ok(Window {
        range: is_range,
        lower,
        upper,
        unit,
    })
}

/// Whether an expression is a constant: no field path or variable outside `$literal`.
fn is_constant(v: &Bson) -> bool {
    match v {
        Bson::String(s) => !s.starts_with('$'),
        Bson::Document(d) => d.contains_key("$literal") || d.values().all(is_constant),
        Bson::Array(a) => a.iter().all(is_constant),
        _ => true,
    }
}
