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

/// The path of a 2dsphere index's field.
pub fn sphere_field(ix: &IndexMeta) -> Option<&str> {
    ix.key
        .iter()
        .find(|(_, v)| matches!(v, Bson::String(s) if s == "2dsphere"))
        .map(|(k, _)| k.as_str())
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
            field: sphere_field(ix).unwrap_or("").to_string(),
            near,
            searched: 0.0,
            seen: HashSet::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            done: false,
        }
    }

    /// The largest radius worth searching (radians).
    fn limit(&self) -> f64 {
        match self.near.max {
            Some(m) => self.near.to_radians(m).min(std::f64::consts::PI),
            None => std::f64::consts::PI,
        }
    }

    /// Searches the next, wider cap.
    fn widen(&mut self) -> Result<()> {
        let r = if self.searched == 0.0 {
            FIRST_RADIUS
        } else {
            self.searched * 2.0
        }
        .min(self.limit());
        let cap = Cap::from_center_angle(&geo::point(self.near.center), &Angle::from(Rad(r)));
        for (lo, hi) in cap_ranges(self.index_id, &cap) {
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
                if complete || self.near.to_radians(top.dist) <= self.searched {
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
