//! Projections: `find` projections (inclusion/exclusion, `$slice`, `$elemMatch`, positional
//! `path.$`, computed fields) and the `$project`/`$unset` stages built on the same tree.

#![allow(clippy::collapsible_if, clippy::collapsible_match)]

use bson::{Bson, Document};
use errors::{MongoError, Result};

use crate::expr::{Expr, Vars};
use crate::filter::Filter;

/// A parsed projection.
#[derive(Debug, Clone)]
pub struct Projection {
    inclusion: bool,
    tree: Tree,
    /// Empty specification: documents pass through unchanged.
    identity: bool,
}

#[derive(Debug, Clone, Default)]
struct Tree(Vec<(String, PNode)>);

#[derive(Debug, Clone)]
enum PNode {
    Include,
    Exclude,
    Sub(Tree),
    Expr(Expr),
    Slice(Option<i64>, i64),
    ElemMatch(Filter),
    Positional,
    /// `{$meta: ...}`: computed in inclusion and exclusion projections alike.
    Meta(Expr),
}

impl Tree {
    fn get(&self, k: &str) -> Option<&PNode> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, n)| n)
    }

    fn has_computed(&self) -> bool {
        self.0.iter().any(|(_, n)| match n {
            PNode::Expr(_) | PNode::Meta(_) => true,
            PNode::Sub(t) => t.has_computed(),
            _ => false,
        })
    }

    /// Inserts a node at a dotted path, reporting path collisions.
    fn insert(&mut self, path: &str, full: &str, node: PNode) -> Result<()> {
        let collision = |rest: &str| {
            MongoError::with_code(
                31250,
                format!("Path collision at {full} remaining portion {rest}"),
            )
        };
        match path.split_once('.') {
            None => {
                if self.get(path).is_some() {
                    return Err(MongoError::with_code(
                        31250,
                        format!("Path collision at {full}"),
                    ));
                }
                self.0.push((path.to_string(), node));
                Ok(())
            }
            Some((head, rest)) => {
                if let Some((_, existing)) = self.0.iter_mut().find(|(n, _)| n == head) {
                    match existing {
                        PNode::Sub(t) => t.insert(rest, full, node),
                        _ => Err(collision(rest)),
                    }
                } else {
                    let mut t = Tree::default();
                    t.insert(rest, full, node)?;
                    self.0.push((head.to_string(), PNode::Sub(t)));
                    Ok(())
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Include,
    Exclude,
    Neutral,
}

fn slice_args(v: &Bson) -> Result<(Option<i64>, i64)> {
    let int = |v: &Bson| crate::expr::ops_as_int(v);
    match v {
        Bson::Array(a) => {
            if a.len() != 2 {
                return Err(MongoError::with_code(28724, "$slice array wrong size"));
            }
            let skip = int(&a[0]).ok_or_else(|| {
                MongoError::bad_value("$slice only supports numbers and [skip, limit] arrays")
            })?;
            let limit = int(&a[1]).ok_or_else(|| {
                MongoError::bad_value("$slice only supports numbers and [skip, limit] arrays")
            })?;
            if limit <= 0 {
                return Err(MongoError::with_code(
                    28724,
                    "$slice limit must be positive",
                ));
            }
            Ok((Some(skip), limit))
        }
        other => {
            let n = int(other).ok_or_else(|| {
                MongoError::bad_value("$slice only supports numbers and [skip, limit] arrays")
            })?;
            Ok((None, n))
        }
    }
}

fn apply_slice(v: &Bson, skip: Option<i64>, limit: i64) -> Bson {
    let Bson::Array(a) = v else { return v.clone() };
    let len = a.len() as i64;
    let (start, count) = match skip {
        None if limit >= 0 => (0, limit),
        None => ((len + limit).max(0), len),
        Some(s) if s < 0 => ((len + s).max(0), limit),
        Some(s) => (s.min(len), limit),
    };
    Bson::Array(
        a.iter()
            .skip(start as usize)
            .take(count.max(0) as usize)
            .cloned()
            .collect(),
    )
}

struct ParseCx {
    aggregation: bool,
    kind: Option<bool>,
    positional: bool,
}

impl ParseCx {
    fn note(&mut self, k: &str, kind: Kind) -> Result<()> {
        let is_id = k == "_id";
        match kind {
            Kind::Neutral => Ok(()),
            Kind::Include => {
                if self.kind == Some(false) {
                    if is_id {
                        return Ok(());
                    }
                    return Err(MongoError::with_code(
                        31253,
                        format!("Cannot do inclusion on field {k} in exclusion projection"),
                    ));
                }
                if !is_id {
                    self.kind = Some(true);
                }
                Ok(())
            }
            Kind::Exclude => {
                if self.kind == Some(true) {
                    if is_id {
                        return Ok(());
                    }
                    return Err(MongoError::with_code(
                        31254,
                        format!("Cannot do exclusion on field {k} in inclusion projection"),
                    ));
                }
                if !is_id {
                    self.kind = Some(false);
                }
                Ok(())
            }
        }
    }
}

fn is_bool_like(v: &Bson) -> Option<bool> {
    match v {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            Some(crate::expr::truthy(v))
        }
        _ => None,
    }
}

fn parse_into(
    spec: &Document,
    prefix: &str,
    tree: &mut Tree,
    cx: &mut ParseCx,
    id_seen: &mut Option<bool>,
) -> Result<()> {
    for (k, v) in spec {
        if k.is_empty() {
            return Err(MongoError::with_code(
                40352,
                "FieldPath cannot be constructed with empty string",
            ));
        }
        if k.starts_with('$') {
            return Err(MongoError::with_code(
                16410,
                "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
            ));
        }
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(base) = full.strip_suffix(".$") {
            if cx.aggregation {
                return Err(MongoError::with_code(
                    31324,
                    "Cannot use positional projection in aggregation projection",
                ));
            }
            if cx.positional {
                return Err(MongoError::with_code(
                    31276,
                    "Cannot specify more than one positional projection per query.",
                ));
            }
            if base.split('.').any(|p| p == "$") {
                return Err(MongoError::with_code(
                    31394,
                    "As of 4.4, it's illegal to specify positional operator in the middle of a path.Positional projection may only be used at the end, for example: a.b.$. If the query previously used a form like a.b.$.d, remove the parts following the '$' and the results will be equivalent.",
                ));
            }
            cx.positional = true;
            cx.note(&full, Kind::Include)?;
            tree.insert(base, &full, PNode::Positional)?;
            continue;
        }
        if full.split('.').any(|p| p == "$" || p.is_empty()) {
            return Err(MongoError::with_code(
                31394,
                format!("Invalid projection path: {full}"),
            ));
        }
        let node = match v {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                let op = d.keys().next().map(String::as_str).unwrap_or_default();
                match op {
                    "$slice" if !cx.aggregation && d.len() == 1 => {
                        let (skip, limit) = slice_args(d.get("$slice").unwrap_or(&Bson::Null))?;
                        cx.note(&full, Kind::Neutral)?;
                        PNode::Slice(skip, limit)
                    }
                    "$elemMatch" if !cx.aggregation && d.len() == 1 => {
                        if full.contains('.') {
                            return Err(MongoError::bad_value(
                                "Cannot use $elemMatch projection on a nested field.",
                            ));
                        }
                        let Some(Bson::Document(f)) = d.get("$elemMatch") else {
                            return Err(MongoError::bad_value(
                                "elemMatch: Invalid argument, object required.",
                            ));
                        };
                        cx.note(&full, Kind::Include)?;
                        PNode::ElemMatch(Filter::parse(f)?)
                    }
                    "$meta" if d.len() == 1 => {
                        if full.ends_with(".$") {
                            return Err(MongoError::bad_value(
                                "positional projection cannot be used with $meta",
                            ));
                        }
                        cx.note(&full, Kind::Neutral)?;
                        PNode::Meta(Expr::parse(v)?)
                    }
                    _ => {
                        cx.note(&full, Kind::Include)?;
                        PNode::Expr(Expr::parse(v)?)
                    }
                }
            }
            Bson::Document(d) => {
                if d.is_empty() {
                    return Err(MongoError::with_code(
                        51270,
                        format!(
                            "An empty sub-projection is not a valid value. Found empty object at path {full}"
                        ),
                    ));
                }
                parse_into(d, &full, tree, cx, id_seen)?;
                continue;
            }
            other => match is_bool_like(other) {
                Some(true) => {
                    cx.note(&full, Kind::Include)?;
                    PNode::Include
                }
                Some(false) => {
                    cx.note(&full, Kind::Exclude)?;
                    PNode::Exclude
                }
                None => {
                    cx.note(&full, Kind::Include)?;
                    PNode::Expr(Expr::parse(other)?)
                }
            },
        };
        if full == "_id" {
            *id_seen = Some(!matches!(node, PNode::Exclude));
        }
        tree.insert(&full, &full, node)?;
    }
    Ok(())
}

impl Projection {
    /// Parses a `find` projection.
    pub fn parse(spec: &Document) -> Result<Projection> {
        Self::parse_mode(spec, false)
    }

    /// Parses a `$project` stage specification (objects whose first key starts with `$` are
    /// always expressions; no positional or `$elemMatch` projection).
    pub fn parse_aggregation(spec: &Document) -> Result<Projection> {
        if spec.is_empty() {
            return Err(MongoError::with_code(
                51272,
                "projection specification must have at least one field",
            ));
        }
        Self::parse_mode(spec, true)
    }

    /// An exclusion projection of the given paths (`$unset`).
    pub fn exclusion(paths: &[String]) -> Result<Projection> {
        let mut tree = Tree::default();
        for p in paths {
            if p.is_empty() || p.starts_with('$') || p.split('.').any(str::is_empty) {
                return Err(MongoError::with_code(
                    40352,
                    format!("Invalid $unset field path: '{p}'"),
                ));
            }
            tree.insert(p, p, PNode::Exclude)?;
        }
        Ok(Projection {
            inclusion: false,
            tree,
            identity: false,
        })
    }

    fn parse_mode(spec: &Document, aggregation: bool) -> Result<Projection> {
        if spec.is_empty() {
            return Ok(Projection {
                inclusion: false,
                tree: Tree::default(),
                identity: true,
            });
        }
        let mut cx = ParseCx {
            aggregation,
            kind: None,
            positional: false,
        };
        let mut tree = Tree::default();
        let mut id_seen = None;
        parse_into(spec, "", &mut tree, &mut cx, &mut id_seen)?;
        let inclusion = match cx.kind {
            Some(k) => k,
            None => {
                id_seen == Some(true) && !tree.0.iter().any(|(_, n)| matches!(n, PNode::Slice(..)))
            }
        };
        if inclusion && id_seen.is_none() && tree.get("_id").is_none() {
            tree.0.insert(0, ("_id".to_string(), PNode::Include));
        }
        if !inclusion {
            if let Some((_, n)) = tree.0.iter_mut().find(|(k, _)| k == "_id") {
                if matches!(n, PNode::Include) {
                    // `_id: 1` in an exclusion projection is the default.
                    *n = PNode::Sub(Tree::default());
                }
            }
            tree.0
                .retain(|(k, n)| !(k == "_id" && matches!(n, PNode::Sub(t) if t.0.is_empty())));
        }
        Ok(Projection {
            inclusion,
            tree,
            identity: false,
        })
    }

    /// Whether this is an inclusion projection.
    pub fn is_inclusion(&self) -> bool {
        self.inclusion
    }

    /// Applies the projection; `filter` is the query, needed by positional `path.$`.
    pub fn apply(&self, doc: &Document, filter: Option<&Filter>) -> Result<Document> {
        self.apply_with(doc, filter, &Vars::default())
    }

    /// Like [`Projection::apply`], with variables for computed fields.
    pub fn apply_with(
        &self,
        doc: &Document,
        filter: Option<&Filter>,
        vars: &Vars,
    ) -> Result<Document> {
        if self.identity {
            return Ok(doc.clone());
        }
        let mut cx = ApplyCx {
            root: doc,
            vars,
            filter,
            position: None,
        };
        if self.inclusion {
            include(doc, &self.tree, &mut cx)
        } else {
            exclude(doc, &self.tree, &mut cx)
        }
    }
}

struct ApplyCx<'a> {
    root: &'a Document,
    vars: &'a Vars,
    filter: Option<&'a Filter>,
    position: Option<usize>,
}

