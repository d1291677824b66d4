//! The cursor table, `getMore`, `killCursors`, and change stream cursors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bson::{Bson, DateTime, Document, Timestamp, doc};
use changestream::event::Encoded;
use changestream::{ChangeStream, Lookup};
use errors::{ErrorCode, Interrupt, MongoError, Result, labels};
use query::filter::Filter;
use query::pipeline::{Env, SharedEnv};
use query::spill::Limits;
use storage::{Namespace, Snapshot};
use tokio::sync::Notify;

use crate::{Reply, ServerCtx, util};

/// Idle cursors are closed after this long, as in MongoDB.
pub const CURSOR_TIMEOUT: Duration = Duration::from_secs(600);
/// The default batch size of a first batch.
pub const DEFAULT_FIRST_BATCH: usize = 101;
/// A batch stops growing past this many bytes (16 MiB less room for the envelope).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// Change streams that may build a catch-up batch at the same time. A batch of history
/// holds up to 16 MiB of events as documents while it is built and encoded, so this bounds
/// what laggards hold together (the machine's cores bound how fast they go anyway); the
/// others wait their turn, in order.
pub const CATCH_UP_SLOTS: usize = 2;
/// How long a change stream getMore waits without `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// Documents a find or aggregate cursor still has to return.
pub type DocSource = Box<dyn Iterator<Item = Result<Document>> + Send>;

/// What a cursor reads.
pub enum CursorKind {
    Query(DocSource),
    Change(Box<ChangeStream>),
    /// A tailable cursor on a capped collection.
    Tail(Box<crate::tail::Tail>),
}

/// An open cursor.
pub struct Cursor {
    pub ns: String,
    pub kind: CursorKind,
    pub last_used: Instant,
    /// The opening operation's interruption point, re-armed for each `getMore`.
    pub interrupt: Interrupt,
    /// What is left of the opening command's `maxTimeMS` (a non-awaitData cursor's budget
    /// spans its `getMore`s, as in MongoDB); `None` without a limit.
    pub time_left: Option<Duration>,
    /// Who opened the cursor, and what the opening command needed: a `getMore` must come
    /// from the same user, who must still hold it (a revoked privilege stops a change
    /// stream at its next `getMore`).
    pub opened_by: crate::security::Caller,
}

struct Entry {
    cursor: Arc<tokio::sync::Mutex<Cursor>>,
    killed: Arc<Notify>,
    last_used: Instant,
    /// `noCursorTimeout`: never reaped for idleness.
    pinned: bool,
    /// Who opened the cursor, and its namespace (for `killCursors` while it is in use).
    owner: (Option<(String, String)>, String),
    /// A change stream's cursor.
    change: bool,
}

/// How far one change stream is behind the newest commit.
#[derive(Debug, Clone)]
pub struct StreamLag {
    pub cursor_id: i64,
    pub ns: String,
    pub events: i64,
    pub seconds: i64,
}

/// The table of open cursors.
#[derive(Default)]
pub struct Cursors {
    map: Mutex<HashMap<i64, Entry>>,
}

impl Cursors {
    /// Who opened cursor `id`, and its namespace, if it exists.
    pub fn owner(&self, id: i64) -> Option<(Option<(String, String)>, String)> {
        self.map.lock().unwrap().get(&id).map(|e| e.owner.clone())
    }

    /// Registers a cursor and returns its id.
    pub fn add(&self, cursor: Cursor) -> i64 {
        let mut map = self.map.lock().unwrap();
        let mut id: i64;
        loop {
            id = (rand_u64() >> 1) as i64;
            if id != 0 && !map.contains_key(&id) {
                break;
            }
        }
        let owner = (cursor.opened_by.user.clone(), cursor.ns.clone());
        let change = matches!(cursor.kind, CursorKind::Change(_));
        map.insert(
            id,
            Entry {
                cursor: Arc::new(tokio::sync::Mutex::new(cursor)),
                killed: Arc::new(Notify::new()),
                last_used: Instant::now(),
                pinned: false,
                owner,
                change,
            },
        );
        id
    }

