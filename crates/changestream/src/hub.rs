//! The change hub: each committed oplog entry is decoded once and shared with
//! every stream.
//!
//! After each commit the tailer (or the first stream to read, whichever comes first)
//! catches the window up: it reads the new entries from the log's in-memory tail, decodes
//! them once, appends them to a shared window of recent entries bounded in memory, and
//! routes each to the inboxes of the attached streams that can admit it (see
//! [`crate::route`]). A stream that is not attached (opening, or fallen behind) reads the
//! window by position, or the log itself when its position is older than the window, so
//! a laggard holds no shared memory and makes no one else decode what it skips. Writers
//! never wait for streams: the commit pipeline only bumps a watch channel. Idle streams
//! sleep on their inboxes and cost nothing per write; with no stream open, nothing is
//! decoded at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bson::Timestamp;
use errors::MongoError;
use errors::Result;
use storage::{EntryHead, OplogEntry, Store, oplog::ts_key};
use tokio::sync::watch;

use crate::event::SharedCache;
use crate::route::{Route, Router, Subscription, Taken};
use crate::spec::StreamSpec;

/// Entries a stream may be behind the tail and still attach to the router: the router
/// hands it those entries from the window as it attaches.
const ATTACH_BACKLOG: usize = 1024;

/// Memory the shared window's decoded entries may take (as [`Decoded::cost`] estimates
/// it): 64 MiB, about 30,000 small-document entries, so a stream a moment behind reads
/// from memory; streams further behind read the log.
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;

/// A committed entry as the hub shares it: its encoded bytes and its head (time, kind,
/// namespace), its documents converted only if some stream needs them, and the event it
/// makes for default-option streams once the first such stream has built it.
pub struct Decoded {
    pub head: EntryHead,
    raw: Arc<[u8]>,
    /// The whole entry, converted on first use (non-default stream options, DDL).
    entry: OnceLock<std::result::Result<OplogEntry, MongoError>>,
    /// The memory the entry is reckoned to take: see [`Decoded::cost`].
    pub bytes: usize,
    pub shared: SharedCache,
}

impl Decoded {
    /// Reads an encoded entry's head.
    ///
    /// # Errors
    /// A corrupt entry.
    pub fn new(raw: Arc<[u8]>) -> Result<Decoded> {
        Ok(Decoded {
            head: EntryHead::parse(&raw)?,
            bytes: Decoded::cost(raw.len()),
            raw,
            entry: OnceLock::new(),
            shared: SharedCache::new(),
        })
    }

    /// The entry's clusterTime.
    pub fn ts(&self) -> Timestamp {
        self.head.ts
    }

    /// The encoded entry.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The entry with its documents converted (once).
    ///
    /// # Errors
    /// A corrupt entry.
    pub fn entry(&self) -> Result<&OplogEntry> {
        self.entry
            .get_or_init(|| OplogEntry::from_head(&self.head, &self.raw))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The memory an entry of `encoded` bytes takes once decoded with its shared event:
    /// the entry's and the event's documents (a `Document` takes about 1.5 times its BSON,
    /// more for small fields) and the event's encoded bytes; reckoned as four times the
    /// entry's size plus 1 KiB, which measured small-document entries do not exceed.
    pub fn cost(encoded: usize) -> usize {
        encoded * 4 + 1024
    }
}

struct Window {
    entries: VecDeque<Arc<Decoded>>,
    bytes: usize,
    /// The entries before this time (exclusive) are not in the window.
    covered_from: u64,
}

/// The shared tail of the oplog.
pub struct Hub {
    store: Store,
    window: RwLock<Window>,
    /// The last clusterTime the window holds (all entries up to it are decoded).
    tailed: watch::Sender<Timestamp>,
    /// Serialises catching up, which any reader may start.
    catching_up: Mutex<()>,
    /// Open streams; the window is moved to the present when the first one opens.
    open_streams: Arc<AtomicUsize>,
    /// Streams attached for push delivery, indexed by what they can admit. Locked while
    /// entries are routed and `tailed` moves, so that attaching is exact.
    router: Arc<Mutex<Router>>,
    /// Bytes held by all inboxes (an entry counted once per inbox).
    queued: AtomicUsize,
}

/// Counts an open stream for as long as it lives.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// The hub of a store.
    pub fn start(store: Store) -> Arc<Hub> {
        let now = store.majority_ts();
        let (tailed, _) = watch::channel(now);
        Arc::new(Hub {
            store: store.clone(),
            window: RwLock::new(Window {
                entries: VecDeque::new(),
                bytes: 0,
                covered_from: ts_key(now) + 1,
            }),
            tailed,
            catching_up: Mutex::new(()),
            open_streams: Arc::new(AtomicUsize::new(0)),
            router: Arc::new(Mutex::new(Router::default())),
            queued: AtomicUsize::new(0),
        })
    }

