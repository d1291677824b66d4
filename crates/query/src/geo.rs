//! Geospatial values and predicates: GeoJSON geometries and legacy coordinate pairs,
//! `$geoWithin`, `$geoIntersects`, `$near`/`$nearSphere`, with the S2 library (`s2`) for
//! spherical geometry and cell ids.
//!
//! GeoJSON shapes are on the sphere: edges are geodesics, distances are metres over
//! mongod's Earth radius (6,378,100 m). Legacy shapes (`$box`, `$polygon`, `$center`)
//! are flat, in coordinate units; `$centerSphere` and `$nearSphere` with legacy points
//! are spherical, in radians.

use bson::{Bson, Document};
use errors::{MongoError, Result};
use s2::cap::Cap;
use s2::cellid::CellID;
use s2::edge_crossings::{EdgeCrosser, crossing_sign};
use s2::latlng::LatLng;
use s2::point::Point;
use s2::region::RegionCoverer;
use s2::s1::Angle;

/// mongod's Earth radius, in metres (`kRadiusOfEarthInMeters`).
pub const EARTH_RADIUS_M: f64 = 6_378_100.0;

/// The field a `$near` or `$geoNear` match carries its distance in, to `$geoNear`'s
/// `distanceField`; removed before documents leave the server.
pub const DISTANCE_FIELD: &str = "$__eddyGeoDistance";

fn bad(msg: impl Into<String>) -> MongoError {
    MongoError::bad_value(msg)
}

/// A (longitude, latitude) or (x, y) pair.
pub type Coord = (f64, f64);

/// A stored or queried geometry.
#[derive(Debug, Clone)]
pub enum Geometry {
    Point(Coord),
    LineString(Vec<Coord>),
    /// Rings: the shell, then holes; each closed (first = last).
    Polygon(Vec<Vec<Coord>>),
    Multi(Vec<Geometry>),
}

fn num(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            doc::compare::as_f64(v)
        }
        _ => None,
    }
}

/// A legacy point: `[x, y]` or `{a: x, b: y}` (the first two values).
pub fn legacy_point(v: &Bson) -> Option<Coord> {
    let mut it: Box<dyn Iterator<Item = &Bson>> = match v {
        Bson::Array(a) => Box::new(a.iter()),
        Bson::Document(d) => Box::new(d.values()),
        _ => return None,
    };
    let x = num(it.next()?)?;
    let y = num(it.next()?)?;
    Some((x, y))
}

fn position(v: &Bson) -> Result<Coord> {
    let Bson::Array(a) = v else {
        return Err(bad(format!(
            "Point must be an array or object, instead got type {v}"
        )));
    };
    if a.len() < 2 {
        return Err(bad("Point must only contain numeric elements"));
    }
    let (Some(lng), Some(lat)) = (num(&a[0]), num(&a[1])) else {
        return Err(bad("Point must only contain numeric elements"));
    };
    if !(-180.0..=180.0).contains(&lng) || !(-90.0..=90.0).contains(&lat) {
        return Err(bad(format!(
            "longitude/latitude is out of bounds, lng: {lng} lat: {lat}"
        )));
    }
    Ok((lng, lat))
}

fn positions(v: &Bson) -> Result<Vec<Coord>> {
    match v {
        Bson::Array(a) => a.iter().map(position).collect(),
        _ => Err(bad("coordinates must be an array")),
    }
}

fn ring(v: &Bson) -> Result<Vec<Coord>> {
    let r = positions(v)?;
    if r.len() < 4 {
        return Err(bad(
            "Loop must have at least 3 different vertices and be closed",
        ));
    }
    if r.first() != r.last() {
        return Err(bad(
            "Loop is not closed, first vertex does not equal last vertex",
        ));
    }
    Ok(r)
}

fn polygon(v: &Bson) -> Result<Geometry> {
    let Bson::Array(rings) = v else {
        return Err(bad("Polygon coordinates must be an array"));
    };
    if rings.is_empty() {
        return Err(bad("Polygon has no loops."));
    }
    let rings: Vec<Vec<Coord>> = rings.iter().map(ring).collect::<Result<_>>()?;
    let g = Geometry::Polygon(rings);
    if let Geometry::Polygon(r) = &g {
        if cap_of(&r[0]).radius().rad() >= std::f64::consts::FRAC_PI_2 {
            return Err(bad(
                "Polygons larger than a hemisphere need a custom CRS, which Eddy does not support",
            ));
        }
    }
    Ok(g)
}

