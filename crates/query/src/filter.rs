//! Query filters (MongoDB match expressions): parsing `find` filters and matching documents.
//!
//! A filter is parsed once into a tree of [`Filter`] nodes. Path predicates follow MongoDB's
//! matcher: a dotted path expands through arrays, a predicate matches if any reached value
//! (or, for most operators, any element of a reached array) matches, comparisons only match
//! values of the same canonical type, and a missing value matches `null`.

#![allow(clippy::collapsible_if, clippy::collapsible_match)]

mod regex;
pub(crate) mod schema;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use bson::{Bson, Document};
use doc::Collation;
use doc::compare::{Number, as_number, cmp_values_with, type_rank, values_equal_with};
use errors::{ErrorCode, MongoError, Result};

pub use self::regex::Rx;
use self::schema::Schema;
use crate::expr::{Expr, Vars, truthy};

/// A parsed query filter, with the collation its string comparisons use (`$regex` and
/// `$jsonSchema` ignore it, as in MongoDB).
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
    collation: Option<Arc<Collation>>,
    /// Variables bound with [`Filter::bind`] (a command's `let`), for `$expr`; they carry
    /// the filter's collation.
    vars: Option<Box<Vars>>,
}

/// A simple predicate on one path, for index planning.
#[derive(Debug, Clone)]
pub enum Predicate {
    /// Equality with a scalar or document (never an array or regex).
    Eq(Bson),
    /// Equality with any of the values (no arrays or regexes).
    In(Vec<Bson>),
    /// A range; bounds are of one canonical type (type bracketing applies).
    Range {
        lower: Option<(Bson, bool)>,
        upper: Option<(Bson, bool)>,
    },
}

#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Path(Path, Pred),
    Expr(Box<Expr>),
    Schema(Box<Schema>),
    Const(bool),
    /// `$text`: matches through the collection's text index (bound by the planner).
    Text(Box<crate::text::TextQuery>),
}

#[derive(Debug, Clone)]
struct Path {
    dotted: String,
    parts: Vec<String>,
}

impl Path {
    fn new(dotted: &str) -> Path {
        Path {
            dotted: dotted.to_string(),
            parts: dotted.split('.').map(str::to_string).collect(),
        }
    }
}

/// A geospatial predicate.
#[derive(Debug, Clone)]
pub enum GeoQuery {
    Within(crate::geo::Region),
    Intersects(crate::geo::Geometry),
    Near(crate::geo::Near),
}

impl GeoQuery {
    /// Whether a stored value (a location, or an array of them) satisfies the predicate.
    fn matches(&self, v: &Bson) -> bool {
        match self {
            GeoQuery::Near(n) => n.distance(v).is_some_and(|d| n.in_range(d)),
            GeoQuery::Within(r) => crate::geo::stored(v)
                .is_some_and(|(gs, legacy)| gs.iter().any(|g| r.contains(g, legacy))),
            GeoQuery::Intersects(q) => crate::geo::stored(v)
                .is_some_and(|(gs, _)| gs.iter().any(|g| crate::geo::intersects(g, q))),
        }
    }
}

/// A predicate over the values a path reaches.
#[derive(Debug, Clone)]
enum Pred {
    Op(Op),
    Not(Box<Pred>),
    And(Vec<Pred>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BitsOp {
    AllSet,
    AnySet,
    AllClear,
    AnyClear,
}

/// A type selector for `$type`: a BSON type code or `"number"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeSel {
    Code(i32),
    Number,
}

impl TypeSel {
    pub(crate) fn matches(self, v: &Bson) -> bool {
        match self {
            TypeSel::Number => as_number(v).is_some(),
            TypeSel::Code(c) => bson_type_code(v) == c,
        }
    }
}

/// The BSON type code of a value (MinKey is -1).
pub(crate) fn bson_type_code(v: &Bson) -> i32 {
    match v {
        Bson::MinKey => -1,
        other => other.element_type() as u8 as i32,
    }
}

const TYPE_ALIASES: &[(&str, i32)] = &[
    ("double", 1),
    ("string", 2),
    ("object", 3),
    ("array", 4),
    ("binData", 5),
    ("undefined", 6),
    ("objectId", 7),
    ("bool", 8),
    ("date", 9),
    ("null", 10),
    ("regex", 11),
    ("dbPointer", 12),
    ("javascript", 13),
    ("symbol", 14),
    ("javascriptWithScope", 15),
    ("int", 16),
    ("timestamp", 17),
    ("long", 18),
    ("decimal", 19),
    ("minKey", -1),
    ("maxKey", 127),
];

/// The MongoDB alias of a BSON type code (`"double"`, `"string"`, ...).
pub(crate) fn type_alias(code: i32) -> &'static str {
    TYPE_ALIASES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("unknown", |(n, _)| n)
}

