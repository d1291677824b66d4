//! The field-level delta of an update: MongoDB's `$v: 2` diff tree ([`DiffNode`]), the log
//! that operator updates build while applying ([`LogTree`]), and the flattened
//! [`UpdateDelta`] that change events report as `updateDescription`.

use std::collections::BTreeMap;

use bson::{Bson, Document, doc};
use errors::{MongoError, Result};

/// The field-level change an update made, as change events report it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpdateDelta {
    /// Dotted path -> new value (whole subtrees for created or replaced fields).
    pub updated_fields: Document,
    /// Dotted paths of removed fields.
    pub removed_fields: Vec<String>,
    /// (dotted path of an array, its new length) for arrays a pipeline update shortened.
    pub truncated_arrays: Vec<(String, i32)>,
    /// path -> [components], numeric array indexes as Int32
    pub disambiguated_paths: Document,
}

impl UpdateDelta {
    /// `{updatedFields, removedFields, truncatedArrays: [{field, newSize}]}`, plus
    /// `disambiguatedPaths` (possibly `{}`) when `show_expanded`, as MongoDB 8.0 reports it.
    pub fn to_update_description(&self, show_expanded: bool) -> Document {
        let mut d = doc! {
            "updatedFields": self.updated_fields.clone(),
            "removedFields": self.removed_fields.iter().map(|s| Bson::String(s.clone())).collect::<Vec<_>>(),
            "truncatedArrays": self
                .truncated_arrays
                .iter()
                .map(|(f, n)| Bson::Document(doc! {"field": f.clone(), "newSize": *n}))
                .collect::<Vec<_>>(),
        };
        if show_expanded {
            d.insert("disambiguatedPaths", self.disambiguated_paths.clone());
        }
        d
    }

    /// A lossless document form, for storing in the oplog (see [`UpdateDelta::from_document`]).
    pub fn to_document(&self) -> Document {
        self.to_update_description(true)
    }

    /// Reads back what [`UpdateDelta::to_document`] wrote.
    pub fn from_document(d: &Document) -> Result<UpdateDelta> {
        let bad = |what: &str| MongoError::bad_value(format!("malformed update delta: {what}"));
        let updated_fields = d
            .get_document("updatedFields")
            .map_err(|_| bad("updatedFields"))?
            .clone();
        let removed_fields = d
            .get_array("removedFields")
            .map_err(|_| bad("removedFields"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("removedFields entry"))
            })
            .collect::<Result<Vec<_>>>()?;
        let truncated_arrays = d
            .get_array("truncatedArrays")
            .map_err(|_| bad("truncatedArrays"))?
            .iter()
            .map(|v| {
                let t = v
                    .as_document()
                    .ok_or_else(|| bad("truncatedArrays entry"))?;
                let f = t
                    .get_str("field")
                    .map_err(|_| bad("truncatedArrays.field"))?;
                let n = t
                    .get_i32("newSize")
                    .map_err(|_| bad("truncatedArrays.newSize"))?;
                Ok((f.to_string(), n))
            })
            .collect::<Result<Vec<_>>>()?;
        let disambiguated_paths = match d.get("disambiguatedPaths") {
            None => Document::new(),
            Some(Bson::Document(p)) => p.clone(),
            Some(_) => return Err(bad("disambiguatedPaths")),
        };
        Ok(UpdateDelta {
            updated_fields,
            removed_fields,
            truncated_arrays,
            disambiguated_paths,
        })
    }

    /// Whether the delta records no change at all.
    pub fn is_empty(&self) -> bool {
        self.updated_fields.is_empty()
            && self.removed_fields.is_empty()
            && self.truncated_arrays.is_empty()
    }
}

/// One component of a concrete path: a document field or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Comp {
    Field(String),
    Index(usize),
}

impl Comp {
    fn as_string(&self) -> String {
        match self {
            Comp::Field(f) => f.clone(),
            Comp::Index(i) => i.to_string(),
        }
    }
}

/// The dotted form of a typed path.
pub(crate) fn dotted(path: &[Comp]) -> String {
    path.iter()
        .map(Comp::as_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A node of MongoDB's `$v: 2` diff: a document diff or an array diff.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DiffNode {
    Doc(DocDiff),
    Arr(ArrDiff),
}

/// A document diff; each section keeps insertion order.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct DocDiff {
    pub deletes: Vec<String>,
    pub updates: Vec<(String, Bson)>,
    pub inserts: Vec<(String, Bson)>,
    pub subs: Vec<(String, DiffNode)>,
}

/// An array diff: an optional new length, then entries by ascending index.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct ArrDiff {
    pub resize: Option<usize>,
    pub entries: Vec<(usize, ArrEntry)>,
}

/// An array diff entry: a whole new element or a nested diff.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ArrEntry {
    Update(Bson),
    Sub(DiffNode),
}

