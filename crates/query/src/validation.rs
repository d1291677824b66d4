//! Document validation: a collection's `validator`, and the `errInfo.details` MongoDB 5.0+
//! reports for a document that fails it.
//!
//! Matching uses the ordinary [`Filter`]. The details are generated only for a failing
//! document, by walking the validator as written (so `specifiedAs` shows each clause exactly
//! as the user gave it) and asking, clause by clause, whether it holds and why not. The
//! shapes follow MongoDB's `doc_validation_error.cpp`: reason strings, field order, the
//! parser's fixed order of `$jsonSchema` keywords, sorted `missingProperties`, at most ten
//! `consideredValues`.

use bson::{Bson, Document, doc};
use doc::compare::{as_number, type_name, values_equal};
use errors::{MongoError, Result};

use crate::expr::{Expr, Vars};
use crate::filter::Filter;

/// The most `consideredValues` an error lists.
const MAX_CONSIDERED: usize = 10;

/// A parsed collection validator.
#[derive(Debug, Clone)]
pub struct Validator {
    source: Document,
    filter: Filter,
}

/// The context MongoDB puts in front of every validator parse error.
fn context(e: MongoError) -> MongoError {
    MongoError {
        message: format!(
            "Parsing of collection validator failed :: caused by :: {}",
            e.message
        ),
        ..e
    }
}

impl Validator {
    /// Parses a `validator` option.
    ///
    /// # Errors
    /// The filter's parse errors, and MongoDB's errors for operators a validator may not
    /// use (`$where`, `$text`, `$near`, `$nearSphere`, `$geoNear`, `$function`), each as
    /// "Parsing of collection validator failed :: caused by :: ...".
    pub fn parse(v: &Document) -> Result<Validator> {
        check_allowed(v).map_err(context)?;
        let filter = Filter::parse(v).map_err(context)?;
        Ok(Validator {
            source: v.clone(),
            filter,
        })
    }

    /// The validator as written.
    pub fn source(&self) -> &Document {
        &self.source
    }

    /// Whether `doc` passes. A validator whose evaluation fails (say `$divide` by zero)
    /// fails the document, as in MongoDB.
    pub fn matches(&self, doc: &Document) -> bool {
        self.filter.try_matches(doc).unwrap_or(false)
    }

    /// Why `doc` fails: the `details` of `errInfo`.
    pub fn details(&self, doc: &Document) -> Document {
        let clauses: Vec<(&String, &Bson)> = self
            .source
            .iter()
            .filter(|(k, _)| *k != "$comment")
            .collect();
        if clauses.len() == 1 {
            let (k, v) = clauses[0];
            return clause(k, v, doc, false).unwrap_or_else(unknown_failure);
        }
        // Several top-level clauses are an implicit `$and`.
        let mut failed = Vec::new();
        for (i, (k, v)) in clauses.iter().enumerate() {
            if let Some(e) = clause(k, v, doc, false) {
                failed.push(Bson::Document(doc! {"index": i as i32, "details": e}));
            }
        }
        doc! {"operatorName": "$and", "clausesNotSatisfied": failed}
    }

    /// The whole `errInfo`: `{failingDocumentId, details}`.
    pub fn err_info(&self, doc: &Document) -> Document {
        doc! {
            "failingDocumentId": doc.get("_id").cloned().unwrap_or(Bson::Null),
            "details": self.details(doc),
        }
    }
}

/// For a document the walk finds no failing clause in (it should not happen): say so
/// rather than claim a reason.
fn unknown_failure() -> Document {
    doc! {"operatorName": "$and", "clausesNotSatisfied": []}
}

fn bad_value(msg: &str) -> MongoError {
    MongoError::bad_value(msg)
}

