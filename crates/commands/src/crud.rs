//! insert, update, delete, findAndModify, find, count, distinct, aggregate, explain.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bson::{Bson, DateTime, Document, Timestamp, doc, oid::ObjectId};
use errors::{ErrorCode, MongoError, Result};
use exec::{Plan, plan_query, scan};
use query::expr::Vars;
use query::filter::Filter;
use query::pipeline::{Env, OutStage, Pipeline};
use query::projection::Projection;
use query::sort::SortSpec;
use query::update::{Update, UpdateCtx, upsert_seed};
use storage::{CollectionMeta, Namespace, OpKind, OplogEntry, Snapshot, WriteCtx};

use crate::cursor::{DocSource, SnapEnv, cursor_reply};
use crate::ddl::ensure_collection;
use crate::reply::write_error;
use crate::{Reply, ServerCtx, util};

/// The session fields a write came with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Session {
    lsid: Option<Document>,
    txn_number: Option<i64>,
    /// `bypassDocumentValidation`: the command's writes skip the collection's validator.
    pub(crate) bypass_validation: bool,
    /// The command's `maxTimeMS`, checked before each statement and as it scans.
    pub(crate) interrupt: errors::Interrupt,
}

impl Session {
    /// No session, writes bypassing validation (internal copies).
    pub(crate) fn bypassing_validation() -> Session {
        Session {
            bypass_validation: true,
            ..Session::default()
        }
    }

    pub(crate) fn of(cmd: &Document) -> Session {
        let bypass_validation = cmd
            .get("bypassDocumentValidation")
            .is_some_and(query::expr::truthy);
        // Inside a transaction the session fields go on the commit's applyOps entry, and
        // statements are not individually retryable.
        if crate::txn::in_txn() {
            return Session {
                bypass_validation,
                interrupt: crate::op::current(),
                ..Session::default()
            };
        }
        Session {
            lsid: cmd.get_document("lsid").ok().cloned(),
            txn_number: util::get_i64(cmd, "txnNumber"),
            bypass_validation,
            interrupt: crate::op::current(),
        }
    }

    /// The key of this session's retryable-write record, when the write is retryable.
    fn retry_key(&self) -> Option<(Vec<u8>, i64)> {
        let id = match self.lsid.as_ref()?.get("id")? {
            Bson::Binary(b) => b.bytes.clone(),
            _ => return None,
        };
        Some((id, self.txn_number?))
    }

    fn entry(&self, mut e: OplogEntry, stmt: usize) -> OplogEntry {
        if self.txn_number.is_some() {
            e.lsid.clone_from(&self.lsid);
            e.txn_number = self.txn_number;
            e.stmt_id = Some(stmt as i32);
        }
        e
    }
}

/// Runs a write command once per (lsid, txnNumber): a retry gets the first reply back.
pub(crate) fn retryable(
    w: &mut WriteCtx<'_>,
    s: &Session,
    f: impl FnOnce(&mut WriteCtx<'_>) -> Result<Document>,
) -> Result<Document> {
    let Some((key, txn)) = s.retry_key() else {
        return f(w);
    };
    if let Some(rec) = w.session_record(&key)? {
        let stored = rec.get_i64("txnNumber").unwrap_or(-1);
        if txn < stored {
            return Err(MongoError::new(
                ErrorCode::TransactionTooOld,
                format!(
                    "Retryable write with txnNumber {txn} is prohibited on session because a newer retryable write with txnNumber {stored} has already started on this session."
                ),
            ));
        }
        if txn == stored {
            if let Ok(r) = rec.get_document("reply") {
                let mut r = r.clone();
                r.insert("retriedStmtIds", true);
                return Ok(r);
            }
        }
    }
    let reply = f(w)?;
    w.put_session_record(&key, &doc! {"txnNumber": txn, "reply": reply.clone()})?;
    Ok(reply)
}

/// Pipelines inside the commit pipeline (update pipelines) see no other collection.
struct WriteEnv;

impl Env for WriteEnv {
    fn collection_docs(&self, _db: &str, _coll: &str) -> Result<Vec<Document>> {
        Ok(Vec::new())
    }
    fn now(&self) -> DateTime {
        DateTime::now()
    }
    fn cluster_time(&self) -> Timestamp {
        Timestamp {
            time: 0,
            increment: 0,
        }
    }
}

fn batch<'a>(cmd: &'a Document, key: &str) -> Result<&'a Vec<Bson>> {
    let a = cmd.get_array(key).map_err(|_| {
        MongoError::failed_to_parse(format!(
            "BSON field '{key}' is missing but a required field"
        ))
    })?;
    if a.is_empty() || a.len() > wire::MAX_WRITE_BATCH_SIZE {
        return Err(MongoError::new(
            ErrorCode::InvalidLength,
            format!(
                "Write batch sizes must be between 1 and {}. Got {} operations.",
                wire::MAX_WRITE_BATCH_SIZE,
                a.len()
            ),
        ));
    }
    Ok(a)
}

/// Checks an inserted document's `_id`. Since MongoDB 5.0 other fields may start with `$`,
/// but the fields of an `_id` document may not.
pub(crate) fn check_id(d: &Document) -> Result<()> {
    if let Some(Bson::Document(id)) = d.get("_id") {
        if let Some(k) = id.keys().find(|k| k.starts_with('$')) {
            return Err(MongoError::new(
                ErrorCode::DollarPrefixedFieldName,
                format!(
                    "_id fields may not contain '$'-prefixed fields: {k} is not valid for storage."
                ),
            ));
        }
    }
    match d.get("_id") {
        Some(Bson::Array(_)) => Err(MongoError::new(
            ErrorCode::InvalidIdField,
            "The '_id' value cannot be of type array",
        )),
        Some(Bson::RegularExpression(_)) => Err(MongoError::new(
            ErrorCode::InvalidIdField,
            "The '_id' value cannot be of type regex",
        )),
        Some(Bson::Undefined) => Err(MongoError::new(
            ErrorCode::InvalidIdField,
            "can't use a undefined for _id",
        )),
        _ => Ok(()),
    }
}

/// The document with `_id` first, generated as an ObjectId when missing.
pub(crate) fn with_id(d: &Document) -> Document {
    let mut out = Document::new();
    out.insert(
        "_id",
        d.get("_id")
            .cloned()
            .unwrap_or_else(|| Bson::ObjectId(ObjectId::new())),
    );
    for (k, v) in d {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

pub(crate) fn insert_one(
    w: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    d: &Document,
    s: &Session,
    stmt: usize,
) -> Result<()> {
    exec::validate::check(meta, d, None, s.bypass_validation)?;
    check_capped_size(meta, doc::encoded_len(d))?;
    let bytes = exec::write::insert_doc(w, meta, d)?;
    let id = d.get("_id").cloned().unwrap_or(Bson::Null);
    log_insert(w, meta, bytes, id, s, stmt)?;
    cap(w, meta)
}

/// Keeps a capped collection within its bounds after an insert: its oldest documents are
/// deleted, in the same commit, each logged as a delete (as mongod has replicated capped
/// deletes since 5.0), so change streams show them as `delete` events.
fn cap(w: &mut WriteCtx<'_>, meta: &CollectionMeta) -> Result<()> {
    while let Some(old) = exec::write::capped_excess(w, meta)? {
        delete_one(w, meta, &old, &Session::default(), 0)?;
    }
    Ok(())
}

/// Refuses a document larger than a capped collection's whole size: it could never be
/// kept.
fn check_capped_size(meta: &CollectionMeta, len: usize) -> Result<()> {
    match meta.capped() {
        Some((size, _)) if len as u64 > size => Err(MongoError::bad_value(format!(
            "document of {len} bytes is larger than the capped collection {}'s size of {size} bytes",
            meta.ns.full()
        ))),
        _ => Ok(()),
    }
}

/// A document of an `insert` command, made ready outside the commit pipeline: encoded for
/// storage (`_id` first, generated when missing), its `_id` checked. The pipeline then
/// stores, logs and publishes these bytes without building the document again.
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    id: Bson,
}

impl Encoded {
    pub(crate) fn new(d: &Document) -> Result<Encoded> {
        check_id(d)?;
        let id = d
            .get("_id")
            .cloned()
            .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
        let bytes = doc::encode::encode_with_id(d, &id)
            .map_err(|e| MongoError::bad_value(e.to_string()))?;
        Ok(Encoded {
            bytes: exec::write::check_size(bytes)?,
            id,
        })
    }
}

/// [`insert_one`] for an [`Encoded`] document: the document is decoded only when the
/// collection's validator or secondary indexes need it.
pub(crate) fn insert_encoded(
    w: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    e: Encoded,
    s: &Session,
    stmt: usize,
) -> Result<()> {
    let validation = exec::validate::applying(meta, s.bypass_validation)?;
    let doc = if validation.is_some() || exec::write::insert_needs_document(meta) {
        // The bytes were encoded from a decoded command, whose nesting the wire decoder
        // bounded already.
        let d = doc::raw::bytes_to_document(&e.bytes, usize::MAX)
            .map_err(|err| MongoError::internal(err.to_string()))?;
        if let Some(v) = &validation {
            exec::validate::check_with(v, meta, &d, None)?;
        }
        Some(d)
    } else {
        None
    };
    check_capped_size(meta, e.bytes.len())?;
    exec::write::insert_encoded(w, meta, &e.bytes, &e.id, doc.as_ref())?;
    log_insert(w, meta, e.bytes, e.id, s, stmt)?;
    cap(w, meta)
}

/// Logs an insert whose stored bytes are `bytes`: the entry's `o` is those bytes, not a
/// copy of the document.
fn log_insert(
    w: &mut WriteCtx<'_>,
    meta: &CollectionMeta,
    bytes: Vec<u8>,
    id: Bson,
    s: &Session,
    stmt: usize,
) -> Result<()> {
    let entry = OplogEntry::new(
        OpKind::Insert,
        meta.ns.full(),
        Some(meta.uuid),
        Document::new(),
    )
    .with_o2(doc! {"_id": id})
    .with_o_bytes(bytes);
    w.log(s.entry(entry, stmt))?;
    Ok(())
}

/// `insert`.
///
/// # Errors
/// Command-level errors; per-document failures are `writeErrors`.
pub async fn insert(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "insert", db)?;
    let docs = batch(cmd, "documents")?;
    let ordered = util::get_bool(cmd, "ordered").unwrap_or(true);
    let mut prepared: Vec<Result<Encoded>> = Vec::with_capacity(docs.len());
    for d in docs {
        prepared.push(match d {
            Bson::Document(d) => Encoded::new(d),
            _ => Err(MongoError::type_mismatch(
                "documents to insert must be objects",
            )),
        });
    }
    ctx.stats
        .insert
        .fetch_add(docs.len() as u64, Ordering::Relaxed);
    let s = Session::of(cmd);
    let reply = crate::txn::write(ctx, move |w| {
        retryable(w, &s, |w| {
            let (mut meta, _) = ensure_collection(w, &ns)?;
            let mut n = 0;
            let mut errs = Vec::new();
            for (i, d) in prepared.into_iter().enumerate() {
                s.interrupt.check()?;
                match d.and_then(|d| insert_encoded(w, &mut meta, d, &s, i)) {
                    Ok(()) => n += 1,
                    Err(e) => {
                        errs.push(Bson::Document(write_error(i, &e)));
                        if ordered {
                            break;
                        }
                    }
                }
            }
            let mut r = doc! {"n": n};
            if !errs.is_empty() {
                r.insert("writeErrors", errs);
            }
            Ok(r)
        })
    })
    .await?;
    Ok(Reply::ok(reply))
}

