//! `$graphLookup`: a breadth-first search over a collection of the same database, one
//! query per depth (`connectToField $in` the frontier's values), through an index when
//! one serves it.

use std::collections::HashSet;
use std::sync::Arc;

use bson::{Bson, Document};
use errors::{MongoError, Result};

use super::group::canonical_key;
use super::{Run, cached_foreign, dotted, set_field};
use crate::expr::{Expr, num, type_name};
use crate::filter::Filter;

fn err(code: i32, msg: impl Into<String>) -> MongoError {
    MongoError::with_code(code, msg)
}

/// The most bytes one document's search may hold (mongod's 100 MiB; 8.0 ignores
/// `allowDiskUse` here).
const MAX_BYTES: usize = 100 * 1024 * 1024;

/// A parsed `$graphLookup`.
#[derive(Debug, Clone)]
pub(crate) struct GraphLookup {
    db: String,
    from: String,
    start_with: Expr,
    connect_from: String,
    connect_to: String,
    as_: Vec<String>,
    max_depth: Option<i64>,
    depth_field: Option<Vec<String>>,
    restrict: Option<Document>,
}

impl GraphLookup {
    pub(crate) fn parse(v: &Bson, default_db: &str) -> Result<GraphLookup> {
        let Bson::Document(spec) = v else {
            return Err(err(
                9,
                format!(
                    "the $graphLookup stage specification must be an object, but found {}",
                    type_name(Some(v))
                ),
            ));
        };
        let mut from = None;
        let mut start_with = None;
        let mut strings: [Option<String>; 4] = [None, None, None, None];
        let mut max_depth = None;
        let mut restrict = None;
        for (k, v) in spec {
            let slot = match k.as_str() {
                "as" => Some(0),
                "connectFromField" => Some(1),
                "connectToField" => Some(2),
                "depthField" => Some(3),
                _ => None,
            };
            if let Some(i) = slot {
                let Bson::String(s) = v else {
                    return Err(err(
                        40103,
                        format!(
                            "expected string as argument for {k}, found: {}",
                            type_name(Some(v))
                        ),
                    ));
                };
                if s.starts_with('$') {
                    return Err(err(16410, "FieldPath field names may not start with '$'."));
                }
                strings[i] = Some(s.clone()).filter(|s| !s.is_empty());
                continue;
            }
            match k.as_str() {
                "from" => {
                    let Bson::String(s) = v else {
                        return Err(err(
                            9,
                            format!(
                                "$graphLookup 'from' field must be a string, but found {}",
                                type_name(Some(v))
                            ),
                        ));
                    };
                    if s.is_empty() || s.starts_with('.') || s.contains('\0') || s.contains('$') {
                        return Err(err(
                            73,
                            format!("invalid $graphLookup namespace: {default_db}.{s}"),
                        ));
                    }
                    from = Some(s.clone());
                }
                "startWith" => start_with = Some(Expr::parse(v)?),
                "maxDepth" => {
                    if num::kind(v).is_none() {
                        return Err(err(
                            40100,
                            format!(
                                "maxDepth must be numeric, found type: {}",
                                type_name(Some(v))
                            ),
                        ));
                    }
                    let d = doc::compare::as_f64(v).unwrap_or(0.0);
                    if d < 0.0 {
                        return Err(err(
                            40101,
                            format!("maxDepth requires a nonnegative argument, found: {v}"),
                        ));
                    }
                    match num::int(v).filter(|i| *i as f64 == d) {
                        Some(i) => max_depth = Some(i),
                        None => {
                            return Err(err(
                                40102,
                                format!("maxDepth could not be represented as a long long: {v}"),
                            ));
                        }
                    }
                }
                "restrictSearchWithMatch" => {
                    let Bson::Document(m) = v else {
                        return Err(err(
                            40185,
                            format!(
                                "restrictSearchWithMatch must be an object, found {}",
                                type_name(Some(v))
                            ),
                        ));
                    };
                    Filter::parse(m).map_err(|e| {
                        MongoError::with_code(
                            e.code,
                            format!(
                                "Failed to parse 'restrictSearchWithMatch' option to $graphLookup :: caused by :: {}",
                                e.message
                            ),
                        )
                    })?;
                    restrict = Some(m.clone());
                }
                other => {
                    return Err(err(
                        40104,
                        format!("Unknown argument to $graphLookup: {other}"),
                    ));
                }
            }
        }
        let Some(from) = from else {
            return Err(err(9, "must specify 'from' field for a $graphLookup"));
        };
        let [Some(as_), Some(connect_from), Some(connect_to), depth_field] = strings else {
            return Err(missing());
        };
        let Some(start_with) = start_with else {
            return Err(missing());
        };
        Ok(GraphLookup {
            db: default_db.to_string(),
            from,
            start_with,
            connect_from,
            connect_to,
            as_: dotted(&as_),
            max_depth,
            depth_field: depth_field.map(|f| dotted(&f)),
            restrict,
        })
    }

