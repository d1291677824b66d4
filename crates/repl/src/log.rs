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
        let last = store
            .last_frame()
            .map_err(|e| e.message)?
            .map(|h| (log_id(h.lsn, h.stamp), h.last_ts));
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
        let frames = self
            .inner
            .store
            .read_frames(start + 1, end, CHUNK_BYTES)
            .map_err(|e| log_err(e.message))?;
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
        let last = self
            .inner
            .store
            .last_frame()
            .map_err(|e| log_err(e.message))?
            .map(|h| (log_id(h.lsn, h.stamp), h.last_ts));
        *self.inner.last.lock().unwrap() = last;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SE> {
        // Raft no longer needs these entries; change stream history keeps them until the
        // oplog's own size and age bounds drop their segments.
        self.inner.meta.lock().unwrap().purged = Some(log_id);
        self.inner
            .cache
            .lock()
            .unwrap()
            .retain(|&k, _| k > log_id.index);
        self.save_meta()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
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

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = NoSnapshots;

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
        NoSnapshots
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<std::io::Cursor<Vec<u8>>>, SE> {
        Err(no_snapshots())
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, Member>,
        _snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), SE> {
        Err(no_snapshots())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SE> {
        Ok(None)
    }
}

fn no_snapshots() -> SE {
    io_err(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Read,
        "this member cannot take or install snapshots: members catch up from the log, which is kept whole",
    )
}

/// Snapshots are never taken (the snapshot policy is `Never` and the log is never purged
/// for Raft's sake): a member that joins or falls behind catches up from the log.
pub struct NoSnapshots;

impl RaftSnapshotBuilder<TypeConfig> for NoSnapshots {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SE> {
        Err(no_snapshots())
    }
}