/// Interruptions (`maxTimeMS`, `killOp`) fail a write command's whole batch rather than
/// one statement, as in mongod.
pub(crate) fn is_interruption(e: &MongoError) -> bool {
    e.is(ErrorCode::MaxTimeMSExpired) || e.is(ErrorCode::Interrupted)
}

/// A write's `hint`: it must name an index (as in mongod). Writes find their documents
/// the same way whichever index is named, which gives the same documents unless the index
/// leaves some out (sparse, partial): those hints are refused rather than ignored.
fn check_write_hint(meta: &CollectionMeta, filter: &Filter, hint: &Bson) -> Result<()> {
    match plan_query(meta, filter, None, Some(hint))? {
        Plan::IxScan { index, .. } if index.sparse || index.partial_filter.is_some() => {
            Err(MongoError::new(
                ErrorCode::InvalidOptions,
                "a write's hint naming a sparse or partial index is not supported by Eddy",
            ))
        }
        _ => Ok(()),
    }
}

/// The natural-order direction a find's sort or hint asks for: `Some(reverse)`.
fn natural_order(sort: Option<&Document>, hint: Option<&Bson>) -> Result<Option<bool>> {
    if let Some(s) = sort
        && let Some(reverse) = exec::natural_direction(s)?
    {
        return Ok(Some(reverse));
    }
    match hint {
        Some(Bson::Document(h)) => exec::natural_direction(h),
        _ => Ok(None),
    }
}