    fn get(&self, id: i64) -> Option<(Arc<tokio::sync::Mutex<Cursor>>, Arc<Notify>)> {
        let mut map = self.map.lock().unwrap();
        let e = map.get_mut(&id)?;
        e.last_used = Instant::now();
        Some((e.cursor.clone(), e.killed.clone()))
    }

    fn remove(&self, id: i64) -> bool {
        match self.map.lock().unwrap().remove(&id) {
            Some(e) => {
                wake_waiter(&e.killed);
                true
            }
            None => false,
        }
    }

    /// Wakes a `getMore` waiting on the cursor (after `killOp` killed it): it fails with
    /// `Interrupted`, and the cursor with it.
    pub fn wake(&self, id: i64) {
        if let Some(e) = self.map.lock().unwrap().get(&id) {
            wake_waiter(&e.killed);
        }
    }

    /// The cursors no `getMore` is using, as `$currentOp` shows them with `idleCursors`;
    /// a change stream's shows its position, lag and queued events.
    pub fn idle(&self, ctx: &ServerCtx) -> Vec<Document> {
        let mut entries: Vec<(i64, Arc<tokio::sync::Mutex<Cursor>>, Instant, bool)> = self
            .map
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| (*id, e.cursor.clone(), e.last_used, e.pinned))
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, cursor, last_used, pinned) in entries {
            let Ok(c) = cursor.try_lock() else { continue };
            let idle_for = now.duration_since(last_used);
            let last_access = bson::DateTime::from_millis(
                bson::DateTime::now().timestamp_millis() - idle_for.as_millis() as i64,
            );
            let (tailable, await_data) = match &c.kind {
                CursorKind::Query(_) => (false, false),
                CursorKind::Change(_) => (true, true),
                CursorKind::Tail(t) => (true, t.await_data),
            };
            let mut cur = doc! {
                "cursorId": id,
                "lastAccessDate": last_access,
                "noCursorTimeout": pinned,
                "tailable": tailable,
                "awaitData": await_data,
            };
            if let CursorKind::Change(stream) = &c.kind {
                cur.insert("changeStream", stream.status(&ctx.hub));
            }
            out.push(doc! {
                "type": "idleCursor",
                "host": &ctx.config.advertised,
                "ns": &c.ns,
                "active": false,
                "cursor": cur,
            });
        }
        out
    }

    /// The number of open change streams.
    pub fn change_stream_count(&self) -> usize {
        self.map
            .lock()
            .unwrap()
            .values()
            .filter(|e| e.change)
            .count()
    }

    /// The open change streams, and the `top` most behind of those no `getMore` is using
    /// now (one that is waiting in a `getMore` has caught up): cursor id, namespace, events
    /// behind and seconds behind.
    pub fn change_stream_lags(&self, ctx: &ServerCtx, top: usize) -> (usize, Vec<StreamLag>) {
        let streams: Vec<(i64, Arc<tokio::sync::Mutex<Cursor>>)> = self
            .map
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| e.change)
            .map(|(id, e)| (*id, e.cursor.clone()))
            .collect();
        let open = streams.len();
        let mut lags = Vec::new();
        for (id, cursor) in streams {
            let Ok(c) = cursor.try_lock() else { continue };
            if let CursorKind::Change(stream) = &c.kind {
                let s = stream.status(&ctx.hub);
                lags.push(StreamLag {
                    cursor_id: id,
                    ns: c.ns.clone(),
                    events: s.get_i64("lagEntries").unwrap_or(0),
                    seconds: s.get_i64("lagSeconds").unwrap_or(0),
                });
            }
        }
        lags.sort_unstable_by(|a, b| b.events.cmp(&a.events).then(a.cursor_id.cmp(&b.cursor_id)));
        lags.truncate(top);
        (open, lags)
    }

    /// The number of open cursors.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }

    /// Whether no cursor is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `noCursorTimeout`: the cursor stays open until exhausted or killed.
    pub fn pin(&self, id: i64) {
        if let Some(e) = self.map.lock().unwrap().get_mut(&id) {
            e.pinned = true;
        }
    }

    fn reap(&self) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap();
        map.retain(|_, e| {
            e.pinned
                || now.duration_since(e.last_used) < CURSOR_TIMEOUT
                || Arc::strong_count(&e.cursor) > 1
        });
    }
}