/// Parses a GeoJSON object.
///
/// # Errors
/// BadValue for malformed GeoJSON or coordinates out of bounds.
pub fn geojson(d: &Document) -> Result<Geometry> {
    let kind = d
        .get_str("type")
        .map_err(|_| bad("unknown GeoJSON type: missing 'type'"))?;
    if kind == "GeometryCollection" {
        let Ok(gs) = d.get_array("geometries") else {
            return Err(bad("GeometryCollection must have a 'geometries' array"));
        };
        return gs
            .iter()
            .map(|g| match g {
                Bson::Document(g) => geojson(g),
                _ => Err(bad("GeometryCollection geometries must be objects")),
            })
            .collect::<Result<_>>()
            .map(Geometry::Multi);
    }
    if let Some(crs) = d.get("crs") {
        let _ = crs;
        return Err(bad("custom CRS (big polygons) are not supported by Eddy"));
    }
    let c = d
        .get("coordinates")
        .ok_or_else(|| bad(format!("{kind} must have a 'coordinates' field")))?;
    let list = |v: &Bson| -> Result<Vec<Bson>> {
        match v {
            Bson::Array(a) => Ok(a.clone()),
            _ => Err(bad("coordinates must be an array")),
        }
    };
    Ok(match kind {
        "Point" => Geometry::Point(position(c)?),
        "LineString" => {
            let p = positions(c)?;
            if p.len() < 2 {
                return Err(bad("GeoJSON LineString must have at least 2 vertices"));
            }
            Geometry::LineString(p)
        }
        "Polygon" => polygon(c)?,
        "MultiPoint" => Geometry::Multi(positions(c)?.into_iter().map(Geometry::Point).collect()),
        "MultiLineString" => Geometry::Multi(
            list(c)?
                .iter()
                .map(|l| positions(l).map(Geometry::LineString))
                .collect::<Result<_>>()?,
        ),
        "MultiPolygon" => Geometry::Multi(list(c)?.iter().map(polygon).collect::<Result<_>>()?),
        other => return Err(bad(format!("unknown GeoJSON type: {other}"))),
    })
}

/// The geometries a stored value holds: GeoJSON, a legacy point, or an array of either.
/// `None` for a value that is not a location.
pub fn stored(v: &Bson) -> Option<(Vec<Geometry>, bool)> {
    match v {
        Bson::Document(d) if d.contains_key("type") => geojson(d).ok().map(|g| (vec![g], false)),
        Bson::Array(a)
            if a.first()
                .is_some_and(|e| matches!(e, Bson::Array(_) | Bson::Document(_))) =>
        {
            let mut out = Vec::new();
            let mut legacy = false;
            for e in a {
                if let Some((gs, l)) = stored(e) {
                    out.extend(gs);
                    legacy |= l;
                }
            }
            (!out.is_empty()).then_some((out, legacy))
        }
        v => legacy_point(v).map(|p| (vec![Geometry::Point(p)], true)),
    }
}

/// The S2 point of a (longitude, latitude) pair.
pub fn point(c: Coord) -> Point {
    Point::from(LatLng::from_degrees(c.1, c.0))
}

/// The leaf cell id of a point, for index keys.
pub fn cell_of(c: Coord) -> u64 {
    CellID::from(LatLng::from_degrees(c.1, c.0)).0
}

fn vertices(g: &Geometry, out: &mut Vec<Coord>) {
    match g {
        Geometry::Point(p) => out.push(*p),
        Geometry::LineString(l) => out.extend(l),
        Geometry::Polygon(r) => out.extend(&r[0]),
        Geometry::Multi(gs) => gs.iter().for_each(|g| vertices(g, out)),
    }
}

