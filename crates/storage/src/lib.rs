//! Durable storage on redb: catalog, documents, secondary indexes, the oplog and session
//! records, written through one commit pipeline.
//!
//! Layout:
//! - [`catalog`]: collection and index records.
//! - [`oplog`]: oplog entries and their keys.
//! - this file: [`Store`] (open, snapshots, the commit pipeline), [`Snapshot`] (an MVCC read
//!   view) and [`WriteCtx`] (what a write job may do inside the pipeline's transaction).
//!
//! Key decision: every write is a job run on one writer thread. The thread takes all jobs
//! waiting, runs them in one redb write transaction (group commit), assigns each oplog entry
//! a strictly increasing clusterTime, commits durably, and only then lets the jobs' callers
//! see their results. So the oplog has no holes: a reader that has seen `T` has seen
//! everything before `T`. The last assigned time is stored in the same transaction, so
//! every snapshot knows its exact clusterTime.
//!
//! Storage knows nothing of the query language: index keys arrive as bytes from
//! `doc::keystring`, and the caller decides which keys a document has.

pub mod catalog;
pub mod oplog;
pub mod txn;

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bson::{DateTime, Document, Timestamp};
use errors::{ErrorCode, MongoError, Result};
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{oneshot, watch};

pub use catalog::{CollectionMeta, IndexMeta, Namespace};
pub use oplog::{OpKind, OplogEntry};
pub use txn::{Overlay, Txn, write_conflict};

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const INDEXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("indexes");
const OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// Change stream pre-images, keyed by oplog key of the write that replaced them.
const PREIMAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("preimages");
/// Pre-images of writes inside transactions, keyed by (oplog key of the transaction's
/// `applyOps` entry, the operation's index in it).
const TXN_PREIMAGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("txn_preimages");

const META_NEXT_ID: &str = "next_id";

/// Jobs taken into one group commit at most. Bounds the latency a batch adds to the first
/// write in it while still amortising the fsync over many writers.
const MAX_GROUP: usize = 256;

fn storage_err(e: impl std::fmt::Display) -> MongoError {
    MongoError::internal(format!("storage: {e}"))
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Oplog size bound in bytes; the oldest entries are truncated past it.
    pub oplog_size_bytes: u64,
    /// Minimum age the oplog keeps regardless of size, if set.
    pub oplog_min_retention: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            oplog_size_bytes: 990 * 1024 * 1024,
            oplog_min_retention: None,
        }
    }
}

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type Job = Box<dyn for<'a> FnOnce(&mut WriteCtx<'a>) -> Completion + Send>;

struct Inner {
    db: Arc<Database>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    committed: watch::Sender<Timestamp>,
    truncated_upto: Arc<AtomicU64>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
    _lock: File,
    path: PathBuf,
    tracker: Arc<Mutex<txn::Tracker>>,
    next_id: Arc<AtomicU64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.lock().unwrap().take();
        if let Some(h) = self.writer.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

/// The database: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking its lock file.
    ///
    /// # Errors
    /// When the directory cannot be created, another process holds the lock, or the data
    /// file is unreadable.
    pub fn open(dir: &Path, opts: StoreOptions) -> std::result::Result<Store, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock_path = dir.join("eddy.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Err(format!(
                "another eddy process is using {} (lock file {} is held); stop it or choose another --dbpath",
                dir.display(),
                lock_path.display()
            ));
        }
        let path = dir.join("eddy.redb");
        let db = Database::builder()
            .set_cache_size(256 * 1024 * 1024)
            .create(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let db = Arc::new(db);
        let mut state = WriterState::load(&db, &opts).map_err(|e| e.message)?;
        let (committed, _) = watch::channel(state.last_ts);
        let truncated_upto = Arc::new(AtomicU64::new(state.truncated_upto));
        let truncated_w = truncated_upto.clone();
        let tracker = state.tracker.clone();
        let next_id = state.next_id.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        let committed_tx = committed.clone();
        let wdb = db.clone();
        let handle = std::thread::Builder::new()
            .name("eddy-commit".into())
            .spawn(move || writer_loop(&wdb, &mut state, &rx, &committed_tx, &truncated_w))
            .map_err(|e| e.to_string())?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                jobs: Mutex::new(Some(tx)),
                committed,
                truncated_upto,
                writer: Mutex::new(Some(handle)),
                closed: AtomicBool::new(false),
                _lock: lock,
                path: dir.to_path_buf(),
                tracker,
                next_id,
            }),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A consistent read view of everything committed so far.
    ///
    /// # Errors
    /// On storage failure.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let txn = self.inner.db.begin_read().map_err(storage_err)?;
        Snapshot::new(txn)
    }

    /// Starts a multi-document transaction on a snapshot of everything committed so far.
    ///
    /// # Errors
    /// On storage failure.
    pub fn begin_txn(&self) -> Result<Txn> {
        Txn::begin(&self.inner.tracker, &self.inner.next_id, || self.snapshot())
    }

    /// The clusterTime of the last committed write.
    pub fn committed_ts(&self) -> Timestamp {
        *self.inner.committed.borrow()
    }

    /// The newest oplog key truncation has removed (0 if none): a stream whose next key is
    /// at or before it has lost history.
    pub fn truncated_upto(&self) -> u64 {
        self.inner.truncated_upto.load(Ordering::SeqCst)
    }

    /// A receiver that changes whenever a batch commits (the value is its last clusterTime).
    pub fn subscribe(&self) -> watch::Receiver<Timestamp> {
        self.inner.committed.subscribe()
    }

    /// Runs `f` in the commit pipeline and returns its result once the batch holding it is
    /// durable. `f` must check before it changes anything: its writes are kept even when
    /// it returns an error (a statement either applies entirely or not at all because of
    /// that discipline, not because of a rollback).
    ///
    /// # Errors
    /// `f`'s error, or a storage error if the batch could not commit (then nothing of the
    /// batch is kept).
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&mut WriteCtx<'a>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |ctx: &mut WriteCtx<'_>| {
            let r = f(ctx);
            Box::new(move |commit: Result<()>| {
                let _ = tx.send(commit.and(r));
            }) as Completion
        });
        {
            let guard = self.inner.jobs.lock().unwrap();
            let Some(sender) = guard.as_ref() else {
                return Err(shutting_down());
            };
            sender.send(job).map_err(|_| shutting_down())?;
        }
        rx.await.map_err(|_| {
            if self.inner.closed.load(Ordering::SeqCst) {
                shutting_down()
            } else {
                MongoError::internal("the write was not applied: its commit batch was rolled back")
            }
        })?
    }

    /// Stops the commit pipeline after the jobs already queued.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.jobs.lock().unwrap().take();
        if let Some(h) = self.inner.writer.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

