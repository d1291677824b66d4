//! Index choice and scans.
//!
//! The planner looks at the filter's top-level AND-ed predicates: an `_id` equality or
//! `$in` becomes direct lookups; otherwise the index whose first field has the most selective
//! predicate (equality, then `$in`, then a range) is scanned over that field's bounds. A sort
//! whose keys are a prefix of a non-multikey index's fields (all in the index's direction,
//! or all reversed) is read in index order instead of being sorted in memory. Every
//! document the scan yields is still checked against the whole filter by the caller.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

use bson::{Bson, Document, doc};
use doc::keystring;
use errors::{ErrorCode, MongoError, Result};
use query::filter::{Filter, Predicate};
use query::sort::SortSpec;
use storage::{CollectionMeta, IndexMeta, Snapshot, prefix_range};

use crate::keys::{id_key, index_prefix};

/// A key range over an index: byte bounds.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// How a query reads its collection.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // One plan per query; boxing buys nothing.
pub enum Plan {
    /// Every document, in `_id` order.
    CollScan,
    /// Point lookups by `_id`.
    IdLookup(Vec<Bson>),
    /// An index scan over byte ranges.
    IxScan {
        index: IndexMeta,
        ranges: Vec<KeyRange>,
        reverse: bool,
        /// Whether the scan's order satisfies the query's sort.
        provides_sort: bool,
        /// The bounds as explain shows them.
        bounds: Document,
    },
}

impl Plan {
    /// Whether documents come out in the sort order asked for.
    pub fn provides_sort(&self) -> bool {
        matches!(
            self,
            Plan::IxScan {
                provides_sort: true,
                ..
            }
        )
    }

    /// The plan as explain's `winningPlan`.
    pub fn explain(&self) -> Document {
        match self {
            Plan::CollScan => doc! {"stage": "COLLSCAN", "direction": "forward"},
            Plan::IdLookup(_) => doc! {"stage": "IDHACK"},
            Plan::IxScan {
                index,
                reverse,
                bounds,
                ..
            } => doc! {
                "stage": "FETCH",
                "inputStage": {
                    "stage": "IXSCAN",
                    "keyPattern": index.key.clone(),
                    "indexName": &index.name,
                    "isMultiKey": index.multikey,
                    "isUnique": index.unique,
                    "isSparse": index.sparse,
                    "isPartial": index.partial_filter.is_some(),
                    "direction": if *reverse { "backward" } else { "forward" },
                    "indexBounds": bounds.clone(),
                }
            },
        }
    }
}

fn usable(v: &Bson) -> bool {
    !matches!(v, Bson::Array(_) | Bson::RegularExpression(_))
}

fn rank(p: &Predicate) -> u8 {
    match p {
        Predicate::Eq(_) => 3,
        Predicate::In(_) => 2,
        Predicate::Range { .. } => 1,
    }
}

/// Chooses how to read a collection for this filter, sort and hint.
///
/// # Errors
/// BadValue when the hint names no index of the collection.
pub fn plan_query(
    meta: &CollectionMeta,
    filter: &Filter,
    sort: Option<&SortSpec>,
    hint: Option<&Bson>,
) -> Result<Plan> {
    let preds: Vec<(String, Predicate)> = filter
        .predicates()
        .into_iter()
        .filter(|(_, p)| match p {
            Predicate::Eq(v) => usable(v),
            Predicate::In(vs) => vs.iter().all(usable),
            Predicate::Range { lower, upper } => {
                lower.iter().chain(upper.iter()).all(|(v, _)| usable(v))
            }
        })
        .collect();

    if let Some(h) = hint {
        let ix = match h {
            Bson::String(name) => meta.index(name),
            Bson::Document(k) if k.contains_key("$natural") => return Ok(Plan::CollScan),
            Bson::Document(k) => meta.indexes.iter().find(|i| &i.key == k),
            _ => None,
        };
        let Some(ix) = ix else {
            return Err(MongoError::new(
                ErrorCode::BadValue,
                "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
            ));
        };
        if ix.is_id() && preds.iter().all(|(f, _)| f != "_id") {
            return Ok(Plan::CollScan);
        }
        return Ok(index_plan(ix, &preds, sort));
    }

    // _id lookups.
    for (f, p) in &preds {
        if f == "_id" {
            match p {
                Predicate::Eq(v) => return Ok(Plan::IdLookup(vec![v.clone()])),
                Predicate::In(vs) => return Ok(Plan::IdLookup(vs.clone())),
                Predicate::Range { .. } => {}
            }
        }
    }

    let mut best: Option<(&IndexMeta, u8)> = None;
    for ix in meta
        .indexes
        .iter()
        .filter(|i| !i.is_id() && i.partial_filter.is_none() && !i.sparse)
    {
        let first = &ix.fields()[0].0;
        let r = preds
            .iter()
            .filter(|(f, _)| f == first)
            .map(|(_, p)| rank(p))
            .max();
        if let Some(r) = r
            && best.is_none_or(|(_, br)| r > br)
        {
            {
                best = Some((ix, r));
            }
        }
    }
    if let Some((ix, _)) = best {
        return Ok(index_plan(ix, &preds, sort));
    }
    // No predicate uses an index; a sort still may.
    if let Some(s) = sort {
        for ix in meta
            .indexes
            .iter()
            .filter(|i| !i.is_id() && i.partial_filter.is_none() && !i.sparse)
        {
            if sort_direction(ix, s).is_some() {
                return Ok(index_plan(ix, &preds, sort));
            }
        }
    }
    Ok(Plan::CollScan)
}

