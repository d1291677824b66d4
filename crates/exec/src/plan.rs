//! Index choice and scans.
//!
//! The planner looks at the filter's top-level AND-ed predicates: an `_id` equality or
//! `$in` becomes direct lookups; otherwise the index whose first field has the most selective
//! predicate (equality, then `$in`, then a range) is scanned over that field's bounds. A sort
//! whose keys are a prefix of a non-multikey index's fields (all in the index's direction,
//! or all reversed) is read in index order instead of being sorted in memory. Every
//! document the scan yields is still checked against the whole filter by the caller.
//!
//! Collation: an index serves a query (bounds or sort) only if both use the same collation
//! (simple and simple included), and its bounds are then encoded under it. `_id` lookups
//! read records keyed by the binary `_id`, so a query with a collation uses them only for
//! `_id` values without strings.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::Arc;

use bson::{Bson, Document, doc};
use doc::{Collation, keystring};
use errors::{ErrorCode, MongoError, Result};
use query::filter::{Filter, Predicate};
use query::sort::SortSpec;
use storage::{CollectionMeta, IndexMeta, Snapshot, prefix_range};

use crate::collation::{has_strings, of_index};
use crate::keys::{id_key, index_prefix};

/// A key range over an index: byte bounds.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// How a query reads its collection.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // One plan per query; boxing buys nothing.
pub enum Plan {
    /// Every document, in natural (insertion) order or backwards.
    CollScan { reverse: bool },
    /// Every document through the `_id` index, in `_id` order or backwards.
    IdScan { reverse: bool, provides_sort: bool },
    /// Point lookups by `_id`.
    IdLookup(Vec<Bson>),
    /// A 2dsphere index read nearest first (`$near`, `$nearSphere`, `$geoNear`); each
    /// document carries its distance.
    GeoNear {
        index: IndexMeta,
        near: query::geo::Near,
    },
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
            } | Plan::IdScan {
                provides_sort: true,
                ..
            }
        )
    }

    /// The plan as explain's `winningPlan`.
    pub fn explain(&self) -> Document {
        match self {
            Plan::CollScan { reverse } => {
                doc! {"stage": "COLLSCAN", "direction": direction(*reverse)}
            }
            Plan::IdScan { reverse, .. } => doc! {"stage": "FETCH", "inputStage": {
                "stage": "IXSCAN",
                "keyPattern": {"_id": 1},
                "indexName": "_id_",
                "isMultiKey": false,
                "isUnique": true,
                "isSparse": false,
                "isPartial": false,
                "direction": direction(*reverse),
                "indexBounds": {"_id": ["[MinKey, MaxKey]"]},
            }},
            Plan::IdLookup(_) => doc! {"stage": "IDHACK"},
            Plan::GeoNear { index, .. } => doc! {
                "stage": if index.is_2d() { "GEO_NEAR_2D" } else { "GEO_NEAR_2DSPHERE" },
                "keyPattern": index.key.clone(),
                "indexName": &index.name,
            },
            Plan::IxScan {
                index,
                reverse,
                bounds,
                ..
            } => {
                let mut ixscan = doc! {
                    "stage": "IXSCAN",
                    "keyPattern": index.key.clone(),
                    "indexName": &index.name,
                    "isMultiKey": index.multikey,
                    "isUnique": index.unique,
                    "isSparse": index.sparse,
                    "isPartial": index.partial_filter.is_some(),
                    "direction": direction(*reverse),
                    "indexBounds": bounds.clone(),
                };
                if let Some(c) = of_index(index) {
                    ixscan.insert("collation", c.spec().clone());
                }
                if index.is_text() {
                    // mongod's shape: the match over the fetched documents, the union of
                    // the terms' scans.
                    let terms = bounds.get_array("terms").cloned().unwrap_or_default();
                    return doc! {"stage": "TEXT_MATCH", "indexPrefix": {}, "indexName": &index.name, "parsedTextQuery": {"terms": terms}, "inputStage": {
                        "stage": "FETCH",
                        "inputStage": {"stage": "TEXT_OR", "inputStage": ixscan},
                    }};
                }
                doc! {"stage": "FETCH", "inputStage": ixscan}
            }
        }
    }
}

fn direction(reverse: bool) -> &'static str {
    if reverse { "backward" } else { "forward" }
}

