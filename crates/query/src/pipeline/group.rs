//! `$group` accumulators and grouping by MongoDB value equality.

use std::collections::HashMap;

use bson::{Bson, Document};
use doc::Collation;
use errors::{MongoError, Result};

use super::DocIter;
use crate::expr::accum::{Acc, AccKind, AccParams};
use crate::expr::{Expr, Vars};
use crate::spill::{Limits, Merge, Run, bson_size};

/// One output field of `$group`: name, accumulator and its argument.
#[derive(Debug, Clone)]
pub(crate) struct AccSpec {
    name: String,
    kind: AccKind,
    arg: Expr,
    params: AccParams,
}

impl AccSpec {
    /// A fresh accumulator for this field.
    fn acc(&self) -> Acc {
        Acc::new(self.kind).with_params(self.params.clone())
    }
}

/// Parses `{field: {$acc: expr}, ...}`.
pub(crate) fn parse_accumulators(d: &Document) -> Result<Vec<AccSpec>> {
    let mut out = Vec::new();
    for (name, v) in d {
        if name.contains('.') {
            return Err(MongoError::with_code(
                40235,
                format!("The field name '{name}' cannot contain '.'"),
            ));
        }
        if name.starts_with('$') {
            return Err(MongoError::with_code(
                40236,
                format!("The field name '{name}' cannot be an operator name"),
            ));
        }
        let Bson::Document(spec) = v else {
            return Err(MongoError::with_code(
                40234,
                format!("The field '{name}' must be an accumulator object"),
            ));
        };
        if spec.len() != 1 {
            return Err(MongoError::with_code(
                40238,
                format!("The field '{name}' must specify one accumulator"),
            ));
        }
        let Some((op, arg)) = spec.iter().next() else {
            continue;
        };
        let (kind, arg, params) = parse_accumulator(op, arg)?.ok_or_else(|| {
            MongoError::with_code(15952, format!("unknown group operator '{op}'"))
        })?;
        out.push(AccSpec {
            name: name.clone(),
            kind,
            arg,
            params,
        });
    }
    Ok(out)
}

/// Parses one accumulator `{op: arg}` (of `$group`, or a window function of
/// `$setWindowFields`); `None` if `op` names no accumulator.
pub(crate) fn parse_accumulator(
    op: &str,
    arg: &Bson,
) -> Result<Option<(AccKind, Expr, AccParams)>> {
    let Some(kind) = AccKind::from_name(op) else {
        return Ok(None);
    };
    if kind.takes_params() {
        let (arg, params) = parse_params(op, kind, arg)?;
        return Ok(Some((kind, arg, params)));
    }
    let arg = if kind == AccKind::Count {
        if !matches!(arg, Bson::Document(a) if a.is_empty()) {
            return Err(MongoError::with_code(
                40237,
                "$count takes no arguments, i.e. $count:{}",
            ));
        }
        Expr::literal(Bson::Null)
    } else {
        if matches!(arg, Bson::Array(_)) {
            return Err(MongoError::with_code(
                40237,
                format!("The {op} accumulator is a unary operator"),
            ));
        }
        Expr::parse(arg)?
    };
    Ok(Some((kind, arg, AccParams::default())))
}

