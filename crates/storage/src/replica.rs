//! The commit pipeline when the log is a replica set's replicated (Raft) log.
//!
//! The consensus layer (the `repl` crate) owns the order of the log; the pipeline owns the
//! files and the tables. They meet in four messages, all run by the pipeline's leader in
//! the order they arrive, so that every write to the log and the tables stays on one
//! thread:
//!
//! - a batch run on the primary is proposed (its frame handed to [`Proposer`]) and parked;
//! - [`Msg::Append`]: frames the consensus layer placed in the log (with their lsn, the
//!   Raft index + 1, and term): written and fdatasynced. A parked batch whose frame this is
//!   is then published to readers and its writers are answered (`w: 1`);
//! - [`Msg::Apply`]: frames a majority holds: the primary's own batches are already in
//!   the tables; anything else (a secondary's frames, a new primary's older entries, Raft's
//!   own entries) is applied from its redo. The majority point moves, and change streams
//!   see the entries;
//! - [`Msg::Truncate`]: frames a new primary does not have: this node's batches that never
//!   reached a majority are rolled back, out of the tables and the log.
//!
//! Key decision: the tables never hold, in a redb commit, a batch that a majority does not
//! hold. The primary runs batches ahead of the majority in the open write transaction (as
//! every pending batch already is), commits it in redb only when all of them are
//! majority-committed, and rolls back by beginning it again from the redo of the batches
//! it keeps. A checkpoint therefore never holds anything a failover could take back.
//!
//! [`Msg::Append`]: crate::pipeline::Msg::Append
//! [`Msg::Apply`]: crate::pipeline::Msg::Apply
//! [`Msg::Truncate`]: crate::pipeline::Msg::Truncate

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::ReadableDatabase;

use bson::Timestamp;
use errors::{ErrorCode, MongoError, Result};
use tokio::sync::watch;

use crate::image::ImagePos;
use crate::oplog;
use crate::pending::Building;
use crate::pipeline::{Completion, Handles, Job, Writer};
use crate::redo::{self, Op, TableId};
use crate::wal::frame::{self, FRAME_HEADER_BYTES, FrameHeader, Parsed};
use crate::{META_NEXT_ID, storage_err};

/// One frame of the replicated log: its lsn (Raft index + 1) and its whole bytes, stamped
/// with that lsn and its term.
#[derive(Debug, Clone)]
pub struct ReplFrame {
    pub lsn: u64,
    pub bytes: Arc<Vec<u8>>,
    /// The proposal number, when this node's pipeline proposed it (since it started).
    pub proposal: Option<u64>,
}

impl ReplFrame {
    /// The frame's header.
    ///
    /// # Errors
    /// When the bytes are not a frame.
    pub fn header(&self) -> Result<FrameHeader> {
        header_of(&self.bytes)
    }
}

/// The header of a whole frame.
///
/// # Errors
/// When the bytes are not a frame.
pub fn header_of(bytes: &[u8]) -> Result<FrameHeader> {
    let Some(hb) = bytes.get(..FRAME_HEADER_BYTES) else {
        return Err(MongoError::internal("replicated frame cut short"));
    };
    match frame::parse_header(hb.try_into().unwrap()) {
        Parsed::Header(h) if bytes.len() >= h.total_len as usize => Ok(h),
        _ => Err(MongoError::internal("not a replicated frame")),
    }
}

/// The parts of a whole frame: entries and redo sections.
fn sections<'a>(bytes: &'a [u8], h: &FrameHeader) -> (&'a [u8], &'a [u8]) {
    let e_end = FRAME_HEADER_BYTES + h.entries_len as usize;
    (
        &bytes[FRAME_HEADER_BYTES..e_end],
        &bytes[e_end..h.total_len as usize],
    )
}

/// Where the pipeline hands the frames of the batches it runs as primary.
pub trait Proposer: Send + Sync {
    /// Queues `frame` for the replicated log. Proposals must reach the log in the order
    /// they are made; one that cannot be (no longer primary) is reported back with
    /// [`crate::Store::repl_rejected`].
    fn propose(&self, proposal: u64, frame: Vec<u8>);
}

/// Called once frames are durable (or could not be written).
pub type IoDone = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// A batch run and proposed, waiting for its frame to be placed in the log.
struct Parked {
    proposal: u64,
    completions: Vec<Completion>,
    building: Building,
    redo: Vec<u8>,
    touched: Vec<Vec<u8>>,
    gc_wanted: bool,
    range_op: bool,
    /// The writer's clusterTime and next id before the batch.
    before: Timestamp,
}

/// What replication shares with the rest of the store.
pub struct ReplShared {
    /// Whether this node may take writes (primary, caught up): set by the consensus layer.
    pub writable: AtomicBool,
    /// The newest majority-committed clusterTime.
    pub majority: watch::Sender<Timestamp>,
    /// Bumped by every truncation of the log (a `w: "majority"` waiter then checks that
    /// its write is still there).
    pub truncations: AtomicU64,
    /// The last frame applied as majority-committed: `(lsn, term, leader)`.
    pub applied: std::sync::Mutex<(u64, u32, u16)>,
    /// This member's last batch in its log: `(lsn, term)` (what a write concern waits for).
    pub last_own: std::sync::Mutex<(u64, u32)>,
    /// The consensus layer purged the log's frames up to this lsn (it sends an image to a
    /// member that would need them).
    pub purged: AtomicU64,
    /// ... and no longer reads them, even for a request made before the purge: the
    /// oplog's bounds may drop them (it follows `purged` after a grace period).
    pub released: AtomicU64,
    /// The oplog's bounds want the frames up to this lsn gone: the consensus layer takes
    /// an image and releases them (then `purged` follows).
    pub purge_wanted: AtomicU64,
}