/// The direction of a `{$natural: 1 | -1}` hint or sort: `Some(reverse)`.
///
/// # Errors
/// BadValue when the direction is not a number.
pub fn natural_direction(spec: &Document) -> Result<Option<bool>> {
    match spec.get("$natural") {
        None => Ok(None),
        Some(v) => match doc::compare::as_f64(v) {
            Some(d) => Ok(Some(d < 0.0)),
            None => Err(MongoError::new(
                ErrorCode::BadValue,
                format!("$natural must be 1 or -1, not {v}"),
            )),
        },
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
    let plan = choose(meta, filter, sort, hint)?;
    let used = match &plan {
        Plan::IxScan { index, .. } | Plan::GeoNear { index, .. } => Some(index.id),
        Plan::IdScan { .. } | Plan::IdLookup(_) => {
            meta.indexes.iter().find(|i| i.is_id()).map(|i| i.id)
        }
        Plan::CollScan { .. } => None,
    };
    if let Some(id) = used {
        usage::record(meta.uuid, id);
    }
    Ok(plan)
}

/// How often each index was chosen by the planner, since when: `$indexStats`'
/// `accesses`. Kept in memory, as mongod keeps them (they restart with the server).
pub mod usage {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};

    use bson::DateTime;

    static STARTED: LazyLock<DateTime> = LazyLock::new(DateTime::now);
    /// By collection UUID (unique to a server's collection, even across the servers
    /// one test process runs) and index storage id.
    static USES: LazyLock<Mutex<HashMap<IndexKey, Uses>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));

    /// A collection's UUID and an index's storage id.
    type IndexKey = (bson::Uuid, u64);
    /// How many uses, since when.
    type Uses = (u64, DateTime);

    /// Starts the clock `since` reports (at server start).
    pub fn start() {
        LazyLock::force(&STARTED);
    }

    /// Notes one use of the index with storage id `id` of collection `coll`.
    pub fn record(coll: bson::Uuid, id: u64) {
        LazyLock::force(&STARTED);
        USES.lock()
            .unwrap()
            .entry((coll, id))
            .or_insert((0, *STARTED))
            .0 += 1;
    }

    /// Uses of the index, and since when they are counted (the server's start).
    pub fn of(coll: bson::Uuid, id: u64) -> (u64, DateTime) {
        USES.lock()
            .unwrap()
            .get(&(coll, id))
            .copied()
            .unwrap_or((0, *STARTED))
    }
}

fn choose(
    meta: &CollectionMeta,
    filter: &Filter,
    sort: Option<&SortSpec>,
    hint: Option<&Bson>,
) -> Result<Plan> {
    if let Some(q) = filter.text_query() {
        return text_plan(meta, filter, q, hint);
    }
    if let Some(p) = geo_plan(meta, filter)? {
        return Ok(p);
    }
    let coll = filter.collation();
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
            Bson::Document(k) if k.contains_key("$natural") => {
                let reverse = natural_direction(k)?.unwrap_or(false);
                return Ok(Plan::CollScan { reverse });
            }
            Bson::Document(k) => meta.indexes.iter().find(|i| &i.key == k),
            _ => None,
        }
        .filter(|i| !i.hidden() && !i.is_special());
        let Some(ix) = ix else {
            return Err(MongoError::new(
                ErrorCode::BadValue,
                "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
            ));
        };
        if ix.is_id() && preds.iter().all(|(f, _)| f != "_id") {
            let dir = sort.and_then(|s| sort_direction(ix, s));
            return Ok(Plan::IdScan {
                reverse: dir.unwrap_or(false),
                provides_sort: dir.is_some() || sort.is_none(),
            });
        }
        if !ix.is_id() && !serves(ix, coll) {
            // Its keys don't follow the query's collation: read all of it, in no useful
            // order, and let the filter decide.
            return Ok(index_plan(ix, &[], None));
        }
        return Ok(index_plan(ix, &preds, sort));
    }

    // _id lookups.
    for (f, p) in &preds {
        if f == "_id" {
            let binary_ok = |v: &Bson| coll.is_none() || !has_strings(v);
            match p {
                Predicate::Eq(v) if binary_ok(v) => return Ok(Plan::IdLookup(vec![v.clone()])),
                Predicate::In(vs) if vs.iter().all(binary_ok) => {
                    return Ok(Plan::IdLookup(vs.clone()));
                }
                _ => {}
            }
        }
    }

    let mut best: Option<(&IndexMeta, u8)> = None;
    let special = special_plan(meta, &preds, coll);
    for ix in meta.indexes.iter().filter(|i| plain_candidate(i, coll)) {
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
    let special_rank = match &special {
        Some(Plan::IxScan { bounds, .. }) => preds
            .iter()
            .filter(|(f, _)| bounds.contains_key(f))
            .map(|(_, p)| rank(p))
            .max(),
        _ => None,
    };
    match (best, special) {
        (Some((ix, r)), sp) if special_rank.is_none_or(|s| r >= s) => {
            let _ = sp;
            return Ok(index_plan(ix, &preds, sort));
        }
        (_, Some(sp)) => return Ok(sp),
        _ => {}
    }
    // No predicate uses an index; a sort still may.
    if let Some(s) = sort {
        for ix in meta.indexes.iter().filter(|i| plain_candidate(i, coll)) {
            if sort_direction(ix, s).is_some() {
                return Ok(index_plan(ix, &preds, sort));
            }
        }
        // A sort on `_id` alone reads the documents in `_id` order.
        if let Some(ix) = meta.indexes.iter().find(|i| i.is_id() && serves(i, coll))
            && let Some(reverse) = sort_direction(ix, s)
        {
            return Ok(Plan::IdScan {
                reverse,
                provides_sort: true,
            });
        }
    }
    Ok(Plan::CollScan { reverse: false })
}

