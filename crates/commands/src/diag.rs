//! Diagnostic and maintenance commands: `fsync` (with its write lock) and `fsyncUnlock`,
//! `validate`, `dbHash`, `top`, `connPoolStats` and `features`.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::Mutex;

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use md5::{Digest, Md5};
use tokio::sync::Notify;

use crate::{Reply, ServerCtx, util};

/// `fsync`'s write lock: how many `fsync: 1, lock: true` are outstanding. While it is
/// held, commands that write wait (reads go on), as in mongod.
#[derive(Default)]
pub struct FsyncLock {
    count: Mutex<u32>,
    released: Notify,
}

impl FsyncLock {
    fn count(&self) -> u32 {
        *self.count.lock().unwrap()
    }

    /// Whether an fsync lock is held.
    pub fn held(&self) -> bool {
        self.count() > 0
    }

    /// Waits until no fsync lock is held, or the operation is interrupted (its
    /// maxTimeMS, or `killOp`).
    ///
    /// # Errors
    /// MaxTimeMSExpired or Interrupted.
    pub async fn wait(&self, interrupt: &errors::Interrupt) -> Result<()> {
        loop {
            let released = self.released.notified();
            if self.count() == 0 {
                return Ok(());
            }
            interrupt.check()?;
            // killOp sets a flag without waking anyone: look again every 50 ms.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), released).await;
        }
    }
}

/// `fsync`: makes everything committed durable in the tables (a checkpoint); with
/// `lock: true`, also blocks writes until `fsyncUnlock`.
///
/// # Errors
/// A storage error.
pub async fn fsync(ctx: &Arc<ServerCtx>, cmd: &Document) -> Result<Reply> {
    let lock = cmd.get("lock").is_some_and(query::expr::truthy);
    if cmd.get("async").is_some_and(query::expr::truthy) {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "fsync: async is not supported",
        ));
    }
    ctx.store.checkpoint().await?;
    if !lock {
        return Ok(Reply::ok(doc! {"numFiles": 1}));
    }
    let n = {
        let mut c = ctx.fsync_lock.count.lock().unwrap();
        *c += 1;
        *c
    };
    Ok(Reply::ok(doc! {
        "info": "now locked against writes, use db.fsyncUnlock() to unlock",
        "lockCount": i64::from(n),
        "seeAlso": "http://dochub.mongodb.org/core/fsynccommand",
    }))
}

/// `fsyncUnlock`: releases one `fsync` lock.
///
/// # Errors
/// IllegalOperation when not locked.
pub fn fsync_unlock(ctx: &ServerCtx) -> Result<Reply> {
    let n = {
        let mut c = ctx.fsync_lock.count.lock().unwrap();
        if *c == 0 {
            return Err(MongoError::new(
                ErrorCode::IllegalOperation,
                "fsyncUnlock called when not locked",
            ));
        }
        *c -= 1;
        *c
    };
    if n == 0 {
        ctx.fsync_lock.released.notify_waiters();
    }
    Ok(Reply::ok(
        doc! {"info": "fsyncUnlock completed", "lockCount": i64::from(n)},
    ))
}

