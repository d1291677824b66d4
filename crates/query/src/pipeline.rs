//! Aggregation pipelines: parsing stages and running them over streams of documents.
//!
//! The pipeline is pure: the few stages that read other collections (`$lookup`,
//! `$unionWith`) go through [`Env`], and a final `$out`/`$merge` is returned to the caller as
//! an [`OutStage`] rather than executed.

#![allow(clippy::collapsible_if, clippy::collapsible_match)]

mod densify;
mod graph;
mod group;
mod window;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bson::{Bson, DateTime, Document, Timestamp};
use doc::Collation;
use doc::compare::{cmp_values, cmp_values_with, values_equal_with};
use errors::{MongoError, Result};

use self::group::{AccSpec, Grouper, parse_accumulators};
use crate::expr::{Expr, Vars};
use crate::filter::Filter;
use crate::projection::Projection;
use crate::sort::SortSpec;

/// Documents flowing between stages, pulled one at a time.
pub type DocIter = Box<dyn Iterator<Item = Result<Document>> + Send>;

/// An [`Env`] shared by the stages of a running pipeline (and by the cursor holding it).
pub type SharedEnv = Arc<dyn Env + Send + Sync>;

/// I/O the stages need, provided by the server.
pub trait Env {
    /// All documents of a collection (`$lookup`, `$unionWith`); empty if it doesn't exist.
    fn collection_docs(&self, db: &str, coll: &str) -> Result<Vec<Document>>;
    /// The documents of a collection that match `filter` (`$lookup`'s join) when an index
    /// serves it; `None` when none does (the caller then filters the whole collection,
    /// which it reads once).
    fn matching_docs(
        &self,
        _db: &str,
        _coll: &str,
        _filter: &Filter,
    ) -> Result<Option<Vec<Document>>> {
        Ok(None)
    }
    /// `$$NOW`.
    fn now(&self) -> DateTime;
    /// `$$CLUSTER_TIME`.
    fn cluster_time(&self) -> Timestamp;
    /// The operation's interruption point (`maxTimeMS`, `killOp`); stages call it as they
    /// consume input.
    ///
    /// # Errors
    /// `MaxTimeMSExpired` (50) or `Interrupted` (11601).
    fn check_interrupt(&self) -> Result<()> {
        Ok(())
    }
    /// Memory limits of blocking stages and where they may spill.
    fn limits(&self) -> crate::spill::Limits {
        crate::spill::Limits::default()
    }
}

/// A final `$out` or `$merge`, for the caller to execute.
#[derive(Debug, Clone)]
pub enum OutStage {
    Out {
        db: String,
        coll: String,
    },
    Merge {
        db: String,
        coll: String,
        on: Vec<String>,
        when_matched: Bson,
        when_not_matched: String,
    },
}

/// A parsed aggregation pipeline, with the operation's collation (which every stage's
/// string comparisons use, sub-pipelines included).
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<(&'static str, Stage)>,
    out: Option<(&'static str, OutStage)>,
    collation: Option<Arc<Collation>>,
}

#[derive(Debug, Clone)]
enum Stage {
    Match(Filter),
    Project(Projection),
    AddFields(Vec<(Vec<String>, Expr)>),
    ReplaceRoot(Expr),
    Redact(Expr),
    Sort(SortSpec),
    Limit(usize),
    Skip(usize),
    Group(Expr, Vec<AccSpec>),
    Count(String),
    Unwind {
        path: Vec<String>,
        index: Option<String>,
        preserve: bool,
    },
    Lookup(Box<Lookup>),
    Facet(Vec<(String, Arc<Pipeline>)>),
    Bucket {
        group_by: Expr,
        boundaries: Vec<Bson>,
        default: Option<Bson>,
        output: Vec<AccSpec>,
    },
    BucketAuto {
        group_by: Expr,
        buckets: usize,
        output: Vec<AccSpec>,
    },
    SortByCount(Expr),
    Sample(usize),
    Documents(Expr),
    UnionWith {
        db: String,
        coll: Option<String>,
        pipeline: Option<Arc<Pipeline>>,
    },
    SetWindowFields(Box<window::SetWindowFields>),
    Densify(Box<densify::Densify>),
    GraphLookup(Box<graph::GraphLookup>),
}

#[derive(Debug, Clone)]
struct Lookup {
    db: String,
    from: Option<String>,
    local: Option<String>,
    foreign: Option<String>,
    as_: Vec<String>,
    lets: Vec<(String, Expr)>,
    pipeline: Option<Arc<Pipeline>>,
    /// A correlated sub-pipeline's leading `{$match: {$expr: {$eq: ["$field", "$$var"]}}}`
    /// as (field, var): the foreign collection is first narrowed by `field` equal to the
    /// variable's value, through an index when one serves. The `$match` still runs.
    eq_prefilter: Option<(String, String)>,
}

fn err(code: i32, msg: impl Into<String>) -> MongoError {
    MongoError::with_code(code, msg)
}

fn bad(msg: impl Into<String>) -> MongoError {
    MongoError::bad_value(msg)
}

const STAGE_NAMES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
    "$redact",
    "$sort",
    "$limit",
    "$skip",
    "$group",
    "$count",
    "$unwind",
    "$lookup",
    "$facet",
    "$bucket",
    "$bucketAuto",
    "$sortByCount",
    "$sample",
    "$out",
    "$merge",
    "$documents",
    "$unionWith",
    "$setWindowFields",
    "$fill",
    "$densify",
    "$graphLookup",
];

fn positive_int(v: &Bson) -> Option<i64> {
    crate::expr::ops_as_int(v)
}

fn dotted(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

fn field_path_arg(stage: &str, v: &Bson, code: i32) -> Result<String> {
    match v {
        Bson::String(s) if s.starts_with('$') && s.len() > 1 && !s.starts_with("$$") => {
            Ok(s[1..].to_string())
        }
        Bson::String(s) => Err(err(
            code,
            format!("path option to {stage} stage should be prefixed with a '$': {s}"),
        )),
        other => Err(err(
            code,
            format!("expected a string as the path for {stage} stage, got {other}"),
        )),
    }
}

fn namespace(v: &Bson, default_db: &str, stage: &str) -> Result<(String, String)> {
    match v {
        Bson::String(s) => Ok((default_db.to_string(), s.clone())),
        Bson::Document(d) => {
            let db = match d.get("db") {
                Some(Bson::String(s)) => s.clone(),
                None => default_db.to_string(),
                _ => return Err(err(13111, format!("{stage}: 'db' must be a string"))),
            };
            match d.get("coll") {
                Some(Bson::String(c)) => Ok((db, c.clone())),
                _ => Err(err(13111, format!("{stage}: 'coll' must be a string"))),
            }
        }
        _ => Err(err(
            13111,
            format!("{stage}: expected a string or an object"),
        )),
    }
}

/// Flattens an `$addFields` specification: nested plain objects are paths.
fn flatten_add_fields(
    d: &Document,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Expr)>,
) -> Result<()> {
    for (k, v) in d {
        if k.starts_with('$') {
            return Err(err(
                16410,
                format!(
                    "FieldPath field names may not start with '$'. Consider using $getField or $setField. (in {k})"
                ),
            ));
        }
        if k.is_empty() || k.split('.').any(str::is_empty) {
            return Err(err(
                40352,
                "FieldPath cannot be constructed with empty string",
            ));
        }
        let mut path = prefix.to_vec();
        path.extend(dotted(k));
        match v {
            Bson::Document(sub)
                if !sub.is_empty() && !sub.keys().next().is_some_and(|k| k.starts_with('$')) =>
            {
                flatten_add_fields(sub, &path, out)?;
            }
            other => out.push((path, Expr::parse(other)?)),
        }
    }
    Ok(())
}

impl Pipeline {
    /// Parses a pipeline; unknown stages fail with 40324.
    pub fn parse(stages: &[Document], default_db: &str) -> Result<Pipeline> {
        Self::parse_depth(stages, default_db, 0)
    }