/// A cap around a set of vertices: centred on their mean, reaching the farthest.
fn cap_of(vs: &[Coord]) -> Cap {
    let pts: Vec<Point> = vs.iter().map(|c| point(*c)).collect();
    let (mut x, mut y, mut z) = (0.0, 0.0, 0.0);
    for p in &pts {
        x += p.0.x;
        y += p.0.y;
        z += p.0.z;
    }
    let center = if x == 0.0 && y == 0.0 && z == 0.0 {
        pts[0]
    } else {
        Point::from_coords(x, y, z).normalize()
    };
    let r = pts
        .iter()
        .map(|p| center.distance(p).rad())
        .fold(0.0f64, f64::max);
    Cap::from_center_angle(&center, &Angle::from(s2::s1::Rad(r * (1.0 + 1e-9) + 1e-12)))
}

/// The index cells covering a geometry: a point's leaf cell, or a covering of the cap
/// around a line's or polygon's vertices.
pub fn covering_cells(g: &Geometry) -> Vec<u64> {
    match g {
        Geometry::Point(p) => vec![cell_of(*p)],
        Geometry::Multi(gs) => gs.iter().flat_map(covering_cells).collect(),
        other => {
            let mut vs = Vec::new();
            vertices(other, &mut vs);
            cover(&cap_of(&vs), 8)
        }
    }
}

/// Cells covering a cap.
pub fn cover(cap: &Cap, max_cells: usize) -> Vec<u64> {
    let coverer = RegionCoverer {
        min_level: 0,
        max_level: 30,
        level_mod: 1,
        max_cells,
    };
    coverer.covering(cap).0.into_iter().map(|c| c.0).collect()
}

/// The leaf-id range `[min, max]` of a cell, and its ancestors' ids.
pub fn cell_range(id: u64) -> (u64, u64, Vec<u64>) {
    let c = CellID(id);
    let ancestors = (0..c.level()).map(|l| c.parent(l).0).collect();
    (c.range_min().0, c.range_max().0, ancestors)
}

/// Whether point `p` lies inside a loop (smaller than a hemisphere), by the parity of the
/// loop's crossings of the geodesic from `p` to a point outside (the antipode of the
/// loop's centre), S2's vertex rules deciding touching cases.
fn loop_contains(ring: &[Coord], p: &Point) -> bool {
    let cap = cap_of(ring);
    let outside = Point::from_coords(-cap.center().0.x, -cap.center().0.y, -cap.center().0.z);
    let pts: Vec<Point> = ring.iter().map(|c| point(*c)).collect();
    if pts.iter().any(|v| v.approx_eq(p)) {
        return true;
    }
    let mut crosser = EdgeCrosser::new(&outside, p);
    let mut inside = false;
    crosser.restart_at(&pts[0]);
    for v in &pts[1..] {
        inside ^= crosser.chain_edge_or_vertex_crossing(v);
    }
    inside
}

fn polygon_contains(rings: &[Vec<Coord>], p: &Point) -> bool {
    loop_contains(&rings[0], p) && !rings[1..].iter().any(|h| loop_contains(h, p))
}

fn edges(g: &Geometry) -> Vec<(Point, Point)> {
    let pairs = |l: &[Coord]| -> Vec<(Point, Point)> {
        l.windows(2).map(|w| (point(w[0]), point(w[1]))).collect()
    };
    match g {
        Geometry::Point(_) => Vec::new(),
        Geometry::LineString(l) => pairs(l),
        Geometry::Polygon(r) => r.iter().flat_map(|l| pairs(l)).collect(),
        Geometry::Multi(gs) => gs.iter().flat_map(edges).collect(),
    }
}

fn edges_cross(a: &Geometry, b: &Geometry) -> bool {
    let eb = edges(b);
    edges(a).iter().any(|(a0, a1)| {
        eb.iter().any(|(b0, b1)| {
            crossing_sign(a0, a1, b0, b1) != s2::edge_crossings::Crossing::DoNotCross
        })
    })
}

