//! Parsing operator-style updates into MongoDB's update tree: each path split into parts,
//! checked, and merged with the others so that conflicting paths are rejected up front.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bson::{Bson, Document};
use errors::{ErrorCode, MongoError, Result};

use super::ops::{self, Op};
use super::{fmt, is_prefix};
use crate::filter::Filter;

/// The update operators MongoDB accepts.
const OPERATORS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$setOnInsert",
    "$currentDate",
    "$push",
    "$addToSet",
    "$pop",
    "$pull",
    "$pullAll",
    "$bit",
];

/// One component of an update path as written.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Field(String),
    /// `$`
    Positional,
    /// `$[]`
    All,
    /// `$[<id>]`
    Id(String),
}

/// A parsed operator update: the tree and the array filters by identifier.
#[derive(Debug, Clone)]
pub(crate) struct OpUpdate {
    pub(crate) root: Node,
    pub(crate) filters: BTreeMap<String, Filter>,
    /// The operation's collation (`$addToSet`, `$pull`, `$min`, `$max`, `$push`'s `$sort`).
    pub(crate) collation: Option<std::sync::Arc<doc::Collation>>,
}

/// A node of the parsed update tree.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Fields (sorted as MongoDB applies them) and an optional positional `$` child.
    Object {
        children: Vec<(String, Node)>,
        positional: Option<Box<Node>>,
    },
    /// `$[]` (key "") and `$[<id>]` children.
    Array {
        children: Vec<(String, Node)>,
    },
    Leaf(Op),
}

/// MongoDB's order of update fields (`cmpPathsAndArrayIndexes`): names starting with a digit
/// (and not zero-padded) order by length first, so `"9"` precedes `"10"`; otherwise bytewise.
pub(crate) fn field_cmp(a: &str, b: &str) -> Ordering {
    let numberish = |s: &str| {
        s.as_bytes().first().is_some_and(u8::is_ascii_digit) && !(s.starts_with('0') && s.len() > 1)
    };
    if numberish(a) && numberish(b) && a.len() != b.len() {
        a.len().cmp(&b.len())
    } else {
        a.cmp(b)
    }
}

fn sorted_child<'a>(
    children: &'a mut Vec<(String, Node)>,
    key: &str,
    make: impl FnOnce() -> Node,
) -> &'a mut Node {
    let pos = match find_sorted(children, key) {
        Ok(p) => p,
        Err(p) => {
            children.insert(p, (key.to_string(), make()));
            p
        }
    };
    &mut children[pos].1
}

/// The position of `key` among `children` sorted by [`field_cmp`], or where to insert it.
/// Existence is checked by equality: `field_cmp` is not transitive for names mixing
/// digits and letters (nor is MongoDB's), so a binary search could miss a key.
pub(crate) fn find_sorted<T>(children: &[(String, T)], key: &str) -> Result<usize, usize> {
    match children.iter().position(|(k, _)| k == key) {
        Some(p) => Ok(p),
        None => Err(children.partition_point(|(k, _)| field_cmp(k, key) == Ordering::Less)),
    }
}

fn conflict(path: &str, at: &[Part]) -> MongoError {
    MongoError::new(
        ErrorCode::ConflictingUpdateOperators,
        format!(
            "Updating the path '{path}' would create a conflict at '{}'",
            join_parts(at)
        ),
    )
}