    fn parse_depth(stages: &[Document], default_db: &str, depth: usize) -> Result<Pipeline> {
        if depth > 20 {
            return Err(MongoError::new(
                errors::ErrorCode::MaxSubPipelineDepthExceeded,
                "Maximum number of nested sub-pipelines exceeded. Limit is 20",
            ));
        }
        let mut out_stages = Vec::new();
        let mut out = None;
        for (i, s) in stages.iter().enumerate() {
            if s.len() != 1 {
                return Err(err(
                    40323,
                    "A pipeline stage specification object must contain exactly one field.",
                ));
            }
            let Some((name, v)) = s.iter().next() else {
                continue;
            };
            let Some(static_name) = STAGE_NAMES.iter().find(|n| **n == name).copied() else {
                return Err(err(
                    40324,
                    format!("Unrecognized pipeline stage name: '{name}'"),
                ));
            };
            if out.is_some() {
                let prev = out.as_ref().map_or("$out", |(n, _): &(&str, OutStage)| *n);
                return Err(err(
                    40601,
                    format!("{prev} can only be the final stage in the pipeline"),
                ));
            }
            let stage = match static_name {
                "$match" => {
                    let Bson::Document(d) = v else {
                        return Err(err(
                            15959,
                            "the match filter must be an expression in an object",
                        ));
                    };
                    let f = Filter::parse(d)?;
                    if f.text_query().is_some() && (i > 0 || depth > 0) {
                        return Err(err(
                            17313,
                            "$match with $text is only allowed as the first pipeline stage",
                        ));
                    }
                    Stage::Match(f)
                }
                "$project" => {
                    let Bson::Document(d) = v else {
                        return Err(err(15969, "$project specification must be an object"));
                    };
                    Stage::Project(Projection::parse_aggregation(d)?)
                }
                "$addFields" | "$set" => {
                    let Bson::Document(d) = v else {
                        return Err(err(
                            40272,
                            format!(
                                "{name} specification stage must be an object, got {}",
                                crate::expr::type_name(Some(v))
                            ),
                        ));
                    };
                    let mut fields = Vec::new();
                    flatten_add_fields(d, &[], &mut fields)?;
                    Stage::AddFields(fields)
                }
                "$unset" => {
                    let paths: Vec<String> = match v {
                        Bson::String(s) => vec![s.clone()],
                        Bson::Array(a) if !a.is_empty() => a
                            .iter()
                            .map(|e| match e {
                                Bson::String(s) => Ok(s.clone()),
                                _ => Err(err(31120, "$unset specification must be a string or an array containing only string values")),
                            })
                            .collect::<Result<_>>()?,
                        _ => return Err(err(31002, "$unset specification must be a string or an array with at least one field")),
                    };
                    Stage::Project(Projection::exclusion(&paths)?)
                }
                "$replaceRoot" => {
                    let Bson::Document(d) = v else {
                        return Err(err(
                            40228,
                            "expected an object as specification for $replaceRoot stage",
                        ));
                    };
                    let nr = d.get("newRoot").ok_or_else(|| {
                        err(40231, "no newRoot specified for the $replaceRoot stage")
                    })?;
                    if let Some(k) = d.keys().find(|k| *k != "newRoot") {
                        return Err(err(
                            40415,
                            format!("BSON field '$replaceRoot.{k}' is an unknown field."),
                        ));
                    }
                    Stage::ReplaceRoot(Expr::parse(nr)?)
                }
                "$replaceWith" => Stage::ReplaceRoot(Expr::parse(v)?),
                "$redact" => Stage::Redact(Expr::parse(v)?),
                "$sort" => {
                    let Bson::Document(d) = v else {
                        return Err(err(15973, "the $sort key specification must be an object"));
                    };
                    if d.is_empty() {
                        return Err(err(15976, "$sort stage must have at least one sort key"));
                    }
                    Stage::Sort(SortSpec::parse(d)?)
                }
                "$limit" => match positive_int(v) {
                    Some(n) if n > 0 => Stage::Limit(n as usize),
                    Some(_) => return Err(err(15958, "the limit must be positive")),
                    None => return Err(err(15957, "the limit must be specified as a number")),
                },
                "$skip" => match positive_int(v) {
                    Some(n) if n >= 0 => Stage::Skip(n as usize),
                    Some(_) => {
                        return Err(err(
                            15956,
                            "invalid argument to $skip stage: Cannot skip a negative number of documents",
                        ));
                    }
                    None => {
                        return Err(err(
                            15972,
                            "invalid argument to $skip stage: Argument must be a number",
                        ));
                    }
                },
                "$group" => {
                    let Bson::Document(d) = v else {
                        return Err(err(
                            15947,
                            "a group's fields must be specified in an object",
                        ));
                    };
                    let id = d
                        .get("_id")
                        .ok_or_else(|| err(15955, "a group specification must include an _id"))?;
                    let id = Expr::parse(id)?;
                    let mut rest = d.clone();
                    rest.remove("_id");
                    Stage::Group(id, parse_accumulators(&rest)?)
                }
                "$count" => {
                    let Bson::String(s) = v else {
                        return Err(err(40156, "the count field must be a non-empty string"));
                    };
                    if s.is_empty() {
                        return Err(err(40157, "the count field must be a non-empty string"));
                    }
                    if s.starts_with('$') {
                        return Err(err(40158, "the count field cannot be a $-prefixed path"));
                    }
                    if s.contains('.') {
                        return Err(err(40160, "the count field cannot contain '.'"));
                    }
                    Stage::Count(s.clone())
                }
                "$unwind" => {
                    let (path, index, preserve) = match v {
                        Bson::String(_) => (field_path_arg("$unwind", v, 28818)?, None, false),
                        Bson::Document(d) => {
                            let path = d
                                .get("path")
                                .ok_or_else(|| err(28812, "no path specified to $unwind stage"))?;
                            let path = field_path_arg("$unwind", path, 28818)?;
                            let index = match d.get("includeArrayIndex") {
                                None => None,
                                Some(Bson::String(s)) if !s.is_empty() && !s.starts_with('$') => {
                                    Some(s.clone())
                                }
                                Some(_) => {
                                    return Err(err(
                                        28810,
                                        "includeArrayIndex option to $unwind stage should not be prefixed with a '$'",
                                    ));
                                }
                            };
                            let preserve = match d.get("preserveNullAndEmptyArrays") {
                                None => false,
                                Some(Bson::Boolean(b)) => *b,
                                Some(_) => {
                                    return Err(err(
                                        28809,
                                        "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage",
                                    ));
                                }
                            };
                            if let Some(k) = d.keys().find(|k| {
                                !matches!(
                                    k.as_str(),
                                    "path" | "includeArrayIndex" | "preserveNullAndEmptyArrays"
                                )
                            }) {
                                return Err(err(
                                    28811,
                                    format!("unrecognized option to $unwind stage: {k}"),
                                ));
                            }
                            (path, index, preserve)
                        }
                        _ => {
                            return Err(err(
                                15981,
                                "expected either a string or an object as specification for $unwind stage",
                            ));
                        }
                    };
                    Stage::Unwind {
                        path: dotted(&path),
                        index,
                        preserve,
                    }
                }
                "$lookup" => Stage::Lookup(Box::new(parse_lookup(v, default_db, depth)?)),
                "$facet" => {
                    let Bson::Document(d) = v else {
                        return Err(err(15947, "$facet argument must be an object"));
                    };
                    if d.is_empty() {
                        return Err(err(
                            40169,
                            "the $facet specification must be a non-empty object",
                        ));
                    }
                    let mut facets = Vec::new();
                    for (k, sub) in d {
                        let Bson::Array(a) = sub else {
                            return Err(err(
                                40170,
                                format!(
                                    "arguments to $facet must be arrays, {k} is type {}",
                                    crate::expr::type_name(Some(sub))
                                ),
                            ));
                        };
                        let docs = stage_docs(a)?;
                        let p = Pipeline::parse_depth(&docs, default_db, depth + 1)?;
                        if let Some(bad) = p
                            .stage_names()
                            .into_iter()
                            .find(|n| matches!(*n, "$facet" | "$out" | "$merge" | "$documents"))
                        {
                            return Err(err(
                                40600,
                                format!("{bad} is not allowed to be used within a $facet stage"),
                            ));
                        }
                        if p.out.is_some() {
                            return Err(err(
                                40600,
                                "$out is not allowed to be used within a $facet stage",
                            ));
                        }
                        facets.push((k.clone(), Arc::new(p)));
                    }
                    Stage::Facet(facets)
                }
                "$bucket" => parse_bucket(v)?,
                "$bucketAuto" => {
                    let Bson::Document(d) = v else {
                        return Err(err(40240, "the $bucketAuto stage must be an object"));
                    };
                    let group_by = Expr::parse(d.get("groupBy").ok_or_else(|| {
                        err(
                            40246,
                            "$bucketAuto requires 'groupBy' and 'buckets' to be specified",
                        )
                    })?)?;
                    let buckets = match d.get("buckets").and_then(positive_int) {
                        Some(n) if n > 0 => n as usize,
                        _ => {
                            return Err(err(
                                40243,
                                "$bucketAuto 'buckets' field must be greater than 0",
                            ));
                        }
                    };
                    let output = match d.get("output") {
                        Some(Bson::Document(o)) => parse_accumulators(o)?,
                        None => parse_accumulators(&bson::doc! {"count": {"$sum": 1}})?,
                        Some(_) => {
                            return Err(err(40244, "$bucketAuto 'output' field must be an object"));
                        }
                    };
                    Stage::BucketAuto {
                        group_by,
                        buckets,
                        output,
                    }
                }
                "$sortByCount" => {
                    let ok = match v {
                        Bson::String(s) => s.starts_with('$'),
                        Bson::Document(d) => {
                            d.keys().next().is_some_and(|k| k.starts_with('$')) && d.len() == 1
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(err(
                            40148,
                            "the sortKey specification must be an expression",
                        ));
                    }
                    Stage::SortByCount(Expr::parse(v)?)
                }
                "$sample" => {
                    let size = match v {
                        Bson::Document(d) => d.get("size").and_then(positive_int),
                        _ => {
                            return Err(err(
                                28745,
                                "the $sample stage specification must be an object",
                            ));
                        }
                    };
                    match size {
                        Some(n) if n >= 0 => Stage::Sample(n as usize),
                        Some(_) => {
                            return Err(err(
                                28747,
                                "size argument to $sample must not be negative",
                            ));
                        }
                        None => return Err(err(28749, "$sample stage must specify a size")),
                    }
                }
                "$documents" => {
                    if i != 0 {
                        return Err(err(
                            40602,
                            "$documents is only valid as the first stage in a pipeline",
                        ));
                    }
                    Stage::Documents(Expr::parse(v)?)
                }
                "$unionWith" => {
                    let (db, coll, pipeline) = match v {
                        Bson::String(s) => (default_db.to_string(), Some(s.clone()), None),
                        Bson::Document(d) => {
                            let coll = match d.get("coll") {
                                Some(Bson::String(s)) => Some(s.clone()),
                                None => None,
                                Some(_) => {
                                    return Err(err(40415, "$unionWith 'coll' must be a string"));
                                }
                            };
                            let pipeline = match d.get("pipeline") {
                                Some(Bson::Array(a)) => Some(Pipeline::parse_depth(
                                    &stage_docs(a)?,
                                    default_db,
                                    depth + 1,
                                )?),
                                None => None,
                                Some(_) => {
                                    return Err(err(
                                        10065,
                                        "$unionWith 'pipeline' must be an array",
                                    ));
                                }
                            };
                            if coll.is_none() && !starts_with_documents(pipeline.as_ref()) {
                                return Err(err(
                                    ErrorCodeNum::MISSING_COLL,
                                    "$unionWith stage without explicit collection must have a pipeline with $documents as first stage",
                                ));
                            }
                            (default_db.to_string(), coll, pipeline)
                        }
                        _ => {
                            return Err(err(
                                ErrorCodeNum::MISSING_COLL,
                                "the $unionWith stage specification must be an object or string",
                            ));
                        }
                    };
                    Stage::UnionWith {
                        db,
                        coll,
                        pipeline: pipeline.map(Arc::new),
                    }
                }
                "$fill" => {
                    for stage in parse_fill(v)? {
                        out_stages.push((static_name, stage));
                    }
                    continue;
                }
                "$densify" => Stage::Densify(Box::new(densify::Densify::parse(v)?)),
                "$graphLookup" => {
                    Stage::GraphLookup(Box::new(graph::GraphLookup::parse(v, default_db)?))
                }
                "$setWindowFields" => {
                    Stage::SetWindowFields(Box::new(window::SetWindowFields::parse(v)?))
                }
                "$out" => {
                    let (db, coll) = namespace(v, default_db, "$out")?;
                    out = Some((static_name, OutStage::Out { db, coll }));
                    continue;
                }
                _ => {
                    out = Some((static_name, parse_merge(v, default_db)?));
                    continue;
                }
            };
            out_stages.push((static_name, stage));
        }
        Ok(Pipeline {
            stages: out_stages,
            out,
            collation: None,
        })
    }

    /// The same pipeline with string comparisons under `coll` (`None`: binary), in every
    /// stage and sub-pipeline.
    #[must_use]
    pub fn with_collation(mut self, coll: Option<Arc<Collation>>) -> Pipeline {
        self.set_collation(&coll);
        self
    }

    fn set_collation(&mut self, coll: &Option<Arc<Collation>>) {
        self.collation.clone_from(coll);
        for (_, stage) in &mut self.stages {
            match stage {
                Stage::Match(f) => {
                    *f = std::mem::replace(f, Filter::match_all()).with_collation(coll.clone());
                }
                Stage::Sort(s) => *s = std::mem::take(s).with_collation(coll.clone()),
                Stage::Lookup(l) => {
                    if let Some(p) = &mut l.pipeline {
                        Arc::make_mut(p).set_collation(coll);
                    }
                }
                Stage::Facet(facets) => {
                    for (_, p) in facets {
                        Arc::make_mut(p).set_collation(coll);
                    }
                }
                Stage::UnionWith {
                    pipeline: Some(p), ..
                } => Arc::make_mut(p).set_collation(coll),
                _ => {}
            }
        }
    }

    /// The collation string comparisons use.
    pub fn collation(&self) -> Option<&Collation> {
        self.collation.as_deref()
    }

    /// The collation string comparisons use, shared.
    pub fn collation_arc(&self) -> Option<Arc<Collation>> {
        self.collation.clone()
    }

    /// The final `$out`/`$merge`, if any.
    pub fn out_stage(&self) -> Option<&OutStage> {
        self.out.as_ref().map(|(_, o)| o)
    }

    /// Stage names in order (`"$match"`, ...), including a final `$out`/`$merge`.
    pub fn stage_names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.stages.iter().map(|(n, _)| *n).collect();
        if let Some((n, _)) = &self.out {
            v.push(n);
        }
        v
    }

