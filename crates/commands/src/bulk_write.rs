//! The `bulkWrite` command of MongoDB 8.0 (the drivers' client bulk write): inserts,
//! updates and deletes on any number of namespaces in one command, run on `admin`.
//!
//! ```text
//! {bulkWrite: 1, ops: [{insert: 0, document}, {update: 1, filter, updateMods, multi, ...},
//!  {delete: 0, filter, multi, ...}], nsInfo: [{ns: "db.a"}, {ns: "db.b"}], ordered,
//!  errorsOnly, let, bypassDocumentValidation, comment, writeConcern, cursor: {batchSize}}
//! ```
//!
//! Each operation runs through the same statement functions as `insert`, `update` and
//! `delete` (so it logs the same oplog entries and produces the same change events), all in
//! one commit-pipeline write (or in the session's transaction). The reply is a cursor of one item per operation
//! (`{ok, idx, n, nModified?, upserted?: {_id}}`, or the error fields), only the failed ones
//! with `errorsOnly`, plus the totals `nErrors`, `nInserted`, `nMatched`, `nModified`,
//! `nUpserted`, `nDeleted`. The cursor is a real one when the items do not fit one reply.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use query::expr::Vars;
use storage::{Namespace, WriteCtx};

use crate::crud::{self, Session};
use crate::cursor::cursor_reply;
use crate::ddl::ensure_collection;
use crate::reply::error_doc;
use crate::{Reply, ServerCtx, util};

/// The namespace of the results cursor.
const CURSOR_NS: &str = "admin.$cmd.bulkWrite";

/// One parsed operation of `ops`.
#[derive(Debug, Clone)]
enum Op {
    /// The document, with its `_id`.
    Insert(usize, Document),
    /// An `update` command statement (`{q, u, multi, upsert, ...}`) and the operation's
    /// own `let`, if any.
    Update(usize, Bson, Option<Document>),
    /// A `delete` command statement (`{q, limit}`) and the operation's own `let`.
    Delete(usize, Bson, Option<Document>),
    /// An operation that fails when its turn comes (a bad `_id`, say), only by itself.
    Failed {
        ns: usize,
        /// "insert", "update" or "delete".
        kind: &'static str,
        error: MongoError,
    },
}

impl Op {
    fn ns_index(&self) -> usize {
        match self {
            Op::Insert(i, _) | Op::Update(i, _, _) | Op::Delete(i, _, _) => *i,
            Op::Failed { ns, .. } => *ns,
        }
    }
}

fn unknown_field(path: &str) -> MongoError {
    MongoError::with_code(40415, format!("BSON field '{path}' is an unknown field."))
}

fn missing_field(path: &str) -> MongoError {
    MongoError::with_code(
        40414,
        format!("BSON field '{path}' is missing but a required field"),
    )
}

fn wrong_type(path: &str, v: &Bson, expected: &str) -> MongoError {
    MongoError::type_mismatch(format!(
        "BSON field '{path}' is the wrong type '{}', expected type '{expected}'",
        util::type_name(v)
    ))
}

/// A non-negative int field (an `nsInfo` index).
fn index_field(op: &Document, key: &str) -> Result<usize> {
    let path = format!("bulkWrite.ops.{key}");
    match op.get(key) {
        Some(v @ (Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_))) => {
            match util::get_i64(op, key) {
                Some(i) if i >= 0 => Ok(i as usize),
                Some(i) => Err(MongoError::bad_value(format!(
                    "BSON field '{path}' value must be >= 0, actual value '{i}'"
                ))),
                None => Err(wrong_type(&path, v, "int")),
            }
        }
        Some(v) => Err(wrong_type(&path, v, "int")),
        None => Err(missing_field(&path)),
    }
}

fn doc_field<'a>(op: &'a Document, key: &str, kind: &str) -> Result<Option<&'a Document>> {
    match op.get(key) {
        None => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(v) => Err(wrong_type(&format!("bulkWrite.{kind}.{key}"), v, "object")),
    }
}

