//! The option census: for each command with options, the fields its handler reads, and
//! the fields MongoDB has that Eddy refuses. Any other field is refused as unknown, as
//! mongod's strict command parsers do, so that no option is ever accepted and ignored.
//!
//! The unit tests below hold the table to the code: every listed field must be read in
//! its handler's body, and every command the dispatcher knows must be listed here, either
//! with its fields or as taking none worth checking.

use bson::Document;
use errors::{ErrorCode, MongoError, Result};

/// Generic arguments, valid on every command (mongod's `generic_argument.idl`, the part
/// drivers send), read by the command runner rather than by handlers.
pub const GENERIC: &[&str] = &[
    "$db",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "stmtId",
    "readConcern",
    "writeConcern",
    "maxTimeMS",
    "comment",
    "$clusterTime",
    "$readPreference",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
];

/// A command's own fields: the command key first, then what the handler reads. Each
/// field comes with the text that shows the handler reading it (usually the quoted name;
/// for fields read through a helper, the helper's name).
pub struct Census {
    pub names: &'static [&'static str],
    /// Where the handler is: its source file and the line that starts it.
    pub handler: (&'static str, &'static str),
    pub fields: &'static [(&'static str, &'static str)],
}

const Q: &str = "";

/// Fields read as `"name"` in the handler.
macro_rules! read {
    ($($f:literal),* $(,)?) => { &[$(($f, Q)),*] };
}