    /// Starts the tailer: a task that catches the window up after each commit while
    /// streams are attached, routing the new entries to their inboxes. (Streams that read
    /// history catch up themselves as they read.) Needs a Tokio runtime; ends with the hub.
    pub fn spawn_tailer(self: &Arc<Hub>) {
        let weak = Arc::downgrade(self);
        let mut commits = self.store.subscribe_majority();
        tokio::spawn(async move {
            while commits.changed().await.is_ok() {
                let Some(hub) = weak.upgrade() else { break };
                if hub.router.lock().unwrap().is_empty() {
                    continue;
                }
                if let Err(e) = hub.sync() {
                    tracing::error!(error = %e, "change hub could not read the oplog");
                }
            }
        });
    }

    /// A stream's (not yet attached) place in the router.
    pub fn subscription(&self, spec: &StreamSpec) -> Subscription {
        let id = self.router.lock().unwrap().new_id();
        Subscription {
            id,
            route: Route::of(spec),
            inbox: Arc::default(),
            router: self.router.clone(),
        }
    }

    /// Attaches a stream whose next entry to read is `next` for push delivery: from now on
    /// every entry it can admit goes to its inbox. `false` when it is too far behind (it
    /// goes on reading history).
    pub fn attach(&self, sub: &Subscription, next: u64) -> bool {
        let mut router = self.router.lock().unwrap();
        let tailed = ts_key(self.tailed());
        let backlog = if next > tailed {
            Vec::new()
        } else {
            let w = self.window.read().unwrap();
            if next < w.covered_from {
                return false;
            }
            let start = w.entries.partition_point(|d| ts_key(d.ts()) < next);
            if w.entries.len() - start > ATTACH_BACKLOG {
                return false;
            }
            w.entries
                .iter()
                .skip(start)
                .take_while(|d| ts_key(d.ts()) <= tailed)
                .cloned()
                .collect()
        };
        router.attach(sub.id, &sub.inbox, &sub.route, &backlog, &self.queued);
        true
    }

    /// The next entry routed to a stream, or what it must do instead.
    pub fn pop(&self, sub: &Subscription) -> Taken {
        sub.inbox.pop(&self.queued)
    }

    /// Makes sure every write acknowledged so far is in the window, so that a stream
    /// opened (or resumed) right after a write sees it.
    ///
    /// # Errors
    /// On storage failure.
    pub fn sync(&self) -> Result<()> {
        if ts_key(self.tailed()) < ts_key(self.store.majority_ts()) {
            self.catch_up()?;
        }
        Ok(())
    }

    fn skip_ahead(&self) -> Result<()> {
        let _guard = self.catching_up.lock().unwrap();
        let now = self.store.majority_ts();
        let mut w = self.window.write().unwrap();
        w.entries.clear();
        w.bytes = 0;
        w.covered_from = ts_key(now) + 1;
        drop(w);
        let _router = self.router.lock().unwrap();
        self.tailed.send_replace(now);
        Ok(())
    }

    fn catch_up(&self) -> Result<()> {
        /// Entries decoded per step, so that a long gap never sits in memory at once.
        const CHUNK: usize = 10_000;
        let _guard = self.catching_up.lock().unwrap();
        let upto = self.store.majority_ts();
        loop {
            let from = *self.tailed.borrow();
            // New entries come from the log's in-memory tail, as encoded: no disk read.
            let got = self.store.read_log(ts_key(from), ts_key(upto), CHUNK)?;
            let Some(last) = got.last().map(|(ts, _)| storage::oplog::key_ts(*ts)) else {
                return Ok(());
            };
            let full = got.len() == CHUNK;
            let mut fresh = Vec::with_capacity(got.len());
            for (_, bytes) in got {
                fresh.push(Arc::new(Decoded::new(bytes)?));
            }
            {
                let mut w = self.window.write().unwrap();
                for d in &fresh {
                    w.bytes += d.bytes;
                    w.entries.push_back(d.clone());
                }
                while w.bytes > WINDOW_BYTES && w.entries.len() > 1 {
                    if let Some(old) = w.entries.pop_front() {
                        w.bytes -= old.bytes;
                        w.covered_from = ts_key(old.ts()) + 1;
                    }
                }
            }
            // Routed before `tailed` moves: a stream that saw `tailed` at T has every entry
            // up to T that it can admit in its inbox.
            let mut router = self.router.lock().unwrap();
            for d in &fresh {
                router.route(d, &self.queued);
            }
            self.tailed.send_replace(last);
            drop(router);
            if !full {
                return Ok(());
            }
        }
    }