/// The documents of a collection matching a filter, inside the commit pipeline.
fn matching(
    w: &mut WriteCtx<'_>,
    meta: &CollectionMeta,
    filter: &Filter,
    interrupt: &errors::Interrupt,
) -> Result<Vec<Document>> {
    interrupt.check()?;
    if let Ok(Plan::IdLookup(ids)) = plan_query(meta, filter, None, None) {
        let mut out = Vec::new();
        for id in ids {
            if let Some(d) = w.get_doc(meta.id, &exec::id_key(&id))? {
                if filter.try_matches(&d)? {
                    out.push(d);
                }
            }
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (_, d) in w.scan_docs(meta.id)? {
        interrupt.check()?;
        if filter.try_matches(&d)? {
            out.push(d);
        }
    }
    Ok(out)
}

/// Applies an update to one document, logging it; returns whether it changed.
fn update_one(
    w: &mut WriteCtx<'_>,
    meta: &mut CollectionMeta,
    old: &Document,
    new: &Document,
    delta: Option<Document>,
    s: &Session,
    stmt: usize,
) -> Result<()> {
    exec::validate::check(meta, new, Some(old), s.bypass_validation)?;
    exec::write::replace_doc(w, meta, old, new)?;
    let key = doc! {"_id": new.get("_id").cloned().unwrap_or(Bson::Null)};
    let o = match delta {
        Some(d) => doc! {"$v": 2, "diff": d},
        None => new.clone(),
    };
    let ts = w.log(s.entry(
        OplogEntry::new(OpKind::Update, meta.ns.full(), Some(meta.uuid), o).with_o2(key),
        stmt,
    ))?;
    if meta.pre_post_images() {
        w.put_preimage(ts, meta.uuid, old)?;
    }
    Ok(())
}

fn delete_one(
    w: &mut WriteCtx<'_>,
    meta: &CollectionMeta,
    d: &Document,
    s: &Session,
    stmt: usize,
) -> Result<()> {
    exec::write::delete_doc(w, meta, d)?;
    let key = doc! {"_id": d.get("_id").cloned().unwrap_or(Bson::Null)};
    let ts = w.log(s.entry(
        OplogEntry::new(OpKind::Delete, meta.ns.full(), Some(meta.uuid), key),
        stmt,
    ))?;
    if meta.pre_post_images() {
        w.put_preimage(ts, meta.uuid, d)?;
    }
    Ok(())
}

/// Deletes up to `limit` documents of `meta` matching `filter`, as separate (non-retryable)
/// statements: the TTL monitor's and capped collections' deletes. Returns how many.
///
/// # Errors
/// A storage error.
pub(crate) fn delete_matching(
    w: &mut WriteCtx<'_>,
    meta: &CollectionMeta,
    filter: &Filter,
    s: &Session,
    limit: usize,
) -> Result<usize> {
    let docs = matching(w, meta, filter, &s.interrupt)?;
    let n = docs.len().min(limit);
    for d in docs.iter().take(limit) {
        delete_one(w, meta, d, s, 0)?;
    }
    Ok(n)
}

pub(crate) struct UpdateOutcome {
    pub(crate) n: i64,
    pub(crate) modified: i64,
    pub(crate) upserted: Option<Bson>,
    /// The document before (or after, with `new`) for findAndModify.
    value: Option<Document>,
}

#[allow(clippy::too_many_arguments)]
fn run_update(
    w: &mut WriteCtx<'_>,
    ns: &Namespace,
    filter: &Filter,
    update: &Update,
    upsert: bool,
    multi: bool,
    sort: Option<&SortSpec>,
    return_new: bool,
    s: &Session,
    stmt: usize,
) -> Result<UpdateOutcome> {
    let meta = w.collection(ns)?;
    let mut out = UpdateOutcome {
        n: 0,
        modified: 0,
        upserted: None,
        value: None,
    };
    if let Some(mut meta) = meta {
        if meta.is_view() {
            return Err(MongoError::new(
                ErrorCode::CommandNotSupportedOnView,
                format!("Namespace {} is a view, not a collection", ns.full()),
            ));
        }
        let mut docs = matching(w, &meta, filter, &s.interrupt)?;
        if let Some(s) = sort {
            s.sort(&mut docs);
        }
        for old in docs {
            let uctx = UpdateCtx {
                is_upsert_insert: false,
                now: DateTime::now(),
                positional: filter.match_position(&old),
            };
            let res = update.apply(&old, &uctx, &WriteEnv)?;
            out.n += 1;
            if res.modified {
                out.modified += 1;
                update_one(
                    w,
                    &mut meta,
                    &old,
                    &res.doc,
                    res.delta.map(|d| d.to_document()),
                    s,
                    stmt,
                )?;
            }
            out.value = Some(if return_new { res.doc } else { old });
            if !multi {
                break;
            }
        }
    }
    if out.n == 0 && upsert {
        let (mut meta, _) = ensure_collection(w, ns)?;
        let seed = upsert_seed(&filter.equality_fields())?;
        let uctx = UpdateCtx {
            is_upsert_insert: true,
            now: DateTime::now(),
            positional: None,
        };
        let mut doc = update.apply(&seed, &uctx, &WriteEnv)?.doc;
        if update.is_replacement() {
            if let (Some(id), false) = (seed.get("_id"), doc.contains_key("_id")) {
                doc.insert("_id", id.clone());
            }
        }
        let doc = with_id(&doc);
        check_id(&doc)?;
        insert_one(w, &mut meta, &doc, s, stmt)?;
        out.upserted = doc.get("_id").cloned();
        out.value = if return_new { Some(doc) } else { None };
    }
    Ok(out)
}

/// One statement of an `update` command (`{q, u, multi, upsert, arrayFilters, sort,
/// collation}`); the bulkWrite command's update operations come here too.
pub(crate) fn update_statement(
    w: &mut WriteCtx<'_>,
    ns: &Namespace,
    st: &Bson,
    vars: &Vars,
    s: &Session,
    i: usize,
) -> Result<UpdateOutcome> {
    let Bson::Document(st) = st else {
        return Err(MongoError::type_mismatch(
            "update statements must be objects",
        ));
    };
    let q = util::opt_doc(st, "q")?.cloned().unwrap_or_default();
    let u = st.get("u").ok_or_else(|| {
        MongoError::failed_to_parse("BSON field 'update.updates.u' is missing but a required field")
    })?;
    let af: Option<Vec<Document>> = match st.get("arrayFilters") {
        Some(Bson::Array(a)) => Some(a.iter().filter_map(|v| v.as_document().cloned()).collect()),
        _ => None,
    };
    let coll = exec::collation::for_write(st, w, ns)?;
    let filter = Filter::parse(&q)?.with_collation(coll.clone()).bind(vars);
    let update = Update::parse(u, af.as_deref())?
        .with_collation(coll.clone())
        .bind(vars);
    let multi = util::get_bool(st, "multi").unwrap_or(false);
    if multi && update.is_replacement() {
        return Err(MongoError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    // `sort` picks which document a single update changes (8.0).
    let sort = util::opt_doc(st, "sort")?
        .map(|s| Ok(SortSpec::parse(s)?.with_collation(coll.clone())))
        .transpose()?;
    if multi && sort.is_some() {
        return Err(MongoError::failed_to_parse(
            "Cannot specify sort with multi=true",
        ));
    }
    if let (Some(h), Some(meta)) = (st.get("hint"), w.collection(ns)?) {
        check_write_hint(&meta, &filter, h)?;
    }
    run_update(
        w,
        ns,
        &filter,
        &update,
        util::get_bool(st, "upsert").unwrap_or(false),
        multi,
        sort.as_ref(),
        false,
        s,
        i,
    )
}

/// `update`.
///
/// # Errors
/// Command-level errors; per-statement failures are `writeErrors`.
pub async fn update(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "update", db)?;
    let stmts = batch(cmd, "updates")?.clone();
    let ordered = util::get_bool(cmd, "ordered").unwrap_or(true);
    let vars = util::command_vars(ctx, cmd)?;
    ctx.stats
        .update
        .fetch_add(stmts.len() as u64, Ordering::Relaxed);
    let s = Session::of(cmd);
    let reply = crate::txn::write(ctx, move |w| {
        retryable(w, &s, |w| {
            let (mut n, mut modified) = (0i64, 0i64);
            let mut upserted = Vec::new();
            let mut errs = Vec::new();
            for (i, st) in stmts.iter().enumerate() {
                s.interrupt.check()?;
                let r = update_statement(w, &ns, st, &vars, &s, i);
                match r {
                    Err(e) if is_interruption(&e) => return Err(e),
                    Ok(o) => {
                        n += o.n;
                        modified += o.modified;
                        if let Some(id) = o.upserted {
                            n += 1;
                            upserted.push(Bson::Document(doc! {"index": i as i32, "_id": id}));
                        }
                    }
                    Err(e) => {
                        errs.push(Bson::Document(write_error(i, &e)));
                        if ordered {
                            break;
                        }
                    }
                }
            }
            let mut r = doc! {"n": n as i32, "nModified": modified as i32};
            if !upserted.is_empty() {
                r.insert("upserted", upserted);
            }
            if !errs.is_empty() {
                r.insert("writeErrors", errs);
            }
            Ok(r)
        })
    })
    .await?;
    Ok(Reply::ok(reply))
}

/// One statement of a `delete` command (`{q, limit, collation}`); the bulkWrite command's
/// delete operations come here too. Returns the number of documents deleted.
pub(crate) fn delete_statement(
    w: &mut WriteCtx<'_>,
    ns: &Namespace,
    st: &Bson,
    vars: &Vars,
    s: &Session,
    i: usize,
) -> Result<i64> {
    let Bson::Document(st) = st else {
        return Err(MongoError::type_mismatch(
            "delete statements must be objects",
        ));
    };
    let q = util::opt_doc(st, "q")?.cloned().unwrap_or_default();
    let limit = util::get_i64(st, "limit").ok_or_else(|| {
        MongoError::failed_to_parse(
            "BSON field 'delete.deletes.limit' is missing but a required field",
        )
    })?;
    if limit != 0 && limit != 1 {
        return Err(MongoError::failed_to_parse(format!(
            "The limit field in delete objects must be 0 or 1. Got {limit}"
        )));
    }
    let coll = exec::collation::for_write(st, w, ns)?;
    let filter = Filter::parse(&q)?.with_collation(coll).bind(vars);
    let Some(meta) = w.collection(ns)? else {
        return Ok(0);
    };
    if let Some(h) = st.get("hint") {
        check_write_hint(&meta, &filter, h)?;
    }
    let mut k = 0;
    for d in matching(w, &meta, &filter, &s.interrupt)? {
        delete_one(w, &meta, &d, s, i)?;
        k += 1;
        if limit == 1 {
            break;
        }
    }
    Ok(k)
}

/// `delete`.
///
/// # Errors
/// Command-level errors; per-statement failures are `writeErrors`.
pub async fn delete(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "delete", db)?;
    let stmts = batch(cmd, "deletes")?.clone();
    let ordered = util::get_bool(cmd, "ordered").unwrap_or(true);
    let vars = util::command_vars(ctx, cmd)?;
    ctx.stats
        .delete
        .fetch_add(stmts.len() as u64, Ordering::Relaxed);
    let s = Session::of(cmd);
    let reply = crate::txn::write(ctx, move |w| {
        retryable(w, &s, |w| {
            let mut n = 0i64;
            let mut errs = Vec::new();
            for (i, st) in stmts.iter().enumerate() {
                s.interrupt.check()?;
                let r = delete_statement(w, &ns, st, &vars, &s, i);
                match r {
                    Err(e) if is_interruption(&e) => return Err(e),
                    Ok(k) => n += k,
                    Err(e) => {
                        errs.push(Bson::Document(write_error(i, &e)));
                        if ordered {
                            break;
                        }
                    }
                }
            }
            let mut r = doc! {"n": n as i32};
            if !errs.is_empty() {
                r.insert("writeErrors", errs);
            }
            Ok(r)
        })
    })
    .await?;
    Ok(Reply::ok(reply))
}

/// `findAndModify`.
///
/// # Errors
/// FailedToParse for contradictory options, and the update's errors.
pub async fn find_and_modify(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let name = crate::command_name(cmd).to_string();
    let ns = util::coll_arg(cmd, &name, db)?;
    let vars = util::command_vars(ctx, cmd)?;
    let filter =
        Filter::parse(&util::opt_doc(cmd, "query")?.cloned().unwrap_or_default())?.bind(&vars);
    let sort = util::opt_doc(cmd, "sort")?
        .map(SortSpec::parse)
        .transpose()?;
    let fields = util::opt_doc(cmd, "fields")?
        .map(Projection::parse)
        .transpose()?;
    let remove = util::get_bool(cmd, "remove").unwrap_or(false);
    let upsert = util::get_bool(cmd, "upsert").unwrap_or(false);
    let return_new = util::get_bool(cmd, "new").unwrap_or(false);
    let af: Option<Vec<Document>> = match cmd.get("arrayFilters") {
        Some(Bson::Array(a)) => Some(a.iter().filter_map(|v| v.as_document().cloned()).collect()),
        _ => None,
    };
    let update = match cmd.get("update") {
        Some(u) if remove => {
            let _ = u;
            return Err(MongoError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ));
        }
        Some(u) => Some(Update::parse(u, af.as_deref())?.bind(&vars)),
        None if remove => None,
        None => {
            return Err(MongoError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ));
        }
    };
    if remove && (upsert || return_new) {
        return Err(MongoError::failed_to_parse(
            "Cannot specify both upsert=true and remove=true",
        ));
    }
    ctx.stats.update.fetch_add(1, Ordering::Relaxed);
    let s = Session::of(cmd);
    let coll_spec = cmd.clone();
    let hint = cmd.get("hint").cloned();
    let reply = crate::txn::write(ctx, move |w| {
            retryable(w, &s, |w| {
                let coll = exec::collation::for_write(&coll_spec, w, &ns)?;
                let filter = filter.with_collation(coll.clone());
                if let (Some(h), Some(meta)) = (&hint, w.collection(&ns)?) {
                    check_write_hint(&meta, &filter, h)?;
                }
                let update = update.map(|u| u.with_collation(coll.clone()));
                let sort = sort.map(|s| s.with_collation(coll));
                let (value, leo) = match update {
                    None => {
                        let Some(meta) = w.collection(&ns)? else {
                            return Ok(doc! {"lastErrorObject": {"n": 0}, "value": Bson::Null});
                        };
                        let mut docs = matching(w, &meta, &filter, &s.interrupt)?;
                        if let Some(s) = &sort {
                            s.sort(&mut docs);
                        }
                        match docs.into_iter().next() {
                            Some(d) => {
                                delete_one(w, &meta, &d, &s, 0)?;
                                (Some(d), doc! {"n": 1})
                            }
                            None => (None, doc! {"n": 0}),
                        }
                    }
                    Some(u) => {
                        let o = run_update(w, &ns, &filter, &u, upsert, false, sort.as_ref(), return_new, &s, 0)?;
                        let mut leo = doc! {"n": (o.n + i64::from(o.upserted.is_some())) as i32, "updatedExisting": o.n > 0};
                        if let Some(id) = o.upserted {
                            leo.insert("upserted", id);
                        }
                        (o.value, leo)
                    }
                };
                let value = match (value, &fields) {
                    (Some(v), Some(p)) => Bson::Document(p.apply(&v, None)?),
                    (Some(v), None) => Bson::Document(v),
                    (None, _) => Bson::Null,
                };
                Ok(doc! {"lastErrorObject": leo, "value": value})
            })
        })
        .await?;
    Ok(Reply::ok(reply))
}