    /// Whether every stage is a `$match`: an event that passes comes out unchanged.
    pub fn only_matches(&self) -> bool {
        self.stages
            .iter()
            .all(|(_, s)| matches!(s, Stage::Match(_)))
    }

    /// For a pipeline of `$match` stages only ([`Pipeline::only_matches`]): whether `doc`
    /// passes them all, read in place (it comes out unchanged if it does).
    ///
    /// # Errors
    /// A `$match` that fails to evaluate (e.g. an `$expr` error).
    pub fn passes(&self, doc: &Document, env: &dyn Env) -> Result<bool> {
        let vars = Vars::new(env.now(), env.cluster_time());
        let vars = self.vars_for(&vars);
        for (_, stage) in &self.stages {
            if let Stage::Match(f) = stage {
                if !f.try_matches_with(doc, Some(&vars))? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The first stage, if it is a `$match`.
    pub fn leading_match(&self) -> Option<&Filter> {
        match self.stages.first() {
            Some((_, Stage::Match(f))) => Some(f),
            _ => None,
        }
    }

    /// Runs all stages except a final `$out`/`$merge` over the input.
    pub fn run(&self, input: Vec<Document>, env: &SharedEnv) -> Result<Vec<Document>> {
        let vars = Vars::new(env.now(), env.cluster_time());
        self.run_with(input, env, &vars)
    }

    /// The variables with this pipeline's collation, when it has one the caller's lack.
    fn vars_for<'v>(&self, vars: &'v Vars) -> std::borrow::Cow<'v, Vars> {
        match &self.collation {
            Some(c) if vars.collation() != Some(&**c) => {
                let mut v = vars.clone();
                v.set_collation(Some(c.clone()));
                std::borrow::Cow::Owned(v)
            }
            _ => std::borrow::Cow::Borrowed(vars),
        }
    }

    /// Like [`Pipeline::run`], with variables (e.g. `$lookup`'s `let`).
    pub fn run_with(
        &self,
        input: Vec<Document>,
        env: &SharedEnv,
        vars: &Vars,
    ) -> Result<Vec<Document>> {
        Arc::new(self.clone())
            .stream(Box::new(input.into_iter().map(Ok)), env, vars)
            .collect()
    }

    /// Runs all stages except a final `$out`/`$merge`, lazily: documents are pulled
    /// through the stages as the result is read, and only blocking stages (`$sort`,
    /// `$group`, ...) hold documents, within [`Env::limits`].
    pub fn stream(self: &Arc<Self>, input: DocIter, env: &SharedEnv, vars: &Vars) -> DocIter {
        let run = Arc::new(Run {
            vars: self.vars_for(vars).into_owned(),
            limits: env.limits(),
            env: env.clone(),
        });
        let mut it = input;
        for i in 0..self.stages.len() {
            it = stage_iter(self.clone(), i, it, run.clone());
        }
        it
    }

    /// For pipelines made only of per-document stages: applies them to one document;
    /// `None` if filtered out.
    pub fn apply_one(&self, doc: Document, env: &dyn Env) -> Result<Option<Document>> {
        let vars = Vars::new(env.now(), env.cluster_time());
        self.apply_one_with(doc, &vars)
    }

    /// Like [`Pipeline::apply_one`], with explicit variables.
    pub fn apply_one_with(&self, doc: Document, vars: &Vars) -> Result<Option<Document>> {
        let vars = self.vars_for(vars);
        let mut doc = doc;
        for (name, stage) in &self.stages {
            match per_doc(stage, doc, &vars)? {
                PerDoc::One(d) => doc = d,
                PerDoc::Dropped => return Ok(None),
                PerDoc::Other => {
                    return Err(bad(format!("{name} is not allowed in this pipeline")));
                }
            }
        }
        Ok(Some(doc))
    }

    /// Whether every stage maps one document to at most one document.
    pub fn is_per_document(&self) -> bool {
        self.out.is_none()
            && self.stages.iter().all(|(_, s)| {
                matches!(
                    s,
                    Stage::Match(_)
                        | Stage::Project(_)
                        | Stage::AddFields(_)
                        | Stage::ReplaceRoot(_)
                        | Stage::Redact(_)
                )
            })
    }
}

struct ErrorCodeNum;
impl ErrorCodeNum {
    const MISSING_COLL: i32 = 40_415;
}

fn starts_with_documents(p: Option<&Pipeline>) -> bool {
    p.is_some_and(|p| p.stage_names().first() == Some(&"$documents"))
}

/// The (field, variable) of a sub-pipeline whose first stage is
/// `{$match: {$expr: {$eq: ["$field", "$$var"]}}}` (either order, or the first such term
/// of an `$and`).
fn eq_prefilter(stages: &[Bson]) -> Option<(String, String)> {
    let m = stages.first()?.as_document()?.get_document("$match").ok()?;
    if m.len() != 1 {
        return None;
    }
    let e = m.get_document("$expr").ok()?;
    let eq_terms = |e: &Document| -> Option<(String, String)> {
        let a = e.get_array("$eq").ok()?;
        let (Some(Bson::String(x)), Some(Bson::String(y)), 2) = (a.first(), a.get(1), a.len())
        else {
            return None;
        };
        let field = |s: &str| {
            (s.starts_with('$') && !s.starts_with("$$") && s.len() > 1).then(|| s[1..].to_string())
        };
        let var = |s: &str| {
            s.strip_prefix("$$")
                .filter(|v| {
                    !v.is_empty() && !v.contains('.') && v.starts_with(|c: char| c.is_lowercase())
                })
                .map(str::to_string)
        };
        match (field(x), var(y), field(y), var(x)) {
            (Some(f), Some(v), _, _) | (_, _, Some(f), Some(v)) => Some((f, v)),
            _ => None,
        }
    };
    if e.len() != 1 {
        return None;
    }
    match e.get_array("$and") {
        Ok(terms) => terms
            .iter()
            .find_map(|t| t.as_document().and_then(eq_terms)),
        Err(_) => eq_terms(e),
    }
}

fn stage_docs(a: &[Bson]) -> Result<Vec<Document>> {
    a.iter()
        .map(|s| match s {
            Bson::Document(d) => Ok(d.clone()),
            _ => Err(err(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            )),
        })
        .collect()
}

fn parse_lookup(v: &Bson, default_db: &str, depth: usize) -> Result<Lookup> {
    let Bson::Document(d) = v else {
        return Err(err(
            40319,
            "the $lookup stage specification must be an object",
        ));
    };
    let mut l = Lookup {
        db: default_db.to_string(),
        from: None,
        local: None,
        foreign: None,
        as_: Vec::new(),
        lets: Vec::new(),
        pipeline: None,
        eq_prefilter: None,
    };
    for (k, val) in d {
        match k.as_str() {
            "from" => {
                let (db, coll) = namespace(val, default_db, "$lookup")?;
                l.db = db;
                l.from = Some(coll);
            }
            "localField" | "foreignField" | "as" => {
                let Bson::String(s) = val else {
                    return Err(err(
                        40321,
                        format!("$lookup argument '{k}: {val}' must be a string"),
                    ));
                };
                match k.as_str() {
                    "localField" => l.local = Some(s.clone()),
                    "foreignField" => l.foreign = Some(s.clone()),
                    _ => l.as_ = dotted(s),
                }
            }
            "let" => {
                let Bson::Document(lets) = val else {
                    return Err(err(9, "$lookup argument 'let' must be an object"));
                };
                for (name, e) in lets {
                    l.lets.push((name.clone(), Expr::parse(e)?));
                }
            }
            "pipeline" => {
                let Bson::Array(a) = val else {
                    return Err(err(9, "$lookup argument 'pipeline' must be an array"));
                };
                let p = Pipeline::parse_depth(&stage_docs(a)?, default_db, depth + 1)?;
                if p.out.is_some() {
                    return Err(err(
                        51047,
                        "$out is not allowed within a $lookup's sub-pipeline",
                    ));
                }
                l.eq_prefilter = eq_prefilter(a);
                l.pipeline = Some(Arc::new(p));
            }
            _ => return Err(err(9, format!("unknown argument to $lookup: {k}"))),
        }
    }
    if l.as_.is_empty() {
        return Err(err(9, "must specify 'as' field for a $lookup"));
    }
    if l.local.is_some() != l.foreign.is_some() {
        return Err(err(
            9,
            "$lookup requires both or neither of 'localField' and 'foreignField' to be specified",
        ));
    }
    if l.pipeline.is_none() && l.local.is_none() {
        return Err(err(
            9,
            "$lookup requires either 'pipeline' or both 'localField' and 'foreignField' to be specified",
        ));
    }
    if l.from.is_none() && !starts_with_documents(l.pipeline.as_deref()) {
        return Err(err(9, "must specify 'from' field for a $lookup"));
    }
    Ok(l)
}

/// `$fill`, as the stages it stands for: a `$setWindowFields` of `$locf`/`$linearFill`
/// for `method` outputs, then an `$addFields` of `$ifNull` for `value` outputs.
fn parse_fill(v: &Bson) -> Result<Vec<Stage>> {
    let Bson::Document(spec) = v else {
        return Err(err(
            9,
            format!(
                "The $fill stage specification must be an object, found {}",
                crate::expr::type_name(Some(v))
            ),
        ));
    };
    let mut window = Document::new();
    let mut output = None;
    for (k, v) in spec {
        match k.as_str() {
            "partitionBy" | "sortBy" => {
                window.insert(k.clone(), v.clone());
            }
            "partitionByFields" => {
                let Bson::Array(fields) = v else {
                    return Err(err(
                        14,
                        "BSON field '$fill.partitionByFields' is the wrong type, expected type 'array'",
                    ));
                };
                let mut by = Document::new();
                for f in fields {
                    match f {
                        Bson::String(f) if !f.starts_with('$') && !f.is_empty() => {
                            by.insert(f.clone(), format!("${f}"));
                        }
                        _ => {
                            return Err(err(
                                9,
                                format!("$fill's partitionByFields must be field names, found {f}"),
                            ));
                        }
                    }
                }
                window.insert("partitionByFields", by);
            }
            "output" => output = Some(v),
            other => {
                return Err(err(
                    40415,
                    format!("BSON field '$fill.{other}' is an unknown field."),
                ));
            }
        }
    }
    if window.contains_key("partitionBy") && window.contains_key("partitionByFields") {
        return Err(err(
            6050204,
            "Maximum one of 'partitionBy' and 'partitionByFields can be specified in '$fill'",
        ));
    }
    if let Some(Bson::Document(by)) = window.remove("partitionByFields") {
        window.insert("partitionBy", by);
    }
    let output = match output {
        Some(Bson::Document(o)) if !o.is_empty() => o,
        Some(Bson::Document(_)) => {
            return Err(err(
                6050203,
                "The output field in '$fill' must contain an object with at least one element",
            ));
        }
        Some(_) => {
            return Err(err(
                14,
                "BSON field '$fill.output' is the wrong type, expected type 'object'",
            ));
        }
        None => {
            return Err(err(
                40414,
                "BSON field '$fill.output' is missing but a required field",
            ));
        }
    };
    let mut methods = Document::new();
    let mut values = Vec::new();
    for (field, spec) in output {
        let Bson::Document(spec) = spec else {
            return Err(err(
                6050200,
                "Each fill output specification must be an object with exactly one field",
            ));
        };
        if let Some(k) = spec
            .keys()
            .find(|k| !matches!(k.as_str(), "method" | "value"))
        {
            return Err(err(
                40415,
                format!("BSON field '$fill.output.{field}.{k}' is an unknown field."),
            ));
        }
        match (spec.get("method"), spec.get("value")) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(err(
                    6050201,
                    "Each fill output specification must have exactly one of 'method' or 'value' fields, not both",
                ));
            }
            (Some(Bson::String(m)), None) if m == "locf" || m == "linear" => {
                let op = if m == "locf" { "$locf" } else { "$linearFill" };
                methods.insert(field.clone(), bson::doc! {op: format!("${field}")});
            }
            (Some(_), None) => {
                return Err(err(6050202, "Method must be either locf or linear"));
            }
            (None, Some(value)) => values.push((
                dotted(field),
                Expr::parse(&Bson::Document(
                    bson::doc! {"$ifNull": [format!("${field}"), value.clone()]},
                ))?,
            )),
        }
    }
    let mut stages = Vec::new();
    if !methods.is_empty() {
        window.insert("output", methods);
        stages.push(Stage::SetWindowFields(Box::new(
            window::SetWindowFields::parse(&Bson::Document(window))?,
        )));
    }
    if !values.is_empty() {
        stages.push(Stage::AddFields(values));
    }
    Ok(stages)
}

