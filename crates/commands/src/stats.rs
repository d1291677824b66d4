//! `dbStats`, `collStats` and the `$collStats` stage: counts and sizes measured from the
//! tables (BSON bytes of documents, bytes of index entries), and for `local.oplog.rs` from
//! the log.
//!
//! Sizes are the logical bytes Eddy stores, read by scanning the collection's rows without
//! decoding them: accurate, but proportional to the collection's size. `storageSize` counts
//! documents with their record keys; the `_id_` index is those record keys.

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use storage::{CollectionMeta, Namespace, Snapshot};

use crate::{ServerCtx, util};

/// Sizes of one collection, unscaled.
struct Sizes {
    count: u64,
    data: u64,
    storage: u64,
    indexes: Vec<(String, u64)>,
}

fn sizes(snap: &Snapshot, m: &CollectionMeta) -> Result<Sizes> {
    let (count, data, keys) = snap.collection_size(m.id)?;
    let mut indexes = Vec::new();
    for ix in &m.indexes {
        let b = if ix.is_id() {
            keys
        } else {
            snap.index_size(ix.id)?
        };
        indexes.push((ix.name.clone(), b));
    }
    Ok(Sizes {
        count,
        data,
        storage: data + keys,
        indexes,
    })
}

/// The `scale` option: a positive integer (a fraction is truncated).
fn scale_of(cmd: &Document, max: f64) -> Result<i64> {
    match cmd.get("scale") {
        None => Ok(1),
        Some(v) => {
            let Some(x) = doc::compare::as_f64(v) else {
                return Err(MongoError::type_mismatch(format!(
                    "BSON field 'scale' is the wrong type '{}', expected types '[long, int, decimal, double']",
                    util::type_name(v)
                )));
            };
            let x = x.trunc();
            if x < 1.0 || x > max {
                return Err(MongoError::bad_value(
                    "Scale factor must be greater than zero and less than or equal to 2^50",
                ));
            }
            Ok(x as i64)
        }
    }
}

/// The oplog as a capped collection: its size bound and the log's bytes and entries.
fn oplog_stats(ctx: &ServerCtx, snap: &Snapshot, scale: i64) -> Result<Document> {
    let log = ctx.store.log();
    let bytes = log.bytes() as i64;
    let count = snap.oplog_after(None)?.count() as i64;
    let max = ctx.config.oplog_size_bytes as i64;
    Ok(doc! {
        "size": bytes / scale,
        "count": count,
        "avgObjSize": if count > 0 { bytes / count } else { 0 },
        "numOrphanDocs": 0,
        "storageSize": bytes / scale,
        "freeStorageSize": 0,
        "capped": true,
        "max": 0,
        "maxSize": max / scale,
        "nindexes": 0,
        "indexDetails": {},
        "indexBuilds": [],
        "totalIndexSize": 0,
        "indexSizes": {},
        "totalSize": bytes / scale,
        "scaleFactor": scale as i32,
    })
}

/// `storageStats` of a collection (the fields of `collStats` after `ns`).
fn storage_stats(ctx: &ServerCtx, snap: &Snapshot, ns: &Namespace, scale: i64) -> Result<Document> {
    if ns.db == "local" && ns.coll == "oplog.rs" {
        return oplog_stats(ctx, snap, scale);
    }
    let Some(m) = snap.collection(ns)? else {
        return Ok(doc! {
            "size": 0, "count": 0, "numOrphanDocs": 0, "storageSize": 0, "totalSize": 0,
            "nindexes": 0, "totalIndexSize": 0, "indexDetails": {}, "indexSizes": {},
            "scaleFactor": scale as i32,
        });
    };
    if m.is_view() {
        return Err(MongoError::new(
            ErrorCode::CommandNotSupportedOnView,
            format!("Namespace {} is a view, not a collection", ns.full()),
        ));
    }
    let s = sizes(snap, &m)?;
    let total_index: u64 = s.indexes.iter().map(|(_, b)| b).sum();
    let mut d = doc! {"size": (s.data as i64) / scale, "count": s.count as i64};
    if let Some(avg) = s.data.checked_div(s.count) {
        d.insert("avgObjSize", avg as i64);
    }
    d.insert("numOrphanDocs", 0);
    d.insert("storageSize", (s.storage as i64) / scale);
    d.insert("freeStorageSize", 0);
    match m.capped() {
        Some((size, max)) => {
            d.insert("capped", true);
            d.insert("max", max.map_or(0, |m| m as i64));
            d.insert("maxSize", size as i64 / scale);
        }
        None => {
            d.insert("capped", false);
        }
    }
    d.insert("nindexes", m.indexes.len() as i32);
    let mut details = Document::new();
    let mut index_sizes = Document::new();
    for (name, b) in &s.indexes {
        details.insert(name.clone(), Document::new());
        index_sizes.insert(name.clone(), (*b as i64) / scale);
    }
    d.insert("indexDetails", details);
    d.insert("indexBuilds", Vec::<Bson>::new());
    d.insert("totalIndexSize", (total_index as i64) / scale);
    d.insert("indexSizes", index_sizes);
    d.insert("totalSize", ((s.storage + total_index) as i64) / scale);
    d.insert("scaleFactor", scale as i32);
    Ok(d)
}