/// A `$text` query's plan: the collection's text index, read for each of the query's
/// terms (after equality values for a compound index's prefix fields). The query is bound
/// to the index here, which is what lets it match documents.
fn text_plan(
    meta: &CollectionMeta,
    filter: &Filter,
    q: &query::text::TextQuery,
    hint: Option<&Bson>,
) -> Result<Plan> {
    let Some(ix) = meta.indexes.iter().find(|i| i.is_text()) else {
        return Err(MongoError::new(
            ErrorCode::IndexNotFound,
            "text index required for $text query",
        ));
    };
    if hint.is_some() {
        return Err(MongoError::new(
            ErrorCode::BadValue,
            "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
        ));
    }
    let Some(t) = query::text::TextIndex::from_spec(&ix.key, &ix.spec) else {
        return Err(MongoError::internal(
            "a text index without its specification",
        ));
    };
    q.bind(&t)?;
    let preds = filter.predicates();
    let mut head = index_prefix(ix.id);
    let mut bounds = Document::new();
    for f in &t.prefix {
        let Some(v) = preds.iter().find_map(|(p, pr)| match pr {
            Predicate::Eq(v) if p == f => Some(v),
            _ => None,
        }) else {
            return Err(MongoError::new(
                ErrorCode::NoQueryExecutionPlans,
                "error processing query: planner returned error :: caused by :: failed to use text index to satisfy $text query (if text index is compound, are equality predicates given for all prefix fields?)",
            ));
        };
        keystring::append_value_collated(&mut head, v, false, None);
        bounds.insert(f.clone(), vec![format!("[{v}, {v}]")]);
    }
    let terms = q.index_terms();
    let ranges = terms
        .iter()
        .map(|term| {
            let mut k = head.clone();
            keystring::append_value_collated(&mut k, &Bson::String(term.clone()), false, None);
            let (lo, hi) = prefix_range(&k);
            (
                Bound::Included(lo),
                hi.map_or(Bound::Unbounded, Bound::Excluded),
            )
        })
        .collect();
    bounds.insert("terms", terms);
    let mut index = ix.clone();
    index.multikey = true;
    Ok(Plan::IxScan {
        index,
        ranges,
        reverse: false,
        provides_sort: false,
        bounds,
    })
}