    /// Registers an open stream.
    pub fn register(&self) -> StreamSlot {
        if self.open_streams.fetch_add(1, Ordering::SeqCst) == 0 {
            // Nobody read the commits since the last stream closed: start the window at
            // the present rather than decoding them all (a stream that starts earlier
            // reads the log itself).
            if let Err(e) = self.skip_ahead() {
                tracing::error!(error = %e, "change hub could not read the oplog");
            }
        }
        StreamSlot(self.open_streams.clone())
    }

    /// The last clusterTime every stream can read up to.
    pub fn tailed(&self) -> Timestamp {
        *self.tailed.borrow()
    }

    /// A receiver that changes whenever a batch commits: a waiting stream wakes on it and
    /// catches the window up itself ([`Hub::sync`]), with no tailer task in between (on
    /// this machine each task hand-off cost more than decoding the entry).
    pub fn subscribe(&self) -> watch::Receiver<Timestamp> {
        self.store.subscribe_majority()
    }

    /// Whether a reader at `from` is at least `entries` entries behind what the window
    /// holds, or behind the window altogether (a laggard reading the log).
    pub fn far_behind(&self, from: u64, entries: usize) -> bool {
        self.window_count_from(from).is_none_or(|n| n >= entries)
    }

    /// How many entries the window holds at or after `from`; `None` when `from` is older
    /// than the window.
    fn window_count_from(&self, from: u64) -> Option<usize> {
        let w = self.window.read().unwrap();
        if from < w.covered_from {
            return None;
        }
        let start = w.entries.partition_point(|d| ts_key(d.ts()) < from);
        Some(w.entries.len() - start)
    }

    /// How many committed entries have a clusterTime key at or after `from`, counting at
    /// most `cap` (then `(cap, true)`): from the window when it reaches back that far, else
    /// by reading the log.
    ///
    /// # Errors
    /// On storage failure.
    pub fn entries_from(&self, from: u64, cap: usize) -> Result<(usize, bool)> {
        self.sync()?;
        let upto = ts_key(self.store.majority_ts());
        if let Some(n) = self.window_count_from(from) {
            return Ok((n.min(cap), n > cap));
        }
        let mut n = 0usize;
        let mut after = from.saturating_sub(1);
        while n < cap {
            let got = self.store.read_log(after, upto, 10_000.min(cap - n))?;
            let Some((last, _)) = got.last() else { break };
            after = *last;
            n += got.len();
        }
        Ok((n, n >= cap))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Up to `limit` entries with clusterTime at or after `from` (a `ts_key`), and the
    /// clusterTime they were read up to: from the window (caught up first) when `from` is
    /// in it, else from the log up to the newest commit, decoded for this reader alone and
    /// without making the window decode what the reader skips over.
    ///
    /// # Errors
    /// On storage failure.
    pub fn read(&self, from: u64, limit: usize) -> Result<(Vec<Arc<Decoded>>, Timestamp)> {
        if from >= self.window.read().unwrap().covered_from {
            self.sync()?;
            let upto = self.tailed();
            let w = self.window.read().unwrap();
            // Catching up may have moved the window past `from`: then read the log.
            if from >= w.covered_from {
                let start = w.entries.partition_point(|d| ts_key(d.ts()) < from);
                let got = w
                    .entries
                    .iter()
                    .skip(start)
                    .take_while(|d| ts_key(d.ts()) <= ts_key(upto))
                    .take(limit)
                    .cloned()
                    .collect();
                return Ok((got, upto));
            }
        }
        // A laggard: read the log directly, decoding for this stream alone.
        let upto = self.store.majority_ts();
        let mut out = Vec::new();
        for (_, bytes) in self
            .store
            .read_log(from.saturating_sub(1), ts_key(upto), limit)?
        {
            out.push(Arc::new(Decoded::new(bytes)?));
        }
        Ok((out, upto))
    }
}