/// The pipeline's replication state.
pub(crate) struct ReplState {
    pub proposer: Arc<dyn Proposer>,
    pub shared: Arc<ReplShared>,
    next_proposal: u64,
    parked: VecDeque<Parked>,
    /// Lsns of this node's batches the tables hold before a majority does.
    spec: BTreeSet<u64>,
    /// The clusterTime key of the last frame applied as majority-committed.
    applied_ts: u64,
    /// The frame the last redb commit holds the tables as of (what an image is taken at).
    pub(crate) image_at: ImagePos,
}

impl ReplState {
    pub(crate) fn new(
        proposer: Arc<dyn Proposer>,
        shared: Arc<ReplShared>,
        image_at: ImagePos,
    ) -> ReplState {
        ReplState {
            proposer,
            shared,
            next_proposal: 1,
            parked: VecDeque::new(),
            spec: BTreeSet::new(),
            applied_ts: image_at.ts,
            image_at,
        }
    }

    /// The position of the last frame applied as majority-committed.
    pub(crate) fn applied_pos(&self) -> ImagePos {
        let (lsn, term, leader) = *self.shared.applied.lock().unwrap();
        ImagePos {
            lsn,
            term,
            leader,
            ts: self.applied_ts,
            next_id: 0,
        }
    }

    /// Whether the tables hold nothing a majority does not (so redb may commit them).
    pub(crate) fn settled(&self) -> bool {
        self.parked.is_empty() && self.spec.is_empty()
    }
}

fn not_primary() -> MongoError {
    MongoError::new(ErrorCode::NotWritablePrimary, "not primary")
}

fn repl_state_changed() -> MongoError {
    MongoError::new(
        ErrorCode::InterruptedDueToReplStateChange,
        "operation was interrupted because of a replica set state change",
    )
}

impl Writer {
    fn repl(&mut self) -> &mut ReplState {
        self.repl.as_mut().expect("replicated pipeline")
    }

    /// Runs a batch as primary: its changes go into the open transaction, its frame to the
    /// consensus layer; its writers are answered once the frame is in the log here.
    pub(crate) fn batch_replicated(&mut self, batch: Vec<Job>) {
        if !self.repl().shared.writable.load(Ordering::SeqCst) {
            // Not primary (any more): the jobs never run.
            drop(batch);
            return;
        }
        let before = self.state.last_ts;
        let prior_ts = oplog::ts_key(before);
        let (txn, completions) = match self.run_jobs(batch) {
            Ok(r) => r,
            Err((e, completions)) => {
                self.state.last_ts = before;
                self.state.catalog_cache.clear();
                self.state.touched.clear();
                self.state.drop_before = None;
                for c in completions {
                    c(Err(e.clone()));
                }
                return;
            }
        };
        self.open = Some(txn);
        // Segments the batch truncated (their pre-images go with it) were released by the
        // consensus layer: a rollback of the batch would not need them.
        self.drop_segments();
        let s = &mut self.state;
        let touched = std::mem::take(&mut s.touched);
        if s.redo.is_empty() && !s.frame.has_entries() {
            for c in completions {
                c(Ok(()));
            }
            return;
        }
        let last_ts = oplog::ts_key(s.last_ts);
        // The lsn is the consensus layer's to give; the frame is stamped again there.
        let (bytes, _) = s.frame.finish(0, prior_ts, last_ts, s.redo.bytes());
        let bytes = bytes.to_vec();
        let parked = Parked {
            proposal: 0,
            completions,
            building: std::mem::take(&mut s.building),
            redo: s.redo.bytes().to_vec(),
            touched,
            gc_wanted: std::mem::take(&mut s.gc_wanted),
            range_op: s.range_op,
            before,
        };
        let r = self.repl();
        let proposal = r.next_proposal;
        r.next_proposal += 1;
        r.parked.push_back(Parked { proposal, ..parked });
        r.proposer.propose(proposal, bytes);
    }

    /// Writes frames the consensus layer placed in the log; answers the writers of this
    /// node's batches among them.
    pub(crate) fn repl_append(&mut self, frames: Vec<ReplFrame>, done: crate::replica::IoDone) {
        let mut result = Ok(());
        for f in &frames {
            let h = match f.header() {
                Ok(h) => h,
                Err(e) => {
                    result = Err(std::io::Error::other(e.message));
                    break;
                }
            };
            if f.lsn != self.state.next_lsn {
                result = Err(std::io::Error::other(format!(
                    "replicated frame {} does not follow the log's last frame {}",
                    f.lsn,
                    self.state.next_lsn - 1
                )));
                break;
            }
            let len = h.total_len as usize;
            let padded = frame::align(len as u64) as usize;
            let r = if f.bytes.len() >= padded {
                self.lw.append(&f.bytes[..padded], &h)
            } else {
                let mut b = f.bytes[..len].to_vec();
                b.resize(padded, 0);
                self.lw.append(&b, &h)
            };
            if let Err(e) = r {
                let msg = format!(
                    "the write-ahead log could not be written ({e}); no more writes are accepted: restart the server"
                );
                self.state.failed = Some(MongoError::internal(msg.clone()));
                result = Err(std::io::Error::other(msg));
                break;
            }
            self.state.next_lsn = f.lsn + 1;
            self.state.since_checkpoint += len as u64;
            let own = f.proposal.is_some()
                && self
                    .repl()
                    .parked
                    .front()
                    .is_some_and(|p| Some(p.proposal) == f.proposal);
            if own {
                let p = self.repl().parked.pop_front().unwrap();
                self.publish_own(f, &h, p);
            }
        }
        done(result);
    }

