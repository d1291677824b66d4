//! One open change stream: its position, its resume point and its batches.

use std::collections::VecDeque;
use std::sync::Arc;

use bson::{Bson, Document};
use errors::{ErrorCode, MongoError, Result, labels};
use query::pipeline::Env;
use storage::oplog::{key_ts, ts_key};

use crate::event::{Encoded, EventDoc, EventPos, Lookup, events_for_shared};
use crate::hub::{Decoded, Hub};
use crate::resume_token::{ResumeTokenData, TokenType};
use crate::route::{Inbox, Subscription, Taken};
use crate::spec::{Start, StreamSpec};

/// The largest event a stream returns (MongoDB's BSON object limit).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;
/// Oplog entries read from the hub per step.
const READ_CHUNK: usize = 1024;
/// A batch's events array, counted as it will be encoded (each event with its element
/// header), plus the `postBatchResumeToken` that repeats the last event's `_id`, stays
/// within MongoDB's BSONObjMaxUserSize; the rest of the reply's envelope fits in the 16 KiB
/// the message limit (BSONObjMaxInternalSize) allows beyond it.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// An open change stream.
pub struct ChangeStream {
    spec: StreamSpec,
    /// The next oplog key to read (inclusive).
    next: u64,
    /// Events at or before this position are skipped (the resume point).
    skip_until: Option<EventPos>,
    /// Events produced but not yet returned (a batch filled up mid-entry).
    leftover: VecDeque<Arc<Encoded>>,
    pbrt: Document,
    /// The last event put in the batch being built: its token becomes `pbrt` when the batch
    /// is finished (copying the token for every event cost as much as the event itself).
    pbrt_event: Option<Arc<Encoded>>,
    /// When set, the resume token is the high-water mark at this oplog key, and `pbrt`
    /// is stale. Kept as a key so that skipping entries costs no token encoding.
    pbrt_hwm: Option<u64>,
    invalidated: bool,
    /// Whether the pipeline is only `$match` stages (or absent): the stream then sends
    /// shared events unchanged, reading them in place, and the reply copies their bytes.
    in_place: bool,
    /// The stream's place in the hub's router: attached, it is pushed the entries it can
    /// admit; detached (opening, or fallen behind), it reads from its position.
    sub: Subscription,
    _slot: crate::hub::StreamSlot,
}

