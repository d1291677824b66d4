//! Applying a parsed operator update: positional parts are resolved against the document
//! into concrete paths (merged, so two leaves meeting at one element conflict), then each
//! leaf is applied in MongoDB's order while the touched paths are logged.

use std::collections::BTreeMap;

use bson::{Bson, Document};
use doc::compare::values_equal;
use errors::{ErrorCode, MongoError, Result};

use super::delta::{Comp, LogKind, LogTree, to_delta};
use super::ops::{Modify, Op, OpCtx};
use super::tree::{Node, OpUpdate, find_sorted};
use super::{Env, UpdateCtx, UpdateResult, fmt, id_first};
use crate::filter::Filter;

/// The most null elements an update may pad an array with (MongoDB's limit).
const MAX_PADDING: usize = 1_500_000;

/// A read-only position in the document while resolving positional paths.
#[derive(Clone, Copy)]
enum At<'a> {
    Doc(&'a Document),
    Val(&'a Bson),
    Missing,
}

impl<'a> At<'a> {
    fn child(self, name: &str) -> At<'a> {
        match self {
            At::Doc(d) | At::Val(Bson::Document(d)) => d.get(name).map_or(At::Missing, At::Val),
            At::Val(Bson::Array(a)) => array_index(name)
                .and_then(|i| a.get(i))
                .map_or(At::Missing, At::Val),
            _ => At::Missing,
        }
    }
}

fn array_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The update tree with positional parts resolved to concrete field names and indexes.
enum Concrete<'a> {
    /// Children in application order; `collapse` marks an array whose `$[]`/`$[<id>]`
    /// children matched more than one element: MongoDB then logs the whole array (or the one
    /// element actually modified) instead of each change.
    Inner {
        children: Vec<(String, Concrete<'a>)>,
        collapse: bool,
    },
    Leaf(&'a Op),
}

impl Concrete<'_> {
    fn inner() -> Self {
        Concrete::Inner {
            children: Vec::new(),
            collapse: false,
        }
    }
}

/// Marks the node at `path` as a collapsed array (if it exists).
fn mark_collapse(root: &mut Concrete<'_>, path: &[String]) {
    let mut cur = root;
    for name in path {
        let Concrete::Inner { children, .. } = cur else {
            return;
        };
        let Some(pos) = children.iter().position(|(k, _)| k == name) else {
            return;
        };
        cur = &mut children[pos].1;
    }
    if let Concrete::Inner { collapse, .. } = cur {
        *collapse = true;
    }
}

fn runtime_conflict(path: &[String]) -> MongoError {
    MongoError::new(
        ErrorCode::ConflictingUpdateOperators,
        format!("Update created a conflict at '{}'", path.join(".")),
    )
}

fn concrete_insert<'a>(root: &mut Concrete<'a>, path: &[String], op: &'a Op) -> Result<()> {
    let mut cur = root;
    for (i, name) in path.iter().enumerate() {
        let Concrete::Inner { children, .. } = cur else {
            return Err(runtime_conflict(&path[..i]));
        };
        let pos = match find_sorted(children, name) {
            Ok(p) => {
                if i + 1 == path.len() {
                    return Err(runtime_conflict(path));
                }
                p
            }
            Err(p) => {
                let node = if i + 1 == path.len() {
                    Concrete::Leaf(op)
                } else {
                    Concrete::inner()
                };
                children.insert(p, (name.clone(), node));
                p
            }
        };
        cur = &mut children[pos].1;
    }
    Ok(())
}

struct Expander<'a, 'c> {
    filters: &'a BTreeMap<String, Filter>,
    ctx: &'c UpdateCtx,
    out: Concrete<'a>,
}

