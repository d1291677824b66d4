//! Raft's log storage and state machine over the store: the write-ahead log is Raft's log
//! (an entry's Raft index is its frame's lsn - 1) and the tables are its state machine.
//!
//! - A normal entry carries a commit batch's whole frame, as the primary's pipeline built
//!   it; it is stamped with its lsn and term as it is appended (`frame::restamp`).
//! - A new leader's blank entry is an empty frame; a membership entry is an empty frame
//!   whose redo stores the membership in the tables (so that it is applied, checkpointed
//!   and sent in snapshots like any other change).
//! - The vote (and the purge point) live in a small file beside the log, written durably.

// openraft's traits return its `StorageError` (224 bytes); the helpers here return it too.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use storage::Store;
use storage::redo::{Redo, TableId};
use storage::replica::ReplFrame;
use storage::wal::frame::{self, FrameKind, Stamp};

use crate::{Member, NodeId, Proposal, TypeConfig};

/// The tables' key of the membership (a setting, so that snapshots read it like others).
pub(crate) const MEMBERSHIP_SETTING: &str = "__repl_membership";

/// Entries kept in memory after they are appended: replication reads recent entries from
/// here, not from the segments.
const CACHE_ENTRIES: usize = 8192;

/// Bytes of entries one replication message carries (at least one entry).
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

