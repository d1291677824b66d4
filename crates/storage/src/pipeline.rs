//! The commit pipeline: write jobs run in batches (group commit), one batch at a time, by
//! whichever writer leads, or by the committer thread it hands the rest to (see
//! [`Pipeline`]).
//!
//! For each batch the leader
//! 1. runs the jobs in the open redb write transaction, which is not forced to disk
//!    (`Durability::None`), recording every table change in the batch's redo section and
//!    every oplog entry it logs (with a strictly increasing clusterTime);
//! 2. appends one frame (entries + redo) to the log and fdatasyncs it: the durability
//!    point, before which no job of the batch is acknowledged;
//! 3. publishes the batch's changes to readers as a layer over the last redb commit, adds
//!    its entries to the log's in-memory tail, publishes the batch's clusterTime and
//!    completes the jobs.
//!
//! The committer thread commits the open transaction in redb every few batches or
//! milliseconds, purges what dropped collections and indexes left behind, and checkpoints:
//! a durable, empty redb commit that records the lsn the tables hold, every
//! `checkpoint_interval` or `checkpoint_bytes` of log. Recovery replays the frames after it
//! ([`replay`]). Whole segments are truncated only once a checkpoint covers them.
//!
//! A batch takes every job waiting, never waiting for more: a lone writer gets one round
//! trip plus one fdatasync, and writers that arrive while an fdatasync is under way share
//! the next one.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::{DateTime, Document, Timestamp};
use errors::{MongoError, Result};
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::watch;

use crate::catalog::{CollectionMeta, Namespace};
use crate::oplog::{self, OpKind, OplogEntry};
use crate::pending::{Building, Layer};
use crate::redo::{self, Op, Redo, TableId};
use crate::txn::{self, Overlay};
use crate::wal::Log;
use crate::wal::frame::FrameBuf;
use crate::wal::writer::LogWriter;
use crate::{
    Backend, CATALOG, IDS, INDEXES, META, META_APPLIED, META_NEXT_ID, OLD_DOCS, PREIMAGES, RECORDS,
    SESSIONS, StoreOptions, TXN_PREIMAGES, WriteCtx, coll_of, decode_doc, decode_record, doc_key,
    hi_bound, list_catalog, prefix_range, preimage_record, record_doc, record_key, record_value,
    storage_err,
};

/// Jobs taken into one group commit at most. Bounds the latency a batch adds to the first
/// write in it while still amortising the fdatasync over many writers.
const MAX_GROUP: usize = 256;

/// Entries of dropped collections and indexes deleted per purge step (see
/// [`Writer::purge_step`]): a writer that arrives meanwhile waits for at most one step.
pub(crate) const PURGE_CHUNK: usize = 256;

/// META keys naming what is left to purge: `gc:<rank>:<table>:<hex key prefix>`.
const GC_PREFIX: &str = "gc:";

/// Redo bytes replayed per redb transaction during recovery.
const REPLAY_TXN_BYTES: usize = 64 * 1024 * 1024;

/// The open write transaction is committed in redb (by the committer thread, off the
/// writers' path) once it holds this many batches, this many bytes of changes, or its
/// oldest batch has waited this long. One redb commit cost about 800k instructions, as
/// much as three single-document inserts, mostly the same pages written again; a reader
/// walks at most about this many small layers.
const PENDING_MAX_BATCHES: usize = 64;
const PENDING_MAX_BYTES: usize = 8 * 1024 * 1024;
pub(crate) const DEFAULT_PENDING_MAX_AGE: Duration = Duration::from_millis(50);

/// Past these, the writer commits redb itself rather than wait for the committer thread
/// (which would mean it is far behind): bounds the layers a reader walks.
const PENDING_HARD_BATCHES: usize = 4 * PENDING_MAX_BATCHES;
const PENDING_HARD_BYTES: usize = 4 * PENDING_MAX_BYTES;

pub(crate) type Completion = Box<dyn FnOnce(Result<()>) + Send>;
pub(crate) type Job = Box<dyn for<'a> FnOnce(&mut WriteCtx<'a>) -> Completion + Send>;

/// Where the pipeline answers a request for an image's read transaction and position.
pub(crate) type ImageReply =
    Box<dyn FnOnce(Result<(redb::ReadTransaction, crate::image::ImagePos)>) + Send>;

/// What the pipeline is asked to do.
pub(crate) enum Msg {
    Job(Job),
    /// Make the tables durable now, then answer.
    Checkpoint(Completion),
    /// Replication (see `crate::replica`): write frames placed in the log.
    Append(Vec<crate::replica::ReplFrame>, crate::replica::IoDone),
    /// ... apply frames a majority holds.
    Apply(Vec<crate::replica::ReplFrame>, Completion),
    /// ... remove the frames from an lsn on.
    Truncate(u64, Completion),
    /// ... a proposal the consensus layer refused.
    Rejected(u64),
    /// ... a read transaction for an image of the tables, and the frame it holds.
    Image(ImageReply),
    /// ... replace the tables with an image (a file, already read whole once).
    Install(
        std::path::PathBuf,
        Box<dyn FnOnce(Result<crate::image::ImagePos>) + Send>,
    ),
}

/// What the pipeline carries between batches.
pub(crate) struct WriterState {
    /// The last clusterTime assigned.
    pub last_ts: Timestamp,
    /// Shared with transactions, which take ids for collections they create.
    pub next_id: Arc<AtomicU64>,
    /// `next_id` as last stored; it is written only when it changed.
    pub stored_next_id: u64,
    /// Tagged keys the current batch wrote, for transaction conflict checks.
    pub touched: Vec<Vec<u8>>,
    pub tracker: Arc<Mutex<txn::Tracker>>,
    pub opts: StoreOptions,
    /// The lsn of the next frame.
    pub next_lsn: u64,
    /// The last frame the tables hold all of: `next_lsn - 1`, except on a replica set
    /// member, whose log may hold frames a majority does not have yet.
    pub tables_lsn: u64,
    /// The lsn a durable checkpoint holds.
    pub checkpoint_lsn: u64,
    /// Log bytes appended since that checkpoint.
    pub since_checkpoint: u64,
    pub last_checkpoint: Instant,
    /// A truncation waits for a checkpoint.
    pub checkpoint_wanted: bool,
    /// Set when the log or the tables failed: nothing more may be written.
    pub failed: Option<MongoError>,
    pub(crate) frame: FrameBuf,
    pub(crate) redo: Redo,
    /// Segments before this one are dropped once the batch commits.
    pub(crate) drop_before: Option<u64>,
    /// On a replica set member: what replication shares (the log's bounds wait for it).
    pub(crate) repl_shared: Option<Arc<crate::replica::ReplShared>>,
    /// Decoded catalog records, so that a write does not decode its collection's record
    /// each time. Every catalog change goes through `Tables::change`, which drops the
    /// entry; a failed batch drops them all.
    pub(crate) catalog_cache: std::collections::HashMap<String, Option<CollectionMeta>>,
    /// The point changes of the batch being run, for its layer.
    pub(crate) building: Building,
    /// Whether the batch being run deleted a range (then it is committed in redb at once).
    pub(crate) range_op: bool,
    /// Whether the batch being run marked dropped entries for purging.
    pub(crate) gc_wanted: bool,
}