impl DocDiff {
    /// The serialized `$v: 2` form (`{d, u, i, s<name>}`), for sizing and debugging.
    pub(crate) fn to_bson(&self) -> Document {
        let mut d = Document::new();
        if !self.deletes.is_empty() {
            d.insert(
                "d",
                self.deletes
                    .iter()
                    .map(|k| (k.clone(), Bson::Boolean(false)))
                    .collect::<Document>(),
            );
        }
        if !self.updates.is_empty() {
            d.insert("u", self.updates.iter().cloned().collect::<Document>());
        }
        if !self.inserts.is_empty() {
            d.insert("i", self.inserts.iter().cloned().collect::<Document>());
        }
        for (k, sub) in &self.subs {
            d.insert(format!("s{k}"), sub.to_bson());
        }
        d
    }
}

impl DiffNode {
    /// The serialized `$v: 2` form of this node.
    pub(crate) fn to_bson(&self) -> Document {
        match self {
            DiffNode::Doc(d) => d.to_bson(),
            DiffNode::Arr(a) => {
                let mut d = doc! {"a": true};
                if let Some(l) = a.resize {
                    d.insert("l", i32::try_from(l).unwrap_or(i32::MAX));
                }
                for (i, e) in &a.entries {
                    match e {
                        ArrEntry::Update(v) => d.insert(format!("u{i}"), v.clone()),
                        ArrEntry::Sub(s) => d.insert(format!("s{i}"), s.to_bson()),
                    };
                }
                d
            }
        }
    }
}

/// Flattens a top-level document diff into an [`UpdateDelta`] (MongoDB's change-stream
/// walk: per document level `u` then `i` entries, then `d`, then nested diffs).
pub(crate) fn to_delta(diff: &DocDiff) -> UpdateDelta {
    let mut out = UpdateDelta::default();
    let mut prefix = Vec::new();
    walk_doc(diff, &mut prefix, &mut out);
    out
}

fn walk_doc(d: &DocDiff, prefix: &mut Vec<Comp>, out: &mut UpdateDelta) {
    for (k, v) in d.updates.iter().chain(d.inserts.iter()) {
        prefix.push(Comp::Field(k.clone()));
        report(prefix, out);
        out.updated_fields.insert(dotted(prefix), v.clone());
        prefix.pop();
    }
    for k in &d.deletes {
        prefix.push(Comp::Field(k.clone()));
        report(prefix, out);
        out.removed_fields.push(dotted(prefix));
        prefix.pop();
    }
    for (k, sub) in &d.subs {
        prefix.push(Comp::Field(k.clone()));
        walk_node(sub, prefix, out);
        prefix.pop();
    }
}

fn walk_node(n: &DiffNode, prefix: &mut Vec<Comp>, out: &mut UpdateDelta) {
    match n {
        DiffNode::Doc(d) => walk_doc(d, prefix, out),
        DiffNode::Arr(a) => {
            if let Some(l) = a.resize {
                report(prefix, out);
                out.truncated_arrays
                    .push((dotted(prefix), i32::try_from(l).unwrap_or(i32::MAX)));
            }
            for (i, e) in &a.entries {
                prefix.push(Comp::Index(*i));
                match e {
                    ArrEntry::Update(v) => {
                        report(prefix, out);
                        out.updated_fields.insert(dotted(prefix), v.clone());
                    }
                    ArrEntry::Sub(s) => walk_node(s, prefix, out),
                }
                prefix.pop();
            }
        }
    }
}

/// Records `path` in `disambiguatedPaths` when its dotted form is ambiguous: a field-name
/// component containing `.`, or a strictly numeric field name after the first component.
fn report(path: &[Comp], out: &mut UpdateDelta) {
    let ambiguous = path.iter().enumerate().any(|(i, c)| match c {
        Comp::Field(f) => f.contains('.') || (i > 0 && strictly_numeric(f)),
        Comp::Index(_) => false,
    });
    if ambiguous {
        let comps: Vec<Bson> = path
            .iter()
            .map(|c| match c {
                Comp::Field(f) => Bson::String(f.clone()),
                Comp::Index(i) => Bson::Int32(i32::try_from(*i).unwrap_or(i32::MAX)),
            })
            .collect();
        out.disambiguated_paths.insert(dotted(path), comps);
    }
}

/// All digits, no leading zero unless exactly `"0"`.
pub(crate) fn strictly_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Whether two values are identical: same types, same bytes (MongoDB's `binaryEqual`).
pub(crate) fn identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::Document(x), Bson::Document(y)) => identical_docs(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        }
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code == y.code && identical_docs(&x.scope, &y.scope)
        }
        _ => a == b,
    }
}

/// Whether two documents are identical, field order included.
pub(crate) fn identical_docs(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
}

/// What an operator update did at one path, as MongoDB's log builder records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogKind {
    /// An existing value replaced wholesale (`u`).
    Update,
    /// A field that did not exist, created with its whole subtree (`i`).
    Insert,
    /// A removed document field (`d`).
    Delete,
}

#[derive(Debug, Default)]
struct LogDoc {
    entries: Vec<(String, LogEntry)>,
}

#[derive(Debug)]
enum LogEntry {
    Leaf(LogKind),
    Sub(LogNode),
}

