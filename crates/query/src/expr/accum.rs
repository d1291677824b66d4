//! Accumulators shared by `$group` (and window-less `$bucket`) and the expression forms of
//! `$sum`, `$avg`, `$min`, `$max`, `$stdDevPop` and `$stdDevSamp`.

use std::cmp::Ordering;

use bson::{Bson, Document};
use doc::Collation;
use doc::compare::{cmp_values_with, values_equal_with};
use errors::Result;

use super::{err, num, type_name};

/// Which accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccKind {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    Count,
    MergeObjects,
    StdDevPop,
    StdDevSamp,
    /// `$firstN`, `$lastN`, `$maxN`, `$minN`: `n` values.
    FirstN,
    LastN,
    MaxN,
    MinN,
    /// `$top`, `$bottom`, `$topN`, `$bottomN`: the output of the first or last `n`
    /// documents in `sortBy` order (each value fed is `[sort key values, output]`).
    Top,
    Bottom,
    TopN,
    BottomN,
    /// `$median` and `$percentile` over the numeric inputs.
    Median,
    Percentile,
}

impl AccKind {
    /// The accumulator named `name` (`"$sum"`, ...).
    pub(crate) fn from_name(name: &str) -> Option<AccKind> {
        Some(match name {
            "$sum" => AccKind::Sum,
            "$avg" => AccKind::Avg,
            "$min" => AccKind::Min,
            "$max" => AccKind::Max,
            "$first" => AccKind::First,
            "$last" => AccKind::Last,
            "$push" => AccKind::Push,
            "$addToSet" => AccKind::AddToSet,
            "$count" => AccKind::Count,
            "$mergeObjects" => AccKind::MergeObjects,
            "$stdDevPop" => AccKind::StdDevPop,
            "$stdDevSamp" => AccKind::StdDevSamp,
            "$firstN" => AccKind::FirstN,
            "$lastN" => AccKind::LastN,
            "$maxN" => AccKind::MaxN,
            "$minN" => AccKind::MinN,
            "$top" => AccKind::Top,
            "$bottom" => AccKind::Bottom,
            "$topN" => AccKind::TopN,
            "$bottomN" => AccKind::BottomN,
            "$median" => AccKind::Median,
            "$percentile" => AccKind::Percentile,
            _ => return None,
        })
    }

    /// Whether the accumulator takes an object of named arguments (`n`, `sortBy`, `p`...)
    /// rather than one expression.
    pub(crate) fn takes_params(self) -> bool {
        matches!(
            self,
            AccKind::FirstN
                | AccKind::LastN
                | AccKind::MaxN
                | AccKind::MinN
                | AccKind::Top
                | AccKind::Bottom
                | AccKind::TopN
                | AccKind::BottomN
                | AccKind::Median
                | AccKind::Percentile
        )
    }
}

/// The constant arguments of a parameterised accumulator.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccParams {
    /// How many values (`n`; 1 for `$top`/`$bottom`).
    pub(crate) n: usize,
    /// `sortBy`'s directions (true = descending), for `$top`/`$bottom`(`N`).
    pub(crate) desc: Vec<bool>,
    /// `$percentile`'s `p`; `[0.5]` for `$median`.
    pub(crate) p: Vec<f64>,
}

/// A running accumulator.
#[derive(Debug, Clone)]
pub(crate) struct Acc {
    kind: AccKind,
    total: Bson,
    count: u64,
    value: Option<Bson>,
    seen: bool,
    items: Vec<Bson>,
    merged: Document,
    mean: f64,
    m2: f64,
    /// Bytes of `items` (`$push`, `$addToSet`), and the most they may reach.
    bytes: usize,
    cap: usize,
    params: AccParams,
}

impl Acc {
    /// The same accumulator with its constant arguments.
    pub(crate) fn with_params(mut self, params: AccParams) -> Acc {
        self.params = params;
        self
    }

    /// The same accumulator with its `$push`/`$addToSet` array held to `cap` bytes.
    pub(crate) fn capped(mut self, cap: usize) -> Acc {
        self.cap = cap;
        self
    }

