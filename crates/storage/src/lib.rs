//! Storage: the write-ahead log (the oplog) and the tables materialised from it in redb,
//! written through one commit pipeline.
//!
//! Layout:
//! - [`wal`]: the log: segments of CRC-framed commit batches, the in-memory tail, history
//!   scans, recovery, and the reports of `eddy log inspect|verify`.
//! - [`redo`]: the table changes a batch makes, as the log records them.
//! - [`pipeline`]: the commit pipeline (group commit led by the writers themselves,
//!   checkpoints, truncation) and the tables backend of [`WriteCtx`].
//! - [`snapshot`]: [`Snapshot`], an MVCC read view.
//! - [`catalog`], [`oplog`]: collection and index records; oplog entries.
//! - [`txn`]: multi-document transactions over a snapshot.
//! - this file: [`Store`] (open and recover, snapshots, writes) and [`WriteCtx`].
//!
//! Key decision: the oplog is the write-ahead log. A write is acknowledged once its
//! batch's frame is fdatasync'd in the log; the tables (documents, indexes, catalog,
//! sessions, pre-images) are redb tables committed without forcing them to disk, and made
//! durable by checkpoints. After a crash, recovery opens the last checkpoint and replays
//! the frames after it. One batch at a time assigns clusterTimes in commit order, so the
//! log has no holes: a reader that has seen `T` has seen everything before `T`. The applied lsn
//! and clusterTime are stored with the tables in every batch, so every snapshot knows its
//! exact clusterTime.
//!
//! Storage knows nothing of the query language: index keys arrive as bytes from
//! `doc::keystring`, and the caller decides which keys a document has.

pub mod catalog;
pub mod image;
pub mod metrics;
pub mod oplog;
mod pending;
pub mod pipeline;
pub mod redo;
pub mod replica;
pub mod snapshot;
pub mod txn;
pub mod wal;

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{DateTime, Document, Timestamp};
use errors::{ErrorCode, MongoError, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};

pub use catalog::{CollectionMeta, IndexMeta, Namespace};
pub use oplog::{EntryHead, OpKind, OplogEntry};
pub use snapshot::{DocScan, IndexScan, NaturalScan, Snapshot};
pub use txn::{Overlay, Txn, write_conflict};
pub use wal::{Log, LogItem, LogScan};

use pipeline::{Completion, Job, Msg, Pipeline, Tables, Writer, WriterState};

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
/// Documents in natural order: `(collection id, record id)` to the `_id` key's length
/// (4 bytes, big-endian), the `_id` key, and the BSON. Record ids come from the store's id
/// counter, so they increase with insertion; an update keeps its record's id.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// The `_id` index: `(collection id, _id key)` to the record id (8 bytes, big-endian).
const IDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ids");
/// Format 2's documents, keyed by `(collection id, _id key)`: replayed into and migrated
/// from, never read otherwise.
const OLD_DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const INDEXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("indexes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// Change stream pre-images, keyed by oplog key of the write that replaced them.
const PREIMAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("preimages");
/// Pre-images of writes inside transactions, keyed by (oplog key of the transaction's
/// `applyOps` entry, the operation's index in it).
const TXN_PREIMAGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("txn_preimages");
/// The table of format 1, where the oplog lived before it became the log.
const OLD_OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");

const META_NEXT_ID: &str = "next_id";
/// The lsn and clusterTime key the tables hold as of the last checkpoint (16 bytes).
const META_APPLIED: &str = "applied";
/// On a replica set member: the log id `(lsn, term, leader)` of the last frame the
/// checkpointed tables hold.
const META_REPL_APPLIED: &str = "repl_applied";
/// The data directory's format.
const META_FORMAT: &str = "format";
const FORMAT: &[u8] = b"3";
/// Format 2 stored documents without record ids; it is migrated when opened.
const FORMAT_NO_RECORD_IDS: &[u8] = b"2";

fn storage_err(e: impl std::fmt::Display) -> MongoError {
    MongoError::internal(format!("storage: {e}"))
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Log size bound in bytes; the oldest segments are truncated past it.
    pub oplog_size_bytes: u64,
    /// Minimum age the oplog keeps regardless of size, if set.
    pub oplog_min_retention: Option<Duration>,
    /// Largest segment file; by default a sixteenth of the size bound, between 64 KiB and
    /// 64 MiB, so that truncating whole segments keeps the log near its bound.
    pub segment_bytes: Option<u64>,
    /// A checkpoint is taken at most this long after the first write since the last one.
    pub checkpoint_interval: Duration,
    /// ... or once this many bytes of log were written since the last one.
    pub checkpoint_bytes: u64,
    /// The log is a replica set's replicated log: recovery replays nothing after the
    /// checkpoint (the consensus layer applies what a majority holds; see `replica`).
    pub replicated: bool,
    /// Bytes of recent entries kept in memory for change streams.
    pub tail_bytes: usize,
    /// The longest an acknowledged batch waits in the open redb transaction (readers see
    /// it through the pending layers meanwhile) before that transaction is committed.
    pub pending_max_age: Duration,
    /// On a replica set member: documents of writes rolled back (acknowledged with
    /// `w: 1`, never majority-committed) are written to `<dbpath>/rollback/<collection
    /// UUID>/removed.<time>.bson` (mongod's `createRollbackDataFiles`).
    pub rollback_files: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            oplog_size_bytes: 990 * 1024 * 1024,
            oplog_min_retention: None,
            segment_bytes: None,
            checkpoint_interval: pipeline::DEFAULT_CHECKPOINT_INTERVAL,
            checkpoint_bytes: 256 * 1024 * 1024,
            tail_bytes: 32 * 1024 * 1024,
            pending_max_age: pipeline::DEFAULT_PENDING_MAX_AGE,
            replicated: false,
            rollback_files: true,
        }
    }
}