/// The documents of a collection (or view) matching a filter, read from a snapshot, in
/// plan order, checking the operation's interruption point as it goes.
pub(crate) fn query_source(
    snap: &Arc<Snapshot>,
    meta: &CollectionMeta,
    filter: Filter,
    plan: &Plan,
) -> Result<DocSource> {
    let interrupt = crate::op::current();
    if meta.is_view() {
        let docs = view_docs(snap, meta)?;
        return Ok(Box::new(
            docs.into_iter().filter(move |d| filter.matches(d)).map(Ok),
        ));
    }
    let it = scan(snap.clone(), meta, plan)?;
    let text = filter.text_query().is_some();
    Ok(Box::new(it.filter_map(move |r| {
        if let Err(e) = interrupt.check() {
            return Some(Err(e));
        }
        match r {
            Ok(mut d) => {
                // A `$text` match carries its score to `{$meta: "textScore"}` (and is not
                // scored again by the filter); the reply leaves it out.
                if let Some(q) = text.then(|| filter.text_query()).flatten() {
                    match q.score(&d) {
                        Ok(Some(score)) => {
                            d.insert(query::text::SCORE_FIELD, score);
                        }
                        Ok(None) => return None,
                        Err(e) => return Some(Err(e)),
                    }
                }
                filter.try_matches(&d).map(|m| m.then_some(d)).transpose()
            }
            Err(e) => Some(Err(e)),
        }
    })))
}