fn shutting_down() -> MongoError {
    MongoError::new(ErrorCode::InterruptedAtShutdown, "interrupted at shutdown")
}

/// What the writer thread carries between batches.
struct WriterState {
    /// The last clusterTime assigned. Never stored on its own: it is the oplog's newest key,
    /// which truncation never removes, so a commit writes no extra page for it.
    last_ts: Timestamp,
    /// Shared with transactions, which take ids for collections they create.
    next_id: Arc<AtomicU64>,
    /// `next_id` as last stored; it is written only when it changed.
    stored_next_id: u64,
    /// Tagged keys the current batch wrote, for transaction conflict checks.
    touched: Vec<Vec<u8>>,
    tracker: Arc<Mutex<txn::Tracker>>,
    oplog_bytes: u64,
    /// The newest oplog key removed by truncation (0 if none): history at or before it is
    /// gone.
    truncated_upto: u64,
    opts: StoreOptions,
}

impl WriterState {
    fn load(db: &Database, opts: &StoreOptions) -> Result<WriterState> {
        let txn = db.begin_write().map_err(storage_err)?;
        let mut state = WriterState {
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            next_id: Arc::new(AtomicU64::new(1)),
            stored_next_id: 1,
            touched: Vec::new(),
            tracker: Arc::default(),
            oplog_bytes: 0,
            truncated_upto: 0,
            opts: opts.clone(),
        };
        {
            // Create every table so read transactions can open them.
            txn.open_table(CATALOG).map_err(storage_err)?;
            txn.open_table(DOCS).map_err(storage_err)?;
            txn.open_table(INDEXES).map_err(storage_err)?;
            txn.open_table(SESSIONS).map_err(storage_err)?;
            txn.open_table(PREIMAGES).map_err(storage_err)?;
            txn.open_table(TXN_PREIMAGES).map_err(storage_err)?;
            let meta = txn.open_table(META).map_err(storage_err)?;
            if let Some(v) = meta.get(META_NEXT_ID).map_err(storage_err)? {
                let next = u64::from_be_bytes(
                    v.value()
                        .try_into()
                        .map_err(|_| MongoError::internal("bad next_id"))?,
                );
                state.next_id.store(next, Ordering::SeqCst);
                state.stored_next_id = next;
            }
            let oplog = txn.open_table(OPLOG).map_err(storage_err)?;
            if let Some((k, _)) = oplog.last().map_err(storage_err)? {
                state.last_ts = oplog::key_ts(k.value());
            }
            // What came before the oldest retained entry was truncated at some point.
            if let Some((k, _)) = oplog.first().map_err(storage_err)? {
                state.truncated_upto = k.value().saturating_sub(1);
            }
            for item in oplog.iter().map_err(storage_err)? {
                let (_, v) = item.map_err(storage_err)?;
                state.oplog_bytes += v.value().len() as u64;
            }
        }
        txn.commit().map_err(storage_err)?;
        Ok(state)
    }

    /// The next clusterTime: wall-clock seconds, with the increment counting writes within
    /// a second; never goes backwards even if the clock does.
    fn next_ts(&mut self) -> Timestamp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as u32;
        let ts = if now > self.last_ts.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last_ts.time,
                increment: self.last_ts.increment + 1,
            }
        };
        self.last_ts = ts;
        ts
    }
}

fn writer_loop(
    db: &Database,
    state: &mut WriterState,
    rx: &mpsc::Receiver<Job>,
    committed: &watch::Sender<Timestamp>,
    truncated_upto: &AtomicU64,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let before = (state.last_ts, state.stored_next_id, state.oplog_bytes);
        let result = run_batch(db, state, batch);
        let touched = std::mem::take(&mut state.touched);
        match result {
            Ok(completions) => {
                truncated_upto.store(state.truncated_upto, Ordering::SeqCst);
                state
                    .tracker
                    .lock()
                    .unwrap()
                    .record(touched, oplog::ts_key(state.last_ts));
                committed.send_replace(state.last_ts);
                for c in completions {
                    c(Ok(()));
                }
            }
            Err((e, completions)) => {
                tracing::error!(error = %e, "commit failed; the batch is lost");
                // Ids handed out stay used: reusing one could collide with a transaction
                // that took one meanwhile.
                (state.last_ts, state.stored_next_id, state.oplog_bytes) = before;
                for c in completions {
                    c(Err(e.clone()));
                }
            }
        }
    }
}