/// Parses a `$type` operand element (alias string or numeric code).
pub(crate) fn parse_type_sel(v: &Bson) -> Result<TypeSel> {
    match v {
        Bson::String(s) if s == "number" => Ok(TypeSel::Number),
        Bson::String(s) => TYPE_ALIASES
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, c)| TypeSel::Code(*c))
            .ok_or_else(|| MongoError::bad_value(format!("Unknown type name alias: {s}"))),
        _ => {
            let n = as_number(v).ok_or_else(|| {
                MongoError::type_mismatch("type must be represented as a number or a string")
            })?;
            let code = match n {
                Number::Int(i) => i,
                Number::Float(f) if f.fract() == 0.0 && f.abs() < 1e9 => f as i64,
                Number::Float(f) => {
                    return Err(MongoError::bad_value(format!(
                        "Invalid numerical type code: {f}"
                    )));
                }
            };
            if TYPE_ALIASES.iter().any(|(_, c)| i64::from(*c) == code) {
                Ok(TypeSel::Code(code as i32))
            } else {
                Err(MongoError::bad_value(format!(
                    "Invalid numerical type code: {code}"
                )))
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Bson),
    Cmp(CmpOp, Bson),
    In(Vec<Bson>, Vec<Rx>),
    Exists,
    Type(Vec<TypeSel>),
    Size(i64),
    Regex(Rx),
    Mod(i64, i64),
    Bits(BitsOp, Vec<u32>),
    ElemMatchObj(Box<Node>),
    /// `$geoWithin`, `$geoIntersects`, `$near`/`$nearSphere` (the distance bounds; the
    /// order is the planner's).
    Geo(Box<GeoQuery>),
    ElemMatchVal(Vec<Pred>),
    Never,
}

impl Op {
    /// Whether a reached array's elements are tested as well as the array itself.
    fn expands(&self) -> bool {
        !matches!(
            self,
            Op::Size(_) | Op::Exists | Op::ElemMatchObj(_) | Op::ElemMatchVal(_) | Op::Geo(_)
        )
    }

    /// Tests one value (no array expansion); `None` is a missing value.
    fn matches_single(&self, v: Option<&Bson>, ctx: &mut Ctx<'_>) -> bool {
        let coll = ctx.coll();
        match self {
            Op::Eq(x) => match v {
                None => matches!(x, Bson::Null),
                Some(v) => eq_match(x, v, coll),
            },
            Op::Cmp(c, x) => cmp_match(*c, x, v, coll),
            Op::In(vals, rxs) => {
                vals.iter().any(|x| match v {
                    None => matches!(x, Bson::Null),
                    Some(v) => eq_match(x, v, coll),
                }) || v.is_some_and(|v| rxs.iter().any(|r| r.matches_value(v)))
            }
            Op::Exists => v.is_some(),
            Op::Type(ts) => v.is_some_and(|v| ts.iter().any(|t| t.matches(v))),
            Op::Size(n) => matches!(v, Some(Bson::Array(a)) if a.len() as i64 == *n),
            Op::Regex(r) => v.is_some_and(|v| r.matches_value(v)),
            Op::Mod(d, r) => v
                .and_then(int_of_value)
                .is_some_and(|x| x.checked_rem(*d).unwrap_or(0) == *r),
            Op::Bits(op, positions) => v.is_some_and(|v| bits_match(*op, positions, v)),
            Op::ElemMatchObj(_) | Op::ElemMatchVal(_) => match v {
                Some(Bson::Array(a)) => self.elem_match_index(a, ctx).is_some(),
                _ => false,
            },
            Op::Never => false,
            Op::Geo(q) => v.is_some_and(|v| q.matches(v)),
        }
    }
}

impl Op {
    /// For `$elemMatch`: the index of the first matching element.
    fn elem_match_index(&self, a: &[Bson], ctx: &mut Ctx<'_>) -> Option<usize> {
        match self {
            Op::ElemMatchObj(node) => a.iter().position(|e| match e {
                Bson::Document(d) => node.matches(d, &mut None, ctx),
                Bson::Array(inner) => node.matches(&array_as_doc(inner), &mut None, ctx),
                _ => false,
            }),
            Op::ElemMatchVal(preds) => a
                .iter()
                .position(|e| preds.iter().all(|p| p.matches_single(Some(e), ctx))),
            _ => None,
        }
    }
}

fn array_as_doc(a: &[Bson]) -> Document {
    a.iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), v.clone()))
        .collect()
}

fn eq_match(x: &Bson, v: &Bson, coll: Option<&Collation>) -> bool {
    match (x, v) {
        (Bson::Null, Bson::Undefined) => false,
        _ => type_rank(x) == type_rank(v) && values_equal_with(x, v, coll),
    }
}

fn is_nan(v: &Bson) -> bool {
    match v {
        Bson::Double(d) => d.is_nan(),
        Bson::Decimal128(_) => doc::compare::as_f64(v).is_some_and(f64::is_nan),
        _ => false,
    }
}

fn cmp_match(c: CmpOp, x: &Bson, v: Option<&Bson>, coll: Option<&Collation>) -> bool {
    let v = v.unwrap_or(&Bson::Null);
    let ord = if matches!(x, Bson::MinKey | Bson::MaxKey) {
        cmp_values_with(v, x, coll)
    } else {
        if type_rank(v) != type_rank(x) {
            return false;
        }
        if is_nan(v) || is_nan(x) {
            let both = is_nan(v) && is_nan(x);
            return matches!(c, CmpOp::Lte | CmpOp::Gte) && both;
        }
        cmp_values_with(v, x, coll)
    };
    match c {
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Lte => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Gte => ord != Ordering::Less,
    }
}

/// A number as an int64 for `$mod` (doubles truncate; NaN and infinities don't match).
fn int_of_value(v: &Bson) -> Option<i64> {
    match as_number(v)? {
        Number::Int(i) => Some(i),
        Number::Float(f) if f.is_finite() => Some(f.trunc() as i64),
        Number::Float(_) => None,
    }
}