impl<'a> Expander<'a, '_> {
    fn expand(&mut self, node: &'a Node, at: At<'_>, path: &mut Vec<String>) -> Result<()> {
        match node {
            Node::Leaf(op) => concrete_insert(&mut self.out, path, op),
            Node::Object {
                children,
                positional,
            } => {
                for (name, child) in children {
                    path.push(name.clone());
                    self.expand(child, at.child(name), path)?;
                    path.pop();
                }
                if let Some(child) = positional {
                    let Some(i) = self.ctx.positional else {
                        return Err(MongoError::bad_value(
                            "The positional operator did not find the match needed from the query.",
                        ));
                    };
                    let name = i.to_string();
                    let next = at.child(&name);
                    path.push(name);
                    self.expand(child, next, path)?;
                    path.pop();
                }
                Ok(())
            }
            Node::Array { children } => {
                let arr = match at {
                    At::Val(Bson::Array(a)) => a,
                    At::Missing => {
                        return Err(MongoError::bad_value(format!(
                            "The path '{}' must exist in the document in order to apply array updates.",
                            path.join(".")
                        )));
                    }
                    At::Val(v) => {
                        let name = path.last().map_or("", String::as_str);
                        return Err(MongoError::bad_value(format!(
                            "Cannot apply array updates to non-array element {}",
                            fmt::element(name, v)
                        )));
                    }
                    At::Doc(d) => {
                        return Err(MongoError::bad_value(format!(
                            "Cannot apply array updates to non-array element {}",
                            fmt::document(d)
                        )));
                    }
                };
                let mut matched_elements = 0;
                for (i, e) in arr.iter().enumerate() {
                    let mut any = false;
                    for (id, child) in children {
                        let matched = id.is_empty() || {
                            let mut d = Document::new();
                            d.insert(id.clone(), e.clone());
                            self.filters.get(id).is_some_and(|f| f.matches(&d))
                        };
                        if matched {
                            any = true;
                            path.push(i.to_string());
                            self.expand(child, At::Val(e), path)?;
                            path.pop();
                        }
                    }
                    matched_elements += usize::from(any);
                }
                if matched_elements > 1 {
                    mark_collapse(&mut self.out, path);
                }
                Ok(())
            }
        }
    }
}

/// State while applying operator leaves.
struct Applier<'c> {
    collation: Option<&'c std::sync::Arc<doc::Collation>>,
    doc: Document,
    log: LogTree,
    modified: bool,
    ctx: &'c UpdateCtx,
    cluster_time: bson::Timestamp,
    /// The `_id` the update must not change, if any.
    orig_id: Option<Bson>,
    /// How many leaves changed the document so far.
    mods: usize,
    /// Nesting depth of collapsed arrays: leaves below one are not logged individually.
    mute: usize,
}

pub(crate) fn apply_operators(
    u: &OpUpdate,
    doc: &Document,
    ctx: &UpdateCtx,
    env: &dyn Env,
) -> Result<UpdateResult> {
    let mut ex = Expander {
        filters: &u.filters,
        ctx,
        out: Concrete::inner(),
    };
    ex.expand(&u.root, At::Doc(doc), &mut Vec::new())?;
    let mut ap = Applier {
        collation: u.collation.as_ref(),
        doc: doc.clone(),
        log: LogTree::default(),
        modified: false,
        ctx,
        cluster_time: if uses_timestamp(&ex.out) {
            env.cluster_time()
        } else {
            bson::Timestamp {
                time: 0,
                increment: 0,
            }
        },
        orig_id: doc.get("_id").cloned(),
        mods: 0,
        mute: 0,
    };
    ap.run(&ex.out, &mut Vec::new())?;
    if ap.orig_id.is_none()
        && let Some(id) = ap.doc.get("_id")
    {
        let mut d = Document::new();
        d.insert("_id", id.clone());
        super::validate_replacement(&d)?;
    }
    let diff = ap.log.resolve(&ap.doc);
    let delta = to_delta(&diff);
    let modified = ap.modified;
    Ok(UpdateResult {
        doc: id_first(ap.doc),
        modified,
        delta: Some(delta),
    })
}

