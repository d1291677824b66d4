//! Catalog commands: create, drop, rename, collMod, indexes, listings.

use std::sync::Arc;

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use query::filter::Filter;
use storage::{CollectionMeta, IndexMeta, Namespace, OpKind, OplogEntry, WriteCtx, catalog};

use crate::cursor::{DocSource, cursor_reply};
use crate::{Reply, ServerCtx, util};

/// Fields of a command that are not collection options.
use crate::census::GENERIC;

/// The `_id` index spec, with the collection's default collation as MongoDB reports it
/// (records stay keyed by the binary `_id`).
fn id_index_spec(options: &Document) -> Document {
    let mut spec = doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"};
    if let Ok(c) = options.get_document("collation") {
        spec.insert("collation", c.clone());
    }
    spec
}

fn id_index_meta(ctx: &mut WriteCtx<'_>, options: &Document) -> IndexMeta {
    IndexMeta {
        id: ctx.new_id(),
        name: "_id_".into(),
        key: doc! {"_id": 1},
        unique: true,
        sparse: false,
        partial_filter: None,
        spec: id_index_spec(options),
        multikey: false,
    }
}

/// Creates a collection (or view) in the commit pipeline, logging a `create` entry.
///
/// # Errors
/// A storage error.
pub fn create_in(
    ctx: &mut WriteCtx<'_>,
    ns: &Namespace,
    options: Document,
) -> Result<CollectionMeta> {
    let is_view = options.contains_key("viewOn");
    let id = ctx.new_id();
    let indexes = if is_view {
        Vec::new()
    } else {
        vec![id_index_meta(ctx, &options)]
    };
    let meta = CollectionMeta {
        ns: ns.clone(),
        uuid: bson::Uuid::new(),
        id,
        options: options.clone(),
        indexes,
    };
    ctx.put_collection(&meta)?;
    let mut o = doc! {"create": &ns.coll};
    let id_index = id_index_spec(&options);
    o.extend(options);
    if !is_view {
        o.insert("idIndex", id_index);
    }
    ctx.log(OplogEntry::new(
        OpKind::Command,
        format!("{}.$cmd", ns.db),
        Some(meta.uuid),
        o,
    ))?;
    Ok(meta)
}

/// The collection's record, creating it (implicitly, as a first insert does) if missing.
///
/// # Errors
/// A storage error; CommandNotSupportedOnView for a view.
pub fn ensure_collection(ctx: &mut WriteCtx<'_>, ns: &Namespace) -> Result<(CollectionMeta, bool)> {
    match ctx.collection(ns)? {
        Some(m) if m.is_view() => Err(MongoError::new(
            ErrorCode::CommandNotSupportedOnView,
            format!("Namespace {} is a view, not a collection", ns.full()),
        )),
        Some(m) => Ok((m, false)),
        None => Ok((create_in(ctx, ns, Document::new())?, true)),
    }
}

/// An option MongoDB has and Eddy does not implement: refused rather than ignored.
fn unsupported(what: &str) -> MongoError {
    MongoError::new(
        ErrorCode::InvalidOptions,
        format!("{what} are not supported by Eddy"),
    )
}

/// A capped collection's largest size: 1 PB, as in mongod.
const MAX_CAPPED_SIZE: u64 = 1 << 50;

/// A capped collection's size as mongod keeps it: at least 4096 bytes, else rounded up to
/// a multiple of 256.
fn capped_size(n: f64) -> i64 {
    let n = n.ceil() as i64;
    if n <= 4096 {
        4096
    } else {
        (n + 255) / 256 * 256
    }
}

fn validate_options(opts: &Document) -> Result<()> {
    if opts.get_bool("capped").unwrap_or(false) && !opts.contains_key("size") {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "the 'size' field is required when 'capped' is true",
        ));
    }
    for (k, v) in opts {
        match k.as_str() {
            "capped" | "autoIndexId" => {
                if !matches!(v, Bson::Boolean(_)) {
                    return Err(MongoError::type_mismatch(format!(
                        "BSON field 'create.{k}' is the wrong type '{}', expected type 'bool'",
                        util::type_name(v)
                    )));
                }
                if k == "autoIndexId" && v.as_bool() == Some(false) {
                    return Err(unsupported(
                        "collections without an _id index (autoIndexId: false)",
                    ));
                }
            }
            "size" | "max" => {
                let Some(n) = doc::compare::as_f64(v) else {
                    return Err(MongoError::type_mismatch(format!(
                        "BSON field 'create.{k}' is the wrong type"
                    )));
                };
                if !opts.get_bool("capped").unwrap_or(false) {
                    return Err(MongoError::new(
                        ErrorCode::InvalidOptions,
                        format!("the '{k}' field is only valid when 'capped' is true"),
                    ));
                }
                if k == "size" && !(0.0..=MAX_CAPPED_SIZE as f64).contains(&n) {
                    return Err(MongoError::bad_value(
                        "size must be greater than 0 and at most 1 PB",
                    ));
                }
                if k == "max" && n >= f64::from(1u32 << 31) {
                    return Err(MongoError::bad_value(
                        "max in a capped collection has to be < 2^31 or not set",
                    ));
                }
            }
            "changeStreamPreAndPostImages" => {
                let Bson::Document(d) = v else {
                    return Err(MongoError::type_mismatch(
                        "BSON field 'changeStreamPreAndPostImages' is the wrong type, expected type 'object'",
                    ));
                };
                if !matches!(d.get("enabled"), Some(Bson::Boolean(_))) || d.len() != 1 {
                    return Err(MongoError::failed_to_parse(
                        "BSON field 'changeStreamPreAndPostImages.enabled' is missing but a required field",
                    ));
                }
            }
            "viewOn" => {
                if !matches!(v, Bson::String(s) if !s.is_empty()) {
                    return Err(MongoError::type_mismatch(
                        "'viewOn' option must be a string",
                    ));
                }
            }
            "pipeline" => {
                if !matches!(v, Bson::Array(_)) {
                    return Err(MongoError::type_mismatch(
                        "'pipeline' option must be an array",
                    ));
                }
            }
            "validator" => {
                let Bson::Document(v) = v else {
                    return Err(MongoError::type_mismatch(format!(
                        "BSON field 'create.validator' is the wrong type '{}', expected type 'object'",
                        util::type_name(v)
                    )));
                };
                query::validation::Validator::parse(v)?;
            }
            "validationLevel" => {
                exec::validate::parse_level("create", v)?;
            }
            "validationAction" => {
                exec::validate::parse_action("create", v)?;
            }
            "collation" => {}
            "timeseries" => return Err(unsupported("time-series collections")),
            "clusteredIndex" => return Err(unsupported("clustered collections")),
            "expireAfterSeconds" => {
                return Err(MongoError::new(
                    ErrorCode::InvalidOptions,
                    "'expireAfterSeconds' is only supported on time-series collections or clustered collections",
                ));
            }
            "encryptedFields" => return Err(unsupported("Queryable Encryption (encryptedFields)")),
            // Engine configuration: Eddy's engine takes none, so only an empty one is accepted.
            "storageEngine" | "indexOptionDefaults" => {
                if !matches!(v, Bson::Document(d) if d.is_empty() || (k == "indexOptionDefaults" && matches!(d.get("storageEngine"), Some(Bson::Document(e)) if e.is_empty() && d.len() == 1)))
                {
                    return Err(unsupported(&format!("{k} settings")));
                }
            }
            "idIndex" => {
                let ok = matches!(v, Bson::Document(d)
                    if d.get_document("key").is_ok_and(|k| k == &doc! {"_id": 1})
                        && d.get_str("name") == Ok("_id_")
                        && d.keys().all(|f| matches!(f.as_str(), "key" | "name" | "v" | "ns" | "collation")));
                if !ok {
                    return Err(unsupported(
                        "an _id index other than {key: {_id: 1}, name: \"_id_\"}",
                    ));
                }
            }
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field 'create.{other}' is an unknown field."),
                ));
            }
        }
    }
    Ok(())
}