impl ApplyCx<'_> {
    fn position(&mut self) -> Result<usize> {
        if let Some(p) = self.position {
            return Ok(p);
        }
        let Some(f) = self.filter else {
            return Err(MongoError::with_code(
                51246,
                "positional operator '.$' couldn't find a matching element in the array",
            ));
        };
        let p = f.match_position(self.root).ok_or_else(|| {
            MongoError::with_code(
                51246,
                "positional operator '.$' couldn't find a matching element in the array",
            )
        })?;
        self.position = Some(p);
        Ok(p)
    }
}

fn include_value(v: &Bson, t: &Tree, cx: &mut ApplyCx<'_>) -> Result<Option<Bson>> {
    match v {
        Bson::Document(d) => Ok(Some(Bson::Document(include(d, t, cx)?))),
        Bson::Array(a) => {
            let mut out = Vec::new();
            for e in a {
                match e {
                    Bson::Document(_) | Bson::Array(_) => {
                        if let Some(x) = include_value(e, t, cx)? {
                            out.push(x);
                        }
                    }
                    _ if t.has_computed() => {
                        out.push(Bson::Document(include(&Document::new(), t, cx)?));
                    }
                    _ => {}
                }
            }
            Ok(Some(Bson::Array(out)))
        }
        _ if t.has_computed() => Ok(Some(Bson::Document(include(&Document::new(), t, cx)?))),
        _ => Ok(None),
    }
}

