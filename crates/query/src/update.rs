//! Updates: operator-style (`{$set: ...}`), replacement and pipeline-style, applied to one
//! document, each yielding the field-level delta that change events report as
//! `updateDescription` (see [`UpdateDelta`]).
//!
//! Operator updates follow MongoDB's update tree: paths are merged into a tree at parse time
//! (conflicting paths are rejected), positional `$`, `$[]` and `$[<id>]` are resolved against
//! the document, and the leaves are applied in field-name order while a log of touched paths
//! is kept; the log becomes MongoDB's `$v: 2` diff and then the delta. Pipeline updates
//! diff the old and new documents ([`diff`]).

mod apply;
mod delta;
mod diff;
mod fmt;
mod ops;
#[cfg(test)]
mod tests;
mod tree;

use bson::{Bson, Document};
use doc::compare::values_equal;
use errors::{ErrorCode, MongoError, Result};

pub use self::delta::UpdateDelta;
use self::delta::{identical_docs, to_delta};
use self::tree::{OpUpdate, parse_array_filters, parse_operators};
use crate::expr::Vars;
use crate::pipeline::{Env, Pipeline};

/// A parsed update: operators, a replacement document or a pipeline.
#[derive(Debug, Clone)]
pub struct Update {
    kind: Kind,
    /// Variables bound with [`Update::bind`] (a command's `let`), for pipeline updates.
    vars: Option<Box<Vars>>,
}

#[derive(Debug, Clone)]
enum Kind {
    Replacement(Document),
    Pipeline(Pipeline),
    Operators(OpUpdate),
}

/// What the update is applied with.
#[derive(Debug, Clone)]
pub struct UpdateCtx {
    /// Whether this applies to an upsert's seed document (`$setOnInsert` then applies).
    pub is_upsert_insert: bool,
    /// The time `$currentDate` sets.
    pub now: bson::DateTime,
    /// index matched by the query for positional `$`
    pub positional: Option<usize>,
}

/// The outcome of applying an update to one document.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateResult {
    /// The new document (`_id` first).
    pub doc: Document,
    /// Whether anything changed.
    pub modified: bool,
    /// None for a replacement (change events report a `replace`)
    pub delta: Option<UpdateDelta>,
}

/// Stages a pipeline-style update may use.
const PIPELINE_STAGES: &[&str] = &[
    "$set",
    "$addFields",
    "$unset",
    "$project",
    "$replaceRoot",
    "$replaceWith",
];

impl Update {
    /// Parses `update`: a Document of operators, a replacement Document, or an Array
    /// pipeline. `array_filters` are the command's `arrayFilters`.
    pub fn parse(update: &Bson, array_filters: Option<&[Document]>) -> Result<Update> {
        let kind = match update {
            Bson::Array(stages) => {
                if array_filters.is_some_and(|a| !a.is_empty()) {
                    return Err(MongoError::failed_to_parse(
                        "arrayFilters may not be specified for pipeline-style updates",
                    ));
                }
                Kind::Pipeline(parse_pipeline(stages)?)
            }
            Bson::Document(d) => {
                let first = d.keys().next();
                if first.is_some_and(|k| k.starts_with('$')) {
                    Kind::Operators(parse_operators(d, array_filters.unwrap_or(&[]))?)
                } else {
                    if let Some(afs) = array_filters {
                        parse_array_filters(afs)?;
                    }
                    validate_replacement(d)?;
                    Kind::Replacement(d.clone())
                }
            }
            _ => {
                return Err(MongoError::failed_to_parse(
                    "Update argument must be either an object or an array",
                ));
            }
        };
        Ok(Update { kind, vars: None })
    }

    /// The update with variables bound for a pipeline-style update's expressions (a
    /// command's `let` parameters and `$$NOW`).
    #[must_use]
    pub fn bind(mut self, vars: &Vars) -> Update {
        self.vars = Some(Box::new(vars.clone()));
        self
    }

    /// The same update with its comparisons (array filters, `$pull` conditions,
    /// `$addToSet`, `$min`/`$max`, `$push`'s `$sort`, pipeline stages) under `coll`.
    #[must_use]
    pub fn with_collation(mut self, coll: Option<std::sync::Arc<doc::Collation>>) -> Update {
        self.kind = match self.kind {
            Kind::Pipeline(p) => Kind::Pipeline(p.with_collation(coll)),
            Kind::Operators(mut u) => {
                for f in u.filters.values_mut() {
                    *f = std::mem::replace(f, crate::filter::Filter::match_all())
                        .with_collation(coll.clone());
                }
                u.collation = coll;
                Kind::Operators(u)
            }
            other => other,
        };
        self
    }

    /// Whether this is a replacement document.
    pub fn is_replacement(&self) -> bool {
        matches!(self.kind, Kind::Replacement(_))
    }

    /// Whether this is a pipeline-style update.
    pub fn is_pipeline(&self) -> bool {
        matches!(self.kind, Kind::Pipeline(_))
    }