/// `create`.
///
/// # Errors
/// NamespaceExists, InvalidNamespace, bad options.
pub async fn create(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "create", db)?;
    let mut options = Document::new();
    for (k, v) in cmd.iter().skip(1) {
        if !GENERIC.contains(&k.as_str()) {
            options.insert(k.clone(), v.clone());
        }
    }
    validate_options(&options)?;
    if let Some(n) = options.get("size").and_then(doc::compare::as_f64) {
        options.insert("size", capped_size(n));
    }
    if let Some(n) = options.get("max").and_then(doc::compare::as_f64) {
        options.insert("max", n as i64);
    }
    if options.contains_key("validator") {
        exec::validate::check_namespace(&ns)?;
    }
    // Stored expanded, as listCollections reports it; a simple collation is no collation.
    if let Some(c) = options.get("collation") {
        match doc::Collation::from_option(Some(c))? {
            Some(c) => options.insert("collation", c.spec().clone()),
            None => options.remove("collation"),
        };
    }
    if options.contains_key("pipeline") && !options.contains_key("viewOn") {
        return Err(MongoError::bad_value(
            "'pipeline' requires 'viewOn' to also be specified",
        ));
    }
    crate::txn::write(ctx, move |w| {
        if let Some(existing) = w.collection(&ns)? {
            if existing.options == options && !w.in_txn() {
                return Ok(());
            }
            return Err(MongoError::new(
                ErrorCode::NamespaceExists,
                format!("Collection {} already exists.", ns.full()),
            ));
        }
        create_in(w, &ns, options).map(|_| ())
    })
    .await?;
    Ok(Reply::ok(Document::new()))
}

/// Drops a collection in the commit pipeline, logging a `drop` entry.
///
/// # Errors
/// A storage error.
pub fn drop_in(ctx: &mut WriteCtx<'_>, meta: &CollectionMeta) -> Result<()> {
    ctx.remove_collection(meta)?;
    ctx.log(OplogEntry::new(
        OpKind::Command,
        format!("{}.$cmd", meta.ns.db),
        Some(meta.uuid),
        doc! {"drop": &meta.ns.coll},
    ))?;
    Ok(())
}

/// `drop`: succeeds on a missing collection, as MongoDB 7.0+ does.
///
/// # Errors
/// InvalidNamespace.
pub async fn drop(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "drop", db)?;
    let n = ctx
        .store
        .write(move |w| match w.collection(&ns)? {
            Some(m) => {
                drop_in(w, &m)?;
                Ok(Some(m.indexes.len() as i32))
            }
            None => Ok(None),
        })
        .await?;
    let mut r = doc! {"ns": format!("{db}.{}", cmd.get_str("drop").unwrap_or(""))};
    if let Some(n) = n {
        r.insert("nIndexesWas", n);
    }
    Ok(Reply::ok(r))
}

/// `dropDatabase`: a `drop` entry per collection, then `dropDatabase`.
///
/// # Errors
/// A storage error.
pub async fn drop_database(ctx: &Arc<ServerCtx>, db: &str) -> Result<Reply> {
    catalog::validate_db_name(db)?;
    let name = db.to_string();
    ctx.store
        .write(move |w| {
            let colls = w.collections(Some(&name))?;
            if colls.is_empty() {
                return Ok(());
            }
            for m in &colls {
                drop_in(w, m)?;
            }
            w.log(OplogEntry::new(
                OpKind::Command,
                format!("{name}.$cmd"),
                None,
                doc! {"dropDatabase": 1},
            ))?;
            Ok(())
        })
        .await?;
    Ok(Reply::ok(doc! {"dropped": db}))
}

/// `renameCollection` (on admin): `{renameCollection: "db.a", to: "db.b", dropTarget}`.
///
/// # Errors
/// NamespaceNotFound, NamespaceExists, IllegalOperation.
pub async fn rename_collection(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "renameCollection may only be run against the admin database.",
        ));
    }
    let parse = |k: &str| -> Result<Namespace> {
        let s = cmd
            .get_str(k)
            .map_err(|_| MongoError::type_mismatch(format!("'{k}' must be of type String")))?;
        let ns = Namespace::parse(s).ok_or_else(|| {
            MongoError::new(
                ErrorCode::InvalidNamespace,
                format!("Invalid namespace specified '{s}'"),
            )
        })?;
        catalog::validate_coll_name(&ns)?;
        Ok(ns)
    };
    let from = parse("renameCollection")?;
    let to = parse("to")?;
    let drop_target = util::get_bool(cmd, "dropTarget").unwrap_or(false);
    if from == to {
        return Err(MongoError::new(
            ErrorCode::IllegalOperation,
            "Can't rename a collection to itself",
        ));
    }
    ctx.store
        .write(move |w| {
            let Some(src) = w.collection(&from)? else {
                return Err(MongoError::new(ErrorCode::NamespaceNotFound, format!("Source collection {} does not exist", from.full())));
            };
            let mut dropped = Bson::Boolean(false);
            if let Some(target) = w.collection(&to)? {
                if !drop_target {
                    return Err(MongoError::new(ErrorCode::NamespaceExists, "target namespace exists"));
                }
                w.remove_collection(&target)?;
                dropped = target.uuid_bson();
            }
            w.rename_collection(&src, &to)?;
            let o = doc! {"renameCollection": from.full(), "to": to.full(), "stayTemp": false, "dropTarget": dropped};
            w.log(OplogEntry::new(OpKind::Command, format!("{}.$cmd", from.db), Some(src.uuid), o))?;
            Ok(())
        })
        .await?;
    Ok(Reply::ok(Document::new()))
}