/// Whether the index provides the sort: `Some(reverse)` if so.
fn sort_direction(ix: &IndexMeta, sort: &SortSpec) -> Option<bool> {
    if ix.multikey || sort.keys().is_empty() {
        return None;
    }
    let fields = ix.fields();
    if sort.keys().len() > fields.len() {
        return None;
    }
    let mut reverse = None;
    for ((sf, asc), (f, desc)) in sort.keys().iter().zip(fields.iter()) {
        if sf != f {
            return None;
        }
        let r = *asc == *desc;
        if *reverse.get_or_insert(r) != r {
            return None;
        }
    }
    reverse
}

fn index_plan(ix: &IndexMeta, preds: &[(String, Predicate)], sort: Option<&SortSpec>) -> Plan {
    let (first, desc) = ix.fields()[0].clone();
    let pred = preds
        .iter()
        .filter(|(f, _)| *f == first)
        .max_by_key(|(_, p)| rank(p))
        .map(|(_, p)| p.clone());
    let pfx = index_prefix(ix.id);
    let (ranges, shown): (Vec<KeyRange>, Vec<Bson>) = match &pred {
        None => (
            vec![whole(&pfx)],
            vec![Bson::String("[MinKey, MaxKey]".into())],
        ),
        Some(Predicate::Eq(v)) => (vec![point(&pfx, v, desc)], vec![show_point(v)]),
        Some(Predicate::In(vs)) => {
            let mut rs: Vec<KeyRange> = vs.iter().map(|v| point(&pfx, v, desc)).collect();
            rs.sort_by(|a, b| bound_bytes(&a.0).cmp(bound_bytes(&b.0)));
            rs.dedup_by(|a, b| bound_bytes(&a.0) == bound_bytes(&b.0));
            (rs, vs.iter().map(show_point).collect())
        }
        Some(Predicate::Range { lower, upper }) => {
            let shown = format!(
                "{}{}, {}{}",
                if lower.as_ref().is_some_and(|l| l.1) {
                    "["
                } else {
                    "("
                },
                lower
                    .as_ref()
                    .map_or("MinKey".to_string(), |l| l.0.to_string()),
                upper
                    .as_ref()
                    .map_or("MaxKey".to_string(), |u| u.0.to_string()),
                if upper.as_ref().is_some_and(|u| u.1) {
                    "]"
                } else {
                    ")"
                },
            );
            (
                vec![range(&pfx, lower.as_ref(), upper.as_ref(), desc)],
                vec![Bson::String(shown)],
            )
        }
    };
    let (reverse, provides_sort) = match sort.and_then(|s| sort_direction(ix, s)) {
        Some(r) if !matches!(pred, Some(Predicate::In(_))) => (r, true),
        _ => (false, sort.is_none()),
    };
    let mut bounds = Document::new();
    bounds.insert(first, shown);
    Plan::IxScan {
        index: ix.clone(),
        ranges,
        reverse,
        provides_sort,
        bounds,
    }
}