    /// A batch of this node's is in the log here: readers see it, its writers hear.
    fn publish_own(&mut self, f: &ReplFrame, h: &FrameHeader, mut p: Parked) {
        self.repl().spec.insert(f.lsn);
        *self.repl().shared.last_own.lock().unwrap() = (f.lsn, h.stamp.term);
        self.pending_redo.push((f.lsn, std::mem::take(&mut p.redo)));
        self.pending_bytes += p.building.bytes + self.pending_redo.last().unwrap().1.len();
        {
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !p.range_op {
                // A range deletion (pre-images only) shows once redb commits the batch;
                // until then readers may still find the pre-images it deletes.
                let layer = p.building.publish(vis.pending.take(), h.last_ts);
                vis.pending = Some(layer);
            }
            vis.ts = oplog::key_ts(h.last_ts);
        }
        if self.pending_since.is_none() {
            self.pending_since = Some(std::time::Instant::now());
            self.has_pending.store(true, Ordering::SeqCst);
        }
        if p.gc_wanted {
            self.gc_pending.store(true, Ordering::SeqCst);
        }
        let (entries, _) = sections(&f.bytes, h);
        self.log
            .push_tail(frame::entries(entries).filter_map(std::result::Result::ok));
        self.state
            .tracker
            .lock()
            .unwrap()
            .record(std::mem::take(&mut p.touched), h.last_ts);
        self.committed.send_replace(oplog::key_ts(h.last_ts));
        for c in p.completions {
            c(Ok(()));
        }
    }