/// A capped collection's `size` argument (`convertToCapped`, `cloneCollectionAsCapped`):
/// a positive number up to 1 PB.
fn capped_size_arg(cmd: &Document) -> Result<f64> {
    let size = cmd.get("size").and_then(|v| match v {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            doc::compare::as_f64(v)
        }
        _ => None,
    });
    match size {
        Some(n) if n > MAX_CAPPED_SIZE as f64 => Err(MongoError::bad_value(format!(
            "Capped collection size must be less than or equal to {MAX_CAPPED_SIZE}"
        ))),
        Some(n) if n > 0.0 => Ok(n),
        _ => Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "Capped collection size must be greater than zero",
        )),
    }
}

/// Copies `src` into a new capped collection `to` of `size` bytes, in the commit pipeline:
/// the source's options (collation, validator...) with `capped: true` and the size, only
/// the `_id` index, and the documents in natural order, each logged as an insert; past the
/// size the oldest are dropped as inserts into a capped collection drop them. The copy
/// bypasses validation, as mongod's does.
fn clone_capped_in(
    w: &mut WriteCtx<'_>,
    src: &CollectionMeta,
    to: &Namespace,
    size: f64,
) -> Result<CollectionMeta> {
    let mut options = src.options.clone();
    options.remove("max");
    options.insert("capped", true);
    options.insert("size", capped_size(size));
    let mut meta = create_in(w, to, options)?;
    let session = crate::crud::Session::bypassing_validation();
    for (i, (_, d)) in w.scan_docs(src.id)?.into_iter().enumerate() {
        crate::crud::insert_one(w, &mut meta, &d, &session, i)?;
    }
    Ok(meta)
}

/// A collection named by a command's first field that must exist and not be a view.
fn existing_collection(w: &mut WriteCtx<'_>, ns: &Namespace, what: &str) -> Result<CollectionMeta> {
    match w.collection(ns)? {
        Some(m) if m.is_view() => Err(MongoError::new(
            ErrorCode::CommandNotSupportedOnView,
            format!("{what} not supported for views: {}", ns.full()),
        )),
        Some(m) => Ok(m),
        None => Err(MongoError::new(
            ErrorCode::NamespaceNotFound,
            format!("source collection {} does not exist", ns.full()),
        )),
    }
}

/// `cloneCollectionAsCapped`: `{cloneCollectionAsCapped: src, toCollection, size}`.
///
/// # Errors
/// NamespaceNotFound, NamespaceExists, InvalidOptions for the size.
pub async fn clone_collection_as_capped(
    ctx: &Arc<ServerCtx>,
    db: &str,
    cmd: &Document,
) -> Result<Reply> {
    let from = util::coll_arg(cmd, "cloneCollectionAsCapped", db)?;
    let to = match cmd.get("toCollection") {
        Some(Bson::String(t)) => Namespace::new(db, t),
        _ => {
            return Err(MongoError::type_mismatch(
                "'toCollection' must be of type String",
            ));
        }
    };
    catalog::validate_coll_name(&to).map_err(|_| {
        MongoError::new(
            ErrorCode::InvalidNamespace,
            format!("Invalid target collection name: {}", to.coll),
        )
    })?;
    let size = capped_size_arg(cmd)?;
    util::heavy(crate::txn::write(ctx, move |w| {
        if w.in_txn() {
            return Err(MongoError::new(
                ErrorCode::OperationNotSupportedInTransaction,
                "Cannot run 'cloneCollectionAsCapped' in a multi-document transaction.",
            ));
        }
        let src = existing_collection(w, &from, "cloneCollectionAsCapped")?;
        if w.collection(&to)?.is_some() {
            return Err(MongoError::new(
                ErrorCode::NamespaceExists,
                format!(
                    "cloneCollectionAsCapped failed - destination collection {} already exists. source collection: {}",
                    to.full(),
                    from.full()
                ),
            ));
        }
        clone_capped_in(w, &src, &to, size).map(|_| ())
    }))
    .await?;
    Ok(Reply::ok(Document::new()))
}

/// `convertToCapped`: `{convertToCapped: coll, size}`. As in mongod, the collection is
/// copied into a temporary capped collection, which is then renamed over it (dropping
/// it): the result has a new UUID and only the `_id` index, and a change stream on the
/// collection sees a `rename` and is invalidated.
///
/// # Errors
/// NamespaceNotFound, InvalidOptions for the size.
pub async fn convert_to_capped(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "convertToCapped", db)?;
    let size = capped_size_arg(cmd)?;
    util::heavy(crate::txn::write(ctx, move |w| {
        if w.in_txn() {
            return Err(MongoError::new(
                ErrorCode::OperationNotSupportedInTransaction,
                "Cannot run 'convertToCapped' in a multi-document transaction.",
            ));
        }
        let src = existing_collection(w, &ns, "convertToCapped")?;
        let tmp = Namespace::new(
            ns.db.clone(),
            format!("tmp{:08x}.convertToCapped.{}", rand_u32(), ns.coll),
        );
        let made = clone_capped_in(w, &src, &tmp, size)?;
        w.remove_collection(&src)?;
        w.rename_collection(&made, &ns)?;
        let o = doc! {
            "renameCollection": tmp.full(),
            "to": ns.full(),
            "stayTemp": false,
            "dropTarget": src.uuid_bson(),
        };
        w.log(OplogEntry::new(
            OpKind::Command,
            format!("{}.$cmd", ns.db),
            Some(made.uuid),
            o,
        ))
    }))
    .await?;
    Ok(Reply::ok(Document::new()))
}

/// A random number for temporary collection names.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() as u32
}

