//! Sort specifications (`{a: 1, "b.c": -1}`) and MongoDB's sort order over documents.
//!
//! A key's sort value is taken over every value its path reaches: arrays contribute their
//! elements, ascending sorts use the smallest and descending sorts the largest; a missing
//! value sorts as `null`, and an empty array below `null`.

#![allow(clippy::collapsible_if, clippy::collapsible_match)]

use std::cmp::Ordering;
use std::sync::Arc;

use bson::{Bson, Document};
use doc::Collation;
use doc::compare::cmp_values_with;
use errors::{MongoError, Result};

/// A parsed sort specification, with the collation its string keys compare under.
#[derive(Debug, Clone, Default)]
pub struct SortSpec {
    keys: Vec<(String, bool)>,
    parts: Vec<Vec<String>>,
    collation: Option<Arc<Collation>>,
}

/// One key's sort value: an empty array sorts before everything but MinKey.
#[derive(Debug, Clone)]
enum Key {
    EmptyArray,
    Val(Bson),
}

fn cmp_key(a: &Key, b: &Key, coll: Option<&Collation>) -> Ordering {
    match (a, b) {
        (Key::EmptyArray, Key::EmptyArray) => Ordering::Equal,
        (Key::EmptyArray, Key::Val(Bson::MinKey)) => Ordering::Greater,
        (Key::EmptyArray, _) => Ordering::Less,
        (Key::Val(Bson::MinKey), Key::EmptyArray) => Ordering::Less,
        (_, Key::EmptyArray) => Ordering::Greater,
        (Key::Val(x), Key::Val(y)) => cmp_values_with(x, y, coll),
    }
}

fn collect(v: &Bson, parts: &[String], out: &mut Vec<Key>) {
    if parts.is_empty() {
        match v {
            Bson::Array(a) if a.is_empty() => out.push(Key::EmptyArray),
            Bson::Array(a) => out.extend(a.iter().map(|e| Key::Val(e.clone()))),
            other => out.push(Key::Val(other.clone())),
        }
        return;
    }
    match v {
        Bson::Document(d) => match d.get(&parts[0]) {
            Some(next) => collect(next, &parts[1..], out),
            None => out.push(Key::Val(Bson::Null)),
        },
        Bson::Array(a) => {
            if let Ok(i) = parts[0].parse::<usize>() {
                if let Some(e) = a.get(i) {
                    collect(e, &parts[1..], out);
                    return;
                }
            }
            if a.is_empty() {
                out.push(Key::Val(Bson::Null));
            }
            for e in a {
                match e {
                    Bson::Document(_) => collect(e, parts, out),
                    _ => out.push(Key::Val(Bson::Null)),
                }
            }
        }
        _ => out.push(Key::Val(Bson::Null)),
    }
}