/// Parses the named arguments of `$firstN`, `$lastN`, `$maxN`, `$minN`, `$top`,
/// `$bottom`, `$topN`, `$bottomN`, `$median` and `$percentile`: the expression each
/// document feeds, and the constants (`n`, `sortBy`'s directions, `p`).
fn parse_params(op: &str, kind: AccKind, arg: &Bson) -> Result<(Expr, AccParams)> {
    let Bson::Document(a) = arg else {
        return Err(MongoError::with_code(
            5787900,
            format!("specification must be an object; found {op}: {arg}"),
        ));
    };
    let sorted = matches!(
        kind,
        AccKind::Top | AccKind::Bottom | AccKind::TopN | AccKind::BottomN
    );
    let pct = matches!(kind, AccKind::Median | AccKind::Percentile);
    let wants_n = !pct && !matches!(kind, AccKind::Top | AccKind::Bottom);
    let input_name = if sorted { "output" } else { "input" };
    let mut allowed = vec![input_name];
    if wants_n {
        allowed.push("n");
    }
    if sorted {
        allowed.push("sortBy");
    }
    if pct {
        allowed.push("method");
    }
    if kind == AccKind::Percentile {
        allowed.push("p");
    }
    for k in a.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(MongoError::with_code(
                5787901,
                format!("Unknown argument for {op}: {k}"),
            ));
        }
    }
    let input = a.get(input_name).ok_or_else(|| {
        MongoError::with_code(5787907, format!("{op} requires an '{input_name}' field"))
    })?;
    let mut params = AccParams {
        n: 1,
        ..AccParams::default()
    };
    if wants_n {
        let n = a
            .get("n")
            .ok_or_else(|| MongoError::with_code(5787906, format!("{op} requires an 'n' field")))?;
        // `n` must be a constant here (mongod allows an expression of the group key; Eddy
        // evaluates it once, without a document, and refuses one that needs one).
        let v = Expr::parse(n)?.eval(&Document::new(), &Vars::default())?;
        let n = match v.as_ref().and_then(doc::compare::as_f64) {
            Some(x) if x.fract() == 0.0 && x >= 1.0 => x as usize,
            Some(x) if x.fract() != 0.0 => {
                return Err(MongoError::with_code(
                    5787903,
                    format!("Value for 'n' must be of integral type, but found {x}"),
                ));
            }
            _ => {
                return Err(MongoError::with_code(
                    5787908,
                    format!(
                        "Value for 'n' must be a positive integer, but found {}",
                        v.unwrap_or(Bson::Null)
                    ),
                ));
            }
        };
        params.n = n;
    }
    let expr = if sorted {
        let sort = a.get_document("sortBy").map_err(|_| {
            MongoError::with_code(5788005, format!("{op} requires a 'sortBy' object"))
        })?;
        let spec = crate::sort::SortSpec::parse(sort)?;
        let keys: Vec<Bson> = spec
            .keys()
            .iter()
            .map(|(f, _)| Bson::String(format!("${f}")))
            .collect();
        params.desc = spec.keys().iter().map(|(_, asc)| !*asc).collect();
        Expr::parse(&Bson::Array(vec![Bson::Array(keys), input.clone()]))?
    } else {
        Expr::parse(input)?
    };
    if pct {
        params.p = crate::expr::accum::percentile_args(op, a.get("method"), a.get("p"))?;
    }
    Ok((expr, params))
}

/// [`canonical`] as a fresh string: a hash key under which values MongoDB considers
/// equal meet (`$graphLookup`'s visited set, `$densify`'s partitions).
pub(crate) fn canonical_key(v: &Bson, coll: Option<&Collation>) -> String {
    let mut s = String::new();
    canonical(v, &mut s, coll);
    s
}

/// A canonical string for a value such that values MongoDB considers equal (`1`, `1.0`,
/// `NumberLong(1)`, and under a collation strings that compare equal) share it.
fn canonical(v: &Bson, out: &mut String, coll: Option<&Collation>) {
    use std::fmt::Write;
    match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            match doc::compare::as_number(v) {
                Some(doc::compare::Number::Int(i)) => {
                    let _ = write!(out, "n{i};");
                }
                Some(doc::compare::Number::Float(f)) => {
                    if f.is_nan() {
                        out.push_str("nNaN;");
                    } else if f.fract() == 0.0 && f.abs() < 9.2e18 {
                        let _ = write!(out, "n{};", f as i64);
                    } else {
                        let _ = write!(out, "n{f:e};");
                    }
                }
                None => {}
            }
        }
        Bson::Null | Bson::Undefined => out.push_str("z;"),
        Bson::String(s) | Bson::Symbol(s) => match coll {
            None => {
                let _ = write!(out, "s{}:{s};", s.len());
            }
            // Equal sort keys are exactly the strings the collation deems equal.
            Some(c) => {
                out.push('c');
                for b in c.sort_key(s) {
                    let _ = write!(out, "{b:02x}");
                }
                out.push(';');
            }
        },
        Bson::Document(d) => {
            out.push('{');
            for (k, x) in d {
                let _ = write!(out, "{}:{k}=", k.len());
                canonical(x, out, coll);
            }
            out.push('}');
        }
        Bson::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out, coll);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "t{}:{other:?};", crate::filter::bson_type_code(other));
        }
    }
}

