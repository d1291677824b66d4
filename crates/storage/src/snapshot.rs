//! Snapshots: consistent, read-only views of the tables at one clusterTime (redb read
//! transactions), with history read from the log up to that time.

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bson::{Document, Timestamp};
use errors::Result;
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};

use crate::catalog::{CollectionMeta, Namespace};
use crate::oplog;
use crate::txn::{self, Overlay};
use crate::wal::{Log, LogScan, LogScanRev};
use crate::{
    CATALOG, DOCS, INDEXES, META, PREIMAGES, SESSIONS, TXN_PREIMAGES, as_slice_bound,
    decode_doc, doc_key, list_catalog, prefix_range, storage_err,
};

/// A consistent, read-only view of the database at one clusterTime.
pub struct Snapshot {
    _txn: ReadTransaction,
    catalog: ReadOnlyTable<&'static str, &'static [u8]>,
    docs: ReadOnlyTable<&'static [u8], &'static [u8]>,
    indexes: ReadOnlyTable<&'static [u8], &'static [u8]>,
    preimages: ReadOnlyTable<u64, &'static [u8]>,
    txn_preimages: ReadOnlyTable<(u64, u32), &'static [u8]>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    sessions: ReadOnlyTable<&'static [u8], &'static [u8]>,
    ts: Timestamp,
    log: Arc<Log>,
    /// A transaction's own writes, seen over the snapshot.
    pub(crate) overlay: Option<Arc<Mutex<Overlay>>>,
}

impl Snapshot {
    /// A snapshot of `txn`, which shows everything committed up to `ts`.
    pub(crate) fn new(txn: ReadTransaction, log: Arc<Log>, ts: Timestamp) -> Result<Snapshot> {
        let meta: ReadOnlyTable<&'static str, &'static [u8]> =
            txn.open_table(META).map_err(storage_err)?;
        Ok(Snapshot {
            catalog: txn.open_table(CATALOG).map_err(storage_err)?,
            docs: txn.open_table(DOCS).map_err(storage_err)?,
            indexes: txn.open_table(INDEXES).map_err(storage_err)?,
            preimages: txn.open_table(PREIMAGES).map_err(storage_err)?,
            txn_preimages: txn.open_table(TXN_PREIMAGES).map_err(storage_err)?,
            meta,
            sessions: txn.open_table(SESSIONS).map_err(storage_err)?,
            _txn: txn,
            ts,
            log,
            overlay: None,
        })
    }