/// `collMod`.
///
/// # Errors
/// NamespaceNotFound, bad options.
pub async fn coll_mod(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "collMod", db)?;
    let mut changes = Document::new();
    for (k, v) in cmd.iter().skip(1) {
        if !GENERIC.contains(&k.as_str()) {
            changes.insert(k.clone(), v.clone());
        }
    }
    let index_change = match changes.remove("index") {
        Some(Bson::Document(d)) => Some(parse_index_change(&d)?),
        Some(_) => {
            return Err(MongoError::type_mismatch(
                "BSON field 'collMod.index' is the wrong type, expected type 'object'",
            ));
        }
        None => None,
    };
    let mut check = changes.clone();
    for k in ["validationLevel", "validationAction"] {
        if let Some(v) = check.remove(k) {
            if k == "validationLevel" {
                exec::validate::parse_level("collMod", &v)?;
            } else {
                exec::validate::parse_action("collMod", &v)?;
            }
        }
    }
    let mut capped_change = Document::new();
    for (k, v) in std::mem::take(&mut check) {
        match k.as_str() {
            "validator"
            | "viewOn"
            | "pipeline"
            | "changeStreamPreAndPostImages"
            | "expireAfterSeconds"
            | "timeseries" => {
                check.insert(k, v);
            }
            "cappedSize" | "cappedMax" => {
                let Some(n) = doc::compare::as_f64(&v) else {
                    return Err(MongoError::type_mismatch(format!(
                        "BSON field 'collMod.{k}' is the wrong type '{}', expected types '[long, int, decimal, double]'",
                        util::type_name(&v)
                    )));
                };
                if k == "cappedSize" {
                    if !(n > 0.0 && n <= MAX_CAPPED_SIZE as f64) {
                        return Err(MongoError::bad_value(
                            "cappedSize must be greater than 0 and at most 1 PB",
                        ));
                    }
                    capped_change.insert("size", capped_size(n));
                } else {
                    if n >= f64::from(1u32 << 31) {
                        return Err(MongoError::bad_value("cappedMax must be less than 2^31"));
                    }
                    capped_change.insert("max", n as i64);
                }
                changes.remove(&k);
            }
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field 'collMod.{other}' is an unknown field."),
                ));
            }
        }
    }
    validate_options(&check)?;
    if changes
        .get_document("validator")
        .is_ok_and(|v| !v.is_empty())
    {
        exec::validate::check_namespace(&ns)?;
    }
    ctx.store
        .write(move |w| {
            let Some(mut meta) = w.collection(&ns)? else {
                return Err(MongoError::new(
                    ErrorCode::NamespaceNotFound,
                    format!("ns does not exist: {}", ns.full()),
                ));
            };
            let mut before = doc! {"uuid": meta.uuid};
            before.extend(meta.options.clone());
            let mut reply = Document::new();
            if !capped_change.is_empty() {
                if meta.capped().is_none() {
                    return Err(MongoError::new(
                        ErrorCode::InvalidOptions,
                        format!("cappedSize and cappedMax are only for capped collections, and {} is not capped", ns.full()),
                    ));
                }
                for (k, v) in &capped_change {
                    changes.insert(if k == "size" { "cappedSize" } else { "cappedMax" }, v.clone());
                }
                meta.options.extend(capped_change);
            }
            if let Some(change) = &index_change {
                let (spec, r) = apply_index_change(&mut meta, change)?;
                reply = r;
                changes.insert("index", spec);
            }
            for (k, v) in &changes {
                if matches!(k.as_str(), "index" | "cappedSize" | "cappedMax") {
                    continue;
                }
                // An empty validator removes validation.
                if k == "validator" && v.as_document().is_some_and(Document::is_empty) {
                    meta.options.remove("validator");
                    continue;
                }
                meta.options.insert(k.clone(), v.clone());
            }
            w.put_collection(&meta)?;
            let mut o = doc! {"collMod": &ns.coll};
            o.extend(changes);
            let e = OplogEntry::new(
                OpKind::Command,
                format!("{}.$cmd", ns.db),
                Some(meta.uuid),
                o,
            )
            .with_o2(doc! {"collectionOptions": before});
            w.log(e)?;
            Ok(reply)
        })
        .await
        .map(Reply::ok)
}

/// What `collMod`'s `index` option asks of one index.
struct IndexChange {
    /// `keyPattern` or `name`.
    target: Bson,
    hidden: Option<bool>,
    expire_after: Option<Bson>,
}

fn parse_index_change(d: &Document) -> Result<IndexChange> {
    let mut target = None;
    let mut change = IndexChange {
        target: Bson::Null,
        hidden: None,
        expire_after: None,
    };
    for (k, v) in d {
        match k.as_str() {
            "keyPattern" | "name" => {
                if target.is_some() {
                    return Err(MongoError::new(
                        ErrorCode::InvalidOptions,
                        "Cannot specify both key pattern and name.",
                    ));
                }
                target = Some(v.clone());
            }
            "hidden" => match v {
                Bson::Boolean(b) => change.hidden = Some(*b),
                _ => {
                    return Err(MongoError::type_mismatch(
                        "BSON field 'collMod.index.hidden' is the wrong type, expected type 'bool'",
                    ));
                }
            },
            "expireAfterSeconds" => change.expire_after = Some(v.clone()),
            "prepareUnique" | "unique" | "forceNonUnique" | "dryRun" => {
                return Err(unsupported(&format!("collMod index changes of '{k}'")));
            }
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field 'collMod.index.{other}' is an unknown field."),
                ));
            }
        }
    }
    change.target = target.ok_or_else(|| {
        MongoError::new(
            ErrorCode::InvalidOptions,
            "Must specify either index name or key pattern.",
        )
    })?;
    if change.hidden.is_none() && change.expire_after.is_none() {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "no expireAfterSeconds or hidden field",
        ));
    }
    Ok(change)
}

/// Applies a `collMod` index change to the catalog record: the oplog's `index` spec and
/// the reply's `*_old`/`*_new` fields.
fn apply_index_change(meta: &mut CollectionMeta, c: &IndexChange) -> Result<(Document, Document)> {
    let ix = meta
        .indexes
        .iter_mut()
        .find(|i| match &c.target {
            Bson::String(n) => &i.name == n,
            Bson::Document(k) => &i.key == k,
            _ => false,
        })
        .ok_or_else(|| {
            MongoError::new(
                ErrorCode::IndexNotFound,
                format!("cannot find index {} for ns {}", c.target, meta.ns.full()),
            )
        })?;
    let mut reply = Document::new();
    let mut spec = doc! {"name": &ix.name, "keyPattern": ix.key.clone()};
    if let Some(h) = c.hidden {
        if ix.is_id() {
            return Err(MongoError::bad_value("can't hide _id index"));
        }
        reply.insert("hidden_old", ix.hidden());
        reply.insert("hidden_new", h);
        if h {
            ix.spec.insert("hidden", true);
        } else {
            ix.spec.remove("hidden");
        }
        spec.insert("hidden", h);
    }
    if let Some(v) = &c.expire_after {
        if ix.is_id() {
            return Err(MongoError::new(
                ErrorCode::InvalidOptions,
                "The field 'expireAfterSeconds' is not valid for an _id index specification.",
            ));
        }
        check_ttl(v, &ix.key)?;
        if let Some(old) = ix.spec.get("expireAfterSeconds") {
            reply.insert("expireAfterSeconds_old", old.clone());
        }
        reply.insert("expireAfterSeconds_new", v.clone());
        ix.spec.insert("expireAfterSeconds", v.clone());
        spec.insert("expireAfterSeconds", v.clone());
    }
    Ok((spec, reply))
}