impl StoreOptions {
    fn segment_bytes(&self) -> u64 {
        self.segment_bytes
            .unwrap_or_else(|| (self.oplog_size_bytes / 16).clamp(64 * 1024, 64 * 1024 * 1024))
    }
}

/// What recovery did at start-up.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Frames replayed on top of the checkpoint.
    pub frames: u64,
    /// Bytes of log read.
    pub log_bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// A torn tail that was dropped: where, and why.
    pub torn: Option<String>,
}

struct Inner {
    db: Arc<Database>,
    log: Arc<Log>,
    /// See `Writer::visible`.
    visible: Arc<std::sync::RwLock<pipeline::Visible>>,
    pipeline: Arc<Pipeline>,
    committed: watch::Sender<Timestamp>,
    closed: AtomicBool,
    _lock: File,
    path: PathBuf,
    tracker: Arc<Mutex<txn::Tracker>>,
    next_id: Arc<AtomicU64>,
    recovery: Recovery,
    /// Set once the store is a replica set member's (see `replica`).
    repl: std::sync::OnceLock<Arc<replica::ReplShared>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.pipeline.close();
    }
}

/// The database: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Takes the data directory's lock file.
fn take_lock(dir: &Path) -> std::result::Result<File, String> {
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
    Ok(lock)
}

/// Creates every table so read transactions can open them, checks the format, and
/// returns the applied `(lsn, ts)` and whether the documents need record ids (format 2).
fn prepare_tables(db: &Database, path: &Path) -> std::result::Result<((u64, u64), bool), String> {
    let se = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let txn = db.begin_write().map_err(|e| se(&e))?;
    let applied;
    let mut migrate = false;
    {
        txn.open_table(CATALOG).map_err(|e| se(&e))?;
        txn.open_table(RECORDS).map_err(|e| se(&e))?;
        txn.open_table(IDS).map_err(|e| se(&e))?;
        txn.open_table(INDEXES).map_err(|e| se(&e))?;
        txn.open_table(SESSIONS).map_err(|e| se(&e))?;
        txn.open_table(PREIMAGES).map_err(|e| se(&e))?;
        txn.open_table(TXN_PREIMAGES).map_err(|e| se(&e))?;
        let mut meta = txn.open_table(META).map_err(|e| se(&e))?;
        let format = meta
            .get(META_FORMAT)
            .map_err(|e| se(&e))?
            .map(|v| v.value().to_vec());
        match format.as_deref() {
            Some(FORMAT) => {}
            Some(FORMAT_NO_RECORD_IDS) => migrate = true,
            Some(other) => {
                return Err(format!(
                    "{} has data format {}, this eddy reads format {}",
                    path.display(),
                    String::from_utf8_lossy(other),
                    String::from_utf8_lossy(FORMAT)
                ));
            }
            None => {
                if meta.get(META_NEXT_ID).map_err(|e| se(&e))?.is_some() {
                    return Err(format!(
                        "{} was written by an earlier eddy (data format 1, with the oplog inside the database file); this eddy keeps the oplog in a write-ahead log (format 2) and cannot read it: start with an empty --dbpath and restore a dump",
                        path.display()
                    ));
                }
                meta.insert(META_FORMAT, FORMAT).map_err(|e| se(&e))?;
            }
        }
        applied = meta
            .get(META_APPLIED)
            .map_err(|e| se(&e))?
            .and_then(|v| pipeline::parse_applied(v.value()))
            .unwrap_or((0, 0));
    }
    // Format 1 kept the oplog here; a format-2 file never has it.
    let _ = txn.delete_table(OLD_OPLOG);
    txn.commit().map_err(|e| se(&e))?;
    Ok((applied, migrate))
}

