//! Snapshots: consistent, read-only views of the tables at one clusterTime (redb read
//! transactions), with history read from the log up to that time.

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bson::{Document, Timestamp};
use errors::Result;
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata};

use crate::catalog::{CollectionMeta, Namespace};
use crate::oplog;
use crate::pending::{Layer, Merge};
use crate::redo::TableId;
use crate::txn::{self, Overlay};
use crate::wal::{Log, LogScan, LogScanRev};
use crate::{
    CATALOG, IDS, INDEXES, META, PREIMAGES, RECORDS, SESSIONS, TXN_PREIMAGES, as_slice_bound,
    coll_of, decode_doc, decode_record, doc_key, hi_bound, list_catalog, prefix_range, record_doc,
    record_key, rid_of, split_record, storage_err,
};

/// A consistent, read-only view of the database at one clusterTime.
pub struct Snapshot {
    _txn: ReadTransaction,
    catalog: ReadOnlyTable<&'static str, &'static [u8]>,
    records: ReadOnlyTable<&'static [u8], &'static [u8]>,
    ids: ReadOnlyTable<&'static [u8], &'static [u8]>,
    indexes: ReadOnlyTable<&'static [u8], &'static [u8]>,
    preimages: ReadOnlyTable<u64, &'static [u8]>,
    txn_preimages: ReadOnlyTable<(u64, u32), &'static [u8]>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    sessions: ReadOnlyTable<&'static [u8], &'static [u8]>,
    ts: Timestamp,
    log: Arc<Log>,
    /// Batches acknowledged but not yet committed in redb, over the read transaction.
    pending: Option<Arc<Layer>>,
    /// A transaction's own writes, seen over the snapshot.
    pub(crate) overlay: Option<Arc<Mutex<Overlay>>>,
}

impl Snapshot {
    /// A snapshot of `txn` with `pending` over it, which shows everything committed up to
    /// `ts`.
    pub(crate) fn new(
        txn: ReadTransaction,
        log: Arc<Log>,
        ts: Timestamp,
        pending: Option<Arc<Layer>>,
    ) -> Result<Snapshot> {
        let meta: ReadOnlyTable<&'static str, &'static [u8]> =
            txn.open_table(META).map_err(storage_err)?;
        Ok(Snapshot {
            catalog: txn.open_table(CATALOG).map_err(storage_err)?,
            records: txn.open_table(RECORDS).map_err(storage_err)?,
            ids: txn.open_table(IDS).map_err(storage_err)?,
            indexes: txn.open_table(INDEXES).map_err(storage_err)?,
            preimages: txn.open_table(PREIMAGES).map_err(storage_err)?,
            txn_preimages: txn.open_table(TXN_PREIMAGES).map_err(storage_err)?,
            meta,
            sessions: txn.open_table(SESSIONS).map_err(storage_err)?,
            _txn: txn,
            ts,
            log,
            pending,
            overlay: None,
        })
    }