    /// The search from one input document; the found documents go into `as`.
    pub(crate) fn apply(
        &self,
        mut d: Document,
        run: &Run,
        cache: &mut Option<Arc<Vec<Document>>>,
    ) -> Result<Document> {
        let vars = &run.vars;
        let coll = vars.collation();
        let mut frontier: Vec<Bson> = match self.start_with.eval(&d, vars)? {
            None => Vec::new(),
            Some(Bson::Array(a)) => a,
            Some(v) => vec![v],
        };
        let mut queried: HashSet<String> = HashSet::new();
        frontier.retain(|v| queried.insert(canonical_key(v, coll)));
        let mut visited: HashSet<String> = HashSet::new();
        let mut found = Vec::new();
        let mut bytes = 0usize;
        let mut depth = 0i64;
        while !frontier.is_empty() {
            run.env.check_interrupt()?;
            let mut clauses = vec![
                Bson::Document(
                    bson::doc! {&self.connect_to: {"$in": std::mem::take(&mut frontier)}},
                ),
                // A null value matches a null field, never a missing one.
                Bson::Document(bson::doc! {&self.connect_to: {"$exists": true}}),
            ];
            if let Some(r) = &self.restrict {
                clauses.push(Bson::Document(r.clone()));
            }
            let filter = Filter::parse(&bson::doc! {"$and": clauses})?
                .with_collation(vars.shared_collation());
            let matched = match run.env.matching_docs(&self.db, &self.from, &filter)? {
                Some(docs) => docs,
                None => {
                    let mut out = Vec::new();
                    for fd in cached_foreign(cache, run, &self.db, &self.from)?.iter() {
                        if filter.try_matches_with(fd, Some(vars))? {
                            out.push(fd.clone());
                        }
                    }
                    out
                }
            };
            for mut m in matched {
                let Some(id) = m.get("_id") else {
                    return Err(err(
                        40271,
                        format!(
                            "Documents in the '{}.{}' namespace must contain an _id for de-duplication in $graphLookup",
                            self.db, self.from
                        ),
                    ));
                };
                if !visited.insert(canonical_key(id, coll)) {
                    continue;
                }
                if self.max_depth.is_none_or(|max| depth < max) {
                    for v in values_at(&m, &self.connect_from) {
                        if queried.insert(canonical_key(&v, coll)) {
                            frontier.push(v);
                        }
                    }
                }
                if let Some(f) = &self.depth_field {
                    set_field(&mut m, f, Some(Bson::Int64(depth)));
                }
                bytes += crate::spill::doc_size(&m);
                if bytes > MAX_BYTES {
                    return Err(err(
                        40099,
                        "$graphLookup reached maximum memory consumption",
                    ));
                }
                found.push(Bson::Document(m));
            }
            depth += 1;
        }
        set_field(&mut d, &self.as_, Some(Bson::Array(found)));
        Ok(d)
    }
}

fn missing() -> MongoError {
    err(
        40105,
        "$graphLookup requires 'from', 'as', 'startWith', 'connectFromField', and 'connectToField' to be specified.",
    )
}

/// Every value at `path` in `d`, arrays expanded; nothing for a missing field.
fn values_at(d: &Document, path: &str) -> Vec<Bson> {
    let mut out = Vec::new();
    for v in doc::path::lookup_all(d, path).into_iter().flatten() {
        match v {
            Bson::Array(a) => out.extend(a),
            v => out.push(v),
        }
    }
    out
}