    /// Frames a majority holds: applies those the tables do not hold yet, and moves the
    /// majority point.
    pub(crate) fn repl_apply(&mut self, frames: Vec<ReplFrame>, done: Completion) {
        let mut result = Ok(());
        for f in &frames {
            let h = match f.header() {
                Ok(h) => h,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if !self.repl().spec.remove(&f.lsn) {
                if let Err(e) = self.apply_frame(f, &h) {
                    tracing::error!(error = %e, lsn = f.lsn, "could not apply a replicated entry");
                    self.state.failed = Some(e.clone());
                    result = Err(e);
                    break;
                }
            }
            self.state.tables_lsn = f.lsn;
            self.repl().applied_ts = h.last_ts;
            let shared = self.repl().shared.clone();
            *shared.applied.lock().unwrap() = (f.lsn, h.stamp.term, h.stamp.leader);
            let ts = oplog::key_ts(h.last_ts);
            shared.majority.send_if_modified(|m| {
                if oplog::ts_key(*m) < h.last_ts {
                    *m = ts;
                    true
                } else {
                    false
                }
            });
        }
        if self.repl().settled() && self.commit_wanted() {
            let _ = self.commit_open();
        }
        if !self.repl().shared.writable.load(Ordering::SeqCst) {
            // A secondary's log keeps to the oplog's bounds too (the primary's batches
            // delete the pre-images).
            if let Some((keep, _)) = crate::pipeline::segment_cut(&self.log, &mut self.state) {
                self.state.drop_before = Some(keep);
                self.drop_segments();
            }
        }
        done(result);
    }

    /// Makes a frame's changes in the tables (a secondary's entries, or any this node did
    /// not run itself), and shows them to readers and change streams.
    fn apply_frame(&mut self, f: &ReplFrame, h: &FrameHeader) -> Result<()> {
        let (entries, redo_bytes) = sections(&f.bytes, h);
        if !frame::redo_ok(h, redo_bytes) {
            return Err(MongoError::internal(format!(
                "replicated frame {} fails its redo checksum",
                f.lsn
            )));
        }
        let txn = self.take_open()?;
        let mut building = Building::default();
        let mut range = false;
        let mut next_id = None;
        let r = (|| -> std::result::Result<(), String> {
            let mut hd = Handles::open(&txn).map_err(|e| e.message)?;
            for op in redo::ops(redo_bytes) {
                let op = op.map_err(|why| format!("lsn {}: {why}", f.lsn))?;
                hd.apply(&op)?;
                match op {
                    Op::Put(t, k, v) => {
                        if t == TableId::Meta && k == META_NEXT_ID.as_bytes() {
                            next_id = v.try_into().ok().map(u64::from_be_bytes);
                        }
                        building.put(t, k, v);
                    }
                    Op::Del(t, k) => building.del(t, k),
                    Op::DelRange(..) => range = true,
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            self.rebuild_open(txn);
            return Err(storage_err(e));
        }
        self.open = Some(txn);
        if let Some(n) = next_id {
            self.state.next_id.fetch_max(n, Ordering::SeqCst);
            self.state.stored_next_id = self.state.stored_next_id.max(n);
        }
        self.state.catalog_cache.clear();
        let ts = oplog::key_ts(h.last_ts);
        if oplog::ts_key(self.state.last_ts) < h.last_ts {
            self.state.last_ts = ts;
        }
        self.pending_redo.push((f.lsn, redo_bytes.to_vec()));
        self.pending_bytes += building.bytes + redo_bytes.len();
        if range {
            self.commit_open()?;
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            vis.ts = ts;
        } else {
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let layer = building.publish(vis.pending.take(), h.last_ts);
            vis.pending = Some(layer);
            vis.ts = ts;
            drop(vis);
            if self.pending_since.is_none() {
                self.pending_since = Some(std::time::Instant::now());
                self.has_pending.store(true, Ordering::SeqCst);
            }
        }
        self.log
            .push_tail(frame::entries(entries).filter_map(std::result::Result::ok));
        self.committed.send_replace(self.state.last_ts);
        Ok(())
    }

    /// Removes the frames from `lsn` on: this node's batches among them are rolled back
    /// out of the tables, and every proposal still parked fails.
    pub(crate) fn repl_truncate(&mut self, lsn: u64, done: Completion) {
        let r = self.rollback(Some(lsn), None);
        done(r);
    }

    /// A proposal the consensus layer refused (this node is not primary): it and every
    /// later one are rolled back.
    pub(crate) fn repl_rejected(&mut self, proposal: u64) {
        if self.repl().parked.iter().any(|p| p.proposal == proposal) {
            if let Err(e) = self.rollback(None, Some(proposal)) {
                tracing::error!(error = %e, "could not roll back a refused write");
            }
        }
    }

    /// Rolls the tables back to the frames before `lsn` (all durable frames if `None`),
    /// dropping parked proposals from `proposal` on (all of them when `lsn` is given).
    fn rollback(&mut self, lsn: Option<u64>, proposal: Option<u64>) -> Result<()> {
        // Parked batches: their writers hear that they failed.
        let mut failed = Vec::new();
        {
            let r = self.repl();
            while let Some(p) = r.parked.back() {
                if lsn.is_none() && proposal.is_some_and(|q| p.proposal < q) {
                    break;
                }
                failed.push(r.parked.pop_back().unwrap());
            }
        }
        let cut = lsn.unwrap_or(u64::MAX);
        let dropped_durable = self.pending_redo.iter().any(|(l, _)| *l >= cut);
        if failed.is_empty() && !dropped_durable && lsn.is_none_or(|l| l >= self.state.next_lsn) {
            return Ok(());
        }
        if let Some(l) = lsn {
            if self.repl().spec.iter().any(|&s| s >= l) || dropped_durable {
                tracing::warn!(
                    from_lsn = l,
                    "rolling back writes that never reached a majority (a new primary does not have them)"
                );
            }
            let applied = self.repl().shared.applied.lock().unwrap().0;
            if l <= applied {
                let e = MongoError::internal(format!(
                    "asked to remove log entry {l}, which a majority already holds (applied up to {applied})"
                ));
                self.state.failed = Some(e.clone());
                return Err(e);
            }
        }
        let err = if lsn.is_some() {
            repl_state_changed()
        } else {
            not_primary()
        };
        let oldest_before = failed.last().map(|p| p.before);
        for p in failed.into_iter().rev() {
            for c in p.completions {
                c(Err(err.clone()));
            }
        }
        if self.state.opts.rollback_files {
            if let Err(e) = self.write_rollback_files(cut) {
                tracing::error!(error = %e, "could not write the rolled-back documents to rollback files");
            }
        }
        // The tables: begin the open transaction again from the batches kept.
        self.pending_redo.retain(|(l, _)| *l < cut);
        self.repl().spec.retain(|&s| s < cut);
        if let Some(t) = self.open.take() {
            self.rebuild_open(t);
        }
        // The kept batches' layers, one per batch as they were published.
        let mut layer = None;
        for (l, r) in &self.pending_redo {
            let mut building = Building::default();
            for op in redo::ops(r).flatten() {
                match op {
                    Op::Put(t, k, v) => building.put(t, k, v),
                    Op::Del(t, k) => building.del(t, k),
                    Op::DelRange(..) => {}
                }
            }
            let ts = match self.log.read_frames(*l, *l, 0) {
                Ok(f) if !f.is_empty() => f[0].h.last_ts,
                _ => u64::MAX,
            };
            layer = Some(building.publish(layer, ts));
        }
        if let Some(l) = lsn {
            if l < self.state.next_lsn {
                if let Err(e) = self.lw.truncate_from(l) {
                    let e = MongoError::internal(format!(
                        "the write-ahead log could not be truncated ({e}); no more writes are accepted: restart the server"
                    ));
                    self.state.failed = Some(e.clone());
                    return Err(e);
                }
                self.state.next_lsn = l;
                self.repl()
                    .shared
                    .truncations
                    .fetch_add(1, Ordering::SeqCst);
            }
        }
        let last = self.log.segs().last().map_or(0, |s| s.last_ts);
        let last_ts = match (lsn, oldest_before) {
            (None, Some(b)) => b,
            _ => oplog::key_ts(last),
        };
        self.state.last_ts = last_ts;
        self.state.catalog_cache.clear();
        {
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            vis.pending = layer;
            if lsn.is_some() {
                vis.ts = oplog::key_ts(last);
            }
        }
        if lsn.is_some() {
            self.committed.send_replace(oplog::key_ts(last));
        }
        Ok(())
    }
}

impl Writer {
    /// A read transaction of the tables as of a frame a majority holds, and that frame:
    /// the last redb commit (committing the open transaction first when a majority holds
    /// all of it, so that the image is recent).
    pub(crate) fn image_point(&mut self) -> Result<(redb::ReadTransaction, ImagePos)> {
        if self.repl().settled() {
            self.commit_open()?;
        }
        let txn = self.db.begin_read().map_err(storage_err)?;
        let mut pos = self.repl().image_at;
        pos.next_id = self.state.next_id.load(Ordering::SeqCst);
        Ok((txn, pos))
    }

    /// Replaces the tables with the image at `path` (read whole once already, so known
    /// to be sound), and empties the log unless it holds the image's last frame.
    pub(crate) fn install_image(&mut self, path: &std::path::Path) -> Result<ImagePos> {
        let open = || {
            std::fs::File::open(path)
                .map(std::io::BufReader::new)
                .map_err(|e| storage_err(format!("{}: {e}", path.display())))
        };
        let pos = crate::image::read_pos(&mut open()?).map_err(storage_err)?;
        // Whatever this member held in the open transaction goes.
        let parked = std::mem::take(&mut self.repl().parked);
        for p in parked {
            for c in p.completions {
                c(Err(repl_state_changed()));
            }
        }
        self.repl().spec.clear();
        if let Some(t) = self.open.take() {
            let _ = t.abort();
        }
        self.pending_redo.clear();
        self.pending_bytes = 0;
        self.pending_since = None;
        self.has_pending.store(false, Ordering::SeqCst);
        self.purged = false;
        self.state.drop_before = None;
        // The log first: a crash after this leaves the old tables, which the consensus
        // layer sends an image for again.
        let keep_log = self
            .log
            .read_frames(pos.lsn, pos.lsn, 0)
            .ok()
            .and_then(|f| f.first().map(|f| f.h.stamp.term))
            == Some(pos.term);
        if !keep_log {
            if let Err(e) = self.lw.restart(pos.ts) {
                let e = MongoError::internal(format!(
                    "the write-ahead log could not be emptied for an initial sync ({e}); no more writes are accepted: restart the server"
                ));
                self.state.failed = Some(e.clone());
                return Err(e);
            }
            self.state.next_lsn = pos.lsn + 1;
        }
        let r = (|| -> std::result::Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            crate::image::clear_tables(&txn)?;
            {
                let mut h = Handles::open(&txn).map_err(|e| e.message)?;
                crate::image::read(&mut open().map_err(|e| e.message)?, |_, op| h.apply(&op))?;
                h.set_applied(pos.lsn, pos.ts)?;
                h.set_repl_applied((pos.lsn, pos.term, pos.leader))?;
                h.apply(&Op::Put(
                    TableId::Meta,
                    META_NEXT_ID.as_bytes(),
                    &pos.next_id.to_be_bytes(),
                ))?;
            }
            txn.commit().map_err(|e| e.to_string())?;
            crate::wal::write_checkpoint(self.log.dir(), pos.lsn, pos.ts).map_err(|e| e.to_string())
        })();
        if let Err(e) = r {
            let e = MongoError::internal(format!(
                "an initial sync image could not be installed ({e}); no more writes are accepted: restart the server"
            ));
            self.state.failed = Some(e.clone());
            return Err(e);
        }
        let ts = oplog::key_ts(pos.ts);
        let s = &mut self.state;
        s.tables_lsn = pos.lsn;
        s.checkpoint_lsn = pos.lsn;
        s.since_checkpoint = 0;
        s.last_checkpoint = std::time::Instant::now();
        s.last_ts = ts;
        s.catalog_cache.clear();
        s.next_id.fetch_max(pos.next_id, Ordering::SeqCst);
        s.stored_next_id = pos.next_id;
        {
            let mut vis = self
                .visible
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            vis.pending = None;
            vis.ts = ts;
        }
        let gc = crate::has_gc_marks(&self.db).unwrap_or(true);
        self.gc_pending.store(gc, Ordering::SeqCst);
        let r = self.repl();
        r.applied_ts = pos.ts;
        r.image_at = pos;
        let shared = r.shared.clone();
        *shared.applied.lock().unwrap() = (pos.lsn, pos.term, pos.leader);
        shared.majority.send_if_modified(|m| {
            if oplog::ts_key(*m) < pos.ts {
                *m = ts;
                true
            } else {
                false
            }
        });
        self.committed.send_replace(ts);
        tracing::info!(
            lsn = pos.lsn,
            kept_log = keep_log,
            "installed an initial sync image of the tables"
        );
        Ok(pos)
    }
}

impl Writer {
    /// Writes the documents the log's batches from `cut` on leave behind (their last
    /// version; a document they deleted has none) to `<dbpath>/rollback/<collection
    /// UUID>/removed.<time>.bson`, as mongod does, before those batches are rolled back.
    fn write_rollback_files(&mut self, cut: u64) -> std::result::Result<(), String> {
        // The last record each rolled-back batch wrote, in log order.
        let mut last: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
        for (_, r) in self.pending_redo.iter().filter(|(l, _)| *l >= cut) {
            for op in redo::ops(r) {
                match op? {
                    Op::Put(TableId::Records, k, v) => {
                        last.insert(k.to_vec(), Some(v.to_vec()));
                    }
                    Op::Del(TableId::Records, k) => {
                        last.insert(k.to_vec(), None);
                    }
                    _ => {}
                }
            }
        }
        let mut by_coll: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        for (k, v) in &last {
            let (Some(v), Some(coll)) = (v, k.get(..8)) else {
                continue;
            };
            let coll = u64::from_be_bytes(coll.try_into().unwrap());
            let (_, bson) = crate::split_record(v).map_err(|e| e.message)?;
            by_coll.entry(coll).or_default().extend_from_slice(bson);
        }
        if by_coll.is_empty() {
            return Ok(());
        }
        // Collection ids to UUIDs, as the tables hold them before the rollback.
        let uuids: std::collections::HashMap<u64, bson::Uuid> = {
            let txn = self.take_open().map_err(|e| e.message)?;
            let r = (|| -> std::result::Result<_, String> {
                let t = txn.open_table(crate::CATALOG).map_err(|e| e.to_string())?;
                let mut m = std::collections::HashMap::new();
                for item in redb::ReadableTable::iter(&t).map_err(|e| e.to_string())? {
                    let (_, v) = item.map_err(|e| e.to_string())?;
                    if let Ok(c) = crate::catalog::CollectionMeta::from_bytes(v.value()) {
                        m.insert(c.id, c.uuid);
                    }
                }
                Ok(m)
            })();
            self.open = Some(txn);
            r?
        };
        let now = bson::DateTime::now()
            .try_to_rfc3339_string()
            .map_err(|e| e.to_string())?;
        let stamp = now.get(..19).unwrap_or(&now).replace(':', "-");
        let root = self
            .log
            .dir()
            .parent()
            .unwrap_or(self.log.dir())
            .join("rollback");
        for (coll, docs) in by_coll {
            let dir = root.join(
                uuids
                    .get(&coll)
                    .map_or_else(|| format!("collection-{coll}"), ToString::to_string),
            );
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut n = 0;
            let path = loop {
                let p = dir.join(format!("removed.{stamp}.{n}.bson"));
                if !p.exists() {
                    break p;
                }
                n += 1;
            };
            let mut f =
                std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::Write::write_all(&mut f, &docs)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.sync_all()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::warn!(path = %path.display(), "wrote rolled-back documents to a rollback file");
        }
        Ok(())
    }
}

impl crate::Store {
    /// Makes this store a replica set member's: from now on batches are proposed to
    /// `proposer` and the consensus layer drives the log (see this module). Call before
    /// any write.
    pub fn enable_replication(&self, proposer: Arc<dyn Proposer>) -> Arc<ReplShared> {
        let stored = self.repl_applied_stored().unwrap_or((0, 0, 0));
        let now = self.committed_ts();
        let shared = Arc::new(ReplShared {
            writable: AtomicBool::new(false),
            majority: watch::channel(now).0,
            truncations: AtomicU64::new(0),
            applied: std::sync::Mutex::new(stored),
            last_own: std::sync::Mutex::new((0, 0)),
            purged: AtomicU64::new(0),
            released: AtomicU64::new(0),
            purge_wanted: AtomicU64::new(0),
        });
        let _ = self.inner.repl.set(shared.clone());
        // The tables as opened are the last checkpoint's: recovery replays nothing after it.
        let image_at = ImagePos {
            lsn: stored.0,
            term: stored.1,
            leader: stored.2,
            ts: oplog::ts_key(now),
            next_id: 0,
        };
        self.inner
            .pipeline
            .set_replicated(ReplState::new(proposer, shared.clone(), image_at));
        shared
    }

    /// The replication state shared with the pipeline, on a replica set member.
    pub fn repl(&self) -> Option<&Arc<ReplShared>> {
        self.inner.repl.get()
    }

    /// The log id `(lsn, term, leader)` of the last frame the checkpointed tables hold.
    pub fn repl_applied_stored(&self) -> Option<(u64, u32, u16)> {
        let txn = self.inner.db.begin_read().ok()?;
        let meta = txn.open_table(crate::META).ok()?;
        let v = meta.get(crate::META_REPL_APPLIED).ok()??;
        let b = v.value();
        if b.len() != 14 {
            return None;
        }
        Some((
            u64::from_be_bytes(b[..8].try_into().ok()?),
            u32::from_be_bytes(b[8..12].try_into().ok()?),
            u16::from_be_bytes(b[12..14].try_into().ok()?),
        ))
    }

    /// Writes frames placed in the log (in order, after the log's last); `done` hears
    /// once they are durable.
    ///
    /// # Errors
    /// When the store is closed.
    pub fn repl_append(&self, frames: Vec<ReplFrame>, done: IoDone) -> Result<()> {
        self.inner
            .pipeline
            .submit(crate::pipeline::Msg::Append(frames, done))
    }

    /// Applies frames a majority holds (in order).
    ///
    /// # Errors
    /// When a frame cannot be applied (then the store takes no more writes).
    pub async fn repl_apply(&self, frames: Vec<ReplFrame>) -> Result<()> {
        self.ask(|done| crate::pipeline::Msg::Apply(frames, done))
            .await
    }

    /// Removes the frames from `lsn` on, rolling back this node's batches among them.
    ///
    /// # Errors
    /// When the log cannot be truncated.
    pub async fn repl_truncate(&self, lsn: u64) -> Result<()> {
        self.ask(|done| crate::pipeline::Msg::Truncate(lsn, done))
            .await
    }

    /// Writes an image of the tables, as of a frame a majority holds, to `w` (blocking:
    /// call it off the runtime); `want_meta` names a META record to return as the image
    /// holds it.
    ///
    /// # Errors
    /// When the tables cannot be read or `w` fails.
    pub fn write_image(
        &self,
        w: &mut dyn std::io::Write,
        want_meta: &str,
    ) -> Result<crate::image::ImageInfo> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.inner
            .pipeline
            .submit(crate::pipeline::Msg::Image(Box::new(move |r| {
                let _ = tx.send(r);
            })))?;
        let (txn, pos) = rx.recv().map_err(|_| crate::shutting_down())??;
        crate::image::write(&txn, pos, w, want_meta).map_err(storage_err)
    }

    /// Replaces the tables with the image in the file at `path` (an initial sync): the
    /// image is read whole and checked first.
    ///
    /// # Errors
    /// When the image is damaged (nothing changes then), or it cannot be installed (then
    /// the store takes no more writes).
    pub async fn install_image(&self, path: std::path::PathBuf) -> Result<ImagePos> {
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            crate::image::read(&mut std::io::BufReader::new(f), |_, _| Ok(()))
        })
        .await
        .map_err(storage_err)?
        .map_err(storage_err)?;
        self.ask(|done| crate::pipeline::Msg::Install(path, done))
            .await
    }