fn include(d: &Document, t: &Tree, cx: &mut ApplyCx<'_>) -> Result<Document> {
    let mut out = Document::new();
    for (k, v) in d {
        let Some(node) = t.get(k) else { continue };
        match node {
            PNode::Include => {
                out.insert(k.clone(), v.clone());
            }
            PNode::Sub(sub) => {
                if let Some(x) = include_value(v, sub, cx)? {
                    out.insert(k.clone(), x);
                }
            }
            PNode::Slice(skip, limit) => {
                out.insert(k.clone(), apply_slice(v, *skip, *limit));
            }
            PNode::ElemMatch(f) => {
                if let Bson::Array(a) = v {
                    let hit = a.iter().find(|e| match e {
                        Bson::Document(ed) => f.matches(ed),
                        _ => false,
                    });
                    if let Some(e) = hit {
                        out.insert(k.clone(), Bson::Array(vec![e.clone()]));
                    }
                }
            }
            PNode::Positional => match v {
                Bson::Array(a) => {
                    let p = cx.position()?;
                    let e = a.get(p).ok_or_else(|| {
                        MongoError::with_code(51246, "positional operator '.$' element mismatch")
                    })?;
                    out.insert(k.clone(), Bson::Array(vec![e.clone()]));
                }
                other => {
                    out.insert(k.clone(), other.clone());
                }
            },
            PNode::Expr(_) | PNode::Meta(_) | PNode::Exclude => {}
        }
    }
    for (k, node) in &t.0 {
        match node {
            PNode::Expr(e) | PNode::Meta(e) => match e.eval(cx.root, cx.vars)? {
                Some(v) => {
                    out.insert(k.clone(), v);
                }
                None => {
                    out.remove(k);
                }
            },
            PNode::Sub(sub) if !d.contains_key(k) && sub.has_computed() => {
                out.insert(k.clone(), include(&Document::new(), sub, cx)?);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn exclude_value(v: &Bson, t: &Tree, cx: &mut ApplyCx<'_>) -> Result<Bson> {
    Ok(match v {
        Bson::Document(d) => Bson::Document(exclude(d, t, cx)?),
        Bson::Array(a) => Bson::Array(
            a.iter()
                .map(|e| exclude_value(e, t, cx))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

fn exclude(d: &Document, t: &Tree, cx: &mut ApplyCx<'_>) -> Result<Document> {
    let mut out = Document::new();
    for (k, v) in d {
        match t.get(k) {
            None | Some(PNode::Include) => {
                out.insert(k.clone(), v.clone());
            }
            Some(PNode::Exclude) => {}
            Some(PNode::Sub(sub)) => {
                out.insert(k.clone(), exclude_value(v, sub, cx)?);
            }
            Some(PNode::Slice(skip, limit)) => {
                out.insert(k.clone(), apply_slice(v, *skip, *limit));
            }
            Some(PNode::Meta(_)) => {}
            Some(_) => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, node) in &t.0 {
        if let PNode::Meta(e) = node {
            if let Some(v) = e.eval(cx.root, cx.vars)? {
                out.insert(k.clone(), v);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn p(spec: Document, d: Document) -> Document {
        Projection::parse(&spec).unwrap().apply(&d, None).unwrap()
    }

    #[test]
    fn inclusion_exclusion_and_id() {
        let d = doc! {"_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "e": 4};
        assert_eq!(p(doc! {"a": 1}, d.clone()), doc! {"_id": 1, "a": 1});
        assert_eq!(p(doc! {"a": 1, "_id": 0}, d.clone()), doc! {"a": 1});
        assert_eq!(
            p(doc! {"a": 0}, d.clone()),
            doc! {"_id": 1, "b": {"c": 2, "d": 3}, "e": 4}
        );
        assert_eq!(
            p(doc! {"_id": 0}, d.clone()),
            doc! {"a": 1, "b": {"c": 2, "d": 3}, "e": 4}
        );
        assert_eq!(p(doc! {"_id": 1}, d.clone()), doc! {"_id": 1});
        assert_eq!(
            p(doc! {"b.c": 1}, d.clone()),
            doc! {"_id": 1, "b": {"c": 2}}
        );
        assert_eq!(
            p(doc! {"b": {"c": true}}, d.clone()),
            doc! {"_id": 1, "b": {"c": 2}}
        );
        assert_eq!(
            p(doc! {"b.c": 0, "e": 0}, d.clone()),
            doc! {"_id": 1, "a": 1, "b": {"d": 3}}
        );
        assert_eq!(p(doc! {}, d.clone()), d);
        assert_eq!(p(doc! {"e": 1, "a": 1}, d), doc! {"_id": 1, "a": 1, "e": 4});
    }

    #[test]
    fn mixing_errors() {
        assert_eq!(
            Projection::parse(&doc! {"a": 1, "b": 0}).unwrap_err().code,
            31254
        );
        assert_eq!(
            Projection::parse(&doc! {"a": 0, "b": 1}).unwrap_err().code,
            31253
        );
        assert_eq!(
            Projection::parse(&doc! {"a": 0, "b": "$x"})
                .unwrap_err()
                .code,
            31253
        );
        assert!(Projection::parse(&doc! {"a": 1, "_id": 0}).is_ok());
        assert!(Projection::parse(&doc! {"a": 0, "_id": 1}).is_ok());
        assert_eq!(
            Projection::parse(&doc! {"a": 1, "a.b": 1})
                .unwrap_err()
                .code,
            31250
        );
        assert_eq!(
            Projection::parse(&doc! {"a.b": 1, "a": 1})
                .unwrap_err()
                .code,
            31250
        );
        assert!(Projection::parse(&doc! {"a.$": 1, "b.$": 1}).is_err());
        assert!(Projection::parse(&doc! {"a": {}}).is_err());
    }

    #[test]
    fn arrays() {
        let d = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, 5, {"c": 3}, [{"b": 4}]]};
        assert_eq!(
            p(doc! {"a.b": 1}, d.clone()),
            doc! {"_id": 1, "a": [{"b": 1}, {}, [{"b": 4}]]}
        );
        assert_eq!(
            p(doc! {"a.b": 0}, d),
            doc! {"_id": 1, "a": [{"c": 2}, 5, {"c": 3}, [{}]]}
        );
        assert_eq!(p(doc! {"x.y": 1}, doc! {"_id": 1, "x": 5}), doc! {"_id": 1});
    }

    #[test]
    fn slice_and_elem_match() {
        let d = doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "b": 1, "c": [{"x": 1}, {"x": 2}, {"x": 2, "y": 1}]};
        assert_eq!(
            p(doc! {"a": {"$slice": 2}}, d.clone()),
            doc! {"_id": 1, "a": [1, 2], "b": 1, "c": d.get("c").unwrap().clone()}
        );
        assert_eq!(
            p(doc! {"a": {"$slice": -2}, "b": 1}, d.clone()),
            doc! {"_id": 1, "a": [4, 5], "b": 1}
        );
        assert_eq!(
            p(doc! {"a": {"$slice": [1, 2]}, "b": 1}, d.clone()),
            doc! {"_id": 1, "a": [2, 3], "b": 1}
        );
        assert_eq!(
            p(doc! {"a": {"$slice": [-2, 5]}, "_id": 0, "b": 1}, d.clone()),
            doc! {"a": [4, 5], "b": 1}
        );
        assert_eq!(
            p(doc! {"a": {"$slice": [10, 5]}, "_id": 0, "b": 1}, d.clone()),
            doc! {"a": [], "b": 1}
        );
        assert_eq!(
            p(doc! {"c": {"$elemMatch": {"x": 2}}}, d.clone()),
            doc! {"_id": 1, "c": [{"x": 2}]}
        );
        assert_eq!(
            p(doc! {"c": {"$elemMatch": {"x": 9}}}, d.clone()),
            doc! {"_id": 1}
        );
        assert!(Projection::parse(&doc! {"a": {"$slice": [1, 0]}}).is_err());
    }

    #[test]
    fn positional() {
        let d = doc! {"_id": 1, "a": [{"b": 1}, {"b": 2}, {"b": 3}], "c": 1};
        let f = Filter::parse(&doc! {"a.b": {"$gt": 1}}).unwrap();
        let proj = Projection::parse(&doc! {"a.$": 1}).unwrap();
        assert_eq!(
            proj.apply(&d, Some(&f)).unwrap(),
            doc! {"_id": 1, "a": [{"b": 2}]}
        );
        let f = Filter::parse(&doc! {"c": 1}).unwrap();
        assert_eq!(proj.apply(&d, Some(&f)).unwrap_err().code, 51246);
        let d = doc! {"_id": 1, "grades": [80, 85, 90]};
        let f = Filter::parse(&doc! {"grades": {"$gte": 85}}).unwrap();
        assert_eq!(
            Projection::parse(&doc! {"grades.$": 1})
                .unwrap()
                .apply(&d, Some(&f))
                .unwrap(),
            doc! {"_id": 1, "grades": [85]}
        );
    }

    #[test]
    fn computed_fields() {
        let d = doc! {"_id": 1, "a": 2, "b": {"c": 3}};
        assert_eq!(
            p(doc! {"x": "$a", "a": 1}, d.clone()),
            doc! {"_id": 1, "a": 2, "x": 2}
        );
        assert_eq!(
            p(doc! {"x": {"$add": ["$a", 1]}, "_id": 0}, d.clone()),
            doc! {"x": 3}
        );
        assert_eq!(
            p(doc! {"x": {"$literal": 1}, "_id": 0}, d.clone()),
            doc! {"x": 1}
        );
        assert_eq!(
            p(doc! {"b.d": "$a", "_id": 0}, d.clone()),
            doc! {"b": {"d": 2}}
        );
        assert_eq!(
            p(doc! {"y.z": "lit", "_id": 0}, d.clone()),
            doc! {"y": {"z": "lit"}}
        );
        assert_eq!(p(doc! {"m": "$missing", "_id": 0}, d), doc! {});
    }

    #[test]
    fn unset() {
        let pr = Projection::exclusion(&["a".into(), "b.c".into()]).unwrap();
        assert_eq!(
            pr.apply(&doc! {"_id": 1, "a": 1, "b": {"c": 1, "d": 2}}, None)
                .unwrap(),
            doc! {"_id": 1, "b": {"d": 2}}
        );
    }
}