fn uses_timestamp(node: &Concrete<'_>) -> bool {
    match node {
        Concrete::Leaf(op) => matches!(op, Op::CurrentDate { timestamp: true }),
        Concrete::Inner { children, .. } => children.iter().any(|(_, c)| uses_timestamp(c)),
    }
}

/// Where a path stops existing in a document.
struct Probe {
    /// Typed components of the existing prefix, plus the first missing one when viable.
    typed: Vec<Comp>,
    /// How many components exist.
    existing: usize,
    /// When the path cannot be created: the element in the way (name, value).
    blocker: Option<(String, Bson)>,
}

fn probe(doc: &Document, path: &[String]) -> Probe {
    let mut typed = Vec::new();
    let mut cur = At::Doc(doc);
    for (k, s) in path.iter().enumerate() {
        match cur {
            At::Doc(d) | At::Val(Bson::Document(d)) => {
                typed.push(Comp::Field(s.clone()));
                match d.get(s) {
                    Some(v) => cur = At::Val(v),
                    None => {
                        return Probe {
                            typed,
                            existing: k,
                            blocker: None,
                        };
                    }
                }
            }
            At::Val(v @ Bson::Array(a)) => match array_index(s) {
                Some(i) => {
                    typed.push(Comp::Index(i));
                    match a.get(i) {
                        Some(e) => cur = At::Val(e),
                        None => {
                            return Probe {
                                typed,
                                existing: k,
                                blocker: None,
                            };
                        }
                    }
                }
                None => {
                    let blocker = Some((path[k - 1].clone(), v.clone()));
                    return Probe {
                        typed,
                        existing: k,
                        blocker,
                    };
                }
            },
            At::Val(v) => {
                let name = if k == 0 {
                    String::new()
                } else {
                    path[k - 1].clone()
                };
                return Probe {
                    typed,
                    existing: k,
                    blocker: Some((name, v.clone())),
                };
            }
            At::Missing => {
                return Probe {
                    typed,
                    existing: k,
                    blocker: None,
                };
            }
        }
    }
    Probe {
        typed,
        existing: path.len(),
        blocker: None,
    }
}

