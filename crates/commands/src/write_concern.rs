//! Write concern: parsed before a command runs, and reported after it as a
//! `writeConcernError` when this single-member replica set cannot satisfy it.
//!
//! Every write is durable in the log before it is acknowledged, so `j` and `w: 1` (and
//! `w: "majority"`, a majority of one) are always met. `w` above 1 needs members Eddy does
//! not have: MongoDB applies the write and answers `ok: 1` with `UnsatisfiableWriteConcern`
//! at once (it does not wait out `wtimeout`), and so does Eddy. An unknown tag gets
//! `UnknownReplWriteConcern`.

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};

/// Commands that write: they accept a write concern, and only a replica set's primary
/// takes them.
pub const WRITES: &[&str] = &[
    "setDefaultRWConcern",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "bulkWrite",
    "create",
    "drop",
    "dropDatabase",
    "renameCollection",
    "convertToCapped",
    "cloneCollectionAsCapped",
    "collMod",
    "createIndexes",
    "dropIndexes",
    "deleteIndexes",
    "commitTransaction",
    "abortTransaction",
    "createUser",
    "updateUser",
    "dropUser",
    "dropAllUsersFromDatabase",
    "grantRolesToUser",
    "revokeRolesFromUser",
    "createRole",
    "updateRole",
    "dropRole",
    "dropAllRolesFromDatabase",
    "grantPrivilegesToRole",
    "revokePrivilegesFromRole",
    "grantRolesToRole",
    "revokeRolesFromRole",
    "setClusterParameter",
];

/// Whether `name` accepts a write concern (any other refuses one, as MongoDB does): the
/// commands that write, and `aggregate` (for `$out`/`$merge`) and
/// `setFeatureCompatibilityVersion`.
pub(crate) fn supported(name: &str) -> bool {
    WRITES.contains(&name) || matches!(name, "aggregate" | "setFeatureCompatibilityVersion")
}

/// The data-bearing members of this replica set.
const MEMBERS: i64 = 1;

/// A parsed write concern.
#[derive(Debug, Clone)]
pub struct WriteConcern {
    pub(crate) w: Bson,
    j: Option<bool>,
    wtimeout: i32,
}

fn parse_error(msg: impl Into<String>) -> MongoError {
    MongoError::new(ErrorCode::FailedToParse, msg)
}

/// The command's write concern, if it has one.
///
/// # Errors
/// FailedToParse / TypeMismatch / unknown field for malformed ones; InvalidOptions for a
/// command that does not take one.
pub fn parse(name: &str, cmd: &Document) -> Result<Option<WriteConcern>> {
    let Some(v) = cmd.get("writeConcern") else {
        return Ok(None);
    };
    if !supported(name) {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "Command does not support writeConcern",
        ));
    }
    let Bson::Document(wc) = v else {
        return Err(MongoError::type_mismatch(format!(
            "\"writeConcern\" had the wrong type. Expected object, found {}",
            doc::compare::type_name(v)
        )));
    };
    let mut out = WriteConcern {
        w: Bson::Int32(1),
        j: None,
        wtimeout: 0,
    };
    let mut fsync = false;
    for (k, x) in wc {
        match k.as_str() {
            "w" => match x {
                Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
                    let n = doc::compare::as_f64(x).unwrap_or(0.0);
                    if n.is_nan() {
                        return Err(parse_error("w cannot be NaN"));
                    }
                    if !(0.0..=50.0).contains(&n) {
                        return Err(parse_error(format!(
                            "w has to be a non-negative number and not greater than 50; found: {n}"
                        )));
                    }
                    out.w = Bson::Int64(n as i64);
                }
                Bson::String(_) => out.w = x.clone(),
                Bson::Document(d) => {
                    if d.is_empty() {
                        return Err(parse_error("tagged write concern requires tags"));
                    }
                    out.w = x.clone();
                }
                other => {
                    return Err(parse_error(format!(
                        "w has to be a number, string, or object; found: {}",
                        doc::compare::type_name(other)
                    )));
                }
            },
            "j" => match x {
                Bson::Boolean(b) => out.j = Some(*b),
                Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
                    out.j = Some(query::expr::truthy(x));
                }
                other => {
                    return Err(MongoError::type_mismatch(format!(
                        "BSON field 'writeConcern.j' is the wrong type '{}', expected types '[bool, long, int, decimal, double']",
                        doc::compare::type_name(other)
                    )));
                }
            },
            "fsync" => fsync = query::expr::truthy(x),
            "wtimeout" => {
                // A non-number counts as 0, as in MongoDB.
                if let Some(n) = doc::compare::as_f64(x) {
                    if n > f64::from(i32::MAX) || n < f64::from(i32::MIN) {
                        return Err(parse_error("wtimeout must be a 32-bit integer"));
                    }
                    out.wtimeout = n as i32;
                }
            }
            "provenance" | "wElectionId" | "wOpTime" | "getLastError" => {}
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field 'writeConcern.{other}' is an unknown field."),
                ));
            }
        }
    }
    if fsync && out.j == Some(true) {
        return Err(parse_error("fsync and j options cannot be used together"));
    }
    Ok(Some(out))
}

impl WriteConcern {
    /// `w`: a number (as Int64), `"majority"`, another tag name, or a tag set.
    pub fn w(&self) -> &Bson {
        &self.w
    }

    /// `wtimeout` in milliseconds (0: none).
    pub fn wtimeout(&self) -> i32 {
        self.wtimeout
    }

    /// The `writeConcernError` this write concern gets once the write is applied, if any.
    pub fn error(&self) -> Option<Document> {
        self.error_for(MEMBERS as usize)
    }

    /// ... on a set of `members` data-bearing members.
    pub fn error_for(&self, members: usize) -> Option<Document> {
        let members = members as i64;
        let mut used = doc! {"w": self.w.clone()};
        if let Some(j) = self.j {
            used.insert("j", j);
        }
        used.insert("wtimeout", self.wtimeout);
        used.insert("provenance", "clientSupplied");
        let (code, msg) = match &self.w {
            Bson::Int64(n) if *n > members => (
                ErrorCode::UnsatisfiableWriteConcern,
                "Not enough data-bearing nodes".to_string(),
            ),
            Bson::String(m) if m != "majority" => (
                ErrorCode::UnknownReplWriteConcern,
                format!("No write concern mode named '{m}' found in replica set configuration"),
            ),
            Bson::Document(tags) => (
                ErrorCode::UnknownReplWriteConcern,
                format!("No write concern mode named '{tags}' found in replica set configuration"),
            ),
            _ => return None,
        };
        Some(doc! {
            "code": code.code(),
            "codeName": code.name(),
            "errmsg": msg,
            "errInfo": {"writeConcern": used},
        })
    }
}