fn run_batch(
    db: &Database,
    state: &mut WriterState,
    batch: Vec<Job>,
) -> std::result::Result<Vec<Completion>, (MongoError, Vec<Completion>)> {
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let e = storage_err(e);
            // Jobs that never ran still have to hear about it: run none, fail all.
            return Err((e, Vec::new()));
        }
    };
    let _ = txn.set_durability(Durability::Immediate);
    let mut completions = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<()> {
        let mut ctx = WriteCtx {
            b: Backend::Tables(Tables::open(&txn, state)?),
        };
        for job in batch {
            // A panic in one job must not take the commit pipeline down with it: the batch
            // is rolled back (the job may have written half a statement) and every caller
            // in it hears about it.
            let c = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut ctx)))
                .map_err(|_| {
                    MongoError::internal(
                        "a write failed unexpectedly; its commit batch was rolled back",
                    )
                })?;
            completions.push(c);
            if let Some(e) = ctx.tables().failed.take() {
                return Err(e);
            }
        }
        ctx.tables().finish()
    })();
    if let Err(e) = outcome {
        let _ = txn.abort();
        return Err((e, completions));
    }
    match txn.commit() {
        Ok(()) => Ok(completions),
        Err(e) => Err((storage_err(e), completions)),
    }
}

/// The commit pipeline's backend of [`WriteCtx`]: the tables of its redb transaction.
pub(crate) struct Tables<'t> {
    catalog: Table<'t, &'static str, &'static [u8]>,
    docs: Table<'t, &'static [u8], &'static [u8]>,
    indexes: Table<'t, &'static [u8], &'static [u8]>,
    oplog: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, &'static [u8]>,
    sessions: Table<'t, &'static [u8], &'static [u8]>,
    preimages: Table<'t, u64, &'static [u8]>,
    txn_preimages: Table<'t, (u64, u32), &'static [u8]>,
    state: &'t mut WriterState,
    /// A storage failure inside a job: the whole batch must be abandoned.
    failed: Option<MongoError>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction, state: &'t mut WriterState) -> Result<Tables<'t>> {
        Ok(Tables {
            catalog: txn.open_table(CATALOG).map_err(storage_err)?,
            docs: txn.open_table(DOCS).map_err(storage_err)?,
            indexes: txn.open_table(INDEXES).map_err(storage_err)?,
            oplog: txn.open_table(OPLOG).map_err(storage_err)?,
            meta: txn.open_table(META).map_err(storage_err)?,
            sessions: txn.open_table(SESSIONS).map_err(storage_err)?,
            preimages: txn.open_table(PREIMAGES).map_err(storage_err)?,
            txn_preimages: txn.open_table(TXN_PREIMAGES).map_err(storage_err)?,
            state,
            failed: None,
        })
    }

    /// Maps a storage error, remembering that the batch must not commit.
    fn fail(&mut self, e: impl std::fmt::Display) -> MongoError {
        let e = storage_err(e);
        self.failed = Some(e.clone());
        e
    }

    fn finish(&mut self) -> Result<()> {
        self.truncate_oplog()?;
        let next_id = self.state.next_id.load(Ordering::SeqCst);
        if next_id != self.state.stored_next_id {
            let next = next_id.to_be_bytes();
            self.meta
                .insert(META_NEXT_ID, next.as_slice())
                .map_err(storage_err)?;
            self.state.stored_next_id = next_id;
        }
        Ok(())
    }

    fn truncate_oplog(&mut self) -> Result<()> {
        let min_keep = self.state.opts.oplog_min_retention.map(|d| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            now.saturating_sub(d).as_secs() as u32
        });
        while self.state.oplog_bytes > self.state.opts.oplog_size_bytes {
            let first = self
                .oplog
                .first()
                .map_err(storage_err)?
                .map(|(k, v)| (k.value(), v.value().len()));
            let Some((key, len)) = first else { break };
            let len = len as u64;
            if min_keep.is_some_and(|t| oplog::key_ts(key).time >= t) {
                break;
            }
            // Keep the newest entry so that the oplog always knows its last time.
            if self
                .oplog
                .last()
                .map_err(storage_err)?
                .is_some_and(|(l, _)| l.value() == key)
            {
                break;
            }
            self.oplog.remove(key).map_err(storage_err)?;
            self.preimages.remove(key).map_err(storage_err)?;
            self.txn_preimages
                .retain_in((key, 0)..=(key, u32::MAX), |_, _| false)
                .map_err(storage_err)?;
            self.state.truncated_upto = key;
            self.state.oplog_bytes = self.state.oplog_bytes.saturating_sub(len);
        }
        Ok(())
    }

    /// A fresh storage id for a collection or an index.
    pub fn new_id(&mut self) -> u64 {
        self.state.next_id.fetch_add(1, Ordering::SeqCst)
    }

    fn touch(&mut self, tag: u8, key: &[u8]) {
        self.state.touched.push(txn::tagged(tag, key));
    }

    /// The catalog record of `ns`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collection(&mut self, ns: &Namespace) -> Result<Option<CollectionMeta>> {
        let r = self
            .catalog
            .get(ns.full().as_str())
            .map(|o| o.map(|v| v.value().to_vec()));
        match r {
            Ok(Some(b)) => CollectionMeta::from_bytes(&b).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// All collections, or those of one database.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collections(&mut self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        let r = list_catalog(&self.catalog, db);
        r.map_err(|e| self.fail(e.message))
    }

    /// Writes a catalog record.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        self.touch(txn::T_CATALOG, meta.ns.full().as_bytes());
        let b = meta.to_bytes();
        let r = self
            .catalog
            .insert(meta.ns.full().as_str(), b.as_slice())
            .map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// Removes a catalog record, its documents and its index entries.
    ///
    /// # Errors
    /// On storage failure.
    pub fn remove_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        self.touch(txn::T_CATALOG, meta.ns.full().as_bytes());
        let r = self.catalog.remove(meta.ns.full().as_str()).map(|_| ());
        r.map_err(|e| self.fail(e))?;
        let prefix = meta.id.to_be_bytes();
        self.remove_prefix_docs(&prefix)?;
        for ix in &meta.indexes {
            self.remove_index_entries(ix.id)?;
        }
        Ok(())
    }

    /// Moves a catalog record to a new namespace (documents and indexes stay keyed by id).
    ///
    /// # Errors
    /// On storage failure.
    pub fn rename_collection(
        &mut self,
        meta: &CollectionMeta,
        to: &Namespace,
    ) -> Result<CollectionMeta> {
        self.touch(txn::T_CATALOG, meta.ns.full().as_bytes());
        let r = self.catalog.remove(meta.ns.full().as_str()).map(|_| ());
        r.map_err(|e| self.fail(e))?;
        let mut m = meta.clone();
        m.ns = to.clone();
        self.put_collection(&m)?;
        Ok(m)
    }

    fn remove_prefix_docs(&mut self, prefix: &[u8]) -> Result<()> {
        let (lo, hi) = prefix_range(prefix);
        let r = self
            .docs
            .retain_in::<&[u8], _>((Bound::Included(lo.as_slice()), hi_bound(&hi)), |_, _| {
                false
            });
        r.map_err(|e| self.fail(e))
    }

    /// Removes every entry of an index.
    ///
    /// # Errors
    /// On storage failure.
    pub fn remove_index_entries(&mut self, index_id: u64) -> Result<()> {
        let (lo, hi) = prefix_range(&index_id.to_be_bytes());
        let r = self
            .indexes
            .retain_in::<&[u8], _>((Bound::Included(lo.as_slice()), hi_bound(&hi)), |_, _| {
                false
            });
        r.map_err(|e| self.fail(e))
    }

    /// A document by collection id and `_id` key.
    ///
    /// # Errors
    /// On storage failure.
    pub fn get_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<Option<Document>> {
        let k = doc_key(coll_id, id_key);
        let r = self
            .docs
            .get(k.as_slice())
            .map(|o| o.map(|v| v.value().to_vec()));
        match r {
            Ok(Some(b)) => decode_doc(&b).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Stores a document (insert or overwrite).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        let k = doc_key(coll_id, id_key);
        self.touch(txn::T_DOC, &k);
        let r = self.docs.insert(k.as_slice(), bytes).map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// Deletes a document.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<()> {
        let k = doc_key(coll_id, id_key);
        self.touch(txn::T_DOC, &k);
        let r = self.docs.remove(k.as_slice()).map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// Every document of a collection, in `_id` key order, as `(id_key, doc)`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_docs(&mut self, coll_id: u64) -> Result<Vec<(Vec<u8>, Document)>> {
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        type Rows = Vec<(Vec<u8>, Vec<u8>)>;
        let r: std::result::Result<Rows, redb::StorageError> = (|| {
            let mut out = Vec::new();
            for item in self
                .docs
                .range::<&[u8]>((Bound::Included(lo.as_slice()), hi_bound(&hi)))?
            {
                let (k, v) = item?;
                out.push((k.value()[8..].to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })();
        let rows = r.map_err(|e| self.fail(e))?;
        rows.into_iter()
            .map(|(k, v)| Ok((k, decode_doc(&v)?)))
            .collect()
    }

    /// The `_id` key stored under an index key, if any.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let r = self.indexes.get(key).map(|o| o.map(|v| v.value().to_vec()));
        r.map_err(|e| self.fail(e))
    }

    /// Adds an index entry.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_put(&mut self, key: &[u8], id_key: &[u8]) -> Result<()> {
        self.touch(txn::T_INDEX, key);
        let r = self.indexes.insert(key, id_key).map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// Removes an index entry.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_remove(&mut self, key: &[u8]) -> Result<()> {
        self.touch(txn::T_INDEX, key);
        let r = self.indexes.remove(key).map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// Appends an oplog entry, assigning its clusterTime and wall time.
    ///
    /// # Errors
    /// On storage failure.
    pub fn log(&mut self, mut entry: OplogEntry) -> Result<Timestamp> {
        let ts = self.state.next_ts();
        entry.ts = ts;
        entry.wall = DateTime::now();
        let bytes = entry.to_bytes();
        self.state.oplog_bytes += bytes.len() as u64;
        let r = self
            .oplog
            .insert(oplog::ts_key(ts), bytes.as_slice())
            .map(|_| ());
        r.map_err(|e| self.fail(e))?;
        Ok(ts)
    }

    /// Appends several oplog entries at one clusterTime (a transaction's operations),
    /// each distinguished by its `txn_op_index`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn log_at_one_time(
        &mut self,
        entries: Vec<OplogEntry>,
        lsid: Option<Document>,
        txn_number: Option<i64>,
    ) -> Result<Timestamp> {
        let ts = self.state.next_ts();
        let wall = DateTime::now();
        let ops: Vec<bson::Bson> = entries
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.ts = ts;
                e.wall = wall;
                e.in_txn = true;
                e.txn_op_index = i as i32;
                e.lsid.clone_from(&lsid);
                e.txn_number = txn_number;
                e.stmt_id = None;
                bson::Bson::Document(e.to_document())
            })
            .collect();
        let mut wrapper = OplogEntry::new(
            OpKind::Command,
            "admin.$cmd",
            None,
            bson::doc! {"applyOps": ops},
        );
        wrapper.lsid = lsid;
        wrapper.txn_number = txn_number;
        wrapper.ts = ts;
        wrapper.wall = wall;
        let bytes = wrapper.to_bytes();
        self.state.oplog_bytes += bytes.len() as u64;
        let r = self
            .oplog
            .insert(oplog::ts_key(ts), bytes.as_slice())
            .map(|_| ());
        r.map_err(|e| self.fail(e))?;
        Ok(ts)
    }

    /// Applies a committing transaction's overlay and logs its operations at one
    /// clusterTime; `None` when it wrote nothing.
    fn apply_txn(
        &mut self,
        txn_id: u64,
        snap_key: u64,
        ov: Overlay,
        lsid: Option<Document>,
        txn_number: Option<i64>,
    ) -> Result<Option<Timestamp>> {
        txn::check_commit(
            &self.state.tracker,
            &self.state.touched,
            txn_id,
            snap_key,
            &ov,
        )?;
        // Documents written into a collection that was dropped meanwhile.
        let live: std::collections::HashSet<u64> = self
            .collections(None)?
            .iter()
            .map(|m| m.id)
            .chain(
                ov.catalog
                    .values()
                    .flatten()
                    .filter_map(|b| CollectionMeta::from_bytes(b).ok().map(|m| m.id)),
            )
            .collect();
        if ov.docs.keys().any(|k| {
            k.len() >= 8
                && !live.contains(&u64::from_be_bytes(k[..8].try_into().unwrap_or_default()))
        }) {
            return Err(txn::write_conflict());
        }
        for (name, v) in &ov.catalog {
            self.touch(txn::T_CATALOG, name.as_bytes());
            let r = match v {
                Some(b) => self.catalog.insert(name.as_str(), b.as_slice()).map(|_| ()),
                None => self.catalog.remove(name.as_str()).map(|_| ()),
            };
            r.map_err(|e| self.fail(e))?;
        }
        for (k, v) in &ov.docs {
            self.touch(txn::T_DOC, k);
            let r = match v {
                Some(b) => self.docs.insert(k.as_slice(), b.as_slice()).map(|_| ()),
                None => self.docs.remove(k.as_slice()).map(|_| ()),
            };
            r.map_err(|e| self.fail(e))?;
        }
        for (k, v) in &ov.indexes {
            match v {
                Some(id) => self.index_put(k, id)?,
                None => self.index_remove(k)?,
            }
        }
        if ov.ops.is_empty() {
            return Ok(None);
        }
        let ts = self.log_at_one_time(ov.ops, lsid, txn_number)?;
        for (i, uuid, doc) in &ov.preimages {
            let b = preimage_record(ts, *i, *uuid, doc)?;
            let r = self
                .txn_preimages
                .insert((oplog::ts_key(ts), *i), b.as_slice())
                .map(|_| ());
            r.map_err(|e| self.fail(e))?;
        }
        Ok(Some(ts))
    }

    /// Stores a pre-image for the oplog entry at `ts`, in the shape of MongoDB's
    /// `config.system.preimages`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_preimage(
        &mut self,
        ts: Timestamp,
        ns_uuid: bson::Uuid,
        doc: &Document,
    ) -> Result<()> {
        let b = preimage_record(ts, 0, ns_uuid, doc)?;
        let r = self
            .preimages
            .insert(oplog::ts_key(ts), b.as_slice())
            .map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// Removes the pre-images of writes made before `cutoff` (seconds since the epoch).
    ///
    /// # Errors
    /// On storage failure.
    pub fn expire_preimages_before(&mut self, cutoff: u32) -> Result<()> {
        let hi = u64::from(cutoff) << 32;
        let r = self.preimages.retain_in(0..hi, |_, _| false);
        r.map_err(|e| self.fail(e))?;
        let r = self.txn_preimages.retain_in((0, 0)..(hi, 0), |_, _| false);
        r.map_err(|e| self.fail(e))
    }

    /// Stores a named settings document (cluster parameters).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_setting(&mut self, name: &str, value: &Document) -> Result<()> {
        let b = bson::to_vec(value).map_err(|e| MongoError::internal(e.to_string()))?;
        let key = format!("setting:{name}");
        let r = self.meta.insert(key.as_str(), b.as_slice()).map(|_| ());
        r.map_err(|e| self.fail(e))
    }

    /// The session record stored under `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn session_record(&mut self, key: &[u8]) -> Result<Option<Document>> {
        let r = self
            .sessions
            .get(key)
            .map(|o| o.map(|v| v.value().to_vec()));
        match r {
            Ok(Some(b)) => decode_doc(&b).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Stores a session record.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_session_record(&mut self, key: &[u8], record: &Document) -> Result<()> {
        let b = bson::to_vec(record).map_err(|e| MongoError::internal(e.to_string()))?;
        let r = self.sessions.insert(key, b.as_slice()).map(|_| ());
        r.map_err(|e| self.fail(e))
    }
}

