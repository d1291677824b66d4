//! One open change stream: its position, its resume point and its batches.

use std::collections::VecDeque;

use bson::{Bson, Document, Timestamp};
use errors::{ErrorCode, MongoError, Result, labels};
use query::pipeline::Env;
use storage::oplog::{key_ts, ts_key};

use crate::event::{EventPos, Lookup, events_for_shared};
use crate::hub::Hub;
use crate::resume_token::{ResumeTokenData, TokenType};
use crate::spec::{Start, StreamSpec};

/// The largest event a stream returns (MongoDB's BSON object limit).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// Oplog entries read from the hub per step.
const READ_CHUNK: usize = 1024;
/// A batch stops growing past this many bytes of events (MongoDB's 16 MiB reply limit,
/// less room for the reply's envelope).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;

/// An open change stream.
pub struct ChangeStream {
    spec: StreamSpec,
    /// The next oplog key to read (inclusive).
    next: u64,
    /// Events at or before this position are skipped (the resume point).
    skip_until: Option<EventPos>,
    /// Events produced but not yet returned (a batch filled up mid-entry).
    leftover: VecDeque<(Document, bool)>,
    pbrt: Document,
    /// When set, the resume token is the high-water mark at this oplog key, and `pbrt`
    /// is stale. Kept as a key so that skipping entries costs no token encoding.
    pbrt_hwm: Option<u64>,
    invalidated: bool,
    _slot: crate::hub::StreamSlot,
}

impl ChangeStream {
    /// Opens a stream at the start its spec asks for.
    ///
    /// # Errors
    /// ChangeStreamHistoryLost when the start is older than the retained oplog.
    pub fn open(spec: StreamSpec, hub: &Hub) -> Result<ChangeStream> {
        let now = hub.store().committed_ts();
        let (next, skip_until, pbrt) = match &spec.start {
            Start::Now => {
                let n = ts_key(now) + 1;
                (
                    n,
                    None,
                    ResumeTokenData::high_water_mark(key_ts(n)).to_document(),
                )
            }
            Start::AtTime(t) => (
                ts_key(*t),
                None,
                ResumeTokenData::high_water_mark(*t).to_document(),
            ),
            // A high-water mark means "everything from its time on": it sorts before every
            // event at that time, so nothing at that time is skipped.
            Start::After { token, .. } if token.token_type == TokenType::HighWaterMark => {
                (ts_key(token.cluster_time), None, token.to_document())
            }
            Start::After { token, .. } => (
                ts_key(token.cluster_time),
                Some(EventPos::of_token(token)),
                token.to_document(),
            ),
        };
        if !matches!(spec.start, Start::Now) {
            let bounds = hub.store().snapshot()?.oplog_bounds()?;
            if let Some((first, _)) = bounds {
                if next < ts_key(first) {
                    return Err(history_lost());
                }
            }
        }
        Ok(ChangeStream {
            spec,
            next,
            skip_until,
            leftover: VecDeque::new(),
            pbrt,
            pbrt_hwm: None,
            invalidated: false,
            _slot: hub.register(),
        })
    }

    /// The stream's options.
    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    /// The `postBatchResumeToken` for the batch just returned.
    pub fn post_batch_resume_token(&self) -> Document {
        match self.pbrt_hwm {
            Some(k) => ResumeTokenData::high_water_mark(key_ts(k)).to_document(),
            None => self.pbrt.clone(),
        }
    }

    /// Whether the stream has delivered its `invalidate` and is over.
    pub fn is_finished(&self) -> bool {
        self.invalidated && self.leftover.is_empty()
    }