fn parse_bucket(v: &Bson) -> Result<Stage> {
    let Bson::Document(d) = v else {
        return Err(err(40201, "Argument to $bucket stage must be an object"));
    };
    for k in d.keys() {
        if !matches!(k.as_str(), "groupBy" | "boundaries" | "default" | "output") {
            return Err(err(40197, format!("Unrecognized option to $bucket: {k}.")));
        }
    }
    let group_by = d.get("groupBy").ok_or_else(|| {
        err(
            40198,
            "$bucket requires 'groupBy' and 'boundaries' to be specified.",
        )
    })?;
    let ok_group = matches!(group_by, Bson::String(s) if s.starts_with('$'))
        || matches!(group_by, Bson::Document(_));
    if !ok_group {
        return Err(err(
            40202,
            "The $bucket 'groupBy' field must be defined as a $-prefixed path or an expression",
        ));
    }
    let Some(Bson::Array(boundaries)) = d.get("boundaries") else {
        return Err(err(
            40200,
            "The $bucket 'boundaries' field must be an array",
        ));
    };
    if boundaries.len() < 2 {
        return Err(err(
            40192,
            format!(
                "The $bucket 'boundaries' field must have at least 2 values, but found {} value(s).",
                boundaries.len()
            ),
        ));
    }
    for w in boundaries.windows(2) {
        if doc::compare::type_rank(&w[0]) != doc::compare::type_rank(&w[1]) {
            return Err(err(
                40193,
                "All values in the the 'boundaries' option to $bucket must have the same type.",
            ));
        }
        if cmp_values(&w[0], &w[1]) != std::cmp::Ordering::Less {
            return Err(err(
                40194,
                "The 'boundaries' option to $bucket must be sorted in ascending order",
            ));
        }
    }
    let default = d.get("default").cloned();
    if let Some(def) = &default {
        let lo = &boundaries[0];
        let hi = &boundaries[boundaries.len() - 1];
        if doc::compare::type_rank(def) == doc::compare::type_rank(lo)
            && cmp_values(def, lo).is_ge()
            && cmp_values(def, hi).is_lt()
        {
            return Err(err(
                40199,
                "The $bucket 'default' field must be less than the lowest boundary or greater than or equal to the highest boundary.",
            ));
        }
    }
    let output = match d.get("output") {
        Some(Bson::Document(o)) => parse_accumulators(o)?,
        None => parse_accumulators(&bson::doc! {"count": {"$sum": 1}})?,
        Some(_) => return Err(err(40196, "The $bucket 'output' field must be an object")),
    };
    Ok(Stage::Bucket {
        group_by: Expr::parse(group_by)?,
        boundaries: boundaries.clone(),
        default,
        output,
    })
}