#[derive(Debug)]
enum LogNode {
    Doc(LogDoc),
    Arr(BTreeMap<usize, LogEntry>),
}

/// The paths an operator update touched, merged into a tree; values are read from the final
/// document when the tree becomes a [`DocDiff`].
#[derive(Debug, Default)]
pub(crate) struct LogTree {
    root: LogDoc,
}

impl LogTree {
    /// Records a change at `path` (non-empty). A path under an entry already recorded whole
    /// is covered by it and ignored.
    pub(crate) fn log(&mut self, path: &[Comp], kind: LogKind) {
        log_in_doc(&mut self.root, path, kind);
    }

    /// The diff, with values read from the final document.
    pub(crate) fn resolve(&self, doc: &Document) -> DocDiff {
        resolve_doc(&self.root, Some(doc))
    }
}

fn log_in_doc(d: &mut LogDoc, path: &[Comp], kind: LogKind) {
    match path {
        [Comp::Field(f)] => set_doc_entry(d, f, kind),
        [Comp::Field(f), rest @ ..] => {
            if let Some(n) = doc_child(d, f, &rest[0]) {
                log_in_node(n, rest, kind);
            }
        }
        _ => {}
    }
}

fn log_in_node(n: &mut LogNode, path: &[Comp], kind: LogKind) {
    match n {
        LogNode::Doc(d) => log_in_doc(d, path, kind),
        LogNode::Arr(a) => match path {
            [Comp::Index(k)] => {
                a.insert(*k, LogEntry::Leaf(LogKind::Update));
            }
            [Comp::Index(k), rest @ ..] => {
                if let Some(c) = arr_child(a, *k, &rest[0]) {
                    log_in_node(c, rest, kind);
                }
            }
            _ => {}
        },
    }
}

fn set_doc_entry(d: &mut LogDoc, f: &str, kind: LogKind) {
    if let Some(e) = d.entries.iter_mut().find(|(k, _)| k == f) {
        e.1 = LogEntry::Leaf(kind);
    } else {
        d.entries.push((f.to_string(), LogEntry::Leaf(kind)));
    }
}

fn new_node(next: &Comp) -> LogNode {
    match next {
        Comp::Field(_) => LogNode::Doc(LogDoc::default()),
        Comp::Index(_) => LogNode::Arr(BTreeMap::new()),
    }
}

/// The nested node for field `f` of `d`, created if absent; `None` if `f` is already a leaf.
fn doc_child<'a>(d: &'a mut LogDoc, f: &str, next: &Comp) -> Option<&'a mut LogNode> {
    let pos = match d.entries.iter().position(|(k, _)| k == f) {
        Some(p) => p,
        None => {
            d.entries
                .push((f.to_string(), LogEntry::Sub(new_node(next))));
            d.entries.len() - 1
        }
    };
    match &mut d.entries[pos].1 {
        LogEntry::Sub(n) => Some(n),
        LogEntry::Leaf(_) => None,
    }
}

fn arr_child<'a>(
    a: &'a mut BTreeMap<usize, LogEntry>,
    k: usize,
    next: &Comp,
) -> Option<&'a mut LogNode> {
    match a.entry(k).or_insert_with(|| LogEntry::Sub(new_node(next))) {
        LogEntry::Sub(n) => Some(n),
        LogEntry::Leaf(_) => None,
    }
}

fn resolve_doc(d: &LogDoc, cur: Option<&Document>) -> DocDiff {
    let mut out = DocDiff::default();
    for (k, e) in &d.entries {
        let v = cur.and_then(|c| c.get(k));
        match e {
            LogEntry::Leaf(LogKind::Update) => {
                out.updates
                    .push((k.clone(), v.cloned().unwrap_or(Bson::Null)));
            }
            LogEntry::Leaf(LogKind::Insert) => {
                out.inserts
                    .push((k.clone(), v.cloned().unwrap_or(Bson::Null)));
            }
            LogEntry::Leaf(LogKind::Delete) => out.deletes.push(k.clone()),
            LogEntry::Sub(n) => out.subs.push((k.clone(), resolve_node(n, v))),
        }
    }
    out
}

fn resolve_node(n: &LogNode, cur: Option<&Bson>) -> DiffNode {
    match n {
        LogNode::Doc(d) => {
            let c = match cur {
                Some(Bson::Document(c)) => Some(c),
                _ => None,
            };
            DiffNode::Doc(resolve_doc(d, c))
        }
        LogNode::Arr(a) => {
            let arr = match cur {
                Some(Bson::Array(c)) => Some(c),
                _ => None,
            };
            let entries = a
                .iter()
                .map(|(k, e)| {
                    let v = arr.and_then(|c| c.get(*k));
                    let entry = match e {
                        LogEntry::Leaf(_) => ArrEntry::Update(v.cloned().unwrap_or(Bson::Null)),
                        LogEntry::Sub(n) => ArrEntry::Sub(resolve_node(n, v)),
                    };
                    (*k, entry)
                })
                .collect();
            DiffNode::Arr(ArrDiff {
                resize: None,
                entries,
            })
        }
    }
}