/// Wakes the `getMore` waiting on a cursor, whether it is already waiting or about to.
fn wake_waiter(killed: &Notify) {
    killed.notify_waiters();
    killed.notify_one();
}

fn rand_u64() -> u64 {
    let b = bson::Uuid::new().bytes();
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Closes idle cursors every minute.
pub fn spawn_reaper(ctx: Weak<ServerCtx>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(ctx) = ctx.upgrade() else { break };
            ctx.cursors.reap();
        }
    });
}

/// Takes a first batch from a document source: the batch, and the source if more remain.
///
/// # Errors
/// The source's error.
pub fn take_batch(src: &mut DocSource, n: usize) -> Result<(Vec<Document>, bool)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < n && bytes < MAX_BATCH_BYTES {
        match src.next() {
            Some(d) => {
                let d = d?;
                // The document, plus its array element header: type byte, index key, NUL.
                let key_len = out.len().checked_ilog10().unwrap_or(0) as usize + 1;
                let size = doc::encoded_len(&d) + key_len + 2;
                // A document that would overflow the batch waits for the next one (unless it
                // is alone), as in MongoDB, so that the reply stays under the message limit.
                if !out.is_empty() && bytes + size > MAX_BATCH_BYTES {
                    let rest = std::mem::replace(src, Box::new(std::iter::empty()));
                    *src = Box::new(std::iter::once(Ok(d)).chain(rest));
                    return Ok((out, false));
                }
                bytes += size;
                out.push(d);
            }
            None => return Ok((out, true)),
        }
    }
    Ok((out, false))
}

/// Builds a cursor reply, registering the rest of the source as a cursor if any remains.
///
/// # Errors
/// The source's error.
pub fn cursor_reply(
    ctx: &ServerCtx,
    ns: &str,
    mut src: DocSource,
    batch_size: Option<i64>,
    single: bool,
) -> Result<Reply> {
    let n = batch_size.map_or(DEFAULT_FIRST_BATCH, |b| b.max(0) as usize);
    let (batch, mut done) = take_batch(&mut src, n)?;
    // A full batch may still be the last one (e.g. batchSize == limit): look one ahead so
    // that the cursor is not left open with nothing in it.
    if !done && !single {
        let mut p = src.peekable();
        done = p.peek().is_none();
        src = Box::new(p);
    }
    let id = if done || single {
        0
    } else {
        let interrupt = crate::op::current();
        ctx.cursors.add(Cursor {
            ns: ns.to_string(),
            kind: CursorKind::Query(src),
            last_used: Instant::now(),
            time_left: interrupt.remaining(),
            interrupt,
            opened_by: crate::security::caller(),
        })
    };
    Ok(Reply::ok(
        doc! {"cursor": {"firstBatch": batch, "id": id, "ns": ns}},
    ))
}