fn view_docs(snap: &Arc<Snapshot>, meta: &CollectionMeta) -> Result<Vec<Document>> {
    let on = meta.options.get_str("viewOn").unwrap_or("");
    let src_ns = Namespace::new(meta.ns.db.clone(), on);
    let stages: Vec<Document> = match meta.options.get_array("pipeline") {
        Ok(a) => a.iter().filter_map(|s| s.as_document().cloned()).collect(),
        Err(_) => Vec::new(),
    };
    let input = match snap.collection(&src_ns)? {
        Some(m) if m.is_view() => view_docs(snap, &m)?,
        Some(m) => snap
            .scan_natural(m.id, false)?
            .map(|r| r.map(|(_, d)| d))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    // A view's pipeline runs under the view's default collation.
    let p = Pipeline::parse(&stages, &meta.ns.db)?
        .with_collation(exec::collation::of_collection(meta)?);
    p.run(input, &SnapEnv::plain(snap.clone()).shared())
}

fn oplog_source(snap: &Snapshot, filter: Filter, reverse: bool) -> Result<DocSource> {
    let decode = |r: Result<(Timestamp, std::sync::Arc<[u8]>)>| {
        r.and_then(|(_, b)| OplogEntry::from_bytes(&b).map(|e| e.to_document()))
    };
    // Errors (an expired deadline among them) are kept: they end the read.
    let keep = move |r: &Result<Document>| r.as_ref().map_or(true, |d| filter.matches(d));
    let interrupt = crate::op::current();
    let decode = move |r| interrupt.check().and_then(|()| decode(r));
    // Read lazily: the oplog may be far larger than memory.
    Ok(if reverse {
        Box::new(snap.oplog_rev()?.map(decode).filter(keep))
    } else {
        Box::new(snap.oplog_after(None)?.map(decode).filter(keep))
    })
}

/// `find`.
///
/// # Errors
/// Bad filters, projections, sorts, hints.
pub fn find(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    ctx.stats.query.fetch_add(1, Ordering::Relaxed);
    let ns = util::coll_arg(cmd, "find", db)?;
    let vars = util::command_vars(ctx, cmd)?;
    let filter =
        Filter::parse(&util::opt_doc(cmd, "filter")?.cloned().unwrap_or_default())?.bind(&vars);
    let sort = util::opt_doc(cmd, "sort")?
        .filter(|s| !s.is_empty())
        .cloned();
    let projection = util::opt_doc(cmd, "projection")?
        .filter(|p| !p.is_empty())
        .map(Projection::parse)
        .transpose()?;
    let skip = util::opt_count(cmd, "skip")?.unwrap_or(0);
    if skip < 0 {
        return Err(MongoError::bad_value(
            "Skip value must be non-negative, but received: ".to_string() + &skip.to_string(),
        ));
    }
    let limit = util::opt_count(cmd, "limit")?.unwrap_or(0);
    // Flags with nothing to do on one node, type-checked as mongod does.
    for flag in [
        "allowPartialResults",
        "oplogReplay",
        "noCursorTimeout",
        "singleBatch",
    ] {
        if let Some(v) = cmd.get(flag) {
            if !matches!(v, Bson::Boolean(_)) {
                return Err(MongoError::type_mismatch(format!(
                    "BSON field 'FindCommandRequest.{flag}' is the wrong type '{}', expected type 'bool'",
                    query::expr::type_name(Some(v))
                )));
            }
        }
    }
    let mut single = util::get_bool(cmd, "singleBatch").unwrap_or(false);
    let mut batch_size = util::opt_batch_size(cmd)?;
    let limit = if limit < 0 {
        single = true;
        -limit
    } else {
        limit
    };
    if limit > 0 {
        batch_size = Some(batch_size.map_or(limit, |b| if b == 0 { 0 } else { b.min(limit) }));
    }
    let tailable = crate::tail::options(cmd)?;
    let (snap, at_ts) = crate::txn::read_snapshot(ctx, cmd)?;
    let coll = exec::collation::for_read(cmd, &snap, &ns)?;
    let filter = filter.with_collation(coll.clone());
    if let Some(await_data) = tailable {
        let source = if db == "local" && ns.coll == "oplog.rs" {
            crate::tail::Source::Oplog
        } else {
            match snap.collection(&ns)?.filter(|m| m.capped().is_some()) {
                Some(meta) => crate::tail::Source::Capped(meta.id),
                None => {
                    return Err(MongoError::bad_value(
                        "error processing query: tailable cursor requested on non capped collection",
                    ));
                }
            }
        };
        let mut tail = crate::tail::Tail::new(source, filter, projection, vars, await_data)
            .with_skip_limit(skip as u64, limit as u64);
        let n = batch_size.map_or(crate::cursor::DEFAULT_FIRST_BATCH, |b| b.max(0) as usize);
        let batch = tail.read(&snap, n)?;
        // A tailable cursor with no place in the collection (it was empty), or whose limit
        // is spent, is dead, as in mongod; so is one asked for a single batch (a negative
        // limit).
        let id = if tail.alive() && !single {
            ctx.cursors.add(crate::cursor::Cursor {
                ns: ns.full(),
                kind: crate::cursor::CursorKind::Tail(Box::new(tail)),
                last_used: std::time::Instant::now(),
                time_left: None,
                interrupt: crate::op::current(),
                opened_by: crate::security::caller(),
            })
        } else {
            0
        };
        return Ok(Reply::ok(
            doc! {"cursor": {"firstBatch": batch, "id": id, "ns": ns.full()}},
        ));
    }
    // `sort: {$natural: ±1}` reads the collection in natural order or backwards, as a hint
    // of `{$natural: ±1}` does.
    let natural = natural_order(sort.as_ref(), cmd.get("hint"))?;
    let sort_spec = match &sort {
        Some(s) if s.contains_key("$natural") => None,
        Some(s) => Some(SortSpec::parse(s)?.with_collation(coll)),
        None => None,
    };
    let mut src: DocSource;
    let mut plan_sorted = false;
    let mut point = false;
    if db == "local" && ns.coll == "oplog.rs" {
        src = oplog_source(&snap, filter.clone(), natural == Some(true))?;
    } else if db == "config" && ns.coll == "system.preimages" {
        let f = filter.clone();
        let recs = snap.preimage_records()?;
        src = Box::new(recs.into_iter().filter(move |d| f.matches(d)).map(Ok));
    } else if db == "local" && ns.coll == "system.replset" {
        let f = filter.clone();
        let recs = crate::replset::system_replset(ctx);
        src = Box::new(recs.into_iter().filter(move |d| f.matches(d)).map(Ok));
    } else {
        let Some(meta) = snap.collection(&ns)? else {
            return Ok(Reply::ok(
                doc! {"cursor": {"firstBatch": [], "id": 0i64, "ns": ns.full()}},
            ));
        };
        let plan = match natural {
            Some(reverse) => Plan::CollScan { reverse },
            None => plan_query(&meta, &filter, sort_spec.as_ref(), cmd.get("hint"))?,
        };
        plan_sorted = plan.provides_sort();
        point = matches!(plan, Plan::IdLookup(_));
        src = query_source(&snap, &meta, filter.clone(), &plan)?;
    }
    // Reading and sorting is CPU work that must not hold up other connections; a point
    // lookup is too short to be worth handing the worker over.
    let read = move || -> Result<Reply> {
        if let (Some(s), false) = (&sort_spec, plan_sorted) {
            // A blocking sort, within the memory limit (spilling with allowDiskUse); with a
            // limit, a top-k sort that holds only skip + limit documents.
            let limits = crate::cursor::limits(ctx, cmd)?;
            let top = (limit > 0).then_some((limit + skip) as usize);
            let mut sorter = query::sort::Sorter::new(s.clone(), &limits, top);
            for d in src {
                sorter
                    .push(d?)
                    .map_err(|e| executor_error(e, "find command"))?;
            }
            src = sorter.finish()?;
        }
        let mut src: DocSource = query::pipeline::skip_docs(src, skip as usize);
        if limit > 0 {
            src = Box::new(src.take(limit as usize));
        }
        let text = filter.text_query().is_some() || filter.has_near();
        if let Some(p) = projection {
            let f = filter;
            src = Box::new(src.map(move |r| r.and_then(|d| p.apply_with(&d, Some(&f), &vars))));
        }
        if text {
            src = Box::new(src.map(|r| r.map(without_text_score)));
        }
        cursor_reply(ctx, &ns.full(), src, batch_size, single)
    };
    let r = if point { read()? } else { util::cpu(read)? };
    if util::get_bool(cmd, "noCursorTimeout").unwrap_or(false) {
        if let Ok(id) = r.doc.get_document("cursor").and_then(|c| c.get_i64("id")) {
            ctx.cursors.pin(id);
        }
    }
    Ok(with_at_cluster_time(r, at_ts))
}

/// A leading `$geoNear`, as the stages it stands for: a `$match` of its `query` and a
/// `$near`/`$nearSphere` on its `key` (the collection's one 2dsphere index when not
/// given), which the planner reads nearest first, then an `$addFields` of
/// `distanceField` (times `distanceMultiplier`) and `includeLocs`.
///
/// # Errors
/// 40602 when `$geoNear` is not first; BadValue for bad options; IndexNotFound without
/// a geospatial index to use.
fn geo_near_stages(
    ctx: &ServerCtx,
    ns: &Namespace,
    stages: Vec<Document>,
) -> Result<Vec<Document>> {
    if stages.iter().skip(1).any(|s| s.contains_key("$geoNear")) {
        return Err(MongoError::with_code(
            40602,
            "$geoNear is only valid as the first stage in a pipeline",
        ));
    }
    let Some(Bson::Document(spec)) = stages.first().and_then(|s| s.get("$geoNear")).cloned() else {
        return Ok(stages);
    };
    let mut near = None;
    let mut distance_field = None;
    let mut spherical = false;
    let mut query = None;
    let mut multiplier = None;
    let mut include_locs = None;
    let mut key = None;
    let mut bounds = Document::new();
    for (k, v) in &spec {
        match (k.as_str(), v) {
            ("near", v) => near = Some(v.clone()),
            ("distanceField", Bson::String(f)) => distance_field = Some(f.clone()),
            ("spherical", v) => spherical = query::expr::truthy(v),
            ("query", Bson::Document(q)) => query = Some(q.clone()),
            ("distanceMultiplier", v) if doc::compare::as_f64(v).is_some_and(|m| m >= 0.0) => {
                multiplier = Some(v.clone());
            }
            ("includeLocs", Bson::String(f)) => include_locs = Some(f.clone()),
            ("key", Bson::String(f)) if !f.is_empty() => key = Some(f.clone()),
            ("maxDistance" | "minDistance", v)
                if doc::compare::as_f64(v).is_some_and(|m| m >= 0.0) =>
            {
                bounds.insert(format!("${k}"), v.clone());
            }
            ("distanceField" | "includeLocs" | "key", _) => {
                return Err(MongoError::type_mismatch(format!(
                    "$geoNear's {k} must be a string"
                )));
            }
            ("query", _) => {
                return Err(MongoError::type_mismatch(
                    "$geoNear's query must be an object",
                ));
            }
            ("maxDistance" | "minDistance" | "distanceMultiplier", _) => {
                return Err(MongoError::bad_value(format!(
                    "$geoNear's {k} must be a non-negative number"
                )));
            }
            (other, _) => {
                return Err(MongoError::bad_value(format!(
                    "unknown argument to $geoNear: {other}"
                )));
            }
        }
    }
    let Some(near) = near else {
        return Err(MongoError::bad_value(
            "$geoNear requires a 'near' option as an Array",
        ));
    };
    let Some(distance_field) = distance_field else {
        return Err(MongoError::bad_value(
            "$geoNear requires a 'distanceField' option as a String",
        ));
    };
    let key = match key {
        Some(k) => k,
        None => {
            let snap = ctx.store.snapshot()?;
            let geo: Vec<String> = snap
                .collection(ns)?
                .map(|m| {
                    m.indexes
                        .iter()
                        .filter_map(|i| exec::geo::sphere_field(i).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            match geo.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(MongoError::new(
                        ErrorCode::IndexNotFound,
                        "$geoNear requires a 2d or 2dsphere index, but none were found",
                    ));
                }
                _ => {
                    return Err(MongoError::new(
                        ErrorCode::IndexNotFound,
                        "There is more than one 2dsphere index; unsure which to use for $geoNear; give 'key'",
                    ));
                }
            }
        }
    };
    let near_pred = if matches!(&near, Bson::Document(d) if d.contains_key("type")) {
        let mut n = doc! {"$geometry": near};
        n.extend(bounds);
        doc! {"$near": n}
    } else {
        let mut n = doc! {if spherical { "$nearSphere" } else { "$near" }: near};
        n.extend(bounds);
        n
    };
    let mut filter = doc! {key.clone(): near_pred};
    if let Some(q) = query {
        filter = doc! {"$and": [q, filter]};
    }
    let distance = match multiplier {
        Some(m) => Bson::Document(doc! {"$multiply": [{"$meta": "geoNearDistance"}, m]}),
        None => Bson::Document(doc! {"$meta": "geoNearDistance"}),
    };
    let mut fields = doc! {distance_field: distance};
    if let Some(f) = include_locs {
        fields.insert(f, format!("${key}"));
    }
    let mut out = vec![doc! {"$match": filter}, doc! {"$addFields": fields}];
    out.extend(stages.into_iter().skip(1));
    Ok(out)
}

/// A document as it leaves the server: without the score a `$text` match gave it, or the
/// distance a `$near` search did.
fn without_text_score(mut d: Document) -> Document {
    d.remove(query::text::SCORE_FIELD);
    d.remove(query::geo::DISTANCE_FIELD);
    d
}

/// A query executor's failure as mongod words it for the client ("Executor error during
/// find command :: caused by :: ..."), for the memory-limit errors whose wording drivers'
/// users search for.
pub(crate) fn executor_error(e: MongoError, during: &str) -> MongoError {
    if !e.is(ErrorCode::QueryExceededMemoryLimitNoDiskUseAllowed) {
        return e;
    }
    let prefix = if during == "aggregation" {
        "PlanExecutor error during aggregation :: caused by :: ".to_string()
    } else {
        format!("Executor error during {during} :: caused by :: ")
    };
    MongoError {
        message: prefix + &e.message,
        ..e
    }
}

/// Adds a snapshot read's `atClusterTime` to its cursor reply.
fn with_at_cluster_time(mut r: Reply, at: Option<Timestamp>) -> Reply {
    if let (Some(t), Ok(c)) = (at, r.doc.get_document_mut("cursor")) {
        c.insert("atClusterTime", t);
    }
    r
}

fn count_matching(
    snap: &Arc<Snapshot>,
    ns: &Namespace,
    filter: Filter,
    hint: Option<&Bson>,
) -> Result<Option<DocSource>> {
    // The oplog and the pre-images are read like collections (count, distinct).
    if ns.db == "local" && ns.coll == "oplog.rs" {
        return oplog_source(snap, filter, false).map(Some);
    }
    if ns.db == "config" && ns.coll == "system.preimages" {
        let recs = snap.preimage_records()?;
        return Ok(Some(Box::new(
            recs.into_iter().filter(move |d| filter.matches(d)).map(Ok),
        )));
    }
    let Some(meta) = snap.collection(ns)? else {
        return Ok(None);
    };
    let plan = plan_query(&meta, &filter, None, hint)?;
    query_source(snap, &meta, filter, &plan).map(Some)
}

/// `count`.
///
/// # Errors
/// Bad filters.
pub fn count(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "count", db)?;
    let filter = Filter::parse(&util::opt_doc(cmd, "query")?.cloned().unwrap_or_default())?;
    let skip = util::opt_count(cmd, "skip")?.unwrap_or(0).max(0) as usize;
    let limit = util::opt_count(cmd, "limit")?.unwrap_or(0).unsigned_abs() as usize;
    let (snap, _) = crate::txn::read_snapshot(ctx, cmd)?;
    let filter = filter.with_collation(exec::collation::for_read(cmd, &snap, &ns)?);
    let n = match count_matching(&snap, &ns, filter, cmd.get("hint"))? {
        None => 0,
        Some(src) => {
            let mut n = 0usize;
            for d in query::pipeline::skip_docs(src, skip) {
                d?;
                n += 1;
                if limit > 0 && n >= limit {
                    break;
                }
            }
            n
        }
    };
    Ok(Reply::ok(doc! {"n": n as i64}))
}

/// `distinct`.
///
/// # Errors
/// Bad filters or keys.
pub fn distinct(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "distinct", db)?;
    let key = cmd.get_str("key").map_err(|_| {
        MongoError::failed_to_parse("BSON field 'distinct.key' is missing but a required field")
    })?;
    if key.is_empty() {
        return Err(MongoError::failed_to_parse(
            "FieldPath cannot be constructed with empty string",
        ));
    }
    let filter = Filter::parse(&util::opt_doc(cmd, "query")?.cloned().unwrap_or_default())?;
    let (snap, at_ts) = crate::txn::read_snapshot(ctx, cmd)?;
    let coll = exec::collation::for_read(cmd, &snap, &ns)?;
    let filter = filter.with_collation(coll.clone());
    let coll = coll.as_deref();
    let mut values: Vec<Bson> = Vec::new();
    if let Some(src) = count_matching(&snap, &ns, filter, cmd.get("hint"))? {
        for d in src {
            for v in doc::lookup_all(&d?, key).into_iter().flatten() {
                let vals = match v {
                    Bson::Array(a) => a,
                    v => vec![v],
                };
                for v in vals {
                    if !values.iter().any(|x| {
                        doc::values_equal_with(x, &v, coll)
                            && doc::compare::type_rank(x) == doc::compare::type_rank(&v)
                    }) {
                        values.push(v);
                    }
                }
            }
        }
    }
    values.sort_by(|a, b| doc::cmp_values_with(a, b, coll));
    let mut r = doc! {"values": values};
    if let Some(t) = at_ts {
        r.insert("atClusterTime", t);
    }
    Ok(Reply::ok(r))
}

