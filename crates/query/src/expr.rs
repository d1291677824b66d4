//! Aggregation expressions: parsing `{$add: [...]}`-style expressions and evaluating them
//! against a document with variables.
//!
//! Evaluation returns `Ok(None)` for a missing value (a missing field or `$$REMOVE`), which
//! callers drop from output documents; arrays turn missing elements into `null`.

#![allow(clippy::collapsible_if, clippy::collapsible_match)]

pub(crate) mod accum;
mod convert;
pub(crate) mod date;
pub(crate) mod num;
mod ops;

pub(crate) use ops::as_int as ops_as_int;

use std::collections::HashMap;
use std::sync::Arc;

use bson::{Bson, DateTime, Document, Timestamp};
use doc::Collation;
use errors::{ErrorCode, MongoError, Result};

/// `{$meta: "textScore"}` asked of a document no `$text` query scored.
pub fn text_score_unavailable() -> MongoError {
    MongoError::with_code(
        40218,
        "query requires text score metadata, but it is not available",
    )
}

/// A parsed aggregation expression.
#[derive(Debug, Clone)]
pub struct Expr(pub(crate) Node);

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Lit(Bson),
    /// `$a.b`: a path from `$$CURRENT`.
    Field(Vec<String>),
    /// `$$name.a.b`.
    Var(String, Vec<String>),
    Obj(Vec<(String, Node)>),
    Arr(Vec<Node>),
    Op(&'static str, Args),
    /// `{$meta: "textScore"}`: the score a `$text` match gave the document.
    TextScore,
    /// `{$meta: "geoNearDistance"}`: the distance a `$near` search found.
    GeoDistance,
}

#[derive(Debug, Clone)]
pub(crate) enum Args {
    List(Vec<Node>),
    Named(Vec<(String, Node)>),
}

impl Args {
    pub(crate) fn list(&self) -> &[Node] {
        match self {
            Args::List(v) => v,
            Args::Named(_) => &[],
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Node> {
        match self {
            Args::Named(v) => v.iter().find(|(k, _)| k == name).map(|(_, n)| n),
            Args::List(_) => None,
        }
    }
}

/// Variables visible to an expression: `$$NOW`, `$$CLUSTER_TIME`, `$$CURRENT` and user
/// variables (`$let`, `$map`, `$lookup` `let`, ...). `$$ROOT` is the evaluated document.
/// They also carry the operation's collation, which comparison expressions use.
#[derive(Debug, Clone)]
pub struct Vars {
    now: DateTime,
    cluster_time: Timestamp,
    user: HashMap<String, Bson>,
    current: Option<Document>,
    collation: Option<Arc<Collation>>,
}

impl Default for Vars {
    fn default() -> Vars {
        let now = DateTime::now();
        let secs = (now.timestamp_millis() / 1000).clamp(0, i64::from(u32::MAX)) as u32;
        Vars::new(
            now,
            Timestamp {
                time: secs,
                increment: 1,
            },
        )
    }
}

impl Vars {
    /// Variables with the given `$$NOW` and `$$CLUSTER_TIME`.
    pub fn new(now: DateTime, cluster_time: Timestamp) -> Vars {
        Vars {
            now,
            cluster_time,
            user: HashMap::new(),
            current: None,
            collation: None,
        }
    }

    /// The operation's collation (`None`: binary string comparison).
    pub fn collation(&self) -> Option<&Collation> {
        self.collation.as_deref()
    }

    /// The operation's collation, shared (for a sort spec built during evaluation).
    pub fn shared_collation(&self) -> Option<Arc<Collation>> {
        self.collation.clone()
    }

    /// Sets the operation's collation.
    pub fn set_collation(&mut self, coll: Option<Arc<Collation>>) {
        self.collation = coll;
    }

    /// `$$NOW`.
    pub fn now(&self) -> DateTime {
        self.now
    }

    /// `$$CLUSTER_TIME`.
    pub fn cluster_time(&self) -> Timestamp {
        self.cluster_time
    }

    /// Binds a user variable.
    pub fn set(&mut self, name: &str, value: Bson) {
        self.user.insert(name.to_string(), value);
    }

    /// A copy with one more user variable bound.
    #[must_use]
    pub fn with(&self, name: &str, value: Bson) -> Vars {
        let mut v = self.clone();
        v.set(name, value);
        v
    }

    /// A user variable's value.
    pub fn get(&self, name: &str) -> Option<&Bson> {
        self.user.get(name)
    }

    /// Rebinds `$$CURRENT` (used by `$redact`).
    pub fn set_current(&mut self, doc: Option<Document>) {
        self.current = doc;
    }

    /// Binds a command's `let` parameters (find, aggregate, update, delete, findAndModify,
    /// bulkWrite): each value is an expression evaluated once, before any document is read,
    /// so it may use `$$NOW`, `$$CLUSTER_TIME` and the parameters before it, but no field.
    ///
    /// # Errors
    /// FailedToParse for a bad variable name, 4738901 for a system variable name, 4890500
    /// for an expression that reads a field, and the expression's own errors.
    pub fn bind_let(&mut self, params: &Document) -> Result<()> {
        for (name, v) in params {
            check_let_name(name)?;
            let node = parse_node(v)?;
            if node.reads_document() {
                return Err(err(
                    4890500,
                    "Command let Expression tried to access a field, but this is not allowed \
                     because Command let Expressions run before the query examines any documents.",
                ));
            }
            let value = node
                .eval(&Ctx {
                    root: &Document::new(),
                    vars: self,
                })?
                .unwrap_or(Bson::Null);
            self.set(name, value);
        }
        Ok(())
    }
}

/// Checks a `let` parameter's name the way MongoDB checks names users may write.
fn check_let_name(name: &str) -> Result<()> {
    const SYSTEM: &[&str] = &["NOW", "CLUSTER_TIME", "JS_SCOPE", "IS_MR", "USER_ROLES"];
    let invalid = |why: String| {
        MongoError::new(
            ErrorCode::FailedToParse,
            format!("Invalid 'let' parameter :: caused by :: {why}"),
        )
    };
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err(invalid("empty variable names are not allowed".into()));
    };
    if first.is_ascii() && !first.is_ascii_lowercase() {
        if SYSTEM.contains(&name) {
            return Err(err(
                4738901,
                format!("Attempt to set internal constant: {name}"),
            ));
        }
        return Err(invalid(format!(
            "'{name}' starts with an invalid character for a user variable name"
        )));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || !c.is_ascii())) {
        return Err(invalid(format!(
            "'{name}' contains an invalid character for a variable name: '{c}'"
        )));
    }
    Ok(())
}