/// `getMore`.
///
/// # Errors
/// CursorNotFound for unknown (or killed) cursors, and the cursor's own errors.
pub async fn get_more(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    ctx.stats
        .getmore
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => i64::from(*i),
        Some(other) => {
            return Err(MongoError::type_mismatch(format!(
                "Field 'getMore' must be of type long in: {{ getMore: {other} }}"
            )));
        }
        None => return Err(MongoError::failed_to_parse("getMore requires a cursor id")),
    };
    let coll = match cmd.get("collection") {
        Some(Bson::String(c)) => c.clone(),
        _ => {
            return Err(MongoError::type_mismatch(
                "BSON field 'getMore.collection' is missing but a required field",
            ));
        }
    };
    // 0 asks for the default batch, as in MongoDB.
    let batch_size = util::opt_batch_size(cmd)?.filter(|b| *b > 0);
    let max_time = util::get_i64(cmd, "maxTimeMS");
    let Some((cursor, killed)) = ctx.cursors.get(id) else {
        return Err(MongoError::new(
            ErrorCode::CursorNotFound,
            format!("cursor id {id} not found"),
        ));
    };
    let mut c = cursor.lock().await;
    let ns = c.ns.clone();
    let me = crate::security::caller();
    if !me.owns(&c.opened_by.user) {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            format!("cursor id {id} was not created by the authenticated user"),
        ));
    }
    if let Some(need) = &c.opened_by.need {
        if !me.satisfies(need) {
            return Err(MongoError::new(
                ErrorCode::Unauthorized,
                format!("not authorized for getMore with cursor id {id}"),
            ));
        }
    }
    if ns != format!("{db}.{coll}") {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            format!(
                "Requested getMore on namespace '{db}.{coll}', but cursor belongs to a different namespace {ns}"
            ),
        ));
    }
    c.last_used = Instant::now();
    let time_left = c.time_left;
    let interrupt = c.interrupt.clone();
    if let Some(opid) = crate::op::current_opid() {
        ctx.ops.link_cursor(opid, id, &interrupt);
    }
    match &mut c.kind {
        CursorKind::Query(src) => {
            if max_time.is_some() {
                return Err(MongoError::bad_value(
                    "cannot set maxTimeMS on getMore command for a non-awaitData cursor",
                ));
            }
            let started = Instant::now();
            if let Some(left) = time_left {
                interrupt.set_deadline(Some(started + left));
                // The fail point fires for any operation with a time limit: this getMore
                // has what is left of its find's.
                if crate::admin::take_fail_point(ctx, "maxTimeAlwaysTimeOut", |_| true).is_some() {
                    drop(c);
                    ctx.cursors.remove(id);
                    return Err(errors::expired());
                }
            }
            let n = batch_size.map_or(usize::MAX, |b| b as usize);
            let res = interrupt
                .check()
                .and_then(|()| util::cpu(|| take_batch(src, n)));
            let (batch, done) = match res {
                Ok(r) => r,
                Err(e) => {
                    drop(c);
                    ctx.cursors.remove(id);
                    return Err(e);
                }
            };
            if let Some(left) = time_left {
                c.time_left = Some(left.saturating_sub(started.elapsed()));
            }
            drop(c);
            let out_id = if done {
                ctx.cursors.remove(id);
                0
            } else {
                id
            };
            Ok(Reply::ok(
                doc! {"cursor": {"nextBatch": batch, "id": out_id, "ns": ns}},
            ))
        }
        CursorKind::Tail(tail) => {
            if max_time.is_some() && !tail.await_data {
                return Err(MongoError::bad_value(
                    "cannot set maxTimeMS on getMore command for a non-awaitData cursor",
                ));
            }
            let n = batch_size.map_or(DEFAULT_FIRST_BATCH, |b| b as usize);
            let res = crate::tail::get_more(ctx, tail, n, max_time, &killed).await;
            let alive = tail.alive();
            drop(c);
            match res {
                Ok(batch) => {
                    let out_id = if alive {
                        id
                    } else {
                        ctx.cursors.remove(id);
                        0
                    };
                    Ok(Reply::ok(
                        doc! {"cursor": {"nextBatch": batch, "id": out_id, "ns": ns}},
                    ))
                }
                Err(e) => {
                    ctx.cursors.remove(id);
                    Err(e)
                }
            }
        }
        CursorKind::Change(stream) => {
            if let Some(fp) =
                crate::admin::take_fail_point(ctx, "failGetMoreAfterCursorCheckout", |_| true)
            {
                if let Some(code) = util::get_i64(&fp, "errorCode") {
                    let mut e = MongoError::with_code(
                        code as i32,
                        "Failing getMore via 'failGetMoreAfterCursorCheckout' failpoint",
                    );
                    if errors::RESUMABLE_CHANGE_STREAM_CODES.contains(&e.code) {
                        e = e.with_label(labels::RESUMABLE_CHANGE_STREAM_ERROR);
                    }
                    return Err(e);
                }
            }
            let wait = max_time.map_or(DEFAULT_AWAIT, |ms| Duration::from_millis(ms.max(0) as u64));
            let n = batch_size.map_or(usize::MAX, |b| b as usize);
            let res = await_events(ctx, stream, n, wait, &killed).await;
            let (batch, finished, slot) = match res {
                Ok(b) => b,
                Err(mut e) => {
                    drop(c);
                    ctx.cursors.remove(id);
                    // The specification's resumable errors tell the driver to resume.
                    if errors::RESUMABLE_CHANGE_STREAM_CODES.contains(&e.code) {
                        e = e.with_label(labels::RESUMABLE_CHANGE_STREAM_ERROR);
                    }
                    return Err(e);
                }
            };
            let pbrt = stream.post_batch_resume_token();
            drop(c);
            crate::metrics::METRICS
                .change_events
                .inc_by(batch.len() as u64);
            let out_id = if finished {
                ctx.cursors.remove(id);
                0
            } else {
                id
            };
            let mut r =
                Reply::ok(doc! {"cursor": {"postBatchResumeToken": pbrt, "id": out_id, "ns": ns}});
            r.slot = slot;
            r.batch = Some(("nextBatch", batch));
            Ok(r)
        }
    }
}