fn get_mut<'a>(doc: &'a mut Document, typed: &[Comp]) -> Option<&'a mut Bson> {
    let (first, rest) = typed.split_first()?;
    let Comp::Field(f) = first else { return None };
    let mut cur = doc.get_mut(f)?;
    for c in rest {
        cur = match (cur, c) {
            (Bson::Document(d), Comp::Field(f)) => d.get_mut(f)?,
            (Bson::Array(a), Comp::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn get<'a>(doc: &'a Document, typed: &[Comp]) -> Option<&'a Bson> {
    let (first, rest) = typed.split_first()?;
    let Comp::Field(f) = first else { return None };
    let mut cur = doc.get(f)?;
    for c in rest {
        cur = match (cur, c) {
            (Bson::Document(d), Comp::Field(f)) => d.get(f)?,
            (Bson::Array(a), Comp::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

impl<'c> Applier<'c> {
    /// Applies the leaves of `node` (at `path`) in order.
    fn run(&mut self, node: &Concrete<'_>, path: &mut Vec<String>) -> Result<()> {
        match node {
            Concrete::Leaf(Op::RenameSource) => Ok(()),
            Concrete::Leaf(Op::Rename { from }) => self.rename(from, path),
            Concrete::Leaf(op) => self.leaf(path, op),
            Concrete::Inner {
                children,
                collapse: false,
            } => {
                for (k, c) in children {
                    path.push(k.clone());
                    self.run(c, path)?;
                    path.pop();
                }
                Ok(())
            }
            Concrete::Inner {
                children,
                collapse: true,
            } => {
                self.mute += 1;
                let mut changed = Vec::new();
                for (k, c) in children {
                    let before = self.mods;
                    path.push(k.clone());
                    let r = self.run(c, path);
                    path.pop();
                    r?;
                    if self.mods > before {
                        changed.push(k);
                    }
                }
                self.mute -= 1;
                let mut typed = probe(&self.doc, path).typed;
                match changed.as_slice() {
                    [] => {}
                    [k] => {
                        typed.push(Comp::Index(array_index(k).unwrap_or(0)));
                        self.log(&typed, LogKind::Update);
                    }
                    _ => self.log(&typed, LogKind::Update),
                }
                Ok(())
            }
        }
    }

    /// Logs a change unless inside a collapsed array.
    fn log(&mut self, typed: &[Comp], kind: LogKind) {
        if self.mute == 0 {
            self.log.log(typed, kind);
        }
    }

    fn op_ctx<'p>(&self, path: &'p str, field: &'p str) -> OpCtx<'p>
    where
        'c: 'p,
    {
        OpCtx {
            id: fmt::id_of(&self.doc),
            path,
            field,
            is_upsert_insert: self.ctx.is_upsert_insert,
            now: self.ctx.now,
            cluster_time: self.cluster_time,
            collation: self.collation,
        }
    }

    /// Rejects a change to `_id` made by the leaf at `path`.
    fn check_id(&self, path: &str) -> Result<()> {
        if path != "_id" && !path.starts_with("_id.") {
            return Ok(());
        }
        let Some(orig) = &self.orig_id else {
            return Ok(());
        };
        match self.doc.get("_id") {
            Some(now) if values_equal(now, orig) => Ok(()),
            _ => Err(MongoError::new(
                ErrorCode::ImmutableField,
                format!(
                    "Performing an update on the path '{path}' would modify the immutable field '_id'"
                ),
            )),
        }
    }

    /// Applies one operator leaf at a concrete path.
    fn leaf(&mut self, path: &[String], op: &Op) -> Result<()> {
        let dotted_path = path.join(".");
        let field = path.last().map_or("", String::as_str);
        let pr = probe(&self.doc, path);
        if pr.existing == path.len() {
            let cx = self.op_ctx(&dotted_path, field);
            let Some(cur) = get(&self.doc, &pr.typed) else {
                return Ok(());
            };
            match op.modify(cur, &cx)? {
                Modify::NoOp => return Ok(()),
                Modify::Replace(v) => {
                    if let Some(slot) = get_mut(&mut self.doc, &pr.typed) {
                        *slot = v;
                    }
                    self.log(&pr.typed, LogKind::Update);
                }
                Modify::Append(vals) => {
                    if let Some(Bson::Array(a)) = get_mut(&mut self.doc, &pr.typed) {
                        let start = a.len();
                        a.extend(vals);
                        let end = a.len();
                        for k in start..end {
                            let mut p = pr.typed.clone();
                            p.push(Comp::Index(k));
                            self.log(&p, LogKind::Insert);
                        }
                    }
                }
                Modify::Remove => self.remove(&pr.typed),
            }
        } else {
            if !op.creates(self.ctx.is_upsert_insert) {
                return Ok(());
            }
            if let Some((name, v)) = &pr.blocker {
                return Err(MongoError::new(
                    ErrorCode::PathNotViable,
                    format!(
                        "Cannot create field '{}' in element {{{}}}",
                        path[pr.existing],
                        fmt::element(name, v)
                    ),
                ));
            }
            if let (Some(Comp::Index(i)), Some(Bson::Array(a))) = (
                pr.typed.get(pr.existing),
                get(&self.doc, &pr.typed[..pr.existing]),
            ) && *i > a.len() + MAX_PADDING
            {
                return Err(MongoError::bad_value(format!(
                    "can't backfill more than {MAX_PADDING} elements"
                )));
            }
            let cx = self.op_ctx(&dotted_path, field);
            let v = op.create(&cx)?;
            self.create(path, &pr, v);
        }
        self.modified = true;
        self.mods += 1;
        self.check_id(&dotted_path)
    }

    /// Creates the missing part of `path` (at `pr.existing`) holding `v`, and logs it.
    fn create(&mut self, path: &[String], pr: &Probe, v: Bson) {
        let mut value = v;
        for name in path[pr.existing + 1..].iter().rev() {
            let mut d = Document::new();
            d.insert(name.clone(), value);
            value = Bson::Document(d);
        }
        let parent = &pr.typed[..pr.existing];
        let Some(comp) = pr.typed.get(pr.existing) else {
            return;
        };
        let target = if parent.is_empty() {
            None
        } else {
            get_mut(&mut self.doc, parent)
        };
        match (target, comp) {
            (None, Comp::Field(f)) if parent.is_empty() => {
                self.doc.insert(f.clone(), value);
            }
            (Some(Bson::Document(d)), Comp::Field(f)) => {
                d.insert(f.clone(), value);
            }
            (Some(Bson::Array(a)), Comp::Index(i)) => {
                while a.len() < *i {
                    a.push(Bson::Null);
                }
                a.push(value);
            }
            _ => return,
        }
        self.log(&pr.typed[..=pr.existing], LogKind::Insert);
    }

    /// Removes the value at `typed` (an array element becomes null).
    fn remove(&mut self, typed: &[Comp]) {
        let Some((last, parent)) = typed.split_last() else {
            return;
        };
        match last {
            Comp::Field(f) => {
                let container = if parent.is_empty() {
                    Some(&mut self.doc)
                } else {
                    match get_mut(&mut self.doc, parent) {
                        Some(Bson::Document(d)) => Some(d),
                        _ => None,
                    }
                };
                if let Some(d) = container {
                    d.remove(f);
                    self.log(typed, LogKind::Delete);
                }
            }
            Comp::Index(i) => {
                if let Some(Bson::Array(a)) = get_mut(&mut self.doc, parent)
                    && let Some(e) = a.get_mut(*i)
                {
                    *e = Bson::Null;
                    self.log(typed, LogKind::Update);
                }
            }
        }
    }

    /// `$rename`: sets the destination to the source's value, then removes the source.
    fn rename(&mut self, from: &str, to: &[String]) -> Result<()> {
        let from_parts: Vec<String> = from.split('.').map(str::to_string).collect();
        let pr = probe(&self.doc, &from_parts);
        if pr.existing != from_parts.len() {
            if let Some((name, v)) = &pr.blocker {
                return Err(MongoError::new(
                    ErrorCode::PathNotViable,
                    format!(
                        "cannot use the part ({} of {from}) to traverse the element ({{{}}})",
                        from_parts[pr.existing],
                        fmt::element(name, v)
                    ),
                ));
            }
            return Ok(());
        }
        let id = fmt::id_of(&self.doc);
        if let Some(i) = pr.typed.iter().position(|c| matches!(c, Comp::Index(_))) {
            return Err(MongoError::bad_value(format!(
                "The source field cannot be an array element, '{from}' in doc with {id} has an array field called '{}'",
                from_parts[i.saturating_sub(1)]
            )));
        }
        let to_dotted = to.join(".");
        let tp = probe(&self.doc, to);
        let ancestors = if tp.existing == to.len() {
            tp.existing - 1
        } else {
            tp.existing
        };
        for (k, name) in to.iter().enumerate().take(ancestors) {
            if let Some(Bson::Array(_)) = get(&self.doc, &tp.typed[..=k]) {
                return Err(MongoError::bad_value(format!(
                    "The destination field cannot be an array element, '{to_dotted}' in doc with {id} has an array field called '{name}'"
                )));
            }
        }
        let Some(value) = get(&self.doc, &pr.typed).cloned() else {
            return Ok(());
        };
        self.leaf(to, &Op::Set(value))?;
        self.remove(&pr.typed);
        self.modified = true;
        self.mods += 1;
        self.check_id(from)
    }
}