/// Spherical distance (radians) from a point to a geometry (0 inside a polygon).
pub fn distance_to(p: &Point, g: &Geometry) -> f64 {
    match g {
        Geometry::Point(c) => p.distance(&point(*c)).rad(),
        Geometry::LineString(l) => l
            .windows(2)
            .map(|w| s2::edgeutil::distance_from_segment(p, &point(w[0]), &point(w[1])).rad())
            .fold(f64::INFINITY, f64::min),
        Geometry::Polygon(r) => {
            if polygon_contains(r, p) {
                0.0
            } else {
                r.iter()
                    .map(|l| distance_to(p, &Geometry::LineString(l.clone())))
                    .fold(f64::INFINITY, f64::min)
            }
        }
        Geometry::Multi(gs) => gs
            .iter()
            .map(|g| distance_to(p, g))
            .fold(f64::INFINITY, f64::min),
    }
}

/// Whether two geometries share a point (`$geoIntersects`), on the sphere.
pub fn intersects(a: &Geometry, b: &Geometry) -> bool {
    match (a, b) {
        (Geometry::Multi(gs), other) | (other, Geometry::Multi(gs)) => {
            gs.iter().any(|g| intersects(g, other))
        }
        (Geometry::Point(p), other) | (other, Geometry::Point(p)) => {
            distance_to(&point(*p), other) < 1e-12
        }
        (x, y) => edges_cross(x, y) || first_vertex_within(x, y) || first_vertex_within(y, x),
    }
}

fn first_vertex_within(a: &Geometry, b: &Geometry) -> bool {
    let Geometry::Polygon(r) = b else {
        return false;
    };
    let mut vs = Vec::new();
    vertices(a, &mut vs);
    vs.first().is_some_and(|v| polygon_contains(r, &point(*v)))
}

/// Whether geometry `a` lies within polygon(s) `b` (`$geoWithin` `$geometry`).
pub fn within_geometry(a: &Geometry, b: &Geometry) -> bool {
    match b {
        Geometry::Multi(ps) => match a {
            Geometry::Multi(gs) => gs.iter().all(|g| within_geometry(g, b)),
            _ => ps.iter().any(|p| within_geometry(a, p)),
        },
        Geometry::Polygon(r) => match a {
            Geometry::Multi(gs) => gs.iter().all(|g| within_geometry(g, b)),
            other => {
                let mut vs = Vec::new();
                vertices(other, &mut vs);
                vs.iter().all(|v| polygon_contains(r, &point(*v)))
                    && !edges(other).iter().any(|(a0, a1)| {
                        edges(b).iter().any(|(b0, b1)| {
                            crossing_sign(a0, a1, b0, b1) == s2::edge_crossings::Crossing::Cross
                        })
                    })
            }
        },
        _ => false,
    }
}

/// A `$geoWithin` region.
#[derive(Debug, Clone)]
pub enum Region {
    /// `$geometry`: a Polygon or MultiPolygon, spherical.
    Geometry(Geometry),
    /// `$centerSphere`: centre and radius in radians.
    CenterSphere(Coord, f64),
    /// `$box`: flat corners.
    Box(Coord, Coord),
    /// `$polygon`: flat vertices.
    Polygon(Vec<Coord>),
    /// `$center`: flat centre and radius.
    Center(Coord, f64),
}