/// `collStats` (and `collstats`).
///
/// # Errors
/// Bad `scale`; a view.
pub fn coll_stats(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<crate::Reply> {
    let name = crate::command_name(cmd);
    let ns = util::coll_arg(cmd, name, db)?;
    let scale = scale_of(cmd, f64::from(i32::MAX))?;
    let snap = ctx.store.snapshot()?;
    let mut d = doc! {"ns": ns.full()};
    d.extend(storage_stats(ctx, &snap, &ns, scale)?);
    Ok(crate::Reply::ok(d))
}

/// `dbStats` (and `dbstats`).
///
/// # Errors
/// Bad `scale`.
pub fn db_stats(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<crate::Reply> {
    let scale = scale_of(cmd, 2f64.powi(50))?;
    let free = cmd.get("freeStorage").is_some_and(query::expr::truthy);
    let snap = ctx.store.snapshot()?;
    let all = snap.collections(Some(db))?;
    let (views, colls): (Vec<_>, Vec<_>) = all.iter().partition(|m| m.is_view());
    let (mut objects, mut data, mut storage, mut index, mut indexes) =
        (0u64, 0u64, 0u64, 0u64, 0i64);
    for m in &colls {
        let s = sizes(&snap, m)?;
        objects += s.count;
        data += s.data;
        storage += s.storage;
        index += s.indexes.iter().map(|(_, b)| b).sum::<u64>();
        indexes += m.indexes.len() as i64;
    }
    let mut ncolls = colls.len() as i64;
    if db == "local" {
        let b = ctx.store.log().bytes();
        objects += snap.oplog_after(None)?.count() as u64;
        data += b;
        storage += b;
        ncolls += 1;
    }
    let sc = scale as f64;
    let mut d = doc! {
        "db": db,
        "collections": ncolls,
        "views": views.len() as i64,
        "objects": objects as i64,
        "avgObjSize": if objects > 0 { data as f64 / objects as f64 } else { 0.0 },
        "dataSize": data as f64 / sc,
        "storageSize": storage as f64 / sc,
        "indexes": indexes,
        "indexSize": index as f64 / sc,
        "totalSize": (storage + index) as f64 / sc,
    };
    if free {
        d.insert("freeStorageSize", 0.0);
        d.insert("indexFreeStorageSize", 0.0);
        d.insert("totalFreeStorageSize", 0.0);
    }
    d.insert("scaleFactor", scale);
    // fsUsedSize/fsTotalSize are left out, as MongoDB leaves them out for engines whose
    // files it does not measure.
    Ok(crate::Reply::ok(d))
}

/// Runs a leading `$collStats` stage: the one document it produces.
///
/// # Errors
/// A bad spec (40166), `$collStats` not first, a view or missing collection with
/// `storageStats`/`count`.
pub fn coll_stats_stage(ctx: &ServerCtx, ns: &Namespace, spec: &Bson) -> Result<Document> {
    let Bson::Document(spec) = spec else {
        return Err(MongoError::with_code(
            40166,
            format!("$collStats must take a nested object but found: {spec}"),
        ));
    };
    let snap = ctx.store.snapshot()?;
    let mut out = doc! {
        "ns": ns.full(),
        "host": &ctx.config.advertised,
        "localTime": bson::DateTime::now(),
    };
    for (k, v) in spec {
        match k.as_str() {
            "latencyStats" => {
                let zero = doc! {"latency": 0i64, "ops": 0i64};
                out.insert(
                    "latencyStats",
                    doc! {
                        "reads": zero.clone(), "writes": zero.clone(),
                        "commands": zero.clone(), "transactions": zero,
                    },
                );
            }
            "storageStats" | "count" => {
                let exists =
                    (ns.db == "local" && ns.coll == "oplog.rs") || snap.collection(ns)?.is_some();
                if !exists {
                    return Err(MongoError::new(
                        ErrorCode::NamespaceNotFound,
                        format!(
                            "Unable to retrieve {k} in $collStats stage :: caused by :: Collection [{}] not found.",
                            ns.full()
                        ),
                    ));
                }
                let scale = match v {
                    Bson::Document(o) => scale_of(o, f64::from(i32::MAX))?,
                    _ => 1,
                };
                let st = storage_stats(ctx, &snap, ns, scale)?;
                if k == "count" {
                    out.insert("count", st.get("count").cloned().unwrap_or(Bson::Int64(0)));
                } else {
                    out.insert("storageStats", st);
                }
            }
            "queryExecStats" => {
                out.insert(
                    "queryExecStats",
                    doc! {"collectionScans": {"total": 0i64, "nonTailable": 0i64}},
                );
            }
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field '$collStats.{other}' is an unknown field."),
                ));
            }
        }
    }
    Ok(out)
}

/// The `$indexStats` stage: one document per index of the collection, with how often the
/// planner chose it since the server started (`accesses.ops`, `accesses.since`).
///
/// # Errors
/// FailedToParse for options (it takes none); a storage error.
pub fn index_stats(
    ctx: &ServerCtx,
    snap: &storage::Snapshot,
    ns: &storage::Namespace,
    spec: &Bson,
) -> Result<Vec<Document>> {
    if !matches!(spec, Bson::Document(d) if d.is_empty()) {
        return Err(MongoError::with_code(
            28803,
            "The $indexStats stage specification must be an empty object",
        ));
    }
    let Some(meta) = snap.collection(ns)?.filter(|m| !m.is_view()) else {
        return Ok(Vec::new());
    };
    Ok(meta
        .indexes
        .iter()
        .map(|ix| {
            let (ops, since) = exec::plan::usage::of(meta.uuid, ix.id);
            doc! {
                "name": &ix.name,
                "key": ix.key.clone(),
                "host": &ctx.config.advertised,
                "accesses": {"ops": ops as i64, "since": since},
                "spec": ix.spec.clone(),
            }
        })
        .collect())
}