fn pipeline_of(cmd: &Document) -> Result<Vec<Document>> {
    let stages = cmd.get_array("pipeline").map_err(|_| {
        MongoError::type_mismatch("'pipeline' option must be specified as an array")
    })?;
    stages
        .iter()
        .map(|s| match s {
            Bson::Document(d) if d.len() == 1 => Ok(d.clone()),
            Bson::Document(_) => Err(MongoError::with_code(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            )),
            _ => Err(MongoError::type_mismatch(
                "Each element of the 'pipeline' array must be an object",
            )),
        })
        .collect()
}

/// `aggregate`, including `$changeStream`.
///
/// # Errors
/// Bad pipelines, and change stream errors.
pub async fn aggregate(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let stages = pipeline_of(cmd)?;
    if stages
        .first()
        .is_some_and(|s| s.contains_key("$changeStream"))
    {
        return crate::cursor::open_change_stream(ctx, db, cmd, &stages).await;
    }
    let (stages, local_sessions) = crate::sessions::take_list_local_sessions(ctx, db, cmd, stages)?;
    let (stages, current_ops) = crate::ops::take_current_op(ctx, db, cmd, stages)?;
    let local_sessions = local_sessions.or(current_ops);
    // `$collStats` produces one document about the collection, for the rest to work on;
    // `$indexStats` one per index; `$planCacheStats` one per cached plan (Eddy plans each
    // query afresh by rule and caches none, so it yields nothing).
    let lead = ["$collStats", "$indexStats", "$planCacheStats"]
        .into_iter()
        .find(|k| stages.first().is_some_and(|s| s.contains_key(*k)));
    let (stages, coll_stats_spec) = match lead {
        Some(k) => {
            let spec = stages[0].get(k).cloned().unwrap_or(Bson::Null);
            (stages[1..].to_vec(), Some((k, spec)))
        }
        None => (stages, None),
    };
    for k in ["$indexStats", "$planCacheStats"] {
        if stages.iter().any(|s| s.contains_key(k)) {
            return Err(MongoError::with_code(
                40602,
                format!("{k} is only valid as the first stage in a pipeline"),
            ));
        }
    }
    if stages.iter().any(|s| s.contains_key("$collStats")) {
        return Err(MongoError::with_code(
            40602,
            "$collStats is only valid as the first stage in a pipeline",
        ));
    }
    let explain = util::get_bool(cmd, "explain").unwrap_or(false);
    let batch_size = match cmd.get_document("cursor") {
        Ok(c) => util::opt_batch_size(c)?,
        Err(_) if explain => None,
        Err(_) => {
            return Err(MongoError::failed_to_parse(
                "The 'cursor' option is required, except for aggregate with the explain argument",
            ));
        }
    };
    ctx.stats.query.fetch_add(1, Ordering::Relaxed);
    let coll = match cmd.get("aggregate") {
        Some(Bson::String(_)) => Some(util::coll_arg(cmd, "aggregate", db)?),
        Some(v) if doc::compare::as_f64(v) == Some(1.0) => None,
        _ => {
            return Err(MongoError::failed_to_parse(
                "Invalid {aggregate: ...} value: must be a collection name or 1",
            ));
        }
    };
    let stages = match &coll {
        Some(ns) => geo_near_stages(ctx, ns, stages)?,
        None => stages,
    };
    let pipeline = Pipeline::parse(&stages, db)?;
    let vars = util::command_vars(ctx, cmd)?;
    if pipeline.out_stage().is_some() && crate::txn::in_txn() {
        return Err(MongoError::new(
            ErrorCode::OperationNotSupportedInTransaction,
            "Cannot run aggregate with $out or $merge in a multi-document transaction.",
        ));
    }
    let (snap, at_ts) = crate::txn::read_snapshot(ctx, cmd)?;
    let pipeline = match &coll {
        Some(ns) => pipeline.with_collation(exec::collation::for_read(cmd, &snap, ns)?),
        None => pipeline.with_collation(exec::collation::for_operation(cmd, None)?),
    };
    let coll_stats_input = match (&coll_stats_spec, &coll) {
        (Some(("$collStats", spec)), Some(ns)) => {
            Some(vec![crate::stats::coll_stats_stage(ctx, ns, spec)?])
        }
        (Some(("$indexStats", spec)), Some(ns)) => {
            Some(crate::stats::index_stats(ctx, &snap, ns, spec)?)
        }
        (Some((_, spec)), Some(_)) => {
            if !matches!(spec, Bson::Document(d) if d.is_empty()) {
                return Err(MongoError::failed_to_parse(
                    "$planCacheStats takes an empty object: Eddy has no plan cache options",
                ));
            }
            Some(Vec::new())
        }
        (Some((k, _)), None) => {
            return Err(MongoError::new(
                ErrorCode::InvalidNamespace,
                format!("{k} must be run against a collection namespace"),
            ));
        }
        (None, _) => None,
    };
    if explain {
        // `aggregate` with `explain: true` is the explain command at queryPlanner verbosity.
        let mut inner = cmd.clone();
        inner.remove("explain");
        return self::explain(
            ctx,
            db,
            &doc! {"explain": inner, "verbosity": "queryPlanner"},
        );
    }
    let env = SnapEnv::for_command(ctx, snap.clone(), cmd)?.shared();
    let listed = local_sessions.is_some();
    let input: DocSource = match &coll {
        _ if coll_stats_input.is_some() => {
            Box::new(coll_stats_input.unwrap_or_default().into_iter().map(Ok))
        }
        // `$listSessions` runs on `config.system.sessions`; its documents are the cache's.
        Some(_) if listed => Box::new(local_sessions.unwrap_or_default().into_iter().map(Ok)),
        Some(ns) if ns.db == "config" && ns.coll == "system.preimages" => {
            Box::new(snap.preimage_records()?.into_iter().map(Ok))
        }
        Some(ns) if ns.db == "local" && ns.coll == "oplog.rs" => {
            let filter = pipeline
                .leading_match()
                .cloned()
                .unwrap_or_else(Filter::match_all)
                .bind(&vars);
            oplog_source(&snap, filter, false)?
        }
        Some(ns) => match snap.collection(ns)? {
            Some(meta) => {
                let filter = pipeline
                    .leading_match()
                    .cloned()
                    .unwrap_or_else(Filter::match_all)
                    .bind(&vars);
                let plan = plan_query(&meta, &filter, None, cmd.get("hint"))?;
                query_source(&snap, &meta, filter, &plan)?
            }
            None => Box::new(std::iter::empty()),
        },
        None => Box::new(local_sessions.unwrap_or_default().into_iter().map(Ok)),
    };
    let mut out = Arc::new(pipeline.clone()).stream(input, &env, &vars);
    if pipeline
        .leading_match()
        .is_some_and(|f| f.text_query().is_some() || f.has_near())
    {
        out = Box::new(out.map(|r| r.map(without_text_score)));
    }
    let ns = coll.map_or_else(|| format!("{db}.$cmd.aggregate"), |n| n.full());
    if let Some(stage) = pipeline.out_stage().cloned() {
        let level = util::opt_doc(cmd, "readConcern")?.and_then(|r| r.get_str("level").ok());
        if level == Some("linearizable") {
            let name = if matches!(stage, OutStage::Out { .. }) {
                "$out"
            } else {
                "$merge"
            };
            return Err(MongoError::new(
                ErrorCode::InvalidOptions,
                format!("{name} cannot be used with a 'linearizable' read concern level"),
            ));
        }
        let bypass = cmd
            .get("bypassDocumentValidation")
            .is_some_and(query::expr::truthy);
        let out = util::cpu(|| out.collect::<Result<Vec<_>>>())
            .map_err(|e| executor_error(e, "aggregation"))?;
        write_out(ctx, stage, out, bypass).await?;
        return Ok(Reply::ok(
            doc! {"cursor": {"firstBatch": [], "id": 0i64, "ns": ns}},
        ));
    }
    let r = util::cpu(|| cursor_reply(ctx, &ns, out, batch_size, false))
        .map_err(|e| executor_error(e, "aggregation"))?;
    Ok(with_at_cluster_time(r, at_ts))
}