/// Reads events, waiting up to `wait` for the first one; returns as soon as any arrive.
async fn await_events(
    ctx: &Arc<ServerCtx>,
    stream: &mut ChangeStream,
    n: usize,
    wait: Duration,
    killed: &Notify,
) -> Result<(
    Vec<Arc<Encoded>>,
    bool,
    Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
)> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut tail = ctx.hub.subscribe();
    loop {
        // Listen for killOp's wake-up before looking at its flag: a killOp that came
        // before this getMore linked its cursor to the operation set the flag but could
        // not wake it.
        let on_kill = killed.notified();
        tokio::pin!(on_kill);
        on_kill.as_mut().enable();
        crate::op::current().check()?;
        tail.borrow_and_update();
        let (batch, slot) = read_bounded(ctx, stream, n).await?;
        if !batch.is_empty() || stream.is_finished() {
            let finished = stream.is_finished();
            return Ok((batch, finished, slot));
        }
        // Attached, the stream wakes when the router gives it an entry; reading history,
        // on every commit.
        let inbox = stream.inbox().cloned();
        let woken = async {
            match &inbox {
                Some(inbox) => {
                    inbox.notified().await;
                    true
                }
                None => tail.changed().await.is_ok(),
            }
        };
        tokio::select! {
            ok = woken => { if !ok { return Ok((batch, false, None)); } }
            () = tokio::time::sleep_until(deadline) => return Ok((batch, false, None)),
            () = &mut on_kill => {
                // killOp wakes the getMore it killed; killCursors, one on a cursor it closed.
                crate::op::current().check()?;
                return Err(MongoError::new(ErrorCode::CursorKilled, "cursor was killed while a getMore waited"));
            }
        }
    }
}

/// A change stream batch, and the catch-up slot it holds until it has been written.
type Slotted = (
    Vec<Arc<Encoded>>,
    Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
);

