//! Diffing two versions of a document the way MongoDB does for pipeline-style updates:
//! a `$v: 2` diff with its size heuristic (a nested diff that is not smaller than the new
//! value becomes a wholesale update; a top-level diff that is not smaller than the new
//! document becomes a replacement).

use std::collections::BTreeSet;

use bson::{Bson, Document};

use super::delta::{ArrDiff, ArrEntry, DiffNode, DocDiff, identical};

/// The BSON size of a value's payload (a document or array: its whole encoded size).
pub(crate) fn value_size(v: &Bson) -> usize {
    match v {
        Bson::Double(_) | Bson::Int64(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Decimal128(_) => 16,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 5 + s.len(),
        Bson::ObjectId(_) => 12,
        Bson::Document(d) => doc_size(d),
        Bson::Array(a) => array_size(a),
        Bson::Binary(b) => {
            let old = matches!(b.subtype, bson::spec::BinarySubtype::BinaryOld);
            5 + b.bytes.len() + if old { 4 } else { 0 }
        }
        Bson::RegularExpression(r) => r.pattern.len() + r.options.len() + 2,
        Bson::JavaScriptCodeWithScope(c) => 4 + 5 + c.code.len() + doc_size(&c.scope),
        Bson::DbPointer(_) => 5 + 12,
    }
}

/// The encoded size of a document.
pub(crate) fn doc_size(d: &Document) -> usize {
    5 + d
        .iter()
        .map(|(k, v)| 2 + k.len() + value_size(v))
        .sum::<usize>()
}

fn array_size(a: &[Bson]) -> usize {
    5 + a
        .iter()
        .enumerate()
        .map(|(i, v)| 2 + digits(i) + value_size(v))
        .sum::<usize>()
}

fn digits(i: usize) -> usize {
    i.to_string().len()
}

/// A document diff and its estimated size.
pub(crate) fn diff_doc(pre: &Document, post: &Document) -> (DocDiff, usize) {
    let mut out = DocDiff::default();
    let mut deletes: BTreeSet<&str> = BTreeSet::new();
    let mut p = pre.iter().peekable();
    let mut q = post.iter().peekable();
    while let (Some((pk, pv)), Some((qk, qv))) = (p.peek(), q.peek()) {
        if pk == qk {
            if !identical(pv, qv) {
                match sub_diff(pv, qv) {
                    Some(n) => out.subs.push((qk.to_string(), n)),
                    None => out.updates.push((qk.to_string(), (*qv).clone())),
                }
            }
            q.next();
        } else {
            deletes.insert(pk.as_str());
        }
        p.next();
    }
    // Leftover old fields are deleted in document order, then the tentative deletes that no
    // later insert cancelled, in name order (MongoDB keeps those in a std::set).
    for (pk, _) in p {
        out.deletes.push(pk.clone());
    }
    for (qk, qv) in q {
        deletes.remove(qk.as_str());
        out.inserts.push((qk.clone(), qv.clone()));
    }
    out.deletes.extend(deletes.into_iter().map(str::to_string));
    let est = doc_est(&out);
    (out, est)
}

/// A nested diff of two values of the same container type, kept only if smaller than the
/// new value.
fn sub_diff(pre: &Bson, post: &Bson) -> Option<DiffNode> {
    match (pre, post) {
        (Bson::Document(a), Bson::Document(b)) => {
            let (d, est) = diff_doc(a, b);
            (est < doc_size(b)).then_some(DiffNode::Doc(d))
        }
        (Bson::Array(a), Bson::Array(b)) => {
            let (d, est) = diff_array(a, b);
            (est < array_size(b)).then_some(DiffNode::Arr(d))
        }
        _ => None,
    }
}

fn diff_array(pre: &[Bson], post: &[Bson]) -> (ArrDiff, usize) {
    let mut out = ArrDiff::default();
    for (i, (pv, qv)) in pre.iter().zip(post).enumerate() {
        if !identical(pv, qv) {
            let e = match sub_diff(pv, qv) {
                Some(n) => ArrEntry::Sub(n),
                None => ArrEntry::Update(qv.clone()),
            };
            out.entries.push((i, e));
        }
    }
    if pre.len() > post.len() {
        out.resize = Some(post.len());
    }
    for (i, qv) in post.iter().enumerate().skip(pre.len()) {
        out.entries.push((i, ArrEntry::Update(qv.clone())));
    }
    let est = arr_est(&out);
    (out, est)
}

fn node_est(n: &DiffNode) -> usize {
    match n {
        DiffNode::Doc(d) => doc_est(d),
        DiffNode::Arr(a) => arr_est(a),
    }
}

/// MongoDB's approximate size of a document diff node.
fn doc_est(d: &DocDiff) -> usize {
    let mut est = 5;
    for (present, _) in [
        (!d.deletes.is_empty(), 'd'),
        (!d.updates.is_empty(), 'u'),
        (!d.inserts.is_empty(), 'i'),
    ] {
        if present {
            est += 8;
        }
    }
    est += d.deletes.iter().map(|k| k.len() + 3).sum::<usize>();
    est += d
        .updates
        .iter()
        .chain(&d.inserts)
        .map(|(k, v)| k.len() + 2 + value_size(v))
        .sum::<usize>();
    est += d
        .subs
        .iter()
        .map(|(k, n)| k.len() + 3 + node_est(n))
        .sum::<usize>();
    est
}

/// MongoDB's approximate size of an array diff node.
fn arr_est(a: &ArrDiff) -> usize {
    let mut est = 9 + if a.resize.is_some() { 7 } else { 0 };
    for (i, e) in &a.entries {
        est += 1 + digits(*i) + 2;
        est += match e {
            ArrEntry::Update(v) => value_size(v),
            ArrEntry::Sub(n) => node_est(n),
        };
    }
    est
}

/// The top-level diff of a pipeline update, or `None` when MongoDB would log a
/// replacement instead: the estimate (plus 15 bytes for the `{$v: 2, diff}` wrapper) or the
/// serialized diff is not smaller than the new document (`computeOplogDiff`).
pub(crate) fn top_level_diff(pre: &Document, post: &Document) -> Option<DocDiff> {
    let (d, est) = diff_doc(pre, post);
    let size = doc_size(post);
    if est + 15 >= size {
        return None;
    }
    (doc_size(&d.to_bson()) < size).then_some(d)
}