fn join_parts(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Field(f) => f.clone(),
            Part::Positional => "$".to_string(),
            Part::All => "$[]".to_string(),
            Part::Id(id) => format!("$[{id}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Inserts a leaf at `parts`, rejecting paths that conflict with ones already present.
fn insert_leaf(root: &mut Node, parts: &[Part], path: &str, op: Op) -> Result<()> {
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let make = || match parts.get(i + 1) {
            Some(Part::All | Part::Id(_)) => Node::Array {
                children: Vec::new(),
            },
            _ => Node::Object {
                children: Vec::new(),
                positional: None,
            },
        };
        let exists = child_exists(cur, part);
        if last && exists {
            return Err(conflict(path, parts));
        }
        let child = match (cur, part) {
            (Node::Object { children, .. }, Part::Field(f)) => sorted_child(children, f, make),
            (Node::Object { positional, .. }, Part::Positional) => {
                positional.get_or_insert_with(|| Box::new(make()))
            }
            (Node::Array { children }, Part::All) => sorted_child(children, "", make),
            (Node::Array { children }, Part::Id(id)) => sorted_child(children, id, make),
            _ => return Err(conflict(path, &parts[..i])),
        };
        if last {
            *child = Node::Leaf(op);
            return Ok(());
        }
        cur = child;
    }
    Ok(())
}

fn child_exists(node: &Node, part: &Part) -> bool {
    match (node, part) {
        (Node::Object { children, .. }, Part::Field(f)) => children.iter().any(|(k, _)| k == f),
        (Node::Object { positional, .. }, Part::Positional) => positional.is_some(),
        (Node::Array { children }, Part::All) => children.iter().any(|(k, _)| k.is_empty()),
        (Node::Array { children }, Part::Id(id)) => children.iter().any(|(k, _)| k == id),
        _ => false,
    }
}

/// Splits and checks an update path.
fn parse_path(path: &str, filters: &BTreeMap<String, Filter>) -> Result<Vec<Part>> {
    if path.is_empty() {
        return Err(MongoError::new(
            ErrorCode::EmptyFieldName,
            "An empty update path is not valid.",
        ));
    }
    let mut parts = Vec::new();
    for p in path.split('.') {
        if p.is_empty() {
            return Err(MongoError::new(
                ErrorCode::EmptyFieldName,
                format!(
                    "The update path '{path}' contains an empty field name, which is not allowed."
                ),
            ));
        }
        parts.push(if p == "$" {
            Part::Positional
        } else if p == "$[]" {
            Part::All
        } else if let Some(id) = p.strip_prefix("$[").and_then(|s| s.strip_suffix(']')) {
            Part::Id(id.to_string())
        } else {
            Part::Field(p.to_string())
        });
    }
    let positionals: Vec<usize> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == Part::Positional)
        .map(|(i, _)| i)
        .collect();
    if positionals.len() > 1 {
        return Err(MongoError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{path}'"
        )));
    }
    if positionals.first() == Some(&0) {
        return Err(MongoError::bad_value(format!(
            "Cannot have positional (i.e. '$') element in the first position in path '{path}'"
        )));
    }
    if matches!(parts[0], Part::All | Part::Id(_)) {
        return Err(MongoError::bad_value(format!(
            "Cannot have array filter identifier (i.e. '$[<id>]') element in the first position in path '{path}'"
        )));
    }
    for p in &parts {
        if let Part::Id(id) = p
            && !filters.contains_key(id)
        {
            return Err(MongoError::bad_value(format!(
                "No array filter found for identifier '{id}' in path '{path}'"
            )));
        }
    }
    // Since 5.0 only top-level field names may not start with `$` (nested ones are stored).
    if let Part::Field(f) = &parts[0]
        && f.starts_with('$')
    {
        return Err(ops::dollar_field(f, f));
    }
    Ok(parts)
}

/// Parses `arrayFilters`: one filter per identifier.
pub(crate) fn parse_array_filters(afs: &[Document]) -> Result<BTreeMap<String, Filter>> {
    let mut out = BTreeMap::new();
    for af in afs {
        let mut ids = Vec::new();
        collect_placeholders(af, &mut ids);
        let Some(id) = ids.first().cloned() else {
            return Err(MongoError::failed_to_parse(
                "Cannot use an expression without a top-level field name in arrayFilters",
            ));
        };
        if let Some(other) = ids.iter().find(|i| **i != id) {
            return Err(MongoError::failed_to_parse(format!(
                "Error parsing array filter :: caused by :: Expected a single top-level field name, found '{id}' and '{other}'"
            )));
        }
        let mut chars = id.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(MongoError::bad_value(format!(
                "Error parsing array filter :: caused by :: The top-level field name must be an alphanumeric string beginning with a lowercase letter, found '{id}'"
            )));
        }
        if out.contains_key(&id) {
            return Err(MongoError::failed_to_parse(format!(
                "Found multiple array filters with the same top-level field name {id}"
            )));
        }
        let f = Filter::parse(af)?;
        out.insert(id, f);
    }
    Ok(out)
}

