//! Which collation an operation, a collection and an index use.
//!
//! A collection's default collation is its `collation` option (the expanded spec, as
//! `create` stored it); an index's is the `collation` of its spec. An operation's explicit
//! `collation` overrides the collection default, `{locale: "simple"}` included.

use std::sync::Arc;

use bson::{Bson, Document};
use doc::Collation;
use errors::Result;
use storage::{CollectionMeta, IndexMeta};

/// The collation of an index (`None`: simple). Specs in the catalog were validated when
/// the index was created, so one that no longer parses counts as simple.
pub fn of_index(ix: &IndexMeta) -> Option<Arc<Collation>> {
    match ix.spec.get("collation") {
        Some(Bson::Document(d)) => Collation::parse(d).ok().flatten(),
        _ => None,
    }
}

/// A collection's default collation (`None`: simple).
///
/// # Errors
/// A stored spec that does not parse.
pub fn of_collection(meta: &CollectionMeta) -> Result<Option<Arc<Collation>>> {
    Collation::from_option(meta.options.get("collation"))
}

/// The collation an operation runs with: its own `collation` field of `spec` if present,
/// else the collection's default.
///
/// # Errors
/// A malformed collation document (MongoDB's codes, see [`Collation::parse`]).
pub fn for_operation(
    spec: &Document,
    meta: Option<&CollectionMeta>,
) -> Result<Option<Arc<Collation>>> {
    match spec.get("collation") {
        Some(v) => Collation::from_option(Some(v)),
        None => match meta {
            Some(m) => of_collection(m),
            None => Ok(None),
        },
    }
}

/// Whether a value has strings anywhere in it (then its index keys depend on collation).
pub fn has_strings(v: &Bson) -> bool {
    match v {
        Bson::String(_) | Bson::Symbol(_) => true,
        Bson::Document(d) => d.values().any(has_strings),
        Bson::Array(a) => a.iter().any(has_strings),
        Bson::JavaScriptCodeWithScope(c) => c.scope.values().any(has_strings),
        _ => false,
    }
}

/// The collation of a read command on `ns` (its `collation`, else the collection's default
/// as of `snap`).
///
/// # Errors
/// A malformed collation document, or a storage error.
pub fn for_read(
    cmd: &Document,
    snap: &storage::Snapshot,
    ns: &storage::Namespace,
) -> Result<Option<Arc<Collation>>> {
    if cmd.contains_key("collation") {
        return for_operation(cmd, None);
    }
    for_operation(cmd, snap.collection(ns)?.as_ref())
}

/// The collation of one write statement (an `updates` or `deletes` entry, or a
/// findAndModify command) on `ns`: its `collation`, else the collection's default.
///
/// # Errors
/// A malformed collation document, or a storage error.
pub fn for_write(
    spec: &Document,
    w: &mut storage::WriteCtx<'_>,
    ns: &storage::Namespace,
) -> Result<Option<Arc<Collation>>> {
    if spec.contains_key("collation") {
        return for_operation(spec, None);
    }
    for_operation(spec, w.collection(ns)?.as_ref())
}