/// `validate`: reads every record of a collection and every entry of its indexes, and
/// checks that they agree: each record decodes, the `_id` index finds it, and each
/// secondary index holds exactly the keys its documents give (no missing, no extra).
///
/// # Errors
/// NamespaceNotFound; InvalidOptions for `repair`, `metadata` and `background`.
pub fn validate(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "validate", db)?;
    // Every validation is a full one (each record and each index entry is read), so
    // `full` and `checkBSONConformance` are honoured by default; they are type-checked.
    for k in ["full", "checkBSONConformance"] {
        if cmd.get(k).is_some_and(|v| !matches!(v, Bson::Boolean(_))) {
            return Err(MongoError::type_mismatch(format!(
                "BSON field 'validate.{k}' is the wrong type, expected type 'bool'"
            )));
        }
    }
    for k in ["repair", "metadata", "background"] {
        if cmd.get(k).is_some_and(query::expr::truthy) {
            return Err(MongoError::new(
                ErrorCode::InvalidOptions,
                format!("validate's '{k}' is not supported by Eddy"),
            ));
        }
    }
    let snap = ctx.store.snapshot()?;
    let Some(meta) = snap.collection(&ns)?.filter(|m| !m.is_view()) else {
        return Err(MongoError::new(
            ErrorCode::NamespaceNotFound,
            format!("Collection '{}' does not exist to validate.", ns.full()),
        ));
    };
    let mut errors: Vec<String> = Vec::new();
    let mut invalid = 0i64;
    let mut nrecords = 0i64;
    let secondary: Vec<_> = meta.indexes.iter().filter(|i| !i.is_id()).collect();
    let partials = secondary
        .iter()
        .map(|ix| exec::write::partial(ix))
        .collect::<Result<Vec<_>>>()?;
    let mut expected: Vec<BTreeSet<Vec<u8>>> = vec![BTreeSet::new(); secondary.len()];
    let mut id_missing = 0i64;
    for row in snap.scan_natural(meta.id, false)? {
        let (idk, d) = match row {
            Ok(r) => r,
            Err(e) => {
                invalid += 1;
                errors.push(format!("a record could not be read: {}", e.message));
                continue;
            }
        };
        nrecords += 1;
        if snap.get_doc(meta.id, &idk)?.as_ref() != Some(&d) {
            id_missing += 1;
        }
        for (i, ix) in secondary.iter().enumerate() {
            expected[i].extend(exec::keys::entry_keys(ix, partials[i].as_ref(), &d, &idk)?.0);
        }
    }
    let mut keys_per_index = doc! {"_id_": nrecords - id_missing};
    let mut details = doc! {"_id_": {"valid": id_missing == 0}};
    if id_missing > 0 {
        errors.push(format!(
            "{id_missing} records are missing from the _id index"
        ));
    }
    let (mut missing_total, mut extra_total) = (0i64, 0i64);
    for (i, ix) in secondary.iter().enumerate() {
        let (lo, hi) = storage::prefix_range(&exec::keys::index_prefix(ix.id));
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        let mut actual = BTreeSet::new();
        for e in snap.scan_index(Bound::Included(lo), upper)? {
            actual.insert(e?.0);
        }
        let missing = expected[i].difference(&actual).count() as i64;
        let extra = actual.difference(&expected[i]).count() as i64;
        if missing > 0 || extra > 0 {
            errors.push(format!(
                "index {} has {missing} missing and {extra} extra entries",
                ix.name
            ));
        }
        missing_total += missing;
        extra_total += extra;
        keys_per_index.insert(ix.name.clone(), actual.len() as i64);
        details.insert(ix.name.clone(), doc! {"valid": missing == 0 && extra == 0});
    }
    let valid = errors.is_empty();
    Ok(Reply::ok(doc! {
        "ns": ns.full(),
        "uuid": meta.uuid_bson(),
        "nInvalidDocuments": invalid,
        "nNonCompliantDocuments": 0i64,
        "nrecords": nrecords,
        "nIndexes": meta.indexes.len() as i32,
        "keysPerIndex": keys_per_index,
        "indexDetails": details,
        "valid": valid,
        "repaired": false,
        "warnings": Vec::<Bson>::new(),
        "errors": errors,
        "extraIndexEntries": Vec::<Bson>::new(),
        "missingIndexEntries": Vec::<Bson>::new(),
        "corruptRecords": Vec::<Bson>::new(),
        "nMissingIndexEntries": missing_total,
        "nExtraIndexEntries": extra_total,
    }))
}