/// What a write job may do: inside the commit pipeline's transaction, or inside a
/// multi-document transaction's overlay ([`Txn::run`]).
pub struct WriteCtx<'t> {
    pub(crate) b: Backend<'t>,
}

// One per commit batch or statement, on the stack: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend<'t> {
    Tables(Tables<'t>),
    Txn(txn::TxnCtx<'t>),
}

/// Forwards a call to the backend; `$only` names what a transaction may not do.
macro_rules! forward {
    ($self:ident, $m:ident($($a:expr),*)) => {
        match &mut $self.b {
            Backend::Tables(t) => t.$m($($a),*),
            Backend::Txn(x) => x.$m($($a),*),
        }
    };
    ($self:ident, $m:ident($($a:expr),*), $only:literal) => {
        match &mut $self.b {
            Backend::Tables(t) => t.$m($($a),*),
            Backend::Txn(x) => Err(x.unsupported($only)),
        }
    };
}

impl<'t> WriteCtx<'t> {
    fn tables(&mut self) -> &mut Tables<'t> {
        match &mut self.b {
            Backend::Tables(t) => t,
            Backend::Txn(_) => unreachable!("the commit pipeline always has tables"),
        }
    }

    /// Whether this job runs inside a multi-document transaction.
    pub fn in_txn(&self) -> bool {
        matches!(self.b, Backend::Txn(_))
    }

    /// A fresh storage id for a collection or an index.
    pub fn new_id(&mut self) -> u64 {
        forward!(self, new_id())
    }

    /// Whether `ns` was created by the transaction this job runs in.
    ///
    /// # Errors
    /// On storage failure.
    pub fn created_in_txn(&mut self, ns: &Namespace) -> Result<bool> {
        match &mut self.b {
            Backend::Tables(_) => Ok(false),
            Backend::Txn(x) => x.created_here(ns),
        }
    }

    /// The catalog record of `ns`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collection(&mut self, ns: &Namespace) -> Result<Option<CollectionMeta>> {
        forward!(self, collection(ns))
    }

    /// All collections, or those of one database.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collections(&mut self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        forward!(self, collections(db))
    }

    /// Writes a catalog record.
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn put_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        forward!(self, put_collection(meta))
    }

    /// Removes a catalog record, its documents and its index entries.
    ///
    /// # Errors
    /// On storage failure; not in a transaction.
    pub fn remove_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        forward!(self, remove_collection(meta), "dropping a collection")
    }

    /// Moves a catalog record to a new namespace.
    ///
    /// # Errors
    /// On storage failure; not in a transaction.
    pub fn rename_collection(
        &mut self,
        meta: &CollectionMeta,
        to: &Namespace,
    ) -> Result<CollectionMeta> {
        forward!(self, rename_collection(meta, to), "renaming a collection")
    }

    /// Removes every entry of an index.
    ///
    /// # Errors
    /// On storage failure; not in a transaction.
    pub fn remove_index_entries(&mut self, index_id: u64) -> Result<()> {
        forward!(self, remove_index_entries(index_id), "dropping an index")
    }

    /// A document by collection id and `_id` key.
    ///
    /// # Errors
    /// On storage failure.
    pub fn get_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<Option<Document>> {
        forward!(self, get_doc(coll_id, id_key))
    }

    /// Stores a document (insert or overwrite).
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn put_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        forward!(self, put_doc(coll_id, id_key, bytes))
    }

    /// Deletes a document.
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn delete_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<()> {
        forward!(self, delete_doc(coll_id, id_key))
    }

    /// Every document of a collection, in `_id` key order, as `(id_key, doc)`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_docs(&mut self, coll_id: u64) -> Result<Vec<(Vec<u8>, Document)>> {
        forward!(self, scan_docs(coll_id))
    }

    /// The `_id` key stored under an index key, if any.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        forward!(self, index_get(key))
    }

    /// Adds an index entry.
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn index_put(&mut self, key: &[u8], id_key: &[u8]) -> Result<()> {
        forward!(self, index_put(key, id_key))
    }

    /// Removes an index entry.
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn index_remove(&mut self, key: &[u8]) -> Result<()> {
        forward!(self, index_remove(key))
    }

    /// Appends an oplog entry, assigning its clusterTime and wall time. In a transaction
    /// the entry waits for the commit, and the snapshot's time is returned.
    ///
    /// # Errors
    /// On storage failure.
    pub fn log(&mut self, entry: OplogEntry) -> Result<Timestamp> {
        forward!(self, log(entry))
    }

    /// Appends several oplog entries at one clusterTime, as one `applyOps` entry carrying
    /// the session fields; each operation is distinguished by its `txn_op_index`.
    ///
    /// # Errors
    /// On storage failure; not in a transaction.
    pub fn log_at_one_time(
        &mut self,
        entries: Vec<OplogEntry>,
        lsid: Option<Document>,
        txn_number: Option<i64>,
    ) -> Result<Timestamp> {
        forward!(self, log_at_one_time(entries, lsid, txn_number), "applyOps")
    }

    /// Commits a transaction: checks its keys for conflicts with everything committed
    /// after its snapshot, applies its writes and logs its operations at one clusterTime.
    /// Returns that time, or `None` for a transaction that wrote nothing. The
    /// transaction's overlay is consumed either way.
    ///
    /// # Errors
    /// WriteConflict (with `TransientTransactionError`); storage errors.
    pub fn commit_txn(
        &mut self,
        txn: &Txn,
        lsid: Option<Document>,
        txn_number: Option<i64>,
    ) -> Result<Option<Timestamp>> {
        let (id, snap_key, ov) = txn.parts();
        match &mut self.b {
            Backend::Tables(t) => t.apply_txn(id, snap_key, ov, lsid, txn_number),
            Backend::Txn(x) => Err(x.unsupported("commitTransaction")),
        }
    }

    /// Stores a pre-image for the oplog entry just logged (at `ts`), in the shape of
    /// MongoDB's `config.system.preimages`. Inside a transaction it is stored at commit,
    /// under the operation's index in the transaction.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_preimage(
        &mut self,
        ts: Timestamp,
        ns_uuid: bson::Uuid,
        doc: &Document,
    ) -> Result<()> {
        match &mut self.b {
            Backend::Tables(t) => t.put_preimage(ts, ns_uuid, doc),
            Backend::Txn(x) => {
                x.put_preimage(ns_uuid, doc);
                Ok(())
            }
        }
    }

    /// Removes the pre-images of writes made before `cutoff` (seconds since the epoch).
    ///
    /// # Errors
    /// On storage failure.
    pub fn expire_preimages_before(&mut self, cutoff: u32) -> Result<()> {
        forward!(self, expire_preimages_before(cutoff), "expiring pre-images")
    }

    /// Stores a named settings document (cluster parameters).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_setting(&mut self, name: &str, value: &Document) -> Result<()> {
        forward!(self, put_setting(name, value), "setClusterParameter")
    }

    /// The session record stored under `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn session_record(&mut self, key: &[u8]) -> Result<Option<Document>> {
        forward!(self, session_record(key), "reading session records")
    }

    /// Stores a session record.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_session_record(&mut self, key: &[u8], record: &Document) -> Result<()> {
        forward!(
            self,
            put_session_record(key, record),
            "writing session records"
        )
    }
}