    /// A proposal the consensus layer refused.
    pub fn repl_rejected(&self, proposal: u64) {
        let _ = self
            .inner
            .pipeline
            .submit(crate::pipeline::Msg::Rejected(proposal));
    }

    /// The newest majority-committed clusterTime (every committed one on a single node).
    pub fn majority_ts(&self) -> Timestamp {
        match self.inner.repl.get() {
            Some(r) => *r.majority.borrow(),
            None => self.committed_ts(),
        }
    }

    /// A receiver that changes whenever the majority point moves.
    pub fn subscribe_majority(&self) -> watch::Receiver<Timestamp> {
        match self.inner.repl.get() {
            Some(r) => r.majority.subscribe(),
            None => self.subscribe(),
        }
    }

    /// Waits until a majority holds this member's last write (the caller's, or a later one).
    ///
    /// # Errors
    /// InterruptedDueToReplStateChange when that write was rolled back (a new primary did
    /// not have it); shutting down.
    pub async fn wait_majority(&self) -> Result<()> {
        let Some(r) = self.inner.repl.get() else {
            return Ok(());
        };
        let (lsn, term) = *r.last_own.lock().unwrap();
        if lsn == 0 {
            return Ok(());
        }
        // The frame at `lsn` is still the write's while it carries the write's term.
        let still_there = || {
            self.inner
                .log
                .read_frames(lsn, lsn, 0)
                .ok()
                .and_then(|f| f.first().map(|f| f.h.stamp.term))
                == Some(term)
        };
        let mut seen = r.truncations.load(Ordering::SeqCst);
        let mut rx = r.majority.subscribe();
        loop {
            rx.borrow_and_update();
            let t = r.truncations.load(Ordering::SeqCst);
            if t != seen {
                seen = t;
                if !still_there() {
                    return Err(repl_state_changed());
                }
            }
            let applied = *r.applied.lock().unwrap();
            if applied.0 >= lsn {
                let ok = if applied.0 == lsn {
                    applied.1 == term
                } else {
                    still_there()
                };
                return if ok {
                    Ok(())
                } else {
                    Err(repl_state_changed())
                };
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Err(crate::shutting_down()); },
                () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
    }

    /// The header of the log's last frame, or `None` for an empty log.
    ///
    /// # Errors
    /// When the frame cannot be read.
    pub fn last_frame(&self) -> Result<Option<FrameHeader>> {
        let last = self
            .inner
            .log
            .segs()
            .iter()
            .rev()
            .find(|s| s.first_lsn != 0)
            .map(|s| s.last_lsn);
        let Some(lsn) = last else {
            return Ok(None);
        };
        let f = self.inner.log.read_frames(lsn, lsn, 0)?;
        Ok(f.first().map(|f| f.h))
    }

    /// Whole frames `from..=to` (at most about `max_bytes`), as the log holds them.
    ///
    /// # Errors
    /// When they cannot be read.
    pub fn read_frames(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<ReplFrame>> {
        Ok(self
            .inner
            .log
            .read_frames(from, to, max_bytes)?
            .into_iter()
            .map(|f| {
                let mut b = Vec::with_capacity(f.h.total_len as usize);
                b.extend_from_slice(&f.h.encode());
                b.extend_from_slice(&f.entries);
                b.extend_from_slice(&f.redo);
                ReplFrame {
                    lsn: f.h.lsn,
                    bytes: Arc::new(b),
                    proposal: None,
                }
            })
            .collect())
    }
}

impl crate::Store {
    /// A read view of what a majority holds (`readConcern: "majority"`): the tables as
    /// redb last committed them (never more than a majority holds, see this module) and the
    /// pending batches up to the majority point. Without replication, the same as
    /// [`crate::Store::snapshot`].
    ///
    /// # Errors
    /// On storage failure.
    pub fn snapshot_majority(&self) -> Result<crate::snapshot::Snapshot> {
        // The majority point only grows: read before the snapshot, it bounds it safely.
        let cap = self.inner.repl.get().map(|r| *r.majority.borrow());
        self.snapshot_upto(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CollectionMeta, Namespace};
    use crate::oplog::{OpKind, OplogEntry};
    use crate::{Store, StoreOptions};
    use bson::doc;
    use std::sync::Mutex;

    /// Records proposals instead of handing them to a consensus layer.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl Proposer for Recorder {
        fn propose(&self, proposal: u64, frame: Vec<u8>) {
            self.0.lock().unwrap().push((proposal, frame));
        }
    }

    fn stamp(term: u32) -> frame::Stamp {
        frame::Stamp {
            term,
            leader: 1,
            kind: frame::FrameKind::Batch,
        }
    }

    /// Waits for the next proposal and places it in the log at `lsn`.
    async fn place(rec: &Recorder, lsn: u64, term: u32, own: bool) -> ReplFrame {
        let (p, mut bytes) = loop {
            if let Some(x) = rec.0.lock().unwrap().pop() {
                break x;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        frame::restamp(&mut bytes, lsn, stamp(term)).unwrap();
        ReplFrame {
            lsn,
            bytes: Arc::new(bytes),
            proposal: own.then_some(p),
        }
    }

    async fn append(store: &Store, f: ReplFrame) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .repl_append(
                vec![f],
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .unwrap();
        rx.await.unwrap().unwrap();
    }

    fn insert(store: &Store, coll: u64, id: i32) -> tokio::task::JoinHandle<errors::Result<()>> {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(move |ctx| {
                    if ctx.collection(&Namespace::new("d", "c"))?.is_none() {
                        ctx.put_collection(&CollectionMeta {
                            ns: Namespace::new("d", "c"),
                            uuid: bson::Uuid::new(),
                            id: coll,
                            options: bson::Document::new(),
                            indexes: vec![],
                        })?;
                    }
                    let key = id.to_be_bytes();
                    ctx.put_doc(coll, &key, &bson::to_vec(&doc! {"_id": id}).unwrap())?;
                    ctx.log(OplogEntry::new(
                        OpKind::Insert,
                        "d.c",
                        None,
                        doc! {"_id": id},
                    ))?;
                    Ok(())
                })
                .await
        })
    }

    fn has(snap: &crate::snapshot::Snapshot, coll: u64, id: i32) -> bool {
        snap.get_doc(coll, &id.to_be_bytes()).unwrap().is_some()
    }

    #[tokio::test]
    async fn proposes_applies_rolls_back_and_applies_foreign_frames() {
        let dir = std::env::temp_dir().join(format!("eddy-repl-{}", bson::oid::ObjectId::new()));
        let opts = StoreOptions {
            replicated: true,
            ..StoreOptions::default()
        };
        let store = Store::open(&dir, opts).unwrap();
        let rec = Arc::new(Recorder::default());
        let shared = store.enable_replication(rec.clone());
        shared.writable.store(true, Ordering::SeqCst);
        let coll = 7;

        // A batch is answered once its frame is in the log here; a majority read sees it
        // only once it is applied as majority-committed.
        let w = insert(&store, coll, 1);
        let f1 = place(&rec, 1, 1, true).await;
        append(&store, f1.clone()).await;
        w.await.unwrap().unwrap();
        assert!(has(&store.snapshot().unwrap(), coll, 1));
        assert!(!has(&store.snapshot_majority().unwrap(), coll, 1));
        store.repl_apply(vec![f1]).await.unwrap();
        assert!(has(&store.snapshot_majority().unwrap(), coll, 1));
        let majority = store.majority_ts();

        // A second batch, in the log but not majority-committed, is rolled back when a
        // new primary's log does not have it; a w: "majority" waiter hears of it.
        let w = insert(&store, coll, 2);
        let f2 = place(&rec, 2, 1, true).await;
        append(&store, f2.clone()).await;
        w.await.unwrap().unwrap();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_majority().await })
        };
        assert!(has(&store.snapshot().unwrap(), coll, 2));
        store.repl_truncate(2).await.unwrap();
        assert!(!has(&store.snapshot().unwrap(), coll, 2));
        assert!(has(&store.snapshot().unwrap(), coll, 1));
        assert_eq!(store.last_frame().unwrap().unwrap().lsn, 1);
        let e = waiter.await.unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::InterruptedDueToReplStateChange as i32);
        assert_eq!(store.majority_ts(), majority);

        // The new primary's frame at lsn 2 (the same batch, as another member ran it) is
        // appended and applied as a foreign frame.
        let mut b = f2.bytes.to_vec();
        frame::restamp(&mut b, 2, stamp(2)).unwrap();
        let foreign = ReplFrame {
            lsn: 2,
            bytes: Arc::new(b),
            proposal: None,
        };
        append(&store, foreign.clone()).await;
        assert!(
            !has(&store.snapshot().unwrap(), coll, 2),
            "not applied before it commits"
        );
        store.repl_apply(vec![foreign]).await.unwrap();
        assert!(has(&store.snapshot().unwrap(), coll, 2));
        assert!(has(&store.snapshot_majority().unwrap(), coll, 2));
        assert_eq!(store.last_frame().unwrap().unwrap().stamp.term, 2);
        // Frames read back are the frames written.
        let read = store.read_frames(1, 2, usize::MAX).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].header().unwrap().stamp.term, 2);

        // Not writable: a write is refused, not parked.
        shared.writable.store(false, Ordering::SeqCst);
        let e = insert(&store, coll, 3).await.unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::NotWritablePrimary as i32);
        store.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An image taken on one member installs on another, whose log then continues after
    /// the image's frame; a damaged image is refused and changes nothing.
    #[tokio::test]
    async fn an_image_installs_on_another_member() {
        let root = std::env::temp_dir().join(format!("eddy-image-{}", bson::oid::ObjectId::new()));
        let opts = StoreOptions {
            replicated: true,
            ..StoreOptions::default()
        };
        let a = Store::open(&root.join("a"), opts.clone()).unwrap();
        let rec = Arc::new(Recorder::default());
        a.enable_replication(rec.clone())
            .writable
            .store(true, Ordering::SeqCst);
        let coll = 7;
        let w = insert(&a, coll, 1);
        let f1 = place(&rec, 1, 1, true).await;
        append(&a, f1.clone()).await;
        w.await.unwrap().unwrap();
        a.repl_apply(vec![f1]).await.unwrap();
        let img = root.join("a.img");
        let info = {
            let mut f = std::fs::File::create(&img).unwrap();
            a.write_image(&mut f, "setting:none").unwrap()
        };
        assert_eq!((info.pos.lsn, info.pos.term), (1, 1));
        assert!(info.records > 0);

        let b = Store::open(&root.join("b"), opts).unwrap();
        b.enable_replication(Arc::new(Recorder::default()));
        // Damaged: refused, nothing changes.
        let bad = root.join("bad.img");
        let mut bytes = std::fs::read(&img).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&bad, bytes).unwrap();
        assert!(b.install_image(bad).await.is_err());
        assert!(!has(&b.snapshot().unwrap(), coll, 1));

        let pos = b.install_image(img).await.unwrap();
        assert_eq!(pos, info.pos);
        assert!(has(&b.snapshot().unwrap(), coll, 1));
        assert!(has(&b.snapshot_majority().unwrap(), coll, 1));
        assert_eq!(b.majority_ts(), a.majority_ts());
        assert!(
            b.last_frame().unwrap().is_none(),
            "the log starts after the image"
        );

        // A's next batch continues B's log.
        let w = insert(&a, coll, 2);
        let f2 = place(&rec, 2, 1, true).await;
        append(&a, f2.clone()).await;
        w.await.unwrap().unwrap();
        let foreign = ReplFrame {
            proposal: None,
            ..f2
        };
        append(&b, foreign.clone()).await;
        b.repl_apply(vec![foreign]).await.unwrap();
        assert!(has(&b.snapshot().unwrap(), coll, 2));
        assert_eq!(b.last_frame().unwrap().unwrap().lsn, 2);
        a.close();
        b.close();
        let _ = std::fs::remove_dir_all(&root);
    }
}