fn bits_match(op: BitsOp, positions: &[u32], v: &Bson) -> bool {
    let bit: Box<dyn Fn(u32) -> bool> = match v {
        Bson::Binary(b) => {
            let bytes = b.bytes.clone();
            Box::new(move |p| {
                bytes
                    .get((p / 8) as usize)
                    .is_some_and(|byte| (byte >> (p % 8)) & 1 == 1)
            })
        }
        _ => {
            let x = match as_number(v) {
                Some(Number::Int(i)) => i,
                Some(Number::Float(f))
                    if f.fract() == 0.0
                        && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
                {
                    f as i64
                }
                _ => return false,
            };
            Box::new(move |p| if p < 64 { (x >> p) & 1 == 1 } else { x < 0 })
        }
    };
    match op {
        BitsOp::AllSet => positions.iter().all(|p| bit(*p)),
        BitsOp::AnySet => positions.iter().any(|p| bit(*p)),
        BitsOp::AllClear => positions.iter().all(|p| !bit(*p)),
        BitsOp::AnyClear => positions.iter().any(|p| !bit(*p)),
    }
}

/// Evaluation state: the error from a failing `$expr`, if any, the variables for `$expr`
/// and the filter's collation.
#[derive(Default)]
struct Ctx<'a> {
    error: Option<MongoError>,
    vars: Option<Cow<'a, Vars>>,
    coll: Option<&'a Arc<Collation>>,
}

impl Ctx<'_> {
    fn coll(&self) -> Option<&Collation> {
        self.coll.map(|c| &**c)
    }
}

/// Visits every value a path reaches from a document (MongoDB's matcher traversal). `f` gets
/// the value (`None` when missing) and the index in the first array traversed; returns true
/// as soon as `f` does.
fn visit_doc(
    d: &Document,
    parts: &[String],
    idx: Option<usize>,
    f: &mut dyn FnMut(Option<&Bson>, Option<usize>) -> bool,
) -> bool {
    match d.get(&parts[0]) {
        Some(next) => visit(next, &parts[1..], idx, f),
        None => f(None, idx),
    }
}

fn visit(
    v: &Bson,
    parts: &[String],
    idx: Option<usize>,
    f: &mut dyn FnMut(Option<&Bson>, Option<usize>) -> bool,
) -> bool {
    if parts.is_empty() {
        return f(Some(v), idx);
    }
    match v {
        Bson::Document(d) => visit_doc(d, parts, idx, f),
        Bson::Array(arr) => {
            let p = &parts[0];
            if is_array_index(p) {
                if let Some(e) = p.parse::<usize>().ok().and_then(|i| arr.get(i)) {
                    if visit(e, &parts[1..], idx, f) {
                        return true;
                    }
                }
            }
            for (i, e) in arr.iter().enumerate() {
                if let Bson::Document(d) = e {
                    if visit_doc(d, parts, idx.or(Some(i)), f) {
                        return true;
                    }
                }
            }
            arr.is_empty() && f(None, idx)
        }
        _ => f(None, idx),
    }
}

fn is_array_index(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
}

impl Pred {
    fn matches_path(
        &self,
        d: &Document,
        parts: &[String],
        pos: &mut Option<usize>,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        match self {
            Pred::Op(op) => {
                let mut found = None;
                let hit = visit_doc(d, parts, None, &mut |v, idx| {
                    if op.expands() {
                        if let Some(Bson::Array(a)) = v {
                            for (i, e) in a.iter().enumerate() {
                                if op.matches_single(Some(e), ctx) {
                                    found = idx.or(Some(i));
                                    return true;
                                }
                            }
                        }
                    }
                    if let (Op::ElemMatchObj(_) | Op::ElemMatchVal(_), Some(Bson::Array(a))) =
                        (op, v)
                    {
                        if let Some(i) = op.elem_match_index(a, ctx) {
                            found = idx.or(Some(i));
                            return true;
                        }
                        return false;
                    }
                    if op.matches_single(v, ctx) {
                        found = idx;
                        return true;
                    }
                    false
                });
                if hit && found.is_some() {
                    *pos = found;
                }
                hit
            }
            Pred::Not(p) => !p.matches_path(d, parts, &mut None, ctx),
            Pred::And(ps) => ps.iter().all(|p| p.matches_path(d, parts, pos, ctx)),
        }
    }

    fn matches_single(&self, v: Option<&Bson>, ctx: &mut Ctx<'_>) -> bool {
        match self {
            Pred::Op(op) => op.matches_single(v, ctx),
            Pred::Not(p) => !p.matches_single(v, ctx),
            Pred::And(ps) => ps.iter().all(|p| p.matches_single(v, ctx)),
        }
    }
}