/// A consistent, read-only view of the database at one clusterTime.
pub struct Snapshot {
    _txn: ReadTransaction,
    catalog: ReadOnlyTable<&'static str, &'static [u8]>,
    docs: ReadOnlyTable<&'static [u8], &'static [u8]>,
    indexes: ReadOnlyTable<&'static [u8], &'static [u8]>,
    oplog: ReadOnlyTable<u64, &'static [u8]>,
    preimages: ReadOnlyTable<u64, &'static [u8]>,
    txn_preimages: ReadOnlyTable<(u64, u32), &'static [u8]>,
    meta: ReadOnlyTable<&'static str, &'static [u8]>,
    sessions: ReadOnlyTable<&'static [u8], &'static [u8]>,
    ts: Timestamp,
    /// A transaction's own writes, seen over the snapshot.
    overlay: Option<Arc<Mutex<Overlay>>>,
}

impl Snapshot {
    fn new(txn: ReadTransaction) -> Result<Snapshot> {
        let log: ReadOnlyTable<u64, &'static [u8]> = txn.open_table(OPLOG).map_err(storage_err)?;
        let ts = match log.last().map_err(storage_err)? {
            Some((k, _)) => oplog::key_ts(k.value()),
            None => Timestamp {
                time: 0,
                increment: 0,
            },
        };
        Ok(Snapshot {
            catalog: txn.open_table(CATALOG).map_err(storage_err)?,
            docs: txn.open_table(DOCS).map_err(storage_err)?,
            indexes: txn.open_table(INDEXES).map_err(storage_err)?,
            oplog: log,
            preimages: txn.open_table(PREIMAGES).map_err(storage_err)?,
            txn_preimages: txn.open_table(TXN_PREIMAGES).map_err(storage_err)?,
            meta: txn.open_table(META).map_err(storage_err)?,
            sessions: txn.open_table(SESSIONS).map_err(storage_err)?,
            _txn: txn,
            ts,
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

    /// Oplog entries after `after` (all if `None`), oldest first, as raw bytes.
    ///
    /// # Errors
    /// On storage failure.
    pub fn oplog_after(&self, after: Option<Timestamp>) -> Result<OplogScan> {
        let lower = match after {
            Some(t) => Bound::Excluded(oplog::ts_key(t)),
            None => Bound::Unbounded,
        };
        let range = self
            .oplog
            .range::<u64>((lower, Bound::Unbounded))
            .map_err(storage_err)?;
        Ok(OplogScan { range })
    }

    /// Oplog entries newest first (for `find` on `local.oplog.rs` sorted by `$natural: -1`).
    ///
    /// # Errors
    /// On storage failure.
    pub fn oplog_rev(&self) -> Result<impl Iterator<Item = OplogItem>> {
        let range = self.oplog.range::<u64>(..).map_err(storage_err)?;
        Ok(range.rev().map(|r| {
            let (k, v) = r.map_err(storage_err)?;
            Ok((oplog::key_ts(k.value()), v.value().to_vec()))
        }))
    }

    /// The first and last clusterTimes the oplog holds.
    ///
    /// # Errors
    /// On storage failure.
    pub fn oplog_bounds(&self) -> Result<Option<(Timestamp, Timestamp)>> {
        let first = self
            .oplog
            .first()
            .map_err(storage_err)?
            .map(|(k, _)| k.value());
        let last = self
            .oplog
            .last()
            .map_err(storage_err)?
            .map(|(k, _)| k.value());
        Ok(first
            .zip(last)
            .map(|(f, l)| (oplog::key_ts(f), oplog::key_ts(l))))
    }

    /// The number of oplog entries.
    ///
    /// # Errors
    /// On storage failure.
    pub fn oplog_len(&self) -> Result<u64> {
        self.oplog.len().map_err(storage_err)
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

/// One oplog entry as read: its clusterTime and encoded bytes.
pub type OplogItem = Result<(Timestamp, Vec<u8>)>;

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

/// A lazy scan over oplog entries: `(ts, bytes)`.
pub struct OplogScan {
    range: redb::Range<'static, u64, &'static [u8]>,
}

impl Iterator for OplogScan {
    type Item = Result<(Timestamp, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.range.next()?;
        Some(
            item.map_err(storage_err)
                .map(|(k, v)| (oplog::key_ts(k.value()), v.value().to_vec())),
        )
    }
}

fn list_catalog(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    db: Option<&str>,
) -> Result<Vec<CollectionMeta>> {
    let mut out = Vec::new();
    let iter = match db {
        Some(db) => {
            let lo = format!("{db}.");
            let hi = format!("{db}/");
            t.range::<&str>(lo.as_str()..hi.as_str())
                .map_err(storage_err)?
        }
        None => t.range::<&str>(..).map_err(storage_err)?,
    };
    for item in iter {
        let (_, v) = item.map_err(storage_err)?;
        out.push(CollectionMeta::from_bytes(v.value())?);
    }
    Ok(out)
}

/// A pre-image record in the shape of MongoDB's `config.system.preimages`.
fn preimage_record(
    ts: Timestamp,
    op_index: u32,
    ns_uuid: bson::Uuid,
    doc: &Document,
) -> Result<Vec<u8>> {
    let rec = bson::doc! {
        "_id": {"nsUUID": ns_uuid, "ts": ts, "applyOpsIndex": i64::from(op_index)},
        "preImage": doc.clone(),
        "operationTime": DateTime::now(),
    };
    bson::to_vec(&rec).map_err(|e| MongoError::internal(e.to_string()))
}

fn decode_doc(b: &[u8]) -> Result<Document> {
    Document::from_reader(b).map_err(|e| MongoError::internal(format!("corrupt document: {e}")))
}

fn doc_key(coll_id: u64, id_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id_key.len());
    k.extend_from_slice(&coll_id.to_be_bytes());
    k.extend_from_slice(id_key);
    k
}

/// The key range holding every key that starts with `prefix`: `[prefix, hi)`, where `hi` is
/// `None` when no key bounds it from above (a prefix of all 0xFF bytes).
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut hi = prefix.to_vec();
    while let Some(last) = hi.pop() {
        if last < 0xFF {
            hi.push(last + 1);
            return (prefix.to_vec(), Some(hi));
        }
    }
    (prefix.to_vec(), None)
}

fn hi_bound(hi: &Option<Vec<u8>>) -> Bound<&[u8]> {
    match hi {
        Some(h) => Bound::Excluded(h.as_slice()),
        None => Bound::Unbounded,
    }
}

fn as_slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn ns() -> Namespace {
        Namespace::new("d", "c")
    }

    fn meta(id: u64) -> CollectionMeta {
        CollectionMeta {
            ns: ns(),
            uuid: bson::Uuid::new(),
            id,
            options: Document::new(),
            indexes: vec![],
        }
    }

    #[tokio::test]
    async fn write_then_read_and_reopen() {
        let dir = tempdir();
        {
            let store = Store::open(&dir, StoreOptions::default()).unwrap();
            assert!(
                Store::open(&dir, StoreOptions::default()).is_err(),
                "lock is held"
            );
            let ts = store
                .write(|ctx| {
                    let m = meta(ctx.new_id());
                    ctx.put_collection(&m)?;
                    ctx.put_doc(m.id, b"k1", &bson::to_vec(&doc! {"_id": 1}).unwrap())?;
                    ctx.log(OplogEntry::new(
                        OpKind::Insert,
                        "d.c",
                        Some(m.uuid),
                        doc! {"_id": 1},
                    ))
                })
                .await
                .unwrap();
            assert_eq!(store.committed_ts(), ts);
            let snap = store.snapshot().unwrap();
            let m = snap.collection(&ns()).unwrap().unwrap();
            assert_eq!(snap.get_doc(m.id, b"k1").unwrap(), Some(doc! {"_id": 1}));
            assert_eq!(snap.oplog_after(None).unwrap().count(), 1);
            store.close();
        }
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let snap = store.snapshot().unwrap();
        let m = snap.collection(&ns()).unwrap().unwrap();
        let docs: Vec<_> = snap
            .scan_docs(m.id, None)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(docs.len(), 1);
        assert!(snap.ts().time > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn timestamps_strictly_increase_and_oplog_truncates() {
        let dir = tempdir();
        let opts = StoreOptions {
            oplog_size_bytes: 2000,
            oplog_min_retention: None,
        };
        let store = Store::open(&dir, opts).unwrap();
        let mut last = Timestamp {
            time: 0,
            increment: 0,
        };
        for i in 0..100 {
            let ts = store
                .write(move |ctx| ctx.log(OplogEntry::new(OpKind::Noop, "", None, doc! {"msg": i})))
                .await
                .unwrap();
            assert!(oplog::ts_key(ts) > oplog::ts_key(last));
            last = ts;
        }
        let snap = store.snapshot().unwrap();
        let n = snap.oplog_len().unwrap();
        assert!(n < 100 && n > 5, "oplog holds {n}");
        assert_eq!(snap.oplog_bounds().unwrap().unwrap().1, last);
        drop(snap);
        store.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("eddy-storage-{}", bson::oid::ObjectId::new()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