fn bool_field(op: &Document, key: &str, kind: &str) -> Result<bool> {
    match op.get(key) {
        None => Ok(false),
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(v) => Err(wrong_type(&format!("bulkWrite.{kind}.{key}"), v, "bool")),
    }
}

/// Copies the optional fields an `update`/`delete` statement shares with a bulkWrite
/// operation (`hint`, `collation`, ...) into the statement.
fn copy_fields(op: &Document, st: &mut Document, keys: &[&str]) {
    for k in keys {
        if let Some(v) = op.get(*k) {
            st.insert(*k, v.clone());
        }
    }
}

/// Parses one entry of `ops`. Structural errors fail the whole command, as in MongoDB;
/// what can only fail when the operation runs becomes that operation's error.
fn parse_op(v: &Bson, n_ns: usize, idx: usize) -> Result<Op> {
    let Bson::Document(op) = v else {
        return Err(wrong_type("bulkWrite.ops", v, "object"));
    };
    let kinds: Vec<&str> = ["insert", "update", "delete"]
        .into_iter()
        .filter(|k| op.contains_key(*k))
        .collect();
    let kind = match kinds.as_slice() {
        [k] => *k,
        [] => {
            return Err(MongoError::failed_to_parse(format!(
                "BulkWrite ops entry {idx} must contain exactly one of insert, update or delete"
            )));
        }
        _ => {
            return Err(MongoError::failed_to_parse(format!(
                "BulkWrite ops entry {idx} has more than one of insert, update and delete"
            )));
        }
    };
    let allowed: &[&str] = match kind {
        "insert" => &["insert", "document"],
        "update" => &[
            "update",
            "filter",
            "multi",
            "updateMods",
            "upsert",
            "arrayFilters",
            "hint",
            "let",
            "collation",
            "sort",
            "return",
            "returnFields",
            "upsertSupplied",
        ],
        _ => &[
            "delete",
            "filter",
            "multi",
            "hint",
            "let",
            "collation",
            "return",
            "returnFields",
        ],
    };
    if let Some(k) = op.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(unknown_field(&format!("bulkWrite.{kind}.{k}")));
    }
    let ns = index_field(op, kind)?;
    if ns >= n_ns {
        return Err(MongoError::bad_value(format!(
            "BulkWrite ops entry {idx} has an invalid nsInfo index."
        )));
    }
    if kind == "insert" {
        let d = match op.get("document") {
            Some(Bson::Document(d)) => d,
            Some(v) => return Err(wrong_type("bulkWrite.insert.document", v, "object")),
            None => return Err(missing_field("bulkWrite.insert.document")),
        };
        let d = crud::with_id(d);
        return Ok(match crud::check_id(&d) {
            Ok(()) => Op::Insert(ns, d),
            Err(error) => Op::Failed {
                ns,
                kind: "insert",
                error,
            },
        });
    }
    // `return`/`returnFields` turn an operation into a findAndModify, which MongoDB keeps
    // for its own routers; drivers never send them.
    if op.contains_key("return") || op.contains_key("returnFields") {
        return Ok(Op::Failed {
            ns,
            kind,
            error: MongoError::new(
                ErrorCode::InvalidOptions,
                "bulkWrite 'return' and 'returnFields' are not supported",
            ),
        });
    }
    let filter = doc_field(op, "filter", kind)?
        .ok_or_else(|| missing_field(&format!("bulkWrite.{kind}.filter")))?;
    let multi = bool_field(op, "multi", kind)?;
    let op_let = doc_field(op, "let", kind)?.cloned();
    doc_field(op, "collation", kind)?;
    let mut st = doc! {"q": filter.clone()};
    if kind == "update" {
        let u = match op.get("updateMods") {
            Some(u @ (Bson::Document(_) | Bson::Array(_))) => u.clone(),
            Some(v) => return Err(wrong_type("bulkWrite.update.updateMods", v, "object")),
            None => return Err(missing_field("bulkWrite.update.updateMods")),
        };
        st.insert("u", u);
        st.insert("multi", multi);
        st.insert("upsert", bool_field(op, "upsert", kind)?);
        copy_fields(op, &mut st, &["arrayFilters", "hint", "collation", "sort"]);
        Ok(Op::Update(ns, Bson::Document(st), op_let))
    } else {
        st.insert("limit", if multi { 0 } else { 1 });
        copy_fields(op, &mut st, &["hint", "collation"]);
        Ok(Op::Delete(ns, Bson::Document(st), op_let))
    }
}

