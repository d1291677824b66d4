//! 2dsphere indexes: their keys (S2 cell ids), the scans that serve `$geoWithin` and
//! `$geoIntersects`, and the nearest-first search that serves `$near`, `$nearSphere` and
//! `$geoNear`.
//!
//! A point is keyed by its leaf cell; a line or polygon by a covering of up to 8 cells
//! of its bounding cap. A query region is covered by cells too: a document can touch it
//! only if one of its cells lies inside a query cell (a range of leaf ids) or contains one
//! (an ancestor's exact id). Every candidate is then checked exactly by the filter.
//!
//! `$near` searches caps of growing radius around the point (from 1 km, doubling), and
//! yields documents in distance order as soon as no closer one can appear.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use bson::{Bson, Document};
use doc::keystring;
use errors::Result;
use query::geo::{self, Near};
use s2::cap::Cap;
use s2::s1::{Angle, Rad};
use storage::{IndexMeta, Snapshot, prefix_range};

use crate::keys::index_prefix;
use crate::plan::KeyRange;
use errors::MongoError;

/// The path of a 2dsphere index's field.
pub fn sphere_field(ix: &IndexMeta) -> Option<&str> {
    ix.key
        .iter()
        .find(|(_, v)| matches!(v, Bson::String(s) if s == "2dsphere"))
        .map(|(k, _)| k.as_str())
}

/// A 2d index's field and its geohash grid: bounds `[min, max)` on both axes, and the
/// bits of precision per axis.
#[derive(Debug, Clone)]
pub struct Flat {
    pub field: String,
    pub min: f64,
    pub max: f64,
    pub bits: u32,
}

impl Flat {
    /// The 2d grid of an index, if it is a 2d index.
    pub fn of(ix: &IndexMeta) -> Option<Flat> {
        let field = ix
            .key
            .iter()
            .find(|(_, v)| matches!(v, Bson::String(s) if s == "2d"))
            .map(|(k, _)| k.clone())?;
        let num = |k: &str, d: f64| ix.spec.get(k).and_then(doc::compare::as_f64).unwrap_or(d);
        Some(Flat {
            field,
            min: num("min", -180.0),
            max: num("max", 180.0),
            bits: num("bits", 26.0) as u32,
        })
    }

    /// A coordinate's cell number on one axis (clamped into the grid).
    fn cell(&self, v: f64) -> u64 {
        let n = 1u64 << self.bits;
        let x = ((v - self.min) / (self.max - self.min) * n as f64).floor();
        (x.max(0.0) as u64).min(n - 1)
    }

    /// The geohash of a point: its cells' bits interleaved, x first.
    pub fn hash(&self, p: (f64, f64)) -> u64 {
        let (x, y) = (self.cell(p.0), self.cell(p.1));
        let mut h = 0u64;
        for i in (0..self.bits).rev() {
            h = (h << 2) | (((x >> i) & 1) << 1) | ((y >> i) & 1);
        }
        h
    }

    /// Key ranges covering a box: grid cells at the finest level where the box spans at
    /// most 8 cells a side, each a range of full-precision hashes.
    pub fn box_ranges(&self, index_id: u64, lo: (f64, f64), hi: (f64, f64)) -> Vec<KeyRange> {
        let span = (hi.0 - lo.0).max(hi.1 - lo.1).max(0.0);
        let mut level = self.bits;
        while level > 0 && span / ((self.max - self.min) / (1u64 << level) as f64) > 8.0 {
            level -= 1;
        }
        let shift = self.bits - level;
        let (x0, x1) = (self.cell(lo.0) >> shift, self.cell(hi.0) >> shift);
        let (y0, y1) = (self.cell(lo.1) >> shift, self.cell(hi.1) >> shift);
        let mut out = Vec::new();
        for cx in x0..=x1 {
            for cy in y0..=y1 {
                let mut prefix = 0u64;
                for i in (0..level).rev() {
                    prefix = (prefix << 2) | (((cx >> i) & 1) << 1) | ((cy >> i) & 1);
                }
                let first = prefix << (2 * shift);
                let last = first | ((1u64 << (2 * shift)) - 1);
                let upper = prefix_range(&key_of(index_id, last)).1;
                out.push((
                    Bound::Included(key_of(index_id, first)),
                    upper.map_or(Bound::Unbounded, Bound::Excluded),
                ));
            }
        }
        out
    }
}