    /// How many pending layers this snapshot reads over its redb transaction.
    #[cfg(test)]
    pub(crate) fn pending_depth(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.depth())
    }

    /// The pending change of `key`: `Some(None)` if deleted, `None` if no layer has it.
    fn pending_get(&self, t: TableId, key: &[u8]) -> Option<Option<&[u8]>> {
        self.pending.as_ref()?.get(t, key)
    }

    /// Pending changes in a range, in key order.
    fn pending_range(
        &self,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        match &self.pending {
            Some(p) if p.touches(t, lo, hi) => p.range(t, lo, hi),
            _ => Vec::new(),
        }
    }

    /// Base rows of a byte-keyed table in a range, pending layers applied.
    fn merged_range(
        &self,
        table: &ReadOnlyTable<&'static [u8], &'static [u8]>,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> Result<Rowwise> {
        let range = table.range::<&[u8]>((lo, hi)).map_err(storage_err)?;
        let extra = self.pending_range(t, lo, hi);
        Ok(if extra.is_empty() {
            Rowwise::Range(range)
        } else {
            Rowwise::Merged(Merge::new(RawRange(range), extra))
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
        let name = ns.full();
        if let Some(v) = self.pending_get(TableId::Catalog, name.as_bytes()) {
            return v.map(CollectionMeta::from_bytes).transpose();
        }
        match self.catalog.get(name.as_str()).map_err(storage_err)? {
            Some(v) => CollectionMeta::from_bytes(v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The catalog without a transaction's overlay.
    fn base_collections(&self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        let base = list_catalog(&self.catalog, db)?;
        let (lo, hi) = match db {
            Some(d) => (format!("{d}."), Some(format!("{d}/"))),
            None => (String::new(), None),
        };
        let lower = Bound::Included(lo.as_bytes());
        let upper = hi
            .as_ref()
            .map_or(Bound::Unbounded, |h| Bound::Excluded(h.as_bytes()));
        let extra = self.pending_range(TableId::Catalog, lower, upper);
        if extra.is_empty() {
            return Ok(base);
        }
        let mut all: std::collections::BTreeMap<String, CollectionMeta> =
            base.into_iter().map(|m| (m.ns.full(), m)).collect();
        for (k, v) in extra {
            let name = String::from_utf8_lossy(&k).into_owned();
            match v {
                Some(b) => {
                    all.insert(name, CollectionMeta::from_bytes(&b)?);
                }
                None => {
                    all.remove(&name);
                }
            }
        }
        Ok(all.into_values().collect())
    }

    /// All collections, or those of one database, in namespace order.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collections(&self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        match &self.overlay {
            Some(ov) => self.merged_collections(db, &ov.lock().unwrap()),
            None => self.base_collections(db),
        }
    }

    pub(crate) fn merged_collections(
        &self,
        db: Option<&str>,
        ov: &Overlay,
    ) -> Result<Vec<CollectionMeta>> {
        let mut all: std::collections::BTreeMap<String, CollectionMeta> = self
            .base_collections(db)?
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

    /// The document under a full document key in the tables (not a transaction's overlay).
    pub(crate) fn base_get_doc(&self, k: &[u8]) -> Result<Option<Document>> {
        match self.base_rid(k)? {
            Some(rid) => fetch(&self.records, self.pending.as_ref(), coll_of(k), rid).map(Some),
            None => Ok(None),
        }
    }

    /// The record id of the document under a full document key in the tables.
    fn base_rid(&self, k: &[u8]) -> Result<Option<u64>> {
        if let Some(v) = self.pending_get(TableId::Ids, k) {
            return v.map(rid_of).transpose();
        }
        match self.ids.get(k).map_err(storage_err)? {
            Some(v) => rid_of(v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn base_index_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending_get(TableId::Indexes, key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        Ok(self
            .indexes
            .get(key)
            .map_err(storage_err)?
            .map(|v| v.value().to_vec()))
    }

    /// The documents of a collection in `_id` key order, starting after `after`: through
    /// the `_id` index, one record lookup per document.
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
        let (l, u) = (as_slice_bound(&lower), as_slice_bound(&upper));
        let base = || -> Result<DocScan> {
            Ok(DocScan(IdOrder::Base {
                ids: Box::new(self.merged_range(&self.ids, TableId::Ids, l, u)?),
                records: self._txn.open_table(RECORDS).map_err(storage_err)?,
                pending: self.pending.clone(),
            }))
        };
        if let Some(ov) = &self.overlay {
            let ov = ov.lock().unwrap();
            let mine: Vec<_> = Overlay::range(&ov.docs, l, u)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !mine.is_empty() {
                // The tables' rows as the overlay holds its own: full key and BSON.
                let mut rows = Vec::new();
                for r in self.merged_range(&self.ids, TableId::Ids, l, u)? {
                    let (k, rid) = r?;
                    let bson = with_record(
                        &self.records,
                        self.pending.as_ref(),
                        coll_id,
                        rid_of(&rid)?,
                        |v| Ok(split_record(v)?.1.to_vec()),
                    )?;
                    rows.push((k, bson));
                }
                return Ok(DocScan(IdOrder::Rows(txn::merge(rows, mine).into_iter())));
            }
        }
        base()
    }

    /// The documents of a collection in natural order (the order they were inserted in;
    /// an update keeps a document's place), or backwards, as `(id_key, doc)`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_natural(&self, coll_id: u64, reverse: bool) -> Result<NaturalScan> {
        if let Some(ov) = &self.overlay {
            let ov = ov.lock().unwrap();
            let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
            let upper = hi_bound(&hi);
            if Overlay::range(&ov.docs, Bound::Included(lo.as_slice()), upper)
                .next()
                .is_some()
            {
                let mut rows = self.natural_with_overlay(coll_id, &ov)?;
                if reverse {
                    rows.reverse();
                }
                return Ok(NaturalScan(Natural::Rows(rows.into_iter())));
            }
        }
        self.base_natural(coll_id, reverse)
    }

    /// The documents stored after the one under `id_key`, in natural order: a tailable
    /// cursor's next reads. `None` when that document is gone (a capped collection's
    /// oldest documents are removed as new ones arrive). Not for a transaction's view.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_natural_after(&self, coll_id: u64, id_key: &[u8]) -> Result<Option<NaturalScan>> {
        let Some(rid) = self.base_rid(&doc_key(coll_id, id_key))? else {
            return Ok(None);
        };
        let lo = record_key(coll_id, rid);
        let (_, hi) = prefix_range(&coll_id.to_be_bytes());
        let rows = self.merged_range(
            &self.records,
            TableId::Records,
            Bound::Excluded(lo.as_slice()),
            hi_bound(&hi),
        )?;
        Ok(Some(NaturalScan(Natural::Base {
            rows: Box::new(rows),
            reverse: false,
        })))
    }

    fn base_natural(&self, coll_id: u64, reverse: bool) -> Result<NaturalScan> {
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        let upper = hi_bound(&hi);
        let rows = self.merged_range(
            &self.records,
            TableId::Records,
            Bound::Included(lo.as_slice()),
            upper,
        )?;
        Ok(NaturalScan(Natural::Base {
            rows: Box::new(rows),
            reverse,
        }))
    }

    /// A collection's documents in natural order as a transaction sees them: the tables'
    /// records with its updates and deletes applied, then the documents it inserted (in
    /// `_id` order: they get their record ids when it commits).
    pub(crate) fn natural_with_overlay(
        &self,
        coll_id: u64,
        ov: &Overlay,
    ) -> Result<Vec<(Vec<u8>, Document)>> {
        let mut out = Vec::new();
        for r in self.base_natural(coll_id, false)? {
            let (idk, d) = r?;
            match ov.docs.get(&doc_key(coll_id, &idk)) {
                Some(Some(b)) => out.push((idk, decode_doc(b)?)),
                Some(None) => {}
                None => out.push((idk, d)),
            }
        }
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        let upper = hi_bound(&hi);
        for (k, v) in Overlay::range(&ov.docs, Bound::Included(lo.as_slice()), upper) {
            if let Some(b) = v
                && self.base_rid(k)?.is_none()
            {
                out.push((k[8..].to_vec(), decode_doc(b)?));
            }
        }
        Ok(out)
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
                let base = self
                    .merged_range(&self.indexes, TableId::Indexes, l, u)?
                    .collect::<Result<Vec<_>>>()?;
                return Ok(IndexScan::Rows(txn::merge(base, mine).into_iter()));
            }
        }
        Ok(IndexScan::Base(Box::new(self.merged_range(
            &self.indexes,
            TableId::Indexes,
            l,
            u,
        )?)))
    }

    /// A collection's documents: how many, and the bytes of their BSON and of their keys
    /// (read without decoding them; the count and sizes that `collStats` and `dbStats`
    /// report).
    ///
    /// # Errors
    /// On storage failure.
    pub fn collection_size(&self, coll_id: u64) -> Result<(u64, u64, u64)> {
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        let upper = hi_bound(&hi);
        let (mut n, mut data, mut keys) = (0u64, 0u64, 0u64);
        for row in self.merged_range(
            &self.records,
            TableId::Records,
            Bound::Included(lo.as_slice()),
            upper,
        )? {
            let (_, v) = row?;
            let (id_key, bson) = split_record(&v)?;
            n += 1;
            data += bson.len() as u64;
            keys += id_key.len() as u64;
        }
        Ok((n, data, keys))
    }

    /// The bytes of an index's entries (keys and the `_id` keys they point to).
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_size(&self, index_id: u64) -> Result<u64> {
        let (lo, hi) = prefix_range(&index_id.to_be_bytes());
        let upper = hi_bound(&hi);
        let mut bytes = 0u64;
        for row in self.merged_range(
            &self.indexes,
            TableId::Indexes,
            Bound::Included(lo.as_slice()),
            upper,
        )? {
            let (k, v) = row?;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok(bytes)
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
        let image = |b: &[u8]| -> Result<Option<Document>> {
            Ok(decode_doc(b)?.get_document("preImage").ok().cloned())
        };
        let pending = match txn_op_index {
            None => self.pending_get(TableId::Preimages, &key.to_be_bytes()),
            Some(i) => self.pending_get(TableId::TxnPreimages, &pair_key(key, i)),
        };
        if let Some(v) = pending {
            return v.map_or(Ok(None), image);
        }
        let v = match txn_op_index {
            None => self.preimages.get(key).map_err(storage_err)?,
            Some(i) => self.txn_preimages.get((key, i)).map_err(storage_err)?,
        };
        match v {
            Some(v) => image(v.value()),
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
        // A pending write of an old pre-image counts too (a false positive only runs the
        // expiry for nothing).
        let pending = [TableId::Preimages, TableId::TxnPreimages]
            .iter()
            .any(|&t| {
                self.pending_range(t, Bound::Unbounded, Bound::Excluded(&cut.to_be_bytes()))
                    .iter()
                    .any(|(_, v)| v.is_some())
            });
        Ok(pending || first.is_some_and(|k| k < cut) || first_txn.is_some_and(|k| k < cut))
    }

    /// The pre-image store's size: its records and the bytes the tables hold (committed
    /// ones; what is waiting for a checkpoint is not counted).
    ///
    /// # Errors
    /// On storage failure.
    pub fn preimage_size(&self) -> Result<(u64, u64)> {
        let mut count = 0;
        let mut bytes = 0;
        for (len, stats) in [
            (self.preimages.len(), self.preimages.stats()),
            (self.txn_preimages.len(), self.txn_preimages.stats()),
        ] {
            count += len.map_err(storage_err)?;
            bytes += stats.map_err(storage_err)?.stored_bytes();
        }
        Ok((count, bytes))
    }

    /// Every stored pre-image record, oldest first, as `config.system.preimages` shows them.
    ///
    /// # Errors
    /// On storage failure.
    pub fn preimage_records(&self) -> Result<Vec<Document>> {
        let mut all: std::collections::BTreeMap<(u64, u32), Vec<u8>> =
            std::collections::BTreeMap::new();
        for item in self.preimages.range::<u64>(..).map_err(storage_err)? {
            let (k, v) = item.map_err(storage_err)?;
            all.insert((k.value(), 0), v.value().to_vec());
        }
        for item in self
            .txn_preimages
            .range::<(u64, u32)>(..)
            .map_err(storage_err)?
        {
            let (k, v) = item.map_err(storage_err)?;
            all.insert(k.value(), v.value().to_vec());
        }
        for (t, txn) in [(TableId::Preimages, false), (TableId::TxnPreimages, true)] {
            for (k, v) in self.pending_range(t, Bound::Unbounded, Bound::Unbounded) {
                let key = if txn {
                    let ts = u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
                    let i = u32::from_be_bytes(k[8..12].try_into().unwrap_or_default());
                    (ts, i)
                } else {
                    (u64::from_be_bytes(k[..8].try_into().unwrap_or_default()), 0)
                };
                match v {
                    Some(v) => {
                        all.insert(key, v);
                    }
                    None => {
                        all.remove(&key);
                    }
                }
            }
        }
        all.values().map(|b| decode_doc(b)).collect()
    }

    /// The session record stored under `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn session_record(&self, key: &[u8]) -> Result<Option<Document>> {
        if let Some(v) = self.pending_get(TableId::Sessions, key) {
            return v.map(decode_doc).transpose();
        }
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
        if let Some(v) = self.pending_get(TableId::Meta, key.as_bytes()) {
            return v.map(decode_doc).transpose();
        }
        match self.meta.get(key.as_str()).map_err(storage_err)? {
            Some(v) => decode_doc(v.value()).map(Some),
            None => Ok(None),
        }
    }
}

type Rows = std::vec::IntoIter<(Vec<u8>, Vec<u8>)>;

fn pair_key(ts: u64, i: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&ts.to_be_bytes());
    b[8..].copy_from_slice(&i.to_be_bytes());
    b
}

/// A redb range as owned rows.
pub struct RawRange(redb::Range<'static, &'static [u8], &'static [u8]>);

impl Iterator for RawRange {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.0.next()?;
        Some(
            item.map_err(storage_err)
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())),
        )
    }
}