fn parse_ns_info(v: &Bson) -> Result<Namespace> {
    let Bson::Document(d) = v else {
        return Err(wrong_type("bulkWrite.nsInfo", v, "object"));
    };
    if let Some(k) = d.keys().find(|k| {
        !matches!(
            k.as_str(),
            "ns" | "collectionUUID" | "encryptionInformation"
        )
    }) {
        return Err(unknown_field(&format!("bulkWrite.nsInfo.{k}")));
    }
    let ns = match d.get("ns") {
        Some(Bson::String(s)) => s,
        Some(v) => return Err(wrong_type("bulkWrite.nsInfo.ns", v, "string")),
        None => return Err(missing_field("bulkWrite.nsInfo.ns")),
    };
    let parsed = Namespace::parse(ns)
        .filter(|n| !n.db.is_empty())
        .ok_or_else(|| {
            MongoError::new(
                ErrorCode::InvalidNamespace,
                format!("Invalid namespace specified '{ns}'"),
            )
        })?;
    storage::catalog::validate_coll_name(&parsed)?;
    Ok(parsed)
}

/// The totals of a bulkWrite and its reply items.
#[derive(Default)]
struct Outcome {
    items: Vec<Bson>,
    n_errors: i32,
    n_inserted: i32,
    n_matched: i32,
    n_modified: i32,
    n_upserted: i32,
    n_deleted: i32,
}

impl Outcome {
    fn into_document(self) -> Document {
        doc! {
            "items": self.items,
            "nErrors": self.n_errors,
            "nInserted": self.n_inserted,
            "nMatched": self.n_matched,
            "nModified": self.n_modified,
            "nUpserted": self.n_upserted,
            "nDeleted": self.n_deleted,
        }
    }
}

/// Runs one operation; the reply item on success.
fn run_op(
    w: &mut WriteCtx<'_>,
    op: &Op,
    ns: &Namespace,
    vars: &Vars,
    s: &Session,
    idx: usize,
    out: &mut Outcome,
) -> Result<Document> {
    let op_vars = |op_let: &Option<Document>| -> Result<Vars> {
        let mut v = vars.clone();
        if let Some(l) = op_let {
            v.bind_let(l)?;
        }
        Ok(v)
    };
    match op {
        Op::Failed { error, .. } => Err(error.clone()),
        Op::Insert(_, d) => {
            let (mut meta, _) = ensure_collection(w, ns)?;
            crud::insert_one(w, &mut meta, d, s, idx)?;
            out.n_inserted += 1;
            Ok(doc! {"ok": 1.0, "idx": idx as i32, "n": 1})
        }
        Op::Update(_, st, op_let) => {
            let o = crud::update_statement(w, ns, st, &op_vars(op_let)?, s, idx)?;
            out.n_matched += o.n as i32;
            out.n_modified += o.modified as i32;
            let mut item = doc! {
                "ok": 1.0,
                "idx": idx as i32,
                "n": (o.n + i64::from(o.upserted.is_some())) as i32,
                "nModified": o.modified as i32,
            };
            if let Some(id) = o.upserted {
                out.n_upserted += 1;
                item.insert("upserted", doc! {"_id": id});
            }
            Ok(item)
        }
        Op::Delete(_, st, op_let) => {
            let k = crud::delete_statement(w, ns, st, &op_vars(op_let)?, s, idx)?;
            out.n_deleted += k as i32;
            Ok(doc! {"ok": 1.0, "idx": idx as i32, "n": k as i32})
        }
    }
}