pub const COMMANDS: &[Census] = &[
    Census {
        names: &["convertToCapped"],
        handler: ("ddl.rs", "pub async fn convert_to_capped("),
        fields: &[("size", "capped_size_arg(cmd)")],
    },
    Census {
        names: &["cloneCollectionAsCapped"],
        handler: ("ddl.rs", "pub async fn clone_collection_as_capped("),
        fields: &[("toCollection", Q), ("size", "capped_size_arg(cmd)")],
    },
    Census {
        names: &["logRotate"],
        handler: ("logs.rs", "pub fn log_rotate("),
        fields: &[],
    },
    Census {
        names: &["fsync"],
        handler: ("diag.rs", "pub async fn fsync("),
        fields: read!["lock", "async"],
    },
    Census {
        names: &["validate"],
        handler: ("diag.rs", "pub fn validate("),
        fields: &[
            ("full", "\"full\", \"checkBSONConformance\""),
            ("checkBSONConformance", Q),
            ("repair", "\"repair\", \"metadata\", \"background\""),
            ("metadata", "\"repair\", \"metadata\", \"background\""),
            ("background", "\"repair\", \"metadata\", \"background\""),
        ],
    },
    Census {
        names: &["setDefaultRWConcern"],
        handler: ("rw_defaults.rs", "pub async fn set("),
        fields: read!["defaultReadConcern", "defaultWriteConcern"],
    },
    Census {
        names: &["dbHash", "dbhash"],
        handler: ("diag.rs", "pub fn db_hash("),
        fields: read!["collections"],
    },
    Census {
        names: &["find"],
        handler: ("crud.rs", "pub fn find("),
        fields: &[
            ("filter", Q),
            ("sort", Q),
            ("projection", Q),
            ("hint", Q),
            ("skip", Q),
            ("limit", Q),
            ("batchSize", "opt_batch_size(cmd)"),
            ("singleBatch", Q),
            ("noCursorTimeout", Q),
            ("collation", "collation::for_read"),
            ("let", "command_vars"),
            ("allowDiskUse", "cursor::limits"),
            ("tailable", "tail::options"),
            ("awaitData", "tail::options"),
            // Type-checked flags with nothing to do on one node: partial results are for
            // shards that are down, and oplogReplay has had no effect since 4.4.
            ("allowPartialResults", Q),
            ("oplogReplay", Q),
        ],
    },
    Census {
        names: &["aggregate"],
        handler: ("crud.rs", "pub async fn aggregate("),
        fields: &[
            ("pipeline", "pipeline_of"),
            ("explain", Q),
            ("cursor", Q),
            ("hint", Q),
            ("bypassDocumentValidation", Q),
            ("collation", "collation::for_read"),
            ("let", "command_vars"),
            ("allowDiskUse", "SnapEnv::for_command"),
        ],
    },
    Census {
        names: &["count"],
        handler: ("crud.rs", "pub fn count("),
        fields: &[
            ("query", Q),
            ("skip", Q),
            ("limit", Q),
            ("hint", Q),
            ("collation", "collation::for_read"),
        ],
    },
    Census {
        names: &["distinct"],
        handler: ("crud.rs", "pub fn distinct("),
        fields: &[
            ("key", Q),
            ("query", Q),
            ("hint", Q),
            ("collation", "collation::for_read"),
        ],
    },
    Census {
        names: &["insert"],
        handler: ("crud.rs", "pub async fn insert("),
        fields: &[
            ("documents", Q),
            ("ordered", Q),
            ("bypassDocumentValidation", "Session::of"),
        ],
    },
    Census {
        names: &["update"],
        handler: ("crud.rs", "pub async fn update("),
        fields: &[
            ("updates", Q),
            ("ordered", Q),
            ("let", "command_vars"),
            ("bypassDocumentValidation", "Session::of"),
        ],
    },
    Census {
        names: &["delete"],
        handler: ("crud.rs", "pub async fn delete("),
        fields: &[
            ("deletes", Q),
            ("ordered", Q),
            ("let", "command_vars"),
            // Part of every write command's base in mongod; pymongo's bulk writer sends it.
            ("bypassDocumentValidation", "Session::of"),
        ],
    },
    Census {
        names: &["findAndModify", "findandmodify"],
        handler: ("crud.rs", "pub async fn find_and_modify("),
        fields: &[
            ("query", Q),
            ("sort", Q),
            ("remove", Q),
            ("update", Q),
            ("new", Q),
            ("fields", Q),
            ("upsert", Q),
            ("arrayFilters", Q),
            ("hint", Q),
            ("collation", "coll_spec"),
            ("let", "command_vars"),
            ("bypassDocumentValidation", "Session::of"),
        ],
    },
    Census {
        names: &["getMore"],
        handler: ("cursor.rs", "pub async fn get_more("),
        fields: &[
            ("collection", Q),
            ("batchSize", "opt_batch_size(cmd)"),
            ("maxTimeMS", Q),
        ],
    },
    Census {
        names: &["killCursors"],
        handler: ("cursor.rs", "pub fn kill_cursors("),
        fields: read!["cursors"],
    },
    Census {
        names: &["killOp"],
        handler: ("ops.rs", "pub fn kill_op("),
        fields: read!["op"],
    },
    Census {
        names: &["explain"],
        handler: ("crud.rs", "pub fn explain("),
        fields: &[("verbosity", "verbosity(cmd)")],
    },
    Census {
        names: &["createUser"],
        handler: ("users.rs", "pub async fn create_user("),
        fields: &[
            ("pwd", Q),
            ("roles", Q),
            ("customData", Q),
            ("mechanisms", "mechanisms(cmd"),
            ("digestPassword", "credentials(ctx, cmd"),
            ("authenticationRestrictions", "refuse_restrictions(cmd)"),
        ],
    },
    Census {
        names: &["updateUser"],
        handler: ("users.rs", "pub async fn update_user("),
        fields: &[
            ("pwd", Q),
            ("roles", Q),
            ("customData", Q),
            ("mechanisms", Q),
            ("digestPassword", "credentials(ctx, cmd"),
            ("authenticationRestrictions", "refuse_restrictions(cmd)"),
        ],
    },
    Census {
        names: &["dropUser"],
        handler: ("users.rs", "pub async fn drop_user("),
        fields: &[],
    },
    Census {
        names: &["dropAllUsersFromDatabase"],
        handler: ("users.rs", "pub async fn drop_all_users("),
        fields: &[],
    },
    Census {
        names: &["usersInfo"],
        handler: ("users.rs", "pub fn users_info("),
        fields: read![
            "showCredentials",
            "showPrivileges",
            "showCustomData",
            "showAuthenticationRestrictions",
            "filter",
        ],
    },
    Census {
        names: &["grantRolesToUser", "revokeRolesFromUser"],
        handler: ("users.rs", "pub async fn change_user_roles("),
        fields: &[("roles", "required(cmd, name, \"roles\")")],
    },
    Census {
        names: &["createRole"],
        handler: ("users.rs", "pub async fn create_role("),
        fields: &[
            ("privileges", Q),
            ("roles", Q),
            ("authenticationRestrictions", "refuse_restrictions(cmd)"),
        ],
    },
    Census {
        names: &["updateRole"],
        handler: ("users.rs", "pub async fn update_role("),
        fields: &[
            ("privileges", Q),
            ("roles", Q),
            ("authenticationRestrictions", "refuse_restrictions(cmd)"),
        ],
    },
    Census {
        names: &["dropRole"],
        handler: ("users.rs", "pub async fn drop_role("),
        fields: &[],
    },
    Census {
        names: &["dropAllRolesFromDatabase"],
        handler: ("users.rs", "pub async fn drop_all_roles("),
        fields: &[],
    },
    Census {
        names: &["rolesInfo"],
        handler: ("users.rs", "pub fn roles_info("),
        fields: read![
            "showPrivileges",
            "showBuiltinRoles",
            "showAuthenticationRestrictions"
        ],
    },
    Census {
        names: &["grantPrivilegesToRole", "revokePrivilegesFromRole"],
        handler: ("users.rs", "pub async fn change_role_privileges("),
        fields: &[("privileges", "required(cmd, name, \"privileges\")")],
    },
    Census {
        names: &["grantRolesToRole", "revokeRolesFromRole"],
        handler: ("users.rs", "pub async fn change_role_roles("),
        fields: &[("roles", "required(cmd, name, \"roles\")")],
    },
];

