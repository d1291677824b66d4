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
            _ => return None,
        })
    }
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
}

impl Acc {
    /// The same accumulator with its `$push`/`$addToSet` array held to `cap` bytes.
    pub(crate) fn capped(mut self, cap: usize) -> Acc {
        self.cap = cap;
        self
    }

    /// Counts an item kept in the array, failing as MongoDB does past the cap.
    fn keep(&mut self, v: &Bson) -> Result<()> {
        self.bytes += 8 + crate::spill::bson_size(v);
        if self.bytes > self.cap {
            let name = if self.kind == AccKind::Push {
                "$push"
            } else {
                "$addToSet"
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