/// `bulkWrite`.
///
/// # Errors
/// Command-level errors (parsing, namespaces); each operation's failure is an item of the
/// results cursor.
pub async fn bulk_write(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "bulkWrite may only be run against the admin database.",
        ));
    }
    let raw_ops = match cmd.get("ops") {
        Some(Bson::Array(a)) => a,
        Some(v) => return Err(wrong_type("bulkWrite.ops", v, "array")),
        None => return Err(missing_field("bulkWrite.ops")),
    };
    if raw_ops.is_empty() || raw_ops.len() > wire::MAX_WRITE_BATCH_SIZE {
        return Err(MongoError::new(
            ErrorCode::InvalidLength,
            format!(
                "Write batch sizes must be between 1 and {}. Got {} operations.",
                wire::MAX_WRITE_BATCH_SIZE,
                raw_ops.len()
            ),
        ));
    }
    let namespaces = match cmd.get("nsInfo") {
        Some(Bson::Array(a)) => a.iter().map(parse_ns_info).collect::<Result<Vec<_>>>()?,
        Some(v) => return Err(wrong_type("bulkWrite.nsInfo", v, "array")),
        None => return Err(missing_field("bulkWrite.nsInfo")),
    };
    let ops = raw_ops
        .iter()
        .enumerate()
        .map(|(i, v)| parse_op(v, namespaces.len(), i))
        .collect::<Result<Vec<_>>>()?;
    let ordered = match cmd.get("ordered") {
        None => true,
        Some(Bson::Boolean(b)) => *b,
        Some(v) => return Err(wrong_type("bulkWrite.ordered", v, "bool")),
    };
    let errors_only = match cmd.get("errorsOnly") {
        None => false,
        Some(Bson::Boolean(b)) => *b,
        Some(v) => return Err(wrong_type("bulkWrite.errorsOnly", v, "bool")),
    };
    let batch_size = match cmd.get("cursor") {
        None => None,
        Some(Bson::Document(c)) => util::opt_batch_size(c)?,
        Some(v) => return Err(wrong_type("bulkWrite.cursor", v, "object")),
    };
    let vars = util::command_vars(ctx, cmd)?;
    for op in &ops {
        let stat = match op {
            Op::Insert(..) | Op::Failed { kind: "insert", .. } => &ctx.stats.insert,
            Op::Update(..) | Op::Failed { kind: "update", .. } => &ctx.stats.update,
            Op::Delete(..) | Op::Failed { .. } => &ctx.stats.delete,
        };
        stat.fetch_add(1, Ordering::Relaxed);
    }
    let s = Session::of(cmd);
    let mut reply = crate::txn::write(ctx, move |w| {
        crud::retryable(w, &s, |w| {
            let mut out = Outcome::default();
            for (i, op) in ops.iter().enumerate() {
                let ns = &namespaces[op.ns_index()];
                match run_op(w, op, ns, &vars, &s, i, &mut out) {
                    Ok(item) => {
                        if !errors_only {
                            out.items.push(Bson::Document(item));
                        }
                    }
                    Err(e) => {
                        out.n_errors += 1;
                        let mut item = error_doc(&e);
                        item.insert("idx", i as i32);
                        item.insert("n", 0);
                        if matches!(op, Op::Update(..) | Op::Failed { kind: "update", .. }) {
                            item.insert("nModified", 0);
                        }
                        out.items.push(Bson::Document(item));
                        if ordered {
                            break;
                        }
                    }
                }
            }
            Ok(out.into_document())
        })
    })
    .await?;
    let items: Vec<Document> = match reply.remove("items") {
        Some(Bson::Array(a)) => a
            .into_iter()
            .filter_map(|b| match b {
                Bson::Document(d) => Some(d),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    // Without a batch size, every item goes in the first batch that fits in a reply.
    let batch_size = Some(batch_size.filter(|b| *b > 0).unwrap_or(i64::MAX));
    let mut r = cursor_reply(
        ctx,
        CURSOR_NS,
        Box::new(items.into_iter().map(Ok)),
        batch_size,
        false,
    )?;
    for k in [
        "nErrors",
        "nInserted",
        "nMatched",
        "nModified",
        "nUpserted",
        "nDeleted",
    ] {
        r.doc
            .insert(k, reply.get(k).cloned().unwrap_or(Bson::Int32(0)));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(d: Document) -> Result<Op> {
        parse_op(&Bson::Document(d), 2, 0)
    }

    #[test]
    fn update_ops_become_update_statements() {
        let Op::Update(ns, Bson::Document(st), op_let) = op(doc! {
            "update": 1, "filter": {"_id": 1}, "updateMods": {"$set": {"x": 1}},
            "multi": true, "upsert": true, "arrayFilters": [{"i.a": 1}], "hint": "_id_",
            "let": {"v": 1},
        })
        .unwrap() else {
            panic!("not an update");
        };
        assert_eq!(ns, 1);
        assert_eq!(
            st,
            doc! {"q": {"_id": 1}, "u": {"$set": {"x": 1}}, "multi": true, "upsert": true,
            "arrayFilters": [{"i.a": 1}], "hint": "_id_"}
        );
        assert_eq!(op_let, Some(doc! {"v": 1}));
    }

    #[test]
    fn delete_ops_become_delete_statements() {
        let Op::Delete(0, Bson::Document(st), None) =
            op(doc! {"delete": 0, "filter": {"a": 1}, "multi": true}).unwrap()
        else {
            panic!("not a delete");
        };
        assert_eq!(st, doc! {"q": {"a": 1}, "limit": 0});
        let Op::Delete(_, Bson::Document(st), _) = op(doc! {"delete": 0, "filter": {}}).unwrap()
        else {
            panic!("not a delete");
        };
        assert_eq!(st.get_i32("limit").unwrap(), 1);
    }

    #[test]
    fn inserts_get_an_id_and_bad_ids_fail_only_their_operation() {
        let Op::Insert(0, d) = op(doc! {"insert": 0, "document": {"x": 1}}).unwrap() else {
            panic!("not an insert");
        };
        assert!(matches!(d.get("_id"), Some(Bson::ObjectId(_))));
        let Op::Failed {
            ns: 0,
            kind: "insert",
            error,
        } = op(doc! {"insert": 0, "document": {"_id": [1]}}).unwrap()
        else {
            panic!("expected a deferred error");
        };
        assert_eq!(error.code, ErrorCode::InvalidIdField.code());
        let Op::Failed {
            kind: "update",
            error,
            ..
        } = op(doc! {
            "update": 0, "filter": {}, "updateMods": {"$set": {"a": 1}}, "returnFields": {"a": 1},
        })
        .unwrap()
        else {
            panic!("expected a deferred error");
        };
        assert_eq!(error.code, ErrorCode::InvalidOptions.code());
    }

    #[test]
    fn malformed_ops_fail_the_command() {
        let code = |d: Document| op(d).unwrap_err().code;
        assert_eq!(code(doc! {"insert": 2, "document": {}}), 2);
        assert_eq!(code(doc! {"insert": -1, "document": {}}), 2);
        assert_eq!(code(doc! {"insert": 0}), 40414);
        assert_eq!(code(doc! {"insert": 0, "document": {}, "x": 1}), 40415);
        assert_eq!(code(doc! {"update": 0, "filter": {}}), 40414);
        assert_eq!(code(doc! {"delete": 0, "filter": 1}), 14);
        assert_eq!(code(doc! {"delete": 0, "filter": {}, "multi": 1}), 14);
        assert_eq!(code(doc! {"filter": {}}), 9);
        assert_eq!(code(doc! {"insert": 0, "delete": 0, "document": {}}), 9);
    }

    #[test]
    fn ns_info_entries_are_checked() {
        let ns = parse_ns_info(&Bson::Document(doc! {"ns": "db.a.b"})).unwrap();
        assert_eq!((ns.db.as_str(), ns.coll.as_str()), ("db", "a.b"));
        for bad in [doc! {"ns": "nodot"}, doc! {"ns": ".x"}, doc! {"ns": "db."}] {
            assert_eq!(
                parse_ns_info(&Bson::Document(bad)).unwrap_err().code,
                ErrorCode::InvalidNamespace.code()
            );
        }
        assert_eq!(
            parse_ns_info(&Bson::Document(doc! {"ns": "a.b", "x": 1}))
                .unwrap_err()
                .code,
            40415
        );
    }
}