/// MongoDB truthiness: false, null, undefined, missing and numeric zero are false.
pub fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        Bson::Decimal128(_) => doc::compare::as_f64(v).is_some_and(|d| d != 0.0),
        _ => true,
    }
}

pub(crate) fn err(code: i32, msg: impl Into<String>) -> MongoError {
    MongoError::with_code(code, msg)
}

/// The most memory the values one expression builds at once may take: the 100 MB MongoDB
/// gives `$range` and the array accumulators (`internalQueryMax*Bytes`). Without it, an
/// expression that doubles a value in a `$reduce` exhausts the server's memory.
pub(crate) const MAX_VALUE_BYTES: usize = 100 * 1024 * 1024;

/// The most a string an expression builds may hold: MongoDB's `BufferMaxSize`.
pub(crate) const MAX_STRING_BYTES: usize = 64 * 1024 * 1024;

/// Counts what an expression is building, and refuses with `ExceededMemoryLimit` (146) once
/// it passes [`MAX_VALUE_BYTES`].
pub(crate) struct Budget {
    what: &'static str,
    used: usize,
}

impl Budget {
    pub(crate) fn new(what: &'static str) -> Budget {
        Budget { what, used: 0 }
    }

    pub(crate) fn add(&mut self, v: &Bson) -> Result<()> {
        self.used += approx_size(v, MAX_VALUE_BYTES + 1 - self.used.min(MAX_VALUE_BYTES));
        if self.used > MAX_VALUE_BYTES {
            return Err(err(
                146,
                format!(
                    "{} would use too much memory ({} bytes) and cannot spill to disk. Memory limit: {MAX_VALUE_BYTES} bytes",
                    self.what, self.used
                ),
            ));
        }
        Ok(())
    }
}

/// A value's size in memory, roughly (its BSON size plus a per-value overhead), counted
/// only until it passes `cap`.
pub(crate) fn approx_size(v: &Bson, cap: usize) -> usize {
    const OVERHEAD: usize = 16;
    match v {
        Bson::String(s) => OVERHEAD + s.len(),
        Bson::Binary(b) => OVERHEAD + b.bytes.len(),
        Bson::JavaScriptCode(s) | Bson::Symbol(s) => OVERHEAD + s.len(),
        Bson::RegularExpression(r) => OVERHEAD + r.pattern.len() + r.options.len(),
        Bson::Array(a) => {
            let mut n = OVERHEAD;
            for x in a {
                n += approx_size(x, cap.saturating_sub(n));
                if n > cap {
                    break;
                }
            }
            n
        }
        Bson::Document(d) => {
            let mut n = OVERHEAD;
            for (k, x) in d {
                n += k.len() + approx_size(x, cap.saturating_sub(n));
                if n > cap {
                    break;
                }
            }
            n
        }
        _ => OVERHEAD,
    }
}