fn collect_placeholders(d: &Document, out: &mut Vec<String>) {
    for (k, v) in d {
        if matches!(k.as_str(), "$and" | "$or" | "$nor") {
            if let Bson::Array(a) = v {
                for e in a {
                    if let Bson::Document(sub) = e {
                        collect_placeholders(sub, out);
                    }
                }
            }
        } else if !k.starts_with('$') {
            out.push(k.split('.').next().unwrap_or("").to_string());
        }
    }
}

pub(crate) fn parse_operators(d: &Document, array_filters: &[Document]) -> Result<OpUpdate> {
    let filters = parse_array_filters(array_filters)?;
    let mut root = Node::Object {
        children: Vec::new(),
        positional: None,
    };
    let mut used: Vec<String> = Vec::new();
    for (name, arg) in d {
        if !OPERATORS.contains(&name.as_str()) {
            return Err(MongoError::failed_to_parse(format!(
                "Unknown modifier: {name}. Expected a valid update modifier or pipeline-style update specified as an array"
            )));
        }
        let Bson::Document(fields) = arg else {
            return Err(MongoError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{}}}",
                fmt::type_name(arg),
                fmt::element(name, arg)
            )));
        };
        for (path, v) in fields {
            if name == "$rename" {
                parse_rename(&mut root, path, v, &filters)?;
                continue;
            }
            let parts = parse_path(path, &filters)?;
            for p in &parts {
                if let Part::Id(id) = p {
                    used.push(id.clone());
                }
            }
            let field = path.rsplit('.').next().unwrap_or(path);
            let op = Op::parse(name, field, v)?;
            insert_leaf(&mut root, &parts, path, op)?;
        }
    }
    for id in filters.keys() {
        if !used.contains(id) {
            return Err(MongoError::failed_to_parse(format!(
                "The array filter for identifier '{id}' was not used in the update {}",
                fmt::document(d)
            )));
        }
    }
    Ok(OpUpdate {
        root,
        filters,
        collation: None,
    })
}

fn parse_rename(
    root: &mut Node,
    from: &str,
    to: &Bson,
    filters: &BTreeMap<String, Filter>,
) -> Result<()> {
    let elem = fmt::element(from, to);
    let Bson::String(to) = to else {
        return Err(MongoError::bad_value(format!(
            "The 'to' field for $rename must be a string: {elem}"
        )));
    };
    let from_parts = parse_path(from, filters)?;
    let to_parts = parse_path(to, filters)?;
    if from_parts.iter().any(|p| !matches!(p, Part::Field(_))) {
        return Err(MongoError::bad_value(format!(
            "The source field for $rename may not be dynamic: {from}"
        )));
    }
    if to_parts.iter().any(|p| !matches!(p, Part::Field(_))) {
        return Err(MongoError::bad_value(format!(
            "The destination field for $rename may not be dynamic: {to}"
        )));
    }
    if from == to {
        return Err(MongoError::bad_value(format!(
            "The source and target field for $rename must differ: {elem}"
        )));
    }
    if is_prefix(from, to) || is_prefix(to, from) {
        return Err(MongoError::bad_value(format!(
            "The source and target field for $rename must not be on the same path: {elem}"
        )));
    }
    insert_leaf(root, &from_parts, from, Op::RenameSource)?;
    insert_leaf(
        root,
        &to_parts,
        to,
        Op::Rename {
            from: from.to_string(),
        },
    )
}
