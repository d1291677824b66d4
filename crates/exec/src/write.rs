//! Document writes that keep indexes in step.
//!
//! Each function checks everything that can fail (unique constraints, sizes) before it
//! changes anything, so a failed statement leaves no trace in the commit pipeline's
//! transaction (see `storage::Store::write`).

use bson::{Bson, Document, doc};
use errors::{ErrorCode, ExtraInfo, MongoError, Result};
use query::filter::Filter;
use storage::{CollectionMeta, IndexMeta, WriteCtx};

use crate::keys::{entry_keys, id_key};

/// The largest document MongoDB stores.
pub const MAX_DOC_BYTES: usize = 16 * 1024 * 1024;

/// An index's partial filter, parsed under the index's collation.
///
/// # Errors
/// A filter that no longer parses.
pub fn partial(ix: &IndexMeta) -> Result<Option<Filter>> {
    ix.partial_filter
        .as_ref()
        .map(|f| Ok(Filter::parse(f)?.with_collation(crate::collation::of_index(ix))))
        .transpose()
}

/// Serializes a document for storage, enforcing the size limit.
///
/// # Errors
/// BSONObjectTooLarge when over 16 MiB.
pub fn encode_doc(doc: &Document) -> Result<Vec<u8>> {
    let b = doc::encode::encode(doc).map_err(|e| MongoError::bad_value(e.to_string()))?;
    check_size(b)
}

/// `b`, a document's encoding, if it is within the size a stored document may have.
///
/// # Errors
/// BSONObjectTooLarge.
pub fn check_size(b: Vec<u8>) -> Result<Vec<u8>> {
    if b.len() > MAX_DOC_BYTES {
        return Err(MongoError::new(
            ErrorCode::BSONObjectTooLarge,
            format!(
                "object to insert too large. size in bytes: {}, max size: {MAX_DOC_BYTES}",
                b.len()
            ),
        ));
    }
    Ok(b)
}

/// The DuplicateKey error MongoDB reports for `ix` and the document's key values.
pub fn duplicate_key(meta: &CollectionMeta, ix: &IndexMeta, doc: &Document) -> MongoError {
    let mut key_value = Document::new();
    for (f, _) in ix.fields() {
        let v = doc::get_path(doc, &f).cloned().unwrap_or(Bson::Null);
        key_value.insert(f, v);
    }
    let shown: Vec<String> = key_value
        .iter()
        .map(|(k, v)| format!("{k}: {}", display(v)))
        .collect();
    let mut e = MongoError::new(
        ErrorCode::DuplicateKey,
        format!(
            "E11000 duplicate key error collection: {} index: {} dup key: {{ {} }}",
            meta.ns.full(),
            ix.name,
            shown.join(", ")
        ),
    );
    e.extra = Some(Box::new(ExtraInfo::DuplicateKey {
        key_pattern: bson::to_vec(&ix.key).unwrap_or_default(),
        key_value: bson::to_vec(&key_value).unwrap_or_default(),
    }));
    e
}