/// `listDatabases`.
///
/// # Errors
/// A storage error, a bad filter.
pub fn list_databases(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let snap = ctx.store.snapshot()?;
    let mut sizes: std::collections::BTreeMap<String, (i64, bool)> =
        std::collections::BTreeMap::new();
    // As on any replica set member: admin, config and local are always there (local holds
    // the oplog; admin and config are empty until something is stored in them).
    for d in ["admin", "config", "local"] {
        sizes.insert(d.into(), (0, true));
    }
    let name_only = util::get_bool(cmd, "nameOnly").unwrap_or(false);
    for m in snap.collections(None)? {
        let e = sizes.entry(m.ns.db.clone()).or_insert((0, true));
        e.1 = false;
        if !name_only && !m.is_view() {
            let (_, data, keys) = snap.collection_size(m.id)?;
            let mut b = (data + keys) as i64;
            for ix in m.indexes.iter().filter(|i| !i.is_id()) {
                b += snap.index_size(ix.id)? as i64;
            }
            e.0 += b;
        }
    }
    if let Some(e) = sizes.get_mut("local") {
        e.0 += ctx.store.log().bytes() as i64;
        e.1 = false;
    }
    let filter = util::opt_doc(cmd, "filter")?
        .map(Filter::parse)
        .transpose()?;
    // Without the `listDatabases` action, a user sees the databases it has privileges in
    // (`authorizedDatabases`, the default then); asked not to, it is refused.
    let caller = crate::security::caller();
    let all = caller.allows("listDatabases", &auth::Target::Cluster);
    let authorized = match cmd.get("authorizedDatabases") {
        Some(v) => query::expr::truthy(v),
        None => !all,
    };
    if !all && !authorized {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "not authorized on admin to execute command { listDatabases: 1 }",
        ));
    }
    let mut dbs = Vec::new();
    let mut total = 0i64;
    for (n, (size, empty)) in sizes {
        if authorized && !caller.sees_db(&n) {
            continue;
        }
        let d = if name_only {
            doc! {"name": &n}
        } else {
            doc! {"name": &n, "sizeOnDisk": size, "empty": empty}
        };
        if filter.as_ref().is_none_or(|f| f.matches(&d)) {
            total += size;
            dbs.push(Bson::Document(d));
        }
    }
    let mut r = doc! {"databases": dbs};
    if !name_only {
        r.insert("totalSize", total);
        r.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(Reply::ok(r))
}

fn collection_info(m: &CollectionMeta) -> Document {
    if m.is_view() {
        return doc! {"name": &m.ns.coll, "type": "view", "options": m.options.clone(), "info": {"readOnly": true}};
    }
    doc! {
        "name": &m.ns.coll,
        "type": "collection",
        "options": m.options.clone(),
        "info": {"readOnly": false, "uuid": m.uuid_bson()},
        "idIndex": id_index_spec(&m.options),
    }
}

/// `listCollections`.
///
/// # Errors
/// A storage error, a bad filter.
pub fn list_collections(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let snap = ctx.store.snapshot()?;
    let filter = util::opt_doc(cmd, "filter")?
        .map(Filter::parse)
        .transpose()?;
    let name_only = util::get_bool(cmd, "nameOnly").unwrap_or(false);
    let mut out = Vec::new();
    let mut infos: Vec<(String, Document)> = snap
        .collections(Some(db))?
        .iter()
        .map(|m| (m.ns.coll.clone(), collection_info(m)))
        .collect();
    // The oplog, a capped collection of the log's entries, as on any replica set member.
    if db == "local" {
        infos.push((
            "oplog.rs".into(),
            doc! {
                "name": "oplog.rs",
                "type": "collection",
                "options": {"capped": true, "size": ctx.config.oplog_size_bytes as i64},
                "info": {"readOnly": true},
            },
        ));
        infos.sort_by(|a, b| a.0.cmp(&b.0));
    }
    // `authorizedCollections` (with `nameOnly`): only what the caller holds privileges on.
    let caller = crate::security::caller();
    let authorized = matches!(cmd.get("authorizedCollections"), Some(v) if query::expr::truthy(v))
        && name_only
        && !caller.allows("listCollections", &auth::Target::Database(db));
    for (coll, info) in infos {
        if authorized && !caller.sees_collection(db, &coll) {
            continue;
        }
        if filter.as_ref().is_none_or(|f| f.matches(&info)) {
            out.push(if name_only {
                doc! {"name": &coll, "type": info.get_str("type").unwrap_or("collection")}
            } else {
                info
            });
        }
    }
    let batch = match cmd.get_document("cursor") {
        Ok(c) => util::opt_batch_size(c)?,
        Err(_) => None,
    };
    let src: DocSource = Box::new(out.into_iter().map(Ok));
    cursor_reply(
        ctx,
        &format!("{db}.$cmd.listCollections"),
        src,
        batch,
        false,
    )
}

/// `listIndexes`.
///
/// # Errors
/// NamespaceNotFound.
pub fn list_indexes(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "listIndexes", db)?;
    let snap = ctx.store.snapshot()?;
    let Some(m) = snap.collection(&ns)? else {
        return Err(MongoError::new(
            ErrorCode::NamespaceNotFound,
            format!("ns does not exist: {}", ns.full()),
        ));
    };
    let specs: Vec<Document> = m.indexes.iter().map(|i| i.spec.clone()).collect();
    let batch = match cmd.get_document("cursor") {
        Ok(c) => util::opt_batch_size(c)?,
        Err(_) => None,
    };
    cursor_reply(
        ctx,
        &ns.full(),
        Box::new(specs.into_iter().map(Ok)),
        batch,
        false,
    )
}

/// An index spec's own collation: `None` when it gives none (it then inherits the
/// collection's default), `Some(None)` for the simple collation.
type IndexCollation = Option<Option<Arc<doc::Collation>>>;

