//! Cluster-wide default read and write concerns: `setDefaultRWConcern` and
//! `getDefaultRWConcern`. A default applies to every command that takes the concern and
//! gives none (outside transactions, whose concerns are the transaction's), as in mongod;
//! it is stored with the data, so it survives restarts and reaches replicas.

use std::sync::{Arc, Mutex};

use bson::{Bson, DateTime, Document, doc};
use errors::{ErrorCode, MongoError, Result};

use crate::{Reply, ServerCtx, write_concern};

/// The setting's name in the store.
const SETTING: &str = "defaultRWConcern";

/// The defaults as set (empty when never set).
#[derive(Default)]
pub struct Defaults {
    state: Mutex<Document>,
}

impl Defaults {
    /// Loads the stored defaults.
    pub fn load(ctx: &ServerCtx) {
        if let Ok(Some(d)) = ctx.store.snapshot().and_then(|s| s.setting(SETTING)) {
            *ctx.rw_defaults.state.lock().unwrap() = d;
        }
    }

    /// `cmd` with the default concerns added where it takes them and gives none.
    pub fn apply(&self, name: &str, mut cmd: Document) -> Document {
        let state = self.state.lock().unwrap();
        if state.is_empty() || cmd.contains_key("autocommit") {
            return cmd;
        }
        if let Ok(wc) = state.get_document("defaultWriteConcern") {
            if !cmd.contains_key("writeConcern") && write_concern::WRITES.contains(&name) {
                cmd.insert("writeConcern", wc.clone());
            }
        }
        if let Ok(rc) = state.get_document("defaultReadConcern") {
            let reads = matches!(name, "find" | "aggregate" | "count" | "distinct");
            if reads && !cmd.contains_key("readConcern") {
                cmd.insert("readConcern", rc.clone());
            }
        }
        cmd
    }
}

fn reply(state: &Document) -> Document {
    let mut out = Document::new();
    match state.get_document("defaultReadConcern") {
        Ok(rc) => {
            out.insert("defaultReadConcern", rc.clone());
            out.insert("defaultReadConcernSource", "global");
        }
        Err(_) => {
            out.insert("defaultReadConcern", doc! {"level": "local"});
            out.insert("defaultReadConcernSource", "implicit");
        }
    }
    match state.get_document("defaultWriteConcern") {
        Ok(wc) => {
            out.insert("defaultWriteConcern", wc.clone());
            out.insert("defaultWriteConcernSource", "global");
        }
        Err(_) => {
            out.insert("defaultWriteConcern", doc! {"w": "majority", "wtimeout": 0});
            out.insert("defaultWriteConcernSource", "implicit");
        }
    }
    for k in ["updateOpTime", "updateWallClockTime"] {
        if let Some(v) = state.get(k) {
            out.insert(k, v.clone());
        }
    }
    out.insert("localUpdateWallClockTime", DateTime::now());
    out
}

/// `getDefaultRWConcern`.
///
/// # Errors
/// Unauthorized off the admin database.
pub fn get(ctx: &ServerCtx, db: &str) -> Result<Reply> {
    admin_only(db, "getDefaultRWConcern")?;
    Ok(Reply::ok(reply(&ctx.rw_defaults.state.lock().unwrap())))
}

fn admin_only(db: &str, name: &str) -> Result<()> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            format!("{name} may only be run against the admin database."),
        ));
    }
    Ok(())
}

/// `setDefaultRWConcern`: sets either default or both.
///
/// # Errors
/// BadValue for a concern that cannot be a default (`w: 0`, an empty write concern once
/// one is set, `snapshot`/`linearizable` reads), and the concerns' own errors.
pub async fn set(ctx: &Arc<ServerCtx>, db: &str, cmd: &Document) -> Result<Reply> {
    admin_only(db, "setDefaultRWConcern")?;
    let wc = cmd.get("defaultWriteConcern");
    let rc = cmd.get("defaultReadConcern");
    if wc.is_none() && rc.is_none() {
        return Err(MongoError::bad_value(
            "At least one of the \"defaultReadConcern\" or \"defaultWriteConcern\" fields must be present",
        ));
    }
    let mut state = ctx.rw_defaults.state.lock().unwrap().clone();
    if let Some(wc) = wc {
        let Bson::Document(wc) = wc else {
            return Err(MongoError::type_mismatch(
                "defaultWriteConcern must be an object",
            ));
        };
        if wc.is_empty() {
            if state.contains_key("defaultWriteConcern") {
                return Err(MongoError::bad_value(
                    "The global default write concern cannot be unset once it is set",
                ));
            }
        } else {
            let parsed = write_concern::parse("insert", &doc! {"writeConcern": wc.clone()})?;
            if parsed.is_some_and(|p| matches!(p.w, Bson::Int32(0) | Bson::Int64(0))) {
                return Err(MongoError::bad_value(
                    "Default write concern mode 'w' cannot be 0",
                ));
            }
            state.insert("defaultWriteConcern", wc.clone());
        }
    }
    if let Some(rc) = rc {
        let Bson::Document(rc) = rc else {
            return Err(MongoError::type_mismatch(
                "defaultReadConcern must be an object",
            ));
        };
        if rc.is_empty() {
            state.remove("defaultReadConcern");
        } else {
            for (k, v) in rc {
                let ok = k == "level"
                    && matches!(v, Bson::String(l) if matches!(l.as_str(), "local" | "available" | "majority"));
                if !ok {
                    return Err(MongoError::bad_value(format!(
                        "The default read concern may only set 'level' to local, available or majority, not {k}: {v}"
                    )));
                }
            }
            state.insert("defaultReadConcern", rc.clone());
        }
    }
    state.insert("updateWallClockTime", DateTime::now());
    let stored = state.clone();
    let ts = ctx
        .store
        .write(move |w| w.put_setting(SETTING, &stored))
        .await;
    ts?;
    state.insert("updateOpTime", ctx.store.committed_ts());
    *ctx.rw_defaults.state.lock().unwrap() = state.clone();
    Ok(Reply::ok(reply(&state)))
}