/// A 2d index's entries: the geohash of each legacy point of the field (none when it is
/// missing or null).
///
/// # Errors
/// 13027 for a point outside the index's bounds; 13026 for a value that is not a point.
pub fn flat_keys(ix: &IndexMeta, doc: &Document, id_key: &[u8]) -> Result<(Vec<Vec<u8>>, bool)> {
    let Some(f) = Flat::of(ix) else {
        return Ok((Vec::new(), false));
    };
    let mut hashes = Vec::new();
    for v in doc::lookup_all(doc, &f.field).into_iter().flatten() {
        if matches!(v, Bson::Null | Bson::Undefined) {
            continue;
        }
        let points: Vec<(f64, f64)> = match &v {
            Bson::Array(a)
                if a.iter()
                    .all(|e| matches!(e, Bson::Array(_) | Bson::Document(_)))
                    && !a.is_empty() =>
            {
                a.iter().filter_map(geo::legacy_point).collect()
            }
            other => geo::legacy_point(other).into_iter().collect(),
        };
        if points.is_empty() {
            return Err(MongoError::with_code(
                13026,
                format!("geo values must be 'legacy coordinate pairs' for 2d indexes: {v}"),
            ));
        }
        for p in points {
            if !(p.0 >= f.min && p.0 < f.max && p.1 >= f.min && p.1 < f.max) {
                return Err(MongoError::with_code(
                    13027,
                    format!(
                        "point not in interval of [ {}, {} ) :: caused by :: {v}",
                        f.min, f.max
                    ),
                ));
            }
            hashes.push(f.hash(p));
        }
    }
    hashes.sort_unstable();
    hashes.dedup();
    let keys = hashes
        .into_iter()
        .map(|h| {
            let mut k = key_of(ix.id, h);
            k.extend_from_slice(id_key);
            k
        })
        .collect();
    Ok((keys, true))
}

/// A cell id as an index key value: an order-preserving signed form of the u64.
fn cell_value(id: u64) -> Bson {
    Bson::Int64((id ^ (1 << 63)) as i64)
}

fn key_of(index_id: u64, id: u64) -> Vec<u8> {
    let mut k = index_prefix(index_id);
    keystring::append_value_collated(&mut k, &cell_value(id), false, None);
    k
}

/// A 2dsphere index's entries for a document: one per cell of its geometries (none when
/// the field is missing or null, as 2dsphere indexes are sparse).
///
/// # Errors
/// 16755 for a value that is not a location.
pub fn sphere_keys(ix: &IndexMeta, doc: &Document, id_key: &[u8]) -> Result<(Vec<Vec<u8>>, bool)> {
    let Some(field) = sphere_field(ix) else {
        return Ok((Vec::new(), false));
    };
    let mut cells = Vec::new();
    for v in doc::lookup_all(doc, field) {
        for g in geo::index_geometries(v.as_ref())? {
            cells.extend(geo::covering_cells(&g));
        }
    }
    cells.sort_unstable();
    cells.dedup();
    let keys = cells
        .into_iter()
        .map(|c| {
            let mut k = key_of(ix.id, c);
            k.extend_from_slice(id_key);
            k
        })
        .collect();
    Ok((keys, true))
}

/// The key ranges that find every document whose cells touch a cap.
pub fn cap_ranges(index_id: u64, cap: &Cap) -> Vec<KeyRange> {
    let mut out = Vec::new();
    let mut exact = HashSet::new();
    for c in geo::cover(cap, 16) {
        let (lo, hi, ancestors) = geo::cell_range(c);
        let upper = prefix_range(&key_of(index_id, hi)).1;
        out.push((
            Bound::Included(key_of(index_id, lo)),
            upper.map_or(Bound::Unbounded, Bound::Excluded),
        ));
        exact.extend(ancestors);
    }
    for a in exact {
        let (lo, hi) = prefix_range(&key_of(index_id, a));
        out.push((
            Bound::Included(lo),
            hi.map_or(Bound::Unbounded, Bound::Excluded),
        ));
    }
    out
}

/// A candidate found by the near search: its distance and document.
struct Found {
    dist: f64,
    seq: u64,
    doc: Document,
}