/// Refuses what MongoDB refuses inside a validator.
fn check_allowed(v: &Document) -> Result<()> {
    for (k, val) in v {
        match k.as_str() {
            "$where" => return Err(bad_value("$where is not allowed in this context")),
            "$text" => return Err(bad_value("$text is not allowed in this context")),
            "$and" | "$or" | "$nor" => {
                if let Bson::Array(a) = val {
                    for c in a {
                        if let Bson::Document(d) = c {
                            check_allowed(d)?;
                        }
                    }
                }
            }
            "$expr" => check_expr(val)?,
            k if !k.starts_with('$') => {
                if let Bson::Document(ops) = val {
                    check_path_ops(ops)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_path_ops(ops: &Document) -> Result<()> {
    for (op, arg) in ops {
        match op.as_str() {
            "$near" | "$nearSphere" | "$geoNear" => {
                return Err(MongoError::with_code(
                    5626500,
                    "$geoNear, $near, and $nearSphere are not allowed in this context",
                ));
            }
            "$not" | "$elemMatch" => {
                if let Bson::Document(d) = arg {
                    check_path_ops(d)?;
                    check_allowed(d)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_expr(v: &Bson) -> Result<()> {
    match v {
        Bson::Document(d) => {
            for (k, x) in d {
                match k.as_str() {
                    "$function" => {
                        return Err(MongoError::with_code(
                            4660800,
                            "$function cannot be used inside a validator.",
                        ));
                    }
                    "$_internalJsEmit" => {
                        return Err(MongoError::with_code(
                            4660801,
                            "$_internalJsEmit cannot be used inside a validator.",
                        ));
                    }
                    _ => check_expr(x)?,
                }
            }
            Ok(())
        }
        Bson::Array(a) => a.iter().try_for_each(check_expr),
        _ => Ok(()),
    }
}

/// Whether one clause (`{k: v}`) holds for `doc`.
fn holds(k: &str, v: &Bson, doc: &Document) -> bool {
    let mut d = Document::new();
    d.insert(k, v.clone());
    Filter::parse(&d)
        .and_then(|f| f.try_matches(doc))
        .unwrap_or(false)
}

/// The error of one top-level (or logical-child) clause: `Some` when it fails (or, when
/// `inv`, when it holds).
fn clause(k: &str, v: &Bson, doc: &Document, inv: bool) -> Option<Document> {
    match k {
        "$and" | "$or" | "$nor" => logical(k, v, doc, inv),
        "$expr" => expr_clause(v, doc, inv),
        "$jsonSchema" => {
            let ok = holds(k, v, doc);
            match (ok, inv) {
                (false, false) => {
                    let Bson::Document(s) = v else { return None };
                    Some(json_schema(s, doc))
                }
                (true, true) => {
                    Some(doc! {"operatorName": "$jsonSchema", "reason": "schema matched"})
                }
                _ => None,
            }
        }
        "$alwaysFalse" if !inv => Some(doc! {
            "operatorName": "$alwaysFalse",
            "specifiedAs": {"$alwaysFalse": v.clone()},
            "reason": "expression always evaluates to false",
        }),
        "$alwaysTrue" if inv => Some(doc! {
            "operatorName": "$alwaysTrue",
            "specifiedAs": {"$alwaysTrue": v.clone()},
            "reason": "expression always evaluates to true",
        }),
        k if k.starts_with('$') => None,
        path => path_clause(path, v, doc, inv),
    }
}

fn logical(op: &str, v: &Bson, doc: &Document, inv: bool) -> Option<Document> {
    let Bson::Array(children) = v else {
        return None;
    };
    let kids: Vec<(usize, &Document)> = children
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_document().map(|d| (i, d)))
        .collect();
    let child_holds = |d: &Document| {
        d.iter()
            .filter(|(k, _)| *k != "$comment")
            .all(|(k, v)| holds(k, v, doc))
    };
    let child_error = |d: &Document, inv: bool| -> Document {
        let clauses: Vec<(&String, &Bson)> = d.iter().filter(|(k, _)| *k != "$comment").collect();
        if clauses.len() == 1 {
            return clause(clauses[0].0, clauses[0].1, doc, inv).unwrap_or_else(unknown_failure);
        }
        let mut list = Vec::new();
        for (i, (k, v)) in clauses.iter().enumerate() {
            if let Some(e) = clause(k, v, doc, inv) {
                list.push(Bson::Document(doc! {"index": i as i32, "details": e}));
            }
        }
        let field = if inv {
            "clausesSatisfied"
        } else {
            "clausesNotSatisfied"
        };
        doc! {"operatorName": "$and", field: list}
    };
    let entry = |i: usize, d: &Document, inv: bool| -> Bson {
        Bson::Document(doc! {"index": i as i32, "details": child_error(d, inv)})
    };
    match (op, inv) {
        ("$and", false) => {
            if kids.iter().all(|(_, d)| child_holds(d)) {
                return None;
            }
            let failing: Vec<Bson> = kids
                .iter()
                .filter(|(_, d)| !child_holds(d))
                .map(|(i, d)| entry(*i, d, false))
                .collect();
            Some(doc! {"operatorName": "$and", "clausesNotSatisfied": failing})
        }
        ("$and", true) => {
            if !kids.iter().all(|(_, d)| child_holds(d)) {
                return None;
            }
            let all: Vec<Bson> = kids.iter().map(|(i, d)| entry(*i, d, true)).collect();
            Some(doc! {"operatorName": "$and", "clausesSatisfied": all})
        }
        ("$or", false) => {
            if kids.iter().any(|(_, d)| child_holds(d)) {
                return None;
            }
            let all: Vec<Bson> = kids.iter().map(|(i, d)| entry(*i, d, false)).collect();
            Some(doc! {"operatorName": "$or", "clausesNotSatisfied": all})
        }
        ("$or", true) => {
            if !kids.iter().any(|(_, d)| child_holds(d)) {
                return None;
            }
            let matched: Vec<Bson> = kids
                .iter()
                .filter(|(_, d)| child_holds(d))
                .map(|(i, d)| entry(*i, d, true))
                .collect();
            Some(doc! {"operatorName": "$or", "clausesSatisfied": matched})
        }
        ("$nor", false) => {
            if !kids.iter().any(|(_, d)| child_holds(d)) {
                return None;
            }
            let matched: Vec<Bson> = kids
                .iter()
                .filter(|(_, d)| child_holds(d))
                .map(|(i, d)| entry(*i, d, true))
                .collect();
            Some(doc! {"operatorName": "$nor", "clausesSatisfied": matched})
        }
        ("$nor", true) => {
            if kids.iter().any(|(_, d)| child_holds(d)) {
                return None;
            }
            let all: Vec<Bson> = kids.iter().map(|(i, d)| entry(*i, d, false)).collect();
            Some(doc! {"operatorName": "$nor", "clausesNotSatisfied": all})
        }
        _ => None,
    }
}

fn expr_clause(v: &Bson, doc: &Document, inv: bool) -> Option<Document> {
    let specified = doc! {"$expr": v.clone()};
    let result = Expr::parse(v).and_then(|e| e.eval(doc, &Vars::default()));
    match result {
        Ok(r) => {
            let r = r.unwrap_or(Bson::Null);
            let truth = crate::expr::truthy(&r);
            if truth != inv {
                return None;
            }
            let reason = if inv {
                "expression did match"
            } else {
                "expression did not match"
            };
            Some(doc! {
                "operatorName": "$expr",
                "specifiedAs": specified,
                "reason": reason,
                "expressionResult": r,
            })
        }
        Err(e) => Some(doc! {
            "operatorName": "$expr",
            "specifiedAs": specified,
            "reason": "failed to evaluate aggregation expression",
            "details": {"code": e.code, "codeName": e.code_name.clone(), "errmsg": e.message.clone()},
        }),
    }
}

/// Whether a value is an operator document (`{$gt: 1, ...}`), not a literal.
fn is_operator_doc(v: &Bson) -> bool {
    matches!(v, Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')))
}

fn path_clause(path: &str, v: &Bson, doc: &Document, inv: bool) -> Option<Document> {
    if !is_operator_doc(v) {
        // `{a: 1}` is `$eq`, shown as written.
        let spec = doc! {path: v.clone()};
        return op_error(path, "$eq", v, spec, doc, inv);
    }
    let ops = v.as_document()?;
    let ops: Vec<(&String, &Bson)> = ops.iter().filter(|(k, _)| *k != "$options").collect();
    if ops.len() == 1 {
        return single_op(path, ops[0].0, ops[0].1, v, doc, inv);
    }
    // Several operators on one path are an implicit `$and`.
    let mut list = Vec::new();
    for (i, (op, arg)) in ops.iter().enumerate() {
        if let Some(e) = single_op(path, op, arg, v, doc, inv) {
            list.push(Bson::Document(doc! {"index": i as i32, "details": e}));
        }
    }
    if list.is_empty() {
        return None;
    }
    let field = if inv {
        "clausesSatisfied"
    } else {
        "clausesNotSatisfied"
    };
    Some(doc! {"operatorName": "$and", field: list})
}

fn single_op(
    path: &str,
    op: &str,
    arg: &Bson,
    whole: &Bson,
    doc: &Document,
    inv: bool,
) -> Option<Document> {
    if op == "$not" {
        let inner = match arg {
            Bson::Document(_) => path_clause(path, arg, doc, !inv)?,
            other => {
                let spec = doc! {path: {"$regex": other.clone()}};
                op_error(path, "$regex", other, spec, doc, !inv)?
            }
        };
        return Some(doc! {"operatorName": "$not", "details": inner});
    }
    let mut arg_doc = doc! {op: arg.clone()};
    // `$regex` keeps its `$options` beside it.
    if op == "$regex" {
        if let Some(o) = whole.as_document().and_then(|d| d.get("$options")) {
            arg_doc.insert("$options", o.clone());
        }
    }
    let spec = doc! {path: arg_doc.clone()};
    op_error(path, op, &Bson::Document(arg_doc), spec, doc, inv)
}

/// Reasons for an operator failing, and (inside `$not`/`$nor`) holding.
fn reasons(op: &str) -> (&'static str, &'static str) {
    match op {
        "$eq" | "$gt" | "$gte" | "$lt" | "$lte" => ("comparison failed", "comparison succeeded"),
        "$ne" => ("comparison succeeded", "comparison failed"),
        "$in" => (
            "no matching value found in array",
            "matching value found in array",
        ),
        "$nin" => (
            "matching value found in array",
            "no matching value found in array",
        ),
        "$exists" => ("path does not exist", "path does exist"),
        "$type" => ("type did not match", "type did match"),
        "$regex" => (
            "regular expression did not match",
            "regular expression did match",
        ),
        "$mod" => (
            "$mod did not evaluate to expected remainder",
            "$mod did evaluate to expected remainder",
        ),
        "$size" => (
            "array length was not equal to given size",
            "array length was equal to given size",
        ),
        "$elemMatch" => (
            "array did not satisfy the child predicate",
            "array did satisfy the child predicate",
        ),
        "$all" => (
            "array did not contain all specified values",
            "array did contain all specified values",
        ),
        "$bitsAllSet" | "$bitsAnySet" | "$bitsAllClear" | "$bitsAnyClear" => (
            "bitwise operator failed to match",
            "bitwise operator matched successfully",
        ),
        _ => ("expression did not match", "expression did match"),
    }
}

/// The types an operator can consider, for "type did not match" (`None`: any type).
fn expected_types(op: &str) -> Option<&'static [&'static str]> {
    match op {
        "$regex" => Some(&["regex", "string", "symbol"]),
        "$mod" => Some(&["decimal", "double", "int", "long"]),
        "$size" | "$all" | "$elemMatch" => Some(&["array"]),
        "$bitsAllSet" | "$bitsAnySet" | "$bitsAllClear" | "$bitsAnyClear" => {
            Some(&["binData", "decimal", "double", "int", "long"])
        }
        _ => None,
    }
}

/// The values a path clause considers: the leaves the path reaches, an array leaf
/// expanded into its elements unless the operator works on whole arrays.
fn considered(doc: &Document, path: &str, whole_arrays: bool) -> (Vec<Bson>, bool) {
    let mut out = Vec::new();
    let mut expanded = false;
    for v in doc::lookup_all(doc, path).into_iter().flatten() {
        match v {
            Bson::Array(a) if !whole_arrays => {
                expanded = true;
                out.extend(a);
            }
            other => out.push(other),
        }
    }
    (out, expanded)
}

fn put_considered(e: &mut Document, values: Vec<Bson>, expanded: bool) {
    if values.len() == 1 && !expanded {
        e.insert("consideredValue", values.into_iter().next().unwrap());
    } else {
        let truncated = values.len() > MAX_CONSIDERED;
        e.insert(
            "consideredValues",
            values.into_iter().take(MAX_CONSIDERED).collect::<Vec<_>>(),
        );
        if truncated {
            e.insert("consideredValuesTruncated", true);
        }
    }
}

fn put_types(e: &mut Document, field: &str, mut names: Vec<&'static str>) {
    names.sort_unstable();
    names.dedup();
    if names.len() == 1 {
        e.insert(field, names[0]);
    } else {
        e.insert(format!("{field}s"), names);
    }
}

fn op_error(
    path: &str,
    op: &str,
    arg: &Bson,
    spec: Document,
    doc: &Document,
    inv: bool,
) -> Option<Document> {
    let mut probe = Document::new();
    // `{a: 1}` and `{a: {$eq: 1}}` probe the same way.
    probe.insert(path, arg.clone());
    let ok = Filter::parse(&probe)
        .and_then(|f| f.try_matches(doc))
        .unwrap_or(false);
    if ok != inv {
        return None;
    }
    let (fail, succeed) = reasons(op);
    let mut e = doc! {"operatorName": op, "specifiedAs": spec};
    if op == "$exists" {
        let wants = arg
            .as_document()
            .and_then(|d| d.get("$exists"))
            .is_none_or(crate::expr::truthy);
        // `{$exists: false}` fails because the path is there.
        let reason = if wants != inv { fail } else { succeed };
        e.insert("reason", reason);
        return Some(e);
    }
    let whole_arrays = matches!(op, "$size" | "$all" | "$elemMatch");
    let (values, expanded) = considered(doc, path, whole_arrays);
    if values.is_empty() && !expanded && !inv {
        e.insert("reason", "field was missing");
        return Some(e);
    }
    if let Some(types) = expected_types(op) {
        if !values.is_empty() && !values.iter().any(|v| types.contains(&type_name(v))) {
            e.insert("reason", "type did not match");
            put_types(
                &mut e,
                "consideredType",
                values.iter().map(type_name).collect(),
            );
            put_types(&mut e, "expectedType", types.to_vec());
            put_considered(&mut e, values, expanded);
            return Some(e);
        }
    }
    e.insert("reason", if inv { succeed } else { fail });
    let types: Vec<&'static str> = values.iter().map(type_name).collect();
    put_considered(&mut e, values, expanded);
    if op == "$type" && !types.is_empty() {
        put_types(&mut e, "consideredType", types);
    }
    Some(e)
}

// ---------------------------------------------------------------------------------------
// $jsonSchema

/// The error of a failing top-level `$jsonSchema`.
fn json_schema(s: &Document, doc: &Document) -> Document {
    let v = Bson::Document(doc.clone());
    let mut e = doc! {"operatorName": "$jsonSchema"};
    annotations(&mut e, s);
    // A top-level type that excludes objects rejects every document.
    let type_ok = ["type", "bsonType"]
        .iter()
        .all(|k| s.get(*k).is_none_or(|t| type_keyword_holds(k, t, &v)));
    if !type_ok {
        return doc! {
            "operatorName": "$jsonSchema",
            "specifiedAs": {"$jsonSchema": s.clone()},
            "reason": "expression always evaluates to false",
        };
    }
    e.insert("schemaRulesNotSatisfied", rules(s, &v));
    e
}

/// `title` then `description` of a (sub)schema, copied into its error.
fn annotations(e: &mut Document, s: &Document) {
    for k in ["title", "description"] {
        if let Some(v) = s.get(k) {
            e.insert(k, v.clone());
        }
    }
}

/// Whether a subschema accepts a value, by the matcher's own rules.
fn schema_holds(s: &Document, v: &Bson) -> bool {
    let Ok(parsed) = crate::filter::schema::Schema::parse(s) else {
        return false;
    };
    parsed.matches_value(v)
}

fn type_keyword_holds(k: &str, t: &Bson, v: &Bson) -> bool {
    schema_holds(&doc! {k: t.clone()}, v)
}

/// The keyword errors of a subschema for a value, in the order MongoDB's parser lists them.
/// A value of the wrong type gets only the type error: the other keywords do not apply.
fn rules(s: &Document, v: &Bson) -> Vec<Bson> {
    let mut out = Vec::new();
    for k in ["type", "bsonType"] {
        if let Some(t) = s.get(k) {
            if !type_keyword_holds(k, t, v) {
                let mut e = doc! {
                    "operatorName": k,
                    "specifiedAs": {k: t.clone()},
                    "reason": "type did not match",
                    "consideredValue": v.clone(),
                };
                e.insert("consideredType", type_name(v));
                return vec![Bson::Document(e)];
            }
        }
    }
    let spec = |k: &str| -> Document {
        let mut d = Document::new();
        if let Some(x) = s.get(k) {
            d.insert(k, x.clone());
        }
        d
    };
    let fails = |k: &str| {
        s.get(k)
            .is_some_and(|x| !schema_holds(&doc! {k: x.clone()}, v))
    };
    let mut push = |e: Document| out.push(Bson::Document(e));
    // Scalars.
    if let Bson::String(text) = v {
        if fails("pattern") {
            push(
                doc! {"operatorName": "pattern", "specifiedAs": spec("pattern"), "reason": "regular expression did not match", "consideredValue": text.clone()},
            );
        }
        for k in ["maxLength", "minLength"] {
            if fails(k) {
                push(
                    doc! {"operatorName": k, "specifiedAs": spec(k), "reason": "specified string length was not satisfied", "consideredValue": text.clone()},
                );
            }
        }
    }
    if as_number(v).is_some() {
        if fails("multipleOf") {
            push(
                doc! {"operatorName": "multipleOf", "specifiedAs": spec("multipleOf"), "reason": "considered value is not a multiple of the specified value", "consideredValue": v.clone()},
            );
        }
        for (k, ex) in [
            ("maximum", "exclusiveMaximum"),
            ("minimum", "exclusiveMinimum"),
        ] {
            let Some(bound) = s.get(k) else { continue };
            let mut probe = doc! {k: bound.clone()};
            let mut shown = doc! {k: bound.clone()};
            if let Some(x) = s.get(ex) {
                probe.insert(ex, x.clone());
                if crate::expr::truthy(x) {
                    shown.insert(ex, x.clone());
                }
            }
            if !schema_holds(&probe, v) {
                push(
                    doc! {"operatorName": k, "specifiedAs": shown, "reason": "comparison failed", "consideredValue": v.clone()},
                );
            }
        }
    }
    // Arrays.
    if let Bson::Array(items) = v {
        for k in ["minItems", "maxItems"] {
            if fails(k) {
                push(
                    doc! {"operatorName": k, "specifiedAs": spec(k), "reason": "array did not match specified length", "consideredValue": v.clone(), "numberOfItems": items.len() as i32},
                );
            }
        }
        if fails("uniqueItems") {
            let dup = first_duplicate(items).cloned().unwrap_or(Bson::Null);
            push(
                doc! {"operatorName": "uniqueItems", "specifiedAs": spec("uniqueItems"), "reason": "found a duplicate item", "consideredValue": v.clone(), "duplicatedValue": dup},
            );
        }
        if let Some(e) = items_error(s, items) {
            push(e);
        }
        if let Some(e) = additional_items_error(s, items) {
            push(e);
        }
    }
    // Objects.
    if let Bson::Document(d) = v {
        if let Some(Bson::Document(props)) = s.get("properties") {
            let mut failing = Vec::new();
            for (name, sub) in props {
                let (Some(value), Bson::Document(sub)) = (d.get(name), sub) else {
                    continue;
                };
                let errs = rules(sub, value);
                if !errs.is_empty() {
                    let mut p = doc! {"propertyName": name.clone()};
                    annotations(&mut p, sub);
                    p.insert("details", errs);
                    failing.push(Bson::Document(p));
                }
            }
            if !failing.is_empty() {
                push(doc! {"operatorName": "properties", "propertiesNotSatisfied": failing});
            }
        }
        if let Some(e) = additional_properties_error(s, d) {
            push(e);
        }
        if let Some(e) = pattern_properties_error(s, d) {
            push(e);
        }
        if let Some(Bson::Array(req)) = s.get("required") {
            let mut missing: Vec<String> = req
                .iter()
                .filter_map(|r| r.as_str())
                .filter(|r| !d.contains_key(*r))
                .map(str::to_string)
                .collect();
            if !missing.is_empty() {
                missing.sort();
                push(
                    doc! {"operatorName": "required", "specifiedAs": spec("required"), "missingProperties": missing},
                );
            }
        }
        for k in ["minProperties", "maxProperties"] {
            if fails(k) {
                push(
                    doc! {"operatorName": k, "specifiedAs": spec(k), "reason": "specified number of properties was not satisfied", "numberOfProperties": d.len() as i32},
                );
            }
        }
        if let Some(e) = dependencies_error(s, d) {
            push(e);
        }
    }
    // Logical keywords.
    for k in ["allOf", "anyOf", "oneOf"] {
        if let Some(e) = combinator_error(k, s, v) {
            push(e);
        }
    }
    if fails("not") {
        push(doc! {"operatorName": "not", "reason": "child expression matched"});
    }
    if fails("enum") {
        push(
            doc! {"operatorName": "enum", "specifiedAs": spec("enum"), "reason": "value was not found in enum", "consideredValue": v.clone()},
        );
    }
    out
}

fn first_duplicate(items: &[Bson]) -> Option<&Bson> {
    for (i, a) in items.iter().enumerate() {
        if items[..i]
            .iter()
            .any(|b| values_equal(a, b) && type_name(a) == type_name(b))
        {
            return Some(a);
        }
    }
    None
}

fn items_error(s: &Document, items: &[Bson]) -> Option<Document> {
    match s.get("items")? {
        Bson::Document(sub) => {
            let (i, v) = items
                .iter()
                .enumerate()
                .find(|(_, v)| !schema_holds(sub, v))?;
            let mut e = doc! {"operatorName": "items"};
            annotations(&mut e, sub);
            e.insert("reason", "At least one item did not match the sub-schema");
            e.insert("itemIndex", i as i32);
            e.insert("details", rules(sub, v));
            Some(e)
        }
        Bson::Array(subs) => {
            let mut list = Vec::new();
            for (i, (sub, v)) in subs.iter().zip(items).enumerate() {
                let Bson::Document(sub) = sub else { continue };
                if !schema_holds(sub, v) {
                    list.push(Bson::Document(
                        doc! {"itemIndex": i as i32, "details": rules(sub, v)},
                    ));
                }
            }
            (!list.is_empty()).then(|| doc! {"operatorName": "items", "details": list})
        }
        _ => None,
    }
}

fn additional_items_error(s: &Document, items: &[Bson]) -> Option<Document> {
    let Some(Bson::Array(tuple)) = s.get("items") else {
        return None;
    };
    let extra = items.get(tuple.len()..).unwrap_or(&[]);
    match s.get("additionalItems")? {
        Bson::Boolean(false) if !extra.is_empty() => Some(doc! {
            "operatorName": "additionalItems",
            "specifiedAs": {"additionalItems": false},
            "reason": "found additional items",
            "additionalItems": extra.to_vec(),
        }),
        Bson::Document(sub) => {
            let (i, v) = extra
                .iter()
                .enumerate()
                .find(|(_, v)| !schema_holds(sub, v))?;
            let mut e = doc! {"operatorName": "additionalItems"};
            annotations(&mut e, sub);
            e.insert(
                "reason",
                "At least one additional item did not match the sub-schema",
            );
            e.insert("itemIndex", (tuple.len() + i) as i32);
            e.insert("details", rules(sub, v));
            Some(e)
        }
        _ => None,
    }
}

/// Properties neither `properties` nor a `patternProperties` regex names.
fn additional_names<'a>(s: &Document, d: &'a Document) -> Vec<&'a String> {
    let named = |k: &str| {
        s.get_document("properties")
            .is_ok_and(|p| p.contains_key(k))
    };
    let patterns: Vec<crate::filter::Rx> = s
        .get_document("patternProperties")
        .map(|p| {
            p.keys()
                .filter_map(|r| crate::filter::Rx::new(r, "").ok())
                .collect()
        })
        .unwrap_or_default();
    d.keys()
        .filter(|k| !named(k) && !patterns.iter().any(|r| r.is_match(k)))
        .collect()
}

fn additional_properties_error(s: &Document, d: &Document) -> Option<Document> {
    match s.get("additionalProperties")? {
        Bson::Boolean(false) => {
            let extra: Vec<String> = additional_names(s, d).into_iter().cloned().collect();
            (!extra.is_empty()).then(|| {
                doc! {
                    "operatorName": "additionalProperties",
                    "specifiedAs": {"additionalProperties": false},
                    "additionalProperties": extra,
                }
            })
        }
        Bson::Document(sub) => {
            let name = additional_names(s, d)
                .into_iter()
                .find(|k| !schema_holds(sub, d.get(k.as_str()).unwrap_or(&Bson::Null)))?;
            let value = d.get(name.as_str())?;
            let mut e = doc! {"operatorName": "additionalProperties"};
            annotations(&mut e, sub);
            e.insert(
                "reason",
                "at least one additional property did not match the subschema",
            );
            e.insert("failingProperty", name.clone());
            e.insert("details", rules(sub, value));
            Some(e)
        }
        _ => None,
    }
}

fn pattern_properties_error(s: &Document, d: &Document) -> Option<Document> {
    let pats = s.get_document("patternProperties").ok()?;
    let mut list = Vec::new();
    for (re, sub) in pats {
        let (Ok(rx), Bson::Document(sub)) = (crate::filter::Rx::new(re, ""), sub) else {
            continue;
        };
        let failing = d
            .iter()
            .find(|(k, v)| rx.is_match(k) && !schema_holds(sub, v));
        if let Some((k, v)) = failing {
            let mut e = doc! {"propertyName": k.clone()};
            annotations(&mut e, sub);
            e.insert("regexMatched", re.clone());
            e.insert("details", rules(sub, v));
            list.push(Bson::Document(e));
        }
    }
    (!list.is_empty()).then(|| doc! {"operatorName": "patternProperties", "details": list})
}

fn dependencies_error(s: &Document, d: &Document) -> Option<Document> {
    let deps = s.get_document("dependencies").ok()?;
    let mut list = Vec::new();
    for (prop, dep) in deps {
        if !d.contains_key(prop) {
            continue;
        }
        match dep {
            Bson::Array(names) => {
                let missing: Vec<Bson> = names
                    .iter()
                    .filter(|n| n.as_str().is_some_and(|n| !d.contains_key(n)))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    list.push(Bson::Document(
                        doc! {"conditionalProperty": prop.clone(), "missingProperties": missing},
                    ));
                }
            }
            Bson::Document(sub) => {
                let v = Bson::Document(d.clone());
                if !schema_holds(sub, &v) {
                    list.push(Bson::Document(
                        doc! {"conditionalProperty": prop.clone(), "details": rules(sub, &v)},
                    ));
                }
            }
            _ => {}
        }
    }
    if list.is_empty() {
        return None;
    }
    let mut e = doc! {"operatorName": "dependencies"};
    annotations(&mut e, deps);
    e.insert("failingDependencies", list);
    Some(e)
}

fn combinator_error(k: &str, s: &Document, v: &Bson) -> Option<Document> {
    let Some(Bson::Array(subs)) = s.get(k) else {
        return None;
    };
    let subs: Vec<(usize, &Document)> = subs
        .iter()
        .enumerate()
        .filter_map(|(i, x)| x.as_document().map(|d| (i, d)))
        .collect();
    let matching: Vec<usize> = subs
        .iter()
        .filter(|(_, d)| schema_holds(d, v))
        .map(|(i, _)| *i)
        .collect();
    let entry = |i: usize, d: &Document| -> Bson {
        let mut e = doc! {"index": i as i32};
        annotations(&mut e, d);
        e.insert("details", rules(d, v));
        Bson::Document(e)
    };
    match k {
        "allOf" if matching.len() < subs.len() => {
            let list: Vec<Bson> = subs
                .iter()
                .filter(|(i, _)| !matching.contains(i))
                .map(|(i, d)| entry(*i, d))
                .collect();
            Some(doc! {"operatorName": "allOf", "schemasNotSatisfied": list})
        }
        "anyOf" | "oneOf" if matching.is_empty() => {
            let list: Vec<Bson> = subs.iter().map(|(i, d)| entry(*i, d)).collect();
            Some(doc! {"operatorName": k, "schemasNotSatisfied": list})
        }
        "oneOf" if matching.len() > 1 => Some(doc! {
            "operatorName": "oneOf",
            "reason": "more than one subschema matched",
            "matchingSchemaIndexes": matching.iter().map(|i| *i as i32).collect::<Vec<_>>(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