impl Node {
    fn matches(&self, d: &Document, pos: &mut Option<usize>, ctx: &mut Ctx<'_>) -> bool {
        match self {
            Node::And(ns) => ns.iter().all(|n| n.matches(d, pos, ctx)),
            Node::Or(ns) => ns.iter().any(|n| n.matches(d, pos, ctx)),
            Node::Nor(ns) => !ns.iter().any(|n| n.matches(d, &mut None, ctx)),
            Node::Path(p, pred) => pred.matches_path(d, &p.parts, pos, ctx),
            Node::Expr(e) => {
                let default_vars;
                let vars = match &ctx.vars {
                    Some(v) => &**v,
                    None => {
                        let mut v = Vars::default();
                        v.set_collation(ctx.coll.cloned());
                        default_vars = v;
                        &default_vars
                    }
                };
                match e.eval(d, vars) {
                    Ok(v) => v.as_ref().is_some_and(truthy),
                    Err(err) => {
                        ctx.error.get_or_insert(err);
                        false
                    }
                }
            }
            Node::Schema(s) => s.matches_doc(d),
            Node::Const(b) => *b,
            // A document the text scan scored has matched already.
            Node::Text(_) if d.contains_key(crate::text::SCORE_FIELD) => true,
            Node::Text(q) => match q.score(d) {
                Ok(s) => s.is_some(),
                Err(err) => {
                    ctx.error.get_or_insert(err);
                    false
                }
            },
        }
    }
}

impl Filter {
    /// Parses a query filter document.
    pub fn parse(filter: &Document) -> Result<Filter> {
        let root = parse_doc(filter, 0)?;
        check_text(&root)?;
        Ok(Filter {
            root,
            collation: None,
            vars: None,
        })
    }

    /// The filter's top-level geospatial predicates: (path, predicate).
    pub fn geo_predicates(&self) -> Vec<(String, GeoQuery)> {
        let mut out = Vec::new();
        for n in top_level(&self.root) {
            let Node::Path(path, pred) = n else { continue };
            let preds: Vec<&Pred> = match pred {
                Pred::And(ps) => ps.iter().collect(),
                p => vec![p],
            };
            for p in preds {
                if let Pred::Op(Op::Geo(q)) = p {
                    out.push((path.dotted.clone(), (**q).clone()));
                }
            }
        }
        out
    }

    /// Whether the filter has a `$near`/`$nearSphere` anywhere (which only the top level
    /// allows, once).
    pub fn has_near(&self) -> bool {
        fn node(n: &Node) -> bool {
            match n {
                Node::And(ns) | Node::Or(ns) | Node::Nor(ns) => ns.iter().any(node),
                Node::Path(_, p) => pred(p),
                _ => false,
            }
        }
        fn pred(p: &Pred) -> bool {
            match p {
                Pred::Op(Op::Geo(q)) => matches!(**q, GeoQuery::Near(_)),
                Pred::Op(Op::ElemMatchObj(n)) => node(n),
                Pred::Not(p) => pred(p),
                Pred::And(ps) => ps.iter().any(pred),
                Pred::Op(_) => false,
            }
        }
        node(&self.root)
    }

    /// The filter's `$text` query, if it has one (only ever at the top level).
    pub fn text_query(&self) -> Option<&crate::text::TextQuery> {
        top_level(&self.root).into_iter().find_map(|n| match n {
            Node::Text(q) => Some(&**q),
            _ => None,
        })
    }

    /// A filter that matches every document.
    pub fn match_all() -> Filter {
        Filter {
            root: Node::And(Vec::new()),
            collation: None,
            vars: None,
        }
    }

    /// The same filter with string comparisons under `coll` (`None`: binary).
    #[must_use]
    pub fn with_collation(mut self, coll: Option<Arc<Collation>>) -> Filter {
        if let Some(v) = self.vars.as_mut() {
            v.set_collation(coll.clone());
        }
        self.collation = coll;
        self
    }

    /// The filter with variables bound for its `$expr`s (a command's `let` parameters and
    /// `$$NOW`); [`Filter::matches`] and [`Filter::try_matches`] then use them.
    #[must_use]
    pub fn bind(mut self, vars: &Vars) -> Filter {
        let mut v = vars.clone();
        v.set_collation(self.collation.clone());
        self.vars = Some(Box::new(v));
        self
    }

    /// The collation string comparisons use.
    pub fn collation(&self) -> Option<&Collation> {
        self.collation.as_deref()
    }

