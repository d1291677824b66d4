//! Document validation on writes: a collection's `validator`, `validationLevel` and
//! `validationAction`, and `bypassDocumentValidation`.
//!
//! Parsed validators are cached by collection UUID and the validator's bytes, so that a
//! write parses its collection's validator once, not once per document.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use bson::{Bson, Document};
use errors::{ErrorCode, ExtraInfo, MongoError, Result};
use query::validation::Validator;
use storage::CollectionMeta;

/// How strictly a collection validates (`validationLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Strict,
    Moderate,
    Off,
}

/// What a failed validation does (`validationAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Error,
    Warn,
}

/// A collection's validation settings.
#[derive(Debug, Clone)]
pub struct Validation {
    pub validator: Validator,
    pub level: Level,
    pub action: Action,
}

/// Checks a `validationLevel` value.
///
/// # Errors
/// BadValue, as MongoDB's enumeration error for `<cmd>.validationLevel`.
pub fn parse_level(cmd: &str, v: &Bson) -> Result<Level> {
    match v.as_str() {
        Some("strict") => Ok(Level::Strict),
        Some("moderate") => Ok(Level::Moderate),
        Some("off") => Ok(Level::Off),
        Some(other) => Err(enum_error(other, cmd, "validationLevel")),
        None => Err(MongoError::type_mismatch(format!(
            "BSON field '{cmd}.validationLevel' is the wrong type '{}', expected type 'string'",
            doc::compare::type_name(v)
        ))),
    }
}

/// Checks a `validationAction` value (8.0 has no `errorAndLog`).
///
/// # Errors
/// BadValue, as MongoDB's enumeration error for `<cmd>.validationAction`.
pub fn parse_action(cmd: &str, v: &Bson) -> Result<Action> {
    match v.as_str() {
        Some("error") => Ok(Action::Error),
        Some("warn") => Ok(Action::Warn),
        Some(other) => Err(enum_error(other, cmd, "validationAction")),
        None => Err(MongoError::type_mismatch(format!(
            "BSON field '{cmd}.validationAction' is the wrong type '{}', expected type 'string'",
            doc::compare::type_name(v)
        ))),
    }
}

fn enum_error(v: &str, cmd: &str, field: &str) -> MongoError {
    MongoError::bad_value(format!(
        "Enumeration value '{v}' for field '{cmd}.{field}' is not a valid value."
    ))
}

/// Checks that a collection may have a validator at all.
///
/// # Errors
/// InvalidOptions for the `admin`, `local` and `config` databases and system collections.
pub fn check_namespace(ns: &storage::Namespace) -> Result<()> {
    if matches!(ns.db.as_str(), "admin" | "local" | "config") {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            format!(
                "Document validators are not allowed on collection {} in the {} internal database",
                ns.full(),
                ns.db
            ),
        ));
    }
    if ns.coll.starts_with("system.") {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            format!(
                "Document validators not allowed on system collection {}",
                ns.full()
            ),
        ));
    }
    Ok(())
}

type Cache = Mutex<HashMap<(bson::Uuid, Vec<u8>), Arc<Validation>>>;
static CACHE: LazyLock<Cache> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The validation settings of a collection, or `None` when it validates nothing.
///
/// # Errors
/// A stored validator that no longer parses (it was checked when stored).
pub fn of(meta: &CollectionMeta) -> Result<Option<Arc<Validation>>> {
    let Ok(v) = meta.options.get_document("validator") else {
        return Ok(None);
    };
    if v.is_empty() {
        return Ok(None);
    }
    let level = match meta.options.get("validationLevel") {
        Some(l) => parse_level("collMod", l)?,
        None => Level::Strict,
    };
    if level == Level::Off {
        return Ok(None);
    }
    let action = match meta.options.get("validationAction") {
        Some(a) => parse_action("collMod", a)?,
        None => Action::Error,
    };
    let mut key_bytes = doc::encode::encode(v).map_err(|e| MongoError::internal(e.to_string()))?;
    key_bytes.push(level as u8);
    key_bytes.push(action as u8);
    let key = (meta.uuid, key_bytes);
    let mut cache = CACHE.lock().unwrap();
    if let Some(hit) = cache.get(&key) {
        return Ok(Some(hit.clone()));
    }
    let parsed = Arc::new(Validation {
        validator: Validator::parse(v)?,
        level,
        action,
    });
    if cache.len() > 1024 {
        cache.clear();
    }
    cache.insert(key, parsed.clone());
    Ok(Some(parsed))
}

/// Checks a document about to be stored: `old` is the document an update replaces.
///
/// # Errors
/// DocumentValidationFailure (121) with MongoDB's `errInfo`, when the document fails and
/// the collection's action is `error`.
pub fn check(
    meta: &CollectionMeta,
    new: &Document,
    old: Option<&Document>,
    bypass: bool,
) -> Result<()> {
    match applying(meta, bypass)? {
        Some(v) => check_with(&v, meta, new, old),
        None => Ok(()),
    }
}

/// The validation a write to `meta` goes through: none when `bypass`
/// (`bypassDocumentValidation`) or when the collection validates nothing.
///
/// # Errors
/// As [`of`].
pub fn applying(meta: &CollectionMeta, bypass: bool) -> Result<Option<Arc<Validation>>> {
    if bypass { Ok(None) } else { of(meta) }
}

/// [`check`] against validation settings already looked up ([`applying`]).
///
/// # Errors
/// As [`check`].
pub fn check_with(
    v: &Validation,
    meta: &CollectionMeta,
    new: &Document,
    old: Option<&Document>,
) -> Result<()> {
    if v.validator.matches(new) {
        return Ok(());
    }
    // Moderate: an update of a document that already failed may leave it failing.
    if v.level == Level::Moderate {
        if let Some(old) = old {
            if !v.validator.matches(old) {
                return Ok(());
            }
        }
    }
    let info = v.validator.err_info(new);
    if v.action == Action::Warn {
        tracing::warn!(
            id = 20294,
            namespace = %meta.ns.full(),
            document = %new,
            err_info = %info,
            "Document would fail validation"
        );
        return Ok(());
    }
    let mut e = MongoError::new(
        ErrorCode::DocumentValidationFailure,
        "Document failed validation",
    );
    e.extra = Some(Box::new(ExtraInfo::ErrInfo(
        bson::to_vec(&info).unwrap_or_default(),
    )));
    Err(e)
}