impl DoubleEndedIterator for RawRange {
    fn next_back(&mut self) -> Option<Self::Item> {
        let item = self.0.next_back()?;
        Some(
            item.map_err(storage_err)
                .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())),
        )
    }
}

/// Rows of a table's range: straight from redb, or merged with pending layers.
pub enum Rowwise {
    Range(redb::Range<'static, &'static [u8], &'static [u8]>),
    Merged(Merge<RawRange>),
}

impl Iterator for Rowwise {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Rowwise::Range(r) => {
                let item = r.next()?;
                Some(
                    item.map_err(storage_err)
                        .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())),
                )
            }
            Rowwise::Merged(m) => m.next(),
        }
    }
}

impl DoubleEndedIterator for Rowwise {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Rowwise::Range(r) => {
                let item = r.next_back()?;
                Some(
                    item.map_err(storage_err)
                        .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())),
                )
            }
            Rowwise::Merged(m) => m.next_back(),
        }
    }
}

/// Reads a document's record, through the pending layers, with `f`.
fn with_record<T>(
    records: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    pending: Option<&Arc<Layer>>,
    coll_id: u64,
    rid: u64,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    let k = record_key(coll_id, rid);
    let missing = || errors::MongoError::internal("an _id index entry has no record");
    if let Some(v) = pending.and_then(|p| p.get(TableId::Records, &k)) {
        return f(v.ok_or_else(missing)?);
    }
    match records.get(k.as_slice()).map_err(storage_err)? {
        Some(v) => f(v.value()),
        None => Err(missing()),
    }
}