/// A geospatial query's plan: `$near` needs a 2dsphere index on its field and reads it
/// nearest first; `$geoWithin` (`$geometry`, `$centerSphere`) and `$geoIntersects` read
/// the cells covering their region when such an index exists.
fn geo_plan(meta: &CollectionMeta, filter: &Filter) -> Result<Option<Plan>> {
    use query::filter::GeoQuery;
    let preds = filter.geo_predicates();
    let index_on = |path: &str| {
        meta.indexes
            .iter()
            .find(|i| i.is_sphere() && !i.hidden() && crate::geo::sphere_field(i) == Some(path))
    };
    let no_index = || {
        MongoError::new(
            ErrorCode::NoQueryExecutionPlans,
            "error processing query: planner returned error :: caused by :: unable to find index for $geoNear query",
        )
    };
    if filter.has_near() {
        let nears: Vec<_> = preds
            .iter()
            .filter(|(_, q)| matches!(q, GeoQuery::Near(_)))
            .collect();
        let [(path, GeoQuery::Near(near))] = nears.as_slice() else {
            return Err(MongoError::new(
                ErrorCode::BadValue,
                "geo near expression must be top-level and only one is allowed",
            ));
        };
        let flat_on = |path: &str| {
            meta.indexes
                .iter()
                .find(|i| !i.hidden() && crate::geo::Flat::of(i).is_some_and(|f| f.field == path))
        };
        // GeoJSON needs a 2dsphere index; a legacy $near a 2d one; $nearSphere either.
        let ix = if near.metres {
            index_on(path)
        } else if near.spherical {
            index_on(path).or_else(|| flat_on(path))
        } else {
            flat_on(path)
        };
        let Some(ix) = ix else {
            return Err(no_index());
        };
        return Ok(Some(Plan::GeoNear {
            index: ix.clone(),
            near: near.clone(),
        }));
    }
    for (path, q) in &preds {
        let cap = match q {
            GeoQuery::Within(r) => r.cap(),
            GeoQuery::Intersects(g) => match g {
                query::geo::Geometry::Point(c) => Some(s2::cap::Cap::from_center_angle(
                    &query::geo::point(*c),
                    &s2::s1::Angle::from(s2::s1::Rad(1e-9)),
                )),
                other => query::geo::Region::Geometry(other.clone()).cap(),
            },
            GeoQuery::Near(_) => None,
        };
        if let GeoQuery::Within(r) = q {
            if let Some((ix, f)) = meta.indexes.iter().find_map(|i| {
                crate::geo::Flat::of(i)
                    .filter(|f| !i.hidden() && f.field == *path)
                    .map(|f| (i, f))
            }) {
                if let Some((lo, hi)) = r.flat_bounds() {
                    let mut index = ix.clone();
                    index.multikey = true;
                    return Ok(Some(Plan::IxScan {
                        ranges: f.box_ranges(ix.id, lo, hi),
                        index,
                        reverse: false,
                        provides_sort: false,
                        bounds: doc! {path.clone(): ["[geohash cells covering the region]"]},
                    }));
                }
            }
        }
        if let (Some(cap), Some(ix)) = (cap, index_on(path)) {
            let mut index = ix.clone();
            index.multikey = true;
            return Ok(Some(Plan::IxScan {
                ranges: crate::geo::cap_ranges(ix.id, &cap),
                index,
                reverse: false,
                provides_sort: false,
                bounds: doc! {path.clone(): ["[cells covering the region]"]},
            }));
        }
    }
    Ok(None)
}

/// Whether an index may serve a query's predicates or sort by its fields' values: not
/// `_id` (planned apart), hidden, special, partial or sparse, and under the query's
/// collation.
fn plain_candidate(i: &IndexMeta, coll: Option<&Collation>) -> bool {
    !i.is_id()
        && !i.hidden()
        && !i.is_special()
        && i.partial_filter.is_none()
        && !i.sparse
        && serves(i, coll)
}

/// Whether an index's keys follow the query's collation.
fn serves(ix: &IndexMeta, coll: Option<&Collation>) -> bool {
    doc::collation::same(of_index(ix).as_deref(), coll)
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
    let coll = of_index(ix);
    index_plan_on(
        ix,
        first,
        desc,
        index_prefix(ix.id),
        pred,
        coll.as_deref(),
        sort,
    )
}

/// The best predicate on `field` an index can serve: for a hashed index only equality
/// and `$in`, by their values' hashes.
fn best_pred(
    preds: &[(String, Predicate)],
    field: &str,
    hashed: Option<Option<&Collation>>,
) -> Option<Predicate> {
    let p = preds
        .iter()
        .filter(|(f, p)| f == field && (hashed.is_none() || !matches!(p, Predicate::Range { .. })))
        .max_by_key(|(_, p)| rank(p))
        .map(|(_, p)| p.clone())?;
    Some(match (hashed, p) {
        (Some(c), Predicate::Eq(v)) => Predicate::Eq(crate::keys::hashed_value(&v, c)),
        (Some(c), Predicate::In(vs)) => {
            Predicate::In(vs.iter().map(|v| crate::keys::hashed_value(v, c)).collect())
        }
        (_, p) => p,
    })
}

