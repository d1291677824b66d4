//! The change hub: one tailer decodes each committed oplog entry once and shares it with
//! every stream.
//!
//! The tailer wakes when a batch commits, reads the new entries from the log's in-memory
//! tail, decodes them, and appends them to a shared window of recent entries bounded in
//! bytes. Streams
//! read that window by position; a stream whose position has fallen out of the window (a
//! laggard) reads the oplog itself from its position, so it holds no memory and slows no
//! one. Writers never wait for streams: the commit pipeline only bumps a watch channel.
//! Idle streams sleep on that channel and cost no CPU.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bson::Timestamp;
use errors::Result;
use storage::{OplogEntry, Store, oplog::ts_key};
use tokio::sync::watch;

use crate::event::SharedCache;

/// Bytes of decoded entries the shared window keeps: 64 MiB, enough for about 200,000
/// small-document events, so a stream that is a few seconds behind at 50,000 events/s
/// still reads from memory.
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;

/// A decoded entry with its encoded size, and the event it makes for default-option
/// streams once the first such stream has built it.
pub struct Decoded {
    pub entry: OplogEntry,
    pub bytes: usize,
    pub shared: SharedCache,
}

impl Decoded {
    fn new(entry: OplogEntry, bytes: usize) -> Decoded {
        Decoded {
            entry,
            bytes,
            shared: SharedCache::new(),
        }
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
    /// Serialises catching up, which the tailer and readers may both start.
    catching_up: Mutex<()>,
    /// Open streams; while there are none the tailer sleeps.
    open_streams: Arc<AtomicUsize>,
    /// Wakes the sleeping tailer when the first stream opens.
    first_stream: tokio::sync::Notify,
}

/// Counts an open stream for as long as it lives.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// Starts the tailer for a store.
    pub fn start(store: Store) -> Arc<Hub> {
        let now = store.committed_ts();
        let (tailed, _) = watch::channel(now);
        let hub = Arc::new(Hub {
            store: store.clone(),
            window: RwLock::new(Window {
                entries: VecDeque::new(),
                bytes: 0,
                covered_from: ts_key(now) + 1,
            }),
            tailed,
            catching_up: Mutex::new(()),
            open_streams: Arc::new(AtomicUsize::new(0)),
            first_stream: tokio::sync::Notify::new(),
        });
        let h = hub.clone();
        let mut commits = store.subscribe();
        tokio::spawn(async move {
            loop {
                // With no stream open, decoding would be wasted work, and so would waking
                // up for every commit: sleep until a stream opens ([`Hub::register`] moves
                // the window to the present first; a stream that starts earlier reads the
                // log itself).
                if h.open_streams.load(Ordering::SeqCst) == 0 {
                    h.first_stream.notified().await;
                    commits.mark_unchanged();
                    continue;
                }
                if let Err(e) = h.catch_up() {
                    tracing::error!(error = %e, "change hub could not read the oplog");
                }
                if commits.changed().await.is_err() {
                    break;
                }
            }
        });
        hub
    }

    /// Makes sure every write acknowledged so far is in the window, so that a stream
    /// opened (or resumed) right after a write sees it without waiting for the tailer.
    ///
    /// # Errors
    /// On storage failure.
    pub fn sync(&self) -> Result<()> {
        if ts_key(self.tailed()) < ts_key(self.store.committed_ts()) {
            self.catch_up()?;
        }
        Ok(())
    }

    fn skip_ahead(&self) -> Result<()> {
        let _guard = self.catching_up.lock().unwrap();
        let now = self.store.committed_ts();
        let mut w = self.window.write().unwrap();
        w.entries.clear();
        w.bytes = 0;
        w.covered_from = ts_key(now) + 1;
        drop(w);
        self.tailed.send_replace(now);
        Ok(())
    }

    fn catch_up(&self) -> Result<()> {
        let _guard = self.catching_up.lock().unwrap();
        let from = *self.tailed.borrow();
        let upto = self.store.committed_ts();
        let mut last = from;
        let mut fresh = Vec::new();
        // New entries come from the log's in-memory tail, as encoded: no disk read.
        for (ts, bytes) in self
            .store
            .read_log(ts_key(from), ts_key(upto), usize::MAX)?
        {
            let entry = OplogEntry::from_bytes(&bytes)?;
            fresh.push(Arc::new(Decoded::new(entry, bytes.len())));
            last = storage::oplog::key_ts(ts);
        }
        if fresh.is_empty() {
            return Ok(());
        }
        {
            let mut w = self.window.write().unwrap();
            for d in fresh {
                w.bytes += d.bytes;
                w.entries.push_back(d);
            }
            while w.bytes > WINDOW_BYTES && w.entries.len() > 1 {
                if let Some(old) = w.entries.pop_front() {
                    w.bytes -= old.bytes;
                    w.covered_from = ts_key(old.entry.ts) + 1;
                }
            }
        }
        self.tailed.send_replace(last);
        Ok(())
    }

    /// Registers an open stream (the tailer decodes only while some are open).
    pub fn register(&self) -> StreamSlot {
        if self.open_streams.fetch_add(1, Ordering::SeqCst) == 0 {
            // The tailer slept through the commits since the last stream closed: start
            // the window at the present rather than decoding them all.
            if let Err(e) = self.skip_ahead() {
                tracing::error!(error = %e, "change hub could not read the oplog");
            }
            self.first_stream.notify_one();
        }
        StreamSlot(self.open_streams.clone())
    }

    /// The last clusterTime every stream can read up to.
    pub fn tailed(&self) -> Timestamp {
        *self.tailed.borrow()
    }

    /// A receiver that changes as the tail advances.
    pub fn subscribe(&self) -> watch::Receiver<Timestamp> {
        self.tailed.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Up to `limit` entries with clusterTime at or after `from` (a `ts_key`) and at or
    /// before `upto`, from the window, or from the oplog when `from` is older than the window.
    ///
    /// # Errors
    /// On storage failure.
    pub fn read(&self, from: u64, upto: Timestamp, limit: usize) -> Result<Vec<Arc<Decoded>>> {
        let upto = ts_key(upto);
        {
            let w = self.window.read().unwrap();
            if from >= w.covered_from {
                let start = w.entries.partition_point(|d| ts_key(d.entry.ts) < from);
                return Ok(w
                    .entries
                    .iter()
                    .skip(start)
                    .take_while(|d| ts_key(d.entry.ts) <= upto)
                    .take(limit)
                    .cloned()
                    .collect());
            }
        }
        // A laggard: read the log directly, decoding for this stream alone.
        let mut out = Vec::new();
        for (_, bytes) in self.store.read_log(from.saturating_sub(1), upto, limit)? {
            out.push(Arc::new(Decoded::new(
                OplogEntry::from_bytes(&bytes)?,
                bytes.len(),
            )));
        }
        Ok(out)
    }
}