fn show_point(v: &Bson) -> Bson {
    Bson::String(format!("[{v}, {v}]"))
}

fn bound_bytes(b: &Bound<Vec<u8>>) -> &[u8] {
    match b {
        Bound::Included(v) | Bound::Excluded(v) => v,
        Bound::Unbounded => &[],
    }
}

fn upper_of(prefix: &[u8]) -> Bound<Vec<u8>> {
    match prefix_range(prefix).1 {
        Some(h) => Bound::Excluded(h),
        None => Bound::Unbounded,
    }
}

fn whole(pfx: &[u8]) -> KeyRange {
    (Bound::Included(pfx.to_vec()), upper_of(pfx))
}

fn encoded(pfx: &[u8], v: &Bson, desc: bool) -> Vec<u8> {
    let mut k = pfx.to_vec();
    keystring::append_value(&mut k, v, desc);
    k
}

fn point(pfx: &[u8], v: &Bson, desc: bool) -> KeyRange {
    let k = encoded(pfx, v, desc);
    let hi = upper_of(&k);
    (Bound::Included(k), hi)
}

/// Byte bounds for a value range on an index field; a descending field inverts the bytes,
/// so the value's lower bound becomes the bytes' upper bound.
fn range(
    pfx: &[u8],
    lower: Option<&(Bson, bool)>,
    upper: Option<&(Bson, bool)>,
    desc: bool,
) -> KeyRange {
    // In byte order: the bound at the small end, and at the large end.
    let (small, large) = if desc { (upper, lower) } else { (lower, upper) };
    let lo = match small {
        None => Bound::Included(pfx.to_vec()),
        Some((v, true)) => Bound::Included(encoded(pfx, v, desc)),
        Some((v, false)) => match upper_of(&encoded(pfx, v, desc)) {
            Bound::Excluded(h) => Bound::Included(h),
            other => other,
        },
    };
    let hi = match large {
        None => upper_of(pfx),
        Some((v, true)) => upper_of(&encoded(pfx, v, desc)),
        Some((v, false)) => Bound::Excluded(encoded(pfx, v, desc)),
    };
    (lo, hi)
}

/// An index entry as scanned: its key and the `_id` key it points to.
type IndexEntry = Result<(Vec<u8>, Vec<u8>)>;

/// Documents a plan yields, before the filter is applied.
pub type DocIter = Box<dyn Iterator<Item = Result<Document>> + Send>;

/// Runs a plan over a snapshot.
///
/// # Errors
/// A storage error.
pub fn scan(snap: Arc<Snapshot>, meta: &CollectionMeta, plan: &Plan) -> Result<DocIter> {
    let coll_id = meta.id;
    match plan {
        Plan::CollScan => {
            let it = snap.scan_docs(coll_id, None)?;
            Ok(Box::new(it.map(|r| r.map(|(_, d)| d))))
        }
        Plan::IdLookup(ids) => {
            let mut keys: Vec<Vec<u8>> = ids.iter().map(id_key).collect();
            keys.sort();
            keys.dedup();
            Ok(Box::new(keys.into_iter().filter_map(move |k| {
                snap.get_doc(coll_id, &k).transpose()
            })))
        }
        Plan::IxScan {
            ranges,
            reverse,
            index,
            ..
        } => {
            let mut ranges = ranges.clone();
            if *reverse {
                ranges.reverse();
            }
            let multikey = index.multikey;
            let mut seen: HashSet<Vec<u8>> = HashSet::new();
            let s2 = snap.clone();
            let reverse = *reverse;
            let entries = ranges.into_iter().flat_map(move |(lo, hi)| {
                let it: Box<dyn Iterator<Item = IndexEntry> + Send> = match s2.scan_index(lo, hi) {
                    Ok(r) if reverse => Box::new(r.rev()),
                    Ok(r) => Box::new(r),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                };
                it
            });
            Ok(Box::new(entries.filter_map(move |r| match r {
                Err(e) => Some(Err(e)),
                Ok((_, idk)) => {
                    if multikey && !seen.insert(idk.clone()) {
                        return None;
                    }
                    snap.get_doc(coll_id, &idk).transpose()
                }
            })))
        }
    }
}