fn parse_merge(v: &Bson, default_db: &str) -> Result<OutStage> {
    let (into, d) = match v {
        Bson::String(_) => (v.clone(), Document::new()),
        Bson::Document(d) => (
            d.get("into").cloned().ok_or_else(|| {
                err(
                    40414,
                    "BSON field '$merge.into' is missing but a required field",
                )
            })?,
            d.clone(),
        ),
        _ => return Err(err(51182, "$merge requires a string or object argument")),
    };
    let (db, coll) = namespace(&into, default_db, "$merge")?;
    let on = match d.get("on") {
        None => vec!["_id".to_string()],
        Some(Bson::String(s)) => vec![s.clone()],
        Some(Bson::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|e| match e {
                Bson::String(s) => Ok(s.clone()),
                _ => Err(err(51134, "$merge 'on' array elements must be strings")),
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(err(
                51186,
                "$merge 'on' field must be either a string or an array of strings",
            ));
        }
    };
    let when_matched = match d.get("whenMatched") {
        None => Bson::String("merge".into()),
        Some(Bson::String(s))
            if matches!(s.as_str(), "replace" | "keepExisting" | "merge" | "fail") =>
        {
            Bson::String(s.clone())
        }
        Some(Bson::Array(a)) => Bson::Array(a.clone()),
        Some(other) => {
            return Err(bad(format!(
                "Enumeration value '{other}' for field 'whenMatched' is not a valid value."
            )));
        }
    };
    let when_not_matched = match d.get("whenNotMatched") {
        None => "insert".to_string(),
        Some(Bson::String(s)) if matches!(s.as_str(), "insert" | "discard" | "fail") => s.clone(),
        Some(other) => {
            return Err(bad(format!(
                "Enumeration value '{other}' for field 'whenNotMatched' is not a valid value."
            )));
        }
    };
    Ok(OutStage::Merge {
        db,
        coll,
        on,
        when_matched,
        when_not_matched,
    })
}

enum PerDoc {
    One(Document),
    Dropped,
    Other,
}

/// Sets `value` at `path`, creating documents and mapping over arrays as `$addFields` does;
/// `None` removes the field.
fn set_field(d: &mut Document, path: &[String], value: Option<Bson>) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match value {
            Some(v) => {
                d.insert(head.clone(), v);
            }
            None => {
                d.remove(head);
            }
        }
        return;
    }
    match d.get_mut(head) {
        Some(Bson::Document(sub)) => set_field(sub, rest, value),
        Some(Bson::Array(a)) => {
            for e in a.iter_mut() {
                set_in_value(e, rest, value.clone());
            }
        }
        _ => {
            if value.is_none() {
                return;
            }
            let mut sub = Document::new();
            set_field(&mut sub, rest, value);
            d.insert(head.clone(), sub);
        }
    }
}