    /// The clusterTime of the last write this snapshot sees.
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    /// The catalog record of `ns`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collection(&self, ns: &Namespace) -> Result<Option<CollectionMeta>> {
        if let Some(ov) = &self.overlay {
            match ov.lock().unwrap().catalog.get(&ns.full()) {
                Some(Some(b)) => return CollectionMeta::from_bytes(b).map(Some),
                Some(None) => return Ok(None),
                None => {}
            }
        }
        self.base_collection(ns)
    }

    pub(crate) fn base_collection(&self, ns: &Namespace) -> Result<Option<CollectionMeta>> {
        match self.catalog.get(ns.full().as_str()).map_err(storage_err)? {
            Some(v) => CollectionMeta::from_bytes(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// All collections, or those of one database, in namespace order.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collections(&self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        match &self.overlay {
            Some(ov) => self.merged_collections(db, &ov.lock().unwrap()),
            None => list_catalog(&self.catalog, db),
        }
    }

    pub(crate) fn merged_collections(
        &self,
        db: Option<&str>,
        ov: &Overlay,
    ) -> Result<Vec<CollectionMeta>> {
        let mut all: std::collections::BTreeMap<String, CollectionMeta> =
            list_catalog(&self.catalog, db)?
                .into_iter()
                .map(|m| (m.ns.full(), m))
                .collect();
        for (name, v) in &ov.catalog {
            if db.is_some_and(|d| !name.starts_with(&format!("{d}."))) {
                continue;
            }
            match v {
                Some(b) => {
                    all.insert(name.clone(), CollectionMeta::from_bytes(b)?);
                }
                None => {
                    all.remove(name);
                }
            }
        }
        Ok(all.into_values().collect())
    }

    /// A document by collection id and `_id` key.
    ///
    /// # Errors
    /// On storage failure.
    pub fn get_doc(&self, coll_id: u64, id_key: &[u8]) -> Result<Option<Document>> {
        let k = doc_key(coll_id, id_key);
        if let Some(ov) = &self.overlay {
            match ov.lock().unwrap().docs.get(&k) {
                Some(Some(b)) => return decode_doc(b).map(Some),
                Some(None) => return Ok(None),
                None => {}
            }
        }
        self.base_get_doc(&k)
    }

    pub(crate) fn base_get_doc(&self, k: &[u8]) -> Result<Option<Document>> {
        match self.docs.get(k).map_err(storage_err)? {
            Some(v) => decode_doc(v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn base_index_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .indexes
            .get(key)
            .map_err(storage_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Document rows (full keys) in a range, with the overlay applied.
    pub(crate) fn merged_docs(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        ov: &Overlay,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mine: Vec<_> = Overlay::range(&ov.docs, lower, upper)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let base = collect_rows(
            self.docs
                .range::<&[u8]>((lower, upper))
                .map_err(storage_err)?,
        )?;
        Ok(txn::merge(base, mine))
    }

    /// The documents of a collection in `_id` key order, starting after `after`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_docs(&self, coll_id: u64, after: Option<&[u8]>) -> Result<DocScan> {
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        let lower = match after {
            Some(a) => Bound::Excluded(doc_key(coll_id, a)),
            None => Bound::Included(lo),
        };
        let upper = match hi {
            Some(h) => Bound::Excluded(h),
            None => Bound::Unbounded,
        };
        if let Some(ov) = &self.overlay {
            let ov = ov.lock().unwrap();
            let (l, u) = (as_slice_bound(&lower), as_slice_bound(&upper));
            if Overlay::range(&ov.docs, l, u).next().is_some() {
                let rows = self.merged_docs(l, u, &ov)?;
                return Ok(DocScan::Rows(rows.into_iter()));
            }
        }
        let range = self
            .docs
            .range::<&[u8]>((as_slice_bound(&lower), as_slice_bound(&upper)))
            .map_err(storage_err)?;
        Ok(DocScan::Range(range))
    }

    /// Index entries with keys in `[lower, upper)` style bounds, as `(key, id_key)`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_index(&self, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Result<IndexScan> {
        let (l, u) = (as_slice_bound(&lower), as_slice_bound(&upper));
        if let Some(ov) = &self.overlay {
            let ov = ov.lock().unwrap();
            let mine: Vec<_> = Overlay::range(&ov.indexes, l, u)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !mine.is_empty() {
                let base = collect_rows(self.indexes.range::<&[u8]>((l, u)).map_err(storage_err)?)?;
                return Ok(IndexScan::Rows(txn::merge(base, mine).into_iter()));
            }
        }
        let range = self.indexes.range::<&[u8]>((l, u)).map_err(storage_err)?;
        Ok(IndexScan::Range(range))
    }

    /// Oplog entries after `after` (all if `None`) up to this snapshot's time, oldest
    /// first, as encoded.
    ///
    /// # Errors
    /// Never today (errors come with the items); kept fallible for the callers' sake.
    pub fn oplog_after(&self, after: Option<Timestamp>) -> Result<LogScan> {
        let after = after.map_or(0, oplog::ts_key);
        Ok(self.log.scan(after, oplog::ts_key(self.ts)))
    }

    /// Oplog entries newest first, from this snapshot's time (for `find` on
    /// `local.oplog.rs` sorted by `$natural: -1`).
    ///
    /// # Errors
    /// Never today (errors come with the items); kept fallible for the callers' sake.
    pub fn oplog_rev(&self) -> Result<LogScanRev> {
        Ok(self.log.scan_rev(oplog::ts_key(self.ts)))
    }

    /// The first and last clusterTimes the oplog holds.
    ///
    /// # Errors
    /// On a damaged or unreadable segment.
    pub fn oplog_bounds(&self) -> Result<Option<(Timestamp, Timestamp)>> {
        let upto = oplog::ts_key(self.ts);
        Ok(self
            .log
            .first_entry_ts(upto)?
            .map(|f| (oplog::key_ts(f), self.ts)))
    }

    /// The pre-image stored for the write at `ts` (with its index inside a
    /// transaction's `applyOps`, for writes in one).
    ///
    /// # Errors
    /// On storage failure.
    pub fn preimage(&self, ts: Timestamp, txn_op_index: Option<u32>) -> Result<Option<Document>> {
        let key = oplog::ts_key(ts);
        let v = match txn_op_index {
            None => self.preimages.get(key).map_err(storage_err)?,
            Some(i) => self.txn_preimages.get((key, i)).map_err(storage_err)?,
        };
        match v {
            Some(v) => Ok(decode_doc(v.value())?
                .get_document("preImage")
                .ok()
                .cloned()),
            None => Ok(None),
        }
    }

    /// Whether some pre-image belongs to a write made before `cutoff` (seconds).
    ///
    /// # Errors
    /// On storage failure.
    pub fn has_preimage_before(&self, cutoff: u32) -> Result<bool> {
        let first = self
            .preimages
            .first()
            .map_err(storage_err)?
            .map(|(k, _)| k.value());
        let first_txn = self
            .txn_preimages
            .first()
            .map_err(storage_err)?
            .map(|(k, _)| k.value().0);
        let cut = u64::from(cutoff) << 32;
        Ok(first.is_some_and(|k| k < cut) || first_txn.is_some_and(|k| k < cut))
    }

    /// Every stored pre-image record, oldest first, as `config.system.preimages` shows them.
    ///
    /// # Errors
    /// On storage failure.
    pub fn preimage_records(&self) -> Result<Vec<Document>> {
        let mut out = Vec::new();
        for item in self.preimages.range::<u64>(..).map_err(storage_err)? {
            let (k, v) = item.map_err(storage_err)?;
            out.push(((k.value(), 0), decode_doc(v.value())?));
        }
        for item in self
            .txn_preimages
            .range::<(u64, u32)>(..)
            .map_err(storage_err)?
        {
            let (k, v) = item.map_err(storage_err)?;
            out.push((k.value(), decode_doc(v.value())?));
        }
        out.sort_by_key(|(k, _)| *k);
        Ok(out.into_iter().map(|(_, d)| d).collect())
    }

    /// The session record stored under `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn session_record(&self, key: &[u8]) -> Result<Option<Document>> {
        match self.sessions.get(key).map_err(storage_err)? {
            Some(v) => decode_doc(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// A named settings document (cluster parameters), if stored.
    ///
    /// # Errors
    /// On storage failure.
    pub fn setting(&self, name: &str) -> Result<Option<Document>> {
        let key = format!("setting:{name}");
        match self.meta.get(key.as_str()).map_err(storage_err)? {
            Some(v) => decode_doc(v.value()).map(Some),
            None => Ok(None),
        }
    }
}

type Rows = std::vec::IntoIter<(Vec<u8>, Vec<u8>)>;

fn collect_rows(
    range: redb::Range<'_, &'static [u8], &'static [u8]>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    range
        .map(|r| {
            r.map_err(storage_err)
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
        })
        .collect()
}

/// A lazy scan over a collection's documents: `(id_key, doc)`. Inside a transaction
/// that wrote to the collection, the merged rows.
pub enum DocScan {
    Range(redb::Range<'static, &'static [u8], &'static [u8]>),
    Rows(Rows),
}

impl Iterator for DocScan {
    type Item = Result<(Vec<u8>, Document)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            DocScan::Range(r) => {
                let item = r.next()?;
                Some(
                    item.map_err(storage_err)
                        .and_then(|(k, v)| Ok((k.value()[8..].to_vec(), decode_doc(v.value())?))),
                )
            }
            DocScan::Rows(r) => {
                let (k, v) = r.next()?;
                Some(decode_doc(&v).map(|d| (k[8..].to_vec(), d)))
            }
        }
    }
}

/// A lazy scan over index entries: `(key, id_key)`. Inside a transaction that wrote
/// entries in the range, the merged rows.
pub enum IndexScan {
    Range(redb::Range<'static, &'static [u8], &'static [u8]>),
    Rows(Rows),
}

impl Iterator for IndexScan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IndexScan::Range(r) => {
                let item = r.next()?;
                Some(
                    item.map_err(storage_err)
                        .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())),
                )
            }
            IndexScan::Rows(r) => r.next().map(Ok),
        }
    }
}

impl DoubleEndedIterator for IndexScan {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            IndexScan::Range(r) => {
                let item = r.next_back()?;
                Some(
                    item.map_err(storage_err)
                        .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())),
                )
            }
            IndexScan::Rows(r) => r.next_back().map(Ok),
        }
    }
}
