//! Index keys of documents.
//!
//! An entry of a unique index is `index id (8 bytes BE) ++ KeyString(values)` with the
//! record's `_id` key as value, so a second document with the same values finds the entry.
//! A non-unique entry appends the `_id` key to the key, so equal values coexist.
//! An index with a collation keys strings by their collation sort keys, so its order is the
//! collation's and values equal under it (`"a"`, `"A"` at strength 2) share a key.

use bson::{Bson, Document};
use doc::keystring;
use errors::{ErrorCode, MongoError, Result};
use query::filter::Filter;
use query::text::TextIndex;
use storage::IndexMeta;

/// The record key of a document with this `_id`.
pub fn id_key(id: &Bson) -> Vec<u8> {
    keystring::encode_key(&[(id, false)])
}

/// The prefix every entry of an index starts with.
pub fn index_prefix(index_id: u64) -> Vec<u8> {
    index_id.to_be_bytes().to_vec()
}

/// The values a document has for an index's fields, one tuple per entry (several for a
/// multikey index), and whether any field held an array.
pub fn key_tuples(ix: &IndexMeta, doc: &Document) -> (Vec<Vec<Bson>>, bool) {
    let mut tuples: Vec<Vec<Bson>> = vec![Vec::new()];
    let mut multikey = false;
    for (field, _) in ix.fields() {
        let mut vals = Vec::new();
        for v in doc::lookup_all(doc, &field) {
            match v {
                Some(Bson::Array(a)) => {
                    multikey = true;
                    if a.is_empty() {
                        vals.push(Bson::Undefined);
                    }
                    vals.extend(a);
                }
                Some(v) => vals.push(v),
                None => vals.push(Bson::Null),
            }
        }
        if vals.len() > 1 {
            // A missing value beside real ones adds nothing (e.g. `a.b` over `[{b:1},{}]`
            // still indexes the null, as MongoDB does, but only once).
            vals.sort_by(doc::cmp_values);
            vals.dedup_by(|a, b| {
                doc::values_equal(a, b) && doc::compare::type_rank(a) == doc::compare::type_rank(b)
            });
        }
        if vals.is_empty() {
            vals.push(Bson::Null);
        }
        let mut next = Vec::with_capacity(tuples.len() * vals.len());
        for t in &tuples {
            for v in &vals {
                let mut t2 = t.clone();
                t2.push(v.clone());
                next.push(t2);
            }
        }
        tuples = next;
    }
    (tuples, multikey)
}

/// Whether a sparse index skips this document (all its fields missing).
fn sparse_skips(ix: &IndexMeta, doc: &Document) -> bool {
    ix.sparse
        && ix
            .fields()
            .iter()
            .all(|(f, _)| doc::lookup_all(doc, f).iter().all(Option::is_none))
}

/// A text index's entries: one per distinct term of the document, after the values of
/// the compound index's prefix fields (the suffix fields are not keyed: a text scan reads
/// terms only). Documents without terms have none, as text indexes are sparse.
fn text_keys(ix: &IndexMeta, doc: &Document, id_key: &[u8]) -> Result<(Vec<Vec<u8>>, bool)> {
    let Some(t) = TextIndex::from_spec(&ix.key, &ix.spec) else {
        return Ok((Vec::new(), false));
    };
    let mut head = index_prefix(ix.id);
    for f in &t.prefix {
        let v = match doc::lookup_all(doc, f).into_iter().next().flatten() {
            Some(Bson::Array(_)) => {
                return Err(MongoError::new(
                    ErrorCode::CannotBuildIndexKeys,
                    format!("cannot have a multi-key as a prefix to a text index: {f}"),
                ));
            }
            Some(v) => v,
            None => Bson::Null,
        };
        keystring::append_value_collated(&mut head, &v, false, None);
    }
    let keys = t
        .terms(doc)?
        .into_iter()
        .map(|term| {
            let mut k = head.clone();
            keystring::append_value_collated(&mut k, &Bson::String(term), false, None);
            k.extend_from_slice(id_key);
            k
        })
        .collect();
    Ok((keys, true))
}