impl ChangeStream {
    /// Opens a stream at the start its spec asks for.
    ///
    /// # Errors
    /// ChangeStreamHistoryLost when the start is older than the retained oplog.
    pub fn open(spec: StreamSpec, hub: &Hub) -> Result<ChangeStream> {
        let now = hub.store().majority_ts();
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
        if !matches!(spec.start, Start::Now) && lost_before(hub, next) {
            return Err(history_lost());
        }
        let sub = hub.subscription(&spec);
        let in_place = spec
            .pipeline
            .as_ref()
            .is_none_or(query::pipeline::Pipeline::only_matches);
        Ok(ChangeStream {
            sub,
            in_place,
            spec,
            next,
            skip_until,
            leftover: VecDeque::new(),
            pbrt,
            pbrt_event: None,
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

    /// Whether the stream is catching up: at least a read chunk behind, or behind the
    /// hub's window. Its next batch is a full one, built from history.
    pub fn catching_up(&self, hub: &Hub) -> bool {
        !self.leftover.is_empty() || hub.far_behind(self.position(hub), READ_CHUNK)
    }

    /// The inbox to wait on, while the stream is attached for push delivery.
    pub fn inbox(&self) -> Option<&std::sync::Arc<Inbox>> {
        self.sub.inbox().attached().then(|| self.sub.inbox())
    }

    /// The next oplog key the stream has to look at: an attached stream is past every entry
    /// the router did not give it.
    fn position(&self, hub: &Hub) -> u64 {
        let inbox = self.sub.inbox();
        if !inbox.attached() {
            return self.next;
        }
        inbox
            .first_key()
            .unwrap_or_else(|| ts_key(hub.tailed()) + 1)
            .max(self.next)
    }

    /// Where the stream stands, for `$currentOp`: its resume token and the clusterTime it
    /// reads from next, how far behind the newest commit it is (entries and seconds), and
    /// the events produced but not yet returned.
    pub fn status(&self, hub: &Hub) -> Document {
        const CAP: usize = 1_000_000;
        let newest = hub.store().majority_ts();
        let position = self.position(hub);
        let at = key_ts(position);
        let (behind, capped) = hub.entries_from(position, CAP).unwrap_or((0, false));
        let (inbox_entries, inbox_bytes, pushed) = self.sub.inbox().fill();
        let lag_secs = if behind == 0 {
            0
        } else {
            i64::from(newest.time.saturating_sub(at.time))
        };
        let mut d = bson::doc! {
            "resumeToken": self.post_batch_resume_token(),
            "readsFrom": at,
            "newestCommit": newest,
            "lagEntries": behind as i64,
            "lagSeconds": lag_secs,
            "queuedEvents": self.leftover.len() as i64,
            "queuedBytes": self.leftover.iter().map(|e| e.bytes.len() as i64).sum::<i64>(),
            "invalidated": self.invalidated,
            "pushed": pushed,
            "inboxEntries": inbox_entries as i64,
            "inboxBytes": inbox_bytes as i64,
        };
        if capped {
            d.insert("lagEntriesAtLeast", true);
        }
        d
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
    ) -> Result<Vec<Arc<Encoded>>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let max = max.max(1);
        self.drain_leftover(&mut batch, &mut bytes, max);
        // Only an attached stream needs the window caught up (routing happens there); one
        // reading history reads the log.
        if self.sub.inbox().attached() {
            hub.sync()?;
            // Its inbox may hold entries truncation has since removed: the stream has fallen
            // off history as surely as one reading it (and their images are gone).
            if lost_before(hub, self.position(hub)) {
                return Err(history_lost());
            }
        }
        let upto = hub.tailed();
        // Attached: the inbox holds every entry the stream can admit.
        while !self.invalidated && batch.len() < max && self.leftover.is_empty() {
            match hub.pop(&self.sub) {
                Taken::Entry(Some(d)) => {
                    if ts_key(d.ts()) >= self.next {
                        self.take_entry(&d, lookup, env)?;
                        self.drain_leftover(&mut batch, &mut bytes, max);
                    }
                }
                Taken::Entry(None) => {
                    // Every entry up to `upto` was routed before `upto` was tailed.
                    self.next = self.next.max(ts_key(upto) + 1);
                    return Ok(self.finish_batch(batch));
                }
                // Fallen behind: the entries it dropped are read from history.
                Taken::Detached(k) => {
                    self.next = self.next.max(k);
                    break;
                }
                Taken::Pull => break,
            }
        }
        if self.sub.inbox().attached() {
            return Ok(self.finish_batch(batch));
        }
        // Truncation passed this stream's position: what it has not read is gone, even if
        // the hub's window still holds some of it, and it must not skip silently.
        if lost_before(hub, self.next) {
            return Err(history_lost());
        }
        while !self.invalidated && batch.len() < max && self.leftover.is_empty() {
            let (entries, upto) = hub.read(self.next, READ_CHUNK)?;
            // Truncation may have removed the segment at this position while it was read,
            // and the read gone on from the oldest one left: never a silent gap.
            if lost_before(hub, self.next) {
                return Err(history_lost());
            }
            if entries.is_empty() {
                self.next = self.next.max(ts_key(upto) + 1);
                break;
            }
            for d in entries {
                self.take_entry(&d, lookup, env)?;
                self.drain_leftover(&mut batch, &mut bytes, max);
                // Events that did not fit wait for the next getMore; reading on would only
                // pile up more of them.
                if self.invalidated || batch.len() >= max || !self.leftover.is_empty() {
                    break;
                }
            }
        }
        // Caught up: from here on the router pushes what the stream can admit.
        if !self.invalidated && self.leftover.is_empty() {
            hub.attach(&self.sub, self.next);
        }
        Ok(self.finish_batch(batch))
    }

    /// Sets the high-water mark for a batch that came out empty, and returns the batch.
    fn finish_batch(&mut self, batch: Vec<Arc<Encoded>>) -> Vec<Arc<Encoded>> {
        if let Some(e) = self.pbrt_event.take() {
            self.pbrt.clone_from(e.token());
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
        batch
    }

    /// Runs one entry's events through the stream (resume point, pipeline, size limit) into
    /// `leftover`, and moves the stream past the entry.
    fn take_entry(&mut self, d: &Decoded, lookup: &dyn Lookup, env: &dyn Env) -> Result<()> {
        let key = ts_key(d.ts());
        let pipeline = self.spec.pipeline.as_ref();
        // The pipeline that reshapes events, if it does more than match them.
        let shaping = if self.in_place { None } else { pipeline };
        let pre = shaping.and_then(|p| p.leading_match());
        let before = self.leftover.len();
        for ev in events_for_shared(d, &self.spec, lookup, pre)? {
            if self.skipped(ev.pos) {
                continue;
            }
            if ev.invalidate {
                self.invalidated = true;
            }
            let out = if let Some(p) = shaping {
                let doc = match ev.doc {
                    EventDoc::Shared(sh) => sh.doc().clone(),
                    EventDoc::Own(doc) => doc,
                };
                let original_id = doc.get("_id").cloned();
                let Some(out) = p.apply_one(doc, env)? else {
                    continue;
                };
                if out.get("_id") != original_id.as_ref() {
                    return Err(MongoError::new(
                        ErrorCode::ChangeStreamFatalError,
                        "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
                    )
                    .with_label(labels::NON_RESUMABLE_CHANGE_STREAM_ERROR));
                }
                out
            } else {
                let passes = |doc: &Document| pipeline.map_or(Ok(true), |p| p.passes(doc, env));
                match ev.doc {
                    EventDoc::Shared(sh) => {
                        // Without a pipeline the event's document is never built.
                        if pipeline.is_some() && !passes(sh.doc())? {
                            continue;
                        }
                        let enc = sh.encoded();
                        if enc.bytes.len() <= MAX_EVENT_BYTES {
                            self.leftover.push_back(enc.clone());
                            continue;
                        }
                        // Too large to send whole: split (or refuse) a copy.
                        sh.doc().clone()
                    }
                    EventDoc::Own(doc) => {
                        if !passes(&doc)? {
                            continue;
                        }
                        doc
                    }
                }
            };
            let fragments = self.fit(out, ev.pos)?;
            self.leftover.extend(fragments);
        }
        self.next = key + 1;
        if self
            .skip_until
            .is_some_and(|s| s.ts <= (d.ts().time, d.ts().increment))
        {
            self.skip_until = None;
        }
        if self.leftover.len() == before {
            self.pbrt_hwm = Some(key + 1);
        }
        Ok(())
    }

    /// Whether an event is at or before the resume point. A resume point inside a split
    /// event lets that event through, so that `fit` can drop the fragments already seen.
    fn skipped(&self, pos: EventPos) -> bool {
        match self.skip_until {
            None => false,
            Some(s) if s.fragment.is_some() => {
                pos < EventPos {
                    fragment: None,
                    ..s
                }
            }
            Some(s) => pos <= s,
        }
    }

    /// Measures an event and, if it is over the BSON limit, splits it into fragments when the
    /// pipeline ends with `$changeStreamSplitLargeEvent` (dropping fragments at or before
    /// the resume point), or fails as MongoDB does.
    fn fit(&self, ev: Document, pos: EventPos) -> Result<Vec<Arc<Encoded>>> {
        let n = doc::encoded_len(&ev);
        if n <= MAX_EVENT_BYTES {
            return Ok(vec![Arc::new(Encoded::new(&ev))]);
        }
        if !self.spec.split_large_events {
            return Err(too_large(n));
        }
        let fragments = split_event(&ev)?;
        let mut out = Vec::with_capacity(fragments.len());
        for (i, f) in fragments.into_iter().enumerate() {
            let fpos = EventPos {
                fragment: Some(i as i32),
                ..pos
            };
            if self.skip_until.is_some_and(|s| fpos <= s) {
                continue;
            }
            out.push(Arc::new(Encoded::new(&f)));
        }
        Ok(out)
    }

    /// Moves produced events into the batch while it has room: a batch never exceeds the
    /// reply's byte budget unless one event alone does.
    fn drain_leftover(&mut self, batch: &mut Vec<Arc<Encoded>>, bytes: &mut usize, max: usize) {
        while batch.len() < max {
            let Some(ev) = self.leftover.front() else {
                break;
            };
            let cost = element_bytes(batch.len(), ev.bytes.len());
            if !batch.is_empty() && *bytes + cost + ev.token_bytes > MAX_BATCH_BYTES {
                break;
            }
            let ev = self.leftover.pop_front().expect("front exists");
            *bytes += cost;
            if ev.has_token {
                self.pbrt_event = Some(ev.clone());
                self.pbrt_hwm = None;
            }
            batch.push(ev);
        }
    }
}

/// The bytes an `n`-byte document takes as element `index` of an array: its type byte,
/// its decimal index key and that key's NUL.
fn element_bytes(index: usize, n: usize) -> usize {
    n + 2 + index.checked_ilog10().unwrap_or(0) as usize + 1
}

fn too_large(n: usize) -> MongoError {
    MongoError::new(
        ErrorCode::BSONObjectTooLarge,
        format!(
            "Executor error during getMore :: caused by :: BSONObj size: {n} is invalid. Size must be between 0 and 16793600(16MB)"
        ),
    )
}

/// Splits an oversized event into fragments as `$changeStreamSplitLargeEvent` does: each
/// fragment carries `_id` (the event's token with its fragment number) and
/// `splitEvent: {fragment, of}`, then as many of the event's top-level fields, in order, as
/// fit under the limit.
fn split_event(ev: &Document) -> Result<Vec<Document>> {
    let Some(Bson::Document(id)) = ev.get("_id") else {
        return Err(MongoError::internal("event without a resume token"));
    };
    let token = ResumeTokenData::from_document(id)?;
    // Room for `_id` and `splitEvent` in every fragment.
    const OVERHEAD: usize = 1024;
    let mut groups: Vec<Vec<(&String, &Bson)>> = vec![Vec::new()];
    let mut size = OVERHEAD;
    for (k, v) in ev.iter().filter(|(k, _)| k.as_str() != "_id") {
        let n = bson::to_vec(&bson::doc! {k.clone(): v.clone()}).map_or(usize::MAX, |b| b.len());
        if n + OVERHEAD > MAX_EVENT_BYTES {
            return Err(too_large(n));
        }
        if size + n > MAX_EVENT_BYTES {
            groups.push(Vec::new());
            size = OVERHEAD;
        }
        size += n;
        groups.last_mut().expect("one group").push((k, v));
    }
    let of = groups.len() as i32;
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(i, fields)| {
            let mut t = token.clone();
            t.fragment_num = Some(i as i32);
            let mut d = bson::doc! {"_id": t.to_document(), "splitEvent": {"fragment": i as i32 + 1, "of": of}};
            for (k, v) in fields {
                d.insert(k.clone(), v.clone());
            }
            d
        })
        .collect())
}

/// Whether a high-water mark is later than the current token (tokens order as strings).
fn hwm_after(current: &Document, hwm: &ResumeTokenData) -> bool {
    let cur = current.get_str("_data").unwrap_or("");
    let new = hwm.to_document();
    new.get_str("_data").unwrap_or("") > cur
}

/// Whether truncation removed an entry a stream reading from key `next` still needs.
/// `truncated_upto` is 0 when nothing was ever truncated: then nothing is lost, even for a
/// stream starting at time 0 (the operationTime a fresh server reports before its first
/// write, which drivers resume from).
fn lost_before(hub: &Hub, next: u64) -> bool {
    let cut = hub.store().truncated_upto();
    cut > 0 && cut >= next
}

fn history_lost() -> MongoError {
    MongoError::new(
        ErrorCode::ChangeStreamHistoryLost,
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    )
}
