//! Tailable cursors on capped collections (`find` with `tailable`, and `awaitData`).
//!
//! A tailable cursor remembers the last document it read in natural (insertion) order,
//! by `_id` (on the oplog, the last entry's time). Each `getMore` takes a fresh snapshot and reads on from the record after it,
//! so it returns what was inserted since. If that document has been removed (the capped
//! collection went past its bounds and dropped it), the cursor's place is gone and it
//! fails with CappedPositionLost, as in mongod. With `awaitData`, a `getMore` that finds
//! nothing waits for a commit, up to its `maxTimeMS` (1 s by default).

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document};
use errors::{ErrorCode, MongoError, Result};
use query::expr::Vars;
use query::filter::Filter;
use query::projection::Projection;
use storage::OplogEntry;
use storage::Snapshot;
use tokio::sync::Notify;

use crate::ServerCtx;

/// How long an awaitData `getMore` waits without `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// What a tailable cursor reads.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A capped collection, by storage id.
    Capped(u64),
    /// The oplog (`local.oplog.rs`), as tools that tail it read it.
    Oplog,
}

/// Where a tailable cursor stands.
enum Place {
    /// Before the first document.
    Start,
    /// On a capped collection's document, by `_id` key.
    Doc(Vec<u8>),
    /// On an oplog entry, by time.
    Entry(bson::Timestamp),
}

/// A tailable cursor's state.
pub struct Tail {
    source: Source,
    filter: Filter,
    projection: Option<Projection>,
    vars: Vars,
    place: Place,
    /// Matching documents still to skip, and still to return (`limit`).
    skip: u64,
    limit: Option<u64>,
    pub await_data: bool,
}

fn lost() -> MongoError {
    MongoError::new(
        ErrorCode::CappedPositionLost,
        "CollectionScan died due to position in capped collection being deleted",
    )
}

impl Tail {
    pub fn new(
        source: Source,
        filter: Filter,
        projection: Option<Projection>,
        vars: Vars,
        await_data: bool,
    ) -> Tail {
        Tail {
            source,
            filter,
            projection,
            vars,
            place: Place::Start,
            skip: 0,
            limit: None,
            await_data,
        }
    }

    /// Skips the first `skip` matches and ends after `limit` (0: no limit), as `find`'s
    /// options ask.
    pub fn with_skip_limit(mut self, skip: u64, limit: u64) -> Tail {
        self.skip = skip;
        self.limit = (limit > 0).then_some(limit);
        self
    }

    /// Whether the cursor has a place (it read at least one document) and may return
    /// more (its limit is not spent): otherwise it is dead, as in mongod.
    pub fn alive(&self) -> bool {
        !matches!(self.place, Place::Start) && self.limit != Some(0)
    }

    /// Reads up to `n` matching documents after the cursor's place.
    ///
    /// # Errors
    /// CappedPositionLost when the document the cursor stood on is gone.
    pub fn read(&mut self, snap: &Snapshot, n: usize) -> Result<Vec<Document>> {
        let n = match self.limit {
            Some(l) => n.min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => n,
        };
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        match self.source {
            Source::Capped(coll_id) => {
                let scan = match &self.place {
                    Place::Doc(k) => snap.scan_natural_after(coll_id, k)?.ok_or_else(lost)?,
                    _ => snap.scan_natural(coll_id, false)?,
                };
                for row in scan {
                    let (k, d) = row?;
                    self.place = Place::Doc(k);
                    if self.take(d, &mut out)? && out.len() >= n {
                        break;
                    }
                }
            }
            Source::Oplog => {
                let after = match self.place {
                    Place::Entry(ts) => {
                        // The entry the cursor stood on has been truncated away.
                        if let Some(first) = snap.oplog_after(None)?.next() {
                            if first?.0 > ts {
                                return Err(lost());
                            }
                        }
                        Some(ts)
                    }
                    _ => None,
                };
                for row in snap.oplog_after(after)? {
                    let (ts, bytes) = row?;
                    self.place = Place::Entry(ts);
                    let d = OplogEntry::from_bytes(&bytes)?.to_document();
                    if self.take(d, &mut out)? && out.len() >= n {
                        break;
                    }
                }
            }
        }
        if let Some(l) = &mut self.limit {
            *l -= out.len() as u64;
        }
        Ok(out)
    }

    /// Adds `d` to `out` if it matches and is not skipped; returns whether it was added.
    fn take(&mut self, d: Document, out: &mut Vec<Document>) -> Result<bool> {
        if !self.filter.matches(&d) {
            return Ok(false);
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(false);
        }
        out.push(match &self.projection {
            Some(p) => p.apply_with(&d, Some(&self.filter), &self.vars)?,
            None => d,
        });
        Ok(true)
    }
}

/// A tailable cursor's `getMore`: what was inserted since its last read; with awaitData,
/// waiting up to `max_time` (or 1 s) for something to arrive.
///
/// # Errors
/// CappedPositionLost; a storage error.
pub async fn get_more(
    ctx: &Arc<ServerCtx>,
    tail: &mut Tail,
    n: usize,
    max_time: Option<i64>,
    killed: &Notify,
) -> Result<Vec<Document>> {
    let wait = max_time.map_or(DEFAULT_AWAIT, |ms| Duration::from_millis(ms.max(0) as u64));
    let deadline = tokio::time::Instant::now() + wait;
    let mut commits = ctx.store.subscribe();
    loop {
        // As a change stream's getMore: listen for killOp's wake-up, then look at its flag.
        let on_kill = killed.notified();
        tokio::pin!(on_kill);
        on_kill.as_mut().enable();
        crate::op::current().check()?;
        commits.borrow_and_update();
        let batch = tail.read(&ctx.store.snapshot()?, n)?;
        if !batch.is_empty() || !tail.await_data || !tail.alive() {
            return Ok(batch);
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { return Ok(batch) },
            () = tokio::time::sleep_until(deadline) => return Ok(batch),
            () = &mut on_kill => {
                crate::op::current().check()?;
                return Ok(batch);
            }
        }
    }
}

/// `find`'s tailable options, checked as mongod checks them: `Some(awaitData)` for a
/// tailable find.
///
/// # Errors
/// BadValue for awaitData without tailable, a sort other than `{$natural: 1}`, or a
/// single batch with tailable.
pub fn options(cmd: &Document) -> Result<Option<bool>> {
    let flag = |k: &str| -> Result<bool> {
        match cmd.get(k) {
            None => Ok(false),
            Some(Bson::Boolean(b)) => Ok(*b),
            Some(v) => Err(MongoError::type_mismatch(format!(
                "BSON field 'FindCommandRequest.{k}' is the wrong type '{}', expected type 'bool'",
                query::expr::type_name(Some(v))
            ))),
        }
    };
    let (tailable, await_data) = (flag("tailable")?, flag("awaitData")?);
    if !tailable {
        if await_data {
            return Err(MongoError::failed_to_parse(
                "Cannot set 'awaitData' without also setting 'tailable'",
            ));
        }
        return Ok(None);
    }
    if let Ok(sort) = cmd.get_document("sort") {
        let natural_forward = sort.is_empty()
            || (sort.len() == 1
                && sort.get("$natural").and_then(doc::compare::as_f64) == Some(1.0));
        if !natural_forward {
            return Err(MongoError::bad_value(
                "error processing query: cannot use tailable option with a sort other than {$natural: 1}",
            ));
        }
    }
    if flag("singleBatch")? {
        return Err(MongoError::bad_value(
            "cannot use tailable option with the 'singleBatch' option",
        ));
    }
    Ok(Some(await_data))
}