fn parse_index(spec: &Document) -> Result<(IndexMeta, IndexCollation)> {
    let key = spec
        .get_document("key")
        .map_err(|_| {
            MongoError::failed_to_parse(
                "The 'key' field is a required property of an index specification",
            )
        })?
        .clone();
    if key.is_empty() {
        return Err(MongoError::new(
            ErrorCode::CannotCreateIndex,
            "Index keys cannot be an empty field.",
        ));
    }
    // A text index's fields become `{_fts: "text", _ftsx: 1}`, with its options spelled out.
    let text = key
        .values()
        .any(|v| matches!(v, Bson::String(s) if s == "text"))
        || key.contains_key("_fts");
    let (key, text_opts) = if text {
        let (k, o) = query::text::normalize_index_spec(&key, spec)?;
        if util::get_bool(spec, "unique").unwrap_or(false) {
            return Err(MongoError::new(
                ErrorCode::CannotCreateIndex,
                "Index type 'text' does not support the unique option",
            ));
        }
        if let Some(c) = spec.get("collation") {
            if doc::Collation::from_option(Some(c))?.is_some() {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    format!("Index type 'text' does not support collation: {c}"),
                ));
            }
        }
        (k, Some(o))
    } else {
        (key, None)
    };
    let sphere = key
        .values()
        .any(|v| matches!(v, Bson::String(s) if s == "2dsphere"));
    if sphere && key.len() != 1 {
        return Err(MongoError::new(
            ErrorCode::CannotCreateIndex,
            format!("compound 2dsphere indexes are not supported by Eddy (index key {key})"),
        ));
    }
    for (f, v) in &key {
        if text && f == "_fts" || sphere {
            continue;
        }
        if matches!(v, Bson::String(k) if k == "2d") {
            if key.len() != 1 {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    format!("compound 2d indexes are not supported by Eddy (index key {key})"),
                ));
            }
            continue;
        }
        if matches!(v, Bson::String(k) if k == "hashed") {
            if key.len() != 1 {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    format!("compound hashed indexes are not supported by Eddy (index key {key})"),
                ));
            }
            if util::get_bool(spec, "unique").unwrap_or(false) {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    "Currently hashed indexes cannot guarantee uniqueness. Use a regular index.",
                ));
            }
            if f == "$**" || f.ends_with(".$**") {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    "Index key contains an illegal field name: field name starts with '$'.",
                ));
            }
            continue;
        }
        if let Bson::String(kind) = v {
            // The index types MongoDB has and Eddy does not build yet are refused rather
            // than created and then never used.
            let msg = match kind.as_str() {
                "text" | "geoHaystack" => {
                    format!(
                        "'{kind}' indexes are not supported by Eddy (index key {f}: \"{kind}\")"
                    )
                }
                _ => format!("Unknown index plugin '{kind}'"),
            };
            return Err(MongoError::new(ErrorCode::CannotCreateIndex, msg));
        }
        let ok = matches!(doc::compare::as_f64(v), Some(d) if d != 0.0);
        if !ok || f.is_empty() {
            return Err(MongoError::new(
                ErrorCode::CannotCreateIndex,
                format!("Values in the index key pattern can't be 0 or invalid: {f}: {v}"),
            ));
        }
        if f == "$**" || f.ends_with(".$**") {
            if key.len() != 1 {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    format!(
                        "compound wildcard indexes are not supported by Eddy (index key {key})"
                    ),
                ));
            }
            for opt in ["unique", "sparse"] {
                if util::get_bool(spec, opt).unwrap_or(false) {
                    return Err(MongoError::new(
                        ErrorCode::CannotCreateIndex,
                        format!("Index type 'wildcard' does not support the {opt} option"),
                    ));
                }
            }
            if spec.contains_key("wildcardProjection") && f != "$**" {
                return Err(MongoError::bad_value(
                    "The field 'wildcardProjection' is only allowed in an 'wildcard' index with key {\"$**\": 1}",
                ));
            }
            if spec.contains_key("expireAfterSeconds") {
                return Err(MongoError::new(
                    ErrorCode::CannotCreateIndex,
                    "Index type 'wildcard' does not support the expireAfterSeconds option",
                ));
            }
        }
    }
    if let Some(p) = spec.get("wildcardProjection") {
        check_wildcard_projection(p, &key)?;
    }
    let flat = key
        .values()
        .any(|v| matches!(v, Bson::String(s) if s == "2d"));
    check_index_options(spec, &key, text, sphere, flat)?;
    let name = spec
        .get_str("name")
        .map_err(|_| {
            MongoError::failed_to_parse(
                "The 'name' field is a required property of an index specification",
            )
        })?
        .to_string();
    let partial = util::opt_doc(spec, "partialFilterExpression")?.cloned();
    if let Some(p) = &partial {
        Filter::parse(p)?;
    }
    let collation = match spec.get("collation") {
        Some(c) => Some(doc::Collation::from_option(Some(c))?),
        None => None,
    };
    let v = match spec.get("v").and_then(doc::compare::as_f64) {
        Some(1.0) => 1,
        _ => 2,
    };
    let mut full = doc! {"v": v, "key": key.clone(), "name": &name};
    for (k, v) in spec {
        let text_opt = matches!(
            k.as_str(),
            "weights" | "default_language" | "language_override" | "textIndexVersion"
        );
        if !matches!(k.as_str(), "key" | "name" | "v" | "ns" | "collation") && !text_opt {
            full.insert(k.clone(), v.clone());
        }
    }
    if let Some(o) = text_opts {
        full.extend(o);
    }
    if sphere && !full.contains_key("2dsphereIndexVersion") {
        full.insert("2dsphereIndexVersion", 3);
    }
    let ix = IndexMeta {
        id: 0,
        unique: util::get_bool(spec, "unique").unwrap_or(false),
        sparse: util::get_bool(spec, "sparse").unwrap_or(false),
        name,
        key,
        partial_filter: partial,
        spec: full,
        multikey: false,
    };
    Ok((ix, collation))
}