/// A document's record, read through the pending layers.
fn fetch(
    records: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    pending: Option<&Arc<Layer>>,
    coll_id: u64,
    rid: u64,
) -> Result<Document> {
    with_record(records, pending, coll_id, rid, record_doc)
}

/// A lazy scan over a collection's documents in `_id` order: `(id_key, doc)`.
pub struct DocScan(IdOrder);

enum IdOrder {
    /// `_id` index entries, each looked up in the records.
    Base {
        ids: Box<Rowwise>,
        records: ReadOnlyTable<&'static [u8], &'static [u8]>,
        pending: Option<Arc<Layer>>,
    },
    /// Inside a transaction that wrote to the collection, its view: full keys and BSON.
    Rows(Rows),
}

impl IdOrder {
    fn item(&self, row: Result<(Vec<u8>, Vec<u8>)>) -> Result<(Vec<u8>, Document)> {
        let (k, v) = row?;
        match self {
            IdOrder::Base {
                records, pending, ..
            } => {
                let d = fetch(records, pending.as_ref(), coll_of(&k), rid_of(&v)?)?;
                Ok((k[8..].to_vec(), d))
            }
            IdOrder::Rows(_) => Ok((k[8..].to_vec(), decode_doc(&v)?)),
        }
    }
}

impl Iterator for DocScan {
    type Item = Result<(Vec<u8>, Document)>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = match &mut self.0 {
            IdOrder::Base { ids, .. } => ids.next()?,
            IdOrder::Rows(r) => Ok(r.next()?),
        };
        Some(self.0.item(row))
    }
}