/// A value's hash as a hashed index keys it: the first 8 bytes of the MD5 of its key
/// string encoding (so values MongoDB considers equal, `1` and `1.0`, share it; strings
/// under the index's collation).
pub fn hashed_value(v: &Bson, coll: Option<&doc::Collation>) -> Bson {
    use md5::{Digest, Md5};
    let mut k = Vec::new();
    keystring::append_value_collated(&mut k, v, false, coll);
    let h = Md5::digest(&k);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    Bson::Int64(i64::from_le_bytes(b))
}

/// A hashed index's entry: the hash of its field's value (null when missing). Arrays
/// are refused, as mongod refuses them (16766).
fn hashed_keys(ix: &IndexMeta, doc: &Document, id_key: &[u8]) -> Result<(Vec<Vec<u8>>, bool)> {
    let Some((field, _)) = ix.key.iter().next() else {
        return Ok((Vec::new(), false));
    };
    let vals = doc::lookup_all(doc, field);
    if vals.len() > 1 || vals.iter().any(|v| matches!(v, Some(Bson::Array(_)))) {
        return Err(MongoError::with_code(
            16766,
            "Error: hashed indexes do not currently support array values",
        ));
    }
    let v = vals.into_iter().next().flatten().unwrap_or(Bson::Null);
    let coll = crate::collation::of_index(ix);
    let mut k = index_prefix(ix.id);
    keystring::append_value_collated(&mut k, &hashed_value(&v, coll.as_deref()), false, None);
    k.extend_from_slice(id_key);
    Ok((vec![k], false))
}