impl WriterState {
    pub(crate) fn new(opts: StoreOptions, next_lsn: u64, checkpoint_lsn: u64) -> WriterState {
        WriterState {
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            next_id: Arc::new(AtomicU64::new(1)),
            stored_next_id: 1,
            touched: Vec::new(),
            tracker: Arc::default(),
            opts,
            next_lsn,
            tables_lsn: checkpoint_lsn,
            checkpoint_lsn,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            checkpoint_wanted: false,
            failed: None,
            frame: FrameBuf::default(),
            redo: Redo::default(),
            drop_before: None,
            repl_shared: None,
            catalog_cache: std::collections::HashMap::new(),
            building: Building::default(),
            range_op: false,
            gc_wanted: false,
        }
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

    fn dirty(&self) -> bool {
        self.tables_lsn > self.checkpoint_lsn
    }
}

/// The state the pipeline's leader works with.
pub(crate) struct Writer {
    pub db: Arc<Database>,
    pub log: Arc<Log>,
    pub lw: LogWriter,
    pub state: WriterState,
    pub committed: watch::Sender<Timestamp>,
    /// What readers see, changed under its write lock: a snapshot opened under its read
    /// lock knows its exact clusterTime (without the tables storing it in every batch,
    /// which cost a table update per commit) and the pending layers its read transaction
    /// does not hold.
    pub visible: Arc<std::sync::RwLock<Visible>>,
    /// The write transaction kept open across batches (see `crate::pending`).
    pub open: Option<WriteTransaction>,
    /// The redo of the batches in `open` not yet committed in redb, oldest first.
    pub pending_redo: Vec<(u64, Vec<u8>)>,
    pub pending_bytes: usize,
    pub pending_since: Option<Instant>,
    /// Whether `open` holds pending batches (read by the timer, which commits them).
    pub has_pending: Arc<std::sync::atomic::AtomicBool>,
    /// Whether dropped collections or indexes have entries left to purge.
    pub gc_pending: Arc<std::sync::atomic::AtomicBool>,
    /// Whether `open` holds purged entries (and must be committed even with no batch).
    pub purged: bool,
    /// Set when the log is a replica set's replicated log.
    pub repl: Option<crate::replica::ReplState>,
}

/// What readers see: the clusterTime of the last published batch, and the layers of the
/// batches the last redb commit does not hold.
pub(crate) struct Visible {
    pub ts: Timestamp,
    pub pending: Option<Arc<Layer>>,
}

/// The pipeline shared by every writer: a queue of jobs, and the writer state that one
/// leader at a time works with.
///
/// Key decision: a writer that finds nobody leading runs one batch itself, on its own
/// thread, so that a lone writer pays no thread hand-off (on this machine's VM each
/// cross-thread wake-up cost more than the commit's own work). Whatever is left after that
/// batch (jobs queued meanwhile, a redb commit or a checkpoint that has come due) is handed
/// to the committer thread, which leads until the queue is empty: the writer's reply is
/// never held up by other writers' batches or by housekeeping, and under many writers the
/// runtime's worker threads stay free for the connections while the committer thread
/// waits on the fdatasyncs.
pub(crate) struct Pipeline {
    queue: Mutex<Queue>,
    writer: Mutex<Option<Writer>>,
    /// The writer's `has_pending`: the committer then wakes soon, to commit it.
    has_pending: Arc<std::sync::atomic::AtomicBool>,
    /// The writer's `gc_pending`: the committer then purges between batches.
    gc_pending: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the committer thread: work handed to it, or the pipeline closing.
    committer_cv: std::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    msgs: std::collections::VecDeque<Msg>,
    /// Replication's messages: run before any queued job, in the order they came.
    ctl: std::collections::VecDeque<Msg>,
    /// The pipeline is replicated: writers never lead (see `Pipeline::submit`).
    replicated: bool,
    /// A replicated pipeline waits for the majority before running more jobs.
    draining: bool,
    /// Somebody (a writer or the committer) is leading.
    leading: bool,
    /// The leader handed the lead to the committer thread.
    handoff: bool,
    closed: bool,
}

impl Pipeline {
    pub(crate) fn new(w: Writer) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            has_pending: w.has_pending.clone(),
            gc_pending: w.gc_pending.clone(),
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(Some(w)),
            committer_cv: std::sync::Condvar::new(),
        })
    }

    /// Queues `msg`, and runs a batch on this thread if nobody is leading.
    ///
    /// # Errors
    /// InterruptedAtShutdown once the pipeline is closed.
    pub(crate) fn submit(&self, msg: Msg) -> Result<()> {
        let lead = {
            let mut q = self.queue.lock().unwrap();
            if q.closed {
                return Err(crate::shutting_down());
            }
            if q.replicated {
                // Replicated, the leader may wait on the consensus layer, which runs on the
                // runtime's threads: it is always the committer thread.
                match msg {
                    Msg::Job(_) => q.msgs.push_back(msg),
                    m => q.ctl.push_back(m),
                }
                if !std::mem::replace(&mut q.leading, true) {
                    q.handoff = true;
                    drop(q);
                    self.committer_cv.notify_one();
                }
                return Ok(());
            }
            q.msgs.push_back(msg);
            !std::mem::replace(&mut q.leading, true)
        };
        if lead {
            self.lead_once();
        }
        Ok(())
    }

    /// Makes the pipeline replicated (before any write): see `crate::replica`.
    pub(crate) fn set_replicated(&self, r: crate::replica::ReplState) {
        self.queue.lock().unwrap().replicated = true;
        if let Some(w) = self.writer().as_mut() {
            w.state.repl_shared = Some(r.shared.clone());
            w.repl = Some(r);
        }
    }

    /// Whether dropped entries are left to purge.
    pub(crate) fn purge_pending(&self) -> bool {
        self.gc_pending.load(Ordering::SeqCst)
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Option<Writer>> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one batch on the caller's thread, then gives up the lead, or hands it to the
    /// committer thread if work is left.
    fn lead_once(&self) {
        let mut guard = self.writer();
        self.step(&mut guard);
        let due = guard.as_ref().is_some_and(Writer::housekeeping_due);
        let mut q = self.queue.lock().unwrap();
        if q.msgs.is_empty() && !due {
            q.leading = false;
            return;
        }
        q.handoff = true;
        drop(q);
        drop(guard);
        self.committer_cv.notify_one();
    }

    /// Takes up to `MAX_GROUP` queued jobs (and any other messages) and runs them.
    fn step(&self, guard: &mut Option<Writer>) {
        // A replicated pipeline that waits for the majority runs no jobs; if it is not the
        // primary any more, the jobs waiting fail (their callers hear NotWritablePrimary).
        let drop_jobs = guard
            .as_ref()
            .and_then(|w| w.repl.as_ref())
            .is_some_and(|r| !r.shared.writable.load(Ordering::SeqCst));
        let (batch, others) = {
            let mut q = self.queue.lock().unwrap();
            let mut batch = Vec::new();
            let mut others: Vec<Msg> = q.ctl.drain(..).collect();
            if q.draining && drop_jobs {
                q.msgs.clear();
            }
            while batch.len() < MAX_GROUP && !q.draining {
                match q.msgs.pop_front() {
                    Some(Msg::Job(j)) => batch.push(j),
                    Some(m) => others.push(m),
                    None => break,
                }
            }
            (batch, others)
        };
        // Closed: the jobs are dropped, and their callers hear of it.
        let Some(w) = guard.as_mut() else { return };
        let mut checkpoints = Vec::new();
        for m in others {
            match m {
                Msg::Checkpoint(reply) => checkpoints.push(reply),
                Msg::Append(frames, done) => w.repl_append(frames, done),
                Msg::Apply(frames, done) => w.repl_apply(frames, done),
                Msg::Truncate(lsn, done) => w.repl_truncate(lsn, done),
                Msg::Rejected(p) => w.repl_rejected(p),
                Msg::Image(reply) => reply(w.image_point()),
                Msg::Install(path, reply) => reply(w.install_image(&path)),
                Msg::Job(_) => {}
            }
        }
        if !batch.is_empty() {
            let m = &*crate::metrics::METRICS;
            m.group_size.observe(batch.len() as f64);
            m.groups.inc();
            m.grouped_writes.inc_by(batch.len() as u64);
            let t = std::time::Instant::now();
            if w.repl.is_some() {
                w.batch_replicated(batch);
            } else {
                w.batch(batch);
            }
            m.commit_seconds.observe(t.elapsed().as_secs_f64());
        }
        for reply in checkpoints {
            reply(w.checkpoint());
        }
        let draining = w.repl_blocked();
        self.queue.lock().unwrap().draining = draining;
    }

    /// Leads on the committer thread until the queue is empty, committing redb and
    /// checkpointing when due.
    fn lead_committer(&self) {
        let mut guard = self.writer();
        loop {
            self.step(&mut guard);
            if let Some(w) = guard.as_mut() {
                w.commit_open_if_due();
                w.maybe_checkpoint();
                // Purging only when no write waits, one step at a time.
                if self.gc_pending.load(Ordering::SeqCst)
                    && self.queue.lock().unwrap().msgs.is_empty()
                {
                    w.purge_step();
                }
            }
            let mut q = self.queue.lock().unwrap();
            if q.ctl.is_empty() && (q.msgs.is_empty() || q.draining) {
                q.leading = false;
                return;
            }
        }
    }

    /// Starts the committer thread: it leads when a writer hands it the lead, and wakes
    /// on its own to commit pending batches in redb and to checkpoint when due.
    pub(crate) fn start_committer(
        self: &Arc<Self>,
        interval: Duration,
        pending_max_age: Duration,
    ) -> std::io::Result<()> {
        let p = self.clone();
        let tick = (interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("eddy-commit".into())
            .spawn(move || {
                loop {
                    {
                        let mut q = p.queue.lock().unwrap();
                        if !q.handoff && !q.closed {
                            let wait = if p.gc_pending.load(Ordering::SeqCst) {
                                Duration::from_millis(1)
                            } else if p.has_pending.load(Ordering::SeqCst) {
                                pending_max_age
                            } else {
                                tick
                            };
                            q = p.committer_cv.wait_timeout(q, wait).unwrap().0;
                        }
                        if q.closed {
                            return;
                        }
                        if std::mem::take(&mut q.handoff) {
                            // The writer that handed over still holds `leading` for us.
                        } else if q.leading {
                            // A writer is leading: it hands over if anything is due.
                            continue;
                        } else {
                            q.leading = true;
                        }
                    }
                    p.lead_committer();
                }
            })
            .map(drop)
    }

    /// Refuses new jobs, runs the queued ones, checkpoints and closes the log.
    pub(crate) fn close(&self) {
        self.queue.lock().unwrap().closed = true;
        self.committer_cv.notify_all();
        // Whoever leads now finishes its batch; then the writer is ours.
        let mut guard = self.writer();
        let left: Vec<Msg> = {
            let mut q = self.queue.lock().unwrap();
            let mut v: Vec<Msg> = q.ctl.drain(..).collect();
            v.extend(q.msgs.drain(..));
            v
        };
        if let Some(w) = guard.as_mut() {
            let jobs: Vec<Job> = left
                .into_iter()
                .filter_map(|m| match m {
                    Msg::Job(j) => Some(j),
                    Msg::Checkpoint(reply) => {
                        reply(Ok(()));
                        None
                    }
                    Msg::Append(_, done) => {
                        done(Err(std::io::Error::other("shutting down")));
                        None
                    }
                    Msg::Apply(_, done) | Msg::Truncate(_, done) => {
                        done(Err(crate::shutting_down()));
                        None
                    }
                    Msg::Image(reply) => {
                        reply(Err(crate::shutting_down()));
                        None
                    }
                    Msg::Install(_, reply) => {
                        reply(Err(crate::shutting_down()));
                        None
                    }
                    Msg::Rejected(_) => None,
                })
                .collect();
            if !jobs.is_empty() && w.repl.is_none() {
                w.batch(jobs);
            }
            w.checkpoint_logged();
        }
        *guard = None;
    }
}

impl Writer {
    /// Whether a checkpoint is due: by log bytes, by time, or because a truncation waits.
    fn checkpoint_due(&self) -> bool {
        let s = &self.state;
        s.since_checkpoint >= s.opts.checkpoint_bytes
            || s.checkpoint_wanted
            || (s.dirty() && s.last_checkpoint.elapsed() >= s.opts.checkpoint_interval)
    }

    /// Whether the open transaction's pending batches are due for a redb commit.
    fn commit_due(&self) -> bool {
        self.pending_redo.len() >= PENDING_MAX_BATCHES
            || self.pending_bytes >= PENDING_MAX_BYTES
            || self
                .pending_since
                .is_some_and(|t| t.elapsed() >= self.state.opts.pending_max_age)
    }

    /// Whether a replicated pipeline must wait for the majority before it runs more jobs:
    /// its open transaction is full and holds batches a majority does not.
    pub(crate) fn repl_blocked(&self) -> bool {
        self.repl.as_ref().is_some_and(|r| !r.settled())
            && (self.pending_redo.len() >= PENDING_HARD_BATCHES
                || self.pending_bytes >= PENDING_HARD_BYTES)
    }

    /// Whether the open transaction is due for a redb commit.
    pub(crate) fn commit_wanted(&self) -> bool {
        self.commit_due()
            || self.pending_redo.len() >= PENDING_HARD_BATCHES
            || self.pending_bytes >= PENDING_HARD_BYTES
    }

    /// Whether the committer thread has work besides queued jobs.
    fn housekeeping_due(&self) -> bool {
        self.commit_due() || self.checkpoint_due()
    }

    fn maybe_checkpoint(&mut self) {
        if self.checkpoint_due() {
            self.checkpoint_logged();
        }
    }

    fn checkpoint_logged(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "checkpoint failed");
        }
    }

    /// Makes the tables durable up to the last batch.
    fn checkpoint(&mut self) -> Result<()> {
        if !self.state.dirty() || self.state.failed.is_some() {
            return Ok(());
        }
        if self.repl.as_ref().is_some_and(|r| !r.settled()) {
            // The tables hold batches a majority does not: later.
            return Ok(());
        }
        let started = Instant::now();
        self.commit_open()?;
        let mut txn = self.db.begin_write().map_err(storage_err)?;
        // Quick repair saves the allocator state with the commit, so that a restart after
        // a crash need not walk the whole file to rebuild it.
        txn.set_quick_repair(true);
        {
            let s = &self.state;
            let mut h = Handles::open(&txn)?;
            h.set_applied(s.tables_lsn, oplog::ts_key(s.last_ts))
                .map_err(storage_err)?;
            if let Some(r) = &self.repl {
                let applied = *r.shared.applied.lock().unwrap();
                h.set_repl_applied(applied).map_err(storage_err)?;
            }
            // Batches log the next id without storing it (see `Tables::finish`).
            let next = s.stored_next_id.to_be_bytes();
            h.apply(&Op::Put(TableId::Meta, META_NEXT_ID.as_bytes(), &next))
                .map_err(storage_err)?;
        }
        txn.commit().map_err(storage_err)?;
        let s = &mut self.state;
        crate::wal::write_checkpoint(self.log.dir(), s.tables_lsn, oplog::ts_key(s.last_ts))
            .map_err(storage_err)?;
        s.checkpoint_lsn = s.tables_lsn;
        s.since_checkpoint = 0;
        s.last_checkpoint = Instant::now();
        s.checkpoint_wanted = false;
        tracing::debug!(
            lsn = s.checkpoint_lsn,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "checkpoint"
        );
        Ok(())
    }

    fn batch(&mut self, batch: Vec<Job>) {
        let before = (self.state.last_ts, self.state.stored_next_id);
        let result = self.run_batch(batch);
        let touched = std::mem::take(&mut self.state.touched);
        match result {
            Ok(completions) => {
                if std::mem::take(&mut self.state.gc_wanted) {
                    self.gc_pending.store(true, Ordering::SeqCst);
                }
                self.state
                    .tracker
                    .lock()
                    .unwrap()
                    .record(touched, oplog::ts_key(self.state.last_ts));
                self.committed.send_replace(self.state.last_ts);
                for c in completions {
                    c(Ok(()));
                }
                self.drop_segments();
            }
            Err((e, completions)) => {
                tracing::error!(error = %e, "commit failed; the batch is lost");
                // Ids handed out stay used: reusing one could collide with a transaction
                // that took one meanwhile.
                (self.state.last_ts, self.state.stored_next_id) = before;
                self.state.drop_before = None;
                self.state.catalog_cache.clear();
                for c in completions {
                    c(Err(e.clone()));
                }
            }
        }
    }

    /// The open write transaction, begun if there is none.
    pub(crate) fn take_open(&mut self) -> Result<WriteTransaction> {
        if let Some(t) = self.open.take() {
            return Ok(t);
        }
        let mut t = self.db.begin_write().map_err(storage_err)?;
        let _ = t.set_durability(Durability::None);
        Ok(t)
    }

    /// After a failed batch: the open transaction also held the batches still pending
    /// (acknowledged, and shown to readers through their layers), so it is begun again and
    /// their changes are made again from their redo.
    pub(crate) fn rebuild_open(&mut self, failed: WriteTransaction) {
        let _ = failed.abort();
        // What was purged in it is purged again: its `gc:` marks are still there.
        if std::mem::take(&mut self.purged) {
            self.gc_pending.store(true, Ordering::SeqCst);
        }
        let r = (|| -> std::result::Result<(), String> {
            let mut t = self.db.begin_write().map_err(|e| e.to_string())?;
            let _ = t.set_durability(Durability::None);
            {
                let mut h = Handles::open(&t).map_err(|e| e.message)?;
                for (_, redo_bytes) in &self.pending_redo {
                    for op in redo::ops(redo_bytes) {
                        h.apply(&op?)?;
                    }
                }
            }
            self.open = Some(t);
            Ok(())
        })();
        if let Err(e) = r {
            let e = MongoError::internal(format!(
                "the tables could not be restored after a failed write ({e}); no more writes are accepted: restart the server"
            ));
            tracing::error!(error = %e.message, "commit pipeline failed");
            self.state.failed = Some(e);
        }
    }

    /// Commits the open transaction in redb (not durably), so that readers find the
    /// pending batches in the tables rather than in layers.
    pub(crate) fn commit_open(&mut self) -> Result<()> {
        if self.repl.as_ref().is_some_and(|r| !r.settled()) {
            // Not before a majority holds every batch in it (see `crate::replica`).
            return Ok(());
        }
        let Some(txn) = self.open.take() else {
            return Ok(());
        };
        if self.pending_redo.is_empty() && !self.purged {
            let _ = txn.abort();
            return Ok(());
        }
        let mut vis = self
            .visible
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = txn.commit() {
            // The frames are durable but the tables do not hold them: a restart replays.
            let e = MongoError::internal(format!(
                "the tables could not be updated ({e}); no more writes are accepted: restart the server"
            ));
            self.state.failed = Some(e.clone());
            return Err(e);
        }
        vis.pending = None;
        drop(vis);
        if let Some(r) = self.repl.as_mut() {
            // Settled: the tables hold exactly the frames a majority holds.
            r.image_at = r.applied_pos();
        }
        self.purged = false;
        self.pending_redo.clear();
        self.pending_bytes = 0;
        self.pending_since = None;
        self.has_pending.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Commits the open transaction if its pending batches are due for it.
    fn commit_open_if_due(&mut self) {
        if self.commit_due() {
            let _ = self.commit_open();
        }
    }

    /// Runs a batch's jobs in the open transaction, recording the frame and redo in the
    /// writer state; returns the transaction and the jobs' completions.
    pub(crate) fn run_jobs(
        &mut self,
        batch: Vec<Job>,
    ) -> std::result::Result<(WriteTransaction, Vec<Completion>), (MongoError, Vec<Completion>)>
    {
        if let Some(e) = &self.state.failed {
            // Jobs that never ran still have to hear about it: run none, fail all.
            return Err((e.clone(), Vec::new()));
        }
        self.state.frame.clear();
        self.state.redo.clear();
        self.state.building = Building::default();
        self.state.range_op = false;
        let txn = match self.take_open() {
            Ok(t) => t,
            Err(e) => return Err((e, Vec::new())),
        };
        let mut completions = Vec::with_capacity(batch.len());
        let outcome = (|| -> Result<()> {
            let mut ctx = WriteCtx {
                b: Backend::Tables(Tables::open(&txn, &mut self.state, &self.log)?),
            };
            for job in batch {
                // A panic in one job must not take the commit pipeline down with it: the
                // batch is rolled back (the job may have written half a statement) and
                // every caller in it hears about it.
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
            self.rebuild_open(txn);
            return Err((e, completions));
        }
        Ok((txn, completions))
    }

    fn run_batch(
        &mut self,
        batch: Vec<Job>,
    ) -> std::result::Result<Vec<Completion>, (MongoError, Vec<Completion>)> {
        let prior_ts = oplog::ts_key(self.state.last_ts);
        let (txn, completions) = self.run_jobs(batch)?;
        let lsn = self.state.next_lsn;
        let s = &mut self.state;
        if s.redo.is_empty() && !s.frame.has_entries() {
            // Nothing changed (every job failed before writing): no frame.
            self.open = Some(txn);
            return Ok(completions);
        }
        let last_ts = oplog::ts_key(s.last_ts);
        let (bytes, h) = s.frame.finish(lsn, prior_ts, last_ts, s.redo.bytes());
        if let Err(e) = self.lw.append(bytes, &h) {
            let e = MongoError::internal(format!(
                "the write-ahead log could not be written ({e}); no more writes are accepted: restart the server"
            ));
            s.failed = Some(e.clone());
            let _ = txn.abort();
            return Err((e, completions));
        }
        s.since_checkpoint += bytes.len() as u64;
        s.next_lsn = lsn + 1;
        s.tables_lsn = lsn;
        // The batch is durable: show it to readers, in the tables (a range change, or a
        // full open transaction) or as a layer over them.
        self.pending_redo.push((lsn, s.redo.bytes().to_vec()));
        self.pending_bytes += s.building.bytes + s.redo.bytes().len();
        self.open = Some(txn);
        let must_commit = s.range_op
            || self.pending_redo.len() >= PENDING_HARD_BATCHES
            || self.pending_bytes >= PENDING_HARD_BYTES;
        if must_commit {
            if let Err(e) = self.commit_open() {
                return Err((e, completions));
            }
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            vis.ts = self.state.last_ts;
        } else {
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ts = oplog::ts_key(self.state.last_ts);
            let layer = self.state.building.publish(vis.pending.take(), ts);
            vis.pending = Some(layer);
            vis.ts = self.state.last_ts;
            drop(vis);
            if self.pending_since.is_none() {
                self.pending_since = Some(Instant::now());
                self.has_pending.store(true, Ordering::SeqCst);
            }
        }
        self.log.push_tail(self.state.frame.entries());
        Ok(completions)
    }

    /// Deletes a chunk of what dropped collections and indexes left behind: their
    /// documents, `_id` index and index entries, under ids no catalog record names any
    /// more (ids are never reused), so no reader looks for them.
    ///
    /// Dropping used to delete them in the dropping batch, which redb does one key at a
    /// time (about 23 us each here): dropping a collection of 187,000 documents held every
    /// writer for 8.7 s, and every reader that waited on the commit. Now a drop is a
    /// catalog change plus a `gc:` mark, and the committer thread purges between batches.
    /// The deletions are not logged: after a crash the marks are still there (from the
    /// checkpoint, or replayed) and purging starts over.
    fn purge_step(&mut self) {
        if self.state.failed.is_some() {
            self.gc_pending.store(false, Ordering::SeqCst);
            return;
        }
        let txn = match self.take_open() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "could not purge dropped entries");
                return;
            }
        };
        let r = (|| -> std::result::Result<bool, String> {
            let mut h = Handles::open(&txn).map_err(|e| e.message)?;
            let Some(mark) = h.first_gc_mark()? else {
                return Ok(false);
            };
            let Some((t, prefix)) = parse_gc_mark(&mark) else {
                // Not ours to understand: drop it rather than loop on it.
                h.apply(&Op::Del(TableId::Meta, mark.as_bytes()))?;
                return Ok(true);
            };
            if h.purge_prefix(t, &prefix, PURGE_CHUNK)? < PURGE_CHUNK {
                h.apply(&Op::Del(TableId::Meta, mark.as_bytes()))?;
            }
            Ok(true)
        })();
        match r {
            Ok(more) => {
                self.open = Some(txn);
                if more {
                    self.purged = true;
                    if self.pending_since.is_none() {
                        self.pending_since = Some(Instant::now());
                        self.has_pending.store(true, Ordering::SeqCst);
                    }
                } else {
                    self.gc_pending.store(false, Ordering::SeqCst);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not purge dropped entries");
                self.gc_pending.store(false, Ordering::SeqCst);
                self.rebuild_open(txn);
                self.gc_pending.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Deletes the segments a committed batch truncated.
    pub(crate) fn drop_segments(&mut self) {
        let Some(keep) = self.state.drop_before.take() else {
            return;
        };
        for (p, e) in self.log.remove_before(keep) {
            tracing::warn!(error = %e, path = %p.display(), "could not delete a truncated log segment");
        }
    }
}

/// The segments to drop while the log is over its size bound: the oldest sealed ones that
/// a checkpoint covers, that are older than the minimum retention and, on a replica set
/// member, that the consensus layer no longer needs (else it is asked to release them).
/// Returns the first segment kept and the newest clusterTime key dropped.
pub(crate) fn segment_cut(log: &Log, state: &mut WriterState) -> Option<(u64, u64)> {
    let limit = state.opts.oplog_size_bytes;
    if log.bytes() <= limit {
        return None;
    }
    let min_keep = state.opts.oplog_min_retention.map(|d| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(d).as_secs() as u32
    });
    let released = state
        .repl_shared
        .as_ref()
        .map(|r| r.released.load(Ordering::SeqCst));
    let segs = log.segs();
    let mut total: u64 = segs.iter().map(|s| s.end).sum();
    let mut cut = None;
    let mut wanted = 0;
    // Never the newest segment: it is being written, and it knows the last time.
    for s in &segs[..segs.len().saturating_sub(1)] {
        if total <= limit {
            break;
        }
        if s.first_lsn != 0 && s.last_lsn > state.checkpoint_lsn {
            state.checkpoint_wanted = true;
            break;
        }
        if min_keep.is_some_and(|t| oplog::key_ts(s.last_ts).time >= t) {
            break;
        }
        total -= s.end;
        if released.is_some_and(|r| s.last_lsn > r) {
            // Every segment the bounds would drop is asked for at once.
            wanted = s.last_lsn;
        } else if wanted == 0 {
            cut = Some((s.seq + 1, s.last_ts));
        }
    }
    if let (Some(shared), true) = (&state.repl_shared, wanted > 0) {
        shared.purge_wanted.fetch_max(wanted, Ordering::SeqCst);
    }
    cut
}

/// The redb tables of one write transaction, each opened when first used: opening all
/// seven for every batch cost 35k instructions, most batches touch two or three.
pub(crate) struct Handles<'t> {
    txn: &'t WriteTransaction,
    catalog: Option<Table<'t, &'static str, &'static [u8]>>,
    docs: Option<Table<'t, &'static [u8], &'static [u8]>>,
    records: Option<Table<'t, &'static [u8], &'static [u8]>>,
    ids: Option<Table<'t, &'static [u8], &'static [u8]>>,
    indexes: Option<Table<'t, &'static [u8], &'static [u8]>>,
    meta: Option<Table<'t, &'static str, &'static [u8]>>,
    sessions: Option<Table<'t, &'static [u8], &'static [u8]>>,
    preimages: Option<Table<'t, u64, &'static [u8]>>,
    txn_preimages: Option<Table<'t, (u64, u32), &'static [u8]>>,
}

/// The handle of one table, opened on first use.
macro_rules! table {
    ($name:ident, $def:ident, $k:ty) => {
        fn $name(&mut self) -> std::result::Result<&mut Table<'t, $k, &'static [u8]>, String> {
            if self.$name.is_none() {
                self.$name = Some(self.txn.open_table($def).map_err(|e| e.to_string())?);
            }
            Ok(self.$name.as_mut().expect("opened above"))
        }
    };
}

fn key_str(k: &[u8]) -> std::result::Result<&str, String> {
    std::str::from_utf8(k).map_err(|_| "redo: a text key is not UTF-8".to_string())
}

fn key_u64(k: &[u8]) -> std::result::Result<u64, String> {
    Ok(u64::from_be_bytes(
        k.try_into().map_err(|_| "redo: bad u64 key".to_string())?,
    ))
}

fn key_pair(k: &[u8]) -> std::result::Result<(u64, u32), String> {
    if k.len() != 12 {
        return Err("redo: bad pair key".into());
    }
    Ok((
        u64::from_be_bytes(k[..8].try_into().unwrap()),
        u32::from_be_bytes(k[8..].try_into().unwrap()),
    ))
}

pub(crate) fn pair_bytes(k: (u64, u32)) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&k.0.to_be_bytes());
    b[8..].copy_from_slice(&k.1.to_be_bytes());
    b
}