/// Moves the documents of a format-2 file (keyed by `_id`) into records, giving each a
/// record id in `_id` order (the order those files scanned in), and marks the file format
/// 3: one durable transaction, run after recovery replayed the format-2 log on top of the
/// tables.
fn add_record_ids(db: &Database, path: &Path) -> std::result::Result<u64, String> {
    let se =
        |e: &dyn std::fmt::Display| format!("{}: giving documents record ids: {e}", path.display());
    let txn = db.begin_write().map_err(|e| se(&e))?;
    let mut n = 0u64;
    {
        let mut meta = txn.open_table(META).map_err(|e| se(&e))?;
        let mut next = match meta.get(META_NEXT_ID).map_err(|e| se(&e))? {
            Some(v) => u64::from_be_bytes(v.value().try_into().map_err(|_| se(&"bad next_id"))?),
            None => 1,
        };
        let old = txn.open_table(OLD_DOCS).map_err(|e| se(&e))?;
        let mut records = txn.open_table(RECORDS).map_err(|e| se(&e))?;
        let mut ids = txn.open_table(IDS).map_err(|e| se(&e))?;
        for row in old.iter().map_err(|e| se(&e))? {
            let (k, v) = row.map_err(|e| se(&e))?;
            let (k, v) = (k.value(), v.value());
            let coll = u64::from_be_bytes(k[..8].try_into().map_err(|_| se(&"bad key"))?);
            records
                .insert(
                    record_key(coll, next).as_slice(),
                    record_value(&k[8..], v).as_slice(),
                )
                .map_err(|e| se(&e))?;
            ids.insert(k, next.to_be_bytes().as_slice())
                .map_err(|e| se(&e))?;
            next += 1;
            n += 1;
        }
        meta.insert(META_NEXT_ID, next.to_be_bytes().as_slice())
            .map_err(|e| se(&e))?;
        meta.insert(META_FORMAT, FORMAT).map_err(|e| se(&e))?;
    }
    txn.delete_table(OLD_DOCS).map_err(|e| se(&e))?;
    txn.commit().map_err(|e| se(&e))?;
    Ok(n)
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, taking its lock file, and recovers:
    /// replays the log after the tables' last checkpoint.
    ///
    /// # Errors
    /// When the directory cannot be created, another process holds the lock, the data
    /// file is unreadable, or the log is damaged (the message names the segment and
    /// offset).
    pub fn open(dir: &Path, opts: StoreOptions) -> std::result::Result<Store, String> {
        let started = std::time::Instant::now();
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock = take_lock(dir)?;
        let path = dir.join("eddy.redb");
        let db = Database::builder()
            .set_cache_size(256 * 1024 * 1024)
            .create(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let (applied, migrate) = prepare_tables(&db, &path)?;
        let log_dir = dir.join("log");
        if !log_dir.exists() {
            std::fs::create_dir_all(&log_dir)
                .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
            wal::writer::sync_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let replay_upto = if opts.replicated { applied.0 } else { u64::MAX };
        let (frames, report, applied) = pipeline::replay(&db, &log_dir, applied, replay_upto)?;
        if migrate {
            let n = add_record_ids(&db, &path)?;
            tracing::info!(
                documents = n,
                "gave the documents of a format-2 data file record ids (natural order is their _id order)"
            );
        }
        let log_bytes = report.segs.iter().map(|s| s.seg.end).sum();
        let torn = report
            .torn
            .as_ref()
            .map(|(p, at, why)| format!("{} offset {at}: {why}", p.display()));
        if let Some(t) = &torn {
            tracing::warn!(
                "dropped a torn record at the end of the log (a write cut by a crash before it was acknowledged): {t}"
            );
        }
        let seg_max = opts.segment_bytes();
        let mut segs: Vec<wal::Seg> = report.segs.into_iter().map(|s| s.seg).collect();
        if segs.is_empty() {
            wal::writer::create_segment(&log_dir, 1, seg_max.min(4 * 1024 * 1024)).map_err(
                |e| format!("cannot create a log segment in {}: {e}", log_dir.display()),
            )?;
            segs.push(wal::Seg::empty(1, 0));
        }
        let active = segs.last().cloned().unwrap();
        let last_ts = if opts.replicated {
            applied.1
        } else {
            applied.1.max(report.last_ts)
        };
        let next_lsn = report.last_lsn.max(applied.0) + 1;
        let log = Arc::new(Log::new(log_dir, segs, last_ts, opts.tail_bytes));
        let lw = wal::writer::LogWriter::open(log.clone(), active.seq, active.end, seg_max)
            .map_err(|e| format!("cannot open the log for writing: {e}"))?;
        let mut state = WriterState::new(opts, next_lsn, applied.0);
        state.last_ts = oplog::key_ts(last_ts);
        load_next_id(&db, &mut state).map_err(|e| e.message)?;
        let gc_pending = has_gc_marks(&db).map_err(|e| e.message)?;
        let db = Arc::new(db);
        let (committed, _) = watch::channel(state.last_ts);
        let tracker = state.tracker.clone();
        let next_id = state.next_id.clone();
        let interval = state.opts.checkpoint_interval;
        let state_pending_age = state.opts.pending_max_age;
        let visible = Arc::new(std::sync::RwLock::new(pipeline::Visible {
            ts: state.last_ts,
            pending: None,
        }));
        let pipeline = Pipeline::new(Writer {
            db: db.clone(),
            log: log.clone(),
            lw,
            state,
            committed: committed.clone(),
            visible: visible.clone(),
            open: None,
            pending_redo: Vec::new(),
            pending_bytes: 0,
            pending_since: None,
            has_pending: Arc::default(),
            gc_pending: Arc::new(std::sync::atomic::AtomicBool::new(gc_pending)),
            purged: false,
            repl: None,
        });
        pipeline
            .start_committer(interval, state_pending_age)
            .map_err(|e| format!("cannot start the committer thread: {e}"))?;
        let recovery = Recovery {
            frames,
            log_bytes,
            elapsed: started.elapsed(),
            torn,
        };
        if frames > 0 {
            tracing::info!(
                frames,
                log_mb = log_bytes as f64 / 1e6,
                ms = recovery.elapsed.as_millis() as u64,
                "recovered: replayed the log after the last checkpoint"
            );
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                log,
                visible,
                pipeline,
                committed,
                closed: AtomicBool::new(false),
                _lock: lock,
                path: dir.to_path_buf(),
                tracker,
                next_id,
                recovery,
                repl: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What recovery did when the store was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// The log.
    pub fn log(&self) -> &Arc<Log> {
        &self.inner.log
    }

    /// A consistent read view of everything committed so far.
    ///
    /// # Errors
    /// On storage failure.
    pub fn snapshot(&self) -> Result<Snapshot> {
        self.snapshot_upto(None)
    }

    /// A read view of what is committed, up to clusterTime `cap` when given: the pending
    /// layers of later batches are left out (redb's last commit never holds more than
    /// `cap` when it is the majority point, see `replica`).
    fn snapshot_upto(&self, cap: Option<Timestamp>) -> Result<Snapshot> {
        // Under the read lock, no batch is published and redb commits nothing between
        // opening the read transaction and taking its clusterTime and pending layers.
        let (txn, ts, pending) = {
            let v = self
                .inner
                .visible
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let txn = self.inner.db.begin_read().map_err(storage_err)?;
            match cap {
                Some(c) if oplog::ts_key(c) < oplog::ts_key(v.ts) => (
                    txn,
                    c,
                    v.pending
                        .as_ref()
                        .and_then(|p| p.at_or_before(oplog::ts_key(c))),
                ),
                _ => (txn, v.ts, v.pending.clone()),
            }
        };
        Snapshot::new(txn, self.inner.log.clone(), ts, pending)
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
        self.inner.log.truncated_upto()
    }

    /// A receiver that changes whenever a batch commits (the value is its last clusterTime).
    pub fn subscribe(&self) -> watch::Receiver<Timestamp> {
        self.inner.committed.subscribe()
    }

    /// Whether dropped collections or indexes still have entries to purge (the committer
    /// thread deletes them between writes).
    pub fn purge_pending(&self) -> bool {
        self.inner.pipeline.purge_pending()
    }

    /// Committed entries with clusterTime keys in `(after, upto]`, at most `limit`,
    /// oldest first: from the log's in-memory tail when it reaches back that far.
    ///
    /// # Errors
    /// ChangeStreamHistoryLost when the history was truncated meanwhile; damaged segments.
    pub fn read_log(&self, after: u64, upto: u64, limit: usize) -> Result<Vec<wal::LogEntry>> {
        let upto = upto.min(oplog::ts_key(self.majority_ts()));
        self.inner.log.read(after, upto, limit)
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
        // This may run the batch right here (see `Pipeline`).
        self.inner.pipeline.submit(Msg::Job(job))?;
        rx.await.map_err(|_| {
            if self.inner.closed.load(Ordering::SeqCst) {
                shutting_down()
            } else if self
                .inner
                .repl
                .get()
                .is_some_and(|r| !r.writable.load(Ordering::SeqCst))
            {
                MongoError::new(errors::ErrorCode::NotWritablePrimary, "not primary")
            } else {
                MongoError::internal(
                    "the write was not applied: its commit batch failed (see the server log)",
                )
            }
        })?
    }

    /// Makes the tables durable now (a checkpoint), so that a restart replays nothing
    /// written before.
    ///
    /// # Errors
    /// On storage failure, or when the store is closed.
    pub async fn checkpoint(&self) -> Result<()> {
        self.ask(Msg::Checkpoint).await
    }

    /// Sends the pipeline the request `msg` makes around its reply, and waits for the
    /// reply.
    ///
    /// # Errors
    /// The reply's error, or InterruptedAtShutdown when the pipeline closes first.
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        msg: impl FnOnce(Box<dyn FnOnce(Result<T>) + Send>) -> Msg,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel::<Result<T>>();
        self.inner.pipeline.submit(msg(Box::new(move |r| {
            let _ = tx.send(r);
        })))?;
        rx.await.map_err(|_| shutting_down())?
    }

    /// Stops the commit pipeline after the jobs already queued, and checkpoints.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.pipeline.close();
    }
}

/// Reads the stored `next_id` into the writer's state.
fn load_next_id(db: &Database, state: &mut WriterState) -> Result<()> {
    let txn = db.begin_read().map_err(storage_err)?;
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
    Ok(())
}

/// Whether dropped collections or indexes were left to purge (by a restart, or a crash).
pub(crate) fn has_gc_marks(db: &Database) -> Result<bool> {
    let txn = db.begin_read().map_err(storage_err)?;
    let meta = txn.open_table(META).map_err(storage_err)?;
    let mut marks = meta.range::<&str>("gc:".."gc;").map_err(storage_err)?;
    Ok(marks.next().is_some())
}

pub(crate) fn shutting_down() -> MongoError {
    MongoError::new(ErrorCode::InterruptedAtShutdown, "interrupted at shutdown")
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

    /// Whether a document with this `_id` key exists (without reading it).
    ///
    /// # Errors
    /// On storage failure.
    pub fn has_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<bool> {
        forward!(self, has_doc(coll_id, id_key))
    }

    /// Stores a document (insert or overwrite).
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn put_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        forward!(self, put_doc(coll_id, id_key, bytes))
    }

    /// Stores a new document: the caller found no document under its `_id` key
    /// ([`WriteCtx::has_doc`]) in this same job, so the key is not looked up again.
    ///
    /// # Errors
    /// On storage failure; WriteConflict in a transaction.
    pub fn put_new_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        forward!(self, put_new_doc(coll_id, id_key, bytes))
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

    /// A capped collection's document count and bytes.
    ///
    /// # Errors
    /// On storage failure; inside a transaction (capped collections take no
    /// transactional writes).
    pub fn capped_usage(&mut self, coll_id: u64) -> Result<(u64, u64)> {
        forward!(
            self,
            capped_usage(coll_id),
            "writing to a capped collection"
        )
    }

    /// Adds to a capped collection's document count and bytes.
    ///
    /// # Errors
    /// As [`WriteCtx::capped_usage`].
    pub fn add_capped_usage(&mut self, coll_id: u64, count: i64, bytes: i64) -> Result<()> {
        forward!(
            self,
            add_capped_usage(coll_id, count, bytes),
            "writing to a capped collection"
        )
    }

    /// The first document of a collection in natural order.
    ///
    /// # Errors
    /// As [`WriteCtx::capped_usage`].
    pub fn oldest_doc(&mut self, coll_id: u64) -> Result<Option<Document>> {
        forward!(self, oldest_doc(coll_id), "writing to a capped collection")
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
    doc::encode::encode(&rec).map_err(|e| MongoError::internal(e.to_string()))
}

fn decode_doc(b: &[u8]) -> Result<Document> {
    doc::raw::bytes_to_document(b, STORED_MAX_DEPTH)
        .map_err(|e| MongoError::internal(format!("corrupt document: {e}")))
}

/// Nesting a stored document may have: more than any command can carry (the wire
/// protocol refuses commands nested past 200 levels), so only a damaged file reaches it.
pub(crate) const STORED_MAX_DEPTH: usize = 1024;

/// A record: the `_id` key's length, the `_id` key, the BSON.
fn record_value(id_key: &[u8], bson: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + id_key.len() + bson.len());
    v.extend_from_slice(&(id_key.len() as u32).to_be_bytes());
    v.extend_from_slice(id_key);
    v.extend_from_slice(bson);
    v
}

/// A record's `_id` key and BSON.
pub(crate) fn split_record(v: &[u8]) -> Result<(&[u8], &[u8])> {
    let corrupt = || MongoError::internal("corrupt record");
    let n =
        u32::from_be_bytes(v.get(..4).ok_or_else(corrupt)?.try_into().expect("4 bytes")) as usize;
    let id_key = v.get(4..4 + n).ok_or_else(corrupt)?;
    Ok((id_key, &v[4 + n..]))
}

/// A record's `_id` key and document.
fn decode_record(v: &[u8]) -> Result<(Vec<u8>, Document)> {
    let (k, b) = split_record(v)?;
    Ok((k.to_vec(), decode_doc(b)?))
}

/// A record's document.
fn record_doc(v: &[u8]) -> Result<Document> {
    decode_doc(split_record(v)?.1)
}

/// The key of a record.
fn record_key(coll_id: u64, rid: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&coll_id.to_be_bytes());
    k[8..].copy_from_slice(&rid.to_be_bytes());
    k
}

