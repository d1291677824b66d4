//! Argument readers shared by the handlers.

use bson::{Bson, Document};
pub use doc::type_name;
use errors::{ErrorCode, MongoError, Result};
use storage::Namespace;

/// The command's `$db`.
///
/// # Errors
/// When missing or not a string.
pub fn db_of(cmd: &Document) -> Result<String> {
    match cmd.get("$db") {
        Some(Bson::String(s)) => Ok(s.clone()),
        None => Err(MongoError::new(
            ErrorCode::FailedToParse,
            "Missing required field '$db'",
        )),
        Some(_) => Err(MongoError::type_mismatch("Field '$db' must be a string")),
    }
}

/// A number field as i64 (int32, int64 or integral double).
pub fn get_i64(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// A boolean-ish option: bool, or a number (non-zero = true).
pub fn get_bool(d: &Document, key: &str) -> Option<bool> {
    match d.get(key)? {
        Bson::Boolean(b) => Some(*b),
        Bson::Int32(i) => Some(*i != 0),
        Bson::Int64(i) => Some(*i != 0),
        Bson::Double(f) => Some(*f != 0.0),
        Bson::Null => None,
        _ => None,
    }
}

/// The collection name a command targets (`{find: "coll"}`), checked.
///
/// # Errors
/// InvalidNamespace for a bad name, TypeMismatch for a non-string.
pub fn coll_arg(cmd: &Document, name: &str, db: &str) -> Result<Namespace> {
    match cmd.get(name) {
        Some(Bson::String(c)) => {
            let ns = Namespace::new(db, c.as_str());
            storage::catalog::validate_coll_name(&ns)?;
            Ok(ns)
        }
        Some(other) => Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            format!("collection name has invalid type {}", type_name(other)),
        )),
        None => Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            "Invalid namespace specified",
        )),
    }
}

/// An optional document field.
///
/// # Errors
/// TypeMismatch when present and not a document.
pub fn opt_doc<'a>(cmd: &'a Document, key: &str) -> Result<Option<&'a Document>> {
    match cmd.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(d)) => Ok(Some(d)),
        Some(other) => Err(MongoError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected type 'object'",
            type_name(other)
        ))),
    }
}

/// An optional non-negative integer field.
///
/// # Errors
/// TypeMismatch / BadValue for other values.
pub fn opt_count(cmd: &Document, key: &str) -> Result<Option<i64>> {
    match cmd.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)) => {
            let v = get_i64(cmd, key)
                .ok_or_else(|| MongoError::bad_value(format!("{key} must be an integer")))?;
            Ok(Some(v))
        }
        Some(other) => Err(MongoError::type_mismatch(format!(
            "BSON field '{key}' is the wrong type '{}', expected types '[long, int, decimal, double]'",
            type_name(other)
        ))),
    }
}

/// A `batchSize` (of find, getMore, or a `cursor` option): absent, or a count that is
/// not negative, refused as mongod's IDL validator refuses it (Location51024).
///
/// # Errors
/// TypeMismatch for a non-number; 51024 for a negative one.
pub fn opt_batch_size(d: &Document) -> Result<Option<i64>> {
    match opt_count(d, "batchSize")? {
        Some(b) if b < 0 => Err(MongoError::with_code(
            51024,
            format!("BSON field 'batchSize' value must be >= 0, actual value '{b}'"),
        )),
        b => Ok(b),
    }
}

/// The variables a command's expressions see: `$$NOW` and `$$CLUSTER_TIME` fixed for the
/// whole command, and its `let` parameters (find, aggregate, update, delete, findAndModify,
/// bulkWrite).
///
/// # Errors
/// TypeMismatch when `let` is not a document, and the parameters' own errors.
pub fn command_vars(ctx: &crate::ServerCtx, cmd: &Document) -> Result<query::expr::Vars> {
    let mut vars = query::expr::Vars::new(bson::DateTime::now(), ctx.store.committed_ts());
    if let Some(params) = opt_doc(cmd, "let")? {
        vars.bind_let(params)?;
    }
    Ok(vars)
}

/// Awaits a write that may run long on this thread (an index build, a collection copy:
/// a single-node commit runs on the submitting thread), handing the worker's other tasks
/// to another thread first, as [`cpu`] does; otherwise every connection whose task sat on
/// this worker (a `ping`, a driver's heartbeat) waited for the whole build.
pub async fn heavy<T>(fut: impl std::future::Future<Output = T>) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| h.block_on(fut))
        }
        _ => fut.await,
    }
}

/// Runs CPU-bound work (a scan, a sort, a pipeline) so that it does not hold up other
/// connections: on the multi-threaded runtime the worker first hands its other tasks to
/// another thread (`block_in_place`), which a long query otherwise starved, new
/// connections' handshakes included. On a current-thread runtime (tests) it just runs.
pub fn cpu<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