/// Checks an index specification's options: each one is either honoured or refused with
/// MongoDB's error for it, never accepted and ignored.
fn check_index_options(
    spec: &Document,
    key: &Document,
    text: bool,
    sphere: bool,
    flat: bool,
) -> Result<()> {
    let not_valid = |k: &str| {
        MongoError::new(
            ErrorCode::InvalidIndexSpecificationOption,
            format!(
                "The field '{k}' is not valid for an index specification. Specification: {spec}"
            ),
        )
    };
    let refused = |k: &str, what: &str| {
        MongoError::new(
            ErrorCode::CannotCreateIndex,
            format!("The index option '{k}' is for {what}, which Eddy does not support"),
        )
    };
    for (k, v) in spec {
        match k.as_str() {
            "key" | "name" | "ns" | "collation" | "partialFilterExpression" => {}
            "v" => {
                if !matches!(doc::compare::as_f64(v), Some(x) if x == 1.0 || x == 2.0) {
                    return Err(MongoError::new(
                        ErrorCode::CannotCreateIndex,
                        format!(
                            "Invalid index specification {spec}; cause: index version {v} is not supported"
                        ),
                    ));
                }
            }
            // `background` has had no effect since MongoDB 4.2 (every build is the same
            // kind); it is accepted as there.
            "unique" | "sparse" | "background" => {
                if !matches!(v, Bson::Boolean(_)) && doc::compare::as_f64(v).is_none() {
                    return Err(MongoError::type_mismatch(format!(
                        "The field '{k}' must be a boolean, but got {}",
                        util::type_name(v)
                    )));
                }
            }
            "hidden" => {
                if !matches!(v, Bson::Boolean(_)) {
                    return Err(MongoError::type_mismatch(format!(
                        "The field 'hidden' must be a boolean, but got {}",
                        util::type_name(v)
                    )));
                }
            }
            "expireAfterSeconds" => check_ttl(v, key)?,
            "storageEngine" => {
                if !matches!(v, Bson::Document(d) if d.is_empty()) {
                    return Err(unsupported("storageEngine settings"));
                }
            }
            "weights" | "default_language" | "language_override" | "textIndexVersion" => {
                if !text {
                    return Err(MongoError::new(
                        ErrorCode::CannotCreateIndex,
                        format!("The index option '{k}' is only for text indexes"),
                    ));
                }
            }
            "2dsphereIndexVersion" if sphere => {
                if !matches!(doc::compare::as_f64(v), Some(x) if x == 2.0 || x == 3.0) {
                    return Err(MongoError::new(
                        ErrorCode::CannotCreateIndex,
                        format!(
                            "unsupported geo index version {{ 2dsphereIndexVersion : {v} }}, only versions: [2,3] are supported by Eddy"
                        ),
                    ));
                }
            }
            "bits" if flat => {
                if !matches!(doc::compare::as_f64(v), Some(b) if (1.0..=32.0).contains(&b) && b.fract() == 0.0)
                {
                    return Err(MongoError::new(
                        ErrorCode::CannotCreateIndex,
                        "bits for hash must be > 0 and <= 32",
                    ));
                }
            }
            "min" | "max" if flat => {
                let (lo, hi) = (
                    spec.get("min")
                        .and_then(doc::compare::as_f64)
                        .unwrap_or(-180.0),
                    spec.get("max")
                        .and_then(doc::compare::as_f64)
                        .unwrap_or(180.0),
                );
                if doc::compare::as_f64(v).is_none() || lo >= hi {
                    return Err(MongoError::new(
                        ErrorCode::CannotCreateIndex,
                        "region for hash must be valid and have positive area",
                    ));
                }
            }
            "2dsphereIndexVersion"
            | "bits"
            | "min"
            | "max"
            | "bucketSize"
            | "coarsestIndexedLevel"
            | "finestIndexedLevel" => {
                return Err(refused(k, "geospatial indexes"));
            }
            "wildcardProjection" => {}
            "prepareUnique" => return Err(refused(k, "converting an index to unique")),
            "clustered" => return Err(refused(k, "clustered collections")),
            _ => return Err(not_valid(k)),
        }
    }
    Ok(())
}

/// A wildcard index's `wildcardProjection`: an object of paths, all included or all
/// excluded (`_id` may differ), only with the key `{"$**": 1}`.
fn check_wildcard_projection(p: &Bson, key: &Document) -> Result<()> {
    if !key.contains_key("$**") {
        return Err(MongoError::bad_value(
            "The field 'wildcardProjection' is only allowed in an 'wildcard' index",
        ));
    }
    let Bson::Document(p) = p else {
        return Err(MongoError::type_mismatch(
            "The field 'wildcardProjection' must be a non-empty object",
        ));
    };
    if p.is_empty() {
        return Err(MongoError::failed_to_parse(
            "The field 'wildcardProjection' must be a non-empty object",
        ));
    }
    let modes: std::collections::HashSet<bool> = p
        .iter()
        .filter(|(k, _)| k.as_str() != "_id")
        .map(|(_, v)| query::expr::truthy(v))
        .collect();
    if modes.len() > 1 {
        return Err(MongoError::with_code(
            31254,
            "Cannot do exclusion on field in inclusion projection",
        ));
    }
    Ok(())
}

/// A TTL index's `expireAfterSeconds`: a number from 0 to 2^31 - 1, on a single field.
fn check_ttl(v: &Bson, key: &Document) -> Result<()> {
    let Some(secs) = doc::compare::as_f64(v) else {
        return Err(MongoError::new(
            ErrorCode::CannotCreateIndex,
            format!(
                "TTL index 'expireAfterSeconds' option must be numeric, but received a type of '{}'",
                util::type_name(v)
            ),
        ));
    };
    if !(0.0..=f64::from(i32::MAX)).contains(&secs) || secs.is_nan() {
        return Err(MongoError::new(
            ErrorCode::CannotCreateIndex,
            format!(
                "TTL index 'expireAfterSeconds' option must be within an acceptable range, try a lower number: {secs}"
            ),
        ));
    }
    if key.len() != 1 {
        return Err(MongoError::new(
            ErrorCode::CannotCreateIndex,
            "TTL indexes are single-field indexes, compound indexes do not support TTL",
        ));
    }
    Ok(())
}

/// Settles an index's collation against the collection's default, writing it into the
/// spec in MongoDB's expanded form.
fn settle_collation(ix: &mut IndexMeta, own: IndexCollation, meta: &CollectionMeta) -> Result<()> {
    let coll = match own {
        Some(c) => c,
        None => exec::collation::of_collection(meta)?,
    };
    if let Some(c) = coll {
        if ix.is_text() {
            return Err(MongoError::new(
                ErrorCode::CannotCreateIndex,
                format!(
                    "Index type 'text' does not support collation: {}; give the index collation {{locale: \"simple\"}}",
                    c.spec()
                ),
            ));
        }
        ix.spec.insert("collation", c.spec().clone());
    }
    Ok(())
}

/// Whether an index spec asks for the `_id` index, checked as MongoDB checks one.
fn is_id_index_spec(d: &Document) -> Result<bool> {
    let Ok(key) = d.get_document("key") else {
        return Ok(false);
    };
    let name = d.get_str("name").ok();
    let id_dir = if key.len() == 1 {
        key.get("_id").and_then(doc::compare::as_f64)
    } else {
        None
    };
    match (id_dir, name) {
        (Some(1.0), _) => {}
        (Some(_), _) => {
            return Err(MongoError::bad_value(format!(
                "The field 'key' for an _id index must be {{_id: 1}}, but got {key}"
            )));
        }
        (None, Some("_id_")) => {
            return Err(MongoError::bad_value(format!(
                "The index name '_id_' is reserved for the _id index, which must have key pattern {{_id: 1}}, found {key}"
            )));
        }
        (None, _) => return Ok(false),
    }
    for k in d.keys() {
        if !matches!(k.as_str(), "key" | "name" | "v" | "collation" | "ns") {
            return Err(MongoError::new(
                ErrorCode::InvalidIndexSpecificationOption,
                format!(
                    "The field '{k}' is not valid for an _id index specification. Specification: {d}"
                ),
            ));
        }
    }
    if name != Some("_id_") {
        return Err(MongoError::new(
            ErrorCode::IndexOptionsConflict,
            "Index already exists with a different name: _id_",
        ));
    }
    Ok(true)
}