/// Refuses a string over [`MAX_STRING_BYTES`] before it is built, as MongoDB's buffers do.
pub(crate) fn check_string_len(len: usize) -> Result<()> {
    if len > MAX_STRING_BYTES {
        return Err(err(
            13548,
            format!("BufBuilder attempted to grow() to {len} bytes, past the 64MB limit."),
        ));
    }
    Ok(())
}

/// The MongoDB type name of a value for error messages (`missing` for none).
pub fn type_name(v: Option<&Bson>) -> &'static str {
    match v {
        None => "missing",
        Some(v) => doc::type_name(v),
    }
}

/// Validates a field path component list (`a.b` from `$a.b`).
fn field_parts(path: &str) -> Result<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    for p in &parts {
        if p.is_empty() {
            return Err(err(
                15998,
                "FieldPath field names may not be empty strings.",
            ));
        }
        if p.starts_with('$') {
            return Err(err(16410, "FieldPath field names may not start with '$'."));
        }
    }
    Ok(parts)
}

fn parse_string(s: &str) -> Result<Node> {
    if let Some(var) = s.strip_prefix("$$") {
        let (name, rest) = match var.split_once('.') {
            Some((n, r)) => (n, Some(r)),
            None => (var, None),
        };
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || !c.is_ascii() || c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c == '_' || c.is_alphanumeric() || !c.is_ascii());
        if !valid {
            return Err(err(
                16870,
                format!("'{name}' starts with an invalid character for a user variable name"),
            ));
        }
        let path = match rest {
            Some(r) => field_parts(r)?,
            None => Vec::new(),
        };
        Ok(Node::Var(name.to_string(), path))
    } else if let Some(path) = s.strip_prefix('$') {
        if path.is_empty() {
            return Err(err(16872, "'$' by itself is not a valid FieldPath"));
        }
        Ok(Node::Field(field_parts(path)?))
    } else {
        Ok(Node::Lit(Bson::String(s.to_string())))
    }
}

pub(crate) fn parse_node(v: &Bson) -> Result<Node> {
    match v {
        Bson::String(s) => parse_string(s),
        Bson::Array(a) => Ok(Node::Arr(a.iter().map(parse_node).collect::<Result<_>>()?)),
        Bson::Document(d) => parse_object(d),
        other => Ok(Node::Lit(other.clone())),
    }
}

fn parse_object(d: &Document) -> Result<Node> {
    let first_is_op = d.keys().next().is_some_and(|k| k.starts_with('$'));
    if first_is_op {
        if d.len() != 1 {
            return Err(err(
                15983,
                format!(
                    "an expression specification must contain exactly one field, the name of \
                     the expression. Found {} fields in {}",
                    d.len(),
                    d
                ),
            ));
        }
        let (k, v) = d
            .iter()
            .next()
            .ok_or_else(|| MongoError::internal("empty"))?;
        return ops::parse_op(k, v);
    }
    let mut fields = Vec::with_capacity(d.len());
    for (k, v) in d {
        if k.starts_with('$') {
            return Err(err(
                16410,
                "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
            ));
        }
        if k.contains('.') {
            return Err(err(
                16412,
                "FieldPath field names may not contain '.'. Consider using $getField or $setField.",
            ));
        }
        if k.is_empty() {
            return Err(err(
                16411,
                "FieldPath field names may not be empty strings.",
            ));
        }
        fields.push((k.clone(), parse_node(v)?));
    }
    Ok(Node::Obj(fields))
}

/// Follows an aggregation field path: arrays map the rest of the path over their document
/// (and array) elements; numeric components do not index arrays.
pub(crate) fn follow(v: &Bson, parts: &[String]) -> Option<Bson> {
    if parts.is_empty() {
        return Some(v.clone());
    }
    match v {
        Bson::Document(d) => follow(d.get(&parts[0])?, &parts[1..]),
        Bson::Array(a) => Some(Bson::Array(
            a.iter()
                .filter(|e| matches!(e, Bson::Document(_) | Bson::Array(_)))
                .filter_map(|e| follow(e, parts))
                .collect(),
        )),
        _ => None,
    }
}

fn follow_doc(d: &Document, parts: &[String]) -> Option<Bson> {
    follow(d.get(parts.first()?)?, &parts[1..])
}

/// Evaluation context: the root document and variables.
pub(crate) struct Ctx<'a> {
    pub root: &'a Document,
    pub vars: &'a Vars,
}

impl Ctx<'_> {
    /// The collation string comparisons use.
    pub(crate) fn coll(&self) -> Option<&Collation> {
        self.vars.collation()
    }
}