    /// Reads what is available now, up to `max` events. Never waits.
    ///
    /// # Errors
    /// ChangeStreamFatalError (280) when the pipeline changes `_id`, BSONObjectTooLarge for an
    /// oversized event, ChangeStreamHistoryLost when the oplog was truncated past the
    /// stream's position, and lookup failures.
    pub fn next_batch(
        &mut self,
        hub: &Hub,
        lookup: &dyn Lookup,
        env: &dyn Env,
        max: usize,
    ) -> Result<Vec<Document>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let max = max.max(1);
        self.drain_leftover(&mut batch, &mut bytes, max)?;
        hub.sync()?;
        let upto = hub.tailed();
        while !self.invalidated
            && batch.len() < max
            && bytes < MAX_BATCH_BYTES
            && self.next <= ts_key(upto)
        {
            let entries = hub.read(self.next, upto, READ_CHUNK)?;
            if entries.is_empty() {
                // Nothing between our position and the tail: either the oplog was truncated
                // past us, or there is simply nothing more.
                if let Some((first, _)) = hub.store().snapshot()?.oplog_bounds()? {
                    if self.next < ts_key(first) {
                        return Err(history_lost());
                    }
                }
                self.next = ts_key(upto) + 1;
                break;
            }
            for d in entries {
                let key = ts_key(d.entry.ts);
                let mut events = VecDeque::new();
                let pre = self.spec.pipeline.as_ref().and_then(|p| p.leading_match());
                for ev in events_for_shared(&d.entry, &d.shared, &self.spec, lookup, pre)? {
                    if self.skip_until.is_some_and(|s| ev.pos <= s) {
                        continue;
                    }
                    let original_id = ev.doc.get("_id").cloned();
                    let out = match &self.spec.pipeline {
                        Some(p) => p.apply_one(ev.doc, env)?,
                        None => Some(ev.doc),
                    };
                    if let Some(out) = &out {
                        if out.get("_id") != original_id.as_ref() {
                            return Err(MongoError::new(
                                ErrorCode::ChangeStreamFatalError,
                                "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
                            )
                            .with_label(labels::NON_RESUMABLE_CHANGE_STREAM_ERROR));
                        }
                    }
                    if ev.invalidate {
                        self.invalidated = true;
                    }
                    if let Some(out) = out {
                        events.push_back((out, ev.invalidate));
                    }
                }
                self.next = key + 1;
                if self
                    .skip_until
                    .is_some_and(|s| s.ts <= (d.entry.ts.time, d.entry.ts.increment))
                {
                    self.skip_until = None;
                }
                let had_events = !events.is_empty();
                self.leftover.extend(events);
                self.drain_leftover(&mut batch, &mut bytes, max)?;
                if !had_events {
                    self.pbrt_hwm = Some(key + 1);
                }
                if self.invalidated || batch.len() >= max || bytes >= MAX_BATCH_BYTES {
                    break;
                }
            }
        }
        if batch.is_empty() && self.leftover.is_empty() && !self.invalidated {
            let later = match self.pbrt_hwm {
                Some(k) => self.next > k,
                None => hwm_after(
                    &self.pbrt,
                    &ResumeTokenData::high_water_mark(key_ts(self.next)),
                ),
            };
            if self.skip_until.is_none() && later {
                self.pbrt_hwm = Some(self.next);
            }
        }
        Ok(batch)
    }

    /// Moves produced events into the batch while it has room, checking each against the
    /// BSON size limit as it is measured.
    fn drain_leftover(
        &mut self,
        batch: &mut Vec<Document>,
        bytes: &mut usize,
        max: usize,
    ) -> Result<()> {
        while batch.len() < max && *bytes < MAX_BATCH_BYTES {
            let Some((doc, _)) = self.leftover.pop_front() else {
                break;
            };
            let n = bson::to_vec(&doc).map_or(usize::MAX, |b| b.len());
            if n > MAX_EVENT_BYTES {
                return Err(MongoError::new(
                    ErrorCode::BSONObjectTooLarge,
                    format!(
                        "Executor error during getMore :: caused by :: BSONObj size: {n} is invalid. Size must be between 0 and 16793600(16MB)"
                    ),
                ));
            }
            *bytes += n;
            if let Some(Bson::Document(id)) = doc.get("_id") {
                self.pbrt = id.clone();
                self.pbrt_hwm = None;
            }
            batch.push(doc);
        }
        Ok(())
    }
}

/// Whether a high-water mark is later than the current token (tokens order as strings).
fn hwm_after(current: &Document, hwm: &ResumeTokenData) -> bool {
    let cur = current.get_str("_data").unwrap_or("");
    let new = hwm.to_document();
    new.get_str("_data").unwrap_or("") > cur
}

fn history_lost() -> MongoError {
    MongoError::new(
        ErrorCode::ChangeStreamHistoryLost,
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    )
}

/// The clusterTime a stream will report when idle, for tests.
pub fn next_time(s: &ChangeStream) -> Timestamp {
    key_ts(s.next)
}