impl SortSpec {
    /// Parses a sort specification. `{$meta: ...}` keys are rejected.
    pub fn parse(spec: &Document) -> Result<SortSpec> {
        let mut keys = Vec::with_capacity(spec.len());
        for (k, v) in spec {
            if k.is_empty() || k.split('.').any(str::is_empty) {
                return Err(MongoError::with_code(
                    40352,
                    "FieldPath cannot be constructed with empty string",
                ));
            }
            if k.starts_with('$') {
                return Err(MongoError::with_code(
                    16410,
                    format!(
                        "FieldPath field names may not start with '$'. Consider using $getField or $setField. (in {k})"
                    ),
                ));
            }
            let asc = match v {
                Bson::Int32(1) | Bson::Int64(1) => true,
                Bson::Int32(-1) | Bson::Int64(-1) => false,
                Bson::Double(d) if *d == 1.0 => true,
                Bson::Double(d) if *d == -1.0 => false,
                Bson::Decimal128(_) if doc::compare::as_f64(v) == Some(1.0) => true,
                Bson::Decimal128(_) if doc::compare::as_f64(v) == Some(-1.0) => false,
                Bson::Document(d) if d.len() == 1 && d.get_str("$meta") == Ok("textScore") => {
                    // Highest score first, through the field the text scan scores into.
                    keys.push((crate::text::SCORE_FIELD.to_string(), false));
                    continue;
                }
                Bson::Document(d) if d.contains_key("$meta") => {
                    return Err(MongoError::bad_value(format!(
                        "$meta sort by {} is not supported",
                        d.get("$meta").map_or_else(String::new, ToString::to_string)
                    )));
                }
                _ => {
                    return Err(MongoError::with_code(
                        15975,
                        "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                    ));
                }
            };
            keys.push((k.clone(), asc));
        }
        let parts = keys
            .iter()
            .map(|(k, _)| k.split('.').map(str::to_string).collect())
            .collect();
        Ok(SortSpec {
            keys,
            parts,
            collation: None,
        })
    }

    /// Whether the sort is by `{$meta: "textScore"}`.
    pub fn uses_text_score(&self) -> bool {
        self.keys.iter().any(|(k, _)| k == crate::text::SCORE_FIELD)
    }

    /// The same sort with string keys compared under `coll` (`None`: binary).
    #[must_use]
    pub fn with_collation(mut self, coll: Option<Arc<Collation>>) -> SortSpec {
        self.collation = coll;
        self
    }

    /// The collation string keys compare under.
    pub fn collation(&self) -> Option<&Collation> {
        self.collation.as_deref()
    }

    /// The keys in order: (dotted path, ascending).
    pub fn keys(&self) -> &[(String, bool)] {
        &self.keys
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn key(&self, i: usize, doc: &Document) -> Key {
        let mut vals = Vec::new();
        if let Some(first) = self.parts[i].first() {
            match doc.get(first) {
                Some(v) => collect(v, &self.parts[i][1..], &mut vals),
                None => vals.push(Key::Val(Bson::Null)),
            }
        }
        let asc = self.keys[i].1;
        vals.into_iter()
            .reduce(|a, b| {
                let o = cmp_key(&a, &b, self.collation());
                if (asc && o == Ordering::Greater) || (!asc && o == Ordering::Less) {
                    b
                } else {
                    a
                }
            })
            .unwrap_or(Key::Val(Bson::Null))
    }

    fn keys_of(&self, doc: &Document) -> Vec<Key> {
        (0..self.keys.len()).map(|i| self.key(i, doc)).collect()
    }

    fn cmp_keys(&self, a: &[Key], b: &[Key]) -> Ordering {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let o = cmp_key(x, y, self.collation());
            if o != Ordering::Equal {
                return if self.keys[i].1 { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    }

    /// Compares two documents by this sort.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for i in 0..self.keys.len() {
            let o = cmp_key(&self.key(i, a), &self.key(i, b), self.collation());
            if o != Ordering::Equal {
                return if self.keys[i].1 { o } else { o.reverse() };
            }
        }
        Ordering::Equal
    }

    /// Sorts documents stably, computing each document's sort keys once.
    pub fn sort(&self, docs: &mut Vec<Document>) {
        if self.keys.is_empty() {
            return;
        }
        let mut keyed: Vec<(Vec<Key>, Document)> =
            docs.drain(..).map(|d| (self.keys_of(&d), d)).collect();
        keyed.sort_by(|a, b| self.cmp_keys(&a.0, &b.0));
        docs.extend(keyed.into_iter().map(|(_, d)| d));
    }

    /// The `limit` smallest documents in sort order (a top-k sort).
    pub fn top_k(&self, docs: Vec<Document>, limit: usize) -> Vec<Document> {
        let mut docs = docs;
        self.sort(&mut docs);
        docs.truncate(limit);
        docs
    }
}

/// A blocking sort within a memory limit: documents are buffered until the limit, then
/// (with `allowDiskUse`) written out as sorted runs and merged. With a `limit` it is a
/// top-k sort and keeps only the best `k` documents in memory.
pub struct Sorter {
    spec: SortSpec,
    /// Whether the sort is by text score, which every document must then carry.
    text_score: bool,
    max_bytes: usize,
    allow_disk_use: bool,
    dir: Option<std::path::PathBuf>,
    limit: Option<usize>,
    buf: Vec<(Vec<Key>, usize, Document)>,
    bytes: usize,
    runs: Vec<crate::spill::Run>,
}

impl Sorter {
    /// A sorter for `spec` under `limits`, keeping the first `limit` documents if given.
    pub fn new(spec: SortSpec, limits: &crate::spill::Limits, limit: Option<usize>) -> Sorter {
        Sorter {
            text_score: spec.uses_text_score(),
            spec,
            max_bytes: limits.sort_bytes,
            allow_disk_use: limits.allow_disk_use,
            dir: limits.spill_dir.clone(),
            limit,
            buf: Vec::new(),
            bytes: 0,
            runs: Vec::new(),
        }
    }

    fn sort_buf(&mut self) {
        let spec = &self.spec;
        self.buf.sort_by(|a, b| spec.cmp_keys(&a.0, &b.0));
        if let Some(k) = self.limit {
            self.buf.truncate(k);
            self.bytes = self.buf.iter().map(|x| x.1).sum();
        }
    }

    /// Adds one document.
    ///
    /// # Errors
    /// `QueryExceededMemoryLimitNoDiskUseAllowed` (292) past the limit without
    /// `allowDiskUse`; I/O errors of the run files.
    pub fn push(&mut self, d: Document) -> Result<()> {
        if self.text_score && !d.contains_key(crate::text::SCORE_FIELD) {
            return Err(crate::expr::text_score_unavailable());
        }
        let size = crate::spill::doc_size(&d);
        self.bytes += size;
        self.buf.push((self.spec.keys_of(&d), size, d));
        if let Some(k) = self.limit {
            if self.buf.len() >= k.saturating_mul(2).max(64) {
                self.sort_buf();
            }
        }
        if self.bytes > self.max_bytes {
            if self.limit.is_some() {
                self.sort_buf();
                if self.bytes <= self.max_bytes {
                    return Ok(());
                }
            }
            let Some(dir) = self.dir.clone().filter(|_| self.allow_disk_use) else {
                return Err(crate::spill::sort_limit_error(self.max_bytes));
            };
            self.sort_buf();
            let run = crate::spill::Run::write(&dir, self.buf.iter().map(|x| &x.2))?;
            self.runs.push(run);
            self.buf.clear();
            self.bytes = 0;
        }
        Ok(())
    }

    /// Whether any run went to disk.
    pub fn spilled(&self) -> bool {
        !self.runs.is_empty()
    }

    /// The documents in sort order.
    ///
    /// # Errors
    /// I/O errors writing the last run.
    pub fn finish(mut self) -> Result<crate::pipeline::DocIter> {
        self.sort_buf();
        if self.runs.is_empty() {
            return Ok(Box::new(self.buf.into_iter().map(|x| Ok(x.2))));
        }
        if !self.buf.is_empty() {
            let dir = self.dir.clone().unwrap_or_default();
            let run = crate::spill::Run::write(&dir, self.buf.iter().map(|x| &x.2))?;
            self.runs.push(run);
        }
        Ok(Box::new(SortedRuns {
            merge: crate::spill::Merge::new(std::mem::take(&mut self.runs)),
            remaining: self.limit.unwrap_or(usize::MAX),
            spec: self.spec,
        }))
    }
}

/// The merge of a sorter's runs.
struct SortedRuns {
    merge: crate::spill::Merge<Vec<Key>>,
    spec: SortSpec,
    remaining: usize,
}

impl Iterator for SortedRuns {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if self.remaining == 0 {
            return None;
        }
        let spec = &self.spec;
        let r = self
            .merge
            .next_by(&mut |d| Ok(spec.keys_of(d)), &|a, b| spec.cmp_keys(a, b));
        match r {
            Ok(Some((_, d))) => {
                self.remaining -= 1;
                Some(Ok(d))
            }
            Ok(None) => None,
            Err(e) => {
                self.remaining = 0;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn sorted(spec: Document, docs: Vec<Document>) -> Vec<Bson> {
        let s = SortSpec::parse(&spec).unwrap();
        let mut docs = docs;
        s.sort(&mut docs);
        docs.iter()
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect()
    }

    #[test]
    fn parse_errors() {
        assert_eq!(SortSpec::parse(&doc! {"a": 2}).unwrap_err().code, 15975);
        assert_eq!(SortSpec::parse(&doc! {"a": "x"}).unwrap_err().code, 15975);
        assert!(
            SortSpec::parse(&doc! {"a": {"$meta": "textScore"}})
                .unwrap()
                .uses_text_score()
        );
        assert!(SortSpec::parse(&doc! {"a": {"$meta": "searchScore"}}).is_err());
        assert!(SortSpec::parse(&doc! {"a..b": 1}).is_err());
        assert_eq!(
            SortSpec::parse(&doc! {"a": 1.0, "b": -1i64})
                .unwrap()
                .keys(),
            &[("a".to_string(), true), ("b".to_string(), false)]
        );
    }

    #[test]
    fn mixed_types_and_missing() {
        let docs = vec![
            doc! {"_id": 1, "a": "x"},
            doc! {"_id": 2, "a": 5},
            doc! {"_id": 3},
            doc! {"_id": 4, "a": null},
            doc! {"_id": 5, "a": 1.5},
            doc! {"_id": 6, "a": {"b": 1}},
        ];
        let ids = sorted(doc! {"a": 1, "_id": 1}, docs.clone());
        assert_eq!(
            ids,
            vec![
                Bson::Int32(3),
                Bson::Int32(4),
                Bson::Int32(5),
                Bson::Int32(2),
                Bson::Int32(1),
                Bson::Int32(6)
            ]
        );
        let ids = sorted(doc! {"a": -1, "_id": 1}, docs);
        assert_eq!(
            ids,
            vec![
                Bson::Int32(6),
                Bson::Int32(1),
                Bson::Int32(2),
                Bson::Int32(5),
                Bson::Int32(3),
                Bson::Int32(4)
            ]
        );
    }

    #[test]
    fn arrays_use_min_or_max() {
        let docs = vec![
            doc! {"_id": 1, "a": [1, 10]},
            doc! {"_id": 2, "a": [5]},
            doc! {"_id": 3, "a": []},
            doc! {"_id": 4, "a": null},
        ];
        assert_eq!(
            sorted(doc! {"a": 1}, docs.clone()),
            vec![
                Bson::Int32(3),
                Bson::Int32(4),
                Bson::Int32(1),
                Bson::Int32(2)
            ]
        );
        assert_eq!(
            sorted(doc! {"a": -1}, docs),
            vec![
                Bson::Int32(1),
                Bson::Int32(2),
                Bson::Int32(4),
                Bson::Int32(3)
            ]
        );
    }

    #[test]
    fn dotted_through_arrays() {
        let docs = vec![
            doc! {"_id": 1, "a": [{"b": 3}, {"b": 0}]},
            doc! {"_id": 2, "a": {"b": 1}},
            doc! {"_id": 3, "a": [{"b": 2}]},
        ];
        assert_eq!(
            sorted(doc! {"a.b": 1}, docs.clone()),
            vec![Bson::Int32(1), Bson::Int32(2), Bson::Int32(3)]
        );
        assert_eq!(
            sorted(doc! {"a.b": -1}, docs),
            vec![Bson::Int32(1), Bson::Int32(3), Bson::Int32(2)]
        );
    }

    #[test]
    fn stable_and_numeric_mix() {
        let docs = vec![
            doc! {"_id": 1, "a": 2i64},
            doc! {"_id": 2, "a": 2.0},
            doc! {"_id": 3, "a": f64::NAN},
            doc! {"_id": 4, "a": -0.0},
        ];
        assert_eq!(
            sorted(doc! {"a": 1}, docs),
            vec![
                Bson::Int32(3),
                Bson::Int32(4),
                Bson::Int32(1),
                Bson::Int32(2)
            ]
        );
    }
}