type SE = StorageError<NodeId>;

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> SE {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn log_err(e: impl ToString) -> SE {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

/// The log id of the frame with `lsn`, stamped `s`.
pub(crate) fn log_id(lsn: u64, s: Stamp) -> LogId<NodeId> {
    LogId::new(
        CommittedLeaderId::new(u64::from(s.term), NodeId::from(s.leader)),
        lsn - 1,
    )
}

fn stamp_of(id: &LogId<NodeId>, kind: FrameKind) -> Stamp {
    Stamp {
        term: id.leader_id.term as u32,
        leader: id.leader_id.node_id as u16,
        kind,
    }
}

/// The log's last entry: its id and clusterTime key.
fn last_entry(store: &Store) -> Result<Option<(LogId<NodeId>, u64)>, SE> {
    Ok(store
        .last_frame()
        .map_err(|e| log_err(e.message))?
        .map(|h| (log_id(h.lsn, h.stamp), h.last_ts)))
}

/// The log id of a frame known by its position `(lsn, term, leader)`; none for lsn 0.
fn position_id(lsn: u64, term: u32, leader: u16) -> Option<LogId<NodeId>> {
    (lsn > 0).then(|| {
        log_id(
            lsn,
            Stamp {
                term,
                leader,
                kind: FrameKind::Batch,
            },
        )
    })
}

/// What is kept beside the log: the vote and the last purged log id.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct RaftMeta {
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

struct LogInner {
    store: Store,
    /// This node, and this process's incarnation (proposal numbers restart with it).
    me: NodeId,
    incarnation: u64,
    meta_path: PathBuf,
    meta: Mutex<RaftMeta>,
    cache: Mutex<BTreeMap<u64, Entry<TypeConfig>>>,
    /// The log's last entry: its id and clusterTime key.
    last: Mutex<Option<(LogId<NodeId>, u64)>>,
}

/// Raft's log storage (and log reader), over the store's write-ahead log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

impl LogStore {
    /// Opens the log storage of `store` for node `me`.
    ///
    /// # Errors
    /// When the vote file or the log's last frame cannot be read.
    pub fn open(store: Store, me: NodeId, incarnation: u64) -> Result<LogStore, String> {
        let meta_path = store.path().join("raft-vote");
        let meta = match std::fs::read(&meta_path) {
            Ok(b) => crate::decode(&b)
                .map_err(|e| format!("{}: unreadable ({e})", meta_path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RaftMeta::default(),
            Err(e) => return Err(format!("{}: {e}", meta_path.display())),
        };
        let last = last_entry(&store).map_err(|e| e.to_string())?;
        if let (Some(r), Some(p)) = (store.repl(), meta.purged) {
            // Nothing from before this start reads purged frames any more.
            r.purged
                .fetch_max(p.index + 1, std::sync::atomic::Ordering::SeqCst);
            r.released
                .fetch_max(p.index + 1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(LogStore {
            inner: Arc::new(LogInner {
                store,
                me,
                incarnation,
                meta_path,
                meta: Mutex::new(meta),
                cache: Mutex::new(BTreeMap::new()),
                last: Mutex::new(last),
            }),
        })
    }

    fn save_meta(&self) -> io::Result<()> {
        use std::io::Write;
        let m = self.inner.meta.lock().unwrap().clone();
        let b = crate::encode(&m).map_err(io::Error::other)?;
        let tmp = self.inner.meta_path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.inner.meta_path)?;
        std::fs::File::open(self.inner.store.path())?.sync_all()
    }

    /// Raft purged the entries up to `id` (or an image replaced them): the cache lets
    /// them go, the vote file records it, and the pipeline learns that the log may drop
    /// them.
    fn record_purged(&self, id: LogId<NodeId>) -> Result<(), SE> {
        {
            let mut m = self.inner.meta.lock().unwrap();
            if m.purged < Some(id) {
                m.purged = Some(id);
            }
        }
        self.inner
            .cache
            .lock()
            .unwrap()
            .retain(|&k, _| k > id.index);
        self.save_meta()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        if let Some(r) = self.inner.store.repl() {
            r.purged
                .fetch_max(id.index + 1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// An entry as a whole frame, stamped for its place in the log; `prior` is the
    /// clusterTime key of the entry before it.
    fn to_frame(&self, e: &Entry<TypeConfig>, prior: u64) -> Result<(ReplFrame, u64), SE> {
        let lsn = e.log_id.index + 1;
        let (bytes, proposal) = match &e.payload {
            EntryPayload::Normal(p) => {
                let mut b = p.frame.clone();
                frame::restamp(&mut b, lsn, stamp_of(&e.log_id, FrameKind::Batch))
                    .map_err(log_err)?;
                let own = p.origin == self.inner.me && p.incarnation == self.inner.incarnation;
                (b, own.then_some(p.proposal))
            }
            EntryPayload::Blank => (
                frame::plain_frame(lsn, prior, stamp_of(&e.log_id, FrameKind::Blank), &[]),
                None,
            ),
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(e.log_id), m.clone());
                let value = crate::encode(&stored).map_err(log_err)?;
                let value = bson::to_vec(&bson::doc! {"m": bson::Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: value,
                }})
                .map_err(log_err)?;
                let key = format!("setting:{MEMBERSHIP_SETTING}");
                let mut redo = Redo::default();
                redo.put(TableId::Meta, key.as_bytes(), &value);
                (
                    frame::plain_frame(
                        lsn,
                        prior,
                        stamp_of(&e.log_id, FrameKind::Membership),
                        redo.bytes(),
                    ),
                    None,
                )
            }
        };
        let h = storage::replica::header_of(&bytes).map_err(|e| log_err(e.message))?;
        Ok((
            ReplFrame {
                lsn,
                bytes: Arc::new(bytes),
                proposal,
            },
            h.last_ts,
        ))
    }

    /// Reads entries `[start, end)` from the cache, or else from the log.
    /// The index after the log's last entry.
    fn log_end(&self) -> u64 {
        self.inner
            .last
            .lock()
            .unwrap()
            .map_or(0, |(l, _)| l.index + 1)
    }

    /// Reads entries from `start` on, up to `end` (exclusive) or about [`CHUNK_BYTES`]
    /// (at least one): one replication message, small enough that it never holds up the
    /// leader's heartbeats on the same stream for long.
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, SE> {
        if start >= end {
            return Ok(Vec::new());
        }
        {
            let c = self.inner.cache.lock().unwrap();
            if c.first_key_value().is_some_and(|(&k, _)| k <= start) {
                let mut bytes = 0usize;
                let mut v = Vec::new();
                for (_, e) in c.range(start..end) {
                    if bytes >= CHUNK_BYTES {
                        break;
                    }
                    if let EntryPayload::Normal(p) = &e.payload {
                        bytes += p.frame.len();
                    }
                    v.push(e.clone());
                }
                if !v.is_empty() {
                    return Ok(v);
                }
            }
        }
        let frames = match self.inner.store.read_frames(start + 1, end, CHUNK_BYTES) {
            Ok(f) => f,
            Err(e) => {
                let purged = self.inner.meta.lock().unwrap().purged;
                if purged.is_some_and(|p| start <= p.index) {
                    // Purged and gone (which the grace period before deletion should
                    // prevent): nothing; the member is sent an image instead.
                    tracing::warn!(index = start, error = %e.message, "asked for purged log entries");
                    return Ok(Vec::new());
                }
                return Err(log_err(e.message));
            }
        };
        frames.iter().map(frame_entry).collect()
    }
}

/// The entry a whole frame of the log holds.
pub(crate) fn frame_entry(f: &ReplFrame) -> Result<Entry<TypeConfig>, SE> {
    let h = f.header().map_err(|e| log_err(e.message))?;
    let id = log_id(h.lsn, h.stamp);
    let payload = match h.stamp.kind {
        FrameKind::Batch => EntryPayload::Normal(Proposal {
            origin: 0,
            incarnation: 0,
            proposal: 0,
            frame: f.bytes[..h.total_len as usize].to_vec(),
        }),
        FrameKind::Blank => EntryPayload::Blank,
        FrameKind::Membership => {
            let redo_at = frame::FRAME_HEADER_BYTES + h.entries_len as usize;
            let redo = &f.bytes[redo_at..h.total_len as usize];
            let m = storage::redo::ops(redo)
                .find_map(|op| match op {
                    Ok(storage::redo::Op::Put(TableId::Meta, _, v)) => Some(v.to_vec()),
                    _ => None,
                })
                .ok_or_else(|| log_err("membership frame without a membership"))?;
            let d: bson::Document = bson::from_slice(&m).map_err(log_err)?;
            let m: StoredMembership<NodeId, Member> = membership_of(&d)?;
            EntryPayload::Membership(m.membership().clone())
        }
    };
    Ok(Entry {
        log_id: id,
        payload,
    })
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        let (start, end) = bounds(&range);
        let end = end.min(self.log_end());
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let v = self.entries(at, end)?;
            if v.is_empty() {
                break;
            }
            at = v.last().unwrap().log_id.index + 1;
            out.extend(v);
        }
        Ok(out)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, SE> {
        self.entries(start, end.min(self.log_end()))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SE> {
        let purged = self.inner.meta.lock().unwrap().purged;
        let last = self.inner.last.lock().unwrap().map(|(l, _)| l).or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SE> {
        self.inner.meta.lock().unwrap().vote = Some(*vote);
        self.save_meta()
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SE> {
        Ok(self.inner.meta.lock().unwrap().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut frames = Vec::new();
        {
            let mut last = self.inner.last.lock().unwrap();
            let mut cache = self.inner.cache.lock().unwrap();
            for e in entries {
                let prior = last.map_or(0, |(_, ts)| ts);
                let (f, ts) = self.to_frame(&e, prior)?;
                *last = Some((e.log_id, ts.max(prior)));
                cache.insert(e.log_id.index, e);
                frames.push(f);
            }
            while cache.len() > CACHE_ENTRIES {
                cache.pop_first();
            }
        }
        self.inner
            .store
            .repl_append(frames, Box::new(move |r| callback.log_io_completed(r)))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e.message))
    }

    async fn truncate(&mut self, id: LogId<NodeId>) -> Result<(), SE> {
        self.inner
            .cache
            .lock()
            .unwrap()
            .retain(|&k, _| k < id.index);
        self.inner
            .store
            .repl_truncate(id.index + 1)
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e.message))?;
        *self.inner.last.lock().unwrap() = last_entry(&self.inner.store)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        // Raft no longer needs these entries; change stream history keeps them until the
        // oplog's own size and age bounds drop their segments.
        self.record_purged(log_id)
    }
}

/// Raft's state machine: the tables, through the commit pipeline.
pub struct StateMachine {
    pub(crate) log: LogStore,
}

impl StateMachine {
    fn store(&self) -> &Store {
        &self.log.inner.store
    }
}

/// The membership the tables hold.
pub(crate) fn stored_membership(store: &Store) -> Result<StoredMembership<NodeId, Member>, SE> {
    let snap = store.snapshot().map_err(|e| log_err(e.message))?;
    let Some(d) = snap
        .setting(MEMBERSHIP_SETTING)
        .map_err(|e| log_err(e.message))?
    else {
        return Ok(StoredMembership::default());
    };
    membership_of(&d)
}

/// The membership in a stored `{m: <bytes>}` setting.
fn membership_of(d: &bson::Document) -> Result<StoredMembership<NodeId, Member>, SE> {
    match d.get("m") {
        Some(bson::Bson::Binary(b)) => crate::decode(&b.bytes).map_err(log_err),
        _ => Err(log_err("stored membership is malformed")),
    }
}

/// This store's applied log id, as the pipeline last applied (or checkpointed) it.
pub(crate) fn applied_id(store: &Store) -> Option<LogId<NodeId>> {
    let (lsn, term, leader) = store
        .repl()
        .map(|r| *r.applied.lock().unwrap())
        .or_else(|| store.repl_applied_stored())
        .unwrap_or((0, 0, 0));
    position_id(lsn, term, leader)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = ImageBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), SE> {
        Ok((applied_id(self.store()), stored_membership(self.store())?))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, SE>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut frames = Vec::new();
        for e in entries {
            // Raft's own entries need no clusterTime to be applied.
            let (f, _) = self.log.to_frame(&e, 0)?;
            frames.push(f);
        }
        let n = frames.len();
        self.store()
            .repl_apply(frames)
            .await
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e.message))?;
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ImageBuilder {
            log: self.log.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, SE> {
        let dir = images_dir(self.store());
        let path = dir.join(INCOMING);
        let f = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(&path)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), SE> {
        use tokio::io::AsyncWriteExt;
        let mut f = snapshot;
        f.flush().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        f.sync_all()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        drop(f);
        let store = self.store().clone();
        let dir = images_dir(&store);
        let path = keep_image(&dir, &dir.join(INCOMING), meta)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            "installing an image of the tables from the primary (initial sync)"
        );
        let pos = store
            .install_image(path)
            .await
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e.message))?;
        // Raft's log now begins after the image (or still holds the frames after it).
        *self.log.inner.last.lock().unwrap() = last_entry(&store)?;
        match position_id(pos.lsn, pos.term, pos.leader) {
            Some(id) => self.log.record_purged(id),
            None => Ok(()),
        }
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        let dir = images_dir(self.store());
        let found = tokio::task::spawn_blocking(move || current_image(&dir))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let Some((meta, path)) = found else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

/// Where a member keeps its image of the tables (Raft's snapshot): `<id>.img` and its
/// Raft metadata `<id>.meta`; one received is written to [`INCOMING`] first.
fn images_dir(store: &Store) -> PathBuf {
    store.path().join("raft-snapshot")
}

const INCOMING: &str = "incoming.img";

fn snap_err(verb: ErrorVerb, e: impl ToString) -> SE {
    io_err(ErrorSubject::Snapshot(None), verb, e)
}

/// A file name for a snapshot id (which openraft passes around as text).
fn image_name(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Makes the image at `from` this member's current one (with `meta` beside it), and
/// deletes any older one. Returns its path.
async fn keep_image(
    dir: &std::path::Path,
    from: &std::path::Path,
    meta: &SnapshotMeta<NodeId, Member>,
) -> io::Result<PathBuf> {
    let dir = dir.to_path_buf();
    let from = from.to_path_buf();
    let meta = meta.clone();
    tokio::task::spawn_blocking(move || {
        let name = image_name(&meta.snapshot_id);
        let img = dir.join(format!("{name}.img"));
        let meta_path = dir.join(format!("{name}.meta"));
        std::fs::rename(&from, &img)?;
        let b = crate::encode(&meta).map_err(io::Error::other)?;
        let tmp = meta_path.with_extension("tmp");
        std::fs::write(&tmp, b)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &meta_path)?;
        for e in std::fs::read_dir(&dir)?.flatten() {
            let p = e.path();
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if stem != name && p != dir.join(INCOMING) {
                let _ = std::fs::remove_file(&p);
            }
        }
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(img)
    })
    .await
    .map_err(io::Error::other)?
}

/// This member's current image and its metadata, if it has one.
fn current_image(
    dir: &std::path::Path,
) -> io::Result<Option<(SnapshotMeta<NodeId, Member>, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut best: Option<(SnapshotMeta<NodeId, Member>, PathBuf)> = None;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("meta") {
            continue;
        }
        let img = p.with_extension("img");
        if !img.exists() {
            continue;
        }
        let meta: SnapshotMeta<NodeId, Member> =
            crate::decode(&std::fs::read(&p)?).map_err(io::Error::other)?;
        if best
            .as_ref()
            .is_none_or(|(b, _)| b.last_log_id < meta.last_log_id)
        {
            best = Some((meta, img));
        }
    }
    Ok(best)
}

/// Takes images of the tables (Raft's snapshots), when the oplog's bounds want log
/// frames released (see `crate::ReplSet`).
pub struct ImageBuilder {
    log: LogStore,
}

impl RaftSnapshotBuilder<TypeConfig> for ImageBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        let store = self.log.inner.store.clone();
        let dir = images_dir(&store);
        let started = std::time::Instant::now();
        let (info, tmp) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let tmp = dir.join("building.img");
            let f = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let info = store
                .write_image(&mut w, &format!("setting:{MEMBERSHIP_SETTING}"))
                .map_err(|e| e.message)?;
            let f = w.into_inner().map_err(|e| e.to_string())?;
            f.sync_all().map_err(|e| e.to_string())?;
            Ok::<_, String>((info, tmp))
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let pos = info.pos;
        let last_log_id = position_id(pos.lsn, pos.term, pos.leader);
        let last_membership = match &info.wanted_meta {
            Some(v) => membership_of(&bson::from_slice(v).map_err(log_err)?)?,
            None => StoredMembership::default(),
        };
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!("{}-{}-{millis}", pos.lsn, pos.term),
        };
        let dir = images_dir(&self.log.inner.store);
        let img = keep_image(&dir, &tmp, &meta)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(
            lsn = pos.lsn,
            records = info.records,
            mb = info.bytes as f64 / 1e6,
            ms = started.elapsed().as_millis() as u64,
            "took an image of the tables (a Raft snapshot)"
        );
        let f = tokio::fs::File::open(&img)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}