/// Writes the results of `$out` (replacing the target) or `$merge`.
async fn write_out(
    ctx: &Arc<ServerCtx>,
    stage: OutStage,
    docs: Vec<Document>,
    bypass: bool,
) -> Result<()> {
    ctx.store
        .write(move |w| {
            let s = Session {
                bypass_validation: bypass,
                ..Session::default()
            };
            match stage {
                OutStage::Out { db, coll } => {
                    let ns = Namespace::new(db, coll);
                    storage::catalog::validate_coll_name(&ns)?;
                    // The new contents replace the old, but the collection keeps its options
                    // (its validator among them) and its indexes, as in MongoDB.
                    let mut meta = match w.collection(&ns)? {
                        Some(m) if m.is_view() => {
                            return Err(MongoError::new(
                                ErrorCode::CommandNotSupportedOnView,
                                format!("Namespace {} is a view, not a collection", ns.full()),
                            ));
                        }
                        Some(m) => {
                            crate::ddl::drop_in(w, &m)?;
                            let mut fresh = crate::ddl::create_in(w, &ns, m.options.clone())?;
                            for ix in m.indexes.iter().filter(|ix| !ix.is_id()) {
                                let mut ix = ix.clone();
                                ix.id = w.new_id();
                                fresh.indexes.push(ix);
                            }
                            w.put_collection(&fresh)?;
                            fresh
                        }
                        None => ensure_collection(w, &ns)?.0,
                    };
                    for (i, d) in docs.iter().enumerate() {
                        insert_one(w, &mut meta, &with_id(d), &s, i)?;
                    }
                }
                OutStage::Merge { db, coll, on, when_matched, when_not_matched } => {
                    let ns = Namespace::new(db, coll);
                    let (mut meta, _) = ensure_collection(w, &ns)?;
                    for (i, d) in docs.iter().enumerate() {
                        let d = with_id(d);
                        let mut q = Document::new();
                        for f in &on {
                            q.insert(f.clone(), doc::get_path(&d, f).cloned().unwrap_or(Bson::Null));
                        }
                        let existing = matching(w, &meta, &Filter::parse(&q)?, &s.interrupt)?.into_iter().next();
                        match existing {
                            Some(old) => match when_matched.as_str() {
                                Some("keepExisting") => {}
                                // MongoDB inserts, and reports the unique index on `on` that refuses it.
                                Some("fail") => return Err(merge_conflict(&meta, &on, &d)),
                                Some("merge") | None => {
                                    let mut new = old.clone();
                                    for (k, v) in &d {
                                        if k != "_id" {
                                            new.insert(k.clone(), v.clone());
                                        }
                                    }
                                    update_one(w, &mut meta, &old, &new, None, &s, i)?;
                                }
                                Some(_) => {
                                    let mut new = d.clone();
                                    new.insert("_id", old.get("_id").cloned().unwrap_or(Bson::Null));
                                    update_one(w, &mut meta, &old, &new, None, &s, i)?;
                                }
                            },
                            None => match when_not_matched.as_str() {
                                "discard" => {}
                                "fail" => return Err(MongoError::with_code(13113, "$merge could not find a matching document and whenNotMatched is fail")),
                                _ => insert_one(w, &mut meta, &d, &s, i)?,
                            },
                        }
                    }
                }
            }
            Ok(())
        })
        .await
}

/// The DuplicateKey error of a `$merge` with `whenMatched: "fail"` that found a match: on the
/// unique index of the `on` fields (`_id_` by default), with its keyPattern and keyValue.
fn merge_conflict(meta: &CollectionMeta, on: &[String], d: &Document) -> MongoError {
    let mut want: Vec<&str> = on.iter().map(String::as_str).collect();
    want.sort_unstable();
    let ix = meta.indexes.iter().find(|ix| {
        let mut fields: Vec<String> = ix.fields().into_iter().map(|(f, _)| f).collect();
        fields.sort_unstable();
        ix.unique && fields == want
    });
    match ix.or_else(|| meta.index("_id_")) {
        Some(ix) => exec::write::duplicate_key(meta, ix, d),
        None => MongoError::new(
            ErrorCode::DuplicateKey,
            "$merge found an existing document with whenMatched: fail",
        ),
    }
}

/// How much `explain` does: plan only, or also run the winning plan and count.
#[derive(Clone, Copy, PartialEq)]
enum Verbosity {
    QueryPlanner,
    ExecutionStats,
    AllPlansExecution,
}

fn verbosity(cmd: &Document) -> Result<Verbosity> {
    match cmd.get("verbosity") {
        // The explain command's default, as mongod's.
        None => Ok(Verbosity::AllPlansExecution),
        Some(Bson::String(v)) => match v.as_str() {
            "queryPlanner" => Ok(Verbosity::QueryPlanner),
            "executionStats" => Ok(Verbosity::ExecutionStats),
            "allPlansExecution" => Ok(Verbosity::AllPlansExecution),
            other => Err(MongoError::bad_value(format!(
                "Enumeration value '{other}' for field 'explain.verbosity' is not a valid value."
            ))),
        },
        Some(_) => Err(MongoError::type_mismatch(
            "BSON field 'explain.verbosity' is the wrong type, expected type 'string'",
        )),
    }
}

/// What running a plan for `explain` counted.
struct Counted {
    /// Documents (or index keys, for index plans) the scan produced.
    scanned: i64,
    /// Of those, the ones the filter kept.
    matched: i64,
    millis: i64,
}