/// Fields MongoDB has that Eddy refuses, with the error it gives.
pub const REFUSED: &[(&str, &str, ErrorCode, &str)] = &[
    (
        "find",
        "min",
        ErrorCode::InvalidOptions,
        "find's 'min' (index bounds) is not supported by Eddy",
    ),
    (
        "find",
        "max",
        ErrorCode::InvalidOptions,
        "find's 'max' (index bounds) is not supported by Eddy",
    ),
    (
        "find",
        "returnKey",
        ErrorCode::InvalidOptions,
        "find's 'returnKey' is not supported by Eddy",
    ),
    (
        "find",
        "showRecordId",
        ErrorCode::InvalidOptions,
        "find's 'showRecordId' is not supported by Eddy",
    ),
];

/// Refuses a field of a censused command that its handler does not read.
///
/// # Errors
/// The refusal in [`REFUSED`], or 40415 for a field MongoDB does not have either.
pub fn check(name: &str, cmd: &Document) -> Result<()> {
    let Some(c) = COMMANDS.iter().find(|c| c.names.contains(&name)) else {
        return Ok(());
    };
    for (k, v) in cmd.iter().skip(1) {
        if GENERIC.contains(&k.as_str()) || c.fields.iter().any(|(f, _)| f == k) {
            continue;
        }
        if let Some((_, _, code, msg)) = REFUSED.iter().find(|(n, f, _, _)| *n == name && f == k) {
            // A false flag asks for nothing.
            if v.as_bool() == Some(false) {
                continue;
            }
            return Err(MongoError::new(*code, *msg));
        }
        return Err(MongoError::with_code(
            40415,
            format!("BSON field '{name}.{k}' is an unknown field."),
        ));
    }
    Ok(())
}