/// A hashed or wildcard index's plan for the filter's most selective predicate it can
/// serve, if any: a hashed index reads the hashes of equality values; a wildcard index
/// the entries of the predicate's path.
fn special_plan(
    meta: &CollectionMeta,
    preds: &[(String, Predicate)],
    coll: Option<&Collation>,
) -> Option<Plan> {
    let mut best: Option<(u8, Plan)> = None;
    for ix in meta.indexes.iter().filter(|i| {
        (i.is_hashed() || i.is_wildcard())
            && !i.hidden()
            && i.partial_filter.is_none()
            && serves(i, coll)
    }) {
        let ic = of_index(ix);
        let candidates: Vec<(String, Predicate)> = if ix.is_hashed() {
            let f = ix.fields()[0].0.clone();
            best_pred(preds, &f, Some(ic.as_deref()))
                .map(|p| (f, p))
                .into_iter()
                .collect()
        } else {
            // Only paths to scalars: a wildcard index keys leaves, not the documents
            // above them, nor missing fields (so not null), nor array positions.
            let scope = crate::keys::WildcardScope::of(ix);
            let leafy = |v: &Bson| !matches!(v, Bson::Null | Bson::Undefined | Bson::Document(_));
            preds
                .iter()
                .filter(|(f, p)| {
                    scope.covers(f)
                        && !f.split('.').any(|c| c.parse::<usize>().is_ok())
                        && match p {
                            Predicate::Eq(v) => leafy(v),
                            Predicate::In(vs) => vs.iter().all(leafy),
                            Predicate::Range { lower, upper } => {
                                lower.iter().chain(upper.iter()).all(|(v, _)| leafy(v))
                            }
                        }
                })
                .map(|(f, p)| (f.clone(), p.clone()))
                .collect()
        };
        for (f, p) in candidates {
            let r = rank(&p);
            if best.as_ref().is_some_and(|(br, _)| *br >= r) {
                continue;
            }
            let mut pfx = index_prefix(ix.id);
            let value_coll = if ix.is_wildcard() {
                keystring::append_value_collated(&mut pfx, &Bson::String(f.clone()), false, None);
                ic.as_deref()
            } else {
                None
            };
            let mut index = ix.clone();
            index.multikey |= ix.is_wildcard();
            let plan = index_plan_on(&index, f, false, pfx, Some(p), value_coll, None);
            best = Some((r, plan));
        }
    }
    best.map(|(_, p)| p)
}

