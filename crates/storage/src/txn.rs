//! Multi-document transactions on the MVCC snapshot: a transaction reads one redb read
//! transaction (its snapshot) through a private [`Overlay`] of its own writes, and commits
//! by applying the overlay in one job of the commit pipeline.
//!
//! Key decisions:
//! - Conflicts are detected per key (document, index entry, catalog record), first writer
//!   wins, as in MongoDB: a transaction that writes a key another open transaction has
//!   written, or that a commit changed after its snapshot, gets `WriteConflict` with the
//!   `TransientTransactionError` label at once. The commit checks again inside the
//!   pipeline, so a non-transactional write that slipped in meanwhile is caught too.
//! - The [`Tracker`] only remembers what committed after the oldest open transaction's
//!   snapshot; with no transaction open it holds nothing.
//! - Inside a transaction a statement runs synchronously against a [`WriteCtx`] whose
//!   backend is the overlay, so every write path (inserts, updates, index maintenance,
//!   implicit collection creation) is the same code as outside one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bson::{Document, Timestamp};
use errors::{ErrorCode, MongoError, Result, labels};

use crate::catalog::{CollectionMeta, Namespace};
use crate::oplog::{self, OplogEntry};
use crate::{Snapshot, WriteCtx, decode_doc, doc_key};

/// Tags that keep the three key spaces apart in the tracker.
pub(crate) const T_DOC: u8 = b'd';
pub(crate) const T_INDEX: u8 = b'i';
pub(crate) const T_CATALOG: u8 = b'c';

pub(crate) fn tagged(tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(tag);
    k.extend_from_slice(key);
    k
}

/// A transaction's uncommitted writes: `None` marks a deletion.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    pub(crate) catalog: BTreeMap<String, Option<Vec<u8>>>,
    pub(crate) docs: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub(crate) indexes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Oplog entries in statement order.
    pub(crate) ops: Vec<OplogEntry>,
    /// Namespaces whose catalog record the transaction read: a commit after a DDL change
    /// to one of them (new or dropped index, rename, drop) would write against a stale
    /// index list, so it conflicts.
    pub(crate) read_catalog: std::collections::BTreeSet<String>,
    /// Set when a write lost a conflict: the overlay may hold half a statement (a
    /// document without its index entries), so it can never commit.
    pub(crate) conflicted: bool,
    /// Pre-images: (index of the operation in `ops`, collection UUID, document).
    pub(crate) preimages: Vec<(u32, bson::Uuid, Document)>,
}