    /// The collation, shared.
    pub fn shared_collation(&self) -> Option<Arc<Collation>> {
        self.collation.clone()
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            error: None,
            vars: self.vars.as_deref().map(Cow::Borrowed),
            coll: self.collation.as_ref(),
        }
    }

    /// Whether the document matches (an `$expr` that fails to evaluate does not match; see
    /// [`Filter::try_matches`]).
    pub fn matches(&self, doc: &Document) -> bool {
        self.root.matches(doc, &mut None, &mut self.ctx())
    }

    /// Like [`Filter::matches`], with string comparisons under `coll` instead of the
    /// filter's own collation (for filters parsed once and applied under an operation's
    /// collation, e.g. `$pull` conditions).
    pub fn matches_under(&self, doc: &Document, coll: Option<&Arc<Collation>>) -> bool {
        let mut ctx = Ctx {
            error: None,
            vars: self.vars.as_deref().map(Cow::Borrowed),
            coll,
        };
        self.root.matches(doc, &mut None, &mut ctx)
    }

    /// Like [`Filter::matches`], but reports an `$expr` evaluation error.
    pub fn try_matches(&self, doc: &Document) -> Result<bool> {
        self.try_matches_with(doc, None)
    }

    /// Like [`Filter::try_matches`], with variables for `$expr` (`$$NOW`, `let` variables).
    pub fn try_matches_with(&self, doc: &Document, vars: Option<&Vars>) -> Result<bool> {
        let mut ctx = self.ctx();
        if let Some(vars) = vars {
            let mut v = vars.clone();
            if let Some(c) = &self.collation {
                v.set_collation(Some(c.clone()));
            }
            ctx.vars = Some(Cow::Owned(v));
        }
        let m = self.root.matches(doc, &mut None, &mut ctx);
        match ctx.error {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    /// For positional `$` updates/projections: the index of the array element that matched
    /// in the first array traversed by the query, if any.
    pub fn match_position(&self, doc: &Document) -> Option<usize> {
        let mut pos = None;
        if self.root.matches(doc, &mut pos, &mut self.ctx()) {
            pos
        } else {
            None
        }
    }

    /// Whether the filter is empty (matches everything).
    pub fn is_empty(&self) -> bool {
        matches!(&self.root, Node::And(v) if v.is_empty())
    }

    /// Top-level AND-ed simple predicates on paths, for index planning: (path, predicate).
    pub fn predicates(&self) -> Vec<(String, Predicate)> {
        let mut out = Vec::new();
        for n in top_level(&self.root) {
            let Node::Path(path, pred) = n else { continue };
            let ops: Vec<&Op> = match pred {
                Pred::Op(op) => vec![op],
                Pred::And(ps) => ps
                    .iter()
                    .filter_map(|p| if let Pred::Op(op) = p { Some(op) } else { None })
                    .collect(),
                Pred::Not(_) => continue,
            };
            let (mut lower, mut upper) = (None, None);
            for op in ops {
                match op {
                    Op::Eq(v) if !matches!(v, Bson::Array(_) | Bson::RegularExpression(_)) => {
                        out.push((path.dotted.clone(), Predicate::Eq(v.clone())));
                    }
                    Op::In(vals, rxs)
                        if rxs.is_empty() && !vals.iter().any(|v| matches!(v, Bson::Array(_))) =>
                    {
                        out.push((path.dotted.clone(), Predicate::In(vals.clone())));
                    }
                    Op::Cmp(c, v) => match c {
                        CmpOp::Gt | CmpOp::Gte => {
                            lower = Some((v.clone(), *c == CmpOp::Gte));
                        }
                        CmpOp::Lt | CmpOp::Lte => {
                            upper = Some((v.clone(), *c == CmpOp::Lte));
                        }
                    },
                    _ => {}
                }
            }
            if lower.is_some() || upper.is_some() {
                out.push((path.dotted.clone(), Predicate::Range { lower, upper }));
            }
        }
        out
    }

    /// Equality fields for an upsert's seed document (`{a: 1, "b.c": 2, $and:[{d:3}]}` ->
    /// a, b.c, d), as MongoDB builds it.
    pub fn equality_fields(&self) -> Vec<(String, Bson)> {
        let mut out = Vec::new();
        for n in top_level(&self.root) {
            let Node::Path(path, pred) = n else { continue };
            let preds: Vec<&Pred> = match pred {
                Pred::And(ps) => ps.iter().collect(),
                p => vec![p],
            };
            for p in preds {
                match p {
                    Pred::Op(Op::Eq(v)) if !matches!(v, Bson::RegularExpression(_)) => {
                        out.push((path.dotted.clone(), v.clone()));
                    }
                    Pred::Op(Op::In(vals, rxs)) if vals.len() == 1 && rxs.is_empty() => {
                        out.push((path.dotted.clone(), vals[0].clone()));
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

/// The nodes AND-ed at the top level (flattening `$and` and single-clause `$or`).
fn top_level(n: &Node) -> Vec<&Node> {
    match n {
        Node::And(ns) => ns.iter().flat_map(top_level).collect(),
        Node::Or(ns) if ns.len() == 1 => top_level(&ns[0]),
        other => vec![other],
    }
}

const MAX_DEPTH: usize = 100;

fn node_has_text(n: &Node) -> bool {
    match n {
        Node::Text(_) => true,
        Node::And(ns) | Node::Or(ns) | Node::Nor(ns) => ns.iter().any(node_has_text),
        Node::Path(_, p) => p.has_text(),
        _ => false,
    }
}

impl Pred {
    fn has_text(&self) -> bool {
        match self {
            Pred::Op(Op::ElemMatchObj(n)) => node_has_text(n),
            Pred::Not(p) => p.has_text(),
            Pred::And(ps) => ps.iter().any(Pred::has_text),
            Pred::Op(_) => false,
        }
    }
}

/// Where `$text` may stand: once, AND-ed at the top level (mongod also allows it under an
/// `$or` whose other clauses are all indexed; Eddy refuses that, with the error mongod
/// gives when they are not).
fn check_text(root: &Node) -> Result<()> {
    fn count(n: &Node, ctx: &str, out: &mut Vec<String>) {
        match n {
            Node::Text(_) => out.push(ctx.to_string()),
            Node::And(ns) => ns.iter().for_each(|c| count(c, ctx, out)),
            Node::Or(ns) => ns.iter().for_each(|c| count(c, "or", out)),
            Node::Nor(ns) => ns.iter().for_each(|c| count(c, "nor", out)),
            Node::Path(_, pred) => {
                if pred.has_text() {
                    out.push("elem".into());
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    count(root, "", &mut found);
    if found.len() > 1 {
        return Err(MongoError::bad_value("Too many text expressions"));
    }
    let top = top_level(root).iter().any(|n| matches!(n, Node::Text(_)));
    match found.first().map(String::as_str) {
        Some(_) if top => Ok(()),
        None => Ok(()),
        Some("nor") => Err(MongoError::bad_value("text expression not allowed in nor")),
        Some("elem") => Err(MongoError::bad_value(
            "$text can only be applied to the top-level document",
        )),
        Some(_) => Err(MongoError::new(
            ErrorCode::NoQueryExecutionPlans,
            "error processing query: planner returned error :: caused by :: Failed to produce a solution for TEXT under OR - other non-TEXT clauses under OR have to be indexed as well.",
        )),
    }
}

fn parse_doc(d: &Document, depth: usize) -> Result<Node> {
    if depth > MAX_DEPTH {
        return Err(MongoError::bad_value(
            "exceeded maximum query tree depth of 100",
        ));
    }
    let mut nodes = Vec::new();
    for (k, v) in d {
        if k.starts_with('$') {
            match k.as_str() {
                "$and" | "$or" | "$nor" => {
                    let Bson::Array(arr) = v else {
                        return Err(MongoError::bad_value(format!("{k} must be an array")));
                    };
                    if arr.is_empty() {
                        return Err(MongoError::bad_value(
                            "$and/$or/$nor must be a nonempty array",
                        ));
                    }
                    let mut children = Vec::with_capacity(arr.len());
                    for e in arr {
                        let Bson::Document(sub) = e else {
                            return Err(MongoError::bad_value(
                                "$or/$and/$nor entries need to be full objects",
                            ));
                        };
                        children.push(parse_doc(sub, depth + 1)?);
                    }
                    nodes.push(match k.as_str() {
                        "$and" => Node::And(children),
                        "$or" => Node::Or(children),
                        _ => Node::Nor(children),
                    });
                }
                "$expr" => nodes.push(Node::Expr(Box::new(Expr::parse(v)?))),
                "$comment" => {}
                "$alwaysTrue" => nodes.push(Node::Const(true)),
                "$alwaysFalse" => nodes.push(Node::Const(false)),
                "$jsonSchema" => {
                    let Bson::Document(s) = v else {
                        return Err(MongoError::type_mismatch("$jsonSchema must be an object"));
                    };
                    nodes.push(Node::Schema(Box::new(Schema::parse(s)?)));
                }
                "$where" => {
                    // mongod's error when it has no JavaScript engine (javascriptEnabled:
                    // false); Eddy is built without one.
                    return Err(MongoError::bad_value(
                        "no globalScriptEngine in $where parsing",
                    ));
                }
                "$text" => nodes.push(Node::Text(Box::new(crate::text::TextQuery::parse(v)?))),
                _ => {
                    return Err(MongoError::bad_value(format!(
                        "unknown top level operator: {k}. If you have a field name that starts \
                         with a '$' symbol, consider using $getField or $setField."
                    )));
                }
            }
        } else {
            if k.is_empty() && depth == 0 {
                // MongoDB accepts an empty field name; it simply never matches nested paths.
            }
            nodes.push(Node::Path(Path::new(k), parse_value(v, depth)?));
        }
    }
    Ok(if nodes.len() == 1 {
        nodes.pop().unwrap_or(Node::Const(true))
    } else {
        Node::And(nodes)
    })
}

fn is_operator_doc(d: &Document) -> bool {
    d.keys()
        .next()
        .is_some_and(|k| k.starts_with('$') && !matches!(k.as_str(), "$ref" | "$id" | "$db"))
}

/// Parses the value side of `{path: value}`.
fn parse_value(v: &Bson, depth: usize) -> Result<Pred> {
    match v {
        Bson::Document(d) if is_operator_doc(d) => parse_operators(d, depth),
        Bson::RegularExpression(r) => Ok(Pred::Op(Op::Regex(Rx::new(&r.pattern, &r.options)?))),
        other => Ok(Pred::Op(Op::Eq(other.clone()))),
    }
}

fn parse_operators(d: &Document, depth: usize) -> Result<Pred> {
    if let Some(op) = ["$near", "$nearSphere"]
        .into_iter()
        .find(|k| d.contains_key(*k))
    {
        if let Some(k) = d.keys().find(|k| {
            !matches!(
                k.as_str(),
                "$near" | "$nearSphere" | "$maxDistance" | "$minDistance"
            )
        }) {
            return Err(MongoError::bad_value(format!(
                "{k} cannot be combined with {op} on the same field"
            )));
        }
        let _ = depth;
        let near = crate::geo::Near::parse(op, d)?;
        return Ok(Pred::Op(Op::Geo(Box::new(GeoQuery::Near(near)))));
    }
    let mut preds = Vec::new();
    let regex_opts = d.get("$options");
    if regex_opts.is_some() && !d.contains_key("$regex") {
        return Err(MongoError::bad_value("$options needs a $regex"));
    }
    for (k, v) in d {
        if k == "$options" {
            continue;
        }
        preds.push(parse_operator(k, v, regex_opts, depth)?);
    }
    Ok(if preds.len() == 1 {
        preds.pop().unwrap_or(Pred::And(Vec::new()))
    } else {
        Pred::And(preds)
    })
}

fn array_arg<'a>(name: &str, v: &'a Bson) -> Result<&'a Vec<Bson>> {
    match v {
        Bson::Array(a) => Ok(a),
        _ => Err(MongoError::bad_value(format!("{name} needs an array"))),
    }
}

fn parse_in_list(name: &str, v: &Bson) -> Result<Op> {
    let arr = array_arg(name, v)?;
    let mut vals = Vec::new();
    let mut rxs = Vec::new();
    for e in arr {
        match e {
            Bson::RegularExpression(r) => rxs.push(Rx::new(&r.pattern, &r.options)?),
            Bson::Document(d) if is_operator_doc(d) => {
                return Err(MongoError::bad_value(format!("cannot nest $ under {name}")));
            }
            other => vals.push(other.clone()),
        }
    }
    Ok(Op::In(vals, rxs))
}

fn parse_operator(k: &str, v: &Bson, regex_opts: Option<&Bson>, depth: usize) -> Result<Pred> {
    let op = |o| Ok(Pred::Op(o));
    match k {
        "$eq" => op(Op::Eq(v.clone())),
        "$ne" => {
            if matches!(v, Bson::RegularExpression(_)) {
                return Err(MongoError::bad_value("Can't have regex as arg to $ne."));
            }
            Ok(Pred::Not(Box::new(Pred::Op(Op::Eq(v.clone())))))
        }
        "$gt" => op(Op::Cmp(CmpOp::Gt, v.clone())),
        "$gte" => op(Op::Cmp(CmpOp::Gte, v.clone())),
        "$lt" => op(Op::Cmp(CmpOp::Lt, v.clone())),
        "$lte" => op(Op::Cmp(CmpOp::Lte, v.clone())),
        "$in" => op(parse_in_list("$in", v)?),
        "$nin" => Ok(Pred::Not(Box::new(Pred::Op(parse_in_list("$nin", v)?)))),
        "$exists" => {
            let yes = truthy(v);
            Ok(if yes {
                Pred::Op(Op::Exists)
            } else {
                Pred::Not(Box::new(Pred::Op(Op::Exists)))
            })
        }
        "$type" => {
            let sels = match v {
                Bson::Array(a) => {
                    if a.is_empty() {
                        return Err(MongoError::bad_value("$type must match at least one type"));
                    }
                    a.iter().map(parse_type_sel).collect::<Result<Vec<_>>>()?
                }
                other => vec![parse_type_sel(other)?],
            };
            op(Op::Type(sels))
        }
        "$size" => {
            let n = match as_number(v) {
                Some(Number::Int(i)) => i,
                Some(Number::Float(f)) if f.fract() == 0.0 => f as i64,
                Some(Number::Float(_)) => {
                    return Err(MongoError::bad_value(
                        "Failed to parse $size. Expected an integer",
                    ));
                }
                None => return Err(MongoError::bad_value("$size needs a number")),
            };
            if n < 0 {
                return Err(MongoError::bad_value(
                    "Failed to parse $size. Expected a non-negative number",
                ));
            }
            op(Op::Size(n))
        }
        "$all" => {
            let arr = array_arg("$all", v)?;
            if arr.is_empty() {
                return op(Op::Never);
            }
            let elem_match = |e: &Bson| matches!(e, Bson::Document(d) if d.keys().next().is_some_and(|k| k == "$elemMatch"));
            let n_em = arr.iter().filter(|e| elem_match(e)).count();
            if n_em > 0 && n_em != arr.len() {
                return Err(MongoError::bad_value(
                    "$all/$elemMatch has to be consistent",
                ));
            }
            let mut preds = Vec::new();
            for e in arr {
                preds.push(match e {
                    Bson::Document(d) if n_em > 0 => parse_operators(d, depth + 1)?,
                    Bson::Document(d) if is_operator_doc(d) => {
                        return Err(MongoError::bad_value("no $ expressions in $all"));
                    }
                    Bson::RegularExpression(r) => {
                        Pred::Op(Op::Regex(Rx::new(&r.pattern, &r.options)?))
                    }
                    other => Pred::Op(Op::Eq(other.clone())),
                });
            }
            Ok(Pred::And(preds))
        }
        "$elemMatch" => {
            let Bson::Document(d) = v else {
                return Err(MongoError::bad_value("$elemMatch needs an Object"));
            };
            let value_form = d.keys().next().is_some_and(|k| {
                k.starts_with('$')
                    && !matches!(
                        k.as_str(),
                        "$and"
                            | "$or"
                            | "$nor"
                            | "$where"
                            | "$expr"
                            | "$jsonSchema"
                            | "$alwaysTrue"
                            | "$alwaysFalse"
                            | "$comment"
                    )
            });
            if value_form {
                let mut preds = Vec::new();
                for (k, v) in d {
                    if k == "$options" {
                        continue;
                    }
                    if !k.starts_with('$') {
                        return Err(MongoError::bad_value(format!("unknown operator: {k}")));
                    }
                    preds.push(parse_operator(k, v, d.get("$options"), depth + 1)?);
                }
                op(Op::ElemMatchVal(preds))
            } else {
                op(Op::ElemMatchObj(Box::new(parse_doc(d, depth + 1)?)))
            }
        }
        "$regex" => {
            let (pattern, mut options) = match v {
                Bson::String(s) => (s.clone(), String::new()),
                Bson::RegularExpression(r) => (r.pattern.clone(), r.options.clone()),
                _ => return Err(MongoError::bad_value("$regex has to be a string")),
            };
            if let Some(o) = regex_opts {
                let Bson::String(o) = o else {
                    return Err(MongoError::bad_value("$options has to be a string"));
                };
                if !options.is_empty() && !o.is_empty() {
                    return Err(MongoError::bad_value(
                        "options set in both $regex and $options",
                    ));
                }
                if options.is_empty() {
                    options = o.clone();
                }
            }
            op(Op::Regex(Rx::new(&pattern, &options)?))
        }
        "$mod" => {
            let Bson::Array(a) = v else {
                return Err(MongoError::bad_value("malformed mod, needs to be an array"));
            };
            if a.len() < 2 {
                return Err(MongoError::bad_value("malformed mod, not enough elements"));
            }
            if a.len() > 2 {
                return Err(MongoError::bad_value("malformed mod, too many elements"));
            }
            let d = int_of_value(&a[0])
                .ok_or_else(|| MongoError::bad_value("malformed mod, divisor not a number"))?;
            let r = int_of_value(&a[1])
                .ok_or_else(|| MongoError::bad_value("malformed mod, remainder not a number"))?;
            if d == 0 {
                return Err(MongoError::bad_value("divisor cannot be 0"));
            }
            op(Op::Mod(d, r))
        }
        "$not" => match v {
            Bson::RegularExpression(r) => Ok(Pred::Not(Box::new(Pred::Op(Op::Regex(Rx::new(
                &r.pattern, &r.options,
            )?))))),
            Bson::Document(d) => {
                if d.is_empty() {
                    return Err(MongoError::bad_value("$not cannot be empty"));
                }
                if let Some(k) = d.keys().find(|k| !k.starts_with('$')) {
                    return Err(MongoError::bad_value(format!("unknown operator: {k}")));
                }
                Ok(Pred::Not(Box::new(parse_operators(d, depth + 1)?)))
            }
            _ => Err(MongoError::bad_value("$not needs a regex or a document")),
        },
        "$bitsAllSet" | "$bitsAnySet" | "$bitsAllClear" | "$bitsAnyClear" => {
            let bop = match k {
                "$bitsAllSet" => BitsOp::AllSet,
                "$bitsAnySet" => BitsOp::AnySet,
                "$bitsAllClear" => BitsOp::AllClear,
                _ => BitsOp::AnyClear,
            };
            op(Op::Bits(bop, parse_bit_positions(k, v)?))
        }
        "$comment" => Ok(Pred::And(Vec::new())),
        "$geoWithin" | "$within" => op(Op::Geo(Box::new(GeoQuery::Within(
            crate::geo::Region::parse(v)?,
        )))),
        "$geoIntersects" => {
            let g = match v {
                Bson::Document(d) => match d.get("$geometry") {
                    Some(Bson::Document(g)) if d.len() == 1 => crate::geo::geojson(g)?,
                    _ => {
                        return Err(MongoError::bad_value(
                            "$geoIntersects must have a $geometry object",
                        ));
                    }
                },
                _ => return Err(MongoError::bad_value("$geoIntersects not passed an object")),
            };
            op(Op::Geo(Box::new(GeoQuery::Intersects(g))))
        }
        "$near" | "$nearSphere" | "$maxDistance" | "$minDistance" => Err(MongoError::bad_value(
            format!("{k} must be given with $near or $nearSphere, alone in its field's operators"),
        )),
        _ => Err(MongoError::bad_value(format!("unknown operator: {k}"))),
    }
}

fn parse_bit_positions(name: &str, v: &Bson) -> Result<Vec<u32>> {
    match v {
        Bson::Binary(b) => {
            let mut out = Vec::new();
            for (i, byte) in b.bytes.iter().enumerate() {
                for bit in 0..8u32 {
                    if (byte >> bit) & 1 == 1 {
                        out.push(i as u32 * 8 + bit);
                    }
                }
            }
            Ok(out)
        }
        Bson::Array(a) => a
            .iter()
            .map(|e| match as_number(e) {
                Some(Number::Int(i)) if (0..=i64::from(u32::MAX)).contains(&i) => Ok(i as u32),
                Some(Number::Float(f)) if f.fract() == 0.0 && (0.0..4e9).contains(&f) => {
                    Ok(f as u32)
                }
                Some(_) => Err(MongoError::bad_value(format!(
                    "bit positions must be >= 0 but got: {e}"
                ))),
                None => Err(MongoError::bad_value(format!(
                    "bit positions must be an integer but got: {e}"
                ))),
            })
            .collect(),
        _ => {
            let mask = match as_number(v) {
                Some(Number::Int(i)) => i,
                Some(Number::Float(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => f as i64,
                Some(_) => {
                    return Err(MongoError::bad_value(format!(
                        "{name} cannot take a non-integral bitmask: {v}"
                    )));
                }
                None => {
                    return Err(MongoError::bad_value(format!(
                        "{name} takes an Array, a number, or a BinData but received: {v}"
                    )));
                }
            };
            if mask < 0 {
                return Err(MongoError::bad_value(format!(
                    "{name} cannot take a negative bitmask: {mask}"
                )));
            }
            Ok((0..63u32).filter(|b| (mask >> b) & 1 == 1).collect())
        }
    }
}

#[cfg(test)]
mod tests;