    /// Applies the update to `doc` (the current document; for an upsert-insert, the seed
    /// built from the filter). The result's `_id` is first; changing `_id` is an
    /// ImmutableField error.
    pub fn apply(&self, doc: &Document, ctx: &UpdateCtx, env: &dyn Env) -> Result<UpdateResult> {
        match &self.kind {
            Kind::Replacement(r) => {
                let new = finish_replacement(doc, r.clone())?;
                let modified = !identical_docs(doc, &new);
                Ok(UpdateResult {
                    doc: new,
                    modified,
                    delta: None,
                })
            }
            Kind::Pipeline(p) => {
                let out = match &self.vars {
                    Some(vars) => p.apply_one_with(doc.clone(), vars)?,
                    None => p.apply_one(doc.clone(), env)?,
                };
                let out = out.ok_or_else(|| {
                    MongoError::internal("the update pipeline produced no document")
                })?;
                let new = finish_replacement(doc, out)?;
                if identical_docs(doc, &new) {
                    return Ok(UpdateResult {
                        doc: new,
                        modified: false,
                        delta: Some(UpdateDelta::default()),
                    });
                }
                let delta = diff::top_level_diff(doc, &new).map(|d| to_delta(&d));
                Ok(UpdateResult {
                    doc: new,
                    modified: true,
                    delta,
                })
            }
            Kind::Operators(u) => apply::apply_operators(u, doc, ctx, env),
        }
    }
}

/// The delta between two versions of a document the way MongoDB computes it for pipeline
/// updates (a shortened array -> truncation plus changed elements; type change -> set;
/// nested documents recursed where that is smaller than the new value).
pub fn diff(old: &Document, new: &Document) -> UpdateDelta {
    to_delta(&diff::diff_doc(old, new).0)
}

/// The delta a pipeline update logs, or `None` when MongoDB would log a replacement (and
/// change streams report a `replace`) because the diff is not smaller than the new document.
pub fn pipeline_delta(old: &Document, new: &Document) -> Option<UpdateDelta> {
    diff::top_level_diff(old, new).map(|d| to_delta(&d))
}

/// The document an upsert inserts before the update is applied: equality fields of the
/// filter (dotted paths expanded into subdocuments; `_id` first), as MongoDB builds it.
/// Takes the equality list from `Filter::equality_fields`.
pub fn upsert_seed(equalities: &[(String, Bson)]) -> Result<Document> {
    let mut out = Document::new();
    let mut seen: Vec<&str> = Vec::new();
    for (path, value) in equalities {
        for other in &seen {
            if other == path {
                return Err(MongoError::new(
                    ErrorCode::NotSingleValueField,
                    format!("cannot infer query fields to set, path '{path}' is matched twice"),
                ));
            }
            if is_prefix(other, path) || is_prefix(path, other) {
                return Err(MongoError::new(
                    ErrorCode::NotSingleValueField,
                    format!(
                        "cannot infer query fields to set, both paths '{path}' and '{other}' are matched"
                    ),
                ));
            }
        }
        seen.push(path);
        let parts: Vec<&str> = path.split('.').collect();
        let mut cur = &mut out;
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                cur.insert(*part, value.clone());
                break;
            }
            let entry = cur
                .entry(part.to_string())
                .or_insert_with(|| Bson::Document(Document::new()));
            match entry {
                Bson::Document(d) => cur = d,
                _ => break,
            }
        }
    }
    Ok(id_first(out))
}

pub(crate) fn is_prefix(prefix: &str, path: &str) -> bool {
    path.len() > prefix.len() && path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'.'
}

/// Validates a replacement document / inserted document's top-level field names (no
/// `$`-prefixed top-level names) and its `_id` type.
pub fn validate_replacement(doc: &Document) -> Result<()> {
    for (k, v) in doc {
        if k.starts_with('$') {
            return Err(ops::dollar_field(k, k));
        }
        if k == "_id" {
            let bad = match v {
                Bson::Array(_) => Some("array"),
                Bson::RegularExpression(_) => Some("regex"),
                Bson::Undefined => Some("undefined"),
                _ => None,
            };
            if let Some(t) = bad {
                return Err(MongoError::new(
                    ErrorCode::InvalidIdField,
                    format!("The '_id' value cannot be of type {t}"),
                ));
            }
        }
    }
    Ok(())
}

/// Moves `_id` to the front of a document.
pub(crate) fn id_first(mut doc: Document) -> Document {
    if doc.keys().next().is_none_or(|k| k == "_id") {
        return doc;
    }
    match doc.remove("_id") {
        Some(id) => {
            let mut out = Document::new();
            out.insert("_id", id);
            out.extend(doc);
            out
        }
        None => doc,
    }
}

/// Completes a replacement (or pipeline output): keeps the old `_id` when the new document
/// has none, rejects a changed `_id`, and puts `_id` first.
fn finish_replacement(old: &Document, mut new: Document) -> Result<Document> {
    if let Some(old_id) = old.get("_id") {
        match new.get("_id") {
            None => {
                let mut out = Document::new();
                out.insert("_id", old_id.clone());
                out.extend(new);
                new = out;
            }
            Some(id) if !values_equal(id, old_id) => {
                return Err(MongoError::new(
                    ErrorCode::ImmutableField,
                    format!(
                        "After applying the update, the (immutable) field '_id' was found to have been altered to {}",
                        fmt::element("_id", id)
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(id_first(new))
}

fn parse_pipeline(stages: &[Bson]) -> Result<Pipeline> {
    let mut docs = Vec::with_capacity(stages.len());
    for s in stages {
        match s {
            Bson::Document(d) => docs.push(d.clone()),
            _ => {
                return Err(MongoError::type_mismatch(
                    "Each element of the 'pipeline' array must be an object",
                ));
            }
        }
    }
    for d in &docs {
        if let Some(name) = d.keys().next()
            && !PIPELINE_STAGES.contains(&name.as_str())
        {
            // An unknown stage reports its own parse error first.
            if let Err(e) = Pipeline::parse(std::slice::from_ref(d), "test")
                && e.code == ErrorCode::Location40324.code()
            {
                return Err(e);
            }
            return Err(MongoError::new(
                ErrorCode::InvalidOptions,
                format!("{name} is not allowed to be used within an update"),
            ));
        }
    }
    Pipeline::parse(&docs, "test")
}