/// Groups documents by key and accumulates, within a memory limit: past it, with
/// `allowDiskUse`, the groups so far are written out sorted by key and the runs merged at
/// the end (each group's partial states folded in input order).
pub(crate) struct Grouper<'a> {
    specs: &'a [AccSpec],
    index: HashMap<String, usize>,
    groups: Vec<(String, Bson, Vec<Acc>)>,
    bytes: usize,
    limits: Option<&'a Limits>,
    runs: Vec<Run>,
}

impl<'a> Grouper<'a> {
    /// A grouper without a memory limit (for input already bounded, e.g. one bucket).
    pub(crate) fn new(specs: &'a [AccSpec]) -> Grouper<'a> {
        Grouper {
            specs,
            index: HashMap::new(),
            groups: Vec::new(),
            bytes: 0,
            limits: None,
            runs: Vec::new(),
        }
    }

    /// A grouper held to `limits.group_bytes`.
    pub(crate) fn limited(specs: &'a [AccSpec], limits: &'a Limits) -> Grouper<'a> {
        Grouper {
            limits: Some(limits),
            ..Grouper::new(specs)
        }
    }

    pub(crate) fn add(&mut self, key: Bson, doc: &Document, vars: &Vars) -> Result<()> {
        let mut k = String::new();
        canonical(&key, &mut k, vars.collation());
        let mut fresh = false;
        let i = match self.index.get(&k) {
            Some(i) => *i,
            None => {
                fresh = true;
                self.bytes += 64 + 2 * k.len() + bson_size(&key) + 96 * self.specs.len();
                self.groups.push((
                    k.clone(),
                    key,
                    self.specs
                        .iter()
                        .map(|s| s.acc().capped(array_cap(s.kind, self.limits)))
                        .collect(),
                ));
                self.index.insert(k, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        for (spec, acc) in self.specs.iter().zip(self.groups[i].2.iter_mut()) {
            let v = if spec.kind == AccKind::Count {
                None
            } else {
                spec.arg.eval(doc, vars)?
            };
            // What the state holds: every value pushed, a set's or a merge's new members,
            // and (charged once, with the group) a first/last/min/max value.
            let size = v.as_ref().map_or(0, |v| 8 + bson_size(v));
            let before = acc.held();
            acc.add(v, vars.collation())?;
            self.bytes += match spec.kind {
                AccKind::Push | AccKind::Median | AccKind::Percentile => size,
                AccKind::AddToSet | AccKind::MergeObjects if acc.held() > before => size,
                AccKind::First | AccKind::Last | AccKind::Min | AccKind::Max if fresh => size,
                _ => 0,
            };
        }
        if let Some(l) = self.limits {
            if self.bytes > l.group_bytes {
                let Some(dir) = l.spill_dir.as_ref().filter(|_| l.allow_disk_use) else {
                    return Err(crate::spill::group_limit_error());
                };
                self.spill(dir)?;
            }
        }
        Ok(())
    }

    fn spill(&mut self, dir: &std::path::Path) -> Result<()> {
        let mut groups = std::mem::take(&mut self.groups);
        self.index.clear();
        self.bytes = 0;
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let docs: Vec<Document> = groups
            .into_iter()
            .map(|(k, key, accs)| {
                let states: Vec<Bson> = accs.iter().map(|a| Bson::Document(a.to_doc())).collect();
                bson::doc! {"k": k, "id": key, "a": states}
            })
            .collect();
        self.runs.push(Run::write(dir, docs.iter())?);
        Ok(())
    }

    /// One document per group: `{<id_field>: key, <acc>: result, ...}` in first-seen order.
    pub(crate) fn finish(self, id_field: &str) -> Vec<Document> {
        let specs = self.specs;
        self.groups
            .into_iter()
            .map(|(_, key, accs)| finished(specs, id_field, key, &accs))
            .collect()
    }

    /// Like [`Grouper::finish`], merging the spilled runs if there are any (then the
    /// groups come in key order).
    pub(crate) fn finish_iter(
        mut self,
        id_field: &str,
        coll: Option<std::sync::Arc<Collation>>,
    ) -> Result<DocIter> {
        if self.runs.is_empty() {
            return Ok(Box::new(self.finish(id_field).into_iter().map(Ok)));
        }
        if !self.groups.is_empty() {
            let dir = self
                .limits
                .and_then(|l| l.spill_dir.clone())
                .unwrap_or_default();
            self.spill(&dir)?;
        }
        Ok(Box::new(MergedGroups {
            merge: Merge::new(std::mem::take(&mut self.runs)),
            specs: self.specs.to_vec(),
            caps: self
                .specs
                .iter()
                .map(|s| array_cap(s.kind, self.limits))
                .collect(),
            id_field: id_field.to_string(),
            coll,
            pending: None,
            failed: false,
        }))
    }
}

/// The most bytes one accumulator's array may hold under `limits` (MongoDB's defaults
/// without them).
fn array_cap(kind: AccKind, limits: Option<&Limits>) -> usize {
    let d = Limits::default();
    let l = limits.unwrap_or(&d);
    match kind {
        AccKind::Push => l.push_bytes,
        AccKind::AddToSet => l.add_to_set_bytes,
        _ => usize::MAX,
    }
}

fn finished(specs: &[AccSpec], id_field: &str, key: Bson, accs: &[Acc]) -> Document {
    let mut d = Document::new();
    d.insert(id_field, key);
    for (spec, acc) in specs.iter().zip(accs) {
        d.insert(spec.name.clone(), acc.finish());
    }
    d
}

/// The merge of a `$group`'s spilled runs: runs are sorted by canonical key, so a group's
/// partial states arrive together, earliest run first.
struct MergedGroups {
    merge: Merge<String>,
    specs: Vec<AccSpec>,
    /// Each accumulator's array cap.
    caps: Vec<usize>,
    id_field: String,
    coll: Option<std::sync::Arc<Collation>>,
    pending: Option<(String, Document)>,
    failed: bool,
}

fn run_key(d: &Document) -> Result<String> {
    d.get_str("k")
        .map(str::to_string)
        .map_err(|_| MongoError::internal("spill file: group without key"))
}

impl MergedGroups {
    fn states(&self, d: &Document) -> Vec<Acc> {
        let empty = Vec::new();
        let a = d.get_array("a").unwrap_or(&empty);
        self.specs
            .iter()
            .zip(&self.caps)
            .zip(a)
            .map(|((s, cap), st)| match st {
                Bson::Document(st) => Acc::from_doc(s.kind, st)
                    .with_params(s.params.clone())
                    .capped(*cap),
                _ => s.acc().capped(*cap),
            })
            .collect()
    }

    fn pull(&mut self) -> Result<Option<(String, Document)>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        self.merge
            .next_by(&mut run_key, &|a: &String, b: &String| a.cmp(b))
    }

    fn next_group(&mut self) -> Result<Option<Document>> {
        let Some((k, first)) = self.pull()? else {
            return Ok(None);
        };
        let key = first.get("id").cloned().unwrap_or(Bson::Null);
        let mut accs = self.states(&first);
        while let Some((k2, d)) = self.pull()? {
            if k2 != k {
                self.pending = Some((k2, d));
                break;
            }
            for (acc, later) in accs.iter_mut().zip(self.states(&d)) {
                acc.merge(later, self.coll.as_deref())?;
            }
        }
        Ok(Some(finished(&self.specs, &self.id_field, key, &accs)))
    }
}

impl Iterator for MergedGroups {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if self.failed {
            return None;
        }
        let r = self.next_group().transpose();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}