/// The paths a wildcard index covers: under its `path.$**`, or everything but `_id` (and
/// what `wildcardProjection` includes or excludes).
pub struct WildcardScope {
    root: Option<String>,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl WildcardScope {
    pub fn of(ix: &IndexMeta) -> WildcardScope {
        let key = ix.key.keys().next().cloned().unwrap_or_default();
        let root = key.strip_suffix(".$**").map(str::to_string);
        let mut include = Vec::new();
        let mut exclude = Vec::new();
        if let Ok(p) = ix.spec.get_document("wildcardProjection") {
            for (k, v) in p {
                if query::expr::truthy(v) {
                    include.push(k.clone());
                } else {
                    exclude.push(k.clone());
                }
            }
        }
        WildcardScope {
            root,
            include,
            exclude,
        }
    }

    fn under(path: &str, prefix: &str) -> bool {
        path == prefix || path.starts_with(prefix) && path[prefix.len()..].starts_with('.')
    }

    /// Whether the index holds the values at `path`.
    pub fn covers(&self, path: &str) -> bool {
        if let Some(r) = &self.root {
            return Self::under(path, r);
        }
        if !self.include.is_empty() {
            return self.include.iter().any(|p| Self::under(path, p));
        }
        if self.exclude.iter().any(|p| Self::under(path, p)) {
            return false;
        }
        !Self::under(path, "_id")
    }
}

/// A wildcard index's entries: `(path, value)` for every scalar (and empty array or
/// object) the covered paths reach, arrays' elements under the array's path.
fn wildcard_keys(ix: &IndexMeta, doc: &Document, id_key: &[u8]) -> Vec<Vec<u8>> {
    fn walk(v: &Bson, path: &str, scope: &WildcardScope, out: &mut Vec<(String, Bson)>) {
        match v {
            Bson::Document(d) if !d.is_empty() => {
                for (k, x) in d {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x, &p, scope, out);
                }
            }
            Bson::Array(a) if !a.is_empty() => {
                for e in a {
                    if !matches!(e, Bson::Array(_)) {
                        walk(e, path, scope, out);
                    }
                }
            }
            other => {
                if scope.covers(path) {
                    out.push((path.to_string(), other.clone()));
                }
            }
        }
    }
    let scope = WildcardScope::of(ix);
    let mut pairs = Vec::new();
    walk(&Bson::Document(doc.clone()), "", &scope, &mut pairs);
    let coll = crate::collation::of_index(ix);
    let mut keys: Vec<Vec<u8>> = pairs
        .into_iter()
        .map(|(p, v)| {
            let mut k = index_prefix(ix.id);
            keystring::append_value_collated(&mut k, &Bson::String(p), false, None);
            keystring::append_value_collated(&mut k, &v, false, coll.as_deref());
            k.extend_from_slice(id_key);
            k
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The full entry keys a document has in an index (empty if sparse/partial exclude it),
/// and whether the document made the index multikey.
///
/// # Errors
/// A text index's refusal of the document (a bad language override).
pub fn entry_keys(
    ix: &IndexMeta,
    partial: Option<&Filter>,
    doc: &Document,
    id_key: &[u8],
) -> Result<(Vec<Vec<u8>>, bool)> {
    if partial.is_some_and(|f| !f.matches(doc)) {
        return Ok((Vec::new(), false));
    }
    if ix.is_text() {
        return text_keys(ix, doc, id_key);
    }
    if ix.is_sphere() {
        return crate::geo::sphere_keys(ix, doc, id_key);
    }
    if ix.is_2d() {
        return crate::geo::flat_keys(ix, doc, id_key);
    }
    if ix.is_hashed() {
        return hashed_keys(ix, doc, id_key);
    }
    if ix.is_wildcard() {
        return Ok((wildcard_keys(ix, doc, id_key), true));
    }
    if sparse_skips(ix, doc) {
        return Ok((Vec::new(), false));
    }
    let dirs: Vec<bool> = ix.fields().iter().map(|(_, d)| *d).collect();
    let (tuples, multikey) = key_tuples(ix, doc);
    let coll = crate::collation::of_index(ix);
    let mut keys: Vec<Vec<u8>> = tuples
        .iter()
        .map(|t| {
            let mut k = index_prefix(ix.id);
            for (v, d) in t.iter().zip(&dirs) {
                keystring::append_value_collated(&mut k, v, *d, coll.as_deref());
            }
            if !ix.unique {
                k.extend_from_slice(id_key);
            }
            k
        })
        .collect();
    if coll.is_some() {
        // Array elements equal under the collation give one entry, not two.
        keys.sort();
        keys.dedup();
    }
    Ok((keys, multikey))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn ix(key: Document, unique: bool, sparse: bool) -> IndexMeta {
        IndexMeta {
            id: 3,
            name: "x".into(),
            key,
            unique,
            sparse,
            partial_filter: None,
            spec: Document::new(),
            multikey: false,
        }
    }

    #[test]
    fn multikey_and_sparse() {
        let i = ix(doc! {"a": 1}, false, false);
        let (keys, mk) = entry_keys(&i, None, &doc! {"_id": 1, "a": [1, 2, 2]}, b"id").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(mk);
        let s = ix(doc! {"a": 1}, true, true);
        assert!(
            entry_keys(&s, None, &doc! {"_id": 1}, b"id")
                .unwrap()
                .0
                .is_empty()
        );
        let (k1, _) = entry_keys(&s, None, &doc! {"a": 1}, b"id").unwrap();
        let (k2, _) = entry_keys(&s, None, &doc! {"a": 1.0}, b"other").unwrap();
        assert_eq!(k1, k2, "unique keys ignore the _id and numeric type");
    }

    #[test]
    fn collated_index_keys_strings_by_sort_key() {
        let mut ci = ix(doc! {"a": 1}, true, false);
        ci.spec = doc! {"collation": {"locale": "en", "strength": 2}};
        let (k1, _) = entry_keys(&ci, None, &doc! {"a": "abc"}, b"1").unwrap();
        let (k2, _) = entry_keys(&ci, None, &doc! {"a": "ABC"}, b"2").unwrap();
        assert_eq!(
            k1, k2,
            "equal under strength 2, so duplicates in a unique index"
        );
        let (k3, _) = entry_keys(&ci, None, &doc! {"a": "abd"}, b"3").unwrap();
        assert_ne!(k1, k3);
        let (multi, _) = entry_keys(&ci, None, &doc! {"a": ["x", "X", "y"]}, b"4").unwrap();
        assert_eq!(multi.len(), 2);
        let plain = ix(doc! {"a": 1}, true, false);
        assert_ne!(
            entry_keys(&plain, None, &doc! {"a": "abc"}, b"1")
                .unwrap()
                .0,
            entry_keys(&plain, None, &doc! {"a": "ABC"}, b"2")
                .unwrap()
                .0
        );
    }
}