/// `dbHash`: an MD5 of each collection's documents in `_id` order, and one of them all,
/// so that two members (or a dump and its restore) can be compared.
///
/// # Errors
/// A storage error.
pub fn db_hash(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let only: Option<Vec<String>> = match cmd.get("collections") {
        None => None,
        Some(Bson::Array(a)) => Some(
            a.iter()
                .map(|v| {
                    v.as_str().map(String::from).ok_or_else(|| {
                        MongoError::type_mismatch("'collections' must be an array of strings")
                    })
                })
                .collect::<Result<_>>()?,
        ),
        Some(_) => {
            return Err(MongoError::type_mismatch(
                "'collections' must be an array of strings",
            ));
        }
    };
    let snap = ctx.store.snapshot()?;
    let mut colls = Document::new();
    let mut uuids = Document::new();
    let mut all = Md5::new();
    let mut metas = snap.collections(Some(db))?;
    metas.sort_by(|a, b| a.ns.coll.cmp(&b.ns.coll));
    for m in metas {
        if m.is_view() || m.ns.coll.starts_with("system.") && m.ns.coll != "system.users" {
            continue;
        }
        if only.as_ref().is_some_and(|o| !o.contains(&m.ns.coll)) {
            continue;
        }
        let mut h = Md5::new();
        for row in snap.scan_docs(m.id, None)? {
            let (_, d) = row?;
            let bytes = doc::encode::encode(&d).map_err(|e| MongoError::internal(e.to_string()))?;
            h.update(&bytes);
        }
        let hex = hex(&h.finalize());
        all.update(hex.as_bytes());
        colls.insert(m.ns.coll.clone(), hex);
        uuids.insert(m.ns.coll.clone(), m.uuid_bson());
    }
    Ok(Reply::ok(doc! {
        "host": &ctx.config.advertised,
        "collections": colls,
        "capped": Vec::<Bson>::new(),
        "uuids": uuids,
        "md5": hex(&all.finalize()),
        "timeMillis": 0,
        "fromCache": Vec::<Bson>::new(),
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `connPoolStats`: Eddy keeps no outgoing connection pools (replica set members talk
/// over one connection per peer, outside any pool), so every figure is zero.
pub fn conn_pool_stats() -> Reply {
    Reply::ok(doc! {
        "numClientConnections": 0,
        "numAScopedConnections": 0,
        "totalInUse": 0,
        "totalAvailable": 0,
        "totalLeased": 0,
        "totalCreated": 0,
        "totalRefreshing": 0,
        "totalRefreshed": 0,
        "totalWasNeverUsed": 0,
        "totalWasUsedOnce": 0,
        "totalConnUsageTimeMillis": 0,
        "replicaSetMatchingStrategy": "matchPrimaryNode",
        "pools": {},
        "hosts": {},
    })
}

/// `features`: the server's optional features; Eddy has no JavaScript engine.
pub fn features(ctx: &ServerCtx) -> Reply {
    let pid = ctx.process_id.bytes();
    Reply::ok(doc! {
        "oidMachine": i64::from(u32::from_be_bytes([0, pid[4], pid[5], pid[6]])),
    })
}

/// Time and count of one kind of operation, for `top`.
#[derive(Default, Clone, Copy)]
struct Usage {
    micros: u64,
    count: u64,
}

impl Usage {
    fn add(&mut self, micros: u64) {
        self.micros += micros;
        self.count += 1;
    }

    fn doc(self) -> Document {
        doc! {"time": self.micros as i64, "count": self.count as i64}
    }
}

/// One namespace's `top` counters.
#[derive(Default, Clone, Copy)]
struct NsTop {
    total: Usage,
    read: Usage,
    write: Usage,
    queries: Usage,
    getmore: Usage,
    insert: Usage,
    update: Usage,
    remove: Usage,
    commands: Usage,
}

/// `top`'s counters: per collection, the time and count of each kind of operation since
/// the server started.
#[derive(Default)]
pub struct Top {
    by_ns: Mutex<std::collections::BTreeMap<String, NsTop>>,
}

impl Top {
    /// Counts a finished command against the collection it named (commands on a
    /// database as a whole are not counted, as in mongod).
    pub fn record(&self, name: &str, cmd: &Document, took: std::time::Duration) {
        let Some(ns) = crate::logs::collection_of(name, cmd) else {
            return;
        };
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut map = self.by_ns.lock().unwrap();
        let t = map.entry(ns).or_default();
        t.total.add(micros);
        let write = crate::replset::writes(name, cmd);
        if write {
            t.write.add(micros);
        } else {
            t.read.add(micros);
        }
        match name {
            "find" => t.queries.add(micros),
            "getMore" => t.getmore.add(micros),
            "insert" => t.insert.add(micros),
            "update" | "findAndModify" | "findandmodify" => t.update.add(micros),
            "delete" => t.remove.add(micros),
            _ => t.commands.add(micros),
        }
    }
}

/// `top`: each collection's operation times (microseconds) and counts.
///
/// # Errors
/// Unauthorized off the admin database, as in mongod.
pub fn top(ctx: &ServerCtx, db: &str) -> Result<Reply> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "top may only be run against the admin database.",
        ));
    }
    let mut totals = doc! {"note": "all times in microseconds"};
    for (ns, t) in ctx.top.by_ns.lock().unwrap().iter() {
        totals.insert(
            ns.clone(),
            doc! {
                "total": t.total.doc(),
                "readLock": t.read.doc(),
                "writeLock": t.write.doc(),
                "queries": t.queries.doc(),
                "getmore": t.getmore.doc(),
                "insert": t.insert.doc(),
                "update": t.update.doc(),
                "remove": t.remove.doc(),
                "commands": t.commands.doc(),
            },
        );
    }
    Ok(Reply::ok(doc! {"totals": totals}))
}