/// The META key marking the entries under `prefix` in table `t` for purging. Marks are
/// purged in key order, and documents' records come last, so that no `_id` or index entry
/// ever points at a purged record.
fn gc_mark(t: TableId, prefix: &[u8]) -> String {
    let rank = u8::from(t == TableId::Records);
    format!(
        "{GC_PREFIX}{rank}:{}:{}",
        t as u8,
        doc::keystring::hex_upper(prefix)
    )
}

fn parse_gc_mark(mark: &str) -> Option<(TableId, Vec<u8>)> {
    let (_rank, rest) = mark.strip_prefix(GC_PREFIX)?.split_once(':')?;
    let (t, hex) = rest.split_once(':')?;
    let t = TableId::from_u8(t.parse().ok()?)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let prefix = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((t, prefix))
}

fn map_bound<'a, T>(
    b: Bound<&'a [u8]>,
    f: impl Fn(&'a [u8]) -> std::result::Result<T, String>,
) -> std::result::Result<Bound<T>, String> {
    Ok(match b {
        Bound::Unbounded => Bound::Unbounded,
        Bound::Included(k) => Bound::Included(f(k)?),
        Bound::Excluded(k) => Bound::Excluded(f(k)?),
    })
}

impl<'t> Handles<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<Handles<'t>> {
        Ok(Handles {
            txn,
            catalog: None,
            docs: None,
            records: None,
            ids: None,
            indexes: None,
            meta: None,
            sessions: None,
            preimages: None,
            txn_preimages: None,
        })
    }

    table!(catalog, CATALOG, &'static str);
    table!(docs, OLD_DOCS, &'static [u8]);
    table!(records, RECORDS, &'static [u8]);
    table!(ids, IDS, &'static [u8]);
    table!(indexes, INDEXES, &'static [u8]);
    table!(meta, META, &'static str);
    table!(sessions, SESSIONS, &'static [u8]);
    table!(preimages, PREIMAGES, u64);
    table!(txn_preimages, TXN_PREIMAGES, (u64, u32));

    /// Makes one table change.
    pub(crate) fn apply(&mut self, op: &Op<'_>) -> std::result::Result<(), String> {
        let e = |e: redb::StorageError| e.to_string();
        match *op {
            Op::Put(t, k, v) => {
                match t {
                    TableId::Catalog => self.catalog()?.insert(key_str(k)?, v).map(drop),
                    TableId::Docs => self.docs()?.insert(k, v).map(drop),
                    TableId::Records => self.records()?.insert(k, v).map(drop),
                    TableId::Ids => self.ids()?.insert(k, v).map(drop),
                    TableId::Indexes => self.indexes()?.insert(k, v).map(drop),
                    TableId::Meta => self.meta()?.insert(key_str(k)?, v).map(drop),
                    TableId::Sessions => self.sessions()?.insert(k, v).map(drop),
                    TableId::Preimages => self.preimages()?.insert(key_u64(k)?, v).map(drop),
                    TableId::TxnPreimages => {
                        self.txn_preimages()?.insert(key_pair(k)?, v).map(drop)
                    }
                }
                .map_err(e)?;
            }
            Op::Del(t, k) => {
                match t {
                    TableId::Catalog => self.catalog()?.remove(key_str(k)?).map(drop),
                    TableId::Docs => self.docs()?.remove(k).map(drop),
                    TableId::Records => self.records()?.remove(k).map(drop),
                    TableId::Ids => self.ids()?.remove(k).map(drop),
                    TableId::Indexes => self.indexes()?.remove(k).map(drop),
                    TableId::Meta => self.meta()?.remove(key_str(k)?).map(drop),
                    TableId::Sessions => self.sessions()?.remove(k).map(drop),
                    TableId::Preimages => self.preimages()?.remove(key_u64(k)?).map(drop),
                    TableId::TxnPreimages => self.txn_preimages()?.remove(key_pair(k)?).map(drop),
                }
                .map_err(e)?;
            }
            Op::DelRange(t, lo, hi) => {
                match t {
                    TableId::Catalog => self.catalog()?.retain_in::<&str, _>(
                        (map_bound(lo, key_str)?, map_bound(hi, key_str)?),
                        |_, _| false,
                    ),
                    TableId::Docs => self.docs()?.retain_in::<&[u8], _>((lo, hi), |_, _| false),
                    TableId::Records => self
                        .records()?
                        .retain_in::<&[u8], _>((lo, hi), |_, _| false),
                    TableId::Ids => self.ids()?.retain_in::<&[u8], _>((lo, hi), |_, _| false),
                    TableId::Indexes => self
                        .indexes()?
                        .retain_in::<&[u8], _>((lo, hi), |_, _| false),
                    TableId::Meta => self.meta()?.retain_in::<&str, _>(
                        (map_bound(lo, key_str)?, map_bound(hi, key_str)?),
                        |_, _| false,
                    ),
                    TableId::Sessions => self
                        .sessions()?
                        .retain_in::<&[u8], _>((lo, hi), |_, _| false),
                    TableId::Preimages => self.preimages()?.retain_in::<u64, _>(
                        (map_bound(lo, key_u64)?, map_bound(hi, key_u64)?),
                        |_, _| false,
                    ),
                    TableId::TxnPreimages => self.txn_preimages()?.retain_in::<(u64, u32), _>(
                        (map_bound(lo, key_pair)?, map_bound(hi, key_pair)?),
                        |_, _| false,
                    ),
                }
                .map_err(e)?;
            }
        }
        Ok(())
    }

    /// The first `gc:` mark, if any.
    fn first_gc_mark(&mut self) -> std::result::Result<Option<String>, String> {
        let e = |e: redb::StorageError| e.to_string();
        let hi = "gc;"; // the key after every "gc:..." one
        let mut it = self.meta()?.range::<&str>(GC_PREFIX..hi).map_err(e)?;
        Ok(match it.next() {
            Some(r) => Some(r.map_err(e)?.0.value().to_string()),
            None => None,
        })
    }

    /// Deletes up to `max` entries whose keys start with `prefix`; how many it deleted.
    fn purge_prefix(
        &mut self,
        t: TableId,
        prefix: &[u8],
        max: usize,
    ) -> std::result::Result<usize, String> {
        let e = |e: redb::StorageError| e.to_string();
        let table = match t {
            TableId::Records => self.records()?,
            TableId::Ids => self.ids()?,
            TableId::Indexes => self.indexes()?,
            other => return Err(format!("nothing to purge in {other:?}")),
        };
        let (lo, hi) = crate::prefix_range(prefix);
        let keys = table
            .range::<&[u8]>((Bound::Included(lo.as_slice()), hi_bound(&hi)))
            .map_err(e)?
            .take(max)
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(e)?;
        for k in &keys {
            table.remove(k.as_slice()).map_err(e)?;
        }
        Ok(keys.len())
    }

    /// The value under `key` in a byte-keyed or text-keyed table, copied out.
    fn get(&mut self, t: TableId, key: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
        let copy = |v: Option<redb::AccessGuard<'_, &'static [u8]>>| v.map(|v| v.value().to_vec());
        let e = |e: redb::StorageError| e.to_string();
        Ok(match t {
            TableId::Catalog => copy(self.catalog()?.get(key_str(key)?).map_err(e)?),
            TableId::Meta => copy(self.meta()?.get(key_str(key)?).map_err(e)?),
            TableId::Docs => copy(self.docs()?.get(key).map_err(e)?),
            TableId::Records => copy(self.records()?.get(key).map_err(e)?),
            TableId::Ids => copy(self.ids()?.get(key).map_err(e)?),
            TableId::Indexes => copy(self.indexes()?.get(key).map_err(e)?),
            TableId::Sessions => copy(self.sessions()?.get(key).map_err(e)?),
            TableId::Preimages => copy(self.preimages()?.get(key_u64(key)?).map_err(e)?),
            TableId::TxnPreimages => copy(self.txn_preimages()?.get(key_pair(key)?).map_err(e)?),
        })
    }

    /// On a replica set member: records the log id `(lsn, term, leader)` of the last frame
    /// the tables hold (read back by `Store::repl_applied_stored`).
    pub(crate) fn set_repl_applied(
        &mut self,
        (lsn, term, leader): (u64, u32, u16),
    ) -> std::result::Result<(), String> {
        let mut b = [0u8; 14];
        b[..8].copy_from_slice(&lsn.to_be_bytes());
        b[8..12].copy_from_slice(&term.to_be_bytes());
        b[12..].copy_from_slice(&leader.to_be_bytes());
        self.meta()?
            .insert(crate::META_REPL_APPLIED, b.as_slice())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Records the lsn and clusterTime the tables hold (at checkpoints and at the end of
    /// replay: the lsn a restart replays after).
    pub(crate) fn set_applied(&mut self, lsn: u64, ts: u64) -> std::result::Result<(), String> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lsn.to_be_bytes());
        b[8..].copy_from_slice(&ts.to_be_bytes());
        self.meta()?
            .insert(META_APPLIED, b.as_slice())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Decodes the applied `(lsn, ts key)` record.
pub(crate) fn parse_applied(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..].try_into().ok()?),
    ))
}

/// Replays the log after the tables' checkpoint; returns what it replayed, the report
/// of the scan, and the applied `(lsn, ts)` afterwards.
///
/// # Errors
/// Damage in the log, or storage failures (as messages for start-up).
pub(crate) fn replay(
    db: &Database,
    log_dir: &std::path::Path,
    applied: (u64, u64),
    upto: u64,
) -> std::result::Result<(u64, crate::wal::scan::ScanReport, (u64, u64)), String> {
    use crate::wal::scan::{Mode, Scanner};
    let mut sc = Scanner::new(log_dir, Mode::Recover, applied.0)?;
    let mut done = applied;
    let mut replayed = 0u64;
    let mut more = true;
    while more {
        let mut txn = db.begin_write().map_err(|e| e.to_string())?;
        let _ = txn.set_durability(Durability::None);
        let mut bytes = 0usize;
        let mut any = false;
        {
            let mut h = Handles::open(&txn).map_err(|e| e.message)?;
            loop {
                let Some((hdr, _, redo_bytes)) = sc.next_frame()? else {
                    more = false;
                    break;
                };
                if hdr.lsn <= applied.0 || hdr.lsn > upto {
                    continue;
                }
                for op in redo::ops(&redo_bytes) {
                    let op = op.map_err(|why| {
                        format!("the write-ahead log is damaged: lsn {}: {why}", hdr.lsn)
                    })?;
                    h.apply(&op)
                        .map_err(|e| format!("replaying lsn {}: {e}", hdr.lsn))?;
                }
                done = (hdr.lsn, hdr.last_ts);
                replayed += 1;
                any = true;
                bytes += redo_bytes.len();
                if bytes >= REPLAY_TXN_BYTES {
                    break;
                }
            }
            if any {
                h.set_applied(done.0, done.1)?;
            }
        }
        if any {
            txn.commit().map_err(|e| e.to_string())?;
        } else {
            let _ = txn.abort();
        }
    }
    let rep = sc.finish()?;
    if replayed > 0 {
        let mut txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.set_quick_repair(true);
        txn.commit().map_err(|e| e.to_string())?;
        crate::wal::write_checkpoint(log_dir, done.0, done.1).map_err(|e| e.to_string())?;
    }
    Ok((replayed, rep, done))
}

/// The commit pipeline's backend of [`WriteCtx`]: the tables of its redb transaction,
/// recording every change for the log.
pub(crate) struct Tables<'t> {
    h: Handles<'t>,
    state: &'t mut WriterState,
    log: &'t Log,
    /// A storage failure inside a job: the whole batch must be abandoned.
    pub(crate) failed: Option<MongoError>,
}

impl<'t> Tables<'t> {
    fn open(
        txn: &'t WriteTransaction,
        state: &'t mut WriterState,
        log: &'t Log,
    ) -> Result<Tables<'t>> {
        Ok(Tables {
            h: Handles::open(txn)?,
            state,
            log,
            failed: None,
        })
    }

    /// Maps a storage error, remembering that the batch must not commit.
    fn fail(&mut self, e: impl std::fmt::Display) -> MongoError {
        let e = storage_err(e);
        self.failed = Some(e.clone());
        e
    }

    /// Makes a table change and records it.
    fn change(&mut self, op: Op<'_>) -> Result<()> {
        match op {
            Op::Put(TableId::Catalog, k, _) | Op::Del(TableId::Catalog, k) => {
                if let Ok(name) = std::str::from_utf8(k) {
                    self.state.catalog_cache.remove(name);
                }
            }
            Op::DelRange(TableId::Catalog, ..) => self.state.catalog_cache.clear(),
            _ => {}
        }
        match op {
            Op::Put(t, k, v) => {
                self.state.redo.put(t, k, v);
                self.state.building.put(t, k, v);
            }
            Op::Del(t, k) => {
                self.state.redo.del(t, k);
                self.state.building.del(t, k);
            }
            Op::DelRange(t, lo, hi) => {
                self.state.redo.del_range(t, lo, hi);
                self.state.range_op = true;
            }
        }
        let r = self.h.apply(&op);
        r.map_err(|e| self.fail(e))
    }

    fn finish(&mut self) -> Result<()> {
        self.plan_truncation()?;
        let next_id = self.state.next_id.load(Ordering::SeqCst);
        if next_id != self.state.stored_next_id {
            // Only recovery reads the stored next id (the pipeline keeps it in memory): the
            // batch logs it for replay, and the next checkpoint stores it, rather than every
            // batch updating a table for it (a B-tree insert and a table opened, about 17k
            // instructions of a single-document insert's batch).
            let next = next_id.to_be_bytes();
            self.state
                .redo
                .put(TableId::Meta, META_NEXT_ID.as_bytes(), &next);
            self.state.stored_next_id = next_id;
        }
        Ok(())
    }

    /// Chooses the oldest segments to drop while the log is over its size bound (see
    /// [`segment_cut`]). Their pre-images go in this batch; the files go once it commits.
    fn plan_truncation(&mut self) -> Result<()> {
        let Some((keep, upto)) = segment_cut(self.log, self.state) else {
            return Ok(());
        };
        self.state.drop_before = Some(keep);
        let hi = upto.to_be_bytes();
        self.change(Op::DelRange(
            TableId::Preimages,
            Bound::Unbounded,
            Bound::Included(&hi),
        ))?;
        let hi = pair_bytes((upto, u32::MAX));
        self.change(Op::DelRange(
            TableId::TxnPreimages,
            Bound::Unbounded,
            Bound::Included(&hi),
        ))
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
        let name = ns.full();
        if let Some(m) = self.state.catalog_cache.get(&name) {
            return Ok(m.clone());
        }
        let r = self.h.get(TableId::Catalog, name.as_bytes());
        let m = match r {
            Ok(Some(b)) => Some(CollectionMeta::from_bytes(&b)?),
            Ok(None) => None,
            Err(e) => return Err(self.fail(e)),
        };
        self.state.catalog_cache.insert(name, m.clone());
        Ok(m)
    }

    /// All collections, or those of one database.
    ///
    /// # Errors
    /// On storage failure.
    pub fn collections(&mut self, db: Option<&str>) -> Result<Vec<CollectionMeta>> {
        let r = self
            .h
            .catalog()
            .and_then(|t| list_catalog(t, db).map_err(|e| e.message));
        r.map_err(|e| self.fail(e))
    }

    /// Writes a catalog record.
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        let name = meta.ns.full();
        self.touch(txn::T_CATALOG, name.as_bytes());
        let b = meta.to_bytes();
        self.change(Op::Put(TableId::Catalog, name.as_bytes(), &b))
    }

    /// Removes a catalog record, its documents and its index entries.
    ///
    /// # Errors
    /// On storage failure.
    pub fn remove_collection(&mut self, meta: &CollectionMeta) -> Result<()> {
        let name = meta.ns.full();
        self.touch(txn::T_CATALOG, name.as_bytes());
        self.change(Op::Del(TableId::Catalog, name.as_bytes()))?;
        self.garbage(TableId::Records, &meta.id.to_be_bytes())?;
        self.garbage(TableId::Ids, &meta.id.to_be_bytes())?;
        for ix in &meta.indexes {
            self.remove_index_entries(ix.id)?;
        }
        if meta.capped().is_some() {
            let key = format!("capped:{}", meta.id);
            self.change(Op::Del(TableId::Meta, key.as_bytes()))?;
        }
        Ok(())
    }

    /// Marks the entries under a dropped id for the committer thread to purge (see
    /// [`Writer::purge_step`]).
    fn garbage(&mut self, t: TableId, prefix: &[u8]) -> Result<()> {
        let mark = gc_mark(t, prefix);
        self.state.gc_wanted = true;
        self.change(Op::Put(TableId::Meta, mark.as_bytes(), &[]))
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
        let name = meta.ns.full();
        self.touch(txn::T_CATALOG, name.as_bytes());
        self.change(Op::Del(TableId::Catalog, name.as_bytes()))?;
        let mut m = meta.clone();
        m.ns = to.clone();
        self.put_collection(&m)?;
        Ok(m)
    }

    /// Removes every entry of an index.
    ///
    /// # Errors
    /// On storage failure.
    pub fn remove_index_entries(&mut self, index_id: u64) -> Result<()> {
        self.garbage(TableId::Indexes, &index_id.to_be_bytes())
    }

    /// A document by collection id and `_id` key.
    ///
    /// # Errors
    /// On storage failure.
    pub fn get_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<Option<Document>> {
        let Some(rid) = self.stored_rid(&doc_key(coll_id, id_key))? else {
            return Ok(None);
        };
        let r = self.h.get(TableId::Records, &record_key(coll_id, rid));
        match r {
            Ok(Some(b)) => record_doc(&b).map(Some),
            Ok(None) => Err(MongoError::internal("an _id index entry has no record")),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Whether a document is stored under this `_id` key.
    ///
    /// # Errors
    /// On storage failure.
    pub fn has_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<bool> {
        Ok(self.stored_rid(&doc_key(coll_id, id_key))?.is_some())
    }

    /// Stores a document the caller knows is new (see `WriteCtx::put_new_doc`).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_new_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        let k = doc_key(coll_id, id_key);
        self.touch(txn::T_DOC, &k);
        self.insert_at(&k, bytes)
    }

    /// The record id of the document under a full document key.
    fn stored_rid(&mut self, k: &[u8]) -> Result<Option<u64>> {
        let r: std::result::Result<Option<[u8; 8]>, String> = (|| {
            let ids = self.h.ids()?;
            let got = ids.get(k).map_err(|e| e.to_string())?;
            Ok(got.and_then(|v| v.value().try_into().ok()))
        })();
        match r {
            Ok(v) => Ok(v.map(u64::from_be_bytes)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Stores a document (insert or overwrite).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_doc(&mut self, coll_id: u64, id_key: &[u8], bytes: &[u8]) -> Result<()> {
        self.put_doc_at(&doc_key(coll_id, id_key), bytes)
    }

    /// Stores a document under its full key: an overwrite keeps its record, an insert
    /// takes the next record id (the end of natural order).
    fn put_doc_at(&mut self, k: &[u8], bytes: &[u8]) -> Result<()> {
        self.touch(txn::T_DOC, k);
        match self.stored_rid(k)? {
            Some(rid) => self.put_record(k, rid, bytes),
            None => self.insert_at(k, bytes),
        }
    }

    /// Stores a new document under full key `k`, as the next record (the end of natural
    /// order).
    fn insert_at(&mut self, k: &[u8], bytes: &[u8]) -> Result<()> {
        let rid = self.new_id();
        self.change(Op::Put(TableId::Ids, k, &rid.to_be_bytes()))?;
        self.put_record(k, rid, bytes)
    }

    /// Writes the record `rid` of the document under full key `k`.
    fn put_record(&mut self, k: &[u8], rid: u64, bytes: &[u8]) -> Result<()> {
        self.change(Op::Put(
            TableId::Records,
            &record_key(coll_of(k), rid),
            &record_value(&k[8..], bytes),
        ))
    }

    /// Deletes a document.
    ///
    /// # Errors
    /// On storage failure.
    pub fn delete_doc(&mut self, coll_id: u64, id_key: &[u8]) -> Result<()> {
        self.delete_doc_at(&doc_key(coll_id, id_key))
    }

    fn delete_doc_at(&mut self, k: &[u8]) -> Result<()> {
        self.touch(txn::T_DOC, k);
        if let Some(rid) = self.stored_rid(k)? {
            self.change(Op::Del(TableId::Records, &record_key(coll_of(k), rid)))?;
            self.change(Op::Del(TableId::Ids, k))?;
        }
        Ok(())
    }

    /// Every document of a collection, in natural (insertion) order, as `(id_key, doc)`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn scan_docs(&mut self, coll_id: u64) -> Result<Vec<(Vec<u8>, Document)>> {
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        let r: std::result::Result<Vec<Vec<u8>>, String> = (|| {
            self.h
                .records()?
                .range::<&[u8]>((Bound::Included(lo.as_slice()), hi_bound(&hi)))
                .map_err(|e| e.to_string())?
                .map(|item| item.map(|(_, v)| v.value().to_vec()))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| e.to_string())
        })();
        let rows = r.map_err(|e| self.fail(e))?;
        rows.iter().map(|v| decode_record(v)).collect()
    }

    /// A capped collection's document count and bytes, kept in the meta table as its
    /// writes change them (`capped:<id>`).
    ///
    /// # Errors
    /// On storage failure.
    pub fn capped_usage(&mut self, coll_id: u64) -> Result<(u64, u64)> {
        let key = format!("capped:{coll_id}");
        let r = self.h.get(TableId::Meta, key.as_bytes());
        match r {
            Ok(Some(v)) if v.len() == 16 => Ok((
                u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
            )),
            Ok(_) => Ok((0, 0)),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Adds to a capped collection's count and bytes (see [`Tables::capped_usage`]).
    ///
    /// # Errors
    /// On storage failure.
    pub fn add_capped_usage(&mut self, coll_id: u64, count: i64, bytes: i64) -> Result<()> {
        let (c, b) = self.capped_usage(coll_id)?;
        let c = c.saturating_add_signed(count);
        let b = b.saturating_add_signed(bytes);
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&c.to_be_bytes());
        v[8..].copy_from_slice(&b.to_be_bytes());
        let key = format!("capped:{coll_id}");
        self.change(Op::Put(TableId::Meta, key.as_bytes(), &v))
    }

    /// The first document of a collection in natural order: a capped collection's oldest.
    ///
    /// # Errors
    /// On storage failure.
    pub fn oldest_doc(&mut self, coll_id: u64) -> Result<Option<Document>> {
        let (lo, hi) = prefix_range(&coll_id.to_be_bytes());
        let r: std::result::Result<Option<Vec<u8>>, String> = (|| {
            let mut range = self
                .h
                .records()?
                .range::<&[u8]>((Bound::Included(lo.as_slice()), hi_bound(&hi)))
                .map_err(|e| e.to_string())?;
            match range.next() {
                Some(item) => Ok(Some(item.map_err(|e| e.to_string())?.1.value().to_vec())),
                None => Ok(None),
            }
        })();
        let row = r.map_err(|e| self.fail(e))?;
        row.map(|v| decode_record(&v).map(|(_, d)| d)).transpose()
    }

    /// The `_id` key stored under an index key, if any.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let r = self.h.get(TableId::Indexes, key);
        r.map_err(|e| self.fail(e))
    }

    /// Adds an index entry.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_put(&mut self, key: &[u8], id_key: &[u8]) -> Result<()> {
        self.touch(txn::T_INDEX, key);
        self.change(Op::Put(TableId::Indexes, key, id_key))
    }

    /// Removes an index entry.
    ///
    /// # Errors
    /// On storage failure.
    pub fn index_remove(&mut self, key: &[u8]) -> Result<()> {
        self.touch(txn::T_INDEX, key);
        self.change(Op::Del(TableId::Indexes, key))
    }

    /// Appends an oplog entry, assigning its clusterTime and wall time.
    ///
    /// # Errors
    /// Never, today; kept fallible for the callers' sake.
    pub fn log(&mut self, mut entry: OplogEntry) -> Result<Timestamp> {
        let ts = self.state.next_ts();
        entry.ts = ts;
        entry.wall = DateTime::now();
        let bytes = entry.to_bytes();
        self.state.frame.push_entry(oplog::ts_key(ts), &bytes);
        Ok(ts)
    }

    /// Appends several oplog entries at one clusterTime (a transaction's operations),
    /// each distinguished by its `txn_op_index`.
    ///
    /// # Errors
    /// Never, today; kept fallible for the callers' sake.
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
        self.state.frame.push_entry(oplog::ts_key(ts), &bytes);
        Ok(ts)
    }

    /// Applies a committing transaction's overlay and logs its operations at one
    /// clusterTime; `None` when it wrote nothing.
    pub(crate) fn apply_txn(
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
            match v {
                Some(b) => self.change(Op::Put(TableId::Catalog, name.as_bytes(), b))?,
                None => self.change(Op::Del(TableId::Catalog, name.as_bytes()))?,
            }
        }
        for (k, v) in &ov.docs {
            // An update keeps its document's record; an insert takes a record id now.
            match v {
                Some(b) => self.put_doc_at(k, b)?,
                None => self.delete_doc_at(k)?,
            }
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
            let k = pair_bytes((oplog::ts_key(ts), *i));
            self.change(Op::Put(TableId::TxnPreimages, &k, &b))?;
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
        let k = oplog::ts_key(ts).to_be_bytes();
        self.change(Op::Put(TableId::Preimages, &k, &b))
    }

    /// Removes the pre-images of writes made before `cutoff` (seconds since the epoch).
    ///
    /// # Errors
    /// On storage failure.
    pub fn expire_preimages_before(&mut self, cutoff: u32) -> Result<()> {
        let hi = u64::from(cutoff) << 32;
        let k = hi.to_be_bytes();
        self.change(Op::DelRange(
            TableId::Preimages,
            Bound::Unbounded,
            Bound::Excluded(&k),
        ))?;
        let k = pair_bytes((hi, 0));
        self.change(Op::DelRange(
            TableId::TxnPreimages,
            Bound::Unbounded,
            Bound::Excluded(&k),
        ))
    }

    /// Stores a named settings document (cluster parameters).
    ///
    /// # Errors
    /// On storage failure.
    pub fn put_setting(&mut self, name: &str, value: &Document) -> Result<()> {
        let b = doc::encode::encode(value).map_err(|e| MongoError::internal(e.to_string()))?;
        let key = format!("setting:{name}");
        self.change(Op::Put(TableId::Meta, key.as_bytes(), &b))
    }

    /// The session record stored under `key`.
    ///
    /// # Errors
    /// On storage failure.
    pub fn session_record(&mut self, key: &[u8]) -> Result<Option<Document>> {
        let r = self.h.get(TableId::Sessions, key);
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
        let b = doc::encode::encode(record).map_err(|e| MongoError::internal(e.to_string()))?;
        self.change(Op::Put(TableId::Sessions, key, &b))
    }
}

/// How long a checkpoint may wait by default.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
