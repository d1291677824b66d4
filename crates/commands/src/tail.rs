//! Tailable cursors on capped collections (`find` with `tailable`, and `awaitData`).
//!
//! A tailable cursor remembers the last document it read in natural (insertion) order,
//! by `_id`. Each `getMore` takes a fresh snapshot and reads on from the record after it,
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
use storage::Snapshot;
use tokio::sync::Notify;

use crate::ServerCtx;

/// How long an awaitData `getMore` waits without `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// A tailable cursor's state.
pub struct Tail {
    coll_id: u64,
    filter: Filter,
    projection: Option<Projection>,
    vars: Vars,
    /// The `_id` key of the last document read (matched or not); `None` before the first.
    last: Option<Vec<u8>>,
    pub await_data: bool,
}

impl Tail {
    pub fn new(
        coll_id: u64,
        filter: Filter,
        projection: Option<Projection>,
        vars: Vars,
        await_data: bool,
    ) -> Tail {
        Tail {
            coll_id,
            filter,
            projection,
            vars,
            last: None,
            await_data,
        }
    }

    /// Whether the cursor has a place in the collection (it read at least one document).
    pub fn placed(&self) -> bool {
        self.last.is_some()
    }

    /// Reads up to `n` matching documents after the cursor's place.
    ///
    /// # Errors
    /// CappedPositionLost when the document the cursor stood on is gone.
    pub fn read(&mut self, snap: &Snapshot, n: usize) -> Result<Vec<Document>> {
        let scan = match &self.last {
            None => snap.scan_natural(self.coll_id, false)?,
            Some(k) => snap.scan_natural_after(self.coll_id, k)?.ok_or_else(|| {
                MongoError::new(
                    ErrorCode::CappedPositionLost,
                    "CollectionScan died due to position in capped collection being deleted",
                )
            })?,
        };
        let mut out = Vec::new();
        for row in scan {
            let (k, d) = row?;
            self.last = Some(k);
            if !self.filter.matches(&d) {
                continue;
            }
            out.push(match &self.projection {
                Some(p) => p.apply_with(&d, Some(&self.filter), &self.vars)?,
                None => d,
            });
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
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
        commits.borrow_and_update();
        let batch = tail.read(&ctx.store.snapshot()?, n)?;
        if !batch.is_empty() || !tail.await_data {
            return Ok(batch);
        }
        tokio::select! {
            r = commits.changed() => if r.is_err() { return Ok(batch) },
            () = tokio::time::sleep_until(deadline) => return Ok(batch),
            () = killed.notified() => return Ok(batch),
        }
    }
}

/// `find`'s tailable options, checked as mongod checks them: `Some(awaitData)` for a
/// tailable find.
///
/// # Errors
/// BadValue for awaitData without tailable, a sort other than `{$natural: 1}`, or a
/// limit or single batch with tailable.
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
    if util_count(cmd, "limit") != 0 || util_count(cmd, "skip") != 0 {
        return Err(MongoError::bad_value(
            "tailable cursors with 'limit' or 'skip' are not supported by Eddy",
        ));
    }
    Ok(Some(await_data))
}

fn util_count(cmd: &Document, k: &str) -> i64 {
    cmd.get(k).and_then(doc::compare::as_f64).unwrap_or(0.0) as i64
}