fn display(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn id_index(meta: &CollectionMeta) -> IndexMeta {
    meta.index("_id_").cloned().unwrap_or_else(|| IndexMeta {
        id: 0,
        name: "_id_".into(),
        key: doc! {"_id": 1},
        unique: true,
        sparse: false,
        partial_filter: None,
        spec: Document::new(),
        multikey: false,
    })
}

/// Inserts a document (which has its `_id`), with its index entries, and returns the
/// document as it stored it (encoded).
///
/// # Errors
/// DuplicateKey, BSONObjectTooLarge, or a storage error.
pub fn insert_doc(
    ctx: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    doc: &Document,
) -> Result<Vec<u8>> {
    let id = doc
        .get("_id")
        .ok_or_else(|| MongoError::internal("document without _id"))?;
    let bytes = encode_doc(doc)?;
    insert_encoded(ctx, meta, &bytes, id, Some(doc))?;
    Ok(bytes)
}

/// Whether inserting into `meta` needs the document itself, not only its bytes and
/// `_id`: for the keys of its secondary indexes.
pub fn insert_needs_document(meta: &CollectionMeta) -> bool {
    meta.indexes.iter().any(|i| !i.is_id())
}

/// Inserts a document given as its stored bytes (`_id` first, within the size limit)
/// and its `_id`, with its index entries. `doc` is the same document decoded; it must be
/// given when [`insert_needs_document`], and is decoded here if an error message needs it.
///
/// # Errors
/// DuplicateKey, or a storage error.
pub fn insert_encoded(
    ctx: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    bytes: &[u8],
    id: &Bson,
    doc: Option<&Document>,
) -> Result<()> {
    let idk = id_key(id);
    if ctx.has_doc(meta.id, &idk)? {
        let d = match doc {
            Some(d) => d.clone(),
            None => bson::from_slice(bytes).map_err(|e| MongoError::internal(e.to_string()))?,
        };
        return Err(duplicate_key(meta, &id_index(meta), &d));
    }
    let mut planned = Vec::new();
    let mut became_multikey = false;
    for ix in meta.indexes.iter().filter(|i| !i.is_id()) {
        let doc =
            doc.ok_or_else(|| MongoError::internal("an indexed insert without its document"))?;
        let pf = partial(ix)?;
        let (keys, mk) = entry_keys(ix, pf.as_ref(), doc, &idk)?;
        if ix.unique {
            for k in &keys {
                if ctx.index_get(k)?.is_some_and(|owner| owner != idk) {
                    return Err(duplicate_key(meta, ix, doc));
                }
            }
        }
        became_multikey |= mk && !ix.multikey;
        planned.push((ix.id, keys, mk));
    }
    ctx.put_new_doc(meta.id, &idk, bytes)?;
    if meta.capped().is_some() {
        ctx.add_capped_usage(meta.id, 1, bytes.len() as i64)?;
    }
    for (_, keys, _) in &planned {
        for k in keys {
            ctx.index_put(k, &idk)?;
        }
    }
    if became_multikey {
        mark_multikey(ctx, meta, &planned)?;
    }
    Ok(())
}

fn mark_multikey(
    ctx: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    planned: &[(u64, Vec<Vec<u8>>, bool)],
) -> Result<()> {
    for (id, _, mk) in planned {
        if *mk && let Some(ix) = meta.indexes.iter_mut().find(|i| i.id == *id) {
            ix.multikey = true;
        }
    }
    ctx.put_collection(meta)
}

/// Replaces `old` by `new` (same `_id`), moving index entries that changed.
///
/// # Errors
/// DuplicateKey, BSONObjectTooLarge, or a storage error.
pub fn replace_doc(
    ctx: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    old: &Document,
    new: &Document,
) -> Result<()> {
    let id = new
        .get("_id")
        .ok_or_else(|| MongoError::internal("document without _id"))?;
    let idk = id_key(id);
    let bytes = encode_doc(new)?;
    let mut planned = Vec::new();
    let mut became_multikey = false;
    for ix in meta.indexes.iter().filter(|i| !i.is_id()) {
        let pf = partial(ix)?;
        let (old_keys, _) = entry_keys(ix, pf.as_ref(), old, &idk)?;
        let (new_keys, mk) = entry_keys(ix, pf.as_ref(), new, &idk)?;
        let added: Vec<Vec<u8>> = new_keys
            .iter()
            .filter(|k| !old_keys.contains(k))
            .cloned()
            .collect();
        let removed: Vec<Vec<u8>> = old_keys
            .into_iter()
            .filter(|k| !new_keys.contains(k))
            .collect();
        if ix.unique {
            for k in &added {
                if ctx.index_get(k)?.is_some_and(|owner| owner != idk) {
                    return Err(duplicate_key(meta, ix, new));
                }
            }
        }
        became_multikey |= mk && !ix.multikey;
        planned.push((ix.id, added, removed, mk));
    }
    ctx.put_doc(meta.id, &idk, &bytes)?;
    if meta.capped().is_some() {
        let grew = bytes.len() as i64 - doc::encoded_len(old) as i64;
        ctx.add_capped_usage(meta.id, 0, grew)?;
    }
    for (_, added, removed, _) in &planned {
        for k in removed {
            ctx.index_remove(k)?;
        }
        for k in added {
            ctx.index_put(k, &idk)?;
        }
    }
    if became_multikey {
        let flags: Vec<(u64, Vec<Vec<u8>>, bool)> = planned
            .into_iter()
            .map(|(id, _, _, mk)| (id, Vec::new(), mk))
            .collect();
        mark_multikey(ctx, meta, &flags)?;
    }
    Ok(())
}

/// Deletes a document and its index entries.
///
/// # Errors
/// A storage error.
pub fn delete_doc(ctx: &mut WriteCtx<'_>, meta: &CollectionMeta, doc: &Document) -> Result<()> {
    let id = doc
        .get("_id")
        .ok_or_else(|| MongoError::internal("document without _id"))?;
    let idk = id_key(id);
    for ix in meta.indexes.iter().filter(|i| !i.is_id()) {
        let pf = partial(ix)?;
        for k in entry_keys(ix, pf.as_ref(), doc, &idk)?.0 {
            ctx.index_remove(&k)?;
        }
    }
    ctx.delete_doc(meta.id, &idk)?;
    if meta.capped().is_some() {
        ctx.add_capped_usage(meta.id, -1, -(doc::encoded_len(doc) as i64))?;
    }
    Ok(())
}

/// The oldest document of a capped collection over its bounds (its size in bytes or its
/// document count), which the caller deletes (and logs) before asking again; `None` once
/// the collection is within them, and always for other collections.
///
/// # Errors
/// A storage error.
pub fn capped_excess(ctx: &mut WriteCtx<'_>, meta: &CollectionMeta) -> Result<Option<Document>> {
    let Some((size, max)) = meta.capped() else {
        return Ok(None);
    };
    let (count, bytes) = ctx.capped_usage(meta.id)?;
    if bytes > size || max.is_some_and(|m| count > m) {
        return ctx.oldest_doc(meta.id);
    }
    Ok(None)
}

/// Builds a new index over the collection's existing documents. On a unique violation,
/// removes what it wrote and reports DuplicateKey.
///
/// # Errors
/// DuplicateKey or a storage error.
pub fn build_index(
    ctx: &mut WriteCtx<'_>,
    meta: &CollectionMeta,
    ix: &mut IndexMeta,
) -> Result<()> {
    let pf = partial(ix)?;
    for (idk, doc) in ctx.scan_docs(meta.id)? {
        let (keys, mk) = entry_keys(ix, pf.as_ref(), &doc, &idk)?;
        ix.multikey |= mk;
        for k in keys {
            if ix.unique && ctx.index_get(&k)?.is_some_and(|owner| owner != idk) {
                let e = duplicate_key(meta, ix, &doc);
                ctx.remove_index_entries(ix.id)?;
                return Err(e);
            }
            ctx.index_put(&k, &idk)?;
        }
    }
    Ok(())
}