/// Reads what is available now, taking a catch-up slot first if the stream is behind.
async fn read_bounded(ctx: &ServerCtx, stream: &mut ChangeStream, n: usize) -> Result<Slotted> {
    let slot = if stream.catching_up(&ctx.hub) {
        Some(Arc::new(
            ctx.catch_up
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| MongoError::internal("catch-up slots closed"))?,
        ))
    } else {
        None
    };
    // A batch of history is a long stretch of CPU: off the async workers, so that writers
    // and other connections keep being served meanwhile.
    let batch = if slot.is_some()
        && tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
    {
        tokio::task::block_in_place(|| read_now(ctx, stream, n))?
    } else {
        read_now(ctx, stream, n)?
    };
    Ok((batch, slot))
}

fn read_now(ctx: &ServerCtx, stream: &mut ChangeStream, n: usize) -> Result<Vec<Arc<Encoded>>> {
    let env = LazyEnv {
        ctx,
        snap: std::cell::OnceCell::new(),
    };
    let batch = stream.next_batch(&ctx.hub, &env, &env, n)?;
    Ok(batch)
}

/// A stream's access to the database, taking a snapshot only if an event needs one
/// (`updateLookup`, images, `$lookup`-free pipelines never do).
struct LazyEnv<'a> {
    ctx: &'a ServerCtx,
    snap: std::cell::OnceCell<Arc<Snapshot>>,
}

impl LazyEnv<'_> {
    fn snap(&self) -> Result<SnapEnv> {
        if self.snap.get().is_none() {
            let s = self.ctx.store.snapshot()?;
            let _ = self.snap.set(Arc::new(s));
        }
        Ok(SnapEnv::plain(self.snap.get().expect("set above").clone()))
    }
}

impl Env for LazyEnv<'_> {
    fn collection_docs(&self, db: &str, coll: &str) -> Result<Vec<Document>> {
        self.snap()?.collection_docs(db, coll)
    }

    fn now(&self) -> DateTime {
        DateTime::now()
    }

    fn cluster_time(&self) -> Timestamp {
        self.ctx.store.committed_ts()
    }
}

impl Lookup for LazyEnv<'_> {
    fn current(&self, ns: &Namespace, document_key: &Document) -> Result<Option<Document>> {
        self.snap()?.current(ns, document_key)
    }

    fn preimage(&self, ts: Timestamp, txn_op_index: Option<u32>) -> Result<Option<Document>> {
        self.snap()?.preimage(ts, txn_op_index)
    }
}

/// `killCursors`.
///
/// # Errors
/// BadValue for a malformed cursor list.
pub fn kill_cursors(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let ids = cmd.get_array("cursors").map_err(|_| {
        MongoError::failed_to_parse(
            "BSON field 'killCursors.cursors' is missing but a required field",
        )
    })?;
    let (mut killed, mut not_found) = (Vec::new(), Vec::new());
    for v in ids {
        let id = match v {
            Bson::Int64(i) => *i,
            Bson::Int32(i) => i64::from(*i),
            _ => return Err(MongoError::type_mismatch("cursor ids must be longs")),
        };
        if let Some(owner) = ctx.cursors.owner(id) {
            let me = crate::security::caller();
            let (db, coll) = owner.1.split_once('.').unwrap_or((owner.1.as_str(), ""));
            let any = me.allows("killAnyCursor", &auth::Target::Cluster)
                || me.allows("killAnyCursor", &auth::Target::Collection { db, coll });
            if !me.owns(&owner.0) && !any {
                return Err(crate::security::unauthorized(
                    cmd.get_str("$db").unwrap_or(""),
                    cmd,
                ));
            }
        }
        if ctx.cursors.remove(id) {
            killed.push(Bson::Int64(id));
        } else {
            not_found.push(Bson::Int64(id));
        }
    }
    Ok(Reply::ok(
        doc! {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [], "cursorsUnknown": []},
    ))
}