impl Region {
    /// Parses `$geoWithin`'s (or `$within`'s) argument.
    ///
    /// # Errors
    /// BadValue for a malformed shape.
    pub fn parse(v: &Bson) -> Result<Region> {
        let Bson::Document(d) = v else {
            return Err(bad("$geoWithin not passed an object"));
        };
        if d.len() != 1 {
            return Err(bad("$geoWithin takes exactly one shape"));
        }
        let (k, v) = d
            .iter()
            .next()
            .ok_or_else(|| bad("$geoWithin has no shape"))?;
        let pt = |v: &Bson| legacy_point(v).ok_or_else(|| bad(format!("{k}: bad point {v}")));
        Ok(match (k.as_str(), v) {
            ("$geometry", Bson::Document(g)) => {
                let g = geojson(g)?;
                let polys = match &g {
                    Geometry::Polygon(_) => true,
                    Geometry::Multi(gs) => gs.iter().all(|g| matches!(g, Geometry::Polygon(_))),
                    _ => false,
                };
                if !polys {
                    return Err(bad(
                        "$geoWithin $geometry must be a Polygon or MultiPolygon",
                    ));
                }
                Region::Geometry(g)
            }
            ("$centerSphere", Bson::Array(a)) if a.len() == 2 => {
                let c = pt(&a[0])?;
                let r = num(&a[1])
                    .filter(|r| *r >= 0.0)
                    .ok_or_else(|| bad("radius must be a non-negative number"))?;
                if !(-180.0..=180.0).contains(&c.0) || !(-90.0..=90.0).contains(&c.1) {
                    return Err(bad(
                        "Spherical MaxDistance > PI. Are you sure you are using radians?",
                    ));
                }
                Region::CenterSphere(c, r)
            }
            ("$box", Bson::Array(a)) if a.len() == 2 => {
                let (p, q) = (pt(&a[0])?, pt(&a[1])?);
                Region::Box((p.0.min(q.0), p.1.min(q.1)), (p.0.max(q.0), p.1.max(q.1)))
            }
            ("$polygon", Bson::Array(a)) => {
                if a.len() < 3 {
                    return Err(bad("Polygon must have at least 3 points"));
                }
                Region::Polygon(a.iter().map(pt).collect::<Result<_>>()?)
            }
            ("$center", Bson::Array(a)) if a.len() == 2 => {
                let r = num(&a[1])
                    .filter(|r| *r >= 0.0)
                    .ok_or_else(|| bad("radius must be a non-negative number"))?;
                Region::Center(pt(&a[0])?, r)
            }
            _ => return Err(bad(format!("unknown geo specifier: {k}: {v}"))),
        })
    }

    /// Whether a stored geometry lies within the region.
    pub fn contains(&self, g: &Geometry, legacy: bool) -> bool {
        match self {
            Region::Geometry(b) => within_geometry(g, b),
            Region::CenterSphere(c, r) => {
                let mut vs = Vec::new();
                vertices(g, &mut vs);
                let c = point(*c);
                vs.iter().all(|v| c.distance(&point(*v)).rad() <= *r)
            }
            flat => {
                // Flat shapes hold legacy points only, as in mongod.
                let Geometry::Point(p) = g else {
                    return false;
                };
                let _ = legacy;
                match flat {
                    Region::Box(lo, hi) => p.0 >= lo.0 && p.0 <= hi.0 && p.1 >= lo.1 && p.1 <= hi.1,
                    Region::Center(c, r) => {
                        ((p.0 - c.0).powi(2) + (p.1 - c.1).powi(2)).sqrt() <= *r
                    }
                    Region::Polygon(vs) => flat_polygon_contains(vs, *p),
                    _ => false,
                }
            }
        }
    }

    /// The region's bounding box in coordinates (degrees for `$centerSphere`), for a 2d
    /// index's scan.
    pub fn flat_bounds(&self) -> Option<(Coord, Coord)> {
        match self {
            Region::Box(lo, hi) => Some((*lo, *hi)),
            Region::Center(c, r) => Some(((c.0 - r, c.1 - r), (c.0 + r, c.1 + r))),
            Region::Polygon(vs) => {
                let xs = vs.iter().map(|v| v.0);
                let ys = vs.iter().map(|v| v.1);
                Some((
                    (
                        xs.clone().fold(f64::INFINITY, f64::min),
                        ys.clone().fold(f64::INFINITY, f64::min),
                    ),
                    (
                        xs.fold(f64::NEG_INFINITY, f64::max),
                        ys.fold(f64::NEG_INFINITY, f64::max),
                    ),
                ))
            }
            Region::CenterSphere(c, r) => {
                let dlat = r.to_degrees();
                let dlng = if c.1.abs() + dlat >= 90.0 {
                    180.0
                } else {
                    (dlat / c.1.to_radians().cos()).min(180.0)
                };
                Some(((c.0 - dlng, c.1 - dlat), (c.0 + dlng, c.1 + dlat)))
            }
            Region::Geometry(_) => None,
        }
    }