impl PartialEq for Found {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Found {}
impl PartialOrd for Found {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Found {
    /// Reversed, so the heap pops the nearest (then the first found).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .dist
            .total_cmp(&self.dist)
            .then(other.seq.cmp(&self.seq))
    }
}

/// Documents nearest first, by a search over caps of doubling radius.
pub struct NearScan {
    snap: Arc<Snapshot>,
    coll_id: u64,
    index_id: u64,
    field: String,
    /// A 2d index's grid: the search is over boxes of it, in its units (or, for a
    /// spherical query, degrees around the point).
    flat: Option<Flat>,
    near: Near,
    /// The radius (radians) searched so far; documents within it are all found.
    searched: f64,
    seen: HashSet<Vec<u8>>,
    heap: BinaryHeap<Found>,
    seq: u64,
    done: bool,
}

/// The first search radius: 1 km.
const FIRST_RADIUS: f64 = 1000.0 / geo::EARTH_RADIUS_M;

impl NearScan {
    pub fn new(snap: Arc<Snapshot>, coll_id: u64, ix: &IndexMeta, near: Near) -> NearScan {
        NearScan {
            snap,
            coll_id,
            index_id: ix.id,
            field: Flat::of(ix)
                .map_or_else(|| sphere_field(ix).unwrap_or("").to_string(), |f| f.field),
            flat: Flat::of(ix),
            near,
            searched: 0.0,
            seen: HashSet::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            done: false,
        }
    }

    /// The largest radius worth searching (radians; a 2d index's units for a flat query).
    fn limit(&self) -> f64 {
        let whole = match (&self.flat, self.near.spherical) {
            (Some(f), false) => (f.max - f.min) * std::f64::consts::SQRT_2,
            _ => std::f64::consts::PI,
        };
        match self.near.max {
            Some(m) if self.flat.is_some() && !self.near.spherical => m.min(whole),
            Some(m) => self.near.to_radians(m).min(whole),
            None => whole,
        }
    }

    /// A document's distance in the search's radius units.
    fn radius_of(&self, d: f64) -> f64 {
        if self.flat.is_some() && !self.near.spherical {
            d
        } else {
            self.near.to_radians(d)
        }
    }

    /// The ranges to read for a search radius.
    fn ranges(&self, r: f64) -> Vec<KeyRange> {
        let c = self.near.center;
        match &self.flat {
            Some(f) if !self.near.spherical => {
                f.box_ranges(self.index_id, (c.0 - r, c.1 - r), (c.0 + r, c.1 + r))
            }
            Some(f) => {
                // Degrees around the point that hold every point within r radians.
                let dlat = r.to_degrees();
                let dlng = if c.1.abs() + dlat >= 90.0 {
                    180.0
                } else {
                    (dlat / c.1.to_radians().cos()).min(180.0)
                };
                f.box_ranges(
                    self.index_id,
                    (c.0 - dlng, c.1 - dlat),
                    (c.0 + dlng, c.1 + dlat),
                )
            }
            None => {
                let cap = Cap::from_center_angle(&geo::point(c), &Angle::from(Rad(r)));
                cap_ranges(self.index_id, &cap)
            }
        }
    }

    /// Searches the next, wider cap (or box).
    fn widen(&mut self) -> Result<()> {
        let first = match (&self.flat, self.near.spherical) {
            (Some(f), false) => (f.max - f.min) / 1024.0,
            _ => FIRST_RADIUS,
        };
        let r = if self.searched == 0.0 {
            first
        } else {
            self.searched * 2.0
        }
        .min(self.limit());
        for (lo, hi) in self.ranges(r) {
            for e in self.snap.scan_index(lo, hi)? {
                let (_, idk) = e?;
                if !self.seen.insert(idk.clone()) {
                    continue;
                }
                let Some(doc) = self.snap.get_doc(self.coll_id, &idk)? else {
                    continue;
                };
                let d = doc::lookup_all(&doc, &self.field)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| self.near.distance(&v))
                    .fold(f64::INFINITY, f64::min);
                if d.is_finite() && self.near.in_range(d) {
                    self.seq += 1;
                    self.heap.push(Found {
                        dist: d,
                        seq: self.seq,
                        doc,
                    });
                }
            }
        }
        self.searched = r;
        Ok(())
    }
}

impl Iterator for NearScan {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if self.done {
                return None;
            }
            let complete = self.searched >= self.limit();
            if let Some(top) = self.heap.peek() {
                if complete || self.radius_of(top.dist) <= self.searched {
                    let f = self.heap.pop()?;
                    let mut d = f.doc;
                    d.insert(geo::DISTANCE_FIELD, f.dist);
                    return Some(Ok(d));
                }
            } else if complete {
                self.done = true;
                return None;
            }
            if let Err(e) = self.widen() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}