fn set_in_value(v: &mut Bson, path: &[String], value: Option<Bson>) {
    match v {
        Bson::Document(d) => set_field(d, path, value),
        Bson::Array(a) => {
            for e in a.iter_mut() {
                set_in_value(e, path, value.clone());
            }
        }
        other => {
            let mut sub = Document::new();
            set_field(&mut sub, path, value);
            *other = Bson::Document(sub);
        }
    }
}

fn get_literal<'a>(d: &'a Document, path: &[String]) -> Option<&'a Bson> {
    let (head, rest) = path.split_first()?;
    let mut cur = d.get(head)?;
    for p in rest {
        cur = match cur {
            Bson::Document(sub) => sub.get(p)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn per_doc(stage: &Stage, doc: Document, vars: &Vars) -> Result<PerDoc> {
    Ok(match stage {
        Stage::Match(f) => {
            if f.try_matches_with(&doc, Some(vars))? {
                PerDoc::One(doc)
            } else {
                PerDoc::Dropped
            }
        }
        Stage::Project(p) => PerDoc::One(p.apply_with(&doc, None, vars)?),
        Stage::AddFields(fields) => {
            let mut values = Vec::with_capacity(fields.len());
            for (path, e) in fields {
                values.push((path, e.eval(&doc, vars)?));
            }
            let mut out = doc;
            for (path, v) in values {
                set_field(&mut out, path, v);
            }
            PerDoc::One(out)
        }
        Stage::ReplaceRoot(e) => match e.eval(&doc, vars)? {
            Some(Bson::Document(d)) => PerDoc::One(d),
            other => {
                return Err(err(
                    40228,
                    format!(
                        "'replacement document' must evaluate to an object, but resulting value was: {}. Type of resulting value: '{}'. Input document: {doc}",
                        other
                            .as_ref()
                            .map_or_else(|| "MISSING".to_string(), ToString::to_string),
                        crate::expr::type_name(other.as_ref())
                    ),
                ));
            }
        },
        Stage::Redact(e) => match redact(&doc, &doc, e, vars)? {
            Some(d) => PerDoc::One(d),
            None => PerDoc::Dropped,
        },
        _ => PerDoc::Other,
    })
}

fn redact(root: &Document, cur: &Document, e: &Expr, vars: &Vars) -> Result<Option<Document>> {
    let mut v = vars.clone();
    v.set_current(Some(cur.clone()));
    match e.eval(root, &v)? {
        Some(Bson::String(s)) if s == "keep" => Ok(Some(cur.clone())),
        Some(Bson::String(s)) if s == "prune" => Ok(None),
        Some(Bson::String(s)) if s == "descend" => {
            let mut out = Document::new();
            for (k, val) in cur {
                match val {
                    Bson::Document(sub) => {
                        if let Some(r) = redact(root, sub, e, vars)? {
                            out.insert(k.clone(), r);
                        }
                    }
                    Bson::Array(a) => {
                        let mut items = Vec::new();
                        for item in a {
                            match item {
                                Bson::Document(sub) => {
                                    if let Some(r) = redact(root, sub, e, vars)? {
                                        items.push(Bson::Document(r));
                                    }
                                }
                                other => items.push(other.clone()),
                            }
                        }
                        out.insert(k.clone(), items);
                    }
                    other => {
                        out.insert(k.clone(), other.clone());
                    }
                }
            }
            Ok(Some(out))
        }
        _ => Err(err(
            17053,
            "$redact's expression should not return anything aside from the variables $$KEEP, $$DESCEND, and $$PRUNE",
        )),
    }
}

fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Values a `$lookup` local field yields: array elements are matched individually; a missing
/// value matches null.
fn local_values(d: &Document, path: &str) -> Vec<Bson> {
    let mut out = Vec::new();
    for v in doc::path::lookup_all(d, path) {
        match v {
            None => out.push(Bson::Null),
            Some(Bson::Array(a)) => {
                if a.is_empty() {
                    out.push(Bson::Array(Vec::new()));
                }
                out.extend(a);
            }
            Some(v) => out.push(v),
        }
    }
    if out.is_empty() {
        out.push(Bson::Null);
    }
    out
}

/// What every stage of one run shares.
struct Run {
    env: SharedEnv,
    vars: Vars,
    limits: crate::spill::Limits,
}

/// A stage that must see all of its input before it yields: it runs when its first
/// output is asked for.
struct Blocking<F> {
    pending: Option<(DocIter, F)>,
    out: Option<DocIter>,
}

impl<F: FnOnce(DocIter) -> Result<DocIter>> Iterator for Blocking<F> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if let Some((input, f)) = self.pending.take() {
            match f(input) {
                Ok(it) => self.out = Some(it),
                Err(e) => return Some(Err(e)),
            }
        }
        self.out.as_mut()?.next()
    }
}

fn blocking(
    input: DocIter,
    f: impl FnOnce(DocIter) -> Result<DocIter> + Send + 'static,
) -> DocIter {
    Box::new(Blocking {
        pending: Some((input, f)),
        out: None,
    })
}

/// Skips `n` documents (`$skip`, and a find's or count's `skip`). Errors are not skipped:
/// they end the read.
pub fn skip_docs(input: DocIter, n: usize) -> DocIter {
    let mut left = n;
    Box::new(input.filter(move |r| {
        if r.is_ok() && left > 0 {
            left -= 1;
            false
        } else {
            true
        }
    }))
}

fn vec_iter(docs: Vec<Document>) -> DocIter {
    Box::new(docs.into_iter().map(Ok))
}

/// The input of `$facet`, once for each sub-pipeline: held in memory up to the sort
/// limit, and past it (with `allowDiskUse`) written out in chunks, one run per
/// sub-pipeline, that each reads back in order.
fn tee(input: DocIter, n: usize, run: &Run) -> Result<Vec<DocIter>> {
    let mut runs: Vec<Vec<crate::spill::Run>> = (0..n).map(|_| Vec::new()).collect();
    let mut buf = Vec::new();
    let mut bytes = 0usize;
    for d in input {
        run.env.check_interrupt()?;
        let d = d?;
        bytes += crate::spill::doc_size(&d);
        buf.push(d);
        if bytes > run.limits.sort_bytes {
            let Some(dir) = run
                .limits
                .spill_dir
                .as_ref()
                .filter(|_| run.limits.allow_disk_use)
            else {
                return Err(err(
                    4_031_700,
                    format!(
                        "$facet's input exceeded the memory limit of {} bytes; pass allowDiskUse:true to opt in to spilling it",
                        run.limits.sort_bytes
                    ),
                ));
            };
            for r in &mut runs {
                r.push(crate::spill::Run::write(dir, buf.iter())?);
            }
            buf.clear();
            bytes = 0;
        }
    }
    Ok(runs
        .into_iter()
        .map(|rs| {
            let tail = buf.clone().into_iter().map(Ok);
            Box::new(
                rs.into_iter()
                    .flat_map(crate::spill::RunDocs::new)
                    .chain(tail),
            ) as DocIter
        })
        .collect())
}