impl Node {
    /// Whether evaluating the node may read the document (a field path, `$$ROOT` or
    /// `$$CURRENT`).
    fn reads_document(&self) -> bool {
        match self {
            Node::Lit(_) => false,
            Node::Field(_) | Node::TextScore | Node::GeoDistance => true,
            Node::Var(name, _) => name == "ROOT" || name == "CURRENT",
            Node::Obj(fields) => fields.iter().any(|(_, n)| n.reads_document()),
            Node::Arr(items) => items.iter().any(Node::reads_document),
            Node::Op(_, Args::List(items)) => items.iter().any(Node::reads_document),
            Node::Op(_, Args::Named(items)) => items.iter().any(|(_, n)| n.reads_document()),
        }
    }

    pub(crate) fn eval(&self, cx: &Ctx<'_>) -> Result<Option<Bson>> {
        match self {
            Node::Lit(v) => Ok(Some(v.clone())),
            Node::Field(parts) => {
                let cur = cx.vars.current.as_ref().unwrap_or(cx.root);
                Ok(follow_doc(cur, parts))
            }
            Node::TextScore => match cx.root.get(crate::text::SCORE_FIELD) {
                Some(v) => Ok(Some(v.clone())),
                None => Err(text_score_unavailable()),
            },
            Node::GeoDistance => match cx.root.get(crate::geo::DISTANCE_FIELD) {
                Some(v) => Ok(Some(v.clone())),
                None => Err(err(
                    40218,
                    "query requires geoNearDistance metadata, but it is not available",
                )),
            },
            Node::Var(name, parts) => {
                let base = match name.as_str() {
                    "ROOT" => Some(Bson::Document(cx.root.clone())),
                    "CURRENT" => Some(Bson::Document(
                        cx.vars.current.as_ref().unwrap_or(cx.root).clone(),
                    )),
                    "NOW" => Some(Bson::DateTime(cx.vars.now)),
                    "CLUSTER_TIME" => Some(Bson::Timestamp(cx.vars.cluster_time)),
                    "REMOVE" => None,
                    "DESCEND" => Some(Bson::String("descend".into())),
                    "PRUNE" => Some(Bson::String("prune".into())),
                    "KEEP" => Some(Bson::String("keep".into())),
                    _ => match cx.vars.user.get(name) {
                        Some(v) => Some(v.clone()),
                        None => {
                            return Err(err(17276, format!("Use of undefined variable: {name}")));
                        }
                    },
                };
                Ok(base.and_then(|b| follow(&b, parts)))
            }
            Node::Obj(fields) => {
                let mut d = Document::new();
                let mut budget = Budget::new("an object expression");
                for (k, n) in fields {
                    if let Some(v) = n.eval(cx)? {
                        budget.add(&v)?;
                        d.insert(k.clone(), v);
                    }
                }
                Ok(Some(Bson::Document(d)))
            }
            Node::Arr(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut budget = Budget::new("an array expression");
                for n in items {
                    let v = n.eval(cx)?.unwrap_or(Bson::Null);
                    budget.add(&v)?;
                    out.push(v);
                }
                Ok(Some(Bson::Array(out)))
            }
            Node::Op(name, args) => ops::eval_op(name, args, cx),
        }
    }
}

impl Expr {
    /// Parses an aggregation expression.
    pub fn parse(v: &Bson) -> Result<Expr> {
        Ok(Expr(parse_node(v)?))
    }

    /// An expression that is the given constant.
    pub fn literal(v: Bson) -> Expr {
        Expr(Node::Lit(v))
    }

    /// Evaluates against `root` (which is `$$ROOT` and, unless rebound, `$$CURRENT`).
    /// `Ok(None)` is a missing value or `$$REMOVE`.
    pub fn eval(&self, root: &Document, vars: &Vars) -> Result<Option<Bson>> {
        self.0.eval(&Ctx { root, vars })
    }

    /// Whether the expression is a constant (a literal with no paths or variables).
    pub fn as_literal(&self) -> Option<&Bson> {
        match &self.0 {
            Node::Lit(v) => Some(v),
            _ => None,
        }
    }

    /// Whether the expression is a plain field path (`$a.b`), returning the dotted path.
    pub fn as_field_path(&self) -> Option<String> {
        match &self.0 {
            Node::Field(p) => Some(p.join(".")),
            _ => None,
        }
    }
}

pub(crate) fn invalid_op(name: &str) -> MongoError {
    MongoError::new(
        ErrorCode::InvalidPipelineOperator,
        format!("Unrecognized expression '{name}'"),
    )
}

#[cfg(test)]
mod tests;