/// `createIndexes`.
///
/// # Errors
/// CannotCreateIndex, IndexOptionsConflict, IndexKeySpecsConflict, DuplicateKey.
pub async fn create_indexes(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let ns = util::coll_arg(cmd, "createIndexes", db)?;
    let specs = cmd
        .get_array("indexes")
        .map_err(|_| MongoError::type_mismatch("'indexes' must be an array"))?;
    if specs.is_empty() {
        return Err(MongoError::bad_value(
            "Must specify at least one index to create",
        ));
    }
    let mut wanted = Vec::new();
    for s in specs {
        let Bson::Document(d) = s else {
            return Err(MongoError::type_mismatch(
                "index specification must be an object",
            ));
        };
        // The `_id` index always exists: asking for it again is a no-op (restore tools
        // replay `listIndexes`, `_id_` included).
        if is_id_index_spec(d)? {
            continue;
        }
        wanted.push(parse_index(d)?);
    }
    let (before, after, created) = util::heavy(crate::txn::write(ctx, move |w| {
            let (mut meta, created) = ensure_collection(w, &ns)?;
            if w.in_txn() && !created && !w.created_in_txn(&ns)? {
                return Err(MongoError::new(ErrorCode::OperationNotSupportedInTransaction, format!("Cannot create new indexes on existing collection {} in a multi-document transaction.", ns.full())));
            }
            let before = meta.indexes.len() as i32;
            for (mut ix, own_collation) in wanted {
                settle_collation(&mut ix, own_collation, &meta)?;
                let same_collation = |e: &IndexMeta| e.spec.get("collation") == ix.spec.get("collation");
                if ix.is_text() {
                    if let Some(other) = meta.indexes.iter().find(|e| e.is_text() && e.key != ix.key) {
                        return Err(MongoError::new(ErrorCode::CannotCreateIndex, format!("only one text index per collection allowed, found existing text index \"{}\"", other.name)));
                    }
                }
                let same_text = |e: &IndexMeta| ["weights", "default_language", "language_override"].iter().all(|k| e.spec.get(k) == ix.spec.get(k));
                if let Some(existing) = meta.indexes.iter().find(|e| e.name == ix.name) {
                    if same_text(existing) && existing.key == ix.key && existing.unique == ix.unique && existing.sparse == ix.sparse && existing.partial_filter == ix.partial_filter && existing.expire_after_secs() == ix.expire_after_secs() && same_collation(existing) {
                        continue;
                    }
                    let code = if existing.key == ix.key { ErrorCode::IndexOptionsConflict } else { ErrorCode::IndexKeySpecsConflict };
                    return Err(MongoError::new(code, format!("An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {}, existing index: {}", ix.spec, existing.spec)));
                }
                if let Some(existing) = meta.indexes.iter().find(|e| e.key == ix.key && e.partial_filter == ix.partial_filter && same_collation(e)) {
                    if existing.unique == ix.unique && existing.sparse == ix.sparse {
                        return Err(MongoError::new(ErrorCode::IndexOptionsConflict, format!("Index already exists with a different name: {}", existing.name)));
                    }
                    return Err(MongoError::new(ErrorCode::IndexKeySpecsConflict, format!("An equivalent index already exists with the same name but different options. Requested index: {}, existing index: {}", ix.spec, existing.spec)));
                }
                ix.id = w.new_id();
                exec::write::build_index(w, &meta, &mut ix)?;
                meta.indexes.push(ix.clone());
                w.put_collection(&meta)?;
                let mut o = doc! {"createIndexes": &ns.coll};
                o.extend(ix.spec.clone());
                w.log(OplogEntry::new(OpKind::Command, format!("{}.$cmd", ns.db), Some(meta.uuid), o))?;
            }
            Ok((before, meta.indexes.len() as i32, created))
        }))
        .await?;
    let mut r = doc! {"numIndexesBefore": before, "numIndexesAfter": after};
    if before != after || created {
        r.insert("createdCollectionAutomatically", created);
    }
    if before == after {
        r.insert("note", "all indexes already exist");
    }
    Ok(Reply::ok(r))
}

/// `dropIndexes`: a name, `"*"`, a key pattern, or a list of names.
///
/// # Errors
/// NamespaceNotFound, IndexNotFound, InvalidOptions for `_id_`.
pub async fn drop_indexes(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    let name = crate::command_name(cmd).to_string();
    let ns = util::coll_arg(cmd, &name, db)?;
    let target = cmd.get("index").cloned().ok_or_else(|| {
        MongoError::failed_to_parse(
            "BSON field 'dropIndexes.index' is missing but a required field",
        )
    })?;
    let was = ctx
        .store
        .write(move |w| {
            let Some(mut meta) = w.collection(&ns)? else {
                return Err(MongoError::new(
                    ErrorCode::NamespaceNotFound,
                    format!("ns not found {}", ns.full()),
                ));
            };
            let was = meta.indexes.len() as i32;
            let names: Vec<String> = match &target {
                Bson::String(s) if s == "*" => meta
                    .indexes
                    .iter()
                    .filter(|i| !i.is_id())
                    .map(|i| i.name.clone())
                    .collect(),
                Bson::String(s) => vec![s.clone()],
                Bson::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                Bson::Document(k) => match meta.indexes.iter().find(|i| &i.key == k) {
                    Some(i) => vec![i.name.clone()],
                    None => {
                        return Err(MongoError::new(
                            ErrorCode::IndexNotFound,
                            format!("can't find index with key: {k}"),
                        ));
                    }
                },
                _ => {
                    return Err(MongoError::type_mismatch(
                        "'index' must be a string, object or array",
                    ));
                }
            };
            for n in &names {
                if n == "_id_" {
                    return Err(MongoError::new(
                        ErrorCode::InvalidOptions,
                        "cannot drop _id index",
                    ));
                }
                if meta.index(n).is_none() {
                    return Err(MongoError::new(
                        ErrorCode::IndexNotFound,
                        format!("index not found with name [{n}]"),
                    ));
                }
            }
            let mut names = names;
            names.dedup();
            let mut seen = std::collections::HashSet::new();
            names.retain(|n| seen.insert(n.clone()));
            for n in names {
                let Some(pos) = meta.indexes.iter().position(|i| i.name == n) else {
                    continue;
                };
                let ix = meta.indexes.remove(pos);
                w.remove_index_entries(ix.id)?;
                w.put_collection(&meta)?;
                let e = OplogEntry::new(
                    OpKind::Command,
                    format!("{}.$cmd", ns.db),
                    Some(meta.uuid),
                    doc! {"dropIndexes": &ns.coll, "index": &ix.name},
                )
                .with_o2(ix.spec.clone());
                w.log(e)?;
            }
            Ok(was)
        })
        .await?;
    Ok(Reply::ok(doc! {"nIndexesWas": was}))
}