/// A record id as the `_id` index stores it.
fn rid_of(v: &[u8]) -> Result<u64> {
    v.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| MongoError::internal("corrupt _id index entry"))
}

/// The collection id a document or record key starts with.
fn coll_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(
        k[..8]
            .try_into()
            .expect("a key starts with its collection id"),
    )
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
        drop(snap);
        store.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn timestamps_strictly_increase_and_oplog_truncates() {
        let dir = tempdir();
        let opts = StoreOptions {
            oplog_size_bytes: 8000,
            segment_bytes: Some(1024),
            ..StoreOptions::default()
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
        let n = snap.oplog_after(None).unwrap().count();
        assert!(n < 100 && n > 5, "oplog holds {n}");
        let (first, newest) = snap.oplog_bounds().unwrap().unwrap();
        assert_eq!(newest, last);
        assert_eq!(oplog::ts_key(first), store.truncated_upto() + 1);
        drop(snap);
        store.close();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Opens a store that checkpoints only when asked.
    fn open_held(dir: &Path) -> Store {
        let opts = StoreOptions {
            checkpoint_interval: Duration::from_secs(3600),
            segment_bytes: Some(64 * 1024),
            ..StoreOptions::default()
        };
        Store::open(dir, opts).unwrap()
    }

    /// Inserts documents `from..to` into `d.c`, one write each.
    async fn insert_range(store: &Store, from: i32, to: i32) {
        for i in from..to {
            store
                .write(move |ctx| {
                    let m = match ctx.collection(&ns())? {
                        Some(m) => m,
                        None => {
                            let m = meta(ctx.new_id());
                            ctx.put_collection(&m)?;
                            m
                        }
                    };
                    let key = i.to_be_bytes();
                    let d = doc! {"_id": i, "pad": "p".repeat(200)};
                    ctx.put_doc(m.id, &key, &bson::to_vec(&d).unwrap())?;
                    ctx.log(OplogEntry::new(OpKind::Insert, "d.c", Some(m.uuid), d))
                })
                .await
                .unwrap();
        }
    }

    fn count_docs(store: &Store) -> usize {
        let snap = store.snapshot().unwrap();
        match snap.collection(&ns()).unwrap() {
            Some(m) => snap.scan_docs(m.id, None).unwrap().count(),
            None => 0,
        }
    }

    /// What a crash at this moment would leave on disk: the page cache's view of the
    /// directory (redb pages past its last durable commit are never referenced).
    fn crash_image(dir: &Path) -> PathBuf {
        let out = tempdir();
        std::fs::copy(dir.join("eddy.redb"), out.join("eddy.redb")).unwrap();
        std::fs::create_dir_all(out.join("log")).unwrap();
        for e in std::fs::read_dir(dir.join("log")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, out.join("log").join(p.file_name().unwrap())).unwrap();
        }
        out
    }

    /// The newest segment and the offsets of its frames.
    fn last_frames(dir: &Path) -> (PathBuf, Vec<(u64, u32)>) {
        let segs = wal::scan::list_segments(&dir.join("log")).unwrap();
        for (_, p) in segs.iter().rev() {
            let mut r =
                wal::scan::SegReader::open(p, wal::frame::SEG_HEADER_BYTES, u64::MAX).unwrap();
            let mut v = Vec::new();
            while let wal::scan::Step::Frame { at, h, .. } = r.next(true).unwrap() {
                v.push((at, h.total_len));
            }
            if !v.is_empty() {
                return (p.clone(), v);
            }
        }
        panic!("no frames");
    }

    fn patch(path: &Path, at: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = File::options().write(true).open(path).unwrap();
        f.write_all_at(bytes, at).unwrap();
    }

    #[tokio::test]
    async fn recovery_replays_the_log_after_the_checkpoint() {
        let dir = tempdir();
        let store = open_held(&dir);
        insert_range(&store, 0, 300).await;
        store.checkpoint().await.unwrap();
        insert_range(&store, 300, 500).await;
        let image = crash_image(&dir);
        drop(store);
        let s2 = Store::open(&image, StoreOptions::default()).unwrap();
        assert_eq!(count_docs(&s2), 500);
        assert_eq!(
            s2.recovery().frames,
            200,
            "only the frames after the checkpoint"
        );
        assert_eq!(
            s2.snapshot().unwrap().oplog_after(None).unwrap().count(),
            500
        );
        // Writing goes on after recovery, with later times.
        let before = s2.committed_ts();
        insert_range(&s2, 500, 510).await;
        assert!(oplog::ts_key(s2.committed_ts()) > oplog::ts_key(before));
        drop(s2);
        let s3 = Store::open(&image, StoreOptions::default()).unwrap();
        assert_eq!(count_docs(&s3), 510);
        assert_eq!(
            s3.recovery().frames,
            0,
            "a clean close leaves nothing to replay"
        );
        drop(s3);
        for d in [dir, image] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[tokio::test]
    async fn a_torn_last_frame_is_dropped_and_garbage_after_it_too() {
        let dir = tempdir();
        let store = open_held(&dir);
        insert_range(&store, 0, 50).await;
        let image = crash_image(&dir);
        drop(store);
        // The last write's frame was cut in the middle by the crash.
        let (seg, frames) = last_frames(&image);
        let (at, len) = *frames.last().unwrap();
        patch(&seg, at + u64::from(len) / 2, &vec![0u8; len as usize]);
        let s2 = Store::open(&image, StoreOptions::default()).unwrap();
        assert_eq!(count_docs(&s2), 49, "everything but the torn write");
        let torn = s2.recovery().torn.clone().expect("reported");
        assert!(torn.contains(&format!("offset {at}")), "{torn}");
        // The torn bytes were zeroed: new frames follow the last intact one.
        insert_range(&s2, 49, 60).await;
        drop(s2);
        let (ok_report, ok) = wal::report::verify(&image).unwrap();
        assert!(ok, "{ok_report}");
        let s3 = Store::open(&image, StoreOptions::default()).unwrap();
        assert_eq!(count_docs(&s3), 60);
        drop(s3);
        for d in [dir, image] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[tokio::test]
    async fn damage_in_the_middle_refuses_to_start_and_names_the_place() {
        let dir = tempdir();
        let store = open_held(&dir);
        insert_range(&store, 0, 600).await;
        store.checkpoint().await.unwrap();
        drop(store);
        let segs = wal::scan::list_segments(&dir.join("log")).unwrap();
        assert!(segs.len() > 2, "several segments: {segs:?}");
        // A flipped byte inside a frame of the oldest segment (long since checkpointed).
        let first = &segs[0].1;
        let at = wal::frame::SEG_HEADER_BYTES + 100;
        patch(first, at, &[0xFF]);
        let err = Store::open(&dir, StoreOptions::default())
            .err()
            .expect("refused");
        let name = first.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name) && err.contains("offset 64"), "{err}");
        let (report, ok) = wal::report::verify(&dir).unwrap();
        assert!(!ok);
        assert!(
            report.contains(name) && report.contains("offset 64"),
            "{report}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_bad_frame_followed_by_intact_ones_is_damage_even_at_the_end() {
        let dir = tempdir();
        let store = open_held(&dir);
        insert_range(&store, 0, 20).await;
        let image = crash_image(&dir);
        drop(store);
        let (seg, frames) = last_frames(&image);
        let (at, _) = frames[frames.len() - 3];
        patch(&seg, at + 70, &[0xAB, 0xCD]);
        let err = Store::open(&image, StoreOptions::default())
            .err()
            .expect("refused");
        assert!(
            err.contains(&format!("offset {at}")) && err.contains("intact frame follows"),
            "{err}"
        );
        for d in [dir, image] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[tokio::test]
    async fn a_checkpoint_beyond_the_log_or_a_missing_segment_refuses() {
        let dir = tempdir();
        let store = open_held(&dir);
        insert_range(&store, 0, 600).await;
        drop(store);
        let segs = wal::scan::list_segments(&dir.join("log")).unwrap();
        std::fs::remove_file(&segs[1].1).unwrap();
        let err = Store::open(&dir, StoreOptions::default())
            .err()
            .expect("refused");
        assert!(err.contains("is missing"), "{err}");
        // Without the newest segments, the tables hold lsns the log no longer has.
        for (_, p) in &segs[1..] {
            let _ = std::fs::remove_file(p);
        }
        let err = Store::open(&dir, StoreOptions::default())
            .err()
            .expect("refused");
        assert!(err.contains("the log ends at lsn"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn truncation_waits_for_a_checkpoint_and_expires_preimages() {
        let dir = tempdir();
        let opts = StoreOptions {
            oplog_size_bytes: 40 * 1024,
            segment_bytes: Some(8 * 1024),
            checkpoint_interval: Duration::from_secs(3600),
            ..StoreOptions::default()
        };
        let store = Store::open(&dir, opts).unwrap();
        let uuid = bson::Uuid::new();
        for i in 0..400 {
            store
                .write(move |ctx| {
                    let ts = ctx.log(OplogEntry::new(
                        OpKind::Noop,
                        "",
                        None,
                        doc! {"i": i, "pad": "x".repeat(100)},
                    ))?;
                    ctx.put_preimage(ts, uuid, &doc! {"i": i})
                })
                .await
                .unwrap();
        }
        let log_bytes = store.log().bytes();
        assert!(
            log_bytes <= 48 * 1024,
            "the log stays near its bound: {log_bytes}"
        );
        let cut = store.truncated_upto();
        assert!(cut > 0);
        let snap = store.snapshot().unwrap();
        let first = snap.oplog_after(None).unwrap().next().unwrap().unwrap().0;
        assert!(oplog::ts_key(first) > cut);
        // Pre-images of truncated entries are gone with them; later ones stay.
        let recs = snap.preimage_records().unwrap();
        assert!(!recs.is_empty() && recs.len() < 400);
        for r in &recs {
            let ts = r.get_document("_id").unwrap().get_timestamp("ts").unwrap();
            assert!(oplog::ts_key(ts) > cut);
        }
        drop(snap);
        drop(store);
        // A restart keeps the truncation point.
        let s2 = Store::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(s2.truncated_upto(), cut);
        drop(s2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn acknowledged_batches_are_read_before_redb_commits_them() {
        let dir = tempdir();
        // The open transaction is committed only when the test asks, so that a slow machine
        // cannot commit it between the writes and the first check.
        let held = StoreOptions {
            pending_max_age: Duration::from_secs(3600),
            ..StoreOptions::default()
        };
        let store = Store::open(&dir, held).unwrap();
        let id = create_collection(&store).await;
        let put = |k: &'static [u8], v: i32| {
            let store = store.clone();
            async move {
                store
                    .write(move |ctx| {
                        ctx.put_doc(id, k, &bson::to_vec(&doc! {"v": v}).unwrap())?;
                        ctx.index_put(&[b"ix", k].concat(), k)
                    })
                    .await
                    .unwrap();
            }
        };
        put(b"a", 1).await;
        put(b"b", 2).await;
        put(b"c", 3).await;
        put(b"a", 10).await;
        store
            .write(move |ctx| {
                ctx.delete_doc(id, b"b")?;
                ctx.index_remove(b"ixb")
            })
            .await
            .unwrap();
        let check = |store: &Store, label: &str| {
            let snap = store.snapshot().unwrap();
            assert_eq!(
                snap.get_doc(id, b"a").unwrap(),
                Some(doc! {"v": 10}),
                "{label}"
            );
            assert_eq!(snap.get_doc(id, b"b").unwrap(), None, "{label}");
            let docs: Vec<_> = snap
                .scan_docs(id, None)
                .unwrap()
                .map(|r| r.unwrap().0)
                .collect();
            assert_eq!(docs, vec![b"a".to_vec(), b"c".to_vec()], "{label}");
            let after_a: Vec<_> = snap
                .scan_docs(id, Some(b"a"))
                .unwrap()
                .map(|r| r.unwrap().0)
                .collect();
            assert_eq!(after_a, vec![b"c".to_vec()], "{label}");
            let ix = |rev: bool| -> Vec<Vec<u8>> {
                let it = snap
                    .scan_index(
                        Bound::Included(b"ix".to_vec()),
                        Bound::Excluded(b"iy".to_vec()),
                    )
                    .unwrap();
                if rev {
                    it.rev().map(|r| r.unwrap().0).collect()
                } else {
                    it.map(|r| r.unwrap().0).collect()
                }
            };
            assert_eq!(ix(false), vec![b"ixa".to_vec(), b"ixc".to_vec()], "{label}");
            assert_eq!(ix(true), vec![b"ixc".to_vec(), b"ixa".to_vec()], "{label}");
            assert!(snap.collection(&ns()).unwrap().is_some(), "{label}");
            assert_eq!(snap.collections(Some("d")).unwrap().len(), 1, "{label}");
        };
        assert!(
            store.snapshot().unwrap().pending_depth() >= 5,
            "read through layers"
        );
        check(&store, "pending");
        // A failing batch rolls back only itself, not the pending ones before it.
        let r = store
            .write(move |ctx| -> Result<()> {
                ctx.put_doc(id, b"z", b"\x05\0\0\0\0")?;
                panic!("job fails halfway")
            })
            .await;
        assert!(r.is_err());
        check(&store, "after a failed batch");
        assert_eq!(store.snapshot().unwrap().get_doc(id, b"z").unwrap(), None);
        store.checkpoint().await.unwrap();
        assert_eq!(
            store.snapshot().unwrap().pending_depth(),
            0,
            "committed by the checkpoint"
        );
        check(&store, "after redb committed them");
        drop(store);
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        check(&store, "after a restart");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_timer_commits_pending_batches() {
        let dir = tempdir();
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let id = create_collection(&store).await;
        store
            .write(move |ctx| ctx.put_doc(id, b"a", &bson::to_vec(&doc! {"v": 1}).unwrap()))
            .await
            .unwrap();
        // Default age is 10 ms; allow a loaded machine far longer before calling it stuck.
        let started = std::time::Instant::now();
        while store.snapshot().unwrap().pending_depth() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never committed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            store.snapshot().unwrap().get_doc(id, b"a").unwrap(),
            Some(doc! {"v": 1})
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A drop is a catalog change and a mark: the committer thread purges the collection's
    /// documents, `_id` index and index entries in chunks afterwards, and after a restart
    /// goes on where it stood.
    #[tokio::test]
    async fn dropped_collections_are_purged_in_the_background() {
        let dir = tempdir();
        let n = 3 * pipeline::PURGE_CHUNK + 7;
        let (id, ix) = {
            let store = Store::open(&dir, StoreOptions::default()).unwrap();
            let (id, ix) = store
                .write(move |ctx| {
                    let mut m = meta(ctx.new_id());
                    let ix = ctx.new_id();
                    m.indexes.push(IndexMeta {
                        id: ix,
                        name: "a_1".into(),
                        key: doc! {"a": 1},
                        unique: false,
                        sparse: false,
                        partial_filter: None,
                        spec: doc! {"v": 2, "key": {"a": 1}, "name": "a_1"},
                        multikey: false,
                    });
                    ctx.put_collection(&m)?;
                    for i in 0..n as u32 {
                        let k = i.to_be_bytes();
                        ctx.put_doc(m.id, &k, &bson::to_vec(&doc! {"_id": i}).unwrap())?;
                        let mut ik = ix.to_be_bytes().to_vec();
                        ik.extend_from_slice(&k);
                        ctx.index_put(&ik, &k)?;
                    }
                    Ok((m.id, ix))
                })
                .await
                .unwrap();
            let m = store
                .snapshot()
                .unwrap()
                .collection(&ns())
                .unwrap()
                .unwrap();
            store
                .write(move |ctx| ctx.remove_collection(&m))
                .await
                .unwrap();
            let snap = store.snapshot().unwrap();
            assert!(snap.collection(&ns()).unwrap().is_none());
            // Closed at once: what is left to purge is purged after the restart.
            drop(snap);
            store.close();
            (id, ix)
        };
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let started = std::time::Instant::now();
        loop {
            let snap = store.snapshot().unwrap();
            let left = snap.collection_size(id).unwrap().0 + snap.index_size(ix).unwrap();
            if left == 0 && !store.purge_pending() {
                // The `_id` index went too (a lookup finds no entry, not a dangling one).
                assert_eq!(snap.get_doc(id, &5u32.to_be_bytes()).unwrap(), None);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never purged: {left} bytes/documents left"
            );
            drop(snap);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Creates the collection `d.c` and returns its id.
    async fn create_collection(store: &Store) -> u64 {
        store
            .write(|ctx| {
                let m = meta(ctx.new_id());
                ctx.put_collection(&m)?;
                Ok(m.id)
            })
            .await
            .unwrap()
    }

    fn natural_ids(snap: &Snapshot, id: u64, reverse: bool) -> Vec<i32> {
        snap.scan_natural(id, reverse)
            .unwrap()
            .map(|r| r.unwrap().1.get_i32("_id").unwrap())
            .collect()
    }

    async fn put_ids(store: &Store, id: u64, ids: &[i32]) {
        let ids = ids.to_vec();
        store
            .write(move |ctx| {
                for i in ids {
                    let k = i.to_be_bytes();
                    ctx.put_doc(id, &k, &bson::to_vec(&doc! {"_id": i}).unwrap())?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn natural_order_is_insertion_order_and_an_update_keeps_its_place() {
        let dir = tempdir();
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let id = create_collection(&store).await;
        put_ids(&store, id, &[3, 1]).await;
        put_ids(&store, id, &[2]).await;
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [3, 1, 2]
        );
        assert_eq!(natural_ids(&store.snapshot().unwrap(), id, true), [2, 1, 3]);
        // An overwrite keeps the place; a delete and re-insert goes last.
        put_ids(&store, id, &[3]).await;
        store
            .write(move |ctx| ctx.delete_doc(id, &1i32.to_be_bytes()))
            .await
            .unwrap();
        put_ids(&store, id, &[1]).await;
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [3, 2, 1]
        );
        let in_write = store
            .write(move |ctx| {
                Ok(ctx
                    .scan_docs(id)?
                    .into_iter()
                    .map(|(_, d)| d.get_i32("_id").unwrap())
                    .collect::<Vec<_>>())
            })
            .await
            .unwrap();
        assert_eq!(in_write, [3, 2, 1], "the writer's scan is in natural order");
        // A transaction sees its updates in place, its deletes gone, its inserts last;
        // its inserts keep that order when it commits.
        let txn = store.begin_txn().unwrap();
        txn.run(|ctx| {
            ctx.put_doc(
                id,
                &9i32.to_be_bytes(),
                &bson::to_vec(&doc! {"_id": 9}).unwrap(),
            )?;
            ctx.put_doc(
                id,
                &2i32.to_be_bytes(),
                &bson::to_vec(&doc! {"_id": 2, "x": 1}).unwrap(),
            )?;
            ctx.delete_doc(id, &3i32.to_be_bytes())
        })
        .unwrap();
        assert_eq!(natural_ids(&txn.snapshot(), id, false), [2, 1, 9]);
        assert_eq!(natural_ids(&txn.snapshot(), id, true), [9, 1, 2]);
        let seen = txn.run(|ctx| Ok(ctx.scan_docs(id)?.len())).unwrap();
        assert_eq!(seen, 3);
        let txn = std::sync::Arc::new(txn);
        let t2 = txn.clone();
        store
            .write(move |ctx| ctx.commit_txn(&t2, None, None).map(drop))
            .await
            .unwrap();
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [2, 1, 9]
        );
        // Replayed from the log, and after a checkpoint, the order is the same.
        drop(store);
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [2, 1, 9]
        );
        put_ids(&store, id, &[0]).await;
        store.checkpoint().await.unwrap();
        drop(store);
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [2, 1, 9, 0]
        );
        // Dropping the collection drops its natural order too.
        store
            .write(move |ctx| {
                let m = ctx.collection(&ns())?.unwrap();
                ctx.remove_collection(&m)
            })
            .await
            .unwrap();
        assert!(
            store
                .snapshot()
                .unwrap()
                .collection(&ns())
                .unwrap()
                .is_none()
        );
        // Its records go with the purge that follows.
        let started = std::time::Instant::now();
        while !natural_ids(&store.snapshot().unwrap(), id, false).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "never purged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_format_2_file_gets_record_ids_in_id_order() {
        let dir = tempdir();
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        let id = create_collection(&store).await;
        put_ids(&store, id, &[3, 1, 2]).await;
        store.checkpoint().await.unwrap();
        drop(store);
        // Make it what format 2 wrote: documents keyed by `_id`, no records, format "2".
        {
            let db = Database::create(dir.join("eddy.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let records = txn.open_table(RECORDS).unwrap();
                let mut docs = txn.open_table(OLD_DOCS).unwrap();
                for r in records.iter().unwrap() {
                    let (k, v) = r.unwrap();
                    let (id_key, bson) = split_record(v.value()).unwrap();
                    let key = doc_key(coll_of(k.value()), id_key);
                    docs.insert(key.as_slice(), bson).unwrap();
                }
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(META_FORMAT, FORMAT_NO_RECORD_IDS).unwrap();
            }
            txn.delete_table(RECORDS).unwrap();
            txn.delete_table(IDS).unwrap();
            txn.commit().unwrap();
        }
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [1, 2, 3]
        );
        let snap = store.snapshot().unwrap();
        assert_eq!(
            snap.get_doc(id, &2i32.to_be_bytes()).unwrap(),
            Some(doc! {"_id": 2})
        );
        // New documents go after them, with ids the migration did not use.
        put_ids(&store, id, &[0]).await;
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [1, 2, 3, 0]
        );
        drop(snap);
        drop(store);
        let store = Store::open(&dir, StoreOptions::default()).unwrap();
        assert_eq!(
            natural_ids(&store.snapshot().unwrap(), id, false),
            [1, 2, 3, 0]
        );
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("eddy-storage-{}", bson::oid::ObjectId::new()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