    /// Counts an item kept in the array, failing as MongoDB does past the cap.
    fn keep(&mut self, v: &Bson) -> Result<()> {
        self.bytes += 8 + crate::spill::bson_size(v);
        if self.bytes > self.cap {
            let name = match self.kind {
                AccKind::Push => "$push",
                AccKind::AddToSet => "$addToSet",
                _ => "an accumulator",
            };
            return Err(err(
                146,
                format!(
                    "{name} used too much memory and cannot spill to disk. Used: {} bytes. Memory limit: {} bytes",
                    self.bytes, self.cap
                ),
            ));
        }
        Ok(())
    }

    /// A fresh accumulator.
    pub(crate) fn new(kind: AccKind) -> Acc {
        Acc {
            kind,
            total: Bson::Int32(0),
            count: 0,
            value: None,
            seen: false,
            items: Vec::new(),
            merged: Document::new(),
            mean: 0.0,
            m2: 0.0,
            bytes: 0,
            cap: crate::spill::DEFAULT_MAX_BYTES,
            params: AccParams::default(),
        }
    }

    /// Feeds one input value (`None` = missing); `$min`, `$max` and `$addToSet` compare
    /// strings under `coll`.
    pub(crate) fn add(&mut self, v: Option<Bson>, coll: Option<&Collation>) -> Result<()> {
        match self.kind {
            AccKind::Sum | AccKind::Avg => {
                if let Some(v) = v.filter(|v| num::kind(v).is_some()) {
                    self.total = num::add(&self.total, &v);
                    self.count += 1;
                }
            }
            AccKind::Count => self.count += 1,
            AccKind::Min | AccKind::Max => {
                if let Some(v) = v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) {
                    let better = match &self.value {
                        None => true,
                        Some(cur) => {
                            let o = cmp_values_with(&v, cur, coll);
                            if self.kind == AccKind::Min {
                                o == Ordering::Less
                            } else {
                                o == Ordering::Greater
                            }
                        }
                    };
                    if better {
                        self.value = Some(v);
                    }
                }
            }
            AccKind::First => {
                if !self.seen {
                    self.seen = true;
                    self.value = Some(v.unwrap_or(Bson::Null));
                }
            }
            AccKind::Last => {
                self.seen = true;
                self.value = Some(v.unwrap_or(Bson::Null));
            }
            AccKind::Push => {
                if let Some(v) = v {
                    self.keep(&v)?;
                    self.items.push(v);
                }
            }
            AccKind::AddToSet => {
                if let Some(v) = v {
                    if !self.items.iter().any(|x| values_equal_with(x, &v, coll)) {
                        self.keep(&v)?;
                        self.items.push(v);
                    }
                }
            }
            AccKind::MergeObjects => match v {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {}
                Some(Bson::Document(d)) => {
                    for (k, v) in d {
                        self.merged.insert(k, v);
                    }
                }
                Some(other) => {
                    return Err(err(
                        40400,
                        format!(
                            "$mergeObjects requires object inputs, but input {} is of type {}",
                            other,
                            type_name(Some(&other))
                        ),
                    ));
                }
            },
            AccKind::FirstN => {
                if self.items.len() < self.params.n {
                    self.keep_item(v.unwrap_or(Bson::Null))?;
                }
            }
            AccKind::LastN => {
                self.keep_item(v.unwrap_or(Bson::Null))?;
                self.trim(coll);
            }
            AccKind::MaxN | AccKind::MinN => {
                if let Some(v) = v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) {
                    self.keep_item(v)?;
                    self.trim(coll);
                }
            }
            AccKind::Top | AccKind::Bottom | AccKind::TopN | AccKind::BottomN => {
                if let Some(v) = v {
                    self.keep_item(v)?;
                    self.trim(coll);
                }
            }
            AccKind::Median | AccKind::Percentile => {
                if let Some(v) = v.filter(|v| num::kind(v).is_some()) {
                    self.keep_item(Bson::Double(num::f(&v)))?;
                }
            }
            AccKind::StdDevPop | AccKind::StdDevSamp => {
                if let Some(x) = v.as_ref().filter(|v| num::kind(v).is_some()).map(num::f) {
                    self.count += 1;
                    let d = x - self.mean;
                    self.mean += d / self.count as f64;
                    self.m2 += d * (x - self.mean);
                }
            }
        }
        Ok(())
    }

    /// How many values the state holds (`$push`/`$addToSet` items, `$mergeObjects` keys),
    /// for memory accounting.
    pub(crate) fn held(&self) -> usize {
        self.items.len() + self.merged.len()
    }

    /// The running state as a document, for a `$group` that spills to disk.
    pub(crate) fn to_doc(&self) -> Document {
        let mut d = Document::new();
        d.insert("t", self.total.clone());
        d.insert("c", self.count as i64);
        if let Some(v) = &self.value {
            d.insert("v", v.clone());
        }
        d.insert("s", self.seen);
        d.insert("i", self.items.clone());
        d.insert("m", self.merged.clone());
        d.insert("mean", self.mean);
        d.insert("m2", self.m2);
        d
    }

    /// The state [`Acc::to_doc`] wrote.
    pub(crate) fn from_doc(kind: AccKind, d: &Document) -> Acc {
        Acc {
            kind,
            total: d.get("t").cloned().unwrap_or(Bson::Int32(0)),
            count: d.get_i64("c").unwrap_or(0).max(0) as u64,
            value: d.get("v").cloned(),
            seen: d.get_bool("s").unwrap_or(false),
            items: d.get_array("i").cloned().unwrap_or_default(),
            merged: d.get_document("m").cloned().unwrap_or_default(),
            mean: d.get_f64("mean").unwrap_or(0.0),
            m2: d.get_f64("m2").unwrap_or(0.0),
            bytes: 0,
            cap: crate::spill::DEFAULT_MAX_BYTES,
            params: AccParams::default(),
        }
        .counted()
    }

    /// The state with its array's bytes counted (after reading it back from a run).
    fn counted(mut self) -> Acc {
        self.bytes = self
            .items
            .iter()
            .map(|v| 8 + crate::spill::bson_size(v))
            .sum();
        self
    }

    /// Folds in the state of the same accumulator over later input (a later spilled run),
    /// so that the result is as if one accumulator had seen all of it in order.
    pub(crate) fn merge(&mut self, later: Acc, coll: Option<&Collation>) -> Result<()> {
        match self.kind {
            AccKind::Sum | AccKind::Avg => {
                self.total = num::add(&self.total, &later.total);
                self.count += later.count;
            }
            AccKind::Count => self.count += later.count,
            AccKind::Min | AccKind::Max => {
                if later.value.is_some() {
                    self.add(later.value, coll)?;
                }
            }
            AccKind::First => {
                if !self.seen {
                    self.seen = later.seen;
                    self.value = later.value;
                }
            }
            AccKind::Last => {
                if later.seen {
                    self.seen = true;
                    self.value = later.value;
                }
            }
            AccKind::Push => {
                for v in later.items {
                    self.keep(&v)?;
                    self.items.push(v);
                }
            }
            AccKind::AddToSet => {
                for v in later.items {
                    self.add(Some(v), coll)?;
                }
            }
            AccKind::MergeObjects => {
                for (k, v) in later.merged {
                    self.merged.insert(k, v);
                }
            }
            AccKind::FirstN
            | AccKind::LastN
            | AccKind::MaxN
            | AccKind::MinN
            | AccKind::Top
            | AccKind::Bottom
            | AccKind::TopN
            | AccKind::BottomN
            | AccKind::Median
            | AccKind::Percentile => {
                for v in later.items {
                    if self.kind == AccKind::FirstN && self.items.len() >= self.params.n {
                        break;
                    }
                    self.keep_item(v)?;
                    if self.kind != AccKind::FirstN {
                        self.trim(coll);
                    }
                }
            }
            AccKind::StdDevPop | AccKind::StdDevSamp => {
                // Chan et al.'s parallel combination of two (n, mean, M2) states.
                let (na, nb) = (self.count as f64, later.count as f64);
                if later.count > 0 {
                    let n = na + nb;
                    let delta = later.mean - self.mean;
                    self.mean += delta * nb / n;
                    self.m2 += later.m2 + delta * delta * na * nb / n;
                    self.count += later.count;
                }
            }
        }
        Ok(())
    }

    /// Keeps a value in the state's list, counted against the memory cap.
    fn keep_item(&mut self, v: Bson) -> Result<()> {
        self.keep(&v)?;
        self.items.push(v);
        Ok(())
    }

    /// Orders two values fed to this accumulator: its first `n` after ordering are the
    /// result. `$maxN` wants the greatest first, `$minN` the least; `$top`(`N`) the first in
    /// `sortBy` order and `$bottom`(`N`) the last (so the order is reversed).
    fn order(&self, a: &Bson, b: &Bson, coll: Option<&Collation>) -> Ordering {
        match self.kind {
            AccKind::MaxN => cmp_values_with(b, a, coll),
            AccKind::MinN => cmp_values_with(a, b, coll),
            AccKind::Top | AccKind::TopN | AccKind::Bottom | AccKind::BottomN => {
                let key = |v: &Bson| match v {
                    Bson::Array(p) => match p.first() {
                        Some(Bson::Array(k)) => k.clone(),
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                let (ka, kb) = (key(a), key(b));
                let mut o = Ordering::Equal;
                for (i, desc) in self.params.desc.iter().enumerate() {
                    let (x, y) = (
                        ka.get(i).unwrap_or(&Bson::Null),
                        kb.get(i).unwrap_or(&Bson::Null),
                    );
                    let c = cmp_values_with(x, y, coll);
                    let c = if *desc { c.reverse() } else { c };
                    if c != Ordering::Equal {
                        o = c;
                        break;
                    }
                }
                if matches!(self.kind, AccKind::Bottom | AccKind::BottomN) {
                    o.reverse()
                } else {
                    o
                }
            }
            _ => Ordering::Equal,
        }
    }

    /// Bounds the state to `n` values once it holds twice that many: the `n` best for
    /// `$maxN`/`$minN`/`$top`.../`$bottom`..., the last `n` for `$lastN`.
    fn trim(&mut self, coll: Option<&Collation>) {
        let n = self.params.n.max(1);
        if self.items.len() < 2 * n {
            return;
        }
        if self.kind == AccKind::LastN {
            let drop = self.items.len() - n;
            self.items.drain(..drop);
        } else {
            let mut items = std::mem::take(&mut self.items);
            // Stable: among equal keys the earlier input stays first, as in mongod.
            items.sort_by(|a, b| self.order(a, b, coll));
            items.truncate(n);
            self.items = items;
        }
        self.bytes = self
            .items
            .iter()
            .map(|v| 8 + crate::spill::bson_size(v))
            .sum();
    }

    /// The state's values in result order, at most `n` (outputs only, for the
    /// `$top`/`$bottom` family).
    fn ranked(&self, coll: Option<&Collation>) -> Vec<Bson> {
        let mut items = self.items.clone();
        items.sort_by(|a, b| self.order(a, b, coll));
        let mut n = self.params.n.max(1);
        if self.kind == AccKind::LastN {
            n = items.len();
        }
        items.truncate(n);
        if matches!(
            self.kind,
            AccKind::Top | AccKind::Bottom | AccKind::TopN | AccKind::BottomN
        ) {
            items = items
                .into_iter()
                .map(|v| match v {
                    Bson::Array(mut p) if p.len() == 2 => p.pop().unwrap_or(Bson::Null),
                    other => other,
                })
                .collect();
        }
        items
    }

    /// `$percentile`/`$median` with method `approximate`: for each `p`, the value at rank
    /// ceil(p * count) in ascending order (the exact discrete percentile, which mongod's
    /// approximation equals on inputs of this size), null without numeric input.
    fn percentiles(&self) -> Vec<Bson> {
        let mut xs: Vec<f64> = self.items.iter().map(num::f).collect();
        xs.sort_by(f64::total_cmp);
        self.params
            .p
            .iter()
            .map(|p| percentile_of(&xs, *p))
            .collect()
    }

    /// The accumulated result.
    pub(crate) fn finish(&self) -> Bson {
        match self.kind {
            AccKind::Sum => self.total.clone(),
            AccKind::Count => num::narrow(self.count as i64),
            AccKind::Avg => {
                if self.count == 0 {
                    Bson::Null
                } else {
                    num::div(&self.total, &Bson::Int64(self.count as i64)).unwrap_or(Bson::Null)
                }
            }
            AccKind::Min | AccKind::Max | AccKind::First | AccKind::Last => {
                self.value.clone().unwrap_or(Bson::Null)
            }
            AccKind::Push | AccKind::AddToSet => Bson::Array(self.items.clone()),
            AccKind::FirstN => Bson::Array(self.items.clone()),
            AccKind::LastN => {
                let skip = self.items.len().saturating_sub(self.params.n);
                Bson::Array(self.items[skip..].to_vec())
            }
            AccKind::MaxN | AccKind::MinN => Bson::Array(self.ranked(None)),
            AccKind::TopN => Bson::Array(self.ranked(None)),
            // The last `n` in `sortBy` order, in that order.
            AccKind::BottomN => Bson::Array(self.ranked(None).into_iter().rev().collect()),
            AccKind::Top | AccKind::Bottom => {
                self.ranked(None).into_iter().next().unwrap_or(Bson::Null)
            }
            AccKind::Median => self.percentiles().into_iter().next().unwrap_or(Bson::Null),
            AccKind::Percentile => {
                if self.items.is_empty() {
                    Bson::Array(self.params.p.iter().map(|_| Bson::Null).collect())
                } else {
                    Bson::Array(self.percentiles())
                }
            }
            AccKind::MergeObjects => Bson::Document(self.merged.clone()),
            AccKind::StdDevPop => {
                if self.count == 0 {
                    Bson::Null
                } else {
                    Bson::Double((self.m2 / self.count as f64).sqrt())
                }
            }
            AccKind::StdDevSamp => {
                if self.count < 2 {
                    Bson::Null
                } else {
                    Bson::Double((self.m2 / (self.count - 1) as f64).sqrt())
                }
            }
        }
    }
}

/// The discrete percentile `p` of sorted values: the value at rank ceil(p * count); null
/// for none. `$percentile` and `$median` (accumulators and expressions) with method
/// `approximate`, which mongod's approximation equals on inputs of up to thousands.
pub(crate) fn percentile_of(sorted: &[f64], p: f64) -> Bson {
    if sorted.is_empty() {
        return Bson::Null;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Bson::Double(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Checks `$median`'s and `$percentile`'s `method` (only `approximate` is computed) and
/// reads the percentiles they ask for: `[0.5]` for `$median`, `$percentile`'s `p`
/// otherwise (a non-empty array of numbers from 0.0 to 1.0). Shared by the accumulator
/// and expression forms.
///
/// # Errors
/// BadValue for another method, 7436200 without one, 7750301 for a bad `p`.
pub(crate) fn percentile_args(
    op: &str,
    method: Option<&Bson>,
    p: Option<&Bson>,
) -> Result<Vec<f64>> {
    match method {
        Some(Bson::String(m)) if m == "approximate" => {}
        Some(m) => {
            return Err(err(
                2,
                format!(
                    "{op}'s method {m} is not supported: Eddy computes 'approximate' percentiles"
                ),
            ));
        }
        None => return Err(err(7436200, format!("{op} requires a 'method' field"))),
    }
    if op == "$median" {
        return Ok(vec![0.5]);
    }
    let ps = match p {
        Some(Bson::Array(ps)) if !ps.is_empty() => ps,
        other => {
            return Err(err(
                7750301,
                format!(
                    "$percentile requires 'p' to be a non-empty array of numbers, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    ps.iter()
        .map(|p| match doc::compare::as_f64(p) {
            Some(x) if (0.0..=1.0).contains(&x) => Ok(x),
            _ => Err(err(
                7750301,
                format!("$percentile's 'p' must hold numbers from 0.0 to 1.0, found {p}"),
            )),
        })
        .collect()
}