fn count_plan(
    snap: &Arc<Snapshot>,
    meta: &CollectionMeta,
    filter: &Filter,
    plan: &Plan,
) -> Result<Counted> {
    let start = std::time::Instant::now();
    let interrupt = crate::op::current();
    let (mut scanned, mut matched) = (0i64, 0i64);
    if !meta.is_view() {
        for d in scan(snap.clone(), meta, plan)? {
            interrupt.check()?;
            let d = d?;
            scanned += 1;
            if filter.try_matches(&d)? {
                matched += 1;
            }
        }
    }
    Ok(Counted {
        scanned,
        matched,
        millis: start.elapsed().as_millis() as i64,
    })
}

/// The winning plan's stage tree, with each stage's counters when `run` is given (`works`
/// counts one unit per document in plus the end of input, `advanced` the documents out).
fn stage_tree(
    plan: &Plan,
    filter: &Document,
    run: Option<&Counted>,
    sort: Option<&Document>,
    skip: i64,
    limit: i64,
) -> Document {
    let stats = |d: &mut Document, n_in: i64, n_out: i64| {
        d.insert("nReturned", n_out);
        d.insert("works", n_in + 1);
        d.insert("advanced", n_out);
        d.insert("needTime", n_in - n_out);
        d.insert("isEOF", true);
    };
    let mut tree = plan.explain();
    if !filter.is_empty() {
        tree.insert("filter", filter.clone());
    }
    let mut returned = 0;
    if let Some(c) = run {
        stats(&mut tree, c.scanned, c.matched);
        tree.insert("executionTimeMillisEstimate", c.millis);
        match plan {
            Plan::CollScan { .. } => {
                tree.insert("docsExamined", c.scanned);
            }
            Plan::IdLookup(_) => {
                tree.insert("keysExamined", c.scanned);
                tree.insert("docsExamined", c.scanned);
            }
            Plan::IxScan { .. } | Plan::IdScan { .. } | Plan::GeoNear { .. } => {
                tree.insert("docsExamined", c.scanned);
                if let Ok(ix) = tree.get_document_mut("inputStage") {
                    stats(ix, c.scanned, c.scanned);
                    ix.insert("keysExamined", c.scanned);
                }
            }
        }
        returned = c.matched;
    }
    let wrap = |inner: Document, stage: &str, extra: Document, n_out: i64| {
        let mut d = doc! {"stage": stage};
        d.extend(extra);
        if run.is_some() {
            stats(&mut d, inner.get_i64("nReturned").unwrap_or(0), n_out);
        }
        d.insert("inputStage", inner);
        d
    };
    if let Some(s) = sort.filter(|_| !plan.provides_sort()) {
        let out = if limit > 0 {
            returned.min(skip + limit)
        } else {
            returned
        };
        let mut extra = doc! {"sortPattern": s.clone(), "memLimit": query::spill::DEFAULT_MAX_BYTES as i64, "type": "simple"};
        if limit > 0 {
            extra.insert("limitAmount", skip + limit);
        }
        tree = wrap(tree, "SORT", extra, out);
        returned = out;
    }
    if skip > 0 {
        let out = (returned - skip).max(0);
        tree = wrap(tree, "SKIP", doc! {"skipAmount": skip}, out);
        returned = out;
    }
    if limit > 0 {
        let out = returned.min(limit);
        tree = wrap(tree, "LIMIT", doc! {"limitAmount": limit}, out);
    }
    tree
}

/// `explain` of find, count, distinct, update, delete, findAndModify and aggregate: the
/// plan the query would use, and with `executionStats`/`allPlansExecution` (the default)
/// the counts from running it (writes are not performed).
///
/// # Errors
/// Bad inner commands or verbosity.
pub fn explain(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let inner = cmd
        .get_document("explain")
        .map_err(|_| MongoError::type_mismatch("explain command requires a nested object"))?;
    let verbosity = verbosity(cmd)?;
    let name = crate::command_name(inner);
    let ns = util::coll_arg(inner, name, db)?;
    let snap = ctx.store.snapshot()?;
    let coll = exec::collation::for_read(inner, &snap, &ns)?;
    let (query, sort, skip, limit) = match name {
        "find" => (
            util::opt_doc(inner, "filter")?.cloned().unwrap_or_default(),
            util::opt_doc(inner, "sort")?
                .filter(|s| !s.is_empty())
                .cloned(),
            util::opt_count(inner, "skip")?.unwrap_or(0).max(0),
            util::opt_count(inner, "limit")?.unwrap_or(0).abs(),
        ),
        "count" | "distinct" => (
            util::opt_doc(inner, "query")?.cloned().unwrap_or_default(),
            None,
            0,
            0,
        ),
        "findAndModify" => (
            util::opt_doc(inner, "query")?.cloned().unwrap_or_default(),
            util::opt_doc(inner, "sort")?
                .filter(|s| !s.is_empty())
                .cloned(),
            0,
            1,
        ),
        "update" | "delete" => {
            let key = if name == "update" {
                "updates"
            } else {
                "deletes"
            };
            let first = inner
                .get_array(key)
                .ok()
                .and_then(|a| a.first())
                .and_then(Bson::as_document);
            let q = first
                .and_then(|st| st.get_document("q").ok())
                .cloned()
                .unwrap_or_default();
            (q, None, 0, 0)
        }
        "aggregate" => {
            let stages = pipeline_of(inner)?;
            let leading = match stages.first().and_then(|s| s.get_document("$match").ok()) {
                Some(m) => m.clone(),
                None => Document::new(),
            };
            (leading, None, 0, 0)
        }
        other => {
            return Err(MongoError::new(
                ErrorCode::CommandNotFound,
                format!("Explain failed due to unknown command: {other}"),
            ));
        }
    };
    let filter = Filter::parse(&query)?
        .with_collation(coll.clone())
        .bind(&util::command_vars(ctx, inner)?);
    let sort_spec = match &sort {
        Some(s) if !s.contains_key("$natural") => Some(SortSpec::parse(s)?.with_collation(coll)),
        _ => None,
    };
    let meta = snap.collection(&ns)?;
    let plan = match (&meta, natural_order(sort.as_ref(), inner.get("hint"))?) {
        (_, Some(reverse)) => Plan::CollScan { reverse },
        (Some(meta), None) => plan_query(meta, &filter, sort_spec.as_ref(), inner.get("hint"))?,
        (None, None) => Plan::CollScan { reverse: false },
    };
    let snap = Arc::new(snap);
    let counted = match (&meta, verbosity) {
        (Some(meta), Verbosity::ExecutionStats | Verbosity::AllPlansExecution) => {
            Some(count_plan(&snap, meta, &filter, &plan)?)
        }
        (None, Verbosity::ExecutionStats | Verbosity::AllPlansExecution) => Some(Counted {
            scanned: 0,
            matched: 0,
            millis: 0,
        }),
        _ => None,
    };
    let sort_doc = sort_spec.as_ref().and(sort.as_ref());
    let winning = stage_tree(&plan, &query, None, sort_doc, skip, limit);
    let planner = doc! {
        "namespace": ns.full(),
        "parsedQuery": query.clone(),
        "winningPlan": winning,
        "rejectedPlans": [],
    };
    let execution = counted.as_ref().map(|c| {
        let tree = stage_tree(&plan, &query, Some(c), sort_doc, skip, limit);
        let (keys, docs) = match plan {
            Plan::CollScan { .. } => (0, c.scanned),
            _ => (c.scanned, c.scanned),
        };
        let mut e = doc! {
            "executionSuccess": true,
            "nReturned": tree.get_i64("nReturned").unwrap_or(0),
            "executionTimeMillis": c.millis,
            "totalKeysExamined": keys,
            "totalDocsExamined": docs,
            "executionStages": tree,
        };
        if verbosity == Verbosity::AllPlansExecution {
            e.insert("allPlansExecution", Bson::Array(Vec::new()));
        }
        e
    });
    let mut reply = doc! {"explainVersion": "1"};
    if name == "aggregate" {
        // The query part of the pipeline runs as its first stage, `$cursor`; the rest
        // are listed as given.
        let mut cursor = doc! {"queryPlanner": planner};
        if let Some(e) = execution {
            cursor.insert("executionStats", e);
        }
        let mut stages = vec![Bson::Document(doc! {"$cursor": cursor})];
        for st in pipeline_of(inner)?
            .into_iter()
            .skip(usize::from(!query.is_empty()))
        {
            stages.push(Bson::Document(st));
        }
        reply.insert("stages", stages);
    } else {
        reply.insert("queryPlanner", planner);
        if let Some(e) = execution {
            reply.insert("executionStats", e);
        }
    }
    reply.insert(
        "serverInfo",
        doc! {"host": &ctx.config.advertised, "version": crate::admin::VERSION},
    );
    reply.insert("command", inner.clone());
    Ok(Reply::ok(reply))
}