impl DoubleEndedIterator for DocScan {
    fn next_back(&mut self) -> Option<Self::Item> {
        let row = match &mut self.0 {
            IdOrder::Base { ids, .. } => ids.next_back()?,
            IdOrder::Rows(r) => Ok(r.next_back()?),
        };
        Some(self.0.item(row))
    }
}

/// A lazy scan over a collection's documents in natural order: `(id_key, doc)`.
pub struct NaturalScan(Natural);

enum Natural {
    /// The collection's records, in record id order or backwards.
    Base { rows: Box<Rowwise>, reverse: bool },
    /// Inside a transaction that wrote to the collection, its view, computed up front.
    Rows(std::vec::IntoIter<(Vec<u8>, Document)>),
}

impl Iterator for NaturalScan {
    type Item = Result<(Vec<u8>, Document)>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Natural::Base { rows, reverse } => {
                let row = if *reverse {
                    rows.next_back()?
                } else {
                    rows.next()?
                };
                Some(row.and_then(|(_, v)| decode_record(&v)))
            }
            Natural::Rows(r) => r.next().map(Ok),
        }
    }
}

/// A lazy scan over index entries: `(key, id_key)`. Inside a transaction that wrote
/// entries in the range, the merged rows.
pub enum IndexScan {
    Base(Box<Rowwise>),
    Rows(Rows),
}

impl Iterator for IndexScan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IndexScan::Base(r) => r.next(),
            IndexScan::Rows(r) => r.next().map(Ok),
        }
    }
}

impl DoubleEndedIterator for IndexScan {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            IndexScan::Base(r) => r.next_back(),
            IndexScan::Rows(r) => r.next_back().map(Ok),
        }
    }
}