impl Overlay {
    /// Overlay entries of `map` inside `[lo, hi)`.
    pub(crate) fn range<'a>(
        map: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> {
        let l = match lower {
            Bound::Included(v) => Bound::Included(v.to_vec()),
            Bound::Excluded(v) => Bound::Excluded(v.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let u = match upper {
            Bound::Included(v) => Bound::Included(v.to_vec()),
            Bound::Excluded(v) => Bound::Excluded(v.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        // An empty or inverted range would panic in BTreeMap::range.
        let empty = match (&l, &u) {
            (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
                a > b || (a == b && !matches!((&l, &u), (Bound::Included(_), Bound::Included(_))))
            }
            _ => false,
        };
        let it = if empty { None } else { Some(map.range((l, u))) };
        it.into_iter().flatten()
    }
}

/// Merges sorted base rows with overlay rows (overlay wins; `None` deletes).
pub(crate) fn merge(
    base: Vec<(Vec<u8>, Vec<u8>)>,
    overlay: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut m: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
    for (k, v) in overlay {
        match v {
            Some(v) => {
                m.insert(k, v);
            }
            None => {
                m.remove(&k);
            }
        }
    }
    m.into_iter().collect()
}

/// Conflict bookkeeping shared by the commit pipeline and open transactions.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    next_txn: u64,
    /// Open transactions: id → oplog key of their snapshot.
    active: HashMap<u64, u64>,
    /// Tagged key → oplog key of the batch that last wrote it, for batches committed
    /// after some open transaction's snapshot.
    written: HashMap<Vec<u8>, u64>,
    /// Tagged key → the open transaction that has written it.
    locks: HashMap<Vec<u8>, u64>,
}

impl Tracker {
    /// Remembers what a committed batch wrote, if any transaction may need to know.
    pub(crate) fn record(&mut self, keys: Vec<Vec<u8>>, batch_key: u64) {
        if self.active.is_empty() {
            self.written.clear();
            return;
        }
        for k in keys {
            self.written.insert(k, batch_key);
        }
        if self.written.len() > 65_536 {
            let oldest = self.active.values().copied().min().unwrap_or(u64::MAX);
            self.written.retain(|_, v| *v > oldest);
        }
    }

    fn conflict(&self, key: &[u8], snap_key: u64, txn: u64) -> bool {
        self.locks.get(key).is_some_and(|t| *t != txn)
            || self.written.get(key).is_some_and(|k| *k > snap_key)
    }
}

/// WriteConflict as MongoDB reports it inside a transaction.
pub fn write_conflict() -> MongoError {
    MongoError::new(
        ErrorCode::WriteConflict,
        "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.",
    )
    .with_label(labels::TRANSIENT_TRANSACTION_ERROR)
}

fn not_in_txn(what: &str) -> MongoError {
    MongoError::new(
        ErrorCode::OperationNotSupportedInTransaction,
        format!("{what} is not allowed in a multi-document transaction"),
    )
}

/// An open transaction: its snapshot (which sees its own writes) and its overlay.
pub struct Txn {
    id: u64,
    snapshot: Arc<Snapshot>,
    overlay: Arc<Mutex<Overlay>>,
    tracker: Arc<Mutex<Tracker>>,
    next_id: Arc<AtomicU64>,
}

impl Txn {
    pub(crate) fn begin(
        tracker: &Arc<Mutex<Tracker>>,
        next_id: &Arc<AtomicU64>,
        open: impl FnOnce() -> Result<Snapshot>,
    ) -> Result<Txn> {
        // The snapshot is taken under the tracker's lock, and the pipeline records a
        // batch's keys under it after the batch commits: so every commit this snapshot
        // does not see is recorded.
        let mut t = tracker.lock().unwrap();
        let mut snap = open()?;
        t.next_txn += 1;
        let id = t.next_txn;
        t.active.insert(id, oplog::ts_key(snap.ts()));
        let overlay = Arc::new(Mutex::new(Overlay::default()));
        snap.overlay = Some(overlay.clone());
        Ok(Txn {
            id,
            snapshot: Arc::new(snap),
            overlay,
            tracker: tracker.clone(),
            next_id: next_id.clone(),
        })
    }

    /// The transaction's read view: its snapshot plus its own writes.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }

    /// Runs one statement's writes against the overlay.
    ///
    /// # Errors
    /// `f`'s error; `WriteConflict` when a key is held by another transaction or changed
    /// after the snapshot.
    pub fn run<T>(&self, f: impl FnOnce(&mut WriteCtx<'_>) -> Result<T>) -> Result<T> {
        let mut ov = self
            .overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ov.conflicted {
            return Err(write_conflict());
        }
        let mut ctx = WriteCtx {
            b: crate::Backend::Txn(TxnCtx {
                snap: &self.snapshot,
                ov: &mut ov,
                tracker: &self.tracker,
                txn: self.id,
                snap_key: oplog::ts_key(self.snapshot.ts()),
                next_id: &self.next_id,
            }),
        };
        // Outside a transaction a panicking write is caught by the commit pipeline; here
        // it runs on the connection's task, so catch it and spoil the transaction.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut ctx)));
        drop(ctx);
        match r {
            // A lost conflict fails the whole statement whatever the caller made of it
            // (a per-document write error, say).
            _ if ov.conflicted => Err(write_conflict()),
            Ok(r) => r,
            Err(_) => {
                ov.conflicted = true;
                Err(MongoError::internal(
                    "a write failed unexpectedly; the transaction cannot commit",
                ))
            }
        }
    }

    /// Takes the overlay out for commit.
    pub(crate) fn parts(&self) -> (u64, u64, Overlay) {
        let ov = std::mem::take(
            &mut *self
                .overlay
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        (self.id, oplog::ts_key(self.snapshot.ts()), ov)
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let mut t = self.tracker.lock().unwrap();
        let id = self.id;
        t.active.remove(&id);
        t.locks.retain(|_, v| *v != id);
        if t.active.is_empty() {
            t.written.clear();
        }
    }
}

/// Checks a committing transaction's keys against what committed after its snapshot
/// (including earlier jobs of the current batch), inside the pipeline.
pub(crate) fn check_commit(
    tracker: &Mutex<Tracker>,
    touched: &[Vec<u8>],
    txn: u64,
    snap_key: u64,
    ov: &Overlay,
) -> Result<()> {
    if ov.conflicted {
        return Err(write_conflict());
    }
    let t = tracker.lock().unwrap();
    let in_batch: HashSet<&[u8]> = touched.iter().map(Vec::as_slice).collect();
    // Catalog records read: a DDL change committed since the snapshot conflicts.
    for name in &ov.read_catalog {
        let k = tagged(T_CATALOG, name.as_bytes());
        let changed = t.written.get(&k).is_some_and(|w| *w > snap_key);
        if changed || in_batch.contains(k.as_slice()) {
            return Err(write_conflict());
        }
    }
    let keys = ov
        .docs
        .keys()
        .map(|k| tagged(T_DOC, k))
        .chain(ov.indexes.keys().map(|k| tagged(T_INDEX, k)))
        .chain(ov.catalog.keys().map(|k| tagged(T_CATALOG, k.as_bytes())));
    for k in keys {
        if t.conflict(&k, snap_key, txn) || in_batch.contains(k.as_slice()) {
            return Err(write_conflict());
        }
    }
    Ok(())
}

/// The overlay backend of [`WriteCtx`].
pub(crate) struct TxnCtx<'t> {
    snap: &'t Snapshot,
    ov: &'t mut Overlay,
    tracker: &'t Mutex<Tracker>,
    txn: u64,
    snap_key: u64,
    next_id: &'t AtomicU64,
}

impl TxnCtx<'_> {
    /// Takes the write lock on a key, or fails with WriteConflict.
    fn claim(&mut self, key: Vec<u8>) -> Result<()> {
        let mut t = self.tracker.lock().unwrap();
        if t.conflict(&key, self.snap_key, self.txn) {
            self.ov.conflicted = true;
            return Err(write_conflict());
        }
        t.locks.insert(key, self.txn);
        Ok(())
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn collection(&mut self, ns: &Namespace) -> Result<Option<CollectionMeta>> {
        self.ov.read_catalog.insert(ns.full());
        match self.ov.catalog.get(&ns.full()) {
            Some(Some(b)) => CollectionMeta::from_bytes(b).map(Some),
            Some(None) => Ok(None),
            None => self.snap.base_collection(ns),
        }
    }

    pub(crate) fn created_here(&mut self, ns: &Namespace) -> Result<bool> {
        Ok(matches!(self.ov.catalog.get(&ns.full()), Some(Some(_)))
            && self.snap.base_collection(ns)?.is_none())
    }

    pub(crate) fn collections(&mut self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        self.snap.merged_collections(db, self.ov)
    }

    pub(crate) fn put_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        let name = meta.ns.full();
        self.claim(tagged(T_CATALOG, name.as_bytes()))?;
        self.ov.catalog.insert(name, Some(meta.to_bytes()));
        Ok(())
    }

    pub(crate) fn get_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<Option<Document>> {
        let k = doc_key(coll_id, id_key);
        match self.ov.docs.get(&k) {
            Some(Some(b)) => decode_doc(b).map(Some),
            Some(None) => Ok(None),
            None => self.snap.base_get_doc(&k),
        }
    }

    pub(crate) fn has_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<bool> {
        Ok(self.get_doc(coll_id, id_key)?.is_some())
    }

    pub(crate) fn put_new_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        self.put_doc(coll_id, id_key, bytes)
    }

    pub(crate) fn put_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        let k = doc_key(coll_id, id_key);
        self.claim(tagged(T_DOC, &k))?;
        self.ov.docs.insert(k, Some(bytes.to_vec()));
        Ok(())
    }

    pub(crate) fn delete_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<()> {
        let k = doc_key(coll_id, id_key);
        self.claim(tagged(T_DOC, &k))?;
        self.ov.docs.insert(k, None);
        Ok(())
    }

    pub(crate) fn scan_docs(&mut self, coll_id: u64) -> Result<Vec<(Vec<u8>, Document)>> {
        self.snap.natural_with_overlay(coll_id, self.ov)
    }

    pub(crate) fn index_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.ov.indexes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.snap.base_index_get(key),
        }
    }

    pub(crate) fn index_put(&mut self, key: &[u8], id_key: &[u8]) -> Result<()> {
        self.claim(tagged(T_INDEX, key))?;
        self.ov.indexes.insert(key.to_vec(), Some(id_key.to_vec()));
        Ok(())
    }

    pub(crate) fn index_remove(&mut self, key: &[u8]) -> Result<()> {
        self.claim(tagged(T_INDEX, key))?;
        self.ov.indexes.insert(key.to_vec(), None);
        Ok(())
    }

    pub(crate) fn log(&mut self, entry: OplogEntry) -> Result<Timestamp> {
        self.ov.ops.push(entry);
        // The real time is assigned at commit; the snapshot's is the best known now.
        Ok(self.snap.ts())
    }

    /// Keeps the pre-image of the operation just logged, for the commit.
    pub(crate) fn put_preimage(&mut self, ns_uuid: bson::Uuid, doc: &Document) {
        let i = self.ov.ops.len().saturating_sub(1) as u32;
        self.ov.preimages.push((i, ns_uuid, doc.clone()));
    }

    pub(crate) fn unsupported(&self, what: &str) -> MongoError {
        not_in_txn(what)
    }
}