/// Opens a change stream cursor for an `aggregate` whose first stage is `$changeStream`.
///
/// # Errors
/// The stream's option errors, history lost, read concern `local`.
pub async fn open_change_stream(
    ctx: &Arc<ServerCtx>,
    db: &str,
    cmd: &Document,
    pipeline: &[Document],
) -> Result<Reply> {
    if let Ok(rc) = cmd.get_document("readConcern") {
        if let Ok(level) = rc.get_str("level") {
            if level != "majority" {
                return Err(MongoError::new(
                    ErrorCode::InvalidOptions,
                    format!(
                        "Read concern level '{level}' is not supported for $changeStream; use 'majority'"
                    ),
                ));
            }
        }
    }
    let coll = match cmd.get("aggregate") {
        Some(Bson::String(c)) => Some(c.as_str()),
        _ => None,
    };
    let mut spec =
        changestream::spec::parse(db, coll, &pipeline[0]["$changeStream"], &pipeline[1..])?;
    // The stream's comparisons follow the aggregate's `collation`, else simple binary: never
    // the collection's default (as in MongoDB since 4.2).
    let collation = exec::collation::for_operation(cmd, None)?;
    spec.pipeline = spec.pipeline.take().map(|p| p.with_collation(collation));
    let ns = match &spec.target {
        changestream::Target::Collection(n) => n.full(),
        _ => format!("{db}.$cmd.aggregate"),
    };
    let mut stream = ChangeStream::open(spec, &ctx.hub)?;
    let batch_size = match cmd.get_document("cursor") {
        Ok(c) => util::opt_batch_size(c)?,
        Err(_) => {
            return Err(MongoError::failed_to_parse(
                "The 'cursor' option is required, except for aggregate with the explain argument",
            ));
        }
    };
    let n = batch_size.map_or(DEFAULT_FIRST_BATCH, |b| b.max(0) as usize);
    // The first batch holds what is already there (events from a resume point); it never waits.
    let (batch, slot) = if n == 0 {
        (Vec::new(), None)
    } else {
        read_bounded(ctx, &mut stream, n).await?
    };
    let pbrt = stream.post_batch_resume_token();
    crate::metrics::METRICS
        .change_events
        .inc_by(batch.len() as u64);
    let id = if stream.is_finished() {
        0
    } else {
        ctx.cursors.add(Cursor {
            ns: ns.clone(),
            kind: CursorKind::Change(Box::new(stream)),
            last_used: Instant::now(),
            interrupt: Interrupt::none(),
            time_left: None,
            opened_by: crate::security::caller(),
        })
    };
    let mut r = Reply::ok(doc! {"cursor": {"postBatchResumeToken": pbrt, "id": id, "ns": ns}});
    r.slot = slot;
    r.batch = Some(("firstBatch", batch));
    Ok(r)
}

/// A read's access to the database: one snapshot, the operation's interruption point, and
/// the memory limits of its blocking stages.
pub struct SnapEnv {
    pub snap: Arc<Snapshot>,
    pub interrupt: Interrupt,
    pub limits: Limits,
}

impl SnapEnv {
    /// For the current operation, with default limits.
    pub fn plain(snap: Arc<Snapshot>) -> SnapEnv {
        SnapEnv {
            snap,
            interrupt: crate::op::current(),
            limits: Limits::default(),
        }
    }

    /// For the current operation, under the server's memory limits and the command's
    /// `allowDiskUse`.
    ///
    /// # Errors
    /// TypeMismatch for a non-boolean `allowDiskUse`.
    pub fn for_command(ctx: &ServerCtx, snap: Arc<Snapshot>, cmd: &Document) -> Result<SnapEnv> {
        Ok(SnapEnv {
            limits: limits(ctx, cmd)?,
            ..SnapEnv::plain(snap)
        })
    }

    /// As the [`SharedEnv`] pipelines run with.
    pub fn shared(self) -> SharedEnv {
        Arc::new(self)
    }
}