    /// A cap that bounds the region on the sphere, for index scans: `None` for flat
    /// shapes (an index cannot serve them; documents are checked one by one).
    pub fn cap(&self) -> Option<Cap> {
        match self {
            Region::Geometry(g) => {
                let mut vs = Vec::new();
                vertices(g, &mut vs);
                Some(cap_of(&vs))
            }
            Region::CenterSphere(c, r) => Some(Cap::from_center_angle(
                &point(*c),
                &Angle::from(s2::s1::Rad(*r)),
            )),
            _ => None,
        }
    }
}

/// Flat point-in-polygon (even-odd), boundary included.
fn flat_polygon_contains(vs: &[Coord], p: Coord) -> bool {
    let n = vs.len();
    let mut inside = false;
    for i in 0..n {
        let (a, b) = (vs[i], vs[(i + 1) % n]);
        // On an edge.
        let cross = (b.0 - a.0) * (p.1 - a.1) - (b.1 - a.1) * (p.0 - a.0);
        if cross.abs() < 1e-12
            && p.0 >= a.0.min(b.0)
            && p.0 <= a.0.max(b.0)
            && p.1 >= a.1.min(b.1)
            && p.1 <= a.1.max(b.1)
        {
            return true;
        }
        if (a.1 > p.1) != (b.1 > p.1) && p.0 < (b.0 - a.0) * (p.1 - a.1) / (b.1 - a.1) + a.0 {
            inside = !inside;
        }
    }
    inside
}