/// Commands whose fields are not censused: they take no options, or only ones they read
/// as a whole (`setParameter`'s names, `hello`'s handshake metadata).
pub const UNCENSUSED: &[&str] = &[
    "fsyncUnlock",
    "top",
    "getDefaultRWConcern",
    "connPoolStats",
    "features",
    "hello",
    "isMaster",
    "ismaster",
    "buildInfo",
    "buildinfo",
    "ping",
    "getnonce",
    "serverStatus",
    "hostInfo",
    "getCmdLineOpts",
    "getParameter",
    "setParameter",
    "whatsmyuri",
    "connectionStatus",
    "listCommands",
    "replSetGetStatus",
    "replSetGetConfig",
    "replSetInitiate",
    "replSetReconfig",
    "replSetStepDown",
    "replSetFreeze",
    "_eddyRaft",
    "endSessions",
    "killSessions",
    "killAllSessions",
    "refreshSessions",
    "startSession",
    "killAllSessionsByPattern",
    "shutdown",
    "configureFailPoint",
    "setClusterParameter",
    "getClusterParameter",
    "getLog",
    // Every field of currentOp besides `$all` and `$ownOps` is its filter.
    "currentOp",
    "profile",
    "getFreeMonitoringStatus",
    "dbStats",
    "dbstats",
    "collStats",
    "collstats",
    "logout",
    "saslStart",
    "saslContinue",
    "authenticate",
    // Options checked by their own parsers: `create`'s against the collection options
    // (40415 for unknown ones, 72 for unsupported kinds), bulkWrite's per operation.
    "create",
    "drop",
    "dropDatabase",
    "renameCollection",
    "collMod",
    "listDatabases",
    "listCollections",
    "createIndexes",
    "dropIndexes",
    "deleteIndexes",
    "listIndexes",
    "bulkWrite",
    "commitTransaction",
    "abortTransaction",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn source(file: &str) -> &'static str {
        match file {
            "crud.rs" => include_str!("crud.rs"),
            "cursor.rs" => include_str!("cursor.rs"),
            "diag.rs" => include_str!("diag.rs"),
            "ddl.rs" => include_str!("ddl.rs"),
            "logs.rs" => include_str!("logs.rs"),
            "rw_defaults.rs" => include_str!("rw_defaults.rs"),
            "ops.rs" => include_str!("ops.rs"),
            "users.rs" => include_str!("users.rs"),
            other => panic!("no source for {other}"),
        }
    }

    /// The text of a handler: from its first line to the next line that closes a
    /// top-level item.
    fn body(file: &str, start: &str) -> &'static str {
        let src = source(file);
        let i = src
            .find(start)
            .unwrap_or_else(|| panic!("{start} not in {file}"));
        let rest = &src[i..];
        let end = rest.find("\n}\n").map_or(rest.len(), |e| e + 3);
        &rest[..end]
    }

    #[test]
    fn every_listed_field_is_read_by_its_handler() {
        for c in COMMANDS {
            let text = body(c.handler.0, c.handler.1);
            for (field, evidence) in c.fields {
                let needle = if evidence.is_empty() {
                    format!("\"{field}\"")
                } else {
                    (*evidence).to_string()
                };
                assert!(
                    text.contains(&needle),
                    "{}.{field}: the handler ({}) does not read it (looked for {needle})",
                    c.names[0],
                    c.handler.1
                );
            }
        }
    }

    #[test]
    fn every_command_is_in_the_census() {
        let src = include_str!("lib.rs");
        let i = src.find("async fn dispatch_cmd(").expect("dispatcher");
        let text = &src[i..];
        let text = &text[..text.find("\n}\n").expect("end of dispatcher")];
        // Command names are the string patterns of the match arms.
        let mut names = Vec::new();
        for line in text.lines() {
            let t = line.trim_start();
            if !(t.starts_with('"') || t.starts_with("| \"")) {
                continue;
            }
            let pattern = t.split("=>").next().unwrap_or("");
            for part in pattern.split('"').skip(1).step_by(2) {
                names.push(part.to_string());
            }
        }
        for n in names.iter().filter(|n| !n.is_empty() && !n.contains(' ')) {
            let known = COMMANDS.iter().any(|c| c.names.contains(&n.as_str()))
                || UNCENSUSED.contains(&n.as_str());
            assert!(
                known,
                "command {n} is neither censused nor listed as uncensused"
            );
        }
        assert!(names.len() > 50, "found {} commands", names.len());
    }

    #[test]
    fn unknown_and_refused_fields_are_refused() {
        let ok = bson::doc! {"find": "c", "filter": {}, "lsid": {}, "$db": "x"};
        assert!(check("find", &ok).is_ok());
        let e = check("find", &bson::doc! {"find": "c", "bogus": 1}).unwrap_err();
        assert_eq!(e.code, 40415);
        assert_eq!(e.message, "BSON field 'find.bogus' is an unknown field.");
        let e = check("find", &bson::doc! {"find": "c", "returnKey": true}).unwrap_err();
        assert_eq!(e.code, 72);
        assert!(check("find", &bson::doc! {"find": "c", "returnKey": false}).is_ok());
        // Read by the handler now (capped collections take tailable cursors).
        assert!(check("find", &bson::doc! {"find": "c", "tailable": true}).is_ok());
        assert!(check("hello", &bson::doc! {"hello": 1, "anything": 1}).is_ok());
    }
}