/// Where blocking stages spill: `<dbpath>/_tmp`.
pub fn spill_dir(ctx: &ServerCtx) -> std::path::PathBuf {
    ctx.store.path().join("_tmp")
}

/// The memory limits of a command's blocking stages: the server parameters
/// `internalQueryMaxBlockingSortMemoryUsageBytes` and
/// `internalDocumentSourceGroupMaxMemoryBytes`, `internalQueryMaxPushBytes`,
/// `internalQueryMaxAddToSetBytes`, and `allowDiskUse` (default
/// `allowDiskUseByDefault`, true). Spills go to `<dbpath>/_tmp`.
///
/// # Errors
/// TypeMismatch for a non-boolean `allowDiskUse`.
pub fn limits(ctx: &ServerCtx, cmd: &Document) -> Result<Limits> {
    let params = ctx.parameters.lock().unwrap();
    let bytes = |name: &str| {
        util::get_i64(&params, name)
            .filter(|b| *b > 0)
            .map_or(query::spill::DEFAULT_MAX_BYTES, |b| b as usize)
    };
    let allow_disk_use = match cmd.get("allowDiskUse") {
        None | Some(Bson::Null) => params.get_bool("allowDiskUseByDefault").unwrap_or(true),
        Some(Bson::Boolean(b)) => *b,
        Some(other) => {
            return Err(MongoError::type_mismatch(format!(
                "BSON field 'allowDiskUse' is the wrong type '{}', expected type 'bool'",
                query::expr::type_name(Some(other))
            )));
        }
    };
    Ok(Limits {
        sort_bytes: bytes("internalQueryMaxBlockingSortMemoryUsageBytes"),
        group_bytes: bytes("internalDocumentSourceGroupMaxMemoryBytes"),
        push_bytes: bytes("internalQueryMaxPushBytes"),
        add_to_set_bytes: bytes("internalQueryMaxAddToSetBytes"),
        allow_disk_use,
        spill_dir: Some(spill_dir(ctx)),
    })
}

impl Env for SnapEnv {
    fn collection_docs(&self, db: &str, coll: &str) -> Result<Vec<Document>> {
        let Some(meta) = self.snap.collection(&Namespace::new(db, coll))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for r in self.snap.scan_natural(meta.id, false)? {
            self.interrupt.check()?;
            out.push(r?.1);
        }
        Ok(out)
    }

    fn matching_docs(
        &self,
        db: &str,
        coll: &str,
        filter: &Filter,
    ) -> Result<Option<Vec<Document>>> {
        let Some(meta) = self.snap.collection(&Namespace::new(db, coll))? else {
            return Ok(Some(Vec::new()));
        };
        let plan = exec::plan_query(&meta, filter, None, None)?;
        if matches!(
            plan,
            exec::Plan::CollScan { .. } | exec::Plan::IdScan { .. }
        ) || meta.is_view()
        {
            return Ok(None);
        }
        // The source checks the operation's deadline as it reads.
        crate::crud::query_source(&self.snap, &meta, filter.clone(), &plan)?
            .collect::<Result<_>>()
            .map(Some)
    }

    fn now(&self) -> DateTime {
        DateTime::now()
    }

    fn cluster_time(&self) -> Timestamp {
        self.snap.ts()
    }

    fn check_interrupt(&self) -> Result<()> {
        self.interrupt.check()
    }

    fn limits(&self) -> Limits {
        self.limits.clone()
    }
}

impl Lookup for SnapEnv {
    fn current(&self, ns: &Namespace, document_key: &Document) -> Result<Option<Document>> {
        let Some(meta) = self.snap.collection(ns)? else {
            return Ok(None);
        };
        let Some(id) = document_key.get("_id") else {
            return Ok(None);
        };
        self.snap.get_doc(meta.id, &exec::id_key(id))
    }

    fn preimage(&self, ts: Timestamp, txn_op_index: Option<u32>) -> Result<Option<Document>> {
        self.snap.preimage(ts, txn_op_index)
    }
}