/// A `$near`/`$nearSphere` (or `$geoNear`) query.
#[derive(Debug, Clone)]
pub struct Near {
    pub center: Coord,
    /// Distances on the sphere (GeoJSON point, `$nearSphere`, `spherical: true`).
    pub spherical: bool,
    /// The point was GeoJSON: distances are metres (else radians, or flat units).
    pub metres: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Near {
    /// Parses `{$near|$nearSphere: point, $maxDistance, $minDistance}` from an operator
    /// document.
    ///
    /// # Errors
    /// BadValue for a malformed query.
    pub fn parse(op: &str, d: &Document) -> Result<Near> {
        let v = d
            .get(op)
            .ok_or_else(|| bad(format!("{op} needs a point")))?;
        let sphere = op == "$nearSphere";
        let mut min = d
            .get("$minDistance")
            .map(|v| distance_arg("$minDistance", v))
            .transpose()?;
        let mut max = d
            .get("$maxDistance")
            .map(|v| distance_arg("$maxDistance", v))
            .transpose()?;
        let near = match v {
            Bson::Document(g) if g.contains_key("$geometry") => {
                let Ok(gd) = g.get_document("$geometry") else {
                    return Err(bad("$geometry must be a GeoJSON Point"));
                };
                let Geometry::Point(c) = geojson(gd)? else {
                    return Err(bad("$near requires a GeoJSON Point"));
                };
                for (k, v) in g {
                    match k.as_str() {
                        "$geometry" => {}
                        "$maxDistance" => max = Some(distance_arg(k, v)?),
                        "$minDistance" => min = Some(distance_arg(k, v)?),
                        _ => return Err(bad(format!("invalid argument in geo near query: {k}"))),
                    }
                }
                Near {
                    center: c,
                    spherical: true,
                    metres: true,
                    min,
                    max,
                }
            }
            v => {
                let c = legacy_point(v).ok_or_else(|| bad(format!("{op} must be a point")))?;
                if d.contains_key("$minDistance") && !sphere {
                    return Err(bad(
                        "$minDistance does not work with a legacy $near point; use $nearSphere or GeoJSON",
                    ));
                }
                Near {
                    center: c,
                    spherical: sphere,
                    metres: false,
                    min,
                    max,
                }
            }
        };
        Ok(near)
    }

    /// The document's distance from the centre (metres, radians or flat units), if the
    /// value is a location.
    pub fn distance(&self, v: &Bson) -> Option<f64> {
        let (gs, _) = stored(v)?;
        let d = if self.spherical {
            let c = point(self.center);
            let r = gs
                .iter()
                .map(|g| distance_to(&c, g))
                .fold(f64::INFINITY, f64::min);
            if self.metres { r * EARTH_RADIUS_M } else { r }
        } else {
            gs.iter()
                .filter_map(|g| match g {
                    Geometry::Point(p) => {
                        Some(((p.0 - self.center.0).powi(2) + (p.1 - self.center.1).powi(2)).sqrt())
                    }
                    _ => None,
                })
                .fold(f64::INFINITY, f64::min)
        };
        d.is_finite().then_some(d)
    }

    /// Whether a distance is within `$minDistance`/`$maxDistance`.
    pub fn in_range(&self, d: f64) -> bool {
        self.min.is_none_or(|m| d >= m) && self.max.is_none_or(|m| d <= m)
    }

    /// A distance as an angle on the sphere (radians).
    pub fn to_radians(&self, d: f64) -> f64 {
        if self.metres { d / EARTH_RADIUS_M } else { d }
    }
}

fn distance_arg(k: &str, v: &Bson) -> Result<f64> {
    match num(v) {
        Some(d) if d >= 0.0 => Ok(d),
        Some(_) => Err(bad(format!("{k} must be non-negative"))),
        None => Err(bad(format!("{k} must be a number"))),
    }
}

/// Checks a document's value for a 2dsphere index: GeoJSON or legacy points; an error
/// (mongod's 16755) for a value that is neither.
///
/// # Errors
/// Can't extract geo keys.
pub fn index_geometries(v: Option<&Bson>) -> Result<Vec<Geometry>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    if matches!(v, Bson::Null | Bson::Undefined) {
        return Ok(Vec::new());
    }
    if let Bson::Document(d) = v {
        if d.contains_key("type") {
            return geojson(d).map(|g| vec![g]).map_err(|e| {
                MongoError::with_code(16755, format!("Can't extract geo keys: {}", e.message))
            });
        }
    }
    match stored(v) {
        Some((gs, _)) => {
            for g in &gs {
                if let Geometry::Point((x, y)) = g {
                    if !(-180.0..=180.0).contains(x) || !(-90.0..=90.0).contains(y) {
                        return Err(MongoError::with_code(
                            16755,
                            format!(
                                "Can't extract geo keys: longitude/latitude is out of bounds, lng: {x} lat: {y}"
                            ),
                        ));
                    }
                }
            }
            Ok(gs)
        }
        None => Err(MongoError::with_code(
            16755,
            format!("Can't extract geo keys: {v} is not a GeoJSON object or legacy point"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sq(x0: f64, y0: f64, x1: f64, y1: f64) -> Geometry {
        Geometry::Polygon(vec![vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]])
    }

    #[test]
    fn spherical_containment_and_intersection() {
        let p = sq(0.0, 0.0, 10.0, 10.0);
        assert!(within_geometry(&Geometry::Point((5.0, 5.0)), &p));
        assert!(!within_geometry(&Geometry::Point((11.0, 5.0)), &p));
        assert!(within_geometry(&Geometry::Point((0.0, 0.0)), &p));
        let line = Geometry::LineString(vec![(-5.0, 5.0), (5.0, 5.0)]);
        assert!(intersects(&line, &p));
        assert!(!within_geometry(&line, &p));
        let far = Geometry::LineString(vec![(20.0, 20.0), (30.0, 30.0)]);
        assert!(!intersects(&far, &p));
        // Holes.
        let holed = Geometry::Polygon(vec![
            vec![
                (0.0, 0.0),
                (10.0, 0.0),
                (10.0, 10.0),
                (0.0, 10.0),
                (0.0, 0.0),
            ],
            vec![(4.0, 4.0), (6.0, 4.0), (6.0, 6.0), (4.0, 6.0), (4.0, 4.0)],
        ]);
        assert!(!within_geometry(&Geometry::Point((5.0, 5.0)), &holed));
        assert!(within_geometry(&Geometry::Point((2.0, 2.0)), &holed));
    }

    #[test]
    fn distances_are_in_metres_over_mongods_radius() {
        // One degree of longitude at the equator.
        let n = Near {
            center: (0.0, 0.0),
            spherical: true,
            metres: true,
            min: None,
            max: None,
        };
        let d = n
            .distance(&Bson::Array(vec![Bson::Double(1.0), Bson::Double(0.0)]))
            .unwrap();
        assert!(
            (d - EARTH_RADIUS_M * std::f64::consts::PI / 180.0).abs() < 1e-6,
            "{d}"
        );
    }
}