/// An index scan of `field`'s entries (after `pfx`) for one predicate.
fn index_plan_on(
    ix: &IndexMeta,
    first: String,
    desc: bool,
    pfx: Vec<u8>,
    pred: Option<Predicate>,
    coll: Option<&Collation>,
    sort: Option<&SortSpec>,
) -> Plan {
    let (ranges, shown): (Vec<KeyRange>, Vec<Bson>) = match &pred {
        None => (
            vec![whole(&pfx)],
            vec![Bson::String("[MinKey, MaxKey]".into())],
        ),
        Some(Predicate::Eq(v)) => (vec![point(&pfx, v, desc, coll)], vec![show_point(v)]),
        Some(Predicate::In(vs)) => {
            let mut rs: Vec<KeyRange> = vs.iter().map(|v| point(&pfx, v, desc, coll)).collect();
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
                vec![range(&pfx, lower.as_ref(), upper.as_ref(), desc, coll)],
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

fn encoded(pfx: &[u8], v: &Bson, desc: bool, coll: Option<&Collation>) -> Vec<u8> {
    let mut k = pfx.to_vec();
    keystring::append_value_collated(&mut k, v, desc, coll);
    k
}

fn point(pfx: &[u8], v: &Bson, desc: bool, coll: Option<&Collation>) -> KeyRange {
    let k = encoded(pfx, v, desc, coll);
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
    coll: Option<&Collation>,
) -> KeyRange {
    // In byte order: the bound at the small end, and at the large end.
    let (small, large) = if desc { (upper, lower) } else { (lower, upper) };
    let lo = match small {
        None => Bound::Included(pfx.to_vec()),
        Some((v, true)) => Bound::Included(encoded(pfx, v, desc, coll)),
        Some((v, false)) => match upper_of(&encoded(pfx, v, desc, coll)) {
            Bound::Excluded(h) => Bound::Included(h),
            other => other,
        },
    };
    let hi = match large {
        None => upper_of(pfx),
        Some((v, true)) => upper_of(&encoded(pfx, v, desc, coll)),
        Some((v, false)) => Bound::Excluded(encoded(pfx, v, desc, coll)),
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
        Plan::CollScan { reverse } => {
            let it = snap.scan_natural(coll_id, *reverse)?;
            Ok(Box::new(it.map(|r| r.map(|(_, d)| d))))
        }
        Plan::IdScan { reverse, .. } => {
            let it = snap.scan_docs(coll_id, None)?;
            if *reverse {
                Ok(Box::new(it.rev().map(|r| r.map(|(_, d)| d))))
            } else {
                Ok(Box::new(it.map(|r| r.map(|(_, d)| d))))
            }
        }
        Plan::IdLookup(ids) => {
            let mut keys: Vec<Vec<u8>> = ids.iter().map(id_key).collect();
            keys.sort();
            keys.dedup();
            Ok(Box::new(keys.into_iter().filter_map(move |k| {
                snap.get_doc(coll_id, &k).transpose()
            })))
        }
        Plan::GeoNear { index, near } => Ok(Box::new(crate::geo::NearScan::new(
            snap,
            coll_id,
            index,
            near.clone(),
        ))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use storage::Namespace;

    fn index(id: u64, name: &str, spec: Document) -> IndexMeta {
        IndexMeta {
            id,
            name: name.into(),
            key: doc! {"s": 1},
            unique: false,
            sparse: false,
            partial_filter: None,
            spec,
            multikey: false,
        }
    }

    fn meta(indexes: Vec<IndexMeta>) -> CollectionMeta {
        CollectionMeta {
            ns: Namespace::new("d", "c"),
            uuid: bson::Uuid::new(),
            id: 1,
            options: Document::new(),
            indexes,
        }
    }

    fn chosen(m: &CollectionMeta, filter: Document, coll: Option<Document>) -> String {
        let coll = coll.and_then(|c| Collation::parse(&c).unwrap());
        let f = Filter::parse(&filter).unwrap().with_collation(coll);
        match plan_query(m, &f, None, None).unwrap() {
            Plan::CollScan { .. } => "COLLSCAN".into(),
            Plan::IdScan { .. } => "_id_".into(),
            Plan::IdLookup(_) => "IDHACK".into(),
            Plan::IxScan { index, .. } | Plan::GeoNear { index, .. } => index.name,
        }
    }

    #[test]
    fn an_index_serves_only_queries_with_its_collation() {
        let ci = doc! {"locale": "en", "strength": 2};
        let only_ci = meta(vec![index(2, "ci", doc! {"collation": ci.clone()})]);
        assert_eq!(chosen(&only_ci, doc! {"s": "a"}, Some(ci.clone())), "ci");
        assert_eq!(chosen(&only_ci, doc! {"s": "a"}, None), "COLLSCAN");
        assert_eq!(
            chosen(&only_ci, doc! {"s": "a"}, Some(doc! {"locale": "en"})),
            "COLLSCAN"
        );
        let only_simple = meta(vec![index(3, "plain", Document::new())]);
        assert_eq!(chosen(&only_simple, doc! {"s": "a"}, None), "plain");
        assert_eq!(
            chosen(
                &only_simple,
                doc! {"s": "a"},
                Some(doc! {"locale": "simple"})
            ),
            "plain"
        );
        assert_eq!(
            chosen(&only_simple, doc! {"s": "a"}, Some(ci.clone())),
            "COLLSCAN"
        );
        // Records are keyed by the binary _id: string _ids under a collation need a scan.
        assert_eq!(
            chosen(&only_simple, doc! {"_id": "a"}, Some(ci.clone())),
            "COLLSCAN"
        );
        assert_eq!(chosen(&only_simple, doc! {"_id": 5}, Some(ci)), "IDHACK");
    }

    #[test]
    fn collated_bounds_cover_every_case_variant() {
        let c = Collation::parse(&doc! {"locale": "en", "strength": 2})
            .unwrap()
            .unwrap();
        let m = meta(vec![index(2, "ci", doc! {"collation": c.spec().clone()})]);
        let f = Filter::parse(&doc! {"s": "abc"})
            .unwrap()
            .with_collation(Some(c.clone()));
        let Plan::IxScan { ranges, .. } = plan_query(&m, &f, None, None).unwrap() else {
            panic!("expected an index scan");
        };
        let mut key = index_prefix(2);
        keystring::append_value_collated(&mut key, &Bson::String("ABC".into()), false, Some(&c));
        key.extend_from_slice(b"some id key");
        let (lo, hi) = &ranges[0];
        use std::ops::RangeBounds;
        assert!((lo.clone(), hi.clone()).contains(&key));
    }
}