fn stage_iter(p: Arc<Pipeline>, i: usize, input: DocIter, run: Arc<Run>) -> DocIter {
    macro_rules! stage {
        () => {
            &p.stages[i].1
        };
    }
    match stage!() {
        Stage::Match(_)
        | Stage::Project(_)
        | Stage::AddFields(_)
        | Stage::ReplaceRoot(_)
        | Stage::Redact(_) => {
            Box::new(input.filter_map(
                move |r| match r.and_then(|d| per_doc(stage!(), d, &run.vars)) {
                    Ok(PerDoc::One(d)) => Some(Ok(d)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                },
            ))
        }
        Stage::Limit(n) => Box::new(input.take(*n)),
        Stage::Skip(n) => skip_docs(input, *n),
        Stage::Sort(_) => {
            // `$sort` then `$limit` is a top-k sort: only k documents are held.
            let top = match p.stages.get(i + 1) {
                Some((_, Stage::Limit(k))) => Some(*k),
                _ => None,
            };
            blocking(input, move |input| {
                let Stage::Sort(spec) = stage!() else {
                    unreachable!("a sort stage")
                };
                let mut sorter = crate::sort::Sorter::new(spec.clone(), &run.limits, top);
                for d in input {
                    run.env.check_interrupt()?;
                    sorter.push(d?)?;
                }
                sorter.finish()
            })
        }
        Stage::Group(..) => blocking(input, move |input| {
            let Stage::Group(id, accs) = stage!() else {
                unreachable!("a group stage")
            };
            let vars = &run.vars;
            let mut g = Grouper::limited(accs, &run.limits);
            for d in input {
                run.env.check_interrupt()?;
                let d = d?;
                let key = id.eval(&d, vars)?.unwrap_or(Bson::Null);
                g.add(key, &d, vars)?;
            }
            g.finish_iter("_id", vars.shared_collation())
        }),
        Stage::Count(_) => blocking(input, move |input| {
            let Stage::Count(name) = stage!() else {
                unreachable!("a count stage")
            };
            let mut n = 0i64;
            for d in input {
                d?;
                n += 1;
            }
            if n == 0 {
                return Ok(vec_iter(Vec::new()));
            }
            let mut d = Document::new();
            d.insert(name.clone(), crate::expr::num::narrow(n));
            Ok(vec_iter(vec![d]))
        }),
        Stage::Unwind { .. } => Box::new(input.flat_map(move |r| {
            let Stage::Unwind {
                path,
                index,
                preserve,
            } = stage!()
            else {
                unreachable!("an unwind stage")
            };
            let d = match r {
                Ok(d) => d,
                Err(e) => return vec![Err(e)],
            };
            unwind(d, path, index.as_deref(), *preserve)
        })),
        Stage::Lookup(_) => {
            let mut cache: Option<Arc<Vec<Document>>> = None;
            Box::new(input.map(move |r| {
                let Stage::Lookup(l) = stage!() else {
                    unreachable!("a lookup stage")
                };
                lookup_one(l, r?, &run, &mut cache)
            }))
        }
        Stage::Facet(_) => blocking(input, move |input| {
            let Stage::Facet(facets) = stage!() else {
                unreachable!("a facet stage")
            };
            let inputs = tee(input, facets.len(), &run)?;
            let mut d = Document::new();
            for ((name, fp), inp) in facets.iter().zip(inputs) {
                let r: Vec<Document> =
                    fp.stream(inp, &run.env, &run.vars).collect::<Result<_>>()?;
                d.insert(
                    name.clone(),
                    Bson::Array(r.into_iter().map(Bson::Document).collect()),
                );
            }
            Ok(vec_iter(vec![d]))
        }),
        Stage::Bucket { .. } => blocking(input, move |input| {
            let Stage::Bucket {
                group_by,
                boundaries,
                default,
                output,
            } = stage!()
            else {
                unreachable!("a bucket stage")
            };
            let vars = &run.vars;
            let mut g = Grouper::new(output);
            for d in input {
                run.env.check_interrupt()?;
                let d = d?;
                let v = group_by.eval(&d, vars)?.unwrap_or(Bson::Null);
                let same = |b: &Bson| doc::compare::type_rank(b) == doc::compare::type_rank(&v);
                let idx = (0..boundaries.len() - 1).find(|&i| {
                    same(&boundaries[i])
                        && cmp_values_with(&v, &boundaries[i], vars.collation()).is_ge()
                        && cmp_values_with(&v, &boundaries[i + 1], vars.collation()).is_lt()
                });
                let key = match (idx, default) {
                    (Some(i), _) => boundaries[i].clone(),
                    (None, Some(def)) => def.clone(),
                    (None, None) => {
                        return Err(err(
                            40066,
                            "$switch could not find a matching branch for an input, and no default was specified.",
                        ));
                    }
                };
                g.add(key, &d, vars)?;
            }
            let mut res = g.finish("_id");
            let pos = |d: &Document| {
                let id = d.get("_id").cloned().unwrap_or(Bson::Null);
                boundaries
                    .iter()
                    .position(|b| values_equal_with(b, &id, vars.collation()))
                    .unwrap_or(usize::MAX)
            };
            res.sort_by_key(pos);
            Ok(vec_iter(res))
        }),
        Stage::BucketAuto { .. } => blocking(input, move |input| {
            let Stage::BucketAuto {
                group_by,
                buckets,
                output,
            } = stage!()
            else {
                unreachable!("a bucketAuto stage")
            };
            bucket_auto(input, group_by, *buckets, output, &run).map(vec_iter)
        }),
        Stage::SortByCount(_) => blocking(input, move |input| {
            let Stage::SortByCount(e) = stage!() else {
                unreachable!("a sortByCount stage")
            };
            let vars = &run.vars;
            let accs = parse_accumulators(&bson::doc! {"count": {"$sum": 1}})?;
            let mut g = Grouper::limited(&accs, &run.limits);
            for d in input {
                run.env.check_interrupt()?;
                let d = d?;
                g.add(e.eval(&d, vars)?.unwrap_or(Bson::Null), &d, vars)?;
            }
            let mut sorter = crate::sort::Sorter::new(
                SortSpec::parse(&bson::doc! {"count": -1})?,
                &run.limits,
                None,
            );
            for d in g.finish_iter("_id", vars.shared_collation())? {
                sorter.push(d?)?;
            }
            sorter.finish()
        }),
        Stage::Sample(_) => blocking(input, move |input| {
            let Stage::Sample(n) = stage!() else {
                unreachable!("a sample stage")
            };
            // Each document gets a random key and a top-k sort keeps the `n` smallest: the
            // sample held in memory within the sort limit, spilled past it with
            // allowDiskUse (MongoDB samples a large share of a collection by a sort too).
            let spec = crate::sort::SortSpec::parse(&bson::doc! {"r": 1})?;
            let mut sorter = crate::sort::Sorter::new(spec, &run.limits, Some(*n));
            for d in input {
                run.env.check_interrupt()?;
                sorter.push(bson::doc! {"r": (random_u64() >> 1) as i64, "d": d?})?;
            }
            let sampled = sorter.finish()?;
            Ok(Box::new(sampled.map(|w| match w?.remove("d") {
                Some(Bson::Document(d)) => Ok(d),
                _ => Err(MongoError::internal("$sample lost a document")),
            })))
        }),
        Stage::Documents(_) => blocking(input, move |_| {
            let Stage::Documents(e) = stage!() else {
                unreachable!("a documents stage")
            };
            documents(e, &run.vars).map(vec_iter)
        }),
        Stage::Densify(_) => blocking(input, move |input| {
            let Stage::Densify(d) = stage!() else {
                unreachable!("a densify stage")
            };
            d.run(input, &run)
        }),
        Stage::GraphLookup(_) => {
            let mut cache: Option<Arc<Vec<Document>>> = None;
            Box::new(input.map(move |r| {
                let Stage::GraphLookup(g) = stage!() else {
                    unreachable!("a graphLookup stage")
                };
                run.env.check_interrupt()?;
                g.apply(r?, &run, &mut cache)
            }))
        }
        Stage::SetWindowFields(_) => blocking(input, move |input| {
            let Stage::SetWindowFields(w) = stage!() else {
                unreachable!("a setWindowFields stage")
            };
            w.run(input, &run)
        }),
        Stage::UnionWith { .. } => {
            let other = blocking(Box::new(std::iter::empty()), move |_| {
                let Stage::UnionWith { db, coll, pipeline } = stage!() else {
                    unreachable!("a unionWith stage")
                };
                let other = match coll {
                    Some(c) => run.env.collection_docs(db, c)?,
                    None => Vec::new(),
                };
                Ok(match pipeline {
                    Some(sub) => sub.stream(vec_iter(other), &run.env, &run.vars),
                    None => vec_iter(other),
                })
            });
            Box::new(input.chain(other))
        }
    }
}

fn unwind(
    d: Document,
    path: &[String],
    index: Option<&str>,
    preserve: bool,
) -> Vec<Result<Document>> {
    let (items, keep) = match get_literal(&d, path) {
        Some(Bson::Array(a)) if !a.is_empty() => (Some(a.clone()), false),
        Some(Bson::Array(_)) | Some(Bson::Null) | None => (None, preserve),
        Some(_) => (None, true),
    };
    let mut out = Vec::new();
    match items {
        Some(a) => {
            for (i, e) in a.into_iter().enumerate() {
                let mut nd = d.clone();
                set_field(&mut nd, path, Some(e));
                if let Some(ix) = index {
                    nd.insert(ix, Bson::Int64(i as i64));
                }
                out.push(Ok(nd));
            }
        }
        None if keep => {
            let mut nd = d;
            if let Some(ix) = index {
                nd.insert(ix, Bson::Null);
            }
            out.push(Ok(nd));
        }
        None => {}
    }
    out
}

/// A foreign collection small enough to keep for every outer document of a `$lookup`
/// that cannot use a join predicate (a quarter of the sort limit).
fn cached_foreign(
    cache: &mut Option<Arc<Vec<Document>>>,
    run: &Run,
    db: &str,
    coll: &str,
) -> Result<Arc<Vec<Document>>> {
    if let Some(c) = cache {
        return Ok(c.clone());
    }
    let docs = run.env.collection_docs(db, coll)?;
    let docs = Arc::new(docs);
    let bytes: usize = docs.iter().map(crate::spill::doc_size).sum();
    if bytes <= run.limits.sort_bytes / 4 {
        *cache = Some(docs.clone());
    }
    Ok(docs)
}

fn lookup_one(
    l: &Lookup,
    mut d: Document,
    run: &Run,
    cache: &mut Option<Arc<Vec<Document>>>,
) -> Result<Document> {
    run.env.check_interrupt()?;
    let vars = &run.vars;
    let from = l.from.as_deref();
    // The join predicate, when there is one, goes to the foreign collection (and its
    // indexes); otherwise every foreign document is a candidate.
    let join = match (&l.local, &l.foreign) {
        (Some(lf), Some(ff)) => {
            let mut f = Document::new();
            f.insert(ff.clone(), bson::doc! {"$in": local_values(&d, lf)});
            Some(f)
        }
        _ => None,
    };
    let mut sub_vars: Option<Vars> = None;
    if l.pipeline.is_some() {
        let mut v = vars.clone();
        for (name, e) in &l.lets {
            v.set(name, e.eval(&d, vars)?.unwrap_or(Bson::Null));
        }
        sub_vars = Some(v);
    }
    let prefilter = match (&join, &l.eq_prefilter, &sub_vars) {
        (None, Some((field, var)), Some(v)) => match v.get(var) {
            // Only scalars: `{field: {$in: [v]}}` is then a superset of `$eq`'s matches
            // (an array or a document could match differently through array paths, or
            // read as operators).
            Some(val)
                if !matches!(
                    val,
                    Bson::RegularExpression(_) | Bson::Array(_) | Bson::Document(_)
                ) =>
            {
                let mut f = Document::new();
                f.insert(field.clone(), bson::doc! {"$in": [val.clone()]});
                Some(f)
            }
            _ => None,
        },
        _ => None,
    };
    let candidates: Vec<Document> = match (from, join.or(prefilter)) {
        (None, _) => Vec::new(),
        (Some(coll), Some(f)) => {
            let filter = Filter::parse(&f)?.with_collation(vars.shared_collation());
            match run.env.matching_docs(&l.db, coll, &filter)? {
                Some(docs) => docs,
                None => {
                    let mut out = Vec::new();
                    for fd in cached_foreign(cache, run, &l.db, coll)?.iter() {
                        if filter.try_matches(fd)? {
                            out.push(fd.clone());
                        }
                    }
                    out
                }
            }
        }
        (Some(coll), None) => cached_foreign(cache, run, &l.db, coll)?.as_ref().clone(),
    };
    let matched: Vec<Document> = match (&l.pipeline, &sub_vars) {
        (Some(sub), Some(v)) => {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            for r in sub.stream(vec_iter(candidates), &run.env, v) {
                run.env.check_interrupt()?;
                let m = r?;
                bytes += crate::spill::doc_size(&m);
                if bytes > run.limits.sort_bytes {
                    return Err(err(
                        4568,
                        format!(
                            "Total size of documents in {} matching pipeline's $lookup stage exceeds {} bytes",
                            from.unwrap_or(""),
                            run.limits.sort_bytes
                        ),
                    ));
                }
                out.push(m);
            }
            out
        }
        _ => candidates,
    };
    set_field(
        &mut d,
        &l.as_,
        Some(Bson::Array(
            matched.into_iter().map(Bson::Document).collect(),
        )),
    );
    Ok(d)
}

/// `$bucketAuto`: the input is sorted by its `groupBy` value through the external sorter
/// (so it spills like `$sort`), then cut into buckets of about equal size that never split
/// equal values.
fn bucket_auto(
    input: DocIter,
    group_by: &Expr,
    buckets: usize,
    output: &[AccSpec],
    run: &Run,
) -> Result<Vec<Document>> {
    let vars = &run.vars;
    // Each document travels as {k: [value], d: doc}: a one-element array makes the sort
    // key the value itself, compared whole (arrays included) as `$bucketAuto` orders them.
    let spec = SortSpec::parse(&bson::doc! {"k": 1})?.with_collation(vars.shared_collation());
    let mut sorter = crate::sort::Sorter::new(spec, &run.limits, None);
    let mut n = 0usize;
    for d in input {
        run.env.check_interrupt()?;
        let d = d?;
        let v = group_by.eval(&d, vars)?.unwrap_or(Bson::Null);
        sorter.push(bson::doc! {"k": [v], "d": d})?;
        n += 1;
    }
    let per = n.div_ceil(buckets).max(1);
    let finish = |g: Grouper<'_>, min: Bson, max: Bson, out: &mut Vec<Document>| {
        for mut r in g.finish("_id") {
            r.remove("_id");
            let mut nd = Document::new();
            nd.insert("_id", bson::doc! {"min": min.clone(), "max": max.clone()});
            nd.extend(r);
            out.push(nd);
        }
    };
    let mut out = Vec::new();
    // The open bucket: its first value, its last value, its size and its accumulators.
    let mut cur: Option<(Bson, Bson, usize, Grouper<'_>)> = None;
    for item in sorter.finish()? {
        run.env.check_interrupt()?;
        let mut item = item?;
        let v = match item.get_array("k") {
            Ok(a) => a.first().cloned().unwrap_or(Bson::Null),
            Err(_) => Bson::Null,
        };
        let d = match item.remove("d") {
            Some(Bson::Document(d)) => d,
            _ => Document::new(),
        };
        let boundary = cur.as_ref().is_some_and(|(_, last, size, _)| {
            *size >= per && !values_equal_with(last, &v, vars.collation())
        });
        if boundary {
            if let Some((min, _, _, g)) = cur.take() {
                finish(g, min, v.clone(), &mut out);
            }
        }
        let (_, last, size, g) =
            cur.get_or_insert_with(|| (v.clone(), v.clone(), 0, Grouper::new(output)));
        g.add(Bson::Null, &d, vars)?;
        *last = v;
        *size += 1;
    }
    if let Some((min, last, _, g)) = cur {
        finish(g, min, last, &mut out);
    }
    Ok(out)
}

fn documents(e: &Expr, vars: &Vars) -> Result<Vec<Document>> {
    let empty = Document::new();
    match e.eval(&empty, vars)? {
        Some(Bson::Array(a)) => a
            .into_iter()
            .map(|v| match v {
                Bson::Document(d) => Ok(d),
                other => Err(err(
                    40228,
                    format!(
                        "$documents: elements must be objects, got {}",
                        crate::expr::type_name(Some(&other))
                    ),
                )),
            })
            .collect(),
        other => Err(err(
            5858203,
            format!(
                "$documents must evaluate to an array of objects, got {}",
                crate::expr::type_name(other.as_ref())
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
